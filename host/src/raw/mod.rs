//! RAW stores: the untouched copy of every record, written before anything else happens to it.
//!
//! Every store uses the same deterministic layout, so a retried batch rewrites the same object and RAW can be
//! queried in place by Athena, Spark, Glue or Redshift Spectrum:
//!
//! `{prefix}source={source}/dt={yyyy-mm-dd}/hour={hh}/{partition}-{first}-{last}[-{digest}].jsonl.gz`
//!
//! (the digest only for unordered sources such as SQS, see [`Batch::digest`]; `.parquet` instead of
//! `.jsonl.gz` with `[raw] format = "parquet"`, see [`parquet`]).
//!
//! The date comes from the first record's source timestamp, never the wall clock. Each object is gzip JSON
//! lines, one [`RawLine`] per record in batch order (or a Parquet file, one row per record); a record's RAW
//! reference is `{key}#{line}` (1-based). Reading tells the two formats apart by the key, so a store keeps
//! being readable after its format changed.

pub mod local;
#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "parquet")]
pub mod parquet;
#[cfg(feature = "s3")]
pub mod s3;

use std::io::{Read, Write};

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::record::Batch;

pub mod window;
pub use window::Window;

/// A RAW store failure (retried with backoff by the pipeline).
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// Writing or reading failed.
    #[error("RAW store {store}: {message}")]
    Io {
        /// The store.
        store: String,
        /// What is wrong.
        message: String,
    },
    /// An object is not valid RAW.
    #[error("RAW object {key}: {message}")]
    Corrupt {
        /// The object key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl crate::retry::Retryable for RawError {
    fn is_transient(&self) -> bool {
        matches!(self, RawError::Io { .. })
    }
}

/// Stores RAW copies.
#[async_trait]
pub trait RawStore: Send + Sync {
    /// Stores the batch durably and returns one RAW reference per record. Idempotent: the same batch always
    /// goes to the same key with the same bytes.
    async fn put(&self, batch: &Batch) -> Result<Vec<String>, RawError>;

    /// Reads back the records of one object.
    async fn get(&self, key: &str) -> Result<Vec<RawLine>, RawError>;

    /// The keys of the objects in a window (every object when the window is open), sorted.
    async fn list(&self, window: &Window) -> Result<Vec<String>, RawError>;

    /// Whether an object exists.
    async fn exists(&self, key: &str) -> Result<bool, RawError>;

    /// Where RAW goes, for people.
    fn describe(&self) -> String;
}

/// One record in a RAW object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawLine {
    /// The record id.
    pub id: String,
    /// The record's source position.
    pub position: String,
    /// The source partition key.
    pub partition_key: String,
    /// Source arrival time, ms since the epoch.
    pub arrived_at_ms: i64,
    /// Source attributes as name/value pairs.
    pub attributes: Vec<(String, String)>,
    /// The payload: the text itself when it is valid UTF-8, else base64.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
}

impl RawLine {
    /// A payload as RAW lines keep it: the text when it is UTF-8 (`utf8`), else base64 (`base64`).
    pub fn payload_text(bytes: &[u8]) -> (String, &'static str) {
        match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                "base64",
            ),
        }
    }

    /// The payload bytes exactly as received.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        match self.payload_encoding.as_str() {
            "utf8" => Ok(self.payload.clone().into_bytes()),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown payload_encoding `{other}`")),
        }
    }
}

/// The file format of RAW objects (`[raw] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RawFormat {
    /// gzip JSON lines (the default).
    #[default]
    JsonLines,
    /// Parquet, one file per batch (the `parquet` feature).
    Parquet,
}

impl<'de> Deserialize<'de> for RawFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "jsonl" => Ok(RawFormat::JsonLines),
            "parquet" => Ok(RawFormat::Parquet),
            other => Err(serde::de::Error::custom(format!(
                "format `{other}`: use \"jsonl\" (gzip JSON lines) or \"parquet\""
            ))),
        }
    }
}

impl RawFormat {
    /// The key suffix of the format's objects.
    pub fn extension(self) -> &'static str {
        match self {
            RawFormat::JsonLines => ".jsonl.gz",
            RawFormat::Parquet => ".parquet",
        }
    }

    /// A batch's object in this format.
    pub fn encode(self, batch: &Batch) -> Result<Vec<u8>, RawError> {
        match self {
            RawFormat::JsonLines => Ok(encode(batch)),
            #[cfg(feature = "parquet")]
            RawFormat::Parquet => parquet::encode(batch).map_err(|e| RawError::Corrupt {
                key: batch.id.clone(),
                message: format!("encoding Parquet: {e}"),
            }),
            #[cfg(not(feature = "parquet"))]
            RawFormat::Parquet => Err(RawError::Io {
                store: "raw".into(),
                message: crate::config::not_compiled("raw.format", "parquet", "parquet"),
            }),
        }
    }

    /// The object key of a batch in this format.
    pub fn object_key(self, prefix: &str, batch: &Batch) -> String {
        let key = object_key(prefix, batch);
        match self {
            RawFormat::JsonLines => key,
            RawFormat::Parquet => format!("{}.parquet", key.trim_end_matches(".jsonl.gz")),
        }
    }
}

/// The object key of a batch (gzip JSON lines).
pub fn object_key(prefix: &str, batch: &Batch) -> String {
    let ms = batch.records.first().map(|r| r.arrived_at_ms).unwrap_or(0);
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let safe = |s: &str| s.replace(['/', '\\'], "_");
    let digest = batch.digest().map(|d| format!("-{d}")).unwrap_or_default();
    format!(
        "{prefix}source={}/dt={}/hour={}/{}-{}-{}{digest}.jsonl.gz",
        safe(&batch.source),
        t.format("%Y-%m-%d"),
        t.format("%H"),
        safe(&batch.partition),
        safe(batch.first_position()),
        safe(batch.last_position()),
    )
}

/// Encodes a batch as gzip JSON lines (deterministic bytes: no timestamp in the gzip header).
pub fn encode(batch: &Batch) -> Vec<u8> {
    // Lines are built in memory and compressed in one call: the compressor costs a buffer reset per write, so
    // many small writes (one per JSON token) would dominate the whole pipeline.
    let mut text = Vec::with_capacity(batch.bytes + batch.records.len() * 160);
    for (record, position) in batch.records.iter().zip(&batch.positions) {
        let (payload, payload_encoding) = RawLine::payload_text(&record.payload);
        let line = RawLine {
            id: record.id.clone(),
            position: position.clone(),
            partition_key: record.partition_key.clone(),
            arrived_at_ms: record.arrived_at_ms,
            attributes: record.attributes.clone(),
            payload,
            payload_encoding: payload_encoding.into(),
        };
        serde_json::to_writer(&mut text, &line).expect("RAW lines serialize");
        text.push(b'\n');
    }
    let mut gz = flate2::GzBuilder::new().write(
        Vec::with_capacity(text.len() / 3 + 64),
        flate2::Compression::fast(),
    );
    gz.write_all(&text).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// Decodes a RAW object: Parquet when its key ends in `.parquet`, else gzip JSON lines.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Vec<RawLine>, RawError> {
    if key.ends_with(".parquet") {
        #[cfg(feature = "parquet")]
        return parquet::decode(key, bytes);
        #[cfg(not(feature = "parquet"))]
        return Err(RawError::Corrupt {
            key: key.to_string(),
            message: crate::config::not_compiled("raw.format", "parquet", "parquet"),
        });
    }
    let corrupt = |message: String| RawError::Corrupt {
        key: key.to_string(),
        message,
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| corrupt(e.to_string()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| corrupt(format!("line {}: {e}", i + 1))))
        .collect()
}

/// Whether a listed key is a RAW object of the window: a `.jsonl.gz` or `.parquet` object whose hour is inside
/// it.
pub(crate) fn listed(key: &str, prefix: &str, window: &Window) -> bool {
    key.starts_with(prefix)
        && (key.ends_with(".jsonl.gz") || key.ends_with(".parquet"))
        && !key.rsplit('/').next().unwrap_or("").starts_with('.')
        && window.has_key(key) != Some(false)
}

/// The RAW references of a batch stored under `key`.
pub fn refs(key: &str, batch: &Batch) -> Vec<String> {
    (1..=batch.records.len())
        .map(|n| format!("{key}#{n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SourceRecord;

    fn batch(payloads: &[&[u8]]) -> Batch {
        let records: Vec<SourceRecord> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| SourceRecord {
                id: format!("file/f/{}", i + 7),
                partition_key: "f".into(),
                arrived_at_ms: 1_795_256_970_123,
                attributes: vec![("line".into(), (i + 7).to_string())],
                payload: p.to_vec(),
            })
            .collect();
        Batch {
            id: "file/f/7-8".into(),
            source: "file".into(),
            partition: "f".into(),
            prev_position: "6".into(),
            ordered: true,
            positions: (7..7 + payloads.len()).map(|n| n.to_string()).collect(),
            records,
            bytes: 0,
            started: std::time::Instant::now(),
            received_us: Vec::new(),
            fingerprint: None,
        }
    }

    /// Keys come from the source time and the position range only; encoding is byte-for-byte stable.
    #[test]
    fn deterministic_key_and_bytes() {
        let b = batch(&[b"{\"a\":1}", b"\xff\x00binary"]);
        assert_eq!(
            object_key("p/", &b),
            "p/source=file/dt=2026-11-21/hour=10/f-7-8.jsonl.gz"
        );
        assert_eq!(encode(&b), encode(&b));
        assert_eq!(refs("k", &b), ["k#1", "k#2"]);
    }

    /// Text and binary payloads round-trip exactly.
    #[test]
    fn payloads_round_trip() {
        let payloads: [&[u8]; 3] = [b"{\"a\":1}\r", b"\xff\x00binary", "ñandú".as_bytes()];
        let b = batch(&payloads);
        let lines = decode("k", &encode(&b)).unwrap();
        assert_eq!(lines.len(), 3);
        for (line, p) in lines.iter().zip(payloads) {
            assert_eq!(line.payload_bytes().unwrap(), p);
        }
        assert_eq!(lines[0].payload_encoding, "utf8");
        assert_eq!(lines[1].payload_encoding, "base64");
        assert_eq!(lines[1].position, "8");
        assert!(decode("k", b"not gzip").is_err());
    }
}
