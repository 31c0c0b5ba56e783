//! Binary files reduced in place: a raw file or a `.npy` file's data, memory-mapped, lent to the
//! engine batch by batch without a copy when its element type is one the kernels take as is
//! (f32, f64 and i64 in the machine's byte order), decoded straight from the mapping otherwise.
//!
//! Each batch's pages are released (`MADV_DONTNEED`: the page cache keeps them, this process's
//! resident set drops them) once the next batch is asked for, so memory stays bounded by the
//! batch size whatever the file's size. The mapping reads the file as it was when opened: a file
//! truncated by another process while it is being reduced can stop this one with `SIGBUS`, as
//! for any program that maps files (ripgrep, numpy's memmap); `--no-mmap`
//! ([`super::InputOptions::no_mmap`]) reads through a buffer instead.

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions, UncheckedAdvice};

use super::dtype::{Dtype, Endian};
use super::{BatchSource, Element};
use crate::backend::BatchRef;
use crate::{Error, Location, Result};

/// A binary file's elements, memory-mapped.
#[derive(Debug)]
pub struct MappedSource {
    map: Mmap,
    dtype: Dtype,
    endian: Endian,
    /// Byte offset of the first element (a `.npy` header's length).
    data_start: usize,
    /// Data bytes after `data_start` (a whole number of elements).
    data_len: usize,
    /// Data bytes consumed so far.
    consumed: usize,
    /// The byte range of the file last lent, released when the next batch is asked for.
    lent: Option<(usize, usize)>,
    /// Whether batches can be lent as they are in the file (native type and order, aligned).
    lends: bool,
    label: String,
    shape: Option<Vec<u64>>,
    /// Whether a `.npy` array is in Fortran order.
    fortran: bool,
}

impl MappedSource {
    /// Maps a raw file of `dtype` elements in `endian` order. `Ok(None)` when the file cannot be
    /// mapped (empty, or a file system that refuses): read it through a buffer instead. A length
    /// that is not a whole number of elements is refused here, before anything is reduced.
    pub fn open_raw(path: &Path, dtype: Dtype, endian: Endian) -> Result<Option<Self>> {
        let (file, len) = super::binary::open_file(path)?;
        let width = dtype.size() as u64;
        if len % width != 0 {
            return Err(Error::TruncatedInput {
                path: path.to_path_buf(),
                offset: len - len % width,
                len,
                width,
                dtype: dtype.name(),
            });
        }
        let label = format!("{} ({} {}-endian)", path.display(), dtype, endian.name());
        Ok(Self::map(&file, dtype, endian, 0, label, None))
    }

    /// Maps the data of a `.npy` file whose header (read from `file`) says `dtype`, `endian`,
    /// `expected` elements of `shape` from byte `data_start`. `Ok(None)` when the file cannot be
    /// mapped. The header's promise is checked against the file's length here.
    pub(crate) fn open_npy(
        file: &File,
        path: &Path,
        len: u64,
        header: &super::npy::NpyHeader,
        expected: u64,
    ) -> Result<Option<Self>> {
        let data_start = header.data_offset;
        let data_len = len.saturating_sub(data_start);
        let need = expected.checked_mul(header.dtype.size() as u64);
        if need != Some(data_len) {
            return Err(Error::InvalidInput {
                path: path.to_path_buf(),
                at: Location::Offset(data_start),
                message: format!(
                    "the header promises {expected} {} elements ({} bytes) but {data_len} bytes follow it",
                    header.dtype,
                    need.map_or("more than 2^64".to_string(), |n| n.to_string()),
                ),
            });
        }
        let label = format!("{} ({})", path.display(), header.describe());
        Ok(Self::map(
            file,
            header.dtype,
            header.endian,
            data_start as usize,
            label,
            Some(header.shape.clone()),
        )
        .map(|mut s| {
            s.fortran = header.fortran_order;
            s
        }))
    }

    fn map(
        file: &File,
        dtype: Dtype,
        endian: Endian,
        data_start: usize,
        label: String,
        shape: Option<Vec<u64>>,
    ) -> Option<Self> {
        // SAFETY: the mapping is read-only and private to this source; what another process may
        // do to the file meanwhile is the caveat in the module's documentation.
        let map = unsafe { MmapOptions::new().map(file) }.ok()?;
        if map.len() <= data_start {
            return None;
        }
        // Read ahead in order (the file is read once, front to back).
        let _ = map.advise(memmap2::Advice::Sequential);
        let native_order = (endian == Endian::Little) == cfg!(target_endian = "little");
        let native_type = matches!(dtype, Dtype::F32 | Dtype::F64 | Dtype::I64);
        // The mapping starts on a page; the data must start on a multiple of its width to be
        // lent as a slice of it.
        let aligned = data_start % dtype.size() == 0;
        Some(Self {
            data_len: map.len() - data_start,
            map,
            dtype,
            endian,
            data_start,
            consumed: 0,
            lent: None,
            lends: native_order && native_type && aligned,
            label,
            shape,
            fortran: false,
        })
    }

    /// Releases the pages of the batch lent last: they stay in the page cache, not in this
    /// process's resident set.
    fn release(&mut self) {
        if let Some((start, len)) = self.lent.take() {
            // SAFETY: the range is within the read-only file mapping and no slice of it is
            // alive (the batch lent from it was borrowed from `self`, and `self` is borrowed
            // mutably here); the pages are read again from the file if touched.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
            };
        }
    }

    /// The bytes of the next up to `max` elements, consumed.
    fn take(&mut self, max: usize) -> (usize, usize) {
        self.release();
        let width = self.dtype.size();
        let bytes = (max.saturating_mul(width)).min(self.data_len - self.consumed);
        let start = self.data_start + self.consumed;
        self.consumed += bytes;
        self.lent = Some((start, bytes));
        (start, bytes)
    }

    fn wrong_type(&self, asked: &'static str) -> Error {
        Error::WrongElementType {
            source_name: self.label.clone(),
            holds: self.dtype.to_string(),
            asked,
        }
    }
}

impl BatchSource for MappedSource {
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize> {
        if self.dtype.element() != Element::F32 {
            return Err(self.wrong_type("f32"));
        }
        let (start, bytes) = self.take(max);
        let n = bytes / self.dtype.size();
        buf.resize(n, 0.0);
        self.dtype
            .decode(self.endian, &self.map[start..start + bytes], buf);
        Ok(n)
    }

    fn element(&self) -> Element {
        self.dtype.element()
    }

    fn next_batch_f64(&mut self, buf: &mut Vec<f64>, max: usize) -> Result<usize> {
        if self.dtype.element() == Element::Int {
            return super::next_ints_as_f64(self, buf, max);
        }
        let (start, bytes) = self.take(max);
        let n = bytes / self.dtype.size();
        buf.resize(n, 0.0);
        self.dtype
            .decode_f64(self.endian, &self.map[start..start + bytes], buf);
        Ok(n)
    }

    fn next_batch_int(&mut self, buf: &mut Vec<i64>, max: usize) -> Result<usize> {
        if self.dtype.element() != Element::Int {
            return Err(self.wrong_type("integer"));
        }
        let (start, bytes) = self.take(max);
        let n = bytes / self.dtype.size();
        buf.resize(n, 0);
        self.dtype
            .decode_int(self.endian, &self.map[start..start + bytes], buf);
        Ok(n)
    }

    fn lend_batch(&mut self, max: usize) -> Result<Option<BatchRef<'_>>> {
        if !self.lends {
            return Ok(None);
        }
        let (start, bytes) = self.take(max);
        let raw = &self.map[start..start + bytes];
        Ok(Some(match self.dtype {
            Dtype::F32 => BatchRef::F32(bytemuck::cast_slice(raw)),
            Dtype::F64 => BatchRef::F64(bytemuck::cast_slice(raw)),
            Dtype::I64 => BatchRef::Int(bytemuck::cast_slice(raw), 0),
            _ => unreachable!("lends only native f32, f64 and i64"),
        }))
    }

    fn int_offset(&self) -> i128 {
        self.dtype.int_offset()
    }

    fn dtype_name(&self) -> String {
        self.dtype.name().to_string()
    }

    fn len_hint(&self) -> Option<u64> {
        Some((self.data_len / self.dtype.size()) as u64)
    }

    fn bytes_read(&self) -> u64 {
        (self.data_start + self.consumed) as u64
    }

    fn len_bytes(&self) -> Option<u64> {
        Some((self.data_start + self.data_len) as u64)
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

impl Drop for MappedSource {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mb-mapped-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn lends_native_types_and_decodes_the_others() {
        let values = [1.5f32, -2.0, f32::INFINITY, 3.25, 0.1];
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = file_of("le.f32", &le);
        let mut s = MappedSource::open_raw(&p, Dtype::F32, Endian::Little)
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        loop {
            match s.lend_batch(2).unwrap().unwrap() {
                BatchRef::F32([]) => break,
                BatchRef::F32(v) => got.extend_from_slice(v),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, values);
        // Big-endian: not lent, decoded from the mapping.
        let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let p2 = file_of("be.f32", &be);
        let mut s = MappedSource::open_raw(&p2, Dtype::F32, Endian::Big)
            .unwrap()
            .unwrap();
        assert!(s.lend_batch(2).unwrap().is_none());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while s.next_batch(&mut buf, 3).unwrap() > 0 {
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, values);
        // A length that is not whole elements is refused with its offset; an empty file is
        // not mapped.
        let p3 = file_of("odd.f32", &le[..7]);
        let e = MappedSource::open_raw(&p3, Dtype::F32, Endian::Little).unwrap_err();
        assert!(e.to_string().contains("offset 4"), "{e}");
        let p4 = file_of("empty.f32", &[]);
        assert!(
            MappedSource::open_raw(&p4, Dtype::F32, Endian::Little)
                .unwrap()
                .is_none()
        );
        for p in [p, p2, p3, p4] {
            let _ = std::fs::remove_file(p);
        }
    }
}
