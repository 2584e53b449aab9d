//! The Runtime port on Cloud Run (Admin API v2): each DevGem service of a user is one Cloud Run
//! service, each deployment one named revision, traffic moves only when asked.
//!
//! This module owns:
//! - [`CloudRunRuntime`]: the official clients (`google-cloud-run-v2` `Services` and `Revisions`,
//!   `google-cloud-iam-admin-v1` `Iam`), every call through [`Api`] (retries with backoff, one
//!   circuit breaker per API: "Cloud Run", "IAM"; the clients' own retry loops are off so the
//!   breakers see every attempt);
//! - the names ([`service_id`], [`user_account_id`]) and the revision template DevGem deploys;
//! - two seams: [`RevisionLogs`] (where `logs` reads from: Cloud Logging, wired by the caller) and
//!   [`SecretGrants`] (how a runtime account is let read one secret: [`SecretManagerGrants`]).
//!
//! **Names.** A user's service is `{DEVGEM_SERVICE_PREFIX}{service}-{8 hex of SHA-256(owner)}`:
//! lowercase letters, digits and '-', starting with a letter (the prefix must, or the service
//! name does). It is at most [`MAX_SERVICE_ID`] (38) characters, not Cloud Run's 49, so that a
//! revision's test URL (`https://TAG---SERVICE-...run.app`, tag and service together at most 46)
//! always fits; a longer name keeps its beginning and hashes owner and full name instead, so two
//! long names never share a service. The port's revision `{service}-{suffix}` is the Cloud Run
//! revision `{service id}-{suffix}` (Cloud Run requires the service's name as the prefix). The
//! service and its revisions carry the labels [`OWNER_LABEL`] (the monitor's `OWNER_LABEL`) and
//! [`SERVICE_LABEL`].
//!
//! **A revision** runs the image with CPU 1 and 512Mi (CPU only while serving), 0 to 10
//! instances, listening on the spec's port (8080 unless a repair routes elsewhere), a TCP startup
//! probe on that port for up to 4 minutes, the env as plain values or Secret Manager references
//! pinned to a version, as the runtime account (below).
//!
//! **Traffic.** `create_revision` never moves traffic of a service that serves: the update pins
//! the traffic as it is (a "latest" target becomes the revision it resolves to) and adds the new
//! revision at 0 % with a tag, whose URL is the [`RevisionInfo::url`] that `verify` checks. Only a
//! service that has never had a ready revision (just created, or whose every revision failed)
//! sends 100 % to the new revision at once: nothing served there before. `route_traffic` then
//! sends 100 % to the named revision and drops every tag (a candidate of the same service being
//! verified at that moment loses its test URL, and its verify fails). Each write is a read-modify-write with
//! the service's etag: a 409 (someone wrote in between, or created the service first) reads again
//! and retries. Every write's long-running operation is polled (`GetOperation`) until done, then
//! the revision's `Ready` condition decides: a failed revision is [`RuntimeError::StartFailed`]
//! with Cloud Run's reason (and its last log lines when a [`RevisionLogs`] is set, which the
//! deploy pipeline's repairs read). The service is public: `roles/run.invoker` for `allUsers`
//! is added to its IAM policy (read-modify-write with etag) when missing.
//!
//! **Identity.** [`AppIdentity::PerUser`] (when `DEVGEM_APP_SERVICE_ACCOUNT` is not set): each
//! user's services run as their own service account `dg-u-<12 hex>`, created through IAM (409:
//! it exists), with no project role; it is granted `roles/secretmanager.secretAccessor` on each
//! secret its env references and on nothing else, so one user's app cannot read another's
//! secrets. [`AppIdentity::Shared`] (when it is set, as terraform does): every service runs as
//! that account and no grant is made (terraform gives it access to the project's secrets). Why
//! terraform stays on the shared account is in `terraform/iam.tf`: acting as accounts created at
//! run time needs `iam.serviceAccounts.actAs` on the whole project.
//!
//! **Idempotent by name.** Creating a revision that exists writes nothing: it is waited for until
//! its `Ready` condition is decided and returned (refused if it runs another image), so a
//! redelivered release resumes the same revision.
//!
//! **Operations** are polled with `GetOperation` through [`Api`], with backoff: the client's
//! `Poller` lives in `google-cloud-lro`, which is not a dependency of ours, and polling through
//! [`Api`] puts every poll behind the breaker too.
//!
//! **Errors.** 429 ("slow down") and 500/503/504, timeouts and connection errors ("down") are
//! retried with backoff by [`Api`], where both count towards opening the API's breaker. 409 is
//! never retried as it is: the operation decides (create → the service exists, update it; update
//! or IAM write → read again; account creation → it exists). An open breaker fails at once with
//! a message naming the API.
//!
//! Deleting: a revision that takes traffic is refused; one that is only tagged loses its tag
//! first; Cloud Run itself refuses to delete a service's latest revision, which is reported as
//! [`RuntimeError::Refused`].

use super::GcpConfig;
use super::call::{Api, CallError};
use super::client::{GoogleApiError, configure, setup_error};
use crate::resilience::{BreakerPolicy, Classify, Failure, RetryPolicy};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use devgem_common::events::log_entry::LogEntry;
use devgem_common::ids::{EnvVarName, ServiceName, UserId};
use devgem_common::ports::runtime::{EnvValue, RevisionInfo, RevisionSpec, Runtime, RuntimeError};
use devgem_common::ports::secrets::SecretRef;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptionsBuilder as _;
use google_cloud_iam_admin_v1::client::Iam;
use google_cloud_iam_admin_v1::model::ServiceAccount;
use google_cloud_longrunning::model::Operation;
use google_cloud_longrunning::model::operation::Result as OperationResult;
use google_cloud_run_v2::client::{Revisions, Services};
use google_cloud_run_v2::model::{
    Container, ContainerPort, EnvVar, EnvVarSource, Probe, ResourceRequirements, Revision, RevisionScaling,
    RevisionTemplate, SecretKeySelector, Service, TCPSocketAction, TrafficTarget, TrafficTargetAllocationType,
    condition, env_var, probe,
};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The label naming the user a service belongs to: the same value as the monitor's
/// `OWNER_LABEL` (`functions/monitor`), which infra cannot depend on.
pub const OWNER_LABEL: &str = "devgem.dev/owner";
/// The label naming the DevGem service (the port's name, without prefix or hash).
pub const SERVICE_LABEL: &str = "devgem.dev/service";
/// The longest Cloud Run service name DevGem makes (see the module docs).
pub const MAX_SERVICE_ID: usize = 38;
/// Cloud Run's limit on a revision's name.
const MAX_REVISION_ID: usize = 63;
/// The longest `DEVGEM_SERVICE_PREFIX`, so that some of the service name always fits.
pub const MAX_PREFIX: usize = 20;
/// Per-user runtime accounts are `dg-u-` and 12 hex digits of SHA-256(owner).
pub const USER_ACCOUNT_PREFIX: &str = "dg-u-";
const CPU: &str = "1";
const MEMORY: &str = "512Mi";
const MIN_INSTANCES: i32 = 0;
const MAX_INSTANCES: i32 = 10;
/// The startup probe: a TCP connect every 10 s, 24 failures allowed: up to 4 minutes to listen,
/// like Cloud Run's own default probe.
const PROBE_PERIOD_SECONDS: i32 = 10;
const PROBE_TIMEOUT_SECONDS: i32 = 5;
const PROBE_FAILURES: i32 = 24;
const INVOKER_ROLE: &str = "roles/run.invoker";
const PUBLIC: &str = "allUsers";
const ACCESSOR_ROLE: &str = "roles/secretmanager.secretAccessor";
/// Log lines quoted in a start failure.
const LOG_TAIL: usize = 20;
const RUN_API: &str = "Cloud Run";
const IAM_API: &str = "IAM";
const SECRETS_API: &str = "Secret Manager";

/// How the adapter waits and retries. [`CloudRunOptions::default`] is for production; tests use
/// short delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRunOptions {
    /// The first wait between polls of an operation or a revision; doubles up to `poll_max`.
    pub poll: Duration,
    pub poll_max: Duration,
    /// An operation (a revision starting) that is not done by then is reported unavailable.
    pub operation_timeout: Duration,
    /// `verify` gives up after this long.
    pub verify_timeout: Duration,
    /// 403 and 404 are retried this long (IAM and routes propagate), then taken as the app's.
    pub verify_propagation: Duration,
    pub verify_interval: Duration,
    /// How long a new service account may take to become visible to IAM.
    pub account_propagation: Duration,
    /// Read-modify-write attempts when someone else keeps writing the same resource.
    pub conflict_attempts: u32,
    /// One attempt of any call gives up after this long.
    pub attempt_timeout: Duration,
    pub breaker: BreakerPolicy,
    pub retry: RetryPolicy,
}

impl Default for CloudRunOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            poll_max: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(600),
            verify_timeout: Duration::from_secs(180),
            verify_propagation: Duration::from_secs(90),
            verify_interval: Duration::from_secs(2),
            account_propagation: Duration::from_secs(60),
            conflict_attempts: 5,
            attempt_timeout: Duration::from_secs(60),
            // The same patience as every other GCP API behind `call::Api::new`.
            breaker: BreakerPolicy { failures: 5, cool_down: Duration::from_secs(30) },
            retry: RetryPolicy {
                attempts: 5,
                first_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(4),
            },
        }
    }
}

/// The identity users' services run as. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppIdentity {
    /// One service account per user, created on first deploy, reading only its own secrets.
    PerUser,
    /// Every service runs as this account (its email).
    Shared(String),
}

impl AppIdentity {
    /// `Shared` when `DEVGEM_APP_SERVICE_ACCOUNT` is set, `PerUser` otherwise.
    pub fn from_config(config: &GcpConfig) -> Self {
        match &config.app_service_account {
            Some(email) => Self::Shared(email.clone()),
            None => Self::PerUser,
        }
    }
}

/// Where [`Runtime::logs`] reads a service's log entries (Cloud Logging in production).
#[async_trait]
pub trait RevisionLogs: Send + Sync + fmt::Debug {
    /// Recent entries of the Cloud Run service `service` (its Cloud Run name), of one revision
    /// (its Cloud Run name) when given, newest last, at most `limit`.
    async fn entries(&self, service: &str, revision: Option<&str>, limit: usize)
    -> Result<Vec<LogEntry>, RuntimeError>;
}

/// Cloud Logging is where Cloud Run's revisions log.
#[async_trait]
impl RevisionLogs for super::logging::CloudLogging {
    async fn entries(
        &self,
        service: &str,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, RuntimeError> {
        self.service_entries(service, revision, limit).await.map_err(|e| match e {
            super::logging::LoggingError::Refused(m) => RuntimeError::Refused(format!("Cloud Logging: {m}")),
            super::logging::LoggingError::Unavailable(m) => RuntimeError::Unavailable(format!("Cloud Logging: {m}")),
        })
    }
}

/// How a runtime account is let read one secret.
#[async_trait]
pub trait SecretGrants: Send + Sync + fmt::Debug {
    /// Lets `member` (`serviceAccount:EMAIL`) access the versions of `secret`
    /// (`projects/P/secrets/S`). Idempotent.
    async fn grant_accessor(&self, secret: &str, member: &str) -> Result<(), RuntimeError>;
}

/// Runs `attempt` through `api` (its retries and breaker), with the error classified.
async fn call_api<T, F, Fut>(api: &Api, mut attempt: F) -> Result<T, CallError<GoogleApiError>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
{
    api.call(|| {
        let attempt = attempt();
        async move { attempt.await.map_err(GoogleApiError) }
    })
    .await
}

/// The port's error for a failed call of `method` on `resource`.
fn call_error(api: &str, method: &str, resource: &str, error: CallError<GoogleApiError>) -> RuntimeError {
    match error {
        CallError::Open { .. } => RuntimeError::Unavailable(error.message()),
        CallError::Failed(e) if e.is_not_found() => RuntimeError::NotFound(resource.to_owned()),
        CallError::Failed(e) => {
            let text = format!("{api} {method} {resource}: {e}");
            match e.failure() {
                Failure::Refused => RuntimeError::Refused(text),
                Failure::SlowDown | Failure::Down => RuntimeError::Unavailable(text),
            }
        }
    }
}

fn hex_digest(input: &str, chars: usize) -> String {
    let digest = sha2::Sha256::digest(input.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..chars.min(hex.len())].to_owned()
}

/// The Cloud Run service name of `owner`'s `service` (see the module docs).
pub fn service_id(prefix: &str, owner: &UserId, service: &ServiceName) -> String {
    let name = format!("{prefix}{service}-{}", hex_digest(owner.as_str(), 8));
    if name.len() <= MAX_SERVICE_ID {
        return name;
    }
    // Too long: keep the beginning of the service name, and hash the owner with the whole name
    // so that two long names that begin alike stay two services.
    let room = MAX_SERVICE_ID.saturating_sub(prefix.len() + 9).max(1);
    let head = service.as_str().get(..room).unwrap_or(service.as_str()).trim_end_matches('-');
    format!("{prefix}{head}-{}", hex_digest(&format!("{owner}/{service}"), 8))
}

/// The account id of `owner`'s runtime service account (6-30 characters, as IAM requires).
pub fn user_account_id(owner: &UserId) -> String {
    format!("{USER_ACCOUNT_PREFIX}{}", hex_digest(owner.as_str(), 12))
}

/// A service account's email in `project` (a domain-scoped `example.com:proj` puts the domain
/// last, as IAM does).
fn account_email(project: &str, id: &str) -> String {
    let project = match project.split_once(':') {
        Some((domain, name)) => format!("{name}.{domain}"),
        None => project.to_owned(),
    };
    format!("{id}@{project}.iam.gserviceaccount.com")
}

/// The tag of a revision's test URL: short, and the same for the same revision.
fn revision_tag(revision_id: &str) -> String {
    format!("r{}", hex_digest(revision_id, 7))
}

/// The Secret Manager resource a [`SecretRef`] names: `projects/P/secrets/NAME`, the name being
/// the secret id (the Secret Manager adapter uses DevGem's names as ids), or the full resource
/// name as it is.
pub fn secret_resource(project: &str, name: &str) -> Result<String, RuntimeError> {
    if let Some(rest) = name.strip_prefix("projects/") {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == 3 && parts[1] == "secrets" && !parts[0].is_empty() && !parts[2].is_empty() {
            return Ok(name.to_owned());
        }
    } else if !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Ok(format!("projects/{project}/secrets/{name}"));
    }
    Err(RuntimeError::Refused(format!("{name:?} is not a Secret Manager secret id or projects/P/secrets/S")))
}

/// The [`SecretRef`] of an env var's Secret Manager reference, as read back from Cloud Run:
/// `projects/P/secrets/NAME` of this project (by id or number) or a bare `NAME` is `NAME`; another
/// project's secret keeps its full name. A version that is not a number (`latest`) has no
/// [`SecretRef`].
fn secret_ref_from(project: &str, selector: &SecretKeySelector) -> Option<SecretRef> {
    let version = selector.version.parse::<u32>().ok()?;
    let name = match selector.secret.strip_prefix("projects/").and_then(|rest| rest.split_once("/secrets/")) {
        Some((owner, id)) if owner == project || owner.bytes().all(|b| b.is_ascii_digit()) => id.to_owned(),
        Some(_) => selector.secret.clone(),
        None => selector.secret.clone(),
    };
    (!name.is_empty()).then_some(SecretRef { name, version })
}

/// A label value as Cloud Run accepts it (at most 63 lowercase letters, digits, '-', '_'), or
/// `None` when `value` is not one (labels are never rewritten: the monitor reads them back).
fn label_value(value: &str) -> Option<String> {
    let ok = value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    ok.then(|| value.to_owned())
}

fn to_utc(seconds: i64, nanos: i32) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0))
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A copy of `policy` with `member` bound to `role`, or `None` when it already is. The policy is
/// edited as JSON (the IAM types' crate is not a dependency of ours), keeping its etag, so the
/// write fails if someone changed the policy since it was read.
fn with_member<P: Serialize + DeserializeOwned>(
    policy: &P,
    role: &str,
    member: &str,
) -> Result<Option<P>, serde_json::Error> {
    let mut value = serde_json::to_value(policy)?;
    if !value.is_object() {
        value = json!({});
    }
    let unconditional = |b: &Value| b["role"] == role && b.get("condition").is_none_or(Value::is_null);
    let bindings = value.as_object_mut().map(|o| o.entry("bindings").or_insert_with(|| json!([])));
    let Some(list) = bindings.and_then(Value::as_array_mut) else {
        return serde_json::from_value(json!({"bindings": [{"role": role, "members": [member]}]})).map(Some);
    };
    let present =
        list.iter().any(|b| unconditional(b) && b["members"].as_array().is_some_and(|m| m.iter().any(|x| x == member)));
    if present {
        return Ok(None);
    }
    match list.iter_mut().find(|b| unconditional(b)) {
        Some(binding) => match binding.get_mut("members").and_then(Value::as_array_mut) {
            Some(members) => members.push(Value::String(member.to_owned())),
            None => binding["members"] = json!([member]),
        },
        None => list.push(json!({"role": role, "members": [member]})),
    }
    serde_json::from_value(value).map(Some)
}

/// Adds `member` as `role` to a resource's IAM policy: read, edit, write with the etag read; a
/// conflict (the policy changed in between) reads again.
#[allow(clippy::too_many_arguments)]
async fn ensure_binding<P, G, GF, S, SF>(
    api: &Api,
    attempts: u32,
    resource: &str,
    role: &str,
    member: &str,
    mut get: G,
    mut set: S,
) -> Result<(), RuntimeError>
where
    P: Serialize + DeserializeOwned + Clone,
    G: FnMut() -> GF,
    GF: Future<Output = Result<P, google_cloud_gax::error::Error>>,
    S: FnMut(P) -> SF,
    SF: Future<Output = Result<P, google_cloud_gax::error::Error>>,
{
    let name = api.name();
    for _ in 0..attempts.max(1) {
        let policy = call_api(api, &mut get).await.map_err(|e| call_error(name, "GetIamPolicy", resource, e))?;
        let updated = with_member(&policy, role, member).map_err(|e| {
            RuntimeError::Unavailable(format!("{name} answered an IAM policy of {resource} that cannot be edited: {e}"))
        })?;
        let Some(updated) = updated else { return Ok(()) };
        match call_api(api, || set(updated.clone())).await {
            Ok(_) => return Ok(()),
            // Someone changed the policy since it was read: read it again.
            Err(CallError::Failed(e)) if e.is_conflict() => continue,
            Err(e) => return Err(call_error(name, "SetIamPolicy", resource, e)),
        }
    }
    Err(RuntimeError::Unavailable(format!(
        "{name}: the IAM policy of {resource} kept changing while {member} was added as {role}; try again"
    )))
}

/// Grants on secrets through Secret Manager's `GetIamPolicy`/`SetIamPolicy`. The client is set
/// up on the first grant: with one shared account for users' services there is none.
#[derive(Debug)]
pub struct SecretManagerGrants {
    client: tokio::sync::OnceCell<SecretManagerService>,
    endpoint: Option<String>,
    api: Api,
    options: CloudRunOptions,
}

impl SecretManagerGrants {
    /// On `config.endpoints.secret_manager` (anonymous) or Google's endpoint (ADC).
    pub fn new(config: &GcpConfig, options: &CloudRunOptions) -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
            endpoint: config.endpoints.secret_manager.clone(),
            api: Api::with_policies(SECRETS_API, options.breaker, options.retry),
            options: options.clone(),
        }
    }

    async fn client(&self) -> Result<&SecretManagerService, RuntimeError> {
        let endpoint = self.endpoint.as_deref();
        self.client
            .get_or_try_init(|| async {
                configure(SecretManagerService::builder(), endpoint)
                    .build()
                    .await
                    .map_err(|e| client_error(SECRETS_API, "DEVGEM_SECRET_MANAGER_ENDPOINT", endpoint, &e))
            })
            .await
    }
}

#[async_trait]
impl SecretGrants for SecretManagerGrants {
    async fn grant_accessor(&self, secret: &str, member: &str) -> Result<(), RuntimeError> {
        let timeout = self.options.attempt_timeout;
        let client = self.client().await?;
        ensure_binding(
            &self.api,
            self.options.conflict_attempts,
            secret,
            ACCESSOR_ROLE,
            member,
            || client.get_iam_policy().set_resource(secret).with_attempt_timeout(timeout).send(),
            |policy| {
                client.set_iam_policy().set_resource(secret).set_policy(policy).with_attempt_timeout(timeout).send()
            },
        )
        .await
    }
}

fn client_error(api: &str, endpoint_var: &str, endpoint: Option<&str>, error: &dyn fmt::Display) -> RuntimeError {
    RuntimeError::Unavailable(setup_error(api, endpoint_var, endpoint, error))
}

/// A revision as [`CloudRunRuntime::revisions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionSummary {
    /// The port's name (`{service}-{suffix}`).
    pub name: String,
    /// Cloud Run's name (`{service id}-{suffix}`).
    pub cloud_run_name: String,
    pub image: String,
    pub created_at: Option<DateTime<Utc>>,
    pub state: RevisionState,
    /// The share of the service's traffic it takes.
    pub traffic_percent: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionState {
    Pending,
    Ready,
    Failed(String),
}

/// A revision's `Ready` condition.
fn revision_state(revision: &Revision) -> RevisionState {
    let ready = revision.conditions.iter().find(|c| c.r#type == "Ready");
    match ready.map(|c| (&c.state, c)) {
        Some((condition::State::ConditionSucceeded, _)) => RevisionState::Ready,
        Some((condition::State::ConditionFailed, c)) => {
            RevisionState::Failed(if c.message.is_empty() { format!("{:?}", c.reasons) } else { c.message.clone() })
        }
        _ => RevisionState::Pending,
    }
}

/// How a read-modify-write changes a service.
#[derive(Debug)]
enum Edit {
    Create(Box<Service>),
    Update(Box<Service>),
    Nothing,
}

/// How an operation ended.
#[derive(Debug)]
enum Outcome {
    Done,
    Failed { code: Code, message: String },
}

/// The names of one user's service.
#[derive(Debug, Clone)]
struct Names {
    service: ServiceName,
    /// Cloud Run's name of the service.
    id: String,
    /// `projects/P/locations/R/services/ID`.
    full: String,
}

impl Names {
    /// Cloud Run's name of the port's revision `{service}-{suffix}`.
    fn revision_id(&self, revision: &str) -> Result<String, RuntimeError> {
        let suffix = revision
            .strip_prefix(&format!("{}-", self.service))
            .filter(|s| {
                !s.is_empty()
                    && !s.ends_with('-')
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .ok_or_else(|| {
                RuntimeError::Refused(format!(
                    "revision name {revision} must be {}-<lowercase letters, digits, '-'>",
                    self.service
                ))
            })?;
        let id = format!("{}-{suffix}", self.id);
        if id.len() > MAX_REVISION_ID {
            return Err(RuntimeError::Refused(format!(
                "revision name {revision} is too long for Cloud Run ({id} has {} characters, {MAX_REVISION_ID} at most)",
                id.len()
            )));
        }
        Ok(id)
    }

    fn revision_full(&self, revision_id: &str) -> String {
        format!("{}/revisions/{revision_id}", self.full)
    }

    /// The port's name of a Cloud Run revision of this service.
    fn port_revision(&self, revision_id: &str) -> String {
        match revision_id.strip_prefix(&format!("{}-", self.id)) {
            Some(suffix) => format!("{}-{suffix}", self.service),
            None => revision_id.to_owned(),
        }
    }
}

fn target(revision_id: &str, percent: i32, tag: &str) -> TrafficTarget {
    let mut target = TrafficTarget::default();
    target.r#type = TrafficTargetAllocationType::Revision;
    target.revision = revision_id.to_owned();
    target.percent = percent;
    target.tag = tag.to_owned();
    target
}

fn is_latest(target: &TrafficTarget) -> bool {
    target.r#type == TrafficTargetAllocationType::Latest
        || (target.r#type == TrafficTargetAllocationType::Unspecified && target.revision.is_empty())
}

/// The service's traffic with "latest" targets pinned to the revision they resolve to, so that
/// a new template does not take them over; empty when the service has never had a ready revision.
fn pinned_traffic(service: &Service) -> Vec<TrafficTarget> {
    let latest_ready = last_segment(&service.latest_ready_revision);
    if latest_ready.is_empty() {
        return Vec::new();
    }
    let pinned: Vec<TrafficTarget> = service
        .traffic
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if is_latest(&t) {
                t.r#type = TrafficTargetAllocationType::Revision;
                t.revision = latest_ready.to_owned();
            }
            t
        })
        .collect();
    if pinned.iter().map(|t| t.percent).sum::<i32>() == 100 { pinned } else { Vec::new() }
}

/// The share of the service's traffic that `revision_id` takes.
fn traffic_percent(service: &Service, revision_id: &str) -> i32 {
    if !service.traffic_statuses.is_empty() {
        return service.traffic_statuses.iter().filter(|s| s.revision == revision_id).map(|s| s.percent).sum();
    }
    let latest_ready = last_segment(&service.latest_ready_revision);
    service
        .traffic
        .iter()
        .filter(|t| if is_latest(t) { latest_ready == revision_id } else { t.revision == revision_id })
        .map(|t| t.percent)
        .sum()
}

/// The Runtime port on Cloud Run. See the module docs.
#[derive(Debug)]
pub struct CloudRunRuntime {
    project: String,
    region: String,
    prefix: String,
    identity: AppIdentity,
    options: CloudRunOptions,
    services: Services,
    revisions: Revisions,
    /// Set up on first use: only per-user accounts need IAM.
    iam: tokio::sync::OnceCell<Iam>,
    iam_endpoint: Option<String>,
    grants: Arc<dyn SecretGrants>,
    logs: Option<Arc<dyn RevisionLogs>>,
    run_api: Api,
    iam_api: Api,
    /// Runtime accounts known to exist, so IAM is asked once per process and user.
    known_accounts: Mutex<HashSet<String>>,
    /// `verify`'s client, set up on the first verify.
    http: tokio::sync::OnceCell<reqwest::Client>,
}

impl CloudRunRuntime {
    /// Connects with the production options; the identity from `DEVGEM_APP_SERVICE_ACCOUNT`.
    pub async fn connect(config: &GcpConfig) -> Result<Self, RuntimeError> {
        Self::connect_with(config, CloudRunOptions::default()).await
    }

    /// Builds the clients (no request is sent yet): Cloud Run on `config.endpoints.cloud_run`,
    /// IAM on `config.endpoints.iam`, grants on secrets on `config.endpoints.secret_manager`, each
    /// with anonymous credentials when set, else Google's endpoints with Application Default
    /// Credentials.
    pub async fn connect_with(config: &GcpConfig, options: CloudRunOptions) -> Result<Self, RuntimeError> {
        let prefix = config.service_prefix.clone();
        let prefix_ok = prefix.len() <= MAX_PREFIX
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && prefix.bytes().next().is_none_or(|b| b.is_ascii_lowercase());
        if !prefix_ok {
            return Err(RuntimeError::Refused(format!(
                "DEVGEM_SERVICE_PREFIX={prefix:?}: at most {MAX_PREFIX} lowercase letters, digits and '-', starting with a letter"
            )));
        }
        if config.project.is_empty() || config.region.is_empty() {
            return Err(RuntimeError::Refused(
                "the Cloud Run runtime needs GOOGLE_CLOUD_PROJECT and DEVGEM_REGION".into(),
            ));
        }
        let run = config.endpoints.cloud_run.as_deref();
        let run_error =
            |e: google_cloud_gax::client_builder::Error| client_error(RUN_API, "DEVGEM_CLOUD_RUN_ENDPOINT", run, &e);
        let services = configure(Services::builder(), run).build().await.map_err(run_error)?;
        let revisions = configure(Revisions::builder(), run).build().await.map_err(run_error)?;
        let grants = Arc::new(SecretManagerGrants::new(config, &options));
        Ok(Self {
            project: config.project.clone(),
            region: config.region.clone(),
            prefix,
            identity: AppIdentity::from_config(config),
            run_api: Api::with_policies(RUN_API, options.breaker, options.retry),
            iam_api: Api::with_policies(IAM_API, options.breaker, options.retry),
            options,
            services,
            revisions,
            iam: tokio::sync::OnceCell::new(),
            iam_endpoint: config.endpoints.iam.clone(),
            grants,
            logs: None,
            known_accounts: Mutex::new(HashSet::new()),
            http: tokio::sync::OnceCell::new(),
        })
    }

    /// Reads `logs` (and the log lines quoted in start failures) from `logs`.
    pub fn with_logs(mut self, logs: Arc<dyn RevisionLogs>) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Grants runtime accounts access to secrets through `grants` instead of Secret Manager.
    pub fn with_secret_grants(mut self, grants: Arc<dyn SecretGrants>) -> Self {
        self.grants = grants;
        self
    }

    /// Runs users' services as `identity` instead of what the configuration says.
    pub fn with_identity(mut self, identity: AppIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// The Cloud Run name of `owner`'s `service`.
    pub fn service_id(&self, owner: &UserId, service: &ServiceName) -> String {
        service_id(&self.prefix, owner, service)
    }

    /// The full resource name of `owner`'s `service`.
    pub fn service_name(&self, owner: &UserId, service: &ServiceName) -> String {
        self.names(owner, service).full
    }

    fn names(&self, owner: &UserId, service: &ServiceName) -> Names {
        let id = service_id(&self.prefix, owner, service);
        let full = format!("{}/services/{id}", self.parent());
        Names { service: service.clone(), id, full }
    }

    fn parent(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.region)
    }

    async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, CallError<GoogleApiError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
    {
        call_api(&self.run_api, attempt).await
    }

    async fn get_service(&self, full: &str) -> Result<Option<Service>, RuntimeError> {
        let timeout = self.options.attempt_timeout;
        match self.run(|| self.services.get_service().set_name(full).with_attempt_timeout(timeout).send()).await {
            Ok(service) => Ok(Some(service)),
            Err(CallError::Failed(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(call_error(RUN_API, "GetService", full, e)),
        }
    }

    async fn get_revision(&self, full: &str) -> Result<Option<Revision>, RuntimeError> {
        let timeout = self.options.attempt_timeout;
        match self.run(|| self.revisions.get_revision().set_name(full).with_attempt_timeout(timeout).send()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(CallError::Failed(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(call_error(RUN_API, "GetRevision", full, e)),
        }
    }

    /// Reads the service, lets `change` decide what to write, and writes it; a conflict (someone
    /// wrote since the read, or created the service first) reads again. The write's operation,
    /// or `None` when `change` wanted nothing written.
    async fn write_service(
        &self,
        names: &Names,
        mut change: impl FnMut(Option<Service>) -> Result<Edit, RuntimeError>,
    ) -> Result<Option<Operation>, RuntimeError> {
        let timeout = self.options.attempt_timeout;
        for _ in 0..self.options.conflict_attempts.max(1) {
            let current = self.get_service(&names.full).await?;
            match change(current)? {
                Edit::Nothing => return Ok(None),
                Edit::Create(service) => {
                    let created = self
                        .run(|| {
                            self.services
                                .create_service()
                                .set_parent(self.parent())
                                .set_service_id(&names.id)
                                .set_service(service.as_ref().clone())
                                .with_attempt_timeout(timeout)
                                .send()
                        })
                        .await;
                    match created {
                        Ok(operation) => return Ok(Some(operation)),
                        // Created by someone else in between: update it instead.
                        Err(CallError::Failed(e)) if e.is_conflict() => continue,
                        Err(e) => return Err(call_error(RUN_API, "CreateService", &names.full, e)),
                    }
                }
                Edit::Update(service) => {
                    let updated = self
                        .run(|| {
                            self.services
                                .update_service()
                                .set_service(service.as_ref().clone())
                                .with_attempt_timeout(timeout)
                                .send()
                        })
                        .await;
                    match updated {
                        Ok(operation) => return Ok(Some(operation)),
                        // Written (or deleted) by someone else since the read: read again.
                        Err(CallError::Failed(e)) if e.is_conflict() || e.is_not_found() => continue,
                        Err(e) => return Err(call_error(RUN_API, "UpdateService", &names.full, e)),
                    }
                }
            }
        }
        Err(RuntimeError::Unavailable(format!(
            "Cloud Run UpdateService {}: the service kept changing ({} attempts); try again",
            names.full, self.options.conflict_attempts
        )))
    }

    /// Polls an operation until it is done.
    async fn wait(&self, operation: Operation, what: &str) -> Result<Outcome, RuntimeError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        let mut delay = self.options.poll;
        let mut operation = operation;
        let timeout = self.options.attempt_timeout;
        loop {
            if operation.done {
                return Ok(match operation.result {
                    Some(OperationResult::Error(status)) => {
                        Outcome::Failed { code: Code::from(status.code), message: status.message }
                    }
                    _ => Outcome::Done,
                });
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Unavailable(format!(
                    "Cloud Run {what}: operation {} still running after {}s",
                    operation.name,
                    self.options.operation_timeout.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.options.poll_max.max(self.options.poll));
            let name = operation.name.clone();
            operation = self
                .run(|| self.services.get_operation().set_name(&name).with_attempt_timeout(timeout).send())
                .await
                .map_err(|e| call_error(RUN_API, "GetOperation", &name, e))?;
        }
    }

    /// The port's error for a failed operation of `what`.
    fn operation_error(what: &str, resource: &str, code: Code, message: &str) -> RuntimeError {
        let text = format!("Cloud Run {what} {resource} failed: {message} ({code})");
        match code {
            Code::NotFound => RuntimeError::NotFound(resource.to_owned()),
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::Unauthenticated => RuntimeError::Refused(text),
            _ => RuntimeError::Unavailable(text),
        }
    }

    /// Polls a revision until its `Ready` condition is decided: the revision when ready,
    /// [`RuntimeError::StartFailed`] with Cloud Run's reason when it failed.
    async fn wait_ready(&self, names: &Names, revision_id: &str) -> Result<Revision, RuntimeError> {
        let full = names.revision_full(revision_id);
        let deadline = Instant::now() + self.options.operation_timeout;
        let mut delay = self.options.poll;
        loop {
            // A revision another writer just asked for may not be there yet: it is pending.
            let revision = self.get_revision(&full).await?;
            let state = revision.as_ref().map(revision_state).unwrap_or(RevisionState::Pending);
            match (state, revision) {
                (RevisionState::Ready, Some(revision)) => return Ok(revision),
                (RevisionState::Failed(why), _) => {
                    return Err(RuntimeError::StartFailed(self.with_log_tail(names, revision_id, why).await));
                }
                _ if Instant::now() >= deadline => {
                    return Err(RuntimeError::Unavailable(format!(
                        "Cloud Run revision {full} is still starting after {}s",
                        self.options.operation_timeout.as_secs()
                    )));
                }
                _ => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.poll_max.max(self.options.poll));
                }
            }
        }
    }

    /// `why`, followed by the revision's last log lines when a log source is set (the deploy
    /// pipeline's repairs read them: "... Its last lines: a | b").
    async fn with_log_tail(&self, names: &Names, revision_id: &str, why: String) -> String {
        let Some(logs) = &self.logs else { return why };
        match logs.entries(&names.id, Some(revision_id), LOG_TAIL).await {
            Ok(entries) => {
                let lines: Vec<&str> =
                    entries.iter().filter_map(LogEntry::message).map(str::trim).filter(|l| !l.is_empty()).collect();
                if lines.is_empty() { why } else { format!("{why}. Its last lines: {}", lines.join(" | ")) }
            }
            Err(e) => {
                tracing::warn!(revision = revision_id, error = %e, "the logs of a failed revision could not be read");
                why
            }
        }
    }

    /// The IAM client, set up on first use.
    async fn iam(&self) -> Result<&Iam, RuntimeError> {
        let endpoint = self.iam_endpoint.as_deref();
        self.iam
            .get_or_try_init(|| async {
                configure(Iam::builder(), endpoint)
                    .build()
                    .await
                    .map_err(|e| client_error(IAM_API, "DEVGEM_IAM_ENDPOINT", endpoint, &e))
            })
            .await
    }

    /// The account users' services run as; a per-user one is created on first use.
    async fn runtime_account(&self, owner: &UserId) -> Result<String, RuntimeError> {
        if let AppIdentity::Shared(email) = &self.identity {
            return Ok(email.clone());
        }
        let id = user_account_id(owner);
        let email = account_email(&self.project, &id);
        if self.known_accounts.lock().unwrap_or_else(PoisonError::into_inner).contains(&email) {
            return Ok(email);
        }
        let mut account = ServiceAccount::default();
        account.display_name = format!("DevGem user {owner}").chars().take(100).collect();
        account.description =
            "Runs one DevGem user's services: no project role, reads only the secrets of their env.".to_owned();
        let timeout = self.options.attempt_timeout;
        let iam = self.iam().await?;
        let created = call_api(&self.iam_api, || {
            iam.create_service_account()
                .set_name(format!("projects/{}", self.project))
                .set_account_id(&id)
                .set_service_account(account.clone())
                .with_attempt_timeout(timeout)
                .send()
        })
        .await;
        match created {
            // IAM is eventually consistent: a new account may be unknown to Cloud Run for a while.
            Ok(_) => self.await_account(&email).await?,
            // It exists: an earlier deploy made it.
            Err(CallError::Failed(e)) if e.is_conflict() => {}
            Err(e) => return Err(call_error(IAM_API, "CreateServiceAccount", &email, e)),
        }
        self.known_accounts.lock().unwrap_or_else(PoisonError::into_inner).insert(email.clone());
        Ok(email)
    }

    async fn await_account(&self, email: &str) -> Result<(), RuntimeError> {
        let name = format!("projects/{}/serviceAccounts/{email}", self.project);
        let deadline = Instant::now() + self.options.account_propagation;
        let mut delay = self.options.poll;
        let timeout = self.options.attempt_timeout;
        let iam = self.iam().await?;
        loop {
            let found = call_api(&self.iam_api, || {
                iam.get_service_account().set_name(&name).with_attempt_timeout(timeout).send()
            })
            .await;
            match found {
                Ok(_) => return Ok(()),
                Err(CallError::Failed(e)) if e.is_not_found() => {
                    if Instant::now() >= deadline {
                        return Err(RuntimeError::Unavailable(format!(
                            "the new service account {email} is not visible in IAM after {}s; try again",
                            self.options.account_propagation.as_secs()
                        )));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.poll_max.max(self.options.poll));
                }
                Err(e) => return Err(call_error(IAM_API, "GetServiceAccount", &name, e)),
            }
        }
    }

    /// Makes the service public (`roles/run.invoker` for `allUsers`) unless it is.
    async fn ensure_public(&self, names: &Names) -> Result<(), RuntimeError> {
        let timeout = self.options.attempt_timeout;
        let full = names.full.as_str();
        ensure_binding(
            &self.run_api,
            self.options.conflict_attempts,
            full,
            INVOKER_ROLE,
            PUBLIC,
            || self.services.get_iam_policy().set_resource(full).with_attempt_timeout(timeout).send(),
            |policy| {
                self.services
                    .set_iam_policy()
                    .set_resource(full)
                    .set_policy(policy)
                    .with_attempt_timeout(timeout)
                    .send()
            },
        )
        .await
        .map_err(|e| match e {
            RuntimeError::Refused(why) => RuntimeError::Refused(format!(
                "{} cannot be made public (an organization policy may forbid allUsers): {why}",
                names.service
            )),
            other => other,
        })
    }

    /// The revision template DevGem deploys (see the module docs).
    fn template(
        &self,
        names: &Names,
        spec: &RevisionSpec,
        revision_id: &str,
        account: &str,
    ) -> Result<RevisionTemplate, RuntimeError> {
        let mut env = Vec::with_capacity(spec.env.len());
        for (name, value) in &spec.env {
            let mut var = EnvVar::default();
            var.name = name.to_string();
            var.values = Some(match value {
                EnvValue::Plain(value) => env_var::Values::Value(value.clone()),
                EnvValue::Secret(reference) => {
                    let mut selector = SecretKeySelector::default();
                    selector.secret = secret_resource(&self.project, &reference.name)?;
                    // Pinned: a new secret version reaches the app only through a new revision.
                    selector.version = reference.version.to_string();
                    let mut source = EnvVarSource::default();
                    source.secret_key_ref = Some(selector);
                    env_var::Values::ValueSource(Box::new(source))
                }
            });
            env.push(var);
        }
        let mut port = ContainerPort::default();
        port.container_port = i32::from(spec.port);
        let mut resources = ResourceRequirements::default();
        resources.limits =
            HashMap::from([("cpu".to_owned(), CPU.to_owned()), ("memory".to_owned(), MEMORY.to_owned())]);
        // With limits set, Cloud Run wants this said explicitly to keep CPU only while serving.
        resources.cpu_idle = true;
        let mut tcp = TCPSocketAction::default();
        tcp.port = i32::from(spec.port);
        let mut startup = Probe::default();
        startup.period_seconds = PROBE_PERIOD_SECONDS;
        startup.timeout_seconds = PROBE_TIMEOUT_SECONDS;
        startup.failure_threshold = PROBE_FAILURES;
        startup.probe_type = Some(probe::ProbeType::TcpSocket(Box::new(tcp)));
        let mut container = Container::default();
        container.image = spec.image.clone();
        container.ports = vec![port];
        container.resources = Some(resources);
        container.startup_probe = Some(startup);
        container.env = env;
        let mut scaling = RevisionScaling::default();
        scaling.min_instance_count = MIN_INSTANCES;
        scaling.max_instance_count = MAX_INSTANCES;
        let mut template = RevisionTemplate::default();
        template.revision = revision_id.to_owned();
        template.labels = self.labels(&spec.owner, &names.service);
        template.scaling = Some(scaling);
        template.service_account = account.to_owned();
        template.containers = vec![container];
        Ok(template)
    }

    fn labels(&self, owner: &UserId, service: &ServiceName) -> HashMap<String, String> {
        let mut labels = HashMap::from([(SERVICE_LABEL.to_owned(), service.to_string())]);
        match label_value(owner.as_str()) {
            Some(owner) => {
                labels.insert(OWNER_LABEL.to_owned(), owner);
            }
            None => {
                tracing::warn!(%owner, "the owner is not a valid Cloud Run label value; the service has no owner label")
            }
        }
        labels
    }

    /// The URL that reaches `revision_id`: its tag's URL, or the service's when it serves. A
    /// revision with neither (traffic moved away and back) gets its tag again.
    async fn revision_url(&self, names: &Names, revision_id: &str) -> Result<String, RuntimeError> {
        let tag = revision_tag(revision_id);
        for _ in 0..2 {
            let service =
                self.get_service(&names.full).await?.ok_or_else(|| RuntimeError::NotFound(names.full.clone()))?;
            if let Some(status) = service.traffic_statuses.iter().find(|s| s.tag == tag && !s.uri.is_empty()) {
                return Ok(status.uri.clone());
            }
            if traffic_percent(&service, revision_id) > 0 && !service.uri.is_empty() {
                return Ok(service.uri.clone());
            }
            let operation = self
                .write_service(names, |current| {
                    let Some(mut service) = current else { return Err(RuntimeError::NotFound(names.full.clone())) };
                    if service.traffic.iter().any(|t| t.tag == tag) {
                        return Ok(Edit::Nothing);
                    }
                    let mut traffic = pinned_traffic(&service);
                    if traffic.is_empty() {
                        return Err(RuntimeError::Unavailable(format!("{} serves nothing yet", names.service)));
                    }
                    traffic.push(target(revision_id, 0, &tag));
                    service.traffic = traffic;
                    Ok(Edit::Update(Box::new(service)))
                })
                .await?;
            if let Some(operation) = operation
                && let Outcome::Failed { code, message } = self.wait(operation, "UpdateService").await?
            {
                return Err(Self::operation_error("UpdateService", &names.full, code, &message));
            }
        }
        Err(RuntimeError::Unavailable(format!("Cloud Run gave revision {revision_id} of {} no URL", names.full)))
    }

    async fn info(
        &self,
        names: &Names,
        port_revision: &str,
        revision: &Revision,
    ) -> Result<RevisionInfo, RuntimeError> {
        let revision_id = last_segment(&revision.name).to_owned();
        let url = self.revision_url(names, &revision_id).await?;
        let created_at =
            revision.create_time.as_ref().and_then(|t| to_utc(t.seconds(), t.nanos())).unwrap_or_else(Utc::now);
        Ok(RevisionInfo { name: port_revision.to_owned(), url, created_at })
    }

    /// The revisions of `owner`'s `service`, newest first as Cloud Run lists them.
    pub async fn revisions(&self, owner: &UserId, service: &ServiceName) -> Result<Vec<RevisionSummary>, RuntimeError> {
        let names = self.names(owner, service);
        let current =
            self.get_service(&names.full).await?.ok_or_else(|| RuntimeError::NotFound(service.to_string()))?;
        let timeout = self.options.attempt_timeout;
        let mut summaries = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .run(|| {
                    self.revisions
                        .list_revisions()
                        .set_parent(&names.full)
                        .set_page_token(&token)
                        .with_attempt_timeout(timeout)
                        .send()
                })
                .await
                .map_err(|e| call_error(RUN_API, "ListRevisions", &names.full, e))?;
            for revision in &page.revisions {
                let id = last_segment(&revision.name).to_owned();
                summaries.push(RevisionSummary {
                    name: names.port_revision(&id),
                    image: revision.containers.first().map(|c| c.image.clone()).unwrap_or_default(),
                    created_at: revision.create_time.as_ref().and_then(|t| to_utc(t.seconds(), t.nanos())),
                    state: revision_state(revision),
                    traffic_percent: traffic_percent(&current, &id),
                    cloud_run_name: id,
                });
            }
            if page.next_page_token.is_empty() {
                return Ok(summaries);
            }
            token = page.next_page_token;
        }
    }
}

#[async_trait]
impl Runtime for CloudRunRuntime {
    async fn create_revision(&self, spec: RevisionSpec) -> Result<RevisionInfo, RuntimeError> {
        if spec.image.trim().is_empty() {
            return Err(RuntimeError::Refused("a revision needs an image".into()));
        }
        if spec.port == 0 {
            return Err(RuntimeError::Refused("a revision needs a port".into()));
        }
        let names = self.names(&spec.owner, &spec.service);
        let port_revision = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", spec.service, &uuid::Uuid::new_v4().simple().to_string()[..10]));
        let revision_id = names.revision_id(&port_revision)?;
        let tag = revision_tag(&revision_id);

        // Idempotent by name: an existing revision is waited for and returned.
        let existing = self.get_revision(&names.revision_full(&revision_id)).await?;
        if existing.is_none() {
            let account = self.runtime_account(&spec.owner).await?;
            if self.identity == AppIdentity::PerUser {
                let secrets: BTreeSet<&str> = spec
                    .env
                    .values()
                    .filter_map(|v| match v {
                        EnvValue::Secret(r) => Some(r.name.as_str()),
                        EnvValue::Plain(_) => None,
                    })
                    .collect();
                for secret in secrets {
                    let resource = secret_resource(&self.project, secret)?;
                    self.grants.grant_accessor(&resource, &format!("serviceAccount:{account}")).await?;
                }
            }
            let template = self.template(&names, &spec, &revision_id, &account)?;
            let labels = self.labels(&spec.owner, &spec.service);
            let operation = self
                .write_service(&names, |current| {
                    let Some(mut service) = current else {
                        // A new service serves its first revision: nothing served there before.
                        let mut service = Service::default();
                        service.labels = labels.clone();
                        service.ingress = google_cloud_run_v2::model::IngressTraffic::All;
                        service.template = Some(template.clone());
                        service.traffic = vec![target(&revision_id, 100, &tag)];
                        return Ok(Edit::Create(Box::new(service)));
                    };
                    if service.template.as_ref().is_some_and(|t| t.revision == revision_id) {
                        // Someone (a redelivery of this release) wrote this revision already.
                        return Ok(Edit::Nothing);
                    }
                    if let Some(owner) = service.labels.get(OWNER_LABEL)
                        && Some(owner) != labels.get(OWNER_LABEL)
                    {
                        return Err(RuntimeError::Refused(format!(
                            "the Cloud Run service {} belongs to {owner}, not to {}",
                            names.id, spec.owner
                        )));
                    }
                    let mut traffic = pinned_traffic(&service);
                    if traffic.is_empty() {
                        // Never served: the new revision may take the traffic at once.
                        traffic.push(target(&revision_id, 100, &tag));
                    } else {
                        traffic.retain(|t| t.revision != revision_id && t.tag != tag);
                        traffic.push(target(&revision_id, 0, &tag));
                    }
                    service.labels.extend(labels.clone());
                    service.template = Some(template.clone());
                    service.traffic = traffic;
                    Ok(Edit::Update(Box::new(service)))
                })
                .await?;
            if let Some(operation) = operation
                && let Outcome::Failed { code, message } = self.wait(operation, "deploy").await?
            {
                // A revision that did not start says why in its Ready condition.
                if let Some(revision) = self.get_revision(&names.revision_full(&revision_id)).await?
                    && let RevisionState::Failed(why) = revision_state(&revision)
                {
                    return Err(RuntimeError::StartFailed(self.with_log_tail(&names, &revision_id, why).await));
                }
                return Err(Self::operation_error("deploy", &names.full, code, &message));
            }
        } else if let Some(revision) = &existing
            && revision.containers.first().is_some_and(|c| c.image != spec.image)
        {
            return Err(RuntimeError::Refused(format!("revision {port_revision} exists with another image")));
        }
        let revision = self.wait_ready(&names, &revision_id).await?;
        // Also after a crash between the revision and the policy: the policy write is idempotent.
        self.ensure_public(&names).await?;
        self.info(&names, &port_revision, &revision).await
    }

    async fn route_traffic(&self, owner: &UserId, service: &ServiceName, revision: &str) -> Result<(), RuntimeError> {
        let names = self.names(owner, service);
        let revision_id = names.revision_id(revision)?;
        let full = names.revision_full(&revision_id);
        match self.get_revision(&full).await? {
            None => return Err(RuntimeError::NotFound(format!("revision {revision} of {service}"))),
            Some(found) => {
                if let RevisionState::Failed(why) = revision_state(&found) {
                    return Err(RuntimeError::Refused(format!(
                        "{revision} did not start ({why}); it cannot take traffic"
                    )));
                }
            }
        }
        let wanted = vec![target(&revision_id, 100, "")];
        let operation = self
            .write_service(&names, |current| {
                let Some(mut current) = current else {
                    return Err(RuntimeError::NotFound(format!("service {service}")));
                };
                if current.traffic == wanted {
                    return Ok(Edit::Nothing);
                }
                // All of it, and no tags: the candidates' test URLs have served their purpose.
                current.traffic = wanted.clone();
                Ok(Edit::Update(Box::new(current)))
            })
            .await?;
        if let Some(operation) = operation
            && let Outcome::Failed { code, message } = self.wait(operation, "route traffic").await?
        {
            return Err(Self::operation_error("route traffic", &names.full, code, &message));
        }
        Ok(())
    }

    async fn verify(&self, url: &str) -> Result<(), RuntimeError> {
        let http = self
            .http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| RuntimeError::Unavailable(format!("cannot create the HTTP client of verify: {e}")))
            })
            .await?;
        let started = Instant::now();
        loop {
            let elapsed = started.elapsed();
            let last = match http.get(url).send().await {
                Ok(response) => {
                    let status = response.status();
                    // A new service's IAM policy and a new tag's route take a while to apply;
                    // until then Google's front end answers 403 or 404 for the app.
                    let propagating = matches!(status.as_u16(), 403 | 404) && elapsed < self.options.verify_propagation;
                    if !status.is_server_error() && !propagating {
                        return Ok(());
                    }
                    format!("answers {status}")
                }
                Err(e) => format!("does not answer: {e}"),
            };
            if started.elapsed() >= self.options.verify_timeout {
                return Err(RuntimeError::StartFailed(format!(
                    "{url} {last} (checked for {}s)",
                    self.options.verify_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.options.verify_interval).await;
        }
    }

    async fn logs(
        &self,
        owner: &UserId,
        service: &ServiceName,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, RuntimeError> {
        let logs = self.logs.as_ref().ok_or_else(|| {
            RuntimeError::Unavailable("no log source (Cloud Logging) is configured for Cloud Run".into())
        })?;
        let names = self.names(owner, service);
        let revision_id = revision.map(|r| names.revision_id(r)).transpose()?;
        logs.entries(&names.id, revision_id.as_deref(), limit).await
    }

    async fn service_url(&self, owner: &UserId, service: &ServiceName) -> Result<String, RuntimeError> {
        let names = self.names(owner, service);
        let found =
            self.get_service(&names.full).await?.ok_or_else(|| RuntimeError::NotFound(format!("service {service}")))?;
        if found.uri.is_empty() {
            return Err(RuntimeError::Unavailable(format!("{service} has no URL yet")));
        }
        Ok(found.uri)
    }

    async fn delete_revision(&self, owner: &UserId, service: &ServiceName, revision: &str) -> Result<(), RuntimeError> {
        let names = self.names(owner, service);
        let revision_id = names.revision_id(revision)?;
        let full = names.revision_full(&revision_id);
        let Some(current) = self.get_service(&names.full).await? else {
            return Err(RuntimeError::NotFound(format!("revision {revision} of {service}")));
        };
        if traffic_percent(&current, &revision_id) > 0 {
            return Err(RuntimeError::Refused(format!("{revision} serves {service}; move traffic first")));
        }
        // Cloud Run keeps a revision that the traffic names (its test tag): drop it from there.
        if current.traffic.iter().any(|t| t.revision == revision_id) {
            let operation = self
                .write_service(&names, |current| {
                    let Some(mut current) = current else { return Ok(Edit::Nothing) };
                    if traffic_percent(&current, &revision_id) > 0 {
                        return Err(RuntimeError::Refused(format!("{revision} serves {service}; move traffic first")));
                    }
                    if !current.traffic.iter().any(|t| t.revision == revision_id) {
                        return Ok(Edit::Nothing);
                    }
                    current.traffic.retain(|t| t.revision != revision_id);
                    Ok(Edit::Update(Box::new(current)))
                })
                .await?;
            if let Some(operation) = operation
                && let Outcome::Failed { code, message } = self.wait(operation, "untag").await?
            {
                return Err(Self::operation_error("untag", &names.full, code, &message));
            }
        }
        let timeout = self.options.attempt_timeout;
        let deleted =
            self.run(|| self.revisions.delete_revision().set_name(&full).with_attempt_timeout(timeout).send()).await;
        let operation = match deleted {
            Ok(operation) => operation,
            Err(CallError::Failed(e)) if e.is_not_found() => {
                return Err(RuntimeError::NotFound(format!("revision {revision} of {service}")));
            }
            Err(e) => return Err(call_error(RUN_API, "DeleteRevision", &full, e)),
        };
        match self.wait(operation, "DeleteRevision").await? {
            Outcome::Done => Ok(()),
            Outcome::Failed { code, message } => Err(Self::operation_error("DeleteRevision", &full, code, &message)),
        }
    }

    async fn live_env(
        &self,
        owner: &UserId,
        service: &ServiceName,
    ) -> Result<Option<BTreeMap<EnvVarName, EnvValue>>, RuntimeError> {
        let names = self.names(owner, service);
        let found =
            self.get_service(&names.full).await?.ok_or_else(|| RuntimeError::NotFound(format!("service {service}")))?;
        let mut env = BTreeMap::new();
        let container = found.template.and_then(|t| t.containers.into_iter().next());
        for var in container.map(|c| c.env).unwrap_or_default() {
            let Ok(name) = EnvVarName::parse(&var.name) else {
                tracing::warn!(service = %names.id, var = %var.name, "an env var of the Cloud Run service is not a valid name; skipped");
                continue;
            };
            let value = match var.values {
                Some(env_var::Values::Value(value)) => EnvValue::Plain(value),
                None => EnvValue::Plain(String::new()),
                Some(env_var::Values::ValueSource(source)) => {
                    match source.secret_key_ref.as_ref().and_then(|s| secret_ref_from(&self.project, s)) {
                        Some(reference) => EnvValue::Secret(reference),
                        None => {
                            tracing::warn!(
                                service = %names.id, var = %var.name,
                                "an env var refers to a secret without a version number (e.g. latest); skipped"
                            );
                            continue;
                        }
                    }
                }
                Some(_) => {
                    tracing::warn!(service = %names.id, var = %var.name, "an env var of an unknown kind; skipped");
                    continue;
                }
            };
            env.insert(name, value);
        }
        Ok(Some(env))
    }
}

#[cfg(test)]
mod tests;
