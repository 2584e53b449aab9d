//! The Builder port on the embedded default: a submitted build fetches its source with the Source
//! adapter (a git commit, or a copy of a local directory) and runs in the background on the
//! [`Executor`]. Its log goes to `builds/<id>/log.jsonl` as it happens and, whole, to Blobs
//! ([`log_blob_key`]) at the end; its progress and completion are published on `cloud-builds` in
//! Cloud Build's own notification shape, so the build function's completion handler is the same
//! for both paths.

use super::executor::{BuildError, BuildJob, CancelHandle, Executor, LogLine, cancel_pair};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use devgem_common::clock::Clock;
use devgem_common::events::Topic;
use devgem_common::events::cloud_build::{Build, BuildStatus, CloudBuildNotification, FailureInfo};
use devgem_common::ports::blobs::{Blobs, BlobsExt};
use devgem_common::ports::builder::{BuildHandle, BuildRequest, Builder, BuilderError, log_blob_key};
use devgem_common::ports::bus::{Bus, OutboundMessage};
use devgem_common::ports::source::{Source, SourceLimits};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The log file of a build, one JSON [`LogLine`] per line.
pub const LOG_FILE: &str = "log.jsonl";
/// The build's Cloud Build resource as last published: a restart finds the builds it interrupted.
const BUILD_FILE: &str = "build.json";

fn save_resource(build_dir: &Path, resource: &Build) {
    if let Ok(json) = serde_json::to_vec_pretty(resource) {
        let tmp = build_dir.join(format!("{BUILD_FILE}.tmp"));
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(tmp, build_dir.join(BUILD_FILE));
        }
    }
}

/// The local Builder.
#[derive(Debug, Clone)]
pub struct LocalBuilder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    executor: Arc<Executor>,
    bus: Arc<dyn Bus>,
    blobs: Arc<dyn Blobs>,
    source: Arc<dyn Source>,
    clock: Arc<dyn Clock>,
    running: Mutex<HashMap<String, CancelHandle>>,
}

/// The image name a local build reports, as Cloud Build reports the pushed image.
pub fn image_name(request: &BuildRequest, build_id: &str) -> String {
    format!("devgem.local/{}/{}:{build_id}", request.owner, request.service)
}

impl LocalBuilder {
    pub fn new(
        executor: Arc<Executor>,
        bus: Arc<dyn Bus>,
        blobs: Arc<dyn Blobs>,
        source: Arc<dyn Source>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { inner: Arc::new(Inner { executor, bus, blobs, source, clock, running: Mutex::new(HashMap::new()) }) }
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.inner.executor
    }

    /// Ends the builds a previous DevGem process left running (it was killed with them): each is
    /// reported as `INTERNAL_ERROR` with the reason, so its deployment fails instead of waiting.
    /// Returns their ids.
    pub async fn recover(&self) -> Vec<String> {
        let builds = self.inner.executor.build_dir("");
        let Ok(entries) = std::fs::read_dir(&builds) else { return Vec::new() };
        let mut recovered = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(bytes) = std::fs::read(dir.join(BUILD_FILE)) else { continue };
            let Ok(mut resource) = serde_json::from_slice::<Build>(&bytes) else { continue };
            if resource.status.is_final() || running(&self.inner).contains_key(&resource.id) {
                continue;
            }
            resource.status = BuildStatus::InternalError;
            let detail = "the build was interrupted: DevGem stopped while it ran; deploy again".to_owned();
            resource.status_detail = Some(detail.clone());
            resource.failure_info = Some(FailureInfo { kind: Some("INTERRUPTED".into()), detail: Some(detail) });
            resource.finish_time = Some(self.inner.clock.now());
            save_resource(&dir, &resource);
            match publish(&self.inner, &resource).await {
                Ok(_) => recovered.push(resource.id.clone()),
                Err(e) => {
                    tracing::warn!(build_id = %resource.id, error = %e, "an interrupted build could not be reported")
                }
            }
        }
        recovered
    }

    /// The log of a build so far (or in full, once it has ended).
    pub fn log(&self, build_id: &str) -> std::io::Result<Vec<LogLine>> {
        let text = std::fs::read_to_string(self.inner.executor.build_dir(build_id).join(LOG_FILE))?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

fn running(inner: &Inner) -> std::sync::MutexGuard<'_, HashMap<String, CancelHandle>> {
    inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Builder for LocalBuilder {
    async fn submit(&self, request: BuildRequest) -> Result<BuildHandle, BuilderError> {
        if request.app_dir.split('/').any(|part| part == "..") {
            return Err(BuilderError::Refused(format!("app dir {} leaves the repository", request.app_dir)));
        }
        let build_id = uuid::Uuid::new_v4().to_string();
        let build_dir = self.inner.executor.build_dir(&build_id);
        std::fs::create_dir_all(&build_dir)
            .map_err(|e| BuilderError::Unavailable(format!("{}: {e}", build_dir.display())))?;
        let log_path = build_dir.join(LOG_FILE);
        let log_file = std::fs::File::create(&log_path)
            .map_err(|e| BuilderError::Unavailable(format!("{}: {e}", log_path.display())))?;
        let (handle, cancel) = cancel_pair();
        running(&self.inner).insert(build_id.clone(), handle);

        let created = self.inner.clock.now();
        let mut resource = Build {
            id: build_id.clone(),
            project_id: None,
            status: BuildStatus::Working,
            status_detail: None,
            create_time: Some(created),
            start_time: Some(created),
            finish_time: None,
            log_url: Some(format!("file://{}", log_path.display())),
            logs_bucket: None,
            images: vec![image_name(&request, &build_id)],
            tags: vec![
                format!("devgem-deployment-{}", request.deployment_id),
                format!("devgem-service-{}", request.service),
            ],
            substitutions: [
                ("_SERVICE".to_owned(), request.service.to_string()),
                ("_APP_DIR".to_owned(), request.app_dir.clone()),
            ]
            .into(),
            failure_info: None,
            extra: serde_json::Map::from_iter([(
                "timeout".to_owned(),
                serde_json::Value::String(format!("{}s", request.timeout.as_secs())),
            )]),
        };
        save_resource(&build_dir, &resource);
        publish(&self.inner, &resource).await.map_err(BuilderError::Unavailable)?;

        let log_file = Arc::new(Mutex::new(std::io::BufWriter::new(log_file)));
        let sink = log_file.clone();
        let source_dir = build_dir.join("src");
        let context = source_dir.join(&request.app_dir);
        let job = BuildJob {
            build_id: build_id.clone(),
            context,
            dockerfile: request.dockerfile.clone(),
            dockerignore: request.extra_files.get(".dockerignore").cloned(),
            log: Arc::new(move |line: LogLine| {
                if let (Ok(mut file), Ok(json)) = (sink.lock(), serde_json::to_string(&line)) {
                    // Flushed per line: the build function follows the file while the build runs.
                    let _ = writeln!(file, "{json}").and_then(|()| file.flush());
                }
            }),
            cancel,
            timeout: request.timeout,
        };
        let inner = self.inner.clone();
        let source = request.source.clone();
        let log_url = format!("file://{}", log_path.display());
        tokio::spawn(async move {
            let fetched = inner.source.fetch(&source, &source_dir, SourceLimits::default()).await;
            let result = match fetched {
                Ok(_) => inner.executor.build(job).await,
                Err(e) => Err(BuildError::Fetch(e.to_string())),
            };
            if let Ok(mut file) = log_file.lock() {
                let _ = file.flush();
            }
            store_log(&inner, &resource.id, &log_path).await;
            running(&inner).remove(&resource.id);
            finish(&mut resource, result.as_ref().err(), inner.clock.now());
            if let Ok(outcome) = &result {
                resource.extra.insert(
                    "results".to_owned(),
                    serde_json::json!({ "images": [{ "name": resource.images.first(), "digest": format!("sha256:{}", outcome.image.digest) }] }),
                );
            }
            save_resource(&inner.executor.build_dir(&resource.id), &resource);
            // The completion must not be lost: retry until the bus takes it.
            let mut delay = std::time::Duration::from_millis(100);
            while let Err(e) = publish(&inner, &resource).await {
                tracing::warn!(build_id = %resource.id, error = %e, "publishing the build's completion failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        });
        Ok(BuildHandle { build_id, log_url: Some(log_url) })
    }

    async fn delete_build(&self, build_id: &str) -> Result<bool, BuilderError> {
        if running(&self.inner).contains_key(build_id) {
            return Err(BuilderError::Refused(format!("build {build_id} is running")));
        }
        if build_id.is_empty() || build_id.contains(['/', '.']) {
            return Err(BuilderError::Refused(format!("{build_id:?} is not a build id")));
        }
        let dir = self.inner.executor.build_dir(build_id);
        let removed = match std::fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(BuilderError::Unavailable(format!("{}: {e}", dir.display()))),
        };
        if let Some(key) = log_blob_key(build_id) {
            let _ = self.inner.blobs.delete(&key).await;
        }
        Ok(removed)
    }

    async fn log_lines(&self, build_id: &str, from: usize) -> Result<Vec<String>, BuilderError> {
        let lines = self.log(build_id).map_err(|_| BuilderError::NotFound(build_id.to_owned()))?;
        Ok(lines.into_iter().skip(from).map(|line| line.text).collect())
    }

    async fn cancel(&self, build_id: &str) -> Result<(), BuilderError> {
        match running(&self.inner).get(build_id) {
            Some(handle) => {
                handle.cancel();
                Ok(())
            }
            None => Err(BuilderError::NotFound(build_id.to_owned())),
        }
    }
}

/// Sets the final status of `resource` from the build's result, as Cloud Build reports it.
fn finish(resource: &mut Build, error: Option<&BuildError>, now: DateTime<Utc>) {
    resource.finish_time = Some(now);
    let (status, kind) = match error {
        None => (BuildStatus::Success, None),
        Some(BuildError::Cancelled) => (BuildStatus::Cancelled, None),
        Some(BuildError::Timeout(_)) => (BuildStatus::Timeout, None),
        Some(BuildError::Step { .. } | BuildError::Dockerfile(_)) => (BuildStatus::Failure, Some("USER_BUILD_STEP")),
        Some(BuildError::Fetch(_)) => (BuildStatus::Failure, Some("FETCH_SOURCE_FAILED")),
        Some(BuildError::Unavailable(_)) => (BuildStatus::InternalError, None),
    };
    resource.status = status;
    if let Some(error) = error {
        resource.status_detail = Some(error.to_string());
        resource.failure_info = Some(FailureInfo { kind: kind.map(str::to_owned), detail: Some(error.to_string()) });
    }
}

/// Keeps the whole log as text in Blobs, where the build function reads a failure's last lines.
async fn store_log(inner: &Inner, build_id: &str, log_path: &Path) {
    let Some(key) = log_blob_key(build_id) else { return };
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let lines: String =
        text.lines().filter_map(|l| serde_json::from_str::<LogLine>(l).ok()).map(|l| format!("{}\n", l.text)).collect();
    if let Err(e) = inner.blobs.put_bytes(&key, lines.into_bytes().into()).await {
        tracing::warn!(%build_id, error = %e, "the build log was not stored");
    }
}

async fn publish(inner: &Inner, resource: &Build) -> Result<String, String> {
    let notification =
        CloudBuildNotification { build_id: resource.id.clone(), status: resource.status, build: resource.clone() };
    let data = serde_json::to_vec(resource).map_err(|e| e.to_string())?;
    let message = OutboundMessage {
        data: data.into(),
        attributes: notification.attributes(),
        ordering_key: Some(resource.id.clone()),
    };
    inner.bus.publish(Topic::CloudBuilds, message).await.map_err(|e| e.to_string())
}

/// The executor's settings for a data dir: the builder's directory inside it, the data dir and
/// the user's credential directories hidden from steps, host toolchains on this process's PATH.
pub fn executor_for(data_dir: &Path) -> Result<Executor, BuildError> {
    let mut hidden: Vec<PathBuf> = vec![std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned())];
    hidden.extend(super::Sandbox::credential_paths());
    Executor::new(super::ExecutorConfig {
        root: hidden[0].join("builder"),
        hidden,
        host_path: std::env::var_os("PATH").unwrap_or_default(),
    })
}
