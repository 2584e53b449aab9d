//! The Cloud Storage emulator: PyPI `gcp-storage-emulator`, started through
//! `scripts/emulators/storage.py`, which patches what the official Rust client needs (gRPC list
//! and delete on the same port, generation headers on downloads; the script's docs list them).
//! In memory; the bucket exists when [`StorageEmulator::start`] returns.

use super::{ChildGuard, EmulatorError, free_port, repo_path, wait_for_port};
use crate::gcp::GcpConfig;
use std::process::Command;
use std::time::Duration;

const NAME: &str = "Cloud Storage";
const LAUNCHER: &str = "scripts/emulators/storage.py";
/// Python starts in well under a second here; a loaded CI machine gets more.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Another process can take the free port before the emulator binds it: try a few ports.
const START_ATTEMPTS: u32 = 3;

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
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let mut command = Command::new("python3");
            command.arg(&launcher).args(["--port", &port.to_string(), "--bucket", bucket]);
            let mut child = ChildGuard::spawn(NAME, command)?;
            match wait_for_port(&mut child, port, START_TIMEOUT).await {
                Ok(()) => {
                    return Ok(Self {
                        _child: child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        bucket: bucket.to_owned(),
                    });
                }
                // The launcher exits with 3 when its Python packages are missing.
                Err(EmulatorError::Exited { status, output, .. }) if status.code() == Some(3) => {
                    return Err(EmulatorError::ToolMissing {
                        emulator: NAME,
                        tool: format!("the Python packages gcp-storage-emulator and grpcio ({output})"),
                    });
                }
                Err(error @ EmulatorError::Exited { .. }) if is_port_taken(&error) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(EmulatorError::Setup { emulator: NAME, message: "could not start".to_owned() }))
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

fn is_port_taken(error: &EmulatorError) -> bool {
    matches!(error, EmulatorError::Exited { output, .. } if output.contains("Address already in use"))
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
