//! The source adapter against a real git smart-HTTP server on loopback (`git http-backend` behind
//! a small CGI bridge), local directories, and the address guard.

use super::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use std::net::SocketAddr;
use std::time::Duration;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Serves the bare repositories under `root` over git's smart HTTP protocol.
async fn serve_git(root: PathBuf) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let root = root.clone();
        async move { cgi(&root, method, uri, headers, body).await }
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

struct Served {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    first_commit: String,
}

/// A repository `app.git` with two commits on `main`, a tag `v1` on the first, a branch `next`.
async fn served_repo() -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "--quiet"]);
    std::fs::write(work.join("app.py"), "version = 1\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    let first_commit = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "v1"]);
    git(&work, &["checkout", "--quiet", "-b", "next"]);
    std::fs::write(work.join("app.py"), "version = 3\n").expect("write");
    git(&work, &["commit", "--quiet", "-am", "three"]);
    git(&work, &["checkout", "--quiet", "main"]);
    std::fs::write(work.join("app.py"), "version = 2\n").expect("write");
    git(&work, &["commit", "--quiet", "-am", "two"]);
    let root = dir.path().join("srv");
    std::fs::create_dir_all(&root).expect("mkdir");
    git(dir.path(), &["clone", "--quiet", "--bare", "work", "srv/app.git"]);
    let addr = serve_git(root).await;
    Served { _dir: dir, addr, first_commit }
}

fn loopback_allowed() -> GitSource {
    GitSource::new(SourcePolicy { allow_local_paths: false, allow_hosts: vec!["127.0.0.1".into()] })
}

fn limits() -> SourceLimits {
    SourceLimits { max_bytes: 10 * 1024 * 1024, timeout: Duration::from_secs(30) }
}

async fn fetch(
    source: &GitSource,
    url: String,
    git_ref: Option<&str>,
) -> (tempfile::TempDir, Result<Snapshot, SourceError>) {
    let dest = tempfile::tempdir().expect("tempdir");
    let spec = SourceSpec { location: SourceLocation::Git { url }, git_ref: git_ref.map(str::to_owned) };
    let result = source.fetch(&spec, &dest.path().join("src"), limits()).await;
    (dest, result)
}

#[test]
fn only_public_addresses_pass_the_guard() {
    for private in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "fd00:ec2::254",
        "224.0.0.1",
        "255.255.255.255",
    ] {
        assert!(!is_public(private.parse().expect("ip")), "{private} must be refused");
    }
    for public in ["140.82.112.3", "8.8.8.8", "2606:4700::1111", "::ffff:140.82.112.3"] {
        assert!(is_public(public.parse().expect("ip")), "{public} is public");
    }
}

#[test]
fn urls_must_be_https_without_credentials_unless_the_host_is_allowed() {
    let strict = SourcePolicy::default();
    assert_eq!(parse_url("https://github.com/o/r", &strict).expect("ok").port, 443);
    assert!(matches!(parse_url("http://github.com/o/r", &strict), Err(SourceError::Refused(_))));
    assert!(matches!(parse_url("git@github.com:o/r.git", &strict), Err(SourceError::Refused(_))));
    assert!(matches!(parse_url("file:///etc", &strict), Err(SourceError::Refused(_))));
    let err = parse_url("https://user:token@github.com/o/r", &strict).expect_err("credentials");
    assert!(err.to_string().contains("credentials"), "{err}");
    let allowed = SourcePolicy { allow_local_paths: false, allow_hosts: vec!["127.0.0.1".into()] };
    let url = parse_url("http://127.0.0.1:8123/app.git", &allowed).expect("allowed host over http");
    assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 8123));
}

#[tokio::test]
async fn internal_addresses_are_refused_with_the_reason() {
    let strict = GitSource::new(SourcePolicy::default());
    for url in
        ["https://127.0.0.1/app.git", "https://localhost/app.git", "https://[::1]/app.git", "https://169.254.169.254/x"]
    {
        let (_d, result) = fetch(&strict, url.to_owned(), None).await;
        match result {
            Err(SourceError::Refused(why)) => assert!(why.contains("private or internal address"), "{url}: {why}"),
            other => panic!("{url} must be refused, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn fetches_the_default_branch_a_branch_a_tag_and_a_commit() {
    let served = served_repo().await;
    let source = loopback_allowed();
    let url = format!("http://127.0.0.1:{}/app.git", served.addr.port());
    for (git_ref, version) in
        [(None, "2"), (Some("next"), "3"), (Some("v1"), "1"), (Some(served.first_commit.as_str()), "1")]
    {
        let (dest, result) = fetch(&source, url.clone(), git_ref).await;
        let snapshot = result.unwrap_or_else(|e| panic!("{git_ref:?}: {e}"));
        let text = std::fs::read_to_string(dest.path().join("src/app.py")).expect("checked out");
        assert_eq!(text, format!("version = {version}\n"), "{git_ref:?}");
        assert!(!dest.path().join("src/.git").exists(), "the snapshot has no .git");
        assert_eq!(snapshot.commit.as_deref().map(str::len), Some(40));
        assert!(snapshot.bytes > 0);
    }
    let (_d, missing) = fetch(&source, url.clone(), Some("no-such-branch")).await;
    assert!(matches!(missing, Err(SourceError::NotFound(ref m)) if m.contains("no-such-branch")), "{missing:?}");
    let (_d, no_repo) = fetch(&source, format!("http://127.0.0.1:{}/other.git", served.addr.port()), None).await;
    assert!(matches!(no_repo, Err(SourceError::NotFound(_))), "{no_repo:?}");
    let (_d, option) = fetch(&source, url, Some("--upload-pack=touch /tmp/x")).await;
    assert!(matches!(option, Err(SourceError::Refused(_))), "{option:?}");
}

#[tokio::test]
async fn local_directories_copy_what_git_would_track_and_only_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("node_modules/left-pad")).expect("mkdir");
    std::fs::write(repo.join("node_modules/left-pad/index.js"), "x").expect("write");
    std::fs::write(repo.join(".gitignore"), "node_modules\n").expect("write");
    std::fs::write(repo.join("server.js"), "tracked").expect("write");
    git(&repo, &["init", "--quiet"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "c"]);
    std::fs::write(repo.join("new.js"), "untracked, not ignored").expect("write");
    let spec = SourceSpec { location: SourceLocation::Local { path: repo.clone() }, git_ref: None };

    let refused = GitSource::new(SourcePolicy::default()).fetch(&spec, &dir.path().join("a"), limits()).await;
    assert!(matches!(refused, Err(SourceError::Refused(_))), "{refused:?}");

    let source = GitSource::new(SourcePolicy { allow_local_paths: true, allow_hosts: Vec::new() });
    let snapshot = source.fetch(&spec, &dir.path().join("b"), limits()).await.expect("copied");
    let out = dir.path().join("b");
    assert!(out.join("server.js").is_file() && out.join("new.js").is_file());
    assert!(!out.join("node_modules").exists(), "ignored files stay behind");
    assert!(snapshot.commit.is_some());

    std::fs::remove_dir_all(repo.join(".git")).expect("rm .git");
    let plain = source.fetch(&spec, &dir.path().join("c"), limits()).await.expect("copied");
    assert!(dir.path().join("c/node_modules/left-pad/index.js").is_file(), "without git, everything is copied");
    assert_eq!(plain.commit, None);

    let tiny = SourceLimits { max_bytes: 4, timeout: Duration::from_secs(5) };
    let too_large = source.fetch(&spec, &dir.path().join("d"), tiny).await;
    assert!(matches!(too_large, Err(SourceError::TooLarge(_))), "{too_large:?}");
    let missing = SourceSpec { location: SourceLocation::Local { path: dir.path().join("nope") }, git_ref: None };
    assert!(matches!(source.fetch(&missing, &dir.path().join("e"), limits()).await, Err(SourceError::NotFound(_))));
}
