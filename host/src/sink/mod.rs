//! Sinks: where final rows go, together with weir's own bookkeeping.
//!
//! A sink commits one batch in one transaction: the final rows (upserted by primary key, with lineage
//! columns), the dead letters, one ledger row, and the checkpoint compare-and-set. If the compare-and-set
//! matches no row, another worker owns the partition and the whole transaction is rolled back.
//!
//! Tables the sink owns (see the design notes):
//! - `weir_checkpoints(source, partition, position, owner, lease_expires_at, updated_at)`
//! - `weir_batches(batch_id, source, partition, first_position, last_position, raw_ref, rule_digest,
//!   records_in, emitted, dropped, rejected, rows_out, drop_reasons, loaded_at)`
//! - `weir_dead_letters(record_id, batch_id, raw_ref, stage, reason, payload_preview, at)`
//!
//! and every declared table gets `_weir_record_id`, `_weir_batch_id`, `_weir_rule_digest`, `_weir_loaded_at`.

#[cfg(feature = "postgres")]
pub mod redshift;
pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::record::Batch;
use std::collections::{HashMap, HashSet};

use crate::rules::validate::{CheckedRow, RecordOutcome};
use crate::schema::TableSpec;
use crate::schema::{Cell, ColumnType, LINEAGE_COLUMNS, LINEAGE_TYPES};

mod rows;
pub use rows::*;
pub mod group;

/// A sink failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: connection loss, lock contention, serialization failure.
    #[error("sink (transient): {0}")]
    Transient(String),
    /// Not worth retrying.
    #[error("sink: {0}")]
    Permanent(String),
    /// The database's tables do not match the configuration.
    #[error("sink schema mismatch: {0}")]
    Schema(String),
    /// The database refused a value (data exception); never retried as is.
    #[error("sink refused a value: {0}")]
    Data(String),
    /// These records (by index in the batch) cannot be loaded, with the reason: the pipeline dead-letters
    /// them and commits the rest.
    #[error("sink refused the rows of {} records", .0.len())]
    Rejected(Vec<(usize, String)>),
}

impl SinkError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient(_))
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Everything committed; the batch may be acknowledged.
    Committed,
    /// The checkpoint moved under us: another worker owns the partition. Nothing was written.
    NotOwner,
}

/// One batch ready to load.
pub struct Load<'a> {
    /// The batch (records, positions, ids).
    pub batch: &'a Batch,
    /// One RAW reference per record.
    pub raw_refs: &'a [String],
    /// One checked outcome per record.
    pub outcomes: &'a [RecordOutcome],
    /// The declared tables (`CheckedRow::table` indexes this).
    pub tables: &'a [TableSpec],
    /// SHA-256 of the rule that produced the outcomes.
    pub rule_digest: &'a str,
    /// Commit time bound from the client (µs since the epoch), never the database's clock.
    pub loaded_at_us: i64,
    /// Set for a dead-letter redrive (`weir dead-letters redrive`), `None` for every other load.
    pub redrive: Option<Redrive<'a>>,
}

/// How a redrive's rows and dead letters differ from a first load's.
///
/// A redriven record arrived long ago; other records may have written its keys since. In a table with a
/// version column the version decides, as always. In a table without one, a stored row is replaced only
/// when the batch that wrote it first committed before the record's own original batch (as if the record
/// had loaded then), or when this very redrive run wrote it (its records go in their original order), or
/// when the row is the record's own (a redrive run again): an older record never replaces a newer one.
/// Records that now emit or drop lose their dead letter in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct Redrive<'a> {
    /// The batch that first loaded (and dead-lettered) the records.
    pub original_batch: &'a str,
    /// The `LIKE` pattern of this run's batch ids (`redrive-{run}/%`).
    pub run_pattern: &'a str,
}

impl Load<'_> {
    /// The ledger counts of this batch.
    pub fn counts(&self) -> Counts {
        Counts::of(self.outcomes)
    }

    /// The RAW object of the batch (the references without their `#line`).
    pub fn raw_object(&self) -> &str {
        self.raw_refs
            .first()
            .and_then(|r| r.rsplit_once('#'))
            .map(|(k, _)| k)
            .unwrap_or("")
    }
}

/// Batches whose COMMIT was sent without an answer (an error or a timeout while committing): only for these
/// may a zero-row checkpoint compare-and-set mean "this very batch committed, its reply was lost". Another
/// worker that committed a batch with the same id (a zombie's in-flight batch after a lease move) still
/// fences this one. Holds in-flight batches only.
#[derive(Debug, Default)]
pub(crate) struct InDoubt(std::sync::Mutex<HashSet<String>>);

impl InDoubt {
    fn with<T>(&self, f: impl FnOnce(&mut HashSet<String>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The COMMIT of `batch` is about to be sent.
    pub(crate) fn sending(&self, batch: &str) {
        self.with(|s| s.insert(batch.to_string()));
    }

    /// The COMMIT of `batch` was answered (or the batch is settled otherwise).
    pub(crate) fn settled(&self, batch: &str) {
        self.with(|s| s.remove(batch));
    }

    /// Whether the COMMIT of `batch` went unanswered.
    pub(crate) fn contains(&self, batch: &str) -> bool {
        self.with(|s| s.contains(batch))
    }
}

/// The DDL that brings a database in line with the declared tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaPlan {
    /// Statements in order: `CREATE TABLE` for missing tables, then `ALTER TABLE … ADD COLUMN` for declared
    /// columns the database lacks (always nullable).
    pub statements: Vec<String>,
    /// Tables that do not exist yet.
    pub new_tables: Vec<String>,
    /// `(table, column, type)` of the columns to add.
    pub new_columns: Vec<(String, String, String)>,
}

impl SchemaPlan {
    /// The start-up check: new tables may be created, but a declared column the table lacks stops the worker
    /// until `weir schema apply` adds it.
    pub fn check_at_start(&self) -> Result<(), SinkError> {
        match self.new_columns.first() {
            None => Ok(()),
            Some((table, column, ty)) => Err(SinkError::Schema(format!(
                "table {table}, column {column}: missing in the database; the config declares {ty}. Run \
                 `weir schema apply -c CONFIG` to add it (as a nullable column), or remove it from the config"
            ))),
        }
    }
}

/// A key column cannot be added to an existing table.
pub(crate) fn key_column_missing(table: &TableSpec, column: &str) -> SinkError {
    SinkError::Schema(format!(
        "table {}, column {column}: a primary-key column is missing from the existing table; keys cannot be \
         added in place. Recreate the table or change the config",
        table.name
    ))
}

/// A lease row of [`Coordinator::leases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The partition (Kinesis: `{stream}/{shard}`).
    pub partition: String,
    /// Its committed checkpoint.
    pub position: String,
    /// Who holds the lease (empty: nobody).
    pub owner: String,
    /// Whether the lease has run out.
    pub expired: bool,
    /// Until when the lease holds, µs since the epoch (0: no lease time recorded).
    pub expires_us: i64,
}

/// A ledger row, as reconcile and replay read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// The batch id.
    pub batch_id: String,
    /// The source.
    pub source: String,
    /// The source partition.
    pub partition: String,
    /// RAW reference of the batch's first record (`{object}#1`; the object alone for MongoDB RAW).
    pub raw_ref: String,
    /// SHA-256 of the rule that loaded the batch.
    pub rule_digest: String,
    /// Drop reason → count, as JSON.
    pub drop_reasons: String,
}

/// Which final rows or dead letters to read.
#[derive(Debug, Clone)]
pub enum RowFilter {
    /// Rows loaded by these batches.
    BatchIds(Vec<String>),
    /// Rows derived from these records.
    RecordIds(Vec<String>),
    /// Rows with these primary keys (canonical texts, in primary-key order).
    Keys(Vec<Vec<String>>),
}

impl RowFilter {
    /// The filter in pieces of at most `n` values (one query each).
    pub fn chunks(&self, n: usize) -> Vec<RowFilter> {
        match self {
            RowFilter::BatchIds(v) => v
                .chunks(n)
                .map(|c| RowFilter::BatchIds(c.to_vec()))
                .collect(),
            RowFilter::RecordIds(v) => v
                .chunks(n)
                .map(|c| RowFilter::RecordIds(c.to_vec()))
                .collect(),
            RowFilter::Keys(v) => v.chunks(n).map(|c| RowFilter::Keys(c.to_vec())).collect(),
        }
    }

    /// The lineage column an id filter reads (`None` for keys).
    pub fn column(&self) -> Option<&'static str> {
        match self {
            RowFilter::BatchIds(_) => Some("_weir_batch_id"),
            RowFilter::RecordIds(_) => Some("_weir_record_id"),
            RowFilter::Keys(_) => None,
        }
    }
}

/// Values per read query (binds stay far below any driver's limit).
pub(crate) const READ_CHUNK: usize = 500;

/// A final row as stored: every declared column as text (`None` for NULL), in declaration order, with lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// The declared columns.
    pub cells: Vec<Option<String>>,
    /// `_weir_record_id`.
    pub record_id: String,
    /// `_weir_batch_id`.
    pub batch_id: String,
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// The record.
    pub record_id: String,
    /// The batch that dead-lettered it.
    pub batch_id: String,
    /// `rule`, `sandbox`, `validate` or `sink`.
    pub stage: String,
    /// Why.
    pub reason: String,
}

impl crate::retry::Retryable for SinkError {
    fn is_transient(&self) -> bool {
        SinkError::is_transient(self)
    }
}

/// The warehouse writer: plans and prepares the declared tables and commits batches. One of the three roles a
/// backend plays (with [`Coordinator`] and [`SinkReader`]); the pipeline writes through this one only.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Compares the database with the declared tables: a column of another type is an error naming table,
    /// column and types; missing tables and columns become DDL in the plan.
    async fn plan(&self, tables: &[TableSpec]) -> Result<SchemaPlan, SinkError>;

    /// Runs a plan's statements.
    async fn apply(&self, plan: &SchemaPlan) -> Result<(), SinkError>;

    /// Checks the tables at start ([`SchemaPlan::check_at_start`]) and readies the sink for commits. With
    /// `create`, creates weir's tables and missing declared tables; without, returns the names of the tables
    /// that do not exist yet.
    async fn prepare(&self, tables: &[TableSpec], create: bool) -> Result<Vec<String>, SinkError>;

    /// Commits one batch in one transaction.
    async fn commit(&self, load: &Load<'_>) -> Result<Commit, SinkError>;

    /// Where data goes, for people.
    fn describe(&self) -> String;

    /// Things about the sink's set-up a person should fix (a plaintext connection over the network).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// `weir validate --aws`: whether the warehouse can read the files its bulk load will give it (a
    /// Redshift `COPY` with the configured role, tried on a one-row file and rolled back). `Ok(None)`: no
    /// bulk load from files is configured; `Ok(Some(what))`: it worked.
    async fn check_bulk_load(&self) -> Result<Option<String>, SinkError> {
        Ok(None)
    }
}

/// Checkpoints and leases: who reads which partition, and from where. Kept in the warehouse today (so that a
/// batch's checkpoint moves in the batch's own transaction); the seam through which coordination moves out.
#[async_trait]
pub trait Coordinator: Send + Sync {
    /// The committed checkpoint of a partition (empty when none), creating its row when missing.
    async fn checkpoint(&self, source: &str, partition: &str) -> Result<String, SinkError>;

    /// The lease rows of a source (Kinesis shards), with whether each lease has expired at `now_us`.
    async fn leases(&self, source: &str, now_us: i64) -> Result<Vec<Lease>, SinkError>;

    /// Claims or renews the lease of a partition for `owner` until `expires_us`, by compare-and-set: only when
    /// it is free, expired at `now_us`, already `owner`'s, or held by `steal_from`. Creates the row when
    /// missing. Returns whether `owner` holds the lease now.
    async fn claim(
        &self,
        source: &str,
        partition: &str,
        owner: &str,
        now_us: i64,
        expires_us: i64,
        steal_from: Option<&str>,
    ) -> Result<bool, SinkError>;

    /// Gives up `owner`'s lease of a partition (nothing happens when someone else holds it).
    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError>;

    /// Moves a checkpoint from `expected` to `new` outside a batch (a shard read to its end); returns whether
    /// it moved.
    async fn set_checkpoint(
        &self,
        source: &str,
        partition: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, SinkError>;
}

/// Reading back what loaded — the ledger, final rows, dead letters — for reconcile and replay.
#[async_trait]
pub trait SinkReader: Send + Sync {
    /// Every ledger row, oldest first (reconcile, replay).
    async fn ledger(&self) -> Result<Vec<LedgerRow>, SinkError>;

    /// The final rows of `spec` that match `filter`, every column read back as text.
    async fn stored_rows(
        &self,
        spec: &TableSpec,
        filter: &RowFilter,
    ) -> Result<Vec<StoredRow>, SinkError>;

    /// The dead letters of these batches or records (`RowFilter::Keys` matches nothing).
    async fn dead_letters(&self, filter: &RowFilter) -> Result<Vec<DeadLetterRow>, SinkError>;

    /// How many rows of `spec` name a batch the ledger does not have.
    async fn rows_without_batch(&self, spec: &TableSpec) -> Result<usize, SinkError>;

    /// Per partition of `source`, from the ledger: batches and records committed, and the last commit.
    async fn activity(&self, source: &str) -> Result<Vec<PartitionActivity>, SinkError>;

    /// Dead letters written since `since_us`, oldest first, at most `limit`; with `reason`, only those whose
    /// reason contains it.
    async fn dead_letter_entries(
        &self,
        since_us: i64,
        reason: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, SinkError>;

    /// Dead letters written since `since_us`, counted by stage and reason: the `limit` most frequent.
    async fn dead_letter_counts(
        &self,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetterCount>, SinkError>;
}

/// A partition's committed work, from the ledger (`weir status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionActivity {
    /// The partition.
    pub partition: String,
    /// Batches committed.
    pub batches: i64,
    /// Records those batches read.
    pub records: i64,
    /// When the last of them committed, in µs since the epoch.
    pub last_commit_us: i64,
}

/// A dead letter with where its record is in RAW (`weir dead-letters`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterEntry {
    /// The record.
    pub record_id: String,
    /// The batch that dead-lettered it.
    pub batch_id: String,
    /// Where the record is in RAW (`{object}#{line}`; the object alone for MongoDB RAW).
    pub raw_ref: String,
    /// `rule`, `sandbox`, `validate` or `sink`.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// The payload's first bytes, as text.
    pub payload_preview: String,
    /// When it was written, in µs since the epoch.
    pub at_us: i64,
}

/// Dead letters of one stage and reason (`weir status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterCount {
    /// `rule`, `sandbox`, `validate` or `sink`.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// How many.
    pub count: i64,
}

/// A backend that plays all three roles — every warehouse weir writes today. `Arc<dyn Warehouse>` coerces to
/// each role (`Arc<dyn Sink>`, `Arc<dyn Coordinator>`, `Arc<dyn SinkReader>`), so each part of the worker is
/// handed only the role it uses.
pub trait Warehouse: Sink + Coordinator + SinkReader {}

impl<T: Sink + Coordinator + SinkReader> Warehouse for T {}

#[cfg(test)]
mod tests;
