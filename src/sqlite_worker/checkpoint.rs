//! WAL checkpoints off the writer's thread.
//!
//! SQLite's own automatic checkpoint runs inside the commit that crosses
//! `wal_autocheckpoint` pages: that commit copies the WAL into the database and `fsync`s both
//! files before it returns, and every request queued behind it waits (under a steady stream of
//! webhook deliveries: a ~5-10 ms stall every few tens of ms, the benchmark's whole tail).
//!
//! Here the writer's connection has automatic checkpoints off, and a [`Checkpointer`] thread
//! with a connection of its own does the copying concurrently with the writes
//! (`wal_checkpoint(PASSIVE)` takes no lock a writer needs) and then flushes the copied pages
//! with an `fsync` of the database file, again holding no SQLite lock. The flush goes through
//! that connection's own file handle ([`sync_database`]): a descriptor of our own would be a
//! hazard, because closing *any* descriptor of a file drops every POSIX lock the process holds
//! on it, SQLite's included. What it cannot do is
//! restart the WAL: SQLite only rewinds it at the start of a write once *every* frame is copied,
//! and under steady writes the checkpointer is always a few frames behind. So once the WAL
//! passes [`RESTART_FRAMES`], the checkpointer makes one more quick pass and then asks the
//! writer to take its turn ([`Checkpoints::after_batch`]): between two batches, the writer runs
//! the final `PASSIVE` checkpoint itself, which only has the last few milliseconds' frames left
//! to copy and `fsync` (the files were flushed just before), and its next commit rewinds the
//! WAL. The WAL therefore stays near [`RESTART_FRAMES`] pages, and the writer's only stall is
//! that short final pass, once per [`RESTART_FRAMES`] pages instead of once per 1,000.
//!
//! Durability is SQLite's, unchanged: each pass `fsync`s the WAL before copying and the
//! database before the WAL may be rewound (`synchronous = NORMAL` semantics); the extra
//! flushes only move those flushes off the writer. If the checkpointer thread falls behind, the
//! writer stops skipping its turn once the WAL reaches [`FORCE_FACTOR`] times that; if it has made no pass
//! for [`STALLED`] (starved, failing, or gone), the writer checkpoints after its batches itself,
//! as SQLite would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// WAL size (pages) at which the writer is asked to restart it: 64 MiB of 4 KiB pages.
pub const RESTART_FRAMES: i64 = 16_384;
/// At this many times the restart size, the writer waits for its turn instead of skipping it.
const FORCE_FACTOR: i64 = 4;
/// Pause between the checkpointer's passes while the WAL is growing; copying less often copies
/// a page rewritten many times (a B-tree's last leaf) once per pass, not once per write.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// Pause between passes when the last one found nothing to copy.
const IDLE_PAUSE: Duration = Duration::from_millis(500);
/// No pass for this long: the writer no longer counts on the checkpointer.
pub const STALLED: Duration = Duration::from_secs(2);

/// What the writer and the checkpointer share.
#[derive(Debug, Default)]
pub struct Checkpoints {
    /// [`RESTART_FRAMES`] but in tests.
    restart_frames: i64,
    /// Held by whichever of the two runs a checkpoint (SQLite would refuse a second one anyway,
    /// and a refused final pass would leave the WAL unrestarted).
    turn: Mutex<()>,
    /// Pages in the WAL at the last pass.
    wal_frames: AtomicI64,
    /// The WAL is long and was just copied and flushed: the writer's turn to finish it.
    restart_due: AtomicBool,
    /// When the checkpointer last looked (ms since the Unix epoch), whatever it found.
    last_pass_ms: AtomicI64,
    stopping: Mutex<bool>,
    wake: Condvar,
}

/// The guarded value, whether or not a thread panicked holding it: nothing here is left
/// half-updated by a panic (a flag, and a lock that guards no data).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `(pages in the WAL, pages copied into the database)`, or `None` when the file is not in WAL
/// mode or the pass failed (logged).
fn checkpoint(conn: &Connection) -> Option<(i64, i64)> {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        Ok((log, copied)) if log >= 0 => Some((log, copied)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "SQLite WAL checkpoint failed; will retry");
            None
        }
    }
}

impl Checkpoints {
    /// Called by the writer between batches: takes its turn when one is due, or every batch
    /// while the checkpointer is [stalled](STALLED).
    pub fn after_batch(&self, conn: &Connection) {
        let stalled = crate::task::now_ms()
            .saturating_sub(self.last_pass_ms.load(Ordering::Relaxed))
            > STALLED.as_millis() as i64;
        if !stalled && !self.restart_due.load(Ordering::Acquire) {
            return;
        }
        let forced = self.wal_frames.load(Ordering::Relaxed) >= FORCE_FACTOR * self.restart_frames;
        let _turn = match self.turn.try_lock() {
            Ok(turn) => turn,
            Err(TryLockError::WouldBlock) if !forced => return,
            Err(TryLockError::WouldBlock) => lock(&self.turn),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        if let Some((log, _)) = checkpoint(conn) {
            self.wal_frames.store(log, Ordering::Relaxed);
        }
        // Even when a reader in another process kept a frame from being copied: the
        // checkpointer asks again after its next pass rather than the writer after every batch.
        self.restart_due.store(false, Ordering::Release);
    }

    fn stopped(&self, pause: Duration) -> bool {
        let stopping = lock(&self.stopping);
        if *stopping {
            return true;
        }
        match self.wake.wait_timeout(stopping, pause) {
            Ok((s, _)) => *s,
            Err(poisoned) => *poisoned.into_inner().0,
        }
    }

    /// One pass of the checkpointer: copy, then flush what was copied.
    fn pass(&self, conn: &Connection, flushed: &mut i64) -> Option<(i64, i64)> {
        let _turn = lock(&self.turn);
        self.last_pass_ms
            .store(crate::task::now_ms(), Ordering::Relaxed);
        let (log, copied) = checkpoint(conn)?;
        if copied != *flushed {
            if let Err(e) = sync_database(conn) {
                tracing::warn!(error = %e, "cannot flush the SQLite database file");
            }
            *flushed = copied;
        }
        self.wal_frames.store(log, Ordering::Relaxed);
        Some((log, copied))
    }
}

/// The checkpointing thread of one database file; stops (and closes its connection) on drop.
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Checkpoints>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `path` (in WAL mode) for the writer that will call
    /// [`Checkpoints::after_batch`] on the returned shared state. `None` (logged) when the
    /// database cannot be opened a second time: SQLite's automatic checkpoints then stay on.
    pub fn start(
        name: &str,
        path: &Path,
        restart_frames: i64,
    ) -> Option<(Checkpointer, Arc<Checkpoints>)> {
        let opened = Connection::open(path).and_then(|conn| {
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
            Ok(conn)
        });
        let conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no checkpoint thread; SQLite checkpoints in the writer");
                return None;
            }
        };
        let shared = Arc::new(Checkpoints {
            restart_frames,
            last_pass_ms: AtomicI64::new(crate::task::now_ms()),
            ..Checkpoints::default()
        });
        let for_thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-ckpt"))
            .spawn(move || run(&conn, &for_thread));
        match spawned {
            Ok(thread) => Some((
                Checkpointer {
                    shared: shared.clone(),
                    thread: Some(thread),
                },
                shared,
            )),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no checkpoint thread; SQLite checkpoints in the writer");
                None
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *lock(&self.shared.stopping) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, shared: &Checkpoints) {
    let (mut flushed, mut last_log) = (0, 0);
    let mut pause = BUSY_PAUSE;
    while !shared.stopped(pause) {
        let Some((log, copied)) = shared.pass(conn, &mut flushed) else {
            pause = IDLE_PAUSE;
            continue;
        };
        // Nothing written since the last pass: the writer is idle.
        pause = if log == last_log && copied == log {
            IDLE_PAUSE
        } else {
            BUSY_PAUSE
        };
        last_log = log;
        // (`log` and `copied` describe the WAL as the pass found it: frames written meanwhile
        // are in neither, so `copied == log` does not mean the next write rewinds it.)
        if log >= shared.restart_frames && !shared.restart_due.load(Ordering::Acquire) {
            // One more pass right away, so the writer's final one has only the frames written
            // while this one ran.
            shared.pass(conn, &mut flushed);
            shared.restart_due.store(true, Ordering::Release);
        }
    }
}

/// `fsync`s the main database file of `conn` through SQLite's own handle for it (the VFS's
/// `xSync`, reached with `SQLITE_FCNTL_FILE_POINTER`), so no descriptor is opened or closed
/// beside SQLite's.
fn sync_database(conn: &Connection) -> Result<(), String> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is open and used by this thread only; FILE_POINTER stores the main
    // database's `sqlite3_file` (owned by the connection, alive as long as it is) in `file`.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return Err(format!("no file handle (sqlite code {rc})"));
    }
    // SAFETY: `file` is the live handle from above; a null `pMethods` means it is not open.
    let sync = unsafe { (*file).pMethods.as_ref().and_then(|methods| methods.xSync) };
    let Some(sync) = sync else {
        return Err("the database file is not open".into());
    };
    // SAFETY: calling the handle's own method on it, on the thread that owns the connection,
    // outside any SQLite call.
    match unsafe { sync(file, ffi::SQLITE_SYNC_NORMAL) } {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(format!("fsync failed (sqlite code {rc})")),
    }
}

/// The WAL header's checkpoint sequence number: how often the WAL was rewound (0 without one).
#[cfg(test)]
pub(super) fn wal_rewinds(wal: &Path) -> u32 {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(wal)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_or(0, |()| {
            u32::from_be_bytes([header[12], header[13], header[14], header[15]])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_checkpointer_the_writer_checkpoints_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        // No thread behind it, and its last pass long ago.
        let shared = Checkpoints {
            restart_frames: 64,
            ..Checkpoints::default()
        };
        let wal = dir.path().join("t.db-wal");
        for k in 0..20 {
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(4096))", [k])
                .unwrap();
            shared.after_batch(&conn);
        }
        assert!(
            wal_rewinds(&wal) >= 10,
            "rewound {} times",
            wal_rewinds(&wal)
        );

        // A checkpointer that made a pass just now is left to do its job.
        let alive = Checkpoints {
            restart_frames: 64,
            last_pass_ms: AtomicI64::new(crate::task::now_ms()),
            ..Checkpoints::default()
        };
        // (The first write rewinds what the last turn above copied.)
        conn.execute("INSERT INTO t VALUES (20, zeroblob(4096))", [])
            .unwrap();
        let before = wal_rewinds(&wal);
        for k in 21..40 {
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(4096))", [k])
                .unwrap();
            alive.after_batch(&conn);
        }
        assert_eq!(wal_rewinds(&wal), before);
    }

    #[test]
    fn the_database_is_flushed_through_sqlites_own_handle() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (k)").unwrap();
        assert_eq!(sync_database(&conn), Ok(()));
    }
}
