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
use crate::retry::retrying;
use crate::rules::RulePlugin;
use crate::rules::validate::{self, RecordOutcome};
use crate::schema::TableSpec;
use crate::sink::{Commit, Coordinator, Load, Sink, SinkError};
use crate::source::Source;

mod summary;
pub use summary::*;
mod stages;
use crate::crash::CrashPoint;
use stages::*;
mod group;

/// Why a pipeline stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// RAW could not be written after all retries.
    #[error("RAW write of batch {batch} failed after {attempts} attempts")]
    Raw {
        /// The batch id.
        batch: String,
        /// Attempts made.
        attempts: u32,
        /// Why.
        #[source]
        source: crate::raw::RawError,
    },
    /// The sink failed permanently or after all retries.
    #[error("commit of batch {batch} failed after {attempts} attempts")]
    Sink {
        /// The batch id.
        batch: String,
        /// Attempts made.
        attempts: u32,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// Another worker owns the partition.
    #[error(
        "partition {partition} of {source_name} is owned by another worker (checkpoint moved); giving it up"
    )]
    NotOwner {
        /// The source (`file`, `sqs`, `kinesis`).
        source_name: String,
        /// The partition.
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
        /// The source (`file`, `sqs`, `kinesis`).
        source_name: String,
        /// The partition.
        partition: String,
        /// The checkpointed position.
        position: String,
    },
}

/// Everything a pipeline run needs.
pub struct Pipeline {
    /// The source partition to read.
    pub source: Box<dyn Source>,
    /// Everything after the source.
    pub stages: Stages,
}

/// What every pipeline of a worker shares after its source: assembled once from the loaded configuration
/// (`worker`), cloned for each partition (each Kinesis shard).
#[derive(Clone)]
pub struct Stages {
    /// Where RAW goes.
    pub raw: Arc<dyn RawStore>,
    /// The rule.
    pub rule: Arc<RulePlugin>,
    /// Where rows go.
    pub sink: Arc<dyn Sink>,
    /// Where the partition's checkpoint is kept.
    pub coordinator: Arc<dyn Coordinator>,
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
    /// Grouped commits (`[sink.group_commit]`): stage and register batches instead of committing them.
    pub group: Option<crate::group::GroupCommit>,
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
        let Pipeline { mut source, stages } = self;
        let Stages {
            raw,
            rule,
            sink,
            coordinator,
            tables,
            batch,
            retry,
            max_rows_per_record,
            rule_instances,
            group,
        } = stages;
        let start = start_position(source.as_mut(), coordinator.as_ref(), &retry).await?;
        source.seek(&start.position).await?;
        tracing::info!(source = %source.source(), partition = %source.partition(), checkpoint = %start.position, "starting");

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
        let batcher = stages.spawn(batcher(source, start, batch, to_raw, shutdown));
        let raw_stage = stages.spawn(raw_stage(raw, retry.clone(), from_batcher, to_rules));
        let rules_stage = stages.spawn(rules_stage(
            rule.clone(),
            tables.clone(),
            max_rows_per_record,
            rule_instances,
            from_raw,
            to_sink,
        ));
        let digest = rule.digest().to_string();
        let sink_result = match group {
            None => sink_stage(sink, digest, tables, retry, from_rules, acker, &mut summary).await,
            Some(group) => {
                group::group_sink_stage(
                    group,
                    digest,
                    tables,
                    retry,
                    from_rules,
                    acker,
                    &mut summary,
                )
                .await
            }
        };
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

/// Where a partition's batches start: after its checkpoint, and the input fingerprint its first batch
/// records (when the stored one differs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Start {
    pub(crate) position: String,
    pub(crate) fingerprint: Option<String>,
}

/// Where the partition starts: its checkpoint (ordered sources), after checking that the input a
/// fingerprinted source reads is the one the checkpoint was taken on. Reads only: a fingerprint to record
/// goes with the first batch's commit, so that a partition's start writes nothing (on Redshift every write
/// transaction is a commit in the cluster-wide queue).
async fn start_position(
    source: &mut dyn Source,
    coordinator: &dyn Coordinator,
    retry: &RetryConfig,
) -> Result<Start, PipelineError> {
    let source_name = source.source().to_string();
    let partition = source.partition().to_string();
    let position = if source.ordered() {
        retrying(retry, "read checkpoint", || {
            coordinator.checkpoint(&source_name, &partition)
        })
        .await
        .map_err(|(attempts, e)| PipelineError::Sink {
            batch: "(checkpoint)".into(),
            attempts,
            source: e,
        })?
    } else {
        String::new()
    };
    let mut start = Start {
        position,
        fingerprint: None,
    };
    if let Some(fingerprint) = source.fingerprint() {
        let row = crate::source::fingerprint_partition(&partition);
        let stored = fingerprint_io(retry, || coordinator.checkpoint(&source_name, &row)).await?;
        if !start.position.is_empty() && !stored.is_empty() && !source.same_input(&stored) {
            return Err(PipelineError::InputChanged {
                source_name,
                partition,
                position: start.position,
            });
        }
        if stored != fingerprint {
            start.fingerprint = Some(fingerprint);
        }
    }
    Ok(start)
}

/// Reads the input fingerprint kept beside a checkpoint (refusing to resume a checkpoint on other
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
            source: e,
        })
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
        let task = tokio::spawn(batcher(
            source,
            Start {
                position: "0".into(),
                fingerprint: None,
            },
            limits,
            tx,
            shutdown,
        ));
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
        let task = tokio::spawn(batcher(source, Start::default(), limits, tx, shutdown));
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
