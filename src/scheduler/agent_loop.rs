//! The reconcile loop of one agent type. See the module docs of `scheduler`.
//!
//! # The loop decides, jobs do the I/O
//!
//! The loop owns the type's state (the ledger of tasks holding a slot, the tasks read ahead,
//! the slots being claimed) and decides everything from it, but the store and queue calls that
//! follow a decision run as jobs (tokio tasks in [`AgentLoop::jobs`]) whose results come back
//! as [`Done`] and are applied between rounds. So the loop is free almost all the time, and a
//! slot is refilled as soon as the executor reports its attempt ended:
//!
//! 1. an executor notification wakes the loop, which asks the executor (not the store) about
//!    the task; an attempt that ended no longer holds a slot (`ended`), before its outcome is
//!    recorded;
//! 2. the freed slot is reserved (`claiming`) for the next task read ahead, and a job claims it
//!    (one compare-and-set) and hands it to the executor, which was asked to prepare that
//!    attempt when the task was read ahead (the local executor primes its supervisor), so the
//!    hand-over starts it at once; while every slot is busy the next tasks are claimed ahead
//!    (`staged`), and a freed slot takes one of those first: no store write before the start;
//! 3. recording the ended attempt's outcome, deleting the new task's message (in batches),
//!    reading more tasks ahead and measuring the depth are all jobs of their own, held back
//!    while claims are under way (at most [`HOLD_BACK`]) so a claim does not queue behind them
//!    at the store; the new attempt's handle rides along with its next write (its start).
//!
//! Slots in use are the ledger's tasks whose attempt has not ended plus the slots being
//! claimed, so `max_instances` holds whatever order the jobs finish in. A task has at most one
//! job at a time (claiming, or a write in `recording`); observations of it meanwhile wait in
//! `deferred`, so its writes never race each other. Every write is still a compare-and-set: a
//! ledger copy that went stale (a cancel through the API) only makes a write fail, and the task
//! is read again. The crash story is unchanged: the claim precedes the dispatch, an attempt's
//! outcome is recorded only after the executor reported it, and a message is deleted only
//! after its task was claimed (a message read ahead and never claimed reappears after its
//! visibility timeout).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::breaker::{Breaker, CircuitState};
use super::resend::ResendBackoff;
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

/// A job's future.
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// One [`look`]: the task as stored (or as the ledger has it) and the executor's view.
type Looked = Result<Option<(Task, RunState)>, StepError>;

/// What a job brings back to the loop.
enum Done {
    /// The queue depth, and how long measuring it took.
    Depth(Option<Depth>, Duration),
    /// Tasks read ahead; `full`: the receive got all it asked for.
    ReadAhead {
        tasks: Vec<(Task, Message)>,
        full: bool,
        hidden_until: Instant,
    },
    /// A claim ahead (no slot yet): the claimed task, or why it was not claimed.
    Staged {
        id: TaskId,
        receipt: String,
        hidden_until: Instant,
        result: Result<Box<Task>, Option<StepError>>,
    },
    /// A reserved slot's claim and dispatch.
    Claimed {
        id: TaskId,
        receipt: String,
        result: Claim,
    },
    /// A write of one task's progress.
    Recorded {
        id: TaskId,
        what: Recorded,
        result: Result<Box<Task>, StoreError>,
    },
    /// Tasks read from the store (the resync) and the executor's view of them.
    Looked(Vec<(TaskId, Looked)>),
    /// Nothing to apply (acks, visibility extensions, hand-backs, the sweep log their own
    /// failures).
    Nothing,
}

/// How a claim job ended.
enum Claim {
    /// Someone else moved the task first (its message was handed back), or the claim failed.
    NotClaimed(Option<StepError>),
    /// Claimed; the executor's answer to the dispatch, and how long it took.
    Dispatched {
        task: Box<Task>,
        started: Result<String, ExecError>,
        took: Duration,
    },
}

/// What a recording job wrote.
enum Recorded {
    /// The executor's handle of a dispatched attempt.
    Handle,
    /// The attempt's start (`dispatched → running`).
    Running,
    /// A final status.
    Terminal { status: Status },
    /// Back to `queued` after an attempt ended; the message (visible after `delay`) was sent.
    Requeued { delay: Duration, error: String },
    /// Back to `queued` after the executor could not take the dispatch; the message was made
    /// visible again after a delay (or sent anew).
    HandedBack,
}

/// A task read ahead, with the message that announced it (hidden until `hidden_until`).
struct Ready {
    task: Task,
    message: Message,
    hidden_until: Instant,
}

/// A task claimed ahead, waiting for a slot: `dispatched` in the store, its attempt prepared
/// by the executor, not started. `receipt`: its message, deleted once it starts (none for a
/// claim found on recovery).
struct Staged {
    task: Task,
    receipt: Option<String>,
    hidden_until: Instant,
}

/// Least time between two queue-depth measurements of one loop.
const DEPTH_INTERVAL: Duration = Duration::from_millis(100);
/// A depth measurement is followed by a pause of at least this many times its duration, so
/// a slow one (an API call) does not keep the queue service busy.
const DEPTH_SPACING: u32 = 20;
/// Acks are sent in batches of this many (SQS's DeleteMessageBatch limit)...
const ACK_BATCH: usize = 10;
/// ...or once the oldest waited this long.
const ACK_DELAY: Duration = Duration::from_millis(500);
/// A dispatch handle waits this long for a write of its attempt to ride along with (the
/// start, usually) before it is written on its own. The stored handle is a convenience (the
/// API shows it; executors find an attempt without it), so this saves a write per task.
const HANDLE_DELAY: Duration = Duration::from_secs(1);
/// Longest a job is held back for claims under way.
const HOLD_BACK: Duration = Duration::from_millis(50);
/// A message for a task already being claimed (a duplicate) is looked at again after this.
const DUPLICATE_DELAY: Duration = Duration::from_secs(1);

pub(super) struct AgentLoop {
    ctx: Arc<Context>,
    agent: Arc<AgentType>,
    max_attempts: u32,
    /// The ledger: tasks of this type holding a slot, as last read from or written to the
    /// store.
    active: HashMap<TaskId, Task>,
    /// Tasks of the ledger whose attempt the executor reported ended (the process is gone) but
    /// whose outcome is not recorded yet: they no longer hold a slot.
    ended: HashSet<TaskId>,
    /// Slots reserved for tasks being claimed and dispatched (a job each).
    claiming: HashSet<TaskId>,
    /// Tasks with a write under way (a job).
    recording: HashSet<TaskId>,
    /// Tasks observed while claiming or recording: looked at again once that is done.
    deferred: HashSet<TaskId>,
    /// Tasks whose ledger copy may be out of date (a write lost its compare-and-set): the next
    /// look reads the store.
    stale: HashSet<TaskId>,
    /// Executor handles of dispatched attempts not stored yet (attempt, handle, since when):
    /// they ride along with the attempt's next write, or are written on their own after
    /// [`HANDLE_DELAY`].
    handles: HashMap<TaskId, (u32, String, Instant)>,
    changed: mpsc::UnboundedReceiver<TaskId>,
    pending: BTreeSet<TaskId>,
    wake: Arc<Notify>,
    breaker: Breaker,
    last_resync: Instant,
    last_sweep: Instant,
    /// How often the sweep may re-send each task that stays queued (a job holds it).
    resends: Arc<std::sync::Mutex<ResendBackoff>>,
    /// A resync read is under way (a job).
    resyncing: bool,
    /// Earliest retry that was sent with a delay, to wake up for it.
    next_retry: Option<Instant>,
    draining: bool,
    /// Another coordinator holds the leader lock: observe nothing, dispatch nothing.
    following: bool,
    depth: Depth,
    depth_measured_at: Option<Instant>,
    /// Least time between two depth measurements (see [`DEPTH_SPACING`]).
    depth_interval: Duration,
    /// A depth measurement is under way (a job).
    measuring: bool,
    /// The depth changed since the status was last published.
    depth_fresh: bool,
    /// Tasks read ahead (received, read, still queued), oldest first: a freed slot is filled
    /// with one compare-and-set instead of a receive, a read and a compare-and-set.
    ready: VecDeque<Ready>,
    /// A read-ahead is under way (a job).
    reading_ahead: bool,
    /// Tasks claimed ahead, oldest first: a freed slot starts the first without a store write.
    staged: VecDeque<Staged>,
    /// Claims ahead under way (a job each); they hold no slot.
    staging: HashSet<TaskId>,
    /// Tasks read ahead whose next attempt the executor was asked to prepare
    /// ([`Executor::prepare`](crate::executor::Executor::prepare)).
    prepared: HashSet<TaskId>,
    /// Free slots the last dispatch found nothing for.
    unserved: usize,
    /// The last receive got all it asked for: more work is probably waiting.
    backlog: bool,
    /// I/O the loop does not wait for (see the module docs).
    jobs: JoinSet<Done>,
    /// Jobs held back while slots are being claimed, so the claims do not queue behind them
    /// at the store.
    later: Vec<Job>,
    later_since: Option<Instant>,
    /// Messages of dispatched tasks not deleted yet (task, receipt), and since when.
    acks: Vec<(TaskId, String)>,
    /// The receipt of the message each task of the ledger was dispatched from.
    receipts: HashMap<TaskId, String>,
    acks_since: Option<Instant>,
}

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
        let sweep_interval = s.sweep_interval;
        AgentLoop {
            ctx,
            agent: Arc::new(agent),
            max_attempts,
            active: HashMap::new(),
            ended: HashSet::new(),
            claiming: HashSet::new(),
            recording: HashSet::new(),
            deferred: HashSet::new(),
            stale: HashSet::new(),
            handles: HashMap::new(),
            changed,
            pending: BTreeSet::new(),
            wake,
            breaker,
            last_resync: Instant::now(),
            last_sweep: Instant::now(),
            resends: Arc::new(std::sync::Mutex::new(ResendBackoff::new(sweep_interval))),
            resyncing: false,
            next_retry: None,
            draining: false,
            following: false,
            depth: Depth::default(),
            depth_measured_at: None,
            depth_interval: DEPTH_INTERVAL,
            measuring: false,
            depth_fresh: false,
            ready: VecDeque::new(),
            reading_ahead: false,
            prepared: HashSet::new(),
            staged: VecDeque::new(),
            staging: HashSet::new(),
            unserved: 0,
            backlog: false,
            jobs: JoinSet::new(),
            later: Vec::new(),
            later_since: None,
            acks: Vec::new(),
            receipts: HashMap::new(),
            acks_since: None,
        }
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.recover().await;
        let mut round = true;
        let mut next_at = Instant::now();
        loop {
            if round {
                next_at = Instant::now() + self.reconcile().await;
            }
            if self.draining
                && self.active.is_empty()
                && self.claiming.is_empty()
                && self.staging.is_empty()
            {
                // Let the handed-off work finish (acks, hand-backs) before returning.
                self.flush_acks(true);
                self.release_later();
                while let Some(done) = self.jobs.join_next().await {
                    if let Ok(done) = done {
                        self.apply(done).await;
                    }
                }
                info!(agent_type = %self.agent.name, "drained");
                return;
            }
            round = true;
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(id) = self.changed.recv() => {
                    self.pending.insert(id);
                    while let Ok(id) = self.changed.try_recv() {
                        self.pending.insert(id);
                    }
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    round = match done {
                        Ok(done) => self.apply(done).await,
                        Err(e) => {
                            warn!(agent_type = %self.agent.name, error = %e, "a scheduler job failed");
                            true
                        }
                    };
                    if !round {
                        // What it changed may call for an earlier look (a deadline, the depth).
                        next_at = next_at.min(Instant::now() + self.next_look());
                    }
                }
                _ = tokio::time::sleep_until(next_at.into()) => {}
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
        sweep(
            &self.ctx,
            &self.agent.name,
            now_ms(),
            100_000,
            &self.resends,
        )
        .await;
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
                self.hand_back_ready();
                self.flush_acks(true);
                self.active.clear();
                self.ended.clear();
                self.claiming.clear();
                // Claimed ahead: in the store as dispatched, adopted by the new leader.
                for staged in self.staged.drain(..) {
                    self.ctx.executor.discard(&staged.task.id);
                }
                self.staging.clear();
                self.release_later();
                self.recording.clear();
                self.deferred.clear();
                self.stale.clear();
                self.handles.clear();
                self.receipts.clear();
                self.pending.clear();
            }
            self.publish();
            return self.ctx.settings.resync_interval;
        }
        if self.following {
            info!(agent_type = %self.agent.name, "leader: taking over the ledger");
            self.following = false;
            self.recover().await;
        }
        if self.draining {
            self.hand_back_ready();
            for staged in std::mem::take(&mut self.staged) {
                self.ctx.executor.discard(&staged.task.id);
                self.hand_back(staged.task, staged.receipt, Duration::ZERO);
            }
        }
        self.release_later();
        let now = Instant::now();
        let mut to_observe: BTreeSet<TaskId> = std::mem::take(&mut self.pending);
        // Changed behind the ledger's back (a cancel): their copies are stale, read the store.
        for id in self.ctx.take_rereads(&self.agent.name) {
            if self.active.contains_key(&id) || self.claiming.contains(&id) {
                self.stale.insert(id.clone());
                to_observe.insert(id);
            } else if self.staging.contains(&id) {
                self.deferred.insert(id);
            } else if let Some(at) = self.staged.iter().position(|s| s.task.id == id) {
                if let Some(staged) = self.staged.remove(at) {
                    self.unstage(staged);
                    to_observe.insert(id);
                }
            }
        }
        let resync = !self.resyncing
            && now.duration_since(self.last_resync) >= self.ctx.settings.resync_interval;
        if resync {
            self.last_resync = now;
        }
        let wall = now_ms();
        for task in self.active.values() {
            if task.deadline_at.is_some_and(|d| wall >= d) || task.cancel_requested {
                to_observe.insert(task.id.clone());
            }
        }
        // Tasks the executor told us about are looked at through their ledger copy (no store
        // read: a copy that went stale only makes a write fail, and the task is read again).
        // The periodic resync, and tasks whose copy is known stale, read the store (a job):
        // that is how a cancel asked through the API is seen.
        let mut quick = Vec::new();
        let mut fresh = Vec::new();
        for id in to_observe {
            if self.claiming.contains(&id) {
                self.deferred.insert(id);
            } else if self.active.contains_key(&id) && !self.stale.contains(&id) {
                quick.push(id);
            } else if !resync {
                fresh.push(id);
            }
        }
        if resync {
            let staged = self.staged.iter().map(|s| &s.task.id);
            fresh = self.active.keys().chain(staged).cloned().collect();
        }
        // 1. The executor's view first: an attempt that ended frees its slot at once, before
        //    any bookkeeping.
        let looks = join_all(
            quick
                .iter()
                .map(|id| look(&self.ctx, id, self.active.get(id).cloned())),
        )
        .await;
        for (id, looked) in quick.iter().zip(&looks) {
            if let Ok(Some((_, RunState::Finished(_)))) = looked {
                self.ended.insert(id.clone());
            }
        }
        // 2. Fill the free slots.
        if !self.draining {
            self.dispatch();
        }
        // 3. Settle what was seen; read the rest.
        for (id, looked) in quick.into_iter().zip(looks) {
            self.settle_observed(id, looked).await;
        }
        if !fresh.is_empty() {
            self.resyncing = true;
            let ctx = self.ctx.clone();
            self.spawn_job(async move {
                // One after the other: a claim waiting behind them waits for one at most.
                let mut looks = Vec::with_capacity(fresh.len());
                for id in fresh {
                    let looked = look(&ctx, &id, None).await;
                    looks.push((id, looked));
                }
                Done::Looked(looks)
            });
        }
        // 4. Read ahead for the next freed slots, and get them ready; housekeeping.
        if !self.draining {
            self.read_ahead();
            self.prepare_ready();
        }
        self.store_late_handles();
        if now.duration_since(self.last_sweep) >= self.ctx.settings.sweep_interval {
            self.last_sweep = now;
            let before = now_ms() - self.ctx.settings.sweep_interval.as_millis() as Millis;
            let (ctx, name) = (self.ctx.clone(), self.agent.name.clone());
            let resends = self.resends.clone();
            self.spawn_job(async move {
                sweep(&ctx, &name, before, 1000, &resends).await;
                Done::Nothing
            });
        }
        self.flush_acks(self.draining);
        self.publish();
        if !self.pending.is_empty() {
            return Duration::ZERO;
        }
        self.next_look()
    }

    fn next_look(&mut self) -> Duration {
        let now = Instant::now();
        let wall = now_ms();
        let mut next = self.ctx.settings.resync_interval;
        let full = self.occupied() >= self.agent.max_instances as usize;
        if full && (self.backlog || !self.ready.is_empty()) {
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
            next = next.min(self.depth_interval);
        }
        if let Some(since) = self.acks_since {
            next = next.min((since + self.ack_delay()).saturating_duration_since(now));
        }
        if let Some(since) = self.later_since {
            next = next.min((since + HOLD_BACK).saturating_duration_since(now));
        }
        if let Some(since) = self.handles.values().map(|(_, _, since)| *since).min() {
            next = next.min((since + HANDLE_DELAY).saturating_duration_since(now));
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

    /// Applies what a job brought back; true when a round should follow.
    async fn apply(&mut self, done: Done) -> bool {
        match done {
            Done::Depth(depth, took) => {
                self.measuring = false;
                self.depth_interval = DEPTH_INTERVAL.max(took * DEPTH_SPACING);
                if let Some(depth) = depth {
                    self.depth = depth;
                    self.depth_fresh = true;
                    self.publish_status();
                }
                false
            }
            Done::ReadAhead {
                tasks,
                full,
                hidden_until,
            } => {
                self.reading_ahead = false;
                self.backlog = full;
                let got = !tasks.is_empty();
                let ready = tasks.into_iter().map(|(task, message)| Ready {
                    task,
                    message,
                    hidden_until,
                });
                self.ready.extend(ready);
                if self.draining || self.following || !self.ctx.is_leader() {
                    self.hand_back_ready();
                    return false;
                }
                self.prepare_ready();
                got && self.occupied() < self.agent.max_instances as usize
            }
            Done::Claimed {
                id,
                receipt,
                result,
            } => {
                self.claimed(id, receipt, result);
                true
            }
            Done::Staged {
                id,
                receipt,
                hidden_until,
                result,
            } => {
                self.staged_result(id, receipt, hidden_until, result);
                true
            }
            Done::Recorded { id, what, result } => self.recorded(id, what, result),
            Done::Looked(looks) => {
                self.resyncing = false;
                for (id, looked) in looks {
                    self.stale.remove(&id);
                    match (&looked, self.active.get(&id)) {
                        // Claimed ahead, or forgotten meanwhile: nothing to settle.
                        (_, None) => {
                            self.recheck_staged(&id, &looked);
                            continue;
                        }
                        // Written since it was read: look again through the ledger.
                        (Ok(Some((task, _))), Some(known)) if known.version > task.version => {
                            self.pending.insert(id);
                            continue;
                        }
                        _ => {}
                    }
                    // At the same version the ledger's copy is the newer: it may carry what
                    // only the attempt's next write stores (a start's clock, a handle).
                    let looked = match (looked, self.active.get(&id)) {
                        (Ok(Some((task, state))), Some(known)) if known.version == task.version => {
                            Ok(Some((known.clone(), state)))
                        }
                        (looked, _) => looked,
                    };
                    if let Ok(Some((_, RunState::Finished(_)))) = &looked {
                        self.ended.insert(id.clone());
                    }
                    self.settle_observed(id, looked).await;
                }
                true
            }
            Done::Nothing => false,
        }
    }

    // ---------------------------------------------------------------- observe

    /// Settles one observation, unless the task has a job under way (then it is looked at
    /// again once that is done).
    async fn settle_observed(&mut self, id: TaskId, looked: Looked) {
        if self.recording.contains(&id) || self.claiming.contains(&id) {
            self.deferred.insert(id);
            return;
        }
        if let Err(e) = self.settle(&id, looked).await {
            if matches!(e, StepError::Store(StoreError::Conflict { .. })) {
                // Changed by someone else (a cancel): read it again next round.
                debug!(task_id = %id, agent_type = %self.agent.name, "ledger copy was stale; reading the task again");
                self.stale.insert(id.clone());
                self.pending.insert(id);
            } else {
                warn!(task_id = %id, agent_type = %self.agent.name, error = %e, "observe failed; will look again");
            }
        }
    }

    /// Decides what follows from one task's [`look`]: record a start, an end, a retry, or
    /// enforce its deadline.
    async fn settle(&mut self, id: &str, looked: Looked) -> Result<(), StepError> {
        let Some((task, state)) = looked? else {
            // Gone, or finished elsewhere (another coordinator, a cancel of a queued task).
            self.forget(id);
            return Ok(());
        };
        self.active.insert(task.id.clone(), task.clone());
        if matches!(state, RunState::Finished(_)) {
            self.ended.insert(task.id.clone());
        } else {
            self.ended.remove(&task.id);
        }
        let wall = now_ms();
        match state {
            RunState::NotFound if task.cancel_requested => {
                self.finish(task, Outcome::Cancelled { finished_at: wall });
            }
            RunState::NotFound if task.status == Status::Dispatched => {
                // Claimed but never started (claimed ahead, or a crash between claim and
                // dispatch): start it now if a slot is free, else it waits for one like a task
                // claimed ahead. The executor's dispatch is idempotent per attempt. No message
                // is in flight for it here, so a hand-back sends a fresh one.
                if self.occupied() > self.agent.max_instances as usize {
                    self.restage(task);
                } else {
                    self.start(task).await;
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
                );
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
                    );
                }
            }
            RunState::Running { started_at } if task.status == Status::Dispatched => {
                self.mark_running(task, started_at.unwrap_or(wall), wall)
                    .await?;
            }
            RunState::Running { .. } => self.enforce_deadline(task, wall).await?,
            RunState::Finished(outcome) => self.finish(task, outcome),
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
            self.finish(task, Outcome::TimedOut { finished_at: wall });
        }
        Ok(())
    }

    /// Records the attempt's start: a job, unless its deadline already needs enforcing.
    async fn mark_running(
        &mut self,
        task: Task,
        started_at: Millis,
        wall: Millis,
    ) -> Result<(), StepError> {
        // The attempt's own limit (the submit's `timeout_seconds`, or the type's default),
        // counted from when it really started.
        let deadline = started_at + task.timeout_ms as Millis;
        let change = |t: &mut Task| {
            t.status = Status::Running;
            t.deadline_at = Some(deadline.max(t.deadline_at.unwrap_or(0)));
            if let Some(record) = t.current_attempt_mut() {
                record.started_at = Some(started_at);
            }
        };
        let grace = self.ctx.settings.timeout_grace.as_millis() as Millis;
        if task.deadline_at.is_none_or(|d| wall < d + grace) {
            self.record(&task, Recorded::Running, change);
            return Ok(());
        }
        let next = self.write(&task, change).await?;
        self.enforce_deadline(next, wall).await
    }

    /// Decides what follows an attempt's end (done, retry, requeue) and records it (a job).
    fn finish(&mut self, task: Task, outcome: Outcome) {
        let failures = task
            .attempts
            .iter()
            .filter(|a| matches!(a.outcome.as_deref(), Some("failed")))
            .count() as u32;
        // A cancel asked for while the attempt ran wins over a retry (but not over a success
        // that got there first).
        if task.cancel_requested && !matches!(outcome, Outcome::Succeeded { .. }) {
            let reason = Some("cancelled".to_string());
            return self.terminal(task, Status::Cancelled, now_ms(), None, reason);
        }
        match outcome {
            Outcome::Succeeded {
                result,
                finished_at,
            } => {
                self.breaker.record_success();
                self.terminal(task, Status::Succeeded, finished_at, result, None)
            }
            Outcome::Failed { error, finished_at }
                if failures + 1 < self.max_attempts.min(task.max_attempts) =>
            {
                self.breaker.record_success();
                self.retry(task, "failed", error, finished_at, true)
            }
            Outcome::Failed { error, finished_at } => {
                self.breaker.record_success();
                self.terminal(task, Status::Failed, finished_at, None, Some(error))
            }
            Outcome::TimedOut { finished_at } => {
                let error = format!(
                    "attempt {} exceeded its timeout of {}s",
                    task.attempt,
                    task.timeout_ms / 1000
                );
                self.terminal(task, Status::TimedOut, finished_at, None, Some(error))
            }
            Outcome::Cancelled { finished_at } => self.terminal(
                task,
                Status::Cancelled,
                finished_at,
                None,
                Some("cancelled".into()),
            ),
            Outcome::Lost {
                reason,
                finished_at,
            } => {
                // Infrastructure, not the agent: requeue without spending an attempt.
                self.breaker.record_failure(Instant::now());
                warn!(task_id = %task.id, agent_type = %task.agent_type, %reason, "attempt lost; requeueing");
                self.retry(task, "lost", reason, finished_at, false)
            }
        }
    }

    fn terminal(
        &mut self,
        task: Task,
        status: Status,
        finished_at: Millis,
        result: Option<serde_json::Value>,
        error: Option<String>,
    ) {
        let outcome = status.as_str().to_string();
        self.record(&task, Recorded::Terminal { status }, |t| {
            t.status = status;
            t.finished_at = Some(finished_at);
            // The executor's result (the local result file) wins; Nomad's success carries
            // none, and the result queue may already have put one on the task. A task that
            // did not succeed keeps none.
            t.result = match status {
                Status::Succeeded => result.or_else(|| t.result.take()),
                _ => None,
            };
            t.error = error.clone();
            t.deadline_at = None;
            if let Some(record) = t.current_attempt_mut() {
                record.finished_at = Some(finished_at);
                record.outcome = Some(outcome);
                record.error = error;
            }
        });
    }

    /// Back to `queued`, visible again after a backoff (agent failure) or at once (lost).
    fn retry(
        &mut self,
        task: Task,
        outcome: &str,
        error: String,
        finished_at: Millis,
        with_backoff: bool,
    ) {
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
        let what = Recorded::Requeued {
            delay,
            error: error.clone(),
        };
        self.record(&task, what, |t| {
            t.status = Status::Queued;
            t.not_before = not_before;
            t.deadline_at = None;
            t.executor_handle = None;
            // A result the failed attempt reported is not the task's.
            t.result = None;
            if let Some(record) = t.current_attempt_mut() {
                record.finished_at = Some(finished_at);
                record.outcome = Some(outcome.to_string());
                record.error = Some(error);
            }
        });
    }

    // ---------------------------------------------------------------- act

    /// Fills free slots with tasks read ahead: reserves each slot and starts a job that claims
    /// the task and hands it to the executor. Slots left unserved start a read-ahead.
    fn dispatch(&mut self) {
        if !self.ctx.is_leader() {
            // Leadership lost mid-round: hand everything back at once.
            self.hand_back_ready();
            return;
        }
        // A second message for a task already taken is looked at again later (it is a
        // leftover once the task is claimed).
        let mut duplicates = Vec::new();
        let mut taken_ids = self.taken_ids();
        self.ready.retain_mut(|ready| {
            // Taken already, or a second message for a task read ahead twice.
            let taken = !taken_ids.insert(ready.task.id.clone());
            if taken {
                duplicates.push(std::mem::take(&mut ready.message.receipt));
            }
            !taken
        });
        let free = (self.agent.max_instances as usize).saturating_sub(self.occupied());
        // Only slots that have a task are offered to the breaker (a half-open circuit lets
        // one probe through: it must be a real dispatch).
        let waiting = self.staged.len() + self.ready.len();
        let wanted = self.breaker.admit(free.min(waiting), Instant::now());
        let mut started = 0;
        // Claimed ahead first: they only need the executor.
        while started < wanted {
            let Some(staged) = self.staged.pop_front() else {
                break;
            };
            self.start_staged(staged);
            started += 1;
        }
        while started < wanted {
            let Some(ready) = self.ready.pop_front() else {
                break;
            };
            let id = ready.task.id.clone();
            // The claim takes the preparation with it (it starts or discards it).
            self.prepared.remove(&id);
            self.claiming.insert(id.clone());
            let (ctx, agent) = (self.ctx.clone(), self.agent.clone());
            self.jobs.spawn(async move {
                let receipt = ready.message.receipt.clone();
                let result = claim_and_dispatch(&ctx, &agent, ready.task, ready.message).await;
                Done::Claimed {
                    id,
                    receipt,
                    result,
                }
            });
            started += 1;
        }
        // Free slots with no task waiting start a receive; while the circuit is not closed,
        // only one (its probe).
        self.unserved = if self.breaker.state() == CircuitState::Closed {
            free - started
        } else {
            usize::from(free > started && self.ready.is_empty())
        };
        if free == started {
            self.claim_ahead();
        }
        if !duplicates.is_empty() {
            let (queue, name) = (self.ctx.queue.clone(), self.agent.name.clone());
            self.spawn_job(async move {
                let nacks = duplicates
                    .iter()
                    .map(|r| queue.nack(&name, r, DUPLICATE_DELAY));
                for result in join_all(nacks).await {
                    if let Err(e) = result {
                        warn!(agent_type = %name, error = %e, "could not hand back a duplicate message");
                    }
                }
                Done::Nothing
            });
        }
    }

    /// Tasks this loop has taken from the queue: in the ledger, being claimed, or claimed ahead.
    fn taken_ids(&self) -> HashSet<TaskId> {
        let staged = self.staged.iter().map(|s| &s.task.id);
        self.active
            .keys()
            .chain(&self.claiming)
            .chain(&self.staging)
            .chain(staged)
            .cloned()
            .collect()
    }

    /// Hands a task claimed ahead to the executor in a free slot (reserved like a claim). Its
    /// attempt's clock starts now, not at the claim: the ledger copy says so and the attempt's
    /// next write stores it.
    fn start_staged(&mut self, staged: Staged) {
        let Staged {
            mut task, receipt, ..
        } = staged;
        start_clock(&mut task);
        let id = task.id.clone();
        self.claiming.insert(id.clone());
        let (ctx, agent) = (self.ctx.clone(), self.agent.clone());
        self.jobs.spawn(async move {
            let began = Instant::now();
            let started = ctx.executor.dispatch(&task, &agent).await;
            Done::Claimed {
                id,
                receipt: receipt.unwrap_or_default(),
                result: Claim::Dispatched {
                    task: Box::new(task),
                    started,
                    took: began.elapsed(),
                },
            }
        });
    }

    /// While every slot is busy, claims tasks read ahead (jobs) up to the claim-ahead target,
    /// so the next freed slots start them without waiting for the store.
    fn claim_ahead(&mut self) {
        let target = self.ctx.settings.claim_ahead.min(self.read_ahead_target());
        if self.draining || self.breaker.state() != CircuitState::Closed {
            return;
        }
        while self.staged.len() + self.staging.len() < target {
            let Some(ready) = self.ready.pop_front() else {
                break;
            };
            let id = ready.task.id.clone();
            self.prepared.remove(&id);
            self.staging.insert(id.clone());
            let (ctx, agent) = (self.ctx.clone(), self.agent.clone());
            self.spawn_job(async move {
                let Ready {
                    task,
                    message,
                    hidden_until,
                } = ready;
                let receipt = message.receipt.clone();
                let result = claim(&ctx, &agent, &task, &message).await.map(|claimed| {
                    // Prepared while read ahead; prepared now if that was skipped.
                    ctx.executor.prepare(&claimed, &agent);
                    Box::new(claimed)
                });
                Done::Staged {
                    id,
                    receipt,
                    hidden_until,
                    result,
                }
            });
        }
    }

    /// Applies a claim ahead's result.
    fn staged_result(
        &mut self,
        id: TaskId,
        receipt: String,
        hidden_until: Instant,
        result: Result<Box<Task>, Option<StepError>>,
    ) {
        self.staging.remove(&id);
        let deferred = self.deferred.remove(&id);
        let task = match result {
            Ok(task) => *task,
            Err(None) => return,
            Err(Some(e)) => {
                warn!(task_id = %id, agent_type = %self.agent.name, error = %e, "could not claim ahead; the message will be redelivered");
                return;
            }
        };
        if self.following {
            // The new leader adopts it from the store (its message is a leftover then).
            self.ctx.executor.discard(&id);
            return;
        }
        let staged = Staged {
            task,
            receipt: Some(receipt),
            hidden_until,
        };
        if deferred {
            // Changed meanwhile (a cancel): settle it like any claimed task.
            self.unstage(staged);
        } else {
            self.staged.push_back(staged);
        }
    }

    /// Takes a task claimed ahead into the ledger to be looked at from the store (it changed
    /// behind the loop's back: a cancel). It holds a slot until settled; a look that finds it
    /// still to be started starts it, or puts it back when no slot is free
    /// ([`AgentLoop::settle`]).
    fn unstage(&mut self, staged: Staged) {
        let Staged { task, receipt, .. } = staged;
        let id = task.id.clone();
        self.ctx.executor.discard(&id);
        if let Some(receipt) = receipt {
            self.queue_ack(&id, receipt);
        }
        self.active.insert(id.clone(), task);
        self.stale.insert(id.clone());
        self.pending.insert(id);
    }

    /// A resync's read of a task claimed ahead: if it changed since the claim (a cancel asked
    /// through another coordinator), it is settled from the store like any claimed task.
    fn recheck_staged(&mut self, id: &str, looked: &Looked) {
        let Some(at) = self.staged.iter().position(|s| s.task.id == id) else {
            return;
        };
        let changed = match looked {
            Ok(Some((task, _))) => task.version != self.staged[at].task.version,
            Ok(None) => true,
            Err(_) => false,
        };
        if changed {
            if let Some(staged) = self.staged.remove(at) {
                self.unstage(staged);
            }
        }
    }

    /// Applies a claim job's result.
    fn claimed(&mut self, id: TaskId, receipt: String, result: Claim) {
        self.claiming.remove(&id);
        self.release_later();
        let deferred = self.deferred.remove(&id);
        let (task, started, took) = match result {
            Claim::NotClaimed(None) => return,
            Claim::NotClaimed(Some(e)) => {
                warn!(task_id = %id, agent_type = %self.agent.name, error = %e, "could not claim; the message will be redelivered");
                return;
            }
            Claim::Dispatched {
                task,
                started,
                took,
            } => (*task, started, took),
        };
        if self.following {
            // Leadership was lost meanwhile: the new leader adopts the task from the store.
            if started.is_ok() {
                self.queue_ack(&id, receipt);
            }
            return;
        }
        self.active.insert(task.id.clone(), task.clone());
        if deferred {
            self.pending.insert(task.id.clone());
        }
        match started {
            Ok(handle) => {
                metrics::dispatch_took(took);
                debug!(task_id = %task.id, agent_type = %self.agent.name, attempt = task.attempt, %handle, "dispatched");
                self.pending.insert(task.id.clone());
                self.record_handle(&task, handle);
                self.queue_ack(&id, receipt);
            }
            Err(err) => {
                // No receipt: a claim found on recovery, whose hand-back sends a new message.
                let held = (!receipt.is_empty()).then(|| receipt.clone());
                if self.dispatch_failed(task, err, held) {
                    self.queue_ack(&id, receipt);
                }
            }
        }
    }

    /// Notes the executor's handle of a dispatched attempt, if it is new, for the attempt's
    /// next write (see [`HANDLE_DELAY`]).
    fn record_handle(&mut self, task: &Task, handle: String) {
        if task.executor_handle.as_deref() != Some(handle.as_str()) {
            let since = Instant::now();
            self.handles
                .insert(task.id.clone(), (task.attempt, handle, since));
        }
    }

    /// Writes the handles that found no write to ride along with in time.
    fn store_late_handles(&mut self) {
        let due: Vec<TaskId> = self
            .handles
            .iter()
            .filter(|(id, (_, _, since))| {
                since.elapsed() >= HANDLE_DELAY
                    && !self.recording.contains(*id)
                    && !self.claiming.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            match self.active.get(&id).cloned() {
                Some(task) => self.record(&task, Recorded::Handle, |_| {}),
                None => {
                    self.handles.remove(&id);
                }
            }
        }
    }

    /// Puts the attempt's handle noted by [`AgentLoop::record_handle`] on `next`, a copy of the
    /// task about to be written.
    fn with_noted_handle(&self, next: &mut Task) {
        let Some((attempt, handle, _)) = self.handles.get(&next.id) else {
            return;
        };
        if *attempt != next.attempt {
            return;
        }
        next.executor_handle = Some(handle.clone());
        if let Some(record) = next.current_attempt_mut() {
            record.handle = Some(handle.clone());
        }
    }

    /// Forgets a noted handle once a write stored it (or its attempt is over).
    fn handle_stored(&mut self, stored: &Task) {
        let done = self
            .handles
            .get(&stored.id)
            .is_some_and(|(attempt, handle, _)| {
                *attempt != stored.attempt
                    || stored
                        .attempts
                        .iter()
                        .rev()
                        .find(|a| a.attempt == stored.attempt)
                        .and_then(|a| a.handle.as_deref())
                        == Some(handle.as_str())
            });
        if done {
            self.handles.remove(&stored.id);
        }
    }

    /// Takes a claimed attempt found never started out of the ledger, to wait for a slot.
    fn restage(&mut self, task: Task) {
        let id = task.id.clone();
        self.active.remove(&id);
        self.ended.remove(&id);
        self.stale.remove(&id);
        self.ctx.executor.prepare(&task, &self.agent);
        self.receipts.remove(&id);
        self.staged.push_front(Staged {
            task,
            receipt: None,
            hidden_until: Instant::now(),
        });
    }

    /// Hands a claimed attempt found never started to the executor (recovery).
    async fn start(&mut self, mut task: Task) {
        start_clock(&mut task);
        self.active.insert(task.id.clone(), task.clone());
        let began = Instant::now();
        match self.ctx.executor.dispatch(&task, &self.agent).await {
            Ok(handle) => {
                metrics::dispatch_took(began.elapsed());
                debug!(task_id = %task.id, agent_type = %self.agent.name, attempt = task.attempt, %handle, "dispatched");
                self.pending.insert(task.id.clone());
                self.record_handle(&task, handle);
            }
            Err(err) => {
                self.dispatch_failed(task, err, None);
            }
        }
    }

    /// Settles a dispatch the executor refused (the task fails) or could not take (the attempt
    /// is given back and the task is queued again, its message visible after a backoff: the
    /// received one when `receipt` is given, else a new one). True when the message is done
    /// with.
    fn dispatch_failed(&mut self, task: Task, err: ExecError, receipt: Option<String>) -> bool {
        match err {
            ExecError::Rejected { message } => {
                warn!(task_id = %task.id, agent_type = %self.agent.name, error = %message, "executor refused the task");
                self.terminal(task, Status::Failed, now_ms(), None, Some(message));
                true
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
                self.hand_back(task, receipt, delay);
                false
            }
        }
    }

    /// Gives back a claimed attempt that never started: the task is queued again (its attempt
    /// number returned), and its message made visible after `delay` (the received one when
    /// `receipt` is given, else a new one). A job.
    fn hand_back(&mut self, task: Task, receipt: Option<String>, delay: Duration) {
        let not_before = now_ms() + delay.as_millis() as Millis;
        let mut next = task.clone();
        // The attempt never started: give its number back.
        next.attempts.retain(|a| a.attempt != next.attempt);
        next.attempt = next.attempt.saturating_sub(1);
        next.status = Status::Queued;
        next.deadline_at = None;
        next.not_before = not_before;
        next.updated_at = now_ms();
        next.fence = self.ctx.fence();
        self.recording.insert(task.id.clone());
        let (ctx, name) = (self.ctx.clone(), self.agent.name.clone());
        self.spawn_job(async move {
            let result = ctx.store.update(&next, task.version).await.map(Box::new);
            if let Ok(stored) = &result {
                let back = match &receipt {
                    Some(receipt) => ctx.queue.nack(&name, receipt, delay).await,
                    None => {
                        let send = ctx.queue.send(&name, &stored.id, stored.priority, delay);
                        send.await
                    }
                };
                if let Err(e) = back {
                    warn!(task_id = %stored.id, error = %e, "could not hand the message back; it reappears after its visibility timeout (or the sweep sends it)");
                }
            }
            Done::Recorded {
                id: next.id,
                what: Recorded::HandedBack,
                result,
            }
        });
    }

    /// Queues a dispatched task's message for deletion (see [`AgentLoop::flush_acks`]).
    fn queue_ack(&mut self, id: &str, receipt: String) {
        if receipt.is_empty() {
            // A claim found on recovery: no message of ours.
            return;
        }
        self.acks_since.get_or_insert_with(Instant::now);
        self.receipts.insert(id.to_owned(), receipt.clone());
        self.acks.push((id.to_owned(), receipt));
        self.flush_acks(false);
    }

    /// The receipt of the message a task was dispatched from, taken out of the ack batch: it
    /// is deleted (again, if a batch already did: harmless) before the task is queued again,
    /// because a queue that ignores a send for a task whose message is still there, as the
    /// embedded one does, must not lose the new message to a late delete of the old one.
    fn take_ack(&mut self, id: &str) -> Option<String> {
        if let Some(at) = self.acks.iter().position(|(task, _)| task == id) {
            self.acks.swap_remove(at);
            if self.acks.is_empty() {
                self.acks_since = None;
            }
        }
        self.receipts.remove(id)
    }

    /// Deletes the messages of dispatched tasks (a job), in batches: once ten are waiting,
    /// once the oldest waited [`ACK_DELAY`], or now when `all`. A message deleted late is only
    /// a leftover if redelivered (the task is no longer queued), so this never risks a task.
    fn flush_acks(&mut self, all: bool) {
        let due = self
            .acks_since
            .is_some_and(|since| since.elapsed() >= self.ack_delay());
        if self.acks.is_empty() || !(all || due || self.acks.len() >= ACK_BATCH) {
            return;
        }
        self.acks_since = None;
        let receipts: Vec<String> = std::mem::take(&mut self.acks)
            .into_iter()
            .map(|(_, receipt)| receipt)
            .collect();
        let (queue, name) = (self.ctx.queue.clone(), self.agent.name.clone());
        self.spawn_job(async move {
            if let Err(e) = queue.ack_many(&name, &receipts).await {
                warn!(agent_type = %name, error = %e, "ack failed; a leftover message is dropped when redelivered");
            }
            Done::Nothing
        });
    }

    /// Longest an ack waits for a batch: well within the visibility timeout.
    fn ack_delay(&self) -> Duration {
        ACK_DELAY.min(self.ctx.settings.visibility / 4)
    }

    /// How many tasks to hold read ahead: enough to refill every slot at once, at most
    /// [`Settings::read_ahead`](super::Settings::read_ahead).
    fn read_ahead_target(&self) -> usize {
        (self.agent.max_instances as usize).min(self.ctx.settings.read_ahead)
    }

    /// Asks the executor to get ready for the next attempts of the tasks read ahead that the
    /// next freed slots will take, so a refill is a claim and a go rather than a claim and a
    /// start (a local supervisor waiting on a pipe instead of a process to spawn).
    fn prepare_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let (ctx, agent) = (&self.ctx, &self.agent);
        let taken = self.taken_ids();
        let wall = now_ms();
        // Those claimed ahead take the next slots; they were prepared while read ahead.
        let next_slots = self
            .read_ahead_target()
            .saturating_sub(self.staged.len() + self.staging.len());
        for ready in self.ready.iter().take(next_slots) {
            let id = &ready.task.id;
            if self.prepared.contains(id) || taken.contains(id) {
                continue;
            }
            ctx.executor
                .prepare(&next_attempt(&ready.task, wall, ctx.fence()), agent);
            self.prepared.insert(id.clone());
        }
    }

    /// Receives tasks (a job) for free slots that found none, and while work waits reads tasks
    /// ahead; keeps the messages of those already read hidden (a message nacked with a delay
    /// stays received under the same receipt: that is the visibility extension).
    fn read_ahead(&mut self) {
        let visibility = self.ctx.settings.visibility;
        let now = Instant::now();
        let mut extend = Vec::new();
        let held = self
            .ready
            .iter_mut()
            .map(|r| (&mut r.hidden_until, Some(&r.message.receipt)))
            .chain(
                self.staged
                    .iter_mut()
                    .map(|s| (&mut s.hidden_until, s.receipt.as_ref())),
            );
        for (hidden_until, receipt) in held {
            if let Some(receipt) = receipt {
                if hidden_until.saturating_duration_since(now) < visibility / 2 {
                    extend.push(receipt.clone());
                    // If the extension fails the message may be delivered twice: harmless.
                    *hidden_until = now + visibility;
                }
            }
        }
        if !extend.is_empty() {
            let (queue, name) = (self.ctx.queue.clone(), self.agent.name.clone());
            self.spawn_job(async move {
                let nacks = extend.iter().map(|r| queue.nack(&name, r, visibility));
                for result in join_all(nacks).await {
                    if let Err(e) = result {
                        warn!(agent_type = %name, error = %e, "could not extend a read-ahead message's visibility; it may be delivered twice (harmless)");
                    }
                }
                Done::Nothing
            });
        }
        if self.reading_ahead || !self.ctx.is_leader() {
            return;
        }
        let target = self.read_ahead_target();
        // Top up once half is used (SQS hands out at most 10 a call).
        let waiting = (self.backlog || self.depth.visible > 0)
            && self.ready.len() <= target / 2
            && self.breaker.state() == CircuitState::Closed;
        let want = if self.unserved > 0 {
            self.unserved.max(target.saturating_sub(self.ready.len()))
        } else if waiting {
            target.saturating_sub(self.ready.len())
        } else {
            0
        };
        if want == 0 {
            return;
        }
        self.reading_ahead = true;
        let urgent = self.unserved > 0;
        let (ctx, name) = (self.ctx.clone(), self.agent.name.clone());
        let job = async move {
            let hidden_until = Instant::now() + visibility;
            let (tasks, full) = match receive_and_read(&ctx, &name, want, urgent).await {
                Ok(received) => received,
                Err(e) => {
                    warn!(agent_type = %name, error = %e, "receive failed");
                    (Vec::new(), false)
                }
            };
            Done::ReadAhead {
                tasks,
                full,
                hidden_until,
            }
        };
        if urgent {
            self.jobs.spawn(job);
        } else {
            self.spawn_job(job);
        }
    }

    /// Makes every message read ahead visible again (leadership lost, shutting down).
    fn hand_back_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        for id in self.prepared.drain() {
            self.ctx.executor.discard(&id);
        }
        let receipts: Vec<String> = self.ready.drain(..).map(|r| r.message.receipt).collect();
        let (queue, name) = (self.ctx.queue.clone(), self.agent.name.clone());
        self.spawn_job(async move {
            let nacks = receipts.iter().map(|r| queue.nack(&name, r, Duration::ZERO));
            for result in join_all(nacks).await {
                if let Err(e) = result {
                    warn!(agent_type = %name, error = %e, "could not hand back a read-ahead message; it reappears after its visibility timeout");
                }
            }
            Done::Nothing
        });
    }

    // ---------------------------------------------------------------- helpers

    /// Starts a job, or holds it back while a slot is being claimed (at most [`HOLD_BACK`]):
    /// a claim is what a freed slot waits for, the rest can wait for it.
    fn spawn_job(&mut self, job: impl std::future::Future<Output = Done> + Send + 'static) {
        if self.claiming.is_empty() {
            self.jobs.spawn(job);
        } else {
            self.later_since.get_or_insert_with(Instant::now);
            self.later.push(Box::pin(job));
        }
    }

    /// Starts the jobs held back once no slot is being claimed, or they waited long enough.
    fn release_later(&mut self) {
        let waited = self
            .later_since
            .is_some_and(|since| since.elapsed() >= HOLD_BACK);
        if self.claiming.is_empty() || waited {
            self.later_since = None;
            for job in self.later.drain(..) {
                self.jobs.spawn(job);
            }
        }
    }

    /// Starts a compare-and-set write of a modified copy of `task` as a job; the loop applies
    /// its result in [`AgentLoop::recorded`]. A requeue sends the task's queue message after
    /// the write.
    fn record(&mut self, task: &Task, what: Recorded, change: impl FnOnce(&mut Task)) {
        let mut next = task.clone();
        self.with_noted_handle(&mut next);
        change(&mut next);
        next.updated_at = now_ms();
        next.fence = self.ctx.fence();
        let version = task.version;
        self.recording.insert(task.id.clone());
        let old_message = match what {
            Recorded::Requeued { .. } => self.take_ack(&task.id),
            _ => None,
        };
        let (ctx, name) = (self.ctx.clone(), self.agent.name.clone());
        self.spawn_job(async move {
            let result = ctx.store.update(&next, version).await.map(Box::new);
            if let Some(receipt) = old_message {
                if let Err(e) = ctx.queue.ack(&name, &receipt).await {
                    warn!(agent_type = %name, error = %e, "ack failed; a leftover message is dropped when redelivered");
                }
            }
            if let (Ok(stored), Recorded::Requeued { delay, .. }) = (&result, &what) {
                let send = ctx.queue.send(&name, &stored.id, stored.priority, *delay);
                if let Err(e) = send.await {
                    warn!(task_id = %stored.id, error = %e, "re-enqueue failed; the sweep sends it again");
                }
            }
            Done::Recorded {
                id: next.id,
                what,
                result,
            }
        });
    }

    /// Applies a recording job's result; true when a round should follow.
    fn recorded(
        &mut self,
        id: TaskId,
        what: Recorded,
        result: Result<Box<Task>, StoreError>,
    ) -> bool {
        self.recording.remove(&id);
        // Observations that waited for the write are made again (unless it finished the task).
        let mut round = self.deferred.remove(&id);
        if round {
            self.pending.insert(id.clone());
        }
        let stored = match result {
            Ok(stored) => {
                self.handle_stored(&stored);
                stored
            }
            Err(StoreError::Conflict { .. }) => {
                // Changed by someone else (a cancel): read it again.
                self.stale.insert(id.clone());
                self.pending.insert(id);
                return true;
            }
            Err(e) => {
                // Left as it is in the ledger: the next resync looks again.
                warn!(task_id = %id, agent_type = %self.agent.name, error = %e, "could not record a task's progress; will look again");
                return round;
            }
        };
        match what {
            Recorded::Handle | Recorded::Running => {
                // Newer than the ledger's copy unless the ledger was rebuilt since.
                if let Some(known) = self.active.get_mut(&id) {
                    if known.version < stored.version {
                        *known = *stored;
                    }
                }
            }
            Recorded::Terminal { status } => {
                metrics::task_finished(&self.agent.name, status.as_str());
                info!(task_id = %id, agent_type = %self.agent.name, status = status.as_str(), "task finished");
                round |= self.forget(&id);
            }
            Recorded::Requeued { delay, error } => {
                info!(task_id = %id, agent_type = %self.agent.name, attempt = stored.attempt, delay_ms = delay.as_millis() as u64, %error, "attempt ended; task requeued");
                self.forget(&id);
                if !delay.is_zero() {
                    let at = Instant::now() + delay;
                    self.next_retry = Some(self.next_retry.map_or(at, |r| r.min(at)));
                }
                // A round: to look again when the retry is due.
                round = true;
            }
            Recorded::HandedBack => {
                round |= self.forget(&id);
            }
        }
        round
    }

    /// Compare-and-set write of a modified copy of `task`, waited for; updates the ledger.
    async fn write(
        &mut self,
        task: &Task,
        change: impl FnOnce(&mut Task),
    ) -> Result<Task, StepError> {
        let mut next = task.clone();
        self.with_noted_handle(&mut next);
        change(&mut next);
        next.updated_at = now_ms();
        next.fence = self.ctx.fence();
        let stored = self.ctx.store.update(&next, task.version).await?;
        self.handle_stored(&stored);
        if stored.status.is_active() {
            self.active.insert(stored.id.clone(), stored.clone());
        }
        Ok(stored)
    }

    /// Slots in use: the ledger's tasks whose attempt has not ended, and slots being claimed.
    fn occupied(&self) -> usize {
        let ended = self
            .ended
            .iter()
            .filter(|id| self.active.contains_key(*id))
            .count();
        self.active.len() - ended + self.claiming.len()
    }

    /// Drops a task from the ledger; true when that freed a slot (one not already freed when
    /// its attempt ended).
    fn forget(&mut self, id: &str) -> bool {
        self.stale.remove(id);
        self.receipts.remove(id);
        self.handles.remove(id);
        self.pending.remove(id);
        self.deferred.remove(id);
        let was_ended = self.ended.remove(id);
        self.ctx.disown(id);
        let freed = self.active.remove(id).is_some() && !was_ended;
        if freed {
            // Fill it in the next round.
            self.wake.notify_one();
        }
        freed
    }

    /// Publishes the type's status, and measures the queue depth (a job) at most every
    /// [`DEPTH_INTERVAL`], or less often when measuring is slow (a COUNT on SQLite, an API call
    /// on SQS).
    fn publish(&mut self) {
        let now = Instant::now();
        let due = self
            .depth_measured_at
            .is_none_or(|at| now.duration_since(at) >= self.depth_interval);
        if due && !self.measuring {
            self.measuring = true;
            self.depth_measured_at = Some(now);
            let (queue, name) = (self.ctx.queue.clone(), self.agent.name.clone());
            self.spawn_job(async move {
                let began = Instant::now();
                let depth = queue.depth(&name).await.ok();
                Done::Depth(depth, began.elapsed())
            });
        }
        self.publish_status();
    }

    fn publish_status(&mut self) {
        let depth = self.depth;
        let queued = depth.visible + depth.delayed;
        let running = self.occupied();
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
        let fresh = std::mem::take(&mut self.depth_fresh);
        self.ctx.set_status(&self.agent.name, status, fresh);
    }
}

/// Re-sends queued tasks of `agent_type` last written before `before` (a crash between the
/// store write and the queue send leaves a task with no message; on SQLite sending one that
/// waits is a no-op, on SQS a second message), each as often as `resends` allows.
async fn sweep(
    ctx: &Context,
    agent_type: &str,
    before: Millis,
    limit: usize,
    resends: &std::sync::Mutex<ResendBackoff>,
) {
    let tasks = match ctx.store.stale_queued(agent_type, before, limit).await {
        Ok(tasks) => tasks,
        Err(e) => return warn!(%agent_type, error = %e, "sweep failed"),
    };
    let stale: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    let due: HashSet<TaskId> = match resends.lock() {
        Ok(mut resends) => resends.due(&stale, Instant::now()).into_iter().collect(),
        Err(_) => stale.into_iter().collect(),
    };
    for task in tasks.into_iter().filter(|t| due.contains(&t.id)) {
        let delay = Duration::from_millis(task.not_before.saturating_sub(now_ms()).max(0) as u64);
        if let Err(e) = ctx
            .queue
            .send(agent_type, &task.id, task.priority, delay)
            .await
        {
            warn!(task_id = %task.id, error = %e, "re-enqueue failed");
        }
    }
}

/// Receives up to `max` messages and reads their tasks: the tasks that may be claimed, and
/// whether the receive got all it asked for. `urgent` (slots wait for them): the reads run
/// concurrently; otherwise one after the other, so a claim never queues behind many of them.
async fn receive_and_read(
    ctx: &Context,
    agent_type: &str,
    max: usize,
    urgent: bool,
) -> Result<(Vec<(Task, Message)>, bool), StepError> {
    let messages = ctx
        .queue
        .receive(agent_type, max, ctx.settings.visibility)
        .await?;
    let full = messages.len() == max;
    let prepared = if urgent {
        join_all(messages.into_iter().map(|m| prepare(ctx, agent_type, m))).await
    } else {
        let mut prepared = Vec::with_capacity(messages.len());
        for m in messages {
            prepared.push(prepare(ctx, agent_type, m).await);
        }
        prepared
    };
    let mut out = Vec::with_capacity(prepared.len());
    for result in prepared {
        match result {
            Ok(Some(ready)) => out.push(ready),
            Ok(None) => {}
            Err(e) => {
                warn!(%agent_type, error = %e, "could not read a received task; the message will be redelivered")
            }
        }
    }
    Ok((out, full))
}

/// Reads the task behind a received `message`. Leftover, early or unknown-task messages are
/// settled here and give `None`; otherwise the task is queued and may be claimed.
async fn prepare(
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
    Ok(Some((task, message)))
}

/// Claims the next attempt of `task` (read by [`prepare`]; `queued → dispatched`, attempt + 1)
/// with a compare-and-set, then hands it to the executor. A task that changed since it was
/// read is not claimed, and its message is handed back.
async fn claim_and_dispatch(
    ctx: &Context,
    agent: &AgentType,
    task: Task,
    message: Message,
) -> Claim {
    let claimed = match claim(ctx, agent, &task, &message).await {
        Ok(claimed) => claimed,
        Err(e) => return Claim::NotClaimed(e),
    };
    let began = Instant::now();
    let started = ctx.executor.dispatch(&claimed, agent).await;
    Claim::Dispatched {
        task: Box::new(claimed),
        started,
        took: began.elapsed(),
    }
}

/// Starts the clock of a claimed attempt as it is handed to the executor (it may have waited
/// for a slot since its claim): its deadline and dispatch time count from now. The ledger copy
/// carries them until the attempt's next write stores them.
fn start_clock(task: &mut Task) {
    let wall = now_ms();
    task.deadline_at = Some(wall + task.timeout_ms as Millis);
    if let Some(record) = task.current_attempt_mut() {
        record.dispatched_at = wall;
    }
}

/// The next attempt of `task`, claimed at `wall` (`queued → dispatched`, attempt + 1).
fn next_attempt(task: &Task, wall: Millis, fence: u64) -> Task {
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
    next.fence = fence;
    next
}

/// Claims the next attempt of `task` with a compare-and-set. Executor notifications for it
/// reach this loop from then on. When the claim fails, the executor drops what it prepared for
/// the task; a task someone else moved (a cancel, another coordinator, a duplicate message
/// claimed first) has its message handed back to be looked at again later; other errors are
/// returned.
async fn claim(
    ctx: &Context,
    agent: &AgentType,
    task: &Task,
    message: &Message,
) -> Result<Task, Option<StepError>> {
    let next = next_attempt(task, now_ms(), ctx.fence());
    match ctx.store.update(&next, task.version).await {
        Ok(claimed) => {
            ctx.own(&claimed.id, &agent.name);
            Ok(claimed)
        }
        Err(e) => {
            ctx.executor.discard(&task.id);
            if !matches!(e, StoreError::Conflict { .. }) {
                return Err(Some(e.into()));
            }
            let nack = ctx
                .queue
                .nack(&agent.name, &message.receipt, Duration::from_millis(50));
            Err(nack.await.err().map(StepError::from))
        }
    }
}

/// Observes one task: its stored state (or `cached`, the ledger's copy) and, while it is
/// active, the executor's view of its attempt (stopping it first when a cancel was asked).
/// `None`: gone or no longer active.
async fn look(ctx: &Context, id: &str, cached: Option<Task>) -> Looked {
    let task = match cached {
        Some(task) => task,
        None => match ctx.store.get(id).await? {
            Some(task) => task,
            None => return Ok(None),
        },
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
