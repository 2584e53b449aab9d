//! The `devgem` command line: one binary for every function and for the embedded default.
//!
//! # Layout
//! - [`Cli`] / [`run`]: argument parsing and dispatch.
//! - [`analyze`]: `devgem analyze`, the analyzer on a directory or a clone.
//! - [`dockerfile`]: `devgem dockerfile`, the Dockerfile DevGem builds with.
//! - [`build`]: `devgem build`, the local builder on a directory.
//! - [`deploy`]: `devgem deploy`, a deployment followed to its end.
//! - [`chat`]: `devgem chat`, the conversation in a terminal.
//! - [`embedded`]: opening the embedded adapters on a data dir (the wiring of `devgem up`).
//! - [`functions`]: the function routers by name, for `serve` and `up`.
//! - [`up`]: `devgem up`, all functions in one process behind one listener.
//! - [`serve`]: `devgem serve <function>`, one function as a Cloud Run service runs it.
//! - [`token`]: `devgem token create <user>`.
//! - [`telemetry`]: logs, human-readable or Cloud Logging JSON.

pub mod analyze;
pub mod build;
pub mod chat;
pub mod deploy;
pub mod dockerfile;
pub mod embedded;
pub mod functions;
pub mod proxy;
pub mod serve;
pub mod telemetry;
pub mod token;
pub mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "devgem", version, about = "Deploy any repository by chatting with DevGem")]
pub struct Cli {
    /// The data dir of the embedded adapters.
    #[arg(long, global = true, env = "DEVGEM_DATA", default_value = ".devgem")]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every function in one process on the embedded adapters (SQLite, files).
    Up {
        /// The port to listen on (0 picks a free one; the URL is written to server.json).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The address to listen on. Keep it on loopback unless you know why.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// Serve one function's router on $PORT, as its Cloud Run service does.
    Serve {
        /// chat, analyze, build, deploy, monitor, relay, api or janitor.
        function: functions::Function,
        #[arg(long, env = "PORT", default_value_t = 8080)]
        port: u16,
        /// Run once and exit (the janitor as a Cloud Run job).
        #[arg(long)]
        once: bool,
    },
    /// Analyze a repository: language, framework, port, start command, env vars, packages.
    Analyze {
        /// A local directory or an https git URL.
        target: String,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Print the Dockerfile DevGem would build with (the repository's own or a generated one).
    Dockerfile {
        /// A local directory or an https git URL.
        target: String,
        /// Also write the Dockerfile and a .dockerignore into the directory (never replacing files).
        #[arg(long)]
        write: bool,
    },
    /// Deploy a directory or an https git URL and follow it until it is live (prints the URL).
    Deploy {
        /// The app's directory, or an https git URL.
        target: String,
        /// The service's name (default: from the directory or repository).
        #[arg(long)]
        name: Option<String>,
        /// A branch, tag or commit (git URLs).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// An env var for the app, KEY=value (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// A secret env var, KEY=value (repeatable): stored encrypted, only referenced elsewhere.
        /// Env names that look secret (…PASSWORD, …TOKEN, DATABASE_URL) are kept as secrets too.
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secrets: Vec<String>,
        /// A file of KEY=value lines.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Deploy even with high-severity security findings.
        #[arg(long)]
        allow_risky: bool,
        /// A running server to use (else the one recorded in the data dir, else in-process).
        #[arg(long, env = "DEVGEM_SERVER")]
        server: Option<String>,
    },
    /// Talk to DevGem in the terminal: each line is a message (or pipe a script in).
    Chat {
        /// A session to continue (printed when a chat starts).
        #[arg(long)]
        session: Option<String>,
        #[arg(long, env = "DEVGEM_SERVER")]
        server: Option<String>,
    },
    /// Stop a deployment in whatever stage it is; the revision serving before keeps serving.
    Abort {
        /// The deployment's id (printed by `devgem deploy`).
        deployment: String,
        #[arg(long, env = "DEVGEM_SERVER")]
        server: Option<String>,
    },
    /// Move a service's traffic back to its previous revision (or --to a named one).
    Rollback {
        service: String,
        /// The revision to serve (default: the one that served before).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, env = "DEVGEM_SERVER")]
        server: Option<String>,
    },
    /// Build a repository with the local builder and print the start command it produced.
    Build {
        /// The repository's directory.
        target: String,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a user (if new) and print a new token for it. The token is shown once.
    Create {
        user: String,
        /// A display name for a new user.
        #[arg(long)]
        name: Option<String>,
        /// A running server to ask (else the one recorded in the data dir, else in-process).
        #[arg(long, env = "DEVGEM_SERVER")]
        server: Option<String>,
    },
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { port, host } => {
            let options = up::UpOptions { data_dir: cli.data_dir, host, port, preset_token: up::preset_token()? };
            up::run(options, devgem_common::serve::termination_signal()).await
        }
        Command::Analyze { target, json } => analyze::run(&target, json).await,
        Command::Dockerfile { target, write } => dockerfile::run(&target, write).await,
        Command::Build { target } => build::run(&target, &cli.data_dir).await,
        Command::Chat { session, server } => chat::run(&cli.data_dir, session, server).await,
        Command::Abort { deployment, server } => deploy::abort(&cli.data_dir, &deployment, server).await,
        Command::Rollback { service, to, server } => deploy::rollback(&cli.data_dir, &service, to, server).await,
        Command::Deploy { target, name, git_ref, env, secrets, env_file, allow_risky, server } => {
            let args = deploy::DeployArgs { target, name, git_ref, env, secrets, env_file, allow_risky, server };
            deploy::run(&cli.data_dir, args).await
        }
        Command::Serve { function, port, once } => serve::run(function, &cli.data_dir, port, once).await,
        Command::Token { command: TokenCommand::Create { user, name, server } } => {
            let token = token::create(&cli.data_dir, &user, name.as_deref(), server.as_deref()).await?;
            eprintln!("Token for {user} (shown once; only its hash is stored):");
            println!("{}", token.expose());
            Ok(())
        }
    }
}
