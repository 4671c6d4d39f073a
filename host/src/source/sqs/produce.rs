//! `weir produce` for SQS: lines of a file as messages.

use super::*;

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
    use sha2::{Digest, Sha256};
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
    let messages: Vec<(String, &str)> = numbered
        .iter()
        .map(|(n, body)| {
            let digest = Sha256::digest(body.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            (format!("{}-{hex}", n + 1), *body)
        })
        .collect();
    send_messages(client, queue_url, &messages, group_id).await
}

/// Sends messages, 10 per `SendMessageBatch` call; on a FIFO queue each with `group_id` and its own
/// deduplication id (the first of each pair), so that SQS keeps one copy of a message sent twice within its
/// five-minute window. Returns the number sent.
pub async fn send_messages(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    messages: &[(String, &str)],
    group_id: &str,
) -> Result<usize, SourceError> {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    let queue = queue_name(queue_url);
    let fifo = queue.ends_with(".fifo");
    let mut sent = 0;
    for chunk in messages.chunks(10) {
        let mut entries = Vec::new();
        for (i, (dedupe, body)) in chunk.iter().enumerate() {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(*body);
            if fifo {
                e = e
                    .message_group_id(group_id)
                    .message_deduplication_id(dedupe.clone());
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
