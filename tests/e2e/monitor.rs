//! The monitor end to end on the embedded default: a deployed app crashes, the alert arrives on
//! the WebSocket with a rollback question, "yes" moves traffic back, and the URL serves the
//! previous revision.

use crate::pipeline::{copy_fixture, deploy, get_host};
use crate::relay::{frame, join, send};
use crate::support::spawn_app;
use devgem_common::ids::SessionId;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_told_in_the_chat_and_yes_rolls_back_to_the_revision_that_answers() {
    let app = spawn_app().await;
    let repo = copy_fixture("py-crash-route");
    let session = SessionId::generate();
    for version in ["1", "2"] {
        let body = json!({ "source": repo.path(), "name": "crashy", "env": { "APP_VERSION": version },
                           "session_id": session.as_str() });
        let (_, deployment) = deploy(&app, body).await;
        assert_eq!(deployment["state"], "live", "{deployment}");
    }
    let (status, body) = get_host(&app.url, "crashy", "/").await;
    assert_eq!((status, body.trim()), (200, "devgem-fixture:py-crash-route version 2"));

    let events = crate::support::events(&app, session.as_str()).await;
    let last = events.last().and_then(|e| e["seq"].as_u64()).expect("the deploys' events");
    let mut socket = join(&app.url, &app.admin_token, session.as_str(), last).await;
    // The bug: a request that takes the process down with a traceback.
    let _ = get_host(&app.url, "crashy", "/crash").await;

    let started = Instant::now();
    let mut alert: Option<Value> = None;
    let (alert, question) = loop {
        let event = frame(&mut socket).await;
        if event["type"] == "monitoring_alert" && event["data"]["status"] == "open" {
            alert = Some(event.clone());
        }
        if event["type"] == "message" && event["data"]["question"].is_string() {
            break (alert.take().expect("the alert event comes before the chat's message"), event);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no alert in 30 s");
    };
    assert_eq!(alert["data"]["kind"], "uncaught_exception", "{alert}");
    assert_eq!(alert["data"]["service"], "crashy");
    let text = question["data"]["text"].as_str().expect("text");
    assert!(text.contains("**crashy** needs attention: crashy hit an uncaught exception"), "{text}");
    assert!(text.contains("Traceback (most recent call last):"), "the key lines are shown: {text}");
    assert!(text.contains("Shall I roll back to revision **crashy-"), "{text}");
    let target = alert["data"]["rollback_to"].as_str().expect("a rollback target").to_owned();
    assert!(text.contains(&target), "the question names the revision: {text}");

    send(&mut socket, json!({ "type": "message", "text": "yes" })).await;
    let mut resolved = false;
    let mut rolled_back = false;
    while !(resolved && rolled_back) {
        let event = frame(&mut socket).await;
        if event["type"] == "monitoring_alert" && event["data"]["status"] == "resolved" {
            assert_eq!(event["data"]["alert_id"], alert["data"]["alert_id"], "the same alert, resolved in place");
            resolved = true;
        }
        if event["type"] == "message"
            && event["data"]["text"].as_str().is_some_and(|t| t.starts_with("Rolled crashy back to"))
        {
            assert!(event["data"]["text"].as_str().unwrap_or_default().contains(&target), "{event}");
            rolled_back = true;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no rollback in 60 s");
    }
    let (status, body) = get_host(&app.url, "crashy", "/").await;
    assert_eq!((status, body.trim()), (200, "devgem-fixture:py-crash-route version 1"), "the previous revision serves");
}
