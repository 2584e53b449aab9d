//! The local runtime with real images from the local builder: startup probe, traffic, rollback
//! to a stopped revision, restarts of a serving revision that exits, logs as LogEntries, and a
//! restart of the runtime itself.

use super::*;
use crate::local::builder::{BuildJob, ExecutorConfig, cancel_pair};
use crate::test_support::RecordingBus;
use devgem_common::clock::SystemClock;

struct Fixture {
    dir: tempfile::TempDir,
    executor: Arc<Executor>,
    bus: Arc<RecordingBus>,
    runtime: LocalRuntime,
}

fn owner() -> UserId {
    UserId::admin()
}

fn service() -> ServiceName {
    ServiceName::parse("web").expect("service")
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let executor = Arc::new(
        Executor::new(ExecutorConfig {
            root: data.join("builder"),
            hidden: vec![data.clone()],
            host_path: std::env::var_os("PATH").unwrap_or_default(),
        })
        .expect("executor"),
    );
    let bus = Arc::new(RecordingBus::default());
    let runtime = runtime_on(&data, &executor, &bus);
    Fixture { dir, executor, bus, runtime }
}

fn runtime_on(data: &Path, executor: &Arc<Executor>, bus: &Arc<RecordingBus>) -> LocalRuntime {
    let secrets = Arc::new(crate::local::LocalSecrets::open(data.join("secrets.json"), &data.with_extension("key")));
    LocalRuntime::open(
        data.join("runtime"),
        executor.clone(),
        secrets,
        bus.clone(),
        Arc::new(SystemClock),
        Duration::from_secs(5),
    )
    .expect("runtime")
}

/// Builds an image serving `content` with the host's Python on $PORT, or running `cmd`.
async fn image(f: &Fixture, id: &str, content: &str, cmd: Option<&str>) -> String {
    let context = f.dir.path().join(format!("ctx-{id}"));
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::write(context.join("index.html"), content).expect("write");
    let cmd = cmd.unwrap_or("exec /usr/bin/python3 -m http.server $PORT --bind 0.0.0.0");
    let dockerfile = format!(
        "FROM debian:bookworm-slim\nCOPY index.html /srv/\nWORKDIR /srv\nCMD [\"sh\", \"-c\", {}]\n",
        serde_json::to_string(cmd).expect("json")
    );
    let (_handle, cancel) = cancel_pair();
    let job = BuildJob {
        build_id: id.to_owned(),
        context,
        dockerfile,
        dockerignore: None,
        log: Arc::new(|_| {}),
        cancel,
        timeout: Duration::from_secs(60),
    };
    f.executor.build(job).await.expect("build");
    format!("devgem.local/{}/{}:{id}", owner(), service())
}

fn spec(image: String) -> RevisionSpec {
    RevisionSpec { owner: owner(), service: service(), image, env: BTreeMap::new(), port: CLOUD_RUN_PORT, name: None }
}

async fn get(url: &str) -> Option<String> {
    let response = reqwest::Client::new().get(url).timeout(Duration::from_secs(3)).send().await.ok()?;
    response.text().await.ok()
}

#[tokio::test]
async fn revisions_start_serve_move_traffic_and_roll_back() {
    let f = fixture();
    let v1 = f.runtime.create_revision(spec(image(&f, "b1", "version one", None).await)).await.expect("v1 starts");
    assert!(v1.name.starts_with("web-00001-"), "{}", v1.name);
    f.runtime.verify(&v1.url).await.expect("v1 answers");
    assert_eq!(get(&v1.url).await.as_deref(), Some("version one"));
    assert_eq!(f.runtime.port_for("web").await, None, "no traffic before it is routed");
    f.runtime.route_traffic(&owner(), &service(), &v1.name).await.expect("route");
    let port = f.runtime.port_for("web").await.expect("routed");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.as_deref(), Some("version one"));

    let v2 = f.runtime.create_revision(spec(image(&f, "b2", "version two", None).await)).await.expect("v2 starts");
    assert_eq!(get(&v1.url).await.as_deref(), Some("version one"), "the old revision serves until traffic moves");
    f.runtime.route_traffic(&owner(), &service(), &v2.name).await.expect("route v2");
    let port = f.runtime.port_for("web").await.expect("routed");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.as_deref(), Some("version two"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&v1.url).await, None, "the revision that lost traffic stopped");

    // Roll back: the stopped revision starts again and serves.
    f.runtime.route_traffic(&owner(), &service(), &v1.name).await.expect("roll back");
    let port = f.runtime.port_for("web").await.expect("routed");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.as_deref(), Some("version one"));

    let refused = f.runtime.delete_revision(&owner(), &service(), &v1.name).await;
    assert!(matches!(refused, Err(RuntimeError::Refused(_))), "the serving revision cannot be deleted: {refused:?}");
    f.runtime.delete_revision(&owner(), &service(), &v2.name).await.expect("delete v2");
    assert!(matches!(f.runtime.route_traffic(&owner(), &service(), &v2.name).await, Err(RuntimeError::NotFound(_))));

    let logs = f.runtime.logs(&owner(), &service(), Some(&v1.name), 100).await.expect("logs");
    assert!(logs.iter().any(|e| e.message().is_some_and(|m| m.contains("\"GET / HTTP/1.1\" 200"))), "{logs:?}");
    let published = f.bus.on(devgem_common::events::Topic::LogEntries);
    let entry = LogEntry::decode(&published.first().expect("log entries published").data).expect("a LogEntry");
    assert_eq!(entry.service_name(), Some("web"));
    assert!(entry.revision_name().is_some_and(|r| r.starts_with("web-0000")));
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_revision_that_does_not_start_is_refused_with_the_reason() {
    let f = fixture();
    let crash = image(&f, "c1", "", Some("echo missing DATABASE_URL >&2; exit 3")).await;
    match f.runtime.create_revision(spec(crash)).await {
        Err(RuntimeError::StartFailed(why)) => {
            assert!(why.contains("exited with status 3") && why.contains("missing DATABASE_URL"), "{why}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    // Listens, but on a port of its own rather than $PORT (a free one, so no other test holds it).
    let own_port = super::free_port().expect("a free port");
    let listens_elsewhere = format!("exec /usr/bin/python3 -m http.server {own_port} --bind 127.0.0.1");
    let fixed = image(&f, "c2", "", Some(&listens_elsewhere)).await;
    match f.runtime.create_revision(spec(fixed)).await {
        Err(RuntimeError::StartFailed(why)) => assert!(why.contains("did not listen on port"), "{why}"),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let revisions = std::fs::read_dir(f.dir.path().join("data/runtime/revisions")).expect("dir").count();
    assert_eq!(revisions, 0, "failed revisions leave nothing behind");
    let other = RevisionSpec { image: "gcr.io/x/y:1".into(), ..spec(String::new()) };
    assert!(matches!(f.runtime.create_revision(other).await, Err(RuntimeError::Refused(_))));
}

#[tokio::test]
async fn a_serving_revision_that_exits_is_started_again() {
    let f = fixture();
    // Answers two connections (the startup probe's and one request), then exits, as a crashing
    // app does.
    let once = "exec /usr/bin/python3 -c \"import http.server,os; s=http.server.HTTPServer(('0.0.0.0', int(os.environ['PORT'])), http.server.SimpleHTTPRequestHandler); s.handle_request(); s.handle_request(); print('served one, exiting', flush=True)\"";
    let revision = f.runtime.create_revision(spec(image(&f, "r1", "once", Some(once)).await)).await.expect("starts");
    f.runtime.route_traffic(&owner(), &service(), &revision.name).await.expect("route");
    assert_eq!(get(&revision.url).await.as_deref(), Some("once"));
    let mut answered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if get(&revision.url).await.as_deref() == Some("once") {
            answered = true;
            break;
        }
    }
    assert!(answered, "started again after it exited");
    let logs = f.runtime.logs(&owner(), &service(), None, 100).await.expect("logs");
    let exit = logs.iter().find(|e| e.message().is_some_and(|m| m.starts_with("Container exited with status 0")));
    assert!(exit.is_some_and(|e| e.severity == Severity::Error), "{logs:?}");
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_restarted_runtime_serves_its_routes_again() {
    let f = fixture();
    let revision = f.runtime.create_revision(spec(image(&f, "s1", "still here", None).await)).await.expect("starts");
    f.runtime.route_traffic(&owner(), &service(), &revision.name).await.expect("route");
    f.runtime.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&revision.url).await, None, "stopped with the runtime");

    let again = runtime_on(&f.dir.path().join("data"), &f.executor, &f.bus);
    assert!(again.restore().await.is_empty());
    let port = again.port_for("web").await.expect("routed after restart");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.as_deref(), Some("still here"));
    again.shutdown().await;
}

#[tokio::test]
async fn creating_a_named_revision_twice_returns_the_same_one() {
    let f = fixture();
    let image = image(&f, "n1", "named", None).await;
    let named = RevisionSpec { name: Some("web-abc123".into()), ..spec(image) };
    let first = f.runtime.create_revision(named.clone()).await.expect("created");
    assert_eq!(first.name, "web-abc123");
    let again = f.runtime.create_revision(named.clone()).await.expect("exists");
    assert_eq!((again.name.as_str(), again.url.as_str()), (first.name.as_str(), first.url.as_str()));
    f.runtime.shutdown().await;
    // After a restart its process is gone; creating it again starts the same revision.
    let runtime = runtime_on(&f.dir.path().join("data"), &f.executor, &f.bus);
    let restarted = runtime.create_revision(named).await.expect("started again");
    assert_eq!(restarted.name, "web-abc123");
    assert_eq!(get(&restarted.url).await.as_deref(), Some("named"));
    let revisions = std::fs::read_dir(f.dir.path().join("data/runtime/revisions")).expect("dir").count();
    assert_eq!(revisions, 1, "no duplicate revision");
    runtime.shutdown().await;
}

#[tokio::test]
async fn secret_env_values_reach_the_process_and_nothing_stored() {
    use devgem_common::ports::secrets::{SecretValue, Secrets as _};
    let f = fixture();
    let data = f.dir.path().join("data");
    let secrets = crate::local::LocalSecrets::open(data.join("secrets.json"), &data.with_extension("key"));
    let reference = secrets.put("admin--web--API_SECRET", SecretValue::new("s3cr3t!")).await.expect("put");
    let cmd =
        "printf %s \"$API_SECRET\" | wc -c > /srv/len.txt; exec /usr/bin/python3 -m http.server $PORT --bind 0.0.0.0";
    let image = image(&f, "s1", "x", Some(cmd)).await;
    let mut spec = spec(image);
    spec.env.insert(devgem_common::ids::EnvVarName::parse("API_SECRET").expect("name"), EnvValue::Secret(reference));
    let revision = f.runtime.create_revision(spec).await.expect("starts");
    assert_eq!(get(&format!("{}len.txt", revision.url)).await.map(|t| t.trim().to_owned()), Some("7".to_owned()));
    let record = std::fs::read_to_string(data.join("runtime/revisions").join(&revision.name).join("revision.json"))
        .expect("record");
    assert!(!record.contains("s3cr3t!") && record.contains("admin--web--API_SECRET"), "{record}");
    f.runtime.shutdown().await;
}
