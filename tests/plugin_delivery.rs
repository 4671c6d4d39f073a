//! Rules delivered by reference and digest, through the real `weir` binary: `weir plugin publish` to the
//! local S3 server, `[rule] plugin = "s3://…"` / `"https://…"` with `sha256`, the worker's private cache,
//! and a digest mismatch that stops the worker before any record is read.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

/// The quickstart in `dir` with `[rule]`'s plugin line replaced by `rule_lines`, a cache of its own and
/// the AWS test server.
fn config_with(dir: &Path, rule_lines: &str) -> PathBuf {
    let cfg = quickstart_in(dir);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let plugin_line = text
        .lines()
        .find(|l| l.starts_with("plugin = "))
        .unwrap()
        .to_string();
    let text = text.replace(
        &plugin_line,
        &format!(
            "{rule_lines}\ncache_dir = \"{}\"",
            dir.join("cache").display()
        ),
    ) + &format!(
        "\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
        aws_endpoint()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The value of `name = "…"` in `weir plugin publish`'s output.
fn printed(out: &std::process::Output, name: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{name} = \"");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {name} line in {}", show(out)))
        .to_string()
}

fn run(cfg: &Path, db: &Path) -> std::process::Output {
    let db = db.display().to_string();
    let mut env = AWS_TEST_ENV.to_vec();
    env.push(("WEIR_QUICKSTART_DB", &db));
    weir(&["run", "-c", cfg.to_str().unwrap()], &env)
}

/// `weir plugin publish` uploads under a digest-named key and prints the lines that load it; a worker
/// configured with them fetches the plugin once, keeps it in its private cache (0700) and loads the same
/// rows as the local plugin; it starts again from the cache with the object gone, recompiles a cached
/// component that no longer matches its recorded digest, and publishing other bytes over a key is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_published_plugin_loads_by_digest_from_s3() {
    needs!("a_published_plugin_loads_by_digest_from_s3": Aws, Plugins);
    let s3 = s3().await;
    let bucket = unique("weir-rules");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(plugin("orders")).unwrap();
    let digest = weir::plugin_fetch::sha256_hex(&wasm);

    // The reference: the same rule from its local file.
    let local = tempfile::tempdir().unwrap();
    let local_cfg = quickstart_in(local.path());
    let local_db = local.path().join("local.db");
    let out = run(&local_cfg, &local_db);
    assert!(out.status.success(), "{}", show(&out));

    let publish_cfg = config_with(dir.path(), "plugin = \"unused.wasm\"");
    let orders = plugin("orders").display().to_string();
    let destination = format!("s3://{bucket}/rules/");
    let publish = |what: &str, to: &str| {
        weir(
            &[
                "plugin",
                "publish",
                what,
                to,
                "-c",
                publish_cfg.to_str().unwrap(),
            ],
            &AWS_TEST_ENV,
        )
    };
    let out = publish(&orders, &destination);
    assert!(out.status.success(), "{}", show(&out));
    let location = printed(&out, "plugin");
    assert_eq!(
        location,
        format!("s3://{bucket}/rules/orders-{}.wasm", &digest[..12])
    );
    assert_eq!(printed(&out, "sha256"), digest);
    // Again: the same bytes are already there.
    let again = publish(&orders, &destination);
    assert!(again.status.success(), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds this plugin"),
        "{}",
        show(&again)
    );
    // Other bytes never replace a published plugin.
    let other = publish(&plugin("misbehave").display().to_string(), &location);
    assert!(!other.status.success(), "{}", show(&other));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("already holds another plugin"),
        "{}",
        show(&other)
    );

    let cfg = config_with(
        dir.path(),
        &format!("plugin = \"{location}\"\nsha256 = \"{digest}\""),
    );
    let db = dir.path().join("fetched.db");
    let out = run(&cfg, &db);
    assert!(out.status.success(), "{}", show(&out));
    let tables = ["orders", "order_lines"];
    assert_eq!(
        snapshot(&db, &tables).await,
        snapshot(&local_db, &tables).await
    );
    let cache = dir.path().join("cache");
    let fetched = cache.join("plugins").join(format!("{digest}.wasm"));
    assert_eq!(std::fs::read(&fetched).unwrap(), wasm);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // The object is gone and a compiled entry was altered: the worker starts from the cache, compiles again.
    s3.delete_object()
        .bucket(&bucket)
        .key(location.trim_start_matches(&format!("s3://{bucket}/")))
        .send()
        .await
        .unwrap();
    let compiled: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
    let mut bytes = std::fs::read(&compiled[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&compiled[0], &bytes).unwrap();
    let db2 = dir.path().join("again.db");
    let out = weir(
        &["run", "-c", cfg.to_str().unwrap()],
        &[
            AWS_TEST_ENV[0],
            AWS_TEST_ENV[1],
            AWS_TEST_ENV[2],
            ("WEIR_QUICKSTART_DB", db2.to_str().unwrap()),
            ("WEIR_LOG", "info"),
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("does not match its recorded digest") && log.contains("compiled plugin"),
        "{}",
        show(&out)
    );
    assert!(!log.contains("fetched plugin"), "{}", show(&out));
    assert_ne!(std::fs::read(&compiled[0]).unwrap(), bytes);
    assert_eq!(
        snapshot(&db2, &tables).await,
        snapshot(&local_db, &tables).await
    );
}

/// A plugin whose bytes are not the configured digest stops the worker before any record is read (no RAW,
/// no rows), naming both digests — remote or local; a remote plugin without a digest is a config error.
#[tokio::test(flavor = "multi_thread")]
async fn a_digest_mismatch_stops_the_worker_before_any_record() {
    needs!("a_digest_mismatch_stops_the_worker_before_any_record": Aws, Plugins);
    let s3 = s3().await;
    let bucket = unique("weir-rules");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let wasm = std::fs::read(plugin("orders")).unwrap();
    let digest = weir::plugin_fetch::sha256_hex(&wasm);
    s3.put_object()
        .bucket(&bucket)
        .key("orders.wasm")
        .body(wasm.into())
        .send()
        .await
        .unwrap();
    let wrong = weir::plugin_fetch::sha256_hex(b"another plugin");
    let remote = format!("plugin = \"s3://{bucket}/orders.wasm\"");
    let local = format!("plugin = \"{}\"", plugin("orders").display());
    for lines in [&remote, &local] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_with(dir.path(), &format!("{lines}\nsha256 = \"{wrong}\""));
        let db = dir.path().join("weir.db");
        let out = run(&cfg, &db);
        assert!(!out.status.success(), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&digest) && err.contains(&wrong) && err.contains("rule.sha256"),
            "{}",
            show(&out)
        );
        assert!(!db.exists(), "the sink was opened: {}", show(&out));
        assert!(!dir.path().join("out/raw").exists(), "RAW was written");
        assert!(
            !dir.path()
                .join("cache/plugins")
                .join(format!("{wrong}.wasm"))
                .exists()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), &remote);
    let out = weir(&["validate", "-c", cfg.to_str().unwrap()], &AWS_TEST_ENV);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rule.sha256"),
        "{}",
        show(&out)
    );
}

/// An HTTPS server for one file: `GET /latest` redirects to `/rules/orders.wasm`, which answers `body`;
/// anything else is 404. Returns the port and the count of requests served.
async fn https_server(dir: &Path, body: Vec<u8>) -> (u16, PathBuf, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (acceptor, ca) = tls_acceptor(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let (body, count) = (Arc::new(body), served.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, body, count) = (acceptor.clone(), body.clone(), count.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(client).await?;
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                count.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let head = match path.as_str() {
                    "/latest" => "HTTP/1.1 302 Found\r\nLocation: /rules/orders.wasm\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                    "/rules/orders.wasm" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    ),
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                };
                tls.write_all(head.as_bytes()).await?;
                if path == "/rules/orders.wasm" {
                    tls.write_all(&body).await?;
                }
                tls.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    (port, ca, served)
}

/// A plugin on a web server: fetched over TLS trusting `rule.tls_ca_file`, following a redirect, verified,
/// then loaded from the cache without the server; an unknown CA or a missing file stops the worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_over_https_is_verified_and_cached() {
    needs!("a_plugin_over_https_is_verified_and_cached": Plugins);
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(plugin("orders")).unwrap();
    let digest = weir::plugin_fetch::sha256_hex(&wasm);
    let (port, ca, served) = https_server(dir.path(), wasm).await;
    let url = format!("https://localhost:{port}/latest");
    let rule = |url: &str, ca: Option<&Path>| {
        let ca = ca
            .map(|c| format!("\ntls_ca_file = \"{}\"", c.display()))
            .unwrap_or_default();
        format!("plugin = \"{url}\"\nsha256 = \"{digest}\"{ca}")
    };

    // Without the CA the certificate is refused.
    let untrusted = tempfile::tempdir().unwrap();
    let cfg = config_with(untrusted.path(), &rule(&url, None));
    let out = run(&cfg, &untrusted.path().join("weir.db"));
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot fetch rule.plugin"),
        "{}",
        show(&out)
    );
    // A missing file is not retried.
    let before = served.load(Ordering::SeqCst);
    let missing = format!("https://localhost:{port}/nothing.wasm");
    let cfg = config_with(untrusted.path(), &rule(&missing, Some(&ca)));
    let out = run(&cfg, &untrusted.path().join("weir.db"));
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        show(&out)
    );
    assert_eq!(served.load(Ordering::SeqCst), before + 1);

    let cfg = config_with(dir.path(), &rule(&url, Some(&ca)));
    let before = served.load(Ordering::SeqCst);
    let out = run(&cfg, &dir.path().join("first.db"));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        served.load(Ordering::SeqCst),
        before + 2,
        "the redirect, then the file"
    );
    assert!(
        dir.path()
            .join("cache/plugins")
            .join(format!("{digest}.wasm"))
            .exists()
    );
    // Served from the cache: the server sees no request.
    let out = run(&cfg, &dir.path().join("second.db"));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(served.load(Ordering::SeqCst), before + 2);
    assert_eq!(
        count(&dir.path().join("second.db"), "SELECT count(*) FROM orders").await,
        count(&dir.path().join("first.db"), "SELECT count(*) FROM orders").await
    );
}
