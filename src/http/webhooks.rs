//! `POST /webhooks/github` (DESIGN.md §8). Not behind the API bearer token: GitHub
//! authenticates with the HMAC signature instead, checked before the body is parsed.
//! Order: content type (415) → size (413) → signature (401) → delivery id dedup → routing →
//! durable enqueue → 202.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, AppState};
use crate::github::webhook;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/github", post(receive))
}

fn count(event: &str, action: &str, result: &'static str) {
    metrics::counter!(crate::metrics::WEBHOOK_EVENTS_TOTAL,
        "event" => event.to_string(), "action" => action.to_string(), "result" => result)
    .increment(1);
}

/// A refusal before the delivery is authenticated: its headers are not trusted for labels.
fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    count("unverified", "", code);
    let body = json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

async fn receive(State(state): State<AppState>, request: Request) -> Response {
    let Some(config) = state.webhook.clone() else {
        return ApiError::NotFound("GitHub webhooks are not configured on this coordinator".into())
            .into_response();
    };
    let (parts, body) = request.into_parts();
    if !is_json(&parts.headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content type must be application/json (set the webhook's content type to JSON)".into(),
        );
    }
    let limit = config.max_body_bytes;
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(Body::new(body), limit).await {
        Ok(b) => b,
        Err(e) if e.to_string().contains("length limit") => return too_large(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot read the body: {e}"),
            )
        }
    };
    let delivery = match webhook::verify(&config.secret, &parts.headers, bytes) {
        Ok(d) => d,
        Err(rejection) if rejection.is_auth() => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                rejection.to_string(),
            )
        }
        Err(rejection) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.to_string(),
            )
        }
    };
    let event = delivery.event().chars().take(64).collect::<String>();
    if !config.first_delivery(delivery.delivery_id()) {
        count(&event, "", "duplicate");
        let reason = format!("duplicate delivery {}", delivery.delivery_id());
        return (StatusCode::ACCEPTED, Json(json!({ "ignored": reason }))).into_response();
    }
    match config.handle(&state.ctx, &delivery).await {
        Ok((action, outcome)) => {
            count(&event, &action, outcome.result_label());
            tracing::debug!(event = %event, action = %action, delivery = delivery.delivery_id(),
                result = outcome.result_label(), "webhook delivery");
            (StatusCode::ACCEPTED, Json(outcome.to_json())).into_response()
        }
        Err(e) => {
            // Not recorded as seen: GitHub's redelivery gets another chance.
            config.forget_delivery(delivery.delivery_id());
            count(&event, "", "error");
            ApiError::from(e).into_response()
        }
    }
}
