//! Serving a router: the listener and the shutdown signal come from the caller, so `devgem
//! serve`, `devgem up` and tests share one function.

use axum::Router;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests may run after the shutdown signal (Cloud Run allows 10 s after
/// SIGTERM).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish for up to `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal).into_future();
    let deadline = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(?grace, "shutdown grace period over; dropping remaining connections");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (Cloud Run, `kill`) or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    async fn slow_server(
        handler_sleep: Duration,
        grace: Duration,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
        let router = Router::new().route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(handler_sleep).await;
                "done"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router,
            async {
                let _ = rx.await;
            },
            grace,
        ));
        (addr, tx, server)
    }

    async fn get_slow(addr: std::net::SocketAddr) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn in_flight_requests_finish_after_the_signal() {
        let (addr, stop, server) = slow_server(Duration::from_millis(300), Duration::from_secs(10)).await;
        let request = tokio::spawn(get_slow(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(()).expect("signal");
        let response = request.await.expect("task").expect("response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("done"));
        server.await.expect("task").expect("clean stop");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
    }

    #[tokio::test]
    async fn the_grace_period_bounds_a_stuck_request() {
        let (addr, stop, server) = slow_server(Duration::from_secs(60), Duration::from_millis(200)).await;
        let _request = tokio::spawn(get_slow(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        stop.send(()).expect("signal");
        server.await.expect("task").expect("stop");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "stopped after the grace: {took:?}"
        );
    }
}
