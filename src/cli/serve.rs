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
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{Value, json};

use microbatch::backend::StageTimes;
use microbatch::report::{BatchCounts, Timings};
use microbatch::shard::PartialFile;
use microbatch::source::{Column, Format, InputOptions, TextOptions};
use microbatch::{BackendInfo, Engine, EngineConfig, Partial, Report, list_adapters};

use super::{BackendArg, parse_batch, parse_count, store};

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
    times: StageTimes,
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
                            let times = StageTimes {
                                upload: times.upload.mul_f64(share),
                                compute: times.compute.mul_f64(share),
                                readback: times.readback.mul_f64(share),
                                merge: times.merge.mul_f64(share),
                                compute_clock: times.compute_clock,
                            };
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

/// Where the server listens.
enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    async fn bind(addr: SocketAddr, unix: Option<&std::path::Path>) -> Result<Self> {
        #[cfg(unix)]
        if let Some(path) = unix {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            // A socket file left by a crashed server is replaced; one in use, or anything
            // else at the path, is an error.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                anyhow::ensure!(
                    meta.file_type().is_socket(),
                    "{} exists and is not a socket",
                    path.display()
                );
                anyhow::ensure!(
                    std::os::unix::net::UnixStream::connect(path).is_err(),
                    "{}: another server is listening there",
                    path.display()
                );
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("binding {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {} to this user", path.display()))?;
            return Ok(Self::Unix(listener, path.to_path_buf()));
        }
        let _ = unix;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        Ok(Self::Tcp(listener))
    }

    /// `http://HOST:PORT` or `unix:PATH`, for the first line of stdout.
    fn describe(&self) -> Result<String> {
        Ok(match self {
            Self::Tcp(l) => format!("http://{}", l.local_addr()?),
            #[cfg(unix)]
            Self::Unix(_, path) => format!("unix:{}", path.display()),
        })
    }

    /// Accepts one connection and starts serving it.
    async fn accept(&self, conns: &Connections<'_>) -> io::Result<()> {
        match self {
            Self::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                // A fixed receive buffer of 1 MiB (the kernel doubles it) instead of
                // autotuning: on loopback a 400 MB body arrives in 130 ms instead of 150
                // (2-core machine), and the buffer is only a ceiling: an idle connection
                // holds nothing.
                let _ = socket2::SockRef::from(&tcp).set_recv_buffer_size(RECV_BUFFER);
                // Answers are one write each: nothing to gain from Nagle's delay.
                let _ = tcp.set_nodelay(true);
                conns.serve(tcp, peer.ip().to_string());
            }
            #[cfg(unix)]
            Self::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                // Clients of a socket are told apart by their user.
                let peer = stream
                    .peer_cred()
                    .map_or_else(|_| "unix".to_string(), |c| format!("unix:uid={}", c.uid()));
                conns.serve(stream, peer);
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What every connection is served with.
struct Connections<'a> {
    router: Router,
    graceful: &'a hyper_util::server::graceful::GracefulShutdown,
    /// `--max-connections`.
    limit: Arc<tokio::sync::Semaphore>,
    header_timeout: Duration,
}

impl Connections<'_> {
    /// Serves HTTP/1.1 on `io` in a task of its own, or refuses it past `--max-connections`.
    fn serve<T>(&self, io: T, peer: String)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.limit).try_acquire_owned() else {
            tokio::spawn(refuse_connection(io));
            return;
        };
        let service = hyper_util::service::TowerToHyperService::new(
            self.router.clone().layer(axum::Extension(Peer(peer))),
        );
        let header_timeout = self.header_timeout;
        let watcher = self.graceful.watcher();
        tokio::spawn(async move {
            // The first request line is checked here, so that one hyper cannot parse gets a
            // JSON 400 rather than hyper's empty one.
            let Some(io) = first_line_checked(io, header_timeout).await else {
                drop(permit);
                return;
            };
            // A timer makes hyper enforce the header-read timeout, which also closes
            // connections idle between requests.
            // hyper's own limits sit far above ours, so that a long URI or large headers
            // reach `guard` and get a JSON 414/431 rather than hyper's empty one.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(1 << 20)
                .max_headers(1024)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let _ = watcher.watch(conn).await;
            drop(permit);
        });
    }
}

/// Reads a connection's first request line (within the header timeout) and checks its form,
/// `METHOD SP TARGET SP HTTP/1.x`: a malformed one is answered with a JSON 400 and the
/// connection closed (`None`); a good one is handed back to be read again by hyper. A line
/// too long for us reaches hyper, whose answer is then our JSON 414. (Later requests on a
/// kept-alive connection are parsed by hyper alone.)
async fn first_line_checked<T>(mut io: T, timeout: Duration) -> Option<Rewind<T>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(1024);
    let read = async {
        loop {
            // Up to the first line end (empty lines before it are ignored, RFC 9112 §2.2),
            // or as much as the URI limit allows.
            let start = leading_blank(&head);
            if head[start..].contains(&b'\n') || head.len() > MAX_URI + 64 {
                return true;
            }
            let mut chunk = [0u8; 2048];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(true) => {}
        // Closed, failed or silent: nothing to answer (hyper would time it out the same way).
        _ => return None,
    }
    let start = leading_blank(&head);
    if let Some(end) = head[start..].iter().position(|&b| b == b'\n')
        && let Err(why) = check_request_line(&head[start..start + end])
    {
        use tokio::io::AsyncWriteExt;
        let body =
            json!({"error": format!("malformed request line: {why}"), "status": 400}).to_string();
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), io.write_all(response.as_bytes())).await;
        return None;
    }
    Some(Rewind {
        head: axum::body::Bytes::from(head),
        io,
    })
}

/// The length of the empty lines (CR, LF) at the start of `head`.
fn leading_blank(head: &[u8]) -> usize {
    head.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Checks `METHOD SP TARGET SP HTTP/1.x` (RFC 9112 §3; a trailing CR allowed).
fn check_request_line(line: &[u8]) -> Result<(), &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected METHOD TARGET HTTP/1.1");
    };
    // A method is a token (RFC 9110 §5.6.2).
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if method.is_empty() || !method.iter().all(tchar) {
        return Err("the method is not a token");
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err("the target is empty or holds control or non-ASCII bytes");
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err("only HTTP/1.1 and HTTP/1.0 are served");
    }
    Ok(())
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind<T> {
    head: axum::body::Bytes,
    io: T,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let head = self.head.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Each connection's socket receive buffer, in bytes.
const RECV_BUFFER: usize = 1 << 20;

/// Answers a connection past `--max-connections` with a JSON 503 and closes it.
async fn refuse_connection(mut tcp: impl tokio::io::AsyncWrite + Unpin) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too many connections are open (--max-connections): retry shortly","status":503}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
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

/// Longest request target we serve (414 past it).
const MAX_URI: usize = 8 << 10;
/// Most header bytes a request may carry (431 past it).
const MAX_HEADER_BYTES: usize = 64 << 10;

/// Request-line and header limits, authentication and per-route request counting.
async fn guard(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let uri_len = req.uri().to_string().len();
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let limit = if uri_len > MAX_URI {
        Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {uri_len} bytes; the limit is {MAX_URI}"),
        ))
    } else if header_bytes > MAX_HEADER_BYTES {
        Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        ))
    } else {
        None
    };
    if let Some(e) = limit {
        let mut r = e.into_response();
        close_after(&mut r);
        state.metrics.request("(refused)", r.status());
        return r;
    }
    let route = req.uri().path().to_string();
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes())
        .unwrap_or(&[]);
    let admin = state
        .admin_token
        .as_ref()
        .is_some_and(|t| constant_time_eq(given, t));
    // /healthz reveals nothing and answers without the token (load balancers probe it).
    if let Some(token) = state.token.as_ref().filter(|_| route != "/healthz")
        && !admin
        && !constant_time_eq(given, token)
    {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
            .into_response();
        close_after(&mut r);
        state.metrics.request(&route, r.status());
        return r;
    }
    req.extensions_mut().insert(Admin(admin));
    let post = req.method() == axum::http::Method::POST;
    let mut r = next.run(req).await;
    // A refused POST may leave its body unread: say that the connection closes after it.
    if post && (r.status().is_client_error() || r.status().is_server_error()) {
        close_after(&mut r);
    }
    state.metrics.request(&route, r.status());
    r
}

fn close_after(r: &mut Response) {
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(state): State<Shared>) -> Response {
    axum::Json(json!({"status": "ok", "backend": state.backend})).into_response()
}

async fn devices() -> Response {
    axum::Json(serde_json::to_value(list_adapters()).unwrap_or(Value::Null)).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    let open = state.streams.lock().map(|s| s.len()).unwrap_or(0);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(open),
    )
        .into_response()
}

/// The query parameters a body-reading route accepts.
const BODY_PARAMS: &[&str] = &[
    "dtype",
    "endian",
    "column",
    "header",
    "delimiter",
    "null",
    "skip_invalid",
    "ddof",
];

/// Refuses any query parameter not in `accepted` (a misspelt `?colum=` must not silently reduce
/// column 0), naming the accepted ones.
fn check_params(query: &HashMap<String, String>, accepted: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| !accepted.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "unknown query parameter{} {}; this route accepts: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            if accepted.is_empty() {
                "none".to_string()
            } else {
                accepted.join(", ")
            }
        ),
    ))
}

/// A boolean query parameter: exactly `true`, `false`, `1` or `0`.
fn flag(query: &HashMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match query.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{name} must be true, false, 1 or 0, got {other:?}"),
        )),
    }
}

/// How to read a body: from its Content-Type and Content-Encoding and the query (`column`,
/// `header`, `delimiter`, `null`, `dtype`, `endian`, `skip_invalid`). Without a declared type
/// (none, or the form encoding curl sends by default) the format is detected from the content
/// as the CLI does; a declared type that is not an input format is 415.
fn input_options(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<InputOptions, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match mime.as_str() {
        "application/x-www-form-urlencoded" | "" => None,
        "application/octet-stream" => Some(Format::Raw),
        "application/x-npy" => Some(Format::Npy),
        "text/csv" => Some(Format::Csv),
        "text/tab-separated-values" => Some(Format::Tsv),
        "text/plain" => Some(Format::Txt),
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {other:?}: application/octet-stream (raw), application/x-npy, text/csv, text/tab-separated-values, text/plain"
                ),
            ));
        }
    };
    let mut o = InputOptions {
        format,
        ..InputOptions::default()
    };
    if let Some(d) = query.get("dtype") {
        o.dtype = Some(d.parse().map_err(bad)?);
    }
    if let Some(e) = query.get("endian") {
        o.endian = e.parse().map_err(bad)?;
    }
    let mut text = TextOptions::default();
    if let Some(c) = query.get("column") {
        text.column = c.parse::<Column>().expect("infallible");
    }
    text.header = flag(query, "header")?;
    if let Some(d) = query.get("delimiter") {
        text.delimiter = Some(super::parse_delimiter(d).map_err(bad)?);
    }
    if let Some(n) = query.get("null") {
        text.nulls = n.split(',').map(str::to_string).collect();
    }
    text.skip_invalid = flag(query, "skip_invalid")?.unwrap_or(false);
    o.text = text;
    Ok(o)
}

/// A body's Content-Encoding: decoded on the fly (anything else is 415).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

fn encoding_of(headers: &HeaderMap) -> Result<Encoding, ApiError> {
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
fn check_length(state: &AppState, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
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
struct BodySpec {
    options: InputOptions,
    encoding: Encoding,
    /// The declared Content-Length.
    length: Option<u64>,
    /// Most elements the body may hold (a stream's batch: `--max-batch`).
    max_elements: Option<usize>,
}

impl BodySpec {
    /// Checks the headers and query of a body-reading request.
    fn of(
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
        })
    }

    /// A small body sent as is: gathered whole without a thread of its own, and reduced where
    /// it was gathered (what is decoded from it is at most its own size, so it cannot hold a
    /// worker for long).
    fn small(&self) -> bool {
        self.encoding == Encoding::Identity && self.length.is_some_and(|n| n <= SMALL_BODY)
    }
}

/// Bodies up to this many bytes (with a Content-Length, not compressed) take the small path:
/// no blocking thread, no engine queue on the CPU backend. ~1 ms of text parsing at most.
const SMALL_BODY: u64 = 64 << 10;

/// Refuses a text body's line longer than `max` bytes (counted from the last `\n` or `\r`).
struct LineGuard {
    inner: Box<dyn std::io::Read + Send>,
    run: u64,
    max: u64,
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
struct LineTooLong(u64);
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
struct BodyIdle(Duration);
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
struct BodyTooLarge(u64);
impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the body exceeds the limit of {} bytes", self.0)
    }
}
impl std::error::Error for BodyTooLarge {}

/// Marks the error a body reader returns once its request has timed out.
#[derive(Debug)]
struct Cancelled;
impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request timed out")
    }
}
impl std::error::Error for Cancelled {}

/// What reducing a body gave: each batch's report, the input's shape (`.npy`), and the text
/// fields skipped as invalid.
type Reduced = (Vec<Done>, BodyInfo);

/// What the source said about a body, for the answer's `input` (as `run --json` has it).
struct BodyInfo {
    shape: Option<Vec<u64>>,
    skipped: u64,
    nulls: u64,
    dtype: String,
    precision: &'static str,
}

/// Turns a streamed body into a blocking reader (for a blocking thread) that counts what
/// arrives into `received`, ends in [`BodyIdle`] when the client stalls, in [`BodyTooLarge`]
/// past `--max-body`, and in [`Cancelled`] once `cancel` is set.
///
/// A task on the runtime pumps the body into a [`Pipe`] as fast as it arrives (hyper reads the
/// socket only while its body is polled), and the reader wakes once a whole [`PIPE_WAKE`] is
/// there rather than for each socket read: a 400 MB body costs a few hundred thread wake-ups,
/// not tens of thousands.
fn body_reader(
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
const PIPE_WAKE: usize = 1 << 20;
/// Bytes a [`Pipe`] holds at most: the writer waits past it.
const PIPE_CAP: usize = 8 << 20;

/// Chunks of a body on their way from the runtime to a blocking reader.
#[derive(Default)]
struct Pipe {
    inner: Mutex<PipeState>,
    /// Wakes the reader.
    ready: std::sync::Condvar,
    /// Wakes the writer.
    room: tokio::sync::Notify,
}

#[derive(Default)]
struct PipeState {
    chunks: std::collections::VecDeque<axum::body::Bytes>,
    buffered: usize,
    /// Set when the body has ended: `Ok` at its end, the error that cut it short.
    end: Option<io::Result<()>>,
    /// Set when the reader is gone: the writer stops.
    abandoned: bool,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// Adds a chunk, waiting while the pipe is full.
    async fn push(&self, chunk: axum::body::Bytes) {
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

    fn finish(&self, end: io::Result<()>) {
        self.lock().end = Some(end);
        self.ready.notify_one();
    }
}

/// The blocking end of a [`Pipe`].
struct PipeReader(Arc<Pipe>);

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
async fn gather_body(state: &AppState, body: Body, length: u64) -> Result<Vec<u8>, ApiError> {
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
enum Reducer {
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
fn reduce_reader(
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
            let times = StageTimes {
                compute: t.elapsed(),
                ..StageTimes::default()
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
        },
    ))
}

/// An input error as an HTTP error: limits and timeouts by their own codes, the rest 400.
fn api_error(e: microbatch::Error) -> ApiError {
    if let microbatch::Error::Io { error, .. } = &e
        && let Some(inner) = error.get_ref()
    {
        if inner.is::<BodyTooLarge>() || inner.is::<LineTooLong>() {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, inner.to_string());
        }
        if inner.is::<Cancelled>() || inner.is::<BodyIdle>() {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, inner.to_string());
        }
    }
    ApiError::new(StatusCode::BAD_REQUEST, message(&e))
}

/// An error and its sources, as one line (`<request body>: line 3: …`).
fn message(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Reduces a request's body under the request timeout: a small body gathered and reduced on
/// the spot ([`BodySpec::small`]), any other streamed through a blocking thread.
async fn reduce_request(state: Shared, body: Body, spec: BodySpec) -> Result<Reduced, ApiError> {
    let permit = Arc::clone(&state.inflight)
        .try_acquire_owned()
        .map_err(|_| {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests are reading a body (--max-inflight): retry shortly",
            );
            e.retry_after = Some(1);
            e
        })?;
    let timeout = state.limits.request_timeout;
    let timed_out = || {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s", timeout.as_secs()),
        )
    };
    if spec.small() {
        let length = spec.length.unwrap_or(0);
        let bytes = tokio::time::timeout(timeout, gather_body(&state, body, length))
            .await
            .map_err(|_| timed_out())??;
        state
            .metrics
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let reader: Box<dyn std::io::Read + Send> = Box::new(io::Cursor::new(bytes));
        if state.backend_info.kind == microbatch::BackendKind::Cpu {
            return reduce_reader(&state, reader, &spec, Reducer::Here);
        }
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            reduce_reader(&state, reader, &spec, Reducer::Engine)
        });
        return match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            )),
            Err(_) => Err(timed_out()),
        };
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = body_reader(&state, body, Arc::clone(&received), Arc::clone(&cancel));
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = reduce_reader(&state, reader, &spec, Reducer::Engine);
        state
            .metrics
            .bytes
            .fetch_add(received.load(Ordering::Relaxed), Ordering::Relaxed);
        result
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(_) => {
            cancel.store(true, Ordering::Relaxed);
            Err(timed_out())
        }
    }
}

/// The answer to `POST /v1/reduce`: the object `microbatch run --json` prints.
fn report_json(
    state: &AppState,
    done: &[Done],
    info: BodyInfo,
    ddof: u32,
    total: Duration,
) -> Value {
    let mut partial = Partial::EMPTY;
    let mut t = StageTimes::default();
    for d in done {
        partial.merge(&d.partial);
        t.upload += d.times.upload;
        t.compute += d.times.compute;
        t.readback += d.times.readback;
        t.merge += d.times.merge;
        t.compute_clock = d.times.compute_clock;
    }
    let report = Report {
        stats: partial.finish(ddof, false),
        backend: state.backend_info.clone(),
        batches: BatchCounts {
            count: done.len() as u64,
            size: state.limits.batch,
            workgroups: state.backend_info.workgroups,
        },
        timings: Timings {
            read: Duration::ZERO,
            upload: t.upload,
            compute: t.compute,
            readback: t.readback,
            merge: t.merge,
            total,
            compute_clock: t.compute_clock,
        },
        partial,
    };
    let mut v = report.to_json();
    // The batch's mergeable state, as in a partial file: a batching client (`run --remote`)
    // merges these exactly, nothing rebuilt from rounded statistics.
    v["partial"] = PartialFile {
        partial,
        ddof,
        skip_nan: false,
        inputs: vec!["<request body>".to_string()],
        skipped_invalid: info.skipped,
    }
    .to_json();
    v["input"] = json!({
        "sources": [{
            "name": "<request body>",
            "shape": info.shape,
            "dtype": info.dtype,
            "precision": info.precision,
            "nulls": info.nulls,
            "skipped_invalid": info.skipped,
        }],
        "skipped_invalid": info.skipped,
    });
    v
}

async fn reduce(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    // Everything about the request is checked before any of its body is read.
    let spec = BodySpec::of(&state, &headers, &query, None)?;
    let ddof = ddof_of(&query)?;
    let (done, info) = reduce_request(Arc::clone(&state), body, spec).await?;
    let v = report_json(&state, &done, info, ddof, start.elapsed());
    Ok(axum::Json(v).into_response())
}

fn ddof_of(query: &HashMap<String, String>) -> Result<u32, ApiError> {
    match query.get("ddof") {
        None => Ok(DEFAULT_DDOF),
        Some(d) => d.parse::<u32>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("ddof must be an integer ≥ 0, got {d:?}"),
            )
        }),
    }
}

/// `GET /v1/streams`: every open stream with its owner, batches, count, age and idle time
/// (admin token only), oldest first.
async fn list_streams(
    State(state): State<Shared>,
    axum::Extension(Admin(admin)): axum::Extension<Admin>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &[])?;
    if !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            if state.admin_token.is_some() {
                "listing streams needs the admin token (--admin-token-file)"
            } else {
                "listing streams needs the admin token, and this server has none (--admin-token-file)"
            },
        ));
    }
    let mut rows: Vec<(f64, Value)> = {
        let streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .iter()
            .map(|(id, s)| {
                let age = s.created.elapsed().as_secs_f64();
                (
                    age,
                    json!({
                        "id": id,
                        "owner": s.owner,
                        "batches": s.batches,
                        "count": s.partial.count,
                        "age_s": age,
                        "idle_s": s.last_used.elapsed().as_secs_f64(),
                    }),
                )
            })
            .collect()
    };
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let list: Vec<Value> = rows.into_iter().map(|(_, v)| v).collect();
    Ok(axum::Json(json!({"streams": list, "open": list.len()})).into_response())
}

async fn create_stream(
    State(state): State<Shared>,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &[])?;
    let (id, ticket) = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.len() >= state.limits.max_streams {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} streams are open, the limit (--max-streams)",
                    streams.len()
                ),
            ));
        }
        let mine = streams.values().filter(|s| s.owner == peer).count();
        if mine >= state.limits.max_streams_per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this client ({peer}) has {mine} streams open, the limit (--max-streams-per-client): delete some first"
                ),
            ));
        }
        // 128 random bits: only whoever was given the id can use the stream.
        let id = format!("s{:032x}", rand::random::<u128>());
        let ticket = state
            .store
            .save(&id, &Partial::EMPTY, 0, &peer, None)
            .map_err(store_error)?;
        let now = Instant::now();
        streams.insert(
            id.clone(),
            Stream {
                partial: Partial::EMPTY,
                batches: 0,
                created: now,
                last_used: now,
                keys: HashMap::new(),
                key_order: std::collections::VecDeque::new(),
                owner: peer,
            },
        );
        (id, ticket)
    };
    state.store.wait(ticket).await;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response())
}

fn store_error(e: anyhow::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the stream store failed, nothing was applied: {e:#}"),
    )
}

/// The `Idempotency-Key` of a batch: any string of 1 to 128 bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
    let k = v
        .to_str()
        .map_err(|_| bad("the Idempotency-Key must be visible ASCII"))?;
    if k.is_empty() || k.len() > 128 {
        return Err(bad("the Idempotency-Key must be 1 to 128 bytes"));
    }
    Ok(Some(k.to_string()))
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no stream {id:?} (never created, deleted, or expired)"),
    )
}

fn stream_json(state: &AppState, id: &str, s: &Stream, ddof: u32) -> Value {
    stream_view(state, id, &s.partial, s.batches, s.created, ddof)
}

fn stream_view(
    state: &AppState,
    id: &str,
    partial: &Partial,
    batches: u64,
    created: Instant,
    ddof: u32,
) -> Value {
    json!({
        "id": id,
        "batches": batches,
        "stats": Report::stats_json(&partial.finish(ddof, false)),
        "age_s": created.elapsed().as_secs_f64(),
        "backend": state.backend,
    })
}

async fn append_batch(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Everything is validated before anything is read or applied: a refused batch is never
    // merged (a client that retries after a 400 must not count its data twice).
    let spec = BodySpec::of(&state, &headers, &query, Some(state.limits.max_batch))?;
    let ddof = ddof_of(&query)?;
    let key = idempotency_key(&headers)?;
    let replay = |answer: &str| -> Response {
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("idempotent-replay"), "true"),
            ],
            answer.to_string(),
        )
            .into_response()
    };
    let seen = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        // The upload counts as use: the stream cannot expire while its batch arrives.
        let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
        s.last_used = Instant::now();
        key.as_ref().and_then(|k| s.keys.get(k)).cloned()
    };
    // A key already applied: the original answer (once it is on disk), nothing applied again.
    if let Some((answer, ticket)) = seen {
        state.store.wait(ticket).await;
        return Ok(replay(&answer));
    }
    let (done, _) = reduce_request(Arc::clone(&state), body, spec).await?;
    // All of the batch is reduced: apply it whole, and commit its effect and its key before
    // answering.
    let mut batch = Partial::EMPTY;
    for d in &done {
        batch.merge(&d.partial);
    }
    let (answer, ticket, replayed) = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
        // The same key may have arrived twice at once: only the first applies.
        if let Some((answer, ticket)) = key.as_ref().and_then(|k| s.keys.get(k)) {
            (answer.clone(), *ticket, true)
        } else {
            let now_s = store::unix_now();
            let mut partial = s.partial;
            partial.merge(&batch);
            let batches = s.batches + 1;
            let answer = stream_view(&state, &id, &partial, batches, s.created, ddof).to_string();
            // Queued under the lock, so the store sees this stream's states in order.
            let ticket = state
                .store
                .save(
                    &id,
                    &partial,
                    batches,
                    &s.owner,
                    key.as_deref().map(|k| (k, answer.as_str(), now_s)),
                )
                .map_err(store_error)?;
            s.partial = partial;
            s.batches = batches;
            s.last_used = Instant::now();
            if let Some(k) = key {
                s.key_order.push_back((now_s, k.clone()));
                s.keys.insert(k, (answer.clone(), ticket));
            }
            state.metrics.batches.fetch_add(1, Ordering::Relaxed);
            (answer, ticket, false)
        }
    };
    // Committed (with everything else waiting, in one transaction) before the answer goes out.
    state.store.wait(ticket).await;
    if replayed {
        return Ok(replay(&answer));
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
        .into_response())
}

async fn get_stream(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &["ddof"])?;
    let ddof = ddof_of(&query)?;
    let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
    let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
    s.last_used = Instant::now();
    Ok(axum::Json(stream_json(&state, &id, s, ddof)).into_response())
}

async fn stream_partial(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &[])?;
    let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
    let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
    s.last_used = Instant::now();
    let file = PartialFile {
        partial: s.partial,
        ddof: DEFAULT_DDOF,
        skip_nan: false,
        inputs: vec![format!("stream {id}")],
        skipped_invalid: 0,
    };
    Ok(axum::Json(file.to_json()).into_response())
}

async fn delete_stream(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &[])?;
    let (s, ticket) = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        if !streams.contains_key(&id) {
            return Err(unknown(&id));
        }
        let ticket = state.store.delete(std::slice::from_ref(&id));
        let s = streams.remove(&id).ok_or_else(|| unknown(&id))?;
        (s, ticket)
    };
    state.store.wait(ticket).await;
    Ok(axum::Json(stream_json(&state, &id, &s, DEFAULT_DDOF)).into_response())
}

/// Prometheus metrics: requests by route and status, bytes, batches, queue depth, open streams,
/// and a histogram of every engine stage's time per batch.
#[derive(Default)]
struct Metrics {
    requests: Mutex<HashMap<(String, u16), u64>>,
    bytes: AtomicU64,
    batches: AtomicU64,
    engine_batches: AtomicU64,
    queue_depth: AtomicUsize,
    stages: Mutex<[Histogram; 4]>,
}

/// Upper bounds of the stage-time histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0,
];
const STAGES: [&str; 4] = ["upload", "compute", "readback", "merge"];

#[derive(Default, Clone, Copy)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, x: f64) {
        for (b, c) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if x <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += x;
    }
}

impl Metrics {
    fn request(&self, route: &str, status: StatusCode) {
        // Stream ids are not labels: they would grow without bound.
        let route = if route.starts_with("/v1/streams/") {
            if route.ends_with("/batches") {
                "/v1/streams/{id}/batches"
            } else if route.ends_with("/partial") {
                "/v1/streams/{id}/partial"
            } else {
                "/v1/streams/{id}"
            }
        } else {
            match route {
                "/healthz" | "/metrics" | "/v1/devices" | "/v1/reduce" | "/v1/streams" => route,
                _ => "other",
            }
        };
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((route.to_string(), status.as_u16())).or_default() += 1;
    }

    /// Records one engine pass over `batches` batches.
    fn observe(&self, t: &StageTimes, batches: usize) {
        self.engine_batches
            .fetch_add(batches as u64, Ordering::Relaxed);
        let mut h = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        for (i, d) in [t.upload, t.compute, t.readback, t.merge]
            .into_iter()
            .enumerate()
        {
            h[i].observe(d.as_secs_f64());
        }
    }

    fn render(&self, open_streams: usize) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP microbatch_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE microbatch_requests_total counter");
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<_> = requests.iter().collect();
        keys.sort();
        for ((route, status), n) in keys {
            let _ = writeln!(
                out,
                "microbatch_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        for (name, help, kind, value) in [
            (
                "microbatch_body_bytes_total",
                "Request body bytes reduced.",
                "counter",
                self.bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "microbatch_stream_batches_total",
                "Batches appended to streams.",
                "counter",
                self.batches.load(Ordering::Relaxed) as f64,
            ),
            (
                "microbatch_engine_batches_total",
                "Micro-batches the engine reduced.",
                "counter",
                self.engine_batches.load(Ordering::Relaxed) as f64,
            ),
            (
                "microbatch_queue_depth",
                "Batches waiting for the engine.",
                "gauge",
                self.queue_depth.load(Ordering::Relaxed) as f64,
            ),
            (
                "microbatch_streams_open",
                "Streams open.",
                "gauge",
                open_streams as f64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP microbatch_stage_seconds Engine time per pass (one or more queued micro-batches), by stage."
        );
        let _ = writeln!(out, "# TYPE microbatch_stage_seconds histogram");
        let h = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        for (stage, h) in STAGES.iter().zip(h.iter()) {
            for (b, c) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "microbatch_stage_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "microbatch_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "microbatch_stage_seconds_sum{{stage=\"{stage}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "microbatch_stage_seconds_count{{stage=\"{stage}\"}} {}",
                h.count
            );
        }
        out
    }
}
