//! The `supervise` subcommand: the parent of one local agent attempt.
//!
//! Started by the local executor ([`super::local`], which documents the run directory's files
//! and the crash semantics) in its own session, holding the attempt's `flock` through the
//! inherited `--lock-fd` for its whole life. It outlives the coordinator: it runs the agent,
//! enforces the deadline, obeys SIGTERM as "stop", and records the ending in `exit.json`.
//!
//! Plain std + libc, single-threaded, no async runtime. SIGTERM, SIGINT and SIGCHLD are blocked
//! on entry and taken synchronously with `sigtimedwait`, so none is lost between checks.
//!
//! Exit status: 0 when an outcome was recorded (whatever it is), 1 when the supervisor could
//! not do its job (nothing recorded: the coordinator reads the attempt as never begun or lost),
//! [`STOOD_DOWN`] when a primed supervisor (`--await-go`) was let go without a go.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::local::{
    log_tail, parse_stop_reason, read_started, try_flock, write_atomic, write_json_atomic,
    ExitRecord, RecordedOutcome, StartedRecord, AGENT_PID_FILE, EXIT_FILE, LOCK_FILE, STARTED_FILE,
    STDERR_LOG, STDOUT_LOG, STOP_FILE, SUPERVISOR_PID_FILE,
};
use super::StopReason;
use crate::task::{now_ms, Millis};

/// Flags of the hidden `supervise` subcommand.
#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// The attempt's run directory.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Inherited descriptor holding the attempt's exclusive `flock`; without it the supervisor
    /// takes the lock itself (and gives up if it is held).
    #[arg(long)]
    pub lock_fd: Option<RawFd>,
    /// When the attempt must be over, in ms since the Unix epoch.
    #[arg(long)]
    pub deadline_ms: Option<Millis>,
    /// Time between SIGTERM and SIGKILL when the agent is stopped.
    #[arg(long, default_value_t = 5000)]
    pub kill_grace_ms: u64,
    /// Start on a go from the coordinator, not at once: after taking the lock, wait for one
    /// line on stdin, `go` or `go <deadline_ms>` (which replaces `--deadline-ms`). End of input
    /// first means the attempt was given to nobody: exit [`STOOD_DOWN`] without starting it.
    #[arg(long)]
    pub await_go: bool,
    /// The agent's command and arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// Exit status of a primed supervisor that was never told to go (nothing recorded, nothing
/// started: the attempt reads as never begun).
pub const STOOD_DOWN: i32 = 3;

/// How a supervisor's work ended.
enum Supervised {
    /// An outcome is in `exit.json`.
    Recorded,
    /// A primed supervisor was closed without a go.
    StoodDown,
}

pub fn run(args: &SuperviseArgs) -> i32 {
    // First of all, so a stop signal is never lost (nor kills us before we can record it).
    let signals = SignalSet::of(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
    if let Err(e) = signals.block() {
        eprintln!("supervise: cannot block signals: {e}");
        return 1;
    }
    match supervise(args, &signals) {
        Ok(Supervised::Recorded) => 0,
        Ok(Supervised::StoodDown) => STOOD_DOWN,
        Err(e) => {
            eprintln!("supervise {}: {e}", args.run_dir.display());
            1
        }
    }
}

/// Why the agent is being stopped, and when it gets SIGKILL.
struct Stopping {
    outcome: RecordedOutcome,
    kill_at: Instant,
    killed: bool,
}

/// How the agent process ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Code(i32),
    Signal(i32),
}

fn supervise(args: &SuperviseArgs, signals: &SignalSet) -> io::Result<Supervised> {
    let dir = args.run_dir.as_path();
    let _lock = hold_lock(args)?;
    write_atomic(
        &dir.join(SUPERVISOR_PID_FILE),
        std::process::id().to_string().as_bytes(),
    )?;
    let deadline_ms = if args.await_go {
        match await_go(args.deadline_ms)? {
            Some(deadline_ms) => deadline_ms,
            None => return Ok(Supervised::StoodDown),
        }
    } else {
        args.deadline_ms
    };
    run_attempt(args, deadline_ms, signals).map(|()| Supervised::Recorded)
}

/// Waits for the coordinator's go on stdin: the deadline to run under, or `None` when the input
/// ended without one. A stop signal meanwhile (the executor's `stop`) counts as a go and is left
/// pending, so [`run_attempt`] records the stop without starting the agent.
fn await_go(default_deadline: Option<Millis>) -> io::Result<Option<Option<Millis>>> {
    use std::io::BufRead;
    let stops = SignalSet::of(&[libc::SIGTERM, libc::SIGINT]);
    loop {
        let mut stdin = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut stdin, 1, GO_POLL_MS) };
        if ready > 0 {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            if line.is_empty() {
                return Ok(None);
            }
            return parse_go(&line, default_deadline)
                .map(Some)
                .map_err(io::Error::other);
        }
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        if let Some(sig) = stops.wait(Duration::ZERO) {
            // SAFETY: raising a signal we block only makes it pending again.
            unsafe { libc::raise(sig) };
            return Ok(Some(default_deadline));
        }
    }
}

/// How often a primed supervisor looks for a stop signal while it waits for its go.
const GO_POLL_MS: libc::c_int = 100;

/// Parses a go line: `go` (keep `default_deadline`) or `go <deadline_ms>`.
fn parse_go(line: &str, default_deadline: Option<Millis>) -> Result<Option<Millis>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("go") {
        return Err(format!("expected `go` on stdin, got {:?}", line.trim_end()));
    }
    match (words.next(), words.next()) {
        (None, _) => Ok(default_deadline),
        (Some(ms), None) => ms
            .parse::<Millis>()
            .map(Some)
            .map_err(|_| format!("bad deadline in the go line: {ms:?}")),
        (Some(_), Some(_)) => Err(format!(
            "unexpected words in the go line {:?}",
            line.trim_end()
        )),
    }
}

/// Runs the agent of an attempt that never began, under `deadline_ms`, and records how it ended.
fn run_attempt(
    args: &SuperviseArgs,
    deadline_ms: Option<Millis>,
    signals: &SignalSet,
) -> io::Result<()> {
    let dir = args.run_dir.as_path();

    // Defensive: the executor only starts us for an attempt that never began.
    if dir.join(EXIT_FILE).exists() {
        return Ok(());
    }
    if read_started(dir)?.is_some() {
        return Err(io::Error::other(
            "this attempt already began once; refusing to run it again",
        ));
    }
    let record = |outcome, error: Option<String>, started_at, ended: Option<Ended>| {
        let (exit_code, signal) = match ended {
            Some(Ended::Code(code)) => (Some(code), None),
            Some(Ended::Signal(sig)) => (None, Some(sig)),
            None => (None, None),
        };
        let rec = ExitRecord {
            exit_code,
            signal,
            outcome,
            error,
            started_at,
            finished_at: now_ms(),
        };
        write_json_atomic(&dir.join(EXIT_FILE), &rec)
    };

    // A stop or a deadline that came before the agent started: it never starts.
    if let Some(reason) = requested_stop(dir) {
        return record(stop_outcome(reason), None, None, None);
    }
    if SignalSet::of(&[libc::SIGTERM, libc::SIGINT]).take_pending() {
        return record(
            stop_outcome(requested_stop(dir).unwrap_or(StopReason::Cancel)),
            None,
            None,
            None,
        );
    }
    if deadline_ms.is_some_and(|d| now_ms() >= d) {
        return record(
            RecordedOutcome::TimedOut,
            Some("the deadline passed before the agent started".into()),
            None,
            None,
        );
    }

    // From here on the attempt counts as begun: `started` is written before the spawn, so a
    // crash anywhere after this line reads as lost, never as "never started".
    let started_at = now_ms();
    write_json_atomic(&dir.join(STARTED_FILE), &StartedRecord { started_at })?;

    let pid = match spawn_agent(args) {
        Ok(pid) => pid,
        Err(e) => {
            let error = format!(
                "cannot start agent command `{}`: {e}",
                args.command.join(" ")
            );
            return record(RecordedOutcome::Failed, Some(error), Some(started_at), None);
        }
    };
    let _ = write_atomic(&dir.join(AGENT_PID_FILE), pid.to_string().as_bytes());

    let grace = Duration::from_millis(args.kill_grace_ms);
    let mut stopping: Option<Stopping> = None;
    let ended = loop {
        if let Some(ended) = agent_ended(pid)? {
            break ended;
        }
        let now = Instant::now();
        if stopping.is_none() && deadline_ms.is_some_and(|d| now_ms() >= d) {
            stopping = Some(begin_stop(pid, RecordedOutcome::TimedOut, grace));
        }
        if let Some(stop) = stopping.as_mut() {
            if !stop.killed && now >= stop.kill_at {
                kill_group(pid, libc::SIGKILL);
                stop.killed = true;
            }
        }
        // Sleep until a signal, the deadline, the kill time, or a second (a safety net).
        let mut wait = Duration::from_secs(1);
        if let (None, Some(deadline)) = (&stopping, deadline_ms) {
            wait = wait.min(Duration::from_millis((deadline - now_ms()).max(0) as u64));
        }
        if let Some(stop) = stopping.as_ref().filter(|s| !s.killed) {
            wait = wait.min(stop.kill_at.saturating_duration_since(now));
        }
        match signals.wait(wait) {
            Some(libc::SIGTERM | libc::SIGINT) if stopping.is_none() => {
                let reason = requested_stop(dir).unwrap_or(StopReason::Cancel);
                stopping = Some(begin_stop(pid, stop_outcome(reason), grace));
            }
            _ => {}
        }
    };

    let (outcome, error) = match (&stopping, ended) {
        (Some(stop), _) => (stop.outcome, None),
        (None, Ended::Code(0)) => (RecordedOutcome::Succeeded, None),
        (None, Ended::Code(code)) => (
            RecordedOutcome::Failed,
            Some(with_stderr(
                dir,
                format!("the agent exited with code {code}"),
            )),
        ),
        (None, Ended::Signal(sig)) => (
            RecordedOutcome::Failed,
            Some(with_stderr(
                dir,
                format!(
                    "the agent was killed by signal {sig} ({})",
                    signal_name(sig)
                ),
            )),
        ),
    };
    record(outcome, error, Some(started_at), Some(ended))
}

/// Keeps the attempt's lock for the supervisor's life (the returned file owns the descriptor).
fn hold_lock(args: &SuperviseArgs) -> io::Result<File> {
    match args.lock_fd {
        Some(fd) => {
            // SAFETY: fcntl on a descriptor number; fails cleanly if it is not open.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags == -1 {
                return Err(io::Error::other(format!(
                    "--lock-fd {fd} is not an open descriptor"
                )));
            }
            // The agent must not inherit the lock, or it would outlive us holding it.
            // SAFETY: as above.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the executor handed this descriptor to us; nothing else in this process owns it.
            Ok(unsafe { File::from_raw_fd(fd) })
        }
        None => {
            let lock = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(args.run_dir.join(LOCK_FILE))?;
            if !try_flock(&lock, libc::LOCK_EX)? {
                return Err(io::Error::other("the attempt is locked by another process"));
            }
            Ok(lock)
        }
    }
}

/// Starts the agent in its own process group; it dies with us (`PR_SET_PDEATHSIG`).
fn spawn_agent(args: &SuperviseArgs) -> io::Result<libc::pid_t> {
    let dir = args.run_dir.as_path();
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| io::Error::other("no agent command"))?;
    let log = |name: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
    };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log(STDOUT_LOG)?)
        .stderr(log(STDERR_LOG)?)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (sigprocmask, signal, prctl, getppid) before exec.
    unsafe {
        cmd.pre_exec(move || {
            // The agent starts with no blocked signals and default SIGPIPE, whatever ours are.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // We may have died before the prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(127);
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = parent;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Reaped with waitid/waitpid below, not through `Child`.
    Ok(child.id() as libc::pid_t)
}

/// Whether the agent has exited; if so, kills what is left of its process group (while the
/// unreaped agent still pins the group id, so it cannot name anyone else's group), then reaps it.
fn agent_ended(pid: libc::pid_t) -> io::Result<Option<Ended>> {
    // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid on our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 when the child has not exited).
    if unsafe { info.si_pid() } == 0 {
        return Ok(None);
    }
    kill_group(pid, libc::SIGKILL);
    let mut status = 0;
    loop {
        // SAFETY: reaping our own exited child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    Ok(Some(if libc::WIFEXITED(status) {
        Ended::Code(libc::WEXITSTATUS(status))
    } else {
        Ended::Signal(libc::WTERMSIG(status))
    }))
}

fn begin_stop(pid: libc::pid_t, outcome: RecordedOutcome, grace: Duration) -> Stopping {
    kill_group(pid, libc::SIGTERM);
    Stopping {
        outcome,
        kill_at: Instant::now() + grace,
        killed: false,
    }
}

fn kill_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: plain syscall; the group is the agent's, pinned by the unreaped agent.
    unsafe { libc::killpg(pgid, signal) };
}

fn requested_stop(dir: &Path) -> Option<StopReason> {
    std::fs::read_to_string(dir.join(STOP_FILE))
        .ok()
        .map(|text| parse_stop_reason(&text))
}

fn stop_outcome(reason: StopReason) -> RecordedOutcome {
    match reason {
        StopReason::Cancel => RecordedOutcome::Cancelled,
        StopReason::Timeout => RecordedOutcome::TimedOut,
    }
}

fn with_stderr(dir: &Path, message: String) -> String {
    match log_tail(&dir.join(STDERR_LOG), 400) {
        Some(tail) => format!("{message}; stderr ends with: {tail}"),
        None => message,
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// A set of signals taken synchronously.
struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn of(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: sigemptyset/sigaddset initialise the set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &sig in signals {
                libc::sigaddset(&mut set, sig);
            }
            SignalSet(set)
        }
    }

    fn block(&self) -> io::Result<()> {
        // SAFETY: valid set; the process is single-threaded here.
        match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) } {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// Waits up to `timeout` for one of the set's signals.
    fn wait(&self, timeout: Duration) -> Option<libc::c_int> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec; a zeroed siginfo_t is a valid out-parameter.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigtimedwait(&self.0, &mut info, &ts)
        };
        (sig > 0).then_some(sig)
    }

    /// Consumes any pending signal of the set (which must be blocked); true if one was.
    fn take_pending(&self) -> bool {
        let mut any = false;
        while self.wait(Duration::ZERO).is_some() {
            any = true;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SuperviseArgs,
    }

    #[test]
    fn parses_the_flags_the_executor_passes() {
        let cli = Cli::try_parse_from([
            "x",
            "--run-dir",
            "/r/t/1",
            "--lock-fd",
            "7",
            "--deadline-ms",
            "123",
            "--",
            "sh",
            "-c",
            "echo --run-dir",
        ])
        .unwrap();
        assert_eq!(cli.args.run_dir, PathBuf::from("/r/t/1"));
        assert_eq!(cli.args.lock_fd, Some(7));
        assert_eq!(cli.args.deadline_ms, Some(123));
        assert!(!cli.args.await_go);
        assert_eq!(cli.args.kill_grace_ms, 5000);
        assert_eq!(cli.args.command, ["sh", "-c", "echo --run-dir"]);
        assert!(
            Cli::try_parse_from(["x", "--run-dir", "/r"]).is_err(),
            "a command is required"
        );
    }

    #[test]
    fn go_lines_carry_the_deadline() {
        assert_eq!(parse_go("go\n", Some(5)), Ok(Some(5)));
        assert_eq!(parse_go("go\n", None), Ok(None));
        assert_eq!(
            parse_go("go 1700000000000\n", Some(5)),
            Ok(Some(1_700_000_000_000))
        );
        for bad in ["stop\n", "go soon\n", "go 1 2\n", "\n"] {
            assert!(parse_go(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal");
    }
}
