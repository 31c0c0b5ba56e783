//! `microbatch bench` end to end: a tiny sweep on the CPU (and the GPU where there is one),
//! exported to JSON, CSV and SVG.

use crate::common::*;
use std::process::Command;

#[test]
fn bench_exports_every_point_and_the_fit() {
    let dir = scratch_root().join("microbatch-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let (json, csv, svg) = (dir.join("b.json"), dir.join("b.csv"), dir.join("b.svg"));
    let backends = if crate::common::gpu().is_some() {
        "cpu,gpu"
    } else {
        "cpu"
    };
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args([
            "bench",
            "--sizes",
            "1e4,1e5",
            "--batch-sizes",
            "4096,65536",
            "--workgroups",
            "2",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--quiet",
        ])
        .args(["--backends", backends])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("ceilings") && out.contains("cost model") && out.contains("R²"),
        "{out}"
    );

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let points = v["points"].as_array().unwrap();
    let n_backends = backends.split(',').count();
    // Per backend and size: 2 streaming (two B) + 1 resident, with one P.
    assert_eq!(points.len(), 2 * 3 * n_backends);
    for p in points {
        let s = &p["seconds"];
        assert!(s["min"].as_f64().unwrap() <= s["median"].as_f64().unwrap());
        assert!(s["median"].as_f64().unwrap() <= s["max"].as_f64().unwrap());
        assert!(p["bytes_per_s"]["median"].as_f64().unwrap() > 0.0);
    }
    assert!(v["ceilings"]["host_read"].as_f64().unwrap() > 0.0);
    // Two sizes per (backend, mode, B, P) group: every group gets a fit.
    assert_eq!(v["fits"].as_array().unwrap().len(), 3 * n_backends);

    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 1 + points.len());
    assert!(rows.starts_with("backend,mode,n,batch_size,workgroups,"));
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") || picture.contains("<svg"));
    for label in ["GB/s", "elements N", "batch size B", "host read ceiling"] {
        assert!(picture.contains(label), "plot lacks {label:?}");
    }
}

/// `bench --files`: whole `run` processes per file and backend, each row's count the file's.
#[test]
fn bench_files_times_whole_runs_per_format() {
    let dir = scratch_root().join("microbatch-bench-files");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("v.f32");
    std::fs::write(
        &raw,
        (0..1000)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let csv = dir.join("v.csv");
    std::fs::write(&csv, "x\n1\n2\n3\n").unwrap();
    let json = dir.join("files.json");
    let files = format!("{},{}", raw.display(), csv.display());
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args([
            "bench",
            "--files",
            &files,
            "--backends",
            "cpu",
            "--runs",
            "2",
        ])
        .args(["--warmup", "0", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("median ms") && table.contains("v.csv"),
        "{table}"
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows[0]["count"], 1000);
    assert_eq!(rows[1]["count"], 3);
    assert_eq!(rows[0]["times"].as_array().unwrap().len(), 2);
    assert!(rows[1]["input"].as_str().unwrap().contains("text"));
    // A file that fails is an error, not a row.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "x\nnope\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["bench", "--backends", "cpu", "--runs", "1", "--files"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The kernel variants side by side in one run: one GPU point per combination of the kernel
/// lists, each naming its variant, each with its own fit; device-clock figures where the
/// adapter has timestamps (lavapipe does) and never above what the wall clock allows.
#[test]
fn bench_compares_kernel_variants_in_one_run() {
    let Some(ctx) = gpu() else { return };
    let dir = Scratch::new("bench-variants");
    let json = dir.join("v.json");
    let o = run(&[
        "bench",
        "--backends",
        "gpu",
        "--modes",
        "resident",
        "--sizes",
        "2e4,6e4",
        "--workgroups",
        "3",
        "--vec-per-thread",
        "2,4",
        "--loads",
        "loop,unrolled",
        "--slow-path",
        "inline,deferred",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("loads=unrolled slow=deferred"), "{table}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2 * 8, "two sizes × eight variants");
    let mut kernels: Vec<&str> = points
        .iter()
        .map(|p| p["kernel"].as_str().unwrap())
        .collect();
    kernels.sort();
    kernels.dedup();
    assert_eq!(kernels.len(), 8, "{kernels:?}");
    for vpt in [2, 4] {
        for loads in ["loop", "unrolled"] {
            for slow in ["inline", "deferred"] {
                let tag = format!("vpt={vpt} loads={loads} slow={slow} combine=tree");
                assert!(
                    kernels.contains(&tag.as_str()),
                    "{tag} missing: {kernels:?}"
                );
            }
        }
    }
    // Each variant over the two sizes is its own fit.
    let fits = v["fits"].as_array().unwrap();
    assert_eq!(fits.len(), 8);
    assert!(fits.iter().all(|f| f["kernel"].is_string()));
    for p in points {
        let device = &p["device_seconds"];
        if ctx.adapter().timestamps {
            let (dev, wall) = (
                device["median"].as_f64().unwrap(),
                p["seconds"]["max"].as_f64().unwrap(),
            );
            assert!(
                dev > 0.0 && dev <= wall,
                "device {dev} s, wall at most {wall} s"
            );
            assert!(p["device_bytes_per_s"]["median"].as_f64().unwrap() > 0.0);
        } else {
            assert!(device.is_null());
        }
    }
}
