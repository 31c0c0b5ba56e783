//! Choosing and opening a source for a path or a reader: format from `--format` or the file
//! extension, element type and byte order for raw binary, column and delimiter for text.

use std::io::Read;
use std::path::Path;

use super::binary::{BinarySource, open_file};
use super::dtype::{Dtype, Endian};
use super::npy;
use super::text::{Delimiter, TextOptions, TextSource};
use super::{BatchSource, MappedSource};
use crate::{Error, Location, Result};

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw binary elements of one type (`--dtype`, default f32) and byte order.
    Raw,
    /// NumPy `.npy` (versions 1–3): the header gives type, byte order and shape.
    Npy,
    /// Comma-separated (or `--delimiter`).
    Csv,
    /// Tab-separated.
    Tsv,
    /// Whitespace-separated columns (one value per line works too).
    Txt,
    /// Apache Parquet (a file: it is read from its footer). Needs the `arrow` feature.
    Parquet,
    /// Arrow IPC: a file (`.arrow`, `.feather` v2) or a stream (stdin). Needs the `arrow`
    /// feature.
    Arrow,
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
            "parquet" | "pq" => Ok(Format::Parquet),
            "arrow" | "feather" | "ipc" => Ok(Format::Arrow),
            _ => Err(format!(
                "unknown format {s:?}: expected raw, npy, csv, tsv, txt, parquet or arrow"
            )),
        }
    }
}

/// How to read inputs: the format (or `None` to go by extension and content), raw binary's type
/// and byte order, and the text options.
#[derive(Debug, Clone, Default)]
pub struct InputOptions {
    /// `None`: from the extension (`.npy`, `.csv`, `.tsv`, `.txt`/`.dat`, and `.f32`, `.f64`,
    /// `.i16`, …, `.raw`, `.bin` for raw binary), else from the content (`.npy` magic; gzip and
    /// zstd are decompressed and looked at again). Text and unknown binary content without a
    /// format is an error that says what to pass, never a guess.
    pub format: Option<Format>,
    /// Raw binary's element type (implies raw binary). `None`: from the extension, else f32.
    pub dtype: Option<Dtype>,
    /// Raw binary's byte order.
    pub endian: Endian,
    /// Text formats: column, header, delimiter, nulls, invalid fields.
    pub text: TextOptions,
    /// Read regular binary files (raw, `.npy`) through a buffer instead of memory-mapping
    /// them (see [`super::MappedSource`] for what mapping risks).
    pub no_mmap: bool,
}

/// What the first bytes of an input say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Npy,
    Gzip,
    Zstd,
    Zip,
    Parquet,
    /// An Arrow IPC file (`ARROW1` magic); streams have no magic and need `--format arrow`.
    ArrowFile,
    Text,
    Binary,
    Empty,
}

/// How many bytes are looked at to tell text from binary.
const SNIFF: usize = 4096;

fn sniff(head: &[u8]) -> Content {
    if head.is_empty() {
        return Content::Empty;
    }
    if head.starts_with(&npy::MAGIC[..]) {
        return Content::Npy;
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Content::Gzip;
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Content::Zstd;
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Content::Zip;
    }
    if head.starts_with(b"PAR1") {
        return Content::Parquet;
    }
    if head.starts_with(b"ARROW1") {
        return Content::ArrowFile;
    }
    // Text: UTF-8 (a character cut at the end of the sample is fine) with no control bytes
    // other than whitespace.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    let printable = head
        .iter()
        .all(|&b| b >= 0x20 && b != 0x7f || matches!(b, b'\n' | b'\r' | b'\t' | 0x0c));
    if valid && printable {
        Content::Text
    } else {
        Content::Binary
    }
}

/// The format an extension names, if any (compression extensions are stripped first).
fn format_of_extension(ext: &str) -> Option<(Format, Option<Dtype>)> {
    match ext {
        "npy" => Some((Format::Npy, None)),
        "csv" => Some((Format::Csv, None)),
        "tsv" | "tab" => Some((Format::Tsv, None)),
        "txt" | "dat" => Some((Format::Txt, None)),
        "raw" | "bin" => Some((Format::Raw, None)),
        "parquet" | "pq" => Some((Format::Parquet, None)),
        "arrow" | "feather" | "ipc" | "arrows" => Some((Format::Arrow, None)),
        _ => ext.parse::<Dtype>().ok().map(|d| (Format::Raw, Some(d))),
    }
}

/// A path's extensions, lower case: (the format's, the compression's) for `table.csv.gz`.
fn extensions(path: &Path) -> (Option<String>, Option<Content>) {
    let ext = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
    };
    match ext(path).as_deref() {
        Some("gz") | Some("gzip") => (
            path.file_stem().and_then(|s| ext(Path::new(s))),
            Some(Content::Gzip),
        ),
        Some("zst") | Some("zstd") => (
            path.file_stem().and_then(|s| ext(Path::new(s))),
            Some(Content::Zstd),
        ),
        other => (other.map(str::to_string), None),
    }
}

/// Reads up to [`SNIFF`] bytes and hands back a reader that still yields them.
fn peek<'a>(
    mut reader: Box<dyn Read + Send + 'a>,
    name: &Path,
) -> Result<(Vec<u8>, Box<dyn Read + Send + 'a>)> {
    let mut head = vec![0u8; SNIFF];
    let mut n = 0;
    while n < SNIFF {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                return Err(Error::Io {
                    path: name.to_path_buf(),
                    error,
                });
            }
        }
    }
    head.truncate(n);
    let rest: Box<dyn Read + Send + 'a> =
        Box::new(std::io::Cursor::new(head.clone()).chain(reader));
    Ok((head, rest))
}

/// Opens the file at `path` as the source `options` describe. A regular file's header problems
/// (a `.npy` whose header is corrupt or promises more than the file holds) are found here, before
/// anything is reduced. Named pipes, character devices (`/dev/stdin`) and `<(…)` are read as
/// streams.
pub fn open(path: &Path, options: &InputOptions) -> Result<Box<dyn BatchSource + Send>> {
    let meta = std::fs::metadata(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if meta.is_dir() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let (ext, compressed) = extensions(path);
    if meta.is_file() && compressed.is_none() {
        // A regular file keeps its length (progress, exact size checks).
        let by_ext = ext.as_deref().and_then(format_of_extension);
        let format = options
            .format
            .or(by_ext.map(|f| f.0))
            .or(options.dtype.map(|_| Format::Raw));
        match format {
            Some(Format::Raw) => {
                let dtype = options
                    .dtype
                    .or(by_ext.and_then(|f| f.1))
                    .unwrap_or(Dtype::F32);
                check_dtype_format(options, Format::Raw)?;
                if !options.no_mmap
                    && let Some(mapped) = MappedSource::open_raw(path, dtype, options.endian)?
                {
                    return Ok(Box::new(mapped));
                }
                return Ok(Box::new(BinarySource::open(path, dtype, options.endian)?));
            }
            Some(Format::Npy) => {
                check_dtype_format(options, Format::Npy)?;
                let (file, len) = open_file(path)?;
                if !options.no_mmap {
                    return npy_file(file, path, len);
                }
                return Ok(Box::new(npy_source(file, path, Some(len))?));
            }
            Some(Format::Parquet) => {
                check_dtype_format(options, Format::Parquet)?;
                return columnar_file(path, Format::Parquet, options);
            }
            Some(Format::Arrow) => {
                check_dtype_format(options, Format::Arrow)?;
                // An IPC file has its magic; anything else is read as a stream.
                let mut magic = [0u8; 6];
                let is_file = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && &magic == b"ARROW1";
                if is_file {
                    return columnar_file(path, Format::Arrow, options);
                }
            }
            Some(f) => {
                check_dtype_format(options, f)?;
                let (file, len) = open_file(path)?;
                let text = text_options(f, &options.text);
                if !options.no_mmap
                    && let Some(mapped) = TextSource::open_mapped(&file, path, len, &text)?
                {
                    return Ok(Box::new(mapped));
                }
                return Ok(Box::new(TextSource::new(
                    Box::new(file),
                    path,
                    Some(len),
                    &text_options(f, &options.text),
                )?));
            }
            None => {
                // No format from the name: Parquet and Arrow IPC files are known by their
                // magic, and read as the files they are (Parquet needs its footer).
                let mut magic = [0u8; 6];
                let n = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
                    .unwrap_or(0);
                match sniff(&magic[..n]) {
                    Content::Parquet => return columnar_file(path, Format::Parquet, options),
                    Content::ArrowFile => return columnar_file(path, Format::Arrow, options),
                    _ => {}
                }
            }
        }
    }
    let file = std::fs::File::open(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    open_stream(
        Box::new(file),
        path,
        ext.as_deref(),
        compressed,
        options,
        0,
        None,
    )
}

/// Opens a reader (stdin) named `name` as the source `options` describe: the format as given,
/// else from the content.
pub fn open_reader<'a>(
    reader: Box<dyn Read + Send + 'a>,
    name: &str,
    options: &InputOptions,
) -> Result<Box<dyn BatchSource + Send + 'a>> {
    open_stream(reader, Path::new(name), None, None, options, 0, None)
}

/// [`open_reader`] for a reader that yields exactly `len` bytes (an HTTP body with a
/// Content-Length): binary inputs are read a whole batch at a time rather than growing their
/// buffer, a raw input that is not a whole number of elements and a `.npy` whose header promises
/// other than what follows are refused before anything is reduced. The reader must end with an
/// error if it cannot deliver `len` bytes.
pub fn open_reader_sized<'a>(
    reader: Box<dyn Read + Send + 'a>,
    name: &str,
    options: &InputOptions,
    len: u64,
) -> Result<Box<dyn BatchSource + Send + 'a>> {
    open_stream(reader, Path::new(name), None, None, options, 0, Some(len))
}

fn check_dtype_format(options: &InputOptions, format: Format) -> Result<()> {
    if options.dtype.is_some() && format != Format::Raw {
        return Err(Error::InvalidConfig(
            "an element type (dtype) applies to raw binary input only (a .npy header gives its own type; text is parsed to f64)"
                .to_string(),
        ));
    }
    Ok(())
}

/// A stream: the format from the options, the extension or the content; compressed content is
/// decompressed on the fly and looked at again.
fn open_stream<'a>(
    reader: Box<dyn Read + Send + 'a>,
    name: &Path,
    ext: Option<&str>,
    compressed: Option<Content>,
    options: &InputOptions,
    depth: u32,
    len: Option<u64>,
) -> Result<Box<dyn BatchSource + Send + 'a>> {
    let (head, reader) = peek(reader, name)?;
    let content = sniff(&head);
    let explicit_raw = options.format == Some(Format::Raw) || options.dtype.is_some();
    // Compressed content is unpacked unless raw bytes were asked for; a `.gz`/`.zst` name
    // whose content is not compressed is an error, not raw data.
    let unpack = match (content, compressed) {
        (Content::Gzip | Content::Zstd, _) if !explicit_raw && depth < 2 => Some(content),
        (c, Some(want)) if c != want && depth == 0 => {
            return Err(Error::InvalidInput {
                path: name.to_path_buf(),
                at: Location::Offset(0),
                message: format!(
                    "the name says {} but the content is not",
                    if want == Content::Gzip {
                        "gzip"
                    } else {
                        "zstd"
                    }
                ),
            });
        }
        _ => None,
    };
    if let Some(kind) = unpack {
        let inner: Box<dyn Read + Send + 'a> = match kind {
            Content::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            _ => Box::new(
                zstd::stream::read::Decoder::new(reader).map_err(|error| Error::Io {
                    path: name.to_path_buf(),
                    error,
                })?,
            ),
        };
        return open_stream(inner, name, ext, None, options, depth + 1, None);
    }
    let by_ext = ext.and_then(format_of_extension);
    let format = match options
        .format
        .or(by_ext.map(|f| f.0))
        .or(options.dtype.map(|_| Format::Raw))
    {
        Some(f) => f,
        None => match content {
            Content::Npy => Format::Npy,
            Content::Parquet => Format::Parquet,
            Content::ArrowFile => Format::Arrow,
            Content::Empty => Format::Raw,
            Content::Zip => {
                return Err(Error::InvalidInput {
                    path: name.to_path_buf(),
                    at: Location::Offset(0),
                    message: "a zip archive (.npz?) cannot be streamed: unpack it (unzip) and pass the .npy arrays".into(),
                });
            }
            Content::Text => {
                return Err(Error::UnknownFormat {
                    path: name.to_path_buf(),
                    looks_like_text: true,
                });
            }
            _ => {
                return Err(Error::UnknownFormat {
                    path: name.to_path_buf(),
                    looks_like_text: false,
                });
            }
        },
    };
    check_dtype_format(options, format)?;
    match format {
        Format::Raw => {
            let dtype = options
                .dtype
                .or(by_ext.and_then(|f| f.1))
                .unwrap_or(Dtype::F32);
            let source = BinarySource::from_reader(reader, name, dtype, options.endian);
            Ok(Box::new(match len {
                Some(len) => source.with_len(len)?,
                None => source,
            }))
        }
        Format::Npy => Ok(Box::new(npy_source(reader, name, len)?)),
        Format::Parquet => Err(Error::InvalidInput {
            path: name.to_path_buf(),
            at: Location::Offset(0),
            message: "Parquet is read from its footer, so it must be a file: save the stream to a file first (or send Arrow IPC, which streams)".into(),
        }),
        Format::Arrow => arrow_stream(reader, name, options),
        f => Ok(Box::new(TextSource::new(
            reader,
            name,
            None,
            &text_options(f, &options.text),
        )?)),
    }
}

fn text_options(format: Format, given: &TextOptions) -> TextOptions {
    let mut o = given.clone();
    if o.delimiter.is_none() {
        o.delimiter = Some(match format {
            Format::Tsv => Delimiter::Byte(b'\t'),
            Format::Txt => Delimiter::Whitespace,
            _ => Delimiter::Byte(b','),
        });
    }
    o
}

/// The columns a Parquet or Arrow input reads: the one column, or the several asked for.
#[cfg(feature = "arrow")]
fn columnar_columns(options: &InputOptions) -> Result<Vec<super::text::Column>> {
    if options.text.all_columns || options.text.group_by.is_some() {
        return Err(Error::InvalidConfig(
            "every numeric column and group-by are for text inputs; name the Parquet or Arrow columns one by one"
                .to_string(),
        ));
    }
    Ok(if options.text.columns.is_empty() {
        vec![options.text.column.clone()]
    } else {
        options.text.columns.clone()
    })
}

/// A Parquet or Arrow IPC file, by the column `--column` names.
#[cfg(feature = "arrow")]
fn columnar_file(
    path: &Path,
    format: Format,
    options: &InputOptions,
) -> Result<Box<dyn BatchSource + Send>> {
    use super::columnar::ColumnarSource;
    let columns = columnar_columns(options)?;
    Ok(Box::new(match format {
        Format::Parquet => ColumnarSource::open_parquet_columns(path, &columns)?,
        _ => ColumnarSource::open_ipc_file_columns(path, &columns)?,
    }))
}

#[cfg(not(feature = "arrow"))]
fn columnar_file(
    path: &Path,
    _format: Format,
    _options: &InputOptions,
) -> Result<Box<dyn BatchSource + Send>> {
    Err(without_arrow(path))
}

/// An Arrow IPC stream (stdin, a pipe).
#[cfg(feature = "arrow")]
fn arrow_stream<'a>(
    reader: Box<dyn Read + Send + 'a>,
    name: &Path,
    options: &InputOptions,
) -> Result<Box<dyn BatchSource + Send + 'a>> {
    Ok(Box::new(
        super::columnar::ColumnarSource::open_ipc_stream_columns(
            reader,
            name,
            &columnar_columns(options)?,
        )?,
    ))
}

#[cfg(not(feature = "arrow"))]
fn arrow_stream<'a>(
    _reader: Box<dyn Read + Send + 'a>,
    name: &Path,
    _options: &InputOptions,
) -> Result<Box<dyn BatchSource + Send + 'a>> {
    Err(without_arrow(name))
}

#[cfg(not(feature = "arrow"))]
fn without_arrow(path: &Path) -> Error {
    Error::InvalidInput {
        path: path.to_path_buf(),
        at: Location::Offset(0),
        message: "Parquet and Arrow inputs need microbatch built with the `arrow` feature (on by default)".into(),
    }
}

/// Reads and checks a `.npy` header; its element count.
fn npy_header(reader: &mut impl Read, path: &Path) -> Result<(npy::NpyHeader, u64)> {
    let header = npy::read_header(reader).map_err(|(offset, message)| Error::InvalidInput {
        path: path.to_path_buf(),
        at: Location::Offset(offset),
        message,
    })?;
    let elements = header.elements().ok_or_else(|| Error::InvalidInput {
        path: path.to_path_buf(),
        at: Location::Offset(8),
        message: format!("shape {:?} holds more than 2^64 elements", header.shape),
    })?;
    Ok((header, elements))
}

/// A `.npy` regular file: its header read and checked, its data mapped (read through a buffer
/// where it cannot be).
fn npy_file(mut file: std::fs::File, path: &Path, len: u64) -> Result<Box<dyn BatchSource + Send>> {
    let (header, elements) = npy_header(&mut file, path)?;
    if let Some(mapped) = MappedSource::open_npy(&file, path, len, &header, elements)? {
        return Ok(Box::new(mapped));
    }
    // Not mappable (no data, or the file system refuses): the header is read again by the
    // buffered reader.
    use std::io::Seek;
    file.rewind().map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(Box::new(npy_source(file, path, Some(len))?))
}

fn npy_source<R: Read>(
    mut reader: R,
    path: &Path,
    file_len: Option<u64>,
) -> Result<BinarySource<R>> {
    let (header, elements) = npy_header(&mut reader, path)?;
    let label = format!("{} ({})", path.display(), header.describe());
    BinarySource::from_reader(reader, path, header.dtype, header.endian)
        .in_fortran_order(header.fortran_order)
        .after_header(
            header.data_offset,
            elements,
            file_len.map(|l| l.saturating_sub(header.data_offset)),
            label,
            header.shape,
        )
}
