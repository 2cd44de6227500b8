//! The embedded backend: one SQLite file (WAL) holding the task store and the task queues.
//!
//! [`SqliteBackend`] implements both [`TaskStore`] and [`TaskQueue`] on the same file, so the
//! embedded deployment needs nothing but a data directory (DESIGN.md §2).
//!
//! # Durability
//!
//! The file runs in WAL mode with `synchronous = NORMAL`. A commit appends its pages to the WAL
//! with `write(2)` before it returns, so once a call returns its effect survives the coordinator
//! *process* crashing or being killed at any point: the OS page cache still holds the WAL and
//! the next open replays it. Only the checkpoints `fsync` (on their own thread, see
//! [`crate::sqlite_worker`]). What NORMAL gives up compared with
//! FULL is the last few commits on an OS crash or power loss — never the database's integrity.
//! The coordinator tolerates that loss by design: tasks are re-enqueued from the store by the
//! stale-queued sweep, messages are at-least-once, and Nomad's idempotency token guards
//! dispatches. FULL would cost one `fsync` per commit (milliseconds each), far below the
//! ≥ 2,000 tasks/s the coordinator needs at ~6 writes per task.
//!
//! # Concurrency
//!
//! The connection lives on its own thread (`ao-sqlite`, a [`crate::sqlite_worker::Worker`]),
//! which group-commits: requests that queued up while it was busy share one transaction and are
//! answered only after it committed.
//!
//! Several backends (processes, or two coordinators in a test) may open the same file:
//! SQLite's file locks serialise writers, `busy_timeout` makes a writer wait for another
//! instead of failing, and every read-modify-write is either a single statement (which takes
//! the write lock before it reads) or runs in a `BEGIN IMMEDIATE` transaction, so no writer
//! ever upgrades a stale read snapshot. Compare-and-set conditions live in the `WHERE` clause
//! of that one statement.
//!
//! # Queue semantics
//!
//! A queue row is unique per (agent type, task id): `send` of a task that already has a row —
//! waiting *or* in flight — is a no-op. Re-sending a waiting task therefore never duplicates
//! it (the re-enqueue sweep relies on this). An in-flight row is also kept as it is: its
//! receiver still holds the receipt and will ack it (the task was dispatched) or nack it (the
//! task returns to the queue); should the receiver die instead, the visibility timeout brings
//! the row back. A send during that window does not reset the row's delay or priority.
//!
//! Receipts have the form `<seq>.<random hex>`; a receipt is valid until the message is
//! received again. `ack`/`nack` with an unknown, malformed or superseded receipt do nothing
//! and succeed (at-least-once: the message will simply be delivered again).
//!
//! Receive is strictly highest priority first, FIFO within a priority, so an agent type's
//! `priority_queues` (SQS priority tiers, see `queue/sqs.rs`) mean nothing here and are
//! ignored: one queue per agent type already orders every priority.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OptionalExtension, TransactionBehavior,
};

use crate::queue::{Depth, Message, QueueError, TaskQueue};
use crate::sqlite_worker::{Db, Failed, Worker};
use crate::store::{
    decode_cursor, encode_cursor, Created, Page, StoreError, TaskFilter, TaskStore,
};
use crate::task::{now_ms, Millis, Status, Task};

/// How long a writer waits for another connection's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest page `list` returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// Schema migrations; `PRAGMA user_version` is the number applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: tasks and queue.
    r#"
    CREATE TABLE tasks (
        id              TEXT    NOT NULL PRIMARY KEY,
        agent_type      TEXT    NOT NULL,
        status          TEXT    NOT NULL,
        priority        INTEGER NOT NULL,
        version         INTEGER NOT NULL,
        fence           INTEGER NOT NULL,
        idempotency_key TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        not_before      INTEGER NOT NULL,
        body            TEXT    NOT NULL
    );
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (agent_type, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- list by status; list by agent type; list by both, active, counts.
    CREATE INDEX tasks_status      ON tasks (status, id);
    CREATE INDEX tasks_type        ON tasks (agent_type, id);
    CREATE INDEX tasks_type_status ON tasks (agent_type, status, id);
    -- stale_queued: only queued rows are in it.
    CREATE INDEX tasks_queued_age  ON tasks (agent_type, updated_at) WHERE status = 'queued';

    CREATE TABLE queue (
        seq           INTEGER PRIMARY KEY,
        agent_type    TEXT    NOT NULL,
        task_id       TEXT    NOT NULL,
        priority      INTEGER NOT NULL,
        visible_at    INTEGER NOT NULL,
        receipt       TEXT,
        receive_count INTEGER NOT NULL DEFAULT 0,
        enqueued_at   INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX queue_task ON queue (agent_type, task_id);
    -- receive walks this in delivery order and filters on visible_at inside the index;
    -- depth is answered from it alone.
    CREATE INDEX queue_ready ON queue (agent_type, priority DESC, seq, visible_at, receive_count);
    "#,
    // 2: depth without reading the backlog. Counting a type's messages read every row of it
    // (a 100k backlog: ~10 ms on the one writer thread, every few hundred ms, which stalled
    // every request queued behind it). Now the number of messages per type is kept by triggers
    // (whatever statement inserts or deletes a row), and the hidden ones, usually few, are
    // counted from an index that starts at the first not-yet-visible message.
    r#"
    CREATE TABLE queue_sizes (
        agent_type TEXT    NOT NULL PRIMARY KEY,
        messages   INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO queue_sizes (agent_type, messages)
        SELECT agent_type, COUNT(*) FROM queue GROUP BY agent_type;
    CREATE TRIGGER queue_sizes_insert AFTER INSERT ON queue BEGIN
        INSERT INTO queue_sizes (agent_type, messages) VALUES (NEW.agent_type, 1)
            ON CONFLICT (agent_type) DO UPDATE SET messages = messages + 1;
    END;
    CREATE TRIGGER queue_sizes_delete AFTER DELETE ON queue BEGIN
        UPDATE queue_sizes SET messages = messages - 1 WHERE agent_type = OLD.agent_type;
    END;
    CREATE TRIGGER queue_sizes_move AFTER UPDATE OF agent_type ON queue
        WHEN OLD.agent_type IS NOT NEW.agent_type BEGIN
        UPDATE queue_sizes SET messages = messages - 1 WHERE agent_type = OLD.agent_type;
        INSERT INTO queue_sizes (agent_type, messages) VALUES (NEW.agent_type, 1)
            ON CONFLICT (agent_type) DO UPDATE SET messages = messages + 1;
    END;
    CREATE INDEX queue_hidden ON queue (agent_type, visible_at, receive_count);
    "#,
];

/// Task store and task queue on one SQLite file.
///
/// Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
    /// `create` writes the new task's queue row in its own transaction ([`Self::enqueuing`]).
    enqueue_on_create: bool,
}

struct Inner {
    worker: Worker,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.inner.path)
            .field("enqueue_on_create", &self.enqueue_on_create)
            .finish_non_exhaustive()
    }
}

fn unavailable(message: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        message: message.into(),
    }
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> StoreError {
        unavailable(failed.0)
    }
}

fn sql_err(err: rusqlite::Error) -> StoreError {
    unavailable(format!("sqlite: {err}"))
}

fn to_queue_error(err: StoreError) -> QueueError {
    match err {
        StoreError::Unavailable { message } => QueueError::Unavailable { message },
        other => QueueError::Unavailable {
            message: other.to_string(),
        },
    }
}

fn is_constraint(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// SQLite integers are i64; our counters are u64 and never get near 2^63.
fn int(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| unavailable(format!("value {value} does not fit in an SQLite integer")))
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

fn encode(task: &Task) -> Result<String, StoreError> {
    serde_json::to_string(task)
        .map_err(|e| unavailable(format!("cannot encode task {}: {e}", task.id)))
}

fn decode(body: &str) -> Result<Task, StoreError> {
    serde_json::from_str(body).map_err(|e| unavailable(format!("corrupt task row: {e}")))
}

fn decode_all(bodies: Vec<String>) -> Result<Vec<Task>, StoreError> {
    bodies.iter().map(|b| decode(b)).collect()
}

/// The stored statuses from which `next` may be written: legal predecessors plus `next` itself.
fn allowed_from(next: Status) -> String {
    Status::ALL
        .into_iter()
        .filter(|s| *s == next || s.can_become(next))
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds a task as ?1..?11: id, agent_type, status, priority, version, fence, idempotency_key,
/// created_at, updated_at, not_before, body.
fn task_params(task: &Task, body: String) -> Result<[Value; 11], StoreError> {
    Ok([
        Value::Text(task.id.clone()),
        Value::Text(task.agent_type.clone()),
        Value::Text(task.status.as_str().to_owned()),
        Value::Integer(task.priority),
        Value::Integer(int(task.version)?),
        Value::Integer(int(task.fence)?),
        task.idempotency_key
            .clone()
            .map_or(Value::Null, Value::Text),
        Value::Integer(task.created_at),
        Value::Integer(task.updated_at),
        Value::Integer(task.not_before),
        Value::Text(body),
    ])
}

fn configure(conn: &Connection, file: bool) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
    if file {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "SQLite could not switch to WAL; running with a rollback journal");
        }
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16384;
         PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(sql_err)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err)?;
    let current = usize::try_from(current)
        .map_err(|_| unavailable(format!("bad schema version {current}")))?;
    if current > MIGRATIONS.len() {
        return Err(unavailable(format!(
            "database schema version {current} is newer than this program's ({}); upgrade agent-orchestrator",
            MIGRATIONS.len()
        )));
    }
    if current == MIGRATIONS.len() {
        return Ok(()); // dropping the transaction rolls back nothing
    }
    for sql in &MIGRATIONS[current..] {
        tx.execute_batch(sql).map_err(sql_err)?;
    }
    tx.pragma_update(None, "user_version", limit_param(MIGRATIONS.len()))
        .map_err(sql_err)?;
    tx.commit().map_err(sql_err)
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, its parent directories included, and
    /// brings its schema up to date. Blocks: call it at startup, not on a busy runtime thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                unavailable(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        configure(&conn, true)?;
        migrate(&mut conn)?;
        Ok(Self::start(
            Worker::start("ao-sqlite", conn)?,
            Some(path.to_path_buf()),
        ))
    }

    /// A private database in memory, gone when the last clone is dropped (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory().map_err(sql_err)?;
        configure(&conn, false)?;
        migrate(&mut conn)?;
        Ok(Self::start(Worker::start("ao-sqlite", conn)?, None))
    }

    fn start(worker: Worker, path: Option<PathBuf>) -> Self {
        SqliteBackend {
            inner: Arc::new(Inner { worker, path }),
            enqueue_on_create: false,
        }
    }

    /// This backend as the store of a deployment whose task queue is this same backend: `create`
    /// inserts the task and its queue row in one transaction, so a new task is never stored
    /// without being queued, and intake makes one request per task instead of two (a measured
    /// share of the webhook path's gain in `benches/webhooks.sh`). Only for that pairing: with
    /// another queue (SQS), the rows would sit in a queue nobody reads.
    pub fn enqueuing(&self) -> SqliteBackend {
        SqliteBackend {
            inner: self.inner.clone(),
            enqueue_on_create: true,
        }
    }

    /// The database file; `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Runs `PRAGMA integrity_check`; any finding is returned as `Unavailable`. Blocks the
    /// calling thread until the check is done.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let findings = self.inner.worker.call_blocking(|db| {
            db.with("PRAGMA integrity_check", |st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_err)
        })?;
        if findings.len() == 1 && findings[0] == "ok" {
            Ok(())
        } else {
            Err(unavailable(format!(
                "integrity check failed: {}",
                findings.join("; ")
            )))
        }
    }

    /// Runs `f` on the worker thread and awaits its committed result.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.worker.call(f).await
    }
}

fn body_by_id(db: &Db<'_>, id: &str) -> Result<Option<String>, StoreError> {
    db.with("SELECT body FROM tasks WHERE id = ?1", |st| {
        st.query_row([id], |r| r.get(0)).optional()
    })
    .map_err(sql_err)
}

fn bodies(
    db: &Db<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<String>, StoreError> {
    db.with(sql, |st| {
        st.query_map(params, |r| r.get::<_, String>(0))?.collect()
    })
    .map_err(sql_err)
}

#[async_trait]
impl TaskStore for SqliteBackend {
    fn enqueues_on_create(&self) -> bool {
        self.enqueue_on_create
    }

    async fn create(&self, task: &Task) -> Result<Created, StoreError> {
        let params = task_params(task, encode(task)?)?;
        let id = task.id.clone();
        let agent_type = task.agent_type.clone();
        let key = task.idempotency_key.clone();
        let enqueue = (self.enqueue_on_create && task.status == Status::Queued)
            .then(|| (task.priority, task.not_before));
        let (inserted, existing) = self
            .call(move |db| {
                let sql = concat!(
                    "INSERT INTO tasks (id, agent_type, status, priority, version, fence, idempotency_key, ",
                    "created_at, updated_at, not_before, body) ",
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING"
                );
                if db.with(sql, |st| st.execute(params_from_iter(params))).map_err(sql_err)? == 1 {
                    if let Some((priority, not_before)) = enqueue {
                        let now = now_ms();
                        insert_queue_row(db, &agent_type, &id, priority, not_before.max(now), now)?;
                    }
                    return Ok((true, None));
                }
                // Rows are never deleted, so the row that won is there to read.
                if let Some(key) = &key {
                    let sql = "SELECT body FROM tasks WHERE agent_type = ?1 AND idempotency_key = ?2";
                    let found = db
                        .with(sql, |st| st.query_row(params![agent_type, key], |r| r.get::<_, String>(0)).optional())
                        .map_err(sql_err)?;
                    if found.is_some() {
                        return Ok((false, found));
                    }
                }
                // Same id stored before: a retried create.
                Ok((false, body_by_id(db, &id)?))
            })
            .await?;
        match (inserted, existing) {
            (true, _) => Ok(Created::New(task.clone())),
            (false, Some(body)) => Ok(Created::Existing(decode(&body)?)),
            (false, None) => Err(StoreError::Conflict {
                id: task.id.clone(),
            }),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_owned();
        let body = self.call(move |db| body_by_id(db, &id)).await?;
        body.as_deref().map(decode).transpose()
    }

    async fn update(&self, next: &Task, expected_version: u64) -> Result<Task, StoreError> {
        let mut written = next.clone();
        written.version = expected_version
            .checked_add(1)
            .ok_or_else(|| unavailable(format!("version overflow on task {}", next.id)))?;
        let mut params = task_params(&written, encode(&written)?)?.to_vec();
        params.push(Value::Integer(int(expected_version)?));
        let id = next.id.clone();
        let sql = update_sql(next.status);
        let outcome = self
            .call(move |db| {
                let changed = match db.with(sql, |st| st.execute(params_from_iter(params))) {
                    Ok(n) => n,
                    // Another task of the agent type holds the new idempotency key.
                    Err(e) if is_constraint(&e) => return Ok(Some(false)),
                    Err(e) => return Err(sql_err(e)),
                };
                if changed == 1 {
                    return Ok(Some(true));
                }
                let exists = db
                    .with("SELECT 1 FROM tasks WHERE id = ?1", |st| {
                        st.query_row([&id], |_| Ok(())).optional()
                    })
                    .map_err(sql_err)?;
                Ok(exists.map(|()| false))
            })
            .await?;
        match outcome {
            Some(true) => Ok(written),
            Some(false) => Err(StoreError::Conflict {
                id: next.id.clone(),
            }),
            None => Err(StoreError::NotFound {
                id: next.id.clone(),
            }),
        }
    }

    async fn list(
        &self,
        filter: &TaskFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let after = cursor.map(decode_cursor).transpose()?;
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(status) = filter.status {
            values.push(Value::Text(status.as_str().to_owned()));
            conditions.push(format!("status = ?{}", values.len()));
        }
        if let Some(agent_type) = &filter.agent_type {
            values.push(Value::Text(agent_type.clone()));
            conditions.push(format!("agent_type = ?{}", values.len()));
        }
        if let Some(after) = after {
            values.push(Value::Text(after));
            conditions.push(format!("id < ?{}", values.len()));
        }
        // One more than asked tells whether another page follows.
        values.push(Value::Integer(limit_param(limit + 1)));
        let limit_index = values.len();
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql =
            format!("SELECT body FROM tasks {where_clause} ORDER BY id DESC LIMIT ?{limit_index}");
        let rows = self
            .call(move |db| bodies(db, &sql, params_from_iter(values)))
            .await?;
        let mut tasks = decode_all(rows)?;
        let next_cursor = if tasks.len() > limit {
            tasks.truncate(limit);
            tasks.last().map(|t| encode_cursor(&t.id))
        } else {
            None
        };
        Ok(Page { tasks, next_cursor })
    }

    async fn active(&self, agent_type: &str) -> Result<Vec<Task>, StoreError> {
        let agent_type = agent_type.to_owned();
        // INDEXED BY: left alone, the planner prefers tasks_type for the ORDER BY and reads every
        // task the agent type ever had.
        let sql = "SELECT body FROM tasks INDEXED BY tasks_type_status \
                   WHERE agent_type = ?1 AND status IN ('dispatched', 'running') ORDER BY status, id";
        decode_all(self.call(move |db| bodies(db, sql, [agent_type])).await?)
    }

    async fn stale_queued(
        &self,
        agent_type: &str,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let agent_type = agent_type.to_owned();
        let sql = "SELECT body FROM tasks INDEXED BY tasks_queued_age \
                   WHERE agent_type = ?1 AND status = 'queued' AND updated_at < ?2 ORDER BY updated_at LIMIT ?3";
        let rows = self
            .call(move |db| bodies(db, sql, params![agent_type, before, limit_param(limit)]))
            .await?;
        decode_all(rows)
    }

    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, StoreError> {
        let sql = "SELECT agent_type, status, COUNT(*) FROM tasks GROUP BY agent_type, status ORDER BY 1, 2";
        let rows = self
            .call(move |db| {
                db.with(sql, |st| {
                    st.query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sql_err)
            })
            .await?;
        rows.into_iter()
            .map(|(agent_type, status, n)| {
                let status = Status::parse(&status)
                    .ok_or_else(|| unavailable(format!("corrupt status `{status}`")))?;
                Ok((agent_type, status, count(n)))
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|db| {
            db.with("SELECT 1", |st| st.query_row([], |_| Ok(())))
                .map_err(sql_err)
        })
        .await
    }
}

/// The compare-and-set update writing a task whose status becomes `next`: the stored status
/// must be a legal predecessor of `next` or `next` itself.
fn update_sql(next: Status) -> &'static str {
    use std::sync::OnceLock;
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        Status::ALL
            .into_iter()
            .map(|status| {
                format!(
                    "UPDATE tasks SET agent_type = ?2, status = ?3, priority = ?4, version = ?5, fence = ?6, \
                     idempotency_key = ?7, created_at = ?8, updated_at = ?9, not_before = ?10, body = ?11 \
                     WHERE id = ?1 AND version = ?12 AND fence <= ?6 AND status IN ({})",
                    allowed_from(status)
                )
            })
            .collect()
    });
    let index = Status::ALL.iter().position(|s| *s == next).unwrap_or(0);
    &all[index]
}

/// Splits the `seq` off a receipt; `None` for anything we did not issue.
fn receipt_seq(receipt: &str) -> Option<i64> {
    receipt
        .split_once('.')
        .and_then(|(seq, _)| seq.parse().ok())
}

/// Puts `task_id` on `agent_type`'s queue; a no-op when it is there already.
fn insert_queue_row(
    db: &Db<'_>,
    agent_type: &str,
    task_id: &str,
    priority: i64,
    visible_at: Millis,
    now: Millis,
) -> Result<(), StoreError> {
    let sql = "INSERT INTO queue (agent_type, task_id, priority, visible_at, enqueued_at) \
               VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (agent_type, task_id) DO NOTHING";
    db.with(sql, |st| {
        st.execute(params![agent_type, task_id, priority, visible_at, now])
    })
    .map(drop)
    .map_err(sql_err)
}

/// A type's depth (`?1`: agent type, `?2`: now): one counter and the hidden messages (usually
/// few) from an index, never the backlog (migration 2).
const DEPTH_SQL: &str = "SELECT COALESCE((SELECT messages FROM queue_sizes WHERE agent_type = ?1), 0) \
                                - COUNT(*), \
                                COALESCE(SUM(receive_count > 0), 0), \
                                COALESCE(SUM(receive_count = 0), 0) \
                         FROM queue INDEXED BY queue_hidden WHERE agent_type = ?1 AND visible_at > ?2";

#[async_trait]
impl TaskQueue for SqliteBackend {
    async fn send(
        &self,
        agent_type: &str,
        task_id: &str,
        priority: i64,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let agent_type = agent_type.to_owned();
        let task_id = task_id.to_owned();
        let now = now_ms();
        let visible_at = now.saturating_add(millis(delay));
        self.call(move |db| insert_queue_row(db, &agent_type, &task_id, priority, visible_at, now))
            .await
            .map_err(to_queue_error)
    }

    async fn receive(
        &self,
        agent_type: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let agent_type = agent_type.to_owned();
        // One statement: it takes the write lock before reading (like BEGIN IMMEDIATE), the
        // uncorrelated subquery is evaluated once, and no other receiver can pick the same rows
        // in between.
        let sql = "UPDATE queue SET receipt = seq || '.' || lower(hex(randomblob(16))), \
                          visible_at = ?3, receive_count = receive_count + 1 \
                   WHERE seq IN (SELECT seq FROM queue WHERE agent_type = ?1 AND visible_at <= ?2 \
                                 ORDER BY priority DESC, seq LIMIT ?4) \
                   RETURNING seq, task_id, receipt, priority, receive_count";
        let mut rows = self
            .call(move |db| {
                let now = now_ms();
                let hidden_until = now.saturating_add(millis(visibility));
                db.with(sql, |st| {
                    st.query_map(
                        params![agent_type, now, hidden_until, limit_param(max)],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                Message {
                                    task_id: r.get(1)?,
                                    receipt: r.get(2)?,
                                    priority: r.get(3)?,
                                    receive_count: u32::try_from(r.get::<_, i64>(4)?)
                                        .unwrap_or(u32::MAX),
                                },
                            ))
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sql_err)
            })
            .await
            .map_err(to_queue_error)?;
        // RETURNING has no defined order.
        rows.sort_by(|(sa, a), (sb, b)| b.priority.cmp(&a.priority).then(sa.cmp(sb)));
        Ok(rows.into_iter().map(|(_, m)| m).collect())
    }

    async fn ack(&self, agent_type: &str, receipt: &str) -> Result<(), QueueError> {
        let Some(seq) = receipt_seq(receipt) else {
            return Ok(());
        };
        let agent_type = agent_type.to_owned();
        let receipt = receipt.to_owned();
        let sql = "DELETE FROM queue WHERE seq = ?1 AND receipt = ?2 AND agent_type = ?3";
        self.call(move |db| {
            db.with(sql, |st| st.execute(params![seq, receipt, agent_type]))
                .map_err(sql_err)
        })
        .await
        .map(drop)
        .map_err(to_queue_error)
    }

    async fn nack(
        &self,
        agent_type: &str,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let Some(seq) = receipt_seq(receipt) else {
            return Ok(());
        };
        let agent_type = agent_type.to_owned();
        let receipt = receipt.to_owned();
        let sql =
            "UPDATE queue SET visible_at = ?4 WHERE seq = ?1 AND receipt = ?2 AND agent_type = ?3";
        self.call(move |db| {
            let visible_at = now_ms().saturating_add(millis(delay));
            db.with(sql, |st| {
                st.execute(params![seq, receipt, agent_type, visible_at])
            })
            .map_err(sql_err)
        })
        .await
        .map(drop)
        .map_err(to_queue_error)
    }

    /// `in_flight`: received at least once and hidden (this includes a message nacked with a
    /// delay, as SQS counts it); `delayed`: never received and not yet due.
    async fn depth(&self, agent_type: &str) -> Result<Depth, QueueError> {
        let agent_type = agent_type.to_owned();
        self.call(move |db| {
            let now = now_ms();
            db.with(DEPTH_SQL, |st| {
                st.query_row(params![agent_type, now], |r| {
                    Ok(Depth {
                        visible: count(r.get(0)?),
                        in_flight: count(r.get(1)?),
                        delayed: count(r.get(2)?),
                    })
                })
            })
            .map_err(sql_err)
        })
        .await
        .map_err(to_queue_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_from_lists_predecessors_and_self() {
        assert_eq!(
            allowed_from(Status::Queued),
            "'queued', 'dispatched', 'running'"
        );
        assert_eq!(allowed_from(Status::Dispatched), "'queued', 'dispatched'");
        assert_eq!(
            allowed_from(Status::Succeeded),
            "'dispatched', 'running', 'succeeded'"
        );
    }

    #[test]
    fn receipts_we_did_not_issue_have_no_seq() {
        assert_eq!(receipt_seq("12.abcdef"), Some(12));
        assert_eq!(receipt_seq("abc"), None);
        assert_eq!(receipt_seq("x.y"), None);
    }

    fn pragma(b: &SqliteBackend, name: &'static str) -> String {
        let value = b
            .inner
            .worker
            .call_blocking(move |db| {
                db.with(&format!("PRAGMA {name}"), |st| {
                    st.query_row([], |r| r.get::<_, Value>(0))
                })
                .map_err(sql_err)
            })
            .unwrap();
        match value {
            Value::Integer(i) => i.to_string(),
            Value::Text(t) => t,
            other => format!("{other:?}"),
        }
    }

    /// Puts `n` more visible messages on `agent_type`'s queue, in one statement.
    fn fill(b: &SqliteBackend, agent_type: &'static str, n: i64) {
        b.inner
            .worker
            .call_blocking(move |db| {
                db.conn()
                    .execute(
                        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?2) \
                         INSERT INTO queue (agent_type, task_id, priority, visible_at, enqueued_at) \
                         SELECT ?1, lower(hex(randomblob(16))), 0, 0, 0 FROM k",
                        params![agent_type, n],
                    )
                    .map_err(sql_err)
            })
            .unwrap();
    }

    /// SQLite virtual-machine steps one run of the depth query takes.
    fn depth_steps(b: &SqliteBackend, agent_type: &'static str) -> i32 {
        b.inner
            .worker
            .call_blocking(move |db| {
                let mut st = db.conn().prepare(DEPTH_SQL).map_err(sql_err)?;
                st.query_row(params![agent_type, now_ms()], |_| Ok(()))
                    .map_err(sql_err)?;
                Ok::<_, StoreError>(st.get_status(rusqlite::StatementStatus::VmStep))
            })
            .unwrap()
    }

    #[tokio::test]
    async fn depth_does_not_read_the_backlog() {
        let b = SqliteBackend::open_in_memory().unwrap();
        fill(&b, "a", 10);
        b.send("a", "late", 0, Duration::from_secs(60))
            .await
            .unwrap();
        let got = b.receive("a", 2, Duration::from_secs(60)).await.unwrap();
        assert_eq!(got.len(), 2);
        let want = Depth {
            visible: 8,
            in_flight: 2,
            delayed: 1,
        };
        assert_eq!(b.depth("a").await.unwrap(), want);
        let small = depth_steps(&b, "a");
        fill(&b, "a", 20_000);
        fill(&b, "b", 5_000);
        assert_eq!(
            b.depth("a").await.unwrap(),
            Depth {
                visible: 20_008,
                ..want
            }
        );
        let large = depth_steps(&b, "a");
        // The same few steps (a deeper index may add one); reading the backlog is 20,000 more.
        assert!(
            large < small * 2,
            "depth took {large} steps with 20,008 waiting, {small} with 8: it reads the backlog"
        );
        // Every way a row leaves keeps the count: ack, and a delete of any kind.
        b.ack("a", &got[0].receipt).await.unwrap();
        b.inner
            .worker
            .call_blocking(|db| {
                db.conn()
                    .execute("DELETE FROM queue WHERE rowid IN (SELECT rowid FROM queue WHERE agent_type = 'a' AND visible_at = 0 LIMIT 8)", [])
                    .map_err(sql_err)
            })
            .unwrap();
        assert_eq!(
            b.depth("a").await.unwrap(),
            Depth {
                visible: 20_000,
                in_flight: 1,
                delayed: 1
            }
        );
        assert_eq!(b.depth("b").await.unwrap().visible, 5_000);
        assert_eq!(b.depth("none").await.unwrap(), Depth::default());
    }

    #[tokio::test]
    async fn an_older_database_gets_its_queue_counted_on_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ao.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "INSERT INTO queue (agent_type, task_id, priority, visible_at, enqueued_at) VALUES
                    ('a', 't1', 0, 0, 0), ('a', 't2', 0, 0, 0), ('b', 't3', 0, 0, 0);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(b.depth("a").await.unwrap().visible, 2);
        assert_eq!(b.depth("b").await.unwrap().visible, 1);
        b.send("b", "t4", 0, Duration::ZERO).await.unwrap();
        b.send("b", "t4", 0, Duration::ZERO).await.unwrap();
        assert_eq!(
            b.depth("b").await.unwrap().visible,
            2,
            "a repeated send adds nothing"
        );
    }

    #[test]
    fn schema_version_is_recorded_and_reopen_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/ao.db");
        let a = SqliteBackend::open(&path).unwrap();
        assert_eq!(pragma(&a, "user_version"), MIGRATIONS.len().to_string());
        assert_eq!(pragma(&a, "journal_mode"), "wal");
        assert_eq!(pragma(&a, "synchronous"), "1", "NORMAL");
        assert_eq!(pragma(&a, "foreign_keys"), "0");
        drop(a);
        SqliteBackend::open(&path)
            .unwrap()
            .integrity_check()
            .unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ao.db");
        drop(SqliteBackend::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteBackend::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    fn new_task(key: &str, priority: i64) -> Task {
        let spec = crate::task::NewTask {
            agent_type: "echo".into(),
            payload: serde_json::json!({"n": key}),
            priority,
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            idempotency_key: Some(key.into()),
        };
        Task::new(spec, now_ms())
    }

    #[tokio::test]
    async fn an_enqueuing_store_queues_a_new_task_in_its_create_and_only_a_new_one() {
        let plain = SqliteBackend::open_in_memory().unwrap();
        let enqueuing = plain.enqueuing();
        assert!(!plain.enqueues_on_create() && enqueuing.enqueues_on_create());
        let visibility = Duration::from_secs(30);

        // The plain store writes no queue row: intake sends one itself.
        plain.create(&new_task("a", 0)).await.unwrap();
        assert!(plain
            .receive("echo", 10, visibility)
            .await
            .unwrap()
            .is_empty());

        let b = new_task("b", 5);
        assert!(matches!(
            enqueuing.create(&b).await.unwrap(),
            Created::New(_)
        ));
        // The same idempotency key again: the existing task, and no second message for anyone.
        let again = new_task("b", 5);
        assert!(
            matches!(enqueuing.create(&again).await.unwrap(), Created::Existing(t) if t.id == b.id)
        );
        let got = enqueuing.receive("echo", 10, visibility).await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].task_id.as_str(), got[0].priority),
            (b.id.as_str(), 5)
        );
        assert_eq!(enqueuing.depth("echo").await.unwrap().in_flight, 1);
    }
}
