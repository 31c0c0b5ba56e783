//! The GPU backend (lavapipe on CI) against the CPU backend and f64 references.
//!
//! Every test here needs an adapter: without one it is skipped, unless MICROBATCH_REQUIRE_GPU=1,
//! in which case it fails (CI sets it).

use crate::common::*;
use microbatch::backend::BatchRef;
use microbatch::{
    BackendChoice, BatchReducer, CpuReducer, Engine, EngineConfig, GpuConfig, GpuReducer, Report,
};

fn gpu_engine(
    batch_size: usize,
    workgroups: Option<u32>,
    max_binding_bytes: Option<u64>,
) -> Option<Engine> {
    let ctx = gpu()?;
    let mut config = GpuConfig::new(batch_size);
    config.workgroups = workgroups;
    config.max_binding_bytes = max_binding_bytes;
    let reducer = GpuReducer::new(ctx, config).unwrap();
    Some(engine_on(Box::new(reducer), batch_size, 0))
}

fn cpu_report(data: &[f32], batch_size: usize) -> Report {
    engine_on(Box::new(CpuReducer::new()), batch_size, 0)
        .reduce(data)
        .unwrap()
}

#[test]
fn gpu_matches_cpu_and_reference_across_batch_sizes_and_workgroups() {
    let Some(_) = gpu() else { return };
    let mut rng = fresh_rng("gpu_matches_cpu");
    let data = uniform(&mut rng, 200_003, -2.0, 7.0);
    let cpu = cpu_report(&data, 1 << 20);
    for (b, p) in [
        (1000, 1),
        (1000, 16),
        (65_539, 3),
        (200_003, 64),
        (1 << 20, 7),
    ] {
        let mut e = gpu_engine(b, Some(p), None).unwrap();
        let r = e.reduce(&data).unwrap();
        let what = format!("B={b} P={p}");
        check_stats(&what, &r.stats, &data, gpu_depth(b.min(data.len()), p));
        assert_eq!(
            r.batches.count as usize,
            data.len().div_ceil(b),
            "{what}: batches"
        );
        assert_eq!(r.batches.workgroups, p);
        // Same data, two backends: both within their bounds of the reference, so within the sum
        // of the bounds of each other; min and max are exact on both.
        let rf = reference(&data);
        let tol = rf.sum_tolerance(gpu_depth(b, p)) + rf.sum_tolerance(CPU_DEPTH);
        assert_close(
            &format!("{what}: gpu vs cpu sum"),
            r.stats.sum.unwrap(),
            cpu.stats.sum.unwrap(),
            tol,
        );
        assert_eq!((r.stats.min, r.stats.max), (cpu.stats.min, cpu.stats.max));
    }
}

#[test]
fn gpu_tiny_batches() {
    let Some(_) = gpu() else { return };
    // B = 4 is one dispatch per vec4: thousands of dispatches, so the data stay small.
    let mut rng = fresh_rng("gpu_tiny_batches");
    let data = uniform(&mut rng, 2_001, -2.0, 7.0);
    let r = gpu_engine(4, Some(2), None).unwrap().reduce(&data).unwrap();
    assert_eq!(r.batches.count, 501);
    check_stats("B=4 P=2", &r.stats, &data, gpu_depth(4, 2));
}

#[test]
fn gpu_default_workgroups_and_uneven_last_batch() {
    let Some(_) = gpu() else { return };
    let mut rng = fresh_rng("gpu_default_workgroups");
    let data = normal(&mut rng, 100_001, -5.0, 3.0);
    let mut e = gpu_engine(30_000, None, None).unwrap();
    let r = e.reduce(&data).unwrap();
    let p = r.batches.workgroups;
    check_stats("default P", &r.stats, &data, gpu_depth(30_000, p));
    assert_eq!(r.batches.count, 4);
}

#[test]
fn gpu_large_offset_keeps_variance_precise() {
    let Some(_) = gpu() else { return };
    let mut rng = fresh_rng("gpu_large_offset");
    let data = normal(&mut rng, 1_000_000, 1e6, 1.0);
    let r = reference(&data);
    let var = r.m2 / r.n as f64;
    for (b, p) in [(1 << 20, 16), (100_000, 64)] {
        let s = gpu_engine(b, Some(p), None)
            .unwrap()
            .reduce(&data)
            .unwrap()
            .stats;
        let rel = (s.var.unwrap() - var).abs() / var;
        assert!(
            rel <= 1e-6,
            "B={b} P={p}: variance relative error {rel:e} > 1e-6"
        );
        assert_close("mean", s.mean.unwrap(), r.mean, 1e-9 * r.mean);
    }
}

#[test]
fn gpu_special_values() {
    let Some(_) = gpu() else { return };
    let mut e = gpu_engine(3, Some(1), None).unwrap();
    // Empty input.
    let s = e.reduce(&[]).unwrap().stats;
    assert_eq!((s.count, s.sum, s.mean, s.var), (0, Some(0.0), None, None));
    // One element.
    let s = e.reduce(&[42.5]).unwrap().stats;
    assert_eq!(
        (s.count, s.sum, s.min, s.max, s.var),
        (1, Some(42.5), Some(42.5), Some(42.5), Some(0.0))
    );
    // NaN: counted, and everything NaN; the reducer is clean again afterwards.
    let s = e
        .reduce(&[1.0, f32::NAN, 2.0, 3.0, f32::NAN])
        .unwrap()
        .stats;
    assert_eq!((s.count, s.nan_count), (5, 2));
    assert!(s.sum.unwrap().is_nan() && s.min.unwrap().is_nan() && s.var.unwrap().is_nan());
    // ±inf.
    let s = e.reduce(&[f32::INFINITY, -1.0, 2.0, 5.0]).unwrap().stats;
    assert_eq!(
        (s.sum, s.min, s.max),
        (Some(f64::INFINITY), Some(-1.0), Some(f64::INFINITY))
    );
    assert!(s.var.unwrap().is_nan());
    let s = e
        .reduce(&[f32::INFINITY, -1.0, f32::NEG_INFINITY])
        .unwrap()
        .stats;
    assert!(s.sum.unwrap().is_nan());
    assert_eq!(
        (s.min, s.max),
        (Some(f64::NEG_INFINITY), Some(f64::INFINITY))
    );
    // Negative values, exact min and max.
    let s = e.reduce(&[-7.25, -0.5, -100.0, -3.0]).unwrap().stats;
    assert_eq!(
        (s.sum, s.min, s.max),
        (Some(-110.75), Some(-100.0), Some(-0.5))
    );
}

#[test]
fn gpu_skip_nan_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("gpu_skip_nan");
    let mut data = uniform(&mut rng, 50_000, 0.0, 1.0);
    for i in (0..data.len()).step_by(997) {
        data[i] = f32::NAN;
    }
    let config = EngineConfig {
        batch_size: 8192,
        skip_nan: true,
        ..Default::default()
    };
    let reducer = GpuReducer::new(ctx, GpuConfig::new(8192)).unwrap();
    // The reducer's own batch size; the options that shape the statistics set apart.
    let mut engine = Engine::with_reducer(Box::new(reducer));
    engine.set_stats_options(config.ddof, config.skip_nan);
    let s = engine.reduce(&data).unwrap().stats;
    let cpu = Engine::new(&EngineConfig {
        backend: BackendChoice::Cpu,
        ..config.clone()
    })
    .unwrap()
    .reduce(&data)
    .unwrap()
    .stats;
    assert_eq!((s.count, s.nan_count), (cpu.count, cpu.nan_count));
    let clean: Vec<f32> = data.iter().copied().filter(|x| !x.is_nan()).collect();
    let mut s_clean = s;
    s_clean.nan_count = 0;
    check_stats("gpu skip-nan", &s_clean, &clean, gpu_depth(8192, 16));
}

#[test]
fn gpu_subnormals_min_max_exact() {
    let Some(_) = gpu() else { return };
    // GPUs may flush subnormals to zero in arithmetic, but min and max come from the bits and
    // stay exact; the sum may lose at most the subnormals themselves (n · 2^-126 in absolute terms).
    let data: Vec<f32> = (1..=4096u32)
        .map(|i| f32::from_bits(i * 2047) * if i % 2 == 0 { -1.0 } else { 1.0 })
        .collect();
    let r = reference(&data);
    let s = gpu_engine(1000, Some(4), None)
        .unwrap()
        .reduce(&data)
        .unwrap()
        .stats;
    assert_eq!((s.min, s.max), (Some(r.min), Some(r.max)));
    let flush_bound = data.len() as f64 * f64::from(f32::MIN_POSITIVE);
    assert_close("subnormal sum", s.sum.unwrap(), r.sum, flush_bound);
}

#[test]
fn gpu_batch_split_across_bindings() {
    let Some(_) = gpu() else { return };
    // A 4 KiB binding cap forces each 10 000-element batch over 10 dispatches.
    let mut rng = fresh_rng("gpu_batch_split_across_bindings");
    let data = uniform(&mut rng, 25_001, -1.0, 1.0);
    let mut e = gpu_engine(10_000, Some(2), Some(4096)).unwrap();
    let r = e.reduce(&data).unwrap();
    assert_eq!(r.batches.count, 3);
    check_stats("split", &r.stats, &data, gpu_depth(1024, 2));
}

#[test]
fn gpu_batch_larger_than_the_adapters_storage_binding_limit() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx
        .adapter()
        .max_storage_binding
        .min(ctx.adapter().max_buffer_size);
    // One batch a little over the real limit (lavapipe: 128 MiB → 33.6 M values), if the host can
    // afford it; the data are generated, not stored.
    let n = (limit / 4 + 1_000_003) as usize;
    if n > 300_000_000 {
        eprintln!(
            "storage binding limit {limit} bytes is too large to exceed in a test; covered by gpu_batch_split_across_bindings"
        );
        return;
    }
    let mut rng = fresh_rng("gpu_batch_larger_than_limit");
    let data = uniform(&mut rng, n, 0.0, 1.0);
    let reducer = GpuReducer::new(ctx, GpuConfig::new(n)).unwrap();
    assert!(reducer.chunk_elems() < n, "the batch must be split");
    let r = Engine::with_reducer(Box::new(reducer))
        .reduce(&data)
        .unwrap();
    assert_eq!(r.batches.count, 1);
    check_stats(
        "over the binding limit",
        &r.stats,
        &data,
        gpu_depth((limit / 4) as usize, r.batches.workgroups),
    );
}

#[test]
fn gpu_streams_many_batches_through_one_readback_window() {
    let Some(_) = gpu() else { return };
    // More dispatches than one readback window holds, to cover the window turnover.
    let mut rng = fresh_rng("gpu_streams_many_batches");
    let data = uniform(&mut rng, 3_000 * 100 + 17, 0.0, 100.0);
    let mut e = gpu_engine(100, Some(1), None).unwrap();
    let r = e.reduce(&data).unwrap();
    assert_eq!(r.batches.count, 3_001);
    check_stats("many batches", &r.stats, &data, gpu_depth(100, 1));
    assert!(
        r.timings.compute > std::time::Duration::ZERO,
        "compute was timed"
    );
}

#[test]
fn gpu_resident_data_reduces_repeatedly_to_the_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("gpu_resident");
    let data = normal(&mut rng, 70_001, 3.0, 2.0);
    // A 64 KiB binding cap splits the upload into several resident chunks.
    let mut config = GpuConfig::new(data.len());
    config.workgroups = Some(4);
    config.max_binding_bytes = Some(1 << 16);
    let mut reducer = GpuReducer::new(ctx, config).unwrap();
    let resident = reducer.upload(&data).unwrap();
    assert_eq!(resident.len(), data.len());
    let mut sums = Vec::new();
    for _ in 0..3 {
        let (partial, times) = reducer.reduce_resident(&resident).unwrap();
        let stats = partial.finish(0, false);
        check_stats("resident", &stats, &data, gpu_depth(1 << 14, 4));
        assert!(times.compute > std::time::Duration::ZERO);
        sums.push(stats.sum.unwrap());
    }
    assert!(
        sums.windows(2).all(|w| w[0] == w[1]),
        "same data, same kernel, same result: {sums:?}"
    );
}

/// Both workgroup combines (tree, and subgroups where the adapter has them) and several load
/// counts per thread, on data whose NaN and infinities land in some threads only (so those
/// threads take the slow path while the rest keep the fast one), with a ragged last vec4.
#[test]
fn every_kernel_shape_matches_the_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("every_kernel_shape");
    let n = 250_003;
    let mut data = normal(&mut rng, n, -40.0, 9.0);
    for (at, x) in [
        (17, f32::NAN),
        (100_000, f32::INFINITY),
        (150_001, f32::NEG_INFINITY), // alone: only the low end of its thread's key range shows it
        (60_002, -f32::NAN),          // likewise
        (n - 1, -f32::NAN),           // in the tail vec4
        (n - 2, f32::MAX),
        (5_000, -f32::MAX),
        (7, f32::MIN_POSITIVE / 4.0),
    ] {
        data[at] = x;
    }
    let finite: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    let r = reference(&finite);
    let subgroup_options: &[bool] = if ctx.adapter().subgroups {
        &[false, true]
    } else {
        &[false]
    };
    for &subgroups in subgroup_options {
        for vpt in [1, 3, 4, 8] {
            for p in [1, 5, 64] {
                let mut config = GpuConfig::new(n);
                config.workgroups = Some(p);
                config.vec_per_thread = Some(vpt);
                config.subgroups = Some(subgroups);
                let mut reducer = GpuReducer::new(ctx, config).unwrap();
                let shape = reducer.shape();
                assert_eq!((shape.subgroups, shape.vec_per_thread), (subgroups, vpt));
                let what = format!("{shape}, P={p}");
                reducer.push(&data).unwrap();
                let (partial, _) = reducer.finish().unwrap();
                assert_eq!(partial.count, r.n as u64, "{what}: count");
                assert_eq!(partial.nan_count, 3, "{what}: NaN");
                assert_eq!(partial.pos_inf_count, 1, "{what}: +inf");
                assert_eq!(partial.neg_inf_count, 1, "{what}: -inf");
                assert_eq!(
                    (partial.min, partial.max),
                    (r.min, r.max),
                    "{what}: min/max"
                );
                let depth = shape_depth(n, p, &shape);
                assert_close(&what, partial.sum, r.sum, r.sum_tolerance(depth));
            }
        }
    }
}

/// The kernel variants `bench` compares (loads in a loop or written out; the slow path inline
/// or deferred to a second dispatch) give the reference's statistics: on clean data with a
/// partial tile and a ragged last vec4 (the deferred variant's fixup then only finishes the
/// batch's end and merges it with the fast kernel's partial), on data with NaN, ±inf and a
/// subnormal in some threads only (those workgroups are redone whole), on data whose specials
/// sit in the batch's last partial tile only, and over several batches through one readback.
#[test]
fn every_kernel_variant_matches_the_reference() {
    use microbatch::backend::gpu::{Loads, SlowPath};
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("every_kernel_variant");
    let n = 180_007;
    let clean = normal(&mut rng, n, 3.0e4, 2.5);
    let mut dirty = clean.clone();
    for (at, x) in [
        (11, f32::NAN),
        (90_000, f32::NEG_INFINITY),
        (120_003, f32::INFINITY),
        (3, f32::MIN_POSITIVE / 8.0),
    ] {
        dirty[at] = x;
    }
    let mut end_only = clean.clone();
    end_only[n - 5] = f32::NAN;
    end_only[n - 1] = -f32::NAN;
    let cases: [(&str, &[f32], u64); 3] = [
        ("clean", &clean, 0),
        ("dirty", &dirty, 1),
        ("specials at the end", &end_only, 2),
    ];
    let subgroup_options: &[bool] = if ctx.adapter().subgroups {
        &[false, true]
    } else {
        &[false]
    };
    for &subgroups in subgroup_options {
        for loads in [Loads::Loop, Loads::Unrolled] {
            for slow_path in [SlowPath::Inline, SlowPath::Deferred] {
                for (vpt, p) in [(1, 7), (3, 64), (8, 1), (16, 5)] {
                    let mut config = GpuConfig::new(n);
                    config.workgroups = Some(p);
                    config.vec_per_thread = Some(vpt);
                    config.subgroups = Some(subgroups);
                    config.loads = Some(loads);
                    config.slow_path = Some(slow_path);
                    let mut reducer = GpuReducer::new(ctx, config).unwrap();
                    let shape = reducer.shape();
                    assert_eq!(
                        (shape.loads, shape.slow_path, shape.vec_per_thread),
                        (loads, slow_path, vpt)
                    );
                    for (name, data, nan) in cases {
                        let what = format!("{shape}, P={p}, {name}");
                        // Two batches through one readback window: the second dispatch's
                        // partials must not disturb the first's.
                        let (a, b) = data.split_at(n / 3 * 2 + 1);
                        reducer.push(a).unwrap();
                        reducer.push(b).unwrap();
                        let (partial, _) = reducer.finish().unwrap();
                        assert_eq!(partial.nan_count, nan, "{what}: NaN");
                        let finite: Vec<f32> =
                            data.iter().copied().filter(|x| x.is_finite()).collect();
                        let infs = |sign: f32| {
                            data.iter()
                                .filter(|x| x.is_infinite() && x.signum() == sign)
                                .count() as u64
                        };
                        assert_eq!(partial.pos_inf_count, infs(1.0), "{what}: +inf");
                        assert_eq!(partial.neg_inf_count, infs(-1.0), "{what}: -inf");
                        // The finite values' statistics: the same partial without its
                        // non-finite counts.
                        let finite_only = microbatch::Partial {
                            nan_count: 0,
                            pos_inf_count: 0,
                            neg_inf_count: 0,
                            ..partial
                        };
                        let stats = finite_only.finish(0, false);
                        check_stats(&what, &stats, &finite, shape_depth(n, p, &shape));
                    }
                }
            }
        }
    }
}

/// Several series in one dispatch (the segmented reduction `push_segments` does) give each
/// series the partial a dispatch of its own gives, bit for bit: more series than one dispatch
/// holds, series longer than a binding, lengths that are not whole vec4s (1, 2, 3 values…),
/// NaN, infinities and subnormals in some series only, for every slow path and both
/// loads' forms; and each series' finite values match the f64 reference.
#[test]
fn segmented_dispatch_equals_one_dispatch_per_series() {
    use microbatch::backend::gpu::{Loads, SlowPath};
    use rand::RngExt;
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("segmented_dispatch");
    let lengths = [1usize, 2, 3, 4, 5, 7, 9, 255, 1023, 1024, 4097, 20_001];
    let series: Vec<Vec<f32>> = (0..45)
        .map(|i| {
            let n = lengths[rng.random_range(0..lengths.len())];
            let mean = rng.random_range(-1e4..1e4);
            let mut v = normal(&mut rng, n, mean, 3.0);
            if i % 7 == 3 {
                let at = rng.random_range(0..n);
                v[at] = [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::MIN_POSITIVE / 4.0,
                ][i % 4];
            }
            v
        })
        .collect();
    let pieces: Vec<(u64, &[f32])> = series
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.as_slice()))
        .collect();
    for slow_path in [SlowPath::Inline, SlowPath::Deferred] {
        for loads in [Loads::Loop, Loads::Unrolled] {
            for (vpt, p) in [(1, 3), (8, 64)] {
                let make = || {
                    // Bindings of 8 Ki values: the longest series span three dispatches.
                    let mut config = GpuConfig::new(8192);
                    config.workgroups = Some(p);
                    config.vec_per_thread = Some(vpt);
                    config.loads = Some(loads);
                    config.slow_path = Some(slow_path);
                    GpuReducer::new(ctx, config).unwrap()
                };
                let mut together = make();
                together.push_segments(&pieces).unwrap();
                let (got, _) = together.finish_tagged().unwrap();
                let mut apart = make();
                for &(tag, piece) in &pieces {
                    apart.push_tagged(tag, piece).unwrap();
                }
                let (want, _) = apart.finish_tagged().unwrap();
                let what = format!("{}, P={p}", together.shape());
                assert_eq!(got.len(), series.len(), "{what}");
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "{what}");
                for (tag, partial) in &got {
                    let data = &series[*tag as usize];
                    let finite: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
                    assert_eq!(
                        partial.nan_count,
                        data.iter().filter(|x| x.is_nan()).count() as u64,
                        "{what}, series {tag}"
                    );
                    let finite_only = microbatch::Partial {
                        nan_count: 0,
                        pos_inf_count: 0,
                        neg_inf_count: 0,
                        ..*partial
                    };
                    if !finite.is_empty() {
                        check_stats(
                            &format!("{what}, series {tag}"),
                            &finite_only.finish(0, false),
                            &finite,
                            shape_depth(data.len(), p, &together.shape()),
                        );
                    }
                }
            }
        }
    }
}

/// Pinned staging (a Vulkan buffer in host memory, made through wgpu-hal, that the copy engine
/// reads) gives the same partial, bit for bit, as wgpu's mapped staging: batches of growing
/// and uneven sizes, more of them than the ring has slots (so slots are waited for and
/// rewritten), with NaN and infinities, over several finishes of one reducer.
#[test]
fn pinned_staging_matches_mapped_staging_bit_for_bit() {
    use microbatch::Staging;
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("pinned_staging");
    let mut data = normal(&mut rng, 300_001, -7.0e3, 40.0);
    data[12_345] = f32::NAN;
    data[250_000] = f32::INFINITY;
    // Batch sizes: small first (slots created small), then larger (slots grow), then uneven.
    let cuts = [
        1_000usize, 4_000, 60_000, 65_536, 65_536, 17, 65_536, 38_376,
    ];
    assert_eq!(cuts.iter().sum::<usize>(), data.len());
    let run = |staging: Staging| {
        let mut config = GpuConfig::new(65_536);
        config.staging = Some(staging);
        config.workgroups = Some(9);
        let mut reducer = GpuReducer::new(ctx, config).unwrap();
        let mut out = Vec::new();
        for _ in 0..2 {
            let mut at = 0;
            for &c in &cuts {
                reducer.push(&data[at..at + c]).unwrap();
                at += c;
            }
            out.push(reducer.finish().unwrap().0);
        }
        (reducer.staging(), out)
    };
    let (bar_used, bar) = run(Staging::Bar);
    assert_eq!(bar_used, Staging::Bar);
    match ctx.adapter().api.as_str() {
        "Vulkan" => {
            let (pinned_used, pinned) = run(Staging::Pinned);
            assert_eq!(pinned_used, Staging::Pinned);
            assert_eq!(pinned, bar, "pinned and mapped staging differ");
        }
        other => {
            let mut config = GpuConfig::new(1024);
            config.staging = Some(Staging::Pinned);
            let e = GpuReducer::new(ctx, config).unwrap_err();
            assert!(e.to_string().contains("Vulkan"), "{other}: {e}");
        }
    }
    assert_eq!(bar[0], bar[1], "two finishes of the same data");
    let p = bar[0];
    assert_eq!((p.nan_count, p.pos_inf_count), (1, 1));
    let finite: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    let stats = microbatch::Partial {
        nan_count: 0,
        pos_inf_count: 0,
        ..p
    }
    .finish(0, false);
    check_stats("pinned/bar", &stats, &finite, gpu_depth(65_536, 9));
    // Auto takes pinned memory only on a discrete GPU with host memory outside the BAR.
    let auto = GpuReducer::new(ctx, GpuConfig::new(1024))
        .unwrap()
        .staging();
    if ctx.adapter().device_type != "DiscreteGpu" {
        assert_eq!(auto, Staging::Bar);
    }
}

/// Asking for subgroups on an adapter without them is a configuration error, not a crash.
#[test]
fn subgroups_on_request_only_where_available() {
    let Some(ctx) = gpu() else { return };
    let mut config = GpuConfig::new(1024);
    config.subgroups = Some(true);
    let result = GpuReducer::new(ctx, config);
    assert_eq!(
        result.is_ok(),
        ctx.adapter().subgroups,
        "{:?}",
        result.err()
    );
    config.vec_per_thread = Some(0);
    config.subgroups = None;
    assert!(
        GpuReducer::new(ctx, config).is_err(),
        "zero loads per thread"
    );
}

/// The ring is sized by what is pushed, not by the configured batch size, and grows when a
/// larger batch arrives: pushes of rising and falling sizes through every slot must still give
/// the reference's statistics.
#[test]
fn ring_grows_with_the_batches_pushed() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("ring_grows");
    let data = uniform(&mut rng, 40_000, -1e3, 1e3);
    let mut config = GpuConfig::new(20_000);
    config.workgroups = Some(8);
    let mut reducer = GpuReducer::new(ctx, config).unwrap();
    let sizes = [10, 3, 5_001, 20_000, 7, 9_999, 4_980];
    assert_eq!(sizes.iter().sum::<usize>(), data.len());
    let mut at = 0;
    for n in sizes {
        reducer.push(&data[at..at + n]).unwrap();
        at += n;
    }
    let (partial, _) = reducer.finish().unwrap();
    let stats = partial.finish(0, false);
    check_stats("growing ring", &stats, &data, gpu_depth(20_000, 8));
}

/// Magnitudes where unscaled f32 moments fail (see the CPU test of the same name).
#[test]
fn gpu_huge_and_tiny_magnitudes_keep_their_variance() {
    let Some(_) = gpu() else { return };
    let mut rng = fresh_rng("gpu_huge_and_tiny_magnitudes");
    for (mean, std) in [(1e30, 3e29), (0.0, 1e20), (3e-30, 1e-31), (0.0, 1e-25)] {
        let data = normal(&mut rng, 100_003, mean, std);
        let r = gpu_engine(50_000, Some(8), None)
            .unwrap()
            .reduce(&data)
            .unwrap();
        check_stats(
            &format!("mean {mean:e} std {std:e}"),
            &r.stats,
            &data,
            gpu_depth(50_000, 8),
        );
    }
}

/// Independent inputs reduced in one pipelined pass (the server's path) keep their partials apart:
/// each equals its own reference, whatever the others hold (NaN, huge offsets, nothing).
#[test]
fn reduce_each_keeps_inputs_apart_on_both_backends() {
    let mut rng = fresh_rng("reduce_each");
    let mut inputs: Vec<Vec<f32>> = vec![
        uniform(&mut rng, 70_001, -1.0, 1.0),
        normal(&mut rng, 5_000, 1e6, 3.0),
        vec![],
        uniform(&mut rng, 3, 10.0, 20.0),
        normal(&mut rng, 40_000, -50.0, 0.5),
    ];
    inputs[4][123] = f32::NAN;
    let slices: Vec<BatchRef> = inputs.iter().map(|v| BatchRef::F32(v)).collect();
    let mut engines = vec![(
        "cpu",
        engine_on(Box::new(CpuReducer::new()), 8192, 0),
        CPU_DEPTH,
    )];
    if gpu().is_some() {
        engines.push((
            "gpu",
            gpu_engine(8192, Some(4), None).unwrap(),
            gpu_depth(8192, 4),
        ));
    }
    for (name, mut engine, depth) in engines {
        for _ in 0..2 {
            let (parts, _) = engine.reduce_each(&slices).unwrap();
            assert_eq!(parts.len(), inputs.len());
            for (i, (p, data)) in parts.iter().zip(&inputs).enumerate() {
                let stats = p.finish(0, true);
                let clean: Vec<f32> = data.iter().copied().filter(|x| !x.is_nan()).collect();
                assert_eq!(
                    stats.nan_count as usize,
                    data.len() - clean.len(),
                    "{name} input {i}"
                );
                // With skip_nan, count is of the values the statistics cover.
                check_stats(&format!("{name} input {i}"), &stats, &clean, depth);
            }
        }
    }
}

/// An application's own device and buffer (issue 13, item 4): reduced in place, equal to the
/// CPU backend; what cannot be reduced is a typed error, never a wrong answer or a panic.
#[test]
fn reduces_the_callers_own_buffer_in_place() {
    let Some(ours) = gpu() else { return };
    // "The application's" device: its own instance, adapter and device (with SHADER_F64,
    // which the kernel needs), handed to microbatch.
    use microbatch::wgpu;
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .find(|a| a.get_info().name == ours.adapter().name)
        .expect("the test adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app.device"),
        required_features: wgpu::Features::SHADER_F64,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = microbatch::GpuContext::from_device(&adapter.get_info(), device, queue);
    let mut rng = fresh_rng("reduces_the_callers_own_buffer_in_place");
    let data = normal(&mut rng, 100_003, 5e3, 2.0);
    use wgpu::util::DeviceExt;
    let mut padded = data.clone();
    padded.resize(data.len().next_multiple_of(4) + 64, f32::NAN);
    let buffer = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("app.data"),
            contents: bytemuck::cast_slice(&padded),
            usage: microbatch::wgpu::BufferUsages::STORAGE
                | microbatch::wgpu::BufferUsages::COPY_DST,
        });
    let mut config = GpuConfig::new(1 << 14);
    config.workgroups = Some(4);
    let mut reducer = GpuReducer::new(&ctx, config).unwrap();
    let (p, _) = reducer.reduce_buffer(&buffer, 0, data.len()).unwrap();
    // The NaN padding past `len` is never read into the statistics.
    assert_eq!((p.count, p.nan_count), (data.len() as u64, 0));
    let s = p.finish(0, false);
    check_stats("own buffer", &s, &data, gpu_depth(1 << 14, 4));
    // From an offset: the values after the first 64.
    let (p, _) = reducer
        .reduce_buffer(&buffer, 256, data.len() - 64)
        .unwrap();
    check_stats(
        "own buffer at 256",
        &p.finish(0, false),
        &data[64..],
        gpu_depth(1 << 14, 4),
    );
    // Typed errors, nothing dispatched.
    for (offset, len, says) in [(4u64, 10usize, "offset"), (0, padded.len() + 8, "end")] {
        let e = reducer.reduce_buffer(&buffer, offset, len).unwrap_err();
        assert!(matches!(e, microbatch::Error::InvalidBuffer(_)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let not_storage = ctx
        .device()
        .create_buffer(&microbatch::wgpu::BufferDescriptor {
            label: Some("app.vertices"),
            size: 256,
            usage: wgpu::BufferUsages::VERTEX,
            mapped_at_creation: false,
        });
    let e = reducer.reduce_buffer(&not_storage, 0, 8).unwrap_err();
    assert!(e.to_string().contains("STORAGE"), "{e}");
    // A storage buffer of another device: a typed error, no panic from wgpu's default handler,
    // and the reducer still answers right afterwards.
    // (Another device of the application's own instance: wgpu's resource ids are per instance,
    // so only there can a mismatch be told at all.)
    let (elsewhere, _queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app.second_device"),
        ..Default::default()
    }))
    .unwrap();
    let foreign = elsewhere.create_buffer(&microbatch::wgpu::BufferDescriptor {
        label: Some("app.other_device"),
        size: 1 << 12,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = reducer.reduce_buffer(&foreign, 0, 1 << 10).unwrap_err();
    assert!(matches!(e, microbatch::Error::InvalidBuffer(_)), "{e}");
    let (p, _) = reducer.reduce_buffer(&buffer, 0, data.len()).unwrap();
    assert_eq!(p.count, data.len() as u64, "after a refused buffer");
    // A resident upload is bound to the reducer that made it.
    let resident = reducer.upload(&data[..1000]).unwrap();
    let mut other = GpuReducer::new(&ctx, GpuConfig::new(1 << 14)).unwrap();
    let e = other.reduce_resident(&resident).unwrap_err();
    assert!(e.to_string().contains("another GpuReducer"), "{e}");
    let (p, _) = reducer.reduce_resident(&resident).unwrap();
    assert_eq!(p.count, 1000);
}

/// Adversarial f32 data for sketches: every exponent from subnormal to the largest, both signs,
/// ±0, the smallest subnormal and the largest f32, infinities and NaN.
fn sketch_data(rng: &mut rand::rngs::Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    use rand::RngExt;
    (0..n)
        .map(|i| match i % 17 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::from_bits(rng.random_range(1..0x0080_0000)), // positive subnormal
            3 => -f32::from_bits(rng.random_range(1..0x0080_0000)),
            4 if i % 3 == 0 => f32::from_bits(1),
            4 => f32::MAX,
            5 if i % 1000 == 5 => f32::NAN,
            5 if i % 1000 == 22 => f32::INFINITY,
            5 if i % 1000 == 39 => f32::NEG_INFINITY,
            // Any bit pattern: every exponent, NaN and infinities among them.
            _ => f32::from_bits(rng.random::<u32>()),
        })
        .collect()
}

/// The quantile sketch counted on the device (`push_sketched_tagged`, `shaders/histogram.wgsl`)
/// is bucket for bucket the host's (`Sketch::add_f32_slice`) at every accuracy the device
/// takes, for several series at once, over dispatches cut by the batch size and a readback
/// window that fills mid-stream (its histograms folded then); a later stream starts empty;
/// what it cannot take (finer sketches, a ninth series) it declines.
#[test]
fn device_sketches_equal_the_hosts_bucket_for_bucket() {
    use microbatch::sketch::Sketch;
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("device_sketches");
    for (m, n, batch) in [
        (6u8, 300_001usize, 256usize),
        (1, 20_011, 4096),
        (4, 70_003, 8192),
        (8, 40_000, 1 << 16),
    ] {
        let mut config = GpuConfig::new(batch);
        config.device_sketch = Some(true);
        let mut reducer = GpuReducer::new(ctx, config).unwrap();
        let series: Vec<Vec<f32>> = (0..3).map(|_| sketch_data(&mut rng, n)).collect();
        let mut host = Sketch::with_mantissa_bits(m);
        // The three series interleaved, a batch at a time.
        for start in (0..n).step_by(batch) {
            let range = start..(start + batch).min(n);
            for (tag, s) in series.iter().enumerate() {
                let counted = reducer
                    .push_sketched_tagged(tag as u64, &s[range.clone()], &mut host)
                    .unwrap();
                assert!(counted, "m {m}: the device takes tag {tag}");
            }
        }
        assert_eq!(
            host.count(),
            0,
            "the device does not touch the caller's sketch"
        );
        let (parts, _) = reducer.finish_tagged().unwrap();
        let mut sketches = reducer.take_sketches();
        sketches.sort_by_key(|(t, _)| *t);
        assert_eq!(sketches.len(), 3, "m {m}");
        for ((tag, mut got), s) in sketches.into_iter().zip(&series) {
            let mut want = Sketch::with_mantissa_bits(m);
            want.add_f32_slice(s);
            want.trim();
            got.trim();
            assert!(
                got == want,
                "m {m}, series {tag}: device and host sketches differ ({} and {} values)",
                got.count(),
                want.count()
            );
            let partial = &parts.iter().find(|(t, _)| *t == tag).unwrap().1;
            assert_eq!(
                got.count(),
                partial.count,
                "m {m}: every finite value counted once"
            );
        }
        assert!(reducer.take_sketches().is_empty(), "taken once");
        // The next stream starts from empty histograms.
        let small = [1.5f32, -2.0, 0.0];
        assert!(reducer.push_sketched_tagged(7, &small, &mut host).unwrap());
        reducer.finish_tagged().unwrap();
        let next = reducer.take_sketches();
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].0, next[0].1.count(), next[0].1.zeros), (7, 3, 1));
        // Finer sketches and a ninth series at once are left to the host.
        let mut fine = Sketch::with_mantissa_bits(9);
        assert!(!reducer.push_sketched_tagged(0, &small, &mut fine).unwrap());
        for tag in 0..8 {
            assert!(
                reducer
                    .push_sketched_tagged(tag, &small, &mut host)
                    .unwrap()
            );
        }
        assert!(!reducer.push_sketched_tagged(8, &small, &mut host).unwrap());
        reducer.finish_tagged().unwrap();
        assert_eq!(reducer.take_sketches().len(), 8);
    }
    // Told not to, it leaves every sketch to the host.
    let mut config = GpuConfig::new(1024);
    config.device_sketch = Some(false);
    let mut reducer = GpuReducer::new(ctx, config).unwrap();
    let mut host = Sketch::with_mantissa_bits(6);
    assert!(!reducer.push_sketched_tagged(0, &[1.0], &mut host).unwrap());
}

/// Device-counted sketches through the engine: an accumulator read mid-stream (each finish
/// ends the reducer's stream: its sketches join the run's before the next batches), a plain
/// run, and axis lanes past the device's 8 slots (the rest counted on the host). Every sketch
/// equals the host's of the same values, and the quantiles the CPU backend's.
#[test]
fn engine_runs_merge_device_sketches_in_every_finish() {
    use microbatch::sketch::Sketch;
    let Some(ctx) = gpu() else { return };
    let mut rng = fresh_rng("engine_device_sketches");
    let data = sketch_data(&mut rng, 90_001);
    let gpu_engine = |batch: usize| {
        let mut config = GpuConfig::new(batch);
        config.device_sketch = Some(true);
        let mut e = engine_on(Box::new(GpuReducer::new(ctx, config).unwrap()), batch, 0);
        e.set_quantiles(Some(0.01)).unwrap();
        e
    };
    let mut want = Sketch::new(0.01).unwrap();
    want.add_f32_slice(&data);
    want.trim();
    let mut engine = gpu_engine(4096);
    let mut acc = engine.accumulate();
    acc.push(&data[..30_000]).unwrap();
    let mid = acc.stats().unwrap();
    assert_eq!(mid.count, 30_000);
    acc.push(&data[30_000..]).unwrap();
    let report = acc.finish().unwrap();
    let same = |s: Option<&Sketch>, want: &Sketch| s.is_some_and(|s| s == want);
    assert!(same(report.sketch.as_ref(), &want), "accumulator");
    let report = engine.reduce(&data).unwrap();
    assert!(same(report.sketch.as_ref(), &want), "a run after it");
    let mut cpu = engine_on(Box::new(CpuReducer::new()), 4096, 0);
    cpu.set_quantiles(Some(0.01)).unwrap();
    let on_cpu = cpu.reduce(&data).unwrap();
    for q in [0.0, 0.01, 0.3, 0.5, 0.97, 1.0] {
        assert_eq!(
            report.quantile(q).map(f64::to_bits),
            on_cpu.quantile(q).map(f64::to_bits),
            "q {q}"
        );
    }
    // Twelve lanes of a (R, 12) f32 array along axis 0: 8 on the device, 4 on the host.
    let (rows, lanes) = (3001usize, 12usize);
    let values = sketch_data(&mut rng, rows * lanes);
    let mut bytes =
        microbatch::source::npy::write_header("<f4", false, &[rows as u64, lanes as u64]);
    bytes.extend(f32_bytes(&values));
    let path = tmp_file("device-sketch-lanes", "a.npy", &bytes);
    let source = microbatch::source::open(&path, &Default::default()).unwrap();
    let mut axis = microbatch::source::AxisSource::new(source, 0, 1000).unwrap();
    let report = gpu_engine(1000)
        .run_columns(&mut axis, &mut |_| {})
        .unwrap();
    assert_eq!(report.columns.len(), lanes);
    for (j, c) in report.columns.iter().enumerate() {
        let lane: Vec<f32> = values.iter().skip(j).step_by(lanes).copied().collect();
        let mut want = Sketch::new(0.01).unwrap();
        want.add_f32_slice(&lane);
        want.trim();
        assert!(same(c.sketch.as_ref(), &want), "lane {j}");
    }
}
