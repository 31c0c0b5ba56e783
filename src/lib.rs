//! # microbatch
//!
//! Exact statistics (count, sum, mean, min, max, variance, standard deviation) of huge numeric
//! streams (f32, f64, integers, text), each at its own precision, reduced in fixed-size
//! micro-batches by a WGSL parallel reduction on the GPU through [wgpu], or by a vectorized
//! multi-threaded CPU backend where no GPU is usable.
//!
//! The pipeline: a [`source::BatchSource`] yields micro-batches; a [`backend::BatchReducer`]
//! reduces each to mergeable [`Partial`]s (on the GPU, one per workgroup: the workgroups are the
//! P parallel processors); partials merge with Chan's formula in double-double arithmetic into
//! [`Stats`]. Every stage is timed ([`report::Timings`]).
//!
//! Numerics ([`numerics`]): every small block is reduced by an exact two-pass around its own
//! pivot, so the error does not depend on where the data sit: the sum within 1e-12·Σ|x|, the
//! variance within 1e-12 relative (while mean²/var ≤ 1e12), count, min and max exact, integer
//! sums exact; the same input gives the same bits every run. NaN and ±inf are counted from the
//! bits and propagate as in numpy (`skip_nan` gives numpy's `nan*` behaviour).
//!
//! ```
//! use microbatch::{BackendChoice, Engine, EngineConfig};
//!
//! let data: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
//! let config = EngineConfig { backend: BackendChoice::Cpu, batch_size: 4096, ..Default::default() };
//! let mut engine = Engine::new(&config)?;
//! let report = engine.reduce(&data)?;
//! assert_eq!(report.stats.count, 10_000);
//! assert_eq!(report.stats.mean, Some(4999.5));
//! assert_eq!(report.stats.max, Some(9999.0));
//! # Ok::<(), microbatch::Error>(())
//! ```
//!
//! With `BackendChoice::Auto` the same code runs on a hardware GPU when one exists. See
//! `examples/` for streaming from your own iterator and for opening a GPU explicitly.

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "gpu")]
pub mod bench;
mod engine;
mod error;
pub mod model;
pub mod numerics;
pub mod report;
pub mod shard;
pub mod source;
pub mod stats;
mod values;

/// The wgpu this crate is built with: hand its `Device`, `Queue` and `Buffer`s to
/// [`GpuContext::from_device`] and [`GpuReducer::reduce_buffer`] without a version mismatch.
#[cfg(feature = "gpu")]
pub use wgpu;

pub use backend::cpu::CpuReducer;
#[cfg(feature = "gpu")]
pub use backend::gpu::{
    AdapterReport, AdapterSelector, GpuConfig, GpuContext, GpuReducer, GpuResident, list_adapters,
};
pub use backend::{BackendInfo, BackendKind, BatchReducer, BatchRef, ComputeClock, StageTimes};
pub use engine::{
    Accumulator, BUFFERED_BATCH_SIZE, BackendChoice, DEFAULT_BATCH_SIZE, Engine, EngineConfig,
};
pub use error::{Error, Location, Result};
pub use report::{BatchCounts, Report, Timings};
pub use shard::PartialFile;
pub use stats::{Partial, Stats};
pub use values::{Value, partial, stats};
