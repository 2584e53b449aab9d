//! Python: dependencies from requirements files, pyproject.toml (PEP 621, Poetry, PDM) and
//! Pipfile; the framework and the module that holds the app; port and start command by the
//! rules of docs/analyzer.md.

use super::context::{Ctx, first_version, line_at};
use super::model::{Framework, Language, PackageManager, Service};
use regex::Regex;
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// Whether `ctx`'s directory is a Python app.
pub fn applies(ctx: &Ctx<'_>) -> bool {
    ["requirements.txt", "pyproject.toml", "Pipfile", "setup.py", "manage.py", "uv.lock", "poetry.lock"]
        .iter()
        .any(|f| ctx.exists(f))
        || ctx.top_level_files().any(|f| f.ends_with(".py"))
}

/// Parses a PEP 508 requirement down to its normalized name.
fn requirement_name(line: &str) -> Option<String> {
    if let Some(egg) = line.split("#egg=").nth(1) {
        return Some(super::system_packages::normalize(egg.split(['&', ' ']).next().unwrap_or(egg)));
    }
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() || line.starts_with('-') || line.contains("://") {
        return None;
    }
    let end =
        line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')).unwrap_or(line.len());
    let name = &line[..end];
    (!name.is_empty()).then(|| super::system_packages::normalize(name))
}

struct Manifests {
    deps: BTreeSet<String>,
    package_manager: PackageManager,
    runtime_version: Option<String>,
}

fn read_manifests(ctx: &mut Ctx<'_>) -> Manifests {
    let mut deps = BTreeSet::new();
    let mut runtime_version = None;
    let mut poetry = false;
    let mut pdm = false;

    let requirement_files: Vec<String> = ctx
        .top_level_files()
        .filter(|f| {
            let lower = f.to_ascii_lowercase();
            lower.starts_with("requirements")
                && lower.ends_with(".txt")
                && !["dev", "test", "lint", "doc"].iter().any(|w| lower.contains(w))
        })
        .map(str::to_owned)
        .collect();
    for file in &requirement_files {
        if let Some(text) = ctx.read(file) {
            for (i, line) in text.lines().enumerate() {
                if let Some(name) = requirement_name(line) {
                    ctx.note("dependencies", file, Some(i + 1), &format!("requires {name}"));
                    deps.insert(name);
                }
            }
        }
    }
    if let Some(text) = ctx.read("pyproject.toml") {
        match text.parse::<toml::Table>() {
            Ok(doc) => {
                if let Some(project) = doc.get("project").and_then(|v| v.as_table()) {
                    for dep in project.get("dependencies").and_then(|v| v.as_array()).into_iter().flatten() {
                        if let Some(name) = dep.as_str().and_then(requirement_name) {
                            deps.insert(name);
                        }
                    }
                    if let Some(v) = project.get("requires-python").and_then(|v| v.as_str()) {
                        runtime_version = first_version(v);
                    }
                }
                let tool = doc.get("tool").and_then(|v| v.as_table());
                if let Some(poetry_deps) =
                    tool.and_then(|t| t.get("poetry")).and_then(|p| p.get("dependencies")).and_then(|d| d.as_table())
                {
                    poetry = true;
                    for (name, spec) in poetry_deps {
                        if name == "python" {
                            if let Some(v) = spec.as_str() {
                                runtime_version = runtime_version.or_else(|| first_version(v));
                            }
                        } else {
                            deps.insert(super::system_packages::normalize(name));
                        }
                    }
                }
                pdm = tool.is_some_and(|t| t.contains_key("pdm"));
            }
            Err(e) => ctx.doubt(format!(
                "{} is not valid TOML ({}); its dependencies were not read",
                ctx.path("pyproject.toml"),
                first_line(&e.to_string())
            )),
        }
    }
    if let Some(text) = ctx.read("Pipfile") {
        match text.parse::<toml::Table>() {
            Ok(doc) => {
                for name in doc.get("packages").and_then(|v| v.as_table()).into_iter().flat_map(|t| t.keys()) {
                    deps.insert(super::system_packages::normalize(name));
                }
                if let Some(v) = doc.get("requires").and_then(|r| r.get("python_version")).and_then(|v| v.as_str()) {
                    runtime_version = runtime_version.or_else(|| first_version(v));
                }
            }
            Err(e) => ctx.doubt(format!("{} is not valid TOML ({})", ctx.path("Pipfile"), first_line(&e.to_string()))),
        }
    }
    if let Some(text) = ctx.read(".python-version") {
        runtime_version = text.lines().next().and_then(first_version).or(runtime_version);
    } else if let Some(text) = ctx.read("runtime.txt") {
        runtime_version = text.trim().strip_prefix("python-").and_then(first_version).or(runtime_version);
    }

    let package_manager = if ctx.exists("uv.lock") {
        PackageManager::Uv
    } else if poetry || ctx.exists("poetry.lock") {
        PackageManager::Poetry
    } else if pdm || ctx.exists("pdm.lock") {
        PackageManager::Pdm
    } else if ctx.exists("Pipfile") {
        PackageManager::Pipenv
    } else {
        PackageManager::Pip
    };
    Manifests { deps, package_manager, runtime_version }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Where the app object is: file (relative to the service dir), line, variable.
struct AppSite {
    file: String,
    line: usize,
    var: Option<String>,
}

static APP_VAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^([A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*\w+\s*)?=\s*(Flask|FastAPI|Starlette|Sanic)\(")
        .expect("valid regex")
});

const ENTRY_NAMES: &[&str] = &[
    "app.py",
    "main.py",
    "server.py",
    "application.py",
    "wsgi.py",
    "asgi.py",
    "run.py",
    "api.py",
    "streamlit_app.py",
    "Home.py",
];

/// Python source files of the service, most likely entry points first: shallow files with
/// conventional names.
fn candidate_files(ctx: &Ctx<'_>) -> Vec<String> {
    let mut files: Vec<String> = ctx.runtime_files().filter(|f| f.ends_with(".py")).map(str::to_owned).collect();
    files.sort_by_key(|f| {
        let name = f.rsplit('/').next().unwrap_or(f);
        let rank = ENTRY_NAMES.iter().position(|n| *n == name).unwrap_or(ENTRY_NAMES.len());
        (f.matches('/').count(), rank, f.clone())
    });
    files
}

fn find_site(
    ctx: &Ctx<'_>,
    files: &[String],
    test: impl Fn(&str) -> Option<(usize, Option<String>)>,
) -> Option<AppSite> {
    files.iter().find_map(|file| {
        let text = ctx.read(file)?;
        test(&text).map(|(line, var)| AppSite { file: file.clone(), line, var })
    })
}

fn module_of(file: &str) -> String {
    file.trim_end_matches(".py").replace('/', ".")
}

/// A module-level `app = create_app()` (the application-factory pattern).
static FACTORY_CALL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?m)^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:\w+\.)?(?:create_app|make_app|get_app|build_app|create_application)\(",
    )
    .expect("valid regex")
});

/// The module-level variable holding the app: `app = Flask(...)` or `app = create_app()`, in
/// the most likely entry file first.
fn constructor_site(ctx: &Ctx<'_>, files: &[String], class: &str) -> Option<AppSite> {
    find_site(ctx, files, |text| {
        let direct = APP_VAR
            .captures_iter(text)
            .find(|c| &c[2] == class)
            .map(|c| (c.get(0).map_or(0, |m| m.start()), c[1].to_owned()));
        let factory = || FACTORY_CALL.captures(text).map(|c| (c.get(0).map_or(0, |m| m.start()), c[1].to_owned()));
        direct.or_else(factory).map(|(at, var)| (line_at(text, at), Some(var)))
    })
}

fn import_site(ctx: &Ctx<'_>, files: &[String], needle: &str) -> Option<AppSite> {
    find_site(ctx, files, |text| text.find(needle).map(|at| (line_at(text, at), None)))
}

/// A port the code sets: a literal `port=5000`, or `PORT` from the environment with a fallback.
fn port_in_code(ctx: &Ctx<'_>, files: &[String]) -> Option<(u16, bool, String, usize)> {
    static ENV_PORT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?:environ\.get|getenv)\(\s*["']PORT["']\s*,\s*["']?(\d{2,5})"#).expect("valid regex")
    });
    static LITERAL_PORT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\b(?:port|server_port)\s*=\s*(\d{2,5})\b|\.listen\(\s*(\d{2,5})\s*[,)]").expect("valid regex")
    });
    for file in files {
        let Some(text) = ctx.read(file) else { continue };
        if let Some(c) = ENV_PORT.captures(&text)
            && let Ok(port) = c[1].parse()
        {
            return Some((port, true, file.clone(), line_at(&text, c.get(0).map_or(0, |m| m.start()))));
        }
        if let Some(c) = LITERAL_PORT.captures(&text)
            && let Some(port) = c.iter().skip(1).flatten().next().and_then(|m| m.as_str().parse().ok())
        {
            return Some((port, false, file.clone(), line_at(&text, c.get(0).map_or(0, |m| m.start()))));
        }
    }
    None
}

pub fn detect(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Python);
    let manifests = read_manifests(ctx);
    service.package_manager = Some(manifests.package_manager);
    service.runtime_version = manifests.runtime_version;
    let deps = &manifests.deps;
    let files = candidate_files(ctx);
    let imports = |module: &str| {
        files.iter().any(|f| {
            ctx.read(f)
                .is_some_and(|t| t.contains(&format!("import {module}")) || t.contains(&format!("from {module}")))
        })
    };
    let has = |name: &str| deps.contains(name) || imports(&name.replace('-', "_"));

    let framework = [
        (Framework::Django, "django"),
        (Framework::Fastapi, "fastapi"),
        (Framework::Flask, "flask"),
        (Framework::Sanic, "sanic"),
        (Framework::Starlette, "starlette"),
        (Framework::Aiohttp, "aiohttp"),
        (Framework::Tornado, "tornado"),
        (Framework::Streamlit, "streamlit"),
        (Framework::Gradio, "gradio"),
    ]
    .into_iter()
    .find(|(_, dep)| has(dep))
    .map(|(f, _)| f);
    // aiohttp is also a common HTTP client: count it only when the app serves with it.
    let framework = match framework {
        Some(Framework::Aiohttp)
            if import_site(ctx, &files, "web.run_app(").is_none()
                && import_site(ctx, &files, "web.Application(").is_none() =>
        {
            None
        }
        other => other,
    };
    service.framework = framework;
    if let Some(f) = framework {
        ctx.note(
            "framework",
            "",
            None,
            &format!("depends on {}", serde_json::to_string(&f).unwrap_or_default().trim_matches('"')),
        );
    }

    let (start, default_port, site) = match framework {
        Some(Framework::Django) => {
            let project = ctx.read("manage.py").and_then(|t| {
                static SETTINGS: LazyLock<Regex> = LazyLock::new(|| {
                    Regex::new(r#"DJANGO_SETTINGS_MODULE["']\s*,\s*["']([\w.]+)\.settings"#).expect("valid regex")
                });
                SETTINGS.captures(&t).map(|c| c[1].to_owned())
            });
            let project = project.or_else(|| {
                files.iter().find(|f| f.ends_with("/wsgi.py")).map(|f| module_of(f.trim_end_matches("/wsgi.py")))
            });
            service.build_command = Some("python manage.py collectstatic --noinput".to_owned());
            (project.map(|p| format!("gunicorn {p}.wsgi")), Some(8000), None)
        }
        Some(class @ (Framework::Flask | Framework::Fastapi | Framework::Starlette | Framework::Sanic)) => {
            let (ctor, server, port) = match class {
                Framework::Flask => ("Flask", "gunicorn", 5000),
                Framework::Fastapi => ("FastAPI", "uvicorn", 8000),
                Framework::Starlette => ("Starlette", "uvicorn", 8000),
                _ => ("Sanic", "python", 8000),
            };
            let site = constructor_site(ctx, &files, ctor);
            let start = site.as_ref().map(|s| match (server, &s.var) {
                ("python", _) => format!("python {}", s.file),
                (server, Some(var)) => format!("{server} {}:{var}", module_of(&s.file)),
                (server, None) => format!("{server} {}:app", module_of(&s.file)),
            });
            (start, Some(port), site)
        }
        Some(Framework::Streamlit) => {
            let site = import_site(ctx, &files, "import streamlit");
            (site.as_ref().map(|s| format!("streamlit run {}", s.file)), Some(8501), site)
        }
        Some(Framework::Gradio) => {
            let site = import_site(ctx, &files, "import gradio");
            (site.as_ref().map(|s| format!("python {}", s.file)), Some(7860), site)
        }
        Some(Framework::Aiohttp) => {
            let site = import_site(ctx, &files, "web.run_app(");
            (site.as_ref().map(|s| format!("python {}", s.file)), Some(8080), site)
        }
        Some(Framework::Tornado) => {
            let site = import_site(ctx, &files, ".listen(").or_else(|| import_site(ctx, &files, "import tornado"));
            (site.as_ref().map(|s| format!("python {}", s.file)), None, site)
        }
        _ => {
            let site = import_site(ctx, &files, "if __name__ == \"__main__\"")
                .or_else(|| import_site(ctx, &files, "if __name__ == '__main__'"));
            (site.as_ref().map(|s| format!("python {}", s.file)), None, site)
        }
    };
    if let Some(site) = &site {
        let path = site.file.clone();
        ctx.note("start_command", &path, Some(site.line), "the app object is defined here");
    }
    service.start_command = start;
    match port_in_code(ctx, &files) {
        Some((port, honours, file, line)) if framework != Some(Framework::Streamlit) => {
            ctx.note("port", &file, Some(line), if honours { "reads PORT with a fallback" } else { "sets the port" });
            service.port = Some(port);
            service.honours_port = honours;
        }
        _ => service.port = default_port,
    }
    for dep in deps {
        ctx.add_system_packages(Language::Python, dep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_names() {
        assert_eq!(requirement_name("Flask[async]==3.0.0 ; python_version>'3.8'"), Some("flask".into()));
        assert_eq!(requirement_name("opencv_python>=4"), Some("opencv-python".into()));
        assert_eq!(requirement_name("-r base.txt"), None);
        assert_eq!(requirement_name("git+https://x/y.git#egg=my_pkg"), Some("my-pkg".into()));
        assert_eq!(requirement_name("# comment"), None);
    }
}
