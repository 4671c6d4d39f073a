//! Reliability: hostile records and a plugin emitting SQL-looking names through the real `weir` binary into
//! real PostgreSQL. Each one is either dead-lettered with a reason or stored verbatim as data; the RAW copy
//! keeps every byte; nothing reaches SQL but bind parameters and declared identifiers.

mod common;

use common::*;

/// The tests of this file one at a time: one of them restarts the PostgreSQL server the others use.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One input line per hostile case: (record line number, bytes).
fn hostile_lines() -> Vec<Vec<u8>> {
    let order = |id: &str, extra: &str| {
        format!(
            r#"{{"order_id": "{id}", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{{"sku": "A", "qty": 1, "unit_price": "1.00"}}]{extra}}}"#
        )
        .into_bytes()
    };
    let deep = format!(
        r#"{{"order_id": "o-deep", "x": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    vec![
        // 1: invalid UTF-8
        b"\xff\xfe{\"order_id\": \"o-bad-utf8\"}".to_vec(),
        // 2: a 2 MB record (an unknown field the rule ignores): loaded, RAW keeps it whole
        order("o-big", &format!(r#", "notes": "{}""#, "x".repeat(2 << 20))),
        // 3: 10,000 levels of nesting
        deep.into_bytes(),
        // 4: a NUL character in a text value (escaped in JSON): refused by the host's value check
        br#"{"order_id": "o-nul", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{"sku": "A\u0000B", "qty": 1, "unit_price": "1.00"}]}"#.to_vec(),
        // 5: a raw NUL byte in the payload: not JSON
        b"{\"order_id\": \"o-\x00\"}".to_vec(),
        // 6: a number beyond every type
        br#"{"order_id": "o-huge", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{"sku": "A", "qty": 1e400, "unit_price": "1.00"}]}"#.to_vec(),
        // 7: an integer beyond 64 bits
        br#"{"order_id": "o-big-int", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{"sku": "A", "qty": 99999999999999999999, "unit_price": "1.00"}]}"#.to_vec(),
        // 8: wrong types
        br#"{"order_id": {"a": 1}, "placed_at": 5, "currency": true, "lines": "x"}"#.to_vec(),
        // 9: SQL in values: stored verbatim
        order("o-1'; DROP TABLE orders; --", r#", "customer_id": "\"; DELETE FROM weir_batches; --""#),
        // 10: a value longer than its column (varchar(36)): refused with the column named
        order(&"o".repeat(37), ""),
    ]
}

/// A plugin that emits SQL-looking table and column names and SQL-looking values, into PostgreSQL with every
/// statement traced (`weir::sql=trace`): the rows with undeclared names are dead-lettered with the name quoted
/// (escaped) in the reason, the SQL-looking ids are stored verbatim, and no statement sent to the database holds anything
/// but declared identifiers (the hostile strings never appear in SQL text, only as bind parameters).
#[tokio::test]
async fn plugin_emitted_sql_names_never_reach_sql() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = [
        "x'); DROP TABLE t; --",
        "\"; DELETE FROM weir_batches; --",
        "$1 OR 1=1",
    ];
    let mut input = String::from("badtable\nbadcolsql\nbadcol\n");
    for id in ids {
        input.push_str(&format!("sqlid:{id}\n"));
    }
    std::fs::write(dir.path().join("input.txt"), &input).unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"[source]
kind = "file"
path = "input.txt"
[raw]
kind = "local"
dir = "raw"
[rule]
plugin = "{plugin}"
[sink]
kind = "postgres"
url = "{url}"
[[sink.tables]]
name = "t"
primary_key = ["id"]
columns = {{ id = "varchar(64)", n = "integer" }}
"#,
            plugin = plugin("misbehave").display(),
            url = db.url
        ),
    )
    .unwrap();
    let (out, statements) = run_traced(&config);
    assert!(out.status.success(), "{}", show(&out));

    let mut stored: Vec<String> = db
        .rows("SELECT id FROM t WHERE n = 2")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    stored.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(stored, expected, "SQL-looking ids stored verbatim");
    let dead = db
        .rows("SELECT record_id, stage, reason FROM weir_dead_letters ORDER BY record_id")
        .await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    for (line, name) in [
        (1, "t\"; DROP TABLE t; --"),
        (2, "n\" = 0; DROP TABLE t; --"),
        (3, "evil"),
    ] {
        let d = dead
            .iter()
            .find(|r| r[0] == format!("file/input.txt/{line}"))
            .unwrap_or_else(|| panic!("line {line} not dead-lettered: {dead:?}"));
        assert_eq!(d[1], "validate", "{d:?}");
        // Names are quoted with their escapes (at most 64 characters), so the reason stays one readable line.
        let quoted = format!("`{}`", name.escape_debug());
        assert!(
            d[2].contains(&quoted),
            "line {line}: the reason names {quoted}: {d:?}"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 't'")
            .await,
        1,
        "the table is intact"
    );

    assert!(
        statements.iter().any(|s| s.contains("INSERT INTO")),
        "statements were traced: {}",
        statements.len()
    );
    for s in &statements {
        for hostile in [
            "DROP TABLE t;",
            "DELETE FROM weir_batches",
            "evil",
            "1=1",
            "; --",
        ] {
            assert!(!s.contains(hostile), "{hostile:?} reached SQL: {s}");
        }
    }
}

/// Every hostile record is dead-lettered with a reason naming what is wrong, or stored verbatim; RAW holds
/// every byte; the worker exits 0 and the weir tables are intact.
#[tokio::test]
async fn hostile_records_are_dead_lettered_or_stored_verbatim() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let lines = hostile_lines();
    let mut input = Vec::new();
    for l in &lines {
        input.extend_from_slice(l);
        input.push(b'\n');
    }
    std::fs::write(dir.path().join("orders.jsonl"), &input).unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));

    // Stored verbatim: the 2 MB order and the SQL-looking values.
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 2);
    let sql = db
        .rows("SELECT order_id, customer_id FROM orders WHERE order_id LIKE 'o-1%'")
        .await;
    assert_eq!(
        sql,
        vec![vec![
            "o-1'; DROP TABLE orders; --".to_string(),
            "\"; DELETE FROM weir_batches; --".to_string()
        ]]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM orders WHERE order_id = 'o-big'")
            .await,
        1
    );
    // Dead-lettered, each with a reason naming the problem.
    let dead: std::collections::BTreeMap<String, (String, String)> = db
        .rows("SELECT record_id, stage, reason FROM weir_dead_letters")
        .await
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
        .collect();
    let reason = |line: usize| -> &str {
        &dead
            .get(&format!("file/orders.jsonl/{line}"))
            .unwrap_or_else(|| panic!("line {line} dead-lettered: {dead:#?}"))
            .1
    };
    assert!(
        reason(1).starts_with("payload: not valid UTF-8"),
        "{}",
        reason(1)
    );
    assert!(reason(3).contains("recursion limit"), "{}", reason(3));
    assert!(reason(4).contains("NUL"), "{}", reason(4));
    assert!(
        reason(5).starts_with("payload: not valid JSON"),
        "{}",
        reason(5)
    );
    assert!(
        reason(6).starts_with("payload: not valid JSON"),
        "{}",
        reason(6)
    );
    assert!(reason(7).starts_with("lines[0].qty"), "{}", reason(7));
    assert!(reason(8).starts_with("order_id"), "{}", reason(8));
    assert!(reason(10).contains("order_id"), "{}", reason(10));
    assert_eq!(dead.len(), 8);
    // Every record accounted for in a balanced ledger.
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        10
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
    // RAW keeps every byte of every record.
    let raw = raw_lines(&dir.path().join("out/raw"));
    assert_eq!(raw.len(), lines.len());
    for (i, l) in lines.iter().enumerate() {
        let line = &raw[&format!("file/orders.jsonl/{}", i + 1)];
        assert_eq!(&line.payload_bytes().unwrap(), l, "line {}", i + 1);
    }
    // And reconcile agrees.
    let out = weir(&["reconcile", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
}

/// kill -9 at random moments (`WEIR_CRASH_ITERATIONS`, default 10; 300 orders per kill) of a file → local RAW →
/// PostgreSQL run,
/// restarting each time, then once to the end: the final tables hold every input order exactly once, with the
/// values computed independently from the input; RAW holds every record; every ledger batch balances.
#[tokio::test(flavor = "multi_thread")]
async fn file_source_survives_random_kill_9() {
    let _serial = SERIAL.lock().await;
    let iterations = crash_iterations();
    let n = 300 * iterations;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_records = 4", "max_records = 10");
    std::fs::write(&config, text).unwrap();
    let (input, expected_total) = orders_input(n);
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();

    let mut rng = CrashRng::new();
    let mut killed = 0;
    for _ in 0..iterations {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "-c", config.to_str().unwrap()])
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Past start-up (config, cached plugin, sink) and well before the end: a whole run of 300 batches takes
        // seconds, each kill leaves most of it for the next run.
        std::thread::sleep(std::time::Duration::from_millis(150 + rng.below(300)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let _ = child.wait();
    }
    eprintln!("{killed} of {iterations} runs killed mid-way");
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        killed >= iterations / 2,
        "only {killed} of {iterations} runs were killed mid-way"
    );

    let rows: std::collections::BTreeMap<String, String> = db
        .rows("SELECT order_id, CAST(total AS VARCHAR) FROM orders")
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        rows, expected_total,
        "every order exactly once, with its total"
    );
    let lines_expected: i64 = (0..n).map(|i| (i % 5 + 1) as i64).sum();
    assert_eq!(
        db.count("SELECT count(*) FROM order_lines").await,
        lines_expected
    );
    assert_eq!(db.count("SELECT count(*) FROM weir_dead_letters").await, 0);
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        n as i64,
        "each record in one batch"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
    // RAW holds every record (a batch archived but not committed before a kill may be archived again under
    // other bounds after the restart: RAW is an archive, the ledger says which copy loaded).
    let mut ids = std::collections::BTreeSet::new();
    let mut stack = vec![dir.path().join("out/raw")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".jsonl.gz") {
                let key = p.to_string_lossy().into_owned();
                for line in weir::raw::decode(&key, &std::fs::read(&p).unwrap()).unwrap() {
                    ids.insert(line.id);
                }
            }
        }
    }
    let want: std::collections::BTreeSet<String> =
        (1..=n).map(|l| format!("file/orders.jsonl/{l}")).collect();
    assert_eq!(ids, want, "RAW holds every record");
    // Reconcile agrees: nothing unaccounted, nothing missing or drifted.
    let out = weir(&["reconcile", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
}

/// The generated orders of the crash tests: (input, order id → expected total).
fn orders_input(n: usize) -> (String, std::collections::BTreeMap<String, String>) {
    let mut input = String::new();
    let mut expected_total = std::collections::BTreeMap::new();
    for i in 0..n {
        let lines = i % 5 + 1;
        let cents = (i % 100) as u64 + 100;
        let items: Vec<String> = (0..lines)
            .map(|l| {
                format!(
                    r#"{{"sku": "S{l}", "qty": 2, "unit_price": "{}.{:02}"}}"#,
                    cents / 100,
                    cents % 100
                )
            })
            .collect();
        input.push_str(&format!(
            r#"{{"order_id": "o-{i:05}", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{}]}}"#,
            items.join(", ")
        ));
        input.push('\n');
        let total = cents * 2 * lines as u64;
        expected_total.insert(
            format!("o-{i:05}"),
            format!("{}.{:02}", total / 100, total % 100),
        );
    }
    (input, expected_total)
}

/// PostgreSQL restarted in the middle of a run (the local cluster, `pg_ctlcluster … restart`): the worker retries
/// with backoff, reconnects by itself and finishes; every order exactly once, nothing acknowledged early (the
/// checkpoint equals the last committed batch).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_run_recovers() {
    let _serial = SERIAL.lock().await;
    let Some(version) = std::fs::read_dir("/etc/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max()
    }) else {
        panic!("the local PostgreSQL cluster (scripts/services.sh) is needed to restart it");
    };
    let n = 4000;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_records = 4", "max_records = 20");
    std::fs::write(
        &config,
        format!(
            "{text}\n[retry]\nmax_attempts = 100\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\n"
        ),
    )
    .unwrap();
    let (input, expected_total) = orders_input(n);
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", config.to_str().unwrap()])
        .env("WEIR_LOG", "warn");
    let child = Background::spawn(cmd);
    // Restart once some batches have committed.
    db.wait_for_batches(3).await;
    let restart = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", show(&restart));
    let out = child.wait(std::time::Duration::from_secs(300)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "the run should have seen the restart: {}",
        show(&out)
    );
    let rows: std::collections::BTreeMap<String, String> = db
        .rows("SELECT order_id, CAST(total AS VARCHAR) FROM orders")
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(rows, expected_total);
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        n as i64
    );
    assert_eq!(
        db.rows("SELECT position FROM weir_checkpoints").await,
        vec![vec![n.to_string()]]
    );
}
