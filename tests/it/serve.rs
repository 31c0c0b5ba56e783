//! `microbatch serve` over real HTTP on loopback (reqwest): results equal `microbatch run`, named
//! streams, bad input, limits, authentication, a bounded load test, a client that disconnects
//! mid-body, and graceful shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use rand::RngExt;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

/// A server on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// A server on a free port; streams in memory unless `extra` names a --data-dir.
    fn start(extra: &[&str]) -> Server {
        let memory: &[&str] = if extra.contains(&"--data-dir") {
            &[]
        } else {
            &["--in-memory"]
        };
        let addr: &[&str] = if extra.contains(&"--addr") || extra.contains(&"--unix") {
            &[]
        } else {
            &["--addr", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_microbatch"))
            .arg("serve")
            .args(addr)
            .args(memory)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        // The shell's own `kill`: no procps package needed.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most 10 s) for the server to exit, and asserts it exited 0.
    fn wait_for_clean_exit(&mut self) {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "exit {s:?}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose bodies are raw values unless a request says otherwise (an undeclared body is
/// detected from its content, as the CLI does, and raw bytes are never guessed).
fn client() -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/octet-stream"),
    );
    Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .unwrap()
}

fn json_ok(r: reqwest::blocking::Response) -> Value {
    let status = r.status();
    let text = r.text().unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn error_of(r: reqwest::blocking::Response, want: StatusCode) -> String {
    let status = r.status();
    let v: Value = serde_json::from_str(&r.text().unwrap()).expect("a JSON error body");
    assert_eq!(status, want, "{v}");
    assert_eq!(v["status"], want.as_u16());
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn reduce_equals_run_for_every_body_format() {
    let mut rng = fresh_rng("serve_reduce");
    let data = normal(&mut rng, 300_007, 50.0, 4.0);
    let scratch = Scratch::new("serve-reduce");
    let path = scratch.join("data.f32");
    std::fs::write(&path, f32_bytes(&data)).unwrap();
    for backend in backends() {
        let server = Server::start(&["--backend", backend, "--batch-size", "65536"]);
        let v = json_ok(
            client()
                .post(server.url("/v1/reduce"))
                .body(f32_bytes(&data))
                .send()
                .unwrap(),
        );
        let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
            .args([
                "run",
                path.to_str().unwrap(),
                "--json",
                "--backend",
                backend,
            ])
            .output()
            .unwrap();
        let run: Value = serde_json::from_slice(&o.stdout).unwrap();
        for k in ["count", "min", "max", "nan_count"] {
            assert_eq!(v["stats"][k], run["stats"][k], "{backend}: {k}");
        }
        let r = reference(&data);
        let depth = if backend == "gpu" {
            gpu_depth(65_536, v["batches"]["workgroups"].as_u64().unwrap() as u32)
        } else {
            CPU_DEPTH
        };
        assert_close(
            "sum",
            v["stats"]["sum"].as_f64().unwrap(),
            r.sum,
            r.sum_tolerance(depth),
        );
        assert_eq!(v["backend"]["kind"], backend);
        assert_eq!(
            v["batches"]["count"].as_u64(),
            Some(300_007u64.div_ceil(65_536))
        );

        // .npy and CSV bodies.
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let expected: Value =
            serde_json::from_slice(&std::fs::read(fixtures.join("expected.json")).unwrap())
                .unwrap();
        let v = json_ok(
            client()
                .post(server.url("/v1/reduce"))
                .header("Content-Type", "application/x-npy")
                .body(std::fs::read(fixtures.join("f64_2d.npy")).unwrap())
                .send()
                .unwrap(),
        );
        assert_eq!(v["stats"]["count"], expected["f64_2d.npy"]["count"]);
        assert_eq!(
            v["input"]["sources"][0]["shape"],
            expected["f64_2d.npy"]["shape"]
        );
        let e = &expected["table.csv:b"];
        let v = json_ok(
            client()
                .post(server.url("/v1/reduce?column=b"))
                .header("Content-Type", "text/csv")
                .body(std::fs::read(fixtures.join("table.csv")).unwrap())
                .send()
                .unwrap(),
        );
        assert_eq!(v["stats"]["count"], e["count"]);
        assert_eq!(v["stats"]["min"], e["min"]);
    }
}

/// A body takes one of three paths: small with a Content-Length (gathered and reduced on the
/// spot), large with a Content-Length (streamed, batches read whole), or chunked (streamed,
/// length unknown). All three give the same bits at the same batch size, and a declared length
/// that cannot be right is refused before anything is reduced.
#[test]
fn every_body_path_gives_the_same_bits() {
    let mut rng = fresh_rng("serve_paths");
    for backend in backends() {
        let server = Server::start(&["--backend", backend, "--batch-size", "4096"]);
        let c = client();
        // 9,999 values (40 KB, the small path) and 100,003 (400 KB, streamed), both with an
        // uneven last batch.
        for n in [9_999usize, 100_003] {
            let data = normal(&mut rng, n, 1e4, 3.0);
            let bytes = f32_bytes(&data);
            let sized = json_ok(
                c.post(server.url("/v1/reduce"))
                    .body(bytes.clone())
                    .send()
                    .unwrap(),
            );
            let chunked = json_ok(
                c.post(server.url("/v1/reduce"))
                    .body(reqwest::blocking::Body::new(std::io::Cursor::new(
                        bytes.clone(),
                    )))
                    .send()
                    .unwrap(),
            );
            for k in ["count", "sum", "mean", "min", "max", "var", "std"] {
                assert_eq!(
                    sized["stats"][k], chunked["stats"][k],
                    "{backend} n={n}: {k}"
                );
            }
            assert_eq!(
                sized["batches"]["count"].as_u64(),
                Some(n.div_ceil(4096) as u64)
            );
            assert_eq!(sized["stats"]["count"].as_u64(), Some(n as u64));
            let r = reference(&data);
            let depth = if backend == "gpu" {
                gpu_depth(
                    4096,
                    sized["batches"]["workgroups"].as_u64().unwrap() as u32,
                )
            } else {
                CPU_DEPTH
            };
            assert_close(
                "sum",
                sized["stats"]["sum"].as_f64().unwrap(),
                r.sum,
                r.sum_tolerance(depth),
            );
            // The same bytes as a stream's batch: the same statistics.
            let id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
                .as_str()
                .unwrap()
                .to_string();
            let v = json_ok(
                c.post(server.url(&format!("/v1/streams/{id}/batches")))
                    .body(bytes.clone())
                    .send()
                    .unwrap(),
            );
            assert_eq!(v["stats"]["sum"], sized["stats"]["sum"], "{backend} n={n}");
        }
        // A .npy header that promises more than the Content-Length holds: refused up front.
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }".to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        npy.extend((header.len() as u16).to_le_bytes());
        npy.extend(header.as_bytes());
        npy.extend(f32_bytes(&[1.0; 99]));
        let msg = error_of(
            c.post(server.url("/v1/reduce"))
                .header("Content-Type", "application/x-npy")
                .body(npy)
                .send()
                .unwrap(),
            StatusCode::BAD_REQUEST,
        );
        assert!(msg.contains("100") && msg.contains("396 bytes"), "{msg}");
    }
}

#[test]
fn streams_accumulate_merge_and_reject_bad_batches_whole() {
    let server = Server::start(&["--backend", "cpu"]);
    let c = client();
    let mut rng = fresh_rng("serve_streams");
    let id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all = Vec::new();
    for n in [1000, 1, 4097] {
        let batch = uniform(&mut rng, n, -5.0, 5.0);
        let v = json_ok(
            c.post(server.url(&format!("/v1/streams/{id}/batches")))
                .body(f32_bytes(&batch))
                .send()
                .unwrap(),
        );
        all.extend(batch);
        assert_eq!(v["stats"]["count"].as_u64(), Some(all.len() as u64));
    }
    // Rejected batches change nothing.
    let before = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    let msg = error_of(
        c.post(server.url(&format!("/v1/streams/{id}/batches")))
            .body(vec![0u8; 4 * 10 + 3])
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(msg.contains("offset 40"), "{msg}");
    let msg = error_of(
        c.post(server.url(&format!("/v1/streams/{id}/batches")))
            .header("Content-Type", "text/csv")
            .body("x\n1\n2\nabc\n")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(
        msg.contains("line 4") && msg.contains("not a number"),
        "{msg}"
    );
    let msg = error_of(
        c.post(server.url(&format!("/v1/streams/{id}/batches")))
            .header("Content-Type", "application/x-npy")
            .body(b"\x93NUMPY\x01\x00\x04\x00{'x'".to_vec())
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(msg.contains("offset"), "{msg}");
    // f64 values whose running sum passes f64's range (inf − inf): refused, not NaN stats;
    // the same body to /v1/reduce too.
    let mut lost = Vec::new();
    for x in std::iter::repeat_n(1.7e308f64, 5000).chain(std::iter::repeat_n(-1.7e308, 5000)) {
        lost.extend_from_slice(&x.to_le_bytes());
    }
    for path in [
        format!("/v1/streams/{id}/batches?dtype=f64"),
        "/v1/reduce?dtype=f64".into(),
    ] {
        let msg = error_of(
            c.post(server.url(&path)).body(lost.clone()).send().unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
        assert!(msg.contains("f64's range"), "{path}: {msg}");
    }
    let after = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(before["stats"], after["stats"]);
    assert_eq!(after["batches"], 3);
    let r = reference(&all);
    assert_close(
        "stream sum",
        after["stats"]["sum"].as_f64().unwrap(),
        r.sum,
        r.sum_tolerance(CPU_DEPTH),
    );

    // The partial merges with `microbatch merge` like any shard's.
    let partial = c
        .get(server.url(&format!("/v1/streams/{id}/partial")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let p = scratch_root().join("stream.json");
    std::fs::write(&p, &partial).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["merge", p.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let merged: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(merged["stats"], after["stats"]);

    // Unknown ids, wrong methods, deletion.
    error_of(
        c.get(server.url("/v1/streams/nope")).send().unwrap(),
        StatusCode::NOT_FOUND,
    );
    error_of(
        c.post(server.url("/v1/streams/nope/batches"))
            .body(vec![0u8; 4])
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
    );
    error_of(
        c.put(server.url("/v1/reduce")).send().unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    );
    json_ok(
        c.delete(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    error_of(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
    );
    let m = c
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("microbatch_stream_batches_total 3")
            && m.contains("microbatch_stage_seconds_bucket"),
        "{m}"
    );
    assert!(json_ok(c.get(server.url("/healthz")).send().unwrap())["status"] == "ok");
}

#[test]
fn limits_answer_413_429_408_and_auth_401() {
    let server = Server::start(&[
        "--backend",
        "cpu",
        "--max-body",
        "4000",
        "--max-batch",
        "100",
        "--max-streams",
        "2",
        "--request-timeout-s",
        "1",
    ]);
    let c = client();
    let msg = error_of(
        c.post(server.url("/v1/reduce"))
            .body(vec![0u8; 8000])
            .send()
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert!(msg.contains("4000"), "{msg}");
    let id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    error_of(
        c.post(server.url(&format!("/v1/streams/{id}/batches")))
            .body(vec![0u8; 4 * 101])
            .send()
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    json_ok(c.post(server.url("/v1/streams")).send().unwrap());
    error_of(
        c.post(server.url("/v1/streams")).send().unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
    );
    // A body that never finishes arriving: 408 after the request timeout.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(
        s,
        "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[0u8; 40]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Authentication: every route but /healthz needs the token; the scheme's case is free.
    let token = scratch_root().join("token");
    std::fs::write(&token, "s3cret-s3cret-s3cret\n").unwrap();
    let auth = Server::start(&["--backend", "cpu", "--token-file", token.to_str().unwrap()]);
    json_ok(c.get(auth.url("/healthz")).send().unwrap());
    error_of(
        c.get(auth.url("/v1/devices")).send().unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    error_of(
        c.get(auth.url("/v1/devices"))
            .bearer_auth("wrong")
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    json_ok(
        c.get(auth.url("/v1/devices"))
            .bearer_auth("s3cret-s3cret-s3cret")
            .send()
            .unwrap(),
    );
    json_ok(
        c.get(auth.url("/v1/devices"))
            .header("Authorization", "bearer s3cret-s3cret-s3cret")
            .send()
            .unwrap(),
    );
    // A token shorter than 16 bytes is refused at start.
    std::fs::write(&token, "s3cret\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            token.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 16"));
    // Anything but loopback without a token is refused at start.
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["serve", "--addr", "0.0.0.0:0", "--backend", "cpu"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token-file"));
}

/// 32 clients × 200 batches into their own streams and one shared stream, concurrently: every
/// stream's statistics are exact, and the server's memory stays bounded.
#[test]
fn concurrent_clients_get_exact_results_in_bounded_memory() {
    load_test("cpu", 32, 200);
}

/// The same on the GPU (lavapipe on CI), where queued batches of different clients share one
/// pipelined pass and one readback.
#[test]
fn concurrent_clients_on_the_gpu_get_exact_results() {
    if gpu().is_some() {
        load_test("gpu", 8, 50);
    }
}

fn load_test(backend: &str, n_clients: usize, n_batches: usize) {
    let server = Server::start(&["--backend", backend]);
    let c = client();
    let shared = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let base = server.base.clone();
    let pid = server.child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kb) = s
                        .lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kb * 1024, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let clients: Vec<_> = (0..n_clients)
        .map(|k| {
            let (base, shared) = (base.clone(), shared.clone());
            std::thread::spawn(move || {
                let c = client();
                let own = json_ok(c.post(format!("{base}/v1/streams")).send().unwrap())["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let mut mine = Vec::new();
                for b in 0..n_batches {
                    // Distinct, exactly representable values per client and batch.
                    let batch: Vec<f32> = (0..256)
                        .map(|i| (k * 1_000_000 + b * 1000 + i) as f32)
                        .collect();
                    json_ok(
                        c.post(format!("{base}/v1/streams/{own}/batches"))
                            .body(f32_bytes(&batch))
                            .send()
                            .unwrap(),
                    );
                    json_ok(
                        c.post(format!("{base}/v1/streams/{shared}/batches"))
                            .body(f32_bytes(&batch))
                            .send()
                            .unwrap(),
                    );
                    mine.extend(batch);
                }
                let v = json_ok(c.get(format!("{base}/v1/streams/{own}")).send().unwrap());
                (mine, v)
            })
        })
        .collect();
    let mut everything = Vec::new();
    for t in clients {
        let (mine, v) = t.join().unwrap();
        let r = reference(&mine);
        assert_eq!(v["stats"]["count"].as_u64(), Some(mine.len() as u64));
        assert_eq!(v["stats"]["min"].as_f64(), Some(r.min));
        assert_eq!(v["stats"]["max"].as_f64(), Some(r.max));
        assert_close(
            "client sum",
            v["stats"]["sum"].as_f64().unwrap(),
            r.sum,
            r.sum_tolerance(CPU_DEPTH),
        );
        assert_eq!(v["batches"], n_batches);
        everything.extend(mine);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let v = json_ok(
        c.get(server.url(&format!("/v1/streams/{shared}")))
            .send()
            .unwrap(),
    );
    let r = reference(&everything);
    assert_eq!(v["batches"], n_clients * n_batches);
    assert_eq!(v["stats"]["count"].as_u64(), Some(everything.len() as u64));
    assert_close(
        "shared sum",
        v["stats"]["sum"].as_f64().unwrap(),
        r.sum,
        r.sum_tolerance(CPU_DEPTH),
    );
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("server peak RSS under load: {} MiB", peak >> 20);
    // The CPU server's own memory; lavapipe adds its JIT and device memory.
    let bound: u64 = if backend == "cpu" {
        64 << 20
    } else {
        256 << 20
    };
    assert!(peak > 0 && peak < bound, "server peak RSS {peak} bytes");
}

#[test]
fn a_client_leaving_mid_body_applies_nothing_and_shutdown_is_graceful() {
    let mut server = Server::start(&["--backend", "cpu"]);
    let c = client();
    let id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        write!(
            s,
            "POST /v1/streams/{id}/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[0u8; 400]).unwrap();
    } // dropped: the connection closes with 3600 bytes missing
    std::thread::sleep(Duration::from_millis(300));
    let v = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(v["batches"], 0);
    assert_eq!(v["stats"]["count"], 0);
    json_ok(
        c.post(server.url(&format!("/v1/streams/{id}/batches")))
            .body(f32_bytes(&[1.0, 2.0]))
            .send()
            .unwrap(),
    );

    // SIGTERM: the server drains and exits 0.
    server.terminate();
    server.wait_for_clean_exit();
}

/// A request in flight when SIGTERM arrives still gets its answer; idle streams expire.
#[test]
fn shutdown_drains_in_flight_requests_and_idle_streams_expire() {
    let mut server = Server::start(&["--backend", "cpu", "--stream-idle-s", "1"]);
    let c = client();
    let id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(2500));
    error_of(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
    );

    // A body sent slowly: half, then SIGTERM, then the rest.
    let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let body = f32_bytes(&values);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(
        s,
        "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..2000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(&body[2000..]).unwrap();
    let mut answer = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"count\":1000"), "{answer}");
    server.wait_for_clean_exit();
}

/// Careless requests are refused before anything is read or applied, never answered 200 with a
/// wrong number (issue 11): unknown parameters, loose booleans, a bad ddof on a batch, JSON
/// bodies, undeclared text, unknown encodings, an over-long declared body; gzip and zstd bodies
/// are decoded.
#[test]
fn careless_requests_are_refused_before_anything_is_applied() {
    let server = Server::start(&["--backend", "cpu", "--max-body", "100000"]);
    let c = client();
    let id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let batches = server.url(&format!("/v1/streams/{id}/batches"));
    let body = f32_bytes(&[1.0, 2.0, 3.0]);
    json_ok(c.post(&batches).body(body.clone()).send().unwrap());
    // A batch refused for its query is not applied (a retry after the 400 must not count twice).
    for (query, says) in [
        ("?ddof=-1", "ddof"),
        ("?colum=price", "colum"),
        ("?skip_invalid=no", "skip_invalid"),
        ("?header=no", "header"),
    ] {
        let e = error_of(
            c.post(format!("{batches}{query}"))
                .body(body.clone())
                .send()
                .unwrap(),
            StatusCode::BAD_REQUEST,
        );
        assert!(e.contains(says), "{query}: {e}");
    }
    let r = c
        .post(server.url("/v1/reduce?colum=1"))
        .body(body.clone())
        .send()
        .unwrap();
    // An early refusal says the connection closes after it.
    assert_eq!(r.headers()["connection"], "close");
    let e = error_of(r, StatusCode::BAD_REQUEST);
    assert!(e.contains("colum") && e.contains("column"), "{e}");
    let s = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(s["stats"]["count"], 3, "{s}");
    assert_eq!(s["batches"], 1);
    // Any ddof ≥ 0 is a ddof.
    let s = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}?ddof=2")))
            .send()
            .unwrap(),
    );
    assert_eq!(s["stats"]["var"], 2.0);
    // A JSON body is 415; an undeclared text body is detected and refused, saying what to send.
    error_of(
        c.post(server.url("/v1/reduce"))
            .header("Content-Type", "application/json")
            .body("[1, 2, 3]")
            .send()
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    let e = error_of(
        reqwest::blocking::Client::new()
            .post(server.url("/v1/reduce"))
            .body("1\n2\n3\n")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(e.contains("text/csv"), "{e}");
    // Booleans: exactly true/false/1/0.
    let csv = "x\n1\n2\nabc\n";
    let v = json_ok(
        c.post(server.url("/v1/reduce?skip_invalid=1"))
            .header("Content-Type", "text/csv")
            .body(csv)
            .send()
            .unwrap(),
    );
    assert_eq!(v["stats"]["count"], 2);
    // The answer says what was read and at which precision, as `run --json` does.
    assert_eq!(v["input"]["sources"][0]["dtype"], "text");
    assert_eq!(v["input"]["sources"][0]["precision"], "f64");
    assert_eq!(v["input"]["sources"][0]["skipped_invalid"], 1);
    // Compressed bodies are decoded; an unknown encoding is 415.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&body[..], 3).unwrap();
    for (enc, bytes) in [("gzip", gz), ("zstd", zst)] {
        let v = json_ok(
            c.post(server.url("/v1/reduce"))
                .header("Content-Encoding", enc)
                .body(bytes)
                .send()
                .unwrap(),
        );
        assert_eq!(v["stats"]["sum"], 6.0, "{enc}");
    }
    error_of(
        c.post(server.url("/v1/reduce"))
            .header("Content-Encoding", "br")
            .body(body.clone())
            .send()
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    // A declared length over --max-body is 413 at once, before any of the body is sent.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(
        s,
        "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4000000\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = vec![0u8; 512];
    let n = s.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// Exactly once through crashes (issue 11): clients append keyed batches and retry every failure
/// with the same key while the server is killed with SIGKILL and restarted on its store several
/// times; the stream ends with every batch exactly once, and a replayed key gets the original
/// answer without being applied again.
#[test]
fn keyed_batches_count_exactly_once_through_kill_9() {
    let dir = scratch_root().join("microbatch-store");
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.to_str().unwrap().to_string();
    let first = Server::start(&["--backend", "cpu", "--data-dir", &data_dir]);
    let addr = first.addr();
    let base = first.base.clone();
    let c = client();
    let id = json_ok(c.post(first.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.len() >= 33, "ids carry 128 random bits: {id}");
    // A replayed key: the same answer, applied once.
    let url = format!("{base}/v1/streams/{id}/batches");
    let one = |key: &str| {
        c.post(&url)
            .header("Idempotency-Key", key)
            .body(f32_bytes(&[5.0; 10]))
            .send()
            .unwrap()
    };
    let a = json_ok(one("warm-up"));
    let b = one("warm-up");
    assert_eq!(b.headers()["idempotent-replay"], "true");
    assert_eq!(json_ok(b), a);
    assert_eq!(a["stats"]["count"], 10);

    const CLIENTS: usize = 3;
    const BATCHES: usize = 200;
    const PER: usize = 500;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let url = url.clone();
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let c = Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut retries = 0;
                for b in 0..BATCHES {
                    let values: Vec<f32> = (0..PER)
                        .map(|i| ((w * 7 + b * 3 + i) % 101) as f32)
                        .collect();
                    let key = format!("client{w}-batch{b}");
                    // The client's retry rule: resend the same batch with the same key until a
                    // 2xx arrives.
                    loop {
                        let r = c
                            .post(&url)
                            .header("Content-Type", "application/octet-stream")
                            .header("Idempotency-Key", &key)
                            .body(f32_bytes(&values))
                            .send();
                        match r {
                            Ok(r) if r.status().is_success() => {
                                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                break;
                            }
                            _ => {
                                retries += 1;
                                assert!(retries < 2000, "the server never came back");
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
                retries
            })
        })
        .collect();
    // Kill -9 and restart on the same port and store at 1/5, 2/5, 3/5 and 4/5 of the
    // acknowledged batches, while the clients run.
    let mut server = first;
    let total = CLIENTS * BATCHES;
    for k in 1..=4 {
        let start = std::time::Instant::now();
        while done.load(std::sync::atomic::Ordering::SeqCst) < total * k / 5 {
            assert!(start.elapsed() < Duration::from_secs(60), "no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = server.child.kill();
        let _ = server.child.wait();
        server = Server::start(&["--backend", "cpu", "--data-dir", &data_dir, "--addr", &addr]);
    }
    let retries: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    eprintln!("chaos: 4 kills, {retries} retries across {CLIENTS} clients");
    let s = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    let mut want_sum = 50.0;
    for w in 0..CLIENTS {
        for b in 0..BATCHES {
            want_sum += (0..PER)
                .map(|i| ((w * 7 + b * 3 + i) % 101) as f64)
                .sum::<f64>();
        }
    }
    assert_eq!(
        s["stats"]["count"],
        (CLIENTS * BATCHES * PER + 10) as u64,
        "{s}"
    );
    assert_eq!(s["stats"]["sum"].as_f64(), Some(want_sum), "{s}");
    assert_eq!(s["batches"], (CLIENTS * BATCHES + 1) as u64, "{s}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Slow or lying clients cannot starve the others (issue 11): 600 connections that declare a
/// body and send 4 bytes of it stay open while a normal reduce still answers within 2 s; a
/// stalled body is answered 408 after --body-idle-s; past --max-inflight, 503 with Retry-After.
#[test]
fn lying_clients_do_not_starve_the_others() {
    let server = Server::start(&["--backend", "cpu", "--body-idle-s", "5"]);
    let c = client();
    let mut liars = Vec::new();
    for _ in 0..600 {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        write!(
            s,
            "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4000\r\n\r\n\0\0\0\0"
        )
        .unwrap();
        liars.push(s);
    }
    // Let the server pick every one of them up.
    std::thread::sleep(Duration::from_millis(500));
    let start = std::time::Instant::now();
    let v = json_ok(
        c.post(server.url("/v1/reduce"))
            .body(f32_bytes(&[1.0, 2.0, 3.0]))
            .send()
            .unwrap(),
    );
    let took = start.elapsed();
    assert_eq!(v["stats"]["count"], 3);
    assert!(
        took < Duration::from_secs(2),
        "a normal reduce took {took:?}"
    );
    // The stalled bodies get 408 once they have sent nothing for --body-idle-s.
    let mut first = liars.swap_remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = vec![0u8; 256];
    let n = first.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(liars);

    // Past --max-inflight: 503 with Retry-After, at once.
    let small = Server::start(&[
        "--backend",
        "cpu",
        "--max-inflight",
        "2",
        "--body-idle-s",
        "5",
    ]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(small.addr()).unwrap();
        write!(
            s,
            "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4000\r\n\r\n\0\0\0\0"
        )
        .unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = c
        .post(small.url("/v1/reduce"))
        .body(f32_bytes(&[1.0]))
        .send()
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    error_of(r, StatusCode::SERVICE_UNAVAILABLE);
}

/// A text body's line is bounded (--max-line: 413, not the whole body held by the parser), and
/// SIGTERM closes what is still open after --shutdown-grace-s.
#[test]
fn long_lines_are_refused_and_shutdown_has_a_deadline() {
    let mut server = Server::start(&[
        "--backend",
        "cpu",
        "--max-line",
        "65536",
        "--shutdown-grace-s",
        "1",
    ]);
    let c = client();
    let digits = "7".repeat(2_000_000);
    let e = error_of(
        c.post(server.url("/v1/reduce"))
            .header("Content-Type", "text/csv")
            .body(digits)
            .send()
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert!(e.contains("--max-line"), "{e}");
    // Lines under the limit still read.
    let v = json_ok(
        c.post(server.url("/v1/reduce"))
            .header("Content-Type", "text/csv")
            .body("x\n1\n2\n")
            .send()
            .unwrap(),
    );
    assert_eq!(v["stats"]["count"], 2);
    // A client that declared a body and stalls cannot hold the server past the grace period.
    let mut stalled = TcpStream::connect(server.addr()).unwrap();
    write!(
        stalled,
        "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4000\r\n\r\n\0\0\0\0"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = std::time::Instant::now();
    server.terminate();
    server.wait_for_clean_exit();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        start.elapsed()
    );
}

/// Idle and half-sent connections are closed after --header-timeout-s, and past
/// --max-connections a new connection gets a JSON 503 at once (issue 11: 20,000 idle connects
/// once stopped the server accepting).
#[test]
fn idle_connections_are_closed_and_connections_are_bounded() {
    let server = Server::start(&[
        "--backend",
        "cpu",
        "--header-timeout-s",
        "1",
        "--max-connections",
        "3",
    ]);
    let idle = TcpStream::connect(server.addr()).unwrap();
    let mut half = TcpStream::connect(server.addr()).unwrap();
    write!(half, "POST /v1/reduce HTTP/1.1\r\nHost: x\r\n").unwrap();
    let keep = TcpStream::connect(server.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The fourth is refused while three are open.
    let mut fourth = TcpStream::connect(server.addr()).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = fourth.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"status\":503"), "{answer}");
    // Within the header timeout (plus slack) the server closes all three.
    for (name, mut s) in [("idle", idle), ("half-sent", half), ("keep", keep)] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = std::time::Instant::now();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(
            r.is_ok() && start.elapsed() < Duration::from_secs(4),
            "{name}: {r:?} after {:?}",
            start.elapsed()
        );
    }
    // With the slots free again, requests are served.
    std::thread::sleep(Duration::from_millis(200));
    let v = json_ok(
        client()
            .post(server.url("/v1/reduce"))
            .body(f32_bytes(&[4.0, 6.0]))
            .send()
            .unwrap(),
    );
    assert_eq!(v["stats"]["sum"], 10.0);
}

/// One client cannot fill the server with streams (--max-streams-per-client), and stream ids
/// carry 128 random bits.
#[test]
fn streams_per_client_are_bounded() {
    let server = Server::start(&["--backend", "cpu", "--max-streams-per-client", "2"]);
    let c = client();
    let a = json_ok(c.post(server.url("/v1/streams")).send().unwrap());
    let b = json_ok(c.post(server.url("/v1/streams")).send().unwrap());
    assert_ne!(a["id"], b["id"]);
    let id = a["id"].as_str().unwrap();
    assert!(
        id.len() == 33 && u128::from_str_radix(&id[1..], 16).is_ok(),
        "{id}"
    );
    let e = error_of(
        c.post(server.url("/v1/streams")).send().unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
    );
    assert!(e.contains("--max-streams-per-client"), "{e}");
    // Deleting one makes room.
    json_ok(
        c.delete(server.url(&format!("/v1/streams/{id}")))
            .send()
            .unwrap(),
    );
    json_ok(c.post(server.url("/v1/streams")).send().unwrap());
}

/// A long request target and oversized headers get JSON errors (414, 431) like every other
/// error, and a malformed chunked body a JSON 400.
#[test]
fn http_layer_errors_are_json() {
    let server = Server::start(&["--backend", "cpu"]);
    let c = client();
    let long = format!("/v1/reduce?column={}", "x".repeat(20_000));
    let e = error_of(
        c.post(server.url(&long)).send().unwrap(),
        StatusCode::URI_TOO_LONG,
    );
    assert!(e.contains("request target"), "{e}");
    let e = error_of(
        c.get(server.url("/healthz"))
            .header("X-Big", "y".repeat(100_000))
            .send()
            .unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    );
    assert!(e.contains("headers"), "{e}");
    // A chunked body whose chunk size is not hex.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(
        s,
        "POST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"status\":400"), "{answer}");
}

/// Sends `request` as is on a fresh connection and returns everything the server answers
/// before it closes (or 5 s pass).
fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn malformed_request_lines_get_a_json_400() {
    let server = Server::start(&["--backend", "cpu"]);
    for (line, why) in [
        ("GARBAGE\r\n\r\n", "expected METHOD TARGET"),
        (
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            "expected METHOD TARGET",
        ),
        ("G(T /healthz HTTP/1.1\r\n\r\n", "not a token"),
        ("GET /healthz HTTP/2.0\r\n\r\n", "HTTP/1.1 and HTTP/1.0"),
        ("GET /\x01 HTTP/1.1\r\n\r\n", "control"),
    ] {
        let answer = raw_exchange(&server.addr(), line.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{line:?}: {answer}");
        assert!(
            answer.contains("Connection: close") && answer.contains("\"status\":400"),
            "{line:?}: {answer}"
        );
        assert!(answer.contains(why), "{line:?}: {answer}");
    }
    // A good line still works, an empty line before it is allowed (RFC 9112 §2.2), and bytes
    // that arrive with the line are not lost.
    let answer = raw_exchange(
        &server.addr(),
        b"\r\nPOST /v1/reduce HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 8\r\nConnection: close\r\n\r\n\x00\x00\x80\x3f\x00\x00\x00\x40",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"sum\":3"), "{answer}");
}

#[cfg(unix)]
#[test]
fn a_unix_socket_serves_the_same_api_and_replaces_a_stale_socket() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let dir = scratch_root().join("mb-unix");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("serve.sock");
    // A stale socket (bound, nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let exchange = |request: &[u8]| {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(request).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    {
        let server = Server::start(&["--backend", "cpu", "--unix", sock.to_str().unwrap()]);
        assert_eq!(server.base, format!("unix:{}", sock.display()));
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let mut rng = fresh_rng("serve_unix");
        let data = uniform(&mut rng, 5000, -3.0, 7.0);
        let body = f32_bytes(&data);
        let mut request = format!(
            "POST /v1/reduce HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend(&body);
        let answer = exchange(&request);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["stats"]["count"], 5000);
        let r = reference(&data);
        assert_close(
            "sum over a unix socket",
            json["stats"]["sum"].as_f64().unwrap(),
            r.sum,
            r.sum_tolerance(CPU_DEPTH),
        );
        // A second server on a socket in use is refused.
        let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
            .args(["serve", "--in-memory", "--unix", sock.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("another server is listening"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A path that is not a socket is never removed.
    let file = dir.join("plain");
    std::fs::write(&file, "keep me").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["serve", "--in-memory", "--unix", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_admin_token_lists_and_deletes_any_stream() {
    let dir = scratch_root().join("mb-admin");
    std::fs::create_dir_all(&dir).unwrap();
    let (user, admin) = (dir.join("user"), dir.join("admin"));
    std::fs::write(&user, "user-token-user-token\n").unwrap();
    std::fs::write(&admin, "admin-token-admin-token\n").unwrap();
    let server = Server::start(&[
        "--backend",
        "cpu",
        "--token-file",
        user.to_str().unwrap(),
        "--admin-token-file",
        admin.to_str().unwrap(),
    ]);
    let c = client();
    let as_user = |r: reqwest::blocking::RequestBuilder| {
        r.header("Authorization", "Bearer user-token-user-token")
    };
    let as_admin = |r: reqwest::blocking::RequestBuilder| {
        r.header("Authorization", "bearer admin-token-admin-token")
    };
    // Two streams, one with a batch.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let v = json_ok(as_user(c.post(server.url("/v1/streams"))).send().unwrap());
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    json_ok(
        as_user(c.post(server.url(&format!("/v1/streams/{}/batches", ids[1]))))
            .body(f32_bytes(&[1.0, 2.0, 3.0]))
            .send()
            .unwrap(),
    );
    // The client token may not list; a wrong token is 401; the admin's lists both, oldest
    // first, with owners and counts.
    let e = error_of(
        as_user(c.get(server.url("/v1/streams"))).send().unwrap(),
        StatusCode::FORBIDDEN,
    );
    assert!(e.contains("admin token"), "{e}");
    error_of(
        c.get(server.url("/v1/streams"))
            .header("Authorization", "Bearer admin-token-admin-tokeN")
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    let list = json_ok(as_admin(c.get(server.url("/v1/streams"))).send().unwrap());
    assert_eq!(list["open"], 2, "{list}");
    let listed: Vec<&str> = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()], "{list}");
    assert_eq!(list["streams"][1]["count"], 3);
    assert_eq!(list["streams"][1]["owner"], "127.0.0.1");
    // The admin token works on every route: it deletes another's stream.
    json_ok(
        as_admin(c.delete(server.url(&format!("/v1/streams/{}", ids[1]))))
            .send()
            .unwrap(),
    );
    let list = json_ok(as_admin(c.get(server.url("/v1/streams"))).send().unwrap());
    assert_eq!(list["open"], 1, "{list}");
    drop(server);

    // Without an admin token nobody may list; the same token for both roles is refused.
    let plain = Server::start(&["--backend", "cpu"]);
    let e = error_of(
        c.get(plain.url("/v1/streams")).send().unwrap(),
        StatusCode::FORBIDDEN,
    );
    assert!(e.contains("has none"), "{e}");
    let o = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["serve", "--in-memory", "--addr", "127.0.0.1:0"])
        .args(["--token-file", user.to_str().unwrap()])
        .args(["--admin-token-file", user.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("its own"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn idempotency_keys_are_forgotten_after_their_ttl_in_memory_and_on_disk() {
    let dir = scratch_root().join("mb-keyttl");
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.to_str().unwrap();
    let c = client();
    let id;
    {
        let server = Server::start(&[
            "--backend",
            "cpu",
            "--data-dir",
            data_dir,
            "--key-ttl-s",
            "1",
        ]);
        id = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
            .as_str()
            .unwrap()
            .to_string();
        let send = || {
            c.post(server.url(&format!("/v1/streams/{id}/batches")))
                .header("Idempotency-Key", "batch-A")
                .body(f32_bytes(&[1.0, 2.0]))
                .send()
                .unwrap()
        };
        let first = send();
        assert!(first.headers().get("idempotent-replay").is_none());
        assert_eq!(json_ok(first)["batches"], 1);
        let again = send();
        assert_eq!(again.headers()["idempotent-replay"], "true");
        assert_eq!(json_ok(again)["batches"], 1);
        // Past the TTL (1 s, swept every second) the key is forgotten.
        std::thread::sleep(Duration::from_millis(3500));
    }
    // Killed and restarted with a long TTL: the store forgot the key too, so the same key is a
    // new batch now (the documented rule: retry within the TTL).
    let server = Server::start(&["--backend", "cpu", "--data-dir", data_dir]);
    let r = c
        .post(server.url(&format!("/v1/streams/{id}/batches")))
        .header("Idempotency-Key", "batch-A")
        .body(f32_bytes(&[1.0, 2.0]))
        .send()
        .unwrap();
    assert!(r.headers().get("idempotent-replay").is_none());
    let v = json_ok(r);
    assert_eq!(v["batches"], 2, "{v}");
    assert_eq!(v["stats"]["count"], 4, "{v}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stream opened with `?quantile_error=E` keeps a sketch of its batches: `?quantiles=` on
/// its answers gives the quantiles of everything appended (equal to `run --quantiles` over the
/// same values, bit for bit: sketches merge exactly), small and large batches alike; its
/// partial carries the sketch (it merges with the CLI's shards); the sketch survives a restart
/// from the store; a stream without one answers quantiles as null; bad options are 400.
#[test]
fn streams_keep_a_quantile_sketch_across_batches_and_restarts() {
    let dir = scratch_root().join("microbatch-store-sketch");
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.to_str().unwrap().to_string();
    let server = Server::start(&["--backend", "cpu", "--data-dir", &data_dir]);
    let c = client();
    let id = json_ok(
        c.post(server.url("/v1/streams?quantile_error=0.01"))
            .send()
            .unwrap(),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut rng = fresh_rng("serve_sketch");
    let mut all = Vec::new();
    // A small body (the runtime's path) and a large one (the engine's).
    for n in [1_000usize, 300_000] {
        let batch: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1e3f32..1e3).powi(3))
            .collect();
        all.extend_from_slice(&batch);
        let v = json_ok(
            c.post(server.url(&format!("/v1/streams/{id}/batches?quantiles=0.5")))
                .body(f32_bytes(&batch))
                .send()
                .unwrap(),
        );
        assert!(v["stats"]["quantiles"]["0.5"].is_number(), "{v}");
    }
    let file = tmp_file("serve-sketch", "all.f32", &f32_bytes(&all));
    let local = json(&run(&[
        "run",
        file.to_str().unwrap(),
        "--quantiles",
        "0.01,0.5,0.99",
        "--json",
    ]));
    let get = || {
        json_ok(
            c.get(server.url(&format!("/v1/streams/{id}?quantiles=0.01,0.5,0.99")))
                .send()
                .unwrap(),
        )
    };
    let v = get();
    assert_eq!(v["stats"]["quantiles"], local["stats"]["quantiles"]);
    assert_eq!(v["quantile_error"], local["quantile_error"]);
    // The partial carries the sketch: merged with nothing else, the same quantiles.
    let partial = c
        .get(server.url(&format!("/v1/streams/{id}/partial")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let shard = tmp_file("serve-sketch", "stream.json", partial.as_bytes());
    let merged = json(&run(&[
        "merge",
        shard.to_str().unwrap(),
        "--quantiles",
        "0.01,0.5,0.99",
        "--json",
    ]));
    assert_eq!(merged["stats"]["quantiles"], local["stats"]["quantiles"]);
    // A restart from the store keeps it.
    drop(server);
    let server = Server::start(&["--backend", "cpu", "--data-dir", &data_dir]);
    let v = json_ok(
        c.get(server.url(&format!("/v1/streams/{id}?quantiles=0.01,0.5,0.99")))
            .send()
            .unwrap(),
    );
    assert_eq!(v["stats"]["quantiles"], local["stats"]["quantiles"]);
    // A stream without a sketch: quantiles are null, not made up.
    let plain = json_ok(c.post(server.url("/v1/streams")).send().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = json_ok(
        c.post(server.url(&format!("/v1/streams/{plain}/batches?quantiles=0.5")))
            .body(f32_bytes(&[1.0, 2.0]))
            .send()
            .unwrap(),
    );
    assert!(v["stats"]["quantiles"]["0.5"].is_null(), "{v}");
    for (url, says) in [
        ("/v1/streams?quantile_error=0.9", "0.25"),
        ("/v1/streams?quantile_error=x", "not a number"),
    ] {
        let e = error_of(
            c.post(server.url(url)).send().unwrap(),
            StatusCode::BAD_REQUEST,
        );
        assert!(e.contains(says), "{url}: {e}");
    }
    let e = error_of(
        c.get(server.url(&format!("/v1/streams/{id}?quantiles=2")))
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(e.contains("[0, 1]"), "{e}");
    // /v1/reduce: a sketch of the body, its quantiles in the answer and its partial.
    let v = json_ok(
        c.post(server.url("/v1/reduce?quantiles=0.5&quantile_error=0.001"))
            .body(f32_bytes(&[4.0, 1.0, 3.0]))
            .send()
            .unwrap(),
    );
    let median = v["stats"]["quantiles"]["0.5"].as_f64().unwrap();
    assert!((median - 3.0).abs() <= 3.0 * 0.001, "{v}");
    assert!(v["partial"]["sketch"].is_object(), "{v}");
    let e = error_of(
        c.post(server.url("/v1/reduce?quantile_error=2"))
            .body(f32_bytes(&[1.0]))
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(e.contains("0.25"), "{e}");
}
