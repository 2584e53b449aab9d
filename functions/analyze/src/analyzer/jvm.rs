//! Java and Kotlin: Maven (pom.xml) and Gradle (Groovy or Kotlin DSL, with or without the
//! wrapper); Spring Boot, Quarkus, Micronaut and Ktor; the jar to run and the port from
//! application.properties/yml or code.

use super::context::{Ctx, first_version};
use super::model::{Framework, Language, PackageManager, Service};
use regex::Regex;
use std::sync::LazyLock;

pub fn applies(ctx: &Ctx<'_>) -> bool {
    ["pom.xml", "build.gradle", "build.gradle.kts"].iter().any(|f| ctx.exists(f))
}

/// The text of the first `<tag>` outside `<parent>`, `<dependencies>`, `<build>` and `<profiles>`.
fn pom_project_tag(pom: &str, tag: &str) -> Option<String> {
    static NESTED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?s)<parent>.*?</parent>|<dependencies>.*?</dependencies>|<build>.*?</build>|<profiles>.*?</profiles>|<dependencyManagement>.*?</dependencyManagement>")
            .expect("valid regex")
    });
    let top = NESTED.replace_all(pom, "");
    let re = Regex::new(&format!(r"<{tag}>\s*([^<]+?)\s*</{tag}>")).ok()?;
    re.captures(&top).map(|c| c[1].to_owned())
}

fn pom_property(pom: &str, name: &str) -> Option<String> {
    let re = Regex::new(&format!(r"<{}>\s*([^<]+?)\s*</{}>", regex::escape(name), regex::escape(name))).ok()?;
    re.captures(pom).map(|c| c[1].to_owned())
}

fn gradle_quoted(build: &str, key: &str) -> Option<String> {
    let re = Regex::new(&format!(r#"(?m)^\s*{key}\s*=?\s*["']([^"']+)["']"#)).ok()?;
    re.captures(build).map(|c| c[1].to_owned())
}

static SERVER_PORT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^\s*(?:server\.port|quarkus\.http\.port|micronaut\.server\.port)\s*[=:]\s*(\S+)")
        .expect("valid regex")
});
static YAML_PORT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^(?:server|  http|    port|  server):?\s*\n(?:\s+.*\n)*?\s+port:\s*(\S+)").expect("valid regex")
});
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\$\{PORT(?::(\d{2,5}))?\}$").expect("valid regex"));
/// `System.getenv("PORT")?.toInt() ?: 8080`, `Optional.ofNullable(System.getenv("PORT")).orElse("8080")`.
static ENV_PORT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"getenv\("PORT"\)\)?[^\n]*?(?:\?:|orElse\(|\?\?)\s*"?(\d{2,5})"#).expect("valid regex")
});
static KTOR_PORT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"embeddedServer\([^)]*port\s*=\s*(?:System\.getenv\("PORT"\)\?\.toInt\(\)\s*\?:\s*)?(\d{2,5})"#)
        .expect("valid regex")
});

/// The port configured in application.properties / application.yml: (port, honours $PORT).
fn configured_port(ctx: &mut Ctx<'_>) -> Option<(u16, bool)> {
    for file in [
        "src/main/resources/application.properties",
        "src/main/resources/application.yml",
        "src/main/resources/application.yaml",
    ] {
        let Some(text) = ctx.read(file) else { continue };
        let raw = SERVER_PORT
            .captures(&text)
            .or_else(|| YAML_PORT.captures(&text))
            .map(|c| c[1].trim_matches(['"', '\'']).to_owned());
        let Some(raw) = raw else { continue };
        if let Some(c) = PLACEHOLDER.captures(&raw) {
            ctx.note("port", file, None, "server port from ${PORT:...}");
            return Some((c.get(1).and_then(|m| m.as_str().parse().ok()).unwrap_or(8080), true));
        }
        if let Ok(port) = raw.parse() {
            ctx.note("port", file, None, "configured server port");
            return Some((port, false));
        }
    }
    None
}

pub fn detect(ctx: &mut Ctx<'_>, service: &mut Service) {
    let pom = ctx.read("pom.xml");
    let gradle_file = ["build.gradle.kts", "build.gradle"].into_iter().find(|f| ctx.exists(f));
    let gradle = gradle_file.and_then(|f| ctx.read(f));
    let manifest = pom.as_deref().or(gradle.as_deref()).unwrap_or("").to_owned();
    let kotlin = ctx.runtime_files().any(|f| f.ends_with(".kt"))
        || manifest.contains("kotlin-maven-plugin")
        || manifest.contains("kotlin(\"jvm\")")
        || manifest.contains("org.jetbrains.kotlin");
    service.language = Some(if kotlin { Language::Kotlin } else { Language::Java });
    let framework = [
        (Framework::SpringBoot, "spring-boot"),
        (Framework::Quarkus, "io.quarkus"),
        (Framework::Micronaut, "io.micronaut"),
        (Framework::Ktor, "io.ktor"),
    ]
    .into_iter()
    .find(|(_, marker)| manifest.contains(marker));
    service.framework = framework.map(|(f, _)| f);
    if let Some((_, marker)) = framework {
        ctx.note(
            "framework",
            gradle_file.filter(|_| pom.is_none()).unwrap_or("pom.xml"),
            None,
            &format!("uses {marker}"),
        );
    }

    if let Some(pom) = &pom {
        if !pom.contains("</project>") {
            ctx.doubt(format!("{} looks truncated or malformed (no closing </project>)", ctx.path("pom.xml")));
        }
        service.package_manager = Some(PackageManager::Maven);
        service.runtime_version =
            ["java.version", "maven.compiler.release", "maven.compiler.target", "maven.compiler.source"]
                .iter()
                .find_map(|p| pom_property(pom, p))
                .and_then(|v| first_version(&v));
        let mvn = if ctx.exists("mvnw") { "./mvnw" } else { "mvn" };
        service.build_command = Some(format!("{mvn} -B package -DskipTests"));
        let artifact = pom_project_tag(pom, "artifactId");
        let version = pom_project_tag(pom, "version").or_else(|| {
            static PARENT_VERSION: LazyLock<Regex> =
                LazyLock::new(|| Regex::new(r"(?s)<parent>.*?<version>\s*([^<]+?)\s*</version>").expect("valid regex"));
            PARENT_VERSION.captures(pom).map(|c| c[1].to_owned())
        });
        service.start_command = if service.framework == Some(Framework::Quarkus) {
            Some("java -jar target/quarkus-app/quarkus-run.jar".to_owned())
        } else {
            match (artifact, version) {
                (Some(a), Some(v)) => Some(format!("java -jar target/{a}-{v}.jar")),
                (Some(a), None) => Some(format!("java -jar target/{a}.jar")),
                _ => None,
            }
        };
    } else if let Some(build) = &gradle {
        service.package_manager = Some(PackageManager::Gradle);
        static TOOLCHAIN: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"JavaLanguageVersion\.of\(\s*(\d+)\s*\)|JavaVersion\.VERSION_(\d+)|JavaVersion\.toVersion\(\s*['\x22]?(\d+)|jvmToolchain\(\s*(\d+)\s*\)|sourceCompatibility\s*=\s*['\x22]?(\d+)").expect("valid regex")
        });
        service.runtime_version =
            TOOLCHAIN.captures(build).and_then(|c| c.iter().skip(1).flatten().next().map(|m| m.as_str().to_owned()));
        let gradlew = if ctx.exists("gradlew") { "./gradlew" } else { "gradle" };
        service.build_command = Some(format!("{gradlew} build -x test"));
        let settings = ["settings.gradle.kts", "settings.gradle"].iter().find_map(|f| ctx.read(f));
        let name = settings.as_deref().and_then(|s| gradle_quoted(s, "rootProject.name")).or_else(|| {
            let dir = ctx.path("");
            let dir = dir.trim_end_matches('/');
            dir.rsplit('/').next().filter(|d| !d.is_empty()).map(str::to_owned)
        });
        let version = gradle_quoted(build, "version");
        service.start_command = if service.framework == Some(Framework::Quarkus) {
            Some("java -jar build/quarkus-app/quarkus-run.jar".to_owned())
        } else {
            name.map(|n| match version {
                Some(v) => format!("java -jar build/libs/{n}-{v}.jar"),
                None => format!("java -jar build/libs/{n}.jar"),
            })
        };
    }

    if let Some((port, honours)) = configured_port(ctx) {
        service.port = Some(port);
        service.honours_port = honours;
    } else if let Some(found) = ctx.find(&[".kt", ".java"], &ENV_PORT) {
        ctx.note("port", &found.file, Some(found.line), "reads PORT with a fallback");
        service.port = found.value.and_then(|v| v.parse().ok());
        service.honours_port = true;
    } else if let Some(found) = ctx.find(&[".kt"], &KTOR_PORT) {
        ctx.note("port", &found.file, Some(found.line), "embeddedServer port");
        service.port = found.value.and_then(|v| v.parse().ok());
        service.honours_port = ctx.read(&found.file).is_some_and(|t| t.contains("getenv(\"PORT\")"));
    } else if service.framework.is_some() {
        service.port = Some(8080);
    }
}
