//! Checkpoints and leases in the warehouse's own tables (`weir_checkpoints`, `weir_leases`), by compare-and-set.
use super::*;

#[async_trait]
impl Coordinator for RedshiftSink {
    async fn checkpoint(&self, source: &str, partition: &str) -> Result<String, SinkError> {
        // Reads only: a partition without a row has the empty checkpoint, and its first move inserts the row
        // (`compare_and_set`). On Redshift every write transaction costs a commit in the cluster-wide queue,
        // so a fleet's start writes nothing.
        let table = format!("{}.weir_checkpoints", quote(&self.schema));
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
                let rows = conn
                    .client
                    .query_typed(
                        traced(&format!(
                            "SELECT position FROM {table} WHERE source = $1 AND \"partition\" = $2"
                        )),
                        &[(&source, Type::VARCHAR), (&partition, Type::VARCHAR)],
                    )
                    .await
                    .map_err(classify)?;
                Ok(rows
                    .first()
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_default())
            })
            .await;
        Self::settle(&mut guard, result)
    }

    async fn leases(&self, source: &str, now_us: i64) -> Result<Vec<Lease>, SinkError> {
        let now = sql_timestamp(now_us);
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
            let rows = conn
                .client
                .query_typed(
                    traced(&format!(
                        "SELECT \"partition\", position, COALESCE(owner, ''), \
                         CASE WHEN lease_expires_at IS NULL OR lease_expires_at < CAST($2 AS TIMESTAMPTZ) THEN 1 ELSE 0 END, \
                         CAST(COALESCE(EXTRACT(EPOCH FROM lease_expires_at) * 1000000, 0) AS BIGINT) \
                         FROM {s}.weir_checkpoints WHERE source = $1"
                    )),
                    &[(&source, Type::VARCHAR), (&now, Type::VARCHAR)],
                )
                .await
                .map_err(classify)?;
            Ok(rows
                .iter()
                .map(|r| Lease {
                    partition: r.get(0),
                    position: r.get(1),
                    owner: r.get(2),
                    expired: r.get::<_, i32>(3) == 1,
                    expires_us: r.get(4),
                })
                .collect())
            })
            .await;
        Self::settle(&mut guard, result)
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
        self.ensure_checkpoint_row(source, partition).await?;
        let (now, expires) = (sql_timestamp(now_us), sql_timestamp(expires_us));
        let victim = steal_from.unwrap_or(owner);
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("lease update", async {
                conn.client
                    .execute_typed(
                traced(&format!(
                    "UPDATE {s}.weir_checkpoints SET owner = $1, lease_expires_at = CAST($2 AS TIMESTAMPTZ), \
                     updated_at = CAST($3 AS TIMESTAMPTZ) WHERE source = $4 AND \"partition\" = $5 AND \
                     (owner IS NULL OR owner = '' OR owner = $1 OR owner = $6 OR lease_expires_at IS NULL \
                     OR lease_expires_at < CAST($3 AS TIMESTAMPTZ))"
                )),
                &[
                    (&owner, Type::VARCHAR),
                    (&expires, Type::VARCHAR),
                    (&now, Type::VARCHAR),
                    (&source, Type::VARCHAR),
                    (&partition, Type::VARCHAR),
                    (&victim, Type::VARCHAR),
                ],
            )
                    .await
                    .map_err(classify)
            })
            .await;
        match Self::settle(&mut guard, result) {
            Ok(n) => Ok(n == 1),
            // Two workers claiming at once on Redshift: one is refused (serializable); it is not the owner.
            Err(SinkError::Transient(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("lease update", async {
                conn.client
                    .execute_typed(
                        traced(&format!(
                            "UPDATE {s}.weir_checkpoints SET owner = '', lease_expires_at = NULL \
                     WHERE source = $1 AND \"partition\" = $2 AND owner = $3"
                        )),
                        &[
                            (&source, Type::VARCHAR),
                            (&partition, Type::VARCHAR),
                            (&owner, Type::VARCHAR),
                        ],
                    )
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result).map(|_| ())
    }

    async fn set_checkpoint(
        &self,
        source: &str,
        partition: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, SinkError> {
        let now = sql_timestamp(crate::record::wall_clock_us());
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("checkpoint update", async {
                let tx = conn.client.transaction().await.map_err(classify)?;
                let moved = compare_and_set(
                    &tx,
                    (&self.schema, !self.redshift),
                    (source, partition),
                    expected,
                    new,
                    &now,
                )
                .await?;
                tx.commit().await.map_err(classify)?;
                Ok(moved)
            })
            .await;
        Self::settle(&mut guard, result)
    }
}

impl RedshiftSink {
    /// Inserts a partition's checkpoint row (empty) when it has none: a lease lives on that row.
    pub(super) async fn ensure_checkpoint_row(
        &self,
        source: &str,
        partition: &str,
    ) -> Result<(), SinkError> {
        if !self.checkpoint_row_missing(source, partition).await? {
            return Ok(());
        }
        let now = sql_timestamp(crate::record::wall_clock_us());
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
                let tx = conn.client.transaction().await.map_err(classify)?;
                let params: [(&(dyn ToSql + Sync), Type); 4] = [
                    (&"", Type::VARCHAR),
                    (&now, Type::VARCHAR),
                    (&source, Type::VARCHAR),
                    (&partition, Type::VARCHAR),
                ];
                insert_checkpoint(&tx, &self.schema, &params).await?;
                tx.commit().await.map_err(classify)
            })
            .await;
        match Self::settle(&mut guard, result) {
            // A concurrent claimer inserted it first.
            Err(SinkError::Transient(_))
                if !self.checkpoint_row_missing(source, partition).await? =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Whether a partition has no checkpoint row yet.
    async fn checkpoint_row_missing(
        &self,
        source: &str,
        partition: &str,
    ) -> Result<bool, SinkError> {
        let table = format!("{}.weir_checkpoints", quote(&self.schema));
        Ok(self
            .query_text(
                "database call",
                format!("SELECT 1 FROM {table} WHERE source = $1 AND \"partition\" = $2"),
                vec![source.to_string(), partition.to_string()],
            )
            .await?
            .is_empty())
    }
}
