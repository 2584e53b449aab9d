//! `devgem up` and `devgem serve` as processes: health, one server per data dir, clean stops,
//! restarts that keep state.

use crate::support::DevgemProcess;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn up_answers_health_refuses_a_second_server_and_stops_on_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = DevgemProcess::start(dir.path(), &["up", "--port", "0"], &[]);
    let info = server.wait_ready().await;

    let health = reqwest::get(format!("{}/health", info.url)).await.expect("health");
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.expect("json");
    assert_eq!(body["ok"], true);
    for function in ["chat", "analyze", "build", "deploy", "monitor", "relay", "api", "janitor"] {
        assert_eq!(body["functions"][function]["ok"], true, "{function} answers its probe: {body}");
    }
    assert_eq!(body["bus"]["backlog"], 0);
    assert_eq!(body["bus"]["dead_letters"], 0);

    // A second server on the same data dir is refused, and says which one runs.
    let mut second = DevgemProcess::start(dir.path(), &["up", "--port", "0"], &[]);
    let status = second.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "a second server must not start");
    let mut stderr = String::new();
    if let Some(mut err) = second.child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(stderr.contains("already using the data dir"), "{stderr}");
    assert!(stderr.contains(&info.url), "names the running server: {stderr}");

    // The admin token works; it was printed once.
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin token saved");
    let me =
        reqwest::Client::new().get(format!("{}/api/me", info.url)).bearer_auth(token.trim()).send().await.expect("me");
    assert_eq!(me.status(), 200);

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(12));
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let stdout = server.stdout();
    assert!(stdout.contains(token.trim()), "the first start prints the admin token");
    assert!(stdout.contains("DevGem stopped."), "{stdout}");
    assert!(!dir.path().join("server.json").exists(), "server.json removed on a clean stop");

    // Starting again resumes on the same data: same admin, token not printed again.
    let mut again = DevgemProcess::start(dir.path(), &["up", "--port", "0"], &[]);
    let info = again.wait_ready().await;
    let me =
        reqwest::Client::new().get(format!("{}/api/me", info.url)).bearer_auth(token.trim()).send().await.expect("me");
    assert_eq!(me.status(), 200, "the token survives a restart");
    again.signal("INT");
    assert!(again.wait_exit(Duration::from_secs(12)).success(), "Ctrl-C stops cleanly");
    assert!(!again.stdout().contains(token.trim()), "the token is shown only on first start");
}

#[tokio::test]
async fn token_create_works_through_the_running_server_and_in_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No server: the command works in-process on the data dir.
    let mut offline = DevgemProcess::start(dir.path(), &["token", "create", "carol"], &[]);
    assert!(offline.wait_exit(Duration::from_secs(20)).success());
    let carol = offline.stdout().trim().to_owned();
    assert!(carol.starts_with("dg_"), "{carol}");

    let mut server = DevgemProcess::start(dir.path(), &["up", "--port", "0"], &[]);
    let info = server.wait_ready().await;
    let mut online = DevgemProcess::start(dir.path(), &["token", "create", "dave"], &[]);
    assert!(online.wait_exit(Duration::from_secs(20)).success());
    let dave = online.stdout().trim().to_owned();
    let client = reqwest::Client::new();
    for (token, user) in [(&carol, "carol"), (&dave, "dave")] {
        let me: Value = client
            .get(format!("{}/api/me", info.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("me")
            .json()
            .await
            .expect("json");
        assert_eq!(me["user_id"], user);
        assert_eq!(me["admin"], false);
    }
    let mut bad = DevgemProcess::start(dir.path(), &["token", "create", "no/slash"], &[]);
    assert!(!bad.wait_exit(Duration::from_secs(20)).success(), "an invalid user id is refused");
}

#[tokio::test]
async fn serve_runs_one_function_on_port_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let port_text = port.to_string();
    let mut api = DevgemProcess::start(dir.path(), &["serve", "api"], &[("PORT", &port_text)]);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let probe = loop {
        match reqwest::get(format!("{url}/healthz")).await {
            Ok(r) => break r,
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("serve api never answered: {e}"),
        }
    };
    assert_eq!(probe.json::<Value>().await.expect("json")["function"], "api");
    let refused = reqwest::get(format!("{url}/api/me")).await.expect("request");
    assert_eq!(refused.status(), 401);
    api.signal("TERM");
    assert!(api.wait_exit(Duration::from_secs(12)).success(), "exits cleanly on SIGTERM");
}

#[tokio::test]
async fn on_cloud_run_logs_are_cloud_logging_json_with_the_correlation_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port().to_string();
    let mut api = DevgemProcess::start(
        dir.path(),
        &["serve", "api"],
        &[("PORT", &port), ("K_SERVICE", "api"), ("RUST_LOG", "info")],
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "serve api never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = reqwest::Client::new()
        .get(format!("{url}/api/me"))
        .header("x-correlation-id", "corr-logline-7")
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 401);
    api.signal("TERM");
    assert!(api.wait_exit(Duration::from_secs(12)).success());
    let mut stderr = String::new();
    if let Some(mut err) = api.child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    let lines: Vec<Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    assert!(!lines.is_empty(), "no log lines; stdout: {:?}", api.stdout());
    assert!(lines.iter().all(|l| l["severity"].is_string() && l["message"].is_string()), "{stderr}");
    let refusal = lines.iter().find(|l| l["message"] == "request refused").expect("the refusal is logged");
    assert_eq!(refusal["span"]["correlation_id"], "corr-logline-7");
    assert!(!stderr.contains("dg_"), "no token material in logs");
}
