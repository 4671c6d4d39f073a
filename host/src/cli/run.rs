//! `weir run` and `weir validate`: a worker from a configuration, with a graceful drain on a signal.

use super::*;

pub(super) async fn run(path: &Path) -> Result<ExitCode> {
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
    let stopped =
        weir::worker::run_until(&loaded, wait_for_signal(), wait_for_signal(), grace).await;
    let _ = admin_stop.send(true);
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

pub(super) async fn validate_config(path: &Path) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    println!("config: ok ({} tables declared)", loaded.tables.len());
    let runtime = weir::worker::runtime(&loaded)?;
    let rule = weir::worker::load_rule(&runtime, &loaded).await?;
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
