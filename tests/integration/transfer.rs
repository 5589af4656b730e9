//! Transfers against small HTTP servers on 127.0.0.1: redirects and size limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use thrombseg::transfer::{TransferError, TransferSettings, Transfers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Loopback server that replies to every request with `respond(base, path)` and counts the
/// requests.
struct TestServer {
    base: String,
    requests: Arc<AtomicUsize>,
}

impl TestServer {
    async fn start(respond: impl Fn(&str, &str) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let respond = Arc::new(respond);
        let own_base = base.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let respond = Arc::clone(&respond);
                let own_base = own_base.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let read = stream.read(&mut buffer).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buffer[..read]).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let _ = stream.write_all(respond(&own_base, &path).as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { base, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn redirect(location: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn redirect_to_same_origin_is_followed() {
    let server = TestServer::start(|base, path| match path {
        "/start" => redirect(&format!("{base}/volume.npz")),
        _ => ok("volume bytes"),
    })
    .await;
    let transfers = Transfers::new(TransferSettings::default()).unwrap();

    let body = transfers.download(&format!("{}/start", server.base)).await.unwrap();

    assert_eq!(body, b"volume bytes");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn redirect_to_other_origin_is_not_followed() {
    let elsewhere = TestServer::start(|_, _| ok("should never be fetched")).await;
    let target = format!("{}/stolen", elsewhere.base);
    let server = TestServer::start(move |_, _| redirect(&target)).await;
    let transfers = Transfers::new(TransferSettings::default()).unwrap();

    let error = transfers
        .upload(&format!("{}/out.npz", server.base), b"mask bytes".to_vec())
        .await
        .unwrap_err();

    assert!(matches!(error, TransferError::Status { status: 302, .. }), "{error}");
    assert_eq!(elsewhere.requests(), 0, "the upload body went to another origin");
}

#[tokio::test]
async fn redirect_loop_stops() {
    let server = TestServer::start(|base, _| redirect(&format!("{base}/again"))).await;
    let transfers = Transfers::new(TransferSettings::default()).unwrap();

    let error = transfers.download(&format!("{}/start", server.base)).await.unwrap_err();

    assert!(matches!(error, TransferError::Status { status: 302, .. }), "{error}");
    assert!(server.requests() <= 4, "{} requests", server.requests());
}

#[tokio::test]
async fn download_over_size_limit_is_rejected() {
    let server = TestServer::start(|_, _| ok(&"x".repeat(4096))).await;
    let settings = TransferSettings {
        max_download_bytes: 1000,
        ..TransferSettings::default()
    };
    let transfers = Transfers::new(settings).unwrap();

    let error = transfers
        .download(&format!("{}/big.npz", server.base))
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            TransferError::TooLarge {
                size: 4096,
                limit: 1000,
                ..
            }
        ),
        "{error}"
    );
}
