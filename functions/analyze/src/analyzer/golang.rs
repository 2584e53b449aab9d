//! Go: go.mod (module, `go` version, required frameworks), the main package, and the port the
//! server code binds.

use super::context::{Ctx, first_version};
use super::model::{Framework, Language, PackageManager, Service};
use regex::Regex;
use std::sync::LazyLock;

pub fn applies(ctx: &Ctx<'_>) -> bool {
    ctx.exists("go.mod")
}

static MAIN_FUNC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^package main\b[\s\S]*?^func main\(\)").expect("valid regex"));
/// `port := os.Getenv("PORT")` followed by `if port == "" { port = "8080" }`.
static ENV_FALLBACK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"os\.(?:Getenv|LookupEnv)\("PORT"\)[\s\S]{0,200}?(?:==\s*""|!\w+)\s*\{\s*\w+\s*=\s*"?:?(\d{2,5})"#)
        .expect("valid regex")
});
static LITERAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?:ListenAndServe|\.Run|\.Start|\.Listen|Addr:)\s*\(?\s*"(?:0\.0\.0\.0|localhost|127\.0\.0\.1)?:(\d{2,5})""#,
    )
    .expect("valid regex")
});
static READS_PORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"os\.(?:Getenv|LookupEnv)\("PORT"\)"#).expect("valid regex"));
static IMPORTS_NET_HTTP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r#""net/http""#).expect("valid regex"));
static GIN_DEFAULT_RUN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\.Run\(\s*\)").expect("valid regex"));

pub fn detect(ctx: &mut Ctx<'_>, service: &mut Service) {
    service.language = Some(Language::Go);
    service.package_manager = Some(PackageManager::Go);
    let go_mod = ctx.read("go.mod").unwrap_or_default();
    service.runtime_version =
        go_mod.lines().find_map(|l| l.trim().strip_prefix("go ").map(str::to_owned)).and_then(|v| first_version(&v));
    let framework = [
        (Framework::Gin, "github.com/gin-gonic/gin"),
        (Framework::Echo, "github.com/labstack/echo"),
        (Framework::Fiber, "github.com/gofiber/fiber"),
        (Framework::Chi, "github.com/go-chi/chi"),
    ]
    .into_iter()
    .find(|(_, module)| go_mod.contains(module));
    service.framework = match framework {
        Some((f, module)) => {
            ctx.note("framework", "go.mod", None, &format!("requires {module}"));
            Some(f)
        }
        None => ctx.find(&[".go"], &IMPORTS_NET_HTTP).map(|_| Framework::NetHttp),
    };
    // The main package: prefer cmd/server, then the root, then any cmd/*.
    let mut mains: Vec<String> = ctx
        .runtime_files()
        .filter(|f| f.ends_with(".go"))
        .filter(|f| ctx.read(f).is_some_and(|t| MAIN_FUNC.is_match(&t)))
        .map(|f| f.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_owned()))
        .collect();
    mains.sort_by_key(|d| (d != "cmd/server", !d.is_empty(), d.clone()));
    let main_dir = mains.first().cloned();
    if let Some(dir) = &main_dir {
        let target = if dir.is_empty() { ".".to_owned() } else { format!("./{dir}") };
        service.build_command = Some(format!("go build -o app {target}"));
        service.start_command = Some("./app".to_owned());
        ctx.note("start_command", if dir.is_empty() { "go.mod" } else { dir }, None, "the main package");
    }
    if let Some(found) = ctx.find(&[".go"], &ENV_FALLBACK) {
        ctx.note("port", &found.file, Some(found.line), "reads PORT with a fallback");
        service.port = found.value.and_then(|v| v.parse().ok());
        service.honours_port = true;
    } else if let Some(found) = ctx.find(&[".go"], &READS_PORT) {
        ctx.note("port", &found.file, Some(found.line), "reads PORT");
        service.port = Some(8080);
        service.honours_port = true;
    } else if let Some(found) = ctx.find(&[".go"], &LITERAL) {
        ctx.note("port", &found.file, Some(found.line), "listens on a fixed port");
        service.port = found.value.and_then(|v| v.parse().ok());
    } else if service.framework == Some(Framework::Gin) && ctx.find(&[".go"], &GIN_DEFAULT_RUN).is_some() {
        service.port = Some(8080);
    }
}
