//! The coordinator in Amazon DynamoDB (`[coordinator] kind = "dynamodb"`): Kinesis shard leases, the loader
//! lease and the staged-batch registry in one table, every change a conditional write (as the Kinesis Client
//! Library's lease table does).
//!
//! Items of the table (hash key `pk`, range key `sk`, both strings):
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | a partition's lease | `lease#{source}` | partition | `owner`, `expires_us` |
//! | the loader lease | `loader` | `lease` | `owner`, `expires_us`, `epoch` |
//! | a staged batch | `batch#{batch_id}` | `batch` | `batch_id`, `source`, `partition`, `staged_key`, `bytes`, `registered_us`, `fate`, `pending`, `expires_at` |
//!
//! Pending batches are found through the sparse index `weir-pending` (hash `pending`, range `registered_us`):
//! settling a batch removes its `pending` attribute, so the index holds only undecided batches. Index reads are
//! eventually consistent, so [`Registry::pending`] confirms every fate with a consistent read; a batch listed
//! late only waits one more interval. Settled batches get `expires_at` a day ahead for DynamoDB's TTL.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tracing::Instrument as _;

mod table;

use super::{Holder, LeaseStore};
use crate::sink::SinkError;
use crate::sink::group::{Fate, LoaderLease, Registration, Registry};

/// The sparse index of pending batches.
pub const PENDING_INDEX: &str = "weir-pending";
/// Most keys in one `BatchGetItem` (DynamoDB's limit).
const BATCH_GET: usize = 100;
/// Most settle writes in flight at once.
const SETTLE_CONCURRENCY: usize = 16;
/// How long settled batches stay before DynamoDB's TTL may remove them.
const SETTLED_TTL_SECS: i64 = 86_400;

/// The coordinator table.
#[derive(Clone)]
pub struct DynamoCoordinator {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> String {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn batch_key(batch_id: &str) -> HashMap<String, AttributeValue> {
    key(format!("batch#{batch_id}"), "batch")
}

/// Whether a write was refused by its condition (someone else's lease, a batch already settled).
fn condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}

impl DynamoCoordinator {
    /// The coordinator in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoCoordinator {
            client,
            table: table.into(),
        }
    }

    /// A DynamoDB error as a sink error: a missing table, a refused request or missing permissions are
    /// permanent (with the fix); throttling, timeouts and lost connections are worth retrying.
    fn error<E, R>(&self, what: &str, e: &SdkError<E, R>) -> SinkError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let text = crate::aws::sdk_error(e);
        let code = e.as_service_error().and_then(|e| e.code());
        match code {
            Some("ResourceNotFoundException") => SinkError::Permanent(format!(
                "coordinator {what}: DynamoDB table `{}` does not exist ({text}); weir creates it at start when \
                 allowed (dynamodb:CreateTable), or create it as docs/GROUP-COMMIT.md describes",
                self.table
            )),
            Some("AccessDeniedException") | Some("UnrecognizedClientException") => {
                SinkError::Permanent(format!(
                    "coordinator {what} on DynamoDB table `{}`: {text}; grant the worker's role the \
                     permissions in examples/deploy/ec2/weir-fleet.yaml (README, \"Coordination outside the warehouse\")",
                    self.table
                ))
            }
            Some("ValidationException") => SinkError::Permanent(format!(
                "coordinator {what} on DynamoDB table `{}`: {text}",
                self.table
            )),
            _ => SinkError::Transient(format!(
                "coordinator {what} on DynamoDB table `{}`: {text}",
                self.table
            )),
        }
    }

    /// One conditional update; `Ok(false)` when its condition refused it.
    async fn update(
        &self,
        what: &str,
        key: HashMap<String, AttributeValue>,
        expression: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, SinkError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expression)
            .condition_expression(condition);
        for (k, v) in names {
            request = request.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            request = request.expression_attribute_values(k, v);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(self.error(what, &e)),
        }
    }

    /// A consistent read of one item.
    async fn get(
        &self,
        what: &str,
        key: HashMap<String, AttributeValue>,
    ) -> Result<Option<HashMap<String, AttributeValue>>, SinkError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(what, &e))?;
        Ok(out.item)
    }

    /// Every item of one hash key, by consistent reads.
    async fn query_all(&self, pk: &str) -> Result<Vec<HashMap<String, AttributeValue>>, SinkError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.error("lease read", &e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// Fates of these batches by consistent reads, retrying keys DynamoDB left unprocessed.
    async fn read_fates(&self, batch_ids: &[String]) -> Result<HashMap<String, Fate>, SinkError> {
        let mut out = HashMap::new();
        for chunk in batch_ids.chunks(BATCH_GET) {
            let mut keys: Vec<_> = chunk.iter().map(|id| batch_key(id)).collect();
            let mut backoff =
                crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
                    .with_attempts(10);
            while !keys.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .projection_expression("batch_id, #f")
                    .expression_attribute_names("#f", "fate")
                    .build()
                    .map_err(|e| SinkError::Permanent(format!("registry read: {e}")))?;
                let result = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| self.error("registry read", &e))?;
                for item in result
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    out.insert(get_s(&item, "batch_id"), Fate::parse(&get_s(&item, "fate")));
                }
                if let Some(left) = result
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                {
                    keys = left.keys;
                    if keys.is_empty() {
                        break;
                    }
                    let Some(wait) = backoff.next_delay() else {
                        return Err(SinkError::Transient(format!(
                            "registry read on DynamoDB table `{}`: keys left unprocessed (throttled)",
                            self.table
                        )));
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl LeaseStore for DynamoCoordinator {
    async fn holders(&self, source: &str, now_us: i64) -> Result<Vec<Holder>, SinkError> {
        let span = tracing::debug_span!("dynamodb.leases", table = %self.table, source);
        let items = self
            .query_all(&format!("lease#{source}"))
            .instrument(span)
            .await?;
        Ok(items
            .iter()
            .map(|item| {
                let owner = get_s(item, "owner");
                let expires_us = get_n(item, "expires_us");
                Holder {
                    partition: get_s(item, "sk"),
                    expired: owner.is_empty() || expires_us < now_us,
                    owner,
                    expires_us,
                }
            })
            .collect())
    }

    async fn claim(
        &self,
        source: &str,
        partition: &str,
        owner: &str,
        now_us: i64,
        expires_us: i64,
        steal_from: Option<&str>,
    ) -> Result<bool, SinkError> {
        let span = tracing::debug_span!("dynamodb.claim", table = %self.table, partition);
        self.update(
            "lease claim",
            key(format!("lease#{source}"), partition),
            "SET #o = :me, expires_us = :exp",
            "attribute_not_exists(pk) OR #o = :none OR #o = :me OR #o = :victim OR expires_us < :now",
            &[("#o", "owner")],
            vec![
                (":me", s(owner)),
                (":exp", n(expires_us)),
                (":none", s("")),
                (":victim", s(steal_from.unwrap_or(owner))),
                (":now", n(now_us)),
            ],
        )
        .instrument(span)
        .await
    }

    async fn release(&self, source: &str, partition: &str, owner: &str) -> Result<(), SinkError> {
        let span = tracing::debug_span!("dynamodb.release", table = %self.table, partition);
        self.update(
            "lease release",
            key(format!("lease#{source}"), partition),
            "SET #o = :none, expires_us = :zero",
            "#o = :me",
            &[("#o", "owner")],
            vec![(":none", s("")), (":zero", n(0)), (":me", s(owner))],
        )
        .instrument(span)
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl Registry for DynamoCoordinator {
    async fn register(&self, entry: &Registration) -> Result<(), SinkError> {
        let span =
            tracing::debug_span!("dynamodb.register", table = %self.table, batch = %entry.batch_id);
        let mut item = batch_key(&entry.batch_id);
        item.extend([
            ("batch_id".to_string(), s(&entry.batch_id)),
            ("source".to_string(), s(&entry.source)),
            ("partition".to_string(), s(&entry.partition)),
            ("staged_key".to_string(), s(&entry.key)),
            ("bytes".to_string(), n(entry.bytes)),
            (
                "registered_us".to_string(),
                n(crate::sink::group::registration_us()),
            ),
            ("fate".to_string(), s(Fate::Pending.as_str())),
            ("pending".to_string(), s("pending")),
        ]);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            // New, or refused before: a refused batch registered again is a new attempt (see
            // `Registry::register`).
            .condition_expression("attribute_not_exists(pk) OR fate = :refused")
            .expression_attribute_values(":refused", s(Fate::Refused.as_str()))
            .send()
            .instrument(span)
            .await;
        match put {
            Ok(_) => Ok(()),
            // Registered already, pending or merged (a retry): the first registration stands.
            Err(e) if condition_failed(&e) => Ok(()),
            Err(e) => Err(self.error("registration", &e)),
        }
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Registration>, SinkError> {
        let span = tracing::debug_span!("dynamodb.pending", table = %self.table);
        async {
            let limit = limit.max(1);
            let mut found = Vec::new();
            let mut start = None;
            while found.len() < limit {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(PENDING_INDEX)
                    .key_condition_expression("#p = :p")
                    .expression_attribute_names("#p", "pending")
                    .expression_attribute_values(":p", s("pending"))
                    .limit(i32::try_from(limit - found.len()).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| self.error("registry read", &e))?;
                found.extend(
                    out.items
                        .unwrap_or_default()
                        .iter()
                        .map(|item| Registration {
                            batch_id: get_s(item, "batch_id"),
                            source: get_s(item, "source"),
                            partition: get_s(item, "partition"),
                            key: get_s(item, "staged_key"),
                            bytes: get_n(item, "bytes"),
                        }),
                );
                start = out.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
            // The index lags the table: a batch settled a moment ago may still be listed. Only batches a
            // consistent read finds pending are handed to the loader.
            let ids: Vec<String> = found.iter().map(|r| r.batch_id.clone()).collect();
            let fates = self.read_fates(&ids).await?;
            found.retain(|r| fates.get(&r.batch_id) == Some(&Fate::Pending));
            Ok(found)
        }
        .instrument(span)
        .await
    }

    async fn pending_work(&self, limit: usize) -> Result<(usize, u64), SinkError> {
        // The index alone (it may lag a moment): this only decides when the loader looks.
        let span = tracing::debug_span!("dynamodb.pending_work", table = %self.table);
        async {
            let (mut batches, mut bytes) = (0usize, 0u64);
            let mut start = None;
            while batches < limit.max(1) {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(PENDING_INDEX)
                    .key_condition_expression("#p = :p")
                    .expression_attribute_names("#p", "pending")
                    .expression_attribute_names("#b", "bytes")
                    .expression_attribute_values(":p", s("pending"))
                    .projection_expression("#b")
                    .limit(i32::try_from(limit.max(1) - batches).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| self.error("registry read", &e))?;
                for item in out.items.unwrap_or_default() {
                    batches += 1;
                    bytes += get_n(&item, "bytes").max(0) as u64;
                }
                start = out.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
            Ok((batches, bytes))
        }
        .instrument(span)
        .await
    }

    async fn settle(&self, fates: &[(String, Fate)]) -> Result<(), SinkError> {
        let span =
            tracing::debug_span!("dynamodb.settle", table = %self.table, batches = fates.len());
        async {
            let expires_at = crate::record::wall_clock_us() / 1_000_000 + SETTLED_TTL_SECS;
            let decided: Vec<_> = fates
                .iter()
                .filter(|(_, f)| *f != Fate::Pending)
                .cloned()
                .collect();
            for wave in decided.chunks(SETTLE_CONCURRENCY) {
                let mut writes = tokio::task::JoinSet::new();
                for (id, fate) in wave.iter().cloned() {
                    let me = self.clone();
                    writes.spawn(async move {
                        // Only over `pending`: a fate, once written, never changes.
                        me.update(
                            "registry update",
                            batch_key(&id),
                            "SET #f = :f, expires_at = :ttl REMOVE #p",
                            "#f = :pending",
                            &[("#f", "fate"), ("#p", "pending")],
                            vec![
                                (":f", s(fate.as_str())),
                                (":ttl", n(expires_at)),
                                (":pending", s(Fate::Pending.as_str())),
                            ],
                        )
                        .await
                    });
                }
                while let Some(done) = writes.join_next().await {
                    done.map_err(|e| SinkError::Transient(format!("registry update: {e}")))??;
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn fates(&self, batch_ids: &[String]) -> Result<HashMap<String, Fate>, SinkError> {
        let span =
            tracing::debug_span!("dynamodb.fates", table = %self.table, batches = batch_ids.len());
        self.read_fates(batch_ids).instrument(span).await
    }

    async fn claim_loader(
        &self,
        owner: &str,
        now_us: i64,
        expires_us: i64,
    ) -> Result<Option<i64>, SinkError> {
        let span = tracing::debug_span!("dynamodb.claim_loader", table = %self.table);
        async {
            let current = self
                .get("loader lease", key("loader".into(), "lease"))
                .await?;
            let (holder, held_until, epoch) = match &current {
                Some(item) => (
                    get_s(item, "owner"),
                    get_n(item, "expires_us"),
                    get_n(item, "epoch"),
                ),
                None => (String::new(), 0, 0),
            };
            if holder == owner {
                // Renewal: the holder keeps its epoch.
                let renewed = self
                    .update(
                        "loader lease",
                        key("loader".into(), "lease"),
                        "SET expires_us = :exp",
                        "#o = :me AND #e = :epoch",
                        &[("#o", "owner"), ("#e", "epoch")],
                        vec![
                            (":exp", n(expires_us)),
                            (":me", s(owner)),
                            (":epoch", n(epoch)),
                        ],
                    )
                    .await?;
                return Ok(renewed.then_some(epoch));
            }
            if !holder.is_empty() && held_until >= now_us {
                return Ok(None);
            }
            // A new holder: a new epoch, above the last one even when this machine's clock is behind.
            let new_epoch = now_us.max(epoch + 1);
            let condition = if current.is_some() {
                "#o = :was AND expires_us = :until AND #e = :epoch"
            } else {
                "attribute_not_exists(pk)"
            };
            let mut values = vec![
                (":me", s(owner)),
                (":exp", n(expires_us)),
                (":new", n(new_epoch)),
            ];
            if current.is_some() {
                values.extend([
                    (":was", s(holder)),
                    (":until", n(held_until)),
                    (":epoch", n(epoch)),
                ]);
            }
            let taken = self
                .update(
                    "loader lease",
                    key("loader".into(), "lease"),
                    "SET #o = :me, expires_us = :exp, #e = :new",
                    condition,
                    &[("#o", "owner"), ("#e", "epoch")],
                    values,
                )
                .await?;
            Ok(taken.then_some(new_epoch))
        }
        .instrument(span)
        .await
    }

    async fn loader(&self) -> Result<Option<LoaderLease>, SinkError> {
        let span = tracing::debug_span!("dynamodb.loader", table = %self.table);
        let item = self
            .get("loader lease", key("loader".into(), "lease"))
            .instrument(span)
            .await?;
        Ok(item.map(|item| LoaderLease {
            owner: get_s(&item, "owner"),
            expires_us: get_n(&item, "expires_us"),
            epoch: get_n(&item, "epoch").to_string(),
        }))
    }

    async fn release_loader(&self, owner: &str) -> Result<(), SinkError> {
        let span = tracing::debug_span!("dynamodb.release_loader", table = %self.table);
        self.update(
            "loader lease",
            key("loader".into(), "lease"),
            "SET #o = :none, expires_us = :zero",
            "#o = :me",
            &[("#o", "owner")],
            vec![(":none", s("")), (":zero", n(0)), (":me", s(owner))],
        )
        .instrument(span)
        .await
        .map(|_| ())
    }
}
