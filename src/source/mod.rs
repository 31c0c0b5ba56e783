//! Inputs, read in micro-batches into a buffer the engine reuses: memory stays bounded by the
//! batch size, whatever the input's length.

mod binary;
mod dtype;
pub mod npy;
mod open;
mod random;
mod text;

pub use binary::{BinarySource, file_len};
pub use dtype::{Dtype, Endian};
pub use open::{Format, InputOptions, open, open_reader};
pub use random::RandomSource;
pub use text::{Column, Delimiter, TextOptions, TextSource};

use crate::Result;

/// A stream of f32 values delivered in micro-batches.
pub trait BatchSource {
    /// Replaces the contents of `buf` with up to `max` next values and returns how many there
    /// are; 0 means the stream has ended. `buf` keeps its capacity from call to call.
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize>;

    /// Total number of values, when known in advance.
    fn len_hint(&self) -> Option<u64> {
        None
    }

    /// Bytes of the input consumed so far (for progress).
    fn bytes_read(&self) -> u64 {
        0
    }

    /// The input's length in bytes, when known in advance (for progress).
    fn len_bytes(&self) -> Option<u64> {
        None
    }

    /// The array's shape, for inputs that have one (`.npy`).
    fn shape(&self) -> Option<&[u64]> {
        None
    }

    /// Fields skipped as invalid so far (text inputs with `skip_invalid`).
    fn skipped(&self) -> u64 {
        0
    }

    /// What this source is, for reports and errors (a path, `<stdin>`, `random(N, seed)`).
    fn describe(&self) -> String;
}

/// A borrowed slice served in batches (copies each batch; [`crate::Engine::reduce`] avoids even that).
#[derive(Debug)]
pub struct SliceSource<'a> {
    data: &'a [f32],
    pos: usize,
}

impl<'a> SliceSource<'a> {
    /// Serves `data` from the start.
    pub fn new(data: &'a [f32]) -> Self {
        Self { data, pos: 0 }
    }
}

impl BatchSource for SliceSource<'_> {
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize> {
        let end = (self.pos + max).min(self.data.len());
        buf.clear();
        buf.extend_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(buf.len())
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.data.len() as u64)
    }

    fn describe(&self) -> String {
        format!("slice of {} values", self.data.len())
    }
}
