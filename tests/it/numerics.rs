//! The numerics we promise (README, "Numerics"; src/numerics.rs), on both backends, for many
//! batch sizes and workgroup counts, against an exact reference: every case that once gave a
//! wrong answer with exit status 0 (issue 10), plus random data with fresh seeds.
//!
//! Bounds: sum within 2·γ_depth·Σ|x| (derived from the block scheme; far inside the promised
//! 1e-12·Σ|x|), variance within 1e-12 relative while mean²/var ≤ 1e12 (else 1e-12·mean²
//! absolute), count, NaN count, min and max exact.

use crate::common::*;
use microbatch::{CpuReducer, Engine, GpuConfig, GpuReducer, Stats};
use rand::RngExt;

/// A backend to test: its name, an engine for a batch size (and P on the GPU), and its depth.
struct Backend {
    name: String,
    make: Box<dyn Fn(usize) -> Engine>,
    depth: f64,
}

/// The CPU, and the GPU (lavapipe on CI) at two workgroup counts, where there is an adapter.
fn backends() -> Vec<Backend> {
    let mut v = vec![Backend {
        name: "cpu".into(),
        make: Box::new(|b| engine(Box::new(CpuReducer::new()), b, 0)),
        depth: CPU_DEPTH,
    }];
    if let Some(ctx) = gpu() {
        for p in [1u32, 7] {
            v.push(Backend {
                name: format!("gpu P={p}"),
                make: Box::new(move |b| {
                    let mut c = GpuConfig::new(b);
                    c.workgroups = Some(p);
                    engine(Box::new(GpuReducer::new(ctx, c).unwrap()), b, 0)
                }),
                depth: gpu_depth(b_any(), p),
            });
        }
    }
    v
}

fn b_any() -> usize {
    1 << 20
}

fn engine(r: Box<dyn microbatch::BatchReducer + Send>, batch_size: usize, ddof: u32) -> Engine {
    engine_on(r, batch_size, ddof)
}

/// Checks `data` on every backend at every batch size in `batches`.
#[track_caller]
fn check_all(what: &str, data: &[f32], batches: &[usize]) {
    for be in backends() {
        for &b in batches {
            let s = (be.make)(b).reduce(data).unwrap().stats;
            check_stats(&format!("{what} [{} B={b}]", be.name), &s, data, be.depth);
        }
    }
}

const BATCHES: &[usize] = &[1000, 4096, 63_488, 1 << 20];

#[test]
fn a_few_huge_values_among_tiny_ones() {
    // 10,000 values near 1e-30 and one 1e9: once sum inf, var 0.
    let mut data: Vec<f32> = (0..10_000)
        .map(|i| 1e-30 * (1.0 + i as f32 * 1e-4))
        .collect();
    data[5_000] = 1e9;
    check_all("1e-30 + one 1e9", &data, BATCHES);
    let s = (backends()[0].make)(4096).reduce(&data).unwrap().stats;
    assert!((s.sum.unwrap() - 1e9).abs() <= 1e-3);
    assert!(
        (s.var.unwrap() / 9.999e13 - 1.0).abs() < 1e-9,
        "{:?}",
        s.var
    );
    // Zeros and one 1e20: once var inf.
    let mut zeros = vec![0.0f32; 100_000];
    zeros[77_777] = 1e20;
    check_all("zeros + one 1e20", &zeros, BATCHES);
    // Zeros and one 1e19, and all the magnitudes together.
    let mut mix = vec![0.0f32; 50_000];
    mix[9] = 1e19;
    check_all("zeros + one 1e19", &mix, BATCHES);
    mix[10_000] = 1e-30;
    mix[20_000] = 1e9;
    mix[30_000] = 1e20;
    mix[40_000] = u64::MAX as f32;
    check_all("1e-30/1e9/1e19/1e20/u64::MAX", &mix, BATCHES);
    // 0/1 flags and one u64::MAX sentinel (as f32): once var inf.
    let mut rng = fresh_rng("flags");
    let mut flags: Vec<f32> = (0..100_000)
        .map(|_| if rng.random::<bool>() { 1.0 } else { 0.0 })
        .collect();
    flags[31] = u64::MAX as f32;
    check_all("flags + u64::MAX", &flags, BATCHES);
}

#[test]
fn periodic_spikes_that_line_up_with_any_sampling() {
    // 1000 ± 1 with 1e6 every 2048th element: once off 1.2e-4 on the GPU at B = 63488.
    let data: Vec<f32> = (0..2_000_000)
        .map(|i| {
            if i % 2048 == 0 {
                1e6
            } else if i % 2 == 0 {
                1001.0
            } else {
                999.0
            }
        })
        .collect();
    check_all("periodic spikes", &data, &[63_488, 2048, 1 << 20]);
}

#[test]
fn long_runs_keep_their_digits() {
    let mut rng = fresh_rng("long_runs");
    // 1,000 N(0,1): once off 1.8e-7 in the sum.
    let small = normal(&mut rng, 1000, 0.0, 1.0);
    check_all("1000 N(0,1)", &small, &[1000, 7, 256]);
    // 0..999 repeated, then 0.5..9.5.
    let mut steps: Vec<f32> = (0..200_000).map(|i| (i % 1000) as f32).collect();
    steps.extend((0..10).map(|i| i as f32 + 0.5));
    check_all("0..999 then 0.5..9.5", &steps, BATCHES);
    check_all("N(1e6, 1e3)", &normal(&mut rng, 300_001, 1e6, 1e3), BATCHES);
    check_all("N(0, 1)", &normal(&mut rng, 300_001, 0.0, 1.0), BATCHES);
}

#[test]
fn large_offsets_and_cancelling_sums() {
    let mut rng = fresh_rng("offsets");
    // mean²/var = 1e12: the edge of the relative promise.
    check_all(
        "1e6 + N(0,1)",
        &normal(&mut rng, 200_000, 1e6, 1.0),
        &[4096, 1 << 20],
    );
    // Beyond it: the absolute promise.
    check_all(
        "1e9 + U[0,1)",
        &uniform(&mut rng, 100_000, 1e9, 1e9 + 64.0),
        &[4096, 1 << 20],
    );
    // Cancelling: +x and −x in alternation, plus a little.
    let mut cancel = Vec::new();
    for x in uniform(&mut rng, 100_000, 1e3, 1e7) {
        cancel.push(x);
        cancel.push(-x);
    }
    cancel.push(0.25);
    check_all("cancelling", &cancel, &[1000, 65_536, 1 << 20]);
}

#[test]
fn mixed_magnitudes_and_drift() {
    let mut rng = fresh_rng("mixed");
    let mixed: Vec<f32> = (0..300_000)
        .map(|_| {
            let e = rng.random_range(-30i32..30);
            let s = if rng.random::<bool>() { 1.0 } else { -1.0 };
            s * rng.random::<f32>() * 10f32.powi(e)
        })
        .collect();
    check_all("mixed magnitudes", &mixed, BATCHES);
    // A step: the first blocks at 0, the rest at 1e6 ± 1 (a shift taken from the start would
    // be 1e6 away from most of the data).
    let step: Vec<f32> = (0..300_000)
        .map(|i| {
            if i < 5000 {
                0.0
            } else {
                1e6 + (i % 3) as f32 - 1.0
            }
        })
        .collect();
    check_all("step", &step, BATCHES);
    // A ramp over 12 decades.
    let ramp: Vec<f32> = (0..200_000).map(|i| 10f32.powf(i as f32 * 6e-5)).collect();
    check_all("ramp", &ramp, BATCHES);
}

#[test]
fn subnormals_and_extremes() {
    let mut rng = fresh_rng("subnormals");
    let sub: Vec<f32> = (0..100_003)
        .map(|_| {
            f32::from_bits(rng.random_range(1u32..0x0080_0000))
                * if rng.random::<bool>() { 1.0 } else { -1.0 }
        })
        .collect();
    check_all("subnormals", &sub, &[4096, 1 << 20]);
    // Subnormals with normal values, and the largest finite f32s (an f32 sum would overflow).
    let mut both = uniform(&mut rng, 50_000, -1.0, 1.0);
    both.extend_from_slice(&sub[..50_000]);
    check_all("subnormals + normals", &both, &[4096, 1 << 20]);
    let big: Vec<f32> = (0..40_000)
        .map(|i| f32::MAX * (1.0 - (i % 5) as f32 * 0.1))
        .collect();
    check_all("near f32::MAX", &big, &[4096, 1 << 20]);
    let s = (backends()[0].make)(4096).reduce(&big).unwrap().stats;
    assert!(s.sum.unwrap().is_finite() && s.var.unwrap().is_finite());
}

#[test]
fn empty_one_and_uneven_last_batch() {
    for be in backends() {
        let s = (be.make)(1000).reduce(&[]).unwrap().stats;
        assert_eq!(
            (s.count, s.sum, s.mean, s.var),
            (0, Some(0.0), None, None),
            "{}",
            be.name
        );
        let s = (be.make)(1000).reduce(&[-3.5]).unwrap().stats;
        assert_eq!(
            (s.count, s.sum, s.min, s.max, s.var),
            (1, Some(-3.5), Some(-3.5), Some(-3.5), Some(0.0)),
            "{}",
            be.name
        );
    }
    let mut rng = fresh_rng("uneven");
    check_all(
        "uneven",
        &uniform(&mut rng, 10_007, -2.0, 9.0),
        &[1000, 3, 10_006],
    );
}

#[test]
fn backends_agree_within_the_bound() {
    let mut rng = fresh_rng("agree");
    let data = normal(&mut rng, 500_000, 123.0, 7.0);
    let r = reference(&data);
    let all: Vec<(String, Stats, f64)> = backends()
        .into_iter()
        .flat_map(|be| {
            BATCHES
                .iter()
                .map(|&b| {
                    (
                        format!("{} B={b}", be.name),
                        (be.make)(b).reduce(&data).unwrap().stats,
                        be.depth,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (a, sa, da) in &all {
        for (b, sb, db) in &all {
            // Each is within its bound of the exact value, so two differ by at most the sum.
            let tol = r.sum_tolerance(*da) + r.sum_tolerance(*db);
            assert_close(
                &format!("{a} vs {b}: sum"),
                sa.sum.unwrap(),
                sb.sum.unwrap(),
                tol,
            );
            let var = r.m2 / r.n as f64;
            let vt = 2.0 * r.var_rel_tolerance() * var;
            assert_close(
                &format!("{a} vs {b}: var"),
                sa.var.unwrap(),
                sb.var.unwrap(),
                vt,
            );
        }
    }
}

#[test]
fn same_input_same_bits_every_run() {
    let mut rng = fresh_rng("determinism");
    let data = normal(&mut rng, 3_000_000, 5.0, 2.0);
    for be in backends() {
        // A fresh engine each run: nothing carries over but the input.
        let mut e = (be.make)(100_000);
        let first = e.reduce(&data).unwrap().partial;
        for run in 1..20 {
            if run % 5 == 0 {
                e = (be.make)(100_000);
            }
            let p = e.reduce(&data).unwrap().partial;
            assert_eq!(
                (
                    p.sum.to_bits(),
                    p.sum_err.to_bits(),
                    p.m2.to_bits(),
                    p.m2_err.to_bits()
                ),
                (
                    first.sum.to_bits(),
                    first.sum_err.to_bits(),
                    first.m2.to_bits(),
                    first.m2_err.to_bits()
                ),
                "{} run {run}",
                be.name
            );
        }
    }
}

/// f64 inputs are reduced in f64 (issue 10: 1e8 + U[0,1) once gave var 0.0, i64 2^40 + 0..999
/// likewise), on every backend.
#[test]
fn f64_values_keep_their_precision() {
    let mut rng = fresh_rng("f64");
    let offset: Vec<f64> = (0..200_001).map(|_| 1e8 + rng.random::<f64>()).collect();
    let ints: Vec<f64> = (0..100_000)
        .map(|i| 2f64.powi(40) + (i % 1000) as f64)
        .collect();
    let normal: Vec<f64> = (0..300_000)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            1e6 + 1e3 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    // Values past f32's range, and tiny ones.
    let wide: Vec<f64> = (0..50_000)
        .map(|i| {
            if i % 2 == 0 {
                1e150 * (1.0 + i as f64 * 1e-6)
            } else {
                1e-200
            }
        })
        .collect();
    // i64 around ±4.6e18 (once off 2.2e-6 in the sum).
    let big_ints: Vec<f64> = (0..20_000)
        .map(|i: i64| (if i % 2 == 0 { 4.6e18 } else { -4.6e18 }) + (i * 1_000_003) as f64)
        .collect();
    for (what, data) in [
        ("1e8 + U[0,1)", &offset),
        ("2^40 + 0..999", &ints),
        ("N(1e6, 1e3) f64", &normal),
        ("1e150 and 1e-200", &wide),
        ("±4.6e18", &big_ints),
    ] {
        let r = reference_f64(data.iter().copied());
        assert!(r.m2 > 0.0, "{what}: the reference has a spread");
        for be in backends() {
            for b in [4096usize, 100_000, 1 << 20] {
                let s = (be.make)(b).reduce_f64(data).unwrap().stats;
                let name = format!("{what} [{} B={b}]", be.name);
                assert_eq!(s.count as usize, r.n, "{name}: count");
                assert_eq!(
                    (s.min, s.max),
                    (Some(r.min), Some(r.max)),
                    "{name}: min/max"
                );
                // f64 blocks: 4096/16 values per lane and a 4-level fold (src/backend/cpu.rs).
                assert_close(
                    &format!("{name}: sum"),
                    s.sum.unwrap(),
                    r.sum,
                    r.sum_tolerance(260.0),
                );
                let var = r.m2 / r.n as f64;
                assert_close(
                    &format!("{name}: var"),
                    s.var.unwrap(),
                    var,
                    r.var_rel_tolerance() * var,
                );
            }
        }
    }
}

/// Integers are reduced exactly: count, sum, min and max (issue 10: 0/1 flags with one sentinel
/// once gave var inf; i64 2^40 + 0..999 var 0), on every backend.
#[test]
fn integers_are_exact() {
    let mut rng = fresh_rng("integers");
    let mut flags: Vec<i64> = (0..100_000)
        .map(|_| i64::from(rng.random::<bool>()))
        .collect();
    flags[77] = i64::MAX;
    let offset: Vec<i64> = (0..200_000).map(|i| (1i64 << 62) + (i % 1000)).collect();
    let wide: Vec<i64> = (0..100_000).map(|_| rng.random::<i64>()).collect();
    let neg: Vec<i64> = (0..50_001).map(|i| -(1i64 << 40) - (i % 7)).collect();
    for (what, data) in [
        ("flags + i64::MAX", &flags),
        ("2^62 + 0..999", &offset),
        ("full-range i64", &wide),
        ("-2^40 - (0..6)", &neg),
    ] {
        let sum: i128 = data.iter().map(|&x| i128::from(x)).sum();
        let (min, max) = (*data.iter().min().unwrap(), *data.iter().max().unwrap());
        // Variance from exact integer deviations around the floor of the mean.
        let n = data.len() as i128;
        let p = sum.div_euclid(n);
        let r = reference_f64(data.iter().map(|&x| (i128::from(x) - p) as f64));
        for be in backends() {
            for b in [1000usize, 65_536, 1 << 20] {
                let s = (be.make)(b).reduce_i64(data).unwrap().stats;
                let name = format!("{what} [{} B={b}]", be.name);
                let e = s.exact.expect("integer input keeps its exact part");
                assert_eq!(
                    (e.sum, e.min, e.max),
                    (sum, i128::from(min), i128::from(max)),
                    "{name}"
                );
                assert_eq!(s.count as usize, data.len(), "{name}");
                let var = r.m2 / r.n as f64;
                assert_close(&format!("{name}: var"), s.var.unwrap(), var, 1e-12 * var);
                assert!(s.var.unwrap().is_finite(), "{name}");
            }
        }
    }
    // 0..999 repeated: the variance is exact, (1000² − 1)/12.
    let steps: Vec<i64> = (0..100_000).map(|i| (1i64 << 40) + i % 1000).collect();
    for be in backends() {
        let s = (be.make)(4096).reduce_i64(&steps).unwrap().stats;
        assert_eq!(s.var, Some(83_333.25), "{}", be.name);
    }
}
