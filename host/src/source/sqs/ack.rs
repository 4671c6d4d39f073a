//! Acknowledging: after its commit, a batch's messages are deleted (`DeleteMessageBatch`), failed entries retried
//! with the newest receipt handle until shortly before their visibility would run out.

use super::*;

/// Deletes the messages of committed batches.
pub struct SqsAcker {
    pub(super) shared: Arc<Shared>,
    pub(super) _heartbeat: Arc<Heartbeat>,
}

/// How long deletions are retried: at least a minute, and at least one visibility timeout. Meanwhile the
/// message stays in flight here, so a redelivered copy is not processed again, only its receipt handle is
/// taken; after that the message comes back and is replayed idempotently.
pub(super) fn delete_deadline(visibility: Duration) -> Duration {
    visibility.max(Duration::from_secs(60))
}

/// Longest wait between two deletion attempts.
pub(super) const DELETE_MAX_BACKOFF: Duration = Duration::from_secs(5);

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
pub(super) async fn delete_batch(
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
