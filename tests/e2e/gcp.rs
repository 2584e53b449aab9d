//! The GCP data plane end to end: `devgem up` with its Store on Firestore (the emulator), its Bus
//! on Pub/Sub (the Publisher stand-in, whose push subscriptions deliver to up's
//! `/functions/<name>` routes) and its Blobs on Cloud Storage (the emulator). A chat turn deploys
//! a fixture app to `live`, and a kill of every function mid-deploy (the whole process) is
//! followed by a restart after which the deployment still ends `live`, with no second build or
//! revision: what was in flight waited in Pub/Sub and was pushed again.
//!
//! Then the whole managed path: the same data plane, and the control plane on the in-test
//! stand-ins of Cloud Build, Cloud Run, Secret Manager, Logging and IAM. A chat turn deploys a
//! repository served over git to `live`, and a secret set afterwards reaches Cloud Run as a pinned
//! Secret Manager reference.

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

/// Polls the deployment until it is in `state`; failing on the way fails the test.
async fn wait_for_state(conn: &Conn, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let deployment = api(conn, "GET", &format!("/api/deployments/{id}"), None).await;
        if deployment["state"] == state {
            return deployment;
        }
        assert_ne!(deployment["state"], "failed", "{deployment}");
        assert!(Instant::now() < deadline, "never {state}: {deployment}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    wait_for_state(&conn, &id, "deploying").await;
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

/// The control plane's stand-ins, as `devgem up` reaches them (`DEVGEM_<API>_ENDPOINT`).
struct ControlPlane {
    cloud_build: devgem_infra::gcp::emulators::cloudbuild::CloudBuildStandIn,
    cloud_run: devgem_infra::gcp::emulators::cloudrun::CloudRunStandIn,
    secret_manager: devgem_infra::gcp::emulators::secretmanager::SecretManagerStandIn,
    logging: devgem_infra::gcp::emulators::logging::LoggingStandIn,
    iam: devgem_infra::gcp::emulators::iam::IamStandIn,
}

const IMAGE_REPOSITORY: &str = "us-central1-docker.pkg.dev/devgem-e2e/apps";

impl ControlPlane {
    /// Cloud Build announces its builds on the data plane's `cloud-builds` topic, as it does on
    /// GCP.
    async fn start(data: &DataPlane) -> Self {
        use devgem_infra::gcp::emulators::{cloudbuild, cloudrun, iam, logging, secretmanager};
        let config = devgem_infra::gcp::GcpConfig::from_env(|name| match name {
            "GOOGLE_CLOUD_PROJECT" => Some(PROJECT.to_owned()),
            "PUBSUB_EMULATOR_HOST" => Some(data.pubsub.emulator_host()),
            _ => None,
        })
        .expect("config");
        let bus = devgem_infra::gcp::pubsub::PubSubBus::connect(&config).await.expect("Pub/Sub client");
        let logging = logging::LoggingStandIn::start().await.expect("Logging stand-in");
        let cloud_build = cloudbuild::CloudBuildStandIn::start(std::sync::Arc::new(bus), Some(logging.sink()))
            .await
            .expect("Cloud Build");
        cloud_build.set_run_time(Duration::from_millis(500));
        cloud_build.set_log_lines(vec!["Step 1/3 : FROM debian:bookworm-slim".into(), "Pushed image".into()]);
        let cloud_run = cloudrun::CloudRunStandIn::start().await.expect("Cloud Run stand-in");
        let secret_manager = secretmanager::SecretManagerStandIn::start().await.expect("Secret Manager stand-in");
        let iam = iam::IamStandIn::start().await.expect("IAM stand-in");
        Self { cloud_build, cloud_run, secret_manager, logging, iam }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DEVGEM_BUILDER", "cloudbuild".into()),
            ("DEVGEM_RUNTIME", "cloudrun".into()),
            ("DEVGEM_SECRETS", "secretmanager".into()),
            ("DEVGEM_CLOUD_BUILD_ENDPOINT", self.cloud_build.endpoint()),
            ("DEVGEM_CLOUD_RUN_ENDPOINT", self.cloud_run.endpoint()),
            ("DEVGEM_SECRET_MANAGER_ENDPOINT", self.secret_manager.endpoint()),
            ("DEVGEM_LOGGING_ENDPOINT", self.logging.endpoint()),
            ("DEVGEM_IAM_ENDPOINT", self.iam.endpoint()),
            ("DEVGEM_REGION", "us-central1".into()),
            ("DEVGEM_IMAGE_REPOSITORY", IMAGE_REPOSITORY.into()),
            ("DEVGEM_BUILD_SERVICE_ACCOUNT", format!("user-builds@{PROJECT}.iam.gserviceaccount.com")),
            // Terraform's setting: one account for users' services (see terraform/iam.tf).
            ("DEVGEM_APP_SERVICE_ACCOUNT", format!("apps@{PROJECT}.iam.gserviceaccount.com")),
            ("DEVGEM_SOURCE_ALLOW_HOSTS", "127.0.0.1".into()),
        ]
    }
}

#[tokio::test]
async fn a_chat_turn_deploys_to_live_with_every_gcp_adapter() {
    let port = devgem_infra::gcp::emulators::free_port().expect("a free port");
    let data_plane = DataPlane::start(port).await;
    let control_plane = ControlPlane::start(&data_plane).await;
    let mut env = data_plane.env();
    env.extend(control_plane.env());
    let repo = devgem_e2e::served_repo(
        Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/static-site")),
        Duration::ZERO,
    )
    .await;
    let url = format!("http://127.0.0.1:{}/app.git", repo.addr.port());
    let data = tempfile::tempdir().expect("tempdir");
    let (mut up, conn) = start_up(data.path(), port, &env).await;

    let session = "gcp-managed-1";
    say(&conn, session, &format!("deploy {url} as managed")).await;
    assert!(answer(&conn, session, 1).await.starts_with("Deploying"), "the deploy is acknowledged");
    let started = wait_for_event(&conn, session, "deployment_started", |e| e["type"] == "deployment_started").await;
    let id = started["data"]["deployment_id"].as_str().expect("deployment id").to_owned();
    let live = wait_for_state(&conn, &id, "live").await;

    // Cloud Build got one build: cloned at the ref, kaniko with its cache, the user's image path.
    let builds = control_plane.cloud_build.builds();
    assert_eq!(builds.len(), 1, "one build");
    let steps: Vec<String> = builds[0].steps.iter().flat_map(|s| s.args.clone()).collect();
    assert!(steps.iter().any(|a| a == &url), "the build clones the repository: {steps:?}");
    assert!(steps.iter().any(|a| a == "--cache=true"), "{steps:?}");
    let destination = steps.iter().find_map(|a| a.strip_prefix("--destination=")).expect("kaniko destination");
    assert!(destination.starts_with(&format!("{IMAGE_REPOSITORY}/admin/managed:")), "{destination}");

    // Cloud Run serves that image, public, and the URL the user is given answers.
    let services = control_plane.cloud_run.service_names();
    assert_eq!(services.len(), 1, "{services:?}");
    let service = control_plane.cloud_run.service(&services[0]).expect("service");
    let container = service.template.as_ref().and_then(|t| t.containers.first()).expect("container");
    assert_eq!(container.image, destination, "the built image is deployed");
    let invokers = control_plane.cloud_run.iam_policy(&services[0]).members("roles/run.invoker");
    assert_eq!(invokers, ["allUsers"]);
    let app_url = live["url"].as_str().expect("url");
    let answered = reqwest::get(app_url).await.expect("the service answers");
    assert_eq!(answered.status(), 200, "{app_url}");
    // The build's log came back from Cloud Logging into the bucket.
    let log = api(&conn, "GET", &format!("/api/deployments/{id}/logs"), None).await;
    assert!(log.to_string().contains("Pushed image"), "{log}");

    // A secret set now is stored in Secret Manager and reaches Cloud Run pinned to its version.
    let changed = api(
        &conn,
        "POST",
        &format!("/api/deployments/{id}/env"),
        Some(serde_json::json!({"secrets": {"API_KEY": "s3cr3t-value"}})),
    )
    .await;
    let second = changed["deployment_id"].as_str().expect("a new deployment").to_owned();
    wait_for_state(&conn, &second, "live").await;
    let service = control_plane.cloud_run.service(&services[0]).expect("service");
    let container = service.template.as_ref().and_then(|t| t.containers.first()).expect("container");
    let reference = container
        .env
        .iter()
        .find(|e| e.name == "API_KEY")
        .and_then(|e| e.value_source())
        .and_then(|s| s.secret_key_ref.clone())
        .expect("API_KEY is a secret reference");
    assert_eq!(reference.version, "1", "pinned to the version just added");
    let env_view = api(&conn, "GET", &format!("/api/deployments/{second}/env"), None).await;
    assert_eq!(env_view["sync"]["live_env"], "compared", "{env_view}");
    assert_eq!(env_view["sync"]["secrets"], "compared", "{env_view}");
    assert!(!env_view.to_string().contains("s3cr3t-value"), "the value never comes back: {env_view}");
    let secret_id = reference.secret.rsplit('/').next().expect("secret id");
    let versions = control_plane.secret_manager.versions(PROJECT, secret_id).expect("the secret is in Secret Manager");
    assert_eq!(versions.len(), 1, "one version added: {versions:?}");

    up.signal("TERM");
    up.wait_exit(Duration::from_secs(20));
    data_plane.pubsub.shutdown(Duration::from_secs(1)).await;
}
