//! An application that already works on the GPU: it opens its own wgpu device, fills a storage
//! buffer with a compute pass of its own, and has microbatch reduce that buffer in place — no
//! copy back to the host, the same `wgpu` (`microbatch::wgpu`).
//!
//! `cargo run --release --example reduce_wgpu_buffer [N]` (any adapter with SHADER_F64: a
//! discrete GPU, or Mesa's lavapipe on a machine without one).

use microbatch::wgpu;
use microbatch::{GpuConfig, GpuContext, GpuReducer};
use wgpu::util::DeviceExt;

/// The application's own kernel: x[i] = (i mod 65536) − 32767.5, exact in f32 for any i.
const FILL: &str = r#"
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> n: vec4<u32>;

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 256u;
    if (i < n.x) {
        x[i] = f32(i & 0xffffu) - 32767.5;
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
    // One dispatch per binding-sized piece of the buffer (the batch size caps a dispatch).
    let mut reducer = GpuReducer::new(&ctx, GpuConfig::new(n as usize))?;
    let (partial, times) = reducer.reduce_buffer(&data, 0, n as usize)?;
    let stats = partial.finish(0, false);

    // The exact values, from integer sums of y = i mod 65536 (x = y − 32767.5).
    let (full, rest) = (u64::from(n) / 65536, u64::from(n) % 65536);
    let sum_to = |m: u64| i128::from(m) * i128::from(m.saturating_sub(1)) / 2;
    let sq_to = |m: u64| {
        let m = i128::from(m);
        if m == 0 {
            0
        } else {
            (m - 1) * m * (2 * m - 1) / 6
        }
    };
    let sy = i128::from(full) * sum_to(65536) + sum_to(rest);
    let syy = i128::from(full) * sq_to(65536) + sq_to(rest);
    let nn = i128::from(n);
    // mean = Σy/n − 32767.5 = (2Σy − 65535·n) / 2n, one rounding.
    let mean = (2 * sy - 65535 * nn) as f64 / (2.0 * f64::from(n));
    // n·Σy² − (Σy)² is exact in i128; var = that / n².
    let var = (nn * syy - sy * sy) as f64 / (f64::from(n) * f64::from(n));
    println!("{n} values reduced on {}", ctx.adapter().name);
    println!("  mean {:?} (exact {mean})", stats.mean);
    println!("  var  {:?} (exact {var})", stats.var);
    println!(
        "  min {:?}, max {:?}, compute {:?}",
        stats.min, stats.max, times.compute
    );
    Ok(())
}
