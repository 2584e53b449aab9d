//! Starting, aborting and rolling back on a user's behalf: the one way the API and the chat do it. The
//! deployment document and its session's `deployment_started` event are written together, then
//! `deployment.requested` is published; secret env values go to the Secrets port first.
//!
//! Also what both read of a deployment the same way: its env as a user may see it (secret
//! values never), its runtime log lines, its build log's tail; and the env change that deploys
//! it again ([`change_env`]).

use crate::events::{DeploymentRequested, EventContext};
use crate::ids::{CorrelationId, DeploymentId, EnvVarName, ServiceName, SessionId, UserId};
use crate::model::deployment::{Deployment, NewDeployment};
use crate::ports::Ports;
use crate::ports::bus::BusExt;
use crate::ports::runtime::Runtime;
use crate::ports::secrets::{SecretValue, Secrets};
use crate::ports::source::{SourceLocation, SourceSpec};
use crate::ports::store::{DocKey, NewEvent, SessionEventKind, StoreError, Write, to_data};
use std::collections::BTreeMap;

/// What to deploy.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// An https git URL, or an absolute directory path (embedded default).
    pub source: String,
    pub git_ref: Option<String>,
    pub name: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Values that are secret; env values whose names look secret are treated the same.
    pub secrets: BTreeMap<String, String>,
    /// Secrets already in the Secrets port, carried over from an earlier deployment (a redeploy
    /// with one variable changed keeps the others without anyone re-typing them).
    pub secret_refs: BTreeMap<String, crate::ports::secrets::SecretRef>,
    pub allow_risky: bool,
    /// The session to report in; a new one when absent.
    pub session_id: Option<SessionId>,
}

/// A started deployment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    pub deployment_id: DeploymentId,
    pub session_id: SessionId,
    pub service: ServiceName,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Env names whose values are secrets by their look: given as plain env, they are stored as
/// secrets all the same.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "PRIVATE", "API_KEY", "APIKEY", "DATABASE_URL", "CREDENTIAL"]
        .iter()
        .any(|needle| upper.contains(needle))
}

/// Why a rollback was not requested.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The name is not a service name.
    #[error("{0}")]
    InvalidName(String),
    #[error("service {0} not found")]
    NotFound(String),
    #[error("{service} has no revision {to}; its revisions are {known}")]
    NoSuchRevision { service: String, to: String, known: String },
    #[error("{0} has no earlier revision to roll back to")]
    NoTarget(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks the deploy function to move `owner`'s service `name` back to `to` (a revision it has)
/// or, without one, to its rollback target; the revision is checked to answer before traffic
/// moves. Returns the service and the revision asked for. The one way the API and the chat
/// request a rollback.
pub async fn rollback(
    ports: &Ports,
    owner: &UserId,
    name: &str,
    to: Option<&str>,
    session_id: Option<SessionId>,
    correlation_id: CorrelationId,
    publisher: &str,
) -> Result<(ServiceName, String), RollbackError> {
    use crate::events::ServiceRollback;
    use crate::model::service::Service;
    use crate::ports::store::{Scope, StoreExt};
    let name = ServiceName::parse(name).map_err(|e| RollbackError::InvalidName(e.to_string()))?;
    let key = DocKey::new("services", Service::doc_id(owner, &name))?;
    let Some((service, _)) = ports.store.get_typed::<Service>(&Scope::Owner(owner.clone()), &key).await? else {
        return Err(RollbackError::NotFound(name.to_string()));
    };
    let target = match to {
        Some(to) if service.revision(to).is_none() => {
            return Err(RollbackError::NoSuchRevision {
                service: name.to_string(),
                to: to.to_owned(),
                known: service.revisions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        Some(to) => to.to_owned(),
        None => service.traffic.rollback_target.clone().ok_or_else(|| RollbackError::NoTarget(name.to_string()))?,
    };
    let event = ServiceRollback {
        service: service.name.clone(),
        owner: owner.clone(),
        session_id,
        to_revision: Some(target.clone()),
        alert_id: None,
        requested_by: owner.clone(),
    };
    let ctx = EventContext::new(publisher, correlation_id);
    ports.bus.publish_event(&event, &ctx, ports.clock.now()).await.map_err(|e| {
        tracing::error!(error = %e, "the rollback was not published");
        RollbackError::Unavailable(format!("the rollback could not be sent ({e}); try again"))
    })?;
    Ok((service.name, target))
}

/// `text` with the values of secret assignments masked: everything after the `=` of a chat
/// command `set secret NAME=value` (or `set NAME=value` for a secret-looking name), and the value
/// of any `NAME=value` word whose name looks secret. For what is shown and stored of a message.
pub fn redact_secret_values(text: &str) -> String {
    const MASK: &str = "••••••";
    if let Some((before, _)) = text.split_once('=') {
        let command = before.trim_start().to_ascii_lowercase();
        let name = before.split_whitespace().last().unwrap_or("");
        if command.starts_with("set ") && (command.starts_with("set secret") || looks_secret(name)) {
            return format!("{before}={MASK}");
        }
    }
    text.split_inclusive(char::is_whitespace)
        .map(|token| {
            let word = token.trim_end();
            match word.split_once('=') {
                Some((name, value))
                    if !value.is_empty()
                        && looks_secret(name)
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    format!("{name}={MASK}{}", &token[word.len()..])
                }
                _ => token.to_owned(),
            }
        })
        .collect()
}

/// Where a source string points, or why it points nowhere.
pub fn source_location(raw: &str) -> Result<SourceLocation, StartError> {
    let raw = raw.trim();
    if raw.contains("://") || raw.starts_with("git@") {
        Ok(SourceLocation::Git { url: raw.to_owned() })
    } else if raw.starts_with('/') {
        Ok(SourceLocation::Local { path: raw.into() })
    } else {
        Err(StartError::Invalid(format!("{raw:?} is neither an https git URL nor an absolute directory path")))
    }
}

/// Records and starts a deployment for `owner`. `publisher` names the function that asked.
pub async fn start(
    ports: &Ports,
    secrets: &dyn Secrets,
    owner: &UserId,
    correlation_id: CorrelationId,
    request: StartRequest,
    publisher: &str,
) -> Result<Started, StartError> {
    let raw = request.source.trim();
    let location = source_location(raw)?;
    let derived_from = raw.trim_end_matches('/').trim_end_matches(".git").rsplit('/').next().unwrap_or(raw);
    let service = match &request.name {
        Some(name) => ServiceName::parse(name).map_err(|e| StartError::Invalid(e.to_string()))?,
        None => ServiceName::derive_from(derived_from),
    };
    for name in request.env.keys().chain(request.secrets.keys()).chain(request.secret_refs.keys()) {
        EnvVarName::parse(name).map_err(|e| StartError::Invalid(e.to_string()))?;
    }
    let session_id = request.session_id.clone().unwrap_or_else(SessionId::generate);
    let now = ports.clock.now();
    let mut deployment = Deployment::new(
        NewDeployment {
            id: DeploymentId::generate(),
            owner: owner.clone(),
            session_id: session_id.clone(),
            correlation_id: correlation_id.clone(),
            source: SourceSpec { location, git_ref: request.git_ref.clone() },
            service: service.clone(),
        },
        now,
    );
    for (name, value) in request.env.iter().chain(&request.secrets) {
        if request.secrets.contains_key(name) || looks_secret(name) {
            let secret_name = format!("{owner}--{service}--{name}");
            let reference = secrets.put(&secret_name, SecretValue::new(value.clone())).await.map_err(|e| {
                tracing::error!(error = %e, "a secret was not stored");
                StartError::Unavailable("the secret store is unavailable; try again".into())
            })?;
            deployment.secret_env.insert(name.clone(), reference);
        } else {
            deployment.env.insert(name.clone(), value.clone());
        }
    }
    for (name, reference) in &request.secret_refs {
        if !deployment.env.contains_key(name) {
            deployment.secret_env.entry(name.clone()).or_insert_with(|| reference.clone());
        }
    }
    deployment.allow_risky = request.allow_risky;
    let started = NewEvent {
        kind: SessionEventKind::DeploymentStarted,
        correlation_id: correlation_id.clone(),
        data: serde_json::json!({ "deployment_id": deployment.id, "service": service, "source": raw }),
    };
    let writes = vec![
        Write::Create {
            key: DocKey::new("deployments", deployment.id.as_str())?,
            owner: owner.clone(),
            data: to_data(&deployment)?,
        },
        Write::Append { session: session_id.clone(), owner: owner.clone(), events: vec![started] },
    ];
    ports.store.commit(writes).await?;
    let event = DeploymentRequested {
        deployment_id: deployment.id.clone(),
        owner: owner.clone(),
        session_id: session_id.clone(),
    };
    ports.bus.publish_event(&event, &EventContext::new(publisher, correlation_id), now).await.map_err(|e| {
        tracing::error!(error = %e, "the deployment request was not published");
        StartError::Unavailable("the deployment is recorded but could not be started; try again".into())
    })?;
    Ok(Started { deployment_id: deployment.id, session_id, service })
}

/// Why an abort was not sent.
#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error("deployment {0} not found")]
    NotFound(DeploymentId),
    #[error("deployment {id} is already {state}; there is nothing to stop")]
    Ended { id: DeploymentId, state: &'static str },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks every stage to stop deployment `id` of `owner` (`None`: the administrator, any owner).
pub async fn abort(
    ports: &Ports,
    owner: Option<&UserId>,
    id: &DeploymentId,
    requested_by: &UserId,
    correlation_id: Option<CorrelationId>,
    publisher: &str,
) -> Result<Deployment, AbortError> {
    use crate::events::DeploymentAbort;
    use crate::ports::store::{Scope, StoreExt};
    let key = DocKey::new("deployments", id.as_str())?;
    let scope = owner.map_or(Scope::All, |o| Scope::Owner(o.clone()));
    // Read within the caller's scope first: another user's deployment does not exist for them.
    let Some((current, _)) = ports.store.get_typed::<Deployment>(&scope, &key).await? else {
        return Err(AbortError::NotFound(id.clone()));
    };
    if current.state.is_terminal() {
        return Err(AbortError::Ended { id: id.clone(), state: current.state.as_str() });
    }
    let (deployment, _) = ports
        .store
        .modify::<Deployment, _>(&key, 10, |d| {
            d.abort_requested = true;
            Ok(())
        })
        .await?;
    let event = DeploymentAbort {
        deployment_id: id.clone(),
        owner: deployment.owner.clone(),
        session_id: deployment.session_id.clone(),
        requested_by: requested_by.clone(),
        reason: None,
    };
    let ctx = EventContext::new(publisher, correlation_id.unwrap_or_else(|| deployment.correlation_id.clone()));
    ports.bus.publish_event(&event, &ctx, ports.clock.now()).await.map_err(|e| {
        tracing::error!(error = %e, "the abort was not published");
        AbortError::Unavailable("the abort is recorded but could not be sent; try again".into())
    })?;
    Ok(deployment)
}

/// Applies a repair that needs a new image: the deployment goes back to the build stage with
/// `plan` (the change noted in it), the user is told `reason`, and `build.requested` is
/// published. `Ok(false)` when the deployment has had all its repairs; the caller fails it.
pub async fn rebuild(
    ports: &Ports,
    deployment: &mut Deployment,
    version: u64,
    mut plan: crate::model::deployment::DeploymentPlan,
    reason: &str,
    publisher: &str,
) -> Result<bool, crate::handler::HandlerError> {
    use crate::handler::HandlerError;
    use crate::model::deployment::{MAX_REPAIRS, Stage, StageStatus};
    if !deployment.take_repair() {
        return Ok(false);
    }
    let now = ports.clock.now();
    plan.notes.push(reason.to_owned());
    deployment.rebuild(plan, now).map_err(|e| HandlerError::Internal(e.to_string()))?;
    let text = format!("Repair {} of {MAX_REPAIRS}: {reason}; building again", deployment.repairs);
    let events = vec![crate::timeline::update(deployment, Stage::Build, StageStatus::Running, text)];
    crate::timeline::save(ports.store.as_ref(), deployment, version, events).await?;
    // Lost after the save, the janitor publishes it again (the deployment is building).
    request_build(ports, deployment, publisher).await?;
    Ok(true)
}

/// Publishes `build.requested` for a deployment that is building (analysis done, or a repair).
pub async fn request_build(
    ports: &Ports,
    deployment: &Deployment,
    publisher: &str,
) -> Result<(), crate::handler::HandlerError> {
    let request = crate::events::BuildRequested {
        deployment_id: deployment.id.clone(),
        owner: deployment.owner.clone(),
        session_id: deployment.session_id.clone(),
    };
    let ctx = EventContext::new(publisher, deployment.correlation_id.clone());
    ports
        .bus
        .publish_event(&request, &ctx, ports.clock.now())
        .await
        .map_err(|e| crate::handler::HandlerError::Transient(format!("publishing the build request: {e}")))?;
    Ok(())
}

/// The request that deploys `d`'s source again (its ref, service, env, secrets and accepted
/// findings), reporting in `session`.
pub fn redeploy_request(d: &Deployment, session: &SessionId) -> StartRequest {
    StartRequest {
        source: d.source.location.to_string(),
        git_ref: d.source.git_ref.clone(),
        name: Some(d.service.to_string()),
        env: d.env.clone(),
        secret_refs: d.secret_env.clone(),
        allow_risky: d.allow_risky,
        session_id: Some(session.clone()),
        ..StartRequest::default()
    }
}

/// A change of a deployment's env: values to set in plain text, values to store as secrets,
/// names to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvChange {
    pub set: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub unset: Vec<String>,
}

impl EnvChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.secrets.is_empty() && self.unset.is_empty()
    }
}

/// Deploys `deployment` again with `change` applied to its env, reporting in `session`: secrets
/// go to the Secrets port, the other variables and secrets carry over. The change goes on top of
/// the env as it runs ([`env_view`]), so an edit made outside DevGem is not undone; when that
/// cannot be read, nothing is deployed. The one way the chat's `set_env` and
/// `POST /api/deployments/{id}/env` change env.
#[allow(clippy::too_many_arguments)]
pub async fn change_env(
    ports: &Ports,
    secrets: &dyn Secrets,
    runtime: &dyn Runtime,
    deployment: &Deployment,
    change: EnvChange,
    session: &SessionId,
    correlation_id: CorrelationId,
    publisher: &str,
) -> Result<Started, StartError> {
    if change.is_empty() {
        return Err(StartError::Invalid(
            "nothing to change: set, store as secret or unset at least one variable".into(),
        ));
    }
    let view = env_view(ports, secrets, runtime, deployment).await;
    if !view.complete() {
        return Err(StartError::Unavailable(format!(
            "the env cannot be checked for changes made outside DevGem right now ({}), and changing it \
             could undo them; try again in a moment",
            view.sync.notes.join("; ")
        )));
    }
    let base = &view.rebase(deployment);
    let mut seen = std::collections::BTreeSet::new();
    for name in change.set.keys().chain(change.secrets.keys()).chain(&change.unset) {
        EnvVarName::parse(name).map_err(|e| StartError::Invalid(e.to_string()))?;
        if !seen.insert(name.as_str()) {
            return Err(StartError::Invalid(format!("{name} is named twice; set, store as secret or unset it once")));
        }
    }
    for name in &change.unset {
        if !base.env.contains_key(name) && !base.secret_env.contains_key(name) {
            let known: Vec<&str> = base.env.keys().chain(base.secret_env.keys()).map(String::as_str).collect();
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            return Err(StartError::Invalid(format!("{name} is not set on {}; its variables: {known}", base.service)));
        }
    }
    let mut request = redeploy_request(base, session);
    for name in &change.unset {
        request.env.remove(name);
        request.secret_refs.remove(name);
    }
    for (name, value) in change.set {
        request.secret_refs.remove(&name);
        request.env.insert(name, value);
    }
    for (name, value) in change.secrets {
        request.env.remove(&name);
        request.secret_refs.remove(&name);
        request.secrets.insert(name, value);
    }
    start(ports, secrets, &base.owner, correlation_id, request, publisher).await
}

/// An env variable as a user may see it: a secret's value is never shown, only its version.
/// The fields after `version` say what changed outside DevGem ([`env_view`]); they are left out
/// of the JSON when nothing did, so the stored view reads as it always has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnvVar {
    pub name: String,
    /// The value of a plain variable; `None` for a secret.
    pub value: Option<String>,
    pub secret: bool,
    /// The secret's version in the Secrets port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The secret's newest enabled version, when it is newer than `version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<u32>,
    /// The variable is not as DevGem deployed it, because of a change made outside DevGem.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed_outside: bool,
    /// What changed outside DevGem, when `changed_outside`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside: Option<OutsideChange>,
    /// What DevGem deployed, when the service now runs with another value (`outside: "value"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed: Option<Deployed>,
}

impl EnvVar {
    /// A variable as it is, nothing changed outside.
    fn new(name: &str, value: &crate::ports::runtime::EnvValue) -> Self {
        use crate::ports::runtime::EnvValue;
        let (value, secret, version) = match value {
            EnvValue::Plain(value) => (Some(value.clone()), false, None),
            EnvValue::Secret(reference) => (None, true, Some(reference.version)),
        };
        Self {
            name: name.to_owned(),
            value,
            secret,
            version,
            latest_version: None,
            changed_outside: false,
            outside: None,
            deployed: None,
        }
    }
}

/// The variables `d` runs with, by name; secrets without their values.
pub fn env_vars(d: &Deployment) -> Vec<EnvVar> {
    deployed_env(d).iter().map(|(name, value)| EnvVar::new(name, value)).collect()
}

mod env_sync;
pub use env_sync::{Deployed, EnvSync, EnvView, Outside, OutsideChange, SyncState, deployed_env, env_view, synced_env};

/// One line of a revision's output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub ts: Option<chrono::DateTime<chrono::Utc>>,
    /// `stdout` or `stderr`, when the runtime says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<&'static str>,
    pub text: String,
}

/// The last `limit` log entries of `owner`'s `service` (of one revision, if given), oldest first,
/// as lines of text; entries without text (request logs) are left out.
pub async fn log_lines(
    runtime: &dyn Runtime,
    owner: &UserId,
    service: &ServiceName,
    revision: Option<&str>,
    limit: usize,
) -> Result<Vec<LogLine>, crate::ports::runtime::RuntimeError> {
    let entries = runtime.logs(owner, service, revision, limit).await?;
    Ok(entries
        .iter()
        .filter_map(|e| e.message().map(|text| LogLine { ts: e.timestamp, stream: e.stream(), text: text.to_owned() }))
        .collect())
}

/// The last `lines` lines of build `build_id`'s log, from Blobs (where every builder leaves it
/// once the build ends); empty while it runs or when the log is gone.
pub async fn build_log_tail(blobs: &dyn crate::ports::blobs::Blobs, build_id: &str, lines: usize) -> Vec<String> {
    use crate::ports::blobs::BlobsExt;
    let Some(key) = crate::ports::builder::log_blob_key(build_id) else { return Vec::new() };
    let Ok(bytes) = blobs.get_bytes(&key).await else { return Vec::new() };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| (*l).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_in_messages_are_masked() {
        assert_eq!(redact_secret_values("set secret STRIPE=sk_live_1 2"), "set secret STRIPE=••••••");
        assert_eq!(redact_secret_values("set API_TOKEN = abc"), "set API_TOKEN =••••••");
        assert_eq!(redact_secret_values("set DEBUG=1"), "set DEBUG=1", "not a secret");
        assert_eq!(
            redact_secret_values("deploy it with DB_PASSWORD=hunter2 and MODE=fast please"),
            "deploy it with DB_PASSWORD=•••••• and MODE=fast please"
        );
        assert_eq!(redact_secret_values("why did it fail?"), "why did it fail?");
    }

    /// The admin's deployment of a local directory as service `app`, with no env yet.
    pub(super) fn app_deployment() -> Deployment {
        Deployment::new(
            NewDeployment {
                id: DeploymentId::generate(),
                owner: UserId::admin(),
                session_id: SessionId::generate(),
                correlation_id: CorrelationId::generate(),
                source: SourceSpec { location: SourceLocation::Local { path: "/srv/app".into() }, git_ref: None },
                service: ServiceName::derive_from("app"),
            },
            chrono::Utc::now(),
        )
    }

    #[test]
    fn env_vars_never_carry_a_secret_value() {
        use crate::ports::secrets::SecretRef;
        let mut d = app_deployment();
        d.env.insert("MODE".into(), "fast".into());
        d.secret_env.insert("API_KEY".into(), SecretRef { name: "admin--app--API_KEY".into(), version: 3 });
        let vars = env_vars(&d);
        assert_eq!(
            serde_json::to_value(&vars).expect("serializes"),
            serde_json::json!([
                { "name": "API_KEY", "value": null, "secret": true, "version": 3 },
                { "name": "MODE", "value": "fast", "secret": false },
            ])
        );
        let again = redeploy_request(&d, &d.session_id);
        assert_eq!((again.env, again.secret_refs), (d.env.clone(), d.secret_env.clone()), "a redeploy keeps both");
        assert!(again.secrets.is_empty(), "no secret value travels in a redeploy");
    }
}
