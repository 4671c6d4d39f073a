//! `weir plugin test|bench|new|stamp|publish`: a rule on sample input, measured, scaffolded, stamped or
//! published to S3.

use super::*;

/// Runs one `weir plugin` subcommand.
pub(crate) async fn plugin(command: PluginCommand) -> Result<ExitCode> {
    match command {
        PluginCommand::Test {
            plugin,
            input,
            config,
            settings,
            json,
        } => plugin_test(&plugin, &input, config.as_deref(), settings, json).await,
        PluginCommand::Bench {
            plugin,
            input,
            config,
            secs,
        } => plugin_bench(&plugin, &input, config.as_deref(), secs).await,
        PluginCommand::New { name, lang, dir } => plugin_new(&name, lang, &dir),
        PluginCommand::Stamp { plugin } => plugin_stamp(&plugin),
        PluginCommand::Publish {
            plugin,
            destination,
            config,
        } => plugin_publish(&plugin, &destination, config.as_deref()).await,
    }
}

/// The rule limits and settings of an optional configuration (defaults: 64 MiB, 2 s).
pub(super) fn rule_setup(loaded: Option<&config::Loaded>) -> (RuleLimits, Vec<(String, String)>) {
    let mut limits = RuleLimits::new(64 << 20, Duration::from_secs(2));
    let mut settings = Vec::new();
    if let Some(l) = loaded {
        limits = weir::worker::rule_limits(l);
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

pub(super) async fn plugin_bench(
    plugin: &Path,
    input: &str,
    config_path: Option<&Path>,
    secs: f64,
) -> Result<ExitCode> {
    let loaded = config_path.map(config::load).transpose()?;
    let configured = loaded.is_some();
    let checks = loaded
        .as_ref()
        .map(|l| (l.tables.clone(), l.config.rule.max_rows_per_record));
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
        if !configured && rule.contract() == weir::rules::Contract::V0_2 {
            anyhow::bail!(
                "{} implements contract weir:rules@0.2.0, whose rules get the declared tables from the \
                 worker's configuration: pass it with --config weir.toml",
                plugin.display()
            );
        }
        rule.process("bench/warm", &records[..1]);
        let warm = started.elapsed();
        let _ = std::fs::remove_dir_all(&cache);
        let mut out = format!(
            "plugin {} (sha256 {}, contract {})
first compile: {:.2} s; warm start (cached, to the first outcome): {:.0} ms

",
            plugin.display(),
            &rule.digest()[..12],
            rule.contract().version(),
            first_compile.as_secs_f64(),
            warm.as_secs_f64() * 1000.0
        );
        // With a configuration, every call's outcomes are checked as a worker checks them, so that both
        // contract versions are timed doing the same work (0.2 checks while it decodes).
        if let Some(c) = &checks {
            out.push_str(&format!(
                "timed: the rule and the host's checks of its rows against the {} declared tables\n\n",
                c.0.len()
            ));
        }
        out.push_str("| batch | records/s | µs/record |\n|------:|----------:|----------:|\n");
        for batch in [1usize, 100, 1000] {
            let chunk: Vec<SourceRecord> = records.iter().cycle().take(batch).cloned().collect();
            let (mut done, started) = (0usize, std::time::Instant::now());
            while started.elapsed().as_secs_f64() < secs {
                let raw = rule.process("bench", &chunk);
                if let Some((tables, max_rows)) = &checks {
                    let checked: Vec<RecordOutcome> = raw
                        .into_iter()
                        .map(|o| validate::check(o, tables, *max_rows))
                        .collect();
                    std::hint::black_box(checked);
                }
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

pub(super) async fn plugin_test(
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
    if loaded.is_none() && rule.contract() == weir::rules::Contract::V0_2 {
        anyhow::bail!(
            "{} implements contract weir:rules@0.2.0, whose rules get the declared tables from the worker's \
             configuration: pass it with --config weir.toml",
            plugin.display()
        );
    }
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
        // With a configuration, the host's checks apply exactly as in a pipeline run, and emitted rows are
        // shown as they would be loaded (NULL columns left out), whatever the contract version.
        let entry = match loaded.as_ref() {
            Some(l) => match validate::check(raw, &l.tables, l.config.rule.max_rows_per_record) {
                RecordOutcome::Reject(stage, reason) => {
                    serde_json::json!({"id": record.id, "outcome": "reject", "stage": stage.as_str(), "reason": reason})
                }
                RecordOutcome::Drop(reason) => {
                    serde_json::json!({"id": record.id, "outcome": "drop", "reason": reason})
                }
                RecordOutcome::Emit(rows) => {
                    let rows: Vec<_> = rows
                        .iter()
                        .map(|r| {
                            let t = &l.tables[r.table];
                            let cells: serde_json::Map<String, serde_json::Value> = t
                                .columns
                                .iter()
                                .zip(&r.cells)
                                .filter(|(_, c)| **c != weir::schema::Cell::Null)
                                .map(|((k, _), c)| (k.clone(), cell_json(c)))
                                .collect();
                            serde_json::json!({"table": t.name, "cells": cells})
                        })
                        .collect();
                    serde_json::json!({"id": record.id, "outcome": "emit", "rows": rows})
                }
            },
            None => match raw {
                Err(reason) => {
                    serde_json::json!({"id": record.id, "outcome": "reject", "stage": "sandbox", "reason": reason})
                }
                Ok(RuleOutput::Checked(_)) => {
                    unreachable!("a 0.2 rule is refused without a configuration")
                }
                Ok(RuleOutput::Wit(Outcome::Reject(reason))) => {
                    serde_json::json!({"id": record.id, "outcome": "reject", "stage": "rule", "reason": reason})
                }
                Ok(RuleOutput::Wit(Outcome::Drop(reason))) => {
                    serde_json::json!({"id": record.id, "outcome": "drop", "reason": reason})
                }
                Ok(RuleOutput::Wit(Outcome::Emit(rows))) => {
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
            },
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

/// A checked cell as `plugin test` shows it: like [`value_json`] of the value that made it.
fn cell_json(c: &weir::schema::Cell) -> serde_json::Value {
    use weir::schema::Cell;
    match c {
        Cell::Null => serde_json::Value::Null,
        Cell::Bool(b) => (*b).into(),
        Cell::Int(i) => (*i).into(),
        Cell::Float(x) => (*x).into(),
        Cell::Decimal(s) | Cell::Text(s) => s.clone().into(),
        Cell::TimestampUs(us) => weir::schema::format_timestamp_us(*us).into(),
        Cell::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
    }
}

pub(super) fn value_json(v: &Value) -> serde_json::Value {
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
pub(super) fn outcome_table(shown: &[serde_json::Value]) -> String {
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

/// `weir plugin new`: a project of a rule in `lang`.
pub(super) fn plugin_new(name: &str, lang: NewLang, dir: &Path) -> Result<ExitCode> {
    let lang = match lang {
        NewLang::Rust => weir::scaffold::Lang::Rust,
        NewLang::Python => weir::scaffold::Lang::Python,
        NewLang::Js => weir::scaffold::Lang::Js,
        NewLang::C => weir::scaffold::Lang::C,
    };
    let (root, commands) =
        weir::scaffold::new_project(dir, name, lang).map_err(anyhow::Error::msg)?;
    println!("created {}; build and try it:", root.display());
    println!("  cd {}", root.display());
    for c in commands {
        println!("  {c}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir plugin stamp`: appends the contract version to a component that lacks it.
pub(super) fn plugin_stamp(plugin: &Path) -> Result<ExitCode> {
    let wasm = std::fs::read(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    if let Some(v) = weir::rules::stamped_contract(&wasm) {
        println!("{}: already stamped with contract {v}", plugin.display());
    } else {
        let stamped = weir::rules::stamp(&wasm);
        std::fs::write(plugin, &stamped)
            .with_context(|| format!("writing {}", plugin.display()))?;
        println!(
            "{}: stamped with contract {}",
            plugin.display(),
            weir::rules::stamped_contract(&stamped).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir plugin publish`: the plugin into S3 under a key that names its digest, and the config lines.
#[cfg(feature = "s3")]
pub(super) async fn plugin_publish(
    plugin: &Path,
    destination: &str,
    config_path: Option<&Path>,
) -> Result<ExitCode> {
    use weir::config::PluginLocation;
    let wasm = std::fs::read(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    if !wasm.starts_with(b"\0asm") {
        anyhow::bail!("{} is not a WebAssembly file", plugin.display());
    }
    match weir::rules::stamped_contract(&wasm) {
        Some(v) if weir::rules::contract_compatible(&v).is_none() => anyhow::bail!(
            "{} was built for contract {v}; this weir runs {}: rebuild it before publishing",
            plugin.display(),
            weir::rules::CONTRACT_VERSIONS.join(" and ")
        ),
        Some(_) => {}
        None => eprintln!(
            "warning: {} carries no contract stamp (`weir plugin stamp` adds one)",
            plugin.display()
        ),
    }
    let digest = weir::plugin_fetch::sha256_hex(&wasm);
    let PluginLocation::S3 { bucket, key } = PluginLocation::parse(destination) else {
        anyhow::bail!(
            "{destination}: give an S3 destination, s3://bucket/prefix/ or s3://bucket/key.wasm"
        );
    };
    if bucket.is_empty() {
        anyhow::bail!("{destination}: the bucket is missing; write s3://bucket/prefix/");
    }
    let key = if key.is_empty() || key.ends_with('/') {
        let name = PluginLocation::Local(plugin.to_path_buf()).name();
        format!("{key}{name}-{}.wasm", &digest[..12])
    } else {
        key
    };
    let aws = match config_path {
        Some(p) => config::load(p)?.config.aws,
        None => weir::aws::AwsConfig::default(),
    };
    let s3 = aws.s3().await;
    let target = format!("s3://{bucket}/{key}");
    // An object already at the key: the same bytes are a no-op; other bytes are never replaced (workers
    // pinned to their digest would stop on their next start).
    match s3.get_object().bucket(&bucket).key(&key).send().await {
        Ok(out) => {
            let there = out.body.collect().await?.into_bytes();
            let theirs = weir::plugin_fetch::sha256_hex(&there);
            if theirs != digest {
                anyhow::bail!(
                    "{target} already holds another plugin (sha256 {theirs}); publish under another key, \
                     or end the destination with / to name the object by its digest"
                );
            }
            eprintln!("{target} already holds this plugin");
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
            use base64::Engine as _;
            let raw: Vec<u8> = (0..digest.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digest[i..i + 2], 16).expect("hex"))
                .collect();
            s3.put_object()
                .bucket(&bucket)
                .key(&key)
                .content_type("application/wasm")
                .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(raw))
                .body(wasm.clone().into())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("uploading to {target}: {}", weir::aws::sdk_error(&e))
                })?;
            eprintln!(
                "published {} ({} bytes) to {target}",
                plugin.display(),
                wasm.len()
            );
        }
        Err(e) => anyhow::bail!("reading {target}: {}", weir::aws::sdk_error(&e)),
    }
    println!("# in [rule]:\nplugin = \"{target}\"\nsha256 = \"{digest}\"");
    Ok(ExitCode::SUCCESS)
}

/// `weir plugin publish` in a build without S3.
#[cfg(not(feature = "s3"))]
pub(super) async fn plugin_publish(
    _plugin: &Path,
    _destination: &str,
    _config_path: Option<&Path>,
) -> Result<ExitCode> {
    anyhow::bail!("{}", config::not_compiled("plugin publish", "s3://…", "s3"))
}
