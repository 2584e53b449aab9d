//! The HTTP exchange every adapter shares: POST a JSON body, get JSON back or a [`BrainError`]
//! a person can read. This is the one place that decides what an answer means:
//!
//! | answer | error | why |
//! |---|---|---|
//! | 429, 503 | `RateLimited` | both say "slow down" (Google answers 503 when a model is overloaded); the breaker opens at once |
//! | 401, 403, 404 | `Unavailable` | this endpoint cannot serve us (key, permission, model not in the region); another provider may |
//! | other 4xx | `Refused` | the request itself is wrong; the same provider would refuse it again |
//! | 5xx, timeout, connection error, a body that is not JSON | `Unavailable` | transient: worth a retry |
//!
//! Error texts never hold the credential (it is sent as a sensitive header and scrubbed from
//! anything a server echoes back), the URL, or a dumped error page.

use devgem_common::ports::brain::BrainError;
use devgem_common::ports::secrets::SecretValue;
use reqwest::header::HeaderValue;
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// How a request proves who sends it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Auth<'a> {
    None,
    /// An API key in a header of its own (Gemini's `x-goog-api-key`).
    Header(&'static str, &'a SecretValue),
    /// `Authorization: Bearer` (Vertex AI access tokens, OpenAI-compatible keys).
    Bearer(&'a SecretValue),
}

impl Auth<'_> {
    fn secret(&self) -> Option<&str> {
        match self {
            Auth::None => None,
            Auth::Header(_, secret) | Auth::Bearer(secret) => Some(secret.expose()).filter(|s| !s.is_empty()),
        }
    }

    fn header(&self) -> Option<(&'static str, String)> {
        match self {
            Auth::None => None,
            Auth::Header(name, secret) => Some((name, secret.expose().to_owned())),
            Auth::Bearer(secret) => Some(("authorization", format!("Bearer {}", secret.expose()))),
        }
    }
}

/// The longest error detail kept from a provider's answer.
const MAX_DETAIL_CHARS: usize = 300;

/// POSTs `body` to `url` and returns the JSON answer; `provider` names who failed in errors.
pub(super) async fn post_json(
    client: &Client,
    provider: &str,
    url: &str,
    auth: Auth<'_>,
    body: &Value,
) -> Result<Value, BrainError> {
    let scrub = |text: String| match auth.secret() {
        Some(secret) => text.replace(secret, "***"),
        None => text,
    };
    let unavailable = |reason: String| BrainError::Unavailable { provider: provider.to_owned(), reason: scrub(reason) };

    let mut request = client.post(url).json(body);
    if let Some((name, value)) = auth.header() {
        let mut value = HeaderValue::from_str(&value).map_err(|_| BrainError::Refused {
            provider: provider.to_owned(),
            reason: "the configured credential has characters an HTTP header cannot carry".to_owned(),
        })?;
        // Keeps the credential out of reqwest's and hyper's Debug output.
        value.set_sensitive(true);
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| unavailable(describe(e)))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| unavailable(describe(e)))?;
    let json = serde_json::from_slice::<Value>(&bytes).ok();

    if status.is_success() {
        return json
            .ok_or_else(|| unavailable(format!("answered HTTP {} with a body that is not JSON", status.as_u16())));
    }
    let detail = match json.as_ref().and_then(error_message) {
        Some(message) => format!("HTTP {}: {}", status.as_u16(), truncate(message)),
        None => format!("HTTP {} with a body that is not a JSON error", status.as_u16()),
    };
    let provider = provider.to_owned();
    Err(match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => BrainError::RateLimited { provider },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            BrainError::Unavailable { provider, reason: scrub(detail) }
        }
        s if s.is_client_error() => BrainError::Refused { provider, reason: scrub(detail) },
        _ => BrainError::Unavailable { provider, reason: scrub(detail) },
    })
}

/// The message of Google's and OpenAI's `{"error": {"message": ...}}`, or Ollama's `{"error": "..."}`.
fn error_message(body: &Value) -> Option<&str> {
    let error = body.get("error")?;
    error.get("message").and_then(Value::as_str).or_else(|| error.as_str())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// A transport failure in words. The innermost cause says what happened ("Connection refused");
/// the URL is dropped: it is ours, not news to anyone reading the error.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    format!("{what} ({cause})")
}
