//! Where staged batches live until the loader has merged them: a local directory (one machine) or S3 (a fleet).

use std::path::PathBuf;

use async_trait::async_trait;

use crate::sink::SinkError;

/// A store of staged objects by key. Writing a key again writes the same bytes (keys derive from batch ids).
#[async_trait]
pub trait Staging: Send + Sync {
    /// Stores `bytes` under `key`, durably, before returning.
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError>;
    /// The bytes under `key`; `None` when there are none.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError>;
    /// Removes `key` (nothing happens when it is missing).
    async fn delete(&self, key: &str) -> Result<(), SinkError>;
    /// Removes every key (best effort; default one by one).
    async fn delete_many(&self, keys: &[String]) -> Result<(), SinkError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }
    /// Where staged objects go, for people.
    fn describe(&self) -> String;
}

/// Staged objects as files under a directory: for workers on one machine.
pub struct LocalStaging {
    dir: PathBuf,
}

impl LocalStaging {
    /// Staging under `dir` (created when missing).
    pub fn new(dir: PathBuf) -> LocalStaging {
        LocalStaging { dir }
    }

    fn io(&self, what: &str, key: &str, e: std::io::Error) -> SinkError {
        SinkError::Transient(format!(
            "staging {what} {}: {e}",
            self.dir.join(key).display()
        ))
    }
}

#[async_trait]
impl Staging for LocalStaging {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        // A temporary name of this write's own: two workers may stage the same batch at once (a shard re-read
        // by its new owner), and a shared name would let one rename the other's file away mid-write.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.dir.join(key);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
        let parent = path.parent().expect("keys have a folder").to_path_buf();
        let result = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            std::fs::create_dir_all(&parent)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&parent)?.sync_all()
        })
        .await
        .map_err(|e| SinkError::Transient(format!("staging write: {e}")))?;
        result.map_err(|e| self.io("write", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        match tokio::fs::read(self.dir.join(key)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        match tokio::fs::remove_file(self.dir.join(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io("delete", key, e)),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("staging {}", self.dir.display())
    }
}

/// Staged objects in S3 under `s3://{bucket}/{prefix}`: for a fleet on many machines.
#[cfg(feature = "s3")]
pub struct S3Staging {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

#[cfg(feature = "s3")]
impl S3Staging {
    /// Staging in `bucket` under `prefix`.
    pub fn new(client: aws_sdk_s3::Client, bucket: String, prefix: String) -> S3Staging {
        S3Staging {
            client,
            bucket,
            prefix,
        }
    }

    fn key(&self, key: &str) -> String {
        let prefix = self.prefix.trim_end_matches('/');
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}/{key}")
        }
    }
}

#[cfg(feature = "s3")]
#[async_trait]
impl Staging for S3Staging {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        let key = self.key(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/gzip")
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                SinkError::Transient(format!(
                    "staging put s3://{}/{key}: {}",
                    self.bucket,
                    crate::aws::sdk_error(&e)
                ))
            })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let key = self.key(key);
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out
                .body
                .collect()
                .await
                .map(|b| Some(b.into_bytes().to_vec()))
                .map_err(|e| {
                    SinkError::Transient(format!("staging read s3://{}/{key}: {e}", self.bucket))
                }),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(SinkError::Transient(format!(
                "staging get s3://{}/{key}: {}",
                self.bucket,
                crate::aws::sdk_error(&e)
            ))),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        let key = self.key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                SinkError::Transient(format!(
                    "staging delete s3://{}/{key}: {}",
                    self.bucket,
                    crate::aws::sdk_error(&e)
                ))
            })
    }

    /// `DeleteObjects`, a thousand keys a call.
    async fn delete_many(&self, keys: &[String]) -> Result<(), SinkError> {
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        crate::aws::delete_objects(&self.client, &self.bucket, &full)
            .await
            .map_err(|e| {
                SinkError::Transient(format!("staging delete in s3://{}: {e}", self.bucket))
            })
    }

    fn describe(&self) -> String {
        format!("staging s3://{}/{}", self.bucket, self.prefix)
    }
}
