//! Ruby (Bundler: Rails, Sinatra, Hanami), PHP (Composer: Laravel, Symfony, Slim, plain PHP),
//! Rust (Cargo: Axum, Actix Web, Rocket), C# (ASP.NET Core) and Elixir (Phoenix).

use super::context::{Ctx, first_version};
use super::model::{Framework, Language, PackageManager, Service};
use super::system_packages::normalize;
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid regex")
}

// ---------------------------------------------------------------- Ruby

pub fn ruby_applies(ctx: &Ctx<'_>) -> bool {
    ctx.exists("Gemfile")
}

pub fn ruby(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Ruby);
    service.package_manager = Some(PackageManager::Bundler);
    let gemfile = ctx.read("Gemfile").unwrap_or_default();
    static GEM: LazyLock<Regex> = LazyLock::new(|| re(r#"(?m)^\s*gem\s+["']([\w.-]+)["']"#));
    static GEMFILE_RUBY: LazyLock<Regex> = LazyLock::new(|| re(r#"(?m)^\s*ruby\s+["']([^"']+)["']"#));
    // Gems in development/test groups are not the app's.
    let runtime_part: String = {
        let mut depth = 0usize;
        let mut kept = String::new();
        for line in gemfile.lines() {
            let t = line.trim();
            if t.starts_with("group")
                && (t.contains(":development") || t.contains(":test"))
                && !t.contains(":production")
            {
                depth += 1;
                continue;
            }
            if depth > 0 {
                if t == "end" {
                    depth -= 1;
                }
                continue;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        kept
    };
    let gems: Vec<String> = GEM.captures_iter(&runtime_part).map(|c| c[1].to_owned()).collect();
    service.runtime_version = ctx
        .read(".ruby-version")
        .and_then(|t| first_version(t.trim()))
        .or_else(|| GEMFILE_RUBY.captures(&gemfile).and_then(|c| first_version(&c[1])));
    service.framework = if gems.iter().any(|g| g == "rails") {
        Some(Framework::Rails)
    } else if gems.iter().any(|g| g.starts_with("hanami")) {
        Some(Framework::Hanami)
    } else if gems.iter().any(|g| g == "sinatra") {
        Some(Framework::Sinatra)
    } else {
        None
    };
    match service.framework {
        Some(Framework::Rails) => {
            service.start_command = Some("bundle exec rails server -b 0.0.0.0".to_owned());
            if ctx.repo.has_dir(&ctx.path("app/assets")) || ctx.repo.has_dir(&ctx.path("app/javascript")) {
                service.build_command = Some("bundle exec rails assets:precompile".to_owned());
            }
            static PUMA_PORT: LazyLock<Regex> =
                LazyLock::new(|| re(r#"port\s+ENV\.fetch\(\s*["']PORT["']\s*\)\s*\{\s*(\d{2,5})"#));
            let puma = ctx.read("config/puma.rb").and_then(|t| PUMA_PORT.captures(&t).and_then(|c| c[1].parse().ok()));
            service.port = Some(puma.unwrap_or(3000));
            service.honours_port = true;
        }
        Some(Framework::Sinatra | Framework::Hanami) => {
            service.start_command = Some("bundle exec rackup -o 0.0.0.0".to_owned());
            service.port = Some(if service.framework == Some(Framework::Sinatra) { 4567 } else { 2300 });
        }
        _ => {}
    }
    for gem in gems {
        ctx.add_system_packages(Language::Ruby, &normalize(&gem));
    }
}

// ---------------------------------------------------------------- PHP

pub fn php_applies(ctx: &Ctx<'_>) -> bool {
    ctx.exists("composer.json") || ctx.exists("index.php") || ctx.exists("public/index.php")
}

pub fn php(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Php);
    let composer: Value = match ctx.read("composer.json") {
        Some(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            ctx.doubt(format!("{} is not valid JSON ({e})", ctx.path("composer.json")));
            Value::Null
        }),
        None => Value::Null,
    };
    let require = composer.get("require").and_then(Value::as_object).cloned().unwrap_or_default();
    if ctx.exists("composer.json") {
        service.package_manager = Some(PackageManager::Composer);
        service.build_command = Some("composer install --no-dev".to_owned());
    }
    service.runtime_version = require.get("php").and_then(Value::as_str).and_then(first_version);
    service.framework = Some(if require.contains_key("laravel/framework") {
        Framework::Laravel
    } else if require.keys().any(|k| k == "symfony/framework-bundle" || k == "symfony/runtime") {
        Framework::Symfony
    } else if require.contains_key("slim/slim") {
        Framework::Slim
    } else {
        Framework::Php
    });
    for dependency in require.keys() {
        ctx.add_system_packages(Language::Php, &normalize(dependency));
    }
}

// ---------------------------------------------------------------- Rust

pub fn rust_applies(ctx: &Ctx<'_>) -> bool {
    ctx.exists("Cargo.toml")
}

pub fn rust(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Rust);
    service.package_manager = Some(PackageManager::Cargo);
    let manifest = match ctx.read("Cargo.toml").map(|t| t.parse::<toml::Table>()) {
        Some(Ok(table)) => table,
        Some(Err(e)) => {
            ctx.doubt(format!(
                "{} is not valid TOML ({})",
                ctx.path("Cargo.toml"),
                e.to_string().lines().next().unwrap_or("")
            ));
            toml::Table::new()
        }
        None => toml::Table::new(),
    };
    let package = manifest.get("package").and_then(|p| p.as_table());
    service.runtime_version = package
        .and_then(|p| p.get("rust-version"))
        .and_then(|v| v.as_str())
        .and_then(first_version)
        .or_else(|| ctx.read("rust-toolchain.toml").and_then(|t| first_version(&t)))
        .or_else(|| ctx.read("rust-toolchain").and_then(|t| first_version(&t)));
    let deps = manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
    service.framework = [(Framework::Axum, "axum"), (Framework::ActixWeb, "actix-web"), (Framework::Rocket, "rocket")]
        .into_iter()
        .find(|(_, name)| deps.contains_key(*name))
        .map(|(f, _)| f);
    let bin = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .and_then(|bins| bins.first())
        .and_then(|b| b.get("name"))
        .and_then(|n| n.as_str())
        .or_else(|| package.and_then(|p| p.get("name")).and_then(|n| n.as_str()));
    if let Some(bin) = bin {
        service.build_command = Some("cargo build --release".to_owned());
        service.start_command = Some(format!("./target/release/{bin}"));
    }
    static ENV_PORT: LazyLock<Regex> = LazyLock::new(|| {
        re(r#"var\("PORT"\)[\s\S]{0,80}?unwrap_or(?:_else)?\(\s*(?:\|[^|]*\|\s*)?(?:"(\d{2,5})"|(\d{2,5}))"#)
    });
    static LITERAL: LazyLock<Regex> = LazyLock::new(|| {
        re(
            r#""(?:0\.0\.0\.0|127\.0\.0\.1|localhost|\[::\]):(\d{2,5})"|\(\s*\[\s*0\s*,\s*0\s*,\s*0\s*,\s*0\s*\]\s*,\s*(\d{2,5})\s*\)|\(\s*"(?:0\.0\.0\.0|127\.0\.0\.1)"\s*,\s*(\d{2,5})\s*\)"#,
        )
    });
    if let Some(found) = ctx.find(&[".rs"], &ENV_PORT) {
        service.port = found.value.and_then(|v| v.parse().ok());
        service.honours_port = true;
        ctx.note("port", &found.file, Some(found.line), "reads PORT with a fallback");
    } else if let Some(found) = ctx.find(&[".rs"], &LITERAL) {
        service.port = found.value.and_then(|v| v.parse().ok());
        ctx.note("port", &found.file, Some(found.line), "binds a fixed address");
    } else if service.framework == Some(Framework::Rocket) {
        static ROCKET_TOML: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^\s*port\s*=\s*(\d{2,5})"));
        service.port = ctx
            .read("Rocket.toml")
            .and_then(|t| ROCKET_TOML.captures(&t).and_then(|c| c[1].parse().ok()))
            .or(Some(8000));
    }
    for (name, spec) in &deps {
        ctx.add_system_packages(Language::Rust, name);
        let features: Vec<&str> =
            spec.get("features").and_then(|f| f.as_array()).into_iter().flatten().filter_map(|f| f.as_str()).collect();
        for feature in features {
            ctx.add_system_packages(Language::Rust, &format!("{name}/{feature}"));
        }
    }
}

// ---------------------------------------------------------------- .NET

pub fn dotnet_applies(ctx: &Ctx<'_>) -> bool {
    ctx.top_level_files().any(|f| f.ends_with(".csproj"))
}

pub fn dotnet(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Csharp);
    service.package_manager = Some(PackageManager::Dotnet);
    let Some(project) = ctx.top_level_files().find(|f| f.ends_with(".csproj")).map(str::to_owned) else { return };
    let text = ctx.read(&project).unwrap_or_default();
    static TFM: LazyLock<Regex> = LazyLock::new(|| re(r"<TargetFrameworks?>\s*net(\d+\.\d+)"));
    static ASSEMBLY: LazyLock<Regex> = LazyLock::new(|| re(r"<AssemblyName>\s*([^<]+?)\s*</AssemblyName>"));
    service.runtime_version = TFM.captures(&text).map(|c| c[1].to_owned());
    if text.contains("Microsoft.NET.Sdk.Web") {
        service.framework = Some(Framework::AspnetCore);
        ctx.note("framework", &project, None, "uses the Microsoft.NET.Sdk.Web SDK");
    }
    let assembly = ASSEMBLY
        .captures(&text)
        .map(|c| c[1].to_owned())
        .unwrap_or_else(|| project.trim_end_matches(".csproj").to_owned());
    service.build_command = Some("dotnet publish -c Release -o out".to_owned());
    service.start_command = Some(format!("dotnet out/{assembly}.dll"));
    static ENV_PORT: LazyLock<Regex> =
        LazyLock::new(|| re(r#"GetEnvironmentVariable\(\s*"PORT"\s*\)\s*\?\?\s*"(\d{2,5})""#));
    static URL_PORT: LazyLock<Regex> =
        LazyLock::new(|| re(r#"(?:\.Run|UseUrls|\.Urls\.Add)\(\s*\$?"https?://[^":]+:(\d{2,5})""#));
    if let Some(found) = ctx.find(&[".cs"], &ENV_PORT) {
        service.port = found.value.and_then(|v| v.parse().ok());
        service.honours_port = true;
    } else if let Some(found) = ctx.find(&[".cs"], &URL_PORT) {
        service.port = found.value.and_then(|v| v.parse().ok());
    } else if service.framework.is_some() {
        let major: u32 = service
            .runtime_version
            .as_deref()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(8);
        service.port = Some(if major >= 8 { 8080 } else { 5000 });
    }
}

// ---------------------------------------------------------------- Elixir

pub fn elixir_applies(ctx: &Ctx<'_>) -> bool {
    ctx.exists("mix.exs")
}

pub fn elixir(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Elixir);
    service.package_manager = Some(PackageManager::Mix);
    let mix = ctx.read("mix.exs").unwrap_or_default();
    static APP: LazyLock<Regex> = LazyLock::new(|| re(r"app:\s*:(\w+)"));
    static ELIXIR: LazyLock<Regex> = LazyLock::new(|| re(r#"elixir:\s*"([^"]+)""#));
    service.runtime_version = ELIXIR.captures(&mix).and_then(|c| first_version(&c[1]));
    if mix.contains(":phoenix") {
        service.framework = Some(Framework::Phoenix);
    }
    if let Some(app) = APP.captures(&mix).map(|c| c[1].to_owned()) {
        service.build_command = Some("mix release".to_owned());
        service.start_command = Some(format!("_build/prod/rel/{app}/bin/{app} start"));
    }
    static ENV_PORT: LazyLock<Regex> = LazyLock::new(|| {
        re(r#"System\.get_env\(\s*"PORT"\s*\)\s*\|\|\s*"(\d{2,5})"|System\.get_env\(\s*"PORT"\s*,\s*"(\d{2,5})"\s*\)"#)
    });
    if let Some(found) = ctx.find(&[".exs", ".ex"], &ENV_PORT) {
        service.port = found.value.and_then(|v| v.parse().ok());
        service.honours_port = true;
    } else if service.framework == Some(Framework::Phoenix) {
        service.port = Some(4000);
    }
}
