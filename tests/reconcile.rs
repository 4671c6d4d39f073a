//! `weir reconcile`, `weir replay` and shadow runs against real PostgreSQL (and the embedded SQLite default),
//! with local RAW: a clean pipeline reconciles with nothing to report; tampering is found exactly; replay
//! repairs what RAW can repair; a shadow run of a new rule version reports its differences and writes nothing.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// `weir reconcile -c config --json [extra]`: (exit success, report).
fn reconcile(config: &Path, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["reconcile", "-c", config.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = weir(&args, &[]);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    (out.status.success(), report)
}

/// The sum of a per-partition field over all partitions.
fn total(report: &Value, field: &str) -> u64 {
    report["partitions"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| match &p[field] {
            Value::Object(m) => m.values().map(|v| v.as_u64().unwrap()).sum(),
            v => v.as_u64().unwrap(),
        })
        .sum()
}

/// Runs the quickstart into PostgreSQL; returns the database, its folder and config.
async fn loaded_quickstart() -> (TestDb, tempfile::TempDir, std::path::PathBuf) {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    (db, dir, config)
}

/// A clean pipeline reconciles with every RAW record accounted for and nothing to report, on PostgreSQL.
#[tokio::test]
async fn clean_pipeline_reconciles_on_postgres() {
    needs!("clean_pipeline_reconciles_on_postgres": Postgres, Plugins);
    let (_db, _dir, config) = loaded_quickstart().await;
    let (ok, report) = reconcile(&config, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(total(&report, "raw_records"), 17);
    assert_eq!(total(&report, "emitted"), 5);
    assert_eq!(total(&report, "dropped"), 2);
    assert_eq!(total(&report, "rejected"), 10);
    assert_eq!(
        report["partitions"]["file/orders.jsonl"]["rows"]["orders"],
        5
    );
    assert_eq!(
        report["partitions"]["file/orders.jsonl"]["rows"]["order_lines"],
        12
    );
    for field in [
        "unaccounted",
        "missing_rows",
        "orphan_rows",
        "unexpected_rows",
        "drifted_fields",
    ] {
        assert_eq!(total(&report, field), 0, "{field}: {report:#}");
    }
    assert_eq!(report["difference_counts"], serde_json::json!({}));
    assert_eq!(report["objects"], 5);
}

/// The embedded default (SQLite) reconciles the same way, and the text summary says so.
#[test]
fn clean_pipeline_reconciles_on_sqlite() {
    needs!("clean_pipeline_reconciles_on_sqlite": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = weir(&["reconcile", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no problems"), "{text}");
    let (_, report) = reconcile(&config, &[]);
    assert_eq!(total(&report, "emitted"), 5);
    assert_eq!(total(&report, "rejected"), 10);
}

/// A deleted final row, an edited final value and a removed RAW object are exactly the three problems found;
/// replay repairs the first two, and reconcile then reports only the missing RAW object.
#[tokio::test]
async fn tampering_is_found_exactly_and_replay_repairs_it() {
    needs!("tampering_is_found_exactly_and_replay_repairs_it": Postgres, Plugins);
    let (db, dir, config) = loaded_quickstart().await;
    let client = db.client().await;
    client
        .batch_execute(
            "DELETE FROM order_lines WHERE order_id = 'o-00000002' AND line_no = 1;
             UPDATE orders SET total = 1.00 WHERE order_id = 'o-00000001';",
        )
        .await
        .unwrap();
    // The RAW object of the fourth batch (lines 13-16: two orders with rows).
    let raw_dir = dir.path().join("out/raw");
    let object = walk(&raw_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("orders.jsonl-13-16.jsonl.gz"))
        .expect("the RAW object of lines 13-16");
    std::fs::remove_file(&object).unwrap();

    let (ok, report) = reconcile(&config, &[]);
    assert!(!ok, "problems exit non-zero");
    assert_eq!(report["difference_counts"]["drift"], 1, "{report:#}");
    assert_eq!(report["difference_counts"]["missing"], 1, "{report:#}");
    let missing_raw = report["missing_raw_objects"].as_array().unwrap();
    assert_eq!(missing_raw.len(), 1);
    assert!(
        missing_raw[0]["object"]
            .as_str()
            .unwrap()
            .ends_with("orders.jsonl-13-16.jsonl.gz")
    );
    assert_eq!(
        missing_raw[0]["orphan_rows"],
        1 + 5 + 1 + 2,
        "o-13 and o-16 with their lines"
    );
    assert_eq!(total(&report, "unaccounted"), 0);
    assert_eq!(total(&report, "unexpected_rows"), 0);
    assert_eq!(total(&report, "orphan_rows"), 0);
    assert_eq!(total(&report, "raw_records"), 13);
    let diffs = report["differences"].as_array().unwrap();
    let drift = diffs.iter().find(|d| d["kind"] == "drift").unwrap();
    assert_eq!(drift["table"], "orders");
    assert_eq!(drift["column"], "total");
    assert_eq!(drift["expected"], "44.98");
    assert_eq!(drift["actual"], "1.00");
    assert_eq!(drift["record_id"], "file/orders.jsonl/1");
    let missing = diffs.iter().find(|d| d["kind"] == "missing").unwrap();
    assert_eq!(missing["table"], "order_lines");
    assert_eq!(missing["key"], "order_id=o-00000002, line_no=1");
    // Three problems: the drift, the missing row, the missing RAW object.
    let out = weir(&["reconcile", "-c", config.to_str().unwrap()], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 problems"),
        "{}",
        show(&out)
    );

    let out = weir(&["replay", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 13 records from 4 RAW objects"),
        "{}",
        show(&out)
    );
    assert_eq!(
        db.rows("SELECT total FROM orders WHERE order_id = 'o-00000001'")
            .await[0][0],
        "44.98"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM order_lines WHERE order_id = 'o-00000002'")
            .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
    // Checkpoints did not move: the replay batches are not ordered.
    assert_eq!(
        db.rows(
            "SELECT position FROM weir_checkpoints WHERE \"partition\" NOT LIKE '%#fingerprint'"
        )
        .await,
        vec![vec!["17".to_string()]]
    );

    let (_, report) = reconcile(&config, &[]);
    assert_eq!(report["difference_counts"].get("drift"), None, "{report:#}");
    assert_eq!(
        report["difference_counts"].get("missing"),
        None,
        "{report:#}"
    );
    assert_eq!(report["missing_raw_objects"].as_array().unwrap().len(), 1);
    assert_eq!(total(&report, "emitted"), 3);
    // A second replay leaves the same final state.
    let before = db
        .rows("SELECT order_id, total, country FROM orders ORDER BY order_id")
        .await;
    let out = weir(&["replay", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        db.rows("SELECT order_id, total, country FROM orders ORDER BY order_id")
            .await,
        before
    );
}

/// A shadow run of a new rule version (the C orders rule built as version 2: USD orders dropped, country
/// codes in lower case) reports exactly those differences and writes nothing.
#[tokio::test]
async fn shadow_run_reports_differences_and_writes_nothing() {
    needs!("shadow_run_reports_differences_and_writes_nothing": Postgres, Plugins);
    let (db, _dir, config) = loaded_quickstart().await;
    let snapshot = || async {
        let mut all = Vec::new();
        for table in [
            "orders",
            "order_lines",
            "weir_batches",
            "weir_dead_letters",
            "weir_checkpoints",
        ] {
            all.push(
                db.rows(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
                    .await,
            );
        }
        all
    };
    let before = snapshot().await;
    let v2 = plugin("orders-c-v2");
    let out = weir(
        &[
            "replay",
            "-c",
            config.to_str().unwrap(),
            "--plugin",
            v2.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["difference_counts"],
        serde_json::json!({ "changed": 3, "removed": 2 }),
        "{report:#}"
    );
    let diffs = report["differences"].as_array().unwrap();
    let mut changed: Vec<(String, String, String)> = diffs
        .iter()
        .filter(|d| d["kind"] == "changed")
        .map(|d| {
            assert_eq!(d["column"], "country");
            (
                d["key"].as_str().unwrap().into(),
                d["expected"].as_str().unwrap().into(),
                d["actual"].as_str().unwrap().into(),
            )
        })
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            (
                "order_id=o-00000001".to_string(),
                "es".to_string(),
                "ES".to_string()
            ),
            ("order_id=o-00000013".into(), "es".into(), "ES".into()),
            ("order_id=o-00000016".into(), "es".into(), "ES".into()),
        ]
    );
    let mut removed: Vec<String> = diffs
        .iter()
        .filter(|d| d["kind"] == "removed")
        .map(|d| {
            format!(
                "{} {}",
                d["table"].as_str().unwrap(),
                d["key"].as_str().unwrap()
            )
        })
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            "order_lines order_id=o-00000002, line_no=1",
            "orders order_id=o-00000002"
        ]
    );
    assert_eq!(
        report["partitions"]["file/orders.jsonl"]["dropped"]["USD order"],
        1
    );
    assert_eq!(snapshot().await, before, "a dry run writes nothing");
}

/// Reconcile re-derives each batch with the rule version that loaded it, fetched by digest from the plugin
/// store, after the configuration moved on to another rule.
#[tokio::test]
async fn recorded_rule_versions_come_from_the_plugin_store() {
    needs!("recorded_rule_versions_come_from_the_plugin_store": Postgres, Plugins);
    let (_db, dir, config) = loaded_quickstart().await;
    let stored: Vec<_> = std::fs::read_dir(dir.path().join("out/raw/weir-plugins"))
        .unwrap()
        .collect();
    assert_eq!(stored.len(), 1, "the worker kept its rule");
    let text = std::fs::read_to_string(&config).unwrap();
    let moved = text.replace("plugins/dist/orders.wasm", "plugins/dist/orders-c-v2.wasm");
    assert_ne!(moved, text);
    std::fs::write(&config, moved).unwrap();
    let (ok, report) = reconcile(&config, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(total(&report, "drifted_fields"), 0);
    assert_eq!(report["missing_rules"], serde_json::json!([]));
    // Without the store, the batches cannot be re-derived, and reconcile says which rule is missing.
    std::fs::remove_dir_all(dir.path().join("out/raw/weir-plugins")).unwrap();
    let (ok, report) = reconcile(&config, &[]);
    assert!(!ok);
    assert_eq!(
        report["missing_rules"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
}

/// Windows select RAW objects by the hour of their source time; `--batch` selects one batch.
#[tokio::test]
async fn windows_and_batches() {
    needs!("windows_and_batches": Postgres, Plugins);
    let (db, _dir, config) = loaded_quickstart().await;
    let (ok, report) = reconcile(&config, &["--since", "2000-01-01", "--until", "2000-01-02"]);
    assert!(ok);
    assert_eq!(report["objects"], 0);
    let (ok, report) = reconcile(&config, &["--since", "30d"]);
    assert!(ok, "{report:#}");
    assert_eq!(report["objects"], 5);
    let batch = db
        .rows("SELECT batch_id FROM weir_batches ORDER BY batch_id LIMIT 1")
        .await[0][0]
        .clone();
    let (ok, report) = reconcile(&config, &["--batch", &batch]);
    assert!(ok, "{report:#}");
    assert_eq!(report["objects"], 1);
    assert_eq!(total(&report, "raw_records"), 4);
}

/// The HTML report is one self-contained page; headless Chromium renders its chart (the emitted bars' green
/// fills part of the screenshot).
#[tokio::test]
async fn html_report_renders_in_chromium() {
    needs!("html_report_renders_in_chromium": Postgres, Plugins);
    let (_db, dir, config) = loaded_quickstart().await;
    let page = dir.path().join("report.html");
    let out = weir(
        &[
            "reconcile",
            "-c",
            config.to_str().unwrap(),
            "--html",
            page.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<svg") && html.contains(r#"class="emitted""#) && !html.contains("<script")
    );
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        panic!("chromium is required (scripts/test.sh installs the Debian package)");
    };
    let shot = dir.path().join("shot.png");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,700",
            &format!("--screenshot={}", shot.display()),
            &format!("file://{}", page.display()),
        ])
        .output()
        .unwrap();
    assert!(shot.exists(), "{}", show(&out));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let green = pixels
        .chunks(channels)
        .filter(|p| p[0].abs_diff(0x2e) < 8 && p[1].abs_diff(0x7d) < 8 && p[2].abs_diff(0x32) < 8)
        .count();
    // The legend swatch is 12×12 px; the emitted bar is far larger.
    assert!(
        green > 2_000,
        "{green} green pixels: the chart is not in the screenshot"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `weir replay` applies RAW objects in the order their batches committed: with key `k` at line 8 (n = 1) and
/// line 13 (n = 2) of one file, batches of 5, the run leaves n = 2 and so does the replay (RAW keys in text
/// order put `…-11-15` before `…-6-10`, and replaying in that order turned it into n = 1). A RAW object that
/// no ledger row committed is skipped and listed.
#[tokio::test]
async fn replay_follows_the_ledger_order() {
    needs!("replay_follows_the_ledger_order": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (1..=15).map(|i| format!("ver:filler{i}:{i}")).collect();
    lines[7] = "ver:k:1".into();
    lines[12] = "ver:k:2".into();
    std::fs::write(dir.path().join("input.txt"), lines.join("\n")).unwrap();
    let config = misbehave_config(
        dir.path(),
        "kind = \"sqlite\"\npath = \"weir.db\"",
        "",
        "[batch]\nmax_records = 5",
    );
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let db = dir.path().join("weir.db");
    let k = || async { query(&db, "SELECT CAST(n AS TEXT) FROM t WHERE id = 'k'").await };
    assert_eq!(k().await, vec![vec!["2".to_string()]]);
    // A RAW object archived but never committed (as after a crash between RAW and commit).
    let raw = raw_lines(&dir.path().join("raw"));
    assert_eq!(raw.len(), 15);
    let mut stack = vec![dir.path().join("raw")];
    let mut objects = Vec::new();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            objects.push(p);
        }
    }
    let first = objects
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("-1-5."))
        .unwrap_or_else(|| panic!("{objects:?}"));
    let orphan = first.with_file_name(
        first
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("-1-5", "-1-4"),
    );
    std::fs::copy(first, &orphan).unwrap();
    let out = weir(&["replay", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("replayed 15 records from 3 RAW objects"),
        "{stdout}"
    );
    assert!(
        stdout.contains("skipped 1 RAW objects that no ledger row committed"),
        "{stdout}"
    );
    assert_eq!(
        k().await,
        vec![vec!["2".to_string()]],
        "the later version still wins"
    );
}
