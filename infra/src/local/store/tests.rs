//! What only the embedded store does: durability across a reopen, its wake-ups and the trait's
//! default counting. The behaviour every Store shares is in `infra/tests/contract_store.rs`.

use super::*;
use devgem_common::clock::SystemClock;
use devgem_common::ports::store::{NewEvent, StoreExt};
use futures_util::StreamExt;
use serde_json::json;

fn open(dir: &Path) -> LocalStore {
    LocalStore::open(&dir.join("store.db"), Arc::new(SystemClock)).expect("open store")
}

fn key(collection: &str, id: &str) -> DocKey {
    DocKey::new(collection, id).expect("valid key")
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid user")
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        kind: SessionEventKind::Message,
        correlation_id: CorrelationId::parse("corr-1").expect("id"),
        data: json!({"n": n}),
    }
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = SessionId::parse("s1").expect("id");
    {
        let store = open(dir.path());
        store.create(key("users", "alice"), user("alice"), &json!({"name": "Alice"})).await.expect("create");
        store.update(key("users", "alice"), 1, &json!({"name": "Alice A."})).await.expect("update");
        store
            .commit(vec![Write::Append {
                session: session.clone(),
                owner: user("alice"),
                events: vec![event(1), event(2)],
            }])
            .await
            .expect("append");
        // Dropped without any shutdown call.
    }
    let store = open(dir.path());
    let doc = store.get(&Scope::All, &key("users", "alice")).await.expect("get").expect("kept");
    assert_eq!((doc.version, doc.data["name"].as_str()), (2, Some("Alice A.")));
    let c = store
        .commit(vec![Write::Append { session: session.clone(), owner: user("alice"), events: vec![event(3)] }])
        .await
        .expect("append");
    assert_eq!(c.results, vec![WriteResult::Appended { first_seq: 3, last_seq: 3 }], "numbering continues");
}

#[test]
fn keys_and_empty_appends_are_validated() {
    assert!(DocKey::new("Users", "x").is_err());
    assert!(DocKey::new("users", "a/b").is_err());
    assert!(DocKey::new("users", "").is_err());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let err = store
            .commit(vec![Write::Append {
                session: SessionId::parse("s").expect("id"),
                owner: user("a"),
                events: vec![],
            }])
            .await
            .expect_err("empty append");
        assert!(matches!(err, StoreError::Invalid(_)));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_caller_went_away_still_wakes_watchers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let session = SessionId::parse("s1").expect("id");
    let mut watch = store.watch(Scope::All, session.clone(), 0);
    let waiting = tokio::spawn(async move { watch.next().await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // The caller gives up at once (a deadline, a disconnected client); the write goes on.
    let append = store.commit(vec![Write::Append { session, owner: user("alice"), events: vec![event(1)] }]);
    let _ = tokio::time::timeout(std::time::Duration::ZERO, append).await;
    let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
    let event = woken.expect("the watcher was woken").expect("task").expect("stream open").expect("event");
    assert_eq!(event.seq, 1);
}

/// The trait's default `event_counts`, on the same data: it pages through the sessions it finds.
#[derive(Debug)]
struct DefaultCounts(LocalStore);

#[async_trait]
impl Store for DefaultCounts {
    async fn get(&self, scope: &Scope, key: &DocKey) -> Result<Option<Document>, StoreError> {
        self.0.get(scope, key).await
    }
    async fn commit(&self, writes: Vec<Write>) -> Result<Committed, StoreError> {
        self.0.commit(writes).await
    }
    async fn query(&self, scope: &Scope, query: &Query) -> Result<Vec<Document>, StoreError> {
        self.0.query(scope, query).await
    }
    async fn events_after(
        &self,
        scope: &Scope,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        self.0.events_after(scope, session, after, limit).await
    }
    fn watch(&self, scope: Scope, session: SessionId, after: u64) -> EventStream {
        self.0.watch(scope, session, after)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}

#[tokio::test]
async fn event_counts_are_per_owner_within_the_scope_and_match_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let append = |session: &str, owner: &str, n: u64| Write::Append {
        session: SessionId::parse(session).expect("id"),
        owner: user(owner),
        events: (0..n).map(event).collect(),
    };
    // 1,203 events in alice's deployment session: more than one page of the default.
    store
        .commit(vec![append("alice-1", "alice", 1203), append("alice-2", "alice", 2), append("bob-1", "bob", 3)])
        .await
        .expect("append");
    // The default finds sessions through their documents and the deployments'.
    store.create(key("sessions", "alice-2"), user("alice"), &json!({})).await.expect("session doc");
    store.create(key("sessions", "bob-1"), user("bob"), &json!({})).await.expect("session doc");
    store.create(key("deployments", "d1"), user("alice"), &json!({"session_id": "alice-1"})).await.expect("doc");
    let expected_all = std::collections::BTreeMap::from([(user("alice"), 1205), (user("bob"), 3)]);
    let expected_bob = std::collections::BTreeMap::from([(user("bob"), 3)]);
    assert_eq!(store.event_counts(&Scope::All).await.expect("counts"), expected_all);
    assert_eq!(store.event_counts(&Scope::Owner(user("bob"))).await.expect("counts"), expected_bob);
    assert!(store.event_counts(&Scope::Owner(user("carol"))).await.expect("counts").is_empty());
    let default = DefaultCounts(store.clone());
    assert_eq!(default.event_counts(&Scope::All).await.expect("counts"), expected_all);
    assert_eq!(default.event_counts(&Scope::Owner(user("bob"))).await.expect("counts"), expected_bob);
}
