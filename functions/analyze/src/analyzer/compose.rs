//! docker-compose files: which services are built from this repository (their build contexts),
//! what each runs (`command:`), which port it publishes, and the env vars it is given
//! (`environment:`). Compose values are development values (hosts like `db`), so they name
//! variables but never become defaults.

use super::repo::Repo;
use serde_norway::Value;

const FILES: &[&str] = &["docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"];

/// One compose service built from the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeService {
    pub name: String,
    /// The build context, relative to the repository root (`""` for the root).
    pub context: String,
    pub command: Option<(String, usize)>,
    /// The container port of the first published port.
    pub port: Option<u16>,
    /// Variable names with the line that sets them.
    pub environment: Vec<(String, usize)>,
    pub file: String,
}

fn line_of(text: &str, needle: &str, after: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(after.saturating_sub(1))
        .find(|(_, l)| l.contains(needle))
        .map_or(after, |(i, _)| i + 1)
}

fn normalize_context(raw: &str) -> String {
    let trimmed = raw.trim().trim_start_matches("./").trim_end_matches('/');
    if trimmed == "." { String::new() } else { trimmed.to_owned() }
}

fn container_port(entry: &Value) -> Option<u16> {
    match entry {
        Value::String(s) => s.rsplit(':').next()?.split('/').next()?.parse().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::Mapping(m) => m.get("target").and_then(|t| t.as_u64()).and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

fn command_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Sequence(parts) => Some(parts.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(" ")),
        _ => None,
    }
}

/// The services of the repository's compose file that are built from a directory of it.
pub fn read(repo: &Repo) -> Vec<ComposeService> {
    let Some(file) = FILES.iter().find(|f| repo.exists(f)) else { return Vec::new() };
    let Some(text) = repo.read(file) else { return Vec::new() };
    let doc: Value = match serde_norway::from_str(&text) {
        Ok(doc) => doc,
        Err(e) => {
            repo.warn(format!("{file} is not valid YAML ({e}); its services were not read"));
            return Vec::new();
        }
    };
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else { return Vec::new() };
    let mut out = Vec::new();
    for (name, service) in services {
        let Some(name) = name.as_str() else { continue };
        let context = match service.get("build") {
            Some(Value::String(context)) => normalize_context(context),
            Some(build @ Value::Mapping(_)) => {
                normalize_context(build.get("context").and_then(Value::as_str).unwrap_or("."))
            }
            _ => continue, // an image from a registry: not ours to deploy
        };
        let header = line_of(&text, &format!("{name}:"), 1);
        let environment = match service.get("environment") {
            Some(Value::Mapping(vars)) => vars.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect(),
            Some(Value::Sequence(vars)) => vars
                .iter()
                .filter_map(|v| v.as_str())
                .map(|v| v.split('=').next().unwrap_or(v).trim().to_owned())
                .collect(),
            _ => Vec::new(),
        };
        let environment = environment.into_iter().map(|n| (n.clone(), line_of(&text, &n, header))).collect();
        out.push(ComposeService {
            name: name.to_owned(),
            context,
            command: service.get("command").and_then(command_text).map(|c| (c, line_of(&text, "command:", header))),
            port: service.get("ports").and_then(Value::as_sequence).and_then(|p| p.first()).and_then(container_port),
            environment,
            file: (*file).to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_built_here_with_their_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("docker-compose.yml"),
            "services:\n  api:\n    build: ./api\n    command: [\"uvicorn\", \"main:app\"]\n    ports:\n      - \"8080:8000\"\n    environment:\n      - DATABASE_URL=postgres://db/app\n      - DEBUG\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_PASSWORD: x\n",
        )
        .expect("write");
        let repo = Repo::scan(dir.path(), super::super::repo::Limits::default()).expect("scan");
        let services = read(&repo);
        assert_eq!(services.len(), 1, "image-only services are not ours");
        let api = &services[0];
        assert_eq!((api.context.as_str(), api.port), ("api", Some(8000)));
        assert_eq!(api.command.as_ref().map(|c| c.0.as_str()), Some("uvicorn main:app"));
        assert_eq!(api.environment, [("DATABASE_URL".to_owned(), 8), ("DEBUG".to_owned(), 9)]);
    }

    #[test]
    fn malformed_yaml_is_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("compose.yaml"), "services: [unclosed").expect("write");
        let repo = Repo::scan(dir.path(), super::super::repo::Limits::default()).expect("scan");
        assert!(read(&repo).is_empty());
        assert!(repo.take_warnings().iter().any(|w| w.contains("compose.yaml is not valid YAML")));
    }
}
