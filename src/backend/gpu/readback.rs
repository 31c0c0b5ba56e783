//! Reading partials back: one map per window of dispatches, merged per tag in dispatch order.

use std::time::{Duration, Instant};

use super::*;
use crate::stats::Partial;
use crate::{Error, Result};

impl GpuReducer {
    /// Copies the window's partials and timestamps back in one map, and merges them.
    pub(super) fn read_back(&mut self) -> Result<()> {
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
        let n_queries = self.passes * 2;
        if let Some((set, resolve, readback)) = &self.queries {
            encoder.resolve_query_set(set, 0..n_queries, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, readback, 0, u64::from(n_queries) * 8);
        }
        // The window's quantile histograms come back with its partials.
        let histograms = self
            .sketcher
            .as_mut()
            .is_some_and(|s| s.encode_readback(&mut encoder));
        self.ctx.queue.submit([encoder.finish()]);

        let partial_slice = self.partials_readback.slice(..partial_bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let tx_hist = tx.clone();
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
        if let Some(sketcher) = self.sketcher.as_ref().filter(|_| histograms) {
            let tx3 = tx_hist;
            sketcher
                .readback_slice()
                .map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx3.send(r);
                });
        } else {
            drop(tx_hist);
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
        if histograms && let Some(sketcher) = &mut self.sketcher {
            sketcher.fold()?;
        }
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

        let used = self.partials_used as usize;
        self.partials_used = 0;
        self.passes = 0;
        if let Some(i) = partials[..used].iter().position(|p| p.dirty != 0) {
            // The deferred slow path's fixup clears every mark: one left means its dispatch did
            // not run or did not finish, and that workgroup's values are missing or unclassified.
            self.window.clear();
            return Err(Error::Gpu {
                context: "reading partials back".to_string(),
                message: format!(
                    "partial {i} is still marked for the slow path (the fixup dispatch did not complete): refusing a result without it"
                ),
            });
        }
        for d in self.window.drain(..) {
            // Workgroup order: the result does not depend on which workgroup finished first.
            let range = d.first as usize..(d.first + d.workgroups) as usize;
            let mut total = Partial::EMPTY;
            for p in &partials[range] {
                total.merge(&p.to_partial());
            }
            self.acc.merge(d.tag, &total);
        }
        self.times.merge += readback_done.elapsed();
        Ok(())
    }
}

/// The timestamp query set, the buffer its results resolve into and the one they are read
/// back through.
pub(super) type Queries = (wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer);

/// The partials buffer (room for 64 windows of `workgroups`, at least 64 Ki partials), its
/// capacity, its readback buffer, and the timestamp queries where the device has them.
pub(super) fn buffers(
    ctx: &GpuContext,
    workgroups: u32,
) -> (wgpu::Buffer, u32, wgpu::Buffer, Option<Queries>) {
    let device = &ctx.device;
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
    (partials, partials_capacity, partials_readback, queries)
}
