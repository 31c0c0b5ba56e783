//! The service's overhead: the same data through `microbatch serve` on loopback and through
//! `microbatch run`, side by side in one run.
//!
//! ```sh
//! cargo build --release && cargo run --release --example serve_bench -- [N] [CLIENTS] [SMALL]
//! ```
//! N (default 1e8) f32 values go as one large `POST /v1/reduce` body, against `microbatch run` on
//! the same file; then CLIENTS (default 8) clients append batches of SMALL (default 1024) values
//! to their own streams for a few seconds: requests/s and GB/s. Backend: the CPU (set
//! MICROBATCH_BENCH_BACKEND=gpu for the GPU). Medians of 5 for the large body.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.get(1).map_or(1e8, |s| s.parse::<f64>().unwrap()) as usize;
    let clients = args.get(2).map_or(8, |s| s.parse().unwrap());
    let small = args.get(3).map_or(1024, |s| s.parse().unwrap());
    let backend = std::env::var("MICROBATCH_BENCH_BACKEND").unwrap_or_else(|_| "cpu".into());
    let bin =
        std::env::var("MICROBATCH_BIN").unwrap_or_else(|_| "target/release/microbatch".into());

    let data: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 1000) as f32 * 0.001).to_le_bytes())
        .collect();
    let path = std::env::temp_dir().join("microbatch-serve-bench.f32");
    std::fs::write(&path, &data).unwrap();

    // Streams are durable in a fresh store unless MICROBATCH_BENCH_SERVE_ARGS says otherwise
    // (e.g. "--in-memory").
    let store = std::env::temp_dir().join(format!("microbatch-serve-bench-{}", std::process::id()));
    let extra: Vec<String> = match std::env::var("MICROBATCH_BENCH_SERVE_ARGS") {
        Ok(a) => a.split_whitespace().map(str::to_string).collect(),
        Err(_) => vec!["--data-dir".into(), store.display().to_string()],
    };
    let mut server = Command::new(&bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--backend", &backend])
        .args(&extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run `cargo build --release` first, or set MICROBATCH_BIN");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().trim_start_matches("listening on ").to_string();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();

    let body = bytes_of(&data);
    let mut serve_t = Vec::new();
    let mut run_t = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let r = client
            .post(format!("{base}/v1/reduce"))
            .header("Content-Type", "application/octet-stream")
            .body(body.clone())
            .send()
            .unwrap();
        assert!(r.status().is_success());
        let _ = r.bytes().unwrap();
        serve_t.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let o = Command::new(&bin)
            .args([
                "run",
                path.to_str().unwrap(),
                "--backend",
                &backend,
                "--json",
                "--quiet",
            ])
            .output()
            .unwrap();
        assert!(o.status.success());
        run_t.push(t.elapsed().as_secs_f64());
    }
    serve_t.remove(0);
    run_t.remove(0);
    let (s, r) = (median(serve_t), median(run_t));
    let gb = |t: f64| data.len() as f64 / t / 1e9;
    println!(
        "large body: {n} f32 ({:.0} MB), backend {backend}, medians of 5",
        data.len() as f64 / 1e6
    );
    println!(
        "  POST /v1/reduce       {:8.1} ms  {:6.2} GB/s",
        s * 1e3,
        gb(s)
    );
    println!(
        "  microbatch run FILE   {:8.1} ms  {:6.2} GB/s  (whole process)",
        r * 1e3,
        gb(r)
    );
    println!("  service / run time    {:.2}x", s / r);

    let batch = bytes_of(&data[..small * 4]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (base, batch, client) = (base.clone(), batch.clone(), client.clone());
            std::thread::spawn(move || {
                let id: serde_json::Value = client
                    .post(format!("{base}/v1/streams"))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                let id = id["id"].as_str().unwrap().to_string();
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let r = client
                        .post(format!("{base}/v1/streams/{id}/batches"))
                        .header("Content-Type", "application/octet-stream")
                        .body(batch.clone())
                        .send()
                        .unwrap();
                    assert!(r.status().is_success());
                    let _ = r.bytes();
                    count += 1;
                }
                count
            })
        })
        .collect();
    let t = Instant::now();
    let total: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "small batches: {clients} clients × batches of {small} f32 for {secs:.1} s: {:.0} requests/s, {:.3} GB/s",
        total as f64 / secs,
        total as f64 * (small * 4) as f64 / secs / 1e9
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&path);
}

/// A body that clones without copying (reference-counted bytes).
fn bytes_of(b: &[u8]) -> axum::body::Bytes {
    axum::body::Bytes::copy_from_slice(b)
}
