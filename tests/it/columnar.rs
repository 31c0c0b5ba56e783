//! Parquet and Arrow IPC inputs through the binary, on both backends: files written here with the
//! arrow-rs writers (several row groups, nulls, dictionary pages, snappy and zstd, every numeric
//! type), checked against the values written: integers exactly, floats within the derived bound,
//! nulls counted apart. Also the Arrow IPC stream on stdin and the errors.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use crate::common::*;
use arrow_array::{
    ArrayRef, Float16Array, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand::RngExt;
use serde_json::Value;

fn dir() -> PathBuf {
    let d = scratch_root().join("microbatch-columnar");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A column's name and its values as written (integers exact, floats widened exactly).
type Expected = (&'static str, Vec<Option<i128>>, Vec<Option<f64>>);

/// Rows; every 7th value of every column is null, and column `name` is text.
const ROWS: usize = 10_007;

/// A table of every numeric type (values spanning each type's range) with nulls, and what each
/// column's non-null values are exactly (as i128 for integers, f64 for floats).
fn table() -> (RecordBatch, Vec<Expected>) {
    let mut rng = fresh_rng("columnar_table");
    let null = |i: usize| i % 7 == 3;
    let mut cols: Vec<(&'static str, ArrayRef)> = Vec::new();
    let mut want = Vec::new();
    macro_rules! int_col {
        ($name:expr, $t:ty, $arr:ty) => {{
            let v: Vec<Option<$t>> = (0..ROWS)
                .map(|i| (!null(i)).then(|| rng.random::<$t>()))
                .collect();
            want.push((
                $name,
                v.iter().map(|x| x.map(|x| x as i128)).collect(),
                Vec::new(),
            ));
            cols.push(($name, Arc::new(<$arr>::from(v)) as ArrayRef));
        }};
    }
    int_col!("i8", i8, Int8Array);
    int_col!("i16", i16, Int16Array);
    int_col!("i32", i32, Int32Array);
    int_col!("i64", i64, Int64Array);
    int_col!("u8", u8, UInt8Array);
    int_col!("u16", u16, UInt16Array);
    int_col!("u32", u32, UInt32Array);
    int_col!("u64", u64, UInt64Array);
    let f64s: Vec<Option<f64>> = (0..ROWS)
        .map(|i| (!null(i)).then(|| 1e9 + rng.random::<f64>() * 1e3))
        .collect();
    want.push(("f64", Vec::new(), f64s.clone()));
    cols.push(("f64", Arc::new(Float64Array::from(f64s))));
    let f32s: Vec<Option<f32>> = (0..ROWS)
        .map(|i| (!null(i)).then(|| rng.random::<f32>() * 200.0 - 100.0))
        .collect();
    want.push((
        "f32",
        Vec::new(),
        f32s.iter().map(|x| x.map(f64::from)).collect(),
    ));
    cols.push(("f32", Arc::new(Float32Array::from(f32s))));
    let f16s: Vec<Option<half::f16>> = (0..ROWS)
        .map(|i| (!null(i)).then(|| half::f16::from_f32(rng.random::<f32>() * 50.0)))
        .collect();
    want.push((
        "f16",
        Vec::new(),
        f16s.iter()
            .map(|x| x.map(|h| f64::from(h.to_f32())))
            .collect(),
    ));
    cols.push(("f16", Arc::new(Float16Array::from(f16s))));
    // A column without nulls, lent to the engine as it is decoded.
    let dense: Vec<f64> = (0..ROWS).map(|_| rng.random::<f64>() - 0.5).collect();
    want.push((
        "dense",
        Vec::new(),
        dense.iter().map(|&x| Some(x)).collect(),
    ));
    cols.push(("dense", Arc::new(Float64Array::from(dense))));
    cols.push((
        "name",
        Arc::new(StringArray::from(
            (0..ROWS).map(|i| format!("row {i}")).collect::<Vec<_>>(),
        )),
    ));
    (RecordBatch::try_from_iter(cols).unwrap(), want)
}

#[track_caller]
fn check_column(what: &str, v: &Value, ints: &[Option<i128>], floats: &[Option<f64>]) {
    let s = &v["stats"];
    let nulls =
        ints.iter().filter(|x| x.is_none()).count() + floats.iter().filter(|x| x.is_none()).count();
    assert_eq!(
        v["input"]["sources"][0]["nulls"].as_u64(),
        Some(nulls as u64),
        "{what}: nulls"
    );
    if !ints.is_empty() {
        let vals: Vec<i128> = ints.iter().flatten().copied().collect();
        assert_eq!(
            s["count"].as_u64(),
            Some(vals.len() as u64),
            "{what}: count"
        );
        // Exact: the JSON numbers are the integers themselves.
        assert_eq!(
            s["sum"].to_string(),
            vals.iter().sum::<i128>().to_string(),
            "{what}: sum"
        );
        assert_eq!(
            s["min"].to_string(),
            vals.iter().min().unwrap().to_string(),
            "{what}: min"
        );
        assert_eq!(
            s["max"].to_string(),
            vals.iter().max().unwrap().to_string(),
            "{what}: max"
        );
        assert_eq!(
            v["input"]["sources"][0]["precision"], "exact integer",
            "{what}"
        );
    } else {
        let vals: Vec<f64> = floats.iter().flatten().copied().collect();
        let r = reference_f64(vals.iter().copied());
        let depth = if v["backend"]["kind"] == "gpu" {
            gpu_depth(
                vals.len(),
                v["batches"]["workgroups"].as_u64().unwrap() as u32,
            )
        } else {
            CPU_DEPTH
        };
        check_stats_json(what, s, &r, depth);
    }
}

#[test]
fn parquet_every_type_with_nulls_row_groups_and_codecs() {
    let (batch, want) = table();
    for (codec, compression) in [
        ("snappy", Compression::SNAPPY),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
        ("none", Compression::UNCOMPRESSED),
    ] {
        let path = dir().join(format!("t-{codec}.parquet"));
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(1000))
            .set_dictionary_enabled(codec != "none")
            .build();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        for backend in backends() {
            for (name, ints, floats) in &want {
                let v = json(&run(&[
                    "run",
                    path.to_str().unwrap(),
                    "--column",
                    name,
                    "--json",
                    "--backend",
                    backend,
                ]));
                check_column(&format!("{codec} {name} on {backend}"), &v, ints, floats);
            }
        }
        // By index, and the default (column 0).
        let by_index = json(&run(&[
            "run",
            path.to_str().unwrap(),
            "--column",
            "9",
            "--json",
        ]));
        assert_eq!(by_index["input"]["sources"][0]["dtype"], "Float32");
        let first = json(&run(&["run", path.to_str().unwrap(), "--json"]));
        assert_eq!(first["input"]["sources"][0]["dtype"], "Int8");
    }
}

#[test]
fn arrow_ipc_files_and_streams() {
    let (batch, want) = table();
    let file = dir().join("t.arrow");
    {
        let mut w = arrow_ipc::writer::FileWriter::try_new(
            std::fs::File::create(&file).unwrap(),
            &batch.schema(),
        )
        .unwrap();
        // Several record batches.
        for start in (0..ROWS).step_by(3000) {
            w.write(&batch.slice(start, 3000.min(ROWS - start)))
                .unwrap();
        }
        w.finish().unwrap();
    }
    let mut stream = Vec::new();
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut stream, &batch.schema()).unwrap();
        for start in (0..ROWS).step_by(4096) {
            w.write(&batch.slice(start, 4096.min(ROWS - start)))
                .unwrap();
        }
        w.finish().unwrap();
    }
    // A .feather name, and no name at all (found by its magic).
    let feather = dir().join("t.feather");
    std::fs::copy(&file, &feather).unwrap();
    let unnamed = dir().join("t-no-extension");
    std::fs::copy(&file, &unnamed).unwrap();
    for backend in backends() {
        for (name, ints, floats) in &want {
            for path in [&file, &feather, &unnamed] {
                let v = json(&run(&[
                    "run",
                    path.to_str().unwrap(),
                    "--column",
                    name,
                    "--json",
                    "--backend",
                    backend,
                ]));
                check_column(
                    &format!("{} {name} on {backend}", path.display()),
                    &v,
                    ints,
                    floats,
                );
            }
            let v = json(&run_stdin(
                &[
                    "run",
                    "-",
                    "--format",
                    "arrow",
                    "--column",
                    name,
                    "--json",
                    "--backend",
                    backend,
                ],
                &stream,
            ));
            check_column(&format!("stream {name} on {backend}"), &v, ints, floats);
        }
    }
}

#[test]
fn columnar_errors_name_the_file_and_the_columns() {
    let (batch, _) = table();
    let path = dir().join("e.parquet");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = |o: Output| {
        assert!(!o.status.success());
        assert!(o.stdout.is_empty(), "nothing printed as if final");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let p = path.to_str().unwrap();
    let e = err(run(&["run", p, "--column", "name"]));
    assert!(
        e.contains("e.parquet") && e.contains("Utf8") && e.contains("f64 (Float64)"),
        "{e}"
    );
    let e = err(run(&["run", p, "--column", "nope"]));
    assert!(
        e.contains("no column \"nope\"") && e.contains("i8 (Int8)"),
        "{e}"
    );
    let e = err(run(&["run", p, "--column", "99"]));
    assert!(e.contains("no column 99"), "{e}");
    // Truncated: the footer is gone, or a page is cut short.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 3, bytes.len() / 2, 100] {
        let t = dir().join(format!("cut-{cut}.parquet"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let e = err(run(&["run", t.to_str().unwrap(), "--column", "f64"]));
        assert!(e.contains(&format!("cut-{cut}.parquet")), "{e}");
    }
    // Parquet cannot stream.
    let e = err(run_stdin(&["run", "-", "--format", "parquet"], &bytes));
    assert!(e.contains("must be a file"), "{e}");
    // An IPC stream that is not one.
    let e = err(run_stdin(
        &["run", "-", "--format", "arrow"],
        b"not arrow at all",
    ));
    assert!(e.contains("Arrow IPC"), "{e}");
}

/// Several columns of a Parquet file, an Arrow IPC file and stream in one pass, asked in an
/// order other than the file's: each column's statistics and nulls are exactly those of the
/// column read alone, in the order asked; the same column twice, and `--columns all` or
/// `--group-by` (text inputs only), are errors naming what is wrong.
#[test]
fn several_columnar_columns_in_one_pass_equal_each_alone() {
    let (batch, want) = table();
    let pq = dir().join("multi.parquet");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1500))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let ipc = dir().join("multi.arrow");
    {
        let mut w = arrow_ipc::writer::FileWriter::try_new(
            std::fs::File::create(&ipc).unwrap(),
            &batch.schema(),
        )
        .unwrap();
        for start in (0..ROWS).step_by(2500) {
            w.write(&batch.slice(start, 2500.min(ROWS - start)))
                .unwrap();
        }
        w.finish().unwrap();
    }
    let mut stream = Vec::new();
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut stream, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    let asked = ["dense", "u64", "f16", "i8", "f32"];
    let list = asked.join(",");
    for backend in backends() {
        let runs: Vec<(String, serde_json::Value)> = vec![
            (
                pq.display().to_string(),
                json(&run(&[
                    "run",
                    pq.to_str().unwrap(),
                    "--column",
                    &list,
                    "--json",
                    "--backend",
                    backend,
                ])),
            ),
            (
                ipc.display().to_string(),
                json(&run(&[
                    "run",
                    ipc.to_str().unwrap(),
                    "--column",
                    &list,
                    "--json",
                    "--backend",
                    backend,
                ])),
            ),
            (
                "stream".to_string(),
                json(&run_stdin(
                    &[
                        "run",
                        "-",
                        "--format",
                        "arrow",
                        "--column",
                        &list,
                        "--json",
                        "--backend",
                        backend,
                    ],
                    &stream,
                )),
            ),
        ];
        for (what, v) in &runs {
            let cols = v["columns"].as_array().unwrap();
            let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
            assert_eq!(names, asked, "{what}");
            for (c, name) in cols.iter().zip(asked) {
                let alone = json(&run(&[
                    "run",
                    pq.to_str().unwrap(),
                    "--column",
                    name,
                    "--json",
                    "--backend",
                    backend,
                ]));
                let what = format!("{what} {name} on {backend}");
                // f32 columns are reduced by the GPU kernel alone and pushed in other batch
                // sizes together: the exact fields are equal, the sums within the bound.
                for key in ["count", "min", "max", "nan_count"] {
                    assert_eq!(c["stats"][key], alone["stats"][key], "{what}: {key}");
                }
                let (_, ints, floats) = want.iter().find(|w| w.0 == name).unwrap();
                let nulls = ints.iter().filter(|x| x.is_none()).count()
                    + floats.iter().filter(|x| x.is_none()).count();
                assert_eq!(c["nulls"].as_u64(), Some(nulls as u64), "{what}: nulls");
                if ints.is_empty() {
                    let r = reference_f64(floats.iter().flatten().copied());
                    let depth = if backend == "gpu" && name != "dense" {
                        gpu_depth(ROWS, 1024)
                    } else {
                        CPU_DEPTH
                    };
                    check_stats_json(&what, &c["stats"], &r, depth);
                } else {
                    assert_eq!(
                        c["stats"]["sum"].to_string(),
                        alone["stats"]["sum"].to_string(),
                        "{what}: exact sum"
                    );
                }
            }
        }
    }
    for (args, says) in [
        (
            vec!["run", pq.to_str().unwrap(), "--column", "f32,f32"],
            "twice",
        ),
        (
            vec!["run", pq.to_str().unwrap(), "--columns", "all"],
            "text inputs",
        ),
        (
            vec!["run", pq.to_str().unwrap(), "--column", "f32,nope"],
            "nope",
        ),
    ] {
        let o = run(&args);
        assert!(!o.status.success() && stdout(&o).is_empty(), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}
