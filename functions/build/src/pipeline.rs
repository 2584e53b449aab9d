//! The build stage's handlers. Both are idempotent: the submit runs once per deployment attempt
//! (ledger), and a notification only moves a deployment that is still building with that build.

use crate::AppState;
use crate::repair::package_repair;
use devgem_common::deployments::rebuild;
use devgem_common::events::cloud_build::{BuildStatus, CloudBuildNotification};
use devgem_common::events::{EventContext, ReleaseRequested};
use devgem_common::handler::HandlerError;
use devgem_common::ids::DeploymentId;
use devgem_common::ledger::{LedgerError, Once, recorded, run_once};
use devgem_common::model::deployment::{Deployment, DeploymentState, FailureCause, Stage, StageStatus};
use devgem_common::ports::builder::{BuildRequest, BuilderError, log_blob_key};
use devgem_common::ports::bus::BusExt;
use devgem_common::ports::source::SourceSpec;
use devgem_common::ports::store::{NewEvent, SessionEventKind, Store};
use devgem_common::timeline::{self, failure, update};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a build may run (Cloud Build's timeout; the local builder's too).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How many lines of a failed build's log the failure keeps.
const LOG_TAIL: usize = 20;

/// The ledger key of a deployment's build submit: one build per attempt (each repair that
/// needs a new image is a new attempt).
fn submit_key(id: &DeploymentId, repairs: u32) -> String {
    match repairs {
        0 => format!("build-{id}"),
        n => format!("build-{id}-r{n}"),
    }
}

/// Whether `build_id` is a build of an earlier attempt, which a repair replaced.
async fn superseded(store: &dyn Store, deployment: &Deployment, build_id: &str) -> Result<bool, HandlerError> {
    for attempt in 0..deployment.repairs {
        if recorded::<String>(store, &submit_key(&deployment.id, attempt)).await?.as_deref() == Some(build_id) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn internal(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Internal(e.to_string())
}

pub async fn on_build_requested(
    state: &AppState,
    event: devgem_common::events::BuildRequested,
) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let now = || state.ports.clock.now();
    let Some((mut deployment, version)) = timeline::load(store, &event.deployment_id).await? else {
        return Err(HandlerError::Poison(format!("deployment {} does not exist", event.deployment_id)));
    };
    if deployment.state.is_terminal() || deployment.build_id.is_some() {
        return Ok(());
    }
    if deployment.abort_requested {
        // A build submitted just before the abort arrived (its id not saved yet) is stopped too.
        if let Some(build_id) = recorded::<String>(store, &submit_key(&deployment.id, deployment.repairs)).await? {
            let _ = state.builder.cancel(&build_id).await;
        }
        timeline::abort(store, &mut deployment, version, now()).await?;
        return Ok(());
    }
    if deployment.state != DeploymentState::Building {
        return Ok(());
    }
    let Some(plan) = deployment.plan.clone() else {
        return Err(internal(format!("deployment {} is building without a plan", deployment.id)));
    };
    let mut extra_files = BTreeMap::new();
    if plan.origin != "repository" {
        extra_files.insert(".dockerignore".to_owned(), plan.dockerignore.clone());
    }
    let request = BuildRequest {
        deployment_id: deployment.id.clone(),
        owner: deployment.owner.clone(),
        service: deployment.service.clone(),
        // The commit that was analyzed, so the build sees the same source.
        source: SourceSpec {
            location: deployment.source.location.clone(),
            git_ref: deployment.commit.clone().or_else(|| deployment.source.git_ref.clone()),
        },
        dockerfile: plan.dockerfile.clone(),
        extra_files,
        app_dir: plan.app_dir.clone(),
        timeout: BUILD_TIMEOUT,
    };
    let builder = state.builder.clone();
    let key = submit_key(&deployment.id, deployment.repairs);
    let submitted = run_once(store, state.ports.clock.as_ref(), &key, chrono::Duration::minutes(5), || async move {
        builder.submit(request).await.map(|handle| handle.build_id)
    })
    .await;
    let build_id = match submitted {
        Ok(Once::Applied(id) | Once::AlreadyDone(id)) => id,
        Err(LedgerError::InProgress { .. }) => {
            return Err(HandlerError::Transient("the build is being submitted".into()));
        }
        Err(LedgerError::Effect(BuilderError::Refused(why))) => {
            let fail = failure(FailureCause::BuildFailed, Stage::Build, format!("the build was refused: {why}"));
            timeline::fail(store, &mut deployment, version, fail, now()).await?;
            return Ok(());
        }
        Err(LedgerError::Effect(e)) => return Err(HandlerError::Transient(e.to_string())),
        Err(LedgerError::Store(e)) => return Err(e.into()),
    };
    deployment.build_id = Some(build_id.clone());
    deployment.build_started(&build_id, now());
    let events = vec![update(&deployment, Stage::Build, StageStatus::Running, format!("Build {build_id} started"))];
    timeline::save(store, &deployment, version, events).await?;
    tokio::spawn(follow_log(state.clone(), deployment, build_id));
    Ok(())
}

/// How often a running build's new log lines go out, at most (one session event each time).
const LOG_EVERY: Duration = Duration::from_millis(500);
/// The most lines one `build_log` event carries.
const LOG_BATCH: usize = 200;

/// The build's log lines not yet sent, as `build_log` events, with the deployment's count of
/// sent lines raised to match (the caller saves both in one transaction, so no line goes twice).
async fn unsent_log(state: &AppState, deployment: &mut Deployment, build_id: &str) -> Vec<NewEvent> {
    let from = usize::try_from(deployment.build_log_sent).unwrap_or(usize::MAX);
    let lines = state.builder.log_lines(build_id, from).await.unwrap_or_default();
    let events = lines
        .chunks(LOG_BATCH)
        .enumerate()
        .map(|(i, chunk)| {
            let data = serde_json::json!({ "build_id": build_id, "first_line": from + i * LOG_BATCH, "lines": chunk });
            timeline::event(deployment, SessionEventKind::BuildLog, data)
        })
        .collect();
    deployment.build_log_sent += lines.len() as u64;
    events
}

/// Streams a running build's log to the deployment's session as `build_log` events, batched
/// every [`LOG_EVERY`], while the deployment is in the build stage. The completion handler sends
/// what is left, in the same transaction as the stage change.
pub async fn follow_log(state: AppState, deployment: Deployment, build_id: String) {
    use devgem_common::ports::store::{StoreError, Write, to_data};
    let store = state.ports.store.as_ref();
    let started = tokio::time::Instant::now();
    while started.elapsed() < BUILD_TIMEOUT {
        tokio::time::sleep(LOG_EVERY).await;
        let Ok(Some((mut current, version))) = timeline::load(store, &deployment.id).await else { return };
        if current.state != DeploymentState::Building || current.build_id.as_deref() != Some(build_id.as_str()) {
            return;
        }
        let events = unsent_log(&state, &mut current, &build_id).await;
        if events.is_empty() {
            continue;
        }
        let writes = |data| -> Result<Vec<Write>, StoreError> {
            Ok(vec![
                Write::Update { key: timeline::deployment_key(&current)?, expected_version: version, data },
                Write::Append { session: current.session_id.clone(), owner: current.owner.clone(), events },
            ])
        };
        // A conflict means the deployment moved: the next tick (or the completion) sends the lines.
        if let Ok(data) = to_data(&current)
            && let Ok(writes) = writes(data)
        {
            let _ = store.commit(writes).await;
        }
    }
}

pub async fn on_cloud_build(state: &AppState, notification: CloudBuildNotification) -> Result<(), HandlerError> {
    let store = state.ports.store.as_ref();
    let now = || state.ports.clock.now();
    // Builds that DevGem did not start (other builds of the project) are none of its business.
    let Some(tag) = notification.build.deployment_tag() else { return Ok(()) };
    let id = DeploymentId::parse(tag).map_err(|e| HandlerError::Poison(format!("build tag {tag}: {e}")))?;
    let Some((mut deployment, mut version)) = timeline::load(store, &id).await? else {
        return Err(HandlerError::Poison(format!(
            "build {} names deployment {id}, which does not exist",
            notification.build_id
        )));
    };
    if deployment.state.is_terminal() {
        return Ok(());
    }
    let adopting = deployment.build_id.is_none();
    if adopting && superseded(store, &deployment, &notification.build_id).await? {
        return Ok(());
    }
    match deployment.build_id.as_deref() {
        // The notification came before the submit saved the id. A deployment has one build (the
        // submit runs once), so this is it: adopt the id with the change this notification makes.
        None => deployment.build_id = Some(notification.build_id.clone()),
        Some(ours) if ours != notification.build_id => return Ok(()),
        Some(_) => {}
    }
    // Its times, for `/stats`: Cloud Build's own when it gives them.
    let started = notification.build.start_time.unwrap_or_else(now);
    deployment.build_started(&notification.build_id, started);
    if notification.status.is_final() {
        keep_log(state, &notification.build_id).await;
        let finished = notification.build.finish_time.unwrap_or_else(now);
        deployment.build_finished(&notification.build_id, started, finished, notification.status.as_str());
    }
    match notification.status {
        BuildStatus::Queued | BuildStatus::Pending | BuildStatus::Working | BuildStatus::StatusUnknown => {
            let raised = deployment.raise_progress(50, now()).map_err(internal)?;
            if raised || adopting {
                timeline::save(store, &deployment, version, Vec::new()).await?;
            }
            // The submit's handler follows the log once it has saved the id; having saved it here
            // first, this handler does (the submit's then finds the id and stops).
            if adopting {
                tokio::spawn(follow_log(state.clone(), deployment, notification.build_id));
            }
            Ok(())
        }
        BuildStatus::Success if deployment.abort_requested => {
            timeline::abort(store, &mut deployment, version, now()).await?;
            Ok(())
        }
        BuildStatus::Success => {
            if deployment.state == DeploymentState::Building {
                let image = notification.build.images.first().cloned().ok_or_else(|| {
                    HandlerError::Poison(format!("build {} succeeded without an image", notification.build_id))
                })?;
                deployment.image = Some(image);
                // The log lines the follower has not sent go out with the stage change.
                let mut events = unsent_log(state, &mut deployment, &notification.build_id).await;
                deployment.set_stage(Stage::Build, StageStatus::Done, None, now());
                deployment.advance(DeploymentState::Deploying, now()).map_err(internal)?;
                deployment.set_stage(Stage::Deploy, StageStatus::Running, None, now());
                events.push(update(&deployment, Stage::Deploy, StageStatus::Running, "Starting the new revision"));
                timeline::save(store, &deployment, version, events).await?;
            }
            if deployment.state == DeploymentState::Deploying {
                request_release(state, &deployment).await?;
            }
            Ok(())
        }
        BuildStatus::Cancelled if deployment.abort_requested => {
            timeline::abort(store, &mut deployment, version, now()).await?;
            Ok(())
        }
        status => {
            let detail = notification
                .build
                .status_detail
                .clone()
                .unwrap_or_else(|| format!("the build ended {}", status.as_str()));
            let mut fail = failure(FailureCause::BuildFailed, Stage::Build, detail);
            if status == BuildStatus::Timeout {
                fail.cause = FailureCause::Timeout;
            }
            fail.log_tail = log_tail(state, &notification.build_id).await;
            let rest = unsent_log(state, &mut deployment, &notification.build_id).await;
            if !rest.is_empty() {
                version = timeline::save(store, &deployment, version, rest).await?;
            }
            // A missing system package: build again with it (the deployment's repairs allowing).
            // The whole log is read, since pip and npm write much after the line that says why.
            let log = match status {
                BuildStatus::Failure if !deployment.abort_requested => {
                    state.builder.log_lines(&notification.build_id, 0).await.unwrap_or_default()
                }
                _ => Vec::new(),
            };
            if let Some((plan, reason)) = deployment.plan.as_ref().and_then(|p| package_repair(p, &log))
                && rebuild(&state.ports, &mut deployment, version, plan, &reason, crate::NAME).await?
            {
                return Ok(());
            }
            timeline::fail(store, &mut deployment, version, fail, now()).await?;
            Ok(())
        }
    }
}

/// Makes sure a finished build's whole log is in Blobs ([`log_blob_key`]), where the failure's
/// cause and the api's `build_log` read it: the local builder leaves it there itself; Cloud
/// Build's log is in Cloud Logging, read through the builder. Best effort: without it the
/// failure message has no log lines, nothing else changes.
async fn keep_log(state: &AppState, build_id: &str) {
    use devgem_common::ports::blobs::BlobsExt as _;
    let Some(key) = log_blob_key(build_id) else { return };
    match state.ports.blobs.get(&key).await {
        Ok(_) => return,
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            tracing::warn!(build_id, error = %e, "cannot check for the build's log in Blobs");
            return;
        }
    }
    match state.builder.log_lines(build_id, 0).await {
        Ok(lines) if !lines.is_empty() => {
            let mut text = lines.join("\n");
            text.push('\n');
            if let Err(e) = state.ports.blobs.put_bytes(&key, bytes::Bytes::from(text)).await {
                tracing::warn!(build_id, error = %e, "cannot keep the build's log in Blobs");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(build_id, error = %e, "cannot read the build's log from the builder"),
    }
}

async fn log_tail(state: &AppState, build_id: &str) -> Vec<String> {
    devgem_common::deployments::build_log_tail(state.ports.blobs.as_ref(), build_id, LOG_TAIL).await
}

async fn request_release(state: &AppState, deployment: &Deployment) -> Result<(), HandlerError> {
    let (Some(build_id), Some(image)) = (deployment.build_id.clone(), deployment.image.clone()) else {
        return Err(internal(format!("deployment {} has no image to release", deployment.id)));
    };
    let release = ReleaseRequested {
        deployment_id: deployment.id.clone(),
        owner: deployment.owner.clone(),
        session_id: deployment.session_id.clone(),
        build_id,
        image,
    };
    let ctx = EventContext::new(crate::NAME, deployment.correlation_id.clone());
    state
        .ports
        .bus
        .publish_event(&release, &ctx, state.ports.clock.now())
        .await
        .map_err(|e| HandlerError::Transient(format!("publishing the release request: {e}")))?;
    Ok(())
}

/// `dev.devgem.deployment.abort.v1` on `control`: cancels the deployment's build (its
/// `CANCELLED` notification then ends the deployment as aborted), or ends a deployment whose
/// build has not been submitted.
pub async fn on_control(state: &AppState, event: devgem_common::events::ControlEvent) -> Result<(), HandlerError> {
    let devgem_common::events::ControlEvent::Abort(abort) = event else { return Ok(()) };
    let store = state.ports.store.as_ref();
    let Some((mut deployment, version)) = timeline::load(store, &abort.deployment_id).await? else { return Ok(()) };
    if deployment.state != DeploymentState::Building {
        return Ok(());
    }
    let build_id = match deployment.build_id.clone() {
        Some(id) => Some(id),
        None => recorded::<String>(store, &submit_key(&deployment.id, deployment.repairs)).await?,
    };
    if let Some(build_id) = build_id
        && state.builder.cancel(&build_id).await.is_ok()
    {
        return Ok(());
    }
    timeline::abort(store, &mut deployment, version, state.ports.clock.now()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use devgem_common::clock::{Clock, SystemClock};
    use devgem_common::ports::Ports;
    use devgem_common::ports::blobs::BlobsExt as _;
    use devgem_common::ports::builder::{BuildHandle, Builder};
    use devgem_infra::local::{LocalBlobs, LocalBus, LocalStore};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A builder whose log lives elsewhere (as Cloud Build's does in Cloud Logging).
    #[derive(Debug, Default)]
    struct RemoteLog {
        reads: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Builder for RemoteLog {
        async fn submit(&self, _: BuildRequest) -> Result<BuildHandle, BuilderError> {
            Err(BuilderError::Refused("not in this test".into()))
        }
        async fn cancel(&self, _: &str) -> Result<(), BuilderError> {
            Ok(())
        }
        async fn delete_build(&self, _: &str) -> Result<bool, BuilderError> {
            Ok(false)
        }
        async fn log_lines(&self, _: &str, from: usize) -> Result<Vec<String>, BuilderError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let lines = ["Step 1/2 : FROM python:3.12", "error: no module named flask"];
            Ok(lines.iter().skip(from).map(|l| (*l).to_owned()).collect())
        }
    }

    #[tokio::test]
    async fn a_finished_builds_log_is_kept_in_blobs_once_when_the_builder_did_not_leave_it_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Arc::new(LocalStore::open(&dir.path().join("store.db"), clock.clone()).expect("store"));
        let bus = Arc::new(LocalBus::open(&dir.path().join("bus.db"), clock.clone()).expect("bus"));
        let blobs = Arc::new(LocalBlobs::open(&dir.path().join("blobs")).expect("blobs"));
        let builder = Arc::new(RemoteLog::default());
        let state = AppState { ports: Ports { store, bus, blobs, clock }, builder: builder.clone() };

        keep_log(&state, "b-1").await;
        assert_eq!(log_tail(&state, "b-1").await, ["Step 1/2 : FROM python:3.12", "error: no module named flask"]);
        keep_log(&state, "b-1").await;
        assert_eq!(builder.reads.load(Ordering::SeqCst), 1, "a log already in Blobs is not read again");

        // A builder that leaves its own log (the local one) keeps it as it is.
        let key = log_blob_key("b-2").expect("key");
        state.ports.blobs.put_bytes(&key, bytes::Bytes::from_static(b"local line\n")).await.expect("put");
        keep_log(&state, "b-2").await;
        assert_eq!(log_tail(&state, "b-2").await, ["local line"]);
        assert_eq!(builder.reads.load(Ordering::SeqCst), 1);
    }
}
