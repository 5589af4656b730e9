//! Delivery guarantees under faults: storage errors, expired URLs, killed workers, a lost
//! broker, SIGTERM, and a load run of many jobs through several workers.

use std::collections::HashMap;
use std::time::Duration;

use lapin::BasicProperties;
use ndarray::Array3;
use serde_json::Value;

use crate::support::archives::{npy_bytes, read_member, valid_npz, zip_of};
use crate::support::broker::{self, TestTopology, WorkerProcess, job_body};
use crate::support::proxy::{FaultProxy, FaultRule};
use crate::support::seaweedfs::{self, BUCKET, stage_job};
use crate::support::{fixture, tiny_bundle, unique_name};

/// Builds a small volume that the tiny bundle segments in milliseconds.
fn small_volume_npz(seed: usize) -> Vec<u8> {
    let volume = Array3::from_shape_fn((24, 24, 12), |(h, w, d)| {
        ((h * 13 + w * 7 + d * 3 + seed) % 60) as i16 * 5 - 20
    });
    valid_npz(&volume, 40.0, 400.0)
}

/// Uploads `bytes` under `key` and returns pre-signed URLs to read it and to write `KEY.out`.
async fn stage(s3: &aws_sdk_s3::Client, key: &str, bytes: Vec<u8>, expiry: Duration) -> (String, String) {
    stage_job(s3, key, bytes, &format!("{key}.out"), expiry).await
}

/// Stages `bytes` under `key` with URLs valid for an hour and publishes a job for it.
async fn enqueue(
    s3: &aws_sdk_s3::Client,
    channel: &lapin::Channel,
    topology: &TestTopology,
    key: &str,
    bytes: Vec<u8>,
    job_id: &str,
) {
    let (input, output) = stage(s3, key, bytes, Duration::from_secs(3600)).await;
    broker::publish_job(
        channel,
        topology,
        &job_body(job_id, &input, &output),
        BasicProperties::default(),
    )
    .await;
}

/// Stages the example volume, starts a job for it and returns the broker connection and the
/// key, once `worker` has received the job.
async fn start_example_job(
    s3: &aws_sdk_s3::Client,
    topology: &TestTopology,
    worker: &WorkerProcess,
    job_id: &str,
) -> (lapin::Connection, String) {
    let key = format!("{}/example.npz", unique_name(job_id));
    let example = std::fs::read(fixture("input_file_example.npz")).unwrap();
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    enqueue(s3, &channel, topology, &key, example, job_id).await;
    worker.wait_for_log("job received", Duration::from_secs(60));
    (connection, key)
}

/// Builds one of several kinds of input that can never be segmented.
fn bad_input(index: usize) -> Vec<u8> {
    match index % 5 {
        0 => valid_npz(&Array3::<i16>::zeros((4, 4, 4)), 40.0, -1.0),
        1 => b"not a zip archive".to_vec(),
        2 => {
            let flat = ndarray::Array2::<i16>::zeros((8, 8));
            zip_of(&[
                ("volume.npy", npy_bytes(&flat)),
                ("non_mdc_mean.npy", npy_bytes(&ndarray::arr0(40.0))),
                ("non_mdc_var.npy", npy_bytes(&ndarray::arr0(400.0))),
            ])
        }
        3 => zip_of(&[("volume.npy", npy_bytes(&Array3::<i16>::zeros((4, 4, 4))))]),
        _ => valid_npz(&Array3::from_elem((4, 4, 4), f32::NAN), 40.0, 400.0),
    }
}

async fn envelopes(
    connection: &lapin::Connection,
    topology: &TestTopology,
    count: usize,
    timeout: Duration,
) -> Vec<Value> {
    broker::collect_messages(connection, &topology.status_queue, count, timeout)
        .await
        .iter()
        .map(|message| serde_json::from_slice(&message.data).unwrap())
        .collect()
}

fn find<'a>(envelopes: &'a [Value], job_id: &str) -> &'a Value {
    envelopes
        .iter()
        .find(|envelope| envelope["job_id"] == job_id)
        .unwrap_or_else(|| panic!("no envelope for {job_id}: {envelopes:?}"))
}

/// Reads one sample of a metric from Prometheus text, such as `thrombseg_retries_total`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn tiny_worker_env(bundle: &tempfile::TempDir, max_attempts: u32) -> Vec<(&'static str, String)> {
    vec![
        ("THROMBSEG_BUNDLE", bundle.path().display().to_string()),
        ("THROMBSEG_MAX_ATTEMPTS", max_attempts.to_string()),
        ("THROMBSEG_RETRY_BASE_DELAY_MS", "200".to_owned()),
        ("THROMBSEG_RETRY_MAX_DELAY_MS", "1000".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_faults_are_retried_or_settled() {
    let storage = seaweedfs::shared();
    let proxy = FaultProxy::start(storage.port).await;
    let s3 = storage.client_via(&proxy.endpoint);
    let topology = TestTopology::unique();
    let bundle = tiny_bundle();
    let worker = WorkerProcess::start(&topology, &tiny_worker_env(&bundle, 3));
    let prefix = unique_name("faults");
    let hour = Duration::from_secs(3600);

    let (flaky_get, flaky_put) = stage(&s3, &format!("{prefix}/flaky.npz"), small_volume_npz(1), hour).await;
    let (down_get, down_put) = stage(&s3, &format!("{prefix}/down.npz"), small_volume_npz(2), hour).await;
    let (expired_get, expired_put) = stage(
        &s3,
        &format!("{prefix}/expired.npz"),
        small_volume_npz(3),
        Duration::from_secs(1),
    )
    .await;
    proxy.add_rule(FaultRule {
        method: "GET",
        path_contains: format!("{prefix}/flaky.npz"),
        failures: 2,
    });
    proxy.add_rule(FaultRule {
        method: "GET",
        path_contains: format!("{prefix}/down.npz"),
        failures: usize::MAX,
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    for (job_id, input, output) in [
        ("flaky", &flaky_get, &flaky_put),
        ("down", &down_get, &down_put),
        ("expired", &expired_get, &expired_put),
    ] {
        broker::publish_job(
            &channel,
            &topology,
            &job_body(job_id, input, output),
            BasicProperties::default(),
        )
        .await;
    }

    let received = envelopes(&connection, &topology, 3, Duration::from_secs(120)).await;
    assert_eq!(received.len(), 3, "{received:?}\nworker:\n{}", worker.logs());

    let flaky = find(&received, "flaky");
    assert_eq!(flaky["status"], "OK", "{flaky}");
    assert_eq!(flaky["attempt"], 3, "two 503s, then success: {flaky}");

    let down = find(&received, "down");
    assert_eq!(down["status"], "ERROR");
    assert_eq!(down["error"]["kind"], "transient");
    assert_eq!(down["attempt"], 3, "the configured attempts: {down}");
    let message = down["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 503") && message.contains("SlowDown"),
        "{message}"
    );

    let expired = find(&received, "expired");
    assert_eq!(expired["status"], "ERROR");
    assert_eq!(expired["error"]["kind"], "bad_input");
    assert_eq!(expired["attempt"], 1, "an expired URL is not retried: {expired}");
    assert!(
        expired["error"]["message"].as_str().unwrap().contains("HTTP 403"),
        "{expired}"
    );

    assert_eq!(proxy.injected(), 5, "two 503s for flaky, three for down");
    let dead = broker::collect_messages(&connection, &topology.dead_letter_queue, 2, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 2, "down and expired are dead-lettered");

    let (status, text) = worker.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "thrombseg_retries_total"), 4.0);
    assert_eq!(metric(&text, r#"thrombseg_jobs_total{kind="none",outcome="ok"}"#), 1.0);
    assert_eq!(
        metric(&text, r#"thrombseg_jobs_total{kind="transient",outcome="error"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"thrombseg_jobs_total{kind="bad_input",outcome="error"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"thrombseg_dead_letters_total{reason="transient"}"#),
        1.0
    );
    assert_eq!(metric(&text, "thrombseg_jobs_in_flight"), 0.0);
    assert_eq!(
        metric(&text, r#"thrombseg_execution_provider_info{provider="cpu"}"#),
        1.0
    );
    let (ready, body) = worker.http_get("/readyz").await;
    assert_eq!(ready, 200, "{body}");
    assert!(body.contains(r#""execution_provider":"cpu""#), "{body}");

    assert!(worker.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_job_completes_elsewhere() {
    let storage = seaweedfs::shared();
    let s3 = storage.client();
    let topology = TestTopology::unique();
    let first = WorkerProcess::start(&topology, &[]);
    let (connection, key) = start_example_job(&s3, &topology, &first, "survivor").await;
    let channel = connection.create_channel().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill_hard();

    let second = WorkerProcess::start(&topology, &[]);
    let received = envelopes(&connection, &topology, 2, Duration::from_secs(120)).await;
    assert_eq!(
        received.len(),
        1,
        "one envelope, from the second worker: {received:?}\n{}",
        second.logs()
    );
    assert_eq!(received[0]["status"], "OK");
    assert_eq!(received[0]["attempt"], 2, "the redelivery counts as the second attempt");

    let result = s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("{key}.out"))
        .send()
        .await
        .unwrap();
    let bytes = result.body.collect().await.unwrap().into_bytes();
    assert_eq!(read_member::<u8>(&bytes, "pred_3d").shape(), &[60, 60, 61]);
    assert_eq!(broker::ready_count(&channel, &topology.job_queue).await, 0);

    assert!(second.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_resumes_after_broker_loss() {
    let storage = seaweedfs::shared();
    let s3 = storage.client();
    let topology = TestTopology::unique();
    let bundle = tiny_bundle();
    let worker = WorkerProcess::start(&topology, &tiny_worker_env(&bundle, 3));
    let prefix = unique_name("reconnect");
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();

    enqueue(
        &s3,
        &channel,
        &topology,
        &format!("{prefix}/before.npz"),
        small_volume_npz(4),
        "before",
    )
    .await;
    let before = envelopes(&connection, &topology, 1, Duration::from_secs(60)).await;
    assert_eq!(before.len(), 1, "{}", worker.logs());

    assert!(
        worker.close_broker_connections() >= 1,
        "the worker's connections are listed"
    );
    worker.wait_for_log("reconnected to the broker", Duration::from_secs(60));

    enqueue(
        &s3,
        &channel,
        &topology,
        &format!("{prefix}/after.npz"),
        small_volume_npz(5),
        "after",
    )
    .await;
    let after = envelopes(&connection, &topology, 1, Duration::from_secs(60)).await;
    assert_eq!(after.len(), 1, "{}", worker.logs());
    assert_eq!(after[0]["job_id"], "after");
    assert_eq!(after[0]["status"], "OK");

    let (_, text) = worker.http_get("/metrics").await;
    assert_eq!(metric(&text, "thrombseg_broker_reconnects_total"), 1.0);
    assert_eq!(metric(&text, "thrombseg_broker_connected"), 1.0);
    let (ready, body) = worker.http_get("/readyz").await;
    assert_eq!(ready, 200, "{body}");

    assert!(worker.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_job_in_flight_finish() {
    let storage = seaweedfs::shared();
    let s3 = storage.client();
    let topology = TestTopology::unique();
    let worker = WorkerProcess::start(&topology, &[]);
    let (connection, _) = start_example_job(&s3, &topology, &worker, "graceful").await;
    let channel = connection.create_channel().await.unwrap();

    let status = worker.terminate();

    assert!(status.success(), "exit status {status:?}");
    let received = envelopes(&connection, &topology, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["status"], "OK");
    assert_eq!(
        broker::ready_count(&channel, &topology.job_queue).await,
        0,
        "the job was acked before exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn load_run_with_faults_loses_nothing() {
    const GOOD_JOBS: usize = 200;
    const BAD_JOBS: usize = 10;
    let storage = seaweedfs::shared();
    let proxy = FaultProxy::start(storage.port).await;
    let s3 = storage.client_via(&proxy.endpoint);
    // Outputs are checked past the proxy, whose random faults are meant for the workers only.
    let direct = storage.client();
    let topology = TestTopology::unique();
    let bundle = tiny_bundle();
    let environment = tiny_worker_env(&bundle, 6);
    let mut workers: Vec<WorkerProcess> = (0..3).map(|_| WorkerProcess::start(&topology, &environment)).collect();
    let prefix = unique_name("load");

    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut expected_status = HashMap::new();
    for index in 0..GOOD_JOBS + BAD_JOBS {
        let job_id = format!("load-{index:03}");
        let bytes = if index < GOOD_JOBS {
            small_volume_npz(index)
        } else {
            bad_input(index)
        };
        enqueue(
            &s3,
            &channel,
            &topology,
            &format!("{prefix}/{job_id}.npz"),
            bytes,
            &job_id,
        )
        .await;
        expected_status.insert(job_id, if index < GOOD_JOBS { "OK" } else { "ERROR" });
    }
    broker::publish_job(&channel, &topology, b"not a job", BasicProperties::default()).await;
    proxy.set_random_get_failure(0.1);

    // Kill one worker part-way and start a replacement, as a rescheduled pod would.
    let mut received = envelopes(&connection, &topology, 40, Duration::from_secs(300)).await;
    workers.remove(0).kill_hard();
    workers.push(WorkerProcess::start(&topology, &environment));
    let remaining = GOOD_JOBS + BAD_JOBS - received.len();
    received.extend(envelopes(&connection, &topology, remaining, Duration::from_secs(600)).await);
    // Envelopes of attempts cut short by the kill may still arrive.
    received.extend(envelopes(&connection, &topology, usize::MAX, Duration::from_secs(3)).await);

    let mut by_job: HashMap<String, Vec<&Value>> = HashMap::new();
    for envelope in &received {
        by_job
            .entry(envelope["job_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(envelope);
    }
    assert_eq!(by_job.len(), GOOD_JOBS + BAD_JOBS, "every job has an envelope");

    let mut duplicates = 0;
    let mut ok = 0;
    for (job_id, list) in &by_job {
        let last = list.iter().max_by_key(|e| e["attempt"].as_u64().unwrap()).unwrap();
        assert_eq!(last["status"], expected_status[job_id], "{job_id}: {list:?}");
        let final_attempt = last["attempt"].as_u64().unwrap();
        let earlier = list
            .iter()
            .filter(|e| e["attempt"].as_u64().unwrap() < final_attempt)
            .count();
        assert_eq!(
            earlier + 1,
            list.len(),
            "{job_id}: at most one envelope per attempt: {list:?}"
        );
        duplicates += earlier;
        if last["status"] == "OK" {
            ok += 1;
            let output = direct
                .get_object()
                .bucket(BUCKET)
                .key(format!("{prefix}/{job_id}.npz.out"))
                .send()
                .await;
            assert!(output.is_ok(), "{job_id}: OK without a downloadable output");
        }
    }
    assert_eq!(broker::ready_count(&channel, &topology.job_queue).await, 0);
    let dead = broker::collect_messages(
        &connection,
        &topology.dead_letter_queue,
        BAD_JOBS + 1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        dead.len(),
        BAD_JOBS + 1,
        "bad jobs and the non-job body are dead-lettered"
    );

    println!(
        "load run: jobs {}, ok {ok}, error {}, envelopes {}, duplicates from the killed worker {duplicates}, storage faults injected {}, dead letters {}",
        by_job.len(),
        by_job.len() - ok,
        received.len(),
        proxy.injected(),
        dead.len()
    );

    for worker in workers {
        assert!(worker.terminate().success());
    }
}
