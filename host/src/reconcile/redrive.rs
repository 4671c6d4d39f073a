//! `weir dead-letters redrive`: dead-lettered records back through the current rule into the sink.

use super::replay::{commit_outcomes, run_rule, unordered_batch};
use super::*;
use crate::sink::DeadLetterEntry;

/// Most record ids a [`Redriven`] lists by name (the counts are always complete).
pub const REDRIVE_LISTED: usize = 20;

/// What a redrive did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Redriven {
    /// Dead letters selected.
    pub selected: usize,
    /// RAW objects read.
    pub objects: usize,
    /// Records that now emit rows; their dead letters are gone.
    pub emitted: usize,
    /// Records the rule now drops; their dead letters are gone.
    pub dropped: usize,
    /// Records rejected again, by reason category; their dead letters now give the new reason.
    pub rejected: BTreeMap<String, usize>,
    /// Rows not written because a record that committed after the redriven record's own batch holds their
    /// key (tables without a version column; see [`crate::sink::Redrive`]).
    pub rows_kept: usize,
    /// Dead letters whose record is no longer in RAW (or whose batch no ledger row knows): left as they are.
    pub not_found: usize,
    /// The first of those, by record id.
    pub not_found_ids: Vec<String>,
}

impl Redriven {
    /// Records rejected again.
    pub fn still_rejected(&self) -> usize {
        self.rejected.values().sum()
    }
}

/// Redrives `letters` through `rule`: per RAW object, its dead-lettered records become one unordered batch
/// (`redrive-{run}/{the object's first batch}`) committed with [`crate::sink::Redrive`] semantics — rows
/// upserted without reverting newer ones, a ledger row, dead letters removed for records that now emit or
/// drop and rewritten for those rejected again. Objects go in the order they first committed. With `dry`,
/// nothing is written. Running it again is harmless: a record that emitted has no dead letter left to
/// select, and one rejected again is rejected the same way.
pub async fn redrive(
    run: &Run<'_>,
    rule: Arc<RulePlugin>,
    retry: &crate::config::RetryConfig,
    letters: &[DeadLetterEntry],
    dry: bool,
) -> Result<Redriven, ReconcileError> {
    let mut done = Redriven {
        selected: letters.len(),
        ..Redriven::default()
    };
    let mut first: HashMap<String, (usize, LedgerRow)> = HashMap::new();
    for (i, row) in run.reader.ledger().await?.into_iter().enumerate() {
        first
            .entry(object_of(&row.raw_ref).to_string())
            .or_insert((i, row));
    }
    let mut by_object: HashMap<&str, Vec<&DeadLetterEntry>> = HashMap::new();
    for letter in letters {
        by_object
            .entry(object_of(&letter.raw_ref))
            .or_default()
            .push(letter);
    }
    let mut objects: Vec<(&str, Vec<&DeadLetterEntry>)> = Vec::new();
    for (object, wanted) in by_object {
        if first.contains_key(object) {
            objects.push((object, wanted));
        } else {
            not_found(&mut done, wanted.iter().map(|l| l.record_id.as_str()));
        }
    }
    objects.sort_by_key(|(object, _)| first[*object].0);
    let run_id = crate::record::wall_clock_us() / 1000;
    let run_pattern = format!("redrive-{run_id}/%");
    let bar = progress_bar(run.progress, objects.len() as u64);
    for (object, wanted) in objects {
        let ledger = &first[object].1;
        let lines = run.raw.get(object).await?;
        let wanted_ids: HashSet<&str> = wanted.iter().map(|l| l.record_id.as_str()).collect();
        let picked: Vec<(usize, &RawLine)> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| wanted_ids.contains(l.id.as_str()))
            .collect();
        let found: HashSet<&str> = picked.iter().map(|(_, l)| l.id.as_str()).collect();
        not_found(
            &mut done,
            wanted_ids.iter().copied().filter(|id| !found.contains(id)),
        );
        if picked.is_empty() {
            continue;
        }
        done.objects += 1;
        let batch = unordered_batch(
            redrive_batch_id(run_id, &ledger.batch_id),
            ledger.source.clone(),
            ledger.partition.clone(),
            picked.iter().map(|(_, l)| *l),
        );
        let raw_refs: Vec<String> = picked
            .iter()
            .map(|(n, _)| format!("{object}#{}", n + 1))
            .collect();
        let (batch, outcomes) = run_rule(run, &rule, batch).await?;
        let outcomes = if dry {
            outcomes
        } else {
            let redrive = crate::sink::Redrive {
                original_batch: &ledger.batch_id,
                run_pattern: &run_pattern,
            };
            let outcomes = commit_outcomes(
                run,
                &rule,
                retry,
                &batch,
                &raw_refs,
                outcomes,
                Some(redrive),
            )
            .await?;
            done.rows_kept += rows_kept(run, &batch, &outcomes).await?;
            outcomes
        };
        for outcome in &outcomes {
            match outcome {
                RecordOutcome::Emit(_) => done.emitted += 1,
                RecordOutcome::Drop(_) => done.dropped += 1,
                RecordOutcome::Reject(_, reason) => {
                    *done.rejected.entry(category(reason)).or_default() += 1
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(done)
}

fn not_found<'a>(done: &mut Redriven, ids: impl Iterator<Item = &'a str>) {
    for id in ids {
        done.not_found += 1;
        if done.not_found_ids.len() < REDRIVE_LISTED {
            done.not_found_ids.push(id.to_string());
        }
    }
}

/// `redrive-{run}/{original}`, within the ledger's 1,024-character `batch_id` (a long original keeps its
/// start and gets a digest of the whole, so two ids never collide).
pub fn redrive_batch_id(run_id: i64, original: &str) -> String {
    const MAX: usize = 1024;
    let id = format!("redrive-{run_id}/{original}");
    if id.len() <= MAX {
        return id;
    }
    let digest = crate::plugin_fetch::sha256_hex(original.as_bytes());
    let mut cut = MAX - 1 - 16 - format!("redrive-{run_id}/").len();
    while !original.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("redrive-{run_id}/{}~{}", &original[..cut], &digest[..16])
}

/// Rows of `outcomes` whose key another record holds after the commit.
async fn rows_kept(
    run: &Run<'_>,
    batch: &crate::record::Batch,
    outcomes: &[RecordOutcome],
) -> Result<usize, ReconcileError> {
    let mut wanted: Vec<Vec<(Vec<String>, &str)>> = vec![Vec::new(); run.tables.len()];
    for (record, outcome) in batch.records.iter().zip(outcomes) {
        if let RecordOutcome::Emit(rows) = outcome {
            for row in rows {
                let spec = &run.tables[row.table];
                let key = key_of(spec, &expected_canonical(spec, row));
                wanted[row.table].push((key, record.id.as_str()));
            }
        }
    }
    let mut kept = 0;
    for (t, rows) in wanted.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let spec = &run.tables[t];
        let keys = rows.iter().map(|(k, _)| k.clone()).collect();
        let holders: HashMap<Vec<String>, String> = run
            .reader
            .stored_rows(spec, &RowFilter::Keys(keys))
            .await?
            .into_iter()
            .map(|row| (key_of(spec, &stored_canonical(spec, &row)), row.record_id))
            .collect();
        // In-batch repeats of a key: only the last one's record holds it.
        let mut last: HashMap<&Vec<String>, &str> = HashMap::new();
        for (key, record) in &rows {
            last.insert(key, record);
        }
        kept += last
            .iter()
            .filter(|(key, record)| holders.get(**key).map(String::as_str) != Some(**record))
            .count();
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_ids_are_bounded_and_distinct() {
        assert_eq!(redrive_batch_id(7, "file/a/1-2"), "redrive-7/file/a/1-2");
        let long_a = format!("{}a", "é".repeat(600));
        let long_b = format!("{}b", "é".repeat(600));
        let (a, b) = (redrive_batch_id(7, &long_a), redrive_batch_id(7, &long_b));
        assert!(
            a.len() <= 1024 && b.len() <= 1024,
            "{} {}",
            a.len(),
            b.len()
        );
        assert_ne!(a, b);
        assert!(a.starts_with("redrive-7/éé"));
    }
}
