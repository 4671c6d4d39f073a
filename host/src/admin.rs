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
static SINK_REACHABLE: AtomicBool = AtomicBool::new(true);

/// Marks the worker ready (or not) for `/readyz` and the `weir_ready` gauge.
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
    publish();
}

/// Records whether the last database call reached the sink: `/readyz` answers 503 while it does not.
pub fn set_sink_reachable(reachable: bool) {
    if SINK_REACHABLE.swap(reachable, Ordering::SeqCst) != reachable {
        publish();
    }
}

fn publish() {
    let ready = is_ready();
    crate::metrics::global().set("weir_ready", &[], if ready { 1.0 } else { 0.0 });
}

/// Whether the worker is ready: started, not stopping, and its sink reachable.
pub fn is_ready() -> bool {
    READY.load(Ordering::SeqCst) && SINK_REACHABLE.load(Ordering::SeqCst)
}

/// Most admin connections served at once; more are closed at once (a scraper storm must not cost the worker
/// its memory or file descriptors).
pub const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` (`0.0.0.0:9898`) and serves the admin routes until `shutdown` becomes true; returns the bound
/// address (port 0 picks a free port). A failing `accept` (out of file descriptors, say) backs off from 10 ms
/// to 1 s instead of spinning.
pub async fn serve(
    addr: &str,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let serving = accept_capped(&listener, &slots, "admin endpoint", |stream, permit| {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream)).await;
                drop(permit);
            });
        });
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = serving => {}
        }
    });
    Ok(local)
}

/// Accepts connections until the future is dropped: each is handed to `serve` with its slot of `slots`;
/// beyond them a connection is closed unanswered (a storm must not cost the process its memory or file
/// descriptors). A failing `accept` (out of file descriptors, say) backs off from 10 ms to 1 s instead of
/// spinning. `what` names the server in logs.
pub(crate) async fn accept_capped(
    listener: &TcpListener,
    slots: &std::sync::Arc<tokio::sync::Semaphore>,
    what: &'static str,
    mut serve: impl FnMut(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit),
) -> std::convert::Infallible {
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => serve(stream, permit),
                    Err(_) => drop(stream), // at the cap: closed unanswered
                }
            }
            Err(e) => {
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(1));
                tracing::warn!(error = %e, retry_ms = wait.as_millis() as u64, "{what}: accept failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
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

    /// At most `MAX_CONNECTIONS` are served at once (the next is closed unanswered, later ones are served
    /// again once slots free up), and the endpoint stops listening on shutdown.
    #[tokio::test]
    async fn connections_are_capped_and_shutdown_stops_the_listener() {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let addr = serve("127.0.0.1:0", shutdown).await.unwrap();
        let get = || async {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        assert!(get().await.starts_with("HTTP/1.1 200"));
        // Idle connections take every slot.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Each accepted idle connection holds its slot: the next request is closed unanswered.
        let mut refused = false;
        for _ in 0..50 {
            if get().await.is_empty() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "a request past the cap was answered");
        drop(idle);
        let mut answered = false;
        for _ in 0..100 {
            if get().await.starts_with("HTTP/1.1 200") {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "slots freed by closed connections are used again");
        stop.send(true).unwrap();
        let mut closed = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the listener is closed after shutdown");
    }

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
