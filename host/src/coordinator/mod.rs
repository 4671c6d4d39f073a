//! Coordination outside the warehouse (`[coordinator]`): Kinesis shard leases, the loader lease and the
//! registry of staged batches in Amazon DynamoDB (`kind = "dynamodb"`) or a PostgreSQL database of their own
//! (`kind = "postgres"`), so that with a Redshift fleet no lease renewal writes the warehouse.
//!
//! Checkpoints stay in the warehouse either way: a batch's checkpoint moves in the transaction that commits
//! its rows (per batch, or the loader's grouped merge), which is what makes a zombie worker harmless. Leases
//! only decide who reads what; [`SplitCoordinator`] puts the two halves back together behind the pipeline's
//! one [`Coordinator`] role.

#[cfg(feature = "dynamodb")]
pub mod dynamodb;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::sink::{Coordinator, Lease, SinkError};

/// Who holds a partition's lease, as a lease store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The partition (Kinesis: `{stream}/{shard}`).
    pub partition: String,
    /// Who holds the lease (empty: nobody).
    pub owner: String,
    /// Whether the lease has run out.
    pub expired: bool,
    /// Until when the lease holds, µs since the epoch (0: no lease time recorded).
    pub expires_us: i64,
}

/// Partition leases by compare-and-set: the lease half of [`Coordinator`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The lease holders of a source, with whether each lease has expired at `now_us`.
    async fn holders(&self, source: &str, now_us: i64) -> Result<Vec<Holder>, SinkError>;

    /// Claims or renews a lease for `owner` until `expires_us` (see [`Coordinator::claim`]).
    async fn claim(
        &self,
        source: &str,
        partition: &str,
        owner: &str,
        now_us: i64,
        expires_us: i64,
        steal_from: Option<&str>,
    ) -> Result<bool, SinkError>;

    /// Gives up `owner`'s lease of a partition (nothing happens when someone else holds it).
    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError>;
}

/// The leases of a [`Coordinator`] backend used for leases only (a PostgreSQL coordinator database).
pub struct CoordinatorLeases(pub Arc<dyn Coordinator>);

#[async_trait]
impl LeaseStore for CoordinatorLeases {
    async fn holders(&self, source: &str, now_us: i64) -> Result<Vec<Holder>, SinkError> {
        Ok(self
            .0
            .leases(source, now_us)
            .await?
            .into_iter()
            .map(|l| Holder {
                partition: l.partition,
                owner: l.owner,
                expired: l.expired,
                expires_us: l.expires_us,
            })
            .collect())
    }

    async fn claim(
        &self,
        source: &str,
        partition: &str,
        owner: &str,
        now_us: i64,
        expires_us: i64,
        steal_from: Option<&str>,
    ) -> Result<bool, SinkError> {
        self.0
            .claim(source, partition, owner, now_us, expires_us, steal_from)
            .await
    }

    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
        self.0.release(source, partition, owner).await
    }
}

/// Checkpoints in the warehouse, leases in a store of their own.
pub struct SplitCoordinator {
    checkpoints: Arc<dyn Coordinator>,
    leases: Arc<dyn LeaseStore>,
    /// Partitions whose checkpoint row is known to exist: a renewal then never touches the warehouse.
    known: Mutex<HashSet<(String, String)>>,
}

impl SplitCoordinator {
    /// Checkpoints from `checkpoints` (the warehouse), leases from `leases`.
    pub fn new(checkpoints: Arc<dyn Coordinator>, leases: Arc<dyn LeaseStore>) -> Self {
        SplitCoordinator {
            checkpoints,
            leases,
            known: Mutex::new(HashSet::new()),
        }
    }
}

#[async_trait]
impl Coordinator for SplitCoordinator {
    async fn checkpoint(&self, source: &str, partition: &str) -> Result<String, SinkError> {
        self.checkpoints.checkpoint(source, partition).await
    }

    async fn leases(&self, source: &str, now_us: i64) -> Result<Vec<Lease>, SinkError> {
        // Positions from the warehouse (a read), holders from the lease store; a partition either knows.
        let mut merged: BTreeMap<String, Lease> = BTreeMap::new();
        for row in self.checkpoints.leases(source, now_us).await? {
            merged.insert(
                row.partition.clone(),
                Lease {
                    owner: String::new(),
                    expired: true,
                    expires_us: 0,
                    ..row
                },
            );
        }
        for holder in self.leases.holders(source, now_us).await? {
            let lease = merged
                .entry(holder.partition.clone())
                .or_insert_with(|| Lease {
                    partition: holder.partition.clone(),
                    position: String::new(),
                    owner: String::new(),
                    expired: true,
                    expires_us: 0,
                });
            lease.owner = holder.owner;
            lease.expired = holder.expired;
            lease.expires_us = holder.expires_us;
        }
        Ok(merged.into_values().collect())
    }

    async fn claim(
        &self,
        source: &str,
        partition: &str,
        owner: &str,
        now_us: i64,
        expires_us: i64,
        steal_from: Option<&str>,
    ) -> Result<bool, SinkError> {
        let key = (source.to_string(), partition.to_string());
        let known = self.known.lock().expect("not poisoned").contains(&key);
        if !known {
            // A partition's checkpoint is read once per partition and process before its first claim (a
            // SQLite sink creates the row then; the warehouse's reads write nothing).
            self.checkpoints.checkpoint(source, partition).await?;
            self.known.lock().expect("not poisoned").insert(key);
        }
        self.leases
            .claim(source, partition, owner, now_us, expires_us, steal_from)
            .await
    }

    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
        self.leases.release(source, partition, owner).await
    }

    async fn set_checkpoint(
        &self,
        source: &str,
        partition: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, SinkError> {
        self.checkpoints
            .set_checkpoint(source, partition, expected, new)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease store in memory, for the merge of positions and holders.
    #[derive(Default)]
    struct Memory(Mutex<BTreeMap<String, (String, i64)>>);

    #[async_trait]
    impl LeaseStore for Memory {
        async fn holders(&self, _: &str, now_us: i64) -> Result<Vec<Holder>, SinkError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(p, (o, e))| Holder {
                    partition: p.clone(),
                    owner: o.clone(),
                    expired: *e < now_us,
                    expires_us: *e,
                })
                .collect())
        }
        async fn claim(
            &self,
            _: &str,
            partition: &str,
            owner: &str,
            now_us: i64,
            expires_us: i64,
            steal_from: Option<&str>,
        ) -> Result<bool, SinkError> {
            let mut map = self.0.lock().unwrap();
            let entry = map.entry(partition.into()).or_insert((String::new(), 0));
            let free = entry.0.is_empty() || entry.1 < now_us;
            if free || entry.0 == owner || Some(entry.0.as_str()) == steal_from {
                *entry = (owner.into(), expires_us);
                return Ok(true);
            }
            Ok(false)
        }
        async fn release(&self, _: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
            if let Some(e) = self.0.lock().unwrap().get_mut(partition)
                && e.0 == owner
            {
                *e = (String::new(), 0);
            }
            Ok(())
        }
    }

    /// Checkpoints in memory; counts the calls that would write the warehouse.
    #[derive(Default)]
    struct Checkpoints {
        rows: Mutex<BTreeMap<String, String>>,
        reads: Mutex<usize>,
    }

    #[async_trait]
    impl Coordinator for Checkpoints {
        async fn checkpoint(&self, _: &str, partition: &str) -> Result<String, SinkError> {
            *self.reads.lock().unwrap() += 1;
            let mut rows = self.rows.lock().unwrap();
            Ok(rows.entry(partition.into()).or_default().clone())
        }
        async fn leases(&self, _: &str, _: i64) -> Result<Vec<Lease>, SinkError> {
            Ok(self
                .rows
                .lock()
                .unwrap()
                .iter()
                .map(|(p, pos)| Lease {
                    partition: p.clone(),
                    position: pos.clone(),
                    owner: "stale".into(),
                    expired: false,
                    expires_us: 0,
                })
                .collect())
        }
        async fn claim(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: i64,
            _: i64,
            _: Option<&str>,
        ) -> Result<bool, SinkError> {
            panic!("a split coordinator never claims in the warehouse")
        }
        async fn release(&self, _: &str, _: &str, _: &str) -> Result<(), SinkError> {
            panic!("a split coordinator never releases in the warehouse")
        }
        async fn set_checkpoint(
            &self,
            _: &str,
            partition: &str,
            expected: &str,
            new: &str,
        ) -> Result<bool, SinkError> {
            let mut rows = self.rows.lock().unwrap();
            let row = rows.entry(partition.into()).or_default();
            if row == expected {
                *row = new.into();
                return Ok(true);
            }
            Ok(false)
        }
    }

    #[tokio::test]
    async fn leases_come_from_the_store_and_positions_from_the_warehouse() {
        let checkpoints = Arc::new(Checkpoints::default());
        let split = SplitCoordinator::new(checkpoints.clone(), Arc::new(Memory::default()));
        assert!(
            split
                .claim("kinesis", "s/0", "a", 10, 100, None)
                .await
                .unwrap()
        );
        assert!(
            split
                .claim("kinesis", "s/0", "a", 20, 110, None)
                .await
                .unwrap()
        );
        assert!(
            !split
                .claim("kinesis", "s/0", "b", 30, 130, None)
                .await
                .unwrap()
        );
        assert!(
            split
                .set_checkpoint("kinesis", "s/0", "", "7")
                .await
                .unwrap()
        );
        // Only the first claim read the warehouse's checkpoint row; renewals did not touch it.
        assert_eq!(*checkpoints.reads.lock().unwrap(), 1);
        let leases = split.leases("kinesis", 50).await.unwrap();
        assert_eq!(
            leases,
            vec![Lease {
                partition: "s/0".into(),
                position: "7".into(),
                owner: "a".into(),
                expired: false,
                expires_us: 110,
            }]
        );
        split.release("kinesis", "s/0", "a").await.unwrap();
        assert!(
            split
                .claim("kinesis", "s/0", "b", 60, 160, None)
                .await
                .unwrap()
        );
        // A checkpoint row nobody holds a lease on is free (the warehouse's own owner column is ignored).
        checkpoints.checkpoint("kinesis", "s/1").await.unwrap();
        let leases = split.leases("kinesis", 70).await.unwrap();
        assert_eq!(leases[1].owner, "");
        assert!(leases[1].expired);
    }
}
