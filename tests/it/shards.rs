//! Shards of several series: `run --partial` with groups, several columns or an axis writes
//! every series' partial (and sketch) in one file; `merge` combines shards series by series
//! into what one run over all the data gives (statistics against an f64 reference of each
//! series, quantiles equal to one run's exactly), on both backends; a merge of merges; the
//! errors (shards of other kinds, a tampered file, no sketch for quantiles).

use crate::common::*;
use rand::RngExt;

const QS: &str = "0,0.01,0.25,0.5,0.9,0.999,1";

/// The series of a merged or run JSON report (`groups` or `columns`) by row name.
fn rows(v: &serde_json::Value, list: &str) -> Vec<(String, serde_json::Value)> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|r| {
            let name = match r.get("key") {
                Some(k) => format!("{}/{}", k.as_str().unwrap(), r["name"].as_str().unwrap()),
                None => r["name"].as_str().unwrap().to_string(),
            };
            (name, r.clone())
        })
        .collect()
}

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Group shards on both backends: a key only in the first shard, one only in the last, values
/// with a large offset, NaN and nulls. The merge equals the dictionary-of-lists reference per
/// group and column, its quantiles equal one run's over the whole table exactly, and a merge of
/// merges gives the same.
#[test]
fn group_shards_merge_like_one_run() {
    let mut rng = fresh_rng("group_shards");
    let cities = ["oslo", "\"bergen, west\"", "tromsø", "-7"];
    let header = "city,temp,rain\n";
    let mut shards_csv = vec![String::from(header); 3];
    let mut whole = String::from(header);
    // Groups in first-seen order, each with its temp and rain values in file order.
    let mut groups: Vec<(String, [Vec<f64>; 2])> = Vec::new();
    let mut push = |key: &str, col: usize, x: f64| {
        let at = match groups.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                groups.push((key.to_string(), [Vec::new(), Vec::new()]));
                groups.len() - 1
            }
        };
        groups[at].1[col].push(x);
    };
    let rows_per_shard = [7_000, 1, 9_000];
    for (s, &n) in rows_per_shard.iter().enumerate() {
        for r in 0..n {
            let city = match (s, r % 500) {
                (0, 3) => "first-only",
                (2, 7) => "last-only",
                _ => cities[rng.random_range(0..cities.len())],
            };
            let temp = 1.0e6 + rng.random_range(-40.0..40.0f64);
            let rain = if r % 13 == 5 {
                None
            } else if r % 997 == 1 {
                Some(f64::NAN)
            } else {
                Some(rng.random_range(-1.0..1.0f64).powi(3) * 1e3)
            };
            let rain_text = rain.map_or("NA".to_string(), |x| {
                if x.is_nan() {
                    "nan".to_string()
                } else {
                    format!("{x:e}")
                }
            });
            let line = format!("{city},{temp},{rain_text}\n");
            shards_csv[s] += &line;
            whole += &line;
            let key = city.trim_matches('"');
            push(key, 0, temp);
            if let Some(x) = rain {
                push(key, 1, x);
            }
        }
    }
    // Series as the rows name them: group/column.
    let reference: Vec<(String, Vec<f64>)> = groups
        .iter()
        .flat_map(|(k, [t, r])| {
            [
                (format!("{k}/temp"), t.clone()),
                (format!("{k}/rain"), r.clone()),
            ]
        })
        .collect();
    let dir = Scratch::new("group-shards");
    let whole_path = dir.join("all.csv");
    std::fs::write(&whole_path, &whole).unwrap();
    let whole_path = whole_path.to_str().unwrap().to_string();
    let common = [
        "--group-by",
        "city",
        "--columns",
        "all",
        "--null",
        "NA",
        "--skip-nan",
    ];
    for backend in backends() {
        let mut partials = Vec::new();
        for (s, text) in shards_csv.iter().enumerate() {
            let csv = dir.join(&format!("{backend}-{s}.csv"));
            std::fs::write(&csv, text).unwrap();
            let partial = dir.join(&format!("{backend}-{s}.json"));
            let mut args = vec!["run", csv.to_str().unwrap()];
            args.extend(common);
            args.extend([
                "--quantiles",
                QS,
                "--backend",
                backend,
                "--partial",
                partial.to_str().unwrap(),
            ]);
            ok(run(&args));
            partials.push(partial.to_str().unwrap().to_string());
        }
        let merge = |files: &[&str], extra: &[&str]| {
            let mut args = vec!["merge"];
            args.extend(files);
            args.extend(extra);
            ok(run(&args))
        };
        let files: Vec<&str> = partials.iter().map(String::as_str).collect();
        let merged = json(&merge(&files, &["--quantiles", QS, "--json"]));
        let mut args = vec!["run", whole_path.as_str()];
        args.extend(common);
        args.extend(["--quantiles", QS, "--json", "--backend", backend]);
        let one = json(&ok(run(&args)));
        let got = rows(&merged, "groups");
        let want = rows(&one, "groups");
        let names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            reference.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "{backend}: series in first-seen order"
        );
        assert_eq!(
            names,
            want.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "{backend}"
        );
        for ((name, g), ((_, w), (_, values))) in got.iter().zip(want.iter().zip(&reference)) {
            let what = format!("{backend}: {name}");
            check_stats_json(
                &what,
                &g["stats"],
                &reference_f64(values.iter().copied()),
                CPU_DEPTH,
            );
            let nans = values.iter().filter(|x| x.is_nan()).count();
            assert_eq!(g["stats"]["nan_count"], nans, "{what}: NaN counted");
            for field in ["count", "nan_count", "min", "max", "quantiles"] {
                assert_eq!(g["stats"][field], w["stats"][field], "{what}: {field}");
            }
            assert_eq!(g["nulls"], w["nulls"], "{what}: nulls");
        }
        assert_eq!(merged["partials"], 3);
        assert_eq!(merged["inputs"].as_array().unwrap().len(), 3);
        // A merge of merges: (0, 1) then 2 gives the same rows.
        let m01 = dir.join(&format!("{backend}-m01.json"));
        merge(&files[..2], &["--partial", m01.to_str().unwrap(), "--json"]);
        let again = json(&merge(
            &[m01.to_str().unwrap(), files[2]],
            &["--quantiles", QS, "--json"],
        ));
        for ((name, a), (_, b)) in rows(&again, "groups").iter().zip(&got) {
            for field in ["count", "nan_count", "min", "max", "quantiles"] {
                assert_eq!(a["stats"][field], b["stats"][field], "{name}: {field}");
            }
            // Double-double sums merged in another order: the mean within its last rounding.
            let mean = b["stats"]["mean"].as_f64().unwrap();
            assert_close(
                name,
                a["stats"]["mean"].as_f64().unwrap(),
                mean,
                2.0 * f64::EPSILON * mean.abs(),
            );
        }
        // Sorted rows as CSV: the integer-looking key is not enough to sort numerically.
        let csv = stdout(&merge(
            &files,
            &["--sort-groups", "--csv", "--quantiles", "0.5"],
        ));
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "group/column,count,nan_count,sum,mean,min,max,var,std,q0.5,nulls"
        );
        let keys: Vec<String> = lines
            .map(|l| l.split('/').next().unwrap().trim_matches('"').to_string())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{csv}");
        assert_eq!(keys.len(), reference.len(), "{csv}");
    }
}

/// `--axis 0` shards of a 2-D array split by rows: each lane merged across the shards equals
/// the reference of the whole column; a shard of another shape is refused.
#[test]
fn axis_shards_merge_by_lane() {
    use microbatch::source::npy;
    let mut rng = fresh_rng("axis_shards");
    let cols = 7u64;
    let row_counts = [301u64, 1, 4000];
    let dir = Scratch::new("axis-shards");
    let mut lanes: Vec<Vec<f64>> = vec![Vec::new(); cols as usize];
    for backend in backends() {
        let mut partials = Vec::new();
        for (s, &r) in row_counts.iter().enumerate() {
            let values = normal(&mut rng, (r * cols) as usize, -3.0e4, 10.0);
            if backend == backends()[0] {
                for (i, x) in values.iter().enumerate() {
                    lanes[i % cols as usize].push(f64::from(*x));
                }
            }
            let mut bytes = npy::write_header("<f4", false, &[r, cols]);
            bytes.extend(f32_bytes(&values));
            // Each backend reduces the same shards: write them once.
            let path = dir.join(&format!("s{s}.npy"));
            if backend == backends()[0] {
                std::fs::write(&path, bytes).unwrap();
            }
            let partial = dir.join(&format!("{backend}-s{s}.json"));
            ok(run(&[
                "run",
                path.to_str().unwrap(),
                "--axis",
                "-2",
                "--backend",
                backend,
                "--partial",
                partial.to_str().unwrap(),
            ]));
            partials.push(partial.to_str().unwrap().to_string());
        }
        let mut args = vec!["merge"];
        args.extend(partials.iter().map(String::as_str));
        args.push("--json");
        let v = json(&ok(run(&args)));
        assert_eq!(v["axis"]["axis"], 0, "{v}");
        assert_eq!(v["axis"]["result_shape"], serde_json::json!([cols]));
        let got = rows(&v, "columns");
        assert_eq!(got.len(), cols as usize);
        for (j, (name, row)) in got.iter().enumerate() {
            assert_eq!(name, &j.to_string());
            check_stats_json(
                &format!("{backend}: lane {j}"),
                &row["stats"],
                &reference_f64(lanes[j].iter().copied()),
                CPU_DEPTH,
            );
        }
        // Another shape (8 columns) does not merge with these.
        let other = dir.join("wide.npy");
        let mut bytes = npy::write_header("<f4", false, &[2, cols + 1]);
        bytes.extend(f32_bytes(&vec![1.5; 2 * (cols as usize + 1)]));
        std::fs::write(&other, bytes).unwrap();
        let wide = dir.join("wide.json");
        ok(run(&[
            "run",
            other.to_str().unwrap(),
            "--axis",
            "0",
            "--partial",
            wide.to_str().unwrap(),
        ]));
        let o = run(&["merge", &partials[0], wide.to_str().unwrap()]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("wide.json") && e.contains("[8]") && e.contains("[7]"),
            "{e}"
        );
    }
}

/// What cannot merge is refused with the file named, and nothing is printed as a result.
#[test]
fn series_shards_errors() {
    let dir = Scratch::new("series-shard-errors");
    let csv = dir.join("t.csv");
    std::fs::write(&csv, "k,a,b\nx,1,2\ny,3,4\nx,5,6\n").unwrap();
    let csv = csv.to_str().unwrap();
    let part = |name: &str, extra: &[&str]| {
        let p = dir.join(name);
        let mut args = vec!["run", csv, "--partial", p.to_str().unwrap()];
        args.extend(extra);
        ok(run(&args));
        p.to_str().unwrap().to_string()
    };
    let groups = part("groups.json", &["--group-by", "k", "--column", "a"]);
    let columns = part("columns.json", &["--column", "a,b"]);
    let one = part("one.json", &["--column", "a"]);
    let failing = |args: &[&str], says: &[&str]| {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stdout(&o).is_empty(), "{args:?} printed {}", stdout(&o));
        let e = stderr(&o);
        for s in says {
            assert!(e.contains(s), "{args:?}: {e} does not say {s}");
        }
    };
    failing(
        &["merge", &groups, &columns],
        &["columns.json", "groups.json", "same rows"],
    );
    failing(
        &["merge", &one, &groups],
        &["one.json", "groups.json", "several"],
    );
    failing(
        &["merge", &groups, "--median"],
        &["groups.json", "no quantile sketch", "x/a"],
    );
    failing(
        &["merge", &columns, "--sort-groups"],
        &["--sort-groups", "columns"],
    );
    // A tampered file: a series twice, a group's row without its key, a bad partial.
    let text = std::fs::read_to_string(&groups).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let write = |name: &str, v: &serde_json::Value| {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut twice = v.clone();
    let first = twice["series"][0].clone();
    twice["series"].as_array_mut().unwrap().push(first);
    let twice = write("twice.json", &twice);
    failing(&["merge", &twice], &["twice.json", "group \"x\"", "twice"]);
    let mut keyless = v.clone();
    keyless["series"][1].as_object_mut().unwrap().remove("key");
    let keyless = write("keyless.json", &keyless);
    failing(&["merge", &keyless], &["keyless.json", "series 1", "key"]);
    let mut negative = v.clone();
    negative["series"][0]["partial"]["m2"] = serde_json::json!(-1.0);
    let negative = write("negative.json", &negative);
    failing(&["merge", &negative], &["negative.json", "series 0", "m2"]);
    // The several-series file of one shard merges alone to the run's own rows.
    let merged = json(&ok(run(&["merge", &columns, "--json"])));
    let ran = json(&ok(run(&["run", csv, "--column", "a,b", "--json"])));
    for ((n, a), (_, b)) in rows(&merged, "columns").iter().zip(&rows(&ran, "columns")) {
        assert_eq!(a["stats"], b["stats"], "{n}");
    }
}
