//! Criterion benchmarks of the CPU and GPU backends per batch size.
//!
//! `cargo bench --bench reduce`; with `CI` set the workload is small so a quick run stays cheap.
//! State (device, pipeline, buffers, data) is built once per backend and batch size, outside the
//! timed loop. The GPU group runs only where an adapter exists (lavapipe counts: its figures say
//! nothing about GPU speed, only about relative changes).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use microbatch::backend::cpu::{SimdLevel, reduce_slice_with};
use microbatch::source::{BatchSource, RandomSource};
use microbatch::{AdapterSelector, CpuReducer, Engine, GpuConfig, GpuContext, GpuReducer};

fn workload() -> (usize, Vec<usize>) {
    if std::env::var_os("CI").is_some() {
        (1 << 18, vec![1 << 12, 1 << 16])
    } else {
        (1 << 24, vec![1 << 12, 1 << 16, 1 << 20, 1 << 22])
    }
}

fn data(n: usize) -> Vec<f32> {
    let mut src = RandomSource::new(n as u64, 1);
    let mut v = Vec::new();
    src.next_batch(&mut v, n).unwrap();
    v
}

fn bench(c: &mut Criterion) {
    let (n, batch_sizes) = workload();
    let data = data(n);
    let gpu = GpuContext::new(&AdapterSelector::any()).ok();

    let mut group = c.benchmark_group("reduce");
    group.throughput(Throughput::Bytes((n * 4) as u64));
    group.sample_size(10);
    for &b in &batch_sizes {
        let mut cpu = Engine::with_reducer(Box::new(CpuReducer::new()));
        cpu.set_batch_size(b).unwrap();
        group.bench_with_input(BenchmarkId::new("cpu", b), &b, |bench, _| {
            bench.iter(|| cpu.reduce(&data).unwrap().stats.sum)
        });
        if let Some(ctx) = &gpu {
            let reducer = GpuReducer::new(ctx, GpuConfig::new(b)).unwrap();
            let mut engine = Engine::with_reducer(Box::new(reducer));
            group.bench_with_input(BenchmarkId::new("gpu", b), &b, |bench, _| {
                bench.iter(|| engine.reduce(&data).unwrap().stats.sum)
            });
        }
    }
    group.finish();
}

/// The CPU kernel alone at each instruction-set level this processor has, on one thread, over
/// data that fits in L2: the compute rate with memory out of the way.
fn cpu_kernel(c: &mut Criterion) {
    let n = 1 << 18;
    let data = data(n);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("cpu_kernel");
    group.throughput(Throughput::Bytes((n * 4) as u64));
    for level in SimdLevel::available() {
        group.bench_function(level.name(), |bench| {
            pool.install(|| bench.iter(|| reduce_slice_with(level, &data).sum))
        });
    }
    // The fused moments + sketch kernel (best level) on data in cache: its compute cost alone.
    group.bench_function("sketched_1pct", |bench| {
        pool.install(|| {
            bench.iter(|| {
                let mut s = microbatch::sketch::Sketch::new(0.01).unwrap();
                microbatch::backend::cpu::reduce_slice_sketched(&data, &mut s).sum
            })
        })
    });
    group.finish();
}

/// Quantiles' cost: the sketch of f32 data in memory (all cores) beside the moments of the same
/// data, side by side in one run (issue 16: the run with quantiles should keep half the
/// moments-only throughput).
fn sketch(c: &mut Criterion) {
    let n = if std::env::var_os("CI").is_some() {
        1 << 18
    } else {
        1 << 26
    };
    let data = data(n);
    let mut group = c.benchmark_group("sketch");
    group.throughput(Throughput::Bytes((n * 4) as u64));
    group.sample_size(10);
    group.bench_function("moments", |bench| {
        bench.iter(|| microbatch::backend::cpu::reduce_slice(&data).sum)
    });
    group.bench_function("sketch_1pct", |bench| {
        bench.iter(|| {
            let mut s = microbatch::sketch::Sketch::new(0.01).unwrap();
            s.add_f32_slice(&data);
            s.count()
        })
    });
    // Both in one pass: what a run with quantiles costs on the CPU backend.
    group.bench_function("moments_and_sketch_1pct", |bench| {
        bench.iter(|| {
            let mut s = microbatch::sketch::Sketch::new(0.01).unwrap();
            let p = microbatch::backend::cpu::reduce_slice_sketched(&data, &mut s);
            (p.sum, s.count())
        })
    });
    group.finish();
}

criterion_group!(benches, bench, cpu_kernel, sketch);
criterion_main!(benches);
