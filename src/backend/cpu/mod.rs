//! The CPU backend: the shared block scheme of [`crate::numerics`] on all cores.
//!
//! Each block of `BLOCK` values (16 KiB, in L1) is reduced twice: a first pass sums it in f32
//! lanes for a pivot and takes the float min/max; a second pass, over the same now-cached values,
//! accumulates t = Σ(x − p) and q = Σ(x − p)² in f64 lanes (`PivotMoments`).
//! A NaN, an infinity or an f32 overflow shows up as a non-finite first-pass sum; only then is the
//! block redone with every value classified. (One consequence: where a block's extreme is a
//! zero, the fast path may report +0 for -0 or the reverse; the values compare equal.) Blocks
//! merge into their piece's [`Partial`] in double-double arithmetic, and pieces merge in index
//! order, so the result never depends on which thread finished first.
//!
//! The kernel is compiled for AVX-512, AVX2 and the build's baseline and the best the processor
//! has is chosen at run time ([`SimdLevel`]); it prefetches `PREFETCH_AHEAD` elements ahead,
//! which a core needs to reach its share of DRAM bandwidth.

use std::time::Instant;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendInfo, BackendKind, BatchReducer, ComputeClock, Tagged, Timings};
use crate::Result;

use crate::sketch::Sketch;
use crate::stats::Partial;

/// Defines `fn $name(level: SimdLevel, args…) -> R`: `$body` (which uses the arguments by
/// name) compiled three times, for AVX-512, AVX2 (each with the listed target features, `$fast`
/// the body's flag for them) and the build's baseline, and run at `level`, which the processor
/// must have (checked).
macro_rules! simd_versions {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $t:ty),+) -> $r:ty;
        avx512: $avx512:literal, avx2: $avx2:literal;
        |$fast:ident| $body:expr
    ) => {
        $(#[$meta])*
        $vis fn $name(level: SimdLevel, $($arg: $t),+) -> $r {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = $avx512)]
            fn avx512($($arg: $t),+) -> $r {
                #[allow(unused)]
                const $fast: bool = true;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = $avx2)]
            fn avx2($($arg: $t),+) -> $r {
                #[allow(unused)]
                const $fast: bool = true;
                $body
            }
            fn baseline($($arg: $t),+) -> $r {
                #[allow(unused)]
                const $fast: bool = false;
                $body
            }
            $crate::backend::cpu::ensure_supported(level);
            match level {
                // SAFETY: the processor has the features these functions are compiled for
                // (checked above).
                #[cfg(target_arch = "x86_64")]
                SimdLevel::Avx512 => unsafe { avx512($($arg),+) },
                #[cfg(target_arch = "x86_64")]
                SimdLevel::Avx2 => unsafe { avx2($($arg),+) },
                _ => baseline($($arg),+),
            }
        }
    };
}

mod kernels;
// The host read ceiling is measured by `bench`, which needs the GPU backend.
#[cfg(feature = "gpu")]
mod read;

pub(crate) use kernels::*;
#[cfg(feature = "gpu")]
pub(crate) use read::read_slice;

/// Reduces f64 values to a [`Partial`] on all cores, in f64 throughout.
pub fn reduce_slice_f64(data: &[f64]) -> Partial {
    reduce_slice_f64_with(simd_level(), data)
}

/// [`reduce_slice_f64`] with the kernel compiled for `level`.
pub fn reduce_slice_f64_with(level: SimdLevel, data: &[f64]) -> Partial {
    // Pieces of the same bytes as the f32 path's, in whole f64 blocks.
    let piece =
        (piece_len(data.len() * 2, rayon::current_num_threads()) / 2).next_multiple_of(BLOCK_F64);
    let mut total = Partial::EMPTY;
    for_each_piece(
        data,
        piece,
        |piece| reduce_serial_f64_with(level, piece),
        |p| total.merge(&p),
    );
    total
}

/// Reduces integers (stored as value − `offset`) to a [`Partial`] on all cores: count, sum, min
/// and max exact ([`Partial::int`]), mean and variance from exact differences.
pub fn reduce_slice_int(data: &[i64], offset: i128) -> Partial {
    let piece =
        (piece_len(data.len() * 2, rayon::current_num_threads()) / 2).next_multiple_of(BLOCK_INT);
    let mut total = Partial::EMPTY;
    for_each_piece(
        data,
        piece,
        |piece| {
            let mut acc = Partial::EMPTY;
            for block in piece.chunks(BLOCK_INT) {
                acc.merge(&reduce_block_int(block, offset));
            }
            acc
        },
        |p| total.merge(&p),
    );
    total
}

/// The instruction sets the CPU kernel is compiled for; the best one the processor has is chosen
/// at run time, so a portable x86-64 build still runs AVX-512 or AVX2 code.
/// Ordered from the least to the most capable: `Baseline < Avx2 < Avx512`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Whatever the build targets (SSE2 on plain x86-64, NEON on aarch64).
    Baseline,
    /// x86-64 with AVX2 and FMA (8 lanes per register).
    Avx2,
    /// x86-64 with AVX-512F (16 f32 lanes per register) and FMA.
    Avx512,
}

impl SimdLevel {
    /// The best level this processor supports (detected once; cheap afterwards).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return SimdLevel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    }

    /// Every level this processor can run, best first (tests run each one).
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Baseline]
            .into_iter()
            .filter(|&l| l <= best)
            .collect()
    }

    /// A short name for reports: `avx512`, `avx2`, `baseline`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Baseline => "baseline",
        }
    }
}

/// Panics unless this processor runs `level` (calling the kernels compiled for a level it lacks
/// would be undefined behaviour).
pub(super) fn ensure_supported(level: SimdLevel) {
    assert!(
        level <= simd_level(),
        "{} is not supported by this processor",
        level.name()
    );
}

/// The detected level, cached.
pub(super) fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(SimdLevel::detect)
}

/// Reduces `data` to a [`Partial`] on all cores of the current rayon pool, with the best kernel
/// the processor runs.
pub fn reduce_slice(data: &[f32]) -> Partial {
    reduce_slice_with(simd_level(), data)
}

/// [`reduce_slice`] with the kernel compiled for `level` (one of [`SimdLevel::available`]).
///
/// The slice is cut into pieces of whole blocks, at most `TASK` elements and at least
/// `MIN_PIECE`, so that even a small batch keeps every thread busy; the pieces' partials merge
/// in index order (bit-identical results whatever the thread timing).
pub fn reduce_slice_with(level: SimdLevel, data: &[f32]) -> Partial {
    let piece = piece_len(data.len(), rayon::current_num_threads());
    let mut total = Partial::EMPTY;
    for_each_piece(
        data,
        piece,
        |piece| reduce_serial_with(level, piece),
        |p| total.merge(&p),
    );
    total
}

/// [`reduce_slice`] that also adds every value to `sketch` in the same pass (each block is
/// counted while it is in L1 after its moments: one read of memory for both), on all cores.
/// A slice shorter than 64 Ki values or a sketch finer than 8 mantissa bits (α < 0.2 %) is
/// sketched apart.
pub fn reduce_slice_sketched(data: &[f32], sketch: &mut Sketch) -> Partial {
    let m = sketch.mantissa_bits;
    if data.len() < crate::sketch::DENSE_MIN || m > crate::sketch::DENSE_MAX_BITS {
        sketch.add_f32_slice(data);
        return reduce_slice(data);
    }
    let level = simd_level();
    let threads = rayon::current_num_threads();
    // Each task's sketch costs a fold over the dense histogram (4 · 2^(9+m) counters, about
    // 60 µs at m = 6): tasks of up to 4 Mi values (about 1 ms of work), one per thread where
    // the slice is shorter. Within a task the moments are taken over `reduce_slice`'s own
    // pieces and merged in the same order: the partial is the one `reduce_slice` gives, bit
    // for bit.
    let small = piece_len(data.len(), threads);
    let per_task = (data.len().div_ceil(threads).min(1 << 22) / small).max(1);
    let mut total = Partial::EMPTY;
    for_each_piece(
        data,
        small * per_task,
        |task| {
            crate::sketch::with_f32_counts(m, |counts| {
                task.chunks(small)
                    .map(|piece| reduce_serial_sketched_with(level, piece, counts))
                    .collect::<Vec<_>>()
            })
        },
        |(parts, s)| {
            for p in &parts {
                total.merge(p);
            }
            sketch.absorb(&s);
        },
    );
    total
}

/// Runs `each` over `data` cut into `piece`-sized pieces on all threads of the current rayon
/// pool and hands every piece's result to `done` in piece order.
///
/// Self-scheduling: the calling thread starts on the first piece at once, and the pool's
/// threads take pieces from the same counter as they wake up. Handing the whole slice to the
/// pool instead (par_chunks) leaves the caller idle and every thread waiting on the last to
/// wake, which on a small VM costs tens of microseconds per batch (BENCHMARKS.md).
pub(super) fn for_each_piece<E: Sync, T: Send>(
    data: &[E],
    piece: usize,
    each: impl Fn(&[E]) -> T + Sync,
    mut done: impl FnMut(T),
) {
    if data.len() <= piece {
        done(each(data));
        return;
    }
    let n_pieces = data.len().div_ceil(piece);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(n_pieces));
    let work = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n_pieces {
                break;
            }
            let start = i * piece;
            mine.push((i, each(&data[start..(start + piece).min(data.len())])));
        }
        results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(mine);
    };
    let helpers = rayon::current_num_threads().min(n_pieces) - 1;
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_unstable_by_key(|&(i, _)| i);
    for (_, r) in results {
        done(r);
    }
}

/// Smallest piece worth a task of its own: a few microseconds of work, well above the cost of
/// handing it to another thread.
pub(crate) const MIN_PIECE: usize = 16 * BLOCK;

/// Piece length for `len` elements over `threads` threads: about four pieces per thread (so a
/// slow thread does not hold the others up), whole blocks, between [`MIN_PIECE`] and [`TASK`].
pub(super) fn piece_len(len: usize, threads: usize) -> usize {
    len.div_ceil(4 * threads.max(1))
        .next_multiple_of(BLOCK)
        .clamp(MIN_PIECE, TASK)
}

/// The CPU backend as a [`BatchReducer`]: every batch is reduced as it arrives.
#[derive(Debug)]
pub struct CpuReducer {
    info: BackendInfo,
    acc: Tagged,
    times: Timings,
}

impl CpuReducer {
    /// A reducer over the global rayon pool (all cores unless `RAYON_NUM_THREADS` says otherwise).
    pub fn new() -> Self {
        let threads = rayon::current_num_threads();
        Self {
            info: BackendInfo {
                kind: BackendKind::Cpu,
                adapter: format!("{} ({threads} threads)", cpu_name()),
                api: "native".to_string(),
                device_type: "Cpu".to_string(),
                workgroups: threads as u32,
            },
            acc: Tagged::default(),
            times: Timings {
                compute_clock: ComputeClock::Wall,
                ..Timings::default()
            },
        }
    }
}

impl Default for CpuReducer {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchReducer for CpuReducer {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn push_tagged(&mut self, tag: u64, batch: &[f32]) -> Result<()> {
        let start = Instant::now();
        let p = reduce_slice(batch);
        let mid = Instant::now();
        self.acc.merge(tag, &p);
        self.times.compute += mid - start;
        self.times.merge += mid.elapsed();
        Ok(())
    }

    fn push_sketched_tagged(
        &mut self,
        tag: u64,
        batch: &[f32],
        sketch: &mut Sketch,
    ) -> Result<bool> {
        let start = Instant::now();
        let p = reduce_slice_sketched(batch, sketch);
        let mid = Instant::now();
        self.acc.merge(tag, &p);
        self.times.compute += mid - start;
        self.times.merge += mid.elapsed();
        Ok(true)
    }

    fn push_int_tagged(&mut self, tag: u64, batch: &[i64], offset: i128) -> Result<()> {
        let start = Instant::now();
        let p = reduce_slice_int(batch, offset);
        let mid = Instant::now();
        self.acc.merge(tag, &p);
        self.times.compute += mid - start;
        self.times.merge += mid.elapsed();
        Ok(())
    }

    fn push_f64_tagged(&mut self, tag: u64, batch: &[f64]) -> Result<()> {
        let start = Instant::now();
        let p = reduce_slice_f64(batch);
        let mid = Instant::now();
        self.acc.merge(tag, &p);
        self.times.compute += mid - start;
        self.times.merge += mid.elapsed();
        Ok(())
    }

    fn finish_tagged(&mut self) -> Result<(Vec<(u64, Partial)>, Timings)> {
        let times = std::mem::replace(
            &mut self.times,
            Timings {
                compute_clock: ComputeClock::Wall,
                ..Timings::default()
            },
        );
        Ok((self.acc.take(), times))
    }
}

/// The CPU's model name from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused pass gives `reduce_slice`'s partial bit for bit and the sketch of adding every
    /// value one by one, on any number of threads, with zeros, subnormals and non-finite
    /// values among the data, for coarse, fine and too-fine-for-dense sketches.
    #[test]
    fn sketched_reduction_equals_the_separate_passes() {
        use rand::{RngExt, SeedableRng};
        let seed = rand::random::<u64>();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = 9_000_017;
        let data: Vec<f32> = (0..n)
            .map(|_| match rng.random_range(0..1000) {
                0 => 0.0,
                1 => -0.0,
                2 => f32::from_bits(
                    rng.random_range(1..0x0080_0000) | (rng.random::<u32>() & 1 << 31),
                ),
                3 if rng.random_range(0..100) == 0 => f32::NAN,
                4 if rng.random_range(0..100) == 0 => f32::NEG_INFINITY,
                _ => rng.random_range(-2.0f32..3.0) * 10f32.powi(rng.random_range(-30..30)),
            })
            .collect();
        let clean: Vec<f32> = data
            .iter()
            .map(|&x| if x.is_finite() { x } else { 1.5 })
            .collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for m in [6u8, 8, 10] {
                for (what, d) in [("mixed", &data[..]), ("finite", &clean[..])] {
                    for len in [
                        crate::sketch::DENSE_MIN - 1,
                        crate::sketch::DENSE_MIN + 12_345,
                        3_000_001,
                        n,
                    ] {
                        let d = &d[..len];
                        let mut fused = Sketch::with_mantissa_bits(m);
                        let (p, want) = pool
                            .install(|| (reduce_slice_sketched(d, &mut fused), reduce_slice(d)));
                        let at =
                            format!("seed {seed}, {what}, {threads} threads, m {m}, {len} values");
                        assert_eq!(format!("{p:?}"), format!("{want:?}"), "{at}");
                        let mut each = Sketch::with_mantissa_bits(m);
                        for &x in d {
                            each.add_f64(f64::from(x));
                        }
                        fused.trim();
                        each.trim();
                        assert_eq!(fused, each, "{at}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_and_slow_paths_agree_on_finite_blocks() {
        let block: Vec<f32> = (0..BLOCK)
            .map(|i| 1.0e6 + ((i * 7919) % 1013) as f32 * 0.25)
            .collect();
        let mut range = LaneRange::EMPTY;
        let fast = reduce_block_fast::<false>(block.as_slice().try_into().unwrap(), &mut range);
        let slow = reduce_block_slow(&block);
        let (mut a, b) = (fast.unwrap().to_partial(), slow.to_partial());
        range.fold_into(&mut a);
        assert_eq!((a.count, a.min, a.max), (b.count, b.min, b.max));
        assert!((a.finite_sum() - b.finite_sum()).abs() <= 1e-12 * b.finite_sum().abs());
        assert!((a.m2 - b.m2).abs() <= 1e-12 * b.m2);
    }

    #[test]
    fn f32_overflow_in_the_first_pass_takes_the_slow_path() {
        let block = vec![3.0e38f32; BLOCK];
        let mut range = LaneRange::EMPTY;
        let block_ref = block.as_slice().try_into().unwrap();
        assert!(reduce_block_fast::<false>(block_ref, &mut range).is_none());
        let p = reduce_block_slow(&block).to_partial();
        assert_eq!(p.finite_sum(), 3.0e38f32 as f64 * BLOCK as f64);
        assert_eq!(p.m2, 0.0);
    }
}
