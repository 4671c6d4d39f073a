//! What every sink shares about rows: the ledger's bounded reasons, client-side dedupe to the latest version
//! per key (with the database's own key equality), and the helpers of lineage and SQL text.

use super::*;

/// Counts of one batch, as stored in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records in the batch.
    pub records_in: usize,
    /// Records that emitted rows (possibly zero rows).
    pub emitted: usize,
    /// Records dropped.
    pub dropped: usize,
    /// Records rejected.
    pub rejected: usize,
    /// Rows emitted, all tables.
    pub rows_out: usize,
    /// Drop reason → count.
    pub drop_reasons: BTreeMap<String, usize>,
}

impl Counts {
    /// The ledger counts of a batch's outcomes.
    pub fn of(outcomes: &[RecordOutcome]) -> Counts {
        let mut c = Counts {
            records_in: outcomes.len(),
            ..Counts::default()
        };
        for o in outcomes {
            match o {
                RecordOutcome::Emit(rows) => {
                    c.emitted += 1;
                    c.rows_out += rows.len();
                }
                RecordOutcome::Drop(reason) => {
                    c.dropped += 1;
                    *c.drop_reasons.entry(reason.clone()).or_default() += 1;
                }
                RecordOutcome::Reject(..) => c.rejected += 1,
            }
        }
        c.drop_reasons = bound_reasons(std::mem::take(&mut c.drop_reasons));
        c
    }

    /// The drop reasons as the ledger stores them: JSON of at most [`LEDGER_REASONS_MAX_BYTES`].
    pub fn drop_reasons_json(&self) -> String {
        serde_json::to_string(&self.drop_reasons).expect("a map of strings serializes")
    }
}

/// Most distinct drop reasons the ledger keeps per batch; the others are counted under [`OTHER_REASONS`].
pub const LEDGER_REASONS: usize = 32;

/// Longest drop reason the ledger keeps, in UTF-8 bytes (longer ones are cut on a character boundary).
pub const LEDGER_REASON_BYTES: usize = 256;

/// Longest `drop_reasons` JSON text, bytes: well inside its `VARCHAR(65535)` column.
pub const LEDGER_REASONS_MAX_BYTES: usize = 60_000;

/// The ledger's key for the drop reasons past [`LEDGER_REASONS`].
pub const OTHER_REASONS: &str = "(other reasons)";

/// Bounds what weir itself writes about drops, whatever a rule says: each reason cut to
/// [`LEDGER_REASON_BYTES`], the [`LEDGER_REASONS`] most frequent kept (ties: the first in text order), the rest
/// counted under [`OTHER_REASONS`], and the JSON text under [`LEDGER_REASONS_MAX_BYTES`]. A rule that gives every
/// record its own reason can therefore never make a ledger row too long to commit.
pub fn bound_reasons(reasons: BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    let mut cut: BTreeMap<String, usize> = BTreeMap::new();
    for (r, n) in reasons {
        *cut.entry(clean_text(&r, LEDGER_REASON_BYTES)).or_default() += n;
    }
    let mut ranked: Vec<(String, usize)> = cut.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut other: usize = 0;
    let mut keep = LEDGER_REASONS;
    loop {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        let mut rest = other;
        for (i, (r, n)) in ranked.iter().enumerate() {
            if i < keep && r != OTHER_REASONS {
                out.insert(r.clone(), *n);
            } else {
                rest += n;
            }
        }
        if rest > 0 {
            *out.entry(OTHER_REASONS.to_string()).or_default() += rest;
        }
        let len = serde_json::to_string(&out).map(|s| s.len()).unwrap_or(0);
        if len <= LEDGER_REASONS_MAX_BYTES || keep == 0 {
            return out;
        }
        keep /= 2;
        other = 0;
    }
}

/// Text fit for any `VARCHAR(max_bytes)`: NUL characters (which PostgreSQL refuses) replaced, cut to
/// `max_bytes` UTF-8 bytes on a character boundary.
pub fn clean_text(text: &str, max_bytes: usize) -> String {
    let mut s = text.replace('\0', "\u{FFFD}");
    if s.len() > max_bytes {
        let mut cut = max_bytes.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The first bytes of a payload, as text, for a dead letter (the full record is in RAW).
pub fn payload_preview(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(256)];
    String::from_utf8_lossy(cut).replace('\0', "\u{FFFD}")
}

/// Keeps one row per key, in first-seen order (Redshift does not enforce keys): the latest, or with a version
/// column the one with the highest version (ties: the latest). The stored row is compared in SQL.
pub(crate) fn dedupe<'a, T>(
    rows: Vec<(&'a CheckedRow, T)>,
    key: &[usize],
    version: Option<usize>,
    equality: KeyEquality,
) -> Vec<(&'a CheckedRow, T)> {
    let mut best: HashMap<Vec<Cell>, usize> = HashMap::new();
    for (i, (row, _)) in rows.iter().enumerate() {
        let k: Vec<Cell> = key
            .iter()
            .map(|k| equality.normalize(&row.cells[*k]))
            .collect();
        match (best.get(&k), version) {
            (Some(&j), Some(v))
                if version_cmp(&rows[j].0.cells[v], &row.cells[v])
                    == std::cmp::Ordering::Greater => {}
            _ => {
                best.insert(k, i);
            }
        }
    }
    let keep: HashSet<usize> = best.into_values().collect();
    rows.into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, r)| r)
        .collect()
}

/// How the database compares key values, so that the client's dedupe of a batch agrees with the merge's
/// `=`: two keys SQL takes for one must be one row in the stage too (or the stage holds two rows for one
/// key, which the merge turns into duplicates or Redshift's MERGE refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEquality {
    /// PostgreSQL and SQLite: `-0.0 = 0.0`, `-0.00 = 0.00`; text compares exactly.
    Standard,
    /// Redshift: also ignores trailing blanks when comparing `VARCHAR`s (`'a' = 'a  '`).
    Redshift,
}

impl KeyEquality {
    /// The value a key cell compares as.
    pub fn normalize(self, cell: &Cell) -> Cell {
        match cell {
            Cell::Float(x) if *x == 0.0 => Cell::Float(0.0),
            Cell::Decimal(d)
                if d.starts_with('-') && d[1..].bytes().all(|b| b == b'0' || b == b'.') =>
            {
                Cell::Decimal(d[1..].to_string())
            }
            Cell::Text(t) if self == KeyEquality::Redshift => {
                Cell::Text(t.trim_end_matches(' ').to_string())
            }
            other => other.clone(),
        }
    }
}

/// The order of two versions of a row, as SQL compares them; NULL is lower than any value.
pub fn version_cmp(a: &Cell, b: &Cell) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Cell::Null, Cell::Null) => Ordering::Equal,
        (Cell::Null, _) => Ordering::Less,
        (_, Cell::Null) => Ordering::Greater,
        (Cell::Int(x), Cell::Int(y)) => x.cmp(y),
        (Cell::TimestampUs(x), Cell::TimestampUs(y)) => x.cmp(y),
        (Cell::Float(x), Cell::Float(y)) => x.total_cmp(y),
        (Cell::Decimal(x), Cell::Decimal(y)) => decimal_cmp(x, y),
        (Cell::Text(x), Cell::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Cell::Bool(x), Cell::Bool(y)) => x.cmp(y),
        _ => Ordering::Equal, // one column has one type
    }
}

/// Compares two decimal texts of the same scale (`-12.50`, `3.00`) numerically.
pub(super) fn decimal_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> (bool, &str, &str) {
        let (neg, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let int = int.trim_start_matches('0');
        let zero = int.is_empty() && frac.bytes().all(|b| b == b'0');
        (neg && !zero, int, frac)
    }
    let (na, ia, fa) = parts(a);
    let (nb, ib, fb) = parts(b);
    let magnitude = ia
        .len()
        .cmp(&ib.len())
        .then_with(|| ia.cmp(ib))
        .then_with(|| {
            let w = fa.len().max(fb.len());
            format!("{fa:0<w$}").cmp(&format!("{fb:0<w$}"))
        });
    match (na, nb) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
    }
}

/// Emitted rows per table, in record order, with their record ids; only records in `only` when given.
pub(crate) fn rows_by_table<'a>(
    load: &'a Load<'_>,
    tables: usize,
    only: Option<&[usize]>,
) -> Vec<Vec<(&'a CheckedRow, &'a str)>> {
    let mut per_table: Vec<Vec<(&CheckedRow, &str)>> = vec![Vec::new(); tables];
    let records = load.batch.records.iter().zip(load.outcomes).enumerate();
    for (i, (record, outcome)) in records {
        if only.is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        if let RecordOutcome::Emit(rows) = outcome {
            for row in rows {
                per_table[row.table].push((row, record.id.as_str()));
            }
        }
    }
    per_table
}

/// A double-quoted SQL identifier (only declared, checked names are ever quoted into SQL).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `name TYPE NOT NULL` column definitions of the lineage columns, in a sink's type names.
pub(crate) fn lineage_ddl(sql_type: impl Fn(ColumnType) -> String) -> Vec<String> {
    LINEAGE_COLUMNS
        .iter()
        .zip(LINEAGE_TYPES)
        .map(|(name, ty)| format!("{name} {} NOT NULL", sql_type(ty)))
        .collect()
}
