//! `submit`: a client of `POST /tasks` against a running coordinator; `--wait` polls the task
//! until it is terminal and prints it.

use std::path::PathBuf;
use std::time::Duration;

use crate::task::{Status, Task};

/// Flags of `submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Agent type to run.
    #[arg(long)]
    pub agent_type: String,
    /// Task payload (JSON).
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Higher runs first (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i64>,
    /// Run-time limit of one attempt, in seconds.
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
    /// Submitting the same key twice creates one task.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait until the task finishes and print it as JSON; exit 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Coordinator address.
    #[arg(long, env = "AO_ADDR", default_value = "http://127.0.0.1:8080")]
    pub addr: String,
    /// File holding the API's bearer token.
    #[arg(long, env = "AO_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// A failed submit: exit 2 for what the coordinator refused as invalid, 1 otherwise.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SubmitError {
    pub exit_code: u8,
    pub message: String,
}

fn runtime(message: String) -> SubmitError {
    SubmitError {
        exit_code: 1,
        message,
    }
}

pub async fn run(args: &SubmitArgs) -> Result<(), SubmitError> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).map_err(|e| SubmitError {
            exit_code: 2,
            message: format!("--payload is not valid JSON: {e}"),
        })?;
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| SubmitError {
                    exit_code: 2,
                    message: format!("--token-file {}: {e}", path.display()),
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let base = args.addr.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| runtime(e.to_string()))?;
    let mut body = serde_json::json!({"agent_type": args.agent_type, "payload": payload});
    if let Some(p) = args.priority {
        body["priority"] = p.into();
    }
    if let Some(t) = args.timeout_seconds {
        body["timeout_seconds"] = t.into();
    }
    if let Some(k) = &args.idempotency_key {
        body["idempotency_key"] = k.clone().into();
    }
    let created = call(
        &client,
        client.post(format!("{base}/tasks")).json(&body),
        token.as_deref(),
        &base,
    )
    .await?;
    if !args.wait {
        println!(
            "{}",
            serde_json::to_string_pretty(&created).unwrap_or_default()
        );
        return Ok(());
    }
    let id = created["id"]
        .as_str()
        .ok_or_else(|| runtime(format!("unexpected answer: {created}")))?
        .to_string();
    loop {
        let value = call(
            &client,
            client.get(format!("{base}/tasks/{id}")),
            token.as_deref(),
            &base,
        )
        .await?;
        let task: Task = serde_json::from_value(value.clone())
            .map_err(|e| runtime(format!("unexpected task JSON: {e}")))?;
        if task.status.is_terminal() {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return if task.status == Status::Succeeded {
                Ok(())
            } else {
                Err(runtime(format!("task {id} ended {}", task.status.as_str())))
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(
    client: &reqwest::Client,
    request: reqwest::RequestBuilder,
    token: Option<&str>,
    base: &str,
) -> Result<serde_json::Value, SubmitError> {
    let _ = client;
    let request = match token {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| runtime(format!("cannot reach the coordinator at {base}: {e}")))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| runtime(format!("unreadable answer from {base}: {e}")))?;
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("request refused")
        .to_string();
    let exit_code = if status.is_client_error() { 2 } else { 1 };
    Err(SubmitError {
        exit_code,
        message: format!("{status}: {message}"),
    })
}
