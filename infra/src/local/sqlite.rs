//! One SQLite database in WAL mode: a writer connection and a reader connection, each used on
//! the blocking pool so async tasks never wait on disk I/O.
//!
//! Durability: `synchronous=NORMAL` in WAL mode means a commit is in the WAL file when it
//! returns, so it survives a crash of the process; the WAL is fsynced at checkpoints, so an OS
//! crash or power loss may lose the last transactions. That is the "durable" of the embedded
//! bus (docs/PERF.md).

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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
        let reader = open_connection(path)?;
        Ok(Arc::new(Self { path: path.to_owned(), writer: Mutex::new(writer), reader: Mutex::new(reader) }))
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
