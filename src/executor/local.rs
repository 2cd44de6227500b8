//! The local executor: runs each agent attempt as a subprocess on this machine, under a
//! supervisor process that outlives the coordinator.
//!
//! # Crash semantics: an agent keeps running and is re-adopted; it never runs twice
//!
//! Every attempt owns a run directory `<runs_root>/<task_id>/<attempt>/`; its path is the
//! attempt's executor handle. Nothing about a running attempt lives only in the coordinator's
//! memory, so the coordinator may die at any instant (SIGKILL included) and a new one picks up
//! where it left off:
//!
//! - [`LocalExecutor::dispatch`] creates the run directory, writes `task.json` (the task's
//!   [`agent_view`](crate::task::Task::agent_view)), takes an exclusive `flock` on `<run_dir>/lock`
//!   and spawns `agent-orchestrator supervise --run-dir … --lock-fd N -- <command> <args…>` in
//!   its own session (`setsid`: signals and terminal hang-ups aimed at the coordinator's group do
//!   not reach it), handing it the locked descriptor. The supervisor holds the lock for its whole
//!   life; the kernel releases it when the supervisor dies, however it dies. The coordinator then
//!   closes its own copy.
//! - The supervisor ([`super::supervisor`]) writes `supervisor.pid`, writes `started` *before*
//!   it starts the agent, runs the agent (own process group, stdout/stderr to `stdout.log` /
//!   `stderr.log` in the run dir, cwd = run dir), enforces the deadline itself (SIGTERM to the
//!   agent's group, SIGKILL after the grace), treats SIGTERM sent to itself as "stop", kills
//!   whatever is left of the agent's process group once the agent has exited, and finally
//!   writes `exit.json` atomically (temp file + rename) and exits.
//! - [`LocalExecutor::status`] reads the files: `exit.json` present → finished; lock held →
//!   running (or pending until `started` appears); lock free and `started` present → the
//!   supervisor died without recording an outcome → [`Outcome::Lost`] (recorded into `exit.json`
//!   so the answer never changes); lock free and no `started` → the attempt never began →
//!   [`RunState::NotFound`], and dispatching the same attempt again is safe.
//!
//! So a coordinator crash never stops an agent: the supervisor keeps running it, and the next
//! coordinator (a new `LocalExecutor` on the same `runs_root`) sees it as running through the
//! lock and adopts it. An attempt is never started twice: `dispatch` only spawns a supervisor
//! while it holds the attempt's lock *and* `started`/`exit.json` are absent; since `started` is
//! written before the agent is spawned, any attempt whose agent may have begun is reported as
//! finished (or lost), never as "not found". The agent is started with
//! `PR_SET_PDEATHSIG = SIGKILL`, so if the *supervisor* is killed the agent dies with it, and
//! when the coordinator finds such a lost attempt it also kills any descendant still carrying
//! the attempt's `AO_RESULT_FILE` in its environment (Linux): `Lost` means the agent is gone,
//! never "both a retry and the old one running".
//!
//! Primed supervisors: [`Executor::prepare`] (the scheduler calls it for tasks it read ahead,
//! before claiming them, and for claimed ones waiting for a slot) does the dispatch's work up to
//! the spawn, with `supervise --await-go`: the supervisor takes the lock as usual and then waits
//! for one line on its stdin, a pipe the executor keeps. The dispatch of that attempt writes `go <deadline_ms>` (the attempt's clock
//! starts at its dispatch, not when it was primed) instead of starting a process, so a freed
//! slot is refilled in a fraction of a millisecond rather than the several it takes to spawn a
//! supervisor. A stop meanwhile is honoured as usual (the attempt is recorded as stopped and
//! never starts). A primed supervisor never starts anything on its own: when the pipe closes
//! first ([`Executor::discard`], or the coordinator is gone) it exits without writing `started`,
//! so the attempt reads as never begun, as before it was primed (and [`retention`] removes its
//! directory once the task store says that attempt will never run).
//!
//! Stopping: [`LocalExecutor::stop`] writes `stop-reason` (`cancel` / `timeout`) and sends
//! SIGTERM to the supervisor (after checking `/proc/<pid>/cmdline` names this run dir, so a
//! reused pid is never signalled); the supervisor kills the agent's group and records
//! `cancelled` / `timed_out`. A stop that arrives before the agent was started is honoured by
//! the supervisor (it checks `stop-reason` before spawning), and stopping an attempt that never
//! began records its outcome directly.
//!
//! Notifications: for supervisors it spawned, the executor waits on the child and sends the
//! task id to the [`ChangeNotifier`] when it exits; attempts it only learned about through
//! [`LocalExecutor::status`] (adopted after a restart) are watched by a poll every
//! [`LocalExecutorConfig::poll_interval`] and notified when their state changes.
//!
//! The agent's environment is the coordinator's, minus the coordinator's own `AO_*` settings and
//! its secrets ([`WITHHELD_ENV`]), plus the type's `env_vars`, plus the contract's variables
//! (`AO_TASK_ID`, `AO_ATTEMPT`, `AO_AGENT_TYPE`, `AO_TASK_FILE`, `AO_RESULT_FILE`), which win. A
//! relative `command` containing a `/` is resolved against the coordinator's working directory.
//!
//! # Retention
//!
//! Nothing in the executor itself deletes a run directory. `serve` runs [`retention::run`],
//! which removes the directories of finished attempts once they are older than
//! `--runs-retention` (default 7 days) *and* the task store records their attempt as over, so a
//! removed directory can never make an attempt that is still being settled read as
//! [`RunState::NotFound`] (and be started again); see [`retention`] for the rules.
//!
//! # Built-in agents
//!
//! An agent type named `echo` without a `command` is the built-in echo agent: it runs inside the
//! coordinator (no subprocess) and its result is the task's payload. Its outcomes are kept in
//! memory only, so after a coordinator restart such an attempt reads as `NotFound` and is run
//! again; that is harmless because the built-in is pure and instant. Any other agent type
//! without a `command` is rejected.
//!
//! This module is Unix-only (it uses `flock`, sessions and signals); the pid-reuse check and the
//! orphan sweep use `/proc` and are Linux-only.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{ChangeNotifier, ExecError, Executor, Outcome, RunState, StopReason};
use crate::config::AgentType;
use crate::task::{now_ms, Millis, Task, TaskId};

pub mod retention;

/// Settings of the local executor.
#[derive(Debug, Clone)]
pub struct LocalExecutorConfig {
    /// Where run directories live: `<runs_root>/<task_id>/<attempt>/`.
    pub runs_root: PathBuf,
    /// The binary started as `<supervisor_exe> supervise …`: the running program by default;
    /// tests point it at `env!("CARGO_BIN_EXE_agent-orchestrator")`.
    pub supervisor_exe: PathBuf,
    /// Time between SIGTERM and SIGKILL when an agent is stopped or hits its deadline.
    pub kill_grace: Duration,
    /// How often attempts this executor did not spawn itself (adopted) are looked at.
    pub poll_interval: Duration,
}

impl LocalExecutorConfig {
    pub fn new(runs_root: impl Into<PathBuf>) -> LocalExecutorConfig {
        LocalExecutorConfig {
            runs_root: runs_root.into(),
            supervisor_exe: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("agent-orchestrator")),
            kill_grace: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Runs agents as local subprocesses (see the module docs for the crash semantics).
pub struct LocalExecutor {
    inner: Arc<Inner>,
    poller: Mutex<Option<JoinHandle<()>>>,
}

/// Environment variables of the coordinator that agents never inherit (besides every `AO_*`).
pub const WITHHELD_ENV: &[&str] = &["GITHUB_WEBHOOK_SECRET", "NOMAD_TOKEN", "CONSUL_HTTP_TOKEN"];

/// Name of the agent type that has a built-in implementation.
pub const BUILTIN_ECHO: &str = "echo";

/// Most built-in outcomes kept in memory; the oldest are forgotten first (and would be rerun).
const MAX_BUILTIN_RECORDS: usize = 100_000;

/// Largest `result.json` read back.
const MAX_RESULT_BYTES: u64 = 4 << 20;

/// How long `dispatch` waits for an attempt's lock held by something that is not (yet) a
/// supervisor that began the agent: another dispatch between locking and spawning, a status
/// probe, a supervisor about to write `started`, or a primed one standing down.
const LOCK_WAIT: Duration = Duration::from_secs(2);

// The run directory's files, shared with the supervisor.
pub(crate) const TASK_FILE: &str = "task.json";
pub(crate) const RESULT_FILE: &str = "result.json";
pub(crate) const LOCK_FILE: &str = "lock";
pub(crate) const SUPERVISOR_PID_FILE: &str = "supervisor.pid";
pub(crate) const AGENT_PID_FILE: &str = "agent.pid";
pub(crate) const STARTED_FILE: &str = "started";
pub(crate) const EXIT_FILE: &str = "exit.json";
pub(crate) const STOP_FILE: &str = "stop-reason";
pub(crate) const STDOUT_LOG: &str = "stdout.log";
pub(crate) const STDERR_LOG: &str = "stderr.log";
pub(crate) const SUPERVISOR_LOG: &str = "supervisor.log";

/// How an attempt ended, as recorded in `exit.json`. `lost` is only written by the coordinator
/// when it finds that the supervisor died without recording anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordedOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
}

/// The content of `exit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub outcome: RecordedOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: Option<Millis>,
    pub finished_at: Millis,
}

/// The content of `started`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct StartedRecord {
    pub started_at: Millis,
}

/// What `stop-reason` holds.
pub(crate) fn stop_reason_text(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Cancel => "cancel",
        StopReason::Timeout => "timeout",
    }
}

pub(crate) fn parse_stop_reason(text: &str) -> StopReason {
    if text.trim() == "timeout" {
        StopReason::Timeout
    } else {
        StopReason::Cancel
    }
}

/// Writes `path` so that readers see either the old content or all of the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_else(|| OsStr::new("file"));
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// `flock(op | LOCK_NB)`: `Ok(true)` when taken, `Ok(false)` when someone else holds it.
pub(crate) fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: plain syscall on a descriptor we own for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Reads a file that may be absent.
fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn read_started(dir: &Path) -> io::Result<Option<StartedRecord>> {
    Ok(read_optional(&dir.join(STARTED_FILE))?.map(|bytes| {
        // An unreadable `started` still says the attempt began.
        serde_json::from_slice(&bytes).unwrap_or(StartedRecord { started_at: 0 })
    }))
}

/// `exit.json`, if written; a corrupt one reads as a lost attempt.
fn read_exit(dir: &Path) -> io::Result<Option<ExitRecord>> {
    let Some(bytes) = read_optional(&dir.join(EXIT_FILE))? else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        ExitRecord {
            exit_code: None,
            signal: None,
            outcome: RecordedOutcome::Lost,
            error: Some(format!("{EXIT_FILE} of this attempt is unreadable: {e}")),
            started_at: None,
            finished_at: now_ms(),
        }
    })))
}

/// The agent's result: absent or blank → `None`; present but not JSON → an error message.
fn read_result(dir: &Path) -> Result<Option<serde_json::Value>, String> {
    let path = dir.join(RESULT_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the agent's result file {}: {e}",
                path.display()
            ))
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_RESULT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            format!(
                "cannot read the agent's result file {}: {e}",
                path.display()
            )
        })?;
    if bytes.len() as u64 > MAX_RESULT_BYTES {
        return Err(format!(
            "the agent's result file {} is larger than {MAX_RESULT_BYTES} bytes",
            path.display()
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        format!(
            "the agent exited 0 but its result file {} is not valid JSON: {e}",
            path.display()
        )
    })
}

/// Turns a recorded ending into the trait's [`Outcome`].
fn outcome_of(dir: &Path, record: ExitRecord) -> Outcome {
    let finished_at = record.finished_at;
    match record.outcome {
        RecordedOutcome::Succeeded => match read_result(dir) {
            Ok(result) => Outcome::Succeeded {
                result,
                finished_at,
            },
            Err(error) => Outcome::Failed { error, finished_at },
        },
        RecordedOutcome::Failed => Outcome::Failed {
            error: record.error.unwrap_or_else(|| "the agent failed".into()),
            finished_at,
        },
        RecordedOutcome::TimedOut => Outcome::TimedOut { finished_at },
        RecordedOutcome::Cancelled => Outcome::Cancelled { finished_at },
        RecordedOutcome::Lost => Outcome::Lost {
            reason: record
                .error
                .unwrap_or_else(|| "the attempt was lost".into()),
            finished_at,
        },
    }
}

/// Reads the state of the attempt in `dir` from its files and its lock.
fn probe(dir: &Path) -> io::Result<RunState> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(RunState::NotFound),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RunState::NotFound),
        Err(e) => return Err(e),
    }
    if let Some(record) = read_exit(dir)? {
        return Ok(RunState::Finished(outcome_of(dir, record)));
    }
    let lock = match File::open(dir.join(LOCK_FILE)) {
        Ok(lock) => Some(lock),
        // Dispatch died before creating it: no supervisor can exist.
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    // A shared lock: probes never see each other as a supervisor.
    let free = match &lock {
        Some(lock) => try_flock(lock, libc::LOCK_SH)?,
        None => true,
    };
    if !free {
        return Ok(match read_started(dir)? {
            Some(started) => RunState::Running {
                started_at: Some(started.started_at).filter(|t| *t > 0),
            },
            None => RunState::Pending,
        });
    }
    // No supervisor: it finished between our two looks, died, or never existed.
    if let Some(record) = read_exit(dir)? {
        return Ok(RunState::Finished(outcome_of(dir, record)));
    }
    let Some(started) = read_started(dir)? else {
        return Ok(RunState::NotFound);
    };
    kill_orphans(dir);
    let record = ExitRecord {
        exit_code: None,
        signal: None,
        outcome: RecordedOutcome::Lost,
        error: Some(
            "the attempt's supervisor died without recording an outcome; the agent was killed with it".into(),
        ),
        started_at: Some(started.started_at).filter(|t| *t > 0),
        finished_at: now_ms(),
    };
    // Recorded (while we hold the lock, so no dispatch can restart it) so the answer is stable.
    write_json_atomic(&dir.join(EXIT_FILE), &record)?;
    Ok(RunState::Finished(outcome_of(dir, record)))
}

/// The pid in `supervisor.pid`, if that process is alive and is this run dir's supervisor
/// (checked through `/proc/<pid>/cmdline`, so a reused pid is never taken for it).
fn live_supervisor(dir: &Path) -> Option<libc::pid_t> {
    let text = fs::read_to_string(dir.join(SUPERVISOR_PID_FILE)).ok()?;
    let pid: libc::pid_t = text.trim().parse().ok().filter(|pid| *pid > 0)?;
    is_supervisor_of(pid, dir).then_some(pid)
}

#[cfg(target_os = "linux")]
fn is_supervisor_of(pid: libc::pid_t, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let mut prev: Option<&[u8]> = None;
    for arg in args.by_ref() {
        if prev == Some(b"--run-dir".as_slice()) && arg == dir.as_os_str().as_bytes() {
            return true;
        }
        prev = Some(arg);
    }
    false
}

#[cfg(not(target_os = "linux"))]
fn is_supervisor_of(pid: libc::pid_t, _dir: &Path) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Whether supervisor `pid` is primed (`--await-go` among its own flags, before `--`): it starts
/// only on its own coordinator's go.
#[cfg(target_os = "linux")]
fn is_primed(pid: libc::pid_t) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline
        .split(|b| *b == 0)
        .take_while(|arg| *arg != b"--")
        .any(|arg| arg == b"--await-go")
}

#[cfg(not(target_os = "linux"))]
fn is_primed(_pid: libc::pid_t) -> bool {
    false
}

/// Kills every process still carrying this attempt's `AO_RESULT_FILE` in its environment: the
/// agent's descendants that outlived a killed supervisor (the agent itself dies with it through
/// `PR_SET_PDEATHSIG`). Best effort; Linux only.
#[cfg(target_os = "linux")]
fn kill_orphans(dir: &Path) {
    let mut marker = b"AO_RESULT_FILE=".to_vec();
    marker.extend_from_slice(dir.join(RESULT_FILE).as_os_str().as_bytes());
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_slice())
        {
            tracing::warn!(pid, run_dir = %dir.display(), "killing a leftover process of a lost attempt");
            // SAFETY: plain syscall; the environment marker identifies the process as ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_orphans(_dir: &Path) {}

/// Checks that a task id is usable as one path component.
fn validate_task_id(id: &str) -> Result<(), ExecError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ExecError::Rejected {
            message: format!("task id {id:?} cannot name a local run directory"),
        })
    }
}

/// Everything `start_attempt` needs, owned so it can move to a blocking thread.
struct Launch {
    dir: PathBuf,
    supervisor_exe: PathBuf,
    kill_grace: Duration,
    deadline_at: Option<Millis>,
    command: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    agent_view: serde_json::Value,
    /// Start a primed supervisor that waits for its go on stdin.
    await_go: bool,
}

/// A supervisor started ahead of its attempt's claim, holding the attempt's lock and waiting
/// for one line on `go` (see `supervise --await-go`). Closing `go` stands it down.
struct Primed {
    attempt: u32,
    child: tokio::process::Child,
    go: tokio::process::ChildStdin,
}

/// The slot of a task's primed supervisor: empty while it is being started or once taken.
type PrimedSlot = Arc<tokio::sync::Mutex<Option<Primed>>>;

/// Lets a primed supervisor go: closing its pipe stands it down (it exits without starting
/// anything, or is gone already); returns once it is reaped.
async fn let_go(primed: Primed) {
    let Primed { mut child, go, .. } = primed;
    drop(go);
    let _ = child.wait().await;
}

/// [`let_go`] in the background.
fn stand_down(primed: Primed) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(let_go(primed));
    }
}

/// When attempt `task.attempt` must be over: the claimed deadline, else its timeout from now.
fn attempt_deadline(task: &Task) -> Option<Millis> {
    task.deadline_at.or_else(|| {
        (task.timeout_ms > 0).then(|| now_ms().saturating_add(task.timeout_ms as Millis))
    })
}

fn unavailable(what: &str, dir: &Path, err: impl std::fmt::Display) -> ExecError {
    ExecError::Unavailable {
        message: format!("{what} ({}): {err}", dir.display()),
    }
}

/// Creates `<task_id>/<attempt>/` (fine if it exists). The pruner ([`retention`]) removes a
/// task directory once its last attempt directory is gone, so it can vanish between our
/// creating it and creating the attempt inside it: then try again. Once the attempt directory
/// exists the task directory is not empty, and the pruner's `rmdir` fails instead.
fn create_run_dir(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
            done => return done,
        }
    }
}

/// Starts the attempt's supervisor unless the attempt has already begun. Returns the spawned
/// supervisor, or `None` when there was nothing to start.
fn start_attempt(launch: &Launch) -> Result<Option<tokio::process::Child>, ExecError> {
    let dir = &launch.dir;
    create_run_dir(dir).map_err(|e| unavailable("cannot create the run directory", dir, e))?;
    let began = |dir: &Path| -> Result<bool, ExecError> {
        let exists = |name: &str| {
            fs::symlink_metadata(dir.join(name))
                .map(|_| true)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(false)
                    } else {
                        Err(unavailable("cannot read the run directory", dir, e))
                    }
                })
        };
        Ok(exists(EXIT_FILE)? || exists(STARTED_FILE)?)
    };
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| unavailable("cannot open the attempt's lock", dir, e))?;
    let waited = Instant::now();
    loop {
        if try_flock(&lock, libc::LOCK_EX)
            .map_err(|e| unavailable("cannot lock the attempt", dir, e))?
        {
            // Ours: no supervisor is alive. Start one only if none ever began the agent.
            if began(dir)? {
                return Ok(None);
            }
            break;
        }
        if began(dir)? {
            return Ok(None);
        }
        // A supervisor that has not begun the agent yet is about to, or is a primed one standing
        // down (its lock is free a moment later): wait for either before adopting it. One still
        // primed after that waits for another dispatch's go (another coordinator on this runs
        // root): not ours to adopt, since it would never start.
        if let Some(pid) = live_supervisor(dir).filter(|_| waited.elapsed() > LOCK_WAIT) {
            if is_primed(pid) {
                return Err(unavailable(
                    "the attempt is held by a supervisor primed for another dispatch",
                    dir,
                    "try again later",
                ));
            }
            return Ok(None);
        }
        if waited.elapsed() > LOCK_WAIT {
            return Err(unavailable(
                "the attempt's lock is held by a process that is not its supervisor",
                dir,
                "gave up waiting",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    write_json_atomic(&dir.join(TASK_FILE), &launch.agent_view)
        .map_err(|e| unavailable("cannot write the task file", dir, e))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SUPERVISOR_LOG))
        .map_err(|e| unavailable("cannot open the supervisor log", dir, e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| unavailable("cannot open the supervisor log", dir, e))?;

    // The child's stdio setup overwrites descriptors 0-2: keep the lock above them (a
    // coordinator started with closed standard streams could have opened it there).
    let lock = if lock.as_raw_fd() < 3 {
        // SAFETY: duplicates a descriptor we own; the new one is owned by the returned File.
        let fd = unsafe { libc::fcntl(lock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if fd == -1 {
            return Err(unavailable(
                "cannot move the attempt's lock",
                dir,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just created for us and nothing else owns it.
        unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    } else {
        lock
    };
    let fd = lock.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&launch.supervisor_exe);
    cmd.arg("supervise")
        .arg("--run-dir")
        .arg(dir)
        .arg("--lock-fd")
        .arg(fd.to_string())
        .arg("--kill-grace-ms")
        .arg(launch.kill_grace.as_millis().to_string());
    if launch.await_go {
        // Its deadline comes with its go (the attempt's clock starts at the dispatch).
        cmd.arg("--await-go");
    } else if let Some(deadline) = launch.deadline_at {
        cmd.arg("--deadline-ms").arg(deadline.to_string());
    }
    cmd.arg("--").arg(&launch.command).args(&launch.args);
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"AO_") || WITHHELD_ENV.iter().any(|w| key == OsStr::new(w)) {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(if launch.await_go {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(false);
    // SAFETY: only async-signal-safe calls (setsid, fcntl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: signals to the coordinator's process group do not reach it.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            // The supervisor inherits the locked descriptor and holds the lock for its life.
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        unavailable(
            &format!(
                "cannot start the supervisor {}",
                launch.supervisor_exe.display()
            ),
            dir,
            e,
        )
    })?;
    if let Some(pid) = child.id() {
        // The supervisor writes it too; writing it here lets `stop` reach it at once.
        if let Err(e) = write_atomic(&dir.join(SUPERVISOR_PID_FILE), pid.to_string().as_bytes()) {
            tracing::warn!(run_dir = %dir.display(), error = %e, "cannot write supervisor.pid");
        }
    }
    drop(lock); // the supervisor's copy keeps the lock
    Ok(Some(child))
}

/// Stops the attempt in `dir` (see [`LocalExecutor::stop`]).
fn stop_attempt(dir: &Path, reason: StopReason) -> io::Result<()> {
    if !dir.is_dir() || dir.join(EXIT_FILE).exists() {
        return Ok(());
    }
    let stop_file = dir.join(STOP_FILE);
    if !stop_file.exists() {
        write_atomic(&stop_file, stop_reason_text(reason).as_bytes())?;
    }
    if let Some(pid) = live_supervisor(dir) {
        // SAFETY: plain syscall on a pid verified to be this attempt's supervisor.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        return Ok(());
    }
    // No supervisor running. If the attempt never began, record the stop as its outcome (under
    // the lock, so no dispatch starts it meanwhile); a starting supervisor honours `stop-reason`.
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))?;
    if try_flock(&lock, libc::LOCK_EX)?
        && !dir.join(EXIT_FILE).exists()
        && !dir.join(STARTED_FILE).exists()
    {
        let record = ExitRecord {
            exit_code: None,
            signal: None,
            outcome: match reason {
                StopReason::Cancel => RecordedOutcome::Cancelled,
                StopReason::Timeout => RecordedOutcome::TimedOut,
            },
            error: None,
            started_at: None,
            finished_at: now_ms(),
        };
        write_json_atomic(&dir.join(EXIT_FILE), &record)?;
    }
    Ok(())
}

/// The last lines of a log, for error messages.
pub(crate) fn log_tail(path: &Path, max_chars: usize) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(4096);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let chars: Vec<char> = text.chars().collect();
    let start = chars.len().saturating_sub(max_chars);
    Some(chars[start..].iter().collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotFound,
    Pending,
    Running,
    Finished,
}

fn phase_of(state: &RunState) -> Phase {
    match state {
        RunState::NotFound => Phase::NotFound,
        RunState::Pending => Phase::Pending,
        RunState::Running { .. } => Phase::Running,
        RunState::Finished(_) => Phase::Finished,
    }
}

#[derive(Debug, Clone)]
struct Watch {
    task_id: TaskId,
    phase: Phase,
}

#[derive(Default)]
struct Builtins {
    outcomes: HashMap<(TaskId, u32), Outcome>,
    order: VecDeque<(TaskId, u32)>,
}

struct Inner {
    config: LocalExecutorConfig,
    notifier: ChangeNotifier,
    /// Attempts whose changes are notified: run dir → task and last phase seen.
    watched: Mutex<HashMap<PathBuf, Watch>>,
    builtins: Mutex<Builtins>,
    /// Primed supervisors made by `prepare`, by task.
    primed: Mutex<HashMap<TaskId, PrimedSlot>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is a single insert/remove.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalExecutor {
    /// Creates `runs_root` if needed. `notifier` receives a task's id whenever one of its
    /// attempts may have changed.
    pub fn new(
        mut config: LocalExecutorConfig,
        notifier: ChangeNotifier,
    ) -> io::Result<LocalExecutor> {
        fs::create_dir_all(&config.runs_root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the runs directory {}: {e}",
                    config.runs_root.display()
                ),
            )
        })?;
        // Run dirs are the agents' cwd and appear in their environment: keep them absolute.
        config.runs_root = std::path::absolute(&config.runs_root)?;
        Ok(LocalExecutor {
            inner: Arc::new(Inner {
                config,
                notifier,
                watched: Mutex::new(HashMap::new()),
                builtins: Mutex::new(Builtins::default()),
                primed: Mutex::new(HashMap::new()),
            }),
            poller: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &LocalExecutorConfig {
        &self.inner.config
    }

    /// The run directory of attempt `task.attempt`.
    pub fn run_dir(&self, task: &Task) -> PathBuf {
        self.inner
            .config
            .runs_root
            .join(&task.id)
            .join(task.attempt.to_string())
    }

    fn builtin_handle(task: &Task) -> String {
        format!("builtin:{BUILTIN_ECHO}:{}/{}", task.id, task.attempt)
    }

    fn run_builtin(&self, task: &Task) -> String {
        let key = (task.id.clone(), task.attempt);
        {
            let mut builtins = locked(&self.inner.builtins);
            if !builtins.outcomes.contains_key(&key) {
                let outcome = Outcome::Succeeded {
                    result: Some(task.payload.clone()),
                    finished_at: now_ms(),
                };
                builtins.outcomes.insert(key.clone(), outcome);
                builtins.order.push_back(key);
                while builtins.order.len() > MAX_BUILTIN_RECORDS {
                    if let Some(old) = builtins.order.pop_front() {
                        builtins.outcomes.remove(&old);
                    }
                }
            }
        }
        let _ = self.inner.notifier.send(task.id.clone());
        Self::builtin_handle(task)
    }

    fn builtin_state(&self, task: &Task) -> Option<Outcome> {
        locked(&self.inner.builtins)
            .outcomes
            .get(&(task.id.clone(), task.attempt))
            .cloned()
    }

    /// What starting attempt `task.attempt` takes; `None` for the built-in agent.
    fn launch(&self, task: &Task, agent: &AgentType) -> Result<Option<Launch>, ExecError> {
        let command = match &agent.command {
            Some(command) => command,
            None if agent.name == BUILTIN_ECHO => return Ok(None),
            None => {
                return Err(ExecError::Rejected {
                    message: format!(
                        "agent type `{}` has no `command`: the local executor needs one (only `{BUILTIN_ECHO}` has a built-in agent)",
                        agent.name
                    ),
                })
            }
        };
        if command.trim().is_empty() {
            return Err(ExecError::Rejected {
                message: format!("agent type `{}` has an empty `command`", agent.name),
            });
        }
        validate_task_id(&task.id)?;
        let dir = self.run_dir(task);
        let mut command = PathBuf::from(command);
        if command.is_relative() && command.components().count() > 1 {
            command = std::path::absolute(&command).unwrap_or(command);
        }
        let mut env: Vec<(String, String)> = agent
            .env_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend([
            ("AO_TASK_ID".to_string(), task.id.clone()),
            ("AO_ATTEMPT".to_string(), task.attempt.to_string()),
            ("AO_AGENT_TYPE".to_string(), task.agent_type.clone()),
            (
                "AO_TASK_FILE".to_string(),
                dir.join(TASK_FILE).to_string_lossy().into_owned(),
            ),
            (
                "AO_RESULT_FILE".to_string(),
                dir.join(RESULT_FILE).to_string_lossy().into_owned(),
            ),
        ]);
        Ok(Some(Launch {
            dir,
            supervisor_exe: self.inner.config.supervisor_exe.clone(),
            kill_grace: self.inner.config.kill_grace,
            deadline_at: attempt_deadline(task),
            command,
            args: agent.args.clone(),
            env,
            agent_view: task.agent_view(),
            await_go: false,
        }))
    }

    /// Starts the attempt through the primed supervisor [`Executor::prepare`] made for it, if
    /// there is one (waiting for it while it is being made): one line down a pipe instead of
    /// starting a process. False when there is none (or it died): start one as usual.
    async fn go_primed(&self, task: &Task, launch: &Launch) -> bool {
        use tokio::io::AsyncWriteExt;
        let Some(slot) = locked(&self.inner.primed).get(&task.id).cloned() else {
            return false;
        };
        // Waits while it is being started (the slot stays registered meanwhile, so the
        // preparation does not take it for discarded).
        let primed = slot.lock().await.take();
        {
            let mut primed = locked(&self.inner.primed);
            if primed.get(&task.id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                primed.remove(&task.id);
            }
        }
        let Some(mut primed) = primed else {
            return false;
        };
        if primed.attempt != task.attempt {
            // Made for another attempt: let it go before this one's supervisor is started.
            let_go(primed).await;
            return false;
        }
        let line = match launch.deadline_at {
            Some(deadline) => format!("go {deadline}\n"),
            None => "go\n".to_owned(),
        };
        if let Err(e) = primed.go.write_all(line.as_bytes()).await {
            // It died waiting: its lock is gone with it, so a new supervisor can start.
            tracing::debug!(task_id = %task.id, error = %e, "the primed supervisor is gone; starting a new one");
            let_go(primed).await;
            return false;
        }
        drop(primed.go);
        self.follow(primed.child, launch.dir.clone(), &task.id);
        tracing::debug!(task_id = %task.id, attempt = task.attempt, run_dir = %launch.dir.display(), "local attempt started by its primed supervisor");
        true
    }

    /// Watches the attempt whose supervisor is `child` and notifies its end.
    fn follow(&self, mut child: tokio::process::Child, dir: PathBuf, task_id: &str) {
        self.watch(dir.clone(), task_id, Phase::Pending);
        let inner = Arc::downgrade(&self.inner);
        let notifier = self.inner.notifier.clone();
        let task_id = task_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = child.wait().await {
                tracing::warn!(task_id = %task_id, error = %e, "cannot wait for a local supervisor");
            }
            if let Some(inner) = inner.upgrade() {
                locked(&inner.watched).remove(&dir);
            }
            let _ = notifier.send(task_id);
        });
    }

    /// Notifies changes of the attempt in `dir` from now on (until it finishes).
    fn watch(&self, dir: PathBuf, task_id: &str, phase: Phase) {
        if phase == Phase::Finished || phase == Phase::NotFound {
            locked(&self.inner.watched).remove(&dir);
            return;
        }
        locked(&self.inner.watched)
            .entry(dir)
            .and_modify(|w| w.phase = phase)
            .or_insert_with(|| Watch {
                task_id: task_id.to_string(),
                phase,
            });
        self.ensure_poller();
    }

    fn ensure_poller(&self) {
        let mut poller = locked(&self.poller);
        if poller.is_none() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let inner = Arc::downgrade(&self.inner);
                let every = self.inner.config.poll_interval;
                *poller = Some(runtime.spawn(poll_loop(inner, every)));
            }
        }
    }
}

impl Drop for LocalExecutor {
    fn drop(&mut self) {
        if let Some(poller) = locked(&self.poller).take() {
            poller.abort();
        }
    }
}

/// Looks at the watched attempts every `every` and notifies those whose phase changed.
async fn poll_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let snapshot: Vec<(PathBuf, Watch)> = locked(&strong.watched)
            .iter()
            .map(|(dir, w)| (dir.clone(), w.clone()))
            .collect();
        drop(strong);
        if snapshot.is_empty() {
            continue;
        }
        let probed = tokio::task::spawn_blocking(move || {
            snapshot
                .into_iter()
                .filter_map(|(dir, watch)| match probe(&dir) {
                    Ok(state) => Some((dir, watch, phase_of(&state))),
                    Err(e) => {
                        tracing::warn!(run_dir = %dir.display(), error = %e, "cannot read a local attempt's state");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(probed) = probed else { continue };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        for (dir, watch, phase) in probed {
            if phase == watch.phase {
                continue;
            }
            {
                let mut watched = locked(&strong.watched);
                if matches!(phase, Phase::Finished | Phase::NotFound) {
                    watched.remove(&dir);
                } else if let Some(w) = watched.get_mut(&dir) {
                    w.phase = phase;
                }
            }
            let _ = strong.notifier.send(watch.task_id);
        }
    }
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, ExecError> + Send + 'static,
) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ExecError::Unavailable {
            message: format!("{what}: {e}"),
        })?
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn dispatch(&self, task: &Task, agent: &AgentType) -> Result<String, ExecError> {
        let Some(launch) = self.launch(task, agent)? else {
            return Ok(self.run_builtin(task));
        };
        let dir = launch.dir.clone();
        let handle = dir.to_string_lossy().into_owned();
        if self.go_primed(task, &launch).await {
            return Ok(handle);
        }
        let child = blocking("dispatch", move || start_attempt(&launch)).await?;
        if let Some(child) = child {
            self.follow(child, dir, &task.id);
            tracing::debug!(task_id = %task.id, attempt = task.attempt, run_dir = %handle, "local attempt started");
        } else {
            // Started earlier (perhaps by a previous coordinator): watch it like an adopted one.
            let probe_dir = dir.clone();
            let state = blocking("status", move || {
                probe(&probe_dir)
                    .map_err(|e| unavailable("cannot read the attempt's state", &probe_dir, e))
            })
            .await?;
            self.watch(dir, &task.id, phase_of(&state));
        }
        Ok(handle)
    }

    /// Starts a primed supervisor for the attempt (see [`LocalExecutor::go_primed`]).
    fn prepare(&self, task: &Task, agent: &AgentType) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Refused or built in: nothing to prepare (the dispatch reports a refusal).
        let Ok(Some(mut launch)) = self.launch(task, agent) else {
            return;
        };
        launch.await_go = true;
        let slot: PrimedSlot = Arc::new(tokio::sync::Mutex::new(None));
        let Ok(mut ready) = slot.clone().try_lock_owned() else {
            return;
        };
        {
            let mut primed = locked(&self.inner.primed);
            if primed.contains_key(&task.id) {
                return;
            }
            primed.insert(task.id.clone(), slot.clone());
        }
        let (inner, task_id, attempt) =
            (Arc::downgrade(&self.inner), task.id.clone(), task.attempt);
        runtime.spawn(async move {
            let dir = launch.dir.clone();
            match blocking("prepare", move || start_attempt(&launch)).await {
                Ok(Some(mut child)) => match child.stdin.take() {
                    Some(go) => {
                        *ready = Some(Primed { attempt, child, go });
                    }
                    // Cannot happen (stdin is piped); without a pipe it could never go.
                    None => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                },
                // Already begun: the dispatch adopts it.
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%task_id, run_dir = %dir.display(), error = %e, "could not prepare a primed supervisor; the dispatch will start one");
                }
            }
            // Discarded while it was being started: nobody will take it.
            let discarded = inner.upgrade().is_none_or(|inner| {
                !locked(&inner.primed)
                    .get(&task_id)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot))
            });
            if discarded {
                if let Some(primed) = ready.take() {
                    stand_down(primed);
                }
            }
        });
    }

    fn discard(&self, task_id: &str) {
        let Some(slot) = locked(&self.inner.primed).remove(task_id) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(primed) = slot.lock().await.take() {
                    stand_down(primed);
                }
            });
        }
    }

    async fn status(&self, task: &Task) -> Result<RunState, ExecError> {
        if let Some(outcome) = self.builtin_state(task) {
            return Ok(RunState::Finished(outcome));
        }
        if validate_task_id(&task.id).is_err() {
            return Ok(RunState::NotFound);
        }
        let dir = self.run_dir(task);
        let probe_dir = dir.clone();
        let state = blocking("status", move || {
            probe(&probe_dir)
                .map_err(|e| unavailable("cannot read the attempt's state", &probe_dir, e))
        })
        .await?;
        // Adopt: an attempt we are asked about is watched until it finishes.
        self.watch(dir, &task.id, phase_of(&state));
        Ok(state)
    }

    async fn stop(&self, task: &Task, reason: StopReason) -> Result<(), ExecError> {
        if self.builtin_state(task).is_some() || validate_task_id(&task.id).is_err() {
            return Ok(()); // built-ins finish at once; a bad id never dispatched
        }
        let dir = self.run_dir(task);
        tracing::info!(task_id = %task.id, attempt = task.attempt, ?reason, "stopping a local attempt");
        blocking("stop", move || {
            stop_attempt(&dir, reason).map_err(|e| unavailable("cannot stop the attempt", &dir, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn agent(name: &str, command: Option<&str>) -> AgentType {
        AgentType {
            name: name.into(),
            image: "img".into(),
            cpu_limit: 100,
            memory_limit_mb: 64,
            max_instances: 1,
            capabilities: vec![],
            env_vars: BTreeMap::new(),
            timeout: None,
            priority: 50,
            command: command.map(String::from),
            args: vec![],
            max_attempts: None,
            priority_queues: vec![],
        }
    }

    fn task(agent_type: &str, payload: serde_json::Value) -> Task {
        let mut task = Task::new(
            crate::task::NewTask {
                agent_type: agent_type.into(),
                payload,
                priority: 0,
                timeout: Duration::from_secs(10),
                max_attempts: 3,
                idempotency_key: None,
            },
            now_ms(),
        );
        task.attempt = 1;
        task
    }

    fn executor(root: &Path) -> (LocalExecutor, tokio::sync::mpsc::UnboundedReceiver<TaskId>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            LocalExecutor::new(LocalExecutorConfig::new(root), tx).unwrap(),
            rx,
        )
    }

    fn record(outcome: RecordedOutcome, error: Option<&str>) -> ExitRecord {
        ExitRecord {
            exit_code: Some(0),
            signal: None,
            outcome,
            error: error.map(String::from),
            started_at: Some(1),
            finished_at: 7,
        }
    }

    /// One check per recorded ending: (exit record, result.json content, expected outcome).
    #[test]
    fn exit_records_become_outcomes() {
        let check = |rec: ExitRecord, result: Option<&str>, expected: Outcome| {
            let dir = tempfile::tempdir().unwrap();
            if let Some(result) = result {
                fs::write(dir.path().join(RESULT_FILE), result).unwrap();
            }
            assert_eq!(outcome_of(dir.path(), rec), expected);
        };
        check(
            record(RecordedOutcome::Succeeded, None),
            None,
            Outcome::Succeeded {
                result: None,
                finished_at: 7,
            },
        );
        check(
            record(RecordedOutcome::Succeeded, None),
            Some(" \n"),
            Outcome::Succeeded {
                result: None,
                finished_at: 7,
            },
        );
        check(
            record(RecordedOutcome::Succeeded, None),
            Some(r#"{"a": 1}"#),
            Outcome::Succeeded {
                result: Some(serde_json::json!({"a": 1})),
                finished_at: 7,
            },
        );
        check(
            record(RecordedOutcome::Failed, Some("exit 3")),
            None,
            Outcome::Failed {
                error: "exit 3".into(),
                finished_at: 7,
            },
        );
        check(
            record(RecordedOutcome::TimedOut, None),
            None,
            Outcome::TimedOut { finished_at: 7 },
        );
        check(
            record(RecordedOutcome::Cancelled, None),
            None,
            Outcome::Cancelled { finished_at: 7 },
        );
        check(
            record(RecordedOutcome::Lost, Some("gone")),
            None,
            Outcome::Lost {
                reason: "gone".into(),
                finished_at: 7,
            },
        );

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RESULT_FILE), "{not json").unwrap();
        match outcome_of(dir.path(), record(RecordedOutcome::Succeeded, None)) {
            Outcome::Failed { error, .. } => assert!(error.contains("not valid JSON"), "{error}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn exit_record_json_shape() {
        let json = serde_json::to_value(record(RecordedOutcome::TimedOut, None)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"exit_code": 0, "signal": null, "outcome": "timed_out", "started_at": 1, "finished_at": 7})
        );
    }

    #[test]
    fn probe_reads_the_run_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t").join("1");
        assert_eq!(probe(&dir).unwrap(), RunState::NotFound);
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            probe(&dir).unwrap(),
            RunState::NotFound,
            "created but never begun"
        );

        // Lock held (by someone else: a separate open file description) → pending, then running.
        let holder = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .unwrap();
        assert!(try_flock(&holder, libc::LOCK_EX).unwrap());
        assert_eq!(probe(&dir).unwrap(), RunState::Pending);
        write_json_atomic(&dir.join(STARTED_FILE), &StartedRecord { started_at: 42 }).unwrap();
        assert_eq!(
            probe(&dir).unwrap(),
            RunState::Running {
                started_at: Some(42)
            }
        );

        // Holder gone without exit.json → lost, and recorded so the answer stays.
        drop(holder);
        let lost = probe(&dir).unwrap();
        assert!(
            matches!(lost, RunState::Finished(Outcome::Lost { .. })),
            "{lost:?}"
        );
        assert_eq!(probe(&dir).unwrap(), lost);
    }

    #[test]
    fn probe_prefers_exit_json() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t").join("1");
        fs::create_dir_all(&dir).unwrap();
        write_json_atomic(
            &dir.join(EXIT_FILE),
            &record(RecordedOutcome::Cancelled, None),
        )
        .unwrap();
        assert_eq!(
            probe(&dir).unwrap(),
            RunState::Finished(Outcome::Cancelled { finished_at: 7 })
        );
        fs::write(dir.join(EXIT_FILE), "garbage").unwrap();
        assert!(matches!(
            probe(&dir).unwrap(),
            RunState::Finished(Outcome::Lost { .. })
        ));
    }

    #[test]
    fn stopping_an_attempt_that_never_began_records_the_stop() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t").join("1");
        fs::create_dir_all(&dir).unwrap();
        stop_attempt(&dir, StopReason::Timeout).unwrap();
        assert!(matches!(
            probe(&dir).unwrap(),
            RunState::Finished(Outcome::TimedOut { .. })
        ));
        // Absent run dir: a no-op.
        stop_attempt(&root.path().join("nope").join("1"), StopReason::Cancel).unwrap();
        assert!(!root.path().join("nope").exists());
    }

    #[test]
    fn task_ids_must_be_one_path_component() {
        for ok in ["0190-abc", "a.b_c"] {
            assert!(validate_task_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(validate_task_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stop_reasons_round_trip() {
        for reason in [StopReason::Cancel, StopReason::Timeout] {
            assert_eq!(parse_stop_reason(stop_reason_text(reason)), reason);
        }
    }

    #[tokio::test]
    async fn builtin_echo_returns_the_payload() {
        let root = tempfile::tempdir().unwrap();
        let (exec, mut rx) = executor(root.path());
        let t = task("echo", serde_json::json!({"hello": [1, 2]}));
        assert_eq!(exec.status(&t).await.unwrap(), RunState::NotFound);
        let handle = exec.dispatch(&t, &agent("echo", None)).await.unwrap();
        assert_eq!(
            exec.dispatch(&t, &agent("echo", None)).await.unwrap(),
            handle
        );
        match exec.status(&t).await.unwrap() {
            RunState::Finished(Outcome::Succeeded { result, .. }) => {
                assert_eq!(result, Some(t.payload.clone()))
            }
            other => panic!("expected Succeeded, got {other:?}"),
        }
        let notified = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(notified, Some(t.id.clone()));
        exec.stop(&t, StopReason::Cancel).await.unwrap();
        // Another attempt of the same task is unknown until dispatched.
        let mut next = t.clone();
        next.attempt = 2;
        assert_eq!(exec.status(&next).await.unwrap(), RunState::NotFound);
        assert!(
            fs::read_dir(root.path()).unwrap().next().is_none(),
            "built-ins use no run directory"
        );
    }

    #[tokio::test]
    async fn types_without_command_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        let (exec, _rx) = executor(root.path());
        let t = task("coder", serde_json::json!({}));
        match exec.dispatch(&t, &agent("coder", None)).await {
            Err(ExecError::Rejected { message }) => {
                assert!(
                    message.contains("`coder`") && message.contains("`command`"),
                    "{message}"
                )
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }
}
