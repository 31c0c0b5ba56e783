//! An N-d array reduced along one axis, like numpy's `a.mean(axis=k)`: one series per position
//! of the other axes, each reduced to its own statistics in one pass over the input.
//!
//! The input streams in storage order (C, or Fortran: a Fortran array is the C array of the
//! reversed shape). Seen in C order, element `g` of an array reduced along axis `k` lies in
//! block `o = g / (n·m)`, step `j = (g / m) % n` along the axis and lane `i = g % m`, where
//! `n` is the axis' length and `m` the product of the axes after it: series `(o, i)` gathers
//! the `n` values at stride `m`. Each batch is gathered per series in one pass (a transpose of
//! the batch alone, never of the input): where `m = 1` the series are the batch's own
//! contiguous runs.

use super::{BatchBuf, BatchSource, ColumnsSource, Element, read_batch};
use crate::backend::BatchRef;
use crate::{ColumnRef, Error, Result};

/// The most series an axis reduction may give: each holds its partial, statistics and name
/// until the end (about 2 KB each with the report printed: 2.0 GB of memory for a million,
/// measured), so more is refused rather than left to exhaust memory.
pub const MAX_AXIS_RESULTS: u64 = 1_000_000;

/// An array input reduced along one axis ([`AxisSource::new`]); read with
/// [`crate::Engine::run_columns`].
pub struct AxisSource<'a> {
    source: Box<dyn BatchSource + Send + 'a>,
    /// Seen in C order: blocks, the axis' length, lanes per step.
    outer: u64,
    n: u64,
    lanes: u64,
    /// numpy's result shape (the input's shape without the axis), and for a Fortran array the
    /// strides that renumber its lanes in numpy's C order ([`c_index`]).
    result_shape: Vec<u64>,
    fortran: Option<Vec<(u64, u64, u64)>>,
    /// Elements read so far.
    pos: u64,
    batch: usize,
    buf: BatchBuf,
    /// Gathered values of the current batch (one of them, by element type).
    gathered32: Vec<f32>,
    gathered64: Vec<f64>,
    gathered_int: Vec<i64>,
    /// (series, start, len) in the gathered buffer.
    spans: Vec<(usize, usize, usize)>,
    /// Per lane: values in this batch, then the next free slot (reset after each block).
    counts: Vec<u32>,
    touched: Vec<u32>,
    label: String,
    axis: usize,
}

impl std::fmt::Debug for AxisSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AxisSource")
            .field("source", &self.label)
            .field("axis", &self.axis)
            .finish_non_exhaustive()
    }
}

fn shape_text(shape: &[u64]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl<'a> AxisSource<'a> {
    /// `source` (an array with a shape: `.npy`) reduced along `axis` (negative counts from the
    /// last, as in numpy), read in batches of up to `batch` elements.
    pub fn new(source: Box<dyn BatchSource + Send + 'a>, axis: i64, batch: usize) -> Result<Self> {
        let describe = source.describe();
        let Some(shape) = source.shape().map(<[u64]>::to_vec) else {
            return Err(Error::InvalidConfig(format!(
                "{describe} has no shape: an axis is for arrays (.npy)"
            )));
        };
        let ndim = shape.len() as i64;
        let k = if axis < 0 { axis + ndim } else { axis };
        if !(0..ndim).contains(&k) {
            return Err(Error::InvalidConfig(format!(
                "axis {axis} is out of range for {describe}: its shape {} has {ndim} dimension(s)",
                shape_text(&shape)
            )));
        }
        let k = k as usize;
        let fortran = source.fortran_order();
        // The C-order view: a Fortran array is the C array of the reversed shape.
        let (view, kv) = if fortran {
            (
                shape.iter().rev().copied().collect::<Vec<_>>(),
                shape.len() - 1 - k,
            )
        } else {
            (shape.clone(), k)
        };
        let outer: u64 = view[..kv].iter().product();
        let lanes: u64 = view[kv + 1..].iter().product();
        let n = view[kv];
        let mut result_shape = shape.clone();
        result_shape.remove(k);
        let results = outer.saturating_mul(lanes);
        if results > MAX_AXIS_RESULTS {
            return Err(Error::InvalidConfig(format!(
                "reducing {describe} along axis {axis} gives {results} results (shape {}), more than {MAX_AXIS_RESULTS}",
                shape_text(&result_shape)
            )));
        }
        let label = format!("{describe}, along axis {k}");
        let fortran = fortran.then(|| {
            let dims = result_shape.len();
            (0..dims)
                .map(|d| {
                    let f: u64 = result_shape[..d].iter().product();
                    let c: u64 = result_shape[d + 1..].iter().product();
                    (f.max(1), c, result_shape[d])
                })
                .collect()
        });
        Ok(Self {
            source,
            outer,
            n,
            lanes,
            result_shape,
            fortran,
            pos: 0,
            batch: batch.max(1),
            buf: BatchBuf::default(),
            gathered32: Vec::new(),
            gathered64: Vec::new(),
            gathered_int: Vec::new(),
            spans: Vec::new(),
            counts: Vec::new(),
            touched: Vec::new(),
            label,
            axis: k,
        })
    }

    /// The axis reduced, counted from 0 (a negative one asked for resolved).
    pub fn axis(&self) -> usize {
        self.axis
    }

    /// numpy's shape of the result (the input's without the axis).
    pub fn result_shape(&self) -> &[u64] {
        &self.result_shape
    }
}

/// Series `q` of the C-order view (block · lanes + lane) as its index in numpy's C-order
/// result: the same for a C array; for a Fortran array, `q` is the result's Fortran-order index
/// (first axis fastest): each axis' position taken from it by the Fortran strides and placed
/// by the C strides (`strides`: per axis, (Fortran stride, C stride, length)).
fn c_index(q: u64, strides: Option<&[(u64, u64, u64)]>) -> usize {
    let Some(strides) = strides else {
        return q as usize;
    };
    strides
        .iter()
        .map(|&(f, c, len)| (q / f) % len.max(1) * c)
        .sum::<u64>() as usize
}

/// Gathers `src` (elements `g0..` of the C-order view) per series into `out`, recording each
/// series' run as (series, start, len) in `spans`. `counts` has a slot per lane.
#[allow(clippy::too_many_arguments)]
fn gather<T: Copy + Default>(
    src: &[T],
    g0: u64,
    n: u64,
    lanes: u64,
    series: &dyn Fn(u64, u64) -> usize,
    out: &mut Vec<T>,
    spans: &mut Vec<(usize, usize, usize)>,
    counts: &mut [u32],
    touched: &mut Vec<u32>,
) {
    out.clear();
    out.resize(src.len(), T::default());
    spans.clear();
    let block = n * lanes;
    let end = g0 + src.len() as u64;
    let mut g = g0;
    let mut base = 0usize;
    while g < end {
        let o = g / block;
        let block_end = ((o + 1) * block).min(end);
        let part = &src[(g - g0) as usize..(block_end - g0) as usize];
        let first_lane = (g - o * block) % lanes;
        // Count per lane, in the order lanes are first met.
        touched.clear();
        let mut lane = first_lane;
        for _ in 0..part.len() {
            if counts[lane as usize] == 0 {
                touched.push(lane as u32);
            }
            counts[lane as usize] += 1;
            lane += 1;
            if lane == lanes {
                lane = 0;
            }
        }
        // Each touched lane's run; counts become next-free slots.
        let mut start = base;
        for &l in touched.iter() {
            let c = counts[l as usize] as usize;
            spans.push((series(o, u64::from(l)), start, c));
            counts[l as usize] = start as u32;
            start += c;
        }
        let mut lane = first_lane;
        for &x in part {
            let slot = &mut counts[lane as usize];
            out[*slot as usize] = x;
            *slot += 1;
            lane += 1;
            if lane == lanes {
                lane = 0;
            }
        }
        for &l in touched.iter() {
            counts[l as usize] = 0;
        }
        base += part.len();
        g = block_end;
    }
}

impl ColumnsSource for AxisSource<'_> {
    fn columns(&self) -> Vec<ColumnRef> {
        let total = self.outer * self.lanes;
        let dims = &self.result_shape;
        (0..total as usize)
            .map(|c| {
                let name = (dims.len() > 1).then(|| {
                    let mut rest = c as u64;
                    let mut idx = vec![0u64; dims.len()];
                    for (d, &len) in dims.iter().enumerate().rev() {
                        idx[d] = rest % len.max(1);
                        rest /= len.max(1);
                    }
                    format!(
                        "({})",
                        idx.iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
                ColumnRef {
                    index: Some(c),
                    name,
                }
            })
            .collect()
    }

    fn next_columns(&mut self) -> Result<Option<Vec<(usize, BatchRef<'_>)>>> {
        // u32 slots: a batch never holds 2^32 elements.
        let max = self.batch.min(u32::MAX as usize);
        let g0 = self.pos;
        // Read into a buffer (not lent: the gather copies anyway, and a lent batch would keep
        // the source borrowed for the pieces' lifetime).
        let (_, element) = read_batch(&mut *self.source, &mut self.buf, max)?;
        let batch = match element {
            Element::F32 => BatchRef::F32(&self.buf.f32),
            Element::F64 => BatchRef::F64(&self.buf.f64),
            Element::Int => BatchRef::Int(&self.buf.int, self.source.int_offset()),
        };
        if batch.is_empty() {
            return Ok(None);
        }
        self.pos += batch.len() as u64;
        let (n, lanes) = (self.n, self.lanes);
        let strides = self.fortran.as_deref();
        let series = |o: u64, i: u64| c_index(o * lanes + i, strides);
        if lanes == 1 {
            // Each series is a contiguous run of n values: handed out as it lies in the batch.
            let mut out = Vec::new();
            let mut g = g0;
            let end = g0 + batch.len() as u64;
            while g < end {
                let o = g / n;
                let stop = ((o + 1) * n).min(end);
                let (a, b) = ((g - g0) as usize, (stop - g0) as usize);
                let piece = match batch {
                    BatchRef::F32(v) => BatchRef::F32(&v[a..b]),
                    BatchRef::F64(v) => BatchRef::F64(&v[a..b]),
                    BatchRef::Int(v, off) => BatchRef::Int(&v[a..b], off),
                };
                out.push((series(o, 0), piece));
                g = stop;
            }
            return Ok(Some(out));
        }
        if self.counts.len() != lanes as usize {
            self.counts = vec![0; lanes as usize];
        }
        let (spans, counts, touched) = (&mut self.spans, &mut self.counts, &mut self.touched);
        let pieces = match batch {
            BatchRef::F32(v) => {
                gather(
                    v,
                    g0,
                    n,
                    lanes,
                    &series,
                    &mut self.gathered32,
                    spans,
                    counts,
                    touched,
                );
                let buf = &self.gathered32;
                spans
                    .iter()
                    .map(|&(s, a, l)| (s, BatchRef::F32(&buf[a..a + l])))
                    .collect()
            }
            BatchRef::F64(v) => {
                gather(
                    v,
                    g0,
                    n,
                    lanes,
                    &series,
                    &mut self.gathered64,
                    spans,
                    counts,
                    touched,
                );
                let buf = &self.gathered64;
                spans
                    .iter()
                    .map(|&(s, a, l)| (s, BatchRef::F64(&buf[a..a + l])))
                    .collect()
            }
            BatchRef::Int(v, off) => {
                gather(
                    v,
                    g0,
                    n,
                    lanes,
                    &series,
                    &mut self.gathered_int,
                    spans,
                    counts,
                    touched,
                );
                let buf = &self.gathered_int;
                spans
                    .iter()
                    .map(|&(s, a, l)| (s, BatchRef::Int(&buf[a..a + l], off)))
                    .collect()
            }
        };
        Ok(Some(pieces))
    }

    fn bytes_read(&self) -> u64 {
        self.source.bytes_read()
    }

    fn len_bytes(&self) -> Option<u64> {
        self.source.len_bytes()
    }

    fn skipped(&self) -> Vec<u64> {
        Vec::new()
    }

    fn nulls(&self) -> Vec<u64> {
        Vec::new()
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{InputOptions, npy, open_reader};

    /// Every value of every series, gathered batch by batch, in order.
    fn series_of(src: &mut AxisSource<'_>) -> Vec<Vec<f64>> {
        let n = src.columns().len();
        let mut out = vec![Vec::new(); n];
        while let Some(pieces) = src.next_columns().unwrap() {
            for (s, piece) in pieces {
                match piece {
                    BatchRef::F32(v) => out[s].extend(v.iter().map(|&x| f64::from(x))),
                    BatchRef::F64(v) => out[s].extend_from_slice(v),
                    BatchRef::Int(v, off) => {
                        out[s].extend(v.iter().map(|&x| (i128::from(x) + off) as f64))
                    }
                }
            }
        }
        out
    }

    /// An f64 array of `shape` whose element at multi-index `idx` is a unique number, as `.npy`
    /// bytes in C or Fortran order.
    fn array(shape: &[u64], fortran: bool) -> (Vec<u8>, impl Fn(&[u64]) -> f64) {
        let value = |idx: &[u64]| idx.iter().fold(0.0, |acc, &i| acc * 100.0 + i as f64 + 1.0);
        let total: u64 = shape.iter().product();
        let mut bytes = npy::write_header("<f8", fortran, shape);
        for flat in 0..total {
            // Storage order: C (last axis fastest) or Fortran (first axis fastest).
            let mut idx = vec![0u64; shape.len()];
            let mut rest = flat;
            let dims: Vec<usize> = if fortran {
                (0..shape.len()).collect()
            } else {
                (0..shape.len()).rev().collect()
            };
            for d in dims {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            bytes.extend_from_slice(&value(&idx).to_le_bytes());
        }
        (bytes, value)
    }

    /// Each series holds exactly numpy's lane along the axis, in order, whatever the batch
    /// size (batches cut rows and blocks anywhere), the storage order and the axis (negative
    /// ones too); series are numbered in numpy's C order of the result and named by it.
    #[test]
    fn series_are_numpys_lanes_in_numpys_order() {
        for shape in [
            vec![7u64],
            vec![5, 3],
            vec![3, 1, 4],
            vec![2, 3, 4, 5],
            vec![4, 0, 2],
        ] {
            for fortran in [false, true] {
                let (bytes, value) = array(&shape, fortran);
                for axis in -(shape.len() as i64)..shape.len() as i64 {
                    for batch in [1usize, 3, 7, 64, 10_000] {
                        let reader: Box<dyn std::io::Read + Send> =
                            Box::new(std::io::Cursor::new(bytes.clone()));
                        let source =
                            open_reader(reader, "a.npy", &InputOptions::default()).unwrap();
                        let mut src = AxisSource::new(source, axis, batch).unwrap();
                        let k = axis.rem_euclid(shape.len() as i64) as usize;
                        let mut rshape = shape.clone();
                        rshape.remove(k);
                        assert_eq!(src.result_shape(), rshape);
                        let names = src.columns();
                        let got = series_of(&mut src);
                        let results: u64 = rshape.iter().product();
                        assert_eq!(got.len() as u64, results);
                        for (c, lane) in got.iter().enumerate() {
                            // C-order unravel of the result index, the axis inserted.
                            let mut ridx = vec![0u64; rshape.len()];
                            let mut rest = c as u64;
                            for d in (0..rshape.len()).rev() {
                                ridx[d] = rest % rshape[d];
                                rest /= rshape[d];
                            }
                            let want: Vec<f64> = (0..shape[k])
                                .map(|j| {
                                    let mut idx = ridx.clone();
                                    idx.insert(k, j);
                                    value(&idx)
                                })
                                .collect();
                            assert_eq!(
                                lane, &want,
                                "shape {shape:?} fortran {fortran} axis {axis} batch {batch} series {c}"
                            );
                            assert_eq!(names[c].index, Some(c));
                            if rshape.len() > 1 {
                                let name = format!(
                                    "({})",
                                    ridx.iter()
                                        .map(u64::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                );
                                assert_eq!(names[c].name.as_deref(), Some(name.as_str()));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn axis_out_of_range_and_inputs_without_shape_are_errors() {
        let (bytes, _) = array(&[2, 3], false);
        for axis in [2i64, -3, 100] {
            let reader: Box<dyn std::io::Read + Send> =
                Box::new(std::io::Cursor::new(bytes.clone()));
            let source = open_reader(reader, "a.npy", &InputOptions::default()).unwrap();
            let e = AxisSource::new(source, axis, 16).unwrap_err().to_string();
            assert!(
                e.contains(&format!("axis {axis} is out of range")) && e.contains("(2, 3)"),
                "{e}"
            );
        }
        let raw: Box<dyn std::io::Read + Send> = Box::new(std::io::Cursor::new(vec![0u8; 8]));
        let options = InputOptions {
            format: Some(crate::source::Format::Raw),
            ..InputOptions::default()
        };
        let source = open_reader(raw, "v.f32", &options).unwrap();
        let e = AxisSource::new(source, 0, 16).unwrap_err().to_string();
        assert!(e.contains("no shape"), "{e}");
        // More results than MAX_AXIS_RESULTS: refused before anything is read.
        let header = npy::write_header("<f4", false, &[1000, 1001, 2]);
        let reader: Box<dyn std::io::Read + Send> = Box::new(std::io::Cursor::new(header));
        let source = open_reader(reader, "big.npy", &InputOptions::default()).unwrap();
        let e = AxisSource::new(source, 2, 16).unwrap_err().to_string();
        assert!(e.contains("1001000 results"), "{e}");
    }
}
