//! End-to-end throughput of the coordinator on the embedded default: a burst of no-op tasks
//! submitted through the HTTP API, dispatched and completed; then a steady 500 tasks/s stream.
//! Prints tasks/s, p50/p99 submit-to-start latency (task `created_at` → attempt 1
//! `dispatched_at`) and the coordinator's RSS. `cargo bench --bench throughput`;
//! `AO_BENCH_TASKS` sets the burst size (default 5000).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_agent-orchestrator");

fn main() {
    let burst: usize = std::env::var("AO_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "agent-orchestrator throughput ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let echo = r#"{"cluster_name": "bench", "task_queue_size": 1000000, "agent_types": {
        "echo": {"image": "builtin", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": 256}}}"#;
    rt.block_on(scenario(
        "built-in no-op agent (in-process)",
        echo,
        burst,
        500,
    ));
    let proc_agent = r#"{"cluster_name": "bench", "task_queue_size": 1000000, "agent_types": {
        "noop": {"image": "local", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": 32, "command": "true"}}}"#;
    rt.block_on(scenario(
        "subprocess no-op agent (`true`)",
        proc_agent,
        burst.min(1000),
        200,
    ));
}

struct Server {
    child: Child,
    base: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

async fn start(inputs: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inputs.json");
    std::fs::write(&path, inputs).expect("inputs");
    let (api, metrics) = (port(), port());
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--inputs",
        ])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let base = format!("http://127.0.0.1:{api}");
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Server {
        child,
        base,
        metrics: format!("http://127.0.0.1:{metrics}/metrics"),
        _dir: dir,
    }
}

async fn submit_all(
    client: &reqwest::Client,
    base: &str,
    agent_type: &str,
    n: usize,
    rate: Option<f64>,
) -> Vec<String> {
    let client = Arc::new(client.clone());
    let mut handles = Vec::new();
    let concurrency = 32;
    let began = Instant::now();
    for worker in 0..concurrency {
        let client = client.clone();
        let base = base.to_string();
        let agent_type = agent_type.to_string();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = worker;
            while i < n {
                if let Some(rate) = rate {
                    let due = began + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = json!({"agent_type": agent_type, "payload": {"i": i}});
                if let Ok(r) = client
                    .post(format!("{base}/tasks"))
                    .json(&body)
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<Value>().await {
                        if let Some(id) = v["id"].as_str() {
                            ids.push(id.to_string());
                        }
                    }
                }
                i += concurrency;
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.unwrap_or_default());
    }
    ids
}

/// Waits until `n` tasks succeeded (the coordinator's own `tasks_total` counter), then reads
/// them back through the paged list.
async fn wait_done(client: &reqwest::Client, server: &Server, n: usize) -> Vec<Value> {
    loop {
        let text = client
            .get(&server.metrics)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let done: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("agent_orchestrator_tasks_total{")
                    && l.contains("outcome=\"succeeded\"")
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        if done as usize >= n {
            return list(client, &server.base, "succeeded").await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn list(client: &reqwest::Client, base: &str, status: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = format!("{base}/tasks?status={status}&limit=1000{cursor}");
        let page: Value = client
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        out.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latencies(tasks: &[Value], ids: &std::collections::HashSet<String>) -> Vec<i64> {
    let mut l: Vec<i64> = tasks
        .iter()
        .filter(|t| t["id"].as_str().is_some_and(|id| ids.contains(id)))
        .filter_map(|t| {
            Some(t["attempts"][0]["dispatched_at"].as_i64()? - t["created_at"].as_i64()?)
        })
        .collect();
    l.sort();
    l
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn scenario(name: &str, inputs: &str, burst: usize, rate: usize) {
    let agent_type = if inputs.contains("\"echo\"") {
        "echo"
    } else {
        "noop"
    };
    let server = start(inputs).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    println!("\n== {name}");

    let began = Instant::now();
    let ids = submit_all(&client, &server.base, agent_type, burst, None).await;
    let submitted = began.elapsed();
    let tasks = wait_done(&client, &server, ids.len()).await;
    let elapsed = began.elapsed();
    let idset: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let lat = latencies(&tasks, &idset);
    println!(
        "burst of {}: submitted in {:.2}s, all succeeded in {:.2}s -> {:.0} tasks/s end to end; submit->start p50 {} ms, p99 {} ms",
        ids.len(),
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        ids.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    let n = rate * 4;
    let ids = submit_all(&client, &server.base, agent_type, n, Some(rate as f64)).await;
    let tasks = wait_done(&client, &server, ids.len() + idset.len()).await;
    let steady: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let lat = latencies(&tasks, &steady);
    println!(
        "steady {rate} tasks/s for 4 s ({} tasks): submit->start p50 {} ms, p99 {} ms",
        ids.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let pid = server.child.id();
    println!(
        "coordinator RSS now {} MiB, peak {} MiB",
        rss_kib(pid, "VmRSS:") / 1024,
        rss_kib(pid, "VmHWM:") / 1024
    );
}
