//! Helpers shared by the end-to-end test binary (`e2e/`) and the benchmarks (`benches/`).

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Copies a directory tree of regular files (fixtures into a scratch directory).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").filter_map(Result::ok) {
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Runs git in `dir` with a fixed identity; returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Serves the bare repositories under `root` over git's smart HTTP protocol, answering each
/// request after `delay` (to hold a fetch in flight).
pub async fn serve_git(root: PathBuf, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let root = root.clone();
        async move {
            tokio::time::sleep(delay).await;
            cgi(&root, method, uri, headers, body).await
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn cgi(
    root: &Path,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git http-backend");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let out = child.wait_with_output().await.expect("output");
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else { return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new(), out.stdout) };
    let mut status = StatusCode::OK;
    let mut response_headers = HeaderMap::new();
    for line in String::from_utf8_lossy(&out.stdout[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("status") {
            let code = value.trim().split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) =
            (axum::http::HeaderName::try_from(name.trim()), axum::http::HeaderValue::try_from(value.trim()))
        {
            response_headers.insert(n, v);
        }
    }
    (status, response_headers, out.stdout[end + sep..].to_vec())
}

/// A repository served over http from loopback.
#[derive(Debug)]
pub struct Served {
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub first_commit: String,
}

/// A repository `app.git` with two commits on `main`, a tag `v1` on the first, a branch `next`.
/// A repository `app.git` served over http: `base` (if any) plus a file `VERSION` holding `1` in
/// the first commit (tagged `v1`), `3` on branch `next`, and `2` on `main`, the default branch.
pub async fn served_repo(base: Option<&Path>, delay: Duration) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    match base {
        Some(base) => copy_dir(base, &work),
        None => std::fs::create_dir_all(&work).expect("mkdir"),
    }
    git(&work, &["init", "--quiet"]);
    std::fs::write(work.join("VERSION"), "1\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    let first_commit = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "v1"]);
    git(&work, &["checkout", "--quiet", "-b", "next"]);
    std::fs::write(work.join("VERSION"), "3\n").expect("write");
    git(&work, &["commit", "--quiet", "-am", "three"]);
    git(&work, &["checkout", "--quiet", "main"]);
    std::fs::write(work.join("VERSION"), "2\n").expect("write");
    git(&work, &["commit", "--quiet", "-am", "two"]);
    let root = dir.path().join("srv");
    std::fs::create_dir_all(&root).expect("mkdir");
    git(dir.path(), &["clone", "--quiet", "--bare", "work", "srv/app.git"]);
    let addr = serve_git(root, delay).await;
    Served { _dir: dir, addr, first_commit }
}

/// The embedded adapters on `dir` as the benchmarks use them: local paths allowed, a 5 s startup
/// timeout, the secrets key inside `dir`.
pub fn bench_embedded(dir: &Path) -> devgem_cli::embedded::Embedded {
    let options = devgem_cli::embedded::EmbeddedOptions {
        policy: devgem_infra::source::SourcePolicy { allow_local_paths: true, allow_hosts: Vec::new() },
        startup_timeout: Duration::from_secs(5),
        secrets_key: dir.join("secrets.key"),
    };
    devgem_cli::embedded::Embedded::open_with(&dir.join("data"), options).expect("embedded adapters")
}
