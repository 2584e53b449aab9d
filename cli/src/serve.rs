//! `devgem serve <function>`: one function's router on `$PORT`, as each Cloud Run service runs
//! it. Stops accepting on SIGTERM and lets in-flight requests finish within 10 s.
//!
//! Until the GCP adapters land (issues 9 and 10), the function runs on the embedded adapters of
//! the data dir.

use crate::embedded::Embedded;
use crate::functions::Function;
use anyhow::Context;
use devgem_common::function::correlate;
use devgem_common::serve::{SHUTDOWN_GRACE, serve, termination_signal};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

pub async fn run(function: Function, data_dir: &Path, port: u16, once: bool) -> anyhow::Result<()> {
    let embedded = Embedded::open(data_dir, false)?.with_brain_from_env().await?.with_monitor_from_env()?;
    if once {
        // The Cloud Run job form: one pass, its report on stdout, then exit.
        if function != Function::Janitor {
            anyhow::bail!("--once runs the janitor's sweep; other functions are services");
        }
        let report = devgem_janitor::sweep::sweep(&crate::functions::janitor_state(&embedded)).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        embedded.bus.shutdown(std::time::Duration::from_secs(5)).await;
        return Ok(());
    }
    let router = function.router(&embedded).layer(axum::middleware::from_fn(correlate));
    // Cloud Run sends traffic to the container's port on every interface.
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(function = function.name(), %addr, "serving");
    serve(listener, router, termination_signal(), SHUTDOWN_GRACE).await.context("server failed")?;
    embedded.bus.shutdown(std::time::Duration::from_secs(5)).await;
    tracing::info!(function = function.name(), "stopped");
    Ok(())
}
