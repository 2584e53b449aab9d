//! One GCP API as DevGem calls it: every request goes through the API's circuit breaker and is
//! retried with backoff while the failure is transient (unavailable, aborted, resource
//! exhausted, deadline exceeded). When the API keeps failing, the breaker opens and calls fail
//! at once with a message that names the API, instead of piling up behind timeouts.

use crate::resilience::{BreakerPolicy, CircuitBreaker, Classify, RetryPolicy};
use std::future::Future;
use std::time::Duration;

/// How a call through [`Api::call`] failed.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker is open: the API failed repeatedly and is not called until `retry_in`.
    Open { api: &'static str, retry_in: Duration },
    /// The last attempt's error (after the retries, if it was transient).
    Failed(E),
}

impl<E: std::fmt::Display> CallError<E> {
    /// The message a user or operator reads.
    pub fn message(&self) -> String {
        match self {
            CallError::Open { api, retry_in } => format!(
                "{api} is failing repeatedly; DevGem stopped calling it for {}s (check the GCP status page)",
                retry_in.as_secs().max(1)
            ),
            CallError::Failed(e) => e.to_string(),
        }
    }
}

/// One API's breaker and retry policy.
#[derive(Debug)]
pub struct Api {
    name: &'static str,
    breaker: CircuitBreaker,
    retry: RetryPolicy,
}

impl Api {
    pub fn new(name: &'static str) -> Self {
        Self::with_policies(
            name,
            BreakerPolicy { failures: 5, cool_down: Duration::from_secs(30) },
            RetryPolicy { attempts: 5, first_delay: Duration::from_millis(100), max_delay: Duration::from_secs(4) },
        )
    }

    pub fn with_policies(name: &'static str, breaker: BreakerPolicy, retry: RetryPolicy) -> Self {
        Self { name, breaker: CircuitBreaker::new(breaker), retry }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs `attempt` until it succeeds, fails for good, or runs out of attempts.
    pub async fn call<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, CallError<E>>
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let trial = self.breaker.admit().map_err(|retry_in| CallError::Open { api: self.name, retry_in })?;
            match attempt().await {
                Ok(value) => {
                    trial.succeeded();
                    return Ok(value);
                }
                Err(error) => {
                    trial.failed(&AsOutage(&error));
                    if tries >= self.retry.attempts || !RetryPolicy::retries(&error) {
                        return Err(CallError::Failed(error));
                    }
                    tokio::time::sleep(self.retry.delay(tries)).await;
                }
            }
        }
    }
}

/// How a GCP failure counts for the breaker: a quota answer (429, resource exhausted) is backed
/// off from and retried, and counts like an outage. The LLM chain's breaker opens at once on
/// one instead, because it has another provider to go to; a GCP API has no other.
struct AsOutage<'a, E>(&'a E);

impl<E: Classify> Classify for AsOutage<'_, E> {
    fn failure(&self) -> crate::resilience::Failure {
        use crate::resilience::Failure;
        match self.0.failure() {
            Failure::SlowDown => Failure::Down,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::Failure;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Fails(Failure);
    impl Classify for Fails {
        fn failure(&self) -> Failure {
            self.0
        }
    }
    impl std::fmt::Display for Fails {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let api = Api::new("Firestore");
        let calls = AtomicU32::new(0);
        let result = api
            .call(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 { Err(Fails(Failure::Down)) } else { Ok(n) }
            })
            .await;
        assert_eq!(result.ok(), Some(2));

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), _> = api
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Fails(Failure::Refused))
            })
            .await;
        assert!(matches!(result, Err(CallError::Failed(Fails(Failure::Refused)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_answer_is_backed_off_from_and_retried_without_opening_the_breaker() {
        let api = Api::new("Cloud Run");
        let calls = AtomicU32::new(0);
        let result = api
            .call(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 { Err(Fails(Failure::SlowDown)) } else { Ok(n) }
            })
            .await;
        assert_eq!(result.ok(), Some(3), "three 429s, then the call goes through");
        let next = api.call(|| async { Ok::<_, Fails>(7) }).await;
        assert_eq!(next.ok(), Some(7), "the breaker stayed closed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_opens_the_breaker_and_later_calls_fail_fast_with_the_api_named() {
        let api = Api::new("Pub/Sub");
        let calls = AtomicU32::new(0);
        let down = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Fails(Failure::Down))
        };
        assert!(matches!(api.call(down).await, Err(CallError::Failed(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 5, "five attempts, then the breaker opened");
        let error = api.call(down).await.expect_err("open");
        assert!(matches!(error, CallError::Open { api: "Pub/Sub", .. }));
        assert!(error.message().contains("Pub/Sub is failing repeatedly"), "{}", error.message());
        assert_eq!(calls.load(Ordering::SeqCst), 5, "an open breaker sends nothing");
        tokio::time::advance(Duration::from_secs(31)).await;
        let calls_before = calls.load(Ordering::SeqCst);
        let _ = api.call(down).await;
        assert_eq!(calls.load(Ordering::SeqCst), calls_before + 1, "after the cool-down one probe goes through");
    }
}
