//! `apt-get` in RUN lines. The local builder never installs system packages on the host: it
//! checks that the packages a RUN line asks for are installed, names the missing ones, and runs
//! only the rest of the line (`pip install ...` after `apt-get install ... &&`).

/// A RUN shell command split into what runs and the packages the apt part asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSplit {
    /// The command without its apt parts; `None` when nothing is left to run.
    pub remaining: Option<String>,
    pub packages: Vec<String>,
    /// The apt parts as written, for the log.
    pub skipped: Vec<String>,
}

/// Splits a shell command at top-level `&&` and `;` (outside quotes, parentheses and `$(...)`).
fn split_top_level(command: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let (mut single, mut double, mut depth) = (false, false, 0i32);
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                continue;
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '(' if !single && !double => depth += 1,
            ')' if !single && !double => depth -= 1,
            '&' if !single && !double && depth == 0 && chars.peek() == Some(&'&') => {
                chars.next();
                parts.push(std::mem::take(&mut current));
                continue;
            }
            ';' if !single && !double && depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect()
}

/// The words of a segment after leading `VAR=value` assignments.
fn command_words(segment: &str) -> Vec<&str> {
    segment.split_whitespace().skip_while(|w| w.contains('=') && !w.starts_with('-')).collect()
}

fn is_apt(segment: &str) -> bool {
    let words = command_words(segment);
    match words.first() {
        Some(&("apt-get" | "apt" | "aptitude")) => true,
        // The usual cleanup after an install: apt lists and caches.
        Some(&"rm") => words[1..]
            .iter()
            .filter(|w| !w.starts_with('-'))
            .all(|w| w.starts_with("/var/lib/apt/lists") || w.starts_with("/var/cache/apt") || w.starts_with("/tmp/")),
        _ => false,
    }
}

fn packages_of(segment: &str) -> Vec<String> {
    let words = command_words(segment);
    let Some(install) = words.iter().position(|w| *w == "install") else { return Vec::new() };
    words[install + 1..]
        .iter()
        .filter(|w| !w.starts_with('-') && !w.contains('$'))
        // `pkg=1.2-3` pins a version; the host has whatever version it has.
        .map(|w| w.split('=').next().unwrap_or(w).trim_matches(['"', '\'']).to_owned())
        .filter(|w| !w.is_empty() && *w != "\\")
        .collect()
}

/// Splits off the apt parts of a RUN line; `None` when the line has none.
pub fn split(command: &str) -> Option<AptSplit> {
    if !command.contains("apt") {
        return None;
    }
    let segments = split_top_level(command);
    if !segments.iter().any(|s| is_apt(s) && command_words(s).first().is_some_and(|w| w.starts_with("apt"))) {
        return None;
    }
    let (apt, rest): (Vec<String>, Vec<String>) = segments.into_iter().partition(|s| is_apt(s));
    let packages = apt.iter().flat_map(|s| packages_of(s)).collect();
    Some(AptSplit { remaining: (!rest.is_empty()).then(|| rest.join(" && ")), packages, skipped: apt })
}

/// Which of `packages` are not installed on the host (`dpkg-query`); `None` when the host has no
/// dpkg to ask.
pub async fn missing(packages: &[String]) -> Option<Vec<String>> {
    if packages.is_empty() {
        return Some(Vec::new());
    }
    let out = tokio::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\\n"])
        .args(packages)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> =
        text.lines().filter_map(|l| l.strip_suffix(" installed")).map(|p| p.split(':').next().unwrap_or(p)).collect();
    Some(packages.iter().filter(|p| !installed.contains(&p.as_str())).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_parts_are_split_off_and_the_rest_still_runs() {
        let line = "apt-get update && apt-get install -y --no-install-recommends libpq5 ffmpeg=7:5.1 && rm -rf /var/lib/apt/lists/* && pip install -r requirements.txt";
        let split = split(line).expect("has apt");
        assert_eq!(split.packages, vec!["libpq5", "ffmpeg"]);
        assert_eq!(split.remaining.as_deref(), Some("pip install -r requirements.txt"));
        assert_eq!(split.skipped.len(), 3);
        let only = split_only("DEBIAN_FRONTEND=noninteractive apt-get install -y curl; apt-get clean");
        assert_eq!(only.packages, vec!["curl"]);
        assert_eq!(only.remaining, None);
        assert_eq!(split_top_level("echo 'a && b' && (x; y) ; z"), vec!["echo 'a && b'", "(x; y)", "z"]);
        assert!(super::split("pip install aptly && echo rm").is_none());
        assert!(super::split("npm ci").is_none());
    }

    fn split_only(line: &str) -> AptSplit {
        split(line).expect("has apt")
    }

    #[tokio::test]
    async fn installed_packages_are_not_reported_missing() {
        let missing = missing(&["coreutils".to_owned(), "devgem-no-such-package".to_owned()]).await.expect("dpkg");
        assert_eq!(missing, vec!["devgem-no-such-package"]);
    }
}
