//! Shared test helpers: f64 references, data generators with fresh seeds, and the GPU context
//! that must exist when `MICROBATCH_REQUIRE_GPU=1`.
#![allow(dead_code)]

use std::sync::OnceLock;

use microbatch::backend::gpu::KernelShape;
use microbatch::{AdapterSelector, GpuConfig, GpuContext, GpuReducer};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// f32 unit roundoff.
pub const EPS32: f64 = f32::EPSILON as f64 / 2.0;

/// A fresh seed per run (printed, and overridable with `MICROBATCH_TEST_SEED` to replay a failure).
pub fn fresh_rng(name: &str) -> Xoshiro256PlusPlus {
    let seed = std::env::var("MICROBATCH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("{name}: seed {seed} (replay with MICROBATCH_TEST_SEED={seed})");
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// Uniform values in [lo, hi).
pub fn uniform(rng: &mut Xoshiro256PlusPlus, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f32>())
        .collect()
}

/// Normal values (Box–Muller in f64, rounded to f32).
pub fn normal(rng: &mut Xoshiro256PlusPlus, n: usize, mean: f64, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mean + std * z) as f32
        })
        .collect()
}

/// Two-pass f64 reference over the finite values: (count, sum, mean, M2, min, max).
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    pub n: usize,
    pub sum: f64,
    pub mean: f64,
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

pub fn reference(data: &[f32]) -> Reference {
    let finite: Vec<f64> = data
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| f64::from(x))
        .collect();
    let n = finite.len();
    let sum: f64 = finite.iter().sum();
    let mean = sum / n as f64;
    let m2 = finite.iter().map(|x| (x - mean) * (x - mean)).sum();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Reference {
        n,
        sum,
        mean,
        m2,
        min,
        max,
    }
}

impl Reference {
    /// Bound on the error of a sum accumulated in f32 with at most `depth` additions on any path
    /// from an element to its f32 partial (the rest merges in f64): every shifted term |x − K| is at
    /// most the range, so |Δsum| ≤ depth · ε · n · (max − min) (+ f64 rounding, negligible).
    pub fn sum_tolerance(&self, depth: f64) -> f64 {
        depth * EPS32 * self.n as f64 * (self.max - self.min) + 1e-12 * self.sum.abs()
    }

    /// Bound on the relative error of the variance from shifted sums in f32: Σ(x−K)² has only
    /// positive terms, so its relative error is at most (depth + 3)·ε (3 for forming (x−K)²),
    /// amplified by Σ(x−K)²/M2 ≤ 1 + n·range²/M2 where K is anywhere in the data's range.
    pub fn var_rel_tolerance(&self, depth: f64) -> f64 {
        let range = self.max - self.min;
        let amplification = 1.0 + self.n as f64 * range * range / self.m2;
        (depth + 3.0) * EPS32 * amplification * 2.0 + 1e-12
    }
}

/// f32 additions on an element's path in the CPU backend: 64 per lane in a block, then at most a
/// pairwise fold of 16 lanes (src/backend/cpu.rs: BLOCK / LANES + log2 LANES; the fast path widens
/// each lane to f64 without the fold, the path for blocks with NaN or ±inf folds in f32).
pub const CPU_DEPTH: f64 = 64.0 + 4.0;

/// f32 additions on an element's path in the shader for a dispatch of `len` elements over `p`
/// workgroups, kernel shaped as `shape`: sequential adds per vec4 lane (whole tiles of
/// `vec_per_thread` loads per grid step), the lane fold (2), the workgroup combine.
pub fn shape_depth(len: usize, p: u32, shape: &KernelShape) -> f64 {
    let tile = p as usize * shape.workgroup_size as usize * shape.vec_per_thread as usize;
    let per_lane = len.div_ceil(4).div_ceil(tile).max(1) * shape.vec_per_thread as usize;
    (per_lane + 2 + shape.combine_depth() as usize) as f64
}

/// [`shape_depth`] for the kernel the adapter gets by default (what `GpuConfig::new` builds).
pub fn gpu_depth(len: usize, p: u32) -> f64 {
    static SHAPE: OnceLock<KernelShape> = OnceLock::new();
    let shape = SHAPE.get_or_init(|| {
        let ctx = gpu().expect("gpu_depth needs the GPU context");
        GpuReducer::new(ctx, GpuConfig::new(4)).unwrap().shape()
    });
    shape_depth(len, p, shape)
}

/// The GPU context for tests: lavapipe on CI. Without an adapter the test is skipped, unless
/// `MICROBATCH_REQUIRE_GPU=1`, which turns a missing adapter into a failure.
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new(&AdapterSelector::any()) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("MICROBATCH_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MICROBATCH_REQUIRE_GPU=1 but no GPU adapter could be opened: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    })
    .as_ref()
}

/// Asserts `got` is within `tol` of `want`, with a message naming the quantity.
#[track_caller]
pub fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want}, |diff| {} > tolerance {tol}",
        (got - want).abs()
    );
}

/// Checks a report's statistics against the f64 reference with the given f32 depth.
#[track_caller]
pub fn check_stats(what: &str, stats: &microbatch::Stats, data: &[f32], depth: f64) {
    let r = reference(data);
    assert_eq!(stats.count as usize, data.len(), "{what}: count");
    if r.n == 0 {
        return;
    }
    assert_close(
        &format!("{what}: sum"),
        stats.sum.unwrap(),
        r.sum,
        r.sum_tolerance(depth),
    );
    assert_close(
        &format!("{what}: mean"),
        stats.mean.unwrap(),
        r.mean,
        r.sum_tolerance(depth) / r.n as f64,
    );
    assert_eq!(stats.min, Some(r.min), "{what}: min");
    assert_eq!(stats.max, Some(r.max), "{what}: max");
    let var = r.m2 / r.n as f64;
    let tol = r.var_rel_tolerance(depth) * var + f64::MIN_POSITIVE;
    assert_close(&format!("{what}: var"), stats.var.unwrap(), var, tol);
}
