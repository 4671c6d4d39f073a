//! Reading back the ledger, final rows and dead letters (reconcile, replay).
use super::*;

#[async_trait]
impl SinkReader for RedshiftSink {
    async fn activity(&self, source: &str) -> Result<Vec<PartitionActivity>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT \"partition\", CAST(count(*) AS BIGINT), CAST(COALESCE(sum(records_in), 0) AS BIGINT), \
                     CAST(EXTRACT(EPOCH FROM max(loaded_at)) * 1000000 AS BIGINT) \
                     FROM {s}.weir_batches WHERE source = $1 GROUP BY \"partition\" ORDER BY \"partition\""
                ),
                vec![(source.to_string(), Type::VARCHAR)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| PartitionActivity {
                partition: r.get(0),
                batches: r.get(1),
                records: r.get(2),
                last_commit_us: r.get(3),
            })
            .collect())
    }

    async fn dead_letter_entries(
        &self,
        since_us: i64,
        reason: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT record_id, batch_id, raw_ref, stage, reason, payload_preview, \
                     CAST(EXTRACT(EPOCH FROM at) * 1000000 AS BIGINT) FROM {s}.weir_dead_letters \
                     WHERE at >= CAST($1 AS TIMESTAMPTZ) AND ($2 = '' OR POSITION($2 IN reason) > 0) \
                     ORDER BY at, record_id LIMIT {limit}"
                ),
                vec![
                    (sql_timestamp(since_us), Type::VARCHAR),
                    (reason.unwrap_or("").to_string(), Type::VARCHAR),
                ],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetterEntry {
                record_id: r.get(0),
                batch_id: r.get(1),
                raw_ref: r.get(2),
                stage: r.get(3),
                reason: r.get(4),
                payload_preview: r.get(5),
                at_us: r.get(6),
            })
            .collect())
    }

    async fn dead_letter_counts(
        &self,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetterCount>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT stage, reason, CAST(count(*) AS BIGINT) AS n FROM {s}.weir_dead_letters \
                     WHERE at >= CAST($1 AS TIMESTAMPTZ) GROUP BY stage, reason \
                     ORDER BY n DESC, stage, reason LIMIT {limit}"
                ),
                vec![(sql_timestamp(since_us), Type::VARCHAR)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetterCount {
                stage: r.get(0),
                reason: r.get(1),
                count: r.get(2),
            })
            .collect())
    }

    async fn ledger(&self) -> Result<Vec<LedgerRow>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT batch_id, source, \"partition\", raw_ref, rule_digest, drop_reasons \
                     FROM {s}.weir_batches ORDER BY loaded_at, batch_id"
                ),
                Vec::new(),
            )
            .await?;
        Ok(rows
            .into_iter()
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
        // Every column read back as text; SUPER through JSON_SERIALIZE.
        let columns: Vec<String> = spec
            .columns
            .iter()
            .map(|(c, ty)| match ty {
                ColumnType::Super => format!("JSON_SERIALIZE({})", quote(c)),
                _ => format!("CAST({} AS VARCHAR(65535))", quote(c)),
            })
            .collect();
        let select = format!(
            "SELECT {}, \"_weir_record_id\", \"_weir_batch_id\" FROM {}.{}",
            columns.join(", "),
            quote(&self.schema),
            quote(&spec.name)
        );
        let n = spec.columns.len();
        let mut out = Vec::new();
        for chunk in filter.chunks(READ_CHUNK) {
            let (condition, params) = read_condition(spec, &chunk);
            for r in self
                .read(format!("{select} WHERE {condition}"), params)
                .await?
            {
                out.push(StoredRow {
                    cells: (0..n).map(|i| r.get::<_, Option<String>>(i)).collect(),
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
        let s = quote(&self.schema);
        let mut out = Vec::new();
        for chunk in filter.chunks(READ_CHUNK) {
            let ids = match &chunk {
                RowFilter::BatchIds(v) | RowFilter::RecordIds(v) => v.clone(),
                RowFilter::Keys(_) => Vec::new(),
            };
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let params = ids.into_iter().map(|v| (v, Type::VARCHAR)).collect();
            let sql = format!(
                "SELECT record_id, batch_id, stage, reason FROM {s}.weir_dead_letters WHERE {column} IN ({})",
                marks.join(", ")
            );
            for r in self.read(sql, params).await? {
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
        let s = quote(&self.schema);
        let rows = self
            .read(
                format!(
                    "SELECT COUNT(*) FROM {s}.{} WHERE \"_weir_batch_id\" NOT IN (SELECT batch_id FROM {s}.weir_batches)",
                    quote(&spec.name)
                ),
                Vec::new(),
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as usize)
    }
}
