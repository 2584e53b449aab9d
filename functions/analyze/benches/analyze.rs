//! Analyzer speed (docs/PERF.md): in-process analysis of every fixture repository, the CLI end to
//! end, and a generated 20,000-file monorepo.
//!
//! `cargo build --release -p devgem-cli && DEVGEM_BIN=$PWD/target/release/devgem cargo bench -p devgem-analyze --bench analyze`
//! (without `DEVGEM_BIN` the CLI row is skipped).

use devgem_analyze::analyzer::analyze_dir;
use devgem_analyze::analyzer::repo::Limits;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/analyze");
    let mut repos: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures")
        .filter_map(Result::ok)
        .map(|e| e.path().join("repo"))
        .filter(|p| p.is_dir())
        .collect();
    repos.sort();
    repos
}

/// 20 services of 1,000 files each: package.json, a server, and source files with env reads.
fn generate_monorepo(root: &Path) {
    for service in 0..20 {
        let dir = root.join(format!("apps/svc-{service:02}"));
        std::fs::create_dir_all(dir.join("src/lib")).expect("mkdir");
        std::fs::write(
            dir.join("package.json"),
            format!(r#"{{"name":"svc-{service}","scripts":{{"start":"node src/server.js"}},"dependencies":{{"express":"^4.19.2"}}}}"#),
        )
        .expect("write");
        std::fs::write(
            dir.join("src/server.js"),
            "const express = require('express');\nconst app = express();\nconst port = process.env.PORT || 3000;\napp.listen(port);\n",
        )
        .expect("write");
        for file in 0..998 {
            std::fs::write(
                dir.join(format!("src/lib/m{file:04}.js")),
                format!("// module {file}\nexport const v{file} = process.env.FEATURE_{service}_{} ?? 'off';\nexport function f() {{ return {file}; }}\n", file % 7),
            )
            .expect("write");
        }
    }
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    println!("analyzer benchmark, median of {runs} runs");

    let repos = fixtures();
    let mut per_repo: Vec<Duration> = Vec::new();
    for repo in &repos {
        per_repo.push(time(runs, || {
            analyze_dir(repo, Limits::default()).expect("analysis");
        }));
    }
    let slowest = per_repo.iter().max().copied().unwrap_or_default();
    println!(
        "in-process, {} fixture repos: median {:.2} ms, slowest {:.2} ms (target: median < 20 ms)",
        repos.len(),
        median(per_repo.clone()).as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3
    );

    if let Ok(bin) = std::env::var("DEVGEM_BIN") {
        let repo = repos.iter().find(|r| r.to_string_lossy().contains("py-django-postgres")).unwrap_or(&repos[0]);
        let cli = time(runs, || {
            let status = std::process::Command::new(&bin)
                .args(["analyze", "--json"])
                .arg(repo)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run devgem");
            assert!(status.success());
        });
        println!(
            "CLI end to end (devgem analyze --json {}): median {:.2} ms (target < 50 ms)",
            repo.display(),
            cli.as_secs_f64() * 1e3
        );
    } else {
        println!("CLI end to end: skipped (set DEVGEM_BIN to a release build of devgem)");
    }

    let mono = tempfile::tempdir().expect("tempdir");
    generate_monorepo(mono.path());
    let files = 20 * 1000;
    let big = time(runs.clamp(3, 5), || {
        let analysis = analyze_dir(mono.path(), Limits::default()).expect("analysis");
        assert_eq!(analysis.services.len(), 20, "every service found");
    });
    println!(
        "generated monorepo, {files} files, 20 services: median {:.0} ms (target < 1000 ms)",
        big.as_secs_f64() * 1e3
    );
}
