//! The GCP data plane end to end: `devgem up` with its Store on Firestore (the emulator), its Bus
//! on Pub/Sub (the Publisher stand-in, whose push subscriptions deliver to up's
//! `/functions/<name>` routes) and its Blobs on Cloud Storage (the emulator). A chat turn deploys
//! a fixture app to `live`, and a kill of every function mid-deploy (the whole process) is
//! followed by a restart after which the deployment still ends `live`, with no second build or
//! revision: what was in flight waited in Pub/Sub and was pushed again.

use crate::support::{Conn, DevgemProcess, answer, api, events, say};
use devgem_common::events::Topic;
use devgem_e2e::copy_dir;
use devgem_infra::gcp::emulators::firestore::FirestoreEmulator;
use devgem_infra::gcp::emulators::pubsub::{PubSubStandIn, PushSubscription};
use devgem_infra::gcp::emulators::storage::StorageEmulator;
use devgem_infra::local::SubscriptionConfig;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const PROJECT: &str = "devgem-e2e";

/// The data plane's emulators, and Pub/Sub's subscriptions as terraform creates them (the same
/// names, topics, attempts and backoff as `devgem up`'s own), pushing to up on `port`.
struct DataPlane {
    firestore: FirestoreEmulator,
    storage: StorageEmulator,
    pubsub: PubSubStandIn,
}

impl DataPlane {
    async fn start(port: u16) -> Self {
        let firestore = FirestoreEmulator::start().await.expect("the Firestore emulator starts");
        let storage = StorageEmulator::start("devgem-e2e-blobs").await.expect("the storage emulator starts");
        let pubsub = PubSubStandIn::start(PROJECT).await.expect("the Pub/Sub stand-in starts");
        for topic in Topic::ALL {
            pubsub.create_topic(topic.name()).expect("topic");
        }
        for (name, topic, function, path) in devgem_cli::up::SUBSCRIPTIONS {
            let local = SubscriptionConfig::new(name, topic, path);
            let url = format!("http://127.0.0.1:{port}{}{path}", devgem_cli::up::function_prefix(function));
            let subscription = PushSubscription::new(name, topic.name(), &url)
                .max_attempts(local.max_attempts)
                .backoff(local.min_backoff, local.max_backoff)
                .ack_deadline(local.ack_deadline);
            pubsub.add_push_subscription(subscription).await.expect("subscription");
        }
        Self { firestore, storage, pubsub }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GOOGLE_CLOUD_PROJECT", PROJECT.into()),
            ("DEVGEM_STORE", "firestore".into()),
            ("FIRESTORE_EMULATOR_HOST", self.firestore.host.clone()),
            ("DEVGEM_BUS", "pubsub".into()),
            ("PUBSUB_EMULATOR_HOST", self.pubsub.emulator_host()),
            ("DEVGEM_BLOBS", "gcs".into()),
            ("STORAGE_EMULATOR_HOST", self.storage.endpoint().to_owned()),
            ("DEVGEM_BUCKET", self.storage.bucket().to_owned()),
            ("DEVGEM_NO_BROWSER", "1".into()),
        ]
    }
}

async fn start_up(data: &Path, port: u16, env: &[(&'static str, String)]) -> (DevgemProcess, Conn) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = port.to_string();
    let mut process = DevgemProcess::start(data, &["up", "--port", &port], &env);
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
async fn a_chat_turn_deploys_on_the_gcp_data_plane_and_a_kill_mid_deploy_still_ends_live() {
    let port = devgem_infra::gcp::emulators::free_port().expect("a free port");
    let plane = DataPlane::start(port).await;
    let env = plane.env();
    let data = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/static-site"), repo.path());
    // A start that takes a few seconds, so the kill lands while the revision is starting.
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY . /srv/\nWORKDIR /srv\nCMD [\"sh\", \"-c\", \"sleep 3; exec python3 -m http.server $PORT\"]\n",
    )
    .expect("write");

    let (mut up, conn) = start_up(data.path(), port, &env).await;
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

    // Everything the user had is in Firestore, not in the data dir's SQLite store; what was in
    // flight is pushed again by Pub/Sub.
    let (mut up, conn) = start_up(data.path(), port, &env).await;
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

    // Every event went through Pub/Sub (nothing through the embedded bus), none was given up on,
    // and the build's log is in Cloud Storage.
    let health = api(&conn, "GET", "/health", None).await;
    assert_eq!(health["bus"]["adapter"], "pubsub", "{health}");
    assert!(plane.pubsub.published_messages() >= 5, "{} messages", plane.pubsub.published_messages());
    for (name, ..) in devgem_cli::up::SUBSCRIPTIONS {
        let dead = plane.pubsub.dead_letters(name).await.expect("dead letters");
        assert!(dead.is_empty(), "{name} dead-lettered {dead:?}");
    }
    use devgem_common::ports::blobs::Blobs as _;
    let gcs = devgem_infra::gcp::storage::GcsBlobs::connect(&plane.storage.config()).await.expect("gcs client");
    let logs = gcs.list("builds/").await.expect("list the bucket");
    assert!(
        logs.iter().any(|blob| blob.key.as_str().ends_with("/log.txt")),
        "the build log is in the bucket: {logs:?}"
    );
    assert!(!data.path().join("blobs").join("builds").exists(), "no blob went to the data dir");
    up.signal("TERM");
    up.wait_exit(Duration::from_secs(20));
    plane.pubsub.shutdown(Duration::from_secs(1)).await;
}
