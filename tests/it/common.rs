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

/// f64 unit roundoff.
pub const EPS64: f64 = f64::EPSILON / 2.0;

/// Exact reference over the finite values (compensated two-pass in f64: `numerics::
/// reference_partial`): (count, sum, mean, M2, min, max, Σ|x|).
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    pub n: usize,
    pub sum: f64,
    pub mean: f64,
    pub m2: f64,
    pub min: f64,
    pub max: f64,
    pub abs_sum: f64,
}

pub fn reference(data: &[f32]) -> Reference {
    reference_f64(data.iter().map(|&x| f64::from(x)))
}

pub fn reference_f64(data: impl Iterator<Item = f64> + Clone) -> Reference {
    let p = microbatch::numerics::reference_partial(data.clone());
    let abs_sum = data.filter(|x| x.is_finite()).map(f64::abs).sum();
    Reference {
        n: p.count as usize,
        sum: p.finite_sum(),
        mean: p.finite_mean().unwrap_or(f64::NAN),
        m2: p.m2 + p.m2_err,
        min: p.min,
        max: p.max,
        abs_sum,
    }
}

/// γₖ = kε/(1 − kε): the bound on the relative error of k f64 additions.
pub fn gamma(k: f64) -> f64 {
    k * EPS64 / (1.0 - k * EPS64)
}

impl Reference {
    /// Bound on the error of the sum when at most `depth` f64 additions lie on an element's path
    /// inside its block (src/numerics.rs): each block's t = Σ(x − p) is off by at most
    /// γ_depth·Σ|x − p| ≤ 2γ_depth·Σ|x| (|p| is at most the block's mean |x|, plus the f32
    /// rounding of the pivot), the double-double merges add O(ε²), and the final rounding ε|sum|.
    pub fn sum_tolerance(&self, depth: f64) -> f64 {
        // Σ|x| is itself a plain f64 sum of n terms: off by at most γₙ relative.
        let abs_sum = self.abs_sum * (1.0 + gamma(self.n as f64));
        2.0 * gamma(depth + 1.0) * abs_sum + 2.0 * EPS64 * self.sum.abs()
    }

    /// The variance bound we promise (README, "Numerics"): 1e-12 relative while
    /// mean²/var ≤ 1e12, else 1e-12·mean² absolute, returned relative to the variance.
    pub fn var_rel_tolerance(&self) -> f64 {
        let var = self.m2 / self.n as f64;
        if var == 0.0 {
            return 0.0;
        }
        1e-12 * (self.mean * self.mean / var).max(1.0)
    }
}

/// f64 additions on an element's path inside a CPU block: BLOCK / LANES per lane, then the
/// pairwise fold of the 32 lanes (src/backend/cpu.rs).
pub const CPU_DEPTH: f64 = (8192 / 32 + 5) as f64;

/// The GPU's bound in the same terms (src/numerics.rs): a tile adds at most its
/// 4·vec_per_thread values in sequence (the path for tiles with NaN, ±inf or subnormals), and a
/// thread's pivot-frame sum over at most k = MAX_THREAD_TILES tiles contributes k(k + 1)/2 more (its worst
/// case is k(k + 1)·ε·Σ|x|, and the tolerance is 2γ_depth·Σ|x|).
pub fn shape_depth(_len: usize, _p: u32, shape: &KernelShape) -> f64 {
    let k = microbatch::backend::gpu::MAX_THREAD_TILES as f64;
    (4 * shape.vec_per_thread) as f64 + k * (k + 1.0) / 2.0
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

/// Checks a `stats` object of a `run --json` report against the reference with the given depth:
/// count, min and max exact, the sum within the depth's bound, the variance within ours.
#[track_caller]
pub fn check_stats_json(what: &str, s: &serde_json::Value, r: &Reference, depth: f64) {
    assert_eq!(s["count"].as_u64().unwrap() as usize, r.n, "{what}: count");
    assert_eq!(s["min"].as_f64(), Some(r.min), "{what}: min");
    assert_eq!(s["max"].as_f64(), Some(r.max), "{what}: max");
    assert_close(
        &format!("{what}: sum"),
        s["sum"].as_f64().unwrap(),
        r.sum,
        r.sum_tolerance(depth),
    );
    let var = r.m2 / r.n as f64;
    if r.m2 == 0.0 {
        // One value (or all equal): the block moments are exact.
        assert_eq!(s["var"].as_f64(), Some(0.0), "{what}: var");
        return;
    }
    assert_close(
        &format!("{what}: var"),
        s["var"].as_f64().unwrap(),
        var,
        r.var_rel_tolerance() * var + f64::MIN_POSITIVE,
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
    let tol = r.var_rel_tolerance() * var + f64::MIN_POSITIVE;
    assert_close(&format!("{what}: var"), stats.var.unwrap(), var, tol);
}

/// This test process's scratch directory, `$TMPDIR/microbatch-tests-PID`: every file a test
/// writes goes below it. A test binary has no exit hook, so the first call removes the
/// directories of earlier test processes that are no longer running (on Linux, where
/// `/proc/PID` says so): repeated test runs leave at most one process's files behind.
pub fn scratch_root() -> &'static std::path::Path {
    static ROOT: OnceLock<std::path::PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        #[cfg(target_os = "linux")]
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("microbatch-tests-"))
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid != std::process::id()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = tmp.join(format!("microbatch-tests-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        root
    })
}

/// A scratch directory for one test, removed when dropped (also when the test fails).
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// `$TMPDIR/mb-NAME-PID`, empty.
    pub fn new(name: &str) -> Self {
        let dir = scratch_root().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A path inside it.
    pub fn join(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An engine over `reducer` with batches of `batch_size` and statistics with `ddof`.
pub fn engine_on(
    reducer: Box<dyn microbatch::BatchReducer + Send>,
    batch_size: usize,
    ddof: u32,
) -> microbatch::Engine {
    let mut e = microbatch::Engine::with_reducer(reducer);
    e.set_batch_size(batch_size).unwrap();
    e.set_stats_options(ddof, false);
    e
}

/// The `microbatch` binary under test.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_microbatch"))
}

/// Runs the binary with `args` (standard input closed).
pub fn run(args: &[&str]) -> std::process::Output {
    bin()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the binary runs")
}

/// Runs the binary with `args`, writing `input` to its standard input from another thread (so a
/// large input cannot deadlock against a full output pipe).
pub fn run_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Standard output as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON a successful run printed (fails the test, with stderr, if it did not succeed).
pub fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}, stderr: {}",
        o.status,
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// Writes `bytes` to `name` in this process's scratch directory for `group` (one per test file,
/// so files of the same name in different files' tests do not collide).
pub fn tmp_file(group: &str, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = scratch_root().join(group);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Little-endian bytes of f32 values (a raw `.f32` file).
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The backends the CLI tests run on: the CPU, and the GPU where there is an adapter.
pub fn backends() -> Vec<&'static str> {
    if gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
}
