//! Logs: human-readable on a terminal, Cloud Logging JSON (tracing-stackdriver) when running on
//! Cloud Run (`K_SERVICE` set). Both go to stderr: stdout is for what a command prints (a token,
//! a URL). `RUST_LOG` filters, `info` by default.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = if std::env::var_os("K_SERVICE").is_some() {
        registry.with(tracing_stackdriver::layer().with_writer(std::io::stderr)).try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
}
