//! What clients see of a deployment: every change of `deployments/{id}` is saved together with
//! the session events that tell about it, in one transaction, so the document and the session's
//! log never disagree (a reconnecting client replays the log and sees the state the document has).

use crate::model::deployment::{Deployment, Failure, FailureCause, Stage, StageStatus};
use crate::ports::store::{DocKey, NewEvent, SessionEventKind, Store, StoreError, Write, to_data};
use serde_json::{Value, json};

pub fn deployment_key(deployment: &Deployment) -> Result<DocKey, StoreError> {
    DocKey::new("deployments", deployment.id.to_string())
}

/// A session event about `deployment`.
pub fn event(deployment: &Deployment, kind: SessionEventKind, mut data: Value) -> NewEvent {
    if let Some(object) = data.as_object_mut() {
        object.insert("deployment_id".into(), json!(deployment.id));
    }
    NewEvent { kind, correlation_id: deployment.correlation_id.clone(), data }
}

/// `deployment_progress`: percent, state, the stage running and the stage list, elapsed time.
pub fn progress(deployment: &Deployment) -> NewEvent {
    let running = deployment.stages.iter().find(|s| s.status == StageStatus::Running).map(|s| s.stage);
    let elapsed_ms = (deployment.updated_at - deployment.created_at).num_milliseconds().max(0);
    event(
        deployment,
        SessionEventKind::DeploymentProgress,
        json!({
            "percent": deployment.progress,
            "state": deployment.state,
            "stage": running,
            "stages": deployment.stages,
            "elapsed_ms": elapsed_ms,
        }),
    )
}

/// `deployment_update`: a stage started or finished, a warning, in one sentence.
pub fn update(deployment: &Deployment, stage: Stage, status: StageStatus, text: impl Into<String>) -> NewEvent {
    event(
        deployment,
        SessionEventKind::DeploymentUpdate,
        json!({ "stage": stage, "status": status, "text": text.into() }),
    )
}

/// `deployment_complete`: the URL, or the failure with its cause.
pub fn complete(deployment: &Deployment) -> NewEvent {
    event(
        deployment,
        SessionEventKind::DeploymentComplete,
        json!({
            "state": deployment.state,
            "url": deployment.url,
            "revision": deployment.revision,
            "failure": deployment.failure,
        }),
    )
}

/// A failure at `stage`.
pub fn failure(cause: FailureCause, stage: Stage, message: impl Into<String>) -> Failure {
    Failure { cause, stage: Some(stage), message: message.into(), log_tail: Vec::new() }
}

/// Saves `deployment` if it is still at `version`, with `events` appended to its session and a
/// progress event after them. Returns the new version; a conflict means someone else moved the
/// deployment first (the caller re-reads).
pub async fn save(
    store: &dyn Store,
    deployment: &Deployment,
    version: u64,
    mut events: Vec<NewEvent>,
) -> Result<u64, StoreError> {
    events.push(progress(deployment));
    if deployment.state.is_terminal() {
        events.push(complete(deployment));
    }
    let writes = vec![
        Write::Update { key: deployment_key(deployment)?, expected_version: version, data: to_data(deployment)? },
        Write::Append { session: deployment.session_id.clone(), owner: deployment.owner.clone(), events },
    ];
    let committed = store.commit(writes).await?;
    Ok(committed.version(0).unwrap_or(version + 1))
}

/// Reads a deployment with its version, from any owner (event handlers act for the system).
pub async fn load(store: &dyn Store, id: &crate::ids::DeploymentId) -> Result<Option<(Deployment, u64)>, StoreError> {
    use crate::ports::store::{Scope, StoreExt};
    store.get_typed::<Deployment>(&Scope::All, &DocKey::new("deployments", id.to_string())?).await
}

/// Ends `deployment` as failed and saves it with an update naming the stage and the cause.
pub async fn fail(
    store: &dyn Store,
    deployment: &mut Deployment,
    version: u64,
    failure: Failure,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u64, StoreError> {
    let stage = failure.stage.unwrap_or(Stage::Deploy);
    let text = failure.message.clone();
    if deployment.fail(failure, now).is_err() {
        return Ok(version);
    }
    let update = update(deployment, stage, StageStatus::Failed, text);
    save(store, deployment, version, vec![update]).await
}

/// Ends `deployment` as aborted (the user asked) and saves it.
pub async fn abort(
    store: &dyn Store,
    deployment: &mut Deployment,
    version: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u64, StoreError> {
    if deployment.abort(now).is_err() {
        return Ok(version);
    }
    let text = event(deployment, SessionEventKind::AiThought, json!({ "text": "Stopped, as you asked." }));
    save(store, deployment, version, vec![text]).await
}

/// Ends the deployment `id` as aborted, as it is now (re-reading on conflicts).
pub async fn abort_latest(
    store: &dyn Store,
    id: &crate::ids::DeploymentId,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    let mut last = None;
    for _ in 0..5 {
        let Some((mut deployment, version)) = load(store, id).await? else { return Ok(()) };
        match abort(store, &mut deployment, version, now).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| StoreError::Conflict { key: id.to_string(), reason: "too many attempts".into() }))
}

/// An abort, as the function owning `states` receives it: work on the deployment running in
/// this process is cancelled (it ends the deployment as it stops) and `false` is returned;
/// otherwise `true` when the deployment is in one of `states`, so the caller ends it itself.
pub async fn cancel_or_claim(
    cancels: &crate::cancel::Cancels,
    store: &dyn Store,
    id: &crate::ids::DeploymentId,
    states: &[crate::model::deployment::DeploymentState],
) -> Result<bool, StoreError> {
    if cancels.cancel(id.as_str()) {
        return Ok(false);
    }
    Ok(load(store, id).await?.is_some_and(|(deployment, _)| states.contains(&deployment.state)))
}
