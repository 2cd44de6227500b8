//! The reconcile loop of one agent type. See the module docs of `scheduler`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use super::breaker::{Breaker, CircuitState};
use super::{AgentStatus, Context};
use crate::config::AgentType;
use crate::executor::{ExecError, Outcome, RunState, StopReason};
use crate::metrics;
use crate::queue::{Depth, Message};
use crate::store::StoreError;
use crate::task::{backoff, now_ms, AttemptRecord, Millis, Status, Task, TaskId};

/// Why one step of the loop could not finish; the loop logs it and looks again later.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// What became of a claimed attempt handed to the executor.
enum Started {
    /// Dispatched (or finished as rejected): the queue message is done with.
    Dispatched,
    /// The executor was unavailable; the task is queued again, due after `delay`.
    HandedBack { delay: Duration },
}

pub(super) struct AgentLoop {
    ctx: Arc<Context>,
    agent: AgentType,
    max_attempts: u32,
    /// The ledger: tasks of this type holding a slot, as last read from the store.
    active: HashMap<TaskId, Task>,
    changed: mpsc::UnboundedReceiver<TaskId>,
    pending: BTreeSet<TaskId>,
    wake: Arc<Notify>,
    breaker: Breaker,
    last_resync: Instant,
    last_sweep: Instant,
    /// Earliest retry that was sent with a delay, to wake up for it.
    next_retry: Option<Instant>,
    draining: bool,
    /// Another coordinator holds the leader lock: observe nothing, dispatch nothing.
    following: bool,
    depth: Depth,
    depth_measured_at: Option<Instant>,
}

/// Least time between two queue-depth measurements of one loop.
const DEPTH_INTERVAL: Duration = Duration::from_millis(100);

impl AgentLoop {
    pub(super) fn new(
        ctx: Arc<Context>,
        agent: AgentType,
        changed: mpsc::UnboundedReceiver<TaskId>,
        wake: Arc<Notify>,
    ) -> Self {
        let s = &ctx.settings;
        let breaker = Breaker::new(s.breaker_threshold, s.breaker_cooldown);
        let max_attempts = ctx.inputs.max_attempts_for(&agent);
        AgentLoop {
            ctx,
            agent,
            max_attempts,
            active: HashMap::new(),
            changed,
            pending: BTreeSet::new(),
            wake,
            breaker,
            last_resync: Instant::now(),
            last_sweep: Instant::now(),
            next_retry: None,
            draining: false,
            following: false,
            depth: Depth::default(),
            depth_measured_at: None,
        }
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.recover().await;
        loop {
            let next = self.reconcile().await;
            if self.draining && self.active.is_empty() {
                info!(agent_type = %self.agent.name, "drained");
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(id) = self.changed.recv() => {
                    self.pending.insert(id);
                    while let Ok(id) = self.changed.try_recv() {
                        self.pending.insert(id);
                    }
                }
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.changed(), if !self.draining => {
                    info!(agent_type = %self.agent.name, active = self.active.len(), "shutting down: no new dispatches");
                    self.draining = true;
                }
            }
        }
    }

    /// On start: rebuild the ledger from the store and re-send queued tasks that may have
    /// lost their queue message in a crash.
    async fn recover(&mut self) {
        match self.ctx.store.active(&self.agent.name).await {
            Ok(tasks) => {
                for task in tasks {
                    self.ctx.own(&task.id, &self.agent.name);
                    self.pending.insert(task.id.clone());
                    self.active.insert(task.id.clone(), task);
                }
            }
            Err(e) => {
                warn!(agent_type = %self.agent.name, error = %e, "cannot read the ledger; will retry")
            }
        }
        self.sweep(now_ms(), 100_000).await;
        if !self.active.is_empty() {
            info!(agent_type = %self.agent.name, active = self.active.len(), "re-adopting active tasks");
        }
    }

    /// One observe → decide → act round; returns when to look again.
    async fn reconcile(&mut self) -> Duration {
        if !self.ctx.is_leader() {
            if !self.following {
                info!(agent_type = %self.agent.name, "not the leader: dispatching stops");
                self.following = true;
                // The leader owns these now; the ledger is rebuilt on taking over.
                self.active.clear();
                self.pending.clear();
            }
            self.publish().await;
            return self.ctx.settings.resync_interval;
        }
        if self.following {
            info!(agent_type = %self.agent.name, "leader: taking over the ledger");
            self.following = false;
            self.recover().await;
        }
        let now = Instant::now();
        let settings = &self.ctx.settings;
        let mut to_observe: BTreeSet<TaskId> = std::mem::take(&mut self.pending);
        if now.duration_since(self.last_resync) >= settings.resync_interval {
            self.last_resync = now;
            to_observe.extend(self.active.keys().cloned());
        }
        let wall = now_ms();
        for task in self.active.values() {
            if task.deadline_at.is_some_and(|d| wall >= d) || task.cancel_requested {
                to_observe.insert(task.id.clone());
            }
        }
        // Read every task and its executor state concurrently (the store batches the reads),
        // then settle them one by one.
        let ids: Vec<TaskId> = to_observe.into_iter().collect();
        let looks = join_all(ids.iter().map(|id| look(&self.ctx, id))).await;
        for (id, looked) in ids.iter().zip(looks) {
            if let Err(e) = self.settle(id, looked).await {
                warn!(task_id = %id, agent_type = %self.agent.name, error = %e, "observe failed; will look again");
            }
        }
        let mut more = false;
        if !self.draining {
            match self.dispatch().await {
                Ok(filled) => more = filled,
                Err(e) => warn!(agent_type = %self.agent.name, error = %e, "dispatch round failed"),
            }
        }
        if now.duration_since(self.last_sweep) >= self.ctx.settings.sweep_interval {
            self.last_sweep = now;
            let before = now_ms() - self.ctx.settings.sweep_interval.as_millis() as Millis;
            self.sweep(before, 1000).await;
        }
        self.publish().await;
        if more && !self.pending.is_empty() {
            return Duration::ZERO;
        }
        self.next_look(more)
    }

    fn next_look(&mut self, more_waiting: bool) -> Duration {
        let now = Instant::now();
        let wall = now_ms();
        let mut next = self.ctx.settings.resync_interval;
        if more_waiting {
            // Slots are full but work waits: a finishing task wakes us; keep a short fallback.
            next = next.min(Duration::from_millis(250));
        }
        for task in self.active.values() {
            if let Some(deadline) = task.deadline_at {
                let due = deadline + self.ctx.settings.timeout_grace.as_millis() as Millis;
                next = next.min(Duration::from_millis(due.saturating_sub(wall).max(0) as u64));
            }
        }
        if self.depth.visible + self.depth.delayed + self.depth.in_flight > 0 {
            // The published depth says work waits: keep it fresh (and `/agents` and the
            // queue_depth gauge true) instead of holding a stale count until the next resync.
            next = next.min(DEPTH_INTERVAL);
        }
        if let Some(at) = self.breaker.reopens_at() {
            next = next.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.next_retry {
            if at <= now {
                self.next_retry = None;
            } else {
                next = next.min(at - now);
            }
        }
        next.max(Duration::from_millis(1))
    }

    // ---------------------------------------------------------------- observe

    /// Decides what follows from one task's [`look`]: record a start, an end, a retry, or
    /// enforce its deadline.
    async fn settle(
        &mut self,
        id: &str,
        looked: Result<Option<(Task, RunState)>, StepError>,
    ) -> Result<(), StepError> {
        let Some((task, state)) = looked? else {
            // Gone, or finished elsewhere (another coordinator, a cancel of a queued task).
            self.forget(id);
            return Ok(());
        };
        self.active.insert(task.id.clone(), task.clone());
        let wall = now_ms();
        match state {
            RunState::NotFound if task.cancel_requested => {
                self.finish(task, Outcome::Cancelled { finished_at: wall })
                    .await?;
            }
            RunState::NotFound if task.status == Status::Dispatched => {
                // Claimed but never started (crash between claim and dispatch): start it now;
                // the executor's dispatch is idempotent per attempt. No message is in flight
                // for it here, so a hand-back needs a fresh send.
                if let Started::HandedBack { delay } = self.start(task.clone()).await? {
                    self.ctx
                        .queue
                        .send(&self.agent.name, &task.id, task.priority, delay)
                        .await?;
                }
            }
            RunState::NotFound => {
                let reason = "the running attempt vanished from the executor".to_string();
                self.finish(
                    task,
                    Outcome::Lost {
                        reason,
                        finished_at: wall,
                    },
                )
                .await?;
            }
            RunState::Pending => {
                let dispatched = task
                    .attempts
                    .last()
                    .map(|a| a.dispatched_at)
                    .unwrap_or(task.updated_at);
                if wall - dispatched > self.ctx.settings.pending_limit.as_millis() as Millis {
                    self.ctx.executor.stop(&task, StopReason::Timeout).await?;
                    let reason = "the attempt was not started within the pending limit".to_string();
                    self.finish(
                        task,
                        Outcome::Lost {
                            reason,
                            finished_at: wall,
                        },
                    )
                    .await?;
                }
            }
            RunState::Running { started_at } => {
                let task = if task.status == Status::Dispatched {
                    self.mark_running(task, started_at.unwrap_or(wall)).await?
                } else {
                    task
                };
                self.enforce_deadline(task, wall).await?;
            }
            RunState::Finished(outcome) => self.finish(task, outcome).await?,
        }
        Ok(())
    }

    async fn enforce_deadline(&mut self, task: Task, wall: Millis) -> Result<(), StepError> {
        let Some(deadline) = task.deadline_at else {
            return Ok(());
        };
        let grace = self.ctx.settings.timeout_grace.as_millis() as Millis;
        if wall < deadline + grace {
            return Ok(());
        }
        info!(task_id = %task.id, agent_type = %task.agent_type, "deadline passed: stopping the attempt");
        self.ctx.executor.stop(&task, StopReason::Timeout).await?;
        // The coordinator decides timed_out from its own deadline, never from the executor
        // alone; if the executor has not confirmed the stop after a few graces, record it anyway.
        if wall >= deadline + 4 * grace {
            self.finish(task, Outcome::TimedOut { finished_at: wall })
                .await?;
        }
        Ok(())
    }

    async fn mark_running(&mut self, task: Task, started_at: Millis) -> Result<Task, StepError> {
        // The attempt's own limit (the submit's `timeout_seconds`, or the type's default),
        // counted from when it really started.
        let deadline = started_at + task.timeout_ms as Millis;
        let next = self
            .write(&task, |t| {
                t.status = Status::Running;
                t.deadline_at = Some(deadline.max(t.deadline_at.unwrap_or(0)));
                if let Some(record) = t.current_attempt_mut() {
                    record.started_at = Some(started_at);
                }
            })
            .await?;
        Ok(next)
    }

    /// Records how an attempt ended and decides what follows (done, retry, requeue).
    async fn finish(&mut self, task: Task, outcome: Outcome) -> Result<(), StepError> {
        let failures = task
            .attempts
            .iter()
            .filter(|a| matches!(a.outcome.as_deref(), Some("failed")))
            .count() as u32;
        // A cancel asked for while the attempt ran wins over a retry (but not over a success
        // that got there first).
        if task.cancel_requested && !matches!(outcome, Outcome::Succeeded { .. }) {
            let reason = Some("cancelled".to_string());
            return self
                .terminal(task, Status::Cancelled, now_ms(), None, reason)
                .await;
        }
        match outcome {
            Outcome::Succeeded {
                result,
                finished_at,
            } => {
                self.breaker.record_success();
                self.terminal(task, Status::Succeeded, finished_at, result, None)
                    .await
            }
            Outcome::Failed { error, finished_at }
                if failures + 1 < self.max_attempts.min(task.max_attempts) =>
            {
                self.breaker.record_success();
                self.retry(task, "failed", error, finished_at, true).await
            }
            Outcome::Failed { error, finished_at } => {
                self.breaker.record_success();
                self.terminal(task, Status::Failed, finished_at, None, Some(error))
                    .await
            }
            Outcome::TimedOut { finished_at } => {
                let error = format!(
                    "attempt {} exceeded its timeout of {}s",
                    task.attempt,
                    task.timeout_ms / 1000
                );
                self.terminal(task, Status::TimedOut, finished_at, None, Some(error))
                    .await
            }
            Outcome::Cancelled { finished_at } => {
                self.terminal(
                    task,
                    Status::Cancelled,
                    finished_at,
                    None,
                    Some("cancelled".into()),
                )
                .await
            }
            Outcome::Lost {
                reason,
                finished_at,
            } => {
                // Infrastructure, not the agent: requeue without spending an attempt.
                self.breaker.record_failure(Instant::now());
                warn!(task_id = %task.id, agent_type = %task.agent_type, %reason, "attempt lost; requeueing");
                self.retry(task, "lost", reason, finished_at, false).await
            }
        }
    }

    async fn terminal(
        &mut self,
        task: Task,
        status: Status,
        finished_at: Millis,
        result: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<(), StepError> {
        let outcome = status.as_str().to_string();
        let id = task.id.clone();
        self.write(&task, |t| {
            t.status = status;
            t.finished_at = Some(finished_at);
            t.result = result;
            t.error = error.clone();
            t.deadline_at = None;
            if let Some(record) = t.current_attempt_mut() {
                record.finished_at = Some(finished_at);
                record.outcome = Some(outcome);
                record.error = error;
            }
        })
        .await?;
        metrics::task_finished(&self.agent.name, status.as_str());
        info!(task_id = %id, agent_type = %self.agent.name, status = status.as_str(), "task finished");
        self.forget(&id);
        Ok(())
    }

    /// Back to `queued`, visible again after a backoff (agent failure) or at once (lost).
    async fn retry(
        &mut self,
        task: Task,
        outcome: &str,
        error: String,
        finished_at: Millis,
        with_backoff: bool,
    ) -> Result<(), StepError> {
        let delay = if with_backoff {
            let unit: f64 = rand::rng().random();
            backoff(
                self.ctx.settings.retry_base,
                self.ctx.settings.retry_cap,
                task.attempt + 1,
                unit,
            )
        } else {
            Duration::ZERO
        };
        let not_before = finished_at.max(now_ms()) + delay.as_millis() as Millis;
        let next = self
            .write(&task, |t| {
                t.status = Status::Queued;
                t.not_before = not_before;
                t.deadline_at = None;
                t.executor_handle = None;
                if let Some(record) = t.current_attempt_mut() {
                    record.finished_at = Some(finished_at);
                    record.outcome = Some(outcome.to_string());
                    record.error = Some(error.clone());
                }
            })
            .await?;
        info!(task_id = %next.id, agent_type = %self.agent.name, attempt = next.attempt, delay_ms = delay.as_millis() as u64, %error, "attempt ended; task requeued");
        self.forget(&next.id);
        self.ctx
            .queue
            .send(&self.agent.name, &next.id, next.priority, delay)
            .await?;
        if !delay.is_zero() {
            let at = Instant::now() + delay;
            self.next_retry = Some(self.next_retry.map_or(at, |r| r.min(at)));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- act

    /// Fills free slots from the queue. Returns true when every slot it asked for was filled
    /// (more work may be waiting).
    async fn dispatch(&mut self) -> Result<bool, StepError> {
        let free = (self.agent.max_instances as usize).saturating_sub(self.active.len());
        let wanted = self.breaker.admit(free, Instant::now());
        if wanted == 0 {
            return Ok(free == 0);
        }
        let messages = self
            .ctx
            .queue
            .receive(&self.agent.name, wanted, self.ctx.settings.visibility)
            .await?;
        let filled = messages.len() == wanted;
        let mut to_claim = Vec::with_capacity(messages.len());
        for message in messages {
            if self.ctx.is_leader() {
                to_claim.push(message);
            } else {
                // Leadership lost mid-round: hand the message back at once.
                let _ = self
                    .ctx
                    .queue
                    .nack(&self.agent.name, &message.receipt, Duration::ZERO)
                    .await;
            }
        }
        // The round runs in phases, each concurrent across the received tasks, so the store
        // can batch them (the SQLite writer commits concurrent requests together).
        // 1. Read and claim every received task.
        let claims = join_all(
            to_claim
                .into_iter()
                .map(|m| claim(&self.ctx, &self.agent.name, m)),
        )
        .await;
        let mut claimed = Vec::with_capacity(claims.len());
        for result in claims {
            match result {
                Ok(Some((task, message))) => {
                    self.ctx.own(&task.id, &self.agent.name);
                    self.active.insert(task.id.clone(), task.clone());
                    claimed.push((task, message));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(agent_type = %self.agent.name, error = %e, "could not claim; the message will be redelivered")
                }
            }
        }
        // 2. Hand every claimed attempt to the executor.
        let (executor, agent) = (&self.ctx.executor, &self.agent);
        let results = join_all(claimed.iter().map(|(task, _)| async move {
            let began = Instant::now();
            (executor.dispatch(task, agent).await, began.elapsed())
        }))
        .await;
        // 3. Record the handles, then settle each message.
        let mut handle_writes = Vec::new();
        let mut acks = Vec::new();
        for ((task, message), (result, took)) in claimed.into_iter().zip(results) {
            match result {
                Ok(handle) => {
                    metrics::dispatch_took(took);
                    debug!(task_id = %task.id, agent_type = %self.agent.name, attempt = task.attempt, %handle, "dispatched");
                    self.pending.insert(task.id.clone());
                    if task.executor_handle.as_deref() != Some(handle.as_str()) {
                        let next = self.with_handle(&task, &handle);
                        handle_writes.push((task.version, next));
                    }
                    acks.push(message);
                }
                Err(err) => match self.dispatch_failed(task, err).await {
                    Ok(Started::Dispatched) => acks.push(message),
                    Ok(Started::HandedBack { delay }) => {
                        let nack = self
                            .ctx
                            .queue
                            .nack(&self.agent.name, &message.receipt, delay);
                        if let Err(e) = nack.await {
                            warn!(agent_type = %self.agent.name, error = %e, "nack failed; the message reappears after its visibility timeout");
                        }
                    }
                    Err(e) => {
                        warn!(agent_type = %self.agent.name, error = %e, "could not record a failed dispatch")
                    }
                },
            }
        }
        let store = &self.ctx.store;
        let stored = join_all(
            handle_writes
                .iter()
                .map(|(version, next)| store.update(next, *version)),
        )
        .await;
        for result in stored {
            match result {
                Ok(task) if task.status.is_active() => {
                    self.active.insert(task.id.clone(), task);
                }
                // Finished meanwhile (a quick agent), or changed by someone else: the ledger
                // re-reads it when it observes the task.
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => {
                    warn!(agent_type = %self.agent.name, error = %e, "could not record a dispatch handle")
                }
            }
        }
        let queue = &self.ctx.queue;
        let name = &self.agent.name;
        for result in join_all(acks.iter().map(|m| queue.ack(name, &m.receipt))).await {
            if let Err(e) = result {
                warn!(agent_type = %name, error = %e, "ack failed; the leftover message will be dropped when redelivered");
            }
        }
        Ok(filled)
    }

    /// `task` with the executor's handle recorded on it and its current attempt.
    fn with_handle(&self, task: &Task, handle: &str) -> Task {
        let mut next = task.clone();
        next.executor_handle = Some(handle.to_string());
        if let Some(record) = next.current_attempt_mut() {
            record.handle = Some(handle.to_string());
        }
        next.updated_at = now_ms();
        next.fence = self.ctx.fence();
        next
    }

    /// Hands the claimed attempt to the executor and records its handle. When the executor is
    /// unavailable the attempt is given back (task `queued` again) and the caller makes its
    /// queue message visible after the returned delay.
    async fn start(&mut self, task: Task) -> Result<Started, StepError> {
        let began = Instant::now();
        match self.ctx.executor.dispatch(&task, &self.agent).await {
            Ok(handle) => {
                metrics::dispatch_took(began.elapsed());
                debug!(task_id = %task.id, agent_type = %self.agent.name, attempt = task.attempt, %handle, "dispatched");
                if task.executor_handle.as_deref() != Some(handle.as_str()) {
                    let write = self.write(&task, |t| {
                        t.executor_handle = Some(handle.clone());
                        if let Some(record) = t.current_attempt_mut() {
                            record.handle = Some(handle.clone());
                        }
                    });
                    match write.await {
                        // The attempt may already have been recorded as finished by a quick
                        // notification; the ledger re-reads it either way.
                        Ok(_) | Err(StepError::Store(StoreError::Conflict { .. })) => {}
                        Err(e) => return Err(e),
                    }
                }
                self.pending.insert(task.id.clone());
                Ok(Started::Dispatched)
            }
            Err(err) => self.dispatch_failed(task, err).await,
        }
    }

    /// Settles a dispatch the executor refused (the task fails) or could not take (the attempt
    /// is given back and the task is queued again, due after the returned delay).
    async fn dispatch_failed(&mut self, task: Task, err: ExecError) -> Result<Started, StepError> {
        match err {
            ExecError::Rejected { message } => {
                warn!(task_id = %task.id, agent_type = %self.agent.name, error = %message, "executor refused the task");
                self.terminal(task, Status::Failed, now_ms(), None, Some(message))
                    .await?;
                Ok(Started::Dispatched)
            }
            ExecError::Unavailable { message } => {
                self.breaker.record_failure(Instant::now());
                warn!(task_id = %task.id, agent_type = %self.agent.name, error = %message, "dispatch failed; requeueing");
                let unit: f64 = rand::rng().random();
                let delay = backoff(
                    self.ctx.settings.retry_base,
                    self.ctx.settings.retry_cap,
                    2,
                    unit,
                );
                let not_before = now_ms() + delay.as_millis() as Millis;
                let next = self
                    .write(&task, |t| {
                        // The attempt never started: give its number back.
                        t.attempts.retain(|a| a.attempt != t.attempt);
                        t.attempt = t.attempt.saturating_sub(1);
                        t.status = Status::Queued;
                        t.deadline_at = None;
                        t.not_before = not_before;
                    })
                    .await?;
                self.forget(&next.id);
                Ok(Started::HandedBack { delay })
            }
        }
    }

    /// Re-sends queued tasks last written before `before` (a crash between the store write and
    /// the queue send leaves a task with no message; sending one that waits is a no-op).
    async fn sweep(&mut self, before: Millis, limit: usize) {
        let tasks = match self
            .ctx
            .store
            .stale_queued(&self.agent.name, before, limit)
            .await
        {
            Ok(tasks) => tasks,
            Err(e) => return warn!(agent_type = %self.agent.name, error = %e, "sweep failed"),
        };
        for task in tasks {
            let delay =
                Duration::from_millis(task.not_before.saturating_sub(now_ms()).max(0) as u64);
            if let Err(e) = self
                .ctx
                .queue
                .send(&self.agent.name, &task.id, task.priority, delay)
                .await
            {
                warn!(task_id = %task.id, error = %e, "re-enqueue failed");
            }
        }
    }

    // ---------------------------------------------------------------- helpers

    /// Compare-and-set write of a modified copy of `task`; updates the ledger.
    async fn write(
        &mut self,
        task: &Task,
        change: impl FnOnce(&mut Task),
    ) -> Result<Task, StepError> {
        let mut next = task.clone();
        change(&mut next);
        next.updated_at = now_ms();
        next.fence = self.ctx.fence();
        let stored = self.ctx.store.update(&next, task.version).await?;
        if stored.status.is_active() {
            self.active.insert(stored.id.clone(), stored.clone());
        }
        Ok(stored)
    }

    fn forget(&mut self, id: &str) {
        if self.active.remove(id).is_some() {
            // A slot was freed: fill it in this same round.
            self.wake.notify_one();
        }
        self.ctx.disown(id);
    }

    async fn publish(&mut self) {
        // Depth is a COUNT on SQLite and an API call on SQS: measure it at most every 100 ms.
        let now = Instant::now();
        let measure = self
            .depth_measured_at
            .is_none_or(|at| now.duration_since(at) >= DEPTH_INTERVAL);
        if measure {
            if let Ok(depth) = self.ctx.queue.depth(&self.agent.name).await {
                self.depth = depth;
                self.depth_measured_at = Some(now);
            }
        }
        let depth = self.depth;
        let queued = depth.visible + depth.delayed;
        let running = self.active.len();
        let capacity = (self.agent.max_instances as usize).saturating_sub(running);
        let circuit = match self.breaker.state() {
            CircuitState::Closed => "closed",
            CircuitState::Open { .. } => "open",
            CircuitState::HalfOpen { .. } => "half_open",
        };
        metrics::agent_gauges(
            &self.agent.name,
            queued,
            running,
            capacity,
            self.breaker.is_open(),
        );
        let status = AgentStatus {
            max_instances: self.agent.max_instances,
            queued,
            running,
            capacity,
            circuit,
        };
        self.ctx.set_status(&self.agent.name, status, measure);
    }
}

/// Reads the task behind `message` and claims its next attempt (`queued → dispatched`,
/// attempt + 1) with a compare-and-set. Leftover, early or contested messages are settled here
/// and give `None`.
async fn claim(
    ctx: &Context,
    agent_type: &str,
    message: Message,
) -> Result<Option<(Task, Message)>, StepError> {
    let queue = &ctx.queue;
    let Some(task) = ctx.store.get(&message.task_id).await? else {
        warn!(task_id = %message.task_id, %agent_type, "queue message for an unknown task; dropping it");
        queue.ack(agent_type, &message.receipt).await?;
        return Ok(None);
    };
    if task.status != Status::Queued || task.agent_type != agent_type {
        // Already claimed, finished or cancelled: the message is a leftover duplicate.
        queue.ack(agent_type, &message.receipt).await?;
        return Ok(None);
    }
    let wall = now_ms();
    if task.not_before > wall {
        let wait = Duration::from_millis((task.not_before - wall) as u64);
        queue.nack(agent_type, &message.receipt, wait).await?;
        return Ok(None);
    }
    let mut next = task.clone();
    next.status = Status::Dispatched;
    next.attempt += 1;
    next.deadline_at = Some(wall + task.timeout_ms as Millis);
    next.executor_handle = None;
    next.attempts.push(AttemptRecord {
        attempt: next.attempt,
        dispatched_at: wall,
        started_at: None,
        finished_at: None,
        outcome: None,
        error: None,
        handle: None,
    });
    next.updated_at = wall;
    next.fence = ctx.fence();
    match ctx.store.update(&next, task.version).await {
        Ok(claimed) => Ok(Some((claimed, message))),
        Err(StoreError::Conflict { .. }) => {
            // Someone else moved it (cancel, another coordinator): look at it again later.
            queue
                .nack(agent_type, &message.receipt, Duration::from_millis(50))
                .await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Observes one task: its stored state and, while it is active, the executor's view of its
/// attempt (stopping it first when a cancel was asked). `None`: gone or no longer active.
async fn look(ctx: &Context, id: &str) -> Result<Option<(Task, RunState)>, StepError> {
    let Some(task) = ctx.store.get(id).await? else {
        return Ok(None);
    };
    if !task.status.is_active() {
        return Ok(None);
    }
    if task.cancel_requested {
        ctx.executor.stop(&task, StopReason::Cancel).await?;
    }
    let state = ctx.executor.status(&task).await?;
    Ok(Some((task, state)))
}
