//! Dockerfiles as data: the contract between analysis and build on both paths (Cloud Build builds
//! the text with kaniko; the local builder executes the parsed instructions). Parsing is strict
//! where execution depends on it and says which line is wrong.

use std::collections::BTreeMap;

pub mod edit;

/// A command as written: exec form (`["a", "b"]`) or shell form (`a b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

impl Command {
    /// Reads an instruction's arguments: a JSON array is the exec form, anything else shell form.
    pub fn parse(raw: &str) -> Self {
        let raw = raw.trim();
        if raw.starts_with('[')
            && let Ok(parts) = serde_json::from_str::<Vec<String>>(raw)
        {
            return Command::Exec(parts);
        }
        Command::Shell(raw.to_owned())
    }

    /// The command as one shell-style string (`sh -c "x"` exec forms unwrapped).
    pub fn text(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Exec(parts) if parts.len() == 3 && parts[0].ends_with("sh") && parts[1] == "-c" => {
                parts[2].clone()
            }
            Command::Exec(parts) => parts.join(" "),
        }
    }
}

/// A `COPY` or `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// `--from=<stage or image>`.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub sources: Vec<String>,
    pub destination: String,
    /// `ADD` rather than `COPY`.
    pub add: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    Run(Command),
    Cmd(Command),
    Entrypoint(Command),
    Copy(Copy),
    Workdir(String),
    Env(Vec<(String, String)>),
    Arg {
        name: String,
        default: Option<String>,
    },
    User(String),
    Expose(Vec<u16>),
    /// Instructions the local builder records but does not act on (LABEL, HEALTHCHECK, ...).
    Other {
        keyword: String,
        args: String,
    },
}

/// One instruction and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    pub base: String,
    pub alias: Option<String>,
    pub line: usize,
    pub steps: Vec<Step>,
}

impl Stage {
    /// ENTRYPOINT and CMD of the stage joined, as the container would run them.
    pub fn start_command(&self) -> Option<String> {
        let mut entrypoint = None;
        let mut cmd = None;
        for step in &self.steps {
            match &step.instruction {
                Instruction::Entrypoint(c) => entrypoint = Some(c.text()),
                Instruction::Cmd(c) => cmd = Some(c.text()),
                _ => {}
            }
        }
        match (entrypoint, cmd) {
            (Some(e), Some(c)) => Some(format!("{e} {c}")),
            (e, c) => e.or(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `ARG`s declared before the first `FROM`.
    pub global_args: BTreeMap<String, Option<String>>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// The stage the image is made of: the last one.
    pub fn final_stage(&self) -> Option<&Stage> {
        self.stages.last()
    }

    /// A stage by alias or index, as `COPY --from` names it.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| s.alias.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(name)))
            .or_else(|| name.parse::<usize>().ok().and_then(|i| self.stages.get(i)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

fn error(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError { line, reason: reason.into() }
}

/// Joins backslash-continued lines, skipping comments, keeping each instruction's first line.
pub fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_empty() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            start = i + 1;
        } else if line.starts_with('#') {
            continue;
        }
        if let Some(stripped) = line.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
        } else {
            current.push_str(line);
            out.push((start, std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        out.push((start, current));
    }
    out
}

/// Splits leading `--flag=value` options off an instruction's arguments.
fn flags(args: &str) -> (BTreeMap<String, String>, &str) {
    let mut found = BTreeMap::new();
    let mut rest = args.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (flag, tail) = after.split_at(end);
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        found.insert(name.to_ascii_lowercase(), value.to_owned());
        rest = tail.trim_start();
    }
    (found, rest)
}

/// `K=V K2="v 2"` or the legacy `K V`.
fn key_values(args: &str, line: usize) -> Result<Vec<(String, String)>, ParseError> {
    let args = args.trim();
    let first_word = args.split_whitespace().next().unwrap_or("");
    if !first_word.contains('=') {
        let (key, value) =
            args.split_once(char::is_whitespace).ok_or_else(|| error(line, "ENV needs a name and a value"))?;
        return Ok(vec![(key.to_owned(), value.trim().to_owned())]);
    }
    let mut out = Vec::new();
    let mut chars = args.chars().peekable();
    while chars.peek().is_some() {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, '\\') => {
                    chars.next();
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                    continue;
                }
                (_, c) => value.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return Err(error(line, format!("unterminated quote in the value of {key}")));
        }
        out.push((key.trim().to_owned(), value));
    }
    Ok(out)
}

fn copy(args: &str, add: bool, line: usize) -> Result<Copy, ParseError> {
    let (flags, rest) = flags(args);
    let mut paths: Vec<String> = match Command::parse(rest) {
        Command::Exec(parts) => parts,
        Command::Shell(s) => s.split_whitespace().map(str::to_owned).collect(),
    };
    if paths.len() < 2 {
        return Err(error(
            line,
            format!("{} needs at least one source and a destination", if add { "ADD" } else { "COPY" }),
        ));
    }
    let destination = paths.pop().unwrap_or_default();
    Ok(Copy { from: flags.get("from").cloned(), chown: flags.get("chown").cloned(), sources: paths, destination, add })
}

/// Parses a Dockerfile. Heredocs (`<<EOF`) are refused with the line, since neither builder
/// path needs them and silently mis-reading one would run the wrong thing.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let mut global_args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (line, logical) in logical_lines(text) {
        let (keyword, args) = logical.split_once(char::is_whitespace).unwrap_or((logical.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim();
        if args.contains("<<") && matches!(keyword.as_str(), "RUN" | "COPY") && args.contains("<<EOF") {
            return Err(error(line, "heredocs are not supported; use a script file instead"));
        }
        if keyword == "FROM" {
            let (_, rest) = flags(args);
            let mut words = rest.split_whitespace();
            let base = words.next().ok_or_else(|| error(line, "FROM needs an image"))?.to_owned();
            let alias = match (words.next(), words.next()) {
                (Some(as_kw), Some(alias)) if as_kw.eq_ignore_ascii_case("as") => Some(alias.to_owned()),
                (None, _) => None,
                _ => return Err(error(line, "FROM takes an image and optionally `AS name`")),
            };
            stages.push(Stage { index: stages.len(), base, alias, line, steps: Vec::new() });
            continue;
        }
        let instruction = match keyword.as_str() {
            "RUN" => Instruction::Run(Command::parse(args)),
            "CMD" => Instruction::Cmd(Command::parse(args)),
            "ENTRYPOINT" => Instruction::Entrypoint(Command::parse(args)),
            "COPY" => Instruction::Copy(copy(args, false, line)?),
            "ADD" => Instruction::Copy(copy(args, true, line)?),
            "WORKDIR" => Instruction::Workdir(args.to_owned()),
            "ENV" => Instruction::Env(key_values(args, line)?),
            "ARG" => {
                let (name, default) = match args.split_once('=') {
                    Some((n, d)) => (n.trim().to_owned(), Some(d.trim().trim_matches('"').to_owned())),
                    None => (args.to_owned(), None),
                };
                Instruction::Arg { name, default }
            }
            "USER" => Instruction::User(args.to_owned()),
            "EXPOSE" => Instruction::Expose(
                args.split_whitespace()
                    .map(|p| {
                        p.split('/')
                            .next()
                            .unwrap_or(p)
                            .parse::<u16>()
                            .map_err(|_| error(line, format!("EXPOSE {p} is not a port")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "LABEL" | "HEALTHCHECK" | "SHELL" | "STOPSIGNAL" | "VOLUME" | "ONBUILD" | "MAINTAINER" => {
                Instruction::Other { keyword: keyword.clone(), args: args.to_owned() }
            }
            other => return Err(error(line, format!("unknown instruction {other}"))),
        };
        match stages.last_mut() {
            Some(stage) => stage.steps.push(Step { line, instruction }),
            None => match instruction {
                Instruction::Arg { name, default } => {
                    global_args.insert(name, default);
                }
                _ => return Err(error(line, "only ARG may come before the first FROM")),
            },
        }
    }
    if stages.is_empty() {
        return Err(error(1, "no FROM: a Dockerfile starts from a base image"));
    }
    Ok(Dockerfile { global_args, stages })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = r#"ARG GO_VERSION=1.22
FROM --platform=linux/amd64 golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum* ./
RUN go mod download && \
    go build -o /out/app .
FROM gcr.io/distroless/static AS final
ENV PORT=8080 MODE="production mode" LEGACY=\"x\"
COPY --from=build --chown=65532:65532 /out/app /app
USER nonroot
EXPOSE 8080/tcp 9090
LABEL org.opencontainers.image.source=x
ENTRYPOINT ["/app"]
CMD ["--serve"]
"#;

    #[test]
    fn stages_instructions_and_lines() {
        let df = parse(MULTI).expect("parses");
        assert_eq!(df.global_args.get("GO_VERSION"), Some(&Some("1.22".to_owned())));
        assert_eq!(df.stages.len(), 2);
        let build = df.stage("build").expect("by alias");
        assert_eq!((build.base.as_str(), build.line), ("golang:${GO_VERSION}", 2));
        assert_eq!(build.steps[2].line, 5, "continued lines keep their first line");
        assert_eq!(
            build.steps[2].instruction,
            Instruction::Run(Command::Shell("go mod download &&  go build -o /out/app .".into()))
        );
        let last = df.final_stage().expect("final");
        assert_eq!(df.stage("1").map(|s| s.index), Some(1), "by index");
        assert_eq!(
            last.steps[0].instruction,
            Instruction::Env(vec![
                ("PORT".into(), "8080".into()),
                ("MODE".into(), "production mode".into()),
                ("LEGACY".into(), "\"x\"".into())
            ])
        );
        assert_eq!(
            last.steps[1].instruction,
            Instruction::Copy(Copy {
                from: Some("build".into()),
                chown: Some("65532:65532".into()),
                sources: vec!["/out/app".into()],
                destination: "/app".into(),
                add: false
            })
        );
        assert_eq!(last.steps[3].instruction, Instruction::Expose(vec![8080, 9090]));
        assert_eq!(last.start_command().as_deref(), Some("/app --serve"));
    }

    #[test]
    fn bad_dockerfiles_name_the_line() {
        for (text, line, needle) in [
            ("", 1, "no FROM"),
            ("RUN x\nFROM y", 1, "only ARG"),
            ("FROM x\nFROB y", 2, "unknown instruction FROB"),
            ("FROM x\nCOPY onlyone", 2, "at least one source"),
            ("FROM x\nEXPOSE http", 2, "not a port"),
            ("FROM x\nENV A=\"open", 2, "unterminated quote"),
            ("FROM x\nRUN <<EOF\necho\nEOF", 2, "heredocs"),
            ("FROM x AS", 1, "AS name"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn sh_c_exec_forms_read_as_their_command() {
        let df = parse("FROM x\nCMD [\"sh\", \"-c\", \"exec gunicorn --bind 0.0.0.0:$PORT app:app\"]").expect("parses");
        assert_eq!(
            df.final_stage().and_then(Stage::start_command).as_deref(),
            Some("exec gunicorn --bind 0.0.0.0:$PORT app:app")
        );
    }
}
