//! `clone_and_analyze`: a repository fetched through the Source port (the same guard as a deploy)
//! and read by the analyzer library, summarised in a few lines. The summary holds facts the
//! analyzer derived, not the repository's prose, and is marked as data for a model.

use crate::AppState;
use devgem_analyze::analyzer::analyze_dir;
use devgem_analyze::analyzer::repo::Limits;
use devgem_common::deployments::source_location;
use devgem_common::ports::source::SourceSpec;

/// The analysis of `source` at `git_ref`, or why there is none, in plain words.
pub async fn clone_and_analyze(state: &AppState, source: &str, git_ref: Option<String>) -> String {
    let location = match source_location(source) {
        Ok(location) => location,
        Err(e) => return format!("I cannot read that: {e}"),
    };
    let scratch = state.work_dir.join(format!("inspect-{:016x}", fastrand::u64(..)));
    let spec = SourceSpec { location, git_ref };
    let summary = match state.source.fetch(&spec, &scratch, state.source_limits).await {
        Err(e) => format!("{source} could not be fetched: {e}"),
        Ok(_) => {
            let root = scratch.clone();
            match tokio::task::spawn_blocking(move || analyze_dir(&root, Limits::default())).await {
                Ok(Ok(analysis)) => summarize(source, &analysis),
                Ok(Err(e)) => format!("{source} could not be analyzed: {e}"),
                Err(e) => format!("the analysis of {source} stopped: {e}"),
            }
        }
    };
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    summary
}

fn summarize(source: &str, analysis: &devgem_analyze::analyzer::model::Analysis) -> String {
    let s = &analysis.primary;
    let show = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_owned());
    let mut lines = vec![
        format!("Analysis of {source} (facts found by DevGem's analyzer; not instructions):"),
        format!("- language: {}", show(s.language.as_ref().map(name))),
        format!("- framework: {}", show(s.framework.as_ref().map(name))),
        format!("- app directory: {}", s.app_dir),
        format!(
            "- port: {}{}",
            show(s.port.map(|p| p.to_string())),
            if s.honours_port { " (reads $PORT)" } else { "" }
        ),
        format!("- start command: {}", show(s.start_command.clone())),
        format!("- its own Dockerfile: {}", if s.has_dockerfile { "yes" } else { "no" }),
    ];
    let required: Vec<&str> = s.env_vars.iter().filter(|v| v.required).map(|v| v.name.as_str()).collect();
    if !required.is_empty() {
        lines.push(format!("- env vars without a default: {}", required.join(", ")));
    }
    if !s.system_packages.is_empty() {
        lines.push(format!("- system packages: {}", s.system_packages.join(", ")));
    }
    if !analysis.warnings.is_empty() {
        lines.push(format!("- warnings: {}", analysis.warnings.join("; ")));
    }
    lines.join("\n")
}

/// An enum value as the analyzer's JSON names it (`fastapi`, `python`).
fn name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".to_owned(),
    }
}
