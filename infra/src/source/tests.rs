//! The source adapter on local directories and the address guard. Fetching from a real git
//! server (`git http-backend` on loopback) is tested end to end in `tests/e2e/source.rs`.

use super::*;
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
