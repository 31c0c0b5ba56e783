//! Element types a binary input may hold, and their conversion to f32.

use std::fmt;
use std::str::FromStr;

/// Decodes every element of `$bytes` (of type `$dtype`, in `$endian` order) into `$out`, each
/// converted by `$conv` with the value bound to `$v` (the conversion is written once and expanded
/// for every element type).
macro_rules! decode_as {
    ($dtype:expr, $endian:expr, $bytes:expr, $out:expr, |$v:ident| $conv:expr) => {{
        let (bytes, out): (&[u8], &mut [_]) = ($bytes, $out);
        assert_eq!(bytes.len(), out.len() * $dtype.size());
        match $dtype {
            Dtype::F32 => decode_as!(@each f32, $endian, bytes, out, |$v| $conv),
            Dtype::F64 => decode_as!(@each f64, $endian, bytes, out, |$v| $conv),
            Dtype::I8 => decode_as!(@each i8, $endian, bytes, out, |$v| $conv),
            Dtype::I16 => decode_as!(@each i16, $endian, bytes, out, |$v| $conv),
            Dtype::I32 => decode_as!(@each i32, $endian, bytes, out, |$v| $conv),
            Dtype::I64 => decode_as!(@each i64, $endian, bytes, out, |$v| $conv),
            Dtype::U8 => decode_as!(@each u8, $endian, bytes, out, |$v| $conv),
            Dtype::U16 => decode_as!(@each u16, $endian, bytes, out, |$v| $conv),
            Dtype::U32 => decode_as!(@each u32, $endian, bytes, out, |$v| $conv),
            Dtype::U64 => decode_as!(@each u64, $endian, bytes, out, |$v| $conv),
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    let a: [u8; 2] = c.try_into().expect("chunks_exact gives whole elements");
                    let $v = f16_to_f32(match $endian {
                        Endian::Little => u16::from_le_bytes(a),
                        Endian::Big => u16::from_be_bytes(a),
                    });
                    *o = $conv;
                }
            }
            Dtype::Bool => {
                for (o, &b) in out.iter_mut().zip(bytes) {
                    // numpy writes 0 and 1; any other byte is true, as numpy reads it.
                    let $v = u8::from(b != 0);
                    *o = $conv;
                }
            }
        }
    }};
    (@each $t:ty, $endian:expr, $bytes:expr, $out:expr, |$v:ident| $conv:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        for (o, c) in $out.iter_mut().zip($bytes.chunks_exact(N)) {
            let a: [u8; N] = c.try_into().expect("chunks_exact gives whole elements");
            let $v = match $endian {
                Endian::Little => <$t>::from_le_bytes(a),
                Endian::Big => <$t>::from_be_bytes(a),
            };
            *o = $conv;
        }
    }};
}

/// An IEEE half-precision value's bits as the f32 of the same value (exact: every f16 is an
/// f32; subnormals become normal f32s, infinities and NaN stay so).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match (exp, mant) {
        (0, 0) => f32::from_bits(sign),
        (0, m) => {
            // m · 2^-24, exact in f32.
            let v = m as f32 * (1.0 / 16_777_216.0);
            if sign != 0 { -v } else { v }
        }
        (31, m) => f32::from_bits(sign | 0x7f80_0000 | (m << 13)),
        (e, m) => f32::from_bits(sign | ((e + 112) << 23) | (m << 13)),
    }
}

/// Byte order of a binary input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endian {
    /// Least significant byte first (x86, ARM, numpy's `<`).
    #[default]
    Little,
    /// Most significant byte first (numpy's `>`).
    Big,
}

impl Endian {
    /// `little` or `big`.
    pub fn name(self) -> &'static str {
        match self {
            Endian::Little => "little",
            Endian::Big => "big",
        }
    }
}

impl FromStr for Endian {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "little" | "le" => Ok(Endian::Little),
            "big" | "be" => Ok(Endian::Big),
            _ => Err(format!("unknown byte order {s:?}: expected little or big")),
        }
    }
}

/// An element type. Values are reduced at their own precision ([`Dtype::element`]): f32 in f32,
/// f64 in f64, and integers exactly (count, sum, min and max exact; mean and variance from exact
/// integer differences in f64). Nothing is converted to a narrower type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit IEEE float (reduced as is).
    F32,
    /// 64-bit IEEE float.
    F64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// 16-bit IEEE float (numpy's float16): every value is an f32, reduced as one.
    F16,
    /// numpy's bool (one byte): reduced as the integers 0 and 1, exactly (the sum counts the
    /// true values, the mean is their fraction).
    Bool,
}

impl Dtype {
    /// Every type, for help texts and tests.
    pub const ALL: [Dtype; 12] = [
        Dtype::F32,
        Dtype::F64,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::F16,
        Dtype::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// The short name (`f32`, `i64`, …).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::I8 => "i8",
            Dtype::I16 => "i16",
            Dtype::I32 => "i32",
            Dtype::I64 => "i64",
            Dtype::U8 => "u8",
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
            Dtype::U64 => "u64",
            Dtype::F16 => "f16",
            Dtype::Bool => "bool",
        }
    }

    /// The precision values of this type are reduced in: their own.
    pub fn element(self) -> super::Element {
        match self {
            Dtype::F32 | Dtype::F16 => super::Element::F32,
            Dtype::F64 => super::Element::F64,
            _ => super::Element::Int,
        }
    }

    /// What [`Dtype::decode_int`]'s values are offset by: 2^63 for u64 (stored shifted into
    /// i64's range), else 0.
    pub fn int_offset(self) -> i128 {
        if self == Dtype::U64 { 1 << 63 } else { 0 }
    }

    /// Decodes integer `bytes` into `out` as i64, minus [`Dtype::int_offset`] (exact).
    pub fn decode_int(self, endian: Endian, bytes: &[u8], out: &mut [i64]) {
        assert_eq!(
            self.element(),
            super::Element::Int,
            "decode_int is for integer types"
        );
        decode_as!(self, endian, bytes, out, |v| v as i64);
        if self == Dtype::U64 {
            // `as` kept the bits: flipping the top one is subtracting 2^63.
            for o in out.iter_mut() {
                *o ^= i64::MIN;
            }
        }
    }

    /// Decodes `bytes` into `out`, one f64 per element (exact except for 64-bit integers beyond
    /// 2^53, rounded to the nearest f64).
    pub fn decode_f64(self, endian: Endian, bytes: &[u8], out: &mut [f64]) {
        decode_as!(self, endian, bytes, out, |v| v as f64);
    }

    /// Decodes `bytes` (whole elements in `endian` order) into `out`, one f32 per element
    /// (rounded to the nearest f32 for the wider types).
    pub fn decode(self, endian: Endian, bytes: &[u8], out: &mut [f32]) {
        decode_as!(self, endian, bytes, out, |v| v as f32);
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;
    /// Accepts the short names (`f32`, `u16`) and numpy's (`float32`, `int64`, `uint8`).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Dtype::F32,
            "f64" | "float64" => Dtype::F64,
            "i8" | "int8" => Dtype::I8,
            "i16" | "int16" => Dtype::I16,
            "i32" | "int32" => Dtype::I32,
            "i64" | "int64" => Dtype::I64,
            "u8" | "uint8" => Dtype::U8,
            "u16" | "uint16" => Dtype::U16,
            "u32" | "uint32" => Dtype::U32,
            "u64" | "uint64" => Dtype::U64,
            "f16" | "float16" | "half" => Dtype::F16,
            "bool" | "b1" => Dtype::Bool,
            _ => {
                return Err(format!(
                    "unknown dtype {s:?}: expected one of {}",
                    Dtype::ALL.map(Dtype::name).join(", ")
                ));
            }
        };
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_every_type_in_both_byte_orders() {
        let cases: [(Dtype, Vec<u8>, f32); 10] = [
            (Dtype::F32, (-1.5f32).to_le_bytes().to_vec(), -1.5),
            (Dtype::F64, 0.1f64.to_le_bytes().to_vec(), 0.1f64 as f32),
            (Dtype::I8, (-7i8).to_le_bytes().to_vec(), -7.0),
            (Dtype::I16, (-300i16).to_le_bytes().to_vec(), -300.0),
            (
                Dtype::I32,
                16_777_217i32.to_le_bytes().to_vec(),
                16_777_216.0,
            ),
            (
                Dtype::I64,
                (-(1i64 << 40)).to_le_bytes().to_vec(),
                -(2f32.powi(40)),
            ),
            (Dtype::U8, 255u8.to_le_bytes().to_vec(), 255.0),
            (Dtype::U16, 65_535u16.to_le_bytes().to_vec(), 65_535.0),
            (Dtype::U32, u32::MAX.to_le_bytes().to_vec(), 4_294_967_296.0),
            (Dtype::U64, u64::MAX.to_le_bytes().to_vec(), 1.8446744e19),
        ];
        for (t, le, want) in cases {
            let mut out = [0.0f32];
            t.decode(Endian::Little, &le, &mut out);
            assert_eq!(out[0], want, "{t} little");
            let be: Vec<u8> = le.iter().rev().copied().collect();
            t.decode(Endian::Big, &be, &mut out);
            assert_eq!(out[0], want, "{t} big");
            assert_eq!(t.name().parse::<Dtype>(), Ok(t));
        }
        assert!("float8".parse::<Dtype>().is_err());
        // Half precision: normal, subnormal (the smallest), the largest, ±0, ±inf, NaN, both
        // byte orders, against the values numpy gives.
        let halves: [(u16, f32); 9] = [
            (0x3e00, 1.5),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x83ff, -6.097_555e-5),
            (0x0000, 0.0),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
            (0x3555, 0.333_251_95),
        ];
        for (bits, want) in halves {
            for (endian, bytes) in [
                (Endian::Little, bits.to_le_bytes()),
                (Endian::Big, bits.to_be_bytes()),
            ] {
                let mut out = [0.0f32];
                Dtype::F16.decode(endian, &bytes, &mut out);
                assert_eq!(out[0].to_bits(), want.to_bits(), "{bits:#06x} {endian:?}");
            }
        }
        assert!(f16_to_f32(0x7e00).is_nan() && f16_to_f32(0x8000).is_sign_negative());
        let mut ints = [0i64; 4];
        Dtype::Bool.decode_int(Endian::Little, &[0, 1, 2, 255], &mut ints);
        assert_eq!(ints, [0, 1, 1, 1]);
        // Integers exactly, u64 shifted by 2^63 into i64's range.
        let mut out = [0i64; 2];
        let bytes: Vec<u8> = [u64::MAX, 0].iter().flat_map(|v| v.to_be_bytes()).collect();
        Dtype::U64.decode_int(Endian::Big, &bytes, &mut out);
        assert_eq!(out, [i64::MAX, i64::MIN]);
        assert_eq!(Dtype::U64.int_offset() + i128::from(out[1]), 0);
        let bytes: Vec<u8> = [i64::MIN, -3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Dtype::I64.decode_int(Endian::Little, &bytes, &mut out);
        assert_eq!(out, [i64::MIN, -3]);
    }
}
