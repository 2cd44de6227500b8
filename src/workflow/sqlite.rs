//! The embedded [`WorkflowStore`]: its own SQLite file (`workflows.db` in the data dir) in WAL
//! mode, so the task database's schema and migrations stay the task store's alone.
//!
//! Durability matches the task store (WAL, `synchronous = NORMAL`): a returned write survives
//! the process being killed. One dedicated thread (`ao-workflows`, a
//! [`crate::sqlite_worker::Worker`]) owns the connection, so the runtime never blocks on SQLite.
//! Each write is one statement whose `WHERE version = ?` is the compare-and-set.
//!
//! The file belongs to one coordinator; with `--store dynamodb` workflows live in the task
//! table instead (`dynamodb.rs`), visible from every instance.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::store::{bumped, WorkflowStore, WorkflowStoreError};
use super::Workflow;
use crate::sqlite_worker::{Failed, Worker};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS workflows (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    open       INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    body       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_open ON workflows (id) WHERE open = 1;
"#;

/// Largest `list_recent` page.
pub const MAX_LIST: usize = 1000;

pub struct SqliteWorkflowStore {
    worker: Worker,
}

impl std::fmt::Debug for SqliteWorkflowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWorkflowStore")
            .finish_non_exhaustive()
    }
}

fn unavailable(message: impl Into<String>) -> WorkflowStoreError {
    WorkflowStoreError::Unavailable {
        message: message.into(),
    }
}

impl From<Failed> for WorkflowStoreError {
    fn from(failed: Failed) -> WorkflowStoreError {
        unavailable(failed.0)
    }
}

fn sql_err(err: rusqlite::Error) -> WorkflowStoreError {
    unavailable(format!("sqlite: {err}"))
}

fn int(value: u64) -> Result<i64, WorkflowStoreError> {
    i64::try_from(value).map_err(|_| unavailable(format!("value {value} is too large")))
}

fn decode(body: &str) -> Result<Workflow, WorkflowStoreError> {
    serde_json::from_str(body).map_err(|e| unavailable(format!("corrupt workflow row: {e}")))
}

fn encode(workflow: &Workflow) -> Result<String, WorkflowStoreError> {
    serde_json::to_string(workflow)
        .map_err(|e| unavailable(format!("cannot encode workflow {}: {e}", workflow.id)))
}

fn bodies(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Workflow>, WorkflowStoreError> {
    let mut st = conn.prepare(sql).map_err(sql_err)?;
    let rows = st
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(sql_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err)?;
    rows.iter().map(|b| decode(b)).collect()
}

impl SqliteWorkflowStore {
    /// Opens (creating if needed) the workflow database at `path`. Blocks: call at startup.
    pub fn open(path: &Path) -> Result<Self, WorkflowStoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                unavailable(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "workflow database could not switch to WAL");
        }
        Self::start(conn)
    }

    /// A private database in memory (tests).
    pub fn open_in_memory() -> Result<Self, WorkflowStoreError> {
        Self::start(Connection::open_in_memory().map_err(sql_err)?)
    }

    fn start(conn: Connection) -> Result<Self, WorkflowStoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql_err)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(sql_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err)?;
        if version > SCHEMA_VERSION {
            return Err(unavailable(format!(
                "workflow database schema version {version} is newer than this program's ({SCHEMA_VERSION}); upgrade agent-orchestrator"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(sql_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql_err)?;
        Ok(SqliteWorkflowStore {
            worker: Worker::start("ao-workflows", conn)?,
        })
    }

    async fn call<T, F>(&self, f: F) -> Result<T, WorkflowStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, WorkflowStoreError> + Send + 'static,
    {
        self.worker.call(move |db| f(db.conn())).await
    }
}

#[async_trait]
impl WorkflowStore for SqliteWorkflowStore {
    async fn create(&self, workflow: &Workflow) -> Result<Workflow, WorkflowStoreError> {
        let stored = workflow.clone();
        let body = encode(&stored)?;
        let version = int(stored.version)?;
        let (id, name, status, open) = (
            stored.id.clone(),
            stored.name.clone(),
            stored.status.as_str(),
            stored.is_open(),
        );
        let (created_at, updated_at) = (stored.created_at, stored.updated_at);
        let inserted = self
            .call(move |conn| {
                conn.prepare(
                    "INSERT INTO workflows (id, name, status, open, version, created_at, updated_at, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut st| {
                    st.execute(params![id, name, status, open, version, created_at, updated_at, body])
                })
                .map_err(sql_err)
            })
            .await?;
        if inserted == 1 {
            Ok(stored)
        } else {
            Err(WorkflowStoreError::Conflict {
                id: workflow.id.clone(),
            })
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Workflow>, WorkflowStoreError> {
        let id = id.to_owned();
        let body: Option<String> = self
            .call(move |conn| {
                conn.prepare("SELECT body FROM workflows WHERE id = ?1")
                    .and_then(|mut st| st.query_row([id], |r| r.get(0)).optional())
                    .map_err(sql_err)
            })
            .await?;
        body.as_deref().map(decode).transpose()
    }

    async fn update(
        &self,
        next: &Workflow,
        expected_version: u64,
    ) -> Result<Workflow, WorkflowStoreError> {
        let written = bumped(next, expected_version)?;
        let body = encode(&written)?;
        let (id, status, open) = (
            written.id.clone(),
            written.status.as_str(),
            written.is_open(),
        );
        let (version, expected, updated_at) = (
            int(written.version)?,
            int(expected_version)?,
            written.updated_at,
        );
        let outcome = self
            .call(move |conn| {
                let changed = conn
                    .prepare(
                        "UPDATE workflows SET status = ?2, open = ?3, version = ?4, updated_at = ?5, body = ?6 \
                         WHERE id = ?1 AND version = ?7",
                    )
                    .and_then(|mut st| {
                        st.execute(params![id, status, open, version, updated_at, body, expected])
                    })
                    .map_err(sql_err)?;
                if changed == 1 {
                    return Ok(Some(true));
                }
                let exists = conn
                    .prepare("SELECT 1 FROM workflows WHERE id = ?1")
                    .and_then(|mut st| st.query_row([&id], |_| Ok(())).optional())
                    .map_err(sql_err)?;
                Ok(exists.map(|()| false))
            })
            .await?;
        match outcome {
            Some(true) => Ok(written),
            Some(false) => Err(WorkflowStoreError::Conflict {
                id: next.id.clone(),
            }),
            None => Err(WorkflowStoreError::NotFound {
                id: next.id.clone(),
            }),
        }
    }

    async fn list_recent(&self, limit: usize) -> Result<Vec<Workflow>, WorkflowStoreError> {
        let limit = i64::try_from(limit.clamp(1, MAX_LIST)).unwrap_or(1);
        self.call(move |conn| {
            bodies(
                conn,
                "SELECT body FROM workflows ORDER BY id DESC LIMIT ?1",
                [limit],
            )
        })
        .await
    }

    async fn list_open(&self) -> Result<Vec<Workflow>, WorkflowStoreError> {
        self.call(|conn| {
            bodies(
                conn,
                "SELECT body FROM workflows WHERE open = 1 ORDER BY id",
                [],
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::conformance;

    #[tokio::test]
    async fn create_get_update_cas_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteWorkflowStore::open(&dir.path().join("wf.db")).unwrap();
        conformance::run(&store).await;
        let wf = store.list_recent(1).await.unwrap().remove(0);
        drop(store);
        // Reopening keeps everything.
        let store = SqliteWorkflowStore::open(&dir.path().join("wf.db")).unwrap();
        assert_eq!(store.get(&wf.id).await.unwrap(), Some(wf));
        assert_eq!(store.list_recent(10).await.unwrap().len(), 2);
    }
}
