//! Retention of the local executor's run directories (`serve --runs-retention`).
//!
//! A pass runs when `serve` starts and then every [`pass_interval`]. It removes
//! `<runs_root>/<task_id>/<attempt>/` only when all of these hold:
//!
//! 1. the path has the shape the executor creates: `<task_id>` a valid task id and `<attempt>` a
//!    positive number in canonical form, both real directories (a symlink is never followed nor
//!    removed). Anything else in the runs root is logged and left alone;
//! 2. the attempt is over: finished (`exit.json` is present) or never begun (neither `exit.json`
//!    nor `started`: a supervisor primed for it stood down, see [`super`]), and the attempt's
//!    `lock` is free. The pass holds that lock exclusively while it removes the directory, so
//!    no supervisor is alive and none can be started meanwhile;
//! 3. it ended more than the retention ago: `exit.json`'s `finished_at`, or the file's
//!    modification time when its content cannot be read; for one never begun, when its
//!    `task.json` (else the directory) was last written;
//! 4. the task store says the attempt is over for good (`attempt_settled`): the task is
//!    terminal, or it has moved on to a later attempt, or it is queued again after this one.
//!
//! # Why the task store is asked (at most one start per attempt)
//!
//! The run directory *is* the executor's memory of an attempt: without it, `status` answers
//! [`RunState::NotFound`](crate::executor::RunState::NotFound), which the scheduler reads as
//! "never began, dispatch it" for a `dispatched` task and as "vanished, run it again" for a
//! `running` one. So a directory may only go once nothing will ask about its attempt again.
//! Age cannot tell: an agent that finishes while the coordinator is down stays unsettled in the
//! store for as long as the coordinator stays down, which can be longer than any retention, and
//! the next start would prune it before the scheduler records its result. The store can tell:
//! once it records the attempt as over, the scheduler never asks about that attempt again
//! (attempt numbers only grow; the next claim of a queued task is attempt + 1). A task the store
//! does not know is kept too: its directory may belong to another coordinator (with another
//! store) sharing this runs root; such directories are counted in one log line per pass.
//!
//! # Removal
//!
//! An attempt directory is first renamed into `<runs_root>/.pruning/` (atomic: it is either
//! complete at its place or gone, even if the coordinator dies half-way) and then removed with
//! `remove_dir_all`, which never follows symlinks; what a crash leaves in `.pruning` (a name no
//! task id can have) is removed by the next pass. The task directory is removed when that leaves
//! it empty; a dispatch of the task's next attempt at the same moment either makes that `rmdir`
//! fail (not empty) or finds its task directory gone and creates it again (see `create_run_dir`).
//! Errors are logged with the path and never stop the coordinator; the next pass tries again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::watch;

use super::{
    read_optional, try_flock, validate_task_id, ExitRecord, EXIT_FILE, LOCK_FILE, STARTED_FILE,
    TASK_FILE,
};
use crate::config::units;
use crate::store::TaskStore;
use crate::task::{now_ms, Millis, Status, Task};

/// How long finished run directories are kept unless `--runs-retention` says otherwise: a week
/// keeps the logs of a failed attempt over a weekend or a short holiday, when someone may still
/// want to read them, while bounding the disk to about a week of agents' output.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest retention accepted: a second margin on top of the task store check (module
/// docs), which alone keeps an unsettled attempt's directory. The store is read at one instant,
/// and the scheduler acts on copies of tasks it read a little earlier; it records an end within
/// milliseconds of being told (a supervisor's exit is notified at once, an adopted attempt is
/// polled every 250 ms), so a minute after the end no copy from before it is still in use.
/// Below a minute, logs would also vanish before anyone could read them.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// The longest time between two passes: removal is at most this late.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Where attempt directories are moved to be removed; starts with `.`, so no task id names it.
const TRASH_DIR: &str = ".pruning";

/// Parses `--runs-retention`: a duration (`7d`, `12h`), or `0` / `off` for no pruning (`None`).
pub fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    let trimmed = text.trim();
    if trimmed == "0" || trimmed.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let retention = units::parse_duration(trimmed)?;
    if retention.is_zero() {
        return Ok(None);
    }
    if retention < MIN_RETENTION {
        return Err(format!(
            "`{text}` is shorter than the minimum of {}: an attempt's directory must outlive the time the coordinator takes to record how it ended (use 0 or off to keep every run directory)",
            units::format_duration(MIN_RETENTION)
        ));
    }
    Ok(Some(retention))
}

/// Time between passes: a quarter of the retention (so a directory is removed at most 25 %
/// late), at least [`MIN_RETENTION`] and at most an hour: a pass reads every finished attempt's
/// `exit.json`, which is cheap but need not happen more often than that.
pub fn pass_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(MIN_RETENTION, MAX_INTERVAL)
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Attempt directories removed.
    pub removed: usize,
    /// Disk space they used (allocated blocks), in bytes.
    pub bytes: u64,
    /// Old enough, but possibly still in use: the task store counts the attempt as active (or
    /// could not be read), or the attempt's lock is held.
    pub kept_active: usize,
    /// Old enough, but the task store does not know the task.
    pub kept_unknown: usize,
    /// Directories that could not be removed (logged with their path).
    pub errors: usize,
}

/// A finished attempt directory older than the retention: removed once the store agrees.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    task_id: String,
    attempt: u32,
    dir: PathBuf,
}

/// Whether the task store's `task` says its attempt `attempt` is over for good, so the
/// scheduler will never ask the executor about it again (see the module docs).
fn attempt_settled(task: &Task, attempt: u32) -> bool {
    task.status.is_terminal()
        || task.attempt > attempt
        || (task.attempt == attempt && task.status == Status::Queued)
}

/// Runs a pass now and then every [`pass_interval`] until `shutdown` turns true. Retention
/// `None` (`--runs-retention off`) removes nothing and returns at once.
pub async fn run(
    runs_root: PathBuf,
    retention: Option<Duration>,
    store: Arc<dyn TaskStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(retention) = retention else {
        tracing::info!(runs_root = %runs_root.display(), "run directory retention is off: run directories are kept");
        return;
    };
    let every = pass_interval(retention);
    loop {
        let report = prune_once(&runs_root, retention, store.as_ref(), now_ms()).await;
        log_report(&runs_root, &report);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn log_report(root: &Path, report: &PruneReport) {
    if report.removed > 0 {
        tracing::info!(
            runs_root = %root.display(),
            removed = report.removed,
            bytes_freed = report.bytes,
            "removed run directories older than the retention"
        );
    }
    if report.kept_unknown > 0 {
        tracing::info!(
            runs_root = %root.display(),
            kept = report.kept_unknown,
            "kept old run directories of tasks the task store does not know (another coordinator's, or from a store that is gone: remove them by hand if so)"
        );
    }
}

/// One pass over `root` as of `now` (injectable for tests).
pub async fn prune_once(
    root: &Path,
    retention: Duration,
    store: &dyn TaskStore,
    now: Millis,
) -> PruneReport {
    let cutoff = now.saturating_sub(retention.as_millis().min(i64::MAX as u128) as Millis);
    let scan_root = root.to_path_buf();
    let candidates = blocking(move || {
        empty_trash(&scan_root);
        scan(&scan_root, cutoff)
    })
    .await
    .unwrap_or_default();
    let mut report = PruneReport::default();
    let mut tasks: HashMap<String, Option<Task>> = HashMap::new();
    for candidate in candidates {
        let task = match tasks.get(&candidate.task_id) {
            Some(task) => task,
            None => match store.get(&candidate.task_id).await {
                Ok(task) => tasks.entry(candidate.task_id.clone()).or_insert(task),
                Err(e) => {
                    // Nothing can be decided without the store: the next pass tries again.
                    tracing::warn!(runs_root = %root.display(), error = %e, "cannot read the task store; run directories are pruned at the next pass");
                    report.kept_active += 1;
                    break;
                }
            },
        };
        match task {
            None => report.kept_unknown += 1,
            Some(task) if !attempt_settled(task, candidate.attempt) => report.kept_active += 1,
            Some(_) => remove_candidate(root, candidate, &mut report).await,
        }
    }
    let trash = root.join(TRASH_DIR);
    // Only when empty (an error says it is not, or is gone); it is made again when needed.
    blocking(move || fs::remove_dir(&trash).is_ok()).await;
    report
}

async fn remove_candidate(root: &Path, candidate: Candidate, report: &mut PruneReport) {
    let root = root.to_path_buf();
    let removed = blocking(move || {
        remove_attempt(&root, &candidate).map_err(|e| {
            tracing::warn!(run_dir = %candidate.dir.display(), error = %e, "cannot remove an old run directory");
        })
    })
    .await;
    match removed {
        Some(Ok(Some(bytes))) => {
            report.removed += 1;
            report.bytes += bytes;
        }
        Some(Ok(None)) => report.kept_active += 1,
        Some(Err(())) | None => report.errors += 1,
    }
}

/// Runs file system work off the async threads; `None` if that thread panicked.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(error = %e, "a run directory pruning step failed");
            None
        }
    }
}

fn unexpected(path: &Path, why: &str) {
    tracing::warn!(path = %path.display(), why, "unexpected entry in the runs directory; left alone");
}

/// The finished attempt directories under `root` that ended before `cutoff`.
fn scan(root: &Path, cutoff: Millis) -> Vec<Candidate> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(runs_root = %root.display(), error = %e, "cannot read the runs directory");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(runs_root = %root.display(), error = %e, "cannot read the runs directory");
                break;
            }
        };
        let name = entry.file_name();
        if name == TRASH_DIR {
            continue;
        }
        let path = entry.path();
        let Some(task_id) = task_dir_name(&name) else {
            unexpected(&path, "not a task id");
            continue;
        };
        if !is_real_dir(&entry) {
            unexpected(&path, "not a directory");
            continue;
        }
        scan_task(&path, &task_id, cutoff, &mut out);
    }
    out
}

fn scan_task(task_dir: &Path, task_id: &str, cutoff: Millis, out: &mut Vec<Candidate>) {
    let entries = match fs::read_dir(task_dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %task_dir.display(), error = %e, "cannot read a task's run directories");
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(path = %task_dir.display(), error = %e, "cannot read a task's run directories");
                return;
            }
        };
        let dir = entry.path();
        let Some(attempt) = attempt_number(&entry.file_name()) else {
            unexpected(&dir, "not an attempt number");
            continue;
        };
        if !is_real_dir(&entry) {
            unexpected(&dir, "not a directory");
            continue;
        }
        match ended_at(&dir) {
            Ok(Some(at)) if at < cutoff => out.push(Candidate {
                task_id: task_id.to_string(),
                attempt,
                dir,
            }),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(run_dir = %dir.display(), error = %e, "cannot read an attempt's exit.json")
            }
        }
    }
}

/// A directory, not a symlink to one (`DirEntry::file_type` does not follow links).
fn is_real_dir(entry: &fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_dir())
}

fn task_dir_name(name: &OsStr) -> Option<String> {
    let name = name.to_str()?;
    validate_task_id(name).ok()?;
    Some(name.to_string())
}

/// The attempt a directory name stands for: a positive number written as the executor
/// writes it (`7`, never `07` or `+7`).
fn attempt_number(name: &OsStr) -> Option<u32> {
    let name = name.to_str()?;
    let attempt: u32 = name.parse().ok()?;
    (attempt > 0 && attempt.to_string() == name).then_some(attempt)
}

/// When the attempt in `dir` ended: when it finished, or when it was last prepared if it never
/// began; `None` while it may be running (begun, not finished).
fn ended_at(dir: &Path) -> io::Result<Option<Millis>> {
    let path = dir.join(EXIT_FILE);
    let Some(bytes) = read_optional(&path)? else {
        if never_begun(dir)? {
            return match modified_ms(&dir.join(TASK_FILE)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => modified_ms(dir).map(Some),
                other => other.map(Some),
            };
        }
        return Ok(None);
    };
    if let Ok(record) = serde_json::from_slice::<ExitRecord>(&bytes) {
        return Ok(Some(record.finished_at));
    }
    modified_ms(&path).map(Some)
}

/// Neither finished nor begun: no `exit.json`, no `started`.
fn never_begun(dir: &Path) -> io::Result<bool> {
    let absent = |name: &str| match fs::symlink_metadata(dir.join(name)) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    };
    Ok(absent(EXIT_FILE)? && absent(STARTED_FILE)?)
}

fn modified_ms(path: &Path) -> io::Result<Millis> {
    let modified = fs::symlink_metadata(path)?.modified()?;
    Ok(modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0))
}

/// Removes the attempt directory of `candidate` and, if that leaves it empty, its task
/// directory. `Ok(Some(bytes freed))` when removed; `Ok(None)` when its lock is held (a
/// supervisor is still finishing, or something is reading it): the next pass looks again.
fn remove_attempt(root: &Path, candidate: &Candidate) -> io::Result<Option<u64>> {
    let dir = &candidate.dir;
    // Held until the directory is gone: while we hold it, no supervisor lives or starts.
    let _lock = match File::open(dir.join(LOCK_FILE)) {
        Ok(lock) if try_flock(&lock, libc::LOCK_EX)? => Some(lock),
        Ok(_) => return Ok(None),
        // Never locked: no supervisor ever ran.
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if read_optional(&dir.join(EXIT_FILE))?.is_none() && !never_begun(dir)? {
        return Ok(None);
    }
    let trash = root.join(TRASH_DIR);
    match fs::create_dir(&trash) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let doomed = trash.join(trash_name(candidate));
    fs::rename(dir, &doomed)?;
    let bytes = allocated_bytes(&doomed);
    fs::remove_dir_all(&doomed)?;
    if let Some(task_dir) = dir.parent() {
        remove_if_empty(task_dir);
    }
    Ok(Some(bytes))
}

/// A name in `.pruning` no other removal (of this or another process) uses.
fn trash_name(candidate: &Candidate) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}.{}.{}",
        candidate.task_id,
        candidate.attempt,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a task directory whose last attempt directory went. Not empty (another attempt, or
/// a new one being dispatched right now) and already gone are both fine.
fn remove_if_empty(task_dir: &Path) {
    match fs::remove_dir(task_dir) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::NotFound
            ) => {}
        Err(e) => {
            tracing::warn!(path = %task_dir.display(), error = %e, "cannot remove an empty task run directory")
        }
    }
}

/// Removes what an interrupted pass left in `.pruning`.
fn empty_trash(root: &Path) {
    let trash = root.join(TRASH_DIR);
    let Ok(entries) = fs::read_dir(&trash) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if is_real_dir(&entry) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a run directory being pruned")
            }
        }
    }
}

/// Disk space used by the tree at `path` (allocated blocks; symlinks are not followed). Best
/// effort: what cannot be read counts as nothing.
fn allocated_bytes(path: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![path.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&next) else {
            continue;
        };
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&next) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::local::{write_json_atomic, RecordedOutcome, STARTED_FILE, STDOUT_LOG};
    use crate::store::sqlite::SqliteBackend;
    use std::fs::OpenOptions;

    const HOUR: Millis = 3600 * 1000;
    const DAY: Millis = 24 * HOUR;
    /// "Now" of every pass in these tests: no test sleeps.
    const NOW: Millis = 1_800_000_000_000;
    const WEEK: Duration = DEFAULT_RETENTION;

    fn task(status: Status, attempt: u32) -> Task {
        let mut task = crate::store::conformance::sample_task("coder", None);
        task.created_at = NOW - 30 * DAY;
        task.updated_at = task.created_at;
        task.status = status;
        task.attempt = attempt;
        task
    }

    async fn store_with(tasks: &[&Task]) -> SqliteBackend {
        let store = SqliteBackend::open_in_memory().unwrap();
        for task in tasks {
            store.create(task).await.unwrap();
        }
        store
    }

    /// An attempt directory as a supervisor leaves it: lock, logs and, once finished,
    /// `exit.json` recording `finished_at`.
    fn attempt_dir(
        root: &Path,
        task_id: &str,
        attempt: u32,
        finished_at: Option<Millis>,
    ) -> PathBuf {
        let dir = root.join(task_id).join(attempt.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LOCK_FILE), "").unwrap();
        fs::write(dir.join(STDOUT_LOG), vec![b'x'; 64 * 1024]).unwrap();
        write_json_atomic(
            &dir.join(STARTED_FILE),
            &serde_json::json!({"started_at": 1}),
        )
        .unwrap();
        if let Some(finished_at) = finished_at {
            let record = ExitRecord {
                exit_code: Some(0),
                signal: None,
                outcome: RecordedOutcome::Succeeded,
                error: None,
                started_at: Some(1),
                finished_at,
            };
            write_json_atomic(&dir.join(EXIT_FILE), &record).unwrap();
        }
        dir
    }

    async fn prune(root: &Path, store: &SqliteBackend) -> PruneReport {
        prune_once(root, WEEK, store, NOW).await
    }

    #[tokio::test]
    async fn an_old_settled_attempt_goes_with_its_empty_task_dir() {
        let root = tempfile::tempdir().unwrap();
        let done = task(Status::Succeeded, 1);
        let dir = attempt_dir(root.path(), &done.id, 1, Some(NOW - 8 * DAY));
        let store = store_with(&[&done]).await;

        let report = prune(root.path(), &store).await;
        assert_eq!(report.removed, 1, "{report:?}");
        assert!(report.bytes >= 64 * 1024, "{report:?}");
        assert!(!dir.exists());
        assert!(!root.path().join(&done.id).exists(), "empty task dir left");
        assert!(!root.path().join(TRASH_DIR).exists());
        assert!(root.path().exists(), "the runs root stays");
    }

    /// What a primed supervisor that stood down leaves: `task.json`, its lock, its log; no
    /// `started`, no `exit.json`.
    fn primed_dir(root: &Path, task_id: &str, attempt: u32, written_at: Millis) -> PathBuf {
        let dir = root.join(task_id).join(attempt.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LOCK_FILE), "").unwrap();
        fs::write(dir.join(TASK_FILE), "{}").unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(written_at as u64);
        File::options()
            .write(true)
            .open(dir.join(TASK_FILE))
            .unwrap()
            .set_modified(at)
            .unwrap();
        dir
    }

    #[tokio::test]
    async fn an_old_attempt_that_never_began_goes_once_its_task_is_over() {
        let root = tempfile::tempdir().unwrap();
        // Cancelled while read ahead: its next attempt was primed, never claimed.
        let cancelled = task(Status::Cancelled, 0);
        let old = primed_dir(root.path(), &cancelled.id, 1, NOW - 8 * DAY);
        // Queued: the primed attempt may still be claimed and started in that directory.
        let queued = task(Status::Queued, 0);
        let waiting = primed_dir(root.path(), &queued.id, 1, NOW - 8 * DAY);
        // Over, but primed too recently.
        let recent_task = task(Status::Cancelled, 0);
        let recent = primed_dir(root.path(), &recent_task.id, 1, NOW - DAY);
        let store = store_with(&[&cancelled, &queued, &recent_task]).await;

        let report = prune(root.path(), &store).await;
        assert_eq!(report.removed, 1, "{report:?}");
        assert!(!old.exists());
        assert!(waiting.join(TASK_FILE).exists());
        assert!(recent.join(TASK_FILE).exists());
    }

    #[tokio::test]
    async fn a_recent_attempt_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let done = task(Status::Failed, 1);
        let dir = attempt_dir(root.path(), &done.id, 1, Some(NOW - 6 * DAY));
        let store = store_with(&[&done]).await;
        assert_eq!(prune(root.path(), &store).await, PruneReport::default());
        assert!(dir.join(STDOUT_LOG).exists());
        // The same directory a day later is old enough.
        let later = prune_once(root.path(), WEEK, &store, NOW + 2 * DAY).await;
        assert_eq!(later.removed, 1);
    }

    #[tokio::test]
    async fn an_attempt_whose_lock_is_held_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let done = task(Status::Succeeded, 1);
        let dir = attempt_dir(root.path(), &done.id, 1, Some(NOW - 8 * DAY));
        let store = store_with(&[&done]).await;
        // A supervisor that wrote exit.json and has not exited yet: it holds the lock.
        let holder = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .unwrap();
        assert!(try_flock(&holder, libc::LOCK_EX).unwrap());

        let report = prune(root.path(), &store).await;
        assert_eq!((report.removed, report.kept_active), (0, 1), "{report:?}");
        assert!(dir.join(EXIT_FILE).exists());

        drop(holder);
        assert_eq!(prune(root.path(), &store).await.removed, 1);
    }

    #[tokio::test]
    async fn a_running_attempt_without_exit_json_is_kept() {
        let root = tempfile::tempdir().unwrap();
        // Settled as far as the store knows (a later attempt exists), but never finished.
        let moved_on = task(Status::Running, 3);
        let dir = attempt_dir(root.path(), &moved_on.id, 2, None);
        let store = store_with(&[&moved_on]).await;
        assert_eq!(prune(root.path(), &store).await, PruneReport::default());
        assert!(dir.join(STARTED_FILE).exists());
    }

    /// The at-most-once guard: an attempt that ended long ago (say, while the coordinator was
    /// down for longer than the retention) keeps its directory until the store records its end,
    /// because without it the attempt would read as never begun (dispatched) or vanished
    /// (running) and be started again.
    #[tokio::test]
    async fn an_attempt_the_store_still_counts_as_active_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let running = task(Status::Running, 1);
        let dispatched = task(Status::Dispatched, 2);
        // Attempt 1 handed back after a failed dispatch: attempt 1 will be claimed again.
        let handed_back = task(Status::Queued, 0);
        let old = Some(NOW - 30 * DAY);
        let dirs = [
            attempt_dir(root.path(), &running.id, 1, old),
            attempt_dir(root.path(), &dispatched.id, 2, old),
            attempt_dir(root.path(), &handed_back.id, 1, old),
        ];
        let store = store_with(&[&running, &dispatched, &handed_back]).await;

        let report = prune(root.path(), &store).await;
        assert_eq!((report.removed, report.kept_active), (0, 3), "{report:?}");
        for dir in &dirs {
            assert!(dir.join(EXIT_FILE).exists(), "{}", dir.display());
        }

        // Once the store records the end, the directory may go.
        let mut settled = running.clone();
        settled.status = Status::Succeeded;
        store.update(&settled, running.version).await.unwrap();
        let report = prune(root.path(), &store).await;
        assert_eq!(report.removed, 1, "{report:?}");
        assert!(!dirs[0].exists());
    }

    #[tokio::test]
    async fn earlier_attempts_of_an_active_task_go_and_the_task_dir_stays() {
        let root = tempfile::tempdir().unwrap();
        let retried = task(Status::Running, 2);
        let requeued = task(Status::Queued, 1);
        let old = Some(NOW - 8 * DAY);
        let first = attempt_dir(root.path(), &retried.id, 1, old);
        let current = attempt_dir(root.path(), &retried.id, 2, old);
        let requeued_dir = attempt_dir(root.path(), &requeued.id, 1, old);
        let store = store_with(&[&retried, &requeued]).await;

        let report = prune(root.path(), &store).await;
        assert_eq!((report.removed, report.kept_active), (2, 1), "{report:?}");
        assert!(!first.exists());
        assert!(current.join(EXIT_FILE).exists());
        assert!(!requeued_dir.exists());
    }

    #[tokio::test]
    async fn a_task_the_store_does_not_know_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let stranger = task(Status::Succeeded, 1);
        let dir = attempt_dir(root.path(), &stranger.id, 1, Some(NOW - 30 * DAY));
        let store = store_with(&[]).await;
        let report = prune(root.path(), &store).await;
        assert_eq!((report.removed, report.kept_unknown), (0, 1), "{report:?}");
        assert!(dir.exists());
    }

    #[tokio::test]
    async fn unexpected_entries_and_symlinks_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let runs = root.path();
        let (linked, other) = (task(Status::Succeeded, 1), task(Status::Succeeded, 2));
        let store = store_with(&[&linked, &other]).await;
        let old = Some(NOW - 30 * DAY);
        // Outside the runs root, shaped like run directories of settled attempts.
        let outside_task = attempt_dir(outside.path(), &linked.id, 1, old);
        let outside_attempt = attempt_dir(outside.path(), "v", 1, old);
        let symlink = std::os::unix::fs::symlink;
        symlink(outside_task.parent().unwrap(), runs.join(&linked.id)).unwrap();
        let other_dir = runs.join(&other.id);
        fs::create_dir(&other_dir).unwrap();
        symlink(&outside_attempt, other_dir.join("1")).unwrap();
        let padded = attempt_dir(runs, &other.id, 2, old);
        fs::rename(&padded, other_dir.join("02")).unwrap();
        fs::write(other_dir.join("notes"), "mine").unwrap();
        fs::write(runs.join("notes.txt"), "mine").unwrap();
        attempt_dir(runs, ".hidden", 1, old);
        attempt_dir(runs, "a b", 1, old);

        let report = prune(runs, &store).await;
        assert_eq!(report, PruneReport::default());
        assert!(
            outside_task.join(EXIT_FILE).exists(),
            "followed a task symlink"
        );
        assert!(
            outside_attempt.join(EXIT_FILE).exists(),
            "followed an attempt symlink"
        );
        for kept in [
            runs.join(&linked.id),
            other_dir.join("1"),
            other_dir.join("02").join(EXIT_FILE),
            other_dir.join("notes"),
            runs.join("notes.txt"),
            runs.join(".hidden").join("1").join(EXIT_FILE),
            runs.join("a b").join("1").join(EXIT_FILE),
        ] {
            assert!(fs::symlink_metadata(&kept).is_ok(), "{}", kept.display());
        }
    }

    #[tokio::test]
    async fn an_unreadable_exit_json_is_aged_by_its_mtime() {
        let root = tempfile::tempdir().unwrap();
        let done = task(Status::Failed, 1);
        let dir = attempt_dir(root.path(), &done.id, 1, Some(NOW));
        fs::write(dir.join(EXIT_FILE), "garbage").unwrap();
        let store = store_with(&[&done]).await;
        // Written just now, according to the real clock.
        let now = now_ms();
        assert_eq!(prune_once(root.path(), WEEK, &store, now).await.removed, 0);
        let old = UNIX_EPOCH + Duration::from_millis((now - 8 * DAY) as u64);
        File::options()
            .write(true)
            .open(dir.join(EXIT_FILE))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(prune_once(root.path(), WEEK, &store, now).await.removed, 1);
    }

    #[tokio::test]
    async fn leftovers_of_an_interrupted_removal_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let trash = root.path().join(TRASH_DIR);
        attempt_dir(&trash, "x", 1, None);
        fs::write(trash.join("stray"), "").unwrap();
        let store = store_with(&[]).await;
        assert_eq!(prune(root.path(), &store).await, PruneReport::default());
        assert!(!trash.exists());
    }

    #[tokio::test]
    async fn retention_off_removes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let done = task(Status::Succeeded, 1);
        let dir = attempt_dir(root.path(), &done.id, 1, Some(0));
        let store: Arc<dyn TaskStore> = Arc::new(store_with(&[&done]).await);
        let (_stop, shutdown) = watch::channel(false);
        let off = parse_retention("off").unwrap();
        // Returns at once (a pass would have removed the directory, and the loop never ends).
        tokio::time::timeout(
            Duration::from_secs(10),
            run(root.path().to_path_buf(), off, store, shutdown),
        )
        .await
        .unwrap();
        assert!(dir.join(EXIT_FILE).exists());
    }

    #[tokio::test]
    async fn the_loop_prunes_at_start_and_stops_on_shutdown() {
        let root = tempfile::tempdir().unwrap();
        let done = task(Status::Succeeded, 1);
        let dir = attempt_dir(root.path(), &done.id, 1, Some(0));
        let store: Arc<dyn TaskStore> = Arc::new(store_with(&[&done]).await);
        let (stop, shutdown) = watch::channel(false);
        let pruner = tokio::spawn(run(root.path().to_path_buf(), Some(WEEK), store, shutdown));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            assert!(std::time::Instant::now() < deadline, "not pruned at start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), pruner)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn settled_means_the_store_moved_past_the_attempt() {
        use Status::*;
        for (status, current, attempt, settled) in [
            (Succeeded, 2, 2, true),
            (Failed, 1, 1, true),
            (Cancelled, 0, 1, true),
            (TimedOut, 3, 3, true),
            (Running, 2, 1, true),
            (Dispatched, 3, 2, true),
            (Queued, 1, 1, true),
            (Running, 1, 1, false),
            (Dispatched, 1, 1, false),
            (Queued, 0, 1, false),
            (Queued, 1, 2, false),
        ] {
            assert_eq!(
                attempt_settled(&task(status, current), attempt),
                settled,
                "{status:?} attempt {current}, directory of attempt {attempt}"
            );
        }
    }

    #[test]
    fn retention_parses_with_a_minimum_and_off() {
        let day = Duration::from_secs(86400);
        assert_eq!(parse_retention("7d"), Ok(Some(7 * day)));
        assert_eq!(parse_retention("12h"), Ok(Some(day / 2)));
        assert_eq!(parse_retention("1m"), Ok(Some(MIN_RETENTION)));
        for off in ["0", "off", "OFF", "0s", " 0 "] {
            assert_eq!(parse_retention(off), Ok(None), "{off}");
        }
        let short = parse_retention("30s").unwrap_err();
        assert!(short.contains("minimum of 1m"), "{short}");
        assert!(parse_retention("a week").is_err());
        assert!(parse_retention("").is_err());
    }

    #[test]
    fn passes_run_hourly_at_most_and_every_minute_at_least() {
        assert_eq!(pass_interval(DEFAULT_RETENTION), MAX_INTERVAL);
        assert_eq!(pass_interval(MIN_RETENTION), MIN_RETENTION);
        assert_eq!(
            pass_interval(Duration::from_secs(7200)),
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn attempt_names_are_canonical_numbers() {
        for (name, attempt) in [("1", Some(1)), ("42", Some(42)), ("0", None), ("01", None)] {
            assert_eq!(attempt_number(OsStr::new(name)), attempt, "{name}");
        }
        for bad in ["+1", "-1", "1a", "", "99999999999"] {
            assert_eq!(attempt_number(OsStr::new(bad)), None, "{bad}");
        }
    }
}
