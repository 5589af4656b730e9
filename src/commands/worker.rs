//! `thrombseg worker`: consumes jobs until SIGTERM or Ctrl-C, reconnecting when the broker
//! goes away.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Connection, Consumer};
use ndarray::Array3;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::RetryPolicy;
use crate::health::{self, Readiness};
use crate::job::BundleInfo;
use crate::metrics::Metrics;
use crate::queue::{self, Publisher, QueueError};
use crate::segmentation::{self, Segmenter};
use crate::settings::{BrokerArgs, ModelArgs, TransferArgs};
use crate::transfer::Transfers;
use crate::volume::CtVolume;
use crate::worker::{JobContext, handle_delivery};

/// Maximum wait between two attempts to reach the broker.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

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

    /// Seconds to let jobs in flight finish after SIGTERM before they go back to the queue;
    /// keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "THROMBSEG_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,

    /// Attempts a job gets in all when it fails with a transient error.
    #[arg(long, env = "THROMBSEG_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Milliseconds before the second attempt; each later attempt waits twice as long, up to
    /// the maximum. Each distinct delay gets a delay queue of its own.
    #[arg(long, env = "THROMBSEG_RETRY_BASE_DELAY_MS", default_value_t = 5_000)]
    pub retry_base_delay_ms: u64,

    /// Maximum wait between two attempts, in milliseconds.
    #[arg(long, env = "THROMBSEG_RETRY_MAX_DELAY_MS", default_value_t = 300_000)]
    pub retry_max_delay_ms: u64,

    /// Seconds a job may take from download to upload before it fails as transient. Keep it
    /// below RabbitMQ's consumer_timeout (30 minutes by default).
    #[arg(long, env = "THROMBSEG_JOB_DEADLINE_SECONDS", default_value_t = 1200)]
    pub job_deadline_seconds: u64,

    /// Address of the HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "THROMBSEG_METRICS_ADDRESS", default_value = "127.0.0.1:9090")]
    pub metrics_address: SocketAddr,
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
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let bound = health::bind(args.metrics_address).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot listen on {} for metrics: {error}; set THROMBSEG_METRICS_ADDRESS to a free address",
            args.metrics_address
        )
    })?;
    let served = health::serve(bound, Arc::clone(&metrics), Arc::clone(&readiness));
    let listener = tokio::spawn(async move {
        if let Err(error) = served.await {
            tracing::error!(error = %error, "metrics listener failed");
        }
    });

    let context = Arc::new(load_context(&args, &metrics).await?);
    let provider = context.execution_provider.as_str();
    readiness.set_model_ready(provider);
    metrics.set_execution_provider(provider);

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut jobs = JoinSet::new();
    let slots = Arc::new(Semaphore::new(usize::from(args.jobs_in_flight)));
    let mut reconnect_delay = Duration::from_secs(1);
    let mut connected_before = false;

    loop {
        if listener.is_finished() {
            anyhow::bail!(
                "the metrics listener on {} stopped; see the error above",
                args.metrics_address
            );
        }

        let session = tokio::select! {
            session = Session::open(&args) => session,
            () = &mut shutdown => break,
        };
        let mut session = match session {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    broker = %args.broker.amqp_url.redacted(),
                    retry_in_seconds = reconnect_delay.as_secs(),
                    "broker unavailable"
                );
                tokio::select! {
                    () = tokio::time::sleep(reconnect_delay) => {}
                    () = &mut shutdown => break,
                }
                reconnect_delay = (reconnect_delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };

        if connected_before {
            metrics.record_reconnect();
            tracing::info!("reconnected to the broker");
        }
        connected_before = true;
        reconnect_delay = Duration::from_secs(1);
        readiness.set_consuming(true);
        metrics.set_broker_connected(true);
        tracing::info!(
            broker = %args.broker.amqp_url.redacted(),
            queue = %args.broker.topology.job_queue,
            jobs_in_flight = args.jobs_in_flight,
            "consuming jobs"
        );

        let end = session.consume(&context, &slots, &mut jobs, &mut shutdown).await;
        readiness.set_consuming(false);
        metrics.set_broker_connected(false);

        match end {
            SessionEnd::Shutdown => {
                tracing::info!(jobs_in_flight = jobs.len(), "stopping: no new jobs will be taken");
                session.cancel().await;
                drain(&mut jobs, Duration::from_secs(args.shutdown_grace_seconds)).await;
                session.close().await;
                tracing::info!("worker stopped");
                return Ok(());
            }
            SessionEnd::Lost(reason) => {
                tracing::warn!(
                    reason,
                    "lost the broker; jobs in flight finish, and the broker redelivers their messages"
                );
            }
        }
    }

    // Shutdown while disconnected: jobs of the lost connection can no longer be settled.
    drain(&mut jobs, Duration::from_secs(args.shutdown_grace_seconds)).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Loads the bundle, runs a test inference, and builds what every job shares.
async fn load_context(args: &WorkerArgs, metrics: &Arc<Metrics>) -> anyhow::Result<JobContext> {
    let bundle_dir = segmentation::locate_bundle(args.model.bundle.as_deref())?;
    let options = args.model.session_options()?;
    let segmenter = tokio::task::spawn_blocking(move || -> anyhow::Result<Segmenter> {
        let mut segmenter = Segmenter::load(&bundle_dir, &options)?;
        warm_up(&mut segmenter)?;
        Ok(segmenter)
    })
    .await??;

    let bundle = BundleInfo {
        name: segmenter.manifest().name.clone(),
        version: segmenter.manifest().version.clone(),
    };
    let execution_provider = segmenter.provider();
    metrics.set_bundle(&bundle.name, &bundle.version);
    tracing::info!(
        bundle = %bundle.name,
        version = %bundle.version,
        execution_provider = execution_provider.as_str(),
        "model bundle loaded and tested"
    );

    let window_sigmas = segmenter.manifest().window_sigmas;
    Ok(JobContext {
        transfers: Transfers::new(args.transfer.settings())?,
        window_sigmas,
        segmenter: Arc::new(Mutex::new(segmenter)),
        limits: args.model.read_limits(),
        bundle,
        execution_provider,
        metrics: Arc::clone(metrics),
        retry: retry_policy(args),
        job_deadline: Duration::from_secs(args.job_deadline_seconds),
        retry_queue_prefix: args.broker.topology.retry_queue.clone(),
    })
}

fn retry_policy(args: &WorkerArgs) -> RetryPolicy {
    RetryPolicy {
        max_attempts: args.max_attempts,
        base_delay: Duration::from_millis(args.retry_base_delay_ms),
        max_delay: Duration::from_millis(args.retry_max_delay_ms),
    }
}

/// Segments a small synthetic volume, so that a worker reports ready only once both networks
/// have run.
fn warm_up(segmenter: &mut Segmenter) -> anyhow::Result<()> {
    let volume = CtVolume {
        voxels: Array3::from_shape_fn((16, 16, 8), |(h, w, d)| ((h * 7 + w * 3 + d) % 40) as f32 * 10.0),
        non_mdc_mean: 200.0,
        non_mdc_var: 900.0,
    };
    let segmentation = segmenter.segment(&volume, false)?;
    anyhow::ensure!(
        segmentation.pred_3d.dim() == (16, 16, 8),
        "test inference returned the wrong shape"
    );
    Ok(())
}

/// One connection to the broker with its consuming and publishing channels.
struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    consumer_tag: String,
    publisher: Publisher,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Session {
    async fn open(args: &WorkerArgs) -> Result<Self, QueueError> {
        let topology = &args.broker.topology;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("thrombseg-worker-{}-{}", std::process::id(), &id[..12]);
        let connection = queue::connect(&args.broker.connection_url(), &name).await?;
        let channel = connection.create_channel().await.map_err(|cause| QueueError::Broker {
            operation: "open a channel",
            cause,
        })?;
        queue::declare(&channel, topology).await?;
        queue::declare_retry_queues(&channel, topology, &retry_policy(args).delays()).await?;

        let publishing = connection.create_channel().await.map_err(|cause| QueueError::Broker {
            operation: "open a channel",
            cause,
        })?;
        let publisher = Publisher::new(publishing, &topology.status_exchange).await?;

        let consumer_tag = format!("thrombseg-{id}");
        let consumer = queue::consume(&channel, &topology.job_queue, args.jobs_in_flight, &consumer_tag).await?;
        Ok(Self {
            connection,
            channel,
            consumer,
            consumer_tag,
            publisher,
        })
    }

    /// Takes deliveries until shutdown or until the connection is lost.
    async fn consume(
        &mut self,
        context: &Arc<JobContext>,
        slots: &Arc<Semaphore>,
        jobs: &mut JoinSet<()>,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> SessionEnd {
        loop {
            tokio::select! {
                () = shutdown.as_mut() => return SessionEnd::Shutdown,
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let slot = Arc::clone(slots).acquire_owned().await.expect("the semaphore is never closed");
                        let context = Arc::clone(context);
                        let publisher = self.publisher.clone();
                        jobs.spawn(async move {
                            handle_delivery(context, publisher, delivery).await;
                            drop(slot);
                        });
                    }
                    Some(Err(error)) => return SessionEnd::Lost(error.to_string()),
                    None => return SessionEnd::Lost("the consumer was cancelled or its channel closed".into()),
                },
            }
        }
    }

    async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    async fn close(self) {
        let _ = self.channel.close(200, "worker stopping".into()).await;
        let _ = self.connection.close(200, "worker stopping".into()).await;
    }
}

/// Waits for jobs in flight up to `grace`. Jobs still running then are dropped unsettled, and
/// the broker requeues their messages when the channel closes.
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
