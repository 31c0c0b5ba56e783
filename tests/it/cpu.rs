//! The CPU backend against f64 references, on fresh random and adversarial data.

use crate::common::*;
use microbatch::{BackendChoice, Engine, EngineConfig, Stats};
use rand::RngExt;

fn cpu(batch_size: usize, ddof: u32, skip_nan: bool) -> Engine {
    Engine::new(&EngineConfig {
        backend: BackendChoice::Cpu,
        batch_size,
        ddof,
        skip_nan,
        ..Default::default()
    })
    .unwrap()
}

fn run(data: &[f32], batch_size: usize) -> Stats {
    cpu(batch_size, 0, false).reduce(data).unwrap().stats
}

#[test]
fn random_data_across_batch_sizes() {
    let mut rng = fresh_rng("random_data_across_batch_sizes");
    let data = uniform(&mut rng, 300_001, -3.0, 5.0);
    // N not a multiple of B, B > N, B = N, tiny B, B crossing the 64 Ki task size.
    for b in [1000, 65_537, 300_001, 1_000_000, 7] {
        check_stats(&format!("B={b}"), &run(&data, b), &data, CPU_DEPTH);
    }
}

#[test]
fn large_offset_keeps_variance_precise() {
    let mut rng = fresh_rng("large_offset_keeps_variance_precise");
    let data = normal(&mut rng, 1_000_000, 1e6, 1.0);
    let r = reference(&data);
    for b in [1000, 1 << 20] {
        let s = run(&data, b);
        let var = r.m2 / r.n as f64;
        let rel = (s.var.unwrap() - var).abs() / var;
        assert!(rel <= 1e-6, "B={b}: variance relative error {rel:e} > 1e-6");
        assert_close("mean", s.mean.unwrap(), r.mean, 1e-9 * r.mean);
    }
}

#[test]
fn outliers_do_not_spoil_the_shift() {
    let mut rng = fresh_rng("outliers_do_not_spoil_the_shift");
    let mut data = normal(&mut rng, 200_000, 1e4, 1.0);
    data[0] = 3e9; // first value far from the rest: a naive shift would cancel badly
    data[100_000] = -3e9;
    check_stats("outliers", &run(&data, 50_000), &data, CPU_DEPTH);
}

#[test]
fn empty_input() {
    let s = run(&[], 1000);
    assert_eq!(s.count, 0);
    assert_eq!(s.sum, Some(0.0));
    assert_eq!(
        (s.mean, s.min, s.max, s.var, s.std),
        (None, None, None, None, None)
    );
}

#[test]
fn one_element() {
    let s = run(&[-2.5], 1000);
    assert_eq!(
        (s.count, s.sum, s.mean, s.min, s.max),
        (1, Some(-2.5), Some(-2.5), Some(-2.5), Some(-2.5))
    );
    assert_eq!(s.var, Some(0.0));
    let s = cpu(1000, 1, false).reduce(&[-2.5]).unwrap().stats;
    assert_eq!(s.var, None, "ddof=1 over one value is undefined");
}

#[test]
fn ddof_one_is_the_sample_variance() {
    let mut rng = fresh_rng("ddof_one_is_the_sample_variance");
    let data = uniform(&mut rng, 10_001, 0.0, 1.0);
    let r = reference(&data);
    let s = cpu(4096, 1, false).reduce(&data).unwrap().stats;
    let want = r.m2 / (r.n - 1) as f64;
    assert_close(
        "var ddof=1",
        s.var.unwrap(),
        want,
        r.var_rel_tolerance() * want,
    );
    assert_close(
        "std ddof=1",
        s.std.unwrap(),
        want.sqrt(),
        r.var_rel_tolerance() * want.sqrt(),
    );
}

#[test]
fn nan_propagates_or_is_skipped() {
    let mut rng = fresh_rng("nan_propagates_or_is_skipped");
    let mut data = uniform(&mut rng, 100_000, -1.0, 1.0);
    for i in [0, 4_095, 65_536, 99_999] {
        data[i] = f32::NAN;
    }
    let s = run(&data, 10_000);
    assert_eq!((s.count, s.nan_count), (100_000, 4));
    for v in [s.sum, s.mean, s.min, s.max, s.var, s.std] {
        assert!(v.unwrap().is_nan());
    }
    let s = cpu(10_000, 0, true).reduce(&data).unwrap().stats;
    let clean: Vec<f32> = data.iter().copied().filter(|x| !x.is_nan()).collect();
    assert_eq!((s.count, s.nan_count), (99_996, 4));
    let mut s_clean = s;
    s_clean.nan_count = 0;
    check_stats("skip-nan", &s_clean, &clean, CPU_DEPTH);
}

#[test]
fn infinities_follow_ieee() {
    let mut data = vec![1.0f32, 2.0, 3.0, f32::INFINITY, 4.0];
    let s = run(&data, 2);
    assert_eq!(
        (s.sum, s.mean, s.max, s.min),
        (
            Some(f64::INFINITY),
            Some(f64::INFINITY),
            Some(f64::INFINITY),
            Some(1.0)
        )
    );
    assert!(s.var.unwrap().is_nan(), "numpy: var with inf is nan");
    data.push(f32::NEG_INFINITY);
    let s = run(&data, 4);
    assert!(s.sum.unwrap().is_nan() && s.mean.unwrap().is_nan());
    assert_eq!(
        (s.min, s.max),
        (Some(f64::NEG_INFINITY), Some(f64::INFINITY))
    );
}

#[test]
fn negative_values_and_subnormals() {
    let mut rng = fresh_rng("negative_values_and_subnormals");
    let neg = uniform(&mut rng, 50_000, -1e3, -1e-3);
    check_stats("negative", &run(&neg, 4096), &neg, CPU_DEPTH);
    // Subnormals: f32 below 1.18e-38. The CPU does not flush them, so min, max and sum are exact
    // to the same bound as any other data.
    let sub: Vec<f32> = (0..10_000)
        .map(|i| {
            f32::from_bits(1 + (rng.random::<u32>() % 0x007f_ffff))
                * if i % 3 == 0 { -1.0 } else { 1.0 }
        })
        .collect();
    assert!(sub.iter().all(|x| x.is_subnormal()));
    let s = run(&sub, 1000);
    let r = reference(&sub);
    assert_eq!((s.min, s.max), (Some(r.min), Some(r.max)));
    assert_close(
        "subnormal sum",
        s.sum.unwrap(),
        r.sum,
        r.sum_tolerance(CPU_DEPTH),
    );
}

#[test]
fn streaming_own_batches_matches_one_slice() {
    let mut rng = fresh_rng("streaming_own_batches_matches_one_slice");
    let data = uniform(&mut rng, 123_457, 0.0, 10.0);
    let cuts = [0, 1, 17, 5000, 5001, 100_000, 123_457];
    let batches: Vec<&[f32]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
    let mut e = cpu(1 << 20, 0, false);
    let report = e.reduce_batches(batches).unwrap();
    assert_eq!(report.batches.count, 6);
    check_stats("own batches", &report.stats, &data, CPU_DEPTH);
}

/// Every instruction-set level this processor has (AVX-512, AVX2, baseline on an AVX-512 machine)
/// must give the same counts and extremes, and sums within the f32 bound, on data that sends
/// blocks down both paths: finite blocks (fast path) and blocks holding NaN, ±inf or the largest
/// finite values, whose order keys sit right at the fast path's finite/non-finite boundary.
#[test]
fn every_simd_level_agrees_with_the_reference() {
    use microbatch::backend::cpu::{SimdLevel, reduce_slice_with};
    let mut rng = fresh_rng("every_simd_level_agrees_with_the_reference");
    let n = 3 * 1024 * 1024 + 777; // many pieces, a ragged last block
    let mut data = uniform(&mut rng, n, -1e3, 1e3);
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE / 8.0, // subnormal
        -0.0,
    ];
    for (i, &x) in specials.iter().enumerate() {
        for _ in 0..3 {
            let at = rng.random_range(0..n);
            data[at] = x;
        }
        // One block per special holding nothing else but it and ordinary values, early on.
        data[i * 1024 + 5] = x;
    }
    let finite: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    let r = reference(&finite);
    let want_nan = data.iter().filter(|x| x.is_nan()).count() as u64;
    let want_pos = data.iter().filter(|&&x| x == f32::INFINITY).count() as u64;
    let want_neg = data.iter().filter(|&&x| x == f32::NEG_INFINITY).count() as u64;
    let levels = SimdLevel::available();
    assert!(levels.contains(&SimdLevel::Baseline));
    for level in levels {
        let p = reduce_slice_with(level, &data);
        let what = level.name();
        assert_eq!(p.count, r.n as u64, "{what}: finite count");
        assert_eq!(p.nan_count, want_nan, "{what}: NaN count");
        assert_eq!(p.pos_inf_count, want_pos, "{what}: +inf count");
        assert_eq!(p.neg_inf_count, want_neg, "{what}: -inf count");
        assert_eq!(p.min, r.min, "{what}: min");
        assert_eq!(p.max, r.max, "{what}: max");
        assert_close(what, p.sum, r.sum, r.sum_tolerance(CPU_DEPTH));
    }
}

/// On all-finite data the fast path takes every whole block: each level's sum and variance must
/// match the reference within the f32 bound, and one another.
#[test]
fn every_simd_level_on_finite_data() {
    use microbatch::backend::cpu::{SimdLevel, reduce_slice_with};
    let mut rng = fresh_rng("every_simd_level_on_finite_data");
    let data = normal(&mut rng, 2_000_003, 1e5, 3.0);
    let r = reference(&data);
    for level in SimdLevel::available() {
        let p = reduce_slice_with(level, &data);
        let what = level.name();
        assert_eq!(p.count, data.len() as u64, "{what}: count");
        assert_eq!((p.min, p.max), (r.min, r.max), "{what}: min/max");
        assert_close(what, p.sum, r.sum, r.sum_tolerance(CPU_DEPTH));
        let rel = (p.m2 - r.m2).abs() / r.m2;
        assert!(
            rel <= r.var_rel_tolerance(),
            "{what}: M2 relative error {rel:e}"
        );
    }
}

/// Magnitudes where unscaled f32 moments fail: Σ(x−K)² overflows near 1e19 and (x−K)²
/// underflows near 1e-20. The power-of-two scale of the shift keeps both exact in range.
#[test]
fn huge_and_tiny_magnitudes_keep_their_variance() {
    let mut rng = fresh_rng("huge_and_tiny_magnitudes");
    for (mean, std) in [(1e30, 3e29), (0.0, 1e20), (3e-30, 1e-31), (0.0, 1e-25)] {
        let data = normal(&mut rng, 200_001, mean, std);
        for b in [4096, 1 << 20] {
            check_stats(
                &format!("mean {mean:e} std {std:e} B={b}"),
                &run(&data, b),
                &data,
                CPU_DEPTH,
            );
        }
    }
}

/// f64 values near ±f64::MAX on both sides of a block's pivot: the deviations (or a lane's sum
/// of them) pass f64's range though the block's sum does not. The sum stays that of the data,
/// and the variance, whose M2 is past f64's range, is inf (numpy's too), never NaN or 0 (it was
/// NaN and 0: inf − inf, then max(0)). Every SIMD level, the fast path's blocks and the ragged
/// tail.
#[test]
fn f64_deviations_past_the_range_give_an_infinite_variance() {
    use microbatch::backend::cpu::{SimdLevel, reduce_slice_f64_with};
    let mut rng = fresh_rng("f64_deviations_past_the_range");
    // 1.5·2^1023: its multiples up to 2^51 have few enough mantissa bits to add exactly.
    let big = 1.5 * 2f64.powi(1023);
    // Whole blocks of 4096 with as many +big as -big (each block's sum exactly 0, its pivot
    // exactly 0), shuffled so lanes' sums overflow; then a ragged tail of small values. And
    // short inputs (the ragged tail only) holding both signs of big.
    let mut blocks: Vec<f64> = Vec::new();
    for _ in 0..3 {
        let mut b: Vec<f64> = (0..4096)
            .map(|i| if i % 2 == 0 { big } else { -big })
            .collect();
        for i in (1..b.len()).rev() {
            b.swap(i, rng.random_range(0..=i));
        }
        blocks.extend(b);
    }
    let small = [1.0, -2.5, 4.0, 0.25, 3.0];
    let cases: Vec<(&str, Vec<f64>, f64)> = vec![
        (
            "blocks and a small tail",
            [&blocks[..], &small[..]].concat(),
            5.75,
        ),
        ("a short tail only", vec![big, big, -big], big),
        ("a pivot near -MAX/3", vec![1.5, -2.25e300, 0.0], -2.25e300),
        (
            "three and three",
            vec![1e308, 1e308, 1e308, -1e308, -1e308, -1e308],
            0.0,
        ),
    ];
    for level in SimdLevel::available() {
        for (what, data, sum) in &cases {
            let what = format!("{}: {what}", level.name());
            let p = reduce_slice_f64_with(level, data);
            assert_eq!(p.count, data.len() as u64, "{what}");
            let s = p.finish(0, false);
            // Each block's sum is exact (see above); only the last addition rounds.
            assert_close(&what, s.sum.unwrap(), *sum, f64::EPSILON * sum.abs());
            assert_eq!(s.var, Some(f64::INFINITY), "{what}: var");
            assert_eq!(s.std, Some(f64::INFINITY), "{what}: std");
        }
    }
}

/// Running sums past f64's range though the total is within it (thousands of +1.7e308, then as
/// many −1.7e308): the sum is lost on the way (inf − inf), so the run is an error naming it,
/// not NaN statistics with no NaN in the data; from the CLI too, with nothing printed.
#[test]
fn a_sum_lost_past_the_range_is_an_error() {
    let mut data = vec![1.7e308f64; 5000];
    data.extend(vec![-1.7e308; 5000]);
    data.extend([1.0, 2.0]);
    let e = cpu(4096, 0, false).reduce_f64(&data).unwrap_err();
    assert!(matches!(e, microbatch::Error::Overflow { .. }), "{e}");
    assert!(e.to_string().contains("f64's range"), "{e}");
    // A sum that ends past the range is ±inf, as numpy's: not an error.
    let s = cpu(4096, 0, false).reduce_f64(&[1.7e308; 3]).unwrap().stats;
    assert_eq!(s.sum, Some(f64::INFINITY));
    let mut bytes = microbatch::source::npy::write_header("<f8", false, &[data.len() as u64]);
    for x in &data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let path = tmp_file("sum-past-range", "lost.npy", &bytes);
    for backend in backends() {
        let o = crate::common::run(&["run", path.to_str().unwrap(), "--backend", backend]);
        assert!(!o.status.success(), "{backend}");
        assert!(stdout(&o).is_empty(), "{backend}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("lost.npy") && stderr(&o).contains("f64's range"),
            "{backend}: {}",
            stderr(&o)
        );
    }
}
