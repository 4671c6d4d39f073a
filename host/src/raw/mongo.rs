//! The MongoDB RAW store: one document per record, `_id` = record id.
//!
//! Documents hold the source metadata (`source`, `partition`, `position`, `partition_key`, `arrived_at` as a
//! BSON date, `attributes`), the batch id and the record's index in it, the payload as BSON binary (`payload`,
//! the exact bytes) and, when it is valid UTF-8, a text copy (`payload_text`) for querying. A batch is written
//! with one unordered `insert_many`; a duplicate-key error on a document means it was archived already (a retry
//! or a replay), so archiving the same batch again changes nothing. Indexes on `(source, partition, position)`,
//! on `arrived_at` and on `batch_id` are created at start.
//!
//! RAW references are `{database}.{collection}/{batch id}#{record id}`; [`RawStore::get`] of
//! `{database}.{collection}/{batch id}` returns the batch's records in order.

use std::future::IntoFuture;

use async_trait::async_trait;
use base64::Engine as _;
use mongodb::IndexModel;
use mongodb::bson::{self, Bson, Document, doc, spec::BinarySubtype};
use mongodb::error::ErrorKind;
use tracing::Instrument;

use super::{RawError, RawLine, RawStore};
use crate::record::Batch;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// RAW documents in one MongoDB collection.
pub struct MongoRaw {
    db: mongodb::Database,
    collection: mongodb::Collection<Document>,
    namespace: String,
}

impl MongoRaw {
    /// Connects to `uri`, checks the server answers, and creates the indexes.
    pub async fn connect(uri: &str, database: &str, collection: &str) -> Result<Self, RawError> {
        let namespace = format!("{database}.{collection}");
        let io = |m: String| RawError::Io {
            store: format!("mongodb {namespace}"),
            message: m,
        };
        let client = mongodb::Client::with_uri_str(uri)
            .await
            .map_err(|e| io(format!("raw.uri: {e}")))?;
        let db = client.database(database);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| io(format!("cannot reach the server at raw.uri: {e}")))?;
        let collection = db.collection::<Document>(collection);
        for keys in [
            doc! { "source": 1, "partition": 1, "position": 1 },
            doc! { "arrived_at": 1 },
            doc! { "batch_id": 1, "n": 1 },
        ] {
            collection
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(|e| io(format!("creating indexes: {e}")))?;
        }
        Ok(MongoRaw {
            db,
            collection,
            namespace,
        })
    }

    fn io(&self, message: impl std::fmt::Display) -> RawError {
        RawError::Io {
            store: format!("mongodb {}", self.namespace),
            message: message.to_string(),
        }
    }

    /// The document of one record.
    pub fn document(batch: &Batch, n: usize) -> Document {
        let record = &batch.records[n];
        let attributes: Vec<Bson> = record
            .attributes
            .iter()
            .map(|(k, v)| Bson::Document(doc! { "name": k, "value": v }))
            .collect();
        let mut d = doc! {
            "_id": &record.id,
            "source": &batch.source,
            "partition": &batch.partition,
            "position": &batch.positions[n],
            "partition_key": &record.partition_key,
            "arrived_at": bson::DateTime::from_millis(record.arrived_at_ms),
            "arrived_at_ms": record.arrived_at_ms,
            "attributes": attributes,
            "batch_id": &batch.id,
            "n": n as i64 + 1,
            "payload": bson::Binary { subtype: BinarySubtype::Generic, bytes: record.payload.clone() },
        };
        if let Ok(text) = std::str::from_utf8(&record.payload) {
            d.insert("payload_text", text);
        }
        d
    }

    fn line(d: &Document) -> Result<RawLine, String> {
        let s = |k: &str| {
            d.get_str(k)
                .map(str::to_string)
                .map_err(|e| format!("{k}: {e}"))
        };
        let payload = d
            .get_binary_generic("payload")
            .map_err(|e| format!("payload: {e}"))?;
        let (payload, payload_encoding) = match std::str::from_utf8(payload) {
            Ok(t) => (t.to_string(), "utf8".to_string()),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(payload),
                "base64".to_string(),
            ),
        };
        let attributes = d
            .get_array("attributes")
            .map_err(|e| format!("attributes: {e}"))?
            .iter()
            .filter_map(|a| {
                let a = a.as_document()?;
                Some((
                    a.get_str("name").ok()?.to_string(),
                    a.get_str("value").ok()?.to_string(),
                ))
            })
            .collect();
        Ok(RawLine {
            id: s("_id")?,
            position: s("position")?,
            partition_key: s("partition_key")?,
            arrived_at_ms: d
                .get_i64("arrived_at_ms")
                .map_err(|e| format!("arrived_at_ms: {e}"))?,
            attributes,
            payload,
            payload_encoding,
        })
    }
}

#[async_trait]
impl RawStore for MongoRaw {
    async fn put(&self, batch: &Batch) -> Result<Vec<String>, RawError> {
        let span = tracing::debug_span!("mongo_raw.put", namespace = %self.namespace, batch = %batch.id, records = batch.records.len());
        let docs: Vec<Document> = (0..batch.records.len())
            .map(|n| Self::document(batch, n))
            .collect();
        if !docs.is_empty() {
            match self
                .collection
                .insert_many(docs)
                .ordered(false)
                .into_future()
                .instrument(span)
                .await
            {
                Ok(_) => {}
                Err(e) => match e.kind.as_ref() {
                    // Every failure a duplicate key: those records were archived already.
                    ErrorKind::InsertMany(m)
                        if m.write_concern_error.is_none()
                            && m.write_errors
                                .as_ref()
                                .is_some_and(|w| w.iter().all(|w| w.code == DUPLICATE_KEY)) => {}
                    _ => return Err(self.io(e)),
                },
            }
        }
        let object = format!("{}/{}", self.namespace, batch.id);
        Ok(batch
            .records
            .iter()
            .map(|r| format!("{object}#{}", r.id))
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Vec<RawLine>, RawError> {
        let rest = key
            .strip_prefix(&format!("{}/", self.namespace))
            .ok_or_else(|| self.io(format!("{key}: not a reference into {}", self.namespace)))?;
        let filter = match rest.split_once('#') {
            Some((_, id)) => doc! { "_id": id },
            None => doc! { "batch_id": rest },
        };
        let docs = find_all(
            &self.db,
            self.collection.name(),
            filter,
            doc! { "batch_id": 1, "n": 1 },
        )
        .await
        .map_err(|e| self.io(e))?;
        docs.iter()
            .map(|d| {
                Self::line(d).map_err(|message| RawError::Corrupt {
                    key: key.to_string(),
                    message,
                })
            })
            .collect()
    }

    async fn list(&self, window: &super::Window) -> Result<Vec<String>, RawError> {
        // An object is a batch: the distinct batch ids of the records in the window.
        let mut range = Document::new();
        if let Some(since) = window.since_ms {
            range.insert("$gte", since.div_euclid(3_600_000) * 3_600_000);
        }
        if let Some(until) = window.until_ms {
            range.insert("$lt", until);
        }
        let filter = if range.is_empty() {
            doc! {}
        } else {
            doc! { "arrived_at_ms": range }
        };
        let reply = self
            .db
            .run_command(
                doc! { "distinct": self.collection.name(), "key": "batch_id", "query": filter },
            )
            .await
            .map_err(|e| self.io(e))?;
        let mut keys: Vec<String> = reply
            .get_array("values")
            .map_err(|e| self.io(format!("distinct: {e}")))?
            .iter()
            .filter_map(|v| v.as_str().map(|b| format!("{}/{b}", self.namespace)))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn exists(&self, key: &str) -> Result<bool, RawError> {
        let batch = key
            .strip_prefix(&format!("{}/", self.namespace))
            .unwrap_or(key);
        let reply = self
            .db
            .run_command(doc! { "find": self.collection.name(), "filter": { "batch_id": batch }, "limit": 1 })
            .await
            .map_err(|e| self.io(e))?;
        Ok(reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .is_ok_and(|b| !b.is_empty()))
    }

    fn describe(&self) -> String {
        format!("MongoDB collection {}", self.namespace)
    }
}

/// Every document matching `filter`, in `sort` order, through the `find` and `getMore` commands. (The commands
/// rather than the driver's cursor type: the cursor id is read as either 32- or 64-bit integer, so the same
/// code serves MongoDB and the wire-protocol servers that tests use.)
pub async fn find_all(
    db: &mongodb::Database,
    collection: &str,
    filter: Document,
    sort: Document,
) -> Result<Vec<Document>, String> {
    const BATCH: i32 = 1000;
    // The cursor id goes back to `getMore` in the BSON type the server gave it: MongoDB's ids are 64-bit
    // (and `getMore` requires a long); some wire-compatible servers hand out 32-bit ids and expect those.
    let cursor_of = |reply: &Document, first: bool| -> Result<(Vec<Document>, Bson), String> {
        let cursor = reply.get_document("cursor").map_err(|e| e.to_string())?;
        let batch = cursor
            .get_array(if first { "firstBatch" } else { "nextBatch" })
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|d| d.as_document().cloned())
            .collect();
        let id = match cursor.get("id") {
            Some(id @ (Bson::Int64(_) | Bson::Int32(_))) => id.clone(),
            _ => Bson::Int64(0),
        };
        Ok((batch, id))
    };
    let reply = db
        .run_command(
            doc! { "find": collection, "filter": filter, "sort": sort, "batchSize": BATCH },
        )
        .await
        .map_err(|e| e.to_string())?;
    let (mut docs, mut id) = cursor_of(&reply, true)?;
    while !matches!(id, Bson::Int64(0) | Bson::Int32(0)) {
        let reply = db
            .run_command(doc! { "getMore": id, "collection": collection, "batchSize": BATCH })
            .await
            .map_err(|e| e.to_string())?;
        let (more, next) = cursor_of(&reply, false)?;
        docs.extend(more);
        id = next;
    }
    Ok(docs)
}
