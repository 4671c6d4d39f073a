//! Rule overhead: µs per record of the orders rule run through the WebAssembly runtime versus the same
//! Rust code compiled natively into the host, at batch sizes 1, 100 and 1000.
//!
//!   scripts/build-plugins.sh && cargo bench -p weir --bench rule_overhead
//!
//! `cargo test` runs this binary as a quick smoke check (a few records, no timing claims).

use std::time::{Duration, Instant};

use weir::rules::{RuleLimits, RuleRuntime, SourceRecord, validate};
use weir::schema::{ColumnType, TableSpec};
use weir_rule::Rule as _;

/// Deterministic order payloads of about 230 bytes, like the example stream.
fn payloads(n: usize) -> Vec<Vec<u8>> {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    (0..n)
        .map(|i| {
            let lines = 1 + next() % 2;
            let lines: Vec<String> = (0..lines)
                .map(|_| {
                    format!(
                        r#"{{"sku":"SKU-{}","qty":{},"unit_price":"{}.{:02}"}}"#,
                        next() % 100,
                        1 + next() % 5,
                        next() % 50,
                        next() % 100
                    )
                })
                .collect();
            format!(
                r#"{{"order_id":"o-{i:08}","customer_id":"c-{}","placed_at":"2026-11-21T10:{:02}:30Z","currency":"EUR","test":false,"shipping":{{"country":"ES","city":"Madrid"}},"lines":[{}]}}"#,
                next() % 10000,
                next() % 60,
                lines.join(",")
            )
            .into_bytes()
        })
        .collect()
}

fn tables() -> Vec<TableSpec> {
    let t = |name: &str, cols: &[(&str, &str)], key: &[&str]| {
        TableSpec::new(
            name.into(),
            cols.iter()
                .map(|(c, t)| (c.to_string(), t.parse::<ColumnType>().unwrap()))
                .collect(),
            key.iter().map(|k| k.to_string()).collect(),
        )
    };
    vec![
        t(
            "orders",
            &[
                ("order_id", "varchar(36)"),
                ("customer_id", "varchar(64)"),
                ("placed_at", "timestamptz"),
                ("currency", "varchar(3)"),
                ("total", "decimal(18,2)"),
                ("line_count", "integer"),
                ("country", "varchar(2)"),
                ("shipping", "super"),
            ],
            &["order_id"],
        ),
        t(
            "order_lines",
            &[
                ("order_id", "varchar(36)"),
                ("line_no", "integer"),
                ("sku", "varchar(64)"),
                ("qty", "integer"),
                ("unit_price", "decimal(18,2)"),
                ("amount", "decimal(18,2)"),
            ],
            &["order_id", "line_no"],
        ),
    ]
}

/// Runs `f` over all records in batches of `size` until at least `min_time` has passed; µs per record.
fn measure(
    records: usize,
    size: usize,
    min_time: Duration,
    mut f: impl FnMut(usize, usize),
) -> f64 {
    let started = Instant::now();
    let mut done = 0usize;
    loop {
        let mut start = 0;
        while start < records {
            let end = (start + size).min(records);
            f(start, end);
            start = end;
        }
        done += records;
        if started.elapsed() >= min_time {
            break;
        }
    }
    started.elapsed().as_secs_f64() * 1e6 / done as f64
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (n, min_time) = if smoke {
        (200, Duration::ZERO)
    } else {
        (20_000, Duration::from_secs(3))
    };
    let payloads = payloads(n);
    let avg = payloads.iter().map(Vec::len).sum::<usize>() / n;

    let host_records: Vec<SourceRecord> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| SourceRecord {
            id: format!("file/bench/{}", i + 1),
            partition_key: "bench".into(),
            arrived_at_ms: 0,
            attributes: vec![],
            payload: p.clone(),
        })
        .collect();
    // The same records as the SDK's type, for the native call.
    let guest_records: Vec<weir_rule::SourceRecord> = host_records
        .iter()
        .map(|r| weir_rule::SourceRecord {
            id: r.id.clone(),
            partition_key: r.partition_key.clone(),
            arrived_at_ms: r.arrived_at_ms,
            attributes: r.attributes.clone(),
            payload: r.payload.clone(),
        })
        .collect();

    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/orders.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run scripts/build-plugins.sh",
        wasm.display()
    );
    let runtime = RuleRuntime::new(RuleRuntime::default_cache_dir()).expect("engine");
    let limits = RuleLimits {
        memory_bytes: 256 << 20,
        deadline: Duration::from_secs(10),
    };
    let plugin = runtime
        .load(&wasm, limits, vec![])
        .expect("orders plugin loads");
    let tables = tables();
    let mut native = orders::Orders::init(&weir_rule::Settings::default()).unwrap();

    // The two paths must agree before their speed means anything.
    let wasm_out = plugin.process("check", &host_records);
    let native_out = native.process_batch(&guest_records);
    assert_eq!(wasm_out.len(), native_out.len());
    for (w, n) in wasm_out.iter().zip(&native_out) {
        assert_eq!(
            format!("{:?}", w.as_ref().unwrap()),
            format!("{n:?}"),
            "wasm and native outcomes differ"
        );
    }
    let rejected = wasm_out
        .into_iter()
        .map(|o| validate::check(o, &tables, 10_000))
        .filter(|o| matches!(o, validate::RecordOutcome::Reject(..)))
        .count();
    assert_eq!(rejected, 0, "generated orders must all be valid");

    println!("orders rule, {n} records of ~{avg} bytes; µs per record (lower is better)");
    println!("| batch | native | wasm | wasm / native | wasm + host checks |");
    println!("|------:|-------:|-----:|--------------:|-------------------:|");
    for size in [1, 100, 1000] {
        let native_us = measure(n, size, min_time, |a, b| {
            std::hint::black_box(native.process_batch(&guest_records[a..b]));
        });
        let wasm_us = measure(n, size, min_time, |a, b| {
            std::hint::black_box(plugin.process("bench", &host_records[a..b]));
        });
        let checked_us = measure(n, size, min_time, |a, b| {
            let out: Vec<_> = plugin
                .process("bench", &host_records[a..b])
                .into_iter()
                .map(|o| validate::check(o, &tables, 10_000))
                .collect();
            std::hint::black_box(out);
        });
        println!(
            "| {size:>5} | {native_us:>6.2} | {wasm_us:>4.2} | {:>13.2} | {checked_us:>18.2} |",
            wasm_us / native_us
        );
    }
}
