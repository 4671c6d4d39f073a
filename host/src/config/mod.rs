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

mod source;
pub use source::*;
mod raw;
pub use raw::*;
mod sink;
pub use sink::*;
mod settings;
pub use settings::*;
mod interpolate;
use interpolate::*;
mod check;
mod secrets;
pub use check::not_compiled;
use check::*;

/// A configuration error; the message names the field and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A field is wrong.
    #[error("config field `{field}`: {message}")]
    Field {
        /// The field (`section.name`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// An endpoint override must be an http(s) URL.
fn check_endpoint_url(field: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(());
    }
    Err(ConfigError::field(
        field,
        format!("`{url}` is not an http(s) URL; use e.g. `http://127.0.0.1:4566`"),
    ))
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
    /// `[coordinator]`: where Kinesis shard leases, the loader lease and the registry of staged batches live.
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    /// `[serve]`: the HTTP settings of a forwarding tier (`weir serve` in front of the Kinesis stream or SQS
    /// queue of `[source]`). Default: the same defaults as an HTTP source's.
    #[serde(default)]
    pub serve: Option<HttpConfig>,
}

impl Config {
    /// Every section's IAM role, by section (`aws`, `source`, `raw`, `sink.iam`, `coordinator`).
    pub fn roles(&self) -> [(&'static str, crate::aws::Role); 5] {
        [
            ("aws", self.aws.role()),
            ("source", self.source.role()),
            ("raw", self.raw.role()),
            (
                "sink.iam",
                self.sink.iam.as_ref().map(|i| i.role()).unwrap_or_default(),
            ),
            ("coordinator", self.coordinator.role()),
        ]
    }

    /// The SQS client of the source: its own endpoint and role, else `[aws]`'s.
    #[cfg(feature = "sqs")]
    pub async fn source_sqs(&self) -> aws_sdk_sqs::Client {
        let aws = self.aws.with_role(&self.source.role());
        aws.sqs(self.source.endpoint_url()).await
    }

    /// The S3 client of an S3 source: its own endpoint and role, else `[aws]`'s.
    #[cfg(feature = "s3")]
    pub async fn source_s3(&self) -> aws_sdk_s3::Client {
        let aws = self.aws.with_role(&self.source.role());
        match self.source.endpoint_url() {
            Some(url) => aws.s3_at(&aws.load().await, url),
            None => aws.s3().await,
        }
    }

    /// The Kinesis client of the source: its own endpoint and role, else `[aws]`'s.
    #[cfg(feature = "kinesis")]
    pub async fn source_kinesis(&self) -> aws_sdk_kinesis::Client {
        let aws = self.aws.with_role(&self.source.role());
        aws.kinesis(self.source.endpoint_url()).await
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

/// What a valid configuration may still get wrong in production, for `weir validate` and the run's log.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if matches!(config.source, SourceConfig::Kinesis { .. })
        && config.sink.kind == SinkKind::Redshift
        && matches!(config.coordinator, CoordinatorConfig::Sink)
    {
        warnings.push(
            "Kinesis shard leases are kept in Redshift (`[coordinator]` is the sink): every renewal is a \
             write transaction in its commit queue, and the renewals and commits of several workers conflict \
             under serializable isolation; set `[coordinator] kind = \"dynamodb\"` (or `\"postgres\"`)"
                .to_string(),
        );
    }
    let g = &config.sink.group_commit;
    if g.on() && config.sink.kind == SinkKind::Redshift {
        if matches!(config.coordinator, CoordinatorConfig::Sink) {
            warnings.push(
                "grouped commits register staged batches in Redshift (`[coordinator]` is the sink): each \
                 registration is a write transaction in its commit queue; for a fleet of workers set \
                 `[coordinator] kind = \"dynamodb\"` (or `\"postgres\"`)"
                    .to_string(),
            );
        }
        if let StagingConfig::Local { dir } = g.staging() {
            warnings.push(format!(
                "grouped commits stage batches in the local directory {}: every worker of the fleet must run \
                 on this machine; for workers on several machines set `[sink.group_commit.staging] kind = \"s3\"` \
                 (or `[sink.stage_fill] kind = \"copy\"`, whose bucket staging then shares)",
                dir.display()
            ));
        }
    }
    warnings
}

/// Reads, interpolates, parses and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let (text, base_dir) = read(path)?;
    parse(&text, &base_dir, path, &|name| std::env::var(name).ok())
}

/// [`load`] without fetching secrets (each `${secretsmanager:…}` / `${ssm:…}` reads as a placeholder), and
/// the secret references: for `weir iam-policy`, which must work before the role it prints exists.
pub fn load_without_secrets(path: &Path) -> Result<(Loaded, Vec<String>), ConfigError> {
    let (text, base_dir) = read(path)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let refs = secrets::references(&table);
    let env = |name: &str| {
        if secrets::is_secret(name) {
            Some("weir-secret-placeholder".to_string())
        } else {
            std::env::var(name).ok()
        }
    };
    let loaded = parse_with(&text, &base_dir, path, &env, false)?;
    Ok((loaded, refs))
}

fn read(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((text, base_dir))
}

/// Parses config text; `env` looks up environment variables. Exposed for tests.
pub fn parse(
    text: &str,
    base_dir: &Path,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    parse_with(text, base_dir, path, env, true)
}

fn parse_with(
    text: &str,
    base_dir: &Path,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    fetch_secrets: bool,
) -> Result<Loaded, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    // Secrets first (with the `[aws]` settings), then every `${…}` from them or the environment.
    let resolved = if fetch_secrets {
        secrets::resolve(&secrets::references(&table), &table, env)?
    } else {
        Default::default()
    };
    let lookup = |name: &str| resolved.get(name).cloned().or_else(|| env(name));
    interpolate_table(&mut table, "", &lookup)?;
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
    let (kind, fill, raw) = (
        config.sink.kind,
        config.sink.stage_fill.clone(),
        config.raw.clone(),
    );
    config.sink.group_commit.resolve(kind, &fill, &raw);
    config.source.name_the_stream();
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

fn resolve_paths(config: &mut Config, base: &Path) {
    let join = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if let PluginLocation::Local(p) = &config.rule.plugin {
        config.rule.plugin = PluginLocation::Local(join(p));
    }
    if let Some(p) = &config.rule.tls_ca_file {
        config.rule.tls_ca_file = Some(join(p));
    }
    if let Some(dir) = &config.rule.cache_dir {
        config.rule.cache_dir = Some(join(dir));
    }
    if let Some(p) = &config.sink.path {
        config.sink.path = Some(join(p));
    }
    if let Some(p) = &config.sink.tls_ca_file {
        config.sink.tls_ca_file = Some(join(p));
    }
    if let Some(StagingConfig::Local { dir }) = &mut config.sink.group_commit.staging_config {
        *dir = join(dir);
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
        SourceConfig::Sqs { .. }
        | SourceConfig::Kinesis { .. }
        | SourceConfig::Http(_)
        | SourceConfig::S3 { .. } => {}
    }
}

#[cfg(test)]
mod tests;
