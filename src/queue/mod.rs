//! RabbitMQ: the topology the worker declares, the job consumer and the confirmed publisher.
//!
//! Nothing here depends on models or URLs: jobs arrive as bytes and envelopes leave as bytes.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

/// AMQP delivery mode that makes the broker write a message to disk.
const PERSISTENT: u8 = 2;

/// Names of the queues and exchanges the worker uses.
#[derive(Clone, Debug, clap::Args)]
pub struct Topology {
    /// Queue the worker consumes jobs from (a durable quorum queue).
    #[arg(long, env = "THROMBSEG_JOB_QUEUE", default_value = "thrombseg.jobs")]
    pub job_queue: String,

    /// Topic exchange that receives every status envelope, routed by `ok` or `error`.
    #[arg(long, env = "THROMBSEG_STATUS_EXCHANGE", default_value = "thrombseg.status")]
    pub status_exchange: String,

    /// Durable quorum queue bound to the status exchange, so that no envelope is dropped for
    /// lack of a consumer.
    #[arg(long, env = "THROMBSEG_STATUS_QUEUE", default_value = "thrombseg.status")]
    pub status_queue: String,

    /// Exchange that receives rejected jobs.
    #[arg(long, env = "THROMBSEG_DEAD_LETTER_EXCHANGE", default_value = "thrombseg.dead")]
    pub dead_letter_exchange: String,

    /// Queue that keeps rejected jobs for inspection.
    #[arg(long, env = "THROMBSEG_DEAD_LETTER_QUEUE", default_value = "thrombseg.jobs.dead")]
    pub dead_letter_queue: String,

    /// Name prefix of the delay queues for jobs waiting to be retried: one queue per delay,
    /// named PREFIX.<milliseconds>ms, whose messages the broker moves back to the job queue
    /// when the queue's TTL expires.
    #[arg(long, env = "THROMBSEG_RETRY_QUEUE", default_value = "thrombseg.jobs.retry")]
    pub retry_queue: String,

    /// Deliveries of one job message after which the broker dead-letters it, even if no worker
    /// ever settled it (a job that crashes every worker that takes it).
    #[arg(long, env = "THROMBSEG_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
}

/// Broker operation failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    // The source is part of the message and not chained, so that a printed chain does not
    // repeat it.
    #[error("broker: {operation} failed: {cause}")]
    Broker {
        operation: &'static str,
        cause: lapin::Error,
    },
    #[error("broker: {target} returned the envelope as unroutable ({reply_text})")]
    Returned { target: String, reply_text: String },
    #[error("broker: {target} did not confirm the envelope (nack)")]
    Nacked { target: String },
}

fn broker(operation: &'static str) -> impl FnOnce(lapin::Error) -> QueueError {
    move |cause| QueueError::Broker { operation, cause }
}

/// Opens a connection named `name` (shown by `rabbitmqctl list_connections`). The URL may
/// carry credentials and is never logged.
pub async fn connect(amqp_url: &str, name: &str) -> Result<Connection, QueueError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(amqp_url, properties)
        .await
        .map_err(broker("connect"))
}

/// Declares every queue and exchange in `topology`; declaring what already exists with the same
/// arguments is a no-op, so every worker declares at start.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), QueueError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };

    channel
        .exchange_declare(
            topology.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await
        .map_err(broker("declare the dead-letter exchange"))?;
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            durable_queue,
            quorum_arguments(),
        )
        .await
        .map_err(broker("declare the dead-letter queue"))?;
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("bind the dead-letter queue"))?;

    let mut job_arguments = quorum_arguments();
    job_arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology.dead_letter_exchange.as_str().into()),
    );
    job_arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
    );
    channel
        .queue_declare(topology.job_queue.as_str().into(), durable_queue, job_arguments)
        .await
        .map_err(broker("declare the job queue"))?;

    channel
        .exchange_declare(
            topology.status_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await
        .map_err(broker("declare the status exchange"))?;
    channel
        .queue_declare(topology.status_queue.as_str().into(), durable_queue, quorum_arguments())
        .await
        .map_err(broker("declare the status queue"))?;
    channel
        .queue_bind(
            topology.status_queue.as_str().into(),
            topology.status_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("bind the status queue"))?;
    Ok(())
}

/// Returns the name of the delay queue for jobs that wait `delay`.
pub fn retry_queue_name(prefix: &str, delay: Duration) -> String {
    format!("{prefix}.{}ms", delay.as_millis())
}

/// Declares one delay queue per delay in `delays`.
///
/// Each queue has one TTL for all its messages, so messages leave in the order they came and
/// none waits behind a longer delay: with per-message TTLs, RabbitMQ expires a message only
/// once it reaches the head of the queue. The delay is part of the name, so changing the
/// backoff settings declares new queues instead of clashing with existing ones.
pub async fn declare_retry_queues(
    channel: &Channel,
    topology: &Topology,
    delays: &[Duration],
) -> Result<(), QueueError> {
    for delay in delays {
        let mut arguments = FieldTable::default();
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay.as_millis() as i64));
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(topology.job_queue.as_str().into()),
        );
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                retry_queue_name(&topology.retry_queue, *delay).as_str().into(),
                options,
                arguments,
            )
            .await
            .map_err(broker("declare a retry queue"))?;
    }
    Ok(())
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments
}

/// Starts consuming `queue` with at most `prefetch` unacknowledged deliveries.
pub async fn consume(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<Consumer, QueueError> {
    // QoS applies to consumers started after it, so it is set first.
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker("set prefetch"))?;
    channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("start consuming"))
}

/// Publishes envelopes on a channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    status_exchange: String,
}

/// Reply destination of an envelope, besides the status exchange.
#[derive(Clone, Debug, Default)]
pub struct ReplyTarget {
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

impl Publisher {
    /// Puts `channel` in confirm mode and publishes to `status_exchange`.
    pub async fn new(channel: Channel, status_exchange: &str) -> Result<Self, QueueError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enable publisher confirms"))?;
        Ok(Self {
            channel,
            status_exchange: status_exchange.to_owned(),
        })
    }

    /// Publishes `envelope` (JSON) to the status exchange with routing key `routing_key`, and to
    /// the reply queue when the job named one; returns once the broker confirmed both.
    ///
    /// The status exchange publish is mandatory: a return means no queue holds the envelope, so
    /// the job's last step failed. A return from the reply queue only means the requester has
    /// gone, which is logged and not a failure, since the status exchange kept the envelope.
    pub async fn publish_envelope(
        &self,
        envelope: &[u8],
        routing_key: &str,
        job_id: &str,
        reply: &ReplyTarget,
    ) -> Result<(), QueueError> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(job_id));
        if let Some(correlation_id) = &reply.correlation_id {
            properties = properties.with_correlation_id(correlation_id.as_str().into());
        }

        self.publish_confirmed(&self.status_exchange, routing_key, envelope, properties.clone())
            .await?;

        if let Some(reply_to) = reply.reply_to.as_deref().filter(|queue| !queue.is_empty()) {
            match self.publish_confirmed("", reply_to, envelope, properties).await {
                Err(QueueError::Returned { reply_text, .. }) => {
                    tracing::warn!(
                        reply_to,
                        reply_text,
                        "reply queue is gone; the envelope is on the status exchange"
                    );
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Publishes one mandatory message and waits for the broker's confirm; a return or a nack
    /// is an error.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let target = if exchange.is_empty() {
            format!("queue {routing_key}")
        } else {
            format!("exchange {exchange}")
        };
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(broker("publish"))?
            .await
            .map_err(broker("wait for the publisher confirm"))?;

        if !confirm.is_ack() {
            return Err(QueueError::Nacked { target });
        }
        if let Some(returned) = confirm.take_message() {
            return Err(QueueError::Returned {
                target,
                reply_text: returned.reply_text.to_string(),
            });
        }
        Ok(())
    }
}
