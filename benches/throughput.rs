//! Jobs per minute of one worker with 1 and with 2 jobs in flight, against the local RabbitMQ
//! and a SeaweedFS server started on loopback.
//!
//! With 2 in flight, the next job's download, decode and preprocessing overlap the current
//! job's inference, and its upload the next inference. Each setting gets the same jobs: copies
//! of the example volume, and every fourth job the CT atlas, so that sizes mix. Transfers run
//! twice: straight to SeaweedFS, and through a loopback proxy that delays every request by
//! `THROMBSEG_BENCH_LATENCY_MS` (default 1000), as a store in another region would.
//! `THROMBSEG_BENCH_JOBS` sets the number of jobs per setting (default 8).
//!
//! Needs what the integration tests need (see `scripts/test`); run with
//! `cargo bench --bench throughput`.

#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use serde_json::Value;

use support::broker::{self, TestTopology, WorkerProcess, job_body};
use support::proxy::FaultProxy;
use support::seaweedfs::{self, stage_job};
use support::{fixture, unique_name};

fn main() {
    let jobs = setting("THROMBSEG_BENCH_JOBS", 8);
    let latency = Duration::from_millis(setting("THROMBSEG_BENCH_LATENCY_MS", 1000) as u64);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let storage = seaweedfs::shared();
    let proxy = runtime.block_on(FaultProxy::start(storage.port));
    proxy.set_latency(latency);

    for (transfers, endpoint) in [
        ("direct".to_owned(), storage.endpoint.clone()),
        (
            format!("{} ms per request", latency.as_millis()),
            proxy.endpoint.clone(),
        ),
    ] {
        for in_flight in [1u16, 2] {
            let (seconds, statuses) = runtime.block_on(run_setting(&endpoint, in_flight, jobs));
            let ok = statuses.iter().filter(|status| status.as_str() == "OK").count();
            println!(
                "transfers {transfers}, jobs in flight {in_flight}: {jobs} jobs in {seconds:.1} s, \
                 {:.2} jobs per minute ({ok} OK)",
                jobs as f64 * 60.0 / seconds
            );
            assert_eq!(ok, jobs, "every job should succeed: {statuses:?}");
        }
    }
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Starts a worker with `in_flight` jobs at once, enqueues `jobs` jobs whose URLs name
/// `endpoint` and waits for all their envelopes.
///
/// Returns the seconds from the first publish to the last envelope, and the statuses.
async fn run_setting(endpoint: &str, in_flight: u16, jobs: usize) -> (f64, Vec<String>) {
    let s3 = seaweedfs::shared().client_via(endpoint);
    let topology = TestTopology::unique();
    let worker = WorkerProcess::start(&topology, &[("THROMBSEG_JOBS_IN_FLIGHT", in_flight.to_string())]);

    let example = std::fs::read(fixture("input_file_example.npz")).expect("the example fixture");
    let atlas = std::fs::read(fixture("ct_brain_atlas_1mm.npz")).expect("the atlas fixture");
    let mut bodies = Vec::new();
    for index in 0..jobs {
        let key = format!("{}/input.npz", unique_name("throughput"));
        let bytes = if index % 4 == 3 { atlas.clone() } else { example.clone() };
        let (input, output) = stage_job(&s3, &key, bytes, &format!("{key}.out"), Duration::from_secs(3600)).await;
        bodies.push(job_body(&format!("job-{index}"), &input, &output));
    }

    let connection = broker::connect().await;
    let channel = connection.create_channel().await.expect("a channel");
    let started = Instant::now();
    for body in &bodies {
        broker::publish_job(&channel, &topology, body, BasicProperties::default()).await;
    }
    let envelopes =
        broker::collect_messages(&connection, &topology.status_queue, jobs, Duration::from_secs(1800)).await;
    let seconds = started.elapsed().as_secs_f64();
    drop(worker);

    let statuses = envelopes
        .iter()
        .map(|message| {
            let envelope: Value = serde_json::from_slice(&message.data).expect("a JSON envelope");
            envelope["status"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    (seconds, statuses)
}
