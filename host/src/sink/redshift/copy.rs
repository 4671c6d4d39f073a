//! The COPY stage fill: the batch's rows as gzip JSON lines in S3, loaded with one `COPY` per table.

use super::*;

/// The Redshift-only fast path for the stage fill: `COPY` from gzip JSON-lines files in S3 listed by a
/// manifest, then the same merge. Needs real Redshift (PostgreSQL has no `COPY … FROM 's3://…'`); the files
/// hold one [`stage_json_line`] per row.
pub fn copy_stage_sql(
    stage: &str,
    columns: &[String],
    manifest_url: &str,
    iam_role: &str,
    region: &str,
) -> String {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "COPY {stage} ({}) FROM {} IAM_ROLE {} FORMAT AS JSON 'auto' GZIP MANIFEST TIMEFORMAT 'auto' REGION {}",
        columns.join(", "),
        literal(manifest_url),
        literal(iam_role),
        literal(region)
    )
}

/// One stage row as a JSON object for `COPY … FORMAT AS JSON 'auto'`: keys are the column names, `SUPER`
/// values nested JSON — the validated JSON text itself, byte for byte, as the INSERT path binds it (parsing
/// and printing it again would turn big integers into floats and lone surrogates into NULL) — decimals and
/// timestamps strings Redshift parses.
pub fn stage_json_line(
    spec: &TableSpec,
    cells: &[Cell],
    lineage: [&str; 3],
    loaded_at: &str,
) -> String {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let mut fields: Vec<String> = Vec::with_capacity(cells.len() + LINEAGE_COLUMNS.len());
    for ((name, _), cell) in spec.columns.iter().zip(cells) {
        let value = match cell {
            Cell::Null => "null".to_string(),
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(x) => serde_json::Number::from_f64(*x)
                .map_or_else(|| "null".to_string(), |n| n.to_string()),
            Cell::Json(j) => minify_json(j),
            Cell::TimestampUs(us) => text(&sql_timestamp(*us)),
            Cell::Decimal(t) | Cell::Text(t) => text(t),
        };
        fields.push(format!("{}:{value}", text(name)));
    }
    for (name, value) in LINEAGE_COLUMNS
        .iter()
        .zip([lineage[0], lineage[1], lineage[2], loaded_at])
    {
        fields.push(format!("{}:{}", text(name), text(value)));
    }
    format!("{{{}}}", fields.join(","))
}

/// Valid JSON text without the whitespace between its tokens (one line of a JSON-lines file), every token
/// as it was: numbers, escapes and strings are not re-encoded.
pub fn minify_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// An AWS call's failure: the service said no (permanent), or it could not be reached (transient).
#[cfg(feature = "aws")]
pub(super) fn aws_error<E, R>(
    what: &str,
    e: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> SinkError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let service = matches!(
        e,
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(_)
    );
    let message = format!("{what}: {}", crate::aws::error_message(&e));
    if service {
        SinkError::Permanent(message)
    } else {
        SinkError::Transient(message)
    }
}

/// Per table: the batch's COPY data as gzip JSON lines (deduplicated to the latest row per key), `None` for a
/// table without rows.
fn copy_data(load: &Load<'_>, specs: &[TableSpec]) -> Vec<Option<Vec<u8>>> {
    use std::io::Write;
    let loaded_at = sql_timestamp(load.loaded_at_us);
    rows_by_table(load, specs.len(), None)
        .into_iter()
        .enumerate()
        .map(|(t, rows)| {
            if rows.is_empty() {
                return None;
            }
            let sql = TableSql::new("s", &specs[t]);
            let mut text = String::new();
            for (row, record_id) in dedupe(rows, &sql.key, sql.version, KeyEquality::Redshift) {
                let line = stage_json_line(
                    &specs[t],
                    &row.cells,
                    [record_id, &load.batch.id, load.rule_digest],
                    &loaded_at,
                );
                text.push_str(&line);
                text.push('\n');
            }
            // One write: the compressor resets a buffer per write call.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).expect("writing to memory");
            Some(gz.finish().expect("writing to memory"))
        })
        .collect()
}

/// A batch id as one S3 key segment (characters outside `[A-Za-z0-9-_.]` become `_`).
fn key_segment(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A COPY manifest listing `urls`, each mandatory (a missing file fails the COPY instead of loading less).
pub fn copy_manifest(urls: &[&str]) -> String {
    let entries: Vec<serde_json::Value> = urls
        .iter()
        .map(|u| serde_json::json!({"url": u, "mandatory": true}))
        .collect();
    serde_json::json!({ "entries": entries }).to_string()
}

#[cfg(feature = "s3")]
async fn put_s3(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<(), SinkError> {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws_error("S3 PutObject", e))
}

/// Writes the COPY stage files of a batch: per table with rows, gzip JSON lines (deduplicated to the latest
/// row per key) and a manifest, under `{prefix}{batch id}/`. Keys depend only on the batch, so a retry rewrites
/// the same objects. Returns each table's manifest URL (`None` for a table without rows).
#[cfg(feature = "s3")]
pub async fn write_copy_stage(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    load: &Load<'_>,
    specs: &[TableSpec],
) -> Result<Vec<Option<String>>, SinkError> {
    let folder = key_segment(&load.batch.id);
    let mut manifests = Vec::with_capacity(specs.len());
    for (t, data) in copy_data(load, specs).into_iter().enumerate() {
        let Some(data) = data else {
            manifests.push(None);
            continue;
        };
        let data_key = format!("{prefix}{folder}/{}.jsonl.gz", specs[t].name);
        let manifest_key = format!("{prefix}{folder}/{}.manifest", specs[t].name);
        let url = format!("s3://{bucket}/{data_key}");
        put_s3(s3, bucket, &data_key, data).await?;
        put_s3(
            s3,
            bucket,
            &manifest_key,
            copy_manifest(&[&url]).into_bytes(),
        )
        .await?;
        manifests.push(Some(format!("s3://{bucket}/{manifest_key}")));
    }
    Ok(manifests)
}

/// Grouped commits with the COPY fill: a worker writes its batch's rows as COPY data files, one per table with
/// rows, under `{prefix}{batch id}/{table}-{content digest}.jsonl.gz`. The key names the content, so a file
/// once written never changes: the loader's manifest lists exactly the files its batches were staged with,
/// even if a restarted worker stages the same batch again. Returns each table's file URL.
#[cfg(feature = "s3")]
pub async fn write_copy_rows(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    load: &Load<'_>,
    specs: &[TableSpec],
) -> Result<Vec<Option<String>>, SinkError> {
    use sha2::Digest;
    let folder = key_segment(&load.batch.id);
    let mut urls = Vec::with_capacity(specs.len());
    for (t, data) in copy_data(load, specs).into_iter().enumerate() {
        let Some(data) = data else {
            urls.push(None);
            continue;
        };
        let digest = sha2::Sha256::digest(&data);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let key = format!("{prefix}{folder}/{}-{hex}.jsonl.gz", specs[t].name);
        put_s3(s3, bucket, &key, data).await?;
        urls.push(Some(format!("s3://{bucket}/{key}")));
    }
    Ok(urls)
}

/// `s3://bucket/key` split into bucket and key.
pub fn split_s3_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("s3://")?.split_once('/')
}

/// Where a staged row comes from: its record, batch and rule (the lineage columns).
#[derive(Debug, Clone, Copy)]
pub(super) struct Lineage<'a> {
    pub(super) record: &'a str,
    pub(super) batch: &'a str,
    pub(super) rule: &'a str,
}

/// The rows of one load with their lineage.
pub(super) fn with_lineage<'a>(
    rows: Vec<(&'a CheckedRow, &'a str)>,
    load: &'a Load<'_>,
) -> Vec<(&'a CheckedRow, Lineage<'a>)> {
    rows.into_iter()
        .map(|(row, record)| {
            let lineage = Lineage {
                record,
                batch: &load.batch.id,
                rule: load.rule_digest,
            };
            (row, lineage)
        })
        .collect()
}

/// Empties the stage and fills it with `rows`, the latest per key: by binary `COPY` (`binary`, the `postgres`
/// kind) or by portable multi-row INSERTs in chunks. Every row takes the load time `loaded_at_us`.
pub(super) async fn fill_stage(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &mut Statements,
    sql: &TableSql,
    rows: Vec<(&CheckedRow, Lineage<'_>)>,
    (loaded_at_us, binary): (i64, bool),
) -> Result<(), SinkError> {
    tx.batch_execute(traced(&sql.empty_stage()))
        .await
        .map_err(classify)?;
    if rows.is_empty() {
        return Ok(());
    }
    let rows = dedupe(rows, &sql.key, sql.version, sql.equality);
    if binary {
        return super::binary::copy_binary_stage(tx, sql, &rows, loaded_at_us).await;
    }
    let loaded_at = &sql_timestamp(loaded_at_us);
    let width = sql.columns.len();
    let mut pending: Vec<Bind> = Vec::new();
    let mut pending_rows = 0;
    let mut bytes = 0;
    for (row, lineage) in rows {
        for (cell, ty) in row.cells.iter().zip(&sql.types) {
            pending.push(bind(*ty, cell));
        }
        pending.push(Bind::Text(Some(lineage.record.to_string())));
        pending.push(Bind::Text(Some(lineage.batch.to_string())));
        pending.push(Bind::Text(Some(lineage.rule.to_string())));
        pending.push(Bind::Text(Some(loaded_at.to_string())));
        bytes += pending[pending.len() - width..]
            .iter()
            .map(Bind::size)
            .sum::<usize>();
        pending_rows += 1;
        if pending.len() + width > MAX_BINDS
            || bytes > MAX_STATEMENT_BYTES
            || pending_rows >= MAX_ROWS_PER_INSERT
        {
            insert_chunk(tx, prepared, sql, &pending, pending_rows).await?;
            pending.clear();
            pending_rows = 0;
            bytes = 0;
        }
    }
    if pending_rows > 0 {
        insert_chunk(tx, prepared, sql, &pending, pending_rows).await?;
    }
    Ok(())
}

impl RedshiftSink {
    /// With the COPY stage fill: writes a one-row gzip JSON file and its manifest under the fill's prefix
    /// (always the same two keys), then `COPY`s it into a temporary table with the fill's role, in a
    /// transaction that is rolled back. This is what a load does, so it fails the same way: a role Redshift
    /// cannot assume or that cannot read the bucket, a region that is not the bucket's.
    pub(super) async fn probe_copy(&self) -> Result<Option<String>, SinkError> {
        #[cfg(not(feature = "s3"))]
        return Ok(None);
        #[cfg(feature = "s3")]
        {
            let StageFillConfig::Copy {
                bucket,
                prefix,
                iam_role,
                region,
            } = &self.stage_fill
            else {
                return Ok(None);
            };
            let s3 = self.aws.s3_from(self.sdk().await);
            let data_key = format!("{prefix}weir-validate/probe.jsonl.gz");
            let manifest_key = format!("{prefix}weir-validate/probe.manifest");
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(b"{\"x\": \"ok\"}\n")
                .expect("writing to memory");
            let data = gz.finish().expect("writing to memory");
            put_s3(&s3, bucket, &data_key, data).await?;
            let url = format!("s3://{bucket}/{data_key}");
            put_s3(
                &s3,
                bucket,
                &manifest_key,
                copy_manifest(&[&url]).into_bytes(),
            )
            .await?;
            let manifest = format!("s3://{bucket}/{manifest_key}");
            let region = region
                .clone()
                .or_else(|| self.aws.region.clone())
                .unwrap_or_else(|| "us-east-1".into());
            let mut conn = self.connect().await?;
            let tx = conn.client.transaction().await.map_err(classify)?;
            tx.batch_execute(traced(
                "CREATE TEMP TABLE weir_validate_copy (x VARCHAR(16))",
            ))
            .await
            .map_err(classify)?;
            let copy = copy_stage_sql(
                "weir_validate_copy",
                &["x".to_string()],
                &manifest,
                iam_role,
                &region,
            );
            tx.batch_execute(traced(&copy)).await.map_err(|e| {
                SinkError::Permanent(format!(
                    "COPY from {manifest} with IAM_ROLE {iam_role} failed: {} (the role must be associated \
                     with the cluster or workgroup, trust redshift.amazonaws.com and may s3:GetObject on \
                     the prefix; sink.stage_fill.region must be the bucket's)",
                    classify(e)
                ))
            })?;
            let rows = tx
                .query_one(traced("SELECT count(*) FROM weir_validate_copy"), &[])
                .await
                .map_err(classify)?;
            let n: i64 = rows.get(0);
            tx.rollback().await.map_err(classify)?;
            if n != 1 {
                return Err(SinkError::Permanent(format!(
                    "COPY from {manifest} loaded {n} rows instead of 1"
                )));
            }
            Ok(Some(format!(
                "COPY from s3://{bucket}/{prefix} with IAM_ROLE {iam_role} (region {region})"
            )))
        }
    }
}
