//! Records and batches as they travel through the pipeline.

use std::time::{Instant, UNIX_EPOCH};

use crate::contract::SourceRecord;

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
    /// Whether positions are ordered and checkpointed (file, Kinesis). When false (SQS: positions are message
    /// ids, acknowledged by deletion), the sink skips the checkpoint compare-and-set and the ledger row of the
    /// batch id guards against committing the same delivery twice.
    pub ordered: bool,
    /// One position per record.
    pub positions: Vec<String>,
    /// The records, in source order.
    pub records: Vec<SourceRecord>,
    /// Payload bytes in the batch.
    pub bytes: usize,
    /// When the first record was received, for latency.
    pub started: Instant,
    /// When each record was received, in µs after `started` (for receive-to-commit latency).
    pub received_us: Vec<u32>,
    /// The input fingerprint to record with this batch's checkpoint (a fingerprinted source's first batch of a
    /// run, when the stored fingerprint differs): written in the same transaction as the checkpoint, so a
    /// partition's start writes nothing to the warehouse.
    pub fingerprint: Option<String>,
}

impl Batch {
    /// A batch id from its partition and position range.
    pub fn make_id(source: &str, partition: &str, first: &str, last: &str) -> String {
        format!("{source}/{partition}/{first}-{last}")
    }

    /// The id of this batch: `{source}/{partition}/{first}-{last}`, and for unordered sources a digest of
    /// every position and attribute (`-{digest}`), since two deliveries can share their first and last message
    /// but not their contents. A redelivered message carries a new receive count, so a replay gets a new id.
    pub fn assign_id(&mut self) {
        self.id = Self::make_id(
            &self.source,
            &self.partition,
            self.first_position(),
            self.last_position(),
        );
        if let Some(d) = self.digest() {
            self.id = format!("{}-{d}", self.id);
        }
    }

    /// The content digest that makes ids of unordered batches unique (`None` for ordered sources).
    pub fn digest(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        if self.ordered {
            return None;
        }
        let mut h = Sha256::new();
        for (r, p) in self.records.iter().zip(&self.positions) {
            h.update(p.as_bytes());
            h.update([0]);
            for (k, v) in &r.attributes {
                h.update(k.as_bytes());
                h.update([1]);
                h.update(v.as_bytes());
                h.update([2]);
            }
        }
        let d = h.finalize();
        Some(d[..6].iter().map(|b| format!("{b:02x}")).collect())
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

/// `{hostname}-{pid}`: unique per process on a host, readable in the lease table.
pub fn default_worker_id() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// The host's name (`worker` when it has none).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}
