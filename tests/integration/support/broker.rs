//! The local RabbitMQ broker, per-test topologies and `thrombseg worker` processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Queue and exchange names used by one test only.
#[derive(Clone, Debug)]
pub struct TestTopology {
    pub job_queue: String,
    pub status_exchange: String,
    pub status_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub retry_queue: String,
}

impl TestTopology {
    pub fn unique() -> Self {
        let base = super::unique_name("thrombseg-test");
        Self {
            job_queue: format!("{base}.jobs"),
            status_exchange: format!("{base}.status"),
            status_queue: format!("{base}.status"),
            dead_letter_exchange: format!("{base}.dead"),
            dead_letter_queue: format!("{base}.jobs.dead"),
            retry_queue: format!("{base}.jobs.retry"),
        }
    }

    /// Returns the `THROMBSEG_*` variables that point a worker or `submit` at this topology.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("THROMBSEG_AMQP_URL", AMQP_URL.to_owned()),
            ("THROMBSEG_JOB_QUEUE", self.job_queue.clone()),
            ("THROMBSEG_STATUS_EXCHANGE", self.status_exchange.clone()),
            ("THROMBSEG_STATUS_QUEUE", self.status_queue.clone()),
            ("THROMBSEG_DEAD_LETTER_EXCHANGE", self.dead_letter_exchange.clone()),
            ("THROMBSEG_DEAD_LETTER_QUEUE", self.dead_letter_queue.clone()),
            ("THROMBSEG_RETRY_QUEUE", self.retry_queue.clone()),
        ]
    }
}

impl Drop for TestTopology {
    /// Deletes every queue and exchange of the topology, also when the test failed. It runs on
    /// a thread of its own because a test's async runtime may be shutting down.
    fn drop(&mut self) {
        let mut queues: Vec<String> = [&self.job_queue, &self.status_queue, &self.dead_letter_queue]
            .map(|q| q.clone())
            .to_vec();
        queues.extend(queues_with_prefix(&format!("{}.", self.retry_queue)));
        let exchanges = [&self.status_exchange, &self.dead_letter_exchange].map(|e| e.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                for queue in &queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in &exchanges {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "test topology deleted".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Lists the broker's queues whose names start with `prefix`, such as the delay queues of a
/// topology, one per retry delay.
fn queues_with_prefix(prefix: &str) -> Vec<String> {
    let listing = Command::new("rabbitmqctl")
        .args(["list_queues", "--no-table-headers", "--quiet", "name"])
        .output();
    let Ok(listing) = listing else {
        return Vec::new();
    };
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

pub async fn connect() -> Connection {
    Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ listens on 127.0.0.1:5672 (start it with `rabbitmq-server -detached`)")
}

/// Returns the JSON body of a plain job.
pub fn job_body(job_id: &str, input: &str, output: &str) -> Vec<u8> {
    serde_json::json!({"job_id": job_id, "input_file_url": input, "output_file_url": output})
        .to_string()
        .into_bytes()
}

/// Publishes a raw job body to the job queue through the default exchange.
pub async fn publish_job(channel: &Channel, topology: &TestTopology, body: &[u8], properties: BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            topology.job_queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Takes up to `count` messages from `queue` within `timeout`, acking each one taken. It reads
/// on a channel of its own with a small prefetch and closes it at the end, so that messages it
/// did not take go back to the queue for the next call.
pub async fn collect_messages(
    connection: &Connection,
    queue: &str,
    count: usize,
    timeout: Duration,
) -> Vec<lapin::message::Delivery> {
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + timeout;
    while messages.len() < count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                messages.push(delivery);
            }
            _ => break,
        }
    }
    let _ = channel.close(200, "collected".into()).await;
    messages
}

/// Messages ready in `queue`, read by a passive declare.
pub async fn ready_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// A `thrombseg worker` child process; killed when dropped.
pub struct WorkerProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// Address of its /metrics, /healthz and /readyz listener.
    pub metrics_address: String,
}

impl WorkerProcess {
    /// Starts a worker on `topology` and waits until it consumes.
    pub fn start(topology: &TestTopology, extra_env: &[(&str, String)]) -> Self {
        let mut command = Command::new(super::binary());
        command
            .arg("worker")
            .envs(topology.environment())
            .env("ORT_DYLIB_PATH", super::onnxruntime_library())
            .env("THROMBSEG_INTRA_THREADS", "2")
            .env("THROMBSEG_METRICS_ADDRESS", "127.0.0.1:0")
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the worker starts");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });

        let mut worker = Self {
            child,
            logs,
            metrics_address: String::new(),
        };
        worker.wait_for_log("consuming jobs", Duration::from_secs(120));
        worker.metrics_address = worker
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("serving /metrics"))
            .and_then(|line| line.split("address=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
            .expect("the worker logs its metrics address");
        worker
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a node failure would.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Fetches a path of the worker's HTTP listener; returns the status and the body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.metrics_address))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Closes this worker's broker connections from the broker's side.
    pub fn close_broker_connections(&self) -> usize {
        let listing = Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "--no-table-headers",
                "--quiet",
                "pid",
                "client_properties",
            ])
            .output()
            .expect("rabbitmqctl runs");
        let listing = String::from_utf8_lossy(&listing.stdout);
        let marker = format!("thrombseg-worker-{}-", self.pid());
        let mut closed = 0;
        for line in listing.lines().filter(|line| line.contains(&marker)) {
            let pid = line.split('\t').next().unwrap_or_default();
            let status = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by the broker-loss test"])
                .status()
                .unwrap();
            assert!(status.success(), "rabbitmqctl close_connection {pid}");
            closed += 1;
        }
        closed
    }

    /// Waits until a log line contains `needle`; panics with the logs after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs.lock().unwrap().iter().any(|line| line.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("worker never logged {needle:?}; logs:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not stop within 60 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
