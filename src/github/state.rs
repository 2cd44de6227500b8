//! The GitHub side's own small record, in its own SQLite file under the data dir: which tasks
//! came from which issue, their status comment and the last status reported, the triggers waiting
//! behind a running task, and the runs that count against the hourly budgets. Survives restarts.
//!
//! The connection lives on a [`Worker`] thread (`ao-github-db`), so concurrent writes share one
//! group commit and no runtime thread waits on SQLite's file locks. A delivery that created a
//! task queues its row here without waiting for it ([`StateDb::insert_budgeted`]): requests run
//! in the order they were queued, so every later read sees it, and a crash before it was
//! committed is repaired at start from the task store ([`StateDb::track_missing`]).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::sqlite_worker::{Db, Failed, Worker};
use crate::task::Millis;

#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub task_id: String,
    pub repository: String,
    pub number: u64,
    pub agent_type: String,
    pub installation_id: Option<u64>,
    pub comment_id: Option<u64>,
    pub reported: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("GitHub state database: {0}")]
pub struct StateError(String);

fn err(e: rusqlite::Error) -> StateError {
    StateError(e.to_string())
}

impl From<Failed> for StateError {
    fn from(failed: Failed) -> StateError {
        StateError(failed.0)
    }
}

pub struct StateDb {
    worker: Worker,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateDb")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tracked (
    task_id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    agent_type TEXT NOT NULL,
    installation_id INTEGER,
    comment_id INTEGER,
    reported TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tracked_issue ON tracked (repository, number, agent_type, done);
CREATE INDEX IF NOT EXISTS tracked_open ON tracked (done);
CREATE TABLE IF NOT EXISTS deferred (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    agent_type TEXT NOT NULL,
    installation_id INTEGER,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deferred_issue ON deferred (repository, number, agent_type, id);
CREATE TABLE IF NOT EXISTS budget_runs (
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_runs_started ON budget_runs (started_at);
";

/// A run counted against the hourly budgets: one row per reservation the webhook side kept.
///
/// Its own table because neither `tracked` nor `deferred` says which of their rows took a
/// budget slot, or when: `tracked` also holds the parent nudges (never budgeted) and the
/// triggers that waited (budgeted when they started waiting, tracked only when they start), and
/// a waiting trigger dropped by unlabeling leaves `deferred` but keeps its slot.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRun {
    pub repository: String,
    pub number: u64,
    pub started_at: Millis,
}

/// What [`StateDb::budget_runs_since`] could read.
#[derive(Debug, Default, PartialEq)]
pub struct RecentRuns {
    /// Oldest first.
    pub runs: Vec<BudgetRun>,
    /// Rows whose values cannot be a run (wrong type, negative issue number).
    pub skipped: usize,
}

/// A trigger waiting for the issue's running task of its agent type to finish.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferred {
    pub id: i64,
    pub repository: String,
    pub number: u64,
    pub agent_type: String,
    pub installation_id: Option<u64>,
    pub idempotency_key: String,
    pub payload: String,
    pub priority: i64,
}

impl StateDb {
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(err)?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<StateDb, StateError> {
        Self::init(Connection::open_in_memory().map_err(err)?)
    }

    fn init(conn: Connection) -> Result<StateDb, StateError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(StateDb {
            worker: Worker::start("ao-github-db", conn)?,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StateError> {
        self.worker.call(move |db| f(db).map_err(err)).await
    }

    /// Records a task the GitHub side created without a budget slot of its own (a parent nudge,
    /// a trigger that waited: its slot was taken when it started waiting). A second insert of
    /// the same task is a no-op.
    pub async fn insert(&self, t: &Tracked) -> Result<(), StateError> {
        let t = t.clone();
        let now = crate::task::now_ms();
        self.with(move |db| insert_tracked(db, &t, now)).await
    }

    /// Records a task a trigger started on the budget, its row and its budget run, without
    /// waiting for the commit (which may linger to share one with the next deliveries' rows):
    /// the webhook answers as soon as the task itself is stored. Later
    /// requests to this database run after it, so they see it; if the process dies before it
    /// is committed, [`Self::track_missing`] puts the row back at the next start. `Err` only
    /// when the database's thread is gone; a failed commit is logged.
    pub fn insert_budgeted(&self, t: &Tracked) -> Result<(), StateError> {
        let t = t.clone();
        let now = crate::task::now_ms();
        let task_id = t.task_id.clone();
        self.worker.submit_in_background(
            move |db| {
                insert_tracked(db, &t, now).map_err(err)?;
                record_run(db, &t.repository, t.number, now).map_err(err)
            },
            move |result: Result<(), StateError>| {
                if let Err(e) = result {
                    tracing::error!(task_id = %task_id, error = %e, "cannot record the GitHub task; it is tracked again at the next start");
                }
            },
        )?;
        Ok(())
    }

    /// Tracks the tasks in `started` (each with when it was created) that have no row yet,
    /// which only a crash between storing a task and recording it leaves, and counts those
    /// created since `budget_since` against the budget (a nudge or a waited trigger among them
    /// is counted too: the budget errs toward fewer runs). Returns how many were missing.
    pub async fn track_missing(
        &self,
        started: Vec<(Tracked, Millis)>,
        budget_since: Millis,
    ) -> Result<usize, StateError> {
        self.with(move |db| {
            let mut missing = 0;
            for (t, created_at) in &started {
                let known = db.with("SELECT 1 FROM tracked WHERE task_id = ?1", |st| {
                    st.query_row([&t.task_id], |_| Ok(())).optional()
                })?;
                if known.is_some() {
                    continue;
                }
                insert_tracked(db, t, *created_at)?;
                if *created_at >= budget_since {
                    record_run(db, &t.repository, t.number, *created_at)?;
                }
                missing += 1;
            }
            Ok(missing)
        })
        .await
    }

    /// Tasks of one issue and agent type not yet reported as finished.
    pub async fn open_for(
        &self,
        repository: &str,
        number: u64,
        agent_type: &str,
    ) -> Result<Vec<String>, StateError> {
        let (repository, agent_type) = (repository.to_owned(), agent_type.to_owned());
        self.with(move |db| {
            db.with(
                "SELECT task_id FROM tracked WHERE repository = ?1 AND number = ?2 AND agent_type = ?3 AND done = 0",
                |st| {
                    st.query_map(params![repository, number as i64, agent_type], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()
                },
            )
        })
        .await
    }

    /// Every task still followed by the progress reporter.
    pub async fn open_tasks(&self) -> Result<Vec<Tracked>, StateError> {
        self.with(|db| {
            db.with(
                "SELECT task_id, repository, number, agent_type, installation_id, comment_id, reported
                 FROM tracked WHERE done = 0 ORDER BY created_at LIMIT 1000",
                |st| {
                    st.query_map([], |r| {
                        Ok(Tracked {
                            task_id: r.get(0)?,
                            repository: r.get(1)?,
                            number: r.get::<_, i64>(2)? as u64,
                            agent_type: r.get(3)?,
                            installation_id: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
                            comment_id: r.get::<_, Option<i64>>(5)?.map(|i| i as u64),
                            reported: r.get(6)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<Tracked>>>()
                },
            )
        })
        .await
    }

    /// Queues a trigger behind the running task; false when the same trigger already waits.
    /// A new one counts against the budget from now on, as the caller's reservation does.
    pub async fn defer(&self, d: &Deferred) -> Result<bool, StateError> {
        let d = d.clone();
        let now = crate::task::now_ms();
        self.with(move |db| {
            let new = db.with(
                "INSERT OR IGNORE INTO deferred (repository, number, agent_type, installation_id, idempotency_key, payload, priority, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                |st| {
                    st.execute(params![d.repository, d.number as i64, d.agent_type,
                        d.installation_id.map(|i| i as i64), d.idempotency_key, d.payload, d.priority, now])
                },
            )? == 1;
            if new {
                record_run(db, &d.repository, d.number, now)?;
            }
            Ok(new)
        })
        .await
    }

    /// The budget runs started at or after `since`, oldest first (startup only: the budget
    /// lives in memory while the coordinator runs). Older runs can never count again and are
    /// deleted on the way; unreadable rows are counted, not returned, so one bad row does not
    /// cost the rest.
    pub async fn budget_runs_since(&self, since: Millis) -> Result<RecentRuns, StateError> {
        self.with(move |db| {
            db.conn().execute(
                "DELETE FROM budget_runs WHERE started_at < ?1",
                params![since],
            )?;
            let mut st = db.conn().prepare(
                "SELECT repository, number, started_at FROM budget_runs
                 WHERE started_at >= ?1 ORDER BY started_at",
            )?;
            let mut rows = st.query(params![since])?;
            let mut out = RecentRuns::default();
            while let Some(row) = rows.next()? {
                match budget_run(row) {
                    Ok(run) => out.runs.push(run),
                    Err(_) => out.skipped += 1,
                }
            }
            Ok(out)
        })
        .await
    }

    /// The oldest trigger waiting on (issue, agent type), left in place until [`Self::forget_deferred`].
    pub async fn next_deferred(
        &self,
        repository: &str,
        number: u64,
        agent_type: &str,
    ) -> Result<Option<Deferred>, StateError> {
        let (repository, agent_type) = (repository.to_owned(), agent_type.to_owned());
        self.with(move |db| {
            db.with(
                "SELECT id, repository, number, agent_type, installation_id, idempotency_key, payload, priority
                 FROM deferred WHERE repository = ?1 AND number = ?2 AND agent_type = ?3 ORDER BY id LIMIT 1",
                |st| {
                    st.query_row(params![repository, number as i64, agent_type], |r| {
                        Ok(Deferred {
                            id: r.get(0)?,
                            repository: r.get(1)?,
                            number: r.get::<_, i64>(2)? as u64,
                            agent_type: r.get(3)?,
                            installation_id: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
                            idempotency_key: r.get(5)?,
                            payload: r.get(6)?,
                            priority: r.get(7)?,
                        })
                    })
                    .optional()
                },
            )
        })
        .await
    }

    pub async fn forget_deferred(&self, id: i64) -> Result<(), StateError> {
        self.with(move |db| {
            db.with("DELETE FROM deferred WHERE id = ?1", |st| {
                st.execute(params![id])
            })
            .map(|_| ())
        })
        .await
    }

    /// Drops every trigger waiting on (issue, agent type) (the trigger label was removed).
    pub async fn drop_deferred(
        &self,
        repository: &str,
        number: u64,
        agent_type: &str,
    ) -> Result<usize, StateError> {
        let (repository, agent_type) = (repository.to_owned(), agent_type.to_owned());
        self.with(move |db| {
            db.with(
                "DELETE FROM deferred WHERE repository = ?1 AND number = ?2 AND agent_type = ?3",
                |st| st.execute(params![repository, number as i64, agent_type]),
            )
        })
        .await
    }

    pub async fn comment_id(&self, task_id: &str) -> Result<Option<u64>, StateError> {
        let task_id = task_id.to_owned();
        self.with(move |db| {
            db.with("SELECT comment_id FROM tracked WHERE task_id = ?1", |st| {
                st.query_row(params![task_id], |r| r.get::<_, Option<i64>>(0))
                    .optional()
            })
            .map(|v| v.flatten().map(|i| i as u64))
        })
        .await
    }

    pub async fn set_comment(&self, task_id: &str, comment_id: u64) -> Result<(), StateError> {
        let task_id = task_id.to_owned();
        self.with(move |db| {
            db.with(
                "UPDATE tracked SET comment_id = ?2 WHERE task_id = ?1",
                |st| st.execute(params![task_id, comment_id as i64]),
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn set_reported(
        &self,
        task_id: &str,
        status: &str,
        done: bool,
    ) -> Result<(), StateError> {
        let (task_id, status) = (task_id.to_owned(), status.to_owned());
        self.with(move |db| {
            db.with(
                "UPDATE tracked SET reported = ?2, done = ?3 WHERE task_id = ?1",
                |st| st.execute(params![task_id, status, done as i64]),
            )
            .map(|_| ())
        })
        .await
    }
}

fn insert_tracked(db: &Db<'_>, t: &Tracked, now: Millis) -> rusqlite::Result<()> {
    db.with(
        "INSERT OR IGNORE INTO tracked (task_id, repository, number, agent_type, installation_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        |st| {
            st.execute(params![t.task_id, t.repository, t.number as i64, t.agent_type,
                t.installation_id.map(|i| i as i64), now])
        },
    )
    .map(|_| ())
}

fn record_run(db: &Db<'_>, repository: &str, number: u64, now: Millis) -> rusqlite::Result<()> {
    db.with(
        "INSERT INTO budget_runs (repository, number, started_at) VALUES (?1, ?2, ?3)",
        |st| st.execute(params![repository, number as i64, now]),
    )
    .map(|_| ())
}

fn budget_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<BudgetRun> {
    let number: i64 = row.get(1)?;
    Ok(BudgetRun {
        repository: row.get(0)?,
        number: u64::try_from(number)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, number))?,
        started_at: row.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("github.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.insert(&Tracked {
                task_id: "t1".into(),
                repository: "o/r".into(),
                number: 3,
                agent_type: "coder".into(),
                installation_id: Some(9),
                comment_id: None,
                reported: None,
            })
            .await
            .unwrap();
            db.set_comment("t1", 55).await.unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.comment_id("t1").await.unwrap(), Some(55));
        assert_eq!(db.open_for("o/r", 3, "coder").await.unwrap(), vec!["t1"]);
        db.set_reported("t1", "succeeded", true).await.unwrap();
        assert!(db.open_tasks().await.unwrap().is_empty());
    }

    fn tracked(task_id: &str, number: u64) -> Tracked {
        Tracked {
            task_id: task_id.into(),
            repository: "o/r".into(),
            number,
            agent_type: "coder".into(),
            installation_id: None,
            comment_id: None,
            reported: None,
        }
    }

    fn waiting(key: &str, number: u64) -> Deferred {
        Deferred {
            id: 0,
            repository: "o/r".into(),
            number,
            agent_type: "coder".into(),
            installation_id: None,
            idempotency_key: key.into(),
            payload: "{}".into(),
            priority: 0,
        }
    }

    #[tokio::test]
    async fn budget_runs_are_the_reservations_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("github.db");
        let db = StateDb::open(&path).unwrap();
        let start = crate::task::now_ms();
        // Counted: a task started on the budget, a trigger that starts waiting.
        db.insert_budgeted(&tracked("t1", 1)).unwrap();
        assert!(db.defer(&waiting("k2", 2)).await.unwrap());
        // Not counted: the same trigger waiting again, a nudge or a waited trigger starting.
        assert!(!db.defer(&waiting("k2", 2)).await.unwrap());
        db.insert(&tracked("t3", 3)).await.unwrap();
        // Unlabeling drops the waiting trigger, not its slot (the memory keeps it too).
        assert_eq!(db.drop_deferred("o/r", 2, "coder").await.unwrap(), 1);
        let recent = db.budget_runs_since(start).await.unwrap();
        let numbers: Vec<u64> = recent.runs.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert!(recent.runs.iter().all(|r| r.started_at >= start));
        assert_eq!(recent.skipped, 0);
    }

    #[tokio::test]
    async fn old_runs_are_pruned_and_bad_rows_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("github.db");
        let db = StateDb::open(&path).unwrap();
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(
            "INSERT INTO budget_runs VALUES ('o/r', 1, 500), ('o/r', 2, 1500), ('o/r', 3, 1000),
                                            ('o/r', -4, 1200), ('o/r', 5, 'yesterday');",
        )
        .unwrap();
        let recent = db.budget_runs_since(1000).await.unwrap();
        let runs: Vec<(u64, Millis)> = recent
            .runs
            .iter()
            .map(|r| (r.number, r.started_at))
            .collect();
        assert_eq!(runs, [(3, 1000), (2, 1500)], "oldest first");
        assert_eq!(recent.skipped, 2);
        let left: i64 = raw
            .query_row(
                "SELECT count(*) FROM budget_runs WHERE number = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "runs older than the window are deleted");
    }
}
