//! What a run committed: the run summary (bounded: the most frequent reasons, with counts) and the metrics
//! each commit adds.

use super::*;

/// What a run did, for the end-of-run summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Batches committed.
    pub batches: usize,
    /// Records read and committed.
    pub records_in: usize,
    /// Rows upserted per table.
    pub rows: BTreeMap<String, usize>,
    /// Records dropped, by reason (the most frequent reasons; bounded).
    pub dropped: Tally,
    /// Records rejected (dead-lettered), by reason (the most frequent reasons; bounded).
    pub rejected: Tally,
    /// Where RAW went.
    pub raw: String,
    /// Where rows and dead letters went.
    pub sink: String,
    /// Per record, from its receipt by the source to the commit of its batch.
    pub latency: crate::metrics::Histogram,
}

impl Summary {
    pub(super) fn add(&mut self, tables: &[TableSpec], outcomes: &[RecordOutcome]) {
        self.batches += 1;
        self.records_in += outcomes.len();
        for o in outcomes {
            match o {
                RecordOutcome::Emit(rows) => {
                    for row in rows {
                        *self.rows.entry(tables[row.table].name.clone()).or_default() += 1;
                    }
                }
                RecordOutcome::Drop(r) => self.dropped.add(r, 1),
                RecordOutcome::Reject(_, r) => self.rejected.add(r, 1),
            }
        }
    }

    /// Adds another run's counts (one worker running several partitions).
    pub fn merge(&mut self, other: Summary) {
        self.batches += other.batches;
        self.records_in += other.records_in;
        for (k, v) in other.rows {
            *self.rows.entry(k).or_default() += v;
        }
        self.dropped.merge(other.dropped);
        self.rejected.merge(other.rejected);
        if self.raw.is_empty() {
            self.raw = other.raw;
            self.sink = other.sink;
        }
        self.latency.merge(&other.latency);
    }

    /// The summary as text for a terminal.
    pub fn render(&self) -> String {
        let mut s = format!(
            "records in: {} in {} batches\n",
            self.records_in, self.batches
        );
        s.push_str("rows upserted:\n");
        if self.rows.is_empty() {
            s.push_str("  (none)\n");
        }
        for (t, n) in &self.rows {
            s.push_str(&format!("  {t}: {n}\n"));
        }
        for (what, tally) in [("dropped", &self.dropped), ("rejected", &self.rejected)] {
            s.push_str(&format!("{what}: {}\n", tally.total()));
            for (r, n) in tally.top() {
                s.push_str(&format!("  {n} × {r}\n"));
            }
            if tally.other() > 0 {
                s.push_str(&format!("  {} × (other reasons)\n", tally.other()));
            }
        }
        if let (Some(p50), Some(p99)) = (self.latency.quantile(0.5), self.latency.quantile(0.99)) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            s.push_str(&format!(
                "latency, receive to commit: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
                ms(p50),
                ms(p99),
                ms(self.latency.max())
            ));
        }
        s.push_str(&format!("RAW copies: {}\n", self.raw));
        s.push_str(&format!(
            "rows, ledger and dead letters: {} (table weir_dead_letters)\n",
            self.sink
        ));
        s
    }
}

/// Counts by reason with bounded memory, for a summary that lives as long as the worker: reasons are cut to
/// [`Tally::REASON_BYTES`]; past [`Tally::KEEP_MAX`] distinct reasons, all but the [`Tally::TOP`] most
/// frequent are folded into one "other" count. Totals stay exact.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub(super) counts: std::collections::HashMap<String, usize>,
    pub(super) other: usize,
}

impl Tally {
    /// Reasons shown.
    pub const TOP: usize = 20;
    /// Distinct reasons kept before folding.
    pub const KEEP_MAX: usize = 1_000;
    /// Longest reason kept, UTF-8 bytes.
    pub const REASON_BYTES: usize = 512;

    /// Counts `n` more of `reason`.
    pub fn add(&mut self, reason: &str, n: usize) {
        let reason = crate::sink::clean_text(reason, Self::REASON_BYTES);
        *self.counts.entry(reason).or_default() += n;
        if self.counts.len() > Self::KEEP_MAX {
            let ranked = self.ranked();
            self.other += ranked[Self::TOP..].iter().map(|(_, n)| n).sum::<usize>();
            self.counts = ranked.into_iter().take(Self::TOP).collect();
        }
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: Tally) {
        for (r, n) in other.counts {
            self.add(&r, n);
        }
        self.other += other.other;
    }

    /// Every counted record.
    pub fn total(&self) -> usize {
        self.counts.values().sum::<usize>() + self.other
    }

    /// Records whose reason is not among the kept ones.
    pub fn other(&self) -> usize {
        self.other
            + self
                .ranked()
                .iter()
                .skip(Self::TOP)
                .map(|(_, n)| n)
                .sum::<usize>()
    }

    /// The most frequent reasons with their counts, most frequent first.
    pub fn top(&self) -> Vec<(String, usize)> {
        self.ranked().into_iter().take(Self::TOP).collect()
    }

    /// Distinct reasons held (bounded by [`Tally::KEEP_MAX`]).
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    pub(super) fn ranked(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> =
            self.counts.iter().map(|(r, n)| (r.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// Counts a committed batch in the process's metrics.
pub(super) fn record_metrics(
    tables: &[TableSpec],
    outcomes: &[RecordOutcome],
    load: Duration,
    end_to_end: Duration,
) {
    let m = crate::metrics::global();
    m.observe_stage("load", load);
    m.observe_stage("end_to_end", end_to_end);
    m.inc("weir_batches_total", &[], 1);
    m.observe("weir_batch_records", &[], outcomes.len() as f64);
    m.committed();
    let (mut emitted, mut dropped, mut rejected) = (0, 0, 0);
    let mut rows: BTreeMap<&str, u64> = BTreeMap::new();
    let mut dead: BTreeMap<&'static str, u64> = BTreeMap::new();
    for o in outcomes {
        match o {
            RecordOutcome::Emit(r) => {
                emitted += 1;
                for row in r {
                    *rows.entry(&tables[row.table].name).or_default() += 1;
                }
            }
            RecordOutcome::Drop(_) => dropped += 1,
            RecordOutcome::Reject(stage, _) => {
                rejected += 1;
                *dead.entry(stage.as_str()).or_default() += 1;
            }
        }
    }
    for (outcome, n) in [
        ("emitted", emitted),
        ("dropped", dropped),
        ("rejected", rejected),
    ] {
        m.inc("weir_records_total", &[("outcome", outcome)], n);
    }
    for (table, n) in rows {
        m.inc("weir_rows_total", &[("table", table)], n);
    }
    for (stage, n) in dead {
        m.inc("weir_dead_letters_total", &[("stage", stage)], n);
    }
}
