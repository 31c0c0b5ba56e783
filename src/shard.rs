//! Partial results on disk: the scale-out path. Each shard's run writes its mergeable
//! [`Partial`] with `microbatch run … --partial shard.json`; `microbatch merge` (or
//! [`PartialFile::merge`] in a Rust host) combines any number of them into the statistics one run
//! over all the shards would give.
//!
//! The file is one JSON object:
//!
//! ```json
//! {"format": "microbatch-partial", "version": 1, "microbatch": "0.1.0",
//!  "options": {"ddof": 0, "skip_nan": false},
//!  "inputs": ["part-0001.npy"], "skipped_invalid": 0,
//!  "partial": {"count": 1000, "nan_count": 0, "pos_inf_count": 0, "neg_inf_count": 0,
//!              "sum": 500.1, "m2": 83.2, "min": 0.001, "max": 0.999}}
//! ```
//!
//! Numbers are written so that they read back bit for bit (shortest round-trip form); the
//! non-finite ones as the strings `"inf"`, `"-inf"`, `"NaN"`, and `min`/`max` as `null` when the
//! shard had no finite value.

use std::path::Path;

use serde_json::{Value, json};

use crate::report::number;
use crate::stats::Partial;
use crate::{Error, Result};

/// The `format` field of a partial file.
pub const PARTIAL_FORMAT: &str = "microbatch-partial";
/// The version of the partial file format this build writes and reads.
pub const PARTIAL_VERSION: u64 = 1;

/// A shard's result as stored in a partial file.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialFile {
    /// The mergeable state.
    pub partial: Partial,
    /// The variance's delta degrees of freedom the run was asked for.
    pub ddof: u32,
    /// Whether the run left NaNs out of the statistics.
    pub skip_nan: bool,
    /// What the shard reduced (paths as given).
    pub inputs: Vec<String>,
    /// Text fields skipped as invalid (`--skip-invalid`).
    pub skipped_invalid: u64,
}

impl PartialFile {
    /// The JSON object described in the module documentation.
    pub fn to_json(&self) -> Value {
        let p = &self.partial;
        let extreme = |x: f64| if p.count > 0 { number(x) } else { Value::Null };
        json!({
            "format": PARTIAL_FORMAT,
            "version": PARTIAL_VERSION,
            "microbatch": env!("CARGO_PKG_VERSION"),
            "options": {"ddof": self.ddof, "skip_nan": self.skip_nan},
            "inputs": self.inputs,
            "skipped_invalid": self.skipped_invalid,
            "partial": {
                "count": p.count,
                "nan_count": p.nan_count,
                "pos_inf_count": p.pos_inf_count,
                "neg_inf_count": p.neg_inf_count,
                "sum": number(p.sum),
                "m2": number(p.m2),
                "min": extreme(p.min),
                "max": extreme(p.max),
            },
        })
    }

    /// Reads a partial file's JSON; `path` names it in errors. Another format, another version
    /// or a missing or mistyped field is an error, never a silently wrong merge.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::IncompatiblePartial {
            path: path.to_path_buf(),
            message,
        };
        if v.get("format").and_then(Value::as_str) != Some(PARTIAL_FORMAT) {
            return Err(bad(format!(
                "not a microbatch partial file (no \"format\": \"{PARTIAL_FORMAT}\")"
            )));
        }
        match v.get("version").and_then(Value::as_u64) {
            Some(PARTIAL_VERSION) => {}
            other => {
                return Err(bad(format!(
                    "partial file format version {}, but this microbatch ({}) reads version {PARTIAL_VERSION}",
                    other.map_or("missing".to_string(), |n| n.to_string()),
                    env!("CARGO_PKG_VERSION"),
                )));
            }
        }
        let field = |obj: &Value, name: &str| -> Result<Value> {
            obj.get(name)
                .cloned()
                .ok_or_else(|| bad(format!("missing field {name:?}")))
        };
        let uint = |obj: &Value, name: &str| -> Result<u64> {
            field(obj, name)?
                .as_u64()
                .ok_or_else(|| bad(format!("field {name:?} is not a non-negative integer")))
        };
        let float = |obj: &Value, name: &str, none: f64| -> Result<f64> {
            match field(obj, name)? {
                Value::Number(n) => n
                    .as_f64()
                    .ok_or_else(|| bad(format!("field {name:?} is not a number"))),
                Value::String(s) => match s.as_str() {
                    "inf" => Ok(f64::INFINITY),
                    "-inf" => Ok(f64::NEG_INFINITY),
                    "NaN" => Ok(f64::NAN),
                    _ => Err(bad(format!("field {name:?} is not a number: {s:?}"))),
                },
                Value::Null => Ok(none),
                _ => Err(bad(format!("field {name:?} is not a number"))),
            }
        };
        let options = field(v, "options")?;
        let p = field(v, "partial")?;
        let partial = Partial {
            count: uint(&p, "count")?,
            nan_count: uint(&p, "nan_count")?,
            pos_inf_count: uint(&p, "pos_inf_count")?,
            neg_inf_count: uint(&p, "neg_inf_count")?,
            sum: float(&p, "sum", f64::NAN)?,
            m2: float(&p, "m2", f64::NAN)?,
            min: float(&p, "min", f64::INFINITY)?,
            max: float(&p, "max", f64::NEG_INFINITY)?,
        };
        if partial.count == 0 && (partial.sum != 0.0 || partial.m2 != 0.0) {
            return Err(bad("no finite values but a non-zero sum or m2".to_string()));
        }
        if partial.count > 0
            && !matches!(
                partial.min.partial_cmp(&partial.max),
                Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
            )
        {
            return Err(bad(format!(
                "min {} is not at most max {}",
                partial.min, partial.max
            )));
        }
        let ddof = uint(&options, "ddof")?;
        let skip_nan = field(&options, "skip_nan")?
            .as_bool()
            .ok_or_else(|| bad("field \"skip_nan\" is not true or false".to_string()))?;
        let inputs = match v.get("inputs") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("field \"inputs\" holds something other than strings".into()))?,
            None => Vec::new(),
            Some(_) => return Err(bad("field \"inputs\" is not a list".to_string())),
        };
        Ok(Self {
            partial,
            ddof: u32::try_from(ddof).map_err(|_| bad(format!("ddof {ddof} is out of range")))?,
            skip_nan,
            inputs,
            skipped_invalid: v
                .get("skipped_invalid")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }

    /// Merges shards into one, refusing shards run with different `ddof` or `skip_nan` (their
    /// statistics would not mean the same thing); each shard is named by its path in errors.
    pub fn merge<'a>(
        shards: impl IntoIterator<Item = (&'a Path, &'a PartialFile)>,
    ) -> Result<PartialFile> {
        let mut out: Option<(&Path, PartialFile)> = None;
        for (path, shard) in shards {
            match &mut out {
                None => out = Some((path, shard.clone())),
                Some((first, acc)) => {
                    if (acc.ddof, acc.skip_nan) != (shard.ddof, shard.skip_nan) {
                        return Err(Error::IncompatiblePartial {
                            path: path.to_path_buf(),
                            message: format!(
                                "run with ddof {} and skip_nan {}, but {} with ddof {} and skip_nan {}",
                                shard.ddof,
                                shard.skip_nan,
                                first.display(),
                                acc.ddof,
                                acc.skip_nan
                            ),
                        });
                    }
                    acc.partial.merge(&shard.partial);
                    acc.inputs.extend(shard.inputs.iter().cloned());
                    acc.skipped_invalid += shard.skipped_invalid;
                }
            }
        }
        out.map(|(_, p)| p)
            .ok_or_else(|| Error::InvalidConfig("no partial files to merge".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(values: &[f32]) -> PartialFile {
        PartialFile {
            partial: Partial::from_slice_f64(values),
            ddof: 1,
            skip_nan: false,
            inputs: vec!["x".into()],
            skipped_invalid: 2,
        }
    }

    #[test]
    fn round_trips_bit_for_bit() {
        for values in [
            &[0.1f32, -3.7, 1e30, f32::NAN, f32::INFINITY][..],
            &[][..],
            &[f32::NEG_INFINITY][..],
        ] {
            let s = shard(values);
            let text = serde_json::to_string(&s.to_json()).unwrap();
            let back =
                PartialFile::from_json(&serde_json::from_str(&text).unwrap(), Path::new("p"))
                    .unwrap();
            assert_eq!(back.partial.count, s.partial.count);
            for (a, b) in [
                (back.partial.sum, s.partial.sum),
                (back.partial.m2, s.partial.m2),
                (back.partial.min, s.partial.min),
                (back.partial.max, s.partial.max),
            ] {
                assert_eq!(a.to_bits(), b.to_bits(), "{text}");
            }
            assert_eq!(back, s);
        }
    }

    #[test]
    fn refuses_other_versions_and_mixed_options() {
        let mut v = shard(&[1.0]).to_json();
        v["version"] = json!(2);
        let e = PartialFile::from_json(&v, Path::new("old.json")).unwrap_err();
        assert!(
            e.to_string().contains("old.json") && e.to_string().contains("version 2"),
            "{e}"
        );
        let e = PartialFile::from_json(&json!({"count": 3}), Path::new("x.json")).unwrap_err();
        assert!(e.to_string().contains("not a microbatch partial"), "{e}");
        let a = shard(&[1.0, 2.0]);
        let mut b = shard(&[3.0]);
        b.skip_nan = true;
        let e = PartialFile::merge([(Path::new("a"), &a), (Path::new("b"), &b)]).unwrap_err();
        assert!(e.to_string().contains("skip_nan"), "{e}");
        let m = PartialFile::merge([(Path::new("a"), &a), (Path::new("a2"), &a)]).unwrap();
        assert_eq!(m.partial.count, 4);
        assert_eq!(m.skipped_invalid, 4);
    }
}
