//! Reduce a `&[f32]` you already have in memory.
//!
//! cargo run --release --example reduce_slice

use microbatch::{Engine, EngineConfig};

fn main() -> Result<(), microbatch::Error> {
    // 10 million values around 1000 with a small ripple.
    let data: Vec<f32> = (0..10_000_000)
        .map(|i| 1000.0 + (i as f32 * 0.001).sin())
        .collect();

    // Auto: a hardware GPU if the machine has one, otherwise the CPU backend.
    let mut engine = Engine::new(&EngineConfig::default())?;
    let report = engine.reduce(&data)?;

    let s = &report.stats;
    println!(
        "{} values on {} ({}): mean {:.6}, std {:.6}, min {}, max {}",
        s.count,
        report.backend.kind,
        report.backend.adapter,
        s.mean.unwrap_or(f64::NAN),
        s.std.unwrap_or(f64::NAN),
        s.min.unwrap_or(f64::NAN),
        s.max.unwrap_or(f64::NAN),
    );
    println!(
        "{:.2} GB/s over {} batches",
        report.bytes_per_s() / 1e9,
        report.batches.count
    );
    Ok(())
}
