//! The Cloud Run runtime against the Cloud Run and IAM stand-ins (`emulators::cloudrun`,
//! `emulators::iam`): the exact requests, the traffic rules, failures and retries.

use super::*;
use crate::gcp::config::Endpoints;
use crate::gcp::emulators::cloudrun::CloudRunStandIn;
use crate::gcp::emulators::iam::IamStandIn;
use crate::gcp::emulators::standin::Recorded;
use devgem_common::events::log_entry::{MonitoredResource, Severity};
use google_cloud_run_v2::model::TrafficTargetAllocationType as Allocation;
use http::StatusCode;

const PROJECT: &str = "demo";
const REGION: &str = "europe-west1";
const PREFIX: &str = "u-";
const IMAGE_1: &str = "europe-west1-docker.pkg.dev/demo/devgem/apps/web:b1";
const IMAGE_2: &str = "europe-west1-docker.pkg.dev/demo/devgem/apps/web:b2";
const IMAGE_3: &str = "europe-west1-docker.pkg.dev/demo/devgem/apps/web:b3";
const SECRET: &str = "alice--web--API_KEY";

fn owner() -> UserId {
    UserId::parse("alice").expect("user id")
}

fn web() -> ServiceName {
    ServiceName::parse("web").expect("service name")
}

/// Short delays everywhere.
fn fast_options() -> CloudRunOptions {
    CloudRunOptions {
        poll: Duration::from_millis(5),
        poll_max: Duration::from_millis(20),
        operation_timeout: Duration::from_secs(10),
        verify_timeout: Duration::from_secs(5),
        verify_propagation: Duration::from_secs(2),
        verify_interval: Duration::from_millis(10),
        account_propagation: Duration::from_secs(3),
        conflict_attempts: 5,
        attempt_timeout: Duration::from_secs(10),
        breaker: BreakerPolicy { failures: 5, cool_down: Duration::from_secs(30) },
        retry: RetryPolicy { attempts: 5, first_delay: Duration::from_millis(5), max_delay: Duration::from_millis(20) },
    }
}

struct Harness {
    run: CloudRunStandIn,
    iam: IamStandIn,
    config: GcpConfig,
    runtime: CloudRunRuntime,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(fast_options()).await
    }

    async fn start_with(options: CloudRunOptions) -> Self {
        let run = CloudRunStandIn::start().await.expect("the Cloud Run stand-in starts");
        run.set_operation_delay(Duration::from_millis(30));
        let iam = IamStandIn::start().await.expect("the IAM stand-in starts");
        let config = GcpConfig {
            project: PROJECT.into(),
            region: REGION.into(),
            service_prefix: PREFIX.into(),
            endpoints: Endpoints {
                cloud_run: Some(run.endpoint()),
                iam: Some(iam.endpoint()),
                // The IAM stand-in also answers Secret Manager's IAM policy methods.
                secret_manager: Some(iam.endpoint()),
                ..Endpoints::default()
            },
            ..GcpConfig::default()
        };
        let runtime = CloudRunRuntime::connect_with(&config, options).await.expect("connect");
        Self { run, iam, config, runtime }
    }

    fn service_full(&self) -> String {
        format!("projects/{PROJECT}/locations/{REGION}/services/{}", service_id(PREFIX, &owner(), &web()))
    }

    fn revision_id(&self, suffix: &str) -> String {
        format!("{}-{suffix}", service_id(PREFIX, &owner(), &web()))
    }

    fn count(&self, method: &str) -> usize {
        self.run.requests().of(method).len()
    }

    fn last_service_body(&self, method: &str) -> Service {
        let recorded = self.run.requests().of(method).pop().unwrap_or_else(|| panic!("no {method} request"));
        serde_json::from_value(recorded.body).expect("the recorded body is a Service")
    }

    async fn deploy(&self, suffix: &str, image: &str) -> Result<RevisionInfo, RuntimeError> {
        self.runtime.create_revision(spec(suffix, image, BTreeMap::new())).await
    }
}

fn spec(suffix: &str, image: &str, env: BTreeMap<EnvVarName, EnvValue>) -> RevisionSpec {
    RevisionSpec {
        owner: owner(),
        service: web(),
        image: image.to_owned(),
        env,
        port: 8080,
        name: Some(format!("web-{suffix}")),
    }
}

fn var(name: &str) -> EnvVarName {
    EnvVarName::parse(name).expect("env var name")
}

async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the app answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn env_of(service: &Service) -> Vec<EnvVar> {
    service.template.as_ref().and_then(|t| t.containers.first()).map(|c| c.env.clone()).unwrap_or_default()
}

fn position(requests: &[Recorded], method: &str) -> Option<usize> {
    requests.iter().position(|r| r.method == method)
}

#[tokio::test]
async fn the_first_revision_makes_a_public_service_with_devgems_template() {
    let h = Harness::start().await;
    let env = BTreeMap::from([
        (var("GREETING"), EnvValue::Plain("hi".into())),
        (var("API_KEY"), EnvValue::Secret(SecretRef { name: SECRET.into(), version: 3 })),
    ]);
    let info = h.runtime.create_revision(spec("dep0000001", IMAGE_1, env)).await.expect("created");
    assert_eq!(info.name, "web-dep0000001", "the port's name comes back");

    let creates = h.run.requests().of("CreateService");
    assert_eq!(creates.len(), 1);
    let id = service_id(PREFIX, &owner(), &web());
    assert_eq!(creates[0].path, format!("/v2/projects/{PROJECT}/locations/{REGION}/services"));
    assert_eq!(creates[0].query.get("serviceId"), Some(&id));
    let service: Service = serde_json::from_value(creates[0].body.clone()).expect("a Service");
    assert_eq!(service.labels.get(OWNER_LABEL).map(String::as_str), Some("alice"));
    assert_eq!(service.labels.get(SERVICE_LABEL).map(String::as_str), Some("web"));
    let template = service.template.clone().expect("a template");
    assert_eq!(template.revision, h.revision_id("dep0000001"));
    let scaling = template.scaling.clone().expect("scaling");
    assert_eq!((scaling.min_instance_count, scaling.max_instance_count), (0, 10));
    let account = format!("{}@{PROJECT}.iam.gserviceaccount.com", user_account_id(&owner()));
    assert_eq!(template.service_account, account, "the user's own account");
    let container = template.containers.first().expect("a container");
    assert_eq!(container.image, IMAGE_1);
    assert_eq!(container.ports.iter().map(|p| p.container_port).collect::<Vec<_>>(), vec![8080]);
    let limits = &container.resources.as_ref().expect("resources").limits;
    assert_eq!(limits.get("cpu").map(String::as_str), Some("1"));
    assert_eq!(limits.get("memory").map(String::as_str), Some("512Mi"));
    match container.startup_probe.as_ref().and_then(|p| p.probe_type.as_ref()) {
        Some(probe::ProbeType::TcpSocket(tcp)) => assert_eq!(tcp.port, 8080),
        other => panic!("a TCP startup probe on 8080 expected, got {other:?}"),
    }
    let env: HashMap<String, Option<env_var::Values>> =
        container.env.iter().map(|v| (v.name.clone(), v.values.clone())).collect();
    assert_eq!(env.len(), 2);
    assert_eq!(env["GREETING"], Some(env_var::Values::Value("hi".into())));
    match &env["API_KEY"] {
        Some(env_var::Values::ValueSource(source)) => {
            let selector = source.secret_key_ref.as_ref().expect("a secret reference");
            assert_eq!(selector.secret, format!("projects/{PROJECT}/secrets/{SECRET}"));
            assert_eq!(selector.version, "3", "pinned to the version DevGem stored");
        }
        other => panic!("a secret reference expected, got {other:?}"),
    }
    let tag = revision_tag(&h.revision_id("dep0000001"));
    assert_eq!(
        service.traffic,
        vec![target(&h.revision_id("dep0000001"), 100, &tag)],
        "a new service serves its first revision"
    );

    // The account was created through IAM and may read that one secret, nothing else.
    let created = h.iam.requests().of("CreateServiceAccount");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].body["accountId"], user_account_id(&owner()));
    let secret = format!("projects/{PROJECT}/secrets/{SECRET}");
    assert_eq!(h.iam.policies().get(&secret).members(ACCESSOR_ROLE), vec![format!("serviceAccount:{account}")]);
    let grants = h.iam.requests().of("SetIamPolicy");
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].path, format!("/v1/{secret}:setIamPolicy"));

    // The operation was polled before the service was made public.
    let requests = h.run.requests().all();
    let (create, poll, public) = (
        position(&requests, "CreateService").expect("create"),
        position(&requests, "GetOperation").expect("the operation is polled"),
        position(&requests, "SetIamPolicy").expect("the service is made public"),
    );
    assert!(create < poll && poll < public, "{requests:?}");
    assert_eq!(h.run.iam_policy(&h.service_full()).members("roles/run.invoker"), vec!["allUsers".to_owned()]);

    // The URL is the revision's test URL, and it answers with that revision.
    let status = h.run.service(&h.service_full()).expect("service").traffic_statuses;
    assert_eq!(status.iter().find(|s| s.tag == tag).map(|s| s.uri.clone()), Some(info.url.clone()));
    h.runtime.verify(&info.url).await.expect("the revision answers");
    let (code, body) = get_text(&info.url).await;
    assert_eq!((code, body), (200, format!("hello from {id}/{}", h.revision_id("dep0000001"))));

    // A second revision makes no second policy write.
    h.deploy("dep0000002", IMAGE_2).await.expect("second");
    assert_eq!(h.count("SetIamPolicy"), 1, "the policy already had allUsers");
}

#[tokio::test]
async fn a_new_revision_takes_no_traffic_until_routed_and_rollback_routes_by_name() {
    let h = Harness::start().await;
    let (v1, v2) = (h.revision_id("one"), h.revision_id("two"));
    h.deploy("one", IMAGE_1).await.expect("v1");
    h.runtime.route_traffic(&owner(), &web(), "web-one").await.expect("route v1");
    let url = h.runtime.service_url(&owner(), &web()).await.expect("url");
    assert!(get_text(&url).await.1.ends_with(&v1));

    let info = h.deploy("two", IMAGE_2).await.expect("v2");
    let update = h.last_service_body("UpdateService");
    assert_eq!(
        update.traffic,
        vec![target(&v1, 100, ""), target(&v2, 0, &revision_tag(&v2))],
        "the serving revision keeps all the traffic; the new one only gets a test URL"
    );
    assert_eq!(update.template.as_ref().map(|t| t.revision.clone()), Some(v2.clone()));
    assert!(get_text(&url).await.1.ends_with(&v1), "users still reach v1");
    assert!(get_text(&info.url).await.1.ends_with(&v2), "the test URL reaches v2");

    let polls = h.count("GetOperation");
    h.runtime.route_traffic(&owner(), &web(), "web-two").await.expect("route v2");
    assert_eq!(h.last_service_body("UpdateService").traffic, vec![target(&v2, 100, "")]);
    assert!(h.count("GetOperation") > polls, "the traffic update's operation is waited on");
    assert!(get_text(&url).await.1.ends_with(&v2));

    // Rollback: traffic to a named, older revision.
    h.runtime.route_traffic(&owner(), &web(), "web-one").await.expect("rollback");
    let rollback = h.last_service_body("UpdateService");
    assert_eq!(rollback.traffic, vec![target(&v1, 100, "")]);
    assert_eq!(rollback.traffic[0].r#type, Allocation::Revision);
    assert!(get_text(&url).await.1.ends_with(&v1));

    let updates = h.count("UpdateService");
    h.runtime.route_traffic(&owner(), &web(), "web-one").await.expect("again");
    assert_eq!(h.count("UpdateService"), updates, "routing where traffic already goes writes nothing");

    let missing = h.runtime.route_traffic(&owner(), &web(), "web-nine").await.expect_err("no such revision");
    assert!(matches!(missing, RuntimeError::NotFound(_)), "{missing}");
}

#[tokio::test]
async fn a_latest_traffic_target_is_pinned_before_a_new_template_goes_out() {
    let h = Harness::start().await;
    let v1 = h.revision_id("one");
    h.deploy("one", IMAGE_1).await.expect("v1");
    // Someone set the traffic to "latest" in the console: a new template would take it over.
    assert!(h.run.edit_service(&h.service_full(), |s| {
        let mut latest = TrafficTarget::default();
        latest.r#type = Allocation::Latest;
        latest.percent = 100;
        s.traffic = vec![latest];
    }));
    h.deploy("two", IMAGE_2).await.expect("v2");
    let traffic = h.last_service_body("UpdateService").traffic;
    assert_eq!(traffic[0], target(&v1, 100, ""), "latest is pinned to what it served: {traffic:?}");
    let url = h.runtime.service_url(&owner(), &web()).await.expect("url");
    assert!(get_text(&url).await.1.ends_with(&v1));
}

#[tokio::test]
async fn creating_a_revision_that_exists_returns_it_without_writing() {
    let h = Harness::start().await;
    let first = h.deploy("dep1", IMAGE_1).await.expect("created");
    let writes = (h.count("CreateService"), h.count("UpdateService"));
    let again = h.deploy("dep1", IMAGE_1).await.expect("returned");
    assert_eq!(again, first);
    assert_eq!((h.count("CreateService"), h.count("UpdateService")), writes, "nothing written");

    let other = h.deploy("dep1", IMAGE_2).await.expect_err("another image");
    assert!(matches!(other, RuntimeError::Refused(ref why) if why.contains("another image")), "{other}");
    let bad = h
        .runtime
        .create_revision(RevisionSpec { name: Some("api-dep1".into()), ..spec("x", IMAGE_1, BTreeMap::new()) });
    assert!(matches!(bad.await, Err(RuntimeError::Refused(_))), "a revision must be named after its service");
}

/// Log lines of one revision, recording what it was asked.
#[derive(Debug, Default)]
struct FakeLogs {
    asked: Mutex<Vec<(String, Option<String>, usize)>>,
    lines: Vec<String>,
}

#[async_trait]
impl RevisionLogs for FakeLogs {
    async fn entries(
        &self,
        service: &str,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, RuntimeError> {
        self.asked.lock().unwrap_or_else(PoisonError::into_inner).push((
            service.to_owned(),
            revision.map(str::to_owned),
            limit,
        ));
        Ok(self
            .lines
            .iter()
            .map(|line| LogEntry {
                log_name: None,
                resource: MonitoredResource { kind: "cloud_run_revision".into(), labels: BTreeMap::new() },
                timestamp: None,
                receive_timestamp: None,
                severity: Severity::Default,
                insert_id: None,
                text_payload: Some(line.clone()),
                json_payload: None,
                http_request: None,
                labels: BTreeMap::new(),
                trace: None,
                extra: serde_json::Map::new(),
            })
            .collect())
    }
}

#[tokio::test]
async fn a_revision_that_fails_to_start_is_start_failed_with_the_reason_and_the_old_one_keeps_serving() {
    let mut h = Harness::start().await;
    let logs = Arc::new(FakeLogs { lines: vec!["Listening on 0.0.0.0:5055".into()], ..FakeLogs::default() });
    h.runtime = h.runtime.with_logs(logs.clone());
    let v1 = h.revision_id("one");
    h.deploy("one", IMAGE_1).await.expect("v1");
    h.runtime.route_traffic(&owner(), &web(), "web-one").await.expect("route");

    let reason = "The user-provided container failed to start and listen on the port defined provided by the PORT=8080 environment variable";
    h.run.fail_image(IMAGE_2, reason);
    let error = h.deploy("two", IMAGE_2).await.expect_err("fails");
    match &error {
        RuntimeError::StartFailed(why) => {
            assert!(why.contains(reason), "{why}");
            assert!(why.contains("Its last lines: Listening on 0.0.0.0:5055"), "{why}");
        }
        other => panic!("StartFailed expected, got {other}"),
    }
    let asked = logs.asked.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(asked, vec![(service_id(PREFIX, &owner(), &web()), Some(h.revision_id("two")), LOG_TAIL)]);
    let url = h.runtime.service_url(&owner(), &web()).await.expect("url");
    assert!(get_text(&url).await.1.ends_with(&v1), "v1 keeps serving");
    let refused = h.runtime.route_traffic(&owner(), &web(), "web-two").await.expect_err("failed revision");
    assert!(matches!(refused, RuntimeError::Refused(ref why) if why.contains(reason)), "{refused}");

    // A first revision that fails leaves a service that serves nothing: the next one takes over.
    let h2 = Harness::start().await;
    h2.run.fail_image(IMAGE_1, "boom");
    assert!(matches!(h2.deploy("one", IMAGE_1).await, Err(RuntimeError::StartFailed(ref why)) if why.contains("boom")));
    let v2 = h2.revision_id("two");
    h2.deploy("two", IMAGE_2).await.expect("a working revision");
    assert_eq!(h2.last_service_body("UpdateService").traffic, vec![target(&v2, 100, &revision_tag(&v2))]);
}

#[tokio::test]
async fn rate_limits_and_outages_are_retried() {
    let h = Harness::start().await;
    h.run.faults().fail_next("CreateService", StatusCode::TOO_MANY_REQUESTS, 1);
    h.run.faults().fail_next("CreateService", StatusCode::SERVICE_UNAVAILABLE, 1);
    h.run.faults().fail_next("GetOperation", StatusCode::GATEWAY_TIMEOUT, 1);
    h.iam.faults().fail_next("CreateServiceAccount", StatusCode::SERVICE_UNAVAILABLE, 2);
    let info = h.deploy("one", IMAGE_1).await.expect("created after retries");
    assert_eq!(h.count("CreateService"), 3, "429, 503, then the one that worked");
    assert_eq!(h.iam.requests().of("CreateServiceAccount").len(), 3);
    h.runtime.verify(&info.url).await.expect("answers");
}

#[tokio::test]
async fn a_persistent_outage_gives_up_naming_cloud_run_and_the_breaker_fails_fast() {
    let options = CloudRunOptions {
        breaker: BreakerPolicy { failures: 5, cool_down: Duration::from_secs(60) },
        ..fast_options()
    };
    let h = Harness::start_with(options).await;
    h.run.faults().fail_next("GetRevision", StatusCode::SERVICE_UNAVAILABLE, 100);
    let error = h.deploy("one", IMAGE_1).await.expect_err("down");
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error}");
    let text = error.to_string();
    assert!(text.contains("Cloud Run GetRevision") && text.contains("UNAVAILABLE"), "{text}");
    assert_eq!(h.count("GetRevision"), 5, "five attempts");

    let fast = h.runtime.service_url(&owner(), &web()).await.expect_err("breaker open");
    assert!(fast.to_string().contains("Cloud Run is failing repeatedly"), "{fast}");
    assert_eq!(h.count("GetService"), 0, "an open breaker sends nothing");
    assert_eq!(h.count("GetRevision"), 5);
}

#[tokio::test]
async fn a_conflicting_write_is_read_again_and_retried() {
    let h = Harness::start().await;
    // Someone else creates the service at the same moment (409 on create).
    h.run.faults().fail_next("CreateService", StatusCode::CONFLICT, 1);
    h.deploy("one", IMAGE_1).await.expect("created on the second try");
    assert_eq!(h.count("CreateService"), 2);

    // Someone else updates the service between our read and our write (409 on update).
    h.run.faults().fail_next("UpdateService", StatusCode::CONFLICT, 1);
    let reads = h.count("GetService");
    h.deploy("two", IMAGE_2).await.expect("updated on the second try");
    assert_eq!(h.count("UpdateService"), 2);
    let requests = h.run.requests().all();
    let first_update = position(&requests, "UpdateService").expect("update");
    assert!(
        requests[first_update + 1..].iter().any(|r| r.method == "GetService"),
        "the service is read again after the conflict"
    );
    assert!(h.count("GetService") >= reads + 2);

    // The stand-in itself refuses a stale etag; the adapter sends the one it read.
    let bodies = h.run.requests().of("UpdateService");
    let etags: Vec<String> = bodies.iter().map(|r| r.body["etag"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(etags.iter().all(|e| !e.is_empty()), "every update carries the etag it read: {etags:?}");

    // The service's IAM policy changes between our read and our write.
    let h2 = Harness::start().await;
    h2.run.faults().fail_next("SetIamPolicy", StatusCode::CONFLICT, 1);
    h2.deploy("one", IMAGE_1).await.expect("public on the second try");
    assert_eq!((h2.count("GetIamPolicy"), h2.count("SetIamPolicy")), (2, 2));
}

#[tokio::test]
async fn live_env_sees_env_edited_outside_devgem() {
    let h = Harness::start().await;
    let env = BTreeMap::from([
        (var("GREETING"), EnvValue::Plain("hi".into())),
        (var("API_KEY"), EnvValue::Secret(SecretRef { name: SECRET.into(), version: 3 })),
    ]);
    h.runtime.create_revision(spec("one", IMAGE_1, env.clone())).await.expect("created");
    assert_eq!(h.runtime.live_env(&owner(), &web()).await.expect("env"), Some(env));

    assert!(h.run.edit_service(&h.service_full(), |service| {
        let container = service.template.as_mut().and_then(|t| t.containers.first_mut()).expect("container");
        for var in &mut container.env {
            match var.name.as_str() {
                "GREETING" => var.values = Some(env_var::Values::Value("hello".into())),
                "API_KEY" => {
                    let mut selector = SecretKeySelector::default();
                    selector.secret = format!("projects/123456789/secrets/{SECRET}");
                    selector.version = "4".into();
                    let mut source = EnvVarSource::default();
                    source.secret_key_ref = Some(selector);
                    var.values = Some(env_var::Values::ValueSource(Box::new(source)));
                }
                _ => {}
            }
        }
        let mut added = EnvVar::default();
        added.name = "NEW_VAR".into();
        added.values = Some(env_var::Values::Value("x".into()));
        let mut invalid = EnvVar::default();
        invalid.name = "not-a-name".into();
        invalid.values = Some(env_var::Values::Value("y".into()));
        let mut latest = EnvVar::default();
        latest.name = "FLOATING".into();
        let mut selector = SecretKeySelector::default();
        selector.secret = "other".into();
        selector.version = "latest".into();
        let mut source = EnvVarSource::default();
        source.secret_key_ref = Some(selector);
        latest.values = Some(env_var::Values::ValueSource(Box::new(source)));
        container.env.extend([added, invalid, latest]);
    }));
    let live = h.runtime.live_env(&owner(), &web()).await.expect("env").expect("Cloud Run has an env");
    let expected = BTreeMap::from([
        (var("GREETING"), EnvValue::Plain("hello".into())),
        (var("API_KEY"), EnvValue::Secret(SecretRef { name: SECRET.into(), version: 4 })),
        (var("NEW_VAR"), EnvValue::Plain("x".into())),
    ]);
    assert_eq!(live, expected, "invalid names and unpinned secrets are skipped");
    assert_eq!(env_of(&h.run.service(&h.service_full()).expect("service")).len(), 5);

    let missing = h.runtime.live_env(&owner(), &ServiceName::parse("nothing").expect("name")).await;
    assert!(matches!(missing, Err(RuntimeError::NotFound(_))), "{missing:?}");
}

#[tokio::test]
async fn revisions_are_deleted_unless_they_serve_and_listed_by_their_port_names() {
    let h = Harness::start().await;
    for (suffix, image) in [("one", IMAGE_1), ("two", IMAGE_2)] {
        h.deploy(suffix, image).await.expect("deployed");
        h.runtime.route_traffic(&owner(), &web(), &format!("web-{suffix}")).await.expect("routed");
    }
    h.deploy("three", IMAGE_3).await.expect("a candidate");

    let refused = h.runtime.delete_revision(&owner(), &web(), "web-two").await.expect_err("serves");
    assert!(matches!(refused, RuntimeError::Refused(ref why) if why.contains("serves")), "{refused}");
    assert_eq!(h.count("DeleteRevision"), 0, "refused before asking Cloud Run");

    h.runtime.delete_revision(&owner(), &web(), "web-one").await.expect("an old revision goes");
    assert_eq!(h.count("DeleteRevision"), 1);
    assert!(h.run.revision(&format!("{}/revisions/{}", h.service_full(), h.revision_id("one"))).is_none());

    let listed = h.runtime.revisions(&owner(), &web()).await.expect("listed");
    let names: Vec<(&str, i32, &RevisionState)> =
        listed.iter().map(|r| (r.name.as_str(), r.traffic_percent, &r.state)).collect();
    assert_eq!(names, vec![("web-three", 0, &RevisionState::Ready), ("web-two", 100, &RevisionState::Ready)]);
    assert_eq!(listed[0].cloud_run_name, h.revision_id("three"));
    assert_eq!(listed[0].image, IMAGE_3);

    // The candidate is only tagged: the tag goes first, then Cloud Run refuses because it is the
    // service's latest revision.
    let latest = h.runtime.delete_revision(&owner(), &web(), "web-three").await.expect_err("latest");
    assert!(matches!(latest, RuntimeError::Refused(ref why) if why.contains("latest revision")), "{latest}");
    let untag = h.last_service_body("UpdateService");
    assert_eq!(untag.traffic, vec![target(&h.revision_id("two"), 100, "")], "the tag was removed first");

    let gone = h.runtime.delete_revision(&owner(), &web(), "web-one").await.expect_err("already gone");
    assert!(matches!(gone, RuntimeError::NotFound(_)), "{gone}");
}

#[tokio::test]
async fn verify_polls_until_the_url_answers() {
    let h = Harness::start().await;
    let info = h.deploy("one", IMAGE_1).await.expect("created");
    // Routes and the IAM policy propagate: 503, then 403 and 404 for a while.
    h.run.fail_app_requests(StatusCode::SERVICE_UNAVAILABLE, 2);
    h.run.fail_app_requests(StatusCode::FORBIDDEN, 1);
    h.run.fail_app_requests(StatusCode::NOT_FOUND, 1);
    let before = h.count(crate::gcp::emulators::cloudrun::APP_METHOD);
    h.runtime.verify(&info.url).await.expect("answers in the end");
    assert_eq!(h.count(crate::gcp::emulators::cloudrun::APP_METHOD) - before, 5, "polled until the 200");

    let h = Harness::start_with(CloudRunOptions { verify_timeout: Duration::from_millis(300), ..fast_options() }).await;
    let info = h.deploy("one", IMAGE_1).await.expect("created");
    h.run.fail_app_requests(StatusCode::BAD_GATEWAY, 10_000);
    let error = h.runtime.verify(&info.url).await.expect_err("never answers");
    assert!(matches!(error, RuntimeError::StartFailed(ref why) if why.contains("502")), "{error}");

    let closed = format!("http://127.0.0.1:{}/", crate::gcp::emulators::free_port().expect("port"));
    let error = h.runtime.verify(&closed).await.expect_err("nothing listens");
    assert!(matches!(error, RuntimeError::StartFailed(ref why) if why.contains("does not answer")), "{error}");
}

#[tokio::test]
async fn per_user_accounts_are_created_once_and_awaited() {
    let h = Harness::start().await;
    h.iam.set_visibility_delay(Duration::from_millis(100));
    h.deploy("one", IMAGE_1).await.expect("created");
    assert_eq!(h.iam.requests().of("CreateServiceAccount").len(), 1);
    assert!(h.iam.requests().of("GetServiceAccount").len() >= 2, "awaited until IAM knows the new account");
    h.deploy("two", IMAGE_2).await.expect("second");
    assert_eq!(h.iam.requests().of("CreateServiceAccount").len(), 1, "known accounts are not created again");

    // Another process: the create answers 409, which is fine.
    let again = CloudRunRuntime::connect_with(&h.config, fast_options()).await.expect("connect");
    again.create_revision(spec("three", IMAGE_3, BTreeMap::new())).await.expect("third");
    assert_eq!(h.iam.requests().of("CreateServiceAccount").len(), 2);
    assert_eq!(h.iam.accounts(), vec![format!("{}@{PROJECT}.iam.gserviceaccount.com", user_account_id(&owner()))]);
    let account = h.iam.accounts().pop().and_then(|email| h.iam.account(&email)).expect("the account");
    assert_eq!(account.display_name, "DevGem user alice");
}

#[tokio::test]
async fn a_shared_identity_uses_the_configured_account_and_grants_nothing() {
    let mut h = Harness::start().await;
    let apps = "devgem-apps@demo.iam.gserviceaccount.com";
    h.config.app_service_account = Some(apps.into());
    h.runtime = CloudRunRuntime::connect_with(&h.config, fast_options()).await.expect("connect");
    let env = BTreeMap::from([(var("API_KEY"), EnvValue::Secret(SecretRef { name: SECRET.into(), version: 1 }))]);
    h.runtime.create_revision(spec("one", IMAGE_1, env)).await.expect("created");
    let template = h.last_service_body("CreateService").template.expect("template");
    assert_eq!(template.service_account, apps);
    assert!(h.iam.requests().all().is_empty(), "no account, no grant: {:?}", h.iam.requests().all());
}

#[tokio::test]
async fn secret_grants_keep_other_members_and_retry_a_concurrent_change() {
    let h = Harness::start().await;
    let grants = SecretManagerGrants::new(&h.config, &fast_options());
    let secret = format!("projects/{PROJECT}/secrets/{SECRET}");
    h.iam.policies().grant_outside(&secret, ACCESSOR_ROLE, "user:ops@example.com");
    h.iam.faults().fail_next("SetIamPolicy", StatusCode::CONFLICT, 1);
    grants.grant_accessor(&secret, "serviceAccount:a@demo.iam.gserviceaccount.com").await.expect("granted");
    assert_eq!(
        h.iam.policies().get(&secret).members(ACCESSOR_ROLE),
        vec!["user:ops@example.com".to_owned(), "serviceAccount:a@demo.iam.gserviceaccount.com".to_owned()]
    );
    assert_eq!((h.iam.requests().of("GetIamPolicy").len(), h.iam.requests().of("SetIamPolicy").len()), (2, 2));
    let sent = &h.iam.requests().of("SetIamPolicy")[1].body["policy"];
    assert!(sent["etag"].as_str().is_some_and(|e| !e.is_empty()), "the write carries the etag it read: {sent}");

    grants.grant_accessor(&secret, "serviceAccount:a@demo.iam.gserviceaccount.com").await.expect("again");
    assert_eq!(h.iam.requests().of("SetIamPolicy").len(), 2, "a granted member is not written again");
}

#[tokio::test]
async fn logs_come_from_the_log_source_under_cloud_run_names() {
    let h = Harness::start().await;
    let error = h.runtime.logs(&owner(), &web(), None, 10).await.expect_err("no source");
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error}");

    let logs = Arc::new(FakeLogs { lines: vec!["GET / 200".into()], ..FakeLogs::default() });
    let runtime =
        CloudRunRuntime::connect_with(&h.config, fast_options()).await.expect("connect").with_logs(logs.clone());
    let entries = runtime.logs(&owner(), &web(), Some("web-dep1"), 7).await.expect("entries");
    assert_eq!(entries.iter().filter_map(LogEntry::message).collect::<Vec<_>>(), vec!["GET / 200"]);
    let asked = logs.asked.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(asked, vec![(service_id(PREFIX, &owner(), &web()), Some(h.revision_id("dep1")), 7)]);
}

#[test]
fn names_are_valid_cloud_run_names_stable_and_distinct() {
    let alice = owner();
    let bob = UserId::parse("Bob_2").expect("id");
    let id = service_id("u-", &alice, &web());
    assert_eq!(id, service_id("u-", &alice, &web()), "stable");
    assert_ne!(id, service_id("u-", &bob, &web()), "per owner");
    assert!(id.starts_with("u-web-") && id.len() == "u-web-".len() + 8, "{id}");
    let long_a = ServiceName::parse(&format!("{}-a", "x".repeat(45))).expect("name");
    let long_b = ServiceName::parse(&format!("{}-b", "x".repeat(45))).expect("name");
    for (prefix, service) in [("", &long_a), ("devgem-users-", &long_b), ("", &web())] {
        let id = service_id(prefix, &alice, service);
        assert!(id.len() <= MAX_SERVICE_ID, "{id}");
        assert!(id.as_bytes()[0].is_ascii_lowercase() && !id.ends_with('-'), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{id}");
        // Room for a test URL: tag + service at most 46.
        assert!(revision_tag(&format!("{id}-x")).len() + id.len() <= 46, "{id}");
    }
    assert_ne!(service_id("", &alice, &long_a), service_id("", &alice, &long_b), "long names stay apart");

    let account = user_account_id(&bob);
    assert!((6..=30).contains(&account.len()) && account.starts_with(USER_ACCOUNT_PREFIX), "{account}");
    assert_eq!(account_email("example.com:proj", "dg-u-1"), "dg-u-1@proj.example.com.iam.gserviceaccount.com");

    let names = Names {
        service: web(),
        id: "u-web-12345678".into(),
        full: "projects/p/locations/r/services/u-web-12345678".into(),
    };
    assert_eq!(names.revision_id("web-abc-r1").expect("id"), "u-web-12345678-abc-r1");
    assert_eq!(names.port_revision("u-web-12345678-abc-r1"), "web-abc-r1");
    for bad in ["api-abc", "web-", "web-ABC", "web-abc-", &format!("web-{}", "a".repeat(60))] {
        assert!(matches!(names.revision_id(bad), Err(RuntimeError::Refused(_))), "{bad}");
    }
}

#[test]
fn secret_references_map_both_ways() {
    assert_eq!(secret_resource("demo", SECRET).expect("id"), format!("projects/demo/secrets/{SECRET}"));
    assert_eq!(secret_resource("demo", "projects/other/secrets/x").expect("full"), "projects/other/secrets/x");
    for bad in ["", "a.b", "projects/p/secrets/", "projects/p/keys/x"] {
        assert!(secret_resource("demo", bad).is_err(), "{bad}");
    }
    let selector = |secret: &str, version: &str| {
        let mut s = SecretKeySelector::default();
        s.secret = secret.into();
        s.version = version.into();
        s
    };
    let ours = |name: &str, version| Some(SecretRef { name: name.into(), version });
    assert_eq!(secret_ref_from("demo", &selector("projects/demo/secrets/k", "2")), ours("k", 2));
    assert_eq!(secret_ref_from("demo", &selector("projects/42/secrets/k", "2")), ours("k", 2));
    assert_eq!(secret_ref_from("demo", &selector("k", "5")), ours("k", 5));
    assert_eq!(
        secret_ref_from("demo", &selector("projects/other/secrets/k", "1")),
        ours("projects/other/secrets/k", 1)
    );
    assert_eq!(secret_ref_from("demo", &selector("k", "latest")), None);
}

#[test]
fn policies_gain_a_member_once_and_keep_everything_else() {
    let policy = json!({
        "version": 1,
        "etag": "BwY=",
        "bindings": [
            {"role": "roles/run.invoker", "members": ["user:a"], "condition": {"expression": "x"}},
            {"role": "roles/viewer-like", "members": ["user:b"]},
        ],
    });
    let updated = with_member(&policy, INVOKER_ROLE, PUBLIC).expect("edits").expect("changed");
    assert_eq!(updated["etag"], "BwY=", "the etag read goes back");
    assert_eq!(updated["bindings"].as_array().map(Vec::len), Some(3), "a conditional binding is not reused");
    assert_eq!(updated["bindings"][2], json!({"role": INVOKER_ROLE, "members": [PUBLIC]}));
    assert!(with_member(&updated, INVOKER_ROLE, PUBLIC).expect("edits").is_none(), "already there");
    let more = with_member(&updated, INVOKER_ROLE, "user:c").expect("edits").expect("changed");
    assert_eq!(more["bindings"][2]["members"], json!([PUBLIC, "user:c"]));
}
