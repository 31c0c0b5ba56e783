//! Mergeable partial results ([`Partial`]) and the final statistics ([`Stats`]).
//!
//! Every backend reduces a stretch of data to a [`Partial`]; partials merge in f64 with Chan's
//! formula, in any order and any grouping, and [`Partial::finish`] turns the merged partial into
//! [`Stats`] with numpy's rules for NaN and infinities.

use serde::{Deserialize, Serialize};

/// The mergeable state of a reduction over some stretch of the input.
///
/// Finite values feed `count`, `sum`, `m2`, `min` and `max`; NaN and the two infinities are only
/// counted, so the moments stay meaningful and IEEE's rules are applied once, in
/// [`Partial::finish`], exactly as numpy would apply them.
///
/// Serialized (serde) as the `partial` object of a partial file ([`crate::PartialFile`]), so it
/// round-trips through JSON whatever it holds (an empty or NaN-only input included), and a
/// partial no data can produce (a negative `m2`, `min` above `max`…) fails to deserialize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partial {
    /// Number of finite values.
    pub count: u64,
    /// Number of NaN values.
    pub nan_count: u64,
    /// Number of `+inf` values.
    pub pos_inf_count: u64,
    /// Number of `-inf` values.
    pub neg_inf_count: u64,
    /// Sum of the finite values (the leading part: the sum is `sum + sum_err`).
    pub sum: f64,
    /// The sum's low-order part (double-double arithmetic, `crate::numerics`).
    pub sum_err: f64,
    /// Sum of squared deviations of the finite values from their mean (leading part).
    pub m2: f64,
    /// M2's low-order part.
    pub m2_err: f64,
    /// Smallest finite value (`+inf` when there is none).
    pub min: f64,
    /// Largest finite value (`-inf` when there is none).
    pub max: f64,
    /// For integer inputs: the exact sum, min and max (`None` for floating-point data, or once
    /// merged with it).
    pub int: Option<IntPart>,
}

/// The exact integer part of a [`Partial`] over integer values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntPart {
    /// Exact sum (i128 holds the sum of 2^64 values of any 64-bit integer type).
    pub sum: i128,
    /// Smallest value.
    pub min: i128,
    /// Largest value.
    pub max: i128,
}

impl IntPart {
    /// Combines two integer parts.
    pub fn merge(self, other: IntPart) -> IntPart {
        IntPart {
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }
}

impl Serialize for Partial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::shard::partial_to_json(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Partial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        crate::shard::partial_from_json(&v, false).map_err(serde::de::Error::custom)
    }
}

impl Default for Partial {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Partial {
    /// The partial of no data: the identity of [`Partial::merge`].
    pub const EMPTY: Partial = Partial {
        count: 0,
        nan_count: 0,
        pos_inf_count: 0,
        neg_inf_count: 0,
        sum: 0.0,
        sum_err: 0.0,
        m2: 0.0,
        m2_err: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        int: None,
    };

    /// Total number of elements seen, NaN and infinities included.
    pub fn total(&self) -> u64 {
        self.count + self.nan_count + self.pos_inf_count + self.neg_inf_count
    }

    /// Merges `other` into `self` (Chan, Golub and LeVeque's pairwise update, in double-double
    /// arithmetic: `merge`).
    pub fn merge(&mut self, other: &Partial) {
        crate::numerics::merge(self, other);
    }

    /// Merges a sequence of partials.
    pub fn merge_all<'a>(parts: impl IntoIterator<Item = &'a Partial>) -> Partial {
        let mut acc = Partial::EMPTY;
        for p in parts {
            acc.merge(p);
        }
        acc
    }

    /// Reduces a slice of f32 exactly (a compensated two-pass in f64, one value at a time). Slow
    /// and simple: the reference the backends are tested against.
    pub fn from_slice_f64(data: &[f32]) -> Partial {
        crate::numerics::reference_partial(data.iter().map(|&x| f64::from(x)))
    }

    /// Whether the sum of the finite values was lost on the way: NaN (inf − inf, from running
    /// sums past f64's range) though only finite values went into it. A sum past the range at
    /// the end is ±inf, as numpy's, and not this.
    pub fn overflowed(&self) -> bool {
        self.count > 0 && self.sum.is_nan()
    }

    /// `Err(Error::Overflow)` naming `what` if [`Partial::overflowed`], else `Ok`.
    pub fn check_range(&self, what: &str) -> crate::Result<()> {
        if self.overflowed() {
            return Err(crate::Error::Overflow {
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// The sum of the finite values, rounded once from its double-double form.
    pub fn finite_sum(&self) -> f64 {
        self.sum + self.sum_err
    }

    /// The mean of the finite values (`None` when there are none), rounded once.
    pub fn finite_mean(&self) -> Option<f64> {
        (self.count > 0).then(|| {
            let (hi, lo) = crate::numerics::dd_div(self.sum, self.sum_err, self.count as f64);
            hi + lo
        })
    }

    /// Final statistics with numpy's semantics.
    ///
    /// Without `skip_nan`, any NaN makes sum, mean, min, max, var and std NaN (`np.sum`, `np.var`…);
    /// with it, NaNs are left out as `np.nansum`, `np.nanvar`… do. Infinities follow IEEE: the sum
    /// of `+inf` and `-inf` is NaN, and any infinity makes the variance NaN.
    pub fn finish(&self, ddof: u32, skip_nan: bool) -> Stats {
        let count = if skip_nan {
            self.total() - self.nan_count
        } else {
            self.total()
        };
        let mut stats = Stats {
            count,
            nan_count: self.nan_count,
            ddof,
            skip_nan,
            exact: self
                .int
                .filter(|_| self.count > 0 && self.count == self.total()),
            sum: None,
            mean: None,
            min: None,
            max: None,
            var: None,
            std: None,
        };
        if count == 0 {
            // numpy: sum of nothing is 0; the rest is undefined.
            stats.sum = Some(0.0);
            return stats;
        }
        if self.nan_count > 0 && !skip_nan {
            stats.sum = Some(f64::NAN);
            stats.mean = Some(f64::NAN);
            stats.min = Some(f64::NAN);
            stats.max = Some(f64::NAN);
            if count > u64::from(ddof) {
                stats.var = Some(f64::NAN);
                stats.std = Some(f64::NAN);
            }
            return stats;
        }
        let (pos, neg) = (self.pos_inf_count > 0, self.neg_inf_count > 0);
        let sum = match (pos, neg) {
            (true, true) => f64::NAN,
            (true, false) => f64::INFINITY,
            (false, true) => f64::NEG_INFINITY,
            (false, false) => self.finite_sum(),
        };
        stats.sum = Some(sum);
        stats.mean = Some(if pos || neg || self.count == 0 {
            sum / count as f64
        } else {
            self.finite_mean().unwrap_or(f64::NAN)
        });
        stats.min = Some(if neg {
            f64::NEG_INFINITY
        } else if self.count > 0 {
            self.min
        } else {
            f64::INFINITY
        });
        stats.max = Some(if pos {
            f64::INFINITY
        } else if self.count > 0 {
            self.max
        } else {
            f64::NEG_INFINITY
        });
        if count > u64::from(ddof) {
            let var = if pos || neg {
                f64::NAN
            } else {
                (self.m2 + self.m2_err) / (count - u64::from(ddof)) as f64
            };
            stats.var = Some(var);
            stats.std = Some(var.sqrt());
        }
        stats
    }
}

/// Final statistics of a reduction.
///
/// `None` marks a value that is undefined for this input: the mean of nothing, the variance of
/// one value with `ddof = 1`. `Some(NaN)` is a value the data made NaN, as numpy's would be (a
/// NaN in the input without `skip_nan`, `+inf` and `-inf` summed, an infinity in a variance).
/// numpy answers NaN for both; keeping them apart tells "no data" from "bad data".
///
/// Serialized (serde) with non-finite values as the strings `"NaN"`, `"inf"`, `"-inf"` and
/// undefined ones as `null`, so it round-trips through JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of values the statistics are over (NaNs excluded only with `skip_nan`).
    pub count: u64,
    /// Number of NaN values in the input, whether or not they were skipped.
    pub nan_count: u64,
    /// Delta degrees of freedom: the variance divides by `count - ddof`.
    pub ddof: u32,
    /// Whether NaNs were skipped (numpy's `nan*` functions).
    pub skip_nan: bool,
    /// Sum (0 for empty input, as numpy).
    #[serde(with = "floats")]
    pub sum: Option<f64>,
    /// Arithmetic mean: total sum over total count.
    #[serde(with = "floats")]
    pub mean: Option<f64>,
    /// Smallest value.
    #[serde(with = "floats")]
    pub min: Option<f64>,
    /// Largest value.
    #[serde(with = "floats")]
    pub max: Option<f64>,
    /// Variance with `ddof`.
    #[serde(with = "floats")]
    pub var: Option<f64>,
    /// Standard deviation, `sqrt(var)`.
    #[serde(with = "floats")]
    pub std: Option<f64>,
    /// Integer inputs: the exact sum, min and max (`sum`, `min`, `max` above are their nearest
    /// f64; reports print these instead).
    pub exact: Option<IntPart>,
}

/// Serde for `Option<f64>` as the JSON reports write it: `null` for `None`, a number, or the
/// strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no non-finite numbers).
mod floats {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match x {
            None => s.serialize_none(),
            Some(v) if v.is_nan() => s.serialize_str("NaN"),
            Some(v) if *v == f64::INFINITY => s.serialize_str("inf"),
            Some(v) if *v == f64::NEG_INFINITY => s.serialize_str("-inf"),
            Some(v) => s.serialize_f64(*v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        // Through serde_json's Value: an untagged enum would not see numbers under its
        // `arbitrary_precision` feature.
        use serde_json::Value;
        let bad = |what: &str| serde::de::Error::custom(format!("{what} is not a number"));
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_f64().map(Some).ok_or_else(|| bad(&n.to_string())),
            Value::String(t) => match t.as_str() {
                "NaN" => Ok(Some(f64::NAN)),
                "inf" => Ok(Some(f64::INFINITY)),
                "-inf" => Ok(Some(f64::NEG_INFINITY)),
                _ => Err(bad(&format!("{t:?}"))),
            },
            other => Err(bad(&other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_and_stats_round_trip_through_json_whatever_they_hold() {
        let cases: Vec<Partial> = vec![
            Partial::EMPTY,
            Partial::from_slice_f64(&[f32::NAN, f32::NAN]),
            Partial::from_slice_f64(&[f32::INFINITY, -1.5, f32::NEG_INFINITY, f32::NAN]),
            Partial::from_slice_f64(&[1e-30, 3.0e38, -2.5]),
            crate::backend::cpu::reduce_slice_int(&[i64::MIN, i64::MAX, 7], 0),
        ];
        for p in cases {
            let text = serde_json::to_string(&p).unwrap();
            let back: Partial = serde_json::from_str(&text).unwrap();
            // Bit for bit (PartialEq would fail on NaN fields).
            assert_eq!(format!("{back:?}"), format!("{p:?}"), "{text}");
            for (ddof, skip) in [(0, false), (1, true)] {
                let st = p.finish(ddof, skip);
                let text = serde_json::to_string(&st).unwrap();
                let back: Stats = serde_json::from_str(&text).unwrap();
                assert_eq!(format!("{back:?}"), format!("{st:?}"), "{text}");
            }
        }
        // Impossible partials do not deserialize.
        let mut v = serde_json::to_value(Partial::from_slice_f64(&[1.0, 2.0])).unwrap();
        v["m2"] = serde_json::json!(-1.0);
        let e = serde_json::from_value::<Partial>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m2"), "{e}");
    }

    #[test]
    fn merge_in_any_grouping_matches_one_pass() {
        let data: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.37 - 50.0)
            .collect();
        let whole = Partial::from_slice_f64(&data);
        for split in [1, 3, 500, 999] {
            let mut a = Partial::from_slice_f64(&data[..split]);
            a.merge(&Partial::from_slice_f64(&data[split..]));
            assert_eq!(a.count, whole.count);
            assert!((a.sum - whole.sum).abs() <= 1e-12 * whole.sum.abs().max(1.0));
            assert!((a.m2 - whole.m2).abs() <= 1e-12 * whole.m2);
            assert_eq!((a.min, a.max), (whole.min, whole.max));
        }
    }

    #[test]
    fn empty_merges_are_identity() {
        let p = Partial::from_slice_f64(&[1.0, 2.0, 4.0]);
        let mut q = Partial::EMPTY;
        q.merge(&p);
        q.merge(&Partial::EMPTY);
        assert_eq!(p, q);
    }

    #[test]
    fn numpy_rules_for_nan_and_inf() {
        let s = Partial::from_slice_f64(&[1.0, f32::NAN, 3.0]).finish(0, false);
        assert!(s.sum.unwrap().is_nan() && s.min.unwrap().is_nan() && s.var.unwrap().is_nan());
        assert_eq!(s.count, 3);
        assert_eq!(s.nan_count, 1);
        let s = Partial::from_slice_f64(&[1.0, f32::NAN, 3.0]).finish(0, true);
        assert_eq!(
            (s.count, s.sum, s.mean, s.var),
            (2, Some(4.0), Some(2.0), Some(1.0))
        );
        let s = Partial::from_slice_f64(&[1.0, f32::INFINITY]).finish(0, false);
        assert_eq!(
            (s.sum, s.max, s.min),
            (Some(f64::INFINITY), Some(f64::INFINITY), Some(1.0))
        );
        assert!(s.var.unwrap().is_nan());
        let s = Partial::from_slice_f64(&[f32::NEG_INFINITY, f32::INFINITY]).finish(0, false);
        assert!(s.sum.unwrap().is_nan());
        assert_eq!(
            (s.min, s.max),
            (Some(f64::NEG_INFINITY), Some(f64::INFINITY))
        );
    }

    #[test]
    fn undefined_values_are_none() {
        let s = Partial::EMPTY.finish(0, false);
        assert_eq!((s.count, s.sum, s.mean, s.var), (0, Some(0.0), None, None));
        let s = Partial::from_slice_f64(&[5.0]).finish(1, false);
        assert_eq!((s.mean, s.var, s.std), (Some(5.0), None, None));
        let s = Partial::from_slice_f64(&[f32::NAN, f32::NAN]).finish(0, true);
        assert_eq!((s.count, s.nan_count, s.mean), (0, 2, None));
    }
}
