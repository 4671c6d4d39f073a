use super::*;

fn spec() -> TableSpec {
    TableSpec::new(
        "orders".into(),
        vec![
            ("order_id".into(), ColumnType::Varchar(36)),
            (
                "total".into(),
                ColumnType::Decimal {
                    precision: 18,
                    scale: 2,
                },
            ),
            ("shipping".into(), ColumnType::Super),
            ("n".into(), ColumnType::Integer),
        ],
        vec!["order_id".into()],
    )
}

/// The generated statements are the portable shapes, with casts on the binds.
#[test]
fn statement_shapes() {
    let t = TableSql::new("public", &spec());
    assert_eq!(
        t.create_stage(),
        r#"CREATE TEMP TABLE "weir_stage_orders" (LIKE "public"."orders")"#
    );
    let insert = t.insert_stage(2);
    assert!(insert.starts_with(
        r#"INSERT INTO "weir_stage_orders" ("order_id", "total", "shipping", "n", _weir_record_id"#
    ));
    assert!(
        insert
            .contains("(CAST($1 AS VARCHAR(36)), CAST($2 AS DECIMAL(18,2)), JSON_PARSE($3), $4, ")
    );
    assert!(insert.contains("CAST($16 AS TIMESTAMPTZ))"));
    assert_eq!(
        t.merge_statement(),
        r#"MERGE INTO "public"."orders" USING "weir_stage_orders" ON "public"."orders"."order_id" = "weir_stage_orders"."order_id" WHEN MATCHED THEN UPDATE SET "total" = "weir_stage_orders"."total", "shipping" = "weir_stage_orders"."shipping", "n" = "weir_stage_orders"."n", _weir_record_id = "weir_stage_orders"._weir_record_id, _weir_batch_id = "weir_stage_orders"._weir_batch_id, _weir_rule_digest = "weir_stage_orders"._weir_rule_digest, _weir_loaded_at = "weir_stage_orders"._weir_loaded_at WHEN NOT MATCHED THEN INSERT ("order_id", "total", "shipping", "n", _weir_record_id, _weir_batch_id, _weir_rule_digest, _weir_loaded_at) VALUES ("weir_stage_orders"."order_id", "weir_stage_orders"."total", "weir_stage_orders"."shipping", "weir_stage_orders"."n", "weir_stage_orders"._weir_record_id, "weir_stage_orders"._weir_batch_id, "weir_stage_orders"._weir_rule_digest, "weir_stage_orders"._weir_loaded_at)"#
    );
    let [delete, insert] = t.merge();
    assert_eq!(
        delete,
        r#"DELETE FROM "public"."orders" USING "weir_stage_orders" WHERE "public"."orders"."order_id" = "weir_stage_orders"."order_id""#
    );
    assert!(insert.starts_with(r#"INSERT INTO "public"."orders" ("order_id""#));
    let ddl = table_ddl("public", &spec(), false);
    let mut keyed = spec().with_redshift_keys(Some("order_id".into()), vec!["order_id".into()]);
    keyed.encode = vec![("total".into(), "az64".into())];
    assert!(table_ddl("s", &keyed, true).contains(r#""total" DECIMAL(18,2) ENCODE az64"#));
    assert!(
        table_ddl("s", &keyed, true)
            .ends_with(r#"DISTSTYLE KEY DISTKEY ("order_id") COMPOUND SORTKEY ("order_id")"#)
    );
    assert!(!table_ddl("s", &keyed, false).contains("DISTKEY"));
    assert!(ddl.contains(r#""shipping" SUPER"#) && ddl.contains("PRIMARY KEY (\"order_id\")"));
    // A redrive's guard: portable DELETE … USING over the target and the ledger, binds for the values.
    let guard = t.redrive_guard("public").expect("an unversioned table");
    assert_eq!(
        guard,
        r#"DELETE FROM "weir_stage_orders" USING "public"."orders", "public".weir_batches holder, "public".weir_batches original WHERE "public"."orders"."order_id" = "weir_stage_orders"."order_id" AND "public"."orders"._weir_record_id <> "weir_stage_orders"._weir_record_id AND "public"."orders"._weir_batch_id NOT LIKE $2 AND holder.batch_id = "public"."orders"._weir_batch_id AND original.batch_id = $1 AND holder.loaded_at >= original.loaded_at"#
    );
    for statement in [t.create_stage(), t.insert_stage(3), delete, ddl, guard]
        .iter()
        .chain(&weir_tables_ddl("s"))
    {
        let upper = statement.to_ascii_uppercase();
        for banned in [
            "ON CONFLICT",
            "TRUNCATE",
            "NOW()",
            "CURRENT_TIMESTAMP",
            "STDIN",
            "SERIAL",
            "JSONB",
        ] {
            assert!(!upper.contains(banned), "{banned} in {statement}");
        }
    }
}

/// The COPY fast path's SQL text and row encoding (they run only on real Redshift).
#[test]
fn copy_from_s3() {
    let t = TableSql::new("public", &spec());
    let copy = copy_stage_sql(
        &t.stage,
        &t.columns,
        "s3://bucket/stage/b1.manifest",
        "arn:aws:iam::123456789012:role/weir-o'k",
        "eu-west-1",
    );
    assert_eq!(
        copy,
        "COPY \"weir_stage_orders\" (\"order_id\", \"total\", \"shipping\", \"n\", _weir_record_id, _weir_batch_id, \
         _weir_rule_digest, _weir_loaded_at) FROM 's3://bucket/stage/b1.manifest' \
         IAM_ROLE 'arn:aws:iam::123456789012:role/weir-o''k' FORMAT AS JSON 'auto' GZIP MANIFEST \
         TIMEFORMAT 'auto' REGION 'eu-west-1'"
    );
    let cells = [
        Cell::Text("o-1".into()),
        Cell::Decimal("44.90".into()),
        Cell::Json(r#"{"a":[1]}"#.into()),
        Cell::Null,
    ];
    let line = stage_json_line(
        &spec(),
        &cells,
        ["file/x/1", "b", "d"],
        "2026-11-21 10:00:00.000000+00",
    );
    assert_eq!(
        line,
        r#"{"order_id":"o-1","total":"44.90","shipping":{"a":[1]},"n":null,"_weir_record_id":"file/x/1","_weir_batch_id":"b","_weir_rule_digest":"d","_weir_loaded_at":"2026-11-21 10:00:00.000000+00"}"#
    );
    // SUPER values pass through as validated: a big integer stays an integer, a lone surrogate escape
    // stays as written, an escaped quote and a string's own spaces and newline escapes stay; only the
    // whitespace between tokens goes (one line per row).
    let json = "{ \"big\": 123456789012345678901234567890,\n \"s\": \"\\ud800 a\\\" b\\n\",\t\"f\": 1.10e400 }";
    let cells = [
        Cell::Text("o-2".into()),
        Cell::Null,
        Cell::Json(json.into()),
        Cell::Int(3),
    ];
    let line = stage_json_line(&spec(), &cells, ["r", "b", "d"], "t");
    assert!(
        line.contains(
            r#""shipping":{"big":123456789012345678901234567890,"s":"\ud800 a\" b\n","f":1.10e400}"#
        ),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

/// Plaintext sessions to another host are warned about; to this machine or with TLS they are not.
#[test]
fn plaintext_to_a_remote_host_is_warned() {
    let warn = |url: &str| {
        let s = RedshiftSink::new(url, RedshiftOptions::default()).unwrap();
        s.plaintext_warning()
    };
    assert!(
        warn("postgres://u:p@db.example.com:5432/d").is_some_and(|w| w.contains("db.example.com"))
    );
    assert!(warn("postgres://u:p@db.example.com:5432/d?sslmode=prefer").is_some());
    assert!(warn("postgres://u:p@127.0.0.1:5432/d").is_none());
    assert!(warn("postgres://u:p@localhost:5432/d").is_none());
    assert!(warn("postgres://u:p@db.example.com:5432/d?sslmode=require").is_none());
}

/// A version column keeps the highest version per key (ties: the latest); NULL loses; decimals compare
/// as numbers.
#[test]
fn dedupe_by_version() {
    let row = |id: &str, v: Cell| CheckedRow {
        table: 0,
        cells: vec![Cell::Text(id.into()), Cell::Null, Cell::Null, v],
    };
    let (a5, a3, a5b, b_null, b1) = (
        row("a", Cell::Int(5)),
        row("a", Cell::Int(3)),
        row("a", Cell::Int(5)),
        row("b", Cell::Null),
        row("b", Cell::Int(1)),
    );
    let rows = vec![
        (&a5, "r1"),
        (&b1, "r2"),
        (&a3, "r3"),
        (&a5b, "r4"),
        (&b_null, "r5"),
    ];
    let kept: Vec<&str> = dedupe(rows, &[0], Some(3), KeyEquality::Standard)
        .iter()
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(kept, ["r2", "r4"]);
    use crate::sink::version_cmp;
    use std::cmp::Ordering::*;
    let d = |s: &str| Cell::Decimal(s.into());
    assert_eq!(version_cmp(&d("10.00"), &d("9.00")), Greater);
    assert_eq!(version_cmp(&d("-10.00"), &d("-9.00")), Less);
    assert_eq!(version_cmp(&d("-0.00"), &d("0.00")), Equal);
    assert_eq!(version_cmp(&d("-0.50"), &d("0.10")), Less);
    assert_eq!(version_cmp(&Cell::Null, &d("-1.00")), Less);
    assert_eq!(
        version_cmp(
            &Cell::Text("2026-01-02".into()),
            &Cell::Text("2026-01-10".into())
        ),
        Less
    );
}

/// The versioned merge keeps a stored row whose version is higher.
#[test]
fn versioned_merge_statements() {
    let mut spec = spec();
    spec.version_column = Some("n".into());
    let t = TableSql::new("public", &spec);
    let [delete, insert] = t.merge();
    assert!(delete.ends_with(
        r#"AND ("weir_stage_orders"."n" >= "public"."orders"."n" OR "public"."orders"."n" IS NULL)"#
    ), "{delete}");
    assert!(
        insert.contains("WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"orders\" WHERE"),
        "{insert}"
    );
    // A redrive adds nothing to a versioned table's merge: the version decides.
    assert_eq!(t.redrive_guard("public"), None);
}

/// Duplicate keys in one batch keep the latest row only.
#[test]
fn dedupe_keeps_latest() {
    let row = |id: &str, n: i64| CheckedRow {
        table: 0,
        cells: vec![Cell::Text(id.into()), Cell::Null, Cell::Null, Cell::Int(n)],
    };
    let (a1, b, a2) = (row("a", 1), row("b", 2), row("a", 3));
    let kept = dedupe(
        vec![(&a1, "r1"), (&b, "r2"), (&a2, "r3")],
        &[0],
        None,
        KeyEquality::Standard,
    );
    let ids: Vec<&str> = kept.iter().map(|(_, r)| *r).collect();
    assert_eq!(ids, ["r2", "r3"]);
}

/// Timestamps are bound as UTC literals.
#[test]
fn timestamps() {
    assert_eq!(
        sql_timestamp(1_795_256_970_000_000),
        "2026-11-21 10:29:30.000000+00"
    );
}
