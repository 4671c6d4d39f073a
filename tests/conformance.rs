//! One conformance suite for the orders rule in every language and both contract versions: the same input
//! through each plugin gives identical outcomes — the same rows cell by cell, the same drops, and rejects of the same category
//! (the field a reason names, the text before its first `:`; the wording of parser messages may differ).

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// The orders rule in each language, as built by scripts/build-plugins.sh. The reference is the Rust rule on
/// contract 0.2 (packed rows); the same source on contract 0.1 and the other languages (0.1) must agree with it.
const LANGUAGES: [(&str, &str); 8] = [
    ("Rust", "orders"),
    ("Rust on contract 0.1", "orders-v01"),
    ("Python", "orders-py"),
    ("Python on contract 0.1", "orders-py-v01"),
    ("JavaScript", "orders-js"),
    ("JavaScript on contract 0.1", "orders-js-v01"),
    ("C", "orders-c"),
    ("C on contract 0.1", "orders-c-v01"),
];

/// `weir plugin test --json` of a plugin over `input`, checked against the tables of `config`.
fn plugin_test(plugin_name: &str, input: &Path, config: &Path) -> Vec<Value> {
    let out = weir(
        &[
            "plugin",
            "test",
            plugin(plugin_name).to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{plugin_name}: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The outcomes of a plugin over the conformance input, checked against the quickstart's tables, with reasons
/// reduced to their category.
fn outcomes(plugin_name: &str) -> Vec<Value> {
    let config = root().join("examples/quickstart/weir.toml");
    let input = root().join("tests/conformance/orders.jsonl");
    plugin_test(plugin_name, &input, &config)
        .into_iter()
        .map(|mut o| {
            if let Some(Value::String(r)) = o.get_mut("reason") {
                *r = r.split(':').next().unwrap_or("").to_string();
            }
            o
        })
        .collect()
}

/// Every language's plugin agrees with the Rust reference on every record of the suite.
#[test]
fn every_language_gives_identical_outcomes() {
    needs!("every_language_gives_identical_outcomes": Plugins);
    let reference = outcomes("orders");
    assert_eq!(reference.len(), 48);
    let kinds = |v: &[Value], k: &str| v.iter().filter(|o| o["outcome"] == k).count();
    // The suite covers all three outcomes.
    assert!(
        kinds(&reference, "emit") >= 10
            && kinds(&reference, "drop") >= 2
            && kinds(&reference, "reject") >= 15
    );
    // The JavaScript rule built ahead of time (weval), when scripts/build-plugins.sh built it (WEIR_JS_AOT=1,
    // as `scripts/test.sh --long` does).
    let aot = std::env::var("WEIR_JS_AOT").is_ok_and(|v| v == "1");
    let extra = aot.then_some(("JavaScript ahead of time", "orders-js-aot"));
    for (language, name) in LANGUAGES[1..].iter().chain(extra.as_ref()) {
        let got = outcomes(name);
        assert_eq!(got.len(), reference.len(), "{language}");
        for (want, have) in reference.iter().zip(&got) {
            assert_eq!(have, want, "{language} differs on {}", want["id"]);
        }
    }
}

/// Every field of a record reaches a rule unchanged, in JavaScript, Rust and C: on contract 0.2 each SDK reads
/// them out of the packed batch, on 0.1 the generated bindings lift them, and all six builds agree — on ASCII,
/// multi-byte UTF-8 and bytes that are not UTF-8.
#[test]
fn record_fields_reach_a_rule_identically_in_every_language_on_both_versions() {
    needs!("record_fields_reach_a_rule_identically_in_every_language_on_both_versions": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fields.jsonl");
    std::fs::write(
        &input,
        b"{\"a\":1}\ncaf\xc3\xa9 \xe2\x98\x95\n\n\xff\xfe\nlast\n",
    )
    .unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        r#"[source]
kind = "file"
path = "fields.jsonl"

[raw]
kind = "local"
dir = "raw"

[rule]
plugin = "fields.wasm"

[sink]
kind = "sqlite"
path = "out.db"

[[sink.tables]]
name = "fields"
primary_key = ["id"]
columns = { id = "varchar(200)", partition_key = "varchar(200)", arrived_at_ms = "bigint", attributes = "super", payload_bytes = "integer", payload = "varchar(200)", first_byte = "integer" }
"#,
    )
    .unwrap();
    let packed = plugin_test("fields-js", &input, &config);
    let lifted = plugin_test("fields-js-v01", &input, &config);
    assert_eq!(packed, lifted);
    // The file source skips the empty line.
    assert_eq!(packed.len(), 4, "{packed:?}");
    let cells = |i: usize| packed[i]["rows"][0]["cells"].clone();
    assert_eq!(cells(0)["payload"], "{\"a\":1}");
    assert_eq!(cells(0)["payload_bytes"], 7);
    assert_eq!(cells(0)["first_byte"], i64::from(b'{'));
    assert_eq!(cells(0)["id"], "file/fields.jsonl/1");
    assert_eq!(cells(0)["partition_key"], "fields.jsonl");
    assert!(cells(0)["arrived_at_ms"].as_i64().is_some_and(|ms| ms > 0));
    assert_eq!(cells(0)["attributes"], serde_json::json!([["line", "1"]]));
    assert_eq!(cells(1)["payload"], "café ☕");
    assert_eq!(cells(1)["payload_bytes"], 9);
    // Not UTF-8: text() throws, so the record is rejected — the same way on both versions.
    assert_eq!(packed[2]["outcome"], "reject", "{}", packed[2]);
    assert_eq!(cells(3)["payload"], "last");
    assert_eq!(cells(3)["attributes"], serde_json::json!([["line", "5"]]));

    // The Rust and C builds of the same rule, on both versions, emit the same rows. Bytes that are not UTF-8
    // are rejected by each in its own way (the Rust rule itself; the host's check of the C rule's text on 0.2;
    // the canonical ABI's string check on 0.1), so only the outcome is compared there.
    let kinds = |outcomes: &[Value]| -> Vec<Value> {
        outcomes
            .iter()
            .map(|o| match o["outcome"].as_str() {
                Some("emit") => o.clone(),
                _ => serde_json::json!({ "id": o["id"], "outcome": o["outcome"] }),
            })
            .collect()
    };
    for build in ["fields", "fields-v01", "fields-c", "fields-c-v01"] {
        let got = plugin_test(build, &input, &config);
        assert_eq!(kinds(&got), kinds(&packed), "{build}");
    }
}
