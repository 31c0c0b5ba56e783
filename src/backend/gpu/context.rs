//! Adapters and devices: listing, choosing, and opening one (kept apart from the work, as in
//! wgpu's `hello_compute`, so tests and benches can open a device once and reuse it).

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::{Error, Result};

/// wgpu's primary backends: Vulkan, Metal, DX12. GL is left out on purpose (DESIGN.md).
const BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

/// One adapter as `microbatch devices` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterReport {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Graphics API: `Vulkan`, `Metal`, `Dx12`.
    pub api: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` (software, e.g. lavapipe) or `Other`.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest buffer the adapter allows, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding, in bytes: a batch larger than this is split.
    pub max_storage_binding: u64,
    /// Smallest subgroup size.
    pub subgroup_min_size: u32,
    /// Largest subgroup size.
    pub subgroup_max_size: u32,
    /// Whether subgroup operations are available to shaders.
    pub subgroups: bool,
    /// Whether timestamp queries are available (GPU compute time instead of wall time).
    pub timestamps: bool,
    /// Whether shaders can use f64 (`SHADER_F64`), which the reduction kernel needs.
    pub f64: bool,
    /// Whether this is a software rasterizer running on the CPU (only used when asked for).
    pub software: bool,
}

impl AdapterReport {
    fn new(adapter: &wgpu::Adapter) -> Self {
        Self::from_parts(&adapter.get_info(), &adapter.limits(), adapter.features())
    }

    fn from_parts(
        info: &wgpu::AdapterInfo,
        limits: &wgpu::Limits,
        features: wgpu::Features,
    ) -> Self {
        let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
            (false, false) => format!("{} {}", info.driver, info.driver_info),
            (false, true) => info.driver.clone(),
            (true, _) => info.driver_info.clone(),
        };
        Self {
            name: info.name.clone(),
            api: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver,
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            f64: features.contains(wgpu::Features::SHADER_F64),
            software: info.device_type == wgpu::DeviceType::Cpu,
        }
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = BACKENDS;
    wgpu::Instance::new(desc)
}

fn adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(BACKENDS))
}

/// Lists every adapter wgpu finds on the primary backends, hardware and software.
pub fn list_adapters() -> Vec<AdapterReport> {
    adapters().iter().map(AdapterReport::new).collect()
}

/// Which adapter to open.
#[derive(Debug, Clone, Default)]
pub struct AdapterSelector {
    /// Case-insensitive substring of the adapter's name.
    pub name: Option<String>,
    /// Whether a software adapter (llvmpipe/lavapipe, device type `Cpu`) may be chosen.
    pub allow_software: bool,
}

impl AdapterSelector {
    /// Any adapter, software included: what `--backend gpu` asks for.
    pub fn any() -> Self {
        Self {
            name: None,
            allow_software: true,
        }
    }

    /// Hardware adapters only: what `--backend auto` tries first.
    pub fn hardware() -> Self {
        Self {
            name: None,
            allow_software: false,
        }
    }

    /// The adapter whose name contains `text` (case-insensitive), software or not.
    pub fn named(text: impl Into<String>) -> Self {
        Self {
            name: Some(text.into()),
            allow_software: true,
        }
    }

    fn describe(&self) -> String {
        match (&self.name, self.allow_software) {
            (Some(n), _) => format!("adapter whose name contains {n:?}"),
            (None, true) => "GPU adapter".to_string(),
            (None, false) => "hardware GPU adapter".to_string(),
        }
    }
}

/// Preference among device types: a real GPU first, a software one last.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// An open device and queue with everything the reducers need to know about the adapter.
///
/// Cheap to clone; one context can serve any number of [`super::GpuReducer`]s in turn.
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) report: AdapterReport,
    pub(crate) limits: wgpu::Limits,
    pub(crate) timestamps: bool,
    /// Whether the device was opened with `Features::SUBGROUP` (the kernel's subgroup variant).
    pub(crate) subgroups: bool,
    /// wgpu reports validation and out-of-memory errors asynchronously; they land here and the
    /// reducer turns them into [`Error::Gpu`] instead of wgpu's default panic.
    pub(crate) errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.report.name)
            .field("api", &self.report.api)
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Opens the best adapter matching `selector`: discrete, then integrated, virtual, other, and
    /// a software adapter last (and only when `selector.allow_software`).
    pub fn new(selector: &AdapterSelector) -> Result<Self> {
        let mut all = adapters();
        let available: Vec<String> = all
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let needle = selector.name.as_ref().map(|n| n.to_lowercase());
        all.retain(|a| {
            let info = a.get_info();
            let name_ok = needle
                .as_ref()
                .is_none_or(|n| info.name.to_lowercase().contains(n));
            let type_ok = selector.allow_software || info.device_type != wgpu::DeviceType::Cpu;
            name_ok && type_ok
        });
        all.sort_by_key(|a| rank(a.get_info().device_type));
        let adapter = all
            .into_iter()
            .next()
            .ok_or_else(|| Error::AdapterNotFound {
                wanted: selector.describe(),
                available,
            })?;
        Self::from_adapter(adapter)
    }

    /// Opens a device on `adapter` with its full limits and timestamp queries where supported.
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let report = AdapterReport::new(&adapter);
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut required_features = wgpu::Features::empty();
        if timestamps {
            required_features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        if subgroups {
            required_features |= wgpu::Features::SUBGROUP;
        }
        if report.f64 {
            required_features |= wgpu::Features::SHADER_F64;
        }
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("microbatch.device"),
            required_features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::Gpu {
                context: format!("opening a device on {}", report.name),
                message: e.to_string(),
            })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Self {
            device,
            queue,
            report,
            limits,
            timestamps,
            subgroups,
            errors,
        })
    }

    /// A context over the application's own device and queue (and its adapter's info), so that
    /// microbatch reduces buffers the application already holds ([`super::GpuReducer::reduce_buffer`])
    /// with the same wgpu (`microbatch::wgpu`). The features and limits are the device's own:
    /// the reduction kernel needs `SHADER_F64` enabled on it, and uses `TIMESTAMP_QUERY` and
    /// `SUBGROUP` where they are. The application keeps its own handler for uncaptured errors
    /// (microbatch validates what it is given before encoding anything).
    pub fn from_device(info: &wgpu::AdapterInfo, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let features = device.features();
        let limits = device.limits();
        Self {
            report: AdapterReport::from_parts(info, &limits, features),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            device,
            queue,
            limits,
            errors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The device this context runs on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue this context submits to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter this context opened.
    pub fn adapter(&self) -> &AdapterReport {
        &self.report
    }

    /// Returns the first GPU error reported since the last call, if any.
    pub(crate) fn take_error(&self, context: &str) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(Error::Gpu {
            context: context.to_string(),
            message,
        })
    }
}
