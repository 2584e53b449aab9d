//! Adapters behind DevGem's ports ("the hands").
//!
//! # Layout
//! - [`local`]: the embedded default that `devgem up` runs on: SQLite store and bus, blobs as
//!   files under the data dir. No cloud account needed, and the tests exercise the same code.
//! - [`brain`]: the LLM adapters (Gemini API, Vertex AI in several regions, OpenAI-compatible
//!   servers) behind one failover chain with circuit breakers, a token budget and retries.
//! - `gcp` (Firestore, Pub/Sub, Cloud Storage, Cloud Build, Cloud Run, Secret Manager, Logging)
//!   arrives with its issue.

pub mod brain;
pub mod gcp;
pub mod local;
pub mod resilience;
pub mod source;
#[cfg(test)]
mod test_support;
