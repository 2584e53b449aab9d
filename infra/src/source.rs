//! The Source port's adapter on both paths: git repositories over https (shallow, at a branch,
//! tag or commit) behind the SSRF guard of DESIGN.md, and local directories on the embedded
//! default. The guard resolves the host itself, refuses any private, loopback, link-local, CGNAT
//! or metadata address, and then pins git's connection to the address it checked
//! (`http.curloptResolve`) with redirects off, so what git connects to is what was checked.

use async_trait::async_trait;
use devgem_common::ports::source::{Snapshot, Source, SourceError, SourceLimits, SourceLocation, SourceSpec};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// What the source adapter accepts.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    /// Local directories (the embedded default, when the server listens on loopback).
    pub allow_local_paths: bool,
    /// Hosts exempt from the address guard, which may also use plain http
    /// (`DEVGEM_SOURCE_ALLOW_HOSTS`, comma-separated; tests serve git from loopback).
    pub allow_hosts: Vec<String>,
}

impl SourcePolicy {
    /// Reads `DEVGEM_SOURCE_ALLOW_HOSTS`.
    pub fn from_env(allow_local_paths: bool) -> Self {
        let allow_hosts = std::env::var("DEVGEM_SOURCE_ALLOW_HOSTS")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Self { allow_local_paths, allow_hosts }
    }
}

/// Fetches repositories with the `git` command and copies local directories.
#[derive(Debug, Clone)]
pub struct GitSource {
    policy: SourcePolicy,
}

/// Whether an address is one a public repository host could have. Everything else (loopback,
/// private, link-local and the metadata server, CGNAT, multicast, unspecified, documentation and
/// benchmark ranges, IPv6 unique-local, and IPv4 mapped into IPv6) is refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254)) // AWS metadata
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, the metadata server included
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

/// An https (or, for allowed hosts, http) git URL, split for the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GitUrl {
    scheme: String,
    host: String,
    port: u16,
}

fn parse_url(url: &str, policy: &SourcePolicy) -> Result<GitUrl, SourceError> {
    let refused = |why: &str| SourceError::Refused(format!("{url}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| refused("not a URL; use https://host/owner/repo"))?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(refused("credentials in the URL are not accepted; DevGem fetches public repositories"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| refused("malformed host"))?;
            (host.to_owned(), after.strip_prefix(':').map(str::to_owned))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
            None => (authority.to_owned(), None),
        },
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err(refused("no host"));
    }
    let allowed = policy.allow_hosts.contains(&host);
    let default_port = match (scheme.as_str(), allowed) {
        ("https", _) => 443,
        ("http", true) => 80,
        _ => return Err(refused("only https git URLs are accepted")),
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| refused("malformed port"))?,
        None => default_port,
    };
    Ok(GitUrl { scheme, host, port })
}

impl GitSource {
    pub fn new(policy: SourcePolicy) -> Self {
        Self { policy }
    }

    /// The address git may connect to: checked against the guard unless the host is allowed.
    async fn vet(&self, url: &str) -> Result<(GitUrl, Option<IpAddr>), SourceError> {
        let parsed = parse_url(url, &self.policy)?;
        if self.policy.allow_hosts.contains(&parsed.host) {
            return Ok((parsed, None));
        }
        let addresses: Vec<IpAddr> = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
            .await
            .map_err(|e| SourceError::NotFound(format!("cannot resolve {}: {e}", parsed.host)))?
            .map(|a| a.ip())
            .collect();
        if let Some(bad) = addresses.iter().find(|ip| !is_public(**ip)) {
            return Err(SourceError::Refused(format!(
                "{} resolves to {bad}, a private or internal address; DevGem only fetches from public hosts",
                parsed.host
            )));
        }
        let first = addresses
            .first()
            .copied()
            .ok_or_else(|| SourceError::NotFound(format!("{} has no address", parsed.host)))?;
        Ok((parsed, Some(first)))
    }

    async fn fetch_git(
        &self,
        url: &str,
        git_ref: Option<&str>,
        dest: &Path,
        limits: SourceLimits,
    ) -> Result<Snapshot, SourceError> {
        let (parsed, pinned) = self.vet(url).await?;
        if let Some(r) = git_ref
            && (r.starts_with('-') || r.contains("..") || r.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SourceError::Refused(format!("{r:?} is not a branch, tag or commit name")));
        }
        let mut config = vec![
            "protocol.allow=never".to_owned(),
            format!("protocol.{}.allow=always", parsed.scheme),
            "http.followRedirects=false".to_owned(),
            "credential.helper=".to_owned(),
            "core.hooksPath=/dev/null".to_owned(),
            "advice.detachedHead=false".to_owned(),
        ];
        if let Some(ip) = pinned {
            let address = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            config.push(format!("http.curloptResolve={}:{}:{address}", parsed.host, parsed.port));
        }
        let git = |args: &[&str]| {
            let mut command = Command::new("git");
            for c in &config {
                command.arg("-c").arg(c);
            }
            command
                .args(args)
                .current_dir(dest)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                // No user or system configuration: no credential helpers, no URL rewrites.
                .env("HOME", dest)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_TERMINAL_PROMPT", "0")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            command
        };
        let wanted = git_ref.unwrap_or("HEAD");
        let steps: [Vec<&str>; 4] = [
            vec!["init", "--quiet"],
            vec!["remote", "add", "origin", url],
            vec!["fetch", "--quiet", "--depth", "1", "--no-tags", "origin", wanted],
            vec!["checkout", "--quiet", "FETCH_HEAD"],
        ];
        let run = async {
            for args in &steps {
                let out = git(args).output().await.map_err(|e| SourceError::Failed(format!("cannot run git: {e}")))?;
                if !out.status.success() {
                    return Err(git_error(url, wanted, &String::from_utf8_lossy(&out.stderr)));
                }
            }
            let out = git(&["rev-parse", "HEAD"]).output().await.map_err(|e| SourceError::Failed(e.to_string()))?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let commit =
            tokio::time::timeout(limits.timeout, run).await.map_err(|_| SourceError::Timeout(limits.timeout))??;
        let _ = tokio::fs::remove_dir_all(dest.join(".git")).await;
        let bytes = dir_size(dest, limits.max_bytes)?;
        Ok(Snapshot { dir: dest.to_owned(), commit: Some(commit), bytes })
    }

    async fn copy_local(&self, path: &Path, dest: &Path, limits: SourceLimits) -> Result<Snapshot, SourceError> {
        if !self.policy.allow_local_paths {
            return Err(SourceError::Refused(
                "local paths are accepted only by a DevGem on your own machine (devgem up on loopback); use an https git URL".into(),
            ));
        }
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|_| SourceError::NotFound(format!("{} does not exist", path.display())))?;
        if !meta.is_dir() {
            return Err(SourceError::NotFound(format!("{} is not a directory", path.display())));
        }
        let files = listed_files(path).await;
        let (source, dest_owned) = (path.to_owned(), dest.to_owned());
        let max = limits.max_bytes;
        let copy = tokio::task::spawn_blocking(move || copy_tree(&source, &dest_owned, files.as_deref(), max));
        let bytes = tokio::time::timeout(limits.timeout, copy)
            .await
            .map_err(|_| SourceError::Timeout(limits.timeout))?
            .map_err(|e| SourceError::Failed(e.to_string()))??;
        let commit = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(path)
            .stderr(Stdio::null())
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        Ok(Snapshot { dir: dest.to_owned(), commit, bytes })
    }
}

/// What a git error means for the user.
fn git_error(url: &str, wanted: &str, stderr: &str) -> SourceError {
    let tail: String = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
    if stderr.contains("couldn't find remote ref")
        || stderr.contains("not our ref")
        || stderr.contains("unadvertised object")
    {
        SourceError::NotFound(format!("{url} has no branch, tag or commit {wanted:?}"))
    } else if stderr.contains("not found")
        || stderr.contains("404")
        || stderr.contains("does not appear to be a git repository")
    {
        SourceError::NotFound(format!("{url} is not a public git repository ({tail})"))
    } else if stderr.contains("redirect") {
        SourceError::Refused(format!("{url} redirects elsewhere; give the repository's final URL"))
    } else {
        SourceError::Failed(format!("git could not fetch {url}: {tail}"))
    }
}

/// In a git work tree: the tracked files and the untracked ones that are not ignored, which is
/// what a user means by "my source" (no `node_modules`, no build output). `None` otherwise.
async fn listed_files(path: &Path) -> Option<Vec<PathBuf>> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(path)
        .stderr(Stdio::null())
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        out.stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect(),
    )
}

fn too_large(max: u64) -> SourceError {
    SourceError::TooLarge(format!(
        "more than {} MiB; deploy a smaller directory or exclude build output",
        max / (1024 * 1024)
    ))
}

/// Copies `files` (relative paths) or, without a list, the whole tree but `.git`; symlinks are
/// copied as links and never followed.
fn copy_tree(source: &Path, dest: &Path, files: Option<&[PathBuf]>, max: u64) -> Result<u64, SourceError> {
    let io = |p: &Path, e: std::io::Error| SourceError::Failed(format!("copying {}: {e}", p.display()));
    let mut total = 0u64;
    let copy_one = |relative: &Path, total: &mut u64| -> Result<(), SourceError> {
        let from = source.join(relative);
        let to = dest.join(relative);
        let meta = std::fs::symlink_metadata(&from).map_err(|e| io(&from, e))?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| io(&from, e))?;
            std::os::unix::fs::symlink(target, &to).map_err(|e| io(&to, e))?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > max {
                return Err(too_large(max));
            }
            std::fs::copy(&from, &to).map_err(|e| io(&from, e))?;
        } else if meta.is_dir() {
            std::fs::create_dir_all(&to).map_err(|e| io(&to, e))?;
        }
        Ok(())
    };
    match files {
        Some(files) => {
            for file in files {
                // A deleted-but-tracked file is listed yet absent: skip it.
                if std::fs::symlink_metadata(source.join(file)).is_ok() {
                    copy_one(file, &mut total)?;
                }
            }
        }
        None => {
            let mut stack = vec![PathBuf::new()];
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(source.join(&dir)).map_err(|e| io(&source.join(&dir), e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| io(&source.join(&dir), e))?;
                    let relative = dir.join(entry.file_name());
                    if entry.file_name() == ".git" {
                        continue;
                    }
                    if entry.file_type().map_err(|e| io(&relative, e))?.is_dir() {
                        std::fs::create_dir_all(dest.join(&relative)).map_err(|e| io(&relative, e))?;
                        stack.push(relative);
                    } else {
                        copy_one(&relative, &mut total)?;
                    }
                }
            }
        }
    }
    Ok(total)
}

fn dir_size(dir: &Path, max: u64) -> Result<u64, SourceError> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| SourceError::Failed(e.to_string()))?.flatten() {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    if total > max {
        return Err(too_large(max));
    }
    Ok(total)
}

#[async_trait]
impl Source for GitSource {
    async fn fetch(&self, spec: &SourceSpec, dest: &Path, limits: SourceLimits) -> Result<Snapshot, SourceError> {
        tokio::fs::create_dir_all(dest).await.map_err(|e| SourceError::Failed(format!("{}: {e}", dest.display())))?;
        match &spec.location {
            SourceLocation::Git { url } => self.fetch_git(url, spec.git_ref.as_deref(), dest, limits).await,
            SourceLocation::Local { path } => self.copy_local(path, dest, limits).await,
        }
    }
}

#[cfg(test)]
mod tests;
