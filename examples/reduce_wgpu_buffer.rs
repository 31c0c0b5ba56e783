//! An application that already works on the GPU: it opens its own wgpu device, fills a storage
//! buffer with a compute pass of its own, and has microbatch reduce that buffer in place — no
//! copy back to the host, the same `wgpu` (`microbatch::wgpu`).
//!
//! `cargo run --release --example reduce_wgpu_buffer [N]` (any adapter with SHADER_F64: a
//! discrete GPU, or Mesa's lavapipe on a machine without one).

use microbatch::wgpu;
use microbatch::{GpuConfig, GpuContext, GpuReducer};
use wgpu::util::DeviceExt;

/// The application's own kernel: x[i] = i / 2 − 1000.
const FILL: &str = r#"
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> n: vec4<u32>;

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 256u;
    if (i < n.x) {
        x[i] = f32(i) * 0.5 - 1000.0;
    }
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse::<f64>().map(|v| v as u32))
        .transpose()?
        .unwrap_or(10_000_000);

    // The application's device: any adapter with SHADER_F64, which the reduction needs.
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .find(|a| a.features().contains(wgpu::Features::SHADER_F64))
        .ok_or("no adapter with SHADER_F64 (install mesa-vulkan-drivers for lavapipe)")?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app.device"),
        required_features: wgpu::Features::SHADER_F64,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;

    // Its own buffer, filled by its own compute pass (rounded up to whole vec4s for the reducer).
    let bytes = (u64::from(n) * 4).next_multiple_of(16);
    let data = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app.data"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let count = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("app.n"),
        contents: bytemuck::cast_slice(&[n, 0, 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("app.fill"),
        source: wgpu::ShaderSource::Wgsl(FILL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("app.fill"),
        layout: None,
        module: &module,
        entry_point: Some("fill"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("app.fill"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: data.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: count.as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let groups = n.div_ceil(256);
        pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
    }
    queue.submit([encoder.finish()]);

    // microbatch on the same device: the buffer is reduced where it is.
    let ctx = GpuContext::from_device(&adapter.get_info(), device, queue);
    let mut reducer = GpuReducer::new(&ctx, GpuConfig::new(1 << 24))?;
    let (partial, times) = reducer.reduce_buffer(&data, 0, n as usize)?;
    let stats = partial.finish(0, false);

    // Closed forms for x_i = i/2 − 1000: mean (n−1)/4 − 1000, var (n² − 1)/48.
    let nf = f64::from(n);
    println!("{n} values reduced on {}", ctx.adapter().name);
    println!(
        "  mean {:?} (closed form {})",
        stats.mean,
        (nf - 1.0) / 4.0 - 1000.0
    );
    println!(
        "  var  {:?} (closed form {})",
        stats.var,
        (nf * nf - 1.0) / 48.0
    );
    println!(
        "  min {:?}, max {:?}, compute {:?}",
        stats.min, stats.max, times.compute
    );
    Ok(())
}
