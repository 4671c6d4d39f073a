//! Property tests (proptest) of the parsers and encoders that see untrusted input: configuration parsing, the
//! RAW line encoding, KPL de-aggregation, value checks before SQL binding, and the reconcile value
//! canonicalization. Short runs (256 cases each) in the test command; long runs:
//! `PROPTEST_CASES=200000 cargo test -p weir --test fuzz --release` (about ten minutes on 2 cores).

use std::path::Path;

use proptest::prelude::*;
use weir::record::Batch;
use weir::rules::{SourceRecord, Value};
use weir::schema::ColumnType;

fn column_type() -> impl Strategy<Value = ColumnType> {
    prop_oneof![
        Just(ColumnType::SmallInt),
        Just(ColumnType::Integer),
        Just(ColumnType::BigInt),
        (1u8..=38, 0u8..=10).prop_map(|(p, s)| ColumnType::Decimal {
            precision: p,
            scale: s.min(p)
        }),
        Just(ColumnType::Real),
        Just(ColumnType::Double),
        Just(ColumnType::Boolean),
        (1u32..100).prop_map(ColumnType::Varchar),
        Just(ColumnType::Timestamp),
        Just(ColumnType::TimestampTz),
        Just(ColumnType::Super),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        "[-+]?[0-9]{0,40}(\\.[0-9]{0,12})?(e[0-9]+)?".prop_map(Value::Decimal),
        any::<String>().prop_map(Value::Text),
        any::<i64>().prop_map(Value::TimestampUs),
        any::<String>().prop_map(Value::Json),
    ]
}

proptest! {
    /// Any text given as configuration is an error or a configuration, never a panic.
    #[test]
    fn config_parsing_never_panics(text in any::<String>()) {
        let _ = weir::config::parse(&text, Path::new("."), Path::new("weir.toml"), &|_| None);
    }

    /// The quickstart configuration with any value in any field: an error naming a field, or a configuration.
    #[test]
    fn config_fields_take_any_value(field in 0usize..40, value in any::<String>()) {
        let text = include_str!("../examples/quickstart/weir.toml");
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let assignments: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains(" = ")).map(|(i, _)| i).collect();
        let i = assignments[field % assignments.len()];
        let name = lines[i].split(" = ").next().unwrap().to_string();
        lines[i] = format!("{name} = {}", serde_json::to_string(&value).unwrap());
        if let Err(e) = weir::config::parse(&lines.join("\n"), Path::new("."), Path::new("weir.toml"), &|_| None) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Any records encode to RAW and decode back to the same ids, positions, attributes and payload bytes.
    #[test]
    fn raw_lines_round_trip(
        records in proptest::collection::vec(
            (any::<String>(), proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec((any::<String>(), any::<String>()), 0..3), any::<i64>()),
            1..20,
        )
    ) {
        let batch = Batch {
            id: "b".into(),
            source: "fuzz".into(),
            partition: "p".into(),
            prev_position: String::new(),
            ordered: true,
            positions: (0..records.len()).map(|i| i.to_string()).collect(),
            records: records.iter().map(|(id, payload, attributes, at)| SourceRecord {
                id: id.clone(),
                partition_key: "k".into(),
                arrived_at_ms: *at,
                attributes: attributes.clone(),
                payload: payload.clone(),
            }).collect(),
            bytes: 0,
            started: std::time::Instant::now(),
            received_us: Vec::new(),
            fingerprint: None,
        };
        let lines = weir::raw::decode("k", &weir::raw::encode(&batch)).unwrap();
        prop_assert_eq!(lines.len(), records.len());
        for (line, (id, payload, attributes, at)) in lines.iter().zip(&records) {
            prop_assert_eq!(&line.id, id);
            prop_assert_eq!(&line.payload_bytes().unwrap(), payload);
            prop_assert_eq!(&line.attributes, attributes);
            prop_assert_eq!(line.arrived_at_ms, *at);
        }
    }

    /// KPL: aggregates come apart into exactly their records; any other bytes are one record, unchanged.
    #[test]
    fn kpl_deaggregation(
        records in proptest::collection::vec(("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..200)), 1..20),
        junk in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let pairs: Vec<(&str, &[u8])> = records.iter().map(|(k, d)| (k.as_str(), d.as_slice())).collect();
        let out = weir::source::kpl::deaggregate("outer", &weir::source::kpl::aggregate(&pairs));
        prop_assert_eq!(out.len(), records.len());
        for (i, (got, (key, data))) in out.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.sub, Some(i as u64));
            prop_assert_eq!(&got.partition_key, key);
            prop_assert_eq!(&got.data, data);
        }
        let single = weir::source::kpl::deaggregate("outer", &junk);
        prop_assert!(!single.is_empty());
    }

    /// Every value against every column type: a checked cell within the column's limits, or a reason — never
    /// a panic; checked text never holds NUL and fits the column's bytes.
    #[test]
    fn value_checks_before_binding(ty in column_type(), v in value()) {
        match weir::schema::check_value(ty, &v) {
            Ok(weir::schema::Cell::Text(s)) => {
                prop_assert!(!s.contains('\0'));
                if let ColumnType::Varchar(n) = ty {
                    prop_assert!(s.len() <= n as usize);
                }
            }
            Ok(weir::schema::Cell::Json(s)) => {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok());
            }
            Ok(_) => {}
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    /// Whatever text a database returns, reconcile canonicalizes it without panicking.
    #[test]
    fn reconcile_canonicalization_never_panics(ty in column_type(), text in any::<String>()) {
        let _ = weir::reconcile::canonical_stored(ty, Some(&text));
    }
}
