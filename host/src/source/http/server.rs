//! The HTTP/1.1 server of the ingest source (hyper): routes, bodies, authentication, answers.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/records` | one record per line (blank lines skipped), or a JSON array (one record per element, its JSON text as the payload); `Content-Encoding: gzip` accepted | 200 `{"request_id", "records"}` once committed |
//! | `POST /v1/firehose` | Firehose's `{"requestId", "timestamp", "records": [{"data": base64}]}` | 200 `{"requestId", "timestamp"}`; errors add `errorMessage` |
//!
//! Errors: 400 (malformed body or request id), 401 (`auth`), 404, 405, 408 (body not received within 30 s),
//! 413 (over `max_body_bytes`, or more records than `max_pending_records`), 415 (an encoding other than gzip),
//! 429 (pipeline full, `Retry-After: 1`), 503 (shutting down, the pipeline stopped, or not committed within
//! `commit_timeout_secs`; `Retry-After: 5`). Every answer is JSON.

use std::convert::Infallible;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;

use super::{Admission, Fate, MAX_REQUEST_ID_BYTES, Shared};
use crate::contract::SourceRecord;

/// How long a client may take to send its headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until aborted (the source closed), at most [`super::MAX_CONNECTIONS`] at once. Each
/// connection, once the server is stopping, finishes the request it is answering and closes.
pub(super) async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let slots = shared.connections.clone();
    crate::admin::accept_capped(&listener, &slots, "http source", |stream, permit| {
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut stopping = shared.stopping.subscribe();
            let service = {
                let shared = shared.clone();
                service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&shared, req).await) }
                })
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    })
    .await;
}

/// The two protocols.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Records,
    Firehose,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Records => "records",
            Route::Firehose => "firehose",
        }
    }
}

/// An answer before it is shaped for its route.
struct Reply {
    status: StatusCode,
    request_id: String,
    records: usize,
    error: Option<String>,
    retry_after_secs: Option<u32>,
}

impl Reply {
    fn error(status: StatusCode, request_id: &str, error: impl Into<String>) -> Self {
        let retry_after_secs = match status {
            StatusCode::TOO_MANY_REQUESTS => Some(1),
            StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        };
        Reply {
            status,
            request_id: request_id.to_string(),
            records: 0,
            error: Some(error.into()),
            retry_after_secs,
        }
    }
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let route = match req.uri().path() {
        "/v1/records" => Route::Records,
        "/v1/firehose" => Route::Firehose,
        _ => {
            return shape(
                Route::Records,
                Reply::error(
                    StatusCode::NOT_FOUND,
                    "",
                    "no such route; POST /v1/records or /v1/firehose",
                ),
            );
        }
    };
    let reply = if req.method() != Method::POST {
        Reply::error(StatusCode::METHOD_NOT_ALLOWED, "", "use POST")
    } else {
        receive(shared, route, req).await
    };
    if reply.status != StatusCode::OK {
        tracing::debug!(route = route.label(), status = reply.status.as_u16(), request_id = %reply.request_id,
            error = reply.error.as_deref().unwrap_or(""), "http source: request refused");
    }
    shape(route, reply)
}

/// Reads, checks and takes one request, then waits for its commit.
async fn receive(shared: &Shared, route: Route, req: Request<Incoming>) -> Reply {
    let options = &shared.options;
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let header_id = match route {
        Route::Records => header("x-request-id"),
        Route::Firehose => header("x-amz-firehose-request-id"),
    }
    .unwrap_or("")
    .to_string();
    if let Some(secret) = &options.auth {
        let given = match route {
            Route::Records => header("authorization").and_then(|a| a.strip_prefix("Bearer ")),
            Route::Firehose => header("x-amz-firehose-access-key"),
        };
        if !given.is_some_and(|g| same_secret(g.as_bytes(), secret.as_bytes())) {
            let how = match route {
                Route::Records => "send `Authorization: Bearer {source.auth}`",
                Route::Firehose => "set the delivery stream's access key to source.auth",
            };
            return Reply::error(
                StatusCode::UNAUTHORIZED,
                &header_id,
                format!("missing or wrong credentials: {how}"),
            );
        }
    }
    let body = match read_body(&headers, body, options.max_body_bytes).await {
        Ok(b) => b,
        Err((status, why)) => return Reply::error(status, &header_id, why),
    };
    let now_ms = crate::record::wall_clock_us() / 1000;
    let (request_id, records) = match route {
        Route::Records => {
            let id = if header_id.is_empty() {
                generated_id()
            } else {
                header_id
            };
            let partition_key = header("x-partition-key").unwrap_or("");
            if partition_key.len() > 256 {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    &id,
                    "X-Partition-Key is longer than 256 bytes",
                );
            }
            match lines_or_array(&body) {
                Ok(payloads) => (id, records_of(payloads, partition_key, now_ms, Vec::new())),
                Err(why) => return Reply::error(StatusCode::BAD_REQUEST, &id, why),
            }
        }
        Route::Firehose => match firehose(&body, header) {
            Ok(parsed) => parsed,
            Err(why) => return Reply::error(StatusCode::BAD_REQUEST, &header_id, why),
        },
    };
    let request_id = request_id.as_str();
    if !crate::source::valid_id(request_id, MAX_REQUEST_ID_BYTES) {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "",
            format!(
                "the request id must be 1 to {MAX_REQUEST_ID_BYTES} letters, digits, `.`, `_`, `:` or `-`"
            ),
        );
    }
    let n = records.len();
    if n > options.max_pending_records {
        return Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            request_id,
            format!(
                "{n} records is more than source.max_pending_records ({}); send them in smaller requests",
                options.max_pending_records
            ),
        );
    }
    let records: Vec<SourceRecord> = records
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.id = format!("http/{}/{request_id}/{}", options.node, i + 1);
            r
        })
        .collect();
    if let Some(forward) = &shared.forward {
        return forwarded(shared, forward.as_ref(), request_id, records).await;
    }
    let mut done = match shared.admit(request_id, records) {
        Admission::Taken(rx) | Admission::Joined(rx) => rx,
        Admission::Full => {
            return Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                request_id,
                "the pipeline is full (source.max_pending_records / max_pending_bytes); retry after a second",
            );
        }
        Admission::Closed(why) => {
            return Reply::error(StatusCode::SERVICE_UNAVAILABLE, request_id, why);
        }
    };
    let waited = tokio::time::timeout(
        options.commit_timeout,
        done.wait_for(|f| *f != Fate::Pending),
    )
    .await;
    match waited {
        Ok(Ok(fate)) => match &*fate {
            Fate::Committed => Reply {
                status: StatusCode::OK,
                request_id: request_id.to_string(),
                records: n,
                error: None,
                retry_after_secs: None,
            },
            Fate::Failed(why) => Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                request_id,
                format!("{why}; retry the request with the same request id"),
            ),
            Fate::Pending => unreachable!("waited for a fate other than pending"),
        },
        Ok(Err(_)) => Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            request_id,
            "the pipeline stopped; retry the request with the same request id",
        ),
        Err(_) => Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            request_id,
            format!(
                "not committed within source.commit_timeout_secs ({} s); the records may still commit: retry \
                 with the same request id (idempotent)",
                options.commit_timeout.as_secs()
            ),
        ),
    }
}

/// A forwarding tier's request: its records put into the stream or queue, answered once they all were.
async fn forwarded(
    shared: &Shared,
    forward: &dyn super::Forward,
    request_id: &str,
    records: Vec<SourceRecord>,
) -> Reply {
    if let Some(why) = forward.refuse(&records) {
        return Reply::error(StatusCode::PAYLOAD_TOO_LARGE, request_id, why);
    }
    let permits = match shared.reserve_forward(&records) {
        Ok(p) => p,
        Err(Admission::Closed(why)) => {
            return Reply::error(StatusCode::SERVICE_UNAVAILABLE, request_id, why);
        }
        Err(_) => {
            return Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                request_id,
                "too many records in flight ([serve] max_pending_records / max_pending_bytes); retry after a second",
            );
        }
    };
    let timeout = shared.options.commit_timeout;
    let put = tokio::time::timeout(timeout, forward.put(&records)).await;
    drop(permits);
    match put {
        Ok(Ok(())) => Reply {
            status: StatusCode::OK,
            request_id: request_id.to_string(),
            records: records.len(),
            error: None,
            retry_after_secs: None,
        },
        Ok(Err(e)) => Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            request_id,
            format!(
                "forwarding to {} failed: {e}; retry the request",
                forward.describe()
            ),
        ),
        Err(_) => Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            request_id,
            format!(
                "forwarding to {} took longer than {} s; retry the request",
                forward.describe(),
                timeout.as_secs()
            ),
        ),
    }
}

/// The body, bounded by `max` bytes before and after gzip decoding, within [`BODY_TIMEOUT`].
async fn read_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
    max: usize,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than source.max_body_bytes ({max} bytes)"),
        )
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l > max as u64) {
        return Err(too_large());
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("") | Some("identity") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") => true,
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{other}` is not supported; send gzip or no encoding"),
            ));
        }
    };
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max).collect())
        .await
        .map_err(|_| {
            (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            ));
        }
    };
    if !gzip {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the body is not valid gzip: {e}"),
            )
        })?;
    if out.len() > max {
        return Err(too_large());
    }
    Ok(out)
}

/// The payloads of a `/v1/records` body: the elements of a JSON array (each its exact JSON text), or else
/// each non-blank line (without its line end).
fn lines_or_array(body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let elements: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
            .map_err(|e| format!("the body starts with `[` but is not a JSON array: {e}"))?;
        // The raw values borrow from `body`, so their text is the client's bytes.
        return Ok(elements.into_iter().map(|e| e.get().as_bytes()).collect());
    }
    Ok(body
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .collect())
}

fn records_of<'a>(
    payloads: impl IntoIterator<Item = impl Into<Vec<u8>> + 'a>,
    partition_key: &str,
    arrived_at_ms: i64,
    attributes: Vec<(String, String)>,
) -> Vec<SourceRecord> {
    payloads
        .into_iter()
        .map(|p| SourceRecord {
            id: String::new(),
            partition_key: partition_key.to_string(),
            arrived_at_ms,
            attributes: attributes.clone(),
            payload: p.into(),
        })
        .collect()
}

/// Firehose's request body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FirehoseRequest {
    request_id: String,
    timestamp: i64,
    records: Vec<FirehoseRecord>,
}

#[derive(Deserialize)]
struct FirehoseRecord {
    data: String,
}

/// Firehose's common attributes header.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommonAttributes {
    common_attributes: std::collections::BTreeMap<String, String>,
}

/// Most attributes taken from Firehose's common attributes (Firehose itself allows 50).
const MAX_COMMON_ATTRIBUTES: usize = 50;

/// A Firehose delivery: its request id and records. Attributes: the stream's common attributes under their
/// own names, and `firehose:source_arn`. The arrival time is the request's `timestamp`.
fn firehose<'h>(
    body: &[u8],
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<(String, Vec<SourceRecord>), String> {
    let request: FirehoseRequest = serde_json::from_slice(body)
        .map_err(|e| format!("not a Firehose delivery request: {e}"))?;
    let mut attributes = Vec::new();
    if let Some(arn) = header("x-amz-firehose-source-arn") {
        attributes.push(("firehose:source_arn".to_string(), arn.to_string()));
    }
    if let Some(common) = header("x-amz-firehose-common-attributes") {
        let parsed: CommonAttributes = serde_json::from_str(common).map_err(|e| {
            format!(
                "X-Amz-Firehose-Common-Attributes is not `{{\"commonAttributes\": {{…}}}}`: {e}"
            )
        })?;
        attributes.extend(
            parsed
                .common_attributes
                .into_iter()
                .take(MAX_COMMON_ATTRIBUTES),
        );
    }
    let mut payloads = Vec::with_capacity(request.records.len());
    for (i, r) in request.records.iter().enumerate() {
        payloads.push(
            base64::engine::general_purpose::STANDARD
                .decode(&r.data)
                .map_err(|e| format!("records[{i}].data is not base64: {e}"))?,
        );
    }
    Ok((
        request.request_id,
        records_of(payloads, "", request.timestamp, attributes),
    ))
}

/// `{ms since the epoch}-{pid}-{counter}` in hex: unique on this node across restarts.
fn generated_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{n:x}",
        crate::record::wall_clock_us() / 1000,
        std::process::id()
    )
}

/// Compares secrets in time independent of where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The answer in its route's JSON shape.
fn shape(route: Route, reply: Reply) -> Response<Full<Bytes>> {
    let body = match route {
        Route::Records => {
            let mut o = serde_json::json!({ "request_id": reply.request_id });
            if let Some(e) = &reply.error {
                o["error"] = e.clone().into();
            } else {
                o["records"] = reply.records.into();
            }
            o
        }
        Route::Firehose => {
            let mut o = serde_json::json!({
                "requestId": reply.request_id,
                "timestamp": crate::record::wall_clock_us() / 1000,
            });
            if let Some(e) = &reply.error {
                o["errorMessage"] = e.clone().into();
            }
            o
        }
    };
    crate::metrics::global().inc(
        "weir_http_requests_total",
        &[("route", route.label()), ("status", reply.status.as_str())],
        1,
    );
    let mut response = Response::builder()
        .status(reply.status)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(secs) = reply.retry_after_secs {
        response = response.header(header::RETRY_AFTER, secs);
    }
    response
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_arrays() {
        assert_eq!(
            lines_or_array(b"{\"a\":1}\r\n\n  \n{\"b\": 2}").unwrap(),
            vec![&b"{\"a\":1}"[..], b"{\"b\": 2}"]
        );
        assert_eq!(
            lines_or_array(b" [ {\"a\": 1}, \"x\", 3 ]").unwrap(),
            vec![&b"{\"a\": 1}"[..], b"\"x\"", b"3"]
        );
        assert!(lines_or_array(b"[1, 2").is_err());
        assert!(lines_or_array(b"").unwrap().is_empty());
    }

    #[test]
    fn firehose_requests() {
        let body =
            br#"{"requestId":"ed4acda5-034f-9f42-bba1-f29aea6d7d8f","timestamp":1578090901599,
            "records":[{"data":"aGVsbG8="},{"data":"d29ybGQ="}]}"#;
        let (id, records) = firehose(body, |h| match h {
            "x-amz-firehose-source-arn" => Some("arn:aws:firehose:eu-west-1:1:deliverystream/s"),
            "x-amz-firehose-common-attributes" => Some(r#"{"commonAttributes":{"team":"a"}}"#),
            _ => None,
        })
        .unwrap();
        assert_eq!(id, "ed4acda5-034f-9f42-bba1-f29aea6d7d8f");
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].payload, b"world");
        assert_eq!(records[0].arrived_at_ms, 1578090901599);
        assert_eq!(
            records[0].attributes,
            vec![
                (
                    "firehose:source_arn".into(),
                    "arn:aws:firehose:eu-west-1:1:deliverystream/s".into()
                ),
                ("team".into(), "a".into())
            ]
        );
        assert!(
            firehose(
                br#"{"requestId":"x","timestamp":1,"records":[{"data":"!"}]}"#,
                |_| None
            )
            .is_err()
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}
