//! The Kinesis source against kinesalite (a local server with correct shard ends; `WEIR_KINESIS_ENDPOINT`) and
//! a real PostgreSQL: a 4-shard stream with KPL-aggregated records, a split in the middle of a run, and two
//! worker processes sharing a stream through leases (SIGTERM hand-over, kill -9 take-over).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use common::*;

fn endpoint() -> String {
    std::env::var("WEIR_KINESIS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4567".into())
}

async fn client() -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(&aws_sdk_at(&endpoint()).await)
}

async fn wait_active(k: &aws_sdk_kinesis::Client, stream: &str) {
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary().unwrap().stream_status() == &StreamStatus::Active {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {stream} did not become active");
}

async fn stream(k: &aws_sdk_kinesis::Client, shards: i32) -> String {
    let name = unique("weir-s");
    k.create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream (is kinesalite running? scripts/services.sh)");
    wait_active(k, &name).await;
    name
}

/// One order per record: `o-{n}` for customer `k{n % 10}` (the partition key).
fn order(n: usize) -> String {
    format!(
        r#"{{"order_id":"o-{n:06}","customer_id":"k{}","placed_at":"2026-11-21T10:00:00Z","currency":"EUR","lines":[{{"sku":"S","qty":1,"unit_price":"{}.00"}}]}}"#,
        n % 10,
        n % 100
    )
}

async fn put(k: &aws_sdk_kinesis::Client, stream: &str, range: std::ops::Range<usize>) {
    let entries: Vec<PutRecordsRequestEntry> = range
        .map(|n| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("k{}", n % 10))
                .data(Blob::new(order(n)))
                .build()
                .unwrap()
        })
        .collect();
    for chunk in entries.chunks(100) {
        let out = k
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
    }
}

fn write_config(dir: &Path, stream: &str, db_url: &str, worker: &str, extra: &str) -> PathBuf {
    let quickstart = std::fs::read_to_string(root().join("examples/quickstart/weir.toml")).unwrap();
    let tables = &quickstart
        [quickstart.find("[[sink.tables]]").unwrap()..quickstart.find("[batch]").unwrap()];
    let text = format!(
        r#"[source]
kind = "kinesis"
stream = "{stream}"
poll_ms = 200
lease_secs = 6
renew_secs = 1
worker_id = "{worker}"
idle_exit_secs = 5
{extra}

[raw]
kind = "local"
dir = "{raw}"

[rule]
plugin = "{plugin}"

[sink]
kind = "postgres"
url = "{db_url}"

{tables}
[batch]
max_records = 50
max_wait_ms = 300

[aws]
endpoint_url = "{endpoint}"
"#,
        raw = dir.join(format!("raw-{worker}")).display(),
        plugin = plugin("orders").display(),
        endpoint = endpoint(),
    );
    let path = dir.join(format!("{worker}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A `weir run` in the background; killed if the test ends first.
struct Worker(Background);

impl Worker {
    fn start(config: &Path) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["run", "-c", config.to_str().unwrap()])
            .env("WEIR_LOG", "info")
            .envs(AWS_TEST_ENV);
        Worker(Background::spawn(cmd))
    }

    fn signal(&self, signal: &str) {
        let pid = self.0.id();
        assert!(
            Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    async fn wait(self) -> Output {
        self.0.wait(Duration::from_secs(120)).await
    }
}

/// Every record exactly once: one order row per record, the ledger counts each record once, every batch
/// balances.
async fn assert_exactly_once(db: &TestDb, n: i64) {
    assert_eq!(db.count("SELECT count(*) FROM orders").await, n);
    assert_eq!(
        db.count("SELECT count(DISTINCT _weir_record_id) FROM orders")
            .await,
        n
    );
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        n
    );
    assert_eq!(db.count("SELECT count(*) FROM weir_dead_letters").await, 0);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
}

/// A 4-shard stream end to end, half of it KPL-aggregated by `weir produce --aggregate`: every record loaded
/// exactly once, aggregated ones with their sub-sequence number in the record id; one checkpoint per shard.
/// The stream is reached through `[source] endpoint_url`.
#[tokio::test(flavor = "multi_thread")]
async fn four_shards_end_to_end() {
    needs!("four_shards_end_to_end": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 4).await;
    let dir = tempfile::tempdir().unwrap();
    // The stream's endpoint given for the source alone: `[aws] endpoint_url` (RAW, staging) points at a
    // closed port, so the run works only if `produce` and `run` both take the source's own endpoint.
    let config = write_config(
        dir.path(),
        &name,
        &db.url,
        "w1",
        &format!("endpoint_url = \"{}\"", endpoint()),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("[aws]\nendpoint_url = \"{}\"", endpoint()),
        "[aws]\nendpoint_url = \"http://127.0.0.1:9\"",
    );
    assert!(text.contains("127.0.0.1:9\""));
    std::fs::write(&config, text).unwrap();
    put(&k, &name, 0..100).await;
    let input = dir.path().join("more.jsonl");
    std::fs::write(&input, (100..200).map(order).collect::<Vec<_>>().join("\n")).unwrap();
    let produced = weir(
        &[
            "produce",
            "-c",
            config.to_str().unwrap(),
            input.to_str().unwrap(),
            "--key-field",
            "customer_id",
            "--aggregate",
            "4",
        ],
        &AWS_TEST_ENV,
    );
    assert!(produced.status.success(), "{}", show(&produced));

    let out = Worker::start(&config).wait().await;
    assert!(out.status.success(), "{}", show(&out));
    assert_exactly_once(&db, 200).await;
    let aggregated = db
        .count(&format!(
            "SELECT count(*) FROM orders WHERE _weir_record_id LIKE 'kinesis/{name}/shardId-%/%/%'"
        ))
        .await;
    assert_eq!(aggregated, 100);
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM weir_checkpoints WHERE source = 'kinesis' AND \"partition\" LIKE '{name}/%' AND position <> ''")).await,
        4
    );
    // Leases were released at exit.
    assert_eq!(
        db.count("SELECT count(*) FROM weir_checkpoints WHERE owner <> ''")
            .await,
        0
    );
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// A shard split while the worker runs: the parent is read to its end and checkpointed SHARD_END before its
/// children start, so for every partition key all parent records load before any child record; none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn split_keeps_parent_before_children() {
    needs!("split_keeps_parent_before_children": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &name, &db.url, "w1", "");
    put(&k, &name, 0..100).await;
    let worker = Worker::start(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shards = k.list_shards().stream_name(&name).send().await.unwrap();
    let parent = shards.shards()[0].shard_id().to_string();
    k.split_shard()
        .stream_name(&name)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .unwrap();
    wait_active(&k, &name).await;
    put(&k, &name, 100..200).await;
    let out = worker.wait().await;
    assert!(out.status.success(), "{}", show(&out));

    assert_exactly_once(&db, 200).await;
    let parent_partition = format!("{name}/{parent}");
    assert_eq!(
        db.rows(&format!(
            "SELECT position FROM weir_checkpoints WHERE \"partition\" = '{parent_partition}'"
        ))
        .await,
        [["SHARD_END"]]
    );
    // Per customer (partition key): the last parent batch committed before the first child batch.
    let rows = db
        .rows(&format!(
            "SELECT customer_id, \
               max(CASE WHEN _weir_record_id LIKE 'kinesis/{parent_partition}/%' THEN b.loaded_at END), \
               min(CASE WHEN _weir_record_id NOT LIKE 'kinesis/{parent_partition}/%' THEN b.loaded_at END), \
               sum(CASE WHEN _weir_record_id NOT LIKE 'kinesis/{parent_partition}/%' THEN 1 ELSE 0 END) \
             FROM orders o JOIN weir_batches b ON b.batch_id = o._weir_batch_id GROUP BY customer_id ORDER BY 1"
        ))
        .await;
    assert_eq!(rows.len(), 10);
    for r in rows {
        assert_eq!(r[3], "10", "{r:?}: 10 child records per key");
        assert!(
            r[1] <= r[2],
            "{r:?}: a child record loaded before a parent record"
        );
    }
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// Waits (up to a minute) until the lease table shows `want` (owner count per owner, sorted); the last seen.
async fn wait_for_leases(db: &TestDb, want: &[i64]) -> Vec<i64> {
    let mut seen = Vec::new();
    let client = db.client().await;
    for _ in 0..120 {
        // The table is there once the first worker has started.
        let rows = client
            .query(
                "SELECT count(*) FROM weir_checkpoints WHERE owner <> '' GROUP BY owner ORDER BY 1",
                &[],
            )
            .await
            .unwrap_or_default();
        seen = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seen
}

/// Four workers on four shards end with one shard each, also when two of them arrived after the first two
/// had split the shards two and two. (Live workers are counted from lease owners, so the two newcomers saw a
/// share of two and no one above it, and stayed idle until a worker at the share gave one to a worker two
/// short, as the KCL's lease taker does.)
#[tokio::test(flavor = "multi_thread")]
async fn late_workers_get_their_share() {
    needs!("late_workers_get_their_share": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 4).await;
    put(&k, &name, 0..200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |w: &str| {
        let path = write_config(dir.path(), &name, &db.url, w, "");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("idle_exit_secs = 5", "idle_exit_secs = 600");
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = [Worker::start(&config("a")), Worker::start(&config("b"))];
    let seen = wait_for_leases(&db, &[2, 2]).await;
    let late = [Worker::start(&config("c")), Worker::start(&config("d"))];
    let balanced = if seen == [2, 2] {
        wait_for_leases(&db, &[1, 1, 1, 1]).await
    } else {
        seen.clone()
    };
    for w in first.iter().chain(&late) {
        w.signal("-TERM");
    }
    let mut outs = Vec::new();
    for w in first.into_iter().chain(late) {
        outs.push(w.wait().await);
    }
    assert_eq!(
        seen,
        [2, 2],
        "the first two workers should split the shards"
    );
    assert_eq!(
        balanced,
        [1, 1, 1, 1],
        "every worker should hold one shard\n{}",
        outs.iter().map(show).collect::<Vec<_>>().join("\n")
    );
    for out in &outs {
        assert!(out.status.success(), "{}", show(out));
    }
    assert_exactly_once(&db, 200).await;
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// Two workers share a 4-shard stream while records keep coming. SIGTERM to one: it commits its in-flight
/// batches and releases its leases, the other takes its shards; then kill -9 of a restarted one: its leases
/// expire and the survivor takes over. Every record ends up in the final tables exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_share_and_take_over() {
    needs!("two_workers_share_and_take_over": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let a = write_config(dir.path(), &name, &db.url, "a", "");
    let b = write_config(dir.path(), &name, &db.url, "b", "");
    let c = write_config(dir.path(), &name, &db.url, "c", "");
    let producer = {
        let k = k.clone();
        let name = name.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                put(&k, &name, round * 25..(round + 1) * 25).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let wa = Worker::start(&a);
    let wb = Worker::start(&b);
    // The second worker takes leases over from the first, one per renewal, until both hold their share.
    let mut owners = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        owners = db
            .count("SELECT count(DISTINCT owner) FROM weir_checkpoints WHERE owner <> ''")
            .await;
        if owners == 2 {
            break;
        }
    }
    if owners != 2 {
        wa.signal("-KILL");
        wb.signal("-KILL");
        let (a, b) = (wa.wait().await, wb.wait().await);
        panic!(
            "both workers should hold shards, {owners} do\n{}\n{}",
            show(&a),
            show(&b)
        );
    }
    wa.signal("-TERM");
    let out = wa.wait().await;
    assert!(out.status.success(), "{}", show(&out));
    let wc = Worker::start(&c);
    tokio::time::sleep(Duration::from_secs(3)).await;
    wc.signal("-KILL");
    let _ = wc.wait().await;
    producer.await.unwrap();
    let out = wb.wait().await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reading shard"),
        "{}",
        show(&out)
    );
    assert_exactly_once(&db, 1000).await;
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// The sum of a metric's samples whose labels contain `filter` (all samples with an empty filter).
fn metric(body: &str, name: &str, filter: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Three workers share a 6-shard stream, each with its admin endpoint. While records keep coming, SIGTERM to
/// one: it exits 0 well within `shutdown_grace_secs`, the other two take its shards. Every record lands exactly
/// once, and the counts on `/metrics` (with the stopped worker's own summary) equal the final tables.
#[tokio::test(flavor = "multi_thread")]
async fn three_workers_metrics_and_graceful_sigterm() {
    needs!("three_workers_metrics_and_graceful_sigterm": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let configs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .zip(ports)
        .map(|(w, port)| {
            let path = write_config(dir.path(), &name, &db.url, w, "");
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("idle_exit_secs = 5", "idle_exit_secs = 20");
            let text = format!(
                "{text}\n[worker]\nadmin_bind = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 30\n"
            );
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let producer = {
        let (k, name) = (k.clone(), name.clone());
        tokio::spawn(async move {
            for round in 0..30 {
                put(&k, &name, round * 40..(round + 1) * 40).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    let workers: Vec<Worker> = configs.iter().map(|c| Worker::start(c)).collect();
    // Every worker serves its admin endpoint, is ready, and holds shards.
    let mut owners = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        owners = db
            .count("SELECT count(DISTINCT owner) FROM weir_checkpoints WHERE owner <> ''")
            .await;
        if owners == 3 {
            break;
        }
    }
    assert_eq!(owners, 3, "all three workers hold shards");
    for port in ports {
        assert_eq!(admin_get(port, "/healthz"), (200, "ok\n".to_string()));
        assert_eq!(admin_get(port, "/readyz").0, 200);
        let (status, body) = admin_get(port, "/metrics");
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE weir_stage_seconds histogram"),
            "{body}"
        );
        assert!(metric(&body, "weir_leases_held", "") >= 1.0, "{body}");
    }
    // SIGTERM to the first worker while records keep coming.
    let mut workers = workers.into_iter();
    let first = workers.next().unwrap();
    let stopped_at = std::time::Instant::now();
    first.signal("-TERM");
    let out = first.wait().await;
    let took = stopped_at.elapsed();
    assert!(out.status.success(), "{}", show(&out));
    assert!(took < Duration::from_secs(30), "exited after {took:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let first_records: i64 = stdout
        .split("records in: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a run summary: {stdout}"));
    producer.await.unwrap();
    // Wait until everything is loaded, then read the survivors' metrics before they go idle.
    for _ in 0..120 {
        if db
            .count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await
            >= 1200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A worker counts a batch on `/metrics` just after its commit returns, so the ledger can show the last batch
    // a moment before the metrics do: scrape until they account for every record, or for 15 s.
    let mut bodies = Vec::new();
    let mut scraped_records = 0.0;
    let mut scraped_orders = 0.0;
    for _ in 0..60 {
        bodies = ports[1..]
            .iter()
            .map(|port| admin_get(*port, "/metrics").1)
            .collect::<Vec<_>>();
        scraped_records = bodies
            .iter()
            .map(|b| metric(b, "weir_records_total", ""))
            .sum();
        scraped_orders = bodies
            .iter()
            .map(|b| metric(b, "weir_rows_total", "table=\"orders\""))
            .sum();
        if scraped_records as i64 + first_records >= 1200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for body in &bodies {
        assert!(
            metric(body, "weir_stage_seconds_count", "stage=\"load\"") >= 1.0,
            "{body}"
        );
        assert!(
            body.contains("weir_kinesis_millis_behind_latest{shard="),
            "{body}"
        );
        // Every committed batch has its size counted, and the last commit's age is there.
        assert_eq!(
            metric(body, "weir_batch_records_count", ""),
            metric(body, "weir_batches_total", ""),
            "{body}"
        );
        assert_eq!(
            metric(body, "weir_batch_records_sum", ""),
            metric(body, "weir_records_total", ""),
            "{body}"
        );
        assert!(
            metric(body, "weir_seconds_since_last_commit", "") >= 0.0
                && body.contains("\nweir_seconds_since_last_commit "),
            "{body}"
        );
    }
    assert_eq!(
        scraped_records as i64 + first_records,
        1200,
        "metrics count every record once"
    );
    let first_orders = first_records; // every generated record emits one order row
    assert_eq!(
        scraped_orders as i64 + first_orders,
        db.count("SELECT count(*) FROM orders").await
    );
    for w in workers {
        let out = w.wait().await;
        assert!(out.status.success(), "{}", show(&out));
    }
    assert_exactly_once(&db, 1200).await;
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// kill -9 at random moments of a Kinesis worker (`WEIR_CRASH_ITERATIONS`, default 10; 200 records per kill),
/// restarting it each time under the same worker id
/// (it takes its own leases back at once), then a run to the end: every record exactly once, each batch in the
/// ledger once (the checkpoint compare-and-set in the load transaction never lets a batch commit twice).
#[tokio::test(flavor = "multi_thread")]
async fn random_kill_9_loses_and_doubles_nothing() {
    needs!("random_kill_9_loses_and_doubles_nothing": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 2).await;
    let iterations = crash_iterations();
    let n = 200 * iterations;
    put(&k, &name, 0..n).await;
    let dir = tempfile::tempdir().unwrap();
    // 20 records per GetRecords call and shard: a whole run takes several seconds.
    let config = write_config(dir.path(), &name, &db.url, "a", "max_records_per_call = 20");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_records = 50", "max_records = 10");
    std::fs::write(&config, text).unwrap();
    let mut rng = CrashRng::new();
    let mut killed = 0;
    for _ in 0..iterations {
        // The kill lands inside the run by construction: after 1–5 more committed batches (of the 20 per kill
        // the stream holds) and a random 0–20 ms.
        let before = db.batches_so_far().await;
        let mut w = Worker::start(&config);
        let step = 1 + rng.below(5) as i64;
        let mid_run = db
            .wait_for_progress(before, step, 20, &mut rng, || w.0.is_running())
            .await;
        let running = mid_run
            && db
                .count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
                .await
                < n as i64;
        w.signal("-KILL");
        let _ = w.wait().await;
        killed += running as usize;
    }
    eprintln!("{killed} of {iterations} kills came before the end ({n} records)");
    assert_eq!(
        killed, iterations,
        "only {killed} of {iterations} kills came before the end"
    );
    let out = Worker::start(&config).wait().await;
    assert!(out.status.success(), "{}", show(&out));
    assert_exactly_once(&db, n as i64).await;
    // RAW is complete: every record's exact payload is archived.
    let archived: std::collections::BTreeSet<Vec<u8>> = raw_lines(&dir.path().join("raw-a"))
        .values()
        .map(|l| l.payload_bytes().unwrap())
        .collect();
    let input: std::collections::BTreeSet<Vec<u8>> =
        (0..n).map(|i| order(i).into_bytes()).collect();
    assert_eq!(archived, input, "RAW holds every record");
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// The Kinesis endpoint gone for 30 s in the middle of a run (a front that refuses new connections and cuts
/// open ones): `GetRecords` and `ListShards` fail and retry with backoff, the leases of the running shards are
/// still renewed (no take-over is possible), `idle_exit_secs` does not end the run during the outage, and the
/// worker finishes by itself once the endpoint is back: every record exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn kinesis_outage_mid_run_recovers() {
    needs!("kinesis_outage_mid_run_recovers": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 2).await;
    put(&k, &name, 0..2000).await;
    let front = TcpFront::start(
        endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/'),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // 20 records per GetRecords call and shard: a whole run takes several seconds.
    let config = write_config(dir.path(), &name, &db.url, "a", "max_records_per_call = 20");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("endpoint_url = \"{}\"", endpoint()),
        &format!("endpoint_url = \"http://{}\"", front.addr),
    );
    std::fs::write(&config, text).unwrap();
    let worker = Worker::start(&config);
    db.wait_for_batches(1).await;
    front.set_up(false);
    let loaded = "SELECT coalesce(sum(records_in), 0) FROM weir_batches";
    // Records already read may still commit; then nothing can.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = db.count(loaded).await;
    assert!(
        settled < 2000,
        "work was left for after the outage ({settled} of 2000 loaded)"
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(db.count(loaded).await, settled, "nothing new was read");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM weir_checkpoints WHERE \"partition\" LIKE '{name}/%' \
             AND owner = 'a' AND lease_expires_at > '{}'::timestamptz",
            chrono::Utc::now().to_rfc3339()
        ))
        .await,
        2,
        "both leases renewed through the outage"
    );
    eprintln!("Kinesis endpoint down 30 s after {settled} of 2000 records were loaded");
    front.set_up(true);
    let out = worker.wait().await;
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("GetRecords failed; retrying"),
        "{}",
        show(&out)
    );
    assert!(log.contains("listing shards failed"), "{}", show(&out));
    assert_exactly_once(&db, 2000).await;
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// `initial_position = "latest"` only decides where a shard with no parent and no checkpoint starts. A
/// stream split before the worker starts, with records written to the children: the closed parent starts at
/// its latest (its end) and ends at once, and the children start at TRIM_HORIZON, as the KCL does, so every
/// child record loads. (Children used to start at LATEST and skip them.) An open shard first claimed at
/// latest has its start pinned as its checkpoint (`@{ms}`), so a restart never jumps to LATEST again.
#[tokio::test(flavor = "multi_thread")]
async fn children_start_at_trim_horizon_whatever_the_initial_position() {
    needs!("children_start_at_trim_horizon_whatever_the_initial_position": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 1).await;
    put(&k, &name, 0..30).await; // in the parent, before the worker: `latest` skips these
    let shards = k.list_shards().stream_name(&name).send().await.unwrap();
    let parent = shards.shards()[0].shard_id().to_string();
    k.split_shard()
        .stream_name(&name)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .unwrap();
    wait_active(&k, &name).await;
    put(&k, &name, 100..160).await; // in the children, before any worker claimed them
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &name,
        &db.url,
        "w1",
        "initial_position = \"latest\"",
    );
    let out = Worker::start(&config).wait().await;
    assert!(out.status.success(), "{}", show(&out));
    let loaded: Vec<String> = db
        .rows("SELECT order_id FROM orders ORDER BY order_id")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let children: Vec<String> = (100..160).map(|n| format!("o-{n:06}")).collect();
    assert_eq!(loaded, children, "every child record, no parent record");
    let _ = k.delete_stream().stream_name(&name).send().await;

    // A shard with no parent first opened at latest: its start is pinned before anything is read.
    let name = stream(&k, 1).await;
    let config = write_config(
        dir.path(),
        &name,
        &db.url,
        "w2",
        "initial_position = \"latest\"",
    );
    let out = Worker::start(&config).wait().await;
    assert!(out.status.success(), "{}", show(&out));
    let pinned = db
        .rows(&format!(
            "SELECT position FROM weir_checkpoints WHERE \"partition\" LIKE '{name}/%'"
        ))
        .await;
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    assert!(pinned[0][0].starts_with('@'), "{pinned:?}");
    // Records written now, while no worker runs, still load on the next start: no second LATEST.
    put(&k, &name, 200..210).await;
    let out = Worker::start(&config).wait().await;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        db.count("SELECT count(*) FROM orders WHERE order_id >= 'o-000200'")
            .await,
        10
    );
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// A shard whose pipeline stopped because its commit was fenced (the checkpoint moved under it: here to
/// `SHARD_END`, so that no worker reads the shard again) is not read any more: the pipeline's shard reader stops
/// with it instead of polling on as an orphan. The front counts every `GetRecords` call of the worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_taken_over_is_not_read_any_more() {
    needs!("a_shard_taken_over_is_not_read_any_more": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 1).await;
    put(&k, &name, 0..20).await;
    let target = endpoint().trim_start_matches("http://").to_string();
    let front = TcpFront::counting(&target, b"Kinesis_20131202.GetRecords").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(dir.path(), &name, &db.url, "a", "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("idle_exit_secs = 5\n", "")
        .replace(&endpoint(), &format!("http://{}", front.addr));
    std::fs::write(
        &path,
        format!("{text}\n[worker]\nadmin_bind = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let worker = Worker::start(&path);
    let mut loaded = 0;
    for _ in 0..240 {
        // The worker creates the tables when it starts.
        if db
            .count("SELECT count(*) FROM pg_class WHERE relname = 'orders'")
            .await
            == 1
        {
            loaded = db.count("SELECT count(*) FROM orders").await;
        }
        if loaded == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if loaded != 20 {
        worker.signal("-KILL");
        panic!(
            "{loaded} of 20 orders loaded\n{}",
            show(&worker.wait().await)
        );
    }
    // The checkpoint moves under the running pipeline (the lease stays this worker's, so renewals go on):
    // the next commit is fenced and the pipeline stops as not the owner.
    db.client()
        .await
        .execute(
            "UPDATE weir_checkpoints SET position = 'SHARD_END' \
             WHERE source = 'kinesis' AND \"partition\" NOT LIKE '%#%'",
            &[],
        )
        .await
        .unwrap();
    put(&k, &name, 20..30).await;
    // The next round collects the stopped pipeline and releases the lease; an ended shard is not claimed
    // again, so the worker holds nothing.
    let mut held = f64::NAN;
    for _ in 0..240 {
        let (status, body) = admin_get(port, "/metrics");
        held = if status == 200 {
            metric(&body, "weir_leases_held", "")
        } else {
            f64::NAN
        };
        if held == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let before = front.requests();
    // While the shard was read, GetRecords went out every poll_ms (200 ms); an orphaned reader would go on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = front.requests();
    worker.signal("-TERM");
    let out = worker.wait().await;
    assert_eq!(
        held,
        0.0,
        "the worker still holds the shard\n{}",
        show(&out)
    );
    assert!(
        before > 0,
        "the front saw no GetRecords call\n{}",
        show(&out)
    );
    assert_eq!(
        after,
        before,
        "GetRecords calls after the shard was given up\n{}",
        show(&out)
    );
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("another worker took the shard over"),
        "the commit was not fenced\n{}",
        show(&out)
    );
    assert_eq!(
        db.count("SELECT count(*) FROM orders").await,
        20,
        "the fenced batch loaded nothing"
    );
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// Two workers on a 4-shard stream with grouped commits and the coordinator in DynamoDB (`[coordinator] kind =
/// "dynamodb"` on the AWS test server): both hold shard leases there while the stream is written, every record
/// loads exactly once, and no lease was ever written to the warehouse (its checkpoint rows have never had an
/// owner); at exit every lease in DynamoDB is given up.
#[tokio::test(flavor = "multi_thread")]
async fn leases_in_dynamodb_never_write_the_warehouse() {
    needs!("leases_in_dynamodb_never_write_the_warehouse": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let table = unique("weir-leases");
    let coordinated = |worker: &str| {
        let path = write_config(dir.path(), &name, &db.url, worker, "");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "\n[sink.group_commit]\nenabled = true\ninterval_ms = 200\nlease_secs = 2\n\
             [sink.group_commit.staging]\nkind = \"local\"\ndir = \"{}\"\n\
             [coordinator]\nkind = \"dynamodb\"\ntable = \"{table}\"\nendpoint_url = \"{}\"\n",
            dir.path().join("staged").display(),
            aws_endpoint()
        ));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (a, b) = (coordinated("a"), coordinated("b"));
    let producer = {
        let (k, name) = (k.clone(), name.clone());
        tokio::spawn(async move {
            for round in 0..24 {
                put(&k, &name, round * 25..(round + 1) * 25).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let wa = Worker::start(&a);
    let wb = Worker::start(&b);
    let mut owners = std::collections::BTreeSet::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(items) = tokio::time::timeout(
            Duration::from_secs(5),
            coordinator_items(&table, "lease#kinesis"),
        )
        .await
        else {
            continue;
        };
        owners = items
            .iter()
            .map(|i| i["owner"].clone())
            .filter(|o| !o.is_empty())
            .collect();
        if owners.len() == 2 {
            break;
        }
    }
    producer.await.unwrap();
    let (oa, ob) = (wa.wait().await, wb.wait().await);
    assert!(oa.status.success(), "{}", show(&oa));
    assert!(ob.status.success(), "{}", show(&ob));
    assert_eq!(
        owners.len(),
        2,
        "both workers held leases in DynamoDB: {owners:?}"
    );
    assert_exactly_once(&db, 600).await;
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_checkpoints WHERE source = 'kinesis' AND owner IS NOT NULL"
        )
        .await,
        0,
        "a lease was written to the warehouse"
    );
    let leases = coordinator_items(&table, "lease#kinesis").await;
    assert_eq!(leases.len(), 4, "{leases:?}");
    assert!(leases.iter().all(|l| l["owner"].is_empty()), "{leases:?}");
    // `weir status` reads the shards' leases and the loader's from DynamoDB: four shards, all released, and
    // a loader lease with the epoch of the last loader, released too.
    let status = weir(
        &["status", "-c", a.to_str().unwrap(), "--json"],
        &AWS_TEST_ENV,
    );
    assert!(status.status.success(), "{}", show(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4, "{status:#}");
    assert!(
        partitions
            .iter()
            .all(|p| p["lease"] == "free" && p["records"].as_i64() > Some(0)),
        "{status:#}"
    );
    let loader = &status["loader"];
    assert_eq!(
        (&loader["owner"], &loader["lease"]),
        (&"".into(), &"free".into()),
        "{status:#}"
    );
    assert!(
        loader["epoch"].as_str().unwrap().parse::<i64>().unwrap() > 0,
        "{status:#}"
    );
    // Every shard was read to its tip: nothing behind (the lag is measured in `a_stream_named_by_arn`:
    // kinesalite always answers 0 for an open shard).
    assert!(partitions.iter().all(|p| p["lag_ms"] == 0), "{status:#}");
    // Released leases keep no time; the loader's too.
    assert!(
        partitions.iter().all(|p| p["lease_expires_at"].is_null()),
        "{status:#}"
    );
    assert!(loader["expires_at"].is_null(), "{status:#}");
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// The DynamoDB coordinator cut off (a front that black-holes only the DynamoDB endpoint) from a worker reading
/// a 2-shard stream: its renewals fail, and once the last renewal that succeeded has run out (read from DynamoDB
/// itself: every lease item's `expires_us` is past) the worker has stopped both shards — records put from then
/// on are not loaded while the cut lasts, though the stream and the warehouse are reachable (another worker may
/// hold those leases now). When the path is back the worker claims the shards again and loads everything once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_coordinator_stops_shards_when_their_leases_run_out() {
    needs!("a_cut_coordinator_stops_shards_when_their_leases_run_out": Postgres, Aws, Kinesis, Plugins);
    let k = client().await;
    let db = TestDb::new().await;
    let name = stream(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let table = unique("weir-cut");
    let target = aws_endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let front = TcpFront::with_mode(&target, FrontMode::Forward).await;
    let path = write_config(
        dir.path(),
        &name,
        &db.url,
        "w",
        "[retry]\nmax_attempts = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 500",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("lease_secs = 6", "lease_secs = 3")
        .replace(
            "[aws]\n",
            "[aws]\nread_timeout_secs = 2\nconnect_timeout_secs = 1\nattempt_timeout_secs = 3\n",
        )
        + &format!(
            "\n[coordinator]\nkind = \"dynamodb\"\ntable = \"{table}\"\nendpoint_url = \"http://{}\"\n",
            front.addr
        );
    std::fs::write(&path, text).unwrap();
    put(&k, &name, 0..50).await;
    let worker = Worker::start(&path);
    db.wait_for_batches(1).await; // the ledger exists from here on
    let loaded = || async {
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while loaded().await < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first 50 records never loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    front.set_mode(FrontMode::BlackHole);
    // Every lease the worker holds has run out (DynamoDB's own view), and one more renewal period has passed
    // for the worker to see its failed renewal past the lease's end.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let leases = coordinator_items(&table, "lease#kinesis").await;
        let running_out = leases
            .iter()
            .filter(|l| !l["owner"].is_empty())
            .map(|l| l["expires_us"].parse::<i64>().unwrap())
            .max();
        assert_eq!(leases.len(), 2, "{leases:?}");
        if running_out.is_none_or(|e| e + 1_500_000 < now_us) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leases never ran out: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    put(&k, &name, 50..100).await;
    // A worker still reading would load them within a poll and a batch wait (0.2 + 0.3 s).
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(loaded().await, 50, "records loaded on leases that ran out");
    }
    front.set_mode(FrontMode::Forward);
    let out = worker.wait().await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ran out unrenewed"),
        "{}",
        show(&out)
    );
    assert_exactly_once(&db, 100).await;
    let _ = k.delete_stream().stream_name(&name).send().await;
}

/// `stream_arn` (a stream in another account, shared by its resource policy): with the ARN alone in the
/// config, `weir produce` and `weir run` name the stream by ARN in every call — never by name — and every
/// record loads exactly once. Against the local AWS server's Kinesis (kinesalite predates `StreamARN`),
/// through two counting fronts.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_named_by_arn() {
    needs!("a_stream_named_by_arn": Postgres, Aws, Plugins);
    let k = aws_sdk_kinesis::Client::new(&aws_sdk().await);
    let name = unique("weir-arn");
    k.create_stream()
        .stream_name(&name)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    wait_active(&k, &name).await;
    let arn = k
        .describe_stream_summary()
        .stream_name(&name)
        .send()
        .await
        .unwrap()
        .stream_description_summary()
        .unwrap()
        .stream_arn()
        .to_string();
    put(&k, &name, 0..40).await;
    let aws = aws_endpoint();
    let by_name = TcpFront::counting(aws.trim_start_matches("http://"), b"\"StreamName\"").await;
    let by_arn = TcpFront::counting(&by_name.addr, b"\"StreamARN\"").await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &name,
        &db.url,
        "w1",
        &format!("endpoint_url = \"http://{}\"", by_arn.addr),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &format!("stream = \"{name}\""),
            &format!("stream_arn = \"{arn}\""),
        )
        .replace(&endpoint(), &aws);
    assert!(!text.contains("\nstream =") && text.contains(&arn));
    std::fs::write(&config, text).unwrap();
    let input = dir.path().join("more.jsonl");
    std::fs::write(&input, (40..80).map(order).collect::<Vec<_>>().join("\n")).unwrap();
    let produced = weir(
        &[
            "produce",
            "-c",
            config.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &AWS_TEST_ENV,
    );
    assert!(produced.status.success(), "{}", show(&produced));
    let out = Worker::start(&config).wait().await;
    assert!(out.status.success(), "{}", show(&out));
    assert_exactly_once(&db, 80).await;
    // `weir status` reads each shard's lag from its checkpoint (by ARN too): nothing behind after the run;
    // two records put on one shard at least 50 ms apart put that shard at least 50 ms behind.
    let status = || {
        let out = weir(
            &["status", "-c", config.to_str().unwrap(), "--json"],
            &AWS_TEST_ENV,
        );
        assert!(out.status.success(), "{}", show(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let lags: Vec<i64> = v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["lag_ms"].as_i64().unwrap_or_else(|| panic!("{v:#}")))
            .collect();
        lags
    };
    assert_eq!(status(), [0, 0]);
    put(&k, &name, 1000..1001).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    put(&k, &name, 1010..1011).await; // the same partition key, so the same shard
    let lags = status();
    assert!(lags.iter().any(|l| *l >= 50), "{lags:?}");
    assert!(by_arn.requests() > 0, "no call named the stream by ARN");
    assert_eq!(by_name.requests(), 0, "a call named the stream by name");
}
