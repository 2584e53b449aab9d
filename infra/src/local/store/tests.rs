use super::*;
use devgem_common::clock::SystemClock;
use devgem_common::ports::store::{NewEvent, StoreExt};
use futures_util::StreamExt;
use serde_json::json;
use std::collections::HashSet;

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
async fn create_update_set_delete_follow_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let k = key("deployments", "d1");
    assert_eq!(store.create(k.clone(), user("alice"), &json!({"state": "requested"})).await, Ok(1));
    let err = store.create(k.clone(), user("alice"), &json!({})).await.expect_err("exists");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.update(k.clone(), 1, &json!({"state": "analyzing"})).await, Ok(2));
    let stale = store.update(k.clone(), 1, &json!({"state": "lost"})).await.expect_err("stale version");
    assert!(stale.to_string().contains("expected version 1, found 2"), "{stale}");
    let doc = store.get(&Scope::All, &k).await.expect("get").expect("exists");
    assert_eq!((doc.version, doc.data["state"].as_str()), (2, Some("analyzing")));
    assert!(doc.updated_at >= doc.created_at);

    let missing = store.update(key("deployments", "nope"), 1, &json!({})).await.expect_err("missing");
    assert!(missing.to_string().contains("does not exist"));

    let c = store
        .commit(vec![Write::Set { key: k.clone(), owner: user("alice"), data: json!({"x": 1}) }])
        .await
        .expect("set");
    assert_eq!(c.version(0), Some(3));
    let bad_delete = store.commit(vec![Write::Delete { key: k.clone(), expected_version: Some(2) }]).await;
    assert!(bad_delete.expect_err("stale delete").is_conflict());
    let deleted =
        store.commit(vec![Write::Delete { key: k.clone(), expected_version: Some(3) }]).await.expect("delete");
    assert_eq!(deleted.results, vec![WriteResult::Deleted { existed: true }]);
    assert!(store.get(&Scope::All, &k).await.expect("get").is_none());
}

#[tokio::test]
async fn a_failed_precondition_rolls_back_the_whole_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create(key("services", "s"), user("alice"), &json!({"v": 1})).await.expect("create");
    let session = SessionId::parse("s1").expect("id");
    let result = store
        .commit(vec![
            Write::Create { key: key("deployments", "new"), owner: user("alice"), data: json!({}) },
            Write::Append { session: session.clone(), owner: user("alice"), events: vec![event(1)] },
            Write::Update { key: key("services", "s"), expected_version: 7, data: json!({"v": 2}) },
        ])
        .await;
    let err = result.expect_err("stale update fails the transaction");
    assert!(matches!(&err, StoreError::Conflict { key, .. } if key == "services/s"), "{err}");
    assert!(store.get(&Scope::All, &key("deployments", "new")).await.expect("get").is_none(), "create rolled back");
    assert!(store.events_after(&Scope::All, &session, 0, 10).await.expect("events").is_empty(), "append rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_writers_lose_no_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    let k = key("counters", "c");
    store.create(k.clone(), user("alice"), &json!({"n": 0})).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, k) = (Arc::clone(&store), k.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                store
                    .modify::<Value, _>(&k, 1000, |v| {
                        v["n"] = json!(v["n"].as_u64().unwrap_or(0) + 1);
                        Ok(())
                    })
                    .await
                    .expect("modify eventually succeeds");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let doc = store.get(&Scope::All, &k).await.expect("get").expect("exists");
    assert_eq!(doc.data["n"], json!(320), "every increment is kept");
    assert_eq!(doc.version, 321);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_leave_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    let session = SessionId::parse("s1").expect("id");
    let mut tasks = Vec::new();
    for writer in 0..8u64 {
        let (store, session) = (Arc::clone(&store), session.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..25u64 {
                // Several events per transaction, of varying size.
                let events = (0..=(round % 3)).map(|i| event(writer * 1000 + round * 10 + i)).collect();
                store
                    .commit(vec![Write::Append { session: session.clone(), owner: user("alice"), events }])
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender");
    }
    let events = store.events_after(&Scope::All, &session, 0, 10_000).await.expect("events");
    let expected: u64 = 8 * (0..25u64).map(|r| r % 3 + 1).sum::<u64>();
    assert_eq!(events.len() as u64, expected);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>(), "1..=n without gaps or repeats");
    let payloads: HashSet<String> = events.iter().map(|e| e.data.to_string()).collect();
    assert_eq!(payloads.len() as u64, expected, "no event lost or duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_existing_then_new_events_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let session = SessionId::parse("s1").expect("id");
    let other = SessionId::parse("s2").expect("id");
    for n in 1..=3 {
        store
            .commit(vec![Write::Append { session: session.clone(), owner: user("alice"), events: vec![event(n)] }])
            .await
            .expect("append");
    }
    // Resume after seq 1: the watcher gets 2, 3, then whatever comes next.
    let mut watch = store.watch(Scope::Owner(user("alice")), session.clone(), 1);
    let writer = store.clone();
    let (s, o) = (session.clone(), other.clone());
    let appender = tokio::spawn(async move {
        for n in 4..=60 {
            writer
                .commit(vec![Write::Append { session: o.clone(), owner: user("alice"), events: vec![event(n)] }])
                .await
                .expect("other");
            writer
                .commit(vec![Write::Append {
                    session: s.clone(),
                    owner: user("alice"),
                    events: vec![event(n), event(n)],
                }])
                .await
                .expect("append");
        }
    });
    let mut seqs = Vec::new();
    while seqs.len() < 2 + 57 * 2 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next()).await.expect("no stall");
        let ev = next.expect("stream open").expect("event");
        assert_eq!(ev.session_id, session, "only this session's events");
        seqs.push(ev.seq);
    }
    appender.await.expect("appender");
    assert_eq!(seqs, (2..=(3 + 57 * 2)).collect::<Vec<u64>>());

    // Another owner's watch sees nothing of this session.
    let mut foreign = store.watch(Scope::Owner(user("mallory")), session.clone(), 0);
    let none = tokio::time::timeout(std::time::Duration::from_millis(200), foreign.next()).await;
    assert!(none.is_err(), "no events cross owners");
}

#[tokio::test]
async fn scope_hides_other_owners_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create(key("deployments", "a1"), user("alice"), &json!({"n": 1})).await.expect("create");
    store.create(key("deployments", "b1"), user("bob"), &json!({"n": 2})).await.expect("create");
    let alice = Scope::Owner(user("alice"));
    assert!(store.get(&alice, &key("deployments", "a1")).await.expect("get").is_some());
    assert!(store.get(&alice, &key("deployments", "b1")).await.expect("get").is_none(), "bob's document is invisible");
    let listed = store.query(&alice, &Query::collection("deployments")).await.expect("query");
    assert_eq!(listed.iter().map(|d| d.key.id()).collect::<Vec<_>>(), ["a1"]);
    assert_eq!(store.query(&Scope::All, &Query::collection("deployments")).await.expect("query").len(), 2);
}

#[tokio::test]
async fn queries_filter_order_and_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    for (id, state, n, live) in
        [("d1", "live", 3, true), ("d2", "failed", 1, false), ("d3", "live", 2, true), ("d4", "live", 5, true)]
    {
        store
            .create(
                key("deployments", id),
                user("alice"),
                &json!({"state": state, "n": n, "live": live, "source": {"kind": "git"}}),
            )
            .await
            .expect("create");
    }
    let q = Query::collection("deployments").filter("state", "live").order_by("n", Order::Descending).limit(2);
    let ids: Vec<String> =
        store.query(&Scope::All, &q).await.expect("query").iter().map(|d| d.key.id().to_owned()).collect();
    assert_eq!(ids, ["d4", "d1"]);
    let by_bool = Query::collection("deployments").filter("live", false);
    assert_eq!(store.query(&Scope::All, &by_bool).await.expect("query").len(), 1);
    let nested = Query::collection("deployments").filter("source.kind", "git").filter("n", 2);
    assert_eq!(store.query(&Scope::All, &nested).await.expect("query")[0].key.id(), "d3");
    let injection = Query::collection("deployments").filter("state') OR 1=1 --", "x");
    assert!(matches!(store.query(&Scope::All, &injection).await, Err(StoreError::Invalid(_))));
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

#[tokio::test]
async fn a_session_belongs_to_the_writer_of_its_first_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let session = SessionId::parse("s1").expect("id");
    let append =
        |owner: &str, n: u64| Write::Append { session: session.clone(), owner: user(owner), events: vec![event(n)] };
    store.commit(vec![append("alice", 1)]).await.expect("the first writer starts the session");
    let refused = store.commit(vec![append("bob", 2)]).await.expect_err("bob may not write in alice's session");
    assert!(matches!(refused, StoreError::Forbidden(_)), "{refused:?}");
    store.commit(vec![append("alice", 2)]).await.expect("alice goes on");
    let all = store.events_after(&Scope::All, &session, 0, 10).await.expect("events");
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2], "bob's refused append left no gap");
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
