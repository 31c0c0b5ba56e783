//! The client half of `run --remote`: keep-alive HTTP/1.1 `POST`s over TCP or a Unix socket.
//!
//! Written here rather than taken from an HTTP client crate because the one job it has is to
//! move large bodies: the body goes from the caller's buffer straight to the socket (ureq
//! copied every body through its own output buffer, a third of the client's time on a 400 MB
//! input), and `serve --unix` needs a Unix-socket transport that the small clients lack. The
//! answer's head is parsed by `httparse` (hyper's parser); bodies with a `Content-Length` or
//! chunked are read, up to a limit.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where a server listens: `http://HOST:PORT[/PREFIX]` or `unix:PATH`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Endpoint {
    Tcp {
        /// `HOST:PORT`, also sent as the `Host` header.
        authority: String,
        /// The path prefix (no trailing slash), `""` for none.
        prefix: String,
    },
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl Endpoint {
    /// Parses a `--remote` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("unix:") {
            #[cfg(unix)]
            {
                let path = path.trim_start_matches("//");
                if path.is_empty() {
                    return Err(format!(
                        "{url}: give the socket's path, as in unix:/run/microbatch.sock"
                    ));
                }
                return Ok(Self::Unix(path.into()));
            }
            #[cfg(not(unix))]
            return Err(format!("{url}: Unix sockets exist only on Unix ({path})"));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "{url}: give a base URL like http://HOST:PORT or unix:/path/to/socket (https is not supported)"
            ));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(format!("{url}: not a base URL like http://HOST:PORT"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.contains(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self::Tcp {
            authority,
            prefix: prefix.to_string(),
        })
    }

    /// The path to send for `route` (which starts with `/`).
    fn target(&self, route: &str) -> String {
        match self {
            Self::Tcp { prefix, .. } => format!("{prefix}{route}"),
            #[cfg(unix)]
            Self::Unix(_) => route.to_string(),
        }
    }

    fn host(&self) -> &str {
        match self {
            Self::Tcp { authority, .. } => authority,
            #[cfg(unix)]
            Self::Unix(_) => "localhost",
        }
    }
}

/// A connected socket, TCP or Unix.
enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write_vectored(bufs),
            #[cfg(unix)]
            Self::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What went wrong with one request.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// No answer came (refused, reset, timed out, cut short): worth sending again.
    Transport(String),
    /// An answer came that is not HTTP/1.x as this client reads it.
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) | Self::Protocol(e) => f.write_str(e),
        }
    }
}

/// One server's client: a connection opened on first use and kept alive between requests.
pub(crate) struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    conn: Option<Stream>,
}

/// Largest answer head and body read.
const HEAD_LIMIT: usize = 64 << 10;
const BODY_LIMIT: usize = 16 << 20;

impl Client {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            timeout,
            conn: None,
        }
    }

    fn connect(&self) -> io::Result<Stream> {
        let stream = match &self.endpoint {
            Endpoint::Tcp { authority, .. } => {
                use std::net::ToSocketAddrs;
                let mut last = None;
                let mut found = None;
                for addr in authority.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, self.timeout.min(CONNECT_TIMEOUT)) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e),
                    (None, None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{authority} resolves to no address"),
                        ));
                    }
                };
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Stream::Tcp(s)
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Stream::Unix(s)
            }
        };
        Ok(stream)
    }

    /// `POST route` with `body` (`application/octet-stream`) and extra `headers`; the answer's
    /// status and body. A kept-alive connection that turns out closed is reopened once (the
    /// request had not reached the server).
    pub fn post(
        &mut self,
        route: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            self.endpoint.target(route),
            self.endpoint.host(),
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let reused = self.conn.is_some();
        match self.exchange(head.as_bytes(), body) {
            // A kept-alive connection the server had closed fails at once with nothing read:
            // send on a fresh one.
            Err(HttpError::Transport(_)) if reused => {
                self.conn = None;
                self.exchange(head.as_bytes(), body)
            }
            other => other,
        }
        .inspect_err(|_| self.conn = None)
    }

    fn exchange(&mut self, head: &[u8], body: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let what = |e: io::Error| HttpError::Transport(e.to_string());
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(what)?);
        }
        let conn = self.conn.as_mut().expect("connected");
        let sent = write_all_vectored(conn, head, body);
        // A server may answer (401, 413, …) and close before reading the whole body: read its
        // answer before reporting the failed write.
        let answer = read_answer(conn);
        match (sent, answer) {
            (_, Ok((status, body, keep))) => {
                if !keep {
                    self.conn = None;
                }
                Ok((status, body))
            }
            (Err(e), Err(_)) => Err(what(e)),
            (Ok(()), Err(e)) => Err(e),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `head` then `body`, in one system call where the socket takes both.
fn write_all_vectored(s: &mut Stream, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        let n = s.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let h = n.min(head.len());
        head = &head[h..];
        body = &body[n - h..];
    }
    s.write_all(body)
}

/// Reads one answer: status, body, and whether the connection stays open.
fn read_answer(conn: &mut Stream) -> Result<(u16, Vec<u8>, bool), HttpError> {
    let io = |e: io::Error| HttpError::Transport(format!("reading the answer: {e}"));
    let proto = |e: String| HttpError::Protocol(format!("the answer is not HTTP/1.1: {e}"));
    // The head, whole: read until it parses (the server sends nothing unasked, so what follows
    // the head in `buf` is the start of this answer's body).
    let mut buf = Vec::with_capacity(1024);
    let (status, length, chunked, keep, used) = loop {
        let at = buf.len();
        if at >= HEAD_LIMIT {
            return Err(proto(format!("a head longer than {HEAD_LIMIT} bytes")));
        }
        buf.resize(at + 4096, 0);
        let got = match conn.read(&mut buf[at..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(io(e)),
        };
        buf.truncate(at + got);
        if got == 0 && buf.len() == at {
            return Err(HttpError::Transport(if at == 0 {
                "the connection closed before an answer".into()
            } else {
                "the connection closed inside the answer's head".into()
            }));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(used)) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut chunked = false;
                let mut keep = resp.version == Some(1);
                for h in resp.headers.iter() {
                    let value = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(value.parse::<usize>().map_err(|_| {
                            proto(format!("Content-Length {value:?} is not a number"))
                        })?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = value.eq_ignore_ascii_case("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep = !value.eq_ignore_ascii_case("close");
                    }
                }
                break (status, length, chunked, keep, used);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(proto(e.to_string())),
        }
    };
    let rest = buf.split_off(used);
    if chunked {
        // Read through a buffer; whatever it reads past the answer would be lost, so the
        // connection is not reused (serve answers with a Content-Length; this is for others).
        let mut reader = BufReader::new(io::Cursor::new(rest).chain(&mut *conn));
        let body = read_chunked(&mut reader).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => proto(e.to_string()),
            _ => io(e),
        })?;
        return Ok((status, body, false));
    }
    let Some(n) = length else {
        // No length: the body runs to the end of the connection.
        let mut body = rest;
        conn.take(BODY_LIMIT as u64 + 1)
            .read_to_end(&mut body)
            .map_err(io)?;
        if body.len() > BODY_LIMIT {
            return Err(proto(format!("an answer longer than {BODY_LIMIT} bytes")));
        }
        return Ok((status, body, false));
    };
    if n > BODY_LIMIT {
        return Err(proto(format!(
            "an answer of {n} bytes (more than {BODY_LIMIT})"
        )));
    }
    if rest.len() > n {
        return Err(proto(format!(
            "{} bytes after a body of {n}",
            rest.len() - n
        )));
    }
    let mut body = rest;
    let at = body.len();
    body.resize(n, 0);
    conn.read_exact(&mut body[at..]).map_err(io)?;
    Ok((status, body, keep))
}

/// A chunked body (trailers ignored), up to `BODY_LIMIT`.
fn read_chunked(conn: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        (&mut *conn).take(1024).read_line(&mut line)?;
        if !line.ends_with('\n') {
            return Err(bad("a chunk size line cut short"));
        }
        let size = line.trim_end().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("a chunk size not in hex"))?;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                line.clear();
                (&mut *conn).take(8192).read_line(&mut line)?;
                if line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > BODY_LIMIT {
            return Err(bad("an answer longer than the limit"));
        }
        let at = body.len();
        body.resize(at + size, 0);
        conn.read_exact(&mut body[at..])?;
        line.clear();
        (&mut *conn).take(2).read_line(&mut line)?;
        if line != "\r\n" && line != "\n" {
            return Err(bad("a chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_what_to_give() {
        assert_eq!(
            Endpoint::parse("http://10.0.0.5:8787/").unwrap(),
            Endpoint::Tcp {
                authority: "10.0.0.5:8787".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Endpoint::parse("http://host/api/").unwrap(),
            Endpoint::Tcp {
                authority: "host:80".into(),
                prefix: "/api".into()
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:9000").unwrap(),
            Endpoint::Tcp {
                authority: "[::1]:9000".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]").unwrap(),
            Endpoint::Tcp {
                authority: "[::1]:80".into(),
                prefix: String::new()
            }
        );
        #[cfg(unix)]
        assert_eq!(
            Endpoint::parse("unix:/run/mb.sock").unwrap(),
            Endpoint::Unix("/run/mb.sock".into())
        );
        for bad in [
            "https://x:1",
            "x:1",
            "http://",
            "http://u@h:1",
            "unix:",
            "ftp://h",
        ] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert!(e.starts_with(bad), "{bad}: {e}");
        }
    }

    /// Serves one connection with `answer`, after reading the request's head and body.
    fn one_answer(answer: &'static [u8]) -> Endpoint {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Head plus the 5-byte body.
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"hello") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&got);
            assert!(head.starts_with("POST /p/r?x=1 HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("Content-Length: 5\r\n"), "{head}");
            assert!(head.contains("X-A: b\r\n"), "{head}");
            c.write_all(answer).unwrap();
        });
        Endpoint::parse(&format!("http://{addr}/p")).unwrap()
    }

    fn post(answer: &'static [u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let mut c = Client::new(one_answer(answer), Duration::from_secs(10));
        c.post("/r?x=1", &[("X-A", "b")], b"hello")
    }

    #[test]
    fn answers_with_a_length_chunked_or_to_the_end_are_read() {
        let (s, b) = post(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!((s, &b[..]), (200, &b"abc"[..]));
        let (s, b) = post(
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, &b[..]), (400, &b"abcde"[..]));
        let (s, b) = post(b"HTTP/1.0 503 Busy\r\n\r\nlater").unwrap();
        assert_eq!((s, &b[..]), (503, &b"later"[..]));
    }

    #[test]
    fn broken_answers_are_errors_not_results() {
        for (answer, want) in [
            (&b"HELLO THERE\r\n\r\n"[..], "not HTTP"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "not a number",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                "more than",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "reading the answer",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "hex",
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "closed inside"),
            (b"", "closed before"),
        ] {
            let e = post(answer).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn nobody_listening_is_a_transport_error() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut c = Client::new(
            Endpoint::parse(&format!("http://{addr}")).unwrap(),
            Duration::from_secs(5),
        );
        assert!(matches!(
            c.post("/", &[], b"x"),
            Err(HttpError::Transport(_))
        ));
    }
}
