//! Repairs written into a Dockerfile's text: a system package installed in the final stage, or
//! another start command. Everything else in the file stays as it was written (comments,
//! continuation lines), so the user can read exactly what DevGem changed.

/// An instruction's physical lines: `first..=last` (0-based), and its keyword in upper case.
struct Span {
    first: usize,
    last: usize,
    keyword: String,
}

fn spans(lines: &[&str]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        if open.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let (first, keyword) = open.take().unwrap_or_else(|| {
            let keyword = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            (i, keyword)
        });
        if line.ends_with('\\') || (line.starts_with('#') && first != i) {
            open = Some((first, keyword));
        } else {
            out.push(Span { first, last: i, keyword });
        }
    }
    if let Some((first, keyword)) = open {
        out.push(Span { first, last: lines.len().saturating_sub(1), keyword });
    }
    out
}

fn join(lines: Vec<String>, trailing_newline: bool) -> String {
    let mut text = lines.join("\n");
    if trailing_newline {
        text.push('\n');
    }
    text
}

/// The Dockerfile with `package` installed as [`with_packages`] does; `None` when an
/// `apt-get install` line names it already (adding it again would change nothing) or there is
/// no `FROM`.
pub fn with_package(text: &str, package: &str) -> Option<String> {
    if text.lines().any(|l| l.contains("apt-get install") && l.contains(package)) {
        return None;
    }
    with_packages(text, &[package.to_owned()])
}

/// The Dockerfile with `packages` installed (Debian, `--no-install-recommends`, lists removed)
/// right after the final stage's `FROM`, before any `USER` switches away from root. `None`
/// when it has no `FROM`.
pub fn with_packages(text: &str, packages: &[String]) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let from = spans(&lines).into_iter().rfind(|s| s.keyword == "FROM")?;
    let install = format!(
        "RUN apt-get update && apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*",
        packages.join(" ")
    );
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    out.insert(from.last + 1, install);
    Some(join(out, text.ends_with('\n') || text.is_empty()))
}

/// The Dockerfile with the final stage starting `command` (shell form, so `$PORT` expands):
/// its `CMD` and `ENTRYPOINT` lines give way to one `CMD` at the end. `None` when it has no
/// `FROM`.
pub fn with_start_command(text: &str, command: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let all = spans(&lines);
    let final_from = all.iter().rfind(|s| s.keyword == "FROM")?.first;
    let dropped: Vec<(usize, usize)> = all
        .iter()
        .filter(|s| s.first > final_from && matches!(s.keyword.as_str(), "CMD" | "ENTRYPOINT"))
        .map(|s| (s.first, s.last))
        .collect();
    let mut out: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !dropped.iter().any(|(first, last)| (*first..=*last).contains(i)))
        .map(|(_, l)| (*l).to_owned())
        .collect();
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.push(format!("CMD {command}"));
    Some(join(out, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    const MULTI_STAGE: &str = "\
FROM golang:1.22 AS build
WORKDIR /src
COPY . .
RUN go build -o /app .

# the runtime image
FROM debian:bookworm-slim
COPY --from=build /app /app
USER nobody
ENTRYPOINT [\"/app\"]
CMD [\"--port\", \"8080\"]
";

    #[test]
    fn packages_go_into_the_final_stage_before_the_user_switch() {
        let text = with_packages(MULTI_STAGE, &["libpq5".into(), "libgl1".into()]).expect("edited");
        let parsed = parse(&text).expect("still a Dockerfile");
        assert_eq!(parsed.stages.len(), 2);
        let lines: Vec<&str> = text.lines().collect();
        let install = lines.iter().position(|l| l.contains("install -y --no-install-recommends libpq5 libgl1"));
        let from = lines.iter().position(|l| l.starts_with("FROM debian"));
        let user = lines.iter().position(|l| l.starts_with("USER"));
        assert_eq!(install, from.map(|f| f + 1), "{text}");
        assert!(install < user);
        assert!(text.contains("# the runtime image") && text.ends_with('\n'), "the rest is kept");
        assert_eq!(with_packages("# nothing\n", &["x".into()]), None);
        assert_eq!(with_package(&text, "libpq5"), None, "installed already");
        assert!(with_package(&text, "zlib1g").is_some_and(|t| t.contains("--no-install-recommends zlib1g")));
    }

    #[test]
    fn the_start_command_replaces_cmd_and_entrypoint_of_the_final_stage_only() {
        let text = with_start_command(MULTI_STAGE, "/app --listen 0.0.0.0:$PORT").expect("edited");
        let parsed = parse(&text).expect("still a Dockerfile");
        assert_eq!(
            parsed.final_stage().and_then(|s| s.start_command()).as_deref(),
            Some("/app --listen 0.0.0.0:$PORT")
        );
        assert!(!text.contains("ENTRYPOINT"), "{text}");
        let continued = "FROM python:3.12-slim\nCMD python \\\n  main.py\nEXPOSE 8080\n";
        let text = with_start_command(continued, "python app.py").expect("edited");
        assert_eq!(text, "FROM python:3.12-slim\nEXPOSE 8080\nCMD python app.py\n");
    }
}
