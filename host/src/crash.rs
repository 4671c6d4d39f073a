//! Crash points for recovery tests (`WEIR_CRASH_AFTER`); unset in production.

/// A crash injected for recovery tests: `WEIR_CRASH_AFTER=raw:N` aborts the process right after the N-th RAW
/// write, `commit:N` right after the N-th commit (before its acknowledgement), `merge:N` right after the
/// loader's N-th grouped merge committed (before the registry learns the fates), `staged:N` / `registered:N`
/// right after the N-th batch was staged / registered with grouped commits. Unset in production.
#[derive(Clone, Copy)]
pub struct CrashPoint {
    /// The step after which to abort.
    pub stage: &'static str,
    /// After how many of them.
    pub after: usize,
}

impl CrashPoint {
    /// The crash point for `stage` from `WEIR_CRASH_AFTER`, if it names that stage.
    pub fn from_env(stage: &'static str) -> Option<Self> {
        let spec = std::env::var("WEIR_CRASH_AFTER").ok()?;
        let (s, n) = spec.split_once(':')?;
        (s == stage).then_some(CrashPoint {
            stage,
            after: n.parse().ok()?,
        })
    }

    /// Aborts the process when `done` reaches the crash point.
    pub fn check(point: Option<Self>, done: usize) {
        if let Some(p) = point
            && done == p.after
        {
            eprintln!("WEIR_CRASH_AFTER: aborting after {} {}", p.stage, done);
            std::process::abort();
        }
    }
}

/// A stall injected for recovery tests: `WEIR_PAUSE_BEFORE=merge:N:GATE` makes the loader's N-th merge that
/// has batches to merge wait, after it read them and before its warehouse transaction, until the file `GATE`
/// exists; it creates `GATE.reached` when it starts waiting. A test thereby holds a loader still while its
/// lease runs out and another loader takes over (a zombie loader, made by construction). Unset in production.
pub async fn pause_before(stage: &str, done: usize) {
    let Ok(spec) = std::env::var("WEIR_PAUSE_BEFORE") else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (Some(s), Some(n), Some(gate)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    if s != stage || n.parse::<usize>().ok() != Some(done) {
        return;
    }
    let gate = std::path::PathBuf::from(gate);
    eprintln!(
        "WEIR_PAUSE_BEFORE: {stage} {done} waits for {}",
        gate.display()
    );
    let _ = std::fs::write(gate.with_extension("reached"), b"");
    while !gate.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
