//! `microbatch serve`: the processing service. Producers send micro-batches over HTTP/1.1; one
//! engine thread owns the device (GPU or CPU backend) and reduces every batch; each request and
//! each named stream keeps its own exact running [`Partial`].
//!
//! Bodies are streamed: a reading task turns the HTTP body into a blocking `Read` (tokio-util's
//! `SyncIoBridge`) and runs the same sources as `microbatch run` over it (raw binary, `.npy`,
//! text), so a request is never buffered whole; every batch goes through a bounded queue to the
//! engine thread, which answers with the batch's own report. A stream's batch is merged into the
//! stream only once all of it has been reduced: it is applied whole or not at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use serde_json::{Value, json};

use microbatch::backend::Timings;
use microbatch::{BackendInfo, Engine, EngineConfig, Partial};

use super::{BackendArg, parse_batch, parse_count, store};

mod auth;
mod body;
mod listen;
mod metrics;
mod routes;
mod streams;

use auth::*;
use body::*;
use listen::*;
use metrics::*;
use routes::*;
use streams::*;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port; the first line of stdout names the one
    /// bound. Any address other than loopback requires --token-file.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8787")]
    addr: SocketAddr,

    /// Listen on a Unix domain socket at PATH instead of TCP (created with mode 0600: only this
    /// user may connect; a stale socket file left by a crash is replaced). For producers on the
    /// same machine: no token needed, and large bodies arrive faster than over loopback TCP.
    #[cfg(unix)]
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,

    /// Backend: `auto` takes a hardware GPU when there is one, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Use the GPU adapter whose name contains TEXT.
    #[arg(long, value_name = "TEXT")]
    adapter: Option<String>,

    /// Elements per micro-batch the engine reduces at a time (a body is cut into these).
    #[arg(long, value_name = "B", value_parser = parse_batch, default_value = "1048576")]
    batch_size: usize,

    /// Workgroups per dispatch (GPU only; default chosen per adapter).
    #[arg(long, value_name = "P")]
    workgroups: Option<u32>,

    /// Largest request body in bytes (accepts 1e9); past it: 413.
    #[arg(long, value_name = "BYTES", value_parser = parse_count, default_value = "4294967296")]
    max_body: u64,

    /// Largest batch appended to a stream, in elements; past it: 413.
    #[arg(long, value_name = "N", value_parser = parse_batch, default_value = "16777216")]
    max_batch: usize,

    /// Most streams open at once; past it: 429.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_streams: usize,

    /// Most streams one client (by address) may have open; past it: 429.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_streams_per_client: usize,

    /// Seconds an idempotency key is remembered after its batch was applied: a retry with the
    /// key within this time gets the original answer; after it the key is forgotten (memory and
    /// store stay bounded by the rate of keyed batches times this).
    #[arg(long, value_name = "SECONDS", default_value_t = 86400)]
    key_ttl_s: u64,

    /// Seconds after its last use a stream is dropped.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    stream_idle_s: u64,

    /// Seconds a request may take (reading its body included); past it: 408.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    request_timeout_s: u64,

    /// Seconds a request body may go without sending a byte; past it: 408, and the reader is
    /// freed at once (a client that declares a length and stalls holds nothing for long).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    body_idle_s: u64,

    /// Requests reading a body at once; past it: 503 with Retry-After. Each holds one blocking
    /// thread, and the pool has this many plus a margin, so stalled clients cannot take the
    /// threads others need.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_inflight: usize,

    /// Longest line of a text body, in bytes (accepts 1e6); past it: 413 (a body of digits with
    /// no line end would otherwise be held whole by the parser).
    #[arg(long, value_name = "BYTES", value_parser = parse_count, default_value = "1048576")]
    max_line: u64,

    /// Seconds a connection may take to send a request's headers, and may sit idle between
    /// requests (keep-alive); past it the connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    header_timeout_s: u64,

    /// Connections open at once; past it a new connection is answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,

    /// Seconds SIGTERM (or Ctrl-C) waits for in-flight requests before closing what is left.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    shutdown_grace_s: u64,

    /// Batches waiting for the engine before producers are held back.
    #[arg(long, value_name = "N", default_value_t = 64)]
    queue: usize,

    /// File holding a bearer token every request must present (`Authorization: Bearer …`);
    /// required to listen on anything but loopback.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// File holding the admin's bearer token (at least 16 bytes, other than --token-file's):
    /// it is accepted wherever the client token is, and alone may list every open stream
    /// (`GET /v1/streams`, with their owners) — to find and delete the streams of a client
    /// that lost their ids.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// Directory of the durable stream store (streams and idempotency keys survive restarts
    /// and crashes). Default: `$XDG_DATA_HOME/microbatch` or `~/.local/share/microbatch`.
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,

    /// Keep streams in memory only: they are lost when the server stops (tests, throwaway use).
    #[arg(long)]
    in_memory: bool,
}

/// One batch for the engine thread, and where its result goes.
struct Job {
    batch: JobBatch,
    reply: tokio::sync::oneshot::Sender<Result<Done, String>>,
}

/// A batch's values at the precision its body holds.
enum JobBatch {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Int(Vec<i64>, i128),
}

impl JobBatch {
    fn as_ref(&self) -> microbatch::backend::BatchRef<'_> {
        match self {
            JobBatch::F32(v) => microbatch::backend::BatchRef::F32(v),
            JobBatch::F64(v) => microbatch::backend::BatchRef::F64(v),
            JobBatch::Int(v, off) => microbatch::backend::BatchRef::Int(v, *off),
        }
    }
}

/// A reduced batch: its own partial, and its share of the engine's stage times (batches of
/// several requests are reduced in one pass; each is charged in proportion to its size).
struct Done {
    partial: Partial,
    times: Timings,
    /// The batch's buffer, back for the next batch of the same body.
    buffer: Option<JobBatch>,
}

/// Batches the engine takes from the queue for one pass: on the GPU they share one readback.
const MAX_GROUP: usize = 32;

struct Stream {
    partial: Partial,
    batches: u64,
    created: Instant,
    last_used: Instant,
    /// Idempotency keys seen, with the answer each batch got and the store's ticket for it
    /// (an answer is given only once its batch is on disk).
    keys: HashMap<String, (String, u64)>,
    /// The keys in the order they were applied, with when (Unix seconds): the oldest are
    /// forgotten past `--key-ttl-s`.
    key_order: std::collections::VecDeque<(u64, String)>,
    /// The address of the client that opened it (for `--max-streams-per-client`).
    owner: String,
    /// Its quantile sketch, when it was opened with `?quantile_error=E`.
    sketch: Option<microbatch::sketch::Sketch>,
}

/// Whether a request presented the admin token.
#[derive(Debug, Clone, Copy)]
struct Admin(bool);

/// The peer address of a request's connection.
#[derive(Debug, Clone)]
struct Peer(String);

struct AppState {
    jobs: mpsc::SyncSender<Job>,
    streams: Mutex<HashMap<String, Stream>>,
    store: store::Store,
    /// Permits for requests reading a body (`--max-inflight`).
    inflight: Arc<tokio::sync::Semaphore>,
    backend: Value,
    backend_info: BackendInfo,
    limits: Limits,
    metrics: Arc<Metrics>,
    token: Option<Vec<u8>>,
    admin_token: Option<Vec<u8>>,
}

/// The ddof recorded in a stream's partial file and used where a request names none.
const DEFAULT_DDOF: u32 = 0;

#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The engine's micro-batch: bodies are cut into batches of this many elements.
    batch: usize,
    max_body: u64,
    max_batch: usize,
    max_streams: usize,
    max_streams_per_client: usize,
    stream_idle: Duration,
    request_timeout: Duration,
    body_idle: Duration,
    max_line: u64,
    key_ttl_s: u64,
}

type Shared = Arc<AppState>;

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    share_the_cores();
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    anyhow::ensure!(
        token.is_none() || token != admin_token,
        "--admin-token-file holds the same token as --token-file: give the admin its own"
    );
    #[cfg(unix)]
    let unix = args.unix.clone();
    #[cfg(not(unix))]
    let unix: Option<PathBuf> = None;
    anyhow::ensure!(
        unix.is_some() || args.addr.ip().is_loopback() || token.is_some(),
        "listening on {} (not loopback) requires --token-file",
        args.addr
    );
    let config = EngineConfig {
        backend: args.backend.into(),
        adapter: args.adapter.clone(),
        batch_size: args.batch_size,
        workgroups: args.workgroups,
        ddof: DEFAULT_DDOF,
        skip_nan: false,
    };
    let mut engine = Engine::new(&config)?;
    if let Some(notice) = engine.notice() {
        eprintln!("microbatch: {notice}");
    }
    let backend_info = engine.backend().clone();
    let backend = {
        let b = &backend_info;
        json!({"kind": b.kind, "adapter": b.adapter, "api": b.api, "device_type": b.device_type})
    };
    let (jobs, queue) = mpsc::sync_channel::<Job>(args.queue.max(1));
    let store = if args.in_memory {
        store::Store::in_memory()
    } else {
        let dir = args
            .data_dir
            .clone()
            .or_else(store::default_data_dir)
            .context("no data directory: pass --data-dir DIR or --in-memory")?;
        store::Store::open(&dir)?
    };
    let now = Instant::now();
    let streams: HashMap<String, Stream> = store
        .load()?
        .into_iter()
        .map(|(id, l)| {
            (
                id,
                Stream {
                    partial: l.partial,
                    batches: l.batches,
                    created: now,
                    last_used: now,
                    key_order: {
                        let mut order: Vec<(u64, String)> =
                            l.keys.iter().map(|(k, (_, at))| (*at, k.clone())).collect();
                        order.sort();
                        order.into()
                    },
                    keys: l.keys.into_iter().map(|(k, (a, _))| (k, (a, 0))).collect(),
                    owner: l.owner,
                    sketch: l.sketch,
                },
            )
        })
        .collect();
    eprintln!(
        "microbatch serve: streams in {} ({} restored)",
        store.describe(),
        streams.len()
    );
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        jobs,
        streams: Mutex::new(streams),
        store,
        backend,
        backend_info,
        limits: Limits {
            batch: args.batch_size,
            max_body: args.max_body,
            max_batch: args.max_batch,
            max_streams: args.max_streams,
            max_streams_per_client: args.max_streams_per_client.max(1),
            stream_idle: Duration::from_secs(args.stream_idle_s),
            request_timeout: Duration::from_secs(args.request_timeout_s),
            body_idle: Duration::from_secs(args.body_idle_s.max(1)),
            max_line: args.max_line.max(1),
            key_ttl_s: args.key_ttl_s,
        },
        inflight: Arc::new(tokio::sync::Semaphore::new(args.max_inflight.max(1))),
        metrics: Arc::clone(&metrics),
        token,
        admin_token,
    });

    // The engine thread: the only owner of the device. Batches from every client queue here.
    let engine_metrics = Arc::clone(&metrics);
    let engine_thread = std::thread::Builder::new()
        .name("microbatch-engine".into())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                // Whatever else is already waiting joins this pass (pipelined on the GPU, one
                // readback for all); each batch still gets only its own partial.
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(job) => group.push(job),
                        Err(_) => break,
                    }
                }
                engine_metrics
                    .queue_depth
                    .fetch_sub(group.len(), Ordering::Relaxed);
                let inputs: Vec<_> = group.iter().map(|j| j.batch.as_ref()).collect();
                let result = engine.reduce_each(&inputs);
                drop(inputs);
                match result {
                    Ok((parts, times)) => {
                        engine_metrics.observe(&times, group.len());
                        let total = group
                            .iter()
                            .map(|j| j.batch.as_ref().len())
                            .sum::<usize>()
                            .max(1) as f64;
                        for (job, partial) in group.into_iter().zip(parts) {
                            let share = job.batch.as_ref().len() as f64 / total;
                            let times = times.scaled(share);
                            let _ = job.reply.send(Ok(Done {
                                partial,
                                times,
                                buffer: Some(job.batch),
                            }));
                        }
                    }
                    Err(e) => {
                        for job in group {
                            let _ = job.reply.send(Err(message(&e)));
                        }
                    }
                }
            }
        })?;

    // Every body is read on a blocking thread: the pool outnumbers the permits, so requests
    // past the limit are refused (503), never queued behind stalled ones.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(args.max_inflight.max(1) + 64)
        .build()?;
    let forced = runtime.block_on(async {
        let listener = Listener::bind(args.addr, unix.as_deref()).await?;
        // The first line of stdout: what tests and scripts wait for.
        println!("listening on {}", listener.describe()?);
        use std::io::Write;
        std::io::stdout().flush()?;

        let sweeper = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let idle = sweeper.limits.stream_idle;
                let mut streams = sweeper.streams.lock().unwrap_or_else(|e| e.into_inner());
                let expired: Vec<String> = streams
                    .iter()
                    .filter(|(_, s)| s.last_used.elapsed() >= idle)
                    .map(|(id, _)| id.clone())
                    .collect();
                if !expired.is_empty() {
                    sweeper.store.delete(&expired);
                    streams.retain(|id, _| !expired.contains(id));
                }
                // Idempotency keys past their time are forgotten (memory and store).
                let horizon = store::unix_now().saturating_sub(sweeper.limits.key_ttl_s);
                let mut forget = Vec::new();
                for (id, s) in streams.iter_mut() {
                    while s.key_order.front().is_some_and(|(at, _)| *at < horizon) {
                        let (_, k) = s.key_order.pop_front().expect("checked");
                        s.keys.remove(&k);
                        forget.push((id.clone(), k));
                    }
                }
                sweeper.store.forget_keys(forget);
            }
        });

        // SIGTERM stops accepting and lets in-flight requests finish, for at most the grace
        // period: a client that keeps its connection open cannot hold the server up.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let router = app(Arc::clone(&state));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let connections = Arc::new(tokio::sync::Semaphore::new(args.max_connections.max(1)));
        let header_timeout = Duration::from_secs(args.header_timeout_s.max(1));
        let mut stop_accepting = stopping.clone();
        let conns = Connections {
            router,
            graceful: &graceful,
            limit: connections,
            header_timeout,
        };
        loop {
            tokio::select! {
                accepted = listener.accept(&conns) => {
                    if accepted.is_err() {
                        // Out of file descriptors and the like: back off, keep serving.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                _ = stop_accepting.wait_for(|v| *v) => break,
            }
        }
        drop(listener);
        let grace = Duration::from_secs(args.shutdown_grace_s);
        tokio::select! {
            _ = graceful.shutdown() => Ok::<bool, anyhow::Error>(false),
            _ = tokio::time::sleep(grace) => {
                eprintln!(
                    "microbatch serve: requests still open after {} s (--shutdown-grace-s): closing them",
                    grace.as_secs()
                );
                Ok(true)
            }
        }
    })?;
    // In-flight requests have drained (or the grace period is over); stop the runtime's tasks,
    // close the queue (the last sender is in the state) and let the engine finish.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if forced {
        // Requests cut off may still hold the engine's queue: do not wait for it.
        return Ok(());
    }
    drop(state);
    let _ = engine_thread.join();
    Ok(())
}

/// The CPU backend's kernels get half the cores (unless `RAYON_NUM_THREADS` says otherwise):
/// the other half read the sockets and parse the bodies, which is where a service's time goes.
/// On the 2-core machine a 400 MB body over a Unix socket took ~131 ms with both cores in the
/// pool (its idle threads spin for work, taking turns from the readers) and ~116 ms with one.
fn share_the_cores() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Fails only if the pool already exists; then it stays as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads((cores / 2).max(1))
        .build_global();
}

impl From<BackendArg> for microbatch::BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => microbatch::BackendChoice::Auto,
            BackendArg::Gpu => microbatch::BackendChoice::Gpu,
            BackendArg::Cpu => microbatch::BackendChoice::Cpu,
        }
    }
}

/// Reads a bearer token from `path` (surrounding whitespace dropped); fewer than 16 bytes is
/// refused.
fn read_token(path: &std::path::Path) -> Result<Vec<u8>> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let t = t.trim().as_bytes().to_vec();
    anyhow::ensure!(
        t.len() >= 16,
        "{}: the token is {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
        path.display(),
        t.len()
    );
    Ok(t)
}

fn app(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/devices", get(devices))
        .route("/v1/reduce", post(reduce))
        .route("/v1/streams", post(create_stream).get(list_streams))
        .route("/v1/streams/{id}", get(get_stream).delete(delete_stream))
        .route("/v1/streams/{id}/batches", post(append_batch))
        .route("/v1/streams/{id}/partial", get(stream_partial))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// A JSON error: `{"error": "...", "status": 413}`.
struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header (503).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.message, "status": self.status.as_u16()})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}
