//! Build-failure repairs: a build that stopped because a system package was missing (a C
//! header, `pg_config`, a compiler) is built again with the package added to the Dockerfile's
//! final stage, and the user is told which line of the log said so.

use devgem_common::dockerfile::edit::with_package;
use devgem_common::model::deployment::DeploymentPlan;

/// What a build log says when a Debian package is missing, and the package. Each needle is
/// specific enough not to match an unrelated line.
const MISSING: &[(&str, &str)] = &[
    ("pg_config executable not found", "libpq-dev"),
    ("libpq-fe.h: No such file", "libpq-dev"),
    ("mysql_config: not found", "default-libmysqlclient-dev"),
    ("mysql_config not found", "default-libmysqlclient-dev"),
    ("ffi.h: No such file", "libffi-dev"),
    ("openssl/ssl.h: No such file", "libssl-dev"),
    ("openssl/opensslv.h: No such file", "libssl-dev"),
    ("zlib.h: No such file", "zlib1g-dev"),
    ("jpeglib.h: No such file", "libjpeg-dev"),
    ("libxml/xmlversion.h: No such file", "libxml2-dev"),
    ("xml2-config: not found", "libxml2-dev"),
    ("sqlite3.h: No such file", "libsqlite3-dev"),
    ("cairo.h: No such file", "libcairo2-dev"),
    ("pkg-config: not found", "pkg-config"),
    ("error: command 'gcc' failed: No such file", "build-essential"),
    ("gcc: not found", "build-essential"),
    ("cc: not found", "build-essential"),
];

/// The plan with the missing package added, and the sentence that tells the user why; `None`
/// when the log names no package DevGem knows or the Dockerfile installs it already.
pub fn package_repair(plan: &DeploymentPlan, log: &[String]) -> Option<(DeploymentPlan, String)> {
    let (line, package) = log.iter().rev().find_map(|line| {
        MISSING.iter().find(|(needle, _)| line.contains(needle)).map(|(_, package)| (line.trim(), *package))
    })?;
    let dockerfile = with_package(&plan.dockerfile, package)?;
    let reason = format!("the build log says `{line}`, so DevGem added the Debian package {package} to the Dockerfile");
    Some((DeploymentPlan { dockerfile, ..plan.clone() }, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DeploymentPlan {
        DeploymentPlan {
            app_dir: ".".into(),
            origin: "python-pip".into(),
            dockerfile: "FROM python:3.12-slim\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\n".into(),
            dockerignore: String::new(),
            start_command: None,
            start_alternatives: Vec::new(),
            port: 8080,
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_missing_build_dependency_is_added_once() {
        let log: Vec<String> = [
            "Collecting psycopg2==2.9.9",
            "  Error: pg_config executable not found.",
            "error: subprocess-exited-with-error",
        ]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
        let (repaired, reason) = package_repair(&plan(), &log).expect("repaired");
        assert!(repaired.dockerfile.contains("--no-install-recommends libpq-dev"), "{}", repaired.dockerfile);
        assert!(reason.contains("pg_config executable not found") && reason.contains("libpq-dev"), "{reason}");
        assert_eq!(package_repair(&repaired, &log), None, "added already: the failure is final");
        let other = vec!["npm ERR! 404 Not Found - GET https://registry.npmjs.org/nope".to_owned()];
        assert_eq!(package_repair(&plan(), &other), None);
    }
}
