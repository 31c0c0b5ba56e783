use microbatch::backend::cpu::{read_slice, reduce_slice, reduce_slice_f64};
use std::time::Instant;
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
fn main() {
    let n: usize = 50_000_000;
    let d64: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 1013) as f64 * 0.37 + 1e3)
        .collect();
    let d32: Vec<f32> = (0..2 * n)
        .map(|i| ((i * 7919) % 1013) as f32 * 0.37 + 1e3)
        .collect();
    let bytes = (n * 8) as f64;
    let as32: &[f32] = unsafe { std::slice::from_raw_parts(d64.as_ptr().cast(), 2 * n) };
    let (mut r, mut a, mut b) = (vec![], vec![], vec![]);
    for _ in 0..9 {
        let t = Instant::now();
        std::hint::black_box(read_slice(as32));
        r.push(bytes / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        std::hint::black_box(reduce_slice_f64(&d64));
        a.push(bytes / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        std::hint::black_box(reduce_slice(&d32));
        b.push(bytes / t.elapsed().as_secs_f64() / 1e9);
    }
    let (r, a, b) = (med(r), med(a), med(b));
    println!(
        "read {r:.1} GB/s  f64 reduce {a:.1} GB/s ({:.0}%)  f32 reduce {b:.1} GB/s ({:.0}%)",
        100.0 * a / r,
        100.0 * b / r
    );
}
