//! `weir run` and `weir validate`: a worker from a configuration, with a graceful drain on a signal.

use super::*;

/// `weir serve`: with `[source] kind = "http"`, the pipeline behind its HTTP endpoint (as `weir run`); with a
/// Kinesis or SQS `[source]`, a forwarding tier in front of that stream or queue (`[serve]` settings).
/// `--bind` replaces the configured address.
pub(super) async fn serve(path: &Path, bind: Option<String>) -> Result<ExitCode> {
    let mut loaded = config::load(path)?;
    if let Some(bind) = &bind
        && bind.parse::<std::net::SocketAddr>().is_err()
    {
        anyhow::bail!("--bind `{bind}` is not an address and port such as `0.0.0.0:8080`");
    }
    match &mut loaded.config.source {
        config::SourceConfig::Http(http) => {
            if let Some(bind) = bind {
                http.bind = bind;
            }
            run(loaded).await
        }
        config::SourceConfig::Kinesis { .. } | config::SourceConfig::Sqs { .. } => {
            let mut http = loaded.config.serve.clone().unwrap_or_default();
            if let Some(bind) = bind {
                http.bind = bind;
            }
            forward(&loaded, &http).await
        }
        _ => anyhow::bail!(
            "{}: `weir serve` needs `[source] kind = \"http\"` (the pipeline behind an HTTP endpoint), or a Kinesis \
             or SQS [source] to forward into; this configuration reads another source: use `weir run`",
            path.display()
        ),
    }
}

/// The forwarding tier until SIGINT/SIGTERM, with the admin endpoint when configured.
#[cfg(feature = "http")]
async fn forward(loaded: &config::Loaded, http: &config::HttpConfig) -> Result<ExitCode> {
    let (admin_stop, admin_shutdown) = watch::channel(false);
    if let Some(bind) = &loaded.config.worker.admin_bind {
        weir::admin::serve(bind, admin_shutdown)
            .await
            .with_context(|| format!("worker.admin_bind: cannot listen on {bind}"))?;
    }
    weir::worker::serve_forwarding(loaded, http, wait_for_signal()).await?;
    let _ = admin_stop.send(true);
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "http"))]
async fn forward(_: &config::Loaded, _: &config::HttpConfig) -> Result<ExitCode> {
    anyhow::bail!(config::not_compiled("serve", "http", "http"))
}

pub(super) async fn run(loaded: config::Loaded) -> Result<ExitCode> {
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
    let emf = (loaded.config.worker.metrics == config::MetricsOutput::Emf).then(|| {
        emf_lines(Duration::from_secs(
            loaded.config.worker.metrics_interval_secs,
        ))
    });
    let grace = Duration::from_secs(loaded.config.worker.shutdown_grace_secs);
    let stopped =
        weir::worker::run_until(&loaded, wait_for_signal(), wait_for_signal(), grace).await;
    let _ = admin_stop.send(true);
    if let Some((task, state)) = emf {
        task.abort();
        // The last interval's changes, so that a short run's counts reach CloudWatch too.
        write_emf(&mut state.lock().expect("not poisoned"));
    }
    match stopped? {
        weir::worker::Stopped::Finished(summary) => {
            print!("{}", summary.render());
            Ok(ExitCode::SUCCESS)
        }
        weir::worker::Stopped::Forced(why) => {
            eprintln!("{why}");
            Ok(ExitCode::from(130))
        }
    }
}

/// `[worker] metrics = "emf"`: CloudWatch Embedded Metric Format lines on stdout every `every`.
fn emf_lines(
    every: Duration,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<weir::metrics::EmfState>>,
) {
    let state = std::sync::Arc::new(std::sync::Mutex::new(weir::metrics::EmfState::default()));
    let shared = state.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            write_emf(&mut shared.lock().expect("not poisoned"));
        }
    });
    (task, state)
}

fn write_emf(state: &mut weir::metrics::EmfState) {
    use std::io::Write as _;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let lines = weir::metrics::global().emf(state, now_ms);
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

pub(super) async fn wait_for_signal() {
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

pub(super) async fn validate_config(path: &Path, aws: bool) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    println!("config: ok ({} tables declared)", loaded.tables.len());
    let runtime = weir::worker::runtime(&loaded)?;
    let rule = weir::worker::load_rule(&runtime, &loaded).await?;
    println!(
        "rule: ok ({}, contract weir:rules@{}, sha256 {})",
        rule.path().display(),
        rule.contract().version(),
        rule.digest()
    );
    let sink = weir::worker::check_sink(&loaded).await?;
    println!("sink: ok ({})", sink);
    if !aws {
        return Ok(ExitCode::SUCCESS);
    }
    let mut checks = weir::preflight::check_aws(&loaded).await;
    checks.extend(weir::preflight::check_plugin_store(&loaded, &rule).await);
    let sink = weir::worker::connect_sink(&loaded).await?;
    checks.extend(weir::preflight::check_bulk_load(&*sink).await);
    let mut failed = 0;
    for c in &checks {
        match &c.problem {
            None => println!("{}: ok", c.what),
            Some(p) => {
                failed += 1;
                println!("{}: FAILED: {p}", c.what);
            }
        }
    }
    if checks.is_empty() {
        println!("aws: the configuration uses no AWS backend");
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
