//! An in-process HTTP stand-in for the Cloud Run Admin API (v2), for the Cloud Run runtime
//! adapter's tests (`gcp::cloudrun`): no emulator of Cloud Run exists.
//!
//! This module owns:
//! - the REST routes the official client (`google-cloud-run-v2`, `transport.rs`) calls for the
//!   methods the adapter uses: `CreateService` (`POST /v2/projects/P/locations/L/services?serviceId=S`),
//!   `GetService` and `UpdateService` (`GET`/`PATCH /v2/projects/P/locations/L/services/S`),
//!   `GetIamPolicy` (`GET .../services/S:getIamPolicy`), `SetIamPolicy` (`POST .../services/S:setIamPolicy`),
//!   `GetRevision`, `DeleteRevision` (`GET`/`DELETE .../services/S/revisions/R`), `ListRevisions`
//!   (`GET .../services/S/revisions?pageSize&pageToken`) and `GetOperation`
//!   (`GET /v2/projects/P/locations/L/operations/O`). Bodies are decoded with the crate's own
//!   model types (`Service`), so a request the real API would not parse fails; other paths
//!   answer 501.
//! - services and revisions in memory, kept as Cloud Run keeps them: a write whose template
//!   differs from the service's creates a revision (named by `template.revision`, or numbered);
//!   naming an existing revision with another configuration answers 409 `ALREADY_EXISTS`;
//!   traffic must add up to 100 and name existing revisions; an `UpdateService` whose etag is not
//!   the current one answers 409 `ABORTED`; a revision that takes traffic, carries a tag or is the
//!   latest one cannot be deleted (400 `FAILED_PRECONDITION`). Reads fill in the output fields
//!   (`uri`, `traffic_statuses` with the tagged URLs, `latest_ready_revision`, the `Ready`
//!   condition).
//! - long-running operations ([`Operations`]): every write answers an operation that is done
//!   after [`CloudRunStandIn::set_operation_delay`]; a revision becomes ready at the same moment,
//!   or fails, with the operation failing too, when its image was scripted with
//!   [`CloudRunStandIn::fail_image`].
//! - the apps: a second loopback listener answers each service's `uri` (`{app}/s/SERVICE`) with
//!   the revision that takes most of its traffic, and each tagged URL (`{app}/t/SERVICE/TAG`) with
//!   the tagged revision: `200 hello from SERVICE/REVISION` once the revision is ready, 503 before
//!   or when it failed, and whatever [`CloudRunStandIn::fail_app_requests`] scripts first.
//! - changes made outside DevGem ([`CloudRunStandIn::edit_service`], e.g. an env var edited in the
//!   console), [`Faults`] per method name (`App` for the apps) and a [`RequestLog`] of every
//!   request as decoded.

use super::iam::{Policies, SetIamPolicyBody, aborted, decode, percent_decode};
use super::standin::{Faults, HttpStandIn, Operations, RequestLog, google_error};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State as AxumState};
use axum::response::{IntoResponse, Response};
use google_cloud_run_v2::model::{
    Condition, ListRevisionsResponse, Revision, Service, TrafficTarget, TrafficTargetAllocationType,
    TrafficTargetStatus, condition,
};
use http::{Method, StatusCode, Uri};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The method name under which requests to the apps are logged and faults are scripted.
pub const APP_METHOD: &str = "App";
/// How long an operation (and a new revision's start) takes unless set otherwise.
const DEFAULT_OPERATION_DELAY: Duration = Duration::from_millis(50);
const SERVICE_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Service";
const REVISION_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Revision";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Pending,
    Ready,
    Failed(String),
}

#[derive(Debug, Clone)]
struct StoredRevision {
    revision: Revision,
    /// Creation order: the latest revision of a service is the one with the highest.
    order: u64,
    settles_at: Instant,
    failure: Option<String>,
}

impl StoredRevision {
    fn phase(&self) -> Phase {
        match &self.failure {
            _ if Instant::now() < self.settles_at => Phase::Pending,
            Some(why) => Phase::Failed(why.clone()),
            None => Phase::Ready,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Full name → the service as last written (output fields are computed on read).
    services: BTreeMap<String, Service>,
    /// Full name → revision.
    revisions: BTreeMap<String, StoredRevision>,
    /// Image → why revisions of it fail to start.
    failing_images: HashMap<String, String>,
    counter: u64,
}

#[derive(Debug)]
struct Inner {
    faults: Faults,
    requests: RequestLog,
    operations: Operations,
    policies: Policies,
    state: Mutex<State>,
    operation_delay: Mutex<Duration>,
    /// `http://127.0.0.1:PORT` of the apps' listener.
    app_base: OnceLock<String>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delay(&self) -> Duration {
        *self.operation_delay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn app_base(&self) -> &str {
        self.app_base.get().map(String::as_str).unwrap_or("http://127.0.0.1:0")
    }
}

/// The Cloud Run stand-in: the Admin API on one loopback port, the apps on another; both stop
/// when it is dropped.
#[derive(Debug)]
pub struct CloudRunStandIn {
    api: HttpStandIn,
    app: HttpStandIn,
    inner: Arc<Inner>,
}

impl CloudRunStandIn {
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            faults: Faults::default(),
            requests: RequestLog::default(),
            operations: Operations::default(),
            policies: Policies::default(),
            state: Mutex::new(State::default()),
            operation_delay: Mutex::new(DEFAULT_OPERATION_DELAY),
            app_base: OnceLock::new(),
        });
        let app = HttpStandIn::serve(Router::new().fallback(app).with_state(Arc::clone(&inner))).await?;
        let _ = inner.app_base.set(app.endpoint());
        let api = HttpStandIn::serve(Router::new().fallback(dispatch).with_state(Arc::clone(&inner))).await?;
        Ok(Self { api, app, inner })
    }

    /// `http://127.0.0.1:PORT` of the Admin API, for `DEVGEM_CLOUD_RUN_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        self.api.endpoint()
    }

    /// `http://127.0.0.1:PORT` of the apps' listener.
    pub fn app_endpoint(&self) -> String {
        self.app.endpoint()
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn requests(&self) -> &RequestLog {
        &self.inner.requests
    }

    /// How long every later operation takes (and a new revision takes to start or fail).
    pub fn set_operation_delay(&self, delay: Duration) {
        *self.inner.operation_delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Revisions created later with `image` fail to start with `reason` (their operation too).
    pub fn fail_image(&self, image: &str, reason: &str) {
        self.inner.state().failing_images.insert(image.to_owned(), reason.to_owned());
    }

    /// The next `times` requests to the apps answer `status`.
    pub fn fail_app_requests(&self, status: StatusCode, times: u32) {
        self.inner.faults.fail_next(APP_METHOD, status, times);
    }

    /// A service as `GetService` answers it (`projects/P/locations/L/services/S`).
    pub fn service(&self, name: &str) -> Option<Service> {
        let state = self.inner.state();
        state.services.get(name).map(|s| service_view(&self.inner, &state, s))
    }

    /// The full names of every service, in order.
    pub fn service_names(&self) -> Vec<String> {
        self.inner.state().services.keys().cloned().collect()
    }

    /// A revision as `GetRevision` answers it.
    pub fn revision(&self, name: &str) -> Option<Revision> {
        self.inner.state().revisions.get(name).map(revision_view)
    }

    /// The full names of a service's revisions, oldest first.
    pub fn revision_names(&self, service: &str) -> Vec<String> {
        let state = self.inner.state();
        let mut revisions: Vec<&StoredRevision> =
            state.revisions.values().filter(|r| r.revision.service == service).collect();
        revisions.sort_by_key(|r| r.order);
        revisions.into_iter().map(|r| r.revision.name.clone()).collect()
    }

    /// A service's IAM policy.
    pub fn iam_policy(&self, service: &str) -> super::iam::PolicyJson {
        self.inner.policies.get(service)
    }

    /// Changes a service as someone would in the console or with `gcloud` (its etag and
    /// generation move on). No revision is started for it. `false` when there is no such service.
    pub fn edit_service(&self, name: &str, edit: impl FnOnce(&mut Service)) -> bool {
        let mut state = self.inner.state();
        state.counter += 1;
        let counter = state.counter;
        let Some(service) = state.services.get_mut(name) else { return false };
        edit(service);
        service.generation += 1;
        service.etag = format!("etag-{counter}");
        true
    }
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Whether a traffic target follows the latest ready revision.
fn is_latest(target: &TrafficTarget) -> bool {
    target.r#type == TrafficTargetAllocationType::Latest
        || (target.r#type == TrafficTargetAllocationType::Unspecified && target.revision.is_empty())
}

fn ready_condition(phase: &Phase) -> Condition {
    let mut condition = Condition::default();
    condition.r#type = "Ready".to_owned();
    condition.last_transition_time = std::time::SystemTime::now().try_into().ok();
    match phase {
        Phase::Pending => condition.state = condition::State::ConditionReconciling,
        Phase::Ready => condition.state = condition::State::ConditionSucceeded,
        Phase::Failed(why) => {
            condition.state = condition::State::ConditionFailed;
            condition.message = why.clone();
            condition.severity = condition::Severity::Error;
        }
    }
    condition
}

fn revision_view(stored: &StoredRevision) -> Revision {
    let mut revision = stored.revision.clone();
    let phase = stored.phase();
    revision.reconciling = phase == Phase::Pending;
    revision.conditions = vec![ready_condition(&phase)];
    revision.observed_generation = revision.generation;
    revision
}

fn revisions_of<'a>(state: &'a State, service: &str) -> Vec<&'a StoredRevision> {
    let mut revisions: Vec<&StoredRevision> =
        state.revisions.values().filter(|r| r.revision.service == service).collect();
    revisions.sort_by_key(|r| r.order);
    revisions
}

/// The service as `GetService` answers: what was written plus the output fields.
fn service_view(inner: &Inner, state: &State, service: &Service) -> Service {
    let mut view = service.clone();
    let id = last_segment(&service.name).to_owned();
    let revisions = revisions_of(state, &service.name);
    let latest_created = revisions.last();
    let latest_ready = revisions.iter().rev().find(|r| r.phase() == Phase::Ready);
    view.latest_created_revision = latest_created.map(|r| r.revision.name.clone()).unwrap_or_default();
    view.latest_ready_revision = latest_ready.map(|r| r.revision.name.clone()).unwrap_or_default();
    let base = inner.app_base();
    view.uri = format!("{base}/s/{id}");
    view.urls = vec![view.uri.clone()];
    view.traffic_statuses = service
        .traffic
        .iter()
        .map(|target| {
            let mut status = TrafficTargetStatus::default();
            status.r#type = target.r#type.clone();
            status.revision = if is_latest(target) {
                last_segment(&view.latest_ready_revision).to_owned()
            } else {
                target.revision.clone()
            };
            status.percent = target.percent;
            status.tag = target.tag.clone();
            if !target.tag.is_empty() {
                status.uri = format!("{base}/t/{id}/{}", target.tag);
            }
            status
        })
        .collect();
    let phase = latest_created.map(|r| r.phase()).unwrap_or(Phase::Pending);
    let ready = ready_condition(&phase);
    view.reconciling = phase == Phase::Pending;
    view.terminal_condition = Some(ready.clone());
    view.conditions = vec![ready];
    view.observed_generation = view.generation;
    view
}

/// Output-only fields a client may send back from a read; never stored.
fn clear_output(service: &mut Service) {
    service.uri = String::new();
    service.urls.clear();
    service.traffic_statuses.clear();
    service.conditions.clear();
    service.terminal_condition = None;
    service.latest_created_revision = String::new();
    service.latest_ready_revision = String::new();
    service.reconciling = false;
    service.observed_generation = 0;
}

fn any_of<T: serde::Serialize>(value: &T, type_url: &str) -> Value {
    let mut json = serde_json::to_value(value).unwrap_or_else(|_| json!({}));
    if let Some(object) = json.as_object_mut() {
        object.insert("@type".to_owned(), Value::String(type_url.to_owned()));
    }
    json
}

/// Google's 400 for a request that the resource's state does not allow.
fn failed_precondition(message: String) -> Response {
    let body = json!({"error": {"code": 400, "message": message, "status": "FAILED_PRECONDITION"}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    google_error(StatusCode::BAD_REQUEST, message)
}

fn dns_label(value: &str, max: usize) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes.last() != Some(&b'-')
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `projects/P/locations/L` and what follows it.
    Services {
        parent: String,
    },
    Service {
        name: String,
        verb: Option<String>,
    },
    Revisions {
        service: String,
    },
    Revision {
        name: String,
    },
    Operation {
        name: String,
    },
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2/projects/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [project, "locations", location, rest @ ..] => {
            let parent = format!("projects/{project}/locations/{location}");
            match rest {
                ["services"] => Some(Route::Services { parent }),
                ["services", last] => {
                    let (id, verb) = match last.split_once(':') {
                        Some((id, verb)) => (id, Some(verb.to_owned())),
                        None => (*last, None),
                    };
                    (!id.is_empty()).then(|| Route::Service { name: format!("{parent}/services/{id}"), verb })
                }
                ["services", service, "revisions"] => {
                    Some(Route::Revisions { service: format!("{parent}/services/{service}") })
                }
                ["services", service, "revisions", revision] => {
                    Some(Route::Revision { name: format!("{parent}/services/{service}/revisions/{revision}") })
                }
                ["operations", operation] => {
                    Some(Route::Operation { name: format!("{parent}/operations/{operation}") })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Decodes the body, records the request and answers a scripted fault if there is one.
fn admit<T: serde::de::DeserializeOwned + serde::Serialize>(
    inner: &Inner,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<T, Box<Response>> {
    let decoded: T = match decode(body) {
        Ok(decoded) => decoded,
        Err(response) => {
            inner.requests.record(method, path, query, Value::Null);
            return Err(response);
        }
    };
    inner.requests.record(method, path, query, serde_json::to_value(&decoded).unwrap_or_default());
    match inner.faults.take(method) {
        Some(fault) => Err(Box::new(fault)),
        None => Ok(decoded),
    }
}

/// Records a request without a body and answers a scripted fault if there is one.
fn admit_empty(inner: &Inner, method: &str, path: &str, query: &HashMap<String, String>) -> Result<(), Box<Response>> {
    inner.requests.record(method, path, query, Value::Null);
    inner.faults.take(method).map_or(Ok(()), |fault| Err(Box::new(fault)))
}

async fn dispatch(
    AxumState(inner): AxumState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = percent_decode(uri.path());
    let not_served =
        || google_error(StatusCode::NOT_IMPLEMENTED, format!("the Cloud Run stand-in does not serve {method} {path}"));
    let Some(route) = route(&path) else { return not_served() };
    let result = match (&method, route) {
        (&Method::POST, Route::Services { parent }) => admit::<Service>(&inner, "CreateService", &path, &query, &body)
            .and_then(|service| create_service(&inner, &parent, &query, service)),
        (&Method::GET, Route::Service { name, verb: None }) => {
            admit_empty(&inner, "GetService", &path, &query).and_then(|()| get_service(&inner, &name))
        }
        (&Method::PATCH, Route::Service { name, verb: None }) => {
            admit::<Service>(&inner, "UpdateService", &path, &query, &body)
                .and_then(|service| update_service(&inner, &name, &query, service))
        }
        (&Method::GET, Route::Service { name, verb: Some(verb) }) if verb == "getIamPolicy" => {
            admit_empty(&inner, "GetIamPolicy", &path, &query).and_then(|()| {
                if inner.state().services.contains_key(&name) {
                    Ok(Json(inner.policies.get(&name)).into_response())
                } else {
                    Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Resource '{name}' was not found"))))
                }
            })
        }
        (&Method::POST, Route::Service { name, verb: Some(verb) }) if verb == "setIamPolicy" => {
            admit::<SetIamPolicyBody>(&inner, "SetIamPolicy", &path, &query, &body).and_then(|request| {
                if inner.state().services.contains_key(&name) {
                    Ok(inner.policies.answer_set(&name, request))
                } else {
                    Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Resource '{name}' was not found"))))
                }
            })
        }
        (&Method::GET, Route::Revisions { service }) => {
            admit_empty(&inner, "ListRevisions", &path, &query).and_then(|()| list_revisions(&inner, &service, &query))
        }
        (&Method::GET, Route::Revision { name }) => admit_empty(&inner, "GetRevision", &path, &query).and_then(|()| {
            let state = inner.state();
            match state.revisions.get(&name) {
                Some(stored) => Ok(Json(revision_view(stored)).into_response()),
                None => Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Revision '{name}' was not found")))),
            }
        }),
        (&Method::DELETE, Route::Revision { name }) => {
            admit_empty(&inner, "DeleteRevision", &path, &query).and_then(|()| delete_revision(&inner, &name))
        }
        (&Method::GET, Route::Operation { name }) => {
            admit_empty(&inner, "GetOperation", &path, &query).and_then(|()| {
                inner.operations.get(&name).map(|operation| Json(operation).into_response()).ok_or_else(|| {
                    Box::new(google_error(StatusCode::NOT_FOUND, format!("Operation '{name}' was not found")))
                })
            })
        }
        _ => Err(Box::new(not_served())),
    };
    result.unwrap_or_else(|response| *response)
}

fn get_service(inner: &Inner, name: &str) -> Result<Response, Box<Response>> {
    let state = inner.state();
    let service = state
        .services
        .get(name)
        .ok_or_else(|| Box::new(google_error(StatusCode::NOT_FOUND, format!("Resource '{name}' was not found"))))?;
    Ok(Json(service_view(inner, &state, service)).into_response())
}

fn create_service(
    inner: &Inner,
    parent: &str,
    query: &HashMap<String, String>,
    service: Service,
) -> Result<Response, Box<Response>> {
    let id = query.get("serviceId").cloned().unwrap_or_default();
    if !dns_label(&id, 49) {
        return Err(Box::new(bad_request(format!(
            "serviceId {id:?} must be 1-49 lowercase letters, digits or '-', start with a letter, not end with '-'"
        ))));
    }
    let name = format!("{parent}/services/{id}");
    let mut state = inner.state();
    if state.services.contains_key(&name) {
        return Err(Box::new(google_error(StatusCode::CONFLICT, format!("Resource '{id}' already exists."))));
    }
    write(inner, &mut state, &name, service, None)
}

fn update_service(
    inner: &Inner,
    name: &str,
    query: &HashMap<String, String>,
    service: Service,
) -> Result<Response, Box<Response>> {
    if service.name != name {
        return Err(Box::new(bad_request(format!("service.name {:?} does not match the path {name:?}", service.name))));
    }
    let mut state = inner.state();
    let existing = match state.services.get(name) {
        Some(existing) => Some(existing.clone()),
        None if query.get("allowMissing").is_some_and(|v| v == "true") => None,
        None => return Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Resource '{name}' was not found")))),
    };
    if let Some(existing) = &existing
        && !service.etag.is_empty()
        && service.etag != existing.etag
    {
        return Err(Box::new(aborted(&format!(
            "the service {name} was modified since it was read (etag {:?}, now {:?})",
            service.etag, existing.etag
        ))));
    }
    write(inner, &mut state, name, service, existing)
}

/// Stores a created or updated service, with the revision its template makes, and answers the
/// operation.
fn write(
    inner: &Inner,
    state: &mut State,
    name: &str,
    mut service: Service,
    existing: Option<Service>,
) -> Result<Response, Box<Response>> {
    let id = last_segment(name).to_owned();
    let Some(template) = service.template.clone() else {
        return Err(Box::new(bad_request("service.template is required".to_owned())));
    };
    if template.containers.is_empty() || template.containers.iter().any(|c| c.image.is_empty()) {
        return Err(Box::new(bad_request("template.containers must name an image".to_owned())));
    }
    let named_well = template.revision.starts_with(&format!("{id}-")) && dns_label(&template.revision, 63);
    if !template.revision.is_empty() && !named_well {
        return Err(Box::new(bad_request(format!(
            "template.revision {:?} must be '{id}-' followed by lowercase letters, digits or '-' (63 at most)",
            template.revision
        ))));
    }
    state.counter += 1;
    let counter = state.counter;
    // A template equal to the service's makes no revision (a traffic-only update).
    let new_revision = match &existing {
        Some(existing) if existing.template.as_ref() == Some(&template) => None,
        _ if template.revision.is_empty() => Some(format!("{id}-{counter:05}-{:03x}", fastrand::u16(..4096))),
        _ if state.revisions.contains_key(&format!("{name}/revisions/{}", template.revision)) => {
            return Err(Box::new(google_error(
                StatusCode::CONFLICT,
                format!("Revision named '{}' with different configuration already exists.", template.revision),
            )));
        }
        _ => Some(template.revision.clone()),
    };
    if service.traffic.is_empty() {
        let mut latest = TrafficTarget::default();
        latest.r#type = TrafficTargetAllocationType::Latest;
        latest.percent = 100;
        service.traffic = vec![latest];
    }
    validate_traffic(state, name, &service.traffic, new_revision.as_deref())?;

    let now = std::time::SystemTime::now();
    match existing {
        Some(existing) => {
            service.uid = existing.uid;
            service.create_time = existing.create_time;
            service.generation = existing.generation + 1;
        }
        None => {
            service.uid = uuid::Uuid::new_v4().to_string();
            service.create_time = now.try_into().ok();
            service.generation = 1;
        }
    }
    service.name = name.to_owned();
    service.update_time = now.try_into().ok();
    service.etag = format!("etag-{counter}");
    clear_output(&mut service);

    let delay = inner.delay();
    let mut failure = None;
    if let Some(revision_id) = &new_revision {
        let mut revision = Revision::default();
        revision.name = format!("{name}/revisions/{revision_id}");
        revision.uid = uuid::Uuid::new_v4().to_string();
        revision.generation = 1;
        revision.service = name.to_owned();
        revision.labels = template.labels.clone();
        revision.annotations = template.annotations.clone();
        revision.create_time = now.try_into().ok();
        revision.scaling = template.scaling.clone();
        revision.service_account = template.service_account.clone();
        revision.containers = template.containers.clone();
        revision.max_instance_request_concurrency = template.max_instance_request_concurrency;
        revision.etag = format!("etag-{counter}");
        let image = template.containers.first().map(|c| c.image.clone()).unwrap_or_default();
        let fails = state.failing_images.get(&image).cloned();
        failure = fails.clone().map(|why| (revision_id.clone(), why));
        state.revisions.insert(
            revision.name.clone(),
            StoredRevision { revision, order: counter, settles_at: Instant::now() + delay, failure: fails },
        );
    }
    state.services.insert(name.to_owned(), service.clone());

    let view = service_view(inner, state, &service);
    let parent = name.split("/services/").next().unwrap_or(name);
    let operation = format!("{parent}/operations/op-{counter}");
    let answer = match failure {
        Some((revision, why)) => inner.operations.start_failing(
            &operation,
            delay,
            any_of(&view, SERVICE_TYPE),
            9,
            &format!("Revision '{revision}' is not ready and cannot serve traffic. {why}"),
        ),
        None => inner.operations.start(&operation, delay, any_of(&view, SERVICE_TYPE), any_of(&view, SERVICE_TYPE)),
    };
    Ok(Json(answer).into_response())
}

fn validate_traffic(
    state: &State,
    service: &str,
    traffic: &[TrafficTarget],
    new_revision: Option<&str>,
) -> Result<(), Box<Response>> {
    let total: i32 = traffic.iter().map(|t| t.percent).sum();
    if total != 100 || traffic.iter().any(|t| !(0..=100).contains(&t.percent)) {
        return Err(Box::new(bad_request(format!("traffic percentages must add up to 100, not {total}"))));
    }
    let mut tags = Vec::new();
    for target in traffic {
        if !is_latest(target) {
            let known = new_revision == Some(target.revision.as_str())
                || state.revisions.contains_key(&format!("{service}/revisions/{}", target.revision));
            if !known {
                return Err(Box::new(bad_request(format!(
                    "Revision '{}' referenced in traffic does not exist",
                    target.revision
                ))));
            }
        }
        if !target.tag.is_empty() {
            if !dns_label(&target.tag, 46) || tags.contains(&target.tag) {
                return Err(Box::new(bad_request(format!("traffic tag {:?} is invalid or used twice", target.tag))));
            }
            tags.push(target.tag.clone());
        }
    }
    Ok(())
}

fn list_revisions(inner: &Inner, service: &str, query: &HashMap<String, String>) -> Result<Response, Box<Response>> {
    let state = inner.state();
    if !state.services.contains_key(service) {
        return Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Resource '{service}' was not found"))));
    }
    // Newest first, as Cloud Run lists them.
    let mut revisions = revisions_of(&state, service);
    revisions.reverse();
    let size = query.get("pageSize").and_then(|s| s.parse::<usize>().ok()).filter(|s| *s > 0).unwrap_or(100);
    let start = match query.get("pageToken").filter(|t| !t.is_empty()) {
        Some(token) => {
            token.parse::<usize>().map_err(|_| Box::new(bad_request(format!("invalid pageToken {token:?}"))))?
        }
        None => 0,
    };
    let mut response = ListRevisionsResponse::default();
    response.revisions = revisions.iter().skip(start).take(size).map(|r| revision_view(r)).collect();
    if start + size < revisions.len() {
        response.next_page_token = (start + size).to_string();
    }
    Ok(Json(response).into_response())
}

fn delete_revision(inner: &Inner, name: &str) -> Result<Response, Box<Response>> {
    let mut state = inner.state();
    let Some(stored) = state.revisions.get(name) else {
        return Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Revision '{name}' was not found"))));
    };
    let id = last_segment(name).to_owned();
    let service_name = stored.revision.service.clone();
    if let Some(service) = state.services.get(&service_name) {
        let view = service_view(inner, &state, service);
        if view.traffic_statuses.iter().any(|s| s.revision == id) {
            return Err(Box::new(failed_precondition(format!(
                "Revision '{id}' is receiving traffic or is referenced by a traffic tag; remove it from the traffic first"
            ))));
        }
        if view.latest_created_revision == name {
            return Err(Box::new(failed_precondition(format!(
                "Revision '{id}' is the latest revision of service '{}' and cannot be deleted",
                last_segment(&service_name)
            ))));
        }
    }
    let Some(removed) = state.revisions.remove(name) else {
        return Err(Box::new(google_error(StatusCode::NOT_FOUND, format!("Revision '{name}' was not found"))));
    };
    state.counter += 1;
    let parent = name.split("/services/").next().unwrap_or(name);
    let operation = format!("{parent}/operations/op-{}", state.counter);
    let revision = revision_view(&removed);
    let answer = inner.operations.start(
        &operation,
        inner.delay(),
        any_of(&revision, REVISION_TYPE),
        any_of(&revision, REVISION_TYPE),
    );
    Ok(Json(answer).into_response())
}

/// The apps: `/s/SERVICE[/...]` is the service's URL, `/t/SERVICE/TAG[/...]` a tagged one.
async fn app(AxumState(inner): AxumState<Arc<Inner>>, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    inner.requests.record(APP_METHOD, &path, &HashMap::new(), Value::Null);
    if let Some(fault) = inner.faults.take(APP_METHOD) {
        return fault;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (id, tag) = match parts.as_slice() {
        ["s", id, ..] => (*id, None),
        ["t", id, tag, ..] => (*id, Some(*tag)),
        _ => return (StatusCode::NOT_FOUND, "no such app").into_response(),
    };
    let state = inner.state();
    let Some(service) = state.services.values().find(|s| last_segment(&s.name) == id) else {
        return (StatusCode::NOT_FOUND, format!("no service {id}")).into_response();
    };
    let view = service_view(&inner, &state, service);
    let target = match tag {
        Some(tag) => view.traffic_statuses.iter().find(|s| s.tag == tag),
        None => view.traffic_statuses.iter().filter(|s| s.percent > 0).max_by_key(|s| s.percent),
    };
    let Some(revision_id) = target.map(|t| t.revision.clone()).filter(|r| !r.is_empty()) else {
        return (StatusCode::NOT_FOUND, format!("nothing serves {path}")).into_response();
    };
    match state.revisions.get(&format!("{}/revisions/{revision_id}", service.name)).map(StoredRevision::phase) {
        Some(Phase::Ready) => (StatusCode::OK, format!("hello from {id}/{revision_id}")).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, format!("revision {revision_id} is not ready")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_routed() {
        let parent = "projects/p/locations/l".to_owned();
        assert_eq!(route("/v2/projects/p/locations/l/services"), Some(Route::Services { parent: parent.clone() }));
        assert_eq!(
            route("/v2/projects/p/locations/l/services/s:setIamPolicy"),
            Some(Route::Service { name: format!("{parent}/services/s"), verb: Some("setIamPolicy".into()) })
        );
        assert_eq!(
            route("/v2/projects/p/locations/l/services/s/revisions"),
            Some(Route::Revisions { service: format!("{parent}/services/s") })
        );
        assert_eq!(
            route("/v2/projects/p/locations/l/services/s/revisions/s-1"),
            Some(Route::Revision { name: format!("{parent}/services/s/revisions/s-1") })
        );
        assert_eq!(
            route("/v2/projects/p/locations/l/operations/op-1"),
            Some(Route::Operation { name: format!("{parent}/operations/op-1") })
        );
        for path in ["/v2/projects/p/locations//services", "/v1/projects/p/locations/l/services", "/v2/projects/p"] {
            assert_eq!(route(path), None, "{path}");
        }
    }

    #[tokio::test]
    async fn the_stand_in_keeps_cloud_runs_rules() {
        let standin = CloudRunStandIn::start().await.expect("starts");
        standin.set_operation_delay(Duration::ZERO);
        let client = reqwest::Client::new();
        let base = format!("{}/v2/projects/p/locations/l/services", standin.endpoint());
        let body = json!({"template": {"revision": "svc-one", "containers": [{"image": "img:1"}]}});
        let created = client.post(format!("{base}?serviceId=svc")).json(&body).send().await.expect("create");
        assert_eq!(created.status(), StatusCode::OK);
        let operation: Value = created.json().await.expect("an operation");
        assert!(operation["name"].as_str().is_some_and(|n| n.starts_with("projects/p/locations/l/operations/")));

        let read: Value = client.get(format!("{base}/svc")).send().await.expect("get").json().await.expect("json");
        assert_eq!(read["latestReadyRevision"], "projects/p/locations/l/services/svc/revisions/svc-one");
        assert_eq!(read["trafficStatuses"][0]["revision"], "svc-one", "latest resolves to the ready revision");
        let error_status = |v: &Value| v["error"]["status"].as_str().unwrap_or_default().to_owned();

        // Written since it was read: the read's etag is stale.
        assert!(standin.edit_service("projects/p/locations/l/services/svc", |s| s.description = "edited".into()));
        let stale = client.patch(format!("{base}/svc")).json(&read).send().await.expect("patch");
        assert_eq!(stale.status(), StatusCode::CONFLICT);
        assert_eq!(error_status(&stale.json().await.expect("json")), "ABORTED");

        // Traffic that does not add up, or names a revision that does not exist.
        let mut fresh: Value = client.get(format!("{base}/svc")).send().await.expect("get").json().await.expect("json");
        fresh["traffic"] = json!([{"type": 2, "revision": "svc-one", "percent": 50}]);
        let half = client.patch(format!("{base}/svc")).json(&fresh).send().await.expect("patch");
        assert_eq!(half.status(), StatusCode::BAD_REQUEST);
        fresh["traffic"] = json!([{"type": 2, "revision": "svc-nine", "percent": 100}]);
        let unknown = client.patch(format!("{base}/svc")).json(&fresh).send().await.expect("patch");
        assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

        // Another configuration under an existing revision's name.
        fresh["traffic"] = json!([]);
        fresh["template"]["containers"][0]["image"] = json!("img:2");
        let renamed = client.patch(format!("{base}/svc")).json(&fresh).send().await.expect("patch");
        assert_eq!(renamed.status(), StatusCode::CONFLICT);

        // The latest revision stays; a body that is not a Service is refused.
        let delete = client.delete(format!("{base}/svc/revisions/svc-one")).send().await.expect("delete");
        assert_eq!(delete.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error_status(&delete.json().await.expect("json")), "FAILED_PRECONDITION");
        let malformed = client.post(format!("{base}?serviceId=other")).json(&json!({"template": 5})).send();
        assert_eq!(malformed.await.expect("post").status(), StatusCode::BAD_REQUEST);
        assert_eq!(standin.service_names(), vec!["projects/p/locations/l/services/svc".to_owned()]);
    }
}
