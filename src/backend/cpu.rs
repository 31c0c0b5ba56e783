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

use super::{BackendInfo, BackendKind, BatchReducer, ComputeClock, StageTimes, Tagged};
use crate::Result;
use crate::numerics::{PivotMoments, order_key};
use crate::stats::{IntPart, Partial};

/// f32 lanes of the first pass (two AVX-512 registers, so that the adds of consecutive
/// iterations do not wait on each other); the second pass keeps as many f64 lanes.
pub(crate) const LANES: usize = 32;
/// Values per block: both passes run over it while it sits in L1. Each f64 lane of the second
/// pass sums `BLOCK / LANES` = 128 values, which bounds the rounding error (numerics.rs).
pub(crate) const BLOCK: usize = 8192;
/// Most elements one thread reduces as one task (1 MiB): big enough to amortise scheduling,
/// small enough to balance the threads.
pub(crate) const TASK: usize = 1 << 18;

const ABS_MASK: u32 = 0x7fff_ffff;
const INF_BITS: u32 = 0x7f80_0000;
const NEG_INF_BITS: u32 = 0xff80_0000;

/// The fast path for one whole block of finite values: `None` when the first pass's sum is not
/// finite (a NaN, an infinity, or f32 values so large that their sum overflows f32), and the
/// block must go through [`reduce_block_slow`].
///
/// `FMA`: whether q accumulates with a fused multiply-add (only where the target has one:
/// without it `mul_add` is a slow library call).
#[inline(always)]
fn reduce_block_fast<const FMA: bool>(
    block: &[f32; BLOCK],
    range: &mut LaneRange,
) -> Option<PivotMoments> {
    // Inlined with a constant length: the loops below see BLOCK and the remainder is empty.
    reduce_fast::<FMA>(block.as_slice(), range)
}

/// The fast path over any block of at most [`BLOCK`] values (a batch's last, short block too).
#[inline(always)]
fn reduce_fast<const FMA: bool>(block: &[f32], range: &mut LaneRange) -> Option<PivotMoments> {
    assert!(!block.is_empty() && block.len() <= BLOCK);
    let mut s = [0.0f32; LANES];
    let mut lo = range.lo;
    let mut hi = range.hi;
    let next = block.as_ptr().wrapping_add(block.len());
    let rest = block.chunks_exact(LANES).remainder();
    for (j, &x) in rest.iter().enumerate() {
        s[j] += x;
        lo[j] = if x < lo[j] { x } else { lo[j] };
        hi[j] = if x > hi[j] { x } else { hi[j] };
    }
    for (i, c) in block.chunks_exact(LANES).enumerate() {
        // One prefetch per iteration of either pass keeps a steady stream one block ahead: this
        // pass asks for the first half of the next block, the second pass for the rest.
        prefetch_l2(next.wrapping_add(i * 16));
        for j in 0..LANES {
            let x = c[j];
            s[j] += x;
            // Bare compare-and-select: one MINPS/MAXPS (f32::min would add NaN handling, and a
            // NaN sends the block to the slow path anyway).
            lo[j] = if x < lo[j] { x } else { lo[j] };
            hi[j] = if x > hi[j] { x } else { hi[j] };
        }
    }
    // In f64 the lane sums cannot overflow: a non-finite total means a non-finite lane.
    let mut wide = [0.0f64; LANES];
    for j in 0..LANES {
        wide[j] = f64::from(s[j]);
    }
    let total = pairwise(wide);
    if !total.is_finite() {
        return None;
    }
    // The pivot is rounded to f32 so that x − p is exact in f64.
    let pivot = f64::from((total / block.len() as f64) as f32);
    let mut t = [0.0f64; LANES];
    let mut q = [0.0f64; LANES];
    for (j, &x) in rest.iter().enumerate() {
        let d = f64::from(x) - pivot;
        t[j] += d;
        q[j] += d * d;
    }
    for (i, c) in block.chunks_exact(LANES).enumerate() {
        prefetch_l2(next.wrapping_add(BLOCK / 2 + i * 16));
        for j in 0..LANES {
            let d = f64::from(c[j]) - pivot;
            t[j] += d;
            q[j] = if FMA {
                d.mul_add(d, q[j])
            } else {
                q[j] + d * d
            };
        }
    }
    range.lo = lo;
    range.hi = hi;
    Some(PivotMoments {
        count: block.len() as u64,
        nan_count: 0,
        pos_inf: 0,
        neg_inf: 0,
        pivot,
        t: pairwise(t),
        q: pairwise(q),
        // The extremes stay in `range`'s lanes until the piece is done.
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    })
}

/// The fast path's running min/max, lane by lane, folded once per piece
/// ([`LaneRange::fold_into`]) rather than once per block.
struct LaneRange {
    lo: [f32; LANES],
    hi: [f32; LANES],
}

impl LaneRange {
    const EMPTY: Self = Self {
        lo: [f32::INFINITY; LANES],
        hi: [f32::NEG_INFINITY; LANES],
    };

    fn fold_into(&self, p: &mut Partial) {
        for j in 0..LANES {
            p.min = p.min.min(f64::from(self.lo[j]));
            p.max = p.max.max(f64::from(self.hi[j]));
        }
    }
}

/// Lanes of the slow path: enough to keep each f64 lane's run short (≤ 512 values).
const SLOW_LANES: usize = 8;

/// Reduces a block of at most [`BLOCK`] values with every value classified: NaN and ±inf counted
/// apart, the pivot from an f64 sum (no f32 overflow), min/max by order key (−0 below +0).
fn reduce_block_slow(block: &[f32]) -> PivotMoments {
    assert!(block.len() <= BLOCK);
    let mut pm = PivotMoments::EMPTY;
    let finite = |x: f32| x.to_bits() & ABS_MASK < INF_BITS;
    let mut s = [0.0f64; SLOW_LANES];
    let (mut kmin, mut kmax) = (u32::MAX, 0u32);
    for (i, &x) in block.iter().enumerate() {
        let bits = x.to_bits();
        if finite(x) {
            pm.count += 1;
            s[i % SLOW_LANES] += f64::from(x);
            let key = order_key(bits);
            kmin = kmin.min(key);
            kmax = kmax.max(key);
        } else if bits & ABS_MASK > INF_BITS {
            pm.nan_count += 1;
        } else if bits == INF_BITS {
            pm.pos_inf += 1;
        } else {
            debug_assert_eq!(bits, NEG_INF_BITS);
            pm.neg_inf += 1;
        }
    }
    if pm.count == 0 {
        return pm;
    }
    pm.min = f64::from(crate::numerics::from_order_key(kmin));
    pm.max = f64::from(crate::numerics::from_order_key(kmax));
    pm.pivot = f64::from((s.iter().sum::<f64>() / pm.count as f64) as f32);
    let mut t = [0.0f64; SLOW_LANES];
    let mut q = [0.0f64; SLOW_LANES];
    for (i, &x) in block.iter().enumerate() {
        if finite(x) {
            let d = f64::from(x) - pm.pivot;
            t[i % SLOW_LANES] += d;
            q[i % SLOW_LANES] += d * d;
        }
    }
    pm.t = t.iter().sum();
    pm.q = q.iter().sum();
    pm
}

/// Sums the lanes pairwise (halving), like the shader's tree.
#[inline(always)]
fn pairwise<T: Copy + std::ops::AddAssign, const N: usize>(mut v: [T; N]) -> T {
    let mut half = N / 2;
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
pub(crate) const PREFETCH_AHEAD: usize = 512;

/// Asks for the cache line holding `p` to be brought into L1. A hint: it never faults, even past
/// the end of an allocation, so `p` may point anywhere.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it has no architectural effect and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for the cache line holding `p` to be brought into L2 (a hint, like [`prefetch`]).
#[inline(always)]
fn prefetch_l2<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT1 only hints the cache; it has no architectural effect and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn reduce_serial_impl<const FMA: bool>(data: &[f32]) -> Partial {
    let mut acc = Partial::EMPTY;
    let mut range = LaneRange::EMPTY;
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
        let pm =
            reduce_block_fast::<FMA>(block, &mut range).unwrap_or_else(|| reduce_block_slow(block));
        acc.merge(&pm.to_partial());
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let pm = reduce_fast::<FMA>(rest, &mut range).unwrap_or_else(|| reduce_block_slow(rest));
        acc.merge(&pm.to_partial());
    }
    if acc.count > 0 {
        range.fold_into(&mut acc);
    }
    acc
}

/// Values per f64 block (32 KiB, in L1): both passes run over it there.
pub(crate) const BLOCK_F64: usize = 4096;
/// f64 lanes of both passes (two AVX-512 registers).
const LANES_F64: usize = 16;
/// 1/BLOCK_F64: each value enters the first pass's sum scaled by it (exact, a power of two), so
/// that the sum cannot overflow whatever the values' magnitude.
const INV_BLOCK_F64: f64 = 1.0 / BLOCK_F64 as f64;

/// The f64 fast path for one whole block: `None` when the first pass's sum is not finite (a NaN
/// or an infinity), and the block must go through [`reduce_block_slow_f64`]. The pivot is the
/// block's mean itself (an f64: x − p is not exact, but its rounding is relative to x − p).
#[inline(always)]
fn reduce_block_fast_f64<const FMA: bool>(
    block: &[f64; BLOCK_F64],
    range: &mut LaneRangeF64,
) -> Option<PivotMoments> {
    let mut s = [0.0f64; LANES_F64];
    let mut lo = range.lo;
    let mut hi = range.hi;
    let next = block.as_ptr().wrapping_add(BLOCK_F64);
    for (i, c) in block.chunks_exact(LANES_F64).enumerate() {
        // Two 64-byte lines per iteration: the first pass asks for the first half of the next
        // block, the second pass for the rest (as the f32 kernel does).
        prefetch_l2(next.wrapping_add(i * 8));
        for j in 0..LANES_F64 {
            let x = c[j];
            s[j] += x * INV_BLOCK_F64;
            lo[j] = if x < lo[j] { x } else { lo[j] };
            hi[j] = if x > hi[j] { x } else { hi[j] };
        }
    }
    let pivot = pairwise(s);
    if !pivot.is_finite() {
        return None;
    }
    let mut t = [0.0f64; LANES_F64];
    let mut q = [0.0f64; LANES_F64];
    for (i, c) in block.chunks_exact(LANES_F64).enumerate() {
        prefetch_l2(next.wrapping_add(BLOCK_F64 / 2 + i * 8));
        for j in 0..LANES_F64 {
            let d = c[j] - pivot;
            t[j] += d;
            q[j] = if FMA {
                d.mul_add(d, q[j])
            } else {
                q[j] + d * d
            };
        }
    }
    range.lo = lo;
    range.hi = hi;
    Some(PivotMoments {
        count: BLOCK_F64 as u64,
        nan_count: 0,
        pos_inf: 0,
        neg_inf: 0,
        pivot,
        t: pairwise(t),
        q: pairwise(q),
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    })
}

/// [`LaneRange`] for the f64 kernel.
struct LaneRangeF64 {
    lo: [f64; LANES_F64],
    hi: [f64; LANES_F64],
}

impl LaneRangeF64 {
    const EMPTY: Self = Self {
        lo: [f64::INFINITY; LANES_F64],
        hi: [f64::NEG_INFINITY; LANES_F64],
    };

    fn fold_into(&self, p: &mut Partial) {
        for j in 0..LANES_F64 {
            p.min = p.min.min(self.lo[j]);
            p.max = p.max.max(self.hi[j]);
        }
    }
}

/// Reduces a block of at most [`BLOCK_F64`] f64 values with every value classified.
fn reduce_block_slow_f64(block: &[f64]) -> PivotMoments {
    assert!(block.len() <= BLOCK_F64);
    let mut pm = PivotMoments::EMPTY;
    let mut s = [0.0f64; SLOW_LANES];
    for (i, &x) in block.iter().enumerate() {
        if x.is_finite() {
            pm.count += 1;
            s[i % SLOW_LANES] += x * INV_BLOCK_F64;
            pm.min = pm.min.min(x);
            pm.max = pm.max.max(x);
        } else if x.is_nan() {
            pm.nan_count += 1;
        } else if x > 0.0 {
            pm.pos_inf += 1;
        } else {
            pm.neg_inf += 1;
        }
    }
    if pm.count == 0 {
        return pm;
    }
    pm.pivot = s.iter().sum::<f64>() * (BLOCK_F64 as f64 / pm.count as f64);
    let mut t = [0.0f64; SLOW_LANES];
    let mut q = [0.0f64; SLOW_LANES];
    for (i, &x) in block.iter().enumerate() {
        if x.is_finite() {
            let d = x - pm.pivot;
            t[i % SLOW_LANES] += d;
            q[i % SLOW_LANES] += d * d;
        }
    }
    pm.t = t.iter().sum();
    pm.q = q.iter().sum();
    pm
}

#[inline(always)]
fn reduce_serial_f64_impl<const FMA: bool>(data: &[f64]) -> Partial {
    let mut acc = Partial::EMPTY;
    let mut range = LaneRangeF64::EMPTY;
    let mut blocks = data.chunks_exact(BLOCK_F64);
    for block in &mut blocks {
        let block: &[f64; BLOCK_F64] = block.try_into().expect("chunks_exact gives whole blocks");
        let pm = reduce_block_fast_f64::<FMA>(block, &mut range)
            .unwrap_or_else(|| reduce_block_slow_f64(block));
        acc.merge(&pm.to_partial());
    }
    if acc.count > 0 {
        range.fold_into(&mut acc);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        acc.merge(&reduce_block_slow_f64(rest).to_partial());
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn reduce_serial_f64_avx512(data: &[f64]) -> Partial {
    reduce_serial_f64_impl::<true>(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn reduce_serial_f64_avx2(data: &[f64]) -> Partial {
    reduce_serial_f64_impl::<true>(data)
}

/// [`reduce_serial_with`] for f64 values.
pub(crate) fn reduce_serial_f64_with(level: SimdLevel, data: &[f64]) -> Partial {
    ensure_supported(level);
    match level {
        // SAFETY: the processor has the features these functions are compiled for (checked above).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { reduce_serial_f64_avx512(data) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { reduce_serial_f64_avx2(data) },
        _ => reduce_serial_f64_impl::<false>(data),
    }
}

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

/// Values per integer block (32 KiB of i64, in L1).
pub(crate) const BLOCK_INT: usize = 4096;
const LANES_INT: usize = 16;

/// One block of integers (each stored as value − `offset`, see
/// [`crate::source::Element::Int`]): the exact sum (in 32-bit halves, so the adds vectorize and
/// cannot overflow), exact min and max, and the moments around the integer pivot floor(mean),
/// taken from exact i64 differences converted to f64 (a block whose range passes i64's takes
/// i128 differences).
fn reduce_block_int(block: &[i64], offset: i128) -> Partial {
    assert!(!block.is_empty() && block.len() <= BLOCK_INT);
    let mut lo_sum = [0u64; LANES_INT];
    let mut hi_sum = [0i64; LANES_INT];
    let mut lo = [i64::MAX; LANES_INT];
    let mut hi = [i64::MIN; LANES_INT];
    let mut chunks = block.chunks_exact(LANES_INT);
    let mut lane = |j: usize, x: i64| {
        lo_sum[j] += u64::from(x as u32);
        hi_sum[j] += x >> 32;
        lo[j] = lo[j].min(x);
        hi[j] = hi[j].max(x);
    };
    for c in &mut chunks {
        for (j, &x) in c.iter().enumerate() {
            lane(j, x);
        }
    }
    for (j, &x) in chunks.remainder().iter().enumerate() {
        lane(j, x);
    }
    let sum: i128 = lo_sum.iter().map(|&v| i128::from(v)).sum::<i128>()
        + (hi_sum.iter().map(|&v| i128::from(v)).sum::<i128>() << 32);
    let (min, max) = (
        lo.into_iter().min().unwrap_or(i64::MAX),
        hi.into_iter().max().unwrap_or(i64::MIN),
    );
    let n = block.len();
    let pivot = sum.div_euclid(n as i128) as i64;
    let mut t = [0.0f64; LANES_INT];
    let mut q = [0.0f64; LANES_INT];
    if i128::from(max) - i128::from(min) <= i128::from(i64::MAX) {
        // Every |x − pivot| ≤ max − min fits i64: the difference is exact.
        let mut chunks = block.chunks_exact(LANES_INT);
        for c in &mut chunks {
            for j in 0..LANES_INT {
                let d = c[j].wrapping_sub(pivot) as f64;
                t[j] += d;
                q[j] += d * d;
            }
        }
        for (j, &x) in chunks.remainder().iter().enumerate() {
            let d = x.wrapping_sub(pivot) as f64;
            t[j] += d;
            q[j] += d * d;
        }
    } else {
        for (i, &x) in block.iter().enumerate() {
            let d = (i128::from(x) - i128::from(pivot)) as f64;
            t[i % LANES_INT] += d;
            q[i % LANES_INT] += d * d;
        }
    }
    let (t, q) = (pairwise(t), pairwise(q));
    let nf = n as f64;
    let int = IntPart {
        sum: sum + offset * n as i128,
        min: i128::from(min) + offset,
        max: i128::from(max) + offset,
    };
    let (sum_hi, sum_lo) = crate::numerics::dd_from_i128(int.sum);
    Partial {
        count: n as u64,
        sum: sum_hi,
        sum_err: sum_lo,
        m2: (q - t * (t / nf)).max(0.0),
        min: int.min as f64,
        max: int.max as f64,
        int: Some(int),
        ..Partial::EMPTY
    }
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn reduce_serial_avx512(data: &[f32]) -> Partial {
    reduce_serial_impl::<true>(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn reduce_serial_avx2(data: &[f32]) -> Partial {
    reduce_serial_impl::<true>(data)
}

/// Reduces `data` on the calling thread with the kernel compiled for `level`, which must be one
/// [`SimdLevel::available`] lists.
pub(crate) fn reduce_serial_with(level: SimdLevel, data: &[f32]) -> Partial {
    ensure_supported(level);
    match level {
        // SAFETY: the processor has the features these functions are compiled for (checked above).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { reduce_serial_avx512(data) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { reduce_serial_avx2(data) },
        _ => reduce_serial_impl::<false>(data),
    }
}

/// A plain read of `data` on the calling thread: a sum in `LANES` f32 accumulators and nothing
/// else, with the prefetching and instruction set of the reduction kernel. `bench` times it over
/// all threads as the host's read ceiling, so the ceiling is the best read this code knows, not a
/// naive loop the kernel could beat.
pub(crate) fn read_sum_with(level: SimdLevel, data: &[f32]) -> f32 {
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
pub(crate) fn read_sum(data: &[f32]) -> f32 {
    read_sum_with(simd_level(), data)
}

#[inline(always)]
fn read_sum_impl(data: &[f32]) -> f32 {
    // Four AVX-512 registers' worth of accumulators, so the adds never wait on each other; one
    // prefetch per 64-byte line, as the reduction does.
    const W: usize = 64;
    let mut acc = [0.0f32; W];
    let mut chunks = data.chunks_exact(W);
    for c in &mut chunks {
        for r in 0..W / 16 {
            prefetch(c.as_ptr().wrapping_add(PREFETCH_AHEAD + r * 16));
        }
        for j in 0..W {
            acc[j] += c[j];
        }
    }
    pairwise(acc) + chunks.remainder().iter().sum::<f32>()
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

/// A plain read of `data` ([`read_sum`]) on all threads, cut and scheduled exactly like
/// [`reduce_slice`]: `bench` times it as the host's read ceiling, so that the two differ only in
/// what they compute per element.
pub(crate) fn read_slice(data: &[f32]) -> f32 {
    let piece = piece_len(data.len(), rayon::current_num_threads());
    let mut total = 0.0f32;
    for_each_piece(data, piece, read_sum, |s| total += s);
    total
}

/// Runs `each` over `data` cut into `piece`-sized pieces on all threads of the current rayon
/// pool and hands every piece's result to `done` in piece order.
///
/// Self-scheduling: the calling thread starts on the first piece at once, and the pool's
/// threads take pieces from the same counter as they wake up. Handing the whole slice to the
/// pool instead (par_chunks) leaves the caller idle and every thread waiting on the last to
/// wake, which on a small VM costs tens of microseconds per batch (BENCHMARKS.md).
fn for_each_piece<E: Sync, T: Send>(
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
