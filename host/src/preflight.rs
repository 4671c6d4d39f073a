//! `weir validate --aws`: every AWS backend of a configuration checked the way the worker will use it,
//! read-only (nothing is written or deleted), each failure saying whether the resource is missing or which
//! permission the worker's identity lacks.

#[cfg_attr(
    not(all(
        feature = "sqs",
        feature = "kinesis",
        feature = "s3",
        feature = "dynamodb"
    )),
    allow(unused_imports, reason = "a build without some AWS backends")
)]
use crate::config::{
    CoordinatorConfig, Loaded, RawConfig, SourceConfig, StageFillConfig, StagingConfig,
};

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked (`source: SQS queue …`).
    pub what: String,
    /// `None` when it passed, else what is wrong and the fix.
    pub problem: Option<String>,
}

/// Every AWS check of `loaded`, in the order a worker touches the backends.
pub async fn check_aws(loaded: &Loaded) -> Vec<Check> {
    #[allow(unused_mut, reason = "empty in a build without AWS backends")]
    let mut checks = Vec::new();
    let config = &loaded.config;
    match &config.source {
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs {
            queue_url,
            endpoint_url,
            ..
        } => {
            let client = config
                .aws
                .with_role(&config.source.role())
                .sqs(endpoint_url.as_deref())
                .await;
            let r = client
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout)
                .send()
                .await;
            checks.push(verdict(
                format!("source: SQS queue {queue_url}"),
                r.map(|_| ()).map_err(|e| crate::aws::sdk_error(&e)),
                "sqs:GetQueueAttributes (and sqs:ReceiveMessage, sqs:DeleteMessage, sqs:ChangeMessageVisibility)",
                "create the queue, or fix source.queue_url",
            ));
        }
        #[cfg(feature = "kinesis")]
        SourceConfig::Kinesis {
            stream,
            endpoint_url,
            ..
        } => {
            let client = config
                .aws
                .with_role(&config.source.role())
                .kinesis(endpoint_url.as_deref())
                .await;
            let r = client.list_shards().stream_name(stream).send().await;
            checks.push(verdict(
                format!("source: Kinesis stream {stream}"),
                r.map(|_| ()).map_err(|e| crate::aws::sdk_error(&e)),
                "kinesis:ListShards (and kinesis:GetShardIterator, kinesis:GetRecords)",
                "create the stream, or fix source.stream",
            ));
        }
        _ => {}
    }
    #[cfg(feature = "s3")]
    {
        let mut buckets: Vec<(
            String,
            String,
            String,
            crate::aws::AwsConfig,
            Option<String>,
        )> = Vec::new();
        if let RawConfig::S3 {
            bucket,
            prefix,
            endpoint_url,
            ..
        } = &config.raw
        {
            buckets.push((
                "raw".into(),
                bucket.clone(),
                prefix.clone(),
                config.aws.with_role(&config.raw.role()),
                endpoint_url.clone(),
            ));
        }
        if config.sink.group_commit.on()
            && let StagingConfig::S3 { bucket, prefix } = config.sink.group_commit.staging()
        {
            buckets.push((
                "sink.group_commit.staging".into(),
                bucket,
                format!("{}/", prefix.trim_end_matches('/')),
                config.aws.clone(),
                None,
            ));
        }
        if let StageFillConfig::Copy { bucket, prefix, .. } = &config.sink.stage_fill {
            buckets.push((
                "sink.stage_fill".into(),
                bucket.clone(),
                prefix.clone(),
                config.aws.clone(),
                None,
            ));
        }
        for (field, bucket, prefix, aws, endpoint) in buckets {
            let sdk = aws.load().await;
            let client = match &endpoint {
                Some(url) => aws.s3_at(&sdk, url),
                None => aws.s3_from(&sdk),
            };
            let r = client
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(&prefix)
                .max_keys(1)
                .send()
                .await;
            checks.push(verdict(
                format!("{field}: S3 bucket {bucket}, prefix {prefix:?}"),
                r.map(|_| ()).map_err(|e| crate::aws::sdk_error(&e)),
                "s3:ListBucket on the bucket (and s3:PutObject, s3:GetObject on the prefix)",
                &format!("create the bucket, or fix {field}"),
            ));
        }
    }
    #[cfg(feature = "dynamodb")]
    if let CoordinatorConfig::Dynamodb {
        table,
        endpoint_url,
        ..
    } = &config.coordinator
    {
        let client = config
            .aws
            .with_role(&config.coordinator.role())
            .dynamodb(endpoint_url.as_deref())
            .await;
        let r = client.describe_table().table_name(table).send().await;
        let result = match r {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                // weir creates the table at start when it may.
                checks.push(Check {
                    what: format!("coordinator: DynamoDB table {table}"),
                    problem: Some(format!(
                        "the table does not exist; weir creates it at start if its identity may \
                         (dynamodb:CreateTable, dynamodb:UpdateTimeToLive on {table}), or create it as the EC2 \
                         kit's template does"
                    )),
                });
                return checks;
            }
            Err(e) => Err(crate::aws::sdk_error(&e)),
        };
        checks.push(verdict(
            format!("coordinator: DynamoDB table {table}"),
            result,
            "dynamodb:DescribeTable (and GetItem, BatchGetItem, PutItem, UpdateItem, Query)",
            "fix coordinator.table",
        ));
    }
    checks
}

/// A check's outcome: a denial names the permission, a missing resource the fix.
#[cfg_attr(
    not(any(
        feature = "sqs",
        feature = "kinesis",
        feature = "s3",
        feature = "dynamodb"
    )),
    allow(dead_code, reason = "used by the AWS backends")
)]
fn verdict(what: String, result: Result<(), String>, permission: &str, fix: &str) -> Check {
    let problem = result.err().map(|e| {
        let lower = e.to_ascii_lowercase();
        if lower.contains("accessdenied")
            || lower.contains("access denied")
            || lower.contains("not authorized")
            || lower.contains("unauthorized")
        {
            format!("permission denied: this identity needs {permission} ({e})")
        } else if lower.contains("nonexistent")
            || lower.contains("nosuchbucket")
            || lower.contains("not found")
            || lower.contains("notfound")
            || lower.contains("does not exist")
        {
            format!("it does not exist: {fix} ({e})")
        } else {
            format!(
                "{e}; check the endpoint and credentials, and that this identity has {permission}"
            )
        }
    });
    Check { what, problem }
}
