//! The API's handlers: parse at the edge, read within the caller's scope, answer JSON.

use crate::AppState;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use devgem_common::handler::ApiError;
use devgem_common::identity::Caller;
use devgem_common::ids::{DeploymentId, SessionId, UserId};
use devgem_common::model::deployment::Deployment;
use devgem_common::ports::store::{DocKey, Order, Query as StoreQuery, SessionEvent, StoreExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct Me {
    user_id: UserId,
    admin: bool,
}

pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me { user_id: caller.user_id, admin: caller.admin })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IssuedToken {
    user_id: UserId,
    /// Shown once; only its hash is stored.
    token: String,
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {}", e.body_text())))
}

fn parse<T, E: std::fmt::Display>(parsed: Result<T, E>) -> Result<T, ApiError> {
    parsed.map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `POST /api/users` (admin): creates a user and returns its first token.
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    if !caller.admin {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "only the admin can create users"));
    }
    let new = json_body(body)?;
    let id = parse(UserId::parse(&new.id))?;
    if id == UserId::system() {
        return Err(ApiError::bad_request("'system' is reserved; pick another user id"));
    }
    let name = new.name.unwrap_or_else(|| id.to_string());
    let (user, token) = state.identity.create_user(&id, &name, false, None).await?;
    Ok((StatusCode::CREATED, Json(IssuedToken { user_id: user.id, token: token.expose().to_owned() })))
}

/// `POST /api/users/{id}/tokens`: one more token, for yourself or (admin) anyone.
pub async fn issue_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let id = parse(UserId::parse(&id))?;
    if !caller.admin && caller.user_id != id {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "you can only create tokens for yourself"));
    }
    let token = state.identity.issue_token(&id).await?;
    Ok((StatusCode::CREATED, Json(IssuedToken { user_id: id, token: token.expose().to_owned() })))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/deployments`: the caller's deployments, newest first.
pub async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let query = StoreQuery::collection("deployments").order_by("created_at", Order::Descending).limit(limit);
    let docs = state.ports.store.query(&caller.scope(), &query).await?;
    let deployments = docs.iter().map(|d| d.parse()).collect::<Result<Vec<Deployment>, _>>()?;
    Ok(Json(deployments))
}

/// `GET /api/deployments/{id}`: one of the caller's deployments.
pub async fn get_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    let id = parse(DeploymentId::parse(&id))?;
    let key = DocKey::new("deployments", id.as_str())?;
    match state.ports.store.get_typed::<Deployment>(&caller.scope(), &key).await? {
        Some((deployment, _)) => Ok(Json(deployment)),
        None => Err(ApiError::not_found(format!("deployment {id} not found; list yours with GET /api/deployments"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct EventParams {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/sessions/{id}/events?after=N`: the session's events after seq N, in order.
pub async fn session_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<EventParams>,
) -> Result<Json<Vec<SessionEvent>>, ApiError> {
    let session = parse(SessionId::parse(&id))?;
    let limit = params.limit.unwrap_or(500).clamp(1, 5000);
    let events = state.ports.store.events_after(&caller.scope(), &session, params.after, limit).await?;
    Ok(Json(events))
}

/// The body of `POST /api/deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeploymentRequest {
    /// An https git URL, or a directory on the server's machine (embedded default).
    source: String,
    /// A branch, tag or commit (git sources).
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    /// The service's name; derived from the source when absent.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Env values that are secret: stored in the Secrets port, never in a document.
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, String>,
    /// Accept high-severity security findings.
    #[serde(default)]
    allow_risky: bool,
    /// The session to report in; a new one when absent.
    #[serde(default)]
    session_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeploymentCreated {
    deployment_id: DeploymentId,
    session_id: SessionId,
    service: devgem_common::ids::ServiceName,
}

/// Env names whose values are secrets by their look: given as plain env, they are stored as
/// secrets all the same.
fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "PRIVATE", "API_KEY", "APIKEY", "DATABASE_URL", "CREDENTIAL"]
        .iter()
        .any(|needle| upper.contains(needle))
}

/// `POST /api/deployments`: records a deployment and starts its pipeline.
pub async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    body: Result<Json<NewDeploymentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DeploymentCreated>), ApiError> {
    use devgem_common::events::{DeploymentRequested, EventContext};
    use devgem_common::ports::bus::BusExt;
    use devgem_common::ports::source::{SourceLocation, SourceSpec};
    use devgem_common::ports::store::{NewEvent, SessionEventKind, Write, to_data};
    let request = json_body(body)?;
    let raw = request.source.trim();
    let location = if raw.contains("://") || raw.starts_with("git@") {
        SourceLocation::Git { url: raw.to_owned() }
    } else if raw.starts_with('/') {
        SourceLocation::Local { path: raw.into() }
    } else {
        return Err(ApiError::bad_request(format!(
            "{raw:?} is neither an https git URL nor an absolute directory path"
        )));
    };
    let derived_from = raw.trim_end_matches('/').trim_end_matches(".git").rsplit('/').next().unwrap_or(raw);
    let service = match &request.name {
        Some(name) => parse(devgem_common::ids::ServiceName::parse(name))?,
        None => devgem_common::ids::ServiceName::derive_from(derived_from),
    };
    for name in request.env.keys().chain(request.secrets.keys()) {
        parse(devgem_common::ids::EnvVarName::parse(name))?;
    }
    let session_id = match &request.session_id {
        Some(id) => parse(SessionId::parse(id))?,
        None => SessionId::generate(),
    };
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let now = state.ports.clock.now();
    let mut deployment = Deployment::new(
        devgem_common::model::deployment::NewDeployment {
            id: DeploymentId::generate(),
            owner: caller.user_id.clone(),
            session_id: session_id.clone(),
            correlation_id: correlation_id.clone(),
            source: SourceSpec { location, git_ref: request.git_ref.clone() },
            service: service.clone(),
        },
        now,
    );
    for (name, value) in request.env.iter().chain(&request.secrets) {
        if request.secrets.contains_key(name) || looks_secret(name) {
            let secret_name = format!("{}--{}--{name}", caller.user_id, service);
            let reference = state
                .secrets
                .put(&secret_name, devgem_common::ports::secrets::SecretValue::new(value.clone()))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "a secret was not stored");
                    ApiError::unavailable("the secret store is unavailable; try again")
                })?;
            deployment.secret_env.insert(name.clone(), reference);
        } else {
            deployment.env.insert(name.clone(), value.clone());
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
            owner: caller.user_id.clone(),
            data: to_data(&deployment)?,
        },
        Write::Append { session: session_id.clone(), owner: caller.user_id.clone(), events: vec![started] },
    ];
    state.ports.store.commit(writes).await?;
    let event = DeploymentRequested {
        deployment_id: deployment.id.clone(),
        owner: caller.user_id.clone(),
        session_id: session_id.clone(),
    };
    let ctx = EventContext::new(crate::NAME, correlation_id);
    state.ports.bus.publish_event(&event, &ctx, now).await.map_err(|e| {
        tracing::error!(error = %e, "the deployment request was not published");
        ApiError::unavailable("the deployment is recorded but could not be started; try again")
    })?;
    Ok((StatusCode::CREATED, Json(DeploymentCreated { deployment_id: deployment.id, session_id, service })))
}

/// `POST /api/deployments/{id}/abort`: asks every stage to stop the deployment.
pub async fn abort_deployment(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    use devgem_common::events::{DeploymentAbort, EventContext};
    use devgem_common::ports::bus::BusExt;
    let id = parse(DeploymentId::parse(&id))?;
    let key = DocKey::new("deployments", id.as_str())?;
    let not_found = || ApiError::not_found(format!("deployment {id} not found; list yours with GET /api/deployments"));
    // Read within the caller's scope first: another user's deployment does not exist for them.
    let Some((current, _)) = state.ports.store.get_typed::<Deployment>(&caller.scope(), &key).await? else {
        return Err(not_found());
    };
    if current.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_ended",
            format!("deployment {id} is already {}; there is nothing to stop", current.state.as_str()),
        ));
    }
    let (deployment, _) = state
        .ports
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
        requested_by: caller.user_id.clone(),
        reason: None,
    };
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(|| deployment.correlation_id.clone());
    let ctx = EventContext::new(crate::NAME, correlation_id);
    state.ports.bus.publish_event(&event, &ctx, state.ports.clock.now()).await.map_err(|e| {
        tracing::error!(error = %e, "the abort was not published");
        ApiError::unavailable("the abort is recorded but could not be sent; try again")
    })?;
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

/// `GET /api/services`: the caller's services, with what serves each.
pub async fn list_services(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<devgem_common::model::service::Service>>, ApiError> {
    let query = StoreQuery::collection("services").limit(500);
    let docs = state.ports.store.query(&caller.scope(), &query).await?;
    let services =
        docs.iter().map(|d| d.parse()).collect::<Result<Vec<devgem_common::model::service::Service>, _>>()?;
    Ok(Json(services))
}

async fn caller_service(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<devgem_common::model::service::Service, ApiError> {
    use devgem_common::model::service::Service;
    let name = parse(devgem_common::ids::ServiceName::parse(name))?;
    let key = DocKey::new("services", Service::doc_id(&caller.user_id, &name))?;
    match state.ports.store.get_typed::<Service>(&caller.scope(), &key).await? {
        Some((service, _)) => Ok(service),
        None => Err(ApiError::not_found(format!("service {name} not found; list yours with GET /api/services"))),
    }
}

/// `GET /api/services/{name}`: one of the caller's services.
pub async fn get_service(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<devgem_common::model::service::Service>, ApiError> {
    Ok(Json(caller_service(&state, &caller, &name).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to serve; the service's rollback target when absent.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

/// `POST /api/services/{name}/rollback`: moves traffic back, after checking the target answers.
pub async fn rollback_service(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    use devgem_common::events::{EventContext, ServiceRollback};
    use devgem_common::ports::bus::BusExt;
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let service = caller_service(&state, &caller, &name).await?;
    let target = match &request.to {
        Some(to) if service.revision(to).is_none() => {
            return Err(ApiError::bad_request(format!(
                "{name} has no revision {to}; its revisions are {}",
                service.revisions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Some(to) => to.clone(),
        None => service.traffic.rollback_target.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_rollback_target",
                format!("{name} has no earlier revision to roll back to"),
            )
        })?,
    };
    let session_id = request
        .session_id
        .as_deref()
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event = ServiceRollback {
        service: service.name.clone(),
        owner: caller.user_id.clone(),
        session_id,
        to_revision: Some(target.clone()),
        alert_id: None,
        requested_by: caller.user_id.clone(),
    };
    let ctx = EventContext::new(crate::NAME, devgem_common::ids::CorrelationId::generate());
    state.ports.bus.publish_event(&event, &ctx, state.ports.clock.now()).await.map_err(|e| {
        tracing::error!(error = %e, "the rollback was not published");
        ApiError::unavailable("the rollback could not be sent; try again")
    })?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "service": service.name, "to": target }))))
}
