//! One SQLite connection on its own thread, for every embedded database (the task store, the
//! workflow store, the GitHub side's `github.db`).
//!
//! A `rusqlite::Connection` is `Send` but not `Sync`, and its calls block. A [`Worker`] moves the
//! connection into a dedicated thread; async callers hand it a closure over a channel and await
//! the answer on a oneshot, so no runtime thread ever waits on SQLite or its file locks. The
//! thread owns the prepared-statement cache ([`Db::with`]).
//!
//! It *group-commits*: whatever requests queued up while it was busy (up to [`MAX_BATCH`]) run
//! one after the other inside a single `BEGIN IMMEDIATE` transaction and are answered only after
//! `COMMIT` returned. Each request still sees every earlier one (they run serially), a failing
//! statement only undoes itself, and if the commit fails every request in the batch is told so —
//! nothing is reported before it is durable. A lone request runs in autocommit mode. Under load
//! this turns one WAL append (and one round of file locks) per write into one per batch.
//! A write nobody waits on ([`Worker::submit_in_background`]) may hold its batch open for up to
//! [`LINGER`] so that more share its commit; a request someone waits on never waits for that.
//!
//! A database file in WAL mode is checkpointed by a second thread, not inside the writer's
//! commits ([`checkpoint`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Statement};
use tokio::sync::oneshot;

mod checkpoint;

pub use checkpoint::RESTART_FRAMES;
use checkpoint::{Checkpointer, Checkpoints};

/// Most requests the worker runs in one transaction.
pub const MAX_BATCH: usize = 256;

/// Why a request has no answer of its own: its batch was rolled back, it panicked, or the
/// thread is gone. Each database turns it into its own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

/// The connection and its prepared statements, alive for the worker thread's lifetime.
pub struct Db<'c> {
    conn: &'c Connection,
    cache: RefCell<HashMap<String, Option<Statement<'c>>>>,
}

impl<'c> Db<'c> {
    /// Runs `f` on the statement for `sql`, prepared once and kept for reuse.
    pub fn with<T>(
        &self,
        sql: &str,
        f: impl FnOnce(&mut Statement<'c>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let cached = self.cache.borrow_mut().get_mut(sql).and_then(Option::take);
        let mut st = match cached {
            Some(st) => st,
            None => self.conn.prepare(sql)?,
        };
        let out = f(&mut st);
        let mut cache = self.cache.borrow_mut();
        match cache.get_mut(sql) {
            Some(slot) => *slot = Some(st),
            None => {
                cache.insert(sql.to_owned(), Some(st));
            }
        }
        out
    }

    /// The connection itself, for statements not worth caching.
    pub fn conn(&self) -> &'c Connection {
        self.conn
    }
}

/// What the thread runs: a request, which hands back how to answer it once the batch's fate is
/// known (`None`: committed; `Some(why)`: rolled back).
type Job = Box<dyn FnOnce(&Db<'_>) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Option<Failed>) + Send>;

/// Longest a batch of only [background](Worker::submit_in_background) requests waits for more
/// before it commits: nobody waits on them, and one commit of many rows costs the thread (and
/// the disk) a fraction of many commits of a few.
pub const LINGER: Duration = Duration::from_millis(10);

/// How long a lingering batch sleeps between looks at the channel.
const LINGER_NAP: Duration = Duration::from_millis(1);

/// A request on its way to the thread.
struct Queued {
    job: Job,
    /// Nobody waits for its answer: it may linger ([`LINGER`]).
    background: bool,
}

/// A connection on its own thread. Dropping the last handle drains the queue, then closes the
/// connection and joins the thread.
pub struct Worker {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Queued>>,
    thread: Option<JoinHandle<()>>,
    /// For a database file in WAL mode ([`checkpoint`]).
    checkpointer: Option<Checkpointer>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The checkpointer's connection closes first, so the writer's is the last one and
        // SQLite checkpoints and removes the WAL when it closes.
        self.checkpointer = None;
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Moves `conn` (configured and migrated already) into a thread called `name`. A database
    /// file in WAL mode also gets a checkpoint thread ([`checkpoint`]).
    pub fn start(name: &str, conn: Connection) -> Result<Worker, Failed> {
        Self::start_restarting_at(name, conn, RESTART_FRAMES)
    }

    /// As [`Self::start`], restarting the WAL at `restart_frames` pages (tests).
    fn start_restarting_at(
        name: &str,
        conn: Connection,
        restart_frames: i64,
    ) -> Result<Worker, Failed> {
        let (checkpointer, checkpoints) = match wal_file(&conn) {
            Some(path) => match Checkpointer::start(name, &path, restart_frames) {
                Some((checkpointer, shared)) => {
                    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                        .map_err(|e| Failed(format!("cannot configure {}: {e}", path.display())))?;
                    (Some(checkpointer), Some(shared))
                }
                None => (None, None),
            },
            None => (None, None),
        };
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(conn, queue, checkpoints))
            .map_err(|e| Failed(format!("cannot start the {name} thread: {e}")))?;
        Ok(Worker {
            jobs: Some(jobs),
            thread: Some(thread),
            checkpointer,
        })
    }

    /// Queues `f` for a write nobody waits on: `answer` gets its result once the batch
    /// committed (or why it did not), and the batch may wait up to [`LINGER`] for others to
    /// share its commit. A request submitted after it still runs after it.
    pub fn submit_in_background<T, E, F, A>(&self, f: F, answer: A) -> Result<(), Failed>
    where
        T: Send + 'static,
        E: From<Failed> + Send + 'static,
        F: FnOnce(&Db<'_>) -> Result<T, E> + Send + 'static,
        A: FnOnce(Result<T, E>) + Send + 'static,
    {
        self.send(job(f, answer), true)
    }

    fn send(&self, job: Job, background: bool) -> Result<(), Failed> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(Queued { job, background }).ok())
            .ok_or_else(|| Failed("the sqlite thread has stopped".into()))
    }

    /// Runs `f` on the thread and awaits its committed result.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Failed> + Send + 'static,
        F: FnOnce(&Db<'_>) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let answer = move |result| {
            let _ = tx.send(result);
        };
        self.send(job(f, answer), false)?;
        rx.await
            .map_err(|_| E::from(Failed("the sqlite thread dropped the request".into())))?
    }

    /// As [`Self::call`], blocking the calling thread (startup, tests; never a runtime thread).
    pub fn call_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Failed> + Send + 'static,
        F: FnOnce(&Db<'_>) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let answer = move |result| {
            let _ = tx.send(result);
        };
        self.send(job(f, answer), false)?;
        rx.recv()
            .map_err(|_| E::from(Failed("the sqlite thread dropped the request".into())))?
    }
}

/// `f` as the thread runs it, `answer` told its result once the batch's fate is known.
fn job<T, E, F, A>(f: F, answer: A) -> Job
where
    T: Send + 'static,
    E: From<Failed> + Send + 'static,
    F: FnOnce(&Db<'_>) -> Result<T, E> + Send + 'static,
    A: FnOnce(Result<T, E>) + Send + 'static,
{
    Box::new(move |db: &Db<'_>| {
        let result = f(db);
        Box::new(move |batch: Option<Failed>| {
            answer(match batch {
                None => result,
                Some(why) => Err(E::from(why)),
            })
        }) as Reply
    })
}

/// The file behind `conn` when it is one in WAL mode.
fn wal_file(conn: &Connection) -> Option<std::path::PathBuf> {
    let path = conn.path().filter(|p| !p.is_empty())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .ok()?;
    mode.eq_ignore_ascii_case("wal").then(|| path.into())
}

fn run(conn: Connection, jobs: mpsc::Receiver<Queued>, checkpoints: Option<Arc<Checkpoints>>) {
    let db = Db {
        conn: &conn,
        cache: RefCell::default(),
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        let linger_until = first.background.then(|| Instant::now() + LINGER);
        let mut waited_on = !first.background;
        batch.push(first.job);
        loop {
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(next) => {
                        waited_on |= !next.background;
                        batch.push(next.job);
                    }
                    Err(_) => break,
                }
            }
            // Only a batch nobody waits on lingers, and only until its first request's time.
            // It naps rather than waits on the channel: a sender then finds nobody to wake,
            // and a request someone waits on is at most one nap late.
            let left = match linger_until {
                Some(until) if !waited_on && batch.len() < MAX_BATCH => {
                    until.saturating_duration_since(Instant::now())
                }
                _ => break,
            };
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(LINGER_NAP));
        }
        run_batch(&db, &mut batch);
        if let Some(checkpoints) = &checkpoints {
            checkpoints.after_batch(db.conn);
        }
    }
}

/// A panicking request loses its answer (its caller sees "dropped the request"), not the thread.
fn run_job(db: &Db<'_>, job: Job) -> Reply {
    catch_unwind(AssertUnwindSafe(|| job(db))).unwrap_or_else(|_| Box::new(|_| ()))
}

fn run_batch(db: &Db<'_>, batch: &mut Vec<Job>) {
    if batch.len() == 1 {
        for job in batch.drain(..) {
            run_job(db, job)(None);
        }
        return;
    }
    // If even BEGIN fails (another process held the lock past busy_timeout), each request runs
    // on its own and meets its own fate.
    let mut in_tx = db.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let mut pending: Vec<Reply> = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let reply = run_job(db, job);
        if !in_tx {
            reply(None);
            continue;
        }
        pending.push(reply);
        if db.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full): nothing in it stuck.
            for reply in pending.drain(..) {
                reply(Some(Failed("sqlite rolled back the transaction".into())));
            }
            in_tx = db.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        }
    }
    if in_tx {
        match db.conn.execute_batch("COMMIT") {
            Ok(()) => pending.into_iter().for_each(|reply| reply(None)),
            Err(e) => {
                let _ = db.conn.execute_batch("ROLLBACK");
                let why = Failed(format!("sqlite commit failed: {e}"));
                pending
                    .into_iter()
                    .for_each(|reply| reply(Some(why.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Sql(String),
        Failed(String),
    }
    impl From<Failed> for E {
        fn from(f: Failed) -> E {
            E::Failed(f.0)
        }
    }
    fn sql(e: rusqlite::Error) -> E {
        E::Sql(e.to_string())
    }

    fn worker() -> Worker {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .unwrap();
        Worker::start("ao-test-sqlite", conn).unwrap()
    }

    /// A new database file `t.db` in WAL mode under `dir`, with `schema` applied.
    fn wal_db(dir: &std::path::Path, schema: &str) -> (std::path::PathBuf, Connection) {
        let path = dir.join("t.db");
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(schema).unwrap();
        (path, conn)
    }

    /// The one integer `query` selects, read through the worker.
    fn scalar(w: &Worker, query: &'static str) -> i64 {
        w.call_blocking(move |db| db.conn().query_row(query, [], |r| r.get(0)).map_err(sql))
            .unwrap()
    }

    fn insert(w: &Worker, k: &'static str) -> Result<usize, E> {
        w.call_blocking(move |db| {
            db.with("INSERT INTO t (k) VALUES (?1)", |st| st.execute([k]))
                .map_err(sql)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_commit_together_and_a_failing_one_only_undoes_itself() {
        let w = std::sync::Arc::new(worker());
        let mut calls = Vec::new();
        for i in 0..500 {
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                // Every tenth key repeats an earlier one: its insert fails alone.
                let k = if i % 10 == 9 { i - 1 } else { i };
                w.call(move |db| {
                    db.with("INSERT INTO t (k) VALUES (?1)", |st| {
                        st.execute([k.to_string()])
                    })
                    .map_err(sql)
                })
                .await
            }));
        }
        let mut failed = 0;
        for c in calls {
            if c.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 50);
        let n: i64 = w
            .call(|db| {
                db.conn()
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(sql)
            })
            .await
            .unwrap();
        assert_eq!(n, 450);
    }

    #[test]
    fn a_panicking_request_is_answered_and_the_thread_lives_on() {
        let w = worker();
        let panicked: Result<(), E> = w.call_blocking(|_| panic!("boom"));
        assert_eq!(
            panicked,
            Err(E::Failed("the sqlite thread dropped the request".into()))
        );
        assert_eq!(insert(&w, "a"), Ok(1));
        assert!(matches!(insert(&w, "a"), Err(E::Sql(_))));
    }

    #[test]
    fn a_wal_file_is_copied_beside_the_writer_and_rewound_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_db(dir.path(), "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)");
        let restart_at = 64;
        let w = Worker::start_restarting_at("ao-test-ckpt", conn, restart_at).unwrap();
        assert_eq!(
            scalar(&w, "PRAGMA wal_autocheckpoint"),
            0,
            "the writer's commits never checkpoint"
        );

        let wal = dir.path().join("t.db-wal");
        let rewinds = || checkpoint::wal_rewinds(&wal);
        // Keeps writing until the WAL was rewound a few times: how soon depends on when the
        // checkpoint thread gets the CPU, not on anything asserted here.
        let (began, mut inserted) = (std::time::Instant::now(), 0i64);
        while rewinds() < 5 && began.elapsed() < Duration::from_secs(60) {
            for _ in 0..200 {
                // A 4 KiB value: every commit appends a few pages to the WAL.
                let k = inserted;
                let appended = w
                    .call_blocking(move |db| {
                        db.with("INSERT INTO t (k, v) VALUES (?1, zeroblob(4096))", |st| {
                            st.execute([k])
                        })
                        .map_err(sql)
                    })
                    .unwrap();
                assert_eq!(appended, 1);
                inserted += 1;
            }
        }
        assert!(
            rewinds() >= 5,
            "the WAL was rewound {} times in {inserted} commits",
            rewinds()
        );
        drop(w);
        assert!(
            !wal.exists(),
            "the last connection to close removes the WAL"
        );
        let reopened = Connection::open(&path).unwrap();
        let n: i64 = reopened
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, inserted);
    }

    #[test]
    fn background_writes_linger_to_share_a_commit_and_later_requests_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let (_, conn) = wal_db(dir.path(), "CREATE TABLE t (k TEXT PRIMARY KEY)");
        let w = Worker::start("ao-test-linger", conn).unwrap();
        let wal_bytes = || std::fs::metadata(dir.path().join("t.db-wal")).map_or(0, |m| m.len());
        let before = wal_bytes();
        let (done, answers) = mpsc::channel();
        for i in 0..100 {
            let done = done.clone();
            w.submit_in_background(
                move |db| {
                    db.with("INSERT INTO t (k) VALUES (?1)", |st| {
                        st.execute([format!("bg{i}")])
                    })
                    .map_err(sql)
                },
                move |r: Result<usize, E>| {
                    let _ = done.send(r);
                },
            )
            .unwrap();
            // Spread over ~2 ms: without lingering, each would be a commit of its own.
            std::thread::sleep(Duration::from_micros(20));
        }
        // Asked for after them, answered after them, and sees every one of them.
        assert_eq!(scalar(&w, "SELECT count(*) FROM t"), 100);
        for _ in 0..100 {
            assert_eq!(answers.recv().unwrap(), Ok(1));
        }
        // A commit appends each page it changed (24-byte header + 4 KiB) to the WAL.
        let frames = (wal_bytes() - before) / (24 + 4096);
        assert!(
            frames < 20,
            "{frames} pages written: the rows did not share commits"
        );
    }

    /// Closing a descriptor of a file drops every POSIX lock the process holds on it: a
    /// checkpointer that opened and closed one of its own would release the locks of every
    /// other connection to the file here, and another process would then delete the WAL from
    /// under them.
    #[test]
    fn a_stopped_checkpointer_leaves_other_connections_locks_alone() {
        if std::process::Command::new("python3")
            .arg("-c")
            .arg("import sqlite3")
            .status()
            .map_or(true, |s| !s.success())
        {
            eprintln!("skipped: no python3 with sqlite3 to play the other process");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, other) = wal_db(
            dir.path(),
            "CREATE TABLE t (k INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)",
        );
        let w = Worker::start("ao-test-locks", Connection::open(&path).unwrap()).unwrap();
        w.call_blocking(|db| {
            db.conn()
                .execute("INSERT INTO t VALUES (2)", [])
                .map_err(sql)
        })
        .unwrap();
        // Let the checkpointer make a pass (and flush), then stop it and the writer.
        std::thread::sleep(Duration::from_millis(200));
        drop(w);
        let wal = dir.path().join("t.db-wal");
        assert!(wal.exists(), "`other` still has the database open");
        // Another process opens and closes the database: as its last user it would checkpoint
        // and delete the WAL, which it may only do if nobody here holds a lock on the file.
        let status = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT count(*) FROM t').fetchall(); c.close()")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(wal.exists(), "the WAL was deleted under an open connection");
        let n: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
