//! `thrombseg worker`: consumes jobs until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::job::BundleInfo;
use crate::queue::{self, Publisher};
use crate::segmentation::{self, Segmenter};
use crate::settings::{BrokerArgs, ModelArgs, TransferArgs};
use crate::transfer::Transfers;
use crate::worker::{JobContext, handle_delivery};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub transfer: TransferArgs,

    /// Jobs processed at once; also the broker prefetch count. Inference itself runs one job at
    /// a time, so a second job overlaps its download and upload with the first's inference.
    #[arg(long, env = "THROMBSEG_JOBS_IN_FLIGHT", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs_in_flight: u16,

    /// Seconds to let jobs in flight finish after SIGTERM before they are requeued.
    #[arg(long, env = "THROMBSEG_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
}

pub fn run(args: WorkerArgs) -> ExitCode {
    match super::tokio_runtime().block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "worker stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: WorkerArgs) -> anyhow::Result<()> {
    let bundle_dir = segmentation::locate_bundle(args.model.bundle.as_deref())?;
    let options = args.model.session_options()?;
    let segmenter = tokio::task::spawn_blocking(move || Segmenter::load(&bundle_dir, &options)).await??;
    let bundle = BundleInfo {
        name: segmenter.manifest().name.clone(),
        version: segmenter.manifest().version.clone(),
    };
    tracing::info!(bundle = %bundle.name, version = %bundle.version, "model bundle loaded");

    let connection = queue::connect(&args.broker.amqp_url.0).await?;
    let topology = &args.broker.topology;
    let consume_channel = connection.create_channel().await?;
    queue::declare(&consume_channel, topology).await?;
    let publisher = Publisher::new(connection.create_channel().await?, &topology.status_exchange).await?;

    let context = Arc::new(JobContext {
        transfers: Transfers::new(args.transfer.settings())?,
        segmenter: Arc::new(Mutex::new(segmenter)),
        publisher,
        limits: args.model.read_limits(),
        bundle,
    });

    let consumer_tag = format!("thrombseg-{}", uuid::Uuid::new_v4());
    let mut consumer = queue::consume(
        &consume_channel,
        &topology.job_queue,
        args.jobs_in_flight,
        &consumer_tag,
    )
    .await?;
    tracing::info!(
        broker = %args.broker.amqp_url.redacted(),
        queue = %topology.job_queue,
        jobs_in_flight = args.jobs_in_flight,
        "consuming jobs"
    );

    let slots = Arc::new(Semaphore::new(usize::from(args.jobs_in_flight)));
    let mut jobs = JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let stream_error = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                    let context = Arc::clone(&context);
                    jobs.spawn(async move {
                        handle_delivery(context, delivery).await;
                        drop(slot);
                    });
                }
                Some(Err(error)) => break Some(error),
                None => break None,
            },
        }
    };

    tracing::info!(jobs_in_flight = jobs.len(), "stopping: no new jobs will be taken");
    let _ = consume_channel
        .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
        .await;
    drain(&mut jobs, Duration::from_secs(args.shutdown_grace_seconds)).await;

    let _ = consume_channel.close(200, "worker stopping".into()).await;
    let _ = connection.close(200, "worker stopping".into()).await;

    match stream_error {
        Some(error) => Err(anyhow::Error::new(error).context("job consumer failed")),
        None => {
            tracing::info!("worker stopped");
            Ok(())
        }
    }
}

/// Waits for jobs in flight up to `grace`; jobs still running then are dropped, and the broker
/// requeues their unacknowledged deliveries when the channel closes.
async fn drain(jobs: &mut JoinSet<()>, grace: Duration) {
    let finished = tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            unfinished = jobs.len(),
            "shutdown grace period over; unfinished jobs return to the queue"
        );
        jobs.abort_all();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C"),
        _ = terminate.recv() => tracing::info!("received SIGTERM"),
    }
}
