//! The worker's TOML configuration.
//!
//! Loading runs three steps, and every error names the field it is about:
//! 1. parse the TOML text;
//! 2. replace `${NAME}` (or `${NAME:-default}`) in every string value with the environment variable `NAME`;
//! 3. deserialize into [`Config`] (unknown fields are errors) and check what types cannot express
//!    (identifiers, column types, limits).
//!
//! Relative paths (plugin, RAW directory, SQLite file, input file) are resolved against the directory of the
//! configuration file, so a config works the same from any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::schema::{ColumnType, TableSpec, check_identifier};

/// A configuration error; the message names the field and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A field is wrong.
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

impl ConfigError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole worker configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where records come from.
    pub source: SourceConfig,
    /// Where the RAW copy of every record goes, before anything else happens to it.
    pub raw: RawConfig,
    /// The business rule plugin.
    pub rule: RuleConfig,
    /// Where final rows, the ledger, dead letters and checkpoints go.
    pub sink: SinkConfig,
    /// Batch limits; a batch is flushed when any limit is reached.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Retries of RAW writes and sink commits.
    #[serde(default)]
    pub retry: RetryConfig,
    /// AWS region and endpoint override, for every AWS backend.
    #[serde(default)]
    pub aws: crate::aws::AwsConfig,
    /// The worker process: admin endpoint and shutdown.
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// `[worker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address of the admin endpoint (`/healthz`, `/readyz`, `/metrics`), e.g. `0.0.0.0:9898`. Default: off.
    #[serde(default)]
    pub admin_bind: Option<String>,
    /// After SIGTERM/SIGINT, how long the worker may take to commit its in-flight batches and release its
    /// leases before it exits anyway (safe: nothing is acknowledged before its commit). Default 110: inside
    /// the two-minute EC2 spot interruption notice.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

fn default_shutdown_grace_secs() -> u64 {
    110
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            admin_bind: None,
            shutdown_grace_secs: default_shutdown_grace_secs(),
        }
    }
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// One record per line of a file, or of standard input with `path = "-"`.
    File {
        /// The input file (relative to the config file), or `-` for standard input.
        path: String,
        /// Name of the source partition, used in record ids and checkpoints. Default: the file name
        /// (`stdin` for standard input).
        #[serde(default)]
        name: Option<String>,
    },
    /// An Amazon SQS queue (standard or FIFO): several concurrent long polls; messages stay invisible
    /// while their batch is in flight and are deleted only after their batch has committed.
    Sqs {
        /// The queue URL, e.g. `https://sqs.eu-west-1.amazonaws.com/123456789012/orders`.
        queue_url: String,
        /// Concurrent long-polling receivers. Default: twice the cores, at least 4.
        #[serde(default = "default_receivers")]
        receivers: usize,
        /// Long-poll wait per receive call, in seconds (0–20). Default 20.
        #[serde(default = "default_wait_secs")]
        wait_secs: i32,
        /// Messages per receive call (1–10). Default 10.
        #[serde(default = "default_max_messages")]
        max_messages: i32,
        /// How long a received message stays invisible, in seconds; weir extends it while the message's
        /// batch is in flight, so a slow sink never causes a redelivery. Default 60.
        #[serde(default = "default_visibility_timeout_secs")]
        visibility_timeout_secs: i32,
        /// Stop when no message has arrived for this many seconds and a receive call has found the queue
        /// empty (drain-and-exit jobs); time the queue cannot be reached does not count. Default: never.
        #[serde(default)]
        idle_exit_secs: Option<u64>,
    },
    /// An Amazon Kinesis data stream: one reader per shard this worker holds the lease of.
    Kinesis {
        /// The stream name.
        stream: String,
        /// Where a shard without checkpoint starts: `"trim_horizon"` (oldest kept), `"latest"` or
        /// `"at_timestamp"` (with `initial_timestamp`). Default `"trim_horizon"`.
        #[serde(default = "default_initial_position")]
        initial_position: String,
        /// For `at_timestamp`: an RFC 3339 time, e.g. `2026-11-21T00:00:00Z`.
        #[serde(default)]
        initial_timestamp: Option<String>,
        /// Most records per `GetRecords` call (1–10000). Default 10000.
        #[serde(default = "default_max_records_per_call")]
        max_records_per_call: i32,
        /// Least time between two `GetRecords` calls on one shard, in milliseconds (≥ 200: 5 calls/s). Default 250.
        #[serde(default = "default_poll_ms")]
        poll_ms: u64,
        /// How long a shard lease lasts without renewal, in seconds. Default 30.
        #[serde(default = "default_lease_secs")]
        lease_secs: u64,
        /// How often leases are renewed and rebalanced, in seconds (less than half of `lease_secs`). Default 10.
        #[serde(default = "default_renew_secs")]
        renew_secs: u64,
        /// This worker's name in the lease table. Default `{hostname}-{pid}`.
        #[serde(default)]
        worker_id: Option<String>,
        /// Stop when no shard has delivered a record for this many seconds; time the stream cannot be
        /// reached does not count. Default: never.
        #[serde(default)]
        idle_exit_secs: Option<u64>,
    },
}

fn default_initial_position() -> String {
    "trim_horizon".into()
}
fn default_max_records_per_call() -> i32 {
    10_000
}
fn default_poll_ms() -> u64 {
    250
}
fn default_lease_secs() -> u64 {
    30
}
fn default_renew_secs() -> u64 {
    10
}

/// The machine's cores (the defaults of the concurrency settings follow it).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn default_receivers() -> usize {
    (2 * cores()).max(4)
}
fn default_wait_secs() -> i32 {
    20
}
fn default_max_messages() -> i32 {
    10
}
fn default_visibility_timeout_secs() -> i32 {
    60
}

/// `[raw]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawConfig {
    /// A local directory with the same key layout as the S3 store.
    Local {
        /// The directory (relative to the config file); created when missing.
        dir: PathBuf,
        /// A key prefix inside the directory, such as `orders/`. Default: none.
        #[serde(default)]
        prefix: String,
    },
    /// An Amazon S3 bucket: one gzip JSON-lines object per batch.
    S3 {
        /// The bucket.
        bucket: String,
        /// A key prefix, such as `raw/orders/`. Default: none.
        #[serde(default)]
        prefix: String,
        /// Server-side encryption: `"none"` (the bucket's default), `"s3"` (SSE-S3) or `"kms"` (SSE-KMS).
        /// Default `"none"`.
        #[serde(default)]
        sse: Sse,
        /// The KMS key for `sse = "kms"`. Default: the account's `aws/s3` key.
        #[serde(default)]
        kms_key_id: Option<String>,
        /// Objects larger than this are uploaded in parts, in bytes. Default 67 108 864 (64 MiB).
        #[serde(default = "default_multipart_threshold_bytes")]
        multipart_threshold_bytes: usize,
        /// Part size of multipart uploads, in bytes (S3 minimum 5 MiB). Default 16 777 216 (16 MiB).
        #[serde(default = "default_part_size_bytes")]
        part_size_bytes: usize,
        /// An S3 endpoint for this store only (S3-compatible storage, a VPC endpoint); default `[aws]
        /// endpoint_url`, else AWS.
        #[serde(default)]
        endpoint_url: Option<String>,
    },
    /// A MongoDB collection: one document per record, `_id` = record id.
    Mongodb {
        /// The connection string, e.g. `mongodb://user:password@host:27017/?replicaSet=rs0`; keep secrets in
        /// the environment: `uri = "${WEIR_MONGODB_URI}"`.
        uri: String,
        /// The database. Default `weir`.
        #[serde(default = "default_mongo_database")]
        database: String,
        /// The collection. Default `raw`.
        #[serde(default = "default_mongo_collection")]
        collection: String,
    },
}

fn default_mongo_database() -> String {
    "weir".into()
}
fn default_mongo_collection() -> String {
    "raw".into()
}

/// Server-side encryption of RAW objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sse {
    /// The bucket's default encryption.
    #[default]
    None,
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS (`aws:kms`), with `kms_key_id` or the account's default key.
    Kms,
}

/// The smallest part S3 accepts (except the last one).
pub const MIN_PART_SIZE_BYTES: usize = 5 << 20;

fn default_multipart_threshold_bytes() -> usize {
    64 << 20
}
fn default_part_size_bytes() -> usize {
    16 << 20
}

/// `[rule]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The plugin: a WebAssembly component implementing `weir:rules@0.1.0` (relative to the config file).
    pub plugin: PathBuf,
    /// Settings passed to the rule's `init`. Values are strings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Linear-memory cap of one rule instance, in MiB. Default 64.
    #[serde(default = "default_memory_limit_mib")]
    pub memory_limit_mib: u64,
    /// Wall-clock deadline for one call of the rule on one batch, in milliseconds. Default 2000.
    #[serde(default = "default_batch_deadline_ms")]
    pub batch_deadline_ms: u64,
    /// Most rows one record may emit; more rejects the record. Default 10000.
    #[serde(default = "default_max_rows_per_record")]
    pub max_rows_per_record: usize,
    /// Where every rule version that loads data is kept, by digest, for `weir reconcile`: a directory or
    /// `s3://bucket/prefix`. Default: `{raw.dir}/weir-plugins` for local RAW, `weir-plugins/` in
    /// the RAW bucket for S3, none for MongoDB RAW.
    #[serde(default)]
    pub store: Option<String>,
    /// Rule instances that process one batch in parallel (contiguous slices of it). Default: the cores.
    #[serde(default = "default_instances")]
    pub instances: usize,
    /// Where compiled plugins are cached. Default: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`, else
    /// `~/.cache/weir`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_memory_limit_mib() -> u64 {
    64
}
fn default_batch_deadline_ms() -> u64 {
    2000
}
fn default_instances() -> usize {
    cores()
}
fn default_max_rows_per_record() -> usize {
    10_000
}

/// `[sink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `sqlite` (embedded default), `postgres` or `redshift`.
    pub kind: SinkKind,
    /// sqlite: the database file (relative to the config file); created when missing.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// postgres / redshift: the connection URL, `postgres://user:password@host:5439/database`. Keep the password
    /// out of the file: `url = "${WEIR_REDSHIFT_URL}"`.
    #[serde(default)]
    pub url: Option<String>,
    /// postgres / redshift: a PEM file of extra CA certificates to trust for TLS (relative to the config
    /// file). Default: the public web roots only, which Redshift's certificates chain to.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// postgres / redshift: most database sessions this worker opens. Default: the cores, at least 2.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// postgres / redshift: the schema of the final and weir tables. Default `public`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// redshift: fetch temporary database credentials through IAM for each new connection, instead of a
    /// password in `url`.
    #[serde(default)]
    pub iam: Option<IamConfig>,
    /// postgres / redshift: how the stage is merged: `delete_insert` (default: `DELETE … USING` + `INSERT …
    /// SELECT`) or `merge` (one `MERGE` statement; PostgreSQL ≥ 15 and Redshift).
    #[serde(default)]
    pub merge: MergeMode,
    /// redshift: how the stage is filled: `insert` (default; works everywhere) or `copy` from S3.
    #[serde(default)]
    pub stage_fill: StageFillConfig,
    /// postgres / redshift: longest wait for a new database connection, in seconds. Default 10.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// postgres / redshift: longest one database call may take — a whole batch's commit transaction, a
    /// checkpoint or lease update — in seconds, before its session is dropped and the call retried (a
    /// black-holed connection cannot hang the worker). Default 300.
    #[serde(default = "default_call_timeout_secs")]
    pub call_timeout_secs: u64,
    /// The declared tables. Rules may only emit rows for these tables and columns.
    pub tables: Vec<TableConfig>,
}

fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_call_timeout_secs() -> u64 {
    300
}

/// How a stage is merged into its target table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// `DELETE FROM target USING stage …` then `INSERT INTO target SELECT … FROM stage`.
    #[default]
    DeleteInsert,
    /// `MERGE INTO target USING stage …`.
    Merge,
}

/// `[sink.iam]`: Redshift temporary credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamConfig {
    /// A provisioned cluster's identifier (`GetClusterCredentials`). Give this or `workgroup`.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// A Redshift Serverless workgroup (`GetCredentials`). Give this or `cluster_id`.
    #[serde(default)]
    pub workgroup: Option<String>,
    /// Provisioned only: the database user. Default: the user in `url`.
    #[serde(default)]
    pub db_user: Option<String>,
    /// Provisioned only: create the user when missing. Default false.
    #[serde(default)]
    pub auto_create: bool,
    /// Lifetime of the credentials, 900 to 3600 seconds. Default 900.
    #[serde(default = "default_iam_duration_secs")]
    pub duration_secs: u32,
}

fn default_iam_duration_secs() -> u32 {
    900
}

/// `[sink.stage_fill]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StageFillConfig {
    /// Multi-row typed INSERTs (works on Redshift and PostgreSQL).
    #[default]
    Insert,
    /// Redshift only: gzip JSON lines and a manifest written to S3, then `COPY … FORMAT AS JSON 'auto'`.
    Copy {
        /// The S3 bucket for stage files.
        bucket: String,
        /// Key prefix for stage files. Default `weir-stage/`.
        #[serde(default = "default_stage_prefix")]
        prefix: String,
        /// The IAM role Redshift assumes to read the bucket (`IAM_ROLE` of the COPY).
        iam_role: String,
        /// The bucket's region. Default: `[aws] region`, else `us-east-1`.
        #[serde(default)]
        region: Option<String>,
    },
}

fn default_stage_prefix() -> String {
    "weir-stage/".into()
}

fn default_connections() -> usize {
    cores().max(2)
}

fn default_schema() -> String {
    "public".into()
}

/// Kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The embedded SQLite sink.
    Sqlite,
    /// PostgreSQL (the same code as Redshift; the local stand-in).
    Postgres,
    /// Amazon Redshift over the PostgreSQL protocol.
    Redshift,
}

/// `[[sink.tables]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Table name: lowercase letters, digits and `_`, starting with a letter or `_`.
    pub name: String,
    /// Primary-key columns; rows are upserted by this key.
    pub primary_key: Vec<String>,
    /// Column name → type (`smallint`, `integer`, `bigint`, `decimal(p,s)`, `real`, `double precision`,
    /// `boolean`, `varchar(n)`, `timestamp`, `timestamptz`, `super`), in declaration order.
    pub columns: toml::Table,
    /// A column that orders versions of a row (`updated_at`, a sequence number: any orderable type but
    /// `super` and `boolean`). When set, an upsert keeps, per key, the row with the highest version, against
    /// the stored row too (ties: the later one loaded), so a redelivered or replayed older record never
    /// overwrites a newer one. A row whose version is NULL loses to any row with a version. Default: none (the
    /// last row loaded wins).
    #[serde(default)]
    pub version_column: Option<String>,
    /// Redshift only: the distribution key column. Default: none (Redshift's AUTO).
    #[serde(default)]
    pub distkey: Option<String>,
    /// Redshift only: compound sort key columns. Default: none.
    #[serde(default)]
    pub sortkey: Vec<String>,
    /// Redshift only: column compression, e.g. `encode = { total = "az64", sku = "zstd" }`. Default: Redshift's.
    #[serde(default)]
    pub encode: BTreeMap<String, String>,
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records in one batch. Default 5000.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Most payload bytes in one batch. Default 4 000 000.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Longest time a partial batch waits for more records, in milliseconds. Default 250.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Batches buffered between two pipeline stages (backpressure beyond that). Default 2.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
}

fn default_max_records() -> usize {
    5000
}
fn default_max_bytes() -> usize {
    4_000_000
}
fn default_max_wait_ms() -> u64 {
    250
}
fn default_queue_depth() -> usize {
    2
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            max_wait_ms: default_max_wait_ms(),
            queue_depth: default_queue_depth(),
        }
    }
}

/// `[retry]`: transient failures of RAW writes and sink commits are retried with exponential backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts before the worker gives up and stops (nothing is acknowledged). Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff, in milliseconds; doubled after each failure. Default 100.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds. Default 30000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_max_attempts() -> u32 {
    10
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    30_000
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// A loaded, checked configuration with paths resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, with relative paths resolved against `base_dir`.
    pub config: Config,
    /// The declared tables, parsed.
    pub tables: Vec<TableSpec>,
    /// The directory of the config file.
    pub base_dir: PathBuf,
}

/// Reads, interpolates, parses and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    parse(&text, &base_dir, path, &|name| std::env::var(name).ok())
}

/// Parses config text; `env` looks up environment variables. Exposed for tests.
pub fn parse(
    text: &str,
    base_dir: &Path,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    interpolate_table(&mut table, "", env)?;
    let mut config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            let message = message.lines().next().unwrap_or_default().to_string();
            let field = if field == "." {
                "(top level)".to_string()
            } else {
                field
            };
            ConfigError::field(field, hint(&message))
        })?;
    let tables = check(&config)?;
    resolve_paths(&mut config, base_dir);
    Ok(Loaded {
        config,
        tables,
        base_dir: base_dir.to_path_buf(),
    })
}

/// Adds a fix to serde's message where one is obvious.
fn hint(message: &str) -> String {
    if message.starts_with("missing field") {
        format!("{message}; add it (see examples/quickstart/weir.toml)")
    } else if message.starts_with("unknown field") {
        format!("{message}; remove it or fix its spelling")
    } else if message.starts_with("unknown variant") {
        format!("{message}; use one of the listed values")
    } else {
        message.to_string()
    }
}

fn interpolate_table(
    table: &mut toml::Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        interpolate_value(value, &path, env)?;
    }
    Ok(())
}

fn interpolate_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = interpolate(s, path, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => interpolate_table(t, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${NAME}` and `${NAME:-default}`; `$${` stays a literal `${`.
fn interpolate(
    s: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                ConfigError::field(
                    path,
                    "unterminated `${`; write `${NAME}`, or `$${` for a literal `${`",
                )
            })?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConfigError::field(
                    path,
                    format!(
                        "`${{{expr}}}` is not a valid environment variable reference; use letters, digits and `_`"
                    ),
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ConfigError::field(
                        path,
                        format!(
                            "environment variable `{name}` is not set; set it, or write `${{{name}:-default}}`"
                        ),
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks what serde cannot, and parses the declared tables.
fn check_source(source: &SourceConfig, aws: &crate::aws::AwsConfig) -> Result<(), ConfigError> {
    match source {
        SourceConfig::File { path, name } => {
            if path.is_empty() {
                return Err(ConfigError::field(
                    "source.path",
                    "is empty; give a file, or `-` for standard input",
                ));
            }
            if let Some(name) = name {
                if name.is_empty() || name.contains('/') {
                    return Err(ConfigError::field(
                        "source.name",
                        "must be non-empty and contain no `/`",
                    ));
                }
            }
        }
        SourceConfig::Sqs {
            queue_url,
            receivers,
            wait_secs,
            max_messages,
            visibility_timeout_secs,
            idle_exit_secs,
        } => {
            let name = queue_url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            if !(queue_url.starts_with("https://") || queue_url.starts_with("http://"))
                || name.is_empty()
            {
                return Err(ConfigError::field(
                    "source.queue_url",
                    format!(
                        "`{queue_url}` is not a queue URL; use the URL SQS shows for the queue, e.g. \
                         `https://sqs.eu-west-1.amazonaws.com/123456789012/orders`"
                    ),
                ));
            }
            if !(1..=64).contains(receivers) {
                return Err(ConfigError::field(
                    "source.receivers",
                    format!("{receivers} is out of range; use 1 to 64"),
                ));
            }
            if !(0..=20).contains(wait_secs) {
                return Err(ConfigError::field(
                    "source.wait_secs",
                    format!("{wait_secs} is out of range; SQS long polls wait 0 to 20 seconds"),
                ));
            }
            if aws.read_timeout_secs <= *wait_secs as u64 {
                return Err(ConfigError::field(
                    "aws.read_timeout_secs",
                    format!(
                        "{} s is not longer than source.wait_secs ({wait_secs} s): every long poll would time \
                         out; make it longer than the wait",
                        aws.read_timeout_secs
                    ),
                ));
            }
            if !(1..=10).contains(max_messages) {
                return Err(ConfigError::field(
                    "source.max_messages",
                    format!(
                        "{max_messages} is out of range; SQS returns 1 to 10 messages per call"
                    ),
                ));
            }
            if !(2..=43_200).contains(visibility_timeout_secs) {
                return Err(ConfigError::field(
                    "source.visibility_timeout_secs",
                    format!(
                        "{visibility_timeout_secs} is out of range; use 2 to 43200 seconds (12 hours)"
                    ),
                ));
            }
            if *idle_exit_secs == Some(0) {
                return Err(ConfigError::field(
                    "source.idle_exit_secs",
                    "must be at least 1 (seconds); leave it out to run until stopped",
                ));
            }
        }
        SourceConfig::Kinesis {
            stream,
            initial_position,
            initial_timestamp,
            max_records_per_call,
            poll_ms,
            lease_secs,
            renew_secs,
            idle_exit_secs,
            ..
        } => {
            if stream.is_empty() || stream.contains('/') {
                return Err(ConfigError::field(
                    "source.stream",
                    "must be the stream's name (not its ARN), e.g. `stream = \"orders\"`",
                ));
            }
            match (initial_position.as_str(), initial_timestamp) {
                ("trim_horizon" | "latest", None) => {}
                ("at_timestamp", Some(t)) => {
                    if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                        return Err(ConfigError::field(
                            "source.initial_timestamp",
                            format!("`{t}` is not an RFC 3339 time such as `2026-11-21T00:00:00Z`"),
                        ));
                    }
                }
                ("at_timestamp", None) => {
                    return Err(ConfigError::field(
                        "source.initial_timestamp",
                        "missing; `initial_position = \"at_timestamp\"` needs it",
                    ));
                }
                ("trim_horizon" | "latest", Some(_)) => {
                    return Err(ConfigError::field(
                        "source.initial_timestamp",
                        "only used with `initial_position = \"at_timestamp\"`; remove it",
                    ));
                }
                (other, _) => {
                    return Err(ConfigError::field(
                        "source.initial_position",
                        format!("`{other}`: use \"trim_horizon\", \"latest\" or \"at_timestamp\""),
                    ));
                }
            }
            if !(1..=10_000).contains(max_records_per_call) {
                return Err(ConfigError::field(
                    "source.max_records_per_call",
                    format!("{max_records_per_call} is out of range; use 1 to 10000"),
                ));
            }
            if *poll_ms < 200 {
                return Err(ConfigError::field(
                    "source.poll_ms",
                    format!(
                        "{poll_ms} is below 200; Kinesis allows 5 GetRecords calls per second per shard"
                    ),
                ));
            }
            if *renew_secs == 0 || renew_secs * 2 >= *lease_secs {
                return Err(ConfigError::field(
                    "source.renew_secs",
                    format!(
                        "{renew_secs} must be at least 1 and less than half of lease_secs ({lease_secs}), so a lease is renewed twice before it runs out"
                    ),
                ));
            }
            if *idle_exit_secs == Some(0) {
                return Err(ConfigError::field(
                    "source.idle_exit_secs",
                    "must be at least 1 (seconds); leave it out to run until stopped",
                ));
            }
        }
    }
    Ok(())
}

fn check_raw(raw: &RawConfig) -> Result<(), ConfigError> {
    match raw {
        RawConfig::Local { .. } => {}
        RawConfig::Mongodb {
            uri,
            database,
            collection,
        } => {
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err(ConfigError::field(
                    "raw.uri",
                    "must be a MongoDB connection string starting with `mongodb://` or `mongodb+srv://`",
                ));
            }
            if database.is_empty() || database.contains(['/', '.', ' ', '"', '$']) {
                return Err(ConfigError::field(
                    "raw.database",
                    "must be a MongoDB database name (no `/ . \" $` or spaces)",
                ));
            }
            if collection.is_empty()
                || collection.starts_with("system.")
                || collection.contains('$')
            {
                return Err(ConfigError::field(
                    "raw.collection",
                    "must be a collection name (not empty, no `$`, not `system.*`)",
                ));
            }
        }
        RawConfig::S3 {
            bucket,
            sse,
            kms_key_id,
            part_size_bytes,
            multipart_threshold_bytes,
            endpoint_url,
            ..
        } => {
            if bucket.is_empty() || bucket.contains('/') {
                return Err(ConfigError::field(
                    "raw.bucket",
                    "must be a bucket name (no `s3://`, no `/`), e.g. `bucket = \"acme-raw\"`",
                ));
            }
            if kms_key_id.is_some() && *sse != Sse::Kms {
                return Err(ConfigError::field(
                    "raw.kms_key_id",
                    "is only used with `sse = \"kms\"`; set that or remove kms_key_id",
                ));
            }
            if *part_size_bytes < MIN_PART_SIZE_BYTES {
                return Err(ConfigError::field(
                    "raw.part_size_bytes",
                    format!(
                        "{part_size_bytes} is below the S3 minimum part size; use at least {MIN_PART_SIZE_BYTES} (5 MiB)"
                    ),
                ));
            }
            if *multipart_threshold_bytes == 0 {
                return Err(ConfigError::field(
                    "raw.multipart_threshold_bytes",
                    "must be at least 1 (bytes)",
                ));
            }
            if let Some(url) = endpoint_url {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(ConfigError::field(
                        "raw.endpoint_url",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check(config: &Config) -> Result<Vec<TableSpec>, ConfigError> {
    let b = &config.batch;
    if b.max_records == 0 {
        return Err(ConfigError::field(
            "batch.max_records",
            "must be at least 1",
        ));
    }
    if b.max_bytes == 0 {
        return Err(ConfigError::field("batch.max_bytes", "must be at least 1"));
    }
    if b.queue_depth == 0 {
        return Err(ConfigError::field(
            "batch.queue_depth",
            "must be at least 1",
        ));
    }
    if config.retry.max_attempts == 0 {
        return Err(ConfigError::field(
            "retry.max_attempts",
            "must be at least 1",
        ));
    }
    let r = &config.rule;
    if r.memory_limit_mib == 0 || r.memory_limit_mib > 4096 {
        return Err(ConfigError::field(
            "rule.memory_limit_mib",
            format!(
                "{} is out of range; use 1 to 4096 (MiB)",
                r.memory_limit_mib
            ),
        ));
    }
    if r.instances == 0 || r.instances > 256 {
        return Err(ConfigError::field(
            "rule.instances",
            format!("{} is out of range; use 1 to 256", r.instances),
        ));
    }
    if r.batch_deadline_ms == 0 {
        return Err(ConfigError::field(
            "rule.batch_deadline_ms",
            "must be at least 1 (milliseconds)",
        ));
    }
    if r.plugin.as_os_str().is_empty() {
        return Err(ConfigError::field(
            "rule.plugin",
            "is empty; give the path of the rule's .wasm file",
        ));
    }
    match (&config.sink.kind, &config.sink.path, &config.sink.url) {
        (SinkKind::Sqlite, None, _) => {
            return Err(ConfigError::field(
                "sink.path",
                "missing; the sqlite sink needs the database file, e.g. `path = \"weir.db\"`",
            ));
        }
        (SinkKind::Sqlite, _, Some(_)) => {
            return Err(ConfigError::field(
                "sink.url",
                "the sqlite sink takes `path`, not `url`; remove `url`",
            ));
        }
        (SinkKind::Sqlite, Some(_), None) => {}
        (SinkKind::Postgres | SinkKind::Redshift, _, None) => {
            return Err(ConfigError::field(
                "sink.url",
                "missing; give the connection URL, e.g. `url = \"${WEIR_REDSHIFT_URL}\"` with \
                 WEIR_REDSHIFT_URL=postgres://user:password@host:5439/database",
            ));
        }
        (SinkKind::Postgres | SinkKind::Redshift, Some(_), _) => {
            return Err(ConfigError::field(
                "sink.path",
                "only the sqlite sink takes `path`; remove it",
            ));
        }
        (SinkKind::Postgres | SinkKind::Redshift, None, Some(url)) => {
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return Err(ConfigError::field(
                    "sink.url",
                    format!(
                        "not a valid connection URL ({e}); write postgres://user:password@host:port/database"
                    ),
                ));
            }
            check_identifier(&config.sink.schema)
                .map_err(|m| ConfigError::field("sink.schema", m))?;
        }
    }
    if let Some(iam) = &config.sink.iam {
        if config.sink.kind != SinkKind::Redshift {
            return Err(ConfigError::field(
                "sink.iam",
                "IAM credentials are for `kind = \"redshift\"` only",
            ));
        }
        if iam.cluster_id.is_some() == iam.workgroup.is_some() {
            return Err(ConfigError::field(
                "sink.iam",
                "give exactly one of `cluster_id` (provisioned) or `workgroup` (Serverless)",
            ));
        }
        if !(900..=3600).contains(&iam.duration_secs) {
            return Err(ConfigError::field(
                "sink.iam.duration_secs",
                "must be from 900 to 3600 (seconds)",
            ));
        }
    }
    if matches!(config.sink.stage_fill, StageFillConfig::Copy { .. })
        && config.sink.kind != SinkKind::Redshift
    {
        return Err(ConfigError::field(
            "sink.stage_fill",
            "`kind = \"copy\"` needs Redshift (`[sink] kind = \"redshift\"`); PostgreSQL cannot COPY from S3",
        ));
    }
    if config.sink.connections == 0 {
        return Err(ConfigError::field("sink.connections", "must be at least 1"));
    }
    check_source(&config.source, &config.aws)?;
    check_raw(&config.raw)?;
    if config.sink.tables.is_empty() {
        return Err(ConfigError::field(
            "sink.tables",
            "no table declared; add a [[sink.tables]] section for each table the rule emits",
        ));
    }
    let mut specs: Vec<TableSpec> = Vec::new();
    for (i, t) in config.sink.tables.iter().enumerate() {
        let at = format!("sink.tables[{i}]");
        check_identifier(&t.name).map_err(|m| ConfigError::field(format!("{at}.name"), m))?;
        if specs.iter().any(|s| s.name == t.name) {
            return Err(ConfigError::field(
                format!("{at}.name"),
                format!("table `{}` is declared twice", t.name),
            ));
        }
        if t.columns.is_empty() {
            return Err(ConfigError::field(
                format!("{at}.columns"),
                "no columns; declare `columns = { name = \"type\" }`",
            ));
        }
        let mut columns = Vec::new();
        for (name, ty) in &t.columns {
            let field = format!("{at}.columns.{name}");
            check_identifier(name).map_err(|m| ConfigError::field(&field, m))?;
            let ty = ty.as_str().ok_or_else(|| {
                ConfigError::field(&field, "the type must be a string such as \"varchar(36)\"")
            })?;
            let ty: ColumnType = ty
                .parse()
                .map_err(|m: String| ConfigError::field(&field, m))?;
            columns.push((name.clone(), ty));
        }
        if t.primary_key.is_empty() {
            return Err(ConfigError::field(
                format!("{at}.primary_key"),
                "empty; name the columns that identify a row, e.g. `primary_key = [\"id\"]`",
            ));
        }
        for key in &t.primary_key {
            if !columns.iter().any(|(c, _)| c == key) {
                return Err(ConfigError::field(
                    format!("{at}.primary_key"),
                    format!(
                        "`{key}` is not a declared column of `{}`; add it to `columns` or fix the name",
                        t.name
                    ),
                ));
            }
        }
        let keys = t.distkey.iter().map(|k| ("distkey", k));
        for (field, key) in keys.chain(t.sortkey.iter().map(|k| ("sortkey", k))) {
            if !columns.iter().any(|(c, _)| c == key) {
                return Err(ConfigError::field(
                    format!("{at}.{field}"),
                    format!("`{key}` is not a declared column of `{}`", t.name),
                ));
            }
        }
        if let Some(v) = &t.version_column {
            let field = format!("{at}.version_column");
            match columns.iter().find(|(c, _)| c == v) {
                None => {
                    return Err(ConfigError::field(
                        field,
                        format!(
                            "`{v}` is not a declared column of `{}`; add it to `columns` or fix the name",
                            t.name
                        ),
                    ));
                }
                Some((_, ColumnType::Super | ColumnType::Boolean)) => {
                    return Err(ConfigError::field(
                        field,
                        format!(
                            "`{v}` cannot order versions (super and boolean columns do not); use a timestamp, \
                             integer, decimal or varchar column"
                        ),
                    ));
                }
                Some(_) if t.primary_key.contains(v) => {
                    return Err(ConfigError::field(
                        field,
                        format!("`{v}` is part of the primary key; a version column must not be"),
                    ));
                }
                Some(_) => {}
            }
        }
        let mut spec = TableSpec::new(t.name.clone(), columns, t.primary_key.clone())
            .with_redshift_keys(t.distkey.clone(), t.sortkey.clone());
        spec.version_column = t.version_column.clone();
        const ENCODINGS: [&str; 13] = [
            "raw",
            "az64",
            "bytedict",
            "delta",
            "delta32k",
            "lzo",
            "mostly8",
            "mostly16",
            "mostly32",
            "runlength",
            "text255",
            "text32k",
            "zstd",
        ];
        for (column, encoding) in &t.encode {
            let field = format!("{at}.encode.{column}");
            if spec.column_index(column).is_none() {
                return Err(ConfigError::field(
                    field,
                    format!("`{column}` is not a declared column of `{}`", t.name),
                ));
            }
            if !ENCODINGS.contains(&encoding.as_str()) {
                return Err(ConfigError::field(
                    field,
                    format!(
                        "unknown encoding `{encoding}`; use one of {}",
                        ENCODINGS.join(", ")
                    ),
                ));
            }
            spec.encode.push((column.clone(), encoding.clone()));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let join = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    config.rule.plugin = join(&config.rule.plugin);
    if let Some(dir) = &config.rule.cache_dir {
        config.rule.cache_dir = Some(join(dir));
    }
    if let Some(p) = &config.sink.path {
        config.sink.path = Some(join(p));
    }
    if let Some(p) = &config.sink.tls_ca_file {
        config.sink.tls_ca_file = Some(join(p));
    }
    match &mut config.raw {
        RawConfig::Local { dir, .. } => *dir = join(dir),
        RawConfig::S3 { .. } | RawConfig::Mongodb { .. } => {}
    }
    match &mut config.source {
        SourceConfig::File { path, .. } => {
            if path != "-" {
                *path = join(Path::new(path)).to_string_lossy().into_owned();
            }
        }
        SourceConfig::Sqs { .. } | SourceConfig::Kinesis { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
kind = "file"
path = "in.jsonl"
[raw]
kind = "local"
dir = "raw"
[rule]
plugin = "rule.wasm"
settings = { currency = "${CUR:-EUR}" }
[sink]
kind = "sqlite"
path = "${DB}"
[[sink.tables]]
name = "orders"
primary_key = ["id"]
columns = { id = "varchar(36)", total = "decimal(18,2)" }
"#;

    const SQS: &str =
        "kind = \"sqs\"\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/orders\"";

    /// SQS and S3 settings load with their documented defaults.
    #[test]
    fn sqs_and_s3_defaults() {
        let text = GOOD
            .replace("kind = \"file\"\npath = \"in.jsonl\"", SQS)
            .replace(
                "kind = \"local\"\ndir = \"raw\"",
                "kind = \"s3\"\nbucket = \"b\"",
            );
        let l = parse(&text, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
        let SourceConfig::Sqs {
            receivers,
            wait_secs,
            max_messages,
            visibility_timeout_secs,
            idle_exit_secs,
            ..
        } = l.config.source
        else {
            panic!("sqs source expected")
        };
        assert_eq!(
            (
                receivers,
                wait_secs,
                max_messages,
                visibility_timeout_secs,
                idle_exit_secs
            ),
            (4, 20, 10, 60, None)
        );
        let RawConfig::S3 {
            sse,
            multipart_threshold_bytes,
            part_size_bytes,
            ..
        } = l.config.raw
        else {
            panic!("s3 raw expected")
        };
        assert_eq!(
            (sse, multipart_threshold_bytes, part_size_bytes),
            (Sse::None, 64 << 20, 16 << 20)
        );
    }

    fn env(name: &str) -> Option<String> {
        (name == "DB").then(|| "w.db".to_string())
    }

    fn err(text: &str) -> String {
        parse(text, Path::new("/base"), Path::new("t.toml"), &env)
            .unwrap_err()
            .to_string()
    }

    /// A good config loads, interpolates and resolves paths against the config's directory.
    #[test]
    fn good_config_loads() {
        let l = parse(GOOD, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
        assert_eq!(l.config.sink.path.as_deref(), Some(Path::new("/base/w.db")));
        assert_eq!(l.config.rule.settings["currency"], "EUR");
        assert_eq!(l.tables[0].columns.len(), 2);
        assert_eq!(l.config.batch.max_records, 5000);
    }

    /// Each malformed config names the offending field.
    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                GOOD.replace("[batch]", "") + "[batch]\nmax_record = 5\n",
                "batch.max_record",
            ),
            (
                GOOD.replace("decimal(18,2)", "money"),
                "sink.tables[0].columns.total",
            ),
            (GOOD.replace("\"${DB}\"", "\"${NOPE}\""), "sink.path"),
            (
                GOOD.replace("kind = \"sqlite\"", "kind = \"oracle\""),
                "sink.kind",
            ),
            (
                GOOD.replace("primary_key = [\"id\"]", "primary_key = [\"oid\"]"),
                "sink.tables[0].primary_key",
            ),
            (GOOD.replace("plugin = \"rule.wasm\"\n", ""), "rule"),
            (
                GOOD.replace("name = \"orders\"", "name = \"drop table\""),
                "sink.tables[0].name",
            ),
            (
                GOOD.replace(
                    "[[sink.tables]]",
                    "[batch]\nmax_records = 0\n[[sink.tables]]",
                ),
                "batch.max_records",
            ),
            (GOOD.replace("kind = \"file\"", "kind = \"ftp\""), "source"),
            (GOOD.replace("path = \"${DB}\"", "path = \"${DB}\"\niam = { cluster_id = \"c\" }"), "sink.iam"),
            (
                GOOD.replace("kind = \"sqlite\"\npath = \"${DB}\"", "kind = \"redshift\"\nurl = \"postgres://u@h/d\"\niam = { cluster_id = \"c\", duration_secs = 60 }"),
                "sink.iam.duration_secs",
            ),
            (
                GOOD.replace("kind = \"sqlite\"\npath = \"${DB}\"", "kind = \"postgres\"\nurl = \"postgres://u@h/d\"\nstage_fill = { kind = \"copy\", bucket = \"b\", iam_role = \"r\" }"),
                "sink.stage_fill",
            ),
            (GOOD.replace("kind = \"sqlite\"\npath = \"${DB}\"", "kind = \"redshift\""), "sink.url"),
            (GOOD.replace("columns = {", "encode = { total = \"gzip9\" }\ncolumns = {"), "sink.tables[0].encode.total"),
            (GOOD.replace("columns = {", "sortkey = [\"placed_at\"]\ncolumns = {"), "sink.tables[0].sortkey"),
            (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", "kind = \"sqs\"\nqueue_url = \"orders\""), "source.queue_url"),
            (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nwait_secs = 30")), "source.wait_secs"),
            (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nmax_messages = 11")), "source.max_messages"),
            (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nvisibility_timeout_secs = 0")), "source.visibility_timeout_secs"),
            (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nreceivers = 0")), "source.receivers"),
            (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\npoll_secs = 1")), "source"),
            (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"s3://b\""), "raw.bucket"),
            (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\nkms_key_id = \"k\""), "raw.kms_key_id"),
            (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\nsse = \"aes\""), "raw"),
            (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\npart_size_bytes = 1000"), "raw.part_size_bytes"),
            (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"rule.wasm\"\ninstances = 0"), "rule.instances"),
        ];
        for (text, field) in cases {
            let message = err(&text);
            assert!(
                message.contains(&format!("`{field}")),
                "{message:?} should name {field}"
            );
        }
    }

    /// Interpolation handles defaults, literals and missing variables.
    #[test]
    fn interpolation() {
        let e = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(interpolate("x${A}y", "f", &e).unwrap(), "x1y");
        assert_eq!(interpolate("${B:-2}", "f", &e).unwrap(), "2");
        assert_eq!(interpolate("$${A} $5", "f", &e).unwrap(), "${A} $5");
        assert!(
            interpolate("${B}", "f", &e)
                .unwrap_err()
                .to_string()
                .contains("`B` is not set")
        );
        assert!(interpolate("${A", "f", &e).is_err());
    }
}
