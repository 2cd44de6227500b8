//! Builds real scheduler `Context`s (SQLite in memory) around the Nomad executor and the fakes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_orchestrator::config::source::Format;
use agent_orchestrator::config::{self, Inputs};
use agent_orchestrator::executor::nomad::client::{NomadClientConfig, RetryPolicy, Secret};
use agent_orchestrator::executor::nomad::{NomadExecutor, NomadExecutorConfig};
use agent_orchestrator::executor::ChangeNotifier;
use agent_orchestrator::intake::{self, SubmitRequest};
use agent_orchestrator::scheduler::{Context, Settings};
use agent_orchestrator::store::sqlite::SqliteBackend;
use agent_orchestrator::task::{Status, Task};
use tokio::sync::{mpsc, watch};

use super::within;

/// Inputs for the rendered jobs in `jobs/` (cluster `dev`): `coder` and `tester`.
pub fn inputs(coder_max: u32, tester_max: u32) -> Inputs {
    inputs_with_coder_timeout(coder_max, tester_max, None)
}

/// Like [`inputs`], with the coder type's `timeout` (e.g. `"1s"`).
pub fn inputs_with_coder_timeout(coder_max: u32, tester_max: u32, timeout: Option<&str>) -> Inputs {
    let mut src = serde_json::json!({
        "cluster_name": "dev",
        "agent_types": {
            "coder": {"image": "img", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": coder_max},
            "tester": {"image": "img", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": tester_max}
        }
    });
    if let Some(timeout) = timeout {
        src["agent_types"]["coder"]["timeout"] = serde_json::json!(timeout);
    }
    config::decode(&src.to_string(), Format::Json, "test inputs").expect("inputs")
}

pub fn job_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

pub fn client_config(addr: &str, token: Option<&str>) -> NomadClientConfig {
    NomadClientConfig {
        addr: addr.to_string(),
        token: token.map(Secret::new),
        namespace: None,
        region: None,
        ca_cert: None,
        client_cert: None,
        client_key: None,
        request_timeout: Duration::from_secs(3),
        retry: RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        },
    }
}

pub async fn executor(
    client: NomadClientConfig,
    inputs: &Inputs,
    notifier: ChangeNotifier,
) -> NomadExecutor {
    executor_with(client, inputs, notifier, job_dir(), None).await
}

/// [`executor`] with the jobs of `jobs` and a result queue URL.
pub async fn executor_with(
    client: NomadClientConfig,
    inputs: &Inputs,
    notifier: ChangeNotifier,
    jobs: PathBuf,
    result_queue_url: Option<&str>,
) -> NomadExecutor {
    let mut config = NomadExecutorConfig::new(client, jobs);
    config.watch_wait = Duration::from_millis(500);
    config.result_queue_url = result_queue_url.map(String::from);
    within(
        10,
        "executor start",
        NomadExecutor::start(config, inputs, notifier),
    )
    .await
    .expect("nomad executor starts")
}

/// Short intervals for tests; fields added to `Settings` later keep their defaults.
#[allow(clippy::field_reassign_with_default)]
pub fn fast_settings() -> Settings {
    let mut s = Settings::default();
    s.visibility = Duration::from_secs(5);
    s.retry_base = Duration::from_millis(50);
    s.retry_cap = Duration::from_millis(500);
    s.resync_interval = Duration::from_millis(100);
    s.sweep_interval = Duration::from_secs(1);
    s.breaker_threshold = 3;
    s.breaker_cooldown = Duration::from_millis(700);
    s.timeout_grace = Duration::from_millis(200);
    s.pending_limit = Duration::from_secs(20);
    s
}

/// A running coordinator core: context, scheduler task, shutdown switch.
pub struct Core {
    pub ctx: Arc<Context>,
    pub shutdown: watch::Sender<bool>,
    pub scheduler: tokio::task::JoinHandle<()>,
}

impl Core {
    pub async fn start(
        store: Arc<SqliteBackend>,
        client: NomadClientConfig,
        inputs: Inputs,
        settings: Settings,
        leader: bool,
    ) -> Core {
        let (tx, rx) = mpsc::unbounded_channel();
        let exec = executor(client, &inputs, tx).await;
        let ctx = Context::new(
            store.clone(),
            store,
            Arc::new(exec),
            Arc::new(inputs),
            settings,
        );
        if !leader {
            ctx.set_leadership(false, 0);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let scheduler = tokio::spawn(agent_orchestrator::scheduler::run(
            ctx.clone(),
            rx,
            shutdown_rx,
        ));
        Core {
            ctx,
            shutdown,
            scheduler,
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let mut scheduler = self.scheduler;
        if tokio::time::timeout(Duration::from_secs(5), &mut scheduler)
            .await
            .is_err()
        {
            scheduler.abort();
        }
    }
}

pub async fn submit(
    ctx: &Context,
    agent_type: &str,
    n: usize,
    timeout: Option<u64>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let request = SubmitRequest {
            agent_type: agent_type.into(),
            payload: serde_json::json!({"n": i, "issue": "fix it"}),
            timeout_seconds: timeout,
            ..Default::default()
        };
        let (task, _) = within(5, "submit", intake::submit(ctx, request))
            .await
            .expect("submit");
        ids.push(task.id);
    }
    ids
}

pub async fn get(ctx: &Context, id: &str) -> Task {
    within(5, "store get", ctx.store.get(id))
        .await
        .expect("store")
        .expect("task exists")
}

/// Waits until every task is terminal; returns them.
pub async fn wait_terminal(ctx: &Context, ids: &[String], secs: u64) -> Vec<Task> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut tasks = Vec::new();
        for id in ids {
            tasks.push(get(ctx, id).await);
        }
        if tasks.iter().all(|t| t.status.is_terminal()) {
            return tasks;
        }
        if std::time::Instant::now() > deadline {
            let open: Vec<_> = tasks
                .iter()
                .filter(|t| !t.status.is_terminal())
                .map(|t| (t.id.clone(), t.status))
                .take(5)
                .collect();
            panic!("tasks not terminal after {secs}s: {open:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn count(tasks: &[Task], status: Status) -> usize {
    tasks.iter().filter(|t| t.status == status).count()
}

/// Captures tracing output of the current thread (use a current-thread runtime).
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buffer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || buffer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}
