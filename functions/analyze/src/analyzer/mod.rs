//! The repository analyzer: reads a repository (never runs it) and says how to run each
//! deployable service in a container. Rules-based and deterministic; the contract is
//! docs/analyzer.md.
//!
//! # Layout
//! - [`repo`]: the bounded, read-only view of the files.
//! - [`context`]: one service's view, where detectors record evidence and doubts.
//! - [`python`], [`node`], [`golang`], [`jvm`], [`others`] (Ruby, PHP, Rust, .NET, Elixir):
//!   language detectors (framework, package manager, port, commands).
//! - [`deploy_config`]: the repo's own Dockerfile and Procfile, which win over conventions;
//!   [`compose`]: docker-compose services built from the repo.
//! - [`env`]: env vars the runtime code reads. [`system_packages`]: native libraries.
//! - [`model`]: the output.

pub mod compose;
pub mod context;
pub mod deploy_config;
pub mod env;
pub mod golang;
pub mod jvm;
pub mod model;
pub mod node;
pub mod others;
pub mod python;
pub mod repo;
pub mod system_packages;

use context::Ctx;
use model::{Analysis, Evidence, Framework, Language, Service};
use repo::{Limits, Repo, is_never_a_service};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Repo(#[from] repo::RepoError),
}

/// Files whose presence makes a directory a candidate service.
const MANIFESTS: &[&str] = &[
    "package.json",
    "deno.json",
    "requirements.txt",
    "pyproject.toml",
    "Pipfile",
    "manage.py",
    "go.mod",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "Gemfile",
    "composer.json",
    "Cargo.toml",
    "mix.exs",
    "Dockerfile",
];

/// Directories (relative) that might hold a service: the root, every compose build context, and
/// every folder with a manifest outside test, CI and tooling folders, at most 3 levels deep.
fn candidate_dirs(repo: &Repo, compose: &[compose::ComposeService]) -> Vec<String> {
    let mut dirs: Vec<String> = vec![String::new()];
    for service in compose {
        if !service.context.is_empty() && repo.has_dir(&service.context) && !dirs.contains(&service.context) {
            dirs.push(service.context.clone());
        }
    }
    for file in repo.files() {
        let Some((dir, name)) = file.path.rsplit_once('/') else { continue };
        if dir.matches('/').count() >= 3 || is_never_a_service(dir) {
            continue;
        }
        if (MANIFESTS.contains(&name) || name.ends_with(".csproj")) && !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_owned());
        }
    }
    dirs
}

/// A service, why the analyzer thinks so, and how many of its inputs were doubtful.
type Found = (Service, Vec<Evidence>, usize);

/// Analyzes one directory as a service. `None` when nothing there is deployable.
fn analyze_service(
    repo: &Repo,
    dir: &str,
    excluded: Vec<String>,
    compose: Option<&compose::ComposeService>,
) -> Option<Found> {
    let app_dir = if dir.is_empty() { ".".to_owned() } else { dir.to_owned() };
    let mut ctx = Ctx::new(repo, &app_dir, excluded.clone());
    let mut service = Service::empty(&app_dir);
    // Server-side manifests before package.json: a Rails or Laravel app also has one for its
    // front-end assets.
    if golang::applies(&ctx) {
        golang::detect(&mut ctx, &mut service);
    } else if jvm::applies(&ctx) {
        jvm::detect(&mut ctx, &mut service);
    } else if others::ruby_applies(&ctx) {
        others::ruby(&mut ctx, &mut service);
    } else if ctx.exists("composer.json") {
        others::php(&mut ctx, &mut service);
    } else if others::rust_applies(&ctx) {
        others::rust(&mut ctx, &mut service);
    } else if others::dotnet_applies(&ctx) {
        others::dotnet(&mut ctx, &mut service);
    } else if others::elixir_applies(&ctx) {
        others::elixir(&mut ctx, &mut service);
    } else if node::applies(&ctx) {
        node::detect(&mut ctx, &mut service);
    } else if python::applies(&ctx) {
        python::detect(&mut ctx, &mut service);
    } else if others::php_applies(&ctx) {
        others::php(&mut ctx, &mut service);
    } else if ctx.exists("index.html") {
        service.language = Some(Language::Static);
        ctx.note("language", "index.html", None, "a static site: index.html and no server manifest");
    }
    apply_deploy_config(&mut ctx, &mut service, compose);
    if service.language.is_none() && !service.has_dockerfile {
        return None;
    }
    let given: Vec<(String, String)> = compose
        .map(|c| c.environment.iter().map(|(name, line)| (name.clone(), format!("{}:{line}", c.file))).collect())
        .unwrap_or_default();
    service.env_vars = env::scan(repo, &app_dir, &excluded, &given);
    service.system_packages = ctx.system_packages.iter().cloned().collect();
    Some((service, ctx.evidence, ctx.doubts))
}

/// The repository's own Dockerfile, Procfile and compose service win over conventions, in that
/// order.
fn apply_deploy_config(ctx: &mut Ctx<'_>, service: &mut Service, compose: Option<&compose::ComposeService>) {
    if let Some(port) = compose.and_then(|c| c.port)
        && service.port.is_none()
    {
        ctx.note("port", "", None, "the compose service publishes it");
        service.port = Some(port);
    }
    if let Some(text) = ctx.read("Dockerfile") {
        service.has_dockerfile = true;
        let facts = deploy_config::read_dockerfile(&text);
        if service.runtime_version.is_none()
            && let Some(version) =
                facts.base_image.as_deref().and_then(|image| runtime_version_of_image(image, service.language))
        {
            ctx.note("runtime_version", "Dockerfile", None, "the base image's tag");
            service.runtime_version = Some(version);
        }
        // The port: one the command names > EXPOSE > ENV PORT.
        let named =
            facts.start_command.as_ref().and_then(|(c, line)| deploy_config::port_in_command(c).map(|p| (p, *line)));
        if let Some((port, line)) = named.or(facts.exposed_port).or(facts.env_port) {
            ctx.note("port", "Dockerfile", Some(line), "the Dockerfile sets it");
            service.port = Some(port);
        }
        if let Some((command, line)) = facts.start_command {
            ctx.note("start_command", "Dockerfile", Some(line), "the Dockerfile's CMD/ENTRYPOINT");
            if named.is_none() && deploy_config::uses_port_env(&command) {
                service.honours_port = true;
            }
            override_start(service, command);
        }
    } else if ctx.exists("Dockerfile") {
        service.has_dockerfile = true;
    }
    if service.has_dockerfile {
        return;
    }
    if let Some((command, line)) = ctx.read("Procfile").and_then(|t| deploy_config::procfile_web(&t)) {
        ctx.note("start_command", "Procfile", Some(line), "the Procfile's web process");
        if let Some(port) = deploy_config::port_in_command(&command) {
            service.port = Some(port);
            service.honours_port = false;
        } else if deploy_config::uses_port_env(&command) {
            service.port = Some(8080);
            service.honours_port = true;
        }
        override_start(service, command);
        return;
    }
    if let Some((command, _)) = compose.and_then(|c| c.command.clone()) {
        ctx.note("start_command", "", None, "the compose service's command");
        if let Some(port) = deploy_config::port_in_command(&command) {
            service.port = Some(port);
        }
        override_start(service, command);
    }
}

/// Sets the start command the repository's own config names, keeping the one the code suggested
/// as an alternative.
fn override_start(service: &mut Service, command: String) {
    if let Some(previous) = service.start_command.replace(command)
        && service.start_command.as_deref() != Some(previous.as_str())
    {
        service.start_alternatives.push(previous);
    }
}

/// The language version a base image names: `python:3.12-slim` → `3.12`, `node:20-alpine` → `20`.
fn runtime_version_of_image(image: &str, language: Option<Language>) -> Option<String> {
    let (name, tag) = image.rsplit_once(':')?;
    let name = name.rsplit('/').next().unwrap_or(name);
    let expected: &[&str] = match language? {
        Language::Python => &["python"],
        Language::Javascript | Language::Typescript => &["node", "bun"],
        Language::Go => &["golang", "go"],
        Language::Java | Language::Kotlin => &["eclipse-temurin", "openjdk", "amazoncorretto", "maven", "gradle"],
        Language::Ruby => &["ruby"],
        Language::Php => &["php"],
        Language::Rust => &["rust"],
        Language::Csharp => &["aspnet", "sdk", "runtime"],
        Language::Elixir => &["elixir"],
        Language::Static => &[],
    };
    if !expected.contains(&name) {
        return None;
    }
    context::first_version(tag)
}

/// Whether a service is something to deploy rather than a library or tooling package.
fn deployable(service: &Service) -> bool {
    service.has_dockerfile
        || service.start_command.is_some()
        || matches!(service.language, Some(Language::Static | Language::Php))
        || matches!(
            service.framework,
            Some(Framework::Vite | Framework::Angular | Framework::Gatsby | Framework::Astro)
        )
}

const PRIMARY_NAMES: &[&str] = &["web", "api", "app", "server", "frontend", "backend"];

fn confidence(service: &Service) -> f32 {
    let Some(language) = service.language else { return 0.0 };
    let mut score: f32 = 0.4;
    if service.framework.is_some() || matches!(language, Language::Static) {
        score += 0.3;
    }
    if service.start_command.is_some() || matches!(language, Language::Static | Language::Php) || !deployable(service) {
        score += 0.2;
    }
    if service.port.is_some() || matches!(language, Language::Static | Language::Php) {
        score += 0.1;
    }
    score.min(1.0)
}

/// Analyzes the repository at `root`.
pub fn analyze_dir(root: &Path, limits: Limits) -> Result<Analysis, AnalyzeError> {
    let repo = Repo::scan(root, limits)?;
    let compose = compose::read(&repo);
    let dirs = candidate_dirs(&repo, &compose);
    let mut services: Vec<Found> = Vec::new();
    for dir in &dirs {
        let nested: Vec<String> = dirs
            .iter()
            .filter(|d| !d.is_empty() && (dir.is_empty() || d.starts_with(&format!("{dir}/"))))
            .cloned()
            .collect();
        let composed = compose.iter().find(|c| c.context == *dir);
        if let Some(found) = analyze_service(&repo, dir, nested, composed) {
            services.push(found);
        }
    }
    let deployable_count = services.iter().filter(|(s, _, _)| deployable(s)).count();
    // A root that only groups workspaces is not a service when its members are.
    if deployable_count > 0 {
        services.retain(|(s, _, _)| deployable(s));
    }
    let primary_index = services
        .iter()
        .position(|(s, _, _)| s.app_dir == ".")
        .or_else(|| {
            // The compose service that publishes a port.
            compose.iter().filter(|c| c.port.is_some()).find_map(|c| {
                let dir = if c.context.is_empty() { "." } else { c.context.as_str() };
                services.iter().position(|(s, _, _)| s.app_dir == dir)
            })
        })
        .or_else(|| {
            PRIMARY_NAMES
                .iter()
                .find_map(|name| services.iter().position(|(s, _, _)| s.app_dir.rsplit('/').next() == Some(*name)))
        })
        .unwrap_or(0);
    let warnings = repo.take_warnings();
    if services.is_empty() {
        let mut warnings = warnings;
        warnings.push("no deployable app found: no known manifest, source or index.html".to_owned());
        return Ok(Analysis {
            primary: Service::empty("."),
            services: Vec::new(),
            confidence: 0.0,
            evidence: Vec::new(),
            warnings,
        });
    }
    let (primary, evidence, doubts) = services[primary_index].clone();
    // A manifest that does not parse makes the rest a guess.
    let confidence = if doubts > 0 { confidence(&primary) * 0.5 } else { confidence(&primary) };
    let services = if services.len() > 1 { services.into_iter().map(|(s, _, _)| s).collect() } else { Vec::new() };
    Ok(Analysis { primary, services, confidence, evidence, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze_files(files: &[(&str, &[u8])]) -> Analysis {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, body) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, body).expect("write");
        }
        analyze_dir(dir.path(), Limits::default()).expect("analysis")
    }

    #[test]
    fn malformed_manifests_give_a_result_and_a_warning_never_a_panic() {
        let python = analyze_files(&[
            ("pyproject.toml", b"[project\nname = 'x'"),
            ("main.py", b"from fastapi import FastAPI\napp = FastAPI()\n"),
        ]);
        assert_eq!(python.primary.language, Some(Language::Python));
        assert_eq!(python.primary.framework, Some(Framework::Fastapi), "found from the code despite the manifest");
        assert!(
            python.warnings.iter().any(|w| w.contains("pyproject.toml is not valid TOML")),
            "{:?}",
            python.warnings
        );

        let java = analyze_files(&[(
            "pom.xml",
            b"<project><artifactId>api</artifactId><dependencies><dependency>spring-boot",
        )]);
        assert_eq!(java.primary.language, Some(Language::Java));
        assert!(java.confidence < 1.0);

        let cargo = analyze_files(&[("Cargo.toml", b"[package\nname=")]);
        assert_eq!(cargo.primary.language, Some(Language::Rust));
        assert!(cargo.warnings.iter().any(|w| w.contains("Cargo.toml is not valid TOML")));
    }

    #[test]
    fn nothing_deployable_is_said_plainly() {
        let empty = analyze_files(&[("README.md", b"# nothing here")]);
        assert_eq!(empty.primary.language, None);
        assert_eq!(empty.confidence, 0.0);
        assert!(empty.warnings.iter().any(|w| w.contains("no deployable app found")));
    }
}
