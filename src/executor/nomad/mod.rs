//! The Nomad executor: each attempt of a task is one child job dispatched from the agent
//! type's parameterized batch job (`<cluster>-<type>-agent`, rendered into `jobs/`).
//!
//! Only this module (with [`client`] and [`wire`]) knows Nomad's wire format.
//!
//! - On start, every agent type's jobspec (`<job_dir>/<type>-agent.nomad.hcl`) is parsed with
//!   [`crate::jobspec::parse_jobspec`], planned with `Diff: true` and registered only when the
//!   plan shows a change. When Nomad is unreachable at start, registration is retried before the
//!   type's next dispatch.
//! - [`Executor::dispatch`] posts `/v1/job/<parent>/dispatch?idempotency_token=<task id>-<attempt>`
//!   with the task's [`agent_view`](crate::task::Task::agent_view) as the payload (checked
//!   against Nomad's 16 KiB limit first), meta `task_id`/`attempt`, and `IdPrefixTemplate` = the
//!   task id, so a child job id (`<parent>/dispatch-<task id>-<time>-<rand>`) names its task.
//!   The handle is the `DispatchedJobID`. The same attempt dispatched twice (a restart between
//!   dispatch and recording the handle) carries the same token and gets the same child back.
//!   When the parent already has `max_instances` children pending (not placed), dispatching
//!   holds back with [`ExecError::Unavailable`].
//! - [`Executor::status`] reads the child's allocations: none yet → pending, `pending` →
//!   pending, `running` → running, `complete` → succeeded, `failed` with a non-zero exit code →
//!   failed, `lost`, OOM-killed or failed without an exit code (driver, image pull) → lost; a
//!   child that is gone (404) → lost; a child that is dead with no allocation → lost (its
//!   allocations are listed again after the job read: the two reads are no snapshot, and a child
//!   placed and finished in between is not unplaced); no child for the attempt → not found.
//!   Without a handle (crash before it was recorded) the child is found by its task id (the
//!   `IdPrefixTemplate`) and its `attempt` meta, never by guesswork.
//! - The result of a succeeded attempt is `None` here: in the cluster the agent's result
//!   reaches the coordinator through the result queue, not through Nomad.
//! - Timeouts are the coordinator's: [`Executor::stop`] deletes the child job
//!   (`DELETE /v1/job/<child>`) and the attempt then reads as timed out or cancelled, by the
//!   reason it was stopped for.
//! - Change notifications: a background task runs blocking queries on `/v1/allocations` and
//!   sends the task id of every child whose allocation changed to the [`ChangeNotifier`].

pub mod client;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use tracing::{debug, info, warn};

use self::client::{NomadClient, NomadClientConfig, NomadError};
use self::wire::{AllocationStub, DispatchRequest, DISPATCH_PAYLOAD_LIMIT, DISPATCH_SUFFIX};
use super::{ChangeNotifier, ExecError, Executor, Outcome, RunState, StopReason};
use crate::config::{AgentType, Inputs};
use crate::task::{now_ms, Task, TaskId};

/// Settings of the Nomad executor.
#[derive(Debug, Clone)]
pub struct NomadExecutorConfig {
    pub client: NomadClientConfig,
    /// Directory of the rendered jobs (`<type>-agent.nomad.hcl`) [default: `jobs/`].
    pub job_dir: PathBuf,
    /// How long one blocking query on allocations waits for a change.
    pub watch_wait: Duration,
    /// The result queue's URL, passed to each attempt as the dispatch meta
    /// [`RESULT_QUEUE_META`] (agents get it as `AO_RESULT_QUEUE_URL`) when its job accepts it.
    pub result_queue_url: Option<String>,
}

/// Dispatch meta carrying the result queue's URL (`meta_optional` of the rendered agent jobs).
pub const RESULT_QUEUE_META: &str = "result_queue_url";

impl NomadExecutorConfig {
    pub fn new(client: NomadClientConfig, job_dir: impl Into<PathBuf>) -> Self {
        NomadExecutorConfig {
            client,
            job_dir: job_dir.into(),
            watch_wait: Duration::from_secs(30),
            result_queue_url: None,
        }
    }
}

/// Why the Nomad executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum NomadStartError {
    #[error("agent type `{agent_type}`: cannot read its job {path}: {source}")]
    JobFile {
        agent_type: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent type `{agent_type}`: {message}")]
    Jobspec { agent_type: String, message: String },
    #[error(transparent)]
    Client(#[from] NomadError),
}

/// One agent type's parameterized parent job.
#[derive(Debug, Clone)]
struct ParentJob {
    id: String,
    /// The job in API form (the `Job` object).
    spec: serde_json::Value,
    /// The result queue URL its dispatches carry as [`RESULT_QUEUE_META`]: only when there is
    /// one and the job's `parameterized` block declares the key (Nomad refuses a dispatch with
    /// meta keys the job does not declare).
    result_queue_url: Option<String>,
}

type AttemptKey = (TaskId, u32);

struct Inner {
    client: NomadClient,
    parents: BTreeMap<String, ParentJob>,
    registered: Mutex<HashSet<String>>,
    children: Mutex<HashMap<AttemptKey, String>>,
    stops: Mutex<HashMap<AttemptKey, StopReason>>,
    notifier: ChangeNotifier,
}

pub struct NomadExecutor {
    inner: Arc<Inner>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for NomadExecutor {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl NomadExecutor {
    /// Loads every agent type's job, registers the ones Nomad does not have yet (a refusal is an
    /// error; an outage is logged and registration retried at the next dispatch) and starts
    /// watching allocations. Must run inside a Tokio runtime.
    pub async fn start(
        config: NomadExecutorConfig,
        inputs: &Inputs,
        notifier: ChangeNotifier,
    ) -> Result<NomadExecutor, NomadStartError> {
        let client = NomadClient::new(&config.client)?;
        let mut parents = BTreeMap::new();
        for agent in inputs.agent_types.values() {
            let path = config
                .job_dir
                .join(format!("{}-agent.nomad.hcl", agent.name));
            let source =
                std::fs::read_to_string(&path).map_err(|source| NomadStartError::JobFile {
                    agent_type: agent.name.clone(),
                    path: path.clone(),
                    source,
                })?;
            let parsed = crate::jobspec::parse_jobspec(&source, &path.display().to_string())
                .map_err(|e| NomadStartError::Jobspec {
                    agent_type: agent.name.clone(),
                    message: e.to_string(),
                })?;
            let spec = parsed.get("Job").cloned().unwrap_or(parsed);
            let id = spec
                .get("ID")
                .and_then(|v| v.as_str())
                .ok_or_else(|| NomadStartError::Jobspec {
                    agent_type: agent.name.clone(),
                    message: format!("{}: the job has no ID", path.display()),
                })?
                .to_string();
            let expected = format!("{}-{}-agent", inputs.cluster_name, agent.name);
            if id != expected {
                warn!(agent_type = %agent.name, job = %id, %expected, "job id does not follow <cluster>-<type>-agent");
            }
            let takes_result_queue = spec
                .pointer("/ParameterizedJob/MetaOptional")
                .and_then(|v| v.as_array())
                .is_some_and(|keys| keys.iter().any(|k| k == RESULT_QUEUE_META));
            if config.result_queue_url.is_some() && !takes_result_queue {
                warn!(agent_type = %agent.name, job = %id, "the job's parameterized block has no meta_optional \"result_queue_url\": its agents cannot report results through the result queue");
            }
            parents.insert(
                agent.name.clone(),
                ParentJob {
                    id,
                    spec,
                    result_queue_url: config
                        .result_queue_url
                        .clone()
                        .filter(|_| takes_result_queue),
                },
            );
        }
        let inner = Arc::new(Inner {
            client,
            parents,
            registered: Mutex::new(HashSet::new()),
            children: Mutex::new(HashMap::new()),
            stops: Mutex::new(HashMap::new()),
            notifier,
        });
        for agent_type in inner.parents.keys() {
            match inner.ensure_registered(agent_type).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    warn!(agent_type = %agent_type, error = %e, "nomad unreachable: the job is registered before the first dispatch")
                }
                Err(e) => return Err(e.into()),
            }
        }
        let watcher = tokio::spawn(watch_allocations(Arc::downgrade(&inner), config.watch_wait));
        Ok(NomadExecutor { inner, watcher })
    }

    /// The parent job id of `agent_type`, if it has one.
    pub fn parent_job(&self, agent_type: &str) -> Option<&str> {
        self.inner.parents.get(agent_type).map(|p| p.id.as_str())
    }
}

impl Inner {
    fn parent(&self, agent_type: &str) -> Result<&ParentJob, ExecError> {
        self.parents
            .get(agent_type)
            .ok_or_else(|| ExecError::Rejected {
                message: format!("agent type `{agent_type}` has no Nomad job"),
            })
    }

    async fn ensure_registered(&self, agent_type: &str) -> Result<(), NomadError> {
        if self
            .registered
            .lock()
            .map(|r| r.contains(agent_type))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let Some(parent) = self.parents.get(agent_type) else {
            return Ok(());
        };
        let plan = self.client.plan(&parent.id, &parent.spec).await?;
        let unchanged = plan.diff.as_ref().is_some_and(|d| d.kind == "None");
        if unchanged {
            debug!(agent_type, job = %parent.id, "job unchanged in nomad; not registering");
        } else {
            let answer = self.client.register(&parent.spec).await?;
            info!(agent_type, job = %parent.id, job_modify_index = answer.job_modify_index, "registered job in nomad");
            if !answer.warnings.is_empty() {
                warn!(agent_type, job = %parent.id, warnings = %answer.warnings, "nomad warnings on register");
            }
        }
        if let Ok(mut registered) = self.registered.lock() {
            registered.insert(agent_type.to_string());
        }
        Ok(())
    }

    fn known_child(&self, task: &Task) -> Option<String> {
        self.children
            .lock()
            .ok()
            .and_then(|c| c.get(&(task.id.clone(), task.attempt)).cloned())
    }

    fn remember_child(&self, task: &Task, child: &str) {
        if let Ok(mut children) = self.children.lock() {
            children.insert((task.id.clone(), task.attempt), child.to_string());
        }
    }

    /// The child job of the task's current attempt: the recorded handle, the one this process
    /// dispatched, or the one Nomad lists under the task id with a matching `attempt` meta.
    async fn find_child(&self, task: &Task) -> Result<Option<String>, NomadError> {
        if let Some(child) = self.known_child(task) {
            return Ok(Some(child));
        }
        if let Some(handle) = &task.executor_handle {
            return Ok(Some(handle.clone()));
        }
        let Some(parent) = self.parents.get(&task.agent_type) else {
            return Ok(None);
        };
        let prefix = format!("{}{}{}-", parent.id, DISPATCH_SUFFIX, task.id);
        for stub in self.client.jobs_with_prefix(&prefix).await? {
            let job = match self.client.job(&stub.id).await {
                Ok(job) => job,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let meta = job.meta.unwrap_or_default();
            let same_task = meta.get("task_id").map(String::as_str) == Some(task.id.as_str());
            let same_attempt =
                meta.get("attempt").map(String::as_str) == Some(&task.attempt.to_string());
            if same_task && same_attempt {
                self.remember_child(task, &job.id);
                return Ok(Some(job.id));
            }
        }
        Ok(None)
    }

    /// Drops what this process remembers of a finished attempt (asking again later falls
    /// back to the recorded handle and the task's own deadline and cancel flag).
    fn forget(&self, task: &Task) {
        let key = (task.id.clone(), task.attempt);
        if let Ok(mut children) = self.children.lock() {
            children.remove(&key);
        }
        if let Ok(mut stops) = self.stops.lock() {
            stops.remove(&key);
        }
    }

    fn stop_reason(&self, task: &Task) -> Option<StopReason> {
        self.stops
            .lock()
            .ok()
            .and_then(|s| s.get(&(task.id.clone(), task.attempt)).copied())
    }

    /// How an attempt that Nomad stopped ended, by the reason it was stopped for.
    fn stopped_outcome(&self, task: &Task, now: i64) -> Outcome {
        match self.stop_reason(task) {
            Some(StopReason::Cancel) => Outcome::Cancelled { finished_at: now },
            Some(StopReason::Timeout) => Outcome::TimedOut { finished_at: now },
            None if task.cancel_requested => Outcome::Cancelled { finished_at: now },
            None if task.deadline_at.is_some_and(|d| now >= d) => {
                Outcome::TimedOut { finished_at: now }
            }
            None => Outcome::Lost {
                reason: "the child job was stopped outside the coordinator".into(),
                finished_at: now,
            },
        }
    }
}

#[async_trait]
impl Executor for NomadExecutor {
    async fn dispatch(&self, task: &Task, agent: &AgentType) -> Result<String, ExecError> {
        let inner = &self.inner;
        if let Some(child) = inner.known_child(task) {
            return Ok(child);
        }
        let parent = inner.parent(&task.agent_type)?.clone();
        let payload = serde_json::to_vec(&task.agent_view()).map_err(|e| ExecError::Rejected {
            message: format!("cannot encode the task: {e}"),
        })?;
        if payload.len() > DISPATCH_PAYLOAD_LIMIT {
            return Err(ExecError::Rejected {
                message: format!(
                    "the task's JSON is {} bytes, over Nomad's dispatch payload limit of {} bytes (16 KiB); shrink the payload",
                    payload.len(),
                    DISPATCH_PAYLOAD_LIMIT
                ),
            });
        }
        inner
            .ensure_registered(&task.agent_type)
            .await
            .map_err(|e| unavailable_or_rejected(e, "registering the job"))?;
        let summary = inner
            .client
            .summary(&parent.id)
            .await
            .map_err(|e| unavailable_or_rejected(e, "reading the job summary"))?;
        let pending = summary.children.map(|c| c.pending).unwrap_or(0);
        if pending >= u64::from(agent.max_instances.max(1)) {
            return Err(ExecError::Unavailable {
                message: format!(
                    "cluster has {pending} pending children of {}, holding back",
                    task.agent_type
                ),
            });
        }
        let mut meta = BTreeMap::from([
            ("task_id".to_string(), task.id.clone()),
            ("attempt".to_string(), task.attempt.to_string()),
        ]);
        if let Some(url) = &parent.result_queue_url {
            meta.insert(RESULT_QUEUE_META.to_string(), url.clone());
        }
        let request = DispatchRequest {
            payload: base64::engine::general_purpose::STANDARD.encode(&payload),
            meta,
            id_prefix_template: Some(task.id.clone()),
        };
        let token = format!("{}-{}", task.id, task.attempt);
        let answer = match inner.client.dispatch(&parent.id, &request, &token).await {
            Ok(answer) => answer,
            Err(e) if e.is_not_found() => {
                // The parent job was purged behind our back: register it again next time.
                if let Ok(mut registered) = inner.registered.lock() {
                    registered.remove(&task.agent_type);
                }
                return Err(ExecError::Unavailable {
                    message: format!("dispatching: {e}"),
                });
            }
            Err(e) => return Err(unavailable_or_rejected(e, "dispatching")),
        };
        inner.remember_child(task, &answer.dispatched_job_id);
        info!(task_id = %task.id, agent_type = %task.agent_type, attempt = task.attempt, child = %answer.dispatched_job_id, "dispatched to nomad");
        let _ = inner.notifier.send(task.id.clone());
        Ok(answer.dispatched_job_id)
    }

    async fn status(&self, task: &Task) -> Result<RunState, ExecError> {
        let inner = &self.inner;
        let child = inner
            .find_child(task)
            .await
            .map_err(|e| unavailable(e, "finding the child job"))?;
        let Some(child) = child else {
            return Ok(RunState::NotFound);
        };
        let now = now_ms();
        let gone = || {
            RunState::Finished(Outcome::Lost {
                reason: format!("child job {child} is gone from nomad"),
                finished_at: now,
            })
        };
        // The latest allocation, or the answer when the child is gone.
        let read_allocations = || async {
            match inner.client.job_allocations(&child).await {
                Ok(allocations) => Ok(Ok(allocations.into_iter().max_by_key(|a| a.create_index))),
                Err(e) if e.is_not_found() => Ok(Err(gone())),
                Err(e) => Err(unavailable(e, "reading allocations")),
            }
        };
        let latest = match read_allocations().await? {
            Err(gone) => return Ok(gone),
            Ok(Some(latest)) => latest,
            Ok(None) => {
                let job = match inner.client.job(&child).await {
                    Ok(job) => job,
                    Err(e) if e.is_not_found() => return Ok(gone()),
                    Err(e) => return Err(unavailable(e, "reading the child job")),
                };
                if !job.stop && job.status != "dead" {
                    return Ok(RunState::Pending);
                }
                // The two reads are not one snapshot: the child may have been placed and have
                // finished after its allocations were listed. Only a stopped or dead child that
                // still has no allocation ended without being placed.
                match read_allocations().await? {
                    Err(gone) => return Ok(gone),
                    Ok(Some(latest)) => latest,
                    Ok(None) if job.stop => {
                        return Ok(RunState::Finished(inner.stopped_outcome(task, now)))
                    }
                    Ok(None) => {
                        return Ok(RunState::Finished(Outcome::Lost {
                            reason: format!("child job {child} ended without being placed"),
                            finished_at: now,
                        }))
                    }
                }
            }
        };
        let state = map_allocation(inner, task, &latest, now);
        if matches!(state, RunState::Finished(_)) {
            inner.forget(task);
        }
        Ok(state)
    }

    async fn stop(&self, task: &Task, reason: StopReason) -> Result<(), ExecError> {
        let inner = &self.inner;
        let child = inner
            .find_child(task)
            .await
            .map_err(|e| unavailable(e, "finding the child job"))?;
        let Some(child) = child else {
            return Ok(());
        };
        if inner.stop_reason(task).is_some() {
            // Already stopped by this process: the scheduler asks again on every look.
            return Ok(());
        }
        inner
            .client
            .stop_job(&child)
            .await
            .map_err(|e| unavailable(e, "stopping the child job"))?;
        if let Ok(mut stops) = inner.stops.lock() {
            stops
                .entry((task.id.clone(), task.attempt))
                .or_insert(reason);
        }
        info!(task_id = %task.id, agent_type = %task.agent_type, child = %child, ?reason, "stopped child job");
        let _ = inner.notifier.send(task.id.clone());
        Ok(())
    }
}

fn map_allocation(inner: &Inner, task: &Task, alloc: &AllocationStub, now: i64) -> RunState {
    let stopped = alloc.desired_status == "stop" || inner.stop_reason(task).is_some();
    match alloc.client_status.as_str() {
        "pending" => RunState::Pending,
        "running" | "unknown" => RunState::Running { started_at: None },
        "complete" if stopped => RunState::Finished(inner.stopped_outcome(task, now)),
        "complete" => RunState::Finished(Outcome::Succeeded {
            result: None,
            finished_at: now,
        }),
        "failed" if stopped => RunState::Finished(inner.stopped_outcome(task, now)),
        "failed" => RunState::Finished(failed_outcome(alloc, now)),
        "lost" => RunState::Finished(Outcome::Lost {
            reason: format!("allocation {} was lost", alloc.id),
            finished_at: now,
        }),
        other => RunState::Finished(Outcome::Lost {
            reason: format!("allocation {} has unknown status `{other}`", alloc.id),
            finished_at: now,
        }),
    }
}

/// A failed allocation: the agent's own failure (non-zero exit) or the infrastructure's
/// (OOM kill, driver error, no exit code at all).
fn failed_outcome(alloc: &AllocationStub, now: i64) -> Outcome {
    let events: Vec<_> = alloc
        .task_states
        .iter()
        .flat_map(|states| states.values())
        .flat_map(|state| state.events.iter().flatten())
        .collect();
    let oom = events.iter().any(|e| {
        e.details
            .as_ref()
            .and_then(|d| d.get("oom_killed"))
            .is_some_and(|v| v == "true")
            || e.kind.to_ascii_lowercase().contains("oom")
    });
    if oom {
        return Outcome::Lost {
            reason: format!("allocation {} was OOM-killed", alloc.id),
            finished_at: now,
        };
    }
    let exit = events
        .iter()
        .rev()
        .find(|e| e.kind == "Terminated" && e.exit_code != 0);
    match exit {
        Some(event) => Outcome::Failed {
            error: format!("agent exited with code {}", event.exit_code),
            finished_at: now,
        },
        None => {
            let detail = events
                .iter()
                .rev()
                .map(|e| {
                    if e.driver_error.is_empty() {
                        e.display_message.as_str()
                    } else {
                        e.driver_error.as_str()
                    }
                })
                .find(|m| !m.is_empty())
                .unwrap_or(alloc.client_description.as_str());
            Outcome::Lost {
                reason: format!(
                    "allocation {} failed before the agent ran: {detail}",
                    alloc.id
                ),
                finished_at: now,
            }
        }
    }
}

fn unavailable(e: NomadError, what: &str) -> ExecError {
    ExecError::Unavailable {
        message: format!("{what}: {e}"),
    }
}

/// Nomad refused the request itself (400, 413, 422): retrying the same task cannot help.
fn unavailable_or_rejected(e: NomadError, what: &str) -> ExecError {
    match &e {
        NomadError::Status {
            status: 400 | 413 | 422,
            ..
        } => ExecError::Rejected {
            message: format!("{what}: {e}"),
        },
        _ => unavailable(e, what),
    }
}

/// Blocking queries on `/v1/allocations`: every allocation changed since the last answer whose
/// child job belongs to one of our parents is announced by task id. Ends with the executor.
async fn watch_allocations(inner: std::sync::Weak<Inner>, wait: Duration) {
    let mut index = 0u64;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = strong.client.clone();
        let parents: Vec<String> = strong.parents.values().map(|p| p.id.clone()).collect();
        let notifier = strong.notifier.clone();
        drop(strong);
        let asked = tokio::time::Instant::now();
        match client.allocations_after(index, wait).await {
            Ok(answer) => {
                backoff = Duration::from_millis(200);
                // An index that goes backwards (leader change, restore) resets the watch.
                index = if answer.index < index {
                    0
                } else {
                    answer.index
                };
                for alloc in answer.value {
                    if seen.get(&alloc.id) == Some(&alloc.modify_index) {
                        continue;
                    }
                    seen.insert(alloc.id.clone(), alloc.modify_index);
                    let task = parents
                        .iter()
                        .find_map(|p| wire::task_id_of_child(p, &alloc.job_id));
                    if let Some(task_id) = task {
                        if notifier.send(task_id).is_err() {
                            return;
                        }
                    }
                }
                if seen.len() > 100_000 {
                    seen.clear();
                }
                // A server that answers at once without blocking must not make this spin.
                tokio::time::sleep_until(asked + Duration::from_millis(50)).await;
            }
            Err(e) => {
                debug!(error = %e, "watching nomad allocations failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
