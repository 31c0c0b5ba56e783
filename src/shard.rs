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
//!              "sum": 500.1, "sum_err": 1.2e-14, "m2": 83.2, "m2_err": -3.1e-15,
//!              "min": 0.001, "max": 0.999}}
//! ```
//!
//! `sum` and `m2` are double-doubles: the value is `sum + sum_err` (see `crate::numerics`).
//! Version 1 files (without the `_err` fields) are still read. The options are those the shard
//! was run with; `merge` applies its own `--ddof`/`--skip-nan` when given (they only matter when
//! the statistics are finished). A file whose numbers cannot come from any data (a negative
//! `m2`, a mean outside [min, max], a NaN sum, …) is refused, naming the file and the field.
//!
//! Numbers are written so that they read back bit for bit (shortest round-trip form); the
//! non-finite ones as the strings `"inf"`, `"-inf"`, `"NaN"`, and `min`/`max` as `null` when the
//! shard had no finite value.

use std::path::Path;

use serde_json::{Value, json};

use crate::report::number;
use crate::sketch::Sketch;
use crate::stats::{IntPart, Partial};
use crate::{Error, Result};

/// The `format` field of a partial file.
pub const PARTIAL_FORMAT: &str = "microbatch-partial";
/// The version of the partial file format this build writes and reads.
pub const PARTIAL_VERSION: u64 = 2;

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
    /// The quantile sketch of the shard's values, when it was run with quantiles (the file's
    /// optional `"sketch"` object: `mantissa_bits`, `zeros`, `positive` and `negative` bucket
    /// counts from an `offset`; see [`crate::sketch`]).
    pub sketch: Option<Sketch>,
}

impl PartialFile {
    /// The JSON object described in the module documentation.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "format": PARTIAL_FORMAT,
            "version": PARTIAL_VERSION,
            "microbatch": env!("CARGO_PKG_VERSION"),
            "options": {"ddof": self.ddof, "skip_nan": self.skip_nan},
            "inputs": self.inputs,
            "skipped_invalid": self.skipped_invalid,
            "partial": partial_to_json(&self.partial),
        });
        if let Some(s) = &self.sketch {
            v["sketch"] = serde_json::to_value(s).expect("a sketch is plain data");
        }
        v
    }

    /// Reads the partial file at `path` (what [`PartialFile::write`] wrote, or any version this
    /// microbatch reads).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::IncompatiblePartial {
            path: path.to_path_buf(),
            message: format!("not JSON: {e}"),
        })?;
        Self::from_json(&v, path)
    }

    /// Writes the partial file to `path`: to a temporary file beside it, then renamed into
    /// place, so a reader never sees half a file and a failed write leaves no file behind.
    /// A path that is not a regular file (`/dev/stdout`, a named pipe, a symbolic link) is
    /// written in place.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialize") + "\n";
        let io = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
            return std::fs::write(path, text).map_err(io);
        }
        let name = path.file_name().map_or_else(
            || std::ffi::OsString::from("partial"),
            std::ffi::OsStr::to_os_string,
        );
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(&name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io(e)
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
        let version = v.get("version").and_then(Value::as_u64);
        match version {
            Some(1 | PARTIAL_VERSION) => {}
            other => {
                return Err(bad(format!(
                    "partial file format version {}, but this microbatch ({}) reads versions 1 to {PARTIAL_VERSION}",
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
        let options = field(v, "options")?;
        let partial = partial_from_json(&field(v, "partial")?, version == Some(1)).map_err(bad)?;
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
        let sketch = match v.get("sketch") {
            None | Some(Value::Null) => None,
            Some(s) => {
                let s: Sketch = serde_json::from_value(s.clone())
                    .map_err(|e| bad(format!("field \"sketch\": {e}")))?;
                s.validate(partial.count)
                    .map_err(|m| bad(format!("field \"sketch\": {m}")))?;
                Some(s)
            }
        };
        Ok(Self {
            partial,
            sketch,
            ddof: u32::try_from(ddof).map_err(|_| bad(format!("ddof {ddof} is out of range")))?,
            skip_nan,
            inputs,
            skipped_invalid: v
                .get("skipped_invalid")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }

    /// Merges shards into one (in the order given). The options kept are the first shard's;
    /// [`PartialFile::common_options`] says whether all shards agree.
    pub fn merge<'a>(
        shards: impl IntoIterator<Item = (&'a Path, &'a PartialFile)>,
    ) -> Result<PartialFile> {
        let mut out: Option<PartialFile> = None;
        for (path, shard) in shards {
            match &mut out {
                None => out = Some(shard.clone()),
                Some(acc) => {
                    acc.partial.merge(&shard.partial);
                    acc.inputs.extend(shard.inputs.iter().cloned());
                    acc.skipped_invalid += shard.skipped_invalid;
                    // Quantiles survive a merge only if every shard has a sketch.
                    acc.sketch = match (acc.sketch.take(), &shard.sketch) {
                        (Some(mut a), Some(b)) => {
                            a.merge(b).map_err(|e| Error::IncompatiblePartial {
                                path: path.to_path_buf(),
                                message: e.to_string(),
                            })?;
                            Some(a)
                        }
                        _ => None,
                    };
                }
            }
        }
        out.ok_or_else(|| Error::InvalidConfig("no partial files to merge".to_string()))
    }

    /// The `(ddof, skip_nan)` all shards were run with, or an error naming two that differ.
    pub fn common_options<'a>(
        shards: impl IntoIterator<Item = (&'a Path, &'a PartialFile)>,
    ) -> Result<(u32, bool)> {
        let mut first: Option<(&Path, u32, bool)> = None;
        for (path, s) in shards {
            match first {
                None => first = Some((path, s.ddof, s.skip_nan)),
                Some((p0, d, k)) if (d, k) != (s.ddof, s.skip_nan) => {
                    return Err(Error::IncompatiblePartial {
                        path: path.to_path_buf(),
                        message: format!(
                            "run with ddof {} and skip_nan {}, but {} with ddof {d} and skip_nan {k}: \
                             say which to use with --ddof N and --skip-nan or --keep-nan",
                            s.ddof,
                            s.skip_nan,
                            p0.display(),
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(first.map_or((0, false), |(_, d, k)| (d, k)))
    }
}

/// A [`Partial`] as the `partial` object of a partial file (also its serde form): non-finite
/// floats as the strings `"NaN"`, `"inf"`, `"-inf"`; `min` and `max` `null` when there are no
/// finite values; the exact integer parts as decimal strings (they may pass what a JSON
/// reader's numbers hold).
pub(crate) fn partial_to_json(p: &Partial) -> Value {
    let extreme = |x: f64| if p.count > 0 { number(x) } else { Value::Null };
    json!({
        "count": p.count,
        "nan_count": p.nan_count,
        "pos_inf_count": p.pos_inf_count,
        "neg_inf_count": p.neg_inf_count,
        "sum": number(p.sum),
        "sum_err": number(p.sum_err),
        "m2": number(p.m2),
        "m2_err": number(p.m2_err),
        "min": extreme(p.min),
        "max": extreme(p.max),
        "int": p.int.map(|i| json!({
            "sum": i.sum.to_string(),
            "min": i.min.to_string(),
            "max": i.max.to_string(),
        })),
    })
}

/// Reads what [`partial_to_json`] writes (`v1`: a version-1 file, without the low parts) and
/// refuses a partial no data can produce; the error names the field.
pub(crate) fn partial_from_json(p: &Value, v1: bool) -> std::result::Result<Partial, String> {
    let field = |name: &str| -> std::result::Result<&Value, String> {
        p.get(name).ok_or_else(|| format!("missing field {name:?}"))
    };
    let uint = |name: &str| -> std::result::Result<u64, String> {
        field(name)?
            .as_u64()
            .ok_or_else(|| format!("field {name:?} is not a non-negative integer"))
    };
    let float = |name: &str, none: f64| -> std::result::Result<f64, String> {
        match field(name)? {
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| format!("field {name:?} is not a number")),
            Value::String(s) => match s.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                _ => Err(format!("field {name:?} is not a number: {s:?}")),
            },
            Value::Null => Ok(none),
            _ => Err(format!("field {name:?} is not a number")),
        }
    };
    let low_part = |name: &str| if v1 { Ok(0.0) } else { float(name, f64::NAN) };
    let partial = Partial {
        count: uint("count")?,
        nan_count: uint("nan_count")?,
        pos_inf_count: uint("pos_inf_count")?,
        neg_inf_count: uint("neg_inf_count")?,
        sum: float("sum", f64::NAN)?,
        sum_err: low_part("sum_err")?,
        m2: float("m2", f64::NAN)?,
        m2_err: low_part("m2_err")?,
        min: float("min", f64::INFINITY)?,
        max: float("max", f64::NEG_INFINITY)?,
        int: match p.get("int") {
            None | Some(Value::Null) => None,
            Some(i) => {
                let int = |name: &str| -> std::result::Result<i128, String> {
                    i.get(name)
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<i128>().ok())
                        .ok_or_else(|| {
                            format!("field \"int.{name}\" is not an integer in a string")
                        })
                };
                Some(IntPart {
                    sum: int("sum")?,
                    min: int("min")?,
                    max: int("max")?,
                })
            }
        },
    };
    check_possible(&partial)?;
    Ok(partial)
}

/// Refuses a partial no data can produce; the message names the field.
fn check_possible(p: &Partial) -> std::result::Result<(), String> {
    let finite_or = |name: &str, x: f64| {
        if x.is_finite() {
            Ok(())
        } else {
            Err(format!(
                "field {name:?} is {x}, which no finite values give"
            ))
        }
    };
    // A double-double's low part is at most half an ulp of its high part (a little slack).
    let low_ok = |name: &str, hi: f64, lo: f64| {
        finite_or(name, lo)?;
        if lo.abs() <= hi.abs() * f64::EPSILON {
            Ok(())
        } else {
            Err(format!(
                "field {name:?} ({lo}) is larger than a rounding error of its value ({hi})"
            ))
        }
    };
    if p.count == 0 {
        if p.sum != 0.0 || p.sum_err != 0.0 || p.m2 != 0.0 || p.m2_err != 0.0 {
            return Err("no finite values (\"count\": 0) but a non-zero \"sum\" or \"m2\"".into());
        }
        if p.min != f64::INFINITY || p.max != f64::NEG_INFINITY {
            return Err("no finite values (\"count\": 0) but a \"min\" or \"max\"".into());
        }
        return Ok(());
    }
    finite_or("min", p.min)?;
    finite_or("max", p.max)?;
    if p.min > p.max {
        return Err(format!(
            "field \"min\" ({}) is greater than \"max\" ({})",
            p.min, p.max
        ));
    }
    let n = p.count as f64;
    let reach = p.min.abs().max(p.max.abs());
    // The sum of finite values is only infinite when it overflows.
    if p.sum.is_nan() || (p.sum.is_infinite() && reach * n <= f64::MAX) {
        return Err(format!(
            "field \"sum\" is {}, which the non-finite counts do not explain (they are kept apart from the sum)",
            p.sum
        ));
    }
    low_ok("sum_err", p.sum, p.sum_err)?;
    if p.sum.is_finite() {
        let mean = p.finite_mean().unwrap_or(f64::NAN);
        let slack = 1e-9 * reach;
        if !(mean >= p.min - slack && mean <= p.max + slack) {
            return Err(format!(
                "field \"sum\" ({}) gives a mean {mean} outside [min, max] = [{}, {}]",
                p.sum, p.min, p.max
            ));
        }
    }
    if p.m2.is_nan() || p.m2 < 0.0 {
        return Err(format!(
            "field \"m2\" is {}: a sum of squares is never negative",
            p.m2
        ));
    }
    low_ok("m2_err", p.m2, p.m2_err)?;
    if let Some(i) = p.int {
        let n = i128::from(p.count);
        if p.count != p.total() {
            return Err("field \"int\" is for integer data, which has no NaN or infinities".into());
        }
        if i.min > i.max || i.min as f64 != p.min || i.max as f64 != p.max {
            return Err(format!(
                "field \"int\" has min {} and max {}, which do not match \"min\" and \"max\"",
                i.min, i.max
            ));
        }
        let (lo, hi) = (i.min.checked_mul(n), i.max.checked_mul(n));
        if lo.is_some_and(|lo| i.sum < lo) || hi.is_some_and(|hi| i.sum > hi) {
            return Err(format!(
                "field \"int.sum\" ({}) is outside what {} integers within [{}, {}] can add to",
                i.sum, p.count, i.min, i.max
            ));
        }
    }
    // Popoviciu: the variance is at most (max − min)²/4.
    let spread = p.max - p.min;
    let most = n / 4.0 * spread * spread;
    if p.m2.is_finite() && p.m2 > most * (1.0 + 1e-9) + f64::MIN_POSITIVE {
        return Err(format!(
            "field \"m2\" ({}) is larger than {} values within [{}, {}] can give ({most})",
            p.m2, p.count, p.min, p.max
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn partial_files_write_and_read_back_and_failed_writes_leave_nothing() {
        let dir = std::env::temp_dir().join(format!("mb-shard-rw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = PartialFile {
            sketch: None,
            partial: Partial::from_slice_f64(&[1.0, f32::NAN, -2.0]),
            ddof: 1,
            skip_nan: true,
            inputs: vec!["a.f32".into()],
            skipped_invalid: 3,
        };
        let path = dir.join("p.json");
        file.write(&path).unwrap();
        // Written again over the old one.
        file.write(&path).unwrap();
        let back = PartialFile::read(&path).unwrap();
        assert_eq!(format!("{back:?}"), format!("{file:?}"));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("p.json")],
            "no temporary file left"
        );
        let e = file.write(&dir.join("missing/p.json")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let e = PartialFile::read(&dir.join("nope.json")).unwrap_err();
        assert!(e.to_string().contains("nope.json"), "{e}");
        std::fs::write(dir.join("bad.json"), "{").unwrap();
        let e = PartialFile::read(&dir.join("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json") && e.contains("not JSON"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    fn shard(values: &[f32]) -> PartialFile {
        PartialFile {
            sketch: None,
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
        v["version"] = json!(3);
        let e = PartialFile::from_json(&v, Path::new("new.json")).unwrap_err();
        assert!(
            e.to_string().contains("new.json") && e.to_string().contains("version 3"),
            "{e}"
        );
        let e = PartialFile::from_json(&json!({"count": 3}), Path::new("x.json")).unwrap_err();
        assert!(e.to_string().contains("not a microbatch partial"), "{e}");
        let a = shard(&[1.0, 2.0]);
        let mut b = shard(&[3.0]);
        b.skip_nan = true;
        let e =
            PartialFile::common_options([(Path::new("a"), &a), (Path::new("b"), &b)]).unwrap_err();
        assert!(e.to_string().contains("skip_nan"), "{e}");
        let m = PartialFile::merge([(Path::new("a"), &a), (Path::new("a2"), &a)]).unwrap();
        assert_eq!(m.partial.count, 4);
        assert_eq!(m.skipped_invalid, 4);
    }

    #[test]
    fn refuses_impossible_partials_naming_the_field() {
        let good = shard(&[1.0, 2.0, 4.0]).to_json();
        let cases: [(&str, Value, &str); 7] = [
            ("m2", json!(-5.0), "m2"),
            ("sum", json!("NaN"), "sum"),
            ("sum", json!("inf"), "sum"),
            ("sum", json!(100.0), "outside [min, max]"),
            ("m2", json!(1e6), "m2"),
            ("min", json!(9.0), "greater than"),
            ("sum_err", json!(0.5), "sum_err"),
        ];
        for (field, value, says) in cases {
            let mut v = good.clone();
            v["partial"][field] = value;
            let e = PartialFile::from_json(&v, Path::new("bad.json")).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("bad.json") && msg.contains(says),
                "{field}: {msg}"
            );
        }
        let mut v = good.clone();
        v["partial"]["count"] = json!(-3);
        let e = PartialFile::from_json(&v, Path::new("bad.json")).unwrap_err();
        assert!(e.to_string().contains("count"), "{e}");
        // Version 1 files (no _err fields) still read.
        let mut v1 = good;
        v1["version"] = json!(1);
        v1["partial"].as_object_mut().unwrap().remove("sum_err");
        v1["partial"].as_object_mut().unwrap().remove("m2_err");
        let p = PartialFile::from_json(&v1, Path::new("v1.json")).unwrap();
        assert_eq!(p.partial.count, 3);
    }

    #[test]
    fn integer_partials_round_trip_and_merge_exactly() {
        let a: Vec<i64> = (0..5000).map(|i| i64::MAX - i).collect();
        let b: Vec<i64> = (0..3000).map(|i| i64::MIN + 7 * i).collect();
        let file = |p| PartialFile {
            sketch: None,
            partial: p,
            ddof: 0,
            skip_nan: false,
            inputs: vec!["x".into()],
            skipped_invalid: 0,
        };
        let (pa, pb) = (
            crate::backend::cpu::reduce_slice_int(&a, 0),
            crate::backend::cpu::reduce_slice_int(&b, 0),
        );
        let (fa, fb) = (file(pa), file(pb));
        let text = serde_json::to_string(&fa.to_json()).unwrap();
        let back =
            PartialFile::from_json(&serde_json::from_str(&text).unwrap(), Path::new("a")).unwrap();
        assert_eq!(back, fa);
        let m = PartialFile::merge([(Path::new("a"), &back), (Path::new("b"), &fb)]).unwrap();
        let want: i128 = a.iter().chain(&b).map(|&x| i128::from(x)).sum();
        let int = m.partial.int.unwrap();
        assert_eq!(int.sum, want);
        assert_eq!(
            (int.min, int.max),
            (i128::from(i64::MIN), i128::from(i64::MAX))
        );
        // A made-up integer sum is refused.
        let mut v = fa.to_json();
        v["partial"]["int"]["sum"] = json!("1");
        let e = PartialFile::from_json(&v, Path::new("bad.json")).unwrap_err();
        assert!(e.to_string().contains("int.sum"), "{e}");
    }
}
