//! A loopback load generator for `weir serve`: `clients` keep-alive connections post the lines of a file in
//! requests of `records` lines to `/v1/records`, each with its own `X-Request-Id`, and wait for each answer
//! before the next request (a request is answered once committed, so this measures the rate at which records
//! are made durable). A 429 is retried after its `Retry-After`. Prints one Markdown table row.
//!
//!   cargo run --release --example http_load -- ADDR INPUT CLIENTS RECORDS_PER_REQUEST [BEARER_TOKEN]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: http_load ADDR INPUT CLIENTS RECORDS_PER_REQUEST [BEARER_TOKEN]");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let input = std::fs::read_to_string(&args[2]).expect("the input file");
    let clients: usize = args[3].parse().expect("CLIENTS is a number");
    let per: usize = args[4].parse().expect("RECORDS_PER_REQUEST is a number");
    let token = args.get(5).cloned();
    let lines: Vec<&str> = input.lines().filter(|l| !l.trim().is_empty()).collect();
    let bodies: Arc<Vec<String>> = Arc::new(
        lines
            .chunks(per)
            .map(|c| c.iter().map(|l| format!("{l}\n")).collect())
            .collect(),
    );
    let run = format!("{:x}", std::process::id());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (bodies, next, addr, run, token) = (
            bodies.clone(),
            next.clone(),
            addr.clone(),
            run.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut refused = 0usize;
            let stream = TcpStream::connect(&addr).await.expect("connects");
            stream.set_nodelay(true).unwrap();
            let mut conn = BufReader::new(stream);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                loop {
                    let auth = token
                        .as_deref()
                        .map(|t| format!("authorization: Bearer {t}\r\n"))
                        .unwrap_or_default();
                    let head = format!(
                        "POST /v1/records HTTP/1.1\r\nhost: load\r\nx-request-id: load-{run}-{i}\r\n{auth}content-length: {}\r\n\r\n",
                        body.len()
                    );
                    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
                    conn.get_mut().write_all(body.as_bytes()).await.unwrap();
                    let (status, retry_after) = read_response(&mut conn).await;
                    match status {
                        200 => break,
                        429 | 503 => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
                        }
                        other => panic!("request {i}: status {other}"),
                    }
                }
                latencies.push(t.elapsed());
            }
            (latencies, refused)
        }));
    }
    let mut latencies = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await.unwrap();
        latencies.extend(l);
        refused += r;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "| {clients} clients × {per} records/request | {} | {} | {secs:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {refused} |",
        latencies.len(),
        lines.len(),
        latencies.len() as f64 / secs,
        lines.len() as f64 / secs,
        q(0.50),
        q(0.99),
    );
}

/// Reads one response; returns its status and `Retry-After` seconds.
async fn read_response(conn: &mut BufReader<TcpStream>) -> (u16, Option<u64>) {
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let (mut length, mut retry_after) = (0usize, None);
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "retry-after" => retry_after = v.trim().parse().ok(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.unwrap();
    (status, retry_after)
}
