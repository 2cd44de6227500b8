//! Conformance suites every [`TaskStore`] and [`TaskQueue`] backend must pass.
//!
//! Generic over the traits, so each backend's test file instantiates the same checks:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn store_conformance() {
//!     run_store_suite(|| MyBackend::connect_for_tests()).await;
//! }
//! ```
//!
//! `make` is called once per check. It may return a fresh backend or another handle on a
//! shared one: every check works in its own agent types (`<namespace>-<check>`, the namespace
//! random per run unless given), so checks neither see nor disturb each other's data, and
//! checks over all agent types (`counts`, `list` without an agent type) only assert about
//! their own tasks. A backend whose queues must exist beforehand (SQS) creates
//! [`queue_agent_types`] first. Every check runs under a timeout, so a hang fails instead of
//! stalling CI.
//!
//! Not test-only code (another crate's tests or `serve --self-test` may use it), but it panics
//! on any deviation: that is its job.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use crate::queue::{Depth, Message, QueueError, TaskQueue};
use crate::store::{Created, StoreError, TaskFilter, TaskStore};
use crate::task::{now_ms, NewTask, Status, Task};

/// How long one check may take before it is failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Knobs for backends whose guarantees or timing granularity differ.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Prefix of every agent type the suite uses.
    pub namespace: String,
    /// Base time unit of the queue checks: visibility timeouts and delays are small multiples
    /// of it. 200 ms by default; a backend with whole-second visibility (SQS) sets 1 s.
    pub tick: Duration,
    /// Receive is strictly highest priority first, across priorities (SQS: with a priority
    /// tier per priority the `priority` check sends, see [`PRIORITY_CHECK_PRIORITIES`]).
    pub priority_order: bool,
    /// Messages of one priority are received in the order they were sent (only checked with
    /// `priority_order`).
    pub fifo_within_priority: bool,
    /// Sending a task id that is already waiting is a no-op (the trait allows a backend not
    /// to guarantee it).
    pub dedup_waiting_sends: bool,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        SuiteOptions {
            namespace: format!("c{}", &random[..10]),
            tick: Duration::from_millis(200),
            priority_order: true,
            fifo_within_priority: true,
            dedup_waiting_sends: true,
        }
    }
}

impl SuiteOptions {
    /// The agent type a check works in.
    pub fn agent_type(&self, check: &str) -> String {
        format!("{}-{check}", self.namespace)
    }
}

/// Names of the queue checks, in run order; `<namespace>-<name>` (and `-b`) are their queues.
pub const QUEUE_CHECKS: &[&str] = &[
    "receive-ack",
    "max",
    "visibility",
    "nack",
    "priority",
    "delayed",
    "depth",
    "isolation",
    "dedup",
    "receipts",
    "extend",
];

/// Every priority the `priority` check sends (to `<namespace>-priority`), highest first: a
/// backend ordered only across queues (SQS tiers) gives each its own.
pub const PRIORITY_CHECK_PRIORITIES: &[i64] = &[10, 5, 0, -1];

/// Every agent type the queue suite sends to, for backends that must create queues first.
pub fn queue_agent_types(options: &SuiteOptions) -> Vec<String> {
    QUEUE_CHECKS
        .iter()
        .flat_map(|check| {
            [
                options.agent_type(check),
                format!("{}-b", options.agent_type(check)),
            ]
        })
        .collect()
}

async fn guarded<F: Future<Output = ()>>(name: &str, check: F) {
    if tokio::time::timeout(CHECK_TIMEOUT, check).await.is_err() {
        panic!("conformance check `{name}` did not finish within {CHECK_TIMEOUT:?}");
    }
}

/// Runs every store check with default options.
pub async fn run_store_suite<S: TaskStore>(make: impl Fn() -> S) {
    run_store_suite_with(make, &SuiteOptions::default()).await
}

pub async fn run_store_suite_with<S: TaskStore>(make: impl Fn() -> S, o: &SuiteOptions) {
    guarded("create_and_get", check_create_and_get(&make(), o)).await;
    guarded("idempotent_create", check_idempotent_create(&make(), o)).await;
    guarded("update_cas", check_update_cas(&make(), o)).await;
    guarded("transitions", check_transitions(&make(), o)).await;
    guarded("concurrent_cas", check_concurrent_cas(&make(), o)).await;
    guarded("fencing", check_fencing(&make(), o)).await;
    guarded("list_paging", check_list_paging(&make(), o)).await;
    guarded("bad_cursor", check_bad_cursor(&make(), o)).await;
    guarded("active_and_counts", check_active_and_counts(&make(), o)).await;
    guarded("stale_queued", check_stale_queued(&make(), o)).await;
    guarded("ping", async { make().ping().await.expect("ping") }).await;
}

/// Runs every queue check with default options.
pub async fn run_queue_suite<Q: TaskQueue>(make: impl Fn() -> Q) {
    run_queue_suite_with(make, &SuiteOptions::default()).await
}

pub async fn run_queue_suite_with<Q: TaskQueue>(make: impl Fn() -> Q, o: &SuiteOptions) {
    guarded("receive_ack", check_receive_ack(&make(), o)).await;
    guarded("receive_max", check_receive_max(&make(), o)).await;
    guarded("visibility_expiry", check_visibility_expiry(&make(), o)).await;
    guarded("nack", check_nack(&make(), o)).await;
    if o.priority_order {
        guarded("priority_order", check_priority_order(&make(), o)).await;
    }
    guarded("delayed_send", check_delayed_send(&make(), o)).await;
    guarded("depth", check_depth(&make(), o)).await;
    guarded("isolation", check_isolation(&make(), o)).await;
    if o.dedup_waiting_sends {
        guarded("duplicate_send", check_duplicate_send(&make(), o)).await;
    }
    guarded("unknown_receipts", check_unknown_receipts(&make(), o)).await;
    guarded("extend_and_ack_many", check_extend_and_ack_many(&make(), o)).await;
}

// ---------------------------------------------------------------------------------------------
// Store checks

/// A fresh queued task of `agent_type` (not stored).
pub fn sample_task(agent_type: &str, idempotency_key: Option<&str>) -> Task {
    Task::new(
        NewTask {
            agent_type: agent_type.to_owned(),
            payload: serde_json::json!({"issue": 42, "text": "fix the \"bug\" ✓"}),
            priority: 0,
            timeout: Duration::from_secs(600),
            max_attempts: 3,
            idempotency_key: idempotency_key.map(str::to_owned),
        },
        now_ms(),
    )
}

/// `task` moved to `status` as a coordinator would write it (not stored).
pub fn moved(task: &Task, status: Status) -> Task {
    let mut next = task.clone();
    next.status = status;
    next.updated_at = task.updated_at + 1;
    if status == Status::Dispatched {
        next.attempt += 1;
    }
    if status.is_terminal() {
        next.finished_at = Some(next.updated_at);
    }
    next
}

async fn create_new<S: TaskStore>(store: &S, task: &Task) -> Task {
    match store.create(task).await {
        Ok(Created::New(t)) => {
            assert_eq!(&t, task, "create returns the task as stored");
            t
        }
        other => panic!("create {}: expected New, got {other:?}", task.id),
    }
}

async fn put<S: TaskStore>(store: &S, current: &Task, status: Status) -> Task {
    let next = moved(current, status);
    match store.update(&next, current.version).await {
        Ok(t) => t,
        Err(e) => panic!(
            "update {} {:?} -> {status:?}: {e}",
            current.id, current.status
        ),
    }
}

async fn stored<S: TaskStore>(store: &S, id: &str) -> Task {
    store
        .get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("task {id} missing"))
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

pub async fn check_create_and_get<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let task = sample_task(&o.agent_type("create"), None);
    create_new(store, &task).await;
    assert_eq!(
        stored(store, &task.id).await,
        task,
        "get returns exactly what was created"
    );
    let missing = crate::task::new_task_id();
    assert_eq!(store.get(&missing).await.expect("get missing"), None);
    // Tasks without a key never collide.
    let other = sample_task(&o.agent_type("create"), None);
    create_new(store, &other).await;
}

pub async fn check_idempotent_create<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let a = o.agent_type("idem");
    let b = o.agent_type("idem-b");
    let first = sample_task(&a, Some("delivery-1"));
    create_new(store, &first).await;
    let again = sample_task(&a, Some("delivery-1"));
    match store.create(&again).await {
        Ok(Created::Existing(t)) => assert_eq!(t, first, "Existing carries the first task"),
        other => panic!("reused key: expected Existing, got {other:?}"),
    }
    assert_eq!(
        store.get(&again.id).await.expect("get"),
        None,
        "a reused key writes nothing"
    );
    // The key is per agent type.
    create_new(store, &sample_task(&b, Some("delivery-1"))).await;
    // The key survives updates.
    let dispatched = put(store, &first, Status::Dispatched).await;
    match store.create(&sample_task(&a, Some("delivery-1"))).await {
        Ok(Created::Existing(t)) => assert_eq!(t, dispatched),
        other => panic!("reused key after update: expected Existing, got {other:?}"),
    }
    // Concurrent creates with one key: exactly one New, the others see it as Existing.
    let racers: Vec<Task> = (0..4).map(|_| sample_task(&a, Some("race"))).collect();
    let (r0, r1, r2, r3) = tokio::join!(
        store.create(&racers[0]),
        store.create(&racers[1]),
        store.create(&racers[2]),
        store.create(&racers[3]),
    );
    let results = [r0, r1, r2, r3].map(|r| r.expect("concurrent create"));
    let winners: Vec<&Task> = results
        .iter()
        .filter_map(|r| match r {
            Created::New(t) => Some(t),
            Created::Existing(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "exactly one create wins: {results:?}");
    for r in &results {
        if let Created::Existing(t) = r {
            assert_eq!(t, winners[0], "the losers see the winner");
        }
    }
}

pub async fn check_update_cas<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let task = create_new(store, &sample_task(&o.agent_type("cas"), None)).await;
    let mut next = moved(&task, Status::Dispatched);
    next.executor_handle = Some("job-1".into());
    next.updated_at = task.updated_at + 500;
    let written = store.update(&next, task.version).await.expect("update");
    assert_eq!(
        written.version,
        task.version + 1,
        "version becomes expected + 1"
    );
    assert_eq!(
        written.updated_at, next.updated_at,
        "updated_at is the caller's"
    );
    let mut expected = next.clone();
    expected.version = task.version + 1;
    assert_eq!(written, expected);
    assert_eq!(stored(store, &task.id).await, written, "get sees the write");

    // The same expected version again: lost.
    let stale = moved(&task, Status::Cancelled);
    match store.update(&stale, task.version).await {
        Err(StoreError::Conflict { id }) => assert_eq!(id, task.id),
        other => panic!("stale version: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        stored(store, &task.id).await,
        written,
        "a lost write changes nothing"
    );

    // A version from the future is as wrong as one from the past.
    let future = moved(&written, Status::Running);
    assert!(matches!(
        store.update(&future, written.version + 5).await,
        Err(StoreError::Conflict { .. })
    ));

    let ghost = sample_task(&o.agent_type("cas"), None);
    match store
        .update(&moved(&ghost, Status::Dispatched), ghost.version)
        .await
    {
        Err(StoreError::NotFound { id }) => assert_eq!(id, ghost.id),
        other => panic!("unknown id: expected NotFound, got {other:?}"),
    }
}

/// Writes that reach `status` from a new task along legal moves.
fn path_to(status: Status) -> Vec<Status> {
    use Status::*;
    match status {
        Queued => vec![],
        Dispatched => vec![Dispatched],
        Running => vec![Dispatched, Running],
        Cancelled => vec![Cancelled],
        terminal => vec![Dispatched, Running, terminal],
    }
}

pub async fn check_transitions<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let agent_type = o.agent_type("transitions");
    for from in Status::ALL {
        for to in Status::ALL {
            let mut task = create_new(store, &sample_task(&agent_type, None)).await;
            for step in path_to(from) {
                task = put(store, &task, step).await;
            }
            assert_eq!(task.status, from);
            let next = moved(&task, to);
            let result = store.update(&next, task.version).await;
            if from == to || from.can_become(to) {
                let written =
                    result.unwrap_or_else(|e| panic!("legal {from:?} -> {to:?} refused: {e}"));
                assert_eq!(written.status, to);
                assert_eq!(written.version, task.version + 1);
                assert_eq!(stored(store, &task.id).await, written);
            } else {
                match result {
                    Err(StoreError::Conflict { .. }) => {}
                    other => panic!("illegal {from:?} -> {to:?}: expected Conflict, got {other:?}"),
                }
                assert_eq!(
                    stored(store, &task.id).await,
                    task,
                    "refused {from:?} -> {to:?} changed the task"
                );
            }
        }
    }
}

pub async fn check_concurrent_cas<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let agent_type = o.agent_type("race");
    for round in 0..20 {
        let task = create_new(store, &sample_task(&agent_type, None)).await;
        let mut a = moved(&task, Status::Dispatched);
        a.executor_handle = Some(format!("a-{round}"));
        let b = moved(&task, Status::Cancelled);
        let (ra, rb) = tokio::join!(
            store.update(&a, task.version),
            store.update(&b, task.version)
        );
        let winner = match (ra, rb) {
            (Ok(w), Err(StoreError::Conflict { .. }))
            | (Err(StoreError::Conflict { .. }), Ok(w)) => w,
            other => {
                panic!("round {round}: expected exactly one winner and one Conflict, got {other:?}")
            }
        };
        assert_eq!(winner.version, task.version + 1);
        assert_eq!(
            stored(store, &task.id).await,
            winner,
            "the winner's write is stored"
        );
    }
}

pub async fn check_fencing<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let task = create_new(store, &sample_task(&o.agent_type("fence"), None)).await;
    let mut next = moved(&task, Status::Dispatched);
    next.fence = 5;
    let leader5 = store
        .update(&next, task.version)
        .await
        .expect("first fenced write");
    assert_eq!(leader5.fence, 5);

    // A deposed leader (fence 4) with the current version still loses.
    let mut old = moved(&leader5, Status::Running);
    old.fence = 4;
    assert!(
        matches!(
            store.update(&old, leader5.version).await,
            Err(StoreError::Conflict { .. })
        ),
        "older fence must lose"
    );
    assert_eq!(stored(store, &task.id).await, leader5);

    // The same fence may keep writing; a newer one takes over.
    let mut same = moved(&leader5, Status::Running);
    same.fence = 5;
    let running = store
        .update(&same, leader5.version)
        .await
        .expect("same fence");
    let mut newer = running.clone();
    newer.fence = 9;
    newer.updated_at += 1;
    let leader9 = store
        .update(&newer, running.version)
        .await
        .expect("newer fence");
    assert_eq!(stored(store, &task.id).await.fence, 9);
    let mut late = moved(&leader9, Status::Succeeded);
    late.fence = 5;
    assert!(
        matches!(
            store.update(&late, leader9.version).await,
            Err(StoreError::Conflict { .. })
        ),
        "fence 5 after fence 9 must lose"
    );
}

/// Every page of `filter`, checking page sizes and cursors; returns the tasks in order.
async fn all_pages<S: TaskStore>(
    store: &S,
    filter: &TaskFilter,
    limit: usize,
) -> (Vec<Task>, usize) {
    let mut out: Vec<Task> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list(filter, limit, cursor.as_deref())
            .await
            .expect("list");
        pages += 1;
        assert!(page.tasks.len() <= limit, "page larger than limit");
        if page.next_cursor.is_some() {
            assert_eq!(page.tasks.len(), limit, "only the last page may be short");
        }
        for t in &page.tasks {
            if let Some(s) = filter.status {
                assert_eq!(t.status, s, "status filter");
            }
            if let Some(a) = &filter.agent_type {
                assert_eq!(&t.agent_type, a, "agent type filter");
            }
        }
        out.extend(page.tasks);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 100_000, "list does not terminate");
    }
    let all = ids(&out);
    assert!(
        all.windows(2).all(|w| w[0] > w[1]),
        "newest first (ids descending), no duplicates"
    );
    (out, pages)
}

pub async fn check_list_paging<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let a = o.agent_type("list");
    let b = o.agent_type("list-b");
    let mut created = Vec::new();
    for _ in 0..25 {
        created.push(create_new(store, &sample_task(&a, None)).await);
    }
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(create_new(store, &sample_task(&b, None)).await);
    }
    let newest_first: Vec<String> = created.iter().rev().map(|t| t.id.clone()).collect();

    let by_type = TaskFilter {
        status: None,
        agent_type: Some(a.clone()),
    };
    let (tasks, pages) = all_pages(store, &by_type, 10).await;
    assert_eq!(pages, 3, "25 tasks at 10 a page");
    assert_eq!(
        ids(&tasks),
        newest_first,
        "no gaps, no duplicates, newest first"
    );
    assert_eq!(tasks.first(), created.last(), "list returns whole tasks");

    // Exactly a multiple of the limit: the last full page ends the listing or is followed by
    // an empty one; both are fine, but nothing may repeat.
    let (tasks, _) = all_pages(store, &by_type, 5).await;
    assert_eq!(ids(&tasks), newest_first);

    // Status filter, with and without the agent type.
    let mut dispatched = BTreeSet::new();
    for t in created.iter().step_by(3) {
        put(store, t, Status::Dispatched).await;
        dispatched.insert(t.id.clone());
    }
    let want: Vec<String> = newest_first
        .iter()
        .filter(|id| dispatched.contains(*id))
        .cloned()
        .collect();
    let both = TaskFilter {
        status: Some(Status::Dispatched),
        agent_type: Some(a.clone()),
    };
    assert_eq!(ids(&all_pages(store, &both, 4).await.0), want);
    let queued = TaskFilter {
        status: Some(Status::Queued),
        agent_type: Some(a.clone()),
    };
    let want_queued: Vec<String> = newest_first
        .iter()
        .filter(|id| !dispatched.contains(*id))
        .cloned()
        .collect();
    assert_eq!(ids(&all_pages(store, &queued, 7).await.0), want_queued);

    // Other agent types' tasks may share the store: only ours are asserted on.
    let by_status = TaskFilter {
        status: Some(Status::Dispatched),
        agent_type: None,
    };
    let ours: Vec<String> = ids(&all_pages(store, &by_status, 7).await.0)
        .into_iter()
        .filter(|id| dispatched.contains(id))
        .collect();
    assert_eq!(
        ours, want,
        "status-only listing holds our dispatched tasks in order"
    );

    let only_b = TaskFilter {
        status: None,
        agent_type: Some(b.clone()),
    };
    assert_eq!(
        ids(&all_pages(store, &only_b, 10).await.0),
        others
            .iter()
            .rev()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
    );

    let everything: BTreeSet<String> = ids(&all_pages(store, &TaskFilter::default(), 9).await.0)
        .into_iter()
        .collect();
    assert!(
        created
            .iter()
            .chain(&others)
            .all(|t| everything.contains(&t.id)),
        "unfiltered listing holds every task"
    );

    let empty = TaskFilter {
        status: None,
        agent_type: Some(o.agent_type("list-none")),
    };
    let page = store.list(&empty, 10, None).await.expect("list empty");
    assert!(page.tasks.is_empty() && page.next_cursor.is_none());
}

pub async fn check_bad_cursor<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let filter = TaskFilter {
        status: None,
        agent_type: Some(o.agent_type("cursor")),
    };
    for bad in ["%%% not a cursor %%%", "\u{0}"] {
        match store.list(&filter, 10, Some(bad)).await {
            Err(StoreError::BadCursor) => {}
            other => panic!("cursor {bad:?}: expected BadCursor, got {other:?}"),
        }
    }
}

pub async fn check_active_and_counts<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let a = o.agent_type("active");
    let b = o.agent_type("active-b");
    let mut want_active = BTreeSet::new();
    for _ in 0..2 {
        create_new(store, &sample_task(&a, None)).await;
    }
    for _ in 0..2 {
        let t = create_new(store, &sample_task(&a, None)).await;
        want_active.insert(put(store, &t, Status::Dispatched).await.id);
    }
    let t = create_new(store, &sample_task(&a, None)).await;
    let t = put(store, &t, Status::Dispatched).await;
    want_active.insert(put(store, &t, Status::Running).await.id);
    let t = create_new(store, &sample_task(&a, None)).await;
    let t = put(store, &t, Status::Dispatched).await;
    let t = put(store, &t, Status::Running).await;
    put(store, &t, Status::Succeeded).await;
    let t = create_new(store, &sample_task(&b, None)).await;
    put(store, &t, Status::Dispatched).await;

    let active = store.active(&a).await.expect("active");
    assert!(active
        .iter()
        .all(|t| t.agent_type == a && t.status.is_active()));
    assert_eq!(
        ids(&active).into_iter().collect::<BTreeSet<_>>(),
        want_active,
        "active holds dispatched and running"
    );
    assert_eq!(active.len(), want_active.len(), "no duplicates");
    assert!(store
        .active(&o.agent_type("active-none"))
        .await
        .expect("active")
        .is_empty());

    let counts = store.counts().await.expect("counts");
    let mine = |agent_type: &str| -> BTreeMap<Status, u64> {
        counts
            .iter()
            .filter(|(t, _, n)| t == agent_type && *n > 0)
            .map(|(_, s, n)| (*s, *n))
            .collect()
    };
    let want: BTreeMap<Status, u64> = [
        (Status::Queued, 2),
        (Status::Dispatched, 2),
        (Status::Running, 1),
        (Status::Succeeded, 1),
    ]
    .into();
    assert_eq!(mine(&a), want);
    assert_eq!(mine(&b), [(Status::Dispatched, 1)].into());
    let keys: BTreeSet<(&String, Status)> = counts.iter().map(|(t, s, _)| (t, *s)).collect();
    assert_eq!(keys.len(), counts.len(), "one row per (agent type, status)");
}

pub async fn check_stale_queued<S: TaskStore>(store: &S, o: &SuiteOptions) {
    let a = o.agent_type("stale");
    let base = now_ms() - 60_000;
    let mut stale = Vec::new();
    for i in 0..4 {
        let mut t = sample_task(&a, None);
        t.updated_at = base + i;
        stale.push(create_new(store, &t).await.id);
    }
    // Fresh queued, and old but no longer queued: not stale.
    create_new(store, &sample_task(&a, None)).await;
    let mut old = sample_task(&a, None);
    old.updated_at = base;
    let old = create_new(store, &old).await;
    let mut next = moved(&old, Status::Dispatched);
    next.updated_at = base + 1;
    store
        .update(&next, old.version)
        .await
        .expect("dispatch old");
    let mut other = sample_task(&o.agent_type("stale-b"), None);
    other.updated_at = base;
    create_new(store, &other).await;

    let before = base + 30_000;
    let found = store
        .stale_queued(&a, before, 100)
        .await
        .expect("stale_queued");
    assert!(found
        .iter()
        .all(|t| t.status == Status::Queued && t.updated_at < before && t.agent_type == a));
    let found_ids: BTreeSet<String> = ids(&found).into_iter().collect();
    assert_eq!(found_ids, stale.iter().cloned().collect::<BTreeSet<_>>());
    let limited = store
        .stale_queued(&a, before, 2)
        .await
        .expect("stale_queued limited");
    assert_eq!(limited.len(), 2, "limit is honoured");
    assert!(
        store
            .stale_queued(&a, base, 100)
            .await
            .expect("stale_queued")
            .is_empty(),
        "strictly before"
    );
}

// ---------------------------------------------------------------------------------------------
// Queue checks

fn task_ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.task_id.clone()).collect()
}

async fn send<Q: TaskQueue>(
    q: &Q,
    agent_type: &str,
    task_id: &str,
    priority: i64,
    delay: Duration,
) {
    q.send(agent_type, task_id, priority, delay)
        .await
        .unwrap_or_else(|e| panic!("send {task_id}: {e}"));
}

async fn receive<Q: TaskQueue>(
    q: &Q,
    agent_type: &str,
    max: usize,
    visibility: Duration,
) -> Vec<Message> {
    q.receive(agent_type, max, visibility)
        .await
        .unwrap_or_else(|e| panic!("receive: {e}"))
}

async fn depth<Q: TaskQueue>(q: &Q, agent_type: &str) -> Depth {
    q.depth(agent_type)
        .await
        .unwrap_or_else(|e| panic!("depth: {e}"))
}

/// Receives until something arrives or `within` passes.
async fn receive_eventually<Q: TaskQueue>(
    q: &Q,
    agent_type: &str,
    max: usize,
    visibility: Duration,
    within: Duration,
    poll: Duration,
) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = receive(q, agent_type, max, visibility).await;
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(poll).await;
    }
}

fn id(n: usize) -> String {
    format!("task-{n:03}-{}", uuid::Uuid::new_v4().simple())
}

/// Long enough that nothing the check waits for could expire during it.
fn long(o: &SuiteOptions) -> Duration {
    o.tick * 50
}

pub async fn check_receive_ack<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("receive-ack");
    assert!(
        receive(q, &t, 10, long(o)).await.is_empty(),
        "a new queue is empty"
    );
    assert_eq!(depth(q, &t).await, Depth::default());
    let x = id(1);
    send(q, &t, &x, 0, Duration::ZERO).await;
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 1,
            in_flight: 0,
            delayed: 0
        }
    );
    let got = receive(q, &t, 10, long(o)).await;
    assert_eq!(task_ids(&got), vec![x.clone()]);
    assert_eq!(got[0].receive_count, 1, "first delivery");
    assert_eq!(got[0].priority, 0);
    assert!(!got[0].receipt.is_empty());
    assert!(
        receive(q, &t, 10, long(o)).await.is_empty(),
        "a received message is hidden"
    );
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 0,
            in_flight: 1,
            delayed: 0
        }
    );
    q.ack(&t, &got[0].receipt).await.expect("ack");
    assert_eq!(depth(q, &t).await, Depth::default(), "ack deletes");
    // Acking twice is harmless.
    q.ack(&t, &got[0].receipt).await.expect("second ack");
}

pub async fn check_receive_max<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("max");
    let sent: Vec<String> = (0..5).map(id).collect();
    for x in &sent {
        send(q, &t, x, 0, Duration::ZERO).await;
    }
    let first = receive(q, &t, 3, long(o)).await;
    assert_eq!(first.len(), 3, "at most max");
    let rest = receive(q, &t, 10, long(o)).await;
    assert_eq!(rest.len(), 2);
    let all: BTreeSet<String> = task_ids(&first)
        .into_iter()
        .chain(task_ids(&rest))
        .collect();
    assert_eq!(
        all,
        sent.iter().cloned().collect::<BTreeSet<_>>(),
        "each message once"
    );
    assert!(
        receive(q, &t, 0, long(o)).await.is_empty(),
        "max 0 receives nothing"
    );
}

pub async fn check_visibility_expiry<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("visibility");
    let x = id(1);
    send(q, &t, &x, 0, Duration::ZERO).await;
    let first = receive(q, &t, 1, o.tick).await;
    assert_eq!(task_ids(&first), vec![x.clone()]);
    tokio::time::sleep(o.tick * 2).await;
    let second = receive_eventually(q, &t, 1, long(o), o.tick * 10, o.tick / 4).await;
    assert_eq!(
        task_ids(&second),
        vec![x.clone()],
        "redelivered after the visibility timeout"
    );
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(
        second[0].receipt, first[0].receipt,
        "each delivery has its own receipt"
    );
    // A superseded receipt is not an error (whether it deletes is the backend's business).
    q.ack(&t, &first[0].receipt)
        .await
        .expect("ack with an old receipt");
    q.ack(&t, &second[0].receipt).await.expect("ack");
    tokio::time::sleep(o.tick * 2).await;
    assert!(
        receive(q, &t, 10, long(o)).await.is_empty(),
        "an acked message never returns"
    );
    assert_eq!(depth(q, &t).await, Depth::default());
}

pub async fn check_nack<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("nack");
    let x = id(1);
    send(q, &t, &x, 3, Duration::ZERO).await;
    let first = receive(q, &t, 1, long(o)).await;
    q.nack(&t, &first[0].receipt, Duration::ZERO)
        .await
        .expect("nack");
    let second = receive_eventually(q, &t, 1, long(o), o.tick * 10, o.tick / 4).await;
    assert_eq!(
        task_ids(&second),
        vec![x.clone()],
        "nack without delay returns it at once"
    );
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(second[0].priority, 3, "priority survives a nack");

    q.nack(&t, &second[0].receipt, o.tick * 3)
        .await
        .expect("nack with delay");
    assert!(
        receive(q, &t, 1, long(o)).await.is_empty(),
        "hidden during the nack delay"
    );
    let d = depth(q, &t).await;
    assert_eq!(
        (d.visible, d.in_flight + d.delayed),
        (0, 1),
        "nacked message waits: {d:?}"
    );
    let third = receive_eventually(q, &t, 1, long(o), o.tick * 15, o.tick / 4).await;
    assert_eq!(
        task_ids(&third),
        vec![x.clone()],
        "back after the nack delay"
    );
    assert_eq!(third[0].receive_count, 3);
    q.ack(&t, &third[0].receipt).await.expect("ack");
    assert_eq!(depth(q, &t).await, Depth::default());
}

pub async fn check_priority_order<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("priority");
    let sent = [
        (id(0), 0),
        (id(1), 5),
        (id(2), 0),
        (id(3), 5),
        (id(4), 10),
        (id(5), -1),
        (id(6), 5),
    ];
    for (x, p) in &sent {
        send(q, &t, x, *p, Duration::ZERO).await;
    }
    let priorities: BTreeSet<i64> = sent.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        priorities.iter().rev().copied().collect::<Vec<_>>(),
        PRIORITY_CHECK_PRIORITIES,
        "PRIORITY_CHECK_PRIORITIES lists what this check sends"
    );
    let want = |idx: &[usize]| idx.iter().map(|&i| sent[i].0.clone()).collect::<Vec<_>>();
    let first = receive(q, &t, 2, long(o)).await;
    let priorities_of = |m: &[Message]| m.iter().map(|m| m.priority).collect::<Vec<_>>();
    assert_eq!(priorities_of(&first), vec![10, 5], "highest priority first");
    assert_eq!(task_ids(&first[..1]), want(&[4]));
    let rest = receive(q, &t, 10, long(o)).await;
    assert_eq!(
        priorities_of(&rest),
        vec![5, 5, 0, 0, -1],
        "strictly by priority, across receives"
    );
    if o.fifo_within_priority {
        assert_eq!(task_ids(&first), want(&[4, 1]), "FIFO within a priority");
        assert_eq!(
            task_ids(&rest),
            want(&[3, 6, 0, 2, 5]),
            "FIFO within a priority"
        );
        return;
    }
    // Each message once, with the priority it was sent with.
    let mut got: Vec<(String, i64)> = first
        .iter()
        .chain(&rest)
        .map(|m| (m.task_id.clone(), m.priority))
        .collect();
    got.sort();
    let mut all = sent.to_vec();
    all.sort();
    assert_eq!(got, all, "every message once, with its priority");
}

pub async fn check_delayed_send<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("delayed");
    let now_x = id(1);
    let later = id(2);
    send(q, &t, &later, 100, o.tick * 3).await;
    send(q, &t, &now_x, 0, Duration::ZERO).await;
    let got = receive(q, &t, 10, long(o)).await;
    assert_eq!(
        task_ids(&got),
        vec![now_x.clone()],
        "a delayed message is invisible, whatever its priority"
    );
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 0,
            in_flight: 1,
            delayed: 1
        }
    );
    let due = receive_eventually(q, &t, 10, long(o), o.tick * 15, o.tick / 4).await;
    assert_eq!(task_ids(&due), vec![later.clone()], "visible once due");
    assert_eq!(due[0].receive_count, 1);
}

pub async fn check_depth<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("depth");
    for n in 0..3 {
        send(q, &t, &id(n), 0, Duration::ZERO).await;
    }
    for n in 3..5 {
        send(q, &t, &id(n), 0, long(o)).await;
    }
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 3,
            in_flight: 0,
            delayed: 2
        }
    );
    let got = receive(q, &t, 1, o.tick).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 2,
            in_flight: 1,
            delayed: 2
        }
    );
    // Visibility expired: visible again.
    let deadline = tokio::time::Instant::now() + o.tick * 15;
    loop {
        let d = depth(q, &t).await;
        if d == (Depth {
            visible: 3,
            in_flight: 0,
            delayed: 2,
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired message not counted visible: {d:?}"
        );
        tokio::time::sleep(o.tick / 4).await;
    }
    let all = receive(q, &t, 10, long(o)).await;
    assert_eq!(all.len(), 3);
    for m in &all {
        q.ack(&t, &m.receipt).await.expect("ack");
    }
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 0,
            in_flight: 0,
            delayed: 2
        }
    );
}

pub async fn check_isolation<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let a = o.agent_type("isolation");
    let b = format!("{a}-b");
    let x = id(1);
    send(q, &a, &x, 0, Duration::ZERO).await;
    assert!(
        receive(q, &b, 10, long(o)).await.is_empty(),
        "another agent type's queue is separate"
    );
    assert_eq!(depth(q, &b).await, Depth::default());
    // The same task id may wait in two queues.
    send(q, &b, &x, 0, Duration::ZERO).await;
    assert_eq!(
        task_ids(&receive(q, &a, 10, long(o)).await),
        vec![x.clone()]
    );
    assert_eq!(
        task_ids(&receive(q, &b, 10, long(o)).await),
        vec![x.clone()]
    );
}

pub async fn check_duplicate_send<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("dedup");
    let x = id(1);
    send(q, &t, &x, 0, Duration::ZERO).await;
    send(q, &t, &x, 0, Duration::ZERO).await;
    send(q, &t, &x, 7, Duration::ZERO).await;
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 1,
            in_flight: 0,
            delayed: 0
        },
        "re-sending a waiting task is a no-op"
    );
    let got = receive(q, &t, 10, long(o)).await;
    assert_eq!(task_ids(&got), vec![x.clone()]);
    q.ack(&t, &got[0].receipt).await.expect("ack");
    // Once acked, the task may be sent again (a retry).
    send(q, &t, &x, 0, Duration::ZERO).await;
    let again = receive(q, &t, 10, long(o)).await;
    assert_eq!(
        task_ids(&again),
        vec![x.clone()],
        "an acked task can be re-sent"
    );
}

pub async fn check_unknown_receipts<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("receipts");
    let x = id(1);
    send(q, &t, &x, 0, Duration::ZERO).await;
    for bogus in ["", "no-such-receipt", "1.deadbeef", "999999999.00"] {
        let ack: Result<(), QueueError> = q.ack(&t, bogus).await;
        assert!(ack.is_ok(), "ack of unknown receipt {bogus:?}: {ack:?}");
        let nack = q.nack(&t, bogus, Duration::ZERO).await;
        assert!(nack.is_ok(), "nack of unknown receipt {bogus:?}: {nack:?}");
    }
    assert_eq!(
        depth(q, &t).await,
        Depth {
            visible: 1,
            in_flight: 0,
            delayed: 0
        },
        "bogus receipts touch nothing"
    );
}

/// A nack with a delay extends a received message's visibility and keeps its receipt valid
/// (the scheduler holds messages read ahead this way); `ack_many` deletes several at once.
pub async fn check_extend_and_ack_many<Q: TaskQueue>(q: &Q, o: &SuiteOptions) {
    let t = o.agent_type("extend");
    let sent: Vec<String> = (0..3).map(id).collect();
    for x in &sent {
        send(q, &t, x, 0, Duration::ZERO).await;
    }
    let got = receive(q, &t, 3, o.tick * 2).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let held = got[0].clone();
    q.nack(&t, &held.receipt, long(o))
        .await
        .expect("nack to extend");
    // The other two come back after their visibility timeout; the extended one does not.
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + o.tick * 15;
    while again.len() < 2 && tokio::time::Instant::now() < deadline {
        again.extend(receive(q, &t, 3, long(o)).await);
        tokio::time::sleep(o.tick / 4).await;
    }
    let mut back = task_ids(&again);
    back.sort();
    let mut others: Vec<String> = got[1..].iter().map(|m| m.task_id.clone()).collect();
    others.sort();
    assert_eq!(
        back, others,
        "only the messages not extended are redelivered"
    );
    let mut receipts = vec![held.receipt.clone()];
    receipts.extend(again.iter().map(|m| m.receipt.clone()));
    q.ack_many(&t, &receipts).await.expect("ack_many");
    assert_eq!(
        depth(q, &t).await,
        Depth::default(),
        "ack_many deletes them all, the extended one by its first receipt"
    );
    q.ack_many(&t, &receipts).await.expect("ack_many again");
    q.ack_many(&t, &[]).await.expect("ack_many of nothing");
}
