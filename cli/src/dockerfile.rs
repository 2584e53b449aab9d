//! `devgem dockerfile <dir | https git URL> [--write]`: the Dockerfile DevGem would build with
//! (the repository's own or a generated one) on stdout and nothing else; what DevGem decided
//! (template, port rewrites, notes) on stderr. `--write` also writes it and a `.dockerignore`
//! into the directory, never replacing files that exist.

use anyhow::{Context, bail};
use devgem_analyze::analyzer::{analyze_dir, repo::Limits};
use devgem_analyze::dockerfile::port::Listen;
use devgem_analyze::dockerfile::{Origin, Plan, plan};
use std::path::Path;

/// A repository ready to build: where the service is and the Dockerfile to build it with.
#[derive(Debug)]
pub struct Prepared {
    /// Holds a cloned repository for as long as the plan is in use.
    _clone: tempfile::TempDir,
    pub service_dir: std::path::PathBuf,
    pub plan: Plan,
}

/// Analyzes `target` (a directory or an https git URL) and plans its Dockerfile, telling on
/// stderr what was decided. `write` only checks that `target` is a directory.
pub async fn prepare(target: &str, write: bool) -> anyhow::Result<Prepared> {
    if target.contains("://") || target.starts_with("git@") {
        if write {
            bail!("--write needs a local directory; clone the repository first");
        }
        if !target.starts_with("https://") {
            bail!("only https git URLs and local directories are supported; got {target}");
        }
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let root = if target.starts_with("https://") {
        crate::analyze::clone(target, dir.path()).await?;
        dir.path().to_owned()
    } else {
        let root = Path::new(target).to_owned();
        if !root.is_dir() {
            bail!("{target} is not a directory; pass a repository's directory or an https git URL");
        }
        root
    };
    let scan_root = root.clone();
    let analysis = tokio::task::spawn_blocking(move || analyze_dir(&scan_root, Limits::default())).await??;
    let service = &analysis.primary;
    let service_dir = root.join(&service.app_dir);
    let existing = std::fs::read_to_string(service_dir.join("Dockerfile")).ok();
    let plan = plan(service, existing.as_deref())?;

    match &plan.origin {
        Origin::Repository => eprintln!("Using the repository's own Dockerfile ({}/Dockerfile).", service.app_dir),
        Origin::Generated { template } => eprintln!("Generated from the analysis (template {template})."),
    }
    if let Some(image) = &plan.base_image {
        eprintln!("Base image: {image}.");
    }
    match plan.listen {
        Listen::Env => eprintln!("Listens on $PORT."),
        Listen::Fixed { port } => eprintln!("Listens on port {port}, fixed in the app."),
    }
    for rewrite in &plan.rewrites {
        eprintln!("Rewrote the start command: {} -> {} ({})", rewrite.from, rewrite.to, rewrite.reason);
    }
    for note in &plan.notes {
        eprintln!("Note: {note}");
    }
    Ok(Prepared { _clone: dir, service_dir, plan })
}

pub async fn run(target: &str, write: bool) -> anyhow::Result<()> {
    let Prepared { service_dir, plan, .. } = prepare(target, write).await?;
    if write {
        for (name, contents) in [("Dockerfile", &plan.dockerfile), (".dockerignore", &plan.dockerignore)] {
            let path = service_dir.join(name);
            if path.exists() {
                eprintln!("Kept the existing {}", path.display());
            } else {
                std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("Wrote {}", path.display());
            }
        }
    }
    crate::analyze::write_stdout(&plan.dockerfile)
}
