//! `/ws/chat`: one socket, one user, one session (docs/protocol.md). The first frame
//! authenticates and says where the client stopped; from there the socket gets every later
//! event of the session exactly once and in order: first the backlog from the Store, then the
//! session's feed, with any gap between the two filled from the Store again. Chat input on the
//! socket goes through `devgem_common::sessions::submit`, as it does over REST.

use crate::AppState;
use crate::feed::Frame;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use devgem_common::identity::{Caller, IdentityError, Token};
use devgem_common::ids::{CorrelationId, SessionId};
use devgem_common::ports::store::StoreError;
use devgem_common::sessions::{self, ChatInput, SubmitError};
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

/// The largest frame a client may send: a chat message is at most 8 KiB of text.
const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// How many events one backlog read fetches.
const BACKLOG_PAGE: usize = 500;

/// The relay's timings and limits (docs/protocol.md gives the defaults).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// A socket that has not authenticated by then is closed (4408).
    pub auth_within: Duration,
    /// How often the relay sends `ping`.
    pub ping_every: Duration,
    /// A socket from which nothing arrived for this long is closed (4000).
    pub idle_after: Duration,
    /// How many frames a socket may fall behind its session's feed before it is closed (4429).
    pub queue: usize,
    /// A socket whose writes block longer than this is dropped: its client stopped reading.
    pub send_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            auth_within: Duration::from_secs(5),
            ping_every: Duration::from_secs(30),
            idle_after: Duration::from_secs(300),
            queue: 4096,
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the relay closes a socket: the close code and the `error` frame before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    GoingAway,
    Idle,
    BadFrame(String),
    Unauthenticated(String),
    NotYours(SessionId),
    AuthTimeout,
    TooSlow,
    /// The Store failed; the client reconnects and resumes.
    Unavailable,
    /// The client closed or vanished: nothing to send.
    ClientGone,
}

impl Close {
    fn code(&self) -> u16 {
        match self {
            Close::GoingAway | Close::ClientGone => 1001,
            Close::Unavailable => 1011,
            Close::Idle => 4000,
            Close::BadFrame(_) => 4400,
            Close::Unauthenticated(_) => 4401,
            Close::NotYours(_) => 4403,
            Close::AuthTimeout => 4408,
            Close::TooSlow => 4429,
        }
    }

    fn error(&self) -> Option<(&'static str, String)> {
        Some(match self {
            Close::GoingAway | Close::ClientGone => return None,
            Close::Idle => ("idle", "no pong for too long; reconnect".to_owned()),
            Close::BadFrame(why) => ("bad_frame", why.clone()),
            Close::Unauthenticated(why) => ("unauthenticated", why.clone()),
            Close::NotYours(session) => ("not_found", format!("session {session} not found; start a new session")),
            Close::AuthTimeout => {
                ("auth_timeout", "send {\"type\":\"auth\",\"token\":…} as the first frame, within 5 seconds".to_owned())
            }
            Close::TooSlow => {
                ("too_slow", "the connection fell too far behind; reconnect with your last seq".to_owned())
            }
            Close::Unavailable => ("unavailable", "storage is unavailable; reconnect shortly".to_owned()),
        })
    }
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Auth {
        token: String,
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        after: u64,
    },
    Message {
        text: String,
        #[serde(default)]
        client_message_id: Option<String>,
    },
    Pong {},
}

/// A frame of the relay's own (not an event of the session's log): `seq` is null.
#[derive(Serialize)]
struct ControlFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: Option<u64>,
    ts: chrono::DateTime<chrono::Utc>,
    session_id: Option<&'a SessionId>,
    correlation_id: Option<&'a CorrelationId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

/// `GET /ws/chat`.
pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_CLIENT_FRAME).max_frame_size(MAX_CLIENT_FRAME).on_upgrade(move |socket| async move {
        let mut connection = Connection { state, socket, session: None };
        let close = connection.run().await;
        connection.close(close).await;
    })
}

struct Connection {
    state: AppState,
    socket: WebSocket,
    session: Option<SessionId>,
}

impl Connection {
    async fn run(&mut self) -> Close {
        let (caller, session, after) = match self.authenticate().await {
            Ok(authenticated) => authenticated,
            Err(close) => return close,
        };
        self.session = Some(session.clone());
        let ready = serde_json::json!({ "user_id": caller.user_id, "after": after });
        if let Err(close) = self.send_control("ready", Some(ready)).await {
            return close;
        }
        self.stream(&caller, &session, after).await
    }

    /// The first frame: a known token, and a session that is the caller's or new.
    async fn authenticate(&mut self) -> Result<(Caller, SessionId, u64), Close> {
        let auth_within = self.state.settings.auth_within;
        let first = match tokio::time::timeout(auth_within, self.socket.recv()).await {
            Err(_) => return Err(Close::AuthTimeout),
            Ok(None | Some(Err(_))) => return Err(Close::ClientGone),
            Ok(Some(Ok(message))) => message,
        };
        let (token, session_id, after) = match parse(&first)? {
            Some(ClientFrame::Auth { token, session_id, after }) => (token, session_id, after),
            Some(_) => return Err(Close::BadFrame("the first frame must be {\"type\":\"auth\",…}".into())),
            None => return Err(Close::ClientGone),
        };
        let token = Token::parse(&token).map_err(|e| Close::Unauthenticated(e.to_string()))?;
        let caller = match self.state.identity.authenticate(&token).await {
            Ok(caller) => caller,
            Err(IdentityError::Store(e)) => return Err(store_failed(&e)),
            Err(e) => return Err(Close::Unauthenticated(e.to_string())),
        };
        let session = match session_id {
            None => SessionId::generate(),
            Some(raw) => SessionId::parse(&raw).map_err(|e| Close::BadFrame(format!("session_id: {e}")))?,
        };
        let store = self.state.ports.store.as_ref();
        if !sessions::may_use(store, &session, &caller.user_id).await.map_err(|e| store_failed(&e))? {
            return Err(Close::NotYours(session));
        }
        Ok((caller, session, after))
    }

    /// Events after `after` until the socket closes, and chat input the other way.
    async fn stream(&mut self, caller: &Caller, session: &SessionId, after: u64) -> Close {
        let settings = self.state.settings.clone();
        let mut last = after;
        if let Err(close) = self.catch_up(caller, session, &mut last, u64::MAX).await {
            return close;
        }
        let mut feed = self.state.feeds.subscribe(session, last);
        let mut heard = Instant::now();
        let mut ping = tokio::time::interval_at(Instant::now() + settings.ping_every, settings.ping_every);
        loop {
            tokio::select! {
                next = feed.recv() => {
                    let result = match next {
                        Ok(frame) => self.deliver(caller, session, &mut last, frame, &mut feed).await,
                        Err(RecvError::Lagged(_)) => Err(Close::TooSlow),
                        // The feed stopped (the Store failed); a reconnect starts a new one.
                        Err(RecvError::Closed) => Err(Close::Unavailable),
                    };
                    if let Err(close) = result {
                        return close;
                    }
                }
                incoming = self.socket.recv() => {
                    let Some(Ok(message)) = incoming else { return Close::ClientGone };
                    heard = Instant::now();
                    match parse(&message) {
                        Ok(Some(ClientFrame::Message { text, client_message_id })) => {
                            let input = ChatInput { text, client_message_id };
                            if let Err(close) = self.submit(caller, session, input).await {
                                return close;
                            }
                        }
                        Ok(Some(ClientFrame::Pong {})) | Ok(None) => {}
                        Ok(Some(ClientFrame::Auth { .. })) => {
                            return Close::BadFrame("already authenticated; reconnect to change session".into());
                        }
                        Err(close) => return close,
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() >= settings.idle_after {
                        return Close::Idle;
                    }
                    if let Err(close) = self.send_control("ping", None).await {
                        return close;
                    }
                }
            }
        }
    }

    /// Sends the Store's events after `last` up to `until`, page by page.
    async fn catch_up(
        &mut self,
        caller: &Caller,
        session: &SessionId,
        last: &mut u64,
        until: u64,
    ) -> Result<(), Close> {
        let store = self.state.ports.store.clone();
        while *last < until {
            let want = usize::try_from(until - *last).unwrap_or(usize::MAX).min(BACKLOG_PAGE);
            let events =
                store.events_after(&caller.scope(), session, *last, want).await.map_err(|e| store_failed(&e))?;
            let Some(newest) = events.last().map(|e| e.seq) else { break };
            for event in &events {
                self.feed_frame(Frame::of(event).text).await?;
            }
            *last = newest;
            self.flush().await?;
            if events.len() < want {
                break;
            }
        }
        Ok(())
    }

    /// Sends `frame` and whatever else the feed has ready, skipping what was sent already and
    /// filling any gap from the Store, then flushes once.
    async fn deliver(
        &mut self,
        caller: &Caller,
        session: &SessionId,
        last: &mut u64,
        frame: Arc<Frame>,
        feed: &mut tokio::sync::broadcast::Receiver<Arc<Frame>>,
    ) -> Result<(), Close> {
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            if frame.seq > *last + 1 {
                self.catch_up(caller, session, last, frame.seq - 1).await?;
            }
            if frame.seq == *last + 1 {
                self.feed_frame(frame.text.clone()).await?;
                *last = frame.seq;
            }
            next = match feed.try_recv() {
                Ok(frame) => Some(frame),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Lagged(_)) => return Err(Close::TooSlow),
                Err(TryRecvError::Closed) => return Err(Close::Unavailable),
            };
        }
        self.flush().await
    }

    async fn submit(&mut self, caller: &Caller, session: &SessionId, input: ChatInput) -> Result<(), Close> {
        let correlation_id = CorrelationId::generate();
        match sessions::submit(&self.state.ports, &caller.user_id, session, input, correlation_id, crate::NAME).await {
            Ok(_) => Ok(()),
            // The socket stays open: the user fixes the message and sends it again.
            Err(e @ (SubmitError::Invalid(_) | SubmitError::Unavailable)) => {
                let code = if matches!(e, SubmitError::Invalid(_)) { "bad_request" } else { "unavailable" };
                self.send_control("error", Some(serde_json::json!({ "code": code, "message": e.to_string() }))).await
            }
            Err(SubmitError::NotYours(session)) => Err(Close::NotYours(session)),
            Err(SubmitError::Store(e)) => Err(store_failed(&e)),
        }
    }

    async fn feed_frame(&mut self, text: Utf8Bytes) -> Result<(), Close> {
        let timeout = self.state.settings.send_timeout;
        match tokio::time::timeout(timeout, self.socket.feed(Message::Text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::ClientGone),
            Err(_) => Err(Close::TooSlow),
        }
    }

    async fn flush(&mut self) -> Result<(), Close> {
        let timeout = self.state.settings.send_timeout;
        match tokio::time::timeout(timeout, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::ClientGone),
            Err(_) => Err(Close::TooSlow),
        }
    }

    async fn send_control(&mut self, kind: &'static str, data: Option<serde_json::Value>) -> Result<(), Close> {
        let frame = ControlFrame {
            kind,
            seq: None,
            ts: self.state.ports.clock.now(),
            session_id: self.session.as_ref(),
            correlation_id: None,
            data,
        };
        let text = serde_json::to_string(&frame).unwrap_or_else(|_| String::from("{}"));
        self.feed_frame(Utf8Bytes::from(text)).await?;
        self.flush().await
    }

    /// Says why (an `error` frame), then closes with the code; a client that left gets nothing.
    async fn close(&mut self, close: Close) {
        if matches!(close, Close::ClientGone) {
            return;
        }
        // A slow client's writes may block: it gets a second, not the whole send timeout.
        let limit = if close == Close::TooSlow { Duration::from_secs(1) } else { self.state.settings.send_timeout };
        if close == Close::TooSlow {
            tracing::info!(session = ?self.session, "a slow client was disconnected");
        }
        let frame = CloseFrame { code: close.code(), reason: Utf8Bytes::from_static("") };
        let said = async {
            if let Some((code, message)) = close.error() {
                let _ = self.send_control("error", Some(serde_json::json!({ "code": code, "message": message }))).await;
            }
            let _ = self.socket.send(Message::Close(Some(frame))).await;
        };
        let _ = tokio::time::timeout(limit, said).await;
    }
}

/// A client frame: `None` for frames that carry nothing to act on (ping, pong, close).
fn parse(message: &Message) -> Result<Option<ClientFrame>, Close> {
    match message {
        Message::Text(text) => serde_json::from_str(text.as_str()).map(Some).map_err(|e| {
            Close::BadFrame(format!("not a client frame ({e}); see docs/protocol.md for auth, message and pong"))
        }),
        Message::Binary(_) => Err(Close::BadFrame("frames are JSON text, not binary".into())),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(None),
    }
}

fn store_failed(e: &StoreError) -> Close {
    tracing::warn!(error = %e, "the relay could not read the store");
    Close::Unavailable
}
