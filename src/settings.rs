//! Settings shared by the commands, from flags and `THROMBSEG_*` environment variables.
//!
//! Each struct groups what one part of the pipeline needs, so functions receive only their part.
//! Types that hold credentials print them redacted.

use std::path::PathBuf;
use std::time::Duration;

use crate::segmentation::model::{DEFAULT_SLICE_BATCH, SessionOptions};
use crate::segmentation::providers::{Provider, ProviderChoice};
use crate::segmentation::runtime;
use crate::transfer::{TransferSettings, UploadMethod, UrlPolicy};
use crate::volume::ReadLimits;

/// Model, ONNX Runtime and input-size settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// Model bundle folder (bundle.json, ONNX files); defaults to the bundle in fixtures/models.
    #[arg(long, env = "THROMBSEG_BUNDLE")]
    pub bundle: Option<PathBuf>,

    /// Path of libonnxruntime.so; defaults to ORT_DYLIB_PATH, then .onnxruntime/.
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,

    /// Threads ONNX Runtime uses inside one operator; 0 means one per CPU this process may use.
    #[arg(long, env = "THROMBSEG_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,

    /// Execution providers in order of preference, comma-separated: cuda and tensorrt need
    /// the onnxruntime-gpu library; cpu, when listed, comes last.
    #[arg(
        long,
        env = "THROMBSEG_EXECUTION_PROVIDERS",
        value_enum,
        value_delimiter = ',',
        default_value = "cpu"
    )]
    pub execution_providers: Vec<Provider>,

    /// Leave out an execution provider that fails to register, with a warning, instead of
    /// stopping.
    #[arg(long, env = "THROMBSEG_ALLOW_PROVIDER_FALLBACK")]
    pub allow_provider_fallback: bool,

    /// Axial slices the 2-D network takes per run. It changes speed and memory, not the masks;
    /// 4 was fastest on a 2-core CPU, and GPUs want more.
    #[arg(long, env = "THROMBSEG_SLICE_BATCH", default_value_t = DEFAULT_SLICE_BATCH as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub slice_batch: u16,

    /// Largest volume accepted, in voxels.
    #[arg(long, env = "THROMBSEG_MAX_VOXELS", default_value_t = ReadLimits::default().max_voxels)]
    pub max_voxels: u64,
}

impl ModelArgs {
    /// Resolves the ONNX Runtime library and returns the session options.
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        let providers =
            ProviderChoice::new(self.execution_providers.clone(), self.allow_provider_fallback).map_err(|message| {
                anyhow::anyhow!("invalid --execution-providers (THROMBSEG_EXECUTION_PROVIDERS): {message}")
            })?;
        Ok(SessionOptions {
            library: runtime::locate_library(self.onnxruntime.as_deref())?,
            intra_threads: self.intra_threads,
            providers,
            slice_batch: usize::from(self.slice_batch),
            profile_prefix: None,
        })
    }

    pub fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            max_voxels: self.max_voxels,
        }
    }
}

/// HTTP transfer limits for pre-signed URLs.
#[derive(Clone, Debug, clap::Args)]
pub struct TransferArgs {
    /// Largest input download accepted, in bytes.
    #[arg(long, env = "THROMBSEG_MAX_DOWNLOAD_BYTES", default_value_t = TransferSettings::default().max_download_bytes)]
    pub max_download_bytes: u64,

    /// Seconds allowed to open a connection to storage.
    #[arg(long, env = "THROMBSEG_CONNECT_TIMEOUT_SECONDS", default_value_t = 10)]
    pub connect_timeout_seconds: u64,

    /// Seconds allowed for one whole download or upload.
    #[arg(long, env = "THROMBSEG_REQUEST_TIMEOUT_SECONDS", default_value_t = 300)]
    pub request_timeout_seconds: u64,

    /// HTTP method for uploads: `put` for S3 pre-signed URLs, `post` for endpoints that take a
    /// raw body.
    #[arg(long, env = "THROMBSEG_UPLOAD_METHOD", value_enum, default_value_t = UploadMethod::Put)]
    pub upload_method: UploadMethod,

    /// Extra upload header, `Name: value`, for URLs signed with it; repeat the flag, or separate
    /// headers with newlines in the variable.
    #[arg(long = "upload-header", env = "THROMBSEG_UPLOAD_HEADERS", value_delimiter = '\n', value_parser = parse_header)]
    pub upload_headers: Vec<(String, String)>,

    /// Accept only https URLs.
    #[arg(long, env = "THROMBSEG_HTTPS_ONLY")]
    pub https_only: bool,

    /// Hosts that URLs may name, comma-separated; `.example.com` matches its subdomains. Empty
    /// accepts any host.
    #[arg(long, env = "THROMBSEG_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Accept link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
    /// fd00:ec2::254), which are rejected by default.
    #[arg(long, env = "THROMBSEG_ALLOW_LINK_LOCAL")]
    pub allow_link_local: bool,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid header {text:?}: expected `Name: value`"))?;
    let name = name.trim();
    reqwest::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| format!("invalid header name {name:?}: {e}"))?;
    Ok((name.to_owned(), value.trim().to_owned()))
}

impl TransferArgs {
    pub fn settings(&self) -> TransferSettings {
        TransferSettings {
            max_download_bytes: self.max_download_bytes,
            connect_timeout: Duration::from_secs(self.connect_timeout_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            upload_method: self.upload_method,
            upload_headers: self.upload_headers.clone(),
            policy: UrlPolicy {
                https_only: self.https_only,
                allowed_hosts: self.allowed_hosts.iter().filter(|h| !h.is_empty()).cloned().collect(),
                allow_link_local: self.allow_link_local,
            },
        }
    }
}

/// An AMQP URL, which may carry a password; `Debug` and `Display` hide the credentials.
#[derive(Clone)]
pub struct AmqpUrl(pub String);

impl AmqpUrl {
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                }
                parsed.to_string()
            }
            Err(_) => "<invalid AMQP URL>".to_owned(),
        }
    }
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for AmqpUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = url::Url::parse(text).map_err(|e| format!("invalid AMQP URL: {e}"))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(format!(
                "AMQP URL scheme must be amqp or amqps, got {}",
                parsed.scheme()
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

/// Broker connection settings.
#[derive(Clone, Debug, clap::Args)]
pub struct BrokerArgs {
    /// AMQP URL of RabbitMQ, credentials included.
    #[arg(
        long,
        env = "THROMBSEG_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: AmqpUrl,

    /// Seconds between AMQP heartbeats; a broker that misses two is taken as lost. A
    /// `heartbeat` in the URL's query wins.
    #[arg(long, env = "THROMBSEG_HEARTBEAT_SECONDS", default_value_t = 10)]
    pub heartbeat_seconds: u16,

    #[command(flatten)]
    pub topology: crate::queue::Topology,
}

impl BrokerArgs {
    /// Returns the AMQP URL with the heartbeat interval added unless it names one.
    pub fn connection_url(&self) -> String {
        let Ok(mut parsed) = url::Url::parse(&self.amqp_url.0) else {
            return self.amqp_url.0.clone();
        };
        if !parsed.query_pairs().any(|(key, _)| key == "heartbeat") {
            parsed
                .query_pairs_mut()
                .append_pair("heartbeat", &self.heartbeat_seconds.to_string());
        }
        parsed.to_string()
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_debug_hides_password() {
        let url: AmqpUrl = "amqp://user:s3cret@rabbit:5672/%2f".parse().unwrap();

        let printed = format!("{url:?}");

        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("rabbit:5672"), "{printed}");
    }

    #[test]
    fn amqp_url_rejects_other_schemes() {
        let error = "http://rabbit:5672".parse::<AmqpUrl>().unwrap_err();

        assert!(error.contains("amqp"), "{error}");
    }
}
