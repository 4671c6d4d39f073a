//! AWS settings shared by every AWS backend: credentials and region from the standard chain (environment,
//! profile, EC2 instance profile), with an optional region and endpoint override (`[aws]` in the config) for
//! local servers that speak the AWS protocols.

use serde::Deserialize;

/// `[aws]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region. Default: the standard chain (`AWS_REGION`, profile, instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint for every AWS service, e.g. `http://127.0.0.1:4566` for a local test server. Default: AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Longest wait for a connection to an AWS endpoint, in seconds. Default 5.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Longest wait for the first byte of an answer, in seconds; more than an SQS long poll
    /// (`source.wait_secs`). Default 40.
    #[serde(default = "default_read_timeout_secs")]
    pub read_timeout_secs: u64,
    /// Longest one attempt of an AWS call may take, in seconds (an upload of a large RAW part included).
    /// Default 120.
    #[serde(default = "default_attempt_timeout_secs")]
    pub attempt_timeout_secs: u64,
    /// An IAM role every AWS call assumes (STS `AssumeRole`, credentials renewed before they expire), from
    /// the credentials of the standard chain. A backend's own `role_arn` (`[source]`, `[raw]`, `[sink.iam]`,
    /// `[coordinator]`) replaces it for that backend. Default: none.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy requires (cross-account roles), with `role_arn`.
    #[serde(default)]
    pub external_id: Option<String>,
}

/// A backend's own role (`role_arn`, `external_id` in its section).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Role {
    /// The IAM role this backend's calls assume instead of `[aws] role_arn`.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id its trust policy requires.
    #[serde(default)]
    pub external_id: Option<String>,
}

impl AwsConfig {
    /// `[aws] role_arn` and `external_id`.
    pub fn role(&self) -> Role {
        Role {
            role_arn: self.role_arn.clone(),
            external_id: self.external_id.clone(),
        }
    }

    /// These settings with `role` in place of `[aws] role_arn` when the backend names one.
    pub fn with_role(&self, role: &Role) -> AwsConfig {
        let mut aws = self.clone();
        if role.role_arn.is_some() {
            aws.role_arn = role.role_arn.clone();
            aws.external_id = role.external_id.clone();
        }
        aws
    }
}

fn default_connect_timeout_secs() -> u64 {
    5
}
fn default_read_timeout_secs() -> u64 {
    40
}
fn default_attempt_timeout_secs() -> u64 {
    120
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: None,
            endpoint_url: None,
            connect_timeout_secs: default_connect_timeout_secs(),
            read_timeout_secs: default_read_timeout_secs(),
            attempt_timeout_secs: default_attempt_timeout_secs(),
            role_arn: None,
            external_id: None,
        }
    }
}

/// The HTTPS client of every AWS call: hyper on rustls with ring, the crypto stack the PostgreSQL and MongoDB
/// clients use too (the SDK's default client would bring a second one, aws-lc).
#[cfg(feature = "aws")]
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

#[cfg(feature = "aws")]
impl AwsConfig {
    /// The SDK configuration.
    pub async fn load(&self) -> aws_config::SdkConfig {
        let loader = || {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(http_client());
            if let Some(region) = &self.region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            if let Some(url) = &self.endpoint_url {
                loader = loader.endpoint_url(url.clone());
            }
            loader
                .timeout_config(self.timeouts())
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        };
        let sdk = loader().load().await;
        let Some(role) = &self.role_arn else {
            return sdk;
        };
        // The role's credentials come from STS with the base credentials, renewed before they expire.
        let mut assume = aws_config::sts::AssumeRoleProvider::builder(role.clone())
            .session_name("weir")
            .configure(&sdk);
        if let Some(id) = &self.external_id {
            assume = assume.external_id(id.clone());
        }
        loader()
            .credentials_provider(assume.build().await)
            .load()
            .await
    }

    /// An S3 client; path-style addressing when an endpoint override is set (local servers need it).
    #[cfg(feature = "s3")]
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        self.s3_from(&self.load().await)
    }

    /// An S3 client from an already loaded SDK configuration.
    #[cfg(feature = "s3")]
    pub fn s3_from(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(self.endpoint_url.is_some())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

#[cfg(feature = "aws")]
impl AwsConfig {
    /// A Kinesis client, at `endpoint_url` when given (else `[aws] endpoint_url` or AWS's own).
    #[cfg(feature = "kinesis")]
    pub async fn kinesis(&self, endpoint_url: Option<&str>) -> aws_sdk_kinesis::Client {
        let sdk = self.load().await;
        let mut config = aws_sdk_kinesis::config::Builder::from(&sdk);
        if let Some(url) = endpoint_url {
            config = config.endpoint_url(url);
        }
        aws_sdk_kinesis::Client::from_conf(config.build())
    }

    /// A DynamoDB client, at `endpoint_url` when given (else `[aws] endpoint_url` or AWS's own).
    #[cfg(feature = "dynamodb")]
    pub async fn dynamodb(&self, endpoint_url: Option<&str>) -> aws_sdk_dynamodb::Client {
        let sdk = self.load().await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Some(url) = endpoint_url {
            config = config.endpoint_url(url);
        }
        aws_sdk_dynamodb::Client::from_conf(config.build())
    }

    /// An SQS client, at `endpoint_url` when given (else `[aws] endpoint_url` or AWS's own).
    #[cfg(feature = "sqs")]
    pub async fn sqs(&self, endpoint_url: Option<&str>) -> aws_sdk_sqs::Client {
        let sdk = self.load().await;
        let mut config = aws_sdk_sqs::config::Builder::from(&sdk);
        if let Some(url) = endpoint_url {
            config = config.endpoint_url(url);
        }
        aws_sdk_sqs::Client::from_conf(config.build())
    }

    /// An S3 client with its own endpoint override (path-style addressing, as local servers need).
    #[cfg(feature = "s3")]
    pub fn s3_at(&self, sdk: &aws_config::SdkConfig, endpoint_url: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .endpoint_url(endpoint_url)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

#[cfg(feature = "aws")]
impl AwsConfig {
    /// Timeouts of every AWS call: a black-holed endpoint fails the call (and weir's own retries take over)
    /// instead of hanging it.
    pub fn timeouts(&self) -> aws_config::timeout::TimeoutConfig {
        use std::time::Duration;
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(self.connect_timeout_secs.max(1)))
            .read_timeout(Duration::from_secs(self.read_timeout_secs.max(1)))
            .operation_attempt_timeout(Duration::from_secs(self.attempt_timeout_secs.max(1)))
            .build()
    }
}

/// An SDK error as text: the service's error code and message when there are some, else the cause chain.
#[cfg(feature = "aws")]
pub fn sdk_error<E, R>(e: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => error_message(e),
    }
}

/// A readable message from an SDK error, with its cause chain.
pub fn error_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(&format!(": {s}"));
        }
        source = cause.source();
    }
    text
}

/// Deletes `keys` from `bucket` with `DeleteObjects`, a thousand a call (missing keys are no error). Returns the
/// first failure: a call that failed, or a key S3 could not delete.
#[cfg(feature = "s3")]
pub async fn delete_objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    keys: &[String],
) -> Result<(), String> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for chunk in keys.chunks(1000) {
        let objects = chunk
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| e.to_string())?;
        let out = client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        if let Some(e) = out.errors().first() {
            return Err(format!(
                "{}: {}",
                e.key().unwrap_or_default(),
                e.message().unwrap_or_default()
            ));
        }
    }
    Ok(())
}
