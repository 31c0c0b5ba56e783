//! NumPy `.npy` files, format versions 1.0, 2.0 and 3.0: the header is parsed here (a small
//! parser for the Python dict literal numpy writes), the data is streamed by
//! [`BinarySource`](super::BinarySource).
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the header's length (u16
//! little-endian in version 1, u32 in versions 2 and 3), then the header itself, e.g.
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces and a newline
//! (ASCII in versions 1 and 2, UTF-8 in 3), then the elements.

use std::io::Read;

use super::dtype::{Dtype, Endian};

/// The magic string every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest header accepted, in bytes. numpy writes a few hundred; a length field claiming more
/// is a corrupt file, and is refused before any allocation.
pub const MAX_HEADER_LEN: u64 = 1 << 20;

/// What a `.npy` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version (major, minor).
    pub version: (u8, u8),
    /// Element type.
    pub dtype: Dtype,
    /// Byte order of the elements.
    pub endian: Endian,
    /// Whether the array is stored column-major. The statistics do not depend on it.
    pub fortran_order: bool,
    /// The array's shape (empty for a 0-d array, which holds one element).
    pub shape: Vec<u64>,
    /// Byte offset of the first element.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Elements in the array (the product of the shape), if it fits in a u64.
    pub fn elements(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// `float64 little-endian, shape 3×4, C order` — for reports.
    pub fn describe(&self) -> String {
        let shape = if self.shape.is_empty() {
            "()".to_string()
        } else {
            self.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×")
        };
        format!(
            ".npy v{}.{}, {} {}-endian, shape {shape}, {} order",
            self.version.0,
            self.version.1,
            self.dtype,
            self.endian.name(),
            if self.fortran_order { "Fortran" } else { "C" }
        )
    }
}

/// A header problem: the byte offset it is at, and what is wrong.
pub type HeaderError = (u64, String);

/// Reads and parses a `.npy` header from the start of `r`, leaving `r` at the first element.
/// Errors name the byte offset where the header goes wrong.
pub fn read_header(r: &mut impl Read) -> Result<NpyHeader, HeaderError> {
    let mut fixed = [0u8; 8];
    let got = read_up_to(r, &mut fixed).map_err(|e| (0, e))?;
    if got < 6 || &fixed[..6] != MAGIC {
        return Err((
            0,
            "not a .npy file: it does not start with the magic \\x93NUMPY".to_string(),
        ));
    }
    if got < 8 {
        return Err((got as u64, "the file ends inside the header".to_string()));
    }
    let version = (fixed[6], fixed[7]);
    let len_bytes = match version.0 {
        1 => 2,
        2 | 3 => 4,
        v => {
            return Err((
                6,
                format!(
                    "unsupported .npy format version {v}.{} (1, 2 and 3 are)",
                    version.1
                ),
            ));
        }
    };
    let mut len_field = [0u8; 4];
    if read_up_to(r, &mut len_field[..len_bytes]).map_err(|e| (8, e))? < len_bytes {
        return Err((8, "the file ends inside the header".to_string()));
    }
    let header_len = u64::from(u32::from_le_bytes(len_field));
    if header_len > MAX_HEADER_LEN {
        return Err((
            8,
            format!("header length {header_len} bytes is implausible (over {MAX_HEADER_LEN})"),
        ));
    }
    let start = 8 + len_bytes as u64;
    let mut text = vec![0u8; header_len as usize];
    let got = read_up_to(r, &mut text).map_err(|e| (start, e))?;
    if got < text.len() {
        return Err((
            start + got as u64,
            format!("the file ends inside the header ({got} of {header_len} bytes)"),
        ));
    }
    let text = if version.0 >= 3 {
        String::from_utf8(text).map_err(|e| {
            (
                start + e.utf8_error().valid_up_to() as u64,
                "the header is not valid UTF-8".to_string(),
            )
        })?
    } else {
        if let Some(i) = text.iter().position(|b| !b.is_ascii()) {
            return Err((start + i as u64, "the header is not ASCII".to_string()));
        }
        String::from_utf8(text).expect("ASCII is UTF-8")
    };
    let (descr, fortran_order, shape) =
        parse_dict(&text).map_err(|(at, m)| (start + at as u64, m))?;
    let (dtype, endian) = parse_descr(&descr).map_err(|m| (start, m))?;
    Ok(NpyHeader {
        version,
        dtype,
        endian,
        fortran_order,
        shape,
        data_offset: start + header_len,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(filled)
}

/// A numpy type string (`<f4`, `>i8`, `|u1`, `=f8`) → element type and byte order.
pub fn parse_descr(descr: &str) -> Result<(Dtype, Endian), String> {
    let bytes = descr.as_bytes();
    let (order, rest) = match bytes.first() {
        Some(b'<') => (Some(Endian::Little), &descr[1..]),
        Some(b'>') => (Some(Endian::Big), &descr[1..]),
        Some(b'|') => (None, &descr[1..]),
        Some(b'=') => (
            Some(if cfg!(target_endian = "little") {
                Endian::Little
            } else {
                Endian::Big
            }),
            &descr[1..],
        ),
        _ => (None, descr),
    };
    let dtype = match rest {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "i1" => Dtype::I8,
        "i2" => Dtype::I16,
        "i4" => Dtype::I32,
        "i8" => Dtype::I64,
        "u1" => Dtype::U8,
        "u2" => Dtype::U16,
        "u4" => Dtype::U32,
        "u8" => Dtype::U64,
        "f2" => Dtype::F16,
        "b1" => Dtype::Bool,
        _ => {
            return Err(format!(
                "unsupported dtype {descr:?} (float16/32/64, bool and 8–64-bit integers are supported)"
            ));
        }
    };
    let endian = match order {
        Some(e) => e,
        None if dtype.size() == 1 => Endian::Little,
        None => return Err(format!("dtype {descr:?} has no byte order")),
    };
    Ok((dtype, endian))
}

/// Parses numpy's header dict; returns (descr, fortran_order, shape). Errors carry the byte
/// offset within `text`.
pub(crate) fn parse_dict(text: &str) -> Result<(String, bool, Vec<u64>), (usize, String)> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err((p.i, "unexpected text after the header dict".to_string()));
    }
    let Value::Dict(entries) = value else {
        return Err((0, "the header is not a dict".to_string()));
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, v) in entries {
        match (key.as_str(), v) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", _) => {
                return Err((
                    0,
                    "'descr' is not a simple type string (structured dtypes are not supported)"
                        .to_string(),
                ));
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(items)) => {
                let dims = items
                    .into_iter()
                    .map(|d| match d {
                        Value::Int(n) => Ok(n),
                        _ => Err((0, "'shape' holds something other than integers".to_string())),
                    })
                    .collect::<Result<Vec<u64>, _>>()?;
                shape = Some(dims);
            }
            ("fortran_order" | "shape", _) => {
                return Err((0, format!("'{key}' has the wrong type")));
            }
            _ => {} // numpy ignores unknown keys too
        }
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err((
            0,
            "the header lacks one of 'descr', 'fortran_order', 'shape'".to_string(),
        )),
    }
}

#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<Value>),
    Dict(Vec<(String, Value)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, (usize, String)> {
        Err((self.i, what.to_string()))
    }

    fn value(&mut self, depth: usize) -> Result<Value, (usize, String)> {
        if depth > 8 {
            return self.err("the header nests too deeply");
        }
        self.skip_ws();
        match self.s.get(self.i) {
            None => self.err("the header ends too early"),
            Some(b'{') => self.seq(b'}', depth, true),
            Some(b'(') | Some(b'[') => {
                let close = if self.s[self.i] == b'(' { b')' } else { b']' };
                self.seq(close, depth, false)
            }
            Some(b'\'') | Some(b'"') => self.string().map(Value::Str),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(_) => {
                for (word, v) in [("True", true), ("False", false)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(Value::Bool(v));
                    }
                }
                self.err("unexpected character in the header")
            }
        }
    }

    fn seq(&mut self, close: u8, depth: usize, dict: bool) -> Result<Value, (usize, String)> {
        self.i += 1; // the opening bracket
        let mut items = Vec::new();
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            match self.s.get(self.i) {
                None => return self.err("the header ends inside a bracket"),
                Some(&c) if c == close => {
                    self.i += 1;
                    break;
                }
                _ => {}
            }
            if dict {
                let key = match self.value(depth + 1)? {
                    Value::Str(k) => k,
                    _ => return self.err("a header dict key is not a string"),
                };
                self.skip_ws();
                if self.s.get(self.i) != Some(&b':') {
                    return self.err("expected ':' after a header dict key");
                }
                self.i += 1;
                entries.push((key, self.value(depth + 1)?));
            } else {
                items.push(self.value(depth + 1)?);
            }
            self.skip_ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&c) if c == close => {}
                _ => return self.err("expected ',' or a closing bracket"),
            }
        }
        Ok(if dict {
            Value::Dict(entries)
        } else {
            Value::Tuple(items)
        })
    }

    fn string(&mut self) -> Result<String, (usize, String)> {
        let quote = self.s[self.i];
        let start = self.i + 1;
        let Some(len) = self.s[start..].iter().position(|&c| c == quote) else {
            return self.err("unterminated string in the header");
        };
        let text = &self.s[start..start + len];
        if text.contains(&b'\\') {
            return self.err("escapes in header strings are not supported");
        }
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    fn int(&mut self) -> Result<Value, (usize, String)> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        // numpy 1.x on some platforms wrote `3L`.
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i])
            .expect("ASCII digits")
            .trim_end_matches('L');
        digits
            .parse::<u64>()
            .map(Value::Int)
            .map_err(|_| (start, format!("dimension {digits} does not fit in 64 bits")))
    }
}

/// Writes a `.npy` header (version 1.0 when it fits, else 2.0) for `shape` and a type string such
/// as `<f4`: what numpy writes, for tests and tools. The header is padded to a multiple of 64
/// bytes.
pub fn write_header(descr: &str, fortran_order: bool, shape: &[u64]) -> Vec<u8> {
    let dims = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let fortran = if fortran_order { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {dims}, }}");
    let mut out = MAGIC.to_vec();
    let v1_total = 10 + dict.len() + 1;
    let (major, len_bytes) = if v1_total.next_multiple_of(64) - 10 <= u16::MAX as usize {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let total = (8 + len_bytes + dict.len() + 1).next_multiple_of(64);
    let header_len = total - 8 - len_bytes;
    out.extend_from_slice(&[major, 0]);
    if len_bytes == 2 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_numpy_writes() {
        let h = write_header("<f8", false, &[3, 4]);
        assert_eq!(h.len() % 64, 0);
        let got = read_header(&mut &h[..]).unwrap();
        assert_eq!(got.dtype, Dtype::F64);
        assert_eq!(got.endian, Endian::Little);
        assert_eq!(got.shape, [3, 4]);
        assert!(!got.fortran_order);
        assert_eq!(got.data_offset, h.len() as u64);
        assert_eq!(got.elements(), Some(12));

        // numpy's own spelling, version 3 with UTF-8, a Python-2 long, a 0-d array.
        let text = "{'descr': '>i2', 'fortran_order': True, 'shape': (2L, 5), }";
        assert_eq!(
            parse_dict(text).unwrap(),
            (">i2".to_string(), true, vec![2, 5])
        );
        assert_eq!(
            parse_dict("{'shape': (), 'descr': '|u1', 'fortran_order': False}")
                .unwrap()
                .2,
            Vec::<u64>::new()
        );
    }

    #[test]
    fn bad_headers_name_the_offset() {
        let cases: [(&[u8], &str); 5] = [
            (b"NUMPY\x01\x00", "magic"),
            (b"\x93NUMPY\x09\x00\x10\x00", "version 9"),
            (
                b"\x93NUMPY\x01\x00\x40\x00{'descr': '<f4'",
                "ends inside the header",
            ),
            (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f", "implausible"),
            (b"\x93NUMPY\x01\x00\x0a\x00{'descr':}", "unexpected"),
        ];
        for (bytes, want) in cases {
            let (_, msg) = read_header(&mut &bytes[..]).unwrap_err();
            assert!(msg.contains(want), "{want}: {msg}");
        }
        assert!(parse_descr("<c16").unwrap_err().contains("unsupported"));
        assert!(parse_descr("f4").unwrap_err().contains("byte order"));
        assert!(parse_dict("{'descr': '<f4', 'fortran_order': False}").is_err());
    }
}
