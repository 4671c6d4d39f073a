//! Checkpoints and leases in the SQLite file's own tables, by compare-and-set.

use super::*;

#[async_trait]
impl Coordinator for SqliteSink {
    async fn checkpoint(&self, source: &str, partition: &str) -> Result<String, SinkError> {
        let now = format_timestamp_us(crate::record::wall_clock_us());
        sqlx::query(
            r#"INSERT INTO weir_checkpoints (source, "partition", position, updated_at) VALUES (?, ?, '', ?)
               ON CONFLICT (source, "partition") DO NOTHING"#,
        )
        .bind(source)
        .bind(partition)
        .bind(&now)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        let row = sqlx::query(
            r#"SELECT position FROM weir_checkpoints WHERE source = ? AND "partition" = ?"#,
        )
        .bind(source)
        .bind(partition)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(row.get(0))
    }

    async fn leases(&self, source: &str, now_us: i64) -> Result<Vec<Lease>, SinkError> {
        let now = format_timestamp_us(now_us);
        let rows = sqlx::query(
            r#"SELECT "partition", position, COALESCE(owner, ''),
                 CASE WHEN lease_expires_at IS NULL OR lease_expires_at < ? THEN 1 ELSE 0 END,
                 COALESCE(lease_expires_at, '')
               FROM weir_checkpoints WHERE source = ?"#,
        )
        .bind(&now)
        .bind(source)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| Lease {
                partition: r.get(0),
                position: r.get(1),
                owner: r.get(2),
                expired: r.get::<i64, _>(3) == 1,
                expires_us: super::reader::stored_us(&r.get::<String, _>(4)),
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
        self.checkpoint(source, partition).await?;
        let now = format_timestamp_us(now_us);
        let done = sqlx::query(
            r#"UPDATE weir_checkpoints SET owner = ?, lease_expires_at = ?, updated_at = ?
               WHERE source = ? AND "partition" = ? AND (owner IS NULL OR owner = '' OR owner = ? OR owner = ?
                 OR lease_expires_at IS NULL OR lease_expires_at < ?)"#,
        )
        .bind(owner)
        .bind(format_timestamp_us(expires_us))
        .bind(&now)
        .bind(source)
        .bind(partition)
        .bind(owner)
        .bind(steal_from.unwrap_or(owner))
        .bind(&now)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
        sqlx::query(
            r#"UPDATE weir_checkpoints SET owner = '', lease_expires_at = NULL
               WHERE source = ? AND "partition" = ? AND owner = ?"#,
        )
        .bind(source)
        .bind(partition)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn set_checkpoint(
        &self,
        source: &str,
        partition: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, SinkError> {
        let done = sqlx::query(
            r#"UPDATE weir_checkpoints SET position = ?, updated_at = ?
               WHERE source = ? AND "partition" = ? AND position = ?"#,
        )
        .bind(new)
        .bind(format_timestamp_us(crate::record::wall_clock_us()))
        .bind(source)
        .bind(partition)
        .bind(expected)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }
}
