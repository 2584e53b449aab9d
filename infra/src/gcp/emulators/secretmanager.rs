//! An in-process HTTP stand-in for Secret Manager's REST API (v1), for the Secret Manager
//! adapter's tests: no emulator of Secret Manager exists.
//!
//! This module owns:
//! - the routes the official client (`google-cloud-secretmanager-v1`) calls for the methods the
//!   adapter uses: `CreateSecret` (`POST /v1/projects/P/secrets?secretId=ID`), `AddSecretVersion`
//!   (`POST /v1/projects/P/secrets/ID:addVersion`), `ListSecretVersions`
//!   (`GET /v1/projects/P/secrets/ID/versions`, with `filter=state:STATE`, `pageSize`,
//!   `pageToken`) and `AccessSecretVersion` (`GET /v1/projects/P/secrets/ID/versions/N:access`,
//!   `N` a number or `latest`). Bodies are decoded with the crate's own model types, so a
//!   request the real API would not parse fails; anything else answers 501.
//! - secrets and their versions in memory, with their states (enabled, disabled, destroyed),
//!   answering as Secret Manager does: 409 `ALREADY_EXISTS` for a second `CreateSecret`, 404
//!   `NOT_FOUND` for an unknown secret or version, 400 `INVALID_ARGUMENT` for a payload whose
//!   `data_crc32c` does not match it (or over 64 KiB), 400 `FAILED_PRECONDITION` for reading a
//!   disabled or destroyed version; versions are listed newest first.
//! - scripting: [`Faults`] per method name (the next calls answer 429, 503, ...);
//!   [`SecretManagerStandIn::lose_next_add_responses`] applies an `AddSecretVersion` and then
//!   answers 504, as a response lost after the write would look;
//!   [`SecretManagerStandIn::corrupt_next_reads`] answers reads with a checksum that does not
//!   match;
//!   [`SecretManagerStandIn::cap_page_size`] makes listings page like a server that returns
//!   fewer than asked.
//! - changes made "outside DevGem", as `gcloud secrets create` / `gcloud secrets versions add` /
//!   `disable` would make them: [`SecretManagerStandIn::create_secret_outside`],
//!   [`SecretManagerStandIn::add_version_outside`], [`SecretManagerStandIn::set_state`].
//!
//! The [`RequestLog`] keeps every request as decoded, payload data included (base64, as on the
//! wire), because tests assert that the value arrived. It is never logged: the stand-in traces
//! no request, and tests should assert on fields rather than print whole records.

use super::standin::{Faults, HttpStandIn, RequestLog, google_error};
use crate::gcp::secretmanager::{MAX_PAYLOAD, crc32c};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use google_cloud_secretmanager_v1::model::{
    AccessSecretVersionResponse, AddSecretVersionRequest, ListSecretVersionsResponse, Secret, SecretPayload,
    SecretVersion, secret_version,
};
use http::{Method, StatusCode, Uri};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A version's state, as Secret Manager names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    fn model(self) -> secret_version::State {
        match self {
            Self::Enabled => secret_version::State::Enabled,
            Self::Disabled => secret_version::State::Disabled,
            Self::Destroyed => secret_version::State::Destroyed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Enabled => "ENABLED",
            Self::Disabled => "DISABLED",
            Self::Destroyed => "DESTROYED",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "ENABLED" => Some(Self::Enabled),
            "DISABLED" => Some(Self::Disabled),
            "DESTROYED" => Some(Self::Destroyed),
            _ => None,
        }
    }
}

/// Why an accessor of the stand-in could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandInError {
    #[error("Secret Manager stand-in: secret {0} does not exist")]
    NoSecret(String),
    #[error("Secret Manager stand-in: secret {0} already exists")]
    SecretExists(String),
    #[error("Secret Manager stand-in: {0} has no version {1}")]
    NoVersion(String, u32),
}

#[derive(Debug)]
struct StoredVersion {
    data: Bytes,
    state: VersionState,
    client_checksum: bool,
}

#[derive(Debug, Default)]
struct StoredSecret {
    labels: BTreeMap<String, String>,
    /// Version `n` is at index `n - 1`: numbers are never reused.
    versions: Vec<StoredVersion>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By full name, `projects/P/secrets/ID`.
    secrets: Mutex<BTreeMap<String, StoredSecret>>,
    faults: Faults,
    requests: RequestLog,
    lost_adds: AtomicU32,
    corrupt_reads: AtomicU32,
    page_cap: AtomicUsize,
}

impl Inner {
    fn secrets(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredSecret>> {
        self.secrets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stand-in: a server on a loopback port (stopped when dropped) and its state.
#[derive(Debug)]
pub struct SecretManagerStandIn {
    server: HttpStandIn,
    inner: Arc<Inner>,
}

impl SecretManagerStandIn {
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let router = Router::new().fallback(dispatch).with_state(Arc::clone(&inner));
        Ok(Self { server: HttpStandIn::serve(router).await?, inner })
    }

    /// `DEVGEM_SECRET_MANAGER_ENDPOINT` for a client of this stand-in.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Every request received, in order (payloads included: see the module docs).
    pub fn requests(&self) -> &RequestLog {
        &self.inner.requests
    }

    /// The next `times` `AddSecretVersion` requests are applied, then answered 504.
    pub fn lose_next_add_responses(&self, times: u32) {
        self.inner.lost_adds.fetch_add(times, Ordering::SeqCst);
    }

    /// The next `times` `AccessSecretVersion` answers carry a checksum that does not match their
    /// data, as a payload damaged on the way would.
    pub fn corrupt_next_reads(&self, times: u32) {
        self.inner.corrupt_reads.fetch_add(times, Ordering::SeqCst);
    }

    /// Listings return at most `versions` per page, whatever the page size asked (0: no cap).
    pub fn cap_page_size(&self, versions: usize) {
        self.inner.page_cap.store(versions, Ordering::SeqCst);
    }

    /// Creates secret `id` of `project`, as `gcloud secrets create` would.
    pub fn create_secret_outside(&self, project: &str, id: &str) -> Result<(), StandInError> {
        let name = format!("projects/{project}/secrets/{id}");
        let mut secrets = self.inner.secrets();
        if secrets.contains_key(&name) {
            return Err(StandInError::SecretExists(name));
        }
        secrets.insert(name, StoredSecret::default());
        Ok(())
    }

    /// Adds an enabled version holding `value` to an existing secret, as `gcloud secrets
    /// versions add` would, and returns its number.
    pub fn add_version_outside(&self, project: &str, id: &str, value: &[u8]) -> Result<u32, StandInError> {
        let name = format!("projects/{project}/secrets/{id}");
        let mut secrets = self.inner.secrets();
        let secret = secrets.get_mut(&name).ok_or(StandInError::NoSecret(name))?;
        secret.versions.push(StoredVersion {
            data: Bytes::copy_from_slice(value),
            state: VersionState::Enabled,
            client_checksum: false,
        });
        Ok(secret.versions.len() as u32)
    }

    /// Enables, disables or destroys a version (a destroyed version loses its data).
    pub fn set_state(&self, project: &str, id: &str, version: u32, state: VersionState) -> Result<(), StandInError> {
        let name = format!("projects/{project}/secrets/{id}");
        let mut secrets = self.inner.secrets();
        let secret = secrets.get_mut(&name).ok_or_else(|| StandInError::NoSecret(name.clone()))?;
        let stored = version
            .checked_sub(1)
            .and_then(|i| secret.versions.get_mut(i as usize))
            .ok_or(StandInError::NoVersion(name, version))?;
        if state == VersionState::Destroyed {
            stored.data = Bytes::new();
        }
        stored.state = state;
        Ok(())
    }

    /// The states of a secret's versions, version 1 first; `None` when it does not exist.
    pub fn versions(&self, project: &str, id: &str) -> Option<Vec<VersionState>> {
        let secrets = self.inner.secrets();
        let secret = secrets.get(&format!("projects/{project}/secrets/{id}"))?;
        Some(secret.versions.iter().map(|v| v.state).collect())
    }

    /// A secret's labels; `None` when it does not exist.
    pub fn labels(&self, project: &str, id: &str) -> Option<BTreeMap<String, String>> {
        self.inner.secrets().get(&format!("projects/{project}/secrets/{id}")).map(|s| s.labels.clone())
    }
}

/// What a request path names, after `/v1/`.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `projects/P/secrets`.
    Secrets { project: String },
    /// `projects/P/secrets/ID:addVersion`.
    AddVersion { secret: String },
    /// `projects/P/secrets/ID/versions`.
    Versions { secret: String },
    /// `projects/P/secrets/ID/versions/V:access`.
    Access { secret: String, version: String },
}

/// Segments are letters, digits, `-` and `_` (and `latest` for a version), so a path cannot
/// name something else by escaping.
fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let (project, rest) = rest.split_once('/')?;
    if !segment_ok(project) {
        return None;
    }
    let secret = |id: &str| segment_ok(id).then(|| format!("projects/{project}/secrets/{id}"));
    if rest == "secrets" {
        return Some(Route::Secrets { project: project.to_owned() });
    }
    let rest = rest.strip_prefix("secrets/")?;
    if let Some(id) = rest.strip_suffix(":addVersion") {
        return Some(Route::AddVersion { secret: secret(id)? });
    }
    let (id, rest) = rest.split_once('/')?;
    if rest == "versions" {
        return Some(Route::Versions { secret: secret(id)? });
    }
    let version = rest.strip_prefix("versions/")?.strip_suffix(":access")?;
    segment_ok(version).then_some(())?;
    Some(Route::Access { secret: secret(id)?, version: version.to_owned() })
}

/// The request body as `T`, or the message of the 400 the API answers for a body it cannot
/// parse.
fn decode<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    let text = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(text).map_err(|e| format!("Invalid JSON payload received. {e}"))
}

/// An error with a status name other than the one `google_error` gives its HTTP status
/// (Google answers `FAILED_PRECONDITION` with 400).
fn status_error(status: StatusCode, name: &str, message: String) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    (status, Json(body)).into_response()
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

async fn dispatch(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let Some(route) = route(&path) else {
        return google_error(StatusCode::NOT_IMPLEMENTED, format!("the stand-in does not serve {method} {path}"));
    };
    let record = |name: &str, body: Value| {
        inner.requests.record(name, &path, &query, body);
    };
    match (method, route) {
        (Method::POST, Route::Secrets { project }) => {
            let secret: Secret = match decode(&body) {
                Ok(secret) => secret,
                Err(message) => return google_error(StatusCode::BAD_REQUEST, message),
            };
            record("CreateSecret", to_json(&secret));
            if let Some(response) = inner.faults.take("CreateSecret") {
                return response;
            }
            create_secret(&inner, &project, query.get("secretId").map(String::as_str).unwrap_or(""), secret)
        }
        (Method::POST, Route::AddVersion { secret }) => {
            let request: AddSecretVersionRequest = match decode(&body) {
                Ok(request) => request,
                Err(message) => return google_error(StatusCode::BAD_REQUEST, message),
            };
            record("AddSecretVersion", to_json(&request));
            if let Some(response) = inner.faults.take("AddSecretVersion") {
                return response;
            }
            add_version(&inner, &secret, request.payload)
        }
        (Method::GET, Route::Versions { secret }) => {
            record("ListSecretVersions", Value::Null);
            if let Some(response) = inner.faults.take("ListSecretVersions") {
                return response;
            }
            list_versions(&inner, &secret, &query)
        }
        (Method::GET, Route::Access { secret, version }) => {
            record("AccessSecretVersion", Value::Null);
            if let Some(response) = inner.faults.take("AccessSecretVersion") {
                return response;
            }
            access(&inner, &secret, &version)
        }
        (method, _) => {
            google_error(StatusCode::NOT_IMPLEMENTED, format!("the stand-in does not serve {method} {path}"))
        }
    }
}

fn create_secret(inner: &Inner, project: &str, id: &str, secret: Secret) -> Response {
    if !segment_ok(id) || id.len() > 255 {
        return google_error(StatusCode::BAD_REQUEST, format!("invalid secret id {id:?}"));
    }
    if secret.replication.as_ref().and_then(|r| r.replication.as_ref()).is_none() {
        return google_error(StatusCode::BAD_REQUEST, "Secret.replication is required");
    }
    let name = format!("projects/{project}/secrets/{id}");
    let mut secrets = inner.secrets();
    if secrets.contains_key(&name) {
        return google_error(StatusCode::CONFLICT, format!("Secret [{name}] already exists."));
    }
    let labels: BTreeMap<String, String> = secret.labels.clone().into_iter().collect();
    secrets.insert(name.clone(), StoredSecret { labels, versions: Vec::new() });
    let mut answer = secret;
    answer.name = name;
    Json(to_json(&answer)).into_response()
}

fn version_json(secret: &str, number: usize, version: &StoredVersion) -> SecretVersion {
    SecretVersion::new()
        .set_name(format!("{secret}/versions/{number}"))
        .set_state(version.state.model())
        .set_client_specified_payload_checksum(version.client_checksum)
}

fn add_version(inner: &Inner, secret: &str, payload: Option<SecretPayload>) -> Response {
    let Some(payload) = payload else {
        return google_error(StatusCode::BAD_REQUEST, "SecretVersion.payload is required");
    };
    if payload.data.len() > MAX_PAYLOAD {
        return google_error(StatusCode::BAD_REQUEST, "Secret Payload cannot be larger than 64KiB.");
    }
    if let Some(sent) = payload.data_crc32c
        && sent != i64::from(crc32c(&payload.data))
    {
        return google_error(StatusCode::BAD_REQUEST, "Checksum mismatch: data_crc32c does not match the data.");
    }
    let mut secrets = inner.secrets();
    let Some(stored) = secrets.get_mut(secret) else {
        return google_error(StatusCode::NOT_FOUND, format!("Secret [{secret}] not found or has no versions."));
    };
    stored.versions.push(StoredVersion {
        data: payload.data,
        state: VersionState::Enabled,
        client_checksum: payload.data_crc32c.is_some(),
    });
    let number = stored.versions.len();
    let answer = stored.versions.last().map(|v| version_json(secret, number, v));
    drop(secrets);
    let lost = inner.lost_adds.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if lost {
        return google_error(StatusCode::GATEWAY_TIMEOUT, "Deadline expired before operation could complete.");
    }
    Json(to_json(&answer)).into_response()
}

fn list_versions(inner: &Inner, secret: &str, query: &HashMap<String, String>) -> Response {
    let filter = query.get("filter").map(|f| f.trim()).unwrap_or("");
    let wanted = if filter.is_empty() {
        None
    } else {
        match filter.strip_prefix("state:").and_then(VersionState::parse) {
            Some(state) => Some(state),
            None => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    format!("the stand-in filters on state:STATE only, not {filter:?}"),
                );
            }
        }
    };
    let page_size = match query.get("pageSize").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(size)) => size,
        Some(Err(_)) => return google_error(StatusCode::BAD_REQUEST, "pageSize is not a number"),
    };
    let mut page_size = if page_size == 0 { 25_000 } else { page_size.min(25_000) };
    let cap = inner.page_cap.load(Ordering::SeqCst);
    if cap > 0 {
        page_size = page_size.min(cap);
    }
    let start = match query.get("pageToken").map(String::as_str).filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => match token.strip_prefix("after-").and_then(|n| n.parse::<usize>().ok()) {
            Some(start) => start,
            None => return google_error(StatusCode::BAD_REQUEST, "invalid page token"),
        },
    };
    let secrets = inner.secrets();
    let Some(stored) = secrets.get(secret) else {
        return google_error(StatusCode::NOT_FOUND, format!("Secret [{secret}] not found."));
    };
    // Newest first, as Secret Manager lists them.
    let matching: Vec<SecretVersion> = stored
        .versions
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, v)| wanted.is_none_or(|w| v.state == w))
        .map(|(i, v)| version_json(secret, i + 1, v))
        .collect();
    let page: Vec<SecretVersion> = matching.iter().skip(start).take(page_size).cloned().collect();
    let next = start + page.len();
    let mut answer = ListSecretVersionsResponse::new().set_versions(page);
    if next < matching.len() {
        answer = answer.set_next_page_token(format!("after-{next}"));
    }
    Json(to_json(&answer)).into_response()
}

fn access(inner: &Inner, secret: &str, version: &str) -> Response {
    let secrets = inner.secrets();
    let Some(stored) = secrets.get(secret) else {
        return google_error(StatusCode::NOT_FOUND, format!("Secret [{secret}] not found or has no versions."));
    };
    // `latest` is the most recently created version, whatever its state.
    let number = if version == "latest" { stored.versions.len() } else { version.parse::<usize>().unwrap_or(0) };
    let name = format!("{secret}/versions/{version}");
    let Some(found) = number.checked_sub(1).and_then(|i| stored.versions.get(i)) else {
        return google_error(StatusCode::NOT_FOUND, format!("Secret Version [{name}] not found."));
    };
    if found.state != VersionState::Enabled {
        return status_error(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            format!("Secret Version [{secret}/versions/{number}] is in {} state.", found.state.name()),
        );
    }
    let mut checksum = crc32c(&found.data);
    if inner.corrupt_reads.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        checksum ^= 1;
    }
    let payload = SecretPayload::new().set_data(found.data.clone()).set_data_crc32c(checksum);
    let answer =
        AccessSecretVersionResponse::new().set_name(format!("{secret}/versions/{number}")).set_payload(payload);
    Json(to_json(&answer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Code;
    use google_cloud_secretmanager_v1::client::SecretManagerService;
    use google_cloud_secretmanager_v1::model::{Replication, replication};

    async fn client(standin: &SecretManagerStandIn) -> SecretManagerService {
        SecretManagerService::builder()
            .with_endpoint(standin.endpoint())
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .expect("client")
    }

    fn code(error: &google_cloud_secretmanager_v1::Error) -> Option<Code> {
        error.status().map(|s| s.code)
    }

    #[tokio::test]
    async fn the_stand_in_refuses_what_secret_manager_refuses() {
        let standin = SecretManagerStandIn::start().await.expect("stand-in");
        let client = client(&standin).await;
        let automatic = Replication::new().set_automatic(replication::Automatic::new());
        let create = || client.create_secret().set_parent("projects/p").set_secret_id("s");

        let error = create().set_secret(Secret::new()).send().await.expect_err("no replication");
        assert_eq!(code(&error), Some(Code::InvalidArgument), "{error}");
        create().set_secret(Secret::new().set_replication(automatic.clone())).send().await.expect("created");
        let error = create().set_secret(Secret::new().set_replication(automatic)).send().await.expect_err("twice");
        assert_eq!(code(&error), Some(Code::AlreadyExists), "{error}");

        let add = |crc: u32| {
            let payload = SecretPayload::new().set_data(Bytes::from_static(b"value")).set_data_crc32c(crc);
            client.add_secret_version().set_parent("projects/p/secrets/s").set_payload(payload).send()
        };
        let error = add(crc32c(b"value") ^ 1).await.expect_err("wrong checksum");
        assert_eq!(code(&error), Some(Code::InvalidArgument), "{error}");
        let version = add(crc32c(b"value")).await.expect("added");
        assert_eq!(version.name, "projects/p/secrets/s/versions/1");
        assert_eq!(version.state, secret_version::State::Enabled);
        assert_eq!(standin.versions("p", "s"), Some(vec![VersionState::Enabled]), "the refused one left nothing");

        let error =
            client.access_secret_version().set_name("projects/p/secrets/s/versions/2").send().await.expect_err("no v2");
        assert_eq!(code(&error), Some(Code::NotFound), "{error}");
        standin.set_state("p", "s", 1, VersionState::Disabled).expect("disable");
        let error = client
            .access_secret_version()
            .set_name("projects/p/secrets/s/versions/latest")
            .send()
            .await
            .expect_err("off");
        assert_eq!(code(&error), Some(Code::FailedPrecondition), "{error}");

        // A body the API would not parse, and a route it does not have here.
        let http = reqwest::Client::new();
        let url = format!("{}/v1/projects/p/secrets/s:addVersion", standin.endpoint());
        let answer = http.post(&url).body(r#"{"payload": {"data": 5}}"#).send().await.expect("sent");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let answer = http.get(format!("{}/v1/projects/p/secrets", standin.endpoint())).send().await.expect("sent");
        assert_eq!(answer.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(standin.versions("p", "s").map(|v| v.len()), Some(1));
    }

    #[test]
    fn paths_are_routed_and_odd_segments_refused() {
        assert_eq!(route("/v1/projects/p/secrets"), Some(Route::Secrets { project: "p".into() }));
        assert_eq!(
            route("/v1/projects/p/secrets/a-b_c:addVersion"),
            Some(Route::AddVersion { secret: "projects/p/secrets/a-b_c".into() })
        );
        assert_eq!(
            route("/v1/projects/p/secrets/s/versions"),
            Some(Route::Versions { secret: "projects/p/secrets/s".into() })
        );
        assert_eq!(
            route("/v1/projects/p/secrets/s/versions/latest:access"),
            Some(Route::Access { secret: "projects/p/secrets/s".into(), version: "latest".into() })
        );
        for path in [
            "/v1/projects/p/secrets/s/versions/3",
            "/v1/projects/p/secrets/a.b:addVersion",
            "/v1/projects/p/locations/l/secrets",
            "/v2/projects/p/secrets",
        ] {
            assert_eq!(route(path), None, "{path}");
        }
    }
}
