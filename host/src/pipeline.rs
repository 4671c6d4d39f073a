//! The pipeline: `Source → RawStore → Rules → Sink → Ack`, one direction, one task per stage.
//!
//! Stages are joined by bounded channels (`batch.queue_depth`), so a slow sink slows the source down instead
//! of piling batches up in memory. The pipeline owns batching, retries with backoff, the dead-letter path and
//! acknowledgements; backends do only their own I/O.
//!
//! Exactly-once final state: RAW keys are deterministic, rows are upserted by primary key, and the
//! checkpoint compare-and-set commits in the same transaction as the rows. A batch is acknowledged to the
//! source only after that commit, so a crash anywhere leads to a retry that leaves the same final state.
//!
//! Shutdown: when the `shutdown` signal fires, the batcher stops reading, hands on the records it already
//! has as a last batch, and every stage drains and exits after the last commit.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::{BatchConfig, RetryConfig};
use crate::raw::RawStore;
use crate::record::Batch;
use crate::rules::RulePlugin;
use crate::rules::validate::{self, RecordOutcome};
use crate::schema::TableSpec;
use crate::sink::{Commit, Load, Sink, SinkError};
use crate::source::Source;

/// Why a pipeline stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// RAW could not be written after all retries.
    #[error("RAW write of batch {batch} failed after {attempts} attempts: {message}")]
    Raw {
        batch: String,
        attempts: u32,
        message: String,
    },
    /// The sink failed permanently or after all retries.
    #[error("commit of batch {batch} failed after {attempts} attempts: {message}")]
    Sink {
        batch: String,
        attempts: u32,
        message: String,
    },
    /// Another worker owns the partition.
    #[error(
        "partition {partition} of {source_name} is owned by another worker (checkpoint moved); giving it up"
    )]
    NotOwner {
        source_name: String,
        partition: String,
    },
    /// A stage task failed.
    #[error("pipeline stage failed: {0}")]
    Stage(String),
    /// The input behind a checkpoint changed (a file rewritten in place).
    #[error(
        "{source_name} {partition}: the input changed since its checkpoint (position {position}): its first \
         bytes differ from those loaded before, so resuming would skip or mix up records. To load it as new \
         input, give it another `source.name`; to start this partition over, delete its checkpoint rows \
         (`DELETE FROM weir_checkpoints WHERE source = '{source_name}' AND \"partition\" IN ('{partition}', \
         '{partition}#fingerprint')`)"
    )]
    InputChanged {
        source_name: String,
        partition: String,
        position: String,
    },
}

/// What a run did, for the end-of-run summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Batches committed.
    pub batches: usize,
    /// Records read and committed.
    pub records_in: usize,
    /// Rows upserted per table.
    pub rows: BTreeMap<String, usize>,
    /// Records dropped, by reason (the most frequent reasons; bounded).
    pub dropped: Tally,
    /// Records rejected (dead-lettered), by reason (the most frequent reasons; bounded).
    pub rejected: Tally,
    /// Where RAW went.
    pub raw: String,
    /// Where rows and dead letters went.
    pub sink: String,
    /// Per record, from its receipt by the source to the commit of its batch.
    pub latency: crate::metrics::Histogram,
}

impl Summary {
    fn add(&mut self, tables: &[TableSpec], outcomes: &[RecordOutcome]) {
        self.batches += 1;
        self.records_in += outcomes.len();
        for o in outcomes {
            match o {
                RecordOutcome::Emit(rows) => {
                    for row in rows {
                        *self.rows.entry(tables[row.table].name.clone()).or_default() += 1;
                    }
                }
                RecordOutcome::Drop(r) => self.dropped.add(r, 1),
                RecordOutcome::Reject(_, r) => self.rejected.add(r, 1),
            }
        }
    }

    /// Adds another run's counts (one worker running several partitions).
    pub fn merge(&mut self, other: Summary) {
        self.batches += other.batches;
        self.records_in += other.records_in;
        for (k, v) in other.rows {
            *self.rows.entry(k).or_default() += v;
        }
        self.dropped.merge(other.dropped);
        self.rejected.merge(other.rejected);
        if self.raw.is_empty() {
            self.raw = other.raw;
            self.sink = other.sink;
        }
        self.latency.merge(&other.latency);
    }

    /// The summary as text for a terminal.
    pub fn render(&self) -> String {
        let mut s = format!(
            "records in: {} in {} batches\n",
            self.records_in, self.batches
        );
        s.push_str("rows upserted:\n");
        if self.rows.is_empty() {
            s.push_str("  (none)\n");
        }
        for (t, n) in &self.rows {
            s.push_str(&format!("  {t}: {n}\n"));
        }
        for (what, tally) in [("dropped", &self.dropped), ("rejected", &self.rejected)] {
            s.push_str(&format!("{what}: {}\n", tally.total()));
            for (r, n) in tally.top() {
                s.push_str(&format!("  {n} × {r}\n"));
            }
            if tally.other() > 0 {
                s.push_str(&format!("  {} × (other reasons)\n", tally.other()));
            }
        }
        if let (Some(p50), Some(p99)) = (self.latency.quantile(0.5), self.latency.quantile(0.99)) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            s.push_str(&format!(
                "latency, receive to commit: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
                ms(p50),
                ms(p99),
                ms(self.latency.max())
            ));
        }
        s.push_str(&format!("RAW copies: {}\n", self.raw));
        s.push_str(&format!(
            "rows, ledger and dead letters: {} (table weir_dead_letters)\n",
            self.sink
        ));
        s
    }
}

/// Counts by reason with bounded memory, for a summary that lives as long as the worker: reasons are cut to
/// [`Tally::REASON_BYTES`]; past [`Tally::KEEP_MAX`] distinct reasons, all but the [`Tally::TOP`] most
/// frequent are folded into one "other" count. Totals stay exact.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    counts: std::collections::HashMap<String, usize>,
    other: usize,
}

impl Tally {
    /// Reasons shown.
    pub const TOP: usize = 20;
    /// Distinct reasons kept before folding.
    pub const KEEP_MAX: usize = 1_000;
    /// Longest reason kept, UTF-8 bytes.
    pub const REASON_BYTES: usize = 512;

    /// Counts `n` more of `reason`.
    pub fn add(&mut self, reason: &str, n: usize) {
        let reason = crate::sink::clean_text(reason, Self::REASON_BYTES);
        *self.counts.entry(reason).or_default() += n;
        if self.counts.len() > Self::KEEP_MAX {
            let ranked = self.ranked();
            self.other += ranked[Self::TOP..].iter().map(|(_, n)| n).sum::<usize>();
            self.counts = ranked.into_iter().take(Self::TOP).collect();
        }
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: Tally) {
        for (r, n) in other.counts {
            self.add(&r, n);
        }
        self.other += other.other;
    }

    /// Every counted record.
    pub fn total(&self) -> usize {
        self.counts.values().sum::<usize>() + self.other
    }

    /// Records whose reason is not among the kept ones.
    pub fn other(&self) -> usize {
        self.other
            + self
                .ranked()
                .iter()
                .skip(Self::TOP)
                .map(|(_, n)| n)
                .sum::<usize>()
    }

    /// The most frequent reasons with their counts, most frequent first.
    pub fn top(&self) -> Vec<(String, usize)> {
        self.ranked().into_iter().take(Self::TOP).collect()
    }

    /// Distinct reasons held (bounded by [`Tally::KEEP_MAX`]).
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    fn ranked(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> =
            self.counts.iter().map(|(r, n)| (r.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// Everything a pipeline run needs.
pub struct Pipeline {
    /// The source partition to read.
    pub source: Box<dyn Source>,
    /// Where RAW goes.
    pub raw: Arc<dyn RawStore>,
    /// The rule.
    pub rule: Arc<RulePlugin>,
    /// Where rows go.
    pub sink: Arc<dyn Sink>,
    /// The declared tables.
    pub tables: Arc<Vec<TableSpec>>,
    /// Batch limits.
    pub batch: BatchConfig,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Most rows per record.
    pub max_rows_per_record: usize,
    /// Rule instances working on one batch in parallel.
    pub rule_instances: usize,
}

/// A batch after RAW, with its references.
struct Archived {
    batch: Batch,
    raw_refs: Vec<String>,
}

/// A batch after the rules.
struct Processed {
    batch: Batch,
    raw_refs: Vec<String>,
    outcomes: Vec<RecordOutcome>,
}

impl Pipeline {
    /// Runs until the source ends or `shutdown` becomes true; returns what was committed.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<Summary, PipelineError> {
        let Pipeline {
            mut source,
            raw,
            rule,
            sink,
            tables,
            batch,
            retry,
            max_rows_per_record,
            rule_instances,
        } = self;
        let source_name = source.source().to_string();
        let partition = source.partition().to_string();
        let position = if source.ordered() {
            retrying(&retry, "read checkpoint", || {
                sink.checkpoint(&source_name, &partition)
            })
            .await
            .map_err(|(attempts, e)| PipelineError::Sink {
                batch: "(checkpoint)".into(),
                attempts,
                message: e.to_string(),
            })?
        } else {
            String::new()
        };
        if let Some(fingerprint) = source.fingerprint() {
            let row = crate::source::fingerprint_partition(&partition);
            let stored = fingerprint_io(&retry, || sink.checkpoint(&source_name, &row)).await?;
            if !position.is_empty() && !stored.is_empty() && !source.same_input(&stored) {
                return Err(PipelineError::InputChanged {
                    source_name,
                    partition,
                    position,
                });
            }
            if stored != fingerprint {
                fingerprint_io(&retry, || {
                    sink.set_checkpoint(&source_name, &row, &stored, &fingerprint)
                })
                .await?;
            }
        }
        source.seek(&position).await?;
        tracing::info!(source = %source_name, partition = %partition, checkpoint = %position, "starting");

        let depth = batch.queue_depth;
        let (to_raw, from_batcher) = mpsc::channel::<Batch>(depth);
        let (to_rules, from_raw) = mpsc::channel::<Archived>(depth);
        let (to_sink, from_rules) = mpsc::channel::<Processed>(depth);
        let mut summary = Summary {
            raw: raw.describe(),
            sink: sink.describe(),
            ..Summary::default()
        };
        let acker = source.acker();

        // Every stage task is aborted when the run ends, however it ends (an early error return drops the
        // guard): a stopped pipeline leaves no reader polling its source.
        let mut stages = StageTasks::default();
        let batcher = stages.spawn(batcher(source, position, batch, to_raw, shutdown));
        let raw_stage = stages.spawn(raw_stage(raw, retry.clone(), from_batcher, to_rules));
        let rules_stage = stages.spawn(rules_stage(
            rule.clone(),
            tables.clone(),
            max_rows_per_record,
            rule_instances,
            from_raw,
            to_sink,
        ));
        let sink_result = sink_stage(
            sink,
            rule.digest().to_string(),
            tables,
            retry,
            from_rules,
            acker,
            &mut summary,
        )
        .await;
        if let Err(e) = sink_result {
            stages.abort_all().await;
            return Err(e);
        }
        for stage in [batcher, raw_stage, rules_stage] {
            if let Err(e) = stages.join(stage).await {
                stages.abort_all().await;
                return Err(e);
            }
        }
        Ok(summary)
    }
}

/// The stage tasks of one run; aborted when dropped.
#[derive(Default)]
struct StageTasks {
    tasks: Vec<Option<tokio::task::JoinHandle<Result<(), PipelineError>>>>,
}

impl StageTasks {
    fn spawn(
        &mut self,
        f: impl Future<Output = Result<(), PipelineError>> + Send + 'static,
    ) -> usize {
        self.tasks.push(Some(tokio::spawn(f)));
        self.tasks.len() - 1
    }

    async fn join(&mut self, i: usize) -> Result<(), PipelineError> {
        match self.tasks[i].take() {
            Some(task) => match task.await {
                Ok(inner) => inner,
                Err(e) => Err(PipelineError::Stage(e.to_string())),
            },
            None => Ok(()),
        }
    }

    /// Aborts every stage still running and waits until each has stopped.
    async fn abort_all(&mut self) {
        for task in self.tasks.iter_mut().filter_map(Option::take) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for StageTasks {
    fn drop(&mut self) {
        for task in self.tasks.iter().flatten() {
            task.abort();
        }
    }
}

/// Reads or writes the input fingerprint kept beside a checkpoint (refusing to resume a checkpoint on other
/// input than the one it was taken of, a file rewritten in place), with the retry policy.
async fn fingerprint_io<T, F, Fut>(retry: &RetryConfig, op: F) -> Result<T, PipelineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    retrying(retry, "input fingerprint", op)
        .await
        .map_err(|(attempts, e)| PipelineError::Sink {
            batch: "(input fingerprint)".into(),
            attempts,
            message: e.to_string(),
        })
}

/// Groups records into batches by count, bytes and wait time.
async fn batcher(
    mut source: Box<dyn Source>,
    mut prev_position: String,
    limits: BatchConfig,
    out: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
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
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn raw_stage(
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
                message: e.to_string(),
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

async fn rules_stage(
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
            let outcomes = run_rule(
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

/// Runs a batch's records through the rule and checks the outcomes: contiguous slices on `instances`
/// parallel instances, outcomes in record order. Blocking. Replay and reconcile call it with the same
/// `instances` as the worker, so every rule call sees the same records — and the same deterministic world
/// (`rules::world`) — as when the batch was loaded.
pub fn run_rule(
    rule: &RulePlugin,
    batch_id: &str,
    records: &[crate::rules::SourceRecord],
    tables: &[TableSpec],
    max_rows: usize,
    instances: usize,
) -> Vec<RecordOutcome> {
    let run = |records: &[crate::rules::SourceRecord]| -> Vec<RecordOutcome> {
        rule.process(batch_id, records)
            .into_iter()
            .map(|raw| validate::check(raw, tables, max_rows))
            .collect()
    };
    let slice = records.len().div_ceil(instances.max(1)).max(1);
    if instances <= 1 || records.len() <= slice {
        return run(records);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(slice)
            .map(|chunk| scope.spawn(move || run(chunk)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("rule slices do not panic"))
            .collect()
    })
}

async fn sink_stage(
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
                        message: e.to_string(),
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
        let committed_us = p.batch.started.elapsed().as_micros() as u64;
        for offset in &p.batch.received_us {
            summary.latency.record(Duration::from_micros(
                committed_us.saturating_sub(*offset as u64),
            ));
        }
        CrashPoint::check(crash, summary.batches + 1);
        acker.ack(&p.batch).instrument(span.clone()).await?;
        summary.add(&tables, &p.outcomes);
        record_metrics(
            &tables,
            &p.outcomes,
            began.elapsed(),
            p.batch.started.elapsed(),
        );
        let c = crate::sink::Counts::of(&p.outcomes);
        span.in_scope(|| {
            tracing::info!(
                records = c.records_in,
                emitted = c.emitted,
                dropped = c.dropped,
                rejected = c.rejected,
                rows = c.rows_out,
                ms = p.batch.started.elapsed().as_millis() as u64,
                "committed"
            )
        });
    }
    Ok(())
}

/// A crash injected for recovery tests: `WEIR_CRASH_AFTER=raw:N` aborts the process right after the N-th RAW
/// write, `commit:N` right after the N-th commit (before its acknowledgement). Unset in production.
#[derive(Clone, Copy)]
struct CrashPoint {
    stage: &'static str,
    after: usize,
}

impl CrashPoint {
    fn from_env(stage: &'static str) -> Option<Self> {
        let spec = std::env::var("WEIR_CRASH_AFTER").ok()?;
        let (s, n) = spec.split_once(':')?;
        (s == stage).then_some(CrashPoint {
            stage,
            after: n.parse().ok()?,
        })
    }

    fn check(point: Option<Self>, done: usize) {
        if let Some(p) = point
            && done == p.after
        {
            eprintln!("WEIR_CRASH_AFTER: aborting after {} {}", p.stage, done);
            std::process::abort();
        }
    }
}

/// Counts a committed batch in the process's metrics.
fn record_metrics(
    tables: &[TableSpec],
    outcomes: &[RecordOutcome],
    load: Duration,
    end_to_end: Duration,
) {
    let m = crate::metrics::global();
    m.observe_stage("load", load);
    m.observe_stage("end_to_end", end_to_end);
    m.inc("weir_batches_total", &[], 1);
    let (mut emitted, mut dropped, mut rejected) = (0, 0, 0);
    let mut rows: BTreeMap<&str, u64> = BTreeMap::new();
    let mut dead: BTreeMap<&'static str, u64> = BTreeMap::new();
    for o in outcomes {
        match o {
            RecordOutcome::Emit(r) => {
                emitted += 1;
                for row in r {
                    *rows.entry(&tables[row.table].name).or_default() += 1;
                }
            }
            RecordOutcome::Drop(_) => dropped += 1,
            RecordOutcome::Reject(stage, _) => {
                rejected += 1;
                *dead.entry(stage.as_str()).or_default() += 1;
            }
        }
    }
    for (outcome, n) in [
        ("emitted", emitted),
        ("dropped", dropped),
        ("rejected", rejected),
    ] {
        m.inc("weir_records_total", &[("outcome", outcome)], n);
    }
    for (table, n) in rows {
        m.inc("weir_rows_total", &[("table", table)], n);
    }
    for (stage, n) in dead {
        m.inc("weir_dead_letters_total", &[("stage", stage)], n);
    }
}

/// Errors that say whether a retry may help.
pub trait Retryable: std::fmt::Display {
    /// Whether to retry.
    fn is_transient(&self) -> bool;
}

impl Retryable for SinkError {
    fn is_transient(&self) -> bool {
        SinkError::is_transient(self)
    }
}

impl Retryable for crate::raw::RawError {
    fn is_transient(&self) -> bool {
        matches!(self, crate::raw::RawError::Io { .. })
    }
}

/// Runs `op` until it succeeds, fails permanently, or runs out of attempts, with exponential backoff.
/// Returns the number of attempts with the last error.
pub async fn retrying<T, E: Retryable, F, Fut>(
    policy: &RetryConfig,
    what: &str,
    mut op: F,
) -> Result<T, (u32, E)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(policy.initial_backoff_ms);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < policy.max_attempts => {
                // Jittered ("equal jitter": half fixed, half random) so that workers that failed together, on
                // a conflict or an outage, do not retry in lockstep.
                let wait = jittered(backoff);
                tracing::warn!(attempt, backoff_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_millis(policy.max_backoff_ms));
                attempt += 1;
            }
            Err(e) => return Err((attempt, e)),
        }
    }
}

/// `backoff / 2` plus a random part of up to `backoff / 2`.
pub fn jittered(backoff: Duration) -> Duration {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos());
            h.finish() | 1
        });
    }
    let r = STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    let half = backoff / 2;
    let spread = half.as_micros().max(1) as u64;
    half + Duration::from_micros(r % spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Polled;
    use crate::rules::SourceRecord;
    use crate::source::{Acker, CheckpointOnly, SourceError};
    use async_trait::async_trait;

    /// An in-memory source: records of the given sizes, then (optionally) silence instead of an end.
    struct VecSource {
        sizes: std::vec::IntoIter<usize>,
        line: u64,
        then_wait: bool,
    }

    #[async_trait]
    impl Source for VecSource {
        fn source(&self) -> &str {
            "mem"
        }
        fn partition(&self) -> &str {
            "p"
        }
        async fn seek(&mut self, _position: &str) -> Result<(), SourceError> {
            Ok(())
        }
        async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
            match self.sizes.next() {
                Some(size) => {
                    self.line += 1;
                    Ok(Some(Polled {
                        record: SourceRecord {
                            id: format!("mem/p/{}", self.line),
                            partition_key: "p".into(),
                            arrived_at_ms: 0,
                            attributes: vec![],
                            payload: vec![b'x'; size],
                        },
                        position: self.line.to_string(),
                    }))
                }
                None if self.then_wait => std::future::pending().await,
                None => Ok(None),
            }
        }
        fn acker(&self) -> Box<dyn Acker> {
            Box::new(CheckpointOnly)
        }
    }

    async fn batches(
        sizes: Vec<usize>,
        then_wait: bool,
        limits: BatchConfig,
    ) -> Vec<(String, String, usize)> {
        let source = Box::new(VecSource {
            sizes: sizes.into_iter(),
            line: 0,
            then_wait,
        });
        let (tx, mut rx) = mpsc::channel(100);
        let (_stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(batcher(source, "0".into(), limits, tx, shutdown));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.push((b.id.clone(), b.prev_position.clone(), b.records.len()));
            if then_wait && out.len() == 2 {
                break;
            }
        }
        task.abort();
        out
    }

    /// Batches close on the record limit, the byte limit, the end of input, and the wait limit; each batch's
    /// expected checkpoint is the previous batch's last position.
    #[tokio::test]
    async fn batching_limits() {
        let limits = BatchConfig {
            max_records: 3,
            max_bytes: 100,
            max_wait_ms: 50,
            queue_depth: 2,
        };
        let got = batches(vec![10, 10, 10, 10, 60, 50, 10], false, limits.clone()).await;
        assert_eq!(
            got,
            vec![
                ("mem/p/1-3".to_string(), "0".to_string(), 3),
                ("mem/p/4-6".into(), "3".into(), 3),
                ("mem/p/7-7".into(), "6".into(), 1)
            ]
        );
        let got = batches(vec![60, 50, 10], false, limits.clone()).await;
        assert_eq!(
            got[0],
            ("mem/p/1-2".to_string(), "0".to_string(), 2),
            "byte limit"
        );
        // A silent source: the partial batch goes out after max_wait_ms.
        let got = batches(vec![10, 10, 10, 10], true, limits).await;
        assert_eq!(got[1], ("mem/p/4-4".to_string(), "3".to_string(), 1));
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;

    /// A long-running worker's summary keeps at most `KEEP_MAX` reasons; totals stay exact.
    #[test]
    fn tally_is_bounded() {
        let mut t = Tally::default();
        for i in 0..50_000 {
            t.add(&format!("reason {i}"), 1);
            t.add("frequent", 1);
        }
        assert!(t.distinct() <= Tally::KEEP_MAX);
        assert_eq!(t.total(), 100_000);
        assert_eq!(t.top()[0], ("frequent".to_string(), 50_000));
        assert_eq!(t.top().len(), Tally::TOP);
        assert_eq!(
            t.other() + t.top().iter().map(|(_, n)| n).sum::<usize>(),
            100_000
        );
    }

    /// Jitter stays within half and all of the backoff.
    #[test]
    fn jitter_range() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;
    use crate::record::Polled;
    use crate::rules::SourceRecord;
    use crate::source::{Acker, CheckpointOnly, SourceError};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Two records, then polls for ever (as a Kinesis reader on an idle shard does), counting its polls.
    struct Polling {
        handed: usize,
        polls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Source for Polling {
        fn source(&self) -> &str {
            "mem"
        }
        fn partition(&self) -> &str {
            "p"
        }
        async fn seek(&mut self, _position: &str) -> Result<(), SourceError> {
            Ok(())
        }
        async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
            if self.handed < 2 {
                self.handed += 1;
                return Ok(Some(Polled {
                    record: SourceRecord {
                        id: format!("mem/p/{}", self.handed),
                        partition_key: "p".into(),
                        arrived_at_ms: 0,
                        attributes: vec![],
                        payload: b"x".to_vec(),
                    },
                    position: self.handed.to_string(),
                }));
            }
            loop {
                self.polls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        fn acker(&self) -> Box<dyn Acker> {
            Box::new(CheckpointOnly)
        }
    }

    /// When the next stage is gone (the pipeline stopped early, say on NotOwner) the batcher stops polling its
    /// source at once, even with nothing to send and a shutdown channel that never fires.
    #[tokio::test]
    async fn an_orphaned_reader_stops_polling() {
        let polls = Arc::new(AtomicUsize::new(0));
        let source = Box::new(Polling {
            handed: 0,
            polls: polls.clone(),
        });
        let (tx, mut rx) = mpsc::channel(1);
        let (stop, shutdown) = watch::channel(false);
        let limits = BatchConfig {
            max_records: 1,
            max_bytes: 1 << 20,
            max_wait_ms: 10,
            queue_depth: 1,
        };
        let task = tokio::spawn(batcher(source, String::new(), limits, tx, shutdown));
        assert!(rx.recv().await.is_some());
        drop(rx);
        drop(stop); // the sender of the stop channel is gone too
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the batcher stops once the next stage is gone")
            .unwrap()
            .unwrap();
        let after = polls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            polls.load(Ordering::SeqCst),
            after,
            "no polling after the stop"
        );
    }

    /// Dropping the stage tasks (an early return) aborts every task still running.
    #[tokio::test]
    async fn stage_tasks_abort_on_drop() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let mut stages = StageTasks::default();
        stages.spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(stages);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let after = polls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(polls.load(Ordering::SeqCst), after);
    }
}
