//! Several columns of a table in one pass (`--column a,b,c`, `--columns all`), on both
//! backends: every column's statistics against an f64 reference of that column alone; rows as
//! a table, CSV and TSV; several files of one table; the errors.

use crate::common::*;
use rand::RngExt;

/// A random table: an id, a label (text), prices near 1e6 with tiny spread (large offset),
/// tiny values near the subnormal range, signed integers past 2^53 (rounded as f64, like
/// every text number), values of both signs with NA nulls, and quoted fields now and then.
struct Table {
    csv: String,
    /// Each numeric column's values by header name, in file order.
    columns: Vec<(&'static str, Vec<f64>)>,
    nulls: u64,
}

fn table(rng: &mut rand::rngs::Xoshiro256PlusPlus, rows: usize) -> Table {
    let mut csv = String::from("id,label,price,tiny,big,signed\n");
    let mut cols: Vec<(&'static str, Vec<f64>)> = ["id", "price", "tiny", "big", "signed"]
        .iter()
        .map(|n| (*n, Vec::new()))
        .collect();
    let mut nulls = 0;
    for r in 0..rows {
        let price = 1.0e6 + rng.random::<f64>() * 1e-3;
        let tiny = rng.random::<f64>() * 1e-305;
        let big = rng.random_range(-(1i64 << 60)..(1i64 << 60));
        let signed = rng.random_range(-5.0..5.0f64);
        let label = if r % 7 == 0 { "\"a, b\"" } else { "w" };
        let signed_text = if r % 11 == 0 {
            nulls += 1;
            "NA".to_string()
        } else {
            cols[4].1.push(signed);
            format!("{signed:e}")
        };
        csv += &format!("{r},{label},{price},{tiny:e},{big},{signed_text}\n");
        cols[0].1.push(r as f64);
        cols[1].1.push(price);
        cols[2].1.push(tiny);
        cols[3].1.push(big as f64);
    }
    Table {
        csv,
        columns: cols,
        nulls,
    }
}

fn column<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no column {name} in {v}"))
}

/// `--columns all` and `--column` lists on both backends: each column equals the reference of
/// that column alone, the text column is excluded with why, and the nulls are per column.
#[test]
fn every_column_equals_its_own_reference_on_both_backends() {
    let mut rng = fresh_rng("columns_reference");
    // Over a MiB: several chunks, rows cut across rounds.
    let t = table(&mut rng, 30_000);
    let path = tmp_file("columns", "table.csv", t.csv.as_bytes());
    let path = path.to_str().unwrap();
    for backend in backends() {
        let v = json(&run(&[
            "run",
            path,
            "--columns",
            "all",
            "--null",
            "NA",
            "--json",
            "--backend",
            backend,
        ]));
        let names: Vec<&str> = v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "price", "tiny", "big", "signed"], "{backend}");
        let excluded = v["excluded"].as_array().unwrap();
        assert_eq!(excluded.len(), 1, "{v}");
        assert_eq!(excluded[0]["name"], "label");
        assert!(excluded[0]["why"].as_str().unwrap().contains("not numbers"));
        for (name, values) in &t.columns {
            let c = column(&v, name);
            let what = format!("{backend}: column {name}");
            check_stats_json(
                &what,
                &c["stats"],
                &reference_f64(values.iter().copied()),
                CPU_DEPTH,
            );
            let nulls = if *name == "signed" { t.nulls } else { 0 };
            assert_eq!(c["nulls"], nulls, "{what}");
        }
        // A list by names and indices, in the order given: the same numbers.
        let w = json(&run(&[
            "run",
            path,
            "--column",
            "signed,2",
            "--column",
            "id",
            "--null",
            "NA",
            "--json",
            "--backend",
            backend,
        ]));
        let order: Vec<&str> = w["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["signed", "price", "id"]);
        for name in order {
            assert_eq!(
                column(&w, name)["stats"],
                column(&v, name)["stats"],
                "{name}"
            );
        }
    }
}

/// The rows as CSV and TSV carry every digit (they parse back to the JSON's numbers); the
/// table aligns them and rounds to --digits; --per-file adds a row per file and column; two
/// files of one table give the statistics of their concatenation.
#[test]
fn rows_as_csv_tsv_and_table_and_files_of_one_table() {
    let mut rng = fresh_rng("columns_rows");
    let t = table(&mut rng, 2_000);
    let (head, body) = t.csv.split_once('\n').unwrap();
    let lines: Vec<&str> = body.lines().collect();
    let (a, b) = lines.split_at(777);
    let whole = tmp_file("columns-rows", "whole.csv", t.csv.as_bytes());
    let part_a = tmp_file(
        "columns-rows",
        "a.csv",
        format!("{head}\n{}\n", a.join("\n")).as_bytes(),
    );
    let part_b = tmp_file(
        "columns-rows",
        "b.csv",
        format!("{head}\n{}\n", b.join("\n")).as_bytes(),
    );
    let whole = whole.to_str().unwrap();
    let v = json(&run(&[
        "run",
        whole,
        "--columns",
        "all",
        "--null",
        "NA",
        "--json",
    ]));

    let o = run(&["run", whole, "--columns", "all", "--null", "NA", "--csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut rows = text.lines();
    assert_eq!(
        rows.next().unwrap(),
        "column,count,nan_count,sum,mean,min,max,var,std,nulls"
    );
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        let s = &column(&v, f[0])["stats"];
        for (i, key) in ["sum", "mean", "min", "max", "var", "std"]
            .iter()
            .enumerate()
        {
            let got: f64 = f[3 + i].parse().unwrap();
            assert_eq!(
                got.to_bits(),
                s[key].as_f64().unwrap().to_bits(),
                "{row}: {key}"
            );
        }
        assert_eq!(f[1], s["count"].to_string());
    }
    let o = run(&["run", whole, "--columns", "all", "--null", "NA", "--tsv"]);
    assert_eq!(stdout(&o).replace('\t', ","), text);

    let o = run(&[
        "run", whole, "--column", "price", "--column", "tiny", "--digits", "3",
    ]);
    let table = stdout(&o);
    assert!(
        table.contains("column") && table.contains("price"),
        "{table}"
    );
    assert!(
        table.contains(" 1e6 ") || table.contains(" 1e6\n") || table.contains("1e6"),
        "{table}"
    );
    assert!(!table.contains("1000000.0"), "--digits 3 rounds: {table}");

    // Two files of the same table: the concatenation's statistics; per file, a row each.
    let (pa, pb) = (part_a.to_str().unwrap(), part_b.to_str().unwrap());
    let both = json(&run(&[
        "run",
        pa,
        pb,
        "--columns",
        "all",
        "--null",
        "NA",
        "--json",
        "--per-file",
    ]));
    for (name, _) in &t.columns {
        let (x, y) = (&column(&both, name)["stats"], &column(&v, name)["stats"]);
        assert_eq!(x["count"], y["count"], "{name}");
        assert_eq!(x["min"], y["min"], "{name}");
        assert_eq!(x["max"], y["max"], "{name}");
        let (sx, sy) = (x["sum"].as_f64().unwrap(), y["sum"].as_f64().unwrap());
        let r = reference_f64(
            t.columns
                .iter()
                .find(|c| c.0 == *name)
                .unwrap()
                .1
                .iter()
                .copied(),
        );
        assert_close(name, sx, sy, 2.0 * r.sum_tolerance(CPU_DEPTH));
    }
    assert_eq!(both["files"].as_array().unwrap().len(), 2);
    let o = run(&["run", pa, pb, "--column", "id,price", "--per-file", "--csv"]);
    assert_eq!(stdout(&o).lines().count(), 1 + 2 + 4, "{}", stdout(&o));
}

/// Bad requests and bad data are errors that name what is wrong, with nothing printed as a
/// result: a missing column, a column asked twice, a non-text input, a flag that takes one
/// series, a field that is not a number (its line and column), files whose columns differ.
#[test]
fn column_errors_name_the_column_and_line() {
    let good = tmp_file("columns-errors", "t.csv", b"a,b,c\n1,2,3\n4,5,6\n");
    let bad = tmp_file("columns-errors", "bad.csv", b"a,b,c\n1,2,3\n4,x,6\n");
    let other = tmp_file("columns-errors", "other.csv", b"a,z\n1,2\n");
    let raw = tmp_file("columns-errors", "v.f32", &f32_bytes(&[1.0, 2.0]));
    // `--columns all` decides from the first MiB: a bad field past it is an error then.
    let mut late = String::from("a,b,c\n");
    for i in 0..200_000 {
        late += &format!("{i},2,3\n");
    }
    late += "4,x,6\n";
    let late = tmp_file("columns-errors", "late.csv", late.as_bytes());
    let (good, bad, other, raw, late) = (
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        other.to_str().unwrap(),
        raw.to_str().unwrap(),
        late.to_str().unwrap(),
    );
    for (args, says) in [
        (vec!["run", good, "--column", "a,nope"], "\"nope\""),
        (vec!["run", good, "--column", "a,0"], "twice"),
        (
            vec!["run", raw, "--column", "0,1"],
            "Parquet and Arrow inputs",
        ),
        (vec!["run", late, "--columns", "all"], "line 200002"),
        (vec!["run", bad, "--column", "c,b"], "column 1 (\"b\")"),
        (
            vec!["run", good, other, "--column", "0,1"],
            "columns differ",
        ),
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stdout(&o).is_empty(), "{args:?} printed {}", stdout(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // With --skip-invalid the bad field is counted for its column only.
    let v = json(&run(&[
        "run",
        bad,
        "--column",
        "b,c",
        "--skip-invalid",
        "--json",
    ]));
    assert_eq!(column(&v, "b")["skipped"], 1);
    assert_eq!(column(&v, "c")["skipped"], 0);
    assert_eq!(column(&v, "b")["stats"]["count"], 1);
    assert_eq!(column(&v, "c")["stats"]["sum"], 9.0);
}

/// `--axis K` on `.npy` arrays, both backends, C and Fortran order, f32, f64 and i16: each
/// row equals the reference of numpy's lane `a[..., j, ...]` along K, in numpy's order.
#[test]
fn axis_rows_equal_numpys_lanes_on_both_backends() {
    use microbatch::source::npy;
    let mut rng = fresh_rng("axis_rows");
    let shape = [37u64, 5, 3];
    let total = 37 * 5 * 3;
    // Values by C-order multi-index.
    let values: Vec<f64> = normal(&mut rng, total, 1.0e4, 3.0)
        .iter()
        .map(|&x| f64::from(x))
        .collect();
    let at = |i: u64, j: u64, k: u64| values[((i * 5 + j) * 3 + k) as usize];
    for (descr, fortran) in [("<f4", false), ("<f4", true), ("<f8", true), ("<i2", false)] {
        let mut bytes = npy::write_header(descr, fortran, &shape);
        let mut push = |x: f64| match descr {
            "<f4" => bytes.extend_from_slice(&(x as f32).to_le_bytes()),
            "<f8" => bytes.extend_from_slice(&x.to_le_bytes()),
            _ => bytes.extend_from_slice(&((x - 1.0e4) as i16).to_le_bytes()),
        };
        if fortran {
            for k in 0..3 {
                for j in 0..5 {
                    for i in 0..37 {
                        push(at(i, j, k));
                    }
                }
            }
        } else {
            for i in 0..37 {
                for j in 0..5 {
                    for k in 0..3 {
                        push(at(i, j, k));
                    }
                }
            }
        }
        let stored = |x: f64| match descr {
            "<f4" => f64::from(x as f32),
            "<f8" => x,
            _ => f64::from((x - 1.0e4) as i16),
        };
        let file = tmp_file(
            "axis",
            &format!("a{descr}{fortran}.npy").replace('<', ""),
            &bytes,
        );
        let file = file.to_str().unwrap();
        for backend in backends() {
            for axis in [0i64, 1, 2, -1] {
                let v = json(&run(&[
                    "run",
                    file,
                    "--axis",
                    &axis.to_string(),
                    "--json",
                    "--backend",
                    backend,
                    "--batch-size",
                    "97",
                ]));
                let k = axis.rem_euclid(3) as usize;
                let mut rshape = shape.to_vec();
                rshape.remove(k);
                assert_eq!(v["axis"]["result_shape"], serde_json::json!(rshape));
                let rows = v["columns"].as_array().unwrap();
                assert_eq!(rows.len() as u64, rshape.iter().product::<u64>());
                for (c, row) in rows.iter().enumerate() {
                    let (a, b) = (c as u64 / rshape[1], c as u64 % rshape[1]);
                    let lane: Vec<f64> = (0..shape[k])
                        .map(|j| {
                            let idx = match k {
                                0 => (j, a, b),
                                1 => (a, j, b),
                                _ => (a, b, j),
                            };
                            stored(at(idx.0, idx.1, idx.2))
                        })
                        .collect();
                    let what = format!("{descr} fortran {fortran} {backend} axis {axis} row {c}");
                    assert_eq!(row["name"], format!("({a}, {b})"), "{what}");
                    let depth = if descr == "<f4" {
                        depth_of_run(&v)
                    } else {
                        CPU_DEPTH
                    };
                    check_stats_json(
                        &what,
                        &row["stats"],
                        &reference_f64(lane.iter().copied()),
                        depth,
                    );
                }
            }
        }
    }
    // Out of range, and inputs without a shape.
    let raw = tmp_file("axis", "v.f32", &f32_bytes(&[1.0, 2.0]));
    let o = run(&["run", raw.to_str().unwrap(), "--axis", "0"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no shape"),
        "{}",
        stderr(&o)
    );
    let file = tmp_file("axis", "b.npy", &{
        let mut b = npy::write_header("<f4", false, &[2, 2]);
        b.extend_from_slice(&f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
        b
    });
    let o = run(&["run", file.to_str().unwrap(), "--axis", "-3"]);
    assert!(
        !o.status.success() && stderr(&o).contains("out of range"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
}

/// The f32 depth of a `run --json` report's reduction (the GPU kernel's on the GPU).
fn depth_of_run(v: &serde_json::Value) -> f64 {
    if v["backend"]["kind"] == "gpu" {
        gpu_depth(97, v["batches"]["workgroups"].as_u64().unwrap() as u32)
    } else {
        CPU_DEPTH
    }
}

/// `--group-by`: each group's statistics equal a dictionary-of-lists reference, groups in
/// first-seen order (or `--sort-groups`: numeric keys by value, text keys by text), over a
/// file of several MiB (keys seen first in later chunks too), quoted keys holding the
/// delimiter, nulls, two value columns, both backends; two files of one table merge by key.
#[test]
fn group_by_equals_a_dictionary_of_lists() {
    let mut rng = fresh_rng("group_by");
    let rows = 120_000;
    let names = [
        "paris",
        "lyon",
        "\"saint-denis, 93\"",
        "nice",
        "lille",
        "brest",
    ];
    let mut csv = String::from("city,code,temp,rain\n");
    let mut by_city: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut by_code: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    let mut rain_nulls: std::collections::HashMap<String, u64> = Default::default();
    for r in 0..rows {
        // A new city only after the first MiB: first seen in a later chunk.
        let city = if r > 60_000 && r % 1000 == 0 {
            "\"late, key\""
        } else {
            names[rng.random_range(0..names.len())]
        };
        let code: i64 = rng.random_range(-20..20) * 1000;
        let temp = rng.random_range(-30.0..45.0f64) + 1.0e5;
        let rain = if r % 17 == 0 {
            None
        } else {
            Some(rng.random_range(0.0..1.0f64).powi(3))
        };
        let rain_text = rain.map_or("NA".to_string(), |x| format!("{x:e}"));
        csv += &format!("{city},{code},{temp},{rain_text}\n");
        let key = city.trim_matches('"').to_string();
        let at = match by_city.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                by_city.push((key, Vec::new(), Vec::new()));
                by_city.len() - 1
            }
        };
        by_city[at].1.push(temp);
        match rain {
            Some(x) => by_city[at].2.push(x),
            None => *rain_nulls.entry(by_city[at].0.clone()).or_default() += 1,
        }
        by_code.entry(code).or_default().push(temp);
    }
    let file = tmp_file("group-by", "weather.csv", csv.as_bytes());
    let file = file.to_str().unwrap();
    for backend in backends() {
        let v = json(&run(&[
            "run",
            file,
            "--group-by",
            "city",
            "--column",
            "temp,rain",
            "--null",
            "NA",
            "--json",
            "--backend",
            backend,
        ]));
        let groups = v["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2 * by_city.len(), "{backend}");
        for (g, (key, temps, rains)) in by_city.iter().enumerate() {
            for (c, (name, values)) in [("temp", temps), ("rain", rains)].into_iter().enumerate() {
                let row = &groups[2 * g + c];
                let what = format!("{backend}: group {key} column {name}");
                assert_eq!(row["key"], key.as_str(), "{what}: first-seen order");
                assert_eq!(row["name"], name, "{what}");
                check_stats_json(
                    &what,
                    &row["stats"],
                    &reference_f64(values.iter().copied()),
                    CPU_DEPTH,
                );
            }
        }
        // Integer keys sorted by value.
        let w = json(&run(&[
            "run",
            file,
            "--group-by",
            "code",
            "--column",
            "temp",
            "--sort-groups",
            "--json",
            "--backend",
            backend,
        ]));
        let keys: Vec<i64> = w["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["key"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(keys, by_code.keys().copied().collect::<Vec<_>>());
        for (g, values) in w["groups"].as_array().unwrap().iter().zip(by_code.values()) {
            check_stats_json(
                "code",
                &g["stats"],
                &reference_f64(values.iter().copied()),
                CPU_DEPTH,
            );
        }
    }
    // Text keys sorted; rows as CSV keyed by group.
    let o = run(&[
        "run",
        file,
        "--group-by",
        "city",
        "--column",
        "temp",
        "--sort-groups",
        "--csv",
    ]);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("group,count,"), "{}", lines[0]);
    let mut sorted: Vec<&str> = by_city.iter().map(|(k, _, _)| k.as_str()).collect();
    sorted.sort();
    let got: Vec<String> = lines[1..]
        .iter()
        .map(|l| {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(l.as_bytes());
            r.records().next().unwrap().unwrap()[0].to_string()
        })
        .collect();
    assert_eq!(got, sorted);

    // Two files of the table: groups merged by key (one file lacks a key the other has).
    let (head, body) = csv.split_once('\n').unwrap();
    let lines: Vec<&str> = body.lines().collect();
    let a = tmp_file(
        "group-by",
        "a.csv",
        format!("{head}\n{}\n", lines[..30_000].join("\n")).as_bytes(),
    );
    let b = tmp_file(
        "group-by",
        "b.csv",
        format!("{head}\n{}\n", lines[30_000..].join("\n")).as_bytes(),
    );
    let both = json(&run(&[
        "run",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--group-by",
        "city",
        "--column",
        "temp",
        "--json",
    ]));
    let groups = both["groups"].as_array().unwrap();
    assert_eq!(groups.len(), by_city.len());
    for (key, temps, _) in &by_city {
        let g = groups.iter().find(|g| g["key"] == key.as_str()).unwrap();
        check_stats_json(
            key,
            &g["stats"],
            &reference_f64(temps.iter().copied()),
            CPU_DEPTH,
        );
    }
}

/// Group-by errors: too many keys (naming the line of the first one too many), a missing key
/// column, a ragged line without its key (or, skipping, counted), the key asked as a value.
#[test]
fn group_by_errors() {
    let file = tmp_file("group-by-errors", "t.csv", b"k,v\na,1\nb,2\nc,3\nd\n");
    let f = file.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "run",
                f,
                "--group-by",
                "k",
                "--column",
                "v",
                "--max-groups",
                "2",
            ],
            "line 4",
        ),
        (
            vec!["run", f, "--group-by", "nope", "--column", "v"],
            "no such column to group by",
        ),
        (vec!["run", f, "--group-by", "k", "--column", "v"], "line 5"),
        (
            vec!["run", f, "--group-by", "k", "--column", "k,v"],
            "group key",
        ),
        (vec!["run", f, "--sort-groups"], "--group-by"),
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stdout(&o).is_empty(), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let o = run(&[
        "run",
        f,
        "--group-by",
        "k",
        "--column",
        "v",
        "--max-groups",
        "2",
    ]);
    assert!(stderr(&o).contains("--max-groups"), "{}", stderr(&o));
    let v = json(&run(&[
        "run",
        f,
        "--group-by",
        "k",
        "--column",
        "v",
        "--skip-invalid",
        "--json",
    ]));
    let groups = v["groups"].as_array().unwrap();
    // The short line "d" has its key but no value: the group is there, its value skipped.
    assert_eq!(groups.len(), 4);
    assert_eq!(groups[3]["key"], "d");
    assert_eq!(groups[3]["stats"]["count"], 0);
    assert_eq!(groups[3]["skipped"], 1);
}
