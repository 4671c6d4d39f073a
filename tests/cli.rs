//! The command line: `weir validate` on good and bad configurations, and graceful shutdown on SIGINT.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A good configuration validates: fields, plugin contract and init, sink reachable, tables match.
#[test]
fn validate_good_config() {
    needs!("validate_good_config": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let out = weir(&["validate", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rule: ok") && text.contains(&format!("contract {}", weir::rules::CONTRACT)),
        "{text}"
    );
    assert!(text.contains("tables match"), "{text}");
}

/// Each malformed configuration fails with a message naming the field and the fix.
#[test]
fn validate_bad_configs_name_the_field() {
    needs!("validate_bad_configs_name_the_field": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(quickstart_in(dir.path())).unwrap();
    std::fs::write(dir.path().join("not-a-component.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("max_wait_ms = 250", "max_wait = 250"),
            "`batch.max_wait`",
        ),
        (
            good.replace("\"decimal(18,2)\", line_count", "\"money\", line_count"),
            "`sink.tables[0].columns.total`",
        ),
        (
            good.replace(
                "${WEIR_QUICKSTART_DB:-out/weir.db}",
                "${WEIR_TEST_UNSET_VARIABLE}",
            ),
            "`sink.path`",
        ),
        (
            good.replace("kind = \"local\"", "kind = \"ftp\""),
            "`raw.kind`",
        ),
        (
            good.replace("primary_key = [\"order_id\"]", "primary_key = [\"id\"]"),
            "`sink.tables[0].primary_key`",
        ),
        (
            good.replace("memory_limit_mib = 64", "memory_limit_mib = \"lots\""),
            "`rule.memory_limit_mib`",
        ),
        (
            good.replace("max_records = 4", "max_records = 0"),
            "`batch.max_records`",
        ),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = weir(&["validate", "-c", path.to_str().unwrap()], &[]);
        assert!(!out.status.success(), "case {i} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "case {i}: {err:?} should name {field}");
    }
    // A file that is not a component is refused at load with a clear message.
    let text = good.replace(
        &plugin("orders").display().to_string(),
        "not-a-component.wasm",
    );
    let path = dir.path().join("bad-plugin.toml");
    std::fs::write(&path, text).unwrap();
    let out = weir(&["validate", "-c", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
}

/// SIGINT finishes the in-flight batch, commits and exits 0; what was committed is all there.
#[tokio::test]
async fn sigint_commits_and_exits() {
    needs!("sigint_commits_and_exits": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(quickstart_in(dir.path())).unwrap();
    let config = dir.path().join("stdin.toml");
    std::fs::write(
        &config,
        good.replace("path = \"orders.jsonl\"", "path = \"-\"\nname = \"live\""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(dir.path().join("orders.jsonl")).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input).unwrap();
    stdin.flush().unwrap();
    // Wait until the records are committed (the last, partial batch by max_wait_ms), stdin still open.
    let db = dir.path().join("out/weir.db");
    let started = Instant::now();
    loop {
        if db.exists()
            && query(
                &db,
                "SELECT count(*) FROM sqlite_master WHERE name = 'weir_batches'",
            )
            .await[0][0]
                == "1"
            && count(&db, "SELECT coalesce(sum(records_in), 0) FROM weir_batches").await == 17
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "records were not committed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("records in: 17"),
        "{}",
        show(&out)
    );
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 5);
    let cp = query(
        &db,
        "SELECT position FROM weir_checkpoints WHERE \"partition\" = 'live'",
    )
    .await;
    assert_eq!(cp[0][0], "17");
}

/// `weir schema plan` and `apply` on the embedded SQLite sink.
#[test]
fn schema_plan_and_apply_sqlite() {
    needs!("schema_plan_and_apply_sqlite": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let cfg = config.to_str().unwrap();
    let plan = weir(&["schema", "plan", "-c", cfg], &[]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success() && text.contains("CREATE TABLE \"order_lines\""),
        "{}",
        show(&plan)
    );
    assert!(weir(&["schema", "apply", "-c", cfg], &[]).status.success());
    let again = weir(&["schema", "plan", "-c", cfg], &[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        show(&again)
    );
}

/// Plugins built with the SDK carry the contract version (0.2 by default, 0.1 with its `contract-0-1`
/// feature); a plugin stamped for another version is refused with a message naming the versions.
#[test]
fn contract_version_stamp() {
    needs!("contract_version_stamp": Plugins);
    let orders = std::fs::read(plugin("orders")).unwrap();
    assert_eq!(
        weir::rules::stamped_contract(&orders).as_deref(),
        Some(weir::rules::CONTRACT_VERSION)
    );
    let v01 = std::fs::read(plugin("orders-v01")).unwrap();
    assert_eq!(
        weir::rules::stamped_contract(&v01).as_deref(),
        Some(weir::rules::CONTRACT_VERSIONS[0])
    );
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let needle = b"weir-contract0.2.0";
    let at = orders
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("stamp bytes");
    let mut future = orders.clone();
    future[at + needle.len() - 5] = b'9';
    let wasm = dir.path().join("future.wasm");
    std::fs::write(&wasm, &future).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &plugin("orders").display().to_string(),
        &wasm.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let out = weir(&["validate", "-c", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("contract version 9.2.0") && err.contains("versions 0.1.0 and 0.2.0"),
        "{err}"
    );
}

/// `weir plugin new` projects build as generated and pass `weir plugin test`: Rust (cargo, wasm32-wasip2)
/// Python (componentize-py from scripts/build-plugins.sh's venv) and JavaScript (its componentize-js).
#[test]
fn plugin_new_builds_and_passes_plugin_test() {
    let dir = tempfile::tempdir().unwrap();
    let weir_bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
    let venv =
        std::env::var("WEIR_PY_PLUGINS_VENV").unwrap_or_else(|_| "/var/tmp/weir-py-plugins".into());
    // The C project uses the wit-bindgen that scripts/build-plugins.sh installed.
    let c_tools = std::env::var("WEIR_C_TOOLS").unwrap_or_else(|_| "/var/tmp/weir-c-tools".into());
    let path = format!(
        "{}:{venv}/bin:{c_tools}/bin:{}",
        weir_bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/var/tmp/weir-target".into());
    // The JavaScript project uses the componentize-js that scripts/build-plugins.sh installed (no npm install).
    let js_modules =
        std::env::var("WEIR_JS_PLUGINS_DIR").unwrap_or_else(|_| "/var/tmp/weir-js-plugins".into());
    for (lang, build, wasm) in [
        ("python", vec!["./build.sh"], "hello-py.wasm".to_string()),
        (
            "c",
            vec!["weir/build.sh", "hello-c.wasm", "rule.c"],
            "hello-c.wasm".to_string(),
        ),
        (
            "js",
            vec!["sh", "-c", "npm run -s build"],
            "hello-js.wasm".to_string(),
        ),
        (
            "rust",
            vec!["cargo", "build", "--release", "--target", "wasm32-wasip2"],
            format!("{target}/scaffold/wasm32-wasip2/release/hello_rs.wasm"),
        ),
    ] {
        let name = match lang {
            "python" => "hello-py",
            "js" => "hello-js",
            "c" => "hello-c",
            _ => "hello-rs",
        };
        let made = weir(
            &[
                "plugin",
                "new",
                name,
                "--lang",
                lang,
                "--dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
        );
        assert!(made.status.success(), "{}", show(&made));
        let project = dir.path().join(name);
        if lang == "js" {
            std::os::unix::fs::symlink(
                format!("{js_modules}/node_modules"),
                project.join("node_modules"),
            )
            .unwrap();
        }
        let built = Command::new(build[0])
            .args(&build[1..])
            .current_dir(&project)
            .env("PATH", &path)
            .env("CARGO_TARGET_DIR", format!("{target}/scaffold"))
            .output()
            .unwrap();
        assert!(built.status.success(), "{lang}: {}", show(&built));
        let wasm = if lang == "rust" {
            wasm.into()
        } else {
            project.join(&wasm)
        };
        if lang == "python" {
            // The helper's allocator module is written into the project and linked into the component
            // (componentize-py names each library it links by its path).
            let bytes = std::fs::read(&wasm).unwrap();
            let name = b"weir_rule/_alloc.cpython-314-wasm32-wasi.so";
            assert!(
                bytes.windows(name.len()).any(|w| w == name),
                "the Python project's component does not link weir_rule/_alloc"
            );
        }
        let (input, config) = (project.join("sample.jsonl"), project.join("weir.toml"));
        let out = weir(
            &[
                "plugin",
                "test",
                wasm.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--json",
            ],
            &[],
        );
        assert!(out.status.success(), "{lang}: {}", show(&out));
        let outcomes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kinds: Vec<&str> = outcomes
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["emit", "reject", "reject"], "{lang}");
        assert_eq!(
            outcomes[0]["rows"][0]["cells"]["greeting"], "Hello, Ada!",
            "{lang}"
        );
        // Every language's project builds contract 0.2.
        let stamped = std::fs::read(&wasm).unwrap();
        assert_eq!(
            weir::rules::stamped_contract(&stamped).as_deref(),
            Some(weir::rules::CONTRACT_VERSION),
            "{lang}"
        );
    }
}

/// The admin endpoint of a running worker serves at most 64 connections at once: with 64 idle connections
/// open, the next request is closed unanswered (the worker keeps running); once they close, requests are
/// answered again. Then `weir validate` names a plaintext connection to a non-loopback database host.
#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoint_caps_connections() {
    needs!("admin_endpoint_caps_connections": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(quickstart_in(dir.path())).unwrap();
    let port = free_port();
    let config = dir.path().join("admin.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[worker]\nadmin_bind = \"127.0.0.1:{port}\"\n",
            good.replace("path = \"orders.jsonl\"", "path = \"-\"\nname = \"live\"")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    // A raw request: the whole answer, empty when the connection was closed unanswered.
    let raw = || {
        use std::io::Read;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return None;
        };
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        Some(text)
    };
    let started = Instant::now();
    while raw().is_none_or(|t| !t.starts_with("HTTP/1.1 200")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the admin endpoint never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let refused = (0..100).any(|_| {
        let closed = raw().is_some_and(|t| t.is_empty());
        if !closed {
            std::thread::sleep(Duration::from_millis(20));
        }
        closed
    });
    assert!(refused, "a request past 64 open connections was answered");
    drop(idle);
    let answered = (0..100).any(|_| {
        let ok = raw().is_some_and(|t| t.starts_with("HTTP/1.1 200"));
        if !ok {
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    assert!(answered, "freed connections are served again");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker kept running"
    );
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());

    // A plaintext connection to a host that is not a loopback address is named by `weir validate` (and logged
    // at start). `0.0.0.0` is not a loopback address by name, yet Linux delivers it on this machine (to port 1,
    // refused at once): no packet leaves the machine.
    let remote = dir.path().join("remote.toml");
    std::fs::write(
        &remote,
        good.replace(
            "kind = \"sqlite\"\npath = \"${WEIR_QUICKSTART_DB:-out/weir.db}\"",
            "kind = \"postgres\"\nurl = \"postgres://u:p@0.0.0.0:1/d\"\nconnect_timeout_secs = 1",
        ),
    )
    .unwrap();
    let out = weir(
        &["validate", "-c", remote.to_str().unwrap()],
        &[("WEIR_LOG", "warn")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WITHOUT TLS") && err.contains("0.0.0.0"),
        "{}",
        show(&out)
    );
}

/// `[worker] metrics = "emf"`: the run writes CloudWatch Embedded Metric Format lines on stdout (the last
/// interval's at exit), and their counter changes add up to what the run committed.
#[tokio::test]
async fn emf_lines_add_up_to_the_run() {
    needs!("emf_lines_add_up_to_the_run": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart_in(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "\n[worker]\nmetrics = \"emf\"\nmetrics_interval_secs = 3600\n";
    std::fs::write(&cfg, text).unwrap();
    let db = dir.path().join("weir.db");
    let out = weir(
        &["run", "-c", cfg.to_str().unwrap()],
        &[("WEIR_QUICKSTART_DB", db.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with("{\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!docs.is_empty(), "{}", show(&out));
    let sum = |name: &str| -> i64 {
        docs.iter()
            .filter_map(|d| d.get(name).and_then(|v| v.as_i64()))
            .sum()
    };
    for d in &docs {
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Namespace"], "weir",
            "{d}"
        );
    }
    assert_eq!(sum("weir_records_total"), 17, "{}", show(&out));
    let batches = count(&db, "SELECT count(*) FROM weir_batches").await;
    assert_eq!(sum("weir_batches_total"), batches);
    let sizes: i64 = docs
        .iter()
        .filter_map(|d| d.get("weir_batch_records"))
        .flat_map(|h| h["Counts"].as_array().unwrap().clone())
        .map(|c| c.as_i64().unwrap())
        .sum();
    assert_eq!(sizes, batches);
    assert_eq!(
        sum("weir_rows_total"),
        count(
            &db,
            "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_lines)"
        )
        .await
    );
}

/// `weir status` on SQLite: partitions, checkpoints, last commits and the last hour's dead letters.
#[tokio::test]
async fn status_shows_partitions_and_dead_letters_on_sqlite() {
    needs!("status_shows_partitions_and_dead_letters_on_sqlite": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart_in(dir.path());
    let out = weir(&["run", "-c", config.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let db = dir.path().join("out/weir.db");
    let batches = count(&db, "SELECT count(*) FROM weir_batches").await;
    check_quickstart_status(&config, batches);
}
