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
    let addr = base.trim_start_matches("http://").to_string();

    // Both runs cut the data into the server's batches (`serve --batch-size`, default 1 Mi), so
    // they differ only in how the data arrives.
    let batch_size = batch_size_of(&extra);
    let mut serve_t = Vec::new();
    let mut run_t = Vec::new();
    let mut conn = Conn::open(&addr);
    for _ in 0..6 {
        let t = Instant::now();
        let (status, _) = conn.post("/v1/reduce", &data);
        assert_eq!(status, 200);
        serve_t.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let o = Command::new(&bin)
            .args([
                "run",
                path.to_str().unwrap(),
                "--backend",
                &backend,
                "--batch-size",
                &batch_size,
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
    let bare = median(bare_tcp(&data));
    // The same body through a server on a Unix socket (`serve --unix`).
    #[cfg(unix)]
    let unix = {
        let sock =
            std::env::temp_dir().join(format!("microbatch-bench-{}.sock", std::process::id()));
        let mut server = Command::new(&bin)
            .args([
                "serve",
                "--unix",
                sock.to_str().unwrap(),
                "--backend",
                &backend,
            ])
            .args(["--in-memory", "--batch-size", &batch_size])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut conn = Conn::open(line.trim().trim_start_matches("listening on "));
        let mut t = Vec::new();
        for _ in 0..6 {
            let start = Instant::now();
            let (status, _) = conn.post("/v1/reduce", &data);
            assert_eq!(status, 200);
            t.push(start.elapsed().as_secs_f64());
        }
        t.remove(0);
        let _ = server.kill();
        let _ = server.wait();
        median(t)
    };
    let gb = |t: f64| data.len() as f64 / t / 1e9;
    println!(
        "large body: {n} f32 ({:.0} MB), backend {backend}, batches of {batch_size}, medians of 5",
        data.len() as f64 / 1e6
    );
    println!(
        "  POST /v1/reduce       {:8.1} ms  {:6.2} GB/s",
        s * 1e3,
        gb(s)
    );
    #[cfg(unix)]
    println!(
        "  the same, serve --unix{:8.1} ms  {:6.2} GB/s  (run / this {:.2}x)",
        unix * 1e3,
        gb(unix),
        r / unix
    );
    println!(
        "  microbatch run FILE   {:8.1} ms  {:6.2} GB/s  (whole process)",
        r * 1e3,
        gb(r)
    );
    println!(
        "  bare TCP, no HTTP     {:8.1} ms  {:6.2} GB/s  (the same bytes into a sink on loopback: the ceiling of any service here)",
        bare * 1e3,
        gb(bare)
    );
    println!(
        "  run / service time    {:.2}x   (run / bare TCP {:.2}x; bare TCP / service {:.2}x)",
        r / s,
        r / bare,
        bare / s
    );

    let batch = data[..small * 4].to_vec();
    let deadline = Instant::now() + Duration::from_secs(3);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, batch) = (addr.clone(), batch.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let (status, answer) = conn.post("/v1/streams", &[]);
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
                let id: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                let route = format!("/v1/streams/{}/batches", id["id"].as_str().unwrap());
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let (status, answer) = conn.post(&route, &batch);
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
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
    let _ = std::fs::remove_dir_all(&store);
}

/// Sends `data` over loopback TCP to a sink that only reads it (into a reused 4 MiB buffer,
/// with the server's 1 MiB receive buffer) and answers one byte: what the transport alone
/// costs on this machine. Five timings after a warm-up.
fn bare_tcp(data: &[u8]) -> Vec<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let len = data.len();
    let sink = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(1 << 20)
            .unwrap();
        let mut buf = vec![0u8; 4 << 20];
        for _ in 0..6 {
            let mut got = 0;
            while got < len {
                let n = c.read(&mut buf[..(len - got).min(4 << 20)]).unwrap();
                assert!(n > 0);
                got += n;
            }
            c.write_all(b"k").unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let mut times = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        c.write_all(data).unwrap();
        let mut k = [0u8; 1];
        c.read_exact(&mut k).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    sink.join().unwrap();
    times.remove(0);
    times
}

/// The server's batch size: `--batch-size` in the extra arguments, else serve's default.
fn batch_size_of(extra: &[String]) -> String {
    extra
        .iter()
        .position(|a| a == "--batch-size")
        .and_then(|i| extra.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "1048576".to_string())
}

/// A keep-alive HTTP/1.1 connection that does no more than the benchmark needs (as `wrk`
/// would): the client's own cost stays small next to the server's on a shared machine.
struct Conn {
    stream: std::io::BufReader<Box<dyn Socket>>,
    addr: String,
}

/// A connected socket, TCP or Unix.
trait Socket: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Socket for T {}

impl Conn {
    /// Connects to `HOST:PORT`, or to the Unix socket of `unix:PATH`.
    fn open(addr: &str) -> Self {
        #[cfg(unix)]
        if let Some(path) = addr.strip_prefix("unix:") {
            let s = std::os::unix::net::UnixStream::connect(path).unwrap();
            return Self {
                stream: std::io::BufReader::with_capacity(64 << 10, Box::new(s)),
                addr: "localhost".to_string(),
            };
        }
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        Self {
            stream: std::io::BufReader::with_capacity(64 << 10, Box::new(tcp)),
            addr: addr.to_string(),
        }
    }

    /// POSTs `body` as `application/octet-stream`; returns the status and the answer's body.
    fn post(&mut self, route: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let head = format!(
            "POST {route} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let tcp = self.stream.get_mut();
        if body.len() <= 64 << 10 {
            let mut all = head.into_bytes();
            all.extend_from_slice(body);
            tcp.write_all(&all).unwrap();
        } else {
            tcp.write_all(head.as_bytes()).unwrap();
            tcp.write_all(body).unwrap();
        }
        let mut status = 0u16;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
                status = rest[..3].parse().unwrap();
            } else if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0u8; length];
        self.stream.read_exact(&mut answer).unwrap();
        (status, answer)
    }
}
