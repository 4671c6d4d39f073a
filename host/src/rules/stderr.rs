//! Guest stderr capture: what a rule prints (panic messages, debug output) is kept per call, bounded, and
//! logged with the batch id. Writing never fails, so a chatty rule cannot trap on its own output.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Most bytes of guest output kept per call; the rest is counted and discarded.
const CAPACITY: usize = 64 * 1024;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    discarded: usize,
}

/// A shared, bounded buffer that the guest's stderr (and stdout) write into.
#[derive(Clone, Default)]
pub struct GuestOutput(Arc<Mutex<Buffer>>);

impl GuestOutput {
    fn push(&self, bytes: &[u8]) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPACITY.saturating_sub(b.bytes.len());
        let keep = room.min(bytes.len());
        b.bytes.extend_from_slice(&bytes[..keep]);
        b.discarded += bytes.len() - keep;
    }

    /// Takes what was written so far as one line of text, leaving the buffer empty.
    pub fn take(&self) -> String {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // One line per call, for logs and dead-letter reasons; Rust's backtrace hint is noise here.
        let mut text = String::from_utf8_lossy(&b.bytes)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
            .collect::<Vec<_>>()
            .join(" ");
        if b.discarded > 0 {
            text.push_str(&format!(" [... {} more bytes]", b.discarded));
        }
        b.bytes.clear();
        b.discarded = 0;
        text
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(CAPACITY)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
