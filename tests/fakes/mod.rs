//! In-process stand-ins for Nomad and Consul (axum on a loopback port). Requests and responses
//! follow the official API doc samples in `../shared/fixtures` (see its PROVENANCE.md): every
//! response body starts from a fixture file, loaded at test time, with only the fields that
//! carry state (ids, indexes, statuses) filled in. Tests skip when the fixtures are absent.
#![allow(dead_code)]

pub mod consul;
pub mod harness;
pub mod nomad;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `../shared/fixtures` (or `AO_FIXTURES`), if present.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    dir.join("nomad-api").is_dir().then_some(dir)
}

/// Returns the fixtures dir or prints why the test is skipped.
#[macro_export]
macro_rules! fixtures_or_skip {
    () => {
        match $crate::fakes::fixtures_dir() {
            Some(dir) => dir,
            None => {
                eprintln!("skipped: ../shared/fixtures is absent (set AO_FIXTURES)");
                return;
            }
        }
    };
}

pub fn load(dir: &std::path::Path, rel: &str) -> serde_json::Value {
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// One request as a fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Serves `router` on a free loopback port until the returned guard drops.
pub struct Server {
    pub addr: std::net::SocketAddr,
    handle: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(router: axum::Router) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        Server::serve(listener, router)
    }

    pub async fn start_on(addr: std::net::SocketAddr, router: axum::Router) -> Server {
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => return Server::serve(listener, router),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> Server {
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server { addr, handle }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.handle.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

pub type Shared<T> = Arc<Mutex<T>>;

/// Guards a future with a timeout (every await in these tests).
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// Polls `check` every 20 ms until it is true, for at most `secs`.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    within(secs, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
