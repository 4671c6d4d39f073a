//! The forwarding tier: `weir serve` in front of the Kinesis stream or SQS queue that the workers read
//! (`[source] kind = "kinesis"` or `"sqs"`, with the HTTP settings in `[serve]`). A request is answered 200
//! once every record of it was put (`PutRecords`, `SendMessageBatch`), as the seeds' ingestion tier did.

use async_trait::async_trait;

use crate::contract::SourceRecord;

/// Where a forwarding tier puts the records it takes.
#[async_trait]
pub trait Forward: Send + Sync {
    /// Why these records cannot be forwarded at all (answered 413), if so.
    fn refuse(&self, _records: &[SourceRecord]) -> Option<String> {
        None
    }

    /// Puts every record; `Ok` once the stream or queue stored them all.
    async fn put(&self, records: &[SourceRecord]) -> Result<(), String>;

    /// Where records go, for people.
    fn describe(&self) -> String;
}

/// The largest record a stream or queue takes, in bytes (Kinesis: 1 MiB with its partition key; SQS: 1 MiB).
pub const MAX_FORWARDED_BYTES: usize = 1 << 20;

fn too_large(records: &[SourceRecord], limit: usize) -> Option<String> {
    records.iter().position(|r| r.payload.len() > limit).map(|i| {
        format!(
            "record {} is {} bytes, more than the {limit} a record of the stream or queue may have",
            i + 1,
            records[i].payload.len()
        )
    })
}

/// Forwards to a Kinesis data stream; each record's partition key is its HTTP record id (spread over the
/// shards; a client's retry lands on the same shard).
#[cfg(feature = "kinesis")]
pub struct KinesisForward {
    /// The Kinesis client.
    pub client: aws_sdk_kinesis::Client,
    /// The stream name.
    pub stream: String,
    /// The stream ARN, when the stream is named by ARN.
    pub stream_arn: Option<String>,
}

#[cfg(feature = "kinesis")]
#[async_trait]
impl Forward for KinesisForward {
    fn refuse(&self, records: &[SourceRecord]) -> Option<String> {
        too_large(records, MAX_FORWARDED_BYTES - 256)
    }

    async fn put(&self, records: &[SourceRecord]) -> Result<(), String> {
        use aws_sdk_kinesis::primitives::Blob;
        use aws_sdk_kinesis::types::PutRecordsRequestEntry;
        let entries = records
            .iter()
            .map(|r| {
                let key: String =
                    r.id.chars()
                        .rev()
                        .take(256)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(r.payload.clone()))
                    .build()
                    .expect("key and data are set")
            })
            .collect();
        crate::source::kinesis::put_entries(
            &self.client,
            &self.stream,
            self.stream_arn.as_deref(),
            entries,
        )
        .await
        .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("Kinesis stream {}", self.stream)
    }
}

/// Forwards to an SQS queue; on a FIFO queue the messages of one server share a message group and each is
/// deduplicated by its HTTP record id, so a client's retry within SQS's five minutes is kept once.
#[cfg(feature = "sqs")]
pub struct SqsForward {
    /// The SQS client.
    pub client: aws_sdk_sqs::Client,
    /// The queue URL.
    pub queue_url: String,
    /// The message group of a FIFO queue.
    pub group_id: String,
}

#[cfg(feature = "sqs")]
#[async_trait]
impl Forward for SqsForward {
    fn refuse(&self, records: &[SourceRecord]) -> Option<String> {
        if let Some(i) = records
            .iter()
            .position(|r| std::str::from_utf8(&r.payload).is_err())
        {
            return Some(format!(
                "record {} is not UTF-8, and SQS message bodies are text",
                i + 1
            ));
        }
        too_large(records, MAX_FORWARDED_BYTES)
    }

    async fn put(&self, records: &[SourceRecord]) -> Result<(), String> {
        use sha2::{Digest, Sha256};
        let messages: Vec<(String, &str)> = records
            .iter()
            .map(|r| {
                let digest = Sha256::digest(r.id.as_bytes());
                let dedupe: String = digest[..24].iter().map(|b| format!("{b:02x}")).collect();
                (dedupe, std::str::from_utf8(&r.payload).unwrap_or(""))
            })
            .collect();
        crate::source::sqs::send_messages(&self.client, &self.queue_url, &messages, &self.group_id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("SQS queue {}", self.queue_url)
    }
}
