//! End-to-end tests of workflows (issue 8): the real binary, shell agents that log their start
//! and end times, SQLite, HTTP over loopback.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Like `shell_inputs`, with one attempt per task (a failure is final at once).
fn single_attempt_inputs(dir: &Path, types: &[(&str, u32, &str)]) -> PathBuf {
    inputs_with(
        dir,
        types,
        json!({"task_queue_size": 100000, "max_attempts": 1}),
    )
}

/// Shell agent types plus top-level input fields `extra`.
fn inputs_with(dir: &Path, types: &[(&str, u32, &str)], extra: Value) -> PathBuf {
    let mut agent_types = serde_json::Map::new();
    for (name, max, script) in types {
        agent_types.insert(
            name.to_string(),
            json!({"image": "local", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": max,
                   "command": "sh", "args": ["-c", script]}),
        );
    }
    let path = dir.join("inputs.tfvars.json");
    let mut inputs = json!({"cluster_name": "test", "agent_types": agent_types});
    if let (Some(map), Value::Object(extra)) = (inputs.as_object_mut(), extra) {
        map.extend(extra);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&inputs).unwrap()).unwrap();
    path
}

fn create(c: &Coordinator, body: &Value) -> (u16, Value) {
    c.post("/workflows", &body.to_string())
}

fn create_ok(c: &Coordinator, body: &Value) -> String {
    let (status, answer) = create(c, body);
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().expect("workflow id").to_string()
}

/// Polls until the workflow is settled (not running, every node final).
fn wait_settled(c: &Coordinator, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let final_states = ["succeeded", "failed", "timed_out", "cancelled", "skipped"];
    loop {
        let (status, wf) = c.get(&format!("/workflows/{id}"));
        assert_eq!(status, 200, "{wf}");
        let settled = wf["status"] != "running"
            && wf["tasks"].as_array().is_some_and(|n| {
                n.iter()
                    .all(|n| final_states.contains(&n["state"].as_str().unwrap_or("")))
            });
        if settled {
            return wf;
        }
        assert!(
            Instant::now() < deadline,
            "workflow {id} not settled after {limit:?}: {wf}\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node<'a>(wf: &'a Value, id: &str) -> &'a Value {
    wf["tasks"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("no node {id} in {wf}"))
}

fn task_of(wf: &Value, id: &str) -> String {
    node(wf, id)["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("node {id} has no task: {wf}"))
        .to_string()
}

/// (first start, last end) per task id.
fn spans(events: &[Event]) -> HashMap<String, (u128, u128)> {
    let mut out: HashMap<String, (u128, u128)> = HashMap::new();
    for e in events {
        let span = out.entry(e.task_id.clone()).or_insert((u128::MAX, 0));
        if e.start {
            span.0 = span.0.min(e.at);
        } else {
            span.1 = span.1.max(e.at);
        }
    }
    out
}

fn starts_per_task(events: &[Event]) -> HashMap<String, usize> {
    let mut starts = HashMap::new();
    for e in events.iter().filter(|e| e.start) {
        *starts.entry(e.task_id.clone()).or_insert(0) += 1;
    }
    starts
}

#[test]
fn a_diamond_runs_in_dependency_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "sleep 0.2");
    let inputs = shell_inputs(dir.path(), &[("work", 4, &script)]);
    let c = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    // Three levels: top → (left, right) → bottom; given in a scrambled order on purpose.
    let id = create_ok(
        &c,
        &json!({"name": "diamond", "tasks": [
            {"id": "bottom", "agent_type": "work", "payload": {"n": 4}, "depends_on": ["left", "right"]},
            {"id": "left", "agent_type": "work", "payload": {"n": 2}, "depends_on": ["top"]},
            {"id": "top", "agent_type": "work", "payload": {"n": 1}, "depends_on": []},
            {"id": "right", "agent_type": "work", "payload": {"n": 3}, "depends_on": ["top"]},
        ]}),
    );
    let wf = wait_settled(&c, &id, Duration::from_secs(60));
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(wf["name"], "diamond");
    for n in ["top", "left", "right", "bottom"] {
        assert_eq!(node(&wf, n)["state"], "succeeded", "{wf}");
        let task = c.task(&task_of(&wf, n));
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    let spans = spans(&read_events(&log));
    let span = |n: &str| spans[&task_of(&wf, n)];
    assert!(
        span("left").0 >= span("top").1,
        "left started before top ended"
    );
    assert!(
        span("right").0 >= span("top").1,
        "right started before top ended"
    );
    assert!(
        span("bottom").0 >= span("left").1,
        "bottom started before left ended"
    );
    assert!(
        span("bottom").0 >= span("right").1,
        "bottom started before right ended"
    );
    // The two middle nodes are independent and may overlap; each node ran exactly once.
    assert_eq!(spans.len(), 4);
    assert!(starts_per_task(&read_events(&log))
        .values()
        .all(|&n| n == 1));

    // The workflow is listed, and its node task is the one the idempotency key names.
    let (status, list) = c.get("/workflows");
    assert_eq!(status, 200);
    assert_eq!(list["workflows"][0]["id"], id.as_str(), "{list}");
    let top = c.task(&task_of(&wf, "top"));
    assert_eq!(top["idempotency_key"], format!("wf:{id}:top"));
}

#[test]
fn cycles_unknown_ids_and_bad_types_are_refused_with_422_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]);

    let (status, body) = create(
        &c,
        &json!({"name": "cyclic", "tasks": [
            {"id": "start", "agent_type": "echo", "depends_on": []},
            {"id": "a", "agent_type": "echo", "depends_on": ["start", "c"]},
            {"id": "b", "agent_type": "echo", "depends_on": ["a"]},
            {"id": "c", "agent_type": "echo", "depends_on": ["b"]},
        ]}),
    );
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cycle: a → b → c → a"), "{message}");
    assert_eq!(body["error"]["code"], "invalid");

    let (status, body) = create(
        &c,
        &json!({"name": "dangling", "tasks": [
            {"id": "a", "agent_type": "echo", "depends_on": ["ghost"]},
        ]}),
    );
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown task `ghost`"), "{message}");

    let (status, body) = create(
        &c,
        &json!({"name": "bad", "tasks": [
            {"id": "a", "agent_type": "echo"},
            {"id": "a", "agent_type": "nope"},
        ]}),
    );
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("duplicate task id `a`"), "{message}");
    assert!(message.contains("unknown agent type `nope`"), "{message}");

    // Malformed JSON is a 400; nothing was created by any of these.
    let (status, _) = c.post("/workflows", "{not json");
    assert_eq!(status, 400);
    let (_, list) = c.get("/workflows");
    assert_eq!(list["workflows"], json!([]));
    assert!(c.all_tasks().is_empty());
    let (status, _) = c.get(&format!(
        "/workflows/{}",
        "0191e0a0-0000-7000-8000-000000000000"
    ));
    assert_eq!(status, 404);
}

#[test]
fn fan_out_of_one_hundred_children() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "true");
    let inputs = shell_inputs(dir.path(), &[("work", 16, &script)]);
    let c = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    let mut tasks = vec![json!({"id": "root", "agent_type": "work", "payload": {}})];
    for i in 0..100 {
        tasks.push(json!({"id": format!("child-{i:03}"), "agent_type": "work",
                          "payload": {"i": i}, "depends_on": ["root"]}));
    }
    let started = Instant::now();
    let id = create_ok(&c, &json!({"name": "fan-out", "tasks": tasks}));
    let wf = wait_settled(&c, &id, Duration::from_secs(120));
    println!("fan-out of 100 finished in {:?}", started.elapsed());
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(wf["counts"]["succeeded"], 101, "{wf}");

    let events = read_events(&log);
    let spans = spans(&events);
    let root_end = spans[&task_of(&wf, "root")].1;
    for i in 0..100 {
        let child = task_of(&wf, &format!("child-{i:03}"));
        assert!(
            spans[&child].0 >= root_end,
            "child-{i:03} started before root ended"
        );
    }
    let starts = starts_per_task(&events);
    assert_eq!(starts.len(), 101);
    assert!(starts.values().all(|&n| n == 1), "a task ran twice");
    assert_eq!(c.all_tasks().len(), 101, "one task per node");
}

#[test]
fn failures_skip_descendants_unless_the_edge_says_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let ok = logging_script(&log, "true");
    let bad = logging_script(&log, "false");
    // The failing agent exits 1 after logging its end line.
    let bad = format!("{bad}; exit 1");
    let inputs = single_attempt_inputs(dir.path(), &[("ok", 4, &ok), ("bad", 4, &bad)]);
    let c = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    let id = create_ok(
        &c,
        &json!({"name": "failing", "tasks": [
            {"id": "a", "agent_type": "bad"},
            {"id": "b", "agent_type": "ok", "depends_on": ["a"]},
            {"id": "c", "agent_type": "ok", "depends_on": ["b"]},
            {"id": "d", "agent_type": "ok", "depends_on": ["a", "tolerated"]},
            {"id": "tolerated", "agent_type": "bad", "on_failure": "continue"},
            {"id": "after-tolerated", "agent_type": "ok", "depends_on": ["tolerated"]},
            {"id": "independent", "agent_type": "ok"},
        ]}),
    );
    let wf = wait_settled(&c, &id, Duration::from_secs(60));
    assert_eq!(wf["status"], "failed", "{wf}");
    assert_eq!(node(&wf, "a")["state"], "failed", "{wf}");
    for skipped in ["b", "c", "d"] {
        let n = node(&wf, skipped);
        assert_eq!(n["state"], "skipped", "{wf}");
        assert!(n["task_id"].is_null(), "a skipped node got a task: {n}");
    }
    assert!(
        node(&wf, "b")["reason"].as_str().unwrap().contains("`a`"),
        "{wf}"
    );
    assert_eq!(node(&wf, "tolerated")["state"], "failed", "{wf}");
    assert_eq!(node(&wf, "after-tolerated")["state"], "succeeded", "{wf}");
    assert_eq!(node(&wf, "independent")["state"], "succeeded", "{wf}");
    // Only the four nodes that ran have tasks, and only they started.
    assert_eq!(c.all_tasks().len(), 4);
    assert_eq!(starts_per_task(&read_events(&log)).len(), 4);

    // A workflow whose only failure is tolerated succeeds.
    let id = create_ok(
        &c,
        &json!({"name": "tolerant", "tasks": [
            {"id": "flaky", "agent_type": "bad", "on_failure": "continue"},
            {"id": "next", "agent_type": "ok", "depends_on": ["flaky"]},
        ]}),
    );
    let wf = wait_settled(&c, &id, Duration::from_secs(60));
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(node(&wf, "flaky")["state"], "failed");
    assert_eq!(node(&wf, "next")["state"], "succeeded");
}

#[test]
fn cancel_stops_running_tasks_and_pending_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "sleep 30");
    let inputs = shell_inputs(dir.path(), &[("slow", 2, &script)]);
    let c = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    let id = create_ok(
        &c,
        &json!({"name": "to-cancel", "tasks": [
            {"id": "first", "agent_type": "slow"},
            {"id": "second", "agent_type": "slow", "depends_on": ["first"]},
        ]}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_events(&log).is_empty() {
        assert!(Instant::now() < deadline, "first never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = c.post(&format!("/workflows/{id}/cancel"), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    let wf = wait_settled(&c, &id, Duration::from_secs(30));
    assert_eq!(wf["status"], "cancelled", "{wf}");
    assert_eq!(node(&wf, "first")["state"], "cancelled", "{wf}");
    assert_eq!(node(&wf, "second")["state"], "cancelled", "{wf}");
    assert!(node(&wf, "second")["task_id"].is_null());
    let task = c.task(&task_of(&wf, "first"));
    assert_eq!(task["status"], "cancelled", "{task}");
    // Cancelling again is a no-op.
    let (status, _) = c.post(&format!("/workflows/{id}/cancel"), "");
    assert_eq!(status, 200);
}

#[test]
fn sigkill_mid_workflow_then_restart_completes_it_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "sleep 0.3");
    let inputs = shell_inputs(dir.path(), &[("work", 3, &script)]);
    let mut c = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);

    // top → 6 middles → bottom → tail: several seconds of work over four levels.
    let mut tasks = vec![json!({"id": "top", "agent_type": "work"})];
    let middles: Vec<String> = (0..6).map(|i| format!("mid-{i}")).collect();
    for m in &middles {
        tasks.push(json!({"id": m, "agent_type": "work", "depends_on": ["top"]}));
    }
    tasks.push(json!({"id": "bottom", "agent_type": "work", "depends_on": middles}));
    tasks.push(json!({"id": "tail", "agent_type": "work", "depends_on": ["bottom"]}));
    let id = create_ok(&c, &json!({"name": "crashy", "tasks": tasks}));

    // Kill at different points: during top, among the middles, around bottom.
    let mut killed_while_running = 0;
    for pause in [150, 450, 400, 350, 500] {
        std::thread::sleep(Duration::from_millis(pause));
        let before = c.get(&format!("/workflows/{id}")).1;
        c.restart();
        if before["status"] == "running" {
            killed_while_running += 1;
        }
    }
    assert!(
        killed_while_running >= 3,
        "the kills came too late to test anything ({killed_while_running} mid-workflow)"
    );
    let wf = wait_settled(&c, &id, Duration::from_secs(90));
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(wf["counts"]["succeeded"], 9, "{wf}");

    let events = read_events(&log);
    let starts = starts_per_task(&events);
    let twice: Vec<_> = starts.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "tasks started more than once: {twice:?}");
    assert_eq!(starts.len(), 9, "one run per node");
    assert_eq!(c.all_tasks().len(), 9, "one task per node in the store");
    // Order still held across the crashes.
    let spans = spans(&events);
    let top_end = spans[&task_of(&wf, "top")].1;
    let mut middles_end = 0;
    for m in &middles {
        let span = spans[&task_of(&wf, m)];
        assert!(span.0 >= top_end, "{m} started before top ended");
        middles_end = middles_end.max(span.1);
    }
    assert!(spans[&task_of(&wf, "bottom")].0 >= middles_end);
    assert!(spans[&task_of(&wf, "tail")].0 >= spans[&task_of(&wf, "bottom")].1);
}

#[test]
fn a_fan_out_wider_than_the_queue_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let script = logging_script(&log, "sleep 0.05");
    // At most 4 tasks may wait in the queue: the engine must hold the rest back, not drop them.
    let inputs = inputs_with(
        dir.path(),
        &[("work", 2, &script)],
        json!({"task_queue_size": 4}),
    );
    let c = Coordinator::start(dir.path(), &["--inputs", inputs.to_str().unwrap()]);
    let mut tasks = vec![json!({"id": "root", "agent_type": "work"})];
    for i in 0..20 {
        tasks.push(json!({"id": format!("c{i}"), "agent_type": "work", "depends_on": ["root"]}));
    }
    let id = create_ok(&c, &json!({"name": "narrow", "tasks": tasks}));
    let wf = wait_settled(&c, &id, Duration::from_secs(90));
    assert_eq!(wf["status"], "succeeded", "{wf}");
    let starts = starts_per_task(&read_events(&log));
    assert_eq!(starts.len(), 21);
    assert!(starts.values().all(|&n| n == 1));
}
