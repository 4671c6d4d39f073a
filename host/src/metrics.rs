//! Measurements a worker keeps about itself.

use std::time::Duration;

/// Smallest resolved duration, µs; shorter ones fall in the first bucket.
const FLOOR_US: f64 = 10.0;
/// Bucket growth: every bucket is 4 % wider than the one before, so quantiles are within 4 %.
const GROWTH: f64 = 1.04;
/// Buckets up to about an hour.
const BUCKETS: usize = 500;

/// A log-scale histogram of durations with bounded memory (500 counters), for latency quantiles.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if (us as f64) <= FLOOR_US {
            return 0;
        }
        let i = ((us as f64 / FLOOR_US).ln() / GROWTH.ln()).ceil() as usize;
        i.min(BUCKETS - 1)
    }

    /// Counts one duration.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0–1): the upper bound of the bucket holding it (never above the maximum seen).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = FLOOR_US * GROWTH.powi(i as i32);
                return Some(Duration::from_micros((upper as u64).min(self.max_us)));
            }
        }
        Some(self.max())
    }

    /// The longest duration counted.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }
}

/// Upper bounds (seconds) of the Prometheus histogram buckets of stage durations.
const STAGE_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `weir_batch_records` buckets: records per committed batch.
const RECORD_BUCKETS: [f64; 14] = [
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0, 50000.0,
    100000.0, 500000.0,
];

/// The buckets of a histogram.
fn buckets(name: &str) -> &'static [f64; 14] {
    if name == "weir_batch_records" {
        &RECORD_BUCKETS
    } else {
        &STAGE_BUCKETS
    }
}

/// What each metric means, and its Prometheus type: the `/metrics` catalogue.
const CATALOGUE: [(&str, &str, &str); 19] = [
    ("weir_batches_total", "counter", "Batches committed."),
    (
        "weir_records_total",
        "counter",
        "Records committed, by outcome (emitted, dropped, rejected).",
    ),
    (
        "weir_rows_total",
        "counter",
        "Final rows upserted, by table.",
    ),
    (
        "weir_dead_letters_total",
        "counter",
        "Records dead-lettered, by stage (rule, sandbox, validate, sink).",
    ),
    (
        "weir_rule_traps_total",
        "counter",
        "Rule calls that trapped, timed out or ran out of memory.",
    ),
    (
        "weir_stage_seconds",
        "histogram",
        "Duration per batch of each stage: fetch (first record to batch), raw, rule, load, end_to_end (first record received to commit).",
    ),
    (
        "weir_kinesis_millis_behind_latest",
        "gauge",
        "Kinesis: how far each shard reader is behind the tip of its shard.",
    ),
    (
        "weir_sqs_messages_in_flight",
        "gauge",
        "SQS: received messages not yet deleted.",
    ),
    (
        "weir_sqs_oldest_in_flight_seconds",
        "gauge",
        "SQS: how long the oldest message this worker holds has been in flight (0 when none); updated every quarter visibility timeout.",
    ),
    (
        "weir_leases_held",
        "gauge",
        "Kinesis shard leases this worker holds.",
    ),
    (
        "weir_ready",
        "gauge",
        "1 while the worker is ready (rule loaded, sink prepared, source open), 0 while starting or stopping.",
    ),
    ("weir_up", "gauge", "Always 1: the worker is running."),
    (
        "weir_seconds_since_last_commit",
        "gauge",
        "Seconds since this worker last committed a batch (absent before its first commit): alert when it grows while the source has data.",
    ),
    (
        "weir_retries_total",
        "counter",
        "Operations retried after a transient failure, by stage (RAW write, commit, registration, staging write, grouped merge, …).",
    ),
    (
        "weir_http_requests_total",
        "counter",
        "Requests to the HTTP source, by route (`records`, `firehose`) and status code.",
    ),
    (
        "weir_s3_notifications_unreadable_total",
        "counter",
        "Messages of an S3 source's queue that are no S3 event notification (left for the queue's redrive policy).",
    ),
    (
        "weir_s3_objects_failed_total",
        "counter",
        "Objects an S3 source could not read (denied, replaced mid-read, unreadable gzip or CSV); their notifications stay in the queue.",
    ),
    (
        "weir_batch_records",
        "histogram",
        "Records per committed batch.",
    ),
    (
        "weir_rule_counter_total",
        "counter",
        "What rules counted with the host's `count` call, by metric name (the first 100 names; later ones as `(other)`).",
    ),
];

/// The names of every metric the worker exports (histograms also as `_bucket`, `_sum` and `_count` series).
pub fn names() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|(name, _, _)| *name)
}

/// Distinct `metric` names a rule may create in `weir_rule_counter_total`; later names are counted as `(other)`.
pub const MAX_RULE_METRICS: usize = 100;
/// Longest rule metric name kept, in bytes (cut on a UTF-8 boundary).
pub const MAX_RULE_METRIC_BYTES: usize = 64;

type Labels = Vec<(String, String)>;

/// Counters, gauges and histograms at one moment ([`Registry::snapshot`]).
type Snapshot = (
    std::collections::BTreeMap<(String, Labels), u64>,
    std::collections::BTreeMap<(String, Labels), f64>,
    std::collections::BTreeMap<(String, Labels), SecondsHistogram>,
);

/// A Prometheus histogram of seconds.
#[derive(Debug, Clone, Default)]
struct SecondsHistogram {
    buckets: [u64; STAGE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The worker's metrics for `/metrics`: counters, gauges and histograms keyed by name and labels. One per
/// process ([`global`]); every stage and backend records into it.
#[derive(Debug, Default)]
pub struct Registry {
    counters: std::sync::Mutex<std::collections::BTreeMap<(String, Labels), u64>>,
    gauges: std::sync::Mutex<std::collections::BTreeMap<(String, Labels), f64>>,
    histograms: std::sync::Mutex<std::collections::BTreeMap<(String, Labels), SecondsHistogram>>,
    last_commit: std::sync::Mutex<Option<std::time::Instant>>,
}

fn key(name: &str, labels: &[(&str, &str)]) -> (String, Labels) {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

impl Registry {
    /// Adds `by` to a counter.
    pub fn inc(&self, name: &str, labels: &[(&str, &str)], by: u64) {
        *self
            .counters
            .lock()
            .expect("not poisoned")
            .entry(key(name, labels))
            .or_default() += by;
    }

    /// Adds a rule's `count(metric, delta)` call to `weir_rule_counter_total`: a rule is user code, so the
    /// number and length of its names are bounded and a hostile rule cannot grow the registry.
    pub fn rule_count(&self, metric: &str, delta: u64) {
        let mut end = metric.len().min(MAX_RULE_METRIC_BYTES);
        while !metric.is_char_boundary(end) {
            end -= 1;
        }
        let name = &metric[..end];
        let mut counters = self.counters.lock().expect("not poisoned");
        let known = counters.contains_key(&key("weir_rule_counter_total", &[("metric", name)]));
        let names = counters
            .keys()
            .filter(|(n, _)| n == "weir_rule_counter_total")
            .count();
        let label = if known || names < MAX_RULE_METRICS {
            name
        } else {
            "(other)"
        };
        let v = counters
            .entry(key("weir_rule_counter_total", &[("metric", label)]))
            .or_default();
        *v = v.saturating_add(delta);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.gauges
            .lock()
            .expect("not poisoned")
            .insert(key(name, labels), value);
    }

    /// Adds `by` (may be negative) to a gauge.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        *self
            .gauges
            .lock()
            .expect("not poisoned")
            .entry(key(name, labels))
            .or_default() += by;
    }

    /// Counts one duration of a stage (`weir_stage_seconds{stage=…}`).
    pub fn observe_stage(&self, stage: &str, d: Duration) {
        self.observe("weir_stage_seconds", &[("stage", stage)], d.as_secs_f64());
    }

    /// Counts one value of a histogram.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut h = self.histograms.lock().expect("not poisoned");
        let h = h.entry(key(name, labels)).or_default();
        for (i, le) in buckets(name).iter().enumerate() {
            if value <= *le {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += value;
    }

    /// Every series now, with the age of the last commit among the gauges (it is computed when read).
    fn snapshot(&self) -> Snapshot {
        let counters = self.counters.lock().expect("not poisoned").clone();
        let mut gauges = self.gauges.lock().expect("not poisoned").clone();
        let histograms = self.histograms.lock().expect("not poisoned").clone();
        if let Some(at) = *self.last_commit.lock().expect("not poisoned") {
            gauges.insert(
                key("weir_seconds_since_last_commit", &[]),
                at.elapsed().as_secs_f64(),
            );
        }
        (counters, gauges, histograms)
    }

    /// A batch committed now (`weir_seconds_since_last_commit` counts from here).
    pub fn committed(&self) {
        *self.last_commit.lock().expect("not poisoned") = Some(std::time::Instant::now());
    }

    /// A counter's value (0 when never counted).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .expect("not poisoned")
            .get(&key(name, labels))
            .copied()
            .unwrap_or(0)
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        fn labels(l: &Labels, extra: Option<(&str, String)>) -> String {
            let mut parts: Vec<String> = l
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        }
        let (counters, gauges, histograms) = self.snapshot();
        let mut out = String::new();
        for (name, kind, help) in CATALOGUE {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match kind {
                "counter" => {
                    for ((n, l), v) in counters.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{n}{} {v}", labels(l, None));
                    }
                }
                "gauge" => {
                    for ((n, l), v) in gauges.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{n}{} {v}", labels(l, None));
                    }
                }
                _ => {
                    for ((n, l), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                        for (i, le) in buckets(n).iter().enumerate() {
                            let _ = writeln!(
                                out,
                                "{n}_bucket{} {}",
                                labels(l, Some(("le", le.to_string()))),
                                h.buckets[i]
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{n}_bucket{} {}",
                            labels(l, Some(("le", "+Inf".into()))),
                            h.count
                        );
                        let _ = writeln!(out, "{n}_sum{} {}", labels(l, None), h.sum);
                        let _ = writeln!(out, "{n}_count{} {}", labels(l, None), h.count);
                    }
                }
            }
        }
        out
    }
}

/// What [`Registry::emf`] wrote last: counters and histograms go out as the change since then.
#[derive(Debug, Default)]
pub struct EmfState {
    counters: std::collections::BTreeMap<(String, Labels), u64>,
    histograms: std::collections::BTreeMap<(String, Labels), SecondsHistogram>,
}

impl Registry {
    /// CloudWatch Embedded Metric Format: one JSON line per series (namespace `weir`, the labels as
    /// dimensions): counters as the change since the previous call (unit Count), gauges as their value,
    /// histograms as the observations since then (`Values` = bucket upper bounds, `Counts`; an observation
    /// above the last bound is counted at it). Series are bounded like the Prometheus ones.
    pub fn emf(&self, state: &mut EmfState, timestamp_ms: u64) -> Vec<String> {
        let (counters, gauges, histograms) = self.snapshot();
        let line = |name: &str, labels: &Labels, unit: &str, value: serde_json::Value| {
            let mut doc = serde_json::Map::new();
            let dims: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            doc.insert(
                "_aws".into(),
                serde_json::json!({
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": "weir",
                        "Dimensions": [dims],
                        "Metrics": [{ "Name": name, "Unit": unit }],
                    }],
                }),
            );
            for (k, v) in labels {
                doc.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            doc.insert(name.to_string(), value);
            serde_json::Value::Object(doc).to_string()
        };
        let mut out = Vec::new();
        for ((name, labels), v) in &counters {
            let before = state
                .counters
                .insert((name.clone(), labels.clone()), *v)
                .unwrap_or(0);
            out.push(line(name, labels, "Count", v.saturating_sub(before).into()));
        }
        for ((name, labels), v) in &gauges {
            let unit = if name.ends_with("_seconds") || name.contains("_seconds_") {
                "Seconds"
            } else if name.contains("millis") {
                "Milliseconds"
            } else {
                "None"
            };
            out.push(line(name, labels, unit, serde_json::json!(v)));
        }
        for ((name, labels), h) in &histograms {
            let before = state
                .histograms
                .insert((name.clone(), labels.clone()), h.clone())
                .unwrap_or_default();
            let bounds = buckets(name);
            let (mut values, mut counts) = (Vec::new(), Vec::new());
            let mut below = 0u64;
            for (i, le) in bounds.iter().enumerate() {
                // Prometheus buckets are cumulative: this bucket's own observations since last time.
                let cumulative = h.buckets[i] - before.buckets[i];
                let own = cumulative - below;
                below = cumulative;
                if own > 0 {
                    values.push(*le);
                    counts.push(own);
                }
            }
            let above = (h.count - before.count) - below;
            if above > 0 {
                values.push(bounds[bounds.len() - 1]);
                counts.push(above);
            }
            if values.is_empty() {
                continue;
            }
            let unit = if name == "weir_batch_records" {
                "Count"
            } else {
                "Seconds"
            };
            out.push(line(
                name,
                labels,
                unit,
                serde_json::json!({ "Values": values, "Counts": counts }),
            ));
        }
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let r = Registry::default();
        r.set("weir_up", &[], 1.0);
        r.set("weir_ready", &[], 0.0);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantiles of a known distribution come out within the bucket resolution.
    #[test]
    fn quantiles_within_resolution() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((500.0..=520.0).contains(&p50), "{p50}");
        assert!((990.0..=1000.0).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_millis(1000));
        assert_eq!(h.count(), 1000);
    }

    /// The exposition has HELP/TYPE lines, labelled samples and cumulative histogram buckets.
    /// EMF lines carry counter changes since the previous call, gauges, and the histogram observations since
    /// then, each with its labels as dimensions.
    #[test]
    fn emf_lines_carry_changes() {
        let r = Registry::default();
        let mut state = EmfState::default();
        r.inc("weir_records_total", &[("outcome", "emitted")], 5);
        r.set("weir_leases_held", &[], 2.0);
        r.observe("weir_batch_records", &[], 300.0);
        r.observe("weir_batch_records", &[], 1e9);
        let parse = |lines: Vec<String>| -> Vec<serde_json::Value> {
            lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let first = parse(r.emf(&mut state, 1000));
        let find = |docs: &[serde_json::Value], name: &str| {
            docs.iter()
                .find(|d| d.get(name).is_some())
                .cloned()
                .unwrap()
        };
        let records = find(&first, "weir_records_total");
        assert_eq!(records["weir_records_total"], 5);
        assert_eq!(records["outcome"], "emitted");
        assert_eq!(
            records["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "outcome"
        );
        assert_eq!(records["_aws"]["Timestamp"], 1000);
        assert_eq!(find(&first, "weir_leases_held")["weir_leases_held"], 2.0);
        let sizes = find(&first, "weir_batch_records");
        assert_eq!(
            sizes["weir_batch_records"]["Values"],
            serde_json::json!([500.0, 500000.0])
        );
        assert_eq!(
            sizes["weir_batch_records"]["Counts"],
            serde_json::json!([1, 1])
        );
        r.inc("weir_records_total", &[("outcome", "emitted")], 2);
        let second = parse(r.emf(&mut state, 2000));
        assert_eq!(find(&second, "weir_records_total")["weir_records_total"], 2);
        assert!(second.iter().all(|d| d.get("weir_batch_records").is_none()));
    }

    /// A rule's counter names are bounded in number and length.
    #[test]
    fn rule_counters_bounded() {
        let r = Registry::default();
        for i in 0..MAX_RULE_METRICS + 50 {
            r.rule_count(&format!("m{i}"), 2);
        }
        r.rule_count("m0", 1);
        r.rule_count(&"é".repeat(100), 1);
        assert_eq!(r.counter("weir_rule_counter_total", &[("metric", "m0")]), 3);
        assert_eq!(
            r.counter("weir_rule_counter_total", &[("metric", "(other)")]),
            101
        );
        let text = r.render();
        assert_eq!(
            text.matches("weir_rule_counter_total{").count(),
            MAX_RULE_METRICS + 1
        );
    }

    #[test]
    fn prometheus_text() {
        let r = Registry::default();
        r.inc("weir_records_total", &[("outcome", "emitted")], 5);
        r.inc("weir_records_total", &[("outcome", "emitted")], 2);
        r.set(
            "weir_kinesis_millis_behind_latest",
            &[("shard", "s\"1")],
            250.0,
        );
        r.observe_stage("load", Duration::from_millis(30));
        r.observe_stage("load", Duration::from_secs(2));
        let text = r.render();
        assert!(text.contains("# TYPE weir_records_total counter"));
        assert!(
            text.contains("weir_records_total{outcome=\"emitted\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_kinesis_millis_behind_latest{shard=\"s\\\"1\"} 250\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_stage_seconds_bucket{stage=\"load\",le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_stage_seconds_bucket{stage=\"load\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_stage_seconds_count{stage=\"load\"} 2\n"),
            "{text}"
        );
        assert_eq!(
            r.counter("weir_records_total", &[("outcome", "emitted")]),
            7
        );
        // Before any commit there is no age; batch sizes have buckets of their own.
        assert!(
            !text.contains("\nweir_seconds_since_last_commit "),
            "{text}"
        );
        r.observe("weir_batch_records", &[], 300.0);
        r.committed();
        let text = r.render();
        assert!(
            text.contains("weir_batch_records_bucket{le=\"500\"} 1\n")
                && text.contains("weir_batch_records_bucket{le=\"250\"} 0\n"),
            "{text}"
        );
        let age = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_seconds_since_last_commit "))
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("{text}"));
        assert!((0.0..60.0).contains(&age), "{age}");
    }
}
