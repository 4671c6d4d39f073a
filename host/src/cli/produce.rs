//! `weir produce`: lines of a file into the configured Kinesis stream or SQS queue.

use super::*;

pub(super) async fn produce(
    path: &Path,
    input: &str,
    group_id: &str,
    key_field: &str,
    aggregate: usize,
) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    let bytes = if input == "-" {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf).await?;
        buf
    } else {
        tokio::fs::read(input)
            .await
            .with_context(|| format!("reading {input}"))?
    };
    let lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    // A build without the SQS and Kinesis features has nothing to send to.
    #[cfg(not(all(feature = "sqs", feature = "kinesis")))]
    let _ = (&lines, group_id, key_field, aggregate);
    match &loaded.config.source {
        #[cfg(not(feature = "sqs"))]
        config::SourceConfig::Sqs { .. } => {
            anyhow::bail!(config::not_compiled("source.kind", "sqs", "sqs"))
        }
        #[cfg(not(feature = "kinesis"))]
        config::SourceConfig::Kinesis { .. } => {
            anyhow::bail!(config::not_compiled("source.kind", "kinesis", "kinesis"))
        }
        #[cfg(feature = "sqs")]
        config::SourceConfig::Sqs { queue_url, .. } => {
            let client = loaded.config.source_sqs().await;
            let sent = weir::source::sqs::send_lines(&client, queue_url, &lines, group_id).await?;
            println!("sent {sent} messages to {queue_url}");
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "kinesis")]
        config::SourceConfig::Kinesis {
            stream, stream_arn, ..
        } => {
            let client = loaded.config.source_kinesis().await;
            let sent = weir::source::kinesis::put_lines(
                &client,
                stream,
                stream_arn.as_deref(),
                &lines,
                key_field,
                aggregate.max(1),
            )
            .await?;
            println!("sent {sent} records to stream {stream}");
            Ok(ExitCode::SUCCESS)
        }
        config::SourceConfig::File { .. } => anyhow::bail!(
            "{}: `weir produce` sends to an SQS or Kinesis source; this configuration reads a file",
            path.display()
        ),
        config::SourceConfig::S3 { .. } => anyhow::bail!(
            "{}: `weir produce` sends to an SQS or Kinesis source; this configuration reads S3 objects: upload \
             the file to the bucket (aws s3 cp FILE s3://BUCKET/PREFIX)",
            path.display()
        ),
        config::SourceConfig::Http(_) => anyhow::bail!(
            "{}: `weir produce` sends to an SQS or Kinesis source; this configuration serves HTTP: POST the \
             lines to its /v1/records (curl --data-binary @FILE)",
            path.display()
        ),
    }
}
