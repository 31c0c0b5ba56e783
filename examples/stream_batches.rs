//! Stream micro-batches from your own iterator (a socket, a sensor, a simulation step…), and
//! merge results from separate streams in memory with `Partial`.
//!
//! cargo run --release --example stream_batches [-- --gpu]

use microbatch::{AdapterSelector, BackendChoice, Engine, EngineConfig, GpuContext, Partial};

fn main() -> Result<(), microbatch::Error> {
    let use_gpu = std::env::args().any(|a| a == "--gpu");

    // Batches arrive over time and vary in length; nothing needs to be held beyond the current one.
    let batches = (0..200u32).map(|step| {
        let len = 10_000 + (step as usize * 7919) % 5_000;
        (0..len)
            .map(|i| (step as f32) * 0.01 + (i % 100) as f32 * 0.5)
            .collect::<Vec<f32>>()
    });

    let config = EngineConfig {
        backend: if use_gpu {
            BackendChoice::Gpu
        } else {
            BackendChoice::Cpu
        },
        batch_size: 16_384,
        ..Default::default()
    };
    let mut engine = if use_gpu {
        // Opening the device yourself lets you pick the adapter and reuse it for many engines.
        let ctx = GpuContext::new(&AdapterSelector::any())?;
        let reducer =
            microbatch::GpuReducer::new(&ctx, microbatch::GpuConfig::new(config.batch_size))?;
        // Batches of the reducer's own size, population variance: Engine::with_reducer.
        Engine::with_reducer(Box::new(reducer))
    } else {
        Engine::new(&config)?
    };

    let first = engine.reduce_batches(batches)?;
    println!(
        "stream A: {} values in {} batches, mean {:.4}",
        first.stats.count,
        first.batches.count,
        first.stats.mean.unwrap()
    );

    // A second stream, reduced separately (on another machine, say), merged in memory.
    let other: Vec<f32> = (0..50_000).map(|i| (i % 10) as f32).collect();
    let second = engine.reduce(&other)?;
    let mut merged = Partial::EMPTY;
    merged.merge(&first.partial);
    merged.merge(&second.partial);
    let s = merged.finish(0, false);
    println!(
        "A and B merged: {} values, mean {:.4}, var {:.4}",
        s.count,
        s.mean.unwrap(),
        s.var.unwrap()
    );
    Ok(())
}
