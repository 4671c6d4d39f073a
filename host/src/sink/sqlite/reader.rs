//! Reading back the ledger, final rows and dead letters (reconcile, replay).

use super::*;

#[async_trait]
impl SinkReader for SqliteSink {
    async fn activity(&self, source: &str) -> Result<Vec<PartitionActivity>, SinkError> {
        // Timestamps are fixed-width RFC 3339 text, so max() is the latest.
        let rows = sqlx::query(
            r#"SELECT "partition", count(*), COALESCE(sum(records_in), 0), max(loaded_at)
               FROM weir_batches WHERE source = ? GROUP BY "partition" ORDER BY "partition""#,
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| PartitionActivity {
                partition: r.get(0),
                batches: r.get(1),
                records: r.get(2),
                last_commit_us: stored_us(&r.get::<String, _>(3)),
            })
            .collect())
    }

    async fn dead_letter_entries(
        &self,
        since_us: i64,
        reason: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, SinkError> {
        let reason = reason.unwrap_or("");
        let rows = sqlx::query(
            r#"SELECT record_id, batch_id, raw_ref, stage, reason, payload_preview, at
               FROM weir_dead_letters WHERE at >= ? AND (? = '' OR instr(reason, ?) > 0)
               ORDER BY at, record_id LIMIT ?"#,
        )
        .bind(crate::schema::format_timestamp_us(since_us))
        .bind(reason)
        .bind(reason)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterEntry {
                record_id: r.get(0),
                batch_id: r.get(1),
                raw_ref: r.get(2),
                stage: r.get(3),
                reason: r.get(4),
                payload_preview: r.get(5),
                at_us: stored_us(&r.get::<String, _>(6)),
            })
            .collect())
    }

    async fn dead_letter_counts(
        &self,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetterCount>, SinkError> {
        let rows = sqlx::query(
            r#"SELECT stage, reason, count(*) AS n FROM weir_dead_letters WHERE at >= ?
               GROUP BY stage, reason ORDER BY n DESC, stage, reason LIMIT ?"#,
        )
        .bind(crate::schema::format_timestamp_us(since_us))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterCount {
                stage: r.get(0),
                reason: r.get(1),
                count: r.get(2),
            })
            .collect())
    }

    async fn ledger(&self) -> Result<Vec<LedgerRow>, SinkError> {
        let rows = sqlx::query(
            r#"SELECT batch_id, source, "partition", raw_ref, rule_digest, drop_reasons
               FROM weir_batches ORDER BY loaded_at, batch_id"#,
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| LedgerRow {
                batch_id: r.get(0),
                source: r.get(1),
                partition: r.get(2),
                raw_ref: r.get(3),
                rule_digest: r.get(4),
                drop_reasons: r.get(5),
            })
            .collect())
    }

    async fn stored_rows(
        &self,
        spec: &TableSpec,
        filter: &RowFilter,
    ) -> Result<Vec<StoredRow>, SinkError> {
        let columns: Vec<String> = spec
            .columns
            .iter()
            .map(|(c, _)| format!("CAST({} AS TEXT)", quote(c)))
            .collect();
        let select = format!(
            r#"SELECT {}, "_weir_record_id", "_weir_batch_id" FROM {}"#,
            columns.join(", "),
            quote(&spec.name)
        );
        let n = spec.columns.len();
        let mut out = Vec::new();
        for chunk in filter.chunks(READ_CHUNK) {
            let (condition, params) = match &chunk {
                RowFilter::BatchIds(ids) | RowFilter::RecordIds(ids) => (
                    format!(
                        "{} IN ({})",
                        quote(chunk.column().expect("an id filter")),
                        vec!["?"; ids.len()].join(", ")
                    ),
                    ids.clone(),
                ),
                RowFilter::Keys(keys) => {
                    let one: Vec<String> = spec
                        .primary_key
                        .iter()
                        .map(|c| format!("{} = ?", quote(c)))
                        .collect();
                    let one = format!("({})", one.join(" AND "));
                    let cond = if keys.is_empty() {
                        "1 = 0".to_string()
                    } else {
                        vec![one; keys.len()].join(" OR ")
                    };
                    (cond, keys.iter().flatten().cloned().collect())
                }
            };
            let sql = format!("{select} WHERE {condition}");
            let mut q = sqlx::query(AssertSqlSafe(sql));
            // Keys are compared as stored: integers as integers, everything else as its text.
            let key_types: Vec<ColumnType> = spec
                .primary_key
                .iter()
                .filter_map(|k| spec.columns.iter().find(|(c, _)| c == k).map(|(_, t)| *t))
                .collect();
            for (i, v) in params.iter().enumerate() {
                let integer = matches!(chunk, RowFilter::Keys(_))
                    && matches!(
                        key_types[i % key_types.len().max(1)],
                        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt
                    );
                q = match (integer, v.parse::<i64>()) {
                    (true, Ok(n)) => q.bind(n),
                    _ => q.bind(v.clone()),
                };
            }
            for r in q.fetch_all(&self.pool).await.map_err(classify)? {
                out.push(StoredRow {
                    cells: (0..n).map(|i| r.get::<Option<String>, _>(i)).collect(),
                    record_id: r.get(n),
                    batch_id: r.get(n + 1),
                });
            }
        }
        Ok(out)
    }

    async fn dead_letters(&self, filter: &RowFilter) -> Result<Vec<DeadLetterRow>, SinkError> {
        let column = match filter {
            RowFilter::BatchIds(_) => "batch_id",
            RowFilter::RecordIds(_) => "record_id",
            RowFilter::Keys(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for chunk in filter.chunks(READ_CHUNK) {
            let ids = match chunk {
                RowFilter::BatchIds(v) | RowFilter::RecordIds(v) => v,
                RowFilter::Keys(_) => Vec::new(),
            };
            let sql = format!(
                "SELECT record_id, batch_id, stage, reason FROM weir_dead_letters WHERE {column} IN ({})",
                vec!["?"; ids.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await.map_err(classify)? {
                out.push(DeadLetterRow {
                    record_id: r.get(0),
                    batch_id: r.get(1),
                    stage: r.get(2),
                    reason: r.get(3),
                });
            }
        }
        Ok(out)
    }

    async fn rows_without_batch(&self, spec: &TableSpec) -> Result<usize, SinkError> {
        let sql = format!(
            r#"SELECT COUNT(*) FROM {} WHERE "_weir_batch_id" NOT IN (SELECT batch_id FROM weir_batches)"#,
            quote(&spec.name)
        );
        let n: i64 = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?
            .get(0);
        Ok(n as usize)
    }
}

/// A timestamp as this sink stores it ([`format_timestamp_us`]), in µs since the epoch (0 when unreadable).
pub(super) fn stored_us(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}
