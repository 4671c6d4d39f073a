//! Checkpoints and leases in the warehouse's own tables (`weir_checkpoints`, `weir_leases`), by compare-and-set.
use super::*;

#[async_trait]
impl Coordinator for RedshiftSink {
    async fn checkpoint(&self, source: &str, partition: &str) -> Result<String, SinkError> {
        let now = sql_timestamp(crate::record::wall_clock_us());
        let table = format!("{}.weir_checkpoints", quote(&self.schema));
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
            let params: [(&(dyn ToSql + Sync), Type); 3] =
                [(&source, Type::VARCHAR), (&partition, Type::VARCHAR), (&now, Type::VARCHAR)];
            let select = format!("SELECT position FROM {table} WHERE source = $1 AND \"partition\" = $2");
            // Read first: on Redshift every write transaction costs a commit, so the row is inserted only
            // when it is missing (a fleet's workers all read their checkpoints at start).
            let rows = conn
                .client
                .query_typed(traced(&select), &params[..2])
                .await
                .map_err(classify)?;
            if !rows.is_empty() {
                return Ok(rows[0].get::<_, String>(0));
            }
            conn.client
                .query_typed(
                    traced(&format!(
                        "INSERT INTO {table} (source, \"partition\", position, updated_at) \
                         SELECT $1, $2, '', CAST($3 AS TIMESTAMPTZ) \
                         WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE source = $1 AND \"partition\" = $2)"
                    )),
                    &params,
                )
                .await
                .map_err(classify)?;
            let rows = conn
                .client
                .query_typed(traced(&select), &params[..2])
                .await
                .map_err(classify)?;
            Ok(rows.first().map(|r| r.get::<_, String>(0)).unwrap_or_default())
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
                         CASE WHEN lease_expires_at IS NULL OR lease_expires_at < CAST($2 AS TIMESTAMPTZ) THEN 1 ELSE 0 END \
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
        self.checkpoint(source, partition).await?;
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
        let s = quote(&self.schema);
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("lease update", async {
                conn.client
                    .execute_typed(
                traced(&format!(
                    "UPDATE {s}.weir_checkpoints SET position = $1, updated_at = CAST($2 AS TIMESTAMPTZ) \
                     WHERE source = $3 AND \"partition\" = $4 AND position = $5"
                )),
                &[
                    (&new, Type::VARCHAR),
                    (&now, Type::VARCHAR),
                    (&source, Type::VARCHAR),
                    (&partition, Type::VARCHAR),
                    (&expected, Type::VARCHAR),
                ],
            )
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result).map(|n| n == 1)
    }
}
