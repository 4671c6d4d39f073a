//! `weir status`: what an on-call engineer asks first — who holds which partition and how far it is, when
//! each partition last committed, what waits for the loader, and what was dead-lettered in the last hour.

use super::*;

/// Reasons of the last hour's dead letters shown (the most frequent).
const MAX_REASONS: usize = 20;
/// Longest reason shown in the table, in characters (the JSON has it whole).
const REASON_CHARS: usize = 100;

#[derive(serde::Serialize)]
struct Partition {
    partition: String,
    owner: String,
    lease: &'static str,
    /// Until when the lease holds (RFC 3339), while someone holds it.
    lease_expires_at: Option<String>,
    checkpoint: String,
    batches: i64,
    records: i64,
    last_commit: Option<String>,
    last_commit_secs_ago: Option<f64>,
    /// Kinesis: how far the checkpoint is behind the tip of the shard (`MillisBehindLatest`).
    lag_ms: Option<i64>,
}

impl Partition {
    /// A partition neither leased nor committed yet (as far as known).
    fn new(partition: String) -> Partition {
        Partition {
            partition,
            owner: String::new(),
            lease: "-",
            lease_expires_at: None,
            checkpoint: String::new(),
            batches: 0,
            records: 0,
            last_commit: None,
            last_commit_secs_ago: None,
            lag_ms: None,
        }
    }
}

#[derive(serde::Serialize)]
struct Loader {
    owner: String,
    lease: &'static str,
    /// Until when its holder has it (RFC 3339; none while released).
    expires_at: Option<String>,
    epoch: String,
}

/// An SQS source's queue, as SQS counts it (approximate).
#[derive(serde::Serialize)]
struct Queue {
    /// Messages waiting to be received.
    waiting: i64,
    /// Received by a worker and not yet deleted (in flight).
    in_flight: i64,
    /// Sent with a delay that has not run out.
    delayed: i64,
}

#[derive(serde::Serialize)]
struct Pending {
    batches: usize,
    bytes: u64,
}

#[derive(serde::Serialize)]
struct Status {
    source: String,
    sink: String,
    partitions: Vec<Partition>,
    /// SQS: the queue's backlog (what a lag is for a queue).
    queue: Option<Queue>,
    pending_merge: Option<Pending>,
    loader: Option<Loader>,
    dead_letters_last_hour: Vec<weir::sink::DeadLetterCount>,
}

pub(super) async fn status(path: &Path, json: bool) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    let now_us = weir::record::wall_clock_us();
    let sink = weir::worker::connect_sink(&loaded).await?;
    let coordination = weir::worker::open_coordination(&loaded).await?;
    let registry = weir::worker::open_registry(&loaded, coordination.as_ref()).await?;
    let coordinator = weir::worker::coordinator_view(sink.clone(), coordination.as_ref());
    let source = match &loaded.config.source {
        config::SourceConfig::File { .. } => "file",
        config::SourceConfig::Sqs { .. } => "sqs",
        config::SourceConfig::Kinesis { .. } => "kinesis",
        config::SourceConfig::Http(_) => "http",
        config::SourceConfig::S3 { .. } => "s3",
    };
    // A partition's input fingerprint row is weir's own bookkeeping, not a partition.
    let fingerprint = weir::source::fingerprint_partition("");
    let leases: Vec<_> = coordinator
        .leases(source, now_us)
        .await?
        .into_iter()
        .filter(|l| !l.partition.ends_with(&fingerprint))
        .collect();
    let activity = sink.activity(source).await?;
    let mut partitions: std::collections::BTreeMap<String, Partition> = Default::default();
    for l in leases {
        let p = partitions
            .entry(l.partition.clone())
            .or_insert_with(|| Partition::new(l.partition));
        p.lease = lease_state(&l.owner, l.expired);
        p.lease_expires_at = (l.expires_us > 0 && !l.owner.is_empty())
            .then(|| weir::schema::format_timestamp_us(l.expires_us));
        p.owner = l.owner;
        p.checkpoint = l.position;
    }
    for a in activity {
        let p = partitions
            .entry(a.partition.clone())
            .or_insert_with(|| Partition::new(a.partition.clone()));
        p.batches = a.batches;
        p.records = a.records;
        p.last_commit = Some(weir::schema::format_timestamp_us(a.last_commit_us));
        p.last_commit_secs_ago = Some((now_us - a.last_commit_us).max(0) as f64 / 1e6);
    }
    #[cfg(feature = "kinesis")]
    kinesis_lag(&loaded, &mut partitions).await;
    let pending_merge = match &registry {
        Some(r) => {
            let (batches, bytes) = r.pending_work(100_000).await?;
            Some(Pending { batches, bytes })
        }
        None => None,
    };
    // The loader lease, wherever the registry keeps it (the sink's tables, PostgreSQL or DynamoDB).
    let loader = match &registry {
        Some(r) => r.loader().await?.map(|l| Loader {
            lease: lease_state(&l.owner, l.expires_us < now_us),
            expires_at: (l.expires_us > 0 && !l.owner.is_empty())
                .then(|| weir::schema::format_timestamp_us(l.expires_us)),
            owner: l.owner,
            epoch: l.epoch,
        }),
        None => None,
    };
    let status = Status {
        source: source.to_string(),
        sink: sink.describe(),
        partitions: partitions.into_values().collect(),
        queue: sqs_backlog(&loaded).await,
        pending_merge,
        loader,
        dead_letters_last_hour: sink
            .dead_letter_counts(now_us - 3_600_000_000, MAX_REASONS)
            .await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "source: {}   sink: {}", s.source, s.sink);
    let _ = writeln!(out, "\npartitions:");
    let rows: Vec<[String; 9]> = s
        .partitions
        .iter()
        .map(|p| {
            [
                p.partition.clone(),
                if p.owner.is_empty() {
                    "-".into()
                } else {
                    p.owner.clone()
                },
                p.lease.to_string(),
                // The time of day the lease runs out (UTC); the JSON has the whole timestamp.
                p.lease_expires_at
                    .as_deref()
                    .and_then(|t| t.get(11..19))
                    .map(|t| format!("{t}Z"))
                    .unwrap_or_else(|| "-".into()),
                short(&p.checkpoint, 24),
                p.batches.to_string(),
                p.records.to_string(),
                p.last_commit_secs_ago
                    .map(|s| format!("{} ago", ago(s)))
                    .unwrap_or_else(|| "never".into()),
                p.lag_ms
                    .map(|ms| ago(ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "partition",
            "owner",
            "lease",
            "until",
            "checkpoint",
            "batches",
            "records",
            "last commit",
            "behind",
        ],
        &rows,
    );
    if let Some(q) = &s.queue {
        let _ = writeln!(
            out,
            "\nqueue: {} waiting, {} in flight, {} delayed (approximate)",
            q.waiting, q.in_flight, q.delayed
        );
    }
    if let Some(p) = &s.pending_merge {
        let _ = writeln!(
            out,
            "\nwaiting for the loader: {} staged batches, {} bytes",
            p.batches, p.bytes
        );
        match &s.loader {
            Some(l) if !l.owner.is_empty() => {
                let _ = writeln!(
                    out,
                    "loader: {} (lease {} until {}, epoch {})",
                    l.owner,
                    l.lease,
                    l.expires_at.as_deref().unwrap_or("-"),
                    l.epoch
                );
            }
            Some(_) => {
                let _ = writeln!(out, "loader: none (the lease is free)");
            }
            None => {}
        }
    }
    let _ = writeln!(out, "\ndead letters in the last hour:");
    if s.dead_letters_last_hour.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let rows: Vec<[String; 3]> = s
            .dead_letters_last_hour
            .iter()
            .map(|d| {
                [
                    d.count.to_string(),
                    d.stage.clone(),
                    short(&d.reason, REASON_CHARS),
                ]
            })
            .collect();
        table(&mut out, &["count", "stage", "reason"], &rows);
    }
    out
}

/// Columns padded to their widest cell.
fn table<const N: usize>(out: &mut String, head: &[&str; N], rows: &[[String; N]]) {
    use std::fmt::Write as _;
    let mut width = head.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    let _ = writeln!(out, "{}", line(head.to_vec()));
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn lease_state(owner: &str, expired: bool) -> &'static str {
    match (owner.is_empty(), expired) {
        (true, _) => "free",
        (false, true) => "expired",
        (false, false) => "held",
    }
}

fn short(text: &str, chars: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= chars {
        one_line
    } else {
        let cut: String = one_line.chars().take(chars.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn ago(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// Each Kinesis shard's lag behind the tip of the shard, read from its checkpoint. A shard Kinesis does not
/// answer for keeps no lag, and the reason goes to stderr: status shows what it can.
#[cfg(feature = "kinesis")]
async fn kinesis_lag(
    loaded: &config::Loaded,
    partitions: &mut std::collections::BTreeMap<String, Partition>,
) {
    let config::SourceConfig::Kinesis {
        stream, stream_arn, ..
    } = &loaded.config.source
    else {
        return;
    };
    let client = loaded.config.source_kinesis().await;
    for p in partitions.values_mut() {
        let Some(shard) = p.partition.strip_prefix(&format!("{stream}/")) else {
            continue;
        };
        match weir::source::kinesis::shard_lag(&client, stream, stream_arn, shard, &p.checkpoint)
            .await
        {
            Ok(lag) => p.lag_ms = lag,
            Err(e) => eprintln!("{}: lag unknown: {e}", p.partition),
        }
    }
}

/// An SQS source's backlog (`GetQueueAttributes`); `None` for other sources, or with the reason on stderr
/// when SQS does not answer.
async fn sqs_backlog(loaded: &config::Loaded) -> Option<Queue> {
    #[cfg(feature = "sqs")]
    if let config::SourceConfig::Sqs { queue_url, .. } = &loaded.config.source {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let client = loaded.config.source_sqs().await;
        let out = client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await;
        return match out {
            Ok(out) => {
                let n = |a: A| {
                    out.attributes()
                        .and_then(|m| m.get(&a))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                Some(Queue {
                    waiting: n(A::ApproximateNumberOfMessages),
                    in_flight: n(A::ApproximateNumberOfMessagesNotVisible),
                    delayed: n(A::ApproximateNumberOfMessagesDelayed),
                })
            }
            Err(e) => {
                eprintln!("{queue_url}: backlog unknown: {}", weir::aws::sdk_error(&e));
                None
            }
        };
    }
    let _ = loaded;
    None
}
