//! The CPU backend's SIMD kernels: one block of f32, f64 or integers reduced in registers (see
//! the module above for the scheme), and the serial loops over blocks that each thread runs.

use super::SimdLevel;
use crate::numerics::{PivotMoments, order_key};
use crate::sketch::F32Counts;
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
pub(super) fn reduce_block_fast<const FMA: bool>(
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
            add_deviation::<FMA>(f64::from(c[j]) - pivot, &mut t[j], &mut q[j]);
        }
    }
    range.lo = lo;
    range.hi = hi;
    Some(finite_moments(block.len(), pivot, t, q))
}

/// One deviation from the pivot into a lane's Σd and Σd² (fused where `FMA`).
#[inline(always)]
fn add_deviation<const FMA: bool>(d: f64, t: &mut f64, q: &mut f64) {
    *t += d;
    *q = if FMA { d.mul_add(d, *q) } else { *q + d * d };
}

/// A fast-path block's moments: `count` finite values around `pivot`, their lanes' Σd and Σd²
/// summed pairwise. The extremes stay in the caller's `LaneRange` until the piece is done.
#[inline(always)]
fn finite_moments<const N: usize>(
    count: usize,
    pivot: f64,
    t: [f64; N],
    q: [f64; N],
) -> PivotMoments {
    PivotMoments {
        count: count as u64,
        nan_count: 0,
        pos_inf: 0,
        neg_inf: 0,
        pivot,
        t: pairwise(t),
        q: pairwise(q),
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    }
}

/// The fast path's running min/max, lane by lane, folded once per piece
/// ([`LaneRange::fold_into`]) rather than once per block.
pub(super) struct LaneRange {
    lo: [f32; LANES],
    hi: [f32; LANES],
}

impl LaneRange {
    pub(super) const EMPTY: Self = Self {
        lo: [f32::INFINITY; LANES],
        hi: [f32::NEG_INFINITY; LANES],
    };

    pub(super) fn fold_into(&self, p: &mut Partial) {
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
pub(super) fn reduce_block_slow(block: &[f32]) -> PivotMoments {
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
pub(super) fn pairwise<T: Copy + std::ops::AddAssign, const N: usize>(mut v: [T; N]) -> T {
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
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
pub(crate) const PREFETCH_AHEAD: usize = 512;

/// Asks for the cache line holding `p` to be brought into L1. A hint: it never faults, even past
/// the end of an allocation, so `p` may point anywhere.
#[inline(always)]
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
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
pub(crate) fn prefetch_l2<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT1 only hints the cache; it has no architectural effect and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Reduces `data` block by block, handing each block to `each_block` after its moments (while
/// the block is still in L1).
#[inline(always)]
fn reduce_serial_impl<const FMA: bool>(
    data: &[f32],
    each_block: &mut impl FnMut(&[f32]),
) -> Partial {
    let mut acc = Partial::EMPTY;
    let mut range = LaneRange::EMPTY;
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
        let pm =
            reduce_block_fast::<FMA>(block, &mut range).unwrap_or_else(|| reduce_block_slow(block));
        acc.merge(&pm.to_partial());
        each_block(block);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let pm = reduce_fast::<FMA>(rest, &mut range).unwrap_or_else(|| reduce_block_slow(rest));
        acc.merge(&pm.to_partial());
        each_block(rest);
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
            add_deviation::<FMA>(c[j] - pivot, &mut t[j], &mut q[j]);
        }
    }
    let pm = finite_moments(BLOCK_F64, pivot, t, q);
    if !pm.t.is_finite() {
        // Deviations past f64's range: the slow path takes them scaled.
        return None;
    }
    range.lo = lo;
    range.hi = hi;
    Some(pm)
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
    if !pm.t.is_finite() {
        // Values near ±f64::MAX on both sides of the pivot: a deviation, or a lane's sum of
        // them, passed f64's range (inf, or NaN from inf − inf) though Σ(x − pivot) itself is
        // small. Taken again scaled by 2^-14 (a block's ≤ 8192 deviations, each below 2·MAX,
        // then sum within range) and scaled back. Such a block has a deviation of at least
        // MAX/8192, so its Σ(x − pivot)² is past f64's range too: q is inf, as M2 is.
        let scale = 1.0 / DEVIATION_SCALE;
        let pivot = pm.pivot * scale;
        let mut t = [0.0f64; SLOW_LANES];
        let mut q = [0.0f64; SLOW_LANES];
        for (i, &x) in block.iter().enumerate() {
            if x.is_finite() {
                let d = x * scale - pivot;
                t[i % SLOW_LANES] += d;
                q[i % SLOW_LANES] += d * d;
            }
        }
        pm.t = t.iter().sum::<f64>() * DEVIATION_SCALE;
        pm.q = q.iter().sum::<f64>() * DEVIATION_SCALE * DEVIATION_SCALE;
    }
    pm
}

/// The scale of [`reduce_block_slow_f64`]'s deviations when they pass f64's range: 2^14, a
/// power of two past twice [`BLOCK_F64`].
const DEVIATION_SCALE: f64 = 16384.0;

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

simd_versions! {
    /// [`reduce_serial_with`] for f64 values.
    pub(crate) fn reduce_serial_f64_with(data: &[f64]) -> Partial;
    avx512: "avx512f,fma", avx2: "avx2,fma";
    |FMA| reduce_serial_f64_impl::<FMA>(data)
}

/// Values per integer block (32 KiB of i64, in L1).
pub(crate) const BLOCK_INT: usize = 4096;
const LANES_INT: usize = 16;

/// One block of integers (each stored as value − `offset`, see
/// [`crate::source::Element::Int`]): the exact sum (in 32-bit halves, so the adds vectorize and
/// cannot overflow), exact min and max, and the moments around the integer pivot floor(mean),
/// taken from exact i64 differences converted to f64 (a block whose range passes i64's takes
/// i128 differences).
pub(super) fn reduce_block_int(block: &[i64], offset: i128) -> Partial {
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

simd_versions! {
    /// Reduces `data` on the calling thread with the kernel compiled for `level`, which must be
    /// one [`SimdLevel::available`] lists.
    pub(crate) fn reduce_serial_with(data: &[f32]) -> Partial;
    avx512: "avx512f,fma", avx2: "avx2,fma";
    |FMA| reduce_serial_impl::<FMA>(data, &mut |_| {})
}

simd_versions! {
    /// [`reduce_serial_with`] that also counts every block into `counts` while it is in L1
    /// (quantiles at one read of memory).
    pub(crate) fn reduce_serial_sketched_with(data: &[f32], counts: &mut F32Counts) -> Partial;
    avx512: "avx512f,fma", avx2: "avx2,fma";
    |FMA| reduce_serial_impl::<FMA>(data, &mut |block| counts.add_block::<false>(block))
}
