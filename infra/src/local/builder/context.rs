//! The build context as COPY sees it: `.dockerignore` rules, source patterns, and staging the
//! matched files into the build's own directory. Nothing here follows a symlink or reads a path
//! outside the context: a source that would escape is an error, a symlink is copied as a link.

use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// One glob segment matcher: `*`, `?` and `[...]` classes, as Go's `filepath.Match` (Docker's).
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star_p, mut star_n) = (None, 0);
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = Some(p);
                    star_n = n;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = class_matches(&pattern[p..], name[n]) {
                        if matched {
                            p += len;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star_p {
            Some(sp) => {
                p = sp + 1;
                star_n += 1;
                n = star_n;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `[abc]`, `[a-z]`, `[^x]`: whether `c` matches and how long the class is.
fn class_matches(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some(b'^' | b'!'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        let lo = pattern[i];
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    None
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Splits a context-relative path into clean segments; `None` when it climbs out of the context.
pub fn clean_relative(path: &str) -> Option<Vec<String>> {
    let mut parts: Vec<String> = Vec::new();
    for component in Path::new(path.trim_start_matches('/')).components() {
        match component {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                parts.pop()?;
            }
        }
    }
    Some(parts)
}

/// Does a pattern (split in segments, `**` allowed) match a path's first segments exactly?
fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| path_matches(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((name, path_rest)) => {
                segment_matches(first.as_bytes(), name.as_bytes()) && path_matches(rest, path_rest)
            }
            None => false,
        },
    }
}

/// The `.dockerignore` rules of a context: the last matching rule decides, and a rule that
/// matches a directory excludes everything under it.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (negated, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let segments = clean_relative(pattern)?;
                (!segments.is_empty()).then_some((negated, segments))
            })
            .collect();
        Self { rules }
    }

    /// Whether `relative` (segments from the context root) is left out of the context.
    pub fn excludes(&self, relative: &[&str]) -> bool {
        let mut excluded = false;
        for (negated, pattern) in &self.rules {
            let hit = (1..=relative.len()).any(|len| path_matches(pattern, &relative[..len]));
            if hit {
                excluded = !negated;
            }
        }
        excluded
    }
}

/// Why a COPY source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0} is outside the build context; COPY can only read files inside the repository")]
    Escapes(String),
    #[error("{0} was not found in the build context (check the path, and that .dockerignore does not exclude it)")]
    Missing(String),
    #[error("no file in the build context matches {0}")]
    NoMatch(String),
    #[error("reading the build context at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io { path: path.to_owned(), source }
}

/// A matched source: its path relative to the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub relative: Vec<String>,
    pub is_dir: bool,
}

/// Resolves COPY sources against the context: wildcards expand, ignored paths do not exist.
/// A pattern without wildcards must match; wildcard patterns may match nothing as long as the
/// instruction as a whole matches something.
pub fn resolve_sources(context: &Path, ignore: &Ignore, sources: &[String]) -> Result<Vec<Matched>, ContextError> {
    let mut matched = Vec::new();
    for source in sources {
        let segments = clean_relative(source).ok_or_else(|| ContextError::Escapes(source.clone()))?;
        if !has_wildcard(source) {
            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
            let path = context.join(segments.join("/"));
            let meta = fs::symlink_metadata(&path).map_err(|_| ContextError::Missing(source.clone()))?;
            if !refs.is_empty() && ignore.excludes(&refs) {
                return Err(ContextError::Missing(source.clone()));
            }
            matched.push(Matched { relative: segments, is_dir: meta.is_dir() });
            continue;
        }
        expand(context, ignore, &segments, &mut Vec::new(), &mut matched)?;
    }
    if matched.is_empty() {
        return Err(ContextError::NoMatch(sources.join(" ")));
    }
    Ok(matched)
}

fn expand(
    context: &Path,
    ignore: &Ignore,
    pattern: &[String],
    prefix: &mut Vec<String>,
    out: &mut Vec<Matched>,
) -> Result<(), ContextError> {
    let Some((first, rest)) = pattern.split_first() else {
        return Ok(());
    };
    let dir = context.join(prefix.join("/"));
    if !has_wildcard(first) {
        prefix.push(first.clone());
        let path = context.join(prefix.join("/"));
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if rest.is_empty() {
                out.push(Matched { relative: prefix.clone(), is_dir: meta.is_dir() });
            } else if meta.is_dir() {
                expand(context, ignore, rest, prefix, out)?;
            }
        }
        prefix.pop();
        return Ok(());
    }
    let mut names: Vec<(String, bool)> = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
        let entry = entry.map_err(io_error(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map_err(io_error(&dir))?.is_dir();
        if segment_matches(first.as_bytes(), name.as_bytes()) {
            names.push((name, is_dir));
        }
    }
    names.sort();
    for (name, is_dir) in names {
        prefix.push(name);
        let refs: Vec<&str> = prefix.iter().map(String::as_str).collect();
        if !ignore.excludes(&refs) {
            if rest.is_empty() {
                out.push(Matched { relative: prefix.clone(), is_dir });
            } else if is_dir {
                expand(context, ignore, rest, prefix, out)?;
            }
        }
        prefix.pop();
    }
    Ok(())
}

/// Copies a matched source into `dest` (a fresh directory of the build), leaving out what
/// `.dockerignore` excludes, and returns a digest of what was copied (names, modes, contents,
/// link targets) for the layer cache. Symlinks are copied as links, never followed.
pub fn stage(context: &Path, ignore: &Ignore, source: &Matched, dest: &Path) -> Result<String, ContextError> {
    let mut hasher = Sha256::new();
    let from = context.join(source.relative.join("/"));
    let mut relative: Vec<String> = source.relative.clone();
    copy_entry(&from, dest, ignore, &mut relative, &mut hasher, true)?;
    Ok(hex(&hasher.finalize()))
}

fn copy_entry(
    from: &Path,
    to: &Path,
    ignore: &Ignore,
    relative: &mut Vec<String>,
    hasher: &mut Sha256,
    top: bool,
) -> Result<(), ContextError> {
    let refs: Vec<&str> = relative.iter().map(String::as_str).collect();
    if !top && ignore.excludes(&refs) {
        return Ok(());
    }
    let meta = fs::symlink_metadata(from).map_err(io_error(from))?;
    hasher.update(relative.join("/").as_bytes());
    hasher.update([0]);
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(from).map_err(io_error(from))?;
        hasher.update(b"link:");
        hasher.update(target.as_os_str().as_encoded_bytes());
        std::os::unix::fs::symlink(&target, to).map_err(io_error(to))?;
    } else if file_type.is_dir() {
        hasher.update(b"dir");
        fs::create_dir(to).map_err(io_error(to))?;
        let mut entries: Vec<_> = fs::read_dir(from)
            .map_err(io_error(from))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_error(from))?;
        entries.sort();
        for name in entries {
            relative.push(name.to_string_lossy().into_owned());
            copy_entry(&from.join(&name), &to.join(&name), ignore, relative, hasher, false)?;
            relative.pop();
        }
    } else if file_type.is_file() {
        use std::os::unix::fs::PermissionsExt;
        hasher.update(meta.permissions().mode().to_le_bytes());
        let bytes = fs::read(from).map_err(io_error(from))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        fs::write(to, &bytes).map_err(io_error(to))?;
        fs::set_permissions(to, meta.permissions()).map_err(io_error(to))?;
    }
    // Sockets, fifos and devices are not part of a build context.
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(rules: &str, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        Ignore::parse(rules).excludes(&segments)
    }

    #[test]
    fn segments_match_like_go_filepath_match() {
        assert!(segment_matches(b"package*.json", b"package.json"));
        assert!(segment_matches(b"package*.json", b"package-lock.json"));
        assert!(!segment_matches(b"package*.json", b"packages.jsonx"));
        assert!(segment_matches(b"go.sum*", b"go.sum"));
        assert!(segment_matches(b"?.txt", b"a.txt"));
        assert!(!segment_matches(b"?.txt", b"ab.txt"));
        assert!(segment_matches(b"[a-c]x", b"bx"));
        assert!(!segment_matches(b"[^a-c]x", b"bx"));
        assert!(segment_matches(b"*", b".env"));
    }

    #[test]
    fn dockerignore_rules_exclude_directories_and_the_last_match_wins() {
        let rules = "# deps\nnode_modules\n**/*.pyc\n.git\n*.md\n!README.md\n/dist/\n";
        assert!(ignored(rules, "node_modules"));
        assert!(ignored(rules, "node_modules/x/index.js"));
        assert!(ignored(rules, "app/__pycache__/a.pyc"));
        assert!(ignored(rules, "a.pyc"));
        assert!(ignored(rules, "CHANGES.md"));
        assert!(!ignored(rules, "README.md"));
        assert!(ignored(rules, "dist/bundle.js"));
        assert!(!ignored(rules, "src/node_modules_helper.js"));
        assert!(!ignored(rules, "docs/guide.md"), "*.md is anchored at the context root");
    }

    #[test]
    fn sources_that_climb_out_of_the_context_are_refused() {
        assert_eq!(clean_relative("./a/../b"), Some(vec!["b".to_owned()]));
        assert_eq!(clean_relative("/etc/x"), Some(vec!["etc".to_owned(), "x".to_owned()]));
        assert_eq!(clean_relative("../secret"), None);
        assert_eq!(clean_relative("a/../../secret"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = resolve_sources(dir.path(), &Ignore::default(), &["../../etc/passwd".to_owned()]);
        assert!(matches!(err, Err(ContextError::Escapes(_))), "{err:?}");
    }

    #[test]
    fn wildcards_expand_and_may_match_nothing_when_another_source_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["go.mod", "package.json", "package-lock.json", "main.go"] {
            fs::write(dir.path().join(f), f).expect("write");
        }
        let ignore = Ignore::default();
        let found = resolve_sources(dir.path(), &ignore, &["go.mod".into(), "go.sum*".into()]).expect("resolve");
        assert_eq!(found, vec![Matched { relative: vec!["go.mod".into()], is_dir: false }]);
        let found = resolve_sources(dir.path(), &ignore, &["package*.json".into()]).expect("resolve");
        assert_eq!(found.len(), 2);
        assert!(matches!(resolve_sources(dir.path(), &ignore, &["*.lock".into()]), Err(ContextError::NoMatch(_))));
        assert!(matches!(resolve_sources(dir.path(), &ignore, &["nope.txt".into()]), Err(ContextError::Missing(_))));
    }

    #[test]
    fn staging_leaves_out_ignored_files_keeps_links_and_hashes_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("node_modules/x")).expect("mkdir");
        fs::write(ctx.join("node_modules/x/i.js"), "x").expect("write");
        fs::write(ctx.join("app.js"), "one").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).expect("symlink");
        let ignore = Ignore::parse("node_modules\n");
        let all = Matched { relative: vec![], is_dir: true };
        let first = stage(&ctx, &ignore, &all, &dir.path().join("s1")).expect("stage");
        assert!(dir.path().join("s1/app.js").is_file());
        assert!(!dir.path().join("s1/node_modules").exists());
        let link = fs::read_link(dir.path().join("s1/link")).expect("copied as a link");
        assert_eq!(link, PathBuf::from("/etc/passwd"));
        let again = stage(&ctx, &ignore, &all, &dir.path().join("s2")).expect("stage");
        assert_eq!(first, again, "same content, same digest");
        fs::write(ctx.join("app.js"), "two").expect("write");
        let changed = stage(&ctx, &ignore, &all, &dir.path().join("s3")).expect("stage");
        assert_ne!(first, changed);
    }
}
