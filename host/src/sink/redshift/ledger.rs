//! weir's own rows in a load transaction — the ledger row of every batch and the dead letters of its rejected
//! records — written many per statement: on Redshift every statement is a round trip through the leader node,
//! and a merge of many batches would otherwise send one or two per batch and per rejected record.

use super::*;

/// The dead letters of every rejected record of `loads`, replacing earlier ones of the same records (one
/// `DELETE … IN` and multi-row `INSERT`s); a record rejected twice (an SQS redelivery in two batches) keeps
/// its later dead letter. A redrive also deletes the dead letters of its records that now emit or drop.
pub(super) async fn write_dead_letters(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    loads: &[&Load<'_>],
    loaded_at: &str,
) -> Result<(), SinkError> {
    let s = quote(schema);
    let mut letters: Vec<[String; 7]> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    // A redrive's records that now emit or drop lose their dead letter.
    let mut cleared: Vec<String> = Vec::new();
    for load in loads {
        let batch = load.batch;
        for ((record, outcome), raw_ref) in
            batch.records.iter().zip(load.outcomes).zip(load.raw_refs)
        {
            let RecordOutcome::Reject(stage, reason) = outcome else {
                if load.redrive.is_some() {
                    cleared.push(record.id.clone());
                }
                continue;
            };
            let letter = [
                record.id.clone(),
                batch.id.clone(),
                raw_ref.clone(),
                stage.as_str().to_string(),
                clean_text(reason, 65_535),
                payload_preview(&record.payload),
                loaded_at.to_string(),
            ];
            match at.get(&record.id) {
                Some(&i) => letters[i] = letter,
                None => {
                    at.insert(record.id.clone(), letters.len());
                    letters.push(letter);
                }
            }
        }
    }
    let replaced: Vec<&String> = letters.iter().map(|l| &l[0]).chain(&cleared).collect();
    for chunk in replaced.chunks(READ_CHUNK) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let params: Vec<(&(dyn ToSql + Sync), Type)> = chunk
            .iter()
            .map(|id| (*id as &(dyn ToSql + Sync), Type::VARCHAR))
            .collect();
        tx.query_typed(
            traced(&format!(
                "DELETE FROM {s}.weir_dead_letters WHERE record_id IN ({})",
                marks.join(", ")
            )),
            &params,
        )
        .await
        .map_err(classify_conflict)?;
    }
    let rows: Vec<Vec<Bind>> = letters
        .into_iter()
        .map(|l| l.into_iter().map(|v| Bind::Text(Some(v))).collect())
        .collect();
    insert_rows(
        tx,
        &format!(
            "{s}.weir_dead_letters (record_id, batch_id, raw_ref, stage, reason, payload_preview, at)"
        ),
        &[false, false, false, false, false, false, true],
        &rows,
    )
    .await
}

/// One ledger row per load: its positions, RAW object, rule and counts (multi-row `INSERT`s).
pub(super) async fn write_ledgers(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    loads: &[&Load<'_>],
    loaded_at: &str,
) -> Result<(), SinkError> {
    let s = quote(schema);
    let rows: Vec<Vec<Bind>> = loads
        .iter()
        .map(|load| {
            let batch = load.batch;
            let c = load.counts();
            let text = |v: &str| Bind::Text(Some(v.to_string()));
            let n = |v: usize| Bind::Int(Some(v as i64));
            vec![
                text(&batch.id),
                text(&batch.source),
                text(&batch.partition),
                text(batch.first_position()),
                text(batch.last_position()),
                text(load.raw_object()),
                text(load.rule_digest),
                n(c.records_in),
                n(c.emitted),
                n(c.dropped),
                n(c.rejected),
                n(c.rows_out),
                Bind::Text(Some(c.drop_reasons_json())),
                text(loaded_at),
            ]
        })
        .collect();
    let mut timestamp = [false; 14];
    timestamp[13] = true;
    insert_rows(
        tx,
        &format!(
            "{s}.weir_batches (batch_id, source, \"partition\", first_position, last_position, raw_ref, \
             rule_digest, records_in, emitted, dropped, rejected, rows_out, drop_reasons, loaded_at)"
        ),
        &timestamp,
        &rows,
    )
    .await
}

/// `INSERT INTO {target} VALUES (…), (…)` of `rows` (each one row's binds, `timestamp` marking the columns
/// cast to `TIMESTAMPTZ`), in statements under the bind, size and row limits of the stage fill.
async fn insert_rows(
    tx: &tokio_postgres::Transaction<'_>,
    target: &str,
    timestamp: &[bool],
    rows: &[Vec<Bind>],
) -> Result<(), SinkError> {
    let width = timestamp.len().max(1);
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len()
            && end - start < MAX_ROWS_PER_INSERT
            && (end - start + 1) * width <= MAX_BINDS
            && (end == start || bytes < MAX_STATEMENT_BYTES)
        {
            bytes += rows[end].iter().map(Bind::size).sum::<usize>();
            end += 1;
        }
        let values: Vec<String> = (0..end - start)
            .map(|r| {
                let cells: Vec<String> = timestamp
                    .iter()
                    .enumerate()
                    .map(|(c, ts)| {
                        let n = r * width + c + 1;
                        if *ts {
                            format!("CAST(${n} AS TIMESTAMPTZ)")
                        } else {
                            format!("${n}")
                        }
                    })
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let params: Vec<(&(dyn ToSql + Sync), Type)> = rows[start..end]
            .iter()
            .flat_map(|row| row.iter().map(Bind::param))
            .collect();
        tx.query_typed(
            traced(&format!(
                "INSERT INTO {target} VALUES {}",
                values.join(", ")
            )),
            &params,
        )
        .await
        .map_err(classify_conflict)?;
        start = end;
    }
    Ok(())
}
