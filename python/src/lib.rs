//! `microbatch._native`: the engine for Python. numpy arrays are read in place (no copy of
//! contiguous input, C or Fortran order) with the GIL released while they are reduced;
//! `microbatch/__init__.py` wraps these functions in the documented API.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use microbatch::shard::PartialFile;
use microbatch::{BackendChoice, Engine, EngineConfig, Partial, Stats, Value};
use numpy::ndarray::{ArrayViewD, Axis, IxDyn, Slice};
use numpy::{Element, PyArray1, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rayon::prelude::*;

/// Values gathered per piece of a strided (non-contiguous) array: it is copied a piece at a
/// time, never whole.
const PIECE: usize = 1 << 20;

/// The engine's error as the package's exception (`microbatch.InputError`, `FileError`,
/// `GpuError`, all `microbatch.Error`), with the engine's message.
fn py_err(e: microbatch::Error) -> PyErr {
    Python::attach(|py| {
        let class = match &e {
            microbatch::Error::Io { .. } => "FileError",
            microbatch::Error::Gpu { .. }
            | microbatch::Error::GpuUnsupported { .. }
            | microbatch::Error::GpuNotBuilt
            | microbatch::Error::AdapterNotFound { .. } => "GpuError",
            microbatch::Error::NotAFile { .. } => "FileError",
            _ => "InputError",
        };
        let message = e.to_string();
        match py.import("microbatch").and_then(|m| m.getattr(class)) {
            Ok(cls) => PyErr::from_type(cls.cast_into().expect("an exception class"), message),
            Err(err) => err,
        }
    })
}

/// `Stats` as the dict `microbatch.Stats` is built from. Integers' sum, min and max are exact
/// Python ints.
fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("count", s.count)?;
    d.set_item("nan_count", s.nan_count)?;
    match &s.exact {
        Some(exact) if s.count > 0 => {
            d.set_item("sum", exact.sum)?;
            d.set_item("min", exact.min)?;
            d.set_item("max", exact.max)?;
        }
        _ => {
            d.set_item("sum", s.sum)?;
            d.set_item("min", s.min)?;
            d.set_item("max", s.max)?;
        }
    }
    d.set_item("mean", s.mean)?;
    d.set_item("var", s.var)?;
    d.set_item("std", s.std)?;
    d.set_item("ddof", s.ddof)?;
    d.set_item("skip_nan", s.skip_nan)?;
    Ok(d)
}

/// Reduces the values of any view (strided or not) a piece at a time.
fn view_partial<T: Value>(view: ArrayViewD<'_, T>) -> Partial {
    if let Some(s) = view.as_slice_memory_order() {
        // C or Fortran contiguous: the memory itself, in place (order does not matter to a
        // reduction of every value).
        return microbatch::partial(s);
    }
    let mut total = Partial::EMPTY;
    let mut buf = Vec::with_capacity(PIECE.min(view.len()));
    for &x in view.iter() {
        buf.push(x);
        if buf.len() == PIECE {
            total.merge(&microbatch::partial(&buf));
            buf.clear();
        }
    }
    if !buf.is_empty() {
        total.merge(&microbatch::partial(&buf));
    }
    total
}

/// One engine per process for `backend="gpu"` (opening an adapter takes a while), rebuilt when
/// another batch size is asked for.
static GPU: Mutex<Option<(usize, Engine)>> = Mutex::new(None);

/// Reduces `view` on the GPU backend: f32 by the WGSL kernel, f64 and 64-bit integers by the
/// engine's host kernels (as the engine does on either backend), narrower integers widened.
fn gpu_partial<T: OnEngine>(
    view: ArrayViewD<'_, T>,
    batch_size: usize,
) -> microbatch::Result<Partial> {
    let mut slot = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().map(|(b, _)| *b) != Some(batch_size) {
        let config = EngineConfig {
            backend: BackendChoice::Gpu,
            batch_size,
            ..EngineConfig::default()
        };
        *slot = Some((batch_size, Engine::new(&config)?));
    }
    let engine = &mut slot.as_mut().expect("set above").1;
    let owned;
    let values: &[T] = match view.as_slice_memory_order() {
        Some(s) => s,
        None => {
            owned = view.iter().copied().collect::<Vec<T>>();
            &owned
        }
    };
    let report = match T::on_engine(engine, values) {
        Some(r) => r?,
        None => return Ok(microbatch::partial(values)),
    };
    Ok(report.partial)
}

/// How each element type goes to the GPU engine: `None` for those it would widen on the host
/// anyway (narrower integers), reduced by the CPU kernels directly.
trait OnEngine: Value + Element {
    fn on_engine(
        engine: &mut Engine,
        values: &[Self],
    ) -> Option<microbatch::Result<microbatch::Report>> {
        let _ = (engine, values);
        None
    }
}
impl OnEngine for f32 {
    fn on_engine(
        engine: &mut Engine,
        values: &[Self],
    ) -> Option<microbatch::Result<microbatch::Report>> {
        Some(engine.reduce(values))
    }
}
impl OnEngine for f64 {
    fn on_engine(
        engine: &mut Engine,
        values: &[Self],
    ) -> Option<microbatch::Result<microbatch::Report>> {
        Some(engine.reduce_f64(values))
    }
}
impl OnEngine for i64 {
    fn on_engine(
        engine: &mut Engine,
        values: &[Self],
    ) -> Option<microbatch::Result<microbatch::Report>> {
        Some(engine.reduce_i64(values))
    }
}
impl OnEngine for i32 {}
impl OnEngine for i16 {}
impl OnEngine for i8 {}
impl OnEngine for u64 {}
impl OnEngine for u32 {}
impl OnEngine for u16 {}
impl OnEngine for u8 {}

/// Calls `$f::<T>(array, …)` with the array's element type, or raises `TypeError`.
macro_rules! by_dtype {
    ($array:expr, $f:ident ( $($arg:expr),* )) => {{
        let a = $array;
        if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, f32>>() { $f::<f32>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, f64>>() { $f::<f64>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, i64>>() { $f::<i64>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, i32>>() { $f::<i32>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, i16>>() { $f::<i16>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, i8>>() { $f::<i8>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, u64>>() { $f::<u64>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, u32>>() { $f::<u32>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, u16>>() { $f::<u16>(x $(, $arg)*) }
        else if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, u8>>() { $f::<u8>(x $(, $arg)*) }
        else {
            let dtype = a
                .cast::<PyUntypedArray>()
                .map(|u| u.dtype().to_string())
                .unwrap_or_else(|_| "not a numpy array".to_string());
            Err(PyTypeError::new_err(format!(
                "microbatch reduces float16, float32, float64, bool and 8- to 64-bit signed and unsigned integers; got {dtype}"
            )))
        }
    }};
}

fn partial_of<T: OnEngine>(
    array: PyReadonlyArrayDyn<'_, T>,
    backend: &str,
    batch_size: usize,
) -> PyResult<Partial> {
    let py = array.py();
    let view = array.as_array();
    match backend {
        "cpu" | "auto" => Ok(py.detach(|| view_partial(view))),
        "gpu" => py.detach(|| gpu_partial(view, batch_size)).map_err(py_err),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "backend must be \"auto\", \"cpu\" or \"gpu\", not {other:?}"
        ))),
    }
}

/// The statistics of every value of `array` (any shape, any strides).
#[pyfunction]
#[pyo3(signature = (array, ddof, skip_nan, backend, batch_size))]
fn _stats<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
    ddof: u32,
    skip_nan: bool,
    backend: &str,
    batch_size: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let p = by_dtype!(array, partial_of(backend, batch_size))?;
    p.check_range("the array").map_err(py_err)?;
    stats_dict(py, &p.finish(ddof, skip_nan))
}

/// Values gathered per round of an axis reduction (lanes × values per lane): a block of the
/// input small enough to stay in cache while it is transposed into per-lane runs.
const AXIS_BLOCK: usize = 1 << 18;

/// One partial per lane along `axis` (lanes in C order of the other axes, numpy's result
/// order), in one pass over the input in blocks: lanes that are contiguous are reduced in
/// place; otherwise each block of the reduced axis is transposed into per-lane runs (a block,
/// never the array, is copied) and the runs are reduced on all cores.
fn lane_partials<T: Value>(view: ArrayViewD<'_, T>, axis: usize) -> Vec<Partial> {
    let nd = view.ndim();
    let mut order: Vec<usize> = (0..nd).filter(|&d| d != axis).collect();
    order.push(axis);
    let v = view.permuted_axes(IxDyn(&order));
    let last = Axis(nd - 1);
    let len = v.len_of(last);
    let lanes: usize = v.shape()[..nd - 1].iter().product();
    if lanes == 0 {
        return Vec::new();
    }
    if v.stride_of(last) == 1 || len <= 1 {
        let each: Vec<_> = v.lanes(last).into_iter().collect();
        return each
            .into_par_iter()
            .map(|lane| match lane.as_slice() {
                Some(s) => microbatch::partial(s),
                None => microbatch::partial(&lane.iter().copied().collect::<Vec<T>>()),
            })
            .collect();
    }
    let per = (AXIS_BLOCK / lanes).clamp(1, len);
    let mut acc = vec![Partial::EMPTY; lanes];
    let mut runs: Vec<T> = Vec::with_capacity(per * lanes);
    let mut start = 0;
    while start < len {
        let n = per.min(len - start);
        let block = v.slice_axis(last, Slice::from(start..start + n));
        runs.clear();
        for lane in block.lanes(last) {
            runs.extend(lane.iter().copied());
        }
        let parts: Vec<Partial> = runs.par_chunks(n).map(microbatch::partial).collect();
        for (a, p) in acc.iter_mut().zip(&parts) {
            a.merge(p);
        }
        start += n;
    }
    acc
}

fn axis_partials<T: Value + Element>(
    array: PyReadonlyArrayDyn<'_, T>,
    axis: usize,
) -> PyResult<Vec<Partial>> {
    let py = array.py();
    let view = array.as_array();
    if axis >= view.ndim() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "axis {axis} is out of bounds for an array of {} dimensions",
            view.ndim()
        )));
    }
    Ok(py.detach(|| lane_partials(view, axis)))
}

/// The statistics along `axis`: one result per lane, in C order of the remaining axes, as a
/// dict of flat numpy arrays (float64, NaN where undefined; counts uint64), and for integer
/// inputs `sum`, `min` and `max` as lists of exact ints (the Python side shapes them).
#[pyfunction]
#[pyo3(signature = (array, axis, ddof, skip_nan))]
fn _stats_axis<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
    axis: usize,
    ddof: u32,
    skip_nan: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let parts = by_dtype!(array, axis_partials(axis))?;
    for (i, p) in parts.iter().enumerate() {
        p.check_range(&format!("the array, result {i} along axis {axis}"))
            .map_err(py_err)?;
    }
    let stats: Vec<Stats> = parts.iter().map(|p| p.finish(ddof, skip_nan)).collect();
    let d = PyDict::new(py);
    let floats = |f: fn(&Stats) -> Option<f64>| {
        PyArray1::from_vec(py, stats.iter().map(|s| f(s).unwrap_or(f64::NAN)).collect())
    };
    d.set_item(
        "count",
        PyArray1::from_vec(py, stats.iter().map(|s| s.count).collect()),
    )?;
    d.set_item(
        "nan_count",
        PyArray1::from_vec(py, stats.iter().map(|s| s.nan_count).collect()),
    )?;
    d.set_item("mean", floats(|s| s.mean))?;
    d.set_item("var", floats(|s| s.var))?;
    d.set_item("std", floats(|s| s.std))?;
    if stats.iter().any(|s| s.exact.is_some()) {
        let ints = |f: fn(&microbatch::stats::IntPart) -> i128| -> Vec<Option<i128>> {
            stats
                .iter()
                .map(|s| s.exact.as_ref().filter(|_| s.count > 0).map(f))
                .collect()
        };
        d.set_item("sum", ints(|e| e.sum))?;
        d.set_item("min", ints(|e| e.min))?;
        d.set_item("max", ints(|e| e.max))?;
    } else {
        d.set_item("sum", floats(|s| s.sum))?;
        d.set_item("min", floats(|s| s.min))?;
        d.set_item("max", floats(|s| s.max))?;
    }
    Ok(d)
}

/// A mergeable partial result: what `microbatch run --partial` writes, merged exactly with
/// the CLI's and `serve`'s (`to_json`, `from_json`); picklable.
#[pyclass(module = "microbatch", name = "Partial", frozen)]
#[derive(Clone)]
struct PyPartial {
    file: PartialFile,
}

#[pymethods]
impl PyPartial {
    /// Finite values counted.
    #[getter]
    fn count(&self) -> u64 {
        self.file.partial.count
    }

    /// NaN values counted.
    #[getter]
    fn nan_count(&self) -> u64 {
        self.file.partial.nan_count
    }

    /// The variance's delta degrees of freedom this partial was made with.
    #[getter]
    fn ddof(&self) -> u32 {
        self.file.ddof
    }

    /// Whether NaN values are left out of the statistics.
    #[getter]
    fn skip_nan(&self) -> bool {
        self.file.skip_nan
    }

    /// This partial merged with `other` (made with the same ddof and skip_nan): the partial of
    /// all their values together.
    fn merge(&self, other: &PyPartial) -> PyResult<PyPartial> {
        let a = Path::new("<this partial>");
        let b = Path::new("<other partial>");
        let shards = [(a, &self.file), (b, &other.file)];
        PartialFile::common_options(shards).map_err(py_err)?;
        let file = PartialFile::merge(shards).map_err(py_err)?;
        Ok(PyPartial { file })
    }

    fn __add__(&self, other: &PyPartial) -> PyResult<PyPartial> {
        self.merge(other)
    }

    /// The statistics (a `microbatch.Stats`; ddof and skip_nan default to the partial's own).
    #[pyo3(signature = (ddof = None, skip_nan = None))]
    fn finish<'py>(
        &self,
        py: Python<'py>,
        ddof: Option<u32>,
        skip_nan: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = self.file.partial.finish(
            ddof.unwrap_or(self.file.ddof),
            skip_nan.unwrap_or(self.file.skip_nan),
        );
        let d = stats_dict(py, &s)?;
        py.import("microbatch")?.getattr("Stats")?.call1((d,))
    }

    /// The partial-file JSON (`microbatch merge` reads it).
    fn to_json(&self) -> String {
        serde_json::to_string(&self.file.to_json()).expect("JSON values serialize")
    }

    /// A partial from partial-file JSON (`microbatch run --partial`, `serve`'s `/partial`,
    /// `to_json`).
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PyPartial> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            py_err(microbatch::Error::IncompatiblePartial {
                path: PathBuf::from("<json>"),
                message: format!("not JSON: {e}"),
            })
        })?;
        let file = PartialFile::from_json(&v, Path::new("<json>")).map_err(py_err)?;
        Ok(PyPartial { file })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
        let from_json = slf.get_type().getattr("from_json")?;
        Ok((from_json, (slf.get().to_json(),)))
    }

    fn __eq__(&self, other: &PyPartial) -> bool {
        self.file.to_json() == other.file.to_json()
    }

    fn __repr__(&self) -> String {
        format!(
            "Partial(count={}, nan_count={}, ddof={}, skip_nan={})",
            self.file.partial.count,
            self.file.partial.nan_count,
            self.file.ddof,
            self.file.skip_nan
        )
    }
}

/// A partial of every value of `array`.
#[pyfunction]
#[pyo3(signature = (array, ddof, skip_nan))]
fn _partial(array: &Bound<'_, PyAny>, ddof: u32, skip_nan: bool) -> PyResult<PyPartial> {
    let p = by_dtype!(array, partial_of("cpu", 1))?;
    Ok(PyPartial {
        file: PartialFile {
            partial: p,
            ddof,
            skip_nan,
            inputs: vec!["<numpy array>".to_string()],
            skipped_invalid: 0,
            sketch: None,
        },
    })
}

/// Reads and reduces files as `microbatch run` does; returns (stats dict, partial).
#[pyfunction]
#[pyo3(signature = (paths, options, ddof, skip_nan, backend, batch_size))]
fn _stats_file<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    options: &Bound<'py, PyDict>,
    ddof: u32,
    skip_nan: bool,
    backend: &str,
    batch_size: usize,
) -> PyResult<(Bound<'py, PyDict>, PyPartial)> {
    let mut opts = microbatch::source::InputOptions::default();
    let get = |key: &str| {
        options
            .get_item(key)
            .ok()
            .flatten()
            .filter(|v| !v.is_none())
    };
    let bad = |m: String| pyo3::exceptions::PyValueError::new_err(m);
    if let Some(v) = get("format") {
        let f: String = v.extract()?;
        use microbatch::source::Format;
        opts.format = Some(match f.as_str() {
            "raw" => Format::Raw,
            "npy" => Format::Npy,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "txt" => Format::Txt,
            "parquet" => Format::Parquet,
            "arrow" => Format::Arrow,
            other => {
                return Err(bad(format!(
                    "format must be one of raw, npy, csv, tsv, txt, parquet, arrow; not {other:?}"
                )));
            }
        });
    }
    if let Some(v) = get("dtype") {
        let d: String = v.extract()?;
        opts.dtype = Some(d.parse().map_err(|e| bad(format!("dtype {d:?}: {e}")))?);
    }
    if let Some(v) = get("column") {
        opts.text.column = match v.extract::<usize>() {
            Ok(i) => microbatch::source::Column::Index(i),
            Err(_) => microbatch::source::Column::Name(v.extract()?),
        };
    }
    if let Some(v) = get("delimiter") {
        let d: String = v.extract()?;
        opts.text.delimiter = Some(match d.as_bytes() {
            [b] => microbatch::source::Delimiter::Byte(*b),
            _ if d == "whitespace" => microbatch::source::Delimiter::Whitespace,
            _ => {
                return Err(bad(format!(
                    "delimiter must be one byte or \"whitespace\", not {d:?}"
                )));
            }
        });
    }
    if let Some(v) = get("header") {
        opts.text.header = Some(v.extract()?);
    }
    if let Some(v) = get("skip_invalid") {
        opts.text.skip_invalid = v.extract()?;
    }
    if let Some(v) = get("nulls") {
        opts.text.nulls = v.extract()?;
    }
    let choice = match backend {
        "auto" => BackendChoice::Auto,
        "cpu" => BackendChoice::Cpu,
        "gpu" => BackendChoice::Gpu,
        other => {
            return Err(bad(format!(
                "backend must be \"auto\", \"cpu\" or \"gpu\", not {other:?}"
            )));
        }
    };
    let (report, inputs, skipped_invalid) = py
        .detach(|| -> microbatch::Result<_> {
            let config = EngineConfig {
                backend: choice,
                batch_size,
                ddof,
                skip_nan,
                ..EngineConfig::default()
            };
            let mut engine = Engine::new(&config)?;
            let mut reports = Vec::new();
            let mut skipped = 0;
            for p in &paths {
                let mut source = microbatch::source::open(p, &opts)?;
                reports.push(engine.run(source.as_mut())?);
                skipped += source.skipped();
            }
            let report = microbatch::Report::combine(&reports)
                .ok_or_else(|| microbatch::Error::InvalidConfig("no input files".to_string()))?;
            let inputs = paths.iter().map(|p| p.display().to_string()).collect();
            Ok((report, inputs, skipped))
        })
        .map_err(py_err)?;
    let stats = stats_dict(py, &report.stats)?;
    let file = PartialFile {
        partial: report.partial,
        ddof,
        skip_nan,
        inputs,
        skipped_invalid,
        sketch: None,
    };
    Ok((stats, PyPartial { file }))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_stats, m)?)?;
    m.add_function(wrap_pyfunction!(_stats_axis, m)?)?;
    m.add_function(wrap_pyfunction!(_partial, m)?)?;
    m.add_function(wrap_pyfunction!(_stats_file, m)?)?;
    m.add_class::<PyPartial>()?;
    m.add("DEFAULT_BATCH_SIZE", microbatch::DEFAULT_BATCH_SIZE)?;
    Ok(())
}
