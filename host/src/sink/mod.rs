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
}

/// Counts of one batch, as stored in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records in the batch.
    pub records_in: usize,
    /// Records that emitted rows (possibly zero rows).
    pub emitted: usize,
    /// Records dropped.
    pub dropped: usize,
    /// Records rejected.
    pub rejected: usize,
    /// Rows emitted, all tables.
    pub rows_out: usize,
    /// Drop reason → count.
    pub drop_reasons: BTreeMap<String, usize>,
}

impl Counts {
    /// The ledger counts of a batch's outcomes.
    pub fn of(outcomes: &[RecordOutcome]) -> Counts {
        let mut c = Counts {
            records_in: outcomes.len(),
            ..Counts::default()
        };
        for o in outcomes {
            match o {
                RecordOutcome::Emit(rows) => {
                    c.emitted += 1;
                    c.rows_out += rows.len();
                }
                RecordOutcome::Drop(reason) => {
                    c.dropped += 1;
                    *c.drop_reasons.entry(reason.clone()).or_default() += 1;
                }
                RecordOutcome::Reject(..) => c.rejected += 1,
            }
        }
        c.drop_reasons = bound_reasons(std::mem::take(&mut c.drop_reasons));
        c
    }

    /// The drop reasons as the ledger stores them: JSON of at most [`LEDGER_REASONS_MAX_BYTES`].
    pub fn drop_reasons_json(&self) -> String {
        serde_json::to_string(&self.drop_reasons).expect("a map of strings serializes")
    }
}

/// Most distinct drop reasons the ledger keeps per batch; the others are counted under [`OTHER_REASONS`].
pub const LEDGER_REASONS: usize = 32;
/// Longest drop reason the ledger keeps, in UTF-8 bytes (longer ones are cut on a character boundary).
pub const LEDGER_REASON_BYTES: usize = 256;
/// Longest `drop_reasons` JSON text, bytes: well inside its `VARCHAR(65535)` column.
pub const LEDGER_REASONS_MAX_BYTES: usize = 60_000;
/// The ledger's key for the drop reasons past [`LEDGER_REASONS`].
pub const OTHER_REASONS: &str = "(other reasons)";

/// Bounds what weir itself writes about drops, whatever a rule says: each reason cut to
/// [`LEDGER_REASON_BYTES`], the [`LEDGER_REASONS`] most frequent kept (ties: the first in text order), the rest
/// counted under [`OTHER_REASONS`], and the JSON text under [`LEDGER_REASONS_MAX_BYTES`]. A rule that gives every
/// record its own reason can therefore never make a ledger row too long to commit.
pub fn bound_reasons(reasons: BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    let mut cut: BTreeMap<String, usize> = BTreeMap::new();
    for (r, n) in reasons {
        *cut.entry(clean_text(&r, LEDGER_REASON_BYTES)).or_default() += n;
    }
    let mut ranked: Vec<(String, usize)> = cut.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut other: usize = 0;
    let mut keep = LEDGER_REASONS;
    loop {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        let mut rest = other;
        for (i, (r, n)) in ranked.iter().enumerate() {
            if i < keep && r != OTHER_REASONS {
                out.insert(r.clone(), *n);
            } else {
                rest += n;
            }
        }
        if rest > 0 {
            *out.entry(OTHER_REASONS.to_string()).or_default() += rest;
        }
        let len = serde_json::to_string(&out).map(|s| s.len()).unwrap_or(0);
        if len <= LEDGER_REASONS_MAX_BYTES || keep == 0 {
            return out;
        }
        keep /= 2;
        other = 0;
    }
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

/// Text fit for any `VARCHAR(max_bytes)`: NUL characters (which PostgreSQL refuses) replaced, cut to
/// `max_bytes` UTF-8 bytes on a character boundary.
pub fn clean_text(text: &str, max_bytes: usize) -> String {
    let mut s = text.replace('\0', "\u{FFFD}");
    if s.len() > max_bytes {
        let mut cut = max_bytes.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The first bytes of a payload, as text, for a dead letter (the full record is in RAW).
pub fn payload_preview(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(256)];
    String::from_utf8_lossy(cut).replace('\0', "\u{FFFD}")
}

/// Keeps one row per key, in first-seen order (Redshift does not enforce keys): the latest, or with a version
/// column the one with the highest version (ties: the latest). The stored row is compared in SQL.
pub(crate) fn dedupe<'a>(
    rows: Vec<(&'a CheckedRow, &'a str)>,
    key: &[usize],
    version: Option<usize>,
    equality: KeyEquality,
) -> Vec<(&'a CheckedRow, &'a str)> {
    let mut best: HashMap<Vec<Cell>, usize> = HashMap::new();
    for (i, (row, _)) in rows.iter().enumerate() {
        let k: Vec<Cell> = key
            .iter()
            .map(|k| equality.normalize(&row.cells[*k]))
            .collect();
        match (best.get(&k), version) {
            (Some(&j), Some(v))
                if version_cmp(&rows[j].0.cells[v], &row.cells[v])
                    == std::cmp::Ordering::Greater => {}
            _ => {
                best.insert(k, i);
            }
        }
    }
    let keep: HashSet<usize> = best.into_values().collect();
    rows.into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, r)| r)
        .collect()
}

/// How the database compares key values, so that the client's dedupe of a batch agrees with the merge's
/// `=`: two keys SQL takes for one must be one row in the stage too (or the stage holds two rows for one
/// key, which the merge turns into duplicates or Redshift's MERGE refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEquality {
    /// PostgreSQL and SQLite: `-0.0 = 0.0`, `-0.00 = 0.00`; text compares exactly.
    Standard,
    /// Redshift: also ignores trailing blanks when comparing `VARCHAR`s (`'a' = 'a  '`).
    Redshift,
}

impl KeyEquality {
    /// The value a key cell compares as.
    pub fn normalize(self, cell: &Cell) -> Cell {
        match cell {
            Cell::Float(x) if *x == 0.0 => Cell::Float(0.0),
            Cell::Decimal(d)
                if d.starts_with('-') && d[1..].bytes().all(|b| b == b'0' || b == b'.') =>
            {
                Cell::Decimal(d[1..].to_string())
            }
            Cell::Text(t) if self == KeyEquality::Redshift => {
                Cell::Text(t.trim_end_matches(' ').to_string())
            }
            other => other.clone(),
        }
    }
}

/// The order of two versions of a row, as SQL compares them; NULL is lower than any value.
pub fn version_cmp(a: &Cell, b: &Cell) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Cell::Null, Cell::Null) => Ordering::Equal,
        (Cell::Null, _) => Ordering::Less,
        (_, Cell::Null) => Ordering::Greater,
        (Cell::Int(x), Cell::Int(y)) => x.cmp(y),
        (Cell::TimestampUs(x), Cell::TimestampUs(y)) => x.cmp(y),
        (Cell::Float(x), Cell::Float(y)) => x.total_cmp(y),
        (Cell::Decimal(x), Cell::Decimal(y)) => decimal_cmp(x, y),
        (Cell::Text(x), Cell::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Cell::Bool(x), Cell::Bool(y)) => x.cmp(y),
        _ => Ordering::Equal, // one column has one type
    }
}

/// Compares two decimal texts of the same scale (`-12.50`, `3.00`) numerically.
fn decimal_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> (bool, &str, &str) {
        let (neg, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let int = int.trim_start_matches('0');
        let zero = int.is_empty() && frac.bytes().all(|b| b == b'0');
        (neg && !zero, int, frac)
    }
    let (na, ia, fa) = parts(a);
    let (nb, ib, fb) = parts(b);
    let magnitude = ia
        .len()
        .cmp(&ib.len())
        .then_with(|| ia.cmp(ib))
        .then_with(|| {
            let w = fa.len().max(fb.len());
            format!("{fa:0<w$}").cmp(&format!("{fb:0<w$}"))
        });
    match (na, nb) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
    }
}

/// Emitted rows per table, in record order, with their record ids; only records in `only` when given.
pub(crate) fn rows_by_table<'a>(
    load: &'a Load<'_>,
    tables: usize,
    only: Option<&[usize]>,
) -> Vec<Vec<(&'a CheckedRow, &'a str)>> {
    let mut per_table: Vec<Vec<(&CheckedRow, &str)>> = vec![Vec::new(); tables];
    let records = load.batch.records.iter().zip(load.outcomes).enumerate();
    for (i, (record, outcome)) in records {
        if only.is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        if let RecordOutcome::Emit(rows) = outcome {
            for row in rows {
                per_table[row.table].push((row, record.id.as_str()));
            }
        }
    }
    per_table
}

/// A double-quoted SQL identifier (only declared, checked names are ever quoted into SQL).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `name TYPE NOT NULL` column definitions of the lineage columns, in a sink's type names.
pub(crate) fn lineage_ddl(sql_type: impl Fn(ColumnType) -> String) -> Vec<String> {
    LINEAGE_COLUMNS
        .iter()
        .zip(LINEAGE_TYPES)
        .map(|(name, ty)| format!("{name} {} NOT NULL", sql_type(ty)))
        .collect()
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
}

/// A backend that plays all three roles — every warehouse weir writes today. `Arc<dyn Warehouse>` coerces to
/// each role (`Arc<dyn Sink>`, `Arc<dyn Coordinator>`, `Arc<dyn SinkReader>`), so each part of the worker is
/// handed only the role it uses.
pub trait Warehouse: Sink + Coordinator + SinkReader {}

impl<T: Sink + Coordinator + SinkReader> Warehouse for T {}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many and however long the reasons, the ledger's JSON stays bounded and every drop counted.
    #[test]
    fn drop_reasons_are_bounded() {
        let mut reasons = BTreeMap::new();
        for i in 0..10_000 {
            reasons.insert(format!("duplicate of {i} {}", "é\u{1}".repeat(400)), 1);
        }
        reasons.insert("common".to_string(), 500);
        let bounded = bound_reasons(reasons);
        let json = serde_json::to_string(&bounded).unwrap();
        assert!(json.len() <= LEDGER_REASONS_MAX_BYTES, "{}", json.len());
        assert_eq!(bounded.values().sum::<usize>(), 10_500);
        assert_eq!(bounded["common"], 500, "the most frequent reason is kept");
        assert!(bounded.keys().all(|k| k.len() <= LEDGER_REASON_BYTES));
        assert!(bounded.contains_key(OTHER_REASONS));
        // Few short reasons stay as they are.
        let few = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(bound_reasons(few.clone()), few);
    }

    /// Keys the database takes for one are one key in the client's dedupe too.
    #[test]
    fn key_equality_follows_the_database() {
        use KeyEquality::*;
        assert_eq!(Standard.normalize(&Cell::Float(-0.0)), Cell::Float(0.0));
        assert_eq!(
            Standard.normalize(&Cell::Decimal("-0.00".into())),
            Cell::Decimal("0.00".into())
        );
        assert_eq!(
            Standard.normalize(&Cell::Decimal("-0.10".into())),
            Cell::Decimal("-0.10".into())
        );
        assert_eq!(
            Standard.normalize(&Cell::Text("a  ".into())),
            Cell::Text("a  ".into())
        );
        assert_eq!(
            Redshift.normalize(&Cell::Text("a  ".into())),
            Cell::Text("a".into())
        );
        let row = |id: &str| CheckedRow {
            table: 0,
            cells: vec![Cell::Text(id.into())],
        };
        let (a, a_blank) = (row("a"), row("a "));
        let both = vec![(&a, "r1"), (&a_blank, "r2")];
        assert_eq!(dedupe(both.clone(), &[0], None, Standard).len(), 2);
        let one = dedupe(both, &[0], None, Redshift);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, "r2", "the latest");
    }
}
