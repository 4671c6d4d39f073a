//! The loader: whichever worker holds the loader lease merges every pending staged batch, once per interval,
//! in one warehouse transaction (docs/GROUP-COMMIT.md, steps L1–L4). Every worker runs this loop; all but one
//! only renew their claim attempts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Fate, GroupOutcome, GroupWarehouse, Registration, Registry, StagedBatch, Staging};
use crate::config::RetryConfig;
use crate::retry::retrying;
use crate::rules::validate::{RecordOutcome, RejectStage};
use crate::schema::TableSpec;
use crate::sink::SinkError;

/// Merges with batches this process attempted (for the test stall `WEIR_PAUSE_BEFORE=merge:N:…`).
static MERGE_ATTEMPTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How the loader runs.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// This worker's name in the loader lease.
    pub owner: String,
    /// Time between merges.
    pub interval: Duration,
    /// Most batches per merge.
    pub max_batches: usize,
    /// Most staged bytes per merge.
    pub max_bytes: u64,
    /// How long the loader lease lasts without renewal.
    pub lease: Duration,
}

/// The parts a loader works with.
pub struct Loader {
    /// The registry (and loader lease).
    pub registry: Arc<dyn Registry>,
    /// Where staged batches are.
    pub staging: Arc<dyn Staging>,
    /// The warehouse's grouped merge.
    pub warehouse: Arc<dyn GroupWarehouse>,
    /// The declared tables.
    pub tables: Arc<Vec<TableSpec>>,
    /// Retries of each call.
    pub retry: RetryConfig,
    /// Timing and sizes.
    pub options: LoaderOptions,
}

/// What one merge round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Batches merged (now or by an earlier loader whose fates were not written).
    pub merged: usize,
    /// Batches refused (their checkpoint moved).
    pub refused: usize,
    /// Whether a newer loader fenced this one off.
    pub fenced: bool,
}

impl Loader {
    /// Runs until `stop` becomes true: claims the loader lease every interval and, while holding it, merges.
    /// Gives the lease up on the way out, so another worker takes over at once.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let crash = crate::crash::CrashPoint::from_env("merge");
        let mut merges = 0;
        let mut holding = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let now = crate::record::wall_clock_us();
            let expires = now + self.options.lease.as_micros() as i64;
            match self
                .registry
                .claim_loader(&self.options.owner, now, expires)
                .await
            {
                Ok(Some(epoch)) => {
                    if !holding {
                        tracing::info!(owner = %self.options.owner, epoch, "holding the loader lease");
                    }
                    holding = true;
                    match self
                        .round(epoch, &mut || {
                            merges += 1;
                            crate::crash::CrashPoint::check(crash, merges);
                        })
                        .await
                    {
                        Ok(r) if r.merged + r.refused > 0 || r.fenced => {
                            tracing::debug!(
                                merged = r.merged,
                                refused = r.refused,
                                fenced = r.fenced,
                                "merge round"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "merge round failed; retrying next interval")
                        }
                    }
                }
                Ok(None) => holding = false,
                Err(e) => tracing::warn!(error = %e, "loader lease unreachable; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.interval) => {}
                _ = stop.changed() => {}
            }
        }
        if holding {
            // A last merge for what is pending now, then the lease goes to a worker still running.
            let now = crate::record::wall_clock_us();
            let expires = now + self.options.lease.as_micros() as i64;
            if let Ok(Some(epoch)) = self
                .registry
                .claim_loader(&self.options.owner, now, expires)
                .await
                && let Err(e) = self.round(epoch, &mut || {}).await
            {
                tracing::warn!(error = %e, "last merge round failed");
            }
            let _ = self.registry.release_loader(&self.options.owner).await;
        }
    }

    /// One merge: the pending batches (up to the limits), their staged objects, one transaction, the fates.
    /// `committed` runs right after the warehouse transaction committed (a crash point for tests).
    pub async fn round(
        &self,
        epoch: i64,
        committed: &mut (dyn FnMut() + Send),
    ) -> Result<Round, SinkError> {
        let retry = &self.retry;
        let pending = retrying(retry, "registry read", || {
            self.registry.pending(self.options.max_batches)
        })
        .await
        .map_err(|(_, e)| e)?;
        let mut fates: Vec<(String, Fate)> = Vec::new();
        let mut chosen: Vec<(Registration, StagedBatch)> = Vec::new();
        let mut bytes = 0u64;
        for entry in pending {
            if !chosen.is_empty() && bytes + entry.bytes as u64 > self.options.max_bytes {
                break;
            }
            bytes += entry.bytes.max(0) as u64;
            let read = retrying(retry, "staging read", || self.staging.get(&entry.key))
                .await
                .map_err(|(_, e)| e)?;
            match read.map(|b| StagedBatch::from_bytes(&b, self.tables.len())) {
                Some(Ok(staged)) if staged.id() == entry.batch_id => chosen.push((entry, staged)),
                other => {
                    // Unreadable: refused, so that its worker reads the partition again from the checkpoint.
                    let why = match other {
                        None => "missing".to_string(),
                        Some(Err(e)) => e,
                        Some(Ok(_)) => "holds another batch".to_string(),
                    };
                    tracing::error!(batch = %entry.batch_id, key = %entry.key, %why, "staged batch unreadable; refusing it");
                    fates.push((entry.batch_id, Fate::Refused));
                }
            }
        }
        let mut round = Round::default();
        if !chosen.is_empty() {
            let attempt = MERGE_ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            crate::crash::pause_before("merge", attempt).await;
            let decided = self.merge(&mut chosen, epoch).await?;
            match decided {
                None => {
                    tracing::warn!(
                        epoch,
                        batches = chosen.len(),
                        "fenced: a newer loader has merged since this one read its batches; this merge wrote nothing"
                    );
                    round.fenced = true
                }
                Some(decided) => {
                    committed();
                    for ((entry, _), fate) in chosen.iter().zip(decided) {
                        fates.push((entry.batch_id.clone(), fate));
                    }
                }
            }
        }
        round.merged = fates.iter().filter(|f| f.1 == Fate::Merged).count();
        round.refused = fates.iter().filter(|f| f.1 == Fate::Refused).count();
        if !fates.is_empty() {
            retrying(retry, "registry update", || self.registry.settle(&fates))
                .await
                .map_err(|(_, e)| e)?;
            // The staged objects of decided batches have served (never those of a fenced round): best effort,
            // a lifecycle rule removes stragglers.
            let decided: std::collections::HashSet<&str> =
                fates.iter().map(|(id, _)| id.as_str()).collect();
            for (entry, _) in chosen
                .iter()
                .filter(|(e, _)| decided.contains(e.batch_id.as_str()))
            {
                if let Err(e) = self.staging.delete(&entry.key).await {
                    tracing::debug!(error = %e, key = %entry.key, "staged object not deleted");
                }
            }
        }
        Ok(round)
    }

    /// The warehouse transaction, retried; records the database refuses become dead letters (stage `sink`)
    /// and the merge runs again without their rows.
    async fn merge(
        &self,
        chosen: &mut [(Registration, StagedBatch)],
        epoch: i64,
    ) -> Result<Option<Vec<Fate>>, SinkError> {
        loop {
            let batches: Vec<_> = chosen.iter().map(|(_, s)| s.batch()).collect();
            let loads: Vec<_> = chosen
                .iter()
                .zip(&batches)
                .map(|((_, s), b)| s.load(b, &self.tables))
                .collect();
            let result = retrying(&self.retry, "grouped merge", || {
                self.warehouse.merge_group(&loads, epoch)
            })
            .await;
            match result.map_err(|(_, e)| e)? {
                GroupOutcome::Decided(fates) => return Ok(Some(fates)),
                GroupOutcome::Fenced => return Ok(None),
                GroupOutcome::Refused(refused) => {
                    drop(loads);
                    for (l, r, reason) in refused {
                        let Some((entry, staged)) = chosen.get_mut(l) else {
                            continue;
                        };
                        tracing::warn!(batch = %entry.batch_id, record = r, %reason, "dead-lettered by the sink");
                        if let Some(o) = staged.outcomes.get_mut(r) {
                            *o = RecordOutcome::Reject(RejectStage::Sink, reason);
                        }
                    }
                }
            }
        }
    }
}
