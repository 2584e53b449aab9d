//! An in-test stand-in of Cloud Build's REST API (`cloudbuild.googleapis.com/v1`, regional
//! paths), for the Cloud Build adapter ([`crate::gcp::cloudbuild`]) and the end-to-end test.
//!
//! It serves what the official client calls: `CreateBuild` (`POST .../builds`, answered with a
//! long-running operation whose metadata names the build), `ListBuilds`, `GetBuild`,
//! `CancelBuild` (`POST .../builds/{id}:cancel`) and `GetOperation`. Bodies are decoded with the
//! client crate's own types, and a build is checked as Cloud Build checks it (steps, tags, the
//! logging option a user-specified service account requires), so a request the service would
//! refuse fails the test. Every request is recorded ([`RequestLog`]) and failures can be
//! scripted per method ([`Faults`]), or a created build's answer lost
//! ([`CloudBuildStandIn::lose_create_responses`]).
//!
//! A created build "runs": it is `QUEUED`, then `WORKING`, then after
//! [`CloudBuildStandIn::set_run_time`] it ends as scripted ([`Outcome`]). Each change is published
//! on [`Topic::CloudBuilds`] through the [`Bus`] it was given, as Cloud Build publishes it
//! (attributes `buildId` and `status`, data the Build resource's JSON with enums by name), and
//! its log lines are written to a Logging stand-in's [`LogSink`] if it has one, as Cloud Build
//! writes them (`projects/P/logs/cloudbuild`, resource `build`). The operation of `CreateBuild`
//! follows the build: done when the build ends (a cancel ends it early).

use super::logging::{Filter, LogSink, decode};
use super::standin::{Faults, HttpStandIn, RequestLog, google_error};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use devgem_common::events::Topic;
use devgem_common::ports::bus::{Bus, OutboundMessage};
use google_cloud_build_v1::model::build_options::LoggingMode;
use google_cloud_build_v1::model::{Build, CancelBuildRequest};
use http::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How the next builds end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A step failed (`FAILURE`, `failureInfo.type` `USER_BUILD_STEP`), with this detail.
    Failure(String),
    Timeout,
    InternalError,
}

#[derive(Debug)]
struct Settings {
    run_time: Duration,
    outcome: Outcome,
    /// The lines a build writes while it works; `None`: a line per step start and finish.
    log_lines: Option<Vec<String>>,
    /// Creates whose build is made but whose answer is a 503, as if the response was lost.
    lost_creates: u32,
}

#[derive(Debug)]
struct Shared {
    bus: Arc<dyn Bus>,
    logs: Option<LogSink>,
    requests: RequestLog,
    faults: Faults,
    settings: Mutex<Settings>,
    /// Builds by id, as Cloud Build shows them (enums by name), in creation order.
    builds: Mutex<Vec<Value>>,
    /// Operation name → build id.
    operations: Mutex<HashMap<String, String>>,
    /// Held while a build changes status and the change is published, so that notifications
    /// go out in the order of the changes.
    transitions: tokio::sync::Mutex<()>,
}

impl Shared {
    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn builds(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        self.builds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn build(&self, id: &str) -> Option<Value> {
        self.builds().iter().find(|b| b["id"] == id).cloned()
    }

    /// Changes build `id` with `change` if it has not ended, and publishes the change.
    /// Returns the build after the change, or `None` if it had ended (or does not exist).
    async fn transition(&self, id: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let _turn = self.transitions.lock().await;
        let changed = {
            let mut builds = self.builds();
            let build = builds.iter_mut().find(|b| b["id"] == id)?;
            if is_final(build) {
                return None;
            }
            change(build);
            build.clone()
        };
        self.publish(&changed).await;
        Some(changed)
    }

    async fn publish(&self, build: &Value) {
        let id = build["id"].as_str().unwrap_or_default().to_owned();
        let status = build["status"].as_str().unwrap_or_default().to_owned();
        let attributes = [("buildId".to_owned(), id.clone()), ("status".to_owned(), status)].into();
        let data = serde_json::to_vec(build).unwrap_or_default();
        // Cloud Build publishes without an ordering key.
        let message = OutboundMessage { data: data.into(), attributes, ordering_key: None };
        if let Err(e) = self.bus.publish(Topic::CloudBuilds, message).await {
            tracing::warn!(build_id = %id, error = %e, "the stand-in could not publish a build notification");
        }
    }
}

fn is_final(build: &Value) -> bool {
    build["status"]
        .as_str()
        .and_then(devgem_common::events::cloud_build::BuildStatus::parse)
        .is_some_and(|s| s.is_final())
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A running Cloud Build stand-in; stops when dropped (builds still running then never end).
#[derive(Debug)]
pub struct CloudBuildStandIn {
    server: HttpStandIn,
    state: Arc<Shared>,
}

impl CloudBuildStandIn {
    /// Serves the API; notifications go to `bus`, log lines to `logs` if given.
    pub async fn start(bus: Arc<dyn Bus>, logs: Option<LogSink>) -> std::io::Result<Self> {
        let state = Arc::new(Shared {
            bus,
            logs,
            requests: RequestLog::default(),
            faults: Faults::default(),
            settings: Mutex::new(Settings {
                run_time: Duration::from_millis(200),
                outcome: Outcome::Success,
                log_lines: None,
                lost_creates: 0,
            }),
            builds: Mutex::new(Vec::new()),
            operations: Mutex::new(HashMap::new()),
            transitions: tokio::sync::Mutex::new(()),
        });
        let router = Router::new()
            .route("/v1/projects/{project}/locations/{location}/builds", get(list_builds).post(create_build))
            .route("/v1/projects/{project}/locations/{location}/builds/{build}", get(get_build).post(cancel_build))
            .route("/v1/projects/{project}/locations/{location}/operations/{operation}", get(get_operation))
            .with_state(state.clone());
        Ok(Self { server: HttpStandIn::serve(router).await?, state })
    }

    /// What `DEVGEM_CLOUD_BUILD_ENDPOINT` is set to.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// Every request received, decoded (methods `CreateBuild`, `ListBuilds`, `GetBuild`,
    /// `CancelBuild`, `GetOperation`).
    pub fn requests(&self) -> &RequestLog {
        &self.state.requests
    }

    /// Failures to answer instead of the next calls of a method.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// How long the next builds work before they end (default 200 ms).
    pub fn set_run_time(&self, run_time: Duration) {
        self.state.settings().run_time = run_time;
    }

    /// How the next builds end (default [`Outcome::Success`]).
    pub fn set_outcome(&self, outcome: Outcome) {
        self.state.settings().outcome = outcome;
    }

    /// The lines the next builds write to the log while they work.
    pub fn set_log_lines(&self, lines: Vec<String>) {
        self.state.settings().log_lines = Some(lines);
    }

    /// The next `times` creates make their build but answer 503, as if the answer was lost.
    pub fn lose_create_responses(&self, times: u32) {
        self.state.settings().lost_creates += times;
    }

    /// Every build created, oldest first, decoded with the client crate's type.
    pub fn builds(&self) -> Vec<Build> {
        self.state.builds().iter().filter_map(|b| serde_json::from_value(b.clone()).ok()).collect()
    }

    /// Build `id` as Cloud Build shows and publishes it (enums by name).
    pub fn build_json(&self, id: &str) -> Option<Value> {
        self.state.build(id)
    }
}

/// An error as Cloud Build answers it, with a status name of its own choosing (the shared
/// helper derives it from the HTTP status, and Cloud Build says 400 for more than one).
fn error(status: StatusCode, name: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message.into(), "status": name}});
    (status, axum::Json(body)).into_response()
}

/// Checks a build the way Cloud Build does before it accepts it.
fn check(build: &Build, project: &str) -> Result<(), String> {
    if build.steps.is_empty() {
        return Err("build.steps: at least one step is required".into());
    }
    if let Some(step) = build.steps.iter().find(|s| s.name.is_empty()) {
        return Err(format!("build.steps: step {:?} has no name", step.id));
    }
    let valid_tag = |t: &str| {
        let mut chars = t.chars();
        t.len() <= 128
            && chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if let Some(tag) = build.tags.iter().find(|t| !valid_tag(t)) {
        return Err(format!("invalid build tag {tag:?}: must match ^[\\w][\\w.-]{{0,127}}$"));
    }
    if let Some(timeout) = &build.timeout {
        let seconds =
            serde_json::to_value(timeout).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let seconds: f64 = seconds.trim_end_matches('s').parse().unwrap_or(-1.0);
        if !(1.0..=86_400.0).contains(&seconds) {
            return Err(format!("build.timeout {seconds}s: must be between 1s and 24h"));
        }
    }
    if !build.service_account.is_empty() {
        let prefix = format!("projects/{project}/serviceAccounts/");
        let email = build.service_account.strip_prefix(&prefix).unwrap_or_default();
        if !email.contains('@') {
            return Err(format!("build.service_account {:?}: expected {prefix}EMAIL", build.service_account));
        }
        let logging = build.options.as_ref().map(|o| o.logging.clone()).unwrap_or(LoggingMode::LoggingUnspecified);
        if build.logs_bucket.is_empty() && !matches!(logging, LoggingMode::CloudLoggingOnly | LoggingMode::None) {
            return Err("if 'build.service_account' is specified, the build must either (a) specify \
                        'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET \
                        build.options.default_logs_bucket_behavior option, or (c) use either CLOUD_LOGGING_ONLY / \
                        NONE logging options"
                .into());
        }
    }
    Ok(())
}

/// The build as Cloud Build stores and shows it: the decoded request, its enums by name.
fn as_shown(build: &Build) -> Value {
    let mut json = serde_json::to_value(build).unwrap_or_else(|_| json!({}));
    if let (Some(options), Some(shown)) = (&build.options, json.get_mut("options").and_then(Value::as_object_mut)) {
        let names = [
            ("logging", options.logging.name()),
            ("machineType", options.machine_type.name()),
            ("substitutionOption", options.substitution_option.name()),
            ("logStreamingOption", options.log_streaming_option.name()),
            ("requestedVerifyOption", options.requested_verify_option.name()),
            ("defaultLogsBucketBehavior", options.default_logs_bucket_behavior.name()),
        ];
        for (key, name) in names {
            if let (true, Some(name)) = (shown.contains_key(key), name) {
                shown.insert(key.to_owned(), Value::String(name.to_owned()));
            }
        }
    }
    json
}

async fn create_build(
    State(state): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = format!("/v1/projects/{project}/locations/{location}/builds");
    // The client sends the Build itself as the body.
    let build: Build = match decode("CreateBuild", &path, &query, &body, &state.requests) {
        Ok(build) => build,
        Err(why) => return google_error(StatusCode::BAD_REQUEST, why),
    };
    if let Some(response) = state.faults.take("CreateBuild") {
        return response;
    }
    if let Err(why) = check(&build, &project) {
        return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", why);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut shown = as_shown(&build);
    let fields = [
        ("name", json!(format!("projects/{project}/locations/{location}/builds/{id}"))),
        ("id", json!(id)),
        ("projectId", json!(project)),
        ("status", json!("QUEUED")),
        ("createTime", json!(now())),
        (
            "logUrl",
            json!(format!(
                "https://console.cloud.google.com/cloud-build/builds;region={location}/{id}?project={project}"
            )),
        ),
    ];
    if let Some(object) = shown.as_object_mut() {
        for (key, value) in fields {
            object.insert(key.to_owned(), value);
        }
        object.entry("timeout").or_insert_with(|| json!("600s"));
    }
    if let Err(e) = serde_json::from_value::<Build>(shown.clone()) {
        return google_error(StatusCode::INTERNAL_SERVER_ERROR, format!("the stand-in made a bad build: {e}"));
    }
    state.builds().push(shown.clone());
    let operation = format!("projects/{project}/locations/{location}/operations/{}", uuid::Uuid::new_v4().simple());
    state.operations.lock().unwrap_or_else(PoisonError::into_inner).insert(operation.clone(), id.clone());
    tokio::spawn(run(state.clone(), id, shown.clone()));

    let lost = {
        let mut settings = state.settings();
        let lost = settings.lost_creates > 0;
        settings.lost_creates = settings.lost_creates.saturating_sub(u32::from(lost));
        lost
    };
    if lost {
        return google_error(StatusCode::SERVICE_UNAVAILABLE, "the answer was lost (scripted)");
    }
    axum::Json(operation_json(&operation, &shown)).into_response()
}

/// `google.longrunning.Operation` of building `build`: done once the build has ended.
fn operation_json(name: &str, build: &Value) -> Value {
    let mut metadata = json!({"build": build});
    metadata["@type"] = json!("type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata");
    let mut operation = json!({"name": name, "metadata": metadata});
    if is_final(build) {
        operation["done"] = json!(true);
        if build["status"] == "SUCCESS" {
            let mut response = build.clone();
            response["@type"] = json!("type.googleapis.com/google.devtools.cloudbuild.v1.Build");
            operation["response"] = response;
        } else {
            let detail = build["statusDetail"].as_str().unwrap_or("the build did not succeed");
            operation["error"] = json!({"code": 2, "message": format!("Build {}: {detail}", build["status"])});
        }
    }
    operation
}

/// The life of build `id`: working, writing its log, then ending as scripted.
async fn run(state: Arc<Shared>, id: String, build: Value) {
    let (run_time, outcome, lines) = {
        let settings = state.settings();
        (settings.run_time, settings.outcome.clone(), settings.log_lines.clone())
    };
    state.publish(&build).await;
    let working = state
        .transition(&id, |b| {
            b["status"] = json!("WORKING");
            b["startTime"] = json!(now());
        })
        .await;
    let Some(working) = working else { return };
    let steps: Vec<String> = working["steps"]
        .as_array()
        .map(|steps| steps.iter().map(|s| s["id"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    let lines = lines.unwrap_or_else(|| {
        steps
            .iter()
            .enumerate()
            .flat_map(|(i, step)| {
                [format!("Starting Step #{i} - \"{step}\""), format!("Finished Step #{i} - \"{step}\"")]
            })
            .collect()
    });
    write_log(&state, &working, &lines);
    tokio::time::sleep(run_time).await;
    let (status, failure) = match &outcome {
        Outcome::Success => ("SUCCESS", None),
        Outcome::Failure(detail) => ("FAILURE", Some(("USER_BUILD_STEP", detail.clone()))),
        Outcome::Timeout => ("TIMEOUT", Some(("", "Build timed out".to_owned()))),
        Outcome::InternalError => ("INTERNAL_ERROR", Some(("", "An internal error occurred".to_owned()))),
    };
    let last_line = match &failure {
        None => "DONE".to_owned(),
        Some((_, detail)) => format!("ERROR: {detail}"),
    };
    // Written before the notification, as Cloud Build finishes its log before it reports.
    write_log(&state, &working, &[last_line]);
    let _ = state
        .transition(&id, |b| {
            b["status"] = json!(status);
            b["finishTime"] = json!(now());
            if let Some((kind, detail)) = failure {
                b["statusDetail"] = json!(detail);
                b["failureInfo"] =
                    if kind.is_empty() { json!({"detail": detail}) } else { json!({"type": kind, "detail": detail}) };
            } else if let Some(images) = b["images"].as_array().cloned() {
                let built: Vec<Value> = images
                    .iter()
                    .map(|name| {
                        let digest = sha2::Sha256::digest(name.as_str().unwrap_or_default().as_bytes());
                        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                        json!({"name": name, "digest": format!("sha256:{hex}")})
                    })
                    .collect();
                b["results"] = json!({"images": built});
            }
        })
        .await;
}

fn write_log(state: &Shared, build: &Value, lines: &[String]) {
    let Some(sink) = &state.logs else { return };
    let (id, project) = (build["id"].as_str().unwrap_or_default(), build["projectId"].as_str().unwrap_or_default());
    for line in lines {
        let entry = json!({
            "logName": format!("projects/{project}/logs/cloudbuild"),
            "resource": {"type": "build", "labels": {"build_id": id, "project_id": project, "build_trigger_id": ""}},
            "textPayload": line,
            "timestamp": now(),
            "severity": "INFO",
        });
        if let Err(why) = sink.write(entry) {
            tracing::warn!(build_id = %id, %why, "the stand-in could not write a log line");
        }
    }
}

async fn list_builds(
    State(state): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/v1/projects/{project}/locations/{location}/builds");
    state.requests.record("ListBuilds", &path, &query, Value::Null);
    if let Some(response) = state.faults.take("ListBuilds") {
        return response;
    }
    let filter = match Filter::parse(query.get("filter").map(String::as_str).unwrap_or_default()) {
        Ok(filter) => filter.rename("build_id", "id"),
        Err(why) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("filter: {why}")),
    };
    let page_size = query.get("pageSize").and_then(|s| s.parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or(25);
    let offset = match query.get("pageToken").map(String::as_str).unwrap_or_default() {
        "" => 0,
        token => match token.parse::<usize>() {
            Ok(offset) => offset,
            Err(_) => {
                return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "pageToken: not one this service gave");
            }
        },
    };
    let prefix = format!("projects/{project}/locations/{location}/builds/");
    // Newest first, as Cloud Build lists them.
    let matching: Vec<Value> = state
        .builds()
        .iter()
        .rev()
        .filter(|b| b["name"].as_str().is_some_and(|n| n.starts_with(&prefix)) && filter.matches(b))
        .cloned()
        .collect();
    let page: Vec<Value> = matching.iter().skip(offset).take(page_size).cloned().collect();
    let mut answer = json!({"builds": page});
    if offset + page_size < matching.len() {
        answer["nextPageToken"] = json!((offset + page_size).to_string());
    }
    axum::Json(answer).into_response()
}

async fn get_build(
    State(state): State<Arc<Shared>>,
    Path((project, location, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/v1/projects/{project}/locations/{location}/builds/{id}");
    state.requests.record("GetBuild", &path, &query, Value::Null);
    if let Some(response) = state.faults.take("GetBuild") {
        return response;
    }
    match state.build(&id).filter(|b| b["projectId"] == project.as_str()) {
        Some(build) => axum::Json(build).into_response(),
        None => google_error(StatusCode::NOT_FOUND, format!("build {id} not found")),
    }
}

async fn cancel_build(
    State(state): State<Arc<Shared>>,
    Path((project, location, tail)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = format!("/v1/projects/{project}/locations/{location}/builds/{tail}");
    let Some(id) = tail.strip_suffix(":cancel") else {
        return google_error(StatusCode::NOT_FOUND, format!("no method POST {path}"));
    };
    let _request: CancelBuildRequest = match decode("CancelBuild", &path, &query, &body, &state.requests) {
        Ok(request) => request,
        Err(why) => return google_error(StatusCode::BAD_REQUEST, why),
    };
    if let Some(response) = state.faults.take("CancelBuild") {
        return response;
    }
    let Some(current) = state.build(id).filter(|b| b["projectId"] == project.as_str()) else {
        return google_error(StatusCode::NOT_FOUND, format!("build {id} not found"));
    };
    if is_final(&current) {
        return error(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            format!("build {id} is {}; only a running build can be cancelled", current["status"]),
        );
    }
    let cancelled = state
        .transition(id, |b| {
            b["status"] = json!("CANCELLED");
            b["finishTime"] = json!(now());
        })
        .await;
    match cancelled {
        Some(build) => axum::Json(build).into_response(),
        // It ended between the look and the change.
        None => error(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", format!("build {id} has ended")),
    }
}

async fn get_operation(
    State(state): State<Arc<Shared>>,
    Path((project, location, operation)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let name = format!("projects/{project}/locations/{location}/operations/{operation}");
    state.requests.record("GetOperation", &format!("/v1/{name}"), &query, Value::Null);
    if let Some(response) = state.faults.take("GetOperation") {
        return response;
    }
    let build_id = state.operations.lock().unwrap_or_else(PoisonError::into_inner).get(&name).cloned();
    match build_id.and_then(|id| state.build(&id)) {
        Some(build) => axum::Json(operation_json(&name, &build)).into_response(),
        None => google_error(StatusCode::NOT_FOUND, format!("operation {name} not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::RecordingBus;
    use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
    use google_cloud_build_v1::client::CloudBuild;
    use google_cloud_build_v1::model::{BuildOperationMetadata, BuildStep};

    #[tokio::test]
    async fn the_operation_of_a_create_follows_its_build_and_checks_are_cloud_builds() {
        let bus = Arc::new(RecordingBus::default());
        let stand_in = CloudBuildStandIn::start(bus.clone(), None).await.expect("stand-in");
        stand_in.set_run_time(Duration::from_millis(100));
        let client = CloudBuild::builder()
            .with_endpoint(stand_in.endpoint())
            .with_credentials(Anonymous::new().build())
            .build()
            .await
            .expect("client");
        let parent = "projects/demo/locations/europe-west1";
        let build = Build::new().set_steps([BuildStep::new().set_name("ubuntu").set_args(["true"])]);
        let operation =
            client.create_build().set_parent(parent).set_build(build.clone()).send().await.expect("created");
        assert!(!operation.done, "the build is running");
        let metadata: BuildOperationMetadata = operation.metadata.as_ref().expect("metadata").to_msg().expect("build");
        let id = metadata.build.expect("build").id;
        bus.cloud_build(2).await;
        let done = client.get_operation().set_name(&operation.name).send().await.expect("operation");
        assert!(done.done, "done once the build has ended");
        assert!(matches!(done.result, Some(google_cloud_longrunning::model::operation::Result::Response(_))));
        let fetched = client.get_build().set_name(format!("{parent}/builds/{id}")).send().await.expect("build");
        assert_eq!(fetched.status.name(), Some("SUCCESS"));

        // Cloud Build's own rule: a user-specified service account needs Cloud Logging only (or a bucket).
        let with_account = build.set_service_account("projects/demo/serviceAccounts/b@demo.iam.gserviceaccount.com");
        let refused = client.create_build().set_parent(parent).set_build(with_account).send().await;
        let error = refused.expect_err("refused");
        assert_eq!(error.http_status_code(), Some(400), "{error}");
        assert!(error.to_string().contains("CLOUD_LOGGING_ONLY"), "{error}");
        let no_steps = client.create_build().set_parent(parent).set_build(Build::new()).send().await;
        assert!(no_steps.expect_err("refused").to_string().contains("at least one step"));
        assert_eq!(stand_in.builds().len(), 1);
    }
}
