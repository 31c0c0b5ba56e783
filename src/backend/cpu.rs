//! The CPU backend: the shader's reduction, lane for lane, on all cores.
//!
//! It mirrors `shaders/reduce.wgsl`: NaN and ±inf are classified from the bits, min/max use the
//! same order-preserving key, and the moments are shifted sums in f32 lanes. `LANES` independent
//! accumulators let the compiler vectorize; every `BLOCK` elements the lanes are widened into f64,
//! so the f32 error never grows past one block's worth (DESIGN.md: f32 lanes per block, blocks in
//! f64). Work is split over threads in pieces of up to `TASK` elements with rayon.
//!
//! Speed (BENCHMARKS.md, issue 4): a whole block first takes a fast path that only accumulates
//! s1, s2 and a float min/max; a NaN or an infinity shows up as a non-finite Σd², and only then
//! is the block redone with full classification. (One consequence: where a block's extreme is a
//! zero, the fast path may report +0 for -0 or the reverse; the values compare equal. The GPU
//! and the slow path order -0 below +0.) The kernel is compiled for AVX-512, AVX2 and the
//! build's baseline and the best the processor has is chosen at run time ([`SimdLevel`]), and it
//! prefetches [`PREFETCH_AHEAD`] elements ahead, which a core needs to reach its share of DRAM
//! bandwidth.

use std::time::Instant;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendInfo, BackendKind, BatchReducer, ComputeClock, StageTimes, Tagged};
use crate::Result;
use crate::stats::Partial;

/// Independent f32 accumulators per block: one AVX-512 register, two AVX2 registers.
pub const LANES: usize = 16;
/// Elements accumulated in f32 before folding into f64: each lane sums `BLOCK / LANES` = 64 values.
pub const BLOCK: usize = 1024;
/// Most elements one thread reduces as one task (1 MiB): big enough to amortise scheduling and
/// the shift's sampling, small enough to balance the threads.
pub const TASK: usize = 1 << 18;

const ABS_MASK: u32 = 0x7fff_ffff;
const INF_BITS: u32 = 0x7f80_0000;
const NEG_INF_BITS: u32 = 0xff80_0000;

/// Order-preserving map from f32 bits to u32 (same as `order_key` in the shader).
#[inline(always)]
pub fn order_key(bits: u32) -> u32 {
    let mask = (((bits as i32) >> 31) as u32) | 0x8000_0000;
    bits ^ mask
}

/// Inverse of [`order_key`].
#[inline]
pub fn from_order_key(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key ^ 0x8000_0000
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// The shift and scale the moments of a stretch of data are taken with: each finite x enters as
/// d = (x − k) · scale, computed as `fma(x, scale, −k·scale)`.
///
/// `k` keeps Σd² from cancelling catastrophically when the data sit far from zero; `scale`, a
/// power of two, brings the bulk of the data near 1 so that neither Σd² overflows f32 for large
/// magnitudes (raw f64 or 64-bit integer inputs reach 1e18 and beyond) nor d² underflows for tiny
/// ones. Scaling by a power of two is exact, so it changes no rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    /// K, near the bulk of the data.
    pub k: f32,
    /// A power of two between 2^-100 and 2^100.
    pub scale: f32,
}

impl Shift {
    /// No shift, no scaling.
    pub const NONE: Shift = Shift { k: 0.0, scale: 1.0 };

    /// k · scale (exact: a power-of-two scaling).
    #[inline(always)]
    pub fn k_scaled(self) -> f32 {
        self.k * self.scale
    }
}

/// The shift for shifted moments over `data`: K is the median of up to 31 evenly spaced finite
/// samples (near the bulk of the data whatever its offset, and, unlike the first value or a
/// sample mean, not dragged away by a few outliers); the scale is the power of two that brings
/// the samples' largest distance from K (or |K| if they are all equal) to [1, 2). Shared by both
/// backends.
pub fn choose_shift(data: &[f32]) -> Shift {
    const SAMPLES: usize = 31;
    let mut sample = [0.0f32; SAMPLES];
    let mut n = 0;
    if !data.is_empty() {
        let step = data.len().div_ceil(SAMPLES).max(1);
        for &x in data.iter().step_by(step) {
            if x.is_finite() && n < SAMPLES {
                sample[n] = x;
                n += 1;
            }
        }
    }
    if n == 0 {
        return Shift::NONE;
    }
    let sample = &mut sample[..n];
    sample.sort_unstable_by(f32::total_cmp);
    let k = sample[n / 2];
    let spread = sample
        .iter()
        .map(|&x| (f64::from(x) - f64::from(k)).abs())
        .fold(0.0f64, f64::max);
    let reach = if spread > 0.0 {
        spread
    } else {
        f64::from(k).abs()
    };
    let scale = if reach > 0.0 && reach.is_finite() {
        let e = reach.log2().floor().clamp(-100.0, 100.0) as i32;
        2f32.powi(-e)
    } else {
        1.0
    };
    Shift { k, scale }
}

/// What a reduction kernel produces before conversion to a [`Partial`]: exactly the fields of the
/// shader's `Partial`, with the sums already in f64.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShiftedMoments {
    pub count: u64,
    pub nan_count: u64,
    pub pos_inf: u64,
    pub neg_inf: u64,
    pub min_key: u32,
    pub max_key: u32,
    pub s1: f64,
    pub s2: f64,
}

impl ShiftedMoments {
    pub const EMPTY: Self = Self {
        count: 0,
        nan_count: 0,
        pos_inf: 0,
        neg_inf: 0,
        min_key: u32::MAX,
        max_key: 0,
        s1: 0.0,
        s2: 0.0,
    };

    /// Adds moments taken around the same shift.
    pub fn add(self, other: &Self) -> Self {
        Self {
            count: self.count + other.count,
            nan_count: self.nan_count + other.nan_count,
            pos_inf: self.pos_inf + other.pos_inf,
            neg_inf: self.neg_inf + other.neg_inf,
            min_key: self.min_key.min(other.min_key),
            max_key: self.max_key.max(other.max_key),
            s1: self.s1 + other.s1,
            s2: self.s2 + other.s2,
        }
    }

    /// Converts sums of d = (x − k)·scale into a mergeable partial.
    pub fn into_partial(self, shift: Shift) -> Partial {
        let mut p = Partial {
            count: self.count,
            nan_count: self.nan_count,
            pos_inf_count: self.pos_inf,
            neg_inf_count: self.neg_inf,
            ..Partial::EMPTY
        };
        if self.count > 0 {
            let n = self.count as f64;
            let inv = 1.0 / f64::from(shift.scale);
            p.sum = n * f64::from(shift.k) + self.s1 * inv;
            p.m2 = (self.s2 - self.s1 * self.s1 / n).max(0.0) * inv * inv;
            p.min = f64::from(from_order_key(self.min_key));
            p.max = f64::from(from_order_key(self.max_key));
        }
        p
    }
}

/// Reduces one block of at most [`BLOCK`] elements in f32 lanes, folding into `acc` in f64.
#[inline(always)]
fn reduce_block(block: &[f32], shift: Shift, acc: &mut ShiftedMoments) {
    debug_assert!(block.len() <= BLOCK);
    let mut s1 = [0.0f32; LANES];
    let mut s2 = [0.0f32; LANES];
    let mut count = [0u32; LANES];
    let mut nan = [0u32; LANES];
    let mut pos_inf = [0u32; LANES];
    let mut neg_inf = [0u32; LANES];
    let mut kmin = [u32::MAX; LANES];
    let mut kmax = [0u32; LANES];

    let ks = shift.k_scaled();
    let mut lane = |j: usize, x: f32| {
        let bits = x.to_bits();
        let abs_bits = bits & ABS_MASK;
        let finite = abs_bits < INF_BITS;
        let d = if finite { x * shift.scale - ks } else { 0.0 };
        s1[j] += d;
        s2[j] += d * d;
        count[j] += finite as u32;
        nan[j] += (abs_bits > INF_BITS) as u32;
        pos_inf[j] += (bits == INF_BITS) as u32;
        neg_inf[j] += (bits == NEG_INF_BITS) as u32;
        let key = order_key(bits);
        kmin[j] = kmin[j].min(if finite { key } else { u32::MAX });
        kmax[j] = kmax[j].max(if finite { key } else { 0 });
    };

    let mut chunks = block.chunks_exact(LANES);
    for c in &mut chunks {
        for (j, &x) in c.iter().enumerate() {
            lane(j, x);
        }
    }
    for (j, &x) in chunks.remainder().iter().enumerate() {
        lane(j, x);
    }

    // Fold the lanes pairwise, like the shader's tree, then into f64.
    acc.s1 += f64::from(pairwise(s1));
    acc.s2 += f64::from(pairwise(s2));
    acc.count += u64::from(count.iter().sum::<u32>());
    acc.nan_count += u64::from(nan.iter().sum::<u32>());
    acc.pos_inf += u64::from(pos_inf.iter().sum::<u32>());
    acc.neg_inf += u64::from(neg_inf.iter().sum::<u32>());
    acc.min_key = acc.min_key.min(kmin.into_iter().min().unwrap_or(u32::MAX));
    acc.max_key = acc.max_key.max(kmax.into_iter().max().unwrap_or(0));
}

/// Sums the lanes pairwise (halving), like the shader's tree.
#[inline(always)]
fn pairwise<T: Copy + std::ops::AddAssign>(mut v: [T; LANES]) -> T {
    let mut half = LANES / 2;
    while half > 0 {
        for j in 0..half {
            let x = v[j + half];
            v[j] += x;
        }
        half /= 2;
    }
    v[0]
}

/// How far ahead of the loads the kernels prefetch, in elements (2 KiB). The hardware prefetcher
/// alone leaves a core well short of its share of DRAM bandwidth on the 2-core Xeon we measure on
/// (78% of a plain read); prefetching one cache line per 16 elements this far ahead closes the gap
/// (BENCHMARKS.md, "CPU: software prefetch").
pub const PREFETCH_AHEAD: usize = 512;

/// Asks for the cache line holding `p` to be brought into L1. A hint: it never faults, even past
/// the end of an allocation, so `p` may point anywhere.
#[inline(always)]
pub fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it has no architectural effect and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The fast path's running state, kept in lanes so that folding a block in is a handful of vector
/// operations: f32 block sums widened into f64 lanes, and the key range per lane.
struct FiniteLanes {
    s1: [f64; LANES],
    s2: [f64; LANES],
    kmin: [u32; LANES],
    kmax: [u32; LANES],
    count: u64,
}

impl FiniteLanes {
    const EMPTY: Self = Self {
        s1: [0.0; LANES],
        s2: [0.0; LANES],
        kmin: [u32::MAX; LANES],
        kmax: [0; LANES],
        count: 0,
    };

    /// Folds the lanes into `acc` (pairwise over the f64 lanes).
    fn fold_into(self, acc: &mut ShiftedMoments) {
        acc.s1 += pairwise(self.s1);
        acc.s2 += pairwise(self.s2);
        acc.count += self.count;
        acc.min_key = acc
            .min_key
            .min(self.kmin.into_iter().min().unwrap_or(u32::MAX));
        acc.max_key = acc.max_key.max(self.kmax.into_iter().max().unwrap_or(0));
    }
}

/// The fast path for one full block: all sixteen lanes accumulate s1, s2 and a float min/max with
/// no classification at all (seven instructions per sixteen elements with AVX-512, against nine
/// for an order-key range, which measured 8–10 points of DRAM bandwidth on the 2-core Xeon;
/// BENCHMARKS.md). A NaN or an infinity in the block makes Σd² non-finite; then the block's
/// sums are discarded and it goes through [`reduce_block`] instead. Returns whether the block
/// was folded into `acc`.
///
/// `FMA`: whether `s2` accumulates with a fused multiply-add (only where the target has one:
/// without it `mul_add` is a slow library call).
#[inline(always)]
fn reduce_block_finite<const FMA: bool>(
    block: &[f32; BLOCK],
    shift: Shift,
    acc: &mut FiniteLanes,
) -> bool {
    let (scale, ks) = (shift.scale, shift.k_scaled());
    let mut s1 = [0.0f32; LANES];
    let mut s2 = [0.0f32; LANES];
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    for c in block.chunks_exact(LANES) {
        prefetch(c.as_ptr().wrapping_add(PREFETCH_AHEAD));
        for j in 0..LANES {
            let x = c[j];
            // (x − k)·scale with one rounding: x·scale and k·scale are exact.
            let d = if FMA {
                x.mul_add(scale, -ks)
            } else {
                x * scale - ks
            };
            s1[j] += d;
            s2[j] = if FMA {
                d.mul_add(d, s2[j])
            } else {
                s2[j] + d * d
            };
            // Bare compare-and-select: one MINPS/MAXPS (f32::min would add NaN handling, and
            // a NaN here sends the block to the slow path anyway).
            lo[j] = if x < lo[j] { x } else { lo[j] };
            hi[j] = if x > hi[j] { x } else { hi[j] };
        }
    }
    // A NaN or an infinity makes its lane's Σd² NaN or +inf (so does a finite |x − K| beyond
    // ~1.8e19, whose square overflows: the slow path then gives the same +inf).
    let non_finite = s2.iter().fold(false, |any, v| any | !v.is_finite());
    if non_finite {
        return false;
    }
    let mut kmin = [0u32; LANES];
    let mut kmax = [0u32; LANES];
    for j in 0..LANES {
        kmin[j] = order_key(lo[j].to_bits());
        kmax[j] = order_key(hi[j].to_bits());
    }
    for j in 0..LANES {
        acc.s1[j] += f64::from(s1[j]);
        acc.s2[j] += f64::from(s2[j]);
        acc.kmin[j] = acc.kmin[j].min(kmin[j]);
        acc.kmax[j] = acc.kmax[j].max(kmax[j]);
    }
    acc.count += BLOCK as u64;
    true
}

#[inline(always)]
fn reduce_serial_impl<const FMA: bool>(data: &[f32], shift: Shift) -> ShiftedMoments {
    let mut acc = ShiftedMoments::EMPTY;
    let mut lanes = FiniteLanes::EMPTY;
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
        if !reduce_block_finite::<FMA>(block, shift, &mut lanes) {
            reduce_block(block, shift, &mut acc);
        }
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        reduce_block(rest, shift, &mut acc);
    }
    lanes.fold_into(&mut acc);
    acc
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn reduce_serial_avx512(data: &[f32], shift: Shift) -> ShiftedMoments {
    reduce_serial_impl::<true>(data, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn reduce_serial_avx2(data: &[f32], shift: Shift) -> ShiftedMoments {
    reduce_serial_impl::<true>(data, shift)
}

/// Reduces `data` on the calling thread with one shift for the whole slice, with the kernel
/// compiled for `level`, which must be one [`SimdLevel::available`] lists.
pub(crate) fn reduce_serial_with(level: SimdLevel, data: &[f32], shift: Shift) -> ShiftedMoments {
    ensure_supported(level);
    match level {
        // SAFETY: the processor has the features these functions are compiled for (checked above).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { reduce_serial_avx512(data, shift) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { reduce_serial_avx2(data, shift) },
        _ => reduce_serial_impl::<false>(data, shift),
    }
}

/// A plain read of `data` on the calling thread: a sum in [`LANES`] f32 accumulators and nothing
/// else, with the prefetching and instruction set of the reduction kernel. `bench` times it over
/// all threads as the host's read ceiling, so the ceiling is the best read this code knows, not a
/// naive loop the kernel could beat.
pub fn read_sum_with(level: SimdLevel, data: &[f32]) -> f32 {
    ensure_supported(level);
    match level {
        // SAFETY: the processor has the features these functions are compiled for (checked above).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { read_sum_avx512(data) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { read_sum_avx2(data) },
        _ => read_sum_impl(data),
    }
}

/// [`read_sum_with`] at the best level the processor runs.
pub fn read_sum(data: &[f32]) -> f32 {
    read_sum_with(simd_level(), data)
}

#[inline(always)]
fn read_sum_impl(data: &[f32]) -> f32 {
    // Four registers' worth of accumulators, so the adds never wait on each other.
    const W: usize = 4 * LANES;
    let mut acc = [0.0f32; W];
    let mut chunks = data.chunks_exact(W);
    for c in &mut chunks {
        for r in 0..4 {
            prefetch(c.as_ptr().wrapping_add(PREFETCH_AHEAD + r * LANES));
        }
        for j in 0..W {
            acc[j] += c[j];
        }
    }
    let mut lanes = [0.0f32; LANES];
    for (j, a) in acc.into_iter().enumerate() {
        lanes[j % LANES] += a;
    }
    pairwise(lanes) + chunks.remainder().iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn read_sum_avx512(data: &[f32]) -> f32 {
    read_sum_impl(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn read_sum_avx2(data: &[f32]) -> f32 {
    read_sum_impl(data)
}

/// Panics unless this processor runs `level` (calling the kernels compiled for a level it lacks
/// would be undefined behaviour).
fn ensure_supported(level: SimdLevel) {
    assert!(
        level <= simd_level(),
        "{} is not supported by this processor",
        level.name()
    );
}

/// The detected level, cached.
fn simd_level() -> SimdLevel {
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
/// The slice is cut into pieces of whole blocks, at most [`TASK`] elements and at least
/// [`MIN_PIECE`], so that even a small batch keeps every thread busy. Each piece gets its own
/// shift (its sample median), which keeps the shifted moments accurate even when the data drifts
/// across a batch.
pub fn reduce_slice_with(level: SimdLevel, data: &[f32]) -> Partial {
    let piece = piece_len(data.len(), rayon::current_num_threads());
    let mut total = Partial::EMPTY;
    for_each_piece(
        data,
        piece,
        || Partial::EMPTY,
        |acc, piece| {
            let shift = choose_shift(piece);
            acc.merge(&reduce_serial_with(level, piece, shift).into_partial(shift));
        },
        |p| total.merge(&p),
    );
    total
}

/// A plain read of `data` ([`read_sum`]) on all threads, cut and scheduled exactly like
/// [`reduce_slice`]: `bench` times it as the host's read ceiling, so that the two differ only in
/// what they compute per element.
pub fn read_slice(data: &[f32]) -> f32 {
    let piece = piece_len(data.len(), rayon::current_num_threads());
    let mut total = 0.0f32;
    for_each_piece(
        data,
        piece,
        || 0.0f32,
        |acc, piece| *acc += read_sum(piece),
        |s| total += s,
    );
    total
}

/// Runs `each` over `data` cut into `piece`-sized pieces on all threads of the current rayon
/// pool, each thread folding into its own state from `init`; `done` receives every thread's
/// state (in no fixed order).
///
/// Self-scheduling: the calling thread starts on the first piece at once, and the pool's
/// threads take pieces from the same counter as they wake up. Handing the whole slice to the
/// pool instead (par_chunks) leaves the caller idle and every thread waiting on the last to
/// wake, which on a small VM costs tens of microseconds per batch (BENCHMARKS.md).
fn for_each_piece<T: Send>(
    data: &[f32],
    piece: usize,
    init: impl Fn() -> T + Sync,
    each: impl Fn(&mut T, &[f32]) + Sync,
    mut done: impl FnMut(T) + Send,
) {
    if data.len() <= piece {
        let mut acc = init();
        each(&mut acc, data);
        done(acc);
        return;
    }
    let n_pieces = data.len().div_ceil(piece);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let work = || {
        let mut acc = init();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n_pieces {
                break;
            }
            let start = i * piece;
            each(&mut acc, &data[start..(start + piece).min(data.len())]);
        }
        results.lock().unwrap_or_else(|e| e.into_inner()).push(acc);
    };
    let helpers = rayon::current_num_threads().min(n_pieces) - 1;
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
    for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        done(r);
    }
}

/// Smallest piece worth a task of its own: a few microseconds of work, well above the cost of
/// handing it to another thread.
pub const MIN_PIECE: usize = 16 * BLOCK;

/// Piece length for `len` elements over `threads` threads: about four pieces per thread (so a
/// slow thread does not hold the others up), whole blocks, between [`MIN_PIECE`] and [`TASK`].
fn piece_len(len: usize, threads: usize) -> usize {
    len.div_ceil(4 * threads.max(1))
        .next_multiple_of(BLOCK)
        .clamp(MIN_PIECE, TASK)
}

/// The CPU backend as a [`BatchReducer`]: every batch is reduced as it arrives.
#[derive(Debug)]
pub struct CpuReducer {
    info: BackendInfo,
    acc: Tagged,
    times: StageTimes,
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
            times: StageTimes {
                compute_clock: ComputeClock::Wall,
                ..StageTimes::default()
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

    fn finish_tagged(&mut self) -> Result<(Vec<(u64, Partial)>, StageTimes)> {
        let times = std::mem::replace(
            &mut self.times,
            StageTimes {
                compute_clock: ComputeClock::Wall,
                ..StageTimes::default()
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

    #[test]
    fn order_key_preserves_order_and_round_trips() {
        let xs = [
            f32::NEG_INFINITY,
            -3.0e38,
            -1.0,
            -1.0e-40,
            -0.0,
            0.0,
            1.0e-40,
            1.0,
            3.0e38,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(
                order_key(w[0].to_bits()) < order_key(w[1].to_bits()),
                "{w:?}"
            );
        }
        for x in xs {
            assert_eq!(
                from_order_key(order_key(x.to_bits())).to_bits(),
                x.to_bits()
            );
        }
    }

    #[test]
    fn shift_ignores_outliers_and_non_finite() {
        let mut data = vec![1.0e6f32; 1000];
        data[0] = -1.0e30;
        data[500] = f32::NAN;
        assert_eq!(choose_shift(&data).k, 1.0e6);
        assert_eq!(choose_shift(&[f32::NAN, f32::INFINITY]), Shift::NONE);
        assert_eq!(choose_shift(&[]), Shift::NONE);
        // The scale brings the samples' spread to [1, 2): 1e6 ± 3 → 2^-1 (spread 3).
        let spread: Vec<f32> = (0..100).map(|i| 1.0e6 + (i % 7) as f32 - 3.0).collect();
        assert_eq!(choose_shift(&spread).scale, 0.5);
        let huge: Vec<f32> = (0..100).map(|i| i as f32 * 1e20).collect();
        let s = choose_shift(&huge);
        assert!((0.5..4.0).contains(&(5e21 * s.scale)), "{s:?}");
    }
}
