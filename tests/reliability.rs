//! Reliability: hostile records through the real `weir` binary into real PostgreSQL. Each one is either
//! dead-lettered with a reason or stored verbatim as data; the RAW copy keeps every byte; nothing reaches SQL
//! but bind parameters and declared identifiers.

mod common;

use common::*;

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

/// Every hostile record is dead-lettered with a reason naming what is wrong, or stored verbatim; RAW holds
/// every byte; the worker exits 0 and the weir tables are intact.
#[tokio::test]
async fn hostile_records_are_dead_lettered_or_stored_verbatim() {
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
