//! `run --remote`: the batching side against real `microbatch serve` processes on loopback. The
//! merged answer equals the local run bit for bit (the same batches, merged in the same order),
//! with one server or three, also when one of three is killed mid-run; servers all down, a
//! wrong token and a server that answers without a mergeable partial are clear errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_microbatch"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--in-memory",
                "--backend",
                "cpu",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().trim_start_matches("listening on ").to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw f32 file of `n` normal values, and its path.
fn data_file(name: &str, n: usize) -> std::path::PathBuf {
    let mut rng = fresh_rng(name);
    let values = normal(&mut rng, n, 1e4, 7.0);
    let path = scratch_root().join(format!("mb-remote-{name}.f32"));
    std::fs::write(
        &path,
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    path
}

#[test]
fn remote_runs_equal_the_local_run_with_one_server_or_three() {
    let path = data_file("equal", 1_000_003);
    let p = path.to_str().unwrap();
    let local = json(&run(&[
        "run",
        p,
        "--backend",
        "cpu",
        "--batch-size",
        "65536",
        "--json",
    ]));
    let servers: Vec<Server> = (0..3).map(|_| Server::start(&[])).collect();
    for urls in [
        servers[0].url.clone(),
        servers
            .iter()
            .map(|s| s.url.clone())
            .collect::<Vec<_>>()
            .join(","),
    ] {
        let v = json(&run(&[
            "run",
            p,
            "--remote",
            &urls,
            "--batch-size",
            "65536",
            "--json",
        ]));
        assert_eq!(v["stats"], local["stats"], "{urls}");
        assert_eq!(v["batches"]["count"], 16);
        let per: u64 = v["remote"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["batches"].as_u64().unwrap())
            .sum();
        assert_eq!(per, 16, "every batch answered once: {}", v["remote"]);
    }
    // --partial and --ddof as for a local run.
    let partial = scratch_root().join("mb-remote.json");
    let v = json(&run(&[
        "run",
        p,
        "--remote",
        &servers[1].url,
        "--ddof",
        "1",
        "--partial",
        partial.to_str().unwrap(),
        "--json",
        "--batch-size",
        "65536",
    ]));
    let local1 = json(&run(&[
        "run",
        p,
        "--backend",
        "cpu",
        "--batch-size",
        "65536",
        "--ddof",
        "1",
        "--json",
    ]));
    assert_eq!(v["stats"], local1["stats"]);
    let merged = json(&run(&["merge", partial.to_str().unwrap(), "--json"]));
    assert_eq!(merged["stats"], local1["stats"]);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&partial);
}

/// `--remote unix:PATH` reaches a `serve --unix` server: the same bits as the local run, and
/// the report's stages filled from what happened (read here, the servers' compute, P).
#[cfg(unix)]
#[test]
fn remote_over_a_unix_socket_equals_the_local_run_and_reports_its_stages() {
    let path = data_file("unix", 300_001);
    let p = path.to_str().unwrap();
    let sock = scratch_root().join("mb-remote.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args(["serve", "--unix", sock.to_str().unwrap(), "--in-memory"])
        .args(["--backend", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server {
        child,
        url: format!("unix:{}", sock.display()),
    };
    let local = json(&run(&[
        "run",
        p,
        "--backend",
        "cpu",
        "-b",
        "32768",
        "--json",
    ]));
    let v = json(&run(&[
        "run",
        p,
        "--remote",
        &server.url,
        "-b",
        "32768",
        "--json",
    ]));
    assert_eq!(v["stats"], local["stats"]);
    assert_eq!(v["batches"]["count"], 10);
    assert_eq!(v["remote"]["servers"][0]["batches"], 10);
    assert_eq!(v["remote"]["servers"][0]["bytes"], 300_001 * 4);
    let t = &v["timings_s"];
    for k in ["read", "compute", "merge"] {
        assert!(t[k].as_f64().unwrap() > 0.0, "{k}: {t}");
    }
    assert!(t["compute"].as_f64() < t["total"].as_f64(), "{t}");
    assert!(v["batches"]["workgroups"].as_u64().unwrap() >= 1, "{v}");
    // The table names the socket.
    let o = run(&["run", p, "--remote", &server.url]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains(&format!("server       unix:{}", sock.display())),
        "{table}"
    );
    drop(server);
    let _ = std::fs::remove_file(&path);
}

/// Requests `/v1/reduce` has answered 200, from the server's metrics.
fn answered(url: &str) -> u64 {
    let addr = url.trim_start_matches("http://");
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.lines()
        .find(|l| l.starts_with("microbatch_requests_total{route=\"/v1/reduce\",status=\"200\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_server_killed_mid_run_loses_nothing() {
    let path = data_file("chaos", 4_000_000);
    let p = path.to_str().unwrap();
    let local = json(&run(&[
        "run",
        p,
        "--backend",
        "cpu",
        "--batch-size",
        "1024",
        "--json",
    ]));
    let mut servers: Vec<Server> = (0..3).map(|_| Server::start(&[])).collect();
    let urls = servers
        .iter()
        .map(|s| s.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new(env!("CARGO_BIN_EXE_microbatch"))
        .args([
            "run",
            p,
            "--remote",
            &urls,
            "--batch-size",
            "1024",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 3,907 batches; the second server is killed once it has answered 50 of them.
    let start = std::time::Instant::now();
    while answered(&servers[1].url) < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run never reached server 2"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = servers[1].child.kill();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats"], local["stats"]);
    let per = v["remote"]["servers"].as_array().unwrap();
    let total: u64 = per.iter().map(|s| s["batches"].as_u64().unwrap()).sum();
    assert_eq!(total, 3907, "{}", v["remote"]);
    // The killed server answered some, then failed the rest over to the others.
    assert!(per[1]["batches"].as_u64().unwrap() >= 50, "{}", v["remote"]);
    assert!(
        per[1]["batches"].as_u64().unwrap() < 3907 / 2,
        "{}",
        v["remote"]
    );
    eprintln!("per server: {}", v["remote"]);
    drop(servers.remove(1));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn dead_servers_wrong_tokens_and_foreign_answers_are_clear_errors() {
    let path = data_file("errors", 100_000);
    let p = path.to_str().unwrap();
    // Nobody listening (bind, then close).
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        })
        .collect();
    let o = run(&["run", p, "--remote", &dead.join(","), "--json"]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "nothing printed as if final");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no server is answering") && e.contains(&dead[0]),
        "{e}"
    );

    // A wrong token.
    let dir = scratch_root().join("mb-remote-tok");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t"), "the-right-token-1234\n").unwrap();
    std::fs::write(dir.join("w"), "the-wrong-token-1234\n").unwrap();
    let server = Server::start(&["--token-file", dir.join("t").to_str().unwrap()]);
    let o = run(&[
        "run",
        p,
        "--remote",
        &server.url,
        "--token-file",
        dir.join("w").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("401") && e.contains("token"), "{e}");
    let v = json(&run(&[
        "run",
        p,
        "--remote",
        &server.url,
        "--token-file",
        dir.join("t").to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["stats"]["count"], 100_000);

    // Something that answers 200 without a partial (an older server, or not microbatch).
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_url = format!("http://{}", fake.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut c in fake.incoming().flatten() {
            let mut buf = vec![0u8; 1 << 20];
            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
            while c.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
            let body = r#"{"stats":{"count":1}}"#;
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let o = run(&["run", p, "--remote", &fake_url]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no partial"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&path);
}

/// `run --remote --quantiles`: each server sends back its batch's sketch, merged here exactly:
/// the quantiles equal the local run's bit for bit (one server or two), the partial file
/// carries the sketch; `--histogram` with `--remote` is refused.
#[test]
fn remote_quantiles_equal_the_local_run() {
    let path = data_file("quantiles", 700_001);
    let p = path.to_str().unwrap();
    let local = json(&run(&[
        "run",
        p,
        "--quantiles",
        "0.001,0.5,0.999",
        "--json",
        "--backend",
        "cpu",
    ]));
    let servers: Vec<Server> = (0..2).map(|_| Server::start(&[])).collect();
    for n in [1, 2] {
        let urls: Vec<&str> = servers[..n].iter().map(|s| s.url.as_str()).collect();
        let list = urls.join(",");
        let shard = scratch_root().join(format!("mb-remote-quantiles-{n}.json"));
        let v = json(&run(&[
            "run",
            p,
            "--remote",
            &list,
            "--batch-size",
            "100000",
            "--quantiles",
            "0.001,0.5,0.999",
            "--partial",
            shard.to_str().unwrap(),
            "--json",
        ]));
        assert_eq!(
            v["stats"]["quantiles"], local["stats"]["quantiles"],
            "{n} server(s)"
        );
        assert_eq!(v["quantile_error"], local["quantile_error"]);
        let merged = json(&run(&[
            "merge",
            shard.to_str().unwrap(),
            "--quantiles",
            "0.5",
            "--json",
        ]));
        assert_eq!(
            merged["stats"]["quantiles"]["0.5"],
            local["stats"]["quantiles"]["0.5"]
        );
    }
    let o = run(&["run", p, "--remote", &servers[0].url, "--histogram", "4"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--histogram"),
        "{}",
        stderr(&o)
    );
}
