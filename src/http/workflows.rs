//! `/workflows`: submit a DAG of tasks, read its state, cancel it (DESIGN.md §6). Behind the
//! API token like `/tasks`. The workflow store and the engine's wake-up reach the handlers as an
//! [`axum::Extension<Workflows>`] layered on by `serve`; without it the routes answer 503.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::task::now_ms;
use crate::workflow::engine::{self, CancelError};
use crate::workflow::{plan, WorkflowRequest, WorkflowStoreError, Workflows};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/workflows", post(create).get(list))
        .route("/workflows/{id}", get(read))
        .route("/workflows/{id}/cancel", post(cancel))
}

impl From<WorkflowStoreError> for ApiError {
    fn from(err: WorkflowStoreError) -> Self {
        match err {
            WorkflowStoreError::NotFound { .. } => ApiError::NotFound(err.to_string()),
            WorkflowStoreError::Conflict { .. } => ApiError::Conflict(err.to_string()),
            WorkflowStoreError::Unavailable { .. } => ApiError::Unavailable(err.to_string()),
        }
    }
}

fn workflows(extension: Option<Extension<Workflows>>) -> Result<Workflows, ApiError> {
    extension
        .map(|Extension(w)| w)
        .ok_or_else(|| ApiError::Unavailable("the workflow store is not configured".into()))
}

fn workflow_id(id: &str) -> Result<&str, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a workflow id")))
}

async fn create(
    State(state): State<AppState>,
    extension: Option<Extension<Workflows>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let workflows = workflows(extension)?;
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(state.max_body_bytes),
        _ => ApiError::BadRequest(format!("cannot read the request body: {e}")),
    })?;
    if bytes.len() > state.max_body_bytes {
        return Err(ApiError::TooLarge(state.max_body_bytes));
    }
    let request: WorkflowRequest =
        serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::Unprocessable(format!("invalid workflow: {e}"))
            }
            _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
        })?;
    let workflow = plan(request, &state.ctx.inputs, now_ms())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let stored = workflows.store.create(&workflow).await?;
    workflows.wake.notify_one();
    tracing::info!(workflow_id = %stored.id, name = %stored.name, nodes = stored.nodes.len(), "workflow created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": stored.id, "status": stored.status.as_str()})),
    ))
}

async fn read(
    extension: Option<Extension<Workflows>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let workflows = workflows(extension)?;
    let id = workflow_id(&id)?;
    let workflow = workflows
        .store
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workflow {id} not found")))?;
    Ok(Json(workflow.view()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    extension: Option<Extension<Workflows>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let workflows = workflows(extension)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be from 1 to 1000".into()));
    }
    let list = workflows.store.list_recent(limit).await?;
    let items: Vec<serde_json::Value> = list
        .iter()
        .map(|w| {
            serde_json::json!({"id": w.id, "name": w.name, "status": w.status.as_str(),
                "created_at": w.created_at, "finished_at": w.finished_at, "counts": w.state_counts()})
        })
        .collect();
    Ok(Json(serde_json::json!({"workflows": items})))
}

async fn cancel(
    State(state): State<AppState>,
    extension: Option<Extension<Workflows>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let workflows = workflows(extension)?;
    let id = workflow_id(&id)?;
    match engine::cancel(&state.ctx, &workflows, id).await {
        Ok(Some(workflow)) => Ok(Json(workflow.view())),
        Ok(None) => Err(ApiError::NotFound(format!("workflow {id} not found"))),
        Err(e @ CancelError::Final(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(CancelError::Store(e)) => Err(e.into()),
        Err(CancelError::Tasks(e)) => Err(e.into()),
    }
}
