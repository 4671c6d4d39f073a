//! Grouped commits on PostgreSQL and Redshift: the registry of staged batches and the loader lease in the
//! database's own tables (`[coordinator] kind = "sink"`), and the loader's one transaction over many batches.

use super::*;
use crate::sink::group::{
    Fate, GroupOutcome, GroupWarehouse, LOADER, LoaderLease, Registration, Registry, epoch_text,
    held_epoch,
};

impl RedshiftSink {
    /// Creates the registry's tables (`weir_staged`, and `weir_checkpoints` for the loader lease) when this
    /// database is the coordinator.
    pub async fn prepare_registry(&self) -> Result<(), SinkError> {
        let s = quote(&self.schema);
        self.run_simple(&format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_staged (batch_id VARCHAR(1024) NOT NULL, source VARCHAR(256) NOT NULL, \
             \"partition\" VARCHAR(256) NOT NULL, staged_key VARCHAR(1024) NOT NULL, bytes BIGINT NOT NULL, \
             registered_us BIGINT NOT NULL, fate VARCHAR(16) NOT NULL, PRIMARY KEY (batch_id))"
        ))
        .await?;
        for ddl in weir_tables_ddl(&self.schema).into_iter().take(1) {
            self.run_simple(&ddl).await?; // weir_checkpoints, which holds the loader lease
        }
        self.ensure_checkpoint_row(LOADER, "lease").await?;
        Ok(())
    }

    /// Creates the loader fence's row in the warehouse (the merge transaction moves it).
    pub async fn prepare_fence(&self) -> Result<(), SinkError> {
        self.ensure_checkpoint_row(LOADER, "fence").await?;
        Ok(())
    }

    /// Runs one statement outside a transaction.
    async fn run_simple(&self, statement: &str) -> Result<(), SinkError> {
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
                conn.client
                    .batch_execute(traced(statement))
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result)
    }

    /// The merge, in one transaction; `None` when fenced. Data errors come back as [`SinkError::Data`].
    async fn merge_group_tx(
        &self,
        conn: &mut Conn,
        loads: &[Load<'_>],
        row_files: &[&[Option<String>]],
        epoch: i64,
        manifests: &mut Vec<String>,
    ) -> Result<Option<Vec<Fate>>, SinkError> {
        let specs = self
            .tables
            .get()
            .ok_or_else(|| SinkError::Permanent("merge before prepare".into()))?;
        let sqls: Vec<TableSql> = specs.iter().map(|s| self.table_sql(s)).collect();
        ensure_stages(conn, &sqls).await?;
        let copy = self.group_copy(loads, row_files, specs.len());
        if copy.is_some() {
            ensure_copy_stages(conn, &sqls).await?;
        }
        let s = quote(&self.schema);
        let loaded_at_us = crate::record::wall_clock_us();
        let loaded_at = sql_timestamp(loaded_at_us);
        let tx = conn.client.transaction().await.map_err(classify)?;
        if self.redshift {
            tx.batch_execute(traced(&format!("LOCK TABLE {s}.weir_batches")))
                .await
                .map_err(classify)?;
        }
        // The fence: a loader whose epoch is older than one that committed writes nothing.
        let fence = epoch_text(epoch);
        let fenced = tx
            .execute_typed(
                traced(&format!(
                    "UPDATE {s}.weir_checkpoints SET position = $1 WHERE source = $2 AND \"partition\" = 'fence' \
                     AND position <= $1"
                )),
                &[(&fence, Type::VARCHAR), (&LOADER, Type::VARCHAR)],
            )
            .await
            .map_err(classify)?
            == 0;
        if fenced {
            tx.rollback().await.map_err(classify)?;
            return Ok(None);
        }
        let fates = self.decide(&tx, loads, &loaded_at).await?;
        let accepted: Vec<&Load<'_>> = loads
            .iter()
            .zip(&fates)
            .filter(|(_, f)| f.1)
            .map(|(l, _)| l)
            .collect();
        let per_load: Vec<_> = accepted
            .iter()
            .map(|l| rows_by_table(l, specs.len(), None))
            .collect();
        let mut per_table: Vec<Vec<(&CheckedRow, Lineage<'_>)>> = vec![Vec::new(); specs.len()];
        for (load, tables) in accepted.iter().zip(per_load) {
            for (t, rows) in tables.into_iter().enumerate() {
                per_table[t].extend(with_lineage(rows, load));
            }
        }
        if !self.redshift {
            lock_targets(&tx, &sqls, &per_table).await?;
        }
        if let Some(copy) = &copy {
            let ordinals: Vec<&str> = loads
                .iter()
                .zip(&fates)
                .filter(|(_, f)| f.1)
                .map(|(l, _)| l.batch.id.as_str())
                .collect();
            fill_group_order(&tx, &ordinals).await?;
            let files: Vec<&[Option<String>]> = row_files
                .iter()
                .zip(&fates)
                .filter(|(_, f)| f.1)
                .map(|(files, _)| *files)
                .collect();
            for (t, rows) in per_table.iter().enumerate() {
                if !rows.is_empty() {
                    let urls: Vec<&str> = files.iter().filter_map(|f| f[t].as_deref()).collect();
                    let target = (copy, &urls[..], &ordinals[..], epoch);
                    let manifest = self
                        .copy_group_table(&tx, &sqls[t], target, &loaded_at)
                        .await?;
                    manifests.push(manifest);
                    self.merge_stage(&tx, &mut conn.analyzed, &sqls[t]).await?;
                }
            }
        } else {
            for (t, rows) in per_table.into_iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let fill = (loaded_at_us, self.binary_fill());
                fill_stage(&tx, &mut conn.prepared, &sqls[t], rows, fill).await?;
                self.merge_stage(&tx, &mut conn.analyzed, &sqls[t]).await?;
            }
        }
        write_dead_letters(&tx, &self.schema, &accepted, &loaded_at).await?;
        write_ledgers(&tx, &self.schema, &accepted, &loaded_at).await?;
        tx.commit().await.map_err(classify)?;
        Ok(Some(fates.into_iter().map(|f| f.0).collect()))
    }

    /// Per load, in order: its fate, and whether this transaction merges it. Already in the ledger: merged
    /// before. Ordered: merged now when its checkpoint compare-and-set moves, else refused. Unordered: merged
    /// now.
    async fn decide(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        loads: &[Load<'_>],
        loaded_at: &str,
    ) -> Result<Vec<(Fate, bool)>, SinkError> {
        let s = quote(&self.schema);
        let ids: Vec<&str> = loads.iter().map(|l| l.batch.id.as_str()).collect();
        let mut in_ledger: HashSet<String> = HashSet::new();
        for chunk in ids.chunks(READ_CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let params: Vec<(&(dyn ToSql + Sync), Type)> = chunk
                .iter()
                .map(|id| (id as &(dyn ToSql + Sync), Type::VARCHAR))
                .collect();
            let rows = tx
                .query_typed(
                    traced(&format!(
                        "SELECT batch_id FROM {s}.weir_batches WHERE batch_id IN ({})",
                        marks.join(", ")
                    )),
                    &params,
                )
                .await
                .map_err(classify)?;
            in_ledger.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
        let mut fates: Vec<Option<(Fate, bool)>> = vec![None; loads.len()];
        // Per partition, its ordered batches still to decide, in registration order.
        let mut chains: Vec<((&str, &str), Vec<usize>)> = Vec::new();
        for (i, load) in loads.iter().enumerate() {
            let b = load.batch;
            if in_ledger.contains(&b.id) {
                fates[i] = Some((Fate::Merged, false));
            } else if !b.ordered {
                in_ledger.insert(b.id.clone()); // a batch registered twice merges once
                fates[i] = Some((Fate::Merged, true));
            } else {
                let key = (b.source.as_str(), b.partition.as_str());
                match chains.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, chain)) => chain.push(i),
                    None => chains.push((key, vec![i])),
                }
            }
        }
        for (_, chain) in chains {
            for (i, accepted) in self.decide_chain(tx, loads, &chain, loaded_at).await? {
                fates[i] = Some(if accepted {
                    (Fate::Merged, true)
                } else {
                    (Fate::Refused, false)
                });
            }
        }
        Ok(fates
            .into_iter()
            .map(|f| f.expect("every load decided"))
            .collect())
    }

    /// The fates of one partition's batches (`chain`, indexes into `loads` in registration order): when they
    /// follow each other (each one's previous position is the last one's last), one compare-and-set moves the
    /// checkpoint over all of them — one statement per partition instead of one per batch; otherwise, or when
    /// it does not move, each batch's own compare-and-set in order decides it, as per-batch commits would.
    async fn decide_chain(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        loads: &[Load<'_>],
        chain: &[usize],
        loaded_at: &str,
    ) -> Result<Vec<(usize, bool)>, SinkError> {
        let batches: Vec<&crate::record::Batch> = chain.iter().map(|i| loads[*i].batch).collect();
        let follows = batches
            .windows(2)
            .all(|w| w[1].prev_position == w[0].last_position());
        if follows && batches.len() > 1 {
            let (first, last) = (batches[0], batches[batches.len() - 1]);
            let moved = compare_and_set(
                tx,
                (&self.schema, !self.redshift),
                (&first.source, &first.partition),
                &first.prev_position,
                last.last_position(),
                loaded_at,
            )
            .await?;
            if moved {
                if let Some(b) = batches.iter().rev().find(|b| b.fingerprint.is_some()) {
                    record_fingerprint(tx, &self.schema, b, loaded_at).await?;
                }
                return Ok(chain.iter().map(|i| (*i, true)).collect());
            }
        }
        let mut decided = Vec::with_capacity(chain.len());
        for (i, b) in chain.iter().zip(batches) {
            let moved = move_checkpoint(tx, &self.schema, !self.redshift, b, loaded_at).await?;
            decided.push((*i, moved));
        }
        Ok(decided)
    }
}

#[async_trait]
impl GroupWarehouse for RedshiftSink {
    async fn merge_group(
        &self,
        loads: &[Load<'_>],
        row_files: &[&[Option<String>]],
        epoch: i64,
    ) -> Result<GroupOutcome, SinkError> {
        self.merge_group_checked(loads, row_files, epoch).await
    }

    fn loads_row_files(&self) -> bool {
        cfg!(feature = "s3") && matches!(self.stage_fill, StageFillConfig::Copy { .. })
    }

    #[cfg(feature = "s3")]
    async fn stage_rows(&self, load: &Load<'_>) -> Result<Vec<Option<String>>, SinkError> {
        let StageFillConfig::Copy { bucket, prefix, .. } = &self.stage_fill else {
            return Ok(Vec::new());
        };
        let specs = self
            .tables
            .get()
            .ok_or_else(|| SinkError::Permanent("staging before prepare".into()))?;
        let s3 = self.aws.s3_from(self.sdk().await);
        let span = tracing::info_span!("s3.copy_rows", batch = %load.batch.id);
        write_copy_rows(&s3, bucket, prefix, load, specs)
            .instrument(span)
            .await
    }

    #[cfg(feature = "s3")]
    async fn drop_rows(&self, files: &[String]) {
        if files.is_empty() {
            return;
        }
        let s3 = self.aws.s3_from(self.sdk().await);
        let mut by_bucket: HashMap<&str, Vec<String>> = HashMap::new();
        for (bucket, key) in files.iter().filter_map(|url| split_s3_url(url)) {
            by_bucket.entry(bucket).or_default().push(key.to_string());
        }
        for (bucket, keys) in by_bucket {
            if let Err(e) = crate::aws::delete_objects(&s3, bucket, &keys).await {
                tracing::debug!(error = %e, %bucket, "row files not deleted");
            }
        }
    }
}

/// The COPY stage fill of a grouped merge: bucket, key prefix, IAM role and region of the `COPY`.
struct GroupCopy {
    bucket: String,
    prefix: String,
    role: String,
    region: String,
}

/// Creates this session's copy stages and the merge-order table it has not created yet.
async fn ensure_copy_stages(conn: &mut Conn, sqls: &[TableSql]) -> Result<(), SinkError> {
    let mut ddl: Vec<(String, String)> = sqls
        .iter()
        .map(|sql| (sql.copy_stage.clone(), sql.create_copy_stage()))
        .collect();
    ddl.push((
        GROUP_ORDER.to_string(),
        format!(
            "CREATE TEMP TABLE {GROUP_ORDER} (batch_id VARCHAR(1024) NOT NULL, ordinal BIGINT NOT NULL)"
        ),
    ));
    for (name, statement) in ddl {
        if !conn.staged.contains(&name) {
            conn.client
                .batch_execute(traced(&statement))
                .await
                .map_err(classify)?;
            conn.staged.insert(name);
        }
    }
    Ok(())
}

/// The temp table of a grouped merge's order: accepted batch id → its place in the merge (later wins a key).
const GROUP_ORDER: &str = "weir_group_order";

/// Empties the merge-order table and fills it with `ids` in order (multi-row INSERTs).
async fn fill_group_order(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[&str],
) -> Result<(), SinkError> {
    tx.batch_execute(traced(&format!("DELETE FROM {GROUP_ORDER}")))
        .await
        .map_err(classify)?;
    let ordinals: Vec<i64> = (0..ids.len() as i64).collect();
    for (chunk, numbers) in ids
        .chunks(MAX_ROWS_PER_INSERT)
        .zip(ordinals.chunks(MAX_ROWS_PER_INSERT))
    {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(2 * chunk.len());
        for (id, n) in chunk.iter().zip(numbers) {
            params.push((id as &(dyn ToSql + Sync), Type::VARCHAR));
            params.push((n as &(dyn ToSql + Sync), Type::INT8));
        }
        tx.query_typed(
            traced(&format!(
                "INSERT INTO {GROUP_ORDER} (batch_id, ordinal) VALUES {}",
                values.join(", ")
            )),
            &params,
        )
        .await
        .map_err(classify)?;
    }
    Ok(())
}

impl RedshiftSink {
    /// The COPY fill for this merge, when the sink fills stages by `COPY` and every batch came with its row
    /// files; otherwise the merge sends the rows itself (multi-row INSERTs).
    fn group_copy(
        &self,
        loads: &[Load<'_>],
        row_files: &[&[Option<String>]],
        tables: usize,
    ) -> Option<GroupCopy> {
        let StageFillConfig::Copy {
            bucket,
            prefix,
            iam_role,
            region,
        } = &self.stage_fill
        else {
            return None;
        };
        if row_files.len() != loads.len() || row_files.iter().any(|f| f.len() != tables) {
            return None;
        }
        // A table's file exactly where the batch has rows for it (the files come from the same outcomes).
        let consistent = loads.iter().zip(row_files).all(|(load, files)| {
            rows_by_table(load, tables, None)
                .iter()
                .zip(files.iter())
                .all(|(rows, file)| rows.is_empty() == file.is_none())
        });
        if !consistent {
            tracing::warn!("row files do not match their batches' rows; merging with INSERTs");
            return None;
        }
        Some(GroupCopy {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            role: iam_role.clone(),
            region: region
                .clone()
                .or_else(|| self.aws.region.clone())
                .unwrap_or_else(|| "us-east-1".into()),
        })
    }

    /// One table of a grouped merge by COPY: one manifest of the accepted batches' files (`urls`; `ids` are the
    /// batches in merge order), `COPY` into the copy stage, then the latest row per key into the stage (by
    /// version, then merge order). Returns the manifest's URL.
    async fn copy_group_table(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: &TableSql,
        (copy, urls, ids, epoch): (&GroupCopy, &[&str], &[&str], i64),
        loaded_at: &str,
    ) -> Result<String, SinkError> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(ids.join("\n").as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let table = sql
            .copy_stage
            .trim_matches('"')
            .trim_start_matches("weir_copy_");
        let key = format!("{}merges/{epoch}-{hex}/{table}.manifest", copy.prefix);
        self.put_manifest(&copy.bucket, &key, urls).await?;
        let manifest = format!("s3://{}/{key}", copy.bucket);
        tx.batch_execute(traced(&format!("DELETE FROM {}", sql.copy_stage)))
            .await
            .map_err(classify)?;
        let statement = copy_stage_sql(
            &sql.copy_stage,
            &sql.columns,
            &manifest,
            &copy.role,
            &copy.region,
        );
        tx.batch_execute(traced(&statement))
            .await
            .map_err(classify)?;
        tx.batch_execute(traced(&format!("DELETE FROM {}", sql.stage)))
            .await
            .map_err(classify)?;
        let loaded_at = loaded_at.to_string();
        tx.execute_typed(
            traced(&sql.rank_into_stage(GROUP_ORDER)),
            &[(&loaded_at, Type::VARCHAR)],
        )
        .await
        .map_err(classify)?;
        Ok(manifest)
    }

    #[cfg(feature = "s3")]
    async fn put_manifest(&self, bucket: &str, key: &str, urls: &[&str]) -> Result<(), SinkError> {
        let s3 = self.aws.s3_from(self.sdk().await);
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(copy_manifest(urls).into_bytes().into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error("S3 PutObject", e))
    }

    #[cfg(not(feature = "s3"))]
    async fn put_manifest(&self, _: &str, _: &str, _: &[&str]) -> Result<(), SinkError> {
        Err(SinkError::Permanent(crate::config::not_compiled(
            "sink.stage_fill",
            "copy",
            "s3",
        )))
    }
}

impl RedshiftSink {
    /// The grouped merge; records whose rows the database refuses are found load by load.
    async fn merge_group_checked(
        &self,
        loads: &[Load<'_>],
        row_files: &[&[Option<String>]],
        epoch: i64,
    ) -> Result<GroupOutcome, SinkError> {
        let span = tracing::info_span!("redshift.merge_group", batches = loads.len(), epoch);
        let mut guard = self.session().instrument(span.clone()).await?;
        let conn = guard.as_mut().expect("connected");
        let mut manifests = Vec::new();
        let result = self
            .bounded("grouped merge", async {
                let merged = self
                    .merge_group_tx(conn, loads, row_files, epoch, &mut manifests)
                    .instrument(span.clone())
                    .await;
                match merged {
                    Ok(Some(fates)) => Ok(GroupOutcome::Decided(fates)),
                    Ok(None) => Ok(GroupOutcome::Fenced),
                    Err(SinkError::Data(message)) if !row_files.is_empty() => {
                        tracing::warn!(parent: &span, error = %message, "the database refused a value among rows loaded from files; merging again with the rows");
                        Ok(GroupOutcome::NeedsRows(message))
                    }
                    Err(SinkError::Data(message)) => {
                        tracing::warn!(parent: &span, error = %message, "the database refused a value; isolating the records");
                        let mut guilty = Vec::new();
                        for (l, load) in loads.iter().enumerate() {
                            for (r, reason) in self.isolate(conn, load).await? {
                                guilty.push((l, r, reason));
                            }
                        }
                        if guilty.is_empty() {
                            return Err(SinkError::Permanent(format!(
                                "{message} (not reproducible record by record)"
                            )));
                        }
                        Ok(GroupOutcome::Refused(guilty))
                    }
                    Err(e) => Err(e),
                }
            })
            .await;
        // A manifest serves one attempt (another writes it again under the same key).
        self.drop_rows(&manifests).await;
        Self::settle(&mut guard, result)
    }

    /// Runs one statement with text parameters; returns the rows.
    pub(super) async fn query_text(
        &self,
        what: &'static str,
        statement: String,
        params: Vec<String>,
    ) -> Result<Vec<tokio_postgres::Row>, SinkError> {
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded(what, async {
                let binds: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .map(|p| (p as &(dyn ToSql + Sync), Type::VARCHAR))
                    .collect();
                conn.client
                    .query_typed(traced(&statement), &binds)
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result)
    }
}

#[async_trait]
impl Registry for RedshiftSink {
    async fn register(&self, entry: &Registration) -> Result<(), SinkError> {
        self.register_many(std::slice::from_ref(entry)).await
    }

    /// One transaction for all of them: on Redshift every write transaction is a commit in the cluster's queue.
    async fn register_many(&self, entries: &[Registration]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let s = quote(&self.schema);
        let statement = format!(
            "INSERT INTO {s}.weir_staged (batch_id, source, \"partition\", staged_key, bytes, registered_us, fate) \
             SELECT $1, $2, $3, $4, CAST($5 AS BIGINT), CAST($6 AS BIGINT), 'pending' \
             WHERE NOT EXISTS (SELECT 1 FROM {s}.weir_staged WHERE batch_id = $1)"
        );
        // A refused batch registered again is a new attempt (see `Registry::register`): pending again, staged
        // anew, in registration order from now.
        let again = format!(
            "UPDATE {s}.weir_staged SET fate = 'pending', staged_key = $4, bytes = CAST($5 AS BIGINT), \
             registered_us = CAST($6 AS BIGINT) WHERE batch_id = $1 AND fate = 'refused' \
             AND source = $2 AND \"partition\" = $3"
        );
        let rows: Vec<[String; 6]> = entries
            .iter()
            .map(|entry| {
                [
                    entry.batch_id.clone(),
                    entry.source.clone(),
                    entry.partition.clone(),
                    entry.key.clone(),
                    entry.bytes.to_string(),
                    crate::sink::group::registration_us().to_string(),
                ]
            })
            .collect();
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("registration", async {
                let tx = conn.client.transaction().await.map_err(classify)?;
                for row in &rows {
                    let binds: Vec<(&(dyn ToSql + Sync), Type)> = row
                        .iter()
                        .map(|p| (p as &(dyn ToSql + Sync), Type::VARCHAR))
                        .collect();
                    // Two workers registering the same batch at once (a partition re-read by its new owner)
                    // both pass NOT EXISTS; the second insert then fails on the key: a conflict, whose retry
                    // finds the batch registered.
                    tx.query_typed(traced(&again), &binds)
                        .await
                        .map_err(classify_conflict)?;
                    tx.query_typed(traced(&statement), &binds)
                        .await
                        .map_err(classify_conflict)?;
                }
                tx.commit().await.map_err(classify_conflict)
            })
            .await;
        Self::settle(&mut guard, result)
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Registration>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .query_text(
                "registry read",
                format!(
                    "SELECT batch_id, source, \"partition\", staged_key, bytes FROM {s}.weir_staged \
                     WHERE fate = 'pending' ORDER BY registered_us, batch_id LIMIT {}",
                    limit.max(1)
                ),
                Vec::new(),
            )
            .await?;
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

    async fn pending_work(&self, limit: usize) -> Result<(usize, u64), SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .query_text(
                "registry read",
                format!(
                    "SELECT CAST(count(*) AS BIGINT), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM \
                     (SELECT bytes FROM {s}.weir_staged WHERE fate = 'pending' LIMIT {}) AS waiting",
                    limit.max(1)
                ),
                Vec::new(),
            )
            .await?;
        Ok(rows.first().map_or((0, 0), |r| {
            (
                r.get::<_, i64>(0).max(0) as usize,
                r.get::<_, i64>(1).max(0) as u64,
            )
        }))
    }

    async fn settle(&self, fates: &[(String, Fate)]) -> Result<(), SinkError> {
        let s = quote(&self.schema);
        for fate in [Fate::Merged, Fate::Refused] {
            let ids: Vec<String> = fates
                .iter()
                .filter(|(_, f)| *f == fate)
                .map(|(id, _)| id.clone())
                .collect();
            for chunk in ids.chunks(READ_CHUNK) {
                let marks: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
                let mut params = vec![fate.as_str().to_string()];
                params.extend(chunk.iter().cloned());
                self.query_text(
                    "registry update",
                    format!(
                        "UPDATE {s}.weir_staged SET fate = $1 WHERE fate = 'pending' AND batch_id IN ({})",
                        marks.join(", ")
                    ),
                    params,
                )
                .await?;
            }
        }
        // Bounded bookkeeping: settled entries older than a day go, looked for at most every ten minutes (on
        // Redshift every write transaction costs a commit).
        static LAST_CLEANUP_US: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let now = crate::record::wall_clock_us();
        let last = LAST_CLEANUP_US.load(std::sync::atomic::Ordering::Relaxed);
        if now - last < 600_000_000 {
            return Ok(());
        }
        LAST_CLEANUP_US.store(now, std::sync::atomic::Ordering::Relaxed);
        let day_ago = now - 86_400_000_000;
        self.query_text(
            "registry cleanup",
            format!(
                "DELETE FROM {s}.weir_staged WHERE fate <> 'pending' AND registered_us < CAST($1 AS BIGINT)"
            ),
            vec![day_ago.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn fates(&self, batch_ids: &[String]) -> Result<HashMap<String, Fate>, SinkError> {
        let s = quote(&self.schema);
        let mut out = HashMap::new();
        for chunk in batch_ids.chunks(READ_CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let rows = self
                .query_text(
                    "registry read",
                    format!(
                        "SELECT batch_id, fate FROM {s}.weir_staged WHERE batch_id IN ({})",
                        marks.join(", ")
                    ),
                    chunk.to_vec(),
                )
                .await?;
            for r in rows {
                out.insert(r.get::<_, String>(0), Fate::parse(&r.get::<_, String>(1)));
            }
        }
        Ok(out)
    }

    async fn loader(&self) -> Result<Option<LoaderLease>, SinkError> {
        let s = quote(&self.schema);
        let rows = self
            .query_text(
                "loader lease",
                format!(
                    "SELECT COALESCE(owner, ''), position, \
                     CAST(COALESCE(EXTRACT(EPOCH FROM lease_expires_at) * 1000000, 0) AS BIGINT) \
                     FROM {s}.weir_checkpoints WHERE source = $1 AND \"partition\" = 'lease'"
                ),
                vec![LOADER.to_string()],
            )
            .await?;
        Ok(rows.first().map(|r| LoaderLease {
            owner: r.get(0),
            epoch: r.get(1),
            expires_us: r.get(2),
        }))
    }

    async fn claim_loader(
        &self,
        owner: &str,
        now_us: i64,
        expires_us: i64,
    ) -> Result<Option<i64>, SinkError> {
        let s = quote(&self.schema);
        // A new holder starts a new epoch (its claim time); the holder renewing keeps its own.
        let claimed = self
            .query_text(
                "loader lease",
                format!(
                    "UPDATE {s}.weir_checkpoints SET position = CASE WHEN owner = $1 THEN position ELSE $2 END, \
                     owner = $1, lease_expires_at = CAST($3 AS TIMESTAMPTZ), updated_at = CAST($4 AS TIMESTAMPTZ) \
                     WHERE source = $5 AND \"partition\" = 'lease' AND (owner IS NULL OR owner = '' OR owner = $1 \
                     OR lease_expires_at IS NULL OR lease_expires_at < CAST($4 AS TIMESTAMPTZ))"
                ),
                vec![
                    owner.to_string(),
                    epoch_text(now_us),
                    sql_timestamp(expires_us),
                    sql_timestamp(now_us),
                    LOADER.to_string(),
                ],
            )
            .await;
        match claimed {
            Ok(_) => {}
            // Two workers claiming at once on Redshift: one is refused (serializable); it is not the loader.
            Err(SinkError::Transient(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        let rows = self
            .query_text(
                "loader lease",
                format!(
                    "SELECT COALESCE(owner, ''), position FROM {s}.weir_checkpoints \
                     WHERE source = $1 AND \"partition\" = 'lease'"
                ),
                vec![LOADER.to_string()],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| held_epoch(r.get(0), r.get(1), owner)))
    }

    async fn release_loader(&self, owner: &str) -> Result<(), SinkError> {
        self.release(LOADER, "lease", owner).await
    }
}
