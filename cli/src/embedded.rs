//! The embedded default's wiring: every adapter opened on one data dir.

use devgem_common::clock::{Clock, SystemClock};
use devgem_common::identity::Identity;
use devgem_common::ports::Ports;
use devgem_common::ports::builder::Builder;
use devgem_common::ports::runtime::Runtime;
use devgem_common::ports::secrets::Secrets;
use devgem_infra::gcp::pubsub::PubSubBus;
use devgem_infra::local::builder::{Executor, LocalBuilder, executor_for};
use devgem_infra::local::runtime::LocalRuntime;
use devgem_infra::local::{LocalBlobs, LocalBus, LocalSecrets, LocalStore};
use devgem_infra::source::{GitSource, SourcePolicy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a new revision may take to listen on its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Embedded::open_with`] is told.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub policy: SourcePolicy,
    /// How long a new revision may take to listen on its port.
    pub startup_timeout: Duration,
    /// The secrets key file: outside the data dir.
    pub secrets_key: PathBuf,
}

/// The embedded adapters, opened.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub data_dir: PathBuf,
    pub ports: Ports,
    /// The embedded bus as itself, for subscriptions and stats that the Bus port does not offer.
    /// With `DEVGEM_BUS=pubsub` it carries nothing: `ports.bus` is [`Embedded::pubsub`].
    pub bus: LocalBus,
    /// The Pub/Sub bus when `DEVGEM_BUS=pubsub`: deliveries come from Pub/Sub's push
    /// subscriptions instead of the embedded bus.
    pub pubsub: Option<Arc<PubSubBus>>,
    pub identity: Identity,
    pub source: Arc<GitSource>,
    pub secrets: Arc<LocalSecrets>,
    pub builder: LocalBuilder,
    pub runtime: LocalRuntime,
    /// What the functions build, run and keep secrets with: the local adapters above, or Cloud
    /// Build, Cloud Run and Secret Manager ([`Embedded::with_control_plane`]).
    pub builder_port: Arc<dyn Builder>,
    pub runtime_port: Arc<dyn Runtime>,
    pub secrets_port: Arc<dyn Secrets>,
    /// Where the analyze function fetches snapshots.
    pub work_dir: PathBuf,
    /// The chat's LLM (`DEVGEM_BRAIN`); `None`: the offline rules answer everything.
    pub brain: Option<Arc<dyn devgem_common::ports::brain::Brain>>,
    /// The monitor's thresholds (`DEVGEM_MONITOR_*`).
    pub monitor: devgem_monitor::MonitorSettings,
    /// `devgem serve relay` only: the api service's URL (`DEVGEM_API_URL`), which the relay
    /// forwards the UI's api requests to. `devgem up` serves the api itself.
    pub api_url: Option<String>,
    /// How long a new revision may take to listen on its port (kept to rebuild the runtime).
    startup_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store: {0}")]
    Store(#[from] devgem_common::ports::store::StoreError),
    #[error("cannot open the bus: {0}")]
    Bus(#[from] devgem_common::ports::bus::BusError),
    #[error("cannot open the blob directory: {0}")]
    Blobs(#[from] devgem_common::ports::blobs::BlobError),
    #[error("the chat's LLM is misconfigured: {0}")]
    Brain(#[from] devgem_infra::brain::BrainConfigError),
    #[error(transparent)]
    Monitor(#[from] devgem_monitor::SettingsError),
    #[error("cannot start the local builder: {0}")]
    Builder(#[from] devgem_infra::local::builder::BuildError),
    #[error("the GCP data plane is misconfigured: {0}")]
    Gcp(#[from] devgem_infra::gcp::config::ConfigError),
    #[error("{name}={value:?} is not an adapter DevGem knows; use {expected}")]
    Adapter { name: &'static str, value: String, expected: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] devgem_common::ports::runtime::RuntimeError),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
}

/// Which control-plane ports a process calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPorts {
    pub builder: bool,
    pub runtime: bool,
    pub secrets: bool,
}

impl ControlPorts {
    /// `devgem up`: every function in one process.
    pub const ALL: Self = Self { builder: true, runtime: true, secrets: true };
}

/// A GCP control-plane client that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot set up Cloud Build: {0}")]
    Builder(devgem_common::ports::builder::BuilderError),
    #[error("cannot set up Secret Manager: {0}")]
    Secrets(devgem_common::ports::secrets::SecretsError),
    #[error("cannot set up Cloud Logging: {0}")]
    Logging(devgem_infra::gcp::logging::LoggingError),
}

/// The adapter `name` names (lowercased), the first of `options` when unset; any other value is
/// refused with the choices.
fn adapter<const N: usize>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    options: [&'static str; N],
) -> Result<String, OpenError> {
    let value = get(name).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    let value = value.unwrap_or_else(|| options[0].to_owned());
    if options.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(OpenError::Adapter { name, value, expected: options.join(" or ") })
    }
}

impl Embedded {
    /// Opens every adapter on `data_dir`. `local_paths`: whether local directories are accepted
    /// as sources (only when the server listens on loopback: the user is on this machine).
    pub fn open(data_dir: &Path, local_paths: bool) -> Result<Self, OpenError> {
        // The key stays outside the data dir; without a home, next to it (never inside).
        let secrets_key =
            devgem_infra::local::secrets::default_key_path().unwrap_or_else(|| data_dir.with_extension("secrets.key"));
        let options = EmbeddedOptions {
            policy: SourcePolicy::from_env(local_paths),
            startup_timeout: STARTUP_TIMEOUT,
            secrets_key,
        };
        Self::open_with(data_dir, options)
    }

    /// Sets the chat's LLM from `DEVGEM_BRAIN` and its settings (docs: `devgem_infra::brain`);
    /// the chain's fallback notices go to the conversation being answered.
    pub async fn with_brain_from_env(mut self) -> Result<Self, OpenError> {
        let config = devgem_infra::brain::BrainConfig::from_env(|name| std::env::var(name).ok())?;
        let notices: devgem_infra::brain::OnNotice = Arc::new(devgem_chat::turn::notice);
        self.brain = devgem_infra::brain::build(&config, self.secrets_port.as_ref(), Some(notices)).await?;
        if let Some(brain) = &self.brain {
            tracing::info!(?brain, "the chat answers with an LLM where its rules do not");
        }
        Ok(self)
    }

    /// Puts the Store, Bus and Blobs on GCP when the environment says so: `DEVGEM_STORE=firestore`
    /// (default `sqlite`), `DEVGEM_BUS=pubsub` (default `embedded`) and `DEVGEM_BLOBS=gcs`
    /// (default `files`), with the names of [`devgem_infra::gcp::GcpConfig`]. The builder and
    /// runtime stay local, rebuilt on the chosen ports.
    pub async fn with_data_plane_from_env(self) -> Result<Self, OpenError> {
        self.with_data_plane(|name| std::env::var(name).ok()).await
    }

    pub async fn with_data_plane(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Self, OpenError> {
        let store = adapter(&get, "DEVGEM_STORE", ["sqlite", "firestore"])?;
        let blobs = adapter(&get, "DEVGEM_BLOBS", ["files", "gcs"])?;
        let bus = adapter(&get, "DEVGEM_BUS", ["embedded", "pubsub"])?;
        if store == "sqlite" && blobs == "files" && bus == "embedded" {
            return Ok(self);
        }
        let config = devgem_infra::gcp::GcpConfig::from_env(&get)?;
        if blobs == "gcs" {
            let gcs = devgem_infra::gcp::storage::GcsBlobs::connect(&config).await?;
            self.ports.blobs = Arc::new(gcs);
        }
        if store == "firestore" {
            let firestore =
                devgem_infra::gcp::firestore::FirestoreStore::connect(&config, self.ports.blobs.clone()).await?;
            self.ports.store = Arc::new(firestore);
        }
        if bus == "pubsub" {
            let pubsub = Arc::new(PubSubBus::connect(&config).await?);
            self.ports.bus = pubsub.clone();
            self.pubsub = Some(pubsub);
        }
        self.rewire()?;
        tracing::info!(%store, %bus, %blobs, project = %config.project, "the data plane is on GCP");
        Ok(self)
    }

    /// Puts builds, services and secrets on GCP when the environment says so:
    /// `DEVGEM_BUILDER=cloudbuild`, `DEVGEM_RUNTIME=cloudrun` and `DEVGEM_SECRETS=secretmanager`
    /// (default `local` each), with the names of [`devgem_infra::gcp::GcpConfig`]. Build logs and
    /// services' logs are read from Cloud Logging. Call it after [`Embedded::with_data_plane`].
    /// `uses`: the ports the process's functions call; the others' clients are not set up
    /// (each costs a few milliseconds of start and some memory).
    pub async fn with_control_plane_from_env(self, uses: ControlPorts) -> Result<Self, OpenError> {
        self.with_control_plane(|name| std::env::var(name).ok(), uses).await
    }

    pub async fn with_control_plane(
        mut self,
        get: impl Fn(&str) -> Option<String>,
        uses: ControlPorts,
    ) -> Result<Self, OpenError> {
        use devgem_infra::gcp::{cloudbuild, cloudrun, logging, secretmanager};
        // Every setting is checked, whether this process uses it or not.
        let choose = |used: bool, choice: String| if used { choice } else { "local".to_owned() };
        let builder = choose(uses.builder, adapter(&get, "DEVGEM_BUILDER", ["local", "cloudbuild"])?);
        let runtime = choose(uses.runtime, adapter(&get, "DEVGEM_RUNTIME", ["local", "cloudrun"])?);
        let secrets = choose(uses.secrets, adapter(&get, "DEVGEM_SECRETS", ["local", "secretmanager"])?);
        if builder == "local" && runtime == "local" && secrets == "local" {
            return Ok(self);
        }
        let config = devgem_infra::gcp::GcpConfig::from_env(&get)?;
        // One reader for builds' and services' logs: Cloud Logging's read quota is per project.
        // Its client is set up on the first read.
        let logs = Arc::new(logging::CloudLogging::connect(&config).await.map_err(ControlPlaneError::Logging)?);
        if secrets == "secretmanager" {
            let manager =
                secretmanager::SecretManagerSecrets::connect(&config).await.map_err(ControlPlaneError::Secrets)?;
            self.secrets_port = Arc::new(manager);
        }
        if builder == "cloudbuild" {
            let cloud = cloudbuild::CloudBuilder::connect(&config, logs.clone())
                .await
                .map_err(ControlPlaneError::Builder)?
                .with_blobs(self.ports.blobs.clone());
            self.builder_port = Arc::new(cloud);
        }
        if runtime == "cloudrun" {
            let cloud = cloudrun::CloudRunRuntime::connect(&config).await?.with_logs(logs);
            self.runtime_port = Arc::new(cloud);
        }
        tracing::info!(%builder, %runtime, %secrets, project = %config.project, region = %config.region, "the control plane is on GCP");
        Ok(self)
    }

    /// Builds what holds ports (identity, builder, runtime) again on the current ones.
    fn rewire(&mut self) -> Result<(), OpenError> {
        let executor = self.builder.executor().clone();
        self.identity = Identity::new(self.ports.store.clone(), self.ports.clock.clone());
        self.builder = local_builder(executor.clone(), &self.ports, &self.source);
        self.runtime = local_runtime(&self.data_dir, executor, &self.secrets, &self.ports, self.startup_timeout)?;
        self.builder_port = Arc::new(self.builder.clone());
        self.runtime_port = Arc::new(self.runtime.clone());
        Ok(())
    }

    /// Stops the bus: the embedded one's deliveries finish (up to `grace`); Pub/Sub's batched
    /// messages are sent.
    pub async fn shutdown_bus(&self, grace: Duration) {
        if let Some(pubsub) = &self.pubsub {
            pubsub.flush().await;
        }
        self.bus.shutdown(grace).await;
    }

    /// Sets the monitor's thresholds from `DEVGEM_MONITOR_*` (see `devgem_monitor::MonitorSettings`).
    pub fn with_monitor_from_env(mut self) -> Result<Self, OpenError> {
        self.monitor = devgem_monitor::MonitorSettings::from_env(|name| std::env::var(name).ok())?;
        Ok(self)
    }

    /// Opens every adapter on `data_dir` with explicit options (tests: loopback git, a short
    /// startup timeout, a key of their own).
    pub fn open_with(data_dir: &Path, options: EmbeddedOptions) -> Result<Self, OpenError> {
        let EmbeddedOptions { policy, startup_timeout, secrets_key } = options;
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir { path: data_dir.to_owned(), source })?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Arc::new(LocalStore::open(&data_dir.join("store.db"), clock.clone())?);
        let bus = LocalBus::open(&data_dir.join("bus.db"), clock.clone())?;
        let blobs = Arc::new(LocalBlobs::open(&data_dir.join("blobs"))?);
        let identity = Identity::new(store.clone(), clock.clone());
        let ports = Ports { store, bus: Arc::new(bus.clone()), blobs, clock };
        let source = Arc::new(GitSource::new(policy));
        let secrets = Arc::new(LocalSecrets::open(data_dir.join("secrets.json"), &secrets_key));
        let executor = Arc::new(executor_for(data_dir)?);
        let builder = local_builder(executor.clone(), &ports, &source);
        let runtime = local_runtime(data_dir, executor, &secrets, &ports, startup_timeout)?;
        let secrets_port: Arc<dyn Secrets> = secrets.clone();
        let work_dir = data_dir.join("work");
        std::fs::create_dir_all(&work_dir).map_err(|source| OpenError::DataDir { path: work_dir.clone(), source })?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            ports,
            bus,
            identity,
            source,
            secrets,
            builder_port: Arc::new(builder.clone()),
            runtime_port: Arc::new(runtime.clone()),
            secrets_port,
            builder,
            runtime,
            work_dir,
            brain: None,
            monitor: Default::default(),
            pubsub: None,
            api_url: None,
            startup_timeout,
        })
    }
}

fn local_builder(executor: Arc<Executor>, ports: &Ports, source: &Arc<GitSource>) -> LocalBuilder {
    LocalBuilder::new(executor, ports.bus.clone(), ports.blobs.clone(), source.clone(), ports.clock.clone())
}

fn local_runtime(
    data_dir: &Path,
    executor: Arc<Executor>,
    secrets: &Arc<LocalSecrets>,
    ports: &Ports,
    startup_timeout: Duration,
) -> Result<LocalRuntime, OpenError> {
    let runtime = LocalRuntime::open(
        data_dir.join("runtime"),
        executor,
        secrets.clone(),
        ports.bus.clone(),
        ports.clock.clone(),
        startup_timeout,
    )?;
    Ok(runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(dir: &Path) -> Embedded {
        let options = EmbeddedOptions {
            policy: SourcePolicy { allow_local_paths: false, allow_hosts: Vec::new() },
            startup_timeout: Duration::from_secs(5),
            secrets_key: dir.join("secrets.key"),
        };
        Embedded::open_with(&dir.join("data"), options).expect("embedded adapters")
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[tokio::test]
    async fn an_unknown_adapter_is_refused_with_the_choices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = embedded(dir.path()).with_data_plane(env(&[("DEVGEM_BUS", "kafka")])).await.expect_err("unknown");
        assert_eq!(error.to_string(), r#"DEVGEM_BUS="kafka" is not an adapter DevGem knows; use embedded or pubsub"#);
        let error =
            embedded(dir.path()).with_data_plane(env(&[("DEVGEM_BUS", "pubsub")])).await.expect_err("no project");
        assert!(error.to_string().contains("GOOGLE_CLOUD_PROJECT is not set"), "{error}");
    }

    #[tokio::test]
    async fn only_the_control_plane_clients_a_process_uses_are_set_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pairs = &[
            ("GOOGLE_CLOUD_PROJECT", "p"),
            ("DEVGEM_RUNTIME", "cloudrun"),
            ("DEVGEM_CLOUD_RUN_ENDPOINT", "http://127.0.0.1:9"),
            ("DEVGEM_IAM_ENDPOINT", "http://127.0.0.1:9"),
            ("DEVGEM_SECRET_MANAGER_ENDPOINT", "http://127.0.0.1:9"),
            ("DEVGEM_LOGGING_ENDPOINT", "http://127.0.0.1:9"),
        ];
        let none = ControlPorts { builder: false, runtime: false, secrets: false };
        let monitor = embedded(dir.path()).with_control_plane(env(pairs), none).await.expect("monitor");
        assert!(format!("{:?}", monitor.runtime_port).starts_with("LocalRuntime"), "no Cloud Run client");
        let deploy = embedded(dir.path())
            .with_control_plane(env(pairs), ControlPorts { runtime: true, ..none })
            .await
            .expect("deploy");
        assert!(format!("{:?}", deploy.runtime_port).starts_with("CloudRunRuntime"), "{:?}", deploy.runtime_port);
        // A wrong setting is refused even where it is not used: the same env serves every function.
        let error = embedded(dir.path())
            .with_control_plane(env(&[("DEVGEM_BUILDER", "docker")]), none)
            .await
            .expect_err("unknown builder");
        assert!(error.to_string().contains("use local or cloudbuild"), "{error}");
    }

    #[tokio::test]
    async fn the_pubsub_bus_replaces_the_port_and_what_publishes_through_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let defaults = embedded(dir.path()).with_data_plane(env(&[])).await.expect("defaults");
        assert!(defaults.pubsub.is_none());
        // The client connects lazily: nothing listens on the emulator address until a publish.
        let pairs = &[("DEVGEM_BUS", "PubSub"), ("GOOGLE_CLOUD_PROJECT", "p"), ("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")];
        let on_pubsub = embedded(dir.path()).with_data_plane(env(pairs)).await.expect("pubsub");
        let pubsub = on_pubsub.pubsub.clone().expect("the Pub/Sub bus");
        let port: Arc<dyn devgem_common::ports::bus::Bus> = pubsub;
        assert!(Arc::ptr_eq(&on_pubsub.ports.bus, &port), "ports.bus is the Pub/Sub bus");
        assert!(format!("{:?}", on_pubsub.builder).contains("PubSubBus"), "the builder publishes through it");
        assert!(format!("{:?}", on_pubsub.runtime).contains("PubSubBus"), "the runtime publishes through it");
    }
}
