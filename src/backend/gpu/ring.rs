//! Streaming: the ring of staging and input buffers a batch is written into, and the
//! dispatches that reduce it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytemuck::Zeroable;

use super::pinned::PinnedBuffer;
use super::*;
use crate::{Error, Result};

/// Host memory a slot's batch is written into before the device copies it to `input`.
pub(super) enum SlotStaging {
    /// A wgpu `MAP_WRITE` buffer (the PCIe BAR on discrete GPUs), written while mapped.
    Mapped {
        buffer: wgpu::Buffer,
        /// Set by the map callback once `buffer` is mapped for writing again (after the device
        /// has copied its previous contents out).
        mapped: Arc<AtomicBool>,
    },
    /// Pinned host memory the copy engine reads by DMA, mapped for good; free again once the
    /// slot's last submission is done.
    Pinned(PinnedBuffer),
}

impl SlotStaging {
    fn buffer(&self) -> &wgpu::Buffer {
        match self {
            SlotStaging::Mapped { buffer, .. } => buffer,
            SlotStaging::Pinned(p) => &p.buffer,
        }
    }
}

pub(super) struct RingSlot {
    /// Bytes the slot's buffers hold.
    pub(super) capacity: u64,
    pub(super) staging: SlotStaging,
    pub(super) input: wgpu::Buffer,
    pub(super) params: wgpu::Buffer,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) in_flight: Option<wgpu::SubmissionIndex>,
}

/// Where one dispatch's partials sit in the partials buffer.
pub(super) struct DispatchRecord {
    pub(super) first: u32,
    pub(super) workgroups: u32,
    /// Whose batch this was ([`BatchReducer::push_tagged`]).
    pub(super) tag: u64,
}

impl GpuReducer {
    /// Workgroups for a dispatch over `len` elements: P, but never more than one per tile of
    /// `WORKGROUP_SIZE × vec_per_thread` vec4s (an idle workgroup only adds a partial to merge),
    /// and never so few that a thread sums more than [`MAX_THREAD_TILES`] tiles in one frame.
    pub(super) fn workgroups_for(&self, len: usize) -> u32 {
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
    pub(super) fn window_full(&self, workgroups: u32) -> bool {
        self.passes as usize == MAX_DISPATCHES_PER_READBACK
            || self.partials_used + workgroups > self.partials_capacity
    }

    /// Records one dispatch over one series into `encoder` ([`GpuReducer::encode_segments`]).
    pub(super) fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bind_group: &wgpu::BindGroup,
        workgroups: u32,
        tag: u64,
    ) {
        self.encode_segments(encoder, bind_group, &[(tag, workgroups)], None);
    }

    /// Records one dispatch into `encoder` (timestamps around it where supported) over
    /// `segments` (each a tag and its workgroups, in the order of the params' segment table)
    /// and notes where each segment's partials go. The window must have room for it
    /// (`window_full` is false for the workgroups together). `extra`: a dispatch (pipeline,
    /// bind group, workgroups) to run in the same pass after the reduction's: the batch's
    /// histogram, timed with it.
    pub(super) fn encode_segments(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bind_group: &wgpu::BindGroup,
        segments: &[(u64, u32)],
        extra: Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    ) {
        let workgroups: u32 = segments.iter().map(|s| s.1).sum();
        let q = self.passes * 2;
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
        if let Some(fixup) = &self.fixup {
            // Same bindings and grid; wgpu orders the two dispatches' accesses to `partials`.
            pass.set_pipeline(fixup);
            pass.dispatch_workgroups(workgroups, 1, 1);
        }
        if let Some((pipeline, bind_group, groups)) = &extra {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(*groups, 1, 1);
        }
        drop(pass);
        self.passes += 1;
        for &(tag, workgroups) in segments {
            self.window.push(DispatchRecord {
                first: self.partials_used,
                workgroups,
                tag,
            });
            self.partials_used += workgroups;
        }
    }

    pub(super) fn params_for(&self, len: usize) -> GpuParams {
        GpuParams {
            len: len as u32,
            out_base: self.partials_used,
            ..GpuParams::zeroed()
        }
    }

    pub(super) fn new_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// One dispatch over one series.
    pub(super) fn dispatch(&mut self, chunk: &[f32], tag: u64) -> Result<()> {
        self.dispatch_segments(&[(tag, chunk)])
    }

    /// [`GpuReducer::dispatch_pieces`] without a histogram.
    pub(super) fn dispatch_segments(&mut self, pieces: &[(u64, &[f32])]) -> Result<()> {
        self.dispatch_pieces(pieces, None)
    }

    /// One dispatch over `pieces` (each a tag and its values, none empty; at most
    /// [`MAX_SEGMENTS`], together at most `chunk_elems` once each is padded to whole vec4s):
    /// the pieces are staged one after another, each from a vec4 boundary, and each gets the
    /// workgroups a dispatch of its own would (a segmented reduction: one dispatch, one
    /// submission for several series). A single piece is dispatched as a plain batch.
    /// `hist`: the sketch slot a single piece's values are also counted into, in the same
    /// pass (`sketch.rs`).
    pub(super) fn dispatch_pieces(
        &mut self,
        pieces: &[(u64, &[f32])],
        hist: Option<u32>,
    ) -> Result<()> {
        assert!(!pieces.is_empty() && pieces.len() <= MAX_SEGMENTS);
        assert!(hist.is_none() || pieces.len() == 1);
        let mut params = GpuParams::zeroed();
        let mut segments = Vec::with_capacity(pieces.len());
        let (mut vec4s, mut workgroups) = (0u32, 0u32);
        for (i, &(tag, piece)) in pieces.iter().enumerate() {
            let w = self.workgroups_for(piece.len());
            params.segment[i] = [vec4s, piece.len() as u32, workgroups, w];
            segments.push((tag, w));
            vec4s += piece.len().div_ceil(4) as u32;
            workgroups += w;
        }
        assert!(vec4s as usize * 4 <= self.chunk_elems.next_multiple_of(4));
        if self.window_full(workgroups) {
            self.read_back()?;
        }

        let upload_start = Instant::now();
        let slot_index = self.next_slot;
        let needed = u64::from(vec4s) * 16;
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
        params.out_base = self.partials_used;
        if let [(_, only)] = pieces {
            params.len = only.len() as u32;
        } else {
            params.segments = pieces.len() as u32;
            params.len = vec4s * 4;
        }
        let slot = &mut self.ring[slot_index];
        // Bytes copied: up to the last piece's last value (rounded to 4 bytes).
        let last = pieces.last().map_or(0, |p| p.1.len());
        let bytes = u64::from(vec4s - last.div_ceil(4) as u32) * 16 + last as u64 * 4;
        let places = pieces
            .iter()
            .zip(&params.segment)
            .map(|(&(_, piece), seg)| {
                (seg[0] as usize * 16, bytemuck::cast_slice::<f32, u8>(piece))
            });
        match &mut slot.staging {
            SlotStaging::Mapped { buffer, mapped } => {
                {
                    let mut view =
                        buffer
                            .slice(..bytes)
                            .get_mapped_range_mut()
                            .map_err(|e| Error::Gpu {
                                context: "writing a batch into staging memory".to_string(),
                                message: e.to_string(),
                            })?;
                    for (at, src) in places {
                        copy_parallel(view.slice(at..at + src.len()), src);
                    }
                }
                buffer.unmap();
                mapped.store(false, Ordering::Release);
            }
            SlotStaging::Pinned(pinned) => {
                let bytes = pinned.bytes_mut();
                for (at, src) in places {
                    copy_parallel(
                        wgpu::WriteOnly::from_mut(&mut bytes[at..at + src.len()]),
                        src,
                    );
                }
            }
        }
        let queue = &self.ctx.queue;
        queue.write_buffer(&slot.params, 0, bytemuck::bytes_of(&params));
        let bind_group = slot.bind_group.clone();
        let (staging, input) = (slot.staging.buffer().clone(), slot.input.clone());

        let mut encoder = self.new_encoder("microbatch.reduce.encoder");
        encoder.copy_buffer_to_buffer(&staging, 0, &input, 0, bytes);
        let extra = match (hist, &mut self.sketcher) {
            (Some(slot), Some(sketcher)) => {
                sketcher.clear_if_stale(&mut encoder);
                Some(sketcher.prepare(&self.ctx, &input, pieces[0].1.len(), slot))
            }
            _ => None,
        };
        self.encode_segments(&mut encoder, &bind_group, &segments, extra);
        let index = self.ctx.queue.submit([encoder.finish()]);
        if let SlotStaging::Mapped { mapped, .. } = &self.ring[slot_index].staging {
            // Map the staging buffer again: the callback fires once the device has copied it
            // out, and the slot is free for the batch after next.
            let flag = Arc::clone(mapped);
            staging.map_async(wgpu::MapMode::Write, .., move |r| {
                flag.store(r.is_ok(), Ordering::Release);
            });
        }
        self.ring[slot_index].in_flight = Some(index);
        self.wall_compute_start.get_or_insert(upload_start);
        self.times.upload += upload_start.elapsed();
        self.next_slot = (self.next_slot + 1) % RING;
        Ok(())
    }

    /// A ring slot of `bytes`: staging buffer (mapped, every page touched), device input buffer,
    /// params uniform and bind group.
    pub(super) fn new_slot(&self, index: usize, bytes: u64) -> Result<RingSlot> {
        let device = &self.ctx.device;
        let (input, params, bind_group) = input_binding(
            device,
            &self.layout,
            &self.partials,
            &format!("microbatch.input[{index}]"),
            bytes,
        );
        let label = format!("microbatch.staging[{index}]");
        let staging = match self.pinned {
            Some(memory) => {
                SlotStaging::Pinned(PinnedBuffer::new(&self.ctx, memory, bytes, &label)?)
            }
            None => {
                let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&label),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: true,
                });
                // Touch every page now, so the batches through the slot do not pay for page
                // faults on freshly mapped (possibly PCIe BAR) memory.
                buffer
                    .slice(..)
                    .get_mapped_range_mut()
                    .map(|mut view| view.slice(..).fill(0))
                    .map_err(|e| Error::Gpu {
                        context: "preparing the staging ring".to_string(),
                        message: e.to_string(),
                    })?;
                SlotStaging::Mapped {
                    buffer,
                    mapped: Arc::new(AtomicBool::new(true)),
                }
            }
        };
        Ok(RingSlot {
            capacity: bytes,
            staging,
            input,
            params,
            bind_group,
            in_flight: None,
        })
    }

    /// Waits until the staging buffer of `slot_index` may be written again: mapped for writing
    /// (BAR), or its last submission done (pinned). The ring being full is what bounds host
    /// memory to RING batches; while it is not, this is a check.
    pub(super) fn wait_for_staging(&mut self, slot_index: usize) -> Result<()> {
        let poll_err = |e: wgpu::PollError| Error::Gpu {
            context: "waiting for the staging ring".to_string(),
            message: e.to_string(),
        };
        let device = &self.ctx.device;
        let slot = &mut self.ring[slot_index];
        let mapped = match &slot.staging {
            SlotStaging::Pinned(_) => {
                if let Some(index) = slot.in_flight.take() {
                    device
                        .poll(wgpu::PollType::Wait {
                            submission_index: Some(index),
                            timeout: None,
                        })
                        .map_err(poll_err)?;
                }
                return Ok(());
            }
            SlotStaging::Mapped { mapped, .. } => Arc::clone(mapped),
        };
        while !mapped.load(Ordering::Acquire) {
            // Wait for the submission that copied this buffer out (or for everything, if it is
            // no longer known); the map callback runs during a poll once it is done.
            let index = slot.in_flight.take();
            let last_try = index.is_none();
            device
                .poll(wgpu::PollType::Wait {
                    submission_index: index,
                    timeout: None,
                })
                .map_err(poll_err)?;
            if !mapped.load(Ordering::Acquire) {
                device.poll(wgpu::PollType::Poll).map_err(poll_err)?;
            }
            if last_try && !mapped.load(Ordering::Acquire) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
