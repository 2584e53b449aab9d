//! Identity over real HTTP on the whole router set: no token, a wrong token and another user's
//! token are refused; a user never sees another user's documents.

use crate::support::spawn_app;
use chrono::Utc;
use devgem_common::ids::{CorrelationId, DeploymentId, ServiceName, SessionId, UserId};
use devgem_common::model::deployment::{Deployment, NewDeployment};
use devgem_common::ports::source::{SourceLocation, SourceSpec};
use devgem_common::ports::store::{DocKey, StoreExt};
use serde_json::{Value, json};

async fn seed(app: &crate::support::TestApp, owner: &str) -> DeploymentId {
    let id = DeploymentId::generate();
    let deployment = Deployment::new(
        NewDeployment {
            id: id.clone(),
            owner: UserId::parse(owner).expect("owner"),
            session_id: SessionId::generate(),
            correlation_id: CorrelationId::generate(),
            source: SourceSpec {
                location: SourceLocation::Git { url: "https://github.com/o/app".into() },
                git_ref: None,
            },
            service: ServiceName::derive_from("app"),
        },
        Utc::now(),
    );
    let key = DocKey::new("deployments", id.as_str()).expect("key");
    app.embedded.ports.store.create(key, deployment.owner.clone(), &deployment).await.expect("seed");
    id
}

#[tokio::test]
async fn tokens_are_checked_and_owners_are_isolated() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", app.url);

    assert_eq!(client.get(url("/api/deployments")).send().await.expect("send").status(), 401, "no token");
    let wrong =
        client.get(url("/api/deployments")).bearer_auth("dg_thisisnotatokenatall000").send().await.expect("send");
    assert_eq!(wrong.status(), 401, "wrong token");
    assert_eq!(wrong.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let query = client.get(url(&format!("/api/deployments?token={}", app.admin_token))).send().await.expect("send");
    assert_eq!(query.status(), 401, "a token in the query string is not accepted");

    let created: Value = client
        .post(url("/api/users"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"id": "bob", "name": "Bob"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let bob = created["token"].as_str().expect("token").to_owned();

    let admin_deployment = seed(&app, "admin").await;
    let bob_deployment = seed(&app, "bob").await;

    let as_bob =
        client.get(url(&format!("/api/deployments/{admin_deployment}"))).bearer_auth(&bob).send().await.expect("send");
    assert_eq!(as_bob.status(), 404, "another user's token does not reach the admin's deployment");
    let list: Vec<Value> =
        client.get(url("/api/deployments")).bearer_auth(&bob).send().await.expect("send").json().await.expect("json");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], bob_deployment.as_str());
    let admin_list: Vec<Value> = client
        .get(url("/api/deployments"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(admin_list.len(), 1, "the admin's own list is filtered too");
    assert_eq!(admin_list[0]["id"], admin_deployment.as_str());

    // Every response carries a correlation id; a valid one from the caller is kept.
    let traced = client.get(url("/health")).header("x-correlation-id", "trace-me-1").send().await.expect("send");
    assert_eq!(traced.headers().get("x-correlation-id").and_then(|v| v.to_str().ok()), Some("trace-me-1"));
}
