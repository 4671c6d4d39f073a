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
    let lines = run.raw.get(key).await?;
    let (source, partition) = match first {
        Some(l) => (l.source.clone(), l.partition.clone()),
        None => partition_of_key(key),
    };
    let original = first
        .map(|l| l.batch_id.clone())
        .unwrap_or_else(|| key.to_string());
    let batch = unordered_batch(
        format!("replay-{run_id}/{original}"),
        source,
        partition,
        lines.iter(),
    );
    let raw_refs: Vec<String> = (1..=lines.len()).map(|n| format!("{key}#{n}")).collect();
    let outcomes = run_rule(run, rule, batch).await?;
    commit_outcomes(run, rule, retry, &outcomes.0, &raw_refs, outcomes.1, None).await?;
    Ok(lines.len())
}

/// Runs `rule` over the batch's records as the worker does (checked outcomes); gives the batch back.
pub(super) async fn run_rule(
    run: &Run<'_>,
    rule: &Arc<RulePlugin>,
    batch: crate::record::Batch,
) -> Result<(crate::record::Batch, Vec<RecordOutcome>), ReconcileError> {
    let (tables, max_rows, instances) = (run.tables.to_vec(), run.max_rows, run.rule_instances);
    let r = rule.clone();
    tokio::task::spawn_blocking(move || {
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
    .map_err(|e| ReconcileError::Rule(format!("rule run: {e}")))
}

/// Commits a batch's outcomes as one unordered batch (no checkpoint), retried; records whose rows the sink
/// refuses become dead letters and the rest commit. Returns the outcomes as committed.
pub(super) async fn commit_outcomes(
    run: &Run<'_>,
    rule: &Arc<RulePlugin>,
    retry: &crate::config::RetryConfig,
    batch: &crate::record::Batch,
    raw_refs: &[String],
    mut outcomes: Vec<RecordOutcome>,
    redrive: Option<crate::sink::Redrive<'_>>,
) -> Result<Vec<RecordOutcome>, ReconcileError> {
    loop {
        let load = crate::sink::Load {
            batch,
            raw_refs,
            outcomes: &outcomes,
            tables: run.tables,
            rule_digest: rule.digest(),
            loaded_at_us: crate::record::wall_clock_us(),
            redrive,
        };
        match crate::retry::retrying(retry, "replay commit", || run.sink.commit(&load)).await {
            Ok(_) => return Ok(outcomes),
            Err((_, SinkError::Rejected(refused))) => {
                for (i, reason) in refused {
                    outcomes[i] = RecordOutcome::Reject(validate::RejectStage::Sink, reason);
                }
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// A batch of RAW lines to load again: unordered (no checkpoint moves), its id given.
pub(super) fn unordered_batch<'l>(
    id: String,
    source: String,
    partition: String,
    lines: impl Iterator<Item = &'l RawLine> + Clone,
) -> crate::record::Batch {
    let records: Vec<SourceRecord> = lines.clone().map(source_record).collect();
    crate::record::Batch {
        id,
        source,
        partition,
        prev_position: String::new(),
        ordered: false,
        positions: lines.map(|l| l.position.clone()).collect(),
        bytes: records.iter().map(|r| r.payload.len()).sum(),
        records,
        started: std::time::Instant::now(),
        received_us: Vec::new(),
        fingerprint: None,
    }
}
