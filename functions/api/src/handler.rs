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
