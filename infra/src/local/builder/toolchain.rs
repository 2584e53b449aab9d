//! What a `FROM` image means on this machine: the host toolchain standing in for the image, its
//! version against the one the tag asks for, and the image's default configuration (env, command)
//! that a Dockerfile inherits. A base without a toolchain (Debian, distroless) is the host itself.

use std::ffi::OsString;
use std::path::PathBuf;

/// The families of base images the local builder can stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Python,
    Node,
    Go,
    Rust,
    Nginx,
    Java,
    Ruby,
    Php,
    Dotnet,
    Elixir,
    Bun,
    Deno,
    /// An OS image (Debian, Ubuntu, distroless, ...): nothing to provide but the host.
    Os,
}

impl Kind {
    /// The program whose presence on the host means the toolchain is there, and its name for people.
    fn program(self) -> (&'static str, &'static str) {
        match self {
            Kind::Python => ("python3", "Python"),
            Kind::Node => ("node", "Node.js"),
            Kind::Go => ("go", "Go"),
            Kind::Rust => ("rustc", "Rust"),
            Kind::Nginx => ("nginx", "nginx"),
            Kind::Java => ("java", "Java"),
            Kind::Ruby => ("ruby", "Ruby"),
            Kind::Php => ("php", "PHP"),
            Kind::Dotnet => ("dotnet", ".NET"),
            Kind::Elixir => ("mix", "Elixir"),
            Kind::Bun => ("bun", "Bun"),
            Kind::Deno => ("deno", "Deno"),
            Kind::Os => ("sh", "a shell"),
        }
    }

    /// How to install the toolchain on a Debian-like host, for the error message.
    fn install_hint(self) -> &'static str {
        match self {
            Kind::Python => "apt-get install python3 python3-venv",
            Kind::Node => "apt-get install nodejs npm",
            Kind::Go => "apt-get install golang-go",
            Kind::Rust => "install it from https://rustup.rs",
            Kind::Nginx => "apt-get install nginx gettext-base",
            Kind::Java => "apt-get install default-jdk maven",
            Kind::Ruby => "apt-get install ruby-full",
            Kind::Php => "apt-get install php-cli",
            Kind::Dotnet => "install the .NET SDK from https://dot.net",
            Kind::Elixir => "apt-get install elixir",
            Kind::Bun => "install it from https://bun.sh",
            Kind::Deno => "install it from https://deno.land",
            Kind::Os => "install a POSIX shell",
        }
    }
}

/// An image reference split into repository and tag (`registry/path:tag@digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: String,
}

impl ImageRef {
    pub fn parse(image: &str) -> Self {
        let image = image.split('@').next().unwrap_or(image);
        // A colon after the last slash is the tag; one before it is a registry port.
        let (repository, tag) = match image.rfind(':') {
            Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
            _ => (image, "latest"),
        };
        let repository = repository.strip_prefix("docker.io/").unwrap_or(repository);
        let repository = repository.strip_prefix("library/").unwrap_or(repository);
        Self { repository: repository.to_ascii_lowercase(), tag: tag.to_owned() }
    }

    /// The last path segment: `python` for `docker.io/library/python`.
    fn name(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or(&self.repository)
    }

    /// The version the tag asks for: `3.12` of `3.12-slim-bookworm`, `None` for `latest`/`slim`.
    pub fn version(&self) -> Option<&str> {
        let head = self.tag.split('-').next().unwrap_or("");
        let head = head.strip_prefix('v').unwrap_or(head);
        (head.starts_with(|c: char| c.is_ascii_digit())).then_some(head)
    }

    pub fn kind(&self) -> Option<Kind> {
        let name = self.name();
        let kind = match name {
            "python" | "pypy" => Kind::Python,
            "node" => Kind::Node,
            "golang" | "go" => Kind::Go,
            "rust" => Kind::Rust,
            "nginx" | "nginx-unprivileged" => Kind::Nginx,
            "eclipse-temurin" | "openjdk" | "amazoncorretto" | "maven" | "gradle" | "ibm-semeru-runtimes" => Kind::Java,
            "ruby" => Kind::Ruby,
            "php" => Kind::Php,
            "sdk" | "aspnet" | "runtime" | "runtime-deps" if self.repository.contains("dotnet") => Kind::Dotnet,
            "elixir" | "erlang" => Kind::Elixir,
            "bun" => Kind::Bun,
            "deno" => Kind::Deno,
            "debian" | "ubuntu" | "busybox" | "scratch" | "alpine" | "buildpack-deps" => Kind::Os,
            _ if self.repository.starts_with("gcr.io/distroless/") => Kind::Os,
            _ => return None,
        };
        Some(kind)
    }
}

/// A toolchain found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostToolchain {
    pub kind: Kind,
    /// The real program (symlinks and version-manager shims resolved where the tool says so).
    pub program: PathBuf,
    pub version: String,
    /// A directory to put first on the stage's PATH (Rust's toolchain `bin`), if any.
    pub bin_dir: Option<PathBuf>,
}

impl HostToolchain {
    /// What identifies the toolchain in layer cache keys.
    pub fn identity(&self) -> String {
        format!("{:?} {} {}", self.kind, self.program.display(), self.version)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ToolchainError {
    #[error(
        "the base image {image} has no stand-in on this machine: the local builder runs Python, Node.js, Go, Rust, nginx, Java, Ruby, PHP, .NET, Elixir, Bun and Deno images and OS bases (Debian, Ubuntu, distroless); use one of them, or deploy to Cloud Run"
    )]
    UnknownImage { image: String },
    #[error(
        "{image} needs {name} (`{program}`), which is not installed on this machine; {hint}, or deploy to Cloud Run"
    )]
    Missing { image: String, name: &'static str, program: &'static str, hint: &'static str },
}

async fn output(path: &OsString, program: &str, args: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    out.status.success().then(|| {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    })
}

fn which(path: &OsString, program: &str) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// The first dotted number in a version banner (`go version go1.19.8 linux/amd64` → `1.19.8`).
fn version_in(text: &str) -> String {
    let start = text.find(|c: char| c.is_ascii_digit()).unwrap_or(text.len());
    text[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect()
}

/// Finds the toolchain for `kind` on `path` (the PATH the host's tools are searched on).
pub async fn detect(kind: Kind, path: &OsString) -> Option<HostToolchain> {
    let (program, _) = kind.program();
    let found = which(path, program)?;
    let (program, version, bin_dir) = match kind {
        Kind::Python => {
            // Resolves pyenv/asdf shims to the interpreter itself.
            let text = output(
                path,
                "python3",
                &["-c", "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"],
            )
            .await?;
            let mut lines = text.lines();
            (PathBuf::from(lines.next()?), lines.next()?.to_owned(), None)
        }
        Kind::Node => {
            let text = output(path, "node", &["-p", "process.execPath + '\\n' + process.versions.node"]).await?;
            let mut lines = text.lines();
            (PathBuf::from(lines.next()?), lines.next()?.to_owned(), None)
        }
        Kind::Rust => {
            let sysroot = output(path, "rustc", &["--print", "sysroot"]).await?;
            let bin = PathBuf::from(sysroot.trim()).join("bin");
            let version = version_in(&output(path, "rustc", &["--version"]).await?);
            (bin.join("rustc"), version, Some(bin))
        }
        Kind::Go => {
            let text = output(path, "go", &["env", "GOROOT", "GOVERSION"]).await?;
            let mut lines = text.lines();
            let bin = PathBuf::from(lines.next()?).join("bin");
            (bin.join("go"), version_in(lines.next()?), Some(bin))
        }
        Kind::Nginx => (found, version_in(&output(path, "nginx", &["-v"]).await?), None),
        Kind::Os => (found, String::new(), None),
        _ => {
            let text = output(path, program, &["--version"]).await.unwrap_or_default();
            (found, version_in(&text), None)
        }
    };
    Some(HostToolchain { kind, program, version, bin_dir })
}

/// The stand-in family of `image`, or why there is none.
pub fn kind_of(image: &str) -> Result<Kind, ToolchainError> {
    ImageRef::parse(image).kind().ok_or_else(|| ToolchainError::UnknownImage { image: image.to_owned() })
}

/// Accepts the toolchain `found` for `image`: an error when there is none, a warning when its
/// version is not the one the tag asks for.
pub fn accept(
    image: &str,
    kind: Kind,
    found: Option<HostToolchain>,
) -> Result<(HostToolchain, Option<String>), ToolchainError> {
    let (program, name) = kind.program();
    let toolchain = found.ok_or_else(|| ToolchainError::Missing {
        image: image.to_owned(),
        name,
        program,
        hint: kind.install_hint(),
    })?;
    let warning = match ImageRef::parse(image).version() {
        Some(wanted) if kind != Kind::Os && !version_matches(wanted, &toolchain.version) => {
            Some(format!("{image} asks for {name} {wanted}; this machine has {} and builds with it", toolchain.version))
        }
        _ => None,
    };
    Ok((toolchain, warning))
}

/// `3.11` matches `3.11.7`; `3.1` does not match `3.11.7`.
fn version_matches(wanted: &str, have: &str) -> bool {
    let have: Vec<&str> = have.split('.').collect();
    wanted.split('.').enumerate().all(|(i, part)| have.get(i) == Some(&part))
}

/// The configuration an image gives its children, as far as the local stand-in reproduces it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseConfig {
    pub env: Vec<(String, String)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the Python stand-in's virtualenv lives inside every Python stage.
pub const PYTHON_VENV: &str = "/usr/local/lib/devgem-python";

pub fn base_config(toolchain: &HostToolchain) -> BaseConfig {
    let path_with = |dir: Option<&PathBuf>| match dir {
        Some(dir) => format!("{}:{DEFAULT_PATH}", dir.display()),
        None => DEFAULT_PATH.to_owned(),
    };
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut config = BaseConfig { workdir: "/".to_owned(), ..BaseConfig::default() };
    config.env.push(("PATH".into(), path_with(toolchain.bin_dir.as_ref())));
    config.env.push(("LANG".into(), "C.UTF-8".into()));
    match toolchain.kind {
        Kind::Python => {
            // pip puts console scripts (gunicorn, uvicorn) in the virtualenv's bin, which is on
            // PATH as the image's /usr/local/bin is.
            config.env[0].1 = format!("{PYTHON_VENV}/bin:{}", config.env[0].1);
            config.cmd = strings(&["python3"]);
        }
        Kind::Node => config.cmd = strings(&["node"]),
        Kind::Go => {
            config.env[0].1 = format!("/go/bin:{}", config.env[0].1);
            config.env.push(("GOPATH".into(), "/go".into()));
            // Never download another toolchain because go.mod names a newer one.
            config.env.push(("GOTOOLCHAIN".into(), "local".into()));
            config.workdir = "/go".into();
        }
        Kind::Nginx => {
            config.entrypoint = strings(&["/docker-entrypoint.sh"]);
            config.cmd = strings(&["nginx", "-g", "daemon off;"]);
        }
        _ => {}
    }
    config
}

/// The files a stand-in adds to reproduce its image: nginx's configuration and entrypoint, and
/// the users the official images create (`node`, uid 1000; `nginx`, uid 101), which Dockerfiles
/// name in `COPY --chown` and `USER`. Users are appended to the host's `/etc/passwd` and
/// `/etc/group` (copied into the layer), unless the host has them already.
pub fn image_files(kind: Kind) -> Vec<(String, String, u32)> {
    let mut files: Vec<(String, String, u32)> = Vec::new();
    let user = match kind {
        Kind::Node => Some(("node", 1000, "/home/node")),
        Kind::Nginx => Some(("nginx", 101, "/nonexistent")),
        _ => None,
    };
    if let Some((name, id, home)) = user {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let has = |table: &str| table.lines().any(|l| l.split(':').next() == Some(name));
        let with = |table: &str, line: String| {
            let mut out = table.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&line);
            out.push('\n');
            out
        };
        if !has(&passwd) {
            files.push(("etc/passwd".into(), with(&passwd, format!("{name}:x:{id}:{id}::{home}:/bin/sh")), 0o644));
        }
        if !has(&group) {
            files.push(("etc/group".into(), with(&group, format!("{name}:x:{id}:")), 0o644));
        }
        if home.starts_with("/home/") {
            files.push((format!("{}/.keep", home.trim_start_matches('/')), String::new(), 0o644));
        }
    }
    if kind == Kind::Nginx {
        files.extend(nginx_files().into_iter().map(|(p, c, m)| (p.to_owned(), c.to_owned(), m)));
    }
    files
}

/// Files the nginx stand-in puts where the official image has them: a main config that runs
/// unprivileged (pid and temp files in /tmp, logs to stdout/stderr) and includes `conf.d`, and the
/// entrypoint that renders `/etc/nginx/templates/*.template` with the environment at start. Like
/// the image, it has no `templates` directory: a Dockerfile that writes there must create it.
fn nginx_files() -> Vec<(&'static str, &'static str, u32)> {
    vec![
        (
            "etc/nginx/nginx.conf",
            "worker_processes auto;\nerror_log /dev/stderr notice;\npid /tmp/nginx.pid;\n\nevents { worker_connections 1024; }\n\nhttp {\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n    access_log /dev/stdout;\n    sendfile on;\n    client_body_temp_path /tmp/client_temp;\n    proxy_temp_path /tmp/proxy_temp;\n    fastcgi_temp_path /tmp/fastcgi_temp;\n    uwsgi_temp_path /tmp/uwsgi_temp;\n    scgi_temp_path /tmp/scgi_temp;\n    include /etc/nginx/conf.d/*.conf;\n}\n",
            0o644,
        ),
        ("etc/nginx/conf.d/.keep", "", 0o644),
        (
            "docker-entrypoint.sh",
            "#!/bin/sh\n# DevGem's stand-in for the nginx image's entrypoint: render templates, then run the command.\nset -e\nfor template in /etc/nginx/templates/*.template; do\n    [ -f \"$template\" ] || continue\n    name=$(basename \"$template\" .template)\n    defined=$(env | cut -d= -f1 | sed 's/^/${/; s/$/}/' | tr '\\n' ' ')\n    envsubst \"$defined\" < \"$template\" > \"/etc/nginx/conf.d/$name\"\ndone\nexec \"$@\"\n",
            0o755,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `FROM image` resolves to with the toolchains on `path`.
    async fn resolve(image: &str, path: &OsString) -> Result<(HostToolchain, Option<String>), ToolchainError> {
        let kind = kind_of(image)?;
        accept(image, kind, detect(kind, path).await)
    }

    #[test]
    fn image_references_split_into_repository_tag_and_version() {
        let r = ImageRef::parse("python:3.12-slim-bookworm");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_str(), r.version()),
            ("python", "3.12-slim-bookworm", Some("3.12"))
        );
        assert_eq!(r.kind(), Some(Kind::Python));
        let r = ImageRef::parse("docker.io/library/node:20");
        assert_eq!((r.repository.as_str(), r.version(), r.kind()), ("node", Some("20"), Some(Kind::Node)));
        let r = ImageRef::parse("localhost:5000/team/golang");
        assert_eq!((r.repository.as_str(), r.tag.as_str()), ("localhost:5000/team/golang", "latest"));
        assert_eq!(r.kind(), Some(Kind::Go));
        let r = ImageRef::parse("gcr.io/distroless/static-debian12:nonroot");
        assert_eq!((r.kind(), r.version()), (Some(Kind::Os), None));
        assert_eq!(ImageRef::parse("nginxinc/nginx-unprivileged:1.27-bookworm").kind(), Some(Kind::Nginx));
        assert_eq!(ImageRef::parse("mcr.microsoft.com/dotnet/aspnet:8.0").kind(), Some(Kind::Dotnet));
        assert_eq!(ImageRef::parse("node@sha256:abc").tag, "latest");
        assert_eq!(ImageRef::parse("mycorp/special-runtime:1").kind(), None);
    }

    #[test]
    fn versions_match_by_leading_components() {
        assert!(version_matches("3.11", "3.11.7"));
        assert!(version_matches("20", "20.20.2"));
        assert!(!version_matches("3.1", "3.11.7"));
        assert!(!version_matches("1.22", "1.19.8"));
        assert_eq!(version_in("go version go1.19.8 linux/amd64"), "1.19.8");
        assert_eq!(version_in("nginx version: nginx/1.22.1"), "1.22.1");
    }

    #[tokio::test]
    async fn a_missing_toolchain_is_named_with_how_to_install_it() {
        let empty = tempfile::tempdir().expect("tempdir");
        let path = OsString::from(empty.path());
        let err = resolve("golang:1.22-bookworm", &path).await.expect_err("no go in an empty PATH");
        let message = err.to_string();
        assert!(message.contains("needs Go (`go`)") && message.contains("apt-get install golang-go"), "{message}");
        let err = resolve("mycorp/runtime:1", &path).await.expect_err("unknown image");
        assert!(err.to_string().contains("no stand-in"), "{err}");
        let (os, warning) = resolve("debian:bookworm-slim", &OsString::from("/bin:/usr/bin")).await.expect("os base");
        assert_eq!((os.kind, warning), (Kind::Os, None));
    }
}
