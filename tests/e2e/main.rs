//! End-to-end tests: DevGem driven as a user drives it, over real sockets. One test binary.
//!
//! `support` starts either the real `devgem` binary on a fresh data dir or the whole router set
//! in-process on a free port. Logs print only with `TEST_LOG=1`.

mod api_rest;
mod brain;
mod browser;
mod builder;
mod cdp;
mod chat;
mod cli_tools;
mod gcp;
mod identity;
mod janitor;
mod monitor;
mod pipeline;
mod relay;
mod source;
mod support;
mod up;
