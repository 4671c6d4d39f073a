//! The configured rule's bytes: a local file, or a plugin in S3 (`s3://bucket/key.wasm`) or on a web server
//! (`https://…`), verified against `[rule] sha256` before anything runs.
//!
//! A remote plugin is fetched once and kept in the worker's private cache directory under its digest
//! (`{cache_dir}/plugins/{sha256}.wasm`), so restarts and the other workers of a machine do not download it
//! again and a worker can restart while the store is unreachable. A cached copy is checked against the
//! digest on every read. Downloads are bounded in size ([`MAX_PLUGIN_BYTES`]) and time
//! (`[rule] fetch_timeout_secs` per attempt, three attempts); a missing object or a refused request is not
//! retried.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Loaded, PluginLocation};
use crate::rules::{RuleError, hex, write_atomically};

/// The largest plugin weir downloads, in bytes (256 MiB).
pub const MAX_PLUGIN_BYTES: usize = 256 << 20;

/// A plugin's bytes, verified.
pub struct Fetched {
    /// Where it came from, to name it in logs and errors (a path or the URL).
    pub label: PathBuf,
    /// The rule's name (its file name without `.wasm`).
    pub name: String,
    /// The component.
    pub wasm: Vec<u8>,
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The configured rule's bytes; `cache_dir` is the runtime's private cache (`None`: keep nothing on disk).
pub async fn fetch(loaded: &Loaded, cache_dir: Option<&Path>) -> Result<Fetched, RuleError> {
    let rule = &loaded.config.rule;
    let location = rule.plugin.to_string();
    let expected = rule.sha256.as_deref().map(str::to_ascii_lowercase);
    let wasm = match &rule.plugin {
        PluginLocation::Local(path) => {
            tokio::fs::read(path)
                .await
                .map_err(|source| RuleError::Read {
                    path: path.clone(),
                    source,
                })?
        }
        remote => {
            let expected = expected.as_deref().ok_or_else(|| RuleError::Fetch {
                location: location.clone(),
                message: "rule.sha256 is required for a remote plugin".into(),
            })?;
            let cached = cache_dir.map(|d| d.join("plugins").join(format!("{expected}.wasm")));
            match read_cached(cached.as_deref(), expected).await {
                Some(bytes) => {
                    tracing::debug!(plugin = %location, "plugin found in the cache by its digest");
                    bytes
                }
                None => {
                    let bytes = download(loaded, remote).await?;
                    verify(&location, expected, &bytes)?;
                    if let Some(file) = &cached {
                        let kept = std::fs::create_dir_all(file.parent().expect("under the cache"))
                            .and_then(|()| write_atomically(file, &bytes));
                        if let Err(e) = kept {
                            tracing::warn!(file = %file.display(), error = %e, "cannot keep the fetched plugin in the cache");
                        }
                    }
                    tracing::info!(plugin = %location, bytes = bytes.len(), "fetched plugin");
                    bytes
                }
            }
        }
    };
    if let Some(expected) = &expected {
        verify(&location, expected, &wasm)?;
    }
    Ok(Fetched {
        label: PathBuf::from(location),
        name: rule.plugin.name(),
        wasm,
    })
}

/// The cached copy of the plugin with digest `expected`, when there is one and it still has that digest.
async fn read_cached(file: Option<&Path>, expected: &str) -> Option<Vec<u8>> {
    let file = file?;
    let bytes = tokio::fs::read(file).await.ok()?;
    if sha256_hex(&bytes) == expected {
        return Some(bytes);
    }
    tracing::warn!(file = %file.display(), "cached plugin does not match its digest; fetching it again");
    None
}

fn verify(location: &str, expected: &str, wasm: &[u8]) -> Result<(), RuleError> {
    let actual = sha256_hex(wasm);
    if actual == expected {
        Ok(())
    } else {
        Err(RuleError::Digest {
            location: location.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Why one download attempt failed.
enum Failure {
    /// Worth another attempt (no answer, a server error).
    Transient(String),
    /// The answer will not change (missing, refused, not a URL).
    Permanent(String),
}

async fn download(loaded: &Loaded, location: &PluginLocation) -> Result<Vec<u8>, RuleError> {
    let rule = &loaded.config.rule;
    let limit = Duration::from_secs(rule.fetch_timeout_secs);
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(5))
            .with_attempts(3);
    let fail = |message: String| RuleError::Fetch {
        location: location.to_string(),
        message,
    };
    loop {
        let attempt = tokio::time::timeout(limit, download_once(loaded, location))
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Transient(format!(
                    "no complete answer within rule.fetch_timeout_secs ({} s)",
                    limit.as_secs()
                )))
            });
        match attempt {
            Ok(bytes) => return Ok(bytes),
            Err(Failure::Permanent(message)) => return Err(fail(message)),
            Err(Failure::Transient(message)) => match backoff.next_delay() {
                Some(wait) => {
                    tracing::warn!(plugin = %location, error = %message, retry_ms = wait.as_millis() as u64, "cannot fetch the plugin; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(fail(message)),
            },
        }
    }
}

async fn download_once(loaded: &Loaded, location: &PluginLocation) -> Result<Vec<u8>, Failure> {
    #[cfg(not(any(feature = "s3", feature = "https-plugins")))]
    let _ = loaded;
    match location {
        PluginLocation::Local(_) => unreachable!("local plugins are read, not fetched"),
        #[cfg(feature = "s3")]
        PluginLocation::S3 { bucket, key } => {
            let client = loaded.config.aws.s3().await;
            let out = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| {
                    let message = crate::aws::sdk_error(&e);
                    match e.raw_response().map(|r| r.status().as_u16()) {
                        Some(status) if status < 500 && status != 429 => {
                            Failure::Permanent(message)
                        }
                        _ => Failure::Transient(message),
                    }
                })?;
            if out.content_length().unwrap_or(0) > MAX_PLUGIN_BYTES as i64 {
                return Err(Failure::Permanent(too_big()));
            }
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?
                .into_bytes();
            if bytes.len() > MAX_PLUGIN_BYTES {
                return Err(Failure::Permanent(too_big()));
            }
            Ok(bytes.to_vec())
        }
        #[cfg(feature = "https-plugins")]
        PluginLocation::Web(url) => web::get(url, loaded.config.rule.tls_ca_file.as_deref()).await,
        #[allow(
            unreachable_patterns,
            reason = "a build without the s3 or https-plugins feature"
        )]
        other => Err(Failure::Permanent(format!(
            "{other} needs a feature this build of weir lacks"
        ))),
    }
}

#[cfg_attr(
    not(any(feature = "s3", feature = "https-plugins")),
    allow(dead_code, reason = "used by the download backends")
)]
fn too_big() -> String {
    format!("the plugin is larger than {MAX_PLUGIN_BYTES} bytes")
}

/// Plugins on web servers: one HTTP/1.1 GET over rustls, following up to five redirects (release pages
/// and presigned URLs redirect).
#[cfg(feature = "https-plugins")]
mod web {
    use std::path::Path;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::{Failure, MAX_PLUGIN_BYTES, too_big};

    pub(super) async fn get(url: &str, ca_file: Option<&Path>) -> Result<Vec<u8>, Failure> {
        let tls =
            crate::tls::client_config(ca_file, "rule.tls_ca_file").map_err(Failure::Permanent)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let mut uri: hyper::Uri = url
            .parse()
            .map_err(|e| Failure::Permanent(format!("not a URL: {e}")))?;
        for _ in 0..=5 {
            let answer = client
                .get(uri.clone())
                .await
                .map_err(|e| Failure::Transient(error_chain(&e)))?;
            let status = answer.status();
            if status.is_redirection() {
                let next = answer
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| Failure::Permanent(format!("{status} without a Location")))?;
                uri = redirect(&uri, next)?;
                continue;
            }
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(Failure::Transient(format!("the server answered {status}")));
            }
            if !status.is_success() {
                return Err(Failure::Permanent(format!("the server answered {status}")));
            }
            let body = Limited::new(answer.into_body(), MAX_PLUGIN_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Failure::Permanent(too_big())
                    } else {
                        Failure::Transient(error_chain(&*e))
                    }
                })?;
            return Ok(body.to_bytes().to_vec());
        }
        Err(Failure::Permanent("more than five redirects".into()))
    }

    /// The URL a `Location` header points to, relative to `from`.
    fn redirect(from: &hyper::Uri, location: &str) -> Result<hyper::Uri, Failure> {
        let bad = |e: String| Failure::Permanent(format!("redirect to {location:?}: {e}"));
        if location.starts_with('/') {
            let mut parts = from.clone().into_parts();
            parts.path_and_query = Some(location.parse().map_err(|e| bad(format!("{e}")))?);
            hyper::Uri::from_parts(parts).map_err(|e| bad(e.to_string()))
        } else {
            location.parse().map_err(|e| bad(format!("{e}")))
        }
    }

    fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}
