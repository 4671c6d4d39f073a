//! The Redshift sink, over the PostgreSQL wire protocol (tokio-postgres). Kinds `redshift` and `postgres` run
//! the same code; PostgreSQL is the local stand-in. Every statement keeps to the subset that runs unchanged on
//! both (see the Redshift portability notes): no `ON CONFLICT`, no `COPY FROM STDIN`, no `TRUNCATE` in a
//! transaction, no database clock — timestamps are bound from the client.
//!
//! One transaction per batch:
//! 1. the checkpoint compare-and-set (`UPDATE … WHERE position = $expected`); no row → another worker owns
//!    the partition: roll back;
//! 2. per table: empty the session's temp stage (`DELETE`), fill it with multi-row typed `INSERT`s (chunks
//!    under 32,767 binds and about 4 MB), deduplicated in the client to the latest row per key (Redshift does
//!    not enforce keys), then `DELETE … USING stage` + `INSERT … SELECT` from the stage;
//! 3. dead letters (delete + insert by record id) and the ledger row;
//! 4. commit.
//!
//! Values are bound as text, integers, floats or booleans, and cast in SQL to the declared column type
//! (`CAST($n AS DECIMAL(18,2))`, `JSON_PARSE($n)` for `SUPER`), so Redshift and PostgreSQL infer nothing.
//! Only declared, checked identifiers are formatted into SQL.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};
use tracing::Instrument;

use super::{
    Commit, Coordinator, DeadLetterCount, DeadLetterEntry, DeadLetterRow, KeyEquality, Lease,
    LedgerRow, Load, PartitionActivity, READ_CHUNK, RowFilter, SchemaPlan, Sink, SinkError,
    SinkReader, StoredRow, clean_text, dedupe, lineage_ddl, payload_preview, quote, rows_by_table,
};
use crate::aws::AwsConfig;
use crate::config::{IamConfig, MergeMode, StageFillConfig};
use crate::rules::validate::{CheckedRow, RecordOutcome};
use crate::schema::{
    Cell, ColumnType, LINEAGE_COLUMNS, LINEAGE_TYPES, TableSpec, format_timestamp_us,
};

mod coordinator;
mod reader;

mod session;
use session::*;
mod sql;
pub use sql::*;
mod binary;
mod copy;
pub use copy::*;
mod commit;
use commit::*;
mod ledger;
use ledger::*;
mod group;

/// Most bind parameters in one statement (the protocol's i16 count; Redshift's drivers cap there too).
const MAX_BINDS: usize = 32_767;
/// Rows per multi-row INSERT: PostgreSQL parses and plans one huge VALUES list more slowly than several
/// smaller ones (measured: 250 rows beat 1,000 and 2,000 by a quarter; see docs/PERFORMANCE.md).
const MAX_ROWS_PER_INSERT: usize = 250;

/// Rough cap on the bound bytes of one multi-row INSERT.
const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// The PostgreSQL / Redshift sink.
pub struct RedshiftSink {
    config: tokio_postgres::Config,
    /// TLS with certificate and hostname verification, when the connection uses it.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: String,
    redshift: bool,
    /// A small pool of sessions: each keeps its own temp stages; a broken one is dropped and reconnected.
    pool: Vec<Mutex<Option<Conn>>>,
    iam: Option<IamConfig>,
    stage_fill: StageFillConfig,
    aws: AwsConfig,
    merge: MergeMode,
    /// The AWS SDK configuration, loaded on first use (IAM credentials, COPY stage files).
    #[cfg(feature = "aws")]
    sdk: tokio::sync::OnceCell<aws_config::SdkConfig>,
    connect_timeout: std::time::Duration,
    call_timeout: std::time::Duration,
    tables: std::sync::OnceLock<Vec<TableSpec>>,
    /// Batches whose COMMIT went unanswered.
    in_doubt: super::InDoubt,
}

struct Conn {
    client: Client,
    /// Temp stage tables already created in this session.
    staged: HashSet<String>,
    /// Stages analyzed in this session (PostgreSQL): once, after their first fill (see `merge_stage`).
    analyzed: HashSet<String>,
    /// Full-size stage INSERTs prepared in this session, by stage: parsed and planned once, not per chunk.
    prepared: Statements,
}

type Statements = HashMap<String, tokio_postgres::Statement>;

/// Options of a [`RedshiftSink`] beyond its URL.
#[derive(Debug, Clone)]
pub struct RedshiftOptions {
    /// Schema of the final and weir tables.
    pub schema: String,
    /// Redshift (TLS by default, Redshift-only table options) rather than PostgreSQL.
    pub redshift: bool,
    /// Extra CA certificates (PEM) to trust.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Most sessions.
    pub connections: usize,
    /// IAM temporary credentials.
    pub iam: Option<IamConfig>,
    /// How the stage is filled.
    pub stage_fill: StageFillConfig,
    /// AWS settings (IAM, COPY stage files).
    pub aws: AwsConfig,
    /// How the stage is merged into the target.
    pub merge: MergeMode,
    /// Longest wait for a new connection.
    pub connect_timeout: std::time::Duration,
    /// Longest one call (a commit transaction, a lease update) may take.
    pub call_timeout: std::time::Duration,
}

impl Default for RedshiftOptions {
    fn default() -> Self {
        RedshiftOptions {
            schema: "public".into(),
            redshift: false,
            tls_ca_file: None,
            connections: 2,
            iam: None,
            stage_fill: StageFillConfig::Auto,
            aws: AwsConfig::default(),
            merge: MergeMode::DeleteInsert,
            connect_timeout: std::time::Duration::from_secs(10),
            call_timeout: std::time::Duration::from_secs(300),
        }
    }
}

#[async_trait]
impl Sink for RedshiftSink {
    async fn plan(&self, tables: &[TableSpec]) -> Result<SchemaPlan, SinkError> {
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
            let mut plan = SchemaPlan::default();
            let have_weir = conn
                .client
                .query_typed(
                    traced(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 \
                         AND table_name IN ('weir_checkpoints', 'weir_batches', 'weir_dead_letters')",
                    ),
                    &[(&self.schema, Type::VARCHAR)],
                )
                .await
                .map_err(classify)?;
            if have_weir.len() < 3 {
                plan.statements.extend(weir_tables_ddl(&self.schema));
                plan.new_tables.push("weir_checkpoints, weir_batches, weir_dead_letters".into());
            }
            for spec in tables {
                match self.check_table(&conn.client, spec).await? {
                    None => {
                        plan.statements.push(table_ddl(&self.schema, spec, self.redshift));
                        plan.new_tables.push(spec.name.clone());
                    }
                    Some(missing) => {
                        for (column, ty) in missing {
                            plan.statements.push(format!(
                                "ALTER TABLE {}.{} ADD COLUMN {} {}",
                                quote(&self.schema),
                                quote(&spec.name),
                                quote(&column),
                                sql_type(ty)
                            ));
                            plan.new_columns.push((spec.name.clone(), column, ty.to_string()));
                        }
                    }
                }
            }
            Ok(plan)
            })
            .await;
        Self::settle(&mut guard, result)
    }

    async fn apply(&self, plan: &SchemaPlan) -> Result<(), SinkError> {
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
                // One statement at a time, outside any transaction block (Redshift runs some DDL only there).
                for statement in &plan.statements {
                    conn.client
                        .batch_execute(traced(statement))
                        .await
                        .map_err(classify)?;
                }
                // Temp stages copy the target's columns: recreate them after the targets change.
                conn.prepared.clear();
                for stage in conn.staged.drain() {
                    conn.client
                        .batch_execute(traced(&format!("DROP TABLE IF EXISTS {stage}")))
                        .await
                        .map_err(classify)?;
                }
                Ok(())
            })
            .await;
        Self::settle(&mut guard, result)
    }

    async fn prepare(&self, tables: &[TableSpec], create: bool) -> Result<Vec<String>, SinkError> {
        let _ = self.tables.set(tables.to_vec());
        let plan = self.plan(tables).await?;
        plan.check_at_start()?;
        if create && !plan.statements.is_empty() {
            self.apply(&plan).await?;
            tracing::info!(tables = %plan.new_tables.join(", "), "created tables");
        }
        Ok(if create { Vec::new() } else { plan.new_tables })
    }

    async fn commit(&self, load: &Load<'_>) -> Result<Commit, SinkError> {
        let span = tracing::debug_span!("redshift.commit", batch = %load.batch.id, records = load.batch.records.len());
        let mut guard = self.session().instrument(span.clone()).await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("commit", async {
                let mut result = self.commit_batch(conn, load).instrument(span.clone()).await;
                if let Err(SinkError::Data(message)) = &result {
                    tracing::warn!(parent: &span, error = %message, "the database refused a value; isolating the records");
                    result = match self.isolate(conn, load).instrument(span.clone()).await {
                        Ok(guilty) if !guilty.is_empty() => Err(SinkError::Rejected(guilty)),
                        Ok(_) => Err(SinkError::Permanent(format!(
                            "{message} (not reproducible record by record)"
                        ))),
                        Err(e) => Err(e),
                    };
                }
                result
            })
            .await;
        Self::settle(&mut guard, result)
    }

    fn warnings(&self) -> Vec<String> {
        self.plaintext_warning().into_iter().collect()
    }

    async fn check_bulk_load(&self) -> Result<Option<String>, SinkError> {
        self.bounded("copy check", self.probe_copy()).await
    }

    fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| format!("{h:?}"))
            .unwrap_or_default();
        let db = self.config.get_dbname().unwrap_or("");
        let kind = if self.redshift {
            "Redshift"
        } else {
            "PostgreSQL"
        };
        format!("{kind} database {db} on {host}, schema {}", self.schema)
    }
}

#[cfg(test)]
mod tests;
