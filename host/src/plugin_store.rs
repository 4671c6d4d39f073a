//! The plugin store: every rule version that ever loaded data, kept by SHA-256 digest, so that reconcile can
//! re-derive any batch with the rule that loaded it.
//!
//! `[rule] store` is a directory or an `s3://bucket/prefix`. Without it, a local RAW store keeps plugins in
//! `{raw.dir}/weir-plugins/` and an S3 RAW store under `weir-plugins/` in the RAW bucket (outside the RAW
//! prefix, so tables over RAW never see them); with MongoDB RAW there is no default. A worker stores its rule
//! at start, retrying in the background while the store is unreachable (RAW in the same place is then
//! unreachable too, so nothing commits in between).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Loaded, RawConfig};
use crate::rules::{RuleLimits, RulePlugin, RuleRuntime};

/// Where rule versions are kept.
pub enum PluginStore {
    /// A directory: `{dir}/{digest}.wasm`.
    Dir(PathBuf),
    /// An S3 prefix: `s3://{bucket}/{prefix}{digest}.wasm`.
    #[cfg(feature = "s3")]
    S3 {
        /// The client.
        client: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
        /// The key prefix (ends with `/` or is empty).
        prefix: String,
    },
}

impl PluginStore {
    /// The store of a configuration (`None`: MongoDB RAW and no `[rule] store`).
    pub async fn open(loaded: &Loaded) -> Option<PluginStore> {
        #[cfg(feature = "s3")]
        let s3 = |bucket: String, prefix: String| async move {
            // Beside RAW by default: with RAW's role.
            let aws = &loaded.config.aws.with_role(&loaded.config.raw.role());
            let sdk = aws.load().await;
            let client = match &loaded.config.raw {
                RawConfig::S3 {
                    endpoint_url: Some(url),
                    ..
                } => aws.s3_at(&sdk, url),
                _ => aws.s3_from(&sdk),
            };
            PluginStore::S3 {
                client,
                bucket,
                prefix,
            }
        };
        match (&loaded.config.rule.store, &loaded.config.raw) {
            (Some(url), _) => match url.strip_prefix("s3://") {
                // `config::load` refuses S3 stores in a build without the `s3` feature.
                #[cfg(not(feature = "s3"))]
                Some(_) => None,
                #[cfg(feature = "s3")]
                Some(rest) => {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
                        prefix.to_string()
                    } else {
                        format!("{prefix}/")
                    };
                    Some(s3(bucket.to_string(), prefix).await)
                }
                None => Some(PluginStore::Dir(loaded.base_dir.join(url))),
            },
            (None, RawConfig::Local { dir, .. }) => {
                Some(PluginStore::Dir(dir.join("weir-plugins")))
            }
            #[cfg(not(feature = "s3"))]
            (None, RawConfig::S3 { .. }) => None,
            #[cfg(feature = "s3")]
            (None, RawConfig::S3 { bucket, .. }) => {
                Some(s3(bucket.clone(), "weir-plugins/".to_string()).await)
            }
            (None, RawConfig::Mongodb { .. }) => None,
        }
    }

    /// Where the store is, for people.
    pub fn describe(&self) -> String {
        match self {
            PluginStore::Dir(d) => d.display().to_string(),
            #[cfg(feature = "s3")]
            PluginStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// Keeps `wasm` under its digest unless it is there already; `attempts` tries with backoff (capped at
    /// one minute between tries).
    pub async fn put(&self, digest: &str, wasm: &[u8], attempts: u32) -> Result<(), String> {
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(60))
                .with_attempts(attempts);
        loop {
            let last = match self.try_put(digest, wasm).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some(wait) = backoff.next_delay() else {
                return Err(format!("plugin store {}: {last}", self.describe()));
            };
            tracing::warn!(store = %self.describe(), error = %last, retry_ms = wait.as_millis() as u64, "plugin store unreachable; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn try_put(&self, digest: &str, wasm: &[u8]) -> Result<(), String> {
        match self {
            PluginStore::Dir(dir) => {
                let path = dir.join(format!("{digest}.wasm"));
                if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    return Ok(());
                }
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| e.to_string())?;
                let tmp = dir.join(format!(".{digest}.{}.tmp", std::process::id()));
                tokio::fs::write(&tmp, wasm)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| e.to_string())
            }
            #[cfg(feature = "s3")]
            PluginStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = format!("{prefix}{digest}.wasm");
                if client
                    .head_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(wasm.to_vec().into())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| crate::aws::sdk_error(&e))
            }
        }
    }

    /// The rule with this digest, `None` when the store does not have it.
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            PluginStore::Dir(dir) => {
                match tokio::fs::read(dir.join(format!("{digest}.wasm"))).await {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
            #[cfg(feature = "s3")]
            PluginStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = format!("{prefix}{digest}.wasm");
                match client.get_object().bucket(bucket).key(&key).send().await {
                    Ok(out) => out
                        .body
                        .collect()
                        .await
                        .map(|b| Some(b.into_bytes().to_vec()))
                        .map_err(|e| e.to_string()),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                    Err(e) => Err(crate::aws::sdk_error(&e)),
                }
            }
        }
    }
}

/// Rule versions for reconcile: the configured rule when its digest matches, else the plugin store.
pub struct StoredRules {
    runtime: RuleRuntime,
    limits: RuleLimits,
    settings: Vec<(String, String)>,
    store: Option<PluginStore>,
    configured: Option<Arc<RulePlugin>>,
    loaded: Mutex<HashMap<String, Option<Arc<RulePlugin>>>>,
    /// Where fetched rule versions are written for the runtime (removed on drop).
    scratch: PathBuf,
}

impl Drop for StoredRules {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl StoredRules {
    /// Rule versions of a configuration.
    pub fn new(
        runtime: RuleRuntime,
        limits: RuleLimits,
        settings: Vec<(String, String)>,
        store: Option<PluginStore>,
        configured: Option<Arc<RulePlugin>>,
    ) -> Result<Self, RuleLoadError> {
        Ok(StoredRules {
            runtime,
            limits,
            settings,
            store,
            configured,
            loaded: Mutex::new(HashMap::new()),
            scratch: std::env::temp_dir().join(format!("weir-rules-{}", std::process::id())),
        })
    }
}

/// A recorded rule version that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuleLoadError(pub String);

/// Rule versions by digest, loaded on demand from the plugin store (or the configured plugin).
#[async_trait]
pub trait RuleSource: Send + Sync {
    /// The rule with this digest, `None` when no store has it.
    async fn rule(&self, digest: &str) -> Result<Option<Arc<RulePlugin>>, RuleLoadError>;
}

#[async_trait]
impl RuleSource for StoredRules {
    async fn rule(&self, digest: &str) -> Result<Option<Arc<RulePlugin>>, RuleLoadError> {
        if let Some(c) = self.configured.as_ref().filter(|c| c.digest() == digest) {
            return Ok(Some(c.clone()));
        }
        if let Some(r) = self.loaded.lock().expect("not poisoned").get(digest) {
            return Ok(r.clone());
        }
        let wasm = match &self.store {
            Some(store) => store.get(digest).await.map_err(RuleLoadError)?,
            None => None,
        };
        let rule = match wasm {
            Some(bytes) => {
                let path = self.scratch.join(format!("{digest}.wasm"));
                std::fs::create_dir_all(&self.scratch)
                    .and_then(|_| std::fs::write(&path, &bytes))
                    .map_err(|e| RuleLoadError(e.to_string()))?;
                let plugin = self
                    .runtime
                    .load(&path, self.limits.clone(), self.settings.clone())
                    .map_err(|e| RuleLoadError(format!("rule {digest}: {e}")))?;
                Some(Arc::new(plugin))
            }
            None => None,
        };
        self.loaded
            .lock()
            .expect("not poisoned")
            .insert(digest.to_string(), rule.clone());
        Ok(rule)
    }
}
