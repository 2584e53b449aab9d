//! The API's handlers: parse at the edge, read within the caller's scope, answer JSON.

use crate::AppState;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use devgem_common::deployments::Started;
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

/// The body as `T`: 413 over the size limit, 415 without a JSON content type, 400 otherwise.
pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => crate::errors::too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => crate::errors::unsupported_media_type(),
        _ => ApiError::bad_request(format!("invalid JSON body: {}", e.body_text())),
    })
}

/// An optional JSON body: `T::default()` when there is none.
fn optional_json_body<T: serde::de::DeserializeOwned + Default>(body: &axum::body::Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub(crate) fn parse<T, E: std::fmt::Display>(parsed: Result<T, E>) -> Result<T, ApiError> {
    parsed.map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /health` and `GET /healthz`: 200 when the function runs and its store answers.
pub async fn health(State(state): State<AppState>) -> Response {
    devgem_common::function::probe(crate::NAME, state.ports.store.as_ref()).await
}

/// `GET /api/openapi.json`: the description of every route.
pub async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
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

/// One of the caller's deployments, by the id in the path: 400 for a malformed id, 404 for one
/// that does not exist or is another user's.
async fn caller_deployment(state: &AppState, caller: &Caller, id: &str) -> Result<Deployment, ApiError> {
    let id = parse(DeploymentId::parse(id))?;
    let key = DocKey::new("deployments", id.as_str())?;
    match state.ports.store.get_typed::<Deployment>(&caller.scope(), &key).await? {
        Some((deployment, _)) => Ok(deployment),
        None => Err(ApiError::not_found(format!("deployment {id} not found; list yours with GET /api/deployments"))),
    }
}

/// `GET /api/deployments/{id}`: one of the caller's deployments.
pub async fn get_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(caller_deployment(&state, &caller, &id).await?))
}

#[derive(Debug, Deserialize)]
pub struct LogParams {
    #[serde(default)]
    limit: Option<usize>,
}

/// How many log lines `GET /api/deployments/{id}/logs` returns by default, and at most.
const LOG_LINES: usize = 200;
const MAX_LOG_LINES: usize = 2000;
/// How many lines of the build's log go with them.
const BUILD_LOG_LINES: usize = 50;

#[derive(Debug, Serialize)]
pub struct Logs {
    deployment_id: DeploymentId,
    revision: String,
    lines: Vec<devgem_common::deployments::LogLine>,
    /// The last lines of the deployment's build.
    build_log: Vec<String>,
}

/// The tail of `d`'s last build: the failure's when the build failed, else the build's log.
async fn build_log(state: &AppState, d: &Deployment) -> Vec<String> {
    use devgem_common::model::deployment::Stage;
    if let Some(failure) = &d.failure
        && failure.stage == Some(Stage::Build)
        && !failure.log_tail.is_empty()
    {
        return failure.log_tail.clone();
    }
    let build_id = d.build_id.as_deref().or_else(|| d.builds.last().map(|b| b.id.as_str()));
    match build_id {
        Some(id) => devgem_common::deployments::build_log_tail(state.ports.blobs.as_ref(), id, BUILD_LOG_LINES).await,
        None => Vec::new(),
    }
}

/// `GET /api/deployments/{id}/logs?limit=N`: the last lines its revision wrote (200 by default,
/// at most 2000), with its build log's tail. 409 before it has a revision.
pub async fn deployment_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    use devgem_common::ports::runtime::RuntimeError;
    let deployment = caller_deployment(&state, &caller, &id).await?;
    let limit = params.limit.unwrap_or(LOG_LINES).clamp(1, MAX_LOG_LINES);
    let build_log = build_log(&state, &deployment).await;
    let Some(revision) = deployment.revision.clone() else {
        let (id, state_name) = (&deployment.id, deployment.state.as_str());
        let message = if deployment.state.is_terminal() {
            format!(
                "deployment {id} ended {state_name} before a revision ran, so it has no runtime logs; its build log's last lines are in build_log"
            )
        } else {
            format!(
                "deployment {id} is {state_name}: runtime logs exist once it is deployed; ask again when it is live (its build log so far is in build_log)"
            )
        };
        let body =
            serde_json::json!({ "error": { "code": "not_deployed", "message": message }, "build_log": build_log });
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    };
    let lines = devgem_common::deployments::log_lines(
        state.runtime.as_ref(),
        &deployment.owner,
        &deployment.service,
        Some(&revision),
        limit,
    )
    .await;
    match lines {
        Ok(lines) => Ok(Json(Logs { deployment_id: deployment.id, revision, lines, build_log }).into_response()),
        Err(RuntimeError::NotFound(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "revision_gone",
            format!("revision {revision} no longer exists (old revisions are pruned); read a newer deployment's logs"),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "runtime logs unavailable");
            Err(ApiError::unavailable("the runtime's logs cannot be read right now"))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Env {
    deployment_id: DeploymentId,
    service: devgem_common::ids::ServiceName,
    /// Every variable by name; a secret's value is never returned.
    vars: Vec<devgem_common::deployments::EnvVar>,
    /// What was checked against the runtime and the Secrets port, and what could not be.
    sync: devgem_common::deployments::EnvSync,
}

/// `GET /api/deployments/{id}/env`: the variables the deployment runs with (and a `POST` to the
/// same path starts from); secrets as `{"value": null, "secret": true}`. Changes made outside
/// DevGem are shown (`changed_outside`): a newer secret version, and for the deployment serving
/// its service the env as the runtime has it. When those cannot be read, the stored view is
/// answered with `sync` saying so.
pub async fn deployment_env(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Env>, ApiError> {
    let deployment = caller_deployment(&state, &caller, &id).await?;
    let view =
        devgem_common::deployments::env_view(&state.ports, state.secrets.as_ref(), state.runtime.as_ref(), &deployment)
            .await;
    Ok(Json(Env { deployment_id: deployment.id, service: deployment.service, vars: view.vars, sync: view.sync }))
}

/// The body of `POST /api/deployments/{id}/env`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRequest {
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
    /// Values stored in the Secrets port; only references reach a document.
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
    /// The session to report in; the deployment's when absent.
    #[serde(default)]
    session_id: Option<String>,
}

/// `POST /api/deployments/{id}/env`: deploys it again with the change (a new deployment, 202).
pub async fn change_deployment_env(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(id): Path<String>,
    body: Result<Json<EnvRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    use devgem_common::deployments::{EnvChange, change_env};
    let request = json_body(body)?;
    let session = request.session_id.as_deref().map(SessionId::parse).transpose();
    let session = parse(session)?;
    let change = EnvChange { set: request.set, secrets: request.secrets, unset: request.unset };
    if change.is_empty() {
        return Err(ApiError::bad_request(
            r#"nothing to change: send {"set": {"NAME": "value"}}, {"secrets": {"NAME": "value"}} or {"unset": ["NAME"]}"#,
        ));
    }
    let deployment = caller_deployment(&state, &caller, &id).await?;
    let session = session.unwrap_or_else(|| deployment.session_id.clone());
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let changed = change_env(
        &state.ports,
        state.secrets.as_ref(),
        state.runtime.as_ref(),
        &deployment,
        change,
        &session,
        correlation_id,
        crate::NAME,
    )
    .await;
    start_answer(changed, StatusCode::ACCEPTED)
}

/// How a started deployment (or why not) is answered.
fn start_answer(
    outcome: Result<Started, devgem_common::deployments::StartError>,
    status: StatusCode,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    use devgem_common::deployments::StartError;
    match outcome {
        Ok(started) => Ok((status, Json(started))),
        Err(StartError::Invalid(message)) => Err(ApiError::bad_request(message)),
        Err(StartError::Unavailable(message)) => Err(ApiError::unavailable(&message)),
        Err(StartError::Store(e)) => Err(e.into()),
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

/// `POST /api/deployments`: records a deployment and starts its pipeline.
pub async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    body: Result<Json<NewDeploymentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    use devgem_common::deployments::{StartRequest, start};
    let request = json_body(body)?;
    let session_id = request
        .session_id
        .as_deref()
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let start_request = StartRequest {
        source: request.source,
        git_ref: request.git_ref,
        name: request.name,
        env: request.env,
        secrets: request.secrets,
        allow_risky: request.allow_risky,
        session_id,
        ..StartRequest::default()
    };
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let started =
        start(&state.ports, state.secrets.as_ref(), &caller.user_id, correlation_id, start_request, crate::NAME).await;
    start_answer(started, StatusCode::CREATED)
}

/// `POST /api/deployments/{id}/abort`: asks every stage to stop the deployment.
pub async fn abort_deployment(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    use devgem_common::deployments::{AbortError, abort};
    let id = parse(DeploymentId::parse(&id))?;
    let correlation_id = correlation.map(|c| c.0);
    match abort(&state.ports, Some(&caller.user_id), &id, &caller.user_id, correlation_id, crate::NAME).await {
        Ok(deployment) => Ok((StatusCode::ACCEPTED, Json(deployment))),
        Err(AbortError::NotFound(id)) => {
            Err(ApiError::not_found(format!("deployment {id} not found; list yours with GET /api/deployments")))
        }
        Err(e @ AbortError::Ended { .. }) => Err(ApiError::new(StatusCode::CONFLICT, "already_ended", e.to_string())),
        Err(AbortError::Unavailable(message)) => Err(ApiError::unavailable(&message)),
        Err(AbortError::Store(e)) => Err(e.into()),
    }
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
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request: RollbackRequest = optional_json_body(&body)?;
    // Parsed at the edge, before anything is looked up.
    let session_id = parse(request.session_id.as_deref().map(SessionId::parse).transpose())?;
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let requested = devgem_common::deployments::rollback(
        &state.ports,
        &caller.user_id,
        &name,
        request.to.as_deref(),
        session_id,
        correlation_id,
        crate::NAME,
    )
    .await;
    rollback_answer(requested)
}

/// `POST /api/deployments/{id}/rollback`: rolls the deployment's service back (to `to`, or the
/// revision that served before), reporting in the deployment's session.
pub async fn rollback_deployment(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request: RollbackRequest = optional_json_body(&body)?;
    let session_id = parse(request.session_id.as_deref().map(SessionId::parse).transpose())?;
    let deployment = caller_deployment(&state, &caller, &id).await?;
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let requested = devgem_common::deployments::rollback(
        &state.ports,
        &caller.user_id,
        deployment.service.as_str(),
        request.to.as_deref(),
        Some(session_id.unwrap_or(deployment.session_id)),
        correlation_id,
        crate::NAME,
    )
    .await;
    if let Err(devgem_common::deployments::RollbackError::NotFound(_)) = &requested {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_serving",
            format!("{} has never served, so there is nothing to roll back to; deploy it first", deployment.service),
        ));
    }
    rollback_answer(requested)
}

fn rollback_answer(
    requested: Result<(devgem_common::ids::ServiceName, String), devgem_common::deployments::RollbackError>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    use devgem_common::deployments::RollbackError;
    match requested {
        Ok((service, target)) => {
            Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "service": service, "to": target }))))
        }
        Err(RollbackError::InvalidName(why)) => Err(ApiError::bad_request(why)),
        Err(RollbackError::NotFound(name)) => {
            Err(ApiError::not_found(format!("service {name} not found; list yours with GET /api/services")))
        }
        Err(e @ RollbackError::NoSuchRevision { .. }) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ RollbackError::NoTarget(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "no_rollback_target", e.to_string()))
        }
        Err(RollbackError::Unavailable(_)) => Err(ApiError::unavailable("the rollback could not be sent")),
        Err(RollbackError::Store(e)) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    text: String,
    /// The client's id for the message: a resend after a reconnect is answered once.
    #[serde(default)]
    client_message_id: Option<String>,
}

/// `POST /api/sessions/{id}/messages`: the user's message, shown in the session and handed to
/// the chat; the answer arrives as a session event.
pub async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(id): Path<String>,
    body: Result<Json<ChatMessage>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    use devgem_common::sessions::{ChatInput, submit};
    let session_id = parse(SessionId::parse(&id))?;
    let message = json_body(body)?;
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let input = ChatInput { text: message.text, client_message_id: message.client_message_id };
    submit(&state.ports, &caller.user_id, &session_id, input, correlation_id, crate::NAME)
        .await
        .map_err(submit_error)?;
    Ok(StatusCode::ACCEPTED)
}

/// How a message that did not go in is answered (`POST /api/sessions/{id}/messages`, `POST /chat`).
pub(crate) fn submit_error(e: devgem_common::sessions::SubmitError) -> ApiError {
    use devgem_common::sessions::SubmitError;
    match e {
        SubmitError::Invalid(why) => ApiError::bad_request(why),
        e @ SubmitError::NotYours(_) => ApiError::not_found(e.to_string()),
        e @ SubmitError::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        SubmitError::Store(e) => e.into(),
    }
}
