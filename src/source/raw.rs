//! Raw little-endian f32: a file, or any reader such as stdin.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::BatchSource;
use crate::{Error, Result};

/// Raw little-endian f32 values from a reader.
#[derive(Debug)]
pub struct RawF32Source<R> {
    reader: R,
    path: PathBuf,
    /// Bytes consumed so far.
    offset: u64,
    len: Option<u64>,
}

impl RawF32Source<File> {
    /// Opens `path`. A file whose length is not a multiple of 4 is refused here, before anything
    /// is reduced.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io_err = |error| Error::Io {
            path: path.clone(),
            error,
        };
        let meta = std::fs::metadata(&path).map_err(io_err)?;
        if !meta.is_file() {
            return Err(Error::NotAFile { path });
        }
        let len = meta.len();
        if len % 4 != 0 {
            return Err(Error::TruncatedInput {
                path,
                offset: len - len % 4,
                len,
                width: 4,
                dtype: "f32",
            });
        }
        let reader = File::open(&path).map_err(io_err)?;
        Ok(Self {
            reader,
            path,
            offset: 0,
            len: Some(len),
        })
    }
}

impl<R: Read> RawF32Source<R> {
    /// Reads from `reader`; `name` is used in errors (e.g. `<stdin>`).
    pub fn from_reader(reader: R, name: impl Into<PathBuf>) -> Self {
        Self {
            reader,
            path: name.into(),
            offset: 0,
            len: None,
        }
    }
}

impl<R: Read> BatchSource for RawF32Source<R> {
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize> {
        // A file of known length needs no buffer beyond what is left of it (plus one element, so
        // a file that grew since it was opened is still read to its end in later batches).
        let max = match self.len {
            Some(len) => max.min((len.saturating_sub(self.offset) / 4) as usize + 1),
            None => max,
        };
        buf.clear();
        buf.resize(max, 0.0);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf.as_mut_slice());
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
        if filled % 4 != 0 {
            let len = self.offset + filled as u64;
            return Err(Error::TruncatedInput {
                path: self.path.clone(),
                offset: len - len % 4,
                len,
                width: 4,
                dtype: "f32",
            });
        }
        self.offset += filled as u64;
        let n = filled / 4;
        buf.truncate(n);
        if cfg!(target_endian = "big") {
            for x in buf.iter_mut() {
                *x = f32::from_bits(u32::from_le(x.to_bits()));
            }
        }
        Ok(n)
    }

    fn len_hint(&self) -> Option<u64> {
        self.len.map(|l| l / 4)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_in_batches() {
        let values = [1.5f32, -2.0, f32::INFINITY, 3.25, 0.1];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut s = RawF32Source::from_reader(&bytes[..], "<mem>");
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while s.next_batch(&mut buf, 2).unwrap() > 0 {
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, values);
    }

    #[test]
    fn stray_bytes_are_an_error_with_the_offset() {
        let bytes = [0u8; 4 * 3 + 2];
        let mut s = RawF32Source::from_reader(&bytes[..], "<stdin>");
        let mut buf = Vec::new();
        let mut result = Ok(1);
        while let Ok(n) = result {
            if n == 0 {
                break;
            }
            result = s.next_batch(&mut buf, 2);
        }
        let msg = result.unwrap_err().to_string();
        assert!(
            msg.contains("<stdin>") && msg.contains("offset 12"),
            "{msg}"
        );
    }
}
