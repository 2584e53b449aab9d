//! The API's handlers: parse at the edge, read within the caller's scope, answer JSON.

use crate::AppState;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
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

/// `POST /api/deployments`: records a deployment and starts its pipeline.
pub async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    body: Result<Json<NewDeploymentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    use devgem_common::deployments::{StartError, StartRequest, start};
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
    match start(&state.ports, state.secrets.as_ref(), &caller.user_id, correlation_id, start_request, crate::NAME).await
    {
        Ok(started) => Ok((StatusCode::CREATED, Json(started))),
        Err(StartError::Invalid(message)) => Err(ApiError::bad_request(message)),
        Err(StartError::Unavailable(message)) => Err(ApiError::unavailable(&message)),
        Err(StartError::Store(e)) => Err(e.into()),
    }
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
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    use devgem_common::deployments::{RollbackError, rollback};
    let request = body.map(|Json(b)| b).unwrap_or_default();
    // Parsed at the edge, before anything is looked up.
    let session_id = request
        .session_id
        .as_deref()
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let correlation_id = devgem_common::ids::CorrelationId::generate();
    let requested =
        rollback(&state.ports, &caller.user_id, &name, request.to.as_deref(), session_id, correlation_id, crate::NAME)
            .await;
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
        Err(RollbackError::Unavailable(_)) => Err(ApiError::unavailable("the rollback could not be sent; try again")),
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

/// The longest chat message accepted.
const MAX_MESSAGE: usize = 8 * 1024;

/// `POST /api/sessions/{id}/messages`: the user's message, shown in the session and handed to
/// the chat; the answer arrives as a session event.
pub async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<devgem_common::ids::CorrelationId>>,
    Path(id): Path<String>,
    body: Result<Json<ChatMessage>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    use devgem_common::events::{ChatTurn, EventContext};
    use devgem_common::ports::bus::BusExt;
    use devgem_common::ports::store::{NewEvent, SessionEventKind, Write};
    let session_id = parse(SessionId::parse(&id))?;
    let message = json_body(body)?;
    let text = message.text.trim();
    if text.is_empty() || text.len() > MAX_MESSAGE {
        return Err(ApiError::bad_request(format!("a message has 1 to {MAX_MESSAGE} bytes of text")));
    }
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(devgem_common::ids::CorrelationId::generate);
    let shown = NewEvent {
        kind: SessionEventKind::Message,
        correlation_id: correlation_id.clone(),
        // Shown and stored with secret values masked; the turn carries them to the chat only.
        data: serde_json::json!({ "role": "user", "text": devgem_common::deployments::redact_secret_values(text) }),
    };
    state
        .ports
        .store
        .commit(vec![Write::Append { session: session_id.clone(), owner: caller.user_id.clone(), events: vec![shown] }])
        .await?;
    let turn = ChatTurn {
        session_id,
        user_id: caller.user_id.clone(),
        text: text.to_owned(),
        client_message_id: message.client_message_id,
    };
    let ctx = EventContext::new(crate::NAME, correlation_id);
    state.ports.bus.publish_event(&turn, &ctx, state.ports.clock.now()).await.map_err(|e| {
        tracing::error!(error = %e, "a chat turn was not published");
        ApiError::unavailable("the message is shown but could not reach the chat; send it again")
    })?;
    Ok(StatusCode::ACCEPTED)
}
