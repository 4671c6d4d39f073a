//! The SQS source and the S3 RAW store against a local server speaking the AWS protocols (moto; set
//! `WEIR_AWS_ENDPOINT` to point elsewhere) and a real PostgreSQL: end to end with exact RAW bytes, a sink
//! stalled past the visibility timeout, a crash between commit and delete, rejected messages, an S3 outage.
//! Queues are kept to tens of messages (moto's SQS slows down as a queue grows).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use common::*;
use sha2::{Digest, Sha256};
use weir::raw::RawLine;

/// The tests that load moto hardest (hundreds of messages, many workers) run alone: moto slows down for every
/// queue under load, and the other tests time visibility timeouts in seconds.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

struct Aws {
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
}

async fn aws() -> Aws {
    let sdk = aws_sdk().await;
    Aws {
        sqs: aws_sdk_sqs::Client::new(&sdk),
        s3: s3().await,
    }
}

impl Aws {
    async fn queue(&self, visibility_secs: u32) -> String {
        self.sqs
            .create_queue()
            .queue_name(unique("weir-q"))
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_secs.to_string(),
            )
            .send()
            .await
            .expect("create queue (is the AWS test server running? scripts/services.sh)")
            .queue_url
            .unwrap()
    }

    async fn bucket(&self) -> String {
        let name = unique("weir-raw");
        self.s3.create_bucket().bucket(&name).send().await.unwrap();
        name
    }

    /// (visible, in flight) messages of a queue.
    /// Waits (at most 120 s) until the queue's depth is `want` (visible, in flight).
    async fn wait_for_depth(&self, url: &str, want: (i64, i64)) {
        for _ in 0..1200 {
            if self.depth(url).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the queue never reached depth {want:?}: {:?}",
            self.depth(url).await
        );
    }

    async fn depth(&self, url: &str) -> (i64, i64) {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = out.attributes().unwrap();
        let n = |k| a.get(&k).map(|v| v.parse().unwrap()).unwrap_or(0);
        (
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Sends `lines`, each with the message attribute `origin = test`; returns message id → body.
    async fn send(&self, url: &str, lines: &[String]) -> BTreeMap<String, String> {
        let mut sent = BTreeMap::new();
        for chunk in lines.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_attributes(
                            "origin",
                            MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value("test")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert!(out.failed().is_empty());
            for ok in out.successful() {
                let i: usize = ok.id().parse().unwrap();
                sent.insert(ok.message_id().to_string(), chunk[i].clone());
            }
        }
        sent
    }

    /// Every RAW line in the bucket, with the key of its object.
    async fn raw(&self, bucket: &str) -> Vec<(String, RawLine)> {
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        let mut out = Vec::new();
        // RAW objects only (the bucket also holds the plugin store, `weir-plugins/`).
        for o in listed
            .contents()
            .iter()
            .filter(|o| o.key().unwrap().ends_with(".jsonl.gz"))
        {
            let key = o.key().unwrap().to_string();
            let got = self
                .s3
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
            let meta = got.metadata().cloned().unwrap_or_default();
            let bytes = got.body.collect().await.unwrap().into_bytes();
            let lines = weir::raw::decode(&key, &bytes).unwrap();
            let sha: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(meta.get("weir-sha256"), Some(&sha), "{key}");
            assert_eq!(
                meta.get("weir-records"),
                Some(&lines.len().to_string()),
                "{key}"
            );
            out.extend(lines.into_iter().map(|l| (key.clone(), l)));
        }
        out
    }
}

/// The quickstart input lines SQS can carry: 16 orders (5 good, 2 test orders dropped, 9 malformed); the
/// quickstart's 17th line is not UTF-8, which SQS message bodies cannot hold.
fn quickstart_lines() -> Vec<String> {
    std::fs::read(root().join("examples/quickstart/orders.jsonl"))
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| String::from_utf8(l.to_vec()).ok())
        .collect()
}

const MESSAGES: i64 = 16;
const REJECTED: i64 = 9;

/// A configuration SQS → S3 RAW → orders rule → PostgreSQL, with `extra` settings appended to sections.
struct Setup<'a> {
    queue_url: &'a str,
    bucket: &'a str,
    db_url: &'a str,
    source: &'a str,
    raw: &'a str,
    batch: &'a str,
    retry: &'a str,
    /// `[aws] endpoint_url`; empty: the AWS test server.
    endpoint: &'a str,
}

fn write_config(dir: &Path, s: &Setup) -> PathBuf {
    let quickstart = std::fs::read_to_string(root().join("examples/quickstart/weir.toml")).unwrap();
    let tables_at = quickstart.find("[[sink.tables]]").unwrap();
    let tables_end = quickstart.find("[batch]").unwrap();
    let tables = &quickstart[tables_at..tables_end];
    let text = format!(
        r#"[source]
kind = "sqs"
queue_url = "{queue}"
wait_secs = 1
idle_exit_secs = 3
{source}

[raw]
kind = "s3"
bucket = "{bucket}"
prefix = "orders/"
{raw}

[rule]
plugin = "{plugin}"

[sink]
kind = "postgres"
url = "{db}"

{tables}
[batch]
{batch}

[retry]
{retry}

[aws]
endpoint_url = "{endpoint}"
"#,
        queue = s.queue_url,
        source = s.source,
        bucket = s.bucket,
        raw = s.raw,
        plugin = plugin("orders").display(),
        db = s.db_url,
        batch = s.batch,
        retry = s.retry,
        endpoint = if s.endpoint.is_empty() {
            aws_endpoint()
        } else {
            s.endpoint.to_string()
        },
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn setup<'a>(queue_url: &'a str, bucket: &'a str, db_url: &'a str) -> Setup<'a> {
    Setup {
        queue_url,
        bucket,
        db_url,
        source: "",
        raw: "",
        batch: "max_records = 100\nmax_wait_ms = 1000",
        retry: "",
        endpoint: "",
    }
}

/// `weir` with `args` running in the background (output read as it runs); killed if the test ends first.
fn start_weir(args: &[&str], env: &[(&str, &str)]) -> Background {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).env("WEIR_LOG", "info").envs(AWS_TEST_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Background::spawn(cmd)
}

async fn run_weir(config: &Path, env: &[(&str, &str)]) -> Output {
    start_weir(&["run", "-c", config.to_str().unwrap()], env)
        .wait(Duration::from_secs(120))
        .await
}

async fn assert_quickstart_rows(db: &TestDb) {
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 5);
    assert_eq!(db.count("SELECT count(*) FROM order_lines").await, 12);
    assert_eq!(
        db.count("SELECT count(*) FROM weir_dead_letters").await,
        REJECTED
    );
    let o1 = db
        .rows("SELECT total, country FROM orders WHERE order_id = 'o-00000001'")
        .await;
    assert_eq!(o1, [["44.98", "ES"]]);
}

/// SQS → S3 RAW → rule → PostgreSQL: every message's RAW line holds its exact bytes and attributes, object
/// metadata and SSE are set (multipart upload forced), rows are right, rejected messages are dead letters
/// (deleted, not redelivered), and the queue ends empty.
#[tokio::test(flavor = "multi_thread")]
async fn sqs_to_s3_raw_to_postgres() {
    needs!("sqs_to_s3_raw_to_postgres": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(30).await, aws.bucket().await);
    let sent = aws.send(&queue, &quickstart_lines()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            source: "receivers = 3",
            raw: "sse = \"s3\"\nmultipart_threshold_bytes = 1",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let out = run_weir(&config, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("records in: {MESSAGES} in")),
        "{stdout}"
    );

    let queue_name = queue.rsplit('/').next().unwrap();
    let raw = aws.raw(&bucket).await;
    assert_eq!(raw.len() as i64, MESSAGES);
    for (key, line) in &raw {
        assert!(key.starts_with("orders/source=sqs/dt="), "{key}");
        let message_id = line.id.strip_prefix(&format!("sqs/{queue_name}/")).unwrap();
        assert_eq!(line.position, message_id);
        assert_eq!(line.payload_bytes().unwrap(), sent[message_id].as_bytes());
        assert!(line.attributes.contains(&("origin".into(), "test".into())));
        assert!(
            line.attributes
                .contains(&("sqs:ApproximateReceiveCount".into(), "1".into()))
        );
    }
    let head = aws
        .s3
        .head_object()
        .bucket(&bucket)
        .key(&raw[0].0)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );

    assert_quickstart_rows(&db).await;
    // Rejected messages are dead letters under their SQS record ids, with the stage and the reason.
    let dead = db
        .rows("SELECT record_id, stage, reason FROM weir_dead_letters ORDER BY 1")
        .await;
    assert!(
        dead.iter()
            .all(|d| d[0].starts_with(&format!("sqs/{queue_name}/")))
    );
    assert!(
        dead.iter()
            .any(|d| d[1] == "validate" && d[2].contains("column order_id"))
    );
    // Final rows trace back to RAW lines.
    let lineage = db
        .rows("SELECT _weir_record_id FROM orders ORDER BY 1")
        .await;
    for l in lineage {
        assert!(raw.iter().any(|(_, line)| line.id == l[0]), "{l:?}");
    }
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        MESSAGES
    );
    assert_eq!(aws.depth(&queue).await, (0, 0));
    // `weir status` shows the queue's backlog: empty now; two messages sent since wait.
    let status = || {
        let out = weir(
            &["status", "-c", config.to_str().unwrap(), "--json"],
            &AWS_TEST_ENV,
        );
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["queue"].clone()
    };
    assert_eq!(
        status(),
        serde_json::json!({"waiting": 0, "in_flight": 0, "delayed": 0})
    );
    aws.send(&queue, &quickstart_lines()[..2]).await;
    assert_eq!(status()["waiting"], 2);
}

/// A sink stalled for 3× the visibility timeout (its table locked) causes no redelivery: the heartbeat keeps
/// the messages invisible, every message is archived and loaded once, and the queue ends empty.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_sink_causes_no_redelivery() {
    needs!("stalled_sink_causes_no_redelivery": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(2).await, aws.bucket().await);
    aws.send(&queue, &quickstart_lines()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            source: "visibility_timeout_secs = 2",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let applied = weir(
        &["schema", "apply", "-c", config.to_str().unwrap()],
        &AWS_TEST_ENV,
    );
    assert!(applied.status.success(), "{}", show(&applied));

    let locker = db.admin().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let running = start_weir(&["run", "-c", config.to_str().unwrap()], &[]);
    // By construction: every message is in flight with this worker first, then the stall outlasts three
    // visibility timeouts (2 s each).
    aws.wait_for_depth(&queue, (0, MESSAGES)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(db.count("SELECT count(*) FROM weir_batches").await, 0);
    // Everything is in flight with this worker; nothing came back to the queue.
    assert_eq!(aws.depth(&queue).await, (0, MESSAGES));
    locker.batch_execute("COMMIT").await.unwrap();
    let out = running.wait(Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", show(&out));

    assert_quickstart_rows(&db).await;
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        MESSAGES
    );
    assert_eq!(aws.raw(&bucket).await.len() as i64, MESSAGES);
    // (Redelivery is judged by the queue depth during the stall, which fails without the heartbeat; not by
    // receive counts or the worker's log: moto, under load, sometimes hands one message to two concurrent
    // receive calls, and a receive whose answer is lost still counts — the worker keeps one copy either way.)
    assert_eq!(aws.depth(&queue).await, (0, 0));
}

/// A crash after a commit but before the delete: the messages come back after their visibility timeout, the
/// final tables are unchanged by the replay, and the ledger shows the replayed batch. Filled by `weir produce`.
#[tokio::test(flavor = "multi_thread")]
async fn crash_between_commit_and_delete_replays_idempotently() {
    needs!("crash_between_commit_and_delete_replays_idempotently": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(2).await, aws.bucket().await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            source: "visibility_timeout_secs = 2\nreceivers = 1",
            batch: "max_records = 10\nmax_wait_ms = 1000",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let input = dir.path().join("orders.jsonl");
    std::fs::copy(root().join("examples/quickstart/orders.jsonl"), &input).unwrap();
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
    let said = String::from_utf8_lossy(&produced.stdout);
    assert!(
        said.contains(&format!("sent {MESSAGES} messages")),
        "{said}"
    );
    assert!(String::from_utf8_lossy(&produced.stderr).contains("line 17 is not UTF-8"));

    let crashed = run_weir(&config, &[("WEIR_CRASH_AFTER", "commit:1")]).await;
    assert!(!crashed.status.success(), "{}", show(&crashed));
    let first = db.count("SELECT sum(records_in) FROM weir_batches").await;
    assert!(first > 0);
    let rows_after_crash = db
        .rows("SELECT order_id, total, line_count, _weir_record_id FROM orders ORDER BY 1")
        .await;
    let (visible, in_flight) = aws.depth(&queue).await;
    assert_eq!(visible + in_flight, MESSAGES, "nothing was deleted");

    let out = run_weir(&config, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_quickstart_rows(&db).await;
    let rows = db
        .rows("SELECT order_id, total, line_count, _weir_record_id FROM orders ORDER BY 1")
        .await;
    for r in &rows_after_crash {
        assert!(rows.contains(r), "row {r:?} changed by the replay");
    }
    // The ledger holds the replayed batch as well: more records in than messages.
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        MESSAGES + first
    );
    // RAW holds the replayed deliveries too (and any archived before the crash but never committed).
    let raw = aws.raw(&bucket).await;
    assert!(
        raw.len() as i64 >= MESSAGES + first,
        "{} RAW lines",
        raw.len()
    );
    let redelivered = raw
        .iter()
        .filter(|(_, l)| {
            l.attributes
                .contains(&("sqs:ApproximateReceiveCount".into(), "2".into()))
        })
        .count();
    assert!(redelivered as i64 >= first, "{redelivered} redelivered");
    assert_eq!(aws.depth(&queue).await, (0, 0));
}

/// A front for the AWS test server (up).
async fn aws_front() -> TcpFront {
    let target = aws_endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    TcpFront::start(&target).await
}

/// A front for the AWS test server, down until the test brings it up.
async fn s3_front() -> TcpFront {
    let front = aws_front().await;
    front.set_up(false);
    front
}

/// S3 unreachable: the worker keeps retrying the RAW write, deletes nothing and loads nothing; once S3 is
/// back it completes, with no redelivery.
#[tokio::test(flavor = "multi_thread")]
async fn s3_outage_deletes_nothing_and_recovers() {
    needs!("s3_outage_deletes_nothing_and_recovers": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(4).await, aws.bucket().await);
    aws.send(&queue, &quickstart_lines()).await;
    let front = s3_front().await;
    let dir = tempfile::tempdir().unwrap();
    let raw = format!("endpoint_url = \"http://{}\"", front.addr);
    let config = write_config(
        dir.path(),
        &Setup {
            source: "visibility_timeout_secs = 4",
            raw: &raw,
            retry: "max_attempts = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 500",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let running = start_weir(&["run", "-c", config.to_str().unwrap()], &[]);
    // Every message in flight first, then an outage of two visibility timeouts (4 s each).
    aws.wait_for_depth(&queue, (0, MESSAGES)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        aws.depth(&queue).await,
        (0, MESSAGES),
        "all in flight, none deleted"
    );
    assert_eq!(db.count("SELECT count(*) FROM weir_batches").await, 0);
    front.set_up(true);
    let out = running.wait(Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RAW write"),
        "the outage was retried: {}",
        show(&out)
    );
    assert_quickstart_rows(&db).await;
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        MESSAGES
    );
    assert_eq!(aws.raw(&bucket).await.len() as i64, MESSAGES);
    assert_eq!(aws.depth(&queue).await, (0, 0));
}

/// A missing queue or bucket stops the worker at start with a message naming the setting.
#[tokio::test(flavor = "multi_thread")]
async fn missing_queue_or_bucket_is_named() {
    needs!("missing_queue_or_bucket_is_named": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(30).await, aws.bucket().await);
    let dir = tempfile::tempdir().unwrap();
    let missing_queue = format!("{}-missing", queue);
    let config = write_config(dir.path(), &setup(&missing_queue, &bucket, &db.url));
    let out = run_weir(&config, &[]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("source.queue_url"),
        "{}",
        show(&out)
    );
    let config = write_config(dir.path(), &setup(&queue, "weir-no-such-bucket", &db.url));
    let out = run_weir(&config, &[]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("raw.bucket"),
        "{}",
        show(&out)
    );
}

/// A FIFO queue: successive versions of one order sent in one message group load in order (the final row is
/// the last version) even with several receivers and small batches; record ids are message ids, the
/// deduplication id an attribute.
#[tokio::test(flavor = "multi_thread")]
async fn fifo_keeps_group_order() {
    needs!("fifo_keeps_group_order": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let queue = aws
        .sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique("weir-q")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let bucket = aws.bucket().await;
    let versions: Vec<String> = (1..=20)
        .map(|v| {
            format!(
                r#"{{"order_id":"o-fifo","customer_id":"c","placed_at":"2026-11-21T10:00:00Z","currency":"EUR","lines":[{{"sku":"S","qty":1,"unit_price":"{v}.00"}}]}}"#
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            source: "receivers = 3\nmax_messages = 3",
            batch: "max_records = 4\nmax_wait_ms = 200",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let input = dir.path().join("versions.jsonl");
    std::fs::write(&input, versions.join("\n")).unwrap();
    let produced = weir(
        &[
            "produce",
            "-c",
            config.to_str().unwrap(),
            input.to_str().unwrap(),
            "--group-id",
            "g1",
        ],
        &AWS_TEST_ENV,
    );
    assert!(produced.status.success(), "{}", show(&produced));
    let out = run_weir(&config, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    let queue_name = queue.rsplit('/').next().unwrap();
    let row = db.rows("SELECT total, _weir_record_id FROM orders").await;
    assert_eq!(row.len(), 1);
    assert_eq!(row[0][0], "20.00", "the last version wins");
    // The record id is the message id (unique); the deduplication id travels as an attribute.
    let message_id = row[0][1]
        .strip_prefix(&format!("sqs/{queue_name}/"))
        .unwrap_or_else(|| panic!("{row:?}"));
    assert!(!message_id.contains('/'), "{row:?}");
    let raw = aws.raw(&bucket).await;
    let (_, line) = raw
        .iter()
        .find(|(_, l)| l.id == row[0][1])
        .unwrap_or_else(|| panic!("RAW holds {}", row[0][1]));
    assert!(
        line.attributes
            .iter()
            .any(|(k, v)| k == "sqs:MessageDeduplicationId" && v.starts_with("20-")),
        "{:?}",
        line.attributes
    );
    assert_eq!(
        db.count("SELECT sum(records_in) FROM weir_batches").await,
        20
    );
    assert_eq!(aws.depth(&queue).await, (0, 0));
}

/// `n` orders `o-00000`, `o-00001`, …, order `i` with one line of quantity `i % q + 1`.
fn orders(n: usize, q: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"order_id": "o-{i:05}", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{{"sku": "A", "qty": {}, "unit_price": "1.00"}}]}}"#,
                i % q + 1
            )
        })
        .collect()
}

/// After a run of [`orders`]`(n, q)`: every order exactly once with its quantities from the input (replayed
/// deliveries show in the ledger, not in the rows), no dead letter, every batch balanced, RAW holds every
/// message, the queue is drained.
async fn assert_every_order_once(
    aws: &Aws,
    db: &TestDb,
    (queue, bucket): (&str, &str),
    n: usize,
    q: usize,
) {
    assert_eq!(db.count("SELECT count(*) FROM orders").await, n as i64);
    assert_eq!(
        db.count("SELECT count(DISTINCT _weir_record_id) FROM orders")
            .await,
        n as i64
    );
    let qty: i64 = (0..n).map(|i| (i % q + 1) as i64).sum();
    assert_eq!(
        db.count("SELECT sum(qty) FROM order_lines").await,
        qty,
        "values from the input"
    );
    assert_eq!(db.count("SELECT count(*) FROM weir_dead_letters").await, 0);
    assert!(db.count("SELECT sum(records_in) FROM weir_batches").await >= n as i64);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM weir_batches WHERE records_in <> emitted + dropped + rejected"
        )
        .await,
        0
    );
    let raw: std::collections::BTreeSet<String> = aws
        .raw(bucket)
        .await
        .into_iter()
        .map(|(_, l)| l.id)
        .collect();
    assert_eq!(raw.len(), n, "RAW holds every message");
    assert_eq!(aws.depth(queue).await, (0, 0), "the queue is drained");
}

/// kill -9 at random moments of an SQS → S3 RAW → PostgreSQL worker (`WEIR_CRASH_ITERATIONS`, default 10),
/// restarting each time, in rounds of 10 kills over a fresh queue of 300 messages (moto's receive slows down
/// with the queue's size: 4.5 s a call at 3,000 messages), each round ending with a run until its queue is
/// drained: every order exactly once in the final tables (a batch committed but not yet deleted before a kill
/// is delivered and committed again: the ledger shows the replay, the rows do not change), RAW holds every
/// message, every queue is empty, every ledger batch balances.
#[tokio::test(flavor = "multi_thread")]
async fn random_kill_9_loses_and_doubles_nothing() {
    needs!("random_kill_9_loses_and_doubles_nothing": Postgres, Aws, Plugins);
    let _heavy = HEAVY.write().await;
    const ROUND: usize = 10;
    const PER_ROUND: usize = 300;
    let aws = aws().await;
    let db = TestDb::new().await;
    let bucket = aws.bucket().await;
    let iterations = crash_iterations();
    let rounds = iterations.div_ceil(ROUND);
    let n = PER_ROUND * rounds;
    let lines = orders(n, 7);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = CrashRng::new();
    let (mut kills, mut killed) = (0, 0);
    let mut queue = String::new();
    for (round, batch) in lines.chunks(PER_ROUND).enumerate() {
        queue = aws.queue(4).await;
        assert_eq!(aws.send(&queue, batch).await.len(), batch.len());
        let config = write_config(
            dir.path(),
            &Setup {
                source: "visibility_timeout_secs = 4\nreceivers = 2",
                batch: "max_records = 10\nmax_wait_ms = 200",
                retry: "max_attempts = 100\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000",
                ..setup(&queue, &bucket, &db.url)
            },
        );
        // A killed run leaves its messages in flight for up to the visibility timeout (4 s) after the kill:
        // the final run's idle exit must outlast that, or it could end (on a fast machine, having drained the
        // rest in under a second) before they return.
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("idle_exit_secs = 3", "idle_exit_secs = 6");
        assert!(text.contains("idle_exit_secs = 6"), "{text}");
        std::fs::write(&config, text).unwrap();
        for _ in 0..ROUND.min(iterations - round * ROUND) {
            let before = db.batches_so_far().await;
            let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
                .args(["run", "-c", config.to_str().unwrap()])
                .env("WEIR_LOG", "warn")
                .envs(AWS_TEST_ENV)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // The kill lands inside the run by construction: after 1–2 more committed batches (of the 30
            // a round's queue holds for its 10 kills) and a random 0–20 ms.
            let step = 1 + rng.below(2) as i64;
            let mid_run = db
                .wait_for_progress(before, step, 20, &mut rng, || {
                    child.try_wait().unwrap().is_none()
                })
                .await;
            kills += 1;
            let _ = child.kill();
            let _ = child.wait();
            killed += mid_run as usize;
        }
        let out = run_weir(&config, &[]).await;
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(
            aws.depth(&queue).await,
            (0, 0),
            "round {round}: queue drained"
        );
    }
    eprintln!("{killed} of {kills} runs killed mid-way ({n} messages in {rounds} queues)");
    assert_eq!(
        killed, kills,
        "only {killed} of {kills} runs were killed mid-way"
    );
    assert_every_order_once(&aws, &db, (&queue, &bucket), n, 7).await;
}

/// The whole AWS endpoint (SQS and S3) gone for 30 s in the middle of a run with the default retry settings
/// (a front that refuses new connections and cuts open ones): receives fail and retry with backoff (and so do
/// visibility extensions, RAW writes and deletes that happen to be in flight at the cut; a RAW write failing
/// by construction is `s3_outage_deletes_nothing_and_recovers`), nothing commits without its RAW copy, `idle_exit_secs` does not end the
/// run during the outage, and the worker finishes by itself once the endpoint is back: every order exactly
/// once with its quantities from the input, RAW holds every message, every batch balances, the queue is drained.
#[tokio::test(flavor = "multi_thread")]
async fn aws_endpoint_outage_mid_run_recovers() {
    needs!("aws_endpoint_outage_mid_run_recovers": Postgres, Aws, Plugins);
    let _heavy = HEAVY.write().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(20).await, aws.bucket().await);
    let n = 300usize;
    let lines = orders(n, 5);
    assert_eq!(aws.send(&queue, &lines).await.len(), n);
    let front = aws_front().await;
    let endpoint = format!("http://{}", front.addr);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            source: "visibility_timeout_secs = 20",
            batch: "max_records = 5\nmax_wait_ms = 200",
            endpoint: &endpoint,
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let running = start_weir(&["run", "-c", config.to_str().unwrap()], &[]);
    db.wait_for_batches(1).await;
    front.set_up(false);
    let at_cut = db.count("SELECT count(*) FROM weir_batches").await;
    assert!(
        at_cut > 0,
        "the run had started before the outage (increase the wait if this fails)"
    );
    // Batches already past their RAW write may still commit; then nothing can.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = db
        .count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
        .await;
    assert!(
        settled < n as i64,
        "work was left for after the outage ({settled} of {n} loaded)"
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await,
        settled,
        "nothing commits without its RAW copy"
    );
    eprintln!("AWS endpoint down 30 s after {settled} of {n} messages were loaded");
    front.set_up(true);
    let out = running.wait(Duration::from_secs(180)).await;
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    // Only the receive is sure to fail: the outage outlasts every poll. Whether a batch sat between its
    // receive and its RAW write at the cut depends on timing, so that retry is not asserted here.
    assert!(log.contains("receive failed; retrying"), "{}", show(&out));

    assert_every_order_once(&aws, &db, (&queue, &bucket), n, 5).await;
}

/// An outage is not idleness: a worker with `idle_exit_secs = 3` that has drained its queue keeps running
/// through a 10 s outage of the endpoint (receives fail and retry), then loads the messages sent meanwhile
/// and only then exits idle.
#[tokio::test(flavor = "multi_thread")]
async fn outage_is_not_idleness() {
    needs!("outage_is_not_idleness": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(20).await, aws.bucket().await);
    let lines = orders(10, 1);
    aws.send(&queue, &lines[..5]).await;
    let front = aws_front().await;
    let endpoint = format!("http://{}", front.addr);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            endpoint: &endpoint,
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let mut running = start_weir(&["run", "-c", config.to_str().unwrap()], &[]);
    db.wait_for_batches(1).await;
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 5);
    front.set_up(false);
    // Sent straight to the server while the worker cannot reach it, once the long polls cut by the outage
    // (`wait_secs = 1`) have ended on the server: a message taken by a poll whose answer is lost stays
    // invisible for its visibility timeout (20 s), as on SQS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    aws.send(&queue, &lines[5..]).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        running.is_running(),
        "the worker ended its input during the outage"
    );
    front.set_up(true);
    let out = running.wait(Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("receive failed; retrying"),
        "{}",
        show(&out)
    );
    assert_every_order_once(&aws, &db, (&queue, &bucket), 10, 1).await;
}

/// The whole AWS endpoint black-holed in the middle of a run (a front that keeps connections open and
/// forwards nothing, as a dead network path looks; new connections are accepted and hang too): every AWS call
/// times out (`[aws] read_timeout_secs = 3`, `connect_timeout_secs`), fails and is retried with backoff
/// instead of hanging; nothing commits without its RAW copy; once the path is back the worker finishes by
/// itself: every order exactly once, RAW complete, queue drained.
#[tokio::test(flavor = "multi_thread")]
async fn black_holed_aws_endpoint_times_out_and_recovers() {
    needs!("black_holed_aws_endpoint_times_out_and_recovers": Postgres, Aws, Plugins);
    let _heavy = HEAVY.write().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(20).await, aws.bucket().await);
    let n = 100usize;
    let lines = orders(n, 5);
    assert_eq!(aws.send(&queue, &lines).await.len(), n);
    let target = aws_endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let front = TcpFront::with_mode(&target, FrontMode::Forward).await;
    let endpoint = format!("http://{}", front.addr);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            source: "visibility_timeout_secs = 5\nreceivers = 2",
            batch: "max_records = 5\nmax_wait_ms = 200",
            retry: "max_attempts = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000",
            endpoint: &endpoint,
            ..setup(&queue, &bucket, &db.url)
        },
    );
    // Receives whose answers the hole swallowed leave their messages in flight on the server until their
    // visibility timeout (5 s): idle_exit_secs must outlast it, or the run would end before they return.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "[aws]\n",
            "[aws]\nread_timeout_secs = 3\nconnect_timeout_secs = 2\nattempt_timeout_secs = 10\n",
        )
        .replace("idle_exit_secs = 3", "idle_exit_secs = 15");
    assert!(text.contains("read_timeout_secs = 3"), "{text}");
    std::fs::write(&config, text).unwrap();
    let running = start_weir(&["run", "-c", config.to_str().unwrap()], &[]);
    db.wait_for_batches(1).await;
    front.set_mode(FrontMode::BlackHole);
    // Calls in flight at the cut may still finish within their timeouts; then nothing can commit.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let settled = db
        .count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await,
        settled,
        "nothing commits through a black hole"
    );
    front.set_mode(FrontMode::Forward);
    let out = running.wait(Duration::from_secs(240)).await;
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("retrying"),
        "the calls failed and were retried: {}",
        show(&out)
    );
    assert_every_order_once(&aws, &db, (&queue, &bucket), n, 5).await;
}

/// The quickstart's messages in a new queue (visibility 2 s, one receiver, batches of 5) loaded into a new
/// database, with `grouped(bucket)` appended to the configuration: the AWS helpers, the database, the queue
/// URL, the bucket and the configuration file.
async fn grouped_quickstart(
    dir: &Path,
    grouped: impl Fn(&str) -> String,
) -> (Aws, TestDb, String, String, PathBuf) {
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(2).await, aws.bucket().await);
    aws.send(&queue, &quickstart_lines()).await;
    let config = write_config(
        dir,
        &Setup {
            source: "visibility_timeout_secs = 2\nreceivers = 1",
            batch: "max_records = 5\nmax_wait_ms = 500",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&grouped(&bucket));
    std::fs::write(&config, text).unwrap();
    (aws, db, queue, bucket, config)
}

/// Grouped commits from SQS, staged in S3: a worker whose loader is killed right after its first merge
/// committed (before the registry learns the fates, so before any worker may acknowledge) has deleted
/// nothing; the next run (its loader takes over once the dead one's lease ran out) finds the merged batches,
/// deletes every message only after its batch merged, leaves the quickstart's rows, and removes the staged
/// objects of every registered batch.
#[tokio::test]
async fn grouped_commits_delete_only_after_the_merge() {
    needs!("grouped_commits_delete_only_after_the_merge": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let dir = tempfile::tempdir().unwrap();
    let (aws, db, queue, bucket, config) = grouped_quickstart(dir.path(), |bucket| {
        format!(
            "\n[sink.group_commit]\nenabled = true\ninterval_ms = 200\nlease_secs = 2\n\
             [sink.group_commit.staging]\nkind = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"weir-staged\"\n"
        )
    })
    .await;

    let crashed = run_weir(&config, &[("WEIR_CRASH_AFTER", "merge:1")]).await;
    assert!(!crashed.status.success(), "{}", show(&crashed));
    assert!(
        db.count("SELECT count(*) FROM weir_batches").await > 0,
        "merged"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM weir_staged WHERE fate <> 'pending'")
            .await,
        0,
        "no fate written"
    );
    let (visible, in_flight) = aws.depth(&queue).await;
    assert_eq!(visible + in_flight, MESSAGES, "nothing was deleted");

    let out = run_weir(&config, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_quickstart_rows(&db).await;
    assert_eq!(aws.depth(&queue).await, (0, 0));
    assert_eq!(
        db.count("SELECT count(*) FROM weir_staged WHERE fate <> 'merged'")
            .await,
        0
    );
    let staged = aws
        .s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("weir-staged/")
        .send()
        .await
        .unwrap();
    // Every registered batch's staged object is removed once merged. An object the crashed run staged but
    // had not registered yet (its batch read again differently after the redelivery) may remain: the
    // protocol leaves those to the bucket's lifecycle rule (docs/GROUP-COMMIT.md, crash W4–W5).
    let registered: Vec<String> = db
        .rows("SELECT staged_key FROM weir_staged")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for object in staged.contents() {
        let key = object.key().unwrap();
        assert!(
            !registered
                .iter()
                .any(|k| key == k || key.ends_with(&format!("/{k}"))),
            "the staged object {key} of a merged batch was not removed"
        );
    }
    assert!(!registered.is_empty());
}

/// Grouped commits from SQS by two workers coordinated through DynamoDB, with only the DynamoDB endpoint
/// black-holed for 30 s (fifteen times the loader lease) while orders keep arriving: while it is cut no message is
/// deleted before its record's batch merged (deleted messages never outnumber merged records), and the
/// orders sent during the cut cannot merge at all (their batches cannot register); once the path is back both
/// workers finish by themselves: every order exactly once, RAW complete, queue drained.
#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_outage_acknowledges_nothing_early() {
    needs!("dynamodb_outage_acknowledges_nothing_early": Postgres, Aws, Plugins);
    let _heavy = HEAVY.write().await;
    let aws = aws().await;
    let db = TestDb::new().await;
    let (queue, bucket) = (aws.queue(5).await, aws.bucket().await);
    let (n, half) = (100usize, 50usize);
    let lines = orders(n, 5);
    assert_eq!(aws.send(&queue, &lines[..half]).await.len(), half);
    let target = aws_endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let front = TcpFront::with_mode(&target, FrontMode::Forward).await;
    let dir = tempfile::tempdir().unwrap();
    let table = unique("weir-outage");
    let config = write_config(
        dir.path(),
        &Setup {
            source: "visibility_timeout_secs = 5\nreceivers = 1",
            batch: "max_records = 5\nmax_wait_ms = 200",
            retry: "max_attempts = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000",
            ..setup(&queue, &bucket, &db.url)
        },
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[aws]\n",
        "[aws]\nread_timeout_secs = 3\nconnect_timeout_secs = 2\nattempt_timeout_secs = 10\n",
    ) + &format!(
        "\n[sink.group_commit]\nenabled = true\ninterval_ms = 200\nlease_secs = 2\n\
             [sink.group_commit.staging]\nkind = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"weir-staged\"\n\
             [coordinator]\nkind = \"dynamodb\"\ntable = \"{table}\"\nendpoint_url = \"http://{}\"\n",
        front.addr
    );
    std::fs::write(&config, text).unwrap();
    let workers = [
        start_weir(&["run", "-c", config.to_str().unwrap()], &[]),
        start_weir(&["run", "-c", config.to_str().unwrap()], &[]),
    ];
    db.wait_for_batches(1).await;
    front.set_mode(FrontMode::BlackHole);
    // Sent after the cut: these orders cannot be registered, so cannot merge, until the path is back.
    assert_eq!(aws.send(&queue, &lines[half..]).await.len(), n - half);
    let merged_records = || async {
        db.count("SELECT coalesce(sum(records_in), 0) FROM weir_batches")
            .await
    };
    // 30 s, fifteen loader leases: every lease held at the cut runs out while it lasts, and messages come
    // back visible several times over (visibility 5 s).
    let cut_until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < cut_until {
        let (visible, in_flight) = aws.depth(&queue).await;
        let deleted = n as i64 - visible - in_flight;
        let merged = merged_records().await;
        assert!(
            deleted <= merged,
            "{deleted} messages deleted, only {merged} records merged"
        );
        assert!(
            merged <= half as i64,
            "{merged} records merged during the cut"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    front.set_mode(FrontMode::Forward);
    for worker in workers {
        let out = worker.wait(Duration::from_secs(240)).await;
        assert!(out.status.success(), "{}", show(&out));
    }
    assert_every_order_once(&aws, &db, (&queue, &bucket), n, 5).await;
    let batches = coordinator_items(&table, "batch#").await;
    assert!(batches.iter().all(|b| b["fate"] == "merged"), "{batches:?}");
}

/// `/metrics` while messages wait in flight: the loader is held before its first merge (so no message may be
/// deleted yet), and the worker reports the messages it holds and how long the oldest has been in flight;
/// let go, the run loads everything and deletes every message.
#[tokio::test]
async fn metrics_show_the_oldest_message_in_flight() {
    needs!("metrics_show_the_oldest_message_in_flight": Postgres, Aws, Plugins);
    let _light = HEAVY.read().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (aws, db, queue, _, config) = grouped_quickstart(dir.path(), |_| {
        format!(
            "\n[sink.group_commit]\nenabled = true\ninterval_ms = 200\nlease_secs = 30\n\
             [worker]\nadmin_bind = \"127.0.0.1:{port}\"\n"
        )
    })
    .await;
    let gate = dir.path().join("gate");
    let stall = format!("merge:1:{}", gate.display());
    let worker = start_weir(
        &["run", "-c", config.to_str().unwrap()],
        &[("WEIR_PAUSE_BEFORE", &stall)],
    );
    wait_for_stall(&gate).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Held messages are counted at each visibility heartbeat: wait for one that sees a second of age.
    let gauge = |body: &str, name: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let body = loop {
        let (_, body) = admin_get(port, "/metrics");
        if gauge(&body, "weir_sqs_oldest_in_flight_seconds") >= 1.0 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no aged message in flight: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(gauge(&body, "weir_sqs_messages_in_flight") >= 1.0, "{body}");
    assert!(
        body.contains(&format!("queue=\"{}\"", queue.rsplit('/').next().unwrap())),
        "{body}"
    );
    std::fs::write(&gate, "").unwrap();
    let out = worker.wait(Duration::from_secs(120)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_quickstart_rows(&db).await;
    assert_eq!(aws.depth(&queue).await, (0, 0));
}
