//! `devgem build <dir>`: builds a repository with the local builder, exactly as a deploy on the
//! embedded default would (the repository's own Dockerfile or DevGem's), and prints the start
//! command it produced on stdout. Step progress and output go to stderr; Ctrl-C cancels.

use crate::dockerfile::{Prepared, prepare};
use anyhow::{Context, bail};
use devgem_infra::local::builder::{BuildError, BuildJob, LogLine, cancel_pair, executor_for};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a build may take before it is stopped (Cloud Build's default is 10 min; local
/// builds with cold caches can be slower).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn run(target: &str, data_dir: &Path) -> anyhow::Result<()> {
    let Prepared { service_dir, plan, .. } = prepare(target, false).await?;
    let executor = executor_for(data_dir).context("cannot start the local builder")?;
    let (handle, cancel) = cancel_pair();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            handle.cancel();
        }
    });
    // The repository's own .dockerignore wins; otherwise DevGem's, without writing it there.
    let dockerignore = (!service_dir.join(".dockerignore").exists()).then(|| plan.dockerignore.clone());
    let build_id = format!("cli-{}", devgem_common::ids::DeploymentId::generate());
    let job = BuildJob {
        build_id: build_id.clone(),
        context: service_dir,
        dockerfile: plan.dockerfile.clone(),
        dockerignore,
        log: Arc::new(|line: LogLine| {
            if line.text.starts_with("Step ") || line.step == 0 {
                eprintln!("{}", line.text);
            } else {
                eprintln!("    {}", line.text);
            }
        }),
        cancel,
        timeout: BUILD_TIMEOUT,
    };
    let started = Instant::now();
    match executor.build(job).await {
        Ok(outcome) => {
            for warning in &outcome.warnings {
                eprintln!("Warning: {warning}");
            }
            eprintln!(
                "Built in {:.1}s ({} steps run, {} from cache). Image {} in {}.",
                started.elapsed().as_secs_f64(),
                outcome.steps_run,
                outcome.steps_cached,
                outcome.image.digest,
                executor.build_dir(&build_id).display()
            );
            crate::analyze::write_stdout(&format!("{}\n", outcome.image.start_command()))
        }
        Err(error) => {
            if let BuildError::Step { tail, .. } = &error
                && !tail.is_empty()
            {
                eprintln!("Last lines of the failing step:");
                for line in tail.iter().rev().take(10).rev() {
                    eprintln!("    {line}");
                }
            }
            bail!("build failed: {error}")
        }
    }
}
