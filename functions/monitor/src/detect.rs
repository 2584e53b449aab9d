//! What one log entry says about a revision's health: nothing (most lines), or a signal of one
//! alert kind. Pure and cheap: every line a deployed service writes passes through here, and
//! only signals reach the Store.

use devgem_common::events::AlertKind;
use devgem_common::events::log_entry::{LogEntry, Severity};
use regex::{Regex, RegexSet};
use std::sync::LazyLock;

/// A line that counts towards an incident of `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub kind: AlertKind,
    pub line: String,
}

fn set(patterns: &[&str]) -> RegexSet {
    RegexSet::new(patterns).unwrap_or_else(|e| panic!("a detector pattern does not compile: {e}"))
}

/// The container stopped: Cloud Run's system lines and the local runtime's.
static EXITS: LazyLock<RegexSet> = LazyLock::new(|| {
    set(&[
        r"^Container exited with",
        r"^Container called exit\(",
        r"(?i)the user-provided container failed to start",
        r"(?i)Default STARTUP TCP probe failed",
        r"(?i)Application exec likely failed",
        r"(?i)Container terminated on signal",
    ])
});

/// Killed for memory: Cloud Run's line, the kernel's SIGKILL, runtimes' own out-of-memory deaths.
static MEMORY: LazyLock<RegexSet> = LazyLock::new(|| {
    set(&[
        r"(?i)Memory limit of \d+ ?\w+ exceeded",
        r"(?i)\bOOMKilled\b",
        r"signal: 9 \(SIGKILL\)",
        r"(?i)Container terminated on signal 9",
        r"JavaScript heap out of memory",
        r"^MemoryError\b",
        r"^fatal error: runtime: out of memory",
        r"java\.lang\.OutOfMemoryError",
        r"memory allocation of \d+ bytes failed",
    ])
});

/// The first line of an uncaught exception or panic, per language.
static EXCEPTIONS: LazyLock<RegexSet> = LazyLock::new(|| {
    set(&[
        // Python
        r"^Traceback \(most recent call last\):",
        // Node: the fatal-exit banner, uncaught errors, unhandled rejections
        r"^Node\.js v\d+",
        r"^Uncaught \w*Error",
        r"UnhandledPromiseRejection",
        r"^\s*throw \w+; // Unhandled 'error' event",
        // Go
        r"^panic: ",
        r"^fatal error: ",
        // Java and the JVM
        r#"^Exception in thread ".*" [\w.$]+"#,
        r"^Caused by: [\w.$]+(Exception|Error)",
        // Rust
        r"^thread '.*' panicked at",
        // Ruby, PHP, .NET
        r"^[\w/.-]+\.rb:\d+:in `.*': .* \(\w+(::\w+)*\)$",
        r"^PHP Fatal error: ",
        r"^Unhandled exception\. ",
    ])
});

/// The closing line of a traceback that names the exception, to show as the likely cause.
static EXCEPTION_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt|Exit))(?::\s*(.*))?$")
        .unwrap_or_else(|e| panic!("the exception pattern does not compile: {e}"))
});

/// The signal `entry` carries, if any.
pub fn classify(entry: &LogEntry) -> Option<Signal> {
    if let Some(status) = entry.http_request.as_ref().and_then(|r| r.status)
        && status >= 500
    {
        let request = entry.http_request.as_ref();
        let method = request.and_then(|r| r.request_method.as_deref()).unwrap_or("");
        let url = request.and_then(|r| r.request_url.as_deref()).unwrap_or("");
        return Some(Signal {
            kind: AlertKind::ErrorRate,
            line: format!("{method} {url} → {status}").trim().to_owned(),
        });
    }
    let text = entry.message()?;
    let line = text.lines().next().unwrap_or("").trim_end();
    let kind = if MEMORY.is_match(line) {
        AlertKind::MemoryLimit
    } else if EXITS.is_match(line) {
        AlertKind::CrashLoop
    } else if EXCEPTIONS.is_match(line) || (entry.severity >= Severity::Error && EXCEPTIONS.is_match(text)) {
        AlertKind::UncaughtException
    } else {
        return None;
    };
    Some(Signal { kind, line: line.chars().take(500).collect() })
}

/// Whether a line is worth keeping as context for an alert (stderr and errors).
pub fn is_error_line(entry: &LogEntry) -> bool {
    entry.severity >= Severity::Error || entry.http_request.as_ref().and_then(|r| r.status).is_some_and(|s| s >= 500)
}

/// The likely cause, from the kind and the lines seen, in plain words.
pub fn likely_cause(kind: AlertKind, lines: &[String]) -> Option<String> {
    let exception = lines.iter().rev().find_map(|line| {
        let captures = EXCEPTION_NAME.captures(line.trim())?;
        let name = captures.get(1)?.as_str();
        let message = captures.get(2).map(|m| m.as_str().trim()).filter(|m| !m.is_empty());
        Some(match message {
            Some(message) => format!("`{name}: {message}`"),
            None => format!("`{name}`"),
        })
    });
    match kind {
        AlertKind::MemoryLimit => Some("the app needs more memory than its limit (512 MiB on Cloud Run)".into()),
        AlertKind::UncaughtException => exception.map(|e| format!("an uncaught {e} in the app's code")),
        AlertKind::CrashLoop => Some(match exception {
            Some(e) => format!("the process exits after {e}"),
            None => "the process exits soon after it starts".into(),
        }),
        AlertKind::ErrorRate => exception.map(|e| format!("requests fail with {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: serde_json::Value) -> LogEntry {
        serde_json::from_value(json).expect("a LogEntry")
    }

    fn line(text: &str, severity: &str) -> LogEntry {
        entry(serde_json::json!({
            "logName": "projects/p/logs/run.googleapis.com%2Fstderr",
            "resource": {"type": "cloud_run_revision", "labels": {"service_name": "web", "revision_name": "web-00002-abc"}},
            "severity": severity,
            "textPayload": text,
        }))
    }

    fn kind(text: &str) -> Option<AlertKind> {
        classify(&line(text, "ERROR")).map(|s| s.kind)
    }

    #[test]
    fn each_language_uncaught_exception_is_recognised_by_its_first_line() {
        for text in [
            "Traceback (most recent call last):",
            "Node.js v20.20.2",
            "Uncaught TypeError: Cannot read properties of undefined (reading 'id')",
            "panic: runtime error: index out of range [3] with length 3",
            "Exception in thread \"main\" java.lang.IllegalStateException: boom",
            "thread 'main' panicked at src/main.rs:10:5:",
            "thread 'tokio-runtime-worker' panicked at src/handler.rs:42:9:",
            "PHP Fatal error:  Uncaught Exception: boom in /var/www/html/index.php:3",
            "Unhandled exception. System.InvalidOperationException: boom",
        ] {
            assert_eq!(kind(text), Some(AlertKind::UncaughtException), "{text}");
        }
    }

    #[test]
    fn exits_and_memory_kills_are_their_own_kinds() {
        assert_eq!(
            kind("Container exited with exit status: 1; DevGem starts it again in 1s"),
            Some(AlertKind::CrashLoop)
        );
        assert_eq!(kind("Container called exit(1)."), Some(AlertKind::CrashLoop));
        assert_eq!(
            kind("Default STARTUP TCP probe failed 1 time consecutively for container \"web-1\" on port 8080."),
            Some(AlertKind::CrashLoop)
        );
        assert_eq!(
            kind("Memory limit of 512 MiB exceeded with 530 MiB used. Consider increasing the memory limit."),
            Some(AlertKind::MemoryLimit)
        );
        assert_eq!(
            kind("Container exited with signal: 9 (SIGKILL); DevGem starts it again in 2s"),
            Some(AlertKind::MemoryLimit)
        );
        assert_eq!(
            kind("FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory"),
            Some(AlertKind::MemoryLimit)
        );
    }

    #[test]
    fn ordinary_lines_and_handled_warnings_are_not_signals() {
        for text in [
            "Listening on http://0.0.0.0:8080",
            "GET / 200 3ms",
            "WARNING: This is a development server. Do not use it in a production deployment.",
            "ValueError: boom",
            "    at Server.<anonymous> (/app/server.js:8:11)",
        ] {
            assert_eq!(kind(text), None, "{text}");
        }
    }

    #[test]
    fn a_request_log_with_a_5xx_status_is_an_error_rate_signal() {
        let request = |status: u16| {
            entry(serde_json::json!({
                "logName": "projects/p/logs/run.googleapis.com%2Frequests",
                "resource": {"type": "cloud_run_revision", "labels": {"service_name": "web", "revision_name": "web-1"}},
                "severity": if status >= 500 { "ERROR" } else { "INFO" },
                "httpRequest": {"requestMethod": "GET", "requestUrl": "https://web.run.app/crash", "status": status},
            }))
        };
        let signal = classify(&request(503)).expect("a 503 is a signal");
        assert_eq!(signal, Signal { kind: AlertKind::ErrorRate, line: "GET https://web.run.app/crash → 503".into() });
        assert_eq!(classify(&request(404)), None);
    }

    #[test]
    fn the_likely_cause_names_the_exception_the_traceback_ends_with() {
        let lines: Vec<String> =
            ["Traceback (most recent call last):", "  File \"/app/app.py\", line 9, in crash", "ValueError: boom"]
                .map(String::from)
                .to_vec();
        assert_eq!(
            likely_cause(AlertKind::UncaughtException, &lines).as_deref(),
            Some("an uncaught `ValueError: boom` in the app's code")
        );
        assert_eq!(
            likely_cause(AlertKind::CrashLoop, &["ModuleNotFoundError: No module named 'flask'".into()]).as_deref(),
            Some("the process exits after `ModuleNotFoundError: No module named 'flask'`")
        );
    }
}
