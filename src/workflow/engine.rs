//! The workflow engine: one loop that drives every open workflow to its end.
//!
//! Each pass (every [`POLL`], or at once when woken by a new workflow or a cancel) reads the
//! open workflows and, for each one:
//!
//! 1. mirrors the status of every non-final node's task onto the node;
//! 2. skips the nodes below a dependency that ended without success (and without
//!    `on_failure = "continue"`), or below a skipped one;
//! 3. marks the nodes whose dependencies are all satisfied `submitting` (a compare-and-set
//!    write), then submits each through [`intake::submit`] with the idempotency key
//!    `wf:<workflow id>:<node id>` and records the task id. A crash anywhere in between is
//!    harmless: the next pass submits again with the same key and gets the same task back, so a
//!    node never has two tasks and no task runs twice;
//! 4. settles the workflow's status once every node is final.
//!
//! Writes are compare-and-set on the workflow's version; a pass that loses to a concurrent
//! cancel simply tries again on the next pass. The scheduler knows nothing of workflows.
//!
//! Task changes are noticed by polling the task store for the open workflows' non-final tasks
//! every [`POLL`] (one indexed read per active node), which keeps the scheduler unchanged.
//! A node still `submitting` when its workflow is cancelled is submitted once more (returning
//! its task if one was created) and that task cancelled at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{
    settled_status, NodeState, OnFailure, Workflow, WorkflowStatus, WorkflowStoreError, Workflows,
};
use crate::intake::{self, IntakeError, SubmitRequest};
use crate::scheduler::Context;
use crate::task::now_ms;

/// How often open workflows are looked at without a wake-up.
pub const POLL: Duration = Duration::from_millis(150);

/// Runs until `shutdown` turns true.
pub async fn run(ctx: Arc<Context>, workflows: Workflows, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("workflow engine started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Not gated on leadership: the workflow store is this instance's own file, so no other
        // coordinator can drive these workflows; its submits go through intake (idempotent per
        // node) and the leader's scheduler runs the tasks.
        match workflows.store.list_open().await {
            Ok(open) => {
                for workflow in open {
                    let id = workflow.id.clone();
                    match advance(&ctx, &workflows, workflow).await {
                        Ok(_) => {}
                        // A cancel wrote meanwhile: the next pass reads it and decides again.
                        Err(EngineError::Store(WorkflowStoreError::Conflict { .. })) => {
                            tracing::debug!(workflow_id = %id, "workflow changed during a pass; retrying");
                        }
                        Err(e) => {
                            tracing::warn!(workflow_id = %id, error = %e, "workflow pass failed; retrying")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list open workflows; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = workflows.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!("workflow engine stopped");
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] WorkflowStoreError),
    #[error(transparent)]
    Tasks(#[from] crate::store::StoreError),
}

/// One pass over one workflow; returns it as stored afterwards.
pub async fn advance(
    ctx: &Context,
    workflows: &Workflows,
    mut workflow: Workflow,
) -> Result<Workflow, EngineError> {
    let before = workflow.clone();

    // 1. Mirror task states.
    for node in workflow.nodes.iter_mut() {
        if node.state.is_final() {
            continue;
        }
        if let Some(task_id) = &node.task_id {
            match ctx.store.get(task_id).await? {
                Some(task) => {
                    node.state = NodeState::from_task(task.status);
                    if task.status.is_terminal() {
                        node.reason = task.error.clone();
                    }
                }
                // The task store lost it (an OS crash can drop its last commits): submit again;
                // the idempotency key still guards against a second task.
                None => {
                    tracing::warn!(task_id = %task_id, node = %node.id, "workflow node's task is gone; submitting it again");
                    node.task_id = None;
                    node.state = NodeState::Submitting;
                }
            }
        }
    }
    let index: HashMap<String, usize> = workflow
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();

    let cancelled = workflow.status == WorkflowStatus::Cancelled;
    // 2. Skips (nodes are in topological order, so one pass propagates down the graph).
    for i in 0..workflow.nodes.len() {
        if workflow.nodes[i].state != NodeState::Pending {
            continue;
        }
        if cancelled {
            workflow.nodes[i].state = NodeState::Cancelled;
            workflow.nodes[i].reason = Some("workflow cancelled".into());
            continue;
        }
        let mut blocked_by = None;
        let mut waiting = false;
        for dep in &workflow.nodes[i].depends_on {
            let Some(d) = index.get(dep).map(|&j| &workflow.nodes[j]) else {
                continue;
            };
            match d.state {
                NodeState::Succeeded => {}
                s if s.is_unsuccessful() && d.on_failure == OnFailure::Continue => {}
                NodeState::Skipped => {
                    blocked_by = Some(format!("dependency `{}` was skipped", d.id));
                    break;
                }
                s if s.is_unsuccessful() => {
                    blocked_by = Some(format!("dependency `{}` {}", d.id, s.as_str()));
                    break;
                }
                _ => waiting = true,
            }
        }
        if let Some(reason) = blocked_by {
            workflow.nodes[i].state = NodeState::Skipped;
            workflow.nodes[i].reason = Some(reason);
        } else if !waiting {
            workflow.nodes[i].state = NodeState::Submitting;
        }
    }
    // 3. Record the intent to submit before submitting (so a cancel knows a task may exist),
    // then submit. Nodes left `submitting` by an earlier pass (crash, queue full) go again.
    let submitting: Vec<usize> = (0..workflow.nodes.len())
        .filter(|&i| workflow.nodes[i].state == NodeState::Submitting)
        .collect();
    if submitting.is_empty() {
        settle(&mut workflow);
        return write_if_changed(workflows, &before, workflow).await;
    }
    let stored = write_if_changed(workflows, &before, workflow).await?;
    submit_nodes(ctx, workflows, stored, submitting).await
}

/// Submits the `submitting` nodes `indexes` of `workflow` (already stored) and records their
/// tasks; settles and writes.
async fn submit_nodes(
    ctx: &Context,
    workflows: &Workflows,
    workflow: Workflow,
    indexes: Vec<usize>,
) -> Result<Workflow, EngineError> {
    let before = workflow.clone();
    let mut next = workflow;
    let cancelled = next.status == WorkflowStatus::Cancelled;
    for i in indexes {
        let key = next.task_key(&next.nodes[i].id);
        let node = &next.nodes[i];
        let request = SubmitRequest {
            agent_type: node.agent_type.clone(),
            payload: node.payload.clone(),
            priority: node.priority,
            timeout_seconds: node.timeout_seconds,
            idempotency_key: Some(key),
        };
        match intake::submit(ctx, request).await {
            Ok((task, _new)) => {
                let mut state = NodeState::from_task(task.status);
                if cancelled && !task.status.is_terminal() {
                    // Cancelled while its task was being created: stop the task too.
                    match intake::cancel(ctx, &task.id).await {
                        Ok(t) => state = NodeState::from_task(t.status),
                        Err(e) => {
                            tracing::warn!(task_id = %task.id, error = %e, "cannot cancel a cancelled workflow's task")
                        }
                    }
                }
                let node = &mut next.nodes[i];
                node.task_id = Some(task.id.clone());
                node.state = state;
                tracing::info!(workflow_id = %next.id, node = %next.nodes[i].id, task_id = %task.id, "workflow node submitted");
            }
            // The inputs changed since the workflow was accepted: this node can never run.
            Err(e @ (IntakeError::UnknownAgentType(_) | IntakeError::Invalid(_))) => {
                let node = &mut next.nodes[i];
                node.state = NodeState::Failed;
                node.reason = Some(e.to_string());
            }
            // Back-pressure: stays `submitting` and is retried next pass.
            Err(e @ IntakeError::QueueFull { .. }) => {
                tracing::debug!(workflow_id = %next.id, node = %next.nodes[i].id, error = %e, "queue full; workflow node waits");
            }
            // A backend down: stays `submitting`, retried next pass.
            Err(e) => {
                tracing::warn!(workflow_id = %next.id, node = %next.nodes[i].id, error = %e, "cannot submit workflow node yet");
            }
        }
    }
    settle(&mut next);
    write_if_changed(workflows, &before, next).await
}

/// Sets the final status once every node is final (a cancelled workflow stays cancelled).
fn settle(workflow: &mut Workflow) {
    if workflow.nodes.iter().all(|n| n.state.is_final()) {
        if workflow.status == WorkflowStatus::Running {
            workflow.status = settled_status(&workflow.nodes);
        }
        if workflow.finished_at.is_none() {
            workflow.finished_at = Some(now_ms());
        }
    }
}

async fn write_if_changed(
    workflows: &Workflows,
    before: &Workflow,
    mut next: Workflow,
) -> Result<Workflow, EngineError> {
    if &next == before {
        return Ok(next);
    }
    next.updated_at = now_ms();
    let stored = workflows.store.update(&next, before.version).await?;
    if stored.status != before.status {
        tracing::info!(workflow_id = %stored.id, status = stored.status.as_str(), "workflow status changed");
    }
    Ok(stored)
}

/// Cancels a workflow: final at once as `cancelled`, pending nodes cancelled, active tasks
/// cancelled through [`intake::cancel`]. Cancelling a cancelled workflow is a no-op; a
/// succeeded or failed one is refused with [`CancelError::Final`]. `Ok(None)`: no such workflow.
pub async fn cancel(
    ctx: &Context,
    workflows: &Workflows,
    id: &str,
) -> Result<Option<Workflow>, CancelError> {
    let mut stored = None;
    for _ in 0..16 {
        let Some(workflow) = workflows.store.get(id).await? else {
            return Ok(None);
        };
        match workflow.status {
            WorkflowStatus::Cancelled => {
                stored = Some(workflow);
                break;
            }
            WorkflowStatus::Succeeded | WorkflowStatus::Failed => {
                return Err(CancelError::Final(workflow.status))
            }
            WorkflowStatus::Running => {}
        }
        let mut next = workflow.clone();
        next.status = WorkflowStatus::Cancelled;
        for node in next.nodes.iter_mut() {
            if node.state == NodeState::Pending {
                node.state = NodeState::Cancelled;
                node.reason = Some("workflow cancelled".into());
            }
        }
        next.updated_at = now_ms();
        if next.nodes.iter().all(|n| n.state.is_final()) {
            next.finished_at = Some(next.updated_at);
        }
        match workflows.store.update(&next, workflow.version).await {
            Ok(w) => {
                stored = Some(w);
                break;
            }
            Err(WorkflowStoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let Some(workflow) = stored else {
        return Err(CancelError::Store(WorkflowStoreError::Conflict {
            id: id.into(),
        }));
    };
    for node in &workflow.nodes {
        if node.state.is_final() {
            continue;
        }
        if let Some(task_id) = &node.task_id {
            match intake::cancel(ctx, task_id).await {
                Ok(_) | Err(IntakeError::InvalidTransition { .. } | IntakeError::NotFound(_)) => {}
                Err(e) => return Err(CancelError::Tasks(e)),
            }
        }
    }
    workflows.wake.notify_one();
    Ok(Some(workflow))
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("workflow is already {} and cannot be cancelled", .0.as_str())]
    Final(WorkflowStatus),
    #[error(transparent)]
    Store(#[from] WorkflowStoreError),
    #[error(transparent)]
    Tasks(IntakeError),
}
