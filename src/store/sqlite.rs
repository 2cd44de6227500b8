//! The embedded backend: one SQLite file (WAL) holding the task store and the task queues.

/// Task store and task queue on one SQLite file.
pub struct SqliteBackend {}
