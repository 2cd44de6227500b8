//! `Executor`: runs one attempt of a task somewhere (local subprocess, Nomad child job) and
//! reports how it went.
//!
//! The executor never decides a task's status; it reports [`RunState`]s and the scheduler
//! decides. Infrastructure failures ([`Outcome::Lost`]) are told apart from the agent's own
//! failures so the scheduler can retry them without spending the task's attempts.

pub mod local;
pub mod nomad;
pub mod supervisor;

use async_trait::async_trait;

use crate::config::AgentType;
use crate::task::{Millis, Task, TaskId};

/// Executors call this when something may have changed for a task (an attempt started or
/// ended), so the scheduler looks at it at once instead of waiting for its next sweep.
pub type ChangeNotifier = tokio::sync::mpsc::UnboundedSender<TaskId>;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The executor or its backend is unreachable or failing: retry later; counts towards the
    /// agent type's circuit breaker.
    #[error("executor unavailable: {message}")]
    Unavailable { message: String },
    /// This task can never be dispatched as it is (e.g. payload over Nomad's 16 KiB limit):
    /// the task fails without further attempts.
    #[error("task cannot be dispatched: {message}")]
    Rejected { message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Nothing is known of this attempt: it never started, so dispatching it again is safe.
    NotFound,
    /// Accepted, not yet running (Nomad: allocation pending).
    Pending,
    Running {
        started_at: Option<Millis>,
    },
    Finished(Outcome),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Exit 0. `result` is the JSON the agent wrote to `AO_RESULT_FILE`, if any.
    Succeeded {
        result: Option<serde_json::Value>,
        finished_at: Millis,
    },
    /// The agent failed (non-zero exit): retried per the task's policy.
    Failed { error: String, finished_at: Millis },
    /// Killed at its deadline.
    TimedOut { finished_at: Millis },
    /// Stopped on request.
    Cancelled { finished_at: Millis },
    /// Infrastructure failure (process vanished, allocation lost, OOM-killed, never placed):
    /// redispatched without spending an attempt.
    Lost { reason: String, finished_at: Millis },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancel,
    Timeout,
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Starts attempt `task.attempt` of `task` and returns its handle. Idempotent per
    /// (task id, attempt): a second call for an attempt that was already started starts
    /// nothing and returns the first call's handle.
    async fn dispatch(&self, task: &Task, agent: &AgentType) -> Result<String, ExecError>;

    /// The state of attempt `task.attempt`.
    async fn status(&self, task: &Task) -> Result<RunState, ExecError>;

    /// Stops attempt `task.attempt`. Stopping an attempt that already ended is a no-op.
    async fn stop(&self, task: &Task, reason: StopReason) -> Result<(), ExecError>;

    /// A hint that attempt `task.attempt` (not claimed yet) may be dispatched soon: the
    /// executor may get ready so that [`Executor::dispatch`] of that attempt starts it at once.
    /// Preparing never starts the attempt. Returns at once (the work runs in the background);
    /// a dispatch that comes while it runs waits for it. Does nothing by default.
    fn prepare(&self, _task: &Task, _agent: &AgentType) {}

    /// Drops what [`Executor::prepare`] made ready for `task_id` (it will not be dispatched by
    /// this coordinator now: claimed elsewhere, cancelled, handed back).
    fn discard(&self, _task_id: &str) {}
}
