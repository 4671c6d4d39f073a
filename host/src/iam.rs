//! `weir iam-policy`: the least-privilege IAM policy of a configuration — exactly the AWS actions a worker
//! with that configuration calls, on exactly the resources it names (the stream or queue, the RAW prefix, the
//! plugin store, the staging prefixes, the Redshift user, the coordinator table). `weir reconcile` and
//! `weir replay` need nothing more; `weir produce` (a test helper) is not covered.

use serde_json::{Value, json};

use crate::config::{
    Config, CoordinatorConfig, PluginLocation, RawConfig, SourceConfig, Sse, StageFillConfig,
    StagingConfig,
};

/// Where the resources live.
#[derive(Debug, Clone)]
pub struct Account {
    /// `aws`, `aws-cn`, `aws-us-gov`.
    pub partition: String,
    /// The region of the stream, queue, table and cluster (`[aws] region` by default).
    pub region: Option<String>,
    /// The 12-digit account id (taken from an SQS queue URL when there is one).
    pub account_id: Option<String>,
}

/// The policy document of `config`, whose `${secretsmanager:…}` / `${ssm:…}` references are `secrets`; an
/// error names the missing command-line flag.
pub fn policy(config: &Config, secrets: &[String], account: &Account) -> Result<Value, String> {
    let mut p = Policy {
        account: account.clone(),
        statements: Vec::new(),
    };
    if p.account.region.is_none() {
        p.account.region = config.aws.region.clone();
    }
    let queue = match &config.source {
        SourceConfig::Sqs { queue_url, .. } => Some(queue_url),
        SourceConfig::S3 { queue_url, .. } => queue_url.as_ref(),
        _ => None,
    };
    if let Some(queue_url) = queue
        && let Some((region, account, _)) = queue_parts(queue_url)
    {
        p.account.account_id.get_or_insert(account);
        if p.account.region.is_none() {
            p.account.region = region;
        }
    }
    match &config.source {
        SourceConfig::File { .. } | SourceConfig::Http(_) => {}
        SourceConfig::S3 {
            queue_url,
            bucket,
            prefix,
            ..
        } => {
            if let Some(queue_url) = queue_url {
                consume_queue(&mut p, queue_url)?;
            }
            // With notifications and no `bucket`, the buckets are whatever sends to the queue.
            let objects = match bucket {
                Some(b) => p.s3(b, &format!("{prefix}*")),
                None => format!("arn:{}:s3:::*/{prefix}*", p.account.partition),
            };
            p.allow(
                "ReadTheObjects",
                &["s3:GetObject", "s3:GetObjectVersion"],
                &[objects],
            );
            // Listing: a backfill lists the prefix; with notifications it makes a deleted object a 404
            // (skipped) instead of a 403 (which would stop the worker).
            if let Some(bucket) = bucket {
                p.statements.push(json!({
                    "Sid": "ListTheObjects",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": format!("arn:{}:s3:::{bucket}", p.account.partition),
                    "Condition": { "StringLike": { "s3:prefix": [format!("{prefix}*")] } },
                }));
            }
        }
        SourceConfig::Sqs { queue_url, .. } => consume_queue(&mut p, queue_url)?,
        SourceConfig::Kinesis {
            stream, stream_arn, ..
        } => {
            let arn = match stream_arn {
                Some(arn) => arn.clone(),
                None => p.arn("kinesis", &format!("stream/{stream}"))?,
            };
            p.allow(
                "ReadTheStream",
                &[
                    "kinesis:ListShards",
                    "kinesis:GetShardIterator",
                    "kinesis:GetRecords",
                ],
                &[arn],
            );
        }
    }
    if let RawConfig::S3 {
        bucket,
        prefix,
        sse,
        kms_key_id,
        ..
    } = &config.raw
    {
        let objects = p.s3(bucket, &format!("{prefix}*"));
        p.allow(
            "WriteAndReadRaw",
            &["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
            &[objects],
        );
        p.statements.push(json!({
            "Sid": "ListRaw",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": format!("arn:{}:s3:::{bucket}", p.account.partition),
            "Condition": { "StringLike": { "s3:prefix": [format!("{prefix}*")] } },
        }));
        if *sse == Sse::Kms {
            p.kms(kms_key_id.as_deref())?;
        }
    }
    match (&config.rule.store, &config.raw) {
        (Some(url), _) if url.starts_with("s3://") => {
            let rest = &url["s3://".len()..];
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = if prefix.is_empty() || prefix.ends_with('/') {
                prefix.to_string()
            } else {
                format!("{prefix}/")
            };
            let objects = p.s3(bucket, &format!("{prefix}*"));
            p.allow("PluginStore", &["s3:PutObject", "s3:GetObject"], &[objects]);
        }
        (None, RawConfig::S3 { bucket, .. }) => {
            let objects = p.s3(bucket, "weir-plugins/*");
            p.allow("PluginStore", &["s3:PutObject", "s3:GetObject"], &[objects]);
        }
        _ => {}
    }
    if let PluginLocation::S3 { bucket, key } = &config.rule.plugin {
        let object = p.s3(bucket, key);
        p.allow("FetchTheRule", &["s3:GetObject"], &[object]);
    }
    let mut staged = Vec::new();
    if config.sink.group_commit.on()
        && let StagingConfig::S3 { bucket, prefix } = config.sink.group_commit.staging()
    {
        staged.push(p.s3(&bucket, &format!("{}/*", prefix.trim_end_matches('/'))));
    }
    if let StageFillConfig::Copy { bucket, prefix, .. } = &config.sink.stage_fill {
        staged.push(p.s3(bucket, &format!("{prefix}*")));
    }
    if !staged.is_empty() {
        p.allow(
            "StagedBatchesAndRowFiles",
            &["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
            &staged,
        );
    }
    if let Some(iam) = &config.sink.iam {
        let url = config.sink.url.as_deref().unwrap_or_default();
        let (user, db) = user_and_database(url);
        match (&iam.cluster_id, &iam.workgroup) {
            (Some(cluster), _) => {
                let user = iam.db_user.clone().or(user).ok_or(
                    "sink.iam.db_user: give the database user (the url names none)".to_string(),
                )?;
                let db = db.ok_or("sink.url names no database".to_string())?;
                let dbuser = p.arn("redshift", &format!("dbuser:{cluster}/{user}"))?;
                let dbname = p.arn("redshift", &format!("dbname:{cluster}/{db}"))?;
                p.allow(
                    "RedshiftTemporaryCredentials",
                    &["redshift:GetClusterCredentials"],
                    &[dbuser.clone(), dbname],
                );
                if iam.auto_create {
                    p.allow(
                        "RedshiftCreateTheUser",
                        &["redshift:CreateClusterUser"],
                        &[dbuser],
                    );
                }
            }
            (None, Some(_)) => {
                // A workgroup's ARN carries its id, not its name: every workgroup of the account and region.
                let any = p.arn("redshift-serverless", "workgroup/*")?;
                p.allow(
                    "RedshiftServerlessCredentials",
                    &["redshift-serverless:GetCredentials"],
                    &[any],
                );
            }
            (None, None) => {}
        }
    }
    if let CoordinatorConfig::Dynamodb { table, .. } = &config.coordinator {
        let arn = p.arn("dynamodb", &format!("table/{table}"))?;
        p.allow(
            "FleetCoordination",
            &[
                "dynamodb:DescribeTable",
                "dynamodb:GetItem",
                "dynamodb:BatchGetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:Query",
            ],
            &[arn.clone(), format!("{arn}/index/*")],
        );
    }
    let (mut secret_arns, mut parameter_arns) = (Vec::new(), Vec::new());
    for r in secrets {
        if let Some(rest) = r.strip_prefix("secretsmanager:") {
            let name = rest.split_once('#').map(|(n, _)| n).unwrap_or(rest);
            // A secret's ARN ends in a random six-character suffix after its name.
            let arn = if name.starts_with("arn:") {
                name.to_string()
            } else {
                p.arn("secretsmanager", &format!("secret:{name}-??????"))?
            };
            if !secret_arns.contains(&arn) {
                secret_arns.push(arn);
            }
        } else if let Some(name) = r.strip_prefix("ssm:") {
            let arn = p.arn(
                "ssm",
                &format!("parameter/{}", name.trim_start_matches('/')),
            )?;
            if !parameter_arns.contains(&arn) {
                parameter_arns.push(arn);
            }
        }
    }
    if !secret_arns.is_empty() {
        p.allow(
            "ConfigurationSecrets",
            &["secretsmanager:GetSecretValue"],
            &secret_arns,
        );
    }
    if !parameter_arns.is_empty() {
        p.allow(
            "ConfigurationParameters",
            &["ssm:GetParameter"],
            &parameter_arns,
        );
    }
    Ok(json!({ "Version": "2012-10-17", "Statement": p.statements }))
}

/// What the policy leaves out on purpose, for people.
pub fn notes(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    if let CoordinatorConfig::Dynamodb { table, .. } = &config.coordinator {
        notes.push(format!(
            "weir creates the coordinator table {table} when it is missing; create it beforehand (the EC2 kit's \
             template does) or add dynamodb:CreateTable and dynamodb:UpdateTimeToLive on it"
        ));
    }
    let mut roles: Vec<String> = Vec::new();
    for arn in config.roles().into_iter().filter_map(|(_, r)| r.role_arn) {
        if !roles.contains(&arn) {
            roles.push(arn);
        }
    }
    if !roles.is_empty() {
        notes.push(format!(
            "the configuration assumes {}: the policy above belongs to those roles (each its own part), and the \
             worker's own identity needs sts:AssumeRole on them",
            roles.join(", ")
        ));
    }
    if let StageFillConfig::Copy { iam_role, .. } = &config.sink.stage_fill {
        notes.push(format!(
            "Redshift's COPY reads the row files with its own role ({iam_role}): that role needs s3:GetObject \
             on them, not this one"
        ));
    }
    notes
}

struct Policy {
    account: Account,
    statements: Vec<Value>,
}

impl Policy {
    fn allow(&mut self, sid: &str, actions: &[&str], resources: &[String]) {
        self.statements.push(json!({
            "Sid": sid,
            "Effect": "Allow",
            "Action": actions,
            "Resource": resources,
        }));
    }

    fn region(&self) -> Result<String, String> {
        self.account
            .region
            .clone()
            .ok_or_else(|| "the region is unknown: pass --region (or set [aws] region)".to_string())
    }

    fn arn(&self, service: &str, resource: &str) -> Result<String, String> {
        let account = self.account.account_id.clone().ok_or_else(|| {
            "the account is unknown: pass --account-id (the 12-digit AWS account id)".to_string()
        })?;
        Ok(format!(
            "arn:{}:{service}:{}:{account}:{resource}",
            self.account.partition,
            self.region()?
        ))
    }

    fn s3(&self, bucket: &str, objects: &str) -> String {
        format!("arn:{}:s3:::{bucket}/{objects}", self.account.partition)
    }

    /// SSE-KMS: the key's data keys, by ARN when the configuration gives one, else any key S3 uses in the
    /// region.
    fn kms(&mut self, key: Option<&str>) -> Result<(), String> {
        let actions = ["kms:GenerateDataKey", "kms:Decrypt"];
        match key {
            Some(arn) if arn.starts_with("arn:") && arn.contains(":key/") => {
                self.allow("RawEncryption", &actions, &[arn.to_string()]);
            }
            Some(id) if !id.starts_with("alias/") && !id.starts_with("arn:") => {
                let arn = self.arn("kms", &format!("key/{id}"))?;
                self.allow("RawEncryption", &actions, &[arn]);
            }
            _ => {
                let region = self.region()?;
                let any = self.arn("kms", "key/*")?;
                self.statements.push(json!({
                    "Sid": "RawEncryption",
                    "Effect": "Allow",
                    "Action": actions,
                    "Resource": [any],
                    "Condition": { "StringEquals": { "kms:ViaService": format!("s3.{region}.amazonaws.com") } },
                }));
            }
        }
        Ok(())
    }
}

/// The region (when the host names one), account and name of an SQS queue URL.
/// The statement that lets a worker consume an SQS queue.
fn consume_queue(p: &mut Policy, queue_url: &str) -> Result<(), String> {
    let (region, account, name) = queue_parts(queue_url).ok_or_else(|| {
        format!(
            "source.queue_url {queue_url:?} is not https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"
        )
    })?;
    let region = region.map(Ok).unwrap_or_else(|| p.region())?;
    let arn = format!("arn:{}:sqs:{region}:{account}:{name}", p.account.partition);
    p.allow(
        "ConsumeTheQueue",
        &[
            "sqs:ReceiveMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
        ],
        &[arn],
    );
    Ok(())
}

fn queue_parts(url: &str) -> Option<(Option<String>, String, String)> {
    let rest = url.split_once("://")?.1;
    let mut parts = rest.split('/');
    let host = parts.next()?;
    let account = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    if account.is_empty() || name.is_empty() {
        return None;
    }
    let region = host
        .strip_prefix("sqs.")
        .and_then(|h| h.split('.').next())
        .map(str::to_string);
    Some((region, account, name))
}

/// The user and database of a `postgres://user:password@host:port/db?…` URL.
fn user_and_database(url: &str) -> (Option<String>, Option<String>) {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return (None, None);
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map(|(info, _)| info.split(':').next().unwrap_or(info).to_string())
        .filter(|u| !u.is_empty());
    let db = path.split('?').next().filter(|d| !d.is_empty());
    (user, db.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_parts() {
        assert_eq!(
            queue_parts("https://sqs.eu-west-1.amazonaws.com/123456789012/orders"),
            Some((
                Some("eu-west-1".into()),
                "123456789012".into(),
                "orders".into()
            ))
        );
        assert_eq!(
            queue_parts("http://127.0.0.1:4566/000000000000/q"),
            Some((None, "000000000000".into(), "q".into()))
        );
        assert_eq!(
            user_and_database("postgres://weir:secret@cluster:5439/dev?sslmode=require"),
            (Some("weir".into()), Some("dev".into()))
        );
        assert_eq!(
            user_and_database("postgres://host/db"),
            (None, Some("db".into()))
        );
    }
}
