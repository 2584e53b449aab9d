//! The monitor on the embedded default (docs/PERF.md).
//!
//! 1. Throughput: LogEntry pushes handled per second by the monitor's push route, in-process,
//!    for a realistic mix: ordinary stdout lines, request logs, stderr lines, and a burst of
//!    tracebacks on one revision (one open incident, updated at its pace).
//! 2. Crash line → alert: a traceback line published on the embedded bus (as the local runtime
//!    publishes its processes' lines) until the `monitoring_alert` event is in the session.
//!
//! `cargo bench -p devgem-e2e --bench monitor`

use axum::body::Body;
use devgem_cli::embedded::Embedded;
use devgem_common::envelope::{DeliveryForm, PubsubMessage, PushRequest};
use devgem_common::events::Topic;
use devgem_common::ids::{CorrelationId, DeploymentId, ServiceName, SessionId, UserId};
use devgem_common::model::deployment::{Deployment, NewDeployment};
use devgem_common::model::service::{Revision, Service};
use devgem_common::ports::bus::OutboundMessage;
use devgem_common::ports::source::{SourceLocation, SourceSpec};
use devgem_common::ports::store::{DocKey, NewEvent, Scope, SessionEventKind, Write, to_data};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const ENTRIES: usize = 60_000;

fn entry(revision: &str, service: &str, i: usize) -> Value {
    let resource =
        json!({"type": "cloud_run_revision", "labels": {"service_name": service, "revision_name": revision}});
    let labels = json!({ "devgem.dev/owner": "admin" });
    match i % 20 {
        // A request log every tenth line.
        0 | 10 => json!({"logName": "projects/local/logs/run.googleapis.com%2Frequests", "resource": resource,
                    "labels": labels, "severity": "INFO", "timestamp": chrono::Utc::now(),
                    "httpRequest": {"requestMethod": "GET", "requestUrl": "/items?page=2", "status": 200}}),
        // A traceback on one revision every twentieth line: one incident, open all along.
        5 => json!({"logName": "projects/local/logs/run.googleapis.com%2Fstderr", "resource": resource,
                    "labels": labels, "severity": "ERROR", "timestamp": chrono::Utc::now(),
                    "textPayload": "Traceback (most recent call last):"}),
        6 => json!({"logName": "projects/local/logs/run.googleapis.com%2Fstderr", "resource": resource,
                    "labels": labels, "severity": "ERROR", "timestamp": chrono::Utc::now(),
                    "textPayload": "ValueError: invalid literal for int() with base 10: 'abc'"}),
        _ => json!({"logName": "projects/local/logs/run.googleapis.com%2Fstdout", "resource": resource,
                    "labels": labels, "severity": "DEFAULT", "timestamp": chrono::Utc::now(),
                    "textPayload": format!("INFO:app:served item {i} in 3 ms")}),
    }
}

fn push(entry: &Value, id: usize) -> http::Request<Body> {
    let push = PushRequest {
        message: PubsubMessage {
            data: entry.to_string().into_bytes().into(),
            attributes: BTreeMap::new(),
            message_id: id.to_string(),
            publish_time: Some(chrono::Utc::now()),
            ordering_key: None,
        },
        subscription: Some("projects/local/subscriptions/monitor-log-entries".into()),
        delivery_attempt: Some(1),
        form: DeliveryForm::PubsubPush,
    };
    http::Request::post(devgem_monitor::PUSH_LOG_ENTRIES)
        .header("content-type", "application/json")
        .body(Body::from(push.to_push_json()))
        .expect("request")
}

/// A service `name` serving `revision`, made by a deployment in `session`.
async fn seed(embedded: &Embedded, name: &str, revision: &str, session: &SessionId) {
    let owner = UserId::admin();
    let now = chrono::Utc::now();
    let new = NewDeployment {
        id: DeploymentId::generate(),
        owner: owner.clone(),
        session_id: session.clone(),
        correlation_id: CorrelationId::generate(),
        source: SourceSpec { location: SourceLocation::Local { path: "/srv/app".into() }, git_ref: None },
        service: ServiceName::parse(name).expect("name"),
    };
    let deployment = Deployment::new(new, now);
    let mut service = Service::new(owner.clone(), deployment.service.clone());
    service
        .add_revision(Revision {
            name: revision.into(),
            deployment_id: deployment.id.clone(),
            image: "img".into(),
            created_at: now,
        })
        .expect("revision");
    service.route_to(revision).expect("route");
    let first =
        NewEvent { kind: SessionEventKind::AiThought, correlation_id: CorrelationId::generate(), data: json!({}) };
    let writes = vec![
        Write::Create {
            key: devgem_common::timeline::deployment_key(&deployment).expect("key"),
            owner: owner.clone(),
            data: to_data(&deployment).expect("data"),
        },
        Write::Create {
            key: DocKey::new("services", Service::doc_id(&owner, &service.name)).expect("key"),
            owner: owner.clone(),
            data: to_data(&service).expect("data"),
        },
        Write::Append { session: session.clone(), owner, events: vec![first] },
    ];
    embedded.ports.store.commit(writes).await.expect("seed");
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = devgem_e2e::bench_embedded(dir.path());
    embedded.identity.ensure_admin(None).await.expect("admin");
    let session = SessionId::generate();
    seed(&embedded, "shop", "shop-0001", &session).await;
    let router = devgem_cli::functions::Function::Monitor.router(&embedded);

    // 1. Throughput.
    let entries: Vec<Value> = (0..ENTRIES).map(|i| entry("shop-0001", "shop", i)).collect();
    for (i, e) in entries.iter().take(2_000).enumerate() {
        let response = router.clone().oneshot(push(e, i)).await.expect("response");
        assert!(response.status().is_success(), "warm-up push refused: {}", response.status());
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    // Two concurrent workers: pushes arrive concurrently, and the machine has two cores.
    for worker in 0..2 {
        let (router, entries) = (router.clone(), entries.clone());
        handles.push(tokio::spawn(async move {
            for (i, e) in entries.iter().enumerate().filter(|(i, _)| i % 2 == worker) {
                let response = router.clone().oneshot(push(e, 10_000 + i)).await.expect("response");
                assert!(response.status().is_success(), "push refused: {}", response.status());
            }
        }));
    }
    for handle in handles {
        handle.await.expect("worker");
    }
    let elapsed = started.elapsed();
    println!(
        "throughput: {ENTRIES} LogEntry pushes in {:.2} s = {:.0} entries/s (mix: 70% stdout, 10% request logs, 10% tracebacks on one open incident)",
        elapsed.as_secs_f64(),
        ENTRIES as f64 / elapsed.as_secs_f64()
    );

    // 2. Crash line → alert event, through the embedded bus.
    use devgem_infra::local::SubscriptionConfig;
    embedded
        .bus
        .subscribe(
            SubscriptionConfig::new("monitor-log-entries", Topic::LogEntries, devgem_monitor::PUSH_LOG_ENTRIES),
            router.clone(),
        )
        .await
        .expect("subscribe");
    let mut samples = Vec::new();
    for round in 0..20 {
        let (name, revision) = (format!("api{round}"), format!("api{round}-0001"));
        let session = SessionId::generate();
        seed(&embedded, &name, &revision, &session).await;
        let crash = json!({"logName": "projects/local/logs/run.googleapis.com%2Fstderr",
            "resource": {"type": "cloud_run_revision", "labels": {"service_name": name, "revision_name": revision}},
            "labels": { "devgem.dev/owner": "admin" }, "severity": "ERROR", "timestamp": chrono::Utc::now(),
            "textPayload": "thread 'main' panicked at src/main.rs:10:5:"});
        let mut watch = embedded.ports.store.watch(Scope::All, session.clone(), 1);
        let started = Instant::now();
        let message = OutboundMessage {
            data: crash.to_string().into_bytes().into(),
            attributes: BTreeMap::new(),
            ordering_key: None,
        };
        devgem_common::ports::bus::Bus::publish(&embedded.bus, Topic::LogEntries, message).await.expect("publish");
        use futures_util::StreamExt;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("an alert within 10 s")
                .expect("stream")
                .expect("event");
            if event.kind == SessionEventKind::MonitoringAlert {
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "crash line → monitoring_alert event (20 incidents): p50 {:.1} ms, max {:.1} ms",
        samples[samples.len() / 2],
        samples.last().copied().unwrap_or_default()
    );
}
