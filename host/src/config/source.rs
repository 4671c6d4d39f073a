//! `[source]`: where records come from, with each kind's defaults and checks.

use super::*;

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
        /// An SQS endpoint for this source only (a VPC endpoint, a local server); default `[aws]
        /// endpoint_url`, else AWS.
        #[serde(default)]
        endpoint_url: Option<String>,
        /// An IAM role this source's calls assume instead of `[aws] role_arn` (a stream or queue in another
        /// account).
        #[serde(default)]
        role_arn: Option<String>,
        /// The external id the role's trust policy requires.
        #[serde(default)]
        external_id: Option<String>,
    },
    /// An Amazon Kinesis data stream: one reader per shard this worker holds the lease of.
    Kinesis {
        /// The stream name. May be left out when `stream_arn` is given.
        #[serde(default)]
        stream: String,
        /// The stream's ARN, for a stream in another account shared through its resource policy: every call
        /// then names the stream by ARN (`arn:aws:kinesis:{region}:{account}:stream/{name}`).
        #[serde(default)]
        stream_arn: Option<String>,
        /// Where a shard without checkpoint starts: `"trim_horizon"` (oldest kept), `"latest"` or
        /// `"at_timestamp"` (with `initial_timestamp`). Default `"trim_horizon"`.
        #[serde(default)]
        initial_position: StartAt,
        /// For `at_timestamp`: an RFC 3339 time, e.g. `2026-11-21T00:00:00Z`.
        #[serde(default)]
        initial_timestamp: Option<Rfc3339>,
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
        /// A Kinesis endpoint for this source only (a VPC endpoint, a local server); default `[aws]
        /// endpoint_url`, else AWS.
        #[serde(default)]
        endpoint_url: Option<String>,
        /// An IAM role this source's calls assume instead of `[aws] role_arn` (a stream or queue in another
        /// account).
        #[serde(default)]
        role_arn: Option<String>,
        /// The external id the role's trust policy requires.
        #[serde(default)]
        external_id: Option<String>,
    },
    /// An HTTP ingest endpoint (`weir serve`): clients `POST /v1/records` (one record per line, or a JSON
    /// array), Amazon Data Firehose delivers to `POST /v1/firehose`; each request is answered 200 only once
    /// every record of it is in RAW and committed through the rule to the sink.
    Http(HttpConfig),
    /// Objects in Amazon S3 read as records: those named by the bucket's event notifications delivered to an
    /// SQS queue (`queue_url`: S3's own notifications, wrapped in SNS or not, or EventBridge's), or every
    /// object under `prefix` of `bucket` once (a one-off listing; the run ends after the last object).
    S3 {
        /// The SQS queue the notifications arrive in. Each message is deleted only once every record of its
        /// objects has committed.
        #[serde(default)]
        queue_url: Option<String>,
        /// The bucket to list (without `queue_url`); with `queue_url`, notifications of other buckets are
        /// skipped.
        #[serde(default)]
        bucket: Option<String>,
        /// Only keys under this prefix (listing, and notifications when `bucket` is given). Default: all.
        #[serde(default)]
        prefix: String,
        /// How an object becomes records: `"lines"` (one per non-blank line, e.g. JSON lines; the default),
        /// `"csv"` (a header row, then one record per row as a JSON object of the header's names) or
        /// `"whole"` (the object is one record). gzip objects (`Content-Encoding: gzip`, a `.gz` key, or gzip
        /// bytes) are decompressed as they are read.
        #[serde(default)]
        format: ObjectFormat,
        /// An object is read in ranged GETs of this many bytes. Default 8 MiB.
        #[serde(default = "default_range_bytes")]
        range_bytes: u64,
        /// The largest record, in bytes: a longer line (or `whole` object) is handed to the rule cut to this
        /// size, with the attribute `s3:truncated` giving its length. Default 8 MiB.
        #[serde(default = "default_max_record_bytes")]
        max_record_bytes: usize,
        /// Long-poll wait per receive call, in seconds (0–20). Default 20.
        #[serde(default = "default_wait_secs")]
        wait_secs: i32,
        /// How long a received notification stays invisible, in seconds; extended while its objects are read
        /// and loaded. Default 60.
        #[serde(default = "default_visibility_timeout_secs")]
        visibility_timeout_secs: i32,
        /// Stop when no notification has arrived for this many seconds and the queue was found empty.
        /// Default: never (a listing always ends after its last object).
        #[serde(default)]
        idle_exit_secs: Option<u64>,
        /// An endpoint for this source's S3 and SQS calls (a VPC endpoint, a local server); default `[aws]
        /// endpoint_url`, else AWS.
        #[serde(default)]
        endpoint_url: Option<String>,
        /// An IAM role this source's calls assume instead of `[aws] role_arn`.
        #[serde(default)]
        role_arn: Option<String>,
        /// The external id the role's trust policy requires.
        #[serde(default)]
        external_id: Option<String>,
    },
}

/// The HTTP endpoint's settings: `[source]` of kind `http`, or `[serve]` of a forwarding tier (`weir serve` in
/// front of the Kinesis stream or SQS queue of `[source]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The address to listen on, e.g. `0.0.0.0:8080` (port 0 picks a free port). Default `0.0.0.0:8080`.
    #[serde(default = "default_http_bind")]
    pub bind: String,
    /// The largest request body, in bytes, after gzip decoding. Default 16 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The shared secret clients must present: `Authorization: Bearer {auth}` on `/v1/records`, Firehose's
    /// access key (`X-Amz-Firehose-Access-Key`) on `/v1/firehose`. Use `${secretsmanager:…}` or `${ENV}`.
    /// Default: none (any client on the network may send; only behind a private load balancer).
    #[serde(default)]
    pub auth: Option<String>,
    /// Records received but not yet committed, at most; a request that would pass it is answered 429 with
    /// `Retry-After`. Default 100000.
    #[serde(default = "default_max_pending_records")]
    pub max_pending_records: usize,
    /// Payload bytes received but not yet committed, at most (as `max_pending_records`). Default 256 MiB.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// How long a request waits for its records' commit before it is answered 503; they still commit, and
    /// a retry with the same request id is idempotent. Default 60 seconds.
    #[serde(default = "default_commit_timeout_secs")]
    pub commit_timeout_secs: u64,
    /// This server's name in record ids (`http/{node}/{request id}/{n}`) and RAW keys. Give each server
    /// behind a load balancer its own stable name. Default: the host name.
    #[serde(default)]
    pub node: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: default_http_bind(),
            max_body_bytes: default_max_body_bytes(),
            auth: None,
            max_pending_records: default_max_pending_records(),
            max_pending_bytes: default_max_pending_bytes(),
            commit_timeout_secs: default_commit_timeout_secs(),
            node: None,
        }
    }
}

/// `format` of an S3 source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ObjectFormat {
    /// One record per non-blank line.
    #[default]
    Lines,
    /// A header row, then one record per row (a JSON object of the header's names).
    Csv,
    /// The whole object is one record.
    Whole,
}

impl<'de> Deserialize<'de> for ObjectFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "lines" => Ok(ObjectFormat::Lines),
            "csv" => Ok(ObjectFormat::Csv),
            "whole" => Ok(ObjectFormat::Whole),
            other => Err(serde::de::Error::custom(format!(
                "format `{other}`: use \"lines\", \"csv\" or \"whole\""
            ))),
        }
    }
}

impl SourceConfig {
    /// The source's own IAM role (`role_arn`, `external_id`), when it names one.
    pub fn role(&self) -> crate::aws::Role {
        match self {
            SourceConfig::Sqs {
                role_arn,
                external_id,
                ..
            }
            | SourceConfig::S3 {
                role_arn,
                external_id,
                ..
            }
            | SourceConfig::Kinesis {
                role_arn,
                external_id,
                ..
            } => crate::aws::Role {
                role_arn: role_arn.clone(),
                external_id: external_id.clone(),
            },
            SourceConfig::File { .. } | SourceConfig::Http(_) => crate::aws::Role::default(),
        }
    }

    /// The source's own AWS endpoint override, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        match self {
            SourceConfig::Sqs { endpoint_url, .. }
            | SourceConfig::Kinesis { endpoint_url, .. }
            | SourceConfig::S3 { endpoint_url, .. } => endpoint_url.as_deref(),
            SourceConfig::File { .. } | SourceConfig::Http(_) => None,
        }
    }
}

/// `initial_position` of a Kinesis source: where a shard without checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record the stream keeps (the default).
    #[default]
    TrimHorizon,
    /// Only records written after the shard is first opened.
    Latest,
    /// Records written at or after `initial_timestamp`.
    AtTimestamp,
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // By hand, so that the message names the field (inside the tagged `[source]`, serde's would not).
        let text = String::deserialize(d)?;
        match text.as_str() {
            "trim_horizon" => Ok(StartAt::TrimHorizon),
            "latest" => Ok(StartAt::Latest),
            "at_timestamp" => Ok(StartAt::AtTimestamp),
            other => Err(serde::de::Error::custom(format!(
                "initial_position `{other}`: use \"trim_horizon\", \"latest\" or \"at_timestamp\""
            ))),
        }
    }
}

/// An RFC 3339 time in a config file, e.g. `2026-11-21T00:00:00Z`, parsed once, as milliseconds since the
/// epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339 {
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
}

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| Rfc3339 {
                ms: t.timestamp_millis(),
            })
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "initial_timestamp `{text}` is not an RFC 3339 time such as `2026-11-21T00:00:00Z`"
                ))
            })
    }
}

/// Where a Kinesis shard without checkpoint starts, `initial_position` and `initial_timestamp` taken
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record kept.
    TrimHorizon,
    /// Only records written after the reader starts.
    Latest,
    /// Records written at or after this time (ms since the epoch).
    AtTimestamp(i64),
}

impl InitialPosition {
    /// Pairs `initial_position` with `initial_timestamp`: a timestamp exactly when the position is
    /// `at_timestamp`.
    pub fn from_config(
        position: StartAt,
        timestamp: Option<Rfc3339>,
    ) -> Result<InitialPosition, ConfigError> {
        match (position, timestamp) {
            (StartAt::TrimHorizon, None) => Ok(InitialPosition::TrimHorizon),
            (StartAt::Latest, None) => Ok(InitialPosition::Latest),
            (StartAt::AtTimestamp, Some(t)) => Ok(InitialPosition::AtTimestamp(t.ms)),
            (StartAt::AtTimestamp, None) => Err(ConfigError::field(
                "source.initial_timestamp",
                "missing; `initial_position = \"at_timestamp\"` needs it",
            )),
            (_, Some(_)) => Err(ConfigError::field(
                "source.initial_timestamp",
                "only used with `initial_position = \"at_timestamp\"`; remove it",
            )),
        }
    }
}

pub(super) fn default_max_records_per_call() -> i32 {
    10_000
}

pub(super) fn default_poll_ms() -> u64 {
    250
}

pub(super) fn default_lease_secs() -> u64 {
    30
}

pub(super) fn default_renew_secs() -> u64 {
    10
}

/// The machine's cores (the defaults of the concurrency settings follow it).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(super) fn default_http_bind() -> String {
    "0.0.0.0:8080".into()
}

pub(super) fn default_max_body_bytes() -> usize {
    16 << 20
}

pub(super) fn default_max_pending_records() -> usize {
    100_000
}

pub(super) fn default_max_pending_bytes() -> usize {
    256 << 20
}

pub(super) fn default_commit_timeout_secs() -> u64 {
    60
}

pub(super) fn default_range_bytes() -> u64 {
    8 << 20
}

pub(super) fn default_max_record_bytes() -> usize {
    8 << 20
}

pub(super) fn default_receivers() -> usize {
    (2 * cores()).max(4)
}

pub(super) fn default_wait_secs() -> i32 {
    20
}

pub(super) fn default_max_messages() -> i32 {
    10
}

pub(super) fn default_visibility_timeout_secs() -> i32 {
    60
}

/// Checks what serde cannot, and parses the declared tables.
pub(super) fn check_source(
    source: &SourceConfig,
    aws: &crate::aws::AwsConfig,
) -> Result<(), ConfigError> {
    match source {
        SourceConfig::File { path, name } => {
            if path.is_empty() {
                return Err(ConfigError::field(
                    "source.path",
                    "is empty; give a file, or `-` for standard input",
                ));
            }
            if let Some(name) = name
                && (name.is_empty() || name.contains('/'))
            {
                return Err(ConfigError::field(
                    "source.name",
                    "must be non-empty and contain no `/`",
                ));
            }
        }
        SourceConfig::Sqs { .. } => check_sqs(source, aws)?,
        SourceConfig::Kinesis { .. } => check_kinesis(source)?,
        SourceConfig::Http(http) => check_http(http, "source")?,
        SourceConfig::S3 { .. } => check_s3(source, aws)?,
    }
    if let Some(url) = source.endpoint_url() {
        check_endpoint_url("source.endpoint_url", url)?;
    }
    Ok(())
}

/// `[source]` of kind `http`, or `[serve]` (`section` names which in messages).
pub(super) fn check_http(http: &HttpConfig, section: &str) -> Result<(), ConfigError> {
    let HttpConfig {
        bind,
        max_body_bytes,
        auth,
        max_pending_records,
        max_pending_bytes,
        commit_timeout_secs,
        node,
    } = http;
    let field = |name: &str| format!("{section}.{name}");
    if bind.parse::<std::net::SocketAddr>().is_err() {
        return Err(ConfigError::field(
            field("bind"),
            format!("`{bind}` is not an address and port such as `0.0.0.0:8080`"),
        ));
    }
    if !(1024..=1 << 30).contains(max_body_bytes) {
        return Err(ConfigError::field(
            field("max_body_bytes"),
            format!("{max_body_bytes} is out of range; use 1024 to 1073741824 bytes (1 GiB)"),
        ));
    }
    if auth
        .as_deref()
        .is_some_and(|a| a.is_empty() || a.len() > 4096)
    {
        return Err(ConfigError::field(
            field("auth"),
            "must be 1 to 4096 bytes (Firehose's limit for its access key); leave it out to accept any client",
        ));
    }
    if *max_pending_records == 0 {
        return Err(ConfigError::field(
            field("max_pending_records"),
            "must be at least 1",
        ));
    }
    if *max_pending_bytes < *max_body_bytes {
        return Err(ConfigError::field(
            field("max_pending_bytes"),
            format!(
                "{max_pending_bytes} is less than max_body_bytes ({max_body_bytes}): a full-sized \
                 request could never be taken; make it at least as large"
            ),
        ));
    }
    if *commit_timeout_secs == 0 {
        return Err(ConfigError::field(
            field("commit_timeout_secs"),
            "must be at least 1 (seconds)",
        ));
    }
    if let Some(node) = node
        && !crate::source::valid_id(node, MAX_NODE_BYTES)
    {
        return Err(ConfigError::field(
            field("node"),
            format!(
                "`{node}` must be 1 to {MAX_NODE_BYTES} letters, digits, `.`, `_`, `:` or `-` (it is part of \
                 every record id)"
            ),
        ));
    }
    Ok(())
}

/// `[source]` of kind `s3`.
fn check_s3(source: &SourceConfig, aws: &crate::aws::AwsConfig) -> Result<(), ConfigError> {
    let SourceConfig::S3 {
        queue_url,
        bucket,
        range_bytes,
        max_record_bytes,
        wait_secs,
        visibility_timeout_secs,
        idle_exit_secs,
        ..
    } = source
    else {
        return Ok(());
    };
    match (queue_url, bucket) {
        (None, None) => {
            return Err(ConfigError::field(
                "source.queue_url",
                "is missing: give the SQS queue the bucket's event notifications go to, or `bucket` (and \
                 `prefix`) to read the objects there once",
            ));
        }
        // One receiver taking one notification at a time (worker::run_pipeline).
        (Some(url), _) => check_queue(
            url,
            1,
            *wait_secs,
            1,
            *visibility_timeout_secs,
            *idle_exit_secs,
            aws,
        )?,
        (None, Some(_)) => {}
    }
    if let Some(b) = bucket
        && (b.len() < 3 || b.len() > 63 || b.contains('/'))
    {
        return Err(ConfigError::field(
            "source.bucket",
            format!(
                "`{b}` is not a bucket name (3 to 63 characters, no `/`; the key prefix goes in `prefix`)"
            ),
        ));
    }
    if !((64 << 10)..=(1 << 30)).contains(range_bytes) {
        return Err(ConfigError::field(
            "source.range_bytes",
            format!("{range_bytes} is out of range; use 65536 (64 KiB) to 1073741824 (1 GiB)"),
        ));
    }
    if !(1024..=(256 << 20)).contains(max_record_bytes) {
        return Err(ConfigError::field(
            "source.max_record_bytes",
            format!("{max_record_bytes} is out of range; use 1024 to 268435456 (256 MiB)"),
        ));
    }
    Ok(())
}

/// Longest `[source] node` of an HTTP source, in bytes.
pub const MAX_NODE_BYTES: usize = 64;

/// `[source]` of kind `sqs`.
fn check_sqs(source: &SourceConfig, aws: &crate::aws::AwsConfig) -> Result<(), ConfigError> {
    let SourceConfig::Sqs {
        queue_url,
        receivers,
        wait_secs,
        max_messages,
        visibility_timeout_secs,
        idle_exit_secs,
        ..
    } = source
    else {
        return Ok(());
    };
    check_queue(
        queue_url,
        *receivers,
        *wait_secs,
        *max_messages,
        *visibility_timeout_secs,
        *idle_exit_secs,
        aws,
    )
}

/// A queue's settings (`[source]` of kind `sqs`, or the notifications' queue of kind `s3`).
fn check_queue(
    queue_url: &str,
    receivers: usize,
    wait_secs: i32,
    max_messages: i32,
    visibility_timeout_secs: i32,
    idle_exit_secs: Option<u64>,
    aws: &crate::aws::AwsConfig,
) -> Result<(), ConfigError> {
    let name = queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if !(queue_url.starts_with("https://") || queue_url.starts_with("http://")) || name.is_empty() {
        return Err(ConfigError::field(
            "source.queue_url",
            format!(
                "`{queue_url}` is not a queue URL; use the URL SQS shows for the queue, e.g. \
                     `https://sqs.eu-west-1.amazonaws.com/123456789012/orders`"
            ),
        ));
    }
    if !(1..=64).contains(&receivers) {
        return Err(ConfigError::field(
            "source.receivers",
            format!("{receivers} is out of range; use 1 to 64"),
        ));
    }
    if !(0..=20).contains(&wait_secs) {
        return Err(ConfigError::field(
            "source.wait_secs",
            format!("{wait_secs} is out of range; SQS long polls wait 0 to 20 seconds"),
        ));
    }
    if aws.read_timeout_secs <= wait_secs as u64 {
        return Err(ConfigError::field(
            "aws.read_timeout_secs",
            format!(
                "{} s is not longer than source.wait_secs ({wait_secs} s): every long poll would time \
                     out; make it longer than the wait",
                aws.read_timeout_secs
            ),
        ));
    }
    if !(1..=10).contains(&max_messages) {
        return Err(ConfigError::field(
            "source.max_messages",
            format!("{max_messages} is out of range; SQS returns 1 to 10 messages per call"),
        ));
    }
    if !(2..=43_200).contains(&visibility_timeout_secs) {
        return Err(ConfigError::field(
            "source.visibility_timeout_secs",
            format!("{visibility_timeout_secs} is out of range; use 2 to 43200 seconds (12 hours)"),
        ));
    }
    if idle_exit_secs == Some(0) {
        return Err(ConfigError::field(
            "source.idle_exit_secs",
            "must be at least 1 (seconds); leave it out to run until stopped",
        ));
    }
    Ok(())
}

/// `[source]` of kind `kinesis`.
fn check_kinesis(source: &SourceConfig) -> Result<(), ConfigError> {
    let SourceConfig::Kinesis {
        stream,
        stream_arn,
        initial_position,
        initial_timestamp,
        max_records_per_call,
        poll_ms,
        lease_secs,
        renew_secs,
        idle_exit_secs,
        ..
    } = source
    else {
        return Ok(());
    };
    if let Some(arn) = stream_arn {
        match stream_name_of_arn(arn) {
            None => {
                return Err(ConfigError::field(
                    "source.stream_arn",
                    format!(
                        "{arn:?} is not a Kinesis stream ARN; write \
                         `arn:aws:kinesis:{{region}}:{{account}}:stream/{{name}}`"
                    ),
                ));
            }
            Some(name) if !stream.is_empty() && stream != name => {
                return Err(ConfigError::field(
                    "source.stream",
                    format!(
                        "{stream:?} is not the stream source.stream_arn names ({name:?}); leave \
                         source.stream out"
                    ),
                ));
            }
            Some(_) => {}
        }
    } else if stream.is_empty() || stream.contains('/') {
        return Err(ConfigError::field(
            "source.stream",
            "must be the stream's name (not its ARN), e.g. `stream = \"orders\"`; for a stream in \
             another account set source.stream_arn instead",
        ));
    }
    InitialPosition::from_config(*initial_position, *initial_timestamp)?;
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
    Ok(())
}

/// The stream name an ARN `arn:{partition}:kinesis:{region}:{account}:stream/{name}` ends with.
pub fn stream_name_of_arn(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [scheme, partition, service, region, account, resource] = parts[..] else {
        return None;
    };
    let name = resource.strip_prefix("stream/")?;
    let ok = scheme == "arn"
        && partition.starts_with("aws")
        && service == "kinesis"
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.contains('/');
    ok.then_some(name)
}

impl SourceConfig {
    /// A Kinesis source configured by `stream_arn` alone takes the stream's name from it.
    pub(super) fn name_the_stream(&mut self) {
        if let SourceConfig::Kinesis {
            stream,
            stream_arn: Some(arn),
            ..
        } = self
            && stream.is_empty()
            && let Some(name) = stream_name_of_arn(arn)
        {
            *stream = name.to_string();
        }
    }
}
