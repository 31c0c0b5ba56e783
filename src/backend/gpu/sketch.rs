//! The quantile sketch built on the device: a second pass in each sketched batch's compute pass
//! counts the uploaded values into a histogram of their f32 bits (`shaders/histogram.wgsl`),
//! one per series (a slot per tag), read back with the partials and folded into each tag's
//! [`Sketch`] on the host. Bucket for bucket the sketch is the one
//! [`Sketch::add_f32_slice`] builds from the same values.

use bytemuck::{Pod, Zeroable};

use super::*;
use crate::sketch::{DENSE_MAX_BITS, Sketch};

/// The histogram kernel, compiled into the binary from `shaders/`.
const HISTOGRAM_WGSL: &str = include_str!("../../../shaders/histogram.wgsl");

/// Series whose sketches the device builds at once; further ones are sketched on the host.
pub(super) const SKETCH_SLOTS: usize = 8;

/// Threads per histogram workgroup (the shader's `WG`).
const HIST_WG: u32 = 256;

/// Most histogram workgroups per batch (each thread then strides through the batch).
const MAX_HIST_WORKGROUPS: u32 = 4096;

/// The histogram pass's uniform (`HistParams` in the shader).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct HistParams {
    len: u32,
    main: u32,
    side: u32,
    zeros: u32,
    shift: u32,
    m: u32,
    _pad: [u32; 2],
}

/// Counters per slot at `m` mantissa bits: normal buckets, subnormal buckets, zeros.
fn layout(m: u8) -> (usize, usize, usize) {
    let main = 1usize << (9 + m);
    let side = (2 * 23) << m;
    (main, side, main + side + 1)
}

/// The device's histograms and the sketches folded from them.
pub(super) struct GpuSketcher {
    m: u8,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    hist: wgpu::Buffer,
    readback: wgpu::Buffer,
    params: wgpu::Buffer,
    /// The tag each slot counts for, in the order first sketched.
    tags: Vec<u64>,
    /// Values counted since the last fold (a bucket's u32 counter cannot pass this).
    counted: u64,
    /// Whether the histograms may hold counts of no stream's (a new buffer's, or a failed
    /// stream's never read back): zeroed before the next batch is counted.
    stale: bool,
    /// Each tag's sketch of what was folded in this stream.
    sketches: Vec<Sketch>,
    /// The sketches of the last finished stream ([`GpuSketcher::take`]).
    ready: Vec<(u64, Sketch)>,
}

impl GpuSketcher {
    /// The pipeline and buffers for sketches of `m` mantissa bits (at most
    /// [`DENSE_MAX_BITS`]: finer histograms would not fit on a device).
    pub(super) fn new(ctx: &GpuContext, m: u8) -> Result<Self> {
        assert!(m <= DENSE_MAX_BITS);
        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("microbatch.histogram"),
            source: wgpu::ShaderSource::Wgsl(HISTOGRAM_WGSL.into()),
        });
        let layout =
            kernel::input_output_params_layout::<HistParams>(device, "microbatch.histogram.layout");
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("microbatch.histogram.pipeline_layout"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("microbatch.histogram"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("histogram"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        let bytes = (SKETCH_SLOTS * layout_words(m) * 4) as u64;
        let hist = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("microbatch.histogram.counts"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("microbatch.histogram.readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("microbatch.histogram.params"),
            size: std::mem::size_of::<HistParams>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: format!("building the histogram pipeline on {}", ctx.report.name),
                message: e.to_string(),
            });
        }
        ctx.take_error("building the histogram pipeline")?;
        Ok(Self {
            m,
            pipeline,
            layout,
            hist,
            readback,
            params,
            tags: Vec::new(),
            counted: 0,
            // wgpu zeroes new buffers; clearing once more costs nothing next to a batch.
            stale: true,
            sketches: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// Whether no series is being counted (a stream's slots are free).
    pub(super) fn idle(&self) -> bool {
        self.tags.is_empty()
    }

    /// The mantissa bits its histograms count.
    pub(super) fn mantissa_bits(&self) -> u8 {
        self.m
    }

    /// The slot counting `tag`'s values: its own, or a free one; `None` when every slot
    /// counts another series.
    pub(super) fn slot(&mut self, tag: u64) -> Option<u32> {
        if let Some(i) = self.tags.iter().position(|&t| t == tag) {
            return Some(i as u32);
        }
        if self.tags.len() == SKETCH_SLOTS {
            return None;
        }
        self.tags.push(tag);
        self.sketches.push(Sketch::with_mantissa_bits(self.m));
        Some(self.tags.len() as u32 - 1)
    }

    /// Whether counting `len` more values could overflow a u32 counter before the next fold.
    pub(super) fn must_fold_before(&self, len: usize) -> bool {
        self.counted + len as u64 > u64::from(u32::MAX)
    }

    /// Zeroes the histograms if they may hold stale counts (in `encoder`, before its passes).
    pub(super) fn clear_if_stale(&mut self, encoder: &mut wgpu::CommandEncoder) {
        if self.stale {
            encoder.clear_buffer(&self.hist, 0, None);
            self.stale = false;
        }
    }

    /// What the histogram pass of one batch needs: its pipeline, a bind group over `input`
    /// (the batch's `len` values from its start) and its workgroups. Writes the pass's
    /// uniform: the caller submits the pass before another batch's.
    pub(super) fn prepare(
        &mut self,
        ctx: &GpuContext,
        input: &wgpu::Buffer,
        len: usize,
        slot: u32,
    ) -> (wgpu::ComputePipeline, wgpu::BindGroup, u32) {
        let m = u32::from(self.m);
        let (main, side, words) = layout(self.m);
        let base = slot as usize * words;
        let params = HistParams {
            len: len as u32,
            main: base as u32,
            side: (base + main) as u32,
            zeros: (base + main + side) as u32,
            shift: 23 - m,
            m,
            _pad: [0; 2],
        };
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        let bind_group = kernel::input_output_params_bind_group(
            &ctx.device,
            &self.layout,
            "microbatch.histogram.bind_group",
            [input, &self.hist, &self.params],
        );
        self.counted += len as u64;
        let groups = (len.div_ceil(4) as u32)
            .div_ceil(HIST_WG)
            .clamp(1, MAX_HIST_WORKGROUPS);
        (self.pipeline.clone(), bind_group, groups)
    }

    /// Records the copy of the histograms for [`GpuSketcher::fold`] into `encoder` and zeroes
    /// them after it; `false` when nothing was counted since the last fold.
    pub(super) fn encode_readback(&mut self, encoder: &mut wgpu::CommandEncoder) -> bool {
        if self.counted == 0 {
            return false;
        }
        let bytes = (self.tags.len() * layout_words(self.m) * 4) as u64;
        encoder.copy_buffer_to_buffer(&self.hist, 0, &self.readback, 0, bytes);
        encoder.clear_buffer(&self.hist, 0, Some(bytes));
        true
    }

    /// The readback buffer's slice [`GpuSketcher::encode_readback`] copied into.
    pub(super) fn readback_slice(&self) -> wgpu::BufferSlice<'_> {
        let bytes = (self.tags.len() * layout_words(self.m) * 4) as u64;
        self.readback.slice(..bytes)
    }

    /// Adds the counts read back (mapped) into each slot's sketch, and unmaps them.
    pub(super) fn fold(&mut self) -> Result<()> {
        {
            let view = self
                .readback_slice()
                .get_mapped_range()
                .map_err(|e| Error::Gpu {
                    context: "reading the histograms back".to_string(),
                    message: e.to_string(),
                })?;
            let counts: &[u32] = bytemuck::cast_slice(&view);
            let words = layout_words(self.m);
            for (slot, sketch) in self.sketches.iter_mut().enumerate() {
                fold_slot(&counts[slot * words..(slot + 1) * words], self.m, sketch);
            }
        }
        self.readback.unmap();
        self.counted = 0;
        Ok(())
    }

    /// Ends the stream: its sketches become what [`GpuSketcher::take`] gives, and the slots
    /// are free for the next one. `ok`: the stream finished (else its counts are dropped).
    pub(super) fn end_stream(&mut self, ok: bool) {
        let tags = std::mem::take(&mut self.tags);
        let sketches = std::mem::take(&mut self.sketches);
        self.ready = if ok {
            tags.into_iter().zip(sketches).collect()
        } else {
            Vec::new()
        };
        if self.counted > 0 {
            // Counts never folded (a failed readback): zeroed before the next stream.
            self.counted = 0;
            self.stale = true;
        }
    }

    /// Each tag's sketch of the last finished stream (then none until the next).
    pub(super) fn take(&mut self) -> Vec<(u64, Sketch)> {
        std::mem::take(&mut self.ready)
    }
}

fn layout_words(m: u8) -> usize {
    layout(m).2
}

/// Adds one slot's counters to `sketch`: normal buckets with their exponent rebiased from f32
/// to f64, subnormal ones at the f64 bucket of their leading one, zeros apart.
fn fold_slot(counts: &[u32], m: u8, sketch: &mut Sketch) {
    let (main, side, _) = layout(m);
    let per_sign = main / 2;
    let rebias = (1023i64 - 127) << m;
    let mut positive = Vec::new();
    let mut negative = Vec::new();
    for (k, &c) in counts[..main].iter().enumerate() {
        if c == 0 {
            continue;
        }
        let key = (k % per_sign) as i64 + rebias;
        if k < per_sign {
            positive.push((key, u64::from(c)));
        } else {
            negative.push((key, u64::from(c)));
        }
    }
    let width = 1usize << m;
    for (i, &c) in counts[main..main + side].iter().enumerate() {
        if c == 0 {
            continue;
        }
        let (sign_lead, top) = (i / width, (i % width) as i64);
        let (sign, lead) = (sign_lead / 23, (sign_lead % 23) as i64);
        // 2^(lead − 149) as an f64: biased exponent lead − 149 + 1023.
        let key = ((lead - 149 + 1023) << m) | top;
        if sign == 0 {
            positive.push((key, u64::from(c)));
        } else {
            negative.push((key, u64::from(c)));
        }
    }
    sketch.add_counts(u64::from(counts[main + side]), &positive, &negative);
}
