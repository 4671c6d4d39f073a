//! The coordinator table itself: created when missing (on-demand capacity, the pending index, TTL on
//! `expires_at`), checked when it exists.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tracing::Instrument as _;

use super::{DynamoCoordinator, PENDING_INDEX};
use crate::sink::SinkError;

impl DynamoCoordinator {
    /// Creates the table when it is missing (on-demand capacity, the pending index, TTL on `expires_at`) and
    /// waits until it is active; an existing table must have the pending index.
    pub async fn prepare(&self) -> Result<(), SinkError> {
        let span = tracing::info_span!("dynamodb.prepare", table = %self.table);
        async {
            let described = self.client.describe_table().table_name(&self.table).send().await;
            match described {
                Ok(out) => {
                    let has_index = out.table().is_some_and(|t| {
                        t.global_secondary_indexes()
                            .iter()
                            .any(|i| i.index_name() == Some(PENDING_INDEX))
                    });
                    if !has_index {
                        return Err(SinkError::Permanent(format!(
                            "coordinator.table: DynamoDB table `{}` has no index `{PENDING_INDEX}` (hash key \
                             `pending` string, range key `registered_us` number); let weir create the table, \
                             or add the index",
                            self.table
                        )));
                    }
                }
                Err(e)
                    if e.as_service_error().and_then(|e| e.code())
                        == Some("ResourceNotFoundException") =>
                {
                    self.create().await?;
                }
                Err(e) => return Err(self.error("table check", &e)),
            }
            self.wait_active().await
        }
        .instrument(span)
        .await
    }

    async fn create(&self) -> Result<(), SinkError> {
        let built = |e: aws_smithy_types::error::operation::BuildError| {
            SinkError::Permanent(format!("coordinator table definition: {e}"))
        };
        let attribute = |name: &str, t: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(t)
                .build()
                .map_err(built)
        };
        let key_element = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
                .map_err(built)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(PENDING_INDEX)
            .key_schema(key_element("pending", KeyType::Hash)?)
            .key_schema(key_element("registered_us", KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(built)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("sk", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("pending", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("registered_us", ScalarAttributeType::N)?)
            .key_schema(key_element("pk", KeyType::Hash)?)
            .key_schema(key_element("sk", KeyType::Range)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "created the DynamoDB coordinator table"),
            // Another worker of the fleet created it at the same moment.
            Err(e)
                if e.as_service_error().and_then(|e| e.code())
                    == Some("ResourceInUseException") =>
            {
                return Ok(());
            }
            Err(e) => return Err(self.error("table creation", &e)),
        }
        self.wait_active().await?;
        let ttl = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name("expires_at")
            .build()
            .map_err(built)?;
        if let Err(e) = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
        {
            // Without TTL settled entries stay; nothing else depends on it.
            tracing::warn!(error = %crate::aws::sdk_error(&e), "could not enable TTL on the coordinator table");
        }
        Ok(())
    }

    /// Waits (at most two minutes) until the table is active.
    async fn wait_active(&self) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| self.error("table check", &e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(SinkError::Transient(format!(
                    "DynamoDB table `{}` is not active after two minutes",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
