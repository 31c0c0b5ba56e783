//! The library surface an application uses, on both backends: the one-call functions, batches
//! from a producer that can fail, the incremental accumulator, an engine over a reducer on a
//! device the application opened, and errors it can match on.

use crate::common::*;
use microbatch::{
    BackendKind, BatchReducer, CpuReducer, Engine, Error, GpuConfig, GpuReducer, Partial,
};

/// Engines on every backend this machine has: the CPU, and the GPU test adapter.
fn engines(batch_size: usize) -> Vec<(&'static str, Engine, f64)> {
    let mut out = vec![(
        "cpu",
        engine_on(Box::new(CpuReducer::new()), batch_size, 0),
        CPU_DEPTH,
    )];
    if let Some(ctx) = gpu() {
        let r = GpuReducer::new(ctx, GpuConfig::new(batch_size)).unwrap();
        let depth = gpu_depth(batch_size, r.info().workgroups);
        out.push(("gpu", Engine::with_reducer(Box::new(r)), depth));
    }
    out
}

#[test]
fn one_call_stats_equal_the_reference() {
    let mut rng = fresh_rng("api_one_call");
    let data = normal(&mut rng, 200_003, -40.0, 3.0);
    check_stats("stats(&[f32])", &microbatch::stats(&data), &data, CPU_DEPTH);
    let wide: Vec<f64> = data.iter().map(|&x| f64::from(x) * 1e200).collect();
    let s = microbatch::stats(&wide);
    let r = reference(&data);
    assert_close(
        "f64 mean",
        s.mean.unwrap(),
        r.mean * 1e200,
        1e-12 * r.mean.abs() * 1e200,
    );
    let ints: Vec<i32> = (0..100_000).map(|i| i * 3 - 7).collect();
    let s = microbatch::stats(&ints);
    let want: i128 = ints.iter().map(|&x| i128::from(x)).sum();
    assert_eq!(s.exact.unwrap().sum, want);
    // partial() merges like any other partial.
    let (a, b) = data.split_at(77_777);
    let mut p = microbatch::partial(a);
    p.merge(&microbatch::partial(b));
    check_stats("merged halves", &p.finish(0, false), &data, CPU_DEPTH);
}

#[test]
fn a_failing_producer_is_an_error_with_its_cause_not_a_result() {
    #[derive(Debug)]
    struct SensorLost;
    impl std::fmt::Display for SensorLost {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("sensor 3 stopped answering")
        }
    }
    impl std::error::Error for SensorLost {}

    let mut rng = fresh_rng("api_producer");
    let data = uniform(&mut rng, 50_000, 0.0, 1.0);
    for (name, mut engine, depth) in engines(4096) {
        let batches = data
            .chunks(5000)
            .enumerate()
            .map(|(i, c)| if i == 6 { Err(SensorLost) } else { Ok(c) });
        let e = engine.try_reduce_batches(batches).unwrap_err();
        match &e {
            Error::Producer { after, source } => {
                assert_eq!(*after, 6, "{name}");
                assert!(source.is::<SensorLost>(), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert_eq!(cause, "sensor 3 stopped answering");
        // The engine is clean afterwards: nothing of the failed run leaks into the next.
        let r = engine
            .try_reduce_batches(data.chunks(5000).map(Ok::<_, SensorLost>))
            .unwrap();
        check_stats(&format!("{name} after a failure"), &r.stats, &data, depth);
    }
}

#[test]
fn the_accumulator_gives_running_statistics_equal_to_one_run() {
    let mut rng = fresh_rng("api_accumulator");
    let data = normal(&mut rng, 120_001, 1e4, 2.0);
    for (name, mut engine, depth) in engines(8192) {
        let mut acc = engine.accumulate();
        let mut seen = 0;
        for (i, chunk) in data.chunks(30_000).enumerate() {
            acc.push(chunk).unwrap();
            seen += chunk.len();
            if i % 2 == 0 {
                let s = acc.stats().unwrap();
                check_stats(&format!("{name} running"), &s, &data[..seen], depth);
            }
        }
        let report = acc.finish().unwrap();
        assert_eq!(report.batches.count, 5, "{name}");
        check_stats(&format!("{name} finished"), &report.stats, &data, depth);

        // f64 and i64 batches in the same accumulator keep their precision.
        let mut acc = engine.accumulate();
        acc.push_i64(&[i64::MAX, i64::MAX]).unwrap();
        acc.push_f64(&[0.5]).unwrap();
        let s = acc.stats().unwrap();
        assert_eq!(s.count, 3, "{name}");
        assert_close(
            "mixed sum",
            s.sum.unwrap(),
            2.0 * i64::MAX as f64 + 0.5,
            1e-15 * 2.0 * i64::MAX as f64,
        );
        drop(acc);
        // Dropped with batches pending: the engine is ready for the next run.
        let mut acc = engine.accumulate();
        acc.push(&[1e30, -1e30]).unwrap();
        drop(acc);
        let r = engine.reduce(&data).unwrap();
        check_stats(&format!("{name} after a drop"), &r.stats, &data, depth);
    }
}

#[test]
fn with_reducer_cuts_to_the_reducers_batch_size() {
    let Some(ctx) = gpu() else { return };
    let r = GpuReducer::new(ctx, GpuConfig::new(10_000)).unwrap();
    let mut engine = Engine::with_reducer(Box::new(r));
    let data = vec![1.0f32; 95_000];
    let report = engine.reduce(&data).unwrap();
    assert_eq!(report.backend.kind, BackendKind::Gpu);
    assert_eq!((report.batches.size, report.batches.count), (10_000, 10));
    let mut cpu = Engine::with_reducer(Box::new(CpuReducer::new()));
    assert_eq!(
        cpu.reduce(&data).unwrap().batches.size,
        microbatch::DEFAULT_BATCH_SIZE
    );
}

#[test]
fn settings_out_of_range_are_errors_naming_the_setting_and_range() {
    let mut engine = Engine::with_reducer(Box::new(CpuReducer::new()));
    match engine.set_batch_size(0).unwrap_err() {
        Error::OutOfRange {
            setting,
            value,
            min,
            ..
        } => assert_eq!((setting, value, min), ("batch_size", 0, 1)),
        other => panic!("{other:?}"),
    }
    let Some(ctx) = gpu() else { return };
    let mut config = GpuConfig::new(1024);
    config.workgroups = Some(u32::MAX);
    match GpuReducer::new(ctx, config).unwrap_err() {
        Error::OutOfRange {
            setting,
            value,
            max,
            on,
            ..
        } => {
            assert_eq!((setting, value), ("workgroups", u64::from(u32::MAX)));
            assert_eq!(
                max,
                u64::from(ctx.device().limits().max_compute_workgroups_per_dimension)
            );
            assert_eq!(on.as_deref(), Some(ctx.adapter().name.as_str()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_empty_or_nan_only_partial_survives_json() {
    for p in [
        Partial::EMPTY,
        microbatch::partial(&[f32::NAN; 3]),
        microbatch::partial::<f32>(&[]),
    ] {
        let back: Partial = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{p:?}"));
    }
}

#[test]
fn sources_borrow_their_reader_and_move_to_another_thread() {
    use microbatch::source::{Format, InputOptions, open_reader};
    // A reader borrowed from this stack frame (no 'static), read on a scoped thread.
    let text = String::from("value\n1\n2\n3.5\n-0.5\n");
    let options = InputOptions {
        format: Some(Format::Csv),
        ..Default::default()
    };
    let source = open_reader(Box::new(text.as_bytes()), "<borrowed>", &options).unwrap();
    let mut engine = engine_on(Box::new(CpuReducer::new()), 2, 1);
    let report = std::thread::scope(|s| {
        s.spawn(move || {
            let mut source = source;
            engine.run(source.as_mut())
        })
        .join()
        .unwrap()
    })
    .unwrap();
    assert_eq!((report.stats.count, report.stats.sum), (4, Some(6.0)));
    assert_eq!(report.stats.ddof, 1);
    // Engines and boxed sources are Send: an application can hand them to worker threads.
    fn send<T: Send>() {}
    send::<Engine>();
    send::<Box<dyn microbatch::source::BatchSource + Send>>();
    send::<microbatch::Report>();
}

#[test]
fn a_bad_field_names_its_line_and_column_as_fields() {
    use microbatch::source::{Column, Format, InputOptions, open_reader};
    use microbatch::{ColumnRef, Location};
    let mut options = InputOptions {
        format: Some(Format::Csv),
        ..Default::default()
    };
    options.text.column = Column::Name("b".into());
    let text = "a,b\n1,2\n3,oops\n";
    let mut source = open_reader(Box::new(text.as_bytes()), "t.csv", &options).unwrap();
    let e = engine_on(Box::new(CpuReducer::new()), 1024, 0)
        .run(source.as_mut())
        .unwrap_err();
    match e {
        Error::InvalidInput {
            at: Location::Line { line, column },
            ..
        } => {
            assert_eq!(line, 3);
            assert_eq!(
                column,
                Some(ColumnRef {
                    index: Some(1),
                    name: Some("b".into())
                })
            );
        }
        other => panic!("{other:?}"),
    }
}
