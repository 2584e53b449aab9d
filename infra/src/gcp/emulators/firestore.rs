//! The Firestore emulator: npm `@firestore-emulator/server` started by
//! `scripts/emulators/firestore.cjs`, which binds it to loopback and makes its commits keep
//! Firestore's rules (all-or-nothing, `update_time` preconditions). Each emulator is one empty
//! database; tests start one each or use distinct collections.

use super::{ChildGuard, EmulatorError, repo_path, start_on_free_port};
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
        let command = |port: u16| {
            let mut command = Command::new("node");
            command.arg(dir.join("firestore.cjs")).arg(port.to_string()).current_dir(&dir);
            command
        };
        let (child, port) = start_on_free_port("Firestore", Duration::from_secs(30), command).await?;
        Ok(Self { host: format!("127.0.0.1:{port}"), _child: child })
    }
}
