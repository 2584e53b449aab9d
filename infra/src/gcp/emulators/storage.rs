//! The Cloud Storage emulator: PyPI `gcp-storage-emulator`, started through
//! `scripts/emulators/storage.py`, which patches what the official Rust client needs (gRPC list
//! and delete on the same port, generation headers on downloads; the script's docs list them).
//! In memory; the bucket exists when [`StorageEmulator::start`] returns.

use super::{ChildGuard, EmulatorError, repo_path, start_on_free_port};
use crate::gcp::GcpConfig;
use std::process::Command;
use std::time::Duration;

const NAME: &str = "Cloud Storage";
const LAUNCHER: &str = "scripts/emulators/storage.py";
/// Python starts in well under a second here; a loaded CI machine gets more.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running emulator with one bucket. Dropping it stops the emulator.
#[derive(Debug)]
pub struct StorageEmulator {
    _child: ChildGuard,
    endpoint: String,
    bucket: String,
}

impl StorageEmulator {
    /// Starts the emulator on a free loopback port with `bucket` created.
    pub async fn start(bucket: &str) -> Result<Self, EmulatorError> {
        let launcher = repo_path(LAUNCHER);
        if !launcher.is_file() {
            return Err(EmulatorError::Setup { emulator: NAME, message: format!("{} is missing", launcher.display()) });
        }
        let command = |port: u16| {
            let mut command = Command::new("python3");
            command.arg(&launcher).args(["--port", &port.to_string(), "--bucket", bucket]);
            command
        };
        let (child, port) = start_on_free_port(NAME, START_TIMEOUT, command).await.map_err(|error| match error {
            // The launcher exits with 3 when its Python packages are missing.
            EmulatorError::Exited { status, output, .. } if status.code() == Some(3) => EmulatorError::ToolMissing {
                emulator: NAME,
                tool: format!("the Python packages gcp-storage-emulator and grpcio ({output})"),
            },
            error => error,
        })?;
        Ok(Self { _child: child, endpoint: format!("http://127.0.0.1:{port}"), bucket: bucket.to_owned() })
    }

    /// `http://127.0.0.1:PORT`: the JSON API and gRPC both answer there.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A configuration that points the GCP adapters' blobs at this emulator.
    pub fn config(&self) -> GcpConfig {
        GcpConfig {
            project: "devgem-test".to_owned(),
            firestore_database: "(default)".to_owned(),
            bucket: Some(self.bucket.clone()),
            storage_emulator: Some(self.endpoint.clone()),
            ..GcpConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_emulator_starts_with_its_bucket_and_stops_on_drop() {
        let emulator = StorageEmulator::start("devgem-emulator-test").await.expect("start the emulator");
        let url = format!("{}/storage/v1/b/{}", emulator.endpoint(), emulator.bucket());
        let bucket = reqwest::get(&url).await.expect("GET bucket");
        assert!(bucket.status().is_success(), "{url}: {}", bucket.status());
        let port = emulator.endpoint().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
        drop(emulator);
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(refused.is_err(), "the emulator still answers after drop");
    }
}
