//! The repository's own deploy configuration, which wins over conventions: its Dockerfile
//! (`FROM`, `EXPOSE`, `ENV PORT`, `CMD`/`ENTRYPOINT`) and its Procfile's `web:` process.

use devgem_common::dockerfile::{Command, logical_lines};
use regex::Regex;
use std::sync::LazyLock;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerfileFacts {
    /// The last stage's base image.
    pub base_image: Option<String>,
    pub exposed_port: Option<(u16, usize)>,
    pub env_port: Option<(u16, usize)>,
    /// `ENTRYPOINT` and `CMD` of the last stage joined as a shell-style string, with its line.
    pub start_command: Option<(String, usize)>,
}

/// What a Dockerfile says, read leniently: a repository's Dockerfile that the strict parser
/// (`devgem_common::dockerfile::parse`) refuses is still read as far as it goes.
pub fn read_dockerfile(text: &str) -> DockerfileFacts {
    let mut facts = DockerfileFacts::default();
    let mut entrypoint: Option<(String, usize)> = None;
    let mut cmd: Option<(String, usize)> = None;
    for (line_no, line) in logical_lines(text) {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
        let args = args.trim();
        match instruction.to_ascii_uppercase().as_str() {
            "FROM" => {
                // A new stage resets what the final image runs.
                let image = args.split_whitespace().find(|w| !w.starts_with("--")).unwrap_or_default();
                facts = DockerfileFacts { base_image: Some(image.to_owned()), ..DockerfileFacts::default() };
                entrypoint = None;
                cmd = None;
            }
            "EXPOSE" => {
                let first = args.split_whitespace().next().unwrap_or_default();
                if let Ok(port) = first.split('/').next().unwrap_or_default().parse::<u16>() {
                    facts.exposed_port = Some((port, line_no));
                }
            }
            "ENV" => {
                static PORT_ENV: LazyLock<Regex> =
                    LazyLock::new(|| Regex::new(r#"(?:^|\s)PORT(?:=|\s+)"?(\d{2,5})"?"#).expect("valid regex"));
                if let Some(port) = PORT_ENV.captures(args).and_then(|c| c[1].parse().ok()) {
                    facts.env_port = Some((port, line_no));
                }
            }
            "ENTRYPOINT" => entrypoint = Some((Command::parse(args).text(), line_no)),
            "CMD" => cmd = Some((Command::parse(args).text(), line_no)),
            _ => {}
        }
    }
    facts.start_command = match (entrypoint, cmd) {
        (Some((e, line)), Some((c, _))) => Some((format!("{e} {c}"), line)),
        (Some(e), None) => Some(e),
        (None, Some(c)) => Some(c),
        (None, None) => None,
    };
    facts
}

/// The `web:` process of a Procfile, with its line.
pub fn procfile_web(text: &str) -> Option<(String, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let (name, command) = line.split_once(':')?;
        (name.trim() == "web").then(|| (command.trim().to_owned(), i + 1))
    })
}

/// A port a start command names explicitly: `--port 8000`, `-p 4000`, `-b 0.0.0.0:8000`,
/// `--bind :5000`, `--server.port 8501`, `-Dserver.port=9000`. `None` when it uses `$PORT`.
pub fn port_in_command(command: &str) -> Option<u16> {
    static PORT_FLAG: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?:--port|-p|--server\.port|-Dserver\.port|--http\.port|--listen)[=\s]+(\d{2,5})\b|(?:-b|--bind|--host|--listen)[=\s]+\S*:(\d{2,5})\b|(?:0\.0\.0\.0|localhost|127\.0\.0\.1|\[::\]):(\d{2,5})\b")
            .expect("valid regex")
    });
    PORT_FLAG.captures(command).and_then(|c| c.iter().skip(1).flatten().next().and_then(|m| m.as_str().parse().ok()))
}

/// Whether a command takes its port from the environment.
pub fn uses_port_env(command: &str) -> bool {
    command.contains("$PORT") || command.contains("${PORT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_last_stage_wins_and_forms_are_joined() {
        let text = "FROM node:20 AS build\nEXPOSE 9999\nCMD [\"node\", \"x\"]\n\nFROM python:3.12-slim\n# comment\nENV PORT=8000 \\\n    OTHER=1\nEXPOSE 8000/tcp\nENTRYPOINT [\"gunicorn\"]\nCMD [\"-b\", \"0.0.0.0:8000\", \"app:app\"]\n";
        let facts = read_dockerfile(text);
        assert_eq!(facts.base_image.as_deref(), Some("python:3.12-slim"));
        assert_eq!(facts.exposed_port, Some((8000, 9)));
        assert_eq!(facts.env_port, Some((8000, 7)));
        assert_eq!(facts.start_command, Some(("gunicorn -b 0.0.0.0:8000 app:app".to_owned(), 10)));
        let shell = read_dockerfile("FROM x\nCMD [\"sh\", \"-c\", \"uvicorn main:app --port $PORT\"]");
        assert_eq!(shell.start_command.map(|c| c.0).as_deref(), Some("uvicorn main:app --port $PORT"));
    }

    #[test]
    fn ports_in_commands() {
        assert_eq!(port_in_command("gunicorn -b 0.0.0.0:8000 app:app"), Some(8000));
        assert_eq!(port_in_command("uvicorn main:app --host 0.0.0.0 --port 8080"), Some(8080));
        assert_eq!(port_in_command("next start -p 4000"), Some(4000));
        assert_eq!(port_in_command("streamlit run app.py --server.port 8501"), Some(8501));
        assert_eq!(port_in_command("gunicorn --bind 0.0.0.0:$PORT app:app"), None);
        assert!(uses_port_env("gunicorn --bind 0.0.0.0:$PORT app:app"));
        assert_eq!(procfile_web("release: x\nweb: gunicorn app:app\n"), Some(("gunicorn app:app".to_owned(), 2)));
    }
}
