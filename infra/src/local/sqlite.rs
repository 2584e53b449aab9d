//! One SQLite database in WAL mode: a writer connection and a reader connection, each used on
//! the blocking pool so async tasks never wait on disk I/O.
//!
//! Durability: `synchronous=NORMAL` in WAL mode means a commit is in the WAL file when it
//! returns, so it survives a crash of the process; the WAL is fsynced at checkpoints, so an OS
//! crash or power loss may lose the last transactions. That is the "durable" of the embedded
//! bus (docs/PERF.md).
//!
//! Checkpoints run on their own thread and connection, not inside a commit: SQLite's automatic
//! checkpoint would otherwise fsync the WAL and the database (10-20 ms on a virtual disk) while
//! holding the writer lock, stalling every write queued behind it. A PASSIVE checkpoint copies
//! pages without blocking writers; past [`WAL_CAP_FRAMES`] a TRUNCATE checkpoint bounds the WAL.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// A WAL holding more than this many frames (4 KiB pages: 64 MiB) is truncated by a blocking
/// checkpoint: rare, only under sustained load that passive checkpoints cannot keep up with.
pub(crate) const WAL_CAP_FRAMES: i64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

#[derive(Debug)]
pub(crate) struct Db {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Set when the database is dropped, so the checkpointer thread ends.
    closed: Arc<AtomicBool>,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Checkpoints the WAL in the background until `closed` is set.
fn checkpointer(path: PathBuf, closed: Arc<AtomicBool>) {
    let Ok(conn) = open_connection(&path) else { return };
    while !closed.load(Ordering::Relaxed) {
        std::thread::sleep(CHECKPOINT_EVERY);
        // (busy, frames in the WAL, frames checkpointed)
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1)) {
            Ok(frames) if frames > WAL_CAP_FRAMES => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "checkpoint skipped"),
        }
    }
    // A last full checkpoint leaves a small WAL behind for the next start.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves SQLite consistent (the transaction rolls back on
    // drop), so the connection is safe to keep using.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| DbError::Open { path: path.to_owned(), reason: e.to_string() })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database and applies `schema` (idempotent DDL).
    pub(crate) fn open(path: &Path, schema: &str) -> Result<Arc<Self>, DbError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbError::Open { path: path.to_owned(), reason: e.to_string() })?;
        }
        let writer = open_connection(path)?;
        writer.execute_batch(schema)?;
        // Commits never checkpoint; the checkpointer thread does (see the module doc).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After the WAL restarts from its beginning, trim the file back to this size.
        writer.pragma_update(None, "journal_size_limit", WAL_CAP_FRAMES * 4096)?;
        let reader = open_connection(path)?;
        let closed = Arc::new(AtomicBool::new(false));
        let (checkpoint_path, checkpoint_closed) = (path.to_owned(), Arc::clone(&closed));
        std::thread::Builder::new()
            .name("sqlite-checkpointer".to_owned())
            .spawn(move || checkpointer(checkpoint_path, checkpoint_closed))
            .map_err(|e| DbError::Open {
                path: path.to_owned(),
                reason: format!("cannot start the checkpointer: {e}"),
            })?;
        Ok(Arc::new(Self { path: path.to_owned(), writer: Mutex::new(writer), reader: Mutex::new(reader), closed }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the writer connection on the blocking pool.
    pub(crate) async fn write<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&mut lock(&db.writer)))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Runs `f` with the writer connection on the calling (blocking) thread.
    pub(crate) fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut lock(&self.writer))
    }

    /// Runs `f` with the reader connection on the blocking pool.
    pub(crate) async fn read<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&lock(&db.reader)))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }
}
