//! The one-call entry points: [`stats`] and [`partial`] of a slice already in memory.

use crate::backend::cpu;
use crate::stats::{Partial, Stats};

/// An element type the one-call functions reduce, each at its own precision: `f32` and `f64`
/// in floating point (NaN and infinities counted as numpy does), integers exactly (the sum in
/// 128 bits; [`Stats::exact`]).
pub trait Value: Copy + Send + Sync + sealed::Sealed {
    /// Reduces `values` to a mergeable partial on all cores (the CPU backend's kernels).
    fn reduce(values: &[Self]) -> Partial;
}

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for f32 {}
impl Value for f32 {
    fn reduce(values: &[Self]) -> Partial {
        cpu::reduce_slice(values)
    }
}

impl sealed::Sealed for f64 {}
impl Value for f64 {
    fn reduce(values: &[Self]) -> Partial {
        cpu::reduce_slice_f64(values)
    }
}

impl sealed::Sealed for i64 {}
impl Value for i64 {
    fn reduce(values: &[Self]) -> Partial {
        cpu::reduce_slice_int(values, 0)
    }
}

/// Narrower integers (and u64) are widened to i64 a block at a time (u64 as value − 2^63, so
/// every u64 fits), then reduced exactly like i64.
macro_rules! widened {
    ($($t:ty => $offset:expr, $to_i64:expr;)*) => {$(
        impl sealed::Sealed for $t {}
        impl Value for $t {
            fn reduce(values: &[Self]) -> Partial {
                const BLOCK: usize = 1 << 16;
                let mut total = Partial::EMPTY;
                let mut wide = Vec::with_capacity(values.len().min(BLOCK));
                for chunk in values.chunks(BLOCK) {
                    wide.clear();
                    wide.extend(chunk.iter().map($to_i64));
                    total.merge(&cpu::reduce_slice_int(&wide, $offset));
                }
                total
            }
        }
    )*};
}

widened! {
    i8 => 0, |&x| i64::from(x);
    i16 => 0, |&x| i64::from(x);
    i32 => 0, |&x| i64::from(x);
    u8 => 0, |&x| i64::from(x);
    u16 => 0, |&x| i64::from(x);
    u32 => 0, |&x| i64::from(x);
    u64 => 1i128 << 63, |&x: &u64| (x ^ (1 << 63)) as i64;
}

/// Count, sum, mean, min, max, population variance and standard deviation of `values`, in one
/// pass on all cores, within the bounds of [`crate::numerics`] (integers exact). The simplest
/// call: no engine, no GPU start-up. NaN propagates as in numpy; for `ddof = 1` or numpy's
/// `nan*` behaviour use [`partial`]`(values).finish(ddof, skip_nan)`.
///
/// ```
/// let s = microbatch::stats(&[1.0f32, 2.0, 4.0]);
/// assert_eq!((s.count, s.mean, s.max), (3, Some(7.0 / 3.0), Some(4.0)));
/// let s = microbatch::stats(&[u64::MAX, 1]);
/// assert_eq!(s.exact.unwrap().sum, u64::MAX as i128 + 1);
/// ```
pub fn stats<T: Value>(values: &[T]) -> Stats {
    partial(values).finish(0, false)
}

/// The mergeable partial of `values` (see [`stats`]): merge it with others' with
/// [`Partial::merge`], finish it with [`Partial::finish`].
pub fn partial<T: Value>(values: &[T]) -> Partial {
    T::reduce(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_gives_the_exact_statistics_of_small_inputs() {
        let s = stats(&[1.5f32, -2.5, 4.0]);
        assert_eq!(
            (s.count, s.sum, s.min, s.max),
            (3, Some(3.0), Some(-2.5), Some(4.0))
        );
        let s = stats(&[0.1f64; 10]);
        assert_eq!(s.count, 10);
        assert!((s.mean.unwrap() - 0.1).abs() < 1e-16);
        let s = stats(&[i8::MIN, i8::MAX, 0]);
        assert_eq!(s.exact.unwrap().sum, -1);
        assert_eq!((s.min, s.max), (Some(-128.0), Some(127.0)));
        let big: Vec<u64> = vec![u64::MAX; 70_000];
        let s = stats(&big);
        assert_eq!(s.exact.unwrap().sum, u64::MAX as i128 * 70_000);
        assert_eq!(s.var, Some(0.0));
        let s = stats(&[u32::MAX, 0]);
        assert_eq!(s.mean, Some(u32::MAX as f64 / 2.0));
        let empty: [f32; 0] = [];
        assert_eq!(stats(&empty).mean, None);
        let p = partial(&[1.0f32, f32::NAN]);
        assert_eq!(p.finish(0, true).mean, Some(1.0));
        assert!(p.finish(0, false).mean.unwrap().is_nan());
    }
}
