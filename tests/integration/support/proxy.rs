//! A fault-injecting HTTP proxy on 127.0.0.1 in front of SeaweedFS.
//!
//! Requests pass through byte for byte, except that each is sent with `Connection: close`, so
//! that every request opens a connection of its own and meets the fault rules. The header is
//! not among those a pre-signed URL signs (`X-Amz-SignedHeaders=host`), so signatures stay
//! valid. A request that matches a rule gets `503 Slow Down` with an S3 XML error body. A set
//! latency delays every request, as a distant store would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests whose method and path match get a 503 until the rule's failures run out.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: &'static str,
    pub path_contains: String,
    /// Requests to fail; `usize::MAX` fails every one.
    pub failures: usize,
}

#[derive(Default)]
struct ProxyState {
    rules: Vec<FaultRule>,
    /// Chance in [0, 1) that any other GET fails, for load runs.
    random_get_failure: f64,
    injected: usize,
    /// Delay before each request is forwarded or failed.
    latency: Duration,
}

/// A running proxy; it stops with the test's runtime.
#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<ProxyState>>,
}

impl FaultProxy {
    /// Starts a proxy that forwards to `upstream_port` on 127.0.0.1.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ProxyState::default()));

        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = serve_connection(client, upstream_port, &state).await;
                });
            }
        });
        Self { endpoint, state }
    }

    pub fn add_rule(&self, rule: FaultRule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    pub fn set_random_get_failure(&self, chance: f64) {
        self.state.lock().unwrap().random_get_failure = chance;
    }

    /// Delays every later request by `latency`. The throughput benchmark uses it; the tests
    /// do not.
    #[allow(dead_code)]
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Number of 503 responses sent so far.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }
}

async fn serve_connection(mut client: TcpStream, upstream_port: u16, state: &Mutex<ProxyState>) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break position + 4;
        }
        if buffer.len() > 64 * 1024 {
            return Ok(());
        }
    };

    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();

    let latency = state.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if should_fail(state, &method, &path) {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>";
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        return client.shutdown().await;
    }

    let mut rewritten: Vec<u8> = head
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .take_while(|line| !line.is_empty())
        .flat_map(|line| format!("{line}\r\n").into_bytes())
        .collect();
    rewritten.extend_from_slice(b"Connection: close\r\n\r\n");
    rewritten.extend_from_slice(&buffer[head_end..]);

    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.write_all(&rewritten).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

fn should_fail(state: &Mutex<ProxyState>, method: &str, path: &str) -> bool {
    let mut state = state.lock().unwrap();
    let matched = state
        .rules
        .iter_mut()
        .find(|rule| rule.method == method && path.contains(&rule.path_contains) && rule.failures > 0);
    let fail = match matched {
        Some(rule) => {
            if rule.failures != usize::MAX {
                rule.failures -= 1;
            }
            true
        }
        None => method == "GET" && rand::random::<f64>() < state.random_get_failure,
    };
    if fail {
        state.injected += 1;
    }
    fail
}
