//! The scheduler: one reconcile loop per agent type (DESIGN.md §7).
//!
//! Each loop observes (its ledger of dispatched/running tasks from the store, the executor's
//! view of them, queue depth), decides (free slots = `max_instances` − active, within the
//! circuit breaker) and acts (receive messages in priority order, claim each attempt with a
//! compare-and-set, dispatch, record the handle, delete the message), then returns when to
//! look again. It wakes at once on new work ([`Context::wake`]) and on executor changes.
//!
//! A freed slot is refilled as soon as the executor reports the attempt ended: the loop holds
//! tasks read ahead (received and read, up to [`Settings::read_ahead`]) whose attempts the
//! executor prepares ([`Executor::prepare`]), and while every slot is busy it claims the next
//! ones ahead ([`Settings::claim_ahead`]), so a refill is just the executor's start. Everything
//! else (recording outcomes and handles, deleting messages in batches, reading ahead, measuring
//! the depth) runs as jobs the loop does not wait for (see `agent_loop.rs`).
//!
//! # Tasks claimed ahead
//!
//! A task claimed ahead is `dispatched` in the store (the claim is the same compare-and-set)
//! but holds no slot and has not started: `max_instances` bounds what runs, and the status
//! page's running count leaves them out. Its attempt's clock starts when it is handed to the
//! executor (`deadline_at` and `dispatched_at` are moved there and stored with the attempt's
//! next write). A cancel through this coordinator settles it before it starts; one through
//! another coordinator is seen at the next resync, or by the attempt's first write if a slot
//! started it first (then it is stopped like any running attempt). On shutdown they are given back (queued, their attempt number returned,
//! their message visible again); a coordinator that dies leaves them `dispatched`, and the
//! next one starts them as slots free up, like any claimed attempt that never started.

mod agent_loop;
pub mod breaker;
mod resend;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::config::Inputs;
use crate::executor::Executor;
use crate::queue::TaskQueue;
use crate::store::TaskStore;
use crate::task::TaskId;

/// Tunables of the reconcile loops; defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a received message stays hidden while its task is claimed and dispatched.
    pub visibility: Duration,
    /// First retry delay; doubles per failed attempt up to `retry_cap`, ±25 % jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How often every active task is re-observed even without a change notification.
    pub resync_interval: Duration,
    /// How often queued tasks without a queue message (crash between store and queue) are re-sent.
    pub sweep_interval: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Past its deadline plus this, an attempt is stopped as timed out.
    pub timeout_grace: Duration,
    /// A dispatched attempt that has not started after this is requeued (never placed).
    pub pending_limit: Duration,
    /// Most tasks a loop holds read ahead (received and read, not yet claimed) while work
    /// waits, so a freed slot costs one compare-and-set; at most `max_instances` of the type.
    /// They may run after a higher-priority task that arrives later; 0 turns read-ahead off.
    pub read_ahead: usize,
    /// Most tasks a loop claims ahead while every slot is busy (claimed in the store as
    /// `dispatched`, their attempt prepared, not started): a freed slot then starts one without
    /// waiting for the store. At most `max_instances` and `read_ahead`; like tasks read ahead,
    /// they may run before a higher-priority task that arrives later. 0 turns it off.
    pub claim_ahead: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            visibility: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
            resync_interval: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            timeout_grace: Duration::from_secs(2),
            pending_limit: Duration::from_secs(300),
            read_ahead: 10,
            claim_ahead: 10,
        }
    }
}

/// What `GET /agents` and the metrics show of one agent type.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentStatus {
    pub max_instances: u32,
    pub queued: u64,
    pub running: usize,
    pub capacity: usize,
    pub circuit: &'static str,
}

/// Everything a reconcile loop and the HTTP handlers share: the backends behind their traits.
pub struct Context {
    pub store: Arc<dyn TaskStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub executor: Arc<dyn Executor>,
    pub inputs: Arc<Inputs>,
    pub settings: Settings,
    /// Fencing token written with every transition (Consul lock index; 0 single-instance).
    pub fence: AtomicU64,
    /// Whether this coordinator may dispatch: it holds the leader lock (always true for a
    /// single instance). Set through [`Context::set_leadership`].
    leader: std::sync::atomic::AtomicBool,
    /// Per agent type, how the outside world nudges its loop.
    signals: HashMap<String, Signals>,
    /// Which agent type owns each active task, to route executor notifications.
    owners: Mutex<HashMap<TaskId, String>>,
    statuses: RwLock<BTreeMap<String, AgentStatus>>,
    /// Tasks accepted per agent type since its loop last measured the queue depth.
    accepted_since_publish: HashMap<String, AtomicU64>,
}

/// One agent type's loop as the rest of the coordinator reaches it.
#[derive(Default)]
struct Signals {
    /// Look now (new work, cancel, leadership change).
    wake: Arc<Notify>,
    /// Tasks changed outside the loop (a cancel through the API) whose ledger copy it must
    /// re-read from the store on its next round.
    rereads: Mutex<Vec<TaskId>>,
}

impl Context {
    pub fn new(
        store: Arc<dyn TaskStore>,
        queue: Arc<dyn TaskQueue>,
        executor: Arc<dyn Executor>,
        inputs: Arc<Inputs>,
        settings: Settings,
    ) -> Arc<Context> {
        let signals = inputs
            .agent_types
            .keys()
            .map(|t| (t.clone(), Signals::default()))
            .collect();
        let statuses = inputs
            .agent_types
            .values()
            .map(|a| {
                let status = AgentStatus {
                    max_instances: a.max_instances,
                    capacity: a.max_instances as usize,
                    circuit: "closed",
                    ..Default::default()
                };
                (a.name.clone(), status)
            })
            .collect();
        let accepted_since_publish = inputs_types(&inputs);
        Arc::new(Context {
            store,
            queue,
            executor,
            inputs,
            settings,
            fence: AtomicU64::new(0),
            leader: std::sync::atomic::AtomicBool::new(true),
            signals,
            owners: Mutex::new(HashMap::new()),
            statuses: RwLock::new(statuses),
            accepted_since_publish,
        })
    }

    /// Queue depth of `agent_type` as last measured plus tasks accepted since (for the
    /// `task_queue_size` cap; may lag by one reconcile round).
    pub fn queued_estimate(&self, agent_type: &str) -> u64 {
        let measured = self
            .statuses
            .read()
            .ok()
            .and_then(|s| s.get(agent_type).map(|a| a.queued))
            .unwrap_or(0);
        let since = self
            .accepted_since_publish
            .get(agent_type)
            .map_or(0, |c| c.load(Ordering::Relaxed));
        measured + since
    }

    pub fn count_accepted(&self, agent_type: &str) {
        if let Some(counter) = self.accepted_since_publish.get(agent_type) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells `agent_type`'s loop to look now (new task, cancel).
    pub fn wake(&self, agent_type: &str) {
        if let Some(signals) = self.signals.get(agent_type) {
            signals.wake.notify_one();
        }
    }

    /// Tells `agent_type`'s loop that `task_id` changed in the store behind its back (a
    /// cancel asked through the API): the loop re-reads it now instead of at its next resync.
    pub fn reread(&self, agent_type: &str, task_id: &str) {
        if let Some(signals) = self.signals.get(agent_type) {
            if let Ok(mut ids) = signals.rereads.lock() {
                ids.push(task_id.to_owned());
            }
        }
        self.wake(agent_type);
    }

    /// As [`Self::reread`], for a writer that knows only the task (the result consumer): the
    /// loop holding it, if one does, re-reads it before its own next write instead of losing
    /// a compare-and-set to this one.
    pub(crate) fn reread_held(&self, task_id: &str) {
        if let Some(agent_type) = self.owner_of(task_id) {
            self.reread(&agent_type, task_id);
        }
    }

    /// The tasks [`Self::reread`] asked `agent_type`'s loop to read again.
    pub(crate) fn take_rereads(&self, agent_type: &str) -> Vec<TaskId> {
        self.signals
            .get(agent_type)
            .and_then(|s| {
                s.rereads
                    .lock()
                    .ok()
                    .map(|mut ids| std::mem::take(&mut *ids))
            })
            .unwrap_or_default()
    }

    pub fn fence(&self) -> u64 {
        self.fence.load(Ordering::SeqCst)
    }

    /// Whether the loops may dispatch and write (this coordinator holds the leader lock).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Leadership from the leader lock: while `leader`, `fence` (the lock's `LockIndex`) is
    /// written with every transition; losing it stops dispatching at once. Wakes every loop.
    pub fn set_leadership(&self, leader: bool, fence: u64) {
        if leader {
            self.fence.store(fence, Ordering::SeqCst);
        }
        self.leader.store(leader, Ordering::SeqCst);
        for signals in self.signals.values() {
            signals.wake.notify_one();
        }
    }

    pub fn agent_statuses(&self) -> BTreeMap<String, AgentStatus> {
        self.statuses.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_status(&self, agent_type: &str, status: AgentStatus, depth_measured: bool) {
        if depth_measured {
            if let Some(counter) = self.accepted_since_publish.get(agent_type) {
                counter.store(0, Ordering::Relaxed);
            }
        }
        if let Ok(mut statuses) = self.statuses.write() {
            statuses.insert(agent_type.to_string(), status);
        }
    }

    fn own(&self, task_id: &str, agent_type: &str) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.insert(task_id.to_string(), agent_type.to_string());
        }
    }

    fn disown(&self, task_id: &str) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.remove(task_id);
        }
    }

    fn owner_of(&self, task_id: &str) -> Option<String> {
        self.owners
            .lock()
            .ok()
            .and_then(|o| o.get(task_id).cloned())
    }
}

fn inputs_types(inputs: &Inputs) -> HashMap<String, AtomicU64> {
    inputs
        .agent_types
        .keys()
        .map(|t| (t.clone(), AtomicU64::new(0)))
        .collect()
}

/// Runs one loop per agent type until `shutdown` turns true; then each loop stops taking
/// work and returns once its active tasks are recorded as finished. The caller bounds that
/// wait with its shutdown grace (unfinished local agents keep running and are re-adopted).
pub async fn run(
    ctx: Arc<Context>,
    mut changes: mpsc::UnboundedReceiver<TaskId>,
    shutdown: watch::Receiver<bool>,
) {
    let mut routes = HashMap::new();
    let mut loops = JoinSet::new();
    for agent in ctx.inputs.agent_types.values() {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert(agent.name.clone(), tx);
        let waker = ctx
            .signals
            .get(&agent.name)
            .map(|s| s.wake.clone())
            .unwrap_or_default();
        let agent_loop = agent_loop::AgentLoop::new(ctx.clone(), agent.clone(), rx, waker);
        loops.spawn(agent_loop.run(shutdown.clone()));
    }
    // Weak: the executor inside the context holds the sender of `changes`, so a strong
    // reference here would keep both alive for good if this future were dropped (aborted).
    let router_ctx = Arc::downgrade(&ctx);
    let router = tokio::spawn(async move {
        while let Some(task_id) = changes.recv().await {
            let Some(ctx) = router_ctx.upgrade() else {
                return;
            };
            if let Some(route) = ctx.owner_of(&task_id).and_then(|t| routes.get(&t)) {
                let _ = route.send(task_id);
            }
        }
    });
    while loops.join_next().await.is_some() {}
    router.abort();
}
