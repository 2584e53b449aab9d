//! One pass of the janitor.

use crate::AppState;
use chrono::{DateTime, Utc};
use devgem_common::events::{BuildRequested, DeploymentRequested, EventContext, ReleaseRequested};
use devgem_common::model::deployment::{Deployment, DeploymentState, FailureCause, Stage};
use devgem_common::model::service::Service;
use devgem_common::ports::bus::BusExt;
use devgem_common::ports::store::{DocKey, Query, Scope, StoreError, Write, to_data};
use devgem_common::timeline::{self, failure};
use serde::Serialize;
use std::time::Duration;

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Deployments whose pending event was published again.
    pub nudged: Vec<String>,
    /// Deployments failed because they stopped moving.
    pub failed: Vec<String>,
    pub pruned_revisions: Vec<String>,
    /// Builds whose artifacts were removed.
    pub pruned_builds: Vec<String>,
    pub pruned_ledger_entries: usize,
    /// Dead letters older than the retention, removed from the bus.
    pub pruned_dead_letters: u64,
    /// Open monitor alerts with no new signal for [`INCIDENT_QUIET`], resolved.
    pub resolved_incidents: usize,
}

/// An open alert with no new signal for this long is over (the monitor's default `quiet_for`).
pub const INCIDENT_QUIET: chrono::Duration = chrono::Duration::minutes(10);

/// How old a finished ledger entry must be to go.
const LEDGER_RETENTION: chrono::Duration = chrono::Duration::days(7);
/// How long a dead letter is kept for someone to look at (Pub/Sub's longest retention).
const DEAD_LETTER_RETENTION: chrono::Duration = chrono::Duration::days(7);

pub async fn sweep(state: &AppState) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for stuck_state in [
        DeploymentState::Requested,
        DeploymentState::Analyzing,
        DeploymentState::Building,
        DeploymentState::Deploying,
        DeploymentState::Verifying,
    ] {
        let query = Query::collection("deployments").filter("state", stuck_state.as_str()).limit(500);
        for doc in state.ports.store.query(&Scope::All, &query).await? {
            let Ok(deployment) = doc.parse::<Deployment>() else { continue };
            recover(state, deployment, doc.version, &mut report).await?;
        }
    }
    prune_services(state, &mut report).await?;
    prune_ledger(state, &mut report).await?;
    let cutoff = state.ports.clock.now() - DEAD_LETTER_RETENTION;
    match state.ports.bus.prune_dead_letters(cutoff).await {
        Ok(removed) => report.pruned_dead_letters = removed,
        // Pruning is housekeeping: the next sweep tries again.
        Err(e) => tracing::warn!(error = %e, "dead letters were not pruned"),
    }
    let now = state.ports.clock.now();
    report.resolved_incidents =
        devgem_common::incidents::resolve_quiet(state.ports.store.as_ref(), now - INCIDENT_QUIET, now).await?;
    Ok(report)
}

fn deadline(state: &AppState, deployment: &Deployment) -> (Duration, Stage) {
    match deployment.state {
        DeploymentState::Requested | DeploymentState::Analyzing => (state.deadlines.analysis, Stage::Analysis),
        DeploymentState::Building => (state.deadlines.build, Stage::Build),
        _ => (state.deadlines.deploy, Stage::Deploy),
    }
}

fn older_than(then: DateTime<Utc>, now: DateTime<Utc>, limit: Duration) -> bool {
    (now - then).to_std().is_ok_and(|age| age > limit)
}

async fn recover(
    state: &AppState,
    mut deployment: Deployment,
    version: u64,
    report: &mut Report,
) -> Result<(), StoreError> {
    let store = state.ports.store.as_ref();
    let now = state.ports.clock.now();
    let (limit, stage) = deadline(state, &deployment);
    if !older_than(deployment.updated_at, now, limit) {
        return Ok(());
    }
    let nudged_since_change = deployment.nudged_at.is_some_and(|t| t > deployment.updated_at);
    // A build that does not report back is not helped by asking again: the builder owns it.
    let waiting_on_builder = deployment.state == DeploymentState::Building && deployment.build_id.is_some();
    if !nudged_since_change && !waiting_on_builder {
        deployment.nudged_at = Some(now);
        let key = timeline::deployment_key(&deployment)?;
        match store.commit(vec![Write::Update { key, expected_version: version, data: to_data(&deployment)? }]).await {
            Ok(_) => {}
            // Another janitor (or the pipeline) moved it first.
            Err(e) if e.is_conflict() => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Err(e) = republish(state, &deployment, now).await {
            tracing::warn!(deployment = %deployment.id, error = %e, "the stage's event could not be published again");
        }
        report.nudged.push(deployment.id.to_string());
        return Ok(());
    }
    if nudged_since_change && !deployment.nudged_at.is_some_and(|t| older_than(t, now, limit)) {
        return Ok(());
    }
    if let Some(build_id) = deployment.build_id.clone().filter(|_| waiting_on_builder) {
        let _ = state.builder.cancel(&build_id).await;
    }
    let minutes = limit.as_secs().div_ceil(60);
    let message = format!(
        "the {} stage made no progress for {minutes} min, so it was stopped; deploy again, and if it stops at the same stage, check the service's logs",
        stage_name(stage)
    );
    match timeline::fail(store, &mut deployment, version, failure(FailureCause::Timeout, stage, message), now).await {
        Ok(_) => report.failed.push(deployment.id.to_string()),
        Err(e) if e.is_conflict() => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::RepoAccess | Stage::Analysis | Stage::Dockerfile | Stage::EnvConfig | Stage::SecurityScan => "analysis",
        Stage::Build => "build",
        Stage::Deploy => "deploy",
    }
}

/// Publishes the event that moves `deployment` out of its state again.
async fn republish(state: &AppState, deployment: &Deployment, now: DateTime<Utc>) -> Result<(), String> {
    let bus = state.ports.bus.as_ref();
    let ctx = EventContext::new(crate::NAME, deployment.correlation_id.clone());
    let (id, owner, session_id) = (deployment.id.clone(), deployment.owner.clone(), deployment.session_id.clone());
    let published = match deployment.state {
        DeploymentState::Requested | DeploymentState::Analyzing => {
            bus.publish_event(&DeploymentRequested { deployment_id: id, owner, session_id }, &ctx, now).await
        }
        DeploymentState::Building => {
            bus.publish_event(&BuildRequested { deployment_id: id, owner, session_id }, &ctx, now).await
        }
        _ => {
            let (Some(build_id), Some(image)) = (deployment.build_id.clone(), deployment.image.clone()) else {
                return Err("no image to release".into());
            };
            let release = ReleaseRequested { deployment_id: id, owner, session_id, build_id, image };
            bus.publish_event(&release, &ctx, now).await
        }
    };
    published.map(|_| ()).map_err(|e| e.to_string())
}

/// Prunes each service's old revisions, then the builds no remaining revision needs: one pass
/// over the services.
async fn prune_services(state: &AppState, report: &mut Report) -> Result<(), StoreError> {
    for doc in state.ports.store.query(&Scope::All, &Query::collection("services").limit(1000)).await? {
        let Ok(service) = doc.parse::<Service>() else { continue };
        // A service that changed meanwhile is left for the next sweep.
        if let Some(service) = prune_revisions(state, service, doc.version, report).await? {
            prune_builds(state, &service, report).await?;
        }
    }
    Ok(())
}

/// Deletes the service's revisions beyond the newest few (never the serving one or the rollback
/// target) and records that; the service as it now stands, or `None` if it changed meanwhile.
async fn prune_revisions(
    state: &AppState,
    mut service: Service,
    version: u64,
    report: &mut Report,
) -> Result<Option<Service>, StoreError> {
    let keep_from = service.revisions.len().saturating_sub(state.keep_revisions);
    let protected = [service.traffic.serving.clone(), service.traffic.rollback_target.clone()];
    let doomed: Vec<String> = service.revisions[..keep_from]
        .iter()
        .map(|r| r.name.clone())
        .filter(|name| !protected.iter().flatten().any(|p| p == name))
        .collect();
    if doomed.is_empty() {
        return Ok(Some(service));
    }
    let mut deleted = Vec::new();
    for name in doomed {
        match state.runtime.delete_revision(&service.owner, &service.name, &name).await {
            Ok(()) => deleted.push(name),
            // Already gone (another janitor, or never started here): forget it too.
            Err(devgem_common::ports::runtime::RuntimeError::NotFound(_)) => deleted.push(name),
            Err(e) => tracing::warn!(revision = %name, error = %e, "a revision was not deleted"),
        }
    }
    service.revisions.retain(|r| !deleted.contains(&r.name));
    let key = DocKey::new("services", Service::doc_id(&service.owner, &service.name))?;
    let update = Write::Update { key, expected_version: version, data: to_data(&service)? };
    match state.ports.store.commit(vec![update]).await {
        Ok(_) => {
            report.pruned_revisions.extend(deleted);
            Ok(Some(service))
        }
        Err(e) if e.is_conflict() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn prune_ledger(state: &AppState, report: &mut Report) -> Result<(), StoreError> {
    let store = state.ports.store.as_ref();
    let cutoff = state.ports.clock.now() - LEDGER_RETENTION;
    for doc in store.query(&Scope::All, &Query::collection("processed").limit(1000)).await? {
        let done_at = doc
            .data
            .get("done_at")
            .and_then(|v| v.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if done_at.is_some_and(|t| t < cutoff) {
            let delete = Write::Delete { key: doc.key.clone(), expected_version: Some(doc.version) };
            match store.commit(vec![delete]).await {
                Ok(_) => report.pruned_ledger_entries += 1,
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes the builds of a service's older deployments: the newest few deployments' builds stay,
/// and so does every build whose image a remaining revision runs (the serving one, the rollback
/// target).
async fn prune_builds(state: &AppState, service: &Service, report: &mut Report) -> Result<(), StoreError> {
    use devgem_common::ports::store::Order;
    let query = Query::collection("deployments")
        .filter("owner", service.owner.as_str())
        .filter("service", service.name.as_str())
        .order_by("created_at", Order::Descending)
        .limit(1000);
    let deployments: Vec<Deployment> =
        state.ports.store.query(&Scope::All, &query).await?.iter().filter_map(|d| d.parse().ok()).collect();
    let images_in_use: Vec<&str> = service.revisions.iter().map(|r| r.image.as_str()).collect();
    for deployment in deployments.iter().skip(state.keep_revisions) {
        let (Some(build_id), true) = (&deployment.build_id, deployment.state.is_terminal()) else { continue };
        if deployment.image.as_deref().is_some_and(|image| images_in_use.contains(&image)) {
            continue;
        }
        match state.builder.delete_build(build_id).await {
            Ok(true) => report.pruned_builds.push(build_id.clone()),
            Ok(false) => {}
            Err(e) => tracing::warn!(%build_id, error = %e, "a build was not removed"),
        }
    }
    Ok(())
}
