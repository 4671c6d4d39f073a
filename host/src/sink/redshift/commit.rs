//! One batch in one transaction: stage, version-guarded merge, ledger, dead letters and the checkpoint's
//! compare-and-set; record-by-record isolation when a value is refused.

use super::*;

/// The COPY fast path's stage files, written before the transaction: per table, its manifest (if the
/// table has rows), and the IAM role and region of the `COPY`.
type CopyStage = (Vec<Option<String>>, String, String);

impl RedshiftSink {
    /// Commits one batch in one transaction: stages, guarded merge, dead letters, ledger and checkpoint.
    pub(super) async fn commit_batch(
        &self,
        conn: &mut Conn,
        load: &Load<'_>,
    ) -> Result<Commit, SinkError> {
        let batch = load.batch;
        let specs = self
            .tables
            .get()
            .ok_or_else(|| SinkError::Permanent("commit before prepare".into()))?;
        let sqls: Vec<TableSql> = specs.iter().map(|s| self.table_sql(s)).collect();
        ensure_stages(conn, &sqls).await?;
        let loaded_at = sql_timestamp(load.loaded_at_us);
        let copy = self.write_copy_files(load, specs).await?;
        let tx = conn.client.transaction().await.map_err(classify)?;
        if self.redshift {
            // Every commit writes the ledger, so Redshift's table-level write locks already make commits take
            // turns there. Taking that lock first, before anything is read, means the transaction's
            // serializable snapshot starts after the previous commit: concurrent workers wait instead of
            // failing with 1023. Only readers of weir's own ledger wait; the final tables are not locked.
            let s = quote(&self.schema);
            tx.batch_execute(traced(&format!("LOCK TABLE {s}.weir_batches")))
                .await
                .map_err(classify)?;
        }
        if let Some(settled) = self.guard(&tx, batch, &loaded_at).await? {
            tx.rollback().await.map_err(classify)?;
            self.in_doubt.settled(&batch.id);
            return Ok(settled);
        }
        let per_table = rows_by_table(load, specs.len(), None);
        if !self.redshift {
            lock_targets(&tx, &sqls, &per_table).await?;
        }
        for (t, rows) in per_table.into_iter().enumerate() {
            if rows.is_empty() {
                continue; // nothing to merge: the table is not written, so not locked
            }
            match &copy {
                None => {
                    let rows = with_lineage(rows, load);
                    let fill = (load.loaded_at_us, self.binary_fill());
                    fill_stage(&tx, &mut conn.prepared, &sqls[t], rows, fill).await?
                }
                Some((manifests, role, region)) => {
                    copy_into_stage(&tx, &sqls[t], manifests[t].as_deref(), role, region).await?
                }
            }
            if let (Some(redrive), Some(guard)) =
                (load.redrive, sqls[t].redrive_guard(&self.schema))
            {
                tx.query_typed(
                    traced(&guard),
                    &[
                        (&redrive.original_batch, Type::VARCHAR),
                        (&redrive.run_pattern, Type::VARCHAR),
                    ],
                )
                .await
                .map_err(classify_conflict)?;
            }
            self.merge_stage(&tx, &mut conn.analyzed, &sqls[t]).await?;
        }
        write_dead_letters(&tx, &self.schema, &[load], &loaded_at).await?;
        write_ledgers(&tx, &self.schema, &[load], &loaded_at).await?;
        // Until COMMIT is answered, nobody knows whether it took effect (a lost reply, a timeout).
        self.in_doubt.sending(&batch.id);
        tx.commit().await.map_err(classify)?;
        self.in_doubt.settled(&batch.id);
        Ok(Commit::Committed)
    }

    /// The COPY fast path writes its stage files (and manifests) before the transaction starts.
    async fn write_copy_files(
        &self,
        load: &Load<'_>,
        specs: &[TableSpec],
    ) -> Result<Option<CopyStage>, SinkError> {
        match &self.stage_fill {
            StageFillConfig::Auto | StageFillConfig::Insert | StageFillConfig::Binary => Ok(None),
            #[cfg(not(feature = "s3"))]
            StageFillConfig::Copy { .. } => {
                let _ = (load, specs);
                Err(SinkError::Permanent(crate::config::not_compiled(
                    "sink.stage_fill",
                    "copy",
                    "s3",
                )))
            }
            #[cfg(feature = "s3")]
            StageFillConfig::Copy {
                bucket,
                prefix,
                iam_role,
                region,
            } => {
                let s3 = self.aws.s3_from(self.sdk().await);
                let manifests = write_copy_stage(&s3, bucket, prefix, load, specs).await?;
                let region = region
                    .clone()
                    .or_else(|| self.aws.region.clone())
                    .unwrap_or_else(|| "us-east-1".into());
                Ok(Some((manifests, iam_role.clone(), region)))
            }
        }
    }

    /// Whether this batch may commit: `None` to go on, or the outcome to report after rolling back (the
    /// batch had already committed, or another worker owns the partition now).
    async fn guard(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        batch: &crate::record::Batch,
        loaded_at: &str,
    ) -> Result<Option<Commit>, SinkError> {
        let s = quote(&self.schema);
        let already = format!("SELECT 1 FROM {s}.weir_batches WHERE batch_id = $1");
        if !batch.ordered {
            // Unordered sources have no checkpoint: the ledger row of this very delivery is the guard.
            let seen = tx
                .query_typed(traced(&already), &[(&batch.id, Type::VARCHAR)])
                .await
                .map_err(classify)?;
            return Ok((!seen.is_empty()).then_some(Commit::Committed));
        }
        let moved = move_checkpoint(tx, &self.schema, !self.redshift, batch, loaded_at).await?;
        if moved {
            return Ok(None);
        }
        // Either another worker moved the checkpoint, or this very batch committed and the reply to its
        // COMMIT was lost: a COMMIT this sink sent without an answer, and the batch's own ledger row, tell
        // them apart.
        let in_doubt = self.in_doubt.contains(&batch.id);
        let ours = tx
            .query_typed(traced(&already), &[(&batch.id, Type::VARCHAR)])
            .await
            .map_err(classify)?;
        if in_doubt && !ours.is_empty() {
            tracing::warn!(batch = %batch.id, "the batch had already committed (its COMMIT reply was lost); not loading it again");
            return Ok(Some(Commit::Committed));
        }
        Ok(Some(Commit::NotOwner))
    }

    /// Merges a filled stage into its target: version-guarded delete + insert, or `MERGE`.
    pub(super) async fn merge_stage(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        analyzed: &mut HashSet<String>,
        sql: &TableSql,
    ) -> Result<(), SinkError> {
        // PostgreSQL plans the merge join from the stage's statistics: without them it assumes a large
        // stage and scans the whole target for every batch. (Redshift has no indexes to choose.)
        //
        // Even so, the planner took a hash join over the whole target for most batches of a 1,000,000-order
        // load (193 sequential scans of `orders` for 200 batches, when stages were still emptied by DELETE),
        // costing the target's pages as uncached. A batch is small beside its target: the merge probes the
        // key's index. `SET LOCAL` lasts to the end of the transaction, whose other statements join nothing.
        //
        // The stage is analyzed once per session, after its first fill: ANALYZE of a 5,000-row stage cost
        // as much as its fill (a third of a batch's time in the database). The statistics it leaves (widths,
        // distinct values as a fraction of the rows) hold for every later fill, and the stage's size is
        // read afresh for every plan, because `TRUNCATE` empties it (its pages are its rows). Should this
        // transaction roll back, its statistics go with it; the plan then rests on the stage's size and the
        // join methods allowed here, which leave only the index probe.
        if !self.redshift {
            let analyze = if analyzed.insert(sql.stage.clone()) {
                format!("ANALYZE {}; ", sql.stage)
            } else {
                String::new()
            };
            tx.batch_execute(traced(&format!(
                "{analyze}SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
            )))
            .await
            .map_err(classify)?;
        }
        // Redshift's MERGE takes no extra conditions: a versioned table always merges by delete + insert.
        let statements = match self.merge {
            MergeMode::Merge if sql.version.is_none() => vec![sql.merge_statement()],
            _ => sql.merge().to_vec(),
        };
        for statement in statements {
            tx.batch_execute(traced(&statement))
                .await
                .map_err(classify_conflict)?;
        }
        Ok(())
    }
}

/// The checkpoint compare-and-set of one batch: its partition's checkpoint moves from the batch's previous
/// position to its last, or nothing happens; whether it moved.
pub(super) async fn move_checkpoint(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    postgres: bool,
    batch: &crate::record::Batch,
    loaded_at: &str,
) -> Result<bool, SinkError> {
    let moved = compare_and_set(
        tx,
        (schema, postgres),
        (&batch.source, &batch.partition),
        &batch.prev_position,
        batch.last_position(),
        loaded_at,
    )
    .await?;
    if moved {
        record_fingerprint(tx, schema, batch, loaded_at).await?;
    }
    Ok(moved)
}

/// Records the batch's input fingerprint, if it carries one, beside its partition's checkpoint. It goes with
/// the partition's first checkpoint of a run (see `Batch::fingerprint`); the checkpoint's compare-and-set has
/// already decided that this transaction owns the partition.
pub(super) async fn record_fingerprint(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    batch: &crate::record::Batch,
    loaded_at: &str,
) -> Result<(), SinkError> {
    let Some(fingerprint) = &batch.fingerprint else {
        return Ok(());
    };
    let row = crate::source::fingerprint_partition(&batch.partition);
    let s = quote(schema);
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (fingerprint, Type::VARCHAR),
        (&loaded_at, Type::VARCHAR),
        (&batch.source, Type::VARCHAR),
        (&row, Type::VARCHAR),
    ];
    let updated = tx
        .execute_typed(
            traced(&format!(
                "UPDATE {s}.weir_checkpoints SET position = $1, updated_at = CAST($2 AS TIMESTAMPTZ) \
                 WHERE source = $3 AND \"partition\" = $4"
            )),
            &params,
        )
        .await
        .map_err(classify)?;
    if updated == 0 {
        insert_checkpoint(tx, schema, &params).await?;
    }
    Ok(())
}

/// The compare-and-set of one checkpoint row, `expected` → `new`. A partition without a row has the empty
/// checkpoint: its first move inserts the row (so reading a checkpoint never writes). Of concurrent first
/// moves one inserts and the others are refused: on Redshift they take turns (the ledger's lock is taken
/// first; where they do not, as on redshift-sim's serializable snapshots, the duplicate key is a conflict,
/// retried); on the `postgres` kind a move from empty first locks the checkpoints against other writers
/// (readers go on), so the later one finds the row inserted and is refused.
pub(super) async fn compare_and_set(
    client: &tokio_postgres::Transaction<'_>,
    (schema, postgres): (&str, bool),
    (source, partition): (&str, &str),
    expected: &str,
    new: &str,
    now: &str,
) -> Result<bool, SinkError> {
    let s = quote(schema);
    if postgres && expected.is_empty() {
        client
            .batch_execute(traced(&format!(
                "LOCK TABLE {s}.weir_checkpoints IN SHARE ROW EXCLUSIVE MODE"
            )))
            .await
            .map_err(classify)?;
    }
    let moved = client
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
        .map_err(classify)?;
    if moved == 1 {
        return Ok(true);
    }
    if !expected.is_empty() {
        return Ok(false);
    }
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&new, Type::VARCHAR),
        (&now, Type::VARCHAR),
        (&source, Type::VARCHAR),
        (&partition, Type::VARCHAR),
    ];
    Ok(insert_checkpoint(client, schema, &params).await? == 1)
}

/// Inserts a checkpoint row (`position`, `updated_at`, `source`, `partition`) unless one exists; the rows
/// inserted.
pub(super) async fn insert_checkpoint(
    client: &tokio_postgres::Transaction<'_>,
    schema: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<u64, SinkError> {
    let table = format!("{}.weir_checkpoints", quote(schema));
    client
        .execute_typed(
            traced(&format!(
                "INSERT INTO {table} (source, \"partition\", position, updated_at) \
                 SELECT $3, $4, $1, CAST($2 AS TIMESTAMPTZ) \
                 WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE source = $3 AND \"partition\" = $4)"
            )),
            params,
        )
        .await
        .map_err(classify_conflict)
}

/// Creates this session's temp stages it has not created yet.
pub(super) async fn ensure_stages(conn: &mut Conn, sqls: &[TableSql]) -> Result<(), SinkError> {
    for sql in sqls {
        if !conn.staged.contains(&sql.stage) {
            conn.client
                .batch_execute(traced(&sql.create_stage()))
                .await
                .map_err(classify)?;
            conn.staged.insert(sql.stage.clone());
        }
    }
    Ok(())
}

/// PostgreSQL: concurrent workers writing the same tables take turns per table, in name order, before
/// merging; readers are not blocked (SHARE ROW EXCLUSIVE conflicts only with writers). Without it a
/// second writer's `DELETE … USING` cannot see the first's uncommitted rows and its INSERT fails on the
/// key. Redshift already takes table-level write locks; its serialization failures are retried.
pub(super) async fn lock_targets<T>(
    tx: &tokio_postgres::Transaction<'_>,
    sqls: &[TableSql],
    per_table: &[Vec<T>],
) -> Result<(), SinkError> {
    let mut targets: Vec<&str> = per_table
        .iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(t, _)| sqls[t].target.as_str())
        .collect();
    targets.sort_unstable();
    if targets.is_empty() {
        return Ok(());
    }
    tx.batch_execute(traced(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        targets.join(", ")
    )))
    .await
    .map_err(classify)
}

/// Empties the stage and loads it with `COPY` from the table's manifest of S3 files.
async fn copy_into_stage(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &TableSql,
    manifest: Option<&str>,
    role: &str,
    region: &str,
) -> Result<(), SinkError> {
    tx.batch_execute(traced(&format!("DELETE FROM {}", sql.stage)))
        .await
        .map_err(classify)?;
    if let Some(manifest) = manifest {
        let statement = copy_stage_sql(&sql.stage, &sql.columns, manifest, role, region);
        tx.batch_execute(traced(&statement))
            .await
            .map_err(classify)?;
    }
    Ok(())
}

impl RedshiftSink {
    /// After a data error: finds the records whose rows the database refuses, by filling the stages with
    /// halves of the batch in transactions that are rolled back, down to single records.
    pub(super) async fn isolate(
        &self,
        conn: &mut Conn,
        load: &Load<'_>,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let specs = self.tables.get().expect("prepared");
        let sqls: Vec<TableSql> = specs.iter().map(|s| self.table_sql(s)).collect();
        let emitting: Vec<usize> = (0..load.outcomes.len())
            .filter(
                |i| matches!(load.outcomes[*i], RecordOutcome::Emit(ref rows) if !rows.is_empty()),
            )
            .collect();
        let mut guilty = Vec::new();
        let mut todo = vec![emitting];
        while let Some(set) = todo.pop() {
            if set.is_empty() {
                continue;
            }
            let tx = conn.client.transaction().await.map_err(classify)?;
            let mut failure = None;
            for (t, rows) in rows_by_table(load, specs.len(), Some(&set))
                .into_iter()
                .enumerate()
            {
                if rows.is_empty() {
                    continue;
                }
                // The stage and the merge too: a constraint of the target table (CHECK, a unique index
                // beside the key) refuses a row only when it is merged.
                let rows = with_lineage(rows, load);
                let fill = (load.loaded_at_us, self.binary_fill());
                let filled = fill_stage(&tx, &mut conn.prepared, &sqls[t], rows, fill).await;
                let merged = match filled {
                    Ok(()) => {
                        let mut merged = Ok(());
                        for statement in sqls[t].merge() {
                            merged = tx
                                .batch_execute(traced(&statement))
                                .await
                                .map_err(classify_conflict);
                            if merged.is_err() {
                                break;
                            }
                        }
                        merged
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = merged {
                    failure = Some((specs[t].name.clone(), e));
                    break;
                }
            }
            drop(tx); // rolled back
            match failure {
                None => {}
                Some((_, e)) if !matches!(e, SinkError::Data(_)) => return Err(e),
                Some((table, SinkError::Data(message))) if set.len() == 1 => {
                    guilty.push((
                        set[0],
                        format!("table {table}: the database refused the row: {message}"),
                    ));
                }
                Some(_) => {
                    let (a, b) = set.split_at(set.len() / 2);
                    todo.push(a.to_vec());
                    todo.push(b.to_vec());
                }
            }
        }
        guilty.sort();
        Ok(guilty)
    }
}

pub(super) async fn insert_chunk(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &mut Statements,
    sql: &TableSql,
    binds: &[Bind],
    rows: usize,
) -> Result<(), SinkError> {
    if rows == MAX_ROWS_PER_INSERT {
        // Every full chunk of a table has the same shape: prepare it once per session.
        let statement = match prepared.get(&sql.stage) {
            Some(s) => s.clone(),
            None => {
                let types: Vec<Type> = binds.iter().map(|b| b.param().1).collect();
                let s = tx
                    .prepare_typed(traced(&sql.insert_stage(rows)), &types)
                    .await
                    .map_err(classify)?;
                prepared.insert(sql.stage.clone(), s.clone());
                s
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b.param().0).collect();
        tx.execute(&statement, &params).await.map_err(classify)?;
        return Ok(());
    }
    let params: Vec<(&(dyn ToSql + Sync), Type)> = binds.iter().map(Bind::param).collect();
    tx.query_typed(traced(&sql.insert_stage(rows)), &params)
        .await
        .map_err(classify)?;
    Ok(())
}
