//! The GPU backend: micro-batches through `shaders/reduce_common.wgsl` (and an entry point) with wgpu.
//!
//! Long-lived state (pipeline, a ring of input buffers, the partials buffer, the query set) is
//! built once in [`GpuReducer::new`]; each batch only writes its bytes, dispatches P workgroups
//! and records where its partials went. Partials stay on the device and are read back in one map
//! per window of up to [`MAX_DISPATCHES_PER_READBACK`] dispatches, so no batch waits on a readback.

mod context;
mod kernel;
mod pinned;
mod readback;
mod resident;
mod ring;
mod sketch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use context::{AdapterReport, AdapterSelector, GpuContext, list_adapters};
pub(crate) use kernel::default_vec_per_thread;
use kernel::{GpuParams, GpuPartial};
pub use kernel::{
    KernelShape, Loads, MAX_SEGMENTS, MAX_THREAD_TILES, MAX_VEC_PER_THREAD, SlowPath,
    WORKGROUP_SIZE, default_workgroups,
};
use kernel::{PARTIAL_BYTES, input_binding};
pub use pinned::Staging;
pub use resident::GpuResident;
pub(crate) use ring::copy_parallel;
use ring::{DispatchRecord, RingSlot};

use super::{BackendInfo, BackendKind, BatchReducer, ComputeClock, Tagged, Timings};
use crate::stats::Partial;
use crate::{Error, Result};

/// Input buffers in the ring: while the device reduces one, the host fills the next.
const RING: usize = 3;

/// Dispatches whose partials and timestamps are collected before one readback.
pub const MAX_DISPATCHES_PER_READBACK: usize = 1024;

/// How a [`GpuReducer`] splits and dispatches its work. Start from [`GpuConfig::new`] and set the
/// fields you need (more may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuConfig {
    /// Largest batch the reducer will be pushed, in elements (sizes the input ring).
    pub batch_size: usize,
    /// Workgroups per dispatch (P). `None`: [`default_workgroups`] for the adapter.
    pub workgroups: Option<u32>,
    /// Caps the bytes bound per dispatch below the adapter's storage-binding limit (tests use it
    /// to exercise the split path on small data). `None`: the adapter's limit.
    pub max_binding_bytes: Option<u64>,
    /// vec4 loads each thread issues per loop iteration (the shader's `VEC_PER_THREAD`).
    /// `None`: a default per adapter ([`MAX_VEC_PER_THREAD`] on software adapters, 8 on GPUs).
    pub vec_per_thread: Option<u32>,
    /// Whether workgroups combine with subgroup operations. `None`: the tree (measured as fast
    /// or faster); `Some(false)`: the workgroup-memory tree; `Some(true)`: an error without them.
    pub subgroups: Option<bool>,
    /// How the kernel's whole-tile loads are written. `None`: [`Loads::Loop`].
    pub loads: Option<Loads>,
    /// Where the kernel's slow path runs. `None`: [`SlowPath::Inline`].
    pub slow_path: Option<SlowPath>,
    /// Where streamed batches are staged. `None`: [`Staging::Auto`].
    pub staging: Option<Staging>,
    /// Whether quantile sketches are counted on the device
    /// ([`BatchReducer::push_sketched_tagged`]). `None`: on GPUs, not on software adapters
    /// (lavapipe emulates the atomic increments on the CPU: measured 8× slower there than the
    /// host's histogram). The engine takes it from `MICROBATCH_GPU_SKETCH` (device, host, auto).
    pub device_sketch: Option<bool>,
}

impl GpuConfig {
    /// Batches of up to `batch_size` elements, default P, the adapter's binding limit.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            workgroups: None,
            max_binding_bytes: None,
            vec_per_thread: None,
            subgroups: None,
            loads: None,
            slow_path: None,
            staging: None,
            device_sketch: None,
        }
    }
}

/// The GPU backend as a [`BatchReducer`].
pub struct GpuReducer {
    /// Unique per reducer: what a [`GpuResident`] is bound to.
    id: u64,
    ctx: GpuContext,
    info: BackendInfo,
    shape: KernelShape,
    pipeline: wgpu::ComputePipeline,
    /// The deferred slow path's second dispatch ([`SlowPath::Deferred`]).
    fixup: Option<wgpu::ComputePipeline>,
    layout: wgpu::BindGroupLayout,
    /// Pinned staging's memory type, when the ring stages in pinned memory (else BAR).
    pinned: Option<pinned::PinnedMemory>,
    /// Up to RING slots, created on first use and grown on demand (so a small input never
    /// allocates a whole batch's worth of buffers).
    ring: Vec<RingSlot>,
    next_slot: usize,
    /// Elements bound per dispatch (multiple of 4).
    chunk_elems: usize,
    /// The batch size it was built for.
    batch_size: usize,
    partials: wgpu::Buffer,
    partials_capacity: u32,
    partials_readback: wgpu::Buffer,
    queries: Option<readback::Queries>,
    /// Each dispatched series' partials since the last readback (several per dispatch when
    /// it was segmented).
    window: Vec<DispatchRecord>,
    /// Dispatches (compute passes, each with a timestamp pair) since the last readback.
    passes: u32,
    partials_used: u32,
    acc: Tagged,
    times: Timings,
    /// Host time spent on f64 and integer batches (reduced by the CPU kernels), added at finish.
    host_times: Timings,
    wall_compute_start: Option<Instant>,
    /// Whether sketches are counted on the device ([`GpuConfig::device_sketch`], resolved).
    device_sketch: bool,
    /// The device's quantile histograms, made on the first sketched batch.
    sketcher: Option<sketch::GpuSketcher>,
}

impl std::fmt::Debug for GpuReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuReducer")
            .field("info", &self.info)
            .field("chunk_elems", &self.chunk_elems)
            .finish_non_exhaustive()
    }
}

impl GpuReducer {
    /// Builds the pipeline and buffers for batches of up to `config.batch_size` elements.
    pub fn new(ctx: &GpuContext, config: GpuConfig) -> Result<Self> {
        let (shape, workgroups, chunk_elems) = kernel::check(ctx, &config)?;
        let pinned = match config.staging.unwrap_or_default() {
            Staging::Bar => None,
            Staging::Pinned => {
                Some(pinned::probe(ctx).map_err(|missing| Error::GpuUnsupported {
                    adapter: ctx.report.name.clone(),
                    missing,
                })?)
            }
            // Where DMA from host memory can beat host stores across the bus: a discrete GPU
            // with host memory outside the BAR.
            Staging::Auto => pinned::probe(ctx)
                .ok()
                .filter(|m| m.host_only && ctx.report.device_type == "DiscreteGpu"),
        };
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let (pipeline, fixup, layout) = kernel::pipeline(ctx, &shape);
        let (partials, partials_capacity, partials_readback, queries) =
            readback::buffers(ctx, workgroups);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: format!("building the reduction pipeline on {}", ctx.report.name),
                message: e.to_string(),
            });
        }
        ctx.take_error("building the reduction pipeline")?;

        let info = BackendInfo {
            kind: BackendKind::Gpu,
            adapter: ctx.report.name.clone(),
            api: ctx.report.api.clone(),
            device_type: ctx.report.device_type.clone(),
            workgroups,
        };
        let compute_clock = if ctx.timestamps {
            ComputeClock::Timestamps
        } else {
            ComputeClock::Wall
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ctx: ctx.clone(),
            info,
            shape,
            pipeline,
            fixup,
            layout,
            pinned,
            ring: Vec::with_capacity(RING),
            next_slot: 0,
            chunk_elems,
            batch_size: config.batch_size,
            partials,
            partials_capacity,
            partials_readback,
            queries,
            window: Vec::new(),
            passes: 0,
            partials_used: 0,
            acc: Tagged::default(),
            times: Timings {
                compute_clock,
                ..Timings::default()
            },
            host_times: Timings::default(),
            wall_compute_start: None,
            device_sketch: config.device_sketch.unwrap_or(!ctx.report.software),
            sketcher: None,
        })
    }

    /// Elements bound per dispatch: the batch size, or less where the adapter's storage-binding
    /// limit forces a batch to be split.
    pub fn chunk_elems(&self) -> usize {
        self.chunk_elems
    }

    /// How the kernel was specialised for this adapter.
    pub fn shape(&self) -> KernelShape {
        self.shape
    }

    /// Where streamed batches are staged: [`Staging::Bar`] or [`Staging::Pinned`] (what
    /// [`Staging::Auto`] chose).
    pub fn staging(&self) -> Staging {
        if self.pinned.is_some() {
            Staging::Pinned
        } else {
            Staging::Bar
        }
    }
}

impl BatchReducer for GpuReducer {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn batch_size(&self) -> Option<usize> {
        Some(self.batch_size)
    }

    fn push_tagged(&mut self, tag: u64, batch: &[f32]) -> Result<()> {
        for chunk in batch.chunks(self.chunk_elems) {
            self.dispatch(chunk, tag)?;
        }
        Ok(())
    }

    /// The batch's quantile sketch counted on the device, in the batch's own compute pass over
    /// the uploaded values (`shaders/histogram.wgsl`): for sketches of at most
    /// 8 mantissa bits (0.2 % error, the CPU's dense histogram's limit too) and up to 8 series
    /// at once; others are left to the caller (`Ok(false)`).
    fn push_sketched_tagged(
        &mut self,
        tag: u64,
        batch: &[f32],
        sketch: &mut crate::sketch::Sketch,
    ) -> Result<bool> {
        let m = sketch.mantissa_bits;
        if !self.device_sketch || m > crate::sketch::DENSE_MAX_BITS {
            return Ok(false);
        }
        match &self.sketcher {
            Some(s) if s.mantissa_bits() == m => {}
            Some(s) if !s.idle() => return Ok(false),
            _ => self.sketcher = Some(sketch::GpuSketcher::new(&self.ctx, m)?),
        }
        let Some(slot) = self.sketcher.as_mut().and_then(|s| s.slot(tag)) else {
            return Ok(false);
        };
        for chunk in batch.chunks(self.chunk_elems) {
            if self
                .sketcher
                .as_ref()
                .is_some_and(|s| s.must_fold_before(chunk.len()))
            {
                self.read_back()?;
            }
            self.dispatch_pieces(&[(tag, chunk)], Some(slot))?;
        }
        Ok(true)
    }

    fn take_sketches(&mut self) -> Vec<(u64, crate::sketch::Sketch)> {
        self.sketcher
            .as_mut()
            .map(sketch::GpuSketcher::take)
            .unwrap_or_default()
    }

    /// Several series in as few dispatches as fit: up to [`MAX_SEGMENTS`] pieces and
    /// `chunk_elems` values (each piece padded to whole vec4s) per dispatch, a segmented
    /// reduction in which each piece gets the workgroups a dispatch of its own would.
    fn push_segments(&mut self, pieces: &[(u64, &[f32])]) -> Result<()> {
        let mut group: Vec<(u64, &[f32])> = Vec::with_capacity(MAX_SEGMENTS);
        let mut vec4s = 0usize;
        let room = self.chunk_elems / 4;
        for &(tag, piece) in pieces {
            for chunk in piece.chunks(self.chunk_elems) {
                let need = chunk.len().div_ceil(4);
                if group.len() == MAX_SEGMENTS || vec4s + need > room {
                    self.dispatch_segments(&group)?;
                    group.clear();
                    vec4s = 0;
                }
                group.push((tag, chunk));
                vec4s += need;
            }
        }
        if !group.is_empty() {
            self.dispatch_segments(&group)?;
        }
        Ok(())
    }

    /// f64 batches are reduced by the CPU backend's f64 kernel on the host, in f64 (the shader
    /// reads f32; an f64 kernel is issue 13's work): the statistics keep their precision, and
    /// the engine says so ([`crate::Engine::notice`]).
    fn push_f64_tagged(&mut self, tag: u64, batch: &[f64]) -> Result<()> {
        let start = Instant::now();
        let p = super::cpu::reduce_slice_f64(batch);
        let mid = Instant::now();
        self.acc.merge(tag, &p);
        self.host_times.compute += mid - start;
        self.host_times.merge += mid.elapsed();
        Ok(())
    }

    /// Integer batches are reduced exactly by the CPU backend's integer kernel on the host, like
    /// f64 batches.
    fn push_int_tagged(&mut self, tag: u64, batch: &[i64], offset: i128) -> Result<()> {
        let start = Instant::now();
        let p = super::cpu::reduce_slice_int(batch, offset);
        let mid = Instant::now();
        self.acc.merge(tag, &p);
        self.host_times.compute += mid - start;
        self.host_times.merge += mid.elapsed();
        Ok(())
    }

    fn finish_tagged(&mut self) -> Result<(Vec<(u64, Partial)>, Timings)> {
        let read = self.read_back();
        if let Some(s) = &mut self.sketcher {
            s.end_stream(read.is_ok());
        }
        read?;
        let clock = self.times.compute_clock;
        let mut times = std::mem::replace(
            &mut self.times,
            Timings {
                compute_clock: clock,
                ..Timings::default()
            },
        );
        let host = std::mem::take(&mut self.host_times);
        times += host;
        Ok((self.acc.take(), times))
    }
}
