//! A fake Nomad: registers jobs, dispatches children (honouring `idempotency_token`), places
//! and runs their allocations on a simulated clock, stops jobs, answers blocking queries.
//! Bodies come from `fixtures/nomad-api` (dispatch, register, plan, stop, job summary, read
//! job, job list, allocation list samples).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{load, parse_query, percent_decode, Recorded, Server};

/// What happens to a dispatched child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Placed at once, running, complete after `run_for`.
    Complete { run_for: Duration },
    /// Placed and running until stopped.
    Hold,
    /// Never placed (child job stays pending with no allocation).
    Unplaced,
}

#[derive(Debug, Clone)]
pub struct Child {
    pub id: String,
    pub parent: String,
    pub meta: BTreeMap<String, String>,
    pub payload: String,
    pub token: Option<String>,
    pub dispatched_at: Instant,
    pub stopped: bool,
    pub dispatched_with: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Alloc {
    pub id: String,
    pub job_id: String,
    pub client_status: String,
    pub desired_status: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub exit_code: i64,
    pub oom: bool,
}

#[derive(Default)]
pub struct State {
    pub index: u64,
    pub parents: BTreeMap<String, Value>,
    pub children: BTreeMap<String, Child>,
    pub allocs: BTreeMap<String, Alloc>,
    pub requests: Vec<Recorded>,
    /// Answer every request with this status (an outage).
    pub fail_with: Option<u16>,
    pub registrations: u32,
    pub seq: u64,
    /// Just before answering a read of a child job that has no allocation yet, place and
    /// complete one: the cluster moving on between a client's allocation list and its job read.
    pub complete_before_job_read: bool,
}

pub struct FakeNomad {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
    pub mode: Arc<Mutex<Mode>>,
    changed: Arc<Notify>,
    fixtures: Arc<Fixtures>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNomad {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

struct Fixtures {
    dispatch: Value,
    register: Value,
    plan: Value,
    stop: Value,
    summary: Value,
    job: Value,
    job_list: Value,
    alloc: Value,
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    fixtures: Arc<Fixtures>,
}

impl FakeNomad {
    pub async fn start(fixtures: &Path, mode: Mode) -> FakeNomad {
        let fixtures = Arc::new(Fixtures {
            dispatch: load(fixtures, "nomad-api/jobs/dispatch.response.json"),
            register: load(fixtures, "nomad-api/jobs/register.response.json"),
            plan: load(fixtures, "nomad-api/jobs/plan.response.json"),
            stop: load(fixtures, "nomad-api/jobs/stop.response.json"),
            summary: load(fixtures, "nomad-api/jobs/job-summary.response.json"),
            job: load(fixtures, "nomad-api/jobs/read-job.response.json"),
            job_list: load(fixtures, "nomad-api/jobs/list.response.json")[0].clone(),
            alloc: load(fixtures, "nomad-api/allocations/list.response.json")[0].clone(),
        });
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let mode = Arc::new(Mutex::new(mode));
        let app = App {
            state: state.clone(),
            changed: changed.clone(),
            fixtures: fixtures.clone(),
        };
        let server = Server::start(router(app)).await;
        let ticker = tokio::spawn(tick(state.clone(), mode.clone(), changed.clone()));
        FakeNomad {
            server,
            state,
            mode,
            changed,
            fixtures,
            ticker,
        }
    }

    /// Serves again on the same port (after [`FakeNomad::close`]).
    pub async fn reopen(&mut self) {
        let app = App {
            state: self.state.clone(),
            changed: self.changed.clone(),
            fixtures: self.fixtures.clone(),
        };
        self.server = Server::start_on(self.server.addr, router(app)).await;
    }

    /// Closes the port (connection refused until [`FakeNomad::reopen`]).
    pub fn close(&self) {
        self.server.stop();
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_with = status;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn children(&self) -> Vec<Child> {
        self.state
            .lock()
            .unwrap()
            .children
            .values()
            .cloned()
            .collect()
    }

    pub fn children_of_task(&self, task_id: &str) -> Vec<Child> {
        self.children()
            .into_iter()
            .filter(|c| c.meta.get("task_id").map(String::as_str) == Some(task_id))
            .collect()
    }

    /// Sets the latest allocation of `child` (creating one) to a status.
    pub fn set_alloc(&self, child: &str, client_status: &str, exit_code: i64, oom: bool) {
        let mut s = self.state.lock().unwrap();
        s.index += 1;
        let index = s.index;
        let existing = s
            .allocs
            .values()
            .filter(|a| a.job_id == child)
            .max_by_key(|a| a.create_index)
            .map(|a| a.id.clone());
        let id = match existing {
            Some(id) => id,
            None => {
                s.seq += 1;
                let id = format!("{:08x}-0000-0000-0000-{:012x}", s.seq, s.seq);
                s.allocs.insert(
                    id.clone(),
                    Alloc {
                        id: id.clone(),
                        job_id: child.to_string(),
                        client_status: String::new(),
                        desired_status: "run".into(),
                        create_index: index,
                        modify_index: index,
                        exit_code: 0,
                        oom: false,
                    },
                );
                id
            }
        };
        if let Some(a) = s.allocs.get_mut(&id) {
            a.client_status = client_status.into();
            a.exit_code = exit_code;
            a.oom = oom;
            a.modify_index = index;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Removes a child job and its allocations (garbage collection).
    pub fn purge(&self, child: &str) {
        let mut s = self.state.lock().unwrap();
        s.children.remove(child);
        s.allocs.retain(|_, a| a.job_id != child);
        s.index += 1;
    }
}

/// The fake scheduler and clients: places allocations and finishes them per [`Mode`].
async fn tick(state: Arc<Mutex<State>>, mode: Arc<Mutex<Mode>>, changed: Arc<Notify>) {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mode = *mode.lock().unwrap();
        let mut s = state.lock().unwrap();
        let mut touched = false;
        let children: Vec<Child> = s.children.values().cloned().collect();
        for child in children {
            if child.stopped {
                continue;
            }
            let has_alloc = s.allocs.values().any(|a| a.job_id == child.id);
            if !has_alloc {
                if mode == Mode::Unplaced {
                    continue;
                }
                s.index += 1;
                s.seq += 1;
                let id = format!("{:08x}-0000-0000-0000-{:012x}", s.seq, s.seq);
                let index = s.index;
                s.allocs.insert(
                    id.clone(),
                    Alloc {
                        id,
                        job_id: child.id.clone(),
                        client_status: "running".into(),
                        desired_status: "run".into(),
                        create_index: index,
                        modify_index: index,
                        exit_code: 0,
                        oom: false,
                    },
                );
                touched = true;
                continue;
            }
            if let Mode::Complete { run_for } = mode {
                if child.dispatched_at.elapsed() >= run_for {
                    s.index += 1;
                    let index = s.index;
                    for a in s.allocs.values_mut() {
                        if a.job_id == child.id && a.client_status == "running" {
                            a.client_status = "complete".into();
                            a.modify_index = index;
                            touched = true;
                        }
                    }
                }
            }
        }
        drop(s);
        if touched {
            changed.notify_waiters();
        }
    }
}

fn router(app: App) -> axum::Router {
    axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let app = app.clone();
            async move { handle(app, method, uri, headers, body).await }
        },
    )
}

fn json_response(status: StatusCode, body: Value, index: u64) -> Response {
    (
        status,
        [("X-Nomad-Index", index.to_string())],
        axum::Json(body),
    )
        .into_response()
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, message.to_string()).into_response()
}

async fn handle(app: App, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
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
    let fail = {
        let mut s = app.state.lock().unwrap();
        s.requests.push(record.clone());
        s.fail_with
    };
    if let Some(status) = fail {
        return text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "rpc error: No cluster leader",
        );
    }
    let segments: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method.as_str(), seg.as_slice()) {
        ("POST", ["v1", "jobs"]) => register(&app, &record),
        ("POST", ["v1", "job", id, "plan"]) => plan(&app, id, &record),
        ("POST", ["v1", "job", id, "dispatch"]) => dispatch(&app, id, &record),
        ("GET", ["v1", "job", id]) => {
            complete_before_job_read(&app, id);
            read_job(&app, id)
        }
        ("DELETE", ["v1", "job", id]) => stop(&app, id),
        ("GET", ["v1", "job", id, "summary"]) => summary(&app, id),
        ("GET", ["v1", "job", id, "allocations"]) => job_allocations(&app, id),
        ("GET", ["v1", "jobs"]) => list_jobs(&app, record.param("prefix").unwrap_or("")),
        ("GET", ["v1", "allocations"]) => allocations(&app, &record).await,
        _ => text(StatusCode::NOT_FOUND, "Invalid URL"),
    }
}

fn register(app: &App, record: &Recorded) -> Response {
    let body = record.json();
    let Some(id) = body["Job"]["ID"].as_str() else {
        return text(StatusCode::BAD_REQUEST, "Job ID does not match");
    };
    let mut s = app.state.lock().unwrap();
    s.index += 1;
    s.registrations += 1;
    let index = s.index;
    s.parents.insert(id.to_string(), body["Job"].clone());
    let mut out = app.fixtures.register.clone();
    out["JobModifyIndex"] = json!(index);
    out["Index"] = json!(index);
    json_response(StatusCode::OK, out, index)
}

fn plan(app: &App, id: &str, record: &Recorded) -> Response {
    let body = record.json();
    let s = app.state.lock().unwrap();
    let kind = match s.parents.get(id) {
        None => "Added",
        Some(job) if *job == body["Job"] => "None",
        Some(_) => "Edited",
    };
    let mut out = app.fixtures.plan.clone();
    out["Diff"]["Type"] = json!(kind);
    out["Diff"]["ID"] = json!(id);
    json_response(StatusCode::OK, out, s.index)
}

fn dispatch(app: &App, parent: &str, record: &Recorded) -> Response {
    let body = record.json();
    let mut s = app.state.lock().unwrap();
    if !s.parents.contains_key(parent) {
        return text(StatusCode::NOT_FOUND, "job not found");
    }
    let token = record.param("idempotency_token").map(String::from);
    if let Some(token) = &token {
        let existing = s
            .children
            .values()
            .find(|c| c.parent == parent && c.token.as_deref() == Some(token.as_str()))
            .map(|c| c.id.clone());
        if let Some(existing) = existing {
            let mut out = app.fixtures.dispatch.clone();
            out["DispatchedJobID"] = json!(existing);
            out["Index"] = json!(s.index);
            return json_response(StatusCode::OK, out, s.index);
        }
    }
    let meta: BTreeMap<String, String> =
        serde_json::from_value(body["Meta"].clone()).unwrap_or_default();
    if !meta.contains_key("task_id") {
        return text(
            StatusCode::BAD_REQUEST,
            "Dispatch did not provide required meta keys: [task_id]",
        );
    }
    // Nomad refuses meta keys the parameterized block does not declare.
    let declared = |field: &str| -> Vec<String> {
        serde_json::from_value(s.parents[parent]["ParameterizedJob"][field].clone())
            .unwrap_or_default()
    };
    let permitted = [declared("MetaRequired"), declared("MetaOptional")].concat();
    let unpermitted: Vec<&String> = meta.keys().filter(|k| !permitted.contains(k)).collect();
    if !unpermitted.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("Dispatch provided unpermitted meta keys: {unpermitted:?}"),
        );
    }
    s.index += 1;
    s.seq += 1;
    let index = s.index;
    let prefix = body["IdPrefixTemplate"]
        .as_str()
        .map(|p| format!("{p}-"))
        .unwrap_or_default();
    let child_id = format!(
        "{parent}/dispatch-{prefix}{}-{:08x}",
        1_700_000_000 + s.seq,
        s.seq
    );
    s.children.insert(
        child_id.clone(),
        Child {
            id: child_id.clone(),
            parent: parent.to_string(),
            meta,
            payload: body["Payload"].as_str().unwrap_or("").to_string(),
            token,
            dispatched_at: Instant::now(),
            stopped: false,
            dispatched_with: record.header("X-Nomad-Token").map(String::from),
        },
    );
    let mut out = app.fixtures.dispatch.clone();
    out["DispatchedJobID"] = json!(child_id);
    out["Index"] = json!(index);
    out["JobCreateIndex"] = json!(index);
    out["EvalCreateIndex"] = json!(index);
    drop(s);
    app.changed.notify_waiters();
    json_response(StatusCode::OK, out, index)
}

fn child_status(s: &State, child: &Child) -> &'static str {
    let allocs: Vec<&Alloc> = s.allocs.values().filter(|a| a.job_id == child.id).collect();
    if child.stopped
        || allocs
            .iter()
            .any(|a| matches!(a.client_status.as_str(), "complete" | "failed" | "lost"))
    {
        "dead"
    } else if allocs.iter().any(|a| a.client_status == "running") {
        "running"
    } else {
        "pending"
    }
}

/// See [`State::complete_before_job_read`].
fn complete_before_job_read(app: &App, id: &str) {
    let mut s = app.state.lock().unwrap();
    if !s.complete_before_job_read
        || !s.children.contains_key(id)
        || s.allocs.values().any(|a| a.job_id == id)
    {
        return;
    }
    s.index += 1;
    s.seq += 1;
    let index = s.index;
    let alloc = format!("{:08x}-0000-0000-0000-{:012x}", s.seq, s.seq);
    s.allocs.insert(
        alloc.clone(),
        Alloc {
            id: alloc,
            job_id: id.to_string(),
            client_status: "complete".into(),
            desired_status: "run".into(),
            create_index: index,
            modify_index: index,
            exit_code: 0,
            oom: false,
        },
    );
    drop(s);
    app.changed.notify_waiters();
}

fn read_job(app: &App, id: &str) -> Response {
    let s = app.state.lock().unwrap();
    let mut out = app.fixtures.job.clone();
    if let Some(child) = s.children.get(id) {
        out["ID"] = json!(child.id);
        out["Name"] = json!(child.id);
        out["ParentID"] = json!(child.parent);
        out["Meta"] = json!(child.meta);
        out["Status"] = json!(child_status(&s, child));
        out["Stop"] = json!(child.stopped);
        out["Type"] = json!("batch");
        return json_response(StatusCode::OK, out, s.index);
    }
    if let Some(job) = s.parents.get(id) {
        out["ID"] = json!(id);
        out["Name"] = json!(id);
        out["Meta"] = job["Meta"].clone();
        out["Status"] = json!("running");
        return json_response(StatusCode::OK, out, s.index);
    }
    text(StatusCode::NOT_FOUND, "job not found")
}

fn stop(app: &App, id: &str) -> Response {
    let mut s = app.state.lock().unwrap();
    if !s.children.contains_key(id) && !s.parents.contains_key(id) {
        return text(StatusCode::NOT_FOUND, "job not found");
    }
    s.index += 1;
    let index = s.index;
    if let Some(child) = s.children.get_mut(id) {
        child.stopped = true;
    }
    for a in s.allocs.values_mut() {
        if a.job_id == id {
            a.desired_status = "stop".into();
            if matches!(a.client_status.as_str(), "pending" | "running") {
                a.client_status = "complete".into();
            }
            a.modify_index = index;
        }
    }
    let mut out = app.fixtures.stop.clone();
    out["JobModifyIndex"] = json!(index);
    out["EvalCreateIndex"] = json!(index);
    drop(s);
    app.changed.notify_waiters();
    json_response(StatusCode::OK, out, index)
}

fn summary(app: &App, id: &str) -> Response {
    let s = app.state.lock().unwrap();
    if !s.parents.contains_key(id) {
        return text(StatusCode::NOT_FOUND, "job not found");
    }
    let (mut pending, mut running, mut dead) = (0, 0, 0);
    for child in s.children.values().filter(|c| c.parent == id) {
        match child_status(&s, child) {
            "pending" => pending += 1,
            "running" => running += 1,
            _ => dead += 1,
        }
    }
    let mut out = app.fixtures.summary.clone();
    out["JobID"] = json!(id);
    out["Children"] = json!({"Pending": pending, "Running": running, "Dead": dead});
    json_response(StatusCode::OK, out, s.index)
}

fn alloc_json(app: &App, a: &Alloc) -> Value {
    let mut out = app.fixtures.alloc.clone();
    out["ID"] = json!(a.id);
    out["JobID"] = json!(a.job_id);
    out["Name"] = json!(format!("{}.agent[0]", a.job_id));
    out["TaskGroup"] = json!("agent");
    out["JobType"] = json!("batch");
    out["ClientStatus"] = json!(a.client_status);
    out["DesiredStatus"] = json!(a.desired_status);
    out["CreateIndex"] = json!(a.create_index);
    out["ModifyIndex"] = json!(a.modify_index);
    // The sample's task state, renamed to our task `agent`, with a final event per status.
    let template = out["TaskStates"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .unwrap_or_else(|| json!({"Events": []}));
    let mut state = template;
    let mut events = state["Events"].as_array().cloned().unwrap_or_default();
    let mut last = events.last().cloned().unwrap_or_else(|| json!({}));
    match a.client_status.as_str() {
        "complete" | "failed" => {
            last["Type"] = json!("Terminated");
            last["ExitCode"] = json!(a.exit_code);
            last["Details"] = json!({
                "exit_code": a.exit_code.to_string(),
                "oom_killed": a.oom.to_string(),
                "signal": "0",
            });
            last["DisplayMessage"] = json!(format!("Exit Code: {}", a.exit_code));
            events.push(last);
            state["State"] = json!("dead");
            state["Failed"] = json!(a.client_status == "failed");
        }
        "running" => state["State"] = json!("running"),
        _ => state["State"] = json!("pending"),
    }
    state["Events"] = json!(events);
    out["TaskStates"] = json!({"agent": state});
    out
}

fn job_allocations(app: &App, id: &str) -> Response {
    let s = app.state.lock().unwrap();
    // Like Nomad: an unknown job has no allocations (an empty list, not 404).
    let list: Vec<Value> = s
        .allocs
        .values()
        .filter(|a| a.job_id == id)
        .map(|a| alloc_json(app, a))
        .collect();
    json_response(StatusCode::OK, json!(list), s.index)
}

fn list_jobs(app: &App, prefix: &str) -> Response {
    let s = app.state.lock().unwrap();
    let mut list = Vec::new();
    for child in s.children.values().filter(|c| c.id.starts_with(prefix)) {
        let mut stub = app.fixtures.job_list.clone();
        stub["ID"] = json!(child.id);
        stub["Name"] = json!(child.id);
        stub["ParentID"] = json!(child.parent);
        stub["Status"] = json!(child_status(&s, child));
        stub["Type"] = json!("batch");
        list.push(stub);
    }
    for id in s.parents.keys().filter(|id| id.starts_with(prefix)) {
        let mut stub = app.fixtures.job_list.clone();
        stub["ID"] = json!(id);
        stub["Name"] = json!(id);
        stub["ParentID"] = json!("");
        list.push(stub);
    }
    json_response(StatusCode::OK, json!(list), s.index)
}

async fn allocations(app: &App, record: &Recorded) -> Response {
    let index: u64 = record
        .param("index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wait = record
        .param("wait")
        .and_then(|w| w.strip_suffix("ms"))
        .and_then(|w| w.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(2));
    let current = app.state.lock().unwrap().index;
    if index >= current {
        let _ = tokio::time::timeout(wait, app.changed.notified()).await;
    }
    let s = app.state.lock().unwrap();
    let list: Vec<Value> = s.allocs.values().map(|a| alloc_json(app, a)).collect();
    json_response(StatusCode::OK, json!(list), s.index)
}

/// Every child job's dispatching token, by task id.
pub fn dispatchers(children: &[Child]) -> HashMap<String, Vec<Option<String>>> {
    let mut out: HashMap<String, Vec<Option<String>>> = HashMap::new();
    for c in children {
        if let Some(t) = c.meta.get("task_id") {
            out.entry(t.clone())
                .or_default()
                .push(c.dispatched_with.clone());
        }
    }
    out
}
