//! Agents' results that arrive apart from their exit: the cluster's result queue.
//!
//! Under Nomad the coordinator cannot read an agent's result file, so the agent sends its
//! result itself (DESIGN.md §5): one message on the result queue (`<cluster_name>-results`,
//! whose URL the agent gets as `AO_RESULT_QUEUE_URL`) with the body
//!
//! ```json
//! {"task_id": "<AO_TASK_ID>", "attempt": <AO_ATTEMPT>, "result": <any JSON>}
//! ```
//!
//! [`run`] consumes that queue while this coordinator leads and records each result on its task
//! with a compare-and-set, like every other write ([`record`]):
//!
//! - the current attempt's result, while the attempt is active or once the task succeeded,
//!   becomes the task's `result` (the scheduler keeps it when the executor reports a success
//!   without one, as Nomad's does, and drops it when the attempt fails or is retried);
//! - a result of an earlier attempt (a retry began since), or of an attempt that already ended
//!   without success, is acknowledged and dropped with a log line: a task's `result` is its
//!   successful attempt's;
//! - a body that is not such a report, a task that does not exist, or an attempt that was never
//!   dispatched goes to the dead-letter queue with the reason, and nothing else is affected;
//! - when the store cannot be reached the message is left alone and comes back after its
//!   visibility timeout, for as long as the queue keeps it (an outage delays, loses nothing);
//! - when the store answers but the write keeps failing (a result too large for the item, a
//!   compare-and-set that keeps losing), it also comes back, and after [`MAX_RECEIVES`]
//!   receptions goes to the dead-letter queue with the last reason, so a result nobody can
//!   store does not circle for days.
//!
//! Which queue it is stays behind [`ResultQueue`] (`queue/sqs.rs` implements it); the
//! embedded deployment has none, its local executor reads `AO_RESULT_FILE` itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::queue::QueueError;
use crate::scheduler::Context;
use crate::store::{StoreError, TaskStore};
use crate::task::{now_ms, Status, Task};

/// Long-poll wait of one receive.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(20);
/// How long a received result stays hidden from other receivers while it is recorded.
pub const VISIBILITY: Duration = Duration::from_secs(60);
/// Receptions after which a result that could not be recorded goes to the dead-letter queue.
pub const MAX_RECEIVES: u32 = 5;
/// Compare-and-set attempts per result before it is left for a later reception.
const CAS_TRIES: usize = 5;

/// One received message of the result queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub message_id: String,
    /// Handle for ack (delete) of this reception.
    pub receipt: String,
    pub body: Option<String>,
    /// How many times this message was received (1 on first reception).
    pub receive_count: u32,
}

/// A queue of agents' result reports.
#[async_trait]
pub trait ResultQueue: Send + Sync + 'static {
    /// Waits up to `wait` for messages (at most 10), hidden for `visibility` from other
    /// receivers.
    async fn receive(
        &self,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Deletes a received message.
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;

    /// Moves a message that cannot be recorded to the dead-letter queue, with `reason`. Never
    /// fails the caller: a message it could not move stays where it is.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str);
}

/// An agent's report, as it sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Report {
    pub task_id: String,
    pub attempt: u32,
    pub result: serde_json::Value,
}

/// The report in `body`, or why it is not one.
pub fn parse(body: Option<&str>) -> Result<Report, String> {
    let body = body.ok_or("message has no body")?;
    let report: Report = serde_json::from_str(body).map_err(|e| {
        format!("body is not a result report {{\"task_id\", \"attempt\", \"result\"}}: {e}")
    })?;
    if !crate::task::is_task_id_shaped(&report.task_id) {
        return Err(format!(
            "task_id {:?} is not a task id (1 to 256 of A-Z a-z 0-9 - _ . :)",
            report.task_id
        ));
    }
    if report.attempt == 0 {
        return Err("attempt must be at least 1 (AO_ATTEMPT)".into());
    }
    Ok(report)
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Written to the task.
    Recorded,
    /// The task already holds exactly this result (a redelivery).
    Unchanged,
    /// Not kept, and rightly so (acknowledged): why.
    Dropped(String),
    /// Can never be recorded (dead-letter queue): why.
    Rejected(String),
    /// The store answered but the write failed (left for a later reception): why.
    Later(String),
    /// The store could not be reached (left for a later reception, however many): why.
    Unreachable(String),
}

/// What to do with a message once its report was judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Ack,
    DeadLetter(String),
    Leave,
}

/// How a message ends after `verdict`, on its `receive_count`th reception.
pub fn settle(verdict: &Verdict, receive_count: u32) -> Settle {
    match verdict {
        Verdict::Recorded | Verdict::Unchanged | Verdict::Dropped(_) => Settle::Ack,
        Verdict::Rejected(reason) => Settle::DeadLetter(reason.clone()),
        Verdict::Later(reason) if receive_count >= MAX_RECEIVES => Settle::DeadLetter(format!(
            "not recorded after {receive_count} receptions: {reason}"
        )),
        Verdict::Later(_) | Verdict::Unreachable(_) => Settle::Leave,
    }
}

/// Whether `report` belongs on `task` as it is now; `None` means write it.
fn judge(task: &Task, report: &Report) -> Option<Verdict> {
    if report.attempt > task.attempt {
        return Some(Verdict::Rejected(format!(
            "attempt {} of task {} was never dispatched (the task is at attempt {})",
            report.attempt, task.id, task.attempt
        )));
    }
    if report.attempt < task.attempt {
        return Some(Verdict::Dropped(format!(
            "attempt {} was superseded by attempt {}",
            report.attempt, task.attempt
        )));
    }
    let open = task.status.is_active() || task.status == Status::Succeeded;
    if !open {
        return Some(Verdict::Dropped(format!(
            "attempt {} ended without success (the task is {})",
            report.attempt,
            task.status.as_str()
        )));
    }
    if task.result.as_ref() == Some(&report.result) {
        return Some(Verdict::Unchanged);
    }
    None
}

/// Records `report` on its task: a compare-and-set written with `fence`, re-read and judged
/// again when someone else wrote the task in between.
pub async fn record(store: &dyn TaskStore, fence: u64, report: &Report) -> Verdict {
    for _ in 0..CAS_TRIES {
        let task = match store.get(&report.task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => {
                return Verdict::Rejected(format!("there is no task {}", report.task_id));
            }
            Err(e) => return Verdict::Unreachable(e.to_string()),
        };
        if let Some(verdict) = judge(&task, report) {
            return verdict;
        }
        let mut next = task.clone();
        next.result = Some(report.result.clone());
        next.updated_at = now_ms();
        next.fence = fence;
        match store.update(&next, task.version).await {
            Ok(_) => return Verdict::Recorded,
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => {
                return Verdict::Rejected(format!("there is no task {}", report.task_id));
            }
            Err(e) => return Verdict::Later(e.to_string()),
        }
    }
    Verdict::Later(format!(
        "task {} kept changing ({CAS_TRIES} compare-and-sets lost)",
        report.task_id
    ))
}

/// Consumes the result queue until `shutdown`, while this coordinator leads.
pub async fn run(
    ctx: Arc<Context>,
    queue: Arc<dyn ResultQueue>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pause = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !ctx.is_leader() {
            // A follower's fence is stale: only the leader writes tasks.
            if wait_or_stop(&mut shutdown, Duration::from_secs(1)).await {
                return;
            }
            continue;
        }
        let received = tokio::select! {
            received = queue.receive(RECEIVE_WAIT, VISIBILITY) => received,
            _ = shutdown.changed() => return,
        };
        match received {
            Ok(deliveries) => {
                pause = Duration::from_millis(500);
                for delivery in deliveries {
                    handle(&ctx, queue.as_ref(), delivery).await;
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot receive from the result queue");
                if wait_or_stop(&mut shutdown, pause).await {
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Sleeps `pause`; true when shutdown came first.
async fn wait_or_stop(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Parses, records and settles one message. The result itself is never logged: it is the
/// agent's output, of any size.
async fn handle(ctx: &Context, queue: &dyn ResultQueue, delivery: Delivery) {
    let message_id = delivery.message_id.as_str();
    let report = match parse(delivery.body.as_deref()) {
        Ok(report) => report,
        Err(reason) => return queue.dead_letter(&delivery, &reason).await,
    };
    let (task_id, attempt) = (report.task_id.as_str(), report.attempt);
    let verdict = record(ctx.store.as_ref(), ctx.fence(), &report).await;
    match &verdict {
        Verdict::Recorded => {
            ctx.reread_held(task_id);
            info!(%task_id, attempt, message_id, "recorded an agent's result from the result queue")
        }
        Verdict::Unchanged => debug!(%task_id, attempt, message_id, "result already recorded"),
        Verdict::Dropped(reason) => {
            info!(%task_id, attempt, message_id, %reason, "agent's result not kept")
        }
        Verdict::Rejected(_) => {}
        Verdict::Later(reason) | Verdict::Unreachable(reason) => {
            warn!(%task_id, attempt, message_id, %reason, receptions = delivery.receive_count, "cannot record an agent's result now; it comes back after its visibility timeout")
        }
    }
    match settle(&verdict, delivery.receive_count) {
        Settle::Ack => {
            if let Err(e) = queue.ack(&delivery.receipt).await {
                warn!(%task_id, message_id, error = %e, "could not delete a settled result; it is judged again when it comes back");
            }
        }
        Settle::DeadLetter(reason) => queue.dead_letter(&delivery, &reason).await,
        Settle::Leave => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteBackend;

    fn task_at(attempt: u32, status: Status) -> Task {
        let mut task = crate::store::conformance::sample_task("coder", None);
        task.attempt = attempt;
        task.status = status;
        task
    }

    fn report(task: &Task, attempt: u32, result: serde_json::Value) -> Report {
        Report {
            task_id: task.id.clone(),
            attempt,
            result,
        }
    }

    #[test]
    fn parse_accepts_reports_and_names_what_is_wrong() {
        let ok = parse(Some(
            r#"{"task_id": "t-1", "attempt": 2, "result": {"pr": 7}}"#,
        ));
        assert_eq!(
            ok,
            Ok(Report {
                task_id: "t-1".into(),
                attempt: 2,
                result: serde_json::json!({"pr": 7})
            })
        );
        let bad = [
            (None, "no body"),
            (Some("{oops"), "not a result report"),
            (
                Some(r#"{"task_id": "t", "attempt": 1}"#),
                "missing field `result`",
            ),
            (
                Some(r#"{"task_id": "t", "attempt": "1", "result": 1}"#),
                "invalid type",
            ),
            (
                Some(r#"{"task_id": "", "attempt": 1, "result": 1}"#),
                "task_id",
            ),
            (
                Some(r#"{"task_id": "t", "attempt": 0, "result": 1}"#),
                "attempt must be at least 1",
            ),
        ];
        for (body, why) in bad {
            let err = parse(body).expect_err("refused");
            assert!(err.contains(why), "{body:?}: {err}");
        }
    }

    #[test]
    fn judge_keeps_only_the_current_attempts_open_result() {
        let result = serde_json::json!({"ok": true});
        for status in [Status::Dispatched, Status::Running, Status::Succeeded] {
            let task = task_at(2, status);
            assert_eq!(
                judge(&task, &report(&task, 2, result.clone())),
                None,
                "{status:?}"
            );
        }
        let task = task_at(2, Status::Running);
        assert!(matches!(
            judge(&task, &report(&task, 3, result.clone())),
            Some(Verdict::Rejected(r)) if r.contains("never dispatched")
        ));
        assert!(matches!(
            judge(&task, &report(&task, 1, result.clone())),
            Some(Verdict::Dropped(r)) if r.contains("superseded")
        ));
        for status in [
            Status::Queued,
            Status::Failed,
            Status::Cancelled,
            Status::TimedOut,
        ] {
            let task = task_at(2, status);
            assert!(
                matches!(judge(&task, &report(&task, 2, result.clone())), Some(Verdict::Dropped(r)) if r.contains("without success")),
                "{status:?}"
            );
        }
        let mut task = task_at(1, Status::Succeeded);
        task.result = Some(result.clone());
        assert_eq!(
            judge(&task, &report(&task, 1, result)),
            Some(Verdict::Unchanged)
        );
    }

    #[test]
    fn an_outage_never_sends_a_result_to_the_dead_letter_queue() {
        let down = Verdict::Unreachable("task store unavailable".into());
        assert_eq!(settle(&down, 1), Settle::Leave);
        assert_eq!(settle(&down, 1000), Settle::Leave);
        let failing = Verdict::Later("item too large".into());
        assert_eq!(settle(&failing, MAX_RECEIVES - 1), Settle::Leave);
        assert!(matches!(
            settle(&failing, MAX_RECEIVES),
            Settle::DeadLetter(r) if r.contains("item too large")
        ));
        assert_eq!(settle(&Verdict::Recorded, 1), Settle::Ack);
        assert_eq!(settle(&Verdict::Dropped("old".into()), 1), Settle::Ack);
        assert_eq!(
            settle(&Verdict::Rejected("no task".into()), 1),
            Settle::DeadLetter("no task".into())
        );
    }

    async fn dispatched(store: &SqliteBackend) -> Task {
        let task = task_at(0, Status::Queued);
        store.create(&task).await.expect("create");
        let mut claimed = store.get(&task.id).await.expect("get").expect("task");
        claimed.status = Status::Dispatched;
        claimed.attempt = 1;
        store
            .update(&claimed, claimed.version)
            .await
            .expect("claim")
    }

    #[tokio::test]
    async fn record_writes_only_the_result_by_compare_and_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteBackend::open(&dir.path().join("t.db")).expect("open");
        let claimed = dispatched(&store).await;

        let first = report(&claimed, 1, serde_json::json!({"pr": 1}));
        assert_eq!(record(&store, 0, &first).await, Verdict::Recorded);
        let stored = store.get(&claimed.id).await.expect("get").expect("task");
        assert_eq!(stored.result, Some(serde_json::json!({"pr": 1})));
        assert_eq!(stored.status, Status::Dispatched, "only the result changes");
        assert_eq!(stored.version, claimed.version + 1);
        assert_eq!(record(&store, 0, &first).await, Verdict::Unchanged);

        let missing = Report {
            task_id: "no-such-task".into(),
            attempt: 1,
            result: serde_json::json!(1),
        };
        assert!(matches!(
            record(&store, 0, &missing).await,
            Verdict::Rejected(r) if r.contains("no task")
        ));
    }

    /// A store whose first `update` loses to a write that lands just before it (the
    /// scheduler recording that the attempt failed and the task is queued again).
    struct RacedBy {
        inner: SqliteBackend,
        raced: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl TaskStore for RacedBy {
        async fn create(&self, task: &Task) -> Result<crate::store::Created, StoreError> {
            self.inner.create(task).await
        }
        async fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
            self.inner.get(id).await
        }
        async fn update(&self, next: &Task, expected: u64) -> Result<Task, StoreError> {
            if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let mut requeued = self.inner.get(&next.id).await?.expect("task");
                requeued.status = Status::Queued;
                self.inner.update(&requeued, requeued.version).await?;
            }
            self.inner.update(next, expected).await
        }
        async fn list(
            &self,
            filter: &crate::store::TaskFilter,
            limit: usize,
            cursor: Option<&str>,
        ) -> Result<crate::store::Page, StoreError> {
            self.inner.list(filter, limit, cursor).await
        }
        async fn active(&self, agent_type: &str) -> Result<Vec<Task>, StoreError> {
            self.inner.active(agent_type).await
        }
        async fn stale_queued(
            &self,
            agent_type: &str,
            before: crate::task::Millis,
            limit: usize,
        ) -> Result<Vec<Task>, StoreError> {
            self.inner.stale_queued(agent_type, before, limit).await
        }
        async fn counts(&self) -> Result<Vec<(String, Status, u64)>, StoreError> {
            self.inner.counts().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
    }

    #[tokio::test]
    async fn a_lost_compare_and_set_is_judged_again_on_the_fresh_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = SqliteBackend::open(&dir.path().join("t.db")).expect("open");
        let claimed = dispatched(&inner).await;
        let store = RacedBy {
            inner,
            raced: false.into(),
        };
        let late = report(&claimed, 1, serde_json::json!({"pr": 1}));
        // The attempt was requeued between the read and the write: its result is not kept.
        assert!(matches!(
            record(&store, 0, &late).await,
            Verdict::Dropped(r) if r.contains("without success")
        ));
        let stored = store.get(&claimed.id).await.expect("get").expect("task");
        assert_eq!(stored.status, Status::Queued);
        assert_eq!(stored.result, None);
    }
}
