//! A loopback HTTP server that plays a provider in tests: it records every request it gets and
//! answers each with what the test's script says.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use devgem_common::ports::brain::{Brain, BrainMessage, BrainReply, BrainRequest, Priority, ToolSpec};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// A request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Json(u16, Value),
    /// A body that is not JSON, e.g. a proxy's HTML error page.
    Html(u16, &'static str),
    /// Never answers.
    Hang,
}

type Script = dyn Fn(usize, &Seen) -> Answer + Send + Sync;

/// The server's state: what it saw, and what it answers.
#[derive(Clone)]
struct Player {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
}

#[derive(Debug, Clone)]
pub struct Mock {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    /// Serves on a free loopback port; `script(n, request)` answers the `n`th request (from 0).
    pub async fn start(script: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let player = Player { seen: seen.clone(), script: Arc::new(script) };
        let router = Router::new().fallback(answer).with_state(player);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { base, seen }
    }

    /// Answers the requests in order with `answers`; the last one repeats.
    pub async fn scripted(answers: Vec<Answer>) -> Self {
        Self::start(move |n, _| answers.get(n).or(answers.last()).cloned().unwrap_or(Answer::Hang)).await
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn answer(
    axum::extract::State(Player { seen, script }): axum::extract::State<Player>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Seen { path: uri.to_string(), headers, body: serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let n = {
        let mut seen = seen.lock().expect("seen");
        seen.push(request.clone());
        seen.len() - 1
    };
    let status = |code: u16| StatusCode::from_u16(code).expect("a status code");
    match script(n, &request) {
        Answer::Json(code, body) => (status(code), axum::Json(body)).into_response(),
        Answer::Html(code, page) => (status(code), [(header::CONTENT_TYPE, "text/html")], page).into_response(),
        Answer::Hang => std::future::pending().await,
    }
}

/// The tools of the scripted deploy conversation.
pub fn deploy_tools() -> Vec<ToolSpec> {
    let tool = |name: &str, description: &str| ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: json!({"type": "object", "properties": {"url": {"type": "string"}}}),
    };
    vec![tool("clone_and_analyze", "Clone a repository and analyze it"), tool("deploy", "Deploy the analyzed app")]
}

/// Plays the user's side of a deploy: asks, runs each tool the brain calls (with canned results)
/// and appends call and result to the history, until the brain answers in words. Returns every
/// reply, in order.
pub async fn deploy_conversation(brain: &dyn Brain) -> Vec<BrainReply> {
    let mut history =
        vec![BrainMessage::system("You deploy apps."), BrainMessage::user("deploy https://github.com/o/app")];
    let mut replies = Vec::new();
    for _ in 0..3 {
        let request = BrainRequest { messages: history.clone(), tools: deploy_tools(), priority: Priority::Deploy };
        let reply = brain.complete(request).await.expect("a reply");
        replies.push(reply.clone());
        if reply.tool_calls.is_empty() {
            break;
        }
        history.push(BrainMessage::assistant(reply.text.unwrap_or_default(), reply.tool_calls.clone()));
        for call in &reply.tool_calls {
            let result = match call.name.as_str() {
                "clone_and_analyze" => json!({"language": "python", "port": 8080}).to_string(),
                _ => "deployed at https://app.example".to_owned(),
            };
            history.push(BrainMessage::tool_result(call, result));
        }
    }
    replies
}
