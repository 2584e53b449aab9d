//! Adapters behind DevGem's ports ("the hands").
//!
//! # Layout
//! - [`local`]: the embedded default that `devgem up` runs on: SQLite store and bus, blobs as
//!   files under the data dir. No cloud account needed, and the tests exercise the same code.
//! - `gcp` (Firestore, Pub/Sub, Cloud Storage, Cloud Build, Cloud Run, Secret Manager, Logging)
//!   and `brain` (LLM adapters) arrive with their issues.

pub mod local;
pub mod source;
#[cfg(test)]
mod test_support;
