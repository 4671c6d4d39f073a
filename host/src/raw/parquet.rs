//! Parquet RAW objects (`[raw] format = "parquet"`): one file per batch under the same Hive-style keys, ending
//! in `.parquet`, for Athena, Spark, Glue or DuckDB to query in place.
//!
//! One row per record, in batch order:
//!
//! | column | type | |
//! |---|---|---|
//! | `id` | string | the record id |
//! | `position` | string | its source position |
//! | `partition_key` | string | |
//! | `arrived_at` | timestamp (ms, UTC) | the source's arrival time |
//! | `attributes` | map<string, string> | source attributes |
//! | `payload` | binary | the payload bytes, untouched |
//! | `payload_json` | string, nullable | the payload as text when it is valid JSON (query it with `json_extract`) |
//!
//! Snappy-compressed, one row group. The bytes are a function of the batch only (no timestamps), so a retried
//! batch rewrites the same object with the same bytes.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::parser::parse_message_type;

use super::{RawError, RawLine};
use crate::record::Batch;

/// The schema of every Parquet RAW object.
pub const SCHEMA: &str = "
message weir_raw {
  required binary id (STRING);
  required binary position (STRING);
  required binary partition_key (STRING);
  required int64 arrived_at (TIMESTAMP(MILLIS,true));
  required group attributes (MAP) {
    repeated group key_value {
      required binary key (STRING);
      required binary value (STRING);
    }
  }
  required binary payload;
  optional binary payload_json (STRING);
}";

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

/// Encodes a batch as one Parquet file.
pub fn encode(batch: &Batch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by("weir".into())
            .build(),
    );
    let records = &batch.records;
    let mut out = Vec::with_capacity(batch.bytes + records.len() * 64 + 1024);
    let mut writer = SerializedFileWriter::new(&mut out, schema, props)?;
    let mut group = writer.next_row_group()?;
    let mut column = 0;
    while let Some(mut w) = group.next_column()? {
        match column {
            0 => {
                let ids: Vec<ByteArray> = records.iter().map(|r| text(&r.id)).collect();
                w.typed::<ByteArrayType>().write_batch(&ids, None, None)?;
            }
            1 => {
                let positions: Vec<ByteArray> = batch.positions.iter().map(|p| text(p)).collect();
                w.typed::<ByteArrayType>()
                    .write_batch(&positions, None, None)?;
            }
            2 => {
                let keys: Vec<ByteArray> = records.iter().map(|r| text(&r.partition_key)).collect();
                w.typed::<ByteArrayType>().write_batch(&keys, None, None)?;
            }
            3 => {
                let at: Vec<i64> = records.iter().map(|r| r.arrived_at_ms).collect();
                w.typed::<Int64Type>().write_batch(&at, None, None)?;
            }
            4 | 5 => {
                // A map's entries: repetition 0 starts a record's map, 1 continues it; an empty map is one
                // level with definition 0 and no value.
                let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                for r in records {
                    if r.attributes.is_empty() {
                        def.push(0);
                        rep.push(0);
                    }
                    for (i, (k, v)) in r.attributes.iter().enumerate() {
                        values.push(text(if column == 4 { k } else { v }));
                        def.push(1);
                        rep.push(i16::from(i > 0));
                    }
                }
                w.typed::<ByteArrayType>()
                    .write_batch(&values, Some(&def), Some(&rep))?;
            }
            6 => {
                let payloads: Vec<ByteArray> = records
                    .iter()
                    .map(|r| ByteArray::from(r.payload.clone()))
                    .collect();
                w.typed::<ByteArrayType>()
                    .write_batch(&payloads, None, None)?;
            }
            _ => {
                let mut values = Vec::new();
                let mut def = Vec::with_capacity(records.len());
                for r in records {
                    // UTF-8 checked first: skipping a value does not check the bytes inside its strings.
                    let json = std::str::from_utf8(&r.payload)
                        .is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
                    def.push(i16::from(json));
                    if json {
                        values.push(ByteArray::from(r.payload.clone()));
                    }
                }
                w.typed::<ByteArrayType>()
                    .write_batch(&values, Some(&def), None)?;
            }
        }
        w.close()?;
        column += 1;
    }
    group.close()?;
    writer.close()?;
    Ok(out)
}

/// Decodes a Parquet RAW object.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Vec<RawLine>, RawError> {
    let corrupt = |message: String| RawError::Corrupt {
        key: key.to_string(),
        message,
    };
    let reader = SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes))
        .map_err(|e| corrupt(e.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| corrupt(format!("row {}: {e}", i + 1)))?;
        let mut line = RawLine {
            id: String::new(),
            position: String::new(),
            partition_key: String::new(),
            arrived_at_ms: 0,
            attributes: Vec::new(),
            payload: String::new(),
            payload_encoding: "utf8".into(),
        };
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("id", Field::Str(s)) => line.id = s.clone(),
                ("position", Field::Str(s)) => line.position = s.clone(),
                ("partition_key", Field::Str(s)) => line.partition_key = s.clone(),
                ("arrived_at", Field::TimestampMillis(ms)) => line.arrived_at_ms = *ms,
                ("attributes", Field::MapInternal(map)) => {
                    for (k, v) in map.entries() {
                        if let (Field::Str(k), Field::Str(v)) = (k, v) {
                            line.attributes.push((k.clone(), v.clone()));
                        }
                    }
                }
                ("payload", Field::Bytes(b)) => {
                    let (text, encoding) = RawLine::payload_text(b.data());
                    line.payload = text;
                    line.payload_encoding = encoding.into();
                }
                _ => {}
            }
        }
        out.push(line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SourceRecord;

    fn batch() -> Batch {
        let payloads: [&[u8]; 3] = [
            b"{\"a\": 1}",
            b"\xff\x00binary",
            "not json, ñandú".as_bytes(),
        ];
        let records: Vec<SourceRecord> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| SourceRecord {
                id: format!("file/f/{}", i + 1),
                partition_key: "pk".into(),
                arrived_at_ms: 1_795_256_970_123 + i as i64,
                attributes: if i == 1 {
                    Vec::new()
                } else {
                    vec![
                        ("line".into(), (i + 1).to_string()),
                        ("k".into(), "v".into()),
                    ]
                },
                payload: p.to_vec(),
            })
            .collect();
        Batch {
            id: "file/f/1-3".into(),
            source: "file".into(),
            partition: "f".into(),
            prev_position: String::new(),
            ordered: true,
            positions: (1..=3).map(|n| n.to_string()).collect(),
            records,
            bytes: 0,
            started: std::time::Instant::now(),
            received_us: Vec::new(),
            fingerprint: None,
        }
    }

    /// Every field comes back as written (binary payloads, empty and non-empty attribute maps), and the bytes
    /// are a function of the batch.
    #[test]
    fn round_trip_and_deterministic_bytes() {
        let b = batch();
        let bytes = encode(&b).unwrap();
        assert_eq!(bytes, encode(&b).unwrap());
        assert_eq!(&bytes[..4], b"PAR1");
        let lines = decode("k.parquet", &bytes).unwrap();
        assert_eq!(lines.len(), 3);
        for ((line, record), position) in lines.iter().zip(&b.records).zip(&b.positions) {
            assert_eq!(line.id, record.id);
            assert_eq!(&line.position, position);
            assert_eq!(line.partition_key, "pk");
            assert_eq!(line.arrived_at_ms, record.arrived_at_ms);
            assert_eq!(line.attributes, record.attributes);
            assert_eq!(line.payload_bytes().unwrap(), record.payload);
        }
        assert_eq!(lines[1].payload_encoding, "base64");
        assert!(decode("k.parquet", b"PAR1 not parquet").is_err());
        // Through the format-dispatching entry points too.
        let key = crate::raw::RawFormat::Parquet.object_key("p/", &b);
        assert!(key.ends_with("/f-1-3.parquet"), "{key}");
        assert_eq!(crate::raw::decode(&key, &bytes).unwrap(), lines);
    }
}
