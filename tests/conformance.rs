//! One conformance suite for the orders rule in every language and both contract versions: the same input
//! through each plugin gives identical outcomes — the same rows cell by cell, the same drops, and rejects of the same category
//! (the field a reason names, the text before its first `:`; the wording of parser messages may differ).

mod common;

use common::*;
use serde_json::Value;

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

/// `weir plugin test --json` of a plugin over the conformance input, checked against the quickstart's tables,
/// with reasons reduced to their category.
fn outcomes(plugin_name: &str) -> Vec<Value> {
    let config = root().join("examples/quickstart/weir.toml");
    let input = root().join("tests/conformance/orders.jsonl");
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
    assert!(out.status.success(), "{}", show(&out));
    let Value::Array(items) = serde_json::from_slice(&out.stdout).unwrap() else {
        panic!("an array of outcomes")
    };
    items
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
