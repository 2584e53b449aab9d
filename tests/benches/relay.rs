//! Relay fan-out (docs/PERF.md): 1,000 WebSocket clients on 100 sessions (10 per session), on
//! the embedded Store. A producer appends events to every session in batches; each event carries
//! the instant it was committed from, and each client records the time from there to its
//! receipt. Reports messages delivered per second and the latency percentiles.
//!
//! The clients run in the same process as the relay, so they share its two cores: the numbers
//! are a floor for the relay alone.
//!
//! `cargo bench -p devgem-e2e --bench relay`

use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ports::store::{NewEvent, SessionEventKind, Write};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 100;
const CLIENTS_PER_SESSION: usize = 10;
/// Events appended to each session.
const EVENTS_PER_SESSION: u64 = 1_000;
/// Events per append (one transaction), as a writer batches them.
const BATCH: u64 = 10;
/// Pause between rounds of appends to every session; sets the offered load.
const ROUND_PAUSE: Duration = Duration::from_millis(5);

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1e6
}

/// The `"t":` field of an event's JSON, without parsing the rest: the client is on the same
/// cores as the relay, and it should measure the relay, not a JSON parser.
fn stamp(text: &str) -> Option<u64> {
    let at = text.find("\"t\":")? + 4;
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = devgem_e2e::bench_embedded(dir.path());
    let token = embedded.identity.ensure_admin(None).await.expect("admin").expect("a new admin token");
    let state = devgem_relay::AppState::new(embedded.ports.clone(), embedded.identity.clone(), Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws/chat", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, devgem_relay::router(state)).await });

    let owner = UserId::admin();
    let sessions: Vec<SessionId> = (0..SESSIONS).map(|_| SessionId::generate()).collect();
    // Each session gets its first event now, so it is the admin's when clients join.
    for session in &sessions {
        let event =
            NewEvent { kind: SessionEventKind::AiThought, correlation_id: CorrelationId::generate(), data: json!({}) };
        let write = Write::Append { session: session.clone(), owner: owner.clone(), events: vec![event] };
        embedded.ports.store.commit(vec![write]).await.expect("seed");
    }

    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SESSIONS * CLIENTS_PER_SESSION);
    let mut clients = Vec::new();
    for session in &sessions {
        for _ in 0..CLIENTS_PER_SESSION {
            let (url, token, session, ready) =
                (url.clone(), token.expose().to_owned(), session.clone(), ready_tx.clone());
            clients.push(tokio::spawn(async move {
                let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
                let auth = json!({ "type": "auth", "token": token, "session_id": session.as_str(), "after": 1 });
                socket.send(Message::text(auth.to_string())).await.expect("auth");
                let mut latencies = Vec::with_capacity(EVENTS_PER_SESSION as usize);
                let mut last_receipt = epoch;
                while let Some(message) = socket.next().await {
                    let Ok(Message::Text(text)) = message else { continue };
                    if text.contains("\"type\":\"ready\"") {
                        let _ = ready.send(()).await;
                        continue;
                    }
                    let now = epoch.elapsed().as_nanos() as u64;
                    if let Some(sent) = stamp(&text) {
                        latencies.push(now.saturating_sub(sent));
                        last_receipt = Instant::now();
                    }
                    if latencies.len() as u64 == EVENTS_PER_SESSION {
                        break;
                    }
                }
                (latencies, last_receipt)
            }));
        }
    }
    drop(ready_tx);
    for _ in 0..SESSIONS * CLIENTS_PER_SESSION {
        ready_rx.recv().await.expect("every client is ready");
    }

    let store = embedded.ports.store.clone();
    let started = Instant::now();
    let producer = tokio::spawn({
        let (store, sessions, owner) = (Arc::clone(&store), sessions.clone(), owner.clone());
        async move {
            let mut appended = 0;
            while appended < EVENTS_PER_SESSION {
                for session in &sessions {
                    let t = epoch.elapsed().as_nanos() as u64;
                    let events = (0..BATCH)
                        .map(|_| NewEvent {
                            kind: SessionEventKind::BuildLog,
                            correlation_id: CorrelationId::generate(),
                            data: json!({ "t": t, "lines": ["Step 3/11 (line 7): RUN pip install -r requirements.txt"] }),
                        })
                        .collect();
                    let write = Write::Append { session: session.clone(), owner: owner.clone(), events };
                    store.commit(vec![write]).await.expect("append");
                }
                appended += BATCH;
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
    });
    producer.await.expect("producer");
    let appended_in = started.elapsed();
    let mut latencies = Vec::new();
    let mut finished = started;
    for client in clients {
        let (mut l, last) = client.await.expect("client");
        latencies.append(&mut l);
        finished = finished.max(last);
    }
    let elapsed = finished.duration_since(started).as_secs_f64();
    latencies.sort_unstable();
    let delivered = latencies.len();
    println!(
        "{} clients on {} sessions: {} events appended in {:.2} s; {} messages delivered in {:.2} s = {:.0} messages/s; \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        SESSIONS * CLIENTS_PER_SESSION,
        SESSIONS,
        SESSIONS as u64 * EVENTS_PER_SESSION,
        appended_in.as_secs_f64(),
        delivered,
        elapsed,
        delivered as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}
