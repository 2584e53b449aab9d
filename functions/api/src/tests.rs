//! The API's routes, driven with `oneshot` on the embedded store: authentication and the owner
//! filter on every read.

use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use devgem_common::clock::SystemClock;
use devgem_common::ids::{CorrelationId, DeploymentId, ServiceName, SessionId, UserId};
use devgem_common::model::deployment::{Deployment, NewDeployment};
use devgem_common::ports::source::{SourceLocation, SourceSpec};
use devgem_common::ports::store::{DocKey, NewEvent, SessionEventKind, StoreExt, Write};
use devgem_infra::local::{LocalBlobs, LocalBus, LocalStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    admin_token: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(SystemClock);
    let store = Arc::new(LocalStore::open(&dir.path().join("store.db"), clock.clone()).expect("store"));
    let ports = Ports {
        store: store.clone(),
        bus: Arc::new(LocalBus::open(&dir.path().join("bus.db"), clock.clone()).expect("bus")),
        blobs: Arc::new(LocalBlobs::open(&dir.path().join("blobs")).expect("blobs")),
        clock: clock.clone(),
    };
    let identity = Identity::new(store, clock);
    let admin_token = identity.ensure_admin(None).await.expect("admin").expect("created now");
    let secrets = Arc::new(devgem_infra::local::LocalSecrets::open(
        dir.path().join("secrets.json"),
        &dir.path().join("secrets.key"),
    ));
    Fixture { _dir: dir, state: AppState { ports, identity, secrets }, admin_token: admin_token.expose().to_owned() }
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

async fn seed_deployment(state: &AppState, owner: &str, name: &str) -> DeploymentId {
    let id = DeploymentId::generate();
    let deployment = Deployment::new(
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
    let key = DocKey::new("deployments", id.as_str()).expect("key");
    state.ports.store.create(key, deployment.owner.clone(), &deployment).await.expect("seed");
    id
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
