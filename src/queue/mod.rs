//! `TaskQueue`: per-agent-type queues of task ids, in priority order, with visibility timeouts.
//!
//! The queue only carries *which* task to look at; the store decides whether it may run. A
//! message may be delivered more than once (SQS's at-least-once contract), so consumers
//! treat a message for a task that is no longer queued as already done.

#[cfg(feature = "aws")]
pub mod sqs;

use std::time::Duration;

use async_trait::async_trait;

use crate::task::TaskId;

pub use crate::store::sqlite::SqliteBackend;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("task queue unavailable: {message}")]
    Unavailable { message: String },
    #[error("unknown queue for agent type `{agent_type}`")]
    UnknownQueue { agent_type: String },
}

/// A received message: visible to nobody else until acked, nacked or its visibility expires.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub task_id: TaskId,
    /// Handle for ack/nack/extend of this delivery.
    pub receipt: String,
    pub priority: i64,
    /// How many times this message was received (1 on first delivery).
    pub receive_count: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Ready to be received now.
    pub visible: u64,
    /// Received and not yet acked.
    pub in_flight: u64,
    /// Waiting for a delay (retry backoff) to pass.
    pub delayed: u64,
}

#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Enqueues `task_id` on `agent_type`'s queue, visible after `delay`. Sending a task id that
    /// is already waiting may be a no-op.
    async fn send(
        &self,
        agent_type: &str,
        task_id: &str,
        priority: i64,
        delay: Duration,
    ) -> Result<(), QueueError>;

    /// Up to `max` visible messages, highest priority first (FIFO within a priority), hidden
    /// for `visibility` from other receivers.
    async fn receive(
        &self,
        agent_type: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError>;

    /// Deletes a received message.
    async fn ack(&self, agent_type: &str, receipt: &str) -> Result<(), QueueError>;

    /// Deletes several received messages (SQS: DeleteMessageBatch, 10 a call); receipts are
    /// treated as by [`TaskQueue::ack`].
    async fn ack_many(&self, agent_type: &str, receipts: &[String]) -> Result<(), QueueError> {
        let results = futures::future::join_all(receipts.iter().map(|r| self.ack(agent_type, r)));
        results.await.into_iter().collect()
    }

    /// Returns a received message to the queue, visible again after `delay`. The receipt stays
    /// valid: nacking with the visibility timeout as `delay` extends the time the message stays
    /// hidden, and a later ack still deletes it.
    async fn nack(
        &self,
        agent_type: &str,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), QueueError>;

    async fn depth(&self, agent_type: &str) -> Result<Depth, QueueError>;
}
