//! The janitor on the router set: a lost event is published again and the deployment finishes,
//! a deployment that stays stuck fails with its cause, two janitors at once act once, and pruning
//! keeps the serving revision and the rollback target.

use crate::support::{TestApp, api, spawn_app};
use devgem_common::ids::{CorrelationId, DeploymentId, ServiceName, SessionId, UserId};
use devgem_common::model::deployment::{Deployment, DeploymentState, NewDeployment};
use devgem_common::ports::source::{SourceLocation, SourceSpec};
use devgem_common::ports::store::{DocKey, StoreExt};
use devgem_e2e::copy_dir;
use devgem_janitor::Deadlines;
use devgem_janitor::sweep::sweep;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

fn janitor(app: &TestApp, deadline: Duration) -> devgem_janitor::AppState {
    let mut state = devgem_cli::functions::janitor_state(&app.embedded);
    state.deadlines = Deadlines { analysis: deadline, build: deadline, deploy: deadline };
    state
}

/// A deployment stored as if its `deployment.requested` event had been lost.
async fn lost_deployment(app: &TestApp, source: &Path, name: &str) -> DeploymentId {
    let now = chrono::Utc::now() - chrono::Duration::minutes(10);
    let deployment = Deployment::new(
        NewDeployment {
            id: DeploymentId::generate(),
            owner: UserId::admin(),
            session_id: SessionId::generate(),
            correlation_id: CorrelationId::generate(),
            source: SourceSpec { location: SourceLocation::Local { path: source.to_owned() }, git_ref: None },
            service: ServiceName::parse(name).expect("name"),
        },
        now,
    );
    let key = DocKey::new("deployments", deployment.id.as_str()).expect("key");
    app.embedded.ports.store.create(key, UserId::admin(), &deployment).await.expect("stored");
    deployment.id
}

async fn wait_state(app: &TestApp, id: &DeploymentId, done: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let deployment = api(app, "GET", &format!("/api/deployments/{id}"), None).await;
        if deployment["state"].as_str().is_some_and(&done) {
            return deployment;
        }
        assert!(Instant::now() < deadline, "stuck: {deployment}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_lost_event_is_sent_again_once_even_with_two_janitors() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/static-site"), repo.path());
    let id = lost_deployment(&app, repo.path(), "lost").await;
    let state = janitor(&app, Duration::from_secs(60));
    let (first, second) = tokio::join!(sweep(&state), sweep(&state));
    let nudged = first.expect("sweep").nudged.len() + second.expect("sweep").nudged.len();
    assert_eq!(nudged, 1, "two janitors at once send the event once");
    let live = wait_state(&app, &id, |s| s == "live").await;
    assert!(live["nudged_at"].is_string());
}

#[tokio::test]
async fn a_deployment_that_stays_stuck_fails_with_its_cause() {
    let app = spawn_app().await;
    let id = lost_deployment(&app, Path::new("/nonexistent"), "stuck").await;
    // Make it look stuck in the build, waiting on a build that will never report.
    let key = DocKey::new("deployments", id.as_str()).expect("key");
    app.embedded
        .ports
        .store
        .modify::<Deployment, _>(&key, 3, |d| {
            d.state = DeploymentState::Building;
            d.build_id = Some("0000-gone".into());
            Ok(())
        })
        .await
        .expect("modify");
    let report = sweep(&janitor(&app, Duration::from_secs(60))).await.expect("sweep");
    assert_eq!(report.failed, vec![id.to_string()]);
    let failed = wait_state(&app, &id, |s| s == "failed").await;
    assert_eq!(failed["failure"]["cause"], "timeout");
    assert_eq!(failed["failure"]["stage"], "build");
    assert!(
        failed["failure"]["message"].as_str().is_some_and(|m| m.contains("build stage made no progress for 1 min"))
    );
    let again = sweep(&janitor(&app, Duration::from_secs(60))).await.expect("sweep");
    assert!(again.failed.is_empty() && again.nudged.is_empty(), "a failed deployment is left alone: {again:?}");
}

#[tokio::test]
async fn pruning_keeps_the_newest_the_serving_and_the_rollback_target() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/static-site"), repo.path());
    let client = reqwest::Client::new();
    for release in 1..=6 {
        std::fs::write(repo.path().join("index.html"), format!("release {release}")).expect("write");
        let created: Value = client
            .post(format!("{}/api/deployments", app.url))
            .bearer_auth(&app.admin_token)
            .json(&json!({ "source": repo.path(), "name": "pruned" }))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        let id = DeploymentId::parse(created["deployment_id"].as_str().expect("id")).expect("id");
        let live = wait_state(&app, &id, |s| matches!(s, "live" | "failed")).await;
        assert_eq!(live["state"], "live", "{live}");
    }
    let service = api(&app, "GET", "/api/services/pruned", None).await;
    let names: Vec<String> = service["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names.len(), 6);
    // Roll back to release 2: it serves, and release 1 becomes the rollback target.
    let accepted = client
        .post(format!("{}/api/services/pruned/rollback", app.url))
        .bearer_auth(&app.admin_token)
        .json(&json!({ "to": names[1] }))
        .send()
        .await
        .expect("request");
    assert_eq!(accepted.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api(&app, "GET", "/api/services/pruned", None).await["traffic"]["serving"] != names[1].as_str() {
        assert!(Instant::now() < deadline, "the rollback did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = sweep(&janitor(&app, Duration::from_secs(600))).await.expect("sweep");
    assert_eq!(report.pruned_revisions, vec![names[2].clone()], "older than the newest three, and not protected");
    let service = api(&app, "GET", "/api/services/pruned", None).await;
    let kept: Vec<&str> =
        service["revisions"].as_array().expect("revisions").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(kept, [&names[0], &names[1], &names[3], &names[4], &names[5]].map(String::as_str));
    assert_eq!(service["traffic"]["serving"], names[1].as_str());
    assert_eq!(service["traffic"]["rollback_target"], names[0].as_str());
    let revisions = std::fs::read_dir(app.embedded.data_dir.join("runtime/revisions")).expect("dir").count();
    assert_eq!(revisions, 5);
    // Builds: the newest three deployments' stay, and so do the images of the remaining
    // revisions (releases 1 and 2); release 3's build goes with its revision.
    assert_eq!(report.pruned_builds.len(), 1, "{report:?}");
    let builds = std::fs::read_dir(app.embedded.data_dir.join("builder/builds")).expect("dir").count();
    assert_eq!(builds, 5);
    let again = sweep(&janitor(&app, Duration::from_secs(600))).await.expect("sweep");
    assert!(again.pruned_builds.is_empty() && again.pruned_revisions.is_empty(), "nothing twice: {again:?}");
}

#[test]
fn serve_janitor_once_runs_one_sweep_and_prints_its_report() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(crate::support::devgem_bin())
        .arg("--data-dir")
        .arg(data.path())
        .args(["serve", "janitor", "--once"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(
        report,
        json!({ "nudged": [], "failed": [], "pruned_revisions": [], "pruned_builds": [], "pruned_ledger_entries": 0, "pruned_dead_letters": 0,
               "resolved_incidents": 0 })
    );
    let out = std::process::Command::new(crate::support::devgem_bin())
        .arg("--data-dir")
        .arg(data.path())
        .args(["serve", "build", "--once"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--once runs the janitor"));
}

#[tokio::test]
async fn dead_letters_past_their_retention_are_pruned() {
    use devgem_common::events::Topic;
    use devgem_common::ports::bus::{Bus, OutboundMessage};
    use devgem_infra::local::SubscriptionConfig;
    let app = spawn_app().await;
    // An endpoint that always fails: its message ends as a dead letter after its deliveries.
    let failing = axum::Router::new()
        .route("/push", axum::routing::post(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }));
    let config = SubscriptionConfig {
        max_attempts: 2,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(40),
        ..SubscriptionConfig::new("always-fails", Topic::Releases, "/push")
    };
    app.embedded.bus.subscribe(config, failing).await.expect("subscribe");
    let message = OutboundMessage { data: "{}".into(), attributes: Default::default(), ordering_key: None };
    app.embedded.bus.publish(Topic::Releases, message).await.expect("publish");
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.embedded.bus.stats().await.expect("stats").dead_letters == 0 {
        assert!(Instant::now() < deadline, "the junk message was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = janitor(&app, Duration::from_secs(60));
    assert_eq!(sweep(&state).await.expect("sweep").pruned_dead_letters, 0, "a fresh dead letter stays");
    let mut later = janitor(&app, Duration::from_secs(60));
    let clock = devgem_common::clock::ManualClock::new(chrono::Utc::now() + chrono::Duration::days(8));
    later.ports.clock = std::sync::Arc::new(clock);
    assert_eq!(sweep(&later).await.expect("sweep").pruned_dead_letters, 1);
    assert_eq!(app.embedded.bus.stats().await.expect("stats").dead_letters, 0);
}
