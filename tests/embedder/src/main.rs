//! An application using microbatch as a library (default features off, `gpu` on): the calls an
//! embedder makes, each checked against a result computed here. Exits non-zero on the first
//! mismatch. With `MICROBATCH_REQUIRE_GPU=1` a machine without a GPU adapter is a failure.

use microbatch::{
    AdapterSelector, BackendChoice, Engine, EngineConfig, Error, GpuConfig, GpuContext,
    GpuReducer, Partial, PartialFile,
};

fn check(what: &str, ok: bool) {
    if !ok {
        eprintln!("embedder: FAILED: {what}");
        std::process::exit(1);
    }
    println!("embedder: ok: {what}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data: Vec<f32> = (0..1_000_003).map(|i| (i % 1000) as f32 - 499.5).collect();
    let exact_sum: f64 = data.iter().map(|&x| f64::from(x)).sum();

    // One call.
    let s = microbatch::stats(&data);
    check("stats: count", s.count == 1_000_003);
    check("stats: sum", (s.sum.unwrap() - exact_sum).abs() <= 1e-9);

    // An engine on the CPU, a failing producer, an accumulator.
    let mut engine = Engine::new(&EngineConfig {
        backend: BackendChoice::Cpu,
        batch_size: 65_536,
        ..Default::default()
    })?;
    let r = engine.reduce(&data)?;
    check("engine: min and max", r.stats.min == Some(-499.5) && r.stats.max == Some(499.5));
    let failing = data
        .chunks(100_000)
        .enumerate()
        .map(|(i, c)| if i == 3 { Err("disk gone") } else { Ok(c) });
    check(
        "try_reduce_batches: the producer's error",
        matches!(engine.try_reduce_batches(failing), Err(Error::Producer { after: 3, .. })),
    );
    let mut acc = engine.accumulate();
    for c in data.chunks(300_000) {
        acc.push(c)?;
    }
    check("accumulate: count", acc.stats()?.count == 1_000_003);
    drop(acc);

    // Partials: merged, through JSON, and as partial files.
    let (a, b) = data.split_at(400_000);
    let mut p = microbatch::partial(a);
    p.merge(&serde_json::from_str::<Partial>(&serde_json::to_string(
        &microbatch::partial(b),
    )?)?);
    check("partial: merged through JSON", p.count == 1_000_003);
    let file = std::env::temp_dir().join(format!("embedder-{}.json", std::process::id()));
    PartialFile {
        sketch: None,
        partial: p,
        ddof: 1,
        skip_nan: false,
        inputs: vec!["memory".into()],
        skipped_invalid: 0,
    }
    .write(&file)?;
    let back = PartialFile::read(&file)?;
    std::fs::remove_file(&file)?;
    check("partial file: round trip", back.partial.count == p.count && back.ddof == 1);

    // A GPU opened by the application, shared by two reducers on two threads.
    match GpuContext::new(&AdapterSelector::any()) {
        Ok(ctx) => {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (ctx, data) = (ctx.clone(), data.clone());
                    std::thread::spawn(move || -> microbatch::Result<u64> {
                        let r = GpuReducer::new(&ctx, GpuConfig::new(1 << 18))?;
                        Ok(Engine::with_reducer(Box::new(r)).reduce(&data)?.stats.count)
                    })
                })
                .collect();
            for h in handles {
                check("gpu: a reducer per thread on one device", h.join().unwrap()? == 1_000_003);
            }
        }
        Err(e) if std::env::var_os("MICROBATCH_REQUIRE_GPU").is_some() => {
            return Err(format!("MICROBATCH_REQUIRE_GPU is set but no adapter opened: {e}").into());
        }
        Err(e) => println!("embedder: no GPU adapter here ({e}); GPU checks skipped"),
    }
    Ok(())
}
