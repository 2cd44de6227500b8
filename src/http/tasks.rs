//! `/tasks`: submit, read, list, cancel.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::intake::{self, SubmitRequest};
use crate::store::TaskFilter;
use crate::task::{Status, Task};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", post(create).get(list))
        .route("/tasks/{id}", get(read))
        .route("/tasks/{id}/cancel", post(cancel))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    agent_type: String,
    #[serde(default)]
    payload: serde_json::Value,
    priority: Option<i64>,
    timeout_seconds: Option<u64>,
    idempotency_key: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// Reads a JSON body within the size limit, mapping every failure to the API's errors.
fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(state.max_body_bytes),
        _ => ApiError::BadRequest(format!("cannot read the request body: {e}")),
    })?;
    if bytes.len() > state.max_body_bytes {
        return Err(ApiError::TooLarge(state.max_body_bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(format!("invalid task: {e}")),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body: CreateBody = json_body(&state, body)?;
    if !body.depends_on.is_empty() {
        return Err(ApiError::Unprocessable(
            "depends_on is not supported on single tasks yet; submit a workflow".into(),
        ));
    }
    if let Some(key) = body
        .idempotency_key
        .as_deref()
        .filter(|k| k.starts_with(crate::github::KEY_PREFIX))
    {
        return Err(ApiError::Unprocessable(format!(
            "idempotency_key `{key}`: keys beginning `{}` are the GitHub App's",
            crate::github::KEY_PREFIX
        )));
    }
    let request = SubmitRequest {
        agent_type: body.agent_type,
        payload: body.payload,
        priority: body.priority,
        timeout_seconds: body.timeout_seconds,
        idempotency_key: body.idempotency_key,
    };
    let (task, new) = intake::submit(&state.ctx, request).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({"id": task.id, "status": task.status})),
    ))
}

fn task_id(id: &str) -> Result<&str, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a task id")))
}

async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let id = task_id(&id)?;
    let task = state
        .ctx
        .store
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    Ok(Json(task))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    agent_type: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(
            Status::parse(s)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown status `{s}`")))?,
        ),
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be from 1 to 1000".into()));
    }
    let filter = TaskFilter {
        status,
        agent_type: query.agent_type,
    };
    let page = state
        .ctx
        .store
        .list(&filter, limit, query.cursor.as_deref())
        .await?;
    Ok(Json(
        serde_json::json!({"tasks": page.tasks, "next_cursor": page.next_cursor}),
    ))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = task_id(&id)?;
    let task = intake::cancel(&state.ctx, id).await?;
    let code = if task.status == Status::Cancelled {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        code,
        Json(
            serde_json::json!({"id": task.id, "status": task.status, "cancel_requested": task.cancel_requested}),
        ),
    ))
}
