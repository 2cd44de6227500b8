//! Tasks and their state machine (DESIGN.md §6). Pure: no I/O.
//!
//! `queued → dispatched → running → succeeded | failed | cancelled | timed_out`; a failed
//! attempt goes back to `queued` (with a backoff) until `max_attempts`. Every change is a
//! compare-and-set on [`Task::version`] in the store, so two coordinators never both move a task.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Priorities a task may have (higher runs first); intake refuses others, and SQS priority
/// tiers (`priority_queues`) are bounded by the same range.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

/// Task id: a UUIDv7 (time-ordered), so ids sort by creation and page cheaply.
pub type TaskId = String;

/// A task id as the coordinator makes them (UUIDs) or tests do: short, printable, no spaces.
/// What arrives from a queue is checked against it before the store is asked.
pub fn is_task_id_shaped(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

pub fn new_task_id() -> TaskId {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch: the one clock unit every backend stores.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Dispatched,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Dispatched => "dispatched",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Cancelled | Status::TimedOut
        )
    }

    /// Dispatched or running: holds one of the agent type's `max_instances` slots.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Dispatched | Status::Running)
    }

    /// The legal moves of the state machine.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        match (self, next) {
            (Queued, Dispatched | Cancelled) => true,
            // Dispatched → queued: the attempt never started (placement failed, lost before start).
            (Dispatched, Running | Queued | Succeeded | Failed | Cancelled | TimedOut) => true,
            (Running, Queued | Succeeded | Failed | Cancelled | TimedOut) => true,
            _ => false,
        }
    }
}

/// One attempt's record, kept on the task so retries and backoff are visible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub dispatched_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, `lost` (infrastructure), or absent while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub agent_type: String,
    pub payload: serde_json::Value,
    /// Higher runs first.
    pub priority: i64,
    pub status: Status,
    /// Number of the current (or last) attempt; 0 before the first dispatch.
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Earliest time of the next dispatch (retry backoff).
    pub not_before: Millis,
    /// When the current attempt must be over (set at dispatch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// The executor's name for the current attempt (Nomad dispatched job id, local run dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor_handle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A cancel was asked while the task was active; the scheduler stops it.
    #[serde(default)]
    pub cancel_requested: bool,
    pub attempts: Vec<AttemptRecord>,
    /// Bumped by every write: the compare-and-set key.
    pub version: u64,
    /// Fencing token of the last writer (Consul lock index; 0 for a single instance).
    pub fence: u64,
}

/// What a submit asks for; the rest of a [`Task`] is decided by the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub agent_type: String,
    pub payload: serde_json::Value,
    pub priority: i64,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
}

impl Task {
    pub fn new(spec: NewTask, now: Millis) -> Task {
        Task {
            id: new_task_id(),
            agent_type: spec.agent_type,
            payload: spec.payload,
            priority: spec.priority,
            status: Status::Queued,
            attempt: 0,
            max_attempts: spec.max_attempts,
            timeout_ms: spec.timeout.as_millis() as u64,
            idempotency_key: spec.idempotency_key,
            created_at: now,
            updated_at: now,
            not_before: now,
            deadline_at: None,
            finished_at: None,
            executor_handle: None,
            result: None,
            error: None,
            cancel_requested: false,
            attempts: Vec::new(),
            version: 1,
            fence: 0,
        }
    }

    /// The task's JSON as an agent sees it in `AO_TASK_FILE` (no coordinator internals).
    pub fn agent_view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "agent_type": self.agent_type,
            "payload": self.payload,
            "priority": self.priority,
            "attempt": self.attempt,
        })
    }

    pub fn current_attempt_mut(&mut self) -> Option<&mut AttemptRecord> {
        let attempt = self.attempt;
        self.attempts
            .iter_mut()
            .rev()
            .find(|a| a.attempt == attempt)
    }
}

/// Retry delay before attempt `next_attempt` (2, 3, …): exponential from `base`, capped, with
/// ±25 % jitter so retries of a burst do not arrive together. `unit` ∈ [0, 1) drives the jitter.
pub fn backoff(base: Duration, cap: Duration, next_attempt: u32, unit: f64) -> Duration {
    let exp = next_attempt.saturating_sub(2).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let jitter = 0.75 + 0.5 * unit.clamp(0.0, 1.0);
    raw.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_never_move() {
        for from in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in Status::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn the_happy_path_and_retries_are_legal() {
        use Status::*;
        for (a, b) in [
            (Queued, Dispatched),
            (Dispatched, Running),
            (Running, Succeeded),
            (Running, Queued),
            (Queued, Cancelled),
        ] {
            assert!(a.can_become(b), "{a:?} -> {b:?}");
        }
        assert!(!Queued.can_become(Running));
        assert!(!Queued.can_become(Succeeded));
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(backoff(base, cap, 2, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(base, cap, 3, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(base, cap, 40, 0.5), cap);
        assert!(backoff(base, cap, 3, 0.0) < backoff(base, cap, 3, 0.99));
    }
}
