//! S3 objects as a source, through the real `weir` binary against the local server speaking the S3 and SQS
//! protocols: notifications in S3's own shape, wrapped in SNS and from EventBridge; gzip and CSV objects; a
//! redelivered notification; a message that is no notification; a crash in the middle of a large object; a
//! one-off listing. RAW in a local directory, the orders rule, SQLite.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

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
    async fn queue(&self) -> String {
        self.sqs
            .create_queue()
            .queue_name(unique("weir-s3-events"))
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "5",
            )
            .send()
            .await
            .expect("create queue (is the AWS test server running? scripts/services.sh)")
            .queue_url
            .unwrap()
    }

    async fn bucket(&self) -> String {
        let name = unique("weir-landing");
        self.s3.create_bucket().bucket(&name).send().await.unwrap();
        name
    }

    /// Uploads `body`; returns its ETag without quotes.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> String {
        let out = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
        out.e_tag().unwrap().trim_matches('"').to_string()
    }

    async fn send(&self, queue: &str, body: &str) {
        self.sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// Waits (at most 60 s) until a message of the queue is visible again.
    async fn wait_visible(&self, queue: &str) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        for _ in 0..600 {
            let out = self
                .sqs
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(A::ApproximateNumberOfMessages)
                .send()
                .await
                .unwrap();
            let visible = out
                .attributes()
                .and_then(|a| a.get(&A::ApproximateNumberOfMessages))
                .map(|v| v.parse::<i64>().unwrap())
                .unwrap_or(0);
            if visible > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no message of {queue} became visible again");
    }

    /// Messages left in the queue, visible or not.
    async fn left(&self, queue: &str) -> i64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = out.attributes().unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .into_iter()
        .map(|k| a.get(&k).map(|v| v.parse::<i64>().unwrap()).unwrap_or(0))
        .sum()
    }
}

/// S3's own notification of one created object (the key URL-encoded, as S3 sends it).
fn s3_event(bucket: &str, key: &str, etag: &str) -> String {
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b' ' => "+".to_string(),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'/' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect();
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-12-06T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "weir",
               "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": encoded, "size": 1, "eTag": etag, "sequencer": "0055AED6DCD90281E5"}}
    }]})
    .to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `[source]` lines and batch size; RAW, rule, SQLite and tables from the quickstart, in `dir`.
fn config(dir: &Path, source: &str, max_records: usize) -> PathBuf {
    let quickstart = std::fs::read_to_string(root().join("examples/quickstart/weir.toml")).unwrap();
    let tables_at = quickstart.find("[[sink.tables]]").unwrap();
    let tables_end = quickstart.find("[batch]").unwrap();
    let text = format!(
        r#"[source]
kind = "s3"
{source}

[raw]
kind = "local"
dir = "out/raw"

[rule]
plugin = "{plugin}"

[sink]
kind = "sqlite"
path = "out/weir.db"

{tables}
[batch]
max_records = {max_records}
max_wait_ms = 200

[aws]
endpoint_url = "{endpoint}"
"#,
        plugin = plugin("orders").display(),
        tables = &quickstart[tables_at..tables_end],
        endpoint = aws_endpoint(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `weir run` to its end.
async fn run(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", config.to_str().unwrap()])
        .env("WEIR_LOG", "info")
        .envs(AWS_TEST_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Background::spawn(cmd).wait(Duration::from_secs(180)).await
}

/// Every RAW record: id → payload, and how many copies.
fn raw_of(dir: &Path) -> std::collections::BTreeMap<String, (String, usize)> {
    let mut out = std::collections::BTreeMap::new();
    for line in raw_records(&dir.join("out/raw")) {
        out.entry(line.id).or_insert((line.payload, 0usize)).1 += 1;
    }
    out
}

/// Three objects announced three ways (S3's own notification, wrapped in SNS, EventBridge), plain, gzip and
/// CSV, a key with a space and a non-ASCII letter; a test event; one notification delivered twice; a message
/// that is no notification; an object that cannot be read. Every record is loaded once with its
/// `s3/{bucket}/{key}/{etag}/{n}` id, the redelivered notification reads nothing again (its object's
/// checkpoint is at its end), the unreadable object does not stop the worker, every other notification is
/// deleted, and only the stray message and the unreadable object's notification stay in the queue.
#[tokio::test(flavor = "multi_thread")]
async fn notifications_load_each_object_once_and_are_deleted_after_commit() {
    needs!("notifications_load_each_object_once_and_are_deleted_after_commit": Aws, Plugins);
    let aws = aws().await;
    let (queue, bucket) = (aws.queue().await, aws.bucket().await);
    let (orders, _) = orders_input(50);
    let lines: Vec<&str> = orders.lines().collect();
    let plain = lines[..30].join("\n") + "\n\n";
    let zipped = lines[30..].join("\r\n");
    let csv = "order_id,currency,note\no-1,EUR,\"two\nlines, quoted\"\no-2,USD,plain\n";
    let a = aws.put(&bucket, "in/a.jsonl", plain.into_bytes()).await;
    let b_key = "in/day 2/bé.jsonl.gz";
    let b = aws.put(&bucket, b_key, gzip(zipped.as_bytes())).await;
    let c = aws.put(&bucket, "in/c.csv", csv.as_bytes().to_vec()).await;

    aws.send(&queue, &s3_event(&bucket, "in/a.jsonl", &a)).await;
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:landing", "Message": s3_event(&bucket, b_key, &b)});
    aws.send(&queue, &sns.to_string()).await;
    let eventbridge = serde_json::json!({"version": "0", "id": "f5f1e65c", "detail-type": "Object Created",
        "source": "aws.s3", "account": "123456789012", "time": "2026-12-06T10:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{bucket}")],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": "in/c.csv", "size": csv.len(), "etag": c},
                   "request-id": "57H08PA84AB1JZW0", "requester": "123456789012", "reason": "PutObject"}});
    aws.send(&queue, &eventbridge.to_string()).await;
    aws.send(
        &queue,
        &serde_json::json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket})
            .to_string(),
    )
    .await;
    aws.send(&queue, "this is not a notification").await;
    aws.send(&queue, &s3_event(&bucket, "in/a.jsonl", &a)).await;
    // An object that cannot be read (gzip by its name, not by its bytes): reported, its notification left.
    let bad = aws
        .put(&bucket, "in/bad.jsonl.gz", b"\x1f\x8b not gzip".to_vec())
        .await;
    aws.send(&queue, &s3_event(&bucket, "in/bad.jsonl.gz", &bad))
        .await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("queue_url = \"{queue}\"\nwait_secs = 1\nidle_exit_secs = 3\nformat = \"lines\""),
        7,
    );
    let out = run(&cfg, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("not an S3 event notification"),
        "{}",
        show(&out)
    );
    assert!(log.contains("could not be read"), "{}", show(&out));

    let db = dir.path().join("out/weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 50);
    // Read as lines, the CSV object's four lines are no orders: dead-lettered, with their reason.
    assert_eq!(
        count(&db, "SELECT count(*) FROM weir_dead_letters").await,
        4
    );
    assert_eq!(
        count(&db, "SELECT sum(records_in) FROM weir_batches").await,
        54,
        "the redelivered notification read nothing again"
    );
    let raw = raw_of(dir.path());
    assert_eq!(raw.len(), 54);
    assert!(raw.values().all(|(_, copies)| *copies == 1));
    assert_eq!(
        raw[&format!("s3/{bucket}/in/a.jsonl/{a}/30")].0,
        lines[29],
        "a plain object's line, exactly"
    );
    assert_eq!(
        raw[&format!("s3/{bucket}/{b_key}/{b}/20")].0,
        lines[49],
        "a gzip object's last line, its CRLF line ends removed"
    );
    let lineage = query(
        &db,
        "SELECT _weir_record_id FROM orders WHERE order_id = 'o-00031'",
    )
    .await;
    assert_eq!(lineage[0][0], format!("s3/{bucket}/{b_key}/{b}/2"));
    // Left in the queue: the stray message and the unreadable object's notification (both go to the queue's
    // dead-letter queue by its redrive policy).
    assert_eq!(aws.left(&queue).await, 2);

    // The CSV object as a format of its own: one record per row, a JSON object of the header's names.
    let aws2 = aws.queue().await;
    aws.send(&aws2, &eventbridge.to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("queue_url = \"{aws2}\"\nwait_secs = 1\nidle_exit_secs = 3\nformat = \"csv\""),
        7,
    );
    let out = run(&cfg, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    let raw = raw_of(dir.path());
    assert_eq!(raw.len(), 2);
    let first: serde_json::Value =
        serde_json::from_str(&raw[&format!("s3/{bucket}/in/c.csv/{c}/1")].0).unwrap();
    assert_eq!(
        first,
        serde_json::json!({"order_id": "o-1", "currency": "EUR", "note": "two\nlines, quoted"})
    );
    let db = dir.path().join("out/weir.db");
    assert_eq!(
        count(&db, "SELECT sum(records_in) FROM weir_batches").await,
        2,
        "every row accounted for (emitted or dead-lettered)"
    );
    assert_eq!(aws.left(&aws2).await, 0);
}

/// A crash in the middle of a large object (after the 4th of its batches committed, by `WEIR_CRASH_AFTER`):
/// the notification comes back, the object resumes after its last committed batch — a plain object by a
/// ranged GET from the checkpoint's offset, a gzip one by reading again and skipping — and every order is
/// loaded exactly once, read exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_object_resumes_from_its_checkpoint() {
    needs!("a_crash_mid_object_resumes_from_its_checkpoint": Aws, Plugins);
    let aws = aws().await;
    let bucket = aws.bucket().await;
    let n = 3000;
    let (orders, _) = orders_input(n);
    for (key, body) in [
        ("big/plain.jsonl", orders.clone().into_bytes()),
        ("big/zipped.jsonl.gz", gzip(orders.as_bytes())),
    ] {
        let queue = aws.queue().await;
        let etag = aws.put(&bucket, key, body).await;
        aws.send(&queue, &s3_event(&bucket, key, &etag)).await;
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB ranges: a 700 KB object takes several GETs, and the crash lands between two of them.
        let cfg = config(
            dir.path(),
            &format!(
                "queue_url = \"{queue}\"\nwait_secs = 1\nidle_exit_secs = 3\nvisibility_timeout_secs = 2\nrange_bytes = 65536"
            ),
            250,
        );
        let crashed = run(&cfg, &[("WEIR_CRASH_AFTER", "commit:4")]).await;
        assert!(!crashed.status.success(), "{key}: {}", show(&crashed));
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains("WEIR_CRASH_AFTER"),
            "{key}: {}",
            show(&crashed)
        );
        let db = dir.path().join("out/weir.db");
        let before = count(&db, "SELECT count(*) FROM orders").await;
        assert!(
            before > 0 && before < n as i64,
            "{key}: {before} orders committed before the crash"
        );
        // The notification comes back once its visibility (2 s, no longer extended) has run out.
        aws.wait_visible(&queue).await;
        let out = run(&cfg, &[]).await;
        assert!(out.status.success(), "{key}: {}", show(&out));
        assert_eq!(count(&db, "SELECT count(*) FROM orders").await, n as i64);
        assert_eq!(
            count(&db, "SELECT sum(records_in) FROM weir_batches").await,
            n as i64,
            "{key}: the committed part was not read again"
        );
        let raw = raw_of(dir.path());
        assert_eq!(raw.len(), n, "{key}");
        assert!(raw.values().all(|(_, copies)| *copies == 1), "{key}");
        assert_eq!(aws.left(&queue).await, 0, "{key}: the notification deleted");
    }
}

/// Without a queue, `bucket` and `prefix` list the objects once: the run ends by itself after the last one,
/// objects outside the prefix are not read, and a second run reads nothing again. With `format = "whole"`
/// each object is one record.
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_reads_every_object_under_the_prefix_once() {
    needs!("a_listing_reads_every_object_under_the_prefix_once": Aws, Plugins);
    let aws = aws().await;
    let bucket = aws.bucket().await;
    let (orders, _) = orders_input(40);
    let lines: Vec<&str> = orders.lines().collect();
    for (i, part) in lines.chunks(10).enumerate() {
        aws.put(
            &bucket,
            &format!("in/part-{i}.jsonl"),
            part.join("\n").into_bytes(),
        )
        .await;
    }
    aws.put(&bucket, "other/x.jsonl", lines[0].as_bytes().to_vec())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("bucket = \"{bucket}\"\nprefix = \"in/\""),
        6,
    );
    for round in 0..2 {
        let out = run(&cfg, &[]).await;
        assert!(out.status.success(), "round {round}: {}", show(&out));
        let db = dir.path().join("out/weir.db");
        assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 40);
        assert_eq!(
            count(&db, "SELECT sum(records_in) FROM weir_batches").await,
            40,
            "round {round}"
        );
    }
    assert!(
        raw_of(dir.path())
            .keys()
            .all(|id| id.starts_with(&format!("s3/{bucket}/in/part-")))
    );

    // `format = "whole"`: each object is one record, its bytes exactly (a pretty-printed JSON document, plain
    // and gzipped).
    let doc =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(lines[0]).unwrap())
            .unwrap();
    aws.put(&bucket, "whole/doc.json", doc.clone().into_bytes())
        .await;
    aws.put(&bucket, "whole/doc.json.gz", gzip(doc.as_bytes()))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("bucket = \"{bucket}\"\nprefix = \"whole/\"\nformat = \"whole\""),
        6,
    );
    let out = run(&cfg, &[]).await;
    assert!(out.status.success(), "{}", show(&out));
    let raw = raw_of(dir.path());
    assert_eq!(raw.len(), 2, "{raw:?}");
    assert!(raw.values().all(|(payload, _)| *payload == doc), "{raw:?}");
    let db = dir.path().join("out/weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 1);
}
