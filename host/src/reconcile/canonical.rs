//! Canonical text of values, keys and RAW references, so that what a database gives back compares equal to
//! what a rule gives.

use super::*;

/// Canonical text of a stored value of type `ty`, so that values read back from a database compare equal to
/// the cells the rule gives (`None` for NULL).
pub fn canonical_stored(ty: ColumnType, text: Option<&str>) -> Option<String> {
    let t = text?;
    Some(match ty {
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => t
            .trim()
            .parse::<i64>()
            .map(|i| i.to_string())
            .unwrap_or_else(|_| t.to_string()),
        ColumnType::Real => t
            .trim()
            .parse::<f32>()
            .map(|x| format!("{x:?}"))
            .unwrap_or_else(|_| t.to_string()),
        ColumnType::Double => t
            .trim()
            .parse::<f64>()
            .map(|x| format!("{x:?}"))
            .unwrap_or_else(|_| t.to_string()),
        ColumnType::Decimal { precision, scale } => {
            crate::schema::normalize_decimal(t.trim(), precision, scale)
                .unwrap_or_else(|_| t.to_string())
        }
        ColumnType::Boolean => match t.trim() {
            "t" | "true" | "TRUE" | "1" => "true".into(),
            "f" | "false" | "FALSE" | "0" => "false".into(),
            other => other.to_string(),
        },
        ColumnType::Varchar(_) => t.to_string(),
        ColumnType::Timestamp | ColumnType::TimestampTz => parse_timestamp_us(t)
            .map(crate::schema::format_timestamp_us)
            .unwrap_or_else(|| t.to_string()),
        ColumnType::Super => canonical_json(t).unwrap_or_else(|| t.to_string()),
    })
}

/// Canonical text of a cell the rule gives.
pub fn canonical_cell(ty: ColumnType, cell: &Cell) -> Option<String> {
    match cell {
        Cell::Null => None,
        Cell::Float(x) if ty == ColumnType::Real => Some(format!("{:?}", *x as f32)),
        Cell::Float(x) => Some(format!("{x:?}")),
        Cell::Json(s) => Some(canonical_json(s).unwrap_or_else(|| s.clone())),
        other => other.to_text(),
    }
}

/// JSON text with object keys sorted and no spaces.
pub(super) fn canonical_json(text: &str) -> Option<String> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(sort(v).to_string())
}

/// µs since the epoch of a timestamp as databases print it (`2026-11-21 10:00:00+00`,
/// `2026-11-21 10:00:00.5`, RFC 3339).
pub(super) fn parse_timestamp_us(t: &str) -> Option<i64> {
    let t = t.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.timestamp_micros());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return Some(d.timestamp_micros());
        }
    }
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .map(|d| d.and_utc().timestamp_micros())
}

/// The primary key of a row of `spec`, as canonical texts.
pub(super) fn key_of(spec: &TableSpec, cells: &[Option<String>]) -> Vec<String> {
    spec.primary_key
        .iter()
        .map(|k| {
            let i = spec
                .columns
                .iter()
                .position(|(c, _)| c == k)
                .expect("key columns are declared");
            cells[i].clone().unwrap_or_default()
        })
        .collect()
}

pub(super) fn key_text(spec: &TableSpec, key: &[String]) -> String {
    spec.primary_key
        .iter()
        .zip(key)
        .map(|(c, v)| format!("{c}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason category: the text before the first `:`.
pub(super) fn category(reason: &str) -> String {
    reason.split(':').next().unwrap_or("").trim().to_string()
}

pub(super) fn source_record(line: &RawLine) -> SourceRecord {
    SourceRecord {
        id: line.id.clone(),
        partition_key: line.partition_key.clone(),
        arrived_at_ms: line.arrived_at_ms,
        attributes: line.attributes.clone(),
        payload: line.payload_bytes().unwrap_or_default(),
    }
}

pub(super) fn hour_label(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.div_euclid(HOUR_MS) * HOUR_MS)
        .map(|t| t.format("%Y-%m-%dT%H").to_string())
        .unwrap_or_default()
}

/// The RAW object of a RAW reference (`{key}#{line}` → `{key}`).
pub fn object_of(raw_ref: &str) -> &str {
    raw_ref.rsplit_once('#').map(|(k, _)| k).unwrap_or(raw_ref)
}

pub(super) fn stored_canonical(spec: &TableSpec, row: &StoredRow) -> Vec<Option<String>> {
    spec.columns
        .iter()
        .zip(&row.cells)
        .map(|((_, ty), v)| canonical_stored(*ty, v.as_deref()))
        .collect()
}

pub(super) fn expected_canonical(spec: &TableSpec, row: &CheckedRow) -> Vec<Option<String>> {
    spec.columns
        .iter()
        .zip(&row.cells)
        .map(|((_, ty), c)| canonical_cell(*ty, c))
        .collect()
}

/// `(source, partition)` of a RAW key: `…source={s}/dt=…/hour=…/{partition}-{first}-{last}[-{digest}].jsonl.gz`.
pub(super) fn partition_of_key(key: &str) -> (String, String) {
    let source = key
        .split("source=")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or("")
        .to_string();
    let file = key
        .rsplit('/')
        .next()
        .unwrap_or(key)
        .trim_end_matches(".jsonl.gz");
    let parts: Vec<&str> = file.rsplitn(3, '-').collect();
    let partition = parts.last().copied().unwrap_or(file).to_string();
    (source, partition)
}
