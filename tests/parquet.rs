//! Parquet RAW (`[raw] format = "parquet"`) through the real `weir` binary: the files are read back by an
//! independent reader (PyArrow, installed from PyPI by scripts/test.sh into `WEIR_PYARROW_VENV`) and every
//! record's bytes compared with the input; `weir reconcile` and `weir replay` read the same files.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;

/// PyArrow's view of every Parquet file under `dir`: one JSON object per record.
fn read_with_pyarrow(dir: &Path) -> Vec<serde_json::Value> {
    let venv =
        std::env::var("WEIR_PYARROW_VENV").unwrap_or_else(|_| "/var/tmp/weir-pyarrow".into());
    let python = Path::new(&venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs PyArrow there",
        python.display()
    );
    let script = r#"
import base64, json, pathlib, sys
import pyarrow.parquet as pq
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.parquet")):
    table = pq.read_table(path)
    for row in table.to_pylist():
        print(json.dumps({
            "file": str(path.relative_to(sys.argv[1])),
            "id": row["id"], "position": row["position"], "partition_key": row["partition_key"],
            "arrived_at_ms": int(row["arrived_at"].timestamp() * 1000),
            "arrived_at_tz": str(row["arrived_at"].tzinfo),
            "attributes": [[k, v] for k, v in row["attributes"]],
            "payload": base64.b64encode(row["payload"]).decode(),
            "payload_json": row["payload_json"],
            "schema": str(table.schema.field("payload_json").type),
        }))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The quickstart with Parquet RAW: PyArrow reads every record back with its exact bytes, its Hive-style key,
/// its attributes and arrival time, and the payload as JSON text exactly when it is JSON; reconcile accounts
/// for every record from those files, and replay reads them.
#[test]
fn parquet_raw_is_read_back_by_pyarrow_and_by_reconcile() {
    needs!("parquet_raw_is_read_back_by_pyarrow_and_by_reconcile": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "prefix = \"orders/\"",
        "prefix = \"orders/\"\nformat = \"parquet\"",
    );
    std::fs::write(&config, text).unwrap();
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));

    let input = std::fs::read(dir.path().join("orders.jsonl")).unwrap();
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let rows = read_with_pyarrow(&dir.path().join("out/raw"));
    assert_eq!(rows.len(), lines.len(), "one row per record");
    assert!(
        !raw_has_jsonl(&dir.path().join("out/raw")),
        "no JSON-lines objects"
    );
    for row in &rows {
        let file = row["file"].as_str().unwrap();
        assert!(
            file.starts_with("orders/source=file/dt=2026-") && file.contains("/hour="),
            "{file}"
        );
        let n: usize = row["position"].as_str().unwrap().parse().unwrap();
        assert_eq!(row["id"], format!("file/orders.jsonl/{n}"));
        let payload = base64::engine::general_purpose::STANDARD
            .decode(row["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload, lines[n - 1], "record {n}: the exact bytes");
        let is_json = serde_json::from_slice::<serde_json::Value>(&payload).is_ok();
        assert_eq!(
            row["payload_json"].as_str().map(str::as_bytes),
            is_json.then_some(&payload[..]),
            "record {n}: payload_json exactly when the payload is JSON"
        );
        assert_eq!(row["arrived_at_tz"], "UTC");
        assert!(row["arrived_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
        assert!(
            row["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kv| kv[0] == "line" && kv[1].as_str() == Some(n.to_string().as_str())),
            "{row}"
        );
    }
    assert!(
        rows.iter().any(|r| r["payload_json"].is_null()),
        "the quickstart has malformed records"
    );

    let out = weir(
        &["reconcile", "-c", config.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let part = &report["partitions"]["file/orders.jsonl"];
    assert_eq!(part["raw_records"], lines.len(), "{report:#}");
    assert_eq!(part["unaccounted"], 0, "{report:#}");
    let out = weir(&["replay", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
}

fn raw_has_jsonl(dir: &Path) -> bool {
    raw_objects(dir)
        .iter()
        .any(|(key, _)| key.ends_with(".jsonl.gz"))
}
