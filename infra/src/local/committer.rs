//! Group commit for one SQLite database: a dedicated writer thread takes every write waiting in
//! its queue and runs them in one transaction, each inside its own savepoint so a failing write
//! rolls back alone. A caller is answered only after the transaction commits, so "durable when
//! the call returns" holds exactly as with one transaction per write, at a fraction of the cost
//! (one WAL append and lock round trip per batch instead of per write).
//!
//! Each write may name work to run after the commit; it runs on the writer thread before the
//! next batch starts, so it is ordered with every other write, as if under the writer lock.

use super::sqlite::{Db, DbError};
use rusqlite::Connection;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The most writes one transaction takes; bounds the latency a batch adds.
const MAX_BATCH: usize = 512;

trait WriteJob: Send {
    fn apply(&mut self, conn: &Connection) -> Result<(), String>;
    fn finish(self: Box<Self>, outcome: Result<(), String>);
}

struct Job<T, F, A> {
    apply: Option<F>,
    after_commit: Option<A>,
    value: Option<T>,
    reply: Option<oneshot::Sender<Result<T, String>>>,
}

impl<T, F, A> WriteJob for Job<T, F, A>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, String> + Send,
    A: FnOnce(&T) + Send,
{
    fn apply(&mut self, conn: &Connection) -> Result<(), String> {
        let apply = self.apply.take().ok_or_else(|| "write applied twice".to_owned())?;
        self.value = Some(apply(conn)?);
        Ok(())
    }

    fn finish(mut self: Box<Self>, outcome: Result<(), String>) {
        let result = match (outcome, self.value.take()) {
            (Ok(()), Some(value)) => {
                if let Some(after) = self.after_commit.take() {
                    after(&value);
                }
                Ok(value)
            }
            (Ok(()), None) => Err("write produced no value".to_owned()),
            (Err(e), _) => Err(e),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away (cancelled); the write stands either way.
            let _ = reply.send(result);
        }
    }
}

/// A handle to the writer thread of one database. Cheap to clone; the thread ends when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    jobs: mpsc::Sender<Box<dyn WriteJob>>,
}

impl std::fmt::Debug for dyn WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteJob")
    }
}

impl Committer {
    pub(crate) fn start(db: Arc<Db>, name: &str) -> Result<Self, DbError> {
        let (jobs, queue) = mpsc::channel::<Box<dyn WriteJob>>();
        std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || writer_loop(&db, &queue))
            .map_err(|e| DbError::Task(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `apply` in the next batch's transaction; after the batch commits, runs
    /// `after_commit` (on the writer thread, before the next batch) and returns the value.
    pub(crate) async fn write<T, F, A>(&self, apply: F, after_commit: A) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, String> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        self.submit(apply, after_commit).await.map_err(|_| "the database writer stopped before answering".to_owned())?
    }

    /// Queues a write now and returns where its outcome will arrive. Writes run in the order
    /// they are submitted, so a caller can go on without waiting and still keep its writes in
    /// order.
    pub(crate) fn submit<T, F, A>(&self, apply: F, after_commit: A) -> oneshot::Receiver<Result<T, String>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, String> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job { apply: Some(apply), after_commit: Some(after_commit), value: None, reply: Some(reply) };
        if let Err(mpsc::SendError(job)) = self.jobs.send(Box::new(job)) {
            job.finish(Err("the database writer has stopped".to_owned()));
        }
        answer
    }
}

fn writer_loop(db: &Db, queue: &mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        db.with_writer(|conn| run_batch(conn, batch));
    }
}

fn run_batch(conn: &mut Connection, mut batch: Vec<Box<dyn WriteJob>>) {
    let mut outcomes: Vec<Result<(), String>> = Vec::with_capacity(batch.len());
    let committed = (|| -> Result<(), rusqlite::Error> {
        let mut tx = conn.transaction()?;
        for job in &mut batch {
            let savepoint = tx.savepoint()?;
            match job.apply(&savepoint) {
                Ok(()) => {
                    savepoint.commit()?;
                    outcomes.push(Ok(()));
                }
                // Dropping the savepoint rolls this write back, and only this one...
                Err(e) => {
                    drop(savepoint);
                    // ...unless the error (disk full, I/O) rolled back the whole transaction:
                    // then later savepoints would commit on their own, so the batch fails whole.
                    if tx.is_autocommit() {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                            Some(format!("the transaction was rolled back by a failed write: {e}")),
                        ));
                    }
                    outcomes.push(Err(e));
                }
            }
        }
        tx.commit()
    })();
    match committed {
        Ok(()) => batch.into_iter().zip(outcomes).for_each(|(job, outcome)| job.finish(outcome)),
        Err(e) => {
            let message = format!("sqlite: {e}");
            batch.into_iter().for_each(|job| job.finish(Err(message.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whatever a failing write does to the transaction, every caller's answer matches what is
    /// in the database: no write reported failed is committed, none reported done is missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reported_outcomes_match_the_database_when_a_write_fills_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("t.db"), "CREATE TABLE IF NOT EXISTS t (n INTEGER, payload BLOB);")
            .expect("open");
        db.with_writer(|conn| conn.pragma_update(None, "max_page_count", 64)).expect("cap the file at 64 pages");
        let committer = Committer::start(Arc::clone(&db), "test").expect("start");
        // A slow first write, so the next three queue up behind it (in its batch or the next).
        let slow = committer.submit(
            |_| {
                std::thread::sleep(Duration::from_millis(200));
                Ok(())
            },
            |_| {},
        );
        let insert = |n: i64, bytes: usize| {
            committer.submit(
                move |conn| {
                    conn.execute("INSERT INTO t (n, payload) VALUES (?1, ?2)", rusqlite::params![n, vec![7u8; bytes]])
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
                |_| {},
            )
        };
        let (small_before, huge, small_after) = (insert(1, 10), insert(2, 1024 * 1024), insert(3, 10));
        let _ = slow.await.expect("answered");
        let outcomes = [
            (1, small_before.await.expect("answered")),
            (2, huge.await.expect("answered")),
            (3, small_after.await.expect("answered")),
        ];
        assert!(outcomes[1].1.is_err(), "a 1 MB row cannot fit in 64 pages");
        let stored: Vec<i64> = db
            .with_writer(|conn| {
                let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n")?;
                stmt.query_map([], |row| row.get(0))?.collect::<Result<Vec<i64>, _>>()
            })
            .expect("read back");
        for (n, outcome) in outcomes {
            assert_eq!(outcome.is_ok(), stored.contains(&n), "write {n}: reported {outcome:?}, stored {stored:?}");
        }
    }
}
