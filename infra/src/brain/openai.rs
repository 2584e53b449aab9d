//! OpenAI-compatible chat completions (`POST {base}/v1/chat/completions`), the API that Ollama,
//! llama.cpp's server and vLLM all speak, so a model on the user's own machine can drive DevGem.
//!
//! Tool calls travel as `tool_calls` on assistant messages and answers as `role: tool` messages
//! with the call's id. A call's `arguments` is a JSON *string* the model wrote; one that does not
//! parse is the model's mistake, reported as `Refused` (some servers send an object instead,
//! which is taken as it is).

use super::failover::Provider;
use super::http::{Auth, post_json};
use super::new_call_id;
use async_trait::async_trait;
use devgem_common::ports::brain::{Brain, BrainError, BrainMessage, BrainReply, BrainRequest, Role, ToolCall};
use devgem_common::ports::secrets::SecretValue;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Ollama's address on the same machine.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:11434";

/// One model behind an OpenAI-compatible server. `Debug` shows the key as `***`.
#[derive(Debug, Clone)]
pub struct OpenAiBrain {
    client: reqwest::Client,
    url: String,
    model: String,
    /// Local servers usually need none.
    key: Option<SecretValue>,
    /// `openai/<model>`: what replies and errors name as their provider.
    id: String,
}

impl OpenAiBrain {
    pub fn new(client: reqwest::Client, base_url: &str, model: &str, key: Option<SecretValue>) -> Self {
        let url = format!("{}/v1/chat/completions", base_url.trim_end_matches('/'));
        Self { client, url, model: model.to_owned(), key, id: format!("openai/{model}") }
    }

    fn body(&self, request: &BrainRequest) -> Value {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
        let mut body = json!({
            "model": self.model,
            "messages": request.messages.iter().map(message).collect::<Vec<_>>(),
            "stream": false,
        });
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
        body
    }
}

fn message(message: &BrainMessage) -> Value {
    match message.role {
        Role::System => json!({"role": "system", "content": message.content}),
        Role::User => json!({"role": "user", "content": message.content}),
        Role::Assistant if message.tool_calls.is_empty() => json!({"role": "assistant", "content": message.content}),
        Role::Assistant => json!({
            "role": "assistant",
            "content": (!message.content.is_empty()).then_some(&message.content),
            "tool_calls": message.tool_calls.iter().map(|c| json!({
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()},
            })).collect::<Vec<_>>(),
        }),
        Role::Tool => json!({"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}),
    }
}

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: AnswerMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnswerMessage {
    content: Option<String>,
    tool_calls: Option<Vec<AnswerCall>>,
}

#[derive(Debug, Deserialize)]
struct AnswerCall {
    id: Option<String>,
    function: AnswerFunction,
}

#[derive(Debug, Deserialize)]
struct AnswerFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

impl OpenAiBrain {
    fn reply(&self, answer: Value) -> Result<BrainReply, BrainError> {
        let completion: Completion = serde_json::from_value(answer).map_err(|e| BrainError::Unavailable {
            provider: self.id.clone(),
            reason: format!("answered in an unexpected shape: {e}"),
        })?;
        let Some(choice) = completion.choices.into_iter().next() else {
            return Err(BrainError::Unavailable {
                provider: self.id.clone(),
                reason: "answered with no choices".to_owned(),
            });
        };
        let tool_calls = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|call| {
                let arguments = self.arguments(&call.function)?;
                Ok(ToolCall { id: call.id.unwrap_or_else(new_call_id), name: call.function.name, arguments })
            })
            .collect::<Result<Vec<_>, BrainError>>()?;
        let text = choice.message.content.filter(|t| !t.is_empty());
        if text.is_none() && tool_calls.is_empty() {
            let why = choice.finish_reason.as_deref().unwrap_or("no reason given");
            return Err(BrainError::Refused {
                provider: self.id.clone(),
                reason: format!("the model stopped without an answer ({why})"),
            });
        }
        Ok(BrainReply { text, tool_calls, provider: self.id.clone() })
    }

    fn arguments(&self, function: &AnswerFunction) -> Result<Value, BrainError> {
        match &function.arguments {
            Value::String(raw) if raw.trim().is_empty() => Ok(Value::Object(Map::new())),
            Value::String(raw) => serde_json::from_str(raw).map_err(|e| BrainError::Refused {
                provider: self.id.clone(),
                reason: format!("the model's arguments for {} are not valid JSON ({e})", function.name),
            }),
            Value::Null => Ok(Value::Object(Map::new())),
            other => Ok(other.clone()),
        }
    }
}

#[async_trait]
impl Brain for OpenAiBrain {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError> {
        let auth = self.key.as_ref().map_or(Auth::None, Auth::Bearer);
        let answer = post_json(&self.client, &self.id, &self.url, auth, &self.body(&request)).await?;
        self.reply(answer)
    }
}

impl From<OpenAiBrain> for Provider {
    fn from(brain: OpenAiBrain) -> Self {
        let title = format!("the model server at {}", brain.url.trim_end_matches("/v1/chat/completions"));
        Provider::new(brain.id.clone(), title, Arc::new(brain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::mock::{Answer, Mock, deploy_conversation};
    use devgem_common::ports::brain::Priority;

    fn says(message: Value) -> Answer {
        Answer::Json(
            200,
            json!({"id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}),
        )
    }

    fn calls(id: &str, name: &str, arguments: &str) -> Answer {
        says(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}))
    }

    fn ask() -> BrainRequest {
        BrainRequest { messages: vec![BrainMessage::user("hi")], tools: vec![], priority: Priority::Chat }
    }

    #[tokio::test]
    async fn a_deploy_conversation_carries_each_call_and_its_result() {
        let mock = Mock::start(|n, _| match n {
            0 => calls("call_a", "clone_and_analyze", r#"{"url":"https://github.com/o/app"}"#),
            1 => calls("call_b", "deploy", "{}"),
            _ => says(json!({"role": "assistant", "content": "Live at https://app.example"})),
        })
        .await;
        let brain =
            OpenAiBrain::new(reqwest::Client::new(), &mock.base, "llama3.1", Some(SecretValue::new("sk-local")));
        let replies = deploy_conversation(&brain).await;
        assert_eq!(replies[0].tool_calls[0].arguments, json!({"url": "https://github.com/o/app"}));
        assert_eq!(replies[2].text.as_deref(), Some("Live at https://app.example"));
        assert_eq!(replies[2].provider, "openai/llama3.1");

        let seen = mock.seen();
        assert_eq!(seen[0].path, "/v1/chat/completions");
        assert_eq!(seen[0].header("authorization"), Some("Bearer sk-local"));
        assert_eq!(seen[0].body["model"], "llama3.1");
        assert_eq!(
            seen[0].body["tools"][0],
            json!({"type": "function", "function": {"name": "clone_and_analyze",
                "description": "Clone a repository and analyze it", "parameters": deploy_tools_parameters()}})
        );
        let clone_turns = json!([
            {"role": "system", "content": "You deploy apps."},
            {"role": "user", "content": "deploy https://github.com/o/app"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_a", "type": "function",
                "function": {"name": "clone_and_analyze", "arguments": r#"{"url":"https://github.com/o/app"}"#}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": r#"{"language":"python","port":8080}"#},
        ]);
        assert_eq!(seen[1].body["messages"], clone_turns);
        let mut deploy_turns = clone_turns.as_array().cloned().expect("turns");
        deploy_turns.extend([
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_b", "type": "function",
                "function": {"name": "deploy", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_b", "content": "deployed at https://app.example"}),
        ]);
        assert_eq!(seen[2].body["messages"], Value::Array(deploy_turns));
    }

    fn deploy_tools_parameters() -> Value {
        crate::brain::mock::deploy_tools()[0].parameters.clone()
    }

    #[tokio::test]
    async fn malformed_answers_are_clear_errors() {
        let mock = Mock::scripted(vec![
            calls("call_a", "deploy", "{not json"),
            Answer::Json(200, json!({"choices": []})),
            Answer::Html(200, "<html>Welcome to nginx</html>"),
            Answer::Json(404, json!({"error": "model \"llama9\" not found, try pulling it first"})),
            Answer::Json(503, json!({"error": {"message": "server busy"}})),
        ])
        .await;
        let brain = OpenAiBrain::new(reqwest::Client::new(), &mock.base, "llama9", None);
        let mut errors = Vec::new();
        for _ in 0..5 {
            errors.push(brain.complete(ask()).await.expect_err("an error"));
        }
        assert!(
            matches!(&errors[0], BrainError::Refused { reason, .. } if reason.contains("arguments for deploy are not valid JSON"))
        );
        assert!(matches!(&errors[1], BrainError::Unavailable { reason, .. } if reason.contains("no choices")));
        assert!(matches!(&errors[2], BrainError::Unavailable { reason, .. } if reason.contains("not JSON")));
        assert!(matches!(&errors[3], BrainError::Unavailable { reason, .. } if reason.contains("try pulling it")));
        assert!(matches!(&errors[4], BrainError::RateLimited { .. }));
        assert_eq!(mock.seen()[0].header("authorization"), None);
    }

    #[tokio::test]
    async fn arguments_sent_as_an_object_or_left_out_are_taken() {
        let mock = Mock::scripted(vec![says(json!({"content": "", "tool_calls": [
            {"function": {"name": "status", "arguments": {"service": "app"}}},
            {"id": "c2", "function": {"name": "help"}},
        ]}))])
        .await;
        let reply =
            OpenAiBrain::new(reqwest::Client::new(), &mock.base, "m", None).complete(ask()).await.expect("reply");
        assert_eq!(reply.text, None);
        assert_eq!(reply.tool_calls[0].arguments, json!({"service": "app"}));
        assert!(!reply.tool_calls[0].id.is_empty());
        assert_eq!((reply.tool_calls[1].id.as_str(), &reply.tool_calls[1].arguments), ("c2", &json!({})));
    }
}
