//! Parquet and Arrow IPC (Feather) inputs, read with the arrow-rs crates: one column, or several
//! in one pass ([`crate::source::ColumnsSource`]), by name or index; every numeric type at its own precision (f32, f64, integers exactly; f16 widened to
//! f32 exactly); nulls counted apart; dictionary-encoded and compressed pages decoded by the
//! library. Record batches are the micro-batches' source: a null-free f32, f64 or i64 column is
//! lent to the engine straight from the decoded buffer. Parquet row groups are decoded on all
//! cores, a round at a time, so memory stays bounded by a round of row groups.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};

use super::text::Column;
use super::{BatchSource, Element};
use crate::backend::BatchRef;
use crate::{Error, Location, Result};

/// Rows decoded at a time from a Parquet row group or an IPC stream.
const DECODE_ROWS: usize = 1 << 20;

/// Where record batches come from.
enum Batches<'a> {
    /// A Parquet file: its row groups, decoded on all cores by a thread of their own a round
    /// ahead of the engine, and received here in file order.
    Parquet(std::sync::mpsc::Receiver<std::result::Result<RecordBatch, String>>),
    /// A Parquet file opened but not read yet: the decoder starts on the first read, so that
    /// opening a source (to learn its element type, say) decodes nothing.
    ParquetUnstarted(Box<dyn FnOnce() -> Result<Batches<'static>> + Send>),
    /// An Arrow IPC file or stream, already projected to the column.
    Ipc(
        Box<
            dyn Iterator<Item = std::result::Result<RecordBatch, arrow_schema::ArrowError>>
                + Send
                + 'a,
        >,
    ),
}

/// One column read: where it is, how it is reduced, and its conversion buffers.
struct Col {
    /// Its index in the file's schema, and its place among the columns decoded (the record
    /// batches hold the columns read in schema order).
    index: usize,
    at: usize,
    element: Element,
    /// The column's type as stored (for reports), and its name.
    dtype: String,
    name: String,
    /// Values converted for the batch being lent (nulls left out, types widened).
    f32s: Vec<f32>,
    f64s: Vec<f64>,
    ints: Vec<i64>,
    nulls: u64,
}

/// One numeric column of a Parquet or Arrow IPC input, or several read in one pass.
pub struct ColumnarSource<'a> {
    batches: Batches<'a>,
    path: PathBuf,
    /// The columns read, in the order asked.
    cols: Vec<Col>,
    /// The record batch being served (its columns in schema order), and the next row of it.
    current: Option<Vec<ArrayRef>>,
    pos: usize,
    rows: u64,
    total_rows: Option<u64>,
    len_bytes: Option<u64>,
    label: String,
}

impl std::fmt::Debug for ColumnarSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnarSource")
            .field("path", &self.path)
            .field(
                "columns",
                &self.cols.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> Error {
    Error::InvalidInput {
        path: path.to_path_buf(),
        at: Location::Offset(0),
        message: message.into(),
    }
}

/// The index of `column` in `schema`, and how it is reduced.
fn pick(schema: &Schema, column: &Column, path: &Path) -> Result<(usize, Element, String)> {
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| format!("{} ({})", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let index = match column {
        Column::Index(i) if *i < schema.fields().len() => *i,
        Column::Index(i) => {
            return Err(invalid(
                path,
                format!(
                    "no column {i}: the file has {} ({})",
                    schema.fields().len(),
                    names()
                ),
            ));
        }
        Column::Name(n) => schema
            .fields()
            .iter()
            .position(|f| f.name() == n)
            .ok_or_else(|| invalid(path, format!("no column {n:?}; the file has: {}", names())))?,
    };
    let field = &schema.fields()[index];
    let element = match field.data_type() {
        DataType::Float16 | DataType::Float32 => Element::F32,
        DataType::Float64 => Element::F64,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Element::Int,
        other => {
            return Err(invalid(
                path,
                format!(
                    "column {:?} holds {other}, not numbers this tool reduces (floats and integers); the file has: {}",
                    field.name(),
                    names()
                ),
            ));
        }
    };
    Ok((index, element, field.data_type().to_string()))
}

/// The columns asked, resolved against `schema`: each one's schema index and how it is reduced;
/// the same column twice is an error.
fn pick_all(schema: &Schema, columns: &[Column], path: &Path) -> Result<Vec<Col>> {
    let mut out: Vec<Col> = Vec::with_capacity(columns.len());
    for c in columns {
        let (index, element, dtype) = pick(schema, c, path)?;
        if out.iter().any(|o| o.index == index) {
            return Err(Error::InvalidConfig(format!(
                "column {:?} is asked for twice",
                schema.fields()[index].name()
            )));
        }
        out.push(Col {
            index,
            at: 0,
            element,
            dtype,
            name: schema.fields()[index].name().clone(),
            f32s: Vec::new(),
            f64s: Vec::new(),
            ints: Vec::new(),
            nulls: 0,
        });
    }
    // Decoded batches hold the columns read in schema order.
    let mut sorted: Vec<usize> = out.iter().map(|c| c.index).collect();
    sorted.sort_unstable();
    for c in &mut out {
        c.at = sorted.binary_search(&c.index).expect("present");
    }
    Ok(out)
}

/// The schema indices of `cols`, ascending (the projection to decode).
fn projection(cols: &[Col]) -> Vec<usize> {
    let mut v: Vec<usize> = cols.iter().map(|c| c.index).collect();
    v.sort_unstable();
    v
}

/// "column "x" float" or "3 columns" for a label.
fn which(cols: &[Col]) -> String {
    match cols {
        [c] => format!("column {:?} {}", c.name, c.dtype),
        many => format!("{} columns", many.len()),
    }
}

impl<'a> ColumnarSource<'a> {
    /// Opens a Parquet file's `column`.
    pub fn open_parquet(path: &Path, column: &Column) -> Result<Self> {
        Self::open_parquet_columns(path, std::slice::from_ref(column))
    }

    /// Opens several columns of a Parquet file, decoded together in one pass.
    pub fn open_parquet_columns(path: &Path, columns: &[Column]) -> Result<Self> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let io = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // SAFETY: read-only and private to this source; see `MappedSource` for what another
        // process truncating the file would do.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
        let bytes = bytes::Bytes::from_owner(Shared(Arc::clone(&map)));
        let meta =
            parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&bytes, Default::default())
                .map_err(|e| invalid(path, format!("not a readable Parquet file: {e}")))?;
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone());
        let cols = pick_all(builder.schema(), columns, path)?;
        let indices = projection(&cols);
        let footer = builder.metadata();
        let groups = footer.num_row_groups();
        let rows = footer.file_metadata().num_rows().max(0) as u64;
        let label = format!(
            "{} (Parquet, {}, {rows} rows in {groups} row group{})",
            path.display(),
            which(&cols),
            if groups == 1 { "" } else { "s" }
        );
        // One round of decoded row groups waits while the next is decoded: memory stays bounded
        // by about two rounds and the batch being reduced.
        let owned = path.to_path_buf();
        let start = move || {
            let threads = rayon::current_num_threads().max(1);
            let (tx, rx) = std::sync::mpsc::sync_channel(threads);
            std::thread::Builder::new()
                .name("microbatch-parquet".into())
                .spawn(move || decode_groups(bytes, map, meta, indices, 0..groups, threads, tx))
                .map_err(|error| Error::Io { path: owned, error })?;
            Ok(Batches::Parquet(rx))
        };
        Ok(Self::new(
            Batches::ParquetUnstarted(Box::new(start)),
            path,
            cols,
            Some(rows),
            Some(len),
            label,
        ))
    }

    /// Opens an Arrow IPC file (`.arrow`, `.feather`: random access, from its footer).
    pub fn open_ipc_file(path: &Path, column: &Column) -> Result<Self> {
        Self::open_ipc_file_columns(path, std::slice::from_ref(column))
    }

    /// Opens several columns of an Arrow IPC file, read together in one pass.
    pub fn open_ipc_file_columns(path: &Path, columns: &[Column]) -> Result<Self> {
        let io = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let schema =
            arrow_ipc::reader::FileReader::try_new_buffered(file.try_clone().map_err(io)?, None)
                .map_err(|e| invalid(path, format!("not a readable Arrow IPC file: {e}")))?
                .schema();
        let cols = pick_all(&schema, columns, path)?;
        let reader = arrow_ipc::reader::FileReader::try_new_buffered(file, Some(projection(&cols)))
            .map_err(|e| invalid(path, format!("not a readable Arrow IPC file: {e}")))?;
        let label = format!("{} (Arrow IPC file, {})", path.display(), which(&cols));
        Ok(Self::new(
            Batches::Ipc(Box::new(reader)),
            path,
            cols,
            None,
            Some(len),
            label,
        ))
    }

    /// Reads an Arrow IPC stream (stdin, a pipe) named `name`.
    pub fn open_ipc_stream(
        reader: Box<dyn std::io::Read + Send + 'a>,
        name: &Path,
        column: &Column,
    ) -> Result<Self> {
        Self::open_ipc_stream_columns(reader, name, std::slice::from_ref(column))
    }

    /// Reads several columns of an Arrow IPC stream in one pass.
    pub fn open_ipc_stream_columns(
        reader: Box<dyn std::io::Read + Send + 'a>,
        name: &Path,
        columns: &[Column],
    ) -> Result<Self> {
        let stream = arrow_ipc::reader::StreamReader::try_new_buffered(reader, None)
            .map_err(|e| invalid(name, format!("not a readable Arrow IPC stream: {e}")))?;
        let schema = stream.schema();
        let cols = pick_all(&schema, columns, name)?;
        let label = format!("{} (Arrow IPC stream, {})", name.display(), which(&cols));
        let indices = projection(&cols);
        let batches = stream.map(move |b| b.map(|b| b.project(&indices)).and_then(|b| b));
        Ok(Self::new(
            Batches::Ipc(Box::new(batches)),
            name,
            cols,
            None,
            None,
            label,
        ))
    }

    fn new(
        batches: Batches<'a>,
        path: &Path,
        cols: Vec<Col>,
        total_rows: Option<u64>,
        len_bytes: Option<u64>,
        label: String,
    ) -> Self {
        Self {
            batches,
            path: path.to_path_buf(),
            cols,
            current: None,
            pos: 0,
            rows: 0,
            total_rows,
            len_bytes,
            label,
        }
    }

    /// The next record batch's columns (in schema order), `None` at the end.
    fn next_arrays(&mut self) -> Result<Option<Vec<ArrayRef>>> {
        if matches!(self.batches, Batches::ParquetUnstarted(_)) {
            let Batches::ParquetUnstarted(start) = std::mem::replace(
                &mut self.batches,
                Batches::Ipc(Box::new(std::iter::empty())),
            ) else {
                unreachable!("matched above")
            };
            self.batches = start()?;
        }
        let bad = |e: &dyn std::fmt::Display| invalid(&self.path, format!("decoding: {e}"));
        match &mut self.batches {
            Batches::Ipc(it) => match it.next() {
                None => Ok(None),
                Some(Ok(b)) => Ok(Some(b.columns().to_vec())),
                Some(Err(e)) => Err(bad(&e)),
            },
            Batches::Parquet(rx) => match rx.recv() {
                // The decoder has finished (or stopped after sending its error).
                Err(_) => Ok(None),
                Ok(Ok(b)) => Ok(Some(b.columns().to_vec())),
                Ok(Err(e)) => Err(bad(&e)),
            },
            Batches::ParquetUnstarted(_) => unreachable!("started above"),
        }
    }
}

/// Decodes row groups `groups` of a mapped Parquet file, `round` at a time on all cores, and
/// sends their batches in file order; stops at the first error (sent) or when the receiver is
/// gone. The pages of the row groups decoded leave the resident set (the page cache keeps
/// them).
fn decode_groups(
    bytes: bytes::Bytes,
    map: Arc<memmap2::Mmap>,
    meta: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    columns: Vec<usize>,
    mut groups: std::ops::Range<usize>,
    round: usize,
    tx: std::sync::mpsc::SyncSender<std::result::Result<RecordBatch, String>>,
) {
    use rayon::prelude::*;
    while groups.start < groups.end {
        let take: Vec<usize> = groups.by_ref().take(round).collect();
        let decoded: Vec<std::result::Result<Vec<RecordBatch>, String>> = take
            .par_iter()
            .map(|&g| decode_group(&bytes, &meta, &columns, g))
            .collect();
        for d in decoded {
            match d {
                Ok(batches) => {
                    for b in batches {
                        if tx.send(Ok(b)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        let done = meta.metadata().row_groups()[..groups.start]
            .iter()
            .flat_map(|g| {
                columns.iter().map(move |&c| {
                    let (start, len) = g.column(c).byte_range();
                    (start + len) as usize
                })
            })
            .max()
            .unwrap_or(0)
            & !4095;
        if done > 0 {
            // SAFETY: a read-only file mapping; the arrays decoded from these pages are
            // copies (or hold the `Bytes` that keeps the mapping alive, which the kernel
            // refills from the file if touched again).
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    0,
                    done.min(map.len()),
                )
            };
        }
    }
}

/// A shared mapping as the owner of `Bytes`.
struct Shared(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Decodes row group `group`'s `columns` of a Parquet file mapped as `bytes`.
fn decode_group(
    bytes: &bytes::Bytes,
    meta: &parquet::arrow::arrow_reader::ArrowReaderMetadata,
    columns: &[usize],
    group: usize,
) -> std::result::Result<Vec<RecordBatch>, String> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone());
    let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_row_groups(vec![group])
        .with_batch_size(DECODE_ROWS)
        .build()
        .map_err(|e| e.to_string())?;
    reader
        .map(|b| b.map_err(|e| format!("row group {group}: {e}")))
        .collect()
}

/// Copies the non-null values of rows `from..to` of `a` (a primitive array of `T`) through
/// `convert` into `out`; returns the nulls among them.
macro_rules! gather {
    ($array:expr, $t:ty, $from:expr, $to:expr, $out:expr, $convert:expr) => {{
        let a = $array.as_primitive::<$t>();
        let values = &a.values()[$from..$to];
        $out.clear();
        match a.nulls() {
            Some(n) if n.null_count() > 0 => {
                let mut nulls = 0u64;
                for (i, &v) in values.iter().enumerate() {
                    if n.is_null($from + i) {
                        nulls += 1;
                    } else {
                        $out.push($convert(v));
                    }
                }
                nulls
            }
            _ => {
                $out.extend(values.iter().map(|&v| $convert(v)));
                0
            }
        }
    }};
}

impl<'a> ColumnarSource<'a> {
    /// Serves up to `max` rows of the current batch's (one) column (fetching the next batch
    /// when it is done): lent from the array where no conversion is needed, else converted
    /// into a scratch buffer. An empty batch is the end.
    fn serve(&mut self, max: usize) -> Result<BatchRef<'_>> {
        if self.cols.len() != 1 {
            return Err(Error::InvalidConfig(format!(
                "{} holds {} columns: read them with Engine::run_columns",
                self.label,
                self.cols.len()
            )));
        }
        loop {
            let done = self.current.as_ref().is_none_or(|a| self.pos >= a[0].len());
            if !done {
                break;
            }
            match self.next_arrays()? {
                Some(a) => {
                    self.current = Some(a);
                    self.pos = 0;
                }
                None => {
                    self.current = None;
                    return Ok(match self.cols[0].element {
                        Element::F32 => BatchRef::F32(&[]),
                        Element::F64 => BatchRef::F64(&[]),
                        Element::Int => BatchRef::Int(&[], 0),
                    });
                }
            }
        }
        let a = &self.current.as_ref().expect("set above")[0];
        let (from, to) = (self.pos, (self.pos + max).min(a.len()));
        self.pos = to;
        self.rows += (to - from) as u64;
        convert(a, from, to, &mut self.cols[0], &self.path)
    }
}

/// Rows `from..to` of `a` (column `col`) as a batch: lent from the array where no conversion is
/// needed (a null-free f32, f64 or i64 array), else converted into `col`'s buffers (nulls
/// counted and left out, types widened).
fn convert<'x>(
    a: &'x ArrayRef,
    from: usize,
    to: usize,
    col: &'x mut Col,
    path: &Path,
) -> Result<BatchRef<'x>> {
    let no_nulls = a.logical_null_count() == 0;
    Ok(match a.data_type() {
        DataType::Float32 if no_nulls => {
            BatchRef::F32(&a.as_primitive::<Float32Type>().values()[from..to])
        }
        DataType::Float64 if no_nulls => {
            BatchRef::F64(&a.as_primitive::<Float64Type>().values()[from..to])
        }
        DataType::Int64 if no_nulls => {
            BatchRef::Int(&a.as_primitive::<Int64Type>().values()[from..to], 0)
        }
        DataType::Float16 => {
            col.nulls += gather!(a, Float16Type, from, to, col.f32s, |v: half::f16| v
                .to_f32());
            BatchRef::F32(&col.f32s)
        }
        DataType::Float32 => {
            col.nulls += gather!(a, Float32Type, from, to, col.f32s, |v: f32| v);
            BatchRef::F32(&col.f32s)
        }
        DataType::Float64 => {
            col.nulls += gather!(a, Float64Type, from, to, col.f64s, |v: f64| v);
            BatchRef::F64(&col.f64s)
        }
        DataType::Int8 => {
            col.nulls += gather!(a, Int8Type, from, to, col.ints, i64::from);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::Int16 => {
            col.nulls += gather!(a, Int16Type, from, to, col.ints, i64::from);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::Int32 => {
            col.nulls += gather!(a, Int32Type, from, to, col.ints, i64::from);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::Int64 => {
            col.nulls += gather!(a, Int64Type, from, to, col.ints, |v: i64| v);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::UInt8 => {
            col.nulls += gather!(a, UInt8Type, from, to, col.ints, i64::from);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::UInt16 => {
            col.nulls += gather!(a, UInt16Type, from, to, col.ints, i64::from);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::UInt32 => {
            col.nulls += gather!(a, UInt32Type, from, to, col.ints, i64::from);
            BatchRef::Int(&col.ints, 0)
        }
        DataType::UInt64 => {
            // Stored shifted into i64's range, the offset 2^63 added back exactly.
            col.nulls += gather!(a, UInt64Type, from, to, col.ints, |v: u64| {
                (v ^ (1 << 63)) as i64
            });
            BatchRef::Int(&col.ints, 1i128 << 63)
        }
        other => {
            return Err(invalid(
                path,
                format!("a batch of {other} in a column of {}", col.dtype),
            ));
        }
    })
}

impl super::ColumnsSource for ColumnarSource<'_> {
    fn columns(&self) -> Vec<crate::ColumnRef> {
        self.cols
            .iter()
            .map(|c| crate::ColumnRef {
                index: Some(c.index),
                name: Some(c.name.clone()),
            })
            .collect()
    }

    fn next_columns(&mut self) -> Result<Option<Vec<(usize, BatchRef<'_>)>>> {
        let Some(arrays) = self.next_arrays()? else {
            self.current = None;
            return Ok(None);
        };
        let rows = arrays.first().map_or(0, |a| a.len());
        self.rows += rows as u64;
        self.current = Some(arrays);
        self.pos = rows;
        let Self {
            current,
            cols,
            path,
            ..
        } = self;
        let arrays = current.as_ref().expect("set above");
        cols.iter_mut()
            .enumerate()
            .map(|(i, c)| {
                let a = &arrays[c.at];
                convert(a, 0, a.len(), c, path).map(|b| (i, b))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn bytes_read(&self) -> u64 {
        BatchSource::bytes_read(self)
    }

    fn len_bytes(&self) -> Option<u64> {
        BatchSource::len_bytes(self)
    }

    fn skipped(&self) -> Vec<u64> {
        vec![0; self.cols.len()]
    }

    fn nulls(&self) -> Vec<u64> {
        self.cols.iter().map(|c| c.nulls).collect()
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

impl BatchSource for ColumnarSource<'_> {
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize> {
        match self.serve(max)? {
            BatchRef::F32(v) => {
                buf.clear();
                buf.extend_from_slice(v);
                Ok(buf.len())
            }
            _ => Err(Error::WrongElementType {
                source_name: self.label.clone(),
                holds: self.cols[0].dtype.to_string(),
                asked: "f32",
            }),
        }
    }

    fn as_columns(&mut self) -> Option<&mut dyn super::ColumnsSource> {
        Some(self)
    }

    fn element(&self) -> Element {
        self.cols[0].element
    }

    fn next_batch_f64(&mut self, buf: &mut Vec<f64>, max: usize) -> Result<usize> {
        buf.clear();
        match self.serve(max)? {
            BatchRef::F32(v) => buf.extend(v.iter().map(|&x| f64::from(x))),
            BatchRef::F64(v) => buf.extend_from_slice(v),
            BatchRef::Int(v, off) => super::widen_ints(v, off, buf),
        }
        Ok(buf.len())
    }

    fn next_batch_int(&mut self, buf: &mut Vec<i64>, max: usize) -> Result<usize> {
        match self.serve(max)? {
            BatchRef::Int(v, _) => {
                buf.clear();
                buf.extend_from_slice(v);
                Ok(buf.len())
            }
            _ => Err(Error::WrongElementType {
                source_name: self.label.clone(),
                holds: self.cols[0].dtype.to_string(),
                asked: "integer",
            }),
        }
    }

    fn lend_batch(&mut self, max: usize) -> Result<Option<BatchRef<'_>>> {
        self.serve(max).map(Some)
    }

    fn int_offset(&self) -> i128 {
        // The offset `serve` lends u64 batches with (the type is fixed per column).
        if self.cols[0].dtype == DataType::UInt64.to_string() {
            1i128 << 63
        } else {
            0
        }
    }

    fn dtype_name(&self) -> String {
        self.cols[0].dtype.clone()
    }

    fn len_hint(&self) -> Option<u64> {
        self.total_rows
    }

    fn bytes_read(&self) -> u64 {
        // Progress by rows, scaled to the file's bytes.
        match (self.total_rows, self.len_bytes) {
            (Some(t), Some(l)) if t > 0 => (self.rows as f64 / t as f64 * l as f64) as u64,
            _ => 0,
        }
    }

    fn len_bytes(&self) -> Option<u64> {
        self.total_rows.and(self.len_bytes)
    }

    fn nulls(&self) -> u64 {
        self.cols.iter().map(|c| c.nulls).sum()
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}
