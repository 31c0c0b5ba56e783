//! Listening: TCP or a Unix socket, each connection's first request line checked before hyper
//! sees it, refusals past the connection limit, and the shutdown signal.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use serde_json::json;

use super::*;

/// Where the server listens.
pub(super) enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    pub(super) async fn bind(addr: SocketAddr, unix: Option<&std::path::Path>) -> Result<Self> {
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
    pub(super) fn describe(&self) -> Result<String> {
        Ok(match self {
            Self::Tcp(l) => format!("http://{}", l.local_addr()?),
            #[cfg(unix)]
            Self::Unix(_, path) => format!("unix:{}", path.display()),
        })
    }

    /// Accepts one connection and starts serving it.
    pub(super) async fn accept(&self, conns: &Connections<'_>) -> io::Result<()> {
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
pub(super) struct Connections<'a> {
    pub(super) router: Router,
    pub(super) graceful: &'a hyper_util::server::graceful::GracefulShutdown,
    /// `--max-connections`.
    pub(super) limit: Arc<tokio::sync::Semaphore>,
    pub(super) header_timeout: Duration,
}

impl Connections<'_> {
    /// Serves HTTP/1.1 on `io` in a task of its own, or refuses it past `--max-connections`.
    pub(super) fn serve<T>(&self, io: T, peer: String)
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
pub(super) async fn first_line_checked<T>(mut io: T, timeout: Duration) -> Option<Rewind<T>>
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
pub(super) fn leading_blank(head: &[u8]) -> usize {
    head.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Checks `METHOD SP TARGET SP HTTP/1.x` (RFC 9112 §3; a trailing CR allowed).
pub(super) fn check_request_line(line: &[u8]) -> Result<(), &'static str> {
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
pub(super) struct Rewind<T> {
    pub(super) head: axum::body::Bytes,
    pub(super) io: T,
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
pub(super) const RECV_BUFFER: usize = 1 << 20;

/// Answers a connection past `--max-connections` with a JSON 503 and closes it.
pub(super) async fn refuse_connection(mut tcp: impl tokio::io::AsyncWrite + Unpin) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too many connections are open (--max-connections): retry shortly","status":503}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
}

pub(super) async fn shutdown_signal() {
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
