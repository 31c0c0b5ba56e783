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

use crate::ColumnRef;
use crate::report::{ColumnStats, ColumnsReport, SeriesIndex, finish_series, number};
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
        let mut v = Header::to_json(
            PARTIAL_VERSION,
            self.ddof,
            self.skip_nan,
            &self.inputs,
            self.skipped_invalid,
        );
        v["partial"] = partial_to_json(&self.partial);
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
        write_json(path, &self.to_json())
    }

    /// Reads a partial file's JSON; `path` names it in errors. Another format, another version
    /// or a missing or mistyped field is an error, never a silently wrong merge.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::IncompatiblePartial {
            path: path.to_path_buf(),
            message,
        };
        let h = Header::read(v, path)?;
        if h.version == SERIES_VERSION {
            return Err(bad(format!(
                "it holds {} series (a run of several columns, groups or an axis), not one: `microbatch merge` reads it",
                v.get("series")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            )));
        }
        let partial = partial_from_json(
            v.get("partial")
                .ok_or_else(|| bad("missing field \"partial\"".to_string()))?,
            h.version == 1,
        )
        .map_err(bad)?;
        let sketch = sketch_from_json(v.get("sketch"), &partial).map_err(bad)?;
        Ok(Self {
            partial,
            sketch,
            ddof: h.ddof,
            skip_nan: h.skip_nan,
            inputs: h.inputs,
            skipped_invalid: h.skipped_invalid,
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
        common_options(shards.into_iter().map(|(p, s)| (p, s.ddof, s.skip_nan)))
    }
}

/// The `(ddof, skip_nan)` of every `(path, ddof, skip_nan)`, or an error naming two that differ.
fn common_options<'a>(shards: impl Iterator<Item = (&'a Path, u32, bool)>) -> Result<(u32, bool)> {
    let mut first: Option<(&Path, u32, bool)> = None;
    for (path, ddof, skip_nan) in shards {
        match first {
            None => first = Some((path, ddof, skip_nan)),
            Some((p0, d, k)) if (d, k) != (ddof, skip_nan) => {
                return Err(Error::IncompatiblePartial {
                    path: path.to_path_buf(),
                    message: format!(
                        "run with ddof {ddof} and skip_nan {skip_nan}, but {} with ddof {d} and skip_nan {k}: \
                         say which to use with --ddof N and --skip-nan or --keep-nan",
                        p0.display(),
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or((0, false), |(_, d, k)| (d, k)))
}

/// What every partial file has besides its partials.
struct Header {
    version: u64,
    ddof: u32,
    skip_nan: bool,
    inputs: Vec<String>,
    skipped_invalid: u64,
}

impl Header {
    /// Reads the fields every version has; another format, another version or a missing or
    /// mistyped field is an error naming `path`.
    fn read(v: &Value, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::IncompatiblePartial {
            path: path.to_path_buf(),
            message,
        };
        if v.get("format").and_then(Value::as_str) != Some(PARTIAL_FORMAT) {
            return Err(bad(format!(
                "not a microbatch partial file (no \"format\": \"{PARTIAL_FORMAT}\")"
            )));
        }
        let version = match v.get("version").and_then(Value::as_u64) {
            Some(n @ (1 | PARTIAL_VERSION | SERIES_VERSION)) => n,
            other => {
                return Err(bad(format!(
                    "partial file format version {}, but this microbatch ({}) reads versions 1 to {SERIES_VERSION}",
                    other.map_or("missing".to_string(), |n| n.to_string()),
                    env!("CARGO_PKG_VERSION"),
                )));
            }
        };
        let options = v
            .get("options")
            .ok_or_else(|| bad("missing field \"options\"".to_string()))?;
        let ddof = options
            .get("ddof")
            .ok_or_else(|| bad("missing field \"ddof\"".to_string()))?
            .as_u64()
            .ok_or_else(|| bad("field \"ddof\" is not a non-negative integer".to_string()))?;
        let skip_nan = options
            .get("skip_nan")
            .ok_or_else(|| bad("missing field \"skip_nan\"".to_string()))?
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
            version,
            ddof: u32::try_from(ddof).map_err(|_| bad(format!("ddof {ddof} is out of range")))?,
            skip_nan,
            inputs,
            skipped_invalid: v
                .get("skipped_invalid")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }

    /// The fields as [`Header::read`] reads them (the version this build writes for `version`).
    fn to_json(version: u64, ddof: u32, skip_nan: bool, inputs: &[String], skipped: u64) -> Value {
        json!({
            "format": PARTIAL_FORMAT,
            "version": version,
            "microbatch": env!("CARGO_PKG_VERSION"),
            "options": {"ddof": ddof, "skip_nan": skip_nan},
            "inputs": inputs,
            "skipped_invalid": skipped,
        })
    }
}

/// Reads an optional `"sketch"` object and checks it against the partial of the same values.
fn sketch_from_json(
    s: Option<&Value>,
    partial: &Partial,
) -> std::result::Result<Option<Sketch>, String> {
    match s {
        None | Some(Value::Null) => Ok(None),
        Some(s) => {
            let s: Sketch =
                serde_json::from_value(s.clone()).map_err(|e| format!("field \"sketch\": {e}"))?;
            s.validate(partial.count)
                .map_err(|m| format!("field \"sketch\": {m}"))?;
            Ok(Some(s))
        }
    }
}

/// The version of the partial file format for several series. Files of one series stay at
/// [`PARTIAL_VERSION`], which older microbatch builds read; those builds refuse this one by
/// its version rather than misread it.
pub const SERIES_VERSION: u64 = 3;

/// Several series' partials from one run (`microbatch run … --partial FILE` with several
/// columns, `--columns all`, `--group-by` or `--axis`): shards of a table merge by series, each
/// series (a column, a group's column or an axis lane) with the same series of the others.
///
/// The file has the header of a [`PartialFile`] with `"version": 3`, and instead of
/// `"partial"`:
///
/// ```json
/// {"rows": "groups",
///  "series": [{"name": "price", "index": 2, "key": "north", "nulls": 0, "skipped": 0,
///              "partial": {…}, "sketch": {…}}],
///  "excluded": [{"name": "city", "index": 0, "why": "not numeric"}]}
/// ```
///
/// `rows` is `"columns"`, `"groups"` (each series has its group's `key`) or `"lanes"` (with
/// `"axis": {"axis": K, "result_shape": […]}`); `sketch` only with quantiles.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPartialFile {
    /// Each series with its partial, sketch, nulls and skipped fields; its `stats` finished
    /// with `ddof` and `skip_nan`.
    pub columns: Vec<ColumnStats>,
    /// Columns of the input left out (not numeric), with why.
    pub excluded: Vec<(ColumnRef, String)>,
    /// Whether the series are groups of rows (known even when no row was read).
    pub grouped: bool,
    /// With `--axis`: the axis reduced and the shape of the results.
    pub axis: Option<(usize, Vec<u64>)>,
    /// The variance's delta degrees of freedom the run was asked for.
    pub ddof: u32,
    /// Whether the run left NaNs out of the statistics.
    pub skip_nan: bool,
    /// What the shard reduced (paths as given).
    pub inputs: Vec<String>,
}

impl SeriesPartialFile {
    /// The file of a run's report over `inputs`, run with `ddof` and `skip_nan`.
    pub fn of(
        report: &ColumnsReport,
        axis: Option<(usize, Vec<u64>)>,
        inputs: Vec<String>,
        ddof: u32,
        skip_nan: bool,
    ) -> Self {
        Self {
            columns: report.columns.clone(),
            excluded: report.excluded.clone(),
            grouped: report.grouped(),
            axis,
            ddof,
            skip_nan,
            inputs,
        }
    }

    fn rows(&self) -> &'static str {
        match (self.grouped, &self.axis) {
            (true, _) => "groups",
            (false, Some(_)) => "lanes",
            (false, None) => "columns",
        }
    }

    /// The JSON object described above.
    pub fn to_json(&self) -> Value {
        let skipped = self.columns.iter().map(|c| c.skipped).sum();
        let mut v = Header::to_json(
            SERIES_VERSION,
            self.ddof,
            self.skip_nan,
            &self.inputs,
            skipped,
        );
        v["rows"] = json!(self.rows());
        if let Some((axis, shape)) = &self.axis {
            v["axis"] = json!({"axis": axis, "result_shape": shape});
        }
        v["series"] = self
            .columns
            .iter()
            .map(|c| {
                let mut s = json!({
                    "name": c.column.name,
                    "index": c.column.index,
                    "nulls": c.nulls,
                    "skipped": c.skipped,
                    "partial": partial_to_json(&c.partial),
                });
                if let Some(g) = &c.group {
                    s["key"] = json!(g);
                }
                if let Some(k) = &c.sketch {
                    s["sketch"] = serde_json::to_value(k).expect("a sketch is plain data");
                }
                s
            })
            .collect();
        v["excluded"] = self
            .excluded
            .iter()
            .map(|(c, why)| json!({"name": c.name, "index": c.index, "why": why}))
            .collect();
        v
    }

    /// Writes the file as [`PartialFile::write`] does.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, &self.to_json())
    }

    /// Reads the JSON of a several-series file; `path` names it in errors, with the series.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::IncompatiblePartial {
            path: path.to_path_buf(),
            message,
        };
        let h = Header::read(v, path)?;
        if h.version != SERIES_VERSION {
            return Err(bad(
                "it holds one series, not several: merge it with files of one series".to_string(),
            ));
        }
        let rows = v.get("rows").and_then(Value::as_str);
        let grouped = match rows {
            Some("groups") => true,
            Some("columns" | "lanes") => false,
            _ => {
                return Err(bad(
                    "field \"rows\" is not \"columns\", \"groups\" or \"lanes\"".to_string(),
                ));
            }
        };
        let axis = match (rows, v.get("axis")) {
            (Some("lanes"), Some(a)) => {
                let axis = a.get("axis").and_then(Value::as_u64);
                let shape = a
                    .get("result_shape")
                    .and_then(Value::as_array)
                    .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>());
                match (axis.and_then(|a| usize::try_from(a).ok()), shape) {
                    (Some(a), Some(s)) => Some((a, s)),
                    _ => {
                        return Err(bad(
                            "field \"axis\" is not {\"axis\": K, \"result_shape\": [...]}"
                                .to_string(),
                        ));
                    }
                }
            }
            (Some("lanes"), None) => return Err(bad("missing field \"axis\"".to_string())),
            _ => None,
        };
        let list = |name: &str| -> Result<&Vec<Value>> {
            v.get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("field {name:?} is missing or not a list")))
        };
        let column_ref = |s: &Value| -> std::result::Result<ColumnRef, String> {
            let name = match s.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) => Some(n.clone()),
                Some(_) => return Err("field \"name\" is not a string".to_string()),
            };
            let index = match s.get("index") {
                None | Some(Value::Null) => None,
                Some(i) => Some(
                    i.as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or("field \"index\" is not a non-negative integer")?,
                ),
            };
            if name.is_none() && index.is_none() {
                return Err("a series with neither \"name\" nor \"index\"".to_string());
            }
            Ok(ColumnRef { index, name })
        };
        let mut columns = Vec::new();
        for (i, s) in list("series")?.iter().enumerate() {
            let at = |m: String| bad(format!("series {i}: {m}"));
            let column = column_ref(s).map_err(at)?;
            let group = match s.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) => Some(k.clone()),
                Some(_) => return Err(at("field \"key\" is not a string".to_string())),
            };
            if group.is_some() != grouped {
                return Err(at(if grouped {
                    "a series without the \"key\" of its group".to_string()
                } else {
                    "a group's \"key\" in a file without groups".to_string()
                }));
            }
            let count = |name: &str| -> Result<u64> {
                match s.get(name) {
                    None => Ok(0),
                    Some(n) => n
                        .as_u64()
                        .ok_or_else(|| at(format!("field {name:?} is not a non-negative integer"))),
                }
            };
            let partial = partial_from_json(
                s.get("partial")
                    .ok_or_else(|| at("missing field \"partial\"".to_string()))?,
                false,
            )
            .map_err(at)?;
            let sketch = sketch_from_json(s.get("sketch"), &partial).map_err(at)?;
            columns.push(ColumnStats {
                stats: partial.finish(h.ddof, h.skip_nan),
                column,
                group,
                partial,
                sketch,
                nulls: count("nulls")?,
                skipped: count("skipped")?,
            });
        }
        SeriesIndex::try_of(&columns).map_err(|m| bad(format!("it holds {m}")))?;
        let mut excluded = Vec::new();
        for (i, e) in list("excluded")?.iter().enumerate() {
            let column = column_ref(e).map_err(|m| bad(format!("excluded column {i}: {m}")))?;
            let why = e
                .get("why")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            excluded.push((column, why));
        }
        Ok(Self {
            columns,
            excluded,
            grouped,
            axis,
            ddof: h.ddof,
            skip_nan: h.skip_nan,
            inputs: h.inputs,
        })
    }

    /// Merges shards of the same table into one, series by series (a series found in only
    /// some shards is kept with what they have; new ones are appended in the order first
    /// seen). Shards must hold the same kind of rows (and, for lanes, the same axis and result
    /// shape); options kept are the first shard's (see [`SeriesPartialFile::common_options`]).
    pub fn merge<'a>(
        shards: impl IntoIterator<Item = (&'a Path, &'a SeriesPartialFile)>,
    ) -> Result<SeriesPartialFile> {
        let mut shards = shards.into_iter();
        let Some((p0, first)) = shards.next() else {
            return Err(Error::InvalidConfig(
                "no partial files to merge".to_string(),
            ));
        };
        let mut out = first.clone();
        let mut index = SeriesIndex::of(&out.columns);
        for (path, shard) in shards {
            let bad = |message: String| Error::IncompatiblePartial {
                path: path.to_path_buf(),
                message,
            };
            if (shard.grouped, &shard.axis) != (out.grouped, &out.axis) {
                let what = |s: &SeriesPartialFile| match &s.axis {
                    Some((k, shape)) => format!("lanes of axis {k} (results of shape {shape:?})"),
                    None => s.rows().to_string(),
                };
                return Err(bad(format!(
                    "it holds {}, but {} holds {}: shards merge only with shards of the same rows",
                    what(shard),
                    p0.display(),
                    what(&out)
                )));
            }
            index
                .merge(&mut out.columns, &shard.columns)
                .map_err(|e| bad(e.to_string()))?;
            out.inputs.extend(shard.inputs.iter().cloned());
            for e in &shard.excluded {
                if !out.excluded.contains(e) {
                    out.excluded.push(e.clone());
                }
            }
        }
        out.finish(out.ddof, out.skip_nan);
        Ok(out)
    }

    /// Sets the options and finishes every series' statistics with them.
    pub fn finish(&mut self, ddof: u32, skip_nan: bool) {
        self.ddof = ddof;
        self.skip_nan = skip_nan;
        finish_series(&mut self.columns, Some((ddof, skip_nan)));
    }

    /// The `(ddof, skip_nan)` all shards were run with, or an error naming two that differ.
    pub fn common_options<'a>(
        shards: impl IntoIterator<Item = (&'a Path, &'a SeriesPartialFile)>,
    ) -> Result<(u32, bool)> {
        common_options(shards.into_iter().map(|(p, s)| (p, s.ddof, s.skip_nan)))
    }
}

/// A partial file of either form: one series ([`PartialFile`]) or several
/// ([`SeriesPartialFile`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AnyPartialFile {
    /// A file of one series (versions 1 and 2).
    One(PartialFile),
    /// A file of several series (version 3).
    Series(SeriesPartialFile),
}

impl AnyPartialFile {
    /// Reads the partial file at `path`, of either form.
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

    /// Reads a partial file's JSON of either form.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        if v.get("version").and_then(Value::as_u64) == Some(SERIES_VERSION) {
            SeriesPartialFile::from_json(v, path).map(Self::Series)
        } else {
            PartialFile::from_json(v, path).map(Self::One)
        }
    }
}

/// Writes `v` to `path` as [`PartialFile::write`] says: through a temporary file renamed into
/// place, or in place for what is not a regular file.
fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
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
        v["version"] = json!(4);
        let e = PartialFile::from_json(&v, Path::new("new.json")).unwrap_err();
        assert!(
            e.to_string().contains("new.json") && e.to_string().contains("version 4"),
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

    fn series(group: Option<&str>, name: &str, index: usize, values: &[f64], m: u8) -> ColumnStats {
        let partial = crate::backend::cpu::reduce_slice_f64(values);
        let mut sketch = Sketch::with_mantissa_bits(m);
        sketch.add_f64_slice(values);
        ColumnStats {
            column: ColumnRef {
                index: Some(index),
                name: Some(name.to_string()),
            },
            group: group.map(str::to_string),
            stats: partial.finish(1, true),
            partial,
            skipped: 2,
            nulls: 3,
            sketch: Some(sketch),
        }
    }

    fn series_file(columns: Vec<ColumnStats>, grouped: bool) -> SeriesPartialFile {
        SeriesPartialFile {
            columns,
            excluded: vec![(
                ColumnRef {
                    index: Some(0),
                    name: Some("city".into()),
                },
                "the group key".into(),
            )],
            grouped,
            axis: None,
            ddof: 1,
            skip_nan: true,
            inputs: vec!["a.csv".into()],
        }
    }

    #[test]
    fn series_files_round_trip_and_merge_by_series() {
        let a = series_file(
            vec![
                series(Some("x"), "t", 1, &[1.5, -2.25e300, f64::NAN, 0.0], 7),
                series(Some("y"), "t", 1, &[], 7),
                series(Some("x"), "u", 2, &[f64::INFINITY, 5e-320], 7),
            ],
            true,
        );
        let v: Value = serde_json::from_str(&a.to_json().to_string()).unwrap();
        let back = AnyPartialFile::from_json(&v, Path::new("a.json")).unwrap();
        // (Debug forms: a variance of inf − inf is NaN, which `==` never equals.)
        assert_eq!(
            format!("{back:?}"),
            format!("{:?}", AnyPartialFile::Series(a.clone()))
        );
        // Files of one series read the same as before; each reader refuses the other form.
        let e = PartialFile::from_json(&v, Path::new("a.json")).unwrap_err();
        assert!(e.to_string().contains("3 series"), "{e}");
        let one = shard(&[1.0]).to_json();
        assert!(matches!(
            AnyPartialFile::from_json(&one, Path::new("o.json")).unwrap(),
            AnyPartialFile::One(_)
        ));
        let e = SeriesPartialFile::from_json(&one, Path::new("o.json")).unwrap_err();
        assert!(e.to_string().contains("one series"), "{e}");
        // Merged by (group, column): b's "y"/t merges with a's, "z"/t is new and appended.
        let b = series_file(
            vec![
                series(Some("z"), "t", 1, &[7.0], 7),
                series(Some("y"), "t", 1, &[4.0, 8.0], 7),
            ],
            true,
        );
        let m = SeriesPartialFile::merge([(Path::new("a"), &a), (Path::new("b"), &b)]).unwrap();
        let keys: Vec<_> = m
            .columns
            .iter()
            .map(|c| (c.group.clone().unwrap(), c.label()))
            .collect();
        let want: Vec<(String, String)> = [("x", "t"), ("y", "t"), ("x", "u"), ("z", "t")]
            .iter()
            .map(|(g, c)| (g.to_string(), c.to_string()))
            .collect();
        assert_eq!(keys, want);
        let y = &m.columns[1];
        assert_eq!((y.partial.count, y.skipped, y.nulls), (2, 4, 6));
        assert_eq!(y.stats.mean, Some(6.0));
        assert_eq!(y.sketch.as_ref().unwrap().count(), 2);
        assert_eq!(m.inputs.len(), 2);
        assert_eq!(m.excluded.len(), 1, "the same exclusion once");
        // Sketches of another accuracy, or shards of another kind, are refused by name.
        let c = series_file(vec![series(Some("x"), "t", 1, &[1.0], 9)], true);
        let e = SeriesPartialFile::merge([(Path::new("a"), &a), (Path::new("c9"), &c)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c9") && e.contains("accuracy"), "{e}");
        let d = series_file(vec![series(None, "t", 1, &[1.0], 7)], false);
        let e = SeriesPartialFile::merge([(Path::new("a"), &a), (Path::new("d"), &d)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d") && e.contains("columns") && e.contains("groups"),
            "{e}"
        );
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
