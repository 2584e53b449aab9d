//! `devgem deploy <path | https git URL>`: starts a deployment and follows it to its end, printing
//! each stage as it happens; ends with the URL, or with the failing stage, the cause, the last log
//! lines and what to try. Talks to the running server (`--server`, `DEVGEM_SERVER`, or the data
//! dir's `server.json`); with none, runs the server in-process for the deploy and keeps serving
//! the app until Ctrl-C.

use crate::embedded::Embedded;
use crate::token::admin_token;
use crate::up::{App, lock_data_dir, running_server};
use anyhow::{Context, bail};
use devgem_common::identity::Token;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `devgem deploy` was asked.
#[derive(Debug, Clone, Default)]
pub struct DeployArgs {
    pub target: String,
    pub name: Option<String>,
    pub git_ref: Option<String>,
    pub env: Vec<String>,
    /// `KEY=value` pairs that are secret: stored encrypted, never in a document.
    pub secrets: Vec<String>,
    pub env_file: Option<PathBuf>,
    pub allow_risky: bool,
    pub server: Option<String>,
}

/// `KEY=value` lines of an env file: blank lines and `#` comments skipped, `export ` allowed,
/// surrounding quotes removed.
pub fn parse_env_file(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected KEY=value, got {line:?}", number + 1);
        };
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        env.insert(key.trim().to_owned(), unquoted.to_owned());
    }
    Ok(env)
}

fn request_body(args: &DeployArgs) -> anyhow::Result<Value> {
    let mut env = match &args.env_file {
        Some(path) => parse_env_file(
            &std::fs::read_to_string(path).with_context(|| format!("cannot read the env file {}", path.display()))?,
        )
        .with_context(|| format!("in {}", path.display()))?,
        None => BTreeMap::new(),
    };
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else { bail!("--env takes KEY=value, got {pair:?}") };
        env.insert(key.to_owned(), value.to_owned());
    }
    let mut secrets = BTreeMap::new();
    for pair in &args.secrets {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--secret takes KEY=value, got a value without '='")
        };
        secrets.insert(key.to_owned(), value.to_owned());
    }
    let source = if args.target.contains("://") || args.target.starts_with("git@") {
        args.target.clone()
    } else {
        let path = Path::new(&args.target);
        if !path.is_dir() {
            bail!("{} is not a directory; pass an app's directory or an https git URL", args.target);
        }
        std::path::absolute(path)?.display().to_string()
    };
    Ok(json!({
        "source": source, "ref": args.git_ref, "name": args.name, "env": env, "secrets": secrets,
        "allow_risky": args.allow_risky,
    }))
}

/// A REST client of a DevGem server.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Token,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Token) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), token, http: reqwest::Client::new() }
    }

    /// The running server: `server` if given, else the one the data dir records, with the
    /// admin token; an error that says how to start one otherwise.
    pub fn running(data_dir: &Path, server: Option<String>) -> anyhow::Result<Self> {
        let Some(url) = server.or_else(|| running_server(data_dir).map(|s| s.url)) else {
            bail!("no DevGem server is running for {}; start it with 'devgem up'", data_dir.display());
        };
        Ok(Self::new(&url, admin_token(data_dir)?))
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}; is 'devgem up' running?", self.base))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value.pointer("/error/message").and_then(Value::as_str).unwrap_or(status.as_str());
            bail!("the server refused: {message}");
        }
        Ok(value)
    }
}

pub async fn run(data_dir: &Path, args: DeployArgs) -> anyhow::Result<()> {
    let body = request_body(&args)?;
    let server = args.server.clone().or_else(|| running_server(data_dir).map(|s| s.url));
    if let Some(url) = server {
        return follow(&Api::new(&url, admin_token(data_dir)?), &body).await.map(|_| ());
    }
    // No server: run one in-process for this deploy, on a free loopback port.
    let _lock = lock_data_dir(data_dir)?;
    let embedded = Embedded::open(data_dir, true)?;
    let token = match embedded.identity.ensure_admin(crate::up::preset_token()?).await? {
        Some(token) => {
            std::fs::write(data_dir.join(crate::up::ADMIN_TOKEN_FILE), token.expose())?;
            token
        }
        None => admin_token(data_dir)?,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = App::build(embedded);
    app.start(port).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(devgem_common::serve::serve(
        listener,
        app.router.clone(),
        async {
            let _ = stop_rx.await;
        },
        devgem_common::serve::SHUTDOWN_GRACE,
    ));
    let outcome = follow(&Api::new(&format!("http://127.0.0.1:{port}"), token), &body).await;
    if outcome.is_ok() {
        eprintln!("Serving until Ctrl-C (this deploy ran without 'devgem up'; start it to keep apps running).");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    app.stop().await;
    outcome.map(|_| ())
}

/// How a deploy's progress is shown: a bar on a terminal, plain lines elsewhere (logs, CI, tests).
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { last_percent: u64 },
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Progress::Lines { last_percent: 0 };
        }
        let bar = indicatif::ProgressBar::new(100);
        let style =
            indicatif::ProgressStyle::with_template("{elapsed_precise:.dim} [{bar:32.cyan/blue}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    fn line(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.println(text),
            Progress::Lines { .. } => eprintln!("{text}"),
        }
    }

    fn percent(&mut self, percent: u64, stage: &str, elapsed: f64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(percent);
                bar.set_message(stage.replace('_', " "));
            }
            Progress::Lines { last_percent } if percent > *last_percent => {
                *last_percent = percent;
                eprintln!("[{elapsed:5.1}s] {percent:>3}%");
            }
            Progress::Lines { .. } => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Starts the deployment and prints its session's events until it ends. Returns the deployment.
async fn follow(api: &Api, body: &Value) -> anyhow::Result<Value> {
    let created = api.call(reqwest::Method::POST, "/api/deployments", Some(body)).await?;
    let id = created["deployment_id"].as_str().context("the server did not return a deployment id")?.to_owned();
    let session = created["session_id"].as_str().context("the server did not return a session id")?.to_owned();
    eprintln!("Deploying {} as {} (deployment {id})", body["source"].as_str().unwrap_or(""), created["service"]);
    let started = std::time::Instant::now();
    let mut after = 0u64;
    let mut progress = Progress::new();
    loop {
        let events =
            api.call(reqwest::Method::GET, &format!("/api/sessions/{session}/events?after={after}"), None).await?;
        let mut done = false;
        for event in events.as_array().into_iter().flatten() {
            after = after.max(event["seq"].as_u64().unwrap_or(after));
            if event["data"]["deployment_id"] != id.as_str() && event["type"] != "deployment_started" {
                continue;
            }
            let elapsed = started.elapsed().as_secs_f64();
            match event["type"].as_str() {
                Some("deployment_update") => {
                    let stage = event["data"]["stage"].as_str().unwrap_or("");
                    let text = event["data"]["text"].as_str().unwrap_or("");
                    progress.line(&format!("[{elapsed:5.1}s] {stage:<14} {text}"));
                }
                Some("deployment_progress") => {
                    let percent = event["data"]["percent"].as_u64().unwrap_or(0);
                    progress.percent(percent, event["data"]["stage"].as_str().unwrap_or("done"), elapsed);
                }
                Some("build_log") => {
                    for line in event["data"]["lines"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                        progress.line(&format!("           | {line}"));
                    }
                }
                Some("deployment_complete") => done = true,
                _ => {}
            }
        }
        if done {
            progress.finish();
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deployment = api.call(reqwest::Method::GET, &format!("/api/deployments/{id}"), None).await?;
    match deployment["state"].as_str() {
        Some("live") => {
            eprintln!("Live in {:.1}s.", started.elapsed().as_secs_f64());
            println!("{}", deployment["url"].as_str().unwrap_or(""));
            Ok(deployment)
        }
        state => {
            let failure = &deployment["failure"];
            eprintln!(
                "Deployment {} at stage {}: {}",
                state.unwrap_or("ended"),
                failure["stage"].as_str().unwrap_or("?"),
                failure["message"].as_str().unwrap_or("no cause recorded")
            );
            let tail: Vec<&str> =
                failure["log_tail"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !tail.is_empty() {
                eprintln!("Last log lines:");
                for line in tail {
                    eprintln!("    {line}");
                }
            }
            eprintln!("{}", hint(failure["cause"].as_str().unwrap_or("")));
            bail!("the deployment did not go live")
        }
    }
}

/// What to try, by cause.
fn hint(cause: &str) -> &'static str {
    match cause {
        "source_unavailable" => "Try: check the URL or path, and the --ref (branch, tag or commit).",
        "missing_env" => "Try: deploy again with --env NAME=value (or --env-file) for each missing variable.",
        "security_blocked" => "Try: fix the findings, or deploy again with --allow-risky to accept them.",
        "build_failed" => "Try: 'devgem build <dir>' to reproduce the build locally, then fix the failing step.",
        "start_failed" | "verify_failed" => {
            "Try: make the app listen on 0.0.0.0:$PORT, and check its start command and env vars."
        }
        "analysis_failed" => "Try: 'devgem analyze <dir>' to see what was found; add a Procfile or a Dockerfile.",
        _ => "Try: deploy again; if it fails the same way, run 'devgem up' with RUST_LOG=info to see why.",
    }
}

/// `devgem abort <deployment>`: asks the running server to stop a deployment, then waits (up to
/// 10 s) until it has ended.
pub async fn abort(data_dir: &Path, id: &str, server: Option<String>) -> anyhow::Result<()> {
    let api = Api::running(data_dir, server)?;
    api.call(reqwest::Method::POST, &format!("/api/deployments/{id}/abort"), None).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deployment = api.call(reqwest::Method::GET, &format!("/api/deployments/{id}"), None).await?;
        match deployment["state"].as_str() {
            Some("aborted") => {
                eprintln!("Deployment {id} aborted; the revision that served before keeps serving.");
                return Ok(());
            }
            Some(state @ ("live" | "failed")) => bail!("deployment {id} ended {state} before the abort took effect"),
            _ if std::time::Instant::now() > deadline => {
                bail!("deployment {id} has not stopped yet; check it with GET /api/deployments/{id}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `devgem rollback <service> [--to revision]`: moves traffic back once the target answers, and
/// waits (up to 90 s) until it serves.
pub async fn rollback(
    data_dir: &Path,
    service: &str,
    to: Option<String>,
    server: Option<String>,
) -> anyhow::Result<()> {
    let api = Api::running(data_dir, server)?;
    let body = json!({ "to": to });
    let accepted = api.call(reqwest::Method::POST, &format!("/api/services/{service}/rollback"), Some(&body)).await?;
    let target = accepted["to"].as_str().unwrap_or_default().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let current = api.call(reqwest::Method::GET, &format!("/api/services/{service}"), None).await?;
        if current["traffic"]["serving"] == target.as_str() {
            eprintln!("{service} now serves {target}.");
            println!("{}", current["url"].as_str().unwrap_or(""));
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{service} does not serve {target} yet; the target may not answer (see the session's messages)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_env_file;

    #[test]
    fn env_files_read_like_dotenv() {
        let env = parse_env_file("# comment\nA=1\nexport B=\"two words\"\n\nC='x=y'\n").expect("parses");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("two words"));
        assert_eq!(env.get("C").map(String::as_str), Some("x=y"));
        assert!(parse_env_file("NOEQUALS\n").is_err());
    }
}
