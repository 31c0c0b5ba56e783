//! `--quantiles`, `--median`, `--quantile-error`: every quantile within the stated relative
//! error of numpy's `quantile(a, q, method="inverted_cdf")` (computed here by sorting), for data
//! of any sign with zeros, subnormals, infinities and NaN, on both backends; sketches in
//! partial files merging to exactly one run's answer; the errors.

use crate::common::*;
use rand::RngExt;

const QS: [f64; 9] = [0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0];

/// numpy's inverted_cdf order statistic of the non-NaN values (sorted ascending).
fn inverted_cdf(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let v = n as f64 * q - 1.0;
    let prev = v.floor();
    let idx = if v - prev == 0.0 { prev } else { prev + 1.0 };
    sorted[idx.clamp(0.0, (n - 1) as f64) as usize]
}

fn qs_arg() -> String {
    QS.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
}

/// Checks a `stats` object's quantiles against `values` (NaN left out) within `alpha`.
#[track_caller]
fn check_quantiles(what: &str, stats: &serde_json::Value, values: &[f64], alpha: f64) {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    for q in QS {
        let got = &stats["quantiles"][format!("{q}")];
        let want = inverted_cdf(&sorted, q);
        let got = match got {
            serde_json::Value::String(s) if s == "inf" => f64::INFINITY,
            serde_json::Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
            v => v.as_f64().unwrap_or_else(|| panic!("{what}: q {q} is {v}")),
        };
        if want.is_infinite() || want == 0.0 {
            assert_eq!(got, want, "{what}: q {q}");
        } else {
            assert!(
                (got - want).abs() <= alpha * want.abs(),
                "{what}: q {q}: got {got}, want {want} (relative error {})",
                ((got - want) / want).abs()
            );
        }
    }
}

/// f32, f64 and integer inputs of both signs over many magnitudes, with zeros, subnormals
/// and infinities, on both backends and at two accuracies: each quantile within the stated
/// error (the report states the sketch's own bound, at or below the one asked).
#[test]
fn quantiles_within_the_stated_error_for_every_type_and_backend() {
    let mut rng = fresh_rng("quantiles_types");
    let n = 40_001;
    let f64s: Vec<f64> = (0..n)
        .map(|i| match i % 13 {
            0 => 0.0,
            1 => -0.0,
            2 => 1e-310, // an f64 subnormal
            3 => f64::INFINITY,
            _ => {
                let mag = 10f64.powf(rng.random_range(-20.0..20.0));
                if i % 3 == 0 { -mag } else { mag }
            }
        })
        .collect();
    let f32s: Vec<f32> = f64s
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % 13 == 2 { -1e-40 } else { x as f32 })
        .collect();
    let ints: Vec<i32> = (0..n)
        .map(|_| rng.random_range(-1_000_000..1_000_000))
        .collect();
    let dir = Scratch::new("quantiles-types");
    let raw = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let f32_file = raw("v.f32", f32_bytes(&f32s));
    let f64_file = raw("v.f64", f64s.iter().flat_map(|x| x.to_le_bytes()).collect());
    let i32_file = raw("v.i32", ints.iter().flat_map(|x| x.to_le_bytes()).collect());
    let cases: [(&std::path::Path, Vec<f64>); 3] = [
        (&f32_file, f32s.iter().map(|&x| f64::from(x)).collect()),
        (&f64_file, f64s.clone()),
        (&i32_file, ints.iter().map(|&x| f64::from(x)).collect()),
    ];
    for backend in backends() {
        for (file, values) in &cases {
            for error in ["0.01", "0.001"] {
                let v = json(&run(&[
                    "run",
                    file.to_str().unwrap(),
                    "--quantiles",
                    &qs_arg(),
                    "--quantile-error",
                    error,
                    "--json",
                    "--backend",
                    backend,
                    "--batch-size",
                    "10000",
                ]));
                let alpha = v["quantile_error"].as_f64().unwrap();
                assert!(alpha <= error.parse::<f64>().unwrap() && alpha > 0.0);
                let what = format!("{backend} {} error {error}", file.display());
                check_quantiles(&what, &v["stats"], values, alpha);
            }
        }
    }
}

/// NaN makes every quantile NaN, as numpy's `quantile` does; --skip-nan gives `nanquantile`.
/// One value, all zeros, and an empty input (null: undefined) too; --median alone.
#[test]
fn quantiles_follow_numpy_for_nan_and_edge_cases() {
    let dir = Scratch::new("quantiles-edges");
    let with_nan = dir.join("nan.f32");
    std::fs::write(&with_nan, f32_bytes(&[3.0, f32::NAN, -1.0, 2.0])).unwrap();
    let p = with_nan.to_str().unwrap();
    let v = json(&run(&["run", p, "--median", "--json"]));
    assert_eq!(v["stats"]["quantiles"]["0.5"], "NaN");
    let v = json(&run(&["run", p, "--median", "--skip-nan", "--json"]));
    let median = v["stats"]["quantiles"]["0.5"].as_f64().unwrap();
    assert!(
        (median - 2.0).abs() <= 2.0 * v["quantile_error"].as_f64().unwrap(),
        "{median}"
    );
    for (name, data, want) in [
        ("one.f32", vec![7.25f32], Some(7.25)),
        ("zeros.f32", vec![0.0; 1000], Some(0.0)),
        ("empty.f32", vec![], None),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, f32_bytes(&data)).unwrap();
        let v = json(&run(&[
            "run",
            f.to_str().unwrap(),
            "--quantiles",
            "0,0.5,1",
            "--json",
        ]));
        for q in ["0", "0.5", "1"] {
            assert_eq!(v["stats"]["quantiles"][q].as_f64(), want, "{name} q {q}");
        }
    }
    // The table says what it computed and how exactly.
    let o = run(&["run", p, "--median", "--skip-nan"]);
    let text = stdout(&o);
    assert!(
        text.contains("quantiles") && text.contains("q0.5") && text.contains("0.781 %"),
        "{text}"
    );
}

/// Shards run with --quantiles --partial, merged with `merge --quantiles`: exactly the answer
/// of one run over all the data (the sketches merge bucket for bucket). A shard without a
/// sketch, sketches of different accuracy, and bad quantile options are errors.
#[test]
fn sketches_merge_across_shards_exactly() {
    let mut rng = fresh_rng("quantiles_merge");
    let data: Vec<f32> = (0..90_000)
        .map(|_| rng.random_range(-50.0f32..50.0).powi(3))
        .collect();
    let dir = Scratch::new("quantiles-merge");
    let whole = dir.join("all.f32");
    std::fs::write(&whole, f32_bytes(&data)).unwrap();
    let one = json(&run(&[
        "run",
        whole.to_str().unwrap(),
        "--quantiles",
        &qs_arg(),
        "--json",
    ]));
    let mut shards = Vec::new();
    for (i, part) in data.chunks(31_000).enumerate() {
        let f = dir.join(&format!("s{i}.f32"));
        std::fs::write(&f, f32_bytes(part)).unwrap();
        let shard = dir.join(&format!("s{i}.json"));
        let o = run(&[
            "run",
            f.to_str().unwrap(),
            "--quantiles",
            "0.5",
            "--partial",
            shard.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        shards.push(shard.to_str().unwrap().to_string());
    }
    let q = qs_arg();
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(shards.iter().map(String::as_str));
    args.extend(["--quantiles", q.as_str(), "--json"]);
    let merged = json(&run(&args));
    assert_eq!(merged["stats"]["quantiles"], one["stats"]["quantiles"]);
    check_quantiles(
        "merged",
        &merged["stats"],
        &data.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        merged["quantile_error"].as_f64().unwrap(),
    );

    // A sketch that does not add up to its partial's count is refused, naming the file.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&shards[1]).unwrap()).unwrap();
    doc["sketch"]["zeros"] = serde_json::json!(doc["sketch"]["zeros"].as_u64().unwrap() + 1);
    let forged = dir.join("forged.json");
    std::fs::write(&forged, doc.to_string()).unwrap();
    let o = run(&["merge", &shards[0], forged.to_str().unwrap(), "--median"]);
    assert!(
        !o.status.success() && stderr(&o).contains("forged.json") && stderr(&o).contains("sketch"),
        "{}",
        stderr(&o)
    );
    // The library: an engine with quantiles, through an accumulator, gives the CLI's answer.
    let mut engine = microbatch::Engine::new(&microbatch::EngineConfig {
        backend: microbatch::BackendChoice::Cpu,
        ..Default::default()
    })
    .unwrap();
    engine.set_quantiles(Some(0.01)).unwrap();
    let mut acc = engine.accumulate();
    for part in data.chunks(7_000) {
        acc.push(part).unwrap();
    }
    let report = acc.finish().unwrap();
    let cli_median = one["stats"]["quantiles"]["0.5"].as_f64().unwrap();
    assert_eq!(report.quantile(0.5), Some(cli_median));
    assert!(engine.set_quantiles(Some(0.0)).is_err());

    // A shard without a sketch.
    let plain = dir.join("plain.json");
    let o = run(&[
        "run",
        whole.to_str().unwrap(),
        "--partial",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let o = run(&["merge", &shards[0], plain.to_str().unwrap(), "--median"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no quantile sketch"),
        "{}",
        stderr(&o)
    );
    // Different accuracy.
    let fine = dir.join("fine.json");
    let o = run(&[
        "run",
        whole.to_str().unwrap(),
        "--median",
        "--quantile-error",
        "0.001",
        "--partial",
        fine.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let o = run(&["merge", &shards[0], fine.to_str().unwrap(), "--median"]);
    assert!(
        !o.status.success() && stderr(&o).contains("different accuracy"),
        "{}",
        stderr(&o)
    );
    // Bad options.
    for (args, says) in [
        (
            vec!["run", whole.to_str().unwrap(), "--quantiles", "1.5"],
            "[0, 1]",
        ),
        (
            vec![
                "run",
                whole.to_str().unwrap(),
                "--median",
                "--quantile-error",
                "0.5",
            ],
            "0.25",
        ),
        (
            vec![
                "run",
                whole.to_str().unwrap(),
                "--histogram",
                "3",
                "--remote",
                "http://127.0.0.1:1",
            ],
            "--histogram",
        ),
    ] {
        let o = run(&args);
        assert!(
            !o.status.success() && stderr(&o).contains(says),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty());
    }
}

/// Quantiles per column and per axis lane, in the rows (CSV) and the JSON.
#[test]
fn quantiles_per_column_and_per_lane() {
    let mut rng = fresh_rng("quantiles_columns");
    let rows = 5_000;
    let a: Vec<f64> = (0..rows).map(|_| rng.random_range(-1e3..1e3)).collect();
    let b: Vec<f64> = (0..rows)
        .map(|_| rng.random_range(0.0..1.0f64).powi(5))
        .collect();
    let mut csv = String::from("a,b\n");
    for (x, y) in a.iter().zip(&b) {
        csv += &format!("{x},{y}\n");
    }
    let file = tmp_file("quantiles-columns", "t.csv", csv.as_bytes());
    let v = json(&run(&[
        "run",
        file.to_str().unwrap(),
        "--columns",
        "all",
        "--quantiles",
        &qs_arg(),
        "--json",
    ]));
    let alpha = 0.01;
    for (i, values) in [&a, &b].into_iter().enumerate() {
        check_quantiles(
            &format!("column {i}"),
            &v["columns"][i]["stats"],
            values,
            alpha,
        );
    }
    let o = run(&[
        "run",
        file.to_str().unwrap(),
        "--columns",
        "all",
        "--median",
        "--quantiles",
        "0.9",
        "--csv",
    ]);
    let text = stdout(&o);
    assert!(
        text.starts_with("column,count,nan_count,sum,mean,min,max,var,std,q0.5,q0.9\n"),
        "{text}"
    );
}

/// `--histogram BINS`: edges from the exact min to the exact max, every value farther than the
/// stated relative error from an edge counted in its own bin (checked against exact counts on
/// both backends), NaN and infinities apart; log bins; the SVG; the errors.
#[test]
fn histograms_against_exact_counts() {
    let mut rng = fresh_rng("histogram");
    let mut data: Vec<f32> = (0..50_000)
        .map(|_| rng.random_range(-3.0f32..7.0).powi(3))
        .collect();
    data.extend([f32::NAN, f32::INFINITY, 0.0]);
    let dir = Scratch::new("histogram");
    let f = dir.join("v.f32");
    std::fs::write(&f, f32_bytes(&data)).unwrap();
    let svg = dir.join("h.svg");
    for backend in backends() {
        let mut args = vec![
            "run",
            f.to_str().unwrap(),
            "--histogram",
            "13",
            "--json",
            "--backend",
            backend,
        ];
        if cfg!(feature = "plot") {
            args.extend(["--histogram-plot", svg.to_str().unwrap()]);
        }
        let v = json(&run(&args));
        let h = &v["histogram"];
        let finite: Vec<f64> = data
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| f64::from(x))
            .collect();
        check_histogram(backend, h, &finite, 13);
        assert_eq!(
            (
                h["outside"]["nan"].as_u64(),
                h["outside"]["pos_inf"].as_u64()
            ),
            (Some(1), Some(1))
        );
        if cfg!(feature = "plot") {
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(
                text.contains("<svg") && text.contains("13 bins"),
                "{text:.200}"
            );
        }
    }
    // Log bins need positive values.
    let o = run(&[
        "run",
        f.to_str().unwrap(),
        "--histogram",
        "4",
        "--histogram-scale",
        "log",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("positive"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
    let pos = dir.join("p.f32");
    std::fs::write(&pos, f32_bytes(&[1.0, 10.0, 100.0, 1000.0])).unwrap();
    let v = json(&run(&[
        "run",
        pos.to_str().unwrap(),
        "--histogram",
        "3",
        "--histogram-scale",
        "log",
        "--json",
    ]));
    assert_eq!(v["histogram"]["counts"], serde_json::json!([1, 1, 2]));
    assert_eq!(v["histogram"]["scale"], "log");
    // Rows of their own: --histogram with --csv/--tsv is refused (no place in the rows).
    let csv = tmp_file("histogram", "t.csv", b"a,b\n1,2\n");
    let o = run(&[
        "run",
        csv.to_str().unwrap(),
        "--column",
        "a,b",
        "--histogram",
        "3",
        "--csv",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--histogram") && stdout(&o).is_empty(),
        "{}",
        stderr(&o)
    );
}

/// Checks a `histogram` JSON object against the exact counts of `finite` (every value farther
/// than the stated relative error from an edge in its own bin).
fn check_histogram(what: &str, h: &serde_json::Value, finite: &[f64], bins: usize) {
    let edges: Vec<f64> = h["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {h}"))
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect();
    let counts: Vec<u64> = h["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    let alpha = h["relative_error"].as_f64().unwrap();
    let (min, max) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    assert_eq!((edges[0], edges[bins]), (min, max), "{what}");
    assert_eq!(counts.iter().sum::<u64>(), finite.len() as u64, "{what}");
    let mut exact = vec![0u64; bins];
    let mut near = vec![0u64; bins];
    for &x in finite {
        let b = edges[1..bins].partition_point(|&e| e <= x);
        exact[b] += 1;
        if edges.iter().any(|&e| (x - e).abs() <= alpha * x.abs()) {
            for n in &mut near[b.saturating_sub(1)..(b + 2).min(bins)] {
                *n += 1;
            }
        }
    }
    for b in 0..bins {
        assert!(
            counts[b].abs_diff(exact[b]) <= near[b],
            "{what} bin {b}: {} vs exact {}",
            counts[b],
            exact[b]
        );
    }
}

/// `--histogram` with several columns and with groups: one histogram per row, each against
/// its column's (group's) exact counts, on both backends; the SVG stacks one chart per row.
#[test]
fn histograms_per_column_and_group() {
    let mut rng = fresh_rng("histogram_rows");
    let rows: Vec<(f64, f64, u32)> = (0..20_000)
        .map(|_| {
            (
                rng.random_range(-50.0..50.0f64).round() / 4.0,
                rng.random_range(0.0..1.0f64).powi(3) * 1e6,
                rng.random_range(0..3u32),
            )
        })
        .collect();
    let mut text = String::from("a,b,k\n");
    for (a, b, k) in &rows {
        text.push_str(&format!("{a},{b},g{k}\n"));
    }
    let dir = Scratch::new("histogram_rows");
    let f = dir.join("t.csv");
    std::fs::write(&f, &text).unwrap();
    let svg = dir.join("rows.svg");
    for backend in backends() {
        let mut args = vec![
            "run",
            f.to_str().unwrap(),
            "--column",
            "a,b",
            "--histogram",
            "7",
            "--json",
            "--backend",
            backend,
        ];
        if cfg!(feature = "plot") {
            args.extend(["--histogram-plot", svg.to_str().unwrap()]);
        }
        let v = json(&run(&args));
        let columns = v["columns"].as_array().unwrap();
        assert_eq!(columns.len(), 2);
        let a: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let b: Vec<f64> = rows.iter().map(|r| r.1).collect();
        check_histogram(&format!("{backend} a"), &columns[0]["histogram"], &a, 7);
        check_histogram(&format!("{backend} b"), &columns[1]["histogram"], &b, 7);
        if cfg!(feature = "plot") {
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(
                text.contains("a: 20000 values in 7 bins") && text.contains("b: 20000 values"),
                "{text:.300}"
            );
        }

        let v = json(&run(&[
            "run",
            f.to_str().unwrap(),
            "--column",
            "a",
            "--group-by",
            "k",
            "--sort-groups",
            "--histogram",
            "4",
            "--json",
            "--backend",
            backend,
        ]));
        let groups = v["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 3);
        for (g, row) in groups.iter().enumerate() {
            assert_eq!(row["key"], format!("g{g}"));
            let of: Vec<f64> = rows
                .iter()
                .filter(|r| r.2 == g as u32)
                .map(|r| r.0)
                .collect();
            check_histogram(&format!("{backend} group g{g}"), &row["histogram"], &of, 4);
        }
        // The table prints a histogram under each row's name.
        let o = run(&[
            "run",
            f.to_str().unwrap(),
            "--column",
            "a,b",
            "--histogram",
            "2",
            "--backend",
            backend,
        ]);
        let out = stdout(&o);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(out.matches("histogram    2 bins").count(), 2, "{out}");
        assert!(out.contains("column       b"), "{out}");
        assert!(
            !out.contains("quantiles as"),
            "no quantiles were asked: {out}"
        );
    }
}

/// `run --quantiles` on the GPU backend with the sketch counted on the device
/// (`MICROBATCH_GPU_SKETCH=device`; lavapipe otherwise counts on the host): the same quantiles
/// as the CPU backend's, bit for bit, and within the stated error of numpy's; an unknown
/// setting is an error.
#[test]
fn device_counted_quantiles_equal_the_cpu_backends() {
    if gpu().is_none() {
        return;
    }
    let mut rng = fresh_rng("device_quantiles");
    let data: Vec<f32> = (0..250_003)
        .map(|i| match i % 101 {
            0 => 0.0,
            1 => f32::from_bits(rng.random_range(1..0x0080_0000)),
            2 if i % 5 == 0 => f32::INFINITY,
            _ => rng.random_range(-3.0f32..3.0).powi(7),
        })
        .collect();
    let file = tmp_file("device-quantiles", "d.f32", &f32_bytes(&data));
    let file = file.to_str().unwrap();
    let q = qs_arg();
    let args = |backend: &'static str| -> Vec<String> {
        [
            "run",
            file,
            "--quantiles",
            q.as_str(),
            "--json",
            "--backend",
            backend,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let on_device = bin()
        .args(args("gpu"))
        .env("MICROBATCH_GPU_SKETCH", "device")
        .output()
        .unwrap();
    let gpu = json(&on_device);
    let cpu = json(&run(&args("cpu")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()));
    assert_eq!(gpu["stats"]["quantiles"], cpu["stats"]["quantiles"]);
    let values: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
    check_quantiles("device", &gpu["stats"], &values, 2f64.powi(-7));
    let bad = bin()
        .args(args("gpu"))
        .env("MICROBATCH_GPU_SKETCH", "sometimes")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("MICROBATCH_GPU_SKETCH"),
        "{}",
        stderr(&bad)
    );
}
