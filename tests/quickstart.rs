//! The quickstart, end to end through the real binary: exact counts, reasons, RAW byte for byte, a
//! balanced ledger, and lineage from every final row back to its RAW record.

mod common;

use common::*;

/// The quickstart run loads exactly the expected rows and accounts for every record.
#[tokio::test]
async fn quickstart_end_to_end() {
    needs!("quickstart_end_to_end": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "records in: 17 in 5 batches",
        "order_lines: 12",
        "orders: 5",
        "dropped: 2",
        "2 × test order",
        "rejected: 10",
        "1 × table orders, column order_id: text is 52 UTF-8 bytes, longer than varchar(36)",
        "1 × currency: must be three letters",
    ] {
        assert!(
            stdout.contains(expected),
            "summary lacks {expected:?}:\n{stdout}"
        );
    }

    let db = dir.path().join("out/weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 5);
    assert_eq!(count(&db, "SELECT count(*) FROM order_lines").await, 12);
    let o1 = query(
        &db,
        "SELECT total, placed_at, currency, country, shipping, line_count FROM orders WHERE order_id = 'o-00000001'",
    )
    .await;
    assert_eq!(
        o1,
        vec![vec![
            "44.98".to_string(),
            "2026-11-21T10:01:30.000000Z".into(),
            "EUR".into(),
            "ES".into(),
            r#"{"country":"ES","city":"Madrid"}"#.into(),
            "2".into()
        ]]
    );
    let o2 = query(
        &db,
        "SELECT total FROM orders WHERE order_id = 'o-00000002'",
    )
    .await;
    assert_eq!(o2[0][0], "31.50");
    let o5 = query(
        &db,
        "SELECT country, shipping, customer_id FROM orders WHERE order_id = 'o-00000005'",
    )
    .await;
    assert_eq!(
        o5[0],
        vec!["NULL".to_string(), "NULL".into(), "c-ñandú".into()]
    );
    let lines13 = query(&db, "SELECT line_no, qty, amount FROM order_lines WHERE order_id = 'o-00000013' ORDER BY line_no").await;
    assert_eq!(lines13.len(), 5);
    assert_eq!(lines13[4], vec!["5".to_string(), "5".into(), "1.25".into()]);

    // Dead letters: one per rejected record, with stage and reason.
    let dl = query(
        &db,
        "SELECT record_id, stage, reason FROM weir_dead_letters ORDER BY record_id",
    )
    .await;
    assert_eq!(dl.len(), 10);
    let reason = |id: &str| {
        dl.iter()
            .find(|r| r[0] == format!("file/orders.jsonl/{id}"))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        reason("6")[1..],
        ["rule".to_string(), "order_id: missing or empty".into()]
    );
    assert_eq!(reason("14")[1], "validate");
    assert!(reason("17")[2].starts_with("payload: not valid UTF-8"));

    // Ledger: every batch balances, and the batches cover every record once.
    let ledger = query(
        &db,
        "SELECT records_in, emitted, dropped, rejected, drop_reasons FROM weir_batches",
    )
    .await;
    let mut total = 0;
    for b in &ledger {
        let n: Vec<i64> = b[..4].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(n[0], n[1] + n[2] + n[3], "unbalanced batch {b:?}");
        let reasons: std::collections::BTreeMap<String, i64> = serde_json::from_str(&b[4]).unwrap();
        assert_eq!(reasons.values().sum::<i64>(), n[2]);
        total += n[0];
    }
    assert_eq!(total, 17);
    assert_eq!(count(&db, "SELECT sum(dropped) FROM weir_batches").await, 2);

    // RAW: every input line, byte for byte, under its record id.
    let raw = raw_lines(&dir.path().join("out/raw"));
    let input = std::fs::read(dir.path().join("orders.jsonl")).unwrap();
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(raw.len(), lines.len());
    for (i, line) in lines.iter().enumerate() {
        let id = format!("file/orders.jsonl/{}", i + 1);
        let archived = raw
            .get(&id)
            .unwrap_or_else(|| panic!("{id} missing from RAW"));
        assert_eq!(
            archived.payload_bytes().unwrap(),
            *line,
            "{id} differs in RAW"
        );
    }
    assert_eq!(raw["file/orders.jsonl/17"].payload_encoding, "base64");

    // Lineage: every final row points at a RAW record and the rule version.
    let digest = weir::rules::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(plugin("orders")).unwrap(),
    ));
    for table in ["orders", "order_lines"] {
        for r in query(
            &db,
            &format!("SELECT _weir_record_id, _weir_rule_digest FROM {table}"),
        )
        .await
        {
            assert!(
                raw.contains_key(&r[0]),
                "{table} row from unknown record {}",
                r[0]
            );
            assert_eq!(r[1], digest);
        }
    }
}

/// `weir plugin test` shows each outcome, checked against a configuration's tables.
#[test]
fn plugin_test_command() {
    needs!("plugin_test_command": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let input = dir.path().join("orders.jsonl");
    let args = |json: bool| {
        let mut a = vec![
            "plugin".to_string(),
            "test".into(),
            plugin("orders").display().to_string(),
            "--input".into(),
            input.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        if json {
            a.push("--json".into());
        }
        a
    };
    let a = args(true);
    let out = weir(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(out.status.success(), "{}", show(&out));
    let shown: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let n = |o: &str| shown.iter().filter(|e| e["outcome"] == o).count();
    assert_eq!((n("emit"), n("drop"), n("reject")), (5, 2, 10));
    let long = shown
        .iter()
        .find(|e| e["id"] == "file/orders.jsonl/14")
        .unwrap();
    assert_eq!(long["stage"], "validate");

    let a = args(false);
    let out = weir(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("17 records: 5 emitted, 2 dropped, 10 rejected"),
        "{table}"
    );
    assert!(
        table.contains("order_lines: order_id=\"o-00000001\", line_no=1"),
        "{table}"
    );
}
