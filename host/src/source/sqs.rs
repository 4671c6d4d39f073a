//! The Amazon SQS source: standard and FIFO queues.
//!
//! - `receivers` tasks long-poll the queue (`wait_secs`, up to `max_messages` per call) and feed one bounded
//!   channel, so a slow pipeline stops the polling instead of piling messages up.
//! - Every received message is *in flight* until its batch commits: a heartbeat extends its visibility
//!   (`ChangeMessageVisibilityBatch`) before it runs out, so a slow sink never causes a redelivery.
//! - After the commit, the [`SqsAcker`] deletes the batch's messages (`DeleteMessageBatch`), retrying entries
//!   that failed with backoff for at least a minute (an endpoint outage) with the newest receipt handle. A
//!   message whose deletion fails for good comes back later; its replay leaves the same final state (rows
//!   are upserted by key) and shows in the ledger as a new batch. A refused permission stops the worker.
//! - Messages received but never batched (shutdown) are made visible again at once.
//!
//! Record ids are `sqs/{queue}/{message-id}` on every queue: stable across redeliveries, and unique (a FIFO
//! deduplication id is not: content-based ids repeat once the 5-minute deduplication window has passed, and
//! SQS itself already keeps a producer's retry within the window as one message). Positions are message ids
//! (FIFO: sequence numbers).
//! Attributes passed to the rule: every message attribute under its own name (binary values in base64), and
//! the system attributes as `sqs:MessageGroupId`, `sqs:MessageDeduplicationId`, `sqs:SequenceNumber`,
//! `sqs:ApproximateReceiveCount`, `sqs:SentTimestamp` (`:` cannot occur in message attribute names).
//! The arrival time is the message's `SentTimestamp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use base64::Engine as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Acker, Source, SourceError};
use crate::record::{Batch, Polled};
use crate::rules::SourceRecord;

/// Settings of an SQS source (`[source] kind = "sqs"`).
#[derive(Debug, Clone)]
pub struct SqsOptions {
    /// The queue URL.
    pub queue_url: String,
    /// Concurrent long-polling receivers.
    pub receivers: usize,
    /// Long-poll wait, seconds.
    pub wait_secs: i32,
    /// Messages per receive call.
    pub max_messages: i32,
    /// Visibility timeout of received messages, seconds; extended while in flight.
    pub visibility_timeout_secs: i32,
    /// End the input after this long without a message.
    pub idle_exit: Option<Duration>,
}

/// A message between its receipt and its deletion.
struct InFlight {
    receipt: String,
    /// When its current visibility runs out (as far as this worker knows).
    visible_at: Instant,
    /// Handed to the pipeline (else still in the channel when the source stops).
    handed: bool,
}

/// State shared by the receivers, the source, the heartbeat and the acker.
struct Shared {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    queue: String,
    visibility: Duration,
    /// In-flight messages by position.
    inflight: Mutex<HashMap<String, InFlight>>,
    /// Receivers whose last call failed, and when the last of them recovered: an outage is not idleness, so
    /// `idle_exit_secs` counts only from the moment every receiver got through again.
    failing: Mutex<(usize, Instant)>,
    /// When the latest receive call that found the queue empty was sent: the input is idle only once a call
    /// sent after the last message came back empty (a slow server is not an empty queue).
    polled_empty: Mutex<Option<Instant>>,
}

impl Shared {
    /// Whether a receiver is failing, or the last one recovered less than `window` ago.
    fn unreachable_within(&self, window: Duration) -> bool {
        let (failing, recovered_at) = *self.failing.lock().expect("not poisoned");
        failing > 0 || recovered_at.elapsed() < window
    }

    /// Whether a receive call sent at or after `since` found the queue empty.
    fn polled_empty_since(&self, since: Instant) -> bool {
        self.polled_empty
            .lock()
            .expect("not poisoned")
            .is_some_and(|at| at >= since)
    }
}

/// Aborts its tasks when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The heartbeat lives as long as the source or the acker: messages of committed-but-unacknowledged batches
/// must stay invisible after the source has stopped reading.
struct Heartbeat {
    _task: Tasks,
}

/// Reads one SQS queue.
pub struct SqsSource {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Result<Polled, SourceError>>,
    receivers: Tasks,
    heartbeat: Arc<Heartbeat>,
    idle_exit: Option<Duration>,
    /// When the last message was handed out (or the source opened).
    last_message_at: Instant,
    fifo: bool,
}

fn sqs_error(queue: &str, message: impl std::fmt::Display) -> SourceError {
    SourceError::Io {
        source_name: format!("sqs queue {queue}"),
        message: message.to_string(),
    }
}

/// Error codes after which polling cannot succeed by retrying.
fn is_fatal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "KMS.AccessDeniedException"
        )
    )
}

/// The queue name of a queue URL.
pub fn queue_name(queue_url: &str) -> &str {
    queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(queue_url)
}

impl SqsSource {
    /// Checks the queue exists (and whether it is FIFO), then starts the receivers and the heartbeat.
    pub async fn open(
        client: aws_sdk_sqs::Client,
        options: SqsOptions,
    ) -> Result<Self, SourceError> {
        let queue = queue_name(&options.queue_url).to_string();
        let attrs = client
            .get_queue_attributes()
            .queue_url(&options.queue_url)
            .attribute_names(QueueAttributeName::FifoQueue)
            .send()
            .await
            .map_err(|e| {
                sqs_error(
                    &queue,
                    format!(
                        "cannot read the queue at source.queue_url = {}: {}",
                        options.queue_url,
                        crate::aws::sdk_error(&e)
                    ),
                )
            })?;
        let fifo = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::FifoQueue))
            .is_some_and(|v| v == "true")
            || queue.ends_with(".fifo");
        let shared = Arc::new(Shared {
            client,
            queue_url: options.queue_url.clone(),
            queue: queue.clone(),
            visibility: Duration::from_secs(options.visibility_timeout_secs as u64),
            inflight: Mutex::new(HashMap::new()),
            failing: Mutex::new((0, Instant::now())),
            polled_empty: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(options.receivers * options.max_messages as usize);
        let receivers = (0..options.receivers)
            .map(|n| {
                let span = tracing::info_span!("sqs.receiver", queue = %queue, n);
                tokio::spawn(
                    receive_loop(shared.clone(), options.clone(), fifo, tx.clone())
                        .instrument(span),
                )
            })
            .collect();
        let heartbeat = Arc::new(Heartbeat {
            _task: Tasks(vec![tokio::spawn(
                heartbeat(shared.clone())
                    .instrument(tracing::info_span!("sqs.heartbeat", queue = %queue)),
            )]),
        });
        tracing::info!(queue = %queue, fifo, receivers = options.receivers, "polling SQS");
        Ok(SqsSource {
            shared,
            rx,
            receivers: Tasks(receivers),
            heartbeat,
            idle_exit: options.idle_exit,
            last_message_at: Instant::now(),
            fifo,
        })
    }

    /// Whether the queue is a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }
}

impl SqsSource {
    /// Stops polling and takes the receipt handles of messages received but never batched.
    fn take_unhanded(&mut self) -> Vec<String> {
        for t in &self.receivers.0 {
            t.abort();
        }
        let mut inflight = self.shared.inflight.lock().expect("not poisoned");
        let keys: Vec<String> = inflight
            .iter()
            .filter(|(_, m)| !m.handed)
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter()
            .filter_map(|k| inflight.remove(k))
            .map(|m| m.receipt)
            .collect()
    }
}

/// Makes messages visible again (visibility 0) in chunks of ten, for another receiver to take at once.
async fn release(shared: &Shared, receipts: &[String]) {
    for chunk in receipts.chunks(10) {
        let _ = change_visibility(shared, chunk, 0).await;
    }
    tracing::info!(queue = %shared.queue, messages = receipts.len(), "released unprocessed messages");
}

impl Drop for SqsSource {
    fn drop(&mut self) {
        // A fallback for a source dropped without `close` (an aborted pipeline): the release is started but
        // cannot be awaited here.
        let unhanded = self.take_unhanded();
        if unhanded.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            rt.spawn(async move { release(&shared, &unhanded).await });
        }
    }
}

#[async_trait]
impl Source for SqsSource {
    fn source(&self) -> &str {
        "sqs"
    }

    fn partition(&self) -> &str {
        &self.shared.queue
    }

    async fn close(&mut self) {
        let unhanded = self.take_unhanded();
        if !unhanded.is_empty() {
            release(&self.shared, &unhanded).await;
        }
    }

    async fn seek(&mut self, _position: &str) -> Result<(), SourceError> {
        Ok(()) // SQS has no positions to seek to: unacknowledged messages come back by themselves
    }

    async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
        let item = match self.idle_exit {
            None => self.rx.recv().await,
            Some(idle) => loop {
                match tokio::time::timeout(idle, self.rx.recv()).await {
                    Ok(item) => break item,
                    Err(_) if self.shared.unreachable_within(idle) => {
                        tracing::debug!(queue = %self.shared.queue, "no message, but the queue was unreachable: not idle");
                    }
                    Err(_) if !self.shared.polled_empty_since(self.last_message_at) => {
                        tracing::debug!(queue = %self.shared.queue, "no message, but no receive has found the queue empty yet: not idle");
                    }
                    Err(_) => {
                        tracing::info!(queue = %self.shared.queue, idle_secs = idle.as_secs(), "no message for idle_exit_secs: ending input");
                        return Ok(None);
                    }
                }
            },
        };
        match item {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(polled)) => {
                if let Some(m) = self
                    .shared
                    .inflight
                    .lock()
                    .expect("not poisoned")
                    .get_mut(&polled.position)
                {
                    m.handed = true;
                }
                self.last_message_at = Instant::now();
                Ok(Some(polled))
            }
        }
    }

    fn acker(&self) -> Box<dyn Acker> {
        Box::new(SqsAcker {
            shared: self.shared.clone(),
            _heartbeat: self.heartbeat.clone(),
        })
    }

    fn ordered(&self) -> bool {
        false
    }
}

async fn receive_loop(
    shared: Arc<Shared>,
    options: SqsOptions,
    fifo: bool,
    tx: mpsc::Sender<Result<Polled, SourceError>>,
) {
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut failing = false;
    loop {
        let sent = Instant::now();
        let received = shared
            .client
            .receive_message()
            .queue_url(&shared.queue_url)
            .max_number_of_messages(options.max_messages)
            .wait_time_seconds(options.wait_secs)
            .visibility_timeout(options.visibility_timeout_secs)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await;
        let at = Instant::now();
        let messages = match received {
            Ok(out) => {
                backoff.reset();
                if failing {
                    failing = false;
                    let mut f = shared.failing.lock().expect("not poisoned");
                    *f = (f.0 - 1, Instant::now());
                }
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    let mut empty = shared.polled_empty.lock().expect("not poisoned");
                    *empty = Some(empty.map_or(sent, |e| e.max(sent)));
                }
                messages
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    shared.failing.lock().expect("not poisoned").0 += 1;
                }
                let text = crate::aws::sdk_error(&e);
                if is_fatal(e.code()) {
                    let _ = tx
                        .send(Err(sqs_error(
                            &shared.queue,
                            format!("receive failed: {text}"),
                        )))
                        .await;
                    return;
                }
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %text, retry_ms = wait.as_millis() as u64, "receive failed; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        for m in messages {
            let Some(polled) = to_polled(&shared.queue, fifo, &m) else {
                tracing::warn!(message = ?m.message_id, "message without id or receipt handle; skipped");
                continue;
            };
            let receipt = m.receipt_handle.unwrap_or_default();
            {
                let mut inflight = shared.inflight.lock().expect("not poisoned");
                // SQS delivers at least once: a message received again while its first copy is still in
                // flight keeps one copy, with the newest receipt handle (the one that deletes it).
                if let Some(m) = inflight.get_mut(&polled.position) {
                    tracing::debug!(position = %polled.position, "message received again while in flight; one copy kept");
                    m.receipt = receipt;
                    m.visible_at = at + shared.visibility;
                    continue;
                }
                inflight.insert(
                    polled.position.clone(),
                    InFlight {
                        receipt,
                        visible_at: at + shared.visibility,
                        handed: false,
                    },
                );
            }
            if tx.send(Ok(polled)).await.is_err() {
                return;
            }
        }
    }
}

/// A received message as a record.
fn to_polled(queue: &str, fifo: bool, m: &Message) -> Option<Polled> {
    let message_id = m.message_id()?;
    m.receipt_handle()?;
    let system = |name: MessageSystemAttributeName| {
        m.attributes()
            .and_then(|a| a.get(&name))
            .map(String::as_str)
    };
    let group = system(MessageSystemAttributeName::MessageGroupId);
    let sequence = system(MessageSystemAttributeName::SequenceNumber);
    let id = format!("sqs/{queue}/{message_id}");
    let position = match (fifo, sequence) {
        (true, Some(seq)) => seq.to_string(),
        _ => message_id.to_string(),
    };
    let mut attributes: Vec<(String, String)> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    let value = match (v.string_value(), v.binary_value()) {
                        (Some(s), _) => s.to_string(),
                        (None, Some(b)) => {
                            base64::engine::general_purpose::STANDARD.encode(b.as_ref())
                        }
                        _ => String::new(),
                    };
                    (k.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    attributes.sort();
    for (name, label) in [
        (
            MessageSystemAttributeName::MessageGroupId,
            "sqs:MessageGroupId",
        ),
        (
            MessageSystemAttributeName::MessageDeduplicationId,
            "sqs:MessageDeduplicationId",
        ),
        (
            MessageSystemAttributeName::SequenceNumber,
            "sqs:SequenceNumber",
        ),
        (
            MessageSystemAttributeName::ApproximateReceiveCount,
            "sqs:ApproximateReceiveCount",
        ),
        (
            MessageSystemAttributeName::SentTimestamp,
            "sqs:SentTimestamp",
        ),
    ] {
        if let Some(v) = system(name) {
            attributes.push((label.to_string(), v.to_string()));
        }
    }
    let arrived_at_ms = system(MessageSystemAttributeName::SentTimestamp)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| crate::record::wall_clock_us() / 1000);
    Some(Polled {
        record: SourceRecord {
            id,
            partition_key: group.unwrap_or("").to_string(),
            arrived_at_ms,
            attributes,
            payload: m.body().unwrap_or("").as_bytes().to_vec(),
        },
        position,
    })
}

/// Extends the visibility of in-flight messages that would become visible within the next half timeout.
async fn heartbeat(shared: Arc<Shared>) {
    let tick = (shared.visibility / 4).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let due: Vec<(String, String)> = {
            let inflight = shared.inflight.lock().expect("not poisoned");
            crate::metrics::global().set(
                "weir_sqs_messages_in_flight",
                &[("queue", &shared.queue)],
                inflight.len() as f64,
            );
            inflight
                .iter()
                .filter(|(_, m)| m.visible_at <= now + shared.visibility / 2)
                .map(|(k, m)| (k.clone(), m.receipt.clone()))
                .collect()
        };
        for chunk in due.chunks(10) {
            let receipts: Vec<String> = chunk.iter().map(|(_, r)| r.clone()).collect();
            match change_visibility(&shared, &receipts, shared.visibility.as_secs() as i32).await {
                Ok(failed) => {
                    let mut inflight = shared.inflight.lock().expect("not poisoned");
                    for (i, (position, _)) in chunk.iter().enumerate() {
                        if let Some(reason) = failed.get(&i) {
                            tracing::warn!(position = %position, %reason, "could not extend the visibility; the message may be redelivered (its replay is idempotent)");
                        } else if let Some(m) = inflight.get_mut(position) {
                            m.visible_at = now + shared.visibility;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "extending visibility failed; retrying at the next tick")
                }
            }
        }
        if !due.is_empty() {
            tracing::debug!(messages = due.len(), "visibility extended");
        }
    }
}

/// Sets the visibility timeout of up to 10 messages; returns the failed entries by index.
async fn change_visibility(
    shared: &Shared,
    receipts: &[String],
    secs: i32,
) -> Result<HashMap<usize, String>, String> {
    let entries = receipts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .visibility_timeout(secs)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    let out = shared
        .client
        .change_message_visibility_batch()
        .queue_url(&shared.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| crate::aws::sdk_error(&e))?;
    Ok(failed_entries(out.failed())
        .into_iter()
        .map(|(i, (_, text))| (i, text))
        .collect())
}

/// The failed entries of a batch call, by index (entry ids are indexes): error code and readable text.
fn failed_entries(
    failed: &[aws_sdk_sqs::types::BatchResultErrorEntry],
) -> Vec<(usize, (String, String))> {
    failed
        .iter()
        .filter_map(|f| {
            let i: usize = f.id().parse().ok()?;
            let text = format!("{}: {}", f.code(), f.message().unwrap_or(""));
            Some((i, (f.code().to_string(), text)))
        })
        .collect()
}

/// Deletes the messages of committed batches.
pub struct SqsAcker {
    shared: Arc<Shared>,
    _heartbeat: Arc<Heartbeat>,
}

/// How long deletions are retried: at least a minute, and at least one visibility timeout. Meanwhile the
/// message stays in flight here, so a redelivered copy is not processed again, only its receipt handle is
/// taken; after that the message comes back and is replayed idempotently.
fn delete_deadline(visibility: Duration) -> Duration {
    visibility.max(Duration::from_secs(60))
}

/// Longest wait between two deletion attempts.
const DELETE_MAX_BACKOFF: Duration = Duration::from_secs(5);

#[async_trait]
impl Acker for SqsAcker {
    async fn ack(&mut self, batch: &Batch) -> Result<(), SourceError> {
        let span =
            tracing::debug_span!("sqs.delete", queue = %self.shared.queue, batch = %batch.id);
        let deadline = Instant::now() + delete_deadline(self.shared.visibility);
        let mut positions: Vec<String> = batch.positions.clone();
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(100), DELETE_MAX_BACKOFF)
                .with_budget(delete_deadline(self.shared.visibility));
        loop {
            // The newest receipt handle of each message (a copy received again replaces it).
            let pending: Vec<(String, String)> = {
                let inflight = self.shared.inflight.lock().expect("not poisoned");
                positions
                    .iter()
                    .filter_map(|p| inflight.get(p).map(|m| (p.clone(), m.receipt.clone())))
                    .collect()
            };
            let mut failed: Vec<String> = Vec::new();
            let mut last_error = String::new();
            for chunk in pending.chunks(10) {
                match delete_batch(&self.shared, chunk)
                    .instrument(span.clone())
                    .await
                {
                    Ok(bad) => {
                        for (i, (code, reason)) in bad {
                            if code == "ReceiptHandleIsInvalid" {
                                // Another consumer received it after its visibility ran out; it will be
                                // deleted after that consumer's commit.
                                tracing::warn!(parent: &span, position = %chunk[i].0, %reason, "receipt handle no longer valid");
                            } else {
                                last_error = reason;
                                failed.push(chunk[i].0.clone());
                            }
                        }
                    }
                    Err((code, text)) if is_fatal(code.as_deref()) => {
                        return Err(sqs_error(
                            &self.shared.queue,
                            format!(
                                "deleting committed messages failed: {text} (check that the queue exists and the worker may sqs:DeleteMessage on it; the committed messages come back and are replayed idempotently)"
                            ),
                        ));
                    }
                    Err((_, text)) => {
                        last_error = text;
                        failed.extend(chunk.iter().map(|(p, _)| p.clone()));
                    }
                }
            }
            {
                let mut inflight = self.shared.inflight.lock().expect("not poisoned");
                for p in &positions {
                    if !failed.contains(p) {
                        inflight.remove(p);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            let Some(wait) = backoff
                .next_delay()
                .filter(|w| Instant::now() + *w <= deadline)
            else {
                let mut inflight = self.shared.inflight.lock().expect("not poisoned");
                for p in &failed {
                    inflight.remove(p);
                }
                tracing::warn!(parent: &span, messages = failed.len(), error = %last_error,
                    "could not delete messages in time; they will be redelivered and replayed (same final state)");
                return Ok(());
            };
            tracing::warn!(parent: &span, messages = failed.len(), error = %last_error, retry_ms = wait.as_millis() as u64, "delete failed; retrying");
            tokio::time::sleep(wait).await;
            positions = failed;
        }
    }
}

/// Deletes up to 10 messages; returns failed entries by index with their error code and text, or the error
/// code and text of the whole call.
async fn delete_batch(
    shared: &Shared,
    chunk: &[(String, String)],
) -> Result<Vec<(usize, (String, String))>, (Option<String>, String)> {
    let entries = chunk
        .iter()
        .enumerate()
        .map(|(i, (_, receipt))| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    let out = shared
        .client
        .delete_message_batch()
        .queue_url(&shared.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| (e.code().map(str::to_string), crate::aws::sdk_error(&e)))?;
    Ok(failed_entries(out.failed()))
}

/// Sends every non-empty line of `lines` to the queue, 10 per call (the producer behind `weir produce`);
/// lines that are not UTF-8 are skipped with a warning (SQS bodies are text).
/// FIFO queues get `group_id` as message group and a content digest with the line number as deduplication
/// id. Returns the number of messages sent.
pub async fn send_lines(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    lines: &[Vec<u8>],
    group_id: &str,
) -> Result<usize, SourceError> {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    use sha2::{Digest, Sha256};
    let queue = queue_name(queue_url);
    let fifo = queue.ends_with(".fifo");
    let mut sent = 0;
    let mut numbered: Vec<(usize, &str)> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        match std::str::from_utf8(line) {
            Ok(text) => numbered.push((n, text)),
            Err(_) => tracing::warn!(
                "line {} is not UTF-8; SQS message bodies are text, so it is skipped",
                n + 1
            ),
        }
    }
    for chunk in numbered.chunks(10) {
        let mut entries = Vec::new();
        for (i, (n, body)) in chunk.iter().enumerate() {
            let body = *body;
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body);
            if fifo {
                let digest = Sha256::digest(body.as_bytes());
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                e = e
                    .message_group_id(group_id)
                    .message_deduplication_id(format!("{}-{hex}", n + 1));
            }
            entries.push(e.build().expect("id and body are set"));
        }
        let out = client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sqs_error(queue, crate::aws::sdk_error(&e)))?;
        if let Some(f) = out.failed().first() {
            return Err(sqs_error(
                queue,
                format!("send failed: {}: {}", f.code(), f.message().unwrap_or("")),
            ));
        }
        sent += chunk.len();
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;

    fn message() -> aws_sdk_sqs::types::builders::MessageBuilder {
        Message::builder()
            .message_id("m-1")
            .receipt_handle("r-1")
            .body("{\"a\":1}")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1795256970123")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .message_attributes(
                "origin",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("web")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "blob",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0xff, 0]))
                    .build()
                    .unwrap(),
            )
    }

    /// Standard queues: the message id is id and position; attributes and sent time carried over.
    #[test]
    fn standard_message_as_record() {
        let p = to_polled("orders", false, &message().build()).unwrap();
        assert_eq!(p.record.id, "sqs/orders/m-1");
        assert_eq!(p.position, "m-1");
        assert_eq!(p.record.arrived_at_ms, 1_795_256_970_123);
        assert_eq!(p.record.payload, b"{\"a\":1}");
        assert_eq!(
            p.record.attributes,
            [
                ("blob".to_string(), "/wA=".to_string()),
                ("origin".into(), "web".into()),
                ("sqs:ApproximateReceiveCount".into(), "2".into()),
                ("sqs:SentTimestamp".into(), "1795256970123".into()),
            ]
        );
    }

    /// FIFO queues: the message id makes the record id (deduplication ids repeat after their window), the
    /// sequence number the position; group and deduplication id are attributes.
    #[test]
    fn fifo_message_as_record() {
        let m = message()
            .attributes(MessageSystemAttributeName::MessageGroupId, "g1")
            .attributes(MessageSystemAttributeName::MessageDeduplicationId, "d-9")
            .attributes(MessageSystemAttributeName::SequenceNumber, "1800")
            .build();
        let p = to_polled("orders.fifo", true, &m).unwrap();
        assert_eq!(
            p.record.id,
            format!("sqs/orders.fifo/{}", m.message_id().unwrap())
        );
        assert!(
            p.record
                .attributes
                .contains(&("sqs:MessageDeduplicationId".into(), "d-9".into()))
        );
        assert_eq!(p.position, "1800");
        assert_eq!(p.record.partition_key, "g1");
        assert!(to_polled("q", false, &Message::builder().body("x").build()).is_none());
    }

    #[test]
    fn queue_names() {
        assert_eq!(
            queue_name("https://sqs.eu-west-1.amazonaws.com/1/orders"),
            "orders"
        );
        assert_eq!(
            queue_name("http://127.0.0.1:4566/000000000000/q.fifo/"),
            "q.fifo"
        );
    }
}
