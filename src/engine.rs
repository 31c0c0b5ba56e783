//! Drives source → backend → merge and times every stage.

use std::time::{Duration, Instant};

use crate::backend::cpu::CpuReducer;
#[cfg(feature = "gpu")]
use crate::backend::gpu::{AdapterSelector, GpuConfig, GpuContext, GpuReducer};
use crate::backend::{BackendInfo, BackendKind, BatchReducer, BatchRef, ComputeClock};
use crate::report::{BatchCounts, ColumnStats, ColumnsReport, Report, Timings};
use crate::sketch::Sketch;
use crate::source::{BatchBuf, BatchSource, ColumnsSource, Element, read_batch};
use crate::stats::{Partial, Stats};
use crate::{Error, Result};

/// Default micro-batch: 16 Mi elements (64 MiB). Each batch has a fixed cost (the GPU's submit
/// and staging handoff, about 120 µs on an H200; the CPU backend's fork-join, tens of µs on a
/// small VM): at 16 Mi it stays under a tenth of the batch's own time on both backends, where
/// 4 Mi cost 20% of the streaming rate (BENCHMARKS.md, issue 4). Memory stays bounded: one
/// host batch, and on the GPU three staging and three input buffers, sized by the batches
/// actually pushed (a small input never allocates a whole batch).
pub const DEFAULT_BATCH_SIZE: usize = 1 << 24;

/// Default elements per micro-batch for inputs read through a buffer (4 Mi; see
/// [`Engine::set_buffered_batch_size`]).
pub const BUFFERED_BATCH_SIZE: usize = 1 << 22;

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A hardware GPU adapter when there is one, else the CPU backend. Software adapters
    /// (llvmpipe/lavapipe) are never picked automatically: the CPU backend beats them.
    #[default]
    Auto,
    /// A GPU adapter, software ones included; an error if there is none.
    Gpu,
    /// The CPU backend.
    Cpu,
}

/// Everything [`Engine::new`] needs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Which backend.
    pub backend: BackendChoice,
    /// Adapter name substring (implies a GPU backend).
    pub adapter: Option<String>,
    /// Elements per micro-batch (≥ 1).
    pub batch_size: usize,
    /// Workgroups per dispatch on the GPU (P); `None` picks one per adapter.
    pub workgroups: Option<u32>,
    /// Delta degrees of freedom for the variance (0: population, numpy's default; 1: sample).
    pub ddof: u32,
    /// Leave NaNs out, like numpy's `nan*` functions.
    pub skip_nan: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            adapter: None,
            batch_size: DEFAULT_BATCH_SIZE,
            workgroups: None,
            ddof: 0,
            skip_nan: false,
        }
    }
}

/// A backend plus the settings of a reduction; reusable for any number of runs.
pub struct Engine {
    reducer: Box<dyn BatchReducer + Send>,
    batch_size: usize,
    /// Elements per batch for inputs read through a buffer (see
    /// [`Engine::set_buffered_batch_size`]).
    buffered_batch_size: usize,
    ddof: u32,
    skip_nan: bool,
    buf: BatchBuf,
    notice: Option<String>,
    /// Quantile sketches: the accuracy asked for ([`Engine::set_quantiles`]) and the sketch of
    /// the run in progress.
    sketch_bits: Option<u8>,
    sketch: Option<Sketch>,
    /// Host time spent building it (reported under `merge`).
    sketch_time: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", self.reducer.info())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the backend `config` asks for.
    pub fn new(config: &EngineConfig) -> Result<Self> {
        validate(config)?;
        let mut notice = None;
        // An adapter that cannot run the kernel (no SHADER_F64) hands the work to the CPU
        // backend, with a notice saying why, rather than to a kernel that would lose precision.
        let mut or_cpu = |r: Result<Box<dyn BatchReducer + Send>>| match r {
            Err(Error::GpuUnsupported { adapter, missing }) => {
                notice = Some(format!(
                    "{adapter} lacks {missing}; reducing on the CPU backend instead"
                ));
                Ok(Box::new(CpuReducer::new()) as Box<dyn BatchReducer + Send>)
            }
            other => other,
        };
        let reducer: Box<dyn BatchReducer + Send> = match (config.backend, &config.adapter) {
            (BackendChoice::Cpu, Some(name)) => {
                return Err(Error::InvalidConfig(format!(
                    "adapter {name:?} names a GPU adapter, which the CPU backend cannot use"
                )));
            }
            (BackendChoice::Cpu, None) => Box::new(CpuReducer::new()),
            (_, Some(name)) => or_cpu(open_gpu(config, Adapter::Named(name)))?,
            (BackendChoice::Gpu, None) => or_cpu(open_gpu(config, Adapter::Any))?,
            (BackendChoice::Auto, None) => match or_cpu(open_gpu(config, Adapter::Hardware)) {
                Ok(r) => r,
                Err(Error::AdapterNotFound { .. } | Error::GpuNotBuilt) => {
                    Box::new(CpuReducer::new())
                }
                Err(e) => return Err(e),
            },
        };
        let mut engine = Self::with_reducer(reducer);
        engine.batch_size = config.batch_size;
        engine.buffered_batch_size = config.batch_size;
        engine.set_stats_options(config.ddof, config.skip_nan);
        engine.notice = notice;
        Ok(engine)
    }

    /// An engine over a reducer you built yourself: a `GpuReducer` on your own device (shared
    /// with other reducers, or with your application), or a [`CpuReducer`]. Inputs are cut to
    /// the reducer's own batch size (a `GpuReducer`'s `GpuConfig::batch_size`;
    /// [`DEFAULT_BATCH_SIZE`] for the CPU backend); statistics with `ddof` 0, NaN propagated:
    /// see [`Engine::set_batch_size`] and [`Engine::set_stats_options`].
    pub fn with_reducer(reducer: Box<dyn BatchReducer + Send>) -> Self {
        let batch_size = reducer.batch_size().unwrap_or(DEFAULT_BATCH_SIZE).max(1);
        Self {
            reducer,
            batch_size,
            buffered_batch_size: batch_size,
            ddof: 0,
            skip_nan: false,
            buf: BatchBuf::default(),
            notice: None,
            sketch_bits: None,
            sketch: None,
            sketch_time: Duration::ZERO,
        }
    }

    /// Quantiles from now on: every run also builds a mergeable sketch
    /// ([`crate::sketch::Sketch`]) with relative accuracy at least `alpha` (`None`: no sketch,
    /// the default). The report carries it ([`Report::sketch`]); [`Report::quantile`] reads it.
    /// The CPU backend counts each batch into the sketch in its moments' pass, the GPU backend
    /// on the device in the batch's compute pass (up to 8 series, sketches of at most 0.2 %
    /// error); what a backend cannot take is counted on the host as the batch passes.
    pub fn set_quantiles(&mut self, alpha: Option<f64>) -> Result<()> {
        self.sketch_bits = alpha.map(crate::sketch::mantissa_bits_for).transpose()?;
        self.sketch = None;
        Ok(())
    }

    /// Pushes `batch` under `tag` in pieces of at most `max` values, into the run's sketch as
    /// well if quantiles are asked for (in the reducer's own pass where it can: the CPU
    /// backend's).
    fn push_batch(&mut self, tag: u64, batch: BatchRef<'_>, max: usize) -> Result<()> {
        let Some(bits) = self.sketch_bits else {
            return batch.push_to(&mut *self.reducer, tag, max);
        };
        let sketch = self
            .sketch
            .get_or_insert_with(|| Sketch::with_mantissa_bits(bits));
        self.sketch_time += batch.push_sketched_to(&mut *self.reducer, tag, max, sketch)?;
        Ok(())
    }

    /// Forgets the sketch of a run that failed.
    fn drop_sketch(&mut self) {
        self.sketch = None;
        self.sketch_time = Duration::ZERO;
        let _ = self.reducer.take_sketches();
    }

    /// Merges into the run's sketch what the reducer counted on its own (the GPU backend's
    /// device-built sketches) in the stream its last finish ended.
    fn absorb_reducer_sketches(&mut self) {
        let counted = self.reducer.take_sketches();
        let (Some(bits), false) = (self.sketch_bits, counted.is_empty()) else {
            return;
        };
        let sketch = self
            .sketch
            .get_or_insert_with(|| Sketch::with_mantissa_bits(bits));
        for (_, s) in &counted {
            sketch.absorb(s);
        }
    }

    /// The run's sketch (a fresh one for the next run), if quantiles are asked for.
    fn take_sketch(&mut self) -> Option<Sketch> {
        self.sketch_time = Duration::ZERO;
        self.absorb_reducer_sketches();
        let bits = self.sketch_bits?;
        let mut s = self
            .sketch
            .take()
            .unwrap_or_else(|| Sketch::with_mantissa_bits(bits));
        s.trim();
        Some(s)
    }

    /// Elements per micro-batch from now on (≥ 1; see [`Engine::set_buffered_batch_size`] for
    /// inputs read through a buffer, which this sets too).
    pub fn set_batch_size(&mut self, n: usize) -> Result<()> {
        check_batch_size(n)?;
        self.batch_size = n;
        self.buffered_batch_size = n;
        Ok(())
    }

    /// The options that shape the final statistics: `ddof` (the variance divides by
    /// `count - ddof`) and `skip_nan` (leave NaNs out, as numpy's `nan*` functions do). They
    /// change nothing in the reduction itself: [`Partial::finish`] applies them.
    pub fn set_stats_options(&mut self, ddof: u32, skip_nan: bool) {
        self.ddof = ddof;
        self.skip_nan = skip_nan;
    }

    /// An incremental reduction: push batches as they come, read the running statistics at
    /// any point ([`Accumulator::stats`]), finish with a [`Report`].
    ///
    /// ```
    /// use microbatch::{BackendChoice, Engine, EngineConfig};
    /// let mut engine = Engine::new(&EngineConfig { backend: BackendChoice::Cpu, ..Default::default() })?;
    /// let mut acc = engine.accumulate();
    /// acc.push(&[1.0, 2.0])?;
    /// assert_eq!(acc.stats()?.mean, Some(1.5));
    /// acc.push(&[6.0])?;
    /// let report = acc.finish()?;
    /// assert_eq!((report.stats.count, report.stats.mean), (3, Some(3.0)));
    /// # Ok::<(), microbatch::Error>(())
    /// ```
    pub fn accumulate(&mut self) -> Accumulator<'_> {
        Accumulator {
            engine: self,
            partial: Partial::EMPTY,
            times: Timings::default(),
            batches: 0,
            pending: false,
            start: Instant::now(),
            failed: None,
        }
    }

    /// Why the engine runs on another backend than the one asked for (a GPU adapter without
    /// `SHADER_F64` hands its work to the CPU backend), for the caller to show.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// Reduces independent inputs together, pipelined through the backend as one stream (on the
    /// GPU: one readback for all of them), and returns each input's own partial, in order, with
    /// the stage times of the whole pass. No input's values reach another's partial.
    pub fn reduce_each(&mut self, inputs: &[BatchRef<'_>]) -> Result<(Vec<Partial>, Timings)> {
        for (i, data) in inputs.iter().enumerate() {
            if let Err(e) = data.push_to(&mut *self.reducer, i as u64, self.batch_size) {
                let _ = self.reducer.finish_tagged();
                return Err(e);
            }
        }
        let (parts, times) = self.reducer.finish_tagged()?;
        let mut out = vec![Partial::EMPTY; inputs.len()];
        for (tag, p) in parts {
            out[tag as usize] = p;
        }
        Ok((out, times))
    }

    /// Sets the batch size for inputs read through a buffer (stdin, pipes, compressed or
    /// unmapped files) apart from the batch size of inputs lent in place (memory-mapped files,
    /// parsed text, decoded columns), which stays the configured one. A buffer filled and then
    /// reduced is faster when it fits the caches: on the 2-core test machine a 400 MB raw file
    /// read through a buffer took 0.11 s at 4 Mi elements and 0.14–0.18 s at 16 Mi, while the
    /// mapped file took 0.04 s at 16 Mi and 0.06 s at 1 Mi ([`BUFFERED_BATCH_SIZE`] is what
    /// the CLI uses when no batch size is given).
    pub fn set_buffered_batch_size(&mut self, n: usize) {
        self.buffered_batch_size = n.max(1);
    }

    /// What the engine runs on.
    pub fn backend(&self) -> &BackendInfo {
        self.reducer.info()
    }

    /// Reduces everything `source` yields, one micro-batch at a time.
    pub fn run(&mut self, source: &mut dyn BatchSource) -> Result<Report> {
        self.run_observed(source, &mut |_| {})
    }

    /// [`Engine::run`], calling `observe` with the source after every batch is pushed (for a
    /// progress display: [`BatchSource::bytes_read`], [`BatchSource::len_bytes`]).
    pub fn run_observed(
        &mut self,
        source: &mut dyn BatchSource,
        observe: &mut dyn FnMut(&dyn BatchSource),
    ) -> Result<Report> {
        let start = Instant::now();
        let mut read = Duration::ZERO;
        let mut batches = 0u64;
        // The batch size the report gives: the buffered one once a batch was read that way.
        let mut size = self.batch_size;
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            loop {
                let t = Instant::now();
                // A mapped file, parsed text or a decoded column lends its batches in place (no
                // copy into `buf`); other sources fill `buf`.
                let lent = source.lend_batch(self.batch_size)?;
                let batch = match lent {
                    Some(b) => b,
                    None => {
                        let (_, element) =
                            read_batch(&mut *source, &mut buf, self.buffered_batch_size)?;
                        size = self.buffered_batch_size;
                        match element {
                            Element::F32 => BatchRef::F32(&buf.f32),
                            Element::F64 => BatchRef::F64(&buf.f64),
                            Element::Int => BatchRef::Int(&buf.int, source.int_offset()),
                        }
                    }
                };
                read += t.elapsed();
                if batch.is_empty() {
                    return Ok(());
                }
                if !matches!(batch, BatchRef::F32(_)) {
                    self.note_host_kernels();
                }
                // Whole: the source cut it.
                self.push_batch(0, batch, batch.len())?;
                batches += 1;
                observe(&*source);
            }
        })();
        self.buf = buf;
        if let Err(e) = result {
            // Drain what was pushed so the engine is clean for the next run, then report the error.
            let _ = self.reducer.finish();
            self.drop_sketch();
            return Err(e);
        }
        self.finish("the values", start, read, batches, size)
    }

    /// Reduces every series of `source` in one pass, each to its own statistics (the columns
    /// of a table, the lanes of an axis): each round of the source is pushed per series under
    /// its own tag, so no series' values reach another's partial. `observe` is called after
    /// every round. On error nothing is returned as if final, and the engine is clean after.
    pub fn run_columns(
        &mut self,
        source: &mut dyn ColumnsSource,
        observe: &mut dyn FnMut(&dyn ColumnsSource),
    ) -> Result<ColumnsReport> {
        let start = Instant::now();
        let mut read = Duration::ZERO;
        let mut rounds = 0u64;
        let what = source.describe();
        // Series may appear as the source goes (groups): names are taken at the end.
        let mut sketches: Vec<Option<Sketch>> = Vec::new();
        let mut sketching = Duration::ZERO;
        let result = (|| {
            loop {
                let t = Instant::now();
                let next = source.next_columns()?;
                read += t.elapsed();
                let Some(pieces) = next else {
                    return Ok(());
                };
                // The round's f32 pieces go to the reducer together (on the GPU, one dispatch
                // for several series); the others, and those the CPU backend sketches in its
                // own pass, one by one.
                let mut segments: Vec<(u64, &[f32])> = Vec::new();
                for &(tag, piece) in &pieces {
                    if piece.is_empty() {
                        continue;
                    }
                    let sketch = self.sketch_bits.map(|bits| {
                        if sketches.len() <= tag {
                            sketches.resize(tag + 1, None);
                        }
                        sketches[tag].get_or_insert_with(|| Sketch::with_mantissa_bits(bits))
                    });
                    match (piece, sketch) {
                        (BatchRef::F32(v), mut sketch) => {
                            for c in v.chunks(self.batch_size) {
                                if let Some(s) = sketch.as_deref_mut() {
                                    if self.reducer.push_sketched_tagged(tag as u64, c, s)? {
                                        continue;
                                    }
                                    let t = Instant::now();
                                    s.add_f32_slice(c);
                                    sketching += t.elapsed();
                                }
                                segments.push((tag as u64, c));
                            }
                        }
                        (other, Some(s)) => {
                            self.note_host_kernels();
                            sketching += other.push_sketched_to(
                                &mut *self.reducer,
                                tag as u64,
                                self.batch_size,
                                s,
                            )?;
                        }
                        (other, None) => {
                            self.note_host_kernels();
                            other.push_to(&mut *self.reducer, tag as u64, self.batch_size)?;
                        }
                    }
                }
                self.reducer.push_segments(&segments)?;
                rounds += 1;
                observe(&*source);
            }
        })();
        if let Err(e) = result {
            let _ = self.reducer.finish_tagged();
            let _ = self.reducer.take_sketches();
            return Err(e);
        }
        let (parts, times) = self.reducer.finish_tagged()?;
        let t = Instant::now();
        // The series' sketches the reducer counted on its own (on the GPU: on the device).
        for (tag, s) in self.reducer.take_sketches() {
            let tag = tag as usize;
            if sketches.len() <= tag {
                sketches.resize(tag + 1, None);
            }
            match &mut sketches[tag] {
                Some(mine) => mine.absorb(&s),
                none => *none = Some(s),
            }
        }
        let names = source.columns();
        let mut partials = vec![Partial::EMPTY; names.len()];
        for (tag, p) in &parts {
            let name = names
                .get(*tag as usize)
                .map_or_else(|| tag.to_string(), |c| c.to_string());
            p.check_range(&format!("series {name}"))?;
        }
        for (tag, p) in parts {
            match partials.get_mut(tag as usize) {
                Some(slot) => *slot = p,
                None => {
                    return Err(Error::InvalidConfig(format!(
                        "{what} gave series {tag} of {}",
                        names.len()
                    )));
                }
            }
        }
        sketches.resize(names.len(), None);
        let (skipped, nulls) = (source.skipped(), source.nulls());
        let bits = self.sketch_bits;
        let columns = names
            .into_iter()
            .zip(partials)
            .zip(sketches)
            .enumerate()
            .map(|(i, ((column, partial), sketch))| ColumnStats {
                group: source.series_group(i),
                column,
                stats: partial.finish(self.ddof, self.skip_nan),
                partial,
                skipped: skipped.get(i).copied().unwrap_or(0),
                nulls: nulls.get(i).copied().unwrap_or(0),
                sketch: bits.map(|b| {
                    let mut s = sketch.unwrap_or_else(|| Sketch::with_mantissa_bits(b));
                    s.trim();
                    s
                }),
            })
            .collect();
        let info = self.reducer.info().clone();
        Ok(ColumnsReport {
            columns,
            excluded: source.excluded(),
            batches: BatchCounts {
                count: rounds,
                size: self.batch_size,
                workgroups: info.workgroups,
            },
            backend: info,
            timings: Timings {
                read,
                merge: times.merge + sketching + t.elapsed(),
                total: start.elapsed(),
                ..times
            },
        })
    }

    /// Reduces f64 values in micro-batches, in f64, without copying them.
    pub fn reduce_f64(&mut self, data: &[f64]) -> Result<Report> {
        self.reduce_ref(BatchRef::F64(data))
    }

    /// Reduces i64 values in micro-batches exactly (count, sum, min and max; `Stats::exact`),
    /// without copying them.
    pub fn reduce_i64(&mut self, data: &[i64]) -> Result<Report> {
        self.reduce_ref(BatchRef::Int(data, 0))
    }

    /// One slice of any element type, in micro-batches of the batch size.
    fn reduce_ref(&mut self, data: BatchRef<'_>) -> Result<Report> {
        if !matches!(data, BatchRef::F32(_)) {
            self.note_host_kernels();
        }
        let start = Instant::now();
        if let Err(e) = self.push_batch(0, data, self.batch_size) {
            let _ = self.reducer.finish();
            self.drop_sketch();
            return Err(e);
        }
        let batches = data.len().div_ceil(self.batch_size) as u64;
        self.finish(
            "the values",
            start,
            Duration::ZERO,
            batches,
            self.batch_size,
        )
    }

    /// The GPU backend reduces f64 and integer batches with the CPU kernels: say so once.
    fn note_host_kernels(&mut self) {
        if self.reducer.info().kind == BackendKind::Gpu && self.notice.is_none() {
            self.notice = Some(
                "f64 and integer values are reduced at their own precision by the CPU backend's kernels (the GPU kernel reads f32)"
                    .to_string(),
            );
        }
    }

    /// Reduces a slice in micro-batches, without copying it.
    pub fn reduce(&mut self, data: &[f32]) -> Result<Report> {
        self.reduce_ref(BatchRef::F32(data))
    }

    /// Reduces batches from your own iterator (each one of any length).
    pub fn reduce_batches<I, B>(&mut self, batches: I) -> Result<Report>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[f32]>,
    {
        self.try_reduce_batches(batches.into_iter().map(Ok::<B, std::convert::Infallible>))
    }

    /// Reduces batches from a producer that can fail (a socket, a decoder): the first `Err`
    /// stops the run with [`Error::Producer`] (its source the producer's error), and no
    /// statistics of the batches before it are returned as if they were the result.
    pub fn try_reduce_batches<I, B, E>(&mut self, batches: I) -> Result<Report>
    where
        I: IntoIterator<Item = std::result::Result<B, E>>,
        B: AsRef<[f32]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let start = Instant::now();
        let mut count = 0u64;
        let mut read = Duration::ZERO;
        let mut batches = batches.into_iter();
        loop {
            let t = Instant::now();
            let next = batches.next();
            read += t.elapsed();
            let batch = match next {
                None => break,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    let _ = self.reducer.finish();
                    self.drop_sketch();
                    return Err(Error::Producer {
                        after: count,
                        source: e.into(),
                    });
                }
            };
            let batch = batch.as_ref();
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = self.push_batch(0, BatchRef::F32(batch), self.batch_size) {
                let _ = self.reducer.finish();
                self.drop_sketch();
                return Err(e);
            }
            count += 1;
        }
        self.finish("the batches", start, read, count, self.batch_size)
    }

    fn finish(
        &mut self,
        what: &str,
        start: Instant,
        read: Duration,
        batches: u64,
        size: usize,
    ) -> Result<Report> {
        let (partial, times) = self.reducer.finish().inspect_err(|_| self.drop_sketch())?;
        partial
            .check_range(what)
            .inspect_err(|_| self.drop_sketch())?;
        let t = Instant::now();
        let stats = partial.finish(self.ddof, self.skip_nan);
        let sketching = self.sketch_time;
        let sketch = self.take_sketch();
        let merge = times.merge + sketching + t.elapsed();
        let info = self.reducer.info().clone();
        Ok(Report {
            sketch,
            stats,
            batches: BatchCounts {
                count: batches,
                size,
                workgroups: info.workgroups,
            },
            backend: info,
            timings: Timings {
                read,
                merge,
                total: start.elapsed(),
                ..times
            },
            partial,
        })
    }
}

fn validate(config: &EngineConfig) -> Result<()> {
    check_batch_size(config.batch_size)?;
    if config.workgroups == Some(0) {
        return Err(Error::OutOfRange {
            setting: "workgroups",
            value: 0,
            min: 1,
            max: u64::from(u32::MAX),
            on: None,
        });
    }
    Ok(())
}

/// The one check of a batch size (engine, GPU reducer, bench): at least one element.
pub(crate) fn check_batch_size(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::OutOfRange {
            setting: "batch_size",
            value: 0,
            min: 1,
            max: usize::MAX as u64,
            on: None,
        });
    }
    Ok(())
}

/// An incremental reduction on an [`Engine`] ([`Engine::accumulate`]): batches pushed as they
/// come, running statistics on demand. Reading them waits for the batches pushed so far (on the
/// GPU, a readback): read them as often as you need them, not after every batch. Dropping it
/// discards what was pushed; the engine is ready for other work either way.
pub struct Accumulator<'e> {
    engine: &'e mut Engine,
    /// Everything finished so far.
    partial: Partial,
    times: Timings,
    batches: u64,
    /// Batches pushed since the last finish.
    pending: bool,
    start: Instant,
    /// The first error: after it the accumulator refuses everything.
    failed: Option<String>,
}

impl std::fmt::Debug for Accumulator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accumulator")
            .field("batches", &self.batches)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Accumulator<'_> {
    /// Pushes f32 values (any length: cut to the engine's batch size).
    pub fn push(&mut self, batch: &[f32]) -> Result<()> {
        self.push_ref(BatchRef::F32(batch))
    }

    /// Pushes f64 values, reduced in f64.
    pub fn push_f64(&mut self, batch: &[f64]) -> Result<()> {
        self.push_ref(BatchRef::F64(batch))
    }

    /// Pushes i64 values, reduced exactly.
    pub fn push_i64(&mut self, batch: &[i64]) -> Result<()> {
        self.push_ref(BatchRef::Int(batch, 0))
    }

    /// Pushes one batch; after a failure the accumulator refuses everything (what it held
    /// may be incomplete).
    fn push_ref(&mut self, batch: BatchRef<'_>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::Poisoned(e.clone()));
        }
        if !matches!(batch, BatchRef::F32(_)) {
            self.engine.note_host_kernels();
        }
        self.pending = true;
        let engine = &mut *self.engine;
        let max = engine.batch_size;
        engine.push_batch(0, batch, max).inspect_err(|e| {
            self.failed = Some(e.to_string());
            let _ = engine.reducer.finish();
            engine.drop_sketch();
            self.pending = false;
        })?;
        self.batches += 1;
        Ok(())
    }

    /// The merged partial of everything pushed so far (waits for it to be reduced).
    pub fn partial(&mut self) -> Result<Partial> {
        if let Some(e) = &self.failed {
            return Err(Error::Poisoned(e.clone()));
        }
        if self.pending {
            self.pending = false;
            let (p, t) = self.engine.reducer.finish().inspect_err(|e| {
                self.failed = Some(e.to_string());
            })?;
            // A finish ends the reducer's stream: what it sketched on its own joins the run's
            // sketch now, before the next batches start another.
            self.engine.absorb_reducer_sketches();
            self.partial.merge(&p);
            self.times += t;
        }
        Ok(self.partial)
    }

    /// The statistics of everything pushed so far, with the engine's `ddof` and `skip_nan`.
    pub fn stats(&mut self) -> Result<Stats> {
        let p = self.partial()?;
        p.check_range("the values pushed")?;
        Ok(p.finish(self.engine.ddof, self.engine.skip_nan))
    }

    /// The report of everything pushed (stage times summed over the accumulator's life).
    pub fn finish(mut self) -> Result<Report> {
        let partial = self.partial()?;
        partial.check_range("the values pushed")?;
        let t = Instant::now();
        let stats = partial.finish(self.engine.ddof, self.engine.skip_nan);
        let sketching = self.engine.sketch_time;
        let sketch = self.engine.take_sketch();
        let info = self.engine.reducer.info().clone();
        Ok(Report {
            sketch,
            stats,
            batches: BatchCounts {
                count: self.batches,
                size: self.engine.batch_size,
                workgroups: info.workgroups,
            },
            backend: info,
            timings: Timings {
                merge: self.times.merge + sketching + t.elapsed(),
                total: self.start.elapsed(),
                ..self.times
            },
            partial,
        })
    }
}

impl Drop for Accumulator<'_> {
    fn drop(&mut self) {
        if self.pending {
            let _ = self.engine.reducer.finish();
        }
        self.engine.drop_sketch();
    }
}

/// Which GPU adapter [`Engine::new`] opens.
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
enum Adapter<'a> {
    Named(&'a str),
    Any,
    /// A hardware one (not llvmpipe/lavapipe).
    Hardware,
}

#[cfg(feature = "gpu")]
fn open_gpu(config: &EngineConfig, adapter: Adapter<'_>) -> Result<Box<dyn BatchReducer + Send>> {
    let selector = match adapter {
        Adapter::Named(name) => AdapterSelector::named(name.to_string()),
        Adapter::Any => AdapterSelector::any(),
        Adapter::Hardware => AdapterSelector::hardware(),
    };
    let ctx = GpuContext::new(&selector)?;
    Ok(Box::new(GpuReducer::new(&ctx, gpu_config(config)?)?))
}

#[cfg(not(feature = "gpu"))]
fn open_gpu(_: &EngineConfig, _: Adapter<'_>) -> Result<Box<dyn BatchReducer + Send>> {
    Err(Error::GpuNotBuilt)
}

#[cfg(feature = "gpu")]
fn gpu_config(config: &EngineConfig) -> Result<GpuConfig> {
    let mut gpu = GpuConfig::new(config.batch_size);
    gpu.workgroups = config.workgroups;
    // Where quantile sketches are counted, for measuring one against the other on a card.
    gpu.device_sketch = match std::env::var("MICROBATCH_GPU_SKETCH").as_deref() {
        Err(_) | Ok("" | "auto") => None,
        Ok("device") => Some(true),
        Ok("host") => Some(false),
        Ok(other) => {
            return Err(Error::InvalidConfig(format!(
                "MICROBATCH_GPU_SKETCH={other:?}: say device, host or auto"
            )));
        }
    };
    Ok(gpu)
}

impl ComputeClock {
    /// How the clock is named in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeClock::Timestamps => "gpu timestamps",
            ComputeClock::Wall => "wall clock",
        }
    }
}
