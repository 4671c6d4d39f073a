//! `weir dead-letters list|export|redrive`: the dead letters of a time range (and reason); their RAW records
//! written out — to a file, stdout or S3 — for a rule fix to be tried on (`weir plugin test --input`); and,
//! once the fixed rule is deployed, those records loaded through it.

use super::*;

/// Which dead letters (`--since`, `--reason`, `--limit`).
#[derive(clap::Args)]
pub(crate) struct Selection {
    /// The configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// Written since: RFC 3339, `2026-11-21T10`, `2026-11-21`, or an age such as `1h` or `2d`.
    #[arg(long, default_value = "1h")]
    since: String,
    /// Only dead letters whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// At most this many (oldest first).
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
}

/// What `export` writes.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ExportFormat {
    /// One JSON object per record: id, stage, reason, payload (text, or base64 with
    /// `payload_encoding = "base64"`), source attributes.
    Records,
    /// The payloads alone, one per line (the input of `weir plugin test`); a payload that is not one line of
    /// UTF-8 is left out and counted.
    Payloads,
}

#[derive(Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Print the selected dead letters (record, stage, reason, when, payload preview).
    List {
        #[command(flatten)]
        selection: Selection,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the RAW records of the selected dead letters to a file, `-` (stdout) or `s3://bucket/key`.
    Export {
        #[command(flatten)]
        selection: Selection,
        /// Where to write.
        #[arg(long)]
        to: String,
        /// What to write.
        #[arg(long, value_enum, default_value = "records")]
        format: ExportFormat,
    },
    /// Run the RAW records of the selected dead letters through the configured rule again and load what it
    /// now emits (idempotent; a newer row of the same key is never replaced; the ledger records each batch).
    Redrive {
        #[command(flatten)]
        selection: Selection,
        /// Run the rule and report what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn dead_letters(command: DeadLettersCommand) -> Result<ExitCode> {
    match command {
        DeadLettersCommand::List { selection, json } => {
            let (_, entries) = select(&selection).await?;
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!(
                        "{}  {}  {}  {}  {}",
                        weir::schema::format_timestamp_us(e.at_us),
                        e.record_id,
                        e.stage,
                        e.reason.replace('\n', " "),
                        e.payload_preview.replace('\n', " ")
                    );
                }
            }
            if !json {
                eprintln!("{} dead letters", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Export {
            selection,
            to,
            format,
        } => export(&selection, &to, format).await,
        DeadLettersCommand::Redrive {
            selection,
            dry_run,
            json,
        } => redrive(&selection, dry_run, json).await,
    }
}

async fn redrive(s: &Selection, dry: bool, json: bool) -> Result<ExitCode> {
    use std::sync::Arc;
    let (loaded, entries) = select(s).await?;
    let runtime = weir::worker::runtime(&loaded)?;
    let limits = weir::worker::rule_limits(&loaded);
    let settings = weir::worker::rule_settings(&loaded);
    let rule = Arc::new(weir::worker::load_rule(&runtime, &loaded).await?);
    let store = (!dry).then_some(&*rule);
    let target = super::LoadTarget::open(&loaded, runtime, limits, settings, store).await?;
    let window = weir::reconcile::Window::default();
    let run = target.run(&loaded, &window);
    let done =
        weir::reconcile::redrive(&run, rule.clone(), &loaded.config.retry, &entries, dry).await?;
    let sink = &target.sink;
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (verb, now) = if dry {
        ("would redrive", "would")
    } else {
        ("redrove", "now")
    };
    println!(
        "{verb} {} of {} dead letters from {} RAW objects through rule {} into {}",
        done.selected - done.not_found,
        done.selected,
        done.objects,
        rule.digest(),
        sink.describe()
    );
    println!(
        "  {:>8}  {now} emit rows (dead letter removed)",
        done.emitted
    );
    println!(
        "  {:>8}  {now} dropped by the rule (dead letter removed)",
        done.dropped
    );
    println!(
        "  {:>8}  rejected again (dead letter kept, with the new reason)",
        done.still_rejected()
    );
    for (reason, n) in &done.rejected {
        println!("  {n:>8}    {reason}");
    }
    if done.rows_kept > 0 {
        println!(
            "  {:>8}  rows not written: a record that committed later holds their key (declare the table's \
             version_column to order rows by a field instead)",
            done.rows_kept
        );
    }
    if done.not_found > 0 {
        println!(
            "  {:>8}  records not found in RAW (left as dead letters): {}{}",
            done.not_found,
            done.not_found_ids.join(", "),
            if done.not_found > done.not_found_ids.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn select(s: &Selection) -> Result<(config::Loaded, Vec<weir::sink::DeadLetterEntry>)> {
    let loaded = config::load(&s.config)?;
    let now_ms = weir::record::wall_clock_us() / 1000;
    let since_ms = weir::reconcile::Window::parse_time(&s.since, now_ms)
        .with_context(|| format!("--since {:?}", s.since))?;
    let sink = weir::worker::connect_sink(&loaded).await?;
    let entries = sink
        .dead_letter_entries(since_ms * 1000, s.reason.as_deref(), s.limit)
        .await?;
    Ok((loaded, entries))
}

async fn export(s: &Selection, to: &str, format: ExportFormat) -> Result<ExitCode> {
    let (loaded, entries) = select(s).await?;
    let raw = weir::worker::open_raw(&loaded).await?;
    // Each RAW object is read once for all its dead letters.
    let mut by_object: std::collections::BTreeMap<String, Vec<&weir::sink::DeadLetterEntry>> =
        Default::default();
    for e in &entries {
        by_object
            .entry(weir::reconcile::object_of(&e.raw_ref).to_string())
            .or_default()
            .push(e);
    }
    let mut out: Vec<u8> = Vec::new();
    let (mut written, mut missing, mut left_out) = (0usize, 0usize, 0usize);
    for (object, wanted) in by_object {
        let lines = raw
            .get(&object)
            .await
            .with_context(|| format!("reading RAW {object}"))?;
        for e in wanted {
            let Some(line) = lines.iter().find(|l| l.id == e.record_id) else {
                missing += 1;
                continue;
            };
            match format {
                ExportFormat::Records => {
                    let value = serde_json::json!({
                        "id": line.id,
                        "stage": e.stage,
                        "reason": e.reason,
                        "partition_key": line.partition_key,
                        "arrived_at_ms": line.arrived_at_ms,
                        "attributes": line.attributes,
                        "payload": line.payload,
                        "payload_encoding": line.payload_encoding,
                    });
                    out.extend_from_slice(value.to_string().as_bytes());
                    out.push(b'\n');
                }
                ExportFormat::Payloads => {
                    if line.payload_encoding != "utf8" || line.payload.contains('\n') {
                        left_out += 1;
                        continue;
                    }
                    out.extend_from_slice(line.payload.as_bytes());
                    out.push(b'\n');
                }
            }
            written += 1;
        }
    }
    write_to(&loaded, to, out).await?;
    eprintln!(
        "exported {written} of {} dead letters to {to}{}{}",
        entries.len(),
        if missing > 0 {
            format!("; {missing} not found in RAW")
        } else {
            String::new()
        },
        if left_out > 0 {
            format!("; {left_out} payloads not one line of text left out (use --format records)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn write_to(loaded: &config::Loaded, to: &str, bytes: Vec<u8>) -> Result<()> {
    if to == "-" {
        use std::io::Write as _;
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    if let Some(rest) = to.strip_prefix("s3://") {
        #[cfg(feature = "s3")]
        {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() {
                anyhow::bail!("--to {to}: write s3://bucket/key");
            }
            loaded
                .config
                .aws
                .s3()
                .await
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(bytes.into())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("writing {to}: {}", weir::aws::sdk_error(&e)))?;
            return Ok(());
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = (loaded, rest);
            anyhow::bail!("{}", config::not_compiled("--to", "s3://…", "s3"));
        }
    }
    std::fs::write(to, bytes).with_context(|| format!("writing {to}"))
}
