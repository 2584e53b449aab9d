//! Environment variables the app reads: found in runtime code and the config it loads, by
//! per-language patterns (docs/analyzer.md, Env vars). Tests, CI and tooling are excluded.

use super::context::line_at;
use super::model::EnvVar;
use super::repo::{Repo, is_non_runtime};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Names the runtime sets itself: never asked of the user.
const RUNTIME_SET: &[&str] = &["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "HOSTNAME", "HOME", "PATH"];

/// One read of a variable in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    name: String,
    fallback: Fallback,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fallback {
    /// Read with no fallback: the app needs it.
    None,
    /// A literal fallback.
    Literal(String),
    /// Optional with a fallback that is not a literal (an expression, `None`, `nil`).
    Other,
    /// Named by the deploy configuration (compose `environment:`), not read in code we saw.
    Given,
}

/// A pattern: group 1 is the name, group 2 (if any) the fallback expression.
struct Pattern {
    regex: Regex,
    /// Whether a missing group 2 still means the read is optional (e.g. `ENV["X"] || ...` is
    /// checked separately; `os.environ.get` without a default returns None).
    required_without_fallback: bool,
    /// The fallback is plain text (config placeholders), not a code expression.
    literal_fallback: bool,
}

fn pattern(re: &str) -> Pattern {
    Pattern {
        regex: Regex::new(re).expect("valid env pattern"),
        required_without_fallback: true,
        literal_fallback: false,
    }
}

/// What follows a read as a fallback: `|| x`, `?? x`, `.unwrap_or("x")`, `or "x"`.
static TRAILING_FALLBACK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^\s*\)?\s*\.orElse(?:Get)?\(\s*([^)]*)|^\s*\{\s*([^}\s][^}]*?)\s*\}|^\s*(?:\|\||\?\?|\bor\b|\?:)\s*([^\s;,)\]}]+(?:[ \t]+[^\s;,)\]}]+)?)|^\s*\.unwrap_or(?:_else)?\(\s*(?:\|[^|]*\|\s*)?("[^"]*"|\d+|[^)]*)|^\s*\.unwrap_or_default\(\)"#)
        .expect("valid regex")
});

static PYTHON: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\b(?:os\.)?environ\[\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\]"#),
        pattern(r#"\b(?:os\.)?environ\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*(?:,\s*([^)]+?))?\s*\)"#),
        pattern(r#"\bos\.getenv\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*(?:,\s*([^)]+?))?\s*\)"#),
        pattern(r#"\bconfig\(\s*["']([A-Z_][A-Z0-9_]*)["']\s*(?:,\s*default\s*=\s*([^,)]+))?"#),
        pattern(
            r#"\benv(?:\.(?:str|int|bool|float|list|url|db))?\(\s*["']([A-Z_][A-Z0-9_]*)["']\s*(?:,\s*default\s*=\s*([^,)]+))?"#,
        ),
    ]
});

static JAVASCRIPT: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\bprocess\.env\.([A-Za-z_][A-Za-z0-9_]*)"#),
        pattern(r#"\bprocess\.env\[\s*["'`]([A-Za-z_][A-Za-z0-9_]*)["'`]\s*\]"#),
        pattern(r#"\bDeno\.env\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\)"#),
        pattern(r#"\bBun\.env\.([A-Za-z_][A-Za-z0-9_]*)"#),
    ]
});

static GO: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\bos\.Getenv\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)"#),
        Pattern {
            regex: Regex::new(r#"\bos\.LookupEnv\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)"#).expect("valid"),
            required_without_fallback: false,
            literal_fallback: false,
        },
    ]
});

static JVM: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\bSystem\.getenv\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)"#),
        pattern(r#"\bSystem\.getenv\(\)\s*\[\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\]"#),
    ]
});

/// Config files the app loads: Spring/Micronaut/Quarkus `${X:default}`, Symfony `%env(X)%`, and
/// ERB `ENV[...]` in Rails' YAML.
static CONFIG_FILES: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        Pattern { literal_fallback: true, ..pattern(r#"\$\{([A-Z_][A-Z0-9_]*)(?::([^}]*))?\}"#) },
        pattern(r#"%env\((?:[a-z]+:)*([A-Z_][A-Z0-9_]*)\)%"#),
        pattern(r#"\bENV\[\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\]"#),
        pattern(r#"\bENV\.fetch\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*(?:,\s*([^)]+?))?\s*\)"#),
    ]
});

static RUBY: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\bENV\[\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\]"#),
        pattern(r#"\bENV\.fetch\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*(?:,\s*([^)]+?))?\s*\)"#),
    ]
});

static PHP: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\benv\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*(?:,\s*([^)]+?))?\s*\)"#),
        pattern(r#"\bgetenv\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\)"#),
        pattern(r#"\$_(?:ENV|SERVER)\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]"#),
    ]
});

static RUST: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\benv::var(?:_os)?\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)"#),
        pattern(r#"\benv\s*=\s*"([A-Z_][A-Z0-9_]*)""#),
    ]
});

static CSHARP: LazyLock<Vec<Pattern>> =
    LazyLock::new(|| vec![pattern(r#"\bGetEnvironmentVariable\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)"#)]);

static ELIXIR: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(r#"\bSystem\.get_env\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*(?:,\s*([^)]+?))?\s*\)"#),
        pattern(r#"\bSystem\.fetch_env!\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)"#),
    ]
});

/// Which patterns apply to a file, by its name.
fn patterns_for(path: &str) -> Option<&'static [Pattern]> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    Some(match ext {
        "py" => &PYTHON,
        "js" | "mjs" | "cjs" | "jsx" | "ts" | "mts" | "cts" | "tsx" | "vue" | "svelte" | "astro" => &JAVASCRIPT,
        "go" => &GO,
        "java" | "kt" | "kts" | "scala" | "groovy" => &JVM,
        "properties" | "yml" | "yaml"
            if path.contains("src/main/resources/")
                || path.starts_with("config/")
                || path.contains("/config/")
                || file.starts_with("application") =>
        {
            &CONFIG_FILES
        }
        "rb" | "ru" | "rake" => &RUBY,
        "php" => &PHP,
        "rs" => &RUST,
        "cs" => &CSHARP,
        "ex" | "exs" => &ELIXIR,
        _ => return None,
    })
}

/// Reads a fallback expression as a literal when it is one.
fn classify_fallback(expr: &str) -> Fallback {
    let expr = expr.trim().trim_end_matches(',').trim();
    // `X || raise "..."`, `?? throw`, `.unwrap_or_else(|_| panic!(..))`: no fallback at all.
    if ["raise", "throw", "panic", "fail", "abort", "error("]
        .iter()
        .any(|w| expr.starts_with(w) || expr.contains("panic!"))
    {
        return Fallback::None;
    }
    let unquoted = |s: &str| {
        let s = s.trim();
        for q in ['"', '\'', '`'] {
            if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
                return Some(s[1..s.len() - 1].to_owned());
            }
        }
        None
    };
    if let Some(s) = unquoted(expr) {
        return Fallback::Literal(s);
    }
    // `String::from("x")`, `"x".to_string()`, `str("x")`, `int("8000")`
    static WRAPPED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"^(?:[\w:]+\()?\s*(["'])([^"']*)["']\s*\)?(?:\.\w+\(\))?$"#).expect("valid regex")
    });
    if let Some(c) = WRAPPED.captures(expr) {
        return Fallback::Literal(c[2].to_owned());
    }
    if !expr.is_empty() && expr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Fallback::Literal(expr.to_owned());
    }
    if matches!(expr, "true" | "false" | "True" | "False") {
        return Fallback::Literal(expr.to_ascii_lowercase());
    }
    Fallback::Other
}

fn scan_text(path: &str, text: &str, patterns: &[Pattern], reads: &mut Vec<Read>) {
    for p in patterns {
        for caps in p.regex.captures_iter(text) {
            let (Some(whole), Some(name)) = (caps.get(0), caps.get(1)) else { continue };
            let fallback = match caps.get(2) {
                Some(expr) if p.literal_fallback => Fallback::Literal(expr.as_str().to_owned()),
                Some(expr) if !expr.as_str().trim().is_empty() => classify_fallback(expr.as_str()),
                _ => match TRAILING_FALLBACK.captures(&text[whole.end()..]) {
                    Some(trailing) => match trailing.iter().skip(1).flatten().next() {
                        Some(expr) => classify_fallback(expr.as_str()),
                        None => Fallback::Other,
                    },
                    None if p.required_without_fallback => Fallback::None,
                    None => Fallback::Other,
                },
            };
            reads.push(Read {
                name: name.as_str().to_owned(),
                fallback,
                source: format!("{path}:{}", line_at(text, whole.start())),
            });
        }
    }
    if patterns.as_ptr() == GO.as_ptr() {
        apply_go_fallbacks(path, text, reads);
    }
    if patterns.as_ptr() == JAVASCRIPT.as_ptr() {
        scan_js_destructuring(path, text, reads);
    }
    if patterns.as_ptr() == PYTHON.as_ptr() {
        scan_pydantic_settings(path, text, reads);
    }
}

/// Go's idiom for a default: `v := os.Getenv("X")` then `if v == "" { v = "lit" }`, or
/// `v, ok := os.LookupEnv("X")` then `if !ok { v = "lit" }`.
fn apply_go_fallbacks(path: &str, text: &str, reads: &mut [Read]) {
    static ASSIGN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(\w+)(?:\s*,\s*(\w+))?\s*:?=\s*os\.(?:Getenv|LookupEnv)\(\s*"(\w+)"\s*\)"#).expect("valid regex")
    });
    for caps in ASSIGN.captures_iter(text) {
        let (Some(whole), var, ok, name) = (caps.get(0), &caps[1], caps.get(2).map(|m| m.as_str()), &caps[3]) else {
            continue;
        };
        let after = &text[whole.end()..text.len().min(whole.end() + 300)];
        let check = match ok {
            Some(ok) => format!(r#"if\s+!{}\s*\{{\s*{}\s*=\s*"([^"]*)""#, regex::escape(ok), regex::escape(var)),
            None => format!(r#"if\s+{0}\s*==\s*""\s*\{{\s*{0}\s*=\s*"([^"]*)""#, regex::escape(var)),
        };
        let Ok(check) = Regex::new(&check) else { continue };
        if let Some(default) = check.captures(after) {
            let source = format!("{path}:{}", line_at(text, whole.start()));
            for read in reads.iter_mut().filter(|r| r.name == name && r.source == source) {
                read.fallback = Fallback::Literal(default[1].to_owned());
            }
        }
    }
}

/// `const { A, B = "x", C: c } = process.env`
fn scan_js_destructuring(path: &str, text: &str, reads: &mut Vec<Read>) {
    static DESTRUCTURE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\{([^{}]*)\}\s*=\s*process\.env\b").expect("valid regex"));
    for caps in DESTRUCTURE.captures_iter(text) {
        let (Some(whole), Some(body)) = (caps.get(0), caps.get(1)) else { continue };
        for item in body.as_str().split(',') {
            let (binding, default) = match item.split_once('=') {
                Some((b, d)) => (b, Some(d)),
                None => (item, None),
            };
            let name = binding.split(':').next().unwrap_or("").trim();
            if name.is_empty()
                || name.starts_with("...")
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                continue;
            }
            reads.push(Read {
                name: name.to_owned(),
                fallback: default.map_or(Fallback::None, classify_fallback),
                source: format!("{path}:{}", line_at(text, whole.start())),
            });
        }
    }
}

/// Fields of a pydantic `BaseSettings` class: each is an env var (uppercased, with the class's
/// `env_prefix`); a field with a default is optional.
fn scan_pydantic_settings(path: &str, text: &str, reads: &mut Vec<Read>) {
    static CLASS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?m)^class\s+\w+\s*\([^)]*BaseSettings[^)]*\)\s*:").expect("valid regex"));
    static FIELD: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^(\s+)([a-z_][a-z0-9_]*)\s*:\s*[^=]+?(?:=\s*(.+?))?\s*(?:#.*)?$").expect("valid regex")
    });
    static PREFIX: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"env_prefix\s*=\s*["']([^"']*)["']"#).expect("valid regex"));
    for class in CLASS.find_iter(text) {
        let body_start = class.end();
        let body: Vec<&str> = text[body_start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim().is_empty() || l.starts_with(' ') || l.starts_with('\t'))
            .collect();
        let body_text = body.join("\n");
        let prefix = PREFIX.captures(&body_text).map(|c| c[1].to_ascii_uppercase()).unwrap_or_default();
        let first_line = line_at(text, body_start) + 1;
        let mut indent: Option<usize> = None;
        for (i, line) in body.iter().enumerate() {
            let Some(caps) = FIELD.captures(line) else { continue };
            let depth = caps[1].len();
            if *indent.get_or_insert(depth) != depth || &caps[2] == "model_config" {
                continue;
            }
            let fallback = caps.get(3).map_or(Fallback::None, |d| classify_fallback(d.as_str()));
            reads.push(Read {
                name: format!("{prefix}{}", caps[2].to_ascii_uppercase()),
                fallback,
                source: format!("{path}:{}", first_line + i),
            });
        }
    }
}

/// Entries of `.env.example`-style files: `NAME=value` (value = default; empty = required).
fn scan_env_example(path: &str, text: &str, reads: &mut Vec<Read>) {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches("export ").trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else { continue };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let value = value.split(" #").next().unwrap_or("").trim().trim_matches(['"', '\'']);
        let fallback = if value.is_empty() { Fallback::None } else { Fallback::Literal(value.to_owned()) };
        reads.push(Read { name: name.to_owned(), fallback, source: format!("{path}:{}", i + 1) });
    }
}

fn is_env_example(file: &str) -> bool {
    matches!(file, ".env.example" | ".env.sample" | ".env.template" | ".env.dist" | "env.example" | ".env.defaults")
}

/// Whether a name looks like it holds a secret (docs/analyzer.md, Env vars).
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    const WORDS: &[&str] = &["KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "PRIVATE", "CREDENTIALS", "AUTH"];
    if WORDS.iter().any(|w| upper.contains(w)) {
        return true;
    }
    const STORES: &[&str] = &[
        "DATABASE", "DB", "POSTGRES", "PG", "MYSQL", "MARIADB", "MONGO", "REDIS", "AMQP", "RABBIT", "SENTRY", "BROKER",
        "CACHE", "ELASTIC", "SQL", "CELERY", "KAFKA", "NATS", "MEMCACHE", "JDBC",
    ];
    let is_locator = ["_URL", "_DSN", "_URI", "_URLS"].iter().any(|s| upper.ends_with(s)) || upper == "DSN";
    is_locator && STORES.iter().any(|s| upper.split('_').any(|part| part.starts_with(s)))
}

/// Scans the runtime files under `app_dir` (except those under `exclude`: other services) and
/// returns the variables, sorted by name. `given` are variables the deploy configuration sets
/// (compose `environment:`), as (name, `path:line`): they name a variable, never its default.
pub fn scan(repo: &Repo, app_dir: &str, exclude: &[String], given: &[(String, String)]) -> Vec<EnvVar> {
    let dir = if app_dir == "." { "" } else { app_dir };
    let mut reads: Vec<Read> = given
        .iter()
        .map(|(name, source)| Read { name: name.clone(), fallback: Fallback::Given, source: source.clone() })
        .collect();
    for file in repo.files_under(dir) {
        let rel = if dir.is_empty() { file.path.as_str() } else { &file.path[dir.len() + 1..] };
        if exclude.iter().any(|e| file.path.starts_with(&format!("{e}/"))) {
            continue;
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if is_env_example(name) {
            if let Some(text) = repo.read(&file.path) {
                scan_env_example(&file.path, &text, &mut reads);
            }
            continue;
        }
        if is_non_runtime(rel) {
            continue;
        }
        let Some(patterns) = patterns_for(&file.path) else { continue };
        if let Some(text) = repo.read(&file.path) {
            scan_text(&file.path, &text, patterns, &mut reads);
        }
    }
    merge(reads)
}

fn merge(reads: Vec<Read>) -> Vec<EnvVar> {
    let mut by_name: BTreeMap<String, Vec<Read>> = BTreeMap::new();
    for read in reads {
        if RUNTIME_SET.contains(&read.name.as_str()) {
            continue;
        }
        by_name.entry(read.name.clone()).or_default().push(read);
    }
    by_name
        .into_iter()
        .map(|(name, reads)| {
            let default = reads.iter().find_map(|r| match &r.fallback {
                Fallback::Literal(v) => Some(v.clone()),
                _ => None,
            });
            // Required when the code reads it without a fallback; a variable only the deploy
            // configuration names may be read by a library we cannot see, so it is optional.
            let code_reads: Vec<&Read> = reads.iter().filter(|r| r.fallback != Fallback::Given).collect();
            let required = !code_reads.is_empty() && code_reads.iter().all(|r| r.fallback == Fallback::None);
            let mut sources: Vec<String> = reads.into_iter().map(|r| r.source).collect();
            sources.sort_by(|a, b| natural_source_order(a, b));
            sources.dedup();
            EnvVar { secret: looks_secret(&name), required, default, name, sources }
        })
        .collect()
}

/// `path:line` sorted by path, then numerically by line.
fn natural_source_order(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| {
        let (path, line) = s.rsplit_once(':').unwrap_or((s, "0"));
        (path.to_owned(), line.parse::<usize>().unwrap_or(0))
    };
    split(a).cmp(&split(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads_of(path: &str, text: &str) -> Vec<EnvVar> {
        let mut reads = Vec::new();
        scan_text(path, text, patterns_for(path).expect("known type"), &mut reads);
        merge(reads)
    }

    fn summary(vars: &[EnvVar]) -> Vec<(String, bool, Option<String>)> {
        vars.iter().map(|v| (v.name.clone(), v.required, v.default.clone())).collect()
    }

    #[test]
    fn python_reads() {
        let text = "import os\nDB = os.environ['DATABASE_URL']\nDEBUG = os.environ.get(\"DEBUG\", \"false\")\nPORT = int(os.getenv('PORT', '5000'))\nX = os.getenv('SENTRY_DSN')\nY = os.environ.get('OPT', None)\n";
        let vars = reads_of("app.py", text);
        assert_eq!(
            summary(&vars),
            vec![
                ("DATABASE_URL".into(), true, None),
                ("DEBUG".into(), false, Some("false".into())),
                ("OPT".into(), false, None),
                ("SENTRY_DSN".into(), true, None),
            ]
        );
        assert_eq!(vars[0].sources, ["app.py:2"]);
        assert!(vars[0].secret && vars[3].secret && !vars[1].secret);
    }

    #[test]
    fn pydantic_settings_fields() {
        let text = "from pydantic_settings import BaseSettings\n\nclass Settings(BaseSettings):\n    database_url: str\n    api_key: str = \"\"\n    debug: bool = False\n\n    model_config = SettingsConfigDict(env_file='.env')\n\nsettings = Settings()\n";
        let vars = reads_of("config.py", text);
        assert_eq!(
            summary(&vars),
            vec![
                ("API_KEY".into(), false, Some("".into())),
                ("DATABASE_URL".into(), true, None),
                ("DEBUG".into(), false, Some("false".into())),
            ]
        );
        assert_eq!(vars[1].sources, ["config.py:4"]);
    }

    #[test]
    fn javascript_reads() {
        let text = "const port = process.env.PORT || 3000;\nconst db = process.env.DATABASE_URL;\nconst level = process.env.LOG_LEVEL ?? 'info';\nconst { STRIPE_KEY, REGION = 'eu' } = process.env;\nconst x = process.env['API_TOKEN'];\n";
        let vars = reads_of("src/server.js", text);
        assert_eq!(
            summary(&vars),
            vec![
                ("API_TOKEN".into(), true, None),
                ("DATABASE_URL".into(), true, None),
                ("LOG_LEVEL".into(), false, Some("info".into())),
                ("REGION".into(), false, Some("eu".into())),
                ("STRIPE_KEY".into(), true, None),
            ]
        );
    }

    #[test]
    fn other_languages() {
        assert_eq!(
            summary(&reads_of("main.go", "x := os.Getenv(\"REDIS_URL\")")),
            vec![("REDIS_URL".into(), true, None)]
        );
        assert_eq!(
            summary(&reads_of("src/main.rs", "let p = std::env::var(\"APP_MODE\").unwrap_or(\"dev\".to_string());")),
            vec![("APP_MODE".into(), false, Some("dev".into()))]
        );
        assert_eq!(
            summary(&reads_of("config/app.php", "'key' => env('APP_KEY'),\n'name' => env('APP_NAME', 'Laravel'),")),
            vec![("APP_KEY".into(), true, None), ("APP_NAME".into(), false, Some("Laravel".into()))]
        );
        assert_eq!(
            summary(&reads_of(
                "src/main/resources/application.properties",
                "spring.datasource.url=${DATABASE_URL}\nserver.port=${PORT:8080}\nx=${MODE:prod}"
            )),
            vec![("DATABASE_URL".into(), true, None), ("MODE".into(), false, Some("prod".into()))]
        );
        assert_eq!(
            summary(&reads_of(
                "config/runtime.exs",
                "url = System.get_env(\"DATABASE_URL\") || raise \"x\"\nhost = System.get_env(\"PHX_HOST\", \"example.com\")"
            )),
            vec![("DATABASE_URL".into(), true, None), ("PHX_HOST".into(), false, Some("example.com".into()))]
        );
    }

    #[test]
    fn clap_env_attributes() {
        let text = "#[derive(Parser)]\nstruct Args {\n    #[arg(long, env = \"DATABASE_URL\")]\n    db: String,\n    #[arg(long, env = \"LOG_LEVEL\", default_value = \"info\")]\n    level: String,\n}\n";
        let names: Vec<String> = reads_of("src/main.rs", text).into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["DATABASE_URL", "LOG_LEVEL"]);
    }

    #[test]
    fn secrets() {
        for s in [
            "API_KEY",
            "JWT_SECRET",
            "GITHUB_TOKEN",
            "DB_PASSWORD",
            "DATABASE_URL",
            "REDIS_URL",
            "MONGO_URI",
            "SENTRY_DSN",
        ] {
            assert!(looks_secret(s), "{s}");
        }
        for s in ["DEBUG", "LOG_LEVEL", "PUBLIC_URL", "APP_NAME", "NODE_ENV"] {
            assert!(!looks_secret(s), "{s}");
        }
    }
}
