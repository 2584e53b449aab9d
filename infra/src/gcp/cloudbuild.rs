//! The Builder port on Cloud Build (`google-cloud-build-v1`), in the configured region.
//!
//! This module owns:
//! - [`CloudBuilder`]: `submit` creates a build and returns at once with its id; it does not wait.
//!   Completion arrives the way it does for local builds: Cloud Build publishes every status
//!   change of the project's builds on its own `cloud-builds` Pub/Sub topic, in the shape
//!   `devgem_common::events::cloud_build::CloudBuildNotification` decodes, and the build
//!   function's completion handler reads it (the build is recognised by its
//!   `devgem-deployment-<id>` tag).
//! - The build itself ([`CloudBuilder::build_spec`]). Cloud Build clones the repository at the
//!   requested ref (nothing is uploaded), writes DevGem's Dockerfile and extra files into the app
//!   directory, builds and pushes with kaniko (layer cache in the registry) to the owner's path of
//!   the image repository ([`image_name`]), then pulls the image back so that Cloud Build itself
//!   pushes and reports it: a build's `images` (and `results.images` with the digest) are only
//!   filled for images that are in the worker's Docker daemon, and the completion handler takes
//!   the image from there.
//! - Build logs, read from Cloud Logging ([`CloudLogging`]): Cloud Build writes one entry per line
//!   (`CLOUD_LOGGING_ONLY`, which a user-specified service account requires anyway). Each build's
//!   lines are kept in an append-only cache, so `log_lines(from)` numbers stay stable while the
//!   build runs and a follower only fetches what is new (see [`Builder::log_lines`] below).
//!
//! Retries: every call goes through [`Api`] ("Cloud Build": retries with backoff, one breaker).
//! `CreateBuild` has no request id, so a retry after an attempt whose outcome is unknown (a
//! timeout, a 503, a lost connection) could create a second build. Each submit therefore tags its
//! build with a fresh `devgem-submit-<uuid>`, and after such an attempt the next one first looks
//! for a build with that tag (`ListBuilds`) and adopts it instead of creating another. A 409
//! ("already exists") is answered the same way. A 429 is not ambiguous (the request was turned
//! away) and is simply retried.

use crate::gcp::GcpConfig;
use crate::gcp::call::{Api, CallError};
use crate::gcp::client::{GoogleApiError, configure, setup_error};
use crate::gcp::logging::{CloudLogging, LoggingError};
use crate::resilience::{Classify, Failure};
use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use devgem_common::events::cloud_build::BuildStatus;
use devgem_common::ids::UserId;
use devgem_common::ports::blobs::{Blobs, BlobsExt};
use devgem_common::ports::builder::{BuildHandle, BuildRequest, Builder, BuilderError, log_blob_key};
use devgem_common::ports::source::SourceLocation;
use google_cloud_build_v1::client::CloudBuild;
use google_cloud_build_v1::model::build_options::LoggingMode;
use google_cloud_build_v1::model::{Build, BuildOperationMetadata, BuildOptions, BuildStep};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_longrunning::model::Operation;
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The API name in breaker messages.
const API: &str = "Cloud Build";
/// The step that clones the repository.
pub const GIT_IMAGE: &str = "gcr.io/cloud-builders/git";
/// The image builder: pinned, so a build does not change under DevGem with a new release.
pub const KANIKO_IMAGE: &str = "gcr.io/kaniko-project/executor:v1.23.2";
/// The step that pulls the pushed image back (see the module docs).
pub const DOCKER_IMAGE: &str = "gcr.io/cloud-builders/docker";
/// Where the repository is cloned, under the build's `/workspace`.
const CHECKOUT_DIR: &str = "src";
/// The Dockerfile and extra files travel inside the build request (base64 in a step's
/// arguments); more than this does not belong there.
pub const MAX_INLINE_BYTES: usize = 256 * 1024;
/// Cloud Build's longest build.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long one request may take before it counts as failed (and is retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Cloud Logging may index an entry a little after entries stamped later: each read of a
/// running build's log looks this far back before the newest line it has, and skips the entries
/// it already holds (by `insertId`).
const LOG_LOOKBACK: chrono::Duration = chrono::Duration::seconds(60);
/// The most lines of one build kept (and returned); a log longer than this is cut, with a line
/// that says so. Reading it costs one Logging request per 1,000 lines.
pub const MAX_LOG_LINES: usize = 20_000;
/// A build's cached log is dropped after this long without a read.
const LOG_CACHE_IDLE: Duration = Duration::from_secs(30 * 60);

/// Why one attempt of a call failed.
#[derive(Debug, thiserror::Error)]
enum CallFailure {
    #[error(transparent)]
    Api(#[from] GoogleApiError),
    /// Cloud Build answered something DevGem cannot use.
    #[error("{0}")]
    Answer(String),
}

impl Classify for CallFailure {
    fn failure(&self) -> Failure {
        match self {
            CallFailure::Api(e) => e.failure(),
            // Asking again would get the same answer.
            CallFailure::Answer(_) => Failure::Refused,
        }
    }
}

impl CallFailure {
    fn api(&self) -> Option<&GoogleApiError> {
        match self {
            CallFailure::Api(e) => Some(e),
            CallFailure::Answer(_) => None,
        }
    }
}

/// The lines of one build's log read so far; only ever appended to.
#[derive(Debug, Default)]
struct BuildLog {
    lines: Vec<String>,
    /// The `insertId`s of the entries in `lines`.
    seen: HashSet<String>,
    /// The newest entry's timestamp: the next read starts [`LOG_LOOKBACK`] before it.
    newest: Option<DateTime<Utc>>,
    truncated: bool,
}

type SharedLog = Arc<tokio::sync::Mutex<BuildLog>>;

/// The Builder port on Cloud Build. See the module docs.
#[derive(Debug)]
pub struct CloudBuilder {
    client: CloudBuild,
    logging: Arc<CloudLogging>,
    /// Where [`CloudBuilder::store_log`] keeps a build's whole log ([`log_blob_key`]).
    blobs: Option<Arc<dyn Blobs>>,
    project: String,
    region: String,
    image_repository: Option<String>,
    build_service_account: Option<String>,
    /// Where requests go, for error messages.
    endpoint: String,
    api: Api,
    logs: Mutex<HashMap<String, (SharedLog, Instant)>>,
}

/// The path component of an owner in image names. Artifact Registry takes lowercase letters,
/// digits and separators: an id that is already that is kept as it is (readable); any other is
/// lowercased, other characters become `-`, and a hash of the original id is appended, so two
/// owners that differ only in case or punctuation never share a path.
pub fn owner_path(owner: &UserId) -> String {
    let raw = owner.as_str();
    let mut path = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            path.push(c);
        } else if !path.is_empty() && !path.ends_with('-') {
            path.push('-');
        }
    }
    let mut path: String = path.trim_end_matches('-').chars().take(64).collect();
    if path != raw {
        let hash = sha2::Sha256::digest(raw.as_bytes());
        let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
        path = if path.is_empty() { format!("u-{hex}") } else { format!("{}-{hex}", path.trim_end_matches('-')) };
    }
    path
}

/// Where a deployment's image is pushed: `{repository}/{owner}/{service}:{deployment}`.
pub fn image_name(image_repository: &str, request: &BuildRequest) -> String {
    format!(
        "{}/{}/{}:{}",
        image_repository.trim_end_matches('/'),
        owner_path(&request.owner),
        request.service,
        request.deployment_id
    )
}

/// `DEVGEM_IMAGE_REPOSITORY`, checked: `HOST/PROJECT/REPOSITORY[/...]` in lowercase.
fn check_repository(repository: Option<&str>) -> Result<&str, BuilderError> {
    const HINT: &str = "set it to REGION-docker.pkg.dev/PROJECT/REPO (an Artifact Registry Docker repository)";
    let Some(repository) = repository else {
        return Err(BuilderError::Refused(format!("DEVGEM_IMAGE_REPOSITORY is not set; {HINT}")));
    };
    let repository = repository.trim_end_matches('/');
    let segments: Vec<&str> = repository.split('/').collect();
    let valid = segments.len() >= 3
        && segments.iter().all(|s| !s.is_empty())
        && repository.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._/".contains(&b));
    if valid {
        Ok(repository)
    } else {
        Err(BuilderError::Refused(format!("DEVGEM_IMAGE_REPOSITORY={repository:?} is not an image repository; {HINT}")))
    }
}

/// A path inside the repository, normalised (`./a//b/` → `a/b`); `..`, control characters and
/// (for files) the empty path are refused.
fn relative_path(what: &str, raw: &str, allow_root: bool) -> Result<String, BuilderError> {
    if raw.chars().any(char::is_control) {
        return Err(BuilderError::Refused(format!("{what} {raw:?} contains control characters")));
    }
    let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err(BuilderError::Refused(format!("{what} {raw:?} leaves the repository")));
    }
    if parts.is_empty() && !allow_root {
        return Err(BuilderError::Refused(format!("{what} {raw:?} names no file")));
    }
    Ok(parts.join("/"))
}

/// `s` quoted for `sh`: taken literally, whatever it contains.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as Cloud Build passes it on: it expands `$NAME` and `${NAME}` in step arguments
/// (substitutions), and `$$` is a literal `$`.
fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

fn step(id: &str, image: &str, args: Vec<String>) -> BuildStep {
    BuildStep::new().set_id(id).set_name(image).set_args(args.iter().map(|a| literal(a)))
}

/// A build tag as Cloud Build accepts it.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A Cloud Build id: anything else cannot name a build (and must not reach a resource path).
fn valid_build_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl CloudBuilder {
    /// Connects to Cloud Build at `config.endpoints.cloud_build` with anonymous credentials if
    /// set (a stand-in), else Google's endpoint with Application Default Credentials. Logs are
    /// read through `logging`, which the Cloud Run runtime may share (one pace for the quota).
    pub async fn connect(config: &GcpConfig, logging: Arc<CloudLogging>) -> Result<Self, BuilderError> {
        Self::connect_with(config, logging, Api::new(API)).await
    }

    /// [`connect`](Self::connect) with the caller's retries and breaker (tests keep the delays
    /// short).
    pub async fn connect_with(config: &GcpConfig, logging: Arc<CloudLogging>, api: Api) -> Result<Self, BuilderError> {
        if config.project.is_empty() {
            return Err(BuilderError::Refused(
                "GOOGLE_CLOUD_PROJECT is not set; set it to the GCP project id DevGem runs in".into(),
            ));
        }
        // Retries of CreateBuild check for the build first (see the module docs).
        let custom = config.endpoints.cloud_build.as_deref();
        let endpoint = custom.unwrap_or("https://cloudbuild.googleapis.com").to_owned();
        let client = configure(CloudBuild::builder(), custom).build().await.map_err(|e| {
            BuilderError::Unavailable(setup_error("Cloud Build", "DEVGEM_CLOUD_BUILD_ENDPOINT", custom, &e))
        })?;
        Ok(Self {
            client,
            logging,
            blobs: None,
            project: config.project.clone(),
            region: config.region.clone(),
            image_repository: config.image_repository.clone(),
            build_service_account: config.build_service_account.clone(),
            endpoint,
            api,
            logs: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps builds' whole logs in `blobs` ([`CloudBuilder::store_log`]) and removes them with
    /// [`Builder::delete_build`].
    pub fn with_blobs(mut self, blobs: Arc<dyn Blobs>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// `projects/{project}/locations/{region}`: builds run in the region of users' services.
    pub fn parent(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.region)
    }

    /// The Build resource that `submit` creates for `request`, tagged `submit_tag` (see the
    /// module docs). Refused, with what to do, when the request cannot be built on Cloud Build.
    pub fn build_spec(&self, request: &BuildRequest, submit_tag: &str) -> Result<Build, BuilderError> {
        let repository = check_repository(self.image_repository.as_deref())?;
        let url = match &request.source.location {
            SourceLocation::Git { url } => url,
            SourceLocation::Local { path } => {
                return Err(BuilderError::Refused(format!(
                    "{} is a directory on DevGem's machine, which Cloud Build cannot read; push the code to a git \
                     host and deploy its https URL, or deploy the directory with the embedded builder (`devgem up`)",
                    path.display()
                )));
            }
        };
        // Which hosts may be fetched is the source policy's decision (https, or http for hosts
        // the operator allowed), made before the analysis; here only URLs git can clone pass.
        let web = url.starts_with("https://") || url.starts_with("http://");
        if !web || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BuilderError::Refused(format!("{url:?} is not an https git URL; Cloud Build clones those")));
        }
        let git_ref = request.source.git_ref.as_deref().map(str::trim).filter(|r| !r.is_empty());
        if let Some(git_ref) = git_ref
            && (git_ref.starts_with('-') || git_ref.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(BuilderError::Refused(format!("{git_ref:?} is not a git branch, tag or commit")));
        }
        let app_dir = relative_path("app dir", &request.app_dir, true)?;
        let in_app = |file: &str| if app_dir.is_empty() { file.to_owned() } else { format!("{app_dir}/{file}") };
        let mut files = Vec::new();
        for (path, content) in &request.extra_files {
            files.push((in_app(&relative_path("extra file", path, false)?), content.as_str()));
        }
        // Last, so that the request's Dockerfile is the one built even if an extra file has its name.
        files.push((in_app("Dockerfile"), request.dockerfile.as_str()));
        let inline: usize = files.iter().map(|(_, content)| content.len()).sum();
        if inline > MAX_INLINE_BYTES {
            return Err(BuilderError::Refused(format!(
                "the Dockerfile and extra files are {inline} bytes; at most {MAX_INLINE_BYTES} travel with a build"
            )));
        }
        let image = image_name(repository, request);
        let tags = [
            "devgem".to_owned(),
            format!("devgem-deployment-{}", request.deployment_id),
            format!("devgem-service-{}", request.service),
            submit_tag.to_owned(),
        ];
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(BuilderError::Refused(format!(
                "{bad:?} is not a valid Cloud Build tag (deployment id too long?)"
            )));
        }
        if request.timeout.is_zero() {
            return Err(BuilderError::Refused("a build needs a timeout above zero".into()));
        }

        let mut steps = Vec::new();
        match git_ref {
            // Without blobs: the checkout fetches only the files of the commit it needs. A
            // server that does not filter sends everything, and git says so and goes on.
            Some(git_ref) => {
                let clone = ["clone", "--filter=blob:none", "--no-checkout", "--", url, CHECKOUT_DIR];
                steps.push(step("clone", GIT_IMAGE, clone.map(str::to_owned).to_vec()));
                let checkout = ["checkout", "--quiet", git_ref];
                steps.push(step("checkout", GIT_IMAGE, checkout.map(str::to_owned).to_vec()).set_dir(CHECKOUT_DIR));
            }
            None => {
                let clone = ["clone", "--depth=1", "--", url, CHECKOUT_DIR];
                steps.push(step("clone", GIT_IMAGE, clone.map(str::to_owned).to_vec()));
            }
        }
        let mut script = String::from("set -eu\n");
        for (path, content) in &files {
            if let Some((dir, _)) = path.rsplit_once('/') {
                script.push_str(&format!("mkdir -p {}\n", sh_quote(dir)));
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(content);
            script.push_str(&format!("echo {} | base64 -d > {}\n", sh_quote(&encoded), sh_quote(path)));
        }
        steps
            .push(step("files", GIT_IMAGE, vec!["-c".to_owned(), script]).set_entrypoint("bash").set_dir(CHECKOUT_DIR));
        let context = if app_dir.is_empty() {
            format!("/workspace/{CHECKOUT_DIR}")
        } else {
            format!("/workspace/{CHECKOUT_DIR}/{app_dir}")
        };
        let kaniko = vec![
            format!("--dockerfile={context}/Dockerfile"),
            format!("--context=dir://{context}"),
            format!("--destination={image}"),
            // Layers are cached in the registry next to the image ({image}/cache).
            "--cache=true".to_owned(),
            format!("--label=dev.devgem.deployment={}", request.deployment_id),
            format!("--label=dev.devgem.service={}", request.service),
        ];
        steps.push(step("build", KANIKO_IMAGE, kaniko));
        steps.push(step("pull", DOCKER_IMAGE, vec!["pull".to_owned(), image.clone()]));

        let mut build = Build::new()
            .set_steps(steps)
            .set_images([literal(&image)])
            .set_tags(tags)
            // Logs go to Cloud Logging only: where `log_lines` reads them, and what Cloud Build
            // requires of a build with a user-specified service account and no logs bucket.
            .set_options(BuildOptions::new().set_logging(LoggingMode::CloudLoggingOnly));
        build.timeout = request.timeout.min(MAX_TIMEOUT).try_into().ok();
        if let Some(account) = &self.build_service_account {
            build = build.set_service_account(if account.starts_with("projects/") {
                account.clone()
            } else {
                format!("projects/{}/serviceAccounts/{account}", self.project)
            });
        }
        Ok(build)
    }

    /// The build created by an earlier attempt of this submit, if any (see the module docs).
    async fn find_by_tag(&self, parent: &str, tag: &str) -> Result<Option<BuildHandle>, CallFailure> {
        let found = self
            .client
            .list_builds()
            .set_parent(parent)
            .set_filter(format!("tags=\"{tag}\""))
            .set_page_size(2)
            .with_attempt_timeout(ATTEMPT_TIMEOUT)
            .send()
            .await
            .map_err(GoogleApiError)?;
        Ok(found.builds.into_iter().find(|b| b.tags.iter().any(|t| t == tag)).map(|b| handle(&b)))
    }

    /// The error a caller reads: the call, where, why, and what to do.
    fn error(&self, call: &str, build_id: Option<&str>, error: CallError<CallFailure>) -> BuilderError {
        let failed = match error {
            CallError::Failed(failed) => failed,
            open @ CallError::Open { .. } => return BuilderError::Unavailable(open.message()),
        };
        let endpoint = &self.endpoint;
        match failed.api() {
            Some(e) if e.is_not_found() => match build_id {
                Some(id) => BuilderError::NotFound(id.to_owned()),
                None => BuilderError::Refused(format!(
                    "Cloud Build ({endpoint}) {call} in {}: {e}; check GOOGLE_CLOUD_PROJECT and DEVGEM_REGION, and \
                     that the Cloud Build API is enabled",
                    self.parent()
                )),
            },
            Some(e) if e.is_permission_denied() => {
                let act_as = match &self.build_service_account {
                    Some(account) => format!(", and roles/iam.serviceAccountUser on {account}"),
                    None => String::new(),
                };
                BuilderError::Refused(format!(
                    "Cloud Build ({endpoint}) refused {call} in {}: {e}; DevGem's service account needs \
                     roles/cloudbuild.builds.editor on the project{act_as}",
                    self.parent()
                ))
            }
            Some(e) if e.failure() == Failure::Refused => {
                BuilderError::Refused(format!("Cloud Build ({endpoint}) refused {call}: {e}"))
            }
            Some(e) => BuilderError::Unavailable(format!(
                "Cloud Build ({endpoint}) {call} kept failing, DevGem gave up for now: {e}"
            )),
            None => BuilderError::Unavailable(format!("Cloud Build ({endpoint}) {call}: {failed}")),
        }
    }

    /// The shared, append-only log of `build_id`; logs not read for a while are dropped.
    fn log_of(&self, build_id: &str) -> SharedLog {
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        logs.retain(|_, (_, used)| now.duration_since(*used) < LOG_CACHE_IDLE);
        let (log, used) = logs.entry(build_id.to_owned()).or_insert_with(|| (SharedLog::default(), now));
        *used = now;
        log.clone()
    }

    /// Appends the entries of `build_id` that `log` does not hold yet.
    async fn refresh(&self, build_id: &str, log: &mut BuildLog) -> Result<(), BuilderError> {
        if log.truncated {
            return Ok(());
        }
        let since = log.newest.map(|newest| newest - LOG_LOOKBACK);
        // One more than is kept tells whether the log goes on past the cut.
        let entries = self.logging.build_entries(build_id, since, MAX_LOG_LINES + 1).await.map_err(|e| match e {
            LoggingError::Refused(m) => BuilderError::Refused(format!("reading build {build_id}'s log: {m}")),
            other => BuilderError::Unavailable(format!("reading build {build_id}'s log: {other}")),
        })?;
        for entry in entries {
            let Some(text) = entry.message() else { continue };
            let text = text.trim_end_matches(['\n', '\r']).to_owned();
            let key = entry.insert_id.clone().unwrap_or_else(|| format!("{:?} {text}", entry.timestamp));
            if log.seen.contains(&key) {
                continue;
            }
            if log.lines.len() >= MAX_LOG_LINES - 1 {
                log.lines.push(format!("(the log goes on; DevGem keeps its first {} lines)", MAX_LOG_LINES - 1));
                log.truncated = true;
                break;
            }
            log.seen.insert(key);
            log.lines.push(text);
            log.newest = log.newest.max(entry.timestamp);
        }
        Ok(())
    }

    /// Reads `build_id`'s whole log and keeps it in Blobs under [`log_blob_key`], where the build
    /// function and the API read a failed build's last lines. Call it once the build has ended
    /// (Cloud Logging may still be indexing the last lines for a few seconds). Returns the
    /// number of lines stored.
    pub async fn store_log(&self, build_id: &str) -> Result<usize, BuilderError> {
        let Some(blobs) = &self.blobs else {
            return Err(BuilderError::Refused("the Cloud Build builder was not given Blobs to keep logs in".into()));
        };
        let Some(key) = log_blob_key(build_id).filter(|_| valid_build_id(build_id)) else {
            return Err(BuilderError::NotFound(build_id.to_owned()));
        };
        let log = self.log_of(build_id);
        let mut log = log.lock().await;
        self.refresh(build_id, &mut log).await?;
        let text: String = log.lines.iter().map(|line| format!("{line}\n")).collect();
        blobs
            .put_bytes(&key, text.into_bytes().into())
            .await
            .map_err(|e| BuilderError::Unavailable(format!("keeping build {build_id}'s log: {e}")))?;
        Ok(log.lines.len())
    }
}

/// The handle of a build as Cloud Build describes it.
fn handle(build: &Build) -> BuildHandle {
    BuildHandle { build_id: build.id.clone(), log_url: Some(build.log_url.clone()).filter(|u| !u.is_empty()) }
}

/// The build that `CreateBuild`'s operation reports in its metadata.
fn created(operation: &Operation) -> Result<BuildHandle, CallFailure> {
    if let Some(google_cloud_longrunning::model::operation::Result::Error(status)) = &operation.result {
        return Err(CallFailure::Answer(format!("the build could not be created: {}", status.message)));
    }
    let metadata = operation
        .metadata
        .as_ref()
        .ok_or_else(|| CallFailure::Answer(format!("operation {} came without metadata", operation.name)))?;
    let metadata: BuildOperationMetadata = metadata
        .to_msg()
        .map_err(|e| CallFailure::Answer(format!("operation {}'s metadata is not a build's: {e}", operation.name)))?;
    match metadata.build {
        Some(build) if valid_build_id(&build.id) => Ok(handle(&build)),
        _ => Err(CallFailure::Answer(format!("operation {} names no build id", operation.name))),
    }
}

#[async_trait]
impl Builder for CloudBuilder {
    async fn submit(&self, request: BuildRequest) -> Result<BuildHandle, BuilderError> {
        let submit_tag = format!("devgem-submit-{}", uuid::Uuid::new_v4().simple());
        let build = self.build_spec(&request, &submit_tag)?;
        let parent = self.parent();
        // Set after an attempt that may have created the build without DevGem hearing of it.
        let maybe_created = AtomicBool::new(false);
        let submitted = self
            .api
            .call(|| async {
                if maybe_created.load(Ordering::SeqCst)
                    && let Some(found) = self.find_by_tag(&parent, &submit_tag).await?
                {
                    return Ok(found);
                }
                let sent = self
                    .client
                    .create_build()
                    .set_parent(&parent)
                    .set_build(build.clone())
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .send()
                    .await;
                match sent {
                    Ok(operation) => created(&operation),
                    Err(e) => {
                        let e = GoogleApiError(e);
                        if e.code() == Some(Code::AlreadyExists) || e.http_status() == Some(409) {
                            // The build exists: ours, from an attempt whose answer was lost.
                            return match self.find_by_tag(&parent, &submit_tag).await? {
                                Some(found) => Ok(found),
                                None => Err(e.into()),
                            };
                        }
                        // A 429 turned the request away; no answer or a 503/504 may hide a
                        // build that was created.
                        if e.failure() == Failure::Down {
                            maybe_created.store(true, Ordering::SeqCst);
                        }
                        Err(e.into())
                    }
                }
            })
            .await
            .map_err(|e| self.error("CreateBuild", None, e))?;
        tracing::info!(build_id = %submitted.build_id, deployment = %request.deployment_id, "Cloud Build build submitted");
        Ok(submitted)
    }

    async fn cancel(&self, build_id: &str) -> Result<(), BuilderError> {
        if !valid_build_id(build_id) {
            return Err(BuilderError::NotFound(build_id.to_owned()));
        }
        let name = format!("{}/builds/{build_id}", self.parent());
        let cancelled = self
            .api
            .call(|| async {
                self.client
                    .cancel_build()
                    .set_name(&name)
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| CallFailure::Api(GoogleApiError(e)))
            })
            .await;
        let already_ended =
            || BuilderError::Refused(format!("build {build_id} has already ended; there is nothing to cancel"));
        match cancelled {
            // A build that had ended stays as it was: no CANCELLED notification will follow.
            Ok(build) => match build.status.name().and_then(BuildStatus::parse) {
                Some(status) if status.is_final() && status != BuildStatus::Cancelled => Err(already_ended()),
                _ => Ok(()),
            },
            // Cloud Build answers 400 FAILED_PRECONDITION for a build that has ended.
            Err(CallError::Failed(CallFailure::Api(e)))
                if e.code() == Some(Code::FailedPrecondition) || e.http_status() == Some(409) =>
            {
                Err(already_ended())
            }
            Err(e) => Err(self.error("CancelBuild", Some(build_id), e)),
        }
    }

    /// Cloud Build has no way to delete a build: its record and log stay with Cloud Build and
    /// Cloud Logging, which expire them by their own retention, and the image is the registry's
    /// (its cleanup policies, or the runtime's pruning of revisions). What DevGem kept itself is
    /// the log copy in Blobs ([`CloudBuilder::store_log`]): that is removed, and the answer says
    /// whether there was one. Nothing is refused while the build runs, since nothing of the run
    /// is touched.
    async fn delete_build(&self, build_id: &str) -> Result<bool, BuilderError> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).remove(build_id);
        let (Some(blobs), Some(key)) = (&self.blobs, log_blob_key(build_id).filter(|_| valid_build_id(build_id)))
        else {
            return Ok(false);
        };
        blobs.delete(&key).await.map_err(|e| BuilderError::Unavailable(format!("removing build {build_id}'s log: {e}")))
    }

    /// The build's lines from Cloud Logging, oldest first. Lines are appended to this process's
    /// copy in the order Cloud Logging makes them visible, so a line's number never changes
    /// between calls (one indexed late comes after the lines already returned, not among them).
    async fn log_lines(&self, build_id: &str, from: usize) -> Result<Vec<String>, BuilderError> {
        if !valid_build_id(build_id) {
            return Err(BuilderError::NotFound(build_id.to_owned()));
        }
        let log = self.log_of(build_id);
        let mut log = log.lock().await;
        self.refresh(build_id, &mut log).await?;
        Ok(log.lines.iter().skip(from).cloned().collect())
    }
}

#[cfg(test)]
mod tests;
