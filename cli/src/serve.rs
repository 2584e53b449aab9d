//! `devgem serve <function>`: one function's router on `$PORT`, as each Cloud Run service runs
//! it. Stops accepting on SIGTERM and lets in-flight requests finish within 10 s.
//!
//! The adapters are the data dir's embedded ones unless the environment puts them on GCP
//! (`DEVGEM_STORE=firestore`, `DEVGEM_BUS=pubsub`, `DEVGEM_BLOBS=gcs`; see
//! [`crate::embedded::Embedded::with_data_plane`]).
//!
//! On GCP (`DEVGEM_PUSH_AUDIENCE` set) every `/push/` route needs Pub/Sub's OIDC token
//! ([`devgem_infra::gcp::oidc`]). `devgem up` never does this: its bus is in-process.

use crate::embedded::Embedded;
use crate::functions::Function;
use anyhow::Context;
use axum::Router;
use devgem_common::function::correlate;
use devgem_common::serve::{SHUTDOWN_GRACE, serve, termination_signal};
use devgem_infra::gcp::oidc::{PushAuthConfig, PushVerifier, push_auth_layer};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

pub async fn run(function: Function, data_dir: &Path, port: u16, once: bool) -> anyhow::Result<()> {
    let mut embedded = Embedded::open(data_dir, false)?
        .with_data_plane_from_env()
        .await?
        .with_control_plane_from_env(function.control_ports())
        .await?
        .with_brain_from_env()
        .await?
        .with_monitor_from_env()?;
    embedded.api_url = std::env::var("DEVGEM_API_URL").ok().filter(|url| !url.trim().is_empty());
    if once {
        // The Cloud Run job form: one pass, its report on stdout, then exit.
        if function != Function::Janitor {
            anyhow::bail!("--once runs the janitor's sweep; other functions are services");
        }
        let report = devgem_janitor::sweep::sweep(&crate::functions::janitor_state(&embedded)).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        embedded.shutdown_bus(std::time::Duration::from_secs(5)).await;
        return Ok(());
    }
    let push_auth = push_verifier(|name| std::env::var(name).ok())?;
    let router = router(function, &embedded, push_auth);
    // Cloud Run sends traffic to the container's port on every interface.
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(function = function.name(), %addr, "serving");
    serve(listener, router, termination_signal(), SHUTDOWN_GRACE).await.context("server failed")?;
    embedded.shutdown_bus(std::time::Duration::from_secs(5)).await;
    tracing::info!(function = function.name(), "stopped");
    Ok(())
}

/// The push verifier when `DEVGEM_PUSH_AUDIENCE` is set, logged as on (audience, service account,
/// key URL: nothing secret); off on Cloud Run (`K_SERVICE`) is a warning.
pub fn push_verifier(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Arc<PushVerifier>>> {
    let on_cloud_run = get("K_SERVICE").is_some();
    let Some(config) = PushAuthConfig::from_env(&get)? else {
        if on_cloud_run {
            tracing::warn!("DEVGEM_PUSH_AUDIENCE is not set: push requests are not verified");
        }
        return Ok(None);
    };
    tracing::info!(
        audience = %config.audience,
        service_account = config.service_account.as_deref().unwrap_or("any"),
        jwks = %config.jwks_url,
        "push auth is on: /push/ requests need Pub/Sub's OIDC token"
    );
    let verifier = PushVerifier::new(config).context("cannot set up the push token verifier")?;
    Ok(Some(Arc::new(verifier)))
}

/// The function's router as `serve` runs it: push auth (when on) inside the correlation layer,
/// so that refusals carry a correlation id and are logged in the request's span.
pub fn router(function: Function, embedded: &Embedded, push_auth: Option<Arc<PushVerifier>>) -> Router {
    let router = function.router(embedded);
    let router = match push_auth {
        Some(verifier) => router.layer(push_auth_layer(verifier)),
        None => router,
    };
    router.layer(axum::middleware::from_fn(correlate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedOptions;
    use devgem_infra::source::SourcePolicy;
    use tower::ServiceExt as _;

    fn embedded(dir: &Path) -> Embedded {
        let options = EmbeddedOptions {
            policy: SourcePolicy { allow_local_paths: false, allow_hosts: Vec::new() },
            startup_timeout: std::time::Duration::from_secs(5),
            secrets_key: dir.join("secrets.key"),
        };
        Embedded::open_with(&dir.join("data"), options).expect("embedded adapters")
    }

    async fn status(router: &Router, request: http::Request<axum::body::Body>) -> http::StatusCode {
        router.clone().oneshot(request).await.map(|response| response.status()).unwrap_or_else(|e| match e {})
    }

    #[tokio::test]
    async fn with_push_auth_on_a_push_without_a_token_is_refused_and_health_still_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let embedded = embedded(dir.path());
        // Nothing listens there: a request without a token is refused before any key is needed.
        let env = |name: &str| match name {
            "DEVGEM_PUSH_AUDIENCE" => Some("https://build-abc123-ew.a.run.app".to_owned()),
            "DEVGEM_OIDC_JWKS_URL" => Some("http://127.0.0.1:9/certs".to_owned()),
            _ => None,
        };
        let push_auth = push_verifier(env).expect("config");
        assert!(push_auth.is_some());
        let router = router(Function::Build, &embedded, push_auth);
        let push = http::Request::post(devgem_build::PUSH_BUILDS)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(r#"{"message":{"data":"e30=","messageId":"1"},"subscription":"s"}"#))
            .expect("request");
        assert_eq!(status(&router, push).await, http::StatusCode::UNAUTHORIZED);
        let health = http::Request::get(devgem_common::function::HEALTHZ).body(axum::body::Body::empty()).expect("req");
        assert_eq!(status(&router, health).await, http::StatusCode::OK);

        // Off (the default): the same push reaches the handler, which answers for itself.
        let router = super::router(Function::Build, &embedded, push_verifier(|_| None).expect("config"));
        let push = http::Request::post(devgem_build::PUSH_BUILDS)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(r#"{"message":{"data":"e30=","messageId":"1"},"subscription":"s"}"#))
            .expect("request");
        assert_ne!(status(&router, push).await, http::StatusCode::UNAUTHORIZED);
        embedded.bus.shutdown(std::time::Duration::from_secs(1)).await;
    }
}
