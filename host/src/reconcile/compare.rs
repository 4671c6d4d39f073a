//! Comparing the expected outcomes of a group of RAW objects with what the sink holds.

use super::*;

/// Counts a difference, and lists it while fewer than `max` are listed.
pub(super) fn note(
    differences: &mut Vec<Difference>,
    counts: &mut BTreeMap<String, usize>,
    max: usize,
    d: Difference,
) {
    *counts.entry(d.kind.as_str().to_string()).or_default() += 1;
    if differences.len() < max {
        differences.push(d);
    }
}

/// Where a RAW record ended up: exactly one class per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordClass {
    /// Its rows are in the final tables (or were replaced by a later record with the same key).
    Emitted,
    /// The ledger recorded its batch and the rule drops it.
    Dropped,
    /// A dead letter names it.
    Rejected,
    /// No recorded outcome.
    Unaccounted,
}

/// One table's stored rows by canonical key: the record id and the canonical cells.
type RowsByKey = HashMap<Vec<String>, (String, Vec<Option<String>>)>;
/// A stored row of a batch: its table, its record id and its canonical key.
type KeyedRow<'a> = (usize, &'a str, Vec<String>);

/// Runs the rules of a group of objects and compares the outcomes with the sink.
pub(super) async fn compare_group(
    run: &Run<'_>,
    mode: Mode,
    group: &mut [ObjectWork],
    report: &mut Report,
    missing_rules: &mut HashSet<String>,
) -> Result<(), ReconcileError> {
    // Expected outcomes: the shadow rule, or each batch's recorded rule; objects run in parallel.
    let mut jobs: Vec<(usize, Arc<RulePlugin>, String, Vec<SourceRecord>)> = Vec::new();
    for (i, work) in group.iter().enumerate() {
        let rule = match (&run.shadow, work.ledger.last()) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(l)) => {
                let r = run.rules.rule(&l.rule_digest).await?;
                if r.is_none() {
                    missing_rules.insert(l.rule_digest.clone());
                }
                r
            }
            (None, None) => None,
        };
        if let Some(rule) = rule {
            let batch_id = work
                .ledger
                .last()
                .map(|l| l.batch_id.clone())
                .unwrap_or_else(|| work.key.clone());
            jobs.push((
                i,
                rule,
                batch_id,
                work.lines.iter().map(source_record).collect(),
            ));
        }
    }
    let tables = run.tables.to_vec();
    let max_rows = run.max_rows;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let instances = run.rule_instances;
    // The rules run while the sink is read.
    let rule_runs = tokio::task::spawn_blocking(move || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads.min(jobs.len()).max(1) {
                scope.spawn(|| {
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((i, rule, batch_id, records)) = jobs.get(j) else {
                            break;
                        };
                        let outcomes = crate::rules::validate::run_checked(
                            rule, batch_id, records, &tables, max_rows, instances,
                        );
                        done.lock().expect("not poisoned").push((*i, outcomes));
                    }
                });
            }
        });
        done.into_inner().expect("not poisoned")
    });

    // What the sink holds for these batches, and for records of objects no ledger batch covers.
    let batch_ids: Vec<String> = group
        .iter()
        .flat_map(|w| w.ledger.iter().map(|l| l.batch_id.clone()))
        .collect();
    let loose_ids: Vec<String> = group
        .iter()
        .filter(|w| w.ledger.is_empty())
        .flat_map(|w| w.lines.iter().map(|l| l.id.clone()))
        .collect();
    let mut by_key: Vec<RowsByKey> = Vec::new();
    let mut by_record: HashMap<&str, Vec<(usize, Vec<String>)>> = HashMap::new();
    let mut stored: Vec<Vec<StoredRow>> = Vec::new();
    for spec in run.tables {
        let mut rows = Vec::new();
        if !batch_ids.is_empty() {
            rows.extend(
                run.reader
                    .stored_rows(spec, &RowFilter::BatchIds(batch_ids.clone()))
                    .await?,
            );
        }
        if !loose_ids.is_empty() {
            rows.extend(
                run.reader
                    .stored_rows(spec, &RowFilter::RecordIds(loose_ids.clone()))
                    .await?,
            );
        }
        stored.push(rows);
    }
    // Each stored row canonicalized once: its key, and its rows by record and by batch.
    let mut by_batch: HashMap<&str, Vec<KeyedRow<'_>>> = HashMap::new();
    for (t, spec) in run.tables.iter().enumerate() {
        let mut map = HashMap::with_capacity(stored[t].len());
        for row in &stored[t] {
            let cells = stored_canonical(spec, row);
            let key = key_of(spec, &cells);
            by_record
                .entry(row.record_id.as_str())
                .or_default()
                .push((t, key.clone()));
            by_batch.entry(row.batch_id.as_str()).or_default().push((
                t,
                row.record_id.as_str(),
                key.clone(),
            ));
            map.insert(key, (row.record_id.clone(), cells));
        }
        by_key.push(map);
    }
    let mut dead: HashMap<String, (String, String)> = HashMap::new();
    if !batch_ids.is_empty() {
        for d in run
            .reader
            .dead_letters(&RowFilter::BatchIds(batch_ids.clone()))
            .await?
        {
            dead.insert(d.record_id, (d.stage, d.reason));
        }
    }
    if !loose_ids.is_empty() {
        for d in run
            .reader
            .dead_letters(&RowFilter::RecordIds(loose_ids.clone()))
            .await?
        {
            dead.insert(d.record_id, (d.stage, d.reason));
        }
    }

    let results = rule_runs
        .await
        .map_err(|e| ReconcileError::Rule(format!("rule run: {e}")))?;
    for (i, outcomes) in results {
        group[i].outcomes = Some(outcomes);
    }

    // Rows expected but not found under their batch: replaced by another record's row with the same key?
    let mut absent: Vec<Vec<Vec<String>>> = vec![Vec::new(); run.tables.len()];
    for work in group.iter() {
        let Some(outcomes) = &work.outcomes else {
            continue;
        };
        for o in outcomes {
            if let RecordOutcome::Emit(rows) = o {
                for row in rows {
                    let spec = &run.tables[row.table];
                    let key = key_of(spec, &expected_canonical(spec, row));
                    if !by_key[row.table].contains_key(&key) {
                        absent[row.table].push(key);
                    }
                }
            }
        }
    }
    for (t, keys) in absent.into_iter().enumerate() {
        if !keys.is_empty() {
            let spec = &run.tables[t];
            for row in run.reader.stored_rows(spec, &RowFilter::Keys(keys)).await? {
                let cells = stored_canonical(spec, &row);
                by_key[t].insert(key_of(spec, &cells), (row.record_id, cells));
            }
        }
    }

    let shadow = mode == Mode::Shadow;
    for work in group.iter() {
        let (source, partition) = match work.ledger.last() {
            Some(l) => (l.source.clone(), l.partition.clone()),
            None => partition_of_key(&work.key),
        };
        let pname = format!("{source}/{partition}");
        let record_ids: HashSet<&str> = work.lines.iter().map(|l| l.id.as_str()).collect();
        let batches: HashSet<&str> = work.ledger.iter().map(|l| l.batch_id.as_str()).collect();
        if let Some(l) = work.ledger.last() {
            let p = report.partitions.entry(pname.clone()).or_default();
            if let Ok(reasons) = serde_json::from_str::<BTreeMap<String, usize>>(&l.drop_reasons)
                && !shadow
            {
                for (r, n) in reasons {
                    *p.dropped.entry(r).or_default() += n;
                }
            }
            // Rows of this object's batches whose record is not in the object.
            for batch in &batches {
                for (t, record_id, key) in by_batch.get(batch).into_iter().flatten() {
                    if !record_ids.contains(record_id) {
                        p.orphan_rows += 1;
                        let d = Difference::row(
                            record_id,
                            &run.tables[*t],
                            key,
                            DifferenceKind::Orphan,
                        );
                        note(
                            &mut report.differences,
                            &mut report.difference_counts,
                            run.max_differences,
                            d,
                        );
                    }
                }
            }
        }
        for (i, line) in work.lines.iter().enumerate() {
            let hour = hour_label(line.arrived_at_ms);
            let outcome = work.outcomes.as_ref().map(|o| &o[i]);
            let dead_letter = dead.get(&line.id);
            let mut class = RecordClass::Unaccounted;
            let mut rows_found: Vec<(usize, usize)> = Vec::new(); // (table, count)
            let mut diffs: Vec<Difference> = Vec::new();
            let mut expected_keys: HashSet<(usize, Vec<String>)> = HashSet::new();
            match (outcome, dead_letter) {
                (_, Some((_, reason))) if !shadow => {
                    class = RecordClass::Rejected;
                    let p = report.partitions.entry(pname.clone()).or_default();
                    *p.rejected.entry(category(reason)).or_default() += 1;
                }
                (Some(RecordOutcome::Emit(rows)), _) => {
                    let mut all_there = true;
                    for row in rows {
                        let spec = &run.tables[row.table];
                        let want = expected_canonical(spec, row);
                        let key = key_of(spec, &want);
                        expected_keys.insert((row.table, key.clone()));
                        match by_key[row.table].get(&key) {
                            Some((rid, have)) if rid == &line.id => {
                                rows_found.push((row.table, 1));
                                for (c, ((name, _), (w, h))) in
                                    spec.columns.iter().zip(want.iter().zip(have)).enumerate()
                                {
                                    let _ = c;
                                    if w != h {
                                        diffs.push(Difference {
                                            record_id: line.id.clone(),
                                            table: spec.name.clone(),
                                            key: key_text(spec, &key),
                                            kind: if shadow {
                                                DifferenceKind::Changed
                                            } else {
                                                DifferenceKind::Drift
                                            },
                                            column: Some(name.clone()),
                                            expected: Some(
                                                w.clone().unwrap_or_else(|| "null".into()),
                                            ),
                                            actual: Some(
                                                h.clone().unwrap_or_else(|| "null".into()),
                                            ),
                                        });
                                    }
                                }
                            }
                            Some(_) => {} // a later record with the same key replaced it
                            None => {
                                all_there = false;
                                diffs.push(Difference::row(
                                    &line.id,
                                    spec,
                                    &key,
                                    if shadow {
                                        DifferenceKind::Added
                                    } else {
                                        DifferenceKind::Missing
                                    },
                                ));
                            }
                        }
                    }
                    if !work.ledger.is_empty() || !rows.is_empty() && all_there || shadow {
                        class = RecordClass::Emitted;
                    }
                }
                (Some(RecordOutcome::Drop(_)), _) if !work.ledger.is_empty() || shadow => {
                    class = RecordClass::Dropped
                }
                (Some(RecordOutcome::Reject(..)), _) if shadow => class = RecordClass::Rejected,
                // No rule to re-derive it: accounted by what the tables hold (a record of an object no
                // ledger batch covers may have been loaded by another batch after a crash).
                (None, None) if by_record.contains_key(line.id.as_str()) => {
                    class = RecordClass::Emitted
                }
                (None, None) if !work.ledger.is_empty() => class = RecordClass::Dropped,
                _ => {}
            }
            // Rows the tables hold for this record that the rule does not give.
            if let (Some(_), Some(held)) = (outcome, by_record.get(line.id.as_str()))
                && (class != RecordClass::Rejected || shadow)
            {
                for (t, key) in held {
                    if !expected_keys.contains(&(*t, key.clone())) {
                        let spec = &run.tables[*t];
                        diffs.push(Difference::row(
                            &line.id,
                            spec,
                            key,
                            if shadow {
                                DifferenceKind::Removed
                            } else {
                                DifferenceKind::Unexpected
                            },
                        ));
                    }
                }
            }
            let p = report.partitions.entry(pname.clone()).or_default();
            p.raw_records += 1;
            for (t, n) in rows_found {
                *p.rows.entry(run.tables[t].name.clone()).or_default() += n;
            }
            let h = report.hours.entry(hour).or_default();
            match class {
                RecordClass::Emitted => {
                    p.emitted += 1;
                    h.emitted += 1;
                }
                RecordClass::Dropped => {
                    h.dropped += 1;
                    if shadow && let Some(RecordOutcome::Drop(r)) = outcome {
                        *p.dropped.entry(r.clone()).or_default() += 1;
                    }
                }
                RecordClass::Rejected => {
                    h.rejected += 1;
                    if shadow && let Some(RecordOutcome::Reject(_, r)) = outcome {
                        *p.rejected.entry(category(r)).or_default() += 1;
                    }
                }
                _ => {
                    p.unaccounted += 1;
                    h.unaccounted += 1;
                    if report.unaccounted_records.len() < run.max_differences {
                        report.unaccounted_records.push(line.id.clone());
                    }
                }
            }
            for d in diffs {
                match d.kind {
                    DifferenceKind::Drift | DifferenceKind::Changed => p.drifted_fields += 1,
                    DifferenceKind::Missing | DifferenceKind::Added => p.missing_rows += 1,
                    _ => p.unexpected_rows += 1,
                }
                note(
                    &mut report.differences,
                    &mut report.difference_counts,
                    run.max_differences,
                    d,
                );
            }
        }
    }
    Ok(())
}

/// Ledger batches by RAW object, oldest first.
pub(super) async fn ledger_by_object(
    sink: &dyn SinkReader,
) -> Result<HashMap<String, Vec<LedgerRow>>, ReconcileError> {
    let mut map: HashMap<String, Vec<LedgerRow>> = HashMap::new();
    for row in sink.ledger().await? {
        map.entry(object_of(&row.raw_ref).to_string())
            .or_default()
            .push(row);
    }
    Ok(map)
}
