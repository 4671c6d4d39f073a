//! The PostgreSQL / Redshift sink against a real PostgreSQL server: the quickstart with the same counts as
//! SQLite, idempotent re-runs and crash recovery, the zombie-worker fence, duplicate keys in one batch, schema
//! checks, and a backend terminated in the middle of a run.

mod common;

use common::*;
use weir::config::RetryConfig;
use weir::record::Batch;
use weir::retry::retrying;
use weir::rules::validate::{CheckedRow, RecordOutcome, RejectStage};
use weir::schema::{Cell, ColumnType, TableSpec};
use weir::sink::redshift::{RedshiftOptions, RedshiftSink};
use weir::sink::{Commit, Coordinator, Load, Sink};

/// Every table's rows, sorted, without wall-clock columns; `SUPER` read through `JSON_SERIALIZE`.
async fn pg_snapshot(db: &TestDb) -> Vec<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for t in TABLES {
        let cols = db
            .rows(&format!(
                "SELECT column_name, coalesce(domain_name, '') FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = '{t}' ORDER BY ordinal_position"
            ))
            .await;
        let select: Vec<String> = cols
            .iter()
            .filter(|c| {
                !["_weir_loaded_at", "loaded_at", "at", "updated_at"].contains(&c[0].as_str())
            })
            .map(|c| {
                if c[1] == "super" {
                    format!("JSON_SERIALIZE(\"{}\")", c[0])
                } else {
                    format!("\"{}\"", c[0])
                }
            })
            .collect();
        out.push(
            db.rows(&format!(
                "SELECT {} FROM {t} ORDER BY 1, 2",
                select.join(", ")
            ))
            .await,
        );
    }
    out
}

/// The quickstart with the sink switched to PostgreSQL gives the same counts and values as with SQLite.
#[tokio::test]
async fn quickstart_on_postgres() {
    needs!("quickstart_on_postgres": Postgres, Plugins);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("records in: 17 in 5 batches"), "{stdout}");
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 5);
    assert_eq!(db.count("SELECT count(*) FROM order_lines").await, 12);
    assert_eq!(db.count("SELECT count(*) FROM weir_dead_letters").await, 10);
    assert_eq!(db.count("SELECT sum(dropped) FROM weir_batches").await, 2);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
    let o1 = db
        .rows(
            "SELECT total, placed_at AT TIME ZONE 'UTC', JSON_SERIALIZE(shipping), country \
             FROM orders WHERE order_id = 'o-00000001'",
        )
        .await;
    assert_eq!(o1[0][0], "44.98");
    assert_eq!(o1[0][1], "2026-11-21 10:01:30");
    assert_eq!(o1[0][2], r#"{"city": "Madrid", "country": "ES"}"#);
    let reason = db
        .rows(
            "SELECT stage, reason FROM weir_dead_letters WHERE record_id = 'file/orders.jsonl/14'",
        )
        .await;
    assert_eq!(reason[0][0], "validate");
    assert!(reason[0][1].contains("column order_id"));
    // Same final rows as the SQLite sink for the same input.
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite_cfg = quickstart_in(sqlite_dir.path());
    assert!(
        weir(&["run", "-c", sqlite_cfg.to_str().unwrap()], &[])
            .status
            .success()
    );
    let sqlite_db = sqlite_dir.path().join("out/weir.db");
    let from_sqlite = query(
        &sqlite_db,
        "SELECT order_id, line_no, sku, qty, unit_price, amount FROM order_lines ORDER BY 1, 2",
    )
    .await;
    let from_pg = db
        .rows(
            "SELECT order_id, line_no, sku, qty, unit_price, amount FROM order_lines ORDER BY 1, 2",
        )
        .await;
    assert_eq!(from_pg, from_sqlite);
}

/// Loading the same input twice, or restarting after a crash before or after a commit, leaves the tables of
/// one clean run.
#[tokio::test]
async fn reruns_and_crashes_leave_the_clean_state() {
    needs!("reruns_and_crashes_leave_the_clean_state": Postgres, Plugins);
    let clean = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &clean.url);
    assert!(
        weir(&["run", "-c", config.to_str().unwrap()], &[])
            .status
            .success()
    );
    let expected = pg_snapshot(&clean).await;
    let again = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("records in: 0"),
        "{}",
        show(&again)
    );
    assert_eq!(pg_snapshot(&clean).await, expected);

    for crash in ["raw:2", "commit:2"] {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let config = quickstart_postgres_in(dir.path(), &db.url);
        let crashed = weir(
            &["run", "-c", config.to_str().unwrap()],
            &[("WEIR_CRASH_AFTER", crash)],
        );
        assert!(!crashed.status.success(), "{crash}");
        let restarted = weir(&["run", "-c", config.to_str().unwrap()], &[]);
        assert!(restarted.status.success(), "{}", show(&restarted));
        assert_eq!(pg_snapshot(&db).await, expected, "{crash}");
    }
}

fn spec() -> Vec<TableSpec> {
    vec![TableSpec::new(
        "items".into(),
        vec![
            ("id".into(), ColumnType::Varchar(16)),
            ("n".into(), ColumnType::Integer),
            (
                "price".into(),
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            ("doc".into(), ColumnType::Super),
            ("at".into(), ColumnType::TimestampTz),
        ],
        vec!["id".into()],
    )]
}

/// A batch of `rows` (id, n) for partition `p`, following checkpoint `prev`.
fn batch(
    prev: &str,
    first: usize,
    rows: &[(&str, i64)],
) -> (Batch, Vec<RecordOutcome>, Vec<String>) {
    let outcomes = rows
        .iter()
        .map(|(id, n)| {
            if *n < 0 {
                return RecordOutcome::Reject(RejectStage::Rule, "negative".into());
            }
            RecordOutcome::Emit(vec![CheckedRow {
                table: 0,
                cells: vec![
                    Cell::Text(id.to_string()),
                    Cell::Int(*n),
                    Cell::Decimal(format!("{n}.50")),
                    Cell::Json(format!(r#"{{"n":{n}}}"#)),
                    Cell::TimestampUs(1_795_256_970_000_000 + n),
                ],
            }])
        })
        .collect();
    let raw_refs = (1..=rows.len()).map(|i| format!("k#{i}")).collect();
    let b = mem_batch(prev, first, rows.len());
    (b, outcomes, raw_refs)
}

fn load<'a>(b: &'a (Batch, Vec<RecordOutcome>, Vec<String>), tables: &'a [TableSpec]) -> Load<'a> {
    Load {
        batch: &b.0,
        raw_refs: &b.2,
        outcomes: &b.1,
        tables,
        rule_digest: "d",
        loaded_at_us: 1_795_256_970_000_000,
        redrive: None,
    }
}

async fn sink(db: &TestDb) -> RedshiftSink {
    let s = RedshiftSink::new(&db.url, RedshiftOptions::default()).unwrap();
    s.prepare(&spec(), true).await.unwrap();
    assert_eq!(s.checkpoint("mem", "p").await.unwrap(), "");
    s
}

/// Two workers load the same partition from the same checkpoint: exactly one commits, the other is told it
/// lost the partition, and no row is doubled.
#[tokio::test]
async fn zombie_is_fenced() {
    needs!("zombie_is_fenced": Postgres);
    let db = TestDb::new().await;
    let tables = spec();
    let (a, b) = (sink(&db).await, sink(&db).await);
    let rows: Vec<(String, i64)> = (0..50).map(|i| (format!("k{i}"), i)).collect();
    let rows: Vec<(&str, i64)> = rows.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    let one = batch("", 1, &rows);
    let (la, lb) = (load(&one, &tables), load(&one, &tables));
    let (ra, rb) = tokio::join!(a.commit(&la), b.commit(&lb));
    let mut results = vec![ra.unwrap(), rb.unwrap()];
    results.sort_by_key(|c| *c == Commit::NotOwner);
    assert_eq!(results, [Commit::Committed, Commit::NotOwner]);
    assert_eq!(db.count("SELECT count(*) FROM items").await, 50);
    assert_eq!(db.count("SELECT count(*) FROM weir_batches").await, 1);
    assert_eq!(
        db.rows("SELECT position FROM weir_checkpoints").await,
        [["50"]]
    );
    // The fenced worker retrying from its stale checkpoint is still refused.
    assert_eq!(
        b.commit(&load(&one, &tables)).await.unwrap(),
        Commit::NotOwner
    );
}

/// Duplicate keys inside one batch keep the latest row only; rejects become dead letters; values round-trip.
#[tokio::test]
async fn duplicate_keys_keep_latest() {
    needs!("duplicate_keys_keep_latest": Postgres);
    let db = TestDb::new().await;
    let tables = spec();
    let s = sink(&db).await;
    let one = batch("", 1, &[("a", 1), ("b", 2), ("a", 3), ("bad", -1)]);
    assert_eq!(
        s.commit(&load(&one, &tables)).await.unwrap(),
        Commit::Committed
    );
    let rows = db
        .rows("SELECT id, n, price, JSON_SERIALIZE(doc), _weir_record_id FROM items ORDER BY id")
        .await;
    assert_eq!(
        rows,
        [
            ["a", "3", "3.50", r#"{"n": 3}"#, "mem/p/3"],
            ["b", "2", "2.50", r#"{"n": 2}"#, "mem/p/2"]
        ]
    );
    assert_eq!(
        db.rows("SELECT record_id, reason FROM weir_dead_letters")
            .await,
        [["mem/p/4", "negative"]]
    );
    // The next batch updates a row in place.
    let two = batch("4", 5, &[("b", 20)]);
    assert_eq!(
        s.commit(&load(&two, &tables)).await.unwrap(),
        Commit::Committed
    );
    assert_eq!(
        db.rows("SELECT n FROM items WHERE id = 'b'").await,
        [["20"]]
    );
    assert_eq!(db.count("SELECT count(*) FROM items").await, 2);
}

/// The stage is analyzed once per session, after its first fill; every later merge still probes the target's
/// key index instead of scanning the target, whatever the later batches' sizes (PostgreSQL's counters, read
/// once the sink's sessions have ended and so reported them).
#[tokio::test]
async fn later_merges_probe_the_key_without_a_new_analyze() {
    needs!("later_merges_probe_the_key_without_a_new_analyze": Postgres);
    let db = TestDb::new().await;
    let tables = spec();
    let s = sink(&db).await;
    let keys: Vec<String> = (0..3000).map(|i| format!("k{i}")).collect();
    let first: Vec<(&str, i64)> = keys[..2000].iter().map(|k| (k.as_str(), 1)).collect();
    let b = batch("", 1, &first);
    assert_eq!(
        s.commit(&load(&b, &tables)).await.unwrap(),
        Commit::Committed
    );
    let mut prev = 2000;
    for round in 0..6 {
        // Half the keys are stored already, half are new; the sizes differ from the analyzed first fill.
        let size = 50 + 150 * round;
        let rows: Vec<(&str, i64)> = (0..size)
            .map(|i| {
                (
                    keys[(1000 + round * 300 + i) % 3000].as_str(),
                    2 + round as i64,
                )
            })
            .collect();
        let b = batch(&prev.to_string(), prev + 1, &rows);
        assert_eq!(
            s.commit(&load(&b, &tables)).await.unwrap(),
            Commit::Committed
        );
        prev += size;
    }
    drop(s);
    let admin = db.admin().await;
    let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while admin.query_one(others, &[]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink's sessions did not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let scans = admin
        .query_one(
            "SELECT seq_scan, idx_scan FROM pg_stat_user_tables WHERE relname = 'items'",
            &[],
        )
        .await
        .unwrap();
    let (seq, idx): (i64, i64) = (scans.get(0), scans.get(1));
    // The first batch meets an empty target, which may be scanned; no later batch scans it.
    assert!(seq <= 1, "the target was scanned {seq} times in 7 merges");
    assert!(idx >= 6, "the key index was probed {idx} times in 7 merges");
    assert_eq!(db.count("SELECT count(*) FROM items").await, 3000);
    assert_eq!(db.count("SELECT count(*) FROM weir_batches").await, 7);
}

/// The `postgres` kind's binary `COPY` stage fill stores exactly what the portable INSERT fill stores, for
/// every column type and edge value (NULLs, extreme integers, 38-digit and negative decimals, floats, multi-byte
/// text, big JSON numbers, timestamps before 2000 and near year 9999).
#[tokio::test]
async fn binary_copy_fill_matches_the_insert_fill() {
    use weir::config::StageFillConfig;
    needs!("binary_copy_fill_matches_the_insert_fill": Postgres);
    let dec = |precision, scale| ColumnType::Decimal { precision, scale };
    let tables = vec![TableSpec::new(
        "every_type".into(),
        vec![
            ("id".into(), ColumnType::Varchar(40)),
            ("small".into(), ColumnType::SmallInt),
            ("int".into(), ColumnType::Integer),
            ("big".into(), ColumnType::BigInt),
            ("re".into(), ColumnType::Real),
            ("dbl".into(), ColumnType::Double),
            ("money".into(), dec(18, 2)),
            ("wide".into(), dec(38, 6)),
            ("flag".into(), ColumnType::Boolean),
            ("ts".into(), ColumnType::Timestamp),
            ("tstz".into(), ColumnType::TimestampTz),
            ("doc".into(), ColumnType::Super),
        ],
        vec!["id".into()],
    )];
    let rows: Vec<Vec<Cell>> = vec![
        vec![
            Cell::Text("ascii".into()),
            Cell::Int(i16::MIN.into()),
            Cell::Int(i32::MAX.into()),
            Cell::Int(i64::MIN),
            Cell::Float(1.5e-7),
            Cell::Float(-123456.789012345),
            Cell::Decimal("-9999999999999999.99".into()),
            Cell::Decimal("12345678901234567890123456789012.000001".into()),
            Cell::Bool(true),
            Cell::TimestampUs(-62_135_596_800_000_000),
            Cell::TimestampUs(253_402_300_799_999_999),
            Cell::Json(
                r#"{"big": 123456789012345678901234567890, "a": [1, 2.5e10, "x\u00e9"]}"#.into(),
            ),
        ],
        vec![
            Cell::Text("zéro ✓ 𝄞".into()),
            Cell::Int(0),
            Cell::Int(-1),
            Cell::Int(10_000),
            Cell::Float(0.0),
            Cell::Float(f64::MAX),
            Cell::Decimal("0.00".into()),
            Cell::Decimal("0.000100".into()),
            Cell::Bool(false),
            Cell::TimestampUs(946_684_799_999_999),
            Cell::TimestampUs(1_795_256_970_123_456),
            Cell::Json("[]".into()),
        ],
        {
            let mut nulls = vec![Cell::Text("nulls".into())];
            nulls.extend((1..12).map(|_| Cell::Null));
            nulls
        },
    ];
    let outcomes: Vec<RecordOutcome> = rows
        .into_iter()
        .map(|cells| RecordOutcome::Emit(vec![CheckedRow { table: 0, cells }]))
        .collect();
    let b = (
        mem_batch("", 1, outcomes.len()),
        outcomes,
        (1..=3).map(|i| format!("k#{i}")).collect::<Vec<_>>(),
    );
    let mut stored = Vec::new();
    for fill in [StageFillConfig::Insert, StageFillConfig::Binary] {
        let db = TestDb::new().await;
        let options = RedshiftOptions {
            stage_fill: fill,
            ..RedshiftOptions::default()
        };
        let s = RedshiftSink::new(&db.url, options).unwrap();
        s.prepare(&tables, true).await.unwrap();
        assert_eq!(
            s.commit(&load(&b, &tables)).await.unwrap(),
            Commit::Committed
        );
        stored.push(
            db.rows("SELECT t::text FROM every_type t ORDER BY id")
                .await,
        );
    }
    assert_eq!(stored[0].len(), 3);
    assert_eq!(stored[0], stored[1]);
}

/// A table whose column type differs from the configuration stops the worker with a message naming table,
/// column and types.
#[tokio::test]
async fn schema_mismatch_is_named() {
    needs!("schema_mismatch_is_named": Postgres);
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id VARCHAR(16) NOT NULL, n BIGINT, price DECIMAL(10,2), doc super, at TIMESTAMPTZ)")
        .await
        .unwrap();
    let s = RedshiftSink::new(&db.url, RedshiftOptions::default()).unwrap();
    let err = s.prepare(&spec(), true).await.unwrap_err().to_string();
    assert!(
        err.contains("table items, column n: the database has bigint, the config declares integer"),
        "{err}"
    );
}

/// The server ends the session between two batches: the commit fails as transient, reconnects on retry, and
/// nothing is lost or doubled.
#[tokio::test]
async fn terminated_backend_is_retried() {
    needs!("terminated_backend_is_retried": Postgres);
    let db = TestDb::new().await;
    let tables = spec();
    let s = sink(&db).await;
    let one = batch("", 1, &[("a", 1), ("b", 2)]);
    assert_eq!(
        s.commit(&load(&one, &tables)).await.unwrap(),
        Commit::Committed
    );
    let killed = db
        .admin()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            &[&db.role],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty(), "the sink's session was not found");
    let two = batch("2", 3, &[("c", 3)]);
    let policy = RetryConfig {
        max_attempts: 5,
        initial_backoff_ms: 10,
        max_backoff_ms: 100,
        ..RetryConfig::default()
    };
    let l2 = load(&two, &tables);
    let committed = retrying(&policy, "commit", || s.commit(&l2))
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(committed, Commit::Committed);
    assert_eq!(db.count("SELECT count(*) FROM items").await, 3);
    assert_eq!(
        db.rows("SELECT position FROM weir_checkpoints").await,
        [["3"]]
    );
}

/// Every statement weir sends during a pipeline run is captured (`WEIR_LOG=weir::sql=trace`) and checked for
/// SQL that Redshift rejects or treats differently: per-batch commits on `redshift` (INSERT fill), grouped
/// commits (the default on `redshift`), and grouped commits with the COPY stage fill (Redshift's `COPY` from S3
/// played by tests/common/copy_front.rs), whose merge ranks the copied rows by version and batch order in SQL.
/// The `postgres` kind runs the same statements but fills its stages by binary `COPY FROM STDIN`, the one
/// PostgreSQL-only statement, sent by that kind only.
#[tokio::test(flavor = "multi_thread")]
async fn every_statement_is_redshift_safe() {
    needs!("every_statement_is_redshift_safe": Postgres, Aws, Plugins);
    let s3 = s3().await;
    let bucket = unique("weir-safe");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let copy_fill = format!(
        "kind = \"redshift\"\nstage_fill = {{ kind = \"copy\", bucket = \"{bucket}\", \
         iam_role = \"arn:aws:iam::123456789012:role/weir-copy\" }}"
    );
    // (name, [sink] kind and fill, extra [sink.group_commit] lines, statements expected)
    let runs: [(&str, &str, &str, &[&str]); 4] = [
        (
            "postgres",
            "kind = \"postgres\"",
            "",
            &[
                "CREATE TEMP TABLE",
                "COPY \"weir_stage_orders\" (",
                "DELETE FROM \"public\".\"orders\" USING",
                "UPDATE \"public\".weir_checkpoints",
            ],
        ),
        (
            "redshift, per-batch",
            "kind = \"redshift\"",
            "enabled = false\n",
            &[
                "INSERT INTO \"weir_stage_orders\"",
                "DELETE FROM \"public\".\"orders\" USING",
                "UPDATE \"public\".weir_checkpoints",
            ],
        ),
        (
            "redshift, grouped",
            "kind = \"redshift\"",
            "",
            &[
                "INSERT INTO \"public\".weir_staged",
                "UPDATE \"public\".weir_checkpoints SET position = $1 WHERE source = $2 AND \"partition\" = 'fence'",
            ],
        ),
        (
            "redshift, grouped, COPY",
            &copy_fill,
            "",
            &[
                "COPY \"weir_copy_orders\"",
                "ROW_NUMBER() OVER (PARTITION BY",
                "INSERT INTO weir_group_order",
            ],
        ),
    ];
    for (name, sink, group, expected) in runs {
        let db = TestDb::new().await;
        let front = copy_front::CopyFront::start(&db.host_port()).await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("{}?sslmode=disable", db.url_via(&front.addr));
        let config = quickstart_postgres_in(dir.path(), &url);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("kind = \"postgres\"", sink)
            + &format!(
                "\n[sink.group_commit]\n{group}interval_ms = 100\nlease_secs = 2\n[aws]\nendpoint_url = \"{}\"\n\
                 region = \"us-east-1\"\n",
                aws_endpoint()
            );
        std::fs::write(&config, text).unwrap();
        let (out, statements) = run_traced(&config);
        assert!(out.status.success(), "{name}: {}", show(&out));
        for expected in expected {
            assert!(
                statements.iter().any(|s| s.contains(expected)),
                "{name}: no {expected:?} among {} statements",
                statements.len()
            );
        }
        for s in &statements {
            // The postgres kind fills its stages by binary COPY, a PostgreSQL-only statement it alone sends.
            if sink == "kind = \"postgres\"" && s.ends_with("FROM STDIN (FORMAT binary)") {
                continue;
            }
            // It empties its temp stages by TRUNCATE (never vacuumed, a stage emptied by DELETE keeps growing);
            // Redshift's TRUNCATE would commit the merge's transaction.
            if sink == "kind = \"postgres\"" && s.starts_with("TRUNCATE \"weir_stage_") {
                continue;
            }
            // Outside string literals (an IAM role's ARN holds `::`).
            let upper: String = s
                .split('\'')
                .step_by(2)
                .collect::<Vec<_>>()
                .join("''")
                .to_ascii_uppercase();
            for banned in [
                "ON CONFLICT",
                "COPY ",
                "STDIN",
                "TRUNCATE",
                "NOW()",
                "CURRENT_TIMESTAMP",
                "GETDATE()",
                "::",
                " WITH ",
            ] {
                // Redshift's COPY reads S3 only.
                let s3_copy = banned == "COPY "
                    && upper.starts_with("COPY ")
                    && s.to_ascii_uppercase().contains(" FROM 'S3://");
                assert!(
                    s3_copy || !upper.contains(banned),
                    "{name}: {banned} in {s}"
                );
            }
        }
    }
}

/// `weir schema plan` prints the DDL and changes nothing; `apply` runs it; a declared column the table lacks
/// stops `weir run` with the table and column named until `apply` adds it.
#[tokio::test]
async fn schema_plan_and_apply() {
    needs!("schema_plan_and_apply": Postgres, Plugins);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let cfg = config.to_str().unwrap();
    let tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";

    let plan = weir(&["schema", "plan", "-c", cfg], &[]);
    assert!(plan.status.success(), "{}", show(&plan));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("CREATE TABLE IF NOT EXISTS \"public\".\"orders\""),
        "{text}"
    );
    assert!(
        text.contains("weir_checkpoints") && text.contains("not applied"),
        "{text}"
    );
    assert_eq!(db.count(tables).await, 0, "plan must not change anything");

    assert!(weir(&["schema", "apply", "-c", cfg], &[]).status.success());
    assert_eq!(db.count(tables).await, 5);
    let again = weir(&["schema", "plan", "-c", cfg], &[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        show(&again)
    );

    // A new column in the config.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "columns = { order_id = \"varchar(36)\", customer_id",
        "columns = { order_id = \"varchar(36)\", note = \"varchar(10)\", customer_id",
    );
    std::fs::write(&config, text).unwrap();
    let run = weir(&["run", "-c", cfg], &[]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("table orders, column note: missing in the database"),
        "{err}"
    );
    assert!(err.contains("weir schema apply"), "{err}");
    let plan = weir(&["schema", "plan", "-c", cfg], &[]);
    assert!(
        String::from_utf8_lossy(&plan.stdout)
            .contains("ALTER TABLE \"public\".\"orders\" ADD COLUMN \"note\" VARCHAR(10);"),
        "{}",
        show(&plan)
    );
    assert!(weir(&["schema", "apply", "-c", cfg], &[]).status.success());
    let run = weir(&["run", "-c", cfg], &[]);
    assert!(run.status.success(), "{}", show(&run));
    assert_eq!(
        db.count("SELECT count(*) FROM orders WHERE note IS NULL")
            .await,
        5
    );
}

/// A value that passes weir's checks but that the database refuses (a JSON `\u0000` escape, which
/// PostgreSQL's `jsonb` rejects) dead-letters only its record, naming the table; the rest of the batch loads.
#[tokio::test]
async fn refused_value_dead_letters_only_its_record() {
    needs!("refused_value_dead_letters_only_its_record": Postgres, Plugins);
    let db = TestDb::new().await;
    let tables = spec();
    let s = sink(&db).await;
    let mut one = batch("", 1, &[("a", 1), ("b", 2), ("c", 3)]);
    if let RecordOutcome::Emit(rows) = &mut one.1[1] {
        rows[0].cells[3] = Cell::Json(r#"{"note":"\u0000"}"#.into());
    }
    let refused = match s.commit(&load(&one, &tables)).await {
        Err(weir::sink::SinkError::Rejected(refused)) => refused,
        other => panic!("expected the record to be refused, got {other:?}"),
    };
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, 1);
    assert!(
        refused[0]
            .1
            .starts_with("table items: the database refused the row"),
        "{}",
        refused[0].1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM items").await,
        0,
        "nothing commits with the refused row"
    );

    // Through the binary: the same value in an order's `shipping` object.
    let dir = tempfile::tempdir().unwrap();
    let db2 = TestDb::new().await;
    let config = quickstart_postgres_in(dir.path(), &db2.url);
    let mut input = std::fs::read(dir.path().join("orders.jsonl")).unwrap();
    input.extend_from_slice(
        br#"{"order_id":"o-00000099","placed_at":"2026-11-21T11:00:00Z","currency":"EUR","shipping":{"country":"ES","note":"\u0000"},"lines":[{"sku":"S","qty":1,"unit_price":"1.00"}]}"#,
    );
    input.push(b'\n');
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(db2.count("SELECT count(*) FROM orders").await, 5);
    assert_eq!(db2.count("SELECT count(*) FROM order_lines").await, 12);
    let dead = db2
        .rows(
            "SELECT stage, reason FROM weir_dead_letters WHERE record_id = 'file/orders.jsonl/18'",
        )
        .await;
    assert_eq!(dead[0][0], "sink");
    assert!(
        dead[0][1].starts_with("table orders: the database refused the row"),
        "{:?}",
        dead[0]
    );
    assert_eq!(
        db2.count("SELECT sum(rejected) FROM weir_batches").await,
        11
    );
}

/// A TLS front for the test server: answers PostgreSQL's SSLRequest, terminates TLS with a certificate for
/// `localhost` signed by a fresh CA, and relays the session to the server in plain text. Returns the port and
/// the CA's PEM file.
async fn tls_front(dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (acceptor, ca_file) = tls_acceptor(dir);
    let upstream: tokio_postgres::Config = std::env::var("WEIR_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
        .parse()
        .unwrap();
    let port = upstream.get_ports().first().copied().unwrap_or(5432);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                assert_eq!(
                    request[4..],
                    [0x04, 0xd2, 0x16, 0x2f],
                    "expected an SSLRequest"
                );
                client.write_all(b"S").await?;
                let mut tls = acceptor.accept(client).await?;
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    (front, ca_file)
}

/// With `sslmode=require` the sink speaks TLS and verifies the certificate chain and the host name: it works
/// for the name on the certificate with the CA trusted, and refuses another name or an unknown CA.
#[tokio::test]
async fn tls_verifies_chain_and_host_name() {
    needs!("tls_verifies_chain_and_host_name": Postgres);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = tls_front(dir.path()).await;
    let (user, db_name) = (
        db.url
            .split("://")
            .nth(1)
            .unwrap()
            .split('@')
            .next()
            .unwrap(),
        &db.name,
    );
    let url = |host: &str| format!("postgres://{user}@{host}:{port}/{db_name}?sslmode=require");
    let tls = |ca: Option<&std::path::PathBuf>| RedshiftOptions {
        tls_ca_file: ca.cloned(),
        connections: 1,
        ..RedshiftOptions::default()
    };

    let s = RedshiftSink::new(&url("localhost"), tls(Some(&ca))).unwrap();
    s.prepare(&spec(), true)
        .await
        .expect("TLS session with a verified certificate");
    assert_eq!(s.checkpoint("mem", "p").await.unwrap(), "");

    let wrong_name = RedshiftSink::new(&url("127.0.0.1"), tls(Some(&ca))).unwrap();
    let err = wrong_name
        .prepare(&spec(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("not valid for name"), "{err}");

    let unknown_ca = RedshiftSink::new(&url("localhost"), tls(None)).unwrap();
    let err = unknown_ca
        .prepare(&spec(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("unknownissuer")
            || err.to_lowercase().contains("unknown issuer"),
        "{err}"
    );
}

/// With `[sink.iam]`, every new connection logs in with temporary credentials from `GetClusterCredentials`
/// (served here by a local AWS server; the database role is the `IAM:` user it returns).
#[tokio::test]
async fn iam_credentials_for_each_connection() {
    needs!("iam_credentials_for_each_connection": Postgres, Aws, Plugins);
    let db = TestDb::new().await;
    let cluster = format!("weir-{}", db.name.replace('_', "-"));
    aws_sdk_redshift::Client::new(&aws_sdk().await)
        .create_cluster()
        .cluster_identifier(&cluster)
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Admin-password-1")
        .send()
        .await
        .expect("the local AWS server creates the cluster");
    let iam_user = format!("IAM:{}", db.role);
    let admin = db.admin().await;
    let _ = admin
        .batch_execute("CREATE ROLE weir_iam_users NOLOGIN")
        .await; // may exist already
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{iam_user}\" LOGIN; GRANT {} TO \"{iam_user}\"; GRANT weir_iam_users TO \"{iam_user}\"",
            db.role
        ))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let host = db
        .url
        .rsplit_once('@')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("kind = \"postgres\"\nurl = \"{}\"", db.url),
        &format!(
            "kind = \"redshift\"\nurl = \"postgres://{}@{host}/{}?sslmode=disable\"\n\
             iam = {{ cluster_id = \"{cluster}\", duration_secs = 900 }}",
            db.role, db.name
        ),
    ) + &format!(
        "\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
        aws_endpoint()
    );
    std::fs::write(&config, text).unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &AWS_TEST_ENV);
    assert!(out.status.success(), "{}", show(&out));
    // The tables belong to the IAM user: read them as the superuser.
    let orders: i64 = admin
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 5);
    let owner = db
        .rows("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'")
        .await;
    assert_eq!(owner[0][0], iam_user, "weir logged in with the IAM user");
}

/// The COPY fast path's stage files: gzip JSON lines per table (latest row per key) and a manifest, under
/// keys that depend only on the batch, so a retry rewrites the same objects.
#[tokio::test]
async fn copy_stage_files_in_s3() {
    needs!("copy_stage_files_in_s3": Aws);
    use std::io::Read;
    let s3 = s3().await;
    let bucket = format!("weir-stage-{}", std::process::id());
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let tables = spec();
    let one = batch("", 1, &[("a", 1), ("b", 2), ("a", 3)]);
    let manifests = weir::sink::redshift::write_copy_stage(
        &s3,
        &bucket,
        "stage/",
        &load(&one, &tables),
        &tables,
    )
    .await
    .unwrap();
    let manifest_url = manifests[0].clone().expect("a manifest for the table");
    assert_eq!(
        manifest_url,
        format!("s3://{bucket}/stage/mem_p_1-3/items.manifest")
    );
    let get = |key: String| {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        async move {
            s3.get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .to_vec()
        }
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&get("stage/mem_p_1-3/items.manifest".into()).await).unwrap();
    assert_eq!(
        manifest["entries"][0]["url"],
        format!("s3://{bucket}/stage/mem_p_1-3/items.jsonl.gz")
    );
    assert_eq!(manifest["entries"][0]["mandatory"], true);
    let mut text = String::new();
    flate2::read::GzDecoder::new(&get("stage/mem_p_1-3/items.jsonl.gz".into()).await[..])
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "latest row per key: {text}");
    assert_eq!(lines[1]["id"], "a");
    assert_eq!(lines[1]["n"], 3);
    assert_eq!(lines[1]["price"], "3.50");
    assert_eq!(lines[1]["doc"]["n"], 3);
    assert_eq!(lines[1]["_weir_record_id"], "mem/p/3");
    // A retry writes the same two objects again.
    weir::sink::redshift::write_copy_stage(&s3, &bucket, "stage/", &load(&one, &tables), &tables)
        .await
        .unwrap();
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.contents().len(), 2);
}

/// `merge = "merge"` (one MERGE statement per table) leaves the same tables as the default delete + insert,
/// including when a later batch updates rows in place.
#[tokio::test]
async fn merge_statement_mode_matches_delete_insert() {
    needs!("merge_statement_mode_matches_delete_insert": Postgres);
    let tables = spec();
    let mut finals = Vec::new();
    for mode in [
        weir::config::MergeMode::DeleteInsert,
        weir::config::MergeMode::Merge,
    ] {
        let db = TestDb::new().await;
        let s = RedshiftSink::new(
            &db.url,
            RedshiftOptions {
                merge: mode,
                ..RedshiftOptions::default()
            },
        )
        .unwrap();
        s.prepare(&tables, true).await.unwrap();
        s.checkpoint("mem", "p").await.unwrap();
        let one = batch("", 1, &[("a", 1), ("b", 2), ("a", 3)]);
        assert_eq!(
            s.commit(&load(&one, &tables)).await.unwrap(),
            Commit::Committed
        );
        let two = batch("3", 4, &[("b", 20), ("c", 30)]);
        assert_eq!(
            s.commit(&load(&two, &tables)).await.unwrap(),
            Commit::Committed
        );
        finals.push(
            db.rows(
                "SELECT id, n, price, JSON_SERIALIZE(doc), _weir_record_id FROM items ORDER BY id",
            )
            .await,
        );
    }
    assert_eq!(finals[0], finals[1]);
    assert_eq!(finals[1].len(), 3);
    assert_eq!(
        finals[1][1],
        ["b", "20", "20.50", r#"{"n": 20}"#, "mem/p/4"]
    );
}

/// `workers` concurrent `weir run` processes, each on its own file holding the same `n` orders (in another
/// order), into the same tables: every worker exits 0 and the tables hold every order once with its total.
async fn same_keys_from_concurrent_workers(
    db: &TestDb,
    kind: &str,
    url: &str,
    workers: usize,
    n: usize,
) {
    let (input, expected_total) = orders_input(n);
    let lines: Vec<&str> = input.lines().collect();
    let dirs: Vec<tempfile::TempDir> = (0..workers).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut running = Vec::new();
    for (w, dir) in dirs.iter().enumerate() {
        let config = quickstart_postgres_in(dir.path(), url);
        // Each worker its own partition (source name) and its own order of the same orders.
        let mut mine: Vec<&str> = lines.clone();
        mine.rotate_left(w * n / workers);
        if w % 2 == 1 {
            mine.reverse();
        }
        std::fs::write(dir.path().join("orders.jsonl"), mine.join("\n")).unwrap();
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("kind = \"postgres\"", &format!("kind = \"{kind}\""))
            .replace(
                "path = \"orders.jsonl\"",
                &format!("path = \"orders.jsonl\"\nname = \"w{w}\""),
            )
            .replace("max_records = 4", "max_records = 25");
        // Per-batch commits on both kinds (grouped commits, the default on Redshift, have tests of their own).
        std::fs::write(
            &config,
            format!(
                "{text}\n[retry]\nmax_attempts = 30\ninitial_backoff_ms = 20\nmax_backoff_ms = 500\n\
                 [sink.group_commit]\nenabled = false\n"
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["run", "-c", config.to_str().unwrap()])
            .env("WEIR_LOG", "warn");
        running.push(Background::spawn(cmd));
    }
    for (w, r) in running.into_iter().enumerate() {
        let out = r.wait(std::time::Duration::from_secs(600)).await;
        assert!(
            out.status.success(),
            "worker {w} of {workers} ({kind}): {}",
            show(&out)
        );
    }
    let rows = db.order_totals().await;
    assert_eq!(
        rows, expected_total,
        "{workers} workers ({kind}): every order once"
    );
    let lines_expected: i64 = (0..n).map(|i| (i % 5 + 1) as i64).sum();
    assert_eq!(
        db.count("SELECT count(*) FROM order_lines").await,
        lines_expected
    );
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        (workers * n) as i64,
        "each worker's records once in the ledger"
    );
    assert_eq!(db.count("SELECT count(*) FROM weir_dead_letters").await, 0);
}

/// Two and four workers upserting the same keys into PostgreSQL at once (two files with the same orders, as
/// two SQS workers on one queue would): each commit takes the tables it merges into in turn (SHARE ROW
/// EXCLUSIVE, name order), so no `DELETE … USING` misses another's uncommitted rows. It used to fail one
/// worker with 23505, taken for a data error ("not reproducible record by record").
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_workers_on_the_same_keys() {
    needs!("concurrent_workers_on_the_same_keys": Postgres, Plugins);
    for workers in [2, 4] {
        let db = TestDb::new().await;
        same_keys_from_concurrent_workers(&db, "postgres", &db.url, workers, 600).await;
    }
}

/// The same with Redshift's semantics (`redshift-sim`: serializable isolation, table-level write locks, 20 ms
/// per commit) and `kind = "redshift"`: serialization failures (40001, Redshift's 1023) and unique violations
/// of a concurrent writer are retried with jittered backoff; every worker exits 0, the tables are exact.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_workers_on_the_same_keys_redshift_like() {
    needs!("concurrent_workers_on_the_same_keys_redshift_like": Postgres, Plugins);
    let db = TestDb::new().await;
    let url = format!("{}?sslmode=disable", db.url);
    // The tables first (redshift-sim covers the tables that exist when it is installed).
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &url);
    std::fs::write(dir.path().join("orders.jsonl"), "").unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("kind = \"postgres\"", "kind = \"redshift\"")
        + "\n[sink.group_commit]\nenabled = false\n";
    std::fs::write(&config, text).unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    db.install_redshift_sim(20);
    same_keys_from_concurrent_workers(&db, "redshift", &url, 4, 400).await;
    assert!(
        db.sim_commits().await > 0,
        "the commits went through redshift-sim"
    );
}

/// `version_column`: a table's rows carry a version, and an older version of a key never replaces a newer
/// one — from a later batch, a later run (a redelivered or replayed old record), or within one batch — on
/// PostgreSQL and on SQLite; a NULL-free tie goes to the later load.
#[tokio::test(flavor = "multi_thread")]
async fn version_column_keeps_the_newest_version() {
    needs!("version_column_keeps_the_newest_version": Postgres, Plugins);
    let db = TestDb::new().await;
    for sink in [
        format!("kind = \"postgres\"\nurl = \"{}\"", db.url),
        "kind = \"sqlite\"\npath = \"weir.db\"".to_string(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = misbehave_config(
            dir.path(),
            &sink,
            "version_column = \"n\"",
            "[batch]\nmax_records = 2",
        );
        let run = |input: &str| {
            std::fs::write(dir.path().join("input.txt"), input).unwrap();
            let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
            assert!(out.status.success(), "{}", show(&out));
        };
        // Batch 1: k=5; batch 2: k=3 (older, later batch) and j=2; batch 3: j=9 then j=4 in one batch.
        run("ver:k:5\nver:x:1\nver:k:3\nver:j:2\nver:j:9\nver:j:4\n");
        // A second input with older versions of both keys, and a newer one of x.
        let second = dir.path().join("input.txt");
        std::fs::remove_file(&second).unwrap();
        let config_text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("input.txt", "second.txt");
        std::fs::write(&config, config_text).unwrap();
        std::fs::write(dir.path().join("second.txt"), "ver:k:1\nver:j:8\nver:x:6\n").unwrap();
        let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", show(&out));
        let rows: Vec<Vec<String>> = if sink.contains("sqlite") {
            query(
                &dir.path().join("weir.db"),
                "SELECT id, CAST(n AS TEXT) FROM t ORDER BY id",
            )
            .await
        } else {
            let r = db
                .rows("SELECT id, CAST(n AS VARCHAR) FROM t ORDER BY id")
                .await;
            db.client()
                .await
                .batch_execute(
                    "DROP TABLE t; DELETE FROM weir_checkpoints; DELETE FROM weir_batches",
                )
                .await
                .unwrap();
            r
        };
        let want = |k: &str, v: &str| vec![k.to_string(), v.to_string()];
        assert_eq!(
            rows,
            vec![want("j", "9"), want("k", "5"), want("x", "6")],
            "{sink}"
        );
    }
}

/// `weir status` on PostgreSQL: partitions, checkpoints, last commits and the last hour's dead letters.
#[tokio::test]
async fn status_shows_partitions_and_dead_letters_on_postgres() {
    needs!("status_shows_partitions_and_dead_letters_on_postgres": Postgres, Plugins);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let batches = db.count("SELECT count(*) FROM weir_batches").await;
    check_quickstart_status(&config, batches);
}

/// `weir dead-letters list` and `export` on PostgreSQL: the quickstart's 10 dead letters listed (and found by
/// reason), their RAW records exported to a file and to S3 — each the exact input line — and the payloads
/// alone as input for `weir plugin test`.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_list_and_export_on_postgres() {
    needs!("dead_letters_list_and_export_on_postgres": Postgres, Aws, Plugins);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
            aws_endpoint()
        );
    std::fs::write(&config, text).unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &AWS_TEST_ENV);
    assert!(out.status.success(), "{}", show(&out));
    let cfg = config.to_str().unwrap();
    let dl = |args: &[&str]| {
        let mut all = vec!["dead-letters"];
        all.extend_from_slice(args);
        let out = weir(&all, &AWS_TEST_ENV);
        assert!(out.status.success(), "{}", show(&out));
        out
    };
    let listed: Vec<serde_json::Value> =
        String::from_utf8_lossy(&dl(&["list", "-c", cfg, "--json"]).stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(listed.len(), 10);
    let by_reason = dl(&[
        "list",
        "-c",
        cfg,
        "--json",
        "--reason",
        "currency: must be three letters",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&by_reason.stdout).lines().count(),
        1
    );
    let future = dl(&["list", "-c", cfg, "--json", "--since", "2999-01-01"]);
    assert_eq!(String::from_utf8_lossy(&future.stdout).lines().count(), 0);

    // The input has a line that is not UTF-8: RAW keeps it as base64, and the payload export leaves it out.
    let input: Vec<Vec<u8>> = std::fs::read(dir.path().join("orders.jsonl"))
        .unwrap()
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let file = dir.path().join("dead.jsonl");
    dl(&["export", "-c", cfg, "--to", file.to_str().unwrap()]);
    let exported = std::fs::read_to_string(&file).unwrap();
    let records: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 10);
    let mut binary = 0;
    for r in &records {
        use base64::Engine as _;
        let payload = r["payload"].as_str().unwrap();
        let bytes = match r["payload_encoding"].as_str().unwrap() {
            "base64" => {
                binary += 1;
                base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .unwrap()
            }
            _ => payload.as_bytes().to_vec(),
        };
        assert!(input.contains(&bytes), "{r}");
        let listed = listed.iter().find(|l| l["record_id"] == r["id"]).unwrap();
        assert_eq!(listed["reason"], r["reason"]);
    }
    let payloads = dir.path().join("dead.txt");
    let out = dl(&[
        "export",
        "-c",
        cfg,
        "--format",
        "payloads",
        "--to",
        payloads.to_str().unwrap(),
    ]);
    let lines: Vec<Vec<u8>> = std::fs::read_to_string(&payloads)
        .unwrap()
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    assert_eq!(lines.len(), 10 - binary);
    assert!(lines.iter().all(|l| input.contains(l)));
    if binary > 0 {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("left out"),
            "{}",
            show(&out)
        );
    }

    let s3 = s3().await;
    let bucket = unique("weir-dead");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    dl(&[
        "export",
        "-c",
        cfg,
        "--to",
        &format!("s3://{bucket}/exports/dead.jsonl"),
    ]);
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key("exports/dead.jsonl")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(String::from_utf8_lossy(&object), exported);
}

/// `weir dead-letters redrive` after a fix (a wider key column, a larger memory cap), on PostgreSQL and on
/// SQLite: a dry run writes nothing; the redrive loads what now emits and drops what the rule now drops,
/// removing their dead letters, leaves alone a newer row of the same key (loaded after the dead-lettered
/// record), keeps the dead letter of a record rejected again, and `weir reconcile` finds nothing wrong
/// afterwards; a second redrive changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_redrive_after_a_fix() {
    needs!("dead_letters_redrive_after_a_fix": Postgres, Plugins);
    let db = TestDb::new().await;
    for sink in [
        format!("kind = \"postgres\"\nurl = \"{}\"", db.url),
        "kind = \"sqlite\"\npath = \"weir.db\"".to_string(),
    ] {
        let postgres = sink.contains("postgres");
        let dir = tempfile::tempdir().unwrap();
        let config = misbehave_config(dir.path(), &sink, "", "[batch]\nmax_records = 3");
        let cfg = config.to_str().unwrap();
        let (a, c) = ("a".repeat(70), "c".repeat(70));
        // Batch 1: b loads, a's key is too long for varchar(64), `alloc` passes the 64 MiB cap; batch 2: c's
        // key is too long, `nope` is no command, e loads.
        std::fs::write(
            dir.path().join("input.txt"),
            format!("ok:b\nver:{a}:5\nalloc\nver:{c}:1\nnope\nok:e\n"),
        )
        .unwrap();
        let out = weir(&["run", "-c", cfg], &[]);
        assert!(out.status.success(), "{}", show(&out));
        let dead = || {
            let out = weir(&["dead-letters", "list", "-c", cfg, "--json"], &[]);
            assert!(out.status.success(), "{}", show(&out));
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        assert_eq!(dead(), 4, "{sink}");

        // The fix: the key column widened (in the config and the table), the memory cap raised.
        let fixed = std::fs::read_to_string(&config)
            .unwrap()
            .replace("varchar(64)", "varchar(128)")
            .replace("[rule]\n", "[rule]\nmemory_limit_mib = 1024\n")
            .replace("input.txt", "second.txt");
        std::fs::write(&config, fixed).unwrap();
        if postgres {
            db.client()
                .await
                .batch_execute("ALTER TABLE t ALTER COLUMN id TYPE varchar(128)")
                .await
                .unwrap();
        } else {
            // SQLite changes a column's declared type by rebuilding the table.
            let file = dir.path().join("weir.db");
            let ddl = query(&file, "SELECT sql FROM sqlite_master WHERE name = 't'").await;
            let wide = ddl[0][0]
                .replacen("\"t\"", "\"t_wide\"", 1)
                .replace("VARCHAR(64)", "VARCHAR(128)");
            assert!(
                wide.contains("t_wide") && wide.contains("VARCHAR(128)"),
                "{wide}"
            );
            execute(
                &file,
                &format!(
                    "{wide}; INSERT INTO t_wide SELECT * FROM t; DROP TABLE t; \
                     ALTER TABLE t_wide RENAME TO t"
                ),
            )
            .await;
        }
        // A newer record of a's key loads after the fix.
        std::fs::write(dir.path().join("second.txt"), format!("ver:{a}:7\n")).unwrap();
        let out = weir(&["run", "-c", cfg], &[]);
        assert!(out.status.success(), "{sink}: {}", show(&out));

        let redrive = |extra: &[&str]| -> serde_json::Value {
            let mut args = vec!["dead-letters", "redrive", "-c", cfg, "--json"];
            args.extend_from_slice(extra);
            let out = weir(&args, &[]);
            assert!(out.status.success(), "{}", show(&out));
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
        };
        let rows = || async {
            let sql = "SELECT id, CAST(n AS VARCHAR(16)) FROM t ORDER BY id";
            if postgres {
                db.rows(sql).await
            } else {
                query(&dir.path().join("weir.db"), sql).await
            }
        };
        let before = rows().await;
        let dry = redrive(&["--dry-run"]);
        assert_eq!(
            (&dry["selected"], &dry["emitted"], &dry["dropped"]),
            (&4.into(), &2.into(), &1.into()),
            "{dry}"
        );
        assert_eq!(dry["rejected"], serde_json::json!({"unknown command": 1}));
        assert_eq!(dead(), 4, "a dry run writes nothing");
        assert_eq!(rows().await, before);

        let done = redrive(&[]);
        assert_eq!(
            (&done["emitted"], &done["dropped"], &done["rows_kept"]),
            (&2.into(), &1.into(), &1.into()),
            "{done}"
        );
        assert_eq!(done["rejected"], serde_json::json!({"unknown command": 1}));
        let want = |id: &str, n: &str| vec![id.to_string(), n.to_string()];
        let loaded = vec![want(&a, "7"), want("b", "1"), want(&c, "1"), want("e", "1")];
        assert_eq!(rows().await, loaded, "{sink}");
        assert_eq!(dead(), 1, "only `nope` is still a dead letter");
        let out = weir(&["reconcile", "-c", cfg], &[]);
        assert!(out.status.success(), "{}", show(&out));

        let again = redrive(&[]);
        assert_eq!(
            (&again["selected"], &again["emitted"], &again["dropped"]),
            (&1.into(), &0.into(), &0.into()),
            "{again}"
        );
        assert_eq!(rows().await, loaded);
        assert_eq!(dead(), 1);
        if postgres {
            db.client()
                .await
                .batch_execute(
                    "DROP TABLE t; DELETE FROM weir_checkpoints; DELETE FROM weir_batches; \
                     DELETE FROM weir_dead_letters",
                )
                .await
                .unwrap();
        }
    }
}
