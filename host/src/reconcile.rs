//! RAW against final data: `weir reconcile`, `weir replay` and shadow runs (`weir replay --dry-run`).
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

use crate::raw::{RawLine, RawStore};
use crate::rules::validate::{self, CheckedRow, RecordOutcome};
use crate::rules::{RulePlugin, SourceRecord};
use crate::schema::{Cell, ColumnType, TableSpec};
use crate::sink::{LedgerRow, RowFilter, Sink, SinkError, StoredRow};

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
    /// A window bound does not parse.
    #[error("{0}")]
    Window(String),
}

/// Which RAW to look at.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// From this source time (ms since the epoch, inclusive; rounded down to the hour).
    pub since_ms: Option<i64>,
    /// Until this source time (ms since the epoch, exclusive).
    pub until_ms: Option<i64>,
    /// Only this batch (its ledger id).
    pub batch: Option<String>,
}

const HOUR_MS: i64 = 3_600_000;

impl Window {
    /// Parses `--since`/`--until` values: RFC 3339 (`2026-11-21T10:00:00Z`), a date-hour (`2026-11-21T10`),
    /// a date (`2026-11-21`) or a relative age (`90m`, `6h`, `2d` before now).
    pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, ReconcileError> {
        let bad = || {
            ReconcileError::Window(format!(
                "`{text}`: use RFC 3339 (2026-11-21T10:00:00Z), a date (2026-11-21), a date and hour \
                 (2026-11-21T10) or an age (90m, 6h, 2d)"
            ))
        };
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(t.timestamp_millis());
        }
        if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c)) {
            if let Ok(n) = text[..text.len() - 1].parse::<i64>() {
                let ms = match unit {
                    's' => 1_000,
                    'm' => 60_000,
                    'h' => HOUR_MS,
                    _ => 24 * HOUR_MS,
                };
                return Ok(now_ms - n * ms);
            }
        }
        let (date, hour) = match text.split_once(['T', ' ']) {
            Some((d, h)) => (d, h.parse::<u32>().map_err(|_| bad())?),
            None => (text, 0),
        };
        let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
        let t = day.and_hms_opt(hour, 0, 0).ok_or_else(bad)?;
        Ok(t.and_utc().timestamp_millis())
    }

    /// Whether an hour (ms at its start) is inside the window.
    fn has_hour(&self, hour_ms: i64) -> bool {
        self.since_ms
            .is_none_or(|s| hour_ms + HOUR_MS > s.div_euclid(HOUR_MS) * HOUR_MS)
            && self.until_ms.is_none_or(|u| hour_ms < u)
    }

    /// Whether a RAW object key belongs to the window (`None` when the key names no hour).
    pub fn has_key(&self, key: &str) -> Option<bool> {
        key_hour_ms(key).map(|h| self.has_hour(h))
    }
}

/// The hour of a RAW object key (`…/dt=2026-11-21/hour=10/…`), in ms since the epoch.
pub fn key_hour_ms(key: &str) -> Option<i64> {
    let dt = key.split("dt=").nth(1)?.get(..10)?;
    let hour = key.split("/hour=").nth(1)?.get(..2)?.parse::<u32>().ok()?;
    let day = chrono::NaiveDate::parse_from_str(dt, "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_millis())
}

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
    /// `drift` (a field), `missing` (a row), `unexpected` (a row), and for shadow runs `added`, `changed`,
    /// `removed`.
    pub kind: String,
    /// The column, for field differences.
    pub column: Option<String>,
    /// What the rule gives (`null` for NULL; absent for removed rows).
    pub expected: Option<String>,
    /// What the table holds.
    pub actual: Option<String>,
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
    fn row(record_id: &str, spec: &TableSpec, key: &[String], kind: &str) -> Difference {
        Difference {
            record_id: record_id.to_string(),
            table: spec.name.clone(),
            key: key_text(spec, key),
            kind: kind.to_string(),
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
    fn total(&self, f: impl Fn(&PartitionReport) -> usize) -> usize {
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
}

/// Rule versions by digest, loaded on demand from the plugin store (or the configured plugin).
#[async_trait::async_trait]
pub trait RuleSource: Send + Sync {
    /// The rule with this digest, `None` when no store has it.
    async fn rule(&self, digest: &str) -> Result<Option<Arc<RulePlugin>>, ReconcileError>;
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
    /// The sink.
    pub sink: &'a dyn Sink,
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

/// Canonical text of a stored value of type `ty`, so that values read back from a database compare equal to
/// the cells the rule gives (`None` for NULL).
pub fn canonical_stored(ty: ColumnType, text: Option<&str>) -> Option<String> {
    let t = text?;
    Some(match ty {
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => t
            .trim()
            .parse::<i64>()
            .map(|i| i.to_string())
            .unwrap_or_else(|_| t.to_string()),
        ColumnType::Real => t
            .trim()
            .parse::<f32>()
            .map(|x| format!("{x:?}"))
            .unwrap_or_else(|_| t.to_string()),
        ColumnType::Double => t
            .trim()
            .parse::<f64>()
            .map(|x| format!("{x:?}"))
            .unwrap_or_else(|_| t.to_string()),
        ColumnType::Decimal { precision, scale } => {
            crate::schema::normalize_decimal(t.trim(), precision, scale)
                .unwrap_or_else(|_| t.to_string())
        }
        ColumnType::Boolean => match t.trim() {
            "t" | "true" | "TRUE" | "1" => "true".into(),
            "f" | "false" | "FALSE" | "0" => "false".into(),
            other => other.to_string(),
        },
        ColumnType::Varchar(_) => t.to_string(),
        ColumnType::Timestamp | ColumnType::TimestampTz => parse_timestamp_us(t)
            .map(crate::schema::format_timestamp_us)
            .unwrap_or_else(|| t.to_string()),
        ColumnType::Super => canonical_json(t).unwrap_or_else(|| t.to_string()),
    })
}

/// Canonical text of a cell the rule gives.
pub fn canonical_cell(ty: ColumnType, cell: &Cell) -> Option<String> {
    match cell {
        Cell::Null => None,
        Cell::Float(x) if ty == ColumnType::Real => Some(format!("{:?}", *x as f32)),
        Cell::Float(x) => Some(format!("{x:?}")),
        Cell::Json(s) => Some(canonical_json(s).unwrap_or_else(|| s.clone())),
        other => other.to_text(),
    }
}

/// JSON text with object keys sorted and no spaces.
fn canonical_json(text: &str) -> Option<String> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(sort(v).to_string())
}

/// µs since the epoch of a timestamp as databases print it (`2026-11-21 10:00:00+00`,
/// `2026-11-21 10:00:00.5`, RFC 3339).
fn parse_timestamp_us(t: &str) -> Option<i64> {
    let t = t.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.timestamp_micros());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return Some(d.timestamp_micros());
        }
    }
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .map(|d| d.and_utc().timestamp_micros())
}

/// The primary key of a row of `spec`, as canonical texts.
fn key_of(spec: &TableSpec, cells: &[Option<String>]) -> Vec<String> {
    spec.primary_key
        .iter()
        .map(|k| {
            let i = spec
                .columns
                .iter()
                .position(|(c, _)| c == k)
                .expect("key columns are declared");
            cells[i].clone().unwrap_or_default()
        })
        .collect()
}

fn key_text(spec: &TableSpec, key: &[String]) -> String {
    spec.primary_key
        .iter()
        .zip(key)
        .map(|(c, v)| format!("{c}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason category: the text before the first `:`.
fn category(reason: &str) -> String {
    reason.split(':').next().unwrap_or("").trim().to_string()
}

fn source_record(line: &RawLine) -> SourceRecord {
    SourceRecord {
        id: line.id.clone(),
        partition_key: line.partition_key.clone(),
        arrived_at_ms: line.arrived_at_ms,
        attributes: line.attributes.clone(),
        payload: line.payload_bytes().unwrap_or_default(),
    }
}

fn hour_label(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.div_euclid(HOUR_MS) * HOUR_MS)
        .map(|t| t.format("%Y-%m-%dT%H").to_string())
        .unwrap_or_default()
}

/// Runs reconcile (or a shadow run) over the window.
pub async fn reconcile(run: &Run<'_>, mode: Mode) -> Result<Report, ReconcileError> {
    let mut report = Report {
        window: describe_window(run.window),
        ..Report::default()
    };
    let ledger = ledger_by_object(run.sink).await?;
    let mut keys = run.raw.list(run.window).await?;
    if let Some(batch) = &run.window.batch {
        keys.retain(|k| {
            ledger
                .get(k)
                .is_some_and(|l| l.iter().any(|l| &l.batch_id == batch))
        });
    }
    let listed: HashSet<&str> = keys.iter().map(String::as_str).collect();
    // Ledger batches of the window whose RAW object is gone: their rows are orphans.
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
    for l in &gone {
        if run.raw.exists(object_of(&l.raw_ref)).await? {
            continue; // outside a listing window (MongoDB) but present
        }
        let ids = vec![l.batch_id.clone()];
        let mut orphan_rows = 0;
        for spec in run.tables {
            let rows = run
                .sink
                .stored_rows(spec, &RowFilter::BatchIds(ids.clone()))
                .await?;
            orphan_rows += rows.len();
            for row in rows {
                let cells = stored_canonical(spec, &row);
                note(
                    &mut report.differences,
                    &mut report.difference_counts,
                    run.max_differences,
                    Difference::row(&row.record_id, spec, &key_of(spec, &cells), "orphan"),
                );
            }
        }
        report.missing_raw_objects.push(MissingRaw {
            batch_id: l.batch_id.clone(),
            object: object_of(&l.raw_ref).to_string(),
            orphan_rows,
        });
    }
    if run.window.batch.is_none()
        && run.window.since_ms.is_none()
        && run.window.until_ms.is_none()
        && mode == Mode::Reconcile
    {
        for spec in run.tables {
            let n = run.sink.rows_without_batch(spec).await?;
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

/// The RAW object of a RAW reference (`{key}#{line}` → `{key}`).
pub fn object_of(raw_ref: &str) -> &str {
    raw_ref.rsplit_once('#').map(|(k, _)| k).unwrap_or(raw_ref)
}

/// Counts a difference, and lists it while fewer than `max` are listed.
fn note(
    differences: &mut Vec<Difference>,
    counts: &mut BTreeMap<String, usize>,
    max: usize,
    d: Difference,
) {
    *counts.entry(d.kind.clone()).or_default() += 1;
    if differences.len() < max {
        differences.push(d);
    }
}

fn stored_canonical(spec: &TableSpec, row: &StoredRow) -> Vec<Option<String>> {
    spec.columns
        .iter()
        .zip(&row.cells)
        .map(|((_, ty), v)| canonical_stored(*ty, v.as_deref()))
        .collect()
}

fn expected_canonical(spec: &TableSpec, row: &CheckedRow) -> Vec<Option<String>> {
    spec.columns
        .iter()
        .zip(&row.cells)
        .map(|((_, ty), c)| canonical_cell(*ty, c))
        .collect()
}

/// Runs the rules of a group of objects and compares the outcomes with the sink.
async fn compare_group(
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
                        let outcomes = crate::pipeline::run_rule(
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
    let mut by_key: Vec<HashMap<Vec<String>, (String, Vec<Option<String>>)>> = Vec::new();
    let mut by_record: HashMap<&str, Vec<(usize, Vec<String>)>> = HashMap::new();
    let mut stored: Vec<Vec<StoredRow>> = Vec::new();
    for spec in run.tables {
        let mut rows = Vec::new();
        if !batch_ids.is_empty() {
            rows.extend(
                run.sink
                    .stored_rows(spec, &RowFilter::BatchIds(batch_ids.clone()))
                    .await?,
            );
        }
        if !loose_ids.is_empty() {
            rows.extend(
                run.sink
                    .stored_rows(spec, &RowFilter::RecordIds(loose_ids.clone()))
                    .await?,
            );
        }
        stored.push(rows);
    }
    // Each stored row canonicalized once: its key, and its rows by record and by batch.
    let mut by_batch: HashMap<&str, Vec<(usize, &str, Vec<String>)>> = HashMap::new();
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
            .sink
            .dead_letters(&RowFilter::BatchIds(batch_ids.clone()))
            .await?
        {
            dead.insert(d.record_id, (d.stage, d.reason));
        }
    }
    if !loose_ids.is_empty() {
        for d in run
            .sink
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
            for row in run.sink.stored_rows(spec, &RowFilter::Keys(keys)).await? {
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
            if let Ok(reasons) = serde_json::from_str::<BTreeMap<String, usize>>(&l.drop_reasons) {
                if !shadow {
                    for (r, n) in reasons {
                        *p.dropped.entry(r).or_default() += n;
                    }
                }
            }
            // Rows of this object's batches whose record is not in the object.
            for batch in &batches {
                for (t, record_id, key) in by_batch.get(batch).into_iter().flatten() {
                    if !record_ids.contains(record_id) {
                        p.orphan_rows += 1;
                        let d = Difference::row(record_id, &run.tables[*t], key, "orphan");
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
            let mut class = "unaccounted";
            let mut rows_found: Vec<(usize, usize)> = Vec::new(); // (table, count)
            let mut diffs: Vec<Difference> = Vec::new();
            let mut expected_keys: HashSet<(usize, Vec<String>)> = HashSet::new();
            match (outcome, dead_letter) {
                (_, Some((_, reason))) if !shadow => {
                    class = "rejected";
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
                                            kind: if shadow { "changed" } else { "drift" }.into(),
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
                                    if shadow { "added" } else { "missing" },
                                ));
                            }
                        }
                    }
                    if !work.ledger.is_empty() || !rows.is_empty() && all_there || shadow {
                        class = "emitted";
                    }
                }
                (Some(RecordOutcome::Drop(_)), _) if !work.ledger.is_empty() || shadow => {
                    class = "dropped"
                }
                (Some(RecordOutcome::Reject(..)), _) if shadow => class = "rejected",
                // No rule to re-derive it: accounted by what the tables hold (a record of an object no
                // ledger batch covers may have been loaded by another batch after a crash).
                (None, None) if by_record.contains_key(line.id.as_str()) => class = "emitted",
                (None, None) if !work.ledger.is_empty() => class = "dropped",
                _ => {}
            }
            // Rows the tables hold for this record that the rule does not give.
            if let (Some(_), Some(held)) = (outcome, by_record.get(line.id.as_str())) {
                if !(class == "rejected" && !shadow) {
                    for (t, key) in held {
                        if !expected_keys.contains(&(*t, key.clone())) {
                            let spec = &run.tables[*t];
                            diffs.push(Difference::row(
                                &line.id,
                                spec,
                                key,
                                if shadow { "removed" } else { "unexpected" },
                            ));
                        }
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
                "emitted" => {
                    p.emitted += 1;
                    h.emitted += 1;
                }
                "dropped" => {
                    h.dropped += 1;
                    if shadow {
                        if let Some(RecordOutcome::Drop(r)) = outcome {
                            *p.dropped.entry(r.clone()).or_default() += 1;
                        }
                    }
                }
                "rejected" => {
                    h.rejected += 1;
                    if shadow {
                        if let Some(RecordOutcome::Reject(_, r)) = outcome {
                            *p.rejected.entry(category(r)).or_default() += 1;
                        }
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
                match d.kind.as_str() {
                    "drift" | "changed" => p.drifted_fields += 1,
                    "missing" | "added" => p.missing_rows += 1,
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
async fn ledger_by_object(
    sink: &dyn Sink,
) -> Result<HashMap<String, Vec<LedgerRow>>, ReconcileError> {
    let mut map: HashMap<String, Vec<LedgerRow>> = HashMap::new();
    for row in sink.ledger().await? {
        map.entry(object_of(&row.raw_ref).to_string())
            .or_default()
            .push(row);
    }
    Ok(map)
}

/// `(source, partition)` of a RAW key: `…source={s}/dt=…/hour=…/{partition}-{first}-{last}[-{digest}].jsonl.gz`.
fn partition_of_key(key: &str) -> (String, String) {
    let source = key
        .split("source=")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or("")
        .to_string();
    let file = key
        .rsplit('/')
        .next()
        .unwrap_or(key)
        .trim_end_matches(".jsonl.gz");
    let parts: Vec<&str> = file.rsplitn(3, '-').collect();
    let partition = parts.last().copied().unwrap_or(file).to_string();
    (source, partition)
}

/// One self-contained HTML page: totals, an hourly stacked chart (inline SVG) of emitted, dropped, rejected
/// and unaccounted records, the partitions and the differences.
pub fn html(report: &Report, title: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let colors = [
        ("emitted", "#2e7d32"),
        ("dropped", "#f9a825"),
        ("rejected", "#c62828"),
        ("unaccounted", "#6a1b9a"),
    ];
    let hours: Vec<(&String, &HourCounts)> = report.hours.iter().collect();
    let max = hours
        .iter()
        .map(|(_, h)| h.emitted + h.dropped + h.rejected + h.unaccounted)
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, left, bottom) = (960.0_f64, 320.0_f64, 60.0_f64, 60.0_f64);
    let slot = (width - left - 10.0) / hours.len().max(1) as f64;
    let bar_w = (slot * 0.8).max(2.0);
    let plot_h = height - bottom - 10.0;
    let mut svg = format!(
        r##"<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="records per hour">"##
    );
    svg.push_str(&format!(
        r##"<line x1="{left}" y1="{y}" x2="{x2}" y2="{y}" stroke="#444"/><text x="{tx}" y="20" font-size="12" text-anchor="end">{max}</text><text x="{tx}" y="{y}" font-size="12" text-anchor="end">0</text>"##,
        y = height - bottom,
        x2 = width - 10.0,
        tx = left - 6.0,
    ));
    for (i, (label, h)) in hours.iter().enumerate() {
        let x = left + i as f64 * slot + (slot - bar_w) / 2.0;
        let mut y = height - bottom;
        for (name, color) in colors {
            let n = match name {
                "emitted" => h.emitted,
                "dropped" => h.dropped,
                "rejected" => h.rejected,
                _ => h.unaccounted,
            };
            if n == 0 {
                continue;
            }
            let bh = (n as f64 / max as f64 * plot_h).max(1.0);
            y -= bh;
            svg.push_str(&format!(
                r#"<rect class="{name}" x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{bh:.1}" fill="{color}"><title>{} {name}: {n}</title></rect>"#,
                esc(label)
            ));
        }
        if hours.len() <= 24 || i % (hours.len() / 12).max(1) == 0 {
            svg.push_str(&format!(
                r#"<text x="{:.1}" y="{:.1}" font-size="11" transform="rotate(45 {:.1} {:.1})">{}</text>"#,
                x,
                height - bottom + 14.0,
                x,
                height - bottom + 14.0,
                esc(label)
            ));
        }
    }
    svg.push_str("</svg>");
    let legend: String = colors
        .iter()
        .map(|(n, c)| format!(r#"<span class="key"><i style="background:{c}"></i>{n}</span>"#))
        .collect();
    let mut parts = String::new();
    for (name, p) in &report.partitions {
        let rows: Vec<String> = p
            .rows
            .iter()
            .map(|(t, n)| format!("{} {n}", esc(t)))
            .collect();
        parts.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            p.raw_records,
            p.emitted,
            rows.join(", "),
            p.dropped.values().sum::<usize>(),
            p.rejected.values().sum::<usize>(),
            p.unaccounted,
            p.missing_rows,
            p.orphan_rows,
            p.drifted_fields
        ));
    }
    let mut diffs = String::new();
    for d in &report.differences {
        diffs.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.kind),
            esc(&d.table),
            esc(&d.key),
            esc(&d.record_id),
            esc(d.column.as_deref().unwrap_or("")),
            esc(d.expected.as_deref().unwrap_or("")),
            esc(d.actual.as_deref().unwrap_or(""))
        ));
    }
    let mut notes = String::new();
    for m in &report.missing_raw_objects {
        notes.push_str(&format!(
            "<li>RAW object missing: {} (batch {}; {} final rows point to it)</li>",
            esc(&m.object),
            esc(&m.batch_id),
            m.orphan_rows
        ));
    }
    for (table, n) in &report.rows_without_batch {
        notes.push_str(&format!(
            "<li>{n} rows of {} name a batch the ledger does not have</li>",
            esc(table)
        ));
    }
    for digest in &report.missing_rules {
        notes.push_str(&format!(
            "<li>rule {} is not in the plugin store</li>",
            esc(digest)
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-variant-numeric: tabular-nums; }}
.key {{ margin-right: 16px; }} .key i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }}
.ok {{ color: #2e7d32; }} .bad {{ color: #c62828; }}
</style></head><body>
<h1>{title}</h1>
<p>Window: {window} · {objects} RAW objects · <b class="{cls}">{problems} problems</b></p>
<h2>Records per hour</h2>
<div>{legend}</div>
{svg}
<h2>Partitions</h2>
<table><tr><th>partition</th><th>raw</th><th>emitted</th><th>rows</th><th>dropped</th><th>rejected</th><th>unaccounted</th><th>missing rows</th><th>orphan rows</th><th>drifted fields</th></tr>{parts}</table>
<ul>{notes}</ul>
<h2>Differences</h2>
<table id="drift"><tr><th>kind</th><th>table</th><th>key</th><th>record</th><th>column</th><th>expected</th><th>actual</th></tr>{diffs}</table>
</body></html>
"#,
        title = esc(title),
        window = esc(&report.window),
        objects = report.objects,
        cls = if report.problems() == 0 { "ok" } else { "bad" },
        problems = report.problems(),
    )
}

/// Replays RAW into the sink through `rule`: every RAW object of the window becomes a new unordered batch
/// (`replay-{run}/{original batch}`), committed like any batch — upserts by key, dead letters, a ledger row —
/// without moving a checkpoint. Returns (objects, records) replayed.
/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// RAW objects replayed.
    pub objects: usize,
    /// Records replayed.
    pub records: usize,
    /// RAW objects of the window that no ledger row committed (archived before a crash, say), not replayed.
    pub uncommitted: Vec<String>,
}

/// Replays RAW objects of the window in the order their batches first committed (the ledger's order), so
/// that where two objects hold versions of one key, the later one still wins; objects no ledger row committed
/// are skipped and listed.
pub async fn replay(
    run: &Run<'_>,
    rule: Arc<RulePlugin>,
    retry: &crate::config::RetryConfig,
) -> Result<Replayed, ReconcileError> {
    let ledger_rows = run.sink.ledger().await?;
    let mut committed_at: HashMap<String, usize> = HashMap::new();
    let mut ledger: HashMap<String, Vec<LedgerRow>> = HashMap::new();
    for (i, row) in ledger_rows.into_iter().enumerate() {
        let object = object_of(&row.raw_ref).to_string();
        committed_at.entry(object.clone()).or_insert(i);
        ledger.entry(object).or_default().push(row);
    }
    let mut keys = run.raw.list(run.window).await?;
    if let Some(batch) = &run.window.batch {
        keys.retain(|k| {
            ledger
                .get(k)
                .is_some_and(|l| l.iter().any(|l| &l.batch_id == batch))
        });
    }
    let (mut keys, uncommitted): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| committed_at.contains_key(k));
    keys.sort_by_key(|k| committed_at[k]);
    let run_id = crate::record::wall_clock_us() / 1000;
    let instances = run.rule_instances;
    let bar = progress_bar(run.progress, keys.len() as u64);
    let (mut objects, mut records) = (0, 0);
    for key in keys {
        let lines = run.raw.get(&key).await?;
        let first = ledger.get(&key).and_then(|l| l.first());
        let (source, partition) = match first {
            Some(l) => (l.source.clone(), l.partition.clone()),
            None => partition_of_key(&key),
        };
        let original = first
            .map(|l| l.batch_id.clone())
            .unwrap_or_else(|| key.clone());
        let mut batch = crate::record::Batch {
            id: format!("replay-{run_id}/{original}"),
            source,
            partition,
            prev_position: String::new(),
            ordered: false,
            positions: lines.iter().map(|l| l.position.clone()).collect(),
            records: lines.iter().map(source_record).collect(),
            bytes: 0,
            started: std::time::Instant::now(),
            received_us: Vec::new(),
        };
        batch.bytes = batch.records.iter().map(|r| r.payload.len()).sum();
        let raw_refs: Vec<String> = (1..=lines.len()).map(|n| format!("{key}#{n}")).collect();
        let tables = run.tables.to_vec();
        let max_rows = run.max_rows;
        let r = rule.clone();
        let (batch, mut outcomes) = tokio::task::spawn_blocking(move || {
            let o = crate::pipeline::run_rule(
                &r,
                &batch.id,
                &batch.records,
                &tables,
                max_rows,
                instances,
            );
            (batch, o)
        })
        .await
        .map_err(|e| ReconcileError::Rule(format!("rule run: {e}")))?;
        loop {
            let load = crate::sink::Load {
                batch: &batch,
                raw_refs: &raw_refs,
                outcomes: &outcomes,
                tables: run.tables,
                rule_digest: rule.digest(),
                loaded_at_us: crate::record::wall_clock_us(),
            };
            match crate::pipeline::retrying(retry, "replay commit", || run.sink.commit(&load)).await
            {
                Ok(_) => break,
                Err((_, SinkError::Rejected(refused))) => {
                    for (i, reason) in refused {
                        outcomes[i] = RecordOutcome::Reject(validate::RejectStage::Sink, reason);
                    }
                }
                Err((_, e)) => return Err(e.into()),
            }
        }
        objects += 1;
        records += lines.len();
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Replayed {
        objects,
        records,
        uncommitted,
    })
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
            kind: "drift".into(),
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
