//! The GCP adapters: the data plane (Firestore store, Pub/Sub bus, Cloud Storage blobs, the OIDC
//! check of Pub/Sub's push requests) behind the same ports as the embedded adapters, and passing
//! the same contract suites (`infra/tests/contract_*.rs`).
//!
//! Credentials are Application Default Credentials; names come from the environment
//! ([`GcpConfig`]). Emulators are reached through their `*_EMULATOR_HOST`-style endpoints with
//! anonymous credentials. Every API call goes through [`call::Api`]: retries with backoff on
//! transient errors and one circuit breaker per API.

pub mod call;
pub mod client;
pub mod cloudbuild;
pub mod cloudrun;
pub mod config;
pub mod emulators;
pub mod firestore;
pub mod logging;
pub mod oidc;
pub mod pubsub;
pub mod secretmanager;
pub mod storage;

pub use config::GcpConfig;
