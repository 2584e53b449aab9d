//! The Gemini API (`generativelanguage.googleapis.com`): an API key in `x-goog-api-key` (never in
//! the URL, where proxies and logs would keep it) and the `generateContent` body it shares with
//! Vertex AI (module `generate_content`).

use super::failover::Provider;
use super::generate_content;
use super::http::{Auth, post_json};
use async_trait::async_trait;
use devgem_common::ports::brain::{Brain, BrainError, BrainReply, BrainRequest};
use devgem_common::ports::secrets::SecretValue;
use std::sync::Arc;

/// Where the Gemini API is unless `DEVGEM_GEMINI_BASE_URL` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// One model of the Gemini API. `Debug` shows the key as `***`.
#[derive(Debug, Clone)]
pub struct GeminiBrain {
    client: reqwest::Client,
    url: String,
    key: SecretValue,
    /// `gemini/<model>`: what replies and errors name as their provider.
    id: String,
}

impl GeminiBrain {
    pub fn new(client: reqwest::Client, base_url: &str, model: &str, key: SecretValue) -> Self {
        let url = format!("{}/v1beta/models/{model}:generateContent", base_url.trim_end_matches('/'));
        Self { client, url, key, id: format!("gemini/{model}") }
    }
}

#[async_trait]
impl Brain for GeminiBrain {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError> {
        let body = generate_content::body(&self.id, &request)?;
        let answer =
            post_json(&self.client, &self.id, &self.url, Auth::Header("x-goog-api-key", &self.key), &body).await?;
        generate_content::reply(&self.id, answer)
    }
}

impl From<GeminiBrain> for Provider {
    fn from(brain: GeminiBrain) -> Self {
        Provider::new(brain.id.clone(), "the Gemini API", Arc::new(brain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::mock::{Answer, Mock, deploy_conversation};
    use devgem_common::ports::brain::{BrainMessage, Priority};
    use serde_json::{Value, json};

    const KEY: &str = "AIza-test-key-123";

    fn brain(mock: &Mock) -> GeminiBrain {
        GeminiBrain::new(reqwest::Client::new(), &mock.base, "gemini-2.5-flash", SecretValue::new(KEY))
    }

    fn says(parts: Value) -> Answer {
        Answer::Json(
            200,
            json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}),
        )
    }

    fn ask(text: &str) -> BrainRequest {
        BrainRequest { messages: vec![BrainMessage::user(text)], tools: vec![], priority: Priority::Chat }
    }

    #[tokio::test]
    async fn posts_generate_content_with_the_key_in_a_header() {
        let mock = Mock::scripted(vec![says(json!([{"text": "Hello!"}]))]).await;
        let reply = brain(&mock).complete(ask("hi")).await.expect("reply");
        assert_eq!(reply.text.as_deref(), Some("Hello!"));
        assert_eq!(reply.provider, "gemini/gemini-2.5-flash");
        let seen = &mock.seen()[0];
        assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.body["contents"], json!([{"role": "user", "parts": [{"text": "hi"}]}]));
    }

    #[tokio::test]
    async fn a_deploy_conversation_carries_each_call_and_its_result() {
        let mock = Mock::start(|n, _| match n {
            0 => says(
                json!([{"functionCall": {"name": "clone_and_analyze", "args": {"url": "https://github.com/o/app"}}}]),
            ),
            1 => says(json!([{"text": "Python app, deploying."}, {"functionCall": {"name": "deploy", "args": {}}}])),
            _ => says(json!([{"text": "Live at https://app.example"}])),
        })
        .await;
        let replies = deploy_conversation(&brain(&mock)).await;
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[2].text.as_deref(), Some("Live at https://app.example"));

        let seen = mock.seen();
        assert_eq!(seen[0].body["tools"][0]["functionDeclarations"][1]["name"], "deploy");
        assert_eq!(seen[0].body["systemInstruction"]["parts"][0]["text"], "You deploy apps.");
        let clone_turns = json!([
            {"role": "user", "parts": [{"text": "deploy https://github.com/o/app"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "clone_and_analyze", "args": {"url": "https://github.com/o/app"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "clone_and_analyze",
                "response": {"content": {"language": "python", "port": 8080}}}}]},
        ]);
        assert_eq!(seen[1].body["contents"], clone_turns);
        let mut deploy_turns = clone_turns.as_array().cloned().expect("turns");
        deploy_turns.extend([
            json!({"role": "model", "parts": [{"text": "Python app, deploying."}, {"functionCall": {"name": "deploy", "args": {}}}]}),
            json!({"role": "user", "parts": [{"functionResponse": {"name": "deploy",
                "response": {"content": "deployed at https://app.example"}}}]}),
        ]);
        assert_eq!(seen[2].body["contents"], Value::Array(deploy_turns));
    }

    #[tokio::test]
    async fn malformed_answers_are_clear_errors() {
        let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        let mock = Mock::scripted(vec![
            Answer::Html(502, page),
            Answer::Html(200, page),
            Answer::Json(200, json!({"candidates": []})),
            Answer::Json(429, json!({"error": {"code": 429, "message": "Resource exhausted"}})),
            Answer::Json(400, json!({"error": {"code": 400, "message": "Invalid JSON payload"}})),
        ])
        .await;
        let brain = brain(&mock);
        let mut errors = Vec::new();
        for _ in 0..5 {
            errors.push(brain.complete(ask("hi")).await.expect_err("an error"));
        }
        assert!(matches!(&errors[0], BrainError::Unavailable { reason, .. } if reason.contains("HTTP 502")));
        assert!(matches!(&errors[1], BrainError::Unavailable { reason, .. } if reason.contains("not JSON")));
        assert!(matches!(&errors[2], BrainError::Unavailable { reason, .. } if reason.contains("no candidates")));
        assert!(matches!(&errors[3], BrainError::RateLimited { provider } if provider == "gemini/gemini-2.5-flash"));
        assert!(matches!(&errors[4], BrainError::Refused { reason, .. } if reason == "HTTP 400: Invalid JSON payload"));
        assert!(errors.iter().all(|e| !e.to_string().contains("<html")), "{errors:?}");
    }

    #[tokio::test]
    async fn the_key_never_shows_in_debug_or_errors() {
        let echo = json!({"error": {"message": format!("API key {KEY} not valid. Please pass a valid API key.")}});
        let mock = Mock::scripted(vec![Answer::Json(400, echo)]).await;
        let brain = brain(&mock);
        let error = brain.complete(ask("hi")).await.expect_err("refused").to_string();
        assert!(error.contains("API key *** not valid"), "{error}");
        assert!(!format!("{brain:?}").contains(KEY));
        assert!(!format!("{:?}", Provider::from(brain)).contains(KEY));

        let closed = GeminiBrain::new(reqwest::Client::new(), "http://127.0.0.1:9", "m", SecretValue::new(KEY));
        let error = closed.complete(ask("hi")).await.expect_err("no server");
        assert!(matches!(&error, BrainError::Unavailable { reason, .. } if reason.starts_with("could not connect")));
        assert!(!error.to_string().contains(KEY) && !error.to_string().contains("127.0.0.1"), "{error}");
    }
}
