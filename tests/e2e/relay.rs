//! The WebSocket relay as a client sees it (docs/protocol.md): resume without gap or duplicate
//! across reconnects and relay instances, auth refusals, chat over the socket, heartbeat, idle
//! and slow clients.

use crate::support::{TestApp, spawn_app};
use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ports::store::{NewEvent, SessionEventKind, Write};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(base: &str) -> Socket {
    let url = format!("{}/ws/chat", base.replacen("http://", "ws://", 1));
    let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
    socket
}

pub(crate) async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.expect("send a frame");
}

/// The next JSON frame, or the close code the server closed with.
#[derive(Debug)]
enum Received {
    Frame(Value),
    Closed(Option<u16>),
}

async fn receive(socket: &mut Socket) -> Received {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("the relay went silent");
        match next {
            Some(Ok(Message::Text(text))) => return Received::Frame(serde_json::from_str(&text).expect("JSON frame")),
            Some(Ok(Message::Close(frame))) => return Received::Closed(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Received::Closed(None),
        }
    }
}

pub(crate) async fn frame(socket: &mut Socket) -> Value {
    match receive(socket).await {
        Received::Frame(value) => value,
        Received::Closed(code) => panic!("closed ({code:?}) where a frame was expected"),
    }
}

/// Authenticates and returns the socket after `ready`.
pub(crate) async fn join(base: &str, token: &str, session: &str, after: u64) -> Socket {
    let mut socket = connect(base).await;
    send(&mut socket, json!({ "type": "auth", "token": token, "session_id": session, "after": after })).await;
    let ready = frame(&mut socket).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["seq"], Value::Null, "control frames carry no seq");
    socket
}

/// The close code after an `error` frame, and that frame.
async fn refused(socket: &mut Socket) -> (Value, Option<u16>) {
    let error = frame(socket).await;
    assert_eq!(error["type"], "error", "{error}");
    loop {
        if let Received::Closed(code) = receive(socket).await {
            return (error, code);
        }
    }
}

/// `ai_thought` events numbered `first..first + count`, as one append.
fn thoughts(session: &SessionId, owner: &str, first: u64, count: u64) -> Write {
    let events = (first..first + count)
        .map(|n| NewEvent {
            kind: SessionEventKind::AiThought,
            correlation_id: CorrelationId::generate(),
            data: json!({ "text": format!("event {n}") }),
        })
        .collect();
    Write::Append { session: session.clone(), owner: UserId::parse(owner).expect("user id"), events }
}

async fn append(app: &TestApp, session: &SessionId, owner: &str, first: u64, count: u64) {
    app.embedded.ports.store.commit(vec![thoughts(session, owner, first, count)]).await.expect("append");
}

/// A second relay on its own port, on the same adapters: another instance of the function.
async fn relay_instance(app: &TestApp, settings: devgem_relay::RelaySettings) -> String {
    let state = devgem_relay::AppState::new(app.embedded.ports.clone(), app.embedded.identity.clone(), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, devgem_relay::router(state)).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reconnects_during_a_stream_lose_and_repeat_nothing() {
    let app = spawn_app().await;
    let other_instance = relay_instance(&app, Default::default()).await;
    let session = SessionId::generate();
    const TOTAL: u64 = 4_000;
    append(&app, &session, "admin", 1, 1).await;
    let writer = {
        let app_ports = app.embedded.ports.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let mut next = 2;
            while next <= TOTAL {
                let count = (TOTAL + 1 - next).min(1 + next % 7);
                app_ports.store.commit(vec![thoughts(&session, "admin", next, count)]).await.expect("append");
                next += count;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut last = 0;
    for cycle in 0..1_000u64 {
        // Alternate between the two relay instances: neither keeps anything of the client.
        let base = if cycle % 2 == 0 { &app.url } else { &other_instance };
        let mut socket = join(base, &app.admin_token, session.as_str(), last).await;
        // Read a few frames (none at all on some cycles), then drop the connection.
        for _ in 0..(cycle % 5) {
            if last == TOTAL {
                break;
            }
            let event = frame(&mut socket).await;
            let seq = event["seq"].as_u64().expect("an event has a seq");
            assert_eq!(event["session_id"], session.as_str());
            seen.push(seq);
            last = seq;
        }
        if cycle % 3 == 0 {
            let _ = socket.close(None).await;
        }
    }
    writer.await.expect("writer");
    let mut socket = join(&app.url, &app.admin_token, session.as_str(), last).await;
    while last < TOTAL {
        let event = frame(&mut socket).await;
        last = event["seq"].as_u64().expect("seq");
        seen.push(last);
    }
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(seen.len(), expected.len(), "every event exactly once");
    assert_eq!(seen, expected, "in order, without gap or duplicate");
}

#[tokio::test]
async fn sockets_without_a_valid_token_or_with_another_users_session_are_refused() {
    let app = spawn_app().await;
    // No auth frame within the limit.
    let quick = relay_instance(
        &app,
        devgem_relay::RelaySettings { auth_within: Duration::from_millis(300), ..Default::default() },
    )
    .await;
    let mut socket = connect(&quick).await;
    let (error, code) = refused(&mut socket).await;
    assert_eq!((error["data"]["code"].as_str(), code), (Some("auth_timeout"), Some(4408)));

    // A first frame that is not auth.
    let mut socket = connect(&app.url).await;
    send(&mut socket, json!({ "type": "message", "text": "deploy ." })).await;
    let (error, code) = refused(&mut socket).await;
    assert_eq!((error["data"]["code"].as_str(), code), (Some("bad_frame"), Some(4400)));

    // A token nobody was given, and no token at all.
    for auth in
        [json!({ "type": "auth", "token": "dg_not-a-token-of-anyone-here" }), json!({ "type": "auth", "token": "" })]
    {
        let mut socket = connect(&app.url).await;
        send(&mut socket, auth).await;
        let (error, code) = refused(&mut socket).await;
        assert_eq!((error["data"]["code"].as_str(), code), (Some("unauthenticated"), Some(4401)), "{error}");
    }

    // Bob's session is not the admin's, and the admin's is not Bob's.
    let bob = crate::support::api(&app, "POST", "/api/users", Some(json!({ "id": "bob" }))).await;
    let bob_token = bob["token"].as_str().expect("bob's token").to_owned();
    let admins = SessionId::generate();
    append(&app, &admins, "admin", 1, 3).await;
    let mut socket = connect(&app.url).await;
    send(&mut socket, json!({ "type": "auth", "token": bob_token, "session_id": admins.as_str(), "after": 0 })).await;
    let (error, code) = refused(&mut socket).await;
    assert_eq!((error["data"]["code"].as_str(), code), (Some("not_found"), Some(4403)));
    let text = error["data"]["message"].as_str().unwrap_or_default();
    assert!(!text.contains("event"), "nothing of the session leaks: {text}");

    // Bob's own new session works, and he sees only his own events.
    let mut socket = connect(&app.url).await;
    send(&mut socket, json!({ "type": "auth", "token": bob_token })).await;
    let ready = frame(&mut socket).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["data"]["user_id"], "bob");
    let his = ready["session_id"].as_str().expect("a new session's id").to_owned();
    assert_ne!(his, admins.as_str());
}

#[tokio::test]
async fn chat_input_on_the_socket_is_shown_and_answered_on_it() {
    let app = spawn_app().await;
    let mut socket = connect(&app.url).await;
    send(&mut socket, json!({ "type": "auth", "token": app.admin_token })).await;
    let ready = frame(&mut socket).await;
    let session = ready["session_id"].as_str().expect("session id").to_owned();
    send(&mut socket, json!({ "type": "message", "text": "help", "client_message_id": "m-1" })).await;
    let echo = frame(&mut socket).await;
    assert_eq!((echo["type"].as_str(), echo["seq"].as_u64()), (Some("message"), Some(1)), "{echo}");
    assert_eq!(echo["data"], json!({ "role": "user", "text": "help" }));
    assert!(echo["correlation_id"].is_string() && echo["ts"].is_string());
    let reply = frame(&mut socket).await;
    assert_eq!((reply["type"].as_str(), reply["data"]["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(reply["correlation_id"], echo["correlation_id"], "the reply belongs to the turn");
    assert!(reply["data"]["text"].as_str().unwrap_or_default().contains("deploy"), "{reply}");

    // The same message again (a resend after a reconnect) is neither shown nor answered twice.
    send(&mut socket, json!({ "type": "message", "text": "help", "client_message_id": "m-1" })).await;
    // An empty message is refused with a reason, and the socket stays open.
    send(&mut socket, json!({ "type": "message", "text": "  " })).await;
    let error = frame(&mut socket).await;
    assert_eq!((error["type"].as_str(), error["data"]["code"].as_str()), (Some("error"), Some("bad_request")));
    send(&mut socket, json!({ "type": "message", "text": "list", "client_message_id": "m-2" })).await;
    let next = frame(&mut socket).await;
    assert_eq!((next["seq"].as_u64(), next["data"]["text"].as_str()), (Some(3), Some("list")), "m-1 was shown once");
    let events = crate::support::events(&app, &session).await;
    let answered_help = events.iter().filter(|e| e["correlation_id"] == echo["correlation_id"]).count();
    assert_eq!(answered_help, 2, "the echo and one answer: {events:?}");
}

#[tokio::test]
async fn the_relay_pings_and_closes_sockets_that_stop_answering() {
    let app = spawn_app().await;
    let settings = devgem_relay::RelaySettings {
        ping_every: Duration::from_millis(100),
        idle_after: Duration::from_millis(450),
        ..Default::default()
    };
    let relay = relay_instance(&app, settings).await;
    let (mut answering, mut silent) = (
        join(&relay, &app.admin_token, SessionId::generate().as_str(), 0).await,
        join(&relay, &app.admin_token, SessionId::generate().as_str(), 0).await,
    );
    let started = std::time::Instant::now();
    // The silent one only reads: it is closed as idle.
    let silent_end = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            match receive(&mut silent).await {
                Received::Frame(f) if f["type"] == "ping" => pings += 1,
                Received::Frame(f) if f["type"] == "error" => assert_eq!(f["data"]["code"], "idle"),
                Received::Frame(f) => panic!("unexpected {f}"),
                Received::Closed(code) => return (pings, code),
            }
        }
    });
    // The answering one pongs and stays open well past the idle limit.
    while started.elapsed() < Duration::from_millis(1_200) {
        let ping = frame(&mut answering).await;
        assert_eq!(ping["type"], "ping", "{ping}");
        assert_eq!(ping["seq"], Value::Null);
        send(&mut answering, json!({ "type": "pong" })).await;
    }
    let (pings, code) = silent_end.await.expect("silent client");
    assert_eq!(code, Some(4000), "closed as idle");
    assert!(pings >= 3, "it was pinged before ({pings})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_others_keep_streaming() {
    let app = spawn_app().await;
    let settings =
        devgem_relay::RelaySettings { queue: 1_024, send_timeout: Duration::from_millis(500), ..Default::default() };
    let relay = relay_instance(&app, settings).await;
    let session = SessionId::generate();
    append(&app, &session, "admin", 1, 1).await;
    let mut stalled = join(&relay, &app.admin_token, session.as_str(), 0).await;
    let mut reader = join(&relay, &app.admin_token, session.as_str(), 0).await;
    assert_eq!(frame(&mut stalled).await["seq"], 1);
    // Large events fill the stalled client's socket buffers quickly.
    const TOTAL: u64 = 1 + 40 * 250;
    let payload = "x".repeat(2_000);
    let reading = tokio::spawn(async move {
        let mut last = 0;
        while last < TOTAL {
            let event = frame(&mut reader).await;
            let seq = event["seq"].as_u64().expect("seq");
            assert_eq!(seq, last + 1, "the fast reader sees every event in order");
            last = seq;
        }
        last
    });
    for batch in 0..40u64 {
        let events = (0..250)
            .map(|_| NewEvent {
                kind: SessionEventKind::BuildLog,
                correlation_id: CorrelationId::generate(),
                data: json!({ "lines": [payload.clone()], "batch": batch }),
            })
            .collect();
        let owner = UserId::parse("admin").expect("user");
        app.embedded
            .ports
            .store
            .commit(vec![Write::Append { session: session.clone(), owner, events }])
            .await
            .expect("append");
        // Paced so that a client that reads keeps up; the stalled one still falls behind.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), reading).await.expect("reader done").expect("reader"),
        TOTAL
    );
    // Now the stalled client reads: what it gets ends with the connection closed early.
    let mut got = 1;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next()).await.expect("the relay dropped it") {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).expect("JSON");
                if let Some(seq) = event["seq"].as_u64() {
                    assert_eq!(seq, got + 1, "what it got was in order");
                    got = seq;
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(got < TOTAL, "the stalled client was cut off ({got} of {TOTAL})");
    assert!(matches!(code, None | Some(CloseCode::Library(4429))), "{code:?}");
    // It resumes from where it got to.
    let mut resumed = join(&relay, &app.admin_token, session.as_str(), got).await;
    assert_eq!(frame(&mut resumed).await["seq"], got + 1);
}
