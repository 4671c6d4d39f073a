//! The S3 RAW store: one gzip JSON-lines object per batch under the deterministic key of [`super::object_key`].
//!
//! Objects carry metadata `weir-records` (line count) and `weir-sha256` (hex SHA-256 of the object bytes),
//! so a reconciliation can check an object without decompressing it. Objects above
//! `multipart_threshold_bytes` go up in parts; a failed multipart upload is aborted (no orphaned parts).
//! Every failure is returned as [`RawError::Io`] and retried with backoff by the pipeline; rewriting the same
//! key with the same bytes is harmless.

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{RawError, RawLine, RawStore};
use crate::config::Sse;
use crate::record::Batch;

/// Settings of the S3 store.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
    /// Server-side encryption.
    pub sse: Sse,
    /// KMS key for SSE-KMS.
    pub kms_key_id: Option<String>,
    /// Multipart above this size, bytes.
    pub multipart_threshold_bytes: usize,
    /// Part size, bytes.
    pub part_size_bytes: usize,
    /// The objects' file format.
    pub format: super::RawFormat,
}

impl S3Options {
    fn content_type(&self) -> &'static str {
        match self.format {
            super::RawFormat::JsonLines => "application/gzip",
            super::RawFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// RAW objects in an S3 bucket.
pub struct S3Raw {
    client: aws_sdk_s3::Client,
    options: S3Options,
}

impl S3Raw {
    /// A store writing to `options.bucket` through `client`.
    pub fn new(client: aws_sdk_s3::Client, options: S3Options) -> Self {
        S3Raw { client, options }
    }

    /// Checks that the bucket exists and these credentials may use it, naming the setting to fix when not.
    /// An unreachable endpoint is only logged: RAW writes retry until S3 is back.
    pub async fn check(&self) -> Result<(), RawError> {
        let Err(e) = self
            .client
            .head_bucket()
            .bucket(&self.options.bucket)
            .send()
            .await
        else {
            return Ok(());
        };
        if e.as_service_error().is_none() && e.raw_response().is_none() {
            tracing::warn!(bucket = %self.options.bucket, error = %crate::aws::sdk_error(&e), "S3 is not reachable yet; RAW writes will retry");
            return Ok(());
        }
        let status = e.raw_response().map(|r| r.status().as_u16());
        Err(self.io(format!(
            "cannot use bucket `{}` (raw.bucket): {}",
            self.options.bucket,
            match (e.code(), status) {
                (Some("NotFound" | "NoSuchBucket"), _) | (_, Some(404)) =>
                    "it does not exist; create it or fix raw.bucket".to_string(),
                (Some("Forbidden" | "AccessDenied"), _) | (_, Some(403)) =>
                    "access denied to these credentials (s3:ListBucket and s3:PutObject are needed)"
                        .to_string(),
                _ => crate::aws::sdk_error(&e),
            }
        )))
    }

    fn io(&self, message: impl std::fmt::Display) -> RawError {
        RawError::Io {
            store: format!("s3://{}", self.options.bucket),
            message: message.to_string(),
        }
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        match self.options.sse {
            Sse::None => None,
            Sse::S3 => Some(ServerSideEncryption::Aes256),
            Sse::Kms => Some(ServerSideEncryption::AwsKms),
        }
    }

    async fn put_single(
        &self,
        key: &str,
        body: Vec<u8>,
        meta: &[(&str, String)],
    ) -> Result<(), RawError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.options.bucket)
            .key(key)
            .content_type(self.options.content_type())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.options.kms_key_id.clone())
            .body(ByteStream::from(body));
        for (k, v) in meta {
            req = req.metadata(*k, v);
        }
        req.send()
            .await
            .map_err(|e| self.io(format!("put {key}: {}", crate::aws::sdk_error(&e))))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        key: &str,
        body: Vec<u8>,
        meta: &[(&str, String)],
    ) -> Result<(), RawError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.options.bucket)
            .key(key)
            .content_type(self.options.content_type())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.options.kms_key_id.clone());
        for (k, v) in meta {
            create = create.metadata(*k, v);
        }
        let upload = create.send().await.map_err(|e| {
            self.io(format!(
                "start multipart upload of {key}: {}",
                crate::aws::sdk_error(&e)
            ))
        })?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| self.io(format!("multipart upload of {key}: no upload id")))?
            .to_string();
        let result = self.upload_parts(key, &body, &upload_id).await;
        if result.is_err() {
            // Best effort: the failure itself is what the caller retries.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.options.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Uploads the parts of a started multipart upload and completes it.
    async fn upload_parts(&self, key: &str, body: &[u8], upload_id: &str) -> Result<(), RawError> {
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(self.options.part_size_bytes).enumerate() {
            let number = i as i32 + 1;
            let part = self
                .client
                .upload_part()
                .bucket(&self.options.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    self.io(format!(
                        "part {number} of {key}: {}",
                        crate::aws::sdk_error(&e)
                    ))
                })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .set_checksum_crc32(part.checksum_crc32().map(str::to_string))
                    .set_checksum_crc32_c(part.checksum_crc32_c().map(str::to_string))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.options.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                self.io(format!(
                    "complete multipart upload of {key}: {}",
                    crate::aws::sdk_error(&e)
                ))
            })?;
        Ok(())
    }
}

#[async_trait]
impl RawStore for S3Raw {
    async fn put(&self, batch: &Batch) -> Result<Vec<String>, RawError> {
        let key = self.options.format.object_key(&self.options.prefix, batch);
        let span = tracing::debug_span!("s3_raw.put", bucket = %self.options.bucket, key = %key, records = batch.records.len());
        let body = self.options.format.encode(batch)?;
        let digest = Sha256::digest(&body);
        let meta = [
            ("weir-records", batch.records.len().to_string()),
            (
                "weir-sha256",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            ),
        ];
        let size = body.len();
        if size > self.options.multipart_threshold_bytes {
            self.put_multipart(&key, body, &meta)
                .instrument(span)
                .await?;
        } else {
            self.put_single(&key, body, &meta).instrument(span).await?;
        }
        Ok(super::refs(&key, batch))
    }

    async fn get(&self, key: &str) -> Result<Vec<RawLine>, RawError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.options.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.io(format!("get {key}: {}", crate::aws::sdk_error(&e))))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| self.io(format!("read {key}: {e}")))?
            .into_bytes();
        super::decode(key, &bytes)
    }

    async fn list(&self, window: &super::Window) -> Result<Vec<String>, RawError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.options.bucket)
            .prefix(&self.options.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.io(format!("list: {}", crate::aws::sdk_error(&e))))?;
            for object in page.contents() {
                if let Some(key) = object.key()
                    && super::listed(key, &self.options.prefix, window)
                {
                    keys.push(key.to_string());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn exists(&self, key: &str) -> Result<bool, RawError> {
        match self
            .client
            .head_object()
            .bucket(&self.options.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(self.io(format!("head {key}: {}", crate::aws::sdk_error(&e)))),
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.options.bucket, self.options.prefix)
    }
}
