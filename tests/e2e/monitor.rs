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

#[tokio::test]
async fn an_alert_is_told_once_and_no_mutes_it() {
    use devgem_common::events::{AlertKind, AlertStatus, EventContext, MonitorAlert};
    use devgem_common::ids::{CorrelationId, ServiceName, UserId};
    use devgem_common::incidents::Incident;
    use devgem_common::ports::bus::BusExt;
    use devgem_common::ports::store::{Scope, StoreExt, Write, to_data};
    let app = spawn_app().await;
    let session = SessionId::generate();
    crate::support::say(&app, session.as_str(), "help").await;
    crate::support::answer(&app, session.as_str(), 1).await;
    // The monitor's side: an open incident, and its alert on the bus (sent twice, as a redelivery would).
    let owner = UserId::admin();
    let mut incident = Incident::new(
        owner.clone(),
        ServiceName::parse("shop").expect("name"),
        "shop-2".into(),
        AlertKind::MemoryLimit,
    );
    incident.open = true;
    incident.alert_id = Some("admin-shop-2-memory_limit-1".into());
    incident.session_id = Some(session.clone());
    let key = incident.key().expect("key");
    let store = &app.embedded.ports.store;
    store
        .commit(vec![Write::Create { key: key.clone(), owner: owner.clone(), data: to_data(&incident).expect("data") }])
        .await
        .expect("seed");
    let since = chrono::Utc::now();
    let alert = MonitorAlert {
        alert_id: "admin-shop-2-memory_limit-1".into(),
        owner: owner.clone(),
        service: incident.service.clone(),
        revision: "shop-2".into(),
        kind: AlertKind::MemoryLimit,
        status: AlertStatus::Open,
        summary: "shop was killed for running out of memory (once) since 17:20:00 UTC".into(),
        since,
        key_lines: vec!["Memory limit of 512 MiB exceeded with 530 MiB used.".into()],
        rollback_target: Some("shop-1".into()),
        rollback_target_created_at: Some(since),
        likely_cause: Some("the app needs more memory than its limit (512 MiB on Cloud Run)".into()),
        count: 1,
        session_id: Some(session.clone()),
    };
    for _ in 0..2 {
        let ctx = EventContext::new("monitor", CorrelationId::generate());
        app.embedded.ports.bus.publish_event(&alert, &ctx, chrono::Utc::now()).await.expect("publish");
    }
    let told = crate::support::answer(&app, session.as_str(), 2).await;
    assert!(told.starts_with("⚠️ **shop** needs attention: shop was killed for running out of memory"), "{told}");
    assert!(told.contains("Likely cause: the app needs more memory"), "{told}");
    assert!(told.contains("Shall I roll back to revision **shop-1** (deployed at "), "{told}");
    crate::support::say(&app, session.as_str(), "no").await;
    let reply = crate::support::answer(&app, session.as_str(), 3).await;
    assert_eq!(reply, "All right, shop stays as it is, and I will not raise this alert again.");
    let (muted, _) = store.get_typed::<Incident>(&Scope::All, &key).await.expect("read").expect("incident");
    assert!(muted.muted, "the incident is muted");
    let events = crate::support::events(&app, session.as_str()).await;
    let told_count = events.iter().filter(|e| e["data"]["alert_id"] == "admin-shop-2-memory_limit-1").count();
    assert_eq!(told_count, 1, "the redelivered alert was told once");
}
