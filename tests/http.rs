//! The HTTP ingest source through the real `weir serve` binary on loopback: `examples/http-ingest/weir.toml`
//! (RAW in a local directory, the orders rule, SQLite), clients speaking HTTP/1.1 over plain TCP.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The example configuration in `dir` (plugin path made absolute) with `extra` lines added to `[source]`.
fn config_in(dir: &Path, source_extra: &str, batch: &str) -> PathBuf {
    let example = std::fs::read_to_string(root().join("examples/http-ingest/weir.toml")).unwrap();
    // Settings given in `source_extra` replace the example's own.
    let keys: Vec<&str> = source_extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let text = example
        .lines()
        .filter(|l| {
            !keys
                .iter()
                .any(|k| l.split_once('=').is_some_and(|(lk, _)| lk.trim() == *k))
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(
            "../../plugins/dist/orders.wasm",
            &plugin("orders").display().to_string(),
        )
        .replace(
            "node = \"${WEIR_HTTP_NODE:-local}\"",
            &format!("node = \"${{WEIR_HTTP_NODE:-local}}\"\n{source_extra}"),
        );
    let text = match batch {
        "" => text,
        b => {
            let (head, _) = text.split_once("[batch]").unwrap();
            format!("{head}[batch]\n{b}\n")
        }
    };
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `weir serve` on a free port; returns once it accepts connections.
async fn serve(config: &Path) -> (Background, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["serve", "-c", config.to_str().unwrap()])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("WEIR_LOG", "info");
    let mut server = Background::spawn(cmd);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if !server.is_running() {
            let out = server.wait(Duration::from_secs(10)).await;
            panic!("weir serve exited before listening: {}", show(&out));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "weir serve is not listening after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, port)
}

/// Asks the server to stop (SIGTERM) and waits for it.
async fn stop(server: Background) -> std::process::Output {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    server.wait(Duration::from_secs(120)).await
}

/// A response: status, headers (names lowercased), body as JSON.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: serde_json::Value,
}

/// `POST path` with `headers` and `body` on a connection of its own.
async fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&request_bytes("POST", path, headers, body))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(180), s.read_to_end(&mut bytes))
        .await
        .expect("an answer within 180 s")
        .unwrap();
    parse(&bytes)
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn parse(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status: status.parse().unwrap(),
        headers,
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The orders lines `first..first + n` of [`orders_input`].
fn orders(all: &str, first: usize, n: usize) -> String {
    all.lines()
        .skip(first)
        .take(n)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every RAW record id of `dir` → how many copies RAW holds.
fn raw_ids(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in raw_records(dir) {
        *out.entry(line.id).or_default() += 1;
    }
    out
}

/// Eight clients send 2,000 orders at once in 80 requests (lines and JSON arrays, some gzipped): every
/// request is answered 200, and at that moment its records are already in SQLite and in RAW (checked before
/// the server stops); SIGTERM then ends the server cleanly with every record accounted for once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_are_answered_after_their_commit() {
    needs!("concurrent_clients_are_answered_after_their_commit": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", "");
    let (server, port) = serve(&config).await;
    let (clients, requests, per) = (8usize, 10usize, 25usize);
    let (all, expected) = orders_input(clients * requests * per);
    let all = std::sync::Arc::new(all);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let all = all.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for r in 0..requests {
                let first = (c * requests + r) * per;
                let lines = orders(&all, first, per);
                let id = format!("client{c}-req{r}");
                let body = if r % 2 == 1 {
                    let elements: Vec<&str> = lines.lines().collect();
                    format!("[{}]", elements.join(",")).into_bytes()
                } else {
                    lines.into_bytes()
                };
                let reply = if r % 3 == 0 {
                    post(
                        port,
                        "/v1/records",
                        &[("x-request-id", &id), ("content-encoding", "gzip")],
                        &gzip(&body),
                    )
                    .await
                } else {
                    post(port, "/v1/records", &[("x-request-id", &id)], &body).await
                };
                answered.push((id, first, reply));
            }
            answered
        }));
    }
    let db = dir.path().join("out/weir.db");
    let mut answered = 0usize;
    // As each client's last answer arrives, everything it was answered for is already committed.
    for t in tasks {
        let replies = t.await.unwrap();
        for (id, first, reply) in &replies {
            assert_eq!(reply.status, 200, "{id}: {reply:?}");
            assert_eq!(reply.body["request_id"], id.as_str());
            assert_eq!(reply.body["records"], per);
            answered += per;
            let last = format!("o-{:05}", first + per - 1);
            assert_eq!(
                count(
                    &db,
                    &format!("SELECT count(*) FROM orders WHERE order_id = '{last}'")
                )
                .await,
                1,
                "{id} was answered before its last order committed"
            );
        }
    }
    assert_eq!(answered, expected.len());
    assert_eq!(
        count(&db, "SELECT count(*) FROM orders").await,
        expected.len() as i64
    );
    let raw = raw_ids(&dir.path().join("out/raw"));
    assert_eq!(raw.len(), expected.len(), "every record in RAW");
    assert!(raw.values().all(|n| *n == 1), "no record archived twice");
    assert!(raw.contains_key("http/local/client3-req7/25"));
    let lineage = query(
        &db,
        "SELECT _weir_record_id FROM orders WHERE order_id = 'o-00000'",
    )
    .await;
    assert_eq!(lineage, vec![vec!["http/local/client0-req0/1".to_string()]]);

    let out = stop(server).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        count(&db, "SELECT coalesce(sum(records_in), 0) FROM weir_batches").await,
        expected.len() as i64
    );
}

/// A client whose connection drops before the answer (it sent the whole request, then went away) retries
/// with the same `X-Request-Id`: answered 200, and the final state holds each order once with the same record
/// ids, whether the retry found the first attempt in flight or already committed; a third send changes
/// nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_dropped_response_is_idempotent() {
    needs!("a_retry_after_a_dropped_response_is_idempotent": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", "");
    let (server, port) = serve(&config).await;
    let (all, expected) = orders_input(30);
    let headers = [("x-request-id", "retry-1")];
    {
        // The whole request, then the connection dropped before any answer.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&request_bytes(
            "POST",
            "/v1/records",
            &headers,
            all.as_bytes(),
        ))
        .await
        .unwrap();
        s.shutdown().await.unwrap();
    }
    for attempt in 2..=3 {
        let reply = post(port, "/v1/records", &headers, all.as_bytes()).await;
        assert_eq!(reply.status, 200, "attempt {attempt}: {reply:?}");
        assert_eq!(reply.body["records"], 30);
    }
    let db = dir.path().join("out/weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 30);
    let ids = query(&db, "SELECT DISTINCT _weir_record_id FROM orders").await;
    assert_eq!(ids.len(), 30);
    assert!(
        ids.iter().all(|r| r[0].starts_with("http/local/retry-1/")),
        "{ids:?}"
    );
    let raw = raw_ids(&dir.path().join("out/raw"));
    let want: Vec<String> = (1..=30)
        .map(|n| format!("http/local/retry-1/{n}"))
        .collect();
    assert_eq!(raw.len(), 30);
    for id in &want {
        assert!(raw.contains_key(id), "{id} is in RAW");
    }
    let out = stop(server).await;
    assert!(out.status.success(), "{}", show(&out));
    let totals = query(&db, "SELECT order_id, total FROM orders ORDER BY order_id").await;
    assert_eq!(totals.len(), expected.len());
    for row in totals {
        assert_eq!(
            row[1].parse::<f64>().unwrap(),
            expected[&row[0]].parse::<f64>().unwrap(),
            "{row:?}"
        );
    }
}

/// What the server refuses, and that nothing of a refused request is kept: a wrong or missing credential
/// (401, on both routes, Firehose's answer echoing its `requestId` with an `errorMessage`), a body over
/// `max_body_bytes` (413, also when only its gzip inflates past it), more records than `max_pending_records`
/// (413), a malformed body (400), a wrong method (405) or route (404). A Firehose delivery with the right
/// access key, gzipped, with common attributes, is answered in Firehose's shape once committed.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_keep_nothing_and_firehose_delivers() {
    needs!("refusals_keep_nothing_and_firehose_delivers": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        "auth = \"s3cret\"\nmax_pending_records = 40\nmax_body_bytes = 8192",
        "",
    );
    let (server, port) = serve(&config).await;
    let (all, _) = orders_input(60);
    let three = orders(&all, 0, 3);
    let bearer = [("authorization", "Bearer s3cret")];

    let r = post(port, "/v1/records", &[], three.as_bytes()).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = post(
        port,
        "/v1/records",
        &[("authorization", "Bearer s3creT")],
        three.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("Bearer"));

    let big = orders(&all, 0, 40);
    assert!(big.len() > 8192);
    let r = post(port, "/v1/records", &bearer, big.as_bytes()).await;
    assert_eq!(r.status, 413, "{r:?}");
    let inflating = gzip(&vec![b' '; 100_000]);
    assert!(inflating.len() < 8192);
    let r = post(
        port,
        "/v1/records",
        &[bearer[0], ("content-encoding", "gzip")],
        &inflating,
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    let many = "{}\n".repeat(41);
    let r = post(port, "/v1/records", &bearer, many.as_bytes()).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("max_pending_records")
    );
    let r = post(port, "/v1/records", &bearer, b"[1, 2").await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = post(
        port,
        "/v1/records",
        &[bearer[0], ("x-request-id", "no/slashes")],
        three.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = post(
        port,
        "/v1/records",
        &[bearer[0], ("content-encoding", "br")],
        three.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 415, "{r:?}");
    let r = post(port, "/nope", &bearer, b"").await;
    assert_eq!(r.status, 404, "{r:?}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&request_bytes("GET", "/v1/records", &bearer, b""))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(parse(&bytes).status, 405);

    let request_id = "ed4acda5-034f-9f42-bba1-f29aea6d7d8f";
    let delivery = serde_json::json!({
        "requestId": request_id,
        "timestamp": 1_578_090_901_599i64,
        "records": three.lines().map(|l| serde_json::json!({
            "data": base64::engine::general_purpose::STANDARD.encode(l)
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let firehose_headers = |key: &'static str| {
        vec![
            ("x-amz-firehose-protocol-version", "1.0"),
            ("x-amz-firehose-request-id", request_id),
            ("x-amz-firehose-access-key", key),
            (
                "x-amz-firehose-source-arn",
                "arn:aws:firehose:eu-west-1:123456789012:deliverystream/orders",
            ),
            (
                "x-amz-firehose-common-attributes",
                r#"{"commonAttributes":{"team":"checkout"}}"#,
            ),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]
    };
    let r = post(
        port,
        "/v1/firehose",
        &firehose_headers("wrong"),
        &gzip(delivery.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body["requestId"], request_id);
    assert!(
        r.body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("access key")
    );
    assert!(r.body["timestamp"].as_i64().is_some());

    let db = dir.path().join("out/weir.db");
    let r = post(
        port,
        "/v1/firehose",
        &firehose_headers("s3cret"),
        &gzip(delivery.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.body["requestId"], request_id);
    assert!(r.body["timestamp"].as_i64().is_some());
    assert!(r.body.get("errorMessage").is_none());
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 3);
    let raw = raw_ids(&dir.path().join("out/raw"));
    assert_eq!(
        raw.keys().cloned().collect::<Vec<_>>(),
        (1..=3)
            .map(|n| format!("http/local/{request_id}/{n}"))
            .collect::<Vec<_>>(),
        "only the delivered records are in RAW"
    );
    let records = raw_records(&dir.path().join("out/raw"));
    let first = records
        .iter()
        .find(|l| l.id == format!("http/local/{request_id}/1"))
        .unwrap();
    assert_eq!(first.arrived_at_ms, 1_578_090_901_599);
    assert_eq!(first.payload, three.lines().next().unwrap());
    assert!(
        first
            .attributes
            .contains(&("team".to_string(), "checkout".to_string()))
    );
    let out = stop(server).await;
    assert!(out.status.success(), "{}", show(&out));
}

/// A full pipeline answers 429 with `Retry-After` and keeps nothing of that request; a shutdown then drains
/// what was taken and answers it 200. By construction: `max_pending_records = 5` and batches that only close
/// at shutdown (`max_wait_ms` of ten minutes), so of two concurrent requests of 5 and 1 records, whichever is
/// taken first holds its records in flight until SIGTERM and the other cannot fit.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_pipeline_answers_429_and_a_shutdown_drains_what_it_took() {
    needs!("a_full_pipeline_answers_429_and_a_shutdown_drains_what_it_took": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        "max_pending_records = 5",
        "max_records = 100\nmax_bytes = 4_000_000\nmax_wait_ms = 600_000",
    );
    let (server, port) = serve(&config).await;
    let (all, _) = orders_input(6);
    let five = orders(&all, 0, 5);
    let one = orders(&all, 5, 1);
    let mut a = tokio::spawn(async move {
        post(
            port,
            "/v1/records",
            &[("x-request-id", "five")],
            five.as_bytes(),
        )
        .await
    });
    let mut b = tokio::spawn(async move {
        post(
            port,
            "/v1/records",
            &[("x-request-id", "one")],
            one.as_bytes(),
        )
        .await
    });
    let (refused, taken, taken_records) = tokio::select! {
        r = &mut a => (r.unwrap(), b, 1),
        r = &mut b => (r.unwrap(), a, 5),
    };
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        !taken.is_finished(),
        "the request taken waits for its commit"
    );
    let out = stop(server).await;
    assert!(out.status.success(), "{}", show(&out));
    let taken = taken.await.unwrap();
    assert_eq!(taken.status, 200, "{taken:?}");
    assert_eq!(taken.body["records"], taken_records);
    let db = dir.path().join("out/weir.db");
    assert_eq!(
        count(&db, "SELECT count(*) FROM orders").await,
        taken_records as i64
    );
    assert_eq!(
        raw_ids(&dir.path().join("out/raw")).len(),
        taken_records,
        "nothing of the refused request in RAW"
    );
}

/// `weir serve` needs an HTTP source, and says so.
#[test]
fn serve_needs_an_http_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let out = weir(&["serve", "-c", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kind = \\\"http\\\"")
            || String::from_utf8_lossy(&out.stderr).contains("kind = \"http\""),
        "{}",
        show(&out)
    );
}

/// A forwarding tier: `weir serve` on the workers' own configuration (an SQS `[source]`, HTTP settings in
/// `[serve]`) puts each request's records into the FIFO queue before answering 200 — they are in the queue
/// when the answer arrives — and a retried request is kept once (deduplicated by its record ids); the worker
/// then drains the queue into SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn a_forwarding_tier_puts_into_the_queue_before_answering() {
    needs!("a_forwarding_tier_puts_into_the_queue_before_answering": Aws, Plugins);
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let sqs = aws_sdk_sqs::Client::new(&aws_sdk().await);
    let queue = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique("weir-fwd")))
        .attributes(A::FifoQueue, "true")
        .send()
        .await
        .expect("create queue (is the AWS test server running? scripts/services.sh)")
        .queue_url
        .unwrap();
    let depth = || async {
        let out = sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(A::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        out.attributes().unwrap()[&A::ApproximateNumberOfMessages]
            .parse::<i64>()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[source]\nkind = \"file\"\npath = \"orders.jsonl\"",
        &format!(
            "[source]\nkind = \"sqs\"\nqueue_url = \"{queue}\"\nwait_secs = 1\nidle_exit_secs = 3\n\n\
             [serve]\nauth = \"s3cret\"\nnode = \"edge-1\"\n\n[aws]\nendpoint_url = \"{}\"",
            aws_endpoint()
        ),
    );
    assert!(text.contains("kind = \"sqs\""));
    std::fs::write(&config, text).unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["serve", "-c", config.to_str().unwrap()])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("WEIR_LOG", "info")
        .envs(AWS_TEST_ENV);
    let server = Background::spawn(cmd);
    wait_listening(port).await;
    let (all, _) = orders_input(20);
    let headers = [
        ("authorization", "Bearer s3cret"),
        ("x-request-id", "fwd-1"),
    ];
    for attempt in 1..=2 {
        let r = post(port, "/v1/records", &headers, all.as_bytes()).await;
        assert_eq!(r.status, 200, "attempt {attempt}: {r:?}");
        assert_eq!(r.body["records"], 20);
        assert_eq!(
            depth().await,
            20,
            "attempt {attempt}: in the queue when answered, once"
        );
    }
    let r = post(port, "/v1/records", &[headers[1]], all.as_bytes()).await;
    assert_eq!(r.status, 401, "{r:?}");
    let out = stop(server).await;
    assert!(out.status.success(), "{}", show(&out));

    let out = weir_with_aws(&["run", "-c", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let db = dir.path().join("out/weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 20);
    assert_eq!(depth().await, 0);
}

/// Waits (at most 120 s) until something accepts connections on `port`.
async fn wait_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port} after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn weir_with_aws(args: &[&str]) -> std::process::Output {
    let mut env: Vec<(&str, &str)> = AWS_TEST_ENV.to_vec();
    env.push(("WEIR_LOG", "info"));
    weir(args, &env)
}
