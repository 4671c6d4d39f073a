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
    needs!("plugin_emitted_sql_names_never_reach_sql": Postgres, Plugins);
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
    let sink = format!("kind = \"postgres\"\nurl = \"{}\"", db.url);
    let config = misbehave_config(dir.path(), &sink, "", "");
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
    needs!("hostile_records_are_dead_lettered_or_stored_verbatim": Postgres, Plugins);
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
    needs!("file_source_survives_random_kill_9": Postgres, Plugins);
    let _serial = SERIAL.lock().await;
    random_kill_9("").await;
}

/// The same kill -9 loop with grouped commits (`[sink.group_commit]`, local staging, the registry in the
/// database): each kill lands wherever the worker and its loader are — staging, registering, inside or right
/// after a merge, waiting for a fate — and the restarted worker's loader takes the lease over once the killed
/// one's has run out. The same exact final state. (At most 2 batches per merge, so that a run takes many merges
/// and the kills, after 1–8 more merged batches, land inside it.)
#[tokio::test(flavor = "multi_thread")]
async fn grouped_commits_survive_random_kill_9() {
    needs!("grouped_commits_survive_random_kill_9": Postgres, Plugins);
    let _serial = SERIAL.lock().await;
    random_kill_9(
        "
[sink.group_commit]
enabled = true
interval_ms = 100
max_batches = 2
lease_secs = 2
[sink.group_commit.staging]
kind = \"local\"
dir = \"staged\"
",
    )
    .await;
}

/// The kill -9 loop over the quickstart on PostgreSQL with `extra` appended to its configuration.
async fn random_kill_9(extra: &str) {
    let iterations = crash_iterations();
    let n = 300 * iterations;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_records = 4", "max_records = 10")
        + extra;
    std::fs::write(&config, text).unwrap();
    let (input, expected_total) = orders_input(n);
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();

    let mut rng = CrashRng::new();
    let mut killed = 0;
    for _ in 0..iterations {
        let before = db.batches_so_far().await;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "-c", config.to_str().unwrap()])
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The kill lands inside the run by construction: after the run has committed 1–8 more batches (of the
        // 30 per kill the input holds) and a random 0–20 ms, whatever the machine's speed.
        let step = 1 + rng.below(8) as i64;
        let mid_run = db
            .wait_for_progress(before, step, 20, &mut rng, || {
                child.try_wait().unwrap().is_none()
            })
            .await;
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let committed = db
            .count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await;
        if mid_run && committed < n as i64 {
            killed += 1;
        }
    }
    eprintln!("{killed} of {iterations} runs killed mid-way");
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        killed, iterations,
        "only {killed} of {iterations} runs were killed mid-way"
    );

    let rows = db.order_totals().await;
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

/// PostgreSQL restarted in the middle of a run (the local cluster, `pg_ctlcluster … restart`): the worker retries
/// with backoff, reconnects by itself and finishes; every order exactly once, nothing acknowledged early (the
/// checkpoint equals the last committed batch).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_run_recovers() {
    needs!("postgres_restart_mid_run_recovers": Postgres, Plugins);
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
    let rows = db.order_totals().await;
    assert_eq!(rows, expected_total);
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        n as i64
    );
    assert_eq!(
        db.rows(
            "SELECT position FROM weir_checkpoints WHERE \"partition\" NOT LIKE '%#fingerprint'"
        )
        .await,
        vec![vec![n.to_string()]]
    );
}

/// A rule that drops 5,000 records of one batch, each with its own reason (`duplicate of <record id>`): the
/// ledger keeps the 32 most frequent reasons and counts the rest as `(other reasons)`, so the ledger row fits
/// its column and the batch commits (it used to exceed `VARCHAR(65535)`, fail with 22001 on every attempt and
/// wedge the partition for good). The run summary stays bounded the same way.
#[tokio::test(flavor = "multi_thread")]
async fn distinct_drop_reasons_never_wedge_the_ledger() {
    needs!("distinct_drop_reasons_never_wedge_the_ledger": Postgres, Plugins);
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let n = 5000;
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!(
            "dropas:duplicate of file/a-rather-long-file-name-for-its-partition.jsonl/{i:06}\n"
        ));
    }
    input.push_str("ver:kept:7\n");
    std::fs::write(dir.path().join("input.txt"), input).unwrap();
    let sink = format!("kind = \"postgres\"\nurl = \"{}\"", db.url);
    let config = misbehave_config(dir.path(), &sink, "", "[batch]\nmax_records = 6000");
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let ledger = db
        .rows("SELECT dropped, drop_reasons FROM weir_batches")
        .await;
    assert_eq!(ledger.len(), 1, "one batch");
    assert_eq!(ledger[0][0], n.to_string());
    let reasons: std::collections::BTreeMap<String, usize> =
        serde_json::from_str(&ledger[0][1]).unwrap();
    assert!(ledger[0][1].len() <= 60_000, "{} bytes", ledger[0][1].len());
    assert_eq!(reasons.values().sum::<usize>(), n, "every drop counted");
    assert_eq!(reasons.len(), 33, "32 reasons and the rest");
    assert_eq!(reasons["(other reasons)"], n - 32);
    assert_eq!(db.count("SELECT count(*) FROM t").await, 1);
    // The summary lists the top reasons and folds the rest.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("dropped: {n}")), "{stdout}");
    assert!(stdout.contains("× (other reasons)"), "{stdout}");
    assert!(stdout.lines().count() < 60, "{stdout}");
}

/// The reply to a batch's COMMIT is lost (a front passes the COMMIT to PostgreSQL, swallows its answer and
/// cuts the connection): the worker retries, finds its checkpoint already moved by its own batch's ledger row,
/// counts the batch as committed and goes on. It used to report the partition "owned by another worker" and
/// stop. Every order once, each batch once in the ledger.
#[tokio::test(flavor = "multi_thread")]
async fn lost_commit_reply_is_not_a_lost_lease() {
    needs!("lost_commit_reply_is_not_a_lost_lease": Postgres, Plugins);
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let target = db.host_port();
    let front = TcpFront::cutting_answer_to(&target, b"COMMIT", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url_via(&front.addr));
    let n = 200;
    let (input, expected_total) = orders_input(n);
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[retry]\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\n"),
    )
    .unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already committed"),
        "the lost replies were seen: {}",
        show(&out)
    );
    let rows = db.order_totals().await;
    assert_eq!(rows, expected_total);
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        n as i64,
        "each batch once in the ledger"
    );
}

/// The database path black-holed in the middle of a run (a front that keeps the connections open and
/// forwards nothing, as a dead network path looks): the commit in flight times out after
/// `sink.call_timeout_secs`, its session is dropped, new connections time out after
/// `sink.connect_timeout_secs`, and once the path is back the worker finishes by itself: every order once.
/// (Without call timeouts the commit waited for ever.)
#[tokio::test(flavor = "multi_thread")]
async fn black_holed_database_times_out_and_recovers() {
    needs!("black_holed_database_times_out_and_recovers": Postgres, Plugins);
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let target = db.host_port();
    let front = TcpFront::with_mode(&target, FrontMode::Forward).await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &db.url_via(&front.addr));
    let n = 2000;
    let (input, expected_total) = orders_input(n);
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_records = 4", "max_records = 10")
        .replace(
            "[sink]\n",
            "[sink]\ncall_timeout_secs = 2\nconnect_timeout_secs = 2\n",
        );
    assert!(text.contains("call_timeout_secs = 2"), "{text}");
    std::fs::write(
        &config,
        format!(
            "{text}\n[retry]\nmax_attempts = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 500\n\
             [worker]\nadmin_bind = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", config.to_str().unwrap()])
        .env("WEIR_LOG", "warn");
    let child = Background::spawn(cmd);
    db.wait_for_batches(3).await;
    front.set_mode(FrontMode::BlackHole);
    let at_cut = db.batches_so_far().await;
    // Three call timeouts: the commit in flight and the reconnects have all timed out by then.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(
        db.batches_so_far().await <= at_cut + 1,
        "nothing commits through a black hole"
    );
    assert_eq!(
        admin_get(port, "/readyz").0,
        503,
        "not ready while the database does not answer"
    );
    front.set_mode(FrontMode::Forward);
    let out = child.wait(std::time::Duration::from_secs(300)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sink.call_timeout_secs")
            || String::from_utf8_lossy(&out.stderr).contains("sink.connect_timeout_secs"),
        "the calls timed out: {}",
        show(&out)
    );
    let rows = db.order_totals().await;
    assert_eq!(rows, expected_total);
}

/// A value the database refuses through a constraint whose name contains `1023` (Redshift's serialization
/// error number): classified by SQLSTATE (23514, a data error), the record is dead-lettered with the reason
/// and the rest commits. (Matching `1023` in the message retried it as a serialization failure until the
/// worker gave up.)
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_classified_by_sqlstate_not_by_words() {
    needs!("errors_are_classified_by_sqlstate_not_by_words": Postgres, Plugins);
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE t (id VARCHAR(64) NOT NULL, n INTEGER, _weir_record_id VARCHAR(1024) NOT NULL, \
             _weir_batch_id VARCHAR(1024) NOT NULL, _weir_rule_digest VARCHAR(64) NOT NULL, \
             _weir_loaded_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (id), \
             CONSTRAINT n_below_1023 CHECK (n < 1023))",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input.txt"),
        "ver:a:1\nver:b:5000\nver:c:3\n",
    )
    .unwrap();
    let sink = format!("kind = \"postgres\"\nurl = \"{}\"", db.url);
    let config = misbehave_config(dir.path(), &sink, "", "[retry]\nmax_attempts = 3");
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        db.rows("SELECT id, n FROM t ORDER BY id").await,
        vec![
            vec!["a".to_string(), "1".into()],
            vec!["c".into(), "3".into()]
        ]
    );
    let dead = db
        .rows("SELECT record_id, stage, reason FROM weir_dead_letters")
        .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0], "file/input.txt/2");
    assert_eq!(dead[0][1], "sink");
    assert!(dead[0][2].contains("n_below_1023"), "{dead:?}");
}

/// Standard input has no identity across runs: two `… | weir run` with `path = "-"` each load all of their
/// own lines (each run reads its own partition). It used to resume the second stream after the first one's
/// checkpoint and load 3 of 5 lines.
#[tokio::test(flavor = "multi_thread")]
async fn stdin_runs_never_resume_each_other() {
    needs!("stdin_runs_never_resume_each_other": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = misbehave_config(dir.path(), "kind = \"sqlite\"\npath = \"weir.db\"", "", "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"input.txt\"", "path = \"-\"");
    std::fs::write(&config, text).unwrap();
    for input in ["ver:a:1\nver:b:1\n", "ver:c:1\nver:d:1\nver:e:1\n"] {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "-c", &config])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
    let db = dir.path().join("weir.db");
    assert_eq!(
        count(&db, "SELECT count(*) FROM t").await,
        5,
        "every line of both runs"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT \"partition\") FROM weir_batches"
        )
        .await,
        2,
        "one partition per run"
    );
}

/// A file rewritten in place is refused with a message that says how to start over (resuming its
/// checkpoint would skip its first lines: it used to load 3 of 5); a file that was only appended to resumes
/// and loads just the new lines.
#[tokio::test(flavor = "multi_thread")]
async fn rewritten_file_is_refused_appended_file_resumes() {
    needs!("rewritten_file_is_refused_appended_file_resumes": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = misbehave_config(dir.path(), "kind = \"sqlite\"\npath = \"weir.db\"", "", "");
    let input = dir.path().join("input.txt");
    let run = || weir(&["run", "-c", config.to_str().unwrap()], &[]);
    std::fs::write(&input, "ver:a:1\nver:b:1\n").unwrap();
    let out = run();
    assert!(out.status.success(), "{}", show(&out));
    // Appended: the first bytes are the same; only the new lines load.
    std::fs::write(&input, "ver:a:1\nver:b:1\nver:c:1\n").unwrap();
    let out = run();
    assert!(out.status.success(), "{}", show(&out));
    let db = dir.path().join("weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM t").await, 3);
    assert_eq!(
        count(&db, "SELECT sum(records_in) FROM weir_batches").await,
        3
    );
    // Rewritten: another file under the same name.
    std::fs::write(&input, "ver:x:1\nver:y:1\nver:z:1\nver:w:1\nver:v:1\n").unwrap();
    let out = run();
    assert!(
        !out.status.success(),
        "a rewritten file must be refused: {}",
        show(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the input changed since its checkpoint"),
        "{err}"
    );
    assert!(
        err.contains("source.name"),
        "the message says how to start over: {err}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM t").await,
        3,
        "nothing of it loaded"
    );
    // As the message says: another source.name loads it as new input, all five lines.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "path = \"input.txt\"",
        "path = \"input.txt\"\nname = \"input-v2\"",
    );
    std::fs::write(&config, text).unwrap();
    let out = run();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(count(&db, "SELECT count(*) FROM t").await, 8);
}
