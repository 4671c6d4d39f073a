//! The file source: one record per line of a file, or of standard input.
//!
//! Record ids are `file/{name}/{line}` with 1-based line numbers; the position is the line number. Empty lines
//! are skipped (they keep their number). The payload is the line's bytes without the `\n`, untouched. The
//! record's arrival time is the file's modification time (a source time, so a re-run archives RAW under the
//! same keys); standard input uses the time the worker started reading.

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
}

impl FileSource {
    /// Opens `path` (`-` for standard input). `name` defaults to the file name.
    pub async fn open(path: &str, name: Option<String>) -> Result<Self, SourceError> {
        let (reader, default_name, mtime): (Box<dyn AsyncRead + Send + Unpin>, String, SystemTime) =
            if path == "-" {
                (
                    Box::new(tokio::io::stdin()),
                    "stdin".into(),
                    // stdin has no source time of its own: the time reading started stands in for it.
                    UNIX_EPOCH + UNIX_EPOCH.elapsed().unwrap_or_default(),
                )
            } else {
                let err = |e: std::io::Error| SourceError::Io {
                    source_name: format!("file {path}"),
                    message: e.to_string(),
                };
                let file = tokio::fs::File::open(path).await.map_err(err)?;
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
        Ok(FileSource {
            name: name.unwrap_or(default_name),
            lines: BufReader::with_capacity(256 * 1024, reader).split(b'\n'),
            line: 0,
            skip_through: 0,
            arrived_at_ms,
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
}
