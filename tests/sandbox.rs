//! The sandbox: a rule that traps, loops, over-allocates, emits undeclared or mistyped data, or miscounts
//! its outcomes never stops the worker; exactly the guilty records are rejected with a precise reason and
//! every other record is loaded.

mod common;

use common::*;

fn config(
    dir: &std::path::Path,
    plugin_name: &str,
    memory_mib: u32,
    max_records: usize,
) -> std::path::PathBuf {
    let text = format!(
        r#"
[source]
kind = "file"
path = "input.txt"
[raw]
kind = "local"
dir = "raw"
[rule]
plugin = "{plugin}"
memory_limit_mib = {memory_mib}
batch_deadline_ms = 300
[sink]
kind = "sqlite"
path = "weir.db"
[[sink.tables]]
name = "t"
primary_key = ["id"]
columns = {{ id = "varchar(64)", n = "integer" }}
[batch]
max_records = {max_records}
"#,
        plugin = plugin(plugin_name).display()
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const INPUT: &str = "ok:1\ntrap\nok:2\nloop\nok:3\nalloc\nok:4\nbadcol\nok:5\nbadtable\nbadtype\nextra\nok:6\ndrop\nok:7\n";

/// Every misbehaviour of the Rust plugin is isolated to its own record, in one big batch and in small ones.
#[tokio::test]
async fn guilty_records_only() {
    needs!("guilty_records_only": Plugins);
    guilty_records_only_with("misbehave", 32).await;
}

/// The same with the plugin written in Python (a larger memory cap: the interpreter itself needs ~40 MiB).
#[tokio::test]
async fn guilty_records_only_in_python() {
    needs!("guilty_records_only_in_python": Plugins);
    guilty_records_only_with("misbehave-py", 128).await;
}

async fn guilty_records_only_with(plugin_name: &str, memory_mib: u32) {
    for max_records in [100, 3] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("input.txt"), INPUT).unwrap();
        let cfg = config(dir.path(), plugin_name, memory_mib, max_records);
        let out = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", show(&out));
        let db = dir.path().join("weir.db");

        let ids: Vec<String> = query(&db, "SELECT id FROM t ORDER BY id")
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        assert_eq!(
            ids,
            ["1", "2", "3", "4", "5", "6", "7"],
            "{plugin_name}, batch size {max_records}"
        );

        let dl = query(
            &db,
            "SELECT record_id, stage, reason FROM weir_dead_letters",
        )
        .await;
        let dead = |line: usize| {
            dl.iter()
                .find(|r| r[0] == format!("file/input.txt/{line}"))
                .unwrap_or_else(|| panic!("line {line} not dead-lettered: {dl:?}"))
                .clone()
        };
        let expect = [
            (2, "sandbox", "boom on purpose in file/input.txt/2"),
            (4, "sandbox", "rule deadline of 300 ms exceeded"),
            (6, "sandbox", "memory limit exceeded"),
            (
                8,
                "validate",
                "table t, column `evil`: not a declared column",
            ),
            (10, "validate", "is not declared in the sink configuration"),
            (
                11,
                "validate",
                "table t, column n: expected integer, got text",
            ),
            (12, "sandbox", "rule returned 2 outcomes for 1 records"),
        ];
        for (line, stage, reason) in expect {
            let d = dead(line);
            assert_eq!(d[1], stage, "line {line}: {d:?}");
            assert!(
                d[2].contains(reason),
                "line {line}: {:?} lacks {reason:?}",
                d[2]
            );
        }
        assert_eq!(
            dl.len(),
            expect.len(),
            "only the guilty records are rejected: {dl:?}"
        );
        assert_eq!(count(&db, "SELECT sum(dropped) FROM weir_batches").await, 1);
        assert_eq!(
            count(&db, "SELECT sum(records_in) FROM weir_batches").await,
            15
        );
        // The SQL-looking table name never reached SQL: the table is intact.
        assert_eq!(
            count(&db, "SELECT count(*) FROM sqlite_master WHERE name = 't'").await,
            1
        );
    }
}

/// A rule that sleeps (a blocking WASI call: `std::thread::sleep` of 10 minutes) cannot hold a host thread:
/// sleeps are virtual, they move the rule's clock and return at once, so the run ends long before the sleep
/// would have, and the record loads. (It used to block for the whole sleep, past `batch_deadline_ms`, and
/// again for every half of the bisection.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_rule_cannot_escape_the_deadline() {
    needs!("a_sleeping_rule_cannot_escape_the_deadline": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let mut input: Vec<String> = (0..15).map(|i| format!("ok:{i}")).collect();
    input.insert(7, "sleep:600000:slept".into());
    std::fs::write(dir.path().join("input.txt"), input.join("\n")).unwrap();
    let cfg = config(dir.path(), "misbehave", 32, 100);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "-c", cfg.to_str().unwrap()]);
    // Far less than the 600 s the rule sleeps: the run cannot have waited for it.
    let out = Background::spawn(cmd)
        .wait(std::time::Duration::from_secs(120))
        .await;
    assert!(out.status.success(), "{}", show(&out));
    let db = dir.path().join("weir.db");
    assert_eq!(count(&db, "SELECT count(*) FROM t").await, 16);
    assert_eq!(
        count(&db, "SELECT count(*) FROM t WHERE id = 'slept'").await,
        1
    );
}

/// Rules see a deterministic world: the wall clock is the record's arrival time, the monotonic clock starts
/// at zero, random is seeded from the records' ids. A rule keying rows on the clocks and on random therefore
/// writes the same keys on a re-run of the same input (a redelivery) and on `weir replay`: no new rows. (With
/// the host's clock and secure random, every delivery added rows.)
#[tokio::test(flavor = "multi_thread")]
async fn clocks_and_random_are_deterministic() {
    needs!("clocks_and_random_are_deterministic": Plugins);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input.txt"),
        "clock:a\nrandom:b\nclock:c\nrandom:d\n",
    )
    .unwrap();
    let cfg = config(dir.path(), "misbehave", 32, 2);
    let db = dir.path().join("weir.db");
    let keys = || async {
        query(&db, "SELECT id FROM t ORDER BY id")
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<String>>()
    };
    let out = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let first = keys().await;
    assert_eq!(first.len(), 4, "{first:?}");
    // The wall clock is the file's modification time (the records' arrival), not the time of the run.
    let mtime_ms = std::fs::metadata(dir.path().join("input.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(first[0].starts_with(&format!("a@{mtime_ms}@")), "{first:?}");
    // A redelivery: the same input again from the start, into the same tables.
    execute(
        &db,
        "DELETE FROM weir_checkpoints; DELETE FROM weir_batches",
    )
    .await;
    let out = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(keys().await, first, "a redelivery writes the same keys");
    let out = weir(&["replay", "-c", cfg.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(keys().await, first, "a replay writes the same keys");
}
