//! `devgem build` on the runnable fixture apps (tests/fixtures/apps): the Dockerfile DevGem
//! generates for each is executed by the local builder, the image it produced is started with
//! `PORT` set, and the app must answer with its own content. Python, Node, static, Go and Rust
//! apps without dependencies, plus Flask, FastAPI, Express and a Next.js standalone build with real
//! ones from the registries.

use crate::support::devgem_bin;
use devgem_infra::local::builder::{LocalImage, executor_for, kill_group};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn app(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps").join(name)
}

struct Built {
    data: tempfile::TempDir,
    start_command: String,
    stderr: String,
}

fn devgem_build(data_dir: &Path, target: &Path) -> std::process::Output {
    Command::new(devgem_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("build")
        .arg(target)
        .env("RUST_LOG", crate::support::log_env())
        .output()
        .expect("run devgem build")
}

fn build(name: &str) -> Built {
    let data = tempfile::tempdir().expect("tempdir");
    let out = devgem_build(data.path(), &app(name));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "devgem build {name} failed:\n{stderr}");
    let start_command = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !start_command.is_empty() && !start_command.contains('\n'),
        "stdout is the start command: {start_command:?}"
    );
    Built { data, start_command, stderr }
}

/// Starts the built image with `PORT` and returns what `GET /` answers.
async fn serve_and_get(built: &Built) -> String {
    let builds = built.data.path().join("builder/builds");
    let build_dir =
        std::fs::read_dir(&builds).expect("builds").filter_map(Result::ok).next().expect("one build").path();
    let image = LocalImage::load(&build_dir).expect("image.json");
    assert_eq!(image.start_command(), built.start_command);
    let executor = executor_for(built.data.path()).expect("executor");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let upper = built.data.path().join("builder/run-upper");
    std::fs::create_dir_all(&upper).expect("mkdir");
    let (mut command, _scratch) =
        image.command(executor.sandbox(), upper, &[("PORT".to_owned(), port.to_string())]).expect("command");
    let mut child = command.spawn().expect("start the app");
    let url = format!("http://127.0.0.1:{port}/");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        match client.get(&url).timeout(Duration::from_secs(5)).send().await {
            Ok(response) if response.status().is_success() => break response.text().await.expect("body"),
            _ if Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    let output = child.wait_with_output().await.expect("output");
                    panic!(
                        "the app exited with {status} before answering:\n{}\n{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{url} did not answer within 60 s: {other:?}"),
        }
    };
    if let Some(pid) = child.id() {
        kill_group(pid);
    }
    let _ = child.wait().await;
    body
}

fn cache_holds_files(built: &Built, cache: &str) -> bool {
    fn any_file(dir: &Path) -> bool {
        std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).any(|e| {
            let path = e.path();
            path.is_file() || (path.is_dir() && any_file(&path))
        })
    }
    any_file(&built.data.path().join("builder/cache").join(cache))
}

async fn builds_and_answers(name: &str) -> Built {
    let built = build(name);
    let body = serve_and_get(&built).await;
    assert!(body.contains(&format!("devgem-fixture:{name}")), "{name} answered with someone else's content: {body}");
    built
}

#[tokio::test]
async fn python_stdlib_app_builds_and_answers() {
    let built = builds_and_answers("py-stdlib").await;
    assert_eq!(built.start_command, "exec python app.py");
    let python = std::process::Command::new("python3").arg("--version").output().expect("python3");
    if !String::from_utf8_lossy(&python.stdout).contains("3.12") {
        assert!(
            built.stderr.contains("asks for Python 3.12; this machine has"),
            "a version mismatch is a warning: {}",
            built.stderr
        );
    }
}

#[tokio::test]
async fn flask_app_with_real_dependencies_builds_and_answers_through_gunicorn() {
    let built = builds_and_answers("py-flask").await;
    assert!(built.start_command.contains("gunicorn --bind 0.0.0.0:$PORT"), "{}", built.start_command);
}

#[tokio::test]
async fn fastapi_app_builds_and_answers_through_uvicorn() {
    let built = builds_and_answers("py-fastapi").await;
    assert!(built.start_command.contains("uvicorn main:app --host 0.0.0.0 --port $PORT"), "{}", built.start_command);
}

#[tokio::test]
async fn node_app_without_dependencies_builds_and_answers() {
    builds_and_answers("node-plain").await;
}

#[tokio::test]
async fn express_app_with_real_dependencies_builds_and_answers() {
    let built = builds_and_answers("node-express").await;
    assert!(cache_holds_files(&built, "npm"), "downloads went through the persistent npm cache");
}

#[tokio::test]
async fn nextjs_standalone_app_builds_in_two_stages_and_answers() {
    let built = builds_and_answers("next-standalone").await;
    assert_eq!(built.start_command, "exec node server.js");
}

#[tokio::test]
async fn static_site_is_served_by_nginx_on_port() {
    let built = builds_and_answers("static-site").await;
    assert!(built.start_command.contains("nginx"), "{}", built.start_command);
}

#[tokio::test]
async fn go_stdlib_app_builds_in_two_stages_and_answers() {
    let built = builds_and_answers("go-stdlib").await;
    assert_eq!(built.start_command, "/app");
}

#[tokio::test]
async fn rust_stdlib_app_builds_in_two_stages_and_answers() {
    builds_and_answers("rust-stdlib").await;
}

#[test]
fn a_failing_build_names_the_step_and_line_and_shows_the_output() {
    let data = tempfile::tempdir().expect("tempdir");
    let repo = data.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("app.py"), "print('hi')\n").expect("write");
    std::fs::write(
        repo.join("Dockerfile"),
        "FROM python:3.11-slim\nCOPY app.py /app/\nRUN echo compiling && python -c 'import missing_module'\nCMD [\"python\", \"/app/app.py\"]\n",
    )
    .expect("write");
    let out = devgem_build(&data.path().join("data"), &repo);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no start command on failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("build failed: step 3/4 (line 3)"), "{stderr}");
    assert!(stderr.contains("the command exited with status 1"), "{stderr}");
    assert!(stderr.contains("ModuleNotFoundError: No module named 'missing_module'"), "{stderr}");
}
