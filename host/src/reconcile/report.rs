//! What reconcile found: counts per partition and hour, the differences, and the terminal summary.

use super::*;

/// Counts of one source partition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionReport {
    /// RAW records in the window.
    pub raw_records: usize,
    /// Records whose rows are in the final tables (or were replaced by a later record with the same key).
    pub emitted: usize,
    /// Final rows of these records, per table.
    pub rows: BTreeMap<String, usize>,
    /// Dropped records by reason (as the ledger recorded them).
    pub dropped: BTreeMap<String, usize>,
    /// Rejected records by reason category (the text before the first `:`), from the dead letters.
    pub rejected: BTreeMap<String, usize>,
    /// RAW records with no recorded outcome.
    pub unaccounted: usize,
    /// Final rows a record should have but the table does not.
    pub missing_rows: usize,
    /// Final rows whose lineage points to no RAW record.
    pub orphan_rows: usize,
    /// Final rows of a record that the recorded rule does not give.
    pub unexpected_rows: usize,
    /// Fields whose final value differs from the recorded rule's.
    pub drifted_fields: usize,
}

/// One difference between what the rule gives and what a table holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    /// The RAW record.
    pub record_id: String,
    /// The table.
    pub table: String,
    /// The row's primary key, `column=value` joined by `, `.
    pub key: String,
    /// What differs.
    pub kind: DifferenceKind,
    /// The column, for field differences.
    pub column: Option<String>,
    /// What the rule gives (`null` for NULL; absent for removed rows).
    pub expected: Option<String>,
    /// What the table holds.
    pub actual: Option<String>,
}

/// What a [`Difference`] is; serialized as its lowercase name (`drift`, `missing`, …).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DifferenceKind {
    /// A field's final value differs from what the recorded rule gives.
    Drift,
    /// A row the record should have is not in the table.
    Missing,
    /// A row of the record that the recorded rule does not give.
    Unexpected,
    /// A final row whose lineage points to no RAW record.
    Orphan,
    /// Shadow run: a row the new rule adds.
    Added,
    /// Shadow run: a field the new rule changes.
    Changed,
    /// Shadow run: a row the new rule no longer gives.
    Removed,
}

impl DifferenceKind {
    /// The name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Drift => "drift",
            DifferenceKind::Missing => "missing",
            DifferenceKind::Unexpected => "unexpected",
            DifferenceKind::Orphan => "orphan",
            DifferenceKind::Added => "added",
            DifferenceKind::Changed => "changed",
            DifferenceKind::Removed => "removed",
        }
    }
}

impl std::fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A ledger batch whose RAW object is gone.
#[derive(Debug, Clone, Serialize)]
pub struct MissingRaw {
    /// The batch.
    pub batch_id: String,
    /// Its RAW object.
    pub object: String,
    /// Final rows the batch loaded that now point to no RAW record.
    pub orphan_rows: usize,
}

impl Difference {
    /// A whole-row difference (`missing`, `orphan`, `unexpected`, `added`, `removed`).
    pub(super) fn row(
        record_id: &str,
        spec: &TableSpec,
        key: &[String],
        kind: DifferenceKind,
    ) -> Difference {
        Difference {
            record_id: record_id.to_string(),
            table: spec.name.clone(),
            key: key_text(spec, key),
            kind,
            column: None,
            expected: None,
            actual: None,
        }
    }
}

/// Emitted, dropped and rejected records of one hour (source time), for the chart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HourCounts {
    /// Records that emitted rows.
    pub emitted: usize,
    /// Records dropped.
    pub dropped: usize,
    /// Records rejected.
    pub rejected: usize,
    /// Records with no recorded outcome.
    pub unaccounted: usize,
}

/// What reconcile (or a shadow run) found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The window, as given.
    pub window: String,
    /// RAW objects read.
    pub objects: usize,
    /// Per source partition (`{source}/{partition}`).
    pub partitions: BTreeMap<String, PartitionReport>,
    /// Per hour (`2026-11-21T10`), for the chart.
    pub hours: BTreeMap<String, HourCounts>,
    /// The first differences (at most `max_differences`).
    pub differences: Vec<Difference>,
    /// Differences by kind (all of them, not only those listed).
    pub difference_counts: BTreeMap<String, usize>,
    /// Record ids with no recorded outcome (the first ones).
    pub unaccounted_records: Vec<String>,
    /// Ledger batches whose RAW object is gone (their final rows are orphans).
    pub missing_raw_objects: Vec<MissingRaw>,
    /// Final rows whose batch is not in the ledger at all, per table (whole-table check, no window).
    pub rows_without_batch: BTreeMap<String, usize>,
    /// Rule versions (digests) that loaded data in the window but are not in the plugin store.
    pub missing_rules: Vec<String>,
}

impl Report {
    pub(super) fn total(&self, f: impl Fn(&PartitionReport) -> usize) -> usize {
        self.partitions.values().map(f).sum()
    }

    /// The number of problems: unaccounted records, missing, orphan and unexpected rows, drifted fields,
    /// missing RAW objects and missing rule versions.
    pub fn problems(&self) -> usize {
        self.total(|p| {
            p.unaccounted + p.missing_rows + p.orphan_rows + p.unexpected_rows + p.drifted_fields
        }) + self.missing_raw_objects.len()
            + self.rows_without_batch.values().sum::<usize>()
            + self.missing_rules.len()
    }

    /// The terminal summary.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "reconcile {} — {} RAW objects",
            self.window, self.objects
        );
        let _ = writeln!(
            s,
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8} {:>7}",
            "partition",
            "raw",
            "emitted",
            "dropped",
            "rejected",
            "unaccounted",
            "missing",
            "orphans",
            "drift"
        );
        self.render_partitions(&mut s);
        self.render_notes(&mut s);
        self.render_differences(&mut s);
        let _ = writeln!(
            s,
            "{} problems",
            if self.problems() == 0 {
                "no".to_string()
            } else {
                self.problems().to_string()
            }
        );
        s
    }

    /// One line per partition, then its rows per table and its drop and reject reasons.
    fn render_partitions(&self, s: &mut String) {
        use std::fmt::Write;
        for (name, p) in &self.partitions {
            let _ = writeln!(
                s,
                "{:<40} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8} {:>7}",
                name,
                p.raw_records,
                p.emitted,
                p.dropped.values().sum::<usize>(),
                p.rejected.values().sum::<usize>(),
                p.unaccounted,
                p.missing_rows,
                p.orphan_rows,
                p.drifted_fields,
            );
            let rows: Vec<String> = p.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
            if !rows.is_empty() {
                let _ = writeln!(s, "    rows: {}", rows.join(", "));
            }
            for (reason, n) in &p.dropped {
                let _ = writeln!(s, "    dropped {n}: {reason}");
            }
            for (reason, n) in &p.rejected {
                let _ = writeln!(s, "    rejected {n}: {reason}");
            }
        }
    }

    /// What could not be compared: missing RAW objects, rows without a batch, missing rules, unaccounted records.
    fn render_notes(&self, s: &mut String) {
        use std::fmt::Write;
        for m in &self.missing_raw_objects {
            let _ = writeln!(
                s,
                "RAW object missing: {} (batch {}; {} final rows point to it)",
                m.object, m.batch_id, m.orphan_rows
            );
        }
        for (table, n) in &self.rows_without_batch {
            let _ = writeln!(
                s,
                "{n} rows of {table} name a batch the ledger does not have"
            );
        }
        for digest in &self.missing_rules {
            let _ = writeln!(
                s,
                "rule {digest} is not in the plugin store: its batches were not re-derived ([rule] store)"
            );
        }
        if !self.unaccounted_records.is_empty() {
            let _ = writeln!(
                s,
                "unaccounted records: {}",
                self.unaccounted_records.join(", ")
            );
        }
    }

    /// The listed differences.
    fn render_differences(&self, s: &mut String) {
        use std::fmt::Write;
        if !self.differences.is_empty() {
            let _ = writeln!(s, "differences (first {}):", self.differences.len());
            for d in &self.differences {
                let _ = writeln!(
                    s,
                    "  {:<10} {} [{}] {}{}",
                    d.kind,
                    d.table,
                    d.key,
                    d.record_id,
                    match &d.column {
                        Some(c) => format!(
                            " {c}: expected {} actual {}",
                            d.expected.as_deref().unwrap_or("-"),
                            d.actual.as_deref().unwrap_or("-")
                        ),
                        None => String::new(),
                    }
                );
            }
        }
    }
}
