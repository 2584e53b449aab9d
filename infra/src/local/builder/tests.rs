//! The executor against real Dockerfiles on this machine: layers, multi-stage copies, the
//! sandbox's guarantees (nothing written outside the builder's directory, secrets hidden), the
//! layer cache, cancel, and errors that name the step and line.

use super::*;
use devgem_common::ports::builder::BuilderError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    context: PathBuf,
    executor: Executor,
}

fn fixture_with_path(host_path: OsString) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let context = dir.path().join("app");
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("admin.token"), "dg_secret").expect("write");
    let executor = Executor::new(ExecutorConfig { root: data.join("builder"), hidden: vec![data.clone()], host_path })
        .expect("executor");
    Fixture { _dir: dir, data, context, executor }
}

/// A second executor on the fixture's data dir (an executor may be shared; tests keep `f` whole).
fn fixture_executor(f: &Fixture) -> Executor {
    Executor::new(ExecutorConfig {
        root: f.data.join("builder"),
        hidden: vec![f.data.clone()],
        host_path: std::env::var_os("PATH").unwrap_or_default(),
    })
    .expect("executor")
}

fn fixture() -> Fixture {
    fixture_with_path(std::env::var_os("PATH").unwrap_or_default())
}

type Lines = Arc<Mutex<Vec<LogLine>>>;

fn job(f: &Fixture, id: &str, dockerfile: &str) -> (BuildJob, Lines, CancelHandle) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let (handle, cancel) = cancel_pair();
    let job = BuildJob {
        build_id: id.to_owned(),
        context: f.context.clone(),
        dockerfile: dockerfile.to_owned(),
        dockerignore: None,
        log: Arc::new(move |line| sink.lock().expect("log lock").push(line)),
        cancel,
        timeout: Duration::from_secs(120),
    };
    (job, lines, handle)
}

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

async fn run_image(f: &Fixture, image: &LocalImage, env: &[(&str, &str)]) -> String {
    let upper = f.data.join("builder").join(format!("run-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&upper).expect("mkdir");
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let (mut command, _scratch) = image.command(f.executor.sandbox(), upper, &env).expect("command");
    let out = command.output().await.expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn step_error(result: Result<BuildOutcome, BuildError>) -> (usize, usize, String) {
    match result {
        Err(BuildError::Step { step, line, reason, .. }) => (step, line, reason),
        other => panic!("expected a step error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_multi_stage_build_writes_only_inside_the_builder_directory() {
    let f = fixture();
    write(&f.context, "greeting.txt", "hello from the context\n");
    write(&f.context, "sub/data.txt", "nested\n");
    let marker = format!("/devgem-test-{}", fastrand::u64(..));
    let dockerfile = format!(
        "FROM debian:bookworm-slim AS build\nWORKDIR /src\nCOPY greeting.txt sub ./\nRUN mkdir -p {marker} /out && cat greeting.txt data.txt > /out/both.txt && echo built\n\nFROM debian:bookworm-slim\nENV WHO=world\nARG WORD=hi\nENV GREETING=\"$WORD $WHO\"\nCOPY --from=build /out/both.txt /srv/\nWORKDIR /srv\nUSER nobody\nCMD cat both.txt; echo $GREETING; ls {marker} 2>/dev/null || echo no-marker\n"
    );
    let (job, lines, _h) = job(&f, "b1", &dockerfile);
    let outcome = f.executor.build(job).await.expect("build");
    assert!(!Path::new(&marker).exists(), "a RUN writing to {marker} must not touch the host");
    assert!(!Path::new("/out/both.txt").exists());
    assert_eq!(
        outcome.image.start_command(),
        format!("cat both.txt; echo $GREETING; ls {marker} 2>/dev/null || echo no-marker")
    );
    let lines = lines.lock().expect("lock").clone();
    assert!(lines.iter().any(|l| l.step == 4 && l.text == "built"), "RUN output is logged with its step: {lines:?}");
    assert!(lines.iter().any(|l| l.text.starts_with("Step 4/12 (line 4): RUN mkdir")), "{lines:?}");
    assert_eq!(outcome.image.user.as_deref(), Some("nobody"), "USER is recorded");
    assert_eq!(outcome.image.argv[..2], ["/bin/sh".to_owned(), "-c".to_owned()], "shell-form CMD");
    let out = run_image(&f, &outcome.image, &[]).await;
    assert_eq!(out, "hello from the context\nnested\nhi world\nno-marker\n");
}

#[tokio::test]
async fn steps_cannot_read_the_data_dir_or_host_environment() {
    let f = fixture();
    let dockerfile = format!(
        "FROM debian:bookworm-slim\nRUN cat {}/admin.token 2>/dev/null || echo hidden; echo \"home=$HOME path=$PATH host=${{CARGO_MANIFEST_DIR:-none}}\"\nCMD [\"true\"]\n",
        f.data.display()
    );
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some(), "the test process has a variable the step must not see");
    let (job, lines, _h) = job(&f, "b2", &dockerfile);
    let outcome = f.executor.build(job).await.expect("build");
    assert_eq!(outcome.steps_run, 1);
    let texts: Vec<String> = lines.lock().expect("lock").iter().map(|l| l.text.clone()).collect();
    assert!(texts.contains(&"hidden".to_owned()), "{texts:?}");
    let expected = format!("home=/root path={} host=none", super::toolchain::DEFAULT_PATH);
    assert!(texts.contains(&expected), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("dg_secret")));
}

#[tokio::test]
async fn package_caches_persist_under_the_data_dir_whatever_the_dockerfile_says() {
    let f = fixture();
    let dockerfile = "FROM debian:bookworm-slim\nENV PIP_NO_CACHE_DIR=1\nRUN echo \"pip=$PIP_CACHE_DIR nocache=${PIP_NO_CACHE_DIR:-unset} npm=$npm_config_cache\" && echo kept > $PIP_CACHE_DIR/probe\nCMD [\"true\"]\n";
    let (j, lines, _h) = job(&f, "p1", dockerfile);
    f.executor.build(j).await.expect("build");
    let texts: Vec<String> = lines.lock().expect("lock").iter().map(|l| l.text.clone()).collect();
    assert!(
        texts.contains(&"pip=/run/devgem/cache/pip nocache=unset npm=/run/devgem/cache/npm".to_owned()),
        "{texts:?}"
    );
    let probe = f.data.join("builder/cache/pip/probe");
    assert_eq!(std::fs::read_to_string(&probe).expect("written through to the data dir"), "kept\n");
}

#[tokio::test]
async fn unchanged_steps_come_from_the_layer_cache_and_a_changed_source_reruns_what_follows() {
    let f = fixture();
    write(&f.context, "deps.txt", "a\n");
    write(&f.context, "app.txt", "v1\n");
    let dockerfile = "FROM debian:bookworm-slim\nWORKDIR /app\nCOPY deps.txt .\nRUN cp deps.txt installed.txt && echo installing\nCOPY app.txt .\nCMD [\"cat\", \"installed.txt\", \"app.txt\"]\n";
    let (first, _, _h) = job(&f, "c1", dockerfile);
    let first = f.executor.build(first).await.expect("first build");
    assert_eq!((first.steps_run, first.steps_cached), (3, 0));
    let (second, lines, _h) = job(&f, "c2", dockerfile);
    let second = f.executor.build(second).await.expect("second build");
    assert_eq!((second.steps_run, second.steps_cached), (0, 3));
    assert_eq!(second.image.digest, first.image.digest);
    assert!(!lines.lock().expect("lock").iter().any(|l| l.text == "installing"), "the RUN did not run again");
    write(&f.context, "app.txt", "v2\n");
    let (third, _, _h) = job(&f, "c3", dockerfile);
    let third = f.executor.build(third).await.expect("third build");
    assert_eq!((third.steps_run, third.steps_cached), (1, 2), "only the changed COPY runs");
    assert_eq!(run_image(&f, &third.image, &[]).await, "a\nv2\n");
}

#[tokio::test]
async fn errors_name_the_step_and_line() {
    let f = fixture();
    write(&f.context, "ok.txt", "x");
    let (j, _, _h) =
        job(&f, "e1", "FROM debian:bookworm-slim\nCOPY ok.txt /\nRUN echo about to fail && exit 3\nCMD [\"true\"]\n");
    match f.executor.build(j).await {
        Err(BuildError::Step { step, line, reason, tail, .. }) => {
            assert_eq!((step, line), (3, 3));
            assert_eq!(reason, "the command exited with status 3");
            assert_eq!(tail, vec!["about to fail"]);
        }
        other => panic!("expected a step error, got {other:?}"),
    }
    let (j, _, _h) = job(&f, "e2", "FROM debian:bookworm-slim\n\nCOPY missing.txt /\nCMD [\"true\"]\n");
    let (step, line, reason) = step_error(f.executor.build(j).await);
    assert_eq!((step, line), (2, 3));
    assert!(reason.contains("missing.txt was not found in the build context"), "{reason}");
    let (j, _, _h) = job(&f, "e3", "FROM debian:bookworm-slim\nCOPY ../../etc/passwd /x\nCMD [\"true\"]\n");
    let (_, line, reason) = step_error(f.executor.build(j).await);
    assert_eq!(line, 2);
    assert!(reason.contains("outside the build context"), "{reason}");
    let (j, _, _h) = job(&f, "e4", "FROM mycorp/runtime:1\nCMD [\"true\"]\n");
    let (step, line, reason) = step_error(f.executor.build(j).await);
    assert_eq!((step, line), (1, 1));
    assert!(reason.contains("no stand-in"), "{reason}");
    let (j, _, _h) = job(
        &f,
        "e5",
        "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y --no-install-recommends coreutils devgem-no-such-pkg && rm -rf /var/lib/apt/lists/*\n",
    );
    let (_, line, reason) = step_error(f.executor.build(j).await);
    assert_eq!(line, 2);
    assert!(
        reason.contains("missing on this machine: devgem-no-such-pkg") && !reason.contains("coreutils"),
        "{reason}"
    );
    let (j, _, _h) = job(&f, "e6", "FROM debian:bookworm-slim\nRUN true\n");
    let (_, line, reason) = step_error(f.executor.build(j).await);
    assert_eq!(line, 1);
    assert!(reason.contains("no CMD or ENTRYPOINT"), "{reason}");
}

#[tokio::test]
async fn a_missing_toolchain_fails_at_from_with_how_to_install_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    let f = fixture_with_path(empty.path().as_os_str().to_owned());
    let (j, _, _h) = job(&f, "t1", "# comment\nFROM golang:1.22 AS build\nRUN go build\n");
    let (step, line, reason) = step_error(f.executor.build(j).await);
    assert_eq!((step, line), (1, 2));
    assert!(
        reason.contains("needs Go (`go`), which is not installed") && reason.contains("apt-get install golang-go"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_build_past_its_time_limit_is_stopped() {
    let f = fixture();
    let (mut j, _, _h) = job(&f, "x1", "FROM debian:bookworm-slim\nRUN sleep 318\nCMD [\"true\"]\n");
    j.timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let result = f.executor.build(j).await;
    assert!(matches!(result, Err(BuildError::Timeout(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped at the limit: {:?}", started.elapsed());
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(message, "the build took longer than its limit of 1s");
    let survivors = std::process::Command::new("pgrep").args(["-f", "sleep 318"]).output().expect("pgrep");
    assert!(survivors.stdout.is_empty(), "the step was killed");
}

#[tokio::test]
async fn output_that_is_not_utf8_is_logged_and_does_not_stall_the_step() {
    let f = fixture();
    let dockerfile = "FROM debian:bookworm-slim\nRUN printf 'bad \\377 byte\\n' && head -c 300000 /dev/zero | tr '\\0' 'x' && echo && echo after\nCMD [\"true\"]\n";
    let (j, lines, _h) = job(&f, "u1", dockerfile);
    f.executor.build(j).await.expect("build");
    let texts: Vec<String> = lines.lock().expect("lock").iter().map(|l| l.text.clone()).collect();
    assert!(texts.contains(&"bad \u{fffd} byte".to_owned()), "{texts:?}");
    assert!(texts.iter().any(|t| t.ends_with("[...]") && t.len() < 5000), "a long line is cut");
    assert!(texts.contains(&"after".to_owned()));
}

#[tokio::test]
async fn cancel_kills_the_running_step_at_once() {
    let f = fixture();
    let (j, lines, handle) =
        job(&f, "k1", "FROM debian:bookworm-slim\nRUN (sleep 317 &) ; echo started; sleep 317\nCMD [\"true\"]\n");
    let build = tokio::spawn({
        let executor = Arc::new(f.executor);
        async move { executor.build(j).await }
    });
    for _ in 0..200 {
        if lines.lock().expect("lock").iter().any(|l| l.text == "started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let started = std::time::Instant::now();
    handle.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), build).await.expect("ends promptly").expect("joins");
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "cancel took {:?}", started.elapsed());
    let survivors = std::process::Command::new("pgrep").args(["-f", "sleep 317"]).output().expect("pgrep");
    assert!(
        survivors.stdout.is_empty(),
        "no process of the step survives: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
}

/// The Builder port on the fixture's data dir, with local directories as sources.
fn port_on(f: &Fixture, executor: Arc<Executor>, bus: Arc<crate::test_support::RecordingBus>) -> LocalBuilder {
    let blobs = crate::local::LocalBlobs::open(&f.data.join("blobs")).expect("blobs");
    let source =
        crate::source::GitSource::new(crate::source::SourcePolicy { allow_local_paths: true, allow_hosts: Vec::new() });
    LocalBuilder::new(executor, bus, Arc::new(blobs), Arc::new(source), Arc::new(devgem_common::clock::SystemClock))
}

fn request(f: &Fixture, dockerfile: &str) -> devgem_common::ports::builder::BuildRequest {
    use devgem_common::ports::source::{SourceLocation, SourceSpec};
    devgem_common::ports::builder::BuildRequest {
        deployment_id: "0190a4c3104a7e21b6d3f08c5a92e4b7".parse().expect("id"),
        owner: devgem_common::ids::UserId::parse("u1").expect("user"),
        service: devgem_common::ids::ServiceName::parse("hello").expect("service"),
        source: SourceSpec { location: SourceLocation::Local { path: f.context.clone() }, git_ref: None },
        dockerfile: dockerfile.to_owned(),
        extra_files: [(".dockerignore".to_owned(), "secret.txt\n".to_owned())].into(),
        app_dir: ".".to_owned(),
        timeout: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn the_port_publishes_cloud_build_shaped_progress_and_completion() {
    use devgem_common::events::cloud_build::BuildStatus;
    use devgem_common::ports::builder::Builder as _;
    let f = fixture();
    write(&f.context, "hello.txt", "hi\n");
    write(&f.context, "secret.txt", "do not copy\n");
    let bus = Arc::new(crate::test_support::RecordingBus::default());
    let executor = Arc::new(fixture_executor(&f));
    let builder = port_on(&f, executor, bus.clone());
    let handle = builder
        .submit(request(
            &f,
            "FROM debian:bookworm-slim\nCOPY . /srv/\nRUN ls /srv\nCMD [\"cat\", \"/srv/hello.txt\"]\n",
        ))
        .await
        .expect("submitted");
    let working = bus.cloud_build(0).await;
    assert_eq!((working.build_id.as_str(), working.status), (handle.build_id.as_str(), BuildStatus::Working));
    assert_eq!(working.build.deployment_tag(), Some("0190a4c3104a7e21b6d3f08c5a92e4b7"));
    let done = bus.cloud_build(1).await;
    assert_eq!(done.status, BuildStatus::Success, "{:?}", done.build.status_detail);
    assert!(done.build.finish_time.is_some());
    assert_eq!(done.build.images, vec![format!("devgem.local/u1/hello:{}", handle.build_id)]);
    let log: Vec<String> = builder.log(&handle.build_id).expect("log").into_iter().map(|l| l.text).collect();
    assert!(log.contains(&"hello.txt".to_owned()), "{log:?}");
    assert!(!log.contains(&"secret.txt".to_owned()), "the .dockerignore given with the request applies: {log:?}");
    let image = LocalImage::load(&builder.executor().build_dir(&handle.build_id)).expect("image saved");
    assert_eq!(image.start_command(), "cat /srv/hello.txt");
    assert!(matches!(builder.cancel(&handle.build_id).await, Err(BuilderError::NotFound(_))), "a finished build");
}

#[tokio::test]
async fn the_port_reports_failures_and_cancels_as_cloud_build_does() {
    use devgem_common::events::cloud_build::BuildStatus;
    use devgem_common::ports::builder::Builder as _;
    let f = fixture();
    let bus = Arc::new(crate::test_support::RecordingBus::default());
    let executor = Arc::new(fixture_executor(&f));
    let builder = port_on(&f, executor, bus.clone());
    builder.submit(request(&f, "FROM debian:bookworm-slim\nRUN exit 4\nCMD [\"true\"]\n")).await.expect("submitted");
    let failed = bus.cloud_build(1).await;
    assert_eq!(failed.status, BuildStatus::Failure);
    let info = failed.build.failure_info.expect("failure info");
    assert_eq!(info.kind.as_deref(), Some("USER_BUILD_STEP"));
    assert!(info.detail.is_some_and(|d| d.contains("step 2/3 (line 2)") && d.contains("status 4")));
    let log = {
        use devgem_common::ports::blobs::BlobsExt;
        let blobs = crate::local::LocalBlobs::open(&f.data.join("blobs")).expect("blobs");
        let key = devgem_common::ports::builder::log_blob_key(&failed.build_id).expect("key");
        String::from_utf8(blobs.get_bytes(&key).await.expect("the whole log is in Blobs").to_vec()).expect("text")
    };
    assert!(log.contains("Step 2/3 (line 2): RUN exit 4"), "{log}");

    let handle = builder
        .submit(request(&f, "FROM debian:bookworm-slim\nRUN sleep 300\nCMD [\"true\"]\n"))
        .await
        .expect("submitted");
    bus.cloud_build(2).await;
    for _ in 0..200 {
        if builder.log(&handle.build_id).is_ok_and(|l| l.iter().any(|l| l.text.contains("RUN sleep"))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    builder.cancel(&handle.build_id).await.expect("cancel a running build");
    let cancelled = tokio::time::timeout(Duration::from_secs(3), bus.cloud_build(3)).await.expect("ends at once");
    assert_eq!((cancelled.build_id, cancelled.status), (handle.build_id, BuildStatus::Cancelled));
}
