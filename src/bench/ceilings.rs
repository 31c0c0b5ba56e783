//! The ceilings the sweep judges its points against, measured on the same machine in the same
//! run: the host's read bandwidth (a plain SIMD sum, scheduled like the CPU backend), the
//! device's copy bandwidth (copy engine and a copy shader) and the streaming upload's two steps
//! (host writes into mapped staging memory, the device's copy into a storage buffer).

use std::time::Instant;

use serde::Serialize;

use super::Spread;
use crate::backend::gpu::{GpuContext, WORKGROUP_SIZE};
use crate::{Error, Result};

/// Median seconds of `runs` (at least 3) calls of `once`, after one unmeasured call.
pub(super) fn median_seconds(runs: usize, mut once: impl FnMut() -> Result<f64>) -> Result<f64> {
    once()?;
    let times = (0..runs.max(3))
        .map(|_| once())
        .collect::<Result<Vec<f64>>>()?;
    Ok(Spread::of(times).median)
}

/// Host read bandwidth: a plain prefetched SIMD sum over `data` on all threads, cut and scheduled
/// like the CPU backend (`read_slice`); median of `runs` passes.
pub fn host_read_bandwidth(data: &[f32], runs: usize) -> f64 {
    let seconds =
        median_seconds(runs, || Ok(host_read_seconds(data))).expect("a host pass cannot fail");
    (data.len() * 4) as f64 / seconds
}

/// Seconds of one plain read pass over `data` on all threads.
pub(super) fn host_read_seconds(data: &[f32]) -> f64 {
    let t = Instant::now();
    std::hint::black_box(crate::backend::cpu::read_slice(data));
    t.elapsed().as_secs_f64()
}

fn gpu_err(context: &str) -> impl Fn(wgpu::PollError) -> Error + '_ {
    move |e| Error::Gpu {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Device-to-device copy bandwidth (bytes read + written per second) over `bytes`-sized buffers.
pub fn gpu_copy_bandwidth(ctx: &GpuContext, bytes: u64, runs: usize) -> Result<f64> {
    let hi = ctx.limits.max_buffer_size.min(1 << 30);
    let bytes = bytes.clamp((1 << 20).min(hi), hi) / 4 * 4;
    let make = |label| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (
        make("microbatch.bench.copy_src"),
        make("microbatch.bench.copy_dst"),
    );
    let seconds = time_buffer_copies(ctx, &src, &dst, bytes, runs, "timing a device copy")?;
    Ok(2.0 * bytes as f64 / seconds)
}

/// Median seconds per `copy_buffer_to_buffer` of `bytes` from `src` to `dst`: eight copies per
/// submit, `runs` submits after one unmeasured one. `what` names the step in errors.
fn time_buffer_copies(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    bytes: u64,
    runs: usize,
    what: &str,
) -> Result<f64> {
    const COPIES: u32 = 8;
    let once = || -> Result<f64> {
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("microbatch.bench.copies"),
            });
        for _ in 0..COPIES {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
        }
        let t = Instant::now();
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(gpu_err(what))?;
        Ok(t.elapsed().as_secs_f64())
    };
    let seconds = median_seconds(runs, once)?;
    ctx.take_error(what)?;
    Ok(seconds / f64::from(COPIES))
}

/// Device-to-device copy bandwidth of a WGSL compute shader (`shaders/copy.wgsl`, the reduction's
/// access pattern), bytes read + written per second, over buffers of up to `bytes`. On a big GPU
/// the copy engine behind `copy_buffer_to_buffer` can be far slower than the SMs (838 GB/s
/// against 4.2 TB/s on an H200), so this is the fairer ceiling for a compute kernel.
pub fn gpu_shader_copy_bandwidth(ctx: &GpuContext, bytes: u64, runs: usize) -> Result<f64> {
    let hi = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size)
        .min(1 << 30);
    let bytes = bytes.clamp((1 << 20).min(hi), hi) / 16 * 16;
    let device = &ctx.device;
    let make = |label, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = make(
        "microbatch.bench.shader_copy_src",
        wgpu::BufferUsages::STORAGE,
    );
    let dst = make(
        "microbatch.bench.shader_copy_dst",
        wgpu::BufferUsages::STORAGE,
    );
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("microbatch.copy"),
        source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/copy.wgsl").into()),
    });
    let vec_per_thread = crate::backend::gpu::default_vec_per_thread(ctx.adapter());
    let constants = [
        ("WG_SIZE", f64::from(WORKGROUP_SIZE)),
        ("VEC_PER_THREAD", f64::from(vec_per_thread)),
    ];
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("microbatch.copy"),
        layout: None,
        module: &module,
        entry_point: Some("copy"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("microbatch.copy.bind_group"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: dst.as_entire_binding(),
            },
        ],
    });
    let tiles = (bytes / 16).div_ceil(u64::from(WORKGROUP_SIZE * vec_per_thread));
    let workgroups = tiles.min(u64::from(ctx.limits.max_compute_workgroups_per_dimension)) as u32;
    const COPIES: u32 = 8;
    let once = || -> Result<f64> {
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("microbatch.bench.shader_copy"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            for _ in 0..COPIES {
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
        }
        let t = Instant::now();
        ctx.queue.submit([enc.finish()]);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(gpu_err("timing a shader copy"))?;
        Ok(t.elapsed().as_secs_f64())
    };
    let seconds = median_seconds(runs, once)?;
    ctx.take_error("timing a shader copy")?;
    Ok(2.0 * bytes as f64 * f64::from(COPIES) / seconds)
}

/// Host-to-device bandwidth of the streaming path's two steps, bytes per second, measured the way
/// the pipeline does them: the host writing a batch into a mapped `MAP_WRITE` staging buffer on
/// all threads, and the device copying the staging buffer into a storage buffer. With the ring
/// they overlap, so streaming can at best reach the slower of the two. Where the staging memory
/// is device-local and host-visible (resizable BAR, as on an H200), the host's writes cross the
/// link and the device copy stays on the card.
pub fn gpu_upload_bandwidth(ctx: &GpuContext, host: &[f32], runs: usize) -> Result<Upload> {
    let hi = ctx.limits.max_buffer_size.min(1 << 30);
    let host = &host[..host.len().min((hi / 4) as usize)];
    let src: &[u8] = bytemuck::cast_slice(host);
    let bytes = (src.len() as u64).max(16).next_multiple_of(16);
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("microbatch.bench.upload_staging"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    let map_err = |e: wgpu::MapRangeError| Error::Gpu {
        context: "writing the upload ceiling's staging buffer".to_string(),
        message: e.to_string(),
    };
    // First touch outside the timing, as the streaming ring does at creation.
    staging
        .slice(..)
        .get_mapped_range_mut()
        .map(|mut v| v.slice(..).fill(0))
        .map_err(map_err)?;
    let host_write = median_seconds(runs, || {
        let t = Instant::now();
        let view = staging.slice(..).get_mapped_range_mut().map_err(map_err)?;
        let mut view = view;
        crate::backend::gpu::copy_parallel(view.slice(..), src);
        drop(view);
        Ok(t.elapsed().as_secs_f64())
    })?;
    staging.unmap();
    let dst = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("microbatch.bench.upload_dst"),
        size: bytes,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let device_copy = time_buffer_copies(ctx, &staging, &dst, bytes, runs, "timing an upload")?;
    Ok(Upload {
        host_write: src.len() as f64 / host_write,
        device_copy: bytes as f64 / device_copy,
    })
}

/// The two steps of the streaming upload, bytes per second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Upload {
    /// Host threads writing into mapped staging memory.
    pub host_write: f64,
    /// The device copying staging memory into a storage buffer.
    pub device_copy: f64,
}

impl Upload {
    /// What streaming can at best reach with the two overlapped: the slower step.
    pub fn ceiling(&self) -> f64 {
        self.host_write.min(self.device_copy)
    }
}
