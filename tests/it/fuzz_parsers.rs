//! Property tests standing in for `cargo fuzz` (which needs a nightly toolchain this project's
//! machines do not have): the `.npy` header parser and the text parser get arbitrary and mutated
//! input and must return a value or an error, never panic; valid input must round-trip.

use std::io::Read;

use microbatch::source::{
    BatchSource, Column, Delimiter, Format, InputOptions, TextOptions, TextSource, npy, open_reader,
};
use proptest::prelude::*;

fn drain(s: &mut dyn BatchSource) -> microbatch::Result<Vec<f64>> {
    let mut buf = Vec::new();
    let mut all = Vec::new();
    while s.next_batch_f64(&mut buf, 7)? > 0 {
        all.extend_from_slice(&buf);
    }
    Ok(all)
}

fn descr() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "<f4", ">f4", "<f8", ">f8", "|i1", "<i2", ">i4", "<i8", "|u1", ">u2", "<u4", ">u8",
    ])
}

proptest! {
    // 512 cases per property on every test run; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Any bytes at all: an error or a header, never a panic.
    #[test]
    fn npy_header_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = npy::read_header(&mut &bytes[..]);
        let mut with_magic = npy::MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = npy::read_header(&mut &with_magic[..]);
    }

    /// A valid header with bytes flipped, inserted or cut, then the whole file streamed: errors
    /// are fine, panics are not, and a header that parses never points past the input.
    #[test]
    fn mutated_npy_files(
        d in descr(),
        fortran in any::<bool>(),
        shape in prop::collection::vec(0u64..6, 0..4),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = npy::write_header(d, fortran, &shape);
        bytes.extend_from_slice(&tail);
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len().max(1));
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ => bytes.truncate(i),
            }
        }
        if let Ok(h) = npy::read_header(&mut &bytes[..]) {
            prop_assert!(h.data_offset <= bytes.len() as u64);
        }
        let options = InputOptions { format: Some(Format::Npy), ..InputOptions::default() };
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(bytes));
        if let Ok(mut s) = open_reader(reader, "<fuzz>", &options) {
            let _ = drain(s.as_mut());
        }
    }

    /// What our writer writes, our reader reads back exactly.
    #[test]
    fn npy_header_round_trip(
        d in descr(),
        fortran in any::<bool>(),
        shape in prop::collection::vec(0u64..100_000, 0..6),
    ) {
        let bytes = npy::write_header(d, fortran, &shape);
        prop_assert_eq!(bytes.len() % 64, 0);
        let h = npy::read_header(&mut &bytes[..]).unwrap();
        prop_assert_eq!(h.shape, shape);
        prop_assert_eq!(h.fortran_order, fortran);
        prop_assert_eq!((h.dtype, h.endian), npy::parse_descr(d).unwrap());
        prop_assert_eq!(h.data_offset, bytes.len() as u64);
    }

    /// Arbitrary text under arbitrary options: values or an error, never a panic.
    #[test]
    fn text_of_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        header in prop::option::of(any::<bool>()),
        nulls in prop::collection::vec("[A-Za-z]{0,3}", 0..3),
        column in 0usize..4,
        delimiter in prop::option::of(prop::sample::select(vec![b',', b'\t', b';', b' '])),
        skip_invalid in any::<bool>(),
        several in 0usize..4,
    ) {
        let options = TextOptions {
            column: Column::Index(column),
            // Several columns (one pass) or every numeric one: the multi-column parser.
            columns: if several == 1 { vec![Column::Index(column), Column::Index((column + 1) % 4)] } else { vec![] },
            all_columns: several == 2,
            // Grouped by another column, with a small limit on keys.
            group_by: (several == 3).then(|| Column::Index((column + 2) % 4)),
            max_groups: 5,
            header,
            nulls,
            delimiter: delimiter.map(|d| if d == b' ' { Delimiter::Whitespace } else { Delimiter::Byte(d) }),
            skip_invalid,
        };
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(bytes));
        if let Ok(mut s) = TextSource::new(reader, "<fuzz>", None, &options) {
            if several == 0 {
                let _ = drain(&mut s);
            } else {
                use microbatch::source::ColumnsSource;
                let n = s.column_refs().len();
                while let Ok(Some(pieces)) = s.next_columns() {
                    if several == 3 {
                        // Grouped: every piece is a known (group, column) series.
                        let series = s.columns().len();
                        prop_assert!(series <= 5 * n);
                        continue;
                    }
                    prop_assert_eq!(pieces.len(), n);
                    prop_assert!(pieces.iter().enumerate().all(|(i, (tag, _))| *tag == i));
                }
            }
        }
    }

    /// A generated table's column comes back bit for bit (f64 written in its shortest
    /// round-trip form: text is parsed to f64, correctly rounded), whatever the delimiter and
    /// whether it is detected or given.
    #[test]
    fn text_column_round_trip(
        rows in prop::collection::vec((any::<f64>(), any::<f64>(), any::<f64>()), 1..60),
        delim in prop::sample::select(vec![b',', b'\t', b';', b'|', b' ']),
        detect in any::<bool>(),
        column in 0usize..3,
    ) {
        let finite = |x: f64| if x.is_finite() { x } else { 1.5 };
        let sep = if delim == b' ' { "   ".to_string() } else { (delim as char).to_string() };
        let mut text = format!("a{sep}b{sep}c\n");
        let mut want = Vec::new();
        for (a, b, c) in &rows {
            let r = [finite(*a), finite(*b), finite(*c)];
            text.push_str(&format!("{}{sep}{}{sep}{}\n", r[0], r[1], r[2]));
            want.push(r[column]);
        }
        // `detect`: leave the delimiter and the header to the defaults (a comma; a header
        // because "a", "b", "c" are not numbers).
        let delimiter = if detect && delim == b',' {
            None
        } else if delim == b' ' {
            Some(Delimiter::Whitespace)
        } else {
            Some(Delimiter::Byte(delim))
        };
        let header = if detect { None } else { Some(true) };
        let options = TextOptions { column: Column::Index(column), header, delimiter, ..TextOptions::default() };
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(text.into_bytes()));
        let mut s = TextSource::new(reader, "<gen>", None, &options).unwrap();
        let got = drain(&mut s).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(g.to_bits(), w.to_bits());
        }
    }
}
