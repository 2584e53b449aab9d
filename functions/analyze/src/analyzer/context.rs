//! What a detector works with: the repository seen from one service's directory, and where it
//! records evidence, warnings and system packages.

use super::model::{Evidence, Language};
use super::repo::{Repo, is_non_runtime, join};
use regex::Regex;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::LazyLock;

#[derive(Debug)]
pub struct Ctx<'a> {
    pub repo: &'a Repo,
    /// The service directory, `""` for the repository root.
    dir: String,
    /// Other services' directories inside this one, whose files are not this service's.
    excluded: Vec<String>,
    pub evidence: Vec<Evidence>,
    pub system_packages: BTreeSet<String>,
    /// Problems that make the result a guess (a manifest that does not parse).
    pub doubts: usize,
}

impl<'a> Ctx<'a> {
    pub fn new(repo: &'a Repo, app_dir: &str, excluded: Vec<String>) -> Self {
        let dir = if app_dir == "." { String::new() } else { app_dir.to_owned() };
        Self { repo, dir, excluded, evidence: Vec::new(), system_packages: BTreeSet::new(), doubts: 0 }
    }

    /// The directories above the service, nearest first, ending with the root (`""`).
    pub fn ancestors(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dir = self.dir.as_str();
        while let Some((parent, _)) = dir.rsplit_once('/') {
            out.push(parent.to_owned());
            dir = parent;
        }
        if !self.dir.is_empty() {
            out.push(String::new());
        }
        out
    }

    /// A service-relative path as a repository-relative one.
    pub fn path(&self, rel: &str) -> String {
        join(&self.dir, rel)
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.repo.exists(&self.path(rel))
    }

    pub fn read(&self, rel: &str) -> Option<Rc<str>> {
        self.repo.read(&self.path(rel))
    }

    fn relative<'f>(&self, path: &'f str) -> &'f str {
        if self.dir.is_empty() { path } else { &path[self.dir.len() + 1..] }
    }

    fn owned(&self, path: &str) -> bool {
        !self.excluded.iter().any(|e| path.starts_with(e.as_str()) && path[e.len()..].starts_with('/'))
    }

    /// Names of the files directly in the service directory.
    pub fn top_level_files(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.repo.files_under(&self.dir).map(|f| self.relative(&f.path)).filter(|rel| !rel.contains('/'))
    }

    /// Service-relative paths of the service's own runtime files (no tests, CI, tooling).
    pub fn runtime_files(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.repo
            .files_under(&self.dir)
            .filter(|f| self.owned(&f.path))
            .map(|f| self.relative(&f.path))
            .filter(|rel| !is_non_runtime(rel))
    }

    /// Records why a field has its value. `rel` is service-relative (`""` for the directory).
    pub fn note(&mut self, field: &str, rel: &str, line: Option<usize>, reason: &str) {
        let path = if rel.is_empty() {
            if self.dir.is_empty() { ".".to_owned() } else { self.dir.clone() }
        } else {
            self.path(rel)
        };
        self.evidence.push(Evidence { field: field.to_owned(), path, line, reason: reason.to_owned() });
    }

    pub fn warn(&self, message: String) {
        self.repo.warn(message);
    }

    /// Warns about something that makes this service's result a guess, lowering its confidence.
    pub fn doubt(&mut self, message: String) {
        self.doubts += 1;
        self.repo.warn(message);
    }

    pub fn add_system_packages(&mut self, ecosystem: Language, dependency: &str) {
        for row in super::system_packages::lookup(ecosystem, dependency) {
            self.system_packages.extend(row.packages.iter().map(|p| (*p).to_owned()));
            self.evidence.push(Evidence {
                field: "system_packages".to_owned(),
                path: if self.dir.is_empty() { ".".to_owned() } else { self.dir.clone() },
                line: None,
                reason: format!("{}: {}", row.dependency, row.reason),
            });
        }
    }
}

/// A match of a pattern in the service's runtime files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Service-relative file.
    pub file: String,
    pub line: usize,
    /// The first capture group that matched, if the pattern has groups.
    pub value: Option<String>,
}

impl Ctx<'_> {
    /// The first match of `pattern` in the runtime files with one of `extensions`, in path order.
    pub fn find(&self, extensions: &[&str], pattern: &Regex) -> Option<Found> {
        let files: Vec<&str> = self.runtime_files().filter(|f| extensions.iter().any(|e| f.ends_with(e))).collect();
        files.into_iter().find_map(|file| {
            let text = self.read(file)?;
            let caps = pattern.captures(&text)?;
            let start = caps.get(0).map_or(0, |m| m.start());
            Some(Found {
                file: file.to_owned(),
                line: line_at(&text, start),
                value: caps.iter().skip(1).flatten().next().map(|m| m.as_str().to_owned()),
            })
        })
    }
}

/// The 1-based line of a byte offset in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The first version number in a constraint: `>=3.10,<4` → `3.10`, `^20.1` → `20.1`, `v18` → `18`.
pub fn first_version(constraint: &str) -> Option<String> {
    static VERSION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+(?:\.\d+){0,2}").expect("valid regex"));
    VERSION.find(constraint).map(|m| m.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_constraints() {
        assert_eq!(first_version(">=3.10,<4").as_deref(), Some("3.10"));
        assert_eq!(first_version("^3.11").as_deref(), Some("3.11"));
        assert_eq!(first_version("v20.11.1").as_deref(), Some("20.11.1"));
        assert_eq!(first_version("lts/*"), None);
    }
}
