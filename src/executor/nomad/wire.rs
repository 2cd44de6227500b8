//! Nomad's HTTP API shapes, as far as the coordinator reads or writes them. Field names follow
//! the API docs' samples (`fixtures/nomad-api`); unknown fields are ignored on the way in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/job/:id/dispatch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DispatchRequest {
    /// Base64 of the payload bytes (Nomad's limit: 16 KiB decoded).
    pub payload: String,
    pub meta: BTreeMap<String, String>,
    /// Nomad ≥ 1.6: the dispatched job id becomes `<parent>/dispatch-<prefix>-<time>-<rand>`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id_prefix_template: Option<String>,
}

/// Answer of `POST /v1/job/:id/dispatch`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DispatchResponse {
    #[serde(rename = "DispatchedJobID")]
    pub dispatched_job_id: String,
    #[serde(rename = "EvalID", default)]
    pub eval_id: String,
    #[serde(default)]
    pub index: u64,
}

/// Answer of `POST /v1/job/:id/plan` (only what decides whether to register).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlanResponse {
    #[serde(default)]
    pub diff: Option<JobDiff>,
    #[serde(default)]
    pub warnings: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobDiff {
    /// `None` when the submitted job equals the registered one; `Added`, `Edited`, … otherwise.
    #[serde(rename = "Type", default)]
    pub kind: String,
}

/// Answer of `POST /v1/jobs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterResponse {
    #[serde(default)]
    pub job_modify_index: u64,
    #[serde(default)]
    pub warnings: String,
}

/// `GET /v1/job/:id/summary`: a parameterized job's children by state.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobSummary {
    #[serde(default)]
    pub children: Option<ChildrenSummary>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChildrenSummary {
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub dead: u64,
}

/// `GET /v1/job/:id` (the fields the coordinator needs).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Job {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
}

/// `GET /v1/jobs?prefix=` entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ParentID", default)]
    pub parent_id: String,
    #[serde(default)]
    pub status: String,
}

/// One allocation as listed by `GET /v1/job/:id/allocations` and `GET /v1/allocations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocationStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(default)]
    pub client_status: String,
    #[serde(default)]
    pub desired_status: String,
    #[serde(default)]
    pub client_description: String,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub task_states: Option<BTreeMap<String, TaskState>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub events: Option<Vec<TaskEvent>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEvent {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub exit_code: i64,
    #[serde(default)]
    pub details: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub display_message: String,
    #[serde(default)]
    pub driver_error: String,
}

/// `DELETE /v1/job/:id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StopResponse {
    #[serde(rename = "EvalID", default)]
    pub eval_id: String,
}

/// Nomad's largest dispatch payload (`DispatchPayloadSizeLimit`), decoded bytes.
pub const DISPATCH_PAYLOAD_LIMIT: usize = 16 * 1024;

/// Nomad's `/dispatch-` infix of dispatched child job ids.
pub const DISPATCH_SUFFIX: &str = "/dispatch-";

/// The task id named by a child job id built with `IdPrefixTemplate` = task id:
/// `<parent>/dispatch-<task id>-<unix time>-<8 hex>`.
pub fn task_id_of_child(parent: &str, child: &str) -> Option<String> {
    let rest = child.strip_prefix(parent)?.strip_prefix(DISPATCH_SUFFIX)?;
    // Strip `-<unix>-<rand>` from the end.
    let (head, _rand) = rest.rsplit_once('-')?;
    let (task_id, time) = head.rsplit_once('-')?;
    if task_id.is_empty() || time.is_empty() || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(task_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_name_their_task() {
        let parent = "dev-coder-agent";
        let task = "0193a3f2-7c1e-7d2a-9b1c-0123456789ab";
        let child = format!("{parent}/dispatch-{task}-1485408778-81644024");
        assert_eq!(task_id_of_child(parent, &child).as_deref(), Some(task));
        assert_eq!(
            task_id_of_child(parent, "dev-coder-agent/dispatch-1485408778-81644024"),
            None
        );
        assert_eq!(task_id_of_child("other", &child), None);
    }
}
