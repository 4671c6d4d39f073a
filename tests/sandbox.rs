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

/// The same with the Rust plugin built against contract 0.1 (one WIT value per cell): the host runs both.
#[tokio::test]
async fn guilty_records_only_on_contract_0_1() {
    needs!("guilty_records_only_on_contract_0_1": Plugins);
    guilty_records_only_with("misbehave-v01", 32).await;
}

/// The same with the plugin written in Python (a larger memory cap: the interpreter itself needs ~40 MiB).
#[tokio::test]
async fn guilty_records_only_in_python() {
    needs!("guilty_records_only_in_python": Plugins);
    guilty_records_only_with("misbehave-py", 128).await;
}

/// The same with the Python plugin built against contract 0.1.
#[tokio::test]
async fn guilty_records_only_in_python_on_contract_0_1() {
    needs!("guilty_records_only_in_python_on_contract_0_1": Plugins);
    guilty_records_only_with("misbehave-py-v01", 128).await;
}

/// The Python helper's allocator (weir_rule/_alloc.c, pymalloc for the CPython in the component) keeps every
/// object intact: each record makes, grows, shrinks and frees objects of every small size in 30,000 random steps
/// and checks their contents (misbehave-py's `churn`), in instances reused across batches, so later records run on
/// pools the earlier ones emptied and handed back. The rule also rejects if the module did not load.
#[tokio::test]
async fn python_allocator_keeps_objects_intact() {
    needs!("python_allocator_keeps_objects_intact": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let input: String = (1..=6).map(|seed| format!("churn:{seed}\n")).collect();
    std::fs::write(dir.path().join("input.txt"), input).unwrap();
    let cfg = config(dir.path(), "misbehave-py", 128, 2);
    // A deadline for the work, not for a runaway rule: each record takes about a second in the sandbox.
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("batch_deadline_ms = 300"), "{text}");
    std::fs::write(
        &cfg,
        text.replace("batch_deadline_ms = 300", "batch_deadline_ms = 120000"),
    )
    .unwrap();
    let out = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let db = dir.path().join("weir.db");
    let dl = query(&db, "SELECT record_id, reason FROM weir_dead_letters").await;
    assert!(dl.is_empty(), "{dl:?}");
    assert_eq!(
        loaded_ids(&db).await,
        (1..=6).map(|s| format!("churn:{s}")).collect::<Vec<_>>()
    );
}

/// Components are compiled with their constant globals folded (`rules::fold`): componentize-py's libpython
/// reads its data through hundreds of imported GOT globals that its linker fixed, and the Python orders rule
/// gives the same outcome for every quickstart line, rejects and their reasons included, as when the
/// component is compiled as it is (`WEIR_WASM_FOLD_GLOBALS=0`).
#[test]
fn python_rule_is_the_same_with_its_globals_folded() {
    needs!("python_rule_is_the_same_with_its_globals_folded": Plugins);
    let wasm = plugin("orders-py");
    let (_, folded) = weir::rules::fold::constant_globals(&std::fs::read(&wasm).unwrap())
        .unwrap()
        .expect("a componentize-py component has globals to fold");
    assert!(folded.globals >= 300, "{folded:?}");
    let input = root().join("examples/quickstart/orders.jsonl");
    let config = root().join("examples/quickstart/weir.toml");
    let outcomes = |fold: &str| {
        let cache = tempfile::tempdir().unwrap();
        let out = weir(
            &[
                "plugin",
                "test",
                wasm.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "-c",
                config.to_str().unwrap(),
            ],
            &[
                ("WEIR_WASM_FOLD_GLOBALS", fold),
                ("WEIR_CACHE_DIR", cache.path().to_str().unwrap()),
            ],
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (folded, as_built) = (outcomes("1"), outcomes("0"));
    assert!(
        folded.contains("emit") && folded.contains("reject"),
        "{folded}"
    );
    assert_eq!(folded, as_built);
}

/// The ids loaded into table `t`, in order.
async fn loaded_ids(db: &std::path::Path) -> Vec<String> {
    query(db, "SELECT id FROM t ORDER BY id")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

async fn guilty_records_only_with(plugin_name: &str, memory_mib: u32) {
    for max_records in [100, 3] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("input.txt"), INPUT).unwrap();
        let cfg = config(dir.path(), plugin_name, memory_mib, max_records);
        let out = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", show(&out));
        let db = dir.path().join("weir.db");

        assert_eq!(
            loaded_ids(&db).await,
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

/// Counts the bytes the calling thread holds on the heap, and the most it held since [`reset_peak`]: the host's
/// allocations during one rule call, whatever other tests do meanwhile.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static HELD: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    pub struct Counting;

    fn moved(delta: isize) {
        let _ = HELD.try_with(|h| {
            h.set(h.get() + delta);
            let _ = PEAK.try_with(|p| p.set(p.get().max(h.get())));
        });
    }

    // SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            moved(layout.size() as isize);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            moved(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            moved(layout.size() as isize);
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            moved(new_size as isize - layout.size() as isize);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Starts a measurement; returns the bytes held now.
    pub fn reset_peak() -> isize {
        let held = HELD.with(Cell::get);
        PEAK.with(|p| p.set(held));
        held
    }

    /// The most bytes held since [`reset_peak`].
    pub fn peak() -> isize {
        PEAK.with(Cell::get)
    }
}

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

/// A contract 0.2 rule returns one buffer inside its own linear memory, so its size is bounded by the memory cap;
/// what the host decodes from it is bounded too. The hostile component (`tests/plugins/hostile`, written against
/// the WIT without the SDK) fills its memory with the output that costs a host most per byte — rows of a
/// 1,000-column table with every cell but the key NULL, one byte each in the buffer and a whole cell each once
/// decoded: 12 MB of buffer would be 390 MB of rows. The host holds at most 6 × the 16 MiB cap during the call
/// and dead-letters both records with the reason.
#[test]
fn a_hostile_component_cannot_make_the_host_allocate_without_bound() {
    use weir::rules::{RuleLimits, RuleRuntime, SourceRecord};
    use weir::schema::{ColumnType, TableSpec};
    needs!("a_hostile_component_cannot_make_the_host_allocate_without_bound": Plugins);
    let cap: usize = 16 << 20;
    let mut columns = vec![("id".to_string(), ColumnType::Varchar(8))];
    columns.extend((1..1000).map(|i| (format!("c{i}"), ColumnType::Integer)));
    let mut limits = RuleLimits::new(cap, std::time::Duration::from_secs(60));
    limits.tables = std::sync::Arc::new(vec![TableSpec::new(
        "wide".into(),
        columns,
        vec!["id".into()],
    )]);
    let runtime = RuleRuntime::new(None).unwrap();
    let settings = vec![("rows".to_string(), "6000".to_string())];
    let rule = runtime.load(&plugin("hostile"), limits, settings).unwrap();
    let records: Vec<SourceRecord> = (1..=2)
        .map(|i| SourceRecord {
            id: format!("file/hostile/{i}"),
            partition_key: "hostile".into(),
            arrived_at_ms: 0,
            attributes: vec![],
            payload: b"{}".to_vec(),
        })
        .collect();
    let before = heap::reset_peak();
    let out = rule.process("hostile", &records);
    let grew = (heap::peak() - before) as usize;
    assert!(
        grew <= 6 * cap,
        "the host held {} MiB during the call, more than 6 × the {} MiB cap",
        grew >> 20,
        cap >> 20
    );
    // It did decode past the cap's worth: the bound is what stopped it, not a small output.
    assert!(grew > cap, "the host held only {} MiB", grew >> 20);
    for o in &out {
        let Err(reason) = o else {
            panic!("not rejected: {o:?}")
        };
        assert!(
            reason.contains("rule output decodes to more than 64 MiB"),
            "{reason}"
        );
    }
    assert_eq!(out.len(), 2);
}
