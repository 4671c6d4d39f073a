//! Builds the pieces of a worker from a loaded configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Loaded, RawConfig, SinkKind, SourceConfig};
use crate::pipeline::{Pipeline, PipelineError, Stages, Summary};
use crate::raw::{RawError, RawStore, local::LocalRaw};
use crate::rules::{RuleError, RuleLimits, RulePlugin, RuleRuntime};
use crate::sink::{SinkError, Warehouse, sqlite::SqliteSink};
use crate::source::{Source, SourceError, file::FileSource};

/// A failure to start or run a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The rule could not be loaded.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The sink could not be opened or prepared.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The source could not be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The RAW store could not be opened.
    #[error(transparent)]
    Raw(#[from] RawError),
    /// The pipeline stopped.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A fleet worker stopped.
    #[cfg(feature = "kinesis")]
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// The configuration does not hold (for a `Loaded` built without `config::load`'s checks).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The rule could not be kept in the plugin store (`[rule] store`).
    #[error(
        "{0}; reconcile needs every rule version that loads data: fix [rule] store or its permissions"
    )]
    PluginStore(String),
}

/// Keeps the configuration's rule in its plugin store, trying `attempts` times.
pub async fn store_rule(
    loaded: &Loaded,
    rule: &RulePlugin,
    attempts: u32,
) -> Result<(), WorkerError> {
    let Some(store) = crate::plugin_store::PluginStore::open(loaded).await else {
        return Ok(());
    };
    let wasm = std::fs::read(rule.path()).map_err(|e| WorkerError::PluginStore(e.to_string()))?;
    store
        .put(rule.digest(), &wasm, attempts)
        .await
        .map_err(WorkerError::PluginStore)
}

/// The sandbox limits of a configuration's rule.
pub fn rule_limits(loaded: &Loaded) -> RuleLimits {
    let r = &loaded.config.rule;
    RuleLimits {
        memory_bytes: (r.memory_limit_mib as usize) << 20,
        deadline: Duration::from_millis(r.batch_deadline_ms),
        max_rows_per_record: r.max_rows_per_record,
        tables: std::sync::Arc::new(loaded.tables.clone()),
    }
}

/// The `[rule] settings` of a configuration.
pub fn rule_settings(loaded: &Loaded) -> Vec<(String, String)> {
    loaded
        .config
        .rule
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Loads the rule of a configuration: a local file, or a remote plugin fetched (or found in the cache) and
/// verified against `[rule] sha256` first.
pub async fn load_rule(runtime: &RuleRuntime, loaded: &Loaded) -> Result<RulePlugin, RuleError> {
    let fetched = crate::plugin_fetch::fetch(loaded, runtime.cache_dir()).await?;
    runtime.load_bytes(
        &fetched.label,
        &fetched.name,
        &fetched.wasm,
        rule_limits(loaded),
        rule_settings(loaded),
    )
}

/// The rule runtime for a configuration (its cache directory).
pub fn runtime(loaded: &Loaded) -> Result<RuleRuntime, RuleError> {
    let cache = loaded
        .config
        .rule
        .cache_dir
        .clone()
        .or_else(RuleRuntime::default_cache_dir);
    RuleRuntime::new(cache)
}

/// Connects to the sink without touching its tables.
pub async fn connect_sink(loaded: &Loaded) -> Result<Arc<dyn Warehouse>, SinkError> {
    Ok(match loaded.config.sink.kind {
        SinkKind::Sqlite => {
            let path = loaded.config.sink.path.as_ref().expect("checked by config");
            Arc::new(SqliteSink::open(path).await?)
        }
        #[cfg(not(feature = "postgres"))]
        SinkKind::Postgres | SinkKind::Redshift => {
            return Err(postgres_not_compiled());
        }
        #[cfg(feature = "postgres")]
        SinkKind::Postgres | SinkKind::Redshift => Arc::new(database_sink(loaded)?),
    })
}

/// A PostgreSQL or Redshift sink in a build without the `postgres` feature.
#[cfg(not(feature = "postgres"))]
fn postgres_not_compiled() -> SinkError {
    SinkError::Permanent(crate::config::not_compiled(
        "sink.kind",
        "postgres/redshift",
        "postgres",
    ))
}

/// The PostgreSQL / Redshift sink of the configuration, not connected yet.
#[cfg(feature = "postgres")]
fn database_sink(loaded: &Loaded) -> Result<crate::sink::redshift::RedshiftSink, SinkError> {
    let url = loaded
        .config
        .sink
        .url
        .as_deref()
        .expect("checked by config");
    crate::sink::redshift::RedshiftSink::new(url, database_options(loaded))
}

/// The PostgreSQL / Redshift sink's connection options from the configuration.
#[cfg(feature = "postgres")]
fn database_options(loaded: &Loaded) -> crate::sink::redshift::RedshiftOptions {
    let sink = &loaded.config.sink;
    crate::sink::redshift::RedshiftOptions {
        schema: sink.schema.clone(),
        redshift: sink.kind == SinkKind::Redshift,
        tls_ca_file: sink.tls_ca_file.clone(),
        connections: sink.connections,
        iam: sink.iam.clone(),
        stage_fill: sink.stage_fill.clone(),
        aws: match &sink.iam {
            Some(iam) => loaded.config.aws.with_role(&iam.role()),
            None => loaded.config.aws.clone(),
        },
        merge: sink.merge,
        connect_timeout: std::time::Duration::from_secs(sink.connect_timeout_secs.max(1)),
        call_timeout: std::time::Duration::from_secs(sink.call_timeout_secs.max(1)),
    }
}

/// Grouped commits (`[sink.group_commit] enabled = true`): what the pipelines stage and register through, and
/// this worker's loader. The sink's tables exist already ([`open_sink`]).
pub async fn open_group(
    loaded: &Loaded,
    coordination: Option<&Coordination>,
) -> Result<Option<(crate::group::GroupCommit, crate::group::loader::Loader)>, SinkError> {
    use crate::config::StagingConfig;
    use crate::group::{GroupCommit, Staging, loader};
    use crate::sink::Sink as _;
    use crate::sink::group::{GroupWarehouse, Registry};
    let g = &loaded.config.sink.group_commit;
    if !g.on() {
        return Ok(None);
    }
    // The loader's warehouse, and the registry it keeps when there is no coordinator of its own.
    let (sink, own_registry): (Arc<dyn GroupWarehouse>, Arc<dyn Registry>) =
        match loaded.config.sink.kind {
            SinkKind::Sqlite => {
                let path = loaded.config.sink.path.as_ref().expect("checked by config");
                let sink = Arc::new(SqliteSink::open(path).await?);
                sink.prepare(&loaded.tables, false).await?;
                preparing(|| sink.prepare_fence()).await?;
                if coordination.is_none() {
                    preparing(|| sink.prepare_registry()).await?;
                }
                (sink.clone(), sink)
            }
            #[cfg(not(feature = "postgres"))]
            SinkKind::Postgres | SinkKind::Redshift => {
                return Err(postgres_not_compiled());
            }
            #[cfg(feature = "postgres")]
            SinkKind::Postgres | SinkKind::Redshift => {
                let sink = Arc::new(database_sink(loaded)?);
                sink.prepare(&loaded.tables, false).await?;
                preparing(|| sink.prepare_fence()).await?;
                if coordination.is_none() {
                    preparing(|| sink.prepare_registry()).await?;
                }
                (sink.clone(), sink)
            }
        };
    let registry: Arc<dyn Registry> = match coordination {
        Some(c) => c.registry.clone(),
        None => own_registry,
    };
    let staging: Arc<dyn Staging> = match &g.staging() {
        StagingConfig::Local { dir } => {
            Arc::new(crate::group::staging::LocalStaging::new(dir.clone()))
        }
        #[cfg(feature = "s3")]
        StagingConfig::S3 { bucket, prefix } => Arc::new(crate::group::staging::S3Staging::new(
            loaded.config.aws.s3().await,
            bucket.clone(),
            prefix.clone(),
        )),
        #[cfg(not(feature = "s3"))]
        StagingConfig::S3 { .. } => unreachable!("refused by config::check_features"),
    };
    let interval = Duration::from_millis(g.interval_ms);
    let group = GroupCommit {
        staging: staging.clone(),
        registry: registry.clone(),
        warehouse: sink.clone(),
        // Fates are asked for several times per interval, so that a merged batch is acknowledged soon after.
        settle_poll: (interval / 5).clamp(Duration::from_millis(20), Duration::from_secs(1)),
        // Enough for several intervals of batches: staged batches wait slimmed (ids and positions only).
        max_in_flight: g.max_batches.max(1),
    };
    let loader = loader::Loader {
        registry,
        staging,
        warehouse: sink,
        tables: Arc::new(loaded.tables.clone()),
        retry: loaded.config.retry.clone(),
        options: loader::LoaderOptions {
            owner: crate::record::default_worker_id(),
            interval,
            max_batches: g.max_batches,
            max_bytes: g.max_bytes,
            lease: Duration::from_secs(g.lease_secs),
        },
        prefetched: Default::default(),
        cleanup: Default::default(),
    };
    Ok(Some((group, loader)))
}

/// The staged-batch registry of a configuration with grouped commits (`None` without them): the
/// coordinator's, else the sink's own (its table created when missing).
pub async fn open_registry(
    loaded: &Loaded,
    coordination: Option<&Coordination>,
) -> Result<Option<Arc<dyn crate::sink::group::Registry>>, SinkError> {
    if !loaded.config.sink.group_commit.on() {
        return Ok(None);
    }
    if let Some(c) = coordination {
        return Ok(Some(c.registry.clone()));
    }
    Ok(Some(match loaded.config.sink.kind {
        SinkKind::Sqlite => {
            let path = loaded.config.sink.path.as_ref().expect("checked by config");
            let sink = Arc::new(SqliteSink::open(path).await?);
            preparing(|| sink.prepare_registry()).await?;
            sink
        }
        #[cfg(not(feature = "postgres"))]
        SinkKind::Postgres | SinkKind::Redshift => return Err(postgres_not_compiled()),
        #[cfg(feature = "postgres")]
        SinkKind::Postgres | SinkKind::Redshift => {
            let sink = Arc::new(database_sink(loaded)?);
            preparing(|| sink.prepare_registry()).await?;
            sink
        }
    }))
}

/// The coordination of a configuration for reading: the sink's checkpoints, with the leases of
/// `[coordinator]` when it has one.
pub fn coordinator_view(
    sink: Arc<dyn Warehouse>,
    coordination: Option<&Coordination>,
) -> Arc<dyn crate::sink::Coordinator> {
    match coordination {
        Some(c) => Arc::new(crate::coordinator::SplitCoordinator::new(
            sink,
            c.leases.clone(),
        )),
        None => sink,
    }
}

/// A coordinator of its own (`[coordinator] kind = "postgres"` or `"dynamodb"`): the registry of grouped
/// commits and the partition leases, both outside the warehouse.
pub struct Coordination {
    /// The staged-batch registry and the loader lease.
    pub registry: Arc<dyn crate::sink::group::Registry>,
    /// Kinesis shard leases.
    pub leases: Arc<dyn crate::coordinator::LeaseStore>,
}

/// Opens `[coordinator]` (creating its tables when missing); `None` for `kind = "sink"`.
pub async fn open_coordination(loaded: &Loaded) -> Result<Option<Coordination>, SinkError> {
    use crate::config::CoordinatorConfig;
    match &loaded.config.coordinator {
        CoordinatorConfig::Sink => Ok(None),
        #[cfg(feature = "postgres")]
        CoordinatorConfig::Postgres { url, schema } => {
            let mut options = database_options(loaded);
            options.redshift = false;
            options.schema = schema.clone();
            options.iam = None;
            options.stage_fill = crate::config::StageFillConfig::Insert;
            let db = Arc::new(crate::sink::redshift::RedshiftSink::new(url, options)?);
            preparing(|| db.prepare_registry()).await?;
            Ok(Some(Coordination {
                registry: db.clone(),
                leases: Arc::new(crate::coordinator::CoordinatorLeases(db)),
            }))
        }
        #[cfg(feature = "dynamodb")]
        CoordinatorConfig::Dynamodb {
            table,
            endpoint_url,
            ..
        } => {
            let aws = loaded
                .config
                .aws
                .with_role(&loaded.config.coordinator.role());
            let client = aws.dynamodb(endpoint_url.as_deref()).await;
            let db = Arc::new(crate::coordinator::dynamodb::DynamoCoordinator::new(
                client,
                table.clone(),
            ));
            db.prepare().await?;
            Ok(Some(Coordination {
                registry: db.clone(),
                leases: db,
            }))
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("refused by config::check_features"),
    }
}

/// Opens the sink and prepares its tables (creates missing ones, checks existing ones).
pub async fn open_sink(loaded: &Loaded) -> Result<Arc<dyn Warehouse>, SinkError> {
    let sink = connect_sink(loaded).await?;
    preparing(|| sink.prepare(&loaded.tables, true)).await?;
    Ok(sink)
}

/// Runs a step that creates missing tables, again after a failure (a few times, with backoff): workers of a
/// fleet start together, two may create the same table at once, and the loser's CREATE fails (PostgreSQL
/// reports a duplicate catalog entry); the next attempt finds the table. A schema mismatch is final.
async fn preparing<T, F, Fut>(mut step: F) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(2))
            .with_attempts(5);
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(e @ SinkError::Schema(_)) => return Err(e),
            Err(e) => {
                let Some(wait) = backoff.next_delay() else {
                    return Err(e);
                };
                tracing::info!(error = %e, attempt = backoff.failures(), "preparing tables failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Connects to the sink and checks existing tables without creating anything; describes the result.
pub async fn check_sink(loaded: &Loaded) -> Result<String, SinkError> {
    let sink = connect_sink(loaded).await?;
    let missing = sink.prepare(&loaded.tables, false).await?;
    let mut text = if missing.is_empty() {
        format!("{}; tables match", sink.describe())
    } else {
        format!(
            "{}; tables match, not created yet (weir run creates them): {}",
            sink.describe(),
            missing.join(", ")
        )
    };
    for warning in sink
        .warnings()
        .into_iter()
        .chain(crate::config::warnings(&loaded.config))
    {
        text.push_str(&format!("\n  warning: {warning}"));
    }
    Ok(text)
}

/// Opens the RAW store (checking that an S3 bucket is reachable).
pub async fn open_raw(loaded: &Loaded) -> Result<Arc<dyn RawStore>, RawError> {
    Ok(match &loaded.config.raw {
        RawConfig::Local {
            dir,
            prefix,
            format,
        } => Arc::new(LocalRaw::new(dir.clone(), prefix.clone()).with_format(*format)),
        #[cfg(not(feature = "s3"))]
        RawConfig::S3 { .. } => {
            return Err(RawError::Io {
                store: "s3".into(),
                message: crate::config::not_compiled("raw.kind", "s3", "s3"),
            });
        }
        #[cfg(feature = "s3")]
        RawConfig::S3 {
            bucket,
            prefix,
            sse,
            kms_key_id,
            multipart_threshold_bytes,
            part_size_bytes,
            endpoint_url,
            format,
            ..
        } => {
            let aws = &loaded.config.aws.with_role(&loaded.config.raw.role());
            let sdk = aws.load().await;
            let client = match endpoint_url {
                Some(url) => aws.s3_at(&sdk, url),
                None => aws.s3_from(&sdk),
            };
            use crate::raw::s3::{S3Options, S3Raw};
            let store = S3Raw::new(
                client,
                S3Options {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    sse: *sse,
                    kms_key_id: kms_key_id.clone(),
                    multipart_threshold_bytes: *multipart_threshold_bytes,
                    part_size_bytes: *part_size_bytes,
                    format: *format,
                },
            );
            store.check().await?;
            Arc::new(store)
        }
        #[cfg(not(feature = "mongodb"))]
        RawConfig::Mongodb { .. } => {
            return Err(RawError::Io {
                store: "mongodb".into(),
                message: crate::config::not_compiled("raw.kind", "mongodb", "mongodb"),
            });
        }
        #[cfg(feature = "mongodb")]
        RawConfig::Mongodb {
            uri,
            database,
            collection,
        } => Arc::new(crate::raw::mongo::MongoRaw::connect(uri, database, collection).await?),
    })
}

/// Opens the source.
pub async fn open_source(loaded: &Loaded) -> Result<Box<dyn Source>, SourceError> {
    match &loaded.config.source {
        SourceConfig::File { path, name } => {
            Ok(Box::new(FileSource::open(path, name.clone()).await?))
        }
        #[cfg(not(feature = "sqs"))]
        SourceConfig::Sqs { .. } => Err(SourceError::Io {
            source_name: "sqs".into(),
            message: crate::config::not_compiled("source.kind", "sqs", "sqs"),
        }),
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs {
            queue_url,
            receivers,
            wait_secs,
            max_messages,
            visibility_timeout_secs,
            idle_exit_secs,
            ..
        } => {
            use crate::source::sqs::{SqsOptions, SqsSource};
            let client = loaded.config.source_sqs().await;
            let options = SqsOptions {
                queue_url: queue_url.clone(),
                receivers: *receivers,
                wait_secs: *wait_secs,
                max_messages: *max_messages,
                visibility_timeout_secs: *visibility_timeout_secs,
                idle_exit: idle_exit_secs.map(Duration::from_secs),
            };
            Ok(Box::new(SqsSource::open(client, options).await?))
        }
        #[cfg(not(feature = "http"))]
        SourceConfig::Http(_) => Err(SourceError::Io {
            source_name: "http".into(),
            message: crate::config::not_compiled("source.kind", "http", "http"),
        }),
        #[cfg(feature = "http")]
        SourceConfig::Http(http) => Ok(Box::new(
            crate::source::http::HttpSource::open(http_options(http)).await?,
        )),
        SourceConfig::S3 { .. } => Err(SourceError::Io {
            source_name: "s3".into(),
            message: if cfg!(feature = "s3-source") {
                "an S3 source runs one pipeline per object (worker::run)".into()
            } else {
                crate::config::not_compiled("source.kind", "s3", "s3-source")
            },
        }),
        SourceConfig::Kinesis { stream, .. } => Err(SourceError::Io {
            source_name: format!("kinesis stream {stream}"),
            message: "a Kinesis source runs one reader per leased shard (worker::run)".into(),
        }),
    }
}

/// The HTTP server's options from `[source]` (kind `http`) or `[serve]`.
#[cfg(feature = "http")]
pub fn http_options(http: &crate::config::HttpConfig) -> crate::source::http::HttpOptions {
    crate::source::http::HttpOptions {
        bind: http.bind.clone(),
        max_body_bytes: http.max_body_bytes,
        auth: http.auth.clone(),
        max_pending_records: http.max_pending_records,
        max_pending_bytes: http.max_pending_bytes,
        commit_timeout: Duration::from_secs(http.commit_timeout_secs),
        node: http.node.clone().unwrap_or_else(default_node),
    }
}

/// Runs a forwarding tier (`weir serve` with a Kinesis or SQS `[source]`) until `stop` resolves.
#[cfg(feature = "http")]
pub async fn serve_forwarding(
    loaded: &Loaded,
    http: &crate::config::HttpConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    use crate::source::http::Forward;
    let forward: Arc<dyn Forward> = match &loaded.config.source {
        #[cfg(feature = "kinesis")]
        SourceConfig::Kinesis {
            stream, stream_arn, ..
        } => Arc::new(crate::source::http::KinesisForward {
            client: loaded.config.source_kinesis().await,
            stream: stream.clone(),
            stream_arn: stream_arn.clone(),
        }),
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs { queue_url, .. } => Arc::new(crate::source::http::SqsForward {
            client: loaded.config.source_sqs().await,
            queue_url: queue_url.clone(),
            group_id: http.node.clone().unwrap_or_else(default_node),
        }),
        _ => {
            return Err(WorkerError::Source(SourceError::Io {
                source_name: "http".into(),
                message: "a forwarding tier puts records into the Kinesis stream or SQS queue of [source]; this [source] is neither (or not in this build)".into(),
            }));
        }
    };
    Ok(crate::source::http::serve_forwarding(http_options(http), forward, stop).await?)
}

/// An HTTP source's default node name: the host name, cut to what a record id takes.
#[cfg(feature = "http")]
fn default_node() -> String {
    let name: String = crate::record::host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(crate::config::MAX_NODE_BYTES)
        .collect();
    name
}

/// How a worker's run ended.
#[derive(Debug)]
pub enum Stopped {
    /// The input ended, or the drain after a stop request finished: everything read was committed and
    /// acknowledged, or given back.
    Finished(Box<Summary>),
    /// The drain was cut short (the grace period passed, or a second request came). Safe: nothing is
    /// acknowledged before its commit, so the next start resumes from the checkpoints.
    Forced(String),
}

/// Runs one worker with a graceful shutdown in two phases: until the input ends or `stop` resolves; then,
/// reading stopped, the in-flight batches drain for at most `grace` or until `force` resolves, whichever comes
/// first (leases are released and SQS messages given back as the pipelines end).
pub async fn run_until(
    loaded: &Loaded,
    stop: impl std::future::Future<Output = ()>,
    force: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> Result<Stopped, WorkerError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let run = run(loaded, rx);
    tokio::pin!(run);
    tokio::select! {
        done = &mut run => return done.map(|s| Stopped::Finished(Box::new(s))),
        _ = stop => {}
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "signal received: finishing the in-flight batches and releasing leases (signal again to exit at once)"
    );
    crate::admin::set_ready(false);
    let _ = tx.send(true);
    tokio::select! {
        done = &mut run => done.map(|s| Stopped::Finished(Box::new(s))),
        _ = force => Ok(Stopped::Forced("second signal: exiting now".into())),
        _ = tokio::time::sleep(grace) => Ok(Stopped::Forced(format!(
            "shutdown_grace_secs ({}) passed before the in-flight batches committed: exiting now",
            grace.as_secs()
        ))),
    }
}

/// Runs one worker to the end of its input or until `shutdown`.
pub async fn run(
    loaded: &Loaded,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Summary, WorkerError> {
    for warning in crate::config::warnings(&loaded.config) {
        tracing::warn!("{warning}");
    }
    let runtime = runtime(loaded)?;
    let rule = Arc::new(load_rule(&runtime, loaded).await?);
    let sink = open_sink(loaded).await?;
    let raw = open_raw(loaded).await?;
    // The rule goes to the plugin store in the background, so that a store that is unreachable at start (an
    // S3 outage: RAW in the same bucket cannot be written either, so nothing commits meanwhile) does not stop
    // the worker; the run waits for it at the end.
    let stored = {
        let (loaded, rule) = (loaded.clone(), rule.clone());
        tokio::spawn(async move {
            if let Err(e) = store_rule(&loaded, &rule, u32::MAX).await {
                tracing::error!(error = %e, "the rule is not in the plugin store");
            }
        })
    };
    let coordination = open_coordination(loaded).await?;
    let group = open_group(loaded, coordination.as_ref()).await?;
    // The loader runs beside the pipelines until they have ended (their last batches need a merge), then gives
    // its lease up for the workers still running.
    let (stop_loader, loader_stop) = tokio::sync::watch::channel(false);
    let (group, loader) = match group {
        Some((g, l)) => (
            Some(g),
            Some(tokio::spawn(async move { l.run(loader_stop).await })),
        ),
        None => (None, None),
    };
    crate::admin::set_ready(true);
    // With a coordinator of its own, leases live there and checkpoints stay in the warehouse.
    let coordinator = coordinator_view(sink.clone(), coordination.as_ref());
    let summary = run_pipeline(loaded, rule, (sink, coordinator), raw, group, shutdown).await;
    crate::admin::set_ready(false);
    let _ = stop_loader.send(true);
    if let Some(loader) = loader {
        let _ = loader.await;
    }
    if tokio::time::timeout(Duration::from_secs(10), stored)
        .await
        .is_err()
    {
        tracing::warn!(
            "the plugin store is still unreachable; this rule version may be missing from it"
        );
    }
    summary
}

async fn run_pipeline(
    loaded: &Loaded,
    rule: Arc<RulePlugin>,
    (sink, coordinator): (Arc<dyn Warehouse>, Arc<dyn crate::sink::Coordinator>),
    raw: Arc<dyn RawStore>,
    group: Option<crate::group::GroupCommit>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Summary, WorkerError> {
    let stages = Stages {
        raw,
        rule,
        sink,
        coordinator,
        tables: Arc::new(loaded.tables.clone()),
        batch: loaded.config.batch.clone(),
        retry: loaded.config.retry.clone(),
        max_rows_per_record: loaded.config.rule.max_rows_per_record,
        rule_instances: loaded.config.rule.instances,
        group,
    };
    #[cfg(not(feature = "kinesis"))]
    if let SourceConfig::Kinesis { .. } = &loaded.config.source {
        return Err(WorkerError::Source(SourceError::Io {
            source_name: "kinesis".into(),
            message: crate::config::not_compiled("source.kind", "kinesis", "kinesis"),
        }));
    }
    #[cfg(feature = "kinesis")]
    if let SourceConfig::Kinesis {
        stream,
        stream_arn,
        initial_position,
        initial_timestamp,
        max_records_per_call,
        poll_ms,
        lease_secs,
        renew_secs,
        worker_id,
        idle_exit_secs,
        ..
    } = &loaded.config.source
    {
        let options = crate::fleet::FleetOptions {
            stream: stream.clone(),
            worker_id: worker_id
                .clone()
                .unwrap_or_else(crate::fleet::default_worker_id),
            lease: Duration::from_secs(*lease_secs),
            renew: Duration::from_secs(*renew_secs),
            reader: crate::source::kinesis::ShardOptions {
                stream: stream.clone(),
                stream_arn: stream_arn.clone(),
                shard: String::new(),
                initial: crate::config::InitialPosition::from_config(
                    *initial_position,
                    *initial_timestamp,
                )?,
                max_records_per_call: *max_records_per_call,
                poll: Duration::from_millis(*poll_ms),
                idle_exit: idle_exit_secs.map(Duration::from_secs),
                fresh_pin: false,
            },
        };
        let client = loaded.config.source_kinesis().await;
        return Ok(crate::fleet::run(client, options, stages, shutdown).await?);
    }
    #[cfg(feature = "s3-source")]
    if let SourceConfig::S3 {
        queue_url,
        bucket,
        prefix,
        format,
        range_bytes,
        max_record_bytes,
        wait_secs,
        visibility_timeout_secs,
        idle_exit_secs,
        ..
    } = &loaded.config.source
    {
        // One receiver taking one notification at a time: a notification may take long to load, and the
        // other workers of a fleet take the next ones meanwhile.
        let options = crate::source::s3::S3SourceOptions {
            queue: queue_url
                .as_ref()
                .map(|url| crate::source::sqs::SqsOptions {
                    queue_url: url.clone(),
                    receivers: 1,
                    wait_secs: *wait_secs,
                    max_messages: 1,
                    visibility_timeout_secs: *visibility_timeout_secs,
                    idle_exit: idle_exit_secs.map(Duration::from_secs),
                }),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            object: crate::source::s3::object_options(*format, *range_bytes, *max_record_bytes),
        };
        let s3 = loaded.config.source_s3().await;
        let sqs = match queue_url {
            Some(_) => Some(loaded.config.source_sqs().await),
            None => None,
        };
        return Ok(crate::source::s3::run(s3, sqs, options, stages, shutdown).await?);
    }
    // A partition whose checkpoint moved under this worker (with grouped commits: the loader merged first a
    // batch an earlier, crashed run had registered, cut at other positions than this run's) is read again
    // from the new checkpoint, as a fleet worker claims a shard again (docs/GROUP-COMMIT.md, W6). Bounded:
    // another live worker on the same partition keeps moving it.
    let mut moved = 0;
    loop {
        let pipeline = Pipeline {
            source: open_source(loaded).await?,
            stages: stages.clone(),
        };
        match pipeline.run(shutdown.clone()).await {
            Err(e @ crate::pipeline::PipelineError::NotOwner { .. }) if moved < MAX_REREADS => {
                moved += 1;
                tracing::warn!(error = %e, "reading the partition again from its new checkpoint");
            }
            done => return Ok(done?),
        }
    }
}

/// How many times one run reads a partition again after its checkpoint moved under it.
const MAX_REREADS: usize = 3;
