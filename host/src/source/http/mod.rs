//! The HTTP ingest source (`[source] kind = "http"`, `weir serve`): the tier a load balancer puts in front of
//! the pipeline.
//!
//! - `POST /v1/records` takes one record per line (or a JSON array, one record per element); `POST
//!   /v1/firehose` takes Amazon Data Firehose's HTTP endpoint delivery (`server.rs`).
//! - A request is answered 200 only once every record of it is in RAW and its batch has committed through the
//!   rule to the sink: the [`HttpAcker`] counts each request's records off as their batches commit.
//! - Record ids are `http/{node}/{request id}/{n}` (`n` from 1), the request id taken from `X-Request-Id` (or
//!   Firehose's `requestId`), so a client's retry of the same request gives the same ids: the final state is
//!   the same, as for a redelivered SQS message. A retry that arrives while the first attempt is still in flight
//!   waits for that attempt instead of sending the records again.
//! - Bounded: records and payload bytes received but not yet committed are counted by two semaphores
//!   (`max_pending_records`, `max_pending_bytes`); a request that does not fit is answered 429 with
//!   `Retry-After` before anything of it is kept. The channel to the batcher can then never be full.
//! - Unordered, like SQS: there is no checkpoint, a client's retry is the redelivery. On shutdown the server
//!   stops accepting, the records not yet batched are given back (their requests answered 503, to be retried),
//!   and the batches in flight drain and answer 200.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Acker, Source, SourceError};
use crate::record::{Batch, Polled};

mod forward;
mod server;
pub use forward::*;

/// Settings of an HTTP source (`[source] kind = "http"`).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The address to listen on.
    pub bind: String,
    /// The largest request body, in bytes, after gzip decoding.
    pub max_body_bytes: usize,
    /// The shared secret (bearer token, Firehose access key), if any.
    pub auth: Option<String>,
    /// Records received but not committed, at most.
    pub max_pending_records: usize,
    /// Payload bytes received but not committed, at most.
    pub max_pending_bytes: usize,
    /// How long a request waits for its commit before it is answered 503.
    pub commit_timeout: Duration,
    /// This server's name in record ids.
    pub node: String,
}

/// Longest request id, in bytes: it is part of every record id and position, and of the RAW object names
/// (a local RAW file name must stay under 255 bytes).
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Most connections served at once; more are closed unanswered (a load balancer retries elsewhere).
pub const MAX_CONNECTIONS: usize = 1024;

/// What became of a request's records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Some are not committed yet.
    Pending,
    /// Every record is in RAW and committed.
    Committed,
    /// Some will not commit in this attempt (why); the client should retry.
    Failed(String),
}

/// A request whose records are in flight.
struct InFlight {
    /// Which of its records have committed (a record counts once, even if two attempts both committed it).
    committed: Vec<bool>,
    remaining: usize,
    done: watch::Sender<Fate>,
    /// Its share of `max_pending_records` and `max_pending_bytes`, given back when it ends.
    _permits: Permits,
}

/// Requests in flight, by request id.
#[derive(Default)]
struct Requests {
    /// No more requests are taken (the source closed, or its pipeline stopped).
    closed: Option<String>,
    by_id: HashMap<String, InFlight>,
}

impl Requests {
    /// Ends every request in flight with `why` (their clients retry).
    fn fail_all(&mut self, why: &str) {
        for (_, r) in self.by_id.drain() {
            let _ = r.done.send(Fate::Failed(why.to_string()));
        }
    }

    /// Counts one committed record (`{request id}/{n}`) off its request.
    fn commit(&mut self, position: &str) {
        let Some((id, n)) = position.rsplit_once('/') else {
            return;
        };
        let Some(r) = self.by_id.get_mut(id) else {
            return; // an attempt that already ended (failed, or answered through an earlier attempt)
        };
        let Some(seen) = n
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| r.committed.get_mut(i))
        else {
            return;
        };
        if !*seen {
            *seen = true;
            r.remaining -= 1;
        }
        if r.remaining == 0
            && let Some(r) = self.by_id.remove(id)
        {
            let _ = r.done.send(Fate::Committed);
        }
    }
}

/// What the server, the source and the acker share.
struct Shared {
    options: HttpOptions,
    requests: Mutex<Requests>,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// To the batcher. Its capacity is `max_pending_records`, and every record in it holds a permit of
    /// `records`, so sending never waits and never fails while the source is open.
    tx: mpsc::Sender<Polled>,
    /// A forwarding tier's stream or queue, instead of the batcher.
    forward: Option<Arc<dyn Forward>>,
    /// One permit per open connection ([`MAX_CONNECTIONS`]): all of them back means every connection ended.
    connections: Arc<Semaphore>,
    /// Set when the server stops: each connection finishes the request it is answering, then closes.
    stopping: watch::Sender<bool>,
}

/// A request's share of `max_pending_records` and `max_pending_bytes`.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// How a request was taken.
enum Admission {
    /// Its records are queued (or it had none); the receiver tells when they committed.
    Taken(watch::Receiver<Fate>),
    /// An attempt with the same request id is in flight: wait for it instead.
    Joined(watch::Receiver<Fate>),
    /// Over `max_pending_records` or `max_pending_bytes` right now.
    Full,
    /// The source is closed (why).
    Closed(String),
}

impl Shared {
    /// Reserves room for `n` records of `bytes` payload bytes, unless the server is closed or full.
    fn reserve(&self, requests: &Requests, n: usize, bytes: usize) -> Result<Permits, Admission> {
        if let Some(why) = &requests.closed {
            return Err(Admission::Closed(why.clone()));
        }
        let (Ok(n32), Ok(bytes32)) = (u32::try_from(n), u32::try_from(bytes)) else {
            return Err(Admission::Full);
        };
        let records = self
            .records
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(|_| Admission::Full)?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(bytes32)
            .map_err(|_| Admission::Full)?;
        Ok((records, bytes))
    }

    /// Room for a forwarded request, held while its records are put.
    fn reserve_forward(
        &self,
        records: &[crate::contract::SourceRecord],
    ) -> Result<Permits, Admission> {
        let bytes = records.iter().map(|r| r.payload.len()).sum();
        let requests = self.requests.lock().expect("not poisoned");
        self.reserve(&requests, records.len(), bytes)
    }

    /// Takes a request's records, or says why not. Under one lock with [`HttpSource::close`], so a record is
    /// either queued before the source closes (and given back by it) or refused.
    fn admit(&self, id: &str, records: Vec<crate::contract::SourceRecord>) -> Admission {
        let n = records.len();
        let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        let mut requests = self.requests.lock().expect("not poisoned");
        if let Some(why) = &requests.closed {
            return Admission::Closed(why.clone());
        }
        if let Some(r) = requests.by_id.get(id) {
            return Admission::Joined(r.done.subscribe());
        }
        if n == 0 {
            return Admission::Taken(watch::channel(Fate::Committed).1);
        }
        let permits = match self.reserve(&requests, n, bytes) {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        let (done, rx) = watch::channel(Fate::Pending);
        for (i, record) in records.into_iter().enumerate() {
            let polled = Polled {
                record,
                position: format!("{id}/{}", i + 1),
            };
            if self.tx.try_send(polled).is_err() {
                // Only when the batcher is gone without closing the source (its pipeline failed).
                let why = "the pipeline stopped".to_string();
                requests.closed = Some(why.clone());
                return Admission::Closed(why);
            }
        }
        requests.by_id.insert(
            id.to_string(),
            InFlight {
                committed: vec![false; n],
                remaining: n,
                done,
                _permits: permits,
            },
        );
        Admission::Taken(rx)
    }
}

/// Binds the server's address.
async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), SourceError> {
    let io = |e: std::io::Error| SourceError::Io {
        source_name: "http".into(),
        message: format!("cannot listen on {addr}: {e} (is another process on that port?)"),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    Ok((listener, local))
}

impl Shared {
    fn new(
        options: HttpOptions,
        forward: Option<Arc<dyn Forward>>,
    ) -> (Arc<Shared>, mpsc::Receiver<Polled>) {
        let (tx, rx) = mpsc::channel(options.max_pending_records);
        let shared = Arc::new(Shared {
            records: Arc::new(Semaphore::new(options.max_pending_records)),
            bytes: Arc::new(Semaphore::new(options.max_pending_bytes)),
            options,
            requests: Mutex::new(Requests::default()),
            tx,
            forward,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            stopping: watch::channel(false).0,
        });
        (shared, rx)
    }

    /// Stops the server's connections once the requests they are answering were answered (at most
    /// `commit_timeout`, and 10 s more for the answers to be written): the worker must not exit with an answer
    /// computed but not sent.
    async fn finish_connections(&self) {
        self.stopping.send_replace(true); // stored even before a connection subscribed
        let limit = self.options.commit_timeout + Duration::from_secs(10);
        let all = MAX_CONNECTIONS as u32;
        if tokio::time::timeout(limit, self.connections.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("http source: connections still open at exit");
        }
    }
}

/// Serves a forwarding tier until `stop` resolves: each request's records are put into `forward` and the
/// request answered once they all were. Then it stops accepting and waits (at most `commit_timeout`) for the
/// puts in flight.
pub async fn serve_forwarding(
    options: HttpOptions,
    forward: Arc<dyn Forward>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SourceError> {
    let (listener, addr) = bind(&options.bind).await?;
    tracing::info!(%addr, node = %options.node, to = %forward.describe(), "http forwarding tier: listening (POST /v1/records, POST /v1/firehose)");
    let (shared, _rx) = Shared::new(options, Some(forward));
    let accepting = Listener(tokio::spawn(server::accept(listener, shared.clone())));
    crate::admin::set_ready(true);
    stop.await;
    crate::admin::set_ready(false);
    drop(accepting);
    shared.requests.lock().expect("not poisoned").closed =
        Some("the server is shutting down".into());
    // The puts in flight finish and are answered; then every connection closes.
    shared.finish_connections().await;
    Ok(())
}

/// Aborts the server's accept loop when dropped.
struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The HTTP ingest source: a server that feeds the batcher.
pub struct HttpSource {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Polled>,
    listener: Option<Listener>,
    addr: std::net::SocketAddr,
}

impl HttpSource {
    /// Binds `options.bind` and starts serving.
    pub async fn open(options: HttpOptions) -> Result<Self, SourceError> {
        let (listener, addr) = bind(&options.bind).await?;
        let (shared, rx) = Shared::new(options, None);
        tracing::info!(%addr, node = %shared.options.node, "http source: listening (POST /v1/records, POST /v1/firehose)");
        let task = tokio::spawn(server::accept(listener, shared.clone()));
        Ok(Self {
            shared,
            rx,
            listener: Some(Listener(task)),
            addr,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

#[async_trait]
impl Source for HttpSource {
    fn source(&self) -> &str {
        "http"
    }

    fn partition(&self) -> &str {
        &self.shared.options.node
    }

    async fn seek(&mut self, _position: &str) -> Result<(), SourceError> {
        Ok(()) // unordered: a client's retry is the redelivery
    }

    async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
        // The source holds a sender through `shared`, so this waits for the next request for ever.
        Ok(self.rx.recv().await)
    }

    fn acker(&self) -> Box<dyn Acker> {
        Box::new(HttpAcker {
            shared: self.shared.clone(),
        })
    }

    fn ordered(&self) -> bool {
        false
    }

    async fn close(&mut self) {
        self.listener = None; // no new connections; those open are answered 503 from here on
        let mut requests = self.shared.requests.lock().expect("not poisoned");
        requests.closed = Some("the server is shutting down".into());
        // Records queued but never batched: their requests are answered 503 at once, to be retried elsewhere.
        let mut given_back = 0usize;
        while let Ok(p) = self.rx.try_recv() {
            given_back += 1;
            if let Some((id, _)) = p.position.rsplit_once('/')
                && let Some(r) = requests.by_id.remove(id)
            {
                let _ = r
                    .done
                    .send(Fate::Failed("the server is shutting down".into()));
            }
        }
        if given_back > 0 {
            tracing::info!(
                records = given_back,
                "http source: records received but not batched were given back (their requests answered 503)"
            );
        }
    }
}

/// Answers requests once their batches have committed.
pub struct HttpAcker {
    shared: Arc<Shared>,
}

#[async_trait]
impl Acker for HttpAcker {
    async fn ack(&mut self, batch: &Batch) -> Result<(), SourceError> {
        let mut requests = self.shared.requests.lock().expect("not poisoned");
        for p in &batch.positions {
            requests.commit(p);
        }
        Ok(())
    }

    /// The last batch is acknowledged: whatever is still waiting will not commit in this run; every request
    /// is answered and written before the worker may exit.
    async fn finish(&mut self) {
        {
            let mut requests = self.shared.requests.lock().expect("not poisoned");
            let why = "the server is shutting down";
            requests.closed.get_or_insert_with(|| why.to_string());
            requests.fail_all(why);
        }
        self.shared.finish_connections().await;
    }
}

impl Drop for HttpAcker {
    /// The pipeline is gone: what is still in flight will not commit in this run.
    fn drop(&mut self) {
        let mut requests = self.shared.requests.lock().expect("not poisoned");
        let why = "the pipeline stopped before these records committed";
        requests.closed.get_or_insert_with(|| why.to_string());
        requests.fail_all(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &str) -> crate::contract::SourceRecord {
        crate::contract::SourceRecord {
            id: String::new(),
            partition_key: String::new(),
            arrived_at_ms: 0,
            attributes: Vec::new(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn shared(max_records: usize, max_bytes: usize) -> (Arc<Shared>, mpsc::Receiver<Polled>) {
        let options = HttpOptions {
            bind: "127.0.0.1:0".into(),
            max_body_bytes: 1024,
            auth: None,
            max_pending_records: max_records,
            max_pending_bytes: max_bytes,
            commit_timeout: Duration::from_secs(1),
            node: "n".into(),
        };

        Shared::new(options, None)
    }

    #[test]
    fn a_request_commits_once_every_record_has_and_frees_its_share() {
        let (shared, mut rx) = shared(3, 100);
        let Admission::Taken(done) = shared.admit("r1", vec![record("a"), record("b")]) else {
            panic!("taken")
        };
        assert!(matches!(
            shared.admit("r2", vec![record("c"), record("d")]),
            Admission::Full
        ));
        let joined = match shared.admit("r1", vec![record("a"), record("b")]) {
            Admission::Joined(j) => j,
            _ => panic!("a retry in flight joins the first attempt"),
        };
        assert_eq!(rx.try_recv().unwrap().position, "r1/1");
        assert_eq!(rx.try_recv().unwrap().position, "r1/2");
        let mut requests = shared.requests.lock().unwrap();
        requests.commit("r1/2");
        requests.commit("r1/2"); // a second attempt's copy counts once
        assert_eq!(*done.borrow(), Fate::Pending);
        requests.commit("r1/1");
        drop(requests);
        assert_eq!(*done.borrow(), Fate::Committed);
        assert_eq!(*joined.borrow(), Fate::Committed);
        assert!(matches!(
            shared.admit("r2", vec![record("c"), record("d")]),
            Admission::Taken(_)
        ));
    }

    #[test]
    fn bytes_are_bounded_too() {
        let (shared, _rx) = shared(100, 3);
        assert!(matches!(
            shared.admit("r", vec![record("abcd")]),
            Admission::Full
        ));
        assert!(matches!(
            shared.admit("r", vec![record("abc")]),
            Admission::Taken(_)
        ));
    }

    #[test]
    fn positions_of_unknown_requests_are_ignored() {
        let (shared, _rx) = shared(10, 100);
        let mut requests = shared.requests.lock().unwrap();
        for p in ["", "x", "x/0", "x/1", "x/nope", "/", "a/b/c"] {
            requests.commit(p);
        }
        assert!(requests.by_id.is_empty());
    }
}
