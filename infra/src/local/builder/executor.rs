//! The Dockerfile executor: runs a parsed Dockerfile step by step into layers under the builder's
//! directory, the way a container builder would, with the host's toolchains standing in for the
//! base images (see `toolchain`). Every step that changes files makes a layer keyed by everything
//! that step depends on (its parent, its text, the content it copies), so an unchanged step is
//! reused instead of run: that is what makes a rebuild with unchanged dependencies fast.

use super::apt;
use super::context::{self, ContextError, Ignore, Matched};
use super::image::LocalImage;
use super::sandbox::{self, Invocation, RootFs, Sandbox, SandboxError, quote};
use super::toolchain::{self, HostToolchain, Kind};
use chrono::{DateTime, Utc};
use devgem_common::dockerfile::{self, Command, Copy, Instruction, ParseError};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// One line of build output, with the step it belongs to (0 = the builder itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub step: usize,
    pub text: String,
}

/// Where build output goes as it happens.
pub type LogSink = Arc<dyn Fn(LogLine) + Send + Sync>;

/// Asks a running build to stop; the build then ends with [`BuildError::Cancelled`].
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<watch::Sender<bool>>);

/// The build's side of a [`CancelHandle`].
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

pub fn cancel_pair() -> (CancelHandle, Cancel) {
    let (tx, rx) = watch::channel(false);
    (CancelHandle(Arc::new(tx)), Cancel(rx))
}

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}

impl Cancel {
    fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    async fn cancelled(&mut self) {
        // A dropped handle means nobody can cancel any more: wait forever.
        if self.0.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What to build.
pub struct BuildJob {
    pub build_id: String,
    /// The build context (the app's directory).
    pub context: PathBuf,
    pub dockerfile: String,
    /// `.dockerignore` rules; `None` reads the context's own file.
    pub dockerignore: Option<String>,
    pub log: LogSink,
    pub cancel: Cancel,
    pub timeout: Duration,
}

impl std::fmt::Debug for BuildJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildJob")
            .field("build_id", &self.build_id)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub image: LocalImage,
    pub warnings: Vec<String>,
    pub steps_run: usize,
    pub steps_cached: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the Dockerfile cannot be read: {0}")]
    Dockerfile(#[from] ParseError),
    /// A step failed; `tail` holds its last lines of output.
    #[error("step {step}/{total} (line {line}) `{instruction}`: {reason}")]
    Step { step: usize, total: usize, line: usize, instruction: String, reason: String, tail: Vec<String> },
    #[error("the build was cancelled")]
    Cancelled,
    #[error("the build took longer than its limit of {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("the local builder cannot run here: {0}")]
    Unavailable(String),
    #[error("the source could not be fetched: {0}")]
    Fetch(String),
}

/// How a step's process ended, when not with success.
enum Stop {
    Failed { reason: String, tail: Vec<String> },
    Cancelled,
    Timeout,
}

impl From<SandboxError> for Stop {
    fn from(e: SandboxError) -> Self {
        Stop::Failed { reason: e.to_string(), tail: Vec::new() }
    }
}

impl From<ContextError> for Stop {
    fn from(e: ContextError) -> Self {
        Stop::Failed { reason: e.to_string(), tail: Vec::new() }
    }
}

fn failed(reason: impl Into<String>) -> Stop {
    Stop::Failed { reason: reason.into(), tail: Vec::new() }
}

fn io_failed(what: &str, path: &Path, e: std::io::Error) -> Stop {
    failed(format!("{what} {}: {e}", path.display()))
}

/// How many lines of a failing step's output an error keeps.
const TAIL_LINES: usize = 30;

/// The executor's settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The builder's directory (`<data dir>/builder`): layers, builds, caches, scratch.
    pub root: PathBuf,
    /// Paths no step may read: the data dir, credential directories.
    pub hidden: Vec<PathBuf>,
    /// The PATH on which host toolchains are looked up.
    pub host_path: OsString,
}

/// Runs Dockerfiles. Cheap to share; builds may run concurrently.
#[derive(Debug)]
pub struct Executor {
    root: PathBuf,
    sandbox: Sandbox,
    host_path: OsString,
    toolchains: tokio::sync::Mutex<HashMap<Kind, Option<HostToolchain>>>,
}

/// A stage's state between steps.
#[derive(Debug, Clone)]
struct StageState {
    key: String,
    layers: Vec<PathBuf>,
    env: Vec<(String, String)>,
    args: BTreeMap<String, String>,
    workdir: String,
    user: Option<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// The CMD came from the base image, so a new ENTRYPOINT clears it (Docker's rule).
    cmd_inherited: bool,
    exposed: Vec<u16>,
    shell: Vec<String>,
}

impl StageState {
    fn var(&self, name: &str) -> Option<String> {
        self.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()).or_else(|| self.args.get(name).cloned())
    }

    fn set_env(&mut self, name: &str, value: String) {
        match self.env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.env.push((name.to_owned(), value)),
        }
    }
}

/// A step being executed, for log lines and errors.
struct StepInfo {
    number: usize,
    total: usize,
    line: usize,
    text: String,
}

fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    // 96 bits name a layer; short names keep many layers within one overlay mount's options.
    context::hex(&hasher.finalize()[..12])
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alt}` as Dockerfile instructions do;
/// `\$` is a literal dollar.
pub fn expand(word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(word.len());
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            let Some(close) = chars[i + 2..].iter().position(|&c| c == '}') else {
                out.extend(&chars[i..]);
                break;
            };
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            let value = match (inner.split_once(":-"), inner.split_once(":+")) {
                (Some((name, default)), _) => {
                    lookup(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
                }
                (None, Some((name, alt))) => {
                    if lookup(name).is_some_and(|v| !v.is_empty()) {
                        alt.to_owned()
                    } else {
                        String::new()
                    }
                }
                _ => lookup(&inner).unwrap_or_default(),
            };
            out.push_str(&value);
            i += close + 3;
            continue;
        }
        let name: String = chars[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
        if name.is_empty() {
            out.push('$');
            i += 1;
        } else {
            out.push_str(&lookup(&name).unwrap_or_default());
            i += 1 + name.len();
        }
    }
    out
}

fn is_archive(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"].iter().any(|ext| name.ends_with(ext))
}

impl Executor {
    pub fn new(config: ExecutorConfig) -> Result<Self, BuildError> {
        let unavailable = |e: std::io::Error| BuildError::Unavailable(format!("{}: {e}", config.root.display()));
        for dir in ["layers", "builds", "cache", "scratch"] {
            std::fs::create_dir_all(config.root.join(dir)).map_err(unavailable)?;
        }
        for cache in ["pip", "npm", "go/mod", "go/build", "cargo", "yarn", "pnpm"] {
            std::fs::create_dir_all(config.root.join("cache").join(cache)).map_err(unavailable)?;
        }
        let sandbox = Sandbox::new(
            config.root.join("scratch"),
            config.root.join("cache"),
            config.hidden.clone(),
            &config.host_path,
        )
        .map_err(|e| BuildError::Unavailable(e.to_string()))?;
        Ok(Self {
            root: config.root,
            sandbox,
            host_path: config.host_path,
            toolchains: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Where a build's own files live (staged sources, image config).
    pub fn build_dir(&self, build_id: &str) -> PathBuf {
        self.root.join("builds").join(build_id)
    }

    fn layer_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(key)
    }

    /// Runs `job` to the end: an image, or the step that failed and why.
    pub async fn build(&self, job: BuildJob) -> Result<BuildOutcome, BuildError> {
        let deadline = Instant::now() + job.timeout;
        let parsed = dockerfile::parse(&job.dockerfile)?;
        let texts: HashMap<usize, String> = dockerfile::logical_lines(&job.dockerfile).into_iter().collect();
        let total = parsed.stages.iter().map(|s| s.steps.len() + 1).sum::<usize>();
        let ignore = match &job.dockerignore {
            Some(rules) => Ignore::parse(rules),
            None => Ignore::parse(&std::fs::read_to_string(job.context.join(".dockerignore")).unwrap_or_default()),
        };
        let build_dir = self.build_dir(&job.build_id);
        std::fs::create_dir_all(&build_dir)
            .map_err(|e| BuildError::Unavailable(format!("{}: {e}", build_dir.display())))?;

        let global_args: BTreeMap<String, String> =
            parsed.global_args.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect();
        let mut stages: Vec<StageState> = Vec::new();
        let mut warnings = Vec::new();
        let (mut steps_run, mut steps_cached) = (0, 0);
        let mut number = 0;
        let log = job.log.clone();
        let say = |step: usize, text: String| log(LogLine { at: Utc::now(), step, text });

        for stage in &parsed.stages {
            number += 1;
            let info = StepInfo {
                number,
                total,
                line: stage.line,
                text: texts.get(&stage.line).cloned().unwrap_or_else(|| format!("FROM {}", stage.base)),
            };
            say(number, format!("Step {number}/{total} (line {}): {}", info.line, info.text));
            let base = expand(&stage.base, &|n| global_args.get(n).cloned());
            let mut state = match self.from(&base, &parsed, &stages, &global_args, &job, deadline, &info).await {
                Ok((state, warning)) => {
                    if let Some(warning) = warning {
                        say(number, format!("warning: {warning}"));
                        warnings.push(warning);
                    }
                    state
                }
                Err(stop) => return Err(self.stopped(stop, &info, job.timeout)),
            };
            for step in &stage.steps {
                number += 1;
                let info = StepInfo {
                    number,
                    total,
                    line: step.line,
                    text: texts.get(&step.line).cloned().unwrap_or_default(),
                };
                say(number, format!("Step {number}/{total} (line {}): {}", info.line, info.text));
                if job.cancel.is_cancelled() {
                    return Err(BuildError::Cancelled);
                }
                let outcome = self
                    .step(&step.instruction, &mut state, &stages, &parsed, &global_args, &ignore, &job, deadline, &info)
                    .await;
                match outcome {
                    Ok(Ran::Cached) => {
                        steps_cached += 1;
                        say(number, "cached".to_owned());
                    }
                    Ok(Ran::Executed) => steps_run += 1,
                    Ok(Ran::Recorded) => {}
                    Ok(Ran::Warned(warning)) => {
                        say(number, format!("warning: {warning}"));
                        warnings.push(warning);
                        steps_run += 1;
                    }
                    Err(stop) => return Err(self.stopped(stop, &info, job.timeout)),
                }
            }
            stages.push(state);
        }

        let Some(last) = stages.pop() else {
            return Err(BuildError::Unavailable("the Dockerfile has no stage".into()));
        };
        let mut argv = last.entrypoint.clone();
        argv.extend(last.cmd.iter().cloned());
        if argv.is_empty() {
            let line = parsed.final_stage().map_or(1, |s| s.line);
            return Err(BuildError::Step {
                step: total,
                total,
                line,
                instruction: texts.get(&line).cloned().unwrap_or_default(),
                reason: "the final stage has no CMD or ENTRYPOINT, so there is nothing to start; add CMD [\"...\"]"
                    .into(),
                tail: Vec::new(),
            });
        }
        let image = LocalImage {
            build_id: job.build_id.clone(),
            layers: last.layers.clone(),
            env: last.env.clone(),
            workdir: last.workdir.clone(),
            user: last.user.clone(),
            argv,
            exposed: last.exposed.clone(),
            digest: last.key.clone(),
        };
        image.save(&build_dir).map_err(|e| BuildError::Unavailable(format!("{}: {e}", build_dir.display())))?;
        say(0, format!("built image {} ({steps_run} steps run, {steps_cached} cached)", image.digest));
        Ok(BuildOutcome { image, warnings, steps_run, steps_cached })
    }

    fn stopped(&self, stop: Stop, info: &StepInfo, timeout: Duration) -> BuildError {
        match stop {
            Stop::Cancelled => BuildError::Cancelled,
            Stop::Timeout => BuildError::Timeout(timeout),
            Stop::Failed { reason, tail } => BuildError::Step {
                step: info.number,
                total: info.total,
                line: info.line,
                instruction: info.text.chars().take(120).collect(),
                reason,
                tail,
            },
        }
    }

    /// The host's toolchain for `kind`, looked up once per executor.
    async fn toolchain(&self, kind: Kind) -> Option<HostToolchain> {
        let mut cache = self.toolchains.lock().await;
        if let Some(found) = cache.get(&kind) {
            return found.clone();
        }
        let found = toolchain::detect(kind, &self.host_path).await;
        cache.insert(kind, found.clone());
        found
    }

    /// `FROM`: an earlier stage, or an image the host stands in for.
    #[allow(clippy::too_many_arguments)]
    async fn from(
        &self,
        base: &str,
        parsed: &dockerfile::Dockerfile,
        stages: &[StageState],
        global_args: &BTreeMap<String, String>,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<(StageState, Option<String>), Stop> {
        if let Some(earlier) = parsed
            .stages
            .iter()
            .take(stages.len())
            .position(|s| s.alias.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(base)))
        {
            let mut state = stages[earlier].clone();
            state.args = global_args.clone();
            return Ok((state, None));
        }
        let kind = toolchain::kind_of(base).map_err(|e| failed(e.to_string()))?;
        let found = self.toolchain(kind).await;
        let (toolchain, warning) = toolchain::accept(base, kind, found).map_err(|e| failed(e.to_string()))?;
        let config = toolchain::base_config(&toolchain);
        let mut layers = Vec::new();
        if let Some(layer) = self.toolchain_layer(&toolchain, job, deadline, info).await? {
            layers.push(layer);
        }
        // Steps built on another stand-in layer (an older virtualenv, other users) are not reused.
        let layer_names: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        let key = digest(&["FROM", base, &toolchain.identity(), &layer_names.join(":")]);
        let state = StageState {
            key,
            layers,
            env: config.env,
            args: global_args.clone(),
            workdir: config.workdir,
            user: None,
            entrypoint: config.entrypoint,
            cmd: config.cmd,
            cmd_inherited: true,
            exposed: Vec::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
        };
        Ok((state, warning))
    }

    /// The files a stand-in adds under its stages: a virtualenv for Python (so a stage sees only
    /// what its Dockerfile installs, not the host's packages), and the image's own files and
    /// users for the others (see [`toolchain::image_files`]).
    async fn toolchain_layer(
        &self,
        toolchain: &HostToolchain,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<Option<PathBuf>, Stop> {
        let files = toolchain::image_files(toolchain.kind);
        let file_digest: Vec<String> = files.iter().map(|(p, c, m)| format!("{p}:{m:o}:{c}")).collect();
        let key = digest(&["toolchain-layer-v3", &toolchain.identity(), &file_digest.join("\n")]);
        let path = self.layer_path(&key);
        if path.is_dir() {
            return Ok(Some(path));
        }
        if files.is_empty() && toolchain.kind != Kind::Python {
            return Ok(None);
        }
        let upper = self.begin_layer(&key)?;
        for (relative, content, mode) in files {
            let path = upper.join(&relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_failed("creating", parent, e))?;
            }
            std::fs::write(&path, content).map_err(|e| io_failed("writing", &path, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_failed("writing", &path, e))?;
        }
        if toolchain.kind == Kind::Python {
            let venv = toolchain::PYTHON_VENV;
            let script = format!(
                "{} -m venv {venv} && for b in python python3 pip pip3; do ln -sf {venv}/bin/$b /usr/local/bin/$b; done",
                quote(&toolchain.program.to_string_lossy())
            );
            let invocation = Invocation {
                root: RootFs { layers: Vec::new(), upper: Some(upper.clone()) },
                workdir: "/".into(),
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                env: vec![("PATH".to_owned(), toolchain::DEFAULT_PATH.to_owned())],
                ..Invocation::default()
            };
            if let Err(stop) = self.run(invocation, job, deadline, info).await {
                let _ = std::fs::remove_dir_all(&upper);
                return Err(stop);
            }
        }
        self.commit_layer(&upper, &key)?;
        Ok(Some(path))
    }

    fn begin_layer(&self, key: &str) -> Result<PathBuf, Stop> {
        let upper = self.root.join("layers").join(format!(".tmp-{key}-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&upper).map_err(|e| io_failed("creating", &upper, e))?;
        Ok(upper)
    }

    /// Publishes a finished layer under its key. A concurrent build may have made the same
    /// layer first; then ours is dropped, since both hold the same result.
    fn commit_layer(&self, upper: &Path, key: &str) -> Result<PathBuf, Stop> {
        let path = self.layer_path(key);
        if std::fs::rename(upper, &path).is_err() {
            let _ = std::fs::remove_dir_all(upper);
            if !path.is_dir() {
                return Err(failed(format!("could not store layer {}", path.display())));
            }
        }
        Ok(path)
    }

    /// The environment a RUN line sees: the stage's env and args, the builder's caches, and
    /// nothing from the host except proxy settings.
    fn run_env(&self, state: &StageState) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| match env.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k.to_owned(), v)),
        };
        set("HOME", "/root".into());
        for (k, v) in &state.args {
            set(k, v.clone());
        }
        for (k, v) in &state.env {
            set(k, v.clone());
        }
        let cache = sandbox::CACHE_DIR;
        set("PIP_CACHE_DIR", format!("{cache}/pip"));
        set("npm_config_cache", format!("{cache}/npm"));
        set("npm_config_update_notifier", "false".into());
        set("npm_config_fund", "false".into());
        set("YARN_CACHE_FOLDER", format!("{cache}/yarn"));
        set("GOMODCACHE", format!("{cache}/go/mod"));
        set("GOCACHE", format!("{cache}/go/build"));
        set("CARGO_HOME", format!("{cache}/cargo"));
        for name in ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] {
            if let Ok(value) = std::env::var(name) {
                set(name, value);
            }
        }
        // PIP_NO_CACHE_DIR keeps an image small; a local layer gains nothing from it, and the
        // shared cache is what makes a rebuild fast.
        env.retain(|(k, _)| k != "PIP_NO_CACHE_DIR");
        env
    }

    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        instruction: &Instruction,
        state: &mut StageState,
        stages: &[StageState],
        parsed: &dockerfile::Dockerfile,
        global_args: &BTreeMap<String, String>,
        ignore: &Ignore,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<Ran, Stop> {
        let lookup = |s: &StageState| {
            let s = s.clone();
            move |name: &str| s.var(name)
        };
        match instruction {
            Instruction::Env(pairs) => {
                // Every value sees the variables as they were before this instruction (Docker's rule).
                let before = lookup(state);
                let values: Vec<(String, String)> =
                    pairs.iter().map(|(k, v)| (k.clone(), expand(v, &before))).collect();
                for (name, value) in values {
                    state.set_env(&name, value);
                }
                state.key = digest(&[&state.key, "ENV", &format!("{pairs:?}")]);
                Ok(Ran::Recorded)
            }
            Instruction::Arg { name, default } => {
                let value = default
                    .as_ref()
                    .map(|d| expand(d, &lookup(state)))
                    .or_else(|| global_args.get(name).cloned())
                    .unwrap_or_default();
                state.key = digest(&[&state.key, "ARG", name, &value]);
                state.args.insert(name.clone(), value);
                Ok(Ran::Recorded)
            }
            Instruction::Workdir(dir) => {
                let dir = expand(dir, &lookup(state));
                state.workdir = resolve_path(&state.workdir, &dir);
                state.key = digest(&[&state.key, "WORKDIR", &state.workdir]);
                Ok(Ran::Recorded)
            }
            Instruction::User(user) => {
                state.user = Some(expand(user, &lookup(state)));
                Ok(Ran::Recorded)
            }
            Instruction::Expose(ports) => {
                for port in ports {
                    if !state.exposed.contains(port) {
                        state.exposed.push(*port);
                    }
                }
                Ok(Ran::Recorded)
            }
            Instruction::Cmd(command) => {
                state.cmd = self.argv(command, state);
                state.cmd_inherited = false;
                Ok(Ran::Recorded)
            }
            Instruction::Entrypoint(command) => {
                state.entrypoint = self.argv(command, state);
                if state.cmd_inherited {
                    state.cmd.clear();
                }
                Ok(Ran::Recorded)
            }
            Instruction::Other { keyword, args } => {
                if keyword == "SHELL"
                    && let Ok(shell) = serde_json::from_str::<Vec<String>>(args)
                    && !shell.is_empty()
                {
                    state.shell = shell;
                }
                Ok(Ran::Recorded)
            }
            Instruction::Run(command) => self.run_step(command, state, job, deadline, info).await,
            Instruction::Copy(copy) => self.copy_step(copy, state, stages, parsed, ignore, job, deadline, info).await,
        }
    }

    fn argv(&self, command: &Command, state: &StageState) -> Vec<String> {
        match command {
            Command::Exec(parts) => parts.clone(),
            Command::Shell(text) => {
                let mut argv = state.shell.clone();
                argv.push(text.clone());
                argv
            }
        }
    }

    async fn run_step(
        &self,
        command: &Command,
        state: &mut StageState,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<Ran, Stop> {
        let mut argv = self.argv(command, state);
        let mut warning = None;
        if let Command::Shell(text) = command
            && let Some(split) = apt::split(text)
        {
            for skipped in &split.skipped {
                self.say(job, info, format!("not run on this machine: {skipped}"));
            }
            match apt::missing(&split.packages).await {
                Some(missing) if !missing.is_empty() => {
                    let list = missing.join(" ");
                    return Err(failed(format!(
                        "system packages missing on this machine: {}. Install them (sudo apt-get install {list}) and build again",
                        missing.join(", ")
                    )));
                }
                Some(_) => {}
                None => {
                    warning = Some(format!(
                        "cannot check system packages on this machine (no dpkg): {}",
                        split.packages.join(", ")
                    ))
                }
            }
            match split.remaining {
                Some(rest) => {
                    argv = state.shell.clone();
                    argv.push(rest);
                }
                None => {
                    state.key = digest(&[&state.key, "RUN", text]);
                    return Ok(warning.map_or(Ran::Executed, Ran::Warned));
                }
            }
        }
        let key = digest(&[&state.key, "RUN", &format!("{argv:?}")]);
        let invocation =
            Invocation { workdir: state.workdir.clone(), argv, env: self.run_env(state), ..Invocation::default() };
        let ran = self.layer_step(state, key, invocation, job, deadline, info).await?;
        Ok(match (ran, warning) {
            (Ran::Executed, Some(warning)) => Ran::Warned(warning),
            (ran, _) => ran,
        })
    }

    /// Runs `invocation` on top of the stage into a new layer under `key`, or reuses the layer
    /// a previous build made for the same key.
    async fn layer_step(
        &self,
        state: &mut StageState,
        key: String,
        mut invocation: Invocation,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<Ran, Stop> {
        state.key = key.clone();
        if self.layer_path(&key).is_dir() {
            self.push_layer(state, &key);
            return Ok(Ran::Cached);
        }
        let upper = self.begin_layer(&key)?;
        invocation.root = RootFs { layers: state.layers.clone(), upper: Some(upper.clone()) };
        if let Err(stop) = self.run(invocation, job, deadline, info).await {
            let _ = std::fs::remove_dir_all(&upper);
            return Err(stop);
        }
        self.commit_layer(&upper, &key)?;
        self.push_layer(state, &key);
        Ok(Ran::Executed)
    }

    /// Adds a layer to the stage, unless the step wrote nothing.
    fn push_layer(&self, state: &mut StageState, key: &str) {
        let path = self.layer_path(key);
        let empty = std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(true);
        if !empty {
            state.layers.push(path);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_step(
        &self,
        copy: &Copy,
        state: &mut StageState,
        stages: &[StageState],
        parsed: &dockerfile::Dockerfile,
        ignore: &Ignore,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<Ran, Stop> {
        let vars = {
            let s = state.clone();
            move |name: &str| s.var(name)
        };
        let destination = expand(&copy.destination, &vars);
        let sources: Vec<String> = copy.sources.iter().map(|s| expand(s, &vars)).collect();
        if let Some(url) = sources.iter().find(|s| s.starts_with("http://") || s.starts_with("https://")) {
            return Err(failed(format!(
                "ADD from a URL ({url}) is not supported by the local builder; download it in a RUN step instead"
            )));
        }
        let target = resolve_path(&state.workdir, &destination);
        // The workdir is a directory (WORKDIR creates it), so `COPY x .` copies into it.
        let into_dir = destination.ends_with('/') || target == state.workdir || sources.len() > 1;
        let chown = copy.chown.as_ref().map(|c| expand(c, &vars));
        let mut script = String::from("set -e\n");
        let mut from_root = None;
        let mut source_dir = None;
        let key = match &copy.from {
            Some(from) => {
                let from = expand(from, &vars);
                let index = parsed
                    .stages
                    .iter()
                    .take(stages.len())
                    .position(|s| s.alias.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(&from)))
                    .or_else(|| from.parse::<usize>().ok().filter(|i| *i < stages.len()))
                    .ok_or_else(|| {
                        failed(format!(
                            "COPY --from={from} names no earlier stage; the local builder copies only from stages of the same Dockerfile"
                        ))
                    })?;
                let stage = &stages[index];
                for source in &sources {
                    let path = resolve_path(&stage.workdir, source);
                    let inside = format!("{}{}", sandbox::FROM_DIR, path);
                    let into = into_dir || destination.ends_with('/');
                    script.push_str(&copy_command(&inside, &target, None, into, chown.as_deref(), copy.add));
                }
                from_root = Some(RootFs { layers: stage.layers.clone(), upper: None });
                digest(&[&state.key, "COPY-FROM", &stage.key, &format!("{sources:?}"), &target, &format!("{chown:?}")])
            }
            None => {
                let matched = context::resolve_sources(&job.context, ignore, &sources)?;
                let into_dir = into_dir || matched.len() > 1;
                let staging = self.build_dir(&job.build_id).join("steps").join(info.number.to_string());
                let _ = std::fs::remove_dir_all(&staging);
                let mut digests = Vec::new();
                for (i, source) in matched.iter().enumerate() {
                    let slot = staging.join(i.to_string());
                    std::fs::create_dir_all(&slot).map_err(|e| io_failed("creating", &slot, e))?;
                    let name = source.relative.last().cloned().unwrap_or_else(|| "context".to_owned());
                    digests.push(context::stage(&job.context, ignore, source, &slot.join(&name))?);
                    let inside = format!("{}/{i}/{}", sandbox::SOURCE_DIR, name);
                    script.push_str(&copy_command(
                        &inside,
                        &target,
                        Some(source),
                        into_dir,
                        chown.as_deref(),
                        copy.add && is_archive(&name),
                    ));
                }
                source_dir = Some(staging);
                digest(&[
                    &state.key,
                    "COPY",
                    &digests.join(","),
                    &target,
                    &format!("{into_dir} {chown:?} {}", copy.add),
                ])
            }
        };
        let invocation = Invocation {
            from: from_root,
            source: source_dir,
            workdir: "/".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            env: vec![("PATH".into(), toolchain::DEFAULT_PATH.into())],
            ..Invocation::default()
        };
        self.layer_step(state, key, invocation, job, deadline, info).await.map_err(|stop| match stop {
            Stop::Failed { tail, .. } => Stop::Failed {
                reason: format!("copying into {target} failed: {}", tail.last().cloned().unwrap_or_default()),
                tail,
            },
            other => other,
        })
    }

    fn say(&self, job: &BuildJob, info: &StepInfo, text: String) {
        (job.log)(LogLine { at: Utc::now(), step: info.number, text });
    }

    /// Runs one sandboxed process to its end, streaming its output into the log.
    async fn run(
        &self,
        invocation: Invocation,
        job: &BuildJob,
        deadline: Instant,
        info: &StepInfo,
    ) -> Result<(), Stop> {
        let (mut command, _scratch) = self.sandbox.command(&invocation)?;
        let mut child = command.spawn().map_err(|e| failed(format!("could not start the step: {e}")))?;
        let pid = child.id();
        let (tx, mut rx) = mpsc::channel::<String>(256);
        let readers = [
            child.stdout.take().map(|out| forward(BufReader::new(out), tx.clone())),
            child.stderr.take().map(|err| forward(BufReader::new(err), tx.clone())),
        ];
        drop(tx);
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let keep = |line: String, tail: &mut std::collections::VecDeque<String>| {
            self.say(job, info, line.clone());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        };
        let mut cancel = job.cancel.clone();
        let status = loop {
            tokio::select! {
                Some(line) = rx.recv() => keep(line, &mut tail),
                status = child.wait() => break status,
                () = cancel.cancelled() => {
                    if let Some(pid) = pid { sandbox::kill_group(pid); }
                    let _ = child.wait().await;
                    return Err(Stop::Cancelled);
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(pid) = pid { sandbox::kill_group(pid); }
                    let _ = child.wait().await;
                    return Err(Stop::Timeout);
                }
            }
        };
        // The step has ended; its output may still be in the pipes.
        let drain = async {
            while let Some(line) = rx.recv().await {
                keep(line, &mut tail);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        for reader in readers.into_iter().flatten() {
            reader.abort();
        }
        let status = status.map_err(|e| failed(format!("waiting for the step: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let reason = match status.code() {
            Some(sandbox::SETUP_FAILED) => format!(
                "the build sandbox could not be set up ({}); the local builder needs Linux mount namespaces and overlayfs",
                tail.back().map_or("no output", String::as_str)
            ),
            Some(code) => format!("the command exited with status {code}"),
            None => "the command was killed by a signal".to_owned(),
        };
        Err(Stop::Failed { reason, tail: tail.into_iter().collect() })
    }
}

/// What a step did.
enum Ran {
    Executed,
    Cached,
    Recorded,
    Warned(String),
}

/// The longest line the log keeps; the rest of a longer line is cut (progress bars, minified files).
const MAX_LINE: usize = 4096;

/// Sends a pipe's lines to the log. Bytes that are not UTF-8 are replaced, never a reason to stop
/// reading: a reader that stopped would leave the step blocked on a full pipe.
fn forward<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(
    mut reader: R,
    tx: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buffer);
            let mut line = text.trim_end_matches(['\n', '\r']).to_owned();
            if line.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" [...]");
            }
            if tx.send(line).await.is_err() {
                break;
            }
        }
    })
}

/// An absolute container path: `path` against `workdir` when relative.
fn resolve_path(workdir: &str, path: &str) -> String {
    let joined =
        if path.starts_with('/') { path.to_owned() } else { format!("{}/{path}", workdir.trim_end_matches('/')) };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

/// The shell lines that copy one source to the destination with COPY's rules: a directory's
/// contents go into the destination; a file goes into it when it is (or must be) a directory.
fn copy_command(
    source: &str,
    target: &str,
    matched: Option<&Matched>,
    into_dir: bool,
    chown: Option<&str>,
    extract: bool,
) -> String {
    let bare = target.trim_end_matches('/');
    let (s, t) = (quote(source), quote(if bare.is_empty() { "/" } else { bare }));
    let is_dir = match matched {
        Some(m) => m.is_dir,
        None => false,
    };
    let mut out = String::new();
    if extract {
        out.push_str(&format!("mkdir -p {t} && tar -xf {s} -C {t}\n"));
    } else if matched.is_none() {
        // From another stage: whether the source is a directory is known only inside.
        out.push_str(&format!(
            "if [ -d {s} ]; then mkdir -p {t} && cp -a {s}/. {t}/; elif [ {into} = 1 ]; then mkdir -p {t} && cp -a {s} {t}/; else mkdir -p \"$(dirname {t})\" && cp -a {s} {t}; fi\n",
            into = u8::from(into_dir)
        ));
    } else if is_dir {
        out.push_str(&format!("mkdir -p {t} && cp -a {s}/. {t}/\n"));
    } else if into_dir {
        out.push_str(&format!("mkdir -p {t} && cp -a {s} {t}/\n"));
    } else {
        out.push_str(&format!("mkdir -p \"$(dirname {t})\" && cp -a {s} {t}\n"));
    }
    if let Some(owner) = chown {
        out.push_str(&format!("chown -R {} {t}\n", quote(owner)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_like_dockerfile_words() {
        let vars: HashMap<&str, &str> = [("HOME", "/root"), ("EMPTY", ""), ("V", "1.2")].into_iter().collect();
        let lookup = |n: &str| vars.get(n).map(|v| (*v).to_owned());
        assert_eq!(expand("$HOME/app", &lookup), "/root/app");
        assert_eq!(expand("${V}-slim", &lookup), "1.2-slim");
        assert_eq!(expand("${MISSING:-8080}", &lookup), "8080");
        assert_eq!(expand("${EMPTY:-x}", &lookup), "x");
        assert_eq!(expand("${V:+set}", &lookup), "set");
        assert_eq!(expand("${MISSING:+set}", &lookup), "");
        assert_eq!(expand(r"\$HOME costs $", &lookup), "$HOME costs $");
        assert_eq!(expand("${unclosed", &lookup), "${unclosed");
    }

    #[test]
    fn paths_resolve_against_the_workdir() {
        assert_eq!(resolve_path("/app", "."), "/app");
        assert_eq!(resolve_path("/app", "./"), "/app/");
        assert_eq!(resolve_path("/app", "src/../lib"), "/app/lib");
        assert_eq!(resolve_path("/app", "/usr/local/bin/app"), "/usr/local/bin/app");
        assert_eq!(resolve_path("/", "../../etc"), "/etc");
    }
}
