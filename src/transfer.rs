//! Downloads and uploads through pre-signed URLs.
//!
//! A pre-signed URL carries its credentials in the query string, so only [`redact`]ed URLs
//! (scheme, host, port and path) ever reach logs, envelopes or errors. URLs are passed to the
//! HTTP client as received: the signature covers the exact path and query bytes.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
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
    /// Headers sent with every upload besides Content-Length, for URLs signed with them.
    pub upload_headers: Vec<(String, String)>,
    /// Policy for the URLs that may be fetched.
    pub policy: UrlPolicy,
}

impl Default for TransferSettings {
    fn default() -> Self {
        Self {
            max_download_bytes: 2 * 1024 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            upload_method: UploadMethod::Put,
            upload_headers: Vec::new(),
            policy: UrlPolicy::default(),
        }
    }
}

/// Policy for the URLs and addresses that transfers may reach.
///
/// Pre-signed URLs come from job messages, so a forged job could point the worker at an
/// internal service. The policy limits schemes and hosts, and refuses link-local and cloud
/// metadata addresses, whether written in the URL or returned by DNS.
#[derive(Clone, Debug, Default)]
pub struct UrlPolicy {
    /// Accept only `https` URLs.
    pub https_only: bool,
    /// Hosts that may be reached; empty accepts any. An entry starting with a dot matches
    /// every subdomain: `.s3.example.com` matches `bucket.s3.example.com`.
    pub allowed_hosts: Vec<String>,
    /// Accept link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
    /// fd00:ec2::254).
    pub allow_link_local: bool,
}

impl UrlPolicy {
    /// Checks the scheme, the host against the allow-list, and a literal IP host.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            "http" => return Err("scheme http is not allowed (only https)".into()),
            other => return Err(format!("scheme {other:?} is not http or https")),
        }

        let host = url.host().ok_or("URL has no host")?;
        let host_text = match &host {
            url::Host::Domain(domain) => domain.to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        if !self.host_allowed(&host_text) {
            return Err(format!("host {host_text} is not in the allowed hosts"));
        }

        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        match literal {
            Some(ip) => self.check_address(ip),
            None => Ok(()),
        }
    }

    /// Rejects link-local and metadata addresses unless the policy allows them.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        if is_link_local_or_metadata(ip) && !self.allow_link_local {
            return Err(format!("address {ip} is link-local or a cloud metadata address"));
        }
        Ok(())
    }

    /// Returns true if and only if `host` (lowercase) matches the allow-list, or the list is
    /// empty.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty()
            || self.allowed_hosts.iter().any(|entry| {
                let entry = entry.to_ascii_lowercase();
                match entry.strip_prefix('.') {
                    Some(suffix) => host.len() > suffix.len() && host.ends_with(&entry),
                    None => host == entry,
                }
            })
    }
}

/// Returns true if and only if `ip` is link-local (169.254.0.0/16, fe80::/10, or their
/// IPv4-mapped forms) or the AWS IPv6 metadata address fd00:ec2::254.
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            v6.is_unicast_link_local() || v6 == AWS_METADATA_V6
        }
    }
}

/// DNS resolution that drops addresses the policy rejects.
struct PolicyResolver {
    policy: UrlPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|address| policy.check_address(address.ip()).is_ok())
                .collect();
            if allowed.is_empty() && !resolved.is_empty() {
                let message = format!("host {host} resolves only to link-local or cloud metadata addresses");
                return Err(message.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Follows a redirect only to the same scheme, host and port, at most 3 times, so that a
/// request and its body are never sent to another host.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let origin = &attempt.previous()[0];
        let same_origin = attempt.url().scheme() == origin.scheme()
            && attempt.url().host_str() == origin.host_str()
            && attempt.url().port_or_known_default() == origin.port_or_known_default();
        if same_origin && attempt.previous().len() <= 3 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
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

/// Side of the job that a transfer serves.
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
            .redirect(redirect_policy())
            .dns_resolver(Arc::new(PolicyResolver {
                policy: settings.policy.clone(),
            }))
            .build()?;
        Ok(Self { client, settings })
    }

    /// Checks both URLs of a job against the policy without sending anything.
    pub fn check_urls(&self, input: &str, output: &str) -> Result<(), TransferError> {
        parse_url(input, Direction::Download, &self.settings.policy)?;
        parse_url(output, Direction::Upload, &self.settings.policy)?;
        Ok(())
    }

    /// Downloads `url` into memory, refusing bodies larger than the configured limit.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, TransferError> {
        let direction = Direction::Download;
        let parsed = parse_url(url, direction, &self.settings.policy)?;
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
        let parsed = parse_url(url, direction, &self.settings.policy)?;
        let redacted_url = redact(url);

        let request = match self.settings.upload_method {
            UploadMethod::Put => self.client.put(parsed),
            UploadMethod::Post => self.client.post(parsed),
        };
        let request = self
            .settings
            .upload_headers
            .iter()
            .fold(request, |request, (name, value)| request.header(name, value));
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

fn parse_url(url: &str, direction: Direction, policy: &UrlPolicy) -> Result<Url, TransferError> {
    let invalid = |reason: String| TransferError::InvalidUrl { direction, reason };
    let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    policy.check_url(&parsed).map_err(invalid)?;
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

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn link_local_and_metadata_addresses() {
        for address in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_link_local_or_metadata(address.parse().unwrap()), "{address}");
        }
        for address in [
            "127.0.0.1",
            "10.0.0.1",
            "8.8.8.8",
            "::1",
            "fd00:ec2::253",
            "2001:db8::1",
        ] {
            assert!(!is_link_local_or_metadata(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn metadata_url_rejected_unless_allowed() {
        let strict = UrlPolicy::default();
        let lenient = UrlPolicy {
            allow_link_local: true,
            ..UrlPolicy::default()
        };

        let error = strict
            .check_url(&url("http://169.254.169.254/latest/meta-data/"))
            .unwrap_err();
        assert!(error.contains("link-local"), "{error}");
        assert!(strict.check_url(&url("http://[fd00:ec2::254]/")).is_err());
        assert!(
            lenient
                .check_url(&url("http://169.254.169.254/latest/meta-data/"))
                .is_ok()
        );
    }

    #[test]
    fn https_only_rejects_http() {
        let policy = UrlPolicy {
            https_only: true,
            ..UrlPolicy::default()
        };

        assert!(policy.check_url(&url("https://s3.example.test/b/k")).is_ok());
        let error = policy.check_url(&url("http://s3.example.test/b/k")).unwrap_err();
        assert!(error.contains("only https"), "{error}");
        assert!(
            UrlPolicy::default()
                .check_url(&url("ftp://s3.example.test/b/k"))
                .is_err()
        );
    }

    #[test]
    fn host_allow_list_exact_and_suffix() {
        let policy = UrlPolicy {
            allowed_hosts: vec!["storage.example.test".into(), ".s3.example.test".into()],
            ..UrlPolicy::default()
        };

        assert!(policy.check_url(&url("https://storage.example.test/b/k")).is_ok());
        assert!(policy.check_url(&url("https://STORAGE.example.test/b/k")).is_ok());
        assert!(policy.check_url(&url("https://bucket.s3.example.test/k")).is_ok());
        assert!(
            policy.check_url(&url("https://s3.example.test/k")).is_err(),
            "the suffix entry needs a subdomain"
        );
        assert!(policy.check_url(&url("https://evil-storage.example.test/k")).is_err());
        assert!(
            policy
                .check_url(&url("https://storage.example.test.evil.test/k"))
                .is_err()
        );
        let error = policy.check_url(&url("https://127.0.0.1:9000/k")).unwrap_err();
        assert!(error.contains("not in the allowed hosts"), "{error}");
    }

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
        let error = parse_url("file:///etc/passwd", Direction::Download, &UrlPolicy::default()).unwrap_err();

        assert!(error.to_string().contains("not http or https"), "{error}");
    }
}
