//! A small Nomad HTTP API client: the standard `NOMAD_*` environment, token header, namespace and
//! region parameters, TLS with a custom CA and client identity, and retries with exponential
//! backoff on connection errors and 5xx answers. The token never appears in logs or errors.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use super::wire::{
    AllocationStub, DispatchRequest, DispatchResponse, Job, JobStub, JobSummary, PlanResponse,
    RegisterResponse, StopResponse,
};

/// A secret string whose `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Retries of one request: `attempts` tries in all, delays doubling from `base` up to `cap`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }
}

/// Where and how to reach Nomad; [`NomadClientConfig::from_env`] reads the standard variables.
#[derive(Debug, Clone)]
pub struct NomadClientConfig {
    /// `NOMAD_ADDR` [default: http://127.0.0.1:4646].
    pub addr: String,
    /// `NOMAD_TOKEN`, sent as `X-Nomad-Token` only when set.
    pub token: Option<Secret>,
    /// `NOMAD_NAMESPACE`, sent as `?namespace=`.
    pub namespace: Option<String>,
    /// `NOMAD_REGION`, sent as `?region=`.
    pub region: Option<String>,
    /// `NOMAD_CACERT`: PEM bundle of the CA that signs Nomad's certificate.
    pub ca_cert: Option<PathBuf>,
    /// `NOMAD_CLIENT_CERT` and `NOMAD_CLIENT_KEY`: PEM client identity for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for NomadClientConfig {
    fn default() -> Self {
        NomadClientConfig {
            addr: "http://127.0.0.1:4646".into(),
            token: None,
            namespace: None,
            region: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

impl NomadClientConfig {
    /// Reads `NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_NAMESPACE`, `NOMAD_REGION`, `NOMAD_CACERT`,
    /// `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`; empty values count as unset.
    pub fn from_env() -> NomadClientConfig {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut config = NomadClientConfig::default();
        if let Some(addr) = var("NOMAD_ADDR") {
            config.addr = addr;
        }
        config.token = var("NOMAD_TOKEN").map(Secret::new);
        config.namespace = var("NOMAD_NAMESPACE");
        config.region = var("NOMAD_REGION");
        config.ca_cert = var("NOMAD_CACERT").map(PathBuf::from);
        config.client_cert = var("NOMAD_CLIENT_CERT").map(PathBuf::from);
        config.client_key = var("NOMAD_CLIENT_KEY").map(PathBuf::from);
        config
    }
}

/// Why a Nomad request failed. Messages never carry the token.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    #[error("nomad client configuration: {0}")]
    Config(String),
    /// Connection refused, reset, timed out, or 5xx after every retry.
    #[error("nomad {op}: unreachable after {tries} tries: {message}")]
    Unreachable {
        op: &'static str,
        tries: u32,
        message: String,
    },
    #[error("nomad {op}: HTTP {status}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        message: String,
    },
    #[error("nomad {op}: unexpected answer: {message}")]
    Decode { op: &'static str, message: String },
}

impl NomadError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, NomadError::Status { status: 404, .. })
    }

    /// Worth trying again later (outage), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            NomadError::Unreachable { .. } => true,
            NomadError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The answer of a blocking query: the body and `X-Nomad-Index`.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub value: T,
    pub index: u64,
}

#[derive(Debug, Clone)]
pub struct NomadClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    namespace: Option<String>,
    region: Option<String>,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl NomadClient {
    pub fn new(config: &NomadClientConfig) -> Result<NomadClient, NomadError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("agent-orchestrator/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| NomadError::Config(format!("NOMAD_CACERT {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| NomadError::Config(format!("NOMAD_CACERT {}: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    NomadError::Config(format!("NOMAD_CLIENT_CERT {}: {e}", cert.display()))
                })?;
                let key_pem = std::fs::read(key).map_err(|e| {
                    NomadError::Config(format!("NOMAD_CLIENT_KEY {}: {e}", key.display()))
                })?;
                pem.push(b'\n');
                pem.extend_from_slice(&key_pem);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    NomadError::Config(format!("NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY: {e}"))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(NomadError::Config(
                    "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY must be set together".into(),
                ))
            }
        }
        let http = builder
            .build()
            .map_err(|e| NomadError::Config(format!("HTTP client: {e}")))?;
        let base = config.addr.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(NomadError::Config(format!(
                "NOMAD_ADDR `{base}` must start with http:// or https://"
            )));
        }
        Ok(NomadClient {
            http,
            base,
            token: config.token.clone(),
            namespace: config.namespace.clone(),
            region: config.region.clone(),
            request_timeout: config.request_timeout,
            retry: config.retry.clone(),
        })
    }

    pub fn addr(&self) -> &str {
        &self.base
    }

    /// `POST /v1/job/:id/plan` with `Diff: true`.
    pub async fn plan(
        &self,
        job_id: &str,
        job: &serde_json::Value,
    ) -> Result<PlanResponse, NomadError> {
        let body = serde_json::json!({"Job": job, "Diff": true});
        let path = format!("/v1/job/{}/plan", encode(job_id));
        self.json("plan job", Method::POST, &path, &[], Some(&body))
            .await
    }

    /// `POST /v1/jobs`.
    pub async fn register(&self, job: &serde_json::Value) -> Result<RegisterResponse, NomadError> {
        let body = serde_json::json!({"Job": job});
        self.json("register job", Method::POST, "/v1/jobs", &[], Some(&body))
            .await
    }

    /// `POST /v1/job/:id/dispatch?idempotency_token=`.
    pub async fn dispatch(
        &self,
        job_id: &str,
        request: &DispatchRequest,
        idempotency_token: &str,
    ) -> Result<DispatchResponse, NomadError> {
        let path = format!("/v1/job/{}/dispatch", encode(job_id));
        let query = [("idempotency_token", idempotency_token.to_string())];
        self.json("dispatch job", Method::POST, &path, &query, Some(request))
            .await
    }

    /// `GET /v1/job/:id`.
    pub async fn job(&self, job_id: &str) -> Result<Job, NomadError> {
        let path = format!("/v1/job/{}", encode(job_id));
        self.json::<(), _>("read job", Method::GET, &path, &[], None)
            .await
    }

    /// `GET /v1/job/:id/summary`.
    pub async fn summary(&self, job_id: &str) -> Result<JobSummary, NomadError> {
        let path = format!("/v1/job/{}/summary", encode(job_id));
        self.json::<(), _>("read job summary", Method::GET, &path, &[], None)
            .await
    }

    /// `GET /v1/jobs?prefix=`.
    pub async fn jobs_with_prefix(&self, prefix: &str) -> Result<Vec<JobStub>, NomadError> {
        let query = [("prefix", prefix.to_string())];
        self.json::<(), _>("list jobs", Method::GET, "/v1/jobs", &query, None)
            .await
    }

    /// `GET /v1/job/:id/allocations`.
    pub async fn job_allocations(&self, job_id: &str) -> Result<Vec<AllocationStub>, NomadError> {
        let path = format!("/v1/job/{}/allocations", encode(job_id));
        self.json::<(), _>("read job allocations", Method::GET, &path, &[], None)
            .await
    }

    /// `GET /v1/allocations?index=&wait=`: a blocking query that returns when an allocation
    /// changed after `index`, or after `wait`.
    pub async fn allocations_after(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<AllocationStub>>, NomadError> {
        let query = [
            ("index", index.to_string()),
            ("wait", format!("{}ms", wait.as_millis())),
        ];
        let (bytes, index) = self
            .send(
                "watch allocations",
                Method::GET,
                "/v1/allocations",
                &query,
                None::<&()>,
                self.request_timeout + wait,
            )
            .await?;
        let value = decode("watch allocations", &bytes)?;
        Ok(Indexed { value, index })
    }

    /// `DELETE /v1/job/:id`. A job that is already gone counts as stopped.
    pub async fn stop_job(&self, job_id: &str) -> Result<(), NomadError> {
        let path = format!("/v1/job/{}", encode(job_id));
        match self
            .json::<(), StopResponse>("stop job", Method::DELETE, &path, &[], None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, NomadError> {
        let (bytes, _) = self
            .send(op, method, path, query, body, self.request_timeout)
            .await?;
        decode(op, &bytes)
    }

    /// One request with retries on connection errors and 5xx. Returns the body and
    /// `X-Nomad-Index` (0 when absent).
    async fn send<B: Serialize + ?Sized>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, u64), NomadError> {
        let mut params: Vec<(&str, String)> = query.to_vec();
        if let Some(ns) = &self.namespace {
            params.push(("namespace", ns.clone()));
        }
        if let Some(region) = &self.region {
            params.push(("region", region.clone()));
        }
        let mut url = format!("{}{}", self.base, path);
        for (i, (key, value)) in params.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(key);
            url.push('=');
            url.push_str(&encode(value));
        }
        let tries = self.retry.attempts.max(1);
        let mut delay = self.retry.base;
        let mut last = String::new();
        for attempt in 1..=tries {
            let mut request = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(token) = &self.token {
                request = request.header("X-Nomad-Token", token.expose());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let index = response
                        .headers()
                        .get("X-Nomad-Index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let bytes = match response.bytes().await {
                        Ok(bytes) => bytes.to_vec(),
                        Err(e) => {
                            last = without_url(&e);
                            debug!(op, attempt, error = %last, "nomad request failed; retrying");
                            if attempt < tries {
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(self.retry.cap);
                            }
                            continue;
                        }
                    };
                    if status.is_success() {
                        return Ok((bytes, index));
                    }
                    let message = snippet(&bytes);
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        last = format!("HTTP {}: {message}", status.as_u16());
                        debug!(
                            op,
                            attempt,
                            status = status.as_u16(),
                            "nomad answered an error; retrying"
                        );
                    } else {
                        return Err(NomadError::Status {
                            op,
                            status: status.as_u16(),
                            message,
                        });
                    }
                }
                Err(e) => {
                    last = without_url(&e);
                    debug!(op, attempt, error = %last, "nomad request failed; retrying");
                }
            }
            if attempt < tries {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.retry.cap);
            }
        }
        Err(NomadError::Unreachable {
            op,
            tries,
            message: last,
        })
    }
}

fn decode<T: DeserializeOwned>(op: &'static str, bytes: &[u8]) -> Result<T, NomadError> {
    serde_json::from_slice(bytes).map_err(|e| NomadError::Decode {
        op,
        message: e.to_string(),
    })
}

/// A short, printable excerpt of an error body.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// reqwest's error text without the URL (query strings could carry names we do not want to
/// repeat in every log line; the token is a header and never part of it).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Percent-encodes a job id for a path segment or a query value (`/` in child ids becomes `%2F`, as the Nomad
/// CLI sends it).
fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_checked_and_named_in_errors() {
        let missing = NomadClientConfig {
            ca_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..Default::default()
        };
        let err = NomadClient::new(&missing).unwrap_err().to_string();
        assert!(err.contains("NOMAD_CACERT /nonexistent/ca.pem"), "{err}");
        let half = NomadClientConfig {
            client_cert: Some(PathBuf::from("/nonexistent/cert.pem")),
            ..Default::default()
        };
        let err = NomadClient::new(&half).unwrap_err().to_string();
        assert!(err.contains("must be set together"), "{err}");
        let bad_addr = NomadClientConfig {
            addr: "nomad.service:4646".into(),
            ..Default::default()
        };
        assert!(NomadClient::new(&bad_addr).is_err());
    }

    #[test]
    fn tokens_are_never_printed() {
        let config = NomadClientConfig {
            token: Some(Secret::new("top-secret")),
            ..Default::default()
        };
        let client = NomadClient::new(&config).expect("client");
        assert!(!format!("{config:?}").contains("top-secret"));
        assert!(!format!("{client:?}").contains("top-secret"));
    }

    #[test]
    fn child_job_ids_are_one_path_segment() {
        assert_eq!(
            encode("dev-coder-agent/dispatch-1-2"),
            "dev-coder-agent%2Fdispatch-1-2"
        );
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
