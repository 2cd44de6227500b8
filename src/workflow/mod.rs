//! Workflows: DAGs of tasks (DESIGN.md §6 `/workflows`), built on top of the task API so the
//! scheduler knows nothing about them.
//!
//! This module owns the workflow model and its rules:
//!
//! - [`plan`] validates a submitted workflow (unknown or duplicate ids, unknown agent types,
//!   cycles — each named) and orders its nodes topologically;
//! - [`store`] is the [`WorkflowStore`] trait (create, get, compare-and-set update, list),
//!   [`sqlite`] its embedded backend (`workflows.db` in the data dir, WAL), `dynamodb` the
//!   cluster's (items in the task table; feature `aws`), [`conformance`] the suite both pass;
//! - [`engine`] is the loop that submits ready nodes through [`crate::intake::submit`] with the
//!   idempotency key `wf:<workflow id>:<node id>`, mirrors task states onto nodes, skips the
//!   descendants of failures and settles the workflow's status.
//!
//! # Semantics
//!
//! A node is `pending` until all its dependencies are *satisfied*: a dependency is satisfied
//! when it `succeeded`, or when it ended `failed`, `timed_out` or `cancelled` and has
//! `on_failure = "continue"` (the setting belongs to the dependency and covers every edge out of
//! it). A dependency that ended unsuccessfully without `continue`, or that was itself `skipped`,
//! makes the node `skipped` (no task is ever created for it), and so on down the graph.
//!
//! A workflow stays `running` while any node is not final. Once every node is final it becomes
//! `failed` if some node ended `failed`/`timed_out`/`cancelled` without `on_failure = "continue"`
//! (a skipped node always has such an ancestor), and `succeeded` otherwise — that is, every node
//! succeeded or failed with `continue`. `POST /workflows/{id}/cancel` makes it `cancelled` at
//! once: pending nodes become `cancelled` and active tasks are cancelled through
//! [`crate::intake::cancel`]; the engine keeps mirroring node states until they are final.
//! `succeeded`, `failed` and `cancelled` are final.

pub mod conformance;
#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod engine;
pub mod sqlite;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::Inputs;
use crate::task::{Millis, Status, TaskId};

pub use store::{WorkflowStore, WorkflowStoreError};

/// Workflow id: a UUIDv7, so ids sort by creation.
pub type WorkflowId = String;

/// Most nodes one workflow may have.
pub const MAX_NODES: usize = 1000;
/// Longest node id (keeps `wf:<uuid>:<node id>` within intake's 256-character key limit).
pub const MAX_NODE_ID: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Succeeded => "succeeded",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<WorkflowStatus> {
        [
            WorkflowStatus::Running,
            WorkflowStatus::Succeeded,
            WorkflowStatus::Failed,
            WorkflowStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What to do with a node's dependents when the node ends without success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Dependents are skipped (the default).
    #[default]
    Skip,
    /// Dependents run anyway, and the failure does not fail the workflow.
    Continue,
}

/// A node's state: `pending` (waiting for dependencies), `submitting` (its task is being
/// created), then its task's status, or `skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Pending,
    Submitting,
    Queued,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Skipped,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Submitting => "submitting",
            NodeState::Queued => "queued",
            NodeState::Dispatched => "dispatched",
            NodeState::Running => "running",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::TimedOut => "timed_out",
            NodeState::Cancelled => "cancelled",
            NodeState::Skipped => "skipped",
        }
    }

    pub fn from_task(status: Status) -> NodeState {
        match status {
            Status::Queued => NodeState::Queued,
            Status::Dispatched => NodeState::Dispatched,
            Status::Running => NodeState::Running,
            Status::Succeeded => NodeState::Succeeded,
            Status::Failed => NodeState::Failed,
            Status::Cancelled => NodeState::Cancelled,
            Status::TimedOut => NodeState::TimedOut,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            NodeState::Succeeded
                | NodeState::Failed
                | NodeState::TimedOut
                | NodeState::Cancelled
                | NodeState::Skipped
        )
    }

    /// Ended without success (and not skipped).
    pub fn is_unsuccessful(self) -> bool {
        matches!(
            self,
            NodeState::Failed | NodeState::TimedOut | NodeState::Cancelled
        )
    }
}

/// One node of a workflow: a task to be, its dependencies and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub agent_type: String,
    pub payload: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
    pub state: NodeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// Why the node was skipped or could not be submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stored workflow. `nodes` are in topological order (dependencies first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: WorkflowId,
    pub name: String,
    pub status: WorkflowStatus,
    pub nodes: Vec<Node>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// Bumped by every write: the compare-and-set key.
    pub version: u64,
}

impl Workflow {
    /// Still needs the engine: running, or cancelled with nodes not final yet.
    pub fn is_open(&self) -> bool {
        self.status == WorkflowStatus::Running || self.nodes.iter().any(|n| !n.state.is_final())
    }

    /// The idempotency key of a node's task.
    pub fn task_key(&self, node_id: &str) -> String {
        format!("wf:{}:{node_id}", self.id)
    }

    /// Depth of each node (0 for roots), in node order.
    pub fn depths(&self) -> Vec<usize> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut depths = vec![0usize; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            depths[i] = node
                .depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()))
                .map(|&j| depths[j] + 1)
                .max()
                .unwrap_or(0);
        }
        depths
    }

    /// Number of nodes per state name.
    pub fn state_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for node in &self.nodes {
            *counts.entry(node.state.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// The JSON `GET /workflows/{id}` answers.
    pub fn view(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::json!({
                    "id": n.id,
                    "agent_type": n.agent_type,
                    "state": n.state.as_str(),
                    "task_id": n.task_id,
                    "depends_on": n.depends_on,
                    "on_failure": n.on_failure,
                });
                if let (Some(reason), Some(map)) = (&n.reason, v.as_object_mut()) {
                    map.insert("reason".into(), reason.clone().into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "status": self.status.as_str(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "counts": self.state_counts(),
            "tasks": nodes,
        })
    }
}

/// The settled status of a workflow whose nodes are all final (see the module docs).
pub fn settled_status(nodes: &[Node]) -> WorkflowStatus {
    let blocking_failure = nodes.iter().any(|n| {
        n.state == NodeState::Skipped
            || (n.state.is_unsuccessful() && n.on_failure != OnFailure::Continue)
    });
    if blocking_failure {
        WorkflowStatus::Failed
    } else {
        WorkflowStatus::Succeeded
    }
}

/// A workflow as `POST /workflows` receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    pub name: String,
    pub tasks: Vec<NodeRequest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    pub id: String,
    pub agent_type: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
    pub priority: Option<i64>,
    pub timeout_seconds: Option<u64>,
}

/// Why a workflow was refused; every problem found is listed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid workflow: {}", .problems.join("; "))]
pub struct PlanError {
    pub problems: Vec<String>,
}

/// Validates `request` against the agent types of `inputs` and builds the workflow to store
/// (nodes in topological order, all `pending`).
pub fn plan(request: WorkflowRequest, inputs: &Inputs, now: Millis) -> Result<Workflow, PlanError> {
    let mut problems = Vec::new();
    let name = request.name.trim().to_string();
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        problems.push("name must be 1 to 256 printable characters".to_string());
    }
    if request.tasks.is_empty() {
        problems.push("a workflow needs at least one task".to_string());
    }
    if request.tasks.len() > MAX_NODES {
        problems.push(format!(
            "a workflow has at most {MAX_NODES} tasks, this one has {}",
            request.tasks.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    for node in &request.tasks {
        if node.id.is_empty()
            || node.id.len() > MAX_NODE_ID
            || node.id.chars().any(char::is_control)
        {
            problems.push(format!(
                "task id `{}` must be 1 to {MAX_NODE_ID} printable characters",
                node.id.escape_debug()
            ));
        }
        if !seen.insert(node.id.as_str()) && !duplicates.contains(&node.id) {
            duplicates.push(node.id.clone());
        }
    }
    for id in &duplicates {
        problems.push(format!("duplicate task id `{id}`"));
    }
    for node in &request.tasks {
        if !inputs.agent_types.contains_key(&node.agent_type) {
            problems.push(format!(
                "task `{}`: unknown agent type `{}`",
                node.id, node.agent_type
            ));
        }
        for dep in &node.depends_on {
            if !seen.contains(dep.as_str()) {
                problems.push(format!(
                    "task `{}` depends on unknown task `{dep}`",
                    node.id
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(PlanError { problems });
    }
    let order = topological_order(&request.tasks).map_err(|cycle| PlanError {
        problems: vec![format!("dependency cycle: {}", cycle.join(" → "))],
    })?;
    let mut tasks: Vec<Option<NodeRequest>> = request.tasks.into_iter().map(Some).collect();
    let nodes = order
        .into_iter()
        .filter_map(|i| tasks.get_mut(i).and_then(Option::take))
        .map(|t| {
            let mut depends_on = Vec::new();
            for dep in t.depends_on {
                if !depends_on.contains(&dep) {
                    depends_on.push(dep);
                }
            }
            Node {
                id: t.id,
                agent_type: t.agent_type,
                payload: t.payload,
                priority: t.priority,
                timeout_seconds: t.timeout_seconds,
                depends_on,
                on_failure: t.on_failure,
                state: NodeState::Pending,
                task_id: None,
                reason: None,
            }
        })
        .collect();
    Ok(Workflow {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        status: WorkflowStatus::Running,
        nodes,
        created_at: now,
        updated_at: now,
        finished_at: None,
        version: 1,
    })
}

/// Kahn's algorithm, stable in input order. On a cycle, returns its nodes in order with the
/// first repeated at the end (`a → b → a`).
fn topological_order(tasks: &[NodeRequest]) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = tasks
        .iter()
        .map(|t| {
            let mut d: Vec<usize> = t
                .depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        })
        .collect();
    let mut missing: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..tasks.len()).filter(|&i| missing[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &j in &dependents[i] {
            missing[j] -= 1;
            if missing[j] == 0 {
                ready.insert(j);
            }
        }
    }
    if order.len() == tasks.len() {
        return Ok(order);
    }
    // Every node left has an unfinished dependency that is also left: walk those edges from
    // the first one until a node repeats.
    let left: Vec<bool> = missing.iter().map(|&m| m > 0).collect();
    let Some(start) = (0..tasks.len()).find(|&i| left[i]) else {
        return Err(Vec::new());
    };
    let mut path = vec![start];
    let mut position: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut current = start;
    loop {
        let Some(&next) = deps[current].iter().find(|&&d| left[d]) else {
            return Err(path.iter().map(|&i| tasks[i].id.clone()).collect());
        };
        if let Some(&at) = position.get(&next) {
            // path[at..] is the cycle walked along "depends on" edges; report it in execution
            // order (dependency first), starting from the node given first.
            let mut cycle: Vec<usize> = path[at..].iter().rev().copied().collect();
            if let Some(first) = (0..cycle.len()).min_by_key(|&k| cycle[k]) {
                cycle.rotate_left(first);
            }
            if let Some(&first) = cycle.first() {
                cycle.push(first);
            }
            return Err(cycle.iter().map(|&i| tasks[i].id.clone()).collect());
        }
        position.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

/// What the HTTP handlers and the engine share: the store and the engine's wake-up call.
#[derive(Clone)]
pub struct Workflows {
    pub store: Arc<dyn WorkflowStore>,
    pub wake: Arc<Notify>,
}

impl Workflows {
    pub fn new(store: Arc<dyn WorkflowStore>) -> Workflows {
        Workflows {
            store,
            wake: Arc::new(Notify::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs::embedded_default()
    }

    fn node(id: &str, deps: &[&str]) -> NodeRequest {
        NodeRequest {
            id: id.into(),
            agent_type: "echo".into(),
            payload: serde_json::Value::Null,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            on_failure: OnFailure::Skip,
            priority: None,
            timeout_seconds: None,
        }
    }

    fn request(tasks: Vec<NodeRequest>) -> WorkflowRequest {
        WorkflowRequest {
            name: "w".into(),
            tasks,
        }
    }

    #[test]
    fn a_diamond_is_ordered_dependencies_first() {
        let wf = plan(
            request(vec![
                node("d", &["b", "c"]),
                node("b", &["a"]),
                node("c", &["a"]),
                node("a", &[]),
            ]),
            &inputs(),
            0,
        )
        .unwrap();
        let ids: Vec<&str> = wf.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(wf.depths(), [0, 1, 1, 2]);
        assert!(wf.nodes.iter().all(|n| n.state == NodeState::Pending));
    }

    #[test]
    fn cycles_are_named_in_order() {
        let err = plan(
            request(vec![
                node("root", &[]),
                node("a", &["c", "root"]),
                node("b", &["a"]),
                node("c", &["b"]),
            ]),
            &inputs(),
            0,
        )
        .unwrap_err();
        assert_eq!(err.problems, ["dependency cycle: a → b → c → a"]);
        let err = plan(request(vec![node("x", &["x"])]), &inputs(), 0).unwrap_err();
        assert_eq!(err.problems, ["dependency cycle: x → x"]);
    }

    #[test]
    fn unknown_and_duplicate_ids_and_types_are_all_named() {
        let mut bad = node("b", &["nope"]);
        bad.agent_type = "ghost".into();
        let err = plan(
            request(vec![node("a", &[]), node("a", &[]), bad]),
            &inputs(),
            0,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("duplicate task id `a`"), "{text}");
        assert!(text.contains("unknown agent type `ghost`"), "{text}");
        assert!(text.contains("unknown task `nope`"), "{text}");
    }

    #[test]
    fn settled_status_follows_continue_rules() {
        let mut wf = plan(
            request(vec![node("a", &[]), node("b", &["a"])]),
            &inputs(),
            0,
        )
        .unwrap();
        wf.nodes[0].state = NodeState::Succeeded;
        wf.nodes[1].state = NodeState::Succeeded;
        assert_eq!(settled_status(&wf.nodes), WorkflowStatus::Succeeded);
        wf.nodes[0].state = NodeState::Failed;
        wf.nodes[1].state = NodeState::Skipped;
        assert_eq!(settled_status(&wf.nodes), WorkflowStatus::Failed);
        wf.nodes[0].on_failure = OnFailure::Continue;
        wf.nodes[1].state = NodeState::Succeeded;
        assert_eq!(settled_status(&wf.nodes), WorkflowStatus::Succeeded);
    }
}
