//! Start-failure repairs, each told to the user with what changed and why (at most
//! [`MAX_REPAIRS`](devgem_common::model::deployment::MAX_REPAIRS) per deployment):
//! - the app listens on another port than `$PORT` and says where: the revision is started again
//!   routed to that port ([`diagnose`]);
//! - it misses a shared library DevGem knows the Debian package of, or its start command names a
//!   file, module or program that is not there while the analysis found another one: the plan's
//!   Dockerfile is changed and the image built again ([`image_repair`]).
//!
//! What no change can fix (a variable without a value) is explained instead.

use devgem_common::dockerfile::edit::{with_package, with_start_command};
use devgem_common::model::deployment::DeploymentPlan;
use regex::Regex;
use std::sync::LazyLock;

/// A change to the revision that should let it start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub port: u16,
    /// What the user is told, in one sentence.
    pub reason: String,
}

static LISTENING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:listen(?:ing)?|running|serving|started|bound|server)\b[^\n|]*?(?:(?:https?://)?(?P<host>localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]*\]|0\.0\.0\.0)?:(?P<port>\d{2,5})\b|\bport\s+(?P<bare>\d{2,5})\b)",
    )
    .unwrap_or_else(|e| unreachable!("invalid built-in pattern: {e}"))
});

static MISSING_ENV: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"KeyError: '(?P<py>[A-Z][A-Z0-9_]*)'|(?i:environment variable|env var)\S*\s+["'`]?(?P<named>[A-Z][A-Z0-9_]{2,})["'`]?\s+(?i:is not set|is missing|is required|not set|must be set)|(?i:missing|required)\s+(?i:environment variable|env var)s?:?\s+["'`]?(?P<after>[A-Z][A-Z0-9_]{2,})"#,
    )
    .unwrap_or_else(|e| unreachable!("invalid built-in pattern: {e}"))
});

/// The env variable a start failure says is missing, if it says so: nothing DevGem can repair
/// by itself, but the user can, given the name.
pub fn missing_env(failure: &str) -> Option<String> {
    let captures = MISSING_ENV.captures(failure)?;
    ["py", "named", "after"].iter().find_map(|g| captures.name(g)).map(|m| m.as_str().to_owned())
}

static MISSING_LIBRARY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?P<lib>lib[A-Za-z0-9_+.-]*?\.so(?:\.[0-9]+)*): cannot open shared object file")
        .unwrap_or_else(|e| unreachable!("invalid built-in pattern: {e}"))
});

static MISSING_PROGRAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:exec: |sh: \d+: |/bin/sh: \d+: )?(?P<program>[A-Za-z0-9_.+-]+): (?:not found|No such file or directory)",
    )
    .unwrap_or_else(|e| unreachable!("invalid built-in pattern: {e}"))
});

/// Debian packages of the shared libraries apps most often miss.
const LIBRARY_PACKAGES: &[(&str, &str)] = &[
    ("libGL.so.1", "libgl1"),
    ("libglib-2.0.so.0", "libglib2.0-0"),
    ("libgthread-2.0.so.0", "libglib2.0-0"),
    ("libpq.so.5", "libpq5"),
    ("libssl.so.3", "libssl3"),
    ("libcrypto.so.3", "libssl3"),
    ("libffi.so.8", "libffi8"),
    ("libjpeg.so.62", "libjpeg62-turbo"),
    ("libz.so.1", "zlib1g"),
    ("libgomp.so.1", "libgomp1"),
    ("libsqlite3.so.0", "libsqlite3-0"),
    ("libxml2.so.2", "libxml2"),
    ("libcairo.so.2", "libcairo2"),
    ("libmagic.so.1", "libmagic1"),
    ("libSM.so.6", "libsm6"),
    ("libXext.so.6", "libxext6"),
    ("libXrender.so.1", "libxrender1"),
];

static WRONG_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"can't open file|Cannot find module|No module named|Failed to find attribute|Missing script|: not found|No such file or directory"#,
    )
    .unwrap_or_else(|e| unreachable!("invalid built-in pattern: {e}"))
});

/// The Debian package of a shared library a start failure says is missing, when DevGem knows it.
fn missing_package(failure: &str) -> Option<(String, &'static str)> {
    let library = MISSING_LIBRARY.captures(failure)?["lib"].to_owned();
    let package = LIBRARY_PACKAGES.iter().find(|(lib, _)| *lib == library).map(|(_, p)| *p)?;
    Some((library, package))
}

/// A change to the plan's image that should let it start, with the sentence that tells the user
/// what changed and why; `None` when the failure gives no such evidence or the change was made.
pub fn image_repair(plan: &DeploymentPlan, failure: &str) -> Option<(DeploymentPlan, String)> {
    if let Some((library, package)) = missing_package(failure) {
        let dockerfile = with_package(&plan.dockerfile, package)?;
        let reason = format!("the app needs {library}, so DevGem added the Debian package {package} to the Dockerfile");
        return Some((DeploymentPlan { dockerfile, ..plan.clone() }, reason));
    }
    let evidence = WRONG_START.find(failure)?.as_str().trim_start_matches(": ").to_owned();
    let current = plan.start_command.clone().unwrap_or_default();
    let next = plan.start_alternatives.iter().find(|a| **a != current)?.clone();
    let mut repaired = plan.clone();
    repaired.dockerfile = with_start_command(&plan.dockerfile, &next)?;
    repaired.start_command = Some(next.clone());
    repaired.start_alternatives.retain(|a| *a != next);
    let reason = format!(
        "`{current}` did not start the app ({evidence}); DevGem starts it with `{next}`, which the code suggests, instead"
    );
    Some((repaired, reason))
}

/// A start failure in plain words with what to do, when its output says why: a shared library
/// or a program the image lacks. DevGem cannot change the host's packages or the app's
/// dependencies itself, so this explains rather than repairs.
pub fn explain(failure: &str) -> Option<String> {
    if let Some(captures) = MISSING_LIBRARY.captures(failure) {
        let library = &captures["lib"];
        let package = LIBRARY_PACKAGES.iter().find(|(lib, _)| *lib == library).map(|(_, p)| *p);
        return Some(match package {
            Some(package) => format!(
                "the app needs the system library {library} (Debian package {package}); add `{package}` to the Dockerfile's apt-get install line, or install it on this machine"
            ),
            None => format!(
                "the app needs the system library {library}, which the image lacks; install the Debian package that provides it (apt-file search {library})"
            ),
        });
    }
    let program = MISSING_PROGRAM.captures(failure)?.name("program")?.as_str().to_owned();
    let hint = match program.as_str() {
        "gunicorn" | "uvicorn" | "streamlit" | "flask" | "celery" => format!("add {program} to requirements.txt"),
        "node" | "npm" | "python" | "python3" | "java" | "ruby" | "php" => {
            "check that the Dockerfile's base image provides it".to_owned()
        }
        _ => "check the start command, or install the program in the Dockerfile".to_owned(),
    };
    Some(format!("the start command runs {program}, which is not installed in the image; {hint}"))
}

/// Reads a start failure (with the app's last lines) for the port the app really listens on.
pub fn diagnose(failure: &str, expected_port: u16) -> Option<Repair> {
    if !failure.contains("did not listen") {
        return None;
    }
    let found = LISTENING.captures_iter(failure).filter_map(|c| {
        let port = c.name("port").or_else(|| c.name("bare"))?.as_str().parse::<u16>().ok()?;
        let host = c.name("host").map(|h| h.as_str().to_owned());
        Some((port, host))
    });
    let (port, host) = found.filter(|(port, _)| *port != expected_port && *port >= 80).last()?;
    let loopback = host.is_some_and(|h| h == "localhost" || h.starts_with("127."));
    let mut reason = format!("the app listens on port {port}, not on $PORT ({expected_port}); DevGem routes to {port}");
    if loopback {
        reason.push_str(". It binds 127.0.0.1, which works here but not on Cloud Run: bind 0.0.0.0");
    }
    Some(Repair { port, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(lines: &str) -> String {
        format!("the app did not listen on port 41234 within 60s; it must listen on $PORT: {lines}")
    }

    #[test]
    fn the_port_an_app_announces_is_found() {
        let cases = [
            ("Listening on 0.0.0.0:5055", 5055),
            (" * Running on http://127.0.0.1:5000 (Press CTRL+C to quit)", 5000),
            ("INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)", 8000),
            ("server started, listening on port 3001", 3001),
            ("Serving HTTP on 0.0.0.0 port 9000 (http://0.0.0.0:9000/) ...", 9000),
        ];
        for (line, port) in cases {
            let repair = diagnose(&timeout(line), 41234).unwrap_or_else(|| panic!("no port in {line:?}"));
            assert_eq!(repair.port, port, "{line}");
        }
        let loopback = diagnose(&timeout(" * Running on http://127.0.0.1:5000"), 41234).expect("found");
        assert!(loopback.reason.contains("bind 0.0.0.0"), "{}", loopback.reason);
    }

    #[test]
    fn a_missing_variable_is_named() {
        let exited = |line: &str| format!("the app exited with status 1 before listening: {line}");
        assert_eq!(missing_env(&exited("KeyError: 'STRIPE_KEY'")).as_deref(), Some("STRIPE_KEY"));
        assert_eq!(
            missing_env(&exited("Error: environment variable DATABASE_URL is not set")).as_deref(),
            Some("DATABASE_URL")
        );
        assert_eq!(
            missing_env(&exited("Missing required environment variable: API_TOKEN")).as_deref(),
            Some("API_TOKEN")
        );
        assert_eq!(missing_env(&exited("KeyError: 'name'")), None, "a dict key, not a variable");
        assert_eq!(missing_env(&exited("TypeError: x is not a function")), None);
    }

    #[test]
    fn missing_libraries_and_programs_are_explained() {
        let exited = |line: &str| format!("the app exited with status 1 before listening: {line}");
        let opencv =
            explain(&exited("ImportError: libGL.so.1: cannot open shared object file: No such file or directory"));
        assert!(opencv.as_deref().is_some_and(|m| m.contains("libGL.so.1") && m.contains("libgl1")), "{opencv:?}");
        let unknown = explain(&exited(
            "./app: error while loading shared libraries: libfoo.so.3: cannot open shared object file",
        ));
        assert!(unknown.as_deref().is_some_and(|m| m.contains("apt-file search libfoo.so.3")), "{unknown:?}");
        let gunicorn = explain("the app exited with status 127 before listening: sh: 1: exec: gunicorn: not found");
        assert!(
            gunicorn.as_deref().is_some_and(|m| m.contains("runs gunicorn") && m.contains("requirements.txt")),
            "{gunicorn:?}"
        );
        assert_eq!(explain(&exited("ValueError: bad config")), None);
    }

    fn plan(dockerfile: &str, start: &str, alternatives: &[&str]) -> DeploymentPlan {
        DeploymentPlan {
            app_dir: ".".into(),
            origin: "python-pip".into(),
            dockerfile: dockerfile.into(),
            dockerignore: String::new(),
            start_command: Some(start.into()),
            start_alternatives: alternatives.iter().map(|a| (*a).to_owned()).collect(),
            port: 8080,
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_known_missing_library_is_installed_once() {
        let before = plan("FROM python:3.12-slim\nCOPY . .\nUSER app\nCMD python app.py\n", "python app.py", &[]);
        let failure = "the app exited with status 1 before listening: ImportError: libGL.so.1: cannot open shared object file: No such file or directory";
        let (after, reason) = image_repair(&before, failure).expect("repaired");
        assert!(after.dockerfile.contains("apt-get install -y --no-install-recommends libgl1"), "{}", after.dockerfile);
        assert!(reason.contains("libGL.so.1") && reason.contains("libgl1"), "{reason}");
        assert_eq!(image_repair(&after, failure), None, "the package is there already: nothing more to try");
        let unknown = "ImportError: libfoo.so.3: cannot open shared object file: No such file or directory";
        assert_eq!(image_repair(&before, unknown), None, "no package known for it");
    }

    #[test]
    fn a_wrong_start_command_gives_way_to_the_one_the_code_suggests() {
        let before =
            plan("FROM python:3.12-slim\nCOPY . .\nCMD python server.py\n", "python server.py", &["python app.py"]);
        let failure = "the app exited with status 2 before listening: python: can't open file '/app/server.py': [Errno 2] No such file or directory";
        let (after, reason) = image_repair(&before, failure).expect("repaired");
        assert!(after.dockerfile.ends_with("CMD python app.py\n") && !after.dockerfile.contains("server.py"));
        assert_eq!(after.start_command.as_deref(), Some("python app.py"));
        assert!(after.start_alternatives.is_empty());
        assert!(reason.contains("`python server.py`") && reason.contains("can't open file"), "{reason}");
        assert_eq!(image_repair(&after, failure), None, "no other command left to try");
        assert_eq!(image_repair(&before, "the app exited with status 1 before listening: ValueError: bad"), None);
    }

    #[test]
    fn nothing_is_repaired_without_evidence() {
        assert_eq!(diagnose(&timeout("starting worker"), 41234), None);
        assert_eq!(diagnose(&timeout("Listening on 0.0.0.0:41234"), 41234), None, "it already is the port");
        assert_eq!(diagnose("the app exited with status 1 before listening: KeyError", 41234), None);
    }
}
