//! The embedded default's wiring: every adapter opened on one data dir.

use devgem_common::clock::{Clock, SystemClock};
use devgem_common::identity::Identity;
use devgem_common::ports::Ports;
use devgem_infra::local::{LocalBlobs, LocalBus, LocalStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The embedded adapters, opened.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub data_dir: PathBuf,
    pub ports: Ports,
    /// The bus as itself, for subscriptions and stats that the Bus port does not offer.
    pub bus: LocalBus,
    pub identity: Identity,
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
}

impl Embedded {
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir { path: data_dir.to_owned(), source })?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Arc::new(LocalStore::open(&data_dir.join("store.db"), clock.clone())?);
        let bus = LocalBus::open(&data_dir.join("bus.db"), clock.clone())?;
        let blobs = Arc::new(LocalBlobs::open(&data_dir.join("blobs"))?);
        let identity = Identity::new(store.clone(), clock.clone());
        let ports = Ports { store, bus: Arc::new(bus.clone()), blobs, clock };
        Ok(Self { data_dir: data_dir.to_owned(), ports, bus, identity })
    }
}
