//! The MongoDB RAW store against a server speaking the MongoDB wire protocol (`MONGODB_URI`; scripts/services.sh
//! starts mongoeco, and the same tests run against a real MongoDB): exact payload bytes, re-archiving changes
//! nothing, overlapping batches, and the quickstart with MongoDB RAW end to end.

mod common;

use std::time::Instant;

use common::*;
use mongodb::bson::{Document, doc};
use weir::raw::RawStore;
use weir::raw::mongo::MongoRaw;
use weir::record::Batch;
use weir::rules::SourceRecord;

fn uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

fn database() -> String {
    unique("weir_t").replace('-', "_")
}

/// A batch of records `first..=last` of partition `p`, with text and binary payloads.
fn batch(first: u64, last: u64) -> Batch {
    let positions: Vec<String> = (first..=last).map(|n| n.to_string()).collect();
    let records = (first..=last)
        .map(|n| SourceRecord {
            id: format!("mem/p/{n}"),
            partition_key: format!("k{n}"),
            arrived_at_ms: 1_795_256_970_000 + n as i64,
            attributes: vec![("line".into(), n.to_string())],
            payload: if n % 2 == 0 {
                format!("{{\"n\":{n},\"name\":\"ñandú\"}}").into_bytes()
            } else {
                vec![0xff, 0x00, n as u8, b'\n', b'"']
            },
        })
        .collect();
    Batch {
        id: Batch::make_id("mem", "p", &first.to_string(), &last.to_string()),
        source: "mem".into(),
        partition: "p".into(),
        prev_position: String::new(),
        ordered: true,
        positions,
        records,
        bytes: 0,
        started: Instant::now(),
        received_us: Vec::new(),
        fingerprint: None,
    }
}

async fn database_handle(db: &str) -> mongodb::Database {
    mongodb::Client::with_uri_str(uri())
        .await
        .unwrap()
        .database(db)
}

/// The documents of the test collection matching `filter`, by `_id`.
async fn docs(db: &str, filter: Document) -> Vec<Document> {
    weir::raw::mongo::find_all(&database_handle(db).await, "raw", filter, doc! { "_id": 1 })
        .await
        .unwrap()
}

async fn one(db: &str, id: &str) -> Document {
    let mut found = docs(db, doc! { "_id": id }).await;
    assert_eq!(found.len(), 1, "{id}");
    found.remove(0)
}

/// Documents hold the exact payload bytes (binary, plus text when UTF-8) and the source metadata; archiving the
/// same batch again, or a batch overlapping an archived one, changes nothing already stored.
#[tokio::test(flavor = "multi_thread")]
async fn exact_bytes_and_idempotent_archiving() {
    needs!("exact_bytes_and_idempotent_archiving": Mongo);
    let db = database();
    let store = MongoRaw::connect(&uri(), &db, "raw")
        .await
        .expect("MongoDB at MONGODB_URI (scripts/services.sh)");
    let b = batch(1, 6);
    let refs = store.put(&b).await.unwrap();
    assert_eq!(refs[0], format!("{db}.raw/mem/p/1-6#mem/p/1"));
    let before = docs(&db, doc! {}).await;
    assert_eq!(before.len(), 6);
    // Again, and a later batch that overlaps it (a replay grouped differently).
    store.put(&b).await.unwrap();
    store.put(&batch(4, 9)).await.unwrap();
    assert_eq!(docs(&db, doc! {}).await.len(), 9);
    for d in &before {
        let now = one(&db, d.get_str("_id").unwrap()).await;
        assert_eq!(&now, d, "an archived document changed");
    }
    let d = one(&db, "mem/p/3").await;
    assert_eq!(
        d.get_binary_generic("payload").unwrap(),
        &vec![0xff, 0x00, 3, b'\n', b'"']
    );
    assert!(d.get("payload_text").is_none());
    assert_eq!(d.get_str("position").unwrap(), "3");
    assert_eq!(d.get_str("batch_id").unwrap(), "mem/p/1-6");
    let d = one(&db, "mem/p/4").await;
    assert_eq!(
        d.get_str("payload_text").unwrap(),
        "{\"n\":4,\"name\":\"ñandú\"}"
    );

    // Reading back gives the records in order with their exact bytes.
    let lines = store.get(&format!("{db}.raw/mem/p/1-6")).await.unwrap();
    assert_eq!(lines.len(), 6);
    for (line, record) in lines.iter().zip(&b.records) {
        assert_eq!(line.id, record.id);
        assert_eq!(line.payload_bytes().unwrap(), record.payload);
        assert_eq!(line.attributes, record.attributes);
        assert_eq!(line.arrived_at_ms, record.arrived_at_ms);
    }
    let one = store.get(&refs[2]).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, "mem/p/3");
    let _ = database_handle(&db).await.drop().await;
}

/// The quickstart with RAW in MongoDB: one document per input line with its exact bytes, the same counts as
/// the local store, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_with_mongodb_raw() {
    needs!("quickstart_with_mongodb_raw": Mongo, Plugins);
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "kind = \"local\"\ndir = \"out/raw\"\nprefix = \"orders/\"",
        &format!(
            "kind = \"mongodb\"\nuri = \"{}\"\ndatabase = \"{db}\"",
            uri()
        ),
    );
    assert!(text.contains("kind = \"mongodb\""));
    std::fs::write(&config, text).unwrap();
    for _ in 0..2 {
        let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", show(&out));
    }
    assert_eq!(docs(&db, doc! {}).await.len(), 17);
    let input = std::fs::read(dir.path().join("orders.jsonl")).unwrap();
    for (i, line) in input
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
    {
        let d = one(&db, &format!("file/orders.jsonl/{}", i + 1)).await;
        assert_eq!(d.get_binary_generic("payload").unwrap(), &line.to_vec());
    }
    let sink = dir.path().join("out/weir.db");
    assert_eq!(count(&sink, "SELECT count(*) FROM orders").await, 5);
    assert_eq!(
        count(&sink, "SELECT sum(records_in) FROM weir_batches").await,
        17
    );
    let raw_ref = query(
        &sink,
        "SELECT raw_ref FROM weir_dead_letters ORDER BY record_id LIMIT 1",
    )
    .await;
    assert!(
        raw_ref[0][0].starts_with(&format!("{db}.raw/file/orders.jsonl/")),
        "{raw_ref:?}"
    );
    // Reconcile reads MongoDB RAW batch by batch and accounts for every record.
    let out = weir(
        &["reconcile", "-c", config.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &report["partitions"]["file/orders.jsonl"];
    assert_eq!(
        (p["raw_records"].as_u64(), p["emitted"].as_u64()),
        (Some(17), Some(5)),
        "{report:#}"
    );
    assert_eq!(report["objects"], 5);
    let _ = database_handle(&db).await.drop().await;
}

/// MongoDB stopped in the middle of a run (a front that cuts every connection for 10 s): RAW writes retry with
/// backoff, nothing commits without its RAW copy, and the worker finishes by itself once MongoDB is back —
/// every record archived and loaded exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_outage_mid_run_recovers() {
    needs!("mongodb_outage_mid_run_recovers": Postgres, Mongo, Plugins);
    let db = database();
    let pg = TestDb::new().await;
    let target = uri()
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_string();
    let front = TcpFront::start(&target).await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_postgres_in(dir.path(), &pg.url);
    let n = 3000;
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!(
            "{{\"order_id\": \"o-{i:05}\", \"placed_at\": \"2026-11-21T10:00:00Z\", \"currency\": \"EUR\", \"lines\": [{{\"sku\": \"A\", \"qty\": 1, \"unit_price\": \"1.00\"}}]}}\n"
        ));
    }
    std::fs::write(dir.path().join("orders.jsonl"), input).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "kind = \"local\"\ndir = \"out/raw\"\nprefix = \"orders/\"",
            &format!(
                "kind = \"mongodb\"\nuri = \"mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=2000\"\ndatabase = \"{db}\"",
                front.addr
            ),
        )
        .replace("max_records = 4", "max_records = 10");
    assert!(text.contains("kind = \"mongodb\""));
    std::fs::write(
        &config,
        format!("{text}\n[retry]\nmax_attempts = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\n"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", config.to_str().unwrap()])
        .env("WEIR_LOG", "warn");
    let child = Background::spawn(cmd);
    pg.wait_for_batches(5).await;
    front.set_up(false);
    let during = pg.count("SELECT sum(records_in) FROM weir_batches").await;
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    // Nothing commits without its RAW copy: at most the batches already past RAW when MongoDB went away.
    let after = pg.count("SELECT sum(records_in) FROM weir_batches").await;
    assert!(
        after - during <= 30,
        "{during} → {after} while MongoDB was down"
    );
    front.set_up(true);
    let out = child.wait(std::time::Duration::from_secs(300)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "{}",
        show(&out)
    );
    assert_eq!(pg.count("SELECT count(*) FROM orders").await, n as i64);
    assert_eq!(
        pg.count("SELECT sum(records_in) FROM weir_batches").await,
        n as i64
    );
    let count = database_handle(&db)
        .await
        .run_command(doc! { "count": "raw" })
        .await
        .unwrap();
    let archived = match count.get("n") {
        Some(mongodb::bson::Bson::Int32(v)) => *v as i64,
        Some(mongodb::bson::Bson::Int64(v)) => *v,
        other => panic!("count: {other:?}"),
    };
    assert_eq!(archived, n as i64, "every record archived once");
    // Read back through find + getMore (3 batches of at most 1,000): every record, each once.
    let ids: std::collections::BTreeSet<String> = docs(&db, doc! {})
        .await
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), n, "every document read back once");
    let _ = database_handle(&db).await.drop().await;
}
