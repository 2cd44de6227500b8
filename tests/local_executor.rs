//! The local executor against real subprocesses (`sh -c …`) and the real `supervise` binary.
//! Every await is guarded by a timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_orchestrator::config::AgentType;
use agent_orchestrator::executor::local::{LocalExecutor, LocalExecutorConfig};
use agent_orchestrator::executor::{ExecError, Executor, Outcome, RunState, StopReason};
use agent_orchestrator::task::{now_ms, NewTask, Task, TaskId};
use tokio::sync::mpsc::UnboundedReceiver;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_agent-orchestrator");

async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

fn executor(root: &Path) -> (LocalExecutor, UnboundedReceiver<TaskId>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut config = LocalExecutorConfig::new(root);
    config.supervisor_exe = PathBuf::from(SUPERVISOR);
    config.kill_grace = Duration::from_secs(2);
    config.poll_interval = Duration::from_millis(100);
    (LocalExecutor::new(config, tx).expect("executor"), rx)
}

fn agent(name: &str, command: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> AgentType {
    AgentType {
        name: name.into(),
        image: "img".into(),
        cpu_limit: 100,
        memory_limit_mb: 64,
        max_instances: 4,
        capabilities: vec![],
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout: None,
        priority: 50,
        command: command.map(String::from),
        args: args.iter().map(|a| a.to_string()).collect(),
        max_attempts: None,
        priority_queues: vec![],
    }
}

/// An agent type running `sh -c <script>`, with extra environment.
fn sh(script: &str, env: &[(&str, &str)]) -> AgentType {
    agent("shell", Some("sh"), &["-c", script], env)
}

fn task(agent_type: &str, payload: serde_json::Value) -> Task {
    let mut task = Task::new(
        NewTask {
            agent_type: agent_type.into(),
            payload,
            priority: 3,
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            idempotency_key: None,
        },
        now_ms(),
    );
    task.attempt = 1;
    task.deadline_at = Some(now_ms() + 60_000);
    task
}

/// Polls `status` until `pred` holds.
async fn wait_state(
    exec: &LocalExecutor,
    t: &Task,
    what: &str,
    pred: impl Fn(&RunState) -> bool,
) -> RunState {
    within(20, what, async {
        loop {
            let state = exec.status(t).await.expect("status");
            if pred(&state) {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn finished(exec: &LocalExecutor, t: &Task) -> Outcome {
    match wait_state(exec, t, "attempt to finish", |s| {
        matches!(s, RunState::Finished(_))
    })
    .await
    {
        RunState::Finished(outcome) => outcome,
        _ => unreachable!(),
    }
}

/// Waits for a pid file the agent writes (complete once it ends with a newline).
async fn wait_pid(path: &Path) -> i32 {
    let text = within(20, &format!("{} to appear", path.display()), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if text.ends_with('\n') {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    text.trim().parse().expect("a pid")
}

/// Alive and not a zombie (our init may be slow to reap orphans).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32) {
    within(10, &format!("process {pid} to be gone"), async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn success_reads_the_result_and_honours_the_contract() {
    let root = tempfile::tempdir().unwrap();
    let (exec, mut rx) = executor(root.path());
    let script = r#"
        printf '{"id":"%s","attempt":"%s","type":"%s","result_file":"%s","var":"%s"}' \
            "$AO_TASK_ID" "$AO_ATTEMPT" "$AO_AGENT_TYPE" "$AO_RESULT_FILE" "$MY_VAR" > "$AO_RESULT_FILE"
        cp "$AO_TASK_FILE" seen-task.json
        pwd > cwd.txt
        echo to-stdout; echo to-stderr >&2
    "#;
    let agent = sh(
        script,
        &[("MY_VAR", "from env_vars"), ("AO_TASK_ID", "shadowed")],
    );
    let t = task("shell", serde_json::json!({"issue": 7}));
    let handle = within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .expect("dispatch");
    let dir = exec.run_dir(&t);
    assert_eq!(handle, dir.to_string_lossy());

    let outcome = finished(&exec, &t).await;
    let Outcome::Succeeded {
        result: Some(result),
        ..
    } = outcome
    else {
        panic!("expected a result: {outcome:?}")
    };
    assert_eq!(
        result["id"],
        t.id.as_str(),
        "the contract's variables win over env_vars"
    );
    assert_eq!(result["attempt"], "1");
    assert_eq!(result["type"], "shell");
    assert_eq!(
        result["result_file"],
        dir.join("result.json").to_string_lossy().as_ref()
    );
    assert_eq!(result["var"], "from env_vars");

    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("seen-task.json")).unwrap())
            .unwrap();
    assert_eq!(seen, t.agent_view());
    assert_eq!(
        std::fs::read_to_string(dir.join("cwd.txt")).unwrap().trim(),
        dir.to_string_lossy()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("stdout.log")).unwrap(),
        "to-stdout\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("stderr.log")).unwrap(),
        "to-stderr\n"
    );
    let exit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exit.json")).unwrap()).unwrap();
    assert_eq!(exit["outcome"], "succeeded");
    assert_eq!(exit["exit_code"], 0);

    let notified = within(10, "notification", rx.recv()).await;
    assert_eq!(notified, Some(t.id.clone()));

    // Stopping a finished attempt changes nothing.
    within(10, "stop", exec.stop(&t, StopReason::Cancel))
        .await
        .unwrap();
    assert!(matches!(
        exec.status(&t).await.unwrap(),
        RunState::Finished(Outcome::Succeeded { .. })
    ));
}

#[tokio::test]
async fn failures_are_reported_with_their_reason() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());

    let t = task("shell", serde_json::json!(1));
    within(
        10,
        "dispatch",
        exec.dispatch(&t, &sh("echo 'bad input' >&2; exit 3", &[])),
    )
    .await
    .unwrap();
    match finished(&exec, &t).await {
        Outcome::Failed { error, .. } => assert!(
            error.contains("code 3") && error.contains("bad input"),
            "{error}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }

    let t = task("missing", serde_json::json!(1));
    let missing = agent(
        "missing",
        Some("no-such-agent-command-xyz"),
        &["--flag"],
        &[],
    );
    within(10, "dispatch", exec.dispatch(&t, &missing))
        .await
        .unwrap();
    match finished(&exec, &t).await {
        Outcome::Failed { error, .. } => {
            assert!(
                error.contains("cannot start agent command")
                    && error.contains("no-such-agent-command-xyz"),
                "{error}"
            )
        }
        other => panic!("expected Failed, got {other:?}"),
    }

    let t = task("shell", serde_json::json!(1));
    within(
        10,
        "dispatch",
        exec.dispatch(&t, &sh("echo '{oops' > \"$AO_RESULT_FILE\"", &[])),
    )
    .await
    .unwrap();
    match finished(&exec, &t).await {
        Outcome::Failed { error, .. } => assert!(error.contains("not valid JSON"), "{error}"),
        other => panic!("expected Failed, got {other:?}"),
    }

    let t = task("shell", serde_json::json!(1));
    within(10, "dispatch", exec.dispatch(&t, &sh("kill -9 $$", &[])))
        .await
        .unwrap();
    match finished(&exec, &t).await {
        Outcome::Failed { error, .. } => assert!(error.contains("SIGKILL"), "{error}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn each_attempt_keeps_its_own_logs() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let mut t = task("shell", serde_json::json!(1));
    let agent = sh("echo attempt $AO_ATTEMPT; exit $((2 - AO_ATTEMPT))", &[]);
    within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert!(matches!(finished(&exec, &t).await, Outcome::Failed { .. }));
    t.attempt = 2;
    within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Succeeded { result: None, .. }
    ));
    for attempt in [1, 2] {
        let log = root
            .path()
            .join(&t.id)
            .join(attempt.to_string())
            .join("stdout.log");
        assert_eq!(
            std::fs::read_to_string(log).unwrap(),
            format!("attempt {attempt}\n")
        );
    }
}

#[tokio::test]
async fn dispatching_an_attempt_twice_starts_it_once() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let (exec, _rx) = executor(root.path());
    let agent = sh(
        "echo run >> \"$COUNT_FILE\"; sleep 0.3",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    let t = task("shell", serde_json::json!(1));
    let (a, b) = within(10, "two dispatches", async {
        tokio::join!(exec.dispatch(&t, &agent), exec.dispatch(&t, &agent))
    })
    .await;
    assert_eq!(a.unwrap(), b.unwrap());
    within(10, "third dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Succeeded { .. }
    ));
    // And once more after it finished.
    within(10, "late dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&count), 1);
}

#[tokio::test]
async fn a_deadline_kills_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let mut t = task("shell", serde_json::json!(1));
    t.deadline_at = Some(now_ms() + 500);
    within(
        10,
        "dispatch",
        exec.dispatch(&t, &sh("echo $$ > my.pid; exec sleep 60", &[])),
    )
    .await
    .unwrap();
    let pid = wait_pid(&exec.run_dir(&t).join("my.pid")).await;
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::TimedOut { .. }
    ));
    wait_gone(pid).await;
}

#[tokio::test]
async fn a_deadline_already_past_never_starts_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let (exec, _rx) = executor(root.path());
    let mut t = task("shell", serde_json::json!(1));
    t.deadline_at = Some(now_ms() - 1);
    let agent = sh(
        "echo run >> \"$COUNT_FILE\"",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::TimedOut { .. }
    ));
    assert_eq!(lines(&count), 0);
}

#[tokio::test]
async fn an_agent_ignoring_sigterm_is_killed_after_the_grace() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path()); // grace: 2 s
    let t = task("shell", serde_json::json!(1));
    let script = "trap '' TERM; echo $$ > my.pid; while :; do sleep 0.1; done";
    within(10, "dispatch", exec.dispatch(&t, &sh(script, &[])))
        .await
        .unwrap();
    let pid = wait_pid(&exec.run_dir(&t).join("my.pid")).await;
    let began = std::time::Instant::now();
    within(10, "stop", exec.stop(&t, StopReason::Timeout))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::TimedOut { .. }
    ));
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "killed before the grace: {:?}",
        began.elapsed()
    );
    wait_gone(pid).await;
}

#[tokio::test]
async fn cancel_stops_a_running_agent() {
    let root = tempfile::tempdir().unwrap();
    let (exec, mut rx) = executor(root.path());
    let t = task("shell", serde_json::json!(1));
    within(
        10,
        "dispatch",
        exec.dispatch(&t, &sh("echo $$ > my.pid; exec sleep 60", &[])),
    )
    .await
    .unwrap();
    let pid = wait_pid(&exec.run_dir(&t).join("my.pid")).await;
    let state = wait_state(&exec, &t, "running", |s| {
        matches!(s, RunState::Running { .. })
    })
    .await;
    assert!(
        matches!(
            state,
            RunState::Running {
                started_at: Some(_)
            }
        ),
        "{state:?}"
    );
    within(10, "stop", exec.stop(&t, StopReason::Cancel))
        .await
        .unwrap();
    let notified = within(10, "notification", rx.recv()).await;
    assert_eq!(notified, Some(t.id.clone()));
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Cancelled { .. }
    ));
    wait_gone(pid).await;
    within(10, "second stop", exec.stop(&t, StopReason::Timeout))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Cancelled { .. }
    ));
}

#[tokio::test]
async fn a_new_executor_adopts_a_running_attempt() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let agent = sh(
        "echo run >> \"$COUNT_FILE\"; while [ ! -e go ]; do sleep 0.05; done; echo '{\"ok\": true}' > \"$AO_RESULT_FILE\"",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    let t = task("shell", serde_json::json!(1));
    let (a, _rx_a) = executor(root.path());
    within(10, "dispatch", a.dispatch(&t, &agent))
        .await
        .unwrap();
    let dir = a.run_dir(&t);
    wait_state(&a, &t, "running under A", |s| {
        matches!(s, RunState::Running { .. })
    })
    .await;
    drop(a); // the coordinator goes away; the supervisor must not

    let (b, mut rx_b) = executor(root.path());
    let state = within(10, "status", b.status(&t)).await.unwrap();
    assert!(
        matches!(
            state,
            RunState::Running {
                started_at: Some(_)
            }
        ),
        "{state:?}"
    );
    // Dispatching it again (as a restarted scheduler may) starts nothing.
    assert_eq!(
        within(10, "dispatch", b.dispatch(&t, &agent))
            .await
            .unwrap(),
        dir.to_string_lossy()
    );

    std::fs::write(dir.join("go"), "").unwrap();
    let notified = within(10, "notification of the adopted attempt", rx_b.recv()).await;
    assert_eq!(notified, Some(t.id.clone()));
    match finished(&b, &t).await {
        Outcome::Succeeded { result, .. } => {
            assert_eq!(result, Some(serde_json::json!({"ok": true})))
        }
        other => panic!("expected Succeeded, got {other:?}"),
    }
    assert_eq!(lines(&count), 1);
}

/// Not a test on its own: the "coordinator" that the crash tests run as a separate process
/// (this test binary again) and kill with SIGKILL. It dispatches every task of
/// `AO_TEST_TASKS`, writing how many it has dispatched to `<root>/dispatched`, then idles.
#[tokio::test]
#[ignore = "run by the crash tests in a child process"]
async fn coordinator_child_process() {
    let (Ok(root), Ok(tasks), Ok(script), Ok(count)) = (
        std::env::var("AO_TEST_ROOT"),
        std::env::var("AO_TEST_TASKS"),
        std::env::var("AO_TEST_SCRIPT"),
        std::env::var("AO_TEST_COUNT"),
    ) else {
        return;
    };
    let tasks: Vec<Task> = serde_json::from_str(&tasks).unwrap();
    let (exec, _rx) = executor(Path::new(&root));
    let agent = sh(&script, &[("COUNT_FILE", &count)]);
    for (n, t) in tasks.iter().enumerate() {
        within(10, "dispatch", exec.dispatch(t, &agent))
            .await
            .unwrap();
        std::fs::write(Path::new(&root).join("dispatched"), (n + 1).to_string()).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Starts `coordinator_child_process` dispatching `tasks` and kills it with SIGKILL as soon as
/// it has dispatched `after` of them (it is then in the middle of the next dispatch).
async fn crash_a_coordinator(
    root: &Path,
    tasks: &[Task],
    script: &str,
    count: &Path,
    after: usize,
) {
    let marker = root.join("dispatched");
    let _ = std::fs::remove_file(&marker);
    let mut coordinator = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "coordinator_child_process",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("AO_TEST_ROOT", root)
        .env("AO_TEST_TASKS", serde_json::to_string(tasks).unwrap())
        .env("AO_TEST_SCRIPT", script)
        .env("AO_TEST_COUNT", count)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    within(30, "the child coordinator to dispatch", async {
        loop {
            let done: usize = std::fs::read_to_string(&marker)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if done >= after {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    coordinator.kill().unwrap(); // SIGKILL: no destructor, no cleanup
    coordinator.wait().unwrap();
}

#[tokio::test]
async fn adoption_survives_a_killed_coordinator() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let script =
        "echo run >> \"$COUNT_FILE\"; echo $$ > my.pid; while [ ! -e go ]; do sleep 0.05; done";
    let t = task("shell", serde_json::json!(1));
    crash_a_coordinator(root.path(), std::slice::from_ref(&t), script, &count, 1).await;

    let (b, mut rx_b) = executor(root.path());
    let dir = b.run_dir(&t);
    let pid = wait_pid(&dir.join("my.pid")).await;
    wait_state(&b, &t, "running after the crash", |s| {
        matches!(s, RunState::Running { .. })
    })
    .await;
    assert!(alive(pid), "the agent must outlive the coordinator");
    std::fs::write(dir.join("go"), "").unwrap();
    let notified = within(10, "notification", rx_b.recv()).await;
    assert_eq!(notified, Some(t.id.clone()));
    assert!(matches!(finished(&b, &t).await, Outcome::Succeeded { .. }));
    assert_eq!(lines(&count), 1);
}

#[tokio::test]
async fn a_killed_supervisor_means_lost_and_its_agent_gone() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let t = task("shell", serde_json::json!(1));
    // The agent (sh) and a grandchild (sleep) it leaves behind.
    let script = "sleep 60 & echo $! > child.pid; echo $$ > my.pid; wait";
    within(10, "dispatch", exec.dispatch(&t, &sh(script, &[])))
        .await
        .unwrap();
    let dir = exec.run_dir(&t);
    let agent_pid = wait_pid(&dir.join("my.pid")).await;
    let child_pid = wait_pid(&dir.join("child.pid")).await;
    wait_state(&exec, &t, "running", |s| {
        matches!(s, RunState::Running { .. })
    })
    .await;

    let supervisor: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the supervisor this test started.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);

    match finished(&exec, &t).await {
        Outcome::Lost { reason, .. } => assert!(reason.contains("supervisor"), "{reason}"),
        other => panic!("expected Lost, got {other:?}"),
    }
    wait_gone(agent_pid).await;
    wait_gone(child_pid).await;
    // Lost is final: dispatching the same attempt again starts nothing.
    within(10, "dispatch", exec.dispatch(&t, &sh(script, &[])))
        .await
        .unwrap();
    assert!(matches!(
        exec.status(&t).await.unwrap(),
        RunState::Finished(Outcome::Lost { .. })
    ));
}

#[tokio::test]
async fn an_attempt_that_never_began_is_not_found_and_can_be_dispatched() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let (exec, _rx) = executor(root.path());
    let t = task("shell", serde_json::json!(1));
    // A coordinator died after creating the run dir, before starting the supervisor.
    std::fs::create_dir_all(exec.run_dir(&t)).unwrap();
    assert_eq!(
        within(10, "status", exec.status(&t)).await.unwrap(),
        RunState::NotFound
    );
    let agent = sh(
        "echo run >> \"$COUNT_FILE\"",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Succeeded { .. }
    ));
    assert_eq!(lines(&count), 1);
}

#[tokio::test]
async fn builtin_echo_and_types_without_command() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let t = task("echo", serde_json::json!({"say": "hi"}));
    within(
        10,
        "dispatch",
        exec.dispatch(&t, &agent("echo", None, &[], &[])),
    )
    .await
    .unwrap();
    match within(10, "status", exec.status(&t)).await.unwrap() {
        RunState::Finished(Outcome::Succeeded { result, .. }) => {
            assert_eq!(result, Some(t.payload.clone()))
        }
        other => panic!("expected Succeeded, got {other:?}"),
    }
    let t = task("coder", serde_json::json!(1));
    match within(
        10,
        "dispatch",
        exec.dispatch(&t, &agent("coder", None, &[], &[])),
    )
    .await
    {
        Err(ExecError::Rejected { message }) => {
            assert!(
                message.contains("coder") && message.contains("command"),
                "{message}"
            )
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn many_attempts_at_once_each_run_once() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let (exec, mut rx) = executor(root.path());
    let agent = sh(
        "echo \"$AO_TASK_ID\" >> \"$COUNT_FILE\"",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    let tasks: Vec<Task> = (0..40)
        .map(|i| task("shell", serde_json::json!(i)))
        .collect();
    within(30, "dispatches", async {
        let dispatches = tasks.iter().map(|t| exec.dispatch(t, &agent));
        for handle in futures_join_all(dispatches).await {
            handle.unwrap();
        }
    })
    .await;
    let mut notified = std::collections::HashSet::new();
    within(30, "notifications", async {
        while notified.len() < tasks.len() {
            notified.insert(rx.recv().await.unwrap());
        }
    })
    .await;
    for t in &tasks {
        assert!(matches!(
            finished(&exec, t).await,
            Outcome::Succeeded { .. }
        ));
    }
    assert_runs_once(&count, &tasks);
}

/// Crashes a coordinator in the middle of dispatching, three times, then lets a last one take
/// over the way the scheduler does (status; `NotFound` → dispatch the same attempt again).
#[tokio::test]
async fn repeated_coordinator_crashes_run_every_attempt_exactly_once() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let script = "echo \"$AO_TASK_ID\" >> \"$COUNT_FILE\"; sleep 0.2";
    let tasks: Vec<Task> = (0..30)
        .map(|i| task("shell", serde_json::json!(i)))
        .collect();
    // Each crash lands in a later dispatch; the earlier ones are already-started no-ops.
    for after in [1, 7, 15] {
        crash_a_coordinator(root.path(), &tasks, script, &count, after).await;
    }
    let (exec, _rx) = executor(root.path());
    let agent = sh(script, &[("COUNT_FILE", count.to_str().unwrap())]);
    for t in &tasks {
        if within(10, "status", exec.status(t)).await.unwrap() == RunState::NotFound {
            within(10, "dispatch", exec.dispatch(t, &agent))
                .await
                .unwrap();
        }
    }
    for t in &tasks {
        let outcome = finished(&exec, t).await;
        assert!(
            matches!(outcome, Outcome::Succeeded { .. }),
            "{}: {outcome:?}",
            t.id
        );
    }
    assert_runs_once(&count, &tasks);
}

fn assert_runs_once(count: &Path, tasks: &[Task]) {
    let text = std::fs::read_to_string(count).unwrap_or_default();
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        *runs.entry(line).or_default() += 1;
    }
    for t in tasks {
        assert_eq!(runs.get(t.id.as_str()), Some(&1), "runs of {}", t.id);
    }
    assert_eq!(runs.len(), tasks.len());
}

/// Runs futures concurrently on this task (no `futures` crate here).
async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("polled to completion"))
        .collect()
}

/// Waits until process `pid` blocks SIGTERM (`SigBlk` in `/proc/<pid>/status`).
async fn blocks_sigterm(pid: i32) {
    let bit = 1u64 << (libc::SIGTERM - 1);
    within(20, "the supervisor to block SIGTERM", async {
        loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let blocked = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
            if blocked.is_some_and(|mask| mask & bit != 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// An agent that appends a line to the returned file each time it runs.
fn counting_agent(root: &Path) -> (AgentType, PathBuf) {
    let count = root.join("count");
    let agent = sh(
        "echo run >> \"$COUNT_FILE\"",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    (agent, count)
}

/// The pid in an attempt's `supervisor.pid` (written atomically, so complete once present).
async fn supervisor_pid(run_dir: &Path) -> i32 {
    let path = run_dir.join("supervisor.pid");
    within(20, "supervisor.pid to appear", async {
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_prepared_attempt_is_started_by_its_primed_supervisor() {
    let root = tempfile::tempdir().unwrap();
    let count = root.path().join("count");
    let (exec, _rx) = executor(root.path());
    let agent = sh(
        "echo \"$AO_ATTEMPT\" >> \"$COUNT_FILE\"",
        &[("COUNT_FILE", count.to_str().unwrap())],
    );
    let t = task("shell", serde_json::json!(1));
    exec.prepare(&t, &agent);
    let dir = exec.run_dir(&t);
    let primed = supervisor_pid(&dir).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(primed), "the primed supervisor waits");
    assert!(!dir.join("started").exists(), "preparing starts nothing");
    assert_eq!(lines(&count), 0, "preparing runs no agent");
    assert!(matches!(
        within(10, "status", exec.status(&t)).await.unwrap(),
        RunState::Pending
    ));

    let handle = within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert_eq!(handle, dir.to_string_lossy());
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Succeeded { .. }
    ));
    assert_eq!(
        supervisor_pid(&dir).await,
        primed,
        "the primed supervisor ran the attempt: no second one"
    );
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "1\n");
}

#[tokio::test]
async fn a_dispatch_right_after_prepare_waits_for_the_primed_supervisor_and_runs_once() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let (agent, count) = counting_agent(root.path());
    let tasks: Vec<Task> = (0..8)
        .map(|i| task("shell", serde_json::json!(i)))
        .collect();
    for t in &tasks {
        exec.prepare(t, &agent);
    }
    for t in &tasks {
        within(10, "dispatch", exec.dispatch(t, &agent))
            .await
            .unwrap();
    }
    for t in &tasks {
        assert!(matches!(
            finished(&exec, t).await,
            Outcome::Succeeded { .. }
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lines(&count), tasks.len(), "each attempt ran once");
}

#[tokio::test]
async fn a_prepared_attempts_deadline_counts_from_its_dispatch() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let agent = sh("sleep 0.5", &[]);
    let mut t = task("shell", serde_json::json!(1));
    // As prepared: a deadline that passes before the dispatch.
    t.deadline_at = Some(now_ms() + 300);
    exec.prepare(&t, &agent);
    supervisor_pid(&exec.run_dir(&t)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // As claimed at the dispatch: its own deadline.
    t.deadline_at = Some(now_ms() + 10_000);
    within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    let outcome = finished(&exec, &t).await;
    assert!(
        matches!(outcome, Outcome::Succeeded { .. }),
        "the deadline of the dispatch applies: {outcome:?}"
    );
}

#[tokio::test]
async fn a_discarded_primed_supervisor_stands_down_and_the_attempt_can_still_run() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let (agent, count) = counting_agent(root.path());
    let t = task("shell", serde_json::json!(1));
    exec.prepare(&t, &agent);
    let dir = exec.run_dir(&t);
    let primed = supervisor_pid(&dir).await;
    exec.discard(&t.id);
    wait_gone(primed).await;
    assert!(
        !dir.join("started").exists(),
        "a primed supervisor never starts on its own"
    );
    assert!(matches!(
        within(10, "status", exec.status(&t)).await.unwrap(),
        RunState::NotFound
    ));
    within(10, "dispatch", exec.dispatch(&t, &agent))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Succeeded { .. }
    ));
    assert_ne!(supervisor_pid(&dir).await, primed);
    assert_eq!(lines(&count), 1);
}

#[tokio::test]
async fn primed_supervisors_stand_down_when_their_coordinator_goes() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let agent = sh("true", &[]);
    let t = task("shell", serde_json::json!(1));
    exec.prepare(&t, &agent);
    let dir = exec.run_dir(&t);
    let primed = supervisor_pid(&dir).await;
    drop(exec);
    wait_gone(primed).await;
    assert!(!dir.join("started").exists());
    let (exec, _rx) = executor(root.path());
    assert!(matches!(
        within(10, "status", exec.status(&t)).await.unwrap(),
        RunState::NotFound
    ));
}

#[tokio::test]
async fn stopping_a_primed_attempt_records_the_stop_and_starts_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (exec, _rx) = executor(root.path());
    let (agent, count) = counting_agent(root.path());
    let t = task("shell", serde_json::json!(1));
    exec.prepare(&t, &agent);
    let primed = supervisor_pid(&exec.run_dir(&t)).await;
    // The executor writes the pid as it spawns; a SIGTERM before the supervisor blocks it would
    // just kill it (an attempt never begun, which the scheduler settles as cancelled too).
    blocks_sigterm(primed).await;
    within(10, "stop", exec.stop(&t, StopReason::Cancel))
        .await
        .unwrap();
    assert!(matches!(
        finished(&exec, &t).await,
        Outcome::Cancelled { .. }
    ));
    assert!(!exec.run_dir(&t).join("started").exists());
    assert_eq!(lines(&count), 0, "the agent never started");
}
