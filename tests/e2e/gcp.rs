//! The GCP data plane end to end: `devgem up` with its Store on Firestore (the emulator), a chat
//! turn that deploys a fixture app to `live`, and a kill of every function mid-deploy (the whole
//! process) after which the deployment still ends `live`, with no second build or revision.

use crate::support::{Conn, DevgemProcess, answer, api, events, say};
use devgem_e2e::copy_dir;
use devgem_infra::gcp::emulators::firestore::FirestoreEmulator;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn gcp_env(emulator: &FirestoreEmulator) -> Vec<(&'static str, String)> {
    vec![
        ("DEVGEM_STORE", "firestore".into()),
        ("GOOGLE_CLOUD_PROJECT", "devgem-e2e".into()),
        ("FIRESTORE_EMULATOR_HOST", emulator.host.clone()),
        // Up's monitor and janitor are not part of this story; no browser either.
        ("DEVGEM_NO_BROWSER", "1".into()),
    ]
}

async fn start_up(data: &Path, env: &[(&'static str, String)]) -> (DevgemProcess, Conn) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut process = DevgemProcess::start(data, &["up", "--port", "0"], &env);
    let url = process.wait_ready().await.url;
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token").trim().to_owned();
    (process, Conn { url, token })
}

async fn wait_for_event(conn: &Conn, session: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(found) = events(conn, session).await.into_iter().find(|e| done(e)) {
            return found;
        }
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_chat_turn_deploys_on_firestore_and_a_kill_mid_deploy_still_ends_live() {
    let emulator = FirestoreEmulator::start().await.expect("the Firestore emulator starts");
    let env = gcp_env(&emulator);
    let data = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/static-site"), repo.path());
    // A start that takes a few seconds, so the kill lands while the revision is starting.
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY . /srv/\nWORKDIR /srv\nCMD [\"sh\", \"-c\", \"sleep 3; exec python3 -m http.server $PORT\"]\n",
    )
    .expect("write");

    let (mut up, conn) = start_up(data.path(), &env).await;
    let session = "gcp-session-1";
    say(&conn, session, &format!("deploy {} as cloudsite", repo.path().display())).await;
    assert!(answer(&conn, session, 1).await.starts_with("Deploying"), "the deploy is acknowledged");
    let started = wait_for_event(&conn, session, "deployment_started", |e| e["type"] == "deployment_started").await;
    let id = started["data"]["deployment_id"].as_str().expect("deployment id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let deployment = api(&conn, "GET", &format!("/api/deployments/{id}"), None).await;
        if deployment["state"] == "deploying" {
            break;
        }
        assert_ne!(deployment["state"], "failed", "{deployment}");
        assert!(Instant::now() < deadline, "never deploying: {deployment}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.signal("KILL");
    up.wait_exit(Duration::from_secs(10));

    // Everything the user had is in Firestore, not in the data dir's SQLite store.
    let (mut up, conn) = start_up(data.path(), &env).await;
    let complete = wait_for_event(&conn, session, "deployment_complete", |e| e["type"] == "deployment_complete").await;
    assert_eq!(complete["data"]["state"], "live", "{complete}");
    let deployment = api(&conn, "GET", &format!("/api/deployments/{id}"), None).await;
    assert_eq!(deployment["state"], "live", "{deployment}");
    let count = |dir: &str| std::fs::read_dir(data.path().join(dir)).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count("runtime/revisions"), 1, "no duplicate revision");
    assert_eq!(count("builder/builds"), 1, "no second build");
    let (status, _) = crate::pipeline::get_host(&conn.url, "cloudsite", "/").await;
    assert_eq!(status, 200, "the app answers on its host");
    // The session's story survived the kill: numbered without gaps, the first message first.
    let seqs: Vec<u64> = events(&conn, session).await.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    up.signal("TERM");
    up.wait_exit(Duration::from_secs(20));
}
