//! Prometheus metrics: requests by route and status, stage-time histograms, bytes and batches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::http::StatusCode;

use microbatch::backend::Timings;

/// Prometheus metrics: requests by route and status, bytes, batches, queue depth, open streams,
/// and a histogram of every engine stage's time per batch.
#[derive(Default)]
pub(super) struct Metrics {
    pub(super) requests: Mutex<HashMap<(String, u16), u64>>,
    pub(super) bytes: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) engine_batches: AtomicU64,
    pub(super) queue_depth: AtomicUsize,
    pub(super) stages: Mutex<[Histogram; 4]>,
}

/// Upper bounds of the stage-time histogram's buckets, in seconds.
pub(super) const BUCKETS: [f64; 12] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0,
];
pub(super) const STAGES: [&str; 4] = ["upload", "compute", "readback", "merge"];

#[derive(Default, Clone, Copy)]
pub(super) struct Histogram {
    pub(super) counts: [u64; BUCKETS.len()],
    pub(super) count: u64,
    pub(super) sum: f64,
}

impl Histogram {
    pub(super) fn observe(&mut self, x: f64) {
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
    pub(super) fn request(&self, route: &str, status: StatusCode) {
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
    pub(super) fn observe(&self, t: &Timings, batches: usize) {
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

    pub(super) fn render(&self, open_streams: usize) -> String {
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
