//! Delimited text: CSV, TSV and other single-character delimiters (parsed with the `csv` crate),
//! and whitespace-separated columns. One column is reduced; every value is parsed as f64
//! (correctly rounded from its decimal text; `nan`, `inf`, `-inf` are accepted).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use super::{BatchSource, Element};
use crate::{Error, Location, Result};

/// Which column to reduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// 0-based index.
    Index(usize),
    /// Name in the header line.
    Name(String),
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Index(i) => write!(f, "{i}"),
            Column::Name(n) => write!(f, "{n:?}"),
        }
    }
}

impl std::str::FromStr for Column {
    type Err = std::convert::Infallible;
    /// A number is an index, anything else a name.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) => Column::Index(i),
            Err(_) => Column::Name(s.to_string()),
        })
    }
}

/// How to read a text input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    /// The column to reduce.
    pub column: Column,
    /// Whether the first line names the columns.
    pub header: bool,
    /// The field delimiter; `None`: detect it from the first line (`,`, tab, `;` or `|`, else
    /// runs of whitespace).
    pub delimiter: Option<Delimiter>,
    /// Count empty fields, non-numbers and missing columns instead of failing on them.
    pub skip_invalid: bool,
}

impl Default for TextOptions {
    fn default() -> Self {
        Self {
            column: Column::Index(0),
            header: true,
            delimiter: None,
            skip_invalid: false,
        }
    }
}

/// A field separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    /// One byte (`,`, tab, `;`, …), with CSV quoting rules.
    Byte(u8),
    /// Runs of spaces and tabs, no quoting.
    Whitespace,
}

enum Inner {
    Csv {
        reader: csv::Reader<Box<dyn Read>>,
        record: csv::ByteRecord,
    },
    Whitespace {
        reader: BufReader<Box<dyn Read>>,
        line: String,
        line_no: u64,
        bytes: u64,
    },
}

/// One column of a delimited text input, as f64 values in batches.
pub struct TextSource {
    inner: Inner,
    path: PathBuf,
    column: usize,
    column_label: String,
    skip_invalid: bool,
    skipped: u64,
    len_bytes: Option<u64>,
    label: String,
}

impl std::fmt::Debug for TextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSource")
            .field("path", &self.path)
            .field("column", &self.column)
            .finish_non_exhaustive()
    }
}

impl TextSource {
    /// Reads `reader` (named `name` in reports and errors; `len_bytes` its length if known).
    pub fn new(
        reader: Box<dyn Read>,
        name: impl Into<PathBuf>,
        len_bytes: Option<u64>,
        options: &TextOptions,
    ) -> Result<Self> {
        let path = name.into();
        let mut buffered = BufReader::with_capacity(1 << 16, reader);
        let delimiter = match options.delimiter {
            Some(d) => d,
            None => detect(&mut buffered).map_err(|error| Error::Io {
                path: path.clone(),
                error,
            })?,
        };
        let invalid = |line: u64, column: Option<String>, message: String| Error::InvalidInput {
            path: path.clone(),
            at: Location::Line { line, column },
            message,
        };
        let (inner, header) = match delimiter {
            Delimiter::Byte(b) => {
                let reader: Box<dyn Read> = Box::new(buffered);
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(b)
                    .has_headers(options.header)
                    .flexible(true)
                    .from_reader(reader);
                let header = if options.header {
                    let h = reader.byte_headers().map_err(|e| csv_error(&path, e))?;
                    if h.is_empty() {
                        return Err(invalid(
                            1,
                            None,
                            "the input is empty: no header line".into(),
                        ));
                    }
                    Some(
                        h.iter()
                            .map(|f| String::from_utf8_lossy(f).trim().to_string())
                            .collect::<Vec<_>>(),
                    )
                } else {
                    None
                };
                (
                    Inner::Csv {
                        reader,
                        record: csv::ByteRecord::new(),
                    },
                    header,
                )
            }
            Delimiter::Whitespace => {
                let mut line = String::new();
                let mut line_no = 0;
                let mut bytes = 0;
                let header = if options.header {
                    loop {
                        line.clear();
                        let n = buffered.read_line(&mut line).map_err(|error| Error::Io {
                            path: path.clone(),
                            error,
                        })?;
                        bytes += n as u64;
                        line_no += 1;
                        if n == 0 {
                            return Err(invalid(
                                1,
                                None,
                                "the input is empty: no header line".into(),
                            ));
                        }
                        if !line.trim().is_empty() {
                            break;
                        }
                    }
                    Some(line.split_whitespace().map(str::to_string).collect())
                } else {
                    None
                };
                (
                    Inner::Whitespace {
                        reader: buffered,
                        line,
                        line_no,
                        bytes,
                    },
                    header,
                )
            }
        };
        let column = match (&options.column, &header) {
            (Column::Index(i), _) => *i,
            (Column::Name(n), Some(h)) => h.iter().position(|c| c == n).ok_or_else(|| {
                invalid(
                    1,
                    Some(format!("{n:?}")),
                    format!("no such column; the header has: {}", h.join(", ")),
                )
            })?,
            (Column::Name(n), None) => {
                return Err(Error::InvalidConfig(format!(
                    "column {n:?} is a name, but the input has no header (--no-header): give a 0-based index"
                )));
            }
        };
        let column_label = match &header {
            Some(h) if column < h.len() => format!("{column} ({:?})", h[column]),
            _ => column.to_string(),
        };
        let kind = match delimiter {
            Delimiter::Byte(b'\t') => "tab-separated".to_string(),
            Delimiter::Byte(b) => format!("{:?}-separated", b as char),
            Delimiter::Whitespace => "whitespace-separated".to_string(),
        };
        let label = format!("{} ({kind} text, column {column_label})", path.display());
        Ok(Self {
            inner,
            path,
            column,
            column_label,
            skip_invalid: options.skip_invalid,
            skipped: 0,
            len_bytes,
            label,
        })
    }

    /// The value of one field, or what is wrong with it.
    fn parse(field: Option<&[u8]>) -> std::result::Result<f64, String> {
        let Some(field) = field else {
            return Err("the line has no such column".to_string());
        };
        let text = std::str::from_utf8(field)
            .map_err(|_| "the field is not UTF-8".to_string())?
            .trim();
        if text.is_empty() {
            return Err("empty field".to_string());
        }
        text.parse::<f64>()
            .map_err(|_| format!("{text:?} is not a number"))
    }
}

fn csv_error(path: &std::path::Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(error) => Error::Io {
            path: path.to_path_buf(),
            error,
        },
        kind => Error::InvalidInput {
            path: path.to_path_buf(),
            at: Location::Line {
                line: line.unwrap_or(0),
                column: None,
            },
            message: format!("{kind:?}"),
        },
    }
}

/// Looks at the first line: the most frequent of `,`, tab, `;`, `|` is the delimiter; a line
/// with none of them is whitespace-separated (which also reads one value per line).
fn detect(r: &mut BufReader<Box<dyn Read>>) -> std::io::Result<Delimiter> {
    let head = r.fill_buf()?;
    let first = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let best = [b',', b'\t', b';', b'|']
        .into_iter()
        .map(|d| (first.iter().filter(|&&b| b == d).count(), d))
        .max_by_key(|&(n, _)| n)
        .filter(|&(n, _)| n > 0);
    Ok(match best {
        Some((_, d)) => Delimiter::Byte(d),
        None => Delimiter::Whitespace,
    })
}

impl BatchSource for TextSource {
    fn next_batch(&mut self, _buf: &mut Vec<f32>, _max: usize) -> Result<usize> {
        Err(Error::InvalidConfig(format!(
            "{}: text is parsed to f64: read it with next_batch_f64",
            self.label
        )))
    }

    fn element(&self) -> Element {
        Element::F64
    }

    fn dtype_name(&self) -> String {
        "text".to_string()
    }

    fn next_batch_f64(&mut self, buf: &mut Vec<f64>, max: usize) -> Result<usize> {
        buf.clear();
        while buf.len() < max {
            let (line, value) = match &mut self.inner {
                Inner::Csv { reader, record } => {
                    let more = reader
                        .read_byte_record(record)
                        .map_err(|e| csv_error(&self.path, e))?;
                    if !more {
                        break;
                    }
                    let line = record.position().map_or(0, |p| p.line());
                    (line, Self::parse(record.get(self.column)))
                }
                Inner::Whitespace {
                    reader,
                    line,
                    line_no,
                    bytes,
                } => {
                    line.clear();
                    let n = reader.read_line(line).map_err(|error| Error::Io {
                        path: self.path.clone(),
                        error,
                    })?;
                    if n == 0 {
                        break;
                    }
                    *bytes += n as u64;
                    *line_no += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let field = line.split_whitespace().nth(self.column);
                    (*line_no, Self::parse(field.map(str::as_bytes)))
                }
            };
            match value {
                Ok(v) => buf.push(v),
                Err(_) if self.skip_invalid => self.skipped += 1,
                Err(message) => {
                    return Err(Error::InvalidInput {
                        path: self.path.clone(),
                        at: Location::Line {
                            line,
                            column: Some(self.column_label.clone()),
                        },
                        message: format!("{message} (--skip-invalid counts and skips such fields)"),
                    });
                }
            }
        }
        Ok(buf.len())
    }

    fn bytes_read(&self) -> u64 {
        match &self.inner {
            Inner::Csv { reader, .. } => reader.position().byte(),
            Inner::Whitespace { bytes, .. } => *bytes,
        }
    }

    fn len_bytes(&self) -> Option<u64> {
        self.len_bytes
    }

    fn skipped(&self) -> u64 {
        self.skipped
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, options: &TextOptions) -> Result<(Vec<f64>, u64)> {
        let reader: Box<dyn Read> = Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let mut s = TextSource::new(reader, "t.csv", None, options)?;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while s.next_batch_f64(&mut buf, 2)? > 0 {
            got.extend_from_slice(&buf);
        }
        Ok((got, s.skipped()))
    }

    #[test]
    fn picks_columns_by_name_and_index_with_any_delimiter() {
        let by_name = TextOptions {
            column: Column::Name("b".into()),
            ..TextOptions::default()
        };
        for text in [
            "a,b,c\n1,2.5,3\n4,-5e3,6\n\n7,inf,9\n",
            "a\tb\tc\n1\t2.5\t3\n4\t-5e3\t6\n7\tinf\t9\n",
            "a b  c\n1 2.5   3\n 4 -5e3 6\n7 inf 9\n",
            "a;\"b\";c\n1;\"2.5\";3\n4;-5e3;6\n7;inf;9\n",
        ] {
            let (got, skipped) = read(text, &by_name).unwrap();
            assert_eq!(got, [2.5, -5000.0, f64::INFINITY], "{text:?}");
            assert_eq!(skipped, 0);
        }
        let no_header = TextOptions {
            column: Column::Index(0),
            header: false,
            ..TextOptions::default()
        };
        assert_eq!(
            read("0.1\n0.2\n0.3\n", &no_header).unwrap().0,
            [0.1, 0.2, 0.3]
        );
    }

    #[test]
    fn invalid_fields_name_line_and_column_or_are_counted() {
        let opts = TextOptions {
            column: Column::Index(1),
            ..TextOptions::default()
        };
        for (text, line, what) in [
            ("x,y\n1,2\n3,\n", 3, "empty field"),
            ("x,y\n1,2\n3,abc\n", 3, "not a number"),
            ("x,y\n1,2\n3,4\n5\n", 4, "no such column"),
        ] {
            let msg = read(text, &opts).unwrap_err().to_string();
            assert!(
                msg.contains(&format!("line {line}, column 1 (\"y\")")) && msg.contains(what),
                "{msg}"
            );
            let skipping = TextOptions {
                skip_invalid: true,
                ..opts.clone()
            };
            let (got, skipped) = read(text, &skipping).unwrap();
            assert_eq!(skipped, 1, "{text:?}");
            assert_eq!(got.len(), line as usize - 3 + 1, "{text:?}");
        }
        let missing = TextOptions {
            column: Column::Name("z".into()),
            ..TextOptions::default()
        };
        let msg = read("x,y\n1,2\n", &missing).unwrap_err().to_string();
        assert!(
            msg.contains("no such column") && msg.contains("x, y"),
            "{msg}"
        );
        assert!(
            read("", &TextOptions::default())
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
