//! Binary inputs: raw files of one element type and byte order (`.f32`, `.f64`, `--dtype`), and
//! the data part of a `.npy` file. Read batch by batch, at the element type's own precision
//! ([`Dtype::element`]): f32, or f64 for f64 and 32/64-bit integers.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::dtype::{Dtype, Endian};
use super::{BatchSource, Element};
use crate::{Error, Location, Result};

/// Elements a stream of unknown length is first read into; the buffer doubles from there up to
/// the batch size while data keeps coming.
const FIRST_READ: usize = 1 << 14;

/// Elements of one [`Dtype`] in one byte order from a reader, decoded batch by batch.
#[derive(Debug)]
pub struct BinarySource<R> {
    reader: R,
    path: PathBuf,
    dtype: Dtype,
    endian: Endian,
    /// Byte offset of the first element in the input (the length of a `.npy` header).
    data_start: u64,
    /// Data bytes consumed so far.
    consumed: u64,
    /// Data bytes in the input, when known (a regular file).
    data_len: Option<u64>,
    /// Elements the input must hold exactly (a `.npy` header's shape), when known.
    expected: Option<u64>,
    /// Conversion scratch for types other than native f32.
    scratch: Vec<u8>,
    /// How the input is described in reports.
    label: String,
    /// An N-d array's shape (`.npy`).
    shape: Option<Vec<u64>>,
    /// Whether a `.npy` array is in Fortran order.
    fortran: bool,
}

impl BinarySource<File> {
    /// Opens a raw file of `dtype` elements in `endian` order. A file whose length is not a
    /// whole number of elements is refused here, before anything is reduced.
    pub fn open(path: impl AsRef<Path>, dtype: Dtype, endian: Endian) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (file, len) = open_file(&path)?;
        Self::from_reader(file, path, dtype, endian).with_len(len)
    }
}

/// The length of the regular file at `path`; a missing path or a directory is the error that
/// names it.
pub fn file_len(path: &Path) -> Result<u64> {
    match input_len(path)? {
        Some(len) => Ok(len),
        None => Err(Error::NotAFile {
            path: path.to_path_buf(),
        }),
    }
}

/// Checks that `path` can be read as an input: the length of a regular file, `None` for a
/// stream (a named pipe, a character device such as `/dev/stdin`, a socket); a missing path or
/// a directory is the error that names it. The CLI checks every input this way before it
/// brings up a GPU.
pub fn input_len(path: &Path) -> Result<Option<u64>> {
    let meta = std::fs::metadata(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if meta.is_file() {
        Ok(Some(meta.len()))
    } else if meta.is_dir() {
        Err(Error::NotAFile {
            path: path.to_path_buf(),
        })
    } else {
        Ok(None)
    }
}

/// Opens `path` as a regular file and returns it with its length.
pub(crate) fn open_file(path: &Path) -> Result<(File, u64)> {
    let len = file_len(path)?;
    let file = File::open(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ok((file, len))
}

impl<R: Read> BinarySource<R> {
    /// Reads `dtype` elements in `endian` order from `reader`; `name` is used in reports and
    /// errors (e.g. `<stdin>`).
    pub fn from_reader(reader: R, name: impl Into<PathBuf>, dtype: Dtype, endian: Endian) -> Self {
        let path = name.into();
        let label = format!("{} ({} {}-endian)", path.display(), dtype, endian.name());
        Self {
            reader,
            path,
            dtype,
            endian,
            data_start: 0,
            consumed: 0,
            data_len: None,
            expected: None,
            scratch: Vec::new(),
            label,
            shape: None,
            fortran: false,
        }
    }

    /// Says that the input holds exactly `len` bytes: batches are read whole (not grown as data
    /// arrives), and a length that is not a whole number of elements is refused here, before
    /// anything is reduced.
    pub(crate) fn with_len(mut self, len: u64) -> Result<Self> {
        let width = self.dtype.size() as u64;
        if len % width != 0 {
            return Err(Error::TruncatedInput {
                path: self.path,
                offset: len - len % width,
                len,
                width,
                dtype: self.dtype.name(),
            });
        }
        self.data_len = Some(len);
        Ok(self)
    }

    /// The data part of an input whose first `data_start` bytes (a header) were already read:
    /// exactly `expected` elements must follow. `data_len` is the rest of the file's length when
    /// known; a mismatch with `expected` is refused here, before anything is reduced.
    /// Marks the array as stored in Fortran order (a `.npy` header's `fortran_order`).
    pub(crate) fn in_fortran_order(mut self, fortran: bool) -> Self {
        self.fortran = fortran;
        self
    }

    pub(crate) fn after_header(
        mut self,
        data_start: u64,
        expected: u64,
        data_len: Option<u64>,
        label: String,
        shape: Vec<u64>,
    ) -> Result<Self> {
        self.data_start = data_start;
        self.expected = Some(expected);
        self.data_len = data_len;
        self.label = label;
        self.shape = Some(shape);
        if let Some(len) = data_len {
            let need = expected.checked_mul(self.dtype.size() as u64);
            if need != Some(len) {
                return Err(Error::InvalidInput {
                    path: self.path,
                    at: Location::Offset(data_start),
                    message: format!(
                        "the header promises {expected} {} elements ({} bytes) but {len} bytes follow it",
                        self.dtype,
                        need.map_or("more than 2^64".to_string(), |n| n.to_string()),
                    ),
                });
            }
        }
        Ok(self)
    }

    /// Reads up to `max` elements of `T` into `v`, starting with room for `first` and doubling
    /// while the input keeps coming; returns the bytes read. `v` keeps its old contents where
    /// they are about to be overwritten (no zero-filling a whole batch every call); it ends `max`
    /// long or shorter at the end of the input (then it may hold a partial element's bytes).
    fn fill_growing<T: bytemuck::Pod>(
        &mut self,
        v: &mut Vec<T>,
        max: usize,
        first: usize,
    ) -> Result<usize> {
        let mut cap = first.min(max);
        let mut filled = 0;
        loop {
            v.resize(cap, T::zeroed());
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(v.as_mut_slice());
            let want = bytes.len();
            filled += self.read_full(&mut bytes[filled..])?;
            if filled < want || cap == max {
                return Ok(filled);
            }
            cap = (cap * 2).min(max);
        }
    }

    fn read_full(&mut self, bytes: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < bytes.len() {
            match self.reader.read(&mut bytes[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        error,
                    });
                }
            }
        }
        Ok(filled)
    }
}

impl<R: Read> BinarySource<R> {
    /// Reads up to `max` elements into `buf`, straight into it when the input's bytes are
    /// already `T`s (`native`), else through the scratch buffer and `decode`.
    fn read_into<T: bytemuck::Pod>(
        &mut self,
        buf: &mut Vec<T>,
        max: usize,
        native: bool,
        decode: impl Fn(&[u8], &mut [T]),
    ) -> Result<usize> {
        let width = self.dtype.size();
        let done = self.consumed / width as u64;
        // Never ask for more than the input can hold: a small file needs no whole batch of
        // buffer (one element more than a file's length, so a file that grew since it was opened
        // still reads to its end in later batches).
        let max = match (self.expected, self.data_len) {
            (Some(e), _) => max.min(e.saturating_sub(done) as usize),
            (None, Some(len)) => {
                max.min((len.saturating_sub(self.consumed) / width as u64) as usize + 1)
            }
            (None, None) => max,
        };
        // An input of known length reads the batch in one go; a stream of unknown length (stdin,
        // an HTTP body) grows the buffer as data arrives, so a short stream never costs a whole
        // batch of memory.
        let first = if self.data_len.is_some() || self.expected.is_some() {
            max
        } else {
            max.min(FIRST_READ)
        };
        let filled = if native {
            // The common case reads straight into the batch.
            self.fill_growing(buf, max, first)?
        } else {
            let mut scratch = std::mem::take(&mut self.scratch);
            let filled = self.fill_growing(&mut scratch, max * width, first * width);
            let filled = match filled {
                Ok(f) => f,
                Err(e) => {
                    self.scratch = scratch;
                    return Err(e);
                }
            };
            let whole = filled / width;
            buf.resize(whole, T::zeroed());
            decode(&scratch[..whole * width], &mut buf[..whole]);
            self.scratch = scratch;
            filled
        };
        let at = self.data_start + self.consumed;
        if filled % width != 0 {
            return Err(Error::TruncatedInput {
                path: self.path.clone(),
                offset: at + (filled - filled % width) as u64,
                len: at + filled as u64,
                width: width as u64,
                dtype: self.dtype.name(),
            });
        }
        self.consumed += filled as u64;
        let n = filled / width;
        buf.truncate(n);
        if let Some(e) = self.expected {
            let done = self.consumed / width as u64;
            if n < max {
                return Err(Error::InvalidInput {
                    path: self.path.clone(),
                    at: Location::Offset(self.data_start + self.consumed),
                    message: format!(
                        "the input ends after {done} of the {e} elements its header promises"
                    ),
                });
            }
            if done == e && self.data_len.is_none() {
                // A stream: nothing may follow the array.
                let mut probe = [0u8; 1];
                if self.read_full(&mut probe)? > 0 {
                    return Err(Error::InvalidInput {
                        path: self.path.clone(),
                        at: Location::Offset(self.data_start + self.consumed),
                        message: format!(
                            "data continues after the {e} elements the header promises"
                        ),
                    });
                }
            }
        }
        Ok(n)
    }
}

impl<R: Read> BatchSource for BinarySource<R> {
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize> {
        if self.dtype.element() != Element::F32 {
            return Err(Error::WrongElementType {
                source_name: self.label.clone(),
                holds: self.dtype.to_string(),
                asked: "f32",
            });
        }
        let native = self.dtype == Dtype::F32
            && (self.endian == Endian::Little) == cfg!(target_endian = "little");
        let (dtype, endian) = (self.dtype, self.endian);
        self.read_into(buf, max, native, |b, o| dtype.decode(endian, b, o))
    }

    fn element(&self) -> Element {
        self.dtype.element()
    }

    fn next_batch_int(&mut self, buf: &mut Vec<i64>, max: usize) -> Result<usize> {
        if self.dtype.element() != Element::Int {
            return Err(Error::WrongElementType {
                source_name: self.label.clone(),
                holds: self.dtype.to_string(),
                asked: "integer",
            });
        }
        let native = self.dtype == Dtype::I64
            && (self.endian == Endian::Little) == cfg!(target_endian = "little");
        let (dtype, endian) = (self.dtype, self.endian);
        self.read_into(buf, max, native, |b, o| dtype.decode_int(endian, b, o))
    }

    fn int_offset(&self) -> i128 {
        self.dtype.int_offset()
    }

    fn next_batch_f64(&mut self, buf: &mut Vec<f64>, max: usize) -> Result<usize> {
        if self.dtype.element() == Element::Int {
            return super::next_ints_as_f64(self, buf, max);
        }
        let native = self.dtype == Dtype::F64
            && (self.endian == Endian::Little) == cfg!(target_endian = "little");
        let (dtype, endian) = (self.dtype, self.endian);
        self.read_into(buf, max, native, |b, o| dtype.decode_f64(endian, b, o))
    }

    fn dtype_name(&self) -> String {
        self.dtype.name().to_string()
    }

    fn len_hint(&self) -> Option<u64> {
        self.expected
            .or(self.data_len.map(|l| l / self.dtype.size() as u64))
    }

    fn bytes_read(&self) -> u64 {
        self.data_start + self.consumed
    }

    fn len_bytes(&self) -> Option<u64> {
        match (self.expected, self.data_len) {
            (Some(e), _) => Some(self.data_start + e * self.dtype.size() as u64),
            (None, Some(l)) => Some(self.data_start + l),
            (None, None) => None,
        }
    }

    fn shape(&self) -> Option<&[u64]> {
        self.shape.as_deref()
    }

    fn fortran_order(&self) -> bool {
        self.fortran
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value, widened to f64 (exact for f32 sources).
    fn drain<S: BatchSource>(s: &mut S, max: usize) -> Result<Vec<f64>> {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while s.next_batch_f64(&mut buf, max)? > 0 {
            got.extend_from_slice(&buf);
        }
        Ok(got)
    }

    #[test]
    fn reads_little_endian_f32_in_batches() {
        let values = [1.5f32, -2.0, f32::INFINITY, 3.25, 0.1];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut s = BinarySource::from_reader(&bytes[..], "<mem>", Dtype::F32, Endian::Little);
        let want: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        assert_eq!(drain(&mut s, 2).unwrap(), want);
    }

    #[test]
    fn reads_big_endian_f64_in_batches() {
        let values = [1.0e300f64, -2.5, 0.1, 7.0, -0.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let mut s = BinarySource::from_reader(&bytes[..], "<mem>", Dtype::F64, Endian::Big);
        assert_eq!(s.element(), Element::F64);
        // Kept in f64, bit for bit (the sign of -0 too).
        let got = drain(&mut s, 3).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // Reading it as f32 would narrow it: refused.
        let mut s = BinarySource::from_reader(&bytes[..], "<mem>", Dtype::F64, Endian::Big);
        assert!(s.next_batch(&mut Vec::new(), 3).is_err());
    }

    #[test]
    fn stray_bytes_are_an_error_with_the_offset() {
        for (dtype, len, offset) in [
            (Dtype::F32, 14, 12),
            (Dtype::F64, 21, 16),
            (Dtype::I16, 7, 6),
        ] {
            let bytes = vec![0u8; len];
            let mut s = BinarySource::from_reader(&bytes[..], "<stdin>", dtype, Endian::Little);
            let msg = drain(&mut s, 2).unwrap_err().to_string();
            assert!(
                msg.contains("<stdin>") && msg.contains(&format!("offset {offset}")),
                "{dtype}: {msg}"
            );
        }
    }

    #[test]
    fn a_header_promising_more_than_the_stream_holds_is_an_error() {
        let bytes = [0u8; 4 * 5];
        let s = BinarySource::from_reader(&bytes[..], "<stdin>", Dtype::F32, Endian::Little);
        let mut s = s
            .after_header(128, 6, None, "x".into(), vec![2, 3])
            .unwrap();
        let msg = drain(&mut s, 4).unwrap_err().to_string();
        assert!(msg.contains("after 5 of the 6"), "{msg}");
        let s = BinarySource::from_reader(&bytes[..], "<stdin>", Dtype::F32, Endian::Little);
        let mut s = s.after_header(128, 4, None, "x".into(), vec![4]).unwrap();
        let msg = drain(&mut s, 4).unwrap_err().to_string();
        assert!(msg.contains("continues after the 4"), "{msg}");
    }
}
