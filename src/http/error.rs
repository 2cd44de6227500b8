//! The API's one error type: decides every error's status and JSON body
//! `{"error": {"code", "message"}}`. Internal errors are logged and answered generically.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::intake::IntakeError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing bearer token")]
    Unauthorized,
    #[error("invalid bearer token")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("this endpoint does not take {0} (see the `Allow` header)")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("a backend is unavailable")]
    Unavailable(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "invalid_transition"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "over_budget"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Unavailable(detail) = &self {
            tracing::error!(error = %detail, "backend unavailable");
        }
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

impl From<IntakeError> for ApiError {
    fn from(err: IntakeError) -> Self {
        match err {
            IntakeError::UnknownAgentType(_) | IntakeError::Invalid(_) => {
                ApiError::Unprocessable(err.to_string())
            }
            IntakeError::QueueFull { .. } => ApiError::TooManyRequests(err.to_string()),
            IntakeError::NotFound(_) => ApiError::NotFound(err.to_string()),
            IntakeError::InvalidTransition { .. } => ApiError::Conflict(err.to_string()),
            IntakeError::Store(e) => e.into(),
            IntakeError::Queue(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { .. } => ApiError::NotFound(err.to_string()),
            StoreError::BadCursor => ApiError::BadRequest(err.to_string()),
            StoreError::Conflict { .. } => ApiError::Conflict(err.to_string()),
            StoreError::Unavailable { .. } => ApiError::Unavailable(err.to_string()),
        }
    }
}
