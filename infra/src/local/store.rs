//! The embedded Store: documents and session event logs in SQLite.
//!
//! All writes go through one writer connection, each [`Store::commit`] in one `BEGIN IMMEDIATE`
//! transaction, so preconditions are checked and applied atomically; a stale expected version is
//! a conflict, never a lost update. Sequence numbers of a session's log are allocated inside the
//! same transaction (max + 1), so they have no gaps even with concurrent appenders. Watchers are
//! woken through a broadcast channel after each commit and re-read from the database, so a
//! lagging watcher never misses an event.

use super::sqlite::{Db, DbError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use devgem_common::clock::Clock;
use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ports::store::{
    Committed, DocKey, Document, EventStream, Order, Query, Scope, SessionEvent, SessionEventKind, Store, StoreError,
    Write, WriteResult,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::broadcast;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_by_owner ON documents (collection, owner);
CREATE TABLE IF NOT EXISTS session_events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"#;

/// How many events a watcher reads per query.
const WATCH_PAGE: usize = 256;

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

fn sql(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(code.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Unavailable(format!("sqlite: {other}")),
    }
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {raw:?}: {e}")))
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_json(raw: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn parse_owner(raw: &str) -> Result<UserId, StoreError> {
    UserId::parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The embedded document store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    db: Arc<Db>,
    clock: Arc<dyn Clock>,
    appended: broadcast::Sender<Arc<str>>,
}

impl LocalStore {
    /// Opens the store in `path` (a SQLite file), creating it if needed.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let db = Db::open(path, SCHEMA)?;
        let (appended, _) = broadcast::channel(1024);
        Ok(Self { db, clock, appended })
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

fn read_document(row: &rusqlite::Row<'_>, key: DocKey) -> Result<Document, StoreError> {
    let owner: String = row.get(0).map_err(sql)?;
    let version: i64 = row.get(1).map_err(sql)?;
    let data: String = row.get(2).map_err(sql)?;
    let created: String = row.get(3).map_err(sql)?;
    let updated: String = row.get(4).map_err(sql)?;
    Ok(Document {
        data: parse_json(&data, &key.to_string())?,
        key,
        owner: parse_owner(&owner)?,
        version: u64::try_from(version).map_err(|_| StoreError::Corrupt("negative version".into()))?,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
    })
}

fn conflict(key: &DocKey, reason: impl Into<String>) -> StoreError {
    StoreError::Conflict { key: key.to_string(), reason: reason.into() }
}

fn current_version(tx: &rusqlite::Transaction<'_>, key: &DocKey) -> Result<Option<u64>, StoreError> {
    tx.query_row(
        "SELECT version FROM documents WHERE collection = ?1 AND id = ?2",
        params![key.collection(), key.id()],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map_err(sql)
    .map(|v| v.map(|v| v.max(0) as u64))
}

fn apply(tx: &rusqlite::Transaction<'_>, write: &Write, now: &str) -> Result<WriteResult, StoreError> {
    match write {
        Write::Create { key, owner, data } => {
            if current_version(tx, key)?.is_some() {
                return Err(conflict(key, "already exists"));
            }
            tx.execute(
                "INSERT INTO documents (collection, id, owner, version, data, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?5)",
                params![key.collection(), key.id(), owner.as_str(), data.to_string(), now],
            )
            .map_err(sql)?;
            Ok(WriteResult::Written { version: 1 })
        }
        Write::Update { key, expected_version, data } => {
            let expected =
                i64::try_from(*expected_version).map_err(|_| StoreError::Invalid("version too large".into()))?;
            let changed = tx
                .execute(
                    "UPDATE documents SET data = ?1, version = version + 1, updated_at = ?2
                     WHERE collection = ?3 AND id = ?4 AND version = ?5",
                    params![data.to_string(), now, key.collection(), key.id(), expected],
                )
                .map_err(sql)?;
            if changed == 0 {
                return Err(match current_version(tx, key)? {
                    Some(actual) => conflict(key, format!("expected version {expected_version}, found {actual}")),
                    None => conflict(key, "does not exist"),
                });
            }
            Ok(WriteResult::Written { version: expected_version + 1 })
        }
        Write::Set { key, owner, data } => {
            let version = current_version(tx, key)?.map_or(1, |v| v + 1);
            tx.execute(
                "INSERT INTO documents (collection, id, owner, version, data, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?5)
                 ON CONFLICT (collection, id) DO UPDATE SET
                    owner = excluded.owner, data = excluded.data, version = documents.version + 1,
                    updated_at = excluded.updated_at",
                params![key.collection(), key.id(), owner.as_str(), data.to_string(), now],
            )
            .map_err(sql)?;
            Ok(WriteResult::Written { version })
        }
        Write::Delete { key, expected_version } => {
            let current = current_version(tx, key)?;
            if let Some(expected) = expected_version
                && current != Some(*expected)
            {
                return Err(conflict(key, format!("expected version {expected}, found {current:?}")));
            }
            if current.is_some() {
                tx.execute(
                    "DELETE FROM documents WHERE collection = ?1 AND id = ?2",
                    params![key.collection(), key.id()],
                )
                .map_err(sql)?;
            }
            Ok(WriteResult::Deleted { existed: current.is_some() })
        }
        Write::Append { session, owner, events } => {
            if events.is_empty() {
                return Err(StoreError::Invalid("an append needs at least one event".into()));
            }
            // A session belongs to the writer of its first event; nobody else appends to it.
            let first_owner: Option<String> = tx
                .query_row(
                    "SELECT owner FROM session_events WHERE session_id = ?1 ORDER BY seq LIMIT 1",
                    params![session.as_str()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql)?;
            if first_owner.is_some_and(|first| first != owner.as_str()) {
                return Err(StoreError::Forbidden(format!("session {session}")));
            }
            let last: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM session_events WHERE session_id = ?1",
                    params![session.as_str()],
                    |row| row.get(0),
                )
                .map_err(sql)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO session_events (session_id, seq, owner, kind, correlation_id, ts, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            for (offset, event) in events.iter().enumerate() {
                let seq = last + 1 + offset as i64;
                stmt.execute(params![
                    session.as_str(),
                    seq,
                    owner.as_str(),
                    event.kind.as_str(),
                    event.correlation_id.as_str(),
                    now,
                    event.data.to_string()
                ])
                .map_err(sql)?;
            }
            let first = (last + 1) as u64;
            Ok(WriteResult::Appended { first_seq: first, last_seq: first + events.len() as u64 - 1 })
        }
    }
}

fn read_events(
    conn: &rusqlite::Connection,
    scope: &Scope,
    session: &SessionId,
    after: u64,
    limit: usize,
) -> Result<Vec<SessionEvent>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let owner = match scope {
        Scope::All => None,
        Scope::Owner(o) => Some(o.as_str().to_owned()),
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, owner, kind, correlation_id, ts, data FROM session_events
             WHERE session_id = ?1 AND seq > ?2 AND (?3 IS NULL OR owner = ?3)
             ORDER BY seq LIMIT ?4",
        )
        .map_err(sql)?;
    let mut rows = stmt.query(params![session.as_str(), after, owner, limit]).map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let seq: i64 = row.get(0).map_err(sql)?;
        let owner: String = row.get(1).map_err(sql)?;
        let kind: String = row.get(2).map_err(sql)?;
        let correlation: String = row.get(3).map_err(sql)?;
        let ts: String = row.get(4).map_err(sql)?;
        let data: String = row.get(5).map_err(sql)?;
        out.push(SessionEvent {
            session_id: session.clone(),
            seq: seq.max(0) as u64,
            ts: parse_time(&ts)?,
            kind: SessionEventKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("event kind {kind:?}")))?,
            correlation_id: CorrelationId::parse(&correlation).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            owner: parse_owner(&owner)?,
            data: parse_json(&data, "session event")?,
        });
    }
    Ok(out)
}

/// A query parameter for an equality filter on a JSON field, compared as SQLite sees
/// `json_extract` results (strings as text, numbers, booleans as 0/1, objects as JSON text).
fn filter_param(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match value {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => n.as_i64().map(Sql::Integer).or_else(|| n.as_f64().map(Sql::Real)).unwrap_or(Sql::Null),
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn get(&self, scope: &Scope, key: &DocKey) -> Result<Option<Document>, StoreError> {
        let key = key.clone();
        let scope = scope.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT owner, version, data, created_at, updated_at FROM documents
                         WHERE collection = ?1 AND id = ?2",
                    )
                    .map_err(sql)?;
                let mut rows = stmt.query(params![key.collection(), key.id()]).map_err(sql)?;
                match rows.next().map_err(sql)? {
                    Some(row) => {
                        let doc = read_document(row, key.clone())?;
                        Ok(scope.allows(&doc.owner).then_some(doc))
                    }
                    None => Ok(None),
                }
            })
            .await
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Committed, StoreError> {
        if writes.is_empty() {
            return Ok(Committed { results: Vec::new() });
        }
        let now = time_text(self.clock.now());
        let sessions: Vec<Arc<str>> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Append { session, .. } => Some(Arc::from(session.as_str())),
                _ => None,
            })
            .collect();
        let appended = self.appended.clone();
        let committed = self
            .db
            .write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
                let mut results = Vec::with_capacity(writes.len());
                for write in &writes {
                    results.push(apply(&tx, write, &now)?);
                }
                tx.commit().map_err(sql)?;
                // Wake watchers here, right after the commit: if the caller's future is dropped
                // meanwhile, the append still stands and must still be seen.
                for session in sessions {
                    let _ = appended.send(session);
                }
                Ok::<_, StoreError>(Committed { results })
            })
            .await?;
        Ok(committed)
    }

    async fn query(&self, scope: &Scope, query: &Query) -> Result<Vec<Document>, StoreError> {
        query.validate()?;
        let query = query.clone();
        let scope = scope.clone();
        self.db
            .read(move |conn| {
                let mut text = String::from(
                    "SELECT owner, version, data, created_at, updated_at, id FROM documents WHERE collection = ?",
                );
                let mut values: Vec<rusqlite::types::Value> = vec![query.collection.clone().into()];
                if let Scope::Owner(owner) = &scope {
                    text.push_str(" AND owner = ?");
                    values.push(owner.as_str().to_owned().into());
                }
                for (field, value) in &query.filters {
                    // Field paths are validated identifiers, but they still travel as parameters.
                    if value.is_null() {
                        text.push_str(" AND json_extract(data, ?) IS NULL");
                        values.push(format!("$.{field}").into());
                    } else {
                        text.push_str(" AND json_extract(data, ?) = ?");
                        values.push(format!("$.{field}").into());
                        values.push(filter_param(value));
                    }
                }
                if let Some((field, order)) = &query.order_by {
                    let dir = if *order == Order::Descending { "DESC" } else { "ASC" };
                    text.push_str(&format!(" ORDER BY json_extract(data, ?) {dir}, id {dir}"));
                    values.push(format!("$.{field}").into());
                } else {
                    text.push_str(" ORDER BY id");
                }
                if let Some(limit) = query.limit {
                    text.push_str(" LIMIT ?");
                    values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
                }
                let mut stmt = conn.prepare_cached(&text).map_err(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values)).map_err(sql)?;
                let mut docs = Vec::new();
                while let Some(row) = rows.next().map_err(sql)? {
                    let id: String = row.get(5).map_err(sql)?;
                    let key = DocKey::new(&query.collection, id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    docs.push(read_document(row, key)?);
                }
                Ok(docs)
            })
            .await
    }

    async fn events_after(
        &self,
        scope: &Scope,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let (scope, session) = (scope.clone(), session.clone());
        self.db.read(move |conn| read_events(conn, &scope, &session, after, limit)).await
    }

    fn watch(&self, scope: Scope, session: SessionId, after: u64) -> EventStream {
        struct State {
            store: LocalStore,
            wake: broadcast::Receiver<Arc<str>>,
            scope: Scope,
            session: SessionId,
            last: u64,
            buffer: VecDeque<SessionEvent>,
        }
        // Subscribe before the first read, so an append between the read and the wait still
        // wakes us.
        let state = State {
            wake: self.appended.subscribe(),
            store: self.clone(),
            scope,
            session,
            last: after,
            buffer: VecDeque::new(),
        };
        Box::pin(futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(event) = st.buffer.pop_front() {
                    st.last = event.seq;
                    return Some((Ok(event), st));
                }
                match st.store.events_after(&st.scope, &st.session, st.last, WATCH_PAGE).await {
                    Ok(events) if !events.is_empty() => {
                        st.buffer.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return Some((Err(e), st)),
                }
                loop {
                    match st.wake.recv().await {
                        Ok(session) if *session == *st.session.as_str() => break,
                        Ok(_) => continue,
                        // Missed some wake-ups: re-read to be sure.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql)).await
    }

    /// One grouped count over the event table: no event is read.
    async fn event_counts(&self, scope: &Scope) -> Result<std::collections::BTreeMap<UserId, u64>, StoreError> {
        let owner = match scope {
            Scope::All => None,
            Scope::Owner(o) => Some(o.as_str().to_owned()),
        };
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT owner, COUNT(*) FROM session_events WHERE (?1 IS NULL OR owner = ?1) GROUP BY owner",
                    )
                    .map_err(sql)?;
                let mut rows = stmt.query(params![owner]).map_err(sql)?;
                let mut counts = std::collections::BTreeMap::new();
                while let Some(row) = rows.next().map_err(sql)? {
                    let owner: String = row.get(0).map_err(sql)?;
                    let count: i64 = row.get(1).map_err(sql)?;
                    counts.insert(parse_owner(&owner)?, count.max(0) as u64);
                }
                Ok(counts)
            })
            .await
    }
}

#[cfg(test)]
mod tests;
