//! Grouped commits (`[sink.group_commit]`, docs/GROUP-COMMIT.md): workers make each batch durable as a staged
//! object and register it; one loader for the whole fleet merges every registered batch in one warehouse
//! transaction per interval. Workers acknowledge their source only once the registry says their batch merged.
//!
//! - [`StagedBatch`]: what a worker stages (its records' outcomes, RAW references, positions), as gzip JSON.
//! - [`Staging`]: where staged objects live ([`staging::LocalStaging`], [`staging::S3Staging`]).
//! - [`Registry`]: the staged batches and their fates, plus the loader lease (the coordinator's side).
//! - [`GroupWarehouse`]: the loader's one transaction over many batches (the warehouse's side).
//! - [`loader`]: the loader loop.

pub mod loader;
pub mod staging;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::record::Batch;
use crate::rules::SourceRecord;
use crate::rules::validate::RecordOutcome;
use crate::schema::{Cell, TableSpec};
use crate::sink::Load;

pub use crate::sink::group::{Fate, GroupOutcome, GroupWarehouse, Registration, Registry};
pub use staging::Staging;

/// Payload bytes kept per staged record: the dead-letter preview's (the rows carry the data).
const PREVIEW_BYTES: usize = 256;

/// One record of a staged batch: its id and the start of its payload (for a dead letter's preview).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StagedRecord {
    id: String,
    /// Base64 of the first payload bytes, only for rejected records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    preview: String,
}

/// What a worker stages for one batch: everything the loader needs to merge it as a per-batch commit would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedBatch {
    id: String,
    source: String,
    partition: String,
    prev_position: String,
    ordered: bool,
    positions: Vec<String>,
    records: Vec<StagedRecord>,
    raw_refs: Vec<String>,
    /// One checked outcome per record.
    pub outcomes: Vec<RecordOutcome>,
    rule_digest: String,
    loaded_at_us: i64,
    /// The input fingerprint the merge records with this batch's checkpoint ([`Batch::fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    /// Per table, where the warehouse's bulk load reads this batch's rows ([`GroupWarehouse::stage_rows`]);
    /// empty when the merge sends the rows itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    row_files: Vec<Option<String>>,
}

impl StagedBatch {
    /// The staged form of a load.
    pub fn of(load: &Load<'_>) -> StagedBatch {
        let b64 = base64::engine::general_purpose::STANDARD;
        let records = load
            .batch
            .records
            .iter()
            .zip(load.outcomes)
            .map(|(r, o)| StagedRecord {
                id: r.id.clone(),
                preview: match o {
                    RecordOutcome::Reject(..) => {
                        b64.encode(&r.payload[..r.payload.len().min(PREVIEW_BYTES)])
                    }
                    _ => String::new(),
                },
            })
            .collect();
        StagedBatch {
            id: load.batch.id.clone(),
            source: load.batch.source.clone(),
            partition: load.batch.partition.clone(),
            prev_position: load.batch.prev_position.clone(),
            ordered: load.batch.ordered,
            positions: load.batch.positions.clone(),
            records,
            raw_refs: load.raw_refs.to_vec(),
            outcomes: load.outcomes.to_vec(),
            rule_digest: load.rule_digest.to_string(),
            loaded_at_us: load.loaded_at_us,
            fingerprint: load.batch.fingerprint.clone(),
            row_files: Vec::new(),
        }
    }

    /// The same, with the files [`GroupWarehouse::stage_rows`] wrote for it.
    pub fn with_row_files(mut self, row_files: Vec<Option<String>>) -> StagedBatch {
        self.row_files = row_files;
        self
    }

    /// Per table, where the warehouse's bulk load reads this batch's rows (empty: from the staged batch).
    pub fn row_files(&self) -> &[Option<String>] {
        &self.row_files
    }

    /// The batch id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The batch again (payloads only as far as dead letters show them).
    pub fn batch(&self) -> Batch {
        let b64 = base64::engine::general_purpose::STANDARD;
        let records: Vec<SourceRecord> = self
            .records
            .iter()
            .map(|r| SourceRecord {
                id: r.id.clone(),
                partition_key: String::new(),
                arrived_at_ms: 0,
                attributes: Vec::new(),
                payload: b64.decode(&r.preview).unwrap_or_default(),
            })
            .collect();
        Batch {
            id: self.id.clone(),
            source: self.source.clone(),
            partition: self.partition.clone(),
            prev_position: self.prev_position.clone(),
            ordered: self.ordered,
            positions: self.positions.clone(),
            bytes: 0,
            records,
            started: Instant::now(),
            received_us: Vec::new(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// The load of this batch, over `batch` (from [`StagedBatch::batch`]).
    pub fn load<'a>(&'a self, batch: &'a Batch, tables: &'a [TableSpec]) -> Load<'a> {
        Load {
            batch,
            raw_refs: &self.raw_refs,
            outcomes: &self.outcomes,
            tables,
            rule_digest: &self.rule_digest,
            loaded_at_us: self.loaded_at_us,
            redrive: None,
        }
    }

    /// Gzip JSON in two parts, so that a loader that bulk-loads the rows from their row files parses only the
    /// first: the batch with its rows' cells left out, then the cells (per record, per row).
    pub fn into_bytes(mut self) -> Vec<u8> {
        let mut cells: Vec<Vec<Vec<Cell>>> = Vec::with_capacity(self.outcomes.len());
        for outcome in &mut self.outcomes {
            cells.push(match outcome {
                RecordOutcome::Emit(rows) => rows
                    .iter_mut()
                    .map(|r| std::mem::take(&mut r.cells))
                    .collect(),
                _ => Vec::new(),
            });
        }
        let mut json = serde_json::to_vec(&self).expect("a staged batch serializes");
        json.push(b'\n');
        serde_json::to_writer(&mut json, &cells).expect("cells serialize");
        // One write: the compressor works per write call.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&json).expect("writing to memory");
        gz.finish().expect("writing to memory")
    }

    /// From gzip JSON; `tables` bounds the table indexes of its rows. With `cells` false, a batch that has row
    /// files comes back without its rows' cells (they are not parsed): the merge loads them from the files. (An object of the earlier one-part form holds its cells in the batch itself.)
    pub fn from_bytes(bytes: &[u8], tables: usize, cells: bool) -> Result<StagedBatch, String> {
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut json)
            .map_err(|e| format!("not gzip: {e}"))?;
        let mut parts = serde_json::Deserializer::from_slice(&json);
        let mut staged =
            StagedBatch::deserialize(&mut parts).map_err(|e| format!("not a staged batch: {e}"))?;
        if staged.records.len() != staged.outcomes.len()
            || staged.raw_refs.len() != staged.outcomes.len()
        {
            return Err("records, RAW references and outcomes differ in number".into());
        }
        let bad_table = staged.outcomes.iter().any(|o| match o {
            RecordOutcome::Emit(rows) => rows.iter().any(|r| r.table >= tables),
            _ => false,
        });
        if bad_table {
            return Err("a row names a table that is not declared".into());
        }
        if !staged.row_files.is_empty() && staged.row_files.len() != tables {
            return Err("row files and declared tables differ in number".into());
        }
        // The one-part form ends here: its cells are in the batch.
        if (cells || staged.row_files.is_empty()) && parts.end().is_err() {
            let all = Vec::<Vec<Vec<Cell>>>::deserialize(&mut parts)
                .map_err(|e| format!("cells: {e}"))?;
            staged.put_cells(all)?;
        }
        Ok(staged)
    }

    /// Puts the cells of the second part back into the rows.
    fn put_cells(&mut self, all: Vec<Vec<Vec<Cell>>>) -> Result<(), String> {
        if all.len() != self.outcomes.len() {
            return Err("cells and outcomes differ in number".into());
        }
        for (outcome, cells) in self.outcomes.iter_mut().zip(all) {
            match outcome {
                RecordOutcome::Emit(rows) if rows.len() == cells.len() => {
                    for (row, c) in rows.iter_mut().zip(cells) {
                        row.cells = c;
                    }
                }
                RecordOutcome::Emit(_) => return Err("cells and rows differ in number".into()),
                _ if cells.is_empty() => {}
                _ => return Err("cells for a record without rows".into()),
            }
        }
        Ok(())
    }
}

/// The staged object's key of a batch: derived from the batch id only, so staging again overwrites it with
/// the same bytes.
pub fn staged_key(batch_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(batch_id.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("staged/{hex}.json.gz")
}

/// What the pipeline needs to commit by groups: where to stage, where to register, how often to look.
#[derive(Clone)]
pub struct GroupCommit {
    /// Where staged objects go.
    pub staging: Arc<dyn Staging>,
    /// The registry of staged batches.
    pub registry: Arc<dyn Registry>,
    /// The warehouse, for the rows it bulk-loads from files of their own ([`GroupWarehouse::stage_rows`]).
    pub warehouse: Arc<dyn GroupWarehouse>,
    /// How often a worker asks the registry for the fates of its batches.
    pub settle_poll: Duration,
    /// Most registered, unsettled batches per pipeline (`max_batches`): a full window stops reading.
    pub max_in_flight: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::validate::{CheckedRow, RejectStage};
    use crate::schema::Cell;

    fn batch() -> (Batch, Vec<String>, Vec<RecordOutcome>) {
        let records: Vec<SourceRecord> = (0..3)
            .map(|i| SourceRecord {
                id: format!("r{i}"),
                partition_key: String::new(),
                arrived_at_ms: 0,
                attributes: Vec::new(),
                payload: vec![b'x'; 300 + i],
            })
            .collect();
        let batch = Batch {
            id: "file/in/1-3".into(),
            source: "file".into(),
            partition: "in".into(),
            prev_position: "0".into(),
            ordered: true,
            positions: vec!["1".into(), "2".into(), "3".into()],
            bytes: 903,
            records,
            started: Instant::now(),
            received_us: Vec::new(),
            fingerprint: None,
        };
        let outcomes = vec![
            RecordOutcome::Emit(vec![CheckedRow {
                table: 0,
                cells: vec![
                    Cell::Text("a".into()),
                    Cell::Float(0.1),
                    Cell::Decimal("1.50".into()),
                    Cell::TimestampUs(-5),
                    Cell::Json("{\"k\":[1]}".into()),
                    Cell::Null,
                    Cell::Bool(true),
                    Cell::Int(i64::MIN),
                ],
            }]),
            RecordOutcome::Drop("test".into()),
            RecordOutcome::Reject(RejectStage::Validate, "bad".into()),
        ];
        let refs = vec!["raw#1".into(), "raw#2".into(), "raw#3".into()];
        (batch, refs, outcomes)
    }

    /// A staged batch reads back as the same load: outcomes exact, dead letters' previews the same.
    #[test]
    fn staged_batch_round_trip() {
        let (batch, refs, outcomes) = batch();
        let load = Load {
            batch: &batch,
            raw_refs: &refs,
            outcomes: &outcomes,
            tables: &[],
            rule_digest: "d",
            loaded_at_us: 7,
            redrive: None,
        };
        let staged =
            StagedBatch::from_bytes(&StagedBatch::of(&load).into_bytes(), 1, false).unwrap();
        let again = staged.batch();
        let back = staged.load(&again, &[]);
        assert_eq!(back.outcomes, load.outcomes);
        assert_eq!(back.raw_refs, load.raw_refs);
        assert_eq!((back.rule_digest, back.loaded_at_us), ("d", 7));
        assert_eq!(
            (&again.id, &again.prev_position, again.ordered),
            (&batch.id, &batch.prev_position, true)
        );
        assert_eq!(again.last_position(), batch.last_position());
        assert_eq!(
            crate::sink::payload_preview(&again.records[2].payload),
            crate::sink::payload_preview(&batch.records[2].payload)
        );
        assert!(
            again.records[0].payload.is_empty(),
            "only rejects keep payload"
        );
        assert!(StagedBatch::from_bytes(&StagedBatch::of(&load).into_bytes(), 0, true).is_err());
        assert!(StagedBatch::from_bytes(b"nope", 1, true).is_err());
        // With row files, the cells stay behind unless asked for.
        let with_files = StagedBatch::of(&load).with_row_files(vec![Some("s3://b/k".into())]);
        let bytes = with_files.clone().into_bytes();
        let header = StagedBatch::from_bytes(&bytes, 1, false).unwrap();
        let RecordOutcome::Emit(rows) = &header.outcomes[0] else {
            panic!("emit")
        };
        assert_eq!((rows.len(), rows[0].table, rows[0].cells.len()), (1, 0, 0));
        assert_eq!(header.row_files(), with_files.row_files());
        let full = StagedBatch::from_bytes(&bytes, 1, true).unwrap();
        assert_eq!(full.outcomes, load.outcomes.to_vec());
        // An object of the one-part form (written before the cells had a part of their own) still reads.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        serde_json::to_writer(&mut gz, &StagedBatch::of(&load)).unwrap();
        let old = StagedBatch::from_bytes(&gz.finish().unwrap(), 1, false).unwrap();
        assert_eq!(old.outcomes, load.outcomes.to_vec());
        assert_eq!(staged_key(&batch.id), staged_key("file/in/1-3"));
        assert_ne!(staged_key(&batch.id), staged_key("file/in/1-4"));
    }
}
