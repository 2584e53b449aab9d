//! Per-session fan-out. One Store watch per session and relay instance, whatever the number of
//! sockets on it: each event is read once, serialised once, and handed to every socket through a
//! bounded broadcast channel. A socket that falls a whole channel behind is told it lagged and
//! is disconnected; it resumes from the Store on reconnect, so nobody waits for the slowest.
//!
//! Feeds hold no state that matters: a feed starts from the position its first subscriber has
//! reached, and every subscriber fills any gap between its own position and the feed's from the
//! Store (see `ws.rs`).

use axum::extract::ws::Utf8Bytes;
use devgem_common::ids::SessionId;
use devgem_common::ports::store::{Scope, SessionEvent, Store};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// An event as every client of the session receives it: its seq and its JSON, made once.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub text: Utf8Bytes,
}

/// A session event as a client sees it: the stored event without its owner.
#[derive(Serialize)]
struct ClientEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    ts: &'a chrono::DateTime<chrono::Utc>,
    session_id: &'a SessionId,
    correlation_id: &'a devgem_common::ids::CorrelationId,
    data: &'a serde_json::Value,
}

impl Frame {
    pub fn of(event: &SessionEvent) -> Self {
        let client = ClientEvent {
            kind: event.kind.as_str(),
            seq: event.seq,
            ts: &event.ts,
            session_id: &event.session_id,
            correlation_id: &event.correlation_id,
            data: &event.data,
        };
        // Serialising plain data into a string cannot fail; an empty object keeps the seq honest.
        let text = serde_json::to_string(&client).unwrap_or_else(|_| String::from("{}"));
        Self { seq: event.seq, text: Utf8Bytes::from(text) }
    }
}

type Senders = HashMap<SessionId, broadcast::Sender<Arc<Frame>>>;

/// The feeds of one relay instance.
#[derive(Debug, Clone)]
pub struct Feeds {
    store: Arc<dyn Store>,
    senders: Arc<Mutex<Senders>>,
    /// How many frames a subscriber may fall behind before it is disconnected.
    capacity: usize,
    /// How often an idle feed checks whether anyone still listens.
    sweep_every: Duration,
}

impl Feeds {
    pub fn new(store: Arc<dyn Store>, capacity: usize) -> Self {
        Self { store, senders: Default::default(), capacity: capacity.max(1), sweep_every: Duration::from_secs(10) }
    }

    /// A receiver of `session`'s events. If no feed runs for it, one starts after `after`.
    pub fn subscribe(&self, session: &SessionId, after: u64) -> broadcast::Receiver<Arc<Frame>> {
        let mut senders = lock(&self.senders);
        if let Some(sender) = senders.get(session) {
            return sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(self.capacity);
        senders.insert(session.clone(), sender.clone());
        let feed = Feed {
            store: self.store.clone(),
            senders: self.senders.clone(),
            session: session.clone(),
            sender,
            sweep_every: self.sweep_every,
        };
        tokio::spawn(feed.run(after));
        receiver
    }

    /// The number of sessions with a running feed.
    pub fn running(&self) -> usize {
        lock(&self.senders).len()
    }
}

fn lock(senders: &Mutex<Senders>) -> std::sync::MutexGuard<'_, Senders> {
    // A panic while holding this lock leaves the map consistent (single inserts and removes).
    senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Feed {
    store: Arc<dyn Store>,
    senders: Arc<Mutex<Senders>>,
    session: SessionId,
    sender: broadcast::Sender<Arc<Frame>>,
    sweep_every: Duration,
}

impl Feed {
    async fn run(self, after: u64) {
        // The subscriber checked the session is its caller's; the feed reads it whole.
        let mut events = self.store.watch(Scope::All, self.session.clone(), after);
        let mut sweep = tokio::time::interval(self.sweep_every);
        sweep.tick().await;
        loop {
            tokio::select! {
                next = events.next() => match next {
                    Some(Ok(event)) => {
                        // No receiver: everyone left between two sweeps; stop if nobody came back.
                        if self.sender.send(Arc::new(Frame::of(&event))).is_err() && self.retire() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        // Subscribers see the channel close and reconnect; a new feed re-reads.
                        tracing::warn!(session = %self.session, error = %e, "a session feed stopped");
                        self.remove();
                        return;
                    }
                    None => {
                        self.remove();
                        return;
                    }
                },
                _ = sweep.tick() => {
                    if self.sender.receiver_count() == 0 && self.retire() {
                        return;
                    }
                }
            }
        }
    }

    /// Removes the feed if still nobody listens; `subscribe` holds the same lock, so a subscriber
    /// either joined before (and the feed goes on) or finds no feed and starts a new one.
    fn retire(&self) -> bool {
        let mut senders = lock(&self.senders);
        if self.sender.receiver_count() > 0 {
            return false;
        }
        if senders.get(&self.session).is_some_and(|s| s.same_channel(&self.sender)) {
            senders.remove(&self.session);
        }
        true
    }

    fn remove(&self) {
        let mut senders = lock(&self.senders);
        if senders.get(&self.session).is_some_and(|s| s.same_channel(&self.sender)) {
            senders.remove(&self.session);
        }
    }
}
