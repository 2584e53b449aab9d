//! JavaScript and TypeScript on Node, Bun and Deno: package.json (dependencies, scripts, main,
//! engines, packageManager), lock files, and the server code's port.

use super::context::{Ctx, first_version, line_at};
use super::model::{Framework, Language, PackageManager, Service};
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

pub fn applies(ctx: &Ctx<'_>) -> bool {
    ctx.exists("package.json") || ctx.exists("deno.json") || ctx.exists("deno.jsonc")
}

fn declared_package_manager(manifest: &Value) -> Option<PackageManager> {
    let declared = manifest.get("packageManager").and_then(Value::as_str)?;
    let name = declared.split('@').next().unwrap_or("");
    let major = declared.split('@').nth(1).and_then(|v| v.split('.').next()).and_then(|v| v.parse::<u32>().ok());
    match (name, major) {
        ("pnpm", _) => Some(PackageManager::Pnpm),
        ("bun", _) => Some(PackageManager::Bun),
        ("npm", _) => Some(PackageManager::Npm),
        ("yarn", Some(1)) => Some(PackageManager::Yarn),
        ("yarn", _) => Some(PackageManager::YarnBerry),
        _ => None,
    }
}

/// The package manager from lock files in `dir` (repository-relative).
fn lockfile_package_manager(ctx: &Ctx<'_>, dir: &str) -> Option<PackageManager> {
    let at = |f: &str| super::repo::join(dir, f);
    let repo = ctx.repo;
    if repo.exists(&at("bun.lockb")) || repo.exists(&at("bun.lock")) {
        Some(PackageManager::Bun)
    } else if repo.exists(&at("pnpm-lock.yaml")) || repo.exists(&at("pnpm-workspace.yaml")) {
        Some(PackageManager::Pnpm)
    } else if repo.exists(&at("yarn.lock")) {
        let berry =
            repo.exists(&at(".yarnrc.yml")) || repo.read(&at("yarn.lock")).is_some_and(|t| t.contains("__metadata:"));
        Some(if berry { PackageManager::YarnBerry } else { PackageManager::Yarn })
    } else if repo.exists(&at("package-lock.json")) {
        Some(PackageManager::Npm)
    } else {
        None
    }
}

/// `packageManager` wins, then lock files; a workspace member without its own takes the
/// workspace root's.
fn package_manager(ctx: &Ctx<'_>, manifest: &Value) -> PackageManager {
    if let Some(pm) = declared_package_manager(manifest) {
        return pm;
    }
    let own = ctx.path("");
    let own = own.trim_end_matches('/');
    std::iter::once(own.to_owned())
        .chain(ctx.ancestors())
        .find_map(|dir| {
            lockfile_package_manager(ctx, &dir).or_else(|| {
                let manifest = ctx.repo.read(&super::repo::join(&dir, "package.json"))?;
                declared_package_manager(&serde_json::from_str(&manifest).ok()?)
            })
        })
        .unwrap_or(PackageManager::Npm)
}

fn pm_command(pm: PackageManager) -> &'static str {
    match pm {
        PackageManager::Yarn | PackageManager::YarnBerry => "yarn",
        PackageManager::Pnpm => "pnpm",
        PackageManager::Bun => "bun",
        _ => "npm",
    }
}

/// `npm start`, `yarn start`, `pnpm start`, `bun run start`.
fn start_script_command(pm: PackageManager) -> String {
    match pm {
        PackageManager::Bun => "bun run start".to_owned(),
        other => format!("{} start", pm_command(other)),
    }
}

fn has_dep(manifest: &Value, name: &str) -> bool {
    ["dependencies", "devDependencies", "peerDependencies"]
        .iter()
        .any(|section| manifest.get(section).and_then(|d| d.get(name)).is_some())
}

fn runtime_deps(manifest: &Value) -> Vec<String> {
    manifest.get("dependencies").and_then(Value::as_object).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

static PORT_FROM_ENV: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"process\.env\.PORT\s*\)?\s*(?:\|\||\?\?)\s*["'`]?(\d{2,5})"#).expect("valid regex"));
static PORT_LITERAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\.listen\(\s*(\d{2,5})\b|\bport\s*:\s*(\d{2,5})\b|\b(?:const|let|var)\s+PORT\s*=\s*(\d{2,5})\b")
        .expect("valid regex")
});

/// The port the server code picks: (port, honours $PORT, file, line).
fn port_in_code(ctx: &Ctx<'_>) -> Option<(u16, bool, String, usize)> {
    let files: Vec<&str> =
        ctx.runtime_files().filter(|f| [".js", ".mjs", ".cjs", ".ts", ".mts"].iter().any(|e| f.ends_with(e))).collect();
    let mut literal = None;
    let mut reads_port = None;
    for file in files {
        let Some(text) = ctx.read(file) else { continue };
        if let Some(c) = PORT_FROM_ENV.captures(&text)
            && let Ok(port) = c[1].parse()
        {
            return Some((port, true, file.to_owned(), line_at(&text, c.get(0).map_or(0, |m| m.start()))));
        }
        if reads_port.is_none()
            && let Some(at) = text.find("process.env.PORT")
        {
            reads_port = Some((file.to_owned(), line_at(&text, at)));
        }
        if literal.is_none()
            && let Some(c) = PORT_LITERAL.captures(&text)
            && let Some(port) = c.iter().skip(1).flatten().next().and_then(|m| m.as_str().parse::<u16>().ok())
        {
            literal = Some((port, false, file.to_owned(), line_at(&text, c.get(0).map_or(0, |m| m.start()))));
        }
    }
    match (reads_port, literal) {
        (Some((file, line)), _) => Some((8080, true, file, line)),
        (None, literal) => literal,
    }
}

pub fn detect(ctx: &mut Ctx<'_>, service: &mut Service) {
    let manifest: Value = match ctx.read("package.json") {
        Some(text) => match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                ctx.doubt(format!(
                    "{} is not a JSON object; scripts and dependencies were not read",
                    ctx.path("package.json")
                ));
                Value::Null
            }
            Err(e) => {
                ctx.doubt(format!(
                    "{} is not valid JSON ({e}); scripts and dependencies were not read",
                    ctx.path("package.json")
                ));
                Value::Null
            }
        },
        None => Value::Null,
    };
    let deno = manifest.is_null() && (ctx.exists("deno.json") || ctx.exists("deno.jsonc"));
    let typescript = ctx.exists("tsconfig.json")
        || deno
        || ["main", "module"]
            .iter()
            .any(|k| manifest.get(k).and_then(Value::as_str).is_some_and(|m| m.ends_with(".ts")));
    service.language = Some(if typescript { Language::Typescript } else { Language::Javascript });
    let pm = if deno { PackageManager::Deno } else { package_manager(ctx, &manifest) };
    service.package_manager = Some(pm);
    service.runtime_version = [".nvmrc", ".node-version"]
        .iter()
        .find_map(|f| ctx.read(f).and_then(|t| first_version(t.trim())))
        .or_else(|| manifest.pointer("/engines/node").and_then(Value::as_str).and_then(first_version));

    let framework = [
        (Framework::Nestjs, "@nestjs/core"),
        (Framework::Nextjs, "next"),
        (Framework::Nuxt, "nuxt"),
        (Framework::Remix, "@remix-run/node"),
        (Framework::Remix, "@remix-run/serve"),
        (Framework::Remix, "@remix-run/express"),
        (Framework::Sveltekit, "@sveltejs/kit"),
        (Framework::Astro, "astro"),
        (Framework::Gatsby, "gatsby"),
        (Framework::Angular, "@angular/core"),
        (Framework::Fastify, "fastify"),
        (Framework::Koa, "koa"),
        (Framework::Hapi, "@hapi/hapi"),
        (Framework::Express, "express"),
        (Framework::Vite, "vite"),
    ]
    .into_iter()
    .find(|(_, dep)| has_dep(&manifest, dep));
    service.framework = framework.map(|(f, _)| f);
    if let Some((_, dep)) = framework {
        ctx.note("framework", "package.json", None, &format!("depends on {dep}"));
    }

    if service.framework == Some(Framework::Nextjs) {
        next_standalone(ctx, service);
    }

    let scripts = manifest.get("scripts");
    let script = |name: &str| scripts.and_then(|s| s.get(name)).and_then(Value::as_str).map(str::to_owned);
    let static_build = match service.framework {
        Some(Framework::Vite | Framework::Angular | Framework::Gatsby) => true,
        Some(Framework::Astro) => !has_dep(&manifest, "@astrojs/node"),
        _ => false,
    };
    if script("build").is_some() {
        service.build_command = Some(format!("{} run build", pm_command(pm)));
    }
    if static_build {
        service.start_command = None;
        service.port = None;
        ctx.note("start_command", "package.json", None, "builds to static files; the deployer serves them");
    } else {
        service.start_command = if deno {
            let has_task =
                ["deno.json", "deno.jsonc"].iter().any(|f| ctx.read(f).is_some_and(|t| t.contains("\"start\"")));
            Some(if has_task {
                "deno task start".to_owned()
            } else {
                "deno run --allow-net --allow-env main.ts".to_owned()
            })
        } else if script("start").is_some() {
            ctx.note("start_command", "package.json", None, "has a start script");
            Some(start_script_command(pm))
        } else {
            // A library's `main` is not something to run: only a file that starts a server is.
            let serves = |file: &str| {
                ctx.read(file)
                    .is_some_and(|t| ["listen(", "createServer(", "Bun.serve(", "serve("].iter().any(|c| t.contains(c)))
            };
            let main = manifest
                .get("main")
                .and_then(Value::as_str)
                .map(|m| m.trim_start_matches("./").to_owned())
                .into_iter()
                .chain(["server.js", "index.js", "app.js", "main.js"].iter().map(|f| (*f).to_owned()))
                .find(|f| serves(f));
            main.map(|m| if pm == PackageManager::Bun { format!("bun run {m}") } else { format!("node {m}") })
        };
        let script_port = script("start").as_deref().and_then(super::deploy_config::port_in_command);
        let framework_reads_port = matches!(
            service.framework,
            Some(Framework::Nextjs | Framework::Nuxt | Framework::Remix | Framework::Sveltekit)
        );
        if let Some(port) = script_port {
            ctx.note("port", "package.json", None, "the start script sets the port");
            service.port = Some(port);
        } else if let Some((port, honours, file, line)) = port_in_code(ctx) {
            ctx.note("port", &file, Some(line), if honours { "reads PORT" } else { "listens on a fixed port" });
            service.port = Some(port);
            service.honours_port = honours;
        } else if service.framework.is_some() || service.start_command.is_some() {
            service.port = Some(3000);
        }
        if framework_reads_port {
            service.honours_port = true;
        }
    }
    for dep in runtime_deps(&manifest) {
        ctx.add_system_packages(Language::Javascript, &dep);
    }
}

/// Next.js with `output: 'standalone'` builds a self-contained server (`.next/standalone/server.js`
/// with only the modules it needs), which the Dockerfile runs instead of `next start`.
fn next_standalone(ctx: &mut Ctx, service: &mut Service) {
    static STANDALONE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"output\s*:\s*["'`]standalone["'`]"#).unwrap_or_else(|_| unreachable!("valid regex"))
    });
    for file in ["next.config.js", "next.config.mjs", "next.config.ts", "next.config.cjs"] {
        let Some(text) = ctx.read(file) else { continue };
        if let Some(found) = STANDALONE.find(&text) {
            let line = super::context::line_at(&text, found.start());
            ctx.note("build_output", file, Some(line), "output: 'standalone' builds a self-contained server");
            service.build_output = Some(".next/standalone".to_owned());
            return;
        }
    }
}
