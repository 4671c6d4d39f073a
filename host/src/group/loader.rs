//! The loader: whichever worker holds the loader lease merges every pending staged batch, once per interval,
//! in one warehouse transaction (docs/GROUP-COMMIT.md, steps L1–L4). Every worker runs this loop; all but one
//! only renew their claim attempts.

use std::collections::{HashMap, HashSet};
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

/// How many lease times a merge round may keep renewing the loader lease (two minutes with the default 30 s).
const ROUND_LEASES: u32 = 4;

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
    /// Staged objects of pending batches read while the previous merge ran (the next round takes them
    /// instead of reading them again). A staged object only ever holds its batch, so an early read is as good.
    pub prefetched: std::sync::Mutex<HashMap<String, StagedBatch>>,
    /// The removal of the last round's staged objects and row files, running behind the next round (at most
    /// one at a time: a round waits for the previous removal before it starts its own).
    pub cleanup: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
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
    /// Time spent reading the registry and the staged objects.
    pub read: Duration,
    /// Time spent in the warehouse transaction (retries included).
    pub merge: Duration,
    /// Time spent writing the fates and removing what served.
    pub settle: Duration,
}

impl Loader {
    /// Runs until `stop` becomes true: keeps claiming the loader lease and, while holding it, merges once per
    /// interval — sooner when the pending batches reach `max_batches` or `max_bytes`. Gives the lease up on
    /// the way out, so another worker takes over at once.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let crash = crate::crash::CrashPoint::from_env("merge");
        let mut merges = 0;
        let mut epoch = None;
        // The lease is renewed well within its time, but not on every look at the registry: on Redshift
        // (`[coordinator] kind = "sink"`) every renewal is a write transaction.
        let renew_every = self.options.interval.min(self.options.lease / 3);
        // How often the holder looks whether pending work reached a merge's size before the interval is up: a
        // read of the registry, never more often than every 250 ms (with a short interval, never).
        let look_every =
            (self.options.interval / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let interval = self.options.interval;
        let now = tokio::time::Instant::now;
        let mut last_claim = now();
        let mut last_round = now();
        let mut last_look = now();
        epoch = self.claim(epoch).await;
        loop {
            if *stop.borrow() {
                break;
            }
            if last_claim.elapsed() >= renew_every {
                last_claim = now();
                epoch = self.claim(epoch).await;
            }
            let due = last_round.elapsed() >= interval;
            let look = last_look.elapsed() >= look_every;
            if look {
                last_look = now();
            }
            let early = !due && look && epoch.is_some() && self.work_is_waiting().await;
            if due && epoch.is_none() {
                last_round = now(); // not the loader: nothing to merge this interval
            }
            if let Some(e) = epoch
                && (due || early)
            {
                last_round = tokio::time::Instant::now();
                let counted = &mut || {
                    merges += 1;
                    crate::crash::CrashPoint::check(crash, merges);
                };
                let result = self
                    .round_renewing(e, counted, &mut epoch, renew_every)
                    .await;
                last_claim = now();
                match result {
                    Ok(r) if r.merged + r.refused > 0 || r.fenced => {
                        tracing::debug!(
                            merged = r.merged,
                            refused = r.refused,
                            fenced = r.fenced,
                            read_ms = r.read.as_millis() as u64,
                            merge_ms = r.merge.as_millis() as u64,
                            settle_ms = r.settle.as_millis() as u64,
                            "merge round"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "merge round failed; retrying next interval")
                    }
                }
            }
            // Until the next thing is due: the round, the renewal, a look at the pending work.
            let next = (last_round + interval)
                .min(last_claim + renew_every)
                .min(last_look + look_every);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => {}
            }
        }
        if epoch.is_some() {
            // A last merge for what is pending now, then the lease goes to a worker still running.
            let mut held = self.claim(epoch).await;
            if let Some(e) = held
                && let Err(e) = self
                    .round_renewing(e, &mut || {}, &mut held, renew_every)
                    .await
            {
                tracing::warn!(error = %e, "last merge round failed");
            }
            let _ = self.registry.release_loader(&self.options.owner).await;
        }
        self.finish_cleanup().await;
    }

    /// One merge round under `epoch` that keeps renewing the lease every `renew_every` while it runs, so that
    /// a long merge (many batches, a slow COPY) is not taken over by another worker merging the same batches
    /// meanwhile (the fence would keep the data exact, but the work would be done twice). `held` follows the
    /// renewals. A round that is stuck must not keep the fleet's merges to itself: renewals stop after
    /// [`ROUND_LEASES`] lease times, and the lease then runs out for another worker to take.
    async fn round_renewing(
        &self,
        epoch: i64,
        committed: &mut (dyn FnMut() + Send),
        held: &mut Option<i64>,
        renew_every: Duration,
    ) -> Result<Round, SinkError> {
        // Both go on together: a renewal must not hold the merge still (with the lease in the warehouse, the
        // renewal waits for the merge's table locks, and the merge for nothing but being polled).
        let renewals = async {
            let until = tokio::time::Instant::now() + self.options.lease * ROUND_LEASES;
            loop {
                tokio::time::sleep(renew_every).await;
                if tokio::time::Instant::now() < until {
                    *held = self.claim(*held).await;
                }
            }
        };
        tokio::select! {
            r = self.round(epoch, committed) => r,
            never = renewals => never,
        }
    }

    /// Claims or renews the loader lease: its epoch while this worker holds it. A registry that cannot be
    /// reached keeps what was held (the lease has not run out before the next renewal; the fence guards a
    /// merge that comes after it did).
    async fn claim(&self, held: Option<i64>) -> Option<i64> {
        let now = crate::record::wall_clock_us();
        let expires = now + self.options.lease.as_micros() as i64;
        match self
            .registry
            .claim_loader(&self.options.owner, now, expires)
            .await
        {
            Ok(Some(epoch)) => {
                if held != Some(epoch) {
                    tracing::info!(owner = %self.options.owner, epoch, "holding the loader lease");
                }
                Some(epoch)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "loader lease unreachable; retrying");
                None
            }
        }
    }

    /// Whether the pending batches have reached a merge's size before its interval is up.
    async fn work_is_waiting(&self) -> bool {
        match self.registry.pending_work(self.options.max_batches).await {
            Ok((batches, bytes)) => {
                batches >= self.options.max_batches.max(1) || bytes >= self.options.max_bytes
            }
            Err(_) => false,
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
        let began = std::time::Instant::now();
        let pending = retrying(retry, "registry read", || {
            self.registry.pending(self.options.max_batches)
        })
        .await
        .map_err(|(_, e)| e)?;
        let mut selected: Vec<Registration> = Vec::new();
        let mut bytes = 0u64;
        for entry in pending {
            if !selected.is_empty() && bytes + entry.bytes as u64 > self.options.max_bytes {
                break;
            }
            bytes += entry.bytes.max(0) as u64;
            selected.push(entry);
        }
        // With row files the merge never needs the rows' cells, unless a value is refused (then read again).
        let header_only = self.warehouse.loads_row_files();
        let reads = self.read_selected(&selected, !header_only).await?;
        let merging_ids: HashSet<String> = selected.iter().map(|e| e.batch_id.clone()).collect();
        let mut fates: Vec<(String, Fate)> = Vec::new();
        let mut chosen: Vec<(Registration, StagedBatch)> = Vec::new();
        for (entry, read) in selected.into_iter().zip(reads) {
            match read {
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
        let mut round = Round {
            read: began.elapsed(),
            ..Round::default()
        };
        let merging = std::time::Instant::now();
        if header_only && chosen.iter().any(|(_, s)| s.row_files().is_empty()) {
            // A batch staged without row files (before the COPY fill was configured): this merge sends every
            // batch's rows itself.
            self.read_cells(&mut chosen).await?;
        }
        if !chosen.is_empty() {
            let attempt = MERGE_ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            crate::crash::pause_before("merge", attempt).await;
            // While the warehouse merges, the batches registered meanwhile are read for the next round.
            let (decided, ()) = tokio::join!(
                self.merge(&mut chosen, epoch),
                self.prefetch(&merging_ids, !header_only)
            );
            let decided = decided?;
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
        round.merge = merging.elapsed();
        let settling = std::time::Instant::now();
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
            let (mut keys, mut row_files) = (Vec::new(), Vec::new());
            for (entry, staged) in chosen
                .iter()
                .filter(|(e, _)| decided.contains(e.batch_id.as_str()))
            {
                keys.push(entry.key.clone());
                row_files.extend(staged.row_files().iter().flatten().cloned());
            }
            // The removal is cleanup, not part of the round: the next round need not wait for it.
            let mut cleanup = self.cleanup.lock().await;
            if let Some(previous) = cleanup.take() {
                let _ = previous.await;
            }
            let (staging, warehouse) = (self.staging.clone(), self.warehouse.clone());
            *cleanup = Some(tokio::spawn(async move {
                if let Err(e) = staging.delete_many(&keys).await {
                    tracing::debug!(error = %e, "staged objects not deleted");
                }
                warehouse.drop_rows(&row_files).await;
            }));
        }
        round.settle = settling.elapsed();
        Ok(round)
    }

    /// Waits for the removal of the last round's staged objects, if one is running.
    pub async fn finish_cleanup(&self) {
        if let Some(previous) = self.cleanup.lock().await.take() {
            let _ = previous.await;
        }
    }

    /// The staged objects of `selected`, in order: those prefetched during the last merge, the others read now.
    async fn read_selected(
        &self,
        selected: &[Registration],
        cells: bool,
    ) -> Result<Vec<Option<Result<StagedBatch, String>>>, SinkError> {
        let mut cached = std::mem::take(&mut *self.prefetched.lock().expect("prefetch lock"));
        let missing: Vec<Registration> = selected
            .iter()
            .filter(|e| !cached.contains_key(&e.batch_id))
            .cloned()
            .collect();
        let mut read = self.read_staged(&missing, cells).await?.into_iter();
        Ok(selected
            .iter()
            .map(|e| match cached.remove(&e.batch_id) {
                Some(staged) => Some(Ok(staged)),
                None => read.next().flatten(),
            })
            .collect())
    }

    /// Best effort: reads the staged objects of the batches pending beside `merging` (those the next round
    /// will take, within its limits) into [`Loader::prefetched`]. A failure leaves them to be read then.
    async fn prefetch(&self, merging: &HashSet<String>, cells: bool) {
        let Ok(pending) = self
            .registry
            .pending(self.options.max_batches + merging.len())
            .await
        else {
            return;
        };
        let mut next: Vec<Registration> = Vec::new();
        let mut bytes = 0u64;
        for entry in pending
            .into_iter()
            .filter(|e| !merging.contains(&e.batch_id))
        {
            if next.len() >= self.options.max_batches
                || (!next.is_empty() && bytes + entry.bytes.max(0) as u64 > self.options.max_bytes)
            {
                break;
            }
            bytes += entry.bytes.max(0) as u64;
            next.push(entry);
        }
        let Ok(reads) = self.read_staged(&next, cells).await else {
            return;
        };
        let mut prefetched = self.prefetched.lock().expect("prefetch lock");
        for (entry, read) in next.into_iter().zip(reads) {
            if let Some(Ok(staged)) = read
                && staged.id() == entry.batch_id
            {
                prefetched.insert(entry.batch_id, staged);
            }
        }
    }

    /// The staged objects of `entries`, in order, read several at a time (each an S3 round trip): `None` for
    /// a missing one, an error for one that is not a staged batch.
    async fn read_staged(
        &self,
        entries: &[Registration],
        cells: bool,
    ) -> Result<Vec<Option<Result<StagedBatch, String>>>, SinkError> {
        const READS_AT_ONCE: usize = 16;
        let mut out = Vec::with_capacity(entries.len());
        for wave in entries.chunks(READS_AT_ONCE) {
            let mut reads = tokio::task::JoinSet::new();
            for (i, entry) in wave.iter().enumerate() {
                let (staging, retry) = (self.staging.clone(), self.retry.clone());
                let (key, tables) = (entry.key.clone(), self.tables.len());
                reads.spawn(async move {
                    let read = retrying(&retry, "staging read", || staging.get(&key))
                        .await
                        .map_err(|(_, e)| e)?;
                    let staged = read.map(|b| StagedBatch::from_bytes(&b, tables, cells));
                    Ok::<_, SinkError>((i, staged))
                });
            }
            let mut done = Vec::with_capacity(wave.len());
            while let Some(joined) = reads.join_next().await {
                done.push(joined.map_err(|e| SinkError::Transient(format!("staging read: {e}")))??);
            }
            done.sort_by_key(|(i, _)| *i);
            out.extend(done.into_iter().map(|(_, read)| read));
        }
        Ok(out)
    }

    /// Reads the chosen batches again with their rows' cells, for a merge that sends the rows itself.
    async fn read_cells(
        &self,
        chosen: &mut [(Registration, StagedBatch)],
    ) -> Result<(), SinkError> {
        let entries: Vec<Registration> = chosen.iter().map(|(e, _)| e.clone()).collect();
        for ((entry, staged), read) in chosen
            .iter_mut()
            .zip(self.read_staged(&entries, true).await?)
        {
            match read {
                Some(Ok(full)) if full.id() == entry.batch_id => *staged = full,
                _ => {
                    return Err(SinkError::Transient(format!(
                        "staged batch {} could not be read again",
                        entry.batch_id
                    )));
                }
            }
        }
        Ok(())
    }

    /// The warehouse transaction, retried; records the database refuses become dead letters (stage `sink`)
    /// and the merge runs again without their rows.
    async fn merge(
        &self,
        chosen: &mut [(Registration, StagedBatch)],
        epoch: i64,
    ) -> Result<Option<Vec<Fate>>, SinkError> {
        // The workers' row files hold every record's rows; once a record is dead-lettered here, the merge
        // sends the remaining rows itself.
        let mut isolated = false;
        loop {
            let batches: Vec<_> = chosen.iter().map(|(_, s)| s.batch()).collect();
            let loads: Vec<_> = chosen
                .iter()
                .zip(&batches)
                .map(|((_, s), b)| s.load(b, &self.tables))
                .collect();
            let files: Vec<&[Option<String>]> = if isolated {
                Vec::new()
            } else {
                chosen.iter().map(|(_, s)| s.row_files()).collect()
            };
            let result = retrying(&self.retry, "grouped merge", || {
                self.warehouse.merge_group(&loads, &files, epoch)
            })
            .await;
            match result.map_err(|(_, e)| e)? {
                GroupOutcome::Decided(fates) => return Ok(Some(fates)),
                GroupOutcome::Fenced => return Ok(None),
                GroupOutcome::NeedsRows(_) => {
                    drop(loads);
                    self.read_cells(chosen).await?;
                    isolated = true;
                }
                GroupOutcome::Refused(refused) => {
                    drop(loads);
                    isolated = true;
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
