//! The Amazon Kinesis Data Streams source: one reader per owned shard.
//!
//! - The iterator starts from the committed checkpoint (`AFTER_SEQUENCE_NUMBER`, or `AT_SEQUENCE_NUMBER` when
//!   the checkpoint is inside a KPL aggregate) or, for a shard never read, from `initial_position`.
//! - `GetRecords` is paced to at most one call per `poll_ms` (≥ 200 ms keeps within the 5 calls/s per shard
//!   limit), backs off on `ProvisionedThroughputExceeded`, and re-opens an expired iterator from the last
//!   position handed out.
//! - An unreachable endpoint or a server error is retried with exponential backoff (from `poll_ms` up to
//!   [`MAX_RETRY_DELAY`]), opening the iterator included; only errors retrying cannot fix (a missing stream, a
//!   refused permission) stop the shard. Time spent failing does not count as idle time for `idle_exit_secs`.
//! - KPL-aggregated records are split into their user records ([`super::kpl`]); their position and record id
//!   carry the sub-sequence number: `kinesis/{stream}/{shard}/{sequence}/{sub}`.
//! - A closed shard is read to its end; the reader then reports [`ShardReader::ended`], and the worker
//!   checkpoints the shard as [`SHARD_END`] so its children may start.
//! - `MillisBehindLatest` is kept per shard ([`ShardReader::lag`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::time::Instant;

use super::{Acker, CheckpointOnly, Source, SourceError};
use crate::record::Polled;
use crate::rules::SourceRecord;

/// Longest wait between two attempts after consecutive failures.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Error codes after which calling again cannot succeed; anything else (the endpoint unreachable, throttling,
/// a server error) is retried.
fn is_fatal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ResourceNotFoundException"
                | "InvalidArgumentException"
                | "AccessDeniedException"
                | "KMSAccessDeniedException"
                | "KMSNotFoundException"
                | "KMSDisabledException"
                | "KMSInvalidStateException"
                | "KMSOptInRequired"
        )
    )
}

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";

/// The checkpoint of a shard that committed nothing yet but must not start at `LATEST` again: `@{ms}`, read
/// from `AT_TIMESTAMP` ms (the fleet writes it when it first claims a shard with `latest` or `at_timestamp`).
pub fn pinned_position(ms: i64) -> String {
    format!("@{ms}")
}

/// The start time of a [`pinned_position`].
pub fn pinned_start(position: &str) -> Option<i64> {
    position.strip_prefix('@')?.parse().ok()
}

pub use crate::config::InitialPosition;

/// What a shard reader needs.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// The stream name.
    pub stream: String,
    /// The stream's ARN, when calls name it so (a stream in another account).
    pub stream_arn: Option<String>,
    /// The shard id.
    pub shard: String,
    /// Where to start without checkpoint.
    pub initial: InitialPosition,
    /// Most records per `GetRecords` call.
    pub max_records_per_call: i32,
    /// Least time between two `GetRecords` calls on this shard.
    pub poll: Duration,
    /// End the input after this long without a record (drain-and-exit jobs, tests).
    pub idle_exit: Option<Duration>,
    /// The fleet pinned this shard's start (`@{ms}`) as it claimed it: open it at `LATEST` now, and at
    /// `AT_TIMESTAMP` ms after that. Without it, a pinned start is read from `AT_TIMESTAMP` ms.
    pub fresh_pin: bool,
}

/// Reads one shard.
pub struct ShardReader {
    client: aws_sdk_kinesis::Client,
    options: ShardOptions,
    partition: String,
    iterator: Option<String>,
    /// The last position handed out, to re-open an expired iterator.
    last: Option<(String, Option<u64>)>,
    /// Skip user records of this aggregate up to this sub-sequence number (resuming inside an aggregate).
    skip_through: Option<(String, u64)>,
    buffer: VecDeque<Polled>,
    next_call: Instant,
    last_record_at: Instant,
    ended: Arc<AtomicBool>,
    lag_ms: Arc<AtomicI64>,
    done: bool,
    /// The last call found the shard's end while records were still buffered.
    ended_after_buffer: bool,
    /// Waits after consecutive failed calls (reset after a success).
    backoff: crate::retry::Backoff,
}

fn kinesis_error(partition: &str, message: impl std::fmt::Display) -> SourceError {
    SourceError::Io {
        source_name: format!("kinesis {partition}"),
        message: message.to_string(),
    }
}

/// Splits a position `{sequence}` or `{sequence}/{sub}`.
pub fn parse_position(position: &str) -> (String, Option<u64>) {
    match position.split_once('/') {
        Some((seq, sub)) => (seq.to_string(), sub.parse().ok()),
        None => (position.to_string(), None),
    }
}

impl ShardReader {
    /// A reader of one shard; nothing is called until [`Source::seek`].
    pub fn new(client: aws_sdk_kinesis::Client, options: ShardOptions) -> Self {
        let backoff = crate::retry::Backoff::new(
            options.poll.max(Duration::from_millis(100)) * 2,
            MAX_RETRY_DELAY,
        );
        ShardReader {
            client,
            partition: format!("{}/{}", options.stream, options.shard),
            options,
            iterator: None,
            last: None,
            skip_through: None,
            buffer: VecDeque::new(),
            next_call: Instant::now(),
            last_record_at: Instant::now(),
            ended: Arc::new(AtomicBool::new(false)),
            lag_ms: Arc::new(AtomicI64::new(-1)),
            done: false,
            ended_after_buffer: false,
            backoff,
        }
    }

    /// Becomes true when the shard is closed and read to its end.
    pub fn ended(&self) -> Arc<AtomicBool> {
        self.ended.clone()
    }

    /// The latest `MillisBehindLatest` (-1 before the first call).
    pub fn lag(&self) -> Arc<AtomicI64> {
        self.lag_ms.clone()
    }

    /// The first open of a shard at `LATEST` (later opens use the moment it was opened).
    async fn open_latest(&mut self) -> Result<(), SourceError> {
        let at = std::mem::replace(&mut self.options.initial, InitialPosition::Latest);
        let result = self.open_iterator().await;
        self.options.initial = at;
        result
    }

    async fn open_iterator(&mut self) -> Result<(), SourceError> {
        let mut req = self
            .client
            .get_shard_iterator()
            .set_stream_name(by_name(&self.options.stream, &self.options.stream_arn))
            .set_stream_arn(self.options.stream_arn.clone())
            .shard_id(&self.options.shard);
        req = match &self.last {
            Some((seq, None)) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            Some((seq, Some(_))) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            None => match &self.options.initial {
                InitialPosition::TrimHorizon => {
                    req.shard_iterator_type(ShardIteratorType::TrimHorizon)
                }
                InitialPosition::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
                InitialPosition::AtTimestamp(ms) => req
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
            },
        };
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if is_fatal(e.code()) => {
                return Err(kinesis_error(&self.partition, crate::aws::sdk_error(&e)));
            }
            Err(e) => {
                let wait = self.failed();
                tracing::warn!(shard = %self.partition, error = %crate::aws::sdk_error(&e), retry_ms = wait.as_millis() as u64, "GetShardIterator failed; retrying");
                return Ok(());
            }
        };
        self.recovered();
        self.iterator = out.shard_iterator;
        if self.iterator.is_none() {
            self.mark_ended();
        }
        Ok(())
    }

    /// Records a failed call: the next one waits up to `poll_ms` doubled per consecutive failure (jittered),
    /// at most [`MAX_RETRY_DELAY`]. Returns the wait.
    fn failed(&mut self) -> Duration {
        let wait = self.backoff.next_delay().unwrap_or(MAX_RETRY_DELAY);
        self.next_call = Instant::now() + wait;
        // Not knowing whether records wait is not being idle.
        self.last_record_at = Instant::now();
        wait
    }

    /// Records a successful call: after failures, idle time starts again now.
    fn recovered(&mut self) {
        if self.backoff.failures() > 0 {
            self.backoff.reset();
            self.last_record_at = Instant::now();
        }
    }

    fn mark_ended(&mut self) {
        self.done = true;
        self.ended.store(true, Ordering::SeqCst);
        tracing::info!(shard = %self.partition, "shard closed and read to its end");
    }

    /// One paced `GetRecords` call into the buffer.
    async fn fetch(&mut self) -> Result<(), SourceError> {
        tokio::time::sleep_until(self.next_call).await;
        self.next_call = Instant::now() + self.options.poll;
        let Some(iterator) = self.iterator.clone() else {
            return self.open_iterator().await;
        };
        let out = match self
            .client
            .get_records()
            .shard_iterator(iterator)
            .set_stream_arn(self.options.stream_arn.clone())
            .limit(self.options.max_records_per_call)
            .send()
            .await
        {
            Ok(out) => {
                self.recovered();
                out
            }
            Err(e) => return self.get_records_failed(&e),
        };
        if let Some(lag) = out.millis_behind_latest {
            self.lag_ms.store(lag, Ordering::Relaxed);
            crate::metrics::global().set(
                "weir_kinesis_millis_behind_latest",
                &[("shard", &self.partition)],
                lag as f64,
            );
        }
        self.buffer_records(out.records());
        if !out.records().is_empty() {
            self.skip_through = None; // the aggregate it protected has been read
        }
        match out.next_shard_iterator {
            Some(next) => self.iterator = Some(next),
            None => {
                self.iterator = None;
                if self.buffer.is_empty() {
                    self.mark_ended();
                } else {
                    // Hand out what is buffered first.
                    self.ended_after_buffer = true;
                }
            }
        }
        Ok(())
    }

    /// A failed `GetRecords`: re-open an expired iterator, back off on throttling and transient errors, and
    /// stop the shard only on an error that retrying cannot fix.
    fn get_records_failed(
        &mut self,
        e: &aws_sdk_kinesis::error::SdkError<
            aws_sdk_kinesis::operation::get_records::GetRecordsError,
        >,
    ) -> Result<(), SourceError> {
        match e.code() {
            Some("ExpiredIteratorException") => {
                tracing::info!(shard = %self.partition, "iterator expired; re-opening from the last position");
                self.iterator = None;
                if let Some((seq, Some(sub))) = &self.last {
                    self.skip_through = Some((seq.clone(), *sub));
                }
            }
            Some("ProvisionedThroughputExceededException" | "LimitExceededException") => {
                let wait = self.failed();
                tracing::warn!(shard = %self.partition, retry_ms = wait.as_millis() as u64, "read throughput exceeded; backing off");
            }
            code if is_fatal(code) => {
                return Err(kinesis_error(
                    &self.partition,
                    format!("GetRecords failed: {}", crate::aws::sdk_error(e)),
                ));
            }
            _ => {
                let wait = self.failed();
                tracing::warn!(shard = %self.partition, error = %crate::aws::sdk_error(e), retry_ms = wait.as_millis() as u64, "GetRecords failed; retrying");
            }
        }
        Ok(())
    }

    /// Splits the records of one `GetRecords` reply into user records and buffers them with their positions.
    fn buffer_records(&mut self, records: &[aws_sdk_kinesis::types::Record]) {
        for r in records {
            let seq = r.sequence_number();
            let arrived_at_ms = r
                .approximate_arrival_timestamp()
                .and_then(|t| t.to_millis().ok())
                .unwrap_or(0);
            let key = r.partition_key().unwrap_or("");
            for user in super::kpl::deaggregate(key, r.data().as_ref()) {
                if let (Some((skip_seq, through)), Some(sub)) = (&self.skip_through, user.sub)
                    && skip_seq == seq
                    && sub <= *through
                {
                    continue;
                }
                let (id_tail, position) = match user.sub {
                    Some(sub) => (format!("{seq}/{sub}"), format!("{seq}/{sub}")),
                    None => (seq.to_string(), seq.to_string()),
                };
                let mut attributes = vec![
                    ("kinesis:SequenceNumber".to_string(), seq.to_string()),
                    ("kinesis:ShardId".to_string(), self.options.shard.clone()),
                ];
                if let Some(sub) = user.sub {
                    attributes.push(("kinesis:SubSequenceNumber".into(), sub.to_string()));
                }
                self.buffer.push_back(Polled {
                    record: SourceRecord {
                        id: format!(
                            "kinesis/{}/{}/{id_tail}",
                            self.options.stream, self.options.shard
                        ),
                        partition_key: user.partition_key,
                        arrived_at_ms,
                        attributes,
                        payload: user.data,
                    },
                    position,
                });
            }
        }
    }
}

#[async_trait]
impl Source for ShardReader {
    fn source(&self) -> &str {
        "kinesis"
    }

    fn partition(&self) -> &str {
        &self.partition
    }

    async fn seek(&mut self, position: &str) -> Result<(), SourceError> {
        if position == SHARD_END {
            self.mark_ended();
            return Ok(());
        }
        if let Some(ms) = pinned_start(position) {
            // A shard that has committed nothing yet, pinned to the moment it was first claimed.
            self.options.initial = InitialPosition::AtTimestamp(ms);
            if self.options.fresh_pin {
                return self.open_latest().await;
            }
        } else if !position.is_empty() {
            let (seq, sub) = parse_position(position);
            if let Some(sub) = sub {
                self.skip_through = Some((seq.clone(), sub));
            }
            self.last = Some((seq, sub));
        }
        if self.options.initial == InitialPosition::Latest {
            // Never LATEST twice: an iterator that expires before the first record re-opens at this moment.
            self.options.initial =
                InitialPosition::AtTimestamp(crate::record::wall_clock_us() / 1000);
            return self.open_latest().await;
        }
        self.open_iterator().await
    }

    async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
        loop {
            if let Some(p) = self.buffer.pop_front() {
                self.last = Some(parse_position(&p.position));
                self.last_record_at = Instant::now();
                return Ok(Some(p));
            }
            if self.ended_after_buffer {
                self.ended_after_buffer = false;
                self.mark_ended();
            }
            if self.done {
                return Ok(None);
            }
            if let Some(idle) = self.options.idle_exit
                && self.last_record_at.elapsed() >= idle
            {
                tracing::info!(shard = %self.partition, "no record for idle_exit_secs: ending input");
                return Ok(None);
            }
            self.fetch().await?;
        }
    }

    fn acker(&self) -> Box<dyn Acker> {
        // The durable position is the checkpoint committed with the rows.
        Box::new(CheckpointOnly)
    }
}

/// Puts every non-empty line into the stream (the producer behind `weir produce`), 500 records per
/// `PutRecords` call, retrying records the stream refused. The partition key is the JSON field `key_field` of
/// the line when there is one, else the line number. With `aggregate` > 1, lines are packed into
/// KPL-aggregated records of that many user records. Returns the number of user records sent.
pub async fn put_lines(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    stream_arn: Option<&str>,
    lines: &[Vec<u8>],
    key_field: &str,
    aggregate: usize,
) -> Result<usize, SourceError> {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let key_of = |n: usize, line: &[u8]| -> String {
        serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| match v.get(key_field)? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(x) => Some(x.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| (n + 1).to_string())
    };
    let users: Vec<(String, &[u8])> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(n, l)| (key_of(n, l), l.as_slice()))
        .collect();
    let entries: Vec<PutRecordsRequestEntry> = users
        .chunks(aggregate)
        .map(|chunk| {
            let (key, data) = if chunk.len() == 1 && aggregate == 1 {
                (chunk[0].0.clone(), chunk[0].1.to_vec())
            } else {
                let pairs: Vec<(&str, &[u8])> =
                    chunk.iter().map(|(k, d)| (k.as_str(), *d)).collect();
                (chunk[0].0.clone(), super::kpl::aggregate(&pairs))
            };
            PutRecordsRequestEntry::builder()
                .partition_key(key)
                .data(Blob::new(data))
                .build()
                .expect("key and data are set")
        })
        .collect();
    put_entries(client, stream, stream_arn, entries).await?;
    Ok(users.len())
}

/// Puts records, 500 per `PutRecords` call, retrying the entries Kinesis refused (throttling) with backoff.
pub async fn put_entries(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    stream_arn: Option<&str>,
    entries: Vec<aws_sdk_kinesis::types::PutRecordsRequestEntry>,
) -> Result<(), SourceError> {
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let err = |m: String| kinesis_error(stream, m);
    for chunk in entries.chunks(500) {
        let mut pending = chunk.to_vec();
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_millis(12_800))
                .with_attempts(8);
        loop {
            let out = client
                .put_records()
                .set_stream_name(by_name(stream, &stream_arn.map(str::to_string)))
                .set_stream_arn(stream_arn.map(str::to_string))
                .set_records(Some(pending.clone()))
                .send()
                .await
                .map_err(|e| err(crate::aws::sdk_error(&e)))?;
            let refused: Vec<PutRecordsRequestEntry> = out
                .records()
                .iter()
                .zip(&pending)
                .filter(|(r, _)| r.error_code().is_some())
                .map(|(_, e)| e.clone())
                .collect();
            if refused.is_empty() {
                break;
            }
            let Some(wait) = backoff.next_delay() else {
                return Err(err(format!(
                    "{} records refused after 8 attempts",
                    refused.len()
                )));
            };
            tokio::time::sleep(wait).await;
            pending = refused;
        }
    }
    Ok(())
}

/// The `StreamName` of a call: none when the stream is named by ARN (a call names it one way only).
pub fn by_name(stream: &str, arn: &Option<String>) -> Option<String> {
    arn.is_none().then(|| stream.to_string())
}

/// How far a shard's checkpoint is behind the tip of the shard, in milliseconds (`weir status`): one
/// `GetShardIterator` from the checkpoint (as a reader resuming there would open it) and one `GetRecords` of
/// at most one record, whose `MillisBehindLatest` answers. A shard read to its end is 0 behind; `None`
/// when Kinesis does not say. Counts against the shard's 5 reads per second like any reader's call.
pub async fn shard_lag(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    stream_arn: &Option<String>,
    shard: &str,
    checkpoint: &str,
) -> Result<Option<i64>, String> {
    if checkpoint == SHARD_END {
        return Ok(Some(0));
    }
    let mut req = client
        .get_shard_iterator()
        .set_stream_name(by_name(stream, stream_arn))
        .set_stream_arn(stream_arn.clone())
        .shard_id(shard);
    req = match (pinned_start(checkpoint), checkpoint.is_empty()) {
        (Some(ms), _) => req
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(ms)),
        (None, true) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        (None, false) => {
            let (seq, sub) = parse_position(checkpoint);
            // Inside an aggregate the record holding the rest of it is read again.
            let kind = match sub {
                Some(_) => ShardIteratorType::AtSequenceNumber,
                None => ShardIteratorType::AfterSequenceNumber,
            };
            req.shard_iterator_type(kind).starting_sequence_number(seq)
        }
    };
    let iterator = req
        .send()
        .await
        .map_err(|e| crate::aws::sdk_error(&e))?
        .shard_iterator
        .ok_or("no shard iterator")?;
    let out = client
        .get_records()
        .shard_iterator(iterator)
        .limit(1)
        .set_stream_arn(stream_arn.clone())
        .send()
        .await
        .map_err(|e| crate::aws::sdk_error(&e))?;
    Ok(out.millis_behind_latest)
}
