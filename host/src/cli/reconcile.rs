//! `weir reconcile` and `weir replay` (with `--dry-run`, a shadow run).

use super::*;

/// What `weir replay` and `weir dead-letters redrive` load through: the sink (tables prepared), RAW, and
/// the rule versions reconcile would use.
pub(super) struct LoadTarget {
    pub(super) sink: std::sync::Arc<dyn weir::sink::Warehouse>,
    raw: std::sync::Arc<dyn weir::raw::RawStore>,
    rules: weir::plugin_store::StoredRules,
}

impl LoadTarget {
    /// Opens the configuration's sink and RAW; `store`: keeps that rule in the plugin store first (reconcile
    /// finds the rule of every ledger row by digest).
    pub(super) async fn open(
        loaded: &config::Loaded,
        runtime: RuleRuntime,
        limits: RuleLimits,
        settings: Vec<(String, String)>,
        store: Option<&weir::rules::RulePlugin>,
    ) -> Result<LoadTarget> {
        let sink = weir::worker::open_sink(loaded).await?;
        let raw = weir::worker::open_raw(loaded).await?;
        if let Some(rule) = store {
            weir::worker::store_rule(loaded, rule, 5).await?;
        }
        let rules = weir::plugin_store::StoredRules::new(runtime, limits, settings, None, None)?;
        Ok(LoadTarget { sink, raw, rules })
    }

    /// A run over `window` that commits through the sink.
    pub(super) fn run<'a>(
        &'a self,
        loaded: &'a config::Loaded,
        window: &'a weir::reconcile::Window,
    ) -> weir::reconcile::Run<'a> {
        use std::io::IsTerminal;
        weir::reconcile::Run {
            raw: &*self.raw,
            sink: &*self.sink,
            reader: &*self.sink,
            tables: &loaded.tables,
            max_rows: loaded.config.rule.max_rows_per_record,
            rules: &self.rules,
            shadow: None,
            window,
            max_differences: 0,
            group_records: 0,
            rule_instances: loaded.config.rule.instances,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// The rule of a shadow run (`weir replay --dry-run`).
pub(super) enum Shadow<'a> {
    /// `--plugin`.
    Plugin(&'a Path),
    /// The configured rule.
    Configured,
}

/// `weir reconcile`, and with `shadow` a shadow run (`weir replay --dry-run`).
pub(super) async fn reconcile(
    path: &Path,
    args: &WindowArgs,
    shadow: Option<Shadow<'_>>,
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
        .await
        .map(Arc::new);
    let shadow = match shadow {
        Some(Shadow::Plugin(p)) => Some(Arc::new(
            runtime
                .load(p, limits.clone(), settings.clone())
                .with_context(|| format!("loading {}", p.display()))?,
        )),
        Some(Shadow::Configured) => Some(configured.as_ref().map_err(clone_err)?.clone()),
        None => None,
    };
    let configured = configured.ok();
    let store = weir::plugin_store::PluginStore::open(&loaded).await;
    let rules = weir::plugin_store::StoredRules::new(runtime, limits, settings, store, configured)?;
    let sink = weir::worker::connect_sink(&loaded).await?;
    let raw = weir::worker::open_raw(&loaded).await?;
    let run = weir::reconcile::Run {
        raw: &*raw,
        sink: &*sink,
        reader: &*sink,
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
pub(super) async fn replay(
    path: &Path,
    window: &weir::reconcile::Window,
    plugin: Option<&Path>,
) -> Result<ExitCode> {
    use std::sync::Arc;
    let loaded = config::load(path)?;
    let runtime = weir::worker::runtime(&loaded)?;
    let limits = weir::worker::rule_limits(&loaded);
    let settings = weir::worker::rule_settings(&loaded);
    let rule = Arc::new(match plugin {
        Some(p) => runtime
            .load(p, limits.clone(), settings.clone())
            .with_context(|| format!("loading {}", p.display()))?,
        None => weir::worker::load_rule(&runtime, &loaded).await?,
    });
    let target = LoadTarget::open(&loaded, runtime, limits, settings, Some(&rule)).await?;
    let done = weir::reconcile::replay(
        &target.run(&loaded, window),
        rule.clone(),
        &loaded.config.retry,
    )
    .await?;
    let sink = &target.sink;
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

/// A rule error kept for later, reported now.
fn clone_err(e: &weir::rules::RuleError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
