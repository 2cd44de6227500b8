//! `WorkflowStore`: the durable record of workflows. Every write is a compare-and-set on
//! [`Workflow::version`], so the engine and a concurrent cancel never overwrite each other.

use async_trait::async_trait;

use super::Workflow;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowStoreError {
    /// The workflow changed since it was read: re-read and decide again.
    #[error("workflow {id} was changed by someone else (compare-and-set lost)")]
    Conflict { id: String },
    #[error("workflow {id} does not exist")]
    NotFound { id: String },
    /// The backend failed; the operation may be retried.
    #[error("workflow store unavailable: {message}")]
    Unavailable { message: String },
}

/// `next` as an `update` writes it: its version one above `expected_version`.
pub fn bumped(next: &Workflow, expected_version: u64) -> Result<Workflow, WorkflowStoreError> {
    let mut written = next.clone();
    written.version =
        expected_version
            .checked_add(1)
            .ok_or_else(|| WorkflowStoreError::Unavailable {
                message: format!("version overflow on workflow {}", next.id),
            })?;
    Ok(written)
}

#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Stores a new workflow (its id must be new).
    async fn create(&self, workflow: &Workflow) -> Result<Workflow, WorkflowStoreError>;

    async fn get(&self, id: &str) -> Result<Option<Workflow>, WorkflowStoreError>;

    /// Writes `next` if the stored version is `expected_version`; the stored version becomes
    /// `expected_version + 1` (returned).
    async fn update(
        &self,
        next: &Workflow,
        expected_version: u64,
    ) -> Result<Workflow, WorkflowStoreError>;

    /// The most recent workflows, newest first, at most `limit`.
    async fn list_recent(&self, limit: usize) -> Result<Vec<Workflow>, WorkflowStoreError>;

    /// Every workflow that still needs the engine ([`Workflow::is_open`]), oldest first.
    async fn list_open(&self) -> Result<Vec<Workflow>, WorkflowStoreError>;
}
