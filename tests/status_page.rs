//! The status page `GET /` (issue 8) in a real browser: headless Chromium loads the page of a
//! real coordinator (embedded default, built-in `echo` type), a task and a workflow are
//! submitted, and the DOM must show the agent types, the task turning green and the workflow
//! graph. Saves `target/status-page.png` (a CI artifact). Skips with a message when Chromium is
//! not installed (`tests/run.sh` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(CHROMIUM);
    if path.exists() {
        Some(path)
    } else {
        println!("SKIPPED: {CHROMIUM} is not installed (tests/run.sh installs it with apt-get)");
        None
    }
}

/// Runs headless Chromium with `args` on `url`; returns its stdout. Killed after 60 s.
fn run_chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

fn dump_dom(profile: &Path, url: &str) -> String {
    run_chromium(profile, &["--dump-dom"], url)
}

/// The `<tr>` of `task_id` in a dumped DOM.
fn task_row<'a>(dom: &'a str, task_id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-task-id=\"{task_id}\""))?;
    let start = dom[..at].rfind("<tr")?;
    let end = dom[at..].find("</tr>")? + at;
    Some(&dom[start..end])
}

#[test]
fn status_page_shows_agents_and_a_task_turning_green_in_chromium() {
    let Some(_) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("chromium-profile");
    let c = Coordinator::start(dir.path(), &[]);
    let page = format!("{}/", c.base);

    // Before any work: the agent types are there, and the live script ran (CSP allows it).
    let dom = dump_dom(&profile, &page);
    assert!(dom.contains("data-agent-type=\"echo\""), "{dom}");
    assert!(dom.contains("Agent types"), "{dom}");
    assert!(dom.contains("no tasks yet"), "{dom}");
    assert!(
        dom.contains("data-live=\"on\""),
        "the inline script did not run: {dom}"
    );

    let (status, body) =
        c.submit(json!({"agent_type": "echo", "payload": {"hello": "<b>world</b>"}}));
    assert_eq!(status, 201, "{body}");
    let task_id = body["id"].as_str().unwrap().to_string();

    // The task appears and turns green.
    let deadline = Instant::now() + Duration::from_secs(60);
    let row = loop {
        let dom = dump_dom(&profile, &page);
        if let Some(row) = task_row(&dom, &task_id) {
            if row.contains("data-status=\"succeeded\"") {
                break row.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "task {task_id} never shown as succeeded: {dom}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(row.contains("status-succeeded"), "{row}");
    assert!(row.contains(&format!("href=\"/tasks/{task_id}\"")), "{row}");
    assert!(row.contains(">echo<"), "{row}");

    // A workflow's graph, coloured by node state.
    let (status, body) = c.post(
        "/workflows",
        &json!({"name": "demo <graph>", "tasks": [
            {"id": "plan", "agent_type": "echo"},
            {"id": "code", "agent_type": "echo", "depends_on": ["plan"]},
            {"id": "test", "agent_type": "echo", "depends_on": ["plan"]},
            {"id": "review", "agent_type": "echo", "depends_on": ["code", "test"]},
        ]})
        .to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let wf_id = body["id"].as_str().unwrap().to_string();
    let graph_url = format!("{}/?workflow={wf_id}", c.base);
    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = dump_dom(&profile, &graph_url);
        if dom.contains("id=\"workflow-graph\"")
            && dom.matches("class=\"node state-succeeded\"").count() == 4
        {
            break dom;
        }
        assert!(Instant::now() < deadline, "graph never all green: {dom}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        dom.contains("demo &lt;graph&gt;"),
        "workflow name not escaped: {dom}"
    );
    assert!(!dom.contains("demo <graph>"));
    assert!(dom.contains("data-node-id=\"review\""), "{dom}");
    assert!(dom.matches("class=\"edge\"").count() >= 4, "{dom}");

    // The live refresh swaps fresh content in (virtual time lets its timer fire).
    let dom = run_chromium(
        &profile,
        &["--dump-dom", "--virtual-time-budget=5000"],
        &graph_url,
    );
    assert!(
        dom.contains("data-refreshes="),
        "the page never refreshed itself: {dom}"
    );
    assert!(task_row(&dom, &task_id).is_some(), "{dom}");

    // Screenshot for CI.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &profile,
        &[&format!("--screenshot={}", shot.display())],
        &graph_url,
    );
    let meta = std::fs::metadata(&shot).expect("screenshot written");
    assert!(meta.len() > 1000, "screenshot is too small");
    println!("screenshot: {}", shot.display());
}

#[test]
fn with_an_api_token_the_page_asks_for_it_and_takes_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let c = Coordinator::start(
        dir.path(),
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    let client = blocking_client();

    let r = client.get(format!("{}/", c.base)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Basic "), "{challenge}");

    let r = client
        .get(format!("{}/", c.base))
        .basic_auth("operator", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = client
        .get(format!("{}/", c.base))
        .basic_auth("operator", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("'sha256-"), "{csp}");
    let html = r.text().unwrap();
    assert!(html.contains("data-agent-type=\"echo\""));
    assert!(html.contains("<noscript><meta http-equiv=\"refresh\""));

    let r = client
        .get(format!("{}/", c.base))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The page's links open in the same browser: reads take the Basic password too...
    let r = client
        .post(format!("{}/tasks", c.base))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"agent_type": "echo", "payload": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client
        .get(format!("{}/tasks/{id}", c.base))
        .basic_auth("operator", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!("{}/tasks/{id}", c.base))
        .basic_auth("operator", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // ...but writes never do (a browser attaches them to other sites' requests as well).
    for write in [
        client
            .post(format!("{}/tasks", c.base))
            .json(&serde_json::json!({"agent_type": "echo"})),
        client.post(format!("{}/tasks/{id}/cancel", c.base)),
    ] {
        let r = write.basic_auth("operator", Some("s3cret")).send().unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }

    // The workflow API sits behind the token like /tasks.
    let r = client.get(format!("{}/workflows", c.base)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{}/workflows", c.base))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
