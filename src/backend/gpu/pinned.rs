//! Pinned staging: batches written into plain host memory that the GPU's copy engine reads by
//! DMA, instead of wgpu's `MAP_WRITE` buffers, which wgpu places in device-local host-visible
//! memory (the PCIe BAR) where it can: there every host store crosses the bus (about 33 GB/s on
//! an H100/H200 host) and the copy engine sits idle.
//!
//! wgpu has no way to ask for such memory, so the buffer is made through wgpu-hal's Vulkan
//! device (`Device::as_hal`) with ash: a `TRANSFER_SRC` buffer bound to a `HOST_VISIBLE |
//! HOST_COHERENT` memory type, preferring one that is not device-local and is host-cached
//! (what `cudaHostAlloc` gives), mapped once for its whole life, and handed back to wgpu as a
//! `COPY_SRC` buffer (`Device::create_buffer_from_hal`), which then owns and frees it. wgpu
//! never maps it; the ring waits for the submission that copied a slot out before writing the
//! slot again.

use ash::vk;

use super::GpuContext;
use crate::{Error, Result};

/// Where the streaming path stages a batch before the device copies it to its input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Staging {
    /// Pinned where it helps (a discrete GPU on Vulkan with host memory outside the BAR),
    /// else BAR.
    #[default]
    Auto,
    /// wgpu's mapped `MAP_WRITE` buffers (the PCIe BAR on discrete GPUs with resizable BAR):
    /// works on every backend.
    Bar,
    /// Host memory the copy engine reads by DMA (Vulkan only; an error elsewhere).
    Pinned,
}

impl std::fmt::Display for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Staging::Auto => "auto",
            Staging::Bar => "bar",
            Staging::Pinned => "pinned",
        })
    }
}

/// The host memory a pinned staging buffer would use on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PinnedMemory {
    /// Vulkan memory type index.
    type_index: u32,
    /// Whether it is outside device-local memory (plain host memory: DMA by the copy engine).
    pub(super) host_only: bool,
    /// Whether it is host-cached (fast host writes and reads).
    pub(super) cached: bool,
}

/// The best memory type for pinned staging among `bits` (a buffer's allowed types): host
/// visible and coherent, then not device-local, then host-cached. `None`: no host-visible
/// coherent type.
fn pick_memory(props: &vk::PhysicalDeviceMemoryProperties, bits: u32) -> Option<PinnedMemory> {
    let needed = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
    (0..props.memory_type_count)
        .filter(|&i| bits & (1 << i) != 0)
        .filter_map(|i| {
            let flags = props.memory_types[i as usize].property_flags;
            flags.contains(needed).then(|| PinnedMemory {
                type_index: i,
                host_only: !flags.contains(vk::MemoryPropertyFlags::DEVICE_LOCAL),
                cached: flags.contains(vk::MemoryPropertyFlags::HOST_CACHED),
            })
        })
        .max_by_key(|m| (m.host_only, m.cached, std::cmp::Reverse(m.type_index)))
}

fn vk_error(context: &str, e: vk::Result) -> Error {
    Error::Gpu {
        context: context.to_string(),
        message: format!("Vulkan: {e}"),
    }
}

/// The memory pinned staging would use on `ctx`'s device, or why there is none (not Vulkan, or
/// no host-visible coherent memory for transfer buffers).
pub(super) fn probe(ctx: &GpuContext) -> std::result::Result<PinnedMemory, String> {
    // SAFETY: the guard only reads the physical device's properties and creates and destroys a
    // buffer that nothing else sees; it is dropped before the function returns.
    unsafe {
        let Some(hal) = ctx.device.as_hal::<wgpu::hal::api::Vulkan>() else {
            return Err(format!(
                "pinned staging needs the Vulkan backend (this device is {})",
                ctx.report.api
            ));
        };
        let raw = hal.raw_device();
        let info = vk::BufferCreateInfo::default()
            .size(1 << 16)
            .usage(vk::BufferUsageFlags::TRANSFER_SRC)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        let buffer = raw
            .create_buffer(&info, None)
            .map_err(|e| format!("creating a transfer buffer: {e}"))?;
        let bits = raw.get_buffer_memory_requirements(buffer).memory_type_bits;
        raw.destroy_buffer(buffer, None);
        let props = hal
            .shared_instance()
            .raw_instance()
            .get_physical_device_memory_properties(hal.raw_physical_device());
        pick_memory(&props, bits).ok_or_else(|| {
            "the device has no host-visible coherent memory for transfer buffers".to_string()
        })
    }
}

/// A staging buffer in pinned host memory, mapped for its whole life.
pub(super) struct PinnedBuffer {
    /// The wgpu view of it (`COPY_SRC`); wgpu frees the Vulkan buffer and memory when the last
    /// use on the device is done.
    pub(super) buffer: wgpu::Buffer,
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain host memory owned by this value (through `buffer`), so it may
// move between threads with it; the raw pointer is only turned into a slice through `&mut self`.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    /// A pinned staging buffer of `bytes` in `memory` on `ctx`'s device.
    pub(super) fn new(
        ctx: &GpuContext,
        memory: PinnedMemory,
        bytes: u64,
        label: &str,
    ) -> Result<Self> {
        let context = "creating a pinned staging buffer";
        let len = usize::try_from(bytes).map_err(|_| Error::Gpu {
            context: context.to_string(),
            message: format!("{bytes} bytes do not fit in memory"),
        })?;
        // SAFETY: every Vulkan object made here is made on the device wgpu drives, with the
        // usage the wgpu descriptor below states; on any failure what was made is destroyed
        // before returning. Once wrapped, wgpu owns buffer and memory (`from_raw_managed`) and
        // frees them when the wgpu buffer is dropped and no submission uses it; wgpu never maps
        // it, and the mapping made here stays valid until the memory is freed.
        unsafe {
            let hal = ctx
                .device
                .as_hal::<wgpu::hal::api::Vulkan>()
                .ok_or_else(|| Error::Gpu {
                    context: context.to_string(),
                    message: format!("the device is not Vulkan ({})", ctx.report.api),
                })?;
            let raw = hal.raw_device();
            let info = vk::BufferCreateInfo::default()
                .size(bytes)
                .usage(vk::BufferUsageFlags::TRANSFER_SRC)
                .sharing_mode(vk::SharingMode::EXCLUSIVE);
            let buffer = raw
                .create_buffer(&info, None)
                .map_err(|e| vk_error(context, e))?;
            let req = raw.get_buffer_memory_requirements(buffer);
            if req.memory_type_bits & (1 << memory.type_index) == 0 {
                raw.destroy_buffer(buffer, None);
                return Err(Error::Gpu {
                    context: context.to_string(),
                    message: "the pinned memory type does not fit this buffer".to_string(),
                });
            }
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(memory.type_index);
            let mem = match raw.allocate_memory(&alloc, None) {
                Ok(m) => m,
                Err(e) => {
                    raw.destroy_buffer(buffer, None);
                    return Err(vk_error(context, e));
                }
            };
            let mapped = raw
                .bind_buffer_memory(buffer, mem, 0)
                .and_then(|()| raw.map_memory(mem, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()));
            let ptr = match mapped.map(|p| std::ptr::NonNull::new(p.cast::<u8>())) {
                Ok(Some(p)) => p,
                other => {
                    raw.destroy_buffer(buffer, None);
                    raw.free_memory(mem, None);
                    let e = other.err().unwrap_or(vk::Result::ERROR_MEMORY_MAP_FAILED);
                    return Err(vk_error(context, e));
                }
            };
            // Touch every page now, so the batches through it pay no page faults.
            std::ptr::write_bytes(ptr.as_ptr(), 0, len);
            drop(hal);
            let hal_buffer = wgpu::hal::vulkan::Buffer::from_raw_managed(buffer, mem, 0, req.size);
            let buffer = ctx.device.create_buffer_from_hal::<wgpu::hal::api::Vulkan>(
                hal_buffer,
                &wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage: wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                },
            );
            Ok(Self { buffer, ptr, len })
        }
    }

    /// The mapped bytes, for the host to write a batch into while no submission reads them.
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` bytes of memory owned by `buffer` for as long as `self`
        // lives; `&mut self` makes this the only view. The ring writes only after the
        // submission that last copied from this buffer has completed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(types: &[vk::MemoryPropertyFlags]) -> vk::PhysicalDeviceMemoryProperties {
        let mut p = vk::PhysicalDeviceMemoryProperties {
            memory_type_count: types.len() as u32,
            ..Default::default()
        };
        for (i, &f) in types.iter().enumerate() {
            p.memory_types[i].property_flags = f;
        }
        p
    }

    /// On a discrete GPU's list (device-local, host coherent, host cached, BAR) the host-cached
    /// type outside the device wins; the BAR type only where it is the sole host-visible one;
    /// nothing without a host-visible coherent type or outside the buffer's allowed types.
    #[test]
    fn picks_host_cached_memory_outside_the_device() {
        use vk::MemoryPropertyFlags as F;
        let hv = F::HOST_VISIBLE | F::HOST_COHERENT;
        let discrete = props(&[
            F::DEVICE_LOCAL,
            hv,
            hv | F::HOST_CACHED,
            F::DEVICE_LOCAL | hv,
        ]);
        let m = pick_memory(&discrete, 0b1111).unwrap();
        assert_eq!((m.type_index, m.host_only, m.cached), (2, true, true));
        assert_eq!(pick_memory(&discrete, 0b1011).unwrap().type_index, 1);
        let bar = pick_memory(&discrete, 0b1001).unwrap();
        assert_eq!((bar.type_index, bar.host_only), (3, false));
        assert_eq!(pick_memory(&discrete, 0b0001), None);
        // lavapipe: one type, everything.
        let software = props(&[F::DEVICE_LOCAL | hv | F::HOST_CACHED]);
        assert_eq!(pick_memory(&software, 1).unwrap().type_index, 0);
        assert_eq!(pick_memory(&props(&[F::HOST_VISIBLE]), 1), None);
    }
}
