//! Local emulators of the GCP services, for the GCP adapters' tests and benchmarks: each one runs
//! as a child process on a free loopback port and stops when its handle is dropped.
//!
//! This module owns the parts they share: finding a free port ([`free_port`]), waiting until a
//! port answers ([`wait_for_port`]), and the child-process guard that kills the emulator on drop
//! ([`ChildGuard`]). One file per emulator next to it ([`storage`], ...).
//!
//! The emulators are installed by `scripts/install-tools.sh`. When one is missing, starting it
//! fails with an error that says so: tests that need an emulator fail, they never skip.

pub mod cloudbuild;
pub mod cloudrun;
pub mod firestore;
pub mod iam;
pub mod logging;
pub mod pubsub;
pub mod secretmanager;
pub mod standin;
pub mod storage;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What to run to install the emulators; every "missing" error names it.
pub const INSTALL_HINT: &str = "run scripts/install-tools.sh";

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("the {emulator} emulator needs {tool}, which is not installed; {INSTALL_HINT}")]
    ToolMissing { emulator: &'static str, tool: String },
    #[error("could not start the {emulator} emulator ({program}): {source}")]
    Spawn { emulator: &'static str, program: String, source: std::io::Error },
    #[error("the {emulator} emulator exited at start ({status}): {output}")]
    Exited { emulator: &'static str, status: ExitStatus, output: String },
    #[error("the {emulator} emulator did not answer on 127.0.0.1:{port} within {waited:?}: {output}")]
    Timeout { emulator: &'static str, port: u16, waited: Duration, output: String },
    #[error("the {emulator} emulator: {message}")]
    Setup { emulator: &'static str, message: String },
    #[error("emulator I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A loopback port that was free a moment ago. Another process may take it before the emulator
/// binds it; emulators that fail to bind are started again on a new port (see [`storage`]).
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A path in this repository (relative to its root), e.g. an emulator's launcher script.
pub fn repo_path(relative: &str) -> PathBuf {
    // The infra crate lives one level below the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// A running emulator process: killed (and reaped) when dropped, so a failing test does not leave
/// it behind. Its standard input stays open while the guard lives; launchers that watch it exit
/// on their own even if this process dies without running destructors.
#[derive(Debug)]
pub struct ChildGuard {
    emulator: &'static str,
    child: Child,
    _stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with its output going to a log file (read back in error messages).
    /// A program that is not installed is reported as [`EmulatorError::ToolMissing`].
    pub fn spawn(emulator: &'static str, mut command: Command) -> Result<Self, EmulatorError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let log =
            std::env::temp_dir().join(format!("devgem-{emulator}-emulator-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log)?;
        command.stdin(Stdio::piped()).stdout(log_file.try_clone()?).stderr(log_file);
        let mut child = command.spawn().map_err(|source| {
            let _ = std::fs::remove_file(&log);
            match source.kind() {
                std::io::ErrorKind::NotFound => EmulatorError::ToolMissing { emulator, tool: program.clone() },
                _ => EmulatorError::Spawn { emulator, program: program.clone(), source },
            }
        })?;
        let stdin = child.stdin.take();
        Ok(Self { emulator, child, _stdin: stdin, log })
    }

    /// What the process printed so far (the last few KiB), for error messages.
    pub fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        let text = text.trim();
        let start = text.len().saturating_sub(4096);
        let start = (start..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        if text.is_empty() { "(no output)".to_owned() } else { text[start..].to_owned() }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Waits until 127.0.0.1:`port` accepts connections. Fails early if the process exits (with its
/// output in the error), or after `timeout`.
pub async fn wait_for_port(child: &mut ChildGuard, port: u16, timeout: Duration) -> Result<(), EmulatorError> {
    let started = Instant::now();
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.exited() {
            return Err(EmulatorError::Exited { emulator: child.emulator, status, output: child.output() });
        }
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(EmulatorError::Timeout {
                emulator: child.emulator,
                port,
                waited: timeout,
                output: child.output(),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts attempts of an emulator on a new port when the last one lost its port.
const START_ATTEMPTS: u32 = 3;

/// Starts `command(port)` on a free loopback port and waits until it answers there. A port found
/// free may be taken before the emulator binds it, so a start that fails that way is tried again
/// on another port; any other failure is returned as it is.
pub async fn start_on_free_port(
    emulator: &'static str,
    timeout: Duration,
    command: impl Fn(u16) -> Command,
) -> Result<(ChildGuard, u16), EmulatorError> {
    let mut last_error = None;
    for _ in 0..START_ATTEMPTS {
        let port = free_port()?;
        let mut child = ChildGuard::spawn(emulator, command(port))?;
        match wait_for_port(&mut child, port, timeout).await {
            Ok(()) => return Ok((child, port)),
            Err(error) if is_port_taken(&error) => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or(EmulatorError::Setup { emulator, message: "could not start".to_owned() }))
}

/// Whether the emulator exited because its port was taken (Python says "Address already in use",
/// Node "EADDRINUSE: address already in use").
fn is_port_taken(error: &EmulatorError) -> bool {
    matches!(error, EmulatorError::Exited { output, .. } if output.to_ascii_lowercase().contains("address already in use"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_can_be_bound() {
        let port = free_port().expect("free port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }

    #[tokio::test]
    async fn a_missing_program_says_how_to_install_it() {
        let error = ChildGuard::spawn("test", Command::new("devgem-no-such-emulator")).expect_err("missing");
        assert!(matches!(error, EmulatorError::ToolMissing { .. }), "{error}");
        assert!(error.to_string().contains(INSTALL_HINT), "{error}");
    }

    #[tokio::test]
    async fn a_process_that_exits_is_reported_with_its_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo cannot bind >&2; exit 3"]);
        let mut child = ChildGuard::spawn("test", command).expect("spawn sh");
        let port = free_port().expect("free port");
        let error = wait_for_port(&mut child, port, Duration::from_secs(10)).await.expect_err("exits");
        assert!(matches!(error, EmulatorError::Exited { .. }), "{error}");
        assert!(error.to_string().contains("cannot bind"), "{error}");
    }

    #[tokio::test]
    async fn the_guard_kills_the_process_on_drop() {
        let mut command = Command::new("sleep");
        command.arg("600");
        let child = ChildGuard::spawn("test", command).expect("spawn sleep");
        let pid = child.id();
        drop(child);
        // Reaped by the guard: no such process any more (or a zombie of someone else's, never ours).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(!status.contains("sleep"), "sleep {pid} still running: {status}");
    }
}
