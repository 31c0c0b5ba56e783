//! Data that stays on the device: uploaded once and reduced any number of times, or a buffer
//! the application already holds.

use std::time::Instant;

use super::*;
use crate::backend::{BatchReducer, Timings};
use crate::stats::Partial;
use crate::{Error, Result};

pub(super) struct ResidentChunk {
    pub(super) _input: wgpu::Buffer,
    pub(super) params: wgpu::Buffer,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) len: usize,
}

/// Data uploaded once with [`GpuReducer::upload`], reducible any number of times with
/// [`GpuReducer::reduce_resident`] by the reducer that uploaded it.
pub struct GpuResident {
    pub(super) chunks: Vec<ResidentChunk>,
    pub(super) len: usize,
    /// The reducer that uploaded it (its bind groups point at that reducer's buffers).
    pub(super) owner: u64,
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

impl GpuReducer {
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
    pub fn reduce_resident(&mut self, data: &GpuResident) -> Result<(Partial, Timings)> {
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
    /// [`Error::InvalidBuffer`] naming what is wrong; nothing is dispatched. A buffer of
    /// another device is refused the same way (wgpu's validation, caught here). One of another
    /// `wgpu::Instance` cannot be told apart (wgpu's resource ids are per instance): create the
    /// context from the device that made the buffer. The caller must not write the buffer until
    /// this returns.
    pub fn reduce_buffer(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<(Partial, Timings)> {
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
        // The window and partials as last submitted: dispatches recorded after it are only in
        // `encoder`, and are forgotten with it if a later chunk fails.
        let mut mark = (self.window.len(), self.partials_used, self.passes);
        while done < len {
            let n = (len - done).min(step);
            let workgroups = self.workgroups_for(n);
            if self.window_full(workgroups) {
                self.ctx.queue.submit([encoder.finish()]);
                encoder = self.new_encoder("microbatch.buffer.encoder");
                self.read_back()?;
                mark = (self.window.len(), self.partials_used, self.passes);
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
            // A buffer of another device fails wgpu's validation here: caught as a typed
            // error (the application's uncaptured-error handler, often a panic, never sees it).
            let scope = self
                .ctx
                .device
                .push_error_scope(wgpu::ErrorFilter::Validation);
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
            if let Some(e) = pollster::block_on(scope.pop()) {
                // Nothing of this call was submitted: the dispatches recorded so far go with
                // the encoder, and the window forgets them.
                self.window.truncate(mark.0);
                self.partials_used = mark.1;
                self.passes = mark.2;
                return bad(format!(
                    "wgpu refused to bind it (a buffer of another device?): {e}"
                ));
            }
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
}
