//! The grouped-commit roles of a backend (docs/GROUP-COMMIT.md): the registry of staged batches with the loader
//! lease (a coordinator's part), and the loader's one transaction over many batches (a warehouse's part). The
//! workers' and the loader's side is `crate::group`.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{Load, SinkError};

/// The `weir_checkpoints` source of the loader's rows in a SQL registry and warehouse: the lease (`lease`) and
/// the fence (`fence`).
pub const LOADER: &str = "weir-loader";

/// An epoch as SQL registries and fences store it: zero-padded, so that text order is number order.
pub fn epoch_text(epoch: i64) -> String {
    format!("{:020}", epoch.max(0))
}

/// The epoch of a loader lease row (`holder`, `position`) read back after a claim by `owner`: `Some` only when
/// `owner` holds it.
pub fn held_epoch(holder: &str, position: &str, owner: &str) -> Option<i64> {
    (holder == owner).then(|| position.parse().ok()).flatten()
}

/// The fate of a registered batch. Only the loader writes one, and only over `Pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Registered; no loader transaction has decided it yet.
    Pending,
    /// Its rows, ledger row and checkpoint are in the warehouse.
    Merged,
    /// Its checkpoint compare-and-set failed: another worker moved the partition's checkpoint.
    Refused,
}

impl Fate {
    /// The name stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Pending => "pending",
            Fate::Merged => "merged",
            Fate::Refused => "refused",
        }
    }

    /// A stored name back (anything unknown is still pending: a loader decides it again).
    pub fn parse(s: &str) -> Fate {
        match s {
            "merged" => Fate::Merged,
            "refused" => Fate::Refused,
            _ => Fate::Pending,
        }
    }
}

/// A staged batch as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The batch id.
    pub batch_id: String,
    /// The source kind.
    pub source: String,
    /// The partition.
    pub partition: String,
    /// The key of its staged object.
    pub key: String,
    /// Size of the staged object, in bytes.
    pub bytes: i64,
}

/// The staged batches and their fates, and the loader lease: the coordinator's part of grouped commits.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Registers a staged batch, unless a batch with its id is registered already and pending or merged (a
    /// retry). A batch the loader refused may be registered again and is then pending again: a refusal
    /// answers one attempt (its worker had lost the partition, or registered it before another worker
    /// registered its predecessor), and the partition's owner reads the same batch again from the checkpoint,
    /// under the same id; the merge's checkpoint compare-and-set decides it anew.
    async fn register(&self, entry: &Registration) -> Result<(), SinkError>;

    /// Registers several staged batches, in order (each unless registered already). Default: one by one; a
    /// registry whose every write is expensive (Redshift) registers them in one transaction.
    async fn register_many(&self, entries: &[Registration]) -> Result<(), SinkError> {
        for entry in entries {
            self.register(entry).await?;
        }
        Ok(())
    }

    /// Pending batches in registration order, at most `limit`.
    async fn pending(&self, limit: usize) -> Result<Vec<Registration>, SinkError>;

    /// How many batches are pending (counting at most `limit`) and their staged bytes: what starts a merge
    /// before its interval is up. May lag a moment (it only decides when to look); default: from
    /// [`Registry::pending`].
    async fn pending_work(&self, limit: usize) -> Result<(usize, u64), SinkError> {
        let pending = self.pending(limit).await?;
        let bytes = pending.iter().map(|r| r.bytes.max(0) as u64).sum();
        Ok((pending.len(), bytes))
    }

    /// Writes the fates the loader decided, each only over `Pending`.
    async fn settle(&self, fates: &[(String, Fate)]) -> Result<(), SinkError>;

    /// The fates of these batches (a batch the registry does not know is missing from the map).
    async fn fates(&self, batch_ids: &[String]) -> Result<HashMap<String, Fate>, SinkError>;

    /// Claims or renews the loader lease for `owner` until `expires_us`; returns the lease's epoch when
    /// `owner` holds it (a new epoch for each new holder), `None` when another worker does.
    async fn claim_loader(
        &self,
        owner: &str,
        now_us: i64,
        expires_us: i64,
    ) -> Result<Option<i64>, SinkError>;

    /// Gives the loader lease up, so that another worker takes it at once.
    async fn release_loader(&self, owner: &str) -> Result<(), SinkError>;

    /// The loader lease as it stands (`weir status`); `None` before any worker claimed it.
    async fn loader(&self) -> Result<Option<LoaderLease>, SinkError>;
}

/// The loader lease, as `weir status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderLease {
    /// Its holder (empty: released).
    pub owner: String,
    /// Until when it holds, µs since the epoch (0: released).
    pub expires_us: i64,
    /// The epoch of its holder (a new one per holder).
    pub epoch: String,
}

/// Registration order within one process: strictly increasing even within one microsecond.
pub fn registration_us() -> i64 {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = crate::record::wall_clock_us();
    let mut last = LAST.load(std::sync::atomic::Ordering::SeqCst);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(
            last,
            next,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        ) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// What one grouped merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    /// Committed; one fate per load, in order: `Merged` (now, or by an earlier transaction) or `Refused`
    /// (its checkpoint compare-and-set failed).
    Decided(Vec<Fate>),
    /// A loader with a newer epoch has committed: nothing was written.
    Fenced,
    /// The database refused these records' rows, as `(load, record, reason)` by index: nothing was written.
    Refused(Vec<(usize, usize, String)>),
    /// The database refused a value among rows bulk-loaded from row files: nothing was written. Merge again
    /// with the rows themselves (without row files), which finds the records one by one.
    NeedsRows(String),
}

/// The loader's warehouse transaction over many batches.
#[async_trait]
pub trait GroupWarehouse: Send + Sync {
    /// Merges `loads` in one transaction fenced by the loader's `epoch`. `row_files` is empty, or holds per
    /// load what [`GroupWarehouse::stage_rows`] wrote for it: the merge then bulk-loads the rows from those
    /// files instead of sending them itself.
    async fn merge_group(
        &self,
        loads: &[Load<'_>],
        row_files: &[&[Option<String>]],
        epoch: i64,
    ) -> Result<GroupOutcome, SinkError>;

    /// Whether merges load rows from the files [`GroupWarehouse::stage_rows`] writes: the loader then reads
    /// staged batches without their rows' cells. Default false.
    fn loads_row_files(&self) -> bool {
        false
    }

    /// Run by the worker that stages a batch (step W4): writes the batch's rows where the warehouse's bulk load
    /// reads them (Redshift's `COPY` from S3), per table a file URL or `None` (no rows). Default: nothing; the
    /// merge sends the rows from the staged batch.
    async fn stage_rows(&self, load: &Load<'_>) -> Result<Vec<Option<String>>, SinkError> {
        let _ = load;
        Ok(Vec::new())
    }

    /// Removes files [`GroupWarehouse::stage_rows`] wrote, once their batch is decided (best effort: an S3
    /// lifecycle rule removes what is left).
    async fn drop_rows(&self, files: &[String]) {
        let _ = files;
    }
}
