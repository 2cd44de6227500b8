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

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, Statement};
use tokio::sync::oneshot;

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

/// A connection on its own thread. Dropping the last handle drains the queue, then closes the
/// connection and joins the thread.
pub struct Worker {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
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
    /// Moves `conn` (configured and migrated already) into a thread called `name`.
    pub fn start(name: &str, conn: Connection) -> Result<Worker, Failed> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(conn, queue))
            .map_err(|e| Failed(format!("cannot start the {name} thread: {e}")))?;
        Ok(Worker {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues `f`; `answer` gets its result once the batch committed (or why it did not).
    pub fn submit<T, E, F, A>(&self, f: F, answer: A) -> Result<(), Failed>
    where
        T: Send + 'static,
        E: From<Failed> + Send + 'static,
        F: FnOnce(&Db<'_>) -> Result<T, E> + Send + 'static,
        A: FnOnce(Result<T, E>) + Send + 'static,
    {
        let job: Job = Box::new(move |db: &Db<'_>| {
            let result = f(db);
            Box::new(move |batch: Option<Failed>| {
                answer(match batch {
                    None => result,
                    Some(why) => Err(E::from(why)),
                })
            }) as Reply
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
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
        self.submit(f, move |result| {
            let _ = tx.send(result);
        })?;
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
        self.submit(f, move |result| {
            let _ = tx.send(result);
        })?;
        rx.recv()
            .map_err(|_| E::from(Failed("the sqlite thread dropped the request".into())))?
    }
}

fn run(conn: Connection, jobs: mpsc::Receiver<Job>) {
    let db = Db {
        conn: &conn,
        cache: RefCell::default(),
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(job) = jobs.recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&db, &mut batch);
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
}
