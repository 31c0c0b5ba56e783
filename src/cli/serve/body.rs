//! Request bodies: encodings and declared lengths checked, small bodies gathered, large ones
//! streamed through a bounded pipe into the same sources `microbatch run` reads, and reduced.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;

use microbatch::backend::Timings;
use microbatch::source::{Format, InputOptions};

use super::*;

/// A body's Content-Encoding: decoded on the fly (anything else is 415).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

pub(super) fn encoding_of(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    match v
        .to_str()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {other:?}: identity, gzip, zstd"),
        )),
    }
}

/// Refuses at once a body whose declared length passes `--max-body` (not after reading it);
/// returns the declared length.
pub(super) fn check_length(state: &AppState, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > state.limits.max_body => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body's Content-Length {n} exceeds the limit of {} bytes (--max-body)",
                state.limits.max_body
            ),
        )),
        n => Ok(n),
    }
}

/// How to read a request's body, checked in full before any of it is read.
#[derive(Clone)]
pub(super) struct BodySpec {
    pub(super) options: InputOptions,
    pub(super) encoding: Encoding,
    /// The declared Content-Length.
    pub(super) length: Option<u64>,
    /// Most elements the body may hold (a stream's batch: `--max-batch`).
    pub(super) max_elements: Option<usize>,
    /// Build a quantile sketch of the body with this many mantissa bits (a stream opened
    /// with one).
    pub(super) sketch_bits: Option<u8>,
}

impl BodySpec {
    /// Checks the headers and query of a body-reading request.
    pub(super) fn of(
        state: &AppState,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        max_elements: Option<usize>,
    ) -> Result<Self, ApiError> {
        check_params(query, BODY_PARAMS)?;
        let length = check_length(state, headers)?;
        Ok(Self {
            options: input_options(headers, query)?,
            encoding: encoding_of(headers)?,
            length,
            max_elements,
            sketch_bits: None,
        })
    }

    /// A small body sent as is: gathered whole without a thread of its own, and reduced where
    /// it was gathered (what is decoded from it is at most its own size, so it cannot hold a
    /// worker for long).
    pub(super) fn small(&self) -> bool {
        self.encoding == Encoding::Identity && self.length.is_some_and(|n| n <= SMALL_BODY)
    }
}

/// Bodies up to this many bytes (with a Content-Length, not compressed) take the small path:
/// no blocking thread, no engine queue on the CPU backend. ~1 ms of text parsing at most.
pub(super) const SMALL_BODY: u64 = 64 << 10;

/// Refuses a text body's line longer than `max` bytes (counted from the last `\n` or `\r`).
pub(super) struct LineGuard {
    pub(super) inner: Box<dyn std::io::Read + Send>,
    pub(super) run: u64,
    pub(super) max: u64,
}

impl std::io::Read for LineGuard {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > self.max {
                    return Err(io::Error::other(LineTooLong(self.max)));
                }
            }
        }
        Ok(n)
    }
}

/// Marks the error a text body's reader returns past `--max-line`.
#[derive(Debug)]
pub(super) struct LineTooLong(pub(super) u64);
impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a line of the body is longer than {} bytes (--max-line)",
            self.0
        )
    }
}
impl std::error::Error for LineTooLong {}

/// Marks the error a body reader returns when the client sent nothing for `--body-idle-s`.
#[derive(Debug)]
pub(super) struct BodyIdle(pub(super) Duration);
impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body sent nothing for {} s (--body-idle-s)",
            self.0.as_secs()
        )
    }
}
impl std::error::Error for BodyIdle {}

/// Marks the error a body reader returns past the size limit.
#[derive(Debug)]
pub(super) struct BodyTooLarge(pub(super) u64);
impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the body exceeds the limit of {} bytes", self.0)
    }
}
impl std::error::Error for BodyTooLarge {}

/// Marks the error a body reader returns once its request has timed out.
#[derive(Debug)]
pub(super) struct Cancelled;
impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request timed out")
    }
}
impl std::error::Error for Cancelled {}

/// What reducing a body gave: each batch's report, the input's shape (`.npy`), and the text
/// fields skipped as invalid.
pub(super) type Reduced = (Vec<Done>, BodyInfo);

/// What the source said about a body, for the answer's `input` (as `run --json` has it).
pub(super) struct BodyInfo {
    pub(super) shape: Option<Vec<u64>>,
    pub(super) skipped: u64,
    pub(super) nulls: u64,
    pub(super) dtype: String,
    pub(super) precision: &'static str,
    /// The body's quantile sketch, when asked for ([`BodySpec::sketch_bits`]).
    pub(super) sketch: Option<microbatch::sketch::Sketch>,
}

/// Turns a streamed body into a blocking reader (for a blocking thread) that counts what
/// arrives into `received`, ends in [`BodyIdle`] when the client stalls, in [`BodyTooLarge`]
/// past `--max-body`, and in [`Cancelled`] once `cancel` is set.
///
/// A task on the runtime pumps the body into a [`Pipe`] as fast as it arrives (hyper reads the
/// socket only while its body is polled), and the reader wakes once a whole [`PIPE_WAKE`] is
/// there rather than for each socket read: a 400 MB body costs a few hundred thread wake-ups,
/// not tens of thousands.
pub(super) fn body_reader(
    state: &AppState,
    body: Body,
    received: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
) -> Box<dyn std::io::Read + Send> {
    let limit = state.limits.max_body;
    let idle = state.limits.body_idle;
    let pipe = Arc::new(Pipe::default());
    let writer = Arc::clone(&pipe);
    tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        let end = loop {
            if writer.abandoned() {
                return;
            }
            let chunk = match tokio::time::timeout(idle, frames.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => break Err(io::Error::other(e)),
                Ok(None) => break Ok(()),
                Err(_) => break Err(io::Error::other(BodyIdle(idle))),
            };
            let total =
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            if cancel.load(Ordering::Relaxed) {
                break Err(io::Error::other(Cancelled));
            }
            if total > limit {
                break Err(io::Error::other(BodyTooLarge(limit)));
            }
            writer.push(chunk).await;
        };
        writer.finish(end);
    });
    Box::new(PipeReader(pipe))
}

/// Bytes a [`Pipe`] holds before its reader is woken.
pub(super) const PIPE_WAKE: usize = 1 << 20;
/// Bytes a [`Pipe`] holds at most: the writer waits past it.
pub(super) const PIPE_CAP: usize = 8 << 20;

/// Chunks of a body on their way from the runtime to a blocking reader.
#[derive(Default)]
pub(super) struct Pipe {
    pub(super) inner: Mutex<PipeState>,
    /// Wakes the reader.
    pub(super) ready: std::sync::Condvar,
    /// Wakes the writer.
    pub(super) room: tokio::sync::Notify,
}

#[derive(Default)]
pub(super) struct PipeState {
    pub(super) chunks: std::collections::VecDeque<axum::body::Bytes>,
    pub(super) buffered: usize,
    /// Set when the body has ended: `Ok` at its end, the error that cut it short.
    pub(super) end: Option<io::Result<()>>,
    /// Set when the reader is gone: the writer stops.
    pub(super) abandoned: bool,
}

impl Pipe {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// Adds a chunk, waiting while the pipe is full.
    pub(super) async fn push(&self, chunk: axum::body::Bytes) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a read in between is not missed.
            room.as_mut().enable();
            {
                let mut st = self.lock();
                if st.abandoned {
                    return;
                }
                if st.buffered < PIPE_CAP {
                    st.buffered += chunk.len();
                    st.chunks.push_back(chunk);
                    if st.buffered >= PIPE_WAKE {
                        self.ready.notify_one();
                    }
                    return;
                }
            }
            room.await;
        }
    }

    pub(super) fn finish(&self, end: io::Result<()>) {
        self.lock().end = Some(end);
        self.ready.notify_one();
    }
}

/// The blocking end of a [`Pipe`].
pub(super) struct PipeReader(pub(super) Arc<Pipe>);

impl std::io::Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let pipe = &self.0;
        let mut st = pipe.lock();
        // Wait for a good amount (or the end), not for every chunk.
        while st.end.is_none() && st.buffered < PIPE_WAKE.min(buf.len()) {
            st = pipe.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = st.chunks.front_mut() else {
                break;
            };
            let take = front.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[..take]);
            n += take;
            if take == front.len() {
                st.chunks.pop_front();
            } else {
                let _ = front.split_to(take);
            }
        }
        st.buffered -= n;
        if n > 0 {
            pipe.room.notify_one();
            return Ok(n);
        }
        match st.end.take() {
            // The error itself goes to the reader (its type says 408 or 413); a copy stays.
            Some(Err(e)) => {
                st.end = Some(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
            end => {
                st.end = end;
                Ok(0)
            }
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.0.lock().abandoned = true;
        self.0.room.notify_one();
    }
}

/// Gathers a small body whole (its declared `length` bytes), without a blocking thread: the
/// same idle and size rules as [`body_reader`].
pub(super) async fn gather_body(
    state: &AppState,
    body: Body,
    length: u64,
) -> Result<Vec<u8>, ApiError> {
    let idle = state.limits.body_idle;
    let mut frames = body.into_data_stream();
    let mut out = Vec::with_capacity(length as usize);
    loop {
        match tokio::time::timeout(idle, frames.next()).await {
            Ok(Some(Ok(chunk))) => {
                if out.len() + chunk.len() > length as usize {
                    // hyper ends a body at its Content-Length; this is a guard, not a path.
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "the body is longer than its Content-Length",
                    ));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}"),
                ));
            }
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    BodyIdle(idle).to_string(),
                ));
            }
        }
    }
    Ok(out)
}

/// Where a body's batches are reduced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reducer {
    /// Through the engine thread's queue (the device's only owner), up to two batches of the
    /// body waiting there while the next is read.
    Engine,
    /// Right here with the CPU kernels (a small body on the CPU backend: the same kernels the
    /// engine would run, without two thread hand-offs).
    Here,
}

/// Reduces a whole body read from `reader`, batch by batch; returns the batches' reports and
/// what the source said about the input. Blocks: call it on a blocking thread, or with
/// [`Reducer::Here`] on a small body already in memory.
pub(super) fn reduce_reader(
    state: &AppState,
    reader: Box<dyn std::io::Read + Send>,
    spec: &BodySpec,
    reducer: Reducer,
) -> Result<Reduced, ApiError> {
    let reader: Box<dyn std::io::Read + Send> = match spec.encoding {
        Encoding::Identity => Box::new(reader),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Encoding::Zstd => Box::new(
            zstd::stream::read::Decoder::new(reader)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("zstd body: {e}")))?,
        ),
    };
    let options = &spec.options;
    let reader: Box<dyn std::io::Read + Send> = match options.format {
        Some(Format::Csv | Format::Tsv | Format::Txt) => Box::new(LineGuard {
            inner: reader,
            run: 0,
            max: state.limits.max_line,
        }),
        _ => reader,
    };
    // With a declared length and no compression the source knows the body's size: binary
    // batches are read whole, and a size that cannot hold whole elements is refused up front.
    let opened = match (spec.encoding, spec.length) {
        (Encoding::Identity, Some(len)) => {
            microbatch::source::open_reader_sized(reader, "<request body>", options, len)
        }
        _ => microbatch::source::open_reader(reader, "<request body>", options),
    };
    let mut source = opened.map_err(|e| {
        let mut err = api_error(e);
        if options.format.is_none() && options.dtype.is_none() {
            err.message.push_str(
                " (over HTTP: Content-Type application/octet-stream or ?dtype= for raw values, text/csv or text/plain for text)",
            );
        }
        err
    })?;
    let mut reports = Vec::new();
    let mut elements = 0usize;
    const IN_FLIGHT: usize = 2;
    let mut pending = std::collections::VecDeque::new();
    // Buffers come back from the engine with their reports and are filled again.
    let mut free: Vec<JobBatch> = Vec::new();
    let wait = |answer: tokio::sync::oneshot::Receiver<Result<Done, String>>| {
        answer
            .blocking_recv()
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
    };
    let keep = |mut done: Done, free: &mut Vec<JobBatch>, reports: &mut Vec<Done>| {
        if let Some(b) = done.buffer.take() {
            free.push(b);
        }
        reports.push(done);
    };
    let mut sketch = spec
        .sketch_bits
        .map(microbatch::sketch::Sketch::with_mantissa_bits);
    loop {
        let mut buf = match free.pop() {
            Some(JobBatch::F32(v)) => microbatch::source::BatchBuf {
                f32: v,
                ..Default::default()
            },
            Some(JobBatch::F64(v)) => microbatch::source::BatchBuf {
                f64: v,
                ..Default::default()
            },
            Some(JobBatch::Int(v, _)) => microbatch::source::BatchBuf {
                int: v,
                ..Default::default()
            },
            None => microbatch::source::BatchBuf::default(),
        };
        let (n, element) =
            microbatch::source::read_batch(&mut *source, &mut buf, state.limits.batch)
                .map_err(api_error)?;
        if n == 0 {
            break;
        }
        let batch = match element {
            microbatch::source::Element::F32 => JobBatch::F32(buf.f32),
            microbatch::source::Element::F64 => JobBatch::F64(buf.f64),
            microbatch::source::Element::Int => JobBatch::Int(buf.int, source.int_offset()),
        };
        elements += n;
        if let Some(s) = &mut sketch {
            s.add(batch.as_ref());
        }
        if let Some(max) = spec.max_elements
            && elements > max
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the batch holds more than the limit of {max} elements (--max-batch)"),
            ));
        }
        if reducer == Reducer::Here {
            let t = Instant::now();
            let partial = match batch.as_ref() {
                microbatch::backend::BatchRef::F32(v) => microbatch::backend::cpu::reduce_slice(v),
                microbatch::backend::BatchRef::F64(v) => {
                    microbatch::backend::cpu::reduce_slice_f64(v)
                }
                microbatch::backend::BatchRef::Int(v, off) => {
                    microbatch::backend::cpu::reduce_slice_int(v, off)
                }
            };
            let times = Timings {
                compute: t.elapsed(),
                ..Timings::default()
            };
            state.metrics.observe(&times, 1);
            let done = Done {
                partial,
                times,
                buffer: Some(batch),
            };
            keep(done, &mut free, &mut reports);
            continue;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        state.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        state.jobs.send(Job { batch, reply }).map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped")
        })?;
        pending.push_back(answer);
        if pending.len() > IN_FLIGHT {
            let done = wait(pending.pop_front().expect("non-empty"))?;
            keep(done, &mut free, &mut reports);
        }
    }
    for answer in pending {
        let done = wait(answer)?;
        keep(done, &mut free, &mut reports);
    }
    Ok((
        reports,
        BodyInfo {
            shape: source.shape().map(<[u64]>::to_vec),
            skipped: source.skipped(),
            nulls: source.nulls(),
            dtype: source.dtype_name(),
            precision: source.element().name(),
            sketch,
        },
    ))
}
