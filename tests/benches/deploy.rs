//! Deploy overhead (docs/PERF.md): fixture apps deployed through a real `devgem up` (release
//! build), each time split into the build (the builder's own start and finish times), the app's
//! start (from "Starting the new revision" until the revision answered its probe) and DevGem's
//! own overhead (everything else: fetch, analysis, events, verification, routing). Also the time
//! from the request to the first progress event.
//!
//! `cargo build --release -p devgem-cli && DEVGEM_BIN=$PWD/target/release/devgem cargo bench -p devgem-e2e --bench deploy`

use devgem_e2e::copy_dir;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const APPS: &[&str] = &["py-stdlib", "node-plain", "static-site", "go-stdlib", "py-flask"];
const RUNS: usize = 3;

fn ts(event: &Value) -> chrono::DateTime<chrono::Utc> {
    event["ts"].as_str().and_then(|t| t.parse().ok()).unwrap_or_default()
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let Some(bin) = std::env::var_os("DEVGEM_BIN").map(PathBuf::from) else {
        eprintln!("set DEVGEM_BIN to a release build of devgem (see the header of this file)");
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut up = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["up", "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("devgem up");
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(data.join("server.json"))
            && let Ok(info) = serde_json::from_str::<Value>(&text)
            && reqwest::get(format!("{}/health", info["url"].as_str().unwrap_or(""))).await.is_ok()
        {
            break info["url"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let token = std::fs::read_to_string(data.join("admin.token")).expect("token").trim().to_owned();
    let client = reqwest::Client::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps");
    println!("| app | run | total | build | app start | DevGem overhead | request → first progress |");
    println!("|---|---|---|---|---|---|---|");
    let mut overheads = Vec::new();
    let mut firsts = Vec::new();
    for name in APPS {
        let app = dir.path().join(name);
        copy_dir(&fixtures.join(name), &app);
        for run in 1..=RUNS {
            let sent = chrono::Utc::now();
            let created: Value = client
                .post(format!("{url}/api/deployments"))
                .bearer_auth(&token)
                .json(&json!({ "source": app, "name": name.replace('_', "-") }))
                .send()
                .await
                .expect("post")
                .json()
                .await
                .expect("json");
            let session = created["session_id"].as_str().expect("session").to_owned();
            let started = Instant::now();
            let events = loop {
                let events: Value = client
                    .get(format!("{url}/api/sessions/{session}/events?limit=1000"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("get")
                    .json()
                    .await
                    .expect("json");
                let list = events.as_array().cloned().unwrap_or_default();
                if list.iter().any(|e| e["type"] == "deployment_complete") {
                    break list;
                }
                assert!(started.elapsed() < Duration::from_secs(300), "{name} did not finish");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let complete = events.iter().find(|e| e["type"] == "deployment_complete").expect("complete");
            assert_eq!(complete["data"]["state"], "live", "{name}: {complete}");
            let first_progress = events.iter().find(|e| e["type"] == "deployment_progress").expect("progress");
            let text_at = |needle: &str| {
                events
                    .iter()
                    .find(|e| {
                        e["type"] == "deployment_update"
                            && e["data"]["text"].as_str().is_some_and(|t| t.starts_with(needle))
                    })
                    .map(ts)
            };
            let deployment: Value = client
                .get(format!("{url}/api/deployments/{}", created["deployment_id"].as_str().unwrap_or("")))
                .bearer_auth(&token)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            let build_id = deployment["build_id"].as_str().expect("build id");
            let build: Value = serde_json::from_slice(
                &std::fs::read(data.join("builder/builds").join(build_id).join("build.json")).expect("build.json"),
            )
            .expect("build");
            let parse = |v: &Value| {
                v.as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()).unwrap_or_default()
            };
            let build_ms = ms(parse(&build["finishTime"]) - parse(&build["startTime"]));
            let start_ms = match (text_at("Starting the new revision"), text_at("Revision ")) {
                (Some(a), Some(b)) => ms(b - a),
                _ => 0.0,
            };
            let total_ms = ms(ts(complete) - sent);
            let overhead = total_ms - build_ms - start_ms;
            let first = ms(ts(first_progress) - sent);
            overheads.push(overhead);
            firsts.push(first);
            println!(
                "| {name} | {run} | {:.0} ms | {build_ms:.0} ms | {start_ms:.0} ms | {overhead:.0} ms | {first:.1} ms |",
                total_ms
            );
        }
    }
    println!(
        "\nmedian overhead {:.0} ms (max {:.0}); median first progress {:.1} ms (max {:.1}); targets: overhead <= 1000 ms, first progress <= 100 ms",
        median(overheads.clone()),
        overheads.iter().copied().fold(0.0, f64::max),
        median(firsts.clone()),
        firsts.iter().copied().fold(0.0, f64::max)
    );
    let _ = up.kill();
    let _ = up.wait();
}
