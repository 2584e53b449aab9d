//! The Store port on Firestore, with the embedded store's semantics (the contract suite in
//! `infra/tests/contract_store.rs` runs against both).
//!
//! # Layout
//! ```text
//! {collection}/{id}                 owner, version, data (a map), or data_blob when large
//! sessions/{id}/events/{seq:020}    seq, owner, kind, correlation_id, data; ts = create time
//! session_heads/{id}                owner, last_seq: the session's log head
//! ```
//! The head is its own document rather than a field of `sessions/{id}`: that document is the
//! chat's, written with versioned updates, and every append would otherwise conflict with them.
//!
//! # Writes
//! A commit is a read-write transaction: the documents it depends on are read in it
//! (`BatchGetDocuments`), the caller's expectations are checked, and the writes go out with
//! preconditions (`update_time` of what was read, or "does not exist") so that nothing read can
//! have changed when they apply. A precondition that fails because of a concurrent writer
//! restarts the transaction, which then either succeeds or reports the caller's conflict.
//! Only `BatchGetDocuments`, `BeginTransaction`, `Commit`, `Rollback`, `RunQuery` and `Listen`
//! are used: the same calls work on Firestore and on the emulator the tests run.
//!
//! Sequence numbers come from the head, read and advanced in the same transaction as the events
//! are created, so they have no gaps. One append of several events is one head write; appends
//! from different callers are not grouped (concurrent ones race on the head and retry).
//!
//! Documents over [`INLINE_LIMIT`] keep their data in Blobs (`store/...`), with their top-level
//! scalar fields inline so queries still find them.

mod value;
mod watch;

use crate::gcp::GcpConfig;
use crate::gcp::call::{Api, CallError};
use crate::resilience::{Classify, Failure};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ports::blobs::{BlobKey, Blobs, BlobsExt};
use devgem_common::ports::store::{
    Committed, DocKey, Document, EventStream, Order, Query, Scope, SessionEvent, SessionEventKind, Store, StoreError,
    Write, WriteResult,
};
use firestore::gcloud_sdk::google::firestore::v1 as fs;
use firestore::gcloud_sdk::google::firestore::v1::firestore_client::FirestoreClient;
use firestore::gcloud_sdk::prost::Message as _;
use firestore::gcloud_sdk::tonic::{Code, Status};
use firestore::gcloud_sdk::{GoogleApi, GoogleAuthMiddleware};
use firestore::{FirestoreDb, FirestoreDbOptions};
use futures_util::StreamExt;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Firestore refuses documents over 1 MiB; past this encoded size the data goes to Blobs.
pub const INLINE_LIMIT: usize = 900 * 1024;
/// Firestore's limit of writes in one commit.
pub const MAX_WRITES: usize = 500;
/// Commits restarted after losing a race before the store reports contention.
const MAX_RACES: u32 = 20;

const HEADS: &str = "session_heads";

type Client = GoogleApi<FirestoreClient<GoogleAuthMiddleware>>;

/// The Firestore adapter. Cheap to clone.
#[derive(Clone)]
pub struct FirestoreStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `projects/{p}/databases/{d}`.
    database: String,
    /// `projects/{p}/databases/{d}/documents`.
    root: String,
    api: Api,
    blobs: Arc<dyn Blobs>,
}

impl std::fmt::Debug for FirestoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirestoreStore").field("database", &self.inner.database).finish_non_exhaustive()
    }
}

/// A gRPC status as the breaker sees it.
#[derive(Debug)]
struct Grpc(Status);

impl Classify for Grpc {
    fn failure(&self) -> Failure {
        match self.0.code() {
            Code::ResourceExhausted => Failure::SlowDown,
            Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::Aborted => {
                Failure::Down
            }
            _ => Failure::Refused,
        }
    }
}

impl std::fmt::Display for Grpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

fn store_error(error: CallError<Grpc>) -> StoreError {
    match error {
        CallError::Open { .. } => StoreError::Unavailable(error.message()),
        CallError::Failed(Grpc(status)) => status_error(&status),
    }
}

fn status_error(status: &Status) -> StoreError {
    let message = format!("Firestore: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StoreError::Invalid(message),
        Code::PermissionDenied | Code::Unauthenticated => StoreError::Unavailable(format!(
            "{message} (check the service account's roles/datastore.user and the database name)"
        )),
        _ => StoreError::Unavailable(message),
    }
}

/// Why one attempt at a commit did not go through.
enum Attempt {
    /// A concurrent writer changed what this transaction read: run it again.
    Race,
    Failed(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Failed(e)
    }
}

impl FirestoreStore {
    /// Connects with Application Default Credentials, or to `FIRESTORE_EMULATOR_HOST` without
    /// credentials. Large document data goes to `blobs`.
    pub async fn connect(config: &GcpConfig, blobs: Arc<dyn Blobs>) -> Result<Self, StoreError> {
        let options =
            FirestoreDbOptions::new(config.project.clone()).with_database_id(config.firestore_database.clone());
        let db = match &config.firestore_emulator {
            Some(host) => {
                let url = if host.contains("://") { host.clone() } else { format!("http://{host}") };
                let anonymous = google_cloud_auth::credentials::anonymous::Builder::new().build();
                FirestoreDb::with_options_auth(options.with_firebase_api_url(url), anonymous).await
            }
            None => FirestoreDb::with_options(options).await,
        }
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to Firestore: {e}")))?;
        let database = db.get_database_path().clone();
        let root = db.get_documents_path().clone();
        Ok(Self {
            inner: Arc::new(Inner { client: db.client().clone(), database, root, api: Api::new("Firestore"), blobs }),
        })
    }

    fn client(&self) -> FirestoreClient<GoogleAuthMiddleware> {
        self.inner.client.get()
    }

    fn doc_name(&self, key: &DocKey) -> String {
        format!("{}/{}/{}", self.inner.root, key.collection(), key.id())
    }

    fn head_name(&self, session: &SessionId) -> String {
        format!("{}/{HEADS}/{}", self.inner.root, session.as_str())
    }

    fn events_parent(&self, session: &SessionId) -> String {
        format!("{}/sessions/{}", self.inner.root, session.as_str())
    }

    fn event_name(&self, session: &SessionId, seq: u64) -> String {
        format!("{}/events/{seq:020}", self.events_parent(session))
    }

    /// Reads documents by name, in a transaction when given one. Missing names are absent.
    async fn batch_get(
        &self,
        names: Vec<String>,
        transaction: Option<Vec<u8>>,
    ) -> Result<HashMap<String, fs::Document>, StoreError> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let request = fs::BatchGetDocumentsRequest {
            database: self.inner.database.clone(),
            documents: names,
            consistency_selector: transaction.map(fs::batch_get_documents_request::ConsistencySelector::Transaction),
            ..Default::default()
        };
        self.inner
            .api
            .call(|| {
                let request = request.clone();
                let mut client = self.client();
                async move {
                    let mut stream = client.batch_get_documents(request).await.map_err(Grpc)?.into_inner();
                    let mut found = HashMap::new();
                    while let Some(response) = stream.next().await {
                        if let Some(fs::batch_get_documents_response::Result::Found(doc)) =
                            response.map_err(Grpc)?.result
                        {
                            found.insert(doc.name.clone(), doc);
                        }
                    }
                    Ok(found)
                }
            })
            .await
            .map_err(store_error)
    }

    async fn begin(&self) -> Result<Vec<u8>, StoreError> {
        let request = fs::BeginTransactionRequest {
            database: self.inner.database.clone(),
            options: Some(fs::TransactionOptions {
                mode: Some(fs::transaction_options::Mode::ReadWrite(Default::default())),
            }),
            ..Default::default()
        };
        self.inner
            .api
            .call(|| {
                let request = request.clone();
                let mut client = self.client();
                async move { client.begin_transaction(request).await.map_err(Grpc) }
            })
            .await
            .map(|r| r.into_inner().transaction)
            .map_err(store_error)
    }

    /// Releases a transaction's locks; best effort (they expire anyway).
    fn rollback(&self, transaction: Vec<u8>) {
        let request = fs::RollbackRequest { database: self.inner.database.clone(), transaction, ..Default::default() };
        let mut client = self.client();
        tokio::spawn(async move {
            if let Err(e) = client.rollback(request).await {
                tracing::debug!(error = %e.message(), "Firestore rollback failed; the transaction expires by itself");
            }
        });
    }

    async fn run_query(&self, parent: String, query: fs::StructuredQuery) -> Result<Vec<fs::Document>, StoreError> {
        let request = fs::RunQueryRequest {
            parent,
            query_type: Some(fs::run_query_request::QueryType::StructuredQuery(query)),
            ..Default::default()
        };
        self.inner
            .api
            .call(|| {
                let request = request.clone();
                let mut client = self.client();
                async move {
                    let mut stream = client.run_query(request).await.map_err(Grpc)?.into_inner();
                    let mut docs = Vec::new();
                    while let Some(response) = stream.next().await {
                        if let Some(doc) = response.map_err(Grpc)?.document {
                            docs.push(doc);
                        }
                    }
                    Ok(docs)
                }
            })
            .await
            .map_err(store_error)
    }

    /// The stored form of a document's or event's data: inline, or in Blobs when too large.
    async fn put_data(
        &self,
        fields: &mut HashMap<String, fs::Value>,
        data: &Json,
        blob_key: impl FnOnce() -> String,
    ) -> Result<Option<BlobKey>, StoreError> {
        let encoded = value::encode(data)?;
        if encoded.encoded_len() <= INLINE_LIMIT {
            fields.insert("data".into(), encoded);
            return Ok(None);
        }
        let key = BlobKey::parse(&blob_key()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let bytes = serde_json::to_vec(data).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.inner
            .blobs
            .put_bytes(&key, bytes.into())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot store a large document's data: {e}")))?;
        // Small top-level scalars stay inline, so equality queries still find the document.
        let mut inline = serde_json::Map::new();
        if let Json::Object(top) = data {
            for (k, v) in top {
                let small = match v {
                    Json::String(s) => s.len() <= 1024,
                    Json::Bool(_) | Json::Number(_) | Json::Null => true,
                    _ => false,
                };
                if small {
                    inline.insert(k.clone(), v.clone());
                }
            }
        }
        fields.insert("data".into(), value::encode(&Json::Object(inline))?);
        fields.insert("data_blob".into(), string(key.as_str()));
        Ok(Some(key))
    }

    async fn read_data(&self, fields: &HashMap<String, fs::Value>) -> Result<Json, StoreError> {
        if let Some(key) = field_str(fields, "data_blob") {
            let key = BlobKey::parse(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let bytes = self
                .inner
                .blobs
                .get_bytes(&key)
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot read a large document's data: {e}")))?;
            return serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")));
        }
        fields.get("data").map_or(Ok(Json::Null), value::decode)
    }

    async fn to_document(&self, key: DocKey, doc: &fs::Document) -> Result<Document, StoreError> {
        let owner = field_str(&doc.fields, "owner")
            .ok_or_else(|| StoreError::Corrupt(format!("{key} has no owner")))
            .and_then(|o| UserId::parse(o).map_err(|e| StoreError::Corrupt(e.to_string())))?;
        let version =
            field_int(&doc.fields, "version").ok_or_else(|| StoreError::Corrupt(format!("{key} has no version")))?;
        Ok(Document {
            data: self.read_data(&doc.fields).await?,
            owner,
            version,
            created_at: time(doc.create_time.as_ref()),
            updated_at: time(doc.update_time.as_ref()),
            key,
        })
    }

    async fn to_event(&self, session: &SessionId, doc: &fs::Document) -> Result<SessionEvent, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("event {} has no valid {what}", doc.name));
        let kind = field_str(&doc.fields, "kind").and_then(SessionEventKind::parse).ok_or_else(|| corrupt("kind"))?;
        Ok(SessionEvent {
            session_id: session.clone(),
            seq: field_int(&doc.fields, "seq").ok_or_else(|| corrupt("seq"))?,
            ts: time(doc.create_time.as_ref()),
            kind,
            correlation_id: field_str(&doc.fields, "correlation_id")
                .and_then(|c| CorrelationId::parse(c).ok())
                .ok_or_else(|| corrupt("correlation id"))?,
            owner: field_str(&doc.fields, "owner")
                .and_then(|o| UserId::parse(o).ok())
                .ok_or_else(|| corrupt("owner"))?,
            data: self.read_data(&doc.fields).await?,
        })
    }

    /// The query for a session's events after `after`, in order.
    fn events_query(after: u64, limit: Option<usize>) -> fs::StructuredQuery {
        fs::StructuredQuery {
            from: vec![fs::structured_query::CollectionSelector {
                collection_id: "events".into(),
                all_descendants: false,
            }],
            r#where: Some(field_filter("seq", fs::structured_query::field_filter::Operator::GreaterThan, int(after))),
            order_by: vec![order("seq", Order::Ascending)],
            limit: limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)),
            ..Default::default()
        }
    }

    async fn try_commit(&self, writes: &[Write]) -> Result<Committed, Attempt> {
        let mut names = Vec::new();
        for write in writes {
            match write {
                Write::Create { key, .. }
                | Write::Update { key, .. }
                | Write::Set { key, .. }
                | Write::Delete { key, .. } => names.push(self.doc_name(key)),
                Write::Append { session, .. } => names.push(self.head_name(session)),
            }
        }
        names.sort();
        names.dedup();
        let transaction = self.begin().await?;
        match self.apply_in(writes, names, &transaction).await {
            Ok(committed) => Ok(committed),
            Err(e) => {
                self.rollback(transaction);
                Err(e)
            }
        }
    }

    async fn apply_in(&self, writes: &[Write], names: Vec<String>, transaction: &[u8]) -> Result<Committed, Attempt> {
        use fs::precondition::ConditionType;
        let read = self.batch_get(names, Some(transaction.to_vec())).await?;
        let mut out = Vec::new();
        let mut results = Vec::new();
        let mut stale_blobs = Vec::new();
        // Each session's head as this commit leaves it: (owner, last seq, precondition).
        let mut heads: BTreeMap<String, (String, u64, ConditionType)> = BTreeMap::new();
        let conflict =
            |key: &DocKey, reason: String| Attempt::Failed(StoreError::Conflict { key: key.to_string(), reason });
        for write in writes {
            match write {
                Write::Create { key, owner, data } => {
                    if read.contains_key(&self.doc_name(key)) {
                        return Err(conflict(key, "already exists".into()));
                    }
                    let doc = self.new_doc(key, owner.as_str(), 1, data, &mut stale_blobs).await?;
                    out.push(with_precondition(doc, ConditionType::Exists(false)));
                    results.push(WriteResult::Written { version: 1 });
                }
                Write::Update { key, expected_version, data } => {
                    let Some(current) = read.get(&self.doc_name(key)) else {
                        return Err(conflict(key, "does not exist".into()));
                    };
                    let version = field_int(&current.fields, "version").unwrap_or(0);
                    if version != *expected_version {
                        return Err(conflict(key, format!("expected version {expected_version}, found {version}")));
                    }
                    let owner = field_str(&current.fields, "owner").unwrap_or_default().to_owned();
                    remember_blob(current, &mut stale_blobs);
                    let doc = self.new_doc(key, &owner, version + 1, data, &mut stale_blobs).await?;
                    out.push(with_precondition(doc, updated_at(current)));
                    results.push(WriteResult::Written { version: version + 1 });
                }
                Write::Set { key, owner, data } => {
                    let current = read.get(&self.doc_name(key));
                    let version = current.and_then(|c| field_int(&c.fields, "version")).map_or(1, |v| v + 1);
                    let condition = current.map_or(ConditionType::Exists(false), updated_at);
                    if let Some(current) = current {
                        remember_blob(current, &mut stale_blobs);
                    }
                    let doc = self.new_doc(key, owner.as_str(), version, data, &mut stale_blobs).await?;
                    out.push(with_precondition(doc, condition));
                    results.push(WriteResult::Written { version });
                }
                Write::Delete { key, expected_version } => {
                    let current = read.get(&self.doc_name(key));
                    let version = current.and_then(|c| field_int(&c.fields, "version"));
                    if let Some(expected) = expected_version
                        && version != Some(*expected)
                    {
                        return Err(conflict(key, format!("expected version {expected}, found {version:?}")));
                    }
                    if let Some(current) = current {
                        remember_blob(current, &mut stale_blobs);
                        out.push(fs::Write {
                            operation: Some(fs::write::Operation::Delete(current.name.clone())),
                            current_document: Some(fs::Precondition { condition_type: Some(updated_at(current)) }),
                            ..Default::default()
                        });
                    }
                    results.push(WriteResult::Deleted { existed: current.is_some() });
                }
                Write::Append { session, owner, events } => {
                    if events.is_empty() {
                        return Err(StoreError::Invalid("an append needs at least one event".into()).into());
                    }
                    let head_name = self.head_name(session);
                    let head = heads.entry(head_name.clone()).or_insert_with(|| match read.get(&head_name) {
                        Some(doc) => (
                            field_str(&doc.fields, "owner").unwrap_or_default().to_owned(),
                            field_int(&doc.fields, "last_seq").unwrap_or(0),
                            updated_at(doc),
                        ),
                        None => (owner.as_str().to_owned(), 0, ConditionType::Exists(false)),
                    });
                    // A session belongs to the writer of its first event; nobody else appends.
                    if head.0 != owner.as_str() {
                        return Err(StoreError::Forbidden(format!("session {session}")).into());
                    }
                    let first = head.1 + 1;
                    for (offset, event) in events.iter().enumerate() {
                        let seq = first + offset as u64;
                        let mut fields = HashMap::from([
                            ("seq".to_owned(), int(seq)),
                            ("owner".to_owned(), string(owner.as_str())),
                            ("kind".to_owned(), string(event.kind.as_str())),
                            ("correlation_id".to_owned(), string(event.correlation_id.as_str())),
                        ]);
                        self.put_data(&mut fields, &event.data, || {
                            format!("store/events/{}/{seq}.json", session.as_str())
                        })
                        .await?;
                        let doc = fs::Document { name: self.event_name(session, seq), fields, ..Default::default() };
                        out.push(with_precondition(doc, ConditionType::Exists(false)));
                    }
                    head.1 += events.len() as u64;
                    results.push(WriteResult::Appended { first_seq: first, last_seq: head.1 });
                }
            }
        }
        for (name, (owner, last_seq, condition)) in heads {
            let fields = HashMap::from([("owner".to_owned(), string(&owner)), ("last_seq".to_owned(), int(last_seq))]);
            out.push(with_precondition(fs::Document { name, fields, ..Default::default() }, condition));
        }
        if out.is_empty() {
            // Nothing to write (a delete of a missing document): release the transaction.
            self.rollback(transaction.to_vec());
            return Ok(Committed { results });
        }
        if out.len() > MAX_WRITES {
            return Err(StoreError::Invalid(format!(
                "a transaction of {} writes is over Firestore's {MAX_WRITES}; split it",
                out.len()
            ))
            .into());
        }
        let request = fs::CommitRequest {
            database: self.inner.database.clone(),
            writes: out,
            transaction: transaction.to_vec(),
            ..Default::default()
        };
        // Not retried as a call: a commit that timed out may have applied, and running it again
        // would report its own writes as a conflict. Callers retry the whole operation.
        match self.client().commit(request).await {
            Ok(_) => {}
            Err(status)
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists | Code::NotFound
                ) =>
            {
                return Err(Attempt::Race);
            }
            Err(status) => return Err(status_error(&status).into()),
        }
        for key in stale_blobs {
            // The new version no longer points there; a failure leaves garbage, not damage.
            if let Err(e) = self.inner.blobs.delete(&key).await {
                tracing::debug!(%key, error = %e, "could not remove a replaced document blob");
            }
        }
        Ok(Committed { results })
    }

    /// One commit, run again while it loses races to concurrent writers.
    async fn commit_once(&self, writes: &[Write]) -> Result<Committed, StoreError> {
        let mut races = 0;
        loop {
            match self.try_commit(writes).await {
                Ok(committed) => return Ok(committed),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Race) if races < MAX_RACES => {
                    races += 1;
                    // Spread the retries of writers that collided, so they do not collide again.
                    let jitter = fastrand::u64(0..=(5 << races.min(6)));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(Attempt::Race) => {
                    return Err(StoreError::Unavailable(format!(
                        "Firestore: {MAX_RACES} concurrent writers won in a row; try again"
                    )));
                }
            }
        }
    }

    /// An append of more events than one commit holds, as consecutive commits. Each is gap-free;
    /// another writer's events may land between them, so `first_seq..=last_seq` then spans them.
    async fn commit_chunks(&self, chunks: Vec<Write>) -> Result<Committed, StoreError> {
        let (mut first, mut last) = (None, 0);
        for chunk in chunks {
            let committed = self.commit_once(std::slice::from_ref(&chunk)).await?;
            if let Some(WriteResult::Appended { first_seq, last_seq }) = committed.results.first() {
                first.get_or_insert(*first_seq);
                last = *last_seq;
            }
        }
        Ok(Committed { results: vec![WriteResult::Appended { first_seq: first.unwrap_or(0), last_seq: last }] })
    }

    async fn new_doc(
        &self,
        key: &DocKey,
        owner: &str,
        version: u64,
        data: &Json,
        stale_blobs: &mut Vec<BlobKey>,
    ) -> Result<fs::Document, StoreError> {
        let mut fields = HashMap::from([("owner".to_owned(), string(owner)), ("version".to_owned(), int(version))]);
        let blob = self
            .put_data(&mut fields, data, || {
                let id = hex(&Sha256::digest(key.id().as_bytes())[..16]);
                format!("store/{}/{id}-v{version}.json", key.collection())
            })
            .await?;
        // A blob this write just stored is not stale, even if an earlier write of the commit named it.
        if let Some(blob) = blob {
            stale_blobs.retain(|k| *k != blob);
        }
        Ok(fs::Document { name: self.doc_name(key), fields, ..Default::default() })
    }
}

/// A commit that is one append of more events than fit in one Firestore commit, split.
fn split_long_append(writes: &[Write]) -> Option<Vec<Write>> {
    let [Write::Append { session, owner, events }] = writes else { return None };
    // One write per event, plus the head.
    let per_commit = MAX_WRITES - 1;
    (events.len() > per_commit).then(|| {
        events
            .chunks(per_commit)
            .map(|chunk| Write::Append { session: session.clone(), owner: owner.clone(), events: chunk.to_vec() })
            .collect()
    })
}

fn remember_blob(doc: &fs::Document, stale: &mut Vec<BlobKey>) {
    if let Some(key) = field_str(&doc.fields, "data_blob").and_then(|k| BlobKey::parse(k).ok()) {
        stale.push(key);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_precondition(doc: fs::Document, condition: fs::precondition::ConditionType) -> fs::Write {
    fs::Write {
        operation: Some(fs::write::Operation::Update(doc)),
        current_document: Some(fs::Precondition { condition_type: Some(condition) }),
        ..Default::default()
    }
}

fn updated_at(doc: &fs::Document) -> fs::precondition::ConditionType {
    match doc.update_time {
        Some(t) => fs::precondition::ConditionType::UpdateTime(t),
        None => fs::precondition::ConditionType::Exists(true),
    }
}

fn string(s: &str) -> fs::Value {
    fs::Value { value_type: Some(fs::value::ValueType::StringValue(s.to_owned())) }
}

fn int(i: u64) -> fs::Value {
    fs::Value { value_type: Some(fs::value::ValueType::IntegerValue(i64::try_from(i).unwrap_or(i64::MAX))) }
}

fn field_str<'a>(fields: &'a HashMap<String, fs::Value>, name: &str) -> Option<&'a str> {
    match fields.get(name)?.value_type.as_ref()? {
        fs::value::ValueType::StringValue(s) => Some(s),
        _ => None,
    }
}

fn field_int(fields: &HashMap<String, fs::Value>, name: &str) -> Option<u64> {
    match fields.get(name)?.value_type.as_ref()? {
        fs::value::ValueType::IntegerValue(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn time(t: Option<&firestore::gcloud_sdk::prost_types::Timestamp>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))).unwrap_or_default()
}

/// A field path in a query: segments that are not plain identifiers are quoted.
fn field_path(path: &str) -> String {
    path.split('.')
        .map(|seg| {
            let plain = seg.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if plain { seg.to_owned() } else { format!("`{seg}`") }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn field_ref(path: &str) -> Option<fs::structured_query::FieldReference> {
    Some(fs::structured_query::FieldReference { field_path: field_path(path) })
}

fn field_filter(
    path: &str,
    op: fs::structured_query::field_filter::Operator,
    value: fs::Value,
) -> fs::structured_query::Filter {
    use fs::structured_query::{FieldFilter, Filter, filter::FilterType};
    Filter {
        filter_type: Some(FilterType::FieldFilter(FieldFilter {
            field: field_ref(path),
            op: op as i32,
            value: Some(value),
        })),
    }
}

fn order(path: &str, direction: Order) -> fs::structured_query::Order {
    let direction = match direction {
        Order::Ascending => fs::structured_query::Direction::Ascending,
        Order::Descending => fs::structured_query::Direction::Descending,
    };
    fs::structured_query::Order { field: field_ref(path), direction: direction as i32 }
}

/// Our query as a Firestore structured query on the `data` map.
fn structured_query(scope: &Scope, query: &Query) -> Result<fs::StructuredQuery, StoreError> {
    use fs::structured_query::{
        CompositeFilter, Filter, UnaryFilter, composite_filter, field_filter::Operator, filter::FilterType,
        unary_filter,
    };
    let mut filters = Vec::new();
    if let Scope::Owner(owner) = scope {
        filters.push(field_filter("owner", Operator::Equal, string(owner.as_str())));
    }
    for (field, value) in &query.filters {
        let path = format!("data.{field}");
        filters.push(if value.is_null() {
            Filter {
                filter_type: Some(FilterType::UnaryFilter(UnaryFilter {
                    op: unary_filter::Operator::IsNull as i32,
                    operand_type: Some(unary_filter::OperandType::Field(field_ref(&path).unwrap_or_default())),
                })),
            }
        } else {
            field_filter(&path, Operator::Equal, value::encode(value)?)
        });
    }
    let filter = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter {
            filter_type: Some(FilterType::CompositeFilter(CompositeFilter {
                op: composite_filter::Operator::And as i32,
                filters,
            })),
        }),
    };
    let mut order_by = Vec::new();
    if let Some((field, direction)) = &query.order_by {
        order_by.push(order(&format!("data.{field}"), *direction));
        order_by.push(order("__name__", *direction));
    }
    Ok(fs::StructuredQuery {
        from: vec![fs::structured_query::CollectionSelector {
            collection_id: query.collection.clone(),
            all_descendants: false,
        }],
        r#where: filter,
        order_by,
        limit: query.limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)),
        ..Default::default()
    })
}

#[async_trait]
impl Store for FirestoreStore {
    async fn get(&self, scope: &Scope, key: &DocKey) -> Result<Option<Document>, StoreError> {
        let name = self.doc_name(key);
        let found = self.batch_get(vec![name.clone()], None).await?;
        let Some(doc) = found.get(&name) else { return Ok(None) };
        let doc = self.to_document(key.clone(), doc).await?;
        Ok(scope.allows(&doc.owner).then_some(doc))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Committed, StoreError> {
        if writes.is_empty() {
            return Ok(Committed { results: Vec::new() });
        }
        if let Some(chunks) = split_long_append(&writes) {
            return self.commit_chunks(chunks).await;
        }
        self.commit_once(&writes).await
    }

    async fn query(&self, scope: &Scope, query: &Query) -> Result<Vec<Document>, StoreError> {
        query.validate()?;
        let structured = structured_query(scope, query)?;
        let docs = self.run_query(self.inner.root.clone(), structured).await?;
        let mut out = Vec::with_capacity(docs.len());
        for doc in &docs {
            let id = doc.name.rsplit('/').next().unwrap_or_default();
            let key = DocKey::new(&query.collection, id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(self.to_document(key, doc).await?);
        }
        Ok(out)
    }

    async fn events_after(
        &self,
        scope: &Scope,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let docs = self.run_query(self.events_parent(session), Self::events_query(after, Some(limit))).await?;
        let mut out = Vec::with_capacity(docs.len());
        for doc in &docs {
            let event = self.to_event(session, doc).await?;
            // Every event of a session has the session's owner, so this keeps all or none.
            if scope.allows(&event.owner) {
                out.push(event);
            }
        }
        Ok(out)
    }

    fn watch(&self, scope: Scope, session: SessionId, after: u64) -> EventStream {
        watch::watch(self.clone(), scope, session, after)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.batch_get(vec![format!("{}/{HEADS}/_ping", self.inner.root)], None).await.map(drop)
    }

    /// A session's event count is its head's `last_seq` (numbers have no gaps), so this reads
    /// one document per session instead of counting events.
    async fn event_counts(&self, scope: &Scope) -> Result<BTreeMap<UserId, u64>, StoreError> {
        let mut query = fs::StructuredQuery {
            from: vec![fs::structured_query::CollectionSelector {
                collection_id: HEADS.into(),
                all_descendants: false,
            }],
            ..Default::default()
        };
        if let Scope::Owner(owner) = scope {
            query.r#where = Some(field_filter(
                "owner",
                fs::structured_query::field_filter::Operator::Equal,
                string(owner.as_str()),
            ));
        }
        let mut counts = BTreeMap::new();
        for head in self.run_query(self.inner.root.clone(), query).await? {
            let Some(owner) = field_str(&head.fields, "owner").and_then(|o| UserId::parse(o).ok()) else { continue };
            *counts.entry(owner).or_insert(0) += field_int(&head.fields, "last_seq").unwrap_or(0);
        }
        Ok(counts)
    }
}
