//! The source adapter against a real git smart-HTTP server on loopback (`git http-backend`):
//! default branch, branch, tag and commit, and the errors a user can act on.

use devgem_common::ports::source::{Snapshot, Source, SourceError, SourceLimits, SourceLocation, SourceSpec};
use devgem_e2e::served_repo;
use devgem_infra::source::{GitSource, SourcePolicy};
use std::time::Duration;

fn loopback_allowed() -> GitSource {
    GitSource::new(SourcePolicy { allow_local_paths: false, allow_hosts: vec!["127.0.0.1".into()] })
}

async fn fetch(
    source: &GitSource,
    url: String,
    git_ref: Option<&str>,
) -> (tempfile::TempDir, Result<Snapshot, SourceError>) {
    let dest = tempfile::tempdir().expect("tempdir");
    let spec = SourceSpec { location: SourceLocation::Git { url }, git_ref: git_ref.map(str::to_owned) };
    let limits = SourceLimits { max_bytes: 10 * 1024 * 1024, timeout: Duration::from_secs(30) };
    let result = source.fetch(&spec, &dest.path().join("src"), limits).await;
    (dest, result)
}

#[tokio::test]
async fn fetches_the_default_branch_a_branch_a_tag_and_a_commit() {
    let served = served_repo(None, Duration::ZERO).await;
    let source = loopback_allowed();
    let url = format!("http://127.0.0.1:{}/app.git", served.addr.port());
    for (git_ref, version) in
        [(None, "2"), (Some("next"), "3"), (Some("v1"), "1"), (Some(served.first_commit.as_str()), "1")]
    {
        let (dest, result) = fetch(&source, url.clone(), git_ref).await;
        let snapshot = result.unwrap_or_else(|e| panic!("{git_ref:?}: {e}"));
        let text = std::fs::read_to_string(dest.path().join("src/VERSION")).expect("checked out");
        assert_eq!(text, format!("{version}\n"), "{git_ref:?}");
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
