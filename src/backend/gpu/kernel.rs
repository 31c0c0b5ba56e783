//! The kernel: the WGSL assembled from `shaders/`, the Rust mirrors of its buffers' structs,
//! its shape and per-adapter defaults, and the bind group layout of its inputs.

use bytemuck::{Pod, Zeroable};

use super::*;
use crate::numerics::{PivotMoments, from_order_key};
use crate::stats::Partial;

/// The reduction kernel's common part, compiled into the binary from `shaders/`.
pub(super) const REDUCE_COMMON_WGSL: &str = include_str!("../../../shaders/reduce_common.wgsl");
/// Entry point combining a workgroup through a tree in workgroup memory (any adapter).
pub(super) const REDUCE_TREE_WGSL: &str = include_str!("../../../shaders/reduce_tree.wgsl");
/// Entry point combining a workgroup with subgroup operations (adapters with `SUBGROUP`).
pub(super) const REDUCE_SUBGROUP_WGSL: &str = include_str!("../../../shaders/reduce_subgroup.wgsl");

/// Second entry point of the deferred-slow-path variant ([`SlowPath::Deferred`]).
pub(super) const REDUCE_FIXUP_WGSL: &str = include_str!("../../../shaders/reduce_fixup.wgsl");

/// How a thread's whole-tile loads are written in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loads {
    /// Loops over `VEC_PER_THREAD` into a register array (the driver's compiler unrolls them
    /// once the override is known, or not).
    Loop,
    /// The loops written out by the host for the shape's `vec_per_thread`: the loads are
    /// separate statements, all before the first use, in named registers.
    Unrolled,
}

/// Where the kernel handles what its fast path cannot (NaN, ±inf, subnormals, a pivot sum that
/// overflows, the partial tile and partial vec4 at the end of a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPath {
    /// In the same kernel: a thread that meets such a value redoes its share classified.
    Inline,
    /// In a second, small dispatch (`fixup` in shaders/reduce_fixup.wgsl) over the same data:
    /// the fast kernel marks its workgroup dirty and carries none of the slow path's code.
    Deferred,
}

impl std::fmt::Display for Loads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loads::Loop => "loop",
            Loads::Unrolled => "unrolled",
        })
    }
}

impl std::fmt::Display for SlowPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlowPath::Inline => "inline",
            SlowPath::Deferred => "deferred",
        })
    }
}

/// The full WGSL source of the reduction kernel for `shape`: the common part (its whole-tile
/// loops written out for [`Loads::Unrolled`]), the glue choosing the slow path, the subgroup or
/// the tree entry point, and for [`SlowPath::Deferred`] the `fixup` entry point.
/// (Naga 30 enables subgroup built-ins with the device feature and rejects the standard
/// `enable subgroups;` directive, so there is none.)
pub(crate) fn reduce_wgsl(shape: &KernelShape) -> String {
    let common = match shape.loads {
        Loads::Loop => REDUCE_COMMON_WGSL.to_string(),
        Loads::Unrolled => unroll(REDUCE_COMMON_WGSL, shape.vec_per_thread),
    };
    let glue = match shape.slow_path {
        SlowPath::Inline => {
            "fn reduce_thread(lid: u32, wid: u32, nwg: u32) -> Thread {\n    return reduce_thread_inline(lid, wid, nwg);\n}\n\n\
             fn finish_partial(wid: u32, t: Thread) {\n    write_partial(wid, t, 0u);\n}\n"
        }
        SlowPath::Deferred => {
            "fn reduce_thread(lid: u32, wid: u32, nwg: u32) -> Thread {\n    return reduce_thread_deferred(lid, wid, nwg);\n}\n\n\
             // The fast kernel's `nan` counts its threads that were not clean: the partial goes out\n\
             // with no non-finite counts and marked dirty for `fixup`.\n\
             fn finish_partial(wid: u32, t: Thread) {\n    \
             write_partial(wid, Thread(t.m, 0u, 0u, 0u, t.kmin, t.kmax), select(0u, 1u, t.nan > 0u));\n}\n"
        }
    };
    let entry = if shape.subgroups {
        REDUCE_SUBGROUP_WGSL
    } else {
        REDUCE_TREE_WGSL
    };
    let fixup = match shape.slow_path {
        SlowPath::Inline => "",
        SlowPath::Deferred => REDUCE_FIXUP_WGSL,
    };
    format!("{common}\n{glue}\n{entry}\n{fixup}")
}

/// Writes out the loops between `//#loads` or `//#each` and `//#end` for `vpt` vec4s: each
/// `for (var k …) { body }` becomes `vpt` copies of the body with `v[k]` named `v0`, `v1`, …
/// and `k * WG_SIZE` a constant; the loads become `let` bindings (no register array: the
/// `//#array` line goes).
fn unroll(src: &str, vpt: u32) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    let mut lines = src.lines().peekable();
    while let Some(line) = lines.next() {
        let mark = line.trim();
        if mark == "//#array" {
            lines.next();
            continue;
        }
        let loads = mark == "//#loads";
        if !loads && mark != "//#each" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut body: Vec<&str> = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "//#end" {
                break;
            }
            body.push(l);
        }
        // The loop's own first and last lines go; the body keeps its text.
        assert!(
            body.len() >= 3
                && body[0]
                    .trim_start()
                    .starts_with("for (var k = 0u; k < VEC_PER_THREAD; k++)")
                && body[body.len() - 1].trim() == "}",
            "a marked loop in shaders/reduce_common.wgsl is not `for (var k …) {{ … }}`"
        );
        let indent = &body[0][..body[0].len() - body[0].trim_start().len()];
        for k in 0..vpt {
            if !loads {
                out.push_str(&format!("{indent}{{\n"));
            }
            for l in &body[1..body.len() - 1] {
                let mut l = l
                    .replace("v[k]", &format!("v{k}"))
                    .replace("k * WG_SIZE", &format!("{k}u * WG_SIZE"));
                if loads {
                    l = l.replacen(&format!("v{k} = "), &format!("let v{k} = "), 1);
                }
                out.push_str(&l);
                out.push('\n');
            }
            if !loads {
                out.push_str(&format!("{indent}}}\n"));
            }
        }
    }
    out
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

/// Size of one [`GpuPartial`] in bytes.
pub(super) const PARTIAL_BYTES: u64 = std::mem::size_of::<GpuPartial>() as u64;

/// Per-dispatch parameters. Kept in sync with `struct Params` in shaders/reduce_common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuParams {
    pub(super) len: u32,
    pub(super) out_base: u32,
    /// 0: the input is one series; else how many of `segment` are in use.
    pub(super) segments: u32,
    pub(super) _pad1: u32,
    /// Per segment: its first vec4, its f32 elements, its first workgroup, its workgroups.
    pub(super) segment: [[u32; 4]; MAX_SEGMENTS],
}

/// Series one dispatch reduces side by side (`MAX_SEGMENTS` in the shader).
pub const MAX_SEGMENTS: usize = 32;

/// One workgroup's result. Kept in sync with `struct Partial` in shaders/reduce_common.wgsl
/// (six u32, the f32 pivot and the dirty flag, then two f64 at offsets 32 and 40).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(super) struct GpuPartial {
    pub(super) count: u32,
    pub(super) nan_count: u32,
    pub(super) pos_inf: u32,
    pub(super) neg_inf: u32,
    pub(super) min_key: u32,
    pub(super) max_key: u32,
    pub(super) pivot: f32,
    /// 1 while the deferred slow path has yet to run on this workgroup (never read back so).
    pub(super) dirty: u32,
    /// Σ(x − pivot) over the finite values.
    pub(super) t: f64,
    pub(super) m2: f64,
}

impl GpuPartial {
    pub(super) fn to_partial(self) -> Partial {
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

/// How the kernel was specialised for an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelShape {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// vec4 loads per thread per loop iteration.
    pub vec_per_thread: u32,
    /// Whether workgroups combine with subgroup operations (else a workgroup-memory tree).
    pub subgroups: bool,
    /// How the whole-tile loads are written.
    pub loads: Loads,
    /// Where the slow path runs.
    pub slow_path: SlowPath,
    /// Smallest and largest subgroup size the adapter reports.
    pub subgroup_sizes: (u32, u32),
}

impl KernelShape {
    /// The variant in a few words, as `bench` tables and JSON name it:
    /// `vpt=8 loads=loop slow=inline combine=tree`.
    pub fn tag(&self) -> String {
        format!(
            "vpt={} loads={} slow={} combine={}",
            self.vec_per_thread,
            self.loads,
            self.slow_path,
            if self.subgroups { "subgroup" } else { "tree" }
        )
    }
}

impl std::fmt::Display for KernelShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} threads/workgroup, {} vec4 loads/thread ({}), {}, slow path {}",
            self.workgroup_size,
            self.vec_per_thread,
            self.loads,
            if self.subgroups {
                "subgroup combine"
            } else {
                "tree combine"
            },
            self.slow_path,
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

/// An input buffer of `size` bytes, its params uniform, and the bind group over them and
/// `partials` (the layout of group 0 in `shaders/reduce_common.wgsl`). Labels derive from `name`.
pub(super) fn input_binding(
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
    let bind_group = input_output_params_bind_group(
        device,
        layout,
        &format!("{name}.bind_group"),
        [&input, partials, &params],
    );
    (input, params, bind_group)
}

/// A bind group of [`input_output_params_layout`]: the input, the output and the uniform
/// buffers, whole, at bindings 0, 1 and 2.
pub(super) fn input_output_params_bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    label: &str,
    [input, output, params]: [&wgpu::Buffer; 3],
) -> wgpu::BindGroup {
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: params.as_entire_binding(),
            },
        ],
    })
}

/// The layout both kernels bind: the input (read-only storage), what they write (read-write
/// storage) and their uniform of type `P`.
pub(super) fn input_output_params_layout<P>(
    device: &wgpu::Device,
    label: &str,
) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &[
            storage_entry(0, true),
            storage_entry(1, false),
            wgpu::BindGroupLayoutEntry {
                binding: 2,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(std::mem::size_of::<P>() as u64),
                },
                count: None,
            },
        ],
    })
}

pub(super) fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
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

/// Checks `config` against the adapter: the kernel's shape, P and the elements bound per
/// dispatch (the batch size, or less where the adapter's binding limit is lower).
pub(super) fn check(ctx: &GpuContext, config: &GpuConfig) -> Result<(KernelShape, u32, usize)> {
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
        loads: config.loads.unwrap_or(Loads::Loop),
        slow_path: config.slow_path.unwrap_or(SlowPath::Inline),
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
    Ok((shape, workgroups, chunk_elems))
}

/// The compute pipelines for `shape` (the reduction and, for [`SlowPath::Deferred`], its
/// fixup) and their bind group layout (run inside the caller's error scope: a validation error
/// is reported there).
pub(super) fn pipeline(
    ctx: &GpuContext,
    shape: &KernelShape,
) -> (
    wgpu::ComputePipeline,
    Option<wgpu::ComputePipeline>,
    wgpu::BindGroupLayout,
) {
    let device = &ctx.device;
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some("microbatch.reduce"),
        source: wgpu::ShaderSource::Wgsl(reduce_wgsl(shape).into()),
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
    let layout = input_output_params_layout::<GpuParams>(device, "microbatch.reduce.layout");
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("microbatch.reduce.pipeline_layout"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let constants = [
        ("WG_SIZE", f64::from(WORKGROUP_SIZE)),
        ("VEC_PER_THREAD", f64::from(shape.vec_per_thread)),
    ];
    let entry = |name: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&format!("microbatch.{name}")),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(name),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    let fixup = (shape.slow_path == SlowPath::Deferred).then(|| entry("fixup"));
    (entry("reduce"), fixup, layout)
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
        for shape in all_shapes() {
            let subgroups = shape.subgroups;
            let module = naga::front::wgsl::parse_str(&reduce_wgsl(&shape))
                .unwrap_or_else(|e| panic!("the kernel {shape} does not parse: {e}"));
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
                ("dirty", offset_of!(GpuPartial, dirty)),
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
                ("segments", offset_of!(GpuParams, segments)),
                ("_pad1", offset_of!(GpuParams, _pad1)),
                ("segment", offset_of!(GpuParams, segment)),
            ]
            .iter()
            .map(|(n, o)| (n.to_string(), *o as u32))
            .collect();
            assert_eq!(members, rust, "Params (subgroups {subgroups})");
            assert_eq!(span as usize, size_of::<GpuParams>(), "Params size");
        }
    }

    /// Every variant the host can assemble, at a few tile sizes.
    fn all_shapes() -> Vec<KernelShape> {
        let mut out = Vec::new();
        for subgroups in [false, true] {
            for loads in [Loads::Loop, Loads::Unrolled] {
                for slow_path in [SlowPath::Inline, SlowPath::Deferred] {
                    for vec_per_thread in [1, 3, 8, MAX_VEC_PER_THREAD] {
                        out.push(KernelShape {
                            workgroup_size: WORKGROUP_SIZE,
                            vec_per_thread,
                            subgroups,
                            loads,
                            slow_path,
                            subgroup_sizes: (32, 32),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every variant validates as naga (wgpu's compiler) validates a module for a device with
    /// f64 and subgroups: the unrolled text and the glue are WGSL, not just text.
    #[test]
    fn every_kernel_variant_validates() {
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        for shape in all_shapes() {
            let src = reduce_wgsl(&shape);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{shape}: {}", e.emit_to_string(&src)));
            Validator::new(
                ValidationFlags::all(),
                Capabilities::FLOAT64 | Capabilities::SUBGROUP,
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{shape}: {e:?}"));
            let entries: Vec<&str> = module
                .entry_points
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            match shape.slow_path {
                SlowPath::Inline => assert_eq!(entries, ["reduce"], "{shape}"),
                SlowPath::Deferred => assert_eq!(entries, ["reduce", "fixup"], "{shape}"),
            }
        }
    }

    /// The unrolled text holds exactly `vec_per_thread` named loads and no register array or
    /// loop over k; the fast kernel of the deferred variant calls no slow-path function.
    #[test]
    fn unrolled_loads_are_written_out() {
        for shape in all_shapes()
            .into_iter()
            .filter(|s| s.loads == Loads::Unrolled)
        {
            let src = reduce_wgsl(&shape);
            let vpt = shape.vec_per_thread;
            for k in 0..vpt {
                assert!(
                    src.contains(&format!("let v{k} = input[g.base + i + {k}u * WG_SIZE];")),
                    "{shape}: load {k} missing"
                );
            }
            assert!(!src.contains(&format!("let v{vpt} =")), "{shape}");
            assert!(!src.contains("v[k]"), "{shape}: a loop over k is left");
            assert!(!src.contains("array<vec4<f32>, MAX_VPT>"), "{shape}");
        }
        let deferred = reduce_wgsl(&all_shapes()[4]);
        let body = &deferred[deferred.find("fn reduce_thread_deferred").unwrap()..];
        let body = &body[..body.find("\n}\n").unwrap()];
        assert!(
            !body.contains("general") && !body.contains("batch_end"),
            "{body}"
        );
    }
}
