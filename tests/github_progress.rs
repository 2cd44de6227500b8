//! Progress on GitHub through the real binary, against an in-process fake GitHub (axum) that
//! answers with GitHub's REST shapes (objects taken from the webhook fixtures' `comment`,
//! `label`, `issue` and `repository`): the status comment is created once and edited in
//! place, labels follow the task, the installation token is scoped to the repository and never
//! logged, a finished sub-issue nudges its parent, and over-budget runs are reported.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, patch, post};
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "progress-secret";
const TOKEN: &str = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";

#[derive(Clone, Debug)]
struct Call {
    method: &'static str,
    path: String,
    auth: String,
    body: Value,
}

#[derive(Clone)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    labels: Arc<Mutex<BTreeSet<(u64, String)>>>,
    /// Comments created, per issue (for the list endpoint).
    comments: Arc<Mutex<Vec<(u64, Value)>>>,
    comment: Value,
    label: Value,
    issue: Value,
    repository: Value,
}

impl Fake {
    fn record(&self, method: &'static str, path: String, headers: &HeaderMap, body: Value) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.calls.lock().unwrap().push(Call {
            method,
            path,
            auth,
            body,
        });
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

fn token_ok(headers: &HeaderMap) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    auth == format!("Bearer {TOKEN}") || auth == format!("token {TOKEN}")
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
        ),
    )
}

fn not_found(doc: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not Found", "documentation_url": doc})),
    )
}

async fn access_tokens(
    State(f): State<Fake>,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    f.record(
        "POST",
        format!("/app/installations/{id}/access_tokens"),
        &headers,
        body,
    );
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if jwt.split('.').count() != 3 {
        return unauthorized();
    }
    let expires = "2999-01-01T00:00:00Z";
    (
        StatusCode::CREATED,
        Json(json!({
            "token": TOKEN,
            "expires_at": expires,
            "permissions": {"issues": "write", "metadata": "read"},
            "repository_selection": "selected",
            "repositories": [f.repository],
        })),
    )
}

async fn create_comment(
    State(f): State<Fake>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    f.record(
        "POST",
        format!("/repos/{o}/{r}/issues/{n}/comments"),
        &headers,
        body.clone(),
    );
    if !token_ok(&headers) {
        return unauthorized();
    }
    let id = 1000 + f.calls().len() as u64;
    let mut comment = f.comment.clone();
    comment["id"] = json!(id);
    comment["body"] = body["body"].clone();
    f.comments.lock().unwrap().push((n, comment.clone()));
    (StatusCode::CREATED, Json(comment))
}

async fn list_comments(
    State(f): State<Fake>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    f.record(
        "GET",
        format!("/repos/{o}/{r}/issues/{n}/comments"),
        &headers,
        Value::Null,
    );
    if !token_ok(&headers) {
        return unauthorized();
    }
    let all: Vec<Value> = f
        .comments
        .lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| *i == n)
        .map(|(_, c)| c.clone())
        .collect();
    (StatusCode::OK, Json(json!(all)))
}

async fn update_comment(
    State(f): State<Fake>,
    UrlPath((o, r, id)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    f.record(
        "PATCH",
        format!("/repos/{o}/{r}/issues/comments/{id}"),
        &headers,
        body.clone(),
    );
    if !token_ok(&headers) {
        return unauthorized();
    }
    let mut comment = f.comment.clone();
    comment["id"] = json!(id);
    comment["body"] = body["body"].clone();
    (StatusCode::OK, Json(comment))
}

async fn add_labels(
    State(f): State<Fake>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    f.record(
        "POST",
        format!("/repos/{o}/{r}/issues/{n}/labels"),
        &headers,
        body.clone(),
    );
    if !token_ok(&headers) {
        return unauthorized();
    }
    let mut set = f.labels.lock().unwrap();
    for name in body["labels"].as_array().cloned().unwrap_or_default() {
        set.insert((n, name.as_str().unwrap_or("").to_string()));
    }
    let out: Vec<Value> = set
        .iter()
        .filter(|(i, _)| *i == n)
        .map(|(_, name)| {
            let mut l = f.label.clone();
            l["name"] = json!(name);
            l
        })
        .collect();
    (StatusCode::OK, Json(json!(out)))
}

async fn remove_label(
    State(f): State<Fake>,
    UrlPath((o, r, n, name)): UrlPath<(String, String, u64, String)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    f.record(
        "DELETE",
        format!("/repos/{o}/{r}/issues/{n}/labels/{name}"),
        &headers,
        Value::Null,
    );
    if !token_ok(&headers) {
        return unauthorized();
    }
    if !f.labels.lock().unwrap().remove(&(n, name)) {
        return not_found(
            "https://docs.github.com/rest/issues/labels#remove-a-label-from-an-issue",
        );
    }
    (StatusCode::OK, Json(json!([])))
}

async fn parent(
    State(f): State<Fake>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    f.record(
        "GET",
        format!("/repos/{o}/{r}/issues/{n}/parent"),
        &headers,
        Value::Null,
    );
    if !token_ok(&headers) {
        return unauthorized();
    }
    if n != 1 {
        return not_found("https://docs.github.com/rest/issues/sub-issues");
    }
    let mut issue = f.issue.clone();
    issue["number"] = json!(10);
    (StatusCode::OK, Json(issue))
}

fn fixture(name: &str) -> Option<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/github-webhooks")
        .join(name);
    let bytes = std::fs::read(&path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Starts the fake GitHub on its own runtime thread; returns it and its base URL.
fn start_fake() -> Option<(Fake, String)> {
    let comment_fixture = fixture("issue_comment/created.payload.json")?;
    let labeled = fixture("issues/labeled.payload.json")?;
    let fake = Fake {
        calls: Arc::default(),
        labels: Arc::default(),
        comments: Arc::default(),
        comment: comment_fixture["comment"].clone(),
        label: labeled["label"].clone(),
        issue: labeled["issue"].clone(),
        repository: labeled["repository"].clone(),
    };
    let app = Router::new()
        .route("/app/installations/{id}/access_tokens", post(access_tokens))
        .route(
            "/repos/{o}/{r}/issues/{n}/comments",
            post(create_comment).get(list_comments),
        )
        .route("/repos/{o}/{r}/issues/comments/{id}", patch(update_comment))
        .route("/repos/{o}/{r}/issues/{n}/labels", post(add_labels))
        .route(
            "/repos/{o}/{r}/issues/{n}/labels/{name}",
            delete(remove_label),
        )
        .route(
            "/repos/{o}/{r}/issues/{n}/parent",
            axum::routing::get(parent),
        )
        .with_state(fake.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app).await;
        });
    });
    Some((fake, url))
}

/// A fresh RSA key (PEM) from openssl; `None` (test skipped) without openssl.
fn private_key(dir: &Path) -> Option<std::path::PathBuf> {
    let path = dir.join("app-key.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&path)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: openssl cannot generate a key here");
        return None;
    }
    Some(path)
}

struct Setup {
    dir: tempfile::TempDir,
    fake: Fake,
    coordinator: Coordinator,
}

fn setup(config: Value, types: &[(&str, u32, &str)]) -> Option<Setup> {
    setup_with(config, types, |key| {
        Some(vec![
            "--github-private-key-file".to_string(),
            key.to_str().unwrap().to_string(),
        ])
    })
}

/// [`setup`], with the flags that hand `serve` the app's key (generated at the given path).
fn setup_with(
    config: Value,
    types: &[(&str, u32, &str)],
    key_flags: impl FnOnce(&Path) -> Option<Vec<String>>,
) -> Option<Setup> {
    let (fake, url) = start_fake()?;
    let dir = tempfile::tempdir().unwrap();
    let key = private_key(dir.path())?;
    let key_flags = key_flags(&key)?;
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config_path = dir.path().join("github.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let inputs = shell_inputs(dir.path(), types);
    // Debug logs: the token must not appear even there.
    std::env::set_var("RUST_LOG", "debug");
    let mut args = vec![
        "--inputs",
        inputs.to_str().unwrap(),
        "--github-webhook-secret-file",
        secret.to_str().unwrap(),
        "--github-app-id",
        "4242",
        "--github-api-url",
        &url,
        "--github-config",
        config_path.to_str().unwrap(),
    ];
    args.extend(key_flags.iter().map(String::as_str));
    let coordinator = Coordinator::start(dir.path(), &args);
    Some(Setup {
        dir,
        fake,
        coordinator,
    })
}

fn deliver(c: &Coordinator, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = agent_orchestrator::github::webhook::sign(SECRET.as_bytes(), &bytes);
    let r = blocking_client()
        .post(format!("{}/webhooks/github", c.base))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sig)
        .body(bytes)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn labeled(label: &str, issue: u64) -> Value {
    let mut p = fixture("issues/labeled.payload.json").unwrap();
    p["label"]["name"] = json!(label);
    p["issue"]["number"] = json!(issue);
    p["installation"] = json!({"id": 77, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNzc="});
    p
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_comment_is_created_once_and_edited_in_place() {
    let config = json!({"progress_interval_ms": 100, "rules": {"debounce_seconds": 0}});
    let result = r#"echo '{"summary":"fixed"}' > "$AO_RESULT_FILE""#;
    let script = format!("sleep 1.5; {result}");
    let Some(mut s) = setup(config, &[("slow", 1, &script)]) else {
        return;
    };
    let (status, answer) = deliver(&s.coordinator, "issues", "p-1", &labeled("agent:slow", 1));
    assert_eq!(status, 202, "{answer}");
    let task_id = answer["task"]["id"].as_str().unwrap().to_string();
    let marker = format!("<!-- agent-orchestrator:slow:{task_id} -->");
    let task = s
        .coordinator
        .wait_terminal(&task_id, Duration::from_secs(30));
    assert_eq!(task["status"], "succeeded", "{task}");

    let fake = s.fake.clone();
    let issue1_final = |calls: &[Call]| {
        calls.iter().any(|c| {
            c.method == "PATCH"
                && c.body["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&marker) && b.contains("succeeded"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !issue1_final(&fake.calls()) {
        assert!(
            Instant::now() < deadline,
            "no final status on the comment: {:#?}\n{}",
            fake.calls(),
            s.coordinator.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The parent (issue 10) got a low-priority resume task, reported on its own issue.
    wait_for("the parent's resume task", Duration::from_secs(20), || {
        s.coordinator.all_tasks().iter().any(|t| {
            t["payload"]["issue"] == 10
                && t["payload"]["trigger"]["event"] == "sub_issue_finished"
                && t["status"] == "succeeded"
        })
    });
    let resume = s
        .coordinator
        .all_tasks()
        .into_iter()
        .find(|t| t["payload"]["issue"] == 10)
        .unwrap();
    assert_eq!(resume["priority"], -100, "{resume}");
    assert_eq!(resume["payload"]["trigger"]["sub_issue"], 1);
    wait_for("the parent's comment", Duration::from_secs(10), || {
        fake.calls()
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/issues/10/comments"))
    });

    let calls = fake.calls();
    let creates: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.method == "POST" && c.path == "/repos/Codertocat/Hello-World/issues/1/comments"
        })
        .collect();
    assert_eq!(creates.len(), 1, "one status comment: {calls:#?}");
    assert!(creates[0].body["body"].as_str().unwrap().contains(&marker));
    // Created at the first state the reporter saw (queued, or already running).
    let first = creates[0].body["body"].as_str().unwrap();
    assert!(
        first.contains("queued") || first.contains("running"),
        "{first}"
    );
    let issue1_patches: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.method == "PATCH" && c.body["body"].as_str().is_some_and(|b| b.contains(&marker))
        })
        .collect();
    let paths: BTreeSet<&str> = issue1_patches.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths.len(),
        1,
        "every edit targets the one comment: {paths:?}"
    );
    assert!(
        first.contains("running")
            || issue1_patches
                .iter()
                .any(|c| c.body["body"].as_str().unwrap().contains("running")),
        "the running state was shown"
    );
    let last = issue1_patches.last().unwrap().body["body"]
        .as_str()
        .unwrap();
    assert!(
        last.contains("succeeded") && last.contains("fixed"),
        "{last}"
    );
    // Labels followed the task.
    let added: Vec<&Value> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/repos/Codertocat/Hello-World/issues/1/labels")
        .map(|c| &c.body["labels"])
        .collect();
    assert!(added.contains(&&json!(["agent:running"])), "{added:?}");
    assert!(added.contains(&&json!(["agent:done"])), "{added:?}");
    assert!(fake
        .labels
        .lock()
        .unwrap()
        .contains(&(1, "agent:done".into())));
    assert!(!fake
        .labels
        .lock()
        .unwrap()
        .contains(&(1, "agent:running".into())));
    // The installation token: for installation 77, scoped to the one repository, JWT-authenticated.
    let tokens: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path.ends_with("/access_tokens"))
        .collect();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(t.path, "/app/installations/77/access_tokens");
        assert_eq!(t.body["repositories"], json!(["Hello-World"]), "{t:?}");
        assert!(t.auth.starts_with("Bearer ") && !t.auth.contains(TOKEN));
    }
    // Every issue call used the installation token.
    assert!(calls
        .iter()
        .filter(|c| c.path.starts_with("/repos/"))
        .all(|c| c.auth.contains(TOKEN)));

    // A restart does not post a second comment (the record survives in github.db) — even when
    // the record lost the comment id (crash between the create and its recording): the marker
    // finds the comment, which is edited in place.
    s.coordinator.kill9();
    {
        let db = rusqlite::Connection::open(s.coordinator.data_dir.join("github.db")).unwrap();
        let n = db
            .execute(
                "UPDATE tracked SET comment_id = NULL, reported = NULL, done = 0 WHERE task_id = ?1",
                [&task_id],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let before = fake.calls().len();
    s.coordinator.restart();
    let comment_path = paths.iter().next().unwrap().to_string();
    wait_for(
        "the re-found comment to be edited",
        Duration::from_secs(10),
        || {
            fake.calls()[before..]
                .iter()
                .any(|c| c.method == "PATCH" && c.path == comment_path)
        },
    );
    let after: Vec<Call> = fake.calls()[before..].to_vec();
    assert!(
        !after
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/issues/1/comments")),
        "{after:#?}"
    );
    // Secrets never reach the logs.
    let log = s.coordinator.log_text();
    assert!(log.contains("reported progress on GitHub"), "{log}");
    assert!(!log.contains(TOKEN), "the installation token was logged");
    assert!(!log.contains(SECRET), "the webhook secret was logged");
    let key = std::fs::read_to_string(s.dir.path().join("app-key.pem")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!log.contains(key_line), "the private key was logged");
}

#[test]
fn the_run_over_budget_is_refused_and_reported_on_the_issue() {
    let config = json!({"progress_interval_ms": 100,
        "rules": {"debounce_seconds": 0, "max_runs_per_issue_per_hour": 2}});
    let Some(s) = setup(config, &[("quick", 2, "true")]) else {
        return;
    };
    for i in 0..2 {
        let (status, answer) = deliver(
            &s.coordinator,
            "issues",
            &format!("b-{i}"),
            &labeled("agent:quick", 5),
        );
        assert_eq!(status, 202);
        // A run counts against the budget whether it starts now or waits behind the
        // issue's running task of the same type.
        assert!(
            answer["created"] == true || answer["deferred"]["created"] == true,
            "{answer}"
        );
    }
    let (status, answer) = deliver(&s.coordinator, "issues", "b-2", &labeled("agent:quick", 5));
    assert_eq!(status, 202);
    assert_eq!(answer["over_budget"], true, "{answer}");
    // Another issue of the repository still has budget.
    let (_, answer) = deliver(&s.coordinator, "issues", "b-3", &labeled("agent:quick", 6));
    assert_eq!(answer["created"], true, "{answer}");
    // Two runs (the second waits behind the first, then starts), never three.
    let on_issue_5 = |c: &Coordinator| {
        c.all_tasks()
            .into_iter()
            .filter(|t| t["payload"]["issue"] == 5)
            .count()
    };
    wait_for("the waiting run to start", Duration::from_secs(10), || {
        on_issue_5(&s.coordinator) == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        on_issue_5(&s.coordinator),
        2,
        "the third run was not enqueued"
    );
    let fake = s.fake.clone();
    wait_for("the budget notice", Duration::from_secs(10), || {
        fake.calls().iter().any(|c| {
            c.method == "POST"
                && c.path == "/repos/Codertocat/Hello-World/issues/5/comments"
                && c.body["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("over budget"))
        })
    });
    let scrape = s.coordinator.scrape();
    assert_eq!(
        metric(
            &scrape,
            "agent_orchestrator_webhook_events_total",
            &[("event", "issues"), ("result", "over_budget")]
        ),
        Some(1.0),
        "{scrape}"
    );
}

/// The cluster deployment hands `serve` only the ARN of the app's key in Secrets Manager
/// (`AO_GITHUB_PRIVATE_KEY_SECRET_ARN` in the rendered coordinator job): the JWT that mints the
/// installation token is signed with the key read from there, and an ARN that names nothing
/// stops `serve` with exit 2 and a message naming the ARN, not the key.
#[cfg(feature = "aws")]
#[test]
fn the_app_key_is_read_from_secrets_manager() {
    use base64::Engine as _;
    let Some(moto) = moto("github-key-from-secrets-manager") else {
        return;
    };
    // Inherited by the coordinators this test starts (the other tests here use no AWS).
    std::env::set_var("AWS_ENDPOINT_URL", &moto);
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = rt.block_on(agent_orchestrator::aws::sdk_config(
        &agent_orchestrator::aws::AwsSettings {
            endpoint_url: Some(moto.clone()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("test".into(), "test".into())),
        },
    ));
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let mut key_path = None;
    let setup = setup_with(
        json!({"progress_interval_ms": 100, "rules": {"debounce_seconds": 0}}),
        &[("quick", 1, "true")],
        |key| {
            key_path = Some(key.to_path_buf());
            let name = format!("github-app-key-{}", uuid::Uuid::new_v4().simple());
            let created = rt
                .block_on(
                    secrets
                        .create_secret()
                        .name(name)
                        .secret_string(std::fs::read_to_string(key).unwrap())
                        .send(),
                )
                .expect("create the secret in moto");
            Some(vec![
                "--github-private-key-secret-arn".to_string(),
                created.arn().expect("arn").to_string(),
            ])
        },
    );
    let Some(s) = setup else {
        return;
    };
    let key = key_path.unwrap();
    let (status, answer) = deliver(&s.coordinator, "issues", "sm-1", &labeled("agent:quick", 5));
    assert_eq!(status, 202, "{answer}");
    let mut jwt = None;
    wait_for(
        "an installation token request",
        Duration::from_secs(20),
        || {
            jwt = s
                .fake
                .calls()
                .into_iter()
                .find(|c| c.path.ends_with("/access_tokens"))
                .map(|c| c.auth.trim_start_matches("Bearer ").to_string());
            jwt.is_some()
        },
    );
    // RS256 over `header.payload`, checked with the public half of the key in the secret.
    let jwt = jwt.unwrap();
    let (signed, signature) = jwt.rsplit_once('.').expect("a JWT");
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    let (signed_path, signature_path, public) = (
        s.dir.path().join("jwt.signed"),
        s.dir.path().join("jwt.sig"),
        s.dir.path().join("app-key.pub"),
    );
    std::fs::write(&signed_path, signed).unwrap();
    std::fs::write(&signature_path, signature).unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl")
    };
    let out = openssl(&[
        "rsa".as_ref(),
        "-in".as_ref(),
        key.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = openssl(&[
        "dgst".as_ref(),
        "-sha256".as_ref(),
        "-verify".as_ref(),
        public.as_os_str(),
        "-signature".as_ref(),
        signature_path.as_os_str(),
        signed_path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "the JWT is not signed with the key from Secrets Manager: {out:?}"
    );
    let log = s.coordinator.log_text();
    assert!(!log.contains("PRIVATE KEY"), "the key reached the log");

    // An ARN that names nothing: a configuration error naming the ARN.
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:no-such-key-AbCdEf";
    let secret = s.dir.path().join("webhook-secret");
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(s.dir.path().join("data-missing"))
        .arg("--github-webhook-secret-file")
        .arg(&secret)
        .args([
            "--github-app-id",
            "4242",
            "--github-private-key-secret-arn",
            missing,
        ])
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(missing), "{stderr}");
}
