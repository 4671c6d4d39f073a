//! A stand-in for Redshift's `COPY … FROM 's3://…' … MANIFEST` in front of PostgreSQL, which has no COPY from
//! S3: a PostgreSQL wire-protocol front that forwards every message unchanged, except a simple query that is a
//! `COPY table (columns) FROM 's3://bucket/key.manifest' … FORMAT AS JSON 'auto' GZIP MANIFEST …` statement.
//! That one it carries out as Redshift would, against the local S3 server: it reads the manifest, reads every
//! listed gzip JSON-lines file (a missing mandatory file fails the statement), matches each line's keys to the
//! listed columns by name (a missing key is NULL, a nested object or array its JSON text), and loads the rows
//! in the same session and transaction with PostgreSQL's own bulk load, `COPY … FROM STDIN`, answering the
//! client as Redshift would (the server's CopyInResponse is swallowed). Only the test double uses
//! PostgreSQL-only SQL; what weir sends is Redshift's `COPY`. Used by the black-box tests (`tests/common`) and, as the example
//! `redshift_copy_front`, by the fleet benchmark (scripts/bench-fleet.sh).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running front; connect to [`CopyFront::addr`] instead of PostgreSQL.
pub struct CopyFront {
    /// `127.0.0.1:{port}` of the front.
    pub addr: String,
    copies: Arc<AtomicUsize>,
    files: Arc<AtomicUsize>,
}

impl CopyFront {
    /// A front on `listen` (`127.0.0.1:0`: any free port) for the PostgreSQL server at `target` (`host:port`),
    /// reading S3 through `s3`.
    pub async fn start_with(listen: &str, target: &str, s3: aws_sdk_s3::Client) -> CopyFront {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let copies = Arc::new(AtomicUsize::new(0));
        let files = Arc::new(AtomicUsize::new(0));
        let (target, counted, read) = (target.to_string(), copies.clone(), files.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, s3, counted, read) =
                    (target.clone(), s3.clone(), counted.clone(), read.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &target, &s3, &counted, &read).await;
                });
            }
        });
        CopyFront {
            addr,
            copies,
            files,
        }
    }

    /// `COPY` statements carried out so far.
    pub fn copies(&self) -> usize {
        self.copies.load(Ordering::SeqCst)
    }

    /// Files those statements read.
    pub fn files(&self) -> usize {
        self.files.load(Ordering::SeqCst)
    }
}

/// One client session: startup (refusing TLS, as a plaintext test server does), then messages.
async fn serve(
    mut client: tokio::net::TcpStream,
    target: &str,
    s3: &aws_sdk_s3::Client,
    copies: &AtomicUsize,
    files: &AtomicUsize,
) -> std::io::Result<()> {
    let mut server = tokio::net::TcpStream::connect(target).await?;
    // Small messages go at once (without it each extended-protocol message waits out Nagle's delay).
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    loop {
        let len = client.read_i32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        client.read_exact(&mut body).await?;
        let code = body
            .get(..4)
            .map(|c| i32::from_be_bytes(c.try_into().unwrap()));
        // SSLRequest and GSSENCRequest: "not here", and the client goes on in plaintext.
        if matches!(code, Some(80877103) | Some(80877104)) {
            client.write_all(b"N").await?;
            continue;
        }
        server.write_i32(len).await?;
        server.write_all(&body).await?;
        break;
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let swallow = AtomicUsize::new(0);
    let down = forward_down(&mut sr, &mut cw, &swallow);
    let up = forward_up(&mut cr, &mut sw, s3, (copies, files), &swallow);
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// Reads one message: its tag and body.
async fn read_message(r: &mut tokio::net::tcp::OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = r.read_u8().await?;
    let len = r.read_i32().await?;
    let mut body = vec![0u8; (len as usize).saturating_sub(4)];
    r.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// One message as bytes on the wire.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Server to client: every message, but the CopyInResponse of a COPY the front started itself.
async fn forward_down(
    sr: &mut tokio::net::tcp::OwnedReadHalf,
    cw: &mut tokio::net::tcp::OwnedWriteHalf,
    swallow: &AtomicUsize,
) -> std::io::Result<()> {
    loop {
        let (tag, body) = read_message(sr).await?;
        if tag == b'G'
            && swallow
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            continue;
        }
        cw.write_all(&message(tag, &body)).await?;
    }
}

/// Client to server: every message as it came, a COPY from S3 replaced by a COPY from STDIN and its rows.
async fn forward_up(
    cr: &mut tokio::net::tcp::OwnedReadHalf,
    sw: &mut tokio::net::tcp::OwnedWriteHalf,
    s3: &aws_sdk_s3::Client,
    (copies, files): (&AtomicUsize, &AtomicUsize),
    swallow: &AtomicUsize,
) -> std::io::Result<()> {
    loop {
        let (tag, body) = read_message(cr).await?;
        let copy = (tag == b'Q')
            .then(|| {
                parse_copy(&String::from_utf8_lossy(
                    &body[..body.len().saturating_sub(1)],
                ))
            })
            .flatten();
        let Some(copy) = copy else {
            sw.write_all(&message(tag, &body)).await?;
            continue;
        };
        match load(s3, &copy).await {
            Ok((lines, n)) => {
                copies.fetch_add(1, Ordering::SeqCst);
                files.fetch_add(n, Ordering::SeqCst);
                let mut query =
                    format!("COPY {} ({}) FROM STDIN", copy.table, copy.columns).into_bytes();
                query.push(0);
                swallow.fetch_add(1, Ordering::SeqCst);
                let mut out = message(b'Q', &query);
                match copy_text(&copy, &lines) {
                    Ok(rows) => {
                        for chunk in rows.chunks(1 << 16) {
                            out.extend_from_slice(&message(b'd', chunk));
                        }
                        out.extend_from_slice(&message(b'c', &[]));
                    }
                    // A line that is not a JSON object fails the COPY, as Redshift's would.
                    Err(e) => {
                        let mut reason = e.into_bytes();
                        reason.push(0);
                        out.extend_from_slice(&message(b'f', &reason));
                    }
                }
                sw.write_all(&out).await?;
            }
            Err(e) => {
                let mut query = format!(
                    "DO $$ BEGIN RAISE EXCEPTION '{}'; END $$",
                    e.replace('\'', "''").replace('$', "")
                )
                .into_bytes();
                query.push(0);
                sw.write_all(&message(b'Q', &query)).await?;
            }
        }
    }
}

/// A Redshift `COPY` from an S3 manifest of gzip JSON lines.
#[derive(Debug, PartialEq, Eq)]
pub struct CopyStatement {
    /// The table loaded.
    pub table: String,
    /// The columns listed, as written.
    pub columns: String,
    /// `s3://bucket/key` of the manifest.
    pub manifest: String,
}

/// The COPY statement in `text`, if it is one this front carries out (anything else is forwarded as is).
pub fn parse_copy(text: &str) -> Option<CopyStatement> {
    let rest = text.trim().strip_prefix("COPY ")?;
    let (table, rest) = rest.split_once(" (")?;
    let (columns, rest) = rest.split_once(") FROM '")?;
    let (manifest, options) = rest.split_once('\'')?;
    let wanted = ["FORMAT AS JSON 'auto'", "GZIP", "MANIFEST", "IAM_ROLE '"];
    if !manifest.starts_with("s3://") || !wanted.iter().all(|w| options.contains(w)) {
        return None;
    }
    Some(CopyStatement {
        table: table.to_string(),
        columns: columns.to_string(),
        manifest: manifest.to_string(),
    })
}

/// Every line of every file the manifest lists, and the number of files.
async fn load(
    s3: &aws_sdk_s3::Client,
    copy: &CopyStatement,
) -> Result<(Vec<String>, usize), String> {
    use std::io::Read;
    let manifest: serde_json::Value = serde_json::from_slice(&get(s3, &copy.manifest).await?)
        .map_err(|e| format!("COPY: manifest {} is not JSON: {e}", copy.manifest))?;
    let entries = manifest["entries"]
        .as_array()
        .ok_or_else(|| format!("COPY: manifest {} has no entries", copy.manifest))?;
    // Read as Redshift does, many files at once.
    let mut reads = tokio::task::JoinSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let url = entry["url"]
            .as_str()
            .ok_or("COPY: an entry without url")?
            .to_string();
        let (s3, mandatory) = (s3.clone(), entry["mandatory"] == true);
        reads.spawn(async move { (i, url.clone(), mandatory, get(&s3, &url).await) });
    }
    let mut files = Vec::new();
    while let Some(joined) = reads.join_next().await {
        files.push(joined.map_err(|e| format!("COPY: {e}"))?);
    }
    files.sort_by_key(|f| f.0);
    let mut lines = Vec::new();
    for (_, url, mandatory, read) in files {
        let gz = match read {
            Ok(gz) => gz,
            Err(e) if mandatory => return Err(e),
            Err(_) => continue,
        };
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .map_err(|e| format!("COPY: {url} is not gzip text: {e}"))?;
        lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    Ok((lines, entries.len()))
}

async fn get(s3: &aws_sdk_s3::Client, url: &str) -> Result<Vec<u8>, String> {
    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|u| u.split_once('/'))
        .ok_or_else(|| format!("COPY: not an S3 URL: {url}"))?;
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("COPY: S3 object {url} unreadable: {e}"))?;
    Ok(out
        .body
        .collect()
        .await
        .map_err(|e| format!("COPY: {url}: {e}"))?
        .to_vec())
}

/// The rows in PostgreSQL's COPY text format: per line, the listed columns' values by name (a missing key or
/// null is `\N`, a string its text, a nested object or array its JSON text), tab-separated and escaped.
fn copy_text(copy: &CopyStatement, lines: &[String]) -> Result<Vec<u8>, String> {
    let columns: Vec<String> = copy
        .columns
        .split(", ")
        .map(|c| c.trim_matches('"').to_string())
        .collect();
    let mut out = String::new();
    for line in lines {
        // Values as written (a string's escapes resolved); nothing else is parsed or copied.
        let row: std::collections::HashMap<
            std::borrow::Cow<'_, str>,
            &serde_json::value::RawValue,
        > = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            let raw = match row.get(column.as_str()) {
                Some(raw) if raw.get() != "null" => raw.get(),
                _ => {
                    out.push_str("\\N");
                    continue;
                }
            };
            let text: std::borrow::Cow<'_, str> = if raw.starts_with('"') {
                serde_json::from_str(raw).map_err(|e| format!("bad string: {e}"))?
            } else {
                raw.into()
            };
            for c in text.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}
