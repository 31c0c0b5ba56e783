//! Backends: the GPU (wgpu + `shaders/reduce_common.wgsl`) and the CPU, behind one trait.

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::stats::Partial;

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;

pub use crate::report::Timings;

/// Which kind of backend ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// wgpu on an adapter (hardware GPU, or a software one such as lavapipe when asked for).
    Gpu,
    /// The native multi-threaded CPU backend.
    Cpu,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Gpu => "gpu",
            BackendKind::Cpu => "cpu",
        })
    }
}

/// What ran a reduction: reported with every result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// GPU or CPU.
    pub kind: BackendKind,
    /// Adapter name (GPU) or processor model and thread count (CPU).
    pub adapter: String,
    /// Graphics API (`Vulkan`, `Metal`, `Dx12`) or `native` for the CPU.
    pub api: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` (a software adapter), or `Cpu` for the CPU backend.
    pub device_type: String,
    /// The parallel processors P: workgroups per dispatch on the GPU, threads on the CPU.
    pub workgroups: u32,
}

/// How the compute stage was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeClock {
    /// GPU timestamp queries around each dispatch.
    Timestamps,
    /// Host wall time (CPU backend, or an adapter without timestamp queries).
    #[default]
    Wall,
}

/// Partials kept apart by tag: what a reducer returns from [`BatchReducer::finish_tagged`].
/// In first-seen order, found by tag through an index (a pass over many columns or axis lanes
/// pushes as many tags).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tagged {
    parts: Vec<(u64, Partial)>,
    index: std::collections::HashMap<u64, usize>,
}

impl Tagged {
    /// Merges `p` into the partial of `tag`.
    pub(crate) fn merge(&mut self, tag: u64, p: &Partial) {
        match self.index.get(&tag) {
            Some(&i) => self.parts[i].1.merge(p),
            None => {
                self.index.insert(tag, self.parts.len());
                self.parts.push((tag, *p));
            }
        }
    }

    /// Every tag's partial, in first-seen order, leaving this empty.
    pub(crate) fn take(&mut self) -> Vec<(u64, Partial)> {
        self.index.clear();
        std::mem::take(&mut self.parts)
    }
}

/// A borrowed micro-batch at either precision (see [`crate::source::Element`]).
#[derive(Debug, Clone, Copy)]
pub enum BatchRef<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f64 values, reduced in f64.
    F64(&'a [f64]),
    /// Integers (each stored as value − the offset), reduced exactly.
    Int(&'a [i64], i128),
}

impl BatchRef<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            BatchRef::F32(v) => v.len(),
            BatchRef::F64(v) => v.len(),
            BatchRef::Int(v, _) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes the batch to `reducer` under `tag`, in pieces of at most `max` values.
    pub fn push_to(
        &self,
        reducer: &mut (impl BatchReducer + ?Sized),
        tag: u64,
        max: usize,
    ) -> Result<()> {
        match self {
            BatchRef::F32(v) => v.chunks(max).try_for_each(|c| reducer.push_tagged(tag, c)),
            BatchRef::F64(v) => v
                .chunks(max)
                .try_for_each(|c| reducer.push_f64_tagged(tag, c)),
            BatchRef::Int(v, off) => v
                .chunks(max)
                .try_for_each(|c| reducer.push_int_tagged(tag, c, *off)),
        }
    }

    /// [`BatchRef::push_to`], adding the values to `sketch` as well: in the reducer's own pass
    /// over them where it can ([`BatchReducer::push_sketched_tagged`]), else here before each
    /// push. Returns the time spent sketching here.
    pub fn push_sketched_to(
        &self,
        reducer: &mut (impl BatchReducer + ?Sized),
        tag: u64,
        max: usize,
        sketch: &mut crate::sketch::Sketch,
    ) -> Result<std::time::Duration> {
        let mut apart = std::time::Duration::ZERO;
        if let BatchRef::F32(v) = self {
            for c in v.chunks(max) {
                if !reducer.push_sketched_tagged(tag, c, sketch)? {
                    let t = std::time::Instant::now();
                    sketch.add_f32_slice(c);
                    apart += t.elapsed();
                    reducer.push_tagged(tag, c)?;
                }
            }
        } else {
            let t = std::time::Instant::now();
            sketch.add(*self);
            apart += t.elapsed();
            self.push_to(reducer, tag, max)?;
        }
        Ok(apart)
    }
}

/// A backend that reduces a stream of micro-batches.
///
/// `push` may return before the batch is reduced (the GPU pipelines its work); `finish` waits for
/// everything pushed, returns the merged partial and the stage times, and leaves the reducer ready
/// for a new stream. Batches pushed with different tags ([`BatchReducer::push_tagged`]) are
/// pipelined together but never mixed: [`BatchReducer::finish_tagged`] returns each tag's own
/// partial (the server reduces many clients' batches this way).
pub trait BatchReducer {
    /// What this reducer runs on.
    fn info(&self) -> &BackendInfo;
    /// Reduces (or enqueues) one micro-batch whose partial is kept under `tag`. The slice is not
    /// kept past the call.
    fn push_tagged(&mut self, tag: u64, batch: &[f32]) -> Result<()>;
    /// Reduces (or enqueues) one micro-batch of f64 values, in f64, kept under `tag`.
    fn push_f64_tagged(&mut self, tag: u64, batch: &[f64]) -> Result<()>;
    /// Reduces one micro-batch of integers, each stored as value − `offset`, exactly, kept
    /// under `tag`.
    fn push_int_tagged(&mut self, tag: u64, batch: &[i64], offset: i128) -> Result<()>;
    /// Waits for all pushed batches and returns each tag's partial (in first-pushed order) and
    /// the stage times.
    fn finish_tagged(&mut self) -> Result<(Vec<(u64, Partial)>, Timings)>;
    /// Reduces (or enqueues) one micro-batch under `tag` and counts its values into a
    /// quantile sketch of `sketch`'s accuracy in the same pass, where this reducer can:
    /// `Ok(true)`. The CPU backend adds them to `sketch` itself, in the moments' pass over
    /// memory; the GPU backend counts them on the device into its own sketch for `tag`, which
    /// [`BatchReducer::take_sketches`] gives after the next [`BatchReducer::finish_tagged`]
    /// (the caller merges it into `sketch`'s). `Ok(false)`: it cannot, and did nothing; the
    /// caller adds the batch to the sketch itself and pushes it.
    fn push_sketched_tagged(
        &mut self,
        tag: u64,
        batch: &[f32],
        sketch: &mut crate::sketch::Sketch,
    ) -> Result<bool> {
        let _ = (tag, batch, sketch);
        Ok(false)
    }
    /// The sketches counted by [`BatchReducer::push_sketched_tagged`] into the reducer's own
    /// (the GPU backend's), one per tag, of the stream the last `finish_tagged` (or `finish`)
    /// ended; empty after a stream that failed, and once taken. The default: none.
    fn take_sketches(&mut self) -> Vec<(u64, crate::sketch::Sketch)> {
        Vec::new()
    }
    /// Reduces (or enqueues) several series' micro-batches, each under its tag: the GPU backend
    /// reduces them side by side in one dispatch where they fit (a segmented reduction);
    /// others push them one by one (the default).
    fn push_segments(&mut self, pieces: &[(u64, &[f32])]) -> Result<()> {
        pieces
            .iter()
            .try_for_each(|&(tag, piece)| self.push_tagged(tag, piece))
    }
    /// Reduces (or enqueues) one micro-batch. The slice is not kept past the call.
    fn push(&mut self, batch: &[f32]) -> Result<()> {
        self.push_tagged(0, batch)
    }
    /// Reduces (or enqueues) one micro-batch of f64 values, in f64.
    fn push_f64(&mut self, batch: &[f64]) -> Result<()> {
        self.push_f64_tagged(0, batch)
    }
    /// The batch size the reducer was built for (a [`crate::GpuReducer`]'s buffers), if any:
    /// [`crate::Engine::with_reducer`] cuts its inputs to it.
    fn batch_size(&self) -> Option<usize> {
        None
    }
    /// Waits for all pushed batches and returns their merged partial and stage times.
    fn finish(&mut self) -> Result<(Partial, Timings)> {
        let (parts, times) = self.finish_tagged()?;
        let mut all = Partial::EMPTY;
        for (_, p) in &parts {
            all.merge(p);
        }
        Ok((all, times))
    }
}
