//! The Store port: versioned JSON documents with conditional writes and multi-document
//! transactions, queries, and the per-session event log with gap-free sequence numbers and a
//! watch. The embedded adapter is SQLite; the cloud one Firestore. Both pass one contract suite.

use crate::ids::{CorrelationId, SessionId, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::fmt;

/// The address of a document: `collection/id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocKey {
    collection: String,
    id: String,
}

impl DocKey {
    /// Collections are lowercase words (`users`, `processed`); ids are any non-empty text of at
    /// most 1,500 bytes (Firestore's limit) without `/` or control characters.
    pub fn new(collection: &str, id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        let collection_ok = !collection.is_empty()
            && collection.len() <= 64
            && collection.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !collection_ok {
            return Err(StoreError::Invalid(format!("collection {collection:?} must be lowercase letters and '_'")));
        }
        if id.is_empty()
            || id.len() > 1500
            || id.contains('/')
            || id.chars().any(char::is_control)
            || id == "."
            || id == ".."
        {
            return Err(StoreError::Invalid(format!(
                "document id {:?} must be 1-1500 bytes without '/' or control characters",
                id.chars().take(80).collect::<String>()
            )));
        }
        Ok(Self { collection: collection.to_owned(), id })
    }

    pub fn collection(&self) -> &str {
        &self.collection
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

/// A stored document. `version` starts at 1 and grows by one with every write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub key: DocKey,
    pub owner: UserId,
    pub version: u64,
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Serialize for DocKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Document {
    /// The data as a typed value.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_value(self.data.clone())
            .map_err(|e| StoreError::Corrupt(format!("{} does not match its type: {e}", self.key)))
    }
}

/// Whose documents a read may see. Every read names one, so no code path reads across owners
/// by accident: HTTP functions use the caller's scope; event handlers and the janitor use `All`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Owner(UserId),
}

impl Scope {
    pub fn allows(&self, owner: &UserId) -> bool {
        match self {
            Scope::All => true,
            Scope::Owner(me) => me == owner,
        }
    }
}

/// One write of a transaction. All writes of a [`Store::commit`] apply together or not at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Fails with a conflict if the document exists.
    Create { key: DocKey, owner: UserId, data: Value },
    /// Fails with a conflict unless the document exists at `expected_version`.
    Update { key: DocKey, expected_version: u64, data: Value },
    /// Creates or overwrites, whatever the current version.
    Set { key: DocKey, owner: UserId, data: Value },
    /// With `expected_version`, fails with a conflict unless the document is at that version.
    Delete { key: DocKey, expected_version: Option<u64> },
    /// Appends to a session's event log; numbers are allocated in the transaction, without gaps.
    Append { session: SessionId, owner: UserId, events: Vec<NewEvent> },
}

/// What each write of a committed transaction did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// The document's new version.
    Written { version: u64 },
    /// Whether there was a document to delete.
    Deleted { existed: bool },
    /// The sequence numbers given to the appended events.
    Appended { first_seq: u64, last_seq: u64 },
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub results: Vec<WriteResult>,
}

impl Committed {
    /// The version written by the write at `index`, if it wrote a document.
    pub fn version(&self, index: usize) -> Option<u64> {
        match self.results.get(index) {
            Some(WriteResult::Written { version }) => Some(*version),
            _ => None,
        }
    }
}

/// A query on one collection: equality filters on top-level or dotted fields, one order, a limit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub collection: String,
    pub filters: Vec<(String, Value)>,
    pub order_by: Option<(String, Order)>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

impl Query {
    pub fn collection(collection: &str) -> Self {
        Self { collection: collection.to_owned(), ..Self::default() }
    }

    pub fn filter(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.filters.push((field.to_owned(), value.into()));
        self
    }

    pub fn order_by(mut self, field: &str, order: Order) -> Self {
        self.order_by = Some((field.to_owned(), order));
        self
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Field paths are dotted identifiers; anything else is refused before it reaches an adapter.
    pub fn validate(&self) -> Result<(), StoreError> {
        DocKey::new(&self.collection, "probe")?;
        let fields = self.filters.iter().map(|(f, _)| f).chain(self.order_by.iter().map(|(f, _)| f));
        for field in fields {
            let ok = !field.is_empty()
                && field.len() <= 256
                && field
                    .split('.')
                    .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            if !ok {
                return Err(StoreError::Invalid(format!("field path {field:?} must be dotted identifiers")));
            }
        }
        Ok(())
    }
}

/// The kind of a session event: the client message types of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEventKind {
    Message,
    AiThought,
    Analysis,
    DeploymentStarted,
    DeploymentProgress,
    DeploymentUpdate,
    BuildLog,
    DeploymentComplete,
    MonitoringAlert,
    Error,
}

impl SessionEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::AiThought => "ai_thought",
            Self::Analysis => "analysis",
            Self::DeploymentStarted => "deployment_started",
            Self::DeploymentProgress => "deployment_progress",
            Self::DeploymentUpdate => "deployment_update",
            Self::BuildLog => "build_log",
            Self::DeploymentComplete => "deployment_complete",
            Self::MonitoringAlert => "monitoring_alert",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(Value::String(raw.to_owned())).ok()
    }
}

/// An event to append to a session's log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: SessionEventKind,
    pub correlation_id: CorrelationId,
    pub data: Value,
}

/// An event in a session's log, as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionEvent {
    pub session_id: SessionId,
    pub seq: u64,
    pub ts: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: SessionEventKind,
    pub correlation_id: CorrelationId,
    pub owner: UserId,
    pub data: Value,
}

/// Store failures. Predicates say how a caller should react.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A precondition failed: someone else wrote first. Re-read and try again.
    #[error("conflict on {key}: {reason}")]
    Conflict { key: String, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The write touches what belongs to another user (an append to their session).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The backend cannot be reached right now; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data is unreadable: a bug or a schema mismatch.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
    /// Worth retrying: a conflict (after a re-read) or an unavailable backend.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Unavailable(_))
    }
}

/// A stream of a session's events, in order, from a given sequence on.
pub type EventStream = BoxStream<'static, Result<SessionEvent, StoreError>>;

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads one document, if it exists and `scope` may see it (another owner's is `None`).
    async fn get(&self, scope: &Scope, key: &DocKey) -> Result<Option<Document>, StoreError>;

    /// Applies all writes atomically or none; a failed precondition is a conflict naming its key.
    async fn commit(&self, writes: Vec<Write>) -> Result<Committed, StoreError>;

    /// Documents of one collection matching the query, within `scope`.
    async fn query(&self, scope: &Scope, query: &Query) -> Result<Vec<Document>, StoreError>;

    /// Events of a session with `seq > after`, in order, at most `limit`.
    async fn events_after(
        &self,
        scope: &Scope,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>, StoreError>;

    /// Every event with `seq > after`, then every new one as it is appended, in order, without
    /// gaps or duplicates, until the stream is dropped.
    fn watch(&self, scope: Scope, session: SessionId, after: u64) -> EventStream;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many session events each owner has, within `scope` (for `/stats`). This default
    /// pages through [`Store::events_after`] for every session it can find: those with a
    /// `sessions/` document and those of `deployments/`, so a chat-only session without a
    /// document is missed. Adapters that can count (SQLite, Firestore's count aggregation)
    /// override it.
    async fn event_counts(&self, scope: &Scope) -> Result<std::collections::BTreeMap<UserId, u64>, StoreError> {
        const PAGE: usize = 1000;
        let mut sessions = std::collections::BTreeSet::new();
        for doc in self.query(scope, &Query::collection("sessions")).await? {
            sessions.insert(doc.key.id().to_owned());
        }
        for doc in self.query(scope, &Query::collection("deployments")).await? {
            if let Some(session) = doc.data.get("session_id").and_then(Value::as_str) {
                sessions.insert(session.to_owned());
            }
        }
        let mut counts = std::collections::BTreeMap::new();
        for raw in sessions {
            let Ok(session) = SessionId::parse(&raw) else { continue };
            let mut after = 0;
            loop {
                let page = self.events_after(scope, &session, after, PAGE).await?;
                for event in &page {
                    *counts.entry(event.owner.clone()).or_insert(0) += 1;
                }
                match page.last() {
                    Some(last) if page.len() == PAGE => after = last.seq,
                    _ => break,
                }
            }
        }
        Ok(counts)
    }
}

/// Typed conveniences over any [`Store`].
#[async_trait]
pub trait StoreExt: Store {
    async fn get_typed<T: DeserializeOwned + Send>(
        &self,
        scope: &Scope,
        key: &DocKey,
    ) -> Result<Option<(T, u64)>, StoreError> {
        match self.get(scope, key).await? {
            Some(doc) => Ok(Some((doc.parse()?, doc.version))),
            None => Ok(None),
        }
    }

    async fn create<T: Serialize + Sync>(&self, key: DocKey, owner: UserId, value: &T) -> Result<u64, StoreError> {
        let data = to_data(value)?;
        let committed = self.commit(vec![Write::Create { key, owner, data }]).await?;
        Ok(committed.version(0).unwrap_or(1))
    }

    async fn update<T: Serialize + Sync>(
        &self,
        key: DocKey,
        expected_version: u64,
        value: &T,
    ) -> Result<u64, StoreError> {
        let data = to_data(value)?;
        let committed = self.commit(vec![Write::Update { key, expected_version, data }]).await?;
        Ok(committed.version(0).unwrap_or(expected_version + 1))
    }

    /// Read-modify-write with optimistic concurrency: re-reads and re-applies `change` on every
    /// conflict, up to `attempts` times, so concurrent writers never lose an update.
    async fn modify<T, F>(&self, key: &DocKey, attempts: u32, mut change: F) -> Result<(T, u64), StoreError>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnMut(&mut T) -> Result<(), StoreError> + Send,
    {
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let Some((mut value, version)) = self.get_typed::<T>(&Scope::All, key).await? else {
                return Err(StoreError::NotFound(key.to_string()));
            };
            change(&mut value)?;
            match self.update(key.clone(), version, &value).await {
                Ok(new_version) => return Ok((value, new_version)),
                Err(e) if e.is_conflict() => {
                    last = Some(e);
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Conflict { key: key.to_string(), reason: "too many attempts".into() }))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// Serializes a value as document data.
pub fn to_data<T: Serialize + ?Sized>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Invalid(format!("value is not storable: {e}")))
}
