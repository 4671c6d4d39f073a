//! The sink stage with grouped commits (docs/GROUP-COMMIT.md, steps W4–W6): each batch is staged and
//! registered, then acknowledged in order once the registry says the loader merged it. Staging goes on while
//! earlier batches wait, up to `max_in_flight`.

use std::collections::VecDeque;

use super::*;
use crate::group::{Fate, GroupCommit, Registration, StagedBatch, staged_key};

pub(super) async fn group_sink_stage(
    group: GroupCommit,
    rule_digest: String,
    tables: Arc<Vec<TableSpec>>,
    retry: RetryConfig,
    mut input: mpsc::Receiver<Processed>,
    mut acker: Box<dyn crate::source::Acker>,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let crash = CrashPoint::from_env("commit");
    let crash_staged = CrashPoint::from_env("staged");
    let crash_registered = CrashPoint::from_env("registered");
    let mut submitted = 0;
    let mut window: VecDeque<(Processed, Instant)> = VecDeque::new();
    let mut open = true;
    let mut tick = tokio::time::interval(group.settle_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !open && window.is_empty() {
            acker.finish().await;
            return Ok(());
        }
        tokio::select! {
            next = input.recv(), if open && window.len() < group.max_in_flight.max(1) => match next {
                Some(p) => {
                    let began = Instant::now();
                    // Every batch already waiting goes with it: staged one by one, registered together.
                    let mut ready = vec![p];
                    while window.len() + ready.len() < group.max_in_flight.max(1) {
                        match input.try_recv() {
                            Ok(more) => ready.push(more),
                            Err(_) => break,
                        }
                    }
                    let crashes = (crash_staged, crash_registered, submitted);
                    submit(&group, &ready, &rule_digest, &tables, &retry, crashes).await?;
                    submitted += ready.len();
                    for mut p in ready {
                        slim(&mut p);
                        window.push_back((p, began));
                    }
                }
                None => open = false,
            },
            _ = tick.tick(), if !window.is_empty() => {
                let ids: Vec<String> = window.iter().map(|(p, _)| p.batch.id.clone()).collect();
                let fates = retrying(&retry, "registry read", || group.registry.fates(&ids))
                    .await
                    .map_err(|(attempts, e)| PipelineError::Sink {
                        batch: ids[0].clone(),
                        attempts,
                        source: e,
                    })?;
                // In order: a batch is acknowledged only after every earlier one of its partition.
                while let Some((p, began)) = window.front() {
                    match fates.get(&p.batch.id).copied().unwrap_or(Fate::Pending) {
                        Fate::Pending => break,
                        Fate::Refused => {
                            return Err(PipelineError::NotOwner {
                                source_name: p.batch.source.clone(),
                                partition: p.batch.partition.clone(),
                            });
                        }
                        Fate::Merged => {
                            let span = tracing::info_span!("load", batch = %p.batch.id, partition = %p.batch.partition);
                            CrashPoint::check(crash, summary.batches + 1);
                            acknowledge(p, &tables, acker.as_mut(), summary, *began)
                                .instrument(span)
                                .await?;
                            window.pop_front();
                        }
                    }
                }
            }
        }
    }
}

/// Once staged, a batch waiting for its merge keeps only what acknowledging and counting it need (ids,
/// positions, outcomes without values), so that a window of many batches stays small in memory.
fn slim(p: &mut Processed) {
    for r in &mut p.batch.records {
        r.payload = Vec::new();
        r.attributes = Vec::new();
    }
    for o in &mut p.outcomes {
        if let RecordOutcome::Emit(rows) = o {
            for row in rows {
                row.cells = Vec::new();
            }
        }
    }
}

/// Stages each batch (W4), then registers them all (W5), each step retried; both are idempotent. `crashes`
/// holds the test crash points and the number of batches submitted before these.
async fn submit(
    group: &GroupCommit,
    ready: &[Processed],
    rule_digest: &str,
    tables: &[TableSpec],
    retry: &RetryConfig,
    (crash_staged, crash_registered, before): (Option<CrashPoint>, Option<CrashPoint>, usize),
) -> Result<(), PipelineError> {
    let mut entries = Vec::with_capacity(ready.len());
    for (i, p) in ready.iter().enumerate() {
        entries.push(stage(group, p, rule_digest, tables, retry).await?);
        CrashPoint::check(crash_staged, before + i + 1);
    }
    let span =
        tracing::info_span!("register", batches = entries.len(), first = %entries[0].batch_id);
    retrying(retry, "registration", || {
        group.registry.register_many(&entries)
    })
    .instrument(span)
    .await
    .map_err(|(attempts, e)| PipelineError::Sink {
        batch: entries[0].batch_id.clone(),
        attempts,
        source: e,
    })?;
    for n in before + 1..=before + ready.len() {
        CrashPoint::check(crash_registered, n);
    }
    Ok(())
}

/// Stages one batch (W4): its rows where the warehouse bulk-loads them from (if it does), then the staged
/// object. Returns its registration.
async fn stage(
    group: &GroupCommit,
    p: &Processed,
    rule_digest: &str,
    tables: &[TableSpec],
    retry: &RetryConfig,
) -> Result<Registration, PipelineError> {
    let span = tracing::info_span!("stage", batch = %p.batch.id, partition = %p.batch.partition);
    let load = Load {
        batch: &p.batch,
        raw_refs: &p.raw_refs,
        outcomes: &p.outcomes,
        tables,
        rule_digest,
        loaded_at_us: crate::record::wall_clock_us(),
        redrive: None,
    };
    let failed = |(attempts, e)| PipelineError::Sink {
        batch: p.batch.id.clone(),
        attempts,
        source: e,
    };
    let row_files = retrying(retry, "row files", || group.warehouse.stage_rows(&load))
        .instrument(span.clone())
        .await
        .map_err(failed)?;
    let bytes = StagedBatch::of(&load)
        .with_row_files(row_files)
        .into_bytes();
    let entry = Registration {
        batch_id: p.batch.id.clone(),
        source: p.batch.source.clone(),
        partition: p.batch.partition.clone(),
        key: staged_key(&p.batch.id),
        bytes: bytes.len() as i64,
    };
    retrying(retry, "staging write", || {
        group.staging.put(&entry.key, bytes.clone())
    })
    .instrument(span)
    .await
    .map_err(failed)?;
    Ok(entry)
}
