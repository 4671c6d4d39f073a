//! `weir validate --aws`: every AWS backend of a configuration checked the way the worker will use it, each
//! failure saying whether the resource is missing or which permission the worker's identity lacks. Nothing
//! is read from or deleted in the data: the only writes are one small probe object per bucket (always the
//! same key, `{prefix}weir-validate/probe.txt`, with the configured encryption), because only a write shows
//! that a bucket is writable with that encryption.

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
        SourceConfig::Sqs { queue_url, .. } => {
            let client = config.source_sqs().await;
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
            stream, stream_arn, ..
        } => {
            let client = config.source_kinesis().await;
            let r = client
                .list_shards()
                .set_stream_name(crate::source::kinesis::by_name(stream, stream_arn))
                .set_stream_arn(stream_arn.clone())
                .send()
                .await;
            checks.push(verdict(
                format!("source: Kinesis stream {stream}"),
                r.map(|_| ()).map_err(|e| crate::aws::sdk_error(&e)),
                "kinesis:ListShards (and kinesis:GetShardIterator, kinesis:GetRecords)",
                if stream_arn.is_some() {
                    "create the stream, or fix source.stream_arn (and the role that reads it)"
                } else {
                    "create the stream, or fix source.stream"
                },
            ));
        }
        _ => {}
    }
    #[cfg(feature = "s3")]
    for b in buckets(loaded) {
        checks.push(check_bucket(b).await);
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

/// A bucket a worker writes to.
#[cfg(feature = "s3")]
struct Bucket {
    /// The config field that names it.
    field: &'static str,
    bucket: String,
    /// The key prefix, empty or ending with `/`.
    prefix: String,
    aws: crate::aws::AwsConfig,
    endpoint: Option<String>,
    /// Server-side encryption and its KMS key (RAW's `sse`, `kms_key_id`).
    sse: Option<(aws_sdk_s3::types::ServerSideEncryption, Option<String>)>,
}

/// Every bucket the configuration's worker writes to: RAW, grouped-commit staging, the COPY stage fill.
#[cfg(feature = "s3")]
fn buckets(loaded: &Loaded) -> Vec<Bucket> {
    use aws_sdk_s3::types::ServerSideEncryption;
    let config = &loaded.config;
    let folder = |p: &str| {
        if p.is_empty() || p.ends_with('/') {
            p.to_string()
        } else {
            format!("{p}/")
        }
    };
    let mut buckets = Vec::new();
    if let RawConfig::S3 {
        bucket,
        prefix,
        endpoint_url,
        sse,
        kms_key_id,
        ..
    } = &config.raw
    {
        let sse = match sse {
            crate::config::Sse::None => None,
            crate::config::Sse::S3 => Some((ServerSideEncryption::Aes256, None)),
            crate::config::Sse::Kms => Some((ServerSideEncryption::AwsKms, kms_key_id.clone())),
        };
        buckets.push(Bucket {
            field: "raw",
            bucket: bucket.clone(),
            prefix: folder(prefix),
            aws: config.aws.with_role(&config.raw.role()),
            endpoint: endpoint_url.clone(),
            sse,
        });
    }
    if config.sink.group_commit.on()
        && let StagingConfig::S3 { bucket, prefix } = config.sink.group_commit.staging()
    {
        buckets.push(Bucket {
            field: "sink.group_commit.staging",
            bucket,
            prefix: folder(&prefix),
            aws: config.aws.clone(),
            endpoint: None,
            sse: None,
        });
    }
    if let StageFillConfig::Copy { bucket, prefix, .. } = &config.sink.stage_fill {
        buckets.push(Bucket {
            field: "sink.stage_fill",
            bucket: bucket.clone(),
            prefix: folder(prefix),
            aws: config.aws.clone(),
            endpoint: None,
            sse: None,
        });
    }
    buckets
}

/// A bucket is there and listable under its prefix, and a probe object can be written with its encryption.
#[cfg(feature = "s3")]
async fn check_bucket(b: Bucket) -> Check {
    let sdk = b.aws.load().await;
    let client = match &b.endpoint {
        Some(url) => b.aws.s3_at(&sdk, url),
        None => b.aws.s3_from(&sdk),
    };
    let what = format!("{}: S3 bucket {}, prefix {:?}", b.field, b.bucket, b.prefix);
    let fix = format!("create the bucket, or fix {}", b.field);
    let listed = client
        .list_objects_v2()
        .bucket(&b.bucket)
        .prefix(&b.prefix)
        .max_keys(1)
        .send()
        .await;
    if let Err(e) = listed {
        return verdict(
            what,
            Err(crate::aws::sdk_error(&e)),
            "s3:ListBucket on the bucket",
            &fix,
        );
    }
    let key = format!("{}weir-validate/probe.txt", b.prefix);
    let (sse, kms_key) = b.sse.clone().unzip();
    let put = client
        .put_object()
        .bucket(&b.bucket)
        .key(&key)
        .body(b"weir validate --aws".to_vec().into())
        .set_server_side_encryption(sse)
        .set_ssekms_key_id(kms_key.flatten())
        .send()
        .await;
    let object = format!("s3://{}/{key}", b.bucket);
    let permission = match &b.sse {
        Some((aws_sdk_s3::types::ServerSideEncryption::AwsKms, kms)) => format!(
            "s3:PutObject on {object} and kms:GenerateDataKey on {}",
            kms.as_deref().unwrap_or("the account's aws/s3 key"),
        ),
        _ => format!("s3:PutObject on {object}"),
    };
    verdict(
        what,
        put.map(|_| ()).map_err(|e| crate::aws::sdk_error(&e)),
        &permission,
        &fix,
    )
}

/// The plugin store in S3 holds the rule (written there now if missing, as a worker does at start).
pub async fn check_plugin_store(loaded: &Loaded, rule: &crate::rules::RulePlugin) -> Option<Check> {
    let store = crate::plugin_store::PluginStore::open(loaded).await?;
    if matches!(store, crate::plugin_store::PluginStore::Dir(_)) {
        return None;
    }
    let what = format!("rule.store: plugin store {}", store.describe());
    let result = match std::fs::read(rule.path()) {
        Ok(wasm) => store.put(rule.digest(), &wasm, 1).await,
        Err(e) => Err(format!("reading {}: {e}", rule.path().display())),
    };
    Some(verdict(
        what,
        result,
        &format!(
            "s3:GetObject and s3:PutObject on {}{}.wasm",
            store.describe(),
            rule.digest()
        ),
        "create the bucket, or fix rule.store",
    ))
}

/// The warehouse can bulk-load from the configured files (a COPY with the stage fill's role).
pub async fn check_bulk_load(sink: &dyn crate::sink::Sink) -> Option<Check> {
    match sink.check_bulk_load().await {
        Ok(None) => None,
        Ok(Some(what)) => Some(Check {
            what: format!("sink.stage_fill: {what}"),
            problem: None,
        }),
        Err(e) => Some(Check {
            what: "sink.stage_fill: COPY".into(),
            problem: Some(e.to_string()),
        }),
    }
}
