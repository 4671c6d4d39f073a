//! Grouped commits on SQLite (`[sink.group_commit] enabled = true`): the registry of staged batches and the
//! loader lease in the database file itself (`weir_staged`, row `weir-loader/lease` of `weir_checkpoints`),
//! and the loader's one transaction over many batches. The protocol is the one of docs/GROUP-COMMIT.md; SQLite
//! has one writer at a time, so the loader's transaction is what the fleet's commits wait on, once per
//! interval instead of once per batch.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::Row as _;

use super::{SqliteSink, classify, upsert_rows, write_dead_letters, write_ledger};
use crate::schema::format_timestamp_us;
use crate::sink::group::{
    Fate, GroupOutcome, GroupWarehouse, LOADER, LoaderLease, Registration, Registry, epoch_text,
    held_epoch,
};
use crate::sink::{Commit, Load, READ_CHUNK, SinkError};

const STAGED_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS weir_staged (
    batch_id VARCHAR(1024) PRIMARY KEY,
    source VARCHAR(256) NOT NULL,
    "partition" VARCHAR(256) NOT NULL,
    staged_key VARCHAR(1024) NOT NULL,
    bytes BIGINT NOT NULL,
    registered_us BIGINT NOT NULL,
    fate VARCHAR(16) NOT NULL
)"#;

impl SqliteSink {
    /// Creates the registry's table and the loader lease's row.
    pub async fn prepare_registry(&self) -> Result<(), SinkError> {
        sqlx::raw_sql(STAGED_TABLE)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        self.loader_row("lease").await
    }

    /// Creates the loader fence's row (the merge transaction moves it).
    pub async fn prepare_fence(&self) -> Result<(), SinkError> {
        self.loader_row("fence").await
    }

    async fn loader_row(&self, partition: &str) -> Result<(), SinkError> {
        sqlx::query(
            r#"INSERT INTO weir_checkpoints (source, "partition", position, updated_at)
               VALUES (?, ?, ?, ?) ON CONFLICT (source, "partition") DO NOTHING"#,
        )
        .bind(LOADER)
        .bind(partition)
        .bind(epoch_text(0))
        .bind(format_timestamp_us(crate::record::wall_clock_us()))
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl GroupWarehouse for SqliteSink {
    async fn merge_group(
        &self,
        loads: &[Load<'_>],
        _row_files: &[&[Option<String>]],
        epoch: i64,
    ) -> Result<GroupOutcome, SinkError> {
        let upserts = self
            .upserts
            .get()
            .ok_or_else(|| SinkError::Permanent("merge before prepare".into()))?;
        let loaded_at = format_timestamp_us(crate::record::wall_clock_us());
        let mut tx = self.pool.begin().await.map_err(classify)?;
        // The fence: a loader whose epoch is older than one that committed writes nothing.
        let fence = epoch_text(epoch);
        let moved = sqlx::query(
            r#"UPDATE weir_checkpoints SET position = ? WHERE source = ? AND "partition" = 'fence'
               AND position <= ?"#,
        )
        .bind(&fence)
        .bind(LOADER)
        .bind(&fence)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if moved.rows_affected() == 0 {
            tx.rollback().await.map_err(classify)?;
            return Ok(GroupOutcome::Fenced);
        }
        // Per batch, in registration order: in the ledger (or met earlier in this group) → merged before;
        // unordered → merged now; ordered → merged now when its checkpoint compare-and-set moves, else refused.
        let mut merged: HashSet<&str> = HashSet::new();
        for chunk in loads.chunks(READ_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT batch_id FROM weir_batches WHERE batch_id IN ({marks})");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for load in chunk {
                q = q.bind(&load.batch.id);
            }
            let rows = q.fetch_all(&mut *tx).await.map_err(classify)?;
            let found: HashSet<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
            merged.extend(
                chunk
                    .iter()
                    .map(|l| l.batch.id.as_str())
                    .filter(|id| found.contains(*id)),
            );
        }
        let mut fates = Vec::with_capacity(loads.len());
        for load in loads {
            let batch = load.batch;
            if !merged.insert(batch.id.as_str()) {
                fates.push(Fate::Merged);
                continue;
            }
            if batch.ordered {
                match self.guard(&mut tx, batch, &loaded_at).await? {
                    None => {}
                    Some(Commit::Committed) => {
                        fates.push(Fate::Merged);
                        continue;
                    }
                    Some(Commit::NotOwner) => {
                        fates.push(Fate::Refused);
                        continue;
                    }
                }
            }
            // The merge's load time for every row, as the loader's transaction writes them all.
            upsert_rows(&mut tx, upserts, load, &loaded_at).await?;
            write_dead_letters(&mut tx, load, &loaded_at).await?;
            write_ledger(&mut tx, load, &loaded_at).await?;
            fates.push(Fate::Merged);
        }
        tx.commit().await.map_err(classify)?;
        Ok(GroupOutcome::Decided(fates))
    }
}

#[async_trait]
impl Registry for SqliteSink {
    async fn register(&self, entry: &Registration) -> Result<(), SinkError> {
        self.register_many(std::slice::from_ref(entry)).await
    }

    async fn register_many(&self, entries: &[Registration]) -> Result<(), SinkError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        for entry in entries {
            let now = crate::sink::group::registration_us();
            // A refused batch registered again is a new attempt (see `Registry::register`).
            sqlx::query(
                r#"UPDATE weir_staged SET fate = 'pending', staged_key = ?, bytes = ?, registered_us = ?
                   WHERE batch_id = ? AND fate = 'refused'"#,
            )
            .bind(&entry.key)
            .bind(entry.bytes)
            .bind(now)
            .bind(&entry.batch_id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            sqlx::query(
                r#"INSERT INTO weir_staged (batch_id, source, "partition", staged_key, bytes, registered_us, fate)
                   VALUES (?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT (batch_id) DO NOTHING"#,
            )
            .bind(&entry.batch_id)
            .bind(&entry.source)
            .bind(&entry.partition)
            .bind(&entry.key)
            .bind(entry.bytes)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Registration>, SinkError> {
        let rows = sqlx::query(
            r#"SELECT batch_id, source, "partition", staged_key, bytes FROM weir_staged
               WHERE fate = 'pending' ORDER BY registered_us, batch_id LIMIT ?"#,
        )
        .bind(limit.max(1) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| Registration {
                batch_id: r.get(0),
                source: r.get(1),
                partition: r.get(2),
                key: r.get(3),
                bytes: r.get(4),
            })
            .collect())
    }

    async fn settle(&self, fates: &[(String, Fate)]) -> Result<(), SinkError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        for (id, fate) in fates {
            sqlx::query("UPDATE weir_staged SET fate = ? WHERE batch_id = ? AND fate = 'pending'")
                .bind(fate.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn fates(&self, batch_ids: &[String]) -> Result<HashMap<String, Fate>, SinkError> {
        let mut out = HashMap::new();
        for chunk in batch_ids.chunks(READ_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT batch_id, fate FROM weir_staged WHERE batch_id IN ({marks})");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await.map_err(classify)? {
                out.insert(
                    row.get::<String, _>(0),
                    Fate::parse(&row.get::<String, _>(1)),
                );
            }
        }
        Ok(out)
    }

    async fn claim_loader(
        &self,
        owner: &str,
        now_us: i64,
        expires_us: i64,
    ) -> Result<Option<i64>, SinkError> {
        // A new holder starts a new epoch (its claim time, and at least the last one plus one); the holder
        // renewing keeps its own.
        let now = format_timestamp_us(now_us);
        sqlx::query(
            r#"UPDATE weir_checkpoints SET
                 position = CASE WHEN owner = ?1 THEN position
                   ELSE printf('%020d', max(?2, CAST(position AS INTEGER) + 1)) END,
                 owner = ?1, lease_expires_at = ?3, updated_at = ?4
               WHERE source = ?5 AND "partition" = 'lease' AND (owner IS NULL OR owner = '' OR owner = ?1
                 OR lease_expires_at IS NULL OR lease_expires_at < ?4)"#,
        )
        .bind(owner)
        .bind(now_us)
        .bind(format_timestamp_us(expires_us))
        .bind(&now)
        .bind(LOADER)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        let row = sqlx::query(
            r#"SELECT COALESCE(owner, ''), position FROM weir_checkpoints
               WHERE source = ? AND "partition" = 'lease'"#,
        )
        .bind(LOADER)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(row.and_then(|r| held_epoch(r.get(0), r.get(1), owner)))
    }

    async fn loader(&self) -> Result<Option<LoaderLease>, SinkError> {
        let row = sqlx::query(
            r#"SELECT COALESCE(owner, ''), position, COALESCE(lease_expires_at, '')
               FROM weir_checkpoints WHERE source = ? AND "partition" = 'lease'"#,
        )
        .bind(LOADER)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(row.map(|r| {
            let expires: String = r.get(2);
            LoaderLease {
                owner: r.get(0),
                expires_us: if expires.is_empty() {
                    0
                } else {
                    super::reader::stored_us(&expires)
                },
                epoch: r.get(1),
            }
        }))
    }

    async fn release_loader(&self, owner: &str) -> Result<(), SinkError> {
        sqlx::query(
            r#"UPDATE weir_checkpoints SET owner = '', lease_expires_at = NULL
               WHERE source = ? AND "partition" = 'lease' AND owner = ?"#,
        )
        .bind(LOADER)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }
}
