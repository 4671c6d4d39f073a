//! Helpers shared by the black-box tests: run the real `weir` binary, read the SQLite sink, read RAW.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A built plugin component from `plugins/dist/`.
pub fn plugin(name: &str) -> PathBuf {
    let p = root().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        p.display()
    );
    p
}

/// Runs `weir` with `args` and extra environment.
pub fn weir(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).env("WEIR_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("weir runs")
}

/// stdout and stderr of a run, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The quickstart configuration and input copied into `dir`, with the plugin path made absolute.
pub fn quickstart_in(dir: &Path) -> PathBuf {
    let qs = root().join("examples/quickstart");
    std::fs::copy(qs.join("orders.jsonl"), dir.join("orders.jsonl")).unwrap();
    let config = std::fs::read_to_string(qs.join("weir.toml"))
        .unwrap()
        .replace(
            "../../plugins/dist/orders.wasm",
            &plugin("orders").display().to_string(),
        );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// All rows of a query as text (NULL as `NULL`), in the query's order.
pub async fn query(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (0..r.columns().len())
                .map(|i| {
                    if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                        return v.unwrap_or_else(|| "NULL".into());
                    }
                    if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                        return v.map_or("NULL".into(), |v| v.to_string());
                    }
                    r.try_get::<Option<f64>, _>(i)
                        .unwrap()
                        .map_or("NULL".into(), |v| v.to_string())
                })
                .collect()
        })
        .collect()
}

/// One number from a query.
pub async fn count(db: &Path, sql: &str) -> i64 {
    query(db, sql).await[0][0].parse().unwrap()
}

/// The final state of a sink, without wall-clock columns: every table, sorted.
pub async fn snapshot(db: &Path, tables: &[&str]) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut out = BTreeMap::new();
    for t in tables {
        let cols: Vec<String> = query(db, &format!("SELECT name FROM pragma_table_info('{t}')"))
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .filter(|c| !["_weir_loaded_at", "loaded_at", "at", "updated_at"].contains(&c.as_str()))
            .map(|c| format!("\"{c}\""))
            .collect();
        let sql = format!("SELECT {} FROM {t} ORDER BY 1, 2", cols.join(", "));
        out.insert(t.to_string(), query(db, &sql).await);
    }
    out
}

/// Every RAW line under a local RAW directory: record id → decoded line.
pub fn raw_lines(dir: &Path) -> BTreeMap<String, weir::raw::RawLine> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".jsonl.gz") {
                let key = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                for line in weir::raw::decode(&key, &std::fs::read(&p).unwrap()).unwrap() {
                    assert!(
                        out.insert(line.id.clone(), line).is_none(),
                        "a record is archived twice"
                    );
                }
            }
        }
    }
    out
}
