//! `weir replay`: RAW back through a rule into the sink, in ledger order.

use super::*;

/// Replays RAW into the sink through `rule`: every RAW object of the window becomes a new unordered batch
/// (`replay-{run}/{original batch}`), committed like any batch — upserts by key, dead letters, a ledger row —
/// without moving a checkpoint. Returns (objects, records) replayed.
/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// RAW objects replayed.
    pub objects: usize,
    /// Records replayed.
    pub records: usize,
    /// RAW objects of the window that no ledger row committed (archived before a crash, say), not replayed.
    pub uncommitted: Vec<String>,
}

/// Replays RAW objects of the window in the order their batches first committed (the ledger's order), so
/// that where two objects hold versions of one key, the later one still wins; objects no ledger row committed
/// are skipped and listed.
pub async fn replay(
    run: &Run<'_>,
    rule: Arc<RulePlugin>,
    retry: &crate::config::RetryConfig,
) -> Result<Replayed, ReconcileError> {
    let (keys, uncommitted, ledger) = replay_order(run).await?;
    let run_id = crate::record::wall_clock_us() / 1000;
    let bar = progress_bar(run.progress, keys.len() as u64);
    let (mut objects, mut records) = (0, 0);
    for key in keys {
        let first = ledger.get(&key).and_then(|l| l.first());
        records += replay_object(run, &rule, retry, &key, first, run_id).await?;
        objects += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Replayed {
        objects,
        records,
        uncommitted,
    })
}

/// The ledger by RAW object, the window's committed objects in the order they first committed, and the
/// objects of the window no ledger row committed.
async fn replay_order(
    run: &Run<'_>,
) -> Result<(Vec<String>, Vec<String>, HashMap<String, Vec<LedgerRow>>), ReconcileError> {
    let ledger_rows = run.reader.ledger().await?;
    let mut committed_at: HashMap<String, usize> = HashMap::new();
    let mut ledger: HashMap<String, Vec<LedgerRow>> = HashMap::new();
    for (i, row) in ledger_rows.into_iter().enumerate() {
        let object = object_of(&row.raw_ref).to_string();
        committed_at.entry(object.clone()).or_insert(i);
        ledger.entry(object).or_default().push(row);
    }
    let mut keys = run.raw.list(run.window).await?;
    if let Some(batch) = &run.window.batch {
        keys.retain(|k| {
            ledger
                .get(k)
                .is_some_and(|l| l.iter().any(|l| &l.batch_id == batch))
        });
    }
    let (mut keys, uncommitted): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| committed_at.contains_key(k));
    keys.sort_by_key(|k| committed_at[k]);
    Ok((keys, uncommitted, ledger))
}

/// Re-runs the rule over one RAW object and commits it as a new unordered batch; returns its record count.
async fn replay_object(
    run: &Run<'_>,
    rule: &Arc<RulePlugin>,
    retry: &crate::config::RetryConfig,
    key: &str,
    first: Option<&LedgerRow>,
    run_id: i64,
) -> Result<usize, ReconcileError> {
    let instances = run.rule_instances;
    let lines = run.raw.get(key).await?;
    let (source, partition) = match first {
        Some(l) => (l.source.clone(), l.partition.clone()),
        None => partition_of_key(key),
    };
    let original = first
        .map(|l| l.batch_id.clone())
        .unwrap_or_else(|| key.to_string());
    let mut batch = crate::record::Batch {
        id: format!("replay-{run_id}/{original}"),
        source,
        partition,
        prev_position: String::new(),
        ordered: false,
        positions: lines.iter().map(|l| l.position.clone()).collect(),
        records: lines.iter().map(source_record).collect(),
        bytes: 0,
        started: std::time::Instant::now(),
        received_us: Vec::new(),
        fingerprint: None,
    };
    batch.bytes = batch.records.iter().map(|r| r.payload.len()).sum();
    let raw_refs: Vec<String> = (1..=lines.len()).map(|n| format!("{key}#{n}")).collect();
    let tables = run.tables.to_vec();
    let max_rows = run.max_rows;
    let r = rule.clone();
    let (batch, mut outcomes) = tokio::task::spawn_blocking(move || {
        let o = crate::rules::validate::run_checked(
            &r,
            &batch.id,
            &batch.records,
            &tables,
            max_rows,
            instances,
        );
        (batch, o)
    })
    .await
    .map_err(|e| ReconcileError::Rule(format!("rule run: {e}")))?;
    loop {
        let load = crate::sink::Load {
            batch: &batch,
            raw_refs: &raw_refs,
            outcomes: &outcomes,
            tables: run.tables,
            rule_digest: rule.digest(),
            loaded_at_us: crate::record::wall_clock_us(),
        };
        match crate::retry::retrying(retry, "replay commit", || run.sink.commit(&load)).await {
            Ok(_) => break,
            Err((_, SinkError::Rejected(refused))) => {
                for (i, reason) in refused {
                    outcomes[i] = RecordOutcome::Reject(validate::RejectStage::Sink, reason);
                }
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
    Ok(lines.len())
}
