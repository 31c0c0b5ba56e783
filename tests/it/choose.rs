//! `--backend auto` by the cost model: the reference case takes the CPU without loading Vulkan
//! at all (seen through the dynamic loader's own log, `LD_DEBUG=libs`), a profile that makes the
//! GPU cheaper takes the GPU, a stream takes the CPU and says why, a profile whose adapter is gone
//! falls back to the CPU, and `calibrate` writes a profile `auto` reads.

use crate::common::*;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], profile: Option<&std::path::Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_microbatch"));
    c.args(args).env("LD_DEBUG", "libs");
    match profile {
        Some(p) => c.env("MICROBATCH_PROFILE", p),
        // No profile: the built-in figures.
        None => c.env("MICROBATCH_PROFILE", "/nonexistent/microbatch-profile.json"),
    };
    c.stdin(Stdio::null()).output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    let errors: String = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(o.status.success(), "{errors}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Whether the process loaded the Vulkan loader (`LD_DEBUG=libs` logs every library it maps).
fn loaded_vulkan(o: &Output) -> bool {
    String::from_utf8_lossy(&o.stderr).contains("libvulkan")
}

fn profile(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_reference_case_takes_the_cpu_without_loading_vulkan() {
    let o = run(
        &[
            "run",
            "--random",
            "1000000",
            "--batch-size",
            "1000",
            "--json",
        ],
        None,
    );
    let v = json(&o);
    assert_eq!(v["backend"]["kind"], "cpu");
    assert_eq!(v["choice"]["backend"], "cpu");
    assert_eq!(v["choice"]["elements"], 1_000_000);
    let (cpu, gpu) = (
        v["choice"]["predicted_s"]["cpu"].as_f64().unwrap(),
        v["choice"]["predicted_s"]["gpu"].as_f64().unwrap(),
    );
    assert!(cpu < gpu, "{}", v["choice"]);
    assert!(!loaded_vulkan(&o), "auto loaded Vulkan for 1e6 values");
    // The observable can fail: a forced GPU run does load it.
    if crate::common::gpu().is_some() {
        let o = run(
            &["run", "--random", "1000", "--backend", "gpu", "--json"],
            None,
        );
        assert!(loaded_vulkan(&o));
    }
    // A stream's size is unknown: the CPU, saying why.
    let o = run(&["run", "-", "--format", "raw", "--json"], None);
    let v = json(&o);
    assert_eq!(v["choice"]["backend"], "cpu");
    assert!(
        v["choice"]["reason"].as_str().unwrap().contains("unknown"),
        "{}",
        v["choice"]
    );
    assert!(!loaded_vulkan(&o));
}

#[test]
fn a_profile_that_makes_the_gpu_cheaper_takes_the_gpu() {
    let dir = scratch_root().join("mb-choose");
    let Some(ctx) = crate::common::gpu() else {
        return;
    };
    let adapter = ctx.adapter().name.clone();
    let cheap_gpu = profile(
        &dir,
        "gpu.json",
        &format!(
            r#"{{"format":"microbatch-profile","version":1,"created":"test",
                "cpu":{{"p":2,"s":1e-6,"d":1.0}},
                "gpu":{{"adapter":{adapter:?},"fit":{{"p":16,"s":1e-12,"d":0.0}},"startup_s":0.0}}}}"#
        ),
    );
    let v = json(&run(
        &["run", "--random", "100000", "--json"],
        Some(&cheap_gpu),
    ));
    assert_eq!(v["choice"]["backend"], "gpu", "{}", v["choice"]);
    assert_eq!(v["backend"]["kind"], "gpu");
    assert_eq!(v["stats"]["count"], 100_000);
    // The same cheap GPU for a text input: parsed to f64 and reduced by the CPU kernels on
    // either backend, so no f32 values to gain from it: the CPU, without loading Vulkan.
    let csv = dir.join("values.csv");
    std::fs::write(&csv, "x\n1.5\n2.5\n").unwrap();
    let o = run(&["run", csv.to_str().unwrap(), "--json"], Some(&cheap_gpu));
    let v = json(&o);
    assert_eq!(v["choice"]["backend"], "cpu", "{}", v["choice"]);
    assert_eq!(v["choice"]["elements"], 0);
    assert_eq!(v["stats"]["count"], 2);
    assert!(!loaded_vulkan(&o));
    // The same profile with an adapter that is not here: the CPU, with a line saying so.
    let gone = profile(
        &dir,
        "gone.json",
        r#"{"format":"microbatch-profile","version":1,"created":"test",
            "cpu":{"p":2,"s":1e-6,"d":1.0},
            "gpu":{"adapter":"No Such GPU 9000","fit":{"p":16,"s":1e-12,"d":0.0},"startup_s":0.0}}"#,
    );
    let o = run(&["run", "--random", "100000", "--json"], Some(&gone));
    let v = json(&o);
    assert_eq!(v["backend"]["kind"], "cpu");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not here"));

    // Several GPUs (profile version 2): each predicted with its own P, S and D; the cheapest
    // runs, whichever comes first in the profile.
    let two = profile(
        &dir,
        "two.json",
        &format!(
            r#"{{"format":"microbatch-profile","version":2,"created":"test",
                "cpu":{{"p":2,"s":1e-6,"d":1.0}},
                "gpus":[{{"adapter":"Slow GPU 1","fit":{{"p":16,"s":1e-9,"d":0.5}},"startup_s":0.5}},
                        {{"adapter":{adapter:?},"fit":{{"p":16,"s":1e-12,"d":0.0}},"startup_s":0.0}}]}}"#
        ),
    );
    let o = run(&["run", "--random", "100000", "--json"], Some(&two));
    let v = json(&o);
    assert_eq!(v["choice"]["backend"], "gpu", "{}", v["choice"]);
    assert_eq!(v["choice"]["adapter"], adapter.as_str(), "{}", v["choice"]);
    assert_eq!(v["choice"]["gpus"].as_array().unwrap().len(), 2);
    let slow = v["choice"]["gpus"][0]["predicted_s"].as_f64().unwrap();
    let fast = v["choice"]["gpus"][1]["predicted_s"].as_f64().unwrap();
    assert!(
        fast < slow && (slow - (0.5 + 1e5 / 16.0 * 1e-9)).abs() < 1e-12,
        "{}",
        v["choice"]
    );
    assert_eq!(v["choice"]["predicted_s"]["gpu"].as_f64(), Some(fast));
    assert_eq!(v["backend"]["adapter"], adapter.as_str());
    // An impossible fit is an error naming the adapter, not a silent choice.
    let bad = profile(
        &dir,
        "neg.json",
        r#"{"format":"microbatch-profile","version":2,"created":"test",
            "cpu":{"p":2,"s":1e-6,"d":1.0},
            "gpus":[{"adapter":"Odd GPU","fit":{"p":0,"s":1e-9,"d":0.5},"startup_s":0.5}]}"#,
    );
    let o = run(&["run", "--random", "100000", "--json"], Some(&bad));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Odd GPU"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn calibrate_writes_a_profile_auto_reads_and_bad_profiles_are_errors() {
    let dir = scratch_root().join("mb-calibrate");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("profile.json");
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["calibrate", "--output", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(p["format"], "microbatch-profile");
    assert!(p["cpu"]["s"].as_f64().unwrap() > 0.0, "{p}");
    let v = json(&run(&["run", "--random", "1000", "--json"], Some(&path)));
    assert_eq!(v["choice"]["profile"], path.to_str().unwrap());
    let bad = profile(&dir, "bad.json", r#"{"format":"something else"}"#);
    let o = run(&["run", "--random", "1000"], Some(&bad));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json"));
    let _ = std::fs::remove_dir_all(&dir);
}
