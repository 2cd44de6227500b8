//! How the scheduler refills a freed slot fast: tasks read ahead get their attempt prepared
//! (a local supervisor primed), and while every slot is busy the next tasks are claimed ahead,
//! so a freed slot starts one without a store write. The real reconcile loops, the real SQLite
//! backend, the real local executor and `supervise` binary; agents log their start and end.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_orchestrator::config::{self, source::Format, AgentType};
use agent_orchestrator::executor::local::{LocalExecutor, LocalExecutorConfig};
use agent_orchestrator::executor::{ExecError, Executor, RunState, StopReason};
use agent_orchestrator::intake::{self, SubmitRequest};
use agent_orchestrator::scheduler::{self, Context, Settings};
use agent_orchestrator::store::sqlite::SqliteBackend;
use agent_orchestrator::store::TaskFilter;
use agent_orchestrator::task::{Status, Task};
use common::{logging_script, max_concurrency, read_events, BIN};

/// Records which attempts the scheduler prepares, dispatches and discards, and delegates.
struct Recording<E> {
    inner: E,
    calls: std::sync::Mutex<Vec<(&'static str, String, u32)>>,
}

impl<E> Recording<E> {
    fn note(&self, call: &'static str, task_id: &str, attempt: u32) {
        self.calls
            .lock()
            .unwrap()
            .push((call, task_id.to_owned(), attempt));
    }
}

#[async_trait::async_trait]
impl<E: Executor> Executor for Recording<E> {
    async fn dispatch(&self, task: &Task, agent: &AgentType) -> Result<String, ExecError> {
        self.note("dispatch", &task.id, task.attempt);
        self.inner.dispatch(task, agent).await
    }
    async fn status(&self, task: &Task) -> Result<RunState, ExecError> {
        self.inner.status(task).await
    }
    async fn stop(&self, task: &Task, reason: StopReason) -> Result<(), ExecError> {
        self.inner.stop(task, reason).await
    }
    fn prepare(&self, task: &Task, agent: &AgentType) {
        self.note("prepare", &task.id, task.attempt);
        self.inner.prepare(task, agent)
    }
    fn discard(&self, task_id: &str) {
        self.note("discard", task_id, 0);
        self.inner.discard(task_id)
    }
}

/// Tasks read ahead are prepared (a local supervisor started and waiting) before the claim, so
/// a freed slot is refilled by a go down a pipe: every dispatch was prepared for, with the same
/// attempt, and each attempt ran once under the supervisor prepared for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_read_ahead_are_prepared_before_their_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = config::decode(
        r#"{"cluster_name": "t", "agent_types": {"w": {"image": "local", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 2, "command": "sh", "args": ["-c", "echo $PPID >> ran; sleep 0.1"]}}}"#,
        Format::Json,
        "inputs.json",
    )
    .unwrap();
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("db.sqlite")).unwrap());
    let (notifier, changes) = tokio::sync::mpsc::unbounded_channel();
    let mut local = LocalExecutorConfig::new(dir.path().join("runs"));
    local.supervisor_exe = env!("CARGO_BIN_EXE_agent-orchestrator").into();
    let executor = Arc::new(Recording {
        inner: LocalExecutor::new(local, notifier).unwrap(),
        calls: Default::default(),
    });
    let ctx = Context::new(
        backend.clone(),
        backend.clone(),
        executor.clone(),
        Arc::new(inputs),
        Settings::default(),
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));
    let mut ids = Vec::new();
    for i in 0..12 {
        let request = SubmitRequest {
            agent_type: "w".into(),
            payload: serde_json::json!({"i": i}),
            ..Default::default()
        };
        ids.push(intake::submit(&ctx, request).await.unwrap().0.id);
    }
    let succeeded = TaskFilter {
        status: Some(Status::Succeeded),
        agent_type: None,
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while ctx
            .store
            .list(&succeeded, 100, None)
            .await
            .unwrap()
            .tasks
            .len()
            < ids.len()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every task succeeds");
    shutdown_tx.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), scheduler).await;

    let calls = executor.calls.lock().unwrap().clone();
    for (i, (call, id, attempt)) in calls.iter().enumerate() {
        if *call == "dispatch" {
            assert!(
                calls[..i]
                    .iter()
                    .any(|(c, p, a)| *c == "prepare" && p == id && a == attempt),
                "dispatch of {id}/{attempt} was not prepared for: {calls:?}"
            );
        }
    }
    for id in &ids {
        let run_dir = dir.path().join("runs").join(id).join("1");
        let supervisor = std::fs::read_to_string(run_dir.join("supervisor.pid")).unwrap();
        let parent = std::fs::read_to_string(run_dir.join("ran")).unwrap();
        assert_eq!(
            parent.trim(),
            supervisor.trim(),
            "ran once, under its supervisor ({id})"
        );
    }
}

/// One coordinator's scheduler over the database and runs directory in `dir`: one agent type
/// `w` of `max_instances`, running `body` between its logged start and end.
struct Scheduler {
    ctx: Arc<Context>,
    shutdown: tokio::sync::watch::Sender<bool>,
    run: tokio::task::JoinHandle<()>,
}

fn inputs(dir: &Path, max_instances: u32, timeout: &str, body: &str) -> config::Inputs {
    let script = logging_script(&dir.join("events.log"), body);
    let inputs = serde_json::json!({"cluster_name": "t", "agent_types": {"w": {
        "image": "local", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": max_instances,
        "timeout": timeout, "command": "sh", "args": ["-c", script]}}});
    config::decode(&inputs.to_string(), Format::Json, "inputs.json").unwrap()
}

impl Scheduler {
    fn start(dir: &Path, inputs: &config::Inputs) -> Scheduler {
        Scheduler::with_settings(dir, inputs, Settings::default())
    }

    fn with_settings(dir: &Path, inputs: &config::Inputs, settings: Settings) -> Scheduler {
        let backend = Arc::new(SqliteBackend::open(&dir.join("db.sqlite")).unwrap());
        let (notifier, changes) = tokio::sync::mpsc::unbounded_channel();
        let mut local = LocalExecutorConfig::new(dir.join("runs"));
        local.supervisor_exe = BIN.into();
        let executor = Arc::new(LocalExecutor::new(local, notifier).unwrap());
        let ctx = Context::new(
            backend.clone(),
            backend,
            executor,
            Arc::new(inputs.clone()),
            settings,
        );
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));
        Scheduler { ctx, shutdown, run }
    }

    async fn submit(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let request = SubmitRequest {
                agent_type: "w".into(),
                payload: serde_json::json!({"i": i}),
                ..Default::default()
            };
            ids.push(intake::submit(&self.ctx, request).await.unwrap().0.id);
        }
        ids
    }

    async fn task(&self, id: &str) -> Task {
        self.ctx.store.get(id).await.unwrap().unwrap()
    }

    async fn statuses(&self, ids: &[String]) -> Vec<Status> {
        let mut out = Vec::new();
        for id in ids {
            out.push(self.task(id).await.status);
        }
        out
    }

    /// Waits until one task runs while another is claimed ahead (`dispatched`, with one slot);
    /// returns (running, claimed ahead).
    async fn one_running_one_claimed_ahead(&self, ids: &[String]) -> (String, String) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let statuses = self.statuses(ids).await;
                let find = |s: Status| ids.iter().zip(&statuses).find(|(_, x)| **x == s);
                if let (Some((running, _)), Some((ahead, _))) =
                    (find(Status::Running), find(Status::Dispatched))
                {
                    return (running.clone(), ahead.clone());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a task is claimed ahead while the only slot is busy")
    }

    async fn wait_terminal(&self, ids: &[String], limit: Duration) -> Vec<Status> {
        tokio::time::timeout(limit, async {
            loop {
                let statuses = self.statuses(ids).await;
                if statuses.iter().all(|s| s.is_terminal()) {
                    return statuses;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every task finishes")
    }

    async fn drain(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.run)
            .await
            .expect("drains")
            .unwrap();
    }
}

fn starts(dir: &Path, id: &str) -> usize {
    read_events(&dir.join("events.log"))
        .iter()
        .filter(|e| e.start && e.task_id == id)
        .count()
}

/// A task claimed ahead waits for the slot, and its attempt's clock starts when it starts: the
/// one-second timeout would otherwise be spent waiting behind the first task's 0.6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_claimed_ahead_waits_for_a_slot_and_its_deadline_counts_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = Scheduler::start(dir.path(), &inputs(dir.path(), 1, "1s", "sleep 0.6"));
    let ids = scheduler.submit(3).await;
    scheduler.one_running_one_claimed_ahead(&ids).await;
    let statuses = scheduler.wait_terminal(&ids, Duration::from_secs(30)).await;
    assert_eq!(statuses, vec![Status::Succeeded; 3]);
    let events = read_events(&dir.path().join("events.log"));
    assert_eq!(max_concurrency(&events, "w"), 1, "one slot");
    for id in &ids {
        assert_eq!(starts(dir.path(), id), 1, "{id} ran once");
    }
    scheduler.drain().await;
}

/// A cancel reaches a task claimed ahead before it starts: it never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_claimed_ahead_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = Scheduler::start(dir.path(), &inputs(dir.path(), 1, "1m", "sleep 30"));
    let ids = scheduler.submit(2).await;
    let (running, ahead) = scheduler.one_running_one_claimed_ahead(&ids).await;
    intake::cancel(&scheduler.ctx, &ahead).await.unwrap();
    let statuses = scheduler
        .wait_terminal(std::slice::from_ref(&ahead), Duration::from_secs(10))
        .await;
    assert_eq!(statuses, vec![Status::Cancelled]);
    assert_eq!(scheduler.task(&running).await.status, Status::Running);
    intake::cancel(&scheduler.ctx, &running).await.unwrap();
    scheduler
        .wait_terminal(std::slice::from_ref(&running), Duration::from_secs(20))
        .await;
    assert_eq!(
        starts(dir.path(), &ahead),
        0,
        "the cancelled task never ran"
    );
    scheduler.drain().await;
}

/// Shutting down gives the tasks claimed ahead back (queued, attempt number returned, message
/// visible), and the next coordinator runs them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_gives_tasks_claimed_ahead_back() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path(), 1, "1m", "sleep 1");
    let scheduler = Scheduler::start(dir.path(), &inputs);
    let ids = scheduler.submit(2).await;
    let (_, ahead) = scheduler.one_running_one_claimed_ahead(&ids).await;
    let ctx = scheduler.ctx.clone();
    scheduler.drain().await;
    let back = ctx.store.get(&ahead).await.unwrap().unwrap();
    assert_eq!(back.status, Status::Queued, "{back:?}");
    assert_eq!(back.attempt, 0);
    assert!(back.attempts.is_empty());
    assert_eq!(ctx.queue.depth("w").await.unwrap().visible, 1);
    assert_eq!(starts(dir.path(), &ahead), 0);
    drop(ctx);

    let next = Scheduler::start(dir.path(), &inputs);
    let statuses = next.wait_terminal(&ids, Duration::from_secs(30)).await;
    assert_eq!(statuses, vec![Status::Succeeded; 2]);
    assert_eq!(starts(dir.path(), &ahead), 1);
    next.drain().await;
}

/// A coordinator that dies with tasks claimed ahead leaves them `dispatched` in the store; the
/// next one starts them only as slots free up, never beyond `max_instances`, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_tasks_claimed_ahead_never_exceeds_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path(), 1, "1m", "sleep 1.5");
    // Messages read ahead by the dead coordinator reappear after their visibility timeout.
    let settings = || Settings {
        visibility: Duration::from_secs(2),
        ..Settings::default()
    };
    let crashed = Scheduler::with_settings(dir.path(), &inputs, settings());
    let ids = crashed.submit(3).await;
    crashed.one_running_one_claimed_ahead(&ids).await;
    crashed.run.abort();
    let _ = crashed.run.await;
    drop(crashed.ctx);

    let next = Scheduler::with_settings(dir.path(), &inputs, settings());
    let statuses = next.wait_terminal(&ids, Duration::from_secs(30)).await;
    assert_eq!(statuses, vec![Status::Succeeded; 3]);
    let events = read_events(&dir.path().join("events.log"));
    assert_eq!(max_concurrency(&events, "w"), 1, "{events:?}");
    for id in &ids {
        assert_eq!(starts(dir.path(), id), 1, "{id} ran once");
    }
    next.drain().await;
}

/// A claim that waited past its own timeout before a coordinator restart still runs, with the
/// clock started when it is handed to the executor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_claim_whose_timeout_passed_while_waiting_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path(), 1, "2s", "sleep 1");
    let settings = || Settings {
        visibility: Duration::from_secs(2),
        ..Settings::default()
    };
    let crashed = Scheduler::with_settings(dir.path(), &inputs, settings());
    let ids = crashed.submit(2).await;
    let (_, ahead) = crashed.one_running_one_claimed_ahead(&ids).await;
    crashed.run.abort();
    let _ = crashed.run.await;
    drop(crashed.ctx);
    // Down long enough for the running one to end and the claim's own deadline to pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let next = Scheduler::with_settings(dir.path(), &inputs, settings());
    let statuses = next.wait_terminal(&ids, Duration::from_secs(30)).await;
    assert_eq!(statuses, vec![Status::Succeeded; 2]);
    assert_eq!(starts(dir.path(), &ahead), 1);
    next.drain().await;
}

/// Reports an attempt `Pending` for its first `delay` after the dispatch (an executor that
/// places work slowly, like Nomad), and delegates.
struct SlowStart<E> {
    inner: E,
    delay: Duration,
    dispatched: std::sync::Mutex<std::collections::HashMap<(String, u32), std::time::Instant>>,
}

#[async_trait::async_trait]
impl<E: Executor> Executor for SlowStart<E> {
    async fn dispatch(&self, task: &Task, agent: &AgentType) -> Result<String, ExecError> {
        let key = (task.id.clone(), task.attempt);
        let now = std::time::Instant::now();
        self.dispatched.lock().unwrap().entry(key).or_insert(now);
        self.inner.dispatch(task, agent).await
    }
    async fn status(&self, task: &Task) -> Result<RunState, ExecError> {
        let key = (task.id.clone(), task.attempt);
        let since = self.dispatched.lock().unwrap().get(&key).copied();
        if since.is_some_and(|at| at.elapsed() < self.delay) {
            return Ok(RunState::Pending);
        }
        self.inner.status(task).await
    }
    async fn stop(&self, task: &Task, reason: StopReason) -> Result<(), ExecError> {
        self.inner.stop(task, reason).await
    }
    fn prepare(&self, task: &Task, agent: &AgentType) {
        self.inner.prepare(task, agent)
    }
    fn discard(&self, task_id: &str) {
        self.inner.discard(task_id)
    }
}

/// A task claimed ahead waits for its slot longer than the pending limit; once started, it
/// reads `pending` for a while. Resyncs every 100 ms read it from the store meanwhile, at the
/// same version as the ledger's copy: they must not bring back its claim-time clock, or it is
/// taken for an attempt never placed (lost, and run again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_keep_the_clock_of_tasks_started_after_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path(), 1, "1m", "sleep 1.2");
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("db.sqlite")).unwrap());
    let (notifier, changes) = tokio::sync::mpsc::unbounded_channel();
    let mut local = LocalExecutorConfig::new(dir.path().join("runs"));
    local.supervisor_exe = BIN.into();
    let executor = Arc::new(SlowStart {
        inner: LocalExecutor::new(local, notifier).unwrap(),
        delay: Duration::from_millis(500),
        dispatched: Default::default(),
    });
    let settings = Settings {
        resync_interval: Duration::from_millis(100),
        pending_limit: Duration::from_secs(1),
        ..Settings::default()
    };
    let ctx = Context::new(
        backend.clone(),
        backend,
        executor,
        Arc::new(inputs),
        settings,
    );
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));
    let scheduler = Scheduler { ctx, shutdown, run };
    let ids = scheduler.submit(3).await;
    let statuses = scheduler.wait_terminal(&ids, Duration::from_secs(40)).await;
    assert_eq!(statuses, vec![Status::Succeeded; 3]);
    for id in &ids {
        assert_eq!(scheduler.task(id).await.attempt, 1, "{id}: one attempt");
        assert_eq!(starts(dir.path(), id), 1, "{id} ran once");
    }
    scheduler.drain().await;
}
