//! One job's life: receive, fetch, segment, upload, publish, then ack or reject.
//!
//! This is the only module that ties the queue, the transfers and the compute core together.
//! Failures are logged once, here, where the delivery's fate is decided.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use tracing::{Instrument, Span, field};

use crate::error::{Disposition, JobError, disposition};
use crate::job::{BundleInfo, EnvelopeError, JobRequest, Stages, Status, StatusEnvelope, TransportIds};
use crate::queue::{Publisher, ReplyTarget};
use crate::segmentation::{Scores, Segmenter};
use crate::transfer::Transfers;
use crate::volume::{ReadLimits, encode_masks, read_npz};

/// State shared by every job of a worker.
pub struct JobContext {
    pub transfers: Transfers,
    pub segmenter: Arc<Mutex<Segmenter>>,
    pub publisher: Publisher,
    pub limits: ReadLimits,
    pub bundle: BundleInfo,
}

/// Handles one delivery to the end: it is acked, rejected or requeued before this returns.
pub async fn handle_delivery(context: Arc<JobContext>, delivery: Delivery) {
    let attempt = attempt_number(&delivery);
    let span = tracing::info_span!("job", job_id = field::Empty, attempt, stage = field::Empty);
    process(context, delivery, attempt).instrument(span).await;
}

async fn process(context: Arc<JobContext>, delivery: Delivery, attempt: u32) {
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
        Err(error) => {
            reject_unparseable(&context, &delivery, &ids, &reply, attempt, error).await;
            return;
        }
    };
    Span::current().record("job_id", job.job_id.as_str());
    tracing::info!(input = %crate::transfer::redact(&job.input_file_url), explain = job.explain, "job received");

    let mut stages = Stages::default();
    let outcome = run_job(&context, &job, &mut stages).await;

    let started = Instant::now();
    let (envelope, failure) = match outcome {
        Ok(scores) => (
            StatusEnvelope::ok(job.job_id.clone(), attempt, stages, context.bundle.clone(), scores),
            None,
        ),
        Err(error) => {
            let kind = error.kind();
            if disposition(kind, delivery.redelivered) == Disposition::Requeue {
                tracing::warn!(error = %error, kind = kind.as_str(), "job failed; requeueing for another attempt");
                settle(&delivery, Settlement::Requeue).await;
                return;
            }
            let envelope_error = EnvelopeError {
                kind: kind.as_str(),
                message: error.to_string(),
            };
            (
                StatusEnvelope::error(
                    job.job_id.clone(),
                    attempt,
                    stages,
                    context.bundle.clone(),
                    envelope_error,
                ),
                Some(error),
            )
        }
    };

    Span::current().record("stage", "publish");
    let published = publish(&context, &envelope, &reply).await;
    let publish_seconds = started.elapsed().as_secs_f64();

    match (published, failure) {
        (Ok(()), None) => {
            tracing::info!(seconds = publish_seconds, stages = ?envelope.stages, "job succeeded");
            settle(&delivery, Settlement::Ack).await;
        }
        (Ok(()), Some(error)) => {
            tracing::error!(error = %error, kind = error.kind().as_str(), "job failed; rejected to the dead-letter queue");
            settle(&delivery, Settlement::Reject).await;
        }
        (Err(error), _) => {
            // Without a confirmed envelope the job's outcome is unknown to the platform, so the
            // job goes back to the queue and runs again.
            tracing::error!(error = %error, "status envelope not confirmed; requeueing the job");
            settle(&delivery, Settlement::Requeue).await;
        }
    }
}

/// Runs download, decode, segment, encode and upload; returns the scores when explain is on.
async fn run_job(context: &JobContext, job: &JobRequest, stages: &mut Stages) -> Result<Option<Scores>, JobError> {
    let span = Span::current();

    span.record("stage", "download");
    let started = Instant::now();
    let bytes = context.transfers.download(&job.input_file_url).await?;
    stages.download = Some(started.elapsed().as_secs_f64());

    span.record("stage", "segment");
    let started = Instant::now();
    let segmenter = Arc::clone(&context.segmenter);
    let limits = context.limits;
    let explain = job.explain;
    let compute_span = span.clone();
    let (decode_seconds, segmentation, encoded) = tokio::task::spawn_blocking(move || {
        let _entered = compute_span.enter();
        let volume = read_npz(&bytes, limits)?;
        drop(bytes);
        let decode_seconds = started.elapsed().as_secs_f64();

        let segmentation = {
            let mut segmenter = segmenter
                .lock()
                .map_err(|_| JobError::Internal("model lock poisoned".into()))?;
            segmenter.segment(&volume, explain)?
        };

        let encode_started = Instant::now();
        let encoded = encode_masks(&segmentation.archive()).map_err(|e| JobError::Encode(e.to_string()))?;
        Ok::<_, JobError>((
            decode_seconds,
            segmentation,
            (encoded, encode_started.elapsed().as_secs_f64()),
        ))
    })
    .await
    .map_err(|e| JobError::Internal(e.to_string()))??;

    stages.decode = Some(decode_seconds);
    stages.record_compute(&segmentation.timings);
    let (encoded, encode_seconds) = encoded;
    stages.encode = Some(encode_seconds);

    span.record("stage", "upload");
    let started = Instant::now();
    context.transfers.upload(&job.output_file_url, encoded).await?;
    stages.upload = Some(started.elapsed().as_secs_f64());

    Ok(segmentation.explain.map(|explain| explain.scores))
}

/// Dead-letters a body that is not a job; publishes an ERROR envelope when an id is known.
async fn reject_unparseable(
    context: &JobContext,
    delivery: &Delivery,
    ids: &TransportIds,
    reply: &ReplyTarget,
    attempt: u32,
    error: crate::job::RequestError,
) {
    let job_id = serde_json::from_slice::<serde_json::Value>(&delivery.data)
        .ok()
        .and_then(|body| body.get("job_id").and_then(|id| id.as_str().map(str::to_owned)))
        .or_else(|| ids.message_id.clone())
        .or_else(|| ids.correlation_id.clone());

    if let Some(job_id) = job_id {
        Span::current().record("job_id", job_id.as_str());
        let envelope = StatusEnvelope::error(
            job_id,
            attempt,
            Stages::default(),
            context.bundle.clone(),
            EnvelopeError {
                kind: crate::error::ErrorKind::BadInput.as_str(),
                message: error.to_string(),
            },
        );
        if let Err(publish_error) = publish(context, &envelope, reply).await {
            tracing::error!(error = %publish_error, "status envelope for an invalid job not confirmed; requeueing");
            settle(delivery, Settlement::Requeue).await;
            return;
        }
    }

    // The body is never logged: it may hold pre-signed URLs.
    tracing::error!(error = %error, body_bytes = delivery.data.len(), "message is not a valid job; rejected to the dead-letter queue");
    settle(delivery, Settlement::Reject).await;
}

async fn publish(context: &JobContext, envelope: &StatusEnvelope, reply: &ReplyTarget) -> Result<(), JobError> {
    let routing_key = match envelope.status {
        Status::Ok => "ok",
        Status::Error => "error",
    };
    context
        .publisher
        .publish_envelope(envelope.to_json().as_bytes(), routing_key, &envelope.job_id, reply)
        .await?;
    Ok(())
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
        // The broker redelivers an unsettled message once the channel closes, so nothing is lost.
        tracing::warn!(error = %error, ?settlement, "could not settle the delivery; the broker will redeliver it");
    }
}

/// Returns the delivery attempt, counting from 1. Quorum queues count earlier deliveries in
/// the `x-delivery-count` header.
fn attempt_number(delivery: &Delivery) -> u32 {
    let previous = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-delivery-count").cloned())
        .and_then(|value| match value {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            _ => None,
        });
    match previous {
        Some(count) => count + 1,
        None if delivery.redelivered => 2,
        None => 1,
    }
}
