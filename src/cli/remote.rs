//! `run --remote`: the batching service. Inputs are read and cut into micro-batches here; each
//! batch goes to one of the processing services (`microbatch serve`) as a `POST /v1/reduce`
//! body; the answers' mergeable partials are merged here in batch order (deterministic,
//! whatever server answered when). `/v1/reduce` keeps no state, so a batch whose request fails
//! (refused, reset, timed out, 5xx) is simply sent again, to another server where there is one:
//! nothing is lost and nothing is counted twice.
//!
//! Each server has a window of requests in flight (one connection each, kept alive); the reader
//! waits while every window is full, so memory is bounded by the windows whatever the input.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::http::{Client, Endpoint, HttpError};
use microbatch::Partial;
use microbatch::backend::BatchRef;
use microbatch::shard::{PARTIAL_VERSION, PartialFile};
use microbatch::sketch::Sketch;
use microbatch::source::{BatchBuf, BatchSource, Element, read_batch};

/// Requests in flight per server.
const WINDOW: usize = 2;
/// Consecutive failures after which a server rests (0.25 s, doubling up to 4 s while it keeps
/// failing).
const DOWN_AFTER: u32 = 3;
/// Times one batch may fail before the run gives up: with every server down, about 8 s of
/// pauses.
const MAX_TRIES: u32 = 8;
/// A request with no progress for this long has failed (and is sent again).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// One batch on its way: its index, body and query.
struct Job {
    index: u64,
    body: Vec<u8>,
    dtype: &'static str,
    tries: u32,
    /// The server that failed it last (tried elsewhere first).
    avoid: Option<usize>,
}

/// What one server did, for the report.
#[derive(Default, Clone)]
pub(crate) struct ServerStats {
    pub url: String,
    pub batches: u64,
    pub bytes: u64,
    pub retries: u64,
    pub busy: Duration,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    in_flight: usize,
    /// Finished batches' partials (and sketches), merged into `merged` in index order.
    done: BTreeMap<u64, (Partial, Option<Sketch>)>,
    next: u64,
    merged: Partial,
    /// The answers' quantile sketches merged (when quantiles are asked for).
    sketch: Option<Sketch>,
    servers: Vec<ServerStats>,
    /// Consecutive failures per server.
    failures: Vec<u32>,
    /// A failing server is left alone until then (while another is alive), with a backoff that
    /// doubles (0.25 s to 4 s) while it keeps failing.
    rest_until: Vec<Option<Instant>>,
    backoff: Vec<Duration>,
    /// Set when the run must stop (an error no retry can mend).
    fatal: Option<String>,
    /// No more jobs will be queued.
    closed: bool,
    /// The first answer's backend description and P.
    backend: Option<Value>,
    workgroups: u32,
    /// The servers' compute time, summed over batches (from their answers).
    server_compute: Duration,
    /// Merging the answers here.
    merge: Duration,
}

/// Where a remote run's time went, for the report's stages.
pub(crate) struct RemoteTimes {
    /// Reading the inputs and cutting them into request bodies, here.
    pub read: Duration,
    /// Waiting for a free window: the time the network and the servers set the pace.
    pub wait: Duration,
    /// The servers' own compute time, summed over batches.
    pub server_compute: Duration,
    /// Merging the answers' partials, here.
    pub merge: Duration,
    /// The servers' workgroups per batch (P), from the first answer.
    pub workgroups: u32,
}

/// The client side of the processing services.
pub(crate) struct Remote {
    state: Arc<(Mutex<State>, Condvar)>,
    workers: Vec<std::thread::JoinHandle<()>>,
    batch_size: usize,
    next_index: u64,
    capacity: usize,
    read: Duration,
    wait: Duration,
}

impl Remote {
    /// Starts `WINDOW` workers per server. `token` is sent as a bearer token.
    pub fn start(
        urls: &[String],
        endpoints: Vec<Endpoint>,
        token: Option<String>,
        ddof: u32,
        quantile_error: Option<f64>,
        batch_size: usize,
    ) -> Self {
        let state = Arc::new((
            Mutex::new(State {
                servers: urls
                    .iter()
                    .map(|u| ServerStats {
                        url: u.clone(),
                        ..ServerStats::default()
                    })
                    .collect(),
                failures: vec![0; urls.len()],
                rest_until: vec![None; urls.len()],
                backoff: vec![Duration::from_millis(250); urls.len()],
                merged: Partial::EMPTY,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let mut workers = Vec::new();
        for (s, (url, endpoint)) in urls.iter().zip(endpoints).enumerate() {
            for _ in 0..WINDOW {
                let (state, token) = (Arc::clone(&state), token.clone());
                let (url, endpoint) = (url.clone(), endpoint.clone());
                workers.push(std::thread::spawn(move || {
                    let mut client = Client::new(endpoint, REQUEST_TIMEOUT);
                    let ask = Ask {
                        token: token.as_deref(),
                        ddof,
                        quantile_error,
                    };
                    work(s, &url, &mut client, &ask, &state)
                }));
            }
        }
        Self {
            state,
            workers,
            batch_size,
            next_index: 0,
            capacity: urls.len() * WINDOW * 2,
            read: Duration::ZERO,
            wait: Duration::ZERO,
        }
    }

    /// Sends every batch of `source`; returns how many.
    pub fn send_all(&mut self, source: &mut dyn BatchSource) -> Result<u64> {
        let mut sent = 0;
        let mut buf = BatchBuf::default();
        loop {
            let t = Instant::now();
            let (body, dtype) = match source.lend_batch(self.batch_size)? {
                Some(lent) => match body_of(lent) {
                    Some(b) => b,
                    None => return Ok(sent),
                },
                None => {
                    let (n, element) = read_batch(source, &mut buf, self.batch_size)?;
                    if n == 0 {
                        return Ok(sent);
                    }
                    let lent = match element {
                        Element::F32 => BatchRef::F32(&buf.f32),
                        Element::F64 => BatchRef::F64(&buf.f64),
                        Element::Int => BatchRef::Int(&buf.int, source.int_offset()),
                    };
                    body_of(lent).expect("non-empty")
                }
            };
            self.read += t.elapsed();
            self.push(body, dtype)?;
            sent += 1;
        }
    }

    fn push(&mut self, body: Vec<u8>, dtype: &'static str) -> Result<()> {
        let (lock, wake) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: wait while the queue and the windows are full.
        let t = Instant::now();
        while st.fatal.is_none() && st.queue.len() + st.in_flight >= self.capacity {
            st = wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        self.wait += t.elapsed();
        if let Some(e) = &st.fatal {
            bail!("{e}");
        }
        st.queue.push_back(Job {
            index: self.next_index,
            body,
            dtype,
            tries: 0,
            avoid: None,
        });
        self.next_index += 1;
        wake.notify_all();
        Ok(())
    }

    /// Waits for every batch; returns the merged partial, each server's figures, the
    /// backend the first answer named and where the time went.
    pub fn finish(mut self) -> Result<Finished> {
        let (lock, wake) = &*self.state;
        {
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
            wake.notify_all();
            let t = Instant::now();
            while st.fatal.is_none() && st.next < self.next_index {
                st = wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            self.wait += t.elapsed();
            // Workers stop once closed and idle (or on a fatal error).
            wake.notify_all();
        }
        for w in self.workers {
            let _ = w.join();
        }
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &st.fatal {
            bail!("{e}");
        }
        let times = RemoteTimes {
            read: self.read,
            wait: self.wait,
            server_compute: st.server_compute,
            merge: st.merge,
            workgroups: st.workgroups,
        };
        Ok(Finished {
            partial: st.merged,
            sketch: st.sketch.clone(),
            servers: st.servers.clone(),
            backend: st.backend.clone(),
            times,
        })
    }
}

/// What a remote run gathered: the merged partial (and sketch, with quantiles), each server's
/// figures, the backend the first answer named, and where the time went.
pub(crate) struct Finished {
    pub partial: Partial,
    pub sketch: Option<Sketch>,
    pub servers: Vec<ServerStats>,
    pub backend: Option<Value>,
    pub times: RemoteTimes,
}

/// What every request asks of the servers.
struct Ask<'a> {
    token: Option<&'a str>,
    ddof: u32,
    /// A sketch of each batch, at this relative error (the run's quantiles).
    quantile_error: Option<f64>,
}

/// A batch as a request body and its `?dtype=`; `None` for an empty batch (the end).
fn body_of(batch: BatchRef<'_>) -> Option<(Vec<u8>, &'static str)> {
    if batch.is_empty() {
        return None;
    }
    Some(match batch {
        BatchRef::F32(v) => (bytemuck::cast_slice(v).to_vec(), "f32"),
        BatchRef::F64(v) => (bytemuck::cast_slice(v).to_vec(), "f64"),
        BatchRef::Int(v, 0) => (bytemuck::cast_slice(v).to_vec(), "i64"),
        // u64 inputs are held as value − 2^63: sent as the u64 values they are.
        BatchRef::Int(v, _) => (
            v.iter()
                .flat_map(|&x| ((x as u64) ^ (1 << 63)).to_le_bytes())
                .collect(),
            "u64",
        ),
    })
}

/// One worker: takes batches for server `s`, sends them, files the answers.
fn work(s: usize, url: &str, client: &mut Client, ask: &Ask<'_>, state: &(Mutex<State>, Condvar)) {
    let (lock, wake) = state;
    loop {
        let job = {
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if st.fatal.is_some() || (st.closed && st.queue.is_empty() && st.in_flight == 0) {
                    return;
                }
                let others_alive = st
                    .failures
                    .iter()
                    .enumerate()
                    .any(|(i, &f)| i != s && f < DOWN_AFTER);
                // A server that keeps failing rests (with a growing pause), so that a batch is
                // tried elsewhere first, and a server that restarts gets time to come back.
                let resting = st.rest_until[s].is_some_and(|t| Instant::now() < t);
                let pick = if resting {
                    None
                } else {
                    st.queue
                        .iter()
                        .position(|j| j.avoid != Some(s) || !others_alive)
                };
                if let Some(i) = pick {
                    let job = st.queue.remove(i).expect("found");
                    st.in_flight += 1;
                    break job;
                }
                let (g, _) = wake
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
            }
        };
        let t = Instant::now();
        let outcome = send(url, client, ask, &job);
        let busy = t.elapsed();
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.in_flight -= 1;
        st.servers[s].busy += busy;
        match outcome {
            Ok(Answer {
                partial,
                sketch,
                backend,
                workgroups,
                compute,
            }) => {
                st.failures[s] = 0;
                st.rest_until[s] = None;
                st.backoff[s] = Duration::from_millis(250);
                st.servers[s].batches += 1;
                st.servers[s].bytes += job.body.len() as u64;
                if st.backend.is_none() {
                    st.backend = Some(backend);
                    st.workgroups = workgroups;
                }
                st.server_compute += compute;
                st.done.insert(job.index, (partial, sketch));
                // Merge in batch order: the result does not depend on who answered when.
                let t = Instant::now();
                loop {
                    let next = st.next;
                    let Some((p, sketch)) = st.done.remove(&next) else {
                        break;
                    };
                    st.merged.merge(&p);
                    if let Some(b) = sketch {
                        match &mut st.sketch {
                            None => st.sketch = Some(b),
                            Some(a) => {
                                if let Err(e) = a.merge(&b) {
                                    st.fatal = Some(format!("{url}: {e}"));
                                }
                            }
                        }
                    }
                    st.next += 1;
                }
                st.merge += t.elapsed();
            }
            Err(Failure::Fatal(e)) => {
                st.fatal = Some(format!("{url}: {e}"));
            }
            Err(Failure::Retry(e)) => {
                st.failures[s] += 1;
                if st.failures[s] >= DOWN_AFTER {
                    let pause = st.backoff[s];
                    st.rest_until[s] = Some(Instant::now() + pause);
                    st.backoff[s] = (pause * 2).min(Duration::from_secs(4));
                }
                st.servers[s].retries += 1;
                st.servers[s].last_error = Some(e.clone());
                let tries = job.tries + 1;
                if tries >= MAX_TRIES {
                    let servers = st
                        .servers
                        .iter()
                        .map(|v| {
                            format!(
                                "{}: {}",
                                v.url,
                                v.last_error.as_deref().unwrap_or("no error seen")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    st.fatal = Some(format!(
                        "batch {} failed {tries} times and no server is answering ({servers})",
                        job.index
                    ));
                } else {
                    st.queue.push_front(Job {
                        tries,
                        avoid: Some(s),
                        ..job
                    });
                }
            }
        }
        wake.notify_all();
    }
}

enum Failure {
    /// Worth sending again (elsewhere): the server did not answer, or failed itself.
    Retry(String),
    /// No retry mends it: the server refused the request or answers in another format.
    Fatal(String),
}

/// What a server answered for one batch.
struct Answer {
    partial: Partial,
    /// The batch's sketch, when asked for.
    sketch: Option<Sketch>,
    /// The answer's `backend` object.
    backend: Value,
    /// Its P.
    workgroups: u32,
    /// Its compute time.
    compute: Duration,
}

/// Sends one batch; what the server answered.
fn send(
    url: &str,
    client: &mut Client,
    ask: &Ask<'_>,
    job: &Job,
) -> std::result::Result<Answer, Failure> {
    let ddof = ask.ddof;
    let mut route = format!("/v1/reduce?dtype={}&ddof={ddof}", job.dtype);
    if let Some(e) = ask.quantile_error {
        route += &format!("&quantile_error={e}");
    }
    let bearer = ask.token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("Authorization", b))
        .into_iter()
        .collect();
    let (status, answer) = client
        .post(&route, &headers, &job.body)
        .map_err(|e| match e {
            HttpError::Transport(e) => Failure::Retry(e),
            HttpError::Protocol(e) => Failure::Fatal(e),
        })?;
    let text = String::from_utf8_lossy(&answer);
    if status >= 500 || status == 408 || status == 429 {
        return Err(Failure::Retry(format!("{status}: {}", text.trim())));
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Fatal(format!("answered {status} with something not JSON ({e})")))?;
    if status != 200 {
        let why = v["error"].as_str().unwrap_or(text.trim());
        return Err(Failure::Fatal(format!(
            "refused the batch ({status}): {why}"
        )));
    }
    let file = PartialFile::from_json(&v["partial"], std::path::Path::new(url)).map_err(|e| {
        Failure::Fatal(format!(
            "its answer carries no partial this microbatch can merge (is it older than {}?): {e}",
            env!("CARGO_PKG_VERSION")
        ))
    })?;
    let version = v["partial"]["version"].as_u64();
    if version != Some(PARTIAL_VERSION) || file.ddof != ddof {
        return Err(Failure::Fatal(format!(
            "answers in partial format version {} with ddof {}, this run needs version {PARTIAL_VERSION} with ddof {ddof}",
            version.map_or("?".to_string(), |n| n.to_string()),
            file.ddof
        )));
    }
    if ask.quantile_error.is_some() && file.sketch.is_none() {
        return Err(Failure::Fatal(format!(
            "its answer carries no quantile sketch (is it older than {}?)",
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(Answer {
        partial: file.partial,
        sketch: file.sketch,
        backend: v["backend"].clone(),
        workgroups: v["batches"]["workgroups"].as_u64().unwrap_or(0) as u32,
        compute: v["timings_s"]["compute"]
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(Duration::ZERO, Duration::from_secs_f64),
    })
}

/// Reads a bearer token from `path`.
pub(crate) fn read_token(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?
        .trim()
        .to_string())
}
