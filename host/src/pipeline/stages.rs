//! The stages, each a task between bounded channels: the batcher (source → batches), RAW, the rules, and the
//! sink stage that commits and then acknowledges.

use super::*;

/// Groups records into batches by count, bytes and wait time.
pub(super) async fn batcher(
    mut source: Box<dyn Source>,
    start: Start,
    limits: BatchConfig,
    out: mpsc::Sender<Batch>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let result = batches(source.as_mut(), start, limits, out, shutdown).await;
    source.close().await;
    result
}

/// The batcher's loop: records into batches of at most `limits`, each sent on once full or `max_wait_ms` old.
async fn batches(
    source: &mut dyn Source,
    start: Start,
    limits: BatchConfig,
    out: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let Start {
        position: mut prev_position,
        mut fingerprint,
    } = start;
    let source_name = source.source().to_string();
    let partition = source.partition().to_string();
    let max_wait = Duration::from_millis(limits.max_wait_ms);
    let ordered = source.ordered();
    let mut pending: Option<Batch> = None;
    let mut ended = false;
    while !ended {
        let deadline = pending
            .as_ref()
            .map(|b| tokio::time::Instant::from_std(b.started + max_wait));
        let flush = tokio::select! {
            biased;
            // The next stage is gone (the pipeline stopped): stop reading at once.
            _ = out.closed() => return Ok(()),
            _ = stopped(&mut shutdown) => {
                tracing::info!(source = %source_name, partition = %partition, "shutdown: finishing the in-flight batch");
                ended = true;
                true
            }
            _ = sleep_until(deadline) => true,
            next = source.next() => match next? {
                None => {
                    ended = true;
                    true
                }
                Some(polled) => {
                    let b = pending.get_or_insert_with(|| Batch {
                        id: String::new(),
                        source: source_name.clone(),
                        partition: partition.clone(),
                        prev_position: prev_position.clone(),
                        ordered,
                        positions: Vec::new(),
                        records: Vec::new(),
                        bytes: 0,
                        started: Instant::now(), // monotonic, for latency only
                        received_us: Vec::new(),
                        fingerprint: fingerprint.take(),
                    });
                    let offset = b.started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    b.received_us.push(offset);
                    b.bytes += polled.record.payload.len();
                    b.records.push(polled.record);
                    b.positions.push(polled.position);
                    b.records.len() >= limits.max_records || b.bytes >= limits.max_bytes
                }
            },
        };
        if flush && let Some(mut b) = pending.take() {
            b.assign_id();
            crate::metrics::global().observe_stage("fetch", b.started.elapsed());
            prev_position = b.last_position().to_string();
            if out.send(b).await.is_err() {
                return Ok(()); // a later stage stopped; it reports why
            }
        }
    }
    Ok(())
}

/// Resolves when shutdown is requested; never, if the sender is gone without asking.
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn raw_stage(
    raw: Arc<dyn RawStore>,
    retry: RetryConfig,
    mut input: mpsc::Receiver<Batch>,
    out: mpsc::Sender<Archived>,
) -> Result<(), PipelineError> {
    let crash = CrashPoint::from_env("raw");
    let mut done = 0;
    while let Some(batch) = input.recv().await {
        let span = tracing::info_span!("raw", batch = %batch.id, partition = %batch.partition);
        let began = Instant::now();
        let raw_refs = retrying(&retry, "RAW write", || raw.put(&batch))
            .instrument(span)
            .await
            .map_err(|(attempts, e)| PipelineError::Raw {
                batch: batch.id.clone(),
                attempts,
                source: e,
            })?;
        crate::metrics::global().observe_stage("raw", began.elapsed());
        done += 1;
        CrashPoint::check(crash, done);
        if out.send(Archived { batch, raw_refs }).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

pub(super) async fn rules_stage(
    rule: Arc<RulePlugin>,
    tables: Arc<Vec<TableSpec>>,
    max_rows: usize,
    instances: usize,
    mut input: mpsc::Receiver<Archived>,
    out: mpsc::Sender<Processed>,
) -> Result<(), PipelineError> {
    while let Some(Archived { batch, raw_refs }) = input.recv().await {
        let rule = rule.clone();
        let tables = tables.clone();
        let began = Instant::now();
        let (batch, outcomes) = tokio::task::spawn_blocking(move || {
            let outcomes = crate::rules::validate::run_checked(
                &rule,
                &batch.id,
                &batch.records,
                &tables,
                max_rows,
                instances,
            );
            (batch, outcomes)
        })
        .await
        .map_err(|e| PipelineError::Stage(format!("rule stage: {e}")))?;
        crate::metrics::global().observe_stage("rule", began.elapsed());
        if out
            .send(Processed {
                batch,
                raw_refs,
                outcomes,
            })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

pub(super) async fn sink_stage(
    sink: Arc<dyn Sink>,
    rule_digest: String,
    tables: Arc<Vec<TableSpec>>,
    retry: RetryConfig,
    mut input: mpsc::Receiver<Processed>,
    mut acker: Box<dyn crate::source::Acker>,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let crash = CrashPoint::from_env("commit");
    while let Some(mut p) = input.recv().await {
        let span = tracing::info_span!("load", batch = %p.batch.id, partition = %p.batch.partition);
        let loaded_at_us = crate::record::wall_clock_us();
        let began = Instant::now();
        let commit = loop {
            let load = Load {
                batch: &p.batch,
                raw_refs: &p.raw_refs,
                outcomes: &p.outcomes,
                tables: &tables,
                rule_digest: &rule_digest,
                loaded_at_us,
                redrive: None,
            };
            match retrying(&retry, "commit", || sink.commit(&load))
                .instrument(span.clone())
                .await
            {
                Ok(commit) => break commit,
                // Rows the database refuses are dead-lettered; the rest of the batch commits.
                Err((_, SinkError::Rejected(refused))) => {
                    for (i, reason) in refused {
                        span.in_scope(|| tracing::warn!(record = %p.batch.records[i].id, %reason, "dead-lettered by the sink"));
                        p.outcomes[i] = RecordOutcome::Reject(validate::RejectStage::Sink, reason);
                    }
                }
                Err((attempts, e)) => {
                    return Err(PipelineError::Sink {
                        batch: p.batch.id.clone(),
                        attempts,
                        source: e,
                    });
                }
            }
        };
        if commit == Commit::NotOwner {
            return Err(PipelineError::NotOwner {
                source_name: p.batch.source.clone(),
                partition: p.batch.partition.clone(),
            });
        }
        CrashPoint::check(crash, summary.batches + 1);
        acknowledge(&p, &tables, acker.as_mut(), summary, began)
            .instrument(span.clone())
            .await?;
    }
    acker.finish().await;
    Ok(())
}

/// After a batch committed: acknowledges its source, counts it, records its metrics.
pub(super) async fn acknowledge(
    p: &Processed,
    tables: &[TableSpec],
    acker: &mut dyn crate::source::Acker,
    summary: &mut Summary,
    began: Instant,
) -> Result<(), PipelineError> {
    let committed_us = p.batch.started.elapsed().as_micros() as u64;
    for offset in &p.batch.received_us {
        summary.latency.record(Duration::from_micros(
            committed_us.saturating_sub(*offset as u64),
        ));
    }
    acker.ack(&p.batch).await?;
    summary.add(tables, &p.outcomes);
    record_metrics(
        tables,
        &p.outcomes,
        began.elapsed(),
        p.batch.started.elapsed(),
    );
    let c = crate::sink::Counts::of(&p.outcomes);
    tracing::info!(
        records = c.records_in,
        emitted = c.emitted,
        dropped = c.dropped,
        rejected = c.rejected,
        rows = c.rows_out,
        ms = p.batch.started.elapsed().as_millis() as u64,
        "committed"
    );
    Ok(())
}
