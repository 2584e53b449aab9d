//! `devgem chat`: the conversation in a terminal. Each line typed is a message; DevGem's answers,
//! deployment progress and build output are printed as they arrive. Reads lines from stdin, so
//! it also takes a script (`echo status | devgem chat`): it then waits for the answers and exits.

use crate::deploy::Api;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// How long, after the last line of input, to wait for answers before exiting.
const SETTLE: Duration = Duration::from_secs(3);

fn render(event: &Value) -> Option<String> {
    let data = &event["data"];
    match event["type"].as_str()? {
        "message" if data["role"] == "assistant" => Some(format!("devgem> {}", data["text"].as_str()?)),
        "ai_thought" => Some(format!("        ({})", data["text"].as_str()?)),
        "deployment_update" => Some(format!("        [{}] {}", data["stage"].as_str()?, data["text"].as_str()?)),
        "deployment_complete" => Some(match data["state"].as_str()? {
            "live" => format!("        live at {}", data["url"].as_str().unwrap_or("")),
            state => format!("        {state}: {}", data["failure"]["message"].as_str().unwrap_or("")),
        }),
        "build_log" => Some(
            data["lines"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .map(|l| format!("        | {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

pub async fn run(data_dir: &Path, session: Option<String>, server: Option<String>) -> anyhow::Result<()> {
    let api = Api::running(data_dir, server)?;
    let session = session.unwrap_or_else(|| devgem_common::ids::SessionId::generate().to_string());
    eprintln!("Session {session} (resume it with --session {session}). Type 'help'; Ctrl-D to leave.");
    let mut after = 0u64;
    // Replay what the session already holds, so a returning user sees the history.
    let history =
        api.call(reqwest::Method::GET, &format!("/api/sessions/{session}/events?after=0&limit=1000"), None).await?;
    for event in history.as_array().into_iter().flatten() {
        after = after.max(event["seq"].as_u64().unwrap_or(0));
        if event["type"] == "message" && event["data"]["role"] == "user" {
            println!("you> {}", event["data"]["text"].as_str().unwrap_or(""));
        } else if let Some(text) = render(event) {
            println!("{text}");
        }
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut input_open = true;
    let mut quiet_since = tokio::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            line = lines.next_line(), if input_open => match line? {
                Some(line) if !line.trim().is_empty() => {
                    let body = json!({ "text": line.trim() });
                    api.call(reqwest::Method::POST, &format!("/api/sessions/{session}/messages"), Some(&body)).await?;
                    quiet_since = tokio::time::Instant::now();
                }
                Some(_) => {}
                None => input_open = false,
            },
            _ = poll.tick() => {
                let path = format!("/api/sessions/{session}/events?after={after}");
                for event in api.call(reqwest::Method::GET, &path, None).await?.as_array().into_iter().flatten() {
                    after = after.max(event["seq"].as_u64().unwrap_or(after));
                    if let Some(text) = render(event) {
                        println!("{text}");
                        quiet_since = tokio::time::Instant::now();
                    }
                }
                if !input_open && quiet_since.elapsed() > SETTLE {
                    return Ok(());
                }
            }
        }
    }
}
