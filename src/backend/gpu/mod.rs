//! The GPU backend: micro-batches through `shaders/reduce_common.wgsl` (and an entry point) with wgpu.
//!
//! Long-lived state (pipeline, a ring of input buffers, the partials buffer, the query set) is
//! built once in [`GpuReducer::new`]; each batch only writes its bytes, dispatches P workgroups
//! and records where its partials went. Partials stay on the device and are read back in one map
//! per window of up to [`MAX_DISPATCHES_PER_READBACK`] dispatches, so no batch waits on a readback.

mod context;
mod kernel;
mod readback;
mod resident;
mod ring;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use context::{AdapterReport, AdapterSelector, GpuContext, list_adapters};
use kernel::{GpuParams, GpuPartial};
pub use kernel::{
    KernelShape, MAX_THREAD_TILES, MAX_VEC_PER_THREAD, WORKGROUP_SIZE, default_workgroups,
};
use kernel::{PARTIAL_BYTES, input_binding, storage_entry};
pub(crate) use kernel::{default_vec_per_thread, reduce_wgsl};
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
    layout: wgpu::BindGroupLayout,
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
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
    window: Vec<DispatchRecord>,
    partials_used: u32,
    acc: Tagged,
    times: Timings,
    /// Host time spent on f64 and integer batches (reduced by the CPU kernels), added at finish.
    host_times: Timings,
    wall_compute_start: Option<Instant>,
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
        crate::engine::check_batch_size(config.batch_size)?;
        let limits = &ctx.limits;
        let max_wg = limits.max_compute_workgroups_per_dimension;
        let workgroups = config
            .workgroups
            .unwrap_or_else(|| default_workgroups(&ctx.report));
        if workgroups == 0 || workgroups > max_wg {
            return Err(Error::OutOfRange {
                setting: "workgroups",
                value: workgroups.into(),
                min: 1,
                max: max_wg.into(),
                on: Some(ctx.report.name.clone()),
            });
        }
        let vec_per_thread = config
            .vec_per_thread
            .unwrap_or_else(|| default_vec_per_thread(&ctx.report));
        if !(1..=MAX_VEC_PER_THREAD).contains(&vec_per_thread) {
            return Err(Error::OutOfRange {
                setting: "vec_per_thread",
                value: vec_per_thread.into(),
                min: 1,
                max: MAX_VEC_PER_THREAD.into(),
                on: None,
            });
        }
        if !ctx.report.f64 {
            return Err(Error::GpuUnsupported {
                adapter: ctx.report.name.clone(),
                missing: "SHADER_F64 (f64 arithmetic in shaders)".to_string(),
            });
        }
        let subgroups = match config.subgroups {
            // The tree was as fast or faster in every shape measured on an H100 (BENCHMARKS.md,
            // issue 10): subgroup shuffles of f64 state are no cheaper than workgroup memory.
            None => false,
            Some(true) if !ctx.subgroups => {
                return Err(Error::GpuUnsupported {
                    adapter: ctx.report.name.clone(),
                    missing: "SUBGROUP (subgroup operations in compute shaders)".to_string(),
                });
            }
            Some(wanted) => wanted,
        };
        let shape = KernelShape {
            workgroup_size: WORKGROUP_SIZE,
            vec_per_thread,
            subgroups,
            subgroup_sizes: (ctx.report.subgroup_min_size, ctx.report.subgroup_max_size),
        };
        // Per invocation: a u32 count, a vec2<f64> sum, an f64 M2 and five u32.
        let wg_storage = 48 * WORKGROUP_SIZE;
        if WORKGROUP_SIZE > limits.max_compute_invocations_per_workgroup
            || WORKGROUP_SIZE > limits.max_compute_workgroup_size_x
            || wg_storage > limits.max_compute_workgroup_storage_size
        {
            return Err(Error::GpuUnsupported {
                adapter: ctx.report.name.clone(),
                missing: format!(
                    "room for workgroups of {WORKGROUP_SIZE} invocations with {wg_storage} bytes of workgroup memory"
                ),
            });
        }

        // The most bytes one dispatch may bind: the adapter's binding and buffer limits, rounded
        // down to whole vec4s. A larger batch is split over several dispatches.
        let mut bind_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        // Element indices in the shader are u32: 1 GiB per dispatch keeps `i * 4` far from overflow.
        bind_limit = bind_limit.min(1 << 30);
        if let Some(cap) = config.max_binding_bytes {
            bind_limit = bind_limit.min(cap);
        }
        let bind_limit_elems = (bind_limit / 16 * 4) as usize;
        if bind_limit_elems == 0 {
            return Err(Error::OutOfRange {
                setting: "max_binding_bytes",
                value: bind_limit,
                min: 16,
                max: 1 << 30,
                on: Some(ctx.report.name.clone()),
            });
        }
        let chunk_elems = config.batch_size.next_multiple_of(4).min(bind_limit_elems);

        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some("microbatch.reduce"),
            source: wgpu::ShaderSource::Wgsl(reduce_wgsl(subgroups).into()),
        };
        // SAFETY: the kernel needs neither of the checks wgpu would add (measured on an H200,
        // they cost a third of its throughput; BENCHMARKS.md):
        // - bounds: every `input` index is below `params.len / 4` (or is the vec4 holding the
        //   last partial one), and the host binds at least `params.len` elements rounded up to
        //   a vec4 (`dispatch`, `upload`); `partials[out_base + wid]` stays below the buffer's
        //   capacity because `window_full` reads back before it would not; workgroup arrays are
        //   indexed by invocation or subgroup index, both below WG_SIZE.
        // - loop bounding: every loop steps a u32 index by a positive stride towards a bound
        //   below 2^26 (1 GiB of vec4s), with strides below 2^31, so none can wrap or spin.
        let module = unsafe {
            device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("microbatch.reduce.layout"),
            entries: &[
                storage_entry(0, true),
                storage_entry(1, false),
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: wgpu::BufferSize::new(16),
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("microbatch.reduce.pipeline_layout"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let constants = [
            ("WG_SIZE", f64::from(WORKGROUP_SIZE)),
            ("VEC_PER_THREAD", f64::from(vec_per_thread)),
        ];
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("microbatch.reduce"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("reduce"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });

        let partials_capacity = (workgroups as usize * 64).max(1 << 16) as u32;
        let partials = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("microbatch.partials"),
            size: u64::from(partials_capacity) * PARTIAL_BYTES,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let partials_readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("microbatch.partials.readback"),
            size: u64::from(partials_capacity) * PARTIAL_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let queries = ctx.timestamps.then(|| {
            let count = 2 * MAX_DISPATCHES_PER_READBACK as u32;
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("microbatch.timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let bytes = u64::from(count) * 8;
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("microbatch.timestamps.resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("microbatch.timestamps.readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, readback)
        });

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
            layout,
            ring: Vec::with_capacity(RING),
            next_slot: 0,
            chunk_elems,
            batch_size: config.batch_size,
            partials,
            partials_capacity,
            partials_readback,
            queries,
            window: Vec::new(),
            partials_used: 0,
            acc: Tagged::default(),
            times: Timings {
                compute_clock,
                ..Timings::default()
            },
            host_times: Timings::default(),
            wall_compute_start: None,
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
        self.read_back()?;
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
