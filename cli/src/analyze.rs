//! `devgem analyze <dir | https git URL> [--json]`: the analyzer on a local directory, or on a
//! shallow clone of a public https repository. Never needs a server, never runs repo code.

use anyhow::{Context, bail};
use devgem_analyze::analyzer::model::{Analysis, Service};
use devgem_analyze::analyzer::{analyze_dir, repo::Limits};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const CLONE_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(target: &str, json: bool) -> anyhow::Result<()> {
    let analysis = if target.starts_with("https://") {
        let dir = tempfile::tempdir().context("cannot create a temporary directory for the clone")?;
        clone(target, dir.path()).await?;
        let root = dir.path().to_owned();
        tokio::task::spawn_blocking(move || analyze_dir(&root, Limits::default())).await??
    } else if target.contains("://") || target.starts_with("git@") {
        bail!("only https git URLs and local directories can be analyzed; got {target}");
    } else {
        let root = Path::new(target).to_owned();
        if !root.is_dir() {
            bail!("{target} is not a directory; pass a repository's directory or an https git URL");
        }
        tokio::task::spawn_blocking(move || analyze_dir(&root, Limits::default())).await??
    };
    let text = if json { format!("{}\n", serde_json::to_string_pretty(&analysis)?) } else { summary(&analysis) };
    write_stdout(&text)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub(crate) async fn clone(url: &str, dest: &Path) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new("git");
    command
        .args(["clone", "--depth", "1", "--quiet", "--no-tags", "--", url])
        .arg(dest)
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLONE_TIMEOUT, command.output())
        .await
        .with_context(|| format!("cloning {url} took longer than {CLONE_TIMEOUT:?}"))?
        .context("cannot run git; is it installed?")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("cannot clone {url}: {}", stderr.trim());
    }
    Ok(())
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn name<T: serde::Serialize>(value: &Option<T>) -> String {
    value
        .as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

fn service_lines(out: &mut String, s: &Service) {
    let version = s.runtime_version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
    let _ = writeln!(out, "  Language:        {}{version} ({})", name(&s.language), name(&s.package_manager));
    let _ = writeln!(out, "  Framework:       {}", name(&s.framework));
    let _ = writeln!(out, "  Start command:   {}", or_dash(s.start_command.as_deref()));
    let _ = writeln!(out, "  Build command:   {}", or_dash(s.build_command.as_deref()));
    let honours = if s.honours_port { "reads $PORT" } else { "fixed" };
    let _ = writeln!(
        out,
        "  Port:            {}",
        s.port.map_or_else(|| "chosen by the deployer".to_owned(), |p| format!("{p} ({honours})"))
    );
    let _ = writeln!(
        out,
        "  Dockerfile:      {}",
        if s.has_dockerfile { "the repo's own" } else { "none (DevGem writes one)" }
    );
    if !s.system_packages.is_empty() {
        let _ = writeln!(out, "  System packages: {}", s.system_packages.join(", "));
    }
    if !s.env_vars.is_empty() {
        let _ = writeln!(out, "  Env vars:");
        for var in &s.env_vars {
            let flags = [(var.required, "required"), (var.secret, "secret")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| *f)
                .collect::<Vec<_>>()
                .join(", ");
            let default = var.default.as_deref().map(|d| format!(" default {d:?}")).unwrap_or_default();
            let _ = writeln!(out, "    {:<24} {flags}{default}  ({})", var.name, var.sources.join(", "));
        }
    }
}

/// The readable summary.
pub fn summary(analysis: &Analysis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Primary service ({}):", analysis.primary.app_dir);
    service_lines(&mut out, &analysis.primary);
    for service in analysis.services.iter().filter(|s| s.app_dir != analysis.primary.app_dir) {
        let _ = writeln!(out, "Service ({}):", service.app_dir);
        service_lines(&mut out, service);
    }
    let _ = writeln!(out, "Confidence: {:.2}", analysis.confidence);
    for warning in &analysis.warnings {
        let _ = writeln!(out, "Warning: {warning}");
    }
    out
}
