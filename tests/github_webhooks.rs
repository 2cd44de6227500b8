//! `POST /webhooks/github` end to end through `http::app(state)` with a real `Context` on the
//! embedded SQLite backend: every payload in `../shared/fixtures/github-webhooks`, signed here,
//! against an explicit classification table; rejections; de-duplication; debounce; cancel;
//! self-loop protection; budgets, also across a restart of the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agent_orchestrator::executor::local::{LocalExecutor, LocalExecutorConfig};
use agent_orchestrator::github::routing::{Facts, Rules};
use agent_orchestrator::github::state::StateDb;
use agent_orchestrator::github::tracker::{IssueTracker, TrackerError};
use agent_orchestrator::github::webhook::{sign, Secret};
use agent_orchestrator::github::{GithubOptions, WebhookConfig};
use agent_orchestrator::http::{self, AppState};
use agent_orchestrator::scheduler::{Context, Settings};
use agent_orchestrator::store::sqlite::SqliteBackend;
use agent_orchestrator::store::{TaskFilter, TaskStore};
use agent_orchestrator::task::Task;
use axum::body::Body;
use axum::http::Request;
use common::Coordinator;
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &str = "It's a Secret to Everybody";

fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/github-webhooks");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent", dir.display());
        None
    }
}

/// Records what the webhook side tells issues (budget notices).
#[derive(Default)]
struct RecordingTracker {
    comments: Mutex<Vec<(String, u64, String)>>,
}

#[async_trait::async_trait]
impl IssueTracker for RecordingTracker {
    async fn create_comment(
        &self,
        repo: &str,
        _installation: Option<u64>,
        issue: u64,
        body: &str,
    ) -> Result<u64, TrackerError> {
        let mut c = self.comments.lock().unwrap();
        c.push((repo.into(), issue, body.into()));
        Ok(c.len() as u64)
    }
    async fn update_comment(
        &self,
        _: &str,
        _: Option<u64>,
        _: u64,
        _: &str,
    ) -> Result<(), TrackerError> {
        Ok(())
    }
    async fn set_labels(
        &self,
        _: &str,
        _: Option<u64>,
        _: u64,
        _: &[&str],
        _: &[&str],
    ) -> Result<(), TrackerError> {
        Ok(())
    }
    async fn parent_issue(
        &self,
        _: &str,
        _: Option<u64>,
        _: u64,
    ) -> Result<Option<u64>, TrackerError> {
        Ok(None)
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    ctx: Arc<Context>,
    store: Arc<SqliteBackend>,
    config: Arc<WebhookConfig>,
    tracker: Arc<RecordingTracker>,
}

fn inputs(dir: &Path) -> agent_orchestrator::config::Inputs {
    let mut types = serde_json::Map::new();
    for name in ["echo", "coder", "reviewer"] {
        types.insert(name.into(), json!({"image": "local", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": 1, "command": "true"}));
    }
    let path = dir.join("inputs.tfvars.json");
    std::fs::write(
        &path,
        serde_json::to_vec(
            &json!({"cluster_name": "t", "agent_types": types, "task_queue_size": 100000}),
        )
        .unwrap(),
    )
    .unwrap();
    agent_orchestrator::config::load_inputs(&path).unwrap()
}

fn harness(rules: Rules, app_id: Option<u64>, bot: Option<&str>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteBackend::open_in_memory().unwrap());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let executor = Arc::new(
        LocalExecutor::new(LocalExecutorConfig::new(dir.path().join("runs")), tx).unwrap(),
    );
    let ctx = Context::new(
        store.clone(),
        store.clone(),
        executor,
        Arc::new(inputs(dir.path())),
        Settings::default(),
    );
    let tracker = Arc::new(RecordingTracker::default());
    let options = GithubOptions {
        rules,
        bot_login: bot.map(str::to_string),
        max_body_bytes: 1024 * 1024,
        ..Default::default()
    };
    let config = Arc::new(WebhookConfig::new(
        Secret::new(SECRET),
        options,
        app_id,
        StateDb::open(&dir.path().join("github.db")).unwrap(),
        Some(tracker.clone()),
    ));
    Harness {
        _dir: dir,
        ctx,
        store,
        config,
        tracker,
    }
}

impl Harness {
    fn app(&self) -> axum::Router {
        http::app(AppState {
            ctx: self.ctx.clone(),
            api_token: Some("api-token".into()),
            max_body_bytes: 1024 * 1024,
            webhook: Some(self.config.clone()),
        })
    }

    async fn send_raw(&self, request: Request<Body>) -> (u16, Value) {
        let response = self.app().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
        let request = Request::post("/webhooks/github")
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
            .body(Body::from(body.to_vec()))
            .unwrap();
        self.send_raw(request).await
    }

    async fn tasks(&self) -> Vec<Task> {
        self.store
            .list(&TaskFilter::default(), 10_000, None)
            .await
            .unwrap()
            .tasks
    }
}

fn fixture(name: &str) -> Option<Value> {
    let path = fixtures()?.join(name);
    Some(serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
}

#[derive(Debug)]
enum Expect {
    Task(&'static str),
    Cancelled,
    Ignored(&'static str),
}

/// The classification table. Rules: label `bug` → `echo` (explicit label map), review comments
/// → `reviewer`. Files are delivered in sorted order per folder, so `unlabeled` finds the task
/// `labeled` created.
fn expected(event: &str, file: &str) -> Expect {
    use Expect::*;
    match (event, file) {
        ("issues", "labeled.payload.json" | "labeled.with-organization.payload.json") => {
            Task("echo")
        }
        ("issues", "unlabeled.payload.json") => Cancelled,
        // Same issue, same agent type: its task was cancelled by the previous file.
        ("issues", "unlabeled.with-organization.payload.json") => {
            Ignored("no queued or running `echo` task on Codertocat/Hello-World#1")
        }
        ("issues", _) => Ignored("no rule for `issues`"),
        ("issue_comment", f) if f.starts_with("created") => {
            Ignored("comment is not a `/agent <type>` command")
        }
        ("issue_comment", f) if f.starts_with("deleted") => {
            Ignored("no rule for `issue_comment` `deleted`")
        }
        ("issue_comment", f) if f.starts_with("edited") => {
            Ignored("no rule for `issue_comment` `edited`")
        }
        ("pull_request_review_comment", f) if f.starts_with("created") => Task("reviewer"),
        ("pull_request_review_comment", "deleted.payload.json") => {
            Ignored("no rule for `pull_request_review_comment` `deleted`")
        }
        ("pull_request_review_comment", "edited.payload.json") => {
            Ignored("no rule for `pull_request_review_comment` `edited`")
        }
        ("installation" | "installation_repositories", _) => Ignored("recorded, not routed"),
        ("ping", _) => Ignored("ping"),
        ("check_run", _) => Ignored("no rule for `check_run` events"),
        ("check_suite", _) => Ignored("no rule for `check_suite` events"),
        ("workflow_job", _) => Ignored("no rule for `workflow_job` events"),
        ("push", _) => Ignored("no rule for `push` events"),
        ("label", _) => Ignored("no rule for `label` events"),
        ("pull_request", _) => Ignored("no rule for `pull_request` events"),
        ("pull_request_review", _) => Ignored("no rule for `pull_request_review` events"),
        (event, file) => panic!("no expectation for {event}/{file}: add it to the table"),
    }
}

fn fixture_rules() -> Rules {
    let mut rules = Rules::default();
    rules.labels.insert("bug".into(), "echo".into());
    rules.review_comment_agent = Some("reviewer".into());
    rules
}

/// Every fact octocrab's model reads must be what the hot path's borrowed view read.
fn assert_same_facts(view: &Facts, model: &Facts, what: &str) {
    macro_rules! same {
        ($($field:ident),*) => {$(
            if model.$field != Facts::default().$field {
                assert_eq!(view.$field, model.$field, "{what}: `{}` differs from octocrab's model", stringify!($field));
            }
        )*};
    }
    same!(
        action,
        repository,
        installation_id,
        number,
        title,
        body,
        url,
        updated_at,
        sender_login,
        sender_type,
        label,
        comment_id,
        comment_body,
        author_association
    );
}

#[tokio::test]
async fn every_fixture_is_accepted_and_classified() {
    let Some(root) = fixtures() else { return };
    let h = harness(fixture_rules(), None, None);
    let mut events: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    events.sort();
    let mut count = 0;
    let mut created = 0;
    let (mut typed, mut fallback) = (0, Vec::new());
    for dir in events {
        let event = dir.file_name().unwrap().to_str().unwrap().to_string();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            let body = std::fs::read(&file).unwrap();
            count += 1;
            if agent_orchestrator::github::routing::is_routed(&event) {
                let facts = agent_orchestrator::github::routing::extract(&event, &body).unwrap();
                match agent_orchestrator::github::routing::facts_from_model(&event, &body) {
                    Ok(model) => {
                        assert_same_facts(&facts, &model, &format!("{event}/{name}"));
                        typed += 1;
                    }
                    Err(e) => fallback.push(format!("{event}/{name}: {e}")),
                }
            }
            let (status, answer) = h.deliver(&event, &format!("fixture-{count}"), &body).await;
            assert_eq!(status, 202, "{event}/{name}: {answer}");
            match expected(&event, &name) {
                Expect::Task(agent_type) => {
                    assert_eq!(
                        answer["task"]["agent_type"], agent_type,
                        "{event}/{name}: {answer}"
                    );
                    if answer["created"] == true {
                        created += 1;
                    }
                }
                Expect::Cancelled => {
                    assert!(
                        answer["cancelled"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty()),
                        "{event}/{name}: {answer}"
                    )
                }
                Expect::Ignored(reason) => {
                    let got = answer["ignored"].as_str().unwrap_or_default();
                    assert!(
                        got.contains(reason),
                        "{event}/{name}: expected ignored with `{reason}`, got {answer}"
                    );
                }
            }
        }
    }
    assert_eq!(count, 116, "PROVENANCE.md lists 116 files");
    println!(
        "routed payloads where the borrowed view agrees with octocrab's models: {typed}; octocrab's models refuse: {}",
        fallback.len()
    );
    for f in &fallback {
        println!("  {f}");
    }
    // 40 routed payloads; octocrab's models refuse the two pin events (no `state`).
    assert!(
        typed >= 38,
        "the view was compared with octocrab's models on only {typed} payloads"
    );
    let tasks = h.tasks().await;
    // issues/labeled and its with-organization twin are one debounce window (same issue, same
    // updated_at): one `echo` task; each review comment (two comment ids? no: same id) one task.
    assert_eq!(tasks.len(), created, "{tasks:#?}");
    let echo: Vec<_> = tasks.iter().filter(|t| t.agent_type == "echo").collect();
    assert_eq!(echo.len(), 1, "debounced into one task");
    assert_eq!(
        echo[0].status.as_str(),
        "cancelled",
        "unlabeled cancelled it"
    );
    assert_eq!(echo[0].payload["repository"], "Codertocat/Hello-World");
    assert_eq!(echo[0].payload["issue"], 1);
    assert_eq!(echo[0].payload["sender"], "Codertocat");
    assert_eq!(echo[0].payload["trigger"]["label"], "bug");
    assert!(tasks.iter().any(|t| t.agent_type == "reviewer"));
}

#[tokio::test]
async fn rejected_or_duplicate_deliveries_create_no_task() {
    let Some(labeled) = fixture("issues/labeled.payload.json") else {
        return;
    };
    let h = harness(fixture_rules(), None, None);
    let body = serde_json::to_vec(&labeled).unwrap();
    let post = |sig: Option<String>, ctype: &str, body: Vec<u8>| {
        let mut r = Request::post("/webhooks/github")
            .header("content-type", ctype)
            .header("x-github-event", "issues")
            .header("x-github-delivery", "same-id");
        if let Some(sig) = sig {
            r = r.header("x-hub-signature-256", sig);
        }
        r.body(Body::from(body)).unwrap()
    };
    // Wrong secret, missing signature, truncated and mutated bodies under the original signature.
    let good = sign(SECRET.as_bytes(), &body);
    let cases = vec![
        (
            "wrong secret",
            post(
                Some(sign(b"wrong", &body)),
                "application/json",
                body.clone(),
            ),
            401,
        ),
        (
            "missing header",
            post(None, "application/json", body.clone()),
            401,
        ),
        (
            "garbage header",
            post(
                Some("sha256=nothex".into()),
                "application/json",
                body.clone(),
            ),
            401,
        ),
        (
            "truncated",
            post(
                Some(good.clone()),
                "application/json",
                body[..body.len() / 2].to_vec(),
            ),
            401,
        ),
        (
            "mutated",
            post(Some(good.clone()), "application/json", {
                let mut b = body.clone();
                let i = b.len() / 3;
                b[i] = b[i].wrapping_add(1);
                b
            }),
            401,
        ),
        (
            "text/plain",
            post(Some(good.clone()), "text/plain", body.clone()),
            415,
        ),
        (
            "form",
            post(
                Some(good.clone()),
                "application/x-www-form-urlencoded",
                body.clone(),
            ),
            415,
        ),
        (
            "10 MB",
            post(
                Some(sign(SECRET.as_bytes(), &vec![b' '; 10 << 20])),
                "application/json",
                vec![b' '; 10 << 20],
            ),
            413,
        ),
    ];
    for (what, request, want) in cases {
        let (status, answer) = h.send_raw(request).await;
        assert_eq!(status, want, "{what}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{what}: {answer}");
    }
    assert!(
        h.tasks().await.is_empty(),
        "no rejected delivery created a task"
    );

    // Signed but broken bodies: answered cleanly, nothing created.
    for (i, broken) in [
        b"{\"action\": \"labeled\", \"issue\": ".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"action\": \"labeled\"}".to_vec(),
        serde_json::to_vec(&json!({"action": "labeled", "label": {"name": "bug"}, "issue": {"number": "one"}, "repository": {"full_name": 5}})).unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, answer) = h.deliver("issues", &format!("broken-{i}"), &broken).await;
        assert_eq!(status, 202, "{answer}");
        assert!(answer["ignored"].is_string(), "{answer}");
    }
    assert!(h.tasks().await.is_empty());

    // The webhook is not behind the API bearer token; the task API still is.
    let (status, answer) = h.deliver("issues", "first", &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["created"], true, "{answer}");
    // Replayed delivery id: de-duplicated.
    let (status, answer) = h.deliver("issues", "first", &body).await;
    assert_eq!(status, 202);
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("duplicate delivery first"),
        "{answer}"
    );
    assert_eq!(h.tasks().await.len(), 1);
    let (status, _) = h
        .send_raw(Request::get("/tasks").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, 401, "the task API keeps its token");
}

#[tokio::test]
async fn redelivery_after_a_restart_finds_the_task_it_created() {
    let Some(labeled) = fixture("issues/labeled.payload.json") else {
        return;
    };
    for debounce in [10, 0] {
        let mut rules = fixture_rules();
        rules.debounce_seconds = debounce;
        let h = harness(rules.clone(), None, None);
        let body = serde_json::to_vec(&labeled).unwrap();
        let (_, first) = h.deliver("issues", "d-1", &body).await;
        assert_eq!(first["created"], true, "{first}");
        // A fresh webhook side (empty in-memory LRU) over the same store, as after a restart.
        let restarted = Arc::new(WebhookConfig::new(
            Secret::new(SECRET),
            GithubOptions {
                rules,
                ..Default::default()
            },
            None,
            StateDb::open_in_memory().unwrap(),
            None,
        ));
        let h2 = Harness {
            _dir: tempfile::tempdir().unwrap(),
            ctx: h.ctx.clone(),
            store: h.store.clone(),
            config: restarted,
            tracker: h.tracker.clone(),
        };
        let (status, again) = h2.deliver("issues", "d-1", &body).await;
        assert_eq!(status, 202);
        assert_eq!(again["created"], false, "debounce {debounce}: {again}");
        assert_eq!(again["task"]["id"], first["task"]["id"]);
        assert_eq!(h.tasks().await.len(), 1, "debounce {debounce}");
    }
}

fn relabel(mut payload: Value, label: &str, updated_at: &str) -> Vec<u8> {
    payload["label"]["name"] = json!(label);
    payload["issue"]["updated_at"] = json!(updated_at);
    serde_json::to_vec(&payload).unwrap()
}

#[tokio::test]
async fn a_label_burst_is_one_task_and_unlabeling_cancels_it() {
    let (Some(labeled), Some(unlabeled)) = (
        fixture("issues/labeled.payload.json"),
        fixture("issues/unlabeled.payload.json"),
    ) else {
        return;
    };
    let h = harness(Rules::default(), None, None);
    let mut ids = Vec::new();
    for (i, at) in [
        "2019-05-15T15:20:20Z",
        "2019-05-15T15:20:22Z",
        "2019-05-15T15:20:24Z",
        "2019-05-15T15:20:29Z",
    ]
    .iter()
    .enumerate()
    {
        let (status, answer) = h
            .deliver(
                "issues",
                &format!("burst-{i}"),
                &relabel(labeled.clone(), "agent:coder", at),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["task"]["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "a burst within the window is one task");
    // An unknown agent type is ignored with the reason.
    let (_, answer) = h
        .deliver(
            "issues",
            "nope",
            &relabel(labeled.clone(), "agent:nope", "2019-05-15T15:21:00Z"),
        )
        .await;
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{answer}"
    );
    let (_, answer) = h
        .deliver(
            "issues",
            "un",
            &relabel(unlabeled, "agent:coder", "2019-05-15T15:21:00Z"),
        )
        .await;
    assert_eq!(answer["cancelled"], json!(ids), "{answer}");
    let tasks = h.tasks().await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status.as_str(), "cancelled");
}

#[tokio::test]
async fn comment_commands_from_collaborators_only_and_never_from_our_bot() {
    let Some(comment) = fixture("issue_comment/created.payload.json") else {
        return;
    };
    let h = harness(Rules::default(), Some(4242), Some("orchestrator[bot]"));
    let with = |body: &str, assoc: &str, id: u64| {
        let mut c = comment.clone();
        c["comment"]["body"] = json!(body);
        c["comment"]["author_association"] = json!(assoc);
        c["comment"]["id"] = json!(id);
        c
    };
    let (_, answer) = h
        .deliver(
            "issue_comment",
            "c1",
            &serde_json::to_vec(&with("/agent coder fix the flaky test", "OWNER", 1)).unwrap(),
        )
        .await;
    assert_eq!(answer["created"], true, "{answer}");
    let task_id = answer["task"]["id"].as_str().unwrap().to_string();
    let (_, answer) = h
        .deliver(
            "issue_comment",
            "c2",
            &serde_json::to_vec(&with("/agent coder please", "NONE", 2)).unwrap(),
        )
        .await;
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("`NONE` may not trigger"),
        "{answer}"
    );
    let (_, answer) = h
        .deliver(
            "issue_comment",
            "c3",
            &serde_json::to_vec(&with("/agent ghost run", "MEMBER", 3)).unwrap(),
        )
        .await;
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{answer}"
    );
    // Our own bot's comment, and a comment made through our app: never work.
    let mut bot = with("/agent coder again", "NONE", 4);
    bot["sender"]["type"] = json!("Bot");
    bot["sender"]["login"] = json!("orchestrator[bot]");
    let (_, answer) = h
        .deliver("issue_comment", "c4", &serde_json::to_vec(&bot).unwrap())
        .await;
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("no self-triggering"),
        "{answer}"
    );
    let mut via = with("/agent coder again", "OWNER", 5);
    via["comment"]["performed_via_github_app"] = json!({"id": 4242, "slug": "orchestrator"});
    let (_, answer) = h
        .deliver("issue_comment", "c5", &serde_json::to_vec(&via).unwrap())
        .await;
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("no self-triggering"),
        "{answer}"
    );
    let tasks = h.tasks().await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].id, task_id);
    assert_eq!(tasks[0].payload["trigger"]["text"], "fix the flaky test");
}

#[tokio::test]
async fn over_budget_runs_are_refused_and_reported_on_the_issue() {
    let Some(labeled) = fixture("issues/labeled.payload.json") else {
        return;
    };
    let rules = Rules {
        debounce_seconds: 0,
        max_runs_per_issue_per_hour: 2,
        ..Rules::default()
    };
    let h = harness(rules, None, None);
    let body = relabel(labeled, "agent:coder", "2019-05-15T15:20:20Z");
    for i in 0..2 {
        let (_, answer) = h.deliver("issues", &format!("b{i}"), &body).await;
        // A run counts against the budget whether it starts now or waits behind the
        // issue's running task of the same type.
        assert!(
            answer["created"] == true || answer["deferred"]["created"] == true,
            "{answer}"
        );
    }
    let (status, answer) = h.deliver("issues", "b2", &body).await;
    assert_eq!(status, 202);
    assert_eq!(answer["over_budget"], true, "{answer}");
    assert!(answer["ignored"]
        .as_str()
        .unwrap()
        .contains("Codertocat/Hello-World#1"));
    // The first run is a task, the second waits behind it, the third exists nowhere.
    assert_eq!(h.tasks().await.len(), 1, "the third run was not enqueued");
    let waiting = h
        .config
        .state
        .next_deferred("Codertocat/Hello-World", 1, "coder")
        .await
        .unwrap();
    assert!(waiting.is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let comments = h.tracker.comments.lock().unwrap().clone();
        if let Some((repo, issue, text)) = comments.first() {
            assert_eq!((repo.as_str(), *issue), ("Codertocat/Hello-World", 1));
            assert!(text.contains("over budget"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "budget not reported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deliveries_are_counted_in_the_webhook_metric() {
    let Some(ping) = fixture("ping/payload.json") else {
        return;
    };
    let handle = agent_orchestrator::metrics::install();
    let h = harness(Rules::default(), None, None);
    let body = serde_json::to_vec(&ping).unwrap();
    h.deliver("ping", "m1", &body).await;
    h.deliver("ping", "m1", &body).await;
    let text = handle.render();
    let line = |result: &str| {
        text.lines().any(|l| {
            l.starts_with("agent_orchestrator_webhook_events_total{")
                && l.contains("event=\"ping\"")
                && l.contains(&format!("result=\"{result}\""))
        })
    };
    assert!(line("ignored") && line("duplicate"), "{text}");
}

#[tokio::test]
async fn a_new_trigger_waits_behind_the_running_task_of_its_type() {
    let Some(comment) = fixture("issue_comment/created.payload.json") else {
        return;
    };
    let h = harness(Rules::default(), None, None);
    let command = |text: &str, id: u64| {
        let mut c = comment.clone();
        c["comment"]["body"] = json!(text);
        c["comment"]["id"] = json!(id);
        serde_json::to_vec(&c).unwrap()
    };
    let (_, first) = h
        .deliver("issue_comment", "w1", &command("/agent coder one", 11))
        .await;
    assert_eq!(first["created"], true, "{first}");
    let first_id = first["task"]["id"].as_str().unwrap().to_string();
    let (status, second) = h
        .deliver("issue_comment", "w2", &command("/agent coder two", 12))
        .await;
    assert_eq!(status, 202);
    assert_eq!(second["deferred"]["behind"], first_id.as_str(), "{second}");
    assert_eq!(second["deferred"]["created"], true, "{second}");
    // The same comment redelivered under another id waits only once.
    let (_, again) = h
        .deliver("issue_comment", "w3", &command("/agent coder two", 12))
        .await;
    assert_eq!(again["deferred"]["created"], false, "{again}");
    // Another agent type on the same issue is not held back.
    let (_, other) = h
        .deliver("issue_comment", "w4", &command("/agent reviewer look", 13))
        .await;
    assert_eq!(other["created"], true, "{other}");
    assert_eq!(h.tasks().await.len(), 2);

    // The first task ends: the reporter's pass starts the waiting trigger.
    agent_orchestrator::intake::cancel(&h.ctx, &first_id)
        .await
        .unwrap();
    agent_orchestrator::github::progress::pass(&h.ctx, &h.config, None)
        .await
        .unwrap();
    let tasks = h.tasks().await;
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    let started: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.payload["trigger"]["text"] == "two")
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].status.as_str(), "queued");
    // Nothing else waits.
    agent_orchestrator::github::progress::pass(&h.ctx, &h.config, None)
        .await
        .unwrap();
    assert_eq!(h.tasks().await.len(), 3);
}

/// Signs and posts a delivery to the real binary.
fn deliver_to(c: &Coordinator, delivery: &str, body: &[u8]) -> (u16, Value) {
    let r = common::blocking_client()
        .post(format!("{}/webhooks/github", c.base))
        .header("content-type", "application/json")
        .header("x-github-event", "issues")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn the_budget_holds_across_a_restart() {
    let Some(labeled) = fixture("issues/labeled.payload.json") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    // Debounce off and no waiting behind the issue's task: each delivery is a new run.
    let config = dir.path().join("github.json");
    let rules = json!({"rules": {"max_runs_per_issue_per_hour": 1, "debounce_seconds": 0,
                                 "one_task_per_issue": false}});
    std::fs::write(&config, serde_json::to_vec(&rules).unwrap()).unwrap();
    let inputs = common::shell_inputs(dir.path(), &[("coder", 1, "exit 0")]);
    let mut c = Coordinator::start(
        dir.path(),
        &[
            "--inputs",
            inputs.to_str().unwrap(),
            "--github-webhook-secret-file",
            secret.to_str().unwrap(),
            "--github-config",
            config.to_str().unwrap(),
        ],
    );
    let body = relabel(labeled.clone(), "agent:coder", "2019-05-15T15:20:20Z");
    let (status, first) = deliver_to(&c, "before-restart", &body);
    assert_eq!((status, &first["created"]), (202, &json!(true)), "{first}");

    c.restart();
    let (status, again) = deliver_to(&c, "after-restart", &body);
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        again["over_budget"], true,
        "the restart granted a fresh budget: {again}"
    );
    assert!(
        again["ignored"]
            .as_str()
            .unwrap_or_default()
            .contains("Codertocat/Hello-World#1"),
        "{again}"
    );
    let tasks = c.all_tasks();
    assert_eq!(tasks.len(), 1, "no second task: {tasks:#?}");
    assert_eq!(tasks[0]["id"], first["task"]["id"]);

    // Only that issue is held back.
    let mut other = labeled;
    other["issue"]["number"] = json!(2);
    let (_, other) = deliver_to(
        &c,
        "other-issue",
        &relabel(other, "agent:coder", "2019-05-15T15:20:20Z"),
    );
    assert_eq!(other["created"], true, "{other}");
}

/// A GitHub task stored by a delivery whose `github.db` row was never committed (the process
/// died in between: the row is written after the task, unawaited) is tracked again, and counted
/// on the budget, when the webhook side starts as the store's only coordinator; nothing else is.
/// The GitHub side with a webhook secret (written under `dir`) and nothing else.
fn webhook_only_settings(dir: &Path) -> agent_orchestrator::github::GithubSettings {
    use agent_orchestrator::github::{GithubSettings, GithubSources};
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    GithubSettings::resolve(&GithubSources {
        webhook_secret_file: Some(secret),
        ..GithubSources::default()
    })
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn a_github_task_left_untracked_by_a_crash_is_tracked_again_at_start() {
    use agent_orchestrator::intake::{self, SubmitRequest};
    let h = harness(fixture_rules(), None, None);
    let submit = |payload: Value, key: &str| SubmitRequest {
        agent_type: "coder".into(),
        payload,
        idempotency_key: Some(key.into()),
        ..Default::default()
    };
    let github_payload = json!({"source": "github", "repository": "o/r", "issue": 5,
        "installation_id": 9, "trigger": {"event": "issues"}});
    let (lost, _) = intake::submit(&h.ctx, submit(github_payload.clone(), "gh:o/r#5:coder:d1"))
        .await
        .unwrap();
    // Look-alikes the API could make: a GitHub payload under another key, a plain task.
    intake::submit(&h.ctx, submit(github_payload, "mine"))
        .await
        .unwrap();
    intake::submit(&h.ctx, submit(json!({"n": 1}), "plain"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let settings = webhook_only_settings(dir.path());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state_of = |data: &Path| StateDb::open(&data.join("github.db")).unwrap();

    // Beside other coordinators (a shared store) the task may be another one's: left alone.
    let shared = dir.path().join("shared");
    settings
        .start(Some(&shared), false, h.ctx.clone(), stopped.clone())
        .await
        .unwrap();
    assert!(state_of(&shared).open_tasks().await.unwrap().is_empty());

    let sole = dir.path().join("sole");
    for _ in 0..2 {
        settings
            .start(Some(&sole), true, h.ctx.clone(), stopped.clone())
            .await
            .unwrap();
        let state = state_of(&sole);
        let open = state.open_tasks().await.unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].task_id, lost.id);
        assert_eq!(
            (
                open[0].repository.as_str(),
                open[0].number,
                open[0].installation_id
            ),
            ("o/r", 5, Some(9))
        );
        let runs = state.budget_runs_since(0).await.unwrap().runs;
        assert_eq!(
            runs.len(),
            1,
            "counted once, however often it starts: {runs:?}"
        );
        assert_eq!(runs[0].started_at, lost.created_at);
    }
    let _ = stop.send(true);
}

#[tokio::test]
async fn a_finished_github_task_left_untracked_still_counts_against_the_hours_budget() {
    use agent_orchestrator::intake::{self, SubmitRequest};
    use agent_orchestrator::task::Status;
    let h = harness(fixture_rules(), None, None);
    let github_payload = json!({"source": "github", "repository": "o/r", "issue": 5,
        "trigger": {"event": "issues"}});
    let (template, _) = intake::submit(
        &h.ctx,
        SubmitRequest {
            agent_type: "coder".into(),
            payload: json!({"n": 0}),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Two runs of the issue that finished before the crash lost their rows: one 10 minutes
    // ago, one two hours ago (outside the budget's hour).
    let now = agent_orchestrator::task::now_ms();
    let mut finished = Vec::new();
    for (key, age_min) in [("gh:o/r#5:coder:old", 120), ("gh:o/r#5:coder:new", 10)] {
        let task = Task {
            id: agent_orchestrator::task::new_task_id(),
            payload: github_payload.clone(),
            idempotency_key: Some(key.into()),
            status: Status::Succeeded,
            created_at: now - age_min * 60_000,
            updated_at: now,
            ..template.clone()
        };
        h.store.create(&task).await.unwrap();
        finished.push(task);
    }

    let dir = tempfile::tempdir().unwrap();
    let settings = webhook_only_settings(dir.path());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    settings
        .start(Some(dir.path()), true, h.ctx.clone(), stopped)
        .await
        .unwrap();
    let state = StateDb::open(&dir.path().join("github.db")).unwrap();
    let runs = state.budget_runs_since(0).await.unwrap().runs;
    assert_eq!(runs.len(), 1, "only the run within the hour: {runs:?}");
    assert_eq!(runs[0].started_at, finished[1].created_at);
    let _ = stop.send(true);
}

#[tokio::test]
async fn the_task_api_refuses_the_github_apps_idempotency_keys() {
    let h = harness(fixture_rules(), None, None);
    let request = Request::post("/tasks")
        .header("content-type", "application/json")
        .header("authorization", "Bearer api-token")
        .body(Body::from(
            json!({"agent_type": "coder", "idempotency_key": "gh:o/r#5:coder:d1"}).to_string(),
        ))
        .unwrap();
    let (status, body) = h.send_raw(request).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("gh:"), "{body}");
    assert!(h.tasks().await.is_empty());
}
