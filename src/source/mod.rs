//! Inputs, read in micro-batches into a buffer the engine reuses: memory stays bounded by the
//! batch size, whatever the input's length.

mod binary;
#[cfg(feature = "arrow")]
mod columnar;
mod dtype;
mod mapped;
pub mod npy;
mod open;
mod random;
mod text;

mod axis;
pub use axis::{AxisSource, MAX_AXIS_RESULTS};
pub use binary::{BinarySource, file_len, input_len};
#[cfg(feature = "arrow")]
pub use columnar::ColumnarSource;
pub use dtype::{Dtype, Endian, f16_to_f32};
pub use mapped::MappedSource;
pub use open::{Format, InputOptions, open, open_reader, open_reader_sized};
pub use random::RandomSource;
pub use text::{Column, DEFAULT_MAX_GROUPS, Delimiter, TextOptions, TextSource};

use crate::backend::BatchRef;
use crate::{ColumnRef, Result};

/// The precision a source's values are reduced in: their own, never narrower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Element {
    /// f32 values (f32 inputs, and integers of at most 16 bits, which f32 holds exactly).
    #[default]
    F32,
    /// f64 values (f64 inputs, text).
    F64,
    /// Integers, reduced exactly (sum, min and max) as i64 plus a per-source offset
    /// ([`BatchSource::int_offset`]; 2^63 for u64 inputs, else 0).
    Int,
}

impl Element {
    /// `f32` or `f64`.
    pub fn name(self) -> &'static str {
        match self {
            Element::F32 => "f32",
            Element::F64 => "f64",
            Element::Int => "exact integer",
        }
    }
}

/// A micro-batch's buffer at either precision ([`read_batch`] fills the one the source needs).
#[derive(Debug, Clone, Default)]
pub struct BatchBuf {
    /// Filled for sources of [`Element::F32`].
    pub f32: Vec<f32>,
    /// Filled for sources of [`Element::F64`].
    pub f64: Vec<f64>,
    /// Filled for sources of [`Element::Int`] (each value minus the source's offset).
    pub int: Vec<i64>,
}

/// Reads the next batch of up to `max` values of `source` into the part of `buf` its precision
/// needs; returns the count and the precision.
pub fn read_batch(
    source: &mut (impl BatchSource + ?Sized),
    buf: &mut BatchBuf,
    max: usize,
) -> Result<(usize, Element)> {
    let element = source.element();
    let n = match element {
        Element::F32 => source.next_batch(&mut buf.f32, max)?,
        Element::F64 => source.next_batch_f64(&mut buf.f64, max)?,
        Element::Int => source.next_batch_int(&mut buf.int, max)?,
    };
    Ok((n, element))
}

/// A stream of values delivered in micro-batches, f32 or f64 ([`BatchSource::element`]).
pub trait BatchSource {
    /// This source as several series ([`ColumnsSource`]) when it reads several (a text input
    /// opened with several columns); `None` otherwise.
    fn as_columns(&mut self) -> Option<&mut dyn ColumnsSource> {
        None
    }

    /// Replaces the contents of `buf` with up to `max` next values and returns how many there
    /// are; 0 means the stream has ended. `buf` keeps its capacity from call to call. A source
    /// of [`Element::F64`] refuses this (it would narrow its values): use
    /// [`BatchSource::next_batch_f64`] or [`read_batch`].
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize>;

    /// The precision this source's values have (and are reduced in).
    fn element(&self) -> Element {
        Element::F32
    }

    /// [`BatchSource::next_batch`] in f64. Sources of [`Element::F32`] widen their values
    /// (exactly); sources of [`Element::F64`] implement it.
    fn next_batch_f64(&mut self, buf: &mut Vec<f64>, max: usize) -> Result<usize> {
        let mut narrow = Vec::with_capacity(buf.capacity().min(max));
        let n = self.next_batch(&mut narrow, max)?;
        buf.clear();
        buf.extend(narrow.iter().map(|&x| f64::from(x)));
        Ok(n)
    }

    /// [`BatchSource::next_batch`] for sources of [`Element::Int`]: each value minus
    /// [`BatchSource::int_offset`]. Other sources refuse it.
    fn next_batch_int(&mut self, _buf: &mut Vec<i64>, _max: usize) -> Result<usize> {
        Err(crate::Error::WrongElementType {
            source_name: self.describe(),
            holds: "non-integer".to_string(),
            asked: "integer",
        })
    }

    /// Lends the next batch of up to `max` values straight from the source's memory (a
    /// memory-mapped file), without copying: an empty batch is the end. `Ok(None)` when this
    /// source does not lend (the default): read it with [`read_batch`]. The engine asks this
    /// first; a source that lends must still serve `next_batch*` (one or the other per batch).
    fn lend_batch(&mut self, _max: usize) -> Result<Option<crate::backend::BatchRef<'_>>> {
        Ok(None)
    }

    /// What to add to the values [`BatchSource::next_batch_int`] gives (2^63 for u64 inputs,
    /// whose values are stored shifted into i64's range).
    fn int_offset(&self) -> i128 {
        0
    }

    /// The element type as read (`f32`, `i64`, `text`, …), for reports.
    fn dtype_name(&self) -> String {
        self.element().name().to_string()
    }

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

    /// Whether the array's elements are stored in Fortran (column-major) order (`.npy` with
    /// `fortran_order: True`); C order otherwise.
    fn fortran_order(&self) -> bool {
        false
    }

    /// Fields skipped as invalid so far (text inputs with `skip_invalid`).
    fn skipped(&self) -> u64 {
        0
    }

    /// Fields that held a null token so far (text inputs with `nulls`), left out of the
    /// statistics and counted apart from invalid fields.
    fn nulls(&self) -> u64 {
        0
    }

    /// What this source is, for reports and errors (a path, `<stdin>`, `random(N, seed)`).
    fn describe(&self) -> String;
}

/// Integers stored as value − `offset`, widened to f64 into `out` (exactly up to 2^53: reading
/// integers as f64 is the caller's choice; the engine reduces them exactly instead).
pub(crate) fn widen_ints(ints: &[i64], offset: i128, out: &mut Vec<f64>) {
    out.clear();
    out.extend(ints.iter().map(|&v| (i128::from(v) + offset) as f64));
}

/// [`BatchSource::next_batch_f64`] for a source of integers: its next batch widened to f64.
pub(crate) fn next_ints_as_f64(
    source: &mut (impl BatchSource + ?Sized),
    buf: &mut Vec<f64>,
    max: usize,
) -> Result<usize> {
    let mut ints = Vec::new();
    let n = source.next_batch_int(&mut ints, max)?;
    widen_ints(&ints, source.int_offset(), buf);
    Ok(n)
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

/// Several series read together in one pass, each reduced to its own statistics: the columns of
/// a table ([`TextOptions::columns`], [`TextOptions::all_columns`]) or the lanes of an array
/// reduced along an axis. Read with [`crate::Engine::run_columns`].
pub trait ColumnsSource {
    /// The series, in output order.
    fn columns(&self) -> Vec<ColumnRef>;
    /// The next pieces: each a series' index (in [`ColumnsSource::columns`]) and values of it
    /// (series without values this time may be left out); `None` at the end.
    fn next_columns(&mut self) -> Result<Option<Vec<(usize, BatchRef<'_>)>>>;
    /// Bytes consumed so far.
    fn bytes_read(&self) -> u64;
    /// Total bytes, if known.
    fn len_bytes(&self) -> Option<u64> {
        None
    }
    /// Invalid fields skipped so far, per series.
    fn skipped(&self) -> Vec<u64>;
    /// Null fields so far, per series.
    fn nulls(&self) -> Vec<u64>;
    /// Series of the input left out, with why (non-numeric columns).
    fn excluded(&self) -> Vec<(ColumnRef, String)> {
        Vec::new()
    }
    /// The group key of a series, when the series are groups ([`TextOptions::group_by`]).
    fn series_group(&self, _series: usize) -> Option<String> {
        None
    }
    /// What the source reads, for reports.
    fn describe(&self) -> String;
}
