//! # microbatch
//!
//! Exact statistics (count, sum, mean, min, max, variance, standard deviation) of huge numeric
//! streams (f32, f64, integers, text), each at its own precision, reduced in fixed-size
//! micro-batches by a WGSL parallel reduction on the GPU through `wgpu`, or by a vectorized
//! multi-threaded CPU backend where no GPU is usable.
//!
//! ## One call
//!
//! ```
//! let s = microbatch::stats(&[1.0f32, 2.0, 4.0, 8.0]);
//! assert_eq!((s.count, s.mean, s.min, s.max), (4, Some(3.75), Some(1.0), Some(8.0)));
//! ```
//!
//! [`stats()`] and [`partial()`] take a slice of any [`Value`] type (`f32`, `f64`, `i8`…`i64`,
//! `u8`…`u64`) and reduce it on all cores with the CPU kernels: no engine, no GPU start-up.
//!
//! ## An engine: micro-batches, a GPU, files
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
//! assert_eq!(report.batches.count, 3);
//! # Ok::<(), microbatch::Error>(())
//! ```
//!
//! An [`Engine`] owns a backend ([`BatchReducer`]: the CPU or a GPU adapter) and reduces
//! slices ([`Engine::reduce`], [`Engine::reduce_f64`], [`Engine::reduce_i64`]), batches from
//! your iterator ([`Engine::reduce_batches`], or [`Engine::try_reduce_batches`] for a producer
//! that can fail), batches pushed as they come with running statistics
//! ([`Engine::accumulate`]), or any input the command line reads ([`source::open`]: raw binary,
//! `.npy`, CSV/TSV/text, Parquet and Arrow, gzip/zstd; [`source::open_reader`] for a stream).
//! Every run gives a [`Report`]: the [`Stats`], the mergeable [`Partial`] they came from, what
//! ran and how long each stage took ([`Timings`]: read, upload, compute, readback, merge).
//! With `BackendChoice::Auto` the same code runs on a hardware GPU when the machine has one.
//!
//! ## Element types
//!
//! Each type is reduced at its own precision: f32 batches by the GPU kernel or the CPU's f32
//! kernel (each block moved to an f32 pivot, then summed in f64), f64 in f64, integers exactly
//! (the sum in 128 bits, [`Stats::exact`]). Sources say what they hold
//! ([`source::BatchSource::element`]); [`source::read_batch`] reads any of them.
//!
//! ## Numerics
//!
//! Every small block is reduced by an exact two-pass around its own pivot, so the error does
//! not depend on where the data sit: the sum within 1e-12·Σ|x|, the variance within 1e-12
//! relative (while mean²/var ≤ 1e12), count, min and max exact, integer sums exact; the same
//! input gives the same bits every run ([`numerics`]). NaN and ±inf are counted from the bits
//! and propagate as in numpy (`skip_nan` gives numpy's `nan*` behaviour).
//!
//! ## Merging
//!
//! A [`Partial`] is the mergeable state of a reduction (count, double-double sum and M2, min,
//! max, NaN and infinity counts, exact integer parts). Partials of shards reduced anywhere —
//! other threads, other machines, `microbatch run --partial`, a `serve` answer — merge in any
//! order and grouping ([`Partial::merge`], Chan's formula in double-double arithmetic) into the
//! statistics of all the data ([`Partial::finish`] with `ddof` and `skip_nan`). They serialize
//! with serde (and [`PartialFile::write`]/[`PartialFile::read`] for the CLI's partial files), so
//! an empty or NaN-only partial round-trips too.
//!
//! ## Threads and one GPU
//!
//! Engines, reducers and boxed sources are `Send`: give each worker thread its own engine.
//! One device serves many reducers: open it once ([`GpuContext::new`], or
//! [`GpuContext::from_device`] with the `wgpu::Device` and `wgpu::Queue` your application
//! already has, using the [`wgpu`] this crate re-exports), then build a [`GpuReducer`] per thread
//! on clones of the context (cheap: wgpu's handles are reference-counted) and wrap each in
//! [`Engine::with_reducer`]. Buffers your application already holds on the device reduce in place
//! with [`GpuReducer::reduce_buffer`].
//!
//! ```no_run
//! use microbatch::{AdapterSelector, Engine, GpuConfig, GpuContext, GpuReducer};
//!
//! let ctx = GpuContext::new(&AdapterSelector::any())?;
//! let workers: Vec<_> = (0..4)
//!     .map(|w| {
//!         let ctx = ctx.clone();
//!         std::thread::spawn(move || -> microbatch::Result<f64> {
//!             let reducer = GpuReducer::new(&ctx, GpuConfig::new(1 << 20))?;
//!             let mut engine = Engine::with_reducer(Box::new(reducer));
//!             let data = vec![w as f32; 1 << 22];
//!             Ok(engine.reduce(&data)?.stats.mean.unwrap_or(f64::NAN))
//!         })
//!     })
//!     .collect();
//! for w in workers {
//!     println!("{}", w.join().unwrap()?);
//! }
//! # Ok::<(), microbatch::Error>(())
//! ```
//!
//! ## Errors
//!
//! Everything returns [`Result`] with one [`Error`] enum whose variants carry what went wrong as
//! fields: the file and the byte offset or line ([`Location`]) of bad input, the setting and
//! its range ([`Error::OutOfRange`]), the adapter and the feature it lacks
//! ([`Error::GpuUnsupported`]), the producer's own error ([`Error::Producer`]); causes are
//! [`std::error::Error::source`]s. No call returns partial statistics as if they were final.
//!
//! ## Features
//!
//! `gpu` (wgpu), `arrow` (Parquet and Arrow IPC), `cli`, `serve` and `plot` (the `microbatch`
//! binary) are on by default. `default-features = false, features = ["gpu"]` gives the library
//! alone, without the command line's dependencies (clap, anyhow, tokio, axum, plotters).

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
pub mod sketch;
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
    AdapterReport, AdapterSelector, GpuConfig, GpuContext, GpuReducer, GpuResident, Loads,
    SlowPath, Staging, list_adapters,
};
pub use backend::{BackendInfo, BackendKind, BatchReducer, BatchRef, ComputeClock};
pub use engine::{
    Accumulator, BUFFERED_BATCH_SIZE, BackendChoice, DEFAULT_BATCH_SIZE, Engine, EngineConfig,
};
pub use error::{ColumnRef, Error, Location, Result};
pub use report::{BatchCounts, ColumnStats, ColumnsReport, Report, Timings};
pub use shard::{AnyPartialFile, PartialFile, SeriesPartialFile};
pub use stats::{Partial, Stats};
pub use values::{Value, partial, stats};
