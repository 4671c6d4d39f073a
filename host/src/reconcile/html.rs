//! The self-contained HTML report.

use super::*;

/// One self-contained HTML page: totals, an hourly stacked chart (inline SVG) of emitted, dropped, rejected
/// and unaccounted records, the partitions and the differences.
pub fn html(report: &Report, title: &str) -> String {
    let svg = chart(report);
    let legend: String = COLORS
        .iter()
        .map(|(n, c)| format!(r#"<span class="key"><i style="background:{c}"></i>{n}</span>"#))
        .collect();
    let parts = partition_rows(report);
    let diffs = difference_rows(report);
    let notes = notes(report);
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

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart's record classes, bottom to top, and their colours.
const COLORS: [(&str, &str); 4] = [
    ("emitted", "#2e7d32"),
    ("dropped", "#f9a825"),
    ("rejected", "#c62828"),
    ("unaccounted", "#6a1b9a"),
];

/// The hourly stacked bar chart as inline SVG.
fn chart(report: &Report) -> String {
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
        for (name, color) in COLORS {
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
    svg
}

/// One table row per partition.
fn partition_rows(report: &Report) -> String {
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
    parts
}

/// One table row per listed difference.
fn difference_rows(report: &Report) -> String {
    let mut diffs = String::new();
    for d in &report.differences {
        diffs.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(d.kind.as_str()),
            esc(&d.table),
            esc(&d.key),
            esc(&d.record_id),
            esc(d.column.as_deref().unwrap_or("")),
            esc(d.expected.as_deref().unwrap_or("")),
            esc(d.actual.as_deref().unwrap_or(""))
        ));
    }
    diffs
}

/// Notes on what the report could not compare: missing RAW objects, rows without a batch, missing rules.
fn notes(report: &Report) -> String {
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
    notes
}
