//! The Brain the chat is given: providers in order of preference (e.g. Vertex AI in each region,
//! then the Gemini API), each behind its own circuit breaker.
//!
//! A request first waits its turn in DevGem's token budget ([`RateLimiter`], if one is set), then
//! goes to each provider in order, skipping those whose breaker is open. At one provider it is
//! retried with backoff while the error could pass ([`RetryPolicy`]), all within
//! [`FailoverPolicy::timeout`]; then the next provider is tried. The reply's `provider` names who
//! answered (`vertex/europe-west1`). When every provider fails, the last error is returned and
//! the chat answers with its offline rules engine.
//!
//! # Notices
//! Moving on to the next provider is announced in plain words for the user ("Vertex AI in
//! us-central1 is rate limited; using Vertex AI in europe-west1"): one notice per provider that
//! failed *during this request*, passed to the [`OnNotice`] callback just before the next
//! provider is tried. Providers skipped because their breaker is open were announced when they
//! failed and are skipped silently. The error itself goes to the log, never into a notice.

use super::resilience::{BreakerPolicy, CircuitBreaker, RateLimiter, RetryPolicy};
use async_trait::async_trait;
use devgem_common::ports::brain::{Brain, BrainError, BrainReply, BrainRequest};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Receives each fallback notice. It is called synchronously, on the task that called
/// `complete`, before `complete` returns; so a caller can route it to the current conversation
/// (e.g. through a task-local) and show it as an `ai_thought`.
pub type OnNotice = Arc<dyn Fn(String) + Send + Sync>;

/// One provider of the chain.
pub struct Provider {
    /// Who answered, as replies and errors name it (`vertex/us-central1`).
    id: String,
    /// The provider in words for notices, as it reads mid-sentence ("Vertex AI in us-central1",
    /// "the Gemini API").
    title: String,
    brain: Arc<dyn Brain>,
}

impl Provider {
    pub fn new(id: impl Into<String>, title: impl Into<String>, brain: Arc<dyn Brain>) -> Self {
        Self { id: id.into(), title: title.into(), brain }
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider").field("id", &self.id).field("brain", &self.brain).finish_non_exhaustive()
    }
}

/// How long and how hard each provider is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// The time one provider gets for one request, its retries included. A thinking model with
    /// tools can take tens of seconds to answer; a provider that hangs longer is given up on.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(60), retry: RetryPolicy::default(), breaker: BreakerPolicy::default() }
    }
}

#[derive(Debug)]
struct Link {
    provider: Provider,
    breaker: CircuitBreaker,
}

/// Providers in order, with breakers, retries, a token budget and notices. See the module docs.
pub struct FailoverBrain {
    links: Vec<Link>,
    policy: FailoverPolicy,
    limiter: Option<RateLimiter>,
    on_notice: Option<OnNotice>,
}

impl fmt::Debug for FailoverBrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverBrain")
            .field("links", &self.links)
            .field("policy", &self.policy)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl FailoverBrain {
    pub fn new(providers: Vec<Provider>, policy: FailoverPolicy) -> Self {
        let links = providers
            .into_iter()
            .map(|provider| Link { provider, breaker: CircuitBreaker::new(policy.breaker) })
            .collect();
        Self { links, policy, limiter: None, on_notice: None }
    }

    /// Makes every request wait its turn in `limiter` first.
    pub fn with_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Sends fallback notices to `on_notice` (see the module docs).
    pub fn with_notices(mut self, on_notice: OnNotice) -> Self {
        self.on_notice = Some(on_notice);
        self
    }

    /// One provider's attempts at `request`, with backoff between them.
    async fn attempts(&self, provider: &Provider, request: &BrainRequest) -> Result<BrainReply, BrainError> {
        let mut attempt = 1;
        loop {
            match provider.brain.complete(request.clone()).await {
                Err(error) if attempt < self.policy.retry.attempts && RetryPolicy::retries(&error) => {
                    tracing::debug!(provider = %provider.id, %error, attempt, "brain provider failed; retrying");
                    tokio::time::sleep(self.policy.retry.delay(attempt)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// What happened to a provider, in words a user can read.
fn in_words(title: &str, error: &BrainError) -> String {
    let title = sentence_start(title);
    match error {
        BrainError::RateLimited { .. } => format!("{title} is rate limited"),
        BrainError::Refused { .. } => format!("{title} could not handle the request"),
        _ => format!("{title} is not answering"),
    }
}

/// `title` with a capital first letter ("the Gemini API" opens a sentence as "The Gemini API").
fn sentence_start(title: &str) -> String {
    let mut chars = title.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[async_trait]
impl Brain for FailoverBrain {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError> {
        if let Some(limiter) = &self.limiter {
            limiter.acquire_for(&request).await?;
        }
        let mut last_error = None;
        // What went wrong at the previous provider, to tell when the next one is tried.
        let mut setback: Option<String> = None;
        for Link { provider, breaker } in &self.links {
            let trial = match breaker.admit() {
                Ok(trial) => trial,
                Err(retry_in) => {
                    let retry_in_secs = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
                    last_error = Some(BrainError::CircuitOpen { provider: provider.id.clone(), retry_in_secs });
                    continue;
                }
            };
            if let (Some(what), Some(on_notice)) = (setback.take(), &self.on_notice) {
                on_notice(format!("{what}; using {}", provider.title));
            }
            let (error, words) =
                match tokio::time::timeout(self.policy.timeout, self.attempts(provider, &request)).await {
                    Ok(Ok(reply)) => {
                        trial.succeeded();
                        return Ok(reply);
                    }
                    Ok(Err(error)) => {
                        let words = in_words(&provider.title, &error);
                        (error, words)
                    }
                    Err(_) => {
                        let secs = self.policy.timeout.as_secs();
                        let reason = format!("no answer within {secs}s");
                        let words = format!("{} did not answer within {secs} seconds", sentence_start(&provider.title));
                        (BrainError::Unavailable { provider: provider.id.clone(), reason }, words)
                    }
                };
            tracing::warn!(provider = %provider.id, %error, "brain provider failed");
            trial.failed(&error);
            setback = Some(words);
            last_error = Some(error);
        }
        Err(last_error.unwrap_or_else(|| BrainError::Unavailable {
            provider: "brain".to_owned(),
            reason: "no provider is configured".to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests;
