//! Grouped commits (`[sink.group_commit]`, docs/GROUP-COMMIT.md) through the real `weir` binary on PostgreSQL:
//! the same final tables and ledger as per-batch commits, a fleet of workers on the Redshift-like database, and
//! a loader killed between its merge and the registry update, and the fleet coordinated through DynamoDB.

mod common;

use common::*;

/// The grouped-commit settings appended to a quickstart PostgreSQL config (staging under the test's folder).
const GROUPED: &str = "
[sink.group_commit]
enabled = true
interval_ms = 100
lease_secs = 2
[sink.group_commit.staging]
kind = \"local\"
dir = \"staged\"
";

/// The quickstart on PostgreSQL, per batch or grouped.
fn config(dir: &std::path::Path, url: &str, grouped: bool) -> std::path::PathBuf {
    let path = quickstart_postgres_in(dir, url);
    if grouped {
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(GROUPED);
        std::fs::write(&path, text).unwrap();
    }
    path
}

/// Final tables and ledger counts, without wall-clock columns.
async fn state(db: &TestDb) -> Vec<Vec<Vec<String>>> {
    vec![
        db.rows("SELECT order_id, total::text, country, _weir_record_id FROM orders ORDER BY 1")
            .await,
        db.rows("SELECT order_id, line_no::text, sku, _weir_record_id FROM order_lines ORDER BY 1, 2")
            .await,
        db.rows("SELECT record_id, stage, reason FROM weir_dead_letters ORDER BY 1")
            .await,
        db.rows(
            "SELECT batch_id, records_in::text, emitted::text, dropped::text, rejected::text, rows_out::text \
             FROM weir_batches ORDER BY 1",
        )
        .await,
        db.rows("SELECT source, \"partition\", position FROM weir_checkpoints WHERE source = 'file' ORDER BY 1, 2")
            .await,
    ]
}

/// A grouped run leaves exactly what a per-batch run leaves: rows, dead letters, one ledger row per batch,
/// the checkpoint; every registered batch is merged and its staged object removed.
#[tokio::test]
async fn grouped_commits_leave_the_per_batch_state() {
    needs!("grouped_commits_leave_the_per_batch_state": Postgres, Plugins);
    let (per_batch, grouped) = (TestDb::new().await, TestDb::new().await);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = weir(
        &[
            "run",
            "-c",
            config(a.path(), &per_batch.url, false).to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let out = weir(
        &[
            "run",
            "-c",
            config(b.path(), &grouped.url, true).to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("records in: 17 in 5 batches"),
        "{}",
        show(&out)
    );
    assert_eq!(state(&grouped).await, state(&per_batch).await);
    assert_eq!(
        grouped
            .rows("SELECT fate, count(*)::text FROM weir_staged GROUP BY fate")
            .await,
        vec![vec!["merged".to_string(), "5".to_string()]]
    );
    let left = std::fs::read_dir(b.path().join("staged/staged"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "staged objects are removed once merged");
    // `weir status` reads the registry: nothing waits for the loader after the run.
    let cfg = config(b.path(), &grouped.url, true);
    let status = weir(&["status", "-c", cfg.to_str().unwrap(), "--json"], &[]);
    assert!(status.status.success(), "{}", show(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pending_merge"]["batches"], 0, "{status:#}");
    assert_eq!(status["partitions"][0]["records"], 17, "{status:#}");
    // A second run reads from the checkpoint: nothing new, nothing changed.
    let before = state(&grouped).await;
    let out = weir(
        &[
            "run",
            "-c",
            config(b.path(), &grouped.url, false).to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(state(&grouped).await, before);
}

/// A batch the loader refused (its worker had lost the partition, or a successor was registered before its
/// predecessor by another worker reading the same shard) is read again later by the partition's owner, from the
/// checkpoint, under the same batch id. That registration counts: the batch merges. (A refusal used to stick to
/// the id, so the owner was told "refused" again after every re-read and the partition never moved.)
#[tokio::test]
async fn a_refused_batch_registered_again_merges() {
    needs!("a_refused_batch_registered_again_merges": Postgres, Plugins);
    let (per_batch, grouped) = (TestDb::new().await, TestDb::new().await);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = weir(
        &[
            "run",
            "-c",
            config(a.path(), &per_batch.url, false).to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let first = per_batch
        .rows(
            "SELECT batch_id, \"partition\" FROM weir_batches ORDER BY first_position::int LIMIT 1",
        )
        .await
        .remove(0);
    // The grouped run's tables (the registry among them) from a run on an empty file of another name.
    let path = config(b.path(), &grouped.url, true);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(b.path().join("empty.jsonl"), "").unwrap();
    let empty = b.path().join("empty.toml");
    std::fs::write(&empty, text.replace("orders.jsonl", "empty.jsonl")).unwrap();
    let out = weir(&["run", "-c", empty.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    grouped
        .rows(&format!(
            "INSERT INTO weir_staged (batch_id, source, \"partition\", staged_key, bytes, registered_us, fate) \
             VALUES ('{}', 'file', '{}', 'staged/gone', 0, 0, 'refused')",
            first[0], first[1]
        ))
        .await;
    let out = weir(&["run", "-c", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(state(&grouped).await, state(&per_batch).await);
    assert_eq!(
        grouped
            .rows("SELECT fate, count(*)::text FROM weir_staged GROUP BY fate")
            .await,
        vec![vec!["merged".to_string(), "5".to_string()]]
    );
}

/// The database refuses one record's row (a CHECK constraint a DBA added to `orders`): the loader's merge
/// fails on that batch, the guilty record is found and dead-lettered, and everything else merges — the same
/// final tables, dead letters and ledger as per-batch commits under the same constraint. Also with the COPY
/// stage fill on Redshift: the merge loaded from row files is done again with the staged rows themselves,
/// which finds the record.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_row_isolates_its_record_and_merges_the_rest() {
    needs!("a_refused_row_isolates_its_record_and_merges_the_rest": Postgres, Aws, Plugins);
    let (per_batch, grouped, copied) = (
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let input = std::fs::read(root().join("examples/quickstart/orders.jsonl")).unwrap();
    let s3 = s3().await;
    let bucket = unique("weir-refused");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let front = copy_front::CopyFront::start(&copied.host_port()).await;
    let copy_config = |dir: &std::path::Path| {
        let url = format!("{}?sslmode=disable", copied.url_via(&front.addr));
        let cfg = config(dir, &url, false);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "kind = \"postgres\"",
            &format!(
                "kind = \"redshift\"\nstage_fill = {{ kind = \"copy\", bucket = \"{bucket}\", \
                 iam_role = \"arn:aws:iam::123456789012:role/weir-copy\" }}"
            ),
        ) + &format!(
            "\n[sink.group_commit]\ninterval_ms = 100\nlease_secs = 2\n[aws]\nendpoint_url = \"{}\"\n\
             region = \"us-east-1\"\n",
            aws_endpoint()
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let configs = [
        (&per_batch, config(dirs[0].path(), &per_batch.url, false)),
        (&grouped, config(dirs[1].path(), &grouped.url, true)),
        (&copied, copy_config(dirs[2].path())),
    ];
    for ((db, cfg), dir) in configs.iter().zip(&dirs) {
        std::fs::write(dir.path().join("orders.jsonl"), "").unwrap();
        let out = weir(&["run", "-c", cfg.to_str().unwrap()], &AWS_TEST_ENV);
        assert!(out.status.success(), "{}", show(&out));
        db.client()
            .await
            .batch_execute("ALTER TABLE orders ADD CONSTRAINT no_us_orders CHECK (country <> 'US')")
            .await
            .unwrap();
        std::fs::write(dir.path().join("orders.jsonl"), &input).unwrap();
        let out = weir(&["run", "-c", cfg.to_str().unwrap()], &AWS_TEST_ENV);
        assert!(out.status.success(), "{}", show(&out));
    }
    let want = state(&per_batch).await;
    assert!(
        want[2]
            .iter()
            .any(|r| r[0].ends_with("/2") && r[1] == "sink"),
        "the per-batch run dead-letters the refused order: {:?}",
        want[2]
    );
    for db in [&grouped, &copied] {
        assert_eq!(state(db).await, want);
        assert_eq!(
            db.rows("SELECT fate, count(*)::text FROM weir_staged GROUP BY fate")
                .await,
            vec![vec!["merged".to_string(), "5".to_string()]]
        );
    }
    assert!(front.copies() > 0, "the COPY was tried first");
    assert_eq!(keys(&s3, &bucket).await, Vec::<String>::new());
}

/// A worker killed at each step of the protocol — after staging a batch (before registering it), after
/// registering it (before its merge), right after the loader's merge committed (before the registry learns
/// the fates), after its batch merged (before the acknowledgement) — and run again on more input: the rows
/// are those of one per-batch run over all the input, every record is in exactly one ledger batch, and every
/// registered batch ends merged (or refused, when the rerun staged it from a checkpoint the dead run's batches
/// then moved). After the loader's crash the next run's loader, once the dead one's lease ran
/// out, finds the merged batches' ledger rows and marks them merged without merging them again.
#[tokio::test]
async fn killed_at_every_step_loses_and_doubles_nothing() {
    needs!("killed_at_every_step_loses_and_doubles_nothing": Postgres, Plugins);
    let per_batch = TestDb::new().await;
    let a = tempfile::tempdir().unwrap();
    let (more, _) = orders_input_from(5000, 20);
    let reference = config(a.path(), &per_batch.url, false);
    // (bytes: the quickstart input holds a line that is not UTF-8)
    let mut input = std::fs::read(a.path().join("orders.jsonl")).unwrap();
    input.extend_from_slice(more.as_bytes());
    std::fs::write(a.path().join("orders.jsonl"), &input).unwrap();
    let out = weir(&["run", "-c", reference.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let want = state(&per_batch).await;

    for crash in ["staged:2", "registered:2", "merge:1", "commit:1"] {
        let grouped = TestDb::new().await;
        let b = tempfile::tempdir().unwrap();
        let grouped_config = config(b.path(), &grouped.url, true);
        let out = weir(
            &["run", "-c", grouped_config.to_str().unwrap()],
            &[("WEIR_CRASH_AFTER", crash)],
        );
        assert!(
            !out.status.success(),
            "{crash}: the crash point aborts: {}",
            show(&out)
        );
        if crash == "merge:1" {
            assert!(grouped.count("SELECT count(*) FROM weir_batches").await > 0);
            assert!(
                grouped
                    .count("SELECT count(*) FROM weir_staged WHERE fate = 'pending'")
                    .await
                    > 0,
                "the fates of the first merge were not written"
            );
        }
        std::fs::write(b.path().join("orders.jsonl"), &input).unwrap();
        let out = weir(&["run", "-c", grouped_config.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{crash}: {}", show(&out));

        let have = state(&grouped).await;
        assert_eq!(have[..3], want[..3], "{crash}: rows and dead letters");
        assert_eq!(
            grouped
                .count("SELECT sum(records_in) FROM weir_batches")
                .await,
            input
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count() as i64,
            "{crash}: every record in exactly one ledger batch"
        );
        assert_eq!(have[4], want[4], "{crash}: the checkpoint");
        let ledger = grouped.count("SELECT count(*) FROM weir_batches").await;
        let fates = grouped
            .rows("SELECT fate, count(*)::text FROM weir_staged GROUP BY fate ORDER BY fate")
            .await;
        if crash == "registered:2" {
            // The dead run's registered batches are merged by the next run's loader; whether the next run's
            // worker had meanwhile staged batches from the old checkpoint (then refused: their records are in
            // the dead run's batches, and the worker reads again from the new checkpoint) is a matter of
            // timing. Either way nothing is left pending and every merged batch is one ledger batch.
            let merged = fates
                .iter()
                .find(|f| f[0] == "merged")
                .map(|f| f[1].clone());
            assert_eq!(merged, Some(ledger.to_string()), "{crash}: {fates:?}");
            assert!(
                fates.iter().all(|f| f[0] == "merged" || f[0] == "refused"),
                "{crash}: {fates:?}"
            );
        } else {
            // Batches merged before a crash are found merged (by their ledger rows), not refused.
            assert_eq!(
                fates,
                vec![vec!["merged".to_string(), ledger.to_string()]],
                "{crash}"
            );
        }
    }
}

/// A zombie loader: worker A's loader is held still (by a test stall) after it read its pending batches and
/// before its merge transaction, until its lease has run out, worker B has become the loader (a newer epoch),
/// merged A's batches with its own and exited. Let go, A's merge is fenced off by the epoch in the warehouse
/// and writes nothing; A then takes the lease again and merges the rest. Every order once, every record in
/// exactly one ledger batch, every registration merged.
#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_loader_is_fenced_off() {
    needs!("a_zombie_loader_is_fenced_off": Postgres, Plugins);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(config(dir.path(), &db.url, true)).unwrap();
    let gate = dir.path().join("gate");
    let mut expected = std::collections::BTreeSet::new();
    let mut start = |name: &str, first: usize, env: &[(&str, String)]| {
        start_worker(dir.path(), &text, name, (first, &mut expected), env)
    };
    let a = start(
        "a",
        0,
        &[("WEIR_PAUSE_BEFORE", format!("merge:1:{}", gate.display()))],
    );
    wait_for_stall(&gate).await;
    // `weir status` meanwhile: A's loader holds (or held) the lease, and its batches wait for a merge.
    let cfg = dir.path().join("a.toml");
    let status = weir(&["status", "-c", cfg.to_str().unwrap(), "--json"], &[]);
    assert!(status.status.success(), "{}", show(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        !status["loader"]["owner"].as_str().unwrap().is_empty(),
        "{status:#}"
    );
    assert!(
        status["pending_merge"]["batches"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    let b = start("b", 1000, &[]);
    let out_b = b.wait(std::time::Duration::from_secs(600)).await;
    assert!(out_b.status.success(), "B: {}", show(&out_b));
    assert!(
        db.count("SELECT count(*) FROM weir_batches WHERE batch_id LIKE '%a.jsonl%'")
            .await
            > 0,
        "B, the newer loader, merged the batches A's stalled loader had read"
    );
    std::fs::write(&gate, b"").unwrap();
    let out_a = a.wait(std::time::Duration::from_secs(600)).await;
    assert!(out_a.status.success(), "A: {}", show(&out_a));
    assert!(
        String::from_utf8_lossy(&out_a.stderr).contains("fenced"),
        "A's stale merge was fenced off: {}",
        show(&out_a)
    );
    assert_eq!(order_ids(&db).await, expected);
    assert_eq!(
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await,
        80,
        "every record in exactly one ledger batch"
    );
    assert_eq!(
        db.rows("SELECT fate, count(*)::text FROM weir_staged GROUP BY fate")
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<_>>(),
        vec!["merged".to_string()]
    );
}

/// A worker on a file `{name}.jsonl` of 40 orders from `first` (their ids go to `expected`), configured by
/// `text`, in the background.
fn start_worker(
    dir: &std::path::Path,
    text: &str,
    name: &str,
    (first, expected): (usize, &mut std::collections::BTreeSet<String>),
    env: &[(&str, String)],
) -> Background {
    let (input, ids) = orders_input_from(first, 40);
    expected.extend(ids);
    std::fs::write(dir.join(format!("{name}.jsonl")), input).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, text.replace("orders.jsonl", &format!("{name}.jsonl"))).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", cfg.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)));
    Background::spawn(cmd)
}

/// A long merge keeps its loader lease: worker A's loader is held inside its first merge (after reading its
/// batches, by a test stall) for two and a half lease times while worker B runs beside it. A renews its lease
/// during the merge, so B never becomes the loader and merges nothing meanwhile (without the renewals B would
/// take the lease after one lease time and merge A's batches too, and A's merge would be fenced off). Let go, A
/// merges everything, fenced by nobody; every order once, every record in exactly one ledger batch.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_merge_keeps_its_loader_lease() {
    needs!("a_long_merge_keeps_its_loader_lease": Postgres, Plugins);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(config(dir.path(), &db.url, true)).unwrap();
    let gate = dir.path().join("gate");
    let mut expected = std::collections::BTreeSet::new();
    let stall = [("WEIR_PAUSE_BEFORE", format!("merge:1:{}", gate.display()))];
    let a = start_worker(dir.path(), &text, "a", (0, &mut expected), &stall);
    wait_for_stall(&gate).await;
    let b = start_worker(dir.path(), &text, "b", (1000, &mut expected), &[]);
    // The stall outlasts the lease (lease_secs = 2) well past B's start.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM weir_batches").await,
        0,
        "nothing merged while A's merge held the lease"
    );
    std::fs::write(&gate, b"").unwrap();
    for (name, worker) in [("A", a), ("B", b)] {
        let out = worker.wait(std::time::Duration::from_secs(600)).await;
        assert!(out.status.success(), "{name}: {}", show(&out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("fenced"),
            "{name}: {}",
            show(&out)
        );
    }
    assert_eq!(order_ids(&db).await, expected);
    assert_eq!(
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await,
        80,
        "every record in exactly one ledger batch"
    );
}

/// The ids in the orders table.
async fn order_ids(db: &TestDb) -> std::collections::BTreeSet<String> {
    db.rows("SELECT order_id FROM orders")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// Three workers, each on a file of 300 orders of its own, with `text` as their configuration (its
/// `orders.jsonl` replaced by the worker's file): every worker exits 0 and the orders table holds exactly the
/// union of the three files.
async fn three_workers_load_their_files(dir: &std::path::Path, text: &str, db: &TestDb) {
    let mut expected = std::collections::BTreeSet::new();
    let mut children = Vec::new();
    for w in 0..3 {
        let (input, ids) = orders_input_from(w * 1000, 300);
        expected.extend(ids);
        let file = format!("orders-{w}.jsonl");
        std::fs::write(dir.join(&file), input).unwrap();
        let cfg = dir.join(format!("w{w}.toml"));
        std::fs::write(&cfg, text.replace("orders.jsonl", &file)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["run", "-c", cfg.to_str().unwrap()])
            .env("WEIR_LOG", "warn")
            .envs(AWS_TEST_ENV);
        children.push(Background::spawn(cmd));
    }
    for child in children {
        let out = child.wait(std::time::Duration::from_secs(600)).await;
        assert!(out.status.success(), "{}", show(&out));
    }
    assert_eq!(order_ids(db).await, expected);
}

/// Three workers on three files, one database made Redshift-like (serializable, table locks, slow commits):
/// every worker exits 0 and the tables hold exactly the union of the three per-file loads.
#[tokio::test(flavor = "multi_thread")]
async fn grouped_fleet_on_a_redshift_like_database() {
    needs!("grouped_fleet_on_a_redshift_like_database": Postgres, Plugins);
    let db = TestDb::new().await;
    let url = format!("{}?sslmode=disable", db.url);
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), &url, true);
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("kind = \"postgres\"", "kind = \"redshift\"");
    // The tables first (redshift-sim covers the tables that exist when it is installed).
    std::fs::write(dir.path().join("orders.jsonl"), "").unwrap();
    std::fs::write(&base, &text).unwrap();
    let out = weir(&["run", "-c", base.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    db.install_redshift_sim(50);
    three_workers_load_their_files(dir.path(), &text, &db).await;
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
    assert_eq!(
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await,
        900
    );
}

/// Three workers on three files into the Redshift-like database as a production Redshift fleet is set up:
/// coordinated through DynamoDB (`[coordinator] kind = "dynamodb"`, the AWS test server), grouped commits on by
/// default, the COPY stage fill (Redshift's `COPY` played by tests/common/copy_front.rs) and staging in its
/// bucket by default. The tables hold exactly the union of the three loads, every registered batch ends merged
/// in the DynamoDB table, the warehouse holds neither the registry nor the loader lease (only the loader's
/// fence, moved by the merges), the merges were its only write transactions, and S3 is empty at the end.
#[tokio::test(flavor = "multi_thread")]
async fn grouped_fleet_coordinated_by_dynamodb() {
    needs!("grouped_fleet_coordinated_by_dynamodb": Postgres, Aws, Plugins);
    let db = TestDb::new().await;
    let front = copy_front::CopyFront::start(&db.host_port()).await;
    let url = format!("{}?sslmode=disable", db.url_via(&front.addr));
    let dir = tempfile::tempdir().unwrap();
    let table = unique("weir-coordinator");
    let s3 = s3().await;
    let bucket = unique("weir-fleet");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let base = config(dir.path(), &url, false);
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace(
            "kind = \"postgres\"",
            &format!(
                "kind = \"redshift\"\nstage_fill = {{ kind = \"copy\", bucket = \"{bucket}\", \
             iam_role = \"arn:aws:iam::123456789012:role/weir-copy\" }}"
            ),
        )
        .replace("max_records = 4", "max_records = 20")
        + &format!(
            "\n[sink.group_commit]\ninterval_ms = 100\nlease_secs = 10\n\
             [coordinator]\nkind = \"dynamodb\"\ntable = \"{table}\"\n[aws]\nendpoint_url = \"{}\"\n",
            aws_endpoint()
        );
    std::fs::write(dir.path().join("orders.jsonl"), "").unwrap();
    std::fs::write(&base, &text).unwrap();
    let out = weir(&["run", "-c", base.to_str().unwrap()], &AWS_TEST_ENV);
    assert!(out.status.success(), "{}", show(&out));
    db.install_redshift_sim(50);
    three_workers_load_their_files(dir.path(), &text, &db).await;
    assert_eq!(
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await,
        900
    );
    let batches = coordinator_items(&table, "batch#").await;
    assert_eq!(
        batches.len() as i64,
        db.count("SELECT count(*) FROM weir_batches").await,
        "one registration per ledger batch"
    );
    assert!(
        batches
            .iter()
            .all(|b| b["fate"] == "merged" && !b.contains_key("pending")),
        "every batch merged and out of the pending index: {batches:?}"
    );
    let loader = coordinator_items(&table, "loader").await;
    assert_eq!(loader.len(), 1, "{loader:?}");
    assert_eq!(loader[0]["owner"], "", "the last loader gave its lease up");
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE tablename = 'weir_staged'")
            .await,
        0,
        "no registry in the warehouse"
    );
    assert_eq!(
        db.rows("SELECT \"partition\" FROM weir_checkpoints WHERE source = 'weir-loader'")
            .await,
        vec![vec!["fence".to_string()]],
        "only the fence in the warehouse"
    );
    // Every warehouse write transaction of the fleet's run was a merge (one `loaded_at` each): starting three
    // partitions (their checkpoints, their input fingerprints) and renewing leases wrote nothing.
    assert_eq!(
        db.count("SELECT count(*) FROM redshift_sim.commits").await,
        db.count("SELECT count(DISTINCT loaded_at) FROM weir_batches")
            .await,
        "warehouse write transactions against merges"
    );
    assert!(front.copies() > 0, "the merges filled their stages by COPY");
    assert_eq!(
        keys(&s3, &bucket).await,
        Vec::<String>::new(),
        "row files, manifests and staged objects are removed once merged"
    );
}

/// The keys left in `bucket`.
async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    s3.list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect()
}

/// Orders changed several times, out of order and across batches: `placed_at` is the version, and two lines
/// of one order with the same version differ (the later one loaded wins).
fn versioned_orders() -> String {
    let mut input = String::new();
    for (i, (order, minute, qty)) in [
        (1, 5, 1),
        (2, 1, 1),
        (3, 3, 1),
        (1, 3, 2), // older than the first: loses
        (2, 1, 2), // same version: the later wins
        (4, 2, 1),
        (3, 4, 2),
        (1, 5, 3), // same version as the first, later: wins
        (5, 1, 1),
        (4, 1, 2), // older: loses
        (2, 0, 3), // older: loses
        (5, 2, 2),
        (6, 1, 1),
        (3, 4, 3), // same version, later: wins
        (6, 1, 2),
        (1, 4, 4), // older: loses
        (7, 1, 1),
        (5, 9, 3),
        (7, 1, 2),
        (4, 7, 3),
        (8, 1, 1),
        (8, 2, 2),
        (2, 4, 4),
        (6, 0, 3),
        (9, 1, 1),
        (9, 1, 2),
        (3, 1, 4),
        (8, 2, 3),
        (9, 3, 3),
        (1, 6, 5),
    ]
    .into_iter()
    .enumerate()
    {
        input.push_str(&format!(
            r#"{{"order_id": "o-{order}", "placed_at": "2026-11-21T10:{minute:02}:00Z", "currency": "EUR", "note": {i}, "lines": [{{"sku": "S{i}", "qty": {qty}, "unit_price": "1.50"}}]}}"#
        ));
        input.push('\n');
    }
    input
}

/// Grouped commits on Redshift by default, with the COPY stage fill (`[sink.stage_fill] kind = "copy"`): the
/// worker writes each batch's rows to S3 as gzip JSON lines, and the loader merges all eight batches of the
/// file in one transaction (`max_batches` starts it as soon as they are registered; the interval is ten minutes)
/// through one manifest per table and Redshift's `COPY` (played by a front that reads the local S3 server,
/// tests/common/copy_front.rs), keeping the latest row per key by version, then by batch order. The tables
/// equal a per-batch run's; the staged objects went to the COPY bucket by default; S3 is empty at the end.
#[tokio::test(flavor = "multi_thread")]
async fn grouped_copy_fill_merges_many_batches_through_one_manifest() {
    needs!("grouped_copy_fill_merges_many_batches_through_one_manifest": Postgres, Aws, Plugins);
    let (per_batch, grouped) = (TestDb::new().await, TestDb::new().await);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s3 = s3().await;
    let bucket = unique("weir-copy");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let front = copy_front::CopyFront::start(&grouped.host_port()).await;
    let versioned = |text: String| {
        text.replace(
            "primary_key = [\"order_id\"]\n",
            "primary_key = [\"order_id\"]\nversion_column = \"placed_at\"\n",
        )
        .replace("max_wait_ms = 250", "max_wait_ms = 60000")
    };
    let reference = config(a.path(), &per_batch.url, false);
    std::fs::write(
        &reference,
        versioned(std::fs::read_to_string(&reference).unwrap()),
    )
    .unwrap();
    let url = format!("{}?sslmode=disable", grouped.url_via(&front.addr));
    let cfg = config(b.path(), &url, false);
    let text = versioned(std::fs::read_to_string(&cfg).unwrap()).replace(
        "kind = \"postgres\"",
        &format!(
            "kind = \"redshift\"\nstage_fill = {{ kind = \"copy\", bucket = \"{bucket}\", \
             iam_role = \"arn:aws:iam::123456789012:role/weir-copy\" }}"
        ),
    ) + &format!(
        "\n[sink.group_commit]\ninterval_ms = 600000\nlease_secs = 1800\nmax_batches = 8\n\
         [aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
        aws_endpoint()
    );
    std::fs::write(&cfg, text).unwrap();
    for dir in [&a, &b] {
        std::fs::write(dir.path().join("orders.jsonl"), versioned_orders()).unwrap();
    }
    let out = weir(&["run", "-c", reference.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    // The interval is ten minutes: only `max_batches` can start the merge within the five minutes allowed.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", cfg.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .envs(AWS_TEST_ENV);
    let out = Background::spawn(cmd)
        .wait(std::time::Duration::from_secs(300))
        .await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("records in: 30 in 8 batches"),
        "{}",
        show(&out)
    );
    assert_eq!(
        grouped
            .count("SELECT count(DISTINCT loaded_at) FROM weir_batches")
            .await,
        1,
        "one merge took all eight batches"
    );
    assert_eq!(front.copies(), 2, "one COPY per table");
    assert_eq!(front.files(), 16, "each batch's file of each table");
    let want = state(&per_batch).await;
    assert_eq!(state(&grouped).await, want);
    assert_eq!(
        want[0].len(),
        9,
        "nine orders, each at its newest version: {:?}",
        want[0]
    );
    // The newest version of each (ties: the later line): o-1 at 10:06 (qty 5), o-2 at 10:04 (qty 4), o-3 at
    // 10:04, its later line (qty 3).
    assert_eq!(
        grouped
            .rows("SELECT order_id, total::text FROM orders WHERE order_id IN ('o-1', 'o-2', 'o-3') ORDER BY 1")
            .await,
        [("o-1", "7.50"), ("o-2", "6.00"), ("o-3", "4.50")]
            .iter()
            .map(|(o, t)| vec![o.to_string(), t.to_string()])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        keys(&s3, &bucket).await,
        Vec::<String>::new(),
        "row files, manifests and staged objects are removed once merged"
    );
    // `weir validate --aws` tries the COPY with the configured role on a probe file of its own, rolled back.
    let out = weir(
        &["validate", "--aws", "-c", cfg.to_str().unwrap()],
        &AWS_TEST_ENV,
    );
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(
            |l| l.starts_with(&format!("sink.stage_fill: COPY from s3://{bucket}/"))
                && l.ends_with(
                    "with IAM_ROLE arn:aws:iam::123456789012:role/weir-copy (region us-east-1): ok"
                )
        ),
        "{text}"
    );
    assert_eq!(front.copies(), 3, "the probe went through COPY");
}

/// Two workers register the same batch at once (a shard re-read by its new owner while the old one registers
/// it): the registry's unique key refuses the second insert, which must be a conflict to retry — the retry finds
/// the batch registered — never a refused value that stops the worker. By construction: a third session holds
/// the same batch id uncommitted until both registrations wait on it.
#[tokio::test(flavor = "multi_thread")]
async fn registering_the_same_batch_twice_at_once_is_retried() {
    use weir::sink::group::{Registration, Registry};
    use weir::sink::redshift::{RedshiftOptions, RedshiftSink};
    needs!("registering_the_same_batch_twice_at_once_is_retried": Postgres);
    let db = TestDb::new().await;
    let sinks: Vec<RedshiftSink> = (0..2)
        .map(|_| RedshiftSink::new(&db.url, RedshiftOptions::default()).unwrap())
        .collect();
    sinks[0].prepare_registry().await.unwrap();
    let entry = Registration {
        batch_id: "kinesis/s/shard-0/1-9".into(),
        source: "kinesis".into(),
        partition: "shard-0".into(),
        key: "staged/x.json.gz".into(),
        bytes: 10,
    };
    let holder = db.client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            "INSERT INTO weir_staged (batch_id, source, \"partition\", staged_key, bytes, registered_us, fate) \
             VALUES ($1, 'kinesis', 'shard-0', 'staged/x.json.gz', 10, 1, 'pending')",
            &[&entry.batch_id],
        )
        .await
        .unwrap();
    let entries = [entry.clone()];
    let both = async {
        let (a, b) = tokio::join!(
            sinks[0].register_many(&entries),
            sinks[1].register_many(&entries)
        );
        [a, b]
    };
    let watch = async {
        // Both registrations wait on the held row's unique key; then the holder commits.
        loop {
            let waiting = db
                .count(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
                    db.name
                ))
                .await;
            if waiting == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        holder.batch_execute("COMMIT").await.unwrap();
    };
    let (results, ()) = tokio::join!(both, watch);
    for result in results {
        if let Err(e) = result {
            assert!(e.is_transient(), "{e}");
        }
    }
    // The retry finds the batch registered and changes nothing.
    for s in &sinks {
        s.register_many(&entries).await.unwrap();
    }
    assert_eq!(db.count("SELECT count(*) FROM weir_staged").await, 1);
}

/// Grouped commits on SQLite (the registry and loader lease in the database file): the same rows, dead letters,
/// ledger and checkpoints as per-batch commits; every batch registered and merged, staged objects removed; a
/// second run changes nothing.
#[tokio::test]
async fn grouped_commits_on_sqlite_leave_the_per_batch_state() {
    needs!("grouped_commits_on_sqlite_leave_the_per_batch_state": Plugins);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let per_batch = quickstart_in(a.path());
    let grouped = quickstart_in(b.path());
    let mut text = std::fs::read_to_string(&grouped).unwrap();
    text.push_str(GROUPED);
    std::fs::write(&grouped, text).unwrap();
    for config in [&per_batch, &grouped] {
        let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", show(&out));
    }
    let snapshot = |dir: std::path::PathBuf| async move {
        let db = dir.join("out/weir.db");
        let mut all = Vec::new();
        for sql in [
            "SELECT order_id, total, country, _weir_record_id FROM orders ORDER BY 1",
            "SELECT order_id, line_no, sku, _weir_record_id FROM order_lines ORDER BY 1, 2",
            "SELECT record_id, stage, reason FROM weir_dead_letters ORDER BY 1",
            "SELECT batch_id, first_position, last_position, records_in, emitted, dropped, rejected, rows_out \
             FROM weir_batches ORDER BY 1",
            "SELECT source, \"partition\", position FROM weir_checkpoints WHERE source <> 'weir-loader' ORDER BY 1, 2",
        ] {
            all.push(query(&db, sql).await);
        }
        all
    };
    let expected = snapshot(a.path().to_path_buf()).await;
    assert!(!expected[0].is_empty() && !expected[2].is_empty());
    assert_eq!(snapshot(b.path().to_path_buf()).await, expected);
    let db = b.path().join("out/weir.db");
    assert_eq!(
        query(&db, "SELECT fate, count(*) FROM weir_staged GROUP BY fate").await,
        [["merged", "5"]]
    );
    let left = std::fs::read_dir(b.path().join("staged/staged"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "staged objects are removed once merged");
    let out = weir(&["run", "-c", grouped.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(snapshot(b.path().to_path_buf()).await, expected);
}

/// On SQLite too, a refused batch registered again merges (as `a_refused_batch_registered_again_merges`).
#[tokio::test]
async fn a_refused_batch_registered_again_merges_on_sqlite() {
    needs!("a_refused_batch_registered_again_merges_on_sqlite": Plugins);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let per_batch = quickstart_in(a.path());
    let out = weir(&["run", "-c", per_batch.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let first = query(
        &a.path().join("out/weir.db"),
        "SELECT batch_id, \"partition\" FROM weir_batches ORDER BY CAST(first_position AS INTEGER) LIMIT 1",
    )
    .await
    .remove(0);
    let grouped = quickstart_in(b.path());
    let text = std::fs::read_to_string(&grouped).unwrap() + GROUPED;
    std::fs::write(&grouped, &text).unwrap();
    std::fs::write(b.path().join("empty.jsonl"), "").unwrap();
    let empty = b.path().join("empty.toml");
    std::fs::write(&empty, text.replace("orders.jsonl", "empty.jsonl")).unwrap();
    let out = weir(&["run", "-c", empty.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let db = b.path().join("out/weir.db");
    execute(
        &db,
        &format!(
            "INSERT INTO weir_staged (batch_id, source, \"partition\", staged_key, bytes, registered_us, fate) \
             VALUES ('{}', 'file', '{}', 'staged/gone', 0, 0, 'refused')",
            first[0], first[1]
        ),
    )
    .await;
    let out = weir(&["run", "-c", grouped.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        query(&db, "SELECT fate, count(*) FROM weir_staged GROUP BY fate").await,
        [["merged", "5"]]
    );
    assert_eq!(
        query(&db, "SELECT count(*) FROM weir_batches").await,
        query(
            &a.path().join("out/weir.db"),
            "SELECT count(*) FROM weir_batches"
        )
        .await
    );
}

/// In the DynamoDB registry a refused batch registered again is pending again, while a pending or merged one
/// registered again stays as it is (a retry).
#[tokio::test]
async fn dynamodb_registry_takes_a_refused_batch_again() {
    use weir::coordinator::dynamodb::DynamoCoordinator;
    use weir::group::Fate;
    use weir::sink::group::{Registration, Registry};
    needs!("dynamodb_registry_takes_a_refused_batch_again": Aws);
    let table = format!("weir-registry-{}", std::process::id());
    let registry = DynamoCoordinator::new(aws_sdk_dynamodb::Client::new(&aws_sdk().await), &table);
    registry.prepare().await.unwrap();
    let entry = |n: u32| Registration {
        batch_id: format!("kinesis/s/shard-0/{n}"),
        source: "kinesis".into(),
        partition: "s/shard-0".into(),
        key: format!("staged/{n}.json.gz"),
        bytes: 10,
    };
    let ids: Vec<String> = (1..=3).map(|n| entry(n).batch_id).collect();
    registry
        .register_many(&[entry(1), entry(2), entry(3)])
        .await
        .unwrap();
    registry
        .settle(&[
            (ids[0].clone(), Fate::Refused),
            (ids[1].clone(), Fate::Merged),
        ])
        .await
        .unwrap();
    registry
        .register_many(&[entry(1), entry(2), entry(3)])
        .await
        .unwrap();
    let fates = registry.fates(&ids).await.unwrap();
    assert_eq!(
        [fates[&ids[0]], fates[&ids[1]], fates[&ids[2]]],
        [Fate::Pending, Fate::Merged, Fate::Pending]
    );
    let pending: Vec<String> = registry
        .pending(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.batch_id)
        .collect();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(pending.contains(&ids[0]) && pending.contains(&ids[2]));
}

/// A run killed after registering batches, run again with batches cut at other positions (here a smaller
/// `max_records`): the loader merges the dead run's batches first, so the new run's first batch finds the
/// checkpoint moved. The worker reads the partition again from the new checkpoint instead of giving up, and
/// the result is that of one per-batch run.
#[tokio::test]
async fn a_rerun_cut_differently_reads_again_from_the_moved_checkpoint() {
    needs!("a_rerun_cut_differently_reads_again_from_the_moved_checkpoint": Postgres, Plugins);
    let (per_batch, grouped) = (TestDb::new().await, TestDb::new().await);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = weir(
        &[
            "run",
            "-c",
            config(a.path(), &per_batch.url, false).to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let cfg = config(b.path(), &grouped.url, true);
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Batches of 4 records, cut by count only (not by time), so that the dead run registers two of them.
    let four = text.replace("max_wait_ms = 250", "max_wait_ms = 60000");
    assert_ne!(four, text);
    std::fs::write(&cfg, &four).unwrap();
    let out = weir(
        &["run", "-c", cfg.to_str().unwrap()],
        &[("WEIR_CRASH_AFTER", "registered:2")],
    );
    assert!(
        !out.status.success(),
        "the crash point aborts: {}",
        show(&out)
    );
    std::fs::write(&cfg, four.replace("max_records = 4", "max_records = 3")).unwrap();
    let out = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let (have, want) = (state(&grouped).await, state(&per_batch).await);
    assert_eq!(have[..3], want[..3], "rows and dead letters");
    assert_eq!(have[4], want[4], "the checkpoint");
    assert_eq!(
        grouped
            .count("SELECT sum(records_in) FROM weir_batches")
            .await,
        17,
        "every record in exactly one ledger batch"
    );
}
