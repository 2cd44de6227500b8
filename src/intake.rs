//! Task intake: the one place tasks are created and cancelled, for the REST API and (later)
//! GitHub webhooks. Writes the store first, then the queue: a crash in between leaves a queued
//! task without a message, which the scheduler's sweep re-sends; never a message without a task.

use std::time::Duration;

use crate::scheduler::Context;
use crate::store::{Created, StoreError};
use crate::task::{now_ms, NewTask, Status, Task, PRIORITY_RANGE};

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("unknown agent type `{0}`")]
    UnknownAgentType(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the `{agent_type}` queue is full ({limit} tasks waiting); try again later")]
    QueueFull { agent_type: String, limit: u64 },
    #[error("task {0} not found")]
    NotFound(String),
    #[error("task {id} is already {status} and cannot be cancelled")]
    InvalidTransition { id: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// A submit as the API receives it, before defaults.
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    pub agent_type: String,
    pub payload: serde_json::Value,
    pub priority: Option<i64>,
    pub timeout_seconds: Option<u64>,
    pub idempotency_key: Option<String>,
}

/// Longest run-time limit a submit may ask for.
const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// Creates a task (or returns the one its idempotency key created) and enqueues it.
/// Returns the task and whether it is new.
pub async fn submit(ctx: &Context, request: SubmitRequest) -> Result<(Task, bool), IntakeError> {
    let agent = ctx
        .inputs
        .agent_types
        .get(&request.agent_type)
        .ok_or_else(|| IntakeError::UnknownAgentType(request.agent_type.clone()))?;
    let priority = request.priority.unwrap_or(0);
    if !PRIORITY_RANGE.contains(&priority) {
        return Err(IntakeError::Invalid(format!(
            "priority {priority} is outside {}..={}",
            PRIORITY_RANGE.start(),
            PRIORITY_RANGE.end()
        )));
    }
    let timeout = match request.timeout_seconds {
        Some(0) => {
            return Err(IntakeError::Invalid(
                "timeout_seconds must be at least 1".into(),
            ))
        }
        Some(s) if s > MAX_TIMEOUT_SECONDS => {
            return Err(IntakeError::Invalid(format!(
                "timeout_seconds must be at most {MAX_TIMEOUT_SECONDS}"
            )))
        }
        Some(s) => Duration::from_secs(s),
        None => agent.effective_timeout(ctx.inputs.agent_timeout),
    };
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(IntakeError::Invalid(
                "idempotency_key must be 1 to 256 characters".into(),
            ));
        }
    }
    // A soft cap: the depth the agent's loop last published plus what was accepted since, so
    // the check costs no queue call (a COUNT per submit is O(backlog) on SQLite).
    let limit = ctx.inputs.task_queue_size;
    if ctx.queued_estimate(&agent.name) >= limit {
        return Err(IntakeError::QueueFull {
            agent_type: agent.name.clone(),
            limit,
        });
    }
    let spec = NewTask {
        agent_type: agent.name.clone(),
        payload: request.payload,
        priority,
        timeout,
        max_attempts: ctx.inputs.max_attempts_for(agent),
        idempotency_key: request.idempotency_key,
    };
    let mut task = Task::new(spec, now_ms());
    task.fence = ctx.fence();
    match ctx.store.create(&task).await? {
        Created::Existing(existing) => Ok((existing, false)),
        Created::New(created) => {
            ctx.count_accepted(&created.agent_type);
            if !ctx.store.enqueues_on_create() {
                ctx.queue
                    .send(
                        &created.agent_type,
                        &created.id,
                        created.priority,
                        Duration::ZERO,
                    )
                    .await?;
            }
            ctx.wake(&created.agent_type);
            Ok((created, true))
        }
    }
}

/// Cancels a task wherever it is: a queued one at once; an active one by asking its loop to
/// stop the attempt. Cancelling a cancelled task is a no-op; any other terminal task is a 409.
pub async fn cancel(ctx: &Context, id: &str) -> Result<Task, IntakeError> {
    for _ in 0..8 {
        let task = ctx
            .store
            .get(id)
            .await?
            .ok_or_else(|| IntakeError::NotFound(id.to_string()))?;
        let mut next = task.clone();
        match task.status {
            Status::Cancelled => return Ok(task),
            s if s.is_terminal() => {
                return Err(IntakeError::InvalidTransition {
                    id: id.to_string(),
                    status: s.as_str(),
                })
            }
            Status::Queued => {
                next.status = Status::Cancelled;
                next.finished_at = Some(now_ms());
                next.error = Some("cancelled".into());
            }
            _ if task.cancel_requested => return Ok(task),
            _ => next.cancel_requested = true,
        }
        next.updated_at = now_ms();
        // A cancel is the user's, not the scheduler's: any coordinator takes it, a standby
        // (fence 0) included, so it carries the task's fence rather than losing to it. The
        // compare-and-set on the version still orders it against the leader's writes.
        next.fence = ctx.fence().max(task.fence);
        match ctx.store.update(&next, task.version).await {
            Ok(stored) => {
                if stored.status == Status::Cancelled {
                    crate::metrics::task_finished(&stored.agent_type, Status::Cancelled.as_str());
                }
                // The loop holds its own copy of an active task: have it read this one again.
                ctx.reread(&stored.agent_type, &stored.id);
                return Ok(stored);
            }
            // The scheduler moved it meanwhile: read again and decide again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(IntakeError::Store(StoreError::Conflict {
        id: id.to_string(),
    }))
}
