//! The admin endpoint (`[admin] bind`): `GET /healthz` (the process serves), `GET /readyz` (rule loaded, sink
//! prepared, source open, not shutting down) and `GET /metrics` (Prometheus text format).
//!
//! Three read-only GET routes with no body, one request per connection: a plain HTTP/1.1 responder on the
//! tokio listener keeps the worker free of a web framework. Requests are bounded (8 KiB of headers, 5 s).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

static READY: AtomicBool = AtomicBool::new(false);

/// Marks the worker ready (or not) for `/readyz` and the `weir_ready` gauge.
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
    crate::metrics::global().set("weir_ready", &[], if ready { 1.0 } else { 0.0 });
}

/// Whether the worker is ready.
pub fn is_ready() -> bool {
    READY.load(Ordering::SeqCst)
}

/// Binds `addr` (`0.0.0.0:9898`) and serves the admin routes until the process ends; returns the bound
/// address (port 0 picks a free port).
pub async fn serve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream)).await;
            });
        }
    });
    Ok(local)
}

/// The response to one request line.
fn respond(request_line: &str) -> (u16, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "only GET\n".into());
    }
    match path {
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if is_ready() => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not ready\n".into()),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::global().render(),
        ),
        _ => (
            404,
            "text/plain",
            "not found: /healthz, /readyz, /metrics\n".into(),
        ),
    }
}

async fn answer(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("");
    let (status, content_type, body) = respond(line);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !line.starts_with("HEAD") {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes answer with the documented status codes.
    #[test]
    fn routes() {
        assert_eq!(respond("GET /healthz HTTP/1.1").0, 200);
        assert_eq!(respond("GET /nope HTTP/1.1").0, 404);
        assert_eq!(respond("POST /metrics HTTP/1.1").0, 405);
        let (status, kind, body) = respond("GET /metrics HTTP/1.1");
        assert_eq!(status, 200);
        assert!(kind.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("# TYPE weir_up gauge"));
    }
}
