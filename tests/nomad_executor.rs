//! The Nomad executor against a fake Nomad that follows the API docs' samples
//! (`../shared/fixtures/nomad-api`): dispatch shape, idempotency, status mapping, stop, token
//! handling, and the real scheduler driving it (SQLite in memory). Every await has a timeout.

mod fakes;

use std::sync::Arc;
use std::time::Duration;

use agent_orchestrator::executor::{ExecError, Executor, Outcome, RunState, StopReason};
use agent_orchestrator::store::sqlite::SqliteBackend;
use agent_orchestrator::store::TaskStore;
use agent_orchestrator::task::{now_ms, AttemptRecord, NewTask, Status, Task};
use base64::Engine;
use fakes::harness::{self, client_config, inputs, Core, LogBuffer};
use fakes::nomad::{FakeNomad, Mode};
use fakes::within;

const TOKEN: &str = "s3cr3t-nomad-token-4f1c";

fn new_task(agent_type: &str, payload: serde_json::Value) -> Task {
    let mut task = Task::new(
        NewTask {
            agent_type: agent_type.into(),
            payload,
            priority: 0,
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            idempotency_key: None,
        },
        now_ms(),
    );
    task.attempt = 1;
    task.status = Status::Dispatched;
    task
}

#[tokio::test]
async fn dispatch_registers_jobs_and_sends_payload_meta_token_and_idempotency_token() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut client = client_config(&fake.url(), Some(TOKEN));
    client.namespace = Some("agents".into());
    client.region = Some("eu".into());
    let exec = harness::executor(client.clone(), &inputs, tx.clone()).await;

    // Both parents were planned (Diff: true) and registered.
    let requests = fake.requests();
    let plans: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/plan"))
        .collect();
    assert_eq!(plans.len(), 2);
    assert!(plans.iter().all(|r| r.json()["Diff"] == true));
    assert_eq!(fake.state.lock().unwrap().registrations, 2);
    assert!(requests.iter().any(|r| r.method == "POST"
        && r.path == "/v1/jobs"
        && r.json()["Job"]["ID"] == "dev-coder-agent"));

    let task = new_task("coder", serde_json::json!({"issue": 42}));
    let agent = &inputs.agent_types["coder"];
    let handle = within(5, "dispatch", exec.dispatch(&task, agent))
        .await
        .expect("dispatch");
    assert!(
        handle.starts_with(&format!("dev-coder-agent/dispatch-{}-", task.id)),
        "{handle}"
    );
    let dispatch = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/dispatch"))
        .expect("a dispatch request");
    assert_eq!(dispatch.path, "/v1/job/dev-coder-agent/dispatch");
    assert_eq!(
        dispatch.param("idempotency_token"),
        Some(format!("{}-1", task.id).as_str())
    );
    let body = dispatch.json();
    assert_eq!(body["Meta"]["task_id"], task.id.as_str());
    assert_eq!(body["Meta"]["attempt"], "1");
    assert_eq!(body["IdPrefixTemplate"], task.id.as_str());
    let payload = base64::engine::general_purpose::STANDARD
        .decode(body["Payload"].as_str().unwrap())
        .unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload, task.agent_view());
    // Every request carried the token, namespace and region.
    for r in fake.requests() {
        assert_eq!(
            r.header("X-Nomad-Token"),
            Some(TOKEN),
            "{} {}",
            r.method,
            r.path
        );
        assert_eq!(r.param("namespace"), Some("agents"), "{}", r.path);
        assert_eq!(r.param("region"), Some("eu"), "{}", r.path);
    }

    // A second coordinator start: the plan shows no change, nothing is re-registered.
    drop(exec);
    let _again = harness::executor(client, &inputs, tx).await;
    assert_eq!(fake.state.lock().unwrap().registrations, 2);
}

/// The job files of `jobs/`, copied so a test may edit them.
fn jobs_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(harness::job_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

const RESULTS_URL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/dev-results";

#[tokio::test]
async fn the_result_queue_url_is_dispatch_meta_when_the_job_declares_it() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client_config(&fake.url(), Some(TOKEN));
    let jobs = jobs_copy();
    // An operator's older template for `tester`, without the optional meta key.
    let tester = jobs.path().join("tester-agent.nomad.hcl");
    let text = std::fs::read_to_string(&tester).unwrap();
    let old = text.replace(
        r#"meta_optional = ["attempt", "result_queue_url"]"#,
        r#"meta_optional = ["attempt"]"#,
    );
    assert_ne!(old, text, "the rendered job declares result_queue_url");
    std::fs::write(&tester, old).unwrap();
    let exec = harness::executor_with(
        client,
        &inputs,
        tx,
        jobs.path().to_path_buf(),
        Some(RESULTS_URL),
    )
    .await;

    for agent_type in ["coder", "tester"] {
        let task = new_task(agent_type, serde_json::json!({}));
        let agent = &inputs.agent_types[agent_type];
        within(5, "dispatch", exec.dispatch(&task, agent))
            .await
            .unwrap_or_else(|e| panic!("{agent_type}: {e}"));
    }
    let metas: std::collections::HashMap<String, serde_json::Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/dispatch"))
        .map(|r| (r.path.clone(), r.json()["Meta"].clone()))
        .collect();
    assert_eq!(
        metas["/v1/job/dev-coder-agent/dispatch"]["result_queue_url"],
        RESULTS_URL
    );
    // Nomad would refuse the key on a job that does not declare it: it is left out.
    let tester = &metas["/v1/job/dev-tester-agent/dispatch"];
    assert!(tester.get("result_queue_url").is_none(), "{tester}");
    assert!(tester.get("task_id").is_some());
}

/// The rendered coordinator job carries the agent jobs as templates into `local/jobs/`, which
/// it passes as `--nomad-job-dir`: written out as Nomad would, they are the files `render`
/// wrote, and the executor registers and dispatches from them.
#[tokio::test]
async fn the_coordinator_job_carries_the_agent_jobs_it_dispatches() {
    let fixtures = fixtures_or_skip!();
    let coordinator = harness::job_dir().join("coordinator.nomad.hcl");
    let text = std::fs::read_to_string(&coordinator).unwrap();
    let job = agent_orchestrator::jobspec::parse_jobspec(&text, "coordinator.nomad.hcl").unwrap();
    let task = &job["Job"]["TaskGroups"][0]["Tasks"][0];
    let local = tempfile::tempdir().unwrap();
    let mut shipped = Vec::new();
    for template in task["Templates"].as_array().unwrap() {
        let dest = template["DestPath"].as_str().unwrap();
        let Some(file) = dest.strip_prefix("local/jobs/") else {
            continue;
        };
        std::fs::create_dir_all(local.path().join("jobs")).unwrap();
        let data = template["EmbeddedTmpl"].as_str().unwrap();
        assert!(!data.contains(template["LeftDelim"].as_str().unwrap()));
        std::fs::write(local.path().join("jobs").join(file), data).unwrap();
        assert_eq!(
            data,
            std::fs::read_to_string(harness::job_dir().join(file)).unwrap(),
            "{file}"
        );
        shipped.push(file.to_string());
    }
    shipped.sort();
    assert_eq!(
        shipped,
        [
            "coder-agent.nomad.hcl",
            "docs-agent.nomad.hcl",
            "reviewer-agent.nomad.hcl",
            "tester-agent.nomad.hcl"
        ]
    );
    let args: Vec<&str> = task["Config"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args
        .windows(2)
        .any(|w| w == ["--nomad-job-dir", "${NOMAD_TASK_DIR}/jobs"]));

    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client_config(&fake.url(), Some(TOKEN));
    let exec = harness::executor_with(client, &inputs, tx, local.path().join("jobs"), None).await;
    let task = new_task("coder", serde_json::json!({}));
    within(
        5,
        "dispatch",
        exec.dispatch(&task, &inputs.agent_types["coder"]),
    )
    .await
    .expect("dispatch from the shipped job");
    let registered = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/jobs" && r.json()["Job"]["ID"] == "dev-coder-agent")
        .expect("the coder job was registered");
    let golden = std::fs::read_to_string(harness::job_dir().join("coder-agent.nomad.hcl")).unwrap();
    let golden =
        agent_orchestrator::jobspec::parse_jobspec(&golden, "coder-agent.nomad.hcl").unwrap();
    assert_eq!(
        registered.json()["Job"]["TaskGroups"],
        golden["Job"]["TaskGroups"]
    );
}

#[tokio::test]
async fn the_same_attempt_dispatched_twice_gets_the_same_child() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let task = new_task("tester", serde_json::json!({}));
    let agent = &inputs.agent_types["tester"];
    // Two executors (a restart in between): no in-memory memory of the first dispatch.
    let first = harness::executor(client_config(&fake.url(), None), &inputs, tx.clone()).await;
    let a = within(5, "dispatch 1", first.dispatch(&task, agent))
        .await
        .unwrap();
    drop(first);
    let second = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
    let b = within(5, "dispatch 2", second.dispatch(&task, agent))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(fake.children_of_task(&task.id).len(), 1);
    // The next attempt is a new child.
    let mut next = task.clone();
    next.attempt = 2;
    let c = within(5, "dispatch 3", second.dispatch(&next, agent))
        .await
        .unwrap();
    assert_ne!(a, c);
    assert_eq!(fake.children_of_task(&task.id).len(), 2);
    // Without a token configured, no request carries the header.
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.header("X-Nomad-Token").is_none()));
}

#[tokio::test]
async fn a_payload_over_16_kib_is_rejected_before_dispatch() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
    let task = new_task("coder", serde_json::json!({"blob": "x".repeat(17 * 1024)}));
    let err = within(
        5,
        "dispatch",
        exec.dispatch(&task, &inputs.agent_types["coder"]),
    )
    .await
    .unwrap_err();
    match err {
        ExecError::Rejected { message } => assert!(message.contains("16 KiB"), "{message}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(fake
        .requests()
        .iter()
        .all(|r| !r.path.ends_with("/dispatch")));
}

#[tokio::test]
async fn allocation_states_map_to_run_states() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Unplaced).await;
    let inputs = inputs(8, 8);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
    let agent = &inputs.agent_types["coder"];

    // No handle, no child: not found.
    let nothing = new_task("coder", serde_json::json!({}));
    assert_eq!(exec.status(&nothing).await.unwrap(), RunState::NotFound);

    let check = |client_status: &'static str, exit: i64, oom: bool| {
        let fake = &fake;
        let exec = &exec;
        async move {
            let mut task = new_task("coder", serde_json::json!({}));
            let child = within(5, "dispatch", exec.dispatch(&task, agent))
                .await
                .unwrap();
            task.executor_handle = Some(child.clone());
            // Not placed yet: pending.
            assert_eq!(exec.status(&task).await.unwrap(), RunState::Pending);
            fake.set_alloc(&child, client_status, exit, oom);
            (
                within(5, "status", exec.status(&task)).await.unwrap(),
                task,
                child,
            )
        }
    };
    let (state, _, _) = check("pending", 0, false).await;
    assert_eq!(state, RunState::Pending);
    let (state, _, _) = check("running", 0, false).await;
    assert!(matches!(state, RunState::Running { .. }), "{state:?}");
    let (state, _, _) = check("complete", 0, false).await;
    assert!(
        matches!(
            state,
            RunState::Finished(Outcome::Succeeded { result: None, .. })
        ),
        "{state:?}"
    );
    let (state, _, _) = check("failed", 3, false).await;
    match state {
        RunState::Finished(Outcome::Failed { error, .. }) => {
            assert!(error.contains('3'), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let (state, _, _) = check("failed", 137, true).await;
    assert!(
        matches!(state, RunState::Finished(Outcome::Lost { .. })),
        "{state:?}"
    );
    let (state, _, _) = check("lost", 0, false).await;
    assert!(
        matches!(state, RunState::Finished(Outcome::Lost { .. })),
        "{state:?}"
    );
    // A handle whose child was garbage-collected: lost.
    let (_, task, child) = check("running", 0, false).await;
    fake.purge(&child);
    let state = exec.status(&task).await.unwrap();
    assert!(
        matches!(state, RunState::Finished(Outcome::Lost { .. })),
        "{state:?}"
    );
}

#[tokio::test]
async fn a_child_that_finishes_between_the_status_reads_is_not_lost() {
    // The executor lists the child's allocations (none yet), then reads the child job; in
    // between Nomad places the allocation and the agent finishes (the job reads `dead`). That
    // is a succeeded attempt, not one that "ended without being placed" (lost, and dispatched
    // a second time).
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Unplaced).await;
    let inputs = inputs(8, 8);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
    let mut task = new_task("coder", serde_json::json!({}));
    let child = within(
        5,
        "dispatch",
        exec.dispatch(&task, &inputs.agent_types["coder"]),
    )
    .await
    .unwrap();
    task.executor_handle = Some(child);
    fake.state.lock().unwrap().complete_before_job_read = true;
    let state = within(5, "status", exec.status(&task)).await.unwrap();
    assert!(
        matches!(
            state,
            RunState::Finished(Outcome::Succeeded { result: None, .. })
        ),
        "{state:?}"
    );
}

#[tokio::test]
async fn stop_deletes_the_child_and_reads_as_cancelled_or_timed_out() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(8, 8);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
    let agent = &inputs.agent_types["coder"];
    for (reason, cancelled) in [(StopReason::Cancel, true), (StopReason::Timeout, false)] {
        let mut task = new_task("coder", serde_json::json!({}));
        let child = within(5, "dispatch", exec.dispatch(&task, agent))
            .await
            .unwrap();
        task.executor_handle = Some(child.clone());
        fakes::eventually(5, "running", || {
            fake.state
                .lock()
                .unwrap()
                .allocs
                .values()
                .any(|a| a.job_id == child)
        })
        .await;
        within(5, "stop", exec.stop(&task, reason)).await.unwrap();
        let encoded = child.replace('/', "%2F");
        assert!(fake
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == format!("/v1/job/{encoded}")));
        let state = exec.status(&task).await.unwrap();
        if cancelled {
            assert!(
                matches!(state, RunState::Finished(Outcome::Cancelled { .. })),
                "{state:?}"
            );
        } else {
            assert!(
                matches!(state, RunState::Finished(Outcome::TimedOut { .. })),
                "{state:?}"
            );
        }
        // Stopping again is a no-op.
        within(5, "stop again", exec.stop(&task, reason))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_never_reach_logs_or_errors() {
    let fixtures = fixtures_or_skip!();
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client_config(&fake.url(), Some(TOKEN));
    assert!(!format!("{client:?}").contains(TOKEN));
    let exec = harness::executor(client, &inputs, tx).await;
    let task = new_task("coder", serde_json::json!({}));
    within(
        5,
        "dispatch",
        exec.dispatch(&task, &inputs.agent_types["coder"]),
    )
    .await
    .unwrap();
    fake.fail_with(Some(500));
    let mut other = new_task("coder", serde_json::json!({}));
    other.attempt = 1;
    let err = within(
        5,
        "dispatch in outage",
        exec.dispatch(&other, &inputs.agent_types["coder"]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::Unavailable { .. }), "{err:?}");
    assert!(!err.to_string().contains(TOKEN));
    fake.fail_with(Some(403));
    let err = exec.status(&task).await;
    if let Err(e) = err {
        assert!(!e.to_string().contains(TOKEN));
    }
    let text = logs.text();
    assert!(!text.is_empty(), "logs were captured");
    assert!(!text.contains(TOKEN), "token leaked into logs");
}

// ------------------------------------------------------------------ with the real scheduler

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_tasks_over_two_agent_types_succeed() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(
        &fixtures,
        Mode::Complete {
            run_for: Duration::from_millis(100),
        },
    )
    .await;
    let store = Arc::new(SqliteBackend::open_in_memory().unwrap());
    let core = Core::start(
        store,
        client_config(&fake.url(), Some(TOKEN)),
        inputs(8, 5),
        harness::fast_settings(),
        true,
    )
    .await;
    let mut ids = harness::submit(&core.ctx, "coder", 50, None).await;
    ids.extend(harness::submit(&core.ctx, "tester", 50, None).await);
    let tasks = harness::wait_terminal(&core.ctx, &ids, 60).await;
    assert_eq!(harness::count(&tasks, Status::Succeeded), 100);
    // A second child is only legitimate for a second attempt; say which it was.
    let doubled: Vec<String> = tasks
        .iter()
        .filter(|t| fake.children_of_task(&t.id).len() != 1)
        .map(|t| {
            let children: Vec<_> = fake
                .children_of_task(&t.id)
                .into_iter()
                .map(|c| (c.id, c.token, c.meta.get("attempt").cloned()))
                .collect();
            format!(
                "task {}: attempts {:?}; children {children:?}",
                t.id, t.attempts
            )
        })
        .collect();
    assert!(
        doubled.is_empty(),
        "one child per task:\n{}",
        doubled.join("\n")
    );
    for task in &tasks {
        assert!(task
            .executor_handle
            .as_deref()
            .is_some_and(|h| h.contains(&task.id)));
    }
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeout_and_cancel_end_in_a_delete_of_the_child() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Hold).await;
    let store = Arc::new(SqliteBackend::open_in_memory().unwrap());
    let core = Core::start(
        store,
        client_config(&fake.url(), None),
        harness::inputs_with_coder_timeout(4, 4, Some("1s")),
        harness::fast_settings(),
        true,
    )
    .await;
    let timed = harness::submit(&core.ctx, "coder", 1, Some(1)).await;
    let cancel = harness::submit(&core.ctx, "tester", 1, None).await;
    fakes::eventually(10, "both running", || {
        fake.children().len() == 2 && fake.state.lock().unwrap().allocs.len() == 2
    })
    .await;
    // Wait until the tester task is recorded as running, then cancel it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while harness::get(&core.ctx, &cancel[0]).await.status != Status::Running {
        assert!(std::time::Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    within(
        5,
        "cancel",
        agent_orchestrator::intake::cancel(&core.ctx, &cancel[0]),
    )
    .await
    .expect("cancel");
    let tasks = harness::wait_terminal(&core.ctx, &[timed[0].clone(), cancel[0].clone()], 20).await;
    assert_eq!(tasks[0].status, Status::TimedOut, "{:?}", tasks[0].error);
    assert_eq!(tasks[1].status, Status::Cancelled);
    for task in &tasks {
        let child = &fake.children_of_task(&task.id)[0];
        assert!(child.stopped, "child of {} was stopped", task.id);
        let encoded = child.id.replace('/', "%2F");
        assert!(fake
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == format!("/v1/job/{encoded}")));
    }
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nomad_outage_delays_but_loses_nothing_and_the_breaker_recovers() {
    let fixtures = fixtures_or_skip!();
    let mut fake = FakeNomad::start(
        &fixtures,
        Mode::Complete {
            run_for: Duration::from_millis(50),
        },
    )
    .await;
    let store = Arc::new(SqliteBackend::open_in_memory().unwrap());
    let core = Core::start(
        store,
        client_config(&fake.url(), None),
        inputs(4, 4),
        harness::fast_settings(),
        true,
    )
    .await;
    // 500s first, then a closed port.
    fake.fail_with(Some(500));
    let mut ids = harness::submit(&core.ctx, "coder", 10, None).await;
    let ctx = core.ctx.clone();
    fakes::eventually(15, "breaker opens", || {
        ctx.agent_statuses()
            .get("coder")
            .is_some_and(|s| s.circuit != "closed")
    })
    .await;
    fake.fail_with(None);
    fake.close();
    ids.extend(harness::submit(&core.ctx, "tester", 10, None).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.reopen().await;
    let tasks = harness::wait_terminal(&core.ctx, &ids, 60).await;
    assert_eq!(harness::count(&tasks, Status::Succeeded), 20);
    for task in &tasks {
        assert_eq!(fake.children_of_task(&task.id).len(), 1);
    }
    let ctx = core.ctx.clone();
    fakes::eventually(10, "breaker closes", || {
        ctx.agent_statuses()
            .get("coder")
            .is_some_and(|s| s.circuit == "closed")
    })
    .await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_between_dispatch_and_recording_creates_no_second_child() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(
        &fixtures,
        Mode::Complete {
            run_for: Duration::from_millis(300),
        },
    )
    .await;
    let store = Arc::new(SqliteBackend::open_in_memory().unwrap());
    let inputs = inputs(4, 4);
    // The first coordinator claimed attempt 1 and dispatched it, then died before recording
    // the handle.
    let task = Task::new(
        NewTask {
            agent_type: "coder".into(),
            payload: serde_json::json!({"x": 1}),
            priority: 0,
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            idempotency_key: None,
        },
        now_ms(),
    );
    within(5, "create", store.create(&task)).await.unwrap();
    let mut claimed = task.clone();
    claimed.status = Status::Dispatched;
    claimed.attempt = 1;
    claimed.deadline_at = Some(now_ms() + 60_000);
    claimed.attempts.push(AttemptRecord {
        attempt: 1,
        dispatched_at: now_ms(),
        started_at: None,
        finished_at: None,
        outcome: None,
        error: None,
        handle: None,
    });
    let claimed = within(5, "claim", store.update(&claimed, task.version))
        .await
        .unwrap();
    {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let first = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
        within(
            5,
            "dispatch",
            first.dispatch(&claimed, &inputs.agent_types["coder"]),
        )
        .await
        .unwrap();
    }
    assert_eq!(fake.children_of_task(&task.id).len(), 1);
    // The restarted coordinator finds the attempt and runs it to the end, with no new child.
    let core = Core::start(
        store,
        client_config(&fake.url(), None),
        inputs,
        harness::fast_settings(),
        true,
    )
    .await;
    let tasks = harness::wait_terminal(&core.ctx, std::slice::from_ref(&task.id), 20).await;
    assert_eq!(tasks[0].status, Status::Succeeded);
    assert_eq!(tasks[0].attempt, 1);
    assert_eq!(fake.children_of_task(&task.id).len(), 1);
    core.stop().await;
}

#[tokio::test]
async fn dispatching_holds_back_while_children_pile_up_pending() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(&fixtures, Mode::Unplaced).await;
    let inputs = inputs(2, 2);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = harness::executor(client_config(&fake.url(), None), &inputs, tx).await;
    let agent = &inputs.agent_types["coder"];
    for _ in 0..2 {
        let task = new_task("coder", serde_json::json!({}));
        within(5, "dispatch", exec.dispatch(&task, agent))
            .await
            .unwrap();
    }
    let task = new_task("coder", serde_json::json!({}));
    match within(5, "dispatch 3", exec.dispatch(&task, agent)).await {
        Err(ExecError::Unavailable { message }) => {
            assert!(
                message.contains("2 pending children of coder, holding back"),
                "{message}"
            )
        }
        other => panic!("expected a hold-back, got {other:?}"),
    }
    assert_eq!(fake.children().len(), 2);
    // Once they are placed, dispatching goes on.
    fake.set_mode(Mode::Hold);
    fakes::eventually(5, "placed", || fake.state.lock().unwrap().allocs.len() == 2).await;
    within(5, "dispatch 4", exec.dispatch(&task, agent))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_nomad_executor_runs_a_task_through_nomad() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeNomad::start(
        &fixtures,
        Mode::Complete {
            run_for: Duration::from_millis(100),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let inputs_path = dir.path().join("inputs.tfvars.json");
    let inputs = serde_json::json!({"cluster_name": "dev", "agent_types": {"coder": {
        "image": "img", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": 2}}});
    std::fs::write(&inputs_path, inputs.to_string()).unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    };
    let (api, metrics) = (port(), port());
    let log_path = dir.path().join("serve.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-orchestrator"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--inputs")
        .arg(&inputs_path)
        .args(["--executor", "nomad"])
        .arg("--nomad-job-dir")
        .arg(harness::job_dir())
        .env("NOMAD_ADDR", fake.url())
        .env("NOMAD_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start serve");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{api}");
    let result = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if http.get(format!("{base}/health")).send().await.is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "serve never answered");
            assert!(child.try_wait().unwrap().is_none(), "serve exited");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let created: serde_json::Value = http
            .post(format!("{base}/tasks"))
            .json(&serde_json::json!({"agent_type": "coder", "payload": {"issue": 7}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().expect("task id").to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let task: serde_json::Value = http
                .get(format!("{base}/tasks/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if task["status"] == "succeeded" {
                break (id, task);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task never succeeded: {task}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (id, task) = within(70, "serve runs a task", result).await;
    let children = fake.children_of_task(&id);
    assert_eq!(children.len(), 1);
    assert_eq!(task["executor_handle"], children[0].id.as_str());
    assert_eq!(children[0].dispatched_with.as_deref(), Some(TOKEN));
    // SAFETY: signalling our own child process by its pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("dispatched to nomad"), "{log}");
    assert!(!log.contains(TOKEN), "token in logs");
}

#[test]
fn the_wire_types_read_the_documented_samples() {
    use agent_orchestrator::executor::nomad::wire;
    let fixtures = fixtures_or_skip!();
    fn read<T: serde::de::DeserializeOwned>(dir: &std::path::Path, rel: &str) -> T {
        serde_json::from_value(fakes::load(dir, rel))
            .unwrap_or_else(|e| panic!("{rel} does not decode: {e}"))
    }
    let dispatch: wire::DispatchResponse = read(&fixtures, "nomad-api/jobs/dispatch.response.json");
    assert_eq!(
        dispatch.dispatched_job_id,
        "example/dispatch-1485408778-81644024"
    );
    let request: serde_json::Value = fakes::load(&fixtures, "nomad-api/jobs/dispatch.request.json");
    let ours = serde_json::to_value(wire::DispatchRequest {
        payload: "A28C3==".into(),
        meta: [("key".to_string(), "Value".to_string())].into(),
        id_prefix_template: None,
    })
    .unwrap();
    assert_eq!(ours, request, "our dispatch body has the documented shape");
    let plan: wire::PlanResponse = read(&fixtures, "nomad-api/jobs/plan.response.json");
    assert_eq!(plan.diff.map(|d| d.kind).as_deref(), Some("Added"));
    let _: wire::RegisterResponse = read(&fixtures, "nomad-api/jobs/register.response.json");
    let _: wire::StopResponse = read(&fixtures, "nomad-api/jobs/stop.response.json");
    let summary: wire::JobSummary = read(&fixtures, "nomad-api/jobs/job-summary.response.json");
    assert!(summary.children.is_some());
    let job: wire::Job = read(&fixtures, "nomad-api/jobs/read-job.response.json");
    assert!(!job.id.is_empty());
    let jobs: Vec<wire::JobStub> = read(&fixtures, "nomad-api/jobs/list.response.json");
    assert!(!jobs.is_empty());
    for rel in [
        "nomad-api/jobs/allocations.response.json",
        "nomad-api/allocations/list.response.json",
    ] {
        let allocs: Vec<wire::AllocationStub> = read(&fixtures, rel);
        assert!(allocs.iter().all(|a| !a.client_status.is_empty()), "{rel}");
    }
    let kv: Vec<agent_orchestrator::consul::KvEntry> =
        read(&fixtures, "consul-api/kv/read.response.json");
    assert_eq!(kv[0].lock_index, 200);
    let service: agent_orchestrator::consul::ServiceDefinition = serde_json::from_value({
        let mut v = fakes::load(&fixtures, "consul-api/agent-service/register.request.json");
        // The sample's check is a script check; ours is HTTP with the same other fields.
        v["Check"] = serde_json::json!({"HTTP": "http://127.0.0.1:8000/health",
            "Interval": v["Check"]["Interval"], "Timeout": v["Check"]["Timeout"],
            "DeregisterCriticalServiceAfter": v["Check"]["DeregisterCriticalServiceAfter"]});
        v
    })
    .expect("the documented registration decodes as ours");
    assert_eq!(service.id, "redis1");
}
