//! Stage 7's handler. Idempotent: the revision is named after the deployment, so creating it
//! again (a redelivery, a restart) returns the same revision; verifying and routing can be
//! repeated, and a deployment that is already live or failed is left alone.

use crate::AppState;
use crate::repair::{diagnose, explain, image_repair, missing_env};
use devgem_common::deployments::rebuild;
use devgem_common::events::ReleaseRequested;
use devgem_common::handler::HandlerError;
use devgem_common::ids::EnvVarName;
use devgem_common::model::deployment::MAX_REPAIRS;
use devgem_common::model::deployment::{DeploymentState, FailureCause, Stage, StageStatus};
use devgem_common::model::service::{Revision, Service};
use devgem_common::ports::runtime::{EnvValue, RevisionSpec, RuntimeError};
use devgem_common::ports::store::{DocKey, Scope, StoreError, StoreExt, Write, to_data};
use devgem_common::timeline::{self, failure, update};
use std::collections::BTreeMap;

fn internal(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Internal(e.to_string())
}

/// How many lines of the app's log a start failure keeps.
const LOG_TAIL: usize = 20;

pub async fn on_release(state: &AppState, event: ReleaseRequested) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let now = || state.ports.clock.now();
    let Some((mut deployment, version)) = timeline::load(store, &event.deployment_id).await? else {
        return Err(HandlerError::Poison(format!("deployment {} does not exist", event.deployment_id)));
    };
    if deployment.state.is_terminal() {
        return Ok(());
    }
    if deployment.abort_requested {
        timeline::abort(store, &mut deployment, version, now()).await?;
        return Ok(());
    }
    // A release of an image that a repair has replaced (a redelivery) is not this deployment's.
    let current = deployment.build_id.as_deref() == Some(event.build_id.as_str());
    if !current || !matches!(deployment.state, DeploymentState::Deploying | DeploymentState::Verifying) {
        return Ok(());
    }
    let Some(plan) = deployment.plan.clone() else {
        return Err(internal(format!("deployment {} has no plan", deployment.id)));
    };
    let mut env = BTreeMap::new();
    for (name, value) in &deployment.env {
        let name = EnvVarName::parse(name).map_err(|e| HandlerError::Poison(e.to_string()))?;
        env.insert(name, EnvValue::Plain(value.clone()));
    }
    for (name, reference) in &deployment.secret_env {
        let name = EnvVarName::parse(name).map_err(|e| HandlerError::Poison(e.to_string()))?;
        env.insert(name, EnvValue::Secret(reference.clone()));
    }
    let spec = RevisionSpec {
        owner: deployment.owner.clone(),
        service: deployment.service.clone(),
        image: event.image.clone(),
        env,
        port: plan.port,
        name: Some(revision_name(&deployment)),
    };
    let key = deployment.id.to_string();
    match state.cancels.run(&key, release(state, &mut deployment, version, spec, &event)).await {
        Ok(outcome) => outcome,
        // Aborted while the revision started or was checked: it never takes traffic.
        Err(_) => abort_now(state, &event.deployment_id).await,
    }
}

/// Ends the deployment as aborted and removes the revision it created, if any; the revision
/// that served before keeps serving.
async fn abort_now(state: &AppState, id: &devgem_common::ids::DeploymentId) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    if let Some((deployment, _)) = timeline::load(store, id).await? {
        // The runtime refuses to delete a revision that serves, so this never removes a live one.
        let revision = revision_name(&deployment);
        let _ = state.runtime.delete_revision(&deployment.owner, &deployment.service, &revision).await;
    }
    Ok(timeline::abort_latest(store, id, state.ports.clock.now()).await?)
}

/// `dev.devgem.deployment.abort.v1` on `control`: stops the release running here, or ends a
/// deployment that is deploying elsewhere (the revision it made is removed).
pub async fn on_control(state: &AppState, event: devgem_common::events::ControlEvent) -> Result<(), HandlerError> {
    let abort = match event {
        devgem_common::events::ControlEvent::Abort(abort) => abort,
        devgem_common::events::ControlEvent::Rollback(rollback) => return on_rollback(state, rollback).await,
    };
    let deploying = [DeploymentState::Deploying, DeploymentState::Verifying];
    if timeline::cancel_or_claim(&state.cancels, state.ports.store.as_ref(), &abort.deployment_id, &deploying).await? {
        abort_now(state, &abort.deployment_id).await?;
    }
    Ok(())
}

/// The revision a deployment creates, named after it so creating it again (after a crash, a
/// redelivery) returns the same revision rather than a second one.
fn revision_name(deployment: &devgem_common::model::deployment::Deployment) -> String {
    let id = deployment.id.as_str();
    let name = format!("{}-{}", deployment.service, &id[id.len().saturating_sub(10)..]);
    // Each repair makes a new revision; the one that did not start is gone.
    match deployment.repairs {
        0 => name,
        n => format!("{name}-r{n}"),
    }
}

/// Creates (once), verifies and routes the revision; ends the deployment live or failed.
async fn release(
    state: &AppState,
    deployment: &mut devgem_common::model::deployment::Deployment,
    mut version: u64,
    spec: RevisionSpec,
    event: &ReleaseRequested,
) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let now = || state.ports.clock.now();
    let mut spec = spec;
    let created = loop {
        match state.runtime.create_revision(spec.clone()).await {
            Ok(info) => break info,
            Err(RuntimeError::StartFailed(why)) => {
                // The output may say where the app really listens: route there.
                if let Some(repair) = diagnose(&why, spec.port)
                    && deployment.take_repair()
                {
                    spec.port = repair.port;
                    spec.name = Some(revision_name(deployment));
                    if let Some(plan) = deployment.plan.as_mut() {
                        plan.port = repair.port;
                        plan.notes.push(repair.reason.clone());
                    }
                    let text =
                        format!("Repair {} of {MAX_REPAIRS}: {}; starting it again", deployment.repairs, repair.reason);
                    let events = vec![update(deployment, Stage::Deploy, StageStatus::Running, text)];
                    version = timeline::save(store, deployment, version, events).await?;
                    continue;
                }
                // A missing library or a wrong start command: a new image.
                if let Some((plan, reason)) = deployment.plan.as_ref().and_then(|p| image_repair(p, &why))
                    && rebuild(&state.ports, deployment, version, plan, &reason, crate::NAME).await?
                {
                    return Ok(());
                }
                let mut fail = match missing_env(&why) {
                    Some(name) => failure(
                        FailureCause::MissingEnv,
                        Stage::Deploy,
                        format!(
                            "the app stopped because {name} has no value; deploy again with --env {name}=... (or --secret). The previous revision, if any, keeps serving"
                        ),
                    ),
                    None => failure(
                        FailureCause::StartFailed,
                        Stage::Deploy,
                        match explain(&why) {
                            Some(explained) => format!(
                                "the new revision did not start: {explained}. The previous revision, if any, keeps serving"
                            ),
                            None => format!(
                                "the new revision did not start: {why}. The previous revision, if any, keeps serving"
                            ),
                        },
                    ),
                };
                fail.log_tail = start_log(state, &deployment.owner, &deployment.service).await;
                if fail.log_tail.is_empty() {
                    // A revision that never started leaves no logs behind; its error quotes them.
                    fail.log_tail = quoted_lines(&why);
                }
                timeline::fail(store, deployment, version, fail, now()).await?;
                return Ok(());
            }
            Err(RuntimeError::Refused(why)) => {
                let fail =
                    failure(FailureCause::StartFailed, Stage::Deploy, format!("the revision was refused: {why}"));
                timeline::fail(store, deployment, version, fail, now()).await?;
                return Ok(());
            }
            Err(e) => return Err(HandlerError::Transient(e.to_string())),
        }
    };
    if deployment.state == DeploymentState::Deploying {
        deployment.revision = Some(created.name.clone());
        deployment.advance(DeploymentState::Verifying, now()).map_err(internal)?;
        let text = format!("Revision {} started; checking that it answers", created.name);
        version = timeline::save(
            store,
            deployment,
            version,
            vec![update(deployment, Stage::Deploy, StageStatus::Running, text)],
        )
        .await?;
    }
    if let Err(e) = state.runtime.verify(&created.url).await {
        let message =
            format!("the new revision does not answer HTTP: {e}. The previous revision, if any, keeps serving");
        let _ = state.runtime.delete_revision(&deployment.owner, &deployment.service, &created.name).await;
        timeline::fail(store, deployment, version, failure(FailureCause::VerifyFailed, Stage::Deploy, message), now())
            .await?;
        return Ok(());
    }
    state
        .runtime
        .route_traffic(&deployment.owner, &deployment.service, &created.name)
        .await
        .map_err(|e| HandlerError::Transient(format!("moving traffic: {e}")))?;
    let url = state.runtime.service_url(&deployment.owner, &deployment.service).await.unwrap_or(created.url.clone());
    record_service(state, deployment, &created.name, &event.image, &url).await?;
    deployment.url = Some(url.clone());
    deployment.set_stage(Stage::Deploy, StageStatus::Done, None, now());
    deployment.advance(DeploymentState::Live, now()).map_err(internal)?;
    let events = vec![update(deployment, Stage::Deploy, StageStatus::Done, format!("Live at {url}"))];
    timeline::save(store, deployment, version, events).await?;
    Ok(())
}

/// The app's last lines as a start failure quotes them ("...: line | line").
fn quoted_lines(why: &str) -> Vec<String> {
    let quoted = why.rsplit_once("Its last lines: ").or_else(|| why.split_once("before listening: ")).map(|(_, l)| l);
    quoted.map(|lines| lines.split(" | ").map(str::to_owned).filter(|l| l != "none").collect()).unwrap_or_default()
}

async fn start_log(
    state: &AppState,
    owner: &devgem_common::ids::UserId,
    service: &devgem_common::ids::ServiceName,
) -> Vec<String> {
    state
        .runtime
        .logs(owner, service, None, LOG_TAIL)
        .await
        .map(|entries| entries.iter().filter_map(|e| e.message().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Records the revision in `services/{owner}-{name}` and that it serves.
async fn record_service(
    state: &AppState,
    deployment: &devgem_common::model::deployment::Deployment,
    revision: &str,
    image: &str,
    url: &str,
) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let key = DocKey::new("services", Service::doc_id(&deployment.owner, &deployment.service))?;
    for _ in 0..5 {
        let existing = store.get_typed::<Service>(&Scope::All, &key).await?;
        let (mut service, expected) = match existing {
            Some((service, version)) => (service, Some(version)),
            None => (Service::new(deployment.owner.clone(), deployment.service.clone()), None),
        };
        if service.revision(revision).is_none() {
            let entry = Revision {
                name: revision.to_owned(),
                deployment_id: deployment.id.clone(),
                image: image.to_owned(),
                created_at: state.ports.clock.now(),
            };
            service.add_revision(entry).map_err(internal)?;
        }
        let previous = service.traffic.serving.clone();
        service.route_to(revision).map_err(internal)?;
        service.url = Some(url.to_owned());
        let data = to_data(&service)?;
        let write = match expected {
            Some(expected_version) => Write::Update { key: key.clone(), expected_version, data },
            None => Write::Create { key: key.clone(), owner: deployment.owner.clone(), data },
        };
        match store.commit(vec![write]).await {
            Ok(_) => {
                resolve_incidents(state, &deployment.owner, previous.as_deref(), revision).await;
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict { key: key.to_string(), reason: "too many concurrent writers".into() }.into())
}

/// `dev.devgem.service.rollback.v1`: moves the service's traffic to the requested revision (or
/// its rollback target) once that revision answers; if it does not, traffic stays where it was.
pub async fn on_rollback(
    state: &AppState,
    rollback: devgem_common::events::ServiceRollback,
) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let key = DocKey::new("services", Service::doc_id(&rollback.owner, &rollback.service))?;
    let Some((mut service, version)) = store.get_typed::<Service>(&Scope::All, &key).await? else {
        return Err(HandlerError::Poison(format!("service {} of {} does not exist", rollback.service, rollback.owner)));
    };
    let previous = service.traffic.serving.clone();
    let target = match service.rollback(rollback.to_revision.as_deref()) {
        Ok(target) => target,
        Err(e) => return Err(HandlerError::Poison(e.to_string())),
    };
    let mut message = format!("Rolled {} back to {target}", rollback.service);
    let url = state.runtime.service_url(&rollback.owner, &rollback.service).await.ok();
    if previous.as_deref() != Some(target.as_str()) {
        state
            .runtime
            .route_traffic(&rollback.owner, &rollback.service, &target)
            .await
            .map_err(|e| HandlerError::Transient(format!("moving traffic to {target}: {e}")))?;
        let answers = match &url {
            Some(url) => state.runtime.verify(url).await,
            None => Ok(()),
        };
        if let Err(e) = answers {
            // The target does not answer: traffic goes back to what served before.
            if let Some(previous) = &previous {
                let _ = state.runtime.route_traffic(&rollback.owner, &rollback.service, previous).await;
            }
            message =
                format!("{target} does not answer ({e}); {} keeps serving", previous.as_deref().unwrap_or("nothing"));
            return append_message(state, &rollback, message).await;
        }
    }
    match store.commit(vec![Write::Update { key, expected_version: version, data: to_data(&service)? }]).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => return Err(HandlerError::Transient("the service changed; trying again".into())),
        Err(e) => return Err(e.into()),
    }
    resolve_incidents(state, &rollback.owner, previous.as_deref(), &target).await;
    if let Some(url) = url {
        message = format!("{message}; it answers at {url}");
    }
    append_message(state, &rollback, message).await
}

/// Traffic left `previous` for `serving`: the monitor's open alerts about `previous` are over.
/// A failure here is logged, not retried: the janitor resolves quiet incidents anyway.
async fn resolve_incidents(
    state: &AppState,
    owner: &devgem_common::ids::UserId,
    previous: Option<&str>,
    serving: &str,
) {
    let Some(previous) = previous.filter(|p| *p != serving) else { return };
    let (store, now) = (state.ports.store.as_ref(), state.ports.clock.now());
    let why = format!("traffic moved to {serving}");
    if let Err(e) = devgem_common::incidents::resolve_revision(store, owner, previous, &why, now).await {
        tracing::warn!(revision = previous, error = %e, "the revision's incidents were not resolved");
    }
}

async fn append_message(
    state: &AppState,
    rollback: &devgem_common::events::ServiceRollback,
    text: String,
) -> Result<(), HandlerError> {
    use devgem_common::ports::store::{NewEvent, SessionEventKind};
    let Some(session) = rollback.session_id.clone() else { return Ok(()) };
    let event = NewEvent {
        kind: SessionEventKind::Message,
        correlation_id: devgem_common::ids::CorrelationId::generate(),
        data: serde_json::json!({ "role": "assistant", "text": text, "service": rollback.service }),
    };
    state
        .ports
        .store
        .commit(vec![Write::Append { session, owner: rollback.owner.clone(), events: vec![event] }])
        .await?;
    Ok(())
}
