//! The progress reporter: follows the tasks the GitHub side created (polling the store) and
//! mirrors each one on its issue: one status comment per (issue, agent type, task) carrying a
//! hidden marker, created once and edited in place, plus the `agent:running` / `agent:done` /
//! `agent:failed` labels. Its record (comment ids, last status reported) lives in
//! [`super::state::StateDb`], so a restart continues where it stopped. When a sub-issue's task finishes, it
//! enqueues a low-priority "resume parent" task on the parent issue.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::state::Tracked;
use super::tracker::IssueTracker;
use super::WebhookConfig as Github;
use crate::intake::{self, SubmitRequest};
use crate::scheduler::Context;
use crate::task::{Status, Task};

pub const LABEL_RUNNING: &str = "agent:running";
pub const LABEL_DONE: &str = "agent:done";
pub const LABEL_FAILED: &str = "agent:failed";

/// The hidden marker that names a status comment's (agent type, task).
pub fn marker(agent_type: &str, task_id: &str) -> String {
    format!("<!-- agent-orchestrator:{agent_type}:{task_id} -->")
}

/// The status comment's text for a task in its current state.
pub fn comment_body(task: &Task) -> String {
    let mut out = marker(&task.agent_type, &task.id);
    out.push_str(&format!(
        "\n**agent-orchestrator** · agent `{}` · task `{}`\n\n",
        task.agent_type, task.id
    ));
    let state = match task.status {
        Status::Queued => "⏳ queued".to_string(),
        Status::Dispatched | Status::Running => format!("🏃 running (attempt {})", task.attempt),
        Status::Succeeded => "✅ succeeded".to_string(),
        Status::Failed => "❌ failed".to_string(),
        Status::TimedOut => "⌛ timed out".to_string(),
        Status::Cancelled => "🚫 cancelled".to_string(),
    };
    out.push_str(&format!("Status: **{state}**\n"));
    if let Some(error) = &task.error {
        out.push_str(&format!("\nReason: {}\n", clip(error, 1000)));
    }
    if let Some(result) = &task.result {
        let text = serde_json::to_string_pretty(result).unwrap_or_default();
        out.push_str(&format!("\nResult:\n```json\n{}\n```\n", clip(&text, 4000)));
    }
    out
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.replace("```", "'''");
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", text[..cut].replace("```", "'''"))
}

/// What the reporter last wrote for a status: comments are only edited on a change.
fn phase(status: Status) -> &'static str {
    match status {
        Status::Dispatched | Status::Running => "running",
        other => other.as_str(),
    }
}

/// Runs until `shutdown`, one pass every `interval`.
pub async fn run(
    ctx: Arc<Context>,
    github: Arc<Github>,
    tracker: Option<Arc<dyn IssueTracker>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = pass(&ctx, &github, tracker.as_deref()).await {
            warn!(error = %e, "progress reporter pass failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One pass over every task still followed.
pub async fn pass(
    ctx: &Context,
    github: &Github,
    tracker: Option<&dyn IssueTracker>,
) -> Result<(), String> {
    let open = github.state.open_tasks().await.map_err(|e| e.to_string())?;
    for row in open {
        let task = match ctx.store.get(&row.task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => {
                let _ = github
                    .state
                    .set_reported(&row.task_id, "missing", true)
                    .await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let result = match tracker {
            Some(tracker) => report(ctx, github, tracker, &row, &task).await,
            None if task.status.is_terminal() => github
                .state
                .set_reported(&task.id, task.status.as_str(), true)
                .await
                .map_err(|e| e.to_string()),
            None => Ok(()),
        };
        if let Err(e) = result {
            warn!(task_id = %task.id, agent_type = %task.agent_type, error = %e, "cannot report progress on GitHub");
            continue;
        }
        if task.status.is_terminal() {
            if let Err(e) = start_deferred(ctx, github, &row).await {
                warn!(task_id = %task.id, agent_type = %task.agent_type, error = %e, "cannot start the trigger waiting behind the task");
            }
        }
    }
    Ok(())
}

async fn report(
    ctx: &Context,
    github: &Github,
    tracker: &dyn IssueTracker,
    row: &Tracked,
    task: &Task,
) -> Result<(), String> {
    let now = phase(task.status);
    if row.reported.as_deref() == Some(now) {
        return Ok(());
    }
    let body = comment_body(task);
    let repo = row.repository.as_str();
    let inst = row.installation_id;
    match row.comment_id {
        Some(id) => tracker
            .update_comment(repo, inst, id, &body)
            .await
            .map_err(|e| e.to_string())?,
        None => {
            // A comment created before a crash (or whose answer was lost) carries the marker:
            // edit it rather than post a second one.
            let marker = marker(&task.agent_type, &task.id);
            let found = tracker
                .find_comment(repo, inst, row.number, &marker)
                .await
                .map_err(|e| e.to_string())?;
            let id = match found {
                Some(id) => {
                    tracker
                        .update_comment(repo, inst, id, &body)
                        .await
                        .map_err(|e| e.to_string())?;
                    id
                }
                None => tracker
                    .create_comment(repo, inst, row.number, &body)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            github
                .state
                .set_comment(&task.id, id)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let (add, remove): (&[&str], &[&str]) = match task.status {
        Status::Queued => (&[], &[]),
        Status::Dispatched | Status::Running => (&[LABEL_RUNNING], &[LABEL_DONE, LABEL_FAILED]),
        Status::Succeeded => (&[LABEL_DONE], &[LABEL_RUNNING, LABEL_FAILED]),
        Status::Failed | Status::TimedOut => (&[LABEL_FAILED], &[LABEL_RUNNING, LABEL_DONE]),
        Status::Cancelled => (&[], &[LABEL_RUNNING]),
    };
    if !add.is_empty() || !remove.is_empty() {
        tracker
            .set_labels(repo, inst, row.number, add, remove)
            .await
            .map_err(|e| e.to_string())?;
    }
    let done = task.status.is_terminal();
    if done
        && matches!(
            task.status,
            Status::Succeeded | Status::Failed | Status::TimedOut
        )
    {
        nudge_parent(ctx, github, tracker, row, task).await?;
    }
    github
        .state
        .set_reported(&task.id, now, done)
        .await
        .map_err(|e| e.to_string())?;
    info!(task_id = %task.id, agent_type = %task.agent_type, repository = %repo, issue = row.number, status = now, "reported progress on GitHub");
    Ok(())
}

/// Starts the oldest trigger waiting behind `row`'s (issue, agent type), now that it finished.
async fn start_deferred(ctx: &Context, github: &Github, row: &Tracked) -> Result<(), String> {
    let Some(next) = github
        .state
        .next_deferred(&row.repository, row.number, &row.agent_type)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let payload = serde_json::from_str(&next.payload).map_err(|e| e.to_string())?;
    let request = SubmitRequest {
        agent_type: next.agent_type.clone(),
        payload,
        priority: Some(next.priority),
        timeout_seconds: None,
        idempotency_key: Some(next.idempotency_key.clone()),
    };
    let (task, new) = intake::submit(ctx, request)
        .await
        .map_err(|e| e.to_string())?;
    if new {
        github
            .state
            .insert(&Tracked {
                task_id: task.id.clone(),
                repository: next.repository.clone(),
                number: next.number,
                agent_type: next.agent_type.clone(),
                installation_id: next.installation_id,
                comment_id: None,
                reported: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        info!(task_id = %task.id, agent_type = %task.agent_type, repository = %next.repository, issue = next.number, "started the GitHub trigger that waited");
    }
    github
        .state
        .forget_deferred(next.id)
        .await
        .map_err(|e| e.to_string())
}

/// When `row`'s issue is a sub-issue, enqueue a low-priority task that resumes its parent.
async fn nudge_parent(
    ctx: &Context,
    github: &Github,
    tracker: &dyn IssueTracker,
    row: &Tracked,
    task: &Task,
) -> Result<(), String> {
    let Some(parent) = tracker
        .parent_issue(&row.repository, row.installation_id, row.number)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let agent_type = github
        .rules
        .resume_parent_agent
        .clone()
        .unwrap_or_else(|| task.agent_type.clone());
    let request = SubmitRequest {
        agent_type: agent_type.clone(),
        payload: json!({
            "source": "github",
            "repository": row.repository,
            "issue": parent,
            "installation_id": row.installation_id,
            "trigger": {"event": "sub_issue_finished", "sub_issue": row.number,
                         "task_id": task.id, "status": task.status.as_str()},
        }),
        priority: Some(github.rules.resume_priority),
        timeout_seconds: None,
        idempotency_key: Some(format!("gh:resume:{}#{parent}:{}", row.repository, task.id)),
    };
    let (created, new) = intake::submit(ctx, request)
        .await
        .map_err(|e| e.to_string())?;
    if new {
        github
            .state
            .insert(&Tracked {
                task_id: created.id.clone(),
                repository: row.repository.clone(),
                number: parent,
                agent_type,
                installation_id: row.installation_id,
                comment_id: None,
                reported: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        info!(task_id = %created.id, agent_type = %created.agent_type, parent, sub_issue = row.number, "nudged the parent issue");
    }
    Ok(())
}
