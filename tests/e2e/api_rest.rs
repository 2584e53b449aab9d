//! The REST API of issue 8 end to end, as a user of their own drives it over HTTP: deploy, read
//! the revision's logs, change env and secrets (a new deployment goes live), roll back, and the
//! counts of `/stats` for the user and for the admin.

use crate::support::{TestApp, spawn_app};
use devgem_e2e::copy_dir;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

async fn rest(app: &TestApp, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().expect("method"), format!("{}{path}", app.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `check` holds for what `GET path` answers, and returns that answer.
async fn wait_for(app: &TestApp, token: &str, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = rest(app, token, "GET", path, None).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never became {what}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a deployment to end and requires it live.
async fn live(app: &TestApp, token: &str, id: &str) -> Value {
    let ended = |d: &Value| matches!(d["state"].as_str(), Some("live" | "failed" | "aborted"));
    let deployment = wait_for(app, token, &format!("/api/deployments/{id}"), "ended", ended).await;
    assert_eq!(deployment["state"], "live", "{deployment}");
    deployment
}

#[tokio::test]
async fn deploy_read_logs_change_env_roll_back_and_count() {
    let app = spawn_app().await;
    let admin = app.admin_token.clone();
    let (status, created) = rest(&app, &admin, "POST", "/api/users", Some(json!({"id": "bob"}))).await;
    assert_eq!(status, 201, "{created}");
    let bob = created["token"].as_str().expect("token").to_owned();
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/py-flask"), repo.path());

    // Deploy, then the revision's logs.
    let body = json!({ "source": repo.path(), "name": "flask" });
    let (status, started) = rest(&app, &bob, "POST", "/api/deployments", Some(body)).await;
    assert_eq!(status, 201, "{started}");
    let first_id = started["deployment_id"].as_str().expect("id").to_owned();
    let first = live(&app, &bob, &first_id).await;
    let first_revision = first["revision"].as_str().expect("revision").to_owned();
    let logs_path = format!("/api/deployments/{first_id}/logs");
    let logs = wait_for(&app, &bob, &logs_path, "showing gunicorn's start", |l| {
        l["lines"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| l["text"].as_str().is_some_and(|t| t.contains("Listening at"))))
    })
    .await;
    assert_eq!(logs["revision"], first_revision.as_str());
    assert!(
        logs["lines"].as_array().is_some_and(|l| l.iter().all(|l| l["stream"].is_string() && l["ts"].is_string())),
        "{logs}"
    );
    assert!(logs["build_log"].as_array().is_some_and(|l| !l.is_empty()), "the build's last lines come along: {logs}");
    let (status, _) = rest(&app, &admin, "GET", &logs_path, None).await;
    assert_eq!(status, 404, "bob's deployment is not the admin's to read through the user routes");

    // A variable and a secret: a new deployment goes live with both; the secret never comes back.
    let change = json!({ "set": { "GREETING": "hello" }, "secrets": { "API_TOKEN": "tok-very-secret" } });
    let (status, changed) = rest(&app, &bob, "POST", &format!("/api/deployments/{first_id}/env"), Some(change)).await;
    assert_eq!(status, 202, "{changed}");
    let second_id = changed["deployment_id"].as_str().expect("id").to_owned();
    let second = live(&app, &bob, &second_id).await;
    let second_revision = second["revision"].as_str().expect("revision").to_owned();
    assert_ne!(first_revision, second_revision);
    let (status, env) = rest(&app, &bob, "GET", &format!("/api/deployments/{second_id}/env"), None).await;
    assert_eq!(status, 200, "{env}");
    assert_eq!(env["service"], "flask");
    assert_eq!(
        env["vars"],
        json!([
            { "name": "API_TOKEN", "value": null, "secret": true, "version": 1 },
            { "name": "GREETING", "value": "hello", "secret": false },
        ])
    );
    assert!(!env.to_string().contains("tok-very-secret") && !second.to_string().contains("tok-very-secret"));
    let service = wait_for(&app, &bob, "/api/services/flask", "served by the second", |s| {
        s["traffic"]["serving"] == second_revision.as_str()
    })
    .await;
    assert_eq!(service["traffic"]["rollback_target"], first_revision.as_str());

    // Roll back through the deployment: the first revision serves again, and answers.
    let (status, rolled) = rest(&app, &bob, "POST", &format!("/api/deployments/{second_id}/rollback"), None).await;
    assert_eq!((status, rolled), (202, json!({ "service": "flask", "to": first_revision })));
    wait_for(&app, &bob, "/api/services/flask", "served by the first again", |s| {
        s["traffic"]["serving"] == first_revision.as_str()
    })
    .await;
    let url = second["url"].as_str().expect("url");
    let port = app.url.rsplit(':').next().unwrap_or_default();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    assert_eq!(host, format!("flask--bob.localhost:{port}"));
    let answer = reqwest::Client::new().get(format!("{}/", app.url)).header("host", host).send().await.expect("get");
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap_or_default().contains("devgem-fixture:py-flask"));

    // The counts: bob's own, and everyone's for the admin.
    let (status, mine) = rest(&app, &bob, "GET", "/stats", None).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!((mine["scope"].as_str(), mine["deployments"]["total"].as_u64()), (Some("user"), Some(2)), "{mine}");
    assert_eq!(mine["deployments"]["by_state"]["live"], 2);
    assert!(mine["builds"].as_u64().is_some_and(|n| n >= 2), "each deployment built: {mine}");
    assert!(mine["build_minutes"].as_f64().is_some_and(|m| m > 0.0), "{mine}");
    assert!(mine["events"].as_u64().is_some_and(|n| n > 10), "{mine}");
    assert!(mine.get("dead_letters").is_none() && mine.get("users").is_none(), "{mine}");
    let (status, all) = rest(&app, &admin, "GET", "/stats", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["scope"], "all");
    assert_eq!(all["deployments"]["total"], 2, "{all}");
    assert_eq!(
        all["users"]["bob"],
        json!({
            "deployments": mine["deployments"], "builds": mine["builds"],
            "build_minutes": mine["build_minutes"], "events": mine["events"],
        })
    );
    assert_eq!(all["users"]["admin"]["deployments"]["total"], 0);
    assert_eq!(all["dead_letters"], 0);

    // The chat's `set` goes through the same change: the secret and the variable carry over.
    let session = second["session_id"].as_str().expect("session");
    let (status, chat) =
        rest(&app, &bob, "POST", "/chat", Some(json!({ "text": "set CHAT_VAR=1", "session_id": session }))).await;
    assert_eq!(status, 200, "{chat}");
    assert!(
        chat["reply"]["text"].as_str().is_some_and(|t| t.starts_with("Deploying flask again with CHAT_VAR set")),
        "{chat}"
    );
    let (_, list) = rest(&app, &bob, "GET", "/api/deployments?limit=1", None).await;
    let third = list[0]["id"].as_str().expect("the chat's deployment");
    let (_, env) = rest(&app, &bob, "GET", &format!("/api/deployments/{third}/env"), None).await;
    let names: Vec<&str> = env["vars"].as_array().expect("vars").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["API_TOKEN", "CHAT_VAR", "GREETING"], "{env}");
    let (_, _) = rest(&app, &bob, "POST", &format!("/api/deployments/{third}/abort"), None).await;
}
