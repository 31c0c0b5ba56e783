//! Delimited text: CSV, TSV and other single-character delimiters (parsed with the `csv` crate:
//! quoting, CRLF), and whitespace-separated columns. One column is reduced; every value is parsed
//! as f64 (correctly rounded from its decimal text; `nan`, `inf`, `-inf` are accepted).
//!
//! Nothing is guessed silently: the delimiter is the format's (`,` for CSV, tab for TSV, runs of
//! whitespace for `.txt`) unless given; a leading UTF-8 byte-order mark and blank lines are
//! skipped; `\n`, `\r\n` and a lone `\r` all end a line; the first row is a header only when its
//! selected field is not a number (or the column is chosen by name, or `header` says so); fields
//! equal to a null token (`nulls`) are counted as nulls, apart from invalid fields.

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
    /// Whether the first row names the columns: `None` decides from the row itself (a header
    /// exactly when the selected field is not a number or a null token; always when the column
    /// is chosen by name).
    pub header: Option<bool>,
    /// The field delimiter; `None`: a comma.
    pub delimiter: Option<Delimiter>,
    /// Count empty fields, non-numbers and missing columns instead of failing on them.
    pub skip_invalid: bool,
    /// Fields (trimmed) that mean "no value" (`NA`, `null`, or `""` for empty fields): counted
    /// as nulls and left out of the statistics.
    pub nulls: Vec<String>,
}

impl Default for TextOptions {
    fn default() -> Self {
        Self {
            column: Column::Index(0),
            header: None,
            delimiter: None,
            skip_invalid: false,
            nulls: Vec::new(),
        }
    }
}

/// A field delimiter.
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
        lines: Lines,
        line: Vec<u8>,
    },
}

/// Lines of a byte stream, ended by `\n`, `\r\n` or a lone `\r`, counted from 1.
struct Lines {
    reader: BufReader<Box<dyn Read>>,
    number: u64,
    bytes: u64,
}

impl Lines {
    /// The next line (without its ending) into `line`; false at the end of the input.
    fn next(&mut self, line: &mut Vec<u8>) -> std::io::Result<bool> {
        line.clear();
        let mut any = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                if any {
                    self.number += 1;
                }
                return Ok(any);
            }
            any = true;
            match buf.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    let cr = buf[i] == b'\r';
                    line.extend_from_slice(&buf[..i]);
                    self.reader.consume(i + 1);
                    self.bytes += i as u64 + 1;
                    if cr && self.reader.fill_buf()?.first() == Some(&b'\n') {
                        self.reader.consume(1);
                        self.bytes += 1;
                    }
                    self.number += 1;
                    return Ok(true);
                }
                None => {
                    let n = buf.len();
                    line.extend_from_slice(buf);
                    self.reader.consume(n);
                    self.bytes += n as u64;
                }
            }
        }
    }
}

/// One column of a delimited text input, as f64 values in batches.
pub struct TextSource {
    inner: Inner,
    path: PathBuf,
    column: usize,
    column_label: String,
    skip_invalid: bool,
    nulls: Vec<Vec<u8>>,
    skipped: u64,
    null_count: u64,
    /// A first row that turned out to be data, served before the rest.
    pending: Option<(u64, Vec<Vec<u8>>)>,
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

/// What one field holds.
enum Field {
    Value(f64),
    Null,
    Invalid(String),
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
        let io = |error| Error::Io {
            path: path.clone(),
            error,
        };
        let mut buffered = BufReader::with_capacity(1 << 16, reader);
        if buffered
            .fill_buf()
            .map_err(io)?
            .starts_with(b"\xEF\xBB\xBF")
        {
            buffered.consume(3);
        }
        let delimiter = options.delimiter.unwrap_or(Delimiter::Byte(b','));
        let nulls: Vec<Vec<u8>> = options
            .nulls
            .iter()
            .map(|t| t.trim().as_bytes().to_vec())
            .collect();
        let mut inner = match delimiter {
            Delimiter::Byte(b) => Inner::Csv {
                reader: csv::ReaderBuilder::new()
                    .delimiter(b)
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(Box::new(buffered) as Box<dyn Read>),
                record: csv::ByteRecord::new(),
            },
            Delimiter::Whitespace => Inner::Whitespace {
                lines: Lines {
                    reader: buffered,
                    number: 0,
                    bytes: 0,
                },
                line: Vec::new(),
            },
        };
        let invalid = |line: u64, column: Option<String>, message: String| Error::InvalidInput {
            path: path.clone(),
            at: Location::Line { line, column },
            message,
        };
        let Some((first_line, first)) = Self::read_row(&mut inner, &path)? else {
            return Err(invalid(1, None, "the input is empty: no rows".into()));
        };
        let is_header = match (options.header, &options.column) {
            (Some(h), _) => h,
            (None, Column::Name(_)) => true,
            (None, Column::Index(i)) => match first.get(*i) {
                Some(f) => matches!(Self::field(Some(f), &nulls), Field::Invalid(_)),
                None => false,
            },
        };
        let (header, pending) = if is_header {
            let names: Vec<String> = first
                .iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
                .collect();
            (Some(names), None)
        } else {
            (None, Some((first_line, first)))
        };
        let column = match (&options.column, &header) {
            (Column::Index(i), _) => *i,
            (Column::Name(n), Some(h)) => {
                h.iter().position(|c| c == n.trim()).ok_or_else(|| {
                    invalid(
                        first_line,
                        Some(format!("{n:?}")),
                        format!("no such column; the header has: {}", h.join(", ")),
                    )
                })?
            }
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
        let header_note = if header.is_some() { "" } else { ", no header" };
        let label = format!(
            "{} ({kind} text, column {column_label}{header_note})",
            path.display()
        );
        Ok(Self {
            inner,
            path,
            column,
            column_label,
            skip_invalid: options.skip_invalid,
            nulls,
            skipped: 0,
            null_count: 0,
            pending,
            len_bytes,
            label,
        })
    }

    /// The next non-blank row as its fields, with its line number; `None` at the end.
    fn read_row(inner: &mut Inner, path: &std::path::Path) -> Result<Option<(u64, Vec<Vec<u8>>)>> {
        loop {
            match inner {
                Inner::Csv { reader, record } => {
                    if !reader
                        .read_byte_record(record)
                        .map_err(|e| csv_error(path, e))?
                    {
                        return Ok(None);
                    }
                    // The csv crate skips blank lines; a row of one empty field is a blank line
                    // with spaces or a lone delimiter-less "" — skip it too.
                    if record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let line = record.position().map_or(0, |p| p.line());
                    return Ok(Some((line, record.iter().map(<[u8]>::to_vec).collect())));
                }
                Inner::Whitespace { lines, line } => {
                    if !lines.next(line).map_err(|error| Error::Io {
                        path: path.to_path_buf(),
                        error,
                    })? {
                        return Ok(None);
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let fields = line
                        .split(|b| b.is_ascii_whitespace())
                        .filter(|f| !f.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    return Ok(Some((lines.number, fields)));
                }
            }
        }
    }

    /// What one field holds.
    fn field(field: Option<&[u8]>, nulls: &[Vec<u8>]) -> Field {
        let Some(field) = field else {
            return Field::Invalid("the line has no such column".to_string());
        };
        let Ok(text) = std::str::from_utf8(field) else {
            return Field::Invalid("the field is not UTF-8".to_string());
        };
        let text = text.trim();
        if nulls.iter().any(|n| n == text.as_bytes()) {
            return Field::Null;
        }
        if text.is_empty() {
            return Field::Invalid("empty field (--null '' counts empty fields as nulls)".into());
        }
        match text.parse::<f64>() {
            Ok(v) => Field::Value(v),
            Err(_) => Field::Invalid(format!("{text:?} is not a number")),
        }
    }

    /// Fields equal to a null token, so far.
    pub fn null_count(&self) -> u64 {
        self.null_count
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
            let value = if let Some((line, fields)) = self.pending.take() {
                (
                    line,
                    Self::field(fields.get(self.column).map(Vec::as_slice), &self.nulls),
                )
            } else {
                match &mut self.inner {
                    Inner::Csv { reader, record } => {
                        if !reader
                            .read_byte_record(record)
                            .map_err(|e| csv_error(&self.path, e))?
                        {
                            break;
                        }
                        if record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let line = record.position().map_or(0, |p| p.line());
                        (line, Self::field(record.get(self.column), &self.nulls))
                    }
                    Inner::Whitespace { lines, line } => {
                        if !lines.next(line).map_err(|error| Error::Io {
                            path: self.path.clone(),
                            error,
                        })? {
                            break;
                        }
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let field = line
                            .split(|b| b.is_ascii_whitespace())
                            .filter(|f| !f.is_empty())
                            .nth(self.column);
                        (lines.number, Self::field(field, &self.nulls))
                    }
                }
            };
            match value {
                (_, Field::Value(v)) => buf.push(v),
                (_, Field::Null) => self.null_count += 1,
                (_, Field::Invalid(_)) if self.skip_invalid => self.skipped += 1,
                (line, Field::Invalid(message)) => {
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
            Inner::Whitespace { lines, .. } => lines.bytes,
        }
    }

    fn len_bytes(&self) -> Option<u64> {
        self.len_bytes
    }

    fn skipped(&self) -> u64 {
        self.skipped
    }

    fn nulls(&self) -> u64 {
        self.null_count
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, options: &TextOptions) -> Result<(Vec<f64>, u64)> {
        read_bytes(text.as_bytes(), options).map(|(v, s, _)| (v, s))
    }

    fn read_bytes(bytes: &[u8], options: &TextOptions) -> Result<(Vec<f64>, u64, u64)> {
        let reader: Box<dyn Read> = Box::new(std::io::Cursor::new(bytes.to_vec()));
        let mut s = TextSource::new(reader, "t.csv", None, options)?;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while s.next_batch_f64(&mut buf, 2)? > 0 {
            got.extend_from_slice(&buf);
        }
        Ok((got, s.skipped(), s.nulls()))
    }

    #[test]
    fn picks_columns_by_name_and_index_with_any_delimiter() {
        let with = |d: Delimiter| TextOptions {
            column: Column::Name("b".into()),
            delimiter: Some(d),
            ..TextOptions::default()
        };
        for (text, d) in [
            (
                "a,b,c\n1,2.5,3\n4,-5e3,6\n\n7,inf,9\n",
                Delimiter::Byte(b','),
            ),
            (
                "a\tb\tc\n1\t2.5\t3\n4\t-5e3\t6\n7\tinf\t9\n",
                Delimiter::Byte(b'\t'),
            ),
            (
                "a b  c\n1 2.5   3\n 4 -5e3 6\n7 inf 9\n",
                Delimiter::Whitespace,
            ),
            (
                "a;\"b\";c\n1;\"2.5\";3\n4;-5e3;6\n7;inf;9\n",
                Delimiter::Byte(b';'),
            ),
        ] {
            let (got, skipped) = read(text, &with(d)).unwrap();
            assert_eq!(got, [2.5, -5000.0, f64::INFINITY], "{text:?}");
            assert_eq!(skipped, 0);
        }
        let no_header = TextOptions {
            column: Column::Index(0),
            header: Some(false),
            ..TextOptions::default()
        };
        assert_eq!(
            read("0.1\n0.2\n0.3\n", &no_header).unwrap().0,
            [0.1, 0.2, 0.3]
        );
    }

    #[test]
    fn single_column_files_read_right_whatever_their_shape() {
        let d = TextOptions::default();
        for text in [
            "price\n7.8026\n1.5\n",
            "price\r\n7.8026\r\n1.5\r\n",
            "price\r7.8026\r1.5\r",
            "\u{feff}price\n7.8026\n1.5\n",
            "\"price\"\n\"7.8026\"\n\"1.5\"\n",
            "\n\nprice\n7.8026\n\n1.5",
            "unit price\n7.8026\n1.5\n",
        ] {
            assert_eq!(read(text, &d).unwrap().0, [7.8026, 1.5], "{text:?}");
        }
        // No header: the first row is data (seq 1 10 | … --format txt once lost the 1).
        let txt = TextOptions {
            delimiter: Some(Delimiter::Whitespace),
            ..TextOptions::default()
        };
        let got = read("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", &txt).unwrap().0;
        assert_eq!(got.len(), 10);
        assert_eq!(got.iter().sum::<f64>(), 55.0);
        assert_eq!(read("1\r2\r3", &txt).unwrap().0, [1.0, 2.0, 3.0]);
        // A name with a space, chosen by name.
        let by_name = TextOptions {
            column: Column::Name("unit price".into()),
            ..TextOptions::default()
        };
        assert_eq!(
            read("id,unit price\n1,2.5\n2,3.5\n", &by_name).unwrap().0,
            [2.5, 3.5]
        );
        // A forced header drops a numeric first row.
        let forced = TextOptions {
            header: Some(true),
            ..TextOptions::default()
        };
        assert_eq!(read("1\n2\n3\n", &forced).unwrap().0, [2.0, 3.0]);
    }

    #[test]
    fn null_tokens_are_counted_apart_from_invalid_fields() {
        let opts = TextOptions {
            column: Column::Index(1),
            nulls: vec!["NA".into(), "null".into(), "".into()],
            skip_invalid: true,
            ..TextOptions::default()
        };
        let (got, skipped, nulls) =
            read_bytes(b"k,v\na,1\nb,NA\nc,\nd,null\ne,oops\nf,2\n", &opts).unwrap();
        assert_eq!(got, [1.0, 2.0]);
        assert_eq!((nulls, skipped), (3, 1));
        // Without the tokens, NA is an invalid field naming its line.
        let strict = TextOptions {
            column: Column::Index(1),
            ..TextOptions::default()
        };
        let msg = read("k,v\na,1\nb,NA\n", &strict).unwrap_err().to_string();
        assert!(msg.contains("line 3") && msg.contains("\"NA\""), "{msg}");
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
