//! The embedded Bus, with Pub/Sub's semantics (DESIGN.md, ack policy):
//!
//! - `publish` commits the message and one delivery row per subscription of the topic to SQLite
//!   before it returns (durable: in the WAL, see [`super::sqlite`]).
//! - Each attached subscription has a dispatcher task that POSTs the exact Pub/Sub push envelope
//!   to its function's router in-process. 102/200/201/202/204 ack; any other status, a panic or
//!   the ack deadline passing is a nack, redelivered with exponential backoff and jitter until
//!   `max_attempts`, then moved to the dead-letter table. `deliveryAttempt` is filled in.
//! - Messages with an ordering key are delivered one at a time per key, in publish order; a
//!   message being retried holds back the later ones of its key.
//! - Pending deliveries (and their backoff) are reloaded when a subscription is attached after a
//!   restart, so nothing published is lost when the process dies.
//!
//! Ordering between publish and dispatch comes from the writer lock: a publish fans out to the
//! in-memory dispatchers while it still holds the lock, and attaching a subscription registers its
//! dispatcher and loads its pending rows under the same lock, so every delivery is either loaded
//! or sent, exactly once, in message-id order.

use super::committer::Committer;
use super::sqlite::{Db, DbError};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use devgem_common::clock::Clock;
use devgem_common::envelope::{DeliveryForm, PubsubMessage, PushRequest};
use devgem_common::events::Topic;
use devgem_common::ports::bus::{Bus, BusError, OutboundMessage, is_ack_status};
use rusqlite::{OptionalExtension, params};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower::ServiceExt;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    attributes TEXT NOT NULL,
    ordering_key TEXT,
    publish_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    subscription TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_status TEXT,
    PRIMARY KEY (subscription, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_message ON deliveries (message_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    subscription TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    attributes TEXT NOT NULL,
    ordering_key TEXT,
    publish_time TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status TEXT NOT NULL,
    dead_at TEXT NOT NULL,
    PRIMARY KEY (subscription, message_id)
) WITHOUT ROWID;
DELETE FROM messages WHERE id NOT IN (SELECT message_id FROM deliveries);
"#;

impl From<DbError> for BusError {
    fn from(e: DbError) -> Self {
        BusError::Unavailable(e.to_string())
    }
}

fn sql(e: rusqlite::Error) -> BusError {
    BusError::Unavailable(format!("sqlite: {e}"))
}

/// How one subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub name: String,
    pub topic: Topic,
    /// The route of the function's router that receives the push requests.
    pub push_path: String,
    /// Deliveries before a message is dead-lettered (Pub/Sub: 5 to 100, default 5).
    pub max_attempts: u32,
    /// A delivery that has not answered by then is a nack.
    pub ack_deadline: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Deliveries running at once (messages of one ordering key always run one at a time).
    pub max_in_flight: usize,
}

impl SubscriptionConfig {
    pub fn new(name: &str, topic: Topic, push_path: &str) -> Self {
        Self {
            name: name.to_owned(),
            topic,
            push_path: push_path.to_owned(),
            max_attempts: 5,
            ack_deadline: Duration::from_secs(60),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_in_flight: 64,
        }
    }

    /// The delay before retry number `failures` (1 after the first failed delivery): doubling
    /// from `min_backoff`, capped at `max_backoff`, plus up to 25 % jitter so retries of many
    /// messages do not arrive together. Always grows until the cap.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let base = self.min_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        base + base.mul_f64(fastrand::f64() * 0.25)
    }
}

/// A message that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub subscription: String,
    pub message_id: String,
    pub topic: String,
    pub data: Bytes,
    pub attributes: BTreeMap<String, String>,
    pub attempts: u32,
    /// The last delivery's status, or why it failed (timeout, panic).
    pub last_status: String,
    pub dead_at: DateTime<Utc>,
}

/// Backlog and dead letters, in total and per subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStats {
    pub backlog: u64,
    pub dead_letters: u64,
    pub subscriptions: BTreeMap<String, SubscriptionStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionStats {
    pub topic: String,
    pub attached: bool,
    pub backlog: u64,
    pub dead_letters: u64,
}

#[derive(Debug)]
struct StoredMessage {
    id: u64,
    data: Bytes,
    attributes: BTreeMap<String, String>,
    ordering_key: Option<String>,
    publish_time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Pending {
    message: Arc<StoredMessage>,
    /// Failed deliveries so far.
    failures: u32,
}

#[derive(Debug)]
struct Route {
    subscription: String,
    sender: Option<mpsc::UnboundedSender<Pending>>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Db>,
    /// Every write goes through here: one transaction per batch of waiting writes.
    committer: Committer,
    clock: Arc<dyn Clock>,
    routes: RwLock<HashMap<Topic, Vec<Route>>>,
    /// The dispatcher task of each subscription, by name.
    dispatchers: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// The embedded bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

fn epoch_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl LocalBus {
    /// Opens the bus database at `path`, creating it if needed. Subscriptions declared in an
    /// earlier run keep receiving published messages; they are delivered once attached.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, BusError> {
        let db = Db::open(path, SCHEMA)?;
        // The writer thread has not started yet: read the declared subscriptions on its connection.
        let declared = db.with_writer(|conn| -> Result<Vec<(String, String)>, BusError> {
            let mut stmt = conn.prepare("SELECT name, topic FROM subscriptions ORDER BY name").map_err(sql)?;
            let rows =
                stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))).map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)
        })?;
        let mut routes: HashMap<Topic, Vec<Route>> = HashMap::new();
        for (name, topic) in declared {
            if let Some(topic) = Topic::parse(&topic) {
                routes.entry(topic).or_default().push(Route { subscription: name, sender: None });
            }
        }
        let committer = Committer::start(Arc::clone(&db), "devgem-bus")?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                committer,
                clock,
                routes: RwLock::new(routes),
                dispatchers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Declares (or re-declares) a subscription and starts delivering its messages to
    /// `endpoint`, beginning with any left pending by an earlier run.
    pub async fn subscribe(&self, config: SubscriptionConfig, endpoint: Router) -> Result<(), BusError> {
        if config.max_attempts == 0 || config.max_in_flight == 0 {
            return Err(BusError::Invalid("max_attempts and max_in_flight must be at least 1".into()));
        }
        let attached = {
            let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
            routes.values().flatten().any(|r| r.subscription == config.name && r.sender.is_some())
        };
        if attached {
            return Err(BusError::Invalid(format!("subscription {} is already attached", config.name)));
        }
        // A dispatcher left running by a shutdown that timed out still holds deliveries in
        // flight: stop it before its rows are loaded again, or they would run twice.
        let leftover = self.inner.dispatchers.lock().unwrap_or_else(|p| p.into_inner()).remove(&config.name);
        if let Some(old) = leftover {
            old.abort();
            let _ = old.await;
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let registered = sender.clone();
        let inner = Arc::clone(&self.inner);
        let name = config.name.clone();
        let topic = config.topic;
        let now = self.inner.clock.now();
        let loaded = self
            .inner
            .committer
            .write(
                move |conn| {
                    conn.execute(
                        "INSERT INTO subscriptions (name, topic, created_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (name) DO UPDATE SET topic = excluded.topic",
                        params![name, topic.name(), now.to_rfc3339()],
                    )
                    .map_err(|e| e.to_string())?;
                    let pending = load_pending(conn, &name).map_err(|e| e.to_string())?;
                    // Registered inside the batch: publishes applied after this write (in this
                    // batch or later) fan out to us; earlier ones are in `pending`.
                    let mut routes = inner.routes.write().unwrap_or_else(|p| p.into_inner());
                    for routes in routes.values_mut() {
                        routes.retain(|r| r.subscription != name);
                    }
                    routes.entry(topic).or_default().push(Route { subscription: name, sender: Some(sender) });
                    Ok(pending)
                },
                |_| {},
            )
            .await;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                // The batch did not commit: take the route back out.
                let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
                for route in routes.values_mut().flatten() {
                    if route.sender.as_ref().is_some_and(|s| s.same_channel(&registered)) {
                        route.sender = None;
                    }
                }
                return Err(BusError::Unavailable(e));
            }
        };
        // Retry times are wall-clock instants written by the dispatcher (`Utc::now()`); a wait is
        // never longer than the longest backoff, whatever the clock did meanwhile.
        let now_ms = epoch_ms(Utc::now());
        let longest = config.max_backoff.mul_f64(1.25);
        let name = config.name.clone();
        let mut dispatcher = Dispatcher::new(config, endpoint, self.inner.committer.clone(), receiver);
        for (pending, next_attempt_ms) in loaded {
            let wait = u64::try_from(next_attempt_ms - now_ms).ok().map(|ms| Duration::from_millis(ms).min(longest));
            dispatcher.enqueue(pending, wait.map(|w| Instant::now() + w));
        }
        let handle = tokio::spawn(dispatcher.run());
        self.inner.dispatchers.lock().unwrap_or_else(|p| p.into_inner()).insert(name, handle);
        Ok(())
    }

    /// Stops delivering: dispatchers finish the deliveries in flight (up to `grace`) and record
    /// their outcome; everything else stays pending for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        {
            let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
            for route in routes.values_mut().flatten() {
                route.sender = None;
            }
        }
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.dispatchers.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(handles);
        if tokio::time::timeout(grace, all).await.is_err() {
            // Deliveries still running are cancelled; their messages stay pending on disk.
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            tracing::warn!(?grace, "bus dispatchers did not finish in time; pending deliveries resume on next start");
        }
    }

    /// Backlog and dead-letter counts.
    pub async fn stats(&self) -> Result<BusStats, BusError> {
        let attached: HashMap<String, bool> = {
            let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
            routes.values().flatten().map(|r| (r.subscription.clone(), r.sender.is_some())).collect()
        };
        self.inner
            .db
            .read(move |conn| {
                let mut stats = BusStats::default();
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT s.name, s.topic,
                            (SELECT COUNT(*) FROM deliveries d WHERE d.subscription = s.name),
                            (SELECT COUNT(*) FROM dead_letters x WHERE x.subscription = s.name)
                         FROM subscriptions s ORDER BY s.name",
                    )
                    .map_err(sql)?;
                let mut rows = stmt.query([]).map_err(sql)?;
                while let Some(row) = rows.next().map_err(sql)? {
                    let name: String = row.get(0).map_err(sql)?;
                    let sub = SubscriptionStats {
                        topic: row.get(1).map_err(sql)?,
                        attached: attached.get(&name).copied().unwrap_or(false),
                        backlog: row.get::<_, i64>(2).map_err(sql)?.max(0) as u64,
                        dead_letters: row.get::<_, i64>(3).map_err(sql)?.max(0) as u64,
                    };
                    stats.backlog += sub.backlog;
                    stats.dead_letters += sub.dead_letters;
                    stats.subscriptions.insert(name, sub);
                }
                Ok::<_, BusError>(stats)
            })
            .await
    }

    /// The dead letters of one subscription, oldest first.
    pub async fn dead_letters(&self, subscription: &str) -> Result<Vec<DeadLetter>, BusError> {
        let subscription = subscription.to_owned();
        self.inner
            .db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT message_id, topic, data, attributes, attempts, last_status, dead_at
                         FROM dead_letters WHERE subscription = ?1 ORDER BY message_id",
                    )
                    .map_err(sql)?;
                let mut rows = stmt.query(params![subscription]).map_err(sql)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(sql)? {
                    let attributes: String = row.get(3).map_err(sql)?;
                    let dead_at: String = row.get(6).map_err(sql)?;
                    out.push(DeadLetter {
                        subscription: subscription.clone(),
                        message_id: row.get::<_, i64>(0).map_err(sql)?.to_string(),
                        topic: row.get(1).map_err(sql)?,
                        data: Bytes::from(row.get::<_, Vec<u8>>(2).map_err(sql)?),
                        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                        attempts: row.get::<_, i64>(4).map_err(sql)?.max(0) as u32,
                        last_status: row.get(5).map_err(sql)?,
                        dead_at: DateTime::parse_from_rfc3339(&dead_at)
                            .map(|t| t.with_timezone(&Utc))
                            .unwrap_or_default(),
                    });
                }
                Ok::<_, BusError>(out)
            })
            .await
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, topic: Topic, message: OutboundMessage) -> Result<String, BusError> {
        message.validate()?;
        let inner = Arc::clone(&self.inner);
        let publish_time = self.inner.clock.now();
        let attributes = serde_json::to_string(&message.attributes).map_err(|e| BusError::Invalid(e.to_string()))?;
        let publish_text = publish_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let (id, _, _) = self
            .inner
            .committer
            .write(
                move |conn| {
                    let sql = |e: rusqlite::Error| e.to_string();
                    conn.prepare_cached(
                        "INSERT INTO messages (topic, data, attributes, ordering_key, publish_time) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(sql)?
                    .execute(params![topic.name(), message.data.as_ref(), attributes, message.ordering_key, publish_text])
                    .map_err(sql)?;
                    let id = conn.last_insert_rowid().max(0) as u64;
                    let routes = inner.routes.read().unwrap_or_else(|p| p.into_inner());
                    let subscribers = routes.get(&topic).map(Vec::as_slice).unwrap_or_default();
                    {
                        let mut insert = conn
                            .prepare_cached("INSERT INTO deliveries (subscription, message_id) VALUES (?1, ?2)")
                            .map_err(sql)?;
                        for route in subscribers {
                            insert.execute(params![route.subscription, id as i64]).map_err(sql)?;
                        }
                    }
                    let senders: Vec<mpsc::UnboundedSender<Pending>> =
                        subscribers.iter().filter_map(|r| r.sender.clone()).collect();
                    let stored = Arc::new(StoredMessage {
                        id,
                        data: message.data,
                        attributes: message.attributes,
                        ordering_key: message.ordering_key,
                        publish_time,
                    });
                    Ok((id, stored, senders))
                },
                // After the commit, on the writer thread: dispatchers receive messages in commit
                // order. A closed dispatcher (shutting down) finds the row on the next start.
                |(_, stored, senders)| {
                    for sender in senders {
                        let _ = sender.send(Pending { message: Arc::clone(stored), failures: 0 });
                    }
                },
            )
            .await
            .map_err(BusError::Unavailable)?;
        Ok(id.to_string())
    }

    async fn prune_dead_letters(&self, cutoff: DateTime<Utc>) -> Result<u64, BusError> {
        // `dead_at` is written in this same fixed format, so text order is time order.
        let cutoff = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let removed = self
            .inner
            .committer
            .write(
                move |conn| {
                    conn.prepare_cached("DELETE FROM dead_letters WHERE dead_at < ?1")
                        .and_then(|mut stmt| stmt.execute(params![cutoff]))
                        .map_err(|e| e.to_string())
                },
                |_| {},
            )
            .await
            .map_err(BusError::Unavailable)?;
        Ok(removed as u64)
    }

    async fn dead_letter_count(&self) -> Result<Option<u64>, BusError> {
        self.inner
            .db
            .read(|conn| {
                conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |row| row.get::<_, i64>(0))
                    .map(|n| Some(n.max(0) as u64))
                    .map_err(sql)
            })
            .await
    }
}

fn load_pending(conn: &rusqlite::Connection, subscription: &str) -> Result<Vec<(Pending, i64)>, BusError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT m.id, m.data, m.attributes, m.ordering_key, m.publish_time, d.attempts, d.next_attempt_ms
             FROM deliveries d JOIN messages m ON m.id = d.message_id
             WHERE d.subscription = ?1 ORDER BY m.id",
        )
        .map_err(sql)?;
    let mut rows = stmt.query(params![subscription]).map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let attributes: String = row.get(2).map_err(sql)?;
        let publish_time: String = row.get(4).map_err(sql)?;
        let message = StoredMessage {
            id: row.get::<_, i64>(0).map_err(sql)?.max(0) as u64,
            data: Bytes::from(row.get::<_, Vec<u8>>(1).map_err(sql)?),
            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
            ordering_key: row.get(3).map_err(sql)?,
            publish_time: DateTime::parse_from_rfc3339(&publish_time)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
        };
        let failures = row.get::<_, i64>(5).map_err(sql)?.max(0) as u32;
        let next_attempt_ms: i64 = row.get(6).map_err(sql)?;
        out.push((Pending { message: Arc::new(message), failures }, next_attempt_ms));
    }
    Ok(out)
}

/// The outcome of one delivery: the status the endpoint answered, or why there was none.
type Delivered = Result<u16, String>;

#[derive(Debug)]
enum Wake {
    Unkeyed(Pending),
    Key(String),
}

#[derive(Debug)]
struct Timer {
    at: Instant,
    seq: u64,
    wake: Wake,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    // Reversed, so the max-heap pops the earliest timer.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Default)]
struct KeyQueue {
    /// By message id, so the smallest (earliest published) goes first.
    queue: BTreeMap<u64, Pending>,
    busy: bool,
    not_before: Option<Instant>,
    listed_ready: bool,
}

#[derive(Debug)]
enum Op {
    Ack { id: u64 },
    Retry { id: u64, failures: u32, next_attempt_ms: i64, status: String },
    Dead { id: u64, failures: u32, status: String },
}

struct Dispatcher {
    config: SubscriptionConfig,
    endpoint: Router,
    committer: Committer,
    receiver: mpsc::UnboundedReceiver<Pending>,
    ready: VecDeque<Pending>,
    keys: HashMap<String, KeyQueue>,
    ready_keys: VecDeque<String>,
    timers: BinaryHeap<Timer>,
    timer_seq: u64,
    running: JoinSet<Delivered>,
    running_pending: HashMap<tokio::task::Id, Pending>,
    ops: Vec<Op>,
    /// Outcome writes submitted and not yet confirmed. Deliveries go on meanwhile; the committer
    /// keeps the writes in submission order.
    unconfirmed: Vec<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

impl Dispatcher {
    fn new(
        config: SubscriptionConfig,
        endpoint: Router,
        committer: Committer,
        receiver: mpsc::UnboundedReceiver<Pending>,
    ) -> Self {
        Self {
            config,
            endpoint,
            committer,
            receiver,
            ready: VecDeque::new(),
            keys: HashMap::new(),
            ready_keys: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            running: JoinSet::new(),
            running_pending: HashMap::new(),
            ops: Vec::new(),
            unconfirmed: Vec::new(),
        }
    }

    fn schedule(&mut self, at: Instant, wake: Wake) {
        self.timer_seq += 1;
        self.timers.push(Timer { at, seq: self.timer_seq, wake });
    }

    fn list_key_ready(&mut self, key: &str) {
        if let Some(q) = self.keys.get_mut(key)
            && !q.busy
            && !q.listed_ready
            && !q.queue.is_empty()
        {
            q.listed_ready = true;
            self.ready_keys.push_back(key.to_owned());
        }
    }

    fn enqueue(&mut self, pending: Pending, not_before: Option<Instant>) {
        let not_before = not_before.filter(|t| *t > Instant::now());
        match pending.message.ordering_key.clone() {
            None => match not_before {
                Some(at) => self.schedule(at, Wake::Unkeyed(pending)),
                None => self.ready.push_back(pending),
            },
            Some(key) => {
                let queue = self.keys.entry(key.clone()).or_default();
                queue.queue.insert(pending.message.id, pending);
                if let Some(at) = not_before {
                    queue.not_before = Some(queue.not_before.map_or(at, |t| t.max(at)));
                    self.schedule(at, Wake::Key(key));
                } else if queue.not_before.is_none() {
                    self.list_key_ready(&key);
                }
            }
        }
    }

    fn start(&mut self, pending: Pending) {
        let request = PushRequest {
            message: PubsubMessage {
                data: pending.message.data.clone(),
                attributes: pending.message.attributes.clone(),
                message_id: pending.message.id.to_string(),
                publish_time: Some(pending.message.publish_time),
                ordering_key: pending.message.ordering_key.clone(),
            },
            subscription: Some(format!("projects/devgem-local/subscriptions/{}", self.config.name)),
            delivery_attempt: Some(pending.failures + 1),
            form: DeliveryForm::PubsubPush,
        };
        let body = request.to_push_json();
        let endpoint = self.endpoint.clone();
        let path = self.config.push_path.clone();
        let deadline = self.config.ack_deadline;
        let handle = self.running.spawn(deliver(endpoint, path, body, deadline));
        self.running_pending.insert(handle.id(), pending);
    }

    /// Starts deliveries until the in-flight limit.
    fn fill(&mut self) {
        while self.running.len() < self.config.max_in_flight {
            if let Some(pending) = self.ready.pop_front() {
                self.start(pending);
                continue;
            }
            let Some(key) = self.ready_keys.pop_front() else { break };
            let Some(queue) = self.keys.get_mut(&key) else { continue };
            queue.listed_ready = false;
            if queue.busy || queue.not_before.is_some() {
                continue;
            }
            if let Some(front) = queue.queue.values().next().cloned() {
                queue.busy = true;
                self.start(front);
            }
        }
    }

    fn on_timer(&mut self, wake: Wake) {
        match wake {
            Wake::Unkeyed(pending) => self.ready.push_back(pending),
            Wake::Key(key) => {
                if let Some(queue) = self.keys.get_mut(&key) {
                    if queue.not_before.is_some_and(|t| t > Instant::now()) {
                        return;
                    }
                    queue.not_before = None;
                }
                self.list_key_ready(&key);
            }
        }
    }

    /// Removes a finished message from its key's queue and lets the next one go.
    fn release(&mut self, pending: &Pending) {
        let Some(key) = pending.message.ordering_key.as_deref() else { return };
        if let Some(queue) = self.keys.get_mut(key) {
            queue.queue.remove(&pending.message.id);
            queue.busy = false;
            if queue.queue.is_empty() && queue.not_before.is_none() {
                self.keys.remove(key);
            } else {
                self.list_key_ready(key);
            }
        }
    }

    fn on_delivered(&mut self, pending: Pending, delivered: Delivered) {
        let id = pending.message.id;
        if let Ok(status) = delivered
            && is_ack_status(status)
        {
            self.ops.push(Op::Ack { id });
            self.release(&pending);
            return;
        }
        let status = match delivered {
            Ok(code) => code.to_string(),
            Err(reason) => reason,
        };
        let failures = pending.failures + 1;
        if failures >= self.config.max_attempts {
            tracing::warn!(subscription = %self.config.name, message_id = id, %status, failures, "dead-lettering message");
            self.ops.push(Op::Dead { id, failures, status });
            self.release(&pending);
            return;
        }
        let delay = self.config.backoff(failures);
        tracing::debug!(subscription = %self.config.name, message_id = id, %status, ?delay, "delivery failed; will retry");
        let next_attempt_ms = epoch_ms(Utc::now()) + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        self.ops.push(Op::Retry { id, failures, next_attempt_ms, status });
        let retry = Pending { message: pending.message, failures };
        let at = Instant::now() + delay;
        match retry.message.ordering_key.clone() {
            None => self.schedule(at, Wake::Unkeyed(retry)),
            Some(key) => {
                let queue = self.keys.entry(key.clone()).or_default();
                queue.queue.insert(id, retry);
                queue.busy = false;
                queue.not_before = Some(at);
                self.schedule(at, Wake::Key(key));
            }
        }
    }

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, Delivered), tokio::task::JoinError>) {
        let (id, delivered) = match joined {
            Ok((id, delivered)) => (id, delivered),
            Err(e) => (
                e.id(),
                Err(if e.is_panic() { "handler panicked".to_owned() } else { "delivery cancelled".to_owned() }),
            ),
        };
        if let Some(pending) = self.running_pending.remove(&id) {
            self.on_delivered(pending, delivered);
        }
    }

    /// Queues the recorded outcomes as one write, without waiting for it. If it fails, the rows
    /// stay pending and the messages are redelivered on the next start: at least once, never
    /// lost.
    fn flush(&mut self) {
        self.unconfirmed.retain_mut(|answer| match answer.try_recv() {
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not record delivery outcomes; they will be redelivered after a restart");
                false
            }
            Ok(Ok(())) => false,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
        });
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        let subscription = self.config.name.clone();
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let answer = self
            .committer
            .submit(move |conn| record_outcomes(conn, &subscription, &ops, &now).map_err(|e| e.to_string()), |_| {});
        self.unconfirmed.push(answer);
    }

    /// Waits until every submitted outcome is recorded.
    async fn confirm_all(&mut self) {
        for answer in self.unconfirmed.drain(..) {
            if let Ok(Err(e)) = answer.await {
                tracing::error!(subscription = %self.config.name, error = %e, "could not record delivery outcomes");
            }
        }
    }

    async fn run(mut self) {
        let mut closing = false;
        loop {
            if !closing {
                self.fill();
            }
            if closing && self.running.is_empty() {
                break;
            }
            let next_timer = self.timers.peek().map(|t| t.at);
            tokio::select! {
                Some(joined) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    self.on_joined(joined);
                    // Batch every other finished delivery into the same transaction.
                    while let Some(joined) = self.running.try_join_next_with_id() {
                        self.on_joined(joined);
                    }
                }
                received = self.receiver.recv(), if !closing => match received {
                    Some(pending) => {
                        self.enqueue(pending, None);
                        while let Ok(pending) = self.receiver.try_recv() {
                            self.enqueue(pending, None);
                        }
                    }
                    None => closing = true,
                },
                () = sleep_until_opt(next_timer), if next_timer.is_some() && !closing => {
                    let now = Instant::now();
                    while self.timers.peek().is_some_and(|t| t.at <= now) {
                        if let Some(timer) = self.timers.pop() {
                            self.on_timer(timer.wake);
                        }
                    }
                }
            }
            self.flush();
        }
        self.flush();
        self.confirm_all().await;
    }
}

/// Records delivery outcomes: acks delete the delivery, retries update it, dead letters move the
/// message to `dead_letters`; a message no subscription still needs is deleted.
fn record_outcomes(tx: &rusqlite::Connection, subscription: &str, ops: &[Op], now: &str) -> Result<(), BusError> {
    for op in ops {
        match op {
            Op::Ack { id } => {
                tx.prepare_cached("DELETE FROM deliveries WHERE subscription = ?1 AND message_id = ?2")
                    .map_err(sql)?
                    .execute(params![subscription, *id as i64])
                    .map_err(sql)?;
            }
            Op::Retry { id, failures, next_attempt_ms, status } => {
                tx.prepare_cached(
                    "UPDATE deliveries SET attempts = ?3, next_attempt_ms = ?4, last_status = ?5
                     WHERE subscription = ?1 AND message_id = ?2",
                )
                .map_err(sql)?
                .execute(params![subscription, *id as i64, failures, next_attempt_ms, status])
                .map_err(sql)?;
            }
            Op::Dead { id, failures, status } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO dead_letters
                        (subscription, message_id, topic, data, attributes, ordering_key, publish_time,
                         attempts, last_status, dead_at)
                     SELECT ?1, id, topic, data, attributes, ordering_key, publish_time, ?3, ?4, ?5
                     FROM messages WHERE id = ?2",
                )
                .map_err(sql)?
                .execute(params![subscription, *id as i64, failures, status, now])
                .map_err(sql)?;
                tx.prepare_cached("DELETE FROM deliveries WHERE subscription = ?1 AND message_id = ?2")
                    .map_err(sql)?
                    .execute(params![subscription, *id as i64])
                    .map_err(sql)?;
            }
        }
        if let Op::Ack { id } | Op::Dead { id, .. } = op {
            let gone: Option<i64> = tx
                .prepare_cached("SELECT 1 FROM deliveries WHERE message_id = ?1 LIMIT 1")
                .map_err(sql)?
                .query_row(params![*id as i64], |row| row.get(0))
                .optional()
                .map_err(sql)?;
            if gone.is_none() {
                tx.prepare_cached("DELETE FROM messages WHERE id = ?1")
                    .map_err(sql)?
                    .execute(params![*id as i64])
                    .map_err(sql)?;
            }
        }
    }
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// POSTs one push request to the endpoint in-process, as Pub/Sub would over HTTP.
async fn deliver(endpoint: Router, path: String, body: Vec<u8>, deadline: Duration) -> Delivered {
    let request = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)")
        .body(Body::from(body))
        .map_err(|e| format!("bad request: {e}"))?;
    match tokio::time::timeout(deadline, endpoint.oneshot(request)).await {
        Ok(Ok(response)) => Ok(response.status().as_u16()),
        Ok(Err(never)) => match never {},
        Err(_) => Err(format!("no answer within the ack deadline ({deadline:?})")),
    }
}

#[cfg(test)]
mod tests;
