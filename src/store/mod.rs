//! `TaskStore`: the durable record of every task, the coordinator's ledger.
//!
//! Every write is a compare-and-set on the task's `version` and refuses writers whose fencing
//! token is older than the stored one, so a deposed leader's late writes fail.

pub mod conformance;
#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod sqlite;

use async_trait::async_trait;

use crate::task::{Millis, Status, Task};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The task changed since it was read (or a newer leader wrote it): re-read and decide again.
    #[error("task {id} was changed by someone else (compare-and-set lost)")]
    Conflict { id: String },
    #[error("task {id} does not exist")]
    NotFound { id: String },
    /// The backend failed; the operation may be retried.
    #[error("task store unavailable: {message}")]
    Unavailable { message: String },
    #[error("invalid page cursor")]
    BadCursor,
}

/// Page cursors: opaque to clients, "continue after this task id" to every backend.
const CURSOR_PREFIX: &str = "t1:";

pub(crate) fn encode_cursor(last_id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{last_id}"))
}

/// The task id a cursor continues after; anything malformed is [`StoreError::BadCursor`].
pub(crate) fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
    match text.strip_prefix(CURSOR_PREFIX) {
        Some(id) if !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control) => {
            Ok(id.to_owned())
        }
        _ => Err(StoreError::BadCursor),
    }
}

/// Result of [`TaskStore::create`].
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(Task),
    /// The idempotency key was used before: the task it created.
    Existing(Task),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    pub status: Option<Status>,
    pub agent_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Newest first.
    pub tasks: Vec<Task>,
    /// Opaque; pass back to get the next page. `None` on the last page.
    pub next_cursor: Option<String>,
}

#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task. A task with the same `idempotency_key` (per agent type) already
    /// stored is returned as [`Created::Existing`] and nothing is written.
    async fn create(&self, task: &Task) -> Result<Created, StoreError>;

    /// Whether [`TaskStore::create`] also puts a new task on its agent type's queue, in the
    /// same write: true only for a store that *is* the deployment's task queue (the embedded
    /// SQLite file serving as both, see [`sqlite::SqliteBackend::enqueuing`]). Intake then skips
    /// its own `send`; otherwise it sends after the create, and a crash in between is repaired
    /// by the loop's stale-queued sweep.
    fn enqueues_on_create(&self) -> bool {
        false
    }

    async fn get(&self, id: &str) -> Result<Option<Task>, StoreError>;

    /// Writes `next` if the stored task's version is `expected_version` and its fence is not
    /// newer than `next.fence`. The stored version becomes `expected_version + 1` (returned).
    async fn update(&self, next: &Task, expected_version: u64) -> Result<Task, StoreError>;

    /// Tasks matching `filter`, newest first, at most `limit`, from `cursor` on.
    async fn list(
        &self,
        filter: &TaskFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError>;

    /// Every task of `agent_type` holding a slot (dispatched or running): the ledger.
    async fn active(&self, agent_type: &str) -> Result<Vec<Task>, StoreError>;

    /// Queued tasks of `agent_type` last written before `before` (to re-enqueue after a crash
    /// between the store write and the queue send).
    async fn stale_queued(
        &self,
        agent_type: &str,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;

    /// Number of tasks per (agent type, status).
    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, StoreError>;

    /// Cheap liveness check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = crate::task::new_task_id();
        assert_eq!(decode_cursor(&encode_cursor(&id)).unwrap(), id);
        let foreign =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, "x1:abc");
        let empty_id =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, "t1:");
        for bad in [
            "",
            "%%%",
            "not base64!",
            foreign.as_str(),
            empty_id.as_str(),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::BadCursor)),
                "{bad:?}"
            );
        }
    }
}
