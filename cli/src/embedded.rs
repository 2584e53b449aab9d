//! The embedded default's wiring: every adapter opened on one data dir.

use devgem_common::clock::{Clock, SystemClock};
use devgem_common::identity::Identity;
use devgem_common::ports::Ports;
use devgem_infra::local::builder::{LocalBuilder, executor_for};
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
    /// The bus as itself, for subscriptions and stats that the Bus port does not offer.
    pub bus: LocalBus,
    pub identity: Identity,
    pub source: Arc<GitSource>,
    pub secrets: Arc<LocalSecrets>,
    pub builder: LocalBuilder,
    pub runtime: LocalRuntime,
    /// Where the analyze function fetches snapshots.
    pub work_dir: PathBuf,
    /// The chat's LLM (`DEVGEM_BRAIN`); `None`: the offline rules answer everything.
    pub brain: Option<Arc<dyn devgem_common::ports::brain::Brain>>,
    /// The monitor's thresholds (`DEVGEM_MONITOR_*`).
    pub monitor: devgem_monitor::MonitorSettings,
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
    Adapter { name: &'static str, value: String, expected: &'static str },
    #[error("cannot start the local runtime: {0}")]
    Runtime(#[from] devgem_common::ports::runtime::RuntimeError),
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

    /// Opens every adapter on `data_dir` with explicit options (tests: loopback git, a short
    /// startup timeout, a key of their own).
    /// Sets the chat's LLM from `DEVGEM_BRAIN` and its settings (docs: `devgem_infra::brain`);
    /// the chain's fallback notices go to the conversation being answered.
    pub async fn with_brain_from_env(mut self) -> Result<Self, OpenError> {
        let config = devgem_infra::brain::BrainConfig::from_env(|name| std::env::var(name).ok())?;
        let notices: devgem_infra::brain::OnNotice = Arc::new(devgem_chat::turn::notice);
        self.brain = devgem_infra::brain::build(&config, self.secrets.as_ref(), Some(notices)).await?;
        if let Some(brain) = &self.brain {
            tracing::info!(?brain, "the chat answers with an LLM where its rules do not");
        }
        Ok(self)
    }

    /// Puts the Store and Blobs on GCP when the environment says so: `DEVGEM_STORE=firestore`
    /// (default `sqlite`) and `DEVGEM_BLOBS=gcs` (default `files`), with the names of
    /// [`devgem_infra::gcp::GcpConfig`]. The bus, builder and runtime stay as they are.
    pub async fn with_data_plane_from_env(self) -> Result<Self, OpenError> {
        self.with_data_plane(|name| std::env::var(name).ok()).await
    }

    pub async fn with_data_plane(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Self, OpenError> {
        let choice = |name: &'static str, default: &'static str, options: [&'static str; 2], expected| {
            let value = get(name).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
            let value = value.unwrap_or_else(|| default.to_owned());
            if options.contains(&value.as_str()) {
                Ok(value)
            } else {
                Err(OpenError::Adapter { name, value, expected })
            }
        };
        let store = choice("DEVGEM_STORE", "sqlite", ["sqlite", "firestore"], "sqlite or firestore")?;
        let blobs = choice("DEVGEM_BLOBS", "files", ["files", "gcs"], "files or gcs")?;
        if store == "sqlite" && blobs == "files" {
            return Ok(self);
        }
        let config = devgem_infra::gcp::GcpConfig::from_env(&get)?;
        if blobs == "gcs" {
            let gcs = devgem_infra::gcp::storage::GcsBlobs::connect(&config).await?;
            self.ports.blobs = Arc::new(gcs);
            self.builder = LocalBuilder::new(
                self.builder.executor().clone(),
                self.ports.bus.clone(),
                self.ports.blobs.clone(),
                self.source.clone(),
                self.ports.clock.clone(),
            );
        }
        if store == "firestore" {
            let firestore =
                devgem_infra::gcp::firestore::FirestoreStore::connect(&config, self.ports.blobs.clone()).await?;
            self.ports.store = Arc::new(firestore);
            self.identity = Identity::new(self.ports.store.clone(), self.ports.clock.clone());
        }
        tracing::info!(%store, %blobs, project = %config.project, "the data plane is on GCP");
        Ok(self)
    }

    /// Sets the monitor's thresholds from `DEVGEM_MONITOR_*` (see `devgem_monitor::MonitorSettings`).
    pub fn with_monitor_from_env(mut self) -> Result<Self, OpenError> {
        self.monitor = devgem_monitor::MonitorSettings::from_env(|name| std::env::var(name).ok())?;
        Ok(self)
    }

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
        let builder = LocalBuilder::new(
            executor.clone(),
            ports.bus.clone(),
            ports.blobs.clone(),
            source.clone(),
            ports.clock.clone(),
        );
        let runtime = LocalRuntime::open(
            data_dir.join("runtime"),
            executor,
            secrets.clone(),
            ports.bus.clone(),
            ports.clock.clone(),
            startup_timeout,
        )?;
        let work_dir = data_dir.join("work");
        std::fs::create_dir_all(&work_dir).map_err(|source| OpenError::DataDir { path: work_dir.clone(), source })?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            ports,
            bus,
            identity,
            source,
            secrets,
            builder,
            runtime,
            work_dir,
            brain: None,
            monitor: Default::default(),
        })
    }
}
