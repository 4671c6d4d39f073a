//! One S3 object version as an ordered source: ranged GETs, gzip decoded as it streams, records by format.
//!
//! Positions are `{n}@{offset}`: the record's number in the object (from 1) and the byte offset (of the
//! decoded stream) just after it. Resuming a plain `lines` object is a ranged GET from the offset; a gzip or
//! `csv` object is read again from its start and the first `n` records skipped.
//!
//! Reading is blocking code (`std::io::Read` chains: ranges → gzip → lines or CSV) on a blocking thread that
//! calls S3 through the runtime's handle and hands records over a bounded channel, so a slow pipeline stops
//! the reading instead of piling records up.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use async_trait::async_trait;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::notification::ObjectRef;
use crate::config::ObjectFormat;
use crate::contract::SourceRecord;
use crate::record::Polled;
use crate::source::{Acker, CheckpointOnly, Source, SourceError};

/// How objects are read.
#[derive(Debug, Clone)]
pub struct ObjectOptions {
    /// Records by line, CSV row or whole object.
    pub format: ObjectFormat,
    /// Bytes per ranged GET.
    pub range_bytes: u64,
    /// The largest record; longer ones are cut, with `s3:truncated`.
    pub max_record_bytes: usize,
}

/// Longest record id kept whole; a longer key is cut and given a digest.
const MAX_ID_BYTES: usize = 1000;
/// Records read ahead of the pipeline, per object.
const READ_AHEAD: usize = 1024;
/// How long an S3 call is retried while S3 is unreachable or throttling.
const RETRY_BUDGET: Duration = Duration::from_secs(300);

/// What opening an object found.
pub enum Opened {
    /// It no longer exists.
    Gone(ObjectRef),
    /// Ready to read.
    Ready(ObjectSource),
}

/// What `HeadObject` said, and the names derived from it.
#[derive(Clone)]
struct Object {
    bucket: String,
    key: String,
    version_id: Option<String>,
    etag: Option<String>,
    size: u64,
    last_modified_ms: i64,
    gzip_hint: bool,
    /// The version id, else the ETag without quotes: part of every record id.
    version: String,
}

impl Object {
    fn describe(&self) -> String {
        format!("s3 object s3://{}/{}", self.bucket, self.key)
    }

    fn error(&self, message: impl std::fmt::Display) -> SourceError {
        SourceError::Io {
            source_name: self.describe(),
            message: message.to_string(),
        }
    }

    /// `s3/{bucket}/{key}/{version}/{n}`, the key cut and given a digest if the whole would be too long.
    fn record_id(&self, n: u64) -> String {
        let id = format!("s3/{}/{}/{}/{n}", self.bucket, self.key, self.version);
        if id.len() <= MAX_ID_BYTES {
            return id;
        }
        let mut cut = 600.min(self.key.len());
        while !self.key.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "s3/{}/{}…{}/{}/{n}",
            self.bucket,
            &self.key[..cut],
            hex16(self.key.as_bytes()),
            self.version
        )
    }
}

fn hex16(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The partition of an object version: its file name (cut, made safe for RAW object names) and a digest of
/// bucket, key and version, so that a new version of a key starts over.
pub fn partition_of(bucket: &str, key: &str, version: &str) -> String {
    let name: String = key
        .rsplit('/')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!(
        "{name}-{}",
        hex16(format!("{bucket}/{key}@{version}").as_bytes())
    )
}

/// Runs an S3 call, retrying with backoff while it fails for a reason that may pass (no answer, 5xx,
/// throttling); returns the final error as (HTTP status, text).
async fn s3_call<T, E, F, Fut>(mut op: F) -> Result<T, (Option<u16>, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
            .with_budget(RETRY_BUDGET);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let passing = match status {
                    None => true,
                    Some(s) => s >= 500 || s == 429,
                } || matches!(e.code(), Some("SlowDown" | "RequestTimeout"));
                let text = crate::aws::sdk_error(&e);
                match backoff.next_delay().filter(|_| passing) {
                    Some(wait) => {
                        tracing::warn!(error = %text, retry_ms = wait.as_millis() as u64, "s3 source: call failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err((status, text)),
                }
            }
        }
    }
}

/// Reads one object version.
pub struct ObjectSource {
    client: aws_sdk_s3::Client,
    object: Object,
    options: ObjectOptions,
    partition: String,
    start: (u64, u64),
    rx: Option<mpsc::Receiver<Result<Polled, SourceError>>>,
}

impl ObjectSource {
    /// Looks the object up (`HeadObject`); `Gone` when it no longer exists.
    pub async fn open(
        client: aws_sdk_s3::Client,
        object: ObjectRef,
        options: ObjectOptions,
    ) -> Result<Opened, SourceError> {
        let head = s3_call(|| {
            client
                .head_object()
                .bucket(&object.bucket)
                .key(&object.key)
                .set_version_id(object.version_id.clone())
                .send()
        })
        .await;
        let head = match head {
            Ok(h) => h,
            Err((Some(404), _)) => return Ok(Opened::Gone(object)),
            Err((status, text)) => {
                return Err(SourceError::Io {
                    source_name: format!("s3 object s3://{}/{}", object.bucket, object.key),
                    message: format!(
                        "cannot read it: {text}{}",
                        if status == Some(403) {
                            " (the worker needs s3:GetObject on it, and s3:GetObjectVersion on a versioned bucket)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        };
        let etag = head.e_tag().map(str::to_string).or(object.etag.clone());
        let version_id = head
            .version_id()
            .filter(|v| *v != "null")
            .map(str::to_string)
            .or(object.version_id.clone());
        let version = version_id
            .clone()
            .or_else(|| etag.as_deref().map(|e| e.trim_matches('"').to_string()))
            .unwrap_or_else(|| "-".into());
        let o = Object {
            size: head.content_length().unwrap_or(0).max(0) as u64,
            last_modified_ms: head
                .last_modified()
                .and_then(|t| t.to_millis().ok())
                .unwrap_or(0),
            gzip_hint: head
                .content_encoding()
                .is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
                || object.key.ends_with(".gz"),
            bucket: object.bucket,
            key: object.key,
            version_id,
            etag,
            version,
        };
        let partition = partition_of(&o.bucket, &o.key, &o.version);
        Ok(Opened::Ready(ObjectSource {
            client,
            object: o,
            options,
            partition,
            start: (0, 0),
            rx: None,
        }))
    }
}

#[async_trait]
impl Source for ObjectSource {
    fn source(&self) -> &str {
        "s3"
    }

    fn partition(&self) -> &str {
        &self.partition
    }

    async fn seek(&mut self, position: &str) -> Result<(), SourceError> {
        if position.is_empty() {
            return Ok(());
        }
        let parsed = position
            .split_once('@')
            .and_then(|(n, o)| Some((n.parse().ok()?, o.parse().ok()?)));
        self.start = parsed.ok_or_else(|| {
            self.object.error(format!(
                "checkpoint `{position}` is not `{{record}}@{{offset}}`"
            ))
        })?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
        if self.rx.is_none() {
            let (tx, rx) = mpsc::channel(READ_AHEAD);
            let reader = Reader {
                handle: tokio::runtime::Handle::current(),
                client: self.client.clone(),
                object: self.object.clone(),
                options: self.options.clone(),
                start: self.start,
            };
            tokio::task::spawn_blocking(move || {
                if let Err(e) = reader.read(&tx) {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            self.rx = Some(rx);
        }
        let rx = self.rx.as_mut().expect("just set");
        match rx.recv().await {
            Some(Ok(p)) => Ok(Some(p)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    fn acker(&self) -> Box<dyn Acker> {
        Box::new(CheckpointOnly)
    }
}

/// The blocking side: reads the object and sends its records.
struct Reader {
    handle: tokio::runtime::Handle,
    client: aws_sdk_s3::Client,
    object: Object,
    options: ObjectOptions,
    start: (u64, u64),
}

/// Sending stopped: the pipeline is gone.
struct Gone;

impl Reader {
    fn read(&self, tx: &mpsc::Sender<Result<Polled, SourceError>>) -> Result<(), SourceError> {
        let o = &self.object;
        let (start_n, start_offset) = self.start;
        let gzip = o.gzip_hint || (o.size >= 2 && self.range_bytes_at(0, 2)? == [0x1f, 0x8b]);
        let plain_lines = !gzip && self.options.format == ObjectFormat::Lines;
        // Plain lines resume by a ranged GET from the offset; everything else reads from the start and skips.
        let from = if plain_lines { start_offset } else { 0 };
        let ranges = Ranges {
            reader: self,
            pos: from.min(o.size),
            buf: bytes::Bytes::new(),
            at: 0,
        };
        let decoded: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(ranges))
        } else {
            Box::new(ranges)
        };
        let mut input = BufReader::with_capacity(256 << 10, decoded);
        let io = |e: std::io::Error| o.error(format!("reading failed: {e}"));
        let sent = match self.options.format {
            ObjectFormat::Lines => {
                if !plain_lines {
                    std::io::copy(&mut (&mut input).take(start_offset), &mut std::io::sink())
                        .map_err(io)?;
                }
                self.lines(&mut input, start_n, start_offset, tx)?
            }
            ObjectFormat::Csv => self.csv(input, start_n, tx)?,
            ObjectFormat::Whole => {
                if start_n >= 1 {
                    return Ok(());
                }
                let mut payload = Vec::new();
                let max = self.options.max_record_bytes;
                (&mut input)
                    .take(max as u64 + 1)
                    .read_to_end(&mut payload)
                    .map_err(io)?;
                let mut total = payload.len() as u64;
                if payload.len() > max {
                    payload.truncate(max);
                    total += std::io::copy(&mut input, &mut std::io::sink()).map_err(io)?;
                }
                let truncated = (total > max as u64).then_some(total);
                self.send(tx, 1, total, payload, truncated)
            }
        };
        let _ = sent; // `Gone`: the pipeline stopped reading
        Ok(())
    }

    fn lines(
        &self,
        input: &mut impl BufRead,
        mut n: u64,
        mut offset: u64,
        tx: &mpsc::Sender<Result<Polled, SourceError>>,
    ) -> Result<Result<(), Gone>, SourceError> {
        let max = self.options.max_record_bytes;
        let mut line = Vec::new();
        loop {
            let (consumed, ended) = read_line_bounded(input, max, &mut line)
                .map_err(|e| self.object.error(format!("reading failed: {e}")))?;
            if consumed == 0 {
                return Ok(Ok(()));
            }
            offset += consumed as u64;
            // The line without its end (`\n`, `\r\n`), at most `max` bytes of it kept.
            let mut content = consumed - usize::from(ended);
            let mut kept = line.len().min(content);
            if kept == content && kept > 0 && line[kept - 1] == b'\r' {
                kept -= 1;
                content -= 1;
            }
            kept = kept.min(max);
            if kept == content && line[..kept].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            n += 1;
            let truncated = (content > kept).then_some(content as u64);
            if self
                .send(tx, n, offset, line[..kept].to_vec(), truncated)
                .is_err()
            {
                return Ok(Err(Gone));
            }
        }
    }

    fn csv(
        &self,
        input: impl Read,
        start_n: u64,
        tx: &mpsc::Sender<Result<Polled, SourceError>>,
    ) -> Result<Result<(), Gone>, SourceError> {
        let mut rows = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(input);
        let bad = |e: csv::Error| self.object.error(format!("reading the CSV failed: {e}"));
        let headers: Vec<String> = rows
            .byte_headers()
            .map_err(bad)?
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect();
        let mut record = csv::ByteRecord::new();
        let mut n = 0u64;
        while rows.read_byte_record(&mut record).map_err(bad)? {
            n += 1;
            if n <= start_n {
                continue;
            }
            let mut object = serde_json::Map::new();
            for (i, field) in record.iter().enumerate() {
                let name = headers
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("column_{}", i + 1));
                object.insert(name, String::from_utf8_lossy(field).into_owned().into());
            }
            let mut payload = serde_json::Value::Object(object).to_string().into_bytes();
            let total = payload.len() as u64;
            let max = self.options.max_record_bytes;
            let truncated = (payload.len() > max).then(|| {
                payload.truncate(max);
                total
            });
            let offset = rows.position().byte();
            if self.send(tx, n, offset, payload, truncated).is_err() {
                return Ok(Err(Gone));
            }
        }
        Ok(Ok(()))
    }

    fn send(
        &self,
        tx: &mpsc::Sender<Result<Polled, SourceError>>,
        n: u64,
        offset: u64,
        payload: Vec<u8>,
        truncated: Option<u64>,
    ) -> Result<(), Gone> {
        let o = &self.object;
        let mut attributes = vec![
            ("s3:bucket".to_string(), o.bucket.clone()),
            ("s3:key".to_string(), o.key.clone()),
            ("s3:version".to_string(), o.version.clone()),
        ];
        if let Some(t) = truncated {
            attributes.push(("s3:truncated".to_string(), t.to_string()));
        }
        let polled = Polled {
            record: SourceRecord {
                id: o.record_id(n),
                partition_key: String::new(),
                arrived_at_ms: o.last_modified_ms,
                attributes,
                payload,
            },
            position: format!("{n}@{offset}"),
        };
        tx.blocking_send(Ok(polled)).map_err(|_| Gone)
    }

    /// Bytes `[from, from + len)` of the object (fewer at its end).
    fn range_bytes_at(&self, from: u64, len: u64) -> Result<Vec<u8>, SourceError> {
        Ok(self.get_range(from, from + len - 1)?.to_vec())
    }

    /// One ranged GET of the version being read (`bytes=from-to`, inclusive), retried while S3 is unreachable.
    fn get_range(&self, from: u64, to: u64) -> Result<bytes::Bytes, SourceError> {
        let o = &self.object;
        self.handle.block_on(async {
            let out = s3_call(|| {
                self.client
                    .get_object()
                    .bucket(&o.bucket)
                    .key(&o.key)
                    .range(format!("bytes={from}-{to}"))
                    .set_version_id(o.version_id.clone())
                    .set_if_match(if o.version_id.is_none() {
                        o.etag.clone()
                    } else {
                        None
                    })
                    .send()
            })
            .await
            .map_err(|(status, text)| {
                o.error(match status {
                    Some(412) => format!(
                        "the object was replaced while it was read ({text}); its new version is read from its own notification"
                    ),
                    _ => format!("GET bytes {from}-{to} failed: {text}"),
                })
            })?;
            out.body
                .collect()
                .await
                .map(|b| b.into_bytes())
                .map_err(|e| o.error(format!("GET bytes {from}-{to}: reading the body failed: {e}")))
        })
    }
}

/// The object as a `Read`: ranged GETs of `range_bytes`, one at a time, as the reader needs them.
struct Ranges<'a> {
    reader: &'a Reader,
    pos: u64,
    buf: bytes::Bytes,
    at: usize,
}

impl Read for Ranges<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            let size = self.reader.object.size;
            if self.pos >= size {
                return Ok(0);
            }
            let to = (self.pos + self.reader.options.range_bytes).min(size) - 1;
            self.buf = self
                .reader
                .get_range(self.pos, to)
                .map_err(std::io::Error::other)?;
            self.at = 0;
            if self.buf.is_empty() {
                return Ok(0);
            }
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads one line (through its `\n`, or to the end of the input), keeping at most `max + 2` bytes of it in
/// `out` (room for a `\r\n`); returns the bytes consumed and whether the line ended with `\n`.
fn read_line_bounded(
    input: &mut impl BufRead,
    max: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<(usize, bool)> {
    out.clear();
    let mut consumed = 0;
    let mut ended = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = (max + 2).saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        consumed += take;
        input.consume(take);
        if done {
            ended = true;
            break;
        }
    }
    Ok((consumed, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_short_safe_and_per_version() {
        let a = partition_of("b", "orders/2026/12/06/part 1.jsonl.gz", "v1");
        assert!(a.starts_with("part_1.jsonl.gz-"), "{a}");
        assert_ne!(
            a,
            partition_of("b", "orders/2026/12/06/part 1.jsonl.gz", "v2")
        );
        let long = partition_of("b", &"x".repeat(1024), "v1");
        assert_eq!(long.len(), 48 + 1 + 16);
    }

    #[test]
    fn lines_are_bounded() {
        let mut input = std::io::Cursor::new(b"abc\r\nlonger line\nlast".to_vec());
        let mut out = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, 100, &mut out).unwrap(),
            (5, true)
        );
        assert_eq!(out, b"abc\r\n");
        assert_eq!(
            read_line_bounded(&mut input, 4, &mut out).unwrap(),
            (12, true)
        );
        assert_eq!(out, b"longer");
        assert_eq!(
            read_line_bounded(&mut input, 100, &mut out).unwrap(),
            (4, false)
        );
        assert_eq!(out, b"last");
        assert_eq!(
            read_line_bounded(&mut input, 100, &mut out).unwrap(),
            (0, false)
        );
    }
}
