//! The arithmetic both backends share: how a block of values becomes a [`Partial`], how partials
//! merge, and the error bounds we promise (README, "Numerics").
//!
//! # The scheme
//!
//! Each backend cuts its data into small blocks that sit in fast memory (4096 values in L1 on the
//! CPU, a thread's tile of vec4 loads in registers on the GPU) and reduces each block exactly
//! twice over:
//!
//! 1. a cheap f32 pass gives the block's *pivot* `p`, an approximation of its mean rounded to f32
//!    (any value near the mean will do: `p` is not a result, only a reference point);
//! 2. a second pass over the same values, in f64, accumulates `t = Σ(x − p)` and
//!    `q = Σ(x − p)²`. For f32 data `x − p` is exact in f64 (both are f32), so the only roundings
//!    are those of the two f64 sums.
//!
//! The block's sum is then `n·p + t` and its sum of squared deviations `M2 = q − t²/n` (the
//! corrected two-pass formula: exact in exact arithmetic for any `p`). Nothing depends on where
//! the data sit or on a sample of them: the errors are relative to the block's own spread, and no
//! step scales the data, so nothing overflows or underflows where the result is finite.
//!
//! Blocks merge into [`Partial`]s with Chan, Golub and LeVeque's formula, carried out in
//! double-double arithmetic (`two_sum`) on the host: the sum and `M2` are each kept as an
//! unevaluated pair `hi + lo`, and the difference of means `δ` is formed from the pairs, so that
//! merging millions of partials (tiny batches, many threads, many shards) adds only O(ε²) per
//! merge.
//!
//! The GPU cannot use such tricks (a driver may rewrite float expressions algebraically, and
//! TwoSum is the first thing such a rewrite destroys), so the shader works in a *pivot frame*:
//! a thread moves each tile's sums to its first tile's f32 pivot P (T = Σ(x − P),
//! Q = Σ(x − P)², exact shifts in exact arithmetic, no division), and threads merge by Chan's
//! formula with δ formed from the exact difference of two f32 pivots plus small terms. Each
//! workgroup's (n, P, T, M2) becomes a double-double on the host
//! (`to_partial_with_m2`).
//!
//! # Bounds (ε = 2⁻⁵³, m = values per f64 accumulator lane in a block)
//!
//! - sum: |error| ≤ 2·γₘ₊₁·Σ|x| + O(ε²)·Σ|x|, with γₖ = kε/(1 − kε). For the CPU's blocks
//!   m = 256 + 5 (2γ ≈ 5.8e-14). On the GPU, a tile's lanes add VEC_PER_THREAD values (≤ 16)
//!   and a thread's T adds at most k = 32 tile sums (the GPU backend picks enough workgroups:
//!   `MAX_THREAD_TILES`) around a pivot P, the mean of its first tile, so |P|·n ≤ k·Σ|x|: its
//!   error stays under k·(k + 1)·ε·Σ|x| ≈ 1.2e-13·Σ|x| in the worst case (random rounding
//!   gives far less), plus log₂(256) levels of the workgroup tree. Both are under the promised
//!   1e-12·Σ|x|.
//! - M2 (and so the variance): relative error ≤ 3γₘ₊₄·(1 + n·e²/M2) per block, where e is the
//!   pivot's distance from the block mean (an f32 rounding: e²/σ² ≲ 1e-11·(1 + μ²/σ²)), plus
//!   O(ε) per merge level. On the GPU a thread's Q = Σ(x − P)² over its k ≤ 32 tiles is at
//!   most (k + 1)·M2 (P is a tile mean), so its (k + VEC_PER_THREAD + 4) additions cost at
//!   most ≈ 2e-13 relative. Within 1e-12 relative while μ²/σ² ≤ 1e12; beyond, within
//!   1e-12·μ² absolute.
//! - count, NaN and infinity counts, min and max: exact.

use crate::stats::Partial;

/// `a + b` as an unevaluated pair `(s, e)` with `s = fl(a + b)` and `s + e = a + b` exactly
/// (Knuth's TwoSum: no condition on the magnitudes).
#[inline(always)]
pub(crate) fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// `(ah + al) + (bh + bl)` in double-double arithmetic, renormalised.
#[inline(always)]
pub(crate) fn dd_add(ah: f64, al: f64, bh: f64, bl: f64) -> (f64, f64) {
    let (s, e) = two_sum(ah, bh);
    if !s.is_finite() {
        // Past f64's range (an M2 or a sum that overflowed): the error terms are NaN
        // (inf − inf) and would spoil hi + lo; the high part is the answer.
        return (s, 0.0);
    }
    let e = e + (al + bl);
    let hi = s + e;
    if !hi.is_finite() {
        return (hi, 0.0);
    }
    (hi, e - (hi - s))
}

/// `(hi + lo) / n` as a double-double: the quotient and its remainder's correction.
#[inline(always)]
pub(crate) fn dd_div(hi: f64, lo: f64, n: f64) -> (f64, f64) {
    let q = hi / n;
    // The residual hi − q·n is exact with one FMA.
    let r = (-q).mul_add(n, hi) + lo;
    (q, r / n)
}

/// Order-preserving map from f32 bits to u32 (the shader's `order_key`): negative values flip
/// all bits, positive ones set the sign bit. -0 orders just below +0.
#[inline(always)]
pub(crate) fn order_key(bits: u32) -> u32 {
    let mask = (((bits as i32) >> 31) as u32) | 0x8000_0000;
    bits ^ mask
}

/// Inverse of [`order_key`].
#[inline]
pub(crate) fn from_order_key(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key ^ 0x8000_0000
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// A block's moments around its pivot, before they become a [`Partial`]: `n` finite values,
/// `t = Σ(x − pivot)`, `q = Σ(x − pivot)²`, and the counts and extremes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PivotMoments {
    /// Finite values.
    pub count: u64,
    /// NaN values.
    pub nan_count: u64,
    /// `+inf` values.
    pub pos_inf: u64,
    /// `-inf` values.
    pub neg_inf: u64,
    /// The reference point the sums are taken around.
    pub pivot: f64,
    /// Σ(x − pivot) over the finite values.
    pub t: f64,
    /// Σ(x − pivot)² over the finite values.
    pub q: f64,
    /// Smallest finite value (`+inf` when none).
    pub min: f64,
    /// Largest finite value (`-inf` when none).
    pub max: f64,
}

impl PivotMoments {
    /// No values: the start of a block's classified pass.
    pub const EMPTY: PivotMoments = PivotMoments {
        count: 0,
        nan_count: 0,
        pos_inf: 0,
        neg_inf: 0,
        pivot: 0.0,
        t: 0.0,
        q: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// The mergeable partial: sum = n·pivot + t (as a double-double; n·pivot is split exactly
    /// with an FMA), M2 = q − t²/n (the corrected two-pass formula).
    #[inline]
    pub(crate) fn to_partial(self) -> Partial {
        let m2 = if self.q == f64::INFINITY {
            // Σ(x − pivot)² past f64's range: so is M2, which is that sum less t²/n, a
            // rounding-sized part of it (the pivot is the block's mean up to rounding). Without
            // this, inf − inf would give NaN, and max(0) would turn it into 0.
            f64::INFINITY
        } else if self.count > 0 {
            (self.q - self.t * (self.t / self.count as f64)).max(0.0)
        } else {
            0.0
        };
        self.to_partial_with_m2(m2)
    }

    /// [`PivotMoments::to_partial`] with M2 already formed (the GPU forms it; `q` is ignored).
    #[inline]
    pub(crate) fn to_partial_with_m2(self, m2: f64) -> Partial {
        let mut p = Partial {
            count: self.count,
            nan_count: self.nan_count,
            pos_inf_count: self.pos_inf,
            neg_inf_count: self.neg_inf,
            ..Partial::EMPTY
        };
        if self.count > 0 {
            let n = self.count as f64;
            let np = n * self.pivot;
            let np_err = n.mul_add(self.pivot, -np);
            let (hi, lo) = dd_add(np, np_err, self.t, 0.0);
            p.sum = hi;
            p.sum_err = lo;
            p.m2 = m2;
            p.min = self.min;
            p.max = self.max;
        }
        p
    }
}

/// `x` as a double-double: the nearest f64 and the rest (exact while the rest fits 53 bits, so
/// for any sum of 64-bit integers of up to 2^106).
pub(crate) fn dd_from_i128(x: i128) -> (f64, f64) {
    let hi = x as f64;
    // hi is within half an ulp of x, so x − hi fits an i128 whatever x is.
    let rest = x.wrapping_sub(hi as i128);
    (hi, rest as f64)
}

/// Merges `b` into `a` (Chan, Golub and LeVeque), in double-double arithmetic: δ is the
/// difference of the two means formed from their double-double sums, so that it carries an
/// error relative to δ itself, not to the means' magnitude.
#[inline]
pub(crate) fn merge(a: &mut Partial, b: &Partial) {
    // The exact integer part survives only while both sides are integer data (or empty).
    a.int = match (a.int, b.int) {
        (Some(x), Some(y)) => Some(x.merge(y)),
        (Some(x), None) if b.total() == 0 => Some(x),
        (None, Some(y)) if a.total() == 0 => Some(y),
        _ => None,
    };
    if b.count > 0 {
        if a.count == 0 {
            a.sum = b.sum;
            a.sum_err = b.sum_err;
            a.m2 = b.m2;
            a.m2_err = b.m2_err;
            a.min = b.min;
            a.max = b.max;
        } else {
            let na = a.count as f64;
            let nb = b.count as f64;
            let (ma, ma_lo) = dd_div(a.sum, a.sum_err, na);
            let (mb, mb_lo) = dd_div(b.sum, b.sum_err, nb);
            let delta = (mb - ma) + (mb_lo - ma_lo);
            // na·nb/(na+nb) without overflow of the product for huge counts.
            let cross = delta * delta * (na / (na + nb) * nb);
            let (m2, m2_err) = dd_add(a.m2, a.m2_err, b.m2, b.m2_err);
            let (m2, m2_err) = dd_add(m2, m2_err, cross, 0.0);
            let (sum, sum_err) = dd_add(a.sum, a.sum_err, b.sum, b.sum_err);
            a.sum = sum;
            a.sum_err = sum_err;
            a.m2 = m2;
            a.m2_err = m2_err;
            a.min = a.min.min(b.min);
            a.max = a.max.max(b.max);
        }
        a.count += b.count;
    }
    a.nan_count += b.nan_count;
    a.pos_inf_count += b.pos_inf_count;
    a.neg_inf_count += b.neg_inf_count;
}

/// The exact reference for tests and tiny inputs: a two-pass over f64 values with compensated
/// sums, every value classified. `data` may hold NaN and infinities.
pub fn reference_partial(data: impl Iterator<Item = f64> + Clone) -> Partial {
    let mut pm = PivotMoments::EMPTY;
    let (mut s, mut s_lo) = (0.0f64, 0.0f64);
    for x in data.clone() {
        if x.is_nan() {
            pm.nan_count += 1;
        } else if x == f64::INFINITY {
            pm.pos_inf += 1;
        } else if x == f64::NEG_INFINITY {
            pm.neg_inf += 1;
        } else {
            pm.count += 1;
            (s, s_lo) = dd_add(s, s_lo, x, 0.0);
            pm.min = pm.min.min(x);
            pm.max = pm.max.max(x);
        }
    }
    if pm.count == 0 {
        return pm.to_partial();
    }
    let (mean, _) = dd_div(s, s_lo, pm.count as f64);
    pm.pivot = mean;
    let (mut t, mut t_lo, mut q, mut q_lo) = (0.0, 0.0, 0.0, 0.0);
    for x in data.filter(|x| x.is_finite()) {
        let d = x - mean;
        (t, t_lo) = dd_add(t, t_lo, d, 0.0);
        let d2 = d * d;
        (q, q_lo) = dd_add(q, q_lo, d2, d.mul_add(d, -d2));
    }
    pm.t = t + t_lo;
    pm.q = q + q_lo;
    let mut p = pm.to_partial();
    // The reference keeps the exact compensated sum rather than n·mean + t.
    p.sum = s;
    p.sum_err = s_lo;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sum_is_exact() {
        let (s, e) = two_sum(1e16, 1.0);
        assert_eq!((s, e), (1e16, 1.0));
        let (s, e) = two_sum(1.0, 1e-30);
        assert_eq!((s, e), (1.0, 1e-30));
    }

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
    fn merging_a_million_tiny_partials_keeps_the_variance() {
        // 1e6 + (i mod 7): mean²/var ≈ 2.5e11, where a plain f64 Chan merge of one-element
        // partials loses ~1e-6 of the variance.
        let xs: Vec<f64> = (0..1_000_000).map(|i| 1e6 + (i % 7) as f64).collect();
        let exact = reference_partial(xs.iter().copied());
        let mut acc = Partial::EMPTY;
        for &x in &xs {
            acc.merge(&reference_partial(std::iter::once(x)));
        }
        assert_eq!(acc.count, exact.count);
        let rel = |a: f64, b: f64| ((a - b) / b).abs();
        assert!(rel(acc.m2, exact.m2) < 1e-13, "{} vs {}", acc.m2, exact.m2);
        assert!(rel(acc.sum, exact.sum) < 1e-15);
    }
}
