//! Helpers shared by the black-box tests: run the real `weir` binary, read the SQLite sink, read RAW.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row};

/// The tables of the quickstart sink: final rows and weir's own.
pub const TABLES: [&str; 5] = [
    "orders",
    "order_lines",
    "weir_dead_letters",
    "weir_batches",
    "weir_checkpoints",
];

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
    for line in raw_records(dir) {
        assert!(
            out.insert(line.id.clone(), line).is_none(),
            "a record is archived twice"
        );
    }
    out
}

/// Every RAW object under `dir` (gzip JSON lines or Parquet): its key relative to `dir`, and its path; none
/// when `dir` does not exist.
pub fn raw_objects(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let name = p.to_string_lossy();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".jsonl.gz") || name.ends_with(".parquet") {
                let key = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((key, p));
            }
        }
    }
    out.sort();
    out
}

/// Every RAW record under `dir`, as many times as it was archived.
pub fn raw_records(dir: &Path) -> Vec<weir::raw::RawLine> {
    raw_objects(dir)
        .into_iter()
        .flat_map(|(key, p)| weir::raw::decode(&key, &std::fs::read(&p).unwrap()).unwrap())
        .collect()
}

/// A fresh PostgreSQL database owned by a fresh MD5-password role, with the `SUPER` stand-in, dropped at the
/// end. The server comes from `WEIR_PG_ADMIN_URL` (a superuser URL; scripts/services.sh sets it).
pub struct TestDb {
    admin: String,
    /// The database name.
    pub name: String,
    /// The role name.
    pub role: String,
    /// The URL weir connects with (the MD5 role).
    pub url: String,
}

fn admin_url() -> String {
    std::env::var("WEIR_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Connects to `url` and returns the client (the connection runs on the current runtime).
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e} (run scripts/services.sh)"));
    tokio::spawn(conn);
    client
}

/// `url` with its database (path) replaced.
fn with_db(url: &str, user: Option<(&str, &str)>, db: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (auth_host, _) = rest.split_once('/').unwrap_or((rest, ""));
    let host = auth_host
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(auth_host);
    match user {
        Some((u, p)) => format!("postgres://{u}:{p}@{host}/{db}"),
        None => format!("postgres://{auth_host}/{db}"),
    }
}

impl TestDb {
    /// Creates the role and the database.
    pub async fn new() -> TestDb {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = format!(
            "{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .unwrap()
                .subsec_nanos()
        );
        let (name, role) = (format!("weir_t_{unique}"), format!("weir_u_{unique}"));
        let admin = admin_url();
        let client = pg(&admin).await;
        client
            .batch_execute(&format!(
                "SET password_encryption = 'md5'; CREATE ROLE {role} LOGIN PASSWORD 'secret-{unique}'"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {role}"))
            .await
            .unwrap();
        let in_db = pg(&with_db(&admin, None, &name)).await;
        in_db
            .batch_execute(
                "CREATE DOMAIN super AS jsonb;
                 CREATE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::super $$;
                 CREATE FUNCTION json_serialize(super) RETURNS varchar LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::text::varchar $$;",
            )
            .await
            .unwrap();
        let url = with_db(&admin, Some((&role, &format!("secret-{unique}"))), &name);
        TestDb {
            admin,
            name,
            role,
            url,
        }
    }

    /// A client connected as the test role.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg(&self.url).await
    }

    /// A superuser client in the test database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        pg(&with_db(&self.admin, None, &self.name)).await
    }

    /// All rows of a query as text (`NULL` for null), for comparisons.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let client = self.client().await;
        let messages = client.simple_query(sql).await.unwrap();
        messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// One number from a query.
    pub async fn count(&self, sql: &str) -> i64 {
        self.rows(sql).await[0][0].parse().unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, synchronously, so a failed test still cleans up.
        let sql = [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP ROLE IF EXISTS {}", self.role),
        ];
        let admin = self.admin.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    for statement in &sql {
                        let _ = client.batch_execute(statement).await;
                    }
                }
            });
        })
        .join();
    }
}

/// The quickstart configuration in `dir` with the sink switched to PostgreSQL at `url`.
pub fn quickstart_postgres_in(dir: &Path, url: &str) -> PathBuf {
    let path = quickstart_in(dir);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "kind = \"sqlite\"\npath = \"${WEIR_QUICKSTART_DB:-out/weir.db}\"",
        &format!("kind = \"postgres\"\nurl = \"{url}\""),
    );
    assert!(
        text.contains("kind = \"postgres\""),
        "the quickstart sink section changed"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The AWS endpoint of the local test server (moto; scripts/services.sh starts it).
pub fn aws_endpoint() -> String {
    std::env::var("WEIR_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// SDK settings for the local AWS test server, with its static test credentials.
pub async fn aws_sdk() -> aws_config::SdkConfig {
    aws_sdk_at(&aws_endpoint()).await
}

/// An S3 client for the local AWS test server (path-style addressing, as it serves buckets).
pub async fn s3() -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws_sdk().await)
            .force_path_style(true)
            .build(),
    )
}

/// SDK settings for a local AWS-protocol server at `endpoint`, with static test credentials.
pub async fn aws_sdk_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(weir::aws::http_client())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "weir-tests",
        ))
        .load()
        .await
}

/// The items of a DynamoDB coordinator table (`[coordinator] kind = "dynamodb"`) whose `pk` starts with
/// `prefix` (`lease#kinesis`, `batch#`, `loader`), each as attribute → value text, on the AWS test server.
pub async fn coordinator_items(table: &str, prefix: &str) -> Vec<BTreeMap<String, String>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = aws_sdk_dynamodb::Client::new(&aws_sdk().await);
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .filter_expression("begins_with(pk, :p)")
            .expression_attribute_values(":p", AttributeValue::S(prefix.into()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan of the coordinator table");
        for item in out.items.unwrap_or_default() {
            items.push(
                item.into_iter()
                    .map(|(k, v)| {
                        let text = match v {
                            AttributeValue::S(s) | AttributeValue::N(s) => s,
                            other => format!("{other:?}"),
                        };
                        (k, text)
                    })
                    .collect(),
            );
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            return items;
        }
    }
}

/// Environment for a `weir` process talking to the local AWS test server.
pub const AWS_TEST_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

/// A name no other test (or earlier run) uses: `{prefix}-{pid}-{n}-{nanos}`.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .unwrap()
            .subsec_nanos()
    )
}

/// A TCP front for a test server: forwards connections while up; while down it refuses new connections and
/// cuts the open ones, as a stopped server would.
pub struct TcpFront {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// `127.0.0.1:{port}` of the front.
    pub addr: String,
    /// Set for fronts that can black-hole their traffic.
    black_hole: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Client writes containing the front's counted needle ([`TcpFront::counting`]).
    counted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TcpFront {
    /// A front for `target` (`host:port`), up.
    pub async fn start(target: &str) -> TcpFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, tasks, target) = (up.clone(), live.clone(), target.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        });
        TcpFront {
            up,
            live,
            addr,
            black_hole: None,
            counted: Default::default(),
        }
    }

    /// Brings the front up or down (down cuts every open connection).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for task in self.live.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

/// `weir run -c config` with every SQL statement it sends traced (`weir::sql=trace`, JSON logs): the run's
/// output and the statements in order.
pub fn run_traced(config: &Path) -> (Output, Vec<String>) {
    let out = weir(
        &[
            "--log-format",
            "json",
            "run",
            "-c",
            config.to_str().unwrap(),
        ],
        &[
            ("WEIR_LOG", "warn,weir::sql=trace"),
            AWS_TEST_ENV[0],
            AWS_TEST_ENV[1],
            AWS_TEST_ENV[2],
        ],
    );
    let statements = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "weir::sql")
        .filter_map(|v| v["fields"]["sql"].as_str().map(str::to_string))
        .collect();
    (out, statements)
}

/// A process running in the background whose stdout and stderr are read while it runs (a process blocked on
/// a full pipe would stop in the middle of a test); killed if the test ends first.
pub struct Background {
    child: Option<std::process::Child>,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Starts `cmd` with its output piped and read.
    pub fn spawn(mut cmd: Command) -> Background {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the process starts");
        fn read(mut from: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = from.read_to_end(&mut bytes);
                bytes
            })
        }
        let readers = vec![
            read(child.stdout.take().unwrap()),
            read(child.stderr.take().unwrap()),
        ];
        Background {
            child: Some(child),
            readers,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Waits for the exit (at most `limit`, else kills it and fails) without blocking the async runtime.
    pub async fn wait(mut self, limit: std::time::Duration) -> Output {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let readers = std::mem::take(&mut self.readers);
        let waiter = tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            let mut read = readers.into_iter().map(|r| r.join().unwrap());
            Output {
                status,
                stdout: read.next().unwrap(),
                stderr: read.next().unwrap(),
            }
        });
        let mut waiter = waiter;
        match tokio::time::timeout(limit, &mut waiter).await {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                let out = waiter.await.unwrap();
                let text = String::from_utf8_lossy(&out.stderr);
                let tail: String = text
                    .chars()
                    .rev()
                    .take(6000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "process {pid} did not finish within {limit:?}; the end of its stderr:\n{tail}"
                );
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills per crash loop: `WEIR_CRASH_ITERATIONS` (the long variants), default 10.
pub fn crash_iterations() -> usize {
    std::env::var("WEIR_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(10)
}

/// Pseudo-random delays for crash tests (xorshift), seeded from the clock or `WEIR_CRASH_SEED`; the seed is
/// printed so a failure can be replayed.
pub struct CrashRng(u64);

impl CrashRng {
    /// A generator; prints its seed.
    pub fn new() -> CrashRng {
        let seed = std::env::var("WEIR_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash seed {seed} (WEIR_CRASH_SEED={seed} replays it)");
        CrashRng(seed)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

impl TestDb {
    /// Waits (up to 60 s) until a worker has committed `n` batches (the ledger may not exist yet).
    pub async fn wait_for_batches(&self, n: i64) {
        let client = self.client().await;
        for _ in 0..3000 {
            if let Ok(row) = client
                .query_one("SELECT count(*) FROM weir_batches", &[])
                .await
                && row.get::<_, i64>(0) >= n
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl TestDb {
    /// Batches in the ledger so far (0 before the ledger exists).
    pub async fn batches_so_far(&self) -> i64 {
        let client = self.client().await;
        client
            .query_one("SELECT count(*) FROM weir_batches", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    }

    /// For kill loops: waits until a running worker has committed `step` batches more than `before`, then a
    /// random 0–`jitter_ms` more, so the kill lands inside a run by construction rather than by a guessed
    /// delay. Returns false when `running` says the worker ended first (or after 120 s without progress).
    pub async fn wait_for_progress(
        &self,
        before: i64,
        step: i64,
        jitter_ms: u64,
        rng: &mut CrashRng,
        mut running: impl FnMut() -> bool,
    ) -> bool {
        let client = self.client().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if !running() {
                return false;
            }
            if let Ok(row) = client
                .query_one("SELECT count(*) FROM weir_batches", &[])
                .await
                && row.get::<_, i64>(0) >= before + step
            {
                tokio::time::sleep(std::time::Duration::from_millis(rng.below(jitter_ms + 1)))
                    .await;
                return running();
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        false
    }
}

/// A config for the misbehave test rule reading `input.txt` in `dir` (local RAW in `raw/`), with `sink` as the
/// `[sink]` body (kind, url or path), table `t(id varchar(64) key, n integer)` plus `table_extra` lines, and
/// `extra` appended (more sections).
pub fn misbehave_config(dir: &Path, sink: &str, table_extra: &str, extra: &str) -> PathBuf {
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"[source]
kind = "file"
path = "input.txt"
[raw]
kind = "local"
dir = "raw"
[rule]
plugin = "{plugin}"
[sink]
{sink}
[[sink.tables]]
name = "t"
primary_key = ["id"]
columns = {{ id = "varchar(64)", n = "integer" }}
{table_extra}
{extra}
"#,
            plugin = plugin("misbehave").display(),
        ),
    )
    .unwrap();
    config
}

/// What a [`TcpFront`] does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontMode {
    /// Forwards both ways.
    Forward,
    /// Keeps every connection open and accepts new ones, but forwards nothing either way: a black hole, as a
    /// dead network path looks to a client.
    BlackHole,
}

impl TcpFront {
    /// A front for `target` that forwards, except that the first `cuts` times a client sends a packet
    /// containing `needle`, the server's answer to it is swallowed and both sides are cut: the server did the
    /// work (a COMMIT), the client never hears of it.
    pub async fn cutting_answer_to(target: &str, needle: &'static [u8], cuts: usize) -> TcpFront {
        Self::start_with(target, Some((needle, cuts)), FrontMode::Forward, None).await
    }

    /// A front for `target` in `mode`; [`TcpFront::set_mode`] changes it.
    pub async fn with_mode(target: &str, mode: FrontMode) -> TcpFront {
        Self::start_with(target, None, mode, None).await
    }

    /// A forwarding front for `target` that counts the requests containing `needle`
    /// ([`TcpFront::requests`]), e.g. an AWS call's `X-Amz-Target`.
    pub async fn counting(target: &str, needle: &'static [u8]) -> TcpFront {
        Self::start_with(target, None, FrontMode::Forward, Some(needle)).await
    }

    /// How many client writes contained the needle of a [`TcpFront::counting`] front.
    pub fn requests(&self) -> usize {
        self.counted.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn start_with(
        target: &str,
        cut: Option<(&'static [u8], usize)>,
        mode: FrontMode,
        count: Option<&'static [u8]>,
    ) -> TcpFront {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let black_hole = Arc::new(AtomicBool::new(mode == FrontMode::BlackHole));
        let live = Arc::new(std::sync::Mutex::new(Vec::new()));
        let budget = Arc::new(AtomicUsize::new(cut.map_or(0, |c| c.1)));
        let needle = cut.map(|c| c.0);
        let counted = Arc::new(AtomicUsize::new(0));
        let (flag, tasks, target, hole, tally) = (
            up.clone(),
            live.clone(),
            target.to_string(),
            black_hole.clone(),
            counted.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, budget, hole, tally) =
                    (target.clone(), budget.clone(), hole.clone(), tally.clone());
                let task = tokio::spawn(async move {
                    let Ok(out) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = inbound.into_split();
                    let (mut sr, mut sw) = out.into_split();
                    let armed = Arc::new(AtomicBool::new(false));
                    let (armed_up, hole_up) = (armed.clone(), hole.clone());
                    let up_task = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while hole_up.load(Ordering::SeqCst) {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            }
                            if let Some(c) = count
                                && buf[..n].windows(c.len()).any(|w| w == c)
                            {
                                tally.fetch_add(1, Ordering::SeqCst);
                            }
                            if let Some(needle) = needle
                                && buf[..n].windows(needle.len()).any(|w| w == needle)
                                && budget
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                                        b.checked_sub(1)
                                    })
                                    .is_ok()
                            {
                                armed_up.store(true, Ordering::SeqCst);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down_task = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if armed.load(Ordering::SeqCst) {
                                return; // the answer is swallowed; both sides are cut
                            }
                            while hole.load(Ordering::SeqCst) {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up_task => {}
                        _ = down_task => {}
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        });
        TcpFront {
            up,
            live,
            addr,
            black_hole: Some(black_hole),
            counted,
        }
    }

    /// Changes a front made by [`TcpFront::with_mode`].
    pub fn set_mode(&self, mode: FrontMode) {
        self.black_hole
            .as_ref()
            .expect("a front made with a mode")
            .store(
                mode == FrontMode::BlackHole,
                std::sync::atomic::Ordering::SeqCst,
            );
    }
}

impl TestDb {
    /// `host:port` of this database's server (the target of a [`TcpFront`]).
    pub fn host_port(&self) -> String {
        let (_, rest) = self.url.split_once('@').expect("user@host in the URL");
        rest.split('/').next().expect("host:port").to_string()
    }

    /// This database's URL with its host and port replaced by `addr` (a [`TcpFront`]).
    pub fn url_via(&self, addr: &str) -> String {
        let (scheme_user, rest) = self.url.split_once('@').expect("user@host in the URL");
        let (_, path) = rest.split_once('/').expect("a database in the URL");
        format!("{scheme_user}@{addr}/{path}")
    }
}

/// The generated orders of the crash tests: (input, order id → expected total).
pub fn orders_input(n: usize) -> (String, std::collections::BTreeMap<String, String>) {
    let mut input = String::new();
    let mut expected_total = std::collections::BTreeMap::new();
    for i in 0..n {
        let lines = i % 5 + 1;
        let cents = (i % 100) as u64 + 100;
        let items: Vec<String> = (0..lines)
            .map(|l| {
                format!(
                    r#"{{"sku": "S{l}", "qty": 2, "unit_price": "{}.{:02}"}}"#,
                    cents / 100,
                    cents % 100
                )
            })
            .collect();
        input.push_str(&format!(
            r#"{{"order_id": "o-{i:05}", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{}]}}"#,
            items.join(", ")
        ));
        input.push('\n');
        let total = cents * 2 * lines as u64;
        expected_total.insert(
            format!("o-{i:05}"),
            format!("{}.{:02}", total / 100, total % 100),
        );
    }
    (input, expected_total)
}

/// `n` orders numbered from `first` (as [`orders_input`] makes them), and their ids.
pub fn orders_input_from(first: usize, n: usize) -> (String, Vec<String>) {
    let mut input = String::new();
    let mut ids = Vec::new();
    for i in first..first + n {
        input.push_str(&format!(
            r#"{{"order_id": "o-{i:05}", "placed_at": "2026-11-21T10:00:00Z", "currency": "EUR", "lines": [{{"sku": "S1", "qty": 2, "unit_price": "1.50"}}]}}"#
        ));
        input.push('\n');
        ids.push(format!("o-{i:05}"));
    }
    (input, ids)
}

impl TestDb {
    /// A superuser URL for this test database.
    pub fn admin_url(&self) -> String {
        with_db(&self.admin, None, &self.name)
    }

    /// Makes this database behave like Redshift for concurrent writers (`../shared/redshift-sim/`):
    /// serializable isolation, table-level write locks, `commit_ms` per write transaction. Run after the
    /// tables exist; sessions opened before keep their old isolation level.
    pub fn install_redshift_sim(&self, commit_ms: u32) {
        let sql = root().join("../shared/redshift-sim/install.sql");
        assert!(
            sql.exists(),
            "{} is needed (the shared/ folder beside the checkout)",
            sql.display()
        );
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                &format!("commit_ms={commit_ms}"),
                "-f",
                sql.to_str().unwrap(),
                &self.admin_url(),
            ])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "redshift-sim install: {}", show(&out));
        // The test role writes the commit counter through the triggers.
        let grant = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!(
                    "GRANT USAGE ON SCHEMA redshift_sim TO {r}; GRANT SELECT, INSERT ON redshift_sim.commits TO {r}",
                    r = self.role
                ),
                &self.admin_url(),
            ])
            .output()
            .expect("psql runs");
        assert!(
            grant.status.success(),
            "redshift-sim grant: {}",
            show(&grant)
        );
    }

    /// Write transactions counted by redshift-sim.
    pub async fn sim_commits(&self) -> i64 {
        self.count("SELECT count(*) FROM redshift_sim.commits")
            .await
    }
}

/// Runs statements on a SQLite database (read-write).
pub async fn execute(db: &Path, sql: &str) {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
}

impl TestDb {
    /// `orders`: order id → total as text (the check of the generated-orders tests, [`orders_input`]).
    pub async fn order_totals(&self) -> BTreeMap<String, String> {
        self.rows("SELECT order_id, CAST(total AS VARCHAR) FROM orders")
            .await
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }
}

/// A free local port for an admin endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on a worker's admin endpoint: (status code, body).
pub fn admin_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An ordered batch of `n` records of source `mem`, partition `p` (ids `mem/p/{first}`…, positions `first`…),
/// following checkpoint `prev`: what the sink tests commit directly, without a source.
pub fn mem_batch(prev: &str, first: usize, n: usize) -> weir::record::Batch {
    let records: Vec<weir::rules::SourceRecord> = (0..n)
        .map(|i| weir::rules::SourceRecord {
            id: format!("mem/p/{}", first + i),
            partition_key: "p".into(),
            arrived_at_ms: 0,
            attributes: vec![],
            payload: b"{}".to_vec(),
        })
        .collect();
    let positions: Vec<String> = (0..n).map(|i| (first + i).to_string()).collect();
    let last = positions.last().expect("at least one record").clone();
    weir::record::Batch {
        id: weir::record::Batch::make_id("mem", "p", &positions[0], &last),
        source: "mem".into(),
        partition: "p".into(),
        prev_position: prev.into(),
        ordered: true,
        positions,
        records,
        bytes: 0,
        started: std::time::Instant::now(),
        received_us: Vec::new(),
        fingerprint: None,
    }
}

/// A service (or build product) a test needs.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// PostgreSQL at `WEIR_PG_ADMIN_URL`.
    Postgres,
    /// The local AWS-protocol server (S3, SQS, DynamoDB, Redshift control plane) at `WEIR_AWS_ENDPOINT`.
    Aws,
    /// kinesalite at `WEIR_KINESIS_ENDPOINT`.
    Kinesis,
    /// A MongoDB-protocol server at `MONGODB_URI`.
    Mongo,
    /// The rule components in `plugins/dist/` (scripts/build-plugins.sh).
    Plugins,
}

impl Service {
    /// Where the service is expected, and whether something answers there.
    fn probe(self) -> (String, bool) {
        let reachable = |url: &str| {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let host_part = rest.split(['/', '?']).next().unwrap_or(rest);
            let host_port = host_part.rsplit_once('@').map_or(host_part, |(_, h)| h);
            use std::net::ToSocketAddrs;
            host_port
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2))
                        .is_ok()
                })
        };
        let url = match self {
            Service::Postgres => admin_url(),
            Service::Aws => aws_endpoint(),
            Service::Kinesis => std::env::var("WEIR_KINESIS_ENDPOINT")
                .unwrap_or_else(|_| "http://127.0.0.1:4567".into()),
            Service::Mongo => {
                std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".into())
            }
            Service::Plugins => {
                let dist = root().join("plugins/dist");
                let built = std::fs::read_dir(&dist).is_ok_and(|mut d| d.next().is_some());
                return (dist.display().to_string(), built);
            }
        };
        let up = reachable(&url);
        (url, up)
    }
}

/// Whether every service `needs` lists is there. Without one, the test is skipped with a message naming it,
/// unless `WEIR_REQUIRE_SERVICES=1` (scripts/test.sh and CI set it), where a missing service fails the test.
pub fn available(test: &str, needs: &[Service]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter_map(|s| {
            let (at, up) = s.probe();
            (!up).then(|| format!("{s:?} ({at})"))
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{test}: needs {}; start them with `eval \"$(scripts/services.sh)\"` and build the plugins with \
         scripts/build-plugins.sh, or run scripts/test.sh",
        missing.join(", ")
    );
    if std::env::var("WEIR_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    // Straight to stderr: the test harness hides what `eprintln!` prints in a passing test.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
    false
}

/// Returns from the test (skipped, with a message) unless the services it names are there.
#[macro_export]
macro_rules! needs {
    ($test:literal: $($service:ident),+) => {
        if !common::available(
            concat!(module_path!(), "::", $test),
            &[$(common::Service::$service),+],
        ) {
            return;
        }
    };
}
pub mod copy_front;

impl copy_front::CopyFront {
    /// A front for the PostgreSQL server at `target` (`host:port`), reading S3 at the AWS test server.
    pub async fn start(target: &str) -> copy_front::CopyFront {
        copy_front::CopyFront::start_with("127.0.0.1:0", target, s3().await).await
    }
}

/// A TLS acceptor with a certificate for `localhost` signed by a fresh CA, and the CA's PEM file (written
/// into `dir`) for the client to trust.
pub fn tls_acceptor(dir: &Path) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(
        tokio_rustls::rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)),
        ca_file,
    )
}

/// `weir status` after the quickstart ran on `config`: one file partition with every batch and record of the
/// run, its last commit moments ago, and the run's 10 dead letters counted by stage and reason; the table
/// says the same.
pub fn check_quickstart_status(config: &Path, batches: i64) {
    let out = weir(&["status", "-c", config.to_str().unwrap(), "--json"], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["source"], "file", "{status:#}");
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{status:#}");
    let p = &partitions[0];
    assert_eq!(p["batches"], batches, "{status:#}");
    assert_eq!(p["records"], 17, "{status:#}");
    assert!(!p["checkpoint"].as_str().unwrap().is_empty(), "{status:#}");
    let ago = p["last_commit_secs_ago"].as_f64().unwrap();
    assert!((0.0..600.0).contains(&ago), "{status:#}");
    let dead = status["dead_letters_last_hour"].as_array().unwrap();
    let total: i64 = dead.iter().map(|d| d["count"].as_i64().unwrap()).sum();
    assert_eq!(total, 10, "{status:#}");
    assert!(
        dead.iter().any(|d| d["reason"]
            .as_str()
            .unwrap()
            .contains("currency: must be three letters")),
        "{status:#}"
    );
    let table = weir(&["status", "-c", config.to_str().unwrap()], &[]);
    assert!(table.status.success(), "{}", show(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("partitions:")
            && text.contains(" until ")
            && text.contains(" ago")
            && text.contains("dead letters in the last hour:")
            && text.contains("currency: must be three letters"),
        "{text}"
    );
}

/// Waits until a loader stalled by `WEIR_PAUSE_BEFORE=merge:N:{gate}` has reached its stall.
pub async fn wait_for_stall(gate: &std::path::Path) {
    let reached = gate.with_extension("reached");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the loader never reached its merge"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
