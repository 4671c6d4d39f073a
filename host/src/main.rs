//! The `weir` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use weir::config;
use weir::rules::validate::{self, RecordOutcome};
use weir::rules::{Outcome, RuleLimits, RuleRuntime, SourceRecord, Value};
use weir::source::Source as _;
use weir::source::file::FileSource;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "ETL workers whose business rules are WebAssembly plugins"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum NewLang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline of a configuration until its input ends or SIGINT/SIGTERM.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a configuration: fields, plugin contract and init, sink reachable, tables match.
    Validate {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
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
struct WindowArgs {
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
enum SchemaCommand {
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
enum PluginCommand {
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
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: write a setting as name=value"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Do not wait for blocking reads that can never finish (an open stdin after a shutdown signal).
    runtime.shutdown_background();
    code
}

fn init_logging(format: LogFormat) {
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

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => run(&config).await,
        Command::Validate { config } => validate_config(&config).await,
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
            let plugin = plugin.unwrap_or_else(|| {
                config::load(&config)
                    .map(|l| l.config.rule.plugin)
                    .unwrap_or_default()
            });
            reconcile(
                &config,
                &window,
                Some(&plugin),
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
        Command::Plugin {
            command:
                PluginCommand::Test {
                    plugin,
                    input,
                    config,
                    settings,
                    json,
                },
        } => plugin_test(&plugin, &input, config.as_deref(), settings, json).await,
        Command::Plugin {
            command:
                PluginCommand::Bench {
                    plugin,
                    input,
                    config,
                    secs,
                },
        } => plugin_bench(&plugin, &input, config.as_deref(), secs).await,
        Command::Plugin {
            command: PluginCommand::New { name, lang, dir },
        } => {
            let lang = match lang {
                NewLang::Rust => weir::scaffold::Lang::Rust,
                NewLang::Python => weir::scaffold::Lang::Python,
                NewLang::Js => weir::scaffold::Lang::Js,
                NewLang::C => weir::scaffold::Lang::C,
            };
            let (root, commands) =
                weir::scaffold::new_project(&dir, &name, lang).map_err(anyhow::Error::msg)?;
            println!("created {}; build and try it:", root.display());
            println!("  cd {}", root.display());
            for c in commands {
                println!("  {c}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Stamp { plugin },
        } => {
            let wasm =
                std::fs::read(&plugin).with_context(|| format!("reading {}", plugin.display()))?;
            if let Some(v) = weir::rules::stamped_contract(&wasm) {
                println!("{}: already stamped with contract {v}", plugin.display());
            } else {
                std::fs::write(&plugin, weir::rules::stamp(&wasm))
                    .with_context(|| format!("writing {}", plugin.display()))?;
                println!(
                    "{}: stamped with contract {}",
                    plugin.display(),
                    weir::rules::CONTRACT_VERSION
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(path: &Path) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    // The admin endpoint answers (503 on /readyz) through the drain and stops once the worker has.
    let (admin_stop, admin_shutdown) = watch::channel(false);
    if let Some(bind) = &loaded.config.worker.admin_bind {
        let addr = weir::admin::serve(bind, admin_shutdown)
            .await
            .with_context(|| {
                format!(
                    "worker.admin_bind: cannot listen on {bind}; pick a free address or remove it"
                )
            })?;
        tracing::info!(%addr, "admin endpoint: /healthz /readyz /metrics");
    }
    let grace = Duration::from_secs(loaded.config.worker.shutdown_grace_secs);
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "signal received: finishing the in-flight batches and releasing leases (signal again to exit at once)"
        );
        weir::admin::set_ready(false);
        let _ = stop.send(true);
        // Safe either way: nothing is acknowledged before its commit, so the next start resumes from the
        // checkpoint.
        tokio::select! {
            _ = wait_for_signal() => eprintln!("second signal: exiting now"),
            _ = tokio::time::sleep(grace) => eprintln!(
                "shutdown_grace_secs ({}) passed before the in-flight batches committed: exiting now",
                grace.as_secs()
            ),
        }
        std::process::exit(130);
    });
    let summary = weir::worker::run(&loaded, shutdown).await;
    let _ = admin_stop.send(true);
    let summary = summary?;
    print!("{}", summary.render());
    Ok(ExitCode::SUCCESS)
}

async fn produce(
    path: &Path,
    input: &str,
    group_id: &str,
    key_field: &str,
    aggregate: usize,
) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    let bytes = if input == "-" {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf).await?;
        buf
    } else {
        tokio::fs::read(input)
            .await
            .with_context(|| format!("reading {input}"))?
    };
    let lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    match &loaded.config.source {
        config::SourceConfig::Sqs { queue_url, .. } => {
            let client = loaded.config.aws.sqs().await;
            let sent = weir::source::sqs::send_lines(&client, queue_url, &lines, group_id).await?;
            println!("sent {sent} messages to {queue_url}");
        }
        config::SourceConfig::Kinesis { stream, .. } => {
            let client = loaded.config.aws.kinesis().await;
            let sent = weir::source::kinesis::put_lines(
                &client,
                stream,
                &lines,
                key_field,
                aggregate.max(1),
            )
            .await?;
            println!("sent {sent} records to stream {stream}");
        }
        config::SourceConfig::File { .. } => anyhow::bail!(
            "{}: `weir produce` sends to an SQS or Kinesis source; this configuration reads a file",
            path.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn validate_config(path: &Path) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    println!("config: ok ({} tables declared)", loaded.tables.len());
    let runtime = weir::worker::runtime(&loaded)?;
    let rule = weir::worker::load_rule(&runtime, &loaded)?;
    println!(
        "rule: ok ({}, contract {}, sha256 {})",
        rule.path().display(),
        weir::rules::CONTRACT,
        rule.digest()
    );
    let sink = weir::worker::check_sink(&loaded).await?;
    println!("sink: ok ({})", sink);
    Ok(ExitCode::SUCCESS)
}

/// `weir reconcile`, and with `shadow` (a plugin) a shadow run (`weir replay --dry-run`).
async fn reconcile(
    path: &Path,
    args: &WindowArgs,
    shadow: Option<&Path>,
    json: bool,
    html: Option<&Path>,
    max_differences: usize,
) -> Result<ExitCode> {
    use std::io::IsTerminal;
    use std::sync::Arc;
    let window = &args.window()?;
    let loaded = config::load(path)?;
    let runtime = weir::worker::runtime(&loaded)?;
    let limits = weir::worker::rule_limits(&loaded);
    let settings = weir::worker::rule_settings(&loaded);
    // The configured rule re-derives its own batches even without a plugin store.
    let configured = weir::worker::load_rule(&runtime, &loaded)
        .ok()
        .map(Arc::new);
    let shadow = match shadow {
        Some(p) => Some(Arc::new(
            runtime
                .load(p, limits.clone(), settings.clone())
                .with_context(|| format!("loading {}", p.display()))?,
        )),
        None => None,
    };
    let store = weir::plugin_store::PluginStore::open(&loaded).await;
    let rules = weir::plugin_store::StoredRules::new(runtime, limits, settings, store, configured)?;
    let sink = weir::worker::connect_sink(&loaded).await?;
    let raw = weir::worker::open_raw(&loaded).await?;
    let run = weir::reconcile::Run {
        raw: &*raw,
        sink: &*sink,
        tables: &loaded.tables,
        max_rows: loaded.config.rule.max_rows_per_record,
        rules: &rules,
        shadow: shadow.clone(),
        window,
        max_differences,
        group_records: args.group_records,
        rule_instances: loaded.config.rule.instances,
        progress: std::io::stderr().is_terminal(),
    };
    let mode = if shadow.is_some() {
        weir::reconcile::Mode::Shadow
    } else {
        weir::reconcile::Mode::Reconcile
    };
    let report = weir::reconcile::reconcile(&run, mode).await?;
    let title = if shadow.is_some() {
        "weir shadow run"
    } else {
        "weir reconcile"
    };
    if let Some(file) = html {
        std::fs::write(file, weir::reconcile::html(&report, title))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if shadow.is_none() && report.problems() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `weir replay`: RAW of a window through the configured rule (or `plugin`) into the sink.
async fn replay(
    path: &Path,
    window: &weir::reconcile::Window,
    plugin: Option<&Path>,
) -> Result<ExitCode> {
    use std::io::IsTerminal;
    use std::sync::Arc;
    let loaded = config::load(path)?;
    let runtime = weir::worker::runtime(&loaded)?;
    let limits = weir::worker::rule_limits(&loaded);
    let settings = weir::worker::rule_settings(&loaded);
    let rule = Arc::new(match plugin {
        Some(p) => runtime
            .load(p, limits.clone(), settings.clone())
            .with_context(|| format!("loading {}", p.display()))?,
        None => weir::worker::load_rule(&runtime, &loaded)?,
    });
    let sink = weir::worker::open_sink(&loaded).await?;
    let raw = weir::worker::open_raw(&loaded).await?;
    weir::worker::store_rule(&loaded, &rule, 5).await?;
    let rules = weir::plugin_store::StoredRules::new(runtime, limits, settings, None, None)?;
    let run = weir::reconcile::Run {
        raw: &*raw,
        sink: &*sink,
        tables: &loaded.tables,
        max_rows: loaded.config.rule.max_rows_per_record,
        rules: &rules,
        shadow: None,
        window,
        max_differences: 0,
        group_records: 0,
        rule_instances: loaded.config.rule.instances,
        progress: std::io::stderr().is_terminal(),
    };
    let done = weir::reconcile::replay(&run, rule.clone(), &loaded.config.retry).await?;
    println!(
        "replayed {} records from {} RAW objects, in the order they first committed, through rule {} into {}",
        done.records,
        done.objects,
        rule.digest(),
        sink.describe()
    );
    if !done.uncommitted.is_empty() {
        println!(
            "skipped {} RAW objects that no ledger row committed (archived, never loaded):",
            done.uncommitted.len()
        );
        for key in done.uncommitted.iter().take(20) {
            println!("  {key}");
        }
        if done.uncommitted.len() > 20 {
            println!("  … and {} more", done.uncommitted.len() - 20);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn schema(path: &Path, apply: bool) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    let sink = weir::worker::connect_sink(&loaded).await?;
    let plan = sink.plan(&loaded.tables).await?;
    if plan.statements.is_empty() {
        println!(
            "-- {}: the tables match the configuration; nothing to do",
            sink.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("-- {}", sink.describe());
    for statement in &plan.statements {
        println!("{statement};");
    }
    if apply {
        sink.apply(&plan).await?;
        println!("-- applied {} statements", plan.statements.len());
    } else {
        println!(
            "-- not applied; run `weir schema apply -c {}` to apply",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule limits and settings of an optional configuration (defaults: 64 MiB, 2 s).
fn rule_setup(loaded: Option<&config::Loaded>) -> (RuleLimits, Vec<(String, String)>) {
    let mut limits = RuleLimits {
        memory_bytes: 64 << 20,
        deadline: Duration::from_secs(2),
    };
    let mut settings = Vec::new();
    if let Some(l) = loaded {
        limits.memory_bytes = (l.config.rule.memory_limit_mib as usize) << 20;
        limits.deadline = Duration::from_millis(l.config.rule.batch_deadline_ms);
        settings = l
            .config
            .rule
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    (limits, settings)
}

async fn plugin_bench(
    plugin: &Path,
    input: &str,
    config_path: Option<&Path>,
    secs: f64,
) -> Result<ExitCode> {
    let loaded = config_path.map(config::load).transpose()?;
    let (limits, settings) = rule_setup(loaded.as_ref());
    let mut source = FileSource::open(input, None)
        .await
        .context("opening the input")?;
    let mut records: Vec<SourceRecord> = Vec::new();
    while let Some(p) = source.next().await? {
        records.push(p.record);
    }
    anyhow::ensure!(!records.is_empty(), "{input} has no records");
    let plugin = plugin.to_path_buf();
    let report = tokio::task::spawn_blocking(move || -> Result<String> {
        // First compile: an empty cache. Warm start: the cache filled by it, up to the first outcome.
        let cache = std::env::temp_dir().join(format!("weir-plugin-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let started = std::time::Instant::now();
        RuleRuntime::new(Some(cache.clone()))?.load(&plugin, limits.clone(), settings.clone())?;
        let first_compile = started.elapsed();
        let started = std::time::Instant::now();
        let rule = RuleRuntime::new(Some(cache.clone()))?.load(&plugin, limits, settings)?;
        rule.process("bench/warm", &records[..1]);
        let warm = started.elapsed();
        let _ = std::fs::remove_dir_all(&cache);
        let mut out = format!(
            "plugin {} (sha256 {}, contract {})
first compile: {:.2} s; warm start (cached, to the first outcome): {:.0} ms

",
            plugin.display(),
            &rule.digest()[..12],
            weir::rules::CONTRACT_VERSION,
            first_compile.as_secs_f64(),
            warm.as_secs_f64() * 1000.0
        );
        out.push_str("| batch | records/s | µs/record |\n|------:|----------:|----------:|\n");
        for batch in [1usize, 100, 1000] {
            let chunk: Vec<SourceRecord> = records.iter().cycle().take(batch).cloned().collect();
            let (mut done, started) = (0usize, std::time::Instant::now());
            while started.elapsed().as_secs_f64() < secs {
                rule.process("bench", &chunk);
                done += chunk.len();
            }
            let elapsed = started.elapsed().as_secs_f64();
            out.push_str(&format!(
                "| {batch:>5} | {:>9.0} | {:>9.2} |\n",
                done as f64 / elapsed,
                elapsed * 1e6 / done as f64
            ));
        }
        out.push_str(&format!(
            "\ninstance memory: peak {:.1} MiB of linear memory\n",
            rule.peak_memory_bytes() as f64 / (1 << 20) as f64
        ));
        Ok(out)
    })
    .await??;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

async fn plugin_test(
    plugin: &Path,
    input: &str,
    config_path: Option<&Path>,
    extra_settings: Vec<(String, String)>,
    json: bool,
) -> Result<ExitCode> {
    let loaded = config_path.map(config::load).transpose()?;
    let (limits, mut settings) = rule_setup(loaded.as_ref());
    for (k, v) in extra_settings {
        settings.retain(|(name, _)| *name != k);
        settings.push((k, v));
    }
    let runtime = RuleRuntime::new(RuleRuntime::default_cache_dir())?;
    let rule = runtime.load(plugin, limits, settings)?;
    let mut source = FileSource::open(input, None)
        .await
        .context("opening the input")?;
    let mut records: Vec<SourceRecord> = Vec::new();
    while let Some(p) = source.next().await? {
        records.push(p.record);
    }
    let raw = tokio::task::spawn_blocking({
        let records = records.clone();
        move || rule.process("plugin-test", &records)
    })
    .await?;

    let mut shown = Vec::with_capacity(records.len());
    for (record, raw) in records.iter().zip(raw) {
        // With a configuration, the host's checks apply exactly as in a pipeline run.
        let verdict = loaded
            .as_ref()
            .map(|l| validate::check(raw.clone(), &l.tables, l.config.rule.max_rows_per_record));
        let entry = match (raw, verdict) {
            (_, Some(RecordOutcome::Reject(stage, reason))) => {
                serde_json::json!({"id": record.id, "outcome": "reject", "stage": stage.as_str(), "reason": reason})
            }
            (Err(reason), _) => {
                serde_json::json!({"id": record.id, "outcome": "reject", "stage": "sandbox", "reason": reason})
            }
            (Ok(Outcome::Reject(reason)), _) => {
                serde_json::json!({"id": record.id, "outcome": "reject", "stage": "rule", "reason": reason})
            }
            (Ok(Outcome::Drop(reason)), _) => {
                serde_json::json!({"id": record.id, "outcome": "drop", "reason": reason})
            }
            (Ok(Outcome::Emit(rows)), _) => {
                let rows: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        let cells: serde_json::Map<String, serde_json::Value> = r
                            .cells
                            .iter()
                            .map(|(k, v)| (k.clone(), value_json(v)))
                            .collect();
                        serde_json::json!({"table": r.table, "cells": cells})
                    })
                    .collect();
                serde_json::json!({"id": record.id, "outcome": "emit", "rows": rows})
            }
        };
        shown.push(entry);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print!("{}", outcome_table(&shown));
    }
    Ok(ExitCode::SUCCESS)
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => (*i).into(),
        Value::Float(x) => (*x).into(),
        Value::Decimal(s) | Value::Text(s) => s.clone().into(),
        Value::TimestampUs(us) => weir::schema::format_timestamp_us(*us).into(),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
    }
}

/// One line per record (and one per emitted row), in aligned columns.
fn outcome_table(shown: &[serde_json::Value]) -> String {
    let mut lines: Vec<[String; 3]> = vec![["RECORD".into(), "OUTCOME".into(), "DETAIL".into()]];
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    for e in shown {
        let id = text(&e["id"]);
        let outcome = text(&e["outcome"]);
        match outcome.as_str() {
            "emit" => {
                let rows = e["rows"].as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    lines.push([id.clone(), outcome.clone(), "(no rows)".into()]);
                }
                for (i, r) in rows.iter().enumerate() {
                    let cells: Vec<String> = r["cells"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                        .unwrap_or_default();
                    let first = if i == 0 {
                        (id.clone(), outcome.clone())
                    } else {
                        (String::new(), String::new())
                    };
                    lines.push([
                        first.0,
                        first.1,
                        format!("{}: {}", text(&r["table"]), cells.join(", ")),
                    ]);
                }
            }
            "reject" => lines.push([
                id,
                format!("reject ({})", text(&e["stage"])),
                text(&e["reason"]),
            ]),
            _ => lines.push([id, outcome, text(&e["reason"])]),
        }
    }
    let w0 = lines
        .iter()
        .map(|l| l[0].chars().count())
        .max()
        .unwrap_or(0);
    let w1 = lines
        .iter()
        .map(|l| l[1].chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for l in &lines {
        out.push_str(&format!("{:w0$}  {:w1$}  {}\n", l[0], l[1], l[2]));
    }
    let count = |o: &str| shown.iter().filter(|e| e["outcome"] == o).count();
    out.push_str(&format!(
        "\n{} records: {} emitted, {} dropped, {} rejected\n",
        shown.len(),
        count("emit"),
        count("drop"),
        count("reject")
    ));
    out
}
