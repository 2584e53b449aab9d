//! The Firestore emulator: npm `@firestore-emulator/server` started by
//! `scripts/emulators/firestore.cjs`, which binds it to loopback and makes its commits keep
//! Firestore's rules (all-or-nothing, `update_time` preconditions). Each emulator is one empty
//! database; tests start one each or use distinct collections.

use super::{ChildGuard, EmulatorError, free_port, repo_path, wait_for_port};
use std::process::Command;
use std::time::Duration;

/// A running Firestore emulator; stopped on drop.
#[derive(Debug)]
pub struct FirestoreEmulator {
    /// `127.0.0.1:port`, as `FIRESTORE_EMULATOR_HOST` names it.
    pub host: String,
    _child: ChildGuard,
}

impl FirestoreEmulator {
    pub async fn start() -> Result<Self, EmulatorError> {
        let dir = repo_path("scripts/emulators");
        if !dir.join("node_modules/@firestore-emulator/server").is_dir() {
            return Err(EmulatorError::ToolMissing {
                emulator: "Firestore",
                tool: "the npm package @firestore-emulator/server (in scripts/emulators/node_modules)".into(),
            });
        }
        let mut last = None;
        // A port found free may be taken before the emulator binds it: try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let mut command = Command::new("node");
            command.arg(dir.join("firestore.cjs")).arg(port.to_string()).current_dir(&dir);
            let mut child = ChildGuard::spawn("Firestore", command)?;
            match wait_for_port(&mut child, port, Duration::from_secs(30)).await {
                Ok(()) => return Ok(Self { host: format!("127.0.0.1:{port}"), _child: child }),
                Err(e @ EmulatorError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(EmulatorError::Setup { emulator: "Firestore", message: "could not start".into() }))
    }
}
