//! Sources: where records come from.
//!
//! A source reads one partition and hands out one record at a time; the pipeline does the batching. Records
//! are acknowledged through the source's [`Acker`] only after their batch has committed.

pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kinesis")]
pub mod kinesis;
#[cfg(feature = "kinesis")]
pub mod kpl;
#[cfg(feature = "s3-source")]
pub mod s3;
#[cfg(feature = "sqs")]
pub mod sqs;

use async_trait::async_trait;

use crate::record::{Batch, Polled};

/// A source failure.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading failed.
    #[error("source {source_name}: {message}")]
    Io {
        /// The source (`file`, `sqs`, `kinesis`).
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads records from one partition.
#[async_trait]
pub trait Source: Send {
    /// The source label used in record ids, checkpoints and RAW keys, e.g. `file`.
    fn source(&self) -> &str;

    /// The partition this reader owns.
    fn partition(&self) -> &str;

    /// Skips every record at or before the committed `position` (empty: start from the beginning).
    async fn seek(&mut self, position: &str) -> Result<(), SourceError>;

    /// The next record, waiting for one if needed; `None` when the input has ended.
    /// Must be cancel-safe: a call dropped before it returns loses no record.
    async fn next(&mut self) -> Result<Option<Polled>, SourceError>;

    /// The handle that acknowledges committed batches.
    fn acker(&self) -> Box<dyn Acker>;

    /// Whether positions are ordered and the sink's checkpoint is the durable position (file, Kinesis).
    /// Unordered sources (SQS) are acknowledged by deletion only.
    fn ordered(&self) -> bool {
        true
    }

    /// What identifies the input behind the partition's checkpoint (a file's first bytes), when the
    /// partition name alone does not: a checkpoint is only resumed on input with the same fingerprint.
    fn fingerprint(&self) -> Option<String> {
        None
    }

    /// Whether the input is the one a stored fingerprint was taken of (an appended file still is).
    fn same_input(&self, _stored: &str) -> bool {
        true
    }

    /// Stops reading and gives back what was read but never batched (SQS: visibility 0, so another worker
    /// gets it at once). The pipeline awaits it on every exit path of its batcher; dropping a source without
    /// closing it is a fallback that cannot wait for the calls it starts.
    async fn close(&mut self) {}
}

/// Whether `id` can be part of a record id: 1 to `max` bytes of ASCII letters, digits, `.`, `_`, `:` and `-`
/// (no `/`, which separates the parts of an id).
pub fn valid_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The checkpoint row that keeps a partition's input fingerprint ([`Source::fingerprint`]).
pub fn fingerprint_partition(partition: &str) -> String {
    format!("{partition}#fingerprint")
}

/// Acknowledges committed batches to the source (SQS delete, in-memory Kinesis position).
#[async_trait]
pub trait Acker: Send {
    /// Called once per batch, after its commit.
    async fn ack(&mut self, batch: &Batch) -> Result<(), SourceError>;

    /// Called once when the pipeline has acknowledged its last batch (the input ended, or a shutdown drained
    /// it), before the worker may exit: an HTTP source answers its last requests here.
    async fn finish(&mut self) {}
}

/// For sources whose durable position is the sink's checkpoint: nothing more to acknowledge.
pub struct CheckpointOnly;

#[async_trait]
impl Acker for CheckpointOnly {
    async fn ack(&mut self, _batch: &Batch) -> Result<(), SourceError> {
        Ok(())
    }
}
