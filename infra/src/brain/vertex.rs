//! Vertex AI: the same `generateContent` body as the Gemini API (module `generate_content`),
//! sent to one region's endpoint with an OAuth access token. Each region has its own quota, so
//! the failover chain holds one [`VertexBrain`] per configured region.
//!
//! Access tokens come from an [`AccessTokens`] source: a fixed one
//! (`DEVGEM_VERTEX_ACCESS_TOKEN`, e.g. from `gcloud auth print-access-token`, for a laptop) or the
//! GCE/Cloud Run metadata server, which gives the service account's token and says when it
//! expires; it is cached until shortly before then.

use super::failover::Provider;
use super::generate_content;
use super::http::{Auth, post_json};
use async_trait::async_trait;
use devgem_common::ports::brain::{Brain, BrainError, BrainReply, BrainRequest};
use devgem_common::ports::secrets::SecretValue;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The regional endpoint; `{region}` is replaced by each region's name.
pub const DEFAULT_BASE_URL: &str = "https://{region}-aiplatform.googleapis.com";

/// Where one Vertex AI model is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexEndpoint {
    /// The endpoint's scheme and host, with `{region}` standing for the region
    /// ([`DEFAULT_BASE_URL`]; tests point it at a loopback mock).
    pub base_url: String,
    pub project: String,
    pub region: String,
    pub model: String,
}

impl VertexEndpoint {
    pub fn url(&self) -> String {
        let Self { base_url, project, region, model } = self;
        format!(
            "{}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:generateContent",
            base_url.replace("{region}", region).trim_end_matches('/')
        )
    }
}

/// Why no access token could be had. Never holds a token.
#[derive(Debug, thiserror::Error)]
#[error("no access token: {0}")]
pub struct TokenError(String);

/// A source of OAuth access tokens for Google APIs.
#[async_trait]
pub trait AccessTokens: Send + Sync + std::fmt::Debug {
    async fn token(&self) -> Result<SecretValue, TokenError>;
}

/// A token given once, e.g. `DEVGEM_VERTEX_ACCESS_TOKEN`. It is not refreshed: when it expires,
/// requests fail as `Unavailable` (401) until a new one is configured.
#[derive(Debug, Clone)]
pub struct StaticToken(pub SecretValue);

#[async_trait]
impl AccessTokens for StaticToken {
    async fn token(&self) -> Result<SecretValue, TokenError> {
        Ok(self.0.clone())
    }
}

/// The metadata server's token endpoint for the default service account.
pub const METADATA_TOKEN_URL: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

/// A token is replaced this long before it expires, so none expires in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The service account's tokens from the GCE/Cloud Run metadata server, cached until
/// a minute before they expire.
#[derive(Debug)]
pub struct MetadataServer {
    client: reqwest::Client,
    url: String,
    /// Held across a refresh, so concurrent requests wait for one fetch instead of each making one.
    cached: tokio::sync::Mutex<Option<(SecretValue, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

impl MetadataServer {
    pub fn new(client: reqwest::Client) -> Self {
        Self::at(client, METADATA_TOKEN_URL)
    }

    /// A metadata server at another URL (tests).
    pub fn at(client: reqwest::Client, url: &str) -> Self {
        Self { client, url: url.to_owned(), cached: tokio::sync::Mutex::new(None) }
    }
}

#[async_trait]
impl AccessTokens for MetadataServer {
    async fn token(&self) -> Result<SecretValue, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let failed = |e: reqwest::Error| TokenError(format!("metadata server: {}", e.without_url()));
        let response = self.client.get(&self.url).header("Metadata-Flavor", "Google").send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(TokenError(format!("metadata server answered HTTP {}", response.status().as_u16())));
        }
        let bytes = response.bytes().await.map_err(failed)?;
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|_| TokenError("metadata server answered without a token".to_owned()))?;
        let token = SecretValue::new(answer.access_token);
        let refresh_at = Instant::now() + Duration::from_secs(answer.expires_in).saturating_sub(REFRESH_MARGIN);
        *cached = Some((token.clone(), refresh_at));
        Ok(token)
    }
}

/// One region's Vertex AI endpoint for one model.
#[derive(Debug, Clone)]
pub struct VertexBrain {
    client: reqwest::Client,
    url: String,
    region: String,
    tokens: Arc<dyn AccessTokens>,
    /// `vertex/<region>`: what replies and errors name as their provider.
    id: String,
}

impl VertexBrain {
    pub fn new(client: reqwest::Client, endpoint: &VertexEndpoint, tokens: Arc<dyn AccessTokens>) -> Self {
        Self {
            client,
            url: endpoint.url(),
            region: endpoint.region.clone(),
            tokens,
            id: format!("vertex/{}", endpoint.region),
        }
    }
}

#[async_trait]
impl Brain for VertexBrain {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError> {
        let body = generate_content::body(&self.id, &request)?;
        let token = self
            .tokens
            .token()
            .await
            .map_err(|e| BrainError::Unavailable { provider: self.id.clone(), reason: e.to_string() })?;
        let answer = post_json(&self.client, &self.id, &self.url, Auth::Bearer(&token), &body).await?;
        generate_content::reply(&self.id, answer)
    }
}

impl From<VertexBrain> for Provider {
    fn from(brain: VertexBrain) -> Self {
        Provider::new(brain.id.clone(), format!("Vertex AI in {}", brain.region), Arc::new(brain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::mock::{Answer, Mock};
    use devgem_common::ports::brain::{BrainMessage, Priority};
    use serde_json::json;

    fn endpoint(base_url: &str, region: &str) -> VertexEndpoint {
        VertexEndpoint {
            base_url: base_url.to_owned(),
            project: "my-proj".to_owned(),
            region: region.to_owned(),
            model: "gemini-2.5-flash".to_owned(),
        }
    }

    fn ask() -> BrainRequest {
        BrainRequest { messages: vec![BrainMessage::user("hi")], tools: vec![], priority: Priority::Chat }
    }

    #[test]
    fn the_default_endpoint_is_regional() {
        assert_eq!(
            endpoint(DEFAULT_BASE_URL, "europe-west1").url(),
            "https://europe-west1-aiplatform.googleapis.com/v1/projects/my-proj/locations/europe-west1\
             /publishers/google/models/gemini-2.5-flash:generateContent"
        );
    }

    #[tokio::test]
    async fn posts_the_shared_body_with_a_bearer_token() {
        let answer = json!({"candidates": [{"content": {"parts": [{"text": "Hello from Vertex"}]}}]});
        let mock = Mock::scripted(vec![Answer::Json(200, answer)]).await;
        let tokens = Arc::new(StaticToken(SecretValue::new("ya29.token")));
        let brain = VertexBrain::new(reqwest::Client::new(), &endpoint(&mock.base, "us-east4"), tokens);
        let reply = brain.complete(ask()).await.expect("reply");
        assert_eq!((reply.text.as_deref(), reply.provider.as_str()), (Some("Hello from Vertex"), "vertex/us-east4"));
        let seen = &mock.seen()[0];
        assert_eq!(
            seen.path,
            "/v1/projects/my-proj/locations/us-east4/publishers/google/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(seen.header("authorization"), Some("Bearer ya29.token"));
        assert_eq!(seen.body["contents"][0]["parts"][0]["text"], "hi");
        assert!(!format!("{brain:?}").contains("ya29.token"));
    }

    #[tokio::test]
    async fn metadata_tokens_are_cached_until_shortly_before_they_expire() {
        let lifetimes = [3600, 30, 3600];
        let metadata = Mock::start(move |n, _| {
            let expires_in = lifetimes.get(n).copied().unwrap_or(3600);
            Answer::Json(
                200,
                json!({"access_token": format!("token-{n}"), "expires_in": expires_in, "token_type": "Bearer"}),
            )
        })
        .await;
        let url = format!("{}/token", metadata.base);
        let tokens = MetadataServer::at(reqwest::Client::new(), &url);
        assert_eq!(tokens.token().await.expect("token").expose(), "token-0");
        assert_eq!(tokens.token().await.expect("cached").expose(), "token-0");
        assert_eq!(metadata.seen().len(), 1);
        assert_eq!(metadata.seen()[0].header("metadata-flavor"), Some("Google"));

        // A token that expires within the margin serves once and is fetched again next time.
        let short_lived = MetadataServer::at(reqwest::Client::new(), &url);
        assert_eq!(short_lived.token().await.expect("token").expose(), "token-1");
        assert_eq!(short_lived.token().await.expect("refreshed").expose(), "token-2");
        assert!(!format!("{short_lived:?}").contains("token-2"));
    }

    #[tokio::test]
    async fn a_broken_metadata_server_is_an_unavailable_provider() {
        let metadata = Mock::scripted(vec![Answer::Html(500, "<html>oops</html>"), Answer::Json(200, json!({}))]).await;
        let tokens = Arc::new(MetadataServer::at(reqwest::Client::new(), &format!("{}/token", metadata.base)));
        let brain = VertexBrain::new(reqwest::Client::new(), &endpoint("http://127.0.0.1:9", "r1"), tokens);
        for expected in ["HTTP 500", "without a token"] {
            let error = brain.complete(ask()).await.expect_err("no token");
            assert!(matches!(&error, BrainError::Unavailable { reason, .. } if reason.contains(expected)), "{error}");
        }
    }
}
