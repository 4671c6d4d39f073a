//! The embedded SQLite sink (sqlx): the default for trying weir without any server.
//!
//! Column types keep the declared weir type in SQLite's declared type while getting the right storage
//! affinity: decimals, timestamps and `super` are stored as text (`DECIMAL TEXT(18,2)`, `TIMESTAMPTZ TEXT`,
//! `SUPER TEXT`), so decimals stay exact (`44.90`), timestamps are ISO 8601 UTC with microseconds, and JSON
//! stays JSON. Rows are upserted with SQLite's own `INSERT … ON CONFLICT DO UPDATE` (this file only: it is
//! not Redshift SQL). Only declared, checked identifiers (see `schema::check_identifier`) are ever formatted
//! into SQL text; every value is a bind parameter.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row as _, Sqlite};
use std::sync::Arc;
use tracing::Instrument;

use super::{
    Commit, Coordinator, DeadLetterCount, DeadLetterEntry, DeadLetterRow, Lease, LedgerRow, Load,
    PartitionActivity, READ_CHUNK, RowFilter, SchemaPlan, Sink, SinkError, SinkReader, StoredRow,
    dedupe, lineage_ddl, payload_preview, quote, rows_by_table,
};
use crate::rules::validate::RecordOutcome;
use crate::schema::{Cell, ColumnType, LINEAGE_COLUMNS, TableSpec, format_timestamp_us};

mod coordinator;
mod group;
mod reader;

/// The SQLite sink.
pub struct SqliteSink {
    pool: SqlitePool,
    path: PathBuf,
    /// Upsert statement per declared table, built once by `prepare`.
    upserts: std::sync::OnceLock<Vec<Arc<str>>>,
    in_doubt: super::InDoubt,
}

fn classify(e: sqlx::Error) -> SinkError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => SinkError::Transient(e.to_string()),
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("5" | "6" | "261" | "262" | "517")
            ) =>
        {
            SinkError::Transient(e.to_string())
        }
        _ => SinkError::Permanent(e.to_string()),
    }
}

/// The SQLite declared type of a weir column type.
pub fn sqlite_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::SmallInt => "SMALLINT".into(),
        ColumnType::Integer => "INTEGER".into(),
        ColumnType::BigInt => "BIGINT".into(),
        ColumnType::Decimal { precision, scale } => format!("DECIMAL TEXT({precision},{scale})"),
        ColumnType::Real => "REAL".into(),
        ColumnType::Double => "DOUBLE PRECISION".into(),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Varchar(n) => format!("VARCHAR({n})"),
        ColumnType::Timestamp => "TIMESTAMP TEXT".into(),
        ColumnType::TimestampTz => "TIMESTAMPTZ TEXT".into(),
        ColumnType::Super => "SUPER TEXT".into(),
    }
}

const WEIR_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS weir_checkpoints (
    source VARCHAR(256) NOT NULL,
    "partition" VARCHAR(256) NOT NULL,
    position VARCHAR(256) NOT NULL,
    owner VARCHAR(256),
    lease_expires_at TIMESTAMPTZ TEXT,
    updated_at TIMESTAMPTZ TEXT NOT NULL,
    PRIMARY KEY (source, "partition")
);
CREATE TABLE IF NOT EXISTS weir_batches (
    batch_id VARCHAR(1024) PRIMARY KEY,
    source VARCHAR(256) NOT NULL,
    "partition" VARCHAR(256) NOT NULL,
    first_position VARCHAR(256) NOT NULL,
    last_position VARCHAR(256) NOT NULL,
    raw_ref VARCHAR(1024) NOT NULL,
    rule_digest VARCHAR(64) NOT NULL,
    records_in INTEGER NOT NULL,
    emitted INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    rows_out INTEGER NOT NULL,
    drop_reasons VARCHAR(65535) NOT NULL,
    loaded_at TIMESTAMPTZ TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS weir_dead_letters (
    record_id VARCHAR(1024) PRIMARY KEY,
    batch_id VARCHAR(1024) NOT NULL,
    raw_ref VARCHAR(1024) NOT NULL,
    stage VARCHAR(32) NOT NULL,
    reason VARCHAR(65535) NOT NULL,
    payload_preview VARCHAR(1024) NOT NULL,
    at TIMESTAMPTZ TEXT NOT NULL
);
"#;

impl SqliteSink {
    /// Opens (creating when missing) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self, SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                SinkError::Permanent(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(classify)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| {
                SinkError::Permanent(format!(
                    "cannot open SQLite database {}: {e}",
                    path.display()
                ))
            })?;
        Ok(SqliteSink {
            pool,
            path: path.to_path_buf(),
            upserts: std::sync::OnceLock::new(),
            in_doubt: super::InDoubt::default(),
        })
    }

    /// The connection pool, for tests and reports.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// `None` when the table does not exist, else the declared columns it lacks. A column of another type
    /// is an error.
    async fn check_table(
        &self,
        spec: &TableSpec,
    ) -> Result<Option<Vec<(String, ColumnType)>>, SinkError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "PRAGMA table_info({})",
            quote(&spec.name)
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let existing: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("name"),
                    r.get::<String, _>("type").to_ascii_uppercase(),
                )
            })
            .collect();
        let mut missing = Vec::new();
        for (column, ty) in &spec.columns {
            let want = sqlite_type(*ty);
            match existing.iter().find(|(n, _)| n == column) {
                None if spec.is_key(column) => return Err(super::key_column_missing(spec, column)),
                None => missing.push((column.clone(), *ty)),
                Some((_, have)) if *have != want => {
                    return Err(SinkError::Schema(format!(
                        "table {}, column {column}: the database has type {have}, the config declares {ty} \
                         (expected {want})",
                        spec.name
                    )));
                }
                Some(_) => {}
            }
        }
        for lineage in LINEAGE_COLUMNS {
            if !existing.iter().any(|(n, _)| n == lineage) {
                return Err(SinkError::Schema(format!(
                    "table {}: lineage column {lineage} is missing; the table was not created by weir",
                    spec.name
                )));
            }
        }
        Ok(Some(missing))
    }

    fn create_sql(spec: &TableSpec) -> String {
        let mut cols: Vec<String> = spec
            .columns
            .iter()
            .map(|(c, ty)| {
                let not_null = if spec.is_key(c) { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", quote(c), sqlite_type(*ty))
            })
            .collect();
        cols.extend(lineage_ddl(sqlite_type));
        let key: Vec<String> = spec.primary_key.iter().map(|k| quote(k)).collect();
        format!(
            "CREATE TABLE {} (\n    {},\n    PRIMARY KEY ({})\n)",
            quote(&spec.name),
            cols.join(",\n    "),
            key.join(", ")
        )
    }

    /// `INSERT … VALUES (…), … ON CONFLICT (key) DO UPDATE …` for `rows` rows (SQLite's own upsert). A
    /// `redrive` statement takes two more parameters after the rows' (see [`crate::sink::Redrive`]): this
    /// run's batch-id pattern and the original batch.
    fn upsert_sql(spec: &TableSpec, rows: usize, redrive: bool) -> String {
        let mut names: Vec<String> = spec.columns.iter().map(|(c, _)| quote(c)).collect();
        names.extend(LINEAGE_COLUMNS.iter().map(|c| c.to_string()));
        let marks = format!("({})", vec!["?"; names.len()].join(", "));
        let values = vec![marks.as_str(); rows].join(", ");
        let key: Vec<String> = spec.primary_key.iter().map(|k| quote(k)).collect();
        let updates: Vec<String> = spec
            .columns
            .iter()
            .filter(|(c, _)| !spec.is_key(c))
            .map(|(c, _)| quote(c))
            .chain(LINEAGE_COLUMNS.iter().map(|c| c.to_string()))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        // With a version column, a stored row is replaced only by a version at least as high (NULL loses).
        let guard = match spec
            .version_column
            .as_deref()
            .and_then(|v| spec.column_index(v).map(|i| (quote(v), spec.columns[i].1)))
        {
            None if redrive => {
                let t = quote(&spec.name);
                let (record, batch) = (LINEAGE_COLUMNS[0], LINEAGE_COLUMNS[1]);
                format!(
                    " WHERE {t}.{record} = excluded.{record} OR {t}.{batch} LIKE ? OR NOT EXISTS \
                     (SELECT 1 FROM weir_batches holder, weir_batches original \
                     WHERE holder.batch_id = {t}.{batch} AND original.batch_id = ? \
                     AND holder.loaded_at >= original.loaded_at)"
                )
            }
            None => String::new(),
            Some((v, ty)) => {
                let t = quote(&spec.name);
                // Decimals are stored as text: compare them as numbers.
                let (new, old) = if matches!(ty, crate::schema::ColumnType::Decimal { .. }) {
                    (
                        format!("CAST(excluded.{v} AS REAL)"),
                        format!("CAST({t}.{v} AS REAL)"),
                    )
                } else {
                    (format!("excluded.{v}"), format!("{t}.{v}"))
                };
                format!(" WHERE {new} >= {old} OR {t}.{v} IS NULL")
            }
        };
        format!(
            "INSERT INTO {} ({}) VALUES {values} ON CONFLICT ({}) DO UPDATE SET {}{guard}",
            quote(&spec.name),
            names.join(", "),
            key.join(", "),
            updates.join(", ")
        )
    }
}

/// Rows per upsert statement: one statement per row costs a round trip to SQLite's worker thread each.
const ROWS_PER_UPSERT: usize = 100;

fn bind_cell<'q>(
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    cell: &'q Cell,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    match cell {
        Cell::Null => q.bind(None::<String>),
        Cell::Bool(b) => q.bind(*b),
        Cell::Int(i) => q.bind(*i),
        Cell::Float(x) => q.bind(*x),
        Cell::Decimal(s) | Cell::Text(s) | Cell::Json(s) => q.bind(s.as_str()),
        Cell::TimestampUs(us) => q.bind(format_timestamp_us(*us)),
    }
}

#[async_trait]
impl Sink for SqliteSink {
    async fn plan(&self, tables: &[TableSpec]) -> Result<SchemaPlan, SinkError> {
        let mut plan = SchemaPlan::default();
        let have_weir: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
             AND name IN ('weir_checkpoints', 'weir_batches', 'weir_dead_letters')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        if have_weir < 3 {
            plan.statements.push(WEIR_TABLES.trim().to_string());
            plan.new_tables
                .push("weir_checkpoints, weir_batches, weir_dead_letters".into());
        }
        for spec in tables {
            match self.check_table(spec).await? {
                None => {
                    plan.statements.push(Self::create_sql(spec));
                    plan.new_tables.push(spec.name.clone());
                }
                Some(missing) => {
                    for (column, ty) in missing {
                        plan.statements.push(format!(
                            "ALTER TABLE {} ADD COLUMN {} {}",
                            quote(&spec.name),
                            quote(&column),
                            sqlite_type(ty)
                        ));
                        plan.new_columns
                            .push((spec.name.clone(), column, ty.to_string()));
                    }
                }
            }
        }
        Ok(plan)
    }

    async fn apply(&self, plan: &SchemaPlan) -> Result<(), SinkError> {
        for statement in &plan.statements {
            sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&self.pool)
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    async fn prepare(&self, tables: &[TableSpec], create: bool) -> Result<Vec<String>, SinkError> {
        let plan = self.plan(tables).await?;
        plan.check_at_start()?;
        if create && !plan.statements.is_empty() {
            self.apply(&plan).await?;
            tracing::info!(tables = %plan.new_tables.join(", "), db = %self.path.display(), "created tables");
        }
        let _ = self.upserts.set(
            tables
                .iter()
                .map(|t| Arc::from(Self::upsert_sql(t, ROWS_PER_UPSERT, false)))
                .collect(),
        );
        Ok(if create { Vec::new() } else { plan.new_tables })
    }

    async fn commit(&self, load: &Load<'_>) -> Result<Commit, SinkError> {
        let span = tracing::debug_span!("sqlite.commit", batch = %load.batch.id, records = load.batch.records.len());
        self.commit_batch(load).instrument(span).await
    }

    fn describe(&self) -> String {
        format!("SQLite database {}", self.path.display())
    }
}

impl SqliteSink {
    /// Commits one batch in one transaction: checkpoint compare-and-set, upserts, dead letters, ledger.
    async fn commit_batch(&self, load: &Load<'_>) -> Result<Commit, SinkError> {
        let batch = load.batch;
        let upserts = self
            .upserts
            .get()
            .ok_or_else(|| SinkError::Permanent("commit before prepare".into()))?;
        let loaded_at = format_timestamp_us(load.loaded_at_us);
        let mut tx = self.pool.begin().await.map_err(classify)?;
        if let Some(settled) = self.guard(&mut tx, batch, &loaded_at).await? {
            tx.rollback().await.map_err(classify)?;
            self.in_doubt.settled(&batch.id);
            return Ok(settled);
        }
        upsert_rows(&mut tx, upserts, load, &loaded_at).await?;
        write_dead_letters(&mut tx, load, &loaded_at).await?;
        write_ledger(&mut tx, load, &loaded_at).await?;
        self.in_doubt.sending(&batch.id);
        tx.commit().await.map_err(classify)?;
        self.in_doubt.settled(&batch.id);
        Ok(Commit::Committed)
    }

    /// Whether this batch may commit: `None` to go on, or the outcome to report after rolling back (the
    /// batch had already committed, or another worker owns the partition now).
    async fn guard(
        &self,
        tx: &mut sqlx::SqliteConnection,
        batch: &crate::record::Batch,
        loaded_at: &str,
    ) -> Result<Option<Commit>, SinkError> {
        let already = "SELECT 1 FROM weir_batches WHERE batch_id = ?";
        if !batch.ordered {
            // Unordered sources have no checkpoint: the ledger row of this very delivery is the guard.
            let seen = sqlx::query(already)
                .bind(&batch.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
            return Ok(seen.is_some().then_some(Commit::Committed));
        }
        // Compare-and-set first: if another worker moved the checkpoint, write nothing.
        let moved = sqlx::query(
            r#"UPDATE weir_checkpoints SET position = ?, updated_at = ?
               WHERE source = ? AND "partition" = ? AND position = ?"#,
        )
        .bind(batch.last_position())
        .bind(loaded_at)
        .bind(&batch.source)
        .bind(&batch.partition)
        .bind(&batch.prev_position)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if moved.rows_affected() == 1 {
            if let Some(fingerprint) = &batch.fingerprint {
                // The input fingerprint goes with the partition's first checkpoint of a run.
                sqlx::query(
                    r#"INSERT INTO weir_checkpoints (source, "partition", position, updated_at)
                       VALUES (?, ?, ?, ?)
                       ON CONFLICT (source, "partition") DO UPDATE SET position = excluded.position,
                       updated_at = excluded.updated_at"#,
                )
                .bind(&batch.source)
                .bind(crate::source::fingerprint_partition(&batch.partition))
                .bind(fingerprint)
                .bind(loaded_at)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
            return Ok(None);
        }
        // Another worker moved the checkpoint, or this batch committed and its reply was lost.
        let in_doubt = self.in_doubt.contains(&batch.id);
        let ours = sqlx::query(already)
            .bind(&batch.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?;
        if in_doubt && ours.is_some() {
            return Ok(Some(Commit::Committed));
        }
        Ok(Some(Commit::NotOwner))
    }
}

/// Rows per table, the latest per key (a key may repeat within a batch), in multi-row upserts.
async fn upsert_rows(
    tx: &mut sqlx::SqliteConnection,
    upserts: &[Arc<str>],
    load: &Load<'_>,
    loaded_at: &str,
) -> Result<(), SinkError> {
    for (t, rows) in rows_by_table(load, load.tables.len(), None)
        .into_iter()
        .enumerate()
    {
        let spec = &load.tables[t];
        let key: Vec<usize> = spec
            .primary_key
            .iter()
            .filter_map(|k| spec.column_index(k))
            .collect();
        let version = spec
            .version_column
            .as_deref()
            .and_then(|v| spec.column_index(v));
        let rows = dedupe(rows, &key, version, crate::sink::KeyEquality::Standard);
        for chunk in rows.chunks(ROWS_PER_UPSERT) {
            let redrive = load.redrive.filter(|_| version.is_none());
            let sql: Arc<str> = if chunk.len() == ROWS_PER_UPSERT && redrive.is_none() {
                upserts[t].clone()
            } else {
                Arc::from(SqliteSink::upsert_sql(spec, chunk.len(), redrive.is_some()))
            };
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (row, record_id) in chunk {
                for cell in &row.cells {
                    q = bind_cell(q, cell);
                }
                q = q
                    .bind(*record_id)
                    .bind(&load.batch.id)
                    .bind(load.rule_digest)
                    .bind(loaded_at);
            }
            if let Some(r) = redrive {
                q = q.bind(r.run_pattern).bind(r.original_batch);
            }
            q.execute(&mut *tx).await.map_err(classify)?;
        }
    }
    Ok(())
}

/// One dead letter per rejected record (replacing an earlier one for the same record); a redrive's records
/// that now emit or drop lose theirs.
async fn write_dead_letters(
    tx: &mut sqlx::SqliteConnection,
    load: &Load<'_>,
    loaded_at: &str,
) -> Result<(), SinkError> {
    let batch = load.batch;
    for ((record, outcome), raw_ref) in batch.records.iter().zip(load.outcomes).zip(load.raw_refs) {
        let RecordOutcome::Reject(stage, reason) = outcome else {
            if load.redrive.is_some() {
                // A redriven record that now emits or drops is no longer a dead letter.
                sqlx::query("DELETE FROM weir_dead_letters WHERE record_id = ?")
                    .bind(&record.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            continue;
        };
        sqlx::query(
            "INSERT INTO weir_dead_letters (record_id, batch_id, raw_ref, stage, reason, payload_preview, at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (record_id) DO UPDATE SET batch_id = excluded.batch_id, raw_ref = excluded.raw_ref,
               stage = excluded.stage, reason = excluded.reason,
               payload_preview = excluded.payload_preview, at = excluded.at",
        )
        .bind(&record.id)
        .bind(&batch.id)
        .bind(raw_ref)
        .bind(stage.as_str())
        .bind(reason)
        .bind(payload_preview(&record.payload))
        .bind(loaded_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
    }
    Ok(())
}

/// The batch's ledger row: its positions, RAW object, rule and counts.
async fn write_ledger(
    tx: &mut sqlx::SqliteConnection,
    load: &Load<'_>,
    loaded_at: &str,
) -> Result<(), SinkError> {
    let batch = load.batch;
    let c = load.counts();
    let drop_reasons = c.drop_reasons_json();
    sqlx::query(
        r#"INSERT INTO weir_batches (batch_id, source, "partition", first_position, last_position, raw_ref,
             rule_digest, records_in, emitted, dropped, rejected, rows_out, drop_reasons, loaded_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"#,
    )
    .bind(&batch.id)
    .bind(&batch.source)
    .bind(&batch.partition)
    .bind(batch.first_position())
    .bind(batch.last_position())
    .bind(load.raw_object())
    .bind(load.rule_digest)
    .bind(c.records_in as i64)
    .bind(c.emitted as i64)
    .bind(c.dropped as i64)
    .bind(c.rejected as i64)
    .bind(c.rows_out as i64)
    .bind(drop_reasons)
    .bind(loaded_at)
    .execute(&mut *tx)
    .await
    .map_err(classify)?;
    Ok(())
}
