//! Where a step's command runs: the stage's filesystem, as a container would see it. The host's
//! root is the bottom layer of an overlay (so host toolchains are visible), the stage's layers sit
//! on top, and every write lands in one upper directory inside the builder's own directory. The
//! mounts live in a private mount namespace (`unshare`), and a PID namespace makes killing the
//! step kill everything it started. The data dir and the host's credential directories are
//! hidden under empty tmpfs mounts, so a RUN line cannot read DevGem's or the user's secrets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the sandbox mounts its own directories inside the stage's filesystem. `/run` is a fresh
/// tmpfs in every step, so nothing under it ever reaches a layer.
pub const CACHE_DIR: &str = "/run/devgem/cache";
pub const SOURCE_DIR: &str = "/run/devgem/src";
pub const FROM_DIR: &str = "/run/devgem/from";

/// The exit status of a sandbox that could not be set up (the same as `chroot`'s own failures).
pub const SETUP_FAILED: i32 = 125;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the local builder needs `{0}` (util-linux/coreutils) on this machine to isolate build steps; install it, or deploy to Cloud Run"
    )]
    MissingTool(&'static str),
    #[error("too many layers for one overlay mount ({0}); merge RUN lines to make fewer layers")]
    TooManyLayers(usize),
    #[error("preparing the sandbox in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A stage's filesystem: layers bottom to top over the host root, and where writes go.
#[derive(Debug, Clone, Default)]
pub struct RootFs {
    pub layers: Vec<PathBuf>,
    /// Writes land here; `None` mounts the stage read-only.
    pub upper: Option<PathBuf>,
}

/// One command to run inside a stage.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub root: RootFs,
    /// Another stage, read-only at [`FROM_DIR`] (for `COPY --from`).
    pub from: Option<RootFs>,
    /// A host directory, read-only at [`SOURCE_DIR`] (staged COPY sources).
    pub source: Option<PathBuf>,
    pub workdir: String,
    pub argv: Vec<String>,
    /// The whole environment of the command; nothing is inherited from the host.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Tools {
    /// `setpriv --pdeathsig KILL`: a step or app dies with the DevGem process that started it,
    /// even when that process is killed outright (no orphans holding ports after a crash).
    setpriv: Option<PathBuf>,
    unshare: PathBuf,
    mount: PathBuf,
    chroot: PathBuf,
    mkdir: PathBuf,
}

/// Builds the commands that run steps (and, later, apps) inside a stage's filesystem.
#[derive(Debug, Clone)]
pub struct Sandbox {
    tools: Tools,
    /// Mount points and overlay work directories: `<builder root>/scratch`.
    scratch: PathBuf,
    /// The persistent download caches (pip, npm, Go, Cargo), mounted at [`CACHE_DIR`].
    cache: PathBuf,
    /// Directories hidden from every step (the data dir, credential directories).
    hidden_dirs: Vec<PathBuf>,
    /// Files hidden from every step (`~/.netrc`, ...).
    hidden_files: Vec<PathBuf>,
    as_root: bool,
}

/// Scratch directories of one invocation; removed when dropped (after the command has ended).
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The overlay work dir holds a root-owned `work/` that only a recursive removal clears.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find(path: &OsString, name: &'static str) -> Result<PathBuf, SandboxError> {
    std::env::split_paths(path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(SandboxError::MissingTool(name))
}

/// Quotes a string for `sh`: single quotes, with embedded quotes spliced in.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b)) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

impl Sandbox {
    /// `hidden` are directories or files no step may read; the data dir is always among them.
    pub fn new(
        scratch: PathBuf,
        cache: PathBuf,
        hidden: impl IntoIterator<Item = PathBuf>,
        host_path: &OsString,
    ) -> Result<Self, SandboxError> {
        let tools = Tools {
            setpriv: find(host_path, "setpriv").ok(),
            unshare: find(host_path, "unshare")?,
            mount: find(host_path, "mount")?,
            chroot: find(host_path, "chroot")?,
            mkdir: find(host_path, "mkdir")?,
        };
        let (mut hidden_dirs, mut hidden_files) = (Vec::new(), Vec::new());
        for path in hidden {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => hidden_dirs.push(path),
                Ok(_) => hidden_files.push(path),
                Err(_) => {}
            }
        }
        let as_root = rustix::process::geteuid().is_root();
        Ok(Self { tools, scratch, cache, hidden_dirs, hidden_files, as_root })
    }

    /// The host paths every sandbox hides besides the data dir: where people keep credentials.
    pub fn credential_paths() -> Vec<PathBuf> {
        let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else { return Vec::new() };
        [
            ".ssh",
            ".aws",
            ".azure",
            ".config/gcloud",
            ".docker",
            ".kube",
            ".gnupg",
            ".netrc",
            ".git-credentials",
            ".npmrc",
            ".pypirc",
        ]
        .iter()
        .map(|p| home.join(p))
        .collect()
    }

    fn overlay_options(&self, root: &RootFs, host: &Path, work: &Path) -> Result<String, SandboxError> {
        // lowerdir lists the top layer first; the host's view is the bottom.
        let mut lower: Vec<String> =
            root.layers.iter().rev().map(|p| p.to_string_lossy().replace(':', "\\:")).collect();
        lower.push(host.to_string_lossy().into_owned());
        let mut options = format!("lowerdir={}", lower.join(":"));
        if let Some(upper) = &root.upper {
            options.push_str(&format!(",upperdir={},workdir={}", upper.display(), work.display()));
        }
        // Mount options must fit in one page.
        if options.len() > 3800 {
            return Err(SandboxError::TooManyLayers(root.layers.len()));
        }
        Ok(options)
    }

    /// The command for `invocation`, and the scratch directories to keep until it has ended.
    pub fn command(&self, invocation: &Invocation) -> Result<(tokio::process::Command, Scratch), SandboxError> {
        let dir = self.scratch.join(format!("{:016x}", fastrand::u64(..)));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SandboxError::Io { path, source }
        };
        for sub in ["m", "w", "f", "fw", "h", "e"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir))?;
        }
        let scratch = Scratch { dir: dir.clone() };
        let merged = dir.join("m");
        let mount = quote_path(&self.tools.mount);
        let mkdir = quote_path(&self.tools.mkdir);
        let host = dir.join("h");
        // Setup failures exit 125, like `chroot` itself, so they are told apart from the step's own.
        let mut script = String::new();
        script.push_str(&format!("M={}\n", quote_path(&merged)));
        // The host's root cannot be a lower layer beside layers stored on the same filesystem
        // (the kernel refuses overlapping layers), so it enters through an overlay of its own,
        // paired with an empty tmpfs: a separate filesystem that the layers are not under.
        script.push_str(&format!("{mount} -t tmpfs -o mode=0755 tmpfs {}\n", quote_path(&dir.join("e"))));
        script.push_str(&format!(
            "{mount} -t overlay devgem-host -o lowerdir=/:{} {}\n",
            quote_path(&dir.join("e")),
            quote_path(&host)
        ));
        script.push_str(&format!(
            "{mount} -t overlay devgem -o {} \"$M\"\n",
            quote(&self.overlay_options(&invocation.root, &host, &dir.join("w"))?)
        ));
        script.push_str(&format!("{mount} -t proc proc \"$M/proc\"\n"));
        script.push_str(&format!("{mount} --rbind /dev \"$M/dev\"\n"));
        script.push_str(&format!("{mount} --rbind /sys \"$M/sys\"\n"));
        script.push_str(&format!("{mount} -t tmpfs -o mode=1777 tmpfs \"$M/tmp\"\n"));
        script.push_str(&format!("{mount} -t tmpfs -o mode=0755 tmpfs \"$M/run\"\n"));
        for hidden in &self.hidden_dirs {
            let target = format!("\"$M\"{}", quote_path(hidden));
            script.push_str(&format!("if [ -d {target} ]; then {mount} -t tmpfs -o mode=0700 tmpfs {target}; fi\n"));
        }
        for hidden in &self.hidden_files {
            let target = format!("\"$M\"{}", quote_path(hidden));
            script.push_str(&format!("if [ -f {target} ]; then {mount} --bind /dev/null {target}; fi\n"));
        }
        script.push_str(&format!(
            "{mkdir} -p \"$M{CACHE_DIR}\"\n{mount} --bind {} \"$M{CACHE_DIR}\"\n",
            quote_path(&self.cache)
        ));
        if let Some(source) = &invocation.source {
            script.push_str(&format!(
                "{mkdir} -p \"$M{SOURCE_DIR}\"\n{mount} --bind {} \"$M{SOURCE_DIR}\"\n",
                quote_path(source)
            ));
        }
        if let Some(from) = &invocation.from {
            script.push_str(&format!("{mkdir} -p \"$M{FROM_DIR}\"\n"));
            if from.layers.is_empty() {
                script.push_str(&format!("{mount} --bind {} \"$M{FROM_DIR}\"\n", quote_path(&host)));
            } else {
                let read_only = RootFs { layers: from.layers.clone(), upper: None };
                script.push_str(&format!(
                    "{mount} -t overlay devgem-from -o {} \"$M{FROM_DIR}\"\n",
                    quote(&self.overlay_options(&read_only, &host, &dir.join("fw"))?)
                ));
            }
        }
        let mut script: String = script.lines().map(|line| format!("{line} || exit {SETUP_FAILED}\n")).collect();
        let workdir = if invocation.workdir.is_empty() { "/" } else { invocation.workdir.as_str() };
        script.push_str(&format!(
            "exec {} \"$M\" /bin/sh -c 'mkdir -p \"$1\" && cd \"$1\" && shift && exec \"$@\"' devgem {}",
            quote_path(&self.tools.chroot),
            quote(workdir)
        ));
        for arg in &invocation.argv {
            script.push(' ');
            script.push_str(&quote(arg));
        }
        script.push('\n');

        let mut command = match &self.tools.setpriv {
            Some(setpriv) => {
                let mut command = tokio::process::Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(&self.tools.unshare);
                command
            }
            None => tokio::process::Command::new(&self.tools.unshare),
        };
        if !self.as_root {
            command.args(["--user", "--map-root-user"]);
        }
        command
            .args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "/bin/sh", "-c"])
            .arg(script)
            .env_clear()
            .envs(invocation.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Ok((command, scratch))
    }
}

/// Kills a step's whole process group (the sandbox and everything it started).
pub fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(quote("/usr/bin"), "/usr/bin");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's $HOME"), r"'it'\''s $HOME'");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote("a 'b' $c \"d\" \\e")))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a 'b' $c \"d\" \\e");
    }
}
