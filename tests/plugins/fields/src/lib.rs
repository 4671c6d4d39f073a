//! Echoes every field of each record the host delivers, for tests/conformance.rs: built against contract 0.2
//! (the batch packed into one buffer, read back by the SDK) and 0.1 (records lowered one by one by the
//! generated bindings), the two must agree, and agree with the JavaScript and C builds of the same rule.

use weir_rule::{Outcome, Row, RowBuilder, Rule, Settings, SourceRecord};

struct Fields;

impl Rule for Fields {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Fields)
    }

    fn process(&mut self, r: &SourceRecord) -> Outcome {
        let Ok(text) = std::str::from_utf8(&r.payload) else {
            return Outcome::Reject("payload: not UTF-8".into());
        };
        let attributes: Vec<[&str; 2]> = r
            .attributes
            .iter()
            .map(|(k, v)| [k.as_str(), v.as_str()])
            .collect();
        let row: Row = RowBuilder::new("fields")
            .text("id", r.id.as_str())
            .text("partition_key", r.partition_key.as_str())
            .integer("arrived_at_ms", r.arrived_at_ms)
            .json("attributes", &serde_json::json!(attributes))
            .integer("payload_bytes", r.payload.len() as i64)
            .text("payload", text)
            .value(
                "first_byte",
                r.payload.first().map_or(weir_rule::Value::Null, |b| {
                    weir_rule::Value::Integer(i64::from(*b))
                }),
            )
            .build();
        Outcome::Emit(vec![row])
    }
}

weir_rule::export_rule!(Fields);
