//! The function's event handler: `dev.devgem.deployment.requested.v1` runs pipeline stages 1-5
//! (repo access, analysis, Dockerfile, env config, security scan), stores the plan with the
//! deployment and asks for the build. Idempotent: a redelivery of a deployment already past
//! analysis only repeats the build request, which the build function ignores when it has one.

use crate::AppState;
use crate::analyzer::{analyze_dir, repo::Limits};
use crate::dockerfile::port::Listen;
use crate::dockerfile::{Origin, plan, runnable};
use crate::security::{self, Severity};
use devgem_common::deployments::request_build;
use devgem_common::events::DeploymentRequested;
use devgem_common::handler::HandlerError;
use devgem_common::model::deployment::{Deployment, DeploymentPlan, DeploymentState, FailureCause, Stage, StageStatus};
use devgem_common::ports::store::SessionEventKind;
use devgem_common::timeline::{self, failure, update};
use serde_json::json;

/// Handles one `DeploymentRequested`.
pub async fn on_requested(state: &AppState, event: DeploymentRequested) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let now = || state.ports.clock.now();
    let Some((mut deployment, mut version)) = timeline::load(store, &event.deployment_id).await? else {
        return Err(HandlerError::Poison(format!("deployment {} does not exist", event.deployment_id)));
    };
    if deployment.state.is_terminal() {
        return Ok(());
    }
    if deployment.abort_requested {
        timeline::abort(store, &mut deployment, version, now()).await?;
        return Ok(());
    }
    match deployment.state {
        DeploymentState::Requested => {
            deployment.advance(DeploymentState::Analyzing, now()).map_err(internal)?;
            deployment.set_stage(Stage::RepoAccess, StageStatus::Running, None, now());
            let text = format!("Fetching {}", describe_source(&deployment));
            let events = vec![update(&deployment, Stage::RepoAccess, StageStatus::Running, text)];
            version = timeline::save(store, &deployment, version, events).await?;
        }
        // A redelivery after a crash during analysis: analysis has no side effect, run it again.
        DeploymentState::Analyzing => {}
        // Already analyzed: the build request may have been lost with the crash.
        DeploymentState::Building => return request_build(&state.ports, &deployment, crate::NAME).await,
        _ => return Ok(()),
    }
    let key = deployment.id.to_string();
    let work = analyze(state, &mut deployment, version);
    match state.cancels.run(&key, work).await {
        Ok(outcome) => outcome,
        // Aborted mid-stage: the fetch or analysis was dropped; record the abort.
        Err(_) => abort_now(state, &event.deployment_id).await,
    }
}

/// Records an abort on the deployment as it is now.
async fn abort_now(state: &AppState, id: &devgem_common::ids::DeploymentId) -> Result<(), HandlerError> {
    Ok(timeline::abort_latest(state.ports.store.as_ref(), id, state.ports.clock.now()).await?)
}

/// `dev.devgem.deployment.abort.v1` on `control`: stops the analysis running here, or ends a
/// deployment that has not left analysis.
pub async fn on_control(state: &AppState, event: devgem_common::events::ControlEvent) -> Result<(), HandlerError> {
    let devgem_common::events::ControlEvent::Abort(abort) = event else { return Ok(()) };
    let analyzing = [DeploymentState::Requested, DeploymentState::Analyzing];
    if timeline::cancel_or_claim(&state.cancels, state.ports.store.as_ref(), &abort.deployment_id, &analyzing).await? {
        abort_now(state, &abort.deployment_id).await?;
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Internal(e.to_string())
}

fn describe_source(deployment: &Deployment) -> String {
    let location = deployment.source.location.to_string();
    match &deployment.source.git_ref {
        Some(r) => format!("{location} at {r}"),
        None => location,
    }
}

/// Stages 1-5 from a fresh snapshot; ends with the deployment in `building`, or failed.
async fn analyze(state: &AppState, deployment: &mut Deployment, mut version: u64) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let now = || state.ports.clock.now();
    let scratch = state.work_dir.join(format!("{}-{:08x}", deployment.id, fastrand::u32(..)));
    let snapshot = match state.source.fetch(&deployment.source, &scratch, state.source_limits).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            let message = format!("{e}. Check the address and the branch, tag or commit, then deploy again.");
            timeline::fail(
                store,
                deployment,
                version,
                failure(FailureCause::SourceUnavailable, Stage::RepoAccess, message),
                now(),
            )
            .await?;
            return Ok(());
        }
    };
    let outcome = plan_from(&snapshot.dir, deployment).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let Planned { plan: deployment_plan, analysis, findings, stage_failure } = match outcome {
        Ok(planned) => planned,
        Err(fail) => {
            timeline::fail(store, deployment, version, fail, now()).await?;
            return Ok(());
        }
    };
    deployment.commit = snapshot.commit.clone();
    for stage in [Stage::RepoAccess, Stage::Analysis, Stage::Dockerfile, Stage::EnvConfig, Stage::SecurityScan] {
        deployment.set_stage(stage, StageStatus::Done, None, now());
    }
    let mut events = vec![
        timeline::event(deployment, SessionEventKind::Analysis, analysis),
        update(
            deployment,
            Stage::Dockerfile,
            StageStatus::Done,
            match deployment_plan.origin.as_str() {
                "repository" => "Using the repository's own Dockerfile".to_owned(),
                template => format!("Wrote a Dockerfile ({template})"),
            },
        ),
    ];
    for note in &deployment_plan.notes {
        events.push(update(deployment, Stage::Dockerfile, StageStatus::Done, note.clone()));
    }
    for finding in &findings {
        let text =
            format!("{:?} {}: {}:{}: {}", finding.severity, finding.rule, finding.path, finding.line, finding.message);
        events.push(update(deployment, Stage::SecurityScan, StageStatus::Done, text));
    }
    deployment.plan = Some(deployment_plan);
    if let Some(fail) = stage_failure {
        // The plan is kept so the user can read what was found.
        version = timeline::save(store, deployment, version, events).await?;
        timeline::fail(store, deployment, version, fail, now()).await?;
        return Ok(());
    }
    deployment.advance(DeploymentState::Building, now()).map_err(internal)?;
    deployment.set_stage(Stage::Build, StageStatus::Running, None, now());
    events.push(update(deployment, Stage::Build, StageStatus::Running, "Building the image"));
    timeline::save(store, deployment, version, events).await?;
    request_build(&state.ports, deployment, crate::NAME).await
}

/// What stages 2-5 produced.
struct Planned {
    plan: DeploymentPlan,
    analysis: serde_json::Value,
    findings: Vec<security::Finding>,
    /// Env config or the security scan stopped the deploy.
    stage_failure: Option<devgem_common::model::deployment::Failure>,
}

async fn plan_from(
    dir: &std::path::Path,
    deployment: &Deployment,
) -> Result<Planned, devgem_common::model::deployment::Failure> {
    let root = dir.to_owned();
    let analyzed = tokio::task::spawn_blocking(move || analyze_dir(&root, Limits::default()))
        .await
        .map_err(|e| failure(FailureCause::Internal, Stage::Analysis, format!("the analysis stopped: {e}")))?
        .map_err(|e| failure(FailureCause::AnalysisFailed, Stage::Analysis, e.to_string()))?;
    let service = analyzed.primary.clone();
    let service_dir = dir.join(&service.app_dir);
    let existing = std::fs::read_to_string(service_dir.join("Dockerfile")).ok();
    let planned = plan(&service, existing.as_deref()).map_err(|e| {
        let warnings = analyzed.warnings.join("; ");
        let message = if warnings.is_empty() { e.to_string() } else { format!("{e} ({warnings})") };
        failure(FailureCause::AnalysisFailed, Stage::Dockerfile, message)
    })?;
    let origin = match planned.origin {
        Origin::Repository => "repository".to_owned(),
        Origin::Generated { template } => template.to_owned(),
    };
    let port = match planned.listen {
        Listen::Env => 8080,
        Listen::Fixed { port } => port,
    };
    let plan = DeploymentPlan {
        app_dir: service.app_dir.clone(),
        origin,
        dockerfile: planned.dockerfile.clone(),
        dockerignore: planned.dockerignore.clone(),
        start_command: planned.start_command.clone(),
        start_alternatives: service.start_alternatives.iter().map(|c| runnable(&service, c)).collect(),
        port,
        notes: planned.notes.clone(),
    };
    let analysis = serde_json::to_value(&analyzed).unwrap_or_else(|_| json!({}));

    // Stage 4: every required variable needs a value.
    let missing: Vec<String> = service
        .env_vars
        .iter()
        .filter(|v| {
            v.required
                && v.default.is_none()
                && !deployment.env.contains_key(&v.name)
                && !deployment.secret_env.contains_key(&v.name)
        })
        .map(|v| v.name.clone())
        .collect();
    let mut stage_failure = (!missing.is_empty()).then(|| {
        let flags: Vec<String> = missing.iter().map(|m| format!("--env {m}=...")).collect();
        failure(
            FailureCause::MissingEnv,
            Stage::EnvConfig,
            format!("the app needs values for {}; deploy again with {}", missing.join(", "), flags.join(" ")),
        )
    });

    // Stage 5.
    let scan_dir = service_dir.clone();
    let dockerfile = planned.dockerfile.clone();
    let findings =
        tokio::task::spawn_blocking(move || security::scan(&scan_dir, &dockerfile)).await.unwrap_or_default();
    let blocking: Vec<&security::Finding> = findings.iter().filter(|f| f.severity == Severity::High).collect();
    if stage_failure.is_none() && !blocking.is_empty() && !deployment.allow_risky {
        let first = blocking[0];
        stage_failure = Some(failure(
            FailureCause::SecurityBlocked,
            Stage::SecurityScan,
            format!(
                "{} high-severity finding(s), first {}:{}: {}. Fix them, or deploy again with --allow-risky to accept them",
                blocking.len(),
                first.path,
                first.line,
                first.message
            ),
        ));
    }
    Ok(Planned { plan, analysis, findings, stage_failure })
}
