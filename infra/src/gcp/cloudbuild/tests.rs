//! The Cloud Build builder against the Cloud Build and Cloud Logging stand-ins.

use super::*;
use crate::gcp::config::Endpoints;
use crate::gcp::emulators::cloudbuild::{CloudBuildStandIn, Outcome};
use crate::gcp::emulators::logging::LoggingStandIn;
use crate::gcp::logging::LoggingOptions;
use crate::resilience::{BreakerPolicy, RetryPolicy};
use crate::test_support::RecordingBus;
use devgem_common::events::Topic;
use devgem_common::events::cloud_build::CloudBuildNotification;
use devgem_common::ids::{DeploymentId, ServiceName};
use devgem_common::ports::source::SourceSpec;
use google_cloud_build_v1::model::Build as ApiBuild;
use http::StatusCode;
use serde_json::json;
use std::collections::BTreeMap;

const DEPLOYMENT: &str = "0190a4c3104a7e21b6d3f08c5a92e4b7";
const COMMIT: &str = "9c41e7a0d2b58f3e61c7d4a98b0f25e3c6a1d7b4";
const REPOSITORY: &str = "europe-west1-docker.pkg.dev/demo/apps";
const ACCOUNT: &str = "builder@demo.iam.gserviceaccount.com";
const DOCKERFILE: &str =
    "FROM python:3.12-slim\nCOPY . .\nCMD [\"sh\", \"-c\", \"exec gunicorn -b 0.0.0.0:$PORT app:app\"]\n";

struct Fixture {
    builds: CloudBuildStandIn,
    logs: LoggingStandIn,
    bus: Arc<RecordingBus>,
    builder: CloudBuilder,
}

fn config(builds: &CloudBuildStandIn, logs: &LoggingStandIn) -> GcpConfig {
    GcpConfig {
        project: "demo".into(),
        region: "europe-west1".into(),
        image_repository: Some(REPOSITORY.into()),
        build_service_account: Some(ACCOUNT.into()),
        endpoints: Endpoints {
            cloud_build: Some(builds.endpoint()),
            logging: Some(logs.endpoint()),
            ..Endpoints::default()
        },
        ..GcpConfig::default()
    }
}

/// Retries and cool-down short enough that a 429 (which opens the breaker at once) is followed by
/// a probe within the retries.
fn quick_api() -> Api {
    Api::with_policies(
        API,
        BreakerPolicy { failures: 5, cool_down: Duration::from_millis(20) },
        RetryPolicy { attempts: 5, first_delay: Duration::from_millis(50), max_delay: Duration::from_millis(200) },
    )
}

async fn fixture_with(api: Api, edit: impl FnOnce(&mut GcpConfig)) -> Fixture {
    let bus = Arc::new(RecordingBus::default());
    let logs = LoggingStandIn::start().await.expect("logging stand-in");
    let builds = CloudBuildStandIn::start(bus.clone(), Some(logs.sink())).await.expect("cloud build stand-in");
    let mut config = config(&builds, &logs);
    edit(&mut config);
    let options = LoggingOptions {
        api: Api::with_policies(
            "Cloud Logging",
            BreakerPolicy::default(),
            RetryPolicy { attempts: 3, first_delay: Duration::from_millis(20), max_delay: Duration::from_millis(50) },
        ),
        min_interval: Duration::ZERO,
    };
    let logging = Arc::new(CloudLogging::connect_with(&config, options).await.expect("logging"));
    let builder = CloudBuilder::connect_with(&config, logging, api).await.expect("builder");
    Fixture { builds, logs, bus, builder }
}

async fn fixture() -> Fixture {
    fixture_with(quick_api(), |_| {}).await
}

fn request() -> BuildRequest {
    BuildRequest {
        deployment_id: DeploymentId::parse(DEPLOYMENT).expect("id"),
        owner: UserId::parse("Alice_Smith").expect("owner"),
        service: ServiceName::parse("flask-todo").expect("service"),
        source: SourceSpec {
            location: SourceLocation::Git { url: "https://github.com/octo-org/flask-todo.git".into() },
            git_ref: Some(COMMIT.into()),
        },
        dockerfile: DOCKERFILE.into(),
        extra_files: BTreeMap::from([
            (".dockerignore".to_owned(), ".git\n__pycache__\n".to_owned()),
            ("config/it's.ini".to_owned(), "quote = 'single' and \"double\"\n".to_owned()),
        ]),
        app_dir: "./services/web/".into(),
        timeout: Duration::from_secs(900),
    }
}

/// The first notification of `build_id` in a final status.
async fn final_notification(bus: &RecordingBus, build_id: &str) -> CloudBuildNotification {
    for index in 0.. {
        let notification = bus.cloud_build(index).await;
        if notification.build_id == build_id && notification.status.is_final() {
            return notification;
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Runs a `files` step's script as Cloud Build would (after its `$$` unescaping) in `dir`.
fn run_script(script: &str, dir: &std::path::Path) {
    let status = std::process::Command::new("bash")
        .args(["-c", &script.replace("$$", "$")])
        .current_dir(dir)
        .status()
        .expect("bash runs");
    assert!(status.success(), "the script failed: {script}");
}

#[tokio::test]
async fn submit_creates_the_build_that_clones_writes_the_files_and_builds_with_kaniko() {
    let f = fixture().await;
    let handle = f.builder.submit(request()).await.expect("submitted");

    let creates = f.builds.requests().of("CreateBuild");
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].path, "/v1/projects/demo/locations/europe-west1/builds", "a regional build");
    let sent: ApiBuild = serde_json::from_value(creates[0].body.clone()).expect("a Build");
    let created = f.builds.builds();
    assert_eq!(created.len(), 1);
    assert_eq!(handle.build_id, created[0].id, "the id from the operation's metadata");
    assert_eq!(handle.log_url.as_deref(), Some(created[0].log_url.as_str()));
    assert!(created[0].log_url.contains(&handle.build_id));

    let image =
        format!("{REPOSITORY}/{}/flask-todo:{DEPLOYMENT}", owner_path(&UserId::parse("Alice_Smith").expect("id")));
    assert!(image.starts_with(&format!("{REPOSITORY}/alice-smith-")), "a per-user path: {image}");
    let ids: Vec<&str> = sent.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["clone", "checkout", "files", "build", "pull"]);

    let clone = &sent.steps[0];
    assert_eq!(clone.name, GIT_IMAGE);
    assert_eq!(
        clone.args,
        ["clone", "--filter=blob:none", "--no-checkout", "--", "https://github.com/octo-org/flask-todo.git", "src"]
    );
    let checkout = &sent.steps[1];
    assert_eq!((checkout.name.as_str(), checkout.dir.as_str()), (GIT_IMAGE, "src"));
    assert_eq!(checkout.args, ["checkout", "--quiet", COMMIT]);

    // The file step, run for real: it must recreate the Dockerfile and every extra file.
    let files = &sent.steps[2];
    assert_eq!((files.entrypoint.as_str(), files.dir.as_str()), ("bash", "src"));
    assert_eq!(files.args[0], "-c");
    assert!(files.args[1].contains("| base64 -d >"), "{}", files.args[1]);
    let workspace = tempfile::tempdir().expect("tempdir");
    let checkout_dir = workspace.path().join("src");
    std::fs::create_dir_all(&checkout_dir).expect("src");
    run_script(&files.args[1], &checkout_dir);
    let read = |path: &str| std::fs::read_to_string(checkout_dir.join(path)).expect(path);
    assert_eq!(read("services/web/Dockerfile"), DOCKERFILE);
    assert_eq!(read("services/web/.dockerignore"), ".git\n__pycache__\n");
    assert_eq!(read("services/web/config/it's.ini"), "quote = 'single' and \"double\"\n");

    let kaniko = &sent.steps[3];
    assert_eq!(kaniko.name, KANIKO_IMAGE);
    assert!(kaniko.name.starts_with("gcr.io/kaniko-project/executor"));
    for arg in [
        "--cache=true".to_owned(),
        format!("--destination={image}"),
        "--dockerfile=/workspace/src/services/web/Dockerfile".to_owned(),
        "--context=dir:///workspace/src/services/web".to_owned(),
        format!("--label=dev.devgem.deployment={DEPLOYMENT}"),
    ] {
        assert!(kaniko.args.contains(&arg), "{arg} in {:?}", kaniko.args);
    }
    assert_eq!(sent.steps[4].name, DOCKER_IMAGE);
    assert_eq!(sent.steps[4].args, ["pull", image.as_str()]);
    assert_eq!(sent.images, std::slice::from_ref(&image));

    assert!(sent.tags.contains(&format!("devgem-deployment-{DEPLOYMENT}")), "{:?}", sent.tags);
    assert!(sent.tags.contains(&"devgem-service-flask-todo".to_owned()));
    assert!(sent.tags.iter().any(|t| t.starts_with("devgem-submit-")), "{:?}", sent.tags);
    assert_eq!(serde_json::to_value(sent.timeout.as_ref()).expect("timeout"), json!("900s"));
    assert_eq!(sent.service_account, format!("projects/demo/serviceAccounts/{ACCOUNT}"));
    let options = sent.options.as_ref().expect("options");
    assert_eq!(options.logging, LoggingMode::CloudLoggingOnly);
}

#[tokio::test]
async fn completion_arrives_as_a_cloud_build_notification() {
    let f = fixture().await;
    let handle = f.builder.submit(request()).await.expect("submitted");
    let done = final_notification(&f.bus, &handle.build_id).await;
    assert_eq!(done.status, BuildStatus::Success);
    assert_eq!(done.build.deployment_tag(), Some(DEPLOYMENT), "the completion handler finds the deployment");
    let image = done.build.images.first().expect("the image the completion handler releases");
    assert!(image.ends_with(&format!("/flask-todo:{DEPLOYMENT}")), "{image}");
    assert!(done.build.finish_time.is_some());
    // Published as Cloud Build publishes: enums by name, what DevGem does not model kept.
    let raw = f.bus.on(Topic::CloudBuilds);
    let last: serde_json::Value = serde_json::from_slice(&raw.last().expect("published").data).expect("json");
    assert_eq!(last["status"], "SUCCESS");
    assert_eq!(last["options"]["logging"], "CLOUD_LOGGING_ONLY");
    assert!(done.build.extra.contains_key("steps"));
    assert!(last["results"]["images"][0]["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")));
    // Earlier notifications were QUEUED then WORKING.
    let statuses: Vec<String> = raw.iter().map(|m| m.attributes.get("status").cloned().unwrap_or_default()).collect();
    assert_eq!(statuses, ["QUEUED", "WORKING", "SUCCESS"]);
}

#[tokio::test]
async fn a_failed_build_reports_its_step_failure() {
    let f = fixture().await;
    f.builds.set_outcome(Outcome::Failure("Build step 3 \"build\" failed".into()));
    let handle = f.builder.submit(request()).await.expect("submitted");
    let done = final_notification(&f.bus, &handle.build_id).await;
    assert_eq!(done.status, BuildStatus::Failure);
    assert_eq!(done.build.failure_info.as_ref().and_then(|i| i.kind.as_deref()), Some("USER_BUILD_STEP"));
    let lines = f.builder.log_lines(&handle.build_id, 0).await.expect("log");
    assert_eq!(lines.last().map(String::as_str), Some("ERROR: Build step 3 \"build\" failed"));
}

#[test]
fn cloud_builds_own_notifications_decode_with_the_api_model_and_the_completion_handler() {
    for fixture in [
        include_str!("../../../../common/fixtures/foreign/cloud_build_notification.json"),
        include_str!("../../../../common/fixtures/foreign/cloud_build_failure.json"),
    ] {
        let build: ApiBuild = serde_json::from_str(fixture).expect("the API's Build");
        let attributes = BTreeMap::from([
            ("buildId".to_owned(), build.id.clone()),
            ("status".to_owned(), build.status.name().expect("status").to_owned()),
        ]);
        let notification = CloudBuildNotification::decode(&attributes, fixture.as_bytes()).expect("decodes");
        assert_eq!(notification.build_id, build.id);
        assert!(notification.status.is_final());
    }
}

#[tokio::test]
async fn cancel_stops_a_running_build_and_says_when_there_is_nothing_to_cancel() {
    let f = fixture().await;
    f.builds.set_run_time(Duration::from_secs(120));
    let handle = f.builder.submit(request()).await.expect("submitted");
    f.builder.cancel(&handle.build_id).await.expect("cancelled");
    let cancels = f.builds.requests().of("CancelBuild");
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].path, format!("/v1/projects/demo/locations/europe-west1/builds/{}:cancel", handle.build_id));
    let done = final_notification(&f.bus, &handle.build_id).await;
    assert_eq!(done.status, BuildStatus::Cancelled);

    let again = f.builder.cancel(&handle.build_id).await.expect_err("already ended");
    assert!(matches!(again, BuilderError::Refused(_)), "{again}");
    assert!(again.to_string().contains("already ended"), "{again}");
    let missing = f.builder.cancel("0f6b2c9e-0000-4000-8000-000000000000").await.expect_err("unknown");
    assert!(matches!(missing, BuilderError::NotFound(_)), "{missing}");
    let sent = f.builds.requests().of("CancelBuild").len();
    let bad = f.builder.cancel("../x").await.expect_err("not an id");
    assert!(matches!(bad, BuilderError::NotFound(_)), "{bad}");
    assert_eq!(f.builds.requests().of("CancelBuild").len(), sent, "never sent");
    // Cloud Build keeps its builds; without Blobs there is nothing of DevGem's to remove.
    assert!(!f.builder.delete_build(&handle.build_id).await.expect("nothing to delete"));
}

#[tokio::test]
async fn log_lines_come_from_cloud_logging_from_a_line_on_with_stable_numbers() {
    let f = fixture().await;
    f.builds.set_log_lines(vec!["Step #0: cloning".into(), "Step #3: building".into(), "Step #3: pushing".into()]);
    let handle = f.builder.submit(request()).await.expect("submitted");
    final_notification(&f.bus, &handle.build_id).await;
    let all = f.builder.log_lines(&handle.build_id, 0).await.expect("log");
    assert_eq!(all, ["Step #0: cloning", "Step #3: building", "Step #3: pushing", "DONE"]);
    assert_eq!(f.builder.log_lines(&handle.build_id, 2).await.expect("log"), ["Step #3: pushing", "DONE"]);
    assert!(f.builder.log_lines(&handle.build_id, 9).await.expect("log").is_empty());

    let first = &f.logs.requests().of("ListLogEntries")[0];
    assert_eq!(first.body["resourceNames"], json!(["projects/demo"]));
    assert_eq!(first.body["orderBy"], "timestamp asc");
    assert_eq!(
        first.body["filter"],
        format!(
            r#"logName="projects/demo/logs/cloudbuild" AND resource.type="build" AND resource.labels.build_id="{}""#,
            handle.build_id
        )
    );
    let later = &f.logs.requests().of("ListLogEntries")[1];
    assert!(later.body["filter"].as_str().is_some_and(|t| t.contains("timestamp>=")), "only what is new: {later:?}");

    // A line Cloud Logging makes visible late (stamped before the last one) comes after the
    // lines already numbered, which keep their numbers.
    let stamped = (Utc::now() - chrono::Duration::seconds(5)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    f.logs
        .sink()
        .write(json!({
            "logName": "projects/demo/logs/cloudbuild",
            "resource": {"type": "build", "labels": {"build_id": handle.build_id}},
            "textPayload": "indexed late",
            "timestamp": stamped,
        }))
        .expect("late line");
    assert_eq!(f.builder.log_lines(&handle.build_id, 4).await.expect("log"), ["indexed late"]);
    assert_eq!(f.builder.log_lines(&handle.build_id, 0).await.expect("log")[..4], all[..]);
}

#[tokio::test]
async fn a_429_then_a_503_are_retried_and_one_build_is_created() {
    let f = fixture().await;
    f.builds.faults().fail_next("CreateBuild", StatusCode::TOO_MANY_REQUESTS, 1);
    f.builds.faults().fail_next("CreateBuild", StatusCode::SERVICE_UNAVAILABLE, 1);
    let handle = f.builder.submit(request()).await.expect("submitted after retries");
    assert_eq!(f.builds.requests().of("CreateBuild").len(), 3);
    // After the 503 (which might have created the build), the retry looked for it first.
    assert_eq!(f.builds.requests().of("ListBuilds").len(), 1);
    assert_eq!(f.builds.builds().len(), 1);
    assert_eq!(f.builds.builds()[0].id, handle.build_id);
}

#[tokio::test]
async fn a_build_whose_answer_was_lost_is_adopted_not_created_twice() {
    let f = fixture().await;
    f.builds.lose_create_responses(1);
    let handle = f.builder.submit(request()).await.expect("submitted");
    assert_eq!(f.builds.requests().of("CreateBuild").len(), 1, "not created again");
    let created = f.builds.builds();
    assert_eq!(created.len(), 1);
    assert_eq!(handle.build_id, created[0].id);
    let lookup = &f.builds.requests().of("ListBuilds")[0];
    let submit_tag = created[0].tags.iter().find(|t| t.starts_with("devgem-submit-")).expect("tag");
    assert_eq!(lookup.query.get("filter"), Some(&format!("tags=\"{submit_tag}\"")));
    assert_eq!(lookup.path, "/v1/projects/demo/locations/europe-west1/builds");
}

#[tokio::test]
async fn a_409_without_a_build_of_ours_is_a_refusal() {
    let f = fixture().await;
    f.builds.faults().fail_next("CreateBuild", StatusCode::CONFLICT, 1);
    let error = f.builder.submit(request()).await.expect_err("refused");
    assert!(matches!(error, BuilderError::Refused(_)), "{error}");
    assert!(error.to_string().contains("Cloud Build"), "{error}");
    assert_eq!(f.builds.requests().of("CreateBuild").len(), 1, "not retried");
    assert_eq!(f.builds.requests().of("ListBuilds").len(), 1, "looked for its own build first");
}

#[tokio::test]
async fn a_persistent_503_gives_up_naming_cloud_build_and_then_fails_fast() {
    let api = Api::with_policies(
        API,
        BreakerPolicy { failures: 5, cool_down: Duration::from_secs(60) },
        RetryPolicy { attempts: 5, first_delay: Duration::from_millis(10), max_delay: Duration::from_millis(20) },
    );
    let f = fixture_with(api, |_| {}).await;
    f.builds.faults().fail_next("CreateBuild", StatusCode::SERVICE_UNAVAILABLE, 50);
    let error = f.builder.submit(request()).await.expect_err("down");
    assert!(matches!(error, BuilderError::Unavailable(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("Cloud Build") && message.contains("CreateBuild"), "{message}");
    assert!(message.contains("UNAVAILABLE"), "{message}");
    assert_eq!(f.builds.requests().of("CreateBuild").len(), 5, "five attempts");
    assert!(f.builds.builds().is_empty());

    let error = f.builder.submit(request()).await.expect_err("breaker open");
    assert!(matches!(error, BuilderError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("Cloud Build is failing repeatedly"), "{error}");
    assert_eq!(f.builds.requests().of("CreateBuild").len(), 5, "nothing sent while the breaker is open");
}

#[tokio::test]
async fn a_local_directory_is_refused_with_what_to_do() {
    let f = fixture().await;
    let mut local = request();
    local.source.location = SourceLocation::Local { path: "/home/alice/flask-todo".into() };
    let error = f.builder.submit(local).await.expect_err("refused");
    assert!(matches!(error, BuilderError::Refused(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("/home/alice/flask-todo") && message.contains("Cloud Build cannot read"), "{message}");
    assert!(message.contains("https URL"), "{message}");
    assert!(f.builds.requests().all().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_missing_or_malformed_image_repository_says_how_to_set_it() {
    let f = fixture_with(quick_api(), |c| c.image_repository = None).await;
    let error = f.builder.submit(request()).await.expect_err("refused");
    assert!(matches!(error, BuilderError::Refused(_)), "{error}");
    assert!(
        error.to_string().contains("DEVGEM_IMAGE_REPOSITORY is not set; set it to REGION-docker.pkg.dev/PROJECT/REPO"),
        "{error}"
    );
    let f = fixture_with(quick_api(), |c| c.image_repository = Some("https://Example.com/x".into())).await;
    let error = f.builder.submit(request()).await.expect_err("refused");
    assert!(error.to_string().contains("is not an image repository"), "{error}");
    assert!(f.builds.requests().all().is_empty());
}

#[tokio::test]
async fn paths_that_leave_the_repository_and_odd_refs_are_refused() {
    let f = fixture().await;
    let mut escaping = request();
    escaping.app_dir = "web/../../etc".into();
    assert!(f.builder.submit(escaping).await.expect_err("app dir").to_string().contains("leaves the repository"));
    let mut escaping = request();
    escaping.extra_files.insert("../outside".into(), "x".into());
    assert!(f.builder.submit(escaping).await.expect_err("file").to_string().contains("leaves the repository"));
    let mut option = request();
    option.source.git_ref = Some("--upload-pack=evil".into());
    assert!(f.builder.submit(option).await.expect_err("ref").to_string().contains("is not a git branch"));
    let mut plain = request();
    plain.source.location = SourceLocation::Git { url: "git://example.com/x.git".into() };
    assert!(f.builder.submit(plain).await.expect_err("url").to_string().contains("https"));
    assert!(f.builds.requests().all().is_empty());
}

#[tokio::test]
async fn the_default_branch_is_a_shallow_clone_and_dollars_reach_steps_literally() {
    let f = fixture().await;
    let mut request = request();
    request.source.git_ref = None;
    request.app_dir = String::new();
    let build = f.builder.build_spec(&request, "devgem-submit-x").expect("spec");
    let ids: Vec<&str> = build.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["clone", "files", "build", "pull"], "no checkout step");
    assert_eq!(build.steps[0].args, ["clone", "--depth=1", "--", "https://github.com/octo-org/flask-todo.git", "src"]);
    assert!(build.steps[2].args.contains(&"--context=dir:///workspace/src".to_owned()));

    request.source.git_ref = Some("release-$1".into());
    let build = f.builder.build_spec(&request, "devgem-submit-x").expect("spec");
    assert_eq!(build.steps[1].args, ["checkout", "--quiet", "release-$$1"], "Cloud Build would expand $1");
}

#[test]
fn owner_paths_are_what_artifact_registry_accepts_and_never_shared() {
    let path = |id: &str| owner_path(&UserId::parse(id).expect("id"));
    assert_eq!(path("alice"), "alice", "a valid id is kept");
    assert_eq!(path("admin"), "admin");
    let mixed = path("Alice_Smith");
    assert!(mixed.starts_with("alice-smith-"), "{mixed}");
    let others = [path("alice-smith"), path("alice_smith"), path("ALICE_SMITH"), mixed.clone()];
    let distinct: HashSet<&String> = others.iter().collect();
    assert_eq!(distinct.len(), others.len(), "{others:?}");
    for id in ["Alice_Smith", "__", "-a-", "A", &"x".repeat(128), "a--b"] {
        let p = path(id);
        let valid = !p.is_empty()
            && p.len() <= 80
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-');
        assert!(valid, "{id:?} -> {p:?}");
    }
}

#[tokio::test]
async fn logs_are_kept_in_blobs_and_removed_with_the_build() {
    let f = fixture().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs: Arc<dyn Blobs> = Arc::new(crate::local::LocalBlobs::open(dir.path()).expect("blobs"));
    let builder = f.builder.with_blobs(blobs.clone());
    let handle = builder.submit(request()).await.expect("submitted");
    final_notification(&f.bus, &handle.build_id).await;
    let stored = builder.store_log(&handle.build_id).await.expect("stored");
    let key = log_blob_key(&handle.build_id).expect("key");
    let text = String::from_utf8(blobs.get_bytes(&key).await.expect("blob").to_vec()).expect("utf-8");
    assert_eq!(text.lines().count(), stored);
    assert!(text.ends_with("DONE\n"), "{text}");
    let tail = devgem_common::deployments::build_log_tail(blobs.as_ref(), &handle.build_id, 1).await;
    assert_eq!(tail, ["DONE"], "where the build function reads a failure's last lines");

    assert!(builder.delete_build(&handle.build_id).await.expect("deleted"), "the log copy was removed");
    assert!(!builder.delete_build(&handle.build_id).await.expect("deleted"), "nothing left");
}
