//! Gemini's `generateContent` wire format, shared by the Gemini API ([`super::gemini`]) and Vertex
//! AI ([`super::vertex`]): both take the same body and answer in the same shape; only the URL and
//! the credential differ.
//!
//! - System messages become `systemInstruction`; user turns `role: user`; assistant turns
//!   `role: model`, their tool calls `functionCall` parts.
//! - Tool results become `functionResponse` parts (`response: {"content": ...}`, the content
//!   parsed when it is JSON so the model sees structure, not an escaped string). Results that
//!   follow each other go in one turn: Gemini expects the answers to parallel calls together.
//! - Gemini gives calls no id unless it wants to; we make one up so a tool result can say which
//!   call it answers. Ids are not sent back (Gemini matches answers by name and order).

use super::new_call_id;
use devgem_common::ports::brain::BrainError;
use devgem_common::ports::brain::{BrainMessage, BrainReply, BrainRequest, Role, ToolCall, ToolSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tools<'a>>,
}

#[derive(Debug, Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<Part<'a>>,
}

/// One part of a turn; serde's external tagging gives Gemini's `{"text": ...}`,
/// `{"functionCall": {...}}` and `{"functionResponse": {...}}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
enum Part<'a> {
    Text(&'a str),
    FunctionCall { name: &'a str, args: &'a Value },
    FunctionResponse { name: &'a str, response: Value },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Tools<'a> {
    function_declarations: &'a [ToolSpec],
}

/// The request body for `request`.
pub(super) fn body(provider: &str, request: &BrainRequest) -> Result<Value, BrainError> {
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    let mut previous = None;
    for message in &request.messages {
        match message.role {
            Role::System => system.push(Part::Text(&message.content)),
            Role::User => contents.push(Content { role: Some("user"), parts: vec![Part::Text(&message.content)] }),
            Role::Assistant => {
                let text = (!message.content.is_empty()).then(|| Part::Text(&message.content));
                let calls = message.tool_calls.iter().map(|c| Part::FunctionCall { name: &c.name, args: &c.arguments });
                contents.push(Content { role: Some("model"), parts: text.into_iter().chain(calls).collect() });
            }
            Role::Tool => {
                let name = tool_name(message, &request.messages).ok_or_else(|| BrainError::Refused {
                    provider: provider.to_owned(),
                    reason: "a tool result names neither its tool nor a call made earlier".to_owned(),
                })?;
                let response = Value::Object(Map::from_iter([("content".to_owned(), as_json(&message.content))]));
                let part = Part::FunctionResponse { name, response };
                match contents.last_mut() {
                    Some(turn) if previous == Some(Role::Tool) => turn.parts.push(part),
                    _ => contents.push(Content { role: Some("user"), parts: vec![part] }),
                }
            }
        }
        previous = Some(message.role);
    }
    let body = Body {
        contents,
        system_instruction: (!system.is_empty()).then_some(Content { role: None, parts: system }),
        tools: if request.tools.is_empty() {
            Vec::new()
        } else {
            vec![Tools { function_declarations: &request.tools }]
        },
    };
    serde_json::to_value(body)
        .map_err(|e| BrainError::Refused { provider: provider.to_owned(), reason: format!("unencodable request: {e}") })
}

/// The tool a result answers: its own `tool_name`, else the name of the call it answers.
fn tool_name<'a>(result: &'a BrainMessage, history: &'a [BrainMessage]) -> Option<&'a str> {
    result.tool_name.as_deref().or_else(|| {
        let id = result.tool_call_id.as_deref()?;
        history.iter().flat_map(|m| &m.tool_calls).find(|c| c.id == id).map(|c| c.name.as_str())
    })
}

/// A tool's output as JSON when it is JSON, else as a string.
fn as_json(content: &str) -> Value {
    serde_json::from_str(content).unwrap_or_else(|_| Value::String(content.to_owned()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<AnswerContent>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnswerContent {
    #[serde(default)]
    parts: Vec<AnswerPart>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerPart {
    text: Option<String>,
    /// A thinking model's reasoning summary: not part of the answer.
    #[serde(default)]
    thought: bool,
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
}

/// The reply in a `generateContent` answer: the first candidate's text and function calls.
pub(super) fn reply(provider: &str, answer: Value) -> Result<BrainReply, BrainError> {
    let refused = |reason: String| BrainError::Refused { provider: provider.to_owned(), reason };
    let unavailable = |reason: String| BrainError::Unavailable { provider: provider.to_owned(), reason };

    let answer: Answer =
        serde_json::from_value(answer).map_err(|e| unavailable(format!("answered in an unexpected shape: {e}")))?;
    let Some(candidate) = answer.candidates.into_iter().next() else {
        return Err(match answer.prompt_feedback.and_then(|f| f.block_reason) {
            Some(reason) => refused(format!("the prompt was blocked ({reason})")),
            None => unavailable("answered with no candidates".to_owned()),
        });
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default().into_iter().filter(|p| !p.thought) {
        if let Some(t) = part.text {
            text.push_str(&t);
        }
        if let Some(call) = part.function_call {
            // A call without arguments comes without `args`; tools expect an object.
            let arguments = if call.args.is_null() { Value::Object(Map::new()) } else { call.args };
            tool_calls.push(ToolCall { id: call.id.unwrap_or_else(new_call_id), name: call.name, arguments });
        }
    }
    if text.is_empty() && tool_calls.is_empty() {
        let why = candidate.finish_reason.as_deref().unwrap_or("no reason given");
        return Err(refused(format!("the model stopped without an answer ({why})")));
    }
    Ok(BrainReply { text: (!text.is_empty()).then_some(text), tool_calls, provider: provider.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str, name: &str, arguments: Value) -> ToolCall {
        ToolCall { id: id.to_owned(), name: name.to_owned(), arguments }
    }

    #[test]
    fn maps_every_role_and_groups_parallel_tool_results() {
        let clone = call("c1", "clone_and_analyze", json!({"url": "https://github.com/o/app"}));
        let status = call("c2", "status", json!({}));
        let mut unnamed = BrainMessage::tool_result(&status, "plain text");
        unnamed.tool_name = None;
        let request = BrainRequest {
            messages: vec![
                BrainMessage::system("You deploy apps."),
                BrainMessage::user("deploy o/app"),
                BrainMessage::assistant("On it.", vec![clone.clone(), status.clone()]),
                BrainMessage::tool_result(&clone, r#"{"language":"python"}"#),
                unnamed,
            ],
            tools: vec![ToolSpec {
                name: "status".into(),
                description: "What is running".into(),
                parameters: json!({"type": "object"}),
            }],
            priority: Default::default(),
        };
        let body = body("gemini", &request).expect("body");
        assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "You deploy apps."}]}));
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "deploy o/app"}]},
                {"role": "model", "parts": [
                    {"text": "On it."},
                    {"functionCall": {"name": "clone_and_analyze", "args": {"url": "https://github.com/o/app"}}},
                    {"functionCall": {"name": "status", "args": {}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "clone_and_analyze", "response": {"content": {"language": "python"}}}},
                    {"functionResponse": {"name": "status", "response": {"content": "plain text"}}},
                ]},
            ])
        );
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [{"name": "status", "description": "What is running", "parameters": {"type": "object"}}]}])
        );
    }

    #[test]
    fn a_tool_result_nobody_asked_for_is_refused() {
        let mut orphan = BrainMessage::tool_result(&call("x", "deploy", json!({})), "ok");
        orphan.tool_name = None;
        let request = BrainRequest { messages: vec![orphan], tools: vec![], priority: Default::default() };
        assert!(matches!(body("gemini", &request), Err(BrainError::Refused { .. })));
    }

    #[test]
    fn reads_text_and_calls_and_skips_thoughts() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": true},
            {"text": "Deploying now."},
            {"functionCall": {"name": "deploy", "args": {"service": "app"}}},
            {"functionCall": {"name": "status"}},
        ]}, "finishReason": "STOP"}]});
        let reply = reply("gemini", answer).expect("reply");
        assert_eq!(reply.text.as_deref(), Some("Deploying now."));
        assert_eq!(reply.provider, "gemini");
        let calls: Vec<_> = reply.tool_calls.iter().map(|c| (c.name.as_str(), c.arguments.clone())).collect();
        assert_eq!(calls, [("deploy", json!({"service": "app"})), ("status", json!({}))]);
        assert!(reply.tool_calls.iter().all(|c| !c.id.is_empty()));
        assert_ne!(reply.tool_calls[0].id, reply.tool_calls[1].id);
    }

    #[test]
    fn answers_without_an_answer_are_clear_errors() {
        let cases = [
            (json!({}), "no candidates"),
            (json!({"promptFeedback": {"blockReason": "SAFETY"}}), "blocked (SAFETY)"),
            (json!({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL"}]}), "MALFORMED_FUNCTION_CALL"),
            (json!({"candidates": "many"}), "unexpected shape"),
            (json!([1, 2]), "unexpected shape"),
        ];
        for (answer, expected) in cases {
            let error = reply("gemini", answer.clone()).expect_err("an error");
            assert!(error.to_string().contains(expected), "{answer}: {error}");
        }
    }
}
