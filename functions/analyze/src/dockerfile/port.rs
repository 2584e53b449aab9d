//! Making the start command listen on `$PORT` on all interfaces (Cloud Run sets 8080), where the
//! framework would otherwise bind localhost or a fixed port. Every rewrite is reported with its
//! reason.

use crate::analyzer::deploy_config::port_in_command;
use crate::analyzer::model::{Framework, Service};
use regex::Regex;
use serde::Serialize;
use std::sync::LazyLock;

/// One change made to the start command, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// How the container will listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Listen {
    /// On `$PORT`, whatever the platform sets.
    Env,
    /// On a port fixed in the app's code; the platform must route to it.
    Fixed { port: u16 },
}

fn strip_flag(command: &str, flags: &[&str]) -> String {
    let mut out = Vec::new();
    let mut skip = false;
    for word in command.split_whitespace() {
        if skip {
            skip = false;
            continue;
        }
        if flags.contains(&word) {
            skip = true;
            continue;
        }
        if flags.iter().any(|f| word.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(word);
    }
    out.join(" ")
}

/// The start command made to listen on `$PORT`, the rewrites made, and how it listens.
pub fn listen_on_port(service: &Service, command: &str) -> (String, Vec<Rewrite>, Listen) {
    let first = command.split_whitespace().next().unwrap_or("");
    let rewritten = match first {
        "gunicorn" => Some((
            format!(
                "gunicorn --bind 0.0.0.0:$PORT {}",
                strip_flag(command, &["-b", "--bind"]).trim_start_matches("gunicorn").trim()
            ),
            "gunicorn binds 127.0.0.1:8000 unless told otherwise",
        )),
        "uvicorn" => Some((
            format!("{} --host 0.0.0.0 --port $PORT", strip_flag(command, &["--host", "--port"])),
            "uvicorn binds 127.0.0.1:8000 unless told otherwise",
        )),
        "streamlit" => Some((
            format!(
                "{} --server.port $PORT --server.address 0.0.0.0",
                strip_flag(command, &["--server.port", "--server.address"])
            ),
            "Streamlit listens on 8501 unless told otherwise",
        )),
        "next" if command.contains(" start") => Some((
            format!("{} -p $PORT", strip_flag(command, &["-p", "--port"])),
            "next start listens on 3000 unless told otherwise",
        )),
        "bundle" if command.contains("rails server") || command.contains("rails s") => Some((
            format!("{} -b 0.0.0.0 -p $PORT", strip_flag(command, &["-b", "-p", "--port", "--binding"])),
            "rails server binds localhost:3000 unless told otherwise",
        )),
        "bundle" if command.contains("rackup") => Some((
            format!("{} -o 0.0.0.0 -p $PORT", strip_flag(command, &["-o", "-p", "--host", "--port"])),
            "rackup listens on localhost:9292 unless told otherwise",
        )),
        "java" => {
            let property = match service.framework {
                Some(Framework::Quarkus) => Some("quarkus.http.port"),
                Some(Framework::Micronaut) => Some("micronaut.server.port"),
                Some(Framework::SpringBoot) => Some("server.port"),
                _ => None,
            };
            property.map(|p| {
                (
                    command.replacen("java ", &format!("java -D{p}=$PORT "), 1),
                    "the server port is a system property of the framework",
                )
            })
        }
        "dotnet" => Some((
            format!("ASPNETCORE_HTTP_PORTS=$PORT {command}"),
            "ASP.NET Core listens on ASPNETCORE_HTTP_PORTS (8080 by default from .NET 8)",
        )),
        _ => None,
    };
    // Only rewrite what does not honour $PORT already. gunicorn, uvicorn and streamlit do not
    // read PORT whatever the app's code does, so their commands are always rewritten.
    let server_ignores_port = matches!(first, "gunicorn" | "uvicorn" | "streamlit");
    if let Some((to, reason)) = rewritten
        && (!service.honours_port || server_ignores_port)
        && !command.contains("$PORT")
    {
        static SPACES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").expect("valid regex"));
        let to = SPACES.replace_all(to.trim(), " ").into_owned();
        return (to.clone(), vec![Rewrite { from: command.to_owned(), to, reason: reason.to_owned() }], Listen::Env);
    }
    if command.contains("$PORT") || service.honours_port {
        return (command.to_owned(), Vec::new(), Listen::Env);
    }
    match service.port.or_else(|| port_in_command(command)) {
        Some(port) => (command.to_owned(), Vec::new(), Listen::Fixed { port }),
        None => (command.to_owned(), Vec::new(), Listen::Env),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::model::Language;

    fn service(framework: Option<Framework>, honours: bool, port: Option<u16>) -> Service {
        Service { framework, honours_port: honours, port, language: Some(Language::Python), ..Service::empty(".") }
    }

    #[test]
    fn servers_that_bind_localhost_or_a_fixed_port_are_rewritten_with_a_reason() {
        let cases = [
            (
                service(Some(Framework::Flask), false, Some(5000)),
                "gunicorn app:app",
                "gunicorn --bind 0.0.0.0:$PORT app:app",
            ),
            (
                service(Some(Framework::Flask), false, Some(8000)),
                "gunicorn -b 127.0.0.1:8000 -w 2 app:app",
                "gunicorn --bind 0.0.0.0:$PORT -w 2 app:app",
            ),
            (
                service(Some(Framework::Fastapi), false, Some(8000)),
                "uvicorn main:app --port 8000",
                "uvicorn main:app --host 0.0.0.0 --port $PORT",
            ),
            (
                service(Some(Framework::Streamlit), false, Some(8501)),
                "streamlit run app.py",
                "streamlit run app.py --server.port $PORT --server.address 0.0.0.0",
            ),
            (service(Some(Framework::Nextjs), false, Some(3000)), "next start", "next start -p $PORT"),
            (
                service(Some(Framework::Rails), false, Some(3000)),
                "bundle exec rails server -b 0.0.0.0",
                "bundle exec rails server -b 0.0.0.0 -p $PORT",
            ),
            (
                service(Some(Framework::SpringBoot), false, Some(8080)),
                "java -jar /app/app.jar",
                "java -Dserver.port=$PORT -jar /app/app.jar",
            ),
            (
                service(Some(Framework::AspnetCore), false, Some(8080)),
                "dotnet Api.dll",
                "ASPNETCORE_HTTP_PORTS=$PORT dotnet Api.dll",
            ),
        ];
        for (service, from, to) in cases {
            let (command, rewrites, listen) = listen_on_port(&service, from);
            assert_eq!(command, to, "{from}");
            assert_eq!(listen, Listen::Env);
            assert_eq!(rewrites.len(), 1);
            assert!(!rewrites[0].reason.is_empty());
        }
    }

    #[test]
    fn commands_that_already_use_port_are_kept_and_fixed_ports_are_reported() {
        let honours = service(Some(Framework::Express), true, Some(3000));
        assert_eq!(listen_on_port(&honours, "npm start"), ("npm start".into(), vec![], Listen::Env));
        let procfile = service(Some(Framework::Flask), true, Some(8080));
        let (command, rewrites, _) = listen_on_port(&procfile, "gunicorn --bind 0.0.0.0:$PORT app:app");
        assert_eq!((command.as_str(), rewrites.len()), ("gunicorn --bind 0.0.0.0:$PORT app:app", 0));
        let fixed = service(Some(Framework::Gin), false, Some(9000));
        assert_eq!(listen_on_port(&fixed, "./app").2, Listen::Fixed { port: 9000 });
    }
}
