//! The `weir` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use weir::config;
use weir::rules::validate::{self, RecordOutcome};
use weir::rules::{Outcome, RuleLimits, RuleOutput, RuleRuntime, SourceRecord, Value};
use weir::source::Source as _;
use weir::source::file::FileSource;

mod run;
use run::*;
mod produce;
use produce::*;
mod reconcile;
use reconcile::*;
mod schema;
use schema::*;
mod dead_letters;
mod status;
use dead_letters::DeadLettersCommand;
mod plugin;
use plugin::*;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "ETL workers whose business rules are WebAssembly plugins"
)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum NewLang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the pipeline of a configuration until its input ends or SIGINT/SIGTERM.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Serve the HTTP ingest endpoint (POST /v1/records, POST /v1/firehose) until SIGINT/SIGTERM. With
    /// `[source] kind = "http"` each request is answered once its records committed; with a Kinesis or SQS
    /// `[source]`, once they were put into that stream or queue (a forwarding tier, settings in `[serve]`).
    Serve {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Listen here instead of `[source] bind`, e.g. `127.0.0.1:8080`.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Check a configuration: fields, plugin contract and init, sink reachable, tables match.
    Validate {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Also check every AWS backend as the worker will use it (read-only): the queue or stream, the
        /// buckets, the coordinator table; each failure says what is missing or which permission is.
        #[arg(long)]
        aws: bool,
    },
    /// Show leases, checkpoints and the last commit per partition, the staged batches waiting for the loader
    /// and the last hour's dead letters by reason.
    Status {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The dead letters of a time range: list them, export their RAW records, or redrive them through the
    /// configured rule.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Print the least-privilege IAM policy (JSON) for a configuration: the AWS actions its worker calls, on
    /// the resources it names.
    IamPolicy {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The 12-digit AWS account id of the stream, table and cluster (default: from an SQS queue URL).
        #[arg(long)]
        account_id: Option<String>,
        /// Their region (default: `[aws] region`, or the SQS queue URL's).
        #[arg(long)]
        region: Option<String>,
        /// The partition: aws, aws-cn, aws-us-gov.
        #[arg(long, default_value = "aws")]
        partition: String,
    },
    /// Work with rule plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Send the lines of a file to the configuration's source queue, one message per line (fills an SQS
    /// queue for a demo or a backfill).
    Produce {
        /// The configuration file (its `[source]` is the queue).
        #[arg(short, long)]
        config: PathBuf,
        /// Input file, one message per line (`-` for stdin).
        input: String,
        /// Message group of FIFO queues.
        #[arg(long, default_value = "weir")]
        group_id: String,
        /// Kinesis: the JSON field whose value is the partition key (else the line number).
        #[arg(long, default_value = "order_id")]
        key_field: String,
        /// Kinesis: pack this many lines into one KPL-aggregated record (1: no aggregation).
        #[arg(long, default_value_t = 1)]
        aggregate: usize,
    },
    /// Compare RAW with the final tables: every RAW record accounted for (emitted, dropped, rejected), no
    /// orphan rows, no drift from the rule version that loaded each batch. Exits 1 when it finds problems.
    Reconcile {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        window: WindowArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the report as one self-contained HTML page.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Differences to list (all are counted).
        #[arg(long, default_value_t = 20)]
        max_differences: usize,
    },
    /// Re-process RAW through the configured rule (or --plugin) into the sink, idempotently, without moving
    /// checkpoints. With --dry-run, a shadow run: write nothing, show the rows that would be added, changed
    /// and removed.
    Replay {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        window: WindowArgs,
        /// A rule to use instead of the configured one (a new version).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Compare only; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON (with --dry-run).
        #[arg(long)]
        json: bool,
        /// Also write the report as one self-contained HTML page (with --dry-run).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Differences to list (all are counted).
        #[arg(long, default_value_t = 20)]
        max_differences: usize,
    },
    /// Compare the sink's tables with the configuration, and bring them in line.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
}

/// Which RAW a reconcile or replay reads (source time; hour granularity).
#[derive(clap::Args)]
pub(crate) struct WindowArgs {
    /// From this source time: RFC 3339, `2026-11-21T10`, `2026-11-21`, or an age such as `6h` or `2d`.
    #[arg(long)]
    since: Option<String>,
    /// Until this source time (exclusive), same forms.
    #[arg(long)]
    until: Option<String>,
    /// Only this batch (its id in the ledger).
    #[arg(long, conflicts_with_all = ["since", "until"])]
    batch: Option<String>,
    /// RAW records read and compared together: more is faster (fewer table scans), less uses less memory.
    #[arg(long, default_value_t = 100_000)]
    group_records: usize,
}

impl WindowArgs {
    fn window(&self) -> Result<weir::reconcile::Window> {
        let now = (weir::record::wall_clock_us() / 1000) as i64;
        let t = |v: &Option<String>| -> Result<Option<i64>> {
            v.as_deref()
                .map(|s| weir::reconcile::Window::parse_time(s, now))
                .transpose()
                .map_err(anyhow::Error::from)
        };
        Ok(weir::reconcile::Window {
            since_ms: t(&self.since)?,
            until_ms: t(&self.until)?,
            batch: self.batch.clone(),
        })
    }
}

#[derive(Subcommand)]
pub(crate) enum SchemaCommand {
    /// Print the DDL that would create missing tables and add new (nullable) columns; change nothing.
    Plan {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run that DDL.
    Apply {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Run every line of an input file through a plugin and show each outcome.
    Test {
        /// The plugin (.wasm component).
        plugin: PathBuf,
        /// Input file, one record per line (`-` for stdin).
        #[arg(long)]
        input: String,
        /// A configuration whose declared tables (and rule settings and limits) check the outcomes.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// A rule setting `name=value` (repeatable; overrides the configuration's).
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a plugin: records/s and µs/record at batch 1, 100 and 1000, instance memory, first-compile
    /// and warm-start times.
    Bench {
        /// The plugin (.wasm component).
        plugin: PathBuf,
        /// Input file, one record per line (cycled as needed).
        #[arg(long)]
        input: String,
        /// A configuration whose rule settings and limits apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Seconds per batch size.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
    },
    /// Start a rule project that builds and passes `weir plugin test` as generated.
    New {
        /// The project (and component) name.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: NewLang,
        /// Where to create the project folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Stamp this weir's contract version into a component built without a weir SDK (adds the
    /// `weir-contract` custom section; a stamped component is left as is).
    Stamp {
        /// The plugin (.wasm component), rewritten in place.
        plugin: PathBuf,
    },
    /// Upload a plugin to S3 and print the `[rule]` lines that load it by digest (`plugin`, `sha256`).
    /// A destination ending in `/` gets `{name}-{digest prefix}.wasm`; an object already at the key with
    /// other bytes is never overwritten.
    Publish {
        /// The plugin (.wasm component).
        plugin: PathBuf,
        /// `s3://bucket/prefix/` or `s3://bucket/key.wasm`.
        destination: String,
        /// A configuration whose `[aws]` settings (region, endpoint) apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: write a setting as name=value"))
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn,sqlx=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(crate) async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => run(config::load(&config)?).await,
        Command::Serve { config, bind } => serve(&config, bind).await,
        Command::Validate { config, aws } => validate_config(&config, aws).await,
        Command::Status { config, json } => status::status(&config, json).await,
        Command::DeadLetters { command } => dead_letters::dead_letters(command).await,
        Command::IamPolicy {
            config,
            account_id,
            region,
            partition,
        } => {
            let (loaded, secrets) = config::load_without_secrets(&config)?;
            let account = weir::iam::Account {
                partition,
                region,
                account_id,
            };
            let policy = weir::iam::policy(&loaded.config, &secrets, &account)
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&policy)?);
            for note in weir::iam::notes(&loaded.config) {
                eprintln!("note: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce {
            config,
            input,
            group_id,
            key_field,
            aggregate,
        } => produce(&config, &input, &group_id, &key_field, aggregate).await,
        Command::Reconcile {
            config,
            window,
            json,
            html,
            max_differences,
        } => {
            reconcile(
                &config,
                &window,
                None,
                json,
                html.as_deref(),
                max_differences,
            )
            .await
        }
        Command::Replay {
            config,
            window,
            plugin,
            dry_run: true,
            json,
            html,
            max_differences,
        } => {
            // A dry run is a shadow reconcile with the replay's rule (by default the configured one).
            let shadow = match &plugin {
                Some(p) => reconcile::Shadow::Plugin(p),
                None => reconcile::Shadow::Configured,
            };
            let html = html.as_deref();
            reconcile(&config, &window, Some(shadow), json, html, max_differences).await
        }
        Command::Replay {
            config,
            window,
            plugin,
            dry_run: false,
            ..
        } => replay(&config, &window.window()?, plugin.as_deref()).await,
        Command::Schema { command } => {
            let (config, apply) = match command {
                SchemaCommand::Plan { config } => (config, false),
                SchemaCommand::Apply { config } => (config, true),
            };
            schema(&config, apply).await
        }
        Command::Plugin { command } => plugin(command).await,
    }
}
