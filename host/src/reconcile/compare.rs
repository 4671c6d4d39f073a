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
type KeyedRow = (usize, String, Vec<String>);
/// One object's rule run: its index in the group, the rule, the batch id and the records.
type RuleJob = (usize, Arc<RulePlugin>, String, Vec<SourceRecord>);

/// What the sink holds for a group of objects, canonicalized once.
#[derive(Default)]
struct Held {
    /// Per table, stored rows by canonical key.
    by_key: Vec<RowsByKey>,
    /// Stored rows by record id: (table, key).
    by_record: HashMap<String, Vec<(usize, Vec<String>)>>,
    /// Stored rows by batch id.
    by_batch: HashMap<String, Vec<KeyedRow>>,
    /// Dead letters by record id: (stage, reason).
    dead: HashMap<String, (String, String)>,
}

/// How one RAW record was accounted for.
struct Accounted {
    class: RecordClass,
    /// Rows found per table: (table, count).
    rows_found: Vec<(usize, usize)>,
    diffs: Vec<Difference>,
}

/// Runs the rules of a group of objects and compares the outcomes with the sink.
pub(super) async fn compare_group(
    run: &Run<'_>,
    mode: Mode,
    group: &mut [ObjectWork],
    report: &mut Report,
    missing_rules: &mut HashSet<String>,
) -> Result<(), ReconcileError> {
    // The rules run while the sink is read.
    let rule_runs = spawn_rule_runs(run, rule_jobs(run, group, missing_rules).await?);
    let mut held = read_held(run, group).await?;
    let results = rule_runs
        .await
        .map_err(|e| ReconcileError::Rule(format!("rule run: {e}")))?;
    for (i, outcomes) in results {
        group[i].outcomes = Some(outcomes);
    }
    read_replacements(run, group, &mut held).await?;
    let shadow = mode == Mode::Shadow;
    for work in group.iter() {
        account_object(run, shadow, work, &held, report);
    }
    Ok(())
}

/// Expected outcomes come from the shadow rule, or each batch's recorded rule.
async fn rule_jobs(
    run: &Run<'_>,
    group: &[ObjectWork],
    missing_rules: &mut HashSet<String>,
) -> Result<Vec<RuleJob>, ReconcileError> {
    let mut jobs = Vec::new();
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
            let records = work.lines.iter().map(source_record).collect();
            jobs.push((i, rule, batch_id, records));
        }
    }
    Ok(jobs)
}

/// Runs the jobs on every core, off the async runtime; objects run in parallel.
fn spawn_rule_runs(
    run: &Run<'_>,
    jobs: Vec<RuleJob>,
) -> tokio::task::JoinHandle<Vec<(usize, Vec<RecordOutcome>)>> {
    let tables = run.tables.to_vec();
    let max_rows = run.max_rows;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let instances = run.rule_instances;
    tokio::task::spawn_blocking(move || {
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
    })
}

/// The filters that select what the sink holds for a group: its ledger batches, and the records of
/// objects no ledger batch covers.
fn group_filters(group: &[ObjectWork]) -> Vec<RowFilter> {
    let batch_ids: Vec<String> = group
        .iter()
        .flat_map(|w| w.ledger.iter().map(|l| l.batch_id.clone()))
        .collect();
    let loose_ids: Vec<String> = group
        .iter()
        .filter(|w| w.ledger.is_empty())
        .flat_map(|w| w.lines.iter().map(|l| l.id.clone()))
        .collect();
    let mut filters = Vec::new();
    if !batch_ids.is_empty() {
        filters.push(RowFilter::BatchIds(batch_ids));
    }
    if !loose_ids.is_empty() {
        filters.push(RowFilter::RecordIds(loose_ids));
    }
    filters
}

/// Reads the group's stored rows and dead letters, each row canonicalized once.
async fn read_held(run: &Run<'_>, group: &[ObjectWork]) -> Result<Held, ReconcileError> {
    let filters = group_filters(group);
    let mut held = Held::default();
    for (t, spec) in run.tables.iter().enumerate() {
        let mut map = HashMap::new();
        for filter in &filters {
            for row in run.reader.stored_rows(spec, filter).await? {
                let cells = stored_canonical(spec, &row);
                let key = key_of(spec, &cells);
                held.by_record
                    .entry(row.record_id.clone())
                    .or_default()
                    .push((t, key.clone()));
                held.by_batch.entry(row.batch_id).or_default().push((
                    t,
                    row.record_id.clone(),
                    key.clone(),
                ));
                map.insert(key, (row.record_id, cells));
            }
        }
        held.by_key.push(map);
    }
    for filter in &filters {
        for d in run.reader.dead_letters(filter).await? {
            held.dead.insert(d.record_id, (d.stage, d.reason));
        }
    }
    Ok(held)
}

/// Rows expected but not found under their batch: reads the rows that hold their keys now (a later
/// record with the same key replaced them).
async fn read_replacements(
    run: &Run<'_>,
    group: &[ObjectWork],
    held: &mut Held,
) -> Result<(), ReconcileError> {
    let mut absent: Vec<Vec<Vec<String>>> = vec![Vec::new(); run.tables.len()];
    for outcome in group.iter().filter_map(|w| w.outcomes.as_ref()).flatten() {
        if let RecordOutcome::Emit(rows) = outcome {
            for row in rows {
                let spec = &run.tables[row.table];
                let key = key_of(spec, &expected_canonical(spec, row));
                if !held.by_key[row.table].contains_key(&key) {
                    absent[row.table].push(key);
                }
            }
        }
    }
    for (t, keys) in absent.into_iter().enumerate() {
        if !keys.is_empty() {
            let spec = &run.tables[t];
            for row in run.reader.stored_rows(spec, &RowFilter::Keys(keys)).await? {
                let cells = stored_canonical(spec, &row);
                held.by_key[t].insert(key_of(spec, &cells), (row.record_id, cells));
            }
        }
    }
    Ok(())
}

/// Accounts for every record of one object, and for rows of its batches that no record of it gives.
fn account_object(
    run: &Run<'_>,
    shadow: bool,
    work: &ObjectWork,
    held: &Held,
    report: &mut Report,
) {
    let (source, partition) = match work.ledger.last() {
        Some(l) => (l.source.clone(), l.partition.clone()),
        None => partition_of_key(&work.key),
    };
    let pname = format!("{source}/{partition}");
    if let Some(l) = work.ledger.last() {
        let p = report.partitions.entry(pname.clone()).or_default();
        if let Ok(reasons) = serde_json::from_str::<BTreeMap<String, usize>>(&l.drop_reasons)
            && !shadow
        {
            for (r, n) in reasons {
                *p.dropped.entry(r).or_default() += n;
            }
        }
        note_orphans(run, work, held, report, &pname);
    }
    for (i, line) in work.lines.iter().enumerate() {
        let outcome = work.outcomes.as_ref().map(|o| &o[i]);
        let accounted = account_record(run, shadow, work, line, outcome, held);
        if accounted.class == RecordClass::Rejected
            && !shadow
            && let Some((_, reason)) = held.dead.get(&line.id)
        {
            let p = report.partitions.entry(pname.clone()).or_default();
            *p.rejected.entry(category(reason)).or_default() += 1;
        }
        tally(run, shadow, report, &pname, line, outcome, accounted);
    }
}

/// Rows of this object's batches whose record is not in the object.
fn note_orphans(run: &Run<'_>, work: &ObjectWork, held: &Held, report: &mut Report, pname: &str) {
    let record_ids: HashSet<&str> = work.lines.iter().map(|l| l.id.as_str()).collect();
    let batches: HashSet<&str> = work.ledger.iter().map(|l| l.batch_id.as_str()).collect();
    for batch in batches {
        for (t, record_id, key) in held.by_batch.get(batch).into_iter().flatten() {
            if !record_ids.contains(record_id.as_str()) {
                report
                    .partitions
                    .entry(pname.to_string())
                    .or_default()
                    .orphan_rows += 1;
                let d = Difference::row(record_id, &run.tables[*t], key, DifferenceKind::Orphan);
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

/// Classifies one record and lists how its rows differ from what the tables hold.
fn account_record(
    run: &Run<'_>,
    shadow: bool,
    work: &ObjectWork,
    line: &RawLine,
    outcome: Option<&RecordOutcome>,
    held: &Held,
) -> Accounted {
    let mut a = Accounted {
        class: RecordClass::Unaccounted,
        rows_found: Vec::new(),
        diffs: Vec::new(),
    };
    let mut expected_keys: HashSet<(usize, Vec<String>)> = HashSet::new();
    match (outcome, held.dead.get(&line.id)) {
        (_, Some(_)) if !shadow => a.class = RecordClass::Rejected,
        (Some(RecordOutcome::Emit(rows)), _) => {
            let mut all_there = true;
            for row in rows {
                let spec = &run.tables[row.table];
                let want = expected_canonical(spec, row);
                let key = key_of(spec, &want);
                expected_keys.insert((row.table, key.clone()));
                match held.by_key[row.table].get(&key) {
                    Some((rid, have)) if rid == &line.id => {
                        a.rows_found.push((row.table, 1));
                        a.diffs
                            .extend(drifted_cells(spec, shadow, &line.id, &key, &want, have));
                    }
                    Some(_) => {} // a later record with the same key replaced it
                    None => {
                        all_there = false;
                        let kind = if shadow {
                            DifferenceKind::Added
                        } else {
                            DifferenceKind::Missing
                        };
                        a.diffs.push(Difference::row(&line.id, spec, &key, kind));
                    }
                }
            }
            if !work.ledger.is_empty() || !rows.is_empty() && all_there || shadow {
                a.class = RecordClass::Emitted;
            }
        }
        (Some(RecordOutcome::Drop(_)), _) if !work.ledger.is_empty() || shadow => {
            a.class = RecordClass::Dropped
        }
        (Some(RecordOutcome::Reject(..)), _) if shadow => a.class = RecordClass::Rejected,
        // No rule to re-derive it: accounted by what the tables hold (a record of an object no
        // ledger batch covers may have been loaded by another batch after a crash).
        (None, None) if held.by_record.contains_key(line.id.as_str()) => {
            a.class = RecordClass::Emitted
        }
        (None, None) if !work.ledger.is_empty() => a.class = RecordClass::Dropped,
        _ => {}
    }
    // Rows the tables hold for this record that the rule does not give.
    if let (Some(_), Some(rows)) = (outcome, held.by_record.get(line.id.as_str()))
        && (a.class != RecordClass::Rejected || shadow)
    {
        for (t, key) in rows {
            if !expected_keys.contains(&(*t, key.clone())) {
                let kind = if shadow {
                    DifferenceKind::Removed
                } else {
                    DifferenceKind::Unexpected
                };
                a.diffs
                    .push(Difference::row(&line.id, &run.tables[*t], key, kind));
            }
        }
    }
    a
}

/// The cells of a stored row that differ from the expected row.
fn drifted_cells(
    spec: &TableSpec,
    shadow: bool,
    record_id: &str,
    key: &[String],
    want: &[Option<String>],
    have: &[Option<String>],
) -> Vec<Difference> {
    let kind = if shadow {
        DifferenceKind::Changed
    } else {
        DifferenceKind::Drift
    };
    let text = |c: &Option<String>| Some(c.clone().unwrap_or_else(|| "null".into()));
    spec.columns
        .iter()
        .zip(want.iter().zip(have))
        .filter(|(_, (w, h))| w != h)
        .map(|((name, _), (w, h))| Difference {
            record_id: record_id.to_string(),
            table: spec.name.clone(),
            key: key_text(spec, key),
            kind,
            column: Some(name.clone()),
            expected: text(w),
            actual: text(h),
        })
        .collect()
}

/// Adds one accounted record to its partition's and hour's counts, and notes its differences.
fn tally(
    run: &Run<'_>,
    shadow: bool,
    report: &mut Report,
    pname: &str,
    line: &RawLine,
    outcome: Option<&RecordOutcome>,
    a: Accounted,
) {
    let p = report.partitions.entry(pname.to_string()).or_default();
    p.raw_records += 1;
    for (t, n) in a.rows_found {
        *p.rows.entry(run.tables[t].name.clone()).or_default() += n;
    }
    let h = report
        .hours
        .entry(hour_label(line.arrived_at_ms))
        .or_default();
    match a.class {
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
        RecordClass::Unaccounted => {
            p.unaccounted += 1;
            h.unaccounted += 1;
            if report.unaccounted_records.len() < run.max_differences {
                report.unaccounted_records.push(line.id.clone());
            }
        }
    }
    for d in a.diffs {
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
