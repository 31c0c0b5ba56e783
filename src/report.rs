//! The result of a run: statistics, what ran, and how long each stage took; as JSON or a table.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ColumnRef;
use crate::backend::{BackendInfo, ComputeClock};
use crate::sketch::Sketch;
use crate::stats::{Partial, Stats};

/// How the input was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    /// Micro-batches reduced.
    pub count: u64,
    /// Elements per micro-batch (the last may be shorter).
    pub size: usize,
    /// Parallel processors P: workgroups per dispatch (GPU) or threads (CPU).
    pub workgroups: u32,
}

/// Time per stage: the one type for stage times everywhere. A backend fills the stages it owns
/// (upload, compute, readback, merge) when it finishes; the engine adds `read` and `total`. On
/// the GPU the stages overlap, so they can add up to more than `total`. `+=` adds every stage
/// (several runs' or batches' times).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Producing batches: reading files, generating random values.
    pub read: Duration,
    /// Staging batches for the device (includes waiting for a free buffer in the ring).
    pub upload: Duration,
    /// Reduction kernels (see `compute_clock`).
    pub compute: Duration,
    /// Waiting for and copying partials back from the device.
    pub readback: Duration,
    /// Merging partials in f64 and finishing the statistics.
    pub merge: Duration,
    /// Wall time of the whole run.
    pub total: Duration,
    /// Whether `compute` comes from GPU timestamps or the wall clock.
    pub compute_clock: ComputeClock,
}

impl std::ops::AddAssign for Timings {
    fn add_assign(&mut self, t: Timings) {
        if *self == Timings::default() {
            self.compute_clock = t.compute_clock;
        }
        self.read += t.read;
        self.upload += t.upload;
        self.compute += t.compute;
        self.readback += t.readback;
        self.merge += t.merge;
        self.total += t.total;
    }
}

impl Timings {
    /// Every stage scaled by `share` (a batch's share of a pass that reduced several).
    pub fn scaled(&self, share: f64) -> Timings {
        Timings {
            read: self.read.mul_f64(share),
            upload: self.upload.mul_f64(share),
            compute: self.compute.mul_f64(share),
            readback: self.readback.mul_f64(share),
            merge: self.merge.mul_f64(share),
            total: self.total.mul_f64(share),
            compute_clock: self.compute_clock,
        }
    }
}

/// Everything a run produced.
///
/// Its serde form holds every field (lossless: it round-trips); [`Report::to_json`] is the
/// command line's report (`microbatch run --json`), shaped for reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The statistics.
    pub stats: Stats,
    /// What ran.
    pub backend: BackendInfo,
    /// How the input was cut.
    pub batches: BatchCounts,
    /// Stage times.
    pub timings: Timings,
    /// The merged partial the statistics came from (mergeable with other runs').
    pub partial: Partial,
    /// The quantile sketch of the values, when quantiles were asked for
    /// ([`crate::Engine::set_quantiles`]); [`Report::quantile`] reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch: Option<Sketch>,
}

impl Report {
    /// One report for runs of the same engine over consecutive inputs: their partials merged
    /// (so the statistics are those of the concatenated inputs), stage times and batch counts
    /// added. `None` for no reports, or for reports of different backends or statistics options
    /// (`ddof`, `skip_nan`), which no one report describes: merge their partials instead.
    pub fn combine(parts: &[Report]) -> Option<Report> {
        let first = parts.first()?;
        if parts.iter().any(|r| {
            r.backend != first.backend
                || (r.stats.ddof, r.stats.skip_nan) != (first.stats.ddof, first.stats.skip_nan)
        }) {
            return None;
        }
        let mut partial = Partial::EMPTY;
        let mut timings = first.timings;
        let mut batches = first.batches;
        let mut sketch = first.sketch.clone();
        for (i, r) in parts.iter().enumerate() {
            partial.merge(&r.partial);
            if i > 0 {
                timings += r.timings;
                batches.count += r.batches.count;
                sketch = merged(sketch, r.sketch.as_ref());
            }
        }
        Some(Report {
            sketch,
            stats: partial.finish(first.stats.ddof, first.stats.skip_nan),
            backend: first.backend.clone(),
            batches,
            timings,
            partial,
        })
    }

    /// The quantile `q` (0 ≤ q ≤ 1) as numpy's `quantile(…, method="inverted_cdf")` gives it
    /// (`nanquantile` with `skip_nan`), within the sketch's relative error; `None` without a
    /// sketch or without values.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch
            .as_ref()?
            .quantile_of(&self.partial, self.stats.skip_nan, q)
    }

    /// The quantiles `qs` as the `quantiles` object of a `stats` JSON: `{"0.5": …, "0.9": …}`.
    pub fn quantiles_json(
        sketch: Option<&Sketch>,
        partial: &Partial,
        skip_nan: bool,
        qs: &[f64],
    ) -> Value {
        let mut m = serde_json::Map::new();
        for &q in qs {
            let v = sketch.and_then(|s| s.quantile_of(partial, skip_nan, q));
            m.insert(format!("{q}"), opt(v));
        }
        Value::Object(m)
    }

    /// The statistics alone as JSON (the `stats` object of [`Report::to_json`]).
    pub fn stats_json(stats: &Stats) -> Value {
        let s = stats;
        // Integer inputs print their exact sum, min and max as JSON integers.
        let exact = |f: fn(&crate::stats::IntPart) -> i128, x: Option<f64>| match &s.exact {
            Some(e) => serde_json::Number::from_i128(f(e)).map_or_else(|| opt(x), Value::Number),
            None => opt(x),
        };
        json!({
            "count": s.count,
            "sum": exact(|e| e.sum, s.sum),
            "mean": opt(s.mean),
            "min": exact(|e| e.min, s.min),
            "max": exact(|e| e.max, s.max),
            "var": opt(s.var),
            "std": opt(s.std),
            "ddof": s.ddof,
            "nan_count": s.nan_count,
        })
    }

    /// The statistics alone as the table's `statistics` section.
    pub fn stats_table(stats: &Stats) -> String {
        let s = stats;
        let nan_note = if s.skip_nan { " (skipped)" } else { "" };
        format!(
            "statistics\n  count      {}\n  sum        {}\n  mean       {}\n  min        {}\n  max        {}\n  var        {}   (ddof {})\n  std        {}\n  nan_count  {}{nan_note}",
            s.count,
            s.exact.map_or_else(|| show(s.sum), |e| e.sum.to_string()),
            show(s.mean),
            s.exact.map_or_else(|| show(s.min), |e| e.min.to_string()),
            s.exact.map_or_else(|| show(s.max), |e| e.max.to_string()),
            show(s.var),
            s.ddof,
            show(s.std),
            s.nan_count
        )
    }

    /// Elements in the input, NaN and infinities included.
    pub fn elements(&self) -> u64 {
        self.partial.total()
    }

    /// Elements per second over the whole run.
    pub fn elements_per_s(&self) -> f64 {
        rate(self.elements() as f64, self.timings.total)
    }

    /// Input bytes (4 per f32) per second over the whole run.
    pub fn bytes_per_s(&self) -> f64 {
        rate(self.elements() as f64 * 4.0, self.timings.total)
    }

    /// The report as `microbatch run --json` prints it. Non-finite numbers are the strings
    /// `"NaN"`, `"inf"`, `"-inf"`; undefined values are `null`.
    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let t = &self.timings;
        json!({
            "stats": Self::stats_json(s),
            "backend": backend_json(&self.backend),
            "batches": batches_json(&self.batches),
            "timings_s": timings_json(t),
            "throughput": {
                "elements_per_s": number(self.elements_per_s()),
                "bytes_per_s": number(self.bytes_per_s()),
            },
        })
    }
}

/// One series' result in a [`ColumnsReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// Which series: a column's index and header name, or an axis lane.
    pub column: ColumnRef,
    /// The group key, when the series are groups of rows (`group_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its statistics.
    pub stats: Stats,
    /// The partial they came from (mergeable with other runs' for the same series).
    pub partial: Partial,
    /// Invalid fields skipped in it (text inputs with skipping on).
    pub skipped: u64,
    /// Null fields in it.
    pub nulls: u64,
    /// Its quantile sketch, when quantiles were asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch: Option<Sketch>,
}

impl ColumnStats {
    /// The name a table row gives it: the header's name, else its index.
    pub fn label(&self) -> String {
        match (&self.column.name, self.column.index) {
            (Some(n), _) => n.clone(),
            (None, Some(i)) => i.to_string(),
            (None, None) => "?".to_string(),
        }
    }
}

/// Where each series of a list is, by its group key and name: how series of several runs or
/// shards are matched up when they merge.
pub(crate) struct SeriesIndex(std::collections::HashMap<(Option<String>, String), usize>);

impl SeriesIndex {
    fn key(c: &ColumnStats) -> (Option<String>, String) {
        (c.group.clone(), c.label())
    }

    /// The index of `columns`; `Err` names a series that is in it twice.
    pub(crate) fn try_of(columns: &[ColumnStats]) -> std::result::Result<Self, String> {
        let mut index = std::collections::HashMap::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            if index.insert(Self::key(c), i).is_some() {
                return Err(match &c.group {
                    Some(g) => format!("group {g:?}, column {}, twice", c.label()),
                    None => format!("column {} twice", c.label()),
                });
            }
        }
        Ok(Self(index))
    }

    /// The index of `columns` (a series in it twice is found under its last place).
    pub(crate) fn of(columns: &[ColumnStats]) -> Self {
        Self(
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| (Self::key(c), i))
                .collect(),
        )
    }

    /// Merges `more` into `out` (which this indexes) series by series; a series first seen in
    /// `more` is appended. A merged series keeps a quantile sketch only when both sides have
    /// one; sketches of different accuracy are an error. `stats` are left for
    /// [`finish_series`].
    pub(crate) fn merge(
        &mut self,
        out: &mut Vec<ColumnStats>,
        more: &[ColumnStats],
    ) -> crate::Result<()> {
        for c in more {
            let Some(&i) = self.0.get(&Self::key(c)) else {
                self.0.insert(Self::key(c), out.len());
                out.push(c.clone());
                continue;
            };
            let acc = &mut out[i];
            acc.partial.merge(&c.partial);
            acc.sketch = match (acc.sketch.take(), &c.sketch) {
                (Some(mut a), Some(b)) => {
                    a.merge(b)?;
                    Some(a)
                }
                _ => None,
            };
            acc.skipped += c.skipped;
            acc.nulls += c.nulls;
            if acc.column.index != c.column.index {
                acc.column.index = None;
            }
        }
        Ok(())
    }
}

/// Finishes every series' statistics from its partial: with `options` (ddof, skip_nan) when
/// given, else with the options each was finished with.
pub(crate) fn finish_series(columns: &mut [ColumnStats], options: Option<(u32, bool)>) {
    for c in columns {
        let (ddof, skip_nan) = options.unwrap_or((c.stats.ddof, c.stats.skip_nan));
        c.stats = c.partial.finish(ddof, skip_nan);
    }
}

/// Several series reduced in one pass ([`crate::Engine::run_columns`]): each one's statistics,
/// and what ran for all of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnsReport {
    /// Each series, in the source's order.
    pub columns: Vec<ColumnStats>,
    /// Series of the input left out (non-numeric columns), with why.
    pub excluded: Vec<(ColumnRef, String)>,
    /// What ran.
    pub backend: BackendInfo,
    /// Rounds read (each a batch of every series) and the batch size.
    pub batches: BatchCounts,
    /// Stage times of the whole pass.
    pub timings: Timings,
}

impl ColumnsReport {
    /// One report for the same series read from consecutive inputs (several files of one
    /// table): each series' partials merged by position, times added. `None` for no reports or
    /// reports whose series differ (count or names) or whose statistics options differ.
    pub fn combine(parts: &[ColumnsReport]) -> Option<ColumnsReport> {
        let first = parts.first()?;
        let grouped = first.columns.iter().any(|c| c.group.is_some());
        let options = |c: &ColumnStats| (c.stats.ddof, c.stats.skip_nan);
        let same = |r: &ColumnsReport| {
            r.backend == first.backend
                && r.columns
                    .iter()
                    .all(|c| Some(options(c)) == first.columns.first().map(options))
                && (grouped
                    || (r.columns.len() == first.columns.len()
                        && r.columns
                            .iter()
                            .zip(&first.columns)
                            .all(|(a, b)| a.column.name == b.column.name)))
        };
        if !parts.iter().all(same) {
            return None;
        }
        if parts.len() == 1 {
            return Some(first.clone());
        }
        let mut out = first.clone();
        let mut index = SeriesIndex::of(&out.columns);
        for r in &parts[1..] {
            // One run's sketches all have the same accuracy: their merge cannot fail.
            index.merge(&mut out.columns, &r.columns).ok()?;
            out.timings += r.timings;
            out.batches.count += r.batches.count;
            for e in &r.excluded {
                if !out.excluded.contains(e) {
                    out.excluded.push(e.clone());
                }
            }
        }
        finish_series(&mut out.columns, None);
        Some(out)
    }

    /// The list of series as [`ColumnsReport::to_json`] gives it (`"columns"` or `"groups"`).
    pub fn series_json(columns: &[ColumnStats]) -> Value {
        columns
            .iter()
            .map(|c| {
                let mut v = json!({
                    "name": c.label(),
                    "index": c.column.index,
                    "stats": Report::stats_json(&c.stats),
                    "nulls": c.nulls,
                    "skipped": c.skipped,
                });
                if let Some(g) = &c.group {
                    v["key"] = json!(g);
                }
                v
            })
            .collect()
    }

    /// The `"excluded"` list of [`ColumnsReport::to_json`].
    pub fn excluded_json(excluded: &[(ColumnRef, String)]) -> Value {
        excluded
            .iter()
            .map(|(c, why)| json!({"name": c.name, "index": c.index, "why": why}))
            .collect()
    }

    /// Elements in every series, NaN and infinities included.
    pub fn elements(&self) -> u64 {
        self.columns.iter().map(|c| c.partial.total()).sum()
    }

    /// Whether the series are groups of rows (`group_by`).
    pub fn grouped(&self) -> bool {
        self.columns.iter().any(|c| c.group.is_some())
    }

    /// The report as `microbatch run --json` prints it for several series:
    /// `"columns": [{"name": …, "index": …, "stats": {…}, "nulls": …, "skipped": …}]` (for
    /// groups `"groups"`, each also with its `"key"`), the excluded columns, backend, batches
    /// and timings as in [`Report::to_json`].
    pub fn to_json(&self) -> Value {
        let t = &self.timings;
        let series = if self.grouped() { "groups" } else { "columns" };
        let mut v = json!({
            "series": Self::series_json(&self.columns),
            "excluded": Self::excluded_json(&self.excluded),
            "backend": backend_json(&self.backend),
            "batches": batches_json(&self.batches),
            "timings_s": timings_json(t),
            "throughput": {
                "elements_per_s": number(rate(self.elements() as f64, t.total)),
            },
        });
        if let Some(obj) = v.as_object_mut()
            && let Some(list) = obj.remove("series")
        {
            obj.insert(series.to_string(), list);
        }
        v
    }
}

/// The `backend` object of the run reports.
fn backend_json(b: &BackendInfo) -> Value {
    json!({
        "kind": b.kind,
        "adapter": b.adapter,
        "api": b.api,
        "device_type": b.device_type,
    })
}

/// The `batches` object of the run reports.
fn batches_json(b: &BatchCounts) -> Value {
    json!({"count": b.count, "size": b.size, "workgroups": b.workgroups})
}

/// The `timings_s` object of the run reports: every stage in seconds.
fn timings_json(t: &Timings) -> Value {
    json!({
        "read": t.read.as_secs_f64(),
        "upload": t.upload.as_secs_f64(),
        "compute": t.compute.as_secs_f64(),
        "readback": t.readback.as_secs_f64(),
        "merge": t.merge.as_secs_f64(),
        "total": t.total.as_secs_f64(),
    })
}

/// Two runs' sketches merged; `None` when either has none (or they differ in accuracy).
fn merged(a: Option<Sketch>, b: Option<&Sketch>) -> Option<Sketch> {
    let (mut a, b) = (a?, b?);
    a.merge(b).ok()?;
    Some(a)
}

fn rate(amount: f64, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

/// A JSON number, or the strings numpy prints for the non-finite values.
pub(crate) fn number(x: f64) -> Value {
    if x.is_nan() {
        Value::from("NaN")
    } else if x == f64::INFINITY {
        Value::from("inf")
    } else if x == f64::NEG_INFINITY {
        Value::from("-inf")
    } else {
        Value::from(x)
    }
}

fn opt(x: Option<f64>) -> Value {
    x.map_or(Value::Null, number)
}

fn show(x: Option<f64>) -> String {
    match x {
        None => "undefined".to_string(),
        Some(v) if v.is_nan() => "NaN".to_string(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.to_string(),
        // Shortest representation that round-trips the f64; exponent form when tiny or huge.
        Some(v) if v != 0.0 && !(1e-4..1e16).contains(&v.abs()) => format!("{v:e}"),
        Some(v) => format!("{v}"),
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn si(x: f64, unit: &str) -> String {
    let (v, p) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    format!("{v:.2} {p}{unit}")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let t = &self.timings;
        let b = &self.backend;
        writeln!(f, "{}", Self::stats_table(s))?;
        writeln!(f, "backend")?;
        writeln!(f, "  kind       {}", b.kind)?;
        writeln!(f, "  adapter    {}", b.adapter)?;
        writeln!(f, "  api        {} ({})", b.api, b.device_type)?;
        writeln!(
            f,
            "  batches    {} × {} elements, P = {}",
            self.batches.count, self.batches.size, self.batches.workgroups
        )?;
        writeln!(f, "timings")?;
        writeln!(f, "  read       {:>12}", secs(t.read))?;
        writeln!(f, "  upload     {:>12}", secs(t.upload))?;
        writeln!(
            f,
            "  compute    {:>12}   ({})",
            secs(t.compute),
            t.compute_clock.as_str()
        )?;
        writeln!(f, "  readback   {:>12}", secs(t.readback))?;
        writeln!(f, "  merge      {:>12}", secs(t.merge))?;
        writeln!(f, "  total      {:>12}", secs(t.total))?;
        write!(
            f,
            "throughput   {}, {}",
            si(self.elements_per_s(), "elements/s"),
            si(self.bytes_per_s(), "B/s")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    fn report(kind: BackendKind, data: &[f32]) -> Report {
        let partial = Partial::from_slice_f64(data);
        Report {
            stats: partial.finish(1, false),
            backend: BackendInfo {
                kind,
                adapter: "test".into(),
                api: "native".into(),
                device_type: "Cpu".into(),
                workgroups: 4,
            },
            batches: BatchCounts {
                count: 2,
                size: 3,
                workgroups: 4,
            },
            timings: Timings {
                read: Duration::from_nanos(1),
                upload: Duration::from_nanos(22),
                compute: Duration::from_micros(333),
                readback: Duration::ZERO,
                merge: Duration::from_nanos(5),
                total: Duration::from_millis(7),
                compute_clock: ComputeClock::Timestamps,
            },
            partial,
            sketch: None,
        }
    }

    #[test]
    fn reports_round_trip_through_json() {
        for data in [&[][..], &[f32::NAN, 1.0][..], &[1.0, -3.5, 1e30][..]] {
            let r = report(BackendKind::Gpu, data);
            let text = serde_json::to_string(&r).unwrap();
            let back: Report = serde_json::from_str(&text).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"), "{text}");
        }
    }

    #[test]
    fn combine_merges_one_backends_reports_and_refuses_mixed_ones() {
        let (a, b) = (
            report(BackendKind::Cpu, &[1.0, 2.0]),
            report(BackendKind::Cpu, &[4.0]),
        );
        let c = Report::combine(&[a.clone(), b]).unwrap();
        assert_eq!((c.stats.count, c.stats.sum), (3, Some(7.0)));
        assert_eq!(c.batches.count, 4);
        assert_eq!(c.timings.total, Duration::from_millis(14));
        let gpu = report(BackendKind::Gpu, &[4.0]);
        assert!(Report::combine(&[a.clone(), gpu]).is_none());
        let mut ddof0 = a.clone();
        ddof0.stats.ddof = 0;
        assert!(Report::combine(&[a, ddof0]).is_none());
        assert!(Report::combine(&[]).is_none());
    }
}
