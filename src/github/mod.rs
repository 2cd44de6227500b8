//! The GitHub App front door (DESIGN.md §8): signed webhook deliveries become tasks through
//! [`crate::intake`], and the progress of those tasks is mirrored on their issues.
//!
//! - `webhook.rs`: signature check; a [`webhook::VerifiedDelivery`] exists only after it.
//! - `routing.rs`: the rules (event → task, cancel, or ignore with a reason). Pure.
//! - `tracker.rs`: [`tracker::IssueTracker`] and its GitHub App implementation (octocrab).
//! - `progress.rs`: the status comment / labels reporter and the parent nudge.
//! - `state.rs`: this side's own SQLite record (tasks per issue, comment ids, waiting triggers,
//!   budget runs).
//!
//! De-duplication: an LRU of recent delivery ids answers redeliveries at once; durably, every
//! task's idempotency key is derived from the delivery's content (the issue's debounce window,
//! the comment id) or, with debouncing off, from the delivery id — so a redelivery after a
//! restart finds the task it created instead of creating a second.

pub mod progress;
pub mod routing;
pub mod state;
pub mod tracker;
pub mod webhook;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::intake::{self, IntakeError, SubmitRequest};
use crate::scheduler::Context;
use crate::task::Millis;
use routing::{AppIdentity, Decision, Rules};
use state::{BudgetRun, StateDb, StateError, Tracked};
use tracker::IssueTracker;
use webhook::{Secret, VerifiedDelivery};

/// The `--github-config` file (JSON): everything but secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubOptions {
    pub rules: Rules,
    /// The app bot's login (`<app-slug>[bot]`): its events never trigger work.
    pub bot_login: Option<String>,
    /// Largest accepted delivery body (GitHub caps payloads at 25 MB).
    pub max_body_bytes: usize,
    /// How often the progress reporter looks at the tasks it follows.
    pub progress_interval_ms: u64,
    /// Delivery ids remembered in memory.
    pub dedup_capacity: usize,
}

impl Default for GithubOptions {
    fn default() -> Self {
        GithubOptions {
            rules: Rules::default(),
            bot_login: None,
            max_body_bytes: 1024 * 1024,
            progress_interval_ms: 1000,
            dedup_capacity: 10_000,
        }
    }
}

impl GithubOptions {
    /// Reads a JSON options file; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<GithubOptions, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Everything the webhook endpoint and the progress reporter share.
pub struct WebhookConfig {
    pub secret: Secret,
    pub max_body_bytes: usize,
    pub rules: Rules,
    pub app: AppIdentity,
    pub state: StateDb,
    pub tracker: Option<Arc<dyn IssueTracker>>,
    pub progress_interval: Duration,
    deliveries: Mutex<DeliveryCache>,
    budget: Mutex<Budget>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("rules", &self.rules)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    pub fn new(
        secret: Secret,
        options: GithubOptions,
        app_id: Option<u64>,
        state: StateDb,
        tracker: Option<Arc<dyn IssueTracker>>,
    ) -> WebhookConfig {
        WebhookConfig {
            secret,
            max_body_bytes: options.max_body_bytes,
            rules: options.rules,
            app: AppIdentity {
                app_id,
                bot_login: options.bot_login,
            },
            state,
            tracker,
            progress_interval: Duration::from_millis(options.progress_interval_ms.max(10)),
            deliveries: Mutex::new(DeliveryCache::new(options.dedup_capacity.max(1))),
            budget: Mutex::new(Budget::default()),
        }
    }

    /// Rebuilds the budgets from the runs `github.db` recorded in the last hour, each with its
    /// real age, so a restart does not grant a fresh budget. Startup only: afterwards the
    /// budget lives in memory and a delivery costs no extra query. Returns the runs restored
    /// and the unreadable rows skipped.
    async fn restore_budget(&self) -> Result<(usize, usize), StateError> {
        let (now_ms, now) = (crate::task::now_ms(), Instant::now());
        let recent = self
            .state
            .budget_runs_since(now_ms.saturating_sub(HOUR.as_millis() as Millis))
            .await?;
        let restored = Budget::restore(&recent.runs, now_ms, now);
        let count = restored.repos.values().map(VecDeque::len).sum();
        if let Ok(mut budget) = self.budget.lock() {
            *budget = restored;
        }
        Ok((count, recent.skipped))
    }

    /// Remembers a delivery id; false when it was seen already.
    pub fn first_delivery(&self, id: &str) -> bool {
        self.deliveries
            .lock()
            .map(|mut c| c.insert(id))
            .unwrap_or(true)
    }

    /// Forgets a delivery whose processing failed, so GitHub's redelivery is processed.
    pub fn forget_delivery(&self, id: &str) {
        if let Ok(mut c) = self.deliveries.lock() {
            c.remove(id);
        }
    }

    /// Routes a verified delivery; returns the action (for metrics) and what was done.
    pub async fn handle(
        &self,
        ctx: &Context,
        delivery: &VerifiedDelivery,
    ) -> Result<(String, Outcome), IntakeError> {
        let event = delivery.event();
        if !routing::is_routed(event) {
            let action = action_of(delivery.body());
            let reason = match event {
                "installation" | "installation_repositories" => {
                    let raw: Value = serde_json::from_slice(delivery.body()).unwrap_or(Value::Null);
                    info!(event, action = %action, delivery = delivery.delivery_id(),
                        installation_id = ?raw["installation"]["id"].as_u64(),
                        account = ?raw["installation"]["account"]["login"].as_str(),
                        "GitHub App installation event");
                    format!("`{event}` events are recorded, not routed")
                }
                "ping" => "ping: the webhook is set up".to_string(),
                _ => format!("no rule for `{event}` events"),
            };
            return Ok((action, Outcome::Ignored(reason)));
        }
        let facts = match routing::extract(event, delivery.body()) {
            Ok(f) => f,
            Err(reason) => return Ok((String::new(), Outcome::Ignored(reason))),
        };
        let action = facts.action.clone();
        let exists = |t: &str| ctx.inputs.agent_types.contains_key(t);
        let decision = routing::decide(
            &self.rules,
            &self.app,
            &facts,
            delivery.delivery_id(),
            &exists,
        );
        let outcome = match decision {
            Decision::Ignore(reason) => Outcome::Ignored(reason),
            Decision::Missing(reason) => Outcome::Ignored(format!(
                "{reason}{}",
                routing::explain_missing(&facts, delivery.body())
            )),
            Decision::Cancel {
                repository,
                number,
                agent_type,
            } => self.cancel(ctx, &repository, number, &agent_type).await?,
            Decision::Submit(trigger) => self.submit(ctx, trigger).await?,
        };
        Ok((action, outcome))
    }

    async fn cancel(
        &self,
        ctx: &Context,
        repository: &str,
        number: u64,
        agent_type: &str,
    ) -> Result<Outcome, IntakeError> {
        let open = self
            .state
            .open_for(repository, number, agent_type)
            .await
            .map_err(|e| IntakeError::Invalid(e.to_string()))?;
        let dropped = self
            .state
            .drop_deferred(repository, number, agent_type)
            .await
            .map_err(|e| IntakeError::Invalid(e.to_string()))?;
        let mut cancelled = Vec::new();
        for id in open {
            // Already finished (or cancelled by an earlier delivery): nothing to do.
            match ctx.store.get(&id).await {
                Ok(Some(task)) if !task.status.is_terminal() => {}
                Ok(_) => continue,
                Err(e) => return Err(e.into()),
            }
            match intake::cancel(ctx, &id).await {
                Ok(task) => {
                    info!(task_id = %task.id, agent_type, repository, issue = number, "trigger label removed: task cancelled");
                    cancelled.push(task.id);
                }
                // Already finished: nothing to cancel.
                Err(IntakeError::InvalidTransition { .. } | IntakeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if cancelled.is_empty() && dropped == 0 {
            return Ok(Outcome::Ignored(format!(
                "trigger label removed, but no queued or running `{agent_type}` task on {repository}#{number}"
            )));
        }
        Ok(Outcome::Cancelled(cancelled))
    }

    async fn submit(
        &self,
        ctx: &Context,
        trigger: routing::Trigger,
    ) -> Result<Outcome, IntakeError> {
        // One running task per (issue, agent type): a new trigger waits behind it.
        let open = if self.rules.one_task_per_issue {
            self.state
                .open_for(&trigger.repository, trigger.number, &trigger.agent_type)
                .await
                .map_err(|e| IntakeError::Invalid(e.to_string()))?
        } else {
            Vec::new()
        };
        let mut ahead = None;
        for id in open {
            let Some(task) = ctx.store.get(&id).await? else {
                continue;
            };
            if task.status.is_terminal() {
                continue;
            }
            if task.idempotency_key.as_deref() == Some(trigger.idempotency_key.as_str()) {
                // The same trigger (debounce window, comment) as the open task: that task.
                return Ok(Outcome::Task {
                    id: task.id,
                    agent_type: task.agent_type,
                    status: task.status.as_str(),
                    new: false,
                });
            }
            ahead = Some(task.id);
        }
        let budget = (
            self.rules.max_runs_per_issue_per_hour,
            self.rules.max_runs_per_repository_per_hour,
        );
        let reserved = self
            .budget
            .lock()
            .map_err(|_| IntakeError::Invalid("budget lock poisoned".into()))?
            .reserve(&trigger.repository, trigger.number, budget, Instant::now());
        if let Err(reason) = reserved {
            self.notify_over_budget(&trigger, &reason);
            return Ok(Outcome::OverBudget(reason));
        }
        if let Some(ahead) = ahead {
            let waiting = state::Deferred {
                id: 0,
                repository: trigger.repository.clone(),
                number: trigger.number,
                agent_type: trigger.agent_type.clone(),
                installation_id: trigger.installation_id,
                idempotency_key: trigger.idempotency_key.clone(),
                payload: trigger.payload.to_string(),
                priority: trigger.priority,
            };
            let new = self
                .state
                .defer(&waiting)
                .await
                .map_err(|e| IntakeError::Invalid(e.to_string()))?;
            if !new {
                if let Ok(mut b) = self.budget.lock() {
                    b.release(&trigger.repository, trigger.number);
                }
            }
            info!(agent_type = %trigger.agent_type, repository = %trigger.repository, issue = trigger.number, ahead = %ahead, "GitHub trigger waits behind the running task");
            return Ok(Outcome::Deferred { behind: ahead, new });
        }
        let request = SubmitRequest {
            agent_type: trigger.agent_type.clone(),
            payload: trigger.payload,
            priority: Some(trigger.priority),
            timeout_seconds: None,
            idempotency_key: Some(trigger.idempotency_key),
        };
        let result = intake::submit(ctx, request).await;
        let new = matches!(result, Ok((_, true)));
        if !new {
            if let Ok(mut b) = self.budget.lock() {
                b.release(&trigger.repository, trigger.number);
            }
        }
        let (task, new) = result?;
        if new {
            self.state
                .insert_budgeted(&Tracked {
                    task_id: task.id.clone(),
                    repository: trigger.repository.clone(),
                    number: trigger.number,
                    agent_type: task.agent_type.clone(),
                    installation_id: trigger.installation_id,
                    comment_id: None,
                    reported: None,
                })
                .map_err(|e| IntakeError::Invalid(e.to_string()))?;
            info!(task_id = %task.id, agent_type = %task.agent_type, repository = %trigger.repository, issue = trigger.number, "GitHub trigger enqueued a task");
        }
        Ok(Outcome::Task {
            id: task.id,
            agent_type: task.agent_type,
            status: task.status.as_str(),
            new,
        })
    }

    /// Tells the issue it is over budget (once per issue per hour), off the request path.
    fn notify_over_budget(&self, trigger: &routing::Trigger, reason: &str) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        let first = self
            .budget
            .lock()
            .map(|mut b| b.first_notice(&trigger.repository, trigger.number))
            .unwrap_or(false);
        if !first {
            return;
        }
        let repo = trigger.repository.clone();
        let (number, inst) = (trigger.number, trigger.installation_id);
        let body = format!(
            "<!-- agent-orchestrator:budget -->\n**agent-orchestrator**: not starting `{}`: {reason}.",
            trigger.agent_type
        );
        tokio::spawn(async move {
            if let Err(e) = tracker.create_comment(&repo, inst, number, &body).await {
                warn!(repository = %repo, issue = number, error = %e, "cannot report the budget on the issue");
            }
        });
    }
}

/// What a delivery did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Task {
        id: String,
        agent_type: String,
        status: &'static str,
        new: bool,
    },
    Cancelled(Vec<String>),
    /// Waits behind the issue's running task of the same agent type (`new`: false when the
    /// same trigger was already waiting).
    Deferred {
        behind: String,
        new: bool,
    },
    Ignored(String),
    OverBudget(String),
}

impl Outcome {
    /// The `result` label of the webhook metric.
    pub fn result_label(&self) -> &'static str {
        match self {
            Outcome::Task { new: true, .. } => "task_created",
            Outcome::Task { new: false, .. } => "task_existing",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Ignored(_) => "ignored",
            Outcome::OverBudget(_) => "over_budget",
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Task {
                id,
                agent_type,
                status,
                new,
            } => {
                json!({"task": {"id": id, "agent_type": agent_type, "status": status}, "created": new})
            }
            Outcome::Cancelled(ids) => json!({ "cancelled": ids }),
            Outcome::Deferred { behind, new } => {
                json!({ "deferred": { "behind": behind, "created": new } })
            }
            Outcome::Ignored(reason) => json!({ "ignored": reason }),
            Outcome::OverBudget(reason) => json!({ "ignored": reason, "over_budget": true }),
        }
    }
}

/// `action` of a payload without building the whole document.
fn action_of(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Action {
        action: Option<String>,
    }
    serde_json::from_slice::<Action>(body)
        .ok()
        .and_then(|a| a.action)
        .map(|a| a.chars().take(64).collect())
        .unwrap_or_default()
}

/// Recently seen delivery ids, oldest evicted first.
struct DeliveryCache {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl DeliveryCache {
    fn new(capacity: usize) -> Self {
        DeliveryCache {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }

    fn remove(&mut self, id: &str) {
        if self.seen.remove(id) {
            self.order.retain(|d| d != id);
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Runs started in the last hour, per issue and per repository, oldest first.
///
/// Checked in memory on every delivery; every reservation kept is also recorded in `github.db`
/// (`budget_runs`, in the write the delivery makes anyway) and [`Budget::restore`]d at startup.
/// `notices` (one over-budget comment per issue per hour) stays in memory only: after a
/// restart an issue still over budget may get one more notice, which is harmless.
#[derive(Default)]
struct Budget {
    issues: HashMap<(String, u64), VecDeque<Instant>>,
    repos: HashMap<String, VecDeque<Instant>>,
    notices: HashMap<(String, u64), Instant>,
}

impl Budget {
    /// The budget holding `runs` as of `now` (wall clock `now_ms`): a run keeps its slot for
    /// what is left of its hour, and runs older than an hour hold none.
    fn restore(runs: &[BudgetRun], now_ms: Millis, now: Instant) -> Budget {
        let mut held: Vec<(Instant, &BudgetRun)> = runs
            .iter()
            .filter_map(|run| {
                // A run stamped in the future (the wall clock went back) counts as just started.
                let age =
                    Duration::from_millis(now_ms.saturating_sub(run.started_at).max(0) as u64);
                // Where `Instant` cannot go back that far, the run holds a full hour: too strict
                // rather than too lenient.
                (age < HOUR).then(|| (now.checked_sub(age).unwrap_or(now), run))
            })
            .collect();
        // `reserve` prunes from the front: oldest first.
        held.sort_by_key(|(at, _)| *at);
        let mut budget = Budget::default();
        for (at, run) in held {
            budget.hold(&run.repository, run.number, at);
        }
        budget
    }

    /// Counts a run started `at` against its issue and repository.
    fn hold(&mut self, repo: &str, issue: u64, at: Instant) {
        self.issues
            .entry((repo.to_string(), issue))
            .or_default()
            .push_back(at);
        self.repos
            .entry(repo.to_string())
            .or_default()
            .push_back(at);
    }

    fn reserve(
        &mut self,
        repo: &str,
        issue: u64,
        (per_issue, per_repo): (u32, u32),
        now: Instant,
    ) -> Result<(), String> {
        let prune = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
                q.pop_front();
            }
        };
        let issue_runs = self.issues.entry((repo.to_string(), issue)).or_default();
        prune(issue_runs);
        if per_issue > 0 && issue_runs.len() >= per_issue as usize {
            return Err(format!(
                "over budget: {repo}#{issue} already started {per_issue} runs in the last hour"
            ));
        }
        let repo_runs = self.repos.entry(repo.to_string()).or_default();
        prune(repo_runs);
        if per_repo > 0 && repo_runs.len() >= per_repo as usize {
            return Err(format!(
                "over budget: {repo} already started {per_repo} runs in the last hour"
            ));
        }
        self.hold(repo, issue, now);
        Ok(())
    }

    fn release(&mut self, repo: &str, issue: u64) {
        if let Some(q) = self.issues.get_mut(&(repo.to_string(), issue)) {
            q.pop_back();
        }
        if let Some(q) = self.repos.get_mut(repo) {
            q.pop_back();
        }
    }

    fn first_notice(&mut self, repo: &str, issue: u64) -> bool {
        let now = Instant::now();
        let key = (repo.to_string(), issue);
        match self.notices.get(&key) {
            Some(at) if now.duration_since(*at) < HOUR => false,
            _ => {
                self.notices.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_key_comes_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let base = GithubSources {
            webhook_secret_file: Some(file("secret", "s")),
            app_id: Some(7),
            ..GithubSources::default()
        };
        let arn = "arn:aws:secretsmanager:eu-west-1:1:secret:key";
        let both = GithubSources {
            private_key_file: Some(file("key.pem", "pem")),
            private_key_secret_arn: Some(arn.into()),
            ..base.clone()
        };
        let err = GithubSettings::resolve(&both).expect_err("two sources");
        assert!(err.contains("not both"), "{err}");

        let by_arn = GithubSources {
            private_key_secret_arn: Some(arn.into()),
            ..base.clone()
        };
        match GithubSettings::resolve(&by_arn) {
            // Read at start (serve::with_github_key), not here.
            Ok(Some(settings)) if cfg!(feature = "aws") => {
                assert!(settings.private_key.is_none());
                assert_eq!(settings.private_key_secret_arn.as_deref(), Some(arn));
                assert!(!format!("{settings:?}").contains("pem"));
            }
            Err(e) if cfg!(not(feature = "aws")) => assert!(e.contains("--features aws"), "{e}"),
            other => panic!("{other:?}"),
        }

        let arn_without_app = GithubSources {
            app_id: None,
            private_key_secret_arn: Some(arn.into()),
            ..base
        };
        let err = GithubSettings::resolve(&arn_without_app).expect_err("no app id");
        assert!(err.contains("needs both an app id"), "{err}");
    }

    #[test]
    fn delivery_cache_evicts_oldest() {
        let mut c = DeliveryCache::new(2);
        assert!(c.insert("a"));
        assert!(!c.insert("a"));
        assert!(c.insert("b"));
        assert!(c.insert("c"));
        assert!(c.insert("a"), "a was evicted");
        c.remove("a");
        assert!(c.insert("a"));
    }

    #[test]
    fn budget_per_issue_and_repository() {
        let mut b = Budget::default();
        assert!(b.reserve("o/r", 1, (2, 3), Instant::now()).is_ok());
        assert!(b.reserve("o/r", 1, (2, 3), Instant::now()).is_ok());
        assert!(b
            .reserve("o/r", 1, (2, 3), Instant::now())
            .unwrap_err()
            .contains("o/r#1"));
        assert!(b.reserve("o/r", 2, (2, 3), Instant::now()).is_ok());
        assert!(b
            .reserve("o/r", 3, (2, 3), Instant::now())
            .unwrap_err()
            .contains("o/r already"));
        b.release("o/r", 2);
        assert!(b.reserve("o/r", 3, (2, 3), Instant::now()).is_ok());
        assert!(b.first_notice("o/r", 1));
        assert!(!b.first_notice("o/r", 1));
    }

    const MINUTE: Duration = Duration::from_secs(60);

    fn run(number: u64, minutes_ago: i64, now_ms: Millis) -> BudgetRun {
        BudgetRun {
            repository: "o/r".into(),
            number,
            started_at: now_ms - minutes_ago * 60_000,
        }
    }

    #[test]
    fn a_restored_run_holds_its_slot_for_what_is_left_of_its_hour() {
        let (now_ms, now) = (1_800_000_000_000, Instant::now());
        let runs = [run(1, 50, now_ms), run(2, 70, now_ms), run(3, 20, now_ms)];
        let mut b = Budget::restore(&runs, now_ms, now);
        let one_per_issue = (1, 0);
        assert!(
            b.reserve("o/r", 2, one_per_issue, now).is_ok(),
            "a run of 70 minutes ago no longer counts"
        );
        assert!(b.reserve("o/r", 1, one_per_issue, now).is_err());
        let almost = now + 10 * MINUTE - Duration::from_millis(1);
        assert!(b.reserve("o/r", 1, one_per_issue, almost).is_err());
        assert!(
            b.reserve("o/r", 1, one_per_issue, now + 10 * MINUTE)
                .is_ok(),
            "a run of 50 minutes ago frees its slot 10 minutes later"
        );
        assert!(
            b.reserve("o/r", 3, one_per_issue, now + 10 * MINUTE)
                .is_err(),
            "a run of 20 minutes ago holds for 40 more"
        );
    }

    #[test]
    fn restored_runs_count_against_their_repository_in_any_order() {
        let (now_ms, now) = (1_800_000_000_000, Instant::now());
        // Unsorted, one from the future (clock went back), one expired.
        let runs = [
            run(3, 10, now_ms),
            run(1, 59, now_ms),
            run(2, -5, now_ms),
            run(4, 61, now_ms),
        ];
        let mut b = Budget::restore(&runs, now_ms, now);
        let three_per_repo = (0, 3);
        let err = b.reserve("o/r", 9, three_per_repo, now).unwrap_err();
        assert!(err.contains("o/r already"), "{err}");
        assert!(b.reserve("o/s", 9, three_per_repo, now).is_ok());
        assert!(
            b.reserve("o/r", 9, three_per_repo, now + MINUTE).is_ok(),
            "the run of 59 minutes ago expired first"
        );
    }
}

/// `serve`'s resolved GitHub settings. Secrets are redacted from `Debug`.
#[derive(Clone)]
pub struct GithubSettings {
    pub secret: Secret,
    pub options: GithubOptions,
    pub app_id: Option<u64>,
    pub private_key: Option<Secret>,
    /// Where the private key is read at start when it is not given directly: a Secrets
    /// Manager ARN (the cluster deployment; see [`GithubSettings::load_private_key`]).
    pub private_key_secret_arn: Option<String>,
    pub api_url: String,
}

impl std::fmt::Debug for GithubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubSettings")
            .field("options", &self.options)
            .field("app_id", &self.app_id)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("private_key_secret_arn", &self.private_key_secret_arn)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// Where the GitHub settings come from (flags / `AO_*` variables / config file).
#[derive(Debug, Default, Clone)]
pub struct GithubSources {
    pub webhook_secret_file: Option<std::path::PathBuf>,
    pub app_id: Option<u64>,
    pub private_key_file: Option<std::path::PathBuf>,
    pub private_key_secret_arn: Option<String>,
    pub api_url: Option<String>,
    pub config: Option<std::path::PathBuf>,
}

fn read_secret_file(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, String> {
    // Errors name the file, never its content.
    let bytes =
        std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read: {e}", path.display()))?;
    crate::config::trimmed_secret(&bytes)
        .ok_or_else(|| format!("{flag} {}: file is empty", path.display()))
}

impl GithubSettings {
    /// `None` when no webhook secret is configured (the endpoint then answers 404). The secret
    /// comes from the file or `GITHUB_WEBHOOK_SECRET`; the private key from the file or
    /// `GITHUB_PRIVATE_KEY` (PEM); the app id may also come from `GITHUB_APP_ID`.
    pub fn resolve(sources: &GithubSources) -> Result<Option<GithubSettings>, String> {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let secret = match &sources.webhook_secret_file {
            Some(path) => Some(read_secret_file(path, "--github-webhook-secret-file")?),
            None => env("GITHUB_WEBHOOK_SECRET").map(String::into_bytes),
        };
        let Some(secret) = secret else {
            if sources.app_id.is_some()
                || sources.private_key_file.is_some()
                || sources.private_key_secret_arn.is_some()
            {
                return Err("--github-app-id/--github-private-key-file/--github-private-key-secret-arn need a webhook secret (--github-webhook-secret-file or GITHUB_WEBHOOK_SECRET)".into());
            }
            return Ok(None);
        };
        let options = match &sources.config {
            Some(path) => GithubOptions::load(path).map_err(|e| format!("--github-config {e}"))?,
            None => GithubOptions::default(),
        };
        let app_id = match sources.app_id {
            Some(id) => Some(id),
            None => match env("GITHUB_APP_ID") {
                Some(text) => Some(
                    text.parse()
                        .map_err(|_| format!("GITHUB_APP_ID `{text}` is not a number"))?,
                ),
                None => None,
            },
        };
        let arn = sources
            .private_key_secret_arn
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty());
        let private_key = match (&sources.private_key_file, arn) {
            (Some(_), Some(_)) => {
                return Err("give the GitHub App's private key once: --github-private-key-file or --github-private-key-secret-arn, not both".into())
            }
            (Some(path), None) => Some(read_secret_file(path, "--github-private-key-file")?),
            (None, Some(_)) => None,
            (None, None) => env("GITHUB_PRIVATE_KEY").map(String::into_bytes),
        };
        let has_key = private_key.is_some() || arn.is_some();
        if has_key != app_id.is_some() {
            return Err(
                "the GitHub App needs both an app id (--github-app-id) and a private key (--github-private-key-file or --github-private-key-secret-arn)"
                    .into(),
            );
        }
        if cfg!(not(feature = "aws")) && arn.is_some() {
            return Err("--github-private-key-secret-arn reads AWS Secrets Manager, which this binary was built without: rebuild with --features aws".into());
        }
        Ok(Some(GithubSettings {
            secret: Secret::new(secret),
            options,
            app_id,
            private_key: private_key.map(Secret::new),
            private_key_secret_arn: arn.map(str::to_owned),
            api_url: sources
                .api_url
                .clone()
                .unwrap_or_else(|| "https://api.github.com".into()),
        }))
    }

    /// Reads the private key from the Secrets Manager secret `arn` (feature `aws`; `resolve`
    /// allows an ARN only without a key from a file or the environment). Errors name the ARN,
    /// never the key.
    #[cfg(feature = "aws")]
    pub async fn load_private_key(
        &mut self,
        config: &aws_config::SdkConfig,
        arn: &str,
    ) -> Result<(), crate::aws::SecretError> {
        let key = crate::aws::secret_value(config, arn).await?;
        info!(secret = %arn, "GitHub App private key read from Secrets Manager");
        self.private_key = Some(Secret::new(key));
        Ok(())
    }

    /// Builds the webhook side (state file `github.db` in `data_dir`, or in memory) with the
    /// budgets it recorded and, when the app can authenticate, starts the progress reporter
    /// until `shutdown`.
    ///
    /// `sole_coordinator`: this process is the only one writing the task store (the embedded
    /// store's file lock says so). Then the GitHub tasks a crash left untracked are tracked
    /// again from the store before anything else ([`track_untracked_tasks`]); with a shared
    /// store they may be another coordinator's, which reports them itself.
    pub async fn start(
        &self,
        data_dir: Option<&std::path::Path>,
        sole_coordinator: bool,
        ctx: Arc<Context>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<WebhookConfig>, String> {
        let (state, source) = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let path = dir.join("github.db");
                let state = StateDb::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                (state, path.display().to_string())
            }
            None => (
                StateDb::open_in_memory().map_err(|e| e.to_string())?,
                "in-memory GitHub state".to_string(),
            ),
        };
        let tracker: Option<Arc<dyn IssueTracker>> = match (&self.app_id, &self.private_key) {
            (Some(id), Some(key)) => Some(Arc::new(
                tracker::GithubTracker::new(&self.api_url, *id, key.expose())
                    .map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        let config = Arc::new(WebhookConfig::new(
            self.secret.clone(),
            self.options.clone(),
            self.app_id,
            state,
            tracker.clone(),
        ));
        if sole_coordinator {
            match track_untracked_tasks(&ctx, &config.state).await {
                Ok(0) => {}
                Ok(n) => {
                    warn!(file = source, tasks = n, "GitHub tasks stored but not recorded before the last stop are tracked again")
                }
                Err(e) => {
                    warn!(file = source, error = %e, "cannot look for GitHub tasks left untracked by the last stop")
                }
            }
        }
        restore_budget_or_warn(&config, &source).await;
        let interval = config.progress_interval;
        // Runs even without a tracker: it starts the triggers waiting behind finished tasks.
        tokio::spawn(progress::run(
            ctx,
            config.clone(),
            tracker.clone(),
            interval,
            shutdown,
        ));
        match tracker {
            Some(_) => {
                info!(app_id = ?self.app_id, api_url = %self.api_url, "GitHub webhooks on; reporting progress as the GitHub App");
            }
            None => info!(
                "GitHub webhooks on; no app id/private key: progress is not reported on issues"
            ),
        }
        Ok(config)
    }
}

/// Every idempotency key the GitHub side gives a task begins with this; the task API refuses
/// it, so only a webhook delivery or a parent nudge makes a task that looks like a GitHub one.
pub const KEY_PREFIX: &str = "gh:";

/// Tracks again every task a webhook created whose `github.db` row was lost (the row is written
/// after the task and not waited for, see [`StateDb::insert_budgeted`]): the stored tasks with a
/// GitHub payload and key and no row that are unfinished (their progress is still to report)
/// or were created within the budget's hour (they count against it, and their ending is
/// reported too). Lists newest first, so a finished status is read only back to the hour.
/// Returns how many there were.
async fn track_untracked_tasks(ctx: &Context, state: &StateDb) -> Result<usize, String> {
    use crate::store::TaskFilter;
    use crate::task::Status;
    const PAGE: usize = 500;
    let budget_since = crate::task::now_ms().saturating_sub(HOUR.as_millis() as Millis);
    let mut missing = 0;
    for status in Status::ALL {
        let filter = TaskFilter {
            status: Some(status),
            agent_type: None,
        };
        let mut cursor = None;
        loop {
            let page = ctx
                .store
                .list(&filter, PAGE, cursor.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let recent =
                |t: &&crate::task::Task| !status.is_terminal() || t.created_at >= budget_since;
            let from_github: Vec<_> = page
                .tasks
                .iter()
                .filter(recent)
                .filter_map(github_origin)
                .collect();
            if !from_github.is_empty() {
                missing += state
                    .track_missing(from_github, budget_since)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let past_the_hour = status.is_terminal()
                && page
                    .tasks
                    .last()
                    .is_some_and(|t| t.created_at < budget_since);
            match page.next_cursor {
                Some(next) if !past_the_hour => cursor = Some(next),
                _ => break,
            }
        }
    }
    Ok(missing)
}

/// The row a task created by the GitHub side would have, read back from the task (its payload
/// as routing built it), with when it was created; `None` for any other task.
fn github_origin(task: &crate::task::Task) -> Option<(Tracked, Millis)> {
    let p = &task.payload;
    let ours = p.get("source").and_then(Value::as_str) == Some("github")
        && task
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with(KEY_PREFIX));
    if !ours {
        return None;
    }
    let tracked = Tracked {
        task_id: task.id.clone(),
        repository: p.get("repository")?.as_str()?.to_owned(),
        number: p.get("issue")?.as_u64()?,
        agent_type: task.agent_type.clone(),
        installation_id: p.get("installation_id").and_then(Value::as_u64),
        comment_id: None,
        reported: None,
    };
    Some((tracked, task.created_at))
}

/// A budget that cannot be read back costs only the runs it remembered, not the coordinator:
/// the rest of `github.db` opened fine, so startup goes on with an empty budget.
async fn restore_budget_or_warn(config: &WebhookConfig, source: &str) {
    match config.restore_budget().await {
        Ok((runs, 0)) => info!(file = source, runs, "GitHub budgets restored"),
        Ok((runs, skipped)) => {
            warn!(
                file = source,
                runs, skipped, "GitHub budgets restored; unreadable budget rows skipped"
            )
        }
        Err(e) => {
            warn!(file = source, error = %e, "cannot restore the GitHub budgets; starting with an empty budget")
        }
    }
}
