use microbatch::backend::cpu::{SimdLevel, read_sum, reduce_slice_with};
use std::time::Instant;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1 << 16);
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1013) as f32 * 0.37 + 1e3)
        .collect();
    let reps = (1usize << 28) / n;
    for level in SimdLevel::available() {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut c = 0u64;
            for _ in 0..reps {
                c += reduce_slice_with(level, &data).count;
            }
            assert!(c > 0);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{:>9} reduce {:.1} GB/s",
            level.name(),
            (reps * n * 4) as f64 / best / 1e9
        );
    }
    let t = Instant::now();
    let mut s = 0.0;
    for _ in 0..reps {
        s += read_sum(&data);
    }
    println!(
        "read {:.1} GB/s {s}",
        (reps * n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
    );
}
