//! S3 objects as a source (`[source] kind = "s3"`).
//!
//! - **Which objects**: those named by the bucket's event notifications arriving in an SQS queue — S3's own
//!   `s3:ObjectCreated:*` JSON, the same wrapped in an SNS notification, or EventBridge's `Object Created`
//!   ([`notification`]) — or, without a queue, every object under a prefix once (a listing).
//! - **One pipeline per object** ([`object::ObjectSource`]): an ordered source whose partition names the object
//!   *version* (`{file name}-{digest of bucket, key and version}`), whose positions are `{record}@{byte
//!   offset}`, and whose checkpoint is kept by the sink like a file's. A crash in the middle of a large object
//!   resumes after its last committed batch: a plain object with a ranged GET from that offset, a gzip one by
//!   reading again and skipping. A new version of a key is another partition, so it is read from its start.
//! - **Acknowledging**: a notification is deleted from the queue only after every object it names has been read
//!   to its end and every batch committed. Until then the SQS source's heartbeat keeps it invisible; after a
//!   crash it comes back and its objects resume from their checkpoints.
//! - **Record ids** are `s3/{bucket}/{key}/{version id or ETag}/{n}` (`n` from 1 within the object), so a
//!   redelivered notification or a listed-again object gives the same ids.
//! - Notifications that are not S3 events are logged and left in the queue, for its redrive policy to move to
//!   its dead-letter queue; objects that no longer exist are skipped with a warning (their deletion is a later
//!   event of its own).

pub mod notification;
pub mod object;

use std::time::Duration;

use tokio::sync::watch;

use super::{Source, SourceError};
use crate::config::ObjectFormat;
use crate::pipeline::{Pipeline, PipelineError, Stages, Summary};
use notification::ObjectRef;
use object::{ObjectOptions, ObjectSource, Opened};

/// Settings of an S3 source.
#[derive(Debug, Clone)]
pub struct S3SourceOptions {
    /// The notifications' queue, or `None` for a listing of `bucket`.
    pub queue: Option<crate::source::sqs::SqsOptions>,
    /// The bucket to list; with a queue, the only bucket whose notifications are read.
    pub bucket: Option<String>,
    /// Only keys under this prefix.
    pub prefix: String,
    /// How objects are read.
    pub object: ObjectOptions,
}

impl S3SourceOptions {
    /// Whether a notification's object is one this source reads.
    fn wants(&self, o: &ObjectRef) -> bool {
        self.bucket.as_ref().is_none_or(|b| *b == o.bucket) && o.key.starts_with(&self.prefix)
    }
}

/// Reads objects until the input ends (a listing's last object, `idle_exit_secs` on a queue) or `shutdown`.
pub async fn run(
    s3: aws_sdk_s3::Client,
    sqs: Option<aws_sdk_sqs::Client>,
    options: S3SourceOptions,
    stages: Stages,
    shutdown: watch::Receiver<bool>,
) -> Result<Summary, PipelineError> {
    let mut summary = Summary::default();
    match (&options.queue, sqs) {
        (Some(queue), Some(sqs)) => {
            let queue = crate::source::sqs::SqsSource::open(sqs, queue.clone()).await?;
            notifications(&s3, queue, &options, &stages, shutdown, &mut summary).await?;
        }
        _ => listing(&s3, &options, &stages, shutdown, &mut summary).await?,
    }
    Ok(summary)
}

/// Resolves when shutdown is requested (never if the sender is gone without asking).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How loading one object ended.
enum Loaded {
    /// Read to its end (or gone), every batch committed.
    Whole,
    /// Cut by shutdown: its checkpoint says where to go on.
    Cut,
    /// It could not be read (denied, replaced mid-read, unreadable gzip or CSV): what was committed stays,
    /// the rest is read again when the notification comes back.
    Failed(SourceError),
}

/// Reads one object through its own pipeline. A failure of the object itself is reported, not returned: one
/// unreadable object must not stop the worker (its notification goes to the queue's dead-letter queue after
/// its redrive policy's receive count); the sink's and RAW's failures stop it as always.
async fn load_object(
    s3: &aws_sdk_s3::Client,
    object: ObjectRef,
    options: &S3SourceOptions,
    stages: &Stages,
    shutdown: &watch::Receiver<bool>,
    summary: &mut Summary,
) -> Result<Loaded, PipelineError> {
    let source = match ObjectSource::open(s3.clone(), object, options.object.clone()).await {
        Ok(Opened::Gone(object)) => {
            tracing::warn!(bucket = %object.bucket, key = %object.key, "s3 source: the object no longer exists; skipped");
            return Ok(Loaded::Whole);
        }
        Ok(Opened::Ready(source)) => source,
        Err(e) => return Ok(Loaded::Failed(e)),
    };
    let pipeline = Pipeline {
        source: Box::new(source),
        stages: stages.clone(),
    };
    match pipeline.run(shutdown.clone()).await {
        Ok(s) => summary.merge(s),
        Err(PipelineError::Source(e)) => return Ok(Loaded::Failed(e)),
        Err(e) => return Err(e),
    }
    Ok(if *shutdown.borrow() {
        Loaded::Cut
    } else {
        Loaded::Whole
    })
}

/// The notification loop: each message's objects are loaded, then the message is deleted.
async fn notifications(
    s3: &aws_sdk_s3::Client,
    mut queue: crate::source::sqs::SqsSource,
    options: &S3SourceOptions,
    stages: &Stages,
    mut shutdown: watch::Receiver<bool>,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let mut acker = queue.acker();
    let result = async {
        loop {
            let message = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return Ok(()),
                m = queue.next() => m?,
            };
            let Some(message) = message else {
                return Ok(()); // idle_exit_secs
            };
            let objects = match notification::parse(&message.record.payload) {
                Ok(objects) => objects,
                Err(why) => {
                    crate::metrics::global().inc("weir_s3_notifications_unreadable_total", &[], 1);
                    tracing::error!(message = %message.position, error = %why,
                        "s3 source: not an S3 event notification; left in the queue for its redrive policy (dead-letter queue)");
                    continue;
                }
            };
            let mut failed = false;
            for object in objects {
                if !options.wants(&object) {
                    tracing::debug!(bucket = %object.bucket, key = %object.key, "s3 source: not under source.bucket / prefix; skipped");
                    continue;
                }
                match load_object(s3, object, options, stages, &shutdown, summary).await? {
                    Loaded::Whole => {}
                    // Shutdown: the message is given back, and its objects resume from their checkpoints.
                    Loaded::Cut => return Ok(()),
                    Loaded::Failed(e) => {
                        crate::metrics::global().inc("weir_s3_objects_failed_total", &[], 1);
                        tracing::error!(message = %message.position, error = %e,
                            "s3 source: an object of this notification could not be read; the notification is left in the queue (it comes back, and goes to the queue's dead-letter queue after its redrive policy's receive count)");
                        failed = true;
                    }
                }
            }
            if !failed {
                acker.ack(&message_batch(&message)).await?;
            }
        }
    }
    .await;
    queue.close().await;
    result
}

/// A batch that stands for one notification message, for the SQS acker to delete it.
fn message_batch(message: &crate::record::Polled) -> crate::record::Batch {
    crate::record::Batch {
        id: format!("s3-notification/{}", message.position),
        source: "s3".into(),
        partition: String::new(),
        prev_position: String::new(),
        ordered: false,
        positions: vec![message.position.clone()],
        records: Vec::new(),
        bytes: 0,
        started: std::time::Instant::now(),
        received_us: Vec::new(),
        fingerprint: None,
    }
}

/// The listing: every object under the prefix, in key order, page by page.
async fn listing(
    s3: &aws_sdk_s3::Client,
    options: &S3SourceOptions,
    stages: &Stages,
    shutdown: watch::Receiver<bool>,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let bucket = options.bucket.clone().unwrap_or_default();
    let mut token: Option<String> = None;
    let mut failed: Vec<String> = Vec::new();
    let result = loop {
        let page = list_page(s3, &bucket, &options.prefix, token.clone()).await?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let object = ObjectRef {
                bucket: bucket.clone(),
                key: key.to_string(),
                version_id: None,
                etag: o.e_tag().map(str::to_string),
            };
            match load_object(s3, object, options, stages, &shutdown, summary).await? {
                Loaded::Whole => {}
                Loaded::Cut => return Ok(()),
                Loaded::Failed(e) => {
                    crate::metrics::global().inc("weir_s3_objects_failed_total", &[], 1);
                    tracing::error!(error = %e, "s3 source: an object could not be read; the listing goes on (run it again to read it)");
                    failed.push(key.to_string());
                }
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() || *shutdown.borrow() {
            break Ok(());
        }
    };
    if let Some(first) = failed.first() {
        return Err(PipelineError::Source(SourceError::Io {
            source_name: format!("s3 bucket {bucket}"),
            message: format!(
                "{} object(s) could not be read (the first: {first}); the others were loaded; run the listing \
                 again once they can be read (what was loaded is not read again)",
                failed.len()
            ),
        }));
    }
    result
}

/// One `ListObjectsV2` page, retried with backoff while S3 is unreachable or throttling.
async fn list_page(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    token: Option<String>,
) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, SourceError> {
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
            .with_budget(Duration::from_secs(300));
    loop {
        let r = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await;
        match r {
            Ok(page) => return Ok(page),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let permanent = matches!(status, Some(400..=499)) && status != Some(429);
                let text = crate::aws::sdk_error(&e);
                match backoff.next_delay().filter(|_| !permanent) {
                    Some(wait) => {
                        tracing::warn!(%bucket, error = %text, retry_ms = wait.as_millis() as u64, "s3 source: listing failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Err(SourceError::Io {
                            source_name: format!("s3 bucket {bucket}"),
                            message: format!(
                                "listing `{prefix}` failed: {text} (check source.bucket and that the worker may s3:ListBucket on it)"
                            ),
                        });
                    }
                }
            }
        }
    }
}

/// Options of the objects' reader from the source's config.
pub fn object_options(
    format: ObjectFormat,
    range_bytes: u64,
    max_record_bytes: usize,
) -> ObjectOptions {
    ObjectOptions {
        format,
        range_bytes,
        max_record_bytes,
    }
}
