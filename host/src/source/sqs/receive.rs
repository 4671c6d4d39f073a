//! Receiving: concurrent long polls into the source's channel, messages as records, and the heartbeat that
//! keeps received messages invisible while their batch is in flight.

use super::*;

pub(super) async fn receive_loop(
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
        if !forward(&shared, fifo, messages, at, &tx).await {
            return;
        }
    }
}

/// Hands received messages to the source's channel, tracking each as in flight; `false` once the channel
/// is closed (the source is gone).
async fn forward(
    shared: &Shared,
    fifo: bool,
    messages: Vec<Message>,
    at: Instant,
    tx: &mpsc::Sender<Result<Polled, SourceError>>,
) -> bool {
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
                    received_at: at,
                },
            );
        }
        if tx.send(Ok(polled)).await.is_err() {
            return false;
        }
    }
    true
}

/// A received message as a record.
pub(super) fn to_polled(queue: &str, fifo: bool, m: &Message) -> Option<Polled> {
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
pub(super) async fn heartbeat(shared: Arc<Shared>) {
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
            let oldest = inflight
                .values()
                .map(|m| now.saturating_duration_since(m.received_at))
                .max()
                .unwrap_or_default();
            crate::metrics::global().set(
                "weir_sqs_oldest_in_flight_seconds",
                &[("queue", &shared.queue)],
                oldest.as_secs_f64(),
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
pub(super) async fn change_visibility(
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
pub(super) fn failed_entries(
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
