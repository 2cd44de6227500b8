//! A fake Consul agent: service (de)registration, sessions (create, renew, destroy, release
//! behaviour) and KV locks with `acquire`/`release` and `LockIndex`. Bodies come from
//! `fixtures/consul-api` (session create/renew, KV read samples).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::{load, parse_query, percent_decode, Recorded, Server};

#[derive(Debug, Clone)]
pub struct KvItem {
    pub value: Vec<u8>,
    pub session: Option<String>,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Default)]
pub struct State {
    pub index: u64,
    pub services: BTreeMap<String, Value>,
    pub registered: Vec<String>,
    pub deregistered: Vec<String>,
    pub sessions: BTreeMap<String, Value>,
    pub kv: BTreeMap<String, KvItem>,
    pub requests: Vec<Recorded>,
}

struct Fixtures {
    session_create: Value,
    session_renew: Value,
    kv_read: Value,
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<State>>,
    fixtures: Arc<Fixtures>,
}

pub struct FakeConsul {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
}

impl FakeConsul {
    pub async fn start(fixtures: &Path) -> FakeConsul {
        let fixtures = Arc::new(Fixtures {
            session_create: load(fixtures, "consul-api/session/create.response.json"),
            session_renew: load(fixtures, "consul-api/session/renew.response.json"),
            kv_read: load(fixtures, "consul-api/kv/read.response.json"),
        });
        let state = Arc::new(Mutex::new(State::default()));
        let app = App {
            state: state.clone(),
            fixtures,
        };
        let router = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let app = app.clone();
                async move {
                    block_on_key(&app, &method, &uri).await;
                    handle(app, method, uri, headers, body)
                }
            },
        );
        FakeConsul {
            server: Server::start(router).await,
            state,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The session holding `key`, if any.
    pub fn holder(&self, key: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .kv
            .get(key)
            .and_then(|k| k.session.clone())
    }

    pub fn lock_index(&self, key: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .kv
            .get(key)
            .map_or(0, |k| k.lock_index)
    }

    /// Invalidates a session as Consul does when its TTL runs out (behaviour `release`).
    pub fn kill_session(&self, id: &str) {
        destroy(&mut self.state.lock().unwrap(), id);
    }
}

/// A blocking KV read (`?index=N&wait=`) waits until the key's ModifyIndex passes N.
async fn block_on_key(app: &App, method: &Method, uri: &Uri) {
    let path = uri.path();
    if method != Method::GET || !path.starts_with("/v1/kv/") {
        return;
    }
    let query = parse_query(uri.query());
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(index) = param("index").and_then(|i| i.parse::<u64>().ok()) else {
        return;
    };
    let wait = param("wait")
        .and_then(|w| w.strip_suffix("ms").and_then(|w| w.parse().ok()))
        .map(std::time::Duration::from_millis)
        .unwrap_or(std::time::Duration::from_secs(5))
        .min(std::time::Duration::from_secs(5));
    let key = percent_decode(&path["/v1/kv/".len()..]);
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        let current = app
            .state
            .lock()
            .unwrap()
            .kv
            .get(&key)
            .map_or(u64::MAX, |k| k.modify_index);
        if current > index {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn destroy(s: &mut State, id: &str) {
    s.sessions.remove(id);
    s.index += 1;
    let index = s.index;
    for item in s.kv.values_mut() {
        if item.session.as_deref() == Some(id) {
            item.session = None;
            item.modify_index = index;
        }
    }
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, message.to_string()).into_response()
}

fn json_ok(body: Value, index: u64) -> Response {
    (
        StatusCode::OK,
        [("X-Consul-Index", index.to_string())],
        axum::Json(body),
    )
        .into_response()
}

fn handle(app: App, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let record = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: parse_query(uri.query()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
    };
    let mut s = app.state.lock().unwrap();
    s.requests.push(record.clone());
    let path = uri.path().to_string();
    let rest = path.trim_start_matches('/');
    match method.as_str() {
        "PUT" if rest == "v1/agent/service/register" => {
            let service = record.json();
            let Some(id) = service["ID"].as_str().or(service["Name"].as_str()) else {
                return text(StatusCode::BAD_REQUEST, "Missing service name");
            };
            s.registered.push(id.to_string());
            s.services.insert(id.to_string(), service.clone());
            text(StatusCode::OK, "")
        }
        "PUT" if rest.starts_with("v1/agent/service/deregister/") => {
            let id = percent_decode(&rest["v1/agent/service/deregister/".len()..]);
            if s.services.remove(&id).is_none() {
                return text(StatusCode::NOT_FOUND, &format!("Unknown service ID {id:?}"));
            }
            s.deregistered.push(id);
            text(StatusCode::OK, "")
        }
        "PUT" if rest == "v1/session/create" => {
            let request = record.json();
            let id = uuid::Uuid::new_v4().to_string();
            s.index += 1;
            let mut info = app.fixtures.session_renew[0].clone();
            info["ID"] = json!(id);
            info["Name"] = request["Name"].clone();
            info["TTL"] = request["TTL"].clone();
            info["Behavior"] = request["Behavior"].clone();
            s.sessions.insert(id.clone(), info);
            let mut out = app.fixtures.session_create.clone();
            out["ID"] = json!(id);
            json_ok(out, s.index)
        }
        "PUT" if rest.starts_with("v1/session/renew/") => {
            let id = percent_decode(&rest["v1/session/renew/".len()..]);
            match s.sessions.get(&id) {
                Some(info) => json_ok(json!([info.clone()]), s.index),
                None => text(
                    StatusCode::NOT_FOUND,
                    &format!("Session id '{id}' not found"),
                ),
            }
        }
        "PUT" if rest.starts_with("v1/session/destroy/") => {
            let id = percent_decode(&rest["v1/session/destroy/".len()..]);
            destroy(&mut s, &id);
            json_ok(json!(true), s.index)
        }
        "PUT" if rest.starts_with("v1/kv/") => {
            let key = percent_decode(&rest["v1/kv/".len()..]);
            s.index += 1;
            let index = s.index;
            if let Some(session) = record.param("acquire") {
                if !s.sessions.contains_key(session) {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("invalid session {session:?}"),
                    );
                }
                let item = s.kv.entry(key).or_insert(KvItem {
                    value: Vec::new(),
                    session: None,
                    lock_index: 0,
                    create_index: index,
                    modify_index: index,
                });
                let ok = match &item.session {
                    Some(holder) => holder == session,
                    None => {
                        item.session = Some(session.to_string());
                        item.lock_index += 1;
                        true
                    }
                };
                if ok {
                    item.value = record.body.clone();
                    item.modify_index = index;
                }
                return json_ok(json!(ok), index);
            }
            if let Some(session) = record.param("release") {
                let ok = match s.kv.get_mut(&key) {
                    Some(item) if item.session.as_deref() == Some(session) => {
                        item.session = None;
                        item.modify_index = index;
                        true
                    }
                    _ => false,
                };
                return json_ok(json!(ok), index);
            }
            let item = s.kv.entry(key).or_insert(KvItem {
                value: Vec::new(),
                session: None,
                lock_index: 0,
                create_index: index,
                modify_index: index,
            });
            item.value = record.body.clone();
            item.modify_index = index;
            json_ok(json!(true), index)
        }
        "GET" if rest.starts_with("v1/kv/") => {
            let key = percent_decode(&rest["v1/kv/".len()..]);
            let Some(item) = s.kv.get(&key) else {
                return text(StatusCode::NOT_FOUND, "");
            };
            let mut entry = app.fixtures.kv_read[0].clone();
            entry["Key"] = json!(key);
            entry["CreateIndex"] = json!(item.create_index);
            entry["ModifyIndex"] = json!(item.modify_index);
            entry["LockIndex"] = json!(item.lock_index);
            entry["Value"] = json!(base64::engine::general_purpose::STANDARD.encode(&item.value));
            match &item.session {
                Some(session) => entry["Session"] = json!(session),
                None => {
                    if let Some(map) = entry.as_object_mut() {
                        map.remove("Session");
                    }
                }
            }
            json_ok(json!([entry]), s.index)
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}
