//! Rebuild speed of the local builder (docs/PERF.md): `devgem build` on a fixture app with cold
//! caches, then again with nothing changed (must take under a quarter of the first build), then
//! again after an edit to the app's source that leaves its dependencies alone (reported: it
//! reruns the steps from the source COPY on, so it is fast only where the dependencies are
//! installed in a layer of their own).
//!
//! `cargo build --release -p devgem-cli && DEVGEM_BIN=$PWD/target/release/devgem cargo bench -p devgem-e2e --bench rebuild`

use devgem_e2e::copy_dir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Each app, and the file whose edit stands for "changed the source, not the dependencies".
const APPS: &[(&str, &str)] = &[
    ("py-flask", "app.py"),
    ("py-fastapi", "main.py"),
    ("node-express", "server.js"),
    ("go-stdlib", "main.go"),
    ("rust-stdlib", "src/main.rs"),
];

fn build(bin: &Path, data: &Path, app: &Path) -> Duration {
    let start = Instant::now();
    let out = Command::new(bin).arg("--data-dir").arg(data).arg("build").arg(app).output().expect("run devgem build");
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    elapsed
}

fn main() {
    let Some(bin) = std::env::var_os("DEVGEM_BIN").map(PathBuf::from) else {
        eprintln!("set DEVGEM_BIN to a release build of devgem (see the header of this file)");
        std::process::exit(2);
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps");
    println!(
        "| app | first build (cold caches) | unchanged rebuild | source-edit rebuild | unchanged / first | edit / first |"
    );
    println!("|---|---|---|---|---|---|");
    let mut worst: f64 = 0.0;
    for (name, source) in APPS {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("app");
        copy_dir(&fixtures.join(name), &app);
        let data = dir.path().join("data");
        let first = build(&bin, &data, &app);
        let unchanged = build(&bin, &data, &app);
        let path = app.join(source);
        let mut text = std::fs::read_to_string(&path).expect("source");
        text.push_str("\n// edited\n");
        if source.ends_with(".py") {
            text = text.replace("\n// edited\n", "\n# edited\n");
        }
        std::fs::write(&path, text).expect("edit");
        let edited = build(&bin, &data, &app);
        let (r1, r2) = (unchanged.as_secs_f64() / first.as_secs_f64(), edited.as_secs_f64() / first.as_secs_f64());
        worst = worst.max(r1);
        println!(
            "| {name} | {:.2} s | {:.3} s | {:.3} s | {:.3} | {:.3} |",
            first.as_secs_f64(),
            unchanged.as_secs_f64(),
            edited.as_secs_f64(),
            r1,
            r2
        );
    }
    println!("\nworst unchanged rebuild / first build: {worst:.3} (target < 0.25)");
    if worst >= 0.25 {
        std::process::exit(1);
    }
}
