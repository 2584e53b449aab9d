//! The deploy pipeline through the router set, as a client sees it: `POST /api/deployments`, the
//! deployment document and the session's events as it moves, and the app answering on
//! `http://<service>.localhost:<port>/` through the `devgem up` listener.

use crate::support::{TestApp, spawn_app};
use devgem_e2e::copy_dir;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn app_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps").join(name)
}

async fn api(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request =
        client.request(method.parse().expect("method"), format!("{}{path}", app.url)).bearer_auth(&app.admin_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Starts a deployment and waits until it ends.
pub(crate) async fn deploy(app: &TestApp, body: Value) -> (Value, Value) {
    let (status, created) = api(app, "POST", "/api/deployments", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["deployment_id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, deployment) = api(app, "GET", &format!("/api/deployments/{id}"), None).await;
        if matches!(deployment["state"].as_str(), Some("live" | "failed" | "aborted")) {
            return (created, deployment);
        }
        assert!(Instant::now() < deadline, "still {} after 180 s: {deployment}", deployment["state"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn session_events(app: &TestApp, session: &str) -> Vec<Value> {
    let (_, events) = api(app, "GET", &format!("/api/sessions/{session}/events?limit=1000"), None).await;
    events.as_array().cloned().unwrap_or_default()
}

/// `GET <path>` on a service's host name through a `devgem up` listener at `base` (`http://127.0.0.1:<port>`).
pub(crate) async fn get_host(base: &str, label: &str, path: &str) -> (u16, String) {
    let port = base.rsplit(':').next().unwrap_or_default();
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("host", format!("{label}.localhost:{port}"))
        .send()
        .await
        .expect("request");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// `GET /` on the service's host name through the listener.
async fn get_service(app: &TestApp, label: &str) -> (u16, String) {
    get_host(&app.url, label, "/").await
}

pub(crate) fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&app_fixture(name), dir.path());
    dir
}

#[tokio::test]
async fn a_local_app_deploys_through_every_stage_and_answers_on_its_host() {
    let app = spawn_app().await;
    let repo = copy_fixture("py-stdlib");
    let (created, deployment) = deploy(&app, json!({ "source": repo.path(), "name": "hello" })).await;
    assert_eq!(deployment["state"], "live", "{deployment}");
    assert_eq!(deployment["progress"], 100);
    assert_eq!(deployment["url"], format!("http://hello.localhost:{}/", app.port));
    assert_eq!(deployment["plan"]["origin"], "python-pip");
    assert!(deployment["stages"].as_array().is_some_and(|s| s.iter().all(|s| s["status"] == "done")), "{deployment}");
    let (status, body) = get_service(&app, "hello").await;
    assert_eq!(status, 200);
    assert!(body.contains("devgem-fixture:py-stdlib"), "{body}");

    let events = session_events(&app, created["session_id"].as_str().expect("session")).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in ["deployment_started", "analysis", "deployment_update", "deployment_progress", "deployment_complete"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&"deployment_complete"));
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap-free: {seqs:?}");
    let percents: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "deployment_progress")
        .filter_map(|e| e["data"]["percent"].as_u64())
        .collect();
    assert!(percents.windows(2).all(|w| w[1] >= w[0]), "progress only rises: {percents:?}");
    assert_eq!(percents.last(), Some(&100));

    let (status, _) = get_service(&app, "nothing-here").await;
    assert_eq!(status, 404, "an unknown service host is a clear 404");
}

#[tokio::test]
async fn a_second_deploy_replaces_the_revision_and_a_failed_one_leaves_it_serving() {
    let app = spawn_app().await;
    let repo = copy_fixture("static-site");
    let (_, first) = deploy(&app, json!({ "source": repo.path(), "name": "site" })).await;
    assert_eq!(first["state"], "live", "{first}");
    std::fs::write(repo.path().join("index.html"), "<h1>devgem-fixture:static-site v2</h1>").expect("edit");
    let (_, second) = deploy(&app, json!({ "source": repo.path(), "name": "site" })).await;
    assert_eq!(second["state"], "live", "{second}");
    assert_ne!(first["revision"], second["revision"]);
    let (_, body) = get_service(&app, "site").await;
    assert!(body.contains("static-site v2"), "{body}");

    // A build that fails: the cause, the step and the log's end; the live revision stays.
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nRUN echo cannot build this && exit 3\nCMD [\"true\"]\n",
    )
    .expect("write");
    let (created, failed) = deploy(&app, json!({ "source": repo.path(), "name": "site" })).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["failure"]["cause"], "build_failed");
    assert_eq!(failed["failure"]["stage"], "build");
    assert!(
        failed["failure"]["message"].as_str().is_some_and(|m| m.contains("(line 2)") && m.contains("status 3")),
        "{failed}"
    );
    let tail: Vec<&str> =
        failed["failure"]["log_tail"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(tail.contains(&"cannot build this"), "{tail:?}");
    let (_, body) = get_service(&app, "site").await;
    assert!(body.contains("static-site v2"), "the previous revision keeps serving: {body}");
    let events = session_events(&app, created["session_id"].as_str().expect("session")).await;
    let complete = events.iter().rev().find(|e| e["type"] == "deployment_complete").expect("complete event");
    assert_eq!(complete["data"]["state"], "failed");
}

#[tokio::test]
async fn missing_env_and_bad_requests_are_explained() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        repo.path().join("app.py"),
        "import os\nfrom http.server import HTTPServer, SimpleHTTPRequestHandler\n\nAPI_BASE = os.environ[\"API_BASE\"]\n\nif __name__ == \"__main__\":\n    HTTPServer((\"0.0.0.0\", int(os.environ.get(\"PORT\", \"8080\"))), SimpleHTTPRequestHandler).serve_forever()\n",
    )
    .expect("write");
    std::fs::write(repo.path().join("requirements.txt"), "# none\n").expect("write");
    let (_, failed) = deploy(&app, json!({ "source": repo.path(), "name": "needs-env" })).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["failure"]["cause"], "missing_env");
    assert!(
        failed["failure"]["message"].as_str().is_some_and(|m| m.contains("API_BASE") && m.contains("--env API_BASE="))
    );

    let (_, live) =
        deploy(&app, json!({ "source": repo.path(), "name": "needs-env", "env": { "API_BASE": "http://api" } })).await;
    assert_eq!(live["state"], "live", "{live}");

    let (status, error) = api(&app, "POST", "/api/deployments", Some(json!({ "source": "relative/dir" }))).await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("absolute directory")), "{error}");
    let (status, error) =
        api(&app, "POST", "/api/deployments", Some(json!({ "source": "/x", "env": { "1BAD": "p" } }))).await;
    assert_eq!(status, 400, "{error}");
    let (_, refused) = deploy(&app, json!({ "source": "https://127.0.0.1/app.git" })).await;
    assert_eq!(refused["failure"]["cause"], "source_unavailable");
    assert!(
        refused["failure"]["message"].as_str().is_some_and(|m| m.contains("private or internal address")),
        "{refused}"
    );
}

#[tokio::test]
async fn devgem_deploy_follows_a_deploy_to_its_url_or_its_cause() {
    use crate::support::{DevgemProcess, devgem_bin};
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = DevgemProcess::start(data.path(), &["up", "--port", "0"], &[]);
    let info = up.wait_ready().await;
    let repo = copy_fixture("node-plain");
    let deploy = |target: &Path, extra: &[&str]| {
        std::process::Command::new(devgem_bin())
            .arg("--data-dir")
            .arg(data.path())
            .arg("deploy")
            .arg(target)
            .args(extra)
            .env_remove("DEVGEM_SERVER")
            .env_remove("DEVGEM_TOKEN")
            .output()
            .expect("run devgem deploy")
    };
    let out = deploy(repo.path(), &["--name", "shop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let port = info.url.rsplit(':').next().expect("port");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("http://shop.localhost:{port}/"));
    for line in ["repo_access", "Wrote a Dockerfile (node-server)", "100%", "Live in"] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    let (_, body) = get_host(&info.url, "shop", "/").await;
    assert!(body.contains("devgem-fixture:node-plain"), "{body}");

    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM node:20-slim\nRUN node -e 'process.exit(7)'\nCMD [\"node\"]\n",
    )
    .expect("write");
    let out = deploy(repo.path(), &["--name", "shop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("Deployment failed at stage build") && stderr.contains("status 7"), "{stderr}");
    assert!(stderr.contains("Try: 'devgem build <dir>'"), "{stderr}");
    up.signal("TERM");
    assert!(up.wait_exit(Duration::from_secs(20)).success());
}

async fn wait_for(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, deployment) = api(app, "GET", &format!("/api/deployments/{id}"), None).await;
        if done(&deployment) {
            return deployment;
        }
        assert!(Instant::now() < deadline, "never {what}: {deployment}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Aborts and returns the deployment once it ended, with how long that took.
async fn abort(app: &TestApp, id: &str) -> (Value, Duration) {
    let started = Instant::now();
    let (status, body) = api(app, "POST", &format!("/api/deployments/{id}/abort"), None).await;
    assert_eq!(status, 202, "{body}");
    let ended =
        wait_for(app, id, "ended", |d| matches!(d["state"].as_str(), Some("aborted" | "failed" | "live"))).await;
    (ended, started.elapsed())
}

fn survivors(pattern: &str) -> String {
    let out = std::process::Command::new("pgrep").args(["-f", pattern]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn git_urls_deploy_at_the_default_branch_a_branch_and_a_tag() {
    let app = crate::support::spawn_app_with_hosts(&["127.0.0.1"]).await;
    let served = devgem_e2e::served_repo(Some(&app_fixture("static-site")), Duration::ZERO).await;
    let url = format!("http://127.0.0.1:{}/app.git", served.addr.port());
    for (git_ref, version) in [(Some("next"), "3"), (None, "2"), (Some("v1"), "1")] {
        let (_, deployment) = deploy(&app, json!({ "source": url, "ref": git_ref, "name": "gitsite" })).await;
        assert_eq!(deployment["state"], "live", "{git_ref:?}: {deployment}");
        assert_eq!(deployment["commit"].as_str().map(str::len), Some(40));
        let (_, body) = get_host(&app.url, "gitsite", "/VERSION").await;
        assert_eq!(body.trim(), version, "{git_ref:?}");
    }
    let (_, missing) = deploy(&app, json!({ "source": url, "ref": "no-such-branch" })).await;
    assert_eq!(missing["failure"]["cause"], "source_unavailable");
    assert!(missing["failure"]["message"].as_str().is_some_and(|m| m.contains("no-such-branch")), "{missing}");
}

#[tokio::test]
async fn abort_stops_analysis_within_two_seconds() {
    let app = crate::support::spawn_app_with_hosts(&["127.0.0.1"]).await;
    // Every git request waits 20 s: the fetch is in flight when the abort comes.
    let served = devgem_e2e::served_repo(None, Duration::from_secs(20)).await;
    let url = format!("http://127.0.0.1:{}/app.git", served.addr.port());
    let (_, created) = api(&app, "POST", "/api/deployments", Some(json!({ "source": url, "name": "slow" }))).await;
    let id = created["deployment_id"].as_str().expect("id").to_owned();
    wait_for(&app, &id, "analyzing", |d| d["state"] == "analyzing").await;
    let (ended, took) = abort(&app, &id).await;
    assert_eq!(ended["state"], "aborted", "{ended}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (status, _) = api(&app, "POST", &format!("/api/deployments/{id}/abort"), None).await;
    assert_eq!(status, 409, "an ended deployment cannot be aborted again");
}

#[tokio::test]
async fn abort_kills_a_running_build() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nRUN echo building; sleep 319\nCMD [\"true\"]\n",
    )
    .expect("write");
    let (_, created) =
        api(&app, "POST", "/api/deployments", Some(json!({ "source": repo.path(), "name": "slowbuild" }))).await;
    let id = created["deployment_id"].as_str().expect("id").to_owned();
    wait_for(&app, &id, "building", |d| d["build_id"].is_string()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while survivors("sleep 319").is_empty() {
        assert!(Instant::now() < deadline, "the build step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ended, took) = abort(&app, &id).await;
    assert_eq!(ended["state"], "aborted", "{ended}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(survivors("sleep 319"), "", "the build step's processes are gone");
}

#[tokio::test]
async fn abort_during_start_keeps_the_previous_revision_serving() {
    let app = spawn_app().await;
    let repo = copy_fixture("static-site");
    let (_, first) = deploy(&app, json!({ "source": repo.path(), "name": "steady" })).await;
    assert_eq!(first["state"], "live", "{first}");
    let slow = tempfile::tempdir().expect("tempdir");
    std::fs::write(slow.path().join("index.html"), "slow").expect("write");
    std::fs::write(
        slow.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY index.html /srv/\nWORKDIR /srv\nCMD [\"sh\", \"-c\", \"sleep 318; exec python3 -m http.server $PORT\"]\n",
    )
    .expect("write");
    let (_, created) =
        api(&app, "POST", "/api/deployments", Some(json!({ "source": slow.path(), "name": "steady" }))).await;
    let id = created["deployment_id"].as_str().expect("id").to_owned();
    wait_for(&app, &id, "deploying", |d| d["state"] == "deploying").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while survivors("sleep 318").is_empty() {
        assert!(Instant::now() < deadline, "the revision never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ended, took) = abort(&app, &id).await;
    assert_eq!(ended["state"], "aborted", "{ended}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(survivors("sleep 318"), "", "the starting revision's processes are gone");
    let (status, body) = get_service(&app, "steady").await;
    assert_eq!(status, 200);
    assert!(body.contains("devgem-fixture:static-site"), "the previous revision serves: {body}");
}

#[tokio::test]
async fn rollback_moves_traffic_to_the_previous_revision() {
    use crate::support::{DevgemProcess, devgem_bin};
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = DevgemProcess::start(data.path(), &["up", "--port", "0"], &[]);
    let info = up.wait_ready().await;
    let port = info.url.rsplit(':').next().expect("port").to_owned();
    let repo = copy_fixture("static-site");
    let devgem = |args: &[&str]| {
        std::process::Command::new(devgem_bin())
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("DEVGEM_SERVER")
            .env_remove("DEVGEM_TOKEN")
            .output()
            .expect("run devgem")
    };
    let target = repo.path().display().to_string();
    let out = devgem(&["rollback", "site"]);
    assert!(!out.status.success(), "nothing to roll back yet");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("service site not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(devgem(&["deploy", &target, "--name", "site"]).status.success());
    std::fs::write(repo.path().join("index.html"), "<h1>second release</h1>").expect("edit");
    assert!(devgem(&["deploy", &target, "--name", "site"]).status.success());
    let get = || async { get_host(&info.url, "site", "/").await.1 };
    assert!(get().await.contains("second release"));
    let out = devgem(&["rollback", "site"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("http://site.localhost:{port}/"));
    assert!(get().await.contains("devgem-fixture:static-site"), "the first release serves again");
    let out = devgem(&["rollback", "site"]);
    assert!(!out.status.success(), "the first revision has nothing before it");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no earlier revision"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = devgem(&["rollback", "site", "--to", "site-99999-zzz"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no revision site-99999-zzz"));
    up.signal("TERM");
    assert!(up.wait_exit(Duration::from_secs(20)).success());
}

/// `devgem up` as a process, and the REST calls the crash tests make to it.
struct UpProcess {
    process: crate::support::DevgemProcess,
    url: String,
    token: String,
}

impl UpProcess {
    async fn start(data: &Path) -> Self {
        let mut process = crate::support::DevgemProcess::start(data, &["up", "--port", "0"], &[]);
        let url = process.wait_ready().await.url;
        let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
        Self { process, url, token }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut request = reqwest::Client::new()
            .request(method.parse().expect("method"), format!("{}{path}", self.url))
            .bearer_auth(self.token.trim());
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request").json().await.unwrap_or(Value::Null)
    }

    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let deployment = self.call("GET", &format!("/api/deployments/{id}"), None).await;
            if done(&deployment) {
                return deployment;
            }
            assert!(Instant::now() < deadline, "never {what}: {deployment}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(mut self) {
        self.process.signal("KILL");
        self.process.wait_exit(Duration::from_secs(10));
    }
}

fn count_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn a_kill_during_the_build_ends_the_deployment_with_a_reason_after_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(repo.path().join("Dockerfile"), "FROM debian:bookworm-slim\nRUN sleep 316\nCMD [\"true\"]\n")
        .expect("write");
    let up = UpProcess::start(data.path()).await;
    let created = up.call("POST", "/api/deployments", Some(json!({ "source": repo.path(), "name": "crashy" }))).await;
    let id = created["deployment_id"].as_str().expect("id").to_owned();
    up.wait_for(&id, "building", |d| d["build_id"].is_string()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while survivors("sleep 316").is_empty() {
        assert!(Instant::now() < deadline, "the build step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    up.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(survivors("sleep 316"), "", "the build dies with the process that ran it");

    let up = UpProcess::start(data.path()).await;
    let ended = up.wait_for(&id, "ended", |d| matches!(d["state"].as_str(), Some("failed" | "live" | "aborted"))).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(ended["failure"]["message"].as_str().is_some_and(|m| m.contains("interrupted")), "{ended}");
    assert_eq!(count_dirs(&data.path().join("builder/builds")), 1, "exactly one build");
    up.kill();
}

#[tokio::test]
async fn a_kill_during_the_start_resumes_with_the_same_revision_after_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(repo.path().join("index.html"), "resumed").expect("write");
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY index.html /srv/\nWORKDIR /srv\nCMD [\"sh\", \"-c\", \"sleep 3; exec python3 -m http.server $PORT\"]\n",
    )
    .expect("write");
    let up = UpProcess::start(data.path()).await;
    let created = up.call("POST", "/api/deployments", Some(json!({ "source": repo.path(), "name": "resumer" }))).await;
    let id = created["deployment_id"].as_str().expect("id").to_owned();
    up.wait_for(&id, "deploying", |d| d["state"] == "deploying").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.kill();

    let up = UpProcess::start(data.path()).await;
    let ended = up.wait_for(&id, "ended", |d| matches!(d["state"].as_str(), Some("failed" | "live" | "aborted"))).await;
    assert_eq!(ended["state"], "live", "{ended}");
    assert_eq!(count_dirs(&data.path().join("runtime/revisions")), 1, "no duplicate revision");
    assert_eq!(count_dirs(&data.path().join("builder/builds")), 1, "no second build");
    let (_, body) = get_host(&up.url, "resumer", "/").await;
    assert_eq!(body, "resumed");
    up.kill();
}

#[tokio::test]
async fn every_event_delivered_again_changes_nothing() {
    use devgem_common::events::{BuildRequested, DeploymentRequested, EventContext, ReleaseRequested, Topic};
    use devgem_common::ports::bus::{BusExt, OutboundMessage};
    let app = spawn_app().await;
    let repo = copy_fixture("py-stdlib");
    let (created, live) = deploy(&app, json!({ "source": repo.path(), "name": "twice" })).await;
    assert_eq!(live["state"], "live", "{live}");
    let session = created["session_id"].as_str().expect("session").to_owned();
    let events_before = session_events(&app, &session).await.len();
    let (_, service_before) = api(&app, "GET", "/api/services/twice", None).await;

    fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).expect("typed")
    }
    let (id, owner, session_id) = (parse(&live["id"]), parse(&live["owner"]), parse(&live["session_id"]));
    let ctx = EventContext::new("test", parse(&live["correlation_id"]));
    let now = chrono::Utc::now();
    let bus = app.embedded.ports.bus.clone();
    let requested = DeploymentRequested { deployment_id: id, owner, session_id };
    bus.publish_event(&requested, &ctx, now).await.expect("publish");
    let build = BuildRequested {
        deployment_id: requested.deployment_id.clone(),
        owner: requested.owner.clone(),
        session_id: requested.session_id.clone(),
    };
    bus.publish_event(&build, &ctx, now).await.expect("publish");
    let release = ReleaseRequested {
        deployment_id: requested.deployment_id.clone(),
        owner: requested.owner.clone(),
        session_id: requested.session_id.clone(),
        build_id: live["build_id"].as_str().expect("build id").to_owned(),
        image: live["image"].as_str().expect("image").to_owned(),
    };
    bus.publish_event(&release, &ctx, now).await.expect("publish");
    // The build's final notification, again, as Cloud Build may send it.
    let build_id = live["build_id"].as_str().expect("build id");
    let resource = std::fs::read(app.embedded.data_dir.join("builder/builds").join(build_id).join("build.json"))
        .expect("build.json");
    let attributes = [("buildId".to_owned(), build_id.to_owned()), ("status".to_owned(), "SUCCESS".to_owned())].into();
    bus.publish(Topic::CloudBuilds, OutboundMessage { data: resource.into(), attributes, ordering_key: None })
        .await
        .expect("publish");

    // Deliveries are in-process and take milliseconds; give them ample time.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.embedded.bus.stats().await.expect("stats").backlog > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = api(&app, "GET", &format!("/api/deployments/{}", live["id"].as_str().expect("id")), None).await;
    assert_eq!(after, live, "the deployment did not change");
    assert_eq!(session_events(&app, &session).await.len(), events_before, "no new session events");
    let (_, service_after) = api(&app, "GET", "/api/services/twice", None).await;
    assert_eq!(service_after, service_before);
    assert_eq!(count_dirs(&app.embedded.data_dir.join("runtime/revisions")), 1);
    assert_eq!(count_dirs(&app.embedded.data_dir.join("builder/builds")), 1);
    assert_eq!(app.embedded.bus.stats().await.expect("stats").dead_letters, 0);
}

#[tokio::test]
async fn an_app_on_its_own_port_is_routed_there_found_by_analysis_or_by_repair() {
    let app = spawn_app().await;
    // The analyzer sees the fixed port in the code: routed from the start.
    let fixed = copy_fixture("py-fixed-port");
    let (_, live) = deploy(&app, json!({ "source": fixed.path(), "name": "fixed" })).await;
    assert_eq!(live["state"], "live", "{live}");
    assert_eq!(live["plan"]["port"], 5000);
    let (_, body) = get_service(&app, "fixed").await;
    assert!(body.contains("devgem-fixture:py-fixed-port"), "{body}");

    // The port is in a settings file the analyzer does not read: the start fails on $PORT, the
    // app's output names its port, and the deploy repairs the route.
    let hidden = copy_fixture("py-hidden-port");
    let (created, repaired) = deploy(&app, json!({ "source": hidden.path(), "name": "hidden" })).await;
    assert_eq!(repaired["state"], "live", "{repaired}");
    assert_eq!(repaired["plan"]["port"], 5055);
    assert!(repaired["revision"].as_str().is_some_and(|r| r.ends_with("-r1")), "{repaired}");
    let (_, body) = get_service(&app, "hidden").await;
    assert!(body.contains("devgem-fixture:py-hidden-port"), "{body}");
    let events = session_events(&app, created["session_id"].as_str().expect("session")).await;
    let told = events.iter().any(|e| {
        e["data"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Repair 1 of 2: the app listens on port 5055, not on $PORT"))
    });
    assert!(told, "the user is told what changed and why: {events:?}");
}

#[tokio::test]
async fn a_stale_start_command_is_replaced_by_the_one_the_code_suggests_and_built_again() {
    let app = spawn_app().await;
    let stale = copy_fixture("py-stale-procfile");
    let (created, live) = deploy(&app, json!({ "source": stale.path(), "name": "stale" })).await;
    assert_eq!(live["state"], "live", "{live}");
    assert_eq!(live["repairs"], 1, "{live}");
    assert_eq!(live["plan"]["start_command"], "python app.py");
    let dockerfile = live["plan"]["dockerfile"].as_str().expect("dockerfile");
    assert!(dockerfile.ends_with("CMD python app.py\n") && !dockerfile.contains("server.py"), "{dockerfile}");
    assert!(live["revision"].as_str().is_some_and(|r| r.ends_with("-r1")), "{live}");
    let (_, body) = get_service(&app, "stale").await;
    assert!(body.contains("devgem-fixture:py-stale-procfile"), "{body}");
    let events = session_events(&app, created["session_id"].as_str().expect("session")).await;
    let told = events.iter().filter_map(|e| e["data"]["text"].as_str()).find(|t| t.starts_with("Repair 1 of 2"));
    assert!(
        told.is_some_and(|t| t.contains("`python server.py` did not start the app (can't open file)")
            && t.contains("`python app.py`")
            && t.ends_with("building again")),
        "the user is told what changed and why: {told:?}"
    );
    // Two builds, the first one's image replaced; one revision, the repaired one.
    assert_eq!(count_dirs(&app.embedded.data_dir.join("builder/builds")), 2);
    assert_eq!(count_dirs(&app.embedded.data_dir.join("runtime/revisions")), 1);
}

#[tokio::test]
async fn a_build_that_misses_a_system_package_is_built_again_with_it_once() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    // A build step that fails as psycopg2's does without libpq-dev, whatever the machine has.
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nRUN echo 'Error: pg_config executable not found.' && exit 1\nCMD [\"true\"]\n",
    )
    .expect("write");
    let (created, failed) = deploy(&app, json!({ "source": repo.path(), "name": "pgapp" })).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["failure"]["stage"], "build", "{failed}");
    assert_eq!(failed["repairs"], 1, "the package was added once; the second failure is final: {failed}");
    let dockerfile = failed["plan"]["dockerfile"].as_str().expect("dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    assert!(lines[1].contains("apt-get install -y --no-install-recommends libpq-dev"), "{dockerfile}");
    let events = session_events(&app, created["session_id"].as_str().expect("session")).await;
    let told = events.iter().filter_map(|e| e["data"]["text"].as_str()).find(|t| t.starts_with("Repair 1 of 2"));
    assert!(
        told.is_some_and(
            |t| t.contains("the build log says `Error: pg_config executable not found.`") && t.contains("libpq-dev")
        ),
        "{told:?}"
    );
    assert_eq!(count_dirs(&app.embedded.data_dir.join("builder/builds")), 2, "one build per attempt");
}

#[tokio::test]
async fn secret_values_reach_the_app_and_are_stored_nowhere_in_plain_text() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        repo.path().join("app.py"),
        "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\nPASSWORD = os.environ[\"DB_PASSWORD\"]\nKEY = os.environ[\"SIGNING\"]\n\n\nclass H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        body = f\"lengths {len(PASSWORD)} {len(KEY)}\".encode()\n        self.send_response(200)\n        self.send_header(\"Content-Length\", str(len(body)))\n        self.end_headers()\n        self.wfile.write(body)\n\n\nif __name__ == \"__main__\":\n    HTTPServer((\"0.0.0.0\", int(os.environ.get(\"PORT\", \"8080\"))), H).serve_forever()\n",
    )
    .expect("write");
    std::fs::write(repo.path().join("requirements.txt"), "# none\n").expect("write");
    let body = json!({
        "source": repo.path(), "name": "vault",
        "env": { "DB_PASSWORD": "hunter2-plain" },
        "secrets": { "SIGNING": "k3y-material" },
    });
    let (created, live) = deploy(&app, body).await;
    assert_eq!(live["state"], "live", "{live}");
    let (_, answer) = get_service(&app, "vault").await;
    assert_eq!(answer, "lengths 13 12");
    assert!(live["env"].get("DB_PASSWORD").is_none(), "a secret-looking name goes to the secret store: {live}");
    assert_eq!(live["secret_env"]["DB_PASSWORD"]["name"], "admin--vault--DB_PASSWORD");
    let events = serde_json::to_string(&session_events(&app, created["session_id"].as_str().expect("session")).await)
        .expect("json");
    let data = app.embedded.data_dir.clone();
    let mut stored = vec![live.to_string(), events];
    for file in ["secrets.json", "store.db", "bus.db"] {
        stored.push(String::from_utf8_lossy(&std::fs::read(data.join(file)).unwrap_or_default()).into_owned());
    }
    for entry in std::fs::read_dir(data.join("runtime/revisions")).expect("revisions").flatten() {
        stored.push(std::fs::read_to_string(entry.path().join("revision.json")).unwrap_or_default());
    }
    for text in stored {
        assert!(
            !text.contains("hunter2-plain") && !text.contains("k3y-material"),
            "a secret in plain text: {}",
            &text[..text.len().min(300)]
        );
    }
}

#[tokio::test]
async fn go_flask_and_express_apps_deploy_and_answer() {
    let app = spawn_app().await;
    for (fixture, name) in [("go-stdlib", "goapp"), ("py-flask", "flaskapp"), ("node-express", "expressapp")] {
        let repo = copy_fixture(fixture);
        let (_, deployment) = deploy(&app, json!({ "source": repo.path(), "name": name })).await;
        assert_eq!(deployment["state"], "live", "{fixture}: {deployment}");
        let (status, body) = get_service(&app, name).await;
        assert_eq!(status, 200, "{fixture}");
        assert!(body.contains(&format!("devgem-fixture:{fixture}")), "{fixture} answered: {body}");
    }
}

#[tokio::test]
async fn build_output_streams_to_the_session_while_the_build_runs() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(repo.path().join("index.html"), "streamed").expect("write");
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nRUN for i in 1 2 3 4; do echo progress-$i; sleep 0.5; done\nCOPY index.html /srv/\nWORKDIR /srv\nCMD [\"sh\", \"-c\", \"exec python3 -m http.server $PORT\"]\n",
    )
    .expect("write");
    let (created, live) = deploy(&app, json!({ "source": repo.path(), "name": "streamer" })).await;
    assert_eq!(live["state"], "live", "{live}");
    let events = session_events(&app, created["session_id"].as_str().expect("session")).await;
    let logs: Vec<&Value> = events.iter().filter(|e| e["type"] == "build_log").collect();
    let lines: Vec<&str> = logs
        .iter()
        .flat_map(|e| e["data"]["lines"].as_array().into_iter().flatten().filter_map(Value::as_str))
        .collect();
    let progress: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("progress-")).collect();
    assert_eq!(
        progress,
        ["progress-1", "progress-2", "progress-3", "progress-4"],
        "every line, in order, once: {lines:?}"
    );
    let batch_of = |needle: &str| {
        logs.iter().position(|e| e["data"]["lines"].as_array().is_some_and(|l| l.iter().any(|x| x == needle)))
    };
    assert!(batch_of("progress-1") < batch_of("progress-4"), "the lines went out while the build ran, in batches");
    let complete = events.iter().position(|e| e["type"] == "deployment_complete").expect("complete");
    let first_log = events.iter().position(|e| e["type"] == "build_log").expect("logs");
    assert!(first_log < complete);
}

#[tokio::test]
async fn devgem_deploy_without_a_server_runs_one_and_serves_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().expect("tempdir");
    let repo = copy_fixture("static-site");
    let mut child = std::process::Command::new(crate::support::devgem_bin())
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .arg("deploy")
        .arg(repo.path())
        .args(["--name", "solo"])
        .env_remove("DEVGEM_SERVER")
        .env_remove("DEVGEM_TOKEN")
        .env("DEVGEM_SECRETS_KEY_FILE", data.path().join("secrets.key"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run devgem deploy");
    let stdout = child.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next().and_then(Result::ok))
        .await
        .expect("joins")
        .expect("the URL on stdout");
    let port = url.trim_end_matches('/').rsplit(':').next().expect("port").to_owned();
    assert_eq!(url, format!("http://solo.localhost:{port}/"));
    let (_, body) = get_host(&format!("http://127.0.0.1:{port}"), "solo", "/").await;
    assert!(body.contains("devgem-fixture:static-site"), "served while the command runs: {body}");
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not stop on Ctrl-C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn a_start_that_stops_on_a_missing_variable_names_it() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    // The name is built at run time, so the analyzer cannot see it; the app's error names it.
    std::fs::write(
        repo.path().join("app.py"),
        "import os\nfrom http.server import HTTPServer, SimpleHTTPRequestHandler\n\nif __name__ == \"__main__\":\n    token = os.environ[\"_\".join([\"PAYMENT\", \"GATEWAY\"])]\n    HTTPServer((\"0.0.0.0\", int(os.environ.get(\"PORT\", \"8080\"))), SimpleHTTPRequestHandler).serve_forever()\n",
    )
    .expect("write");
    std::fs::write(repo.path().join("requirements.txt"), "# none\n").expect("write");
    let (_, failed) = deploy(&app, json!({ "source": repo.path(), "name": "payments" })).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["failure"]["cause"], "missing_env");
    assert_eq!(failed["failure"]["stage"], "deploy");
    assert!(
        failed["failure"]["message"].as_str().is_some_and(|m| m.contains("PAYMENT_GATEWAY has no value")),
        "{failed}"
    );
}

#[tokio::test]
async fn a_start_command_whose_program_is_missing_is_explained() {
    let app = spawn_app().await;
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::write(repo.path().join("app.py"), "app = None\n").expect("write");
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM python:3.11-slim\nWORKDIR /app\nCOPY app.py .\nCMD [\"sh\", \"-c\", \"exec gunicorn --bind 0.0.0.0:$PORT app:app\"]\n",
    )
    .expect("write");
    let (_, failed) = deploy(&app, json!({ "source": repo.path(), "name": "nogunicorn" })).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["failure"]["cause"], "start_failed");
    let message = failed["failure"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("runs gunicorn, which is not installed") && message.contains("requirements.txt"),
        "{message}"
    );
    let tail: Vec<&str> =
        failed["failure"]["log_tail"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(tail.iter().any(|l| l.contains("gunicorn: not found")), "the app's own words are kept: {tail:?}");
}
