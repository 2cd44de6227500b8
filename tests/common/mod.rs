//! Harness for end-to-end tests: starts the real `agent-orchestrator serve` binary on free
//! loopback ports with its own data dir, and talks to it over HTTP.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-orchestrator");

/// moto server's endpoint, or `None` (with a message) when a test should skip.
pub fn moto(test: &str) -> Option<String> {
    match std::env::var("AO_TEST_MOTO_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping {test}: AO_TEST_MOTO_URL is not set (tests/run.sh starts moto server and sets it)");
            None
        }
    }
}

/// How one start of `serve` went.
enum Started {
    Healthy,
    /// Another process took the port between `free_port` and the bind.
    PortTaken,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes an inputs file whose agent types run `sh -c SCRIPT` with the given limits.
pub fn shell_inputs(dir: &Path, types: &[(&str, u32, &str)]) -> PathBuf {
    let mut agent_types = serde_json::Map::new();
    for (name, max, script) in types {
        agent_types.insert(
            name.to_string(),
            json!({"image": "local", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": max,
                   "command": "sh", "args": ["-c", script]}),
        );
    }
    let path = dir.join("inputs.tfvars.json");
    let inputs =
        json!({"cluster_name": "test", "agent_types": agent_types, "task_queue_size": 100000});
    std::fs::write(&path, serde_json::to_vec_pretty(&inputs).unwrap()).unwrap();
    path
}

pub struct Coordinator {
    pub child: Option<Child>,
    pub base: String,
    pub metrics: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    api_port: u16,
    metrics_port: u16,
    log: PathBuf,
}

impl Coordinator {
    /// Starts `serve` with `extra` flags and waits until `/health` answers.
    pub fn start(dir: &Path, extra: &[&str]) -> Coordinator {
        let api_port = free_port();
        let metrics_port = free_port();
        let mut c = Coordinator {
            child: None,
            base: format!("http://127.0.0.1:{api_port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            data_dir: dir.join("data"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            api_port,
            metrics_port,
            log: dir.join("serve.log"),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        // `free_port` only finds a port that was free a moment ago: when another test's
        // process took it meanwhile, start again on fresh ports rather than fail.
        for _ in 0..5 {
            let logged_before = self.log_text().len();
            match self.spawn_once() {
                Started::Healthy => return,
                Started::PortTaken => {
                    let tail = self
                        .log_text()
                        .get(logged_before..)
                        .unwrap_or("")
                        .to_string();
                    eprintln!("serve lost its port to another process, retrying: {tail}");
                    self.api_port = free_port();
                    self.metrics_port = free_port();
                    self.base = format!("http://127.0.0.1:{}", self.api_port);
                    self.metrics = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
                }
            }
        }
        panic!("serve never found a free port: {}", self.log_text());
    }

    fn spawn_once(&mut self) -> Started {
        let logged_before = self.log_text().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log_text();
                let this_run = log.get(logged_before..).unwrap_or("");
                if this_run.contains("cannot listen on")
                    && this_run.contains("Address already in use")
                {
                    return Started::PortTaken;
                }
                panic!(
                    "serve exited early with {status}: {log}\nlock holders: {:?}",
                    lock_holders(&self.data_dir)
                );
            }
            if blocking_client()
                .get(format!("{}/health", self.base))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return Started::Healthy;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("serve did not become healthy: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        None
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn submit(&self, body: Value) -> (u16, Value) {
        let r = blocking_client()
            .post(format!("{}/tasks", self.base))
            .json(&body)
            .send()
            .expect("submit");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = blocking_client()
            .get(format!("{}{path}", self.base))
            .send()
            .expect("get");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = blocking_client()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("post");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn task(&self, id: &str) -> Value {
        self.get(&format!("/tasks/{id}")).1
    }

    /// Polls until the task is terminal; panics after `limit`.
    pub fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let task = self.task(id);
            let status = task["status"].as_str().unwrap_or("");
            if ["succeeded", "failed", "cancelled", "timed_out"].contains(&status) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not terminal after {limit:?}: {task}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every task, through the paged list.
    pub fn all_tasks(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/tasks?limit=1000&cursor={c}"),
                None => "/tasks?limit=1000".to_string(),
            };
            let (status, page) = self.get(&path);
            assert_eq!(status, 200, "{page}");
            out.extend(page["tasks"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    pub fn scrape(&self) -> String {
        blocking_client()
            .get(&self.metrics)
            .send()
            .and_then(|r| r.text())
            .expect("scrape")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn blocking_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Reads a Prometheus sample value, e.g. `metric("…tasks_total", &[("agent_type","a")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Lines `start|end TYPE NANOS TASK_ID ATTEMPT` that the test agents append to a log.
#[derive(Debug)]
pub struct Event {
    pub start: bool,
    pub agent_type: String,
    pub at: u128,
    pub task_id: String,
}

pub fn read_events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            if parts.len() < 4 {
                return None;
            }
            Some(Event {
                start: parts[0] == "start",
                agent_type: parts[1].into(),
                at: parts[2].parse().ok()?,
                task_id: parts[3].into(),
            })
        })
        .collect()
}

/// An agent script that logs start/end lines to `log` around `body`.
pub fn logging_script(log: &Path, body: &str) -> String {
    let log = log.display();
    format!(
        "echo \"start $AO_AGENT_TYPE $(date +%s%N) $AO_TASK_ID $AO_ATTEMPT\" >> {log}; {body}; echo \"end $AO_AGENT_TYPE $(date +%s%N) $AO_TASK_ID $AO_ATTEMPT\" >> {log}"
    )
}

/// Highest number of overlapping runs per agent type, from start/end events.
pub fn max_concurrency(events: &[Event], agent_type: &str) -> usize {
    let mut points: Vec<(u128, i32)> = events
        .iter()
        .filter(|e| e.agent_type == agent_type)
        .map(|e| (e.at, if e.start { 1 } else { -1 }))
        .collect();
    // Ends before starts at the same instant.
    points.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in points {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Processes with the data dir's lock file open (diagnostics for a refused restart).
pub fn lock_holders(data_dir: &Path) -> Vec<String> {
    let lock = data_dir.join("coordinator.lock");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let fds = entry.path().join("fd");
        let holds = std::fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == lock));
        if holds {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            out.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}
