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
