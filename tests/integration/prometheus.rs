//! A real Prometheus server scrapes a running worker, and the worker's metrics come back
//! through Prometheus's HTTP API. The server is Debian's `prometheus` package, which
//! `scripts/check-deploy` unpacks into `.tools-deb/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::broker::{TestTopology, WorkerProcess};
use crate::support::{installed_tool, temp_dir, tiny_bundle};

/// A Prometheus server on 127.0.0.1; killed when dropped.
struct PrometheusServer {
    child: Child,
    address: String,
    _data: tempfile::TempDir,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    installed_tool(
        ".tools-deb/root/usr/bin/prometheus",
        "run scripts/check-deploy, which unpacks Debian's prometheus package there",
    )
}

/// Starts Prometheus scraping `target` every second under the job name `thrombseg`.
fn start_prometheus(target: &str) -> PrometheusServer {
    let data = temp_dir();
    let config = data.path().join("prometheus.yml");
    let scrape = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: thrombseg\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(&config, scrape).unwrap();

    // Take a free loopback port, then hand it to Prometheus.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.path().join("tsdb").display()))
        .arg(format!("--web.listen-address={address}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    PrometheusServer {
        child,
        address,
        _data: data,
    }
}

/// Runs an instant query until it returns a series or `timeout` passes; returns the result list.
async fn query_until_present(server: &PrometheusServer, query: &str, timeout: Duration) -> Vec<Value> {
    let endpoint = format!("http://{}/api/v1/query", server.address);
    let url = url::Url::parse_with_params(&endpoint, &[("query", query)]).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let response = reqwest::get(url.clone()).await;
        if let Ok(response) = response
            && let Ok(text) = response.text().await
            && let Ok(body) = serde_json::from_str::<Value>(&text)
            && let Some(result) = body["data"]["result"].as_array()
            && !result.is_empty()
        {
            return result.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus returned no series for {query} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_worker_metrics() {
    let bundle = tiny_bundle();
    let topology = TestTopology::unique();
    let worker = WorkerProcess::start(&topology, &[("THROMBSEG_BUNDLE", bundle.path().display().to_string())]);
    let server = start_prometheus(&worker.metrics_address);

    let up = query_until_present(&server, r#"up{job="thrombseg"}"#, Duration::from_secs(60)).await;
    let provider = query_until_present(&server, "thrombseg_execution_provider_info", Duration::from_secs(30)).await;
    let connected = query_until_present(&server, "thrombseg_broker_connected", Duration::from_secs(30)).await;

    assert_eq!(up[0]["value"][1], "1", "the scrape succeeds: {up:?}");
    assert_eq!(provider[0]["metric"]["provider"], "cpu", "{provider:?}");
    assert_eq!(provider[0]["metric"]["instance"], worker.metrics_address.as_str());
    assert_eq!(connected[0]["value"][1], "1", "{connected:?}");
}
