//! `[worker]`, `[rule]`, `[batch]` and `[retry]`: the pipeline's own settings and their defaults.

use super::*;

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
    /// Where metrics go besides `/metrics`: `"prometheus"` (the default: only `/metrics`, with `admin_bind`)
    /// or `"emf"` (also CloudWatch Embedded Metric Format lines on stdout, every `metrics_interval_secs` and
    /// once at exit, for the CloudWatch agent or a log subscription).
    #[serde(default)]
    pub metrics: MetricsOutput,
    /// How often EMF lines are written, in seconds. Default 60.
    #[serde(default = "default_metrics_interval_secs")]
    pub metrics_interval_secs: u64,
}

/// `[worker] metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsOutput {
    /// `/metrics` only.
    #[default]
    Prometheus,
    /// `/metrics`, and CloudWatch Embedded Metric Format lines on stdout.
    Emf,
}

pub(super) fn default_shutdown_grace_secs() -> u64 {
    110
}

pub(super) fn default_metrics_interval_secs() -> u64 {
    60
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            admin_bind: None,
            shutdown_grace_secs: default_shutdown_grace_secs(),
            metrics: MetricsOutput::default(),
            metrics_interval_secs: default_metrics_interval_secs(),
        }
    }
}

/// `[rule]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The plugin: a WebAssembly component implementing `weir:rules@0.1.0`: a path (relative to the config
    /// file), `s3://bucket/key.wasm` or `https://…` (fetched once, verified against `sha256`, cached by
    /// digest in `cache_dir`).
    pub plugin: PluginLocation,
    /// The plugin's SHA-256 (64 hex digits). Required for a plugin in S3 or on a web server; checked for a
    /// local one when given. A mismatch stops the worker before any record is read. `weir plugin publish`
    /// prints it.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Longest a remote plugin's download may take, in seconds (each attempt; three attempts). Default 60.
    #[serde(default = "default_fetch_timeout_secs")]
    pub fetch_timeout_secs: u64,
    /// PEM certificates trusted for an `https://` plugin besides the public web roots (a private CA).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
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

pub(super) fn default_fetch_timeout_secs() -> u64 {
    60
}

/// Where the rule's component is (`[rule] plugin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginLocation {
    /// A file (made absolute against the config file's directory at load).
    Local(PathBuf),
    /// An object in S3 (`s3://bucket/key`), read with the `[aws]` settings.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// A URL (`https://…`, or `http://…`: the digest guards the bytes either way).
    Web(String),
}

impl PluginLocation {
    /// Reads `plugin = "…"`.
    pub fn parse(text: &str) -> PluginLocation {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            PluginLocation::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            }
        } else if text.starts_with("https://") || text.starts_with("http://") {
            PluginLocation::Web(text.to_string())
        } else {
            PluginLocation::Local(PathBuf::from(text))
        }
    }

    /// The file, for a local plugin.
    pub fn local(&self) -> Option<&Path> {
        match self {
            PluginLocation::Local(p) => Some(p),
            _ => None,
        }
    }

    /// The plugin's name: its file name without `.wasm`.
    pub fn name(&self) -> String {
        let file = match self {
            PluginLocation::Local(p) => {
                return p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "rule".into());
            }
            PluginLocation::S3 { key, .. } => key.as_str(),
            PluginLocation::Web(url) => url.split(['?', '#']).next().unwrap_or(url),
        };
        let last = file.rsplit('/').next().unwrap_or(file);
        match last.strip_suffix(".wasm").unwrap_or(last) {
            "" => "rule".into(),
            name => name.to_string(),
        }
    }
}

impl std::fmt::Display for PluginLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginLocation::Local(p) => write!(f, "{}", p.display()),
            PluginLocation::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            PluginLocation::Web(url) => f.write_str(url),
        }
    }
}

impl<'de> Deserialize<'de> for PluginLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PluginLocation::parse(&String::deserialize(d)?))
    }
}

pub(super) fn default_memory_limit_mib() -> u64 {
    64
}

pub(super) fn default_batch_deadline_ms() -> u64 {
    2000
}

pub(super) fn default_instances() -> usize {
    cores()
}

/// `[rule] max_rows_per_record` when unset.
pub fn default_max_rows_per_record() -> usize {
    10_000
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

pub(super) fn default_max_records() -> usize {
    5000
}

pub(super) fn default_max_bytes() -> usize {
    4_000_000
}

pub(super) fn default_max_wait_ms() -> u64 {
    250
}

pub(super) fn default_queue_depth() -> usize {
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
    /// Attempts before the worker gives up and stops (nothing is acknowledged). Default 20: with full jitter
    /// the waits are random, and 20 attempts ride out an outage of minutes (about three on average with the
    /// default backoffs; 10 attempts could end in under 30 s).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff, in milliseconds; doubled after each failure. Default 100.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds. Default 30000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Total time budget of one operation's retries, in seconds: no retry starts later than this after the
    /// first attempt, whatever attempts are left (0: attempts only). Default 3600.
    #[serde(default = "default_max_elapsed_secs")]
    pub max_elapsed_secs: u64,
}

pub(super) fn default_max_elapsed_secs() -> u64 {
    3600
}

pub(super) fn default_max_attempts() -> u32 {
    20
}

pub(super) fn default_initial_backoff_ms() -> u64 {
    100
}

pub(super) fn default_max_backoff_ms() -> u64 {
    30_000
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_elapsed_secs: default_max_elapsed_secs(),
        }
    }
}
