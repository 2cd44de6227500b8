//! End-to-end tests of the coordinator on the embedded default: the real binary, real
//! subprocess agents, SQLite, HTTP over loopback (issue 3's acceptance).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn two_hundred_tasks_respect_each_types_limit_and_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "sleep 0.02");
    // The widest type's agents last long enough that a backlog builds up behind them.
    let slow = logging_script(&log, "sleep 0.2");
    let inputs = shell_inputs(
        dir.path(),
        &[("one", 1, &script), ("two", 2, &script), ("five", 5, &slow)],
    );
    let coordinator = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    let types = ["one", "two", "five"];
    let mut ids = Vec::new();
    for i in 0..200 {
        let agent_type = types[i % 3];
        let (status, body) =
            coordinator.submit(json!({"agent_type": agent_type, "payload": {"n": i}}));
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let task = coordinator.wait_terminal(id, Duration::from_secs(120));
        assert_eq!(task["status"], "succeeded", "{task}");
    }

    let events = read_events(&log);
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.start) {
        *starts.entry(e.task_id.as_str()).or_default() += 1;
    }
    assert_eq!(starts.len(), 200, "every task ran");
    assert!(
        starts.values().all(|&n| n == 1),
        "a task ran more than once: {:?}",
        starts.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>()
    );
    for (agent_type, limit) in [("one", 1), ("two", 2), ("five", 5)] {
        let observed = max_concurrency(&events, agent_type);
        println!("{agent_type}: max_instances {limit}, observed maximum {observed}");
        assert!(
            observed <= limit,
            "{agent_type} ran {observed} at once, limit {limit}"
        );
        assert!(observed >= 1);
    }
    // The widest type really runs in parallel (how far depends on the submit rate).
    assert!(
        max_concurrency(&events, "five") >= 2,
        "five never ran in parallel"
    );
}

#[test]
fn crash_test_sigkill_during_500_tasks_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "sleep 0.0$(( $(od -An -N1 -tu1 /dev/urandom) % 8 ))");
    let inputs = shell_inputs(dir.path(), &[("alpha", 4, &script), ("beta", 8, &script)]);
    let mut coordinator = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    // A client that retries each submit (same idempotency key) until the coordinator takes it.
    let submit_until_accepted = |c: &Coordinator, i: usize| -> String {
        let body = json!({"agent_type": if i % 2 == 0 { "alpha" } else { "beta" }, "payload": {"n": i}, "idempotency_key": format!("k-{i}")});
        loop {
            let answer = common::blocking_client()
                .post(format!("{}/tasks", c.base))
                .json(&body)
                .send();
            if let Ok(r) = answer {
                if r.status().is_success() {
                    let v: Value = r.json().unwrap();
                    return v["id"].as_str().unwrap().to_string();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut ids = Vec::new();
    let mut kills = 0;
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    let mut next_random = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let kill_points: Vec<usize> = {
        let mut points: Vec<usize> = (0..6)
            .map(|_| 20 + (next_random() % 460) as usize)
            .collect();
        points.sort();
        points
    };
    for i in 0..500 {
        ids.push(submit_until_accepted(&coordinator, i));
        if kill_points.contains(&i) {
            std::thread::sleep(Duration::from_millis(next_random() % 40));
            coordinator.restart();
            kills += 1;
        }
    }
    // More kills while the backlog drains.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150 + next_random() % 200));
        coordinator.restart();
        kills += 1;
    }
    assert!(kills >= 5);

    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 500, "idempotent retries created duplicates");
    for id in &ids {
        let task = coordinator.wait_terminal(id, Duration::from_secs(180));
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    let all = coordinator.all_tasks();
    assert_eq!(all.len(), 500, "tasks in the store");

    let events = read_events(&log);
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.start) {
        *starts.entry(e.task_id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = starts.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "tasks not run exactly once: {twice:?}");
    assert_eq!(starts.len(), 500);
    println!("crash test: {kills} SIGKILLs, 500 tasks, each ran once");

    let db = coordinator.data_dir.join("agent-orchestrator.db");
    coordinator.kill9();
    let backend = agent_orchestrator::store::sqlite::SqliteBackend::open(&db).unwrap();
    backend.integrity_check().expect("SQLite integrity");
}

#[test]
fn retries_back_off_then_succeed_or_fail_and_timeouts_and_cancel_kill_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let flaky = "[ \"$AO_ATTEMPT\" -ge 3 ] || exit 7; echo '{\"ok\": true}' > \"$AO_RESULT_FILE\"";
    let failing = "echo boom >&2; exit 1";
    let hang = format!("echo $$ > {}/$AO_TASK_ID; exec sleep 60", pids.display());
    let inputs = shell_inputs(
        dir.path(),
        &[
            ("flaky", 2, flaky),
            ("failing", 2, failing),
            ("hang", 4, &hang),
        ],
    );
    let coordinator = Coordinator::start(
        dir.path(),
        &[
            "--inputs",
            inputs.to_str().unwrap(),
            "--retry-base",
            "300ms",
        ],
    );

    let (_, flaky_task) = coordinator.submit(json!({"agent_type": "flaky", "payload": {}}));
    let (_, failing_task) = coordinator.submit(json!({"agent_type": "failing", "payload": {}}));
    let (_, hung_task) =
        coordinator.submit(json!({"agent_type": "hang", "payload": {}, "timeout_seconds": 1}));
    let (_, cancelled_task) = coordinator.submit(json!({"agent_type": "hang", "payload": {}}));

    // Retry then success, with growing gaps between attempts (300 ms, then 600 ms, ±25 %).
    let task =
        coordinator.wait_terminal(flaky_task["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"ok": true}));
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{task}");
    assert_eq!(attempts[0]["outcome"], "failed");
    let gap = |a: &Value, b: &Value| {
        b["dispatched_at"].as_i64().unwrap() - a["finished_at"].as_i64().unwrap()
    };
    let (g1, g2) = (
        gap(&attempts[0], &attempts[1]),
        gap(&attempts[1], &attempts[2]),
    );
    println!("backoff gaps: {g1} ms, {g2} ms");
    assert!(g1 >= 225, "first backoff too short: {g1} ms");
    assert!(g2 >= 450, "second backoff too short: {g2} ms");
    assert!(g2 > g1, "backoff did not grow");

    // Always failing: failed after max_attempts (3), with the error recorded.
    let task = coordinator.wait_terminal(
        failing_task["id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"].as_array().unwrap().len(), 3);

    // Hung: timed_out, and its process is gone.
    let hung_id = hung_task["id"].as_str().unwrap();
    let task = coordinator.wait_terminal(hung_id, Duration::from_secs(30));
    assert_eq!(task["status"], "timed_out", "{task}");
    assert_process_gone(&pids.join(hung_id));

    // Cancel a running task: its process is stopped.
    let cancel_id = cancelled_task["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.join(cancel_id).exists() {
        assert!(Instant::now() < deadline, "hang agent never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = coordinator.post(&format!("/tasks/{cancel_id}/cancel"), "");
    assert!(status == 202 || status == 200, "{status} {body}");
    let task = coordinator.wait_terminal(cancel_id, Duration::from_secs(20));
    assert_eq!(task["status"], "cancelled", "{task}");
    assert_process_gone(&pids.join(cancel_id));
}

fn assert_process_gone(pid_file: &std::path::Path) {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid);
        if !alive {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn bad_input_on_every_endpoint_gets_its_status_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let mut coordinator = Coordinator::start(dir.path(), &["--max-body-bytes", "4096"]);
    let c = &coordinator;
    let check = |(status, body): (u16, Value), want: u16, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    };
    check(c.post("/tasks", "{not json"), 400, "bad_request");
    check(c.post("/tasks", "[1,2]"), 422, "invalid");
    check(
        c.post("/tasks", r#"{"agent_type": "nope"}"#),
        422,
        "invalid",
    );
    check(
        c.post("/tasks", r#"{"agent_type": "echo", "extra": 1}"#),
        422,
        "invalid",
    );
    check(
        c.post("/tasks", r#"{"agent_type": "echo", "priority": 99999}"#),
        422,
        "invalid",
    );
    check(
        c.post("/tasks", r#"{"agent_type": "echo", "timeout_seconds": 0}"#),
        422,
        "invalid",
    );
    let big = format!(
        r#"{{"agent_type": "echo", "payload": "{}"}}"#,
        "x".repeat(10_000)
    );
    check(c.post("/tasks", &big), 413, "too_large");
    check(c.get("/tasks/not-a-uuid"), 400, "bad_request");
    check(
        c.get("/tasks/01a207f6-30ba-756d-bcdc-2ddaef6fc4c5"),
        404,
        "not_found",
    );
    check(c.post("/tasks/not-a-uuid/cancel", ""), 400, "bad_request");
    check(
        c.post("/tasks/01a207f6-30ba-756d-bcdc-2ddaef6fc4c5/cancel", ""),
        404,
        "not_found",
    );
    check(c.get("/tasks?status=bogus"), 400, "bad_request");
    check(c.get("/tasks?limit=0"), 400, "bad_request");
    check(c.get("/tasks?cursor=%%%"), 400, "bad_request");
    check(c.get("/nowhere"), 404, "not_found");
    check(c.post("/health", ""), 405, "method_not_allowed");
    check(
        c.post("/tasks/01a207f6-30ba-756d-bcdc-2ddaef6fc4c5", ""),
        405,
        "method_not_allowed",
    );
    assert!(c.all_tasks().is_empty(), "bad requests stored tasks");

    // Invalid transition: cancelling a finished task.
    let (status, created) = c.submit(json!({"agent_type": "echo", "payload": {"a": 1}}));
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        c.wait_terminal(id, Duration::from_secs(10))["status"],
        "succeeded"
    );
    check(
        c.post(&format!("/tasks/{id}/cancel"), ""),
        409,
        "invalid_transition",
    );
    assert_eq!(
        c.task(id)["status"],
        "succeeded",
        "a refused cancel changed the task"
    );

    // Idempotency key: the second submit returns the first task.
    let (s1, a) = c.submit(json!({"agent_type": "echo", "idempotency_key": "same"}));
    let (s2, b) = c.submit(json!({"agent_type": "echo", "idempotency_key": "same"}));
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(c.all_tasks().len(), 2);

    // With a token configured: 401 without it, 403 with a wrong one; health stays open.
    drop(coordinator);
    coordinator = Coordinator::start(dir.path(), &["--api-token-file", token.to_str().unwrap()]);
    let client = common::blocking_client();
    let r = client
        .get(format!("{}/tasks", coordinator.base))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{}/tasks", coordinator.base))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client
        .get(format!("{}/tasks", coordinator.base))
        .bearer_auth("s3cret-token")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(coordinator.get("/health").0, 200);
    assert!(
        !coordinator.log_text().contains("s3cret-token"),
        "token leaked into logs"
    );
}

#[test]
fn metrics_report_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = shell_inputs(dir.path(), &[("ok", 3, "true"), ("bad", 2, "exit 1")]);
    let coordinator = Coordinator::start(
        dir.path(),
        &["--inputs", inputs.to_str().unwrap(), "--retry-base", "50ms"],
    );
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            coordinator
                .submit(json!({"agent_type": "ok", "payload": {"i": i}}))
                .1["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for _ in 0..2 {
        ids.push(
            coordinator.submit(json!({"agent_type": "bad"})).1["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        coordinator.wait_terminal(id, Duration::from_secs(60));
    }
    // Gauges are published after each reconcile round; give the loops a moment.
    std::thread::sleep(Duration::from_millis(2500));
    let text = coordinator.scrape();
    let m = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(
        m(
            "agent_orchestrator_tasks_total",
            &[("agent_type", "ok"), ("outcome", "succeeded")]
        ),
        12.0
    );
    assert_eq!(
        m(
            "agent_orchestrator_tasks_total",
            &[("agent_type", "bad"), ("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        m("agent_orchestrator_running_jobs", &[("agent_type", "ok")]),
        0.0
    );
    assert_eq!(
        m("agent_orchestrator_queue_depth", &[("agent_type", "ok")]),
        0.0
    );
    assert_eq!(
        m(
            "agent_orchestrator_dispatch_capacity",
            &[("agent_type", "ok")]
        ),
        3.0
    );
    assert_eq!(
        m(
            "agent_orchestrator_dispatch_capacity",
            &[("agent_type", "bad")]
        ),
        2.0
    );
    assert_eq!(
        m("agent_orchestrator_circuit_open", &[("agent_type", "ok")]),
        0.0
    );
    // 12 + 2 × 3 attempts were dispatched.
    assert_eq!(
        m("agent_orchestrator_dispatch_duration_seconds_count", &[]),
        18.0
    );
    let agents = coordinator.get("/agents").1;
    assert_eq!(agents["agents"]["ok"]["max_instances"], 3);
    assert_eq!(agents["agents"]["bad"]["running"], 0);
}

#[test]
fn sigterm_drains_and_exits_cleanly_and_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(dir.path(), &[]);
    let (status, _) = coordinator.submit(json!({"agent_type": "echo", "payload": {}}));
    assert_eq!(status, 201);
    assert_eq!(
        coordinator.terminate(),
        Some(0),
        "{}",
        coordinator.log_text()
    );
    assert!(
        coordinator.log_text().contains("\"message\":\"stopped\""),
        "{}",
        coordinator.log_text()
    );

    let bad = dir.path().join("bad.tfvars.json");
    std::fs::write(&bad, r#"{"cluster_name": "c", "agent_types": {"x": {"image": "i", "cpu_limit": 1, "memory_limit": "2GX", "max_instances": 1, "command": "true"}}}"#).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--inputs", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent_types.x.memory_limit"), "{stderr}");
    assert!(!stderr.contains("panicked"));

    // A second coordinator on the same data dir is refused (it would run tasks twice).
    let first = Coordinator::start(dir.path(), &[]);
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&first.data_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another coordinator"));
}

#[test]
fn submit_command_waits_and_prints_the_finished_task() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &[]);
    let out = std::process::Command::new(BIN)
        .args([
            "submit",
            "--agent-type",
            "echo",
            "--payload",
            r#"{"message":"hi"}"#,
            "--wait",
        ])
        .env("AO_ADDR", &coordinator.base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["result"], json!({"message": "hi"}));
    let out = std::process::Command::new(BIN)
        .args(["submit", "--agent-type", "nope"])
        .env("AO_ADDR", &coordinator.base)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown agent type"));
}

/// `--runs-retention`: at start, the run directory of a task settled long ago goes, while the
/// one of an attempt that ended while the coordinator was down (the store still says `running`)
/// stays until its end is recorded, and that attempt is not run again.
#[test]
fn old_run_directories_go_once_settled_and_an_unrecorded_end_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let gate = dir.path().join("go");
    let fast = logging_script(&log, "echo '{\"fast\": 1}' > \"$AO_RESULT_FILE\"");
    let wait = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; echo '{{\"slow\": 2}}' > \"$AO_RESULT_FILE\"",
        gate.display()
    );
    let slow = logging_script(&log, &wait);
    let inputs = shell_inputs(dir.path(), &[("fast", 1, &fast), ("slow", 1, &slow)]);
    let both_types = std::fs::read(&inputs).unwrap();
    let mut coordinator = Coordinator::start(
        dir.path(),
        &[
            "--inputs",
            inputs.to_str().unwrap(),
            "--runs-retention",
            "1h",
        ],
    );
    let runs = coordinator.data_dir.join("runs");

    let (_, settled) = coordinator.submit(json!({"agent_type": "fast", "payload": {}}));
    let settled = settled["id"].as_str().unwrap().to_string();
    let task = coordinator.wait_terminal(&settled, Duration::from_secs(30));
    assert_eq!(task["status"], "succeeded", "{task}");
    let (_, pending) = coordinator.submit(json!({"agent_type": "slow", "payload": {}}));
    let pending = pending["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the slow task runs", || {
        coordinator.task(&pending)["status"] == "running"
    });

    // The coordinator dies; the slow agent finishes while it is down.
    coordinator.kill9();
    std::fs::write(&gate, "").unwrap();
    let pending_dir = runs.join(&pending).join("1");
    wait_for(Duration::from_secs(30), "the slow attempt ends", || {
        pending_dir.join("exit.json").exists()
    });
    // Both attempts ended two hours ago, longer than the retention.
    for run_dir in [runs.join(&settled).join("1"), pending_dir.clone()] {
        let exit = run_dir.join("exit.json");
        let mut record: Value = serde_json::from_slice(&std::fs::read(&exit).unwrap()).unwrap();
        record["finished_at"] = json!(record["finished_at"].as_i64().unwrap() - 2 * 3600 * 1000);
        std::fs::write(&exit, serde_json::to_vec(&record).unwrap()).unwrap();
    }

    // First without the slow type, so nothing can record the slow attempt's end before the
    // start-up pass has decided about its directory.
    shell_inputs(dir.path(), &[("fast", 1, &fast)]);
    coordinator.restart();
    wait_for(Duration::from_secs(30), "a prune pass", || {
        coordinator
            .log_text()
            .contains("removed run directories older than the retention")
    });
    assert!(
        !runs.join(&settled).exists(),
        "the settled task's run dir stayed"
    );
    assert!(
        pending_dir.join("result.json").exists(),
        "the unrecorded attempt lost its run dir"
    );
    assert_eq!(coordinator.task(&pending)["status"], "running");

    std::fs::write(&inputs, both_types).unwrap();
    coordinator.restart();
    let task = coordinator.wait_terminal(&pending, Duration::from_secs(30));
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"slow": 2}), "{task}");
    assert_eq!(task["attempts"].as_array().unwrap().len(), 1, "{task}");
    let starts = read_events(&log)
        .iter()
        .filter(|e| e.start && e.task_id == pending)
        .count();
    assert_eq!(starts, 1, "the slow attempt ran again");
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
