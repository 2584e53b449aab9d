//! A read-only, bounded view of a repository: the file list (heavy and generated directories
//! skipped, symlinks never followed) and text reads within byte budgets. Nothing here executes
//! anything from the repository.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// How much of a repository the analyzer looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files listed at most; the rest is ignored (with a warning).
    pub max_files: usize,
    /// Larger files are not read.
    pub max_file_bytes: u64,
    /// Bytes read in total across all files.
    pub max_total_bytes: u64,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_files: 50_000, max_file_bytes: 1024 * 1024, max_total_bytes: 64 * 1024 * 1024, max_depth: 12 }
    }
}

/// Directories that hold dependencies, build output or tool state, never the app's source.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "node_modules",
    "bower_components",
    "vendor",
    "target",
    "dist",
    "out",
    ".next",
    ".nuxt",
    ".output",
    ".svelte-kit",
    ".astro",
    ".angular",
    ".turbo",
    ".cache",
    ".parcel-cache",
    ".venv",
    "venv",
    "__pycache__",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".gradle",
    ".idea",
    ".vscode",
    "obj",
    "_build",
    "deps",
    "coverage",
    ".terraform",
    ".bundle",
    "tmp",
    "log",
    "storage",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the repository root, `/`-separated.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The repository as the analyzer sees it.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    files: Vec<FileEntry>,
    paths: BTreeSet<String>,
    limits: Limits,
    bytes_read: Cell<u64>,
    cache: RefCell<HashMap<String, Option<Rc<str>>>>,
    warnings: RefCell<Vec<String>>,
}

impl Repo {
    /// Lists the repository's files within `limits`.
    pub fn scan(root: &Path, limits: Limits) -> Result<Self, RepoError> {
        let meta = std::fs::metadata(root).map_err(|source| RepoError::Io { path: root.to_owned(), source })?;
        if !meta.is_dir() {
            return Err(RepoError::NotADirectory(root.to_owned()));
        }
        let canonical_root = root.canonicalize().map_err(|source| RepoError::Io { path: root.to_owned(), source })?;
        let mut repo = Self {
            root: root.to_owned(),
            files: Vec::new(),
            paths: BTreeSet::new(),
            limits,
            bytes_read: Cell::new(0),
            cache: RefCell::new(HashMap::new()),
            warnings: RefCell::new(Vec::new()),
        };
        let mut skipped_links = Vec::new();
        let mut truncated = false;
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_owned(), String::new(), 0)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                repo.warn(format!("could not read directory {}", if rel.is_empty() { "." } else { &rel }));
                continue;
            };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            if entries.iter().any(|e| e.file_name() == "pyvenv.cfg") && !rel.is_empty() {
                continue; // a virtualenv under another name
            }
            for entry in entries {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    repo.warn(format!(
                        "skipped a file whose name is not UTF-8 in {}",
                        if rel.is_empty() { "." } else { &rel }
                    ));
                    continue;
                };
                let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_symlink() {
                    let target = std::fs::canonicalize(entry.path());
                    let outside = target.as_ref().map(|t| !t.starts_with(&canonical_root)).unwrap_or(true);
                    if outside {
                        skipped_links.push(child_rel);
                    }
                    continue;
                }
                if kind.is_dir() {
                    if SKIPPED_DIRS.contains(&name.as_str()) || depth + 1 > limits.max_depth {
                        continue;
                    }
                    stack.push((entry.path(), child_rel, depth + 1));
                } else if kind.is_file() {
                    if repo.files.len() >= limits.max_files {
                        truncated = true;
                        break;
                    }
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    repo.paths.insert(child_rel.clone());
                    repo.files.push(FileEntry { path: child_rel, size });
                }
            }
            if truncated {
                break;
            }
        }
        repo.files.sort_by(|a, b| a.path.cmp(&b.path));
        if truncated {
            repo.warn(format!("the repository has more than {} files; only the first were analyzed", limits.max_files));
        }
        if !skipped_links.is_empty() {
            skipped_links.sort();
            repo.warn(format!(
                "skipped symlinks pointing outside the repository (never followed): {}",
                skipped_links.join(", ")
            ));
        }
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.paths.contains(rel)
    }

    /// Whether any file lies under `dir` (relative; `""` is the root).
    pub fn has_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.paths.range(prefix.clone()..).next().is_some_and(|p| p.starts_with(&prefix))
    }

    /// Files under `dir` (`""` for all), in path order.
    pub fn files_under<'s>(&'s self, dir: &str) -> impl Iterator<Item = &'s FileEntry> + use<'s> {
        let dir = dir.to_owned();
        self.files
            .iter()
            .filter(move |f| dir.is_empty() || f.path.starts_with(&dir) && f.path[dir.len()..].starts_with('/'))
    }

    /// The text of a file, if it exists, is not binary and fits the budgets. Non-UTF-8 bytes are
    /// replaced (with a warning). Reads are cached.
    pub fn read(&self, rel: &str) -> Option<Rc<str>> {
        if let Some(cached) = self.cache.borrow().get(rel) {
            return cached.clone();
        }
        let text = self.read_uncached(rel);
        self.cache.borrow_mut().insert(rel.to_owned(), text.clone());
        text
    }

    fn read_uncached(&self, rel: &str) -> Option<Rc<str>> {
        let entry = self.files.binary_search_by(|f| f.path.as_str().cmp(rel)).ok().map(|i| &self.files[i])?;
        if entry.size > self.limits.max_file_bytes {
            self.warn(format!("{rel} is larger than {} bytes; not read", self.limits.max_file_bytes));
            return None;
        }
        if self.bytes_read.get() + entry.size > self.limits.max_total_bytes {
            self.warn_once(format!(
                "read budget of {} bytes reached; some files were not read",
                self.limits.max_total_bytes
            ));
            return None;
        }
        let bytes = std::fs::read(self.root.join(rel)).ok()?;
        self.bytes_read.set(self.bytes_read.get() + bytes.len() as u64);
        if bytes.iter().take(8192).any(|b| *b == 0) {
            return None; // binary
        }
        match String::from_utf8(bytes) {
            Ok(text) => Some(Rc::from(text)),
            Err(e) => {
                self.warn(format!("{rel} is not valid UTF-8; read with replacement characters"));
                Some(Rc::from(String::from_utf8_lossy(e.as_bytes()).into_owned()))
            }
        }
    }

    pub fn warn(&self, message: String) {
        self.warnings.borrow_mut().push(message);
    }

    fn warn_once(&self, message: String) {
        if !self.warnings.borrow().contains(&message) {
            self.warn(message);
        }
    }

    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.warnings.borrow_mut())
    }
}

/// Joins a service directory and a relative path (`"."` is the root).
pub fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() || dir == "." { rel.to_owned() } else { format!("{dir}/{rel}") }
}

/// Folders of tests, CI and test data, at any depth.
const TEST_AND_CI_DIRS: &[&str] = &[
    "test",
    "tests",
    "__tests__",
    "spec",
    "specs",
    "e2e",
    "cypress",
    "playwright",
    ".github",
    ".gitlab",
    ".circleci",
    "fixtures",
    "testdata",
    ".storybook",
];

/// Folders of samples, scripts and tools: not the app when they sit at the top of a service.
const NON_APP_TOP_DIRS: &[&str] = &["scripts", "examples", "example", "benchmarks", "bench", "tools"];

/// Whether a path is test, CI, documentation or dev-tooling code, whose env vars and entry points
/// are not the app's.
pub fn is_non_runtime(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('/').collect();
    let (file, dirs) = segments.split_last().map(|(f, d)| (*f, d)).unwrap_or(("", &[]));
    // Test and CI folders at any depth; folders of samples, docs and scripts only at the top of
    // the service (`com/example/...` is a Java package, not an example).
    let top = dirs.first().copied();
    if dirs.iter().any(|d| TEST_AND_CI_DIRS.contains(d) || matches!(*d, "migrations" | "stories"))
        || top.is_some_and(|d| NON_APP_TOP_DIRS.contains(&d) || matches!(d, "docs" | "doc"))
    {
        return true;
    }
    // Development and test settings (`config/dev.exs`, `config/environments/test.rb`).
    let stem = file.split('.').next().unwrap_or(file);
    if dirs.iter().any(|d| *d == "config" || *d == "environments") && matches!(stem, "dev" | "test" | "development") {
        return true;
    }
    file.starts_with("test_")
        || file == "tests.py"
        || file == "conftest.py"
        || file.ends_with("_test.py")
        || file.ends_with("_test.go")
        || file.ends_with("_spec.rb")
        || file.ends_with("_test.rb")
        || [".test.", ".spec.", ".stories."].iter().any(|m| file.contains(m))
        || is_tooling_config(file)
        || file == "gulpfile.js"
        || file == "gruntfile.js"
        || file == "noxfile.py"
        || file == "fabfile.py"
        || file == "setup.py"
}

/// Folders that never hold a deployable service (a docs site can be one, so `docs` is not here).
pub fn is_never_a_service(dir: &str) -> bool {
    let lower = dir.to_ascii_lowercase();
    lower.split('/').any(|d| TEST_AND_CI_DIRS.contains(&d))
        || lower.split('/').next().is_some_and(|d| NON_APP_TOP_DIRS.contains(&d))
}

/// Configuration of test runners, linters and bundlers (`vite.config.ts`, `jest.config.js`), as
/// opposed to framework configuration the app loads at run time (`nuxt.config.ts`,
/// `next.config.js`).
fn is_tooling_config(file: &str) -> bool {
    const TOOLS: &[&str] = &[
        "jest",
        "vitest",
        "vite",
        "playwright",
        "cypress",
        "eslint",
        "prettier",
        "webpack",
        "babel",
        "postcss",
        "tailwind",
        "tsup",
        "rollup",
        "karma",
        "commitlint",
        "lint-staged",
        "stylelint",
        "esbuild",
        "turbo",
        "metro",
    ];
    let Some((stem, _ext)) = file.rsplit_once('.') else { return false };
    stem.strip_suffix(".config").is_some_and(|tool| TOOLS.contains(&tool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_runtime_paths() {
        assert!(!is_non_runtime("nuxt.config.ts"), "framework config is loaded at run time");
        assert!(!is_non_runtime("next.config.js"));
        for p in ["tests/test_app.py", "src/app.test.ts", ".github/workflows/ci.yml", "cmd/x_test.go", "jest.config.js"]
        {
            assert!(is_non_runtime(p), "{p}");
        }
        for p in [
            "app.py",
            "src/server.ts",
            "cmd/server/main.go",
            "config/settings.py",
            "src/main/java/com/example/App.java",
        ] {
            assert!(!is_non_runtime(p), "{p}");
        }
    }

    #[test]
    fn scan_skips_heavy_dirs_and_caps_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("node_modules/x")).expect("mkdir");
        std::fs::write(dir.path().join("node_modules/x/index.js"), "x").expect("write");
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i:02}.txt")), "hello").expect("write");
        }
        let repo = Repo::scan(dir.path(), Limits { max_files: 10, ..Limits::default() }).expect("scan");
        assert_eq!(repo.files().len(), 10);
        assert!(!repo.exists("node_modules/x/index.js"));
        assert!(repo.take_warnings().iter().any(|w| w.contains("more than 10 files")));
    }

    #[test]
    fn reads_are_bounded_and_lossy() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("big.txt"), vec![b'a'; 2048]).expect("write");
        std::fs::write(dir.path().join("latin1.py"), b"# caf\xe9\nimport os\n").expect("write");
        std::fs::write(dir.path().join("blob.bin"), b"\x00\x01\x02").expect("write");
        let repo = Repo::scan(dir.path(), Limits { max_file_bytes: 1024, ..Limits::default() }).expect("scan");
        assert!(repo.read("big.txt").is_none());
        assert!(repo.read("latin1.py").expect("readable").contains("import os"));
        assert!(repo.read("blob.bin").is_none(), "binary files are not text");
        let warnings = repo.take_warnings();
        assert!(warnings.iter().any(|w| w.contains("latin1.py is not valid UTF-8")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("big.txt is larger")), "{warnings:?}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_outside_are_reported_and_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc", dir.path().join("etc-link")).expect("symlink");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("host")).expect("symlink");
        std::fs::write(dir.path().join("app.py"), "print(1)").expect("write");
        let repo = Repo::scan(dir.path(), Limits::default()).expect("scan");
        assert_eq!(repo.files().iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["app.py"]);
        assert!(repo.read("host").is_none());
        assert!(repo.take_warnings().iter().any(|w| w.contains("etc-link") && w.contains("never followed")));
    }
}
