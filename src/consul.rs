//! Consul: the coordinator's service registration and the leader lock (DESIGN.md §2, §7).
//!
//! - [`ConsulClient`] speaks the few Consul HTTP endpoints used here (`CONSUL_HTTP_ADDR`,
//!   `CONSUL_HTTP_TOKEN` as `X-Consul-Token`, sent only when set; the token never appears in logs
//!   or errors). Request and response shapes follow Consul's API docs (`fixtures/consul-api`).
//! - [`register`] registers the API service (HTTP check on `/health` with
//!   `DeregisterCriticalServiceAfter`) and a second `<name>-metrics` service on the metrics
//!   port (tagged for Prometheus scraping); [`Registration::deregister`] removes both.
//! - [`spawn_leader_lock`] campaigns for the lock: a session (`TTL`, `Behavior: release`)
//!   renewed every TTL/2, `PUT /v1/kv/<key>?acquire=<session>`, then the key's `LockIndex` read
//!   back as the fencing token. While leading it watches the key with blocking queries
//!   (`?index=&wait=`), so a lost lock is seen as soon as Consul changes the key. It publishes
//!   [`Leadership`] on a watch channel; a failed renew, a key no longer held by our session, or
//!   an unreadable key turns leadership off at once.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// A secret string whose `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Token {
        Token(value.into())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// `CONSUL_HTTP_ADDR` [default: http://127.0.0.1:8500]; `host:port` means http.
    pub addr: String,
    /// `CONSUL_HTTP_TOKEN`.
    pub token: Option<Token>,
    pub request_timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            addr: "http://127.0.0.1:8500".into(),
            token: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsulConfig {
    pub fn from_env() -> ConsulConfig {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut config = ConsulConfig::default();
        if let Some(addr) = var("CONSUL_HTTP_ADDR") {
            config.addr = if addr.contains("://") {
                addr
            } else {
                format!("http://{addr}")
            };
        }
        config.token = var("CONSUL_HTTP_TOKEN").map(Token::new);
        config
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul client configuration: {0}")]
    Config(String),
    #[error("consul {op}: {message}")]
    Unreachable { op: &'static str, message: String },
    #[error("consul {op}: HTTP {status}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        message: String,
    },
    #[error("consul {op}: unexpected answer: {message}")]
    Decode { op: &'static str, message: String },
}

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDefinition {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    pub port: u16,
    pub meta: std::collections::BTreeMap<String, String>,
    pub check: ServiceCheck,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheck {
    #[serde(rename = "HTTP")]
    pub http: String,
    pub interval: String,
    pub timeout: String,
    pub deregister_critical_service_after: String,
}

/// `PUT /v1/session/create` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionRequest {
    name: String,
    #[serde(rename = "TTL")]
    ttl: String,
    behavior: &'static str,
    lock_delay: String,
}

#[derive(Debug, Clone, Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// One entry of `GET /v1/kv/:key`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    pub key: String,
    #[serde(default)]
    pub lock_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
    request_timeout: Duration,
}

impl ConsulClient {
    pub fn new(config: &ConsulConfig) -> Result<ConsulClient, ConsulError> {
        let base = config.addr.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConsulError::Config(format!(
                "CONSUL_HTTP_ADDR `{base}` must be http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConsulError::Config(format!("HTTP client: {e}")))?;
        Ok(ConsulClient {
            http,
            base,
            token: config.token.clone(),
            request_timeout: config.request_timeout,
        })
    }

    pub async fn register_service(&self, service: &ServiceDefinition) -> Result<(), ConsulError> {
        self.send(
            "register service",
            Method::PUT,
            "/v1/agent/service/register",
            Some(service),
        )
        .await
        .map(drop)
    }

    pub async fn deregister_service(&self, id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        self.send::<()>("deregister service", Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// Creates a session with `ttl` and `Behavior: release`; returns its ID.
    pub async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<String, ConsulError> {
        let request = SessionRequest {
            name: name.to_string(),
            ttl: format!("{}s", ttl.as_secs().max(10)),
            behavior: "release",
            lock_delay: format!("{}ms", lock_delay.as_millis()),
        };
        let bytes = self
            .send(
                "create session",
                Method::PUT,
                "/v1/session/create",
                Some(&request),
            )
            .await?;
        let created: SessionCreated = decode("create session", &bytes)?;
        Ok(created.id)
    }

    /// Renews a session; `false` when Consul no longer knows it (expired or destroyed).
    pub async fn renew_session(&self, id: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/session/renew/{}", encode(id));
        match self
            .send::<()>("renew session", Method::PUT, &path, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(ConsulError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn destroy_session(&self, id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/session/destroy/{}", encode(id));
        self.send::<()>("destroy session", Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// `PUT /v1/kv/<key>?acquire=<session>` with `value` as the key's contents.
    pub async fn acquire(
        &self,
        key: &str,
        session: &str,
        value: &str,
    ) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}?acquire={}", key_path(key), encode(session));
        let bytes = self
            .send_raw(
                "acquire lock",
                Method::PUT,
                &path,
                Some(value.as_bytes().to_vec()),
            )
            .await?;
        decode("acquire lock", &bytes)
    }

    /// `PUT /v1/kv/<key>?release=<session>`.
    pub async fn release(&self, key: &str, session: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}?release={}", key_path(key), encode(session));
        let bytes = self
            .send_raw("release lock", Method::PUT, &path, None)
            .await?;
        decode("release lock", &bytes)
    }

    /// `GET /v1/kv/<key>`; `None` when the key does not exist.
    pub async fn read_key(&self, key: &str) -> Result<Option<KvEntry>, ConsulError> {
        let path = format!("/v1/kv/{}", key_path(key));
        match self.send::<()>("read key", Method::GET, &path, None).await {
            Ok(bytes) => {
                let entries: Vec<KvEntry> = decode("read key", &bytes)?;
                Ok(entries.into_iter().next())
            }
            Err(ConsulError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Blocking `GET /v1/kv/<key>?index=&wait=`: answers once the key changed after `index`
    /// (lock lost, released, deleted), or after `wait`.
    pub async fn read_key_after(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Option<KvEntry>, ConsulError> {
        let path = format!(
            "/v1/kv/{}?index={index}&wait={}ms",
            key_path(key),
            wait.as_millis()
        );
        let timeout = self.request_timeout + wait;
        match self
            .send_with_timeout("watch key", Method::GET, &path, None, timeout)
            .await
        {
            Ok(bytes) => {
                let entries: Vec<KvEntry> = decode("watch key", &bytes)?;
                Ok(entries.into_iter().next())
            }
            Err(ConsulError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ConsulError> {
        let body = match body {
            Some(body) => Some(serde_json::to_vec(body).map_err(|e| ConsulError::Decode {
                op,
                message: e.to_string(),
            })?),
            None => None,
        };
        self.send_raw(op, method, path, body).await
    }

    async fn send_raw(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ConsulError> {
        self.send_with_timeout(op, method, path, body, self.request_timeout)
            .await
    }

    async fn send_with_timeout(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ConsulError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", &token.0);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| ConsulError::Unreachable {
            op,
            message: if e.is_connect() {
                "connection failed".into()
            } else if e.is_timeout() {
                "timed out".into()
            } else {
                "request failed".into()
            },
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|_| ConsulError::Unreachable {
                op,
                message: "reading the answer failed".into(),
            })?
            .to_vec();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(ConsulError::Status {
                op,
                status: status.as_u16(),
                message: text.chars().take(300).collect(),
            });
        }
        Ok(bytes)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    op: &'static str,
    bytes: &[u8],
) -> Result<T, ConsulError> {
    serde_json::from_slice(bytes).map_err(|e| ConsulError::Decode {
        op,
        message: e.to_string(),
    })
}

fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A KV key keeps its `/` separators; each segment is encoded.
fn key_path(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

// ------------------------------------------------------------------ service registration

/// What to register: the API service and its metrics companion.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// Service name, e.g. `<cluster>-agent-coordinator`.
    pub name: String,
    /// Unique per instance, e.g. `<name>-<host>-<port>`.
    pub id: String,
    /// Advertised address; `None` lets Consul use the agent's address.
    pub address: Option<String>,
    pub port: u16,
    pub metrics_port: u16,
    pub tags: Vec<String>,
    pub meta: std::collections::BTreeMap<String, String>,
    pub check_interval: Duration,
    pub deregister_after: Duration,
}

impl RegistrationConfig {
    /// The API service and the metrics service definitions.
    pub fn definitions(&self) -> [ServiceDefinition; 2] {
        let host = self.address.clone().unwrap_or_else(|| "127.0.0.1".into());
        let check = |port: u16, path: &str| ServiceCheck {
            http: format!("http://{host}:{port}{path}"),
            interval: format!("{}s", self.check_interval.as_secs().max(1)),
            timeout: "5s".into(),
            deregister_critical_service_after: format!(
                "{}s",
                self.deregister_after.as_secs().max(60)
            ),
        };
        let mut meta = self.meta.clone();
        meta.insert("metrics_port".into(), self.metrics_port.to_string());
        let api = ServiceDefinition {
            id: self.id.clone(),
            name: self.name.clone(),
            tags: self.tags.clone(),
            address: self.address.clone(),
            port: self.port,
            meta: meta.clone(),
            check: check(self.port, "/health"),
        };
        let mut metrics_tags = self.tags.clone();
        metrics_tags.extend(["metrics".to_string(), "prometheus".to_string()]);
        let metrics = ServiceDefinition {
            id: format!("{}-metrics", self.id),
            name: format!("{}-metrics", self.name),
            tags: metrics_tags,
            address: self.address.clone(),
            port: self.metrics_port,
            meta,
            check: check(self.metrics_port, "/metrics"),
        };
        [api, metrics]
    }
}

/// Registered services; [`Registration::deregister`] removes them (on SIGTERM).
#[derive(Debug)]
pub struct Registration {
    client: ConsulClient,
    ids: Vec<String>,
}

/// Registers the coordinator's API and metrics services.
pub async fn register(
    client: &ConsulClient,
    config: &RegistrationConfig,
) -> Result<Registration, ConsulError> {
    let mut ids = Vec::new();
    for service in config.definitions() {
        client.register_service(&service).await?;
        info!(service = %service.name, id = %service.id, port = service.port, "registered in consul");
        ids.push(service.id);
    }
    Ok(Registration {
        client: client.clone(),
        ids,
    })
}

impl Registration {
    pub async fn deregister(self) -> Result<(), ConsulError> {
        let mut first_error = None;
        for id in &self.ids {
            match self.client.deregister_service(id).await {
                Ok(()) => info!(id = %id, "deregistered from consul"),
                Err(e) => {
                    warn!(id = %id, error = %e, "consul deregistration failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

// ------------------------------------------------------------------ leader lock

/// Settings of the leader lock.
#[derive(Debug, Clone)]
pub struct LockConfig {
    /// KV key of the lock, e.g. `service/<cluster>-agent-coordinator/leader`.
    pub key: String,
    pub session_name: String,
    /// Session TTL (Consul's minimum is 10s); renewed every TTL/2.
    pub ttl: Duration,
    /// Consul's lock delay after a session is invalidated.
    pub lock_delay: Duration,
    /// How often the key is checked (and the lock tried while following).
    pub check_interval: Duration,
    /// Written as the key's value: who holds the lock.
    pub holder: String,
}

impl LockConfig {
    pub fn new(key: impl Into<String>, holder: impl Into<String>) -> LockConfig {
        LockConfig {
            key: key.into(),
            session_name: "agent-orchestrator-leader".into(),
            ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(15),
            check_interval: Duration::from_secs(1),
            holder: holder.into(),
        }
    }
}

/// Whether this coordinator holds the lock, and the lock's `LockIndex` (the fencing token)
/// when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    pub leader: bool,
    pub fence: u64,
}

/// Campaigns for the lock until `shutdown` turns true; then releases it and destroys the
/// session. The receiver starts as "not leader".
pub fn spawn_leader_lock(
    client: ConsulClient,
    config: LockConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<Leadership>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Leadership::default());
    let handle = tokio::spawn(async move {
        let mut session: Option<String> = None;
        let mut last_renew = Instant::now();
        let mut leading = false;
        // The key's ModifyIndex while leading: the next read blocks until it changes.
        let mut watch_index = 0u64;
        let publish = |leader: bool, fence: u64| {
            tx.send_if_modified(|current| {
                let next = Leadership {
                    leader,
                    fence: if leader { fence } else { current.fence },
                };
                let changed = *current != next;
                *current = next;
                changed
            });
        };
        loop {
            if *shutdown.borrow() {
                break;
            }
            let round = step(
                &client,
                &config,
                &mut session,
                &mut last_renew,
                &mut leading,
                &mut watch_index,
            );
            let result = tokio::select! {
                result = round => result,
                // Any change (or a dropped sender) means shutdown.
                _ = shutdown.changed() => break,
            };
            let watching = matches!(result, Ok(Some(_)));
            match result {
                Ok(Some(fence)) => publish(true, fence),
                Ok(None) => publish(false, 0),
                Err(e) => {
                    if leading {
                        warn!(error = %e, "leader lock: lost leadership");
                    } else {
                        debug!(error = %e, "leader lock: not acquired");
                    }
                    leading = false;
                    watch_index = 0;
                    publish(false, 0);
                }
            }
            // While leading, the blocking read did the waiting.
            let pause = if watching {
                Duration::from_millis(20)
            } else {
                config.check_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
        publish(false, 0);
        if let Some(id) = session {
            if leading {
                let _ = client.release(&config.key, &id).await;
            }
            let _ = client.destroy_session(&id).await;
            info!("leader lock released");
        }
    });
    (rx, handle)
}

/// One round: keep the session alive, try or confirm the lock. `Some(fence)` while leading.
async fn step(
    client: &ConsulClient,
    config: &LockConfig,
    session: &mut Option<String>,
    last_renew: &mut Instant,
    leading: &mut bool,
    watch_index: &mut u64,
) -> Result<Option<u64>, ConsulError> {
    let id = match session.clone() {
        Some(id) if last_renew.elapsed() >= config.ttl / 2 => {
            if client.renew_session(&id).await? {
                *last_renew = Instant::now();
                id
            } else {
                *session = None;
                if *leading {
                    warn!("leader lock: the session expired; leadership lost");
                }
                *leading = false;
                *watch_index = 0;
                return Ok(None);
            }
        }
        Some(id) => id,
        None => {
            let id = client
                .create_session(&config.session_name, config.ttl, config.lock_delay)
                .await?;
            *session = Some(id.clone());
            *last_renew = Instant::now();
            id
        }
    };
    if !*leading && !client.acquire(&config.key, &id, &config.holder).await? {
        return Ok(None);
    }
    let entry = if *leading && *watch_index > 0 {
        // Block until the key changes, but wake in time for the next renew.
        let wait = (config.ttl / 2)
            .saturating_sub(last_renew.elapsed())
            .max(Duration::from_millis(50));
        client.read_key_after(&config.key, *watch_index, wait).await
    } else {
        client.read_key(&config.key).await
    };
    let entry = match entry {
        Ok(entry) => entry,
        Err(e) => {
            *leading = false;
            *watch_index = 0;
            return Err(e);
        }
    };
    match entry {
        Some(entry) if entry.session.as_deref() == Some(id.as_str()) => {
            if !*leading {
                info!(key = %config.key, fence = entry.lock_index, "leader lock acquired");
            }
            *leading = true;
            *watch_index = entry.modify_index;
            Ok(Some(entry.lock_index))
        }
        _ => {
            if *leading {
                warn!(key = %config.key, "leader lock: the key is no longer held by this session");
            }
            *leading = false;
            *watch_index = 0;
            // Our session may have been invalidated; a renew tells, next round.
            *last_renew = Instant::now()
                .checked_sub(config.ttl)
                .unwrap_or(*last_renew);
            Ok(None)
        }
    }
}
