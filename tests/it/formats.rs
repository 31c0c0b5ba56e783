//! Every input format through the binary, on both backends, against values computed
//! independently: numpy's own files and statistics (tests/data, from scripts/make_fixtures.py),
//! and files these tests write. Also stdin for every format, several inputs, partial files and
//! merge, and the bad-input errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use microbatch::source::npy;
use rand::RngExt;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap()
}

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    tmp_file("formats", name, bytes)
}

fn reference_of(e: &Value) -> Reference {
    let n = e["count"].as_u64().unwrap() as usize;
    Reference {
        n,
        sum: e["sum"].as_f64().unwrap(),
        mean: e["mean"].as_f64().unwrap(),
        m2: e["var"].as_f64().unwrap() * n as f64,
        min: e["min"].as_f64().unwrap(),
        max: e["max"].as_f64().unwrap(),
        // numpy's statistics do not give Σ|x|; n·max|x| bounds it.
        abs_sum: n as f64
            * e["min"]
                .as_f64()
                .unwrap()
                .abs()
                .max(e["max"].as_f64().unwrap().abs()),
    }
}

/// The f32 depth of the reduction that produced `v` (a `run --json` report).
fn depth_of(v: &Value) -> f64 {
    if v["backend"]["kind"] == "gpu" {
        let n = v["stats"]["count"].as_u64().unwrap() as usize;
        let p = v["batches"]["workgroups"].as_u64().unwrap() as u32;
        gpu_depth(n.min(v["batches"]["size"].as_u64().unwrap() as usize), p)
    } else {
        CPU_DEPTH
    }
}

#[track_caller]
fn check(what: &str, v: &Value, r: &Reference) {
    check_depth(what, v, r, depth_of(v));
}

#[track_caller]
fn check_depth(what: &str, v: &Value, r: &Reference, depth: f64) {
    check_stats_json(what, &v["stats"], r, depth);
}

#[test]
fn numpy_files_match_numpy_on_both_backends() {
    let exp = expected();
    for backend in backends() {
        for (name, e) in exp.as_object().unwrap() {
            let (file, extra): (&str, Vec<&str>) = match name.split_once(':') {
                Some((f, col)) => (f, vec!["--column", col]),
                None => (name.as_str(), vec![]),
            };
            let path = data(file);
            let mut args = vec![
                "run",
                path.to_str().unwrap(),
                "--json",
                "--backend",
                backend,
            ];
            args.extend(&extra);
            let v = json(&run(&args));
            check(&format!("{name} on {backend}"), &v, &reference_of(e));
            if !e["shape"].is_null() {
                assert_eq!(
                    v["input"]["sources"][0]["shape"], e["shape"],
                    "{name}: shape"
                );
            }
        }
        // The same table as TSV and as whitespace-separated text without a header.
        let b = reference_of(&exp["table.csv:b"]);
        let tsv = data("table.tsv");
        let v = json(&run(&[
            "run",
            tsv.to_str().unwrap(),
            "--column",
            "b",
            "--json",
            "--backend",
            backend,
        ]));
        check("table.tsv", &v, &b);
        let txt = data("table.txt");
        let v = json(&run(&[
            "run",
            txt.to_str().unwrap(),
            "--no-header",
            "--column",
            "1",
            "--json",
            "--backend",
            backend,
        ]));
        check("table.txt", &v, &b);
    }
}

#[test]
fn stdin_serves_every_format() {
    let exp = expected();
    for (file, format, extra) in [
        ("f64_2d.npy", "npy", vec![]),
        ("i64_v2.npy", "npy", vec![]),
        ("table.csv", "csv", vec!["--column", "b"]),
        ("table.tsv", "tsv", vec!["--column", "b"]),
        ("table.txt", "txt", vec!["--column", "1", "--no-header"]),
    ] {
        let bytes = std::fs::read(data(file)).unwrap();
        for backend in backends() {
            let mut args = vec![
                "run",
                "-",
                "--format",
                format,
                "--json",
                "--backend",
                backend,
                "--batch-size",
                "97",
            ];
            args.extend(&extra);
            let v = json(&run_stdin(&args, &bytes));
            let key = if format == "npy" {
                file.to_string()
            } else {
                "table.csv:b".to_string()
            };
            check(
                &format!("{file} on stdin, {backend}"),
                &v,
                &reference_of(&exp[&key]),
            );
        }
    }
    // Raw f64, big-endian, through stdin.
    let mut rng = fresh_rng("stdin_raw_f64");
    let values: Vec<f64> = (0..1001)
        .map(|_| rng.random::<f64>() * 1e3 - 500.0)
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let v = json(&run_stdin(
        &[
            "run",
            "-",
            "--dtype",
            "f64",
            "--endian",
            "big",
            "--json",
            "--backend",
            "cpu",
        ],
        &bytes,
    ));
    check(
        "raw f64 big-endian on stdin",
        &v,
        &reference_f64(values.iter().copied()),
    );
}

/// Every raw element type in both byte orders, written by the test, against an exact reference
/// of the values at their own precision (f32 for f32 and ≤16-bit integers, else f64: a 64-bit
/// integer past 2^53 rounds to the nearest f64, as documented).
#[test]
fn raw_binary_every_dtype_and_byte_order() {
    let mut rng = fresh_rng("raw_binary_every_dtype");
    let n = 3001;
    for dtype in [
        "f32", "f64", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64",
    ] {
        // Values spanning the type's range.
        let raw: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
        let (le, be, conv): (Vec<u8>, Vec<u8>, Vec<f64>) = {
            let mut le = Vec::new();
            let mut be = Vec::new();
            let mut conv = Vec::new();
            macro_rules! put {
                ($t:ty, $x:expr) => {{
                    let x: $t = $x;
                    le.extend_from_slice(&x.to_le_bytes());
                    be.extend_from_slice(&x.to_be_bytes());
                    conv.push(x as f64);
                }};
            }
            for &u in &raw {
                match dtype {
                    "f32" => put!(f32, (u * 2e6 - 1e6) as f32),
                    "f64" => put!(f64, u * 2e30 - 1e30),
                    "i8" => put!(i8, (u * 255.0 - 128.0) as i8),
                    "i16" => put!(i16, (u * 65535.0 - 32768.0) as i16),
                    "i32" => put!(i32, (u * 4e9 - 2e9) as i32),
                    "i64" => put!(i64, (u * 1.8e19 - 9e18) as i64),
                    "u8" => put!(u8, (u * 255.0) as u8),
                    "u16" => put!(u16, (u * 65535.0) as u16),
                    "u32" => put!(u32, (u * 4.29e9) as u32),
                    _ => put!(u64, (u * 1.8e19) as u64),
                }
            }
            (le, be, conv)
        };
        let r = reference_f64(conv.iter().copied());
        for (endian, bytes) in [("little", &le), ("big", &be)] {
            let path = tmp(&format!("x-{dtype}-{endian}.bin"), bytes);
            let v = json(&run(&[
                "run",
                path.to_str().unwrap(),
                "--dtype",
                dtype,
                "--endian",
                endian,
                "--batch-size",
                "1000",
                "--json",
                "--backend",
                "cpu",
            ]));
            check(&format!("{dtype} {endian}"), &v, &r);
            // Mapped (the default) or read through a buffer: the same bits.
            let buffered = json(&run(&[
                "run",
                path.to_str().unwrap(),
                "--dtype",
                dtype,
                "--endian",
                endian,
                "--batch-size",
                "1000",
                "--json",
                "--backend",
                "cpu",
                "--no-mmap",
            ]));
            assert_eq!(v["stats"], buffered["stats"], "{dtype} {endian}");
            assert_eq!(v["batches"]["count"], 4, "{dtype} {endian}");
        }
        // The extension alone picks the type; both backends.
        let path = tmp(&format!("x.{dtype}"), &le);
        for backend in backends() {
            let v = json(&run(&[
                "run",
                path.to_str().unwrap(),
                "--json",
                "--backend",
                backend,
            ]));
            check(&format!(".{dtype} on {backend}"), &v, &r);
        }
    }
}

/// npy files of every version, both orders, N-d and 0-d, written with our header writer.
#[test]
fn npy_versions_shapes_and_orders_from_written_headers() {
    let mut rng = fresh_rng("npy_versions");
    for (descr, fortran, shape) in [
        ("<f4", false, vec![7u64, 11, 3]),
        (">f8", true, vec![50, 4]),
        ("<u2", false, vec![1000]),
        ("|i1", true, vec![9, 9]),
        ("<f8", false, vec![]),
    ] {
        let n: u64 = shape.iter().product();
        let values: Vec<f32> = uniform(&mut rng, n as usize, -100.0, 100.0);
        let mut bytes = npy::write_header(descr, fortran, &shape);
        let mut conv = Vec::new();
        for &x in &values {
            match descr {
                "<f4" => bytes.extend_from_slice(&x.to_le_bytes()),
                ">f8" => bytes.extend_from_slice(&f64::from(x).to_be_bytes()),
                "<u2" => {
                    let v = (x + 100.0) as u16;
                    bytes.extend_from_slice(&v.to_le_bytes());
                    conv.push(f32::from(v));
                    continue;
                }
                "|i1" => {
                    let v = x as i8;
                    bytes.push(v as u8);
                    conv.push(f32::from(v));
                    continue;
                }
                _ => bytes.extend_from_slice(&f64::from(x).to_le_bytes()),
            }
            conv.push(x);
        }
        let path = tmp(&format!("w{}{}.npy", &descr[1..], shape.len()), &bytes);
        let v = json(&run(&[
            "run",
            path.to_str().unwrap(),
            "--json",
            "--backend",
            "cpu",
        ]));
        check(descr, &v, &reference(&conv));
        assert_eq!(
            v["input"]["sources"][0]["shape"],
            serde_json::json!(shape),
            "{descr}"
        );
        let buffered = json(&run(&[
            "run",
            path.to_str().unwrap(),
            "--json",
            "--backend",
            "cpu",
            "--no-mmap",
        ]));
        assert_eq!(v["stats"], buffered["stats"], "{descr}");
    }
    // A header whose length leaves the f64 data off an 8-byte boundary (numpy pads to 64, but
    // the format only needs the dictionary to end in a newline): decoded from the mapping, not
    // lent, with the same answer.
    let values = uniform(&mut rng, 1001, -5.0, 5.0);
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (1001,), }\n";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((dict.len() as u16).to_le_bytes());
    bytes.extend(dict.as_bytes());
    assert_ne!(
        bytes.len() % 8,
        0,
        "the data must start off an 8-byte boundary"
    );
    for &x in &values {
        bytes.extend_from_slice(&f64::from(x).to_le_bytes());
    }
    let path = tmp("misaligned.npy", &bytes);
    let v = json(&run(&[
        "run",
        path.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ]));
    check("misaligned <f8", &v, &reference(&values));
    let buffered = json(&run(&[
        "run",
        path.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
        "--no-mmap",
    ]));
    assert_eq!(v["stats"], buffered["stats"]);
}

#[test]
fn several_inputs_reduce_as_one_stream_with_per_file_statistics() {
    let exp = expected();
    let a = data("f32_v3.npy");
    let b = data("i16.npy");
    let v = json(&run(&[
        "run",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--per-file",
        "--json",
        "--backend",
        "cpu",
    ]));
    let ea = &exp["f32_v3.npy"];
    let eb = &exp["i16.npy"];
    assert_eq!(
        v["stats"]["count"].as_u64(),
        Some(ea["count"].as_u64().unwrap() + eb["count"].as_u64().unwrap())
    );
    let sum = ea["sum"].as_f64().unwrap() + eb["sum"].as_f64().unwrap();
    assert_close(
        "combined sum",
        v["stats"]["sum"].as_f64().unwrap(),
        sum,
        1e-9 * sum.abs(),
    );
    assert_eq!(v["stats"]["min"].as_f64(), eb["min"].as_f64());
    assert_eq!(v["files"].as_array().unwrap().len(), 2);
    for (f, e) in v["files"].as_array().unwrap().iter().zip([ea, eb]) {
        assert_eq!(f["stats"]["count"], e["count"]);
        assert_eq!(f["stats"]["max"].as_f64(), e["max"].as_f64());
    }
    assert_eq!(v["input"]["sources"].as_array().unwrap().len(), 2);
}

#[test]
fn shards_merge_to_the_statistics_of_the_whole() {
    let mut rng = fresh_rng("shards_merge");
    let data = normal(&mut rng, 30_011, 1e3, 7.0);
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let cuts = [0, 9_000, 9_001, 21_500, data.len()];
    let mut partials = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let shard = tmp(&format!("shard{i}.f32"), &bytes(&data[w[0]..w[1]]));
        let partial = shard.with_extension("json");
        let backend = if i % 2 == 0 || gpu().is_none() {
            "cpu"
        } else {
            "gpu"
        };
        let o = run(&[
            "run",
            shard.to_str().unwrap(),
            "--partial",
            partial.to_str().unwrap(),
            "--ddof",
            "1",
            "--backend",
            backend,
            "--json",
        ]);
        json(&o);
        partials.push(partial);
    }
    let args: Vec<&str> = ["merge", "--json"]
        .into_iter()
        .chain(partials.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let merged = json(&run(&args));
    let r = reference(&data);
    assert_eq!(merged["stats"]["ddof"], 1);
    // The deepest f32 path among the shards: the GPU's with a single workgroup over the largest
    // shard (12,500 values) is the worst any P can give, else the CPU's.
    let depth = if gpu().is_some() {
        gpu_depth(12_500, 1).max(CPU_DEPTH)
    } else {
        CPU_DEPTH
    };
    let sample_var = r.m2 / (r.n - 1) as f64;
    let mut r1 = r;
    r1.m2 = sample_var * r.n as f64; // check_depth() divides by n
    check_depth("merged shards (ddof 1)", &merged, &r1, depth);
    assert_eq!(merged["partials"], 4);

    // The same through stdin, all partials in one stream; and a merge of merges.
    let all: Vec<u8> = partials
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    let again = json(&run_stdin(&["merge", "-", "--json"], &all));
    assert_eq!(again["stats"], merged["stats"]);
    let m1 = tmp("m1.json", b"");
    json(&run(&[
        "merge",
        partials[0].to_str().unwrap(),
        partials[1].to_str().unwrap(),
        "--partial",
        m1.to_str().unwrap(),
        "--json",
    ]));
    let nested = json(&run(&[
        "merge",
        m1.to_str().unwrap(),
        partials[2].to_str().unwrap(),
        partials[3].to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(nested["stats"]["count"], merged["stats"]["count"]);
    assert_close(
        "nested merge sum",
        nested["stats"]["sum"].as_f64().unwrap(),
        merged["stats"]["sum"].as_f64().unwrap(),
        1e-12 * r.sum.abs(),
    );

    // Shards run with different options, or written by another version, are refused.
    let other = tmp("other.f32", &bytes(&data[..10]));
    let p_other = tmp("other.json", b"");
    json(&run(&[
        "run",
        other.to_str().unwrap(),
        "--partial",
        p_other.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]));
    let o = run(&[
        "merge",
        partials[0].to_str().unwrap(),
        p_other.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ddof"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut old: Value = serde_json::from_slice(&std::fs::read(&partials[0]).unwrap()).unwrap();
    old["version"] = 99.into();
    let old_path = tmp("old.json", old.to_string().as_bytes());
    let o = run(&["merge", old_path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(
        err.contains("old.json") && err.contains("version 99"),
        "{err}"
    );
}

/// Bad input: one clear error naming the file and where, a non-zero exit, nothing on stdout.
#[test]
fn bad_inputs_are_named_errors_with_nothing_printed() {
    let good = std::fs::read(data("f64_2d.npy")).unwrap();
    let header_len = npy::read_header(&mut &good[..]).unwrap().data_offset as usize;
    let mut lying = npy::write_header("<f8", false, &[40, 26]); // one row more than the data
    lying.extend_from_slice(&good[header_len..]);
    let mut unknown = npy::write_header("<c8", false, &[2]);
    unknown.extend_from_slice(&[0u8; 16]);
    let cases: Vec<(PathBuf, Vec<&str>, Vec<&str>)> = vec![
        (
            tmp("trunc.f64", &[0u8; 8 * 5 + 3]),
            vec![],
            vec!["trunc.f64", "offset 40"],
        ),
        (
            tmp("magic.npy", b"NUMPY\x01\x00garbage"),
            vec![],
            vec!["magic.npy", "byte offset 0", "magic"],
        ),
        (
            tmp("lying.npy", &lying),
            vec![],
            vec!["lying.npy", "promises 1040", "8000 bytes"],
        ),
        (
            tmp("unknown.npy", &unknown),
            vec![],
            vec!["unknown.npy", "unsupported dtype"],
        ),
        (
            tmp("cut.npy", &good[..50]),
            vec![],
            vec!["cut.npy", "ends inside the header"],
        ),
        (
            tmp("short.npy", &good[..good.len() - 3]),
            vec![],
            vec!["short.npy", "byte offset"],
        ),
        (tmp("empty.npy", b""), vec![], vec!["empty.npy", "magic"]),
        (tmp("empty.csv", b""), vec![], vec!["empty.csv", "empty"]),
        (
            tmp("missing-col.csv", b"a,b\n1,2\n3\n"),
            vec!["--column", "b"],
            vec!["missing-col.csv", "line 3", "column"],
        ),
        (
            tmp("nan-text.csv", b"a\n1\nfoo\n"),
            vec![],
            vec!["nan-text.csv", "line 3", "\"foo\" is not a number"],
        ),
        (
            tmp("nocol.csv", b"a,b\n1,2\n"),
            vec!["--column", "c"],
            vec!["nocol.csv", "no such column"],
        ),
        (std::env::temp_dir(), vec![], vec!["not a regular file"]),
        (
            PathBuf::from("/no/such/file.npy"),
            vec![],
            vec!["/no/such/file.npy"],
        ),
    ];
    for (path, extra, wants) in cases {
        for backend in backends() {
            let mut args = vec!["run", path.to_str().unwrap(), "--backend", backend];
            args.extend(&extra);
            let o = run(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{path:?}: exit; {err}");
            assert!(
                o.stdout.is_empty(),
                "{path:?} printed {}",
                String::from_utf8_lossy(&o.stdout)
            );
            assert!(!err.contains("panicked"), "{err}");
            for w in &wants {
                assert!(err.contains(w), "{path:?}: {w:?} not in {err}");
            }
        }
    }
    // A second input going bad after the first reduced fine: still nothing printed, no partial
    // file written.
    let partial = tmp("never.json", b"");
    std::fs::remove_file(&partial).unwrap();
    let bad = tmp("bad2.npy", b"\x93NUMPY\x01\x00\x05\x00{'de");
    let o = run(&[
        "run",
        data("i16.npy").to_str().unwrap(),
        bad.to_str().unwrap(),
        "--partial",
        partial.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(
        !partial.exists(),
        "a partial file was written for a failed run"
    );
    // --skip-invalid counts instead.
    let v = json(&run(&[
        "run",
        tmp("skip.csv", b"a\n1\nfoo\n\n2\n,\n").to_str().unwrap(),
        "--skip-invalid",
        "--json",
        "--backend",
        "cpu",
    ]));
    assert_eq!(v["stats"]["count"], 2);
    assert_eq!(v["input"]["skipped_invalid"], 2);
}

/// Input detection never guesses wrong silently (issue 10): each case either reads right or is
/// an error that says what to pass, with nothing on stdout.
#[test]
fn detection_reads_right_or_says_what_to_pass() {
    let stats = |v: &Value| {
        (
            v["stats"]["count"].as_u64().unwrap(),
            v["stats"]["sum"].as_f64().unwrap(),
        )
    };
    // Single-column CSVs in every shape people write them.
    for (name, text) in [
        ("one.csv", &b"price\n7.8026\n1.5\n"[..]),
        ("cr.csv", b"price\r7.8026\r1.5\r"),
        ("crlf.csv", b"price\r\n7.8026\r\n1.5\r\n"),
        ("bom.csv", b"\xEF\xBB\xBFprice\n7.8026\n1.5\n"),
        ("quoted.csv", b"\"price\"\n\"7.8026\"\n\"1.5\"\n"),
        ("blank.csv", b"\n\nunit price\n7.8026\n\n1.5\n"),
    ] {
        let path = tmp(name, text);
        let v = json(&run(&[
            "run",
            path.to_str().unwrap(),
            "--json",
            "--backend",
            "cpu",
        ]));
        assert_eq!(stats(&v), (2, 7.8026 + 1.5), "{name}");
    }
    // Compressed files are unpacked, by name or by content, and read by the inner extension.
    let csv = b"a,b\n1,2.5\n2,3.5\n3,4.5\n".to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&csv).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&csv[..], 3).unwrap();
    for (name, bytes) in [("table.csv.gz", &gz), ("table.csv.zst", &zst)] {
        let path = tmp(name, bytes);
        for backend in backends() {
            let v = json(&run(&[
                "run",
                path.to_str().unwrap(),
                "--column",
                "b",
                "--json",
                "--backend",
                backend,
            ]));
            assert_eq!(stats(&v), (3, 10.5), "{name} on {backend}");
        }
    }
    let v = json(&run_stdin(
        &["run", "-", "--format", "csv", "--column", "b", "--json"],
        &gz,
    ));
    assert_eq!(stats(&v), (3, 10.5), "gzip on stdin");
    // .npy through gzip on stdin: found by its magic after unpacking.
    let npy_bytes = std::fs::read(data("f64_2d.npy")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&npy_bytes).unwrap();
    let v = json(&run_stdin(
        &["run", "-", "--json", "--backend", "cpu"],
        &gz.finish().unwrap(),
    ));
    assert_eq!(v["stats"]["count"], 1000);
    // What cannot be read right is a named error, exit 1, nothing on stdout.
    let zip = tmp("arrays.npz", b"PK\x03\x04\x14\x00\x00\x00rest of a zip");
    let text_bin = tmp("values.data", b"1.5\n2.5\n");
    for (args, input, says) in [
        (vec!["run", zip.to_str().unwrap()], &b""[..], "zip"),
        (vec!["run", text_bin.to_str().unwrap()], b"", "--format csv"),
        (vec!["run", "-"], b"1\n2\n3\n4\n", "--format csv"),
        (
            vec!["run", "-"],
            b"\x00\x01\x02\x03\xff\xfe\x80\x81",
            "--dtype",
        ),
        (
            vec!["run", tmp("bad.csv.gz", b"not gzip").to_str().unwrap()],
            b"",
            "gzip",
        ),
    ] {
        let o = run_stdin(&args, input);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // seq 1 10 | microbatch run - --format txt: all ten values (no header taken).
    let seq: String = (1..=10).map(|i| format!("{i}\n")).collect();
    let v = json(&run_stdin(
        &["run", "-", "--format", "txt", "--json"],
        seq.as_bytes(),
    ));
    assert_eq!(stats(&v), (10, 55.0));
    // /dev/stdin and a named pipe are read as streams.
    let v = json(&run_stdin(
        &["run", "/dev/stdin", "--format", "txt", "--json"],
        seq.as_bytes(),
    ));
    assert_eq!(stats(&v), (10, 55.0));
    let fifo = scratch_root().join("microbatch-fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let writer = {
        let fifo = fifo.clone();
        let seq = seq.clone();
        std::thread::spawn(move || std::fs::write(fifo, seq).unwrap())
    };
    let v = json(&run(&[
        "run",
        fifo.to_str().unwrap(),
        "--format",
        "txt",
        "--json",
    ]));
    writer.join().unwrap();
    let _ = std::fs::remove_file(&fifo);
    assert_eq!(stats(&v), (10, 55.0));
    // Null tokens are counted apart from invalid fields.
    let path = tmp("nulls.csv", b"k,v\na,1\nb,NA\nc,\nd,null\ne,2\n");
    let v = json(&run(&[
        "run",
        path.to_str().unwrap(),
        "--column",
        "v",
        "--null",
        "NA,null,",
        "--json",
    ]));
    assert_eq!(stats(&v), (2, 3.0));
    assert_eq!(v["input"]["sources"][0]["nulls"], 3);
    assert_eq!(v["input"]["sources"][0]["skipped_invalid"], 0);
}

/// 0/1 flags with one u64::MAX sentinel in a .u64 file (once var inf): exact on both backends.
#[test]
fn u64_flags_with_a_sentinel_are_exact() {
    let mut rng = fresh_rng("u64_flags");
    let mut v: Vec<u64> = (0..100_000)
        .map(|_| u64::from(rng.random::<bool>()))
        .collect();
    v[4242] = u64::MAX;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = tmp("flags.u64", &bytes);
    let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
    let n = v.len() as f64;
    let p = (sum / v.len() as u128) as i128;
    let r = reference_f64(v.iter().map(|&x| (i128::from(x) - p) as f64));
    for backend in backends() {
        for b in ["1000", "65536"] {
            let out = json(&run(&[
                "run",
                path.to_str().unwrap(),
                "--json",
                "--backend",
                backend,
                "--batch-size",
                b,
            ]));
            let s = &out["stats"];
            assert_eq!(s["sum"].to_string(), sum.to_string(), "{backend} B={b}");
            assert_eq!(s["max"].to_string(), u64::MAX.to_string());
            assert_eq!(s["min"].to_string(), "0");
            let var = s["var"].as_f64().unwrap();
            let want = r.m2 / n;
            assert!(
                var.is_finite() && (var - want).abs() <= 1e-12 * want,
                "{var} vs {want}"
            );
        }
    }
}

/// numpy's float16 and bool, in `.npy` and raw binary, on both backends: half values (normal,
/// subnormal, the largest, −0) widened exactly and reduced as f32 against the f64 reference;
/// bools counted exactly as 0 and 1.
#[test]
fn float16_and_bool_inputs() {
    use microbatch::source::f16_to_f32;
    use microbatch::source::npy;
    use rand::RngExt;
    let mut rng = fresh_rng("float16_and_bool");
    let halves: Vec<u16> = (0..50_001)
        .map(|i| match i % 1000 {
            0 => 0x0001, // the smallest subnormal
            1 => 0x7bff, // 65504
            2 => 0x8000, // −0
            _ => rng.random_range(0..0x7c00u16) | (rng.random_range(0..2u16) << 15), // finite
        })
        .collect();
    let values: Vec<f32> = halves.iter().map(|&h| f16_to_f32(h)).collect();
    let mut npy_bytes = npy::write_header("<f2", false, &[halves.len() as u64]);
    npy_bytes.extend(halves.iter().flat_map(|h| h.to_le_bytes()));
    let big: Vec<u8> = halves.iter().flat_map(|h| h.to_be_bytes()).collect();
    let h_npy = tmp_file("f16-bool", "h.npy", &npy_bytes);
    let h_raw = tmp_file("f16-bool", "h.raw", &big);
    let bools: Vec<u8> = (0..30_007)
        .map(|_| u8::from(rng.random::<f64>() < 0.3))
        .collect();
    let trues = bools.iter().filter(|&&b| b == 1).count() as u64;
    let mut b_bytes = npy::write_header("|b1", false, &[bools.len() as u64]);
    b_bytes.extend(&bools);
    let b_npy = tmp_file("f16-bool", "b.npy", &b_bytes);
    let r = reference(&values);
    for backend in backends() {
        for args in [
            vec!["run", h_npy.to_str().unwrap()],
            vec![
                "run",
                h_raw.to_str().unwrap(),
                "--dtype",
                "f16",
                "--endian",
                "big",
            ],
        ] {
            let mut args = args.clone();
            args.extend(["--json", "--backend", backend]);
            let v = json(&run(&args));
            let depth = if backend == "gpu" {
                gpu_depth(
                    values.len(),
                    v["batches"]["workgroups"].as_u64().unwrap() as u32,
                )
            } else {
                CPU_DEPTH
            };
            check_stats_json(&format!("{backend} {args:?}"), &v["stats"], &r, depth);
        }
        let v = json(&run(&[
            "run",
            b_npy.to_str().unwrap(),
            "--json",
            "--backend",
            backend,
        ]));
        assert_eq!(v["stats"]["sum"].as_u64(), Some(trues), "{backend}");
        assert_eq!(v["stats"]["count"].as_u64(), Some(bools.len() as u64));
        assert_eq!(
            (v["stats"]["min"].as_u64(), v["stats"]["max"].as_u64()),
            (Some(0), Some(1))
        );
        let p = trues as f64 / bools.len() as f64;
        assert_close(
            backend,
            v["stats"]["var"].as_f64().unwrap(),
            p * (1.0 - p),
            1e-15,
        );
    }
}
