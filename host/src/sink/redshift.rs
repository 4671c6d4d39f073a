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
    Commit, DeadLetterRow, KeyEquality, Lease, LedgerRow, Load, READ_CHUNK, RowFilter, SchemaPlan,
    Sink, SinkError, StoredRow, clean_text, dedupe, lineage_ddl, payload_preview, quote,
    rows_by_table,
};
use crate::aws::AwsConfig;
use crate::config::{IamConfig, MergeMode, StageFillConfig};
use crate::rules::validate::{CheckedRow, RecordOutcome};
use crate::schema::{
    Cell, ColumnType, LINEAGE_COLUMNS, LINEAGE_TYPES, TableSpec, format_timestamp_us,
};

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
    /// Full-size stage INSERTs prepared in this session, by stage: parsed and planned once, not per chunk.
    prepared: Statements,
}

type Statements = HashMap<String, tokio_postgres::Statement>;

fn classify(e: tokio_postgres::Error) -> SinkError {
    let message = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => {
            // The causes carry the useful part (a refused certificate, a reset connection).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    };
    match class_of(&e) {
        ErrorClass::Transient => SinkError::Transient(message),
        ErrorClass::Data => SinkError::Data(message),
        ErrorClass::Tls => SinkError::Permanent(format!(
            "{message} (check the host name in sink.url and sink.tls_ca_file)"
        )),
        ErrorClass::Permanent => SinkError::Permanent(message),
    }
}

/// What an error from the database or the client means for a retry, decided by SQLSTATE and error kind only
/// (never by words in a message a user's value could contain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    /// Connection loss, a server going away, a serialization failure or deadlock: retry.
    Transient,
    /// Class 22 (data exception) or 23 (integrity): a value the database refuses; isolated and dead-lettered.
    Data,
    /// The server's certificate was refused: fix the configuration.
    Tls,
    /// Anything else.
    Permanent,
}

fn class_of(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Redshift reports a serializable isolation violation as XX000 with its own error number first.
        let redshift_1023 = code == "XX000" && db.message().trim_start().starts_with("1023");
        return match code {
            "40001" | "40P01" => ErrorClass::Transient,
            c if c.starts_with("08") => ErrorClass::Transient,
            "57P01" | "57P02" | "57P03" | "53300" => ErrorClass::Transient,
            _ if redshift_1023 => ErrorClass::Transient,
            c if c.starts_with("22") || c.starts_with("23") => ErrorClass::Data,
            _ => ErrorClass::Permanent,
        };
    }
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    // The error's causes, by type: I/O (a reset, refused or timed-out connection) is worth retrying; a TLS
    // certificate error is not.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            let tls = io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
            return if tls {
                ErrorClass::Tls
            } else {
                ErrorClass::Transient
            };
        }
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return ErrorClass::Tls;
        }
        source = cause.source();
    }
    ErrorClass::Permanent
}

/// Like [`classify`], for statements whose integrity errors can only come from another worker writing the
/// same rows at the same moment (the merge of a deduplicated stage, weir's own ledger and dead letters): a
/// unique violation there is a conflict to retry, never a value to dead-letter.
fn classify_conflict(e: tokio_postgres::Error) -> SinkError {
    match classify(e) {
        SinkError::Data(m) if m.starts_with("23505") => SinkError::Transient(format!(
            "{m} (a concurrent writer of the same keys; retrying)"
        )),
        other => other,
    }
}

/// `Some(warning)` when a connection without TLS goes to a host other than loopback or a Unix socket (with
/// `sslmode=prefer`, the default, or `disable`): the password and every row would cross the network in clear.
fn plaintext_warning(config: &tokio_postgres::Config) -> Option<String> {
    use tokio_postgres::config::Host;
    let remote: Vec<String> = config
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            Host::Tcp(name) => {
                let loopback = name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                (!loopback).then(|| name.clone())
            }
            Host::Unix(_) => None,
        })
        .collect();
    (!remote.is_empty()).then(|| {
        format!(
            "sink.url: connections to {} run WITHOUT TLS (sslmode is not `require`): add `?sslmode=require` to \
             the URL (and sink.tls_ca_file for a private CA)",
            remote.join(", ")
        )
    })
}

/// The SQL type of a declared column.
pub fn sql_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::Varchar(n) => format!("VARCHAR({n})"),
        ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        ColumnType::Double => "DOUBLE PRECISION".into(),
        ColumnType::SmallInt => "SMALLINT".into(),
        ColumnType::Integer => "INTEGER".into(),
        ColumnType::BigInt => "BIGINT".into(),
        ColumnType::Real => "REAL".into(),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Timestamp => "TIMESTAMP".into(),
        ColumnType::TimestampTz => "TIMESTAMPTZ".into(),
        ColumnType::Super => "SUPER".into(),
    }
}

/// Every statement weir sends passes through here: `WEIR_LOG=weir::sql=trace` logs each one.
fn traced<T: AsRef<str>>(statement: T) -> T {
    tracing::trace!(target: "weir::sql", sql = statement.as_ref());
    statement
}

/// A bound value and its wire type.
enum Bind {
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
}

impl Bind {
    fn param(&self) -> (&(dyn ToSql + Sync), Type) {
        match self {
            Bind::Text(v) => (v, Type::VARCHAR),
            Bind::Int(v) => (v, Type::INT8),
            Bind::Float(v) => (v, Type::FLOAT8),
            Bind::Bool(v) => (v, Type::BOOL),
        }
    }

    fn size(&self) -> usize {
        match self {
            Bind::Text(Some(s)) => s.len() + 4,
            _ => 12,
        }
    }
}

/// The placeholder for a value of `ty` at `$n`, with the cast that makes the statement portable.
fn placeholder(ty: ColumnType, n: usize) -> String {
    match ty {
        ColumnType::Super => format!("JSON_PARSE(${n})"),
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt | ColumnType::Boolean => {
            format!("${n}")
        }
        ColumnType::Real | ColumnType::Double => format!("${n}"),
        other => format!("CAST(${n} AS {})", sql_type(other)),
    }
}

fn bind(ty: ColumnType, cell: &Cell) -> Bind {
    match (ty, cell) {
        (ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt, Cell::Int(i)) => {
            Bind::Int(Some(*i))
        }
        (ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt, _) => Bind::Int(None),
        (ColumnType::Real | ColumnType::Double, Cell::Float(x)) => Bind::Float(Some(*x)),
        (ColumnType::Real | ColumnType::Double, _) => Bind::Float(None),
        (ColumnType::Boolean, Cell::Bool(b)) => Bind::Bool(Some(*b)),
        (ColumnType::Boolean, _) => Bind::Bool(None),
        (_, Cell::TimestampUs(us)) => Bind::Text(Some(sql_timestamp(*us))),
        (_, other) => Bind::Text(other.to_text()),
    }
}

/// `2026-11-21 10:15:30.000000+00`: a literal both databases cast to `TIMESTAMP` and `TIMESTAMPTZ` alike.
fn sql_timestamp(us: i64) -> String {
    let iso = format_timestamp_us(us);
    format!("{}+00", iso.replace('T', " ").trim_end_matches('Z'))
}

/// SQL for one declared table.
struct TableSql {
    target: String,
    stage: String,
    /// Declared columns then lineage columns, quoted.
    columns: Vec<String>,
    types: Vec<ColumnType>,
    key: Vec<usize>,
    /// The version column, if the table has one.
    version: Option<usize>,
    /// How the database compares key values.
    equality: KeyEquality,
}

impl TableSql {
    fn new(schema: &str, spec: &TableSpec) -> Self {
        let mut columns: Vec<String> = spec.columns.iter().map(|(c, _)| quote(c)).collect();
        columns.extend(LINEAGE_COLUMNS.iter().map(|c| c.to_string()));
        let mut types: Vec<ColumnType> = spec.columns.iter().map(|(_, t)| *t).collect();
        types.extend(LINEAGE_TYPES);
        TableSql {
            target: format!("{}.{}", quote(schema), quote(&spec.name)),
            stage: quote(&format!("weir_stage_{}", spec.name)),
            columns,
            types,
            key: spec
                .primary_key
                .iter()
                .map(|k| spec.column_index(k).expect("declared"))
                .collect(),
            version: spec
                .version_column
                .as_deref()
                .and_then(|v| spec.column_index(v)),
            equality: KeyEquality::Standard,
        }
    }

    /// The same for a sink whose key equality is `equality`.
    fn comparing(mut self, equality: KeyEquality) -> Self {
        self.equality = equality;
        self
    }

    fn create_stage(&self) -> String {
        format!("CREATE TEMP TABLE {} (LIKE {})", self.stage, self.target)
    }

    fn insert_stage(&self, rows: usize) -> String {
        let width = self.columns.len();
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let cells: Vec<String> = self
                    .types
                    .iter()
                    .enumerate()
                    .map(|(c, ty)| placeholder(*ty, r * width + c + 1))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.stage,
            self.columns.join(", "),
            values.join(", ")
        )
    }

    /// `target.k = stage.k AND …` over the primary key.
    fn key_match(&self) -> String {
        let on: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                format!(
                    "{t}.{c} = {s}.{c}",
                    t = self.target,
                    s = self.stage,
                    c = self.columns[*k]
                )
            })
            .collect();
        on.join(" AND ")
    }

    /// `MERGE INTO target USING stage …`: one statement instead of delete + insert (PostgreSQL ≥ 15 and
    /// Redshift; the stage is a table and deduplicated, as Redshift requires).
    fn merge_statement(&self) -> String {
        let on = self.key_match();
        let set: Vec<String> = (0..self.columns.len())
            .filter(|i| !self.key.contains(i))
            .map(|i| format!("{c} = {s}.{c}", c = self.columns[i], s = self.stage))
            .collect();
        let values: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}.{c}", self.stage))
            .collect();
        format!(
            "MERGE INTO {t} USING {s} ON {on} WHEN MATCHED THEN UPDATE SET {set} \
             WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})",
            t = self.target,
            s = self.stage,
            on = on,
            set = set.join(", "),
            cols = self.columns.join(", "),
            values = values.join(", ")
        )
    }

    fn merge(&self) -> [String; 2] {
        let on = self.key_match();
        let cols = self.columns.join(", ");
        let Some(v) = self.version else {
            return [
                format!(
                    "DELETE FROM {} USING {} WHERE {on}",
                    self.target, self.stage
                ),
                format!(
                    "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
                    self.target, self.stage
                ),
            ];
        };
        // Version-guarded: a stored row goes only for a version at least as high (a NULL stored version always
        // goes, a NULL staged one never replaces a value); staged rows are inserted only where no row remains.
        let (t, s, c) = (&self.target, &self.stage, &self.columns[v]);
        [
            format!(
                "DELETE FROM {t} USING {s} WHERE {on} AND ({s}.{c} >= {t}.{c} OR {t}.{c} IS NULL)"
            ),
            format!(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {on})"
            ),
        ]
    }
}

/// The Redshift-only fast path for the stage fill: `COPY` from gzip JSON-lines files in S3 listed by a
/// manifest, then the same merge. Needs real Redshift (PostgreSQL has no `COPY … FROM 's3://…'`); the files
/// hold one [`stage_json_line`] per row.
pub fn copy_stage_sql(
    stage: &str,
    columns: &[String],
    manifest_url: &str,
    iam_role: &str,
    region: &str,
) -> String {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "COPY {stage} ({}) FROM {} IAM_ROLE {} FORMAT AS JSON 'auto' GZIP MANIFEST TIMEFORMAT 'auto' REGION {}",
        columns.join(", "),
        literal(manifest_url),
        literal(iam_role),
        literal(region)
    )
}

/// One stage row as a JSON object for `COPY … FORMAT AS JSON 'auto'`: keys are the column names, `SUPER`
/// values nested JSON — the validated JSON text itself, byte for byte, as the INSERT path binds it (parsing
/// and printing it again would turn big integers into floats and lone surrogates into NULL) — decimals and
/// timestamps strings Redshift parses.
pub fn stage_json_line(
    spec: &TableSpec,
    cells: &[Cell],
    lineage: [&str; 3],
    loaded_at: &str,
) -> String {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let mut fields: Vec<String> = Vec::with_capacity(cells.len() + LINEAGE_COLUMNS.len());
    for ((name, _), cell) in spec.columns.iter().zip(cells) {
        let value = match cell {
            Cell::Null => "null".to_string(),
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(x) => serde_json::Number::from_f64(*x)
                .map_or_else(|| "null".to_string(), |n| n.to_string()),
            Cell::Json(j) => minify_json(j),
            Cell::TimestampUs(us) => text(&sql_timestamp(*us)),
            Cell::Decimal(t) | Cell::Text(t) => text(t),
        };
        fields.push(format!("{}:{value}", text(name)));
    }
    for (name, value) in LINEAGE_COLUMNS
        .iter()
        .zip([lineage[0], lineage[1], lineage[2], loaded_at])
    {
        fields.push(format!("{}:{}", text(name), text(value)));
    }
    format!("{{{}}}", fields.join(","))
}

/// Valid JSON text without the whitespace between its tokens (one line of a JSON-lines file), every token
/// as it was: numbers, escapes and strings are not re-encoded.
pub fn minify_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// DDL of weir's own tables.
pub fn weir_tables_ddl(schema: &str) -> Vec<String> {
    let s = quote(schema);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_checkpoints (source VARCHAR(256) NOT NULL, \"partition\" VARCHAR(256) NOT NULL, \
             position VARCHAR(256) NOT NULL, owner VARCHAR(256), lease_expires_at TIMESTAMPTZ, \
             updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (source, \"partition\"))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_batches (batch_id VARCHAR(1024) NOT NULL, source VARCHAR(256) NOT NULL, \
             \"partition\" VARCHAR(256) NOT NULL, first_position VARCHAR(256) NOT NULL, last_position VARCHAR(256) NOT NULL, \
             raw_ref VARCHAR(1024) NOT NULL, rule_digest VARCHAR(64) NOT NULL, records_in INTEGER NOT NULL, \
             emitted INTEGER NOT NULL, dropped INTEGER NOT NULL, rejected INTEGER NOT NULL, rows_out INTEGER NOT NULL, \
             drop_reasons VARCHAR(65535) NOT NULL, loaded_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (batch_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_dead_letters (record_id VARCHAR(1024) NOT NULL, batch_id VARCHAR(1024) NOT NULL, \
             raw_ref VARCHAR(1024) NOT NULL, stage VARCHAR(32) NOT NULL, reason VARCHAR(65535) NOT NULL, \
             payload_preview VARCHAR(1024) NOT NULL, at TIMESTAMPTZ NOT NULL, PRIMARY KEY (record_id))"
        ),
    ]
}

/// DDL of a declared table, with lineage columns; `DISTKEY`/`SORTKEY` options only for Redshift.
pub fn table_ddl(schema: &str, spec: &TableSpec, redshift: bool) -> String {
    let mut cols: Vec<String> = spec
        .columns
        .iter()
        .map(|(c, ty)| {
            let not_null = if spec.is_key(c) { " NOT NULL" } else { "" };
            let encode = match spec.encode.iter().find(|(name, _)| name == c) {
                Some((_, e)) if redshift => format!(" ENCODE {e}"),
                _ => String::new(),
            };
            format!("{} {}{not_null}{encode}", quote(c), sql_type(*ty))
        })
        .collect();
    cols.extend(lineage_ddl(sql_type));
    let key: Vec<String> = spec.primary_key.iter().map(|k| quote(k)).collect();
    let mut options = String::new();
    if redshift {
        if let Some(d) = &spec.distkey {
            options.push_str(&format!(" DISTSTYLE KEY DISTKEY ({})", quote(d)));
        }
        if !spec.sortkey.is_empty() {
            let cols: Vec<String> = spec.sortkey.iter().map(|c| quote(c)).collect();
            options.push_str(&format!(" COMPOUND SORTKEY ({})", cols.join(", ")));
        }
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY ({})){options}",
        quote(schema),
        quote(&spec.name),
        cols.join(", "),
        key.join(", ")
    )
}

/// The `WHERE` condition of a read and its text parameters: an `IN` list of lineage ids, or primary keys
/// (`(k1 = CAST($1 AS …) AND k2 = …) OR …`).
fn read_condition(spec: &TableSpec, filter: &RowFilter) -> (String, Vec<(String, Type)>) {
    match filter {
        RowFilter::BatchIds(ids) | RowFilter::RecordIds(ids) => {
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let column = filter.column().expect("an id filter");
            (
                format!("{} IN ({})", quote(column), marks.join(", ")),
                ids.iter().map(|v| (v.clone(), Type::VARCHAR)).collect(),
            )
        }
        RowFilter::Keys(keys) => {
            let mut params = Vec::new();
            let mut ors = Vec::new();
            for key in keys {
                let mut ands = Vec::new();
                for (column, value) in spec.primary_key.iter().zip(key) {
                    let ty = spec
                        .columns
                        .iter()
                        .find(|(c, _)| c == column)
                        .map(|(_, t)| *t)
                        .expect("key columns are declared");
                    params.push((value.clone(), Type::VARCHAR));
                    ands.push(format!(
                        "{} = CAST(${} AS {})",
                        quote(column),
                        params.len(),
                        sql_type(ty)
                    ));
                }
                ors.push(format!("({})", ands.join(" AND ")));
            }
            if ors.is_empty() {
                ors.push("1 = 0".into());
            }
            (ors.join(" OR "), params)
        }
    }
}

impl RedshiftSink {
    /// Runs one read query with text parameters on the session.
    async fn read(
        &self,
        sql: String,
        params: Vec<(String, Type)>,
    ) -> Result<Vec<tokio_postgres::Row>, SinkError> {
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
                let refs: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = params
                    .iter()
                    .map(|(v, t)| (v as &(dyn tokio_postgres::types::ToSql + Sync), t.clone()))
                    .collect();
                conn.client
                    .query_typed(traced(&sql), &refs)
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result)
    }

    /// A sink for `url` (`postgres://user:password@host:port/database[?sslmode=…]`); connects lazily.
    ///
    /// TLS (rustls, certificate and hostname verified against the public web roots plus
    /// `options.tls_ca_file`, a PEM bundle) is used with `sslmode=require`, and by default for Redshift;
    /// `sslmode=disable` turns it off. For PostgreSQL without `sslmode`, connections are plain.
    pub fn new(url: &str, options: RedshiftOptions) -> Result<Self, SinkError> {
        use tokio_postgres::config::SslMode;
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            SinkError::Permanent(format!("sink.url is not a valid connection URL: {e}"))
        })?;
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => false,
            SslMode::Require => true,
            _ => options.redshift,
        };
        // A dead peer is noticed by TCP itself too, not only by the call timeouts.
        config
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(
                options
                    .call_timeout
                    .min(std::time::Duration::from_secs(120)),
            );
        let tls = if tls {
            config.ssl_mode(SslMode::Require);
            Some(tls_connector(options.tls_ca_file.as_deref())?)
        } else {
            None
        };
        if tls.is_none()
            && let Some(warning) = plaintext_warning(&config)
        {
            tracing::warn!("{warning}");
        }
        Ok(RedshiftSink {
            config,
            tls,
            schema: options.schema,
            redshift: options.redshift,
            pool: (0..options.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            tables: std::sync::OnceLock::new(),
            iam: options.iam,
            stage_fill: options.stage_fill,
            aws: options.aws,
            merge: options.merge,
            sdk: tokio::sync::OnceCell::new(),
            connect_timeout: options.connect_timeout,
            call_timeout: options.call_timeout,
            in_doubt: super::InDoubt::default(),
        })
    }

    /// How this sink's database compares key values.
    fn key_equality(&self) -> KeyEquality {
        if self.redshift {
            KeyEquality::Redshift
        } else {
            KeyEquality::Standard
        }
    }

    /// A warning when the sink's sessions run without TLS to a host that is not this machine.
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.tls.is_some() {
            return None;
        }
        plaintext_warning(&self.config)
    }

    async fn sdk(&self) -> &aws_config::SdkConfig {
        self.sdk.get_or_init(|| self.aws.load()).await
    }

    /// Temporary database credentials from IAM (`GetClusterCredentials` or Serverless `GetCredentials`).
    async fn iam_credentials(&self, iam: &IamConfig) -> Result<(String, String), SinkError> {
        let db = self.config.get_dbname().unwrap_or("dev").to_string();
        let duration = iam.duration_secs as i32;
        let sdk = self.sdk().await;
        let (user, password) = if let Some(cluster) = &iam.cluster_id {
            let user = iam
                .db_user
                .clone()
                .or_else(|| self.config.get_user().map(str::to_string))
                .ok_or_else(|| {
                    SinkError::Permanent("sink.iam: set `db_user` or a user in sink.url".into())
                })?;
            let out = aws_sdk_redshift::Client::new(sdk)
                .get_cluster_credentials()
                .cluster_identifier(cluster)
                .db_user(user)
                .db_name(db)
                .duration_seconds(duration)
                .auto_create(iam.auto_create)
                .send()
                .await
                .map_err(|e| aws_error("GetClusterCredentials", e))?;
            (
                out.db_user().map(str::to_string),
                out.db_password().map(str::to_string),
            )
        } else {
            let workgroup = iam.workgroup.as_deref().expect("checked by config");
            let out = aws_sdk_redshiftserverless::Client::new(sdk)
                .get_credentials()
                .workgroup_name(workgroup)
                .db_name(db)
                .duration_seconds(duration)
                .send()
                .await
                .map_err(|e| aws_error("GetCredentials", e))?;
            (
                out.db_user().map(str::to_string),
                out.db_password().map(str::to_string),
            )
        };
        match (user, password) {
            (Some(u), Some(p)) => Ok((u, p)),
            _ => Err(SinkError::Permanent(
                "IAM returned no database user or password".into(),
            )),
        }
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        // With IAM, fresh temporary credentials for every new connection.
        let mut config = self.config.clone();
        if let Some(iam) = &self.iam {
            let (user, password) = self.iam_credentials(iam).await?;
            config.user(&user).password(password);
        }
        let closed =
            |e: tokio_postgres::Error| tracing::warn!(error = %e, "database connection closed");
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await.map_err(classify)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                client
            }
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(classify)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                client
            }
        };
        Ok(Conn {
            client,
            staged: HashSet::new(),
            prepared: HashMap::new(),
        })
    }

    /// The session, connected when needed.
    async fn session(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Conn>>, SinkError> {
        // A free session if there is one, else wait for the first.
        let free = self.pool.iter().find_map(|slot| slot.try_lock().ok());
        let mut guard = match free {
            Some(g) => g,
            None => self.pool[0].lock().await,
        };
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            let connected = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .map_err(|_| {
                    SinkError::Transient(format!(
                        "no database connection within {} s (sink.connect_timeout_secs)",
                        self.connect_timeout.as_secs()
                    ))
                })??;
            *guard = Some(connected);
        }
        Ok(guard)
    }

    /// Runs one call on a session under `call_timeout`: past it, the session is dropped (whatever state
    /// it was in) and the call fails as transient, so a black-holed connection is retried on a new one.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => {
                crate::admin::set_sink_reachable(
                    !result.as_ref().is_err_and(SinkError::is_transient),
                );
                result
            }
            Err(_) => {
                crate::admin::set_sink_reachable(false);
                Err(SinkError::Transient(format!(
                    "{what}: no answer from the database within {} s (sink.call_timeout_secs); reconnecting",
                    self.call_timeout.as_secs()
                )))
            }
        }
    }

    /// After a transient error the session is dropped, so the next attempt reconnects.
    fn settle<T>(guard: &mut Option<Conn>, result: Result<T, SinkError>) -> Result<T, SinkError> {
        if result.as_ref().is_err_and(SinkError::is_transient) {
            *guard = None;
        }
        result
    }

    /// `None` when the table does not exist, else the declared columns it lacks. A column of another type
    /// is an error.
    async fn check_table(
        &self,
        client: &Client,
        spec: &TableSpec,
    ) -> Result<Option<Vec<(String, ColumnType)>>, SinkError> {
        let rows = client
            .query_typed(
                traced("SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale, domain_name \
                 FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"),
                &[(&self.schema, Type::VARCHAR), (&spec.name, Type::VARCHAR)],
            )
            .await
            .map_err(classify)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut missing = Vec::new();
        for (column, ty) in &spec.columns {
            let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == *column) else {
                if spec.is_key(column) {
                    return Err(super::key_column_missing(spec, column));
                }
                missing.push((column.clone(), *ty));
                continue;
            };
            let data_type: String = row.get(1);
            let len: Option<i32> = row.get(2);
            let precision: Option<i32> = row.get(3);
            let scale: Option<i32> = row.get(4);
            let domain: Option<String> = row.get(5);
            let ok = match ty {
                ColumnType::Varchar(n) => {
                    data_type == "character varying" && len == Some(*n as i32)
                }
                ColumnType::Decimal {
                    precision: p,
                    scale: s,
                } => {
                    data_type == "numeric"
                        && precision == Some(*p as i32)
                        && scale == Some(*s as i32)
                }
                ColumnType::SmallInt => data_type == "smallint",
                ColumnType::Integer => data_type == "integer",
                ColumnType::BigInt => data_type == "bigint",
                ColumnType::Real => data_type == "real",
                ColumnType::Double => data_type == "double precision",
                ColumnType::Boolean => data_type == "boolean",
                ColumnType::Timestamp => data_type == "timestamp without time zone",
                ColumnType::TimestampTz => data_type == "timestamp with time zone",
                ColumnType::Super => {
                    data_type.eq_ignore_ascii_case("super") || domain.as_deref() == Some("super")
                }
            };
            if !ok {
                let have = match (len, precision, scale) {
                    (Some(l), _, _) => format!("{data_type}({l})"),
                    (_, Some(p), Some(s)) if data_type == "numeric" => format!("numeric({p},{s})"),
                    _ => data_type.clone(),
                };
                return Err(SinkError::Schema(format!(
                    "table {}, column {column}: the database has {have}, the config declares {ty}",
                    spec.name
                )));
            }
        }
        Ok(Some(missing))
    }
}

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
            stage_fill: StageFillConfig::Insert,
            aws: AwsConfig::default(),
            merge: MergeMode::DeleteInsert,
            connect_timeout: std::time::Duration::from_secs(10),
            call_timeout: std::time::Duration::from_secs(300),
        }
    }
}

/// An AWS call's failure: the service said no (permanent), or it could not be reached (transient).
fn aws_error<E, R>(what: &str, e: aws_sdk_redshift::error::SdkError<E, R>) -> SinkError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let service = matches!(e, aws_sdk_redshift::error::SdkError::ServiceError(_));
    let message = format!("{what}: {}", crate::aws::error_message(&e));
    if service {
        SinkError::Permanent(message)
    } else {
        SinkError::Transient(message)
    }
}

/// Writes the COPY stage files of a batch: per table with rows, gzip JSON lines (deduplicated to the latest
/// row per key) and a manifest, under `{prefix}{batch id}/`. Keys depend only on the batch, so a retry rewrites
/// the same objects. Returns each table's manifest URL (`None` for a table without rows).
pub async fn write_copy_stage(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    load: &Load<'_>,
    specs: &[TableSpec],
) -> Result<Vec<Option<String>>, SinkError> {
    use std::io::Write;
    let loaded_at = sql_timestamp(load.loaded_at_us);
    let folder: String = load
        .batch
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut manifests = Vec::with_capacity(specs.len());
    for (t, rows) in rows_by_table(load, specs.len(), None)
        .into_iter()
        .enumerate()
    {
        if rows.is_empty() {
            manifests.push(None);
            continue;
        }
        let sql = TableSql::new("s", &specs[t]);
        let mut text = String::new();
        for (row, record_id) in dedupe(rows, &sql.key, sql.version, KeyEquality::Redshift) {
            let line = stage_json_line(
                &specs[t],
                &row.cells,
                [record_id, &load.batch.id, load.rule_digest],
                &loaded_at,
            );
            text.push_str(&line);
            text.push('\n');
        }
        // One write: the compressor resets a buffer per write call.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).expect("writing to memory");
        let data = gz.finish().expect("writing to memory");
        let data_key = format!("{prefix}{folder}/{}.jsonl.gz", specs[t].name);
        let manifest_key = format!("{prefix}{folder}/{}.manifest", specs[t].name);
        let manifest = serde_json::json!({"entries": [{"url": format!("s3://{bucket}/{data_key}"), "mandatory": true}]});
        for (key, body) in [
            (&data_key, data),
            (&manifest_key, manifest.to_string().into_bytes()),
        ] {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .map_err(|e| aws_error("S3 PutObject", e))?;
        }
        manifests.push(Some(format!("s3://{bucket}/{manifest_key}")));
    }
    Ok(manifests)
}

/// A rustls connector trusting the public web roots (Redshift's certificates chain to them) and the
/// certificates of `ca_file`.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, SinkError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad =
            |e: String| SinkError::Permanent(format!("sink.tls_ca_file {}: {e}", path.display()));
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| SinkError::Permanent(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
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

    async fn checkpoint(&self, source: &str, partition: &str) -> Result<String, SinkError> {
        let now = sql_timestamp(crate::record::wall_clock_us());
        let table = format!("{}.weir_checkpoints", quote(&self.schema));
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
            let params: [(&(dyn ToSql + Sync), Type); 3] =
                [(&source, Type::VARCHAR), (&partition, Type::VARCHAR), (&now, Type::VARCHAR)];
            conn.client
                .query_typed(
                    traced(&format!(
                        "INSERT INTO {table} (source, \"partition\", position, updated_at) \
                         SELECT $1, $2, '', CAST($3 AS TIMESTAMPTZ) \
                         WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE source = $1 AND \"partition\" = $2)"
                    )),
                    &params,
                )
                .await
                .map_err(classify)?;
            let rows = conn
                .client
                .query_typed(
                    traced(&format!("SELECT position FROM {table} WHERE source = $1 AND \"partition\" = $2")),
                    &params[..2],
                )
                .await
                .map_err(classify)?;
            Ok(rows.first().map(|r| r.get::<_, String>(0)).unwrap_or_default())
            })
            .await;
        Self::settle(&mut guard, result)
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

    async fn ledger(&self) -> Result<Vec<LedgerRow>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT batch_id, source, \"partition\", raw_ref, rule_digest, drop_reasons \
                     FROM {s}.weir_batches ORDER BY loaded_at, batch_id"
                ),
                Vec::new(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| LedgerRow {
                batch_id: r.get(0),
                source: r.get(1),
                partition: r.get(2),
                raw_ref: r.get(3),
                rule_digest: r.get(4),
                drop_reasons: r.get(5),
            })
            .collect())
    }

    async fn stored_rows(
        &self,
        spec: &TableSpec,
        filter: &RowFilter,
    ) -> Result<Vec<StoredRow>, SinkError> {
        // Every column read back as text; SUPER through JSON_SERIALIZE.
        let columns: Vec<String> = spec
            .columns
            .iter()
            .map(|(c, ty)| match ty {
                ColumnType::Super => format!("JSON_SERIALIZE({})", quote(c)),
                _ => format!("CAST({} AS VARCHAR(65535))", quote(c)),
            })
            .collect();
        let select = format!(
            "SELECT {}, \"_weir_record_id\", \"_weir_batch_id\" FROM {}.{}",
            columns.join(", "),
            quote(&self.schema),
            quote(&spec.name)
        );
        let n = spec.columns.len();
        let mut out = Vec::new();
        for chunk in filter.chunks(READ_CHUNK) {
            let (condition, params) = read_condition(spec, &chunk);
            for r in self
                .read(format!("{select} WHERE {condition}"), params)
                .await?
            {
                out.push(StoredRow {
                    cells: (0..n).map(|i| r.get::<_, Option<String>>(i)).collect(),
                    record_id: r.get(n),
                    batch_id: r.get(n + 1),
                });
            }
        }
        Ok(out)
    }

    async fn dead_letters(&self, filter: &RowFilter) -> Result<Vec<DeadLetterRow>, SinkError> {
        let column = match filter {
            RowFilter::BatchIds(_) => "batch_id",
            RowFilter::RecordIds(_) => "record_id",
            RowFilter::Keys(_) => return Ok(Vec::new()),
        };
        let s = quote(&self.schema);
        let mut out = Vec::new();
        for chunk in filter.chunks(READ_CHUNK) {
            let ids = match &chunk {
                RowFilter::BatchIds(v) | RowFilter::RecordIds(v) => v.clone(),
                RowFilter::Keys(_) => Vec::new(),
            };
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let params = ids.into_iter().map(|v| (v, Type::VARCHAR)).collect();
            let sql = format!(
                "SELECT record_id, batch_id, stage, reason FROM {s}.weir_dead_letters WHERE {column} IN ({})",
                marks.join(", ")
            );
            for r in self.read(sql, params).await? {
                out.push(DeadLetterRow {
                    record_id: r.get(0),
                    batch_id: r.get(1),
                    stage: r.get(2),
                    reason: r.get(3),
                });
            }
        }
        Ok(out)
    }

    async fn rows_without_batch(&self, spec: &TableSpec) -> Result<usize, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT COUNT(*) FROM {s}.{} WHERE \"_weir_batch_id\" NOT IN (SELECT batch_id FROM {s}.weir_batches)",
                    quote(&spec.name)
                ),
                Vec::new(),
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as usize)
    }

    async fn leases(&self, source: &str, now_us: i64) -> Result<Vec<Lease>, SinkError> {
        let now = sql_timestamp(now_us);
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
            let rows = conn
                .client
                .query_typed(
                    traced(&format!(
                        "SELECT \"partition\", position, COALESCE(owner, ''), \
                         CASE WHEN lease_expires_at IS NULL OR lease_expires_at < CAST($2 AS TIMESTAMPTZ) THEN 1 ELSE 0 END \
                         FROM {s}.weir_checkpoints WHERE source = $1"
                    )),
                    &[(&source, Type::VARCHAR), (&now, Type::VARCHAR)],
                )
                .await
                .map_err(classify)?;
            Ok(rows
                .iter()
                .map(|r| Lease {
                    partition: r.get(0),
                    position: r.get(1),
                    owner: r.get(2),
                    expired: r.get::<_, i32>(3) == 1,
                })
                .collect())
            })
            .await;
        Self::settle(&mut guard, result)
    }

    async fn claim(
        &self,
        source: &str,
        partition: &str,
        owner: &str,
        now_us: i64,
        expires_us: i64,
        steal_from: Option<&str>,
    ) -> Result<bool, SinkError> {
        self.checkpoint(source, partition).await?;
        let (now, expires) = (sql_timestamp(now_us), sql_timestamp(expires_us));
        let victim = steal_from.unwrap_or(owner);
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("lease update", async {
                conn.client
                    .execute_typed(
                traced(&format!(
                    "UPDATE {s}.weir_checkpoints SET owner = $1, lease_expires_at = CAST($2 AS TIMESTAMPTZ), \
                     updated_at = CAST($3 AS TIMESTAMPTZ) WHERE source = $4 AND \"partition\" = $5 AND \
                     (owner IS NULL OR owner = '' OR owner = $1 OR owner = $6 OR lease_expires_at IS NULL \
                     OR lease_expires_at < CAST($3 AS TIMESTAMPTZ))"
                )),
                &[
                    (&owner, Type::VARCHAR),
                    (&expires, Type::VARCHAR),
                    (&now, Type::VARCHAR),
                    (&source, Type::VARCHAR),
                    (&partition, Type::VARCHAR),
                    (&victim, Type::VARCHAR),
                ],
            )
                    .await
                    .map_err(classify)
            })
            .await;
        match Self::settle(&mut guard, result) {
            Ok(n) => Ok(n == 1),
            // Two workers claiming at once on Redshift: one is refused (serializable); it is not the owner.
            Err(SinkError::Transient(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("lease update", async {
                conn.client
                    .execute_typed(
                        traced(&format!(
                            "UPDATE {s}.weir_checkpoints SET owner = '', lease_expires_at = NULL \
                     WHERE source = $1 AND \"partition\" = $2 AND owner = $3"
                        )),
                        &[
                            (&source, Type::VARCHAR),
                            (&partition, Type::VARCHAR),
                            (&owner, Type::VARCHAR),
                        ],
                    )
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result).map(|_| ())
    }

    async fn set_checkpoint(
        &self,
        source: &str,
        partition: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, SinkError> {
        let now = sql_timestamp(crate::record::wall_clock_us());
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("lease update", async {
                conn.client
                    .execute_typed(
                traced(&format!(
                    "UPDATE {s}.weir_checkpoints SET position = $1, updated_at = CAST($2 AS TIMESTAMPTZ) \
                     WHERE source = $3 AND \"partition\" = $4 AND position = $5"
                )),
                &[
                    (&new, Type::VARCHAR),
                    (&now, Type::VARCHAR),
                    (&source, Type::VARCHAR),
                    (&partition, Type::VARCHAR),
                    (&expected, Type::VARCHAR),
                ],
            )
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result).map(|n| n == 1)
    }

    fn warnings(&self) -> Vec<String> {
        self.plaintext_warning().into_iter().collect()
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

impl RedshiftSink {
    async fn commit_batch(&self, conn: &mut Conn, load: &Load<'_>) -> Result<Commit, SinkError> {
        let batch = load.batch;
        let specs = self
            .tables
            .get()
            .ok_or_else(|| SinkError::Permanent("commit before prepare".into()))?;
        let sqls: Vec<TableSql> = specs
            .iter()
            .map(|s| TableSql::new(&self.schema, s).comparing(self.key_equality()))
            .collect();
        for sql in &sqls {
            if !conn.staged.contains(&sql.stage) {
                conn.client
                    .batch_execute(traced(&sql.create_stage()))
                    .await
                    .map_err(classify)?;
                conn.staged.insert(sql.stage.clone());
            }
        }
        let loaded_at = sql_timestamp(load.loaded_at_us);
        let s = quote(&self.schema);
        // The COPY fast path writes its stage files before the transaction starts.
        let copy = match &self.stage_fill {
            StageFillConfig::Insert => None,
            StageFillConfig::Copy {
                bucket,
                prefix,
                iam_role,
                region,
            } => {
                let s3 = self.aws.s3_from(self.sdk().await);
                let manifests = write_copy_stage(&s3, bucket, prefix, load, specs).await?;
                let region = region
                    .clone()
                    .or_else(|| self.aws.region.clone())
                    .unwrap_or_else(|| "us-east-1".into());
                Some((manifests, iam_role.clone(), region))
            }
        };
        let tx = conn.client.transaction().await.map_err(classify)?;
        if self.redshift {
            // Every commit writes the ledger, so Redshift's table-level write locks already make commits take
            // turns there. Taking that lock first, before anything is read, means the transaction's
            // serializable snapshot starts after the previous commit: concurrent workers wait instead of
            // failing with 1023. Only readers of weir's own ledger wait; the final tables are not locked.
            tx.batch_execute(traced(&format!("LOCK TABLE {s}.weir_batches")))
                .await
                .map_err(classify)?;
        }

        if !batch.ordered {
            // Unordered sources have no checkpoint: the ledger row of this very delivery is the guard.
            let seen = tx
                .query_typed(
                    traced(&format!(
                        "SELECT 1 FROM {s}.weir_batches WHERE batch_id = $1"
                    )),
                    &[(&batch.id, Type::VARCHAR)],
                )
                .await
                .map_err(classify)?;
            if !seen.is_empty() {
                tx.rollback().await.map_err(classify)?;
                return Ok(Commit::Committed);
            }
        }
        if batch.ordered {
            let cas = tx
                .prepare_typed(
                    traced(&format!(
                        "UPDATE {s}.weir_checkpoints SET position = $1, updated_at = CAST($2 AS TIMESTAMPTZ) \
                         WHERE source = $3 AND \"partition\" = $4 AND position = $5"
                    )),
                    &[Type::VARCHAR; 5],
                )
                .await
                .map_err(classify)?;
            let moved = tx
                .execute(
                    &cas,
                    &[
                        &batch.last_position(),
                        &loaded_at,
                        &batch.source,
                        &batch.partition,
                        &batch.prev_position,
                    ],
                )
                .await
                .map_err(classify)?;
            if moved != 1 {
                // Either another worker moved the checkpoint, or this very batch committed and the reply to
                // its COMMIT was lost: a COMMIT this sink sent without an answer, and the batch's own ledger
                // row, tell them apart.
                let in_doubt = self.in_doubt.contains(&batch.id);
                let ours = tx
                    .query_typed(
                        traced(&format!(
                            "SELECT 1 FROM {s}.weir_batches WHERE batch_id = $1"
                        )),
                        &[(&batch.id, Type::VARCHAR)],
                    )
                    .await
                    .map_err(classify)?;
                tx.rollback().await.map_err(classify)?;
                self.in_doubt.settled(&batch.id);
                if in_doubt && !ours.is_empty() {
                    tracing::warn!(batch = %batch.id, "the batch had already committed (its COMMIT reply was lost); not loading it again");
                    return Ok(Commit::Committed);
                }
                return Ok(Commit::NotOwner);
            }
        }

        // PostgreSQL: concurrent workers writing the same tables take turns per table, in name order, before
        // merging; readers are not blocked (SHARE ROW EXCLUSIVE conflicts only with writers). Without it a
        // second writer's `DELETE … USING` cannot see the first's uncommitted rows and its INSERT fails on
        // the key. Redshift already takes table-level write locks; its serialization failures are retried.
        let per_table = rows_by_table(load, specs.len(), None);
        if !self.redshift {
            let mut targets: Vec<&str> = per_table
                .iter()
                .enumerate()
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(t, _)| sqls[t].target.as_str())
                .collect();
            targets.sort_unstable();
            if !targets.is_empty() {
                tx.batch_execute(traced(&format!(
                    "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                    targets.join(", ")
                )))
                .await
                .map_err(classify)?;
            }
        }

        for (t, rows) in per_table.into_iter().enumerate() {
            if rows.is_empty() {
                continue; // nothing to merge: the table is not written, so not locked
            }
            let sql = &sqls[t];
            match &copy {
                None => fill_stage(&tx, &mut conn.prepared, sql, rows, load, &loaded_at).await?,
                Some((manifests, role, region)) => {
                    tx.batch_execute(traced(&format!("DELETE FROM {}", sql.stage)))
                        .await
                        .map_err(classify)?;
                    if let Some(manifest) = &manifests[t] {
                        let statement =
                            copy_stage_sql(&sql.stage, &sql.columns, manifest, role, region);
                        tx.batch_execute(traced(&statement))
                            .await
                            .map_err(classify)?;
                    }
                }
            }
            // PostgreSQL plans the merge join from the stage's statistics: without them it assumes a large
            // stage and scans the whole target for every batch. (Redshift has no indexes to choose.)
            if !self.redshift {
                tx.batch_execute(traced(&format!("ANALYZE {}", sql.stage)))
                    .await
                    .map_err(classify)?;
            }
            // Redshift's MERGE takes no extra conditions: a versioned table always merges by delete + insert.
            let statements = match self.merge {
                MergeMode::Merge if sql.version.is_none() => vec![sql.merge_statement()],
                _ => sql.merge().to_vec(),
            };
            for statement in statements {
                tx.batch_execute(traced(&statement))
                    .await
                    .map_err(classify_conflict)?;
            }
        }

        for ((record, outcome), raw_ref) in
            batch.records.iter().zip(load.outcomes).zip(load.raw_refs)
        {
            if let RecordOutcome::Reject(stage, reason) = outcome {
                let preview = payload_preview(&record.payload);
                let reason = clean_text(reason, 65_535);
                tx.query_typed(
                    traced(&format!(
                        "DELETE FROM {s}.weir_dead_letters WHERE record_id = $1"
                    )),
                    &[(&record.id, Type::VARCHAR)],
                )
                .await
                .map_err(classify_conflict)?;
                tx.query_typed(
                    traced(&format!(
                        "INSERT INTO {s}.weir_dead_letters (record_id, batch_id, raw_ref, stage, reason, payload_preview, at) \
                         VALUES ($1, $2, $3, $4, $5, $6, CAST($7 AS TIMESTAMPTZ))"
                    )),
                    &[
                        (&record.id, Type::VARCHAR),
                        (&batch.id, Type::VARCHAR),
                        (raw_ref, Type::VARCHAR),
                        (&stage.as_str(), Type::VARCHAR),
                        (&reason, Type::VARCHAR),
                        (&preview, Type::VARCHAR),
                        (&loaded_at, Type::VARCHAR),
                    ],
                )
                .await
                .map_err(classify_conflict)?;
            }
        }

        let c = load.counts();
        let drop_reasons = c.drop_reasons_json();
        let n = |v: usize| v as i64;
        tx.query_typed(
            traced(&format!(
                "INSERT INTO {s}.weir_batches (batch_id, source, \"partition\", first_position, last_position, raw_ref, \
                 rule_digest, records_in, emitted, dropped, rejected, rows_out, drop_reasons, loaded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, CAST($14 AS TIMESTAMPTZ))"
            )),
            &[
                (&batch.id, Type::VARCHAR),
                (&batch.source, Type::VARCHAR),
                (&batch.partition, Type::VARCHAR),
                (&batch.first_position(), Type::VARCHAR),
                (&batch.last_position(), Type::VARCHAR),
                (&load.raw_object(), Type::VARCHAR),
                (&load.rule_digest, Type::VARCHAR),
                (&n(c.records_in), Type::INT8),
                (&n(c.emitted), Type::INT8),
                (&n(c.dropped), Type::INT8),
                (&n(c.rejected), Type::INT8),
                (&n(c.rows_out), Type::INT8),
                (&drop_reasons, Type::VARCHAR),
                (&loaded_at, Type::VARCHAR),
            ],
        )
        .await
        .map_err(classify_conflict)?;

        // Until COMMIT is answered, nobody knows whether it took effect (a lost reply, a timeout).
        self.in_doubt.sending(&batch.id);
        tx.commit().await.map_err(classify)?;
        self.in_doubt.settled(&batch.id);
        Ok(Commit::Committed)
    }
}

/// Empties the session's stage of one table and fills it with `rows` (deduplicated by key) in chunks.
async fn fill_stage(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &mut Statements,
    sql: &TableSql,
    rows: Vec<(&CheckedRow, &str)>,
    load: &Load<'_>,
    loaded_at: &str,
) -> Result<(), SinkError> {
    tx.batch_execute(traced(&format!("DELETE FROM {}", sql.stage)))
        .await
        .map_err(classify)?;
    if rows.is_empty() {
        return Ok(());
    }
    let rows = dedupe(rows, &sql.key, sql.version, sql.equality);
    let width = sql.columns.len();
    let mut pending: Vec<Bind> = Vec::new();
    let mut pending_rows = 0;
    let mut bytes = 0;
    for (row, record_id) in rows {
        for (cell, ty) in row.cells.iter().zip(&sql.types) {
            pending.push(bind(*ty, cell));
        }
        pending.push(Bind::Text(Some(record_id.to_string())));
        pending.push(Bind::Text(Some(load.batch.id.clone())));
        pending.push(Bind::Text(Some(load.rule_digest.to_string())));
        pending.push(Bind::Text(Some(loaded_at.to_string())));
        bytes += pending[pending.len() - width..]
            .iter()
            .map(Bind::size)
            .sum::<usize>();
        pending_rows += 1;
        if pending.len() + width > MAX_BINDS
            || bytes > MAX_STATEMENT_BYTES
            || pending_rows >= MAX_ROWS_PER_INSERT
        {
            insert_chunk(tx, prepared, sql, &pending, pending_rows).await?;
            pending.clear();
            pending_rows = 0;
            bytes = 0;
        }
    }
    if pending_rows > 0 {
        insert_chunk(tx, prepared, sql, &pending, pending_rows).await?;
    }
    Ok(())
}

impl RedshiftSink {
    /// After a data error: finds the records whose rows the database refuses, by filling the stages with
    /// halves of the batch in transactions that are rolled back, down to single records.
    async fn isolate(
        &self,
        conn: &mut Conn,
        load: &Load<'_>,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let specs = self.tables.get().expect("prepared");
        let sqls: Vec<TableSql> = specs
            .iter()
            .map(|s| TableSql::new(&self.schema, s).comparing(self.key_equality()))
            .collect();
        let loaded_at = sql_timestamp(load.loaded_at_us);
        let emitting: Vec<usize> = (0..load.outcomes.len())
            .filter(
                |i| matches!(load.outcomes[*i], RecordOutcome::Emit(ref rows) if !rows.is_empty()),
            )
            .collect();
        let mut guilty = Vec::new();
        let mut todo = vec![emitting];
        while let Some(set) = todo.pop() {
            if set.is_empty() {
                continue;
            }
            let tx = conn.client.transaction().await.map_err(classify)?;
            let mut failure = None;
            for (t, rows) in rows_by_table(load, specs.len(), Some(&set))
                .into_iter()
                .enumerate()
            {
                if rows.is_empty() {
                    continue;
                }
                // The stage and the merge too: a constraint of the target table (CHECK, a unique index
                // beside the key) refuses a row only when it is merged.
                let filled =
                    fill_stage(&tx, &mut conn.prepared, &sqls[t], rows, load, &loaded_at).await;
                let merged = match filled {
                    Ok(()) => {
                        let mut merged = Ok(());
                        for statement in sqls[t].merge() {
                            merged = tx
                                .batch_execute(traced(&statement))
                                .await
                                .map_err(classify_conflict);
                            if merged.is_err() {
                                break;
                            }
                        }
                        merged
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = merged {
                    failure = Some((specs[t].name.clone(), e));
                    break;
                }
            }
            drop(tx); // rolled back
            match failure {
                None => {}
                Some((_, e)) if !matches!(e, SinkError::Data(_)) => return Err(e),
                Some((table, SinkError::Data(message))) if set.len() == 1 => {
                    guilty.push((
                        set[0],
                        format!("table {table}: the database refused the row: {message}"),
                    ));
                }
                Some(_) => {
                    let (a, b) = set.split_at(set.len() / 2);
                    todo.push(a.to_vec());
                    todo.push(b.to_vec());
                }
            }
        }
        guilty.sort();
        Ok(guilty)
    }
}

async fn insert_chunk(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &mut Statements,
    sql: &TableSql,
    binds: &[Bind],
    rows: usize,
) -> Result<(), SinkError> {
    if rows == MAX_ROWS_PER_INSERT {
        // Every full chunk of a table has the same shape: prepare it once per session.
        let statement = match prepared.get(&sql.stage) {
            Some(s) => s.clone(),
            None => {
                let types: Vec<Type> = binds.iter().map(|b| b.param().1).collect();
                let s = tx
                    .prepare_typed(traced(&sql.insert_stage(rows)), &types)
                    .await
                    .map_err(classify)?;
                prepared.insert(sql.stage.clone(), s.clone());
                s
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b.param().0).collect();
        tx.execute(&statement, &params).await.map_err(classify)?;
        return Ok(());
    }
    let params: Vec<(&(dyn ToSql + Sync), Type)> = binds.iter().map(Bind::param).collect();
    tx.query_typed(traced(&sql.insert_stage(rows)), &params)
        .await
        .map_err(classify)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec::new(
            "orders".into(),
            vec![
                ("order_id".into(), ColumnType::Varchar(36)),
                (
                    "total".into(),
                    ColumnType::Decimal {
                        precision: 18,
                        scale: 2,
                    },
                ),
                ("shipping".into(), ColumnType::Super),
                ("n".into(), ColumnType::Integer),
            ],
            vec!["order_id".into()],
        )
    }

    /// The generated statements are the portable shapes, with casts on the binds.
    #[test]
    fn statement_shapes() {
        let t = TableSql::new("public", &spec());
        assert_eq!(
            t.create_stage(),
            r#"CREATE TEMP TABLE "weir_stage_orders" (LIKE "public"."orders")"#
        );
        let insert = t.insert_stage(2);
        assert!(insert.starts_with(r#"INSERT INTO "weir_stage_orders" ("order_id", "total", "shipping", "n", _weir_record_id"#));
        assert!(
            insert.contains(
                "(CAST($1 AS VARCHAR(36)), CAST($2 AS DECIMAL(18,2)), JSON_PARSE($3), $4, "
            )
        );
        assert!(insert.contains("CAST($16 AS TIMESTAMPTZ))"));
        assert_eq!(
            t.merge_statement(),
            r#"MERGE INTO "public"."orders" USING "weir_stage_orders" ON "public"."orders"."order_id" = "weir_stage_orders"."order_id" WHEN MATCHED THEN UPDATE SET "total" = "weir_stage_orders"."total", "shipping" = "weir_stage_orders"."shipping", "n" = "weir_stage_orders"."n", _weir_record_id = "weir_stage_orders"._weir_record_id, _weir_batch_id = "weir_stage_orders"._weir_batch_id, _weir_rule_digest = "weir_stage_orders"._weir_rule_digest, _weir_loaded_at = "weir_stage_orders"._weir_loaded_at WHEN NOT MATCHED THEN INSERT ("order_id", "total", "shipping", "n", _weir_record_id, _weir_batch_id, _weir_rule_digest, _weir_loaded_at) VALUES ("weir_stage_orders"."order_id", "weir_stage_orders"."total", "weir_stage_orders"."shipping", "weir_stage_orders"."n", "weir_stage_orders"._weir_record_id, "weir_stage_orders"._weir_batch_id, "weir_stage_orders"._weir_rule_digest, "weir_stage_orders"._weir_loaded_at)"#
        );
        let [delete, insert] = t.merge();
        assert_eq!(
            delete,
            r#"DELETE FROM "public"."orders" USING "weir_stage_orders" WHERE "public"."orders"."order_id" = "weir_stage_orders"."order_id""#
        );
        assert!(insert.starts_with(r#"INSERT INTO "public"."orders" ("order_id""#));
        let ddl = table_ddl("public", &spec(), false);
        let mut keyed = spec().with_redshift_keys(Some("order_id".into()), vec!["order_id".into()]);
        keyed.encode = vec![("total".into(), "az64".into())];
        assert!(table_ddl("s", &keyed, true).contains(r#""total" DECIMAL(18,2) ENCODE az64"#));
        assert!(
            table_ddl("s", &keyed, true)
                .ends_with(r#"DISTSTYLE KEY DISTKEY ("order_id") COMPOUND SORTKEY ("order_id")"#)
        );
        assert!(!table_ddl("s", &keyed, false).contains("DISTKEY"));
        assert!(ddl.contains(r#""shipping" SUPER"#) && ddl.contains("PRIMARY KEY (\"order_id\")"));
        for statement in [t.create_stage(), t.insert_stage(3), delete, ddl]
            .iter()
            .chain(&weir_tables_ddl("s"))
        {
            let upper = statement.to_ascii_uppercase();
            for banned in [
                "ON CONFLICT",
                "TRUNCATE",
                "NOW()",
                "CURRENT_TIMESTAMP",
                "STDIN",
                "SERIAL",
                "JSONB",
            ] {
                assert!(!upper.contains(banned), "{banned} in {statement}");
            }
        }
    }

    /// The COPY fast path's SQL text and row encoding (they run only on real Redshift).
    #[test]
    fn copy_from_s3() {
        let t = TableSql::new("public", &spec());
        let copy = copy_stage_sql(
            &t.stage,
            &t.columns,
            "s3://bucket/stage/b1.manifest",
            "arn:aws:iam::123456789012:role/weir-o'k",
            "eu-west-1",
        );
        assert_eq!(
            copy,
            "COPY \"weir_stage_orders\" (\"order_id\", \"total\", \"shipping\", \"n\", _weir_record_id, _weir_batch_id, \
             _weir_rule_digest, _weir_loaded_at) FROM 's3://bucket/stage/b1.manifest' \
             IAM_ROLE 'arn:aws:iam::123456789012:role/weir-o''k' FORMAT AS JSON 'auto' GZIP MANIFEST \
             TIMEFORMAT 'auto' REGION 'eu-west-1'"
        );
        let cells = [
            Cell::Text("o-1".into()),
            Cell::Decimal("44.90".into()),
            Cell::Json(r#"{"a":[1]}"#.into()),
            Cell::Null,
        ];
        let line = stage_json_line(
            &spec(),
            &cells,
            ["file/x/1", "b", "d"],
            "2026-11-21 10:00:00.000000+00",
        );
        assert_eq!(
            line,
            r#"{"order_id":"o-1","total":"44.90","shipping":{"a":[1]},"n":null,"_weir_record_id":"file/x/1","_weir_batch_id":"b","_weir_rule_digest":"d","_weir_loaded_at":"2026-11-21 10:00:00.000000+00"}"#
        );
        // SUPER values pass through as validated: a big integer stays an integer, a lone surrogate escape
        // stays as written, an escaped quote and a string's own spaces and newline escapes stay; only the
        // whitespace between tokens goes (one line per row).
        let json = "{ \"big\": 123456789012345678901234567890,\n \"s\": \"\\ud800 a\\\" b\\n\",\t\"f\": 1.10e400 }";
        let cells = [
            Cell::Text("o-2".into()),
            Cell::Null,
            Cell::Json(json.into()),
            Cell::Int(3),
        ];
        let line = stage_json_line(&spec(), &cells, ["r", "b", "d"], "t");
        assert!(
            line.contains(
                r#""shipping":{"big":123456789012345678901234567890,"s":"\ud800 a\" b\n","f":1.10e400}"#
            ),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    /// Plaintext sessions to another host are warned about; to this machine or with TLS they are not.
    #[test]
    fn plaintext_to_a_remote_host_is_warned() {
        let warn = |url: &str| {
            let s = RedshiftSink::new(url, RedshiftOptions::default()).unwrap();
            s.plaintext_warning()
        };
        assert!(
            warn("postgres://u:p@db.example.com:5432/d")
                .is_some_and(|w| w.contains("db.example.com"))
        );
        assert!(warn("postgres://u:p@db.example.com:5432/d?sslmode=prefer").is_some());
        assert!(warn("postgres://u:p@127.0.0.1:5432/d").is_none());
        assert!(warn("postgres://u:p@localhost:5432/d").is_none());
        assert!(warn("postgres://u:p@db.example.com:5432/d?sslmode=require").is_none());
    }

    /// A version column keeps the highest version per key (ties: the latest); NULL loses; decimals compare
    /// as numbers.
    #[test]
    fn dedupe_by_version() {
        let row = |id: &str, v: Cell| CheckedRow {
            table: 0,
            cells: vec![Cell::Text(id.into()), Cell::Null, Cell::Null, v],
        };
        let (a5, a3, a5b, b_null, b1) = (
            row("a", Cell::Int(5)),
            row("a", Cell::Int(3)),
            row("a", Cell::Int(5)),
            row("b", Cell::Null),
            row("b", Cell::Int(1)),
        );
        let rows = vec![
            (&a5, "r1"),
            (&b1, "r2"),
            (&a3, "r3"),
            (&a5b, "r4"),
            (&b_null, "r5"),
        ];
        let kept: Vec<&str> = dedupe(rows, &[0], Some(3), KeyEquality::Standard)
            .iter()
            .map(|(_, r)| *r)
            .collect();
        assert_eq!(kept, ["r2", "r4"]);
        use crate::sink::version_cmp;
        use std::cmp::Ordering::*;
        let d = |s: &str| Cell::Decimal(s.into());
        assert_eq!(version_cmp(&d("10.00"), &d("9.00")), Greater);
        assert_eq!(version_cmp(&d("-10.00"), &d("-9.00")), Less);
        assert_eq!(version_cmp(&d("-0.00"), &d("0.00")), Equal);
        assert_eq!(version_cmp(&d("-0.50"), &d("0.10")), Less);
        assert_eq!(version_cmp(&Cell::Null, &d("-1.00")), Less);
        assert_eq!(
            version_cmp(
                &Cell::Text("2026-01-02".into()),
                &Cell::Text("2026-01-10".into())
            ),
            Less
        );
    }

    /// The versioned merge keeps a stored row whose version is higher.
    #[test]
    fn versioned_merge_statements() {
        let mut spec = spec();
        spec.version_column = Some("n".into());
        let t = TableSql::new("public", &spec);
        let [delete, insert] = t.merge();
        assert!(delete.ends_with(
            r#"AND ("weir_stage_orders"."n" >= "public"."orders"."n" OR "public"."orders"."n" IS NULL)"#
        ), "{delete}");
        assert!(
            insert.contains("WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"orders\" WHERE"),
            "{insert}"
        );
    }

    /// Duplicate keys in one batch keep the latest row only.
    #[test]
    fn dedupe_keeps_latest() {
        let row = |id: &str, n: i64| CheckedRow {
            table: 0,
            cells: vec![Cell::Text(id.into()), Cell::Null, Cell::Null, Cell::Int(n)],
        };
        let (a1, b, a2) = (row("a", 1), row("b", 2), row("a", 3));
        let kept = dedupe(
            vec![(&a1, "r1"), (&b, "r2"), (&a2, "r3")],
            &[0],
            None,
            KeyEquality::Standard,
        );
        let ids: Vec<&str> = kept.iter().map(|(_, r)| *r).collect();
        assert_eq!(ids, ["r2", "r3"]);
    }

    /// Timestamps are bound as UTC literals.
    #[test]
    fn timestamps() {
        assert_eq!(
            sql_timestamp(1_795_256_970_000_000),
            "2026-11-21 10:29:30.000000+00"
        );
    }
}
