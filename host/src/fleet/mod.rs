//! Kinesis shards shared by a fleet of workers through leases in `weir_checkpoints`.
//!
//! Every `renew_secs` the coordinator of a worker:
//! 1. collects the pipelines that ended: a shard read to its end is checkpointed as `SHARD_END` (by
//!    compare-and-set from its last committed position), and its lease is released;
//! 2. lists the shards (paginated) and reads the lease rows;
//! 3. renews its own leases; a lease it lost stops that shard's pipeline after its in-flight batch (whose
//!    commit is fenced by the checkpoint compare-and-set if the new owner already moved on);
//! 4. claims free or expired leases of ready shards up to its fair share, `ceil(ready shards / live workers)`,
//!    and when it is below its share and nothing is free, takes one lease from the busiest worker above its
//!    share (one per round, so the fleet rebalances gradually);
//! 5. starts one pipeline per newly held shard.
//!
//! A shard is ready when it has not ended and each of its parents has ended (`SHARD_END`) or is gone from the
//! stream: children of a split or merge start only after their parents, so per partition key order holds.
//! On shutdown every pipeline finishes its in-flight batch, then the leases are released for the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pipeline::{Pipeline, PipelineError, Stages, Summary};
use crate::sink::{Coordinator, SinkError};
use crate::source::SourceError;
use crate::source::kinesis::{InitialPosition, SHARD_END, ShardOptions, ShardReader};

mod plan;
pub use plan::*;

/// Fleet settings of a Kinesis source.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The stream.
    pub stream: String,
    /// This worker's name in the lease table.
    pub worker_id: String,
    /// Lease length.
    pub lease: Duration,
    /// Renew / rebalance period.
    pub renew: Duration,
    /// Reader settings shared by every shard (its `shard` is filled in per shard).
    pub reader: ShardOptions,
}

/// Why a fleet worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A shard's pipeline failed (after its retries).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

struct Running {
    task: JoinHandle<Result<Summary, PipelineError>>,
    stop: Arc<watch::Sender<bool>>,
    ended: Arc<AtomicBool>,
    /// The shard's hold on its lease, shared with its watchdog.
    hold: Arc<Hold>,
}

/// A running shard's hold on its lease.
struct Hold {
    /// Until when the last claim or renewal that succeeded holds the lease (µs).
    until: AtomicI64,
    /// Stopped because the lease went (or may have gone) to another worker: not idle.
    lost: AtomicBool,
}

/// Stops a shard once its lease runs out unrenewed, whatever the rest of the worker is doing (a renewal call
/// hanging on an unreachable coordinator included): from then on another worker may hold the lease. Ends when
/// the shard's pipeline has stopped.
fn watch_lease(hold: Arc<Hold>, stop: Arc<watch::Sender<bool>>, shard: String) {
    tokio::spawn(async move {
        loop {
            let left = hold.until.load(Ordering::SeqCst) - crate::record::wall_clock_us();
            if left <= 0 {
                tracing::warn!(shard = %shard, "the lease ran out unrenewed; stopping the shard");
                hold.lost.store(true, Ordering::SeqCst);
                let _ = stop.send(true);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros(left as u64)) => {}
                _ = stop.closed() => return,
            }
        }
    });
}

/// Lists every shard of a stream (following `NextToken`).
pub async fn list_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    stream_arn: &Option<String>,
) -> Result<Vec<ShardInfo>, SourceError> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client
                .list_shards()
                .set_stream_name(crate::source::kinesis::by_name(stream, stream_arn))
                .set_stream_arn(stream_arn.clone()),
        };
        let out = req.send().await.map_err(|e| SourceError::Io {
            source_name: format!("kinesis stream {stream}"),
            message: format!(
                "cannot list shards of source.stream = {stream}: {}",
                crate::aws::sdk_error(&e)
            ),
        })?;
        for s in out.shards() {
            shards.push(ShardInfo {
                id: s.shard_id().to_string(),
                parents: s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(str::to_string)
                    .collect(),
                closed: s
                    .sequence_number_range()
                    .is_some_and(|r| r.ending_sequence_number().is_some()),
            });
        }
        token = out.next_token;
        if token.is_none() {
            return Ok(shards);
        }
    }
}

/// Runs this worker's share of the stream until shutdown (or, with `idle_exit`, until its shards are idle).
pub async fn run(
    client: aws_sdk_kinesis::Client,
    options: FleetOptions,
    shared: Stages,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Summary, FleetError> {
    let mut fleet = Fleet {
        me: options.worker_id.clone(),
        client,
        options,
        shared,
        running: BTreeMap::new(),
        idle: HashSet::new(),
        summary: Summary::default(),
        failure: None,
    };
    let mut tick = tokio::time::interval(fleet.options.renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(stream = %fleet.options.stream, worker = %fleet.me, "joining the fleet");
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        if fleet.round().await == Next::Stop {
            break;
        }
    }
    fleet.shut_down().await
}

/// Whether the fleet loop goes on after a round.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

/// One worker's part of the fleet: the shards it runs and what it learned about them.
struct Fleet {
    me: String,
    client: aws_sdk_kinesis::Client,
    options: FleetOptions,
    shared: Stages,
    running: BTreeMap<String, Running>,
    /// Shards whose pipeline ended idle in this run: not restarted (idle exit).
    idle: HashSet<String>,
    summary: Summary,
    failure: Option<FleetError>,
}

impl Fleet {
    fn partition_of(&self, shard: &str) -> String {
        format!("{}/{shard}", self.options.stream)
    }

    /// One renewal round: collect ended pipelines, renew held leases, list shards and leases, claim a fair
    /// share, start the new shards.
    async fn round(&mut self) -> Next {
        let held = self.running.len() as f64;
        crate::metrics::global().set("weir_leases_held", &[], held);
        // 1. Ended pipelines.
        self.collect_ended().await;
        if self.failure.is_some() {
            return Next::Stop;
        }
        // 2. Renew what this worker runs (before anything that needs the stream: a Kinesis outage must not
        //    let the leases of running shards expire); stop what it lost.
        let now = crate::record::wall_clock_us();
        let expires = now + self.options.lease.as_micros() as i64;
        self.renew(now, expires).await;
        // 3. Shards and leases. A failure of the stream or the lease table skips the rest of this round (no
        //    new shards): the leases held were renewed above, and every commit stays fenced by the checkpoint
        //    compare-and-set.
        let shards = match list_shards(
            &self.client,
            &self.options.stream,
            &self.options.reader.stream_arn,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "listing shards failed; retrying at the next renewal");
                return Next::Continue;
            }
        };
        let Some(leases) = self.leases(now).await else {
            return Next::Continue;
        };
        let positions: HashMap<String, String> = leases
            .iter()
            .map(|(s, l)| (s.clone(), l.position.clone()))
            .collect();
        let ready = ready_shards(&shards, &positions);
        // 4. Fair share.
        let round = plan_round(&self.me, &ready, &leases, &self.running, &self.idle);
        let claimed = self.claim_share(&round, now, expires).await;
        // 5. Start the new shards.
        for shard in claimed {
            self.start(&shard, &shards, &positions, now).await;
        }
        crate::metrics::global().set("weir_leases_held", &[], self.running.len() as f64);
        // Idle exit: nothing running, and this worker has read every ready shard until it was idle (shards
        // other workers hold are waited for: they may die, and their records must not wait for a restart).
        if self.options.reader.idle_exit.is_some()
            && self.running.is_empty()
            && ready.iter().all(|s| self.idle.contains(s))
        {
            tracing::info!("every shard this worker could read is idle: stopping");
            return Next::Stop;
        }
        Next::Continue
    }

    /// Collects the pipelines that ended: a shard read to its end is checkpointed `SHARD_END`, one that went
    /// idle is remembered, a failure is kept; every ended shard's lease is released.
    async fn collect_ended(&mut self) {
        let coordinator = self.shared.coordinator.clone();
        let finished: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(s, _)| s.clone())
            .collect();
        for shard in finished {
            let r = self.running.remove(&shard).expect("listed");
            let partition = self.partition_of(&shard);
            match r.task.await {
                Ok(Ok(s)) => {
                    self.summary.merge(s);
                    if r.ended.load(Ordering::SeqCst) {
                        // On failure the shard is read again from its checkpoint, finds its end at once and
                        // comes back here.
                        match end_shard(coordinator.as_ref(), &partition).await {
                            Ok(true) => {
                                tracing::info!(shard = %partition, "checkpointed SHARD_END; its children may start")
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(shard = %partition, error = %e, "could not checkpoint SHARD_END; retrying")
                            }
                        }
                    } else if !r.hold.lost.load(Ordering::SeqCst) {
                        self.idle.insert(shard.clone());
                    }
                }
                Ok(Err(PipelineError::NotOwner { .. })) => {
                    tracing::warn!(shard = %partition, "another worker took the shard over");
                }
                Ok(Err(e)) => {
                    self.failure = Some(e.into());
                }
                Err(e) => self.failure = Some(PipelineError::Stage(e.to_string()).into()),
            }
            if let Err(e) = coordinator.release("kinesis", &partition, &self.me).await {
                tracing::warn!(shard = %partition, error = %e, "could not release the lease; it expires on its own");
            }
        }
    }

    /// Renews the lease of every running shard; a shard whose lease was lost stops after its in-flight batch.
    /// A renewal that fails (the coordinator unreachable) is tried again next round; the shard's watchdog
    /// ([`watch_lease`]) stops it once its last renewal runs out.
    async fn renew(&mut self, now: i64, expires: i64) {
        let held: Vec<String> = self.running.keys().cloned().collect();
        for shard in held {
            let renewed = match self
                .shared
                .coordinator
                .claim(
                    "kinesis",
                    &self.partition_of(&shard),
                    &self.me,
                    now,
                    expires,
                    None,
                )
                .await
            {
                Ok(true) => {
                    if let Some(r) = self.running.get(&shard) {
                        r.hold.until.fetch_max(expires, Ordering::SeqCst);
                    }
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "renewing the lease failed; retrying at the next renewal");
                    true
                }
            };
            if !renewed {
                tracing::warn!(shard = %shard, "lease lost; stopping the shard after its in-flight batch");
                if let Some(r) = self.running.get(&shard) {
                    r.hold.lost.store(true, Ordering::SeqCst);
                    let _ = r.stop.send(true);
                }
            }
        }
    }

    /// The lease rows of this stream by shard (`None` when they cannot be read this round).
    async fn leases(&self, now: i64) -> Option<HashMap<String, crate::sink::Lease>> {
        let rows = match self.shared.coordinator.leases("kinesis", now).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading leases failed; retrying at the next renewal");
                return None;
            }
        };
        let prefix = format!("{}/", self.options.stream);
        Some(
            rows.into_iter()
                .filter_map(|l| {
                    let shard = l.partition.strip_prefix(&prefix)?.to_string();
                    Some((shard, l))
                })
                .collect(),
        )
    }

    /// Claims the round's free shards until the share is reached, then the one lease to take over; returns
    /// the shards claimed.
    async fn claim_share(&self, round: &Round, now: i64, expires: i64) -> Vec<String> {
        let coordinator = self.shared.coordinator.as_ref();
        let mut wanted = round.wanted;
        let mut claimed = Vec::new();
        for shard in &round.free {
            if wanted == 0 {
                break;
            }
            if claim(
                coordinator,
                &self.partition_of(shard),
                &self.me,
                now,
                expires,
                None,
            )
            .await
            {
                claimed.push(shard.clone());
                wanted -= 1;
            }
        }
        if wanted > 0
            && let Some((shard, victim)) = &round.steal
            && claim(
                coordinator,
                &self.partition_of(shard),
                &self.me,
                now,
                expires,
                Some(victim),
            )
            .await
        {
            tracing::info!(shard = %shard, from = %victim, "took a lease over to rebalance");
            claimed.push(shard.clone());
        }
        claimed
    }

    /// Starts the pipeline of a newly claimed shard, at its checkpoint, `TRIM_HORIZON` or a pinned moment.
    async fn start(
        &mut self,
        shard: &str,
        shards: &[ShardInfo],
        positions: &HashMap<String, String>,
        now: i64,
    ) {
        let mut reader_options = self.options.reader.clone();
        reader_options.shard = shard.to_string();
        let info = shards.iter().find(|s| s.id == shard);
        let has_parent = info.is_some_and(|s| !s.parents.is_empty());
        let closed = info.is_some_and(|s| s.closed);
        let committed = positions.get(shard).is_some_and(|p| !p.is_empty());
        let partition = self.partition_of(shard);
        match start_of(
            &reader_options.initial,
            has_parent,
            closed,
            committed,
            now / 1000,
        ) {
            Start::Checkpoint => {}
            Start::TrimHorizon => reader_options.initial = InitialPosition::TrimHorizon,
            Start::Pin(ms) => {
                reader_options.fresh_pin = true;
                // Pinned before reading, so a restart or a lease move resumes from here, not LATEST.
                let pinned = crate::source::kinesis::pinned_position(ms);
                let coordinator = &self.shared.coordinator;
                if let Err(e) = coordinator
                    .set_checkpoint("kinesis", &partition, "", &pinned)
                    .await
                {
                    tracing::warn!(shard = %shard, error = %e, "could not pin the start position; retrying at the next renewal");
                    let _ = coordinator.release("kinesis", &partition, &self.me).await;
                    return;
                }
            }
        }
        let reader = ShardReader::new(self.client.clone(), reader_options);
        let ended = reader.ended();
        let (stop, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop);
        let hold = Arc::new(Hold {
            until: AtomicI64::new(now + self.options.lease.as_micros() as i64),
            lost: AtomicBool::new(false),
        });
        watch_lease(hold.clone(), stop.clone(), shard.to_string());
        let pipeline = Pipeline {
            source: Box::new(reader),
            stages: self.shared.clone(),
        };
        tracing::info!(shard = %shard, worker = %self.me, "reading shard");
        self.running.insert(
            shard.to_string(),
            Running {
                task: tokio::spawn(pipeline.run(stop_rx)),
                stop,
                ended,
                hold,
            },
        );
    }

    /// Shutdown: every shard finishes its in-flight batch, then the leases go back to the fleet.
    async fn shut_down(mut self) -> Result<Summary, FleetError> {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        let running = std::mem::take(&mut self.running);
        for (shard, r) in running {
            let partition = self.partition_of(&shard);
            match r.task.await {
                Ok(Ok(s)) => self.summary.merge(s),
                Ok(Err(PipelineError::NotOwner { .. })) => {}
                Ok(Err(e)) => self.failure = self.failure.or(Some(e.into())),
                Err(e) => {
                    self.failure = self
                        .failure
                        .or(Some(PipelineError::Stage(e.to_string()).into()))
                }
            }
            let released = self
                .shared
                .coordinator
                .release("kinesis", &partition, &self.me)
                .await;
            if let Err(e) = released {
                tracing::warn!(shard = %partition, error = %e, "could not release the lease; it expires on its own");
            }
        }
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.summary),
        }
    }
}

/// Moves a shard's checkpoint from its last committed position to `SHARD_END`.
async fn end_shard(coordinator: &dyn Coordinator, partition: &str) -> Result<bool, SinkError> {
    let at = coordinator.checkpoint("kinesis", partition).await?;
    coordinator
        .set_checkpoint("kinesis", partition, &at, SHARD_END)
        .await
}

/// Claims a lease; a failure counts as not claimed (the next renewal tries again).
async fn claim(
    coordinator: &dyn Coordinator,
    partition: &str,
    me: &str,
    now: i64,
    expires: i64,
    steal_from: Option<&str>,
) -> bool {
    coordinator
        .claim("kinesis", partition, me, now, expires, steal_from)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(shard = %partition, error = %e, "claiming the lease failed");
            false
        })
}

pub use crate::record::default_worker_id;

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed: false,
        }
    }

    /// Children wait for every parent's SHARD_END; parents gone from the stream do not block.
    #[test]
    fn children_wait_for_parents() {
        let shards = [
            shard("p", &[]),
            shard("c1", &["p"]),
            shard("c2", &["p"]),
            shard("m", &["c1", "c2"]),
            shard("orphan", &["expired-parent"]),
        ];
        let mut pos = HashMap::new();
        assert_eq!(ready_shards(&shards, &pos), ["p", "orphan"]);
        pos.insert("p".to_string(), SHARD_END.to_string());
        assert_eq!(ready_shards(&shards, &pos), ["c1", "c2", "orphan"]);
        pos.insert("c1".to_string(), SHARD_END.to_string());
        assert_eq!(ready_shards(&shards, &pos), ["c2", "orphan"]);
        pos.insert("c2".to_string(), SHARD_END.to_string());
        assert_eq!(ready_shards(&shards, &pos), ["m", "orphan"]);
    }

    fn lease(shard: &str, owner: &str, expired: bool) -> (String, crate::sink::Lease) {
        (
            shard.to_string(),
            crate::sink::Lease {
                partition: format!("s/{shard}"),
                position: String::new(),
                owner: owner.into(),
                expired,
                expires_us: 0,
            },
        )
    }

    /// A round claims up to the fair share among free shards, skips what it runs or read until idle, and
    /// takes one lease from the busiest worker only when that worker is above the share.
    #[test]
    fn rounds_share_fairly() {
        let ready: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let none: BTreeMap<String, ()> = BTreeMap::new();
        let no_idle = HashSet::new();
        // Alone with nothing leased: every shard, no steal.
        let round = plan_round("me", &ready, &HashMap::new(), &none, &no_idle);
        assert_eq!(
            (round.share, round.wanted, round.free.len(), round.steal),
            (4, 4, 4, None)
        );
        // Another worker holds all four: share 2, nothing free, steal one of its leases.
        let theirs: HashMap<_, _> = ready.iter().map(|s| lease(s, "w2", false)).collect();
        let round = plan_round("me", &ready, &theirs, &none, &no_idle);
        assert_eq!((round.share, round.wanted), (2, 2));
        assert!(round.free.is_empty());
        assert_eq!(round.steal, Some(("a".to_string(), "w2".to_string())));
        // Expired leases are free, and their owners are not live.
        let expired: HashMap<_, _> = ready.iter().map(|s| lease(s, "w2", true)).collect();
        let round = plan_round("me", &ready, &expired, &none, &no_idle);
        assert_eq!((round.share, round.free.len(), round.steal), (4, 4, None));
        // Balanced (two each): nothing to take; the shards this worker runs are not claimed again.
        let mut balanced: HashMap<_, _> =
            ["a", "b"].iter().map(|s| lease(s, "w2", false)).collect();
        balanced.extend(["c", "d"].iter().map(|s| lease(s, "me", false)));
        let running: BTreeMap<String, ()> = [("c".to_string(), ()), ("d".to_string(), ())].into();
        let round = plan_round("me", &ready, &balanced, &running, &no_idle);
        assert_eq!((round.share, round.wanted, round.steal), (2, 0, None));
        assert!(round.free.is_empty());
        // Two workers hold two each and this one none (nor does a fourth): the share is two, and this worker
        // is two short, so it takes one from a worker at the share. The worker left one short does not take
        // one back from a worker at the share.
        let mut two_two: HashMap<_, _> = ["a", "b"].iter().map(|s| lease(s, "w1", false)).collect();
        two_two.extend(["c", "d"].iter().map(|s| lease(s, "w2", false)));
        let round = plan_round("me", &ready, &two_two, &none, &no_idle);
        assert_eq!((round.share, round.wanted), (2, 2));
        assert!(round.steal.is_some(), "{round:?}");
        let mut after: HashMap<_, _> = [lease("a", "w1", false), lease("b", "me", false)].into();
        after.extend(["c", "d"].iter().map(|s| lease(s, "w2", false)));
        let mine: BTreeMap<String, ()> = [("b".to_string(), ())].into();
        let round = plan_round("me", &ready, &after, &mine, &no_idle);
        assert_eq!((round.share, round.wanted, round.steal), (2, 1, None));
        let round = plan_round(
            "w1",
            &ready,
            &after,
            &[("a".to_string(), ())].into(),
            &no_idle,
        );
        assert_eq!((round.share, round.wanted, round.steal), (2, 1, None));
        // The fourth worker (none yet) now sees three owners: share 1, it takes from the one with two.
        let round = plan_round("w3", &ready, &after, &none, &no_idle);
        assert_eq!(round.share, 1);
        assert_eq!(round.steal, Some(("c".to_string(), "w2".to_string())));
        // A shard read until idle is not claimed again.
        let idle: HashSet<String> = ["a".to_string()].into();
        let round = plan_round("me", &ready, &HashMap::new(), &none, &idle);
        assert_eq!(round.free, ["b", "c", "d"]);
    }
}

#[cfg(test)]
mod start_tests {
    use super::*;

    /// Children start at TRIM_HORIZON whatever `initial_position`; `latest` is pinned to the claim's moment;
    /// a committed shard resumes.
    #[test]
    fn where_shards_start() {
        let latest = InitialPosition::Latest;
        let at = InitialPosition::AtTimestamp(3);
        // (initial, has parent, closed, committed, now)
        assert_eq!(start_of(&latest, true, false, false, 7), Start::TrimHorizon);
        assert_eq!(start_of(&at, true, false, false, 7), Start::TrimHorizon);
        assert_eq!(start_of(&latest, false, false, false, 7), Start::Pin(7));
        assert_eq!(
            start_of(&latest, false, true, false, 7),
            Start::Checkpoint,
            "a closed shard's end stays"
        );
        assert_eq!(
            start_of(&at, false, false, false, 7),
            Start::Checkpoint,
            "a fixed instant"
        );
        assert_eq!(
            start_of(&InitialPosition::TrimHorizon, false, false, false, 7),
            Start::Checkpoint
        );
        assert_eq!(start_of(&latest, true, false, true, 7), Start::Checkpoint);
        assert_eq!(
            crate::source::kinesis::pinned_start(&crate::source::kinesis::pinned_position(42)),
            Some(42)
        );
        assert_eq!(crate::source::kinesis::pinned_start("4950123"), None);
    }
}
