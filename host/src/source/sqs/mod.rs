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

mod receive;
use receive::*;
mod ack;
pub use ack::*;
mod produce;
pub use produce::*;

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
    /// When this worker received it.
    received_at: Instant,
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
