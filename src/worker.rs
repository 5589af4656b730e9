//! One job's life: receive, fetch, segment, upload, publish, then ack, retry or reject.
//!
//! This is the only module that ties the queue, the transfers and the compute core together.
//! Failures are logged once, here, where the delivery's fate is decided.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use tracing::{Instrument, Span, field};

use crate::error::{Decision, ErrorKind, JobError, RetryPolicy, decide};
use crate::job::{BundleInfo, EnvelopeError, JobRequest, RequestError, Stages, Status, StatusEnvelope, TransportIds};
use crate::metrics::{DeadLetterReason, Metrics, Outcome};
use crate::queue::{self, Publisher, ReplyTarget};
use crate::segmentation::providers::Provider;
use crate::segmentation::{self, Scores, Segmenter};
use crate::transfer::{Transfers, redact};
use crate::volume::{ReadLimits, Statistics, encode_masks, read_input};

/// Header that carries the attempt number of a job sent back through the delay queue.
pub const ATTEMPT_HEADER: &str = "x-thrombseg-attempt";

/// AMQP delivery mode that makes the broker write a message to disk.
const PERSISTENT: u8 = 2;

/// State shared by every job of a worker, across broker connections.
pub struct JobContext {
    pub transfers: Transfers,
    pub segmenter: Arc<Mutex<Segmenter>>,
    /// The bundle's intensity window half-width in standard deviations, for preprocessing
    /// outside the model lock.
    pub window_sigmas: f64,
    pub limits: ReadLimits,
    pub bundle: BundleInfo,
    /// The execution provider that runs the networks first.
    pub execution_provider: Provider,
    pub metrics: Arc<Metrics>,
    pub retry: RetryPolicy,
    /// Time a job may take from download to upload before it fails as transient.
    pub job_deadline: Duration,
    /// Name prefix of the delay queues, one per retry delay.
    pub retry_queue_prefix: String,
}

/// Handles one delivery to the end: it is acked, retried, rejected or requeued before this
/// returns. `publisher` belongs to the connection the delivery came from.
pub async fn handle_delivery(context: Arc<JobContext>, publisher: Publisher, delivery: Delivery) {
    let attempt = attempt_number(&delivery);
    let span = tracing::info_span!("job", job_id = field::Empty, attempt, stage = field::Empty);
    let _in_flight = InFlight::new(&context.metrics);
    let started = Instant::now();

    let outcome = process(&context, &publisher, &delivery, attempt).instrument(span).await;
    if let Some((outcome, kind)) = outcome {
        context
            .metrics
            .record_job(outcome, kind, started.elapsed().as_secs_f64());
    }
}

/// Runs the job and settles its delivery; returns the final outcome, or `None` when the job
/// will run again.
async fn process(
    context: &JobContext,
    publisher: &Publisher,
    delivery: &Delivery,
    attempt: u32,
) -> Option<(Outcome, Option<ErrorKind>)> {
    let ids = TransportIds {
        message_id: delivery.properties.message_id().as_ref().map(|id| id.to_string()),
        correlation_id: delivery.properties.correlation_id().as_ref().map(|id| id.to_string()),
    };
    let reply = ReplyTarget {
        reply_to: delivery.properties.reply_to().as_ref().map(|q| q.to_string()),
        correlation_id: ids.correlation_id.clone(),
    };

    let job = match JobRequest::parse(&delivery.data, &ids) {
        Ok(job) => job,
        Err(error) => return reject_invalid(context, publisher, delivery, &ids, &reply, attempt, error).await,
    };
    Span::current().record("job_id", job.job_id.as_str());
    tracing::info!(input = %redact(&job.input_file_url), explain = job.explain, "job received");

    let mut stages = Stages::default();
    let deadline = context.job_deadline;
    let outcome = match tokio::time::timeout(deadline, run_job(context, &job, &mut stages)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(JobError::Deadline(deadline.as_secs())),
    };
    record_stages(&context.metrics, &stages);

    let error = match outcome {
        Ok(scores) => {
            let envelope = StatusEnvelope::ok(job.job_id.clone(), attempt, stages, context.bundle.clone(), scores);
            return finish(context, publisher, delivery, &reply, &envelope, None).await;
        }
        Err(error) => error,
    };

    let kind = error.kind();
    match decide(kind, attempt, &context.retry) {
        Decision::Retry { delay } => {
            retry_later(context, publisher, delivery, attempt, delay, &error).await;
            None
        }
        Decision::Fail => {
            let envelope_error = EnvelopeError {
                kind: kind.as_str(),
                message: error.to_string(),
            };
            let envelope = StatusEnvelope::error(
                job.job_id.clone(),
                attempt,
                stages,
                context.bundle.clone(),
                envelope_error,
            );
            finish(context, publisher, delivery, &reply, &envelope, Some(error)).await
        }
    }
}

/// Runs download, decode, segment, encode and upload; returns the scores when explain is on.
async fn run_job(context: &JobContext, job: &JobRequest, stages: &mut Stages) -> Result<Option<Scores>, JobError> {
    let span = Span::current();

    // Both URLs are checked before any work, so a bad output URL fails before inference.
    context
        .transfers
        .check_urls(&job.input_file_url, &job.output_file_url)?;

    span.record("stage", "download");
    let started = Instant::now();
    let bytes = context.transfers.download(&job.input_file_url).await?;
    stages.download = Some(started.elapsed().as_secs_f64());
    context.metrics.add_download_bytes(bytes.len());

    span.record("stage", "segment");
    let segmenter = Arc::clone(&context.segmenter);
    let limits = context.limits;
    let explain = job.explain;
    let window_sigmas = context.window_sigmas;
    let statistics = job.statistics;
    let compute_span = span.clone();
    let computed = tokio::task::spawn_blocking(move || {
        let _entered = compute_span.enter();
        compute(&bytes, limits, statistics, window_sigmas, &segmenter, explain)
    })
    .await
    .map_err(|e| JobError::Internal(e.to_string()))??;

    stages.decode = Some(computed.decode_seconds);
    stages.record_compute(&computed.timings);
    stages.encode = Some(computed.encode_seconds);

    span.record("stage", "upload");
    let started = Instant::now();
    let upload_bytes = computed.encoded.len();
    context.transfers.upload(&job.output_file_url, computed.encoded).await?;
    stages.upload = Some(started.elapsed().as_secs_f64());
    context.metrics.add_upload_bytes(upload_bytes);
    context.metrics.add_voxels(computed.voxels);

    Ok(computed.scores)
}

/// Result of the blocking part of a job.
struct Computed {
    encoded: Vec<u8>,
    scores: Option<Scores>,
    timings: crate::segmentation::StageTimings,
    decode_seconds: f64,
    encode_seconds: f64,
    voxels: usize,
}

/// Decodes, segments and encodes on the calling (blocking) thread.
fn compute(
    bytes: &[u8],
    limits: ReadLimits,
    statistics: Option<Statistics>,
    window_sigmas: f64,
    segmenter: &Mutex<Segmenter>,
    explain: bool,
) -> Result<Computed, JobError> {
    let started = Instant::now();
    let volume = read_input(bytes, limits, statistics)?.volume;
    let decode_seconds = started.elapsed().as_secs_f64();

    // Preprocessing needs no model, so it runs before taking the lock and overlaps another
    // job's inference.
    let started = Instant::now();
    let input = segmentation::prepare(&volume, window_sigmas);
    let preprocess_seconds = started.elapsed().as_secs_f64();

    let mut segmentation = {
        let mut segmenter = segmenter
            .lock()
            .map_err(|_| JobError::Internal("model lock poisoned by an earlier panic".into()))?;
        segmenter.infer(&input, explain)?
    };
    drop(input);
    segmentation.timings.preprocess = preprocess_seconds;

    let started = Instant::now();
    let encoded = encode_masks(&segmentation.archive()).map_err(|e| JobError::Encode(e.to_string()))?;
    Ok(Computed {
        encoded,
        scores: segmentation.explain.map(|explain| explain.scores),
        timings: segmentation.timings,
        decode_seconds,
        encode_seconds: started.elapsed().as_secs_f64(),
        voxels: volume.voxels.len(),
    })
}

/// Publishes the final envelope, then acks (OK) or rejects to the dead-letter queue (ERROR).
/// A job whose envelope is not confirmed goes back to the queue instead.
async fn finish(
    context: &JobContext,
    publisher: &Publisher,
    delivery: &Delivery,
    reply: &ReplyTarget,
    envelope: &StatusEnvelope,
    error: Option<JobError>,
) -> Option<(Outcome, Option<ErrorKind>)> {
    // The span keeps the stage a failure happened in; publishing is timed separately.
    let started = Instant::now();
    let published = publish(publisher, envelope, reply).await;
    context.metrics.record_stage("publish", started.elapsed().as_secs_f64());

    if let Err(publish_error) = published {
        // Without a confirmed envelope the platform does not know the outcome, so the job runs
        // again rather than end silently.
        tracing::error!(error = %publish_error, "status envelope not confirmed; the job goes back to the queue");
        settle(delivery, Settlement::Requeue).await;
        return None;
    }

    match error {
        None => {
            let stages = &envelope.stages;
            tracing::info!(
                download_seconds = stages.download,
                infer_3d_seconds = stages.infer_3d,
                infer_2d_seconds = stages.infer_2d,
                upload_seconds = stages.upload,
                "job succeeded"
            );
            settle(delivery, Settlement::Ack).await;
            Some((Outcome::Ok, None))
        }
        Some(error) => {
            let kind = error.kind();
            tracing::error!(error = %error, kind = kind.as_str(), "job failed; rejected to the dead-letter queue");
            settle(delivery, Settlement::Reject).await;
            context.metrics.record_dead_letter(DeadLetterReason::Failed(kind));
            Some((Outcome::Error, Some(kind)))
        }
    }
}

/// Sends a copy of the job to the delay queue for `delay` with its next attempt number, then
/// acks the original. The delay queue dead-letters it back to the job queue when its TTL
/// expires.
async fn retry_later(
    context: &JobContext,
    publisher: &Publisher,
    delivery: &Delivery,
    attempt: u32,
    delay: Duration,
    error: &JobError,
) {
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt) + 1));
    let original = &delivery.properties;
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(value) = original.content_type() {
        properties = properties.with_content_type(value.clone());
    }
    if let Some(value) = original.message_id() {
        properties = properties.with_message_id(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        properties = properties.with_correlation_id(value.clone());
    }
    if let Some(value) = original.reply_to() {
        properties = properties.with_reply_to(value.clone());
    }

    let sent = publisher
        .publish_confirmed(
            "",
            &queue::retry_queue_name(&context.retry_queue_prefix, delay),
            &delivery.data,
            properties,
        )
        .await;
    match sent {
        Ok(()) => {
            tracing::warn!(
                error = %error,
                kind = error.kind().as_str(),
                retry_in_seconds = delay.as_secs_f64(),
                next_attempt = attempt + 1,
                "job failed; retrying later"
            );
            context.metrics.record_retry();
            settle(delivery, Settlement::Ack).await;
        }
        Err(publish_error) => {
            tracing::error!(error = %error, retry_error = %publish_error, "job failed and could not be scheduled for a retry; requeueing it");
            settle(delivery, Settlement::Requeue).await;
        }
    }
}

/// Dead-letters a body that is not a valid job; publishes an ERROR envelope first when the
/// body or the message carries a job id.
async fn reject_invalid(
    context: &JobContext,
    publisher: &Publisher,
    delivery: &Delivery,
    ids: &TransportIds,
    reply: &ReplyTarget,
    attempt: u32,
    error: RequestError,
) -> Option<(Outcome, Option<ErrorKind>)> {
    let job_id = serde_json::from_slice::<serde_json::Value>(&delivery.data)
        .ok()
        .and_then(|body| body.get("job_id").and_then(|id| id.as_str().map(str::to_owned)))
        .or_else(|| ids.message_id.clone())
        .or_else(|| ids.correlation_id.clone());

    let Some(job_id) = job_id else {
        // The body is never logged: it may hold pre-signed URLs.
        tracing::error!(error = %error, body_bytes = delivery.data.len(), "message is not a job; rejected to the dead-letter queue");
        settle(delivery, Settlement::Reject).await;
        context.metrics.record_dead_letter(DeadLetterReason::NotAJob);
        return None;
    };

    Span::current().record("job_id", job_id.as_str());
    let envelope_error = EnvelopeError {
        kind: ErrorKind::BadInput.as_str(),
        message: error.to_string(),
    };
    let envelope = StatusEnvelope::error(
        job_id,
        attempt,
        Stages::default(),
        context.bundle.clone(),
        envelope_error,
    );
    finish(
        context,
        publisher,
        delivery,
        reply,
        &envelope,
        Some(JobError::Request(error)),
    )
    .await
}

async fn publish(publisher: &Publisher, envelope: &StatusEnvelope, reply: &ReplyTarget) -> Result<(), JobError> {
    let routing_key = match envelope.status {
        Status::Ok => "ok",
        Status::Error => "error",
    };
    publisher
        .publish_envelope(envelope.to_json().as_bytes(), routing_key, &envelope.job_id, reply)
        .await?;
    Ok(())
}

fn record_stages(metrics: &Metrics, stages: &Stages) {
    let timed = [
        ("download", stages.download),
        ("decode", stages.decode),
        ("preprocess", stages.preprocess),
        ("infer_3d", stages.infer_3d),
        ("infer_2d", stages.infer_2d),
        ("postprocess", stages.postprocess),
        ("encode", stages.encode),
        ("upload", stages.upload),
    ];
    for (stage, seconds) in timed {
        if let Some(seconds) = seconds {
            metrics.record_stage(stage, seconds);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Settlement {
    Ack,
    Reject,
    Requeue,
}

async fn settle(delivery: &Delivery, settlement: Settlement) {
    let result = match settlement {
        Settlement::Ack => delivery.ack(BasicAckOptions::default()).await,
        Settlement::Reject => delivery.reject(BasicRejectOptions { requeue: false }).await,
        Settlement::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(error) = result {
        // The delivery belongs to its channel. When that channel is gone, the broker has
        // already requeued the message, and settling it on another channel would be wrong.
        tracing::warn!(error = %error, ?settlement, "could not settle the delivery; the broker redelivers it");
    }
}

/// Returns the attempt number, counting from 1: the attempt header of a retried job, plus the
/// deliveries that quorum queues count in `x-delivery-count` (a crash or a requeue).
pub fn attempt_number(delivery: &Delivery) -> u32 {
    let headers = delivery.properties.headers().as_ref();
    let header = |name: &str| {
        headers
            .and_then(|h| h.inner().get(name).cloned())
            .and_then(header_count)
    };

    let retried = header(ATTEMPT_HEADER).unwrap_or(1).max(1);
    let redelivered = match header("x-delivery-count") {
        Some(count) => count,
        None => u32::from(delivery.redelivered),
    };
    retried.saturating_add(redelivered)
}

fn header_count(value: AMQPValue) -> Option<u32> {
    match value {
        AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(n),
        AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(n)),
        _ => None,
    }
}

/// Counts a job in flight for as long as it lives, panics included.
struct InFlight<'a> {
    metrics: &'a Metrics,
}

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.job_started();
        Self { metrics }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.job_settled();
    }
}
