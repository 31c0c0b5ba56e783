//! The `microbatch` binary: JSON schema, exit codes, error messages.

use crate::common::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    tmp_file("cli", name, bytes)
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn json_has_exactly_the_documented_schema() {
    let v = json(&run(&[
        "run",
        "--random",
        "1e5",
        "--seed",
        "3",
        "--batch-size",
        "1000",
        "--backend",
        "cpu",
        "--json",
    ]));
    assert_eq!(
        keys(&v),
        [
            "backend",
            "batches",
            "input",
            "stats",
            "throughput",
            "timings_s"
        ]
    );
    assert_eq!(keys(&v["input"]), ["skipped_invalid", "sources"]);
    assert_eq!(
        keys(&v["input"]["sources"][0]),
        [
            "dtype",
            "name",
            "nulls",
            "precision",
            "shape",
            "skipped_invalid"
        ]
    );
    assert_eq!(
        keys(&v["stats"]),
        [
            "count",
            "ddof",
            "max",
            "mean",
            "min",
            "nan_count",
            "std",
            "sum",
            "var"
        ]
    );
    assert_eq!(
        keys(&v["backend"]),
        ["adapter", "api", "device_type", "kind"]
    );
    assert_eq!(keys(&v["batches"]), ["count", "size", "workgroups"]);
    assert_eq!(
        keys(&v["timings_s"]),
        ["compute", "merge", "read", "readback", "total", "upload"]
    );
    assert_eq!(keys(&v["throughput"]), ["bytes_per_s", "elements_per_s"]);
    assert_eq!(v["stats"]["count"], 100_000);
    assert_eq!(v["batches"]["count"], 100);
    assert_eq!(v["batches"]["size"], 1000);
    assert_eq!(v["backend"]["kind"], "cpu");
    let mean = v["stats"]["mean"].as_f64().unwrap();
    assert!((mean - 0.5).abs() < 0.01, "mean of U(0,1) over 1e5: {mean}");
    assert!(v["timings_s"]["total"].as_f64().unwrap() > 0.0);
}

#[test]
fn file_and_stdin_give_the_f64_reference() {
    let values: Vec<f32> = (0..10_007)
        .map(|i| ((i * 37) % 101) as f32 - 50.5)
        .collect();
    let bytes = f32_bytes(&values);
    let path = tmp("values.f32", &bytes);
    let r = crate::common::reference(&values);
    let from_file = json(&run(&[
        "run",
        path.to_str().unwrap(),
        "--backend",
        "cpu",
        "-b",
        "1000",
        "--json",
    ]));
    let mut child = bin()
        .args([
            "run",
            "-",
            "--format",
            "raw",
            "--backend",
            "cpu",
            "-b",
            "999",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let from_stdin = json(&child.wait_with_output().unwrap());
    for v in [&from_file, &from_stdin] {
        assert_eq!(v["stats"]["count"], 10_007);
        assert_eq!(v["stats"]["min"].as_f64(), Some(r.min));
        assert_eq!(v["stats"]["max"].as_f64(), Some(r.max));
        let sum = v["stats"]["sum"].as_f64().unwrap();
        crate::common::assert_close("sum", sum, r.sum, r.sum_tolerance(crate::common::CPU_DEPTH));
    }
}

#[test]
fn non_finite_values_are_strings_and_undefined_values_null() {
    let nan = tmp("nan.f32", &f32_bytes(&[1.0, f32::NAN, 2.0]));
    let v = json(&run(&[
        "run",
        nan.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]));
    assert_eq!(v["stats"]["sum"], "NaN");
    assert_eq!(v["stats"]["nan_count"], 1);
    let v = json(&run(&[
        "run",
        nan.to_str().unwrap(),
        "--backend",
        "cpu",
        "--skip-nan",
        "--json",
    ]));
    assert_eq!(v["stats"]["sum"], 3.0);
    assert_eq!(v["stats"]["count"], 2);
    let inf = tmp(
        "inf.f32",
        &f32_bytes(&[1.0, f32::INFINITY, f32::NEG_INFINITY]),
    );
    let v = json(&run(&[
        "run",
        inf.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]));
    assert_eq!(
        (v["stats"]["min"].as_str(), v["stats"]["max"].as_str()),
        (Some("-inf"), Some("inf"))
    );
    let one = tmp("one.f32", &f32_bytes(&[4.0]));
    let v = json(&run(&[
        "run",
        one.to_str().unwrap(),
        "--backend",
        "cpu",
        "--ddof",
        "1",
        "--json",
    ]));
    assert_eq!(v["stats"]["var"], Value::Null);
    assert_eq!(v["stats"]["mean"], 4.0);
}

#[test]
fn empty_input_is_count_zero_and_exit_zero() {
    let empty = tmp("empty.f32", &[]);
    let v = json(&run(&[
        "run",
        empty.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]));
    assert_eq!(v["stats"]["count"], 0);
    for k in ["mean", "min", "max", "var", "std"] {
        assert_eq!(v["stats"][k], Value::Null, "{k}");
    }
    let table = run(&["run", empty.to_str().unwrap(), "--backend", "cpu"]);
    assert!(table.status.success());
    assert!(stdout(&table).contains("undefined"));
}

#[test]
fn truncated_file_names_path_and_offset() {
    let path = tmp("truncated.f32", &[0u8; 4 * 5 + 3]);
    let o = run(&["run", path.to_str().unwrap(), "--backend", "cpu"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("truncated.f32") && err.contains("offset 20"),
        "{err}"
    );
    assert!(
        stdout(&o).is_empty(),
        "no statistics on error: {}",
        stdout(&o)
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn truncated_stdin_names_offset_and_prints_nothing() {
    let mut child = bin()
        .args([
            "run",
            "-",
            "--dtype",
            "f32",
            "--backend",
            "cpu",
            "-b",
            "2",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[0u8; 4 * 9 + 1])
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("<stdin>") && stderr(&o).contains("offset 36"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn missing_path_and_directory_are_clear_errors() {
    let o = run(&["run", "/no/such/file.f32"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/no/such/file.f32"), "{}", stderr(&o));
    let dir = std::env::temp_dir();
    let o = run(&["run", dir.to_str().unwrap(), "--backend", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

#[test]
fn unknown_adapter_is_named_in_the_error() {
    let o = run(&["run", "--random", "10", "--adapter", "no-such-gpu-xyz"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("no-such-gpu-xyz") && err.contains("available adapters"),
        "{err}"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn bad_arguments_exit_two() {
    for args in [
        &["run", "--random", "10", "--batch-size", "0"][..],
        &["run", "--random", "-5"],
        &["run", "--random", "1.5"],
        &["run"],
        &["run", "--random", "10", "--ddof", "-1"],
        &["run", "--random", "10", "--workgroups", "0"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn table_output_names_backend_and_stages() {
    let o = run(&[
        "run",
        "--random",
        "1000000",
        "--batch-size",
        "1000",
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for word in [
        "count",
        "1000000",
        "mean",
        "std",
        "kind       cpu",
        "read",
        "upload",
        "compute",
        "readback",
        "merge",
        "total",
        "elements/s",
    ] {
        assert!(out.contains(word), "missing {word:?} in:\n{out}");
    }
}

#[test]
fn gpu_backend_through_the_binary() {
    if crate::common::gpu().is_none() {
        return;
    }
    let v = json(&run(&[
        "run",
        "--random",
        "2e5",
        "--seed",
        "9",
        "-b",
        "50000",
        "--backend",
        "gpu",
        "--json",
    ]));
    let c = json(&run(&[
        "run",
        "--random",
        "2e5",
        "--seed",
        "9",
        "-b",
        "50000",
        "--backend",
        "cpu",
        "--json",
    ]));
    assert_eq!(v["backend"]["kind"], "gpu");
    assert_eq!(v["batches"]["count"], 4);
    assert_eq!(v["stats"]["min"], c["stats"]["min"]);
    assert_eq!(v["stats"]["max"], c["stats"]["max"]);
    let (gs, cs) = (
        v["stats"]["sum"].as_f64().unwrap(),
        c["stats"]["sum"].as_f64().unwrap(),
    );
    // 2e5 values in [0,1): GPU depth ≤ 12 + CPU depth 68, ε·n·range each.
    let tol = (12.0 + crate::common::CPU_DEPTH) * crate::common::EPS32 * 2e5;
    crate::common::assert_close("gpu vs cpu sum", gs, cs, tol);
    let devices = run(&["devices", "--json"]);
    let list: Value = serde_json::from_slice(&devices.stdout).unwrap();
    let first = &list[0];
    for k in [
        "name",
        "api",
        "device_type",
        "driver",
        "max_buffer_size",
        "max_storage_binding",
        "subgroup_min_size",
        "timestamps",
    ] {
        assert!(!first[k].is_null(), "devices --json lacks {k}: {first}");
    }
}

/// Each input is reduced at its own precision, and the report says which (issue 10: a CSV value
/// 7.8026 printed as 7.802599906921387; i64 2^40 + 0..999 gave var 0; big-endian i64 around
/// ±4.6e18 was off 2.2e-6 in the sum).
#[test]
fn inputs_keep_their_precision_and_say_so() {
    let csv = tmp("prices.csv", b"price\n7.8026\n");
    let v = json(&run(&[
        "run",
        csv.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ]));
    assert_eq!(v["stats"]["sum"].as_f64(), Some(7.8026));
    assert_eq!(v["stats"]["max"].as_f64(), Some(7.8026));
    assert_eq!(v["input"]["sources"][0]["precision"], "f64");
    assert_eq!(v["input"]["sources"][0]["dtype"], "text");

    let ints: Vec<u8> = (0..1000i64)
        .flat_map(|i| ((1i64 << 40) + i).to_le_bytes())
        .collect();
    let path = tmp("ints.i64", &ints);
    let v = json(&run(&[
        "run",
        path.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ]));
    // var of 0..999 = (1000² − 1)/12, exact in f64.
    assert_eq!(v["stats"]["var"].as_f64(), Some(83_333.25));
    assert_eq!(v["stats"]["min"].as_f64(), Some(2f64.powi(40)));
    assert_eq!(v["input"]["sources"][0]["dtype"], "i64");
    assert_eq!(v["input"]["sources"][0]["precision"], "exact integer");

    let big: Vec<i64> = (0..2000i64)
        .map(|i| {
            if i % 2 == 0 {
                4_600_000_000_000_000_000 + i
            } else {
                -4_600_000_000_000_000_000 - 3 * i
            }
        })
        .collect();
    let bytes: Vec<u8> = big.iter().flat_map(|x| x.to_be_bytes()).collect();
    let path = tmp("big.bin", &bytes);
    let v = json(&run(&[
        "run",
        path.to_str().unwrap(),
        "--dtype",
        "i64",
        "--endian",
        "big",
        "--json",
        "--backend",
        "cpu",
    ]));
    let exact: i128 = big.iter().map(|&x| i128::from(x)).sum();
    let sum = v["stats"]["sum"].as_f64().unwrap();
    let abs: f64 = big.iter().map(|&x| (x as f64).abs()).sum();
    // Each value rounds to f64 (±4.6e18 is past 2^53: ≤ 512 off), inside 1e-12·Σ|x|.
    assert!(
        (sum - exact as f64).abs() <= 1e-12 * abs,
        "{sum} vs {exact}"
    );
}

/// The library's messages name no flags; the binary adds a hint line with the flags that mend
/// the error, only where there are such flags.
#[test]
fn errors_get_the_flag_hint_that_mends_them_and_only_that() {
    let empty = tmp("hint-empty.csv", b"a,b\n1,\n");
    let o = run(&["run", empty.to_str().unwrap(), "--column", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("line 2, column 1 (\"b\"): empty field"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("hint: --null ''"), "{}", stderr(&o));
    let bad = tmp("hint-bad.csv", b"a,b\n1,x\n");
    let o = run(&["run", bad.to_str().unwrap(), "--column", "b"]);
    assert!(
        stderr(&o).contains("hint: --skip-invalid"),
        "{}",
        stderr(&o)
    );
    let o = run(&["run", bad.to_str().unwrap(), "--column", "zz"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no such column"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("hint:"), "{}", stderr(&o));
    let odd = tmp("hint-odd.f32", b"1234567");
    let o = run(&["run", odd.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stray byte"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("hint:"), "{}", stderr(&o));
}
