//! Downloads and uploads through pre-signed URLs.
//!
//! A pre-signed URL carries its credentials in the query string, so only [`redact`]ed URLs
//! (scheme, host, port and path) ever reach logs, envelopes or errors. URLs are passed to the
//! HTTP client as received: the signature covers the exact path and query bytes.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, StatusCode, Url, header};

/// Limits and options for transfers.
#[derive(Clone, Debug)]
pub struct TransferSettings {
    /// Largest input accepted, in bytes.
    pub max_download_bytes: u64,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, body included.
    pub request_timeout: Duration,
    /// HTTP method used for uploads.
    pub upload_method: UploadMethod,
}

impl Default for TransferSettings {
    fn default() -> Self {
        Self {
            max_download_bytes: 2 * 1024 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            upload_method: UploadMethod::Put,
        }
    }
}

/// HTTP method of uploads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadMethod {
    /// HTTP PUT, as S3 pre-signed upload URLs expect.
    Put,
    /// HTTP POST with the archive as the raw body.
    Post,
}

/// Transfer failures. Messages carry redacted URLs only.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{direction}: invalid URL: {reason}")]
    InvalidUrl { direction: Direction, reason: String },
    #[error("{direction} {url}: HTTP {status}{}", s3_code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        direction: Direction,
        url: String,
        status: u16,
        s3_code: Option<String>,
    },
    #[error("{direction} {url}: {size} bytes is more than the limit of {limit}")]
    TooLarge {
        direction: Direction,
        url: String,
        size: u64,
        limit: u64,
    },
    #[error("{direction} {url}: received {received} bytes, but Content-Length was {expected}")]
    Incomplete {
        direction: Direction,
        url: String,
        received: u64,
        expected: u64,
    },
    #[error("{direction} {url}: {reason}")]
    Network {
        direction: Direction,
        url: String,
        reason: String,
        timed_out: bool,
    },
}

/// Which side of the job a transfer serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Download,
    Upload,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Download => "download",
            Self::Upload => "upload",
        })
    }
}

impl TransferError {
    /// Returns true if and only if trying again later may succeed: a timeout, a connection
    /// failure, HTTP 408, 429 or 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Network { .. } | Self::Incomplete { .. } => true,
            Self::InvalidUrl { .. } | Self::TooLarge { .. } => false,
        }
    }
}

/// Returns `url` with its query string and fragment removed, or a placeholder when it does not
/// parse.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", parsed.scheme(), parsed.path())
        }
        Err(_) => "<invalid URL>".to_owned(),
    }
}

/// Client for pre-signed URLs.
#[derive(Clone)]
pub struct Transfers {
    client: Client,
    settings: TransferSettings,
}

impl Transfers {
    pub fn new(settings: TransferSettings) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // NOTE: a redirect would resend the request, and an upload's body, to wherever the
            // server points; pre-signed S3 URLs do not redirect, so any redirect is an error.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, settings })
    }

    /// Downloads `url` into memory, refusing bodies larger than the configured limit.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, TransferError> {
        let direction = Direction::Download;
        let parsed = parse_url(url, direction)?;
        let redacted_url = redact(url);
        let network = |e: reqwest::Error| network_error(direction, &redacted_url, e);

        let response = self.client.get(parsed).send().await.map_err(network)?;
        let response = check_status(response, direction, &redacted_url).await?;

        let limit = self.settings.max_download_bytes;
        let expected = response.content_length();
        if let Some(size) = expected.filter(|&size| size > limit) {
            return Err(TransferError::TooLarge {
                direction,
                url: redacted_url,
                size,
                limit,
            });
        }

        let mut body = Vec::with_capacity(expected.unwrap_or(0) as usize);
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(network)?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(TransferError::TooLarge {
                    direction,
                    url: redacted_url,
                    size: body.len() as u64 + chunk.len() as u64,
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }

        if let Some(expected) = expected.filter(|&n| n != body.len() as u64) {
            return Err(TransferError::Incomplete {
                direction,
                url: redacted_url,
                received: body.len() as u64,
                expected,
            });
        }
        Ok(body)
    }

    /// Uploads `body` to `url` with an exact Content-Length.
    pub async fn upload(&self, url: &str, body: Vec<u8>) -> Result<(), TransferError> {
        let direction = Direction::Upload;
        let parsed = parse_url(url, direction)?;
        let redacted_url = redact(url);

        let request = match self.settings.upload_method {
            UploadMethod::Put => self.client.put(parsed),
            UploadMethod::Post => self.client.post(parsed),
        };
        let response = request
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(|e| network_error(direction, &redacted_url, e))?;
        check_status(response, direction, &redacted_url).await?;
        Ok(())
    }
}

fn parse_url(url: &str, direction: Direction) -> Result<Url, TransferError> {
    let parsed = Url::parse(url).map_err(|e| TransferError::InvalidUrl {
        direction,
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TransferError::InvalidUrl {
            direction,
            reason: format!("scheme {:?} is not http or https", parsed.scheme()),
        });
    }
    Ok(parsed)
}

fn network_error(direction: Direction, redacted_url: &str, error: reqwest::Error) -> TransferError {
    // reqwest's Display includes the full URL; keep only the cause chain.
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    TransferError::Network {
        direction,
        url: redacted_url.to_owned(),
        reason,
        timed_out: error.is_timeout(),
    }
}

async fn check_status(
    response: reqwest::Response,
    direction: Direction,
    redacted_url: &str,
) -> Result<reqwest::Response, TransferError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let s3_code = if status == StatusCode::NOT_MODIFIED {
        None
    } else {
        // S3 error bodies are a few hundred bytes; cap what is read from a misbehaving server.
        let body = response.bytes().await.unwrap_or_default();
        s3_error_code(&body[..body.len().min(64 * 1024)])
    };
    Err(TransferError::Status {
        direction,
        url: redacted_url.to_owned(),
        status: status.as_u16(),
        s3_code,
    })
}

/// Extracts `<Code>` from an S3 XML error body such as
/// `<Error><Code>AccessDenied</Code>...</Error>`.
pub fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    let code = text[start..end].trim();
    let is_token = !code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    is_token.then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_query_and_fragment() {
        let url =
            "https://s3.example.test:9000/bucket/key%20with%20space.npz?X-Amz-Signature=abc&X-Amz-Credential=k#frag";

        let redacted_url = redact(url);

        assert_eq!(
            redacted_url,
            "https://s3.example.test:9000/bucket/key%20with%20space.npz"
        );
    }

    #[test]
    fn redact_hides_unparseable_url() {
        assert_eq!(redact("not a url?secret=1"), "<invalid URL>");
    }

    #[test]
    fn s3_error_code_is_extracted() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>"#;

        assert_eq!(s3_error_code(body).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(s3_error_code(b"<html>502</html>"), None);
    }

    #[test]
    fn transient_statuses() {
        let status = |status| TransferError::Status {
            direction: Direction::Download,
            url: String::new(),
            status,
            s3_code: None,
        };

        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(status(408).is_transient());
        assert!(!status(403).is_transient());
        assert!(!status(404).is_transient());
    }

    #[test]
    fn non_http_scheme_is_invalid() {
        let error = parse_url("file:///etc/passwd", Direction::Download).unwrap_err();

        assert!(error.to_string().contains("not http or https"), "{error}");
    }
}
