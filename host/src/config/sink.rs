//! `[sink]` and `[[sink.tables]]`: where final rows go and what they look like.

use super::*;

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
    /// postgres / redshift: grouped commits (`[sink.group_commit]`): workers stage batches and one loader for
    /// the fleet merges them in one transaction per interval. On by default for `redshift`, off otherwise.
    #[serde(default)]
    pub group_commit: GroupCommitConfig,
    /// The declared tables. Rules may only emit rows for these tables and columns.
    pub tables: Vec<TableConfig>,
}

/// `[sink.group_commit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCommitConfig {
    /// Whether workers commit by groups. Default: true for `kind = "redshift"`, false for `postgres` (per-batch
    /// commits have the lowest latency where commits are cheap). Read it through [`GroupCommitConfig::on`].
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How often the loader merges, in milliseconds. Default 5000.
    #[serde(default = "default_group_interval_ms")]
    pub interval_ms: u64,
    /// Most staged batches one merge takes. Default 1000.
    #[serde(default = "default_group_max_batches")]
    pub max_batches: usize,
    /// Most staged bytes (gzip) one merge takes. Default 268435456 (256 MiB).
    #[serde(default = "default_group_max_bytes")]
    pub max_bytes: u64,
    /// How long the loader lease lasts without renewal, in seconds (more than twice `interval_ms`).
    /// Default 30.
    #[serde(default = "default_group_lease_secs")]
    pub lease_secs: u64,
    /// Where staged batches wait for the loader. Default: S3 under `weir-staged/` in the bucket of
    /// `[sink.stage_fill]` (COPY), else of an S3 `[raw]` store, else a local directory `weir-staged` (workers on
    /// one machine only). Read it through [`GroupCommitConfig::staging`] once the configuration is loaded.
    #[serde(default, rename = "staging")]
    pub staging_config: Option<StagingConfig>,
}

impl GroupCommitConfig {
    /// Whether grouped commits are on (the default for the sink's kind resolved at load).
    pub fn on(&self) -> bool {
        self.enabled.unwrap_or(false)
    }

    /// Where staged batches go (the default resolved at load).
    pub fn staging(&self) -> StagingConfig {
        self.staging_config.clone().unwrap_or_default()
    }

    /// Fills in the defaults that depend on the rest of the configuration: on for Redshift, staging beside
    /// the data the workers already write to S3.
    pub(super) fn resolve(
        &mut self,
        kind: SinkKind,
        stage_fill: &StageFillConfig,
        raw: &RawConfig,
    ) {
        self.enabled = Some(self.enabled.unwrap_or(kind == SinkKind::Redshift));
        if self.staging_config.is_none() {
            self.staging_config = Some(match (stage_fill, raw) {
                (StageFillConfig::Copy { bucket, .. }, _) | (_, RawConfig::S3 { bucket, .. }) => {
                    StagingConfig::S3 {
                        bucket: bucket.clone(),
                        prefix: default_staging_prefix(),
                    }
                }
                _ => StagingConfig::default(),
            });
        }
    }
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            enabled: None,
            interval_ms: default_group_interval_ms(),
            max_batches: default_group_max_batches(),
            max_bytes: default_group_max_bytes(),
            lease_secs: default_group_lease_secs(),
            staging_config: None,
        }
    }
}

fn default_group_interval_ms() -> u64 {
    5000
}

fn default_group_max_batches() -> usize {
    1000
}

fn default_group_max_bytes() -> u64 {
    256 << 20
}

fn default_group_lease_secs() -> u64 {
    30
}

/// `[coordinator]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CoordinatorConfig {
    /// In the sink's own database (the default).
    #[default]
    Sink,
    /// In a PostgreSQL database of its own (say Amazon RDS), so that registering staged batches and renewing
    /// the loader lease never write the warehouse: the choice for a Redshift fleet.
    Postgres {
        /// `postgres://user:password@host:5432/db`; `${VAR}` is replaced from the environment.
        url: String,
        /// The schema of weir's coordination tables. Default `public`.
        #[serde(default = "default_coordinator_schema")]
        schema: String,
    },
    /// In an Amazon DynamoDB table (conditional writes, as the Kinesis Client Library's lease table): the
    /// choice for a Redshift fleet on AWS. weir creates the table when it is missing.
    Dynamodb {
        /// The table's name.
        table: String,
        /// Another DynamoDB endpoint than `[aws] endpoint_url` (a VPC endpoint, a local server in tests).
        #[serde(default)]
        endpoint_url: Option<String>,
        /// An IAM role the coordinator's calls assume instead of `[aws] role_arn`.
        #[serde(default)]
        role_arn: Option<String>,
        /// The external id the role's trust policy requires.
        #[serde(default)]
        external_id: Option<String>,
    },
}

fn default_coordinator_schema() -> String {
    "public".into()
}

/// `[sink.group_commit.staging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StagingConfig {
    /// A directory (relative to the config file): every worker of the fleet must see the same one (one
    /// machine, or a shared file system).
    Local {
        /// The directory.
        dir: PathBuf,
    },
    /// S3: for a fleet on many machines.
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix. Default `weir-staged`.
        #[serde(default = "default_staging_prefix")]
        prefix: String,
    },
}

impl Default for StagingConfig {
    fn default() -> Self {
        StagingConfig::Local {
            dir: PathBuf::from("weir-staged"),
        }
    }
}

fn default_staging_prefix() -> String {
    "weir-staged".into()
}

pub(super) fn default_connect_timeout_secs() -> u64 {
    10
}

pub(super) fn default_call_timeout_secs() -> u64 {
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
    /// An IAM role the sink's AWS calls (temporary credentials, COPY stage files) assume instead of
    /// `[aws] role_arn` (a cluster in another account).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy requires.
    #[serde(default)]
    pub external_id: Option<String>,
}

impl IamConfig {
    /// The sink's own IAM role (`role_arn`, `external_id`), when it names one.
    pub fn role(&self) -> crate::aws::Role {
        crate::aws::Role {
            role_arn: self.role_arn.clone(),
            external_id: self.external_id.clone(),
        }
    }
}

impl CoordinatorConfig {
    /// The DynamoDB coordinator's own IAM role (`role_arn`, `external_id`), when it names one.
    pub fn role(&self) -> crate::aws::Role {
        match self {
            CoordinatorConfig::Dynamodb {
                role_arn,
                external_id,
                ..
            } => crate::aws::Role {
                role_arn: role_arn.clone(),
                external_id: external_id.clone(),
            },
            _ => crate::aws::Role::default(),
        }
    }
}

pub(super) fn default_iam_duration_secs() -> u32 {
    900
}

/// `[sink.stage_fill]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StageFillConfig {
    /// The kind's fastest fill that runs everywhere it can: `binary` for `postgres`, `insert` for `redshift`.
    #[default]
    Auto,
    /// Multi-row typed INSERTs (works on Redshift and PostgreSQL).
    Insert,
    /// PostgreSQL only: `COPY … FROM STDIN (FORMAT binary)` of the validated rows.
    Binary,
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

pub(super) fn default_stage_prefix() -> String {
    "weir-stage/".into()
}

pub(super) fn default_connections() -> usize {
    cores().max(2)
}

pub(super) fn default_schema() -> String {
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
