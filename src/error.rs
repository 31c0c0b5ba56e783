//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in microbatch. Each variant names what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file (or `<stdin>`).
        path: PathBuf,
        /// What the OS said (part of the message, so it is not repeated as a source).
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
    /// An input path is not a regular file (a directory, say).
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// A setting is out of range (batch size 0, too many workgroups for the adapter, …).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// No adapter matched what was asked for.
    #[error("no {wanted} found; available adapters: {}", list_or_none(available))]
    AdapterNotFound {
        /// What was asked for, in words.
        wanted: String,
        /// Every adapter wgpu found, as `name (api, type)`.
        available: Vec<String>,
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

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
