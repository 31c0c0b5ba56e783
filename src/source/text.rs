//! Delimited text: CSV, TSV and other single-character delimiters (quoting, CRLF), and
//! whitespace-separated columns. One column is reduced; every value is parsed as f64 (correctly
//! rounded from its decimal text, by `fast-float2` with the standard parser behind it; `nan`,
//! `inf`, `-inf` are accepted).
//!
//! The input is cut into chunks of about a MiB that end at a line end outside quotes, and each
//! round of chunks is parsed on all cores: a chunk without a quote mark is split with `memchr`,
//! one with quotes goes through the `csv` crate (escaped quotes, line ends inside quoted
//! fields). Memory stays bounded by a round of chunks; line numbers in errors count from the
//! start of the input.
//!
//! Nothing is guessed silently: the delimiter is the format's (`,` for CSV, tab for TSV, runs of
//! whitespace for `.txt`) unless given; a leading UTF-8 byte-order mark and blank lines are
//! skipped; `\n`, `\r\n` and a lone `\r` all end a line; the first row is a header only when its
//! selected field is not a number (or the column is chosen by name, or `header` says so); fields
//! equal to a null token (`nulls`) are counted as nulls, apart from invalid fields.

use std::io::Read;
use std::path::PathBuf;

use super::{BatchSource, Element};
use crate::{ColumnRef, Error, Location, Result};

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
    /// The column to reduce (when `columns` is empty and `all_columns` is false).
    pub column: Column,
    /// Several columns to reduce in one pass, each to its own statistics, in this order
    /// (read with [`crate::Engine::run_columns`]).
    pub columns: Vec<Column>,
    /// Every numeric column: those whose fields in the input's first chunk (about a MiB) are
    /// numbers or null tokens, at least one a number; the others are listed as excluded
    /// ([`TextSource::excluded`]).
    pub all_columns: bool,
    /// Statistics per distinct value of this column (its trimmed text is the key: a string or
    /// an integer column), for every column read: each (group, column) is its own series,
    /// groups numbered in first-seen order.
    pub group_by: Option<Column>,
    /// The most distinct keys `group_by` accepts (an error names the line of the next one).
    pub max_groups: usize,
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
            columns: Vec::new(),
            all_columns: false,
            group_by: None,
            max_groups: DEFAULT_MAX_GROUPS,
            header: None,
            delimiter: None,
            skip_invalid: false,
            nulls: Vec::new(),
        }
    }
}

/// The default limit on distinct group keys ([`TextOptions::max_groups`]).
pub const DEFAULT_MAX_GROUPS: usize = 100_000;

/// A field delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    /// One byte (`,`, tab, `;`, …), with CSV quoting rules.
    Byte(u8),
    /// Runs of spaces and tabs, no quoting.
    Whitespace,
}

/// Bytes read and parsed as one piece: inputs are cut into chunks of about this size, each
/// ending at a line end outside quotes, and a round of chunks is parsed on all cores at once.
const CHUNK: usize = 1 << 20;

/// Cuts a byte stream into chunks that end at line ends outside CSV quotes, so each chunk parses
/// on its own (every chunk starts outside quotes).
struct Chunker<'a> {
    reader: Box<dyn Read + Send + 'a>,
    /// Bytes read but not yet handed out.
    buf: Vec<u8>,
    /// Whether `"` quotes fields (CSV-style delimiters; not whitespace-separated text).
    quoting: bool,
    eof: bool,
    /// Bytes handed out so far.
    bytes: u64,
}

impl Chunker<'_> {
    /// The next chunk of about `size` bytes (more when one record is longer), `None` at the end.
    fn next(&mut self, size: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut want = size;
        loop {
            while !self.eof && self.buf.len() < want {
                let start = self.buf.len();
                self.buf.resize(want.max(start + 4096), 0);
                match self.reader.read(&mut self.buf[start..]) {
                    Ok(0) => {
                        self.buf.truncate(start);
                        self.eof = true;
                    }
                    Ok(n) => self.buf.truncate(start + n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        self.buf.truncate(start)
                    }
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e);
                    }
                }
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            let cut = if self.eof {
                Some(self.buf.len())
            } else {
                self.cut()
            };
            if let Some(cut) = cut {
                let rest = self.buf.split_off(cut);
                let chunk = std::mem::replace(&mut self.buf, rest);
                self.bytes += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            // One record longer than the buffer: read on.
            want = self.buf.len() * 2;
        }
    }

    fn cut(&self) -> Option<usize> {
        cut(&self.buf, self.quoting)
    }
}

/// Where to cut `buf`: just after its last line end that is outside quotes (`None` if there is
/// none). A `\r` at the very end may be half of a `\r\n` and is not taken.
fn cut(buf: &[u8], quoting: bool) -> Option<usize> {
    let end = buf.len().checked_sub(1)?;
    let quotes: Vec<usize> = if quoting {
        memchr::memchr_iter(b'"', buf).collect()
    } else {
        Vec::new()
    };
    let mut search = buf.len();
    while let Some(i) = memchr::memrchr2(b'\n', b'\r', &buf[..search]) {
        search = i;
        if buf[i] == b'\r' && i == end {
            continue;
        }
        // Outside quotes exactly when an even number of quote marks come before it (an
        // escaped `""` counts twice).
        if quotes.partition_point(|&q| q < i) % 2 == 0 {
            return Some(i + 1);
        }
    }
    None
}

/// A memory-mapped text file, cut into chunks in place (no read, no copy).
struct MappedText {
    map: memmap2::Mmap,
    quoting: bool,
    /// Bytes handed out so far (from the start of the file).
    pos: usize,
    /// Bytes whose pages were released.
    released: usize,
}

impl MappedText {
    /// The next chunk's range, `None` at the end.
    fn next(&mut self, size: usize) -> Option<(usize, usize)> {
        let len = self.map.len();
        if self.pos >= len {
            return None;
        }
        let mut want = size;
        loop {
            let end = (self.pos + want).min(len);
            let cut_at = if end == len {
                Some(len - self.pos)
            } else {
                cut(&self.map[self.pos..end], self.quoting)
            };
            if let Some(c) = cut_at {
                let range = (self.pos, self.pos + c);
                self.pos += c;
                return Some(range);
            }
            want *= 2;
        }
    }

    /// Releases the pages of everything handed out before `upto` (rounded down to a page):
    /// the page cache keeps them, the resident set drops them.
    fn release(&mut self, upto: usize) {
        let upto = upto & !4095;
        if upto > self.released {
            // SAFETY: a read-only file mapping, and no slice of the released range is alive
            // (the chunks parsed from it are done).
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )
            };
            self.released = upto;
        }
    }
}

/// Where a text source's bytes come from.
enum TextInput<'a> {
    Stream(Chunker<'a>),
    Mapped(MappedText),
}

/// The lines of a chunk, ended by `\n`, `\r\n` or a lone `\r`.
fn lines_of(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr2(b'\n', b'\r', rest) {
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = &[];
                Some(line)
            }
        }
    })
}

/// How a chunk's rows are read.
#[derive(Clone)]
struct RowSpec {
    delimiter: Delimiter,
    /// The field index of each column read, in output order (one, or several).
    columns: Vec<usize>,
    /// For every field index up to the largest read, its place in `columns` (several columns).
    slots: Vec<Option<usize>>,
    nulls: Vec<Vec<u8>>,
    skip_invalid: bool,
    /// The group key's field index (`group_by`).
    key: Option<usize>,
}

impl RowSpec {
    fn new(
        delimiter: Delimiter,
        columns: Vec<usize>,
        nulls: Vec<Vec<u8>>,
        skip_invalid: bool,
    ) -> Self {
        let width = columns.iter().max().map_or(0, |m| m + 1);
        let mut slots = vec![None; width];
        for (slot, &c) in columns.iter().enumerate() {
            slots[c] = Some(slot);
        }
        Self {
            delimiter,
            columns,
            slots,
            nulls,
            skip_invalid,
            key: None,
        }
    }

    /// The column read when there is one.
    fn column(&self) -> usize {
        self.columns[0]
    }
}

/// What parsing one chunk gave, per column read.
#[derive(Default)]
struct Parsed {
    values: Vec<Vec<f64>>,
    /// With a group key: each value's row key, as an index into `dict`.
    keys: Vec<Vec<u32>>,
    /// The chunk's distinct keys in first-seen order, and where each is in it.
    dict: Vec<Vec<u8>>,
    dict_index: std::collections::HashMap<Vec<u8>, u32>,
    /// The chunk line (from 1) where each of `dict` was first seen.
    dict_lines: Vec<u64>,
    /// With a group key: (key, column, whether a null) of each field not taken (a null, or an
    /// invalid field skipped), so that they are counted per group.
    keyed_misses: Vec<(u32, usize, bool)>,
    nulls: Vec<u64>,
    skipped: Vec<u64>,
    /// Line ends in the chunk (its lines, for numbering the next chunk's).
    lines: u64,
    /// The first invalid field (when not skipping): its line within the chunk (from 1), its
    /// column's place, and why.
    error: Option<(u64, usize, String)>,
}

impl Parsed {
    fn new(columns: usize, capacity: usize) -> Self {
        Self {
            values: (0..columns).map(|_| Vec::with_capacity(capacity)).collect(),
            keys: vec![Vec::new(); columns],
            nulls: vec![0; columns],
            skipped: vec![0; columns],
            ..Self::default()
        }
    }

    /// The chunk-local id of the key `text` (first seen on `line`).
    fn key_id(&mut self, text: &[u8], line: u64) -> u32 {
        if let Some(&i) = self.dict_index.get(text) {
            return i;
        }
        let i = self.dict.len() as u32;
        self.dict.push(text.to_vec());
        self.dict_index.insert(text.to_vec(), i);
        self.dict_lines.push(line);
        i
    }

    /// Takes a row's field of column `slot` for the group `key` (a chunk-local id).
    fn take_keyed(
        &mut self,
        line: u64,
        slot: usize,
        key: Option<u32>,
        field: Field,
        skip: bool,
    ) -> bool {
        let null = matches!(field, Field::Null);
        let was = self.values[slot].len();
        let ok = self.take(line, slot, field, skip);
        if let Some(k) = key {
            if self.values[slot].len() > was {
                self.keys[slot].push(k);
            } else if ok {
                self.keyed_misses.push((k, slot, null));
            }
        }
        ok
    }

    fn take(&mut self, line: u64, slot: usize, field: Field, skip_invalid: bool) -> bool {
        match field {
            Field::Value(v) => self.values[slot].push(v),
            Field::Null => self.nulls[slot] += 1,
            Field::Invalid(_) if skip_invalid => self.skipped[slot] += 1,
            Field::Invalid(why) => {
                self.error = Some((line, slot, why));
                return false;
            }
        }
        true
    }
}

/// Parses a chunk's rows, skipping its first `skip_rows` non-blank rows (a header).
fn parse_chunk(bytes: &[u8], spec: &RowSpec, skip_rows: usize) -> Parsed {
    let n = spec.columns.len();
    let mut out = Parsed::new(n, bytes.len() / (8 * n));
    let mut skip = skip_rows;
    match spec.delimiter {
        Delimiter::Byte(d) if memchr::memchr(b'"', bytes).is_some() => {
            // Quoted fields: the csv crate's rules (escaped quotes, line ends inside quotes).
            let mut reader = csv_reader(d, bytes);
            let mut record = csv::ByteRecord::new();
            loop {
                match reader.read_byte_record(&mut record) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        let line = e.position().map_or(1, |p| p.line());
                        out.error = Some((line, 0, format!("{:?}", e.kind())));
                        return out;
                    }
                }
                if record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let line = record.position().map_or(1, |p| p.line());
                let key = match spec.key {
                    None => None,
                    Some(k) => match record.get(k) {
                        Some(text) => Some(out.key_id(text.trim_ascii(), line)),
                        None => {
                            if !missing_key(&mut out, spec, line) {
                                return out;
                            }
                            continue;
                        }
                    },
                };
                for (slot, &c) in spec.columns.iter().enumerate() {
                    let field = classify(record.get(c), &spec.nulls);
                    if !out.take_keyed(line, slot, key, field, spec.skip_invalid) {
                        return out;
                    }
                }
            }
            out.lines = count_lines(bytes);
        }
        _ if n > 1 || spec.key.is_some() => parse_plain_columns(bytes, spec, skip, &mut out),
        _ => parse_plain(bytes, spec, skip, &mut out),
    }
    out
}

/// A row without its group key field: an error naming the key column (`slot` usize::MAX), or
/// with skipping on, the row skipped and counted in every column read.
fn missing_key(out: &mut Parsed, spec: &RowSpec, line: u64) -> bool {
    if spec.skip_invalid {
        for s in &mut out.skipped {
            *s += 1;
        }
        return true;
    }
    out.error = Some((line, usize::MAX, "the line has no such column".to_string()));
    false
}

/// Parses a chunk without quote marks for several columns: each line split into fields once,
/// every field read classified into its column (a number, a null token, or invalid); a line
/// short of a column read is invalid for that column.
fn parse_plain_columns(bytes: &[u8], spec: &RowSpec, mut skip: usize, out: &mut Parsed) {
    let mut pos = 0;
    let mut number = 0u64;
    let width = spec.slots.len();
    while pos < bytes.len() {
        number += 1;
        let e = memchr::memchr2(b'\n', b'\r', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        let line = &bytes[pos..e];
        pos = next_line(bytes, e);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let key = match spec.key {
            None => None,
            Some(k) => {
                let field = match spec.delimiter {
                    Delimiter::Byte(d) => nth_field(line, d, k),
                    Delimiter::Whitespace => line
                        .split(u8::is_ascii_whitespace)
                        .filter(|f| !f.is_empty())
                        .nth(k),
                };
                match field {
                    Some(text) => Some(out.key_id(text.trim_ascii(), number)),
                    None => {
                        if !missing_key(out, spec, number) {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let mut seen = 0usize;
        let mut take = |f: usize, field: &[u8]| -> bool {
            if let Some(Some(slot)) = spec.slots.get(f) {
                seen += 1;
                let field = classify(Some(field), &spec.nulls);
                return out.take_keyed(number, *slot, key, field, spec.skip_invalid);
            }
            true
        };
        let ok = match spec.delimiter {
            Delimiter::Byte(d) => line
                .split(|&b| b == d)
                .take(width)
                .enumerate()
                .all(|(f, field)| take(f, field)),
            Delimiter::Whitespace => line
                .split(u8::is_ascii_whitespace)
                .filter(|f| !f.is_empty())
                .take(width)
                .enumerate()
                .all(|(f, field)| take(f, field)),
        };
        if !ok {
            return;
        }
        if seen < spec.columns.len() {
            // The line ends before some column read: invalid for each of those.
            let fields = match spec.delimiter {
                Delimiter::Byte(d) => line.split(|&b| b == d).count(),
                Delimiter::Whitespace => line
                    .split(u8::is_ascii_whitespace)
                    .filter(|f| !f.is_empty())
                    .count(),
            };
            for (slot, &c) in spec.columns.iter().enumerate() {
                let field = classify(None, &spec.nulls);
                if c >= fields && !out.take_keyed(number, slot, key, field, spec.skip_invalid) {
                    return;
                }
            }
        }
    }
    out.lines = number;
}

/// Parses a chunk without quote marks. Each line's number is parsed where it starts, and the
/// parser's stop says where the field ends (a delimiter or the line's end): no separate search
/// for line ends or fields. A line the fast path cannot take (spaces around the number, a null
/// token, anything not a number, a header still to skip) goes the careful way.
fn parse_plain(bytes: &[u8], spec: &RowSpec, mut skip: usize, out: &mut Parsed) {
    let d = match spec.delimiter {
        Delimiter::Byte(d) => Some(d),
        Delimiter::Whitespace => None,
    };
    let column = spec.column();
    let fast = spec.nulls.is_empty() && (d.is_some() || column == 0);
    let mut pos = 0;
    let mut number = 0u64;
    while pos < bytes.len() {
        number += 1;
        if fast && skip == 0 {
            // Past the fields before the column (a line ending first: the careful way).
            let mut at = pos;
            let mut ok = true;
            if let Some(d) = d {
                for _ in 0..column {
                    match bytes[at..]
                        .iter()
                        .position(|&b| b == d || b == b'\n' || b == b'\r')
                    {
                        Some(i) if bytes[at + i] == d => at += i + 1,
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
            } else {
                while at < bytes.len() && (bytes[at] == b' ' || bytes[at] == b'\t') {
                    at += 1;
                }
            }
            if ok
                && let Some(&first) = bytes.get(at)
                && !first.is_ascii_whitespace()
                && let Ok((v, n)) = fast_float2::parse_partial::<f64, _>(&bytes[at..])
            {
                let after = at + n;
                // Where the line ends, if the number ends the field.
                let line_end = match bytes.get(after) {
                    None => Some(after),
                    Some(b'\n' | b'\r') => Some(after),
                    Some(&b) if Some(b) == d => memchr::memchr2(b'\n', b'\r', &bytes[after..])
                        .map(|i| after + i)
                        .or(Some(bytes.len())),
                    Some(b' ' | b'\t') if d.is_none() => {
                        memchr::memchr2(b'\n', b'\r', &bytes[after..])
                            .map(|i| after + i)
                            .or(Some(bytes.len()))
                    }
                    _ => None,
                };
                if let Some(e) = line_end {
                    out.values[0].push(v);
                    pos = next_line(bytes, e);
                    continue;
                }
            }
        }
        // The careful way: the whole line, its field classified.
        let e = memchr::memchr2(b'\n', b'\r', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        let line = &bytes[pos..e];
        pos = next_line(bytes, e);
        let field = match spec.delimiter {
            Delimiter::Byte(d) => nth_field(line, d, column),
            Delimiter::Whitespace => line
                .split(u8::is_ascii_whitespace)
                .filter(|f| !f.is_empty())
                .nth(column),
        };
        let field = classify(field, &spec.nulls);
        if (skip > 0 || !matches!(field, Field::Value(_)))
            && line.iter().all(u8::is_ascii_whitespace)
        {
            continue;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if !out.take(number, 0, field, spec.skip_invalid) {
            return;
        }
    }
    out.lines = number;
}

/// Where the line after the line end at `e` starts (`\r\n`, `\n` or a lone `\r`).
fn next_line(bytes: &[u8], e: usize) -> usize {
    match bytes.get(e) {
        Some(b'\r') if bytes.get(e + 1) == Some(&b'\n') => e + 2,
        Some(_) => e + 1,
        None => e,
    }
}

/// The `n`th field of a line split at `d` (no quoting). Lines are short: a plain loop beats
/// a vectorised search's set-up here.
fn nth_field(line: &[u8], d: u8, n: usize) -> Option<&[u8]> {
    let mut fields = line.split(|&b| b == d);
    fields.nth(n)
}

/// Line ends in `bytes` (`\n`, `\r\n` and a lone `\r` each count once), plus one for a last
/// line without an end.
fn count_lines(bytes: &[u8]) -> u64 {
    lines_of(bytes).count() as u64
}

/// What one field holds.
fn classify(field: Option<&[u8]>, nulls: &[Vec<u8>]) -> Field {
    let Some(field) = field else {
        return Field::Invalid("the line has no such column".to_string());
    };
    let text = field.trim_ascii();
    if let Ok(v) = fast_float2::parse::<f64, _>(text) {
        // A null token that happens to be a number ("0", "-999") is still a null.
        if !nulls.is_empty() && nulls.iter().any(|n| n == text) {
            return Field::Null;
        }
        return Field::Value(v);
    }
    if nulls.iter().any(|n| n == text) {
        return Field::Null;
    }
    if text.is_empty() {
        return Field::Invalid("empty field".into());
    }
    let Ok(s) = std::str::from_utf8(text) else {
        return Field::Invalid("the field is not UTF-8".to_string());
    };
    // What the fast parser refuses, the standard one may still take (and the other way
    // round nothing: both are correctly rounded).
    match s.parse::<f64>() {
        Ok(v) => Field::Value(v),
        Err(_) => Field::Invalid(format!("{s:?} is not a number")),
    }
}

/// One column of a delimited text input, as f64 values in batches, parsed on all cores.
pub struct TextSource<'a> {
    input: TextInput<'a>,
    /// Bytes per chunk ([`CHUNK`]; tests cut smaller to cross many boundaries).
    chunk: usize,
    spec: RowSpec,
    path: PathBuf,
    /// The columns read, in output order.
    column_refs: Vec<ColumnRef>,
    /// Columns left out of `all_columns`, and why.
    excluded: Vec<(ColumnRef, String)>,
    /// The group key column (`group_by`), its keys in first-seen order and their ids.
    key_ref: Option<ColumnRef>,
    groups: Vec<String>,
    group_index: std::collections::HashMap<Vec<u8>, u32>,
    max_groups: usize,
    /// Each ready value's group id (with a key), per column.
    ready_keys: Vec<Vec<u32>>,
    /// With a key: nulls and skipped fields per (group, column) series.
    series_nulls: Vec<u64>,
    series_skipped: Vec<u64>,
    /// Gathered values of a round by (group, column) series: values, and (series, start, len).
    gathered: Vec<f64>,
    spans: Vec<(usize, usize, usize)>,
    /// Non-blank rows to skip at the start of the next chunk (the header).
    skip_rows: usize,
    /// Lines before the next chunk to parse.
    line: u64,
    /// Parsed values not yet handed out (per column), and where they start (one column).
    ready: Vec<Vec<f64>>,
    ready_at: usize,
    /// An error found in a chunk, raised once the values before it are handed out.
    failed: Option<Error>,
    skipped: Vec<u64>,
    null_count: Vec<u64>,
    len_bytes: Option<u64>,
    label: String,
}

impl std::fmt::Debug for TextSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSource")
            .field("path", &self.path)
            .field("columns", &self.spec.columns)
            .finish_non_exhaustive()
    }
}

/// What one field holds.
enum Field {
    Value(f64),
    Null,
    Invalid(String),
}

impl<'a> TextSource<'a> {
    /// Reads `reader` (named `name` in reports and errors; `len_bytes` its length if known).
    pub fn new(
        reader: Box<dyn Read + Send + 'a>,
        name: impl Into<PathBuf>,
        len_bytes: Option<u64>,
        options: &TextOptions,
    ) -> Result<Self> {
        let path = name.into();
        let delimiter = options.delimiter.unwrap_or(Delimiter::Byte(b','));
        let mut chunks = Chunker {
            reader,
            buf: Vec::new(),
            quoting: matches!(delimiter, Delimiter::Byte(_)),
            eof: false,
            bytes: 0,
        };
        // The first chunk holds the first row (the header question) whole; it goes back in
        // front of the rest.
        let first = chunks.next(CHUNK).map_err(|error| Error::Io {
            path: path.clone(),
            error,
        })?;
        let mut first = first.unwrap_or_default();
        chunks.bytes -= first.len() as u64;
        if first.starts_with(b"\xEF\xBB\xBF") {
            first.drain(..3);
            chunks.bytes += 3;
        }
        let mut rest = std::mem::take(&mut chunks.buf);
        let head = first.clone();
        first.append(&mut rest);
        chunks.buf = first;
        Self::with_input(TextInput::Stream(chunks), &head, path, len_bytes, options)
    }

    /// Reads the regular file `file` (at `path`, `len` bytes) through a memory mapping: chunks
    /// are parsed where they lie, and their pages released after each round. `Ok(None)` when
    /// the file cannot be mapped (then read it with [`TextSource::new`]).
    pub(crate) fn open_mapped(
        file: &std::fs::File,
        path: &std::path::Path,
        len: u64,
        options: &TextOptions,
    ) -> Result<Option<Self>> {
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: read-only and private to this source; see `MappedSource` for what another
        // process truncating the file would do.
        let Ok(map) = (unsafe { memmap2::MmapOptions::new().map(file) }) else {
            return Ok(None);
        };
        let _ = map.advise(memmap2::Advice::Sequential);
        let delimiter = options.delimiter.unwrap_or(Delimiter::Byte(b','));
        let mut mapped = MappedText {
            map,
            quoting: matches!(delimiter, Delimiter::Byte(_)),
            pos: 0,
            released: 0,
        };
        if mapped.map.starts_with(b"\xEF\xBB\xBF") {
            mapped.pos = 3;
        }
        let head = {
            let start = mapped.pos;
            let end = (start + CHUNK).min(mapped.map.len());
            let cut_at = if end == mapped.map.len() {
                end
            } else {
                start + cut(&mapped.map[start..end], mapped.quoting).unwrap_or(end - start)
            };
            mapped.map[start..cut_at].to_vec()
        };
        Self::with_input(
            TextInput::Mapped(mapped),
            &head,
            path.to_path_buf(),
            Some(len),
            options,
        )
        .map(Some)
    }

    /// Settles the header and the columns from the input's first chunk `head`.
    fn with_input(
        input: TextInput<'a>,
        head: &[u8],
        path: PathBuf,
        len_bytes: Option<u64>,
        options: &TextOptions,
    ) -> Result<Self> {
        let delimiter = options.delimiter.unwrap_or(Delimiter::Byte(b','));
        let nulls: Vec<Vec<u8>> = options
            .nulls
            .iter()
            .map(|t| t.trim().as_bytes().to_vec())
            .collect();
        let invalid = |line: u64, column: Option<ColumnRef>, message: String| Error::InvalidInput {
            path: path.clone(),
            at: Location::Line { line, column },
            message,
        };
        let Some((first_line, row)) = first_row(head, delimiter, &path)? else {
            return Err(invalid(1, None, "the input is empty: no rows".into()));
        };
        let wanted: Vec<Column> = if options.columns.is_empty() {
            vec![options.column.clone()]
        } else {
            options.columns.clone()
        };
        let not_number = |f: &[u8]| matches!(classify(Some(f), &nulls), Field::Invalid(_));
        let is_header = match options.header {
            Some(h) => h,
            None if matches!(options.group_by, Some(Column::Name(_))) => true,
            None if options.all_columns => row.iter().any(|f| not_number(f)),
            None => wanted.iter().any(|c| match c {
                Column::Name(_) => true,
                Column::Index(i) => row.get(*i).is_some_and(|f| not_number(f)),
            }),
        };
        let header: Option<Vec<String>> = is_header.then(|| {
            row.iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
                .collect()
        });
        let column_ref = |i: usize| ColumnRef {
            index: Some(i),
            name: header.as_ref().and_then(|h| h.get(i).cloned()),
        };
        let mut excluded = Vec::new();
        let key: Option<usize> = match &options.group_by {
            None => None,
            Some(Column::Index(i)) => Some(*i),
            Some(Column::Name(n)) => match &header {
                Some(h) => Some(h.iter().position(|c| c == n.trim()).ok_or_else(|| {
                    invalid(
                        first_line,
                        Some(ColumnRef {
                            index: None,
                            name: Some(n.trim().to_string()),
                        }),
                        format!(
                            "no such column to group by; the header has: {}",
                            h.join(", ")
                        ),
                    )
                })?),
                None => {
                    return Err(Error::InvalidConfig(format!(
                        "group-by column {n:?} is a name, but the input has no header: give a 0-based index"
                    )));
                }
            },
        };
        let columns: Vec<usize> = if options.all_columns {
            // Every column of the first row, kept where the first chunk's fields are numbers
            // or null tokens, at least one a number.
            let all: Vec<usize> = (0..row.len()).collect();
            let probe = RowSpec::new(delimiter, all.clone(), nulls.clone(), true);
            let parsed = parse_chunk(head, &probe, usize::from(is_header));
            let mut keep = Vec::new();
            for c in all {
                if Some(c) == key {
                    excluded.push((column_ref(c), "the group key".to_string()));
                    continue;
                }
                match (parsed.values[c].len(), parsed.skipped[c]) {
                    (n, 0) if n > 0 => keep.push(c),
                    (0, 0) => {
                        excluded.push((column_ref(c), "no numbers in the first rows".to_string()))
                    }
                    (_, bad) => excluded.push((
                        column_ref(c),
                        format!("{bad} field(s) in the first rows are not numbers"),
                    )),
                }
            }
            if keep.is_empty() {
                return Err(invalid(
                    first_line,
                    None,
                    format!(
                        "no numeric column: {}",
                        excluded
                            .iter()
                            .map(|(c, why)| format!("{c}: {why}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
            keep
        } else {
            let mut out = Vec::with_capacity(wanted.len());
            for c in &wanted {
                let i = match (c, &header) {
                    (Column::Index(i), _) => *i,
                    (Column::Name(n), Some(h)) => {
                        h.iter().position(|c| c == n.trim()).ok_or_else(|| {
                            invalid(
                                first_line,
                                Some(ColumnRef {
                                    index: None,
                                    name: Some(n.trim().to_string()),
                                }),
                                format!("no such column; the header has: {}", h.join(", ")),
                            )
                        })?
                    }
                    (Column::Name(n), None) => {
                        return Err(Error::InvalidConfig(format!(
                            "column {n:?} is a name, but the input has no header: give a 0-based index"
                        )));
                    }
                };
                if out.contains(&i) {
                    return Err(Error::InvalidConfig(format!(
                        "column {} is asked for twice",
                        column_ref(i)
                    )));
                }
                if Some(i) == key {
                    return Err(Error::InvalidConfig(format!(
                        "column {} is the group key: it cannot also be reduced",
                        column_ref(i)
                    )));
                }
                out.push(i);
            }
            out
        };
        let column_refs: Vec<ColumnRef> = columns.iter().map(|&i| column_ref(i)).collect();
        let kind = match delimiter {
            Delimiter::Byte(b'\t') => "tab-separated".to_string(),
            Delimiter::Byte(b) => format!("{:?}-separated", b as char),
            Delimiter::Whitespace => "whitespace-separated".to_string(),
        };
        let header_note = if header.is_some() { "" } else { ", no header" };
        let which = match column_refs.as_slice() {
            [one] => format!("column {one}"),
            many => format!("{} columns", many.len()),
        };
        let label = format!("{} ({kind} text, {which}{header_note})", path.display());
        let n = columns.len();
        let mut spec = RowSpec::new(delimiter, columns, nulls, options.skip_invalid);
        spec.key = key;
        let label = match key {
            Some(k) => format!("{label}, grouped by column {}", column_ref(k)),
            None => label,
        };
        Ok(Self {
            input,
            chunk: CHUNK,
            spec,
            path,
            column_refs,
            excluded,
            key_ref: key.map(column_ref),
            groups: Vec::new(),
            group_index: std::collections::HashMap::new(),
            max_groups: options.max_groups.max(1),
            ready_keys: vec![Vec::new(); n],
            series_nulls: Vec::new(),
            series_skipped: Vec::new(),
            gathered: Vec::new(),
            spans: Vec::new(),
            skip_rows: usize::from(is_header),
            line: 0,
            ready: vec![Vec::new(); n],
            ready_at: 0,
            failed: None,
            skipped: vec![0; n],
            null_count: vec![0; n],
            len_bytes,
            label,
        })
    }

    /// Cuts the input into chunks of `bytes` from now on (tests: many chunk boundaries in a
    /// small input).
    #[cfg(test)]
    fn with_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// Fields equal to a null token, so far.
    pub fn null_count(&self) -> u64 {
        self.null_count.iter().sum()
    }

    /// The columns read, in output order.
    pub fn column_refs(&self) -> &[ColumnRef] {
        &self.column_refs
    }

    /// Columns left out of [`TextOptions::all_columns`], with why.
    pub fn excluded(&self) -> &[(ColumnRef, String)] {
        &self.excluded
    }

    /// The error for reading a source of several columns as one stream.
    fn several(&self) -> Error {
        Error::InvalidConfig(format!(
            "{} holds {} columns: read them with Engine::run_columns",
            self.label,
            self.column_refs.len()
        ))
    }

    /// Reads a round of chunks and parses them on all cores; false at the end of the input.
    fn parse_round(&mut self) -> Result<bool> {
        let round = rayon::current_num_threads().max(1) * 2;
        let chunk = self.chunk;
        let skip = std::mem::take(&mut self.skip_rows);
        let spec = &self.spec;
        let parse = |chunks: Vec<&[u8]>| -> Vec<Parsed> {
            use rayon::prelude::*;
            chunks
                .par_iter()
                .enumerate()
                .map(|(i, c)| parse_chunk(c, spec, if i == 0 { skip } else { 0 }))
                .collect()
        };
        let parsed = match &mut self.input {
            TextInput::Stream(chunker) => {
                let mut owned = Vec::with_capacity(round);
                for _ in 0..round {
                    match chunker.next(chunk) {
                        Ok(Some(c)) => owned.push(c),
                        Ok(None) => break,
                        Err(error) => {
                            return Err(Error::Io {
                                path: self.path.clone(),
                                error,
                            });
                        }
                    }
                }
                parse(owned.iter().map(Vec::as_slice).collect())
            }
            TextInput::Mapped(mapped) => {
                mapped.release(mapped.pos);
                let mut ranges = Vec::with_capacity(round);
                for _ in 0..round {
                    match mapped.next(chunk) {
                        Some(r) => ranges.push(r),
                        None => break,
                    }
                }
                let map = &mapped.map;
                parse(ranges.iter().map(|&(a, b)| &map[a..b]).collect())
            }
        };
        if parsed.is_empty() {
            return Ok(false);
        }
        for r in &mut self.ready {
            r.clear();
        }
        for r in &mut self.ready_keys {
            r.clear();
        }
        self.ready_at = 0;
        for p in parsed {
            // The chunk's keys in global ids, new ones numbered in the order first seen.
            let mut global = Vec::with_capacity(p.dict.len());
            for (text, &at) in p.dict.iter().zip(&p.dict_lines) {
                let id = match self.group_index.get(text.as_slice()) {
                    Some(&id) => id,
                    None => {
                        if self.groups.len() == self.max_groups {
                            self.failed = Some(Error::InvalidInput {
                                path: self.path.clone(),
                                at: Location::Line {
                                    line: self.line + at,
                                    column: self.key_ref.clone(),
                                },
                                message: format!(
                                    "more than {} distinct group keys (this one: {:?})",
                                    self.max_groups,
                                    String::from_utf8_lossy(text)
                                ),
                            });
                            return Ok(true);
                        }
                        let id = self.groups.len() as u32;
                        self.groups.push(String::from_utf8_lossy(text).into_owned());
                        self.group_index.insert(text.clone(), id);
                        id
                    }
                };
                global.push(id);
            }
            let n = self.column_refs.len();
            for &(k, slot, null) in &p.keyed_misses {
                let series = global[k as usize] as usize * n + slot;
                if self.series_nulls.len() <= series {
                    self.series_nulls.resize(series + 1, 0);
                    self.series_skipped.resize(series + 1, 0);
                }
                if null {
                    self.series_nulls[series] += 1;
                } else {
                    self.series_skipped[series] += 1;
                }
            }
            for (slot, values) in p.values.iter().enumerate() {
                self.ready[slot].extend_from_slice(values);
                self.ready_keys[slot].extend(p.keys[slot].iter().map(|&k| global[k as usize]));
                self.null_count[slot] += p.nulls[slot];
                self.skipped[slot] += p.skipped[slot];
            }
            if let Some((line, slot, message)) = p.error {
                let column = match slot {
                    usize::MAX => self.key_ref.clone(),
                    s => Some(self.column_refs[s].clone()),
                };
                self.failed = Some(Error::InvalidInput {
                    path: self.path.clone(),
                    at: Location::Line {
                        line: self.line + line,
                        column,
                    },
                    message,
                });
                break;
            }
            self.line += p.lines;
        }
        Ok(true)
    }
}

impl crate::source::ColumnsSource for TextSource<'_> {
    fn columns(&self) -> Vec<ColumnRef> {
        if self.key_ref.is_none() {
            return self.column_refs.clone();
        }
        // One series per (group, column), group-major.
        (0..self.groups.len())
            .flat_map(|_| self.column_refs.iter().cloned())
            .collect()
    }

    fn series_group(&self, series: usize) -> Option<String> {
        self.key_ref.as_ref()?;
        self.groups.get(series / self.column_refs.len()).cloned()
    }

    fn next_columns(&mut self) -> Result<Option<Vec<(usize, crate::backend::BatchRef<'_>)>>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.parse_round()? {
            return Ok(None);
        }
        if self.key_ref.is_some() {
            // Each column's values gathered by group: series group · columns + column.
            let n = self.column_refs.len();
            self.gathered.clear();
            self.spans.clear();
            let mut counts = vec![0u32; self.groups.len()];
            for (slot, (values, keys)) in self.ready.iter().zip(&self.ready_keys).enumerate() {
                let base = self.gathered.len();
                let mut touched = Vec::new();
                for &k in keys {
                    if counts[k as usize] == 0 {
                        touched.push(k);
                    }
                    counts[k as usize] += 1;
                }
                let mut start = base;
                for &k in &touched {
                    let c = counts[k as usize] as usize;
                    self.spans.push((k as usize * n + slot, start, c));
                    counts[k as usize] = start as u32;
                    start += c;
                }
                self.gathered.resize(start, 0.0);
                for (&k, &v) in keys.iter().zip(values) {
                    let at = &mut counts[k as usize];
                    self.gathered[*at as usize] = v;
                    *at += 1;
                }
                for &k in &touched {
                    counts[k as usize] = 0;
                }
            }
            let g = &self.gathered;
            return Ok(Some(
                self.spans
                    .iter()
                    .map(|&(s, a, l)| (s, crate::backend::BatchRef::F64(&g[a..a + l])))
                    .collect(),
            ));
        }
        Ok(Some(
            self.ready
                .iter()
                .enumerate()
                .map(|(i, v)| (i, crate::backend::BatchRef::F64(v)))
                .collect(),
        ))
    }

    fn bytes_read(&self) -> u64 {
        crate::source::BatchSource::bytes_read(self)
    }

    fn len_bytes(&self) -> Option<u64> {
        self.len_bytes
    }

    fn skipped(&self) -> Vec<u64> {
        match self.key_ref {
            None => self.skipped.clone(),
            Some(_) => self.series_skipped.clone(),
        }
    }

    fn nulls(&self) -> Vec<u64> {
        match self.key_ref {
            None => self.null_count.clone(),
            Some(_) => self.series_nulls.clone(),
        }
    }

    fn excluded(&self) -> Vec<(ColumnRef, String)> {
        self.excluded.clone()
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// The first non-blank row of `bytes` as its fields, with its line number; `None` if there is
/// none.
fn first_row(
    bytes: &[u8],
    delimiter: Delimiter,
    path: &std::path::Path,
) -> Result<Option<(u64, Vec<Vec<u8>>)>> {
    match delimiter {
        Delimiter::Byte(d) => {
            let mut reader = csv_reader(d, bytes);
            let mut record = csv::ByteRecord::new();
            loop {
                if !reader
                    .read_byte_record(&mut record)
                    .map_err(|e| csv_error(path, e))?
                {
                    return Ok(None);
                }
                if record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line = record.position().map_or(0, |p| p.line());
                return Ok(Some((line, record.iter().map(<[u8]>::to_vec).collect())));
            }
        }
        Delimiter::Whitespace => Ok(lines_of(bytes)
            .enumerate()
            .find(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .map(|(i, l)| {
                (
                    i as u64 + 1,
                    l.split(u8::is_ascii_whitespace)
                        .filter(|f| !f.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect(),
                )
            })),
    }
}

/// The csv crate's reader over `bytes` with delimiter `d`: no header row (headers are this
/// parser's business), rows of any length (a short row is reported by line).
fn csv_reader(d: u8, bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(d)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
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

impl BatchSource for TextSource<'_> {
    fn as_columns(&mut self) -> Option<&mut dyn crate::source::ColumnsSource> {
        Some(self)
    }

    fn next_batch(&mut self, _buf: &mut Vec<f32>, _max: usize) -> Result<usize> {
        Err(Error::WrongElementType {
            source_name: self.label.clone(),
            holds: "text (parsed to f64)".to_string(),
            asked: "f32",
        })
    }

    fn element(&self) -> Element {
        Element::F64
    }

    fn dtype_name(&self) -> String {
        "text".to_string()
    }

    fn next_batch_f64(&mut self, buf: &mut Vec<f64>, max: usize) -> Result<usize> {
        if self.ready.len() != 1 {
            return Err(self.several());
        }
        buf.clear();
        while buf.len() < max {
            if self.ready_at == self.ready[0].len() {
                if let Some(e) = self.failed.take() {
                    return Err(e);
                }
                if !self.parse_round()? {
                    break;
                }
                continue;
            }
            let n = (max - buf.len()).min(self.ready[0].len() - self.ready_at);
            buf.extend_from_slice(&self.ready[0][self.ready_at..self.ready_at + n]);
            self.ready_at += n;
        }
        Ok(buf.len())
    }

    fn lend_batch(&mut self, max: usize) -> Result<Option<crate::backend::BatchRef<'_>>> {
        // Parsed values are lent where they lie: no copy into the engine's buffer.
        if self.ready.len() != 1 {
            return Err(self.several());
        }
        while self.ready_at == self.ready[0].len() {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            if !self.parse_round()? {
                return Ok(Some(crate::backend::BatchRef::F64(&[])));
            }
        }
        let n = max.min(self.ready[0].len() - self.ready_at);
        let at = self.ready_at;
        self.ready_at += n;
        Ok(Some(crate::backend::BatchRef::F64(
            &self.ready[0][at..at + n],
        )))
    }

    fn bytes_read(&self) -> u64 {
        match &self.input {
            TextInput::Stream(c) => c.bytes,
            TextInput::Mapped(m) => m.pos as u64,
        }
    }

    fn len_bytes(&self) -> Option<u64> {
        self.len_bytes
    }

    fn skipped(&self) -> u64 {
        self.skipped.iter().sum()
    }

    fn nulls(&self) -> u64 {
        self.null_count.iter().sum()
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
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(bytes.to_vec()));
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

    /// A CSV whose rows end in `\n`, `\r\n` or a lone `\r`, with blank lines, quoted fields
    /// holding delimiters, escaped quotes and line ends, and the values in column 1: every
    /// chunk size, read as a stream and as a mapped file, gives the values in order.
    #[test]
    fn chunk_boundaries_anywhere_keep_every_row_right() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut text = String::from("name,value,note\n");
        let mut want = Vec::new();
        for i in 0..3000 {
            let v: f64 = rng.random_range(-1e6..1e6);
            let v = (v * 1e3).round() / 1e3;
            want.push(v);
            let name = match i % 5 {
                0 => "\"multi\nline, \"\"quoted\"\"\r\nname\"".to_string(),
                1 => format!("\"q{i}\""),
                _ => format!("n{i}"),
            };
            let value = if i % 7 == 0 {
                format!("\"{v}\"")
            } else {
                format!(" {v} ")
            };
            let end = ["\n", "\r\n", "\r"][i % 3];
            text.push_str(&format!("{name},{value},x{end}"));
            if i % 11 == 0 {
                text.push('\n');
            }
        }
        let opts = TextOptions {
            column: Column::Name("value".into()),
            ..TextOptions::default()
        };
        let path = std::env::temp_dir().join(format!("mb-chunks-{}.csv", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        for chunk in [1, 7, 64, 1000, 1 << 20] {
            let stream = TextSource::new(
                Box::new(std::io::Cursor::new(text.clone().into_bytes())),
                "t.csv",
                None,
                &opts,
            )
            .unwrap()
            .with_chunk(chunk);
            let file = std::fs::File::open(&path).unwrap();
            let mapped = TextSource::open_mapped(&file, &path, text.len() as u64, &opts)
                .unwrap()
                .unwrap()
                .with_chunk(chunk);
            for (how, mut s) in [("stream", stream), ("mapped", mapped)] {
                let mut buf = Vec::new();
                let mut got = Vec::new();
                while s.next_batch_f64(&mut buf, 97).unwrap() > 0 {
                    got.extend_from_slice(&buf);
                }
                assert_eq!(got, want, "{how}, chunks of {chunk}");
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// An error deep in the input names its line counted from the start, whatever chunk it
    /// falls in; skipped and null fields are counted across chunks.
    #[test]
    fn line_numbers_and_counts_span_chunks() {
        let mut text = String::from("v\n");
        for i in 0..5000 {
            match i {
                4321 => text.push_str("oops\r\n"),
                _ if i % 100 == 0 => text.push_str("NA\n"),
                _ => text.push_str(&format!("{i}\r\n")),
            }
        }
        for chunk in [5, 333, 1 << 20] {
            let open = |opts: &TextOptions| {
                TextSource::new(
                    Box::new(std::io::Cursor::new(text.clone().into_bytes())),
                    "t.csv",
                    None,
                    opts,
                )
                .unwrap()
                .with_chunk(chunk)
            };
            let drain = |s: &mut TextSource| -> Result<u64> {
                let mut buf = Vec::new();
                let mut n = 0;
                while s.next_batch_f64(&mut buf, 1000)? > 0 {
                    n += buf.len() as u64;
                }
                Ok(n)
            };
            let strict = TextOptions {
                nulls: vec!["NA".into()],
                ..TextOptions::default()
            };
            let e = drain(&mut open(&strict)).unwrap_err().to_string();
            // The header is line 1, row i is line i + 2.
            assert!(
                e.contains("line 4323") && e.contains("oops"),
                "chunks of {chunk}: {e}"
            );
            let lenient = TextOptions {
                skip_invalid: true,
                ..strict
            };
            let mut s = open(&lenient);
            assert_eq!(drain(&mut s).unwrap(), 5000 - 50 - 1, "chunks of {chunk}");
            assert_eq!((s.nulls(), s.skipped()), (50, 1), "chunks of {chunk}");
        }
    }

    /// The fast parser agrees with the standard library's correctly rounded one on every
    /// string, numbers and not-numbers alike.
    #[test]
    fn fast_parsing_is_correctly_rounded() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xf10a7);
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "1e308",
            "1.7976931348623157e308",
            "1.8e308",
            "4.9e-324",
            "2e-324",
            "2.2250738585072011e-308",
            "9007199254740993",
            "0.1",
            ".5",
            "5.",
            "+3",
            "inf",
            "-Infinity",
            "nan",
            "1e",
            "1.2.3",
            "--1",
            "0x10",
            "1_0",
            "",
            " ",
            "e5",
            "123456789012345678901234567890",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..20000 {
            let digits: String = (0..rng.random_range(1..25))
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            let dot = rng.random_range(0..=digits.len());
            let exp = rng.random_range(-330..330);
            cases.push(format!("{}.{}e{exp}", &digits[..dot], &digits[dot..]));
            cases.push(digits);
        }
        for c in &cases {
            let want = c.parse::<f64>().ok();
            let got = match classify(Some(c.as_bytes()), &[]) {
                Field::Value(v) => Some(v),
                _ => None,
            };
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{c:?}");
            // The fast path of a whole line gives the same.
            let mut out = Parsed::new(1, 0);
            let spec = RowSpec::new(Delimiter::Byte(b','), vec![0], Vec::new(), true);
            parse_plain(format!("{c}\n").as_bytes(), &spec, 0, &mut out);
            let blank = c.trim().is_empty();
            assert_eq!(
                out.values[0].first().map(|v| v.to_bits()),
                if blank { None } else { want.map(f64::to_bits) },
                "line {c:?}"
            );
        }
    }

    /// Several columns read in one pass give each column exactly what reading it alone gives,
    /// whatever the delimiter, quoting, nulls, blank lines, CRLF and chunk boundaries.
    #[test]
    fn several_columns_in_one_pass_equal_each_column_alone() {
        use rand::{RngExt, SeedableRng};
        let seed: u64 = rand::rng().random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for (d, quote) in [
            (Delimiter::Byte(b','), false),
            (Delimiter::Byte(b','), true),
            (Delimiter::Byte(b'\t'), false),
            (Delimiter::Whitespace, false),
        ] {
            let sep = match d {
                Delimiter::Byte(b) => (b as char).to_string(),
                Delimiter::Whitespace => "  ".to_string(),
            };
            let mut text = ["id", "x", "y", "label", "z"].join(&sep) + "\r\n";
            for r in 0..3000 {
                let x: f64 = rng.random_range(-1e6..1e6);
                let y = if r % 97 == 0 {
                    "NA".to_string()
                } else {
                    format!("{:e}", rng.random::<f64>() * 1e-300)
                };
                let z: i64 = rng.random_range(-1_000_000_000_000..1_000_000_000_000);
                let label = if quote && r % 5 == 0 {
                    "\"a,b\"".to_string()
                } else {
                    "w".to_string()
                };
                let x = if quote && r % 3 == 0 {
                    format!("\"{x}\"")
                } else {
                    x.to_string()
                };
                text += &[r.to_string(), x, y, label, z.to_string()].join(&sep);
                text += if r % 2 == 0 { "\n" } else { "\r\n" };
                if r % 500 == 0 {
                    text += "\n";
                }
            }
            let options = |columns: Vec<Column>| TextOptions {
                columns,
                delimiter: Some(d),
                nulls: vec!["NA".to_string()],
                ..TextOptions::default()
            };
            let want: Vec<Vec<f64>> = ["z", "x", "id", "y"]
                .iter()
                .map(|c| {
                    let mut o = options(Vec::new());
                    o.column = Column::Name(c.to_string());
                    read(&text, &o).unwrap().0
                })
                .collect();
            for chunk in [13, 100, 4096, CHUNK] {
                let reader: Box<dyn Read + Send> =
                    Box::new(std::io::Cursor::new(text.clone().into_bytes()));
                let o = options(
                    ["z", "x", "id", "y"]
                        .iter()
                        .map(|c| Column::Name(c.to_string()))
                        .collect(),
                );
                let mut s = TextSource::new(reader, "t", None, &o)
                    .unwrap()
                    .with_chunk(chunk);
                let names: Vec<Option<String>> =
                    s.column_refs().iter().map(|c| c.name.clone()).collect();
                assert_eq!(
                    names,
                    [
                        Some("z".into()),
                        Some("x".into()),
                        Some("id".into()),
                        Some("y".into())
                    ]
                );
                let mut got = vec![Vec::new(); 4];
                use crate::source::ColumnsSource;
                while let Some(pieces) = s.next_columns().unwrap() {
                    for (g, (_, p)) in got.iter_mut().zip(pieces) {
                        match p {
                            crate::backend::BatchRef::F64(v) => g.extend_from_slice(v),
                            other => panic!("text gives f64, not {other:?}"),
                        }
                    }
                }
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.len() == w.len()
                            && g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "seed {seed}, {d:?}, quote {quote}, chunk {chunk}, column {i}"
                    );
                }
                assert_eq!(ColumnsSource::nulls(&s), [0, 0, 0, 31], "seed {seed}");
            }
        }
    }

    /// `all_columns` keeps the columns whose first rows are numbers or nulls and says why the
    /// others are left out; a field that turns out not to be a number later is an error naming
    /// its line and column (or skipped and counted for that column alone).
    #[test]
    fn all_numeric_columns_and_errors_per_column() {
        let text = "when,a,b,tag,empty\n2024-01-01,1,NA,x,NA\n2024-01-02,2,3,y,NA\n2024-01-03,oops,4,z,NA\n";
        let o = TextOptions {
            all_columns: true,
            nulls: vec!["NA".into()],
            ..TextOptions::default()
        };
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let s = TextSource::new(reader, "t.csv", None, &o).unwrap();
        // "a" holds "oops" in the first chunk: excluded with the text columns and the empty one.
        let kept: Vec<_> = s
            .column_refs()
            .iter()
            .map(|c| c.name.clone().unwrap())
            .collect();
        assert_eq!(kept, ["b"]);
        let excluded: Vec<_> = s
            .excluded()
            .iter()
            .map(|(c, why)| (c.name.clone().unwrap(), why.clone()))
            .collect();
        assert_eq!(excluded.len(), 4, "{excluded:?}");
        assert!(excluded[3].1.contains("no numbers"), "{excluded:?}");

        // Chosen explicitly, the bad field stops the read at its line and column...
        let o = TextOptions {
            columns: vec![Column::Name("b".into()), Column::Name("a".into())],
            nulls: vec!["NA".into()],
            ..TextOptions::default()
        };
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let mut s = TextSource::new(reader, "t.csv", None, &o).unwrap();
        use crate::source::ColumnsSource;
        let e = loop {
            match s.next_columns() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(e) => break e,
            }
        };
        let m = e.to_string();
        assert!(
            m.contains("line 4") && m.contains("\"a\"") && m.contains("oops"),
            "{m}"
        );
        // ...or, skipping, is counted for its column only.
        let o = TextOptions {
            skip_invalid: true,
            ..o
        };
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let mut s = TextSource::new(reader, "t.csv", None, &o).unwrap();
        while s.next_columns().unwrap().is_some() {}
        assert_eq!(ColumnsSource::skipped(&s), [0, 1]);
        assert_eq!(ColumnsSource::nulls(&s), [1, 0]);
        // A source of several columns is not one stream.
        let mut buf = Vec::new();
        assert!(s.next_batch_f64(&mut buf, 10).is_err());
    }
}
