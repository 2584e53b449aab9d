//! The monitor on the embedded Store, fed LogEntries in Cloud Logging's shape (as the Log Router
//! sink delivers them: no owner label; the service name is DevGem's `<owner>-<name>`).

use super::*;
use devgem_common::clock::{Clock, SystemClock};
use devgem_common::events::Topic;
use devgem_common::ids::{DeploymentId, SessionId};
use devgem_common::model::service::Revision;
use devgem_common::ports::bus::{Bus, BusError, OutboundMessage};
use devgem_common::ports::store::{SessionEventKind, Store};
use devgem_infra::local::{LocalBlobs, LocalStore};
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct RecordingBus(Mutex<Vec<(Topic, OutboundMessage)>>);

#[async_trait::async_trait]
impl Bus for RecordingBus {
    async fn publish(&self, topic: Topic, message: OutboundMessage) -> Result<String, BusError> {
        let mut messages = self.0.lock().expect("lock");
        messages.push((topic, message));
        Ok(messages.len().to_string())
    }
}

impl RecordingBus {
    fn alerts(&self) -> Vec<MonitorAlert> {
        let messages = self.0.lock().expect("lock");
        messages
            .iter()
            .filter(|(topic, _)| *topic == Topic::Alerts)
            .map(|(_, m)| serde_json::from_slice(&m.data).expect("a MonitorAlert"))
            .collect()
    }
}

struct Fixture {
    state: AppState,
    bus: Arc<RecordingBus>,
    session: SessionId,
    _dir: tempfile::TempDir,
}

const OWNER: &str = "admin";

/// A service `web` of the admin with revisions web-1 (rollback target) and web-2 (serving),
/// web-2 made by a deployment in `session`; and a service `api` serving api-1.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(SystemClock);
    let store = Arc::new(LocalStore::open(&dir.path().join("store.db"), clock.clone()).expect("store"));
    let bus = Arc::new(RecordingBus::default());
    let ports = Ports {
        store: store.clone(),
        bus: bus.clone(),
        blobs: Arc::new(LocalBlobs::open(&dir.path().join("blobs")).expect("blobs")),
        clock: clock.clone(),
    };
    let owner = UserId::parse(OWNER).expect("owner");
    let session = SessionId::generate();
    use devgem_common::model::deployment::{Deployment, NewDeployment};
    use devgem_common::ports::source::{SourceLocation, SourceSpec};
    let new = NewDeployment {
        id: DeploymentId::generate(),
        owner: owner.clone(),
        session_id: session.clone(),
        correlation_id: CorrelationId::generate(),
        source: SourceSpec { location: SourceLocation::Local { path: "/srv/web".into() }, git_ref: None },
        service: ServiceName::parse("web").expect("name"),
    };
    let mut deployment = Deployment::new(new, clock.now());
    deployment.revision = Some("web-2".into());
    let key = devgem_common::timeline::deployment_key(&deployment).expect("key");
    let seed = devgem_common::ports::store::NewEvent {
        kind: SessionEventKind::Message,
        correlation_id: CorrelationId::generate(),
        data: json!({ "role": "user", "text": "deploy /srv/web" }),
    };
    store
        .commit(vec![
            Write::Create { key, owner: owner.clone(), data: to_data(&deployment).expect("data") },
            Write::Append { session: session.clone(), owner: owner.clone(), events: vec![seed] },
        ])
        .await
        .expect("seed the deployment");
    for (name, revisions) in [("web", ["web-1", "web-2"].as_slice()), ("api", ["api-1"].as_slice())] {
        let mut service = Service::new(owner.clone(), ServiceName::parse(name).expect("name"));
        for revision in revisions {
            service
                .add_revision(Revision {
                    name: (*revision).into(),
                    deployment_id: if *revision == "web-2" { deployment.id.clone() } else { DeploymentId::generate() },
                    image: format!("img-{revision}"),
                    created_at: clock.now(),
                })
                .expect("revision");
            service.route_to(revision).expect("route");
        }
        let key = DocKey::new("services", Service::doc_id(&owner, &service.name)).expect("key");
        store
            .commit(vec![Write::Create { key, owner: owner.clone(), data: to_data(&service).expect("data") }])
            .await
            .expect("service");
    }
    let state = AppState::new(ports, MonitorSettings::default());
    Fixture { state, bus, session, _dir: dir }
}

/// A line of a Cloud Run revision's stderr, as the Log Router sink delivers it.
fn stderr(service: &str, revision: &str, text: &str) -> LogEntry {
    serde_json::from_value(json!({
        "insertId": format!("{:016x}", fastrand_like(text)),
        "logName": "projects/demo-proj/logs/run.googleapis.com%2Fstderr",
        "receiveTimestamp": Utc::now(),
        "resource": {"type": "cloud_run_revision", "labels": {
            "configuration_name": service, "location": "us-central1", "project_id": "demo-proj",
            "revision_name": revision, "service_name": format!("{OWNER}-{service}")}},
        "severity": "ERROR",
        "textPayload": text,
        "timestamp": Utc::now(),
    }))
    .expect("a LogEntry")
}

/// A request log line of Cloud Run.
fn request(service: &str, revision: &str, status: u16) -> LogEntry {
    serde_json::from_value(json!({
        "insertId": "req",
        "logName": "projects/demo-proj/logs/run.googleapis.com%2Frequests",
        "resource": {"type": "cloud_run_revision", "labels": {
            "revision_name": revision, "service_name": format!("{OWNER}-{service}")}},
        "severity": if status >= 500 { "ERROR" } else { "INFO" },
        "httpRequest": {"requestMethod": "GET", "requestUrl": format!("https://{service}-abc.a.run.app/crash"),
                        "status": status, "latency": "0.004s", "protocol": "HTTP/1.1"},
        "timestamp": Utc::now(),
        "trace": "projects/demo-proj/traces/0af7651916cd43dd8448eb211c80319c",
    }))
    .expect("a LogEntry")
}

fn fastrand_like(text: &str) -> u64 {
    text.bytes().fold(1469598103934665603u64, |h, b| (h ^ u64::from(b)).wrapping_mul(1099511628211))
}

const TRACEBACK: [&str; 4] = [
    "Traceback (most recent call last):",
    "  File \"/app/app.py\", line 12, in crash",
    "    raise ValueError(\"boom\")",
    "ValueError: boom",
];

async fn feed(state: &AppState, entries: impl IntoIterator<Item = LogEntry>) {
    for entry in entries {
        on_log_entry(state, entry).await.expect("handled");
    }
}

async fn alert_events(f: &Fixture) -> Vec<Value> {
    let events = f.state.ports.store.events_after(&Scope::All, &f.session, 0, 100_000).await.expect("events");
    events.into_iter().filter(|e| e.kind == SessionEventKind::MonitoringAlert).map(|e| e.data).collect()
}

#[tokio::test]
async fn an_uncaught_python_exception_opens_one_alert_with_its_lines_cause_and_rollback_target() {
    let f = fixture().await;
    feed(&f.state, TRACEBACK.map(|line| stderr("web", "web-2", line))).await;
    let alerts = f.bus.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!((alert.kind, alert.status), (AlertKind::UncaughtException, AlertStatus::Open));
    assert_eq!((alert.service.as_str(), alert.revision.as_str()), ("web", "web-2"));
    assert!(alert.summary.starts_with("web hit an uncaught exception (once) since"), "{}", alert.summary);
    assert_eq!(alert.rollback_target.as_deref(), Some("web-1"));
    assert!(alert.rollback_target_created_at.is_some());
    assert_eq!(alert.session_id.as_ref(), Some(&f.session));
    assert_eq!(alert.key_lines.first().map(String::as_str), Some("Traceback (most recent call last):"));
    // The cause is read when the alert is announced, from the lines seen by then: the traceback's
    // first line opens the alert, so the session event (updated later) carries the rest.
    let events = alert_events(&f).await;
    assert_eq!(events[0]["status"], "open");
    assert_eq!(events[0]["alert_id"], json!(alert.alert_id));
    assert_eq!(events[0]["rollback_to"], "web-1");
}

#[tokio::test]
async fn a_burst_of_ten_thousand_error_lines_is_one_alert() {
    let f = fixture().await;
    let burst = (0..2_500).flat_map(|_| TRACEBACK.map(|line| stderr("web", "web-2", line)));
    feed(&f.state, burst).await;
    assert_eq!(f.bus.alerts().len(), 1, "one alert for the whole burst");
    let events = alert_events(&f).await;
    let opened = events.iter().filter(|e| e["status"] == "open").count();
    assert_eq!(opened, 1, "{events:?}");
    assert!(events.len() <= 2, "updates are paced, not one per line: {}", events.len());
    // The count is in the Store: the next update (after the pace) tells all of them.
    let key = DocKey::new(
        "incidents",
        Incident::doc_id(&UserId::parse(OWNER).expect("id"), "web-2", AlertKind::UncaughtException),
    )
    .expect("key");
    let (incident, _) =
        f.state.ports.store.get_typed::<Incident>(&Scope::All, &key).await.expect("read").expect("incident");
    assert!(incident.open && incident.count >= 1);
}

#[tokio::test]
async fn another_kind_or_another_service_during_an_incident_still_alerts() {
    let f = fixture().await;
    feed(&f.state, [stderr("web", "web-2", TRACEBACK[0])]).await;
    feed(&f.state, [stderr("web", "web-2", "Memory limit of 512 MiB exceeded with 530 MiB used.")]).await;
    feed(&f.state, [stderr("api", "api-1", "thread 'main' panicked at src/main.rs:10:5:")]).await;
    let alerts = f.bus.alerts();
    let seen: Vec<(&str, AlertKind)> = alerts.iter().map(|a| (a.revision.as_str(), a.kind)).collect();
    assert_eq!(
        seen,
        vec![
            ("web-2", AlertKind::UncaughtException),
            ("web-2", AlertKind::MemoryLimit),
            ("api-1", AlertKind::UncaughtException)
        ]
    );
    assert_eq!(alerts[2].rollback_target, None, "api has no earlier revision");
    assert_ne!(alerts[0].alert_id, alerts[1].alert_id);
}

#[tokio::test]
async fn a_crash_loop_is_three_exits_and_an_error_rate_is_ten_server_errors() {
    let f = fixture().await;
    let exit = || stderr("web", "web-2", "Container called exit(1).");
    feed(&f.state, [exit(), exit()]).await;
    assert!(f.bus.alerts().is_empty(), "two exits are not a loop yet");
    feed(&f.state, [exit()]).await;
    assert_eq!(f.bus.alerts().last().map(|a| a.kind), Some(AlertKind::CrashLoop));
    assert!(f.bus.alerts()[0].summary.contains("exited 3 times"), "{}", f.bus.alerts()[0].summary);

    feed(&f.state, (0..20).map(|_| request("api", "api-1", 200))).await;
    feed(&f.state, (0..9).map(|_| request("api", "api-1", 503))).await;
    assert_eq!(f.bus.alerts().len(), 1, "nine 5xx and twenty 200s are below the limit");
    feed(&f.state, [request("api", "api-1", 500)]).await;
    let alert = f.bus.alerts().pop().expect("an error-rate alert");
    assert_eq!(alert.kind, AlertKind::ErrorRate);
    assert!(alert.summary.contains("answered 10 requests with a server error"), "{}", alert.summary);
    assert_eq!(alert.key_lines.last().map(String::as_str), Some("GET https://api-abc.a.run.app/crash → 500"));
}

#[tokio::test]
async fn a_restarted_monitor_updates_the_open_alert_instead_of_opening_another() {
    let f = fixture().await;
    feed(&f.state, [stderr("web", "web-2", TRACEBACK[0])]).await;
    // A new instance: nothing in memory, the same Store.
    let restarted = AppState::new(f.state.ports.clone(), MonitorSettings::default());
    feed(&restarted, [stderr("web", "web-2", TRACEBACK[0])]).await;
    assert_eq!(f.bus.alerts().len(), 1, "no second alert");
    let statuses: Vec<Value> = alert_events(&f).await.iter().map(|e| e["status"].clone()).collect();
    assert_eq!(statuses, vec![json!("open"), json!("updated")]);
    let events = alert_events(&f).await;
    assert_eq!(events[1]["count"], 2);
    assert_eq!(events[0]["alert_id"], events[1]["alert_id"], "updated in place");
}

#[tokio::test]
async fn after_a_resolution_the_same_trouble_is_a_new_incident_and_a_muted_one_stays_quiet() {
    let f = fixture().await;
    let owner = UserId::parse(OWNER).expect("owner");
    feed(&f.state, [stderr("web", "web-2", TRACEBACK[0])]).await;
    let store = f.state.ports.store.as_ref();
    let now = f.state.ports.clock.now();
    let resolved = devgem_common::incidents::resolve_revision(store, &owner, "web-2", "traffic moved to web-1", now)
        .await
        .expect("resolve");
    assert_eq!(resolved, 1);
    let events = alert_events(&f).await;
    assert_eq!(events.last().map(|e| e["status"].clone()), Some(json!("resolved")));
    assert_eq!(events.last().map(|e| e["summary"].clone()), Some(json!("Resolved: traffic moved to web-1.")));

    // The instance wrote the incident a moment ago; a resolution elsewhere is seen once its
    // pace has passed.
    let fresh = AppState::new(f.state.ports.clone(), MonitorSettings::default());
    feed(&fresh, [stderr("web", "web-2", TRACEBACK[0])]).await;
    let alerts = f.bus.alerts();
    assert_eq!(alerts.len(), 2, "a new incident after the resolution");
    assert_ne!(alerts[0].alert_id, alerts[1].alert_id);

    assert!(devgem_common::incidents::mute(store, &owner, &alerts[1].alert_id).await.expect("mute"));
    let before = alert_events(&f).await.len();
    let another = AppState::new(f.state.ports.clone(), MonitorSettings::default());
    feed(&another, [stderr("web", "web-2", TRACEBACK[0])]).await;
    assert_eq!(f.bus.alerts().len(), 2, "muted: no alert");
    assert_eq!(alert_events(&f).await.len(), before, "muted: nothing told");
}

#[tokio::test]
async fn ordinary_lines_and_foreign_resources_cost_nothing() {
    let f = fixture().await;
    let mut line = stderr("web", "web-2", "Listening on 0.0.0.0:8080");
    line.severity = devgem_common::events::log_entry::Severity::Info;
    let mut foreign = stderr("web", "web-2", TRACEBACK[0]);
    foreign.resource.labels.clear();
    foreign.resource.kind = "gce_instance".into();
    feed(&f.state, [line, foreign]).await;
    assert!(f.bus.alerts().is_empty());
    let incidents = store_count(f.state.ports.store.as_ref()).await;
    assert_eq!(incidents, 0);
}

#[test]
fn thresholds_come_from_the_environment_and_bad_ones_say_how_to_write_them() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    };
    let settings =
        MonitorSettings::from_env(env(&[("DEVGEM_MONITOR_ERROR_RATE", "25/30"), ("DEVGEM_MONITOR_UPDATE_SECS", "5")]))
            .expect("valid settings");
    assert_eq!(settings.error_rate, Threshold { count: 25, window: Duration::from_secs(30) });
    assert_eq!(settings.update_every, Duration::from_secs(5));
    assert_eq!(settings.crash_loop, MonitorSettings::default().crash_loop, "the rest keep their defaults");
    for bad in ["25", "0/60", "ten/60", "10/0"] {
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([("DEVGEM_MONITOR_CRASH_LOOP", bad)]));
        let error = MonitorSettings::from_env(env(pairs)).expect_err(bad);
        assert_eq!(
            error.to_string(),
            format!(
                "DEVGEM_MONITOR_CRASH_LOOP={bad:?} is not valid: write COUNT/SECONDS with both above 0, like 10/60"
            )
        );
    }
}

async fn store_count(store: &dyn Store) -> usize {
    let query = devgem_common::ports::store::Query::collection("incidents").limit(100);
    store.query(&Scope::All, &query).await.expect("query").len()
}
