//! Store adapters side by side: per-operation latency of the embedded store (SQLite) and the
//! Firestore adapter on the emulator, measured in the same run (docs/PERF.md).
//!
//! ```text
//! cargo bench -p devgem-infra --bench store          # N = 300 operations of each kind
//! cargo bench -p devgem-infra --bench store -- 1000  # N = 1000
//! ```
//!
//! Operations, each awaited before the next (one caller, so this is latency, not throughput):
//! `get` of a 2 KiB document, `update` of it at its version (a transaction: read, check, write),
//! `append` of one event to a session, `query` of 20 documents by an equality filter, and
//! `events_after` reading 100 events. The emulator is a Node.js process on loopback: its numbers
//! are the adapter's own cost plus a local gRPC round trip, not Firestore's.

use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ports::store::{DocKey, NewEvent, Query, Scope, SessionEventKind, Store, StoreExt, Write};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::percentiles;

async fn measure<F, Fut>(n: usize, mut op: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..n / 10 {
        op(i).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        op(n + i).await;
        samples.push(start.elapsed());
    }
    let p = percentiles(samples);
    (p.p50, p.p99)
}

async fn bench(name: &str, store: Arc<dyn Store>, n: usize) -> Vec<(String, String, Duration, Duration)> {
    let owner = UserId::parse("bench").expect("user");
    let filler = "x".repeat(2048);
    let doc = DocKey::new("deployments", "bench-doc").expect("key");
    store.create(doc.clone(), owner.clone(), &json!({"state": "live", "filler": filler})).await.expect("create");
    for i in 0..20 {
        let key = DocKey::new("deployments", format!("q-{i}")).expect("key");
        store.create(key, owner.clone(), &json!({"state": "queued", "n": i})).await.expect("create");
    }
    let session = SessionId::parse("bench-session").expect("session");
    let event = |n: usize| NewEvent {
        kind: SessionEventKind::BuildLog,
        correlation_id: CorrelationId::parse("bench").expect("id"),
        data: json!({"lines": [format!("line {n}")]}),
    };
    let mut rows = Vec::new();
    let mut row = |op: &str, (p50, p99): (Duration, Duration)| rows.push((name.to_owned(), op.to_owned(), p50, p99));

    row(
        "get",
        measure(n, |_| {
            let (store, doc) = (store.clone(), doc.clone());
            async move {
                store.get(&Scope::All, &doc).await.expect("get").expect("exists");
            }
        })
        .await,
    );
    let version = std::sync::atomic::AtomicU64::new(1);
    row(
        "update",
        measure(n, |i| {
            let (store, doc, filler) = (store.clone(), doc.clone(), filler.clone());
            let expected = version.load(std::sync::atomic::Ordering::SeqCst);
            let version = &version;
            async move {
                let v = store.update(doc, expected, &json!({"state": "live", "n": i, "filler": filler})).await;
                version.store(v.expect("update"), std::sync::atomic::Ordering::SeqCst);
            }
        })
        .await,
    );
    row(
        "append 1 event",
        measure(n, |i| {
            let (store, session, owner) = (store.clone(), session.clone(), owner.clone());
            let events = vec![event(i)];
            async move {
                store.commit(vec![Write::Append { session, owner, events }]).await.expect("append");
            }
        })
        .await,
    );
    row(
        "query 20 docs",
        measure(n, |_| {
            let store = store.clone();
            async move {
                let q = Query::collection("deployments").filter("state", "queued");
                assert_eq!(store.query(&Scope::All, &q).await.expect("query").len(), 20);
            }
        })
        .await,
    );
    row(
        "events_after 100",
        measure(n, |_| {
            let (store, session) = (store.clone(), session.clone());
            async move {
                assert_eq!(store.events_after(&Scope::All, &session, 0, 100).await.expect("events").len(), 100);
            }
        })
        .await,
    );
    rows
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let local = devgem_infra::local::LocalStore::open(
        &dir.path().join("store.db"),
        Arc::new(devgem_common::clock::SystemClock),
    )
    .expect("open");
    let mut rows = bench("SQLite (embedded)", Arc::new(local), n).await;

    use devgem_infra::gcp::{GcpConfig, emulators::firestore::FirestoreEmulator, firestore::FirestoreStore};
    let emulator = FirestoreEmulator::start().await.expect("the Firestore emulator starts");
    let blobs = Arc::new(devgem_infra::local::LocalBlobs::open(&dir.path().join("blobs")).expect("blobs"));
    let config = GcpConfig {
        project: "devgem-bench".into(),
        firestore_database: "(default)".into(),
        firestore_emulator: Some(emulator.host.clone()),
        ..GcpConfig::default()
    };
    let firestore = FirestoreStore::connect(&config, blobs).await.expect("connect");
    rows.extend(bench("Firestore (emulator)", Arc::new(firestore), n).await);

    println!("| adapter | operation | p50 | p99 |");
    println!("|---|---|---|---|");
    for (adapter, op, p50, p99) in rows {
        println!("| {adapter} | {op} | {:.2} ms | {:.2} ms |", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
    }
    println!("({n} operations of each kind, after {} warm-up)", n / 10);
}
