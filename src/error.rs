//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in microbatch. Each variant names what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input could not be opened or read, or an output written. The message names the
    /// file; what the OS said is the [`std::error::Error::source`].
    #[error("{}", path.display())]
    Io {
        /// The file (or `<stdin>`).
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// An input ends partway through a value.
    #[error(
        "{}: length {len} bytes is not a multiple of {width} ({dtype}): {} stray byte(s) at byte offset {offset}",
        path.display(), len - offset
    )]
    TruncatedInput {
        /// The file (or `<stdin>`).
        path: PathBuf,
        /// Byte offset where the incomplete value starts.
        offset: u64,
        /// Length of the input in bytes.
        len: u64,
        /// Bytes per value.
        width: u64,
        /// Element type expected.
        dtype: &'static str,
    },
    /// An input's contents are not what its format requires: a bad `.npy` header, a header that
    /// promises more (or fewer) values than the file holds, a CSV field that is not a number.
    #[error("{}: {at}: {message}", path.display())]
    InvalidInput {
        /// The file (or `<stdin>`).
        path: PathBuf,
        /// Where in the input.
        at: Location,
        /// What is wrong.
        message: String,
    },
    /// Partial results that cannot be merged (another format version, other options).
    #[error("{}: {message}", path.display())]
    IncompatiblePartial {
        /// The partial file.
        path: PathBuf,
        /// Why it cannot be merged.
        message: String,
    },
    /// An input path is not a regular file (a directory, say).
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// A setting outside the range it may take: a batch size of 0, more workgroups than the
    /// adapter dispatches, … (`setting` names it as the library's fields do).
    #[error("{setting} must be between {min} and {max}{}, got {value}", on.as_deref().map(|a| format!(" on {a}")).unwrap_or_default())]
    OutOfRange {
        /// Which setting (`batch_size`, `workgroups`, `vec_per_thread`).
        setting: &'static str,
        /// What was given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
        /// The adapter whose limit `max` is, when it is one.
        on: Option<String>,
    },
    /// A source was read as an element type it does not hold (f32 batches asked of an f64
    /// file, say): [`crate::source::read_batch`] reads any source at its own precision.
    #[error(
        "{source_name} holds {holds} values, not {asked}: read it with read_batch, which keeps each type's precision"
    )]
    WrongElementType {
        /// The source, as [`crate::source::BatchSource::describe`] names it.
        source_name: String,
        /// The type it holds (`f64`, `i64`, `text`, …).
        holds: String,
        /// The kind of batch asked for (`f32`, `f64`, `integer`).
        asked: &'static str,
    },
    /// An input whose format is neither given nor recognisable (no known extension or magic
    /// bytes): it must be named ([`crate::source::InputOptions::format`]).
    #[error("{}: the format is not known: {}", path.display(), if *looks_like_text {
        "this looks like text: give the format, csv (comma-separated) or txt (whitespace-separated)"
    } else {
        "unknown binary content: give the format raw with its element type (f32, f64, i16, …), or name the file .f32, .f64, …"
    })]
    UnknownFormat {
        /// The input.
        path: PathBuf,
        /// Whether its first bytes read as text.
        looks_like_text: bool,
    },
    /// The caller's batch producer failed ([`crate::Engine::try_reduce_batches`]); nothing
    /// reduced before it is reported as if it were the result.
    #[error("the batch producer failed after {after} batches")]
    Producer {
        /// Batches reduced before the failure.
        after: u64,
        /// The producer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An [`crate::Accumulator`] used after one of its calls failed: what it held may be
    /// incomplete, so it gives nothing more.
    #[error("this accumulator failed earlier ({0}); start a new one")]
    Poisoned(String),
    /// Settings that contradict each other, or a setting the input cannot honour.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The sum of the finite values passed f64's range part way (values near ±1.8e308 of both
    /// signs: inf − inf along the way), so the sum, mean and variance cannot be given; no
    /// statistics are returned rather than NaN ones no NaN in the data explains.
    #[error(
        "the sum of {what} passes f64's range part way through (values near ±1.8e308 of both signs): microbatch cannot give their sum, mean or variance"
    )]
    Overflow {
        /// The input or series.
        what: String,
    },
    /// A GPU backend was asked for from a library built without the `gpu` feature.
    #[error("this build of microbatch has no GPU backend (built without the `gpu` feature)")]
    GpuNotBuilt,
    /// No adapter matched what was asked for.
    #[error("no {wanted} found; available adapters: {}", list_or_none(available))]
    AdapterNotFound {
        /// What was asked for, in words.
        wanted: String,
        /// Every adapter wgpu found, as `name (api, type)`.
        available: Vec<String>,
    },
    /// A GPU buffer handed to [`crate::GpuReducer::reduce_buffer`], or a resident upload handed
    /// to a reducer, that cannot be reduced as asked.
    #[error("cannot reduce this buffer: {0}")]
    InvalidBuffer(String),
    /// The adapter lacks a feature the kernel needs (the reduction accumulates in f64 and needs
    /// `SHADER_F64`).
    #[error("{adapter} cannot run the reduction kernel: it lacks {missing}")]
    GpuUnsupported {
        /// The adapter's name.
        adapter: String,
        /// What it lacks (a wgpu feature, e.g. `SHADER_F64` or `SUBGROUP`).
        missing: String,
    },
    /// The GPU reported an error (validation, out of memory, device lost, a failed map).
    #[error("GPU error while {context}: {message}")]
    Gpu {
        /// What microbatch was doing.
        context: String,
        /// What wgpu said.
        message: String,
    },
}

/// Where in an input a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A byte offset from the start of the input.
    Offset(u64),
    /// A line (1-based), and the column when one is meant.
    Line {
        /// 1-based line number.
        line: u64,
        /// The column, when one is meant.
        column: Option<ColumnRef>,
    },
}

/// A column of a text input: its 0-based index, its header name, or both. (Also a lane of an
/// array reduced along an axis: its flat index among the results, and its position as a name.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnRef {
    /// 0-based index, when known.
    pub index: Option<usize>,
    /// The header's name for it, when there is a header (or the name asked for).
    pub name: Option<String>,
}

impl std::fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.index, &self.name) {
            (Some(i), Some(n)) => write!(f, "{i} ({n:?})"),
            (Some(i), None) => write!(f, "{i}"),
            (None, Some(n)) => write!(f, "{n:?}"),
            (None, None) => f.write_str("?"),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Offset(o) => write!(f, "byte offset {o}"),
            Location::Line { line, column: None } => write!(f, "line {line}"),
            Location::Line {
                line,
                column: Some(c),
            } => write!(f, "line {line}, column {c}"),
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
