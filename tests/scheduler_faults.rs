//! The scheduler under executor faults: the real reconcile loops, the real SQLite backend and
//! the real local executor, wrapped so its first dispatches fail as `Unavailable` (an outage).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_orchestrator::config::{self, source::Format, AgentType};
use agent_orchestrator::executor::local::{LocalExecutor, LocalExecutorConfig};
use agent_orchestrator::executor::{ExecError, Executor, RunState, StopReason};
use agent_orchestrator::intake::{self, SubmitRequest};
use agent_orchestrator::queue::{Depth, Message, QueueError, TaskQueue};
use agent_orchestrator::scheduler::{self, Context, Settings};
use agent_orchestrator::store::sqlite::SqliteBackend;
use agent_orchestrator::store::{TaskFilter, TaskStore};
use agent_orchestrator::task::{Status, Task};

/// Fails the first `failures` dispatches, then delegates.
struct Outage<E> {
    inner: E,
    failures: AtomicUsize,
    dispatch_calls: AtomicUsize,
}

#[async_trait::async_trait]
impl<E: Executor> Executor for Outage<E> {
    async fn dispatch(&self, task: &Task, agent: &AgentType) -> Result<String, ExecError> {
        self.dispatch_calls.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ExecError::Unavailable {
                message: "executor down".into(),
            });
        }
        self.inner.dispatch(task, agent).await
    }
    async fn status(&self, task: &Task) -> Result<RunState, ExecError> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_outage_opens_the_circuit_delays_but_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = config::decode(
        r#"{"cluster_name": "t", "agent_types": {"echo": {"image": "builtin", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 2}}}"#,
        Format::Json,
        "inputs.json",
    )
    .unwrap();
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("db.sqlite")).unwrap());
    let (notifier, changes) = tokio::sync::mpsc::unbounded_channel();
    let local =
        LocalExecutor::new(LocalExecutorConfig::new(dir.path().join("runs")), notifier).unwrap();
    let executor = Arc::new(Outage {
        inner: local,
        failures: AtomicUsize::new(5),
        dispatch_calls: AtomicUsize::new(0),
    });
    let settings = Settings {
        retry_base: Duration::from_millis(20),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(400),
        resync_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    let ctx = Context::new(
        backend.clone(),
        backend.clone(),
        executor.clone(),
        Arc::new(inputs),
        settings,
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));

    let mut ids = Vec::new();
    for i in 0..10 {
        let request = SubmitRequest {
            agent_type: "echo".into(),
            payload: serde_json::json!({"i": i}),
            ..Default::default()
        };
        ids.push(intake::submit(&ctx, request).await.unwrap().0.id);
    }

    let mut saw_open = false;
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            saw_open |= ctx.agent_statuses()["echo"].circuit != "closed";
            let page = ctx
                .store
                .list(
                    &TaskFilter {
                        status: Some(Status::Succeeded),
                        agent_type: None,
                    },
                    100,
                    None,
                )
                .await
                .unwrap();
            if page.tasks.len() == ids.len() {
                return page.tasks;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every task succeeds once the executor is back");

    assert!(saw_open, "the circuit never opened during the outage");
    assert_eq!(
        ctx.agent_statuses()["echo"].circuit,
        "closed",
        "the circuit did not recover"
    );
    for task in &finished {
        // Dispatches refused by the outage give their attempt number back: one real attempt each.
        assert_eq!(task.attempt, 1, "{task:?}");
        assert_eq!(task.attempts.len(), 1, "{task:?}");
        assert_eq!(task.result, Some(task.payload.clone()));
    }
    let calls = executor.dispatch_calls.load(Ordering::SeqCst);
    assert!(
        calls >= 10 + 3,
        "failed dispatches were not retried: {calls} calls"
    );
    let _ = shutdown_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), scheduler)
        .await
        .expect("drains")
        .unwrap();
}

/// The loop keeps its own copy of running tasks and re-reads them from the store only every
/// `resync_interval`; a cancel through the API must not wait for that (here: a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_running_task_without_waiting_for_the_resync() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = config::decode(
        r#"{"cluster_name": "t", "agent_types": {"slow": {"image": "local", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1, "command": "sleep", "args": ["600"]}}}"#,
        Format::Json,
        "inputs.json",
    )
    .unwrap();
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("db.sqlite")).unwrap());
    let (notifier, changes) = tokio::sync::mpsc::unbounded_channel();
    let executor = Arc::new(
        LocalExecutor::new(LocalExecutorConfig::new(dir.path().join("runs")), notifier).unwrap(),
    );
    let settings = Settings {
        resync_interval: Duration::from_secs(60),
        ..Settings::default()
    };
    let ctx = Context::new(
        backend.clone(),
        backend.clone(),
        executor,
        Arc::new(inputs),
        settings,
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));
    let request = SubmitRequest {
        agent_type: "slow".into(),
        payload: serde_json::json!({}),
        ..Default::default()
    };
    let id = intake::submit(&ctx, request).await.unwrap().0.id;
    let status_of = |id: String| {
        let ctx = ctx.clone();
        async move { ctx.store.get(&id).await.unwrap().unwrap().status }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        // Dispatched is enough: the agent process runs; with a minute's resync the loop may
        // record `running` only later.
        while status_of(id.clone()).await == Status::Queued {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task starts");

    intake::cancel(&ctx, &id).await.unwrap();
    // Well inside the minute the resync would take.
    tokio::time::timeout(Duration::from_secs(15), async {
        while status_of(id.clone()).await != Status::Cancelled {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the cancel was applied before the next resync");
    shutdown_tx.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), scheduler).await;
}

/// A cancel reaches whichever coordinator the load balancer picks. A standby's fence is 0,
/// below what the leader writes, and a cancel must not lose to it: queued tasks are cancelled
/// and active ones marked for their loop, from the standby too.
#[tokio::test]
async fn a_standby_coordinator_takes_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = config::decode(
        r#"{"cluster_name": "c", "agent_types": {"w": {"image": "i", "cpu_limit": 1,
            "memory_limit": "64MB", "max_instances": 1}}}"#,
        Format::Json,
        "inputs.json",
    )
    .unwrap();
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("db.sqlite")).unwrap());
    let context = |runs: &str| {
        let (notifier, _changes) = tokio::sync::mpsc::unbounded_channel();
        let executor = Arc::new(
            LocalExecutor::new(LocalExecutorConfig::new(dir.path().join(runs)), notifier).unwrap(),
        );
        Context::new(
            backend.clone(),
            backend.clone(),
            executor,
            Arc::new(inputs.clone()),
            Settings::default(),
        )
    };
    let (leader, standby) = (context("runs-a"), context("runs-b"));
    leader.set_leadership(true, 7);
    standby.set_leadership(false, 0);
    let submit = || SubmitRequest {
        agent_type: "w".into(),
        payload: serde_json::json!({}),
        ..Default::default()
    };

    let queued = intake::submit(&leader, submit()).await.unwrap().0;
    assert_eq!(queued.fence, 7);
    let cancelled = intake::cancel(&standby, &queued.id)
        .await
        .expect("cancel on the standby");
    assert_eq!(cancelled.status, Status::Cancelled);

    let active = intake::submit(&leader, submit()).await.unwrap().0;
    let mut claimed = backend.get(&active.id).await.unwrap().unwrap();
    claimed.status = Status::Dispatched;
    claimed.attempt = 1;
    let claimed = backend.update(&claimed, claimed.version).await.unwrap();
    assert_eq!(claimed.fence, 7);
    let marked = intake::cancel(&standby, &active.id)
        .await
        .expect("cancel on the standby");
    assert!(marked.cancel_requested);
    assert_eq!(marked.status, Status::Dispatched, "its loop stops it");
}

/// The SQLite queue, counting what is sent to it per task.
struct CountingQueue {
    inner: Arc<SqliteBackend>,
    sends: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

#[async_trait::async_trait]
impl TaskQueue for CountingQueue {
    async fn send(
        &self,
        agent_type: &str,
        task_id: &str,
        priority: i64,
        delay: Duration,
    ) -> Result<(), QueueError> {
        *self
            .sends
            .lock()
            .unwrap()
            .entry(task_id.to_owned())
            .or_default() += 1;
        self.inner.send(agent_type, task_id, priority, delay).await
    }
    async fn receive(
        &self,
        agent_type: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        self.inner.receive(agent_type, max, visibility).await
    }
    async fn ack(&self, agent_type: &str, receipt: &str) -> Result<(), QueueError> {
        self.inner.ack(agent_type, receipt).await
    }
    async fn nack(
        &self,
        agent_type: &str,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.inner.nack(agent_type, receipt, delay).await
    }
    async fn depth(&self, agent_type: &str) -> Result<Depth, QueueError> {
        self.inner.depth(agent_type).await
    }
}

/// On SQS every re-send of the stale-queued sweep is one more message: a task waiting in a
/// backlog is re-sent when a sweep first finds it, then at doubling intervals, not on every
/// sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_in_the_backlog_is_not_resent_on_every_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = config::decode(
        r#"{"cluster_name": "t", "agent_types": {"w": {"image": "local", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1, "command": "sleep", "args": ["30"]}}}"#,
        Format::Json,
        "inputs.json",
    )
    .unwrap();
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("db.sqlite")).unwrap());
    let queue = Arc::new(CountingQueue {
        inner: backend.clone(),
        sends: Default::default(),
    });
    let (notifier, changes) = tokio::sync::mpsc::unbounded_channel();
    let local =
        LocalExecutor::new(LocalExecutorConfig::new(dir.path().join("runs")), notifier).unwrap();
    let settings = Settings {
        sweep_interval: Duration::from_millis(200),
        resync_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    let ctx = Context::new(
        backend.clone(),
        queue.clone(),
        Arc::new(local),
        Arc::new(inputs),
        settings,
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));
    let mut ids = Vec::new();
    for n in 0..4 {
        let request = SubmitRequest {
            agent_type: "w".into(),
            payload: serde_json::json!({ "n": n }),
            ..Default::default()
        };
        ids.push(intake::submit(&ctx, request).await.unwrap().0.id);
    }
    // One runs (30 s), one is claimed ahead (the only slot's next), two wait. 15 sweeps of
    // 200 ms: re-sent at about 0.2, 0.4, 0.8, 1.6 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting: Vec<String> = {
        let mut waiting = Vec::new();
        for id in &ids {
            if backend.get(id).await.unwrap().unwrap().status == Status::Queued {
                waiting.push(id.clone());
            }
        }
        waiting
    };
    assert_eq!(waiting.len(), 2, "one runs, one is claimed ahead, two wait");
    let sends = queue.sends.lock().unwrap().clone();
    for id in &waiting {
        let n = sends.get(id).copied().unwrap_or(0);
        // The intake's send, then the sweep's: at least two (the sweep ran), far fewer than 15.
        assert!((2..=7).contains(&n), "task {id} sent {n} times: {sends:?}");
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), scheduler).await;
    for id in &ids {
        let _ = intake::cancel(&ctx, id).await;
    }
}
