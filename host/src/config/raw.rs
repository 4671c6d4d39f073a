//! `[raw]`: where the RAW copy goes, with each store's defaults and checks.

use super::*;

/// `[raw]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawConfig {
    /// A local directory with the same key layout as the S3 store.
    Local {
        /// The directory (relative to the config file); created when missing.
        dir: PathBuf,
        /// A key prefix inside the directory, such as `orders/`. Default: none.
        #[serde(default)]
        prefix: String,
        /// The objects' format: `"jsonl"` (gzip JSON lines, the default) or `"parquet"` (one Parquet file per
        /// batch, for Athena, Spark and DuckDB).
        #[serde(default)]
        format: crate::raw::RawFormat,
    },
    /// An Amazon S3 bucket: one object per batch (gzip JSON lines, or Parquet).
    S3 {
        /// The bucket.
        bucket: String,
        /// A key prefix, such as `raw/orders/`. Default: none.
        #[serde(default)]
        prefix: String,
        /// The objects' format: `"jsonl"` (gzip JSON lines, the default) or `"parquet"` (one Parquet file per
        /// batch, for Athena, Spark and DuckDB).
        #[serde(default)]
        format: crate::raw::RawFormat,
        /// Server-side encryption: `"none"` (the bucket's default), `"s3"` (SSE-S3) or `"kms"` (SSE-KMS).
        /// Default `"none"`.
        #[serde(default)]
        sse: Sse,
        /// The KMS key for `sse = "kms"`. Default: the account's `aws/s3` key.
        #[serde(default)]
        kms_key_id: Option<String>,
        /// Objects larger than this are uploaded in parts, in bytes. Default 67 108 864 (64 MiB).
        #[serde(default = "default_multipart_threshold_bytes")]
        multipart_threshold_bytes: usize,
        /// Part size of multipart uploads, in bytes (S3 minimum 5 MiB). Default 16 777 216 (16 MiB).
        #[serde(default = "default_part_size_bytes")]
        part_size_bytes: usize,
        /// An S3 endpoint for this store only (S3-compatible storage, a VPC endpoint); default `[aws]
        /// endpoint_url`, else AWS.
        #[serde(default)]
        endpoint_url: Option<String>,
        /// An IAM role RAW's S3 calls assume instead of `[aws] role_arn` (a bucket in another
        /// account).
        #[serde(default)]
        role_arn: Option<String>,
        /// The external id the role's trust policy requires.
        #[serde(default)]
        external_id: Option<String>,
    },
    /// A MongoDB collection: one document per record, `_id` = record id.
    Mongodb {
        /// The connection string, e.g. `mongodb://user:password@host:27017/?replicaSet=rs0`; keep secrets in
        /// the environment: `uri = "${WEIR_MONGODB_URI}"`.
        uri: String,
        /// The database. Default `weir`.
        #[serde(default = "default_mongo_database")]
        database: String,
        /// The collection. Default `raw`.
        #[serde(default = "default_mongo_collection")]
        collection: String,
    },
}

impl RawConfig {
    /// The S3 store's own IAM role (`role_arn`, `external_id`), when it names one.
    pub fn role(&self) -> crate::aws::Role {
        match self {
            RawConfig::S3 {
                role_arn,
                external_id,
                ..
            } => crate::aws::Role {
                role_arn: role_arn.clone(),
                external_id: external_id.clone(),
            },
            _ => crate::aws::Role::default(),
        }
    }
}

pub(super) fn default_mongo_database() -> String {
    "weir".into()
}

pub(super) fn default_mongo_collection() -> String {
    "raw".into()
}

/// Server-side encryption of RAW objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sse {
    /// The bucket's default encryption.
    #[default]
    None,
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS (`aws:kms`), with `kms_key_id` or the account's default key.
    Kms,
}

/// The smallest part S3 accepts (except the last one).
pub const MIN_PART_SIZE_BYTES: usize = 5 << 20;

pub(super) fn default_multipart_threshold_bytes() -> usize {
    64 << 20
}

pub(super) fn default_part_size_bytes() -> usize {
    16 << 20
}

pub(super) fn check_raw(raw: &RawConfig) -> Result<(), ConfigError> {
    match raw {
        RawConfig::Local { .. } => {}
        RawConfig::Mongodb {
            uri,
            database,
            collection,
        } => {
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err(ConfigError::field(
                    "raw.uri",
                    "must be a MongoDB connection string starting with `mongodb://` or `mongodb+srv://`",
                ));
            }
            if database.is_empty() || database.contains(['/', '.', ' ', '"', '$']) {
                return Err(ConfigError::field(
                    "raw.database",
                    "must be a MongoDB database name (no `/ . \" $` or spaces)",
                ));
            }
            if collection.is_empty()
                || collection.starts_with("system.")
                || collection.contains('$')
            {
                return Err(ConfigError::field(
                    "raw.collection",
                    "must be a collection name (not empty, no `$`, not `system.*`)",
                ));
            }
        }
        RawConfig::S3 {
            bucket,
            sse,
            kms_key_id,
            part_size_bytes,
            multipart_threshold_bytes,
            endpoint_url,
            ..
        } => {
            if bucket.is_empty() || bucket.contains('/') {
                return Err(ConfigError::field(
                    "raw.bucket",
                    "must be a bucket name (no `s3://`, no `/`), e.g. `bucket = \"acme-raw\"`",
                ));
            }
            if kms_key_id.is_some() && *sse != Sse::Kms {
                return Err(ConfigError::field(
                    "raw.kms_key_id",
                    "is only used with `sse = \"kms\"`; set that or remove kms_key_id",
                ));
            }
            if *part_size_bytes < MIN_PART_SIZE_BYTES {
                return Err(ConfigError::field(
                    "raw.part_size_bytes",
                    format!(
                        "{part_size_bytes} is below the S3 minimum part size; use at least {MIN_PART_SIZE_BYTES} (5 MiB)"
                    ),
                ));
            }
            if *multipart_threshold_bytes == 0 {
                return Err(ConfigError::field(
                    "raw.multipart_threshold_bytes",
                    "must be at least 1 (bytes)",
                ));
            }
            if let Some(url) = endpoint_url {
                check_endpoint_url("raw.endpoint_url", url)?;
            }
        }
    }
    Ok(())
}
