//! The local-directory RAW store: the S3 layout on a local disk. Objects are written to a temporary file,
//! synced, then renamed into place, so a crash never leaves a half-written object under a final key.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use tracing::Instrument;

use super::{RawError, RawLine, RawStore};
use crate::record::Batch;

/// RAW objects under a directory.
pub struct LocalRaw {
    dir: PathBuf,
    prefix: String,
    format: super::RawFormat,
}

impl LocalRaw {
    /// A store under `dir` with key `prefix`, writing gzip JSON lines.
    pub fn new(dir: PathBuf, prefix: String) -> Self {
        LocalRaw {
            dir,
            prefix,
            format: super::RawFormat::default(),
        }
    }

    /// The same store writing `format` (reading tells formats apart by the key).
    pub fn with_format(mut self, format: super::RawFormat) -> Self {
        self.format = format;
        self
    }

    fn io(&self, e: impl std::fmt::Display) -> RawError {
        RawError::Io {
            store: self.dir.display().to_string(),
            message: e.to_string(),
        }
    }
}

#[async_trait]
impl RawStore for LocalRaw {
    async fn put(&self, batch: &Batch) -> Result<Vec<String>, RawError> {
        let key = self.format.object_key(&self.prefix, batch);
        let path = self.dir.join(&key);
        let span = tracing::debug_span!("local_raw.put", key = %key, records = batch.records.len());
        let bytes = self.format.encode(batch)?;
        let write = move || -> std::io::Result<()> {
            let parent = path.parent().expect("keys have folders");
            std::fs::create_dir_all(parent)?;
            let tmp = parent.join(format!(
                ".{}.{}.tmp",
                path.file_name().unwrap().to_string_lossy(),
                std::process::id()
            ));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(parent)?.sync_all()
        };
        tokio::task::spawn_blocking(write)
            .instrument(span)
            .await
            .map_err(|e| self.io(e))?
            .map_err(|e| self.io(e))?;
        Ok(super::refs(&key, batch))
    }

    async fn get(&self, key: &str) -> Result<Vec<RawLine>, RawError> {
        let bytes = tokio::fs::read(self.dir.join(key))
            .await
            .map_err(|e| self.io(format!("{key}: {e}")))?;
        super::decode(key, &bytes)
    }

    async fn list(&self, window: &super::Window) -> Result<Vec<String>, RawError> {
        let (dir, prefix, window) = (self.dir.clone(), self.prefix.clone(), window.clone());
        let walk = move || -> std::io::Result<Vec<String>> {
            let mut keys = Vec::new();
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                let entries = match std::fs::read_dir(&d) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&dir) {
                        let key = rel
                            .to_string_lossy()
                            .replace(std::path::MAIN_SEPARATOR, "/");
                        if super::listed(&key, &prefix, &window) {
                            keys.push(key);
                        }
                    }
                }
            }
            keys.sort();
            Ok(keys)
        };
        tokio::task::spawn_blocking(walk)
            .await
            .map_err(|e| self.io(e))?
            .map_err(|e| self.io(e))
    }

    async fn exists(&self, key: &str) -> Result<bool, RawError> {
        Ok(tokio::fs::try_exists(self.dir.join(key))
            .await
            .unwrap_or(false))
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.dir.join(&self.prefix).display())
    }
}
