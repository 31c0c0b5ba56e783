//! The integration tests, in one binary: one link of the library instead of one per file (the
//! link dominated the test build on the 2-core machine). `cargo test --test it serve::` runs
//! one file's tests.
//!
//! With `MICROBATCH_REQUIRE_GPU=1` (CI) every test that needs a GPU adapter fails when none is
//! found instead of skipping (see `common::gpu`).

mod common;

mod accuracy;
mod api;
mod bench_cli;
mod choose;
mod cli;
#[cfg(feature = "arrow")]
mod columnar;
mod columns;
mod cpu;
mod formats;
mod fuzz_parsers;
mod gpu;
mod memory;
mod numerics;
mod quantiles;
#[cfg(feature = "serve")]
mod remote;
#[cfg(feature = "serve")]
mod serve;
mod shards;
