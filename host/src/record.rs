//! Records and batches as they travel through the pipeline.

use std::time::{Instant, UNIX_EPOCH};

use crate::rules::SourceRecord;

/// A record fresh from a source, with its source position.
#[derive(Debug, Clone)]
pub struct Polled {
    /// The record as the rule will see it.
    pub record: SourceRecord,
    /// The record's position in its partition (line number, sequence number, message id).
    pub position: String,
}

/// A batch of records from one partition of one source.
#[derive(Debug)]
pub struct Batch {
    /// Deterministic id: `{source}/{partition}/{first}-{last}`, so a retried batch keeps its id.
    pub id: String,
    /// The source kind and name, e.g. `file`.
    pub source: String,
    /// The partition (file name, shard id, SQS poller).
    pub partition: String,
    /// The committed checkpoint this batch follows (empty when none): the compare-and-set's expected value.
    pub prev_position: String,
    /// One position per record.
    pub positions: Vec<String>,
    /// The records, in source order.
    pub records: Vec<SourceRecord>,
    /// Payload bytes in the batch.
    pub bytes: usize,
    /// When the first record was received, for latency.
    pub started: Instant,
}

impl Batch {
    /// A batch id from its partition and position range.
    pub fn make_id(source: &str, partition: &str, first: &str, last: &str) -> String {
        format!("{source}/{partition}/{first}-{last}")
    }

    /// Position of the first record.
    pub fn first_position(&self) -> &str {
        self.positions.first().map(String::as_str).unwrap_or("")
    }

    /// Position of the last record: the checkpoint once this batch commits.
    pub fn last_position(&self) -> &str {
        self.positions.last().map(String::as_str).unwrap_or("")
    }
}

/// The worker's wall clock in µs since the Unix epoch. Timestamps written to a sink are bound from here,
/// never taken from the database's clock (not portable to Redshift).
pub fn wall_clock_us() -> i64 {
    UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
