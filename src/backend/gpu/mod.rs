//! The GPU backend: micro-batches through `shaders/reduce_common.wgsl` (and an entry point) with wgpu.
//!
//! Long-lived state (pipeline, a ring of input buffers, the partials buffer, the query set) is
//! built once in [`GpuReducer::new`]; each batch only writes its bytes, dispatches P workgroups
//! and records where its partials went. Partials stay on the device and are read back in one map
//! per window of up to [`MAX_DISPATCHES_PER_READBACK`] dispatches, so no batch waits on a readback.

mod context;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};

pub use context::{AdapterReport, AdapterSelector, GpuContext, list_adapters};

use super::{BackendInfo, BackendKind, BatchReducer, ComputeClock, StageTimes, Tagged};
use crate::numerics::{PivotMoments, from_order_key};
use crate::stats::Partial;
use crate::{Error, Result};

/// The reduction kernel's common part, compiled into the binary from `shaders/`.
const REDUCE_COMMON_WGSL: &str = include_str!("../../../shaders/reduce_common.wgsl");
/// Entry point combining a workgroup through a tree in workgroup memory (any adapter).
const REDUCE_TREE_WGSL: &str = include_str!("../../../shaders/reduce_tree.wgsl");
/// Entry point combining a workgroup with subgroup operations (adapters with `SUBGROUP`).
const REDUCE_SUBGROUP_WGSL: &str = include_str!("../../../shaders/reduce_subgroup.wgsl");

/// The full WGSL source of the reduction kernel, with the subgroup or the tree entry point.
/// (Naga 30 enables subgroup built-ins with the device feature and rejects the standard
/// `enable subgroups;` directive, so there is none.)
pub(crate) fn reduce_wgsl(subgroups: bool) -> String {
    if subgroups {
        format!("{REDUCE_COMMON_WGSL}\n{REDUCE_SUBGROUP_WGSL}")
    } else {
        format!("{REDUCE_COMMON_WGSL}\n{REDUCE_TREE_WGSL}")
    }
}

/// Invocations per workgroup (the shader's `WG_SIZE` override). 256 is a multiple of every
/// subgroup size in use and needs 8 KiB of workgroup memory, half the WebGPU minimum.
pub const WORKGROUP_SIZE: u32 = 256;

/// Largest `VEC_PER_THREAD` the kernel's register tile holds (`MAX_VPT` in the shader).
pub const MAX_VEC_PER_THREAD: u32 = 16;

/// Most tiles one thread reduces per dispatch. A thread's T = Σ(x − P) and Q = Σ(x − P)² are
/// f64 running sums around its first tile's pivot, whose rounding errors grow with the number
/// of tiles k: the sum's as k·(k + 1)·ε·Σ|x|, M2's as (k + 20)·(k + 1)·ε·M2 in the worst case,
/// at 32 tiles 1.2e-13 and 2e-13 (src/numerics.rs). A batch gets enough workgroups for that.
pub const MAX_THREAD_TILES: u64 = 32;

/// Input buffers in the ring: while the device reduces one, the host fills the next.
const RING: usize = 3;

/// Dispatches whose partials and timestamps are collected before one readback.
pub const MAX_DISPATCHES_PER_READBACK: usize = 1024;

/// Size of one [`GpuPartial`] in bytes.
const PARTIAL_BYTES: u64 = std::mem::size_of::<GpuPartial>() as u64;

/// Per-dispatch parameters. Kept in sync with `struct Params` in shaders/reduce_common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuParams {
    len: u32,
    out_base: u32,
    _pad0: u32,
    _pad1: u32,
}

/// One workgroup's result. Kept in sync with `struct Partial` in shaders/reduce_common.wgsl
/// (six u32, the f32 pivot and a named pad, then two f64 at offsets 32 and 40).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuPartial {
    count: u32,
    nan_count: u32,
    pos_inf: u32,
    neg_inf: u32,
    min_key: u32,
    max_key: u32,
    pivot: f32,
    _pad: u32,
    /// Σ(x − pivot) over the finite values.
    t: f64,
    m2: f64,
}

impl GpuPartial {
    fn to_partial(self) -> Partial {
        // The shader's M2 is already formed; q = M2 + t²/n hands it back through the same
        // conversion as a CPU block (sum = n·pivot + t as a double-double).
        let n = f64::from(self.count);
        PivotMoments {
            count: u64::from(self.count),
            nan_count: u64::from(self.nan_count),
            pos_inf: u64::from(self.pos_inf),
            neg_inf: u64::from(self.neg_inf),
            pivot: f64::from(self.pivot),
            t: self.t,
            q: 0.0,
            min: f64::from(from_order_key(self.min_key)),
            max: f64::from(from_order_key(self.max_key)),
        }
        .to_partial_with_m2(if n > 0.0 { self.m2 } else { 0.0 })
    }
}

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

/// How the kernel was specialised for an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelShape {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// vec4 loads per thread per loop iteration.
    pub vec_per_thread: u32,
    /// Whether workgroups combine with subgroup operations (else a workgroup-memory tree).
    pub subgroups: bool,
    /// Smallest and largest subgroup size the adapter reports.
    pub subgroup_sizes: (u32, u32),
}

impl std::fmt::Display for KernelShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} threads/workgroup, {} vec4 loads/thread, {}",
            self.workgroup_size,
            self.vec_per_thread,
            if self.subgroups {
                "subgroup combine"
            } else {
                "tree combine"
            }
        )
    }
}

/// Default vec4 loads per thread per tile: eight 16-byte loads in flight per thread were the
/// fastest of 1, 2, 4, 8 and 16 on an H200 (BENCHMARKS.md, issue 4); a software adapter runs
/// the largest tile, over which the per-tile merge (one f64 division) is spread thinnest
/// (lavapipe: 16 halves the time of 1, BENCHMARKS.md, issue 10).
pub(crate) fn default_vec_per_thread(report: &AdapterReport) -> u32 {
    match report.device_type.as_str() {
        "Cpu" => MAX_VEC_PER_THREAD,
        _ => 8,
    }
}

/// Default P for an adapter: on a discrete GPU 1024 workgroups of 256, the fastest of 1024, 4096
/// and 16384 on an H100 with the f64 kernel of issue 10 (132 SMs; each workgroup's tree merge
/// costs f64 divisions, so fewer, longer workgroups win; BENCHMARKS.md). A dispatch still gets
/// at least enough workgroups for [`MAX_THREAD_TILES`]. Fewer on integrated parts, and few on a
/// software adapter, whose workgroups run on the host's threads.
pub fn default_workgroups(report: &AdapterReport) -> u32 {
    match report.device_type.as_str() {
        "DiscreteGpu" => 1024,
        "IntegratedGpu" => 256,
        "Cpu" => 16,
        _ => 512,
    }
}

struct RingSlot {
    /// Bytes the slot's buffers hold.
    capacity: u64,
    /// Host-visible buffer the batch's bytes are written into while it is mapped.
    staging: wgpu::Buffer,
    /// Set by the map callback once `staging` is mapped for writing again (after the device
    /// has copied its previous contents out).
    mapped: Arc<AtomicBool>,
    input: wgpu::Buffer,
    params: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    in_flight: Option<wgpu::SubmissionIndex>,
}

/// Where one dispatch's partials sit in the partials buffer.
struct DispatchRecord {
    first: u32,
    workgroups: u32,
    /// Whose batch this was ([`BatchReducer::push_tagged`]).
    tag: u64,
}

struct ResidentChunk {
    _input: wgpu::Buffer,
    params: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    len: usize,
}

/// Data uploaded once with [`GpuReducer::upload`], reducible any number of times with
/// [`GpuReducer::reduce_resident`] by the reducer that uploaded it.
pub struct GpuResident {
    chunks: Vec<ResidentChunk>,
    len: usize,
    /// The reducer that uploaded it (its bind groups point at that reducer's buffers).
    owner: u64,
}

impl GpuResident {
    /// Elements held on the device.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no elements are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for GpuResident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuResident")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
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
    times: StageTimes,
    /// Host time spent on f64 and integer batches (reduced by the CPU kernels), added at finish.
    host_times: StageTimes,
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
            times: StageTimes {
                compute_clock,
                ..StageTimes::default()
            },
            host_times: StageTimes::default(),
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

    /// Workgroups for a dispatch over `len` elements: P, but never more than one per tile of
    /// `WORKGROUP_SIZE × vec_per_thread` vec4s (an idle workgroup only adds a partial to merge),
    /// and never so few that a thread sums more than [`MAX_THREAD_TILES`] tiles in one frame.
    fn workgroups_for(&self, len: usize) -> u32 {
        let n_vec = len.div_ceil(4) as u32;
        let tile = WORKGROUP_SIZE * self.shape.vec_per_thread;
        let fewest = u64::from(n_vec).div_ceil(u64::from(tile) * MAX_THREAD_TILES) as u32;
        self.info
            .workgroups
            .min(n_vec.div_ceil(tile))
            .max(fewest)
            .max(1)
    }

    /// Whether the readback window has no room for one more dispatch of `workgroups` partials.
    fn window_full(&self, workgroups: u32) -> bool {
        self.window.len() == MAX_DISPATCHES_PER_READBACK
            || self.partials_used + workgroups > self.partials_capacity
    }

    /// Records one dispatch into `encoder` (timestamps around it where supported) and notes where
    /// its partials go. The window must have room for it (`window_full` is false).
    fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bind_group: &wgpu::BindGroup,
        workgroups: u32,
        tag: u64,
    ) {
        let q = self.window.len() as u32 * 2;
        let timestamp_writes =
            self.queries
                .as_ref()
                .map(|(set, _, _)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(q),
                    end_of_pass_write_index: Some(q + 1),
                });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("microbatch.reduce.pass"),
            timestamp_writes,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(workgroups, 1, 1);
        drop(pass);
        self.window.push(DispatchRecord {
            first: self.partials_used,
            workgroups,
            tag,
        });
        self.partials_used += workgroups;
    }

    fn params_for(&self, len: usize) -> GpuParams {
        GpuParams {
            len: len as u32,
            out_base: self.partials_used,
            _pad0: 0,
            _pad1: 0,
        }
    }

    fn new_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    fn dispatch(&mut self, chunk: &[f32], tag: u64) -> Result<()> {
        let workgroups = self.workgroups_for(chunk.len());
        if self.window_full(workgroups) {
            self.read_back()?;
        }

        let upload_start = Instant::now();
        let slot_index = self.next_slot;
        let needed = (chunk.len() as u64 * 4).next_multiple_of(16);
        if slot_index == self.ring.len() {
            let slot = self.new_slot(slot_index, needed)?;
            self.ring.push(slot);
        } else {
            self.wait_for_staging(slot_index)?;
            let capacity = self.ring[slot_index].capacity;
            if capacity < needed {
                let max = (self.chunk_elems as u64 * 4).next_multiple_of(16);
                let grown = needed.max(capacity.saturating_mul(2)).min(max);
                self.ring[slot_index] = self.new_slot(slot_index, grown)?;
            }
        }
        let params = self.params_for(chunk.len());
        let slot = &self.ring[slot_index];
        let bytes = (chunk.len() as u64 * 4).next_multiple_of(4);
        {
            let mut view = slot
                .staging
                .slice(..bytes)
                .get_mapped_range_mut()
                .map_err(|e| Error::Gpu {
                    context: "writing a batch into staging memory".to_string(),
                    message: e.to_string(),
                })?;
            copy_parallel(view.slice(..), bytemuck::cast_slice(chunk));
        }
        slot.staging.unmap();
        slot.mapped.store(false, Ordering::Release);
        let queue = &self.ctx.queue;
        queue.write_buffer(&slot.params, 0, bytemuck::bytes_of(&params));
        let bind_group = slot.bind_group.clone();
        let (staging, input) = (slot.staging.clone(), slot.input.clone());

        let mut encoder = self.new_encoder("microbatch.reduce.encoder");
        encoder.copy_buffer_to_buffer(&staging, 0, &input, 0, bytes);
        self.encode(&mut encoder, &bind_group, workgroups, tag);
        let index = self.ctx.queue.submit([encoder.finish()]);
        // Map the staging buffer again: the callback fires once the device has copied it out,
        // and the slot is free for the batch after next.
        let flag = Arc::clone(&self.ring[slot_index].mapped);
        staging.map_async(wgpu::MapMode::Write, .., move |r| {
            flag.store(r.is_ok(), Ordering::Release);
        });
        self.ring[slot_index].in_flight = Some(index);
        self.wall_compute_start.get_or_insert(upload_start);
        self.times.upload += upload_start.elapsed();
        self.next_slot = (self.next_slot + 1) % RING;
        Ok(())
    }

    /// A ring slot of `bytes`: staging buffer (mapped, every page touched), device input buffer,
    /// params uniform and bind group.
    fn new_slot(&self, index: usize, bytes: u64) -> Result<RingSlot> {
        let device = &self.ctx.device;
        let (input, params, bind_group) = input_binding(
            device,
            &self.layout,
            &self.partials,
            &format!("microbatch.input[{index}]"),
            bytes,
        );
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&format!("microbatch.staging[{index}]")),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        // Touch every page now, so the batches through the slot do not pay for page faults on
        // freshly mapped (possibly PCIe BAR) memory.
        staging
            .slice(..)
            .get_mapped_range_mut()
            .map(|mut view| view.slice(..).fill(0))
            .map_err(|e| Error::Gpu {
                context: "preparing the staging ring".to_string(),
                message: e.to_string(),
            })?;
        Ok(RingSlot {
            capacity: bytes,
            staging,
            mapped: Arc::new(AtomicBool::new(true)),
            input,
            params,
            bind_group,
            in_flight: None,
        })
    }

    /// Waits until the staging buffer of `slot_index` is mapped for writing again. The ring
    /// being full is what bounds host memory to RING batches; while it is not, this is a check.
    fn wait_for_staging(&mut self, slot_index: usize) -> Result<()> {
        let poll_err = |e: wgpu::PollError| Error::Gpu {
            context: "waiting for the staging ring".to_string(),
            message: e.to_string(),
        };
        let slot = &mut self.ring[slot_index];
        while !slot.mapped.load(Ordering::Acquire) {
            // Wait for the submission that copied this buffer out (or for everything, if it is
            // no longer known); the map callback runs during a poll once it is done.
            let index = slot.in_flight.take();
            let last_try = index.is_none();
            let device = &self.ctx.device;
            device
                .poll(wgpu::PollType::Wait {
                    submission_index: index,
                    timeout: None,
                })
                .map_err(poll_err)?;
            if !slot.mapped.load(Ordering::Acquire) {
                device.poll(wgpu::PollType::Poll).map_err(poll_err)?;
            }
            if last_try && !slot.mapped.load(Ordering::Acquire) {
                self.ctx
                    .take_error("mapping a staging buffer for writing")?;
                return Err(Error::Gpu {
                    context: "mapping a staging buffer for writing".to_string(),
                    message: "the map request failed".to_string(),
                });
            }
        }
        slot.in_flight = None;
        Ok(())
    }

    /// Uploads `data` to the device once, split into binding-sized chunks, for
    /// [`GpuReducer::reduce_resident`] to reduce any number of times (the kernel alone, with no
    /// transfer: the "resident" benchmark mode).
    pub fn upload(&self, data: &[f32]) -> Result<GpuResident> {
        let device = &self.ctx.device;
        let layout = &self.layout;
        let chunks = data
            .chunks(self.chunk_elems)
            .enumerate()
            .map(|(i, chunk)| {
                let size = (chunk.len() as u64 * 4).next_multiple_of(16);
                let (input, params, bind_group) = input_binding(
                    device,
                    layout,
                    &self.partials,
                    &format!("microbatch.resident[{i}]"),
                    size,
                );
                self.ctx
                    .queue
                    .write_buffer(&input, 0, bytemuck::cast_slice(chunk));
                ResidentChunk {
                    _input: input,
                    params,
                    bind_group,
                    len: chunk.len(),
                }
            })
            .collect();
        self.ctx.queue.submit([]);
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                context: "uploading resident data".to_string(),
                message: e.to_string(),
            })?;
        self.ctx.take_error("uploading resident data")?;
        Ok(GpuResident {
            chunks,
            len: data.len(),
            owner: self.id,
        })
    }

    /// Reduces data already on the device: every chunk is dispatched from one command buffer per
    /// readback window, then the partials come back in one map.
    pub fn reduce_resident(&mut self, data: &GpuResident) -> Result<(Partial, StageTimes)> {
        if data.owner != self.id {
            return Err(Error::InvalidBuffer(
                "this GpuResident was uploaded by another GpuReducer (its bindings point at that reducer's buffers): upload it with this one".to_string(),
            ));
        }
        let mut encoder = self.new_encoder("microbatch.resident.encoder");
        let start = Instant::now();
        for chunk in &data.chunks {
            let workgroups = self.workgroups_for(chunk.len);
            if self.window_full(workgroups) {
                // The recorded dispatches must be submitted before their partials are read.
                self.ctx.queue.submit([encoder.finish()]);
                encoder = self.new_encoder("microbatch.resident.encoder");
                self.read_back()?;
            }
            let params = self.params_for(chunk.len);
            self.ctx
                .queue
                .write_buffer(&chunk.params, 0, bytemuck::bytes_of(&params));
            self.encode(&mut encoder, &chunk.bind_group, workgroups, 0);
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.wall_compute_start.get_or_insert(start);
        self.finish()
    }

    /// Reduces `len` f32 values the application already holds on this reducer's device, in
    /// place: `buffer` from byte `offset` on (see [`GpuContext::from_device`]). The buffer must
    /// have `STORAGE` usage, `offset` must be a multiple of 16 and of the device's storage
    /// offset alignment, and the range rounded up to whole 16-byte vec4s must lie inside the
    /// buffer (pad it; the padding is never counted). Anything else is an
    /// [`Error::InvalidBuffer`] naming what is wrong; nothing is dispatched. The buffer must
    /// belong to this reducer's device, and the caller must not write it until this returns.
    pub fn reduce_buffer(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<(Partial, StageTimes)> {
        let bad = |m: String| Err(Error::InvalidBuffer(m));
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return bad(format!(
                "its usage {:?} lacks STORAGE (create it with BufferUsages::STORAGE)",
                buffer.usage()
            ));
        }
        let align = u64::from(self.ctx.limits.min_storage_buffer_offset_alignment).max(16);
        if offset % align != 0 {
            return bad(format!(
                "offset {offset} is not a multiple of {align} (16-byte vec4s and the device's storage offset alignment)"
            ));
        }
        let bytes = (len as u64)
            .checked_mul(4)
            .map(|b| b.next_multiple_of(16))
            .filter(|b| {
                offset
                    .checked_add(*b)
                    .is_some_and(|end| end <= buffer.size())
            });
        let Some(_) = bytes else {
            return bad(format!(
                "{len} f32 from byte {offset}, rounded up to whole vec4s, pass the buffer's end ({} bytes): pad it to a multiple of 16 bytes",
                buffer.size()
            ));
        };
        let start = Instant::now();
        let mut encoder = self.new_encoder("microbatch.buffer.encoder");
        let mut keep = Vec::new();
        // Every chunk but the last starts on an aligned offset too.
        let quantum = (align / 4) as usize;
        let step = (self.chunk_elems / quantum * quantum).max(quantum);
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(step);
            let workgroups = self.workgroups_for(n);
            if self.window_full(workgroups) {
                self.ctx.queue.submit([encoder.finish()]);
                encoder = self.new_encoder("microbatch.buffer.encoder");
                self.read_back()?;
            }
            let params = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("microbatch.buffer.params"),
                size: std::mem::size_of::<GpuParams>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.ctx
                .queue
                .write_buffer(&params, 0, bytemuck::bytes_of(&self.params_for(n)));
            let size = (n as u64 * 4).next_multiple_of(16);
            let bind_group = self
                .ctx
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("microbatch.buffer.bind_group"),
                    layout: &self.layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer,
                                offset: offset + done as u64 * 4,
                                size: wgpu::BufferSize::new(size),
                            }),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: self.partials.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: params.as_entire_binding(),
                        },
                    ],
                });
            self.encode(&mut encoder, &bind_group, workgroups, 0);
            keep.push((params, bind_group));
            done += n;
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.wall_compute_start.get_or_insert(start);
        let out = self.finish();
        drop(keep);
        out
    }

    /// Copies the window's partials and timestamps back in one map, and merges them.
    fn read_back(&mut self) -> Result<()> {
        if self.window.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let device = &self.ctx.device;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("microbatch.readback.encoder"),
        });
        let partial_bytes = u64::from(self.partials_used) * PARTIAL_BYTES;
        encoder.copy_buffer_to_buffer(&self.partials, 0, &self.partials_readback, 0, partial_bytes);
        let n_queries = self.window.len() as u32 * 2;
        if let Some((set, resolve, readback)) = &self.queries {
            encoder.resolve_query_set(set, 0..n_queries, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, readback, 0, u64::from(n_queries) * 8);
        }
        self.ctx.queue.submit([encoder.finish()]);

        let partial_slice = self.partials_readback.slice(..partial_bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        partial_slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let ts_slice = self
            .queries
            .as_ref()
            .map(|(_, _, readback)| readback.slice(..u64::from(n_queries) * 8));
        if let Some(s) = &ts_slice {
            s.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx2.send(r);
            });
        } else {
            drop(tx2);
        }
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                context: "waiting for partials".to_string(),
                message: e.to_string(),
            })?;
        for r in rx.iter() {
            r.map_err(|e| Error::Gpu {
                context: "mapping partials for readback".to_string(),
                message: e.to_string(),
            })?;
        }
        self.ctx.take_error("reducing a batch")?;
        for slot in &mut self.ring {
            slot.in_flight = None;
        }

        let partials: Vec<GpuPartial> = {
            let view = partial_slice.get_mapped_range().map_err(|e| Error::Gpu {
                context: "reading partials".to_string(),
                message: e.to_string(),
            })?;
            bytemuck::cast_slice(&view).to_vec()
        };
        self.partials_readback.unmap();
        let compute = match &ts_slice {
            Some(s) => {
                let view = s.get_mapped_range().map_err(|e| Error::Gpu {
                    context: "reading timestamps".to_string(),
                    message: e.to_string(),
                })?;
                let ticks: &[u64] = bytemuck::cast_slice(&view);
                let period = f64::from(self.ctx.queue.get_timestamp_period());
                let ns: f64 = ticks
                    .chunks_exact(2)
                    .map(|p| p[1].saturating_sub(p[0]) as f64 * period)
                    .sum();
                drop(view);
                Some(Duration::from_secs_f64(ns * 1e-9))
            }
            None => None,
        };
        if let Some((_, _, readback)) = &self.queries {
            readback.unmap();
        }
        let readback_done = Instant::now();
        self.times.readback += readback_done - start;
        match compute {
            Some(c) => self.times.compute += c,
            None => {
                if let Some(s) = self.wall_compute_start {
                    self.times.compute += readback_done - s;
                }
            }
        }
        self.wall_compute_start = None;

        for d in self.window.drain(..) {
            // Workgroup order: the result does not depend on which workgroup finished first.
            let range = d.first as usize..(d.first + d.workgroups) as usize;
            let mut total = Partial::EMPTY;
            for p in &partials[range] {
                total.merge(&p.to_partial());
            }
            self.acc.merge(d.tag, &total);
        }
        self.partials_used = 0;
        self.times.merge += readback_done.elapsed();
        Ok(())
    }
}

/// Copies `src` into the front of `dst` (mapped staging memory) on several threads when it is
/// large: one thread's copy into host-visible memory falls well short of a PCIe 5 link.
pub(crate) fn copy_parallel(dst: wgpu::WriteOnly<'_, [u8]>, src: &[u8]) {
    const PIECE: usize = 1 << 20;
    let (mut dst, _) = dst.split_at(src.len());
    if src.len() <= PIECE {
        dst.copy_from_slice(src);
        return;
    }
    let mut pieces = Vec::with_capacity(src.len().div_ceil(PIECE));
    let mut rest = dst;
    while rest.len() > PIECE {
        let (head, tail) = rest.split_at(PIECE);
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);

    /// A disjoint piece of the mapping, handed to one thread.
    struct Piece<'a>(wgpu::WriteOnly<'a, [u8]>);
    // SAFETY: a `WriteOnly` is a pointer to memory valid for writes for its lifetime; wgpu makes
    // it `Send` only for sized targets (`impl<T: Send>` implies `T: Sized`), not because a byte
    // slice may not move between threads. The pieces come from `split_at` and never overlap, and
    // the scope below ends before the mapping they borrow does.
    unsafe impl Send for Piece<'_> {}

    // Self-scheduled like the CPU backend's reduction: the calling thread starts copying at
    // once and the pool's threads take pieces as they wake, instead of the caller waiting for
    // them (a wake-up can cost more than copying a piece).
    let pieces: Vec<Mutex<Option<Piece<'_>>>> = pieces
        .into_iter()
        .map(|p| Mutex::new(Some(Piece(p))))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = pieces.get(i) else { break };
            let piece = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut piece) = piece {
                let start = i * PIECE;
                piece.0.copy_from_slice(&src[start..start + piece.0.len()]);
            }
        }
    };
    let helpers = rayon::current_num_threads().min(pieces.len()) - 1;
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
}

/// An input buffer of `size` bytes, its params uniform, and the bind group over them and
/// `partials` (the layout of group 0 in `shaders/reduce_common.wgsl`). Labels derive from `name`.
fn input_binding(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    partials: &wgpu::Buffer,
    name: &str,
    size: u64,
) -> (wgpu::Buffer, wgpu::Buffer, wgpu::BindGroup) {
    let input = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let params = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&format!("{name}.params")),
        size: std::mem::size_of::<GpuParams>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&format!("{name}.bind_group")),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: partials.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: params.as_entire_binding(),
            },
        ],
    });
    (input, params, bind_group)
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
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

    fn finish_tagged(&mut self) -> Result<(Vec<(u64, Partial)>, StageTimes)> {
        self.read_back()?;
        let clock = self.times.compute_clock;
        let mut times = std::mem::replace(
            &mut self.times,
            StageTimes {
                compute_clock: clock,
                ..StageTimes::default()
            },
        );
        let host = std::mem::take(&mut self.host_times);
        times.compute += host.compute;
        times.merge += host.merge;
        Ok((self.acc.take(), times))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust mirrors of the kernel's buffers lay out as naga (wgpu's shader compiler) lays
    /// out the WGSL structs: every member at the same offset, the same size. Checked for both
    /// kernel variants, so an edit to one side alone fails here instead of corrupting partials.
    #[test]
    fn rust_mirrors_match_the_wgsl_structs() {
        use std::mem::{offset_of, size_of};
        for subgroups in [false, true] {
            let module = naga::front::wgsl::parse_str(&reduce_wgsl(subgroups))
                .unwrap_or_else(|e| panic!("the kernel does not parse: {e}"));
            let layout = |name: &str| -> (Vec<(String, u32)>, u32) {
                let ty = module
                    .types
                    .iter()
                    .find(|(_, t)| t.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("no struct {name} in the kernel"))
                    .1;
                match &ty.inner {
                    naga::TypeInner::Struct { members, span } => (
                        members
                            .iter()
                            .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                            .collect(),
                        *span,
                    ),
                    other => panic!("{name} is not a struct: {other:?}"),
                }
            };
            let (members, span) = layout("Partial");
            let rust = [
                ("count", offset_of!(GpuPartial, count)),
                ("nan_count", offset_of!(GpuPartial, nan_count)),
                ("pos_inf", offset_of!(GpuPartial, pos_inf)),
                ("neg_inf", offset_of!(GpuPartial, neg_inf)),
                ("min_key", offset_of!(GpuPartial, min_key)),
                ("max_key", offset_of!(GpuPartial, max_key)),
                ("pivot", offset_of!(GpuPartial, pivot)),
                ("_pad", offset_of!(GpuPartial, _pad)),
                ("t", offset_of!(GpuPartial, t)),
                ("m2", offset_of!(GpuPartial, m2)),
            ];
            let rust: Vec<(String, u32)> = rust
                .iter()
                .map(|(n, o)| (n.to_string(), *o as u32))
                .collect();
            assert_eq!(members, rust, "Partial (subgroups {subgroups})");
            assert_eq!(span as usize, size_of::<GpuPartial>(), "Partial size");

            let (members, span) = layout("Params");
            let rust: Vec<(String, u32)> = [
                ("len", offset_of!(GpuParams, len)),
                ("out_base", offset_of!(GpuParams, out_base)),
                ("_pad0", offset_of!(GpuParams, _pad0)),
                ("_pad1", offset_of!(GpuParams, _pad1)),
            ]
            .iter()
            .map(|(n, o)| (n.to_string(), *o as u32))
            .collect();
            assert_eq!(members, rust, "Params (subgroups {subgroups})");
            assert_eq!(span as usize, size_of::<GpuParams>(), "Params size");
        }
    }

    #[test]
    fn copy_parallel_copies_every_byte_in_place() {
        // Not a multiple of the 1 MiB piece, and a destination longer than the source.
        let src: Vec<u8> = (0..(3 << 20) + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut dst = vec![0xAAu8; src.len() + 100];
        copy_parallel(wgpu::WriteOnly::from_mut(dst.as_mut_slice()), &src);
        assert!(dst[..src.len()] == src[..], "copied bytes differ");
        assert!(
            dst[src.len()..].iter().all(|&b| b == 0xAA),
            "wrote past the source"
        );
        let small = [1u8, 2, 3];
        copy_parallel(wgpu::WriteOnly::from_mut(dst.as_mut_slice()), &small);
        assert_eq!(dst[..3], small);
    }
}
