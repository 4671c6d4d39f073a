//! The file source: one record per line of a file, or of standard input.
//!
//! Record ids are `file/{name}/{line}` with 1-based line numbers; the position is the line number. Empty lines
//! are skipped (they keep their number). The payload is the line's bytes without the `\n`, untouched. The
//! record's arrival time is the file's modification time (a source time, so a re-run archives RAW under the
//! same keys); standard input uses the time the worker started reading.
//!
//! A file's checkpoint is resumed only on the same file: its fingerprint (the SHA-256 of its first
//! [`FINGERPRINT_BYTES`] bytes, at most, and how many were hashed) is kept beside the checkpoint, and a
//! file whose first bytes changed is refused (appending to a file keeps them). Standard input has no identity
//! across runs, so each run without a `source.name` reads its own partition, `stdin-{start ms}-{pid}`.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Split};

use super::{Acker, CheckpointOnly, Source, SourceError};
use crate::record::Polled;
use crate::rules::SourceRecord;

/// Reads lines from a file or stdin.
pub struct FileSource {
    name: String,
    lines: Split<BufReader<Box<dyn AsyncRead + Send + Unpin>>>,
    line: u64,
    skip_through: u64,
    arrived_at_ms: i64,
    /// The file's first bytes (none for stdin).
    prefix: Option<Vec<u8>>,
}

/// Longest partition name, bytes (weir's partition column holds 256, its fingerprint row a little more).
pub const MAX_NAME_BYTES: usize = 200;

/// Bytes of a file's beginning that identify it.
pub const FINGERPRINT_BYTES: usize = 4096;

/// `{n}:{hex SHA-256 of the first n bytes}` of `prefix`, n at most [`FINGERPRINT_BYTES`].
pub fn fingerprint_of(prefix: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let n = prefix.len().min(FINGERPRINT_BYTES);
    format!("{n}:{}", crate::rules::hex(&Sha256::digest(&prefix[..n])))
}

/// Whether a file whose first bytes are `prefix` is the one `stored` was taken of (possibly appended to).
pub fn same_file(stored: &str, prefix: &[u8]) -> bool {
    let Some((n, _)) = stored.split_once(':') else {
        return false;
    };
    match n.parse::<usize>() {
        Ok(n) if n <= prefix.len() => fingerprint_of(&prefix[..n]) == stored,
        _ => false,
    }
}

impl FileSource {
    /// Opens `path` (`-` for standard input). `name` defaults to the file name.
    pub async fn open(path: &str, name: Option<String>) -> Result<Self, SourceError> {
        let mut fingerprint = None;
        let (reader, default_name, mtime): (Box<dyn AsyncRead + Send + Unpin>, String, SystemTime) =
            if path == "-" {
                let now = UNIX_EPOCH.elapsed().unwrap_or_default();
                (
                    Box::new(tokio::io::stdin()),
                    // Its own partition per run: a checkpoint of another stream must never be resumed.
                    format!("stdin-{}-{}", now.as_millis(), std::process::id()),
                    // stdin has no source time of its own: the time reading started stands in for it.
                    UNIX_EPOCH + now,
                )
            } else {
                let err = |e: std::io::Error| SourceError::Io {
                    source_name: format!("file {path}"),
                    message: e.to_string(),
                };
                let mut file = tokio::fs::File::open(path).await.map_err(err)?;
                let mut prefix = vec![0; FINGERPRINT_BYTES];
                let mut got = 0;
                loop {
                    use tokio::io::AsyncReadExt;
                    let n = file.read(&mut prefix[got..]).await.map_err(err)?;
                    got += n;
                    if n == 0 || got == prefix.len() {
                        break;
                    }
                }
                prefix.truncate(got);
                fingerprint = Some(prefix);
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(err)?;
                let mtime = file
                    .metadata()
                    .await
                    .and_then(|m| m.modified())
                    .map_err(err)?;
                let base = std::path::Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "input".into());
                (Box::new(file), base, mtime)
            };
        let arrived_at_ms = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let name = name.unwrap_or(default_name);
        if name.len() > MAX_NAME_BYTES {
            // weir's own columns (partition, record and batch ids) are bounded: refuse at start, not at commit.
            return Err(SourceError::Io {
                source_name: format!("file {path}"),
                message: format!(
                    "the partition name is {} bytes, more than {MAX_NAME_BYTES}; set a shorter `source.name`",
                    name.len()
                ),
            });
        }
        Ok(FileSource {
            name,
            lines: BufReader::with_capacity(256 * 1024, reader).split(b'\n'),
            line: 0,
            skip_through: 0,
            arrived_at_ms,
            prefix: fingerprint,
        })
    }
}

#[async_trait]
impl Source for FileSource {
    fn source(&self) -> &str {
        "file"
    }

    fn partition(&self) -> &str {
        &self.name
    }

    async fn seek(&mut self, position: &str) -> Result<(), SourceError> {
        if position.is_empty() {
            return Ok(());
        }
        self.skip_through = position.parse().map_err(|_| SourceError::Io {
            source_name: format!("file {}", self.name),
            message: format!("checkpoint `{position}` is not a line number"),
        })?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Option<Polled>, SourceError> {
        loop {
            // `Split::next_segment` is cancel-safe; the line counter moves only once a line is complete.
            let segment = self
                .lines
                .next_segment()
                .await
                .map_err(|e| SourceError::Io {
                    source_name: format!("file {}", self.name),
                    message: e.to_string(),
                })?;
            let Some(payload) = segment else {
                return Ok(None);
            };
            self.line += 1;
            if self.line <= self.skip_through || payload.is_empty() {
                continue;
            }
            let position = self.line.to_string();
            let record = SourceRecord {
                id: format!("file/{}/{}", self.name, self.line),
                partition_key: self.name.clone(),
                arrived_at_ms: self.arrived_at_ms,
                attributes: vec![("line".into(), position.clone())],
                payload,
            };
            return Ok(Some(Polled { record, position }));
        }
    }

    fn acker(&self) -> Box<dyn Acker> {
        Box::new(CheckpointOnly)
    }

    fn fingerprint(&self) -> Option<String> {
        self.prefix.as_deref().map(fingerprint_of)
    }

    fn same_input(&self, stored: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| same_file(stored, p))
    }
}
