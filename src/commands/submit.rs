//! `thrombseg submit`: the client a platform team tries the service with.
//!
//! Uploads a volume with the S3 API, makes pre-signed GET and PUT URLs, enqueues the job, waits
//! for its status envelope on a private reply queue, and downloads the result.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::queue::{self, Publisher};
use crate::settings::BrokerArgs;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Input .npz to segment.
    pub input: PathBuf,

    /// S3 bucket for the input and the result.
    #[arg(long)]
    pub bucket: String,

    /// Path for the downloaded result.
    #[arg(long)]
    pub output: PathBuf,

    /// Ask for logits and scores as well as the masks.
    #[arg(long)]
    pub explain: bool,

    /// Job id; a random UUID when not given.
    #[arg(long)]
    pub job_id: Option<String>,

    /// Seconds the pre-signed URLs stay valid.
    #[arg(long, default_value_t = 3600)]
    pub url_expiry_seconds: u64,

    /// Seconds to wait for the status envelope.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,

    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub fn run(args: SubmitArgs) -> ExitCode {
    match super::tokio_runtime().block_on(submit(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let job_id = args.job_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let file_name = args
        .input
        .file_name()
        .context("input path has no file name")?
        .to_string_lossy()
        .into_owned();
    let input_key = format!("inputs/{job_id}/{file_name}");
    let output_key = format!("results/{job_id}.npz");

    let s3 = s3_client_from_environment().await?;

    let body = ByteStream::from_path(&args.input)
        .await
        .with_context(|| format!("read {}", args.input.display()))?;
    s3.put_object()
        .bucket(&args.bucket)
        .key(&input_key)
        .body(body)
        .send()
        .await
        .with_context(|| format!("upload s3://{}/{input_key}", args.bucket))?;

    let expiry = PresigningConfig::expires_in(Duration::from_secs(args.url_expiry_seconds))?;
    let input_url = s3
        .get_object()
        .bucket(&args.bucket)
        .key(&input_key)
        .presigned(expiry.clone())
        .await?
        .uri()
        .to_owned();
    let output_url = s3
        .put_object()
        .bucket(&args.bucket)
        .key(&output_key)
        .presigned(expiry)
        .await?
        .uri()
        .to_owned();

    let raw_envelope = enqueue_and_wait(&args, &job_id, &input_url, &output_url).await?;
    let envelope: serde_json::Value = serde_json::from_str(&raw_envelope).context("the status envelope is not JSON")?;
    let status = envelope["status"].as_str().unwrap_or_default();
    let error_kind = envelope["error"]["kind"].as_str().unwrap_or_default();

    if status == "OK" {
        let result = s3
            .get_object()
            .bucket(&args.bucket)
            .key(&output_key)
            .send()
            .await
            .with_context(|| format!("download s3://{}/{output_key}", args.bucket))?;
        let bytes = result.body.collect().await?.into_bytes();
        std::fs::write(&args.output, &bytes).with_context(|| format!("write {}", args.output.display()))?;
    }

    println!("{raw_envelope}");
    Ok(match (status, error_kind) {
        ("OK", _) => ExitCode::SUCCESS,
        (_, "bad_input") => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    })
}

/// Builds an S3 client from the standard `AWS_*` variables only.
///
/// The SDK's default chains would fall back to the cloud metadata service for a missing region
/// or missing keys, so a missing variable is an error that names it instead. Path-style
/// addressing works with every S3-compatible server.
async fn s3_client_from_environment() -> anyhow::Result<aws_sdk_s3::Client> {
    let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .context("no S3 region: set AWS_REGION (any value, such as us-east-1, for MinIO or SeaweedFS)")?;
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if std::env::var(name).map_or(true, |value| value.is_empty()) {
            anyhow::bail!("no S3 credentials: set {name}");
        }
    }

    let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(region))
        .credentials_provider(aws_config::environment::EnvironmentVariableCredentialsProvider::new())
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&sdk_config)
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Publishes the job with a private reply queue and returns the envelope that replies to it,
/// as received.
async fn enqueue_and_wait(
    args: &SubmitArgs,
    job_id: &str,
    input_url: &str,
    output_url: &str,
) -> anyhow::Result<String> {
    let connection = queue::connect(&args.broker.amqp_url.0, &format!("thrombseg-submit-{job_id}")).await?;
    let channel = connection.create_channel().await?;
    queue::declare(&channel, &args.broker.topology).await?;

    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;

    let job = serde_json::json!({
        "job_id": job_id,
        "input_file_url": input_url,
        "output_file_url": output_url,
        "explain": args.explain,
    });
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job_id.into())
        .with_correlation_id(job_id.into())
        .with_reply_to(reply_queue.name().clone());
    let publisher = Publisher::new(
        connection.create_channel().await?,
        &args.broker.topology.status_exchange,
    )
    .await?;
    publisher
        .publish_confirmed(
            "",
            &args.broker.topology.job_queue,
            job.to_string().as_bytes(),
            properties,
        )
        .await?;
    eprintln!(
        "job {job_id} enqueued on {}; waiting for its status",
        args.broker.topology.job_queue
    );

    let wait = async {
        while let Some(delivery) = replies.next().await {
            let delivery = delivery?;
            let correlation = delivery.properties.correlation_id().as_ref().map(|id| id.as_str());
            if correlation == Some(job_id) {
                return Ok(String::from_utf8_lossy(&delivery.data).into_owned());
            }
        }
        bail!("the broker closed the reply queue before the job's status arrived")
    };
    let envelope = tokio::time::timeout(Duration::from_secs(args.timeout_seconds), wait)
        .await
        .with_context(|| {
            format!(
                "no status for job {job_id} within {} s; is a worker consuming {}? The job stays queued",
                args.timeout_seconds, args.broker.topology.job_queue
            )
        })??;

    let _ = connection.close(200, "submit done".into()).await;
    Ok(envelope)
}
