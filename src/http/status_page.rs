//! `GET /`: the status page (DESIGN.md §6). Server-rendered HTML with no external resources:
//! agent types (running/limit, queue depth, circuit), recent tasks, recent workflows and, with
//! `?workflow=<id>`, that workflow's graph as inline SVG with node states coloured.
//!
//! Every value that comes from tasks or workflows goes through [`escape`]. A small inline
//! script (`assets/status.js`, allowed by its hash in the Content-Security-Policy) re-fetches
//! the page every 1.5 s and swaps the content; without JavaScript a `<noscript>` meta refresh
//! reloads it every 2 s.
//!
//! # Access
//!
//! The page shows what `GET /tasks` shows, so when the API has a token the page wants it too —
//! an open page would leak what the token protects. Browsers cannot send a bearer header from
//! the address bar, so the page also takes the token as the password of HTTP Basic auth (any
//! user name) and answers 401 with `WWW-Authenticate: Basic` so the browser asks for it; the
//! API's read routes take it too, so the page's links open in the same browser.
//! Without a configured token (the embedded default on loopback) it is open, like the API.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;

use super::{constant_time_eq, presented_token, AppState};
use crate::store::TaskFilter;
use crate::task::{now_ms, Millis, Task};
use crate::workflow::{Workflow, Workflows};

const CSS: &str = include_str!("assets/status.css");
const SCRIPT: &str = include_str!("assets/status.js");

/// Tasks and workflows listed on the page.
const RECENT_TASKS: usize = 50;
const RECENT_WORKFLOWS: usize = 20;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route_layer(middleware::from_fn_with_state(state.clone(), page_auth))
}

/// Bearer token, or the token as the HTTP Basic password; 401 with a Basic challenge otherwise.
async fn page_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.api_token.as_deref() else {
        return next.run(request).await;
    };
    let given = presented_token(request.headers(), true);
    if given.is_some_and(|g| constant_time_eq(&g, expected.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "The status page needs the API token (as a bearer token, or as the password of HTTP Basic auth).\n",
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"agent-orchestrator\", charset=\"UTF-8\""),
    );
    response
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    workflow: Option<String>,
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Keeps class names to `[a-z0-9_-]` whatever the value.
fn class_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// `1.2s`, `3m04s`, `2h05m`.
pub fn format_duration(ms: Millis) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s < 3600 {
        return format!("{}m{:02}s", s / 60, s % 60);
    }
    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
}

/// From the first attempt's start (or dispatch) to the end, or to now while active.
fn task_duration(task: &Task, now: Millis) -> Option<Millis> {
    let first = task.attempts.first()?;
    let start = first.started_at.unwrap_or(first.dispatched_at);
    Some(task.finished_at.unwrap_or(now) - start)
}

fn clock(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        (day % 3600) / 60,
        day % 60
    )
}

fn script_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let digest = sha2::Sha256::digest(SCRIPT.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    })
}

async fn page(
    State(state): State<AppState>,
    workflows: Option<Extension<Workflows>>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let now = now_ms();
    let ctx = &state.ctx;
    let selected = query
        .ok()
        .and_then(|Query(q)| q.workflow)
        .filter(|s| !s.is_empty());
    let tasks = ctx
        .store
        .list(&TaskFilter::default(), RECENT_TASKS, None)
        .await;
    let (recent, graph) = match &workflows {
        None => (Ok(Vec::new()), None),
        Some(Extension(w)) => {
            let recent = w.store.list_recent(RECENT_WORKFLOWS).await;
            let graph = match &selected {
                Some(id) if uuid::Uuid::parse_str(id).is_ok() => {
                    Some(w.store.get(id).await.map_err(|e| e.to_string()))
                }
                Some(_) => Some(Ok(None)),
                None => None,
            };
            (recent, graph)
        }
    };

    let mut html = String::with_capacity(32 * 1024);
    html.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    html.push_str("<title>agent-orchestrator status</title>");
    html.push_str("<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>");
    let _ = write!(html, "<style>{CSS}</style></head><body>");
    let _ = write!(
        html,
        "<header><h1><a href=\"/\">agent-orchestrator</a></h1><span id=\"updated\">updated {}</span></header>",
        clock(now)
    );
    html.push_str("<main id=\"content\">");

    // Agent types.
    html.push_str("<section id=\"agents\"><h2>Agent types</h2><table><thead><tr><th>agent type</th><th>running / limit</th><th>queued</th><th>free slots</th><th>circuit</th></tr></thead><tbody>");
    let agents = ctx.agent_statuses();
    if agents.is_empty() {
        html.push_str("<tr><td colspan=\"5\" class=\"empty\">no agent types configured</td></tr>");
    }
    for (name, status) in &agents {
        let _ = write!(
            html,
            "<tr class=\"agent\" data-agent-type=\"{n}\"><td><code>{n}</code></td><td class=\"num\">{}/{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"circuit circuit-{}\">{}</td></tr>",
            status.running,
            status.max_instances,
            status.queued,
            status.capacity,
            class_token(status.circuit),
            escape(status.circuit),
            n = escape(name),
        );
    }
    html.push_str("</tbody></table></section>");

    // Recent tasks.
    let _ = write!(
        html,
        "<section id=\"tasks\"><h2>Recent tasks</h2><table><thead><tr><th>task</th><th>agent type</th><th>status</th><th>attempt</th><th>duration</th><th>created</th></tr></thead><tbody>"
    );
    match &tasks {
        Err(e) => {
            let _ = write!(
                html,
                "<tr><td colspan=\"6\" class=\"error\">cannot read tasks: {}</td></tr>",
                escape(&e.to_string())
            );
        }
        Ok(page) if page.tasks.is_empty() => {
            html.push_str("<tr><td colspan=\"6\" class=\"empty\">no tasks yet</td></tr>")
        }
        Ok(page) => {
            for task in &page.tasks {
                let status = task.status.as_str();
                let duration = task_duration(task, now)
                    .map(format_duration)
                    .unwrap_or_else(|| "—".into());
                let _ = write!(
                    html,
                    "<tr class=\"task status-{status}\" data-task-id=\"{id}\" data-status=\"{status}\"><td><a class=\"id\" href=\"/tasks/{id}\">{id}</a></td><td><code>{agent}</code></td><td><span class=\"badge status-{status}\">{status}</span></td><td class=\"num\">{}/{}</td><td class=\"num\">{duration}</td><td>{}</td></tr>",
                    task.attempt,
                    task.max_attempts,
                    clock(task.created_at),
                    id = escape(&task.id),
                    agent = escape(&task.agent_type),
                );
            }
        }
    }
    html.push_str("</tbody></table></section>");

    // Recent workflows.
    html.push_str("<section id=\"workflows\"><h2>Recent workflows</h2><table><thead><tr><th>workflow</th><th>name</th><th>status</th><th>nodes</th><th>created</th></tr></thead><tbody>");
    match &recent {
        Err(e) => {
            let _ = write!(
                html,
                "<tr><td colspan=\"5\" class=\"error\">cannot read workflows: {}</td></tr>",
                escape(&e.to_string())
            );
        }
        Ok(list) if list.is_empty() => {
            html.push_str("<tr><td colspan=\"5\" class=\"empty\">no workflows yet</td></tr>")
        }
        Ok(list) => {
            for w in list {
                let counts: Vec<String> = w
                    .state_counts()
                    .iter()
                    .map(|(state, n)| {
                        format!("<span class=\"badge state-{state}\">{n} {state}</span>")
                    })
                    .collect();
                let status = w.status.as_str();
                let _ = write!(
                    html,
                    "<tr class=\"workflow status-{status}\" data-workflow-id=\"{id}\"><td><a class=\"id\" href=\"/?workflow={id}\">{id}</a></td><td>{}</td><td><span class=\"badge status-{status}\">{status}</span></td><td>{}</td><td>{}</td></tr>",
                    escape(&w.name),
                    counts.join(" "),
                    clock(w.created_at),
                    id = escape(&w.id),
                );
            }
        }
    }
    html.push_str("</tbody></table></section>");

    // One workflow's graph.
    match graph {
        None => {}
        Some(Err(e)) => {
            let _ = write!(
                html,
                "<section id=\"workflow-graph\"><p class=\"error\">cannot read the workflow: {}</p></section>",
                escape(&e)
            );
        }
        Some(Ok(None)) => {
            let _ = write!(
                html,
                "<section id=\"workflow-graph\"><p class=\"error\">no workflow `{}`</p></section>",
                escape(selected.as_deref().unwrap_or(""))
            );
        }
        Some(Ok(Some(w))) => render_graph(&mut html, &w),
    }
    html.push_str("</main>");
    let _ = writeln!(html, "<script>{SCRIPT}</script></body></html>");

    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        script_hash()
    );
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

const NODE_W: usize = 190;
const NODE_H: usize = 40;
const COL_W: usize = 250;
const ROW_H: usize = 56;
const MARGIN: usize = 16;

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The workflow's DAG as inline SVG: one column per depth, edges from dependency to dependent.
fn render_graph(html: &mut String, workflow: &Workflow) {
    let depths = workflow.depths();
    let mut rows_per_depth: HashMap<usize, usize> = HashMap::new();
    let mut position = Vec::with_capacity(workflow.nodes.len());
    for &d in &depths {
        let row = rows_per_depth.entry(d).or_insert(0);
        position.push((MARGIN + d * COL_W, MARGIN + *row * ROW_H));
        *row += 1;
    }
    let columns = depths.iter().max().map_or(1, |d| d + 1);
    let rows = rows_per_depth.values().max().copied().unwrap_or(1);
    let width = 2 * MARGIN + (columns - 1) * COL_W + NODE_W;
    let height = 2 * MARGIN + (rows - 1) * ROW_H + NODE_H;
    let index: HashMap<&str, usize> = workflow
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let status = workflow.status.as_str();
    let _ = write!(
        html,
        "<section id=\"workflow-graph\" data-workflow-id=\"{id}\" data-status=\"{status}\"><h2>Workflow <code>{name}</code> <span class=\"badge status-{status}\">{status}</span> <a class=\"id\" href=\"/workflows/{id}\">JSON</a></h2><div class=\"graph\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"workflow graph\">",
        id = escape(&workflow.id),
        name = escape(&workflow.name),
    );
    for (i, node) in workflow.nodes.iter().enumerate() {
        let (x2, y2) = position[i];
        for dep in &node.depends_on {
            if let Some(&j) = index.get(dep.as_str()) {
                let (x1, y1) = position[j];
                let (sx, sy, ex, ey) = (x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2);
                let mid = (sx + ex) / 2;
                let _ = write!(
                    html,
                    "<path class=\"edge\" d=\"M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}\"/>"
                );
            }
        }
    }
    for (i, node) in workflow.nodes.iter().enumerate() {
        let (x, y) = position[i];
        let state = node.state.as_str();
        let title = match &node.reason {
            Some(reason) => format!("{} ({}): {state} — {reason}", node.id, node.agent_type),
            None => format!("{} ({}): {state}", node.id, node.agent_type),
        };
        let open = match &node.task_id {
            Some(task) => format!("<a href=\"/tasks/{}\">", escape(task)),
            None => String::new(),
        };
        let close = if node.task_id.is_some() { "</a>" } else { "" };
        let _ = write!(
            html,
            "<g class=\"node state-{state}\" data-node-id=\"{id}\" data-state=\"{state}\">{open}<title>{title}</title><rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"6\"/><text x=\"{tx}\" y=\"{ty1}\">{label}</text><text class=\"state\" x=\"{tx}\" y=\"{ty2}\">{agent} · {state}</text>{close}</g>",
            id = escape(&node.id),
            title = escape(&title),
            tx = x + 8,
            ty1 = y + 16,
            ty2 = y + 32,
            label = escape(&truncate(&node.id, 24)),
            agent = escape(&truncate(&node.agent_type, 14)),
        );
    }
    html.push_str("</svg></div></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(class_token("half open\"><x"), "half-open---x");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(1234), "1.2s");
        assert_eq!(format_duration(184_000), "3m04s");
        assert_eq!(format_duration(7_500_000), "2h05m");
        assert_eq!(format_duration(-5), "0.0s");
    }

    #[test]
    fn graph_escapes_node_data() {
        let request = crate::workflow::WorkflowRequest {
            name: "<b>n</b>".into(),
            tasks: vec![crate::workflow::NodeRequest {
                id: "<img src=x onerror=alert(1)>".into(),
                agent_type: "echo".into(),
                payload: serde_json::Value::Null,
                depends_on: vec![],
                on_failure: Default::default(),
                priority: None,
                timeout_seconds: None,
            }],
        };
        let wf =
            crate::workflow::plan(request, &crate::config::Inputs::embedded_default(), 0).unwrap();
        let mut html = String::new();
        render_graph(&mut html, &wf);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;img src=x"), "{html}");
    }
}
