//! The Store contract: one set of checks, run against the embedded adapter (SQLite) and the
//! Firestore adapter (on the emulator), so the two cannot drift apart.

use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ports::store::{
    DocKey, NewEvent, Order, Query, Scope, SessionEventKind, Store, StoreError, StoreExt, Write, WriteResult,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// An adapter under test, with whatever must live as long as it (a temp dir, an emulator).
struct Opened {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn local() -> Opened {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = devgem_infra::local::LocalStore::open(
        &dir.path().join("store.db"),
        Arc::new(devgem_common::clock::SystemClock),
    )
    .expect("open store");
    Opened { store: Arc::new(store), _keep: Box::new(dir) }
}

async fn firestore() -> Opened {
    use devgem_infra::gcp::{GcpConfig, emulators::firestore::FirestoreEmulator, firestore::FirestoreStore};
    let emulator = FirestoreEmulator::start().await.expect("the Firestore emulator starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = Arc::new(devgem_infra::local::LocalBlobs::open(&dir.path().join("blobs")).expect("blobs"));
    let config = GcpConfig {
        project: "devgem-test".into(),
        firestore_database: "(default)".into(),
        firestore_emulator: Some(emulator.host.clone()),
        ..GcpConfig::default()
    };
    let store = FirestoreStore::connect(&config, blobs).await.expect("connect to the emulator");
    Opened { store: Arc::new(store), _keep: Box::new((emulator, dir)) }
}

fn key(collection: &str, id: &str) -> DocKey {
    DocKey::new(collection, id).expect("valid key")
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid user")
}

fn session(id: &str) -> SessionId {
    SessionId::parse(id).expect("valid session")
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        kind: SessionEventKind::Message,
        correlation_id: CorrelationId::parse("corr-1").expect("id"),
        data: json!({"n": n}),
    }
}

fn append(session_id: &SessionId, owner: &str, events: Vec<NewEvent>) -> Write {
    Write::Append { session: session_id.clone(), owner: user(owner), events }
}

async fn create_update_set_delete_follow_versions(store: &dyn Store) {
    let k = key("deployments", "d1");
    assert_eq!(store.create(k.clone(), user("alice"), &json!({"state": "requested"})).await, Ok(1));
    let err = store.create(k.clone(), user("alice"), &json!({})).await.expect_err("exists");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.update(k.clone(), 1, &json!({"state": "analyzing"})).await, Ok(2));
    let stale = store.update(k.clone(), 1, &json!({"state": "lost"})).await.expect_err("stale version");
    assert!(stale.to_string().contains("expected version 1, found 2"), "{stale}");
    let doc = store.get(&Scope::All, &k).await.expect("get").expect("exists");
    assert_eq!((doc.version, doc.data["state"].as_str()), (2, Some("analyzing")));
    assert_eq!(doc.owner, user("alice"), "an update keeps the owner");
    assert!(doc.updated_at >= doc.created_at);

    let missing = store.update(key("deployments", "nope"), 1, &json!({})).await.expect_err("missing");
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    let c = store
        .commit(vec![Write::Set { key: k.clone(), owner: user("alice"), data: json!({"x": 1}) }])
        .await
        .expect("set");
    assert_eq!(c.version(0), Some(3));
    let fresh = store
        .commit(vec![Write::Set { key: key("deployments", "d2"), owner: user("bob"), data: json!({}) }])
        .await
        .expect("set a new document");
    assert_eq!(fresh.version(0), Some(1));
    let bad_delete = store.commit(vec![Write::Delete { key: k.clone(), expected_version: Some(2) }]).await;
    assert!(bad_delete.expect_err("stale delete").is_conflict());
    let deleted =
        store.commit(vec![Write::Delete { key: k.clone(), expected_version: Some(3) }]).await.expect("delete");
    assert_eq!(deleted.results, vec![WriteResult::Deleted { existed: true }]);
    assert!(store.get(&Scope::All, &k).await.expect("get").is_none());
    let again = store.commit(vec![Write::Delete { key: k.clone(), expected_version: None }]).await.expect("delete");
    assert_eq!(again.results, vec![WriteResult::Deleted { existed: false }]);
}

async fn a_failed_precondition_rolls_back_the_whole_transaction(store: &dyn Store) {
    store.create(key("services", "s"), user("alice"), &json!({"v": 1})).await.expect("create");
    let s1 = session("s1");
    let result = store
        .commit(vec![
            Write::Create { key: key("deployments", "new"), owner: user("alice"), data: json!({}) },
            append(&s1, "alice", vec![event(1)]),
            Write::Update { key: key("services", "s"), expected_version: 7, data: json!({"v": 2}) },
        ])
        .await;
    let err = result.expect_err("stale update fails the transaction");
    assert!(matches!(&err, StoreError::Conflict { key, .. } if key == "services/s"), "{err}");
    assert!(store.get(&Scope::All, &key("deployments", "new")).await.expect("get").is_none(), "create rolled back");
    assert!(store.events_after(&Scope::All, &s1, 0, 10).await.expect("events").is_empty(), "append rolled back");

    // All of a transaction applies together.
    let done = store
        .commit(vec![
            Write::Create { key: key("deployments", "new"), owner: user("alice"), data: json!({"a": 1}) },
            append(&s1, "alice", vec![event(1), event(2)]),
            Write::Update { key: key("services", "s"), expected_version: 1, data: json!({"v": 2}) },
        ])
        .await
        .expect("commit");
    assert_eq!(
        done.results,
        vec![
            WriteResult::Written { version: 1 },
            WriteResult::Appended { first_seq: 1, last_seq: 2 },
            WriteResult::Written { version: 2 }
        ]
    );
}

async fn concurrent_writers_lose_no_update(store: Arc<dyn Store>) {
    let k = key("counters", "c");
    store.create(k.clone(), user("alice"), &json!({"n": 0})).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, k) = (Arc::clone(&store), k.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
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
    assert_eq!(doc.data["n"], json!(200), "every increment is kept");
    assert_eq!(doc.version, 201);
}

async fn concurrent_appends_leave_no_gap(store: Arc<dyn Store>) {
    let s1 = session("s1");
    let mut tasks = Vec::new();
    for writer in 0..8u64 {
        let (store, s1) = (Arc::clone(&store), s1.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..20u64 {
                // Several events per transaction, of varying size.
                let events = (0..=(round % 3)).map(|i| event(writer * 1000 + round * 10 + i)).collect();
                store.commit(vec![append(&s1, "alice", events)]).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender");
    }
    let events = store.events_after(&Scope::All, &s1, 0, 10_000).await.expect("events");
    let expected: u64 = 8 * (0..20u64).map(|r| r % 3 + 1).sum::<u64>();
    assert_eq!(events.len() as u64, expected);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>(), "1..=n without gaps or repeats");
    let payloads: HashSet<String> = events.iter().map(|e| e.data.to_string()).collect();
    assert_eq!(payloads.len() as u64, expected, "no event lost or duplicated");
}

async fn watch_streams_existing_then_new_events_in_order_and_resumes(store: Arc<dyn Store>) {
    let s1 = session("s1");
    let other = session("s2");
    for n in 1..=3 {
        store.commit(vec![append(&s1, "alice", vec![event(n)])]).await.expect("append");
    }
    // Resume after seq 1: the watcher gets 2, 3, then whatever comes next.
    let mut watch = store.watch(Scope::Owner(user("alice")), s1.clone(), 1);
    let writer = Arc::clone(&store);
    let (s, o) = (s1.clone(), other.clone());
    let appender = tokio::spawn(async move {
        for n in 4..=40 {
            writer.commit(vec![append(&o, "alice", vec![event(n)])]).await.expect("other");
            writer.commit(vec![append(&s, "alice", vec![event(n), event(n)])]).await.expect("append");
        }
    });
    let total = 3 + 37 * 2;
    let mut seqs = Vec::new();
    while seqs.len() < 40 {
        let next = tokio::time::timeout(Duration::from_secs(20), watch.next()).await.expect("no stall");
        let ev = next.expect("stream open").expect("event");
        assert_eq!(ev.session_id, s1, "only this session's events");
        seqs.push(ev.seq);
    }
    // A reader that goes away and comes back with its last seq gets the rest, once.
    drop(watch);
    let last = *seqs.last().expect("some");
    let mut resumed = store.watch(Scope::Owner(user("alice")), s1.clone(), last);
    while seqs.len() < total as usize - 1 {
        let next = tokio::time::timeout(Duration::from_secs(20), resumed.next()).await.expect("no stall");
        seqs.push(next.expect("stream open").expect("event").seq);
    }
    appender.await.expect("appender");
    assert_eq!(seqs, (2..=total).collect::<Vec<u64>>());

    // Another owner's watch sees nothing of this session.
    let mut foreign = store.watch(Scope::Owner(user("mallory")), s1.clone(), 0);
    let none = tokio::time::timeout(Duration::from_millis(300), foreign.next()).await;
    assert!(none.is_err(), "no events cross owners");
}

async fn scope_hides_other_owners_documents(store: &dyn Store) {
    store.create(key("deployments", "a1"), user("alice"), &json!({"n": 1})).await.expect("create");
    store.create(key("deployments", "b1"), user("bob"), &json!({"n": 2})).await.expect("create");
    let alice = Scope::Owner(user("alice"));
    assert!(store.get(&alice, &key("deployments", "a1")).await.expect("get").is_some());
    assert!(store.get(&alice, &key("deployments", "b1")).await.expect("get").is_none(), "bob's is invisible");
    let listed = store.query(&alice, &Query::collection("deployments")).await.expect("query");
    assert_eq!(listed.iter().map(|d| d.key.id()).collect::<Vec<_>>(), ["a1"]);
    assert_eq!(store.query(&Scope::All, &Query::collection("deployments")).await.expect("query").len(), 2);
    assert!(store.events_after(&alice, &session("nobody"), 0, 10).await.expect("events").is_empty());
}

async fn queries_filter_order_and_limit(store: &dyn Store) {
    for (id, state, n, live) in
        [("d1", "live", 3, true), ("d2", "failed", 1, false), ("d3", "live", 2, true), ("d4", "live", 5, true)]
    {
        let data = json!({"state": state, "n": n, "live": live, "source": {"kind": "git"}});
        store.create(key("deployments", id), user("alice"), &data).await.expect("create");
    }
    let q = Query::collection("deployments").filter("state", "live").order_by("n", Order::Descending).limit(2);
    let ids: Vec<String> =
        store.query(&Scope::All, &q).await.expect("query").iter().map(|d| d.key.id().to_owned()).collect();
    assert_eq!(ids, ["d4", "d1"]);
    let ascending = Query::collection("deployments").order_by("n", Order::Ascending);
    let ids: Vec<String> =
        store.query(&Scope::All, &ascending).await.expect("query").iter().map(|d| d.key.id().to_owned()).collect();
    assert_eq!(ids, ["d2", "d3", "d1", "d4"]);
    let by_bool = Query::collection("deployments").filter("live", false);
    assert_eq!(store.query(&Scope::All, &by_bool).await.expect("query").len(), 1);
    let nested = Query::collection("deployments").filter("source.kind", "git").filter("n", 2);
    assert_eq!(store.query(&Scope::All, &nested).await.expect("query")[0].key.id(), "d3");
    let injection = Query::collection("deployments").filter("state') OR 1=1 --", "x");
    assert!(matches!(store.query(&Scope::All, &injection).await, Err(StoreError::Invalid(_))));
}

async fn a_session_belongs_to_the_writer_of_its_first_event(store: &dyn Store) {
    let s1 = session("s1");
    store.commit(vec![append(&s1, "alice", vec![event(1)])]).await.expect("the first writer starts the session");
    let refused = store.commit(vec![append(&s1, "bob", vec![event(2)])]).await.expect_err("not bob's session");
    assert!(matches!(refused, StoreError::Forbidden(_)), "{refused:?}");
    store.commit(vec![append(&s1, "alice", vec![event(2)])]).await.expect("alice goes on");
    let all = store.events_after(&Scope::All, &s1, 0, 10).await.expect("events");
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2], "bob's refused append left no gap");
    assert!(all.iter().all(|e| e.owner == user("alice") && e.correlation_id.as_str() == "corr-1"));
}

async fn event_counts_are_per_owner_within_the_scope(store: &dyn Store) {
    // 1,203 events in one append: more than one Firestore commit can hold (500 writes).
    let big =
        store.commit(vec![append(&session("alice-1"), "alice", (0..1203).map(event).collect())]).await.expect("append");
    assert_eq!(big.results, vec![WriteResult::Appended { first_seq: 1, last_seq: 1203 }]);
    store.commit(vec![append(&session("alice-2"), "alice", (0..2).map(event).collect())]).await.expect("append");
    store.commit(vec![append(&session("bob-1"), "bob", (0..3).map(event).collect())]).await.expect("append");
    let events = store.events_after(&Scope::All, &session("alice-1"), 1000, 1000).await.expect("events");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1001..=1203).collect::<Vec<_>>());
    let expected_all = BTreeMap::from([(user("alice"), 1205), (user("bob"), 3)]);
    assert_eq!(store.event_counts(&Scope::All).await.expect("counts"), expected_all);
    let expected_bob = BTreeMap::from([(user("bob"), 3)]);
    assert_eq!(store.event_counts(&Scope::Owner(user("bob"))).await.expect("counts"), expected_bob);
    assert!(store.event_counts(&Scope::Owner(user("carol"))).await.expect("counts").is_empty());
}

async fn any_json_and_large_data_round_trip(store: &dyn Store) {
    let shapes = json!({
        "pairs": [["a", 1], ["b", [2, [3]]]],
        "[]": "not an array",
        "nested": {"{}": {"deep": null}},
        // Within 2^53: the emulator holds integers as JavaScript numbers (Firestore keeps all of i64).
        "numbers": [-9_007_199_254_740_991i64, -1, 0, 1.5, 9_007_199_254_740_991i64],
        "text": "ünïcødé \u{1F680} \"quoted\" \n",
    });
    store.create(key("shapes", "s"), user("alice"), &shapes).await.expect("create");
    let doc = store.get(&Scope::All, &key("shapes", "s")).await.expect("get").expect("exists");
    assert_eq!(doc.data, shapes);

    // Over Firestore's 1 MiB document limit: still stored, read back whole, and still found
    // by a query on its small fields.
    let large = json!({"state": "live", "log": "x".repeat(1_500_000), "lines": vec!["y".repeat(100); 5_000]});
    store.create(key("deployments", "big"), user("alice"), &large).await.expect("create a large document");
    let doc = store.get(&Scope::All, &key("deployments", "big")).await.expect("get").expect("exists");
    assert_eq!(doc.data, large);
    let found = store.query(&Scope::All, &Query::collection("deployments").filter("state", "live")).await.expect("q");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].data, large);
    let smaller = json!({"state": "failed", "log": "short"});
    store.update(key("deployments", "big"), 1, &smaller).await.expect("update");
    assert_eq!(store.get(&Scope::All, &key("deployments", "big")).await.expect("get").expect("exists").data, smaller);

    let s1 = session("big");
    let big_event = NewEvent { data: json!({"lines": "z".repeat(1_200_000)}), ..event(1) };
    store.commit(vec![append(&s1, "alice", vec![event(1), big_event.clone()])]).await.expect("append");
    let events = store.events_after(&Scope::All, &s1, 0, 10).await.expect("events");
    assert_eq!(events[1].data, big_event.data);
}

macro_rules! contract {
    ($adapter:ident) => {
        mod $adapter {

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn create_update_set_delete_follow_versions() {
                let opened = super::$adapter().await;
                super::create_update_set_delete_follow_versions(&*opened.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failed_precondition_rolls_back_the_whole_transaction() {
                let opened = super::$adapter().await;
                super::a_failed_precondition_rolls_back_the_whole_transaction(&*opened.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_writers_lose_no_update() {
                let opened = super::$adapter().await;
                super::concurrent_writers_lose_no_update(opened.store.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_appends_leave_no_gap() {
                let opened = super::$adapter().await;
                super::concurrent_appends_leave_no_gap(opened.store.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_streams_existing_then_new_events_in_order_and_resumes() {
                let opened = super::$adapter().await;
                super::watch_streams_existing_then_new_events_in_order_and_resumes(opened.store.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn scope_hides_other_owners_documents() {
                let opened = super::$adapter().await;
                super::scope_hides_other_owners_documents(&*opened.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn queries_filter_order_and_limit() {
                let opened = super::$adapter().await;
                super::queries_filter_order_and_limit(&*opened.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_session_belongs_to_the_writer_of_its_first_event() {
                let opened = super::$adapter().await;
                super::a_session_belongs_to_the_writer_of_its_first_event(&*opened.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn event_counts_are_per_owner_within_the_scope() {
                let opened = super::$adapter().await;
                super::event_counts_are_per_owner_within_the_scope(&*opened.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn any_json_and_large_data_round_trip() {
                let opened = super::$adapter().await;
                super::any_json_and_large_data_round_trip(&*opened.store).await;
            }
        }
    };
}

contract!(local);
contract!(firestore);
