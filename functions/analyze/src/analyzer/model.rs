//! The analyzer's output (docs/analyzer.md, Output): what a service is and how to run it, with
//! the evidence for each conclusion.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Language {
    Python,
    Javascript,
    Typescript,
    Go,
    Java,
    Kotlin,
    Ruby,
    Php,
    Rust,
    Csharp,
    Elixir,
    Static,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    Flask,
    Django,
    Fastapi,
    Starlette,
    Aiohttp,
    Streamlit,
    Gradio,
    Tornado,
    Sanic,
    Express,
    Koa,
    Fastify,
    Nestjs,
    Hapi,
    Nextjs,
    Nuxt,
    Remix,
    Sveltekit,
    Astro,
    Vite,
    Angular,
    Gatsby,
    Gin,
    Echo,
    Fiber,
    Chi,
    NetHttp,
    SpringBoot,
    Quarkus,
    Micronaut,
    Ktor,
    Rails,
    Sinatra,
    Hanami,
    Laravel,
    Symfony,
    Slim,
    Php,
    Axum,
    ActixWeb,
    Rocket,
    AspnetCore,
    Phoenix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackageManager {
    Pip,
    Poetry,
    Uv,
    Pipenv,
    Pdm,
    Npm,
    Yarn,
    YarnBerry,
    Pnpm,
    Bun,
    Deno,
    Go,
    Maven,
    Gradle,
    Bundler,
    Composer,
    Cargo,
    Dotnet,
    Mix,
}

/// An environment variable the app reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub required: bool,
    pub default: Option<String>,
    pub secret: bool,
    /// `path:line` of each read, relative to the repository root, sorted.
    pub sources: Vec<String>,
}

/// Why the analyzer concluded something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub field: String,
    pub path: String,
    pub line: Option<usize>,
    pub reason: String,
}

/// One deployable service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub language: Option<Language>,
    pub framework: Option<Framework>,
    pub runtime_version: Option<String>,
    pub package_manager: Option<PackageManager>,
    pub port: Option<u16>,
    pub honours_port: bool,
    pub start_command: Option<String>,
    pub build_command: Option<String>,
    pub env_vars: Vec<EnvVar>,
    pub system_packages: Vec<String>,
    pub has_dockerfile: bool,
    pub app_dir: String,
    /// What the build produces that runs on its own, when the framework makes one
    /// (`.next/standalone` for Next.js `output: 'standalone'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_output: Option<String>,
    /// Start commands the code suggests that the repository's Dockerfile, Procfile or compose
    /// command overrode: what DevGem tries when that command does not start the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_alternatives: Vec<String>,
}

impl Service {
    pub fn empty(app_dir: &str) -> Self {
        Self {
            language: None,
            framework: None,
            runtime_version: None,
            package_manager: None,
            port: None,
            honours_port: false,
            start_command: None,
            build_command: None,
            env_vars: Vec::new(),
            system_packages: Vec::new(),
            has_dockerfile: false,
            app_dir: app_dir.to_owned(),
            start_alternatives: Vec::new(),
            build_output: None,
        }
    }
}

/// The whole result: the primary service's fields at the top, every service in `services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    #[serde(flatten)]
    pub primary: Service,
    pub services: Vec<Service>,
    pub confidence: f32,
    pub evidence: Vec<Evidence>,
    pub warnings: Vec<String>,
}
