//! The rules engine: a [`Brain`] that is deterministic and offline. It reads the user's message
//! with [`crate::intent`], asks for the one tool that answers it, and answers with that tool's
//! result. It is the fast path for clear intents, the whole chat when no LLM is configured, and
//! the fallback when every LLM provider is down. It lives with the chat rather than in
//! `infra/brain` because its knowledge is the chat's intents, not a provider's API.

use crate::intent::{Intent, parse};
use async_trait::async_trait;
use devgem_common::ports::brain::{Brain, BrainError, BrainReply, BrainRequest, Role, ToolCall};
use serde_json::{Value, json};

pub const HELP: &str = "I can deploy a repository and look after it. Try:\n\
- `deploy https://github.com/owner/app` (add `on branch x` or `as name`), or a directory path on this machine\n\
- `status`, `list deployments`, `why did it fail?`, `logs 50`\n\
- `set NAME=value`, `set secret NAME=value`, `unset NAME` to deploy the latest service again with it\n\
- `abort` to stop the deployment in progress, `rollback` (or `rollback <service>`) to serve the previous revision";

/// The provider name in replies.
pub const PROVIDER: &str = "rules";

#[derive(Debug, Default, Clone, Copy)]
pub struct RulesBrain;

/// The tool call that answers `intent`, or the text that does when no tool is needed.
pub fn decide(intent: Intent) -> Result<(&'static str, Value), String> {
    Ok(match intent {
        Intent::Deploy { source, git_ref, name } => {
            ("deploy", json!({ "source": source, "ref": git_ref, "name": name }))
        }
        Intent::Status => ("get_status", json!({})),
        Intent::List => ("list_deployments", json!({})),
        Intent::WhyFailed => ("diagnose", json!({})),
        Intent::Logs { lines } => ("get_logs", json!({ "lines": lines })),
        Intent::Abort => ("abort", json!({})),
        Intent::Rollback { service } => ("rollback", json!({ "service": service })),
        Intent::SetEnv { name, value, secret } => {
            ("set_env", json!({ "name": name, "value": value, "secret": secret }))
        }
        Intent::UnsetEnv { name } => ("set_env", json!({ "name": name, "unset": true })),
        Intent::Help => return Err(HELP.to_owned()),
        Intent::Yes | Intent::No => return Err("There is no question waiting for an answer.".to_owned()),
        Intent::Unknown => return Err(format!("I did not understand that. {HELP}")),
    })
}

#[async_trait]
impl Brain for RulesBrain {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError> {
        let reply = |text: String, tool_calls: Vec<ToolCall>| BrainReply {
            text: Some(text).filter(|t| !t.is_empty()),
            tool_calls,
            provider: PROVIDER.to_owned(),
        };
        // After its tool ran, the tool's result is the answer.
        let results: Vec<&str> =
            request.messages.iter().rev().take_while(|m| m.role == Role::Tool).map(|m| m.content.as_str()).collect();
        if !results.is_empty() {
            return Ok(reply(results.into_iter().rev().collect::<Vec<_>>().join("\n\n"), Vec::new()));
        }
        let Some(user) = request.messages.iter().rev().find(|m| m.role == Role::User) else {
            return Ok(reply(HELP.to_owned(), Vec::new()));
        };
        Ok(match decide(parse(&user.content)) {
            Ok((tool, arguments)) => {
                reply(String::new(), vec![ToolCall { id: "rules-1".into(), name: tool.into(), arguments }])
            }
            Err(text) => reply(text, Vec::new()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devgem_common::ports::brain::{BrainMessage, Priority};

    fn request(messages: Vec<BrainMessage>) -> BrainRequest {
        BrainRequest { messages, tools: crate::tools::specs(), priority: Priority::Chat }
    }

    #[tokio::test]
    async fn a_clear_intent_is_one_tool_call_and_its_result_is_the_answer() {
        let asked = request(vec![BrainMessage::user("deploy https://github.com/acme/shop on branch main")]);
        let reply = RulesBrain.complete(asked.clone()).await.expect("reply");
        assert_eq!(reply.provider, "rules");
        assert_eq!(reply.tool_calls.len(), 1);
        let call = &reply.tool_calls[0];
        assert_eq!(call.name, "deploy");
        assert_eq!(call.arguments["source"], "https://github.com/acme/shop");
        assert_eq!(call.arguments["ref"], "main");
        let mut answered = asked.messages;
        answered.push(BrainMessage::assistant("", reply.tool_calls.clone()));
        answered.push(BrainMessage::tool_result(call, "Deploying https://github.com/acme/shop as shop."));
        let reply = RulesBrain.complete(request(answered)).await.expect("reply");
        assert_eq!(reply.text.as_deref(), Some("Deploying https://github.com/acme/shop as shop."));
        assert!(reply.tool_calls.is_empty());
    }

    #[tokio::test]
    async fn what_the_rules_cannot_read_gets_the_help() {
        let reply = RulesBrain.complete(request(vec![BrainMessage::user("make it faster")])).await.expect("reply");
        assert!(reply.text.as_deref().is_some_and(|t| t.starts_with("I did not understand that.")), "{reply:?}");
        assert!(reply.tool_calls.is_empty());
        // Every tool the rules ask for is one the chat offers.
        let offered: Vec<String> = crate::tools::specs().into_iter().map(|s| s.name).collect();
        for text in
            ["status", "list deployments", "why did it fail", "logs 5", "abort", "rollback", "set A=1", "unset A"]
        {
            let reply = RulesBrain.complete(request(vec![BrainMessage::user(text)])).await.expect("reply");
            assert!(offered.contains(&reply.tool_calls[0].name), "{text}: {reply:?}");
        }
    }
}
