//! Running the same input again, or restarting after a crash at any step, leaves the final state of a
//! single clean run.

mod common;

use std::path::Path;

use common::*;

async fn clean_run_snapshot() -> std::collections::BTreeMap<String, Vec<Vec<String>>> {
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    snapshot(&dir.path().join("out/weir.db"), &TABLES).await
}

fn run(config: &Path, crash: Option<&str>) -> std::process::Output {
    let env: Vec<(&str, &str)> = crash
        .map(|c| vec![("WEIR_CRASH_AFTER", c)])
        .unwrap_or_default();
    weir(&["run", "-c", config.to_str().unwrap()], &env)
}

/// The same input twice: the second run reads nothing new and changes nothing.
#[tokio::test]
async fn same_input_twice_changes_nothing() {
    needs!("same_input_twice_changes_nothing": Plugins);
    let expected = clean_run_snapshot().await;
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let db = dir.path().join("out/weir.db");
    assert!(run(&config, None).status.success());
    let first = snapshot(&db, &TABLES).await;
    let loaded_at = query(&db, "SELECT _weir_loaded_at FROM orders ORDER BY order_id").await;
    let again = run(&config, None);
    assert!(again.status.success(), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("records in: 0 in 0 batches"));
    assert_eq!(snapshot(&db, &TABLES).await, first);
    assert_eq!(
        query(&db, "SELECT _weir_loaded_at FROM orders ORDER BY order_id").await,
        loaded_at
    );
    assert_eq!(first, expected);
}

/// A process killed after writing RAW but before committing, then restarted, ends in the clean state; so
/// does one killed after a commit but before its acknowledgement.
#[tokio::test]
async fn crash_then_restart_matches_a_clean_run() {
    needs!("crash_then_restart_matches_a_clean_run": Plugins);
    let expected = clean_run_snapshot().await;
    for crash in ["raw:1", "raw:3", "commit:1", "commit:4"] {
        let dir = tempfile::tempdir().unwrap();
        let config = quickstart_in(dir.path());
        let crashed = run(&config, Some(crash));
        assert!(
            !crashed.status.success(),
            "{crash}: the process should have been killed\n{}",
            show(&crashed)
        );
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains("aborting after"),
            "{}",
            show(&crashed)
        );
        let restarted = run(&config, None);
        assert!(restarted.status.success(), "{crash}: {}", show(&restarted));
        let got = snapshot(&dir.path().join("out/weir.db"), &TABLES).await;
        assert_eq!(
            got, expected,
            "{crash}: final state differs from a clean run"
        );
        // RAW holds every record exactly once (`raw_lines` asserts no duplicates).
        assert_eq!(raw_lines(&dir.path().join("out/raw")).len(), 17, "{crash}");
    }
}
