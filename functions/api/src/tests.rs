//! The API's routes, driven with `oneshot` on the embedded store: authentication and the owner
//! filter on every read, every route's answers and errors, and the OpenAPI document's coverage.

use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use devgem_common::clock::SystemClock;
use devgem_common::events::log_entry::LogEntry;
use devgem_common::ids::{CorrelationId, DeploymentId, ServiceName, SessionId, UserId};
use devgem_common::model::deployment::{Deployment, DeploymentState, NewDeployment};
use devgem_common::ports::runtime::{RevisionInfo, RevisionSpec, RuntimeError};
use devgem_common::ports::source::{SourceLocation, SourceSpec};
use devgem_common::ports::store::{DocKey, NewEvent, Scope, SessionEventKind, StoreExt, Write};
use devgem_infra::local::{LocalBlobs, LocalBus, LocalStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// A live env as the fake runtime answers it: the env, or the error's message.
type LiveEnv =
    Result<std::collections::BTreeMap<devgem_common::ids::EnvVarName, devgem_common::ports::runtime::EnvValue>, String>;

/// A runtime that only has logs: the lines given, per revision, and the last limit asked for;
/// and, when set, the service's env as it runs (`live_env`; `None`: the default, no env of its
/// own).
#[derive(Debug, Default)]
struct FakeRuntime {
    lines: Mutex<Vec<LogEntry>>,
    asked: Mutex<Option<usize>>,
    live: Mutex<Option<LiveEnv>>,
}

impl FakeRuntime {
    fn add(&self, revision: &str, stream: &str, text: &str) {
        let entry = json!({
            "logName": format!("projects/local/logs/run.googleapis.com%2F{stream}"),
            "resource": { "type": "cloud_run_revision", "labels": { "revision_name": revision } },
            "timestamp": Utc::now(),
            "textPayload": text,
        });
        let entry = LogEntry::decode(entry.to_string().as_bytes()).expect("a log entry");
        self.lines.lock().expect("lock").push(entry);
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn create_revision(&self, _: RevisionSpec) -> Result<RevisionInfo, RuntimeError> {
        Err(RuntimeError::Unavailable("not in these tests".into()))
    }
    async fn route_traffic(&self, _: &UserId, _: &ServiceName, _: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unavailable("not in these tests".into()))
    }
    async fn verify(&self, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn logs(
        &self,
        _: &UserId,
        _: &ServiceName,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, RuntimeError> {
        *self.asked.lock().expect("lock") = Some(limit);
        let lines = self.lines.lock().expect("lock");
        let mine: Vec<LogEntry> =
            lines.iter().filter(|e| revision.is_none_or(|r| e.revision_name() == Some(r))).cloned().collect();
        Ok(mine[mine.len().saturating_sub(limit)..].to_vec())
    }
    async fn service_url(&self, _: &UserId, _: &ServiceName) -> Result<String, RuntimeError> {
        Err(RuntimeError::Unavailable("not in these tests".into()))
    }
    async fn delete_revision(&self, _: &UserId, _: &ServiceName, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn live_env(
        &self,
        _: &UserId,
        _: &ServiceName,
    ) -> Result<
        Option<std::collections::BTreeMap<devgem_common::ids::EnvVarName, devgem_common::ports::runtime::EnvValue>>,
        RuntimeError,
    > {
        match self.live.lock().expect("lock").clone() {
            None => Ok(None),
            Some(Ok(env)) => Ok(Some(env)),
            Some(Err(message)) => Err(RuntimeError::Unavailable(message)),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    admin_token: String,
    bus: LocalBus,
    runtime: Arc<FakeRuntime>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(SystemClock);
    let store = Arc::new(LocalStore::open(&dir.path().join("store.db"), clock.clone()).expect("store"));
    let bus = LocalBus::open(&dir.path().join("bus.db"), clock.clone()).expect("bus");
    let ports = Ports {
        store: store.clone(),
        bus: Arc::new(bus.clone()),
        blobs: Arc::new(LocalBlobs::open(&dir.path().join("blobs")).expect("blobs")),
        clock: clock.clone(),
    };
    let identity = Identity::new(store, clock);
    let admin_token = identity.ensure_admin(None).await.expect("admin").expect("created now");
    let secrets = Arc::new(devgem_infra::local::LocalSecrets::open(
        dir.path().join("secrets.json"),
        &dir.path().join("secrets.key"),
    ));
    let runtime = Arc::new(FakeRuntime::default());
    let state =
        AppState { ports, identity, secrets, runtime: runtime.clone(), chat_wait: std::time::Duration::from_secs(10) };
    Fixture { _dir: dir, state, admin_token: admin_token.expose().to_owned(), bus, runtime }
}

/// A second user, and their token.
async fn user(f: &Fixture, id: &str) -> String {
    let (status, created) = call(&f.state, "POST", "/api/users", Some(&f.admin_token), Some(json!({"id": id}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["token"].as_str().expect("token shown once").to_owned()
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = router(state.clone()).oneshot(request.body(body).expect("request")).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A request with a raw body (or none) and its answer, headers included.
async fn raw(state: &AppState, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = router(state.clone()).oneshot(request).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

async fn seed_deployment(state: &AppState, owner: &str, name: &str) -> DeploymentId {
    seed(state, owner, name, |_| {}).await.id
}

/// A deployment of `owner`'s service `name`, as `change` leaves it.
async fn seed(state: &AppState, owner: &str, name: &str, change: impl FnOnce(&mut Deployment)) -> Deployment {
    let id = DeploymentId::generate();
    let mut deployment = Deployment::new(
        NewDeployment {
            id: id.clone(),
            owner: UserId::parse(owner).expect("owner"),
            session_id: SessionId::generate(),
            correlation_id: CorrelationId::generate(),
            source: SourceSpec {
                location: SourceLocation::Git { url: format!("https://github.com/o/{name}") },
                git_ref: None,
            },
            service: ServiceName::derive_from(name),
        },
        Utc::now(),
    );
    change(&mut deployment);
    let key = DocKey::new("deployments", id.as_str()).expect("key");
    state.ports.store.create(key, deployment.owner.clone(), &deployment).await.expect("seed");
    deployment
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let f = fixture().await;
    let (status, body) = call(&f.state, "GET", "/api/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("devgem token create"), "says what to do: {body}");
    let (status, _) = call(&f.state, "GET", "/api/me", Some("dg_not-a-real-token-at-all"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&f.state, "GET", "/api/me", Some(&f.admin_token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"user_id": "admin", "admin": true}));
    let (status, _) = call(&f.state, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "the probe needs no token");
}

#[tokio::test]
async fn a_user_never_sees_another_users_documents() {
    let f = fixture().await;
    let (status, bob) = call(&f.state, "POST", "/api/users", Some(&f.admin_token), Some(json!({"id": "bob"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let bob_token = bob["token"].as_str().expect("token shown once").to_owned();

    let admins = seed_deployment(&f.state, "admin", "admin-app").await;
    let bobs = seed_deployment(&f.state, "bob", "bob-app").await;

    let (_, list) = call(&f.state, "GET", "/api/deployments", Some(&bob_token), None).await;
    let ids: Vec<&str> = list.as_array().expect("list").iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, [bobs.as_str()], "bob sees only his own");
    let (status, _) = call(&f.state, "GET", &format!("/api/deployments/{admins}"), Some(&bob_token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another user's deployment does not exist for bob");
    let (status, own) = call(&f.state, "GET", &format!("/api/deployments/{bobs}"), Some(&bob_token), None).await;
    assert_eq!((status, own["owner"].as_str()), (StatusCode::OK, Some("bob")));

    // Session events are filtered the same way.
    let session = SessionId::parse("admin-session").expect("id");
    f.state
        .ports
        .store
        .commit(vec![Write::Append {
            session: session.clone(),
            owner: UserId::admin(),
            events: vec![NewEvent {
                kind: SessionEventKind::Message,
                correlation_id: CorrelationId::generate(),
                data: json!({"text": "secret plans"}),
            }],
        }])
        .await
        .expect("append");
    let (_, events) = call(&f.state, "GET", "/api/sessions/admin-session/events", Some(&bob_token), None).await;
    assert_eq!(events, json!([]));
    let (_, events) = call(&f.state, "GET", "/api/sessions/admin-session/events", Some(&f.admin_token), None).await;
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["type"], "message");

    // Bob cannot create users nor tokens for others.
    let (status, _) = call(&f.state, "POST", "/api/users", Some(&bob_token), Some(json!({"id": "eve"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&f.state, "POST", "/api/users/admin/tokens", Some(&bob_token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, more) = call(&f.state, "POST", "/api/users/bob/tokens", Some(&bob_token), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(&f.state, "GET", "/api/me", more["token"].as_str(), None).await;
    assert_eq!(status, StatusCode::OK, "the second token works too");
}

#[tokio::test]
async fn bad_input_gets_an_actionable_error_and_stores_nothing() {
    let f = fixture().await;
    let (status, body) =
        call(&f.state, "POST", "/api/users", Some(&f.admin_token), Some(json!({"id": "no/slash"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("A-Z"), "{body}");
    let (status, _) = call(&f.state, "POST", "/api/users", Some(&f.admin_token), Some(json!({"id": "admin"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "an existing user is not overwritten");
    let (status, body) = call(&f.state, "POST", "/api/users", Some(&f.admin_token), Some(json!({"idd": "x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("invalid JSON"), "{body}");
    let (status, _) = call(&f.state, "GET", "/api/deployments/..%2Fx", Some(&f.admin_token), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let admin = f
        .state
        .ports
        .store
        .get_typed::<Value>(&devgem_common::ports::store::Scope::All, &DocKey::new("users", "admin").expect("key"))
        .await;
    assert_eq!(admin.expect("read").expect("admin kept").1, 1, "admin untouched");
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes_served() {
    let f = fixture().await;
    let (status, doc) = call(&f.state, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "served without a token");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({
            "type": "http", "scheme": "bearer",
            "description": "A DevGem token (`dg_...`), only in the Authorization header."
        })
    );
    assert_eq!(doc["components"]["schemas"]["Error"]["required"], json!(["error"]));

    let paths = doc["paths"].as_object().expect("paths");
    let documented: std::collections::BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().into_iter().flatten().map(move |(method, _)| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: std::collections::BTreeSet<(String, String)> =
        ROUTES.iter().map(|r| (r.method.to_owned(), r.path.to_owned())).collect();
    assert_eq!(documented, served, "the document and the router list the same routes");

    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.to_lowercase()];
        assert_eq!(
            op["security"] == json!([]),
            !route.auth,
            "{} {}: security as the router has it",
            route.method,
            route.path
        );
        if route.auth {
            assert!(op["responses"]["401"].is_object(), "{} {} documents 401", route.method, route.path);
        }
        assert!(op["responses"]["405"].is_object(), "{} {} documents 405", route.method, route.path);
        // The router serves it: whatever it answers, it is not the answer for an unknown route.
        let uri = route.path.replace("{id}", "nope").replace("{name}", "nope");
        let (status, body) = call(&f.state, route.method, &uri, Some(&f.admin_token), None).await;
        assert_ne!(body["error"]["code"], "no_route", "{} {} is served: {body}", route.method, route.path);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{} {}", route.method, route.path);
    }

    // Every reference in the document resolves.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| match (k.as_str(), v) {
                ("$ref", Value::String(r)) => out.push(r),
                _ => refs(v, out),
            }),
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 50, "the document uses its components");
    for reference in found {
        let pointer = reference.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "{reference} resolves");
    }
}

#[tokio::test]
async fn every_bearer_route_refuses_a_missing_or_wrong_token() {
    let f = fixture().await;
    for route in ROUTES.iter().filter(|r| r.auth) {
        let uri = route.path.replace("{id}", "x").replace("{name}", "x");
        for token in [None, Some("dg_not-a-real-token-at-all")] {
            let (status, body) = call(&f.state, route.method, &uri, token, Some(json!({"text": "hi"}))).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                "{} {} with {token:?}: {body}",
                route.method,
                route.path
            );
        }
    }
    for path in ["/health", "/healthz"] {
        let (status, body) = call(&f.state, "GET", path, None, None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"function": "api", "ok": true})), "{path}");
    }
}

#[tokio::test]
async fn every_error_is_json_with_a_code_and_what_to_do() {
    let f = fixture().await;
    let token = Some(f.admin_token.as_str());
    for uri in ["/api/nope", "/api", "/api/deployments/x/nope", "/nope"] {
        let (status, body) = call(&f.state, "GET", uri, token, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("no_route")),
            "{uri}: {body}"
        );
        assert!(message(&body).contains("GET /api/openapi.json"), "{body}");
    }
    let (status, _) = call(&f.state, "GET", "/api/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an unknown route is unknown with or without a token");
    // `devgem up` hands what the api does not serve to the relay: `/api/*` stays the api's.
    let relay = axum::Router::new().fallback(|| async { "the relay" });
    let up = router(f.state.clone()).fallback_service(relay);
    for (uri, relayed) in [("/api/nope", false), ("/api", false), ("/", true), ("/ui/app.js", true)] {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let response = up.clone().oneshot(request).await.expect("infallible");
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(bytes == "the relay", relayed, "{uri}: {bytes:?}");
    }

    let delete = |uri: &str, token: &str| {
        Request::delete(uri).header("authorization", format!("Bearer {token}")).body(Body::empty()).expect("request")
    };
    let (status, headers, body) = raw(&f.state, delete("/api/deployments", &f.admin_token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
    let allow = headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow is kept: {allow:?}");
    assert!(message(&body).contains("/api/deployments does not take DELETE; it takes GET, POST"), "{body}");
    let (status, _, body) = raw(&f.state, Request::post("/health").body(Body::empty()).expect("request")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
    assert!(message(&body).ends_with("it takes GET"), "{body}");
    let uri = format!("/api/deployments/{}/env", DeploymentId::generate());
    let (status, _, body) = raw(&f.state, delete(&uri, &f.admin_token)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(message(&body).ends_with("it takes GET, POST"), "path parameters match any id: {body}");

    // Over the size limit: through the JSON extractor and through a raw body alike.
    let big = json!({ "source": "x".repeat(MAX_BODY + 1) }).to_string();
    for uri in ["/api/deployments", "/api/services/web/rollback"] {
        let request = Request::post(uri)
            .header("authorization", format!("Bearer {}", f.admin_token))
            .header("content-type", "application/json")
            .body(Body::from(big.clone()))
            .expect("request");
        let (status, _, body) = raw(&f.state, request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
            "{uri}"
        );
        assert!(message(&body).contains("256 KiB"), "{body}");
    }

    let post = |uri: &str, content_type: Option<&str>, body: &'static str| {
        let mut request = Request::post(uri).header("authorization", format!("Bearer {}", f.admin_token));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(Body::from(body)).expect("request")
    };
    let (status, _, body) = raw(&f.state, post("/api/deployments", Some("application/json"), "{not json")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert!(message(&body).contains("invalid JSON"), "{body}");
    let (status, _, body) = raw(&f.state, post("/api/services/web/rollback", None, "{not json")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    let (status, _, body) = raw(&f.state, post("/chat", Some("text/plain"), "hello")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(message(&body).contains("Content-Type: application/json"), "{body}");
    let (status, body) = call(&f.state, "GET", "/api/deployments?limit=many", token, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert!(message(&body).contains("limit"), "the framework's rejection, as JSON: {body}");
}

/// Subscribes a stand-in chat to `chat-turns`: it answers every turn under the turn's
/// correlation id, after a message with another id that must not be taken for the reply.
async fn stand_in_chat(f: &Fixture) {
    use axum::routing::post;
    use devgem_common::envelope::PushRequest;
    use devgem_common::events::ChatTurn;
    use devgem_common::handler::{HandlerError, handle_push};
    let store = f.state.ports.store.clone();
    let chat = axum::Router::new().route(
        "/push/chat-turns",
        post(move |request: PushRequest| {
            let store = store.clone();
            async move {
                let writer = store.clone();
                handle_push::<ChatTurn, _, _>(store.as_ref(), Utc::now(), request, |envelope| async move {
                    let correlation_id =
                        envelope.event.and_then(|m| m.correlation_id).ok_or(HandlerError::Poison("no id".into()))?;
                    let turn = envelope.payload;
                    let reply = |correlation_id, text: String| NewEvent {
                        kind: SessionEventKind::Message,
                        correlation_id,
                        data: json!({ "role": "assistant", "text": text }),
                    };
                    let events = vec![
                        reply(CorrelationId::generate(), "an answer to something else".into()),
                        reply(correlation_id, format!("you said: {}", turn.text)),
                    ];
                    writer
                        .commit(vec![Write::Append { session: turn.session_id, owner: turn.user_id, events }])
                        .await?;
                    Ok(())
                })
                .await
            }
        }),
    );
    let config = devgem_infra::local::SubscriptionConfig::new(
        "chat-turns",
        devgem_common::events::Topic::ChatTurns,
        "/push/chat-turns",
    );
    f.bus.subscribe(config, chat).await.expect("subscribe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_with_the_reply_to_its_own_message() {
    let f = fixture().await;
    stand_in_chat(&f).await;
    let token = Some(f.admin_token.as_str());
    let (status, body) =
        call(&f.state, "POST", "/chat", token, Some(json!({"text": "hello there", "session_id": "s-chat"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["session_id"], "s-chat");
    assert_eq!(body["reply"]["text"], "you said: hello there", "the reply to this message, not another: {body}");
    assert_eq!(body["reply"]["seq"], 3);
    assert_eq!(body["events"], "/api/sessions/s-chat/events?after=1");
    let (_, events) = call(&f.state, "GET", "/api/sessions/s-chat/events", token, None).await;
    assert_eq!(events[0]["data"], json!({"role": "user", "text": "hello there"}));
    assert_eq!(events[0]["correlation_id"], body["correlation_id"]);
    assert_eq!(events[2]["correlation_id"], body["correlation_id"]);

    // The same session goes on; without one, a new session starts.
    let (status, again) =
        call(&f.state, "POST", "/chat", token, Some(json!({"text": "more", "session_id": "s-chat"}))).await;
    assert_eq!((status, again["reply"]["seq"].as_u64()), (StatusCode::OK, Some(6)), "{again}");
    let (status, fresh) = call(&f.state, "POST", "/chat", token, Some(json!({"text": "hi"}))).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    let fresh_session = fresh["session_id"].as_str().expect("a session id");
    assert_ne!(fresh_session, "s-chat");
    assert_eq!(fresh["events"], format!("/api/sessions/{fresh_session}/events?after=1"));

    // Another user's session is not there for bob; bad input is refused before anything is shown.
    let bob = user(&f, "bob").await;
    let (status, body) =
        call(&f.state, "POST", "/chat", Some(&bob), Some(json!({"text": "hi", "session_id": "s-chat"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");
    let (status, body) = call(&f.state, "POST", "/chat", Some(&bob), Some(json!({"text": "  "}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("1 to 8192 bytes"), "{body}");
    let (status, body) =
        call(&f.state, "POST", "/chat", Some(&bob), Some(json!({"text": "x", "session_id": "no/slash"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, events) = call(&f.state, "GET", "/api/sessions/s-chat/events", token, None).await;
    assert_eq!(events.as_array().map(Vec::len), Some(6), "bob wrote nothing in it");
}

#[tokio::test]
async fn chat_answers_202_with_where_to_follow_when_the_reply_is_late() {
    let mut f = fixture().await;
    f.state.chat_wait = std::time::Duration::from_millis(200);
    let token = Some(f.admin_token.as_str());
    let (status, body) = call(&f.state, "POST", "/chat", token, Some(json!({"text": "anyone there?"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body.get("reply").is_none(), "{body}");
    let session = body["session_id"].as_str().expect("session");
    assert_eq!(body["events"], format!("/api/sessions/{session}/events?after=1"));
    let (_, events) = call(&f.state, "GET", &format!("/api/sessions/{session}/events"), token, None).await;
    assert_eq!(events[0]["data"]["text"], "anyone there?", "the message is in the session");
}

#[tokio::test]
async fn stats_count_a_users_own_things_and_everything_for_the_admin() {
    let f = fixture().await;
    let bob = user(&f, "bob").await;
    let _carol = user(&f, "carol").await;
    let t0 = Utc::now();
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    seed(&f.state, "bob", "web", |d| {
        d.state = DeploymentState::Live;
        d.build_finished("b1", at(0), at(90), "FAILURE");
        d.build_finished("b2", at(100), at(130), "SUCCESS");
    })
    .await;
    seed(&f.state, "bob", "api", |d| d.state = DeploymentState::Failed).await;
    seed(&f.state, "admin", "site", |d| {
        d.state = DeploymentState::Live;
        d.build_finished("b3", at(0), at(60), "SUCCESS");
    })
    .await;
    let append = |session: &str, owner: &str, n: u64| Write::Append {
        session: SessionId::parse(session).expect("id"),
        owner: UserId::parse(owner).expect("id"),
        events: (0..n)
            .map(|i| NewEvent {
                kind: SessionEventKind::Message,
                correlation_id: CorrelationId::generate(),
                data: json!({ "n": i }),
            })
            .collect(),
    };
    f.state.ports.store.commit(vec![append("bob-s", "bob", 3), append("admin-s", "admin", 2)]).await.expect("events");

    let (status, mine) = call(&f.state, "GET", "/stats", Some(&bob), None).await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!((mine["scope"].as_str(), mine["user_id"].as_str()), (Some("user"), Some("bob")));
    assert_eq!(mine["deployments"]["total"], 2);
    assert_eq!(mine["deployments"]["by_state"]["live"], 1);
    assert_eq!(mine["deployments"]["by_state"]["failed"], 1);
    assert_eq!(mine["deployments"]["by_state"]["building"], 0, "every state is listed");
    assert_eq!((mine["builds"].as_u64(), mine["build_minutes"].as_f64()), (Some(2), Some(2.0)), "90 s + 30 s");
    assert_eq!(mine["events"], 3);
    assert!(mine.get("dead_letters").is_none() && mine.get("users").is_none(), "users see their own only: {mine}");

    let (status, all) = call(&f.state, "GET", "/stats", Some(&f.admin_token), None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["scope"], "all");
    assert_eq!(all["deployments"]["total"], 3);
    assert_eq!(all["deployments"]["by_state"]["live"], 2);
    assert_eq!((all["builds"].as_u64(), all["build_minutes"].as_f64()), (Some(3), Some(3.0)));
    assert_eq!(all["events"], 5);
    assert_eq!(all["dead_letters"], 0, "the bus's count");
    assert_eq!(all["users"]["bob"]["builds"], 2);
    assert_eq!(all["users"]["admin"]["events"], 2);
    assert_eq!(all["users"]["carol"]["deployments"]["total"], 0, "a user with nothing is listed");
    assert_eq!(all["users"]["carol"]["events"], 0);
}

#[tokio::test]
async fn logs_are_the_revisions_lines_with_the_build_log_and_need_a_revision() {
    use devgem_common::model::deployment::{Failure, FailureCause, Stage};
    use devgem_common::ports::blobs::BlobsExt;
    let f = fixture().await;
    let token = Some(f.admin_token.as_str());
    let live = seed(&f.state, "admin", "web", |d| {
        d.state = DeploymentState::Live;
        d.revision = Some("web-r1".into());
        d.build_id = Some("b1".into());
    })
    .await;
    f.runtime.add("web-r0", "stdout", "an older revision's line");
    f.runtime.add("web-r1", "stdout", "Listening at: http://0.0.0.0:8080");
    f.runtime.add("web-r1", "stderr", "GET / 200");
    let key = devgem_common::ports::builder::log_blob_key("b1").expect("key");
    f.state.ports.blobs.put_bytes(&key, axum::body::Bytes::from_static(b"step 1\nstep 2\n")).await.expect("blob");

    let uri = format!("/api/deployments/{}/logs", live.id);
    let (status, body) = call(&f.state, "GET", &uri, token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["deployment_id"].as_str(), body["revision"].as_str()), (Some(live.id.as_str()), Some("web-r1")));
    let lines: Vec<(&str, &str)> = body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| (l["stream"].as_str().unwrap_or("-"), l["text"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(lines, [("stdout", "Listening at: http://0.0.0.0:8080"), ("stderr", "GET / 200")], "this revision's");
    assert!(body["lines"][0]["ts"].is_string());
    assert_eq!(body["build_log"], json!(["step 1", "step 2"]));
    assert_eq!(*f.runtime.asked.lock().expect("lock"), Some(200), "200 lines by default");
    let (_, body) = call(&f.state, "GET", &format!("{uri}?limit=1"), token, None).await;
    assert_eq!(body["lines"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["lines"][0]["text"], "GET / 200", "the last ones");
    call(&f.state, "GET", &format!("{uri}?limit=100000"), token, None).await;
    assert_eq!(*f.runtime.asked.lock().expect("lock"), Some(2000), "at most 2000");

    // Before a revision: 409, with the build's last lines.
    let building = seed(&f.state, "admin", "api", |d| d.state = DeploymentState::Building).await;
    let (status, body) = call(&f.state, "GET", &format!("/api/deployments/{}/logs", building.id), token, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("not_deployed")), "{body}");
    assert!(message(&body).contains("once it is deployed"), "{body}");
    assert_eq!(body["build_log"], json!([]));
    let failed = seed(&f.state, "admin", "api", |d| {
        d.state = DeploymentState::Failed;
        d.failure = Some(Failure {
            cause: FailureCause::BuildFailed,
            stage: Some(Stage::Build),
            message: "the build failed".into(),
            log_tail: vec!["error: no such file".into()],
        });
    })
    .await;
    let (status, body) = call(&f.state, "GET", &format!("/api/deployments/{}/logs", failed.id), token, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message(&body).contains("ended failed before a revision ran"), "{body}");
    assert_eq!(body["build_log"], json!(["error: no such file"]));

    let bob = user(&f, "bob").await;
    let (status, body) = call(&f.state, "GET", &uri, Some(&bob), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    assert!(body.get("lines").is_none());
}

#[tokio::test]
async fn env_shows_values_never_secrets_and_a_change_deploys_again() {
    let f = fixture().await;
    let token = Some(f.admin_token.as_str());
    let base = seed(&f.state, "admin", "web", |d| {
        d.state = DeploymentState::Live;
        d.env.insert("MODE".into(), "fast".into());
    })
    .await;
    let (status, body) = call(&f.state, "GET", &format!("/api/deployments/{}/env", base.id), token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"], "web");
    assert_eq!(body["vars"], json!([{"name": "MODE", "value": "fast", "secret": false}]));

    let change = json!({"set": {"DEBUG": "1"}, "secrets": {"STRIPE_KEY": "sk_live_hush"}});
    let (status, started) =
        call(&f.state, "POST", &format!("/api/deployments/{}/env", base.id), token, Some(change)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(
        (started["service"].as_str(), started["session_id"].as_str()),
        (Some("web"), Some(base.session_id.as_str()))
    );
    let second = started["deployment_id"].as_str().expect("a new deployment").to_owned();
    assert_ne!(second, base.id.as_str());
    let (_, body) = call(&f.state, "GET", &format!("/api/deployments/{second}/env"), token, None).await;
    assert_eq!(
        body["vars"],
        json!([
            {"name": "DEBUG", "value": "1", "secret": false},
            {"name": "MODE", "value": "fast", "secret": false},
            {"name": "STRIPE_KEY", "value": null, "secret": true, "version": 1},
        ]),
        "the change on top of what it ran with"
    );
    let (_, deployment) = call(&f.state, "GET", &format!("/api/deployments/{second}"), token, None).await;
    for shown in [&body, &deployment] {
        assert!(!shown.to_string().contains("sk_live_hush"), "a secret value is never returned: {shown}");
    }
    for doc in f
        .state
        .ports
        .store
        .query(&Scope::All, &devgem_common::ports::store::Query::collection("deployments"))
        .await
        .expect("docs")
    {
        assert!(!doc.data.to_string().contains("sk_live_hush"), "no document holds it");
    }

    // Unsetting keeps the rest, secrets included, without anyone typing them again.
    let (status, third) =
        call(&f.state, "POST", &format!("/api/deployments/{second}/env"), token, Some(json!({"unset": ["MODE"]})))
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{third}");
    let third = third["deployment_id"].as_str().expect("id").to_owned();
    let (_, body) = call(&f.state, "GET", &format!("/api/deployments/{third}/env"), token, None).await;
    let names: Vec<&str> = body["vars"].as_array().expect("vars").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["DEBUG", "STRIPE_KEY"]);

    // What is refused, and why.
    let uri = format!("/api/deployments/{}/env", base.id);
    for (change, says) in [
        (json!({}), r#"send {"set": {"NAME": "value"}}"#),
        (json!({"set": {}, "unset": []}), "nothing to change"),
        (json!({"set": {"1BAD": "x"}}), "invalid env var name"),
        (json!({"secrets": {"PORT": "1"}}), "set by the runtime"),
        (json!({"unset": ["NOPE"]}), "NOPE is not set on web; its variables: MODE"),
        (json!({"set": {"A": "1"}, "unset": ["A"]}), "A is named twice"),
        (json!({"sett": {"A": "1"}}), "invalid JSON"),
        (json!({"set": {"A": "1"}, "session_id": "no/slash"}), "invalid session id"),
    ] {
        let (status, body) = call(&f.state, "POST", &uri, token, Some(change.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{change}: {body}");
        assert!(message(&body).contains(says), "{change}: {body}");
    }

    // Another user's deployment does not exist for bob, and nothing starts.
    let bob = user(&f, "bob").await;
    let (status, _) = call(&f.state, "GET", &uri, Some(&bob), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&f.state, "POST", &uri, Some(&bob), Some(json!({"set": {"A": "1"}}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, all) = call(&f.state, "GET", "/api/deployments", token, None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(3), "the base and the two changes, nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_its_service_back() {
    use devgem_common::events::ControlEvent;
    use devgem_common::model::service::{Revision, Service};
    let f = fixture().await;
    let token = Some(f.admin_token.as_str());
    let first = seed(&f.state, "admin", "web", |d| d.revision = Some("web-1".into())).await;
    let second = seed(&f.state, "admin", "web", |d| d.revision = Some("web-2".into())).await;
    let mut service = Service::new(UserId::admin(), ServiceName::derive_from("web"));
    for d in [&first, &second] {
        let name = d.revision.clone().expect("revision");
        let revision =
            Revision { name: name.clone(), deployment_id: d.id.clone(), image: "img".into(), created_at: Utc::now() };
        service.add_revision(revision).expect("new");
        service.route_to(&name).expect("known");
    }
    let key = DocKey::new("services", Service::doc_id(&UserId::admin(), &service.name)).expect("key");
    f.state.ports.store.create(key, UserId::admin(), &service).await.expect("service");

    // What the deploy function receives.
    let (sent, mut received) = tokio::sync::mpsc::unbounded_channel();
    let store = f.state.ports.store.clone();
    let deploy = axum::Router::new().route(
        "/push/control",
        axum::routing::post(move |request: devgem_common::envelope::PushRequest| {
            let (store, sent) = (store.clone(), sent.clone());
            async move {
                devgem_common::handler::handle_push::<ControlEvent, _, _>(
                    store.as_ref(),
                    Utc::now(),
                    request,
                    |e| async move {
                        let _ = sent.send(e.payload);
                        Ok(())
                    },
                )
                .await
            }
        }),
    );
    let config = devgem_infra::local::SubscriptionConfig::new(
        "deploy-control",
        devgem_common::events::Topic::Control,
        "/push/control",
    );
    f.bus.subscribe(config, deploy).await.expect("subscribe");

    let uri = format!("/api/deployments/{}/rollback", second.id);
    let (status, body) = call(&f.state, "POST", &uri, token, None).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({"service": "web", "to": "web-1"})));
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), received.recv()).await.expect("in time");
    let Some(ControlEvent::Rollback(rollback)) = event else { panic!("a rollback: {event:?}") };
    assert_eq!(rollback.to_revision.as_deref(), Some("web-1"));
    assert_eq!(rollback.session_id.as_ref(), Some(&second.session_id), "reported in the deployment's session");

    let (status, body) = call(&f.state, "POST", &uri, token, Some(json!({"to": "web-2"}))).await;
    assert_eq!((status, body["to"].as_str()), (StatusCode::ACCEPTED, Some("web-2")));
    let (status, body) = call(&f.state, "POST", &uri, token, Some(json!({"to": "web-9"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("web-1, web-2"), "names the revisions there are: {body}");
    let (status, body) = call(&f.state, "POST", &uri, token, Some(json!({"too": "web-1"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let lonely = seed(&f.state, "admin", "lonely", |_| {}).await;
    let (status, body) = call(&f.state, "POST", &format!("/api/deployments/{}/rollback", lonely.id), token, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("not_serving")), "{body}");

    let bob = user(&f, "bob").await;
    let (status, _) = call(&f.state, "POST", &uri, Some(&bob), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Makes `deployment`'s revision the one serving its service.
async fn serve(state: &AppState, deployment: &Deployment) {
    use devgem_common::model::service::{Revision, Service};
    let revision = deployment.revision.clone().expect("a revision");
    let mut service = Service::new(deployment.owner.clone(), deployment.service.clone());
    let entry = Revision {
        name: revision.clone(),
        deployment_id: deployment.id.clone(),
        image: "img".into(),
        created_at: Utc::now(),
    };
    service.add_revision(entry).expect("new");
    service.route_to(&revision).expect("known");
    let key = DocKey::new("services", Service::doc_id(&deployment.owner, &service.name)).expect("key");
    state.ports.store.create(key, deployment.owner.clone(), &service).await.expect("service");
}

#[tokio::test]
async fn env_shows_what_changed_outside_devgem_and_a_change_keeps_it() {
    use devgem_common::ids::EnvVarName;
    use devgem_common::ports::runtime::EnvValue;
    use devgem_common::ports::secrets::SecretValue;
    let f = fixture().await;
    let token = Some(f.admin_token.as_str());
    let api_key = f.state.secrets.put("admin--web--API_KEY", SecretValue::new("first-key")).await.expect("put");
    let live = seed(&f.state, "admin", "web", |d| {
        d.state = DeploymentState::Live;
        d.revision = Some("web-1".into());
        d.env.insert("MODE".into(), "fast".into());
        d.env.insert("GONE".into(), "1".into());
        d.secret_env.insert("API_KEY".into(), api_key.clone());
    })
    .await;
    serve(&f.state, &live).await;
    let uri = format!("/api/deployments/{}/env", live.id);

    // Nothing changed yet: the stored view, checked.
    let (status, body) = call(&f.state, "GET", &uri, token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["vars"],
        json!([
            {"name": "API_KEY", "value": null, "secret": true, "version": 1},
            {"name": "GONE", "value": "1", "secret": false},
            {"name": "MODE", "value": "fast", "secret": false},
        ])
    );
    assert_eq!(body["sync"]["secrets"], "compared");
    assert_eq!(body["sync"]["live_env"], "not_compared", "the runtime keeps no env of its own yet: {body}");

    // Outside DevGem: a new version of the secret, and the service's env edited on the runtime.
    let rotated = f.state.secrets.put("admin--web--API_KEY", SecretValue::new("rotated-key")).await.expect("put");
    assert_eq!(rotated.version, 2);
    let name = |n: &str| EnvVarName::parse(n).expect("name");
    let outside = [
        (name("API_KEY"), EnvValue::Secret(api_key.clone())),
        (name("MODE"), EnvValue::Plain("slow".into())),
        (name("EXTRA"), EnvValue::Plain("added by hand".into())),
    ];
    *f.runtime.live.lock().expect("lock") = Some(Ok(outside.into_iter().collect()));
    let (status, body) = call(&f.state, "GET", &uri, token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["vars"],
        json!([
            {"name": "API_KEY", "value": null, "secret": true, "version": 1, "latest_version": 2,
             "changed_outside": true, "outside": "new_secret_version"},
            {"name": "EXTRA", "value": "added by hand", "secret": false, "changed_outside": true, "outside": "added"},
            {"name": "GONE", "value": "1", "secret": false, "changed_outside": true, "outside": "removed"},
            {"name": "MODE", "value": "slow", "secret": false, "changed_outside": true, "outside": "value",
             "deployed": {"value": "fast", "secret": false}},
        ])
    );
    assert_eq!(
        (body["sync"]["live_env"].as_str(), body["sync"]["secrets"].as_str()),
        (Some("compared"), Some("compared"))
    );
    assert!(!body.to_string().contains("-key"), "no secret value is returned: {body}");

    // A change starts from what runs: the edits made outside are kept, the new version pinned.
    let (status, started) = call(&f.state, "POST", &uri, token, Some(json!({"set": {"DEBUG": "1"}}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let next = started["deployment_id"].as_str().expect("id").to_owned();
    let (_, body) = call(&f.state, "GET", &format!("/api/deployments/{next}/env"), token, None).await;
    assert_eq!(
        body["vars"],
        json!([
            {"name": "API_KEY", "value": null, "secret": true, "version": 2},
            {"name": "DEBUG", "value": "1", "secret": false},
            {"name": "EXTRA", "value": "added by hand", "secret": false},
            {"name": "MODE", "value": "slow", "secret": false},
        ]),
        "not deployed yet, so its stored env, which carries the outside edits"
    );
    assert_eq!(body["sync"]["live_env"], "not_compared");
    assert!(body["sync"]["notes"][0].as_str().unwrap_or("").contains("has not run a revision"), "{body}");
    let (_, stored) = call(&f.state, "GET", &format!("/api/deployments/{next}"), token, None).await;
    assert_eq!(stored["secret_env"]["API_KEY"]["version"], 2);

    // The secret version the new deployment pins is DevGem's own: for the serving one it is
    // newer, not changed outside.
    let (_, body) = call(&f.state, "GET", &uri, token, None).await;
    assert_eq!(
        body["vars"][0],
        json!({"name": "API_KEY", "value": null, "secret": true, "version": 1, "latest_version": 2})
    );

    // An older deployment of the service is not compared with what the serving one runs.
    let older = seed(&f.state, "admin", "web", |d| {
        d.revision = Some("web-0".into());
        d.env.insert("MODE".into(), "old".into());
    })
    .await;
    let (_, body) = call(&f.state, "GET", &format!("/api/deployments/{}/env", older.id), token, None).await;
    assert_eq!(body["vars"], json!([{"name": "MODE", "value": "old", "secret": false}]));
    assert_eq!(body["sync"]["live_env"], "not_compared");
    assert!(body["sync"]["notes"][0].as_str().unwrap_or("").contains("serves revision web-1"), "{body}");

    // The runtime cannot be asked: the stored view with a note, and no change deployed blind.
    *f.runtime.live.lock().expect("lock") = Some(Err("Cloud Run is down".into()));
    let (status, body) = call(&f.state, "GET", &uri, token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sync"]["live_env"], "unavailable");
    assert!(body["sync"]["notes"][0].as_str().unwrap_or("").contains("showing what DevGem deployed"), "{body}");
    assert_eq!(body["vars"][2], json!({"name": "MODE", "value": "fast", "secret": false}), "as stored");
    let (status, refused) = call(&f.state, "POST", &uri, token, Some(json!({"set": {"DEBUG": "2"}}))).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
    assert!(message(&refused).contains("changes made outside DevGem"), "{refused}");
    let (_, all) = call(&f.state, "GET", "/api/deployments", token, None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(3), "the served one, its change and the older one: nothing more");
}
