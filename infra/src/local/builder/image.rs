//! A locally built image: its layers (directories under the builder's root, bottom to top) and
//! the configuration the Dockerfile left (env, workdir, user, command, exposed ports). It is saved
//! as `image.json` in the build's directory, and started in the same sandbox its steps ran in.

use super::sandbox::{Invocation, RootFs, Sandbox, SandboxError, Scratch, quote};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalImage {
    pub build_id: String,
    pub layers: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    /// `USER` as written; recorded, while the app runs as the sandbox's root (see ARCHITECTURE.md).
    pub user: Option<String>,
    /// ENTRYPOINT followed by CMD.
    pub argv: Vec<String>,
    pub exposed: Vec<u16>,
    /// The final stage's cache key: equal digests mean identical images.
    pub digest: String,
}

const FILE: &str = "image.json";

impl LocalImage {
    pub fn save(&self, build_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = build_dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, build_dir.join(FILE))
    }

    pub fn load(build_dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(build_dir.join(FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// The command as a person reads it: `sh -c "x"` shows as `x`.
    pub fn start_command(&self) -> String {
        match self.argv.as_slice() {
            [shell, flag, script] if shell.ends_with("sh") && flag == "-c" => script.clone(),
            argv => argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
        }
    }

    /// The command that starts the app: the image's env plus `env` (e.g. `PORT`), writes into
    /// `upper` (a fresh directory per revision, on the builder's filesystem).
    pub fn command(
        &self,
        sandbox: &Sandbox,
        upper: PathBuf,
        env: &[(String, String)],
    ) -> Result<(tokio::process::Command, Scratch), SandboxError> {
        let mut all: Vec<(String, String)> = vec![("HOME".into(), "/root".into())];
        for (k, v) in self.env.iter().chain(env) {
            match all.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => all.push((k.clone(), v.clone())),
            }
        }
        let invocation = Invocation {
            root: RootFs { layers: self.layers.clone(), upper: Some(upper) },
            workdir: self.workdir.clone(),
            argv: self.argv.clone(),
            env: all,
            ..Invocation::default()
        };
        sandbox.command(&invocation)
    }
}
