//! An in-process HTTP stand-in for the IAM Admin API (v1) and for the IAM-policy half of Secret
//! Manager, for the Cloud Run runtime adapter's tests (`gcp::cloudrun`): no emulator of either
//! exists.
//!
//! This module owns:
//! - the IAM Admin routes the official client (`google-cloud-iam-admin-v1`) calls for
//!   `CreateServiceAccount` (`POST /v1/projects/P/serviceAccounts`, body
//!   `CreateServiceAccountRequest`) and `GetServiceAccount`
//!   (`GET /v1/projects/P/serviceAccounts/EMAIL`). Accounts are kept in memory; a second create
//!   answers 409 `ALREADY_EXISTS`, as IAM does. [`IamStandIn::set_visibility_delay`] makes a new
//!   account answer 404 to `GetServiceAccount` for a while, as IAM's eventual consistency does.
//! - Secret Manager's `GetIamPolicy` (`GET /v1/projects/P/secrets/S:getIamPolicy`) and
//!   `SetIamPolicy` (`POST /v1/projects/P/secrets/S:setIamPolicy`). The Secret Manager stand-in
//!   (`emulators::secretmanager`) keeps secrets and their versions and does not serve these paths,
//!   so a test points `DEVGEM_SECRET_MANAGER_ENDPOINT` here when it checks grants on secrets.
//! - [`Policies`]: IAM policies per resource with etags, shared with the Cloud Run stand-in. A
//!   `SetIamPolicy` whose etag is not the current one answers 409 `ABORTED`, as IAM does when the
//!   policy changed since it was read. The body is decoded by [`SetIamPolicyBody`], a strict
//!   mirror of `google.iam.v1.SetIamPolicyRequest` (the crate with the official type is not a
//!   dependency of ours), so an unexpected field fails the request.
//! - [`Faults`] per method name and a [`RequestLog`] of every request as decoded.

use super::standin::{Faults, HttpStandIn, RequestLog, google_error};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use google_cloud_iam_admin_v1::model::{CreateServiceAccountRequest, ServiceAccount};
use http::{Method, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One binding of an IAM policy, as `google.iam.v1.Binding` is written in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingJson {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
}

/// An IAM policy, as `google.iam.v1.Policy` is written in JSON (`etag` is base64 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyJson {
    #[serde(default)]
    pub version: i32,
    #[serde(default)]
    pub bindings: Vec<BindingJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_configs: Vec<Value>,
    #[serde(default)]
    pub etag: String,
}

impl PolicyJson {
    /// The members bound to `role` (by any binding).
    pub fn members(&self, role: &str) -> Vec<String> {
        self.bindings.iter().filter(|b| b.role == role).flat_map(|b| b.members.iter().cloned()).collect()
    }
}

/// The body of a `SetIamPolicy` request (`google.iam.v1.SetIamPolicyRequest` without the
/// resource, which is in the path).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetIamPolicyBody {
    pub policy: PolicyJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_mask: Option<String>,
}

/// Why a policy was not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy of {resource} changed since it was read (etag {given:?}, now {current:?})")]
    StaleEtag { resource: String, given: String, current: String },
}

/// IAM policies per resource name, each with an etag that changes on every write.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    policies: Arc<Mutex<HashMap<String, (PolicyJson, u64)>>>,
}

fn etag_of(generation: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("etag-{generation}"))
}

impl Policies {
    /// The policy of `resource` with its current etag (an empty policy if none was set).
    pub fn get(&self, resource: &str) -> PolicyJson {
        let policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        let (policy, generation) = policies.get(resource).cloned().unwrap_or_default();
        PolicyJson { etag: etag_of(generation), ..policy }
    }

    /// Replaces the policy of `resource`. An etag, when given, must be the current one.
    pub fn set(&self, resource: &str, policy: PolicyJson) -> Result<PolicyJson, PolicyError> {
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = policies.entry(resource.to_owned()).or_default();
        let current = etag_of(entry.1);
        if !policy.etag.is_empty() && policy.etag != current {
            return Err(PolicyError::StaleEtag { resource: resource.to_owned(), given: policy.etag, current });
        }
        entry.1 += 1;
        entry.0 = PolicyJson { etag: String::new(), ..policy };
        Ok(PolicyJson { etag: etag_of(entry.1), ..entry.0.clone() })
    }

    /// Adds `member` to `role` on `resource`, as a change made outside DevGem would.
    pub fn grant_outside(&self, resource: &str, role: &str, member: &str) {
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = policies.entry(resource.to_owned()).or_default();
        entry.0.bindings.push(BindingJson { role: role.to_owned(), members: vec![member.to_owned()], condition: None });
        entry.1 += 1;
    }

    /// The answer to a `SetIamPolicy` request (the body already decoded).
    pub fn answer_set(&self, resource: &str, body: SetIamPolicyBody) -> Response {
        match self.set(resource, body.policy) {
            Ok(policy) => Json(policy).into_response(),
            Err(e) => aborted(&e.to_string()),
        }
    }
}

/// Google's answer to a write that lost a race: 409 with status `ABORTED`.
pub fn aborted(message: &str) -> Response {
    let body = json!({"error": {"code": 409, "message": message, "status": "ABORTED"}});
    (StatusCode::CONFLICT, Json(body)).into_response()
}

/// A request body decoded with `T`, or the 400 the real API would answer.
pub fn decode<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    // An empty body is an empty message on Google's REST APIs.
    let bytes: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(bytes)
        .map_err(|e| Box::new(google_error(StatusCode::BAD_REQUEST, format!("invalid JSON payload received: {e}"))))
}

/// A path with its `%XX` escapes decoded (the client escapes some characters of resource names).
pub fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug)]
struct Account {
    account: ServiceAccount,
    visible_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    faults: Faults,
    requests: RequestLog,
    policies: Policies,
    accounts: Mutex<BTreeMap<String, Account>>,
    visibility_delay: Mutex<Duration>,
}

/// The IAM Admin (and secret IAM policy) stand-in on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct IamStandIn {
    server: HttpStandIn,
    inner: Arc<Inner>,
}

impl IamStandIn {
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let router = Router::new().fallback(dispatch).with_state(Arc::clone(&inner));
        Ok(Self { server: HttpStandIn::serve(router).await?, inner })
    }

    /// `http://127.0.0.1:PORT`, for `DEVGEM_IAM_ENDPOINT` (and `DEVGEM_SECRET_MANAGER_ENDPOINT`
    /// when a test checks grants on secrets).
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn requests(&self) -> &RequestLog {
        &self.inner.requests
    }

    /// The secrets' IAM policies (`projects/P/secrets/S` → policy).
    pub fn policies(&self) -> &Policies {
        &self.inner.policies
    }

    /// New accounts answer 404 to `GetServiceAccount` for `delay` after their creation.
    pub fn set_visibility_delay(&self, delay: Duration) {
        *self.inner.visibility_delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// The service accounts' emails, in order.
    pub fn accounts(&self) -> Vec<String> {
        self.inner.accounts.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// One account as stored.
    pub fn account(&self, email: &str) -> Option<ServiceAccount> {
        self.inner.accounts.lock().unwrap_or_else(PoisonError::into_inner).get(email).map(|a| a.account.clone())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Accounts { project: String },
    Account { project: String, account: String },
    SecretPolicy { resource: String, verb: String },
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let nonempty = |s: &&str| !s.is_empty();
    match parts.as_slice() {
        [project, "serviceAccounts"] if nonempty(project) => Some(Route::Accounts { project: (*project).to_owned() }),
        [project, "serviceAccounts", account] if nonempty(project) && nonempty(account) => {
            Some(Route::Account { project: (*project).to_owned(), account: (*account).to_owned() })
        }
        [project, "secrets", last] if nonempty(project) => {
            let (secret, verb) = last.split_once(':')?;
            (!secret.is_empty()).then(|| Route::SecretPolicy {
                resource: format!("projects/{project}/secrets/{secret}"),
                verb: verb.to_owned(),
            })
        }
        _ => None,
    }
}

async fn dispatch(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = percent_decode(uri.path());
    let Some(route) = route(&path) else {
        return google_error(StatusCode::NOT_IMPLEMENTED, format!("the IAM stand-in does not serve {method} {path}"));
    };
    match (method, route) {
        (Method::POST, Route::Accounts { project }) => {
            let request: CreateServiceAccountRequest = match decode(&body) {
                Ok(r) => r,
                Err(e) => return *e,
            };
            inner.requests.record(
                "CreateServiceAccount",
                &path,
                &query,
                serde_json::to_value(&request).unwrap_or_default(),
            );
            if let Some(fault) = inner.faults.take("CreateServiceAccount") {
                return fault;
            }
            create_account(&inner, &project, request)
        }
        (Method::GET, Route::Account { project, account }) => {
            inner.requests.record("GetServiceAccount", &path, &query, Value::Null);
            if let Some(fault) = inner.faults.take("GetServiceAccount") {
                return fault;
            }
            let accounts = inner.accounts.lock().unwrap_or_else(PoisonError::into_inner);
            let found = accounts.values().find(|a| {
                (project == "-" || a.account.project_id == project)
                    && (a.account.email == account || a.account.unique_id == account)
            });
            match found {
                Some(a) if Instant::now() >= a.visible_at => Json(a.account.clone()).into_response(),
                _ => google_error(StatusCode::NOT_FOUND, format!("Unknown service account {account}")),
            }
        }
        (Method::GET, Route::SecretPolicy { resource, verb }) if verb == "getIamPolicy" => {
            inner.requests.record("GetIamPolicy", &path, &query, Value::Null);
            if let Some(fault) = inner.faults.take("GetIamPolicy") {
                return fault;
            }
            Json(inner.policies.get(&resource)).into_response()
        }
        (Method::POST, Route::SecretPolicy { resource, verb }) if verb == "setIamPolicy" => {
            let request: SetIamPolicyBody = match decode(&body) {
                Ok(r) => r,
                Err(e) => return *e,
            };
            inner.requests.record("SetIamPolicy", &path, &query, serde_json::to_value(&request).unwrap_or_default());
            if let Some(fault) = inner.faults.take("SetIamPolicy") {
                return fault;
            }
            inner.policies.answer_set(&resource, request)
        }
        (method, _) => {
            google_error(StatusCode::NOT_IMPLEMENTED, format!("the IAM stand-in does not serve {method} {path}"))
        }
    }
}

/// IAM's rule for account ids: 6 to 30 characters, lowercase letters, digits and '-', starting
/// with a letter and not ending with '-'.
fn valid_account_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (6..=30).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.last() != Some(&b'-')
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn create_account(inner: &Inner, project: &str, request: CreateServiceAccountRequest) -> Response {
    if !valid_account_id(&request.account_id) {
        return google_error(
            StatusCode::BAD_REQUEST,
            format!("accountId {:?} must be 6-30 characters of [a-z0-9-], starting with a letter", request.account_id),
        );
    }
    let email = format!("{}@{project}.iam.gserviceaccount.com", request.account_id);
    let mut accounts = inner.accounts.lock().unwrap_or_else(PoisonError::into_inner);
    if accounts.contains_key(&email) {
        return google_error(StatusCode::CONFLICT, format!("Service account {} already exists", request.account_id));
    }
    let given = request.service_account.unwrap_or_default();
    let mut account = ServiceAccount::default();
    account.name = format!("projects/{project}/serviceAccounts/{email}");
    account.project_id = project.to_owned();
    account.unique_id = format!("1{:020}", accounts.len() + 1);
    account.email = email.clone();
    account.display_name = given.display_name;
    account.description = given.description;
    let delay = *inner.visibility_delay.lock().unwrap_or_else(PoisonError::into_inner);
    accounts.insert(email, Account { account: account.clone(), visible_at: Instant::now() + delay });
    Json(account).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_routed() {
        assert_eq!(route("/v1/projects/p/serviceAccounts"), Some(Route::Accounts { project: "p".into() }));
        assert_eq!(
            route("/v1/projects/-/serviceAccounts/a@p.iam.gserviceaccount.com"),
            Some(Route::Account { project: "-".into(), account: "a@p.iam.gserviceaccount.com".into() })
        );
        assert_eq!(
            route("/v1/projects/p/secrets/s:getIamPolicy"),
            Some(Route::SecretPolicy { resource: "projects/p/secrets/s".into(), verb: "getIamPolicy".into() })
        );
        for path in ["/v1/projects//serviceAccounts", "/v1/projects/p/secrets/:getIamPolicy", "/v2/projects/p"] {
            assert_eq!(route(path), None, "{path}");
        }
        assert_eq!(percent_decode("/a%40b%2Fc%zz"), "/a@b/c%zz");
    }

    #[test]
    fn a_stale_etag_is_refused_and_a_fresh_one_accepted() {
        let policies = Policies::default();
        let first = policies.get("r");
        let binding = BindingJson { role: "roles/x".into(), members: vec!["user:a".into()], condition: None };
        let set = policies.set("r", PolicyJson { bindings: vec![binding.clone()], ..first.clone() }).expect("fresh");
        assert_ne!(set.etag, first.etag);
        let stale = policies.set("r", PolicyJson { bindings: vec![], ..first });
        assert!(matches!(stale, Err(PolicyError::StaleEtag { .. })), "{stale:?}");
        assert_eq!(policies.get("r").members("roles/x"), vec!["user:a".to_owned()]);
    }

    #[test]
    fn account_ids_follow_iams_rule() {
        assert!(valid_account_id("dg-u-0123456789ab"));
        for bad in ["short", "Upper-case-id", "1starts-with-digit", "ends-with-dash-", &"x".repeat(31)] {
            assert!(!valid_account_id(bad), "{bad}");
        }
    }
}
