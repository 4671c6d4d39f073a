//! RAW against final data: `weir reconcile`, `weir replay`, shadow runs (`weir replay --dry-run`) and
//! dead-letter redrives (`weir dead-letters redrive`).
//!
//! Reconcile streams the RAW objects of a window one group at a time (bounded memory), re-runs the rule version
//! that loaded each batch (found by digest in the plugin store) on the RAW records, and compares the expected
//! outcome of every record with what the sink holds: final rows (matched by table and primary key, then
//! lineage), dead letters and the ledger.
//!
//! Every RAW record ends up in exactly one class: emitted (its rows are in the final tables, or were replaced
//! by a later record with the same key), dropped (the ledger recorded its batch and the rule drops it),
//! rejected (a dead letter names it) or unaccounted (no recorded outcome). Problems found on the way: missing
//! final rows, drifted fields (a final value differs from what the recorded rule gives), unexpected rows,
//! orphan final rows (lineage pointing to no RAW record) and ledger batches whose RAW object is gone.
//!
//! Windows are by source time at hour granularity: a RAW object belongs to the hour in its key
//! (`dt=…/hour=…`, the first record's source time), MongoDB RAW by the records' `arrived_at`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use crate::plugin_store::{RuleLoadError, RuleSource};
use crate::raw::{RawLine, RawStore};
use crate::rules::validate::{self, CheckedRow, RecordOutcome};
use crate::rules::{RulePlugin, SourceRecord};
use crate::schema::{Cell, ColumnType, TableSpec};
use crate::sink::{LedgerRow, RowFilter, Sink, SinkError, SinkReader, StoredRow};

mod report;
pub use report::*;
mod canonical;
pub use canonical::*;
mod compare;
use compare::*;
mod html;
pub use html::*;
mod redrive;
mod replay;
pub use crate::raw::window::{HOUR_MS, Window, WindowError, key_hour_ms};
pub use redrive::*;
pub use replay::*;

/// A reconcile or replay failure (not a finding: findings go into the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The RAW store failed.
    #[error(transparent)]
    Raw(#[from] crate::raw::RawError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A rule could not be loaded.
    #[error("{0}")]
    Rule(String),
    /// A recorded rule version could not be loaded from the plugin store.
    #[error(transparent)]
    RuleLoad(#[from] RuleLoadError),
    /// A window bound does not parse.
    #[error(transparent)]
    Window(#[from] WindowError),
}

/// How expected outcomes are compared with the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reconcile: the recorded rule of each batch; differences are problems.
    Reconcile,
    /// Shadow run: one given rule; differences are what a replay would change.
    Shadow,
}

/// Settings of a run.
pub struct Run<'a> {
    /// The RAW store.
    pub raw: &'a dyn RawStore,
    /// The sink (replay commits through it).
    pub sink: &'a dyn Sink,
    /// What the sink holds (ledger, final rows, dead letters).
    pub reader: &'a dyn SinkReader,
    /// The declared tables.
    pub tables: &'a [TableSpec],
    /// Most rows one record may emit.
    pub max_rows: usize,
    /// Where rule versions come from.
    pub rules: &'a dyn RuleSource,
    /// In shadow mode, the rule to compare with (instead of each batch's recorded one).
    pub shadow: Option<Arc<RulePlugin>>,
    /// The window.
    pub window: &'a Window,
    /// Most differences listed in the report.
    pub max_differences: usize,
    /// Records per group read and compared together (memory bound).
    pub group_records: usize,
    /// Rule instances per batch, as the worker runs them (`rule.instances`): each rule call then sees the
    /// same records as when the batch was loaded.
    pub rule_instances: usize,
    /// Progress on stderr.
    pub progress: bool,
}

/// Outcomes of the records of one RAW object.
struct ObjectWork {
    key: String,
    /// Every ledger batch that loaded this object, oldest first (a replay adds one).
    ledger: Vec<LedgerRow>,
    lines: Vec<RawLine>,
    outcomes: Option<Vec<RecordOutcome>>,
}

/// Runs reconcile (or a shadow run) over the window.
pub async fn reconcile(run: &Run<'_>, mode: Mode) -> Result<Report, ReconcileError> {
    let mut report = Report {
        window: describe_window(run.window),
        ..Report::default()
    };
    let ledger = ledger_by_object(run.reader).await?;
    let mut keys = run.raw.list(run.window).await?;
    if let Some(batch) = &run.window.batch {
        keys.retain(|k| {
            ledger
                .get(k)
                .is_some_and(|l| l.iter().any(|l| &l.batch_id == batch))
        });
    }
    note_gone_objects(run, &ledger, &keys, &mut report).await?;
    if run.window.batch.is_none()
        && run.window.since_ms.is_none()
        && run.window.until_ms.is_none()
        && mode == Mode::Reconcile
    {
        for spec in run.tables {
            let n = run.reader.rows_without_batch(spec).await?;
            if n > 0 {
                report.rows_without_batch.insert(spec.name.clone(), n);
            }
        }
    }

    let bar = progress_bar(run.progress, keys.len() as u64);
    let mut missing_rules: HashSet<String> = HashSet::new();
    let mut group: Vec<ObjectWork> = Vec::new();
    let mut group_records = 0;
    for key in keys {
        let lines = run.raw.get(&key).await?;
        report.objects += 1;
        group_records += lines.len();
        group.push(ObjectWork {
            ledger: ledger.get(&key).cloned().unwrap_or_default(),
            key,
            lines,
            outcomes: None,
        });
        if group_records >= run.group_records {
            compare_group(run, mode, &mut group, &mut report, &mut missing_rules).await?;
            bar.inc(group.len() as u64);
            group.clear();
            group_records = 0;
        }
    }
    if !group.is_empty() {
        compare_group(run, mode, &mut group, &mut report, &mut missing_rules).await?;
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    report.missing_rules = missing_rules.into_iter().collect();
    report.missing_rules.sort();
    Ok(report)
}

/// Ledger batches of the window whose RAW object is gone: their rows are listed as orphans.
async fn note_gone_objects(
    run: &Run<'_>,
    ledger: &HashMap<String, Vec<LedgerRow>>,
    keys: &[String],
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let listed: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let mut gone: Vec<&LedgerRow> = ledger
        .iter()
        .flat_map(|(k, l)| l.iter().map(move |l| (k, l)))
        .filter(|(k, l)| {
            !listed.contains(k.as_str())
                && match &run.window.batch {
                    Some(b) => &l.batch_id == b,
                    None => run
                        .window
                        .has_key(k)
                        .unwrap_or(run.window.since_ms.is_none() && run.window.until_ms.is_none()),
                }
        })
        .map(|(_, l)| l)
        .collect();
    gone.sort_by(|a, b| a.batch_id.cmp(&b.batch_id));
    for l in gone {
        if run.raw.exists(object_of(&l.raw_ref)).await? {
            continue; // outside a listing window (MongoDB) but present
        }
        let ids = vec![l.batch_id.clone()];
        let mut orphan_rows = 0;
        for spec in run.tables {
            let rows = run
                .reader
                .stored_rows(spec, &RowFilter::BatchIds(ids.clone()))
                .await?;
            orphan_rows += rows.len();
            for row in rows {
                let cells = stored_canonical(spec, &row);
                note(
                    &mut report.differences,
                    &mut report.difference_counts,
                    run.max_differences,
                    Difference::row(
                        &row.record_id,
                        spec,
                        &key_of(spec, &cells),
                        DifferenceKind::Orphan,
                    ),
                );
            }
        }
        report.missing_raw_objects.push(MissingRaw {
            batch_id: l.batch_id.clone(),
            object: object_of(&l.raw_ref).to_string(),
            orphan_rows,
        });
    }
    Ok(())
}

fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} RAW objects {wide_bar} {eta}",
        )
        .expect("a valid template"),
    );
    bar
}

fn describe_window(w: &Window) -> String {
    let t = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    };
    match (&w.batch, t(w.since_ms), t(w.until_ms)) {
        (Some(b), _, _) => format!("batch {b}"),
        (None, None, None) => "all RAW".into(),
        (None, s, u) => format!(
            "{} .. {}",
            s.unwrap_or_else(|| "start".into()),
            u.unwrap_or_else(|| "now".into())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Window bounds parse from the forms the CLI documents; keys map to their hour.
    #[test]
    fn windows() {
        let now = Window::parse_time("2026-11-21T12:00:00Z", 0).unwrap();
        assert_eq!(
            Window::parse_time("2026-11-21T10", now).unwrap(),
            now - 2 * HOUR_MS
        );
        assert_eq!(Window::parse_time("2h", now).unwrap(), now - 2 * HOUR_MS);
        assert_eq!(
            Window::parse_time("2026-11-21", now).unwrap(),
            now - 12 * HOUR_MS
        );
        assert!(Window::parse_time("yesterday", now).is_err());
        let w = Window {
            since_ms: Some(now - 2 * HOUR_MS + 1),
            until_ms: Some(now),
            batch: None,
        };
        assert_eq!(
            w.has_key("p/source=file/dt=2026-11-21/hour=10/f-1-2.jsonl.gz"),
            Some(true)
        );
        assert_eq!(
            w.has_key("p/source=file/dt=2026-11-21/hour=12/f-1-2.jsonl.gz"),
            Some(false)
        );
        assert_eq!(
            w.has_key("p/source=file/dt=2026-11-21/hour=09/f-1-2.jsonl.gz"),
            Some(false)
        );
        assert_eq!(w.has_key("db.raw/file/f/1-2"), None);
    }

    /// Values read back from databases compare equal to the cells a rule gives.
    #[test]
    fn canonical_values() {
        let ts = ColumnType::TimestampTz;
        let us = 1_795_255_200_000_000;
        assert_eq!(
            canonical_stored(ts, Some("2026-11-21 10:00:00+00")),
            canonical_cell(ts, &Cell::TimestampUs(us))
        );
        assert_eq!(
            canonical_stored(ts, Some("2026-11-21T10:00:00.000000Z")),
            canonical_cell(ts, &Cell::TimestampUs(us))
        );
        let dec = ColumnType::Decimal {
            precision: 12,
            scale: 2,
        };
        assert_eq!(
            canonical_stored(dec, Some("39.98")),
            canonical_cell(dec, &Cell::Decimal("39.98".into()))
        );
        assert_eq!(
            canonical_stored(
                ColumnType::Super,
                Some(r#"{"city": "Madrid", "country": "ES"}"#)
            ),
            canonical_cell(
                ColumnType::Super,
                &Cell::Json(r#"{"country":"ES","city":"Madrid"}"#.into())
            )
        );
        assert_eq!(
            canonical_stored(ColumnType::Boolean, Some("t")),
            Some("true".into())
        );
        assert_ne!(
            canonical_stored(dec, Some("39.99")),
            canonical_cell(dec, &Cell::Decimal("39.98".into()))
        );
    }

    /// Partition names come back out of RAW keys.
    #[test]
    fn partitions_of_keys() {
        assert_eq!(
            partition_of_key("p/source=file/dt=2026-11-21/hour=10/orders.jsonl-1-20.jsonl.gz"),
            ("file".to_string(), "orders.jsonl".to_string())
        );
    }

    /// The HTML report is one page with the chart and the differences.
    #[test]
    fn html_page() {
        let mut r = Report::default();
        r.hours.insert(
            "2026-11-21T10".into(),
            HourCounts {
                emitted: 5,
                dropped: 1,
                rejected: 2,
                unaccounted: 0,
            },
        );
        r.differences.push(Difference {
            record_id: "file/f/1".into(),
            table: "orders".into(),
            key: "order_id=<o-1>".into(),
            kind: DifferenceKind::Drift,
            column: Some("total".into()),
            expected: Some("1.00".into()),
            actual: Some("2.00".into()),
        });
        let page = html(&r, "weir reconcile");
        assert!(
            page.contains(r#"<rect class="emitted""#) && page.contains(r#"<rect class="rejected""#)
        );
        assert!(page.contains("order_id=&lt;o-1&gt;") && !page.contains("<o-1>"));
        assert!(!page.contains("<script"));
    }
}
