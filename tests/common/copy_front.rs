//! A stand-in for Redshift's `COPY … FROM 's3://…' … MANIFEST` in front of PostgreSQL, which has no COPY from
//! S3: a PostgreSQL wire-protocol front that forwards every message unchanged, except a simple query that is a
//! `COPY table (columns) FROM 's3://bucket/key.manifest' … FORMAT AS JSON 'auto' GZIP MANIFEST …` statement.
//! That one it carries out as Redshift would, against the local S3 server: it reads the manifest, reads every
//! listed gzip JSON-lines file (a missing mandatory file fails the statement), and sends the server, in the
//! same session and transaction, an `INSERT … SELECT … FROM json_populate_recordset(…)` of those lines, whose
//! keys are matched to the listed columns by name. Only the test double uses PostgreSQL-only SQL; what weir
//! sends is Redshift's `COPY`.

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
    /// A front for the PostgreSQL server at `target` (`host:port`), reading S3 at the AWS test server.
    pub async fn start(target: &str) -> CopyFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&super::aws_sdk().await)
                .force_path_style(true)
                .build(),
        );
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
    let down = async move { tokio::io::copy(&mut sr, &mut cw).await.map(|_| ()) };
    let up = forward_up(&mut cr, &mut sw, s3, copies, files);
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// Client to server: every message as it came, a COPY from S3 replaced by its INSERT.
async fn forward_up(
    cr: &mut tokio::net::tcp::OwnedReadHalf,
    sw: &mut tokio::net::tcp::OwnedWriteHalf,
    s3: &aws_sdk_s3::Client,
    copies: &AtomicUsize,
    files: &AtomicUsize,
) -> std::io::Result<()> {
    loop {
        let tag = cr.read_u8().await?;
        let len = cr.read_i32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        cr.read_exact(&mut body).await?;
        if tag == b'Q' {
            let text = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).to_string();
            if let Some(copy) = parse_copy(&text) {
                let statement = match load(s3, &copy).await {
                    Ok((lines, n)) => {
                        copies.fetch_add(1, Ordering::SeqCst);
                        files.fetch_add(n, Ordering::SeqCst);
                        insert_statement(&copy, &lines)
                    }
                    Err(e) => format!(
                        "DO $$ BEGIN RAISE EXCEPTION '{}'; END $$",
                        e.replace('\'', "''").replace('$', "")
                    ),
                };
                body = statement.into_bytes();
                body.push(0);
            }
        }
        sw.write_u8(tag).await?;
        sw.write_i32(body.len() as i32 + 4).await?;
        sw.write_all(&body).await?;
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

/// The statement PostgreSQL runs for the COPY: the lines as one JSON array, their keys matched to the
/// listed columns by name.
fn insert_statement(copy: &CopyStatement, lines: &[String]) -> String {
    let array = format!("[{}]", lines.join(","));
    format!(
        "INSERT INTO {t} ({c}) SELECT {c} FROM json_populate_recordset(NULL::{t}, '{}')",
        array.replace('\'', "''"),
        t = copy.table,
        c = copy.columns,
    )
}
