//! Choosing and opening a source for a path or a reader: format from `--format` or the file
//! extension, element type and byte order for raw binary, column and delimiter for text.

use std::io::Read;
use std::path::Path;

use super::BatchSource;
use super::binary::{BinarySource, open_file};
use super::dtype::{Dtype, Endian};
use super::npy;
use super::text::{Delimiter, TextOptions, TextSource};
use crate::{Error, Location, Result};

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw binary elements of one type (`--dtype`, default f32) and byte order.
    Raw,
    /// NumPy `.npy` (versions 1–3): the header gives type, byte order and shape.
    Npy,
    /// Comma-separated (or the delimiter detected from the first line).
    Csv,
    /// Tab-separated.
    Tsv,
    /// Whitespace-separated columns (one value per line works too).
    Txt,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "bin" => Ok(Format::Raw),
            "npy" => Ok(Format::Npy),
            "csv" => Ok(Format::Csv),
            "tsv" => Ok(Format::Tsv),
            "txt" | "text" => Ok(Format::Txt),
            _ => Err(format!(
                "unknown format {s:?}: expected raw, npy, csv, tsv or txt"
            )),
        }
    }
}

/// How to read inputs: the format (or `None` to go by extension), raw binary's type and byte
/// order, and the text options.
#[derive(Debug, Clone, Default)]
pub struct InputOptions {
    /// `None`: from the extension (`.npy`, `.csv`, `.tsv`, `.txt`, and `.f32`, `.f64`, `.i16`, …
    /// for raw binary of that type); anything else, and stdin, is raw binary.
    pub format: Option<Format>,
    /// Raw binary's element type. `None`: from the extension, else f32.
    pub dtype: Option<Dtype>,
    /// Raw binary's byte order.
    pub endian: Endian,
    /// Text formats: column, header, delimiter, invalid fields.
    pub text: TextOptions,
}

impl InputOptions {
    /// The format and raw element type for `path` (None for stdin).
    fn resolve(&self, path: Option<&Path>) -> Result<(Format, Dtype)> {
        let ext = path
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let ext_dtype = ext.as_deref().and_then(|e| e.parse::<Dtype>().ok());
        let format = self.format.unwrap_or(match ext.as_deref() {
            Some("npy") => Format::Npy,
            Some("csv") => Format::Csv,
            Some("tsv") | Some("tab") => Format::Tsv,
            Some("txt") | Some("dat") => Format::Txt,
            _ => Format::Raw,
        });
        if self.dtype.is_some() && format != Format::Raw {
            return Err(Error::InvalidConfig(
                "--dtype applies to raw binary input only (a .npy header gives its own type)"
                    .to_string(),
            ));
        }
        let dtype = self.dtype.or(ext_dtype).unwrap_or(Dtype::F32);
        Ok((format, dtype))
    }
}

/// Opens the file at `path` as the source `options` describe. Header problems (a `.npy` whose
/// header is corrupt or promises more than the file holds) are found here, before anything is
/// reduced.
pub fn open(path: &Path, options: &InputOptions) -> Result<Box<dyn BatchSource>> {
    let (format, dtype) = options.resolve(Some(path))?;
    match format {
        Format::Raw => Ok(Box::new(BinarySource::open(path, dtype, options.endian)?)),
        Format::Npy => {
            let (file, len) = open_file(path)?;
            Ok(Box::new(npy_source(file, path, Some(len))?))
        }
        Format::Csv | Format::Tsv | Format::Txt => {
            let (file, len) = open_file(path)?;
            Ok(Box::new(TextSource::new(
                Box::new(file),
                path,
                Some(len),
                &text_options(format, &options.text),
            )?))
        }
    }
}

/// Opens a reader (stdin) named `name` as the source `options` describe; without a format it is
/// raw binary.
pub fn open_reader(
    reader: Box<dyn Read>,
    name: &str,
    options: &InputOptions,
) -> Result<Box<dyn BatchSource>> {
    let (format, dtype) = options.resolve(None)?;
    match format {
        Format::Raw => Ok(Box::new(BinarySource::from_reader(
            reader,
            name,
            dtype,
            options.endian,
        ))),
        Format::Npy => Ok(Box::new(npy_source(reader, Path::new(name), None)?)),
        Format::Csv | Format::Tsv | Format::Txt => Ok(Box::new(TextSource::new(
            reader,
            name,
            None,
            &text_options(format, &options.text),
        )?)),
    }
}

fn text_options(format: Format, given: &TextOptions) -> TextOptions {
    let mut o = given.clone();
    if o.delimiter.is_none() {
        o.delimiter = match format {
            Format::Tsv => Some(Delimiter::Byte(b'\t')),
            Format::Txt => Some(Delimiter::Whitespace),
            _ => None,
        };
    }
    o
}

fn npy_source<R: Read>(
    mut reader: R,
    path: &Path,
    file_len: Option<u64>,
) -> Result<BinarySource<R>> {
    let header =
        npy::read_header(&mut reader).map_err(|(offset, message)| Error::InvalidInput {
            path: path.to_path_buf(),
            at: Location::Offset(offset),
            message,
        })?;
    let elements = header.elements().ok_or_else(|| Error::InvalidInput {
        path: path.to_path_buf(),
        at: Location::Offset(8),
        message: format!("shape {:?} holds more than 2^64 elements", header.shape),
    })?;
    let label = format!("{} ({})", path.display(), header.describe());
    BinarySource::from_reader(reader, path, header.dtype, header.endian).after_header(
        header.data_offset,
        elements,
        file_len.map(|l| l.saturating_sub(header.data_offset)),
        label,
        header.shape,
    )
}
