//! The embedded adapters: everything `devgem up` needs on one machine, under one data dir.
//!
//! ```text
//! <data dir>/store.db   documents and session event logs (SQLite, WAL)
//! <data dir>/bus.db     outbox, deliveries, dead letters (SQLite, WAL)
//! <data dir>/blobs/     one file per blob
//! <data dir>/secrets.json secrets, encrypted (the key is outside the data dir)
//! ```

pub mod blobs;
pub mod builder;
pub mod bus;
mod committer;
pub mod runtime;
pub mod secrets;
mod sqlite;
pub mod store;

pub use blobs::LocalBlobs;
pub use bus::{BusStats, DeadLetter, LocalBus, SubscriptionConfig};
pub use secrets::LocalSecrets;
pub use store::LocalStore;
