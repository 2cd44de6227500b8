//! The coordinator's HTTP API (DESIGN.md §6): `app(state)` builds the router from one
//! `router()` per resource; handlers are thin and call `intake` or the store.

mod error;
mod status_page;
mod tasks;
mod webhooks;
mod workflows;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;

pub use error::ApiError;

use crate::scheduler::Context;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<Context>,
    /// Bearer token the task API requires, when configured.
    pub api_token: Option<Arc<str>>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// GitHub webhook settings; `None`: `POST /webhooks/github` answers 404.
    pub webhook: Option<Arc<crate::github::WebhookConfig>>,
}

/// The API router: task and agent routes behind the optional bearer token; health open.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .merge(tasks::router())
        .merge(workflows::router())
        .route("/agents", get(agents))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(protected)
        // The status page checks the token itself (bearer or HTTP Basic password).
        .merge(status_page::router(&state))
        // Authenticated by its HMAC signature, not the bearer token.
        .merge(webhooks::router())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // A known path with the wrong method: the same JSON error shape (axum adds `Allow`).
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
        .with_state(state)
}

/// The bearer token, or — on reads only — the token as the HTTP Basic password, which the
/// browser sends on its own for the status page's links (`/tasks/<id>`, `/workflows/<id>`)
/// once the page asked for it. Never for writes: a browser also attaches cached Basic
/// credentials to requests other sites make it send, so a write on Basic would be cross-site
/// request forgery waiting to happen.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.api_token.as_deref() else {
        return next.run(request).await;
    };
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    match presented_token(request.headers(), read_only) {
        None => ApiError::Unauthorized.into_response(),
        Some(token) if constant_time_eq(&token, expected.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::Forbidden.into_response(),
    }
}

/// The token a request presents: `Authorization: Bearer <token>`, or with `basic` the
/// password of `Authorization: Basic` (any user name).
pub(crate) fn presented_token(headers: &HeaderMap, basic: bool) -> Option<Vec<u8>> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.as_bytes().to_vec());
    }
    let encoded = value.strip_prefix("Basic ").filter(|_| basic)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn agents(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "agents": state.ctx.agent_statuses() }))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .ctx
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    for agent_type in state.ctx.inputs.agent_types.keys() {
        state
            .ctx
            .queue
            .depth(agent_type)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}
