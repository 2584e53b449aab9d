//! What makes DevGem a good client of LLM providers that rate-limit and sometimes fail:
//!
//! - [`CircuitBreaker`] and [`RetryPolicy`] (from [`crate::resilience`]), one breaker per provider
//!   and region: a provider that is down then costs the chat nothing instead of a timeout per
//!   message.
//! - [`RateLimiter`]: DevGem's own token budget, a per-minute and a per-hour token bucket charged
//!   with an *estimate* before each request (the real count is only known afterwards). When the
//!   budget is short, waiting requests are served by [`Priority`]: a deploy before an analysis
//!   before a chat message, first come first served within one priority.
//!
//! All timing is `tokio::time`, so tests run it on a paused clock.

pub use crate::resilience::{BreakerPolicy, CircuitBreaker, RetryPolicy};
use crate::resilience::{Classify, Failure};
use devgem_common::ports::brain::{BrainError, BrainRequest, Priority};
use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

impl Classify for BrainError {
    fn failure(&self) -> Failure {
        match self {
            BrainError::RateLimited { .. } => Failure::SlowDown,
            BrainError::Unavailable { .. } => Failure::Down,
            // An open breaker has already said when to come back: not worth an attempt now.
            BrainError::Refused { .. } | BrainError::CircuitOpen { .. } => Failure::Refused,
            _ => Failure::Down,
        }
    }
}

/// DevGem's token budget for one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `None`: no limit over that window.
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_hour: Option<u64>,
    /// Added to each request's estimate for the answer, which is not known in advance.
    pub expected_output_tokens: u64,
    /// A request that would wait longer gives up as `RateLimited` (the chat then answers
    /// with its rules engine rather than leave the user waiting).
    pub max_wait: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            tokens_per_minute: None,
            tokens_per_hour: None,
            expected_output_tokens: 1_000,
            max_wait: Duration::from_secs(60),
        }
    }
}

/// The tokens `request` is expected to cost: about one per four bytes of the request as JSON,
/// plus the expected answer.
pub fn estimate_tokens(request: &BrainRequest, expected_output_tokens: u64) -> u64 {
    let bytes = serde_json::to_string(request).map_or(0, |json| json.len());
    bytes as u64 / 4 + expected_output_tokens
}

/// What [`RateLimiter`] gives up with: who "rate limited" the request.
pub const BUDGET_PROVIDER: &str = "DevGem's token budget";

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(tokens: u64, window: Duration, now: Instant) -> Self {
        let capacity = tokens as f64;
        Self { capacity, per_second: capacity / window.as_secs_f64(), tokens: capacity, at: now }
    }

    /// A request larger than the whole bucket is charged the whole bucket, or it would wait forever.
    fn cost(&self, tokens: u64) -> f64 {
        (tokens as f64).min(self.capacity)
    }

    /// How long until `tokens` are available (zero if they are).
    fn wait(&mut self, tokens: u64, now: Instant) -> Duration {
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.per_second).min(self.capacity);
        self.at = now;
        let missing = self.cost(tokens) - self.tokens;
        // Below a millionth of a token is rounding, not a shortage.
        if missing <= 1e-6 { Duration::ZERO } else { Duration::from_secs_f64(missing / self.per_second) }
    }
}

/// Waiting requests in the order they are served: highest priority first, then first come.
type Ticket = (Reverse<Priority>, u64);

#[derive(Debug)]
struct Queue {
    buckets: Vec<Bucket>,
    waiting: BTreeSet<Ticket>,
    next: u64,
}

/// DevGem's own token budget: see the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    queue: Mutex<Queue>,
    /// Wakes the waiting requests when one leaves the queue, so the next in line can look.
    changed: Notify,
    expected_output_tokens: u64,
    max_wait: Duration,
}

impl RateLimiter {
    /// `None` when the budget sets no limit.
    pub fn new(budget: &Budget) -> Option<Self> {
        let now = Instant::now();
        let buckets: Vec<Bucket> = [
            budget.tokens_per_minute.map(|t| Bucket::new(t, Duration::from_secs(60), now)),
            budget.tokens_per_hour.map(|t| Bucket::new(t, Duration::from_secs(3600), now)),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!buckets.is_empty()).then(|| Self {
            queue: Mutex::new(Queue { buckets, waiting: BTreeSet::new(), next: 0 }),
            changed: Notify::new(),
            expected_output_tokens: budget.expected_output_tokens,
            max_wait: budget.max_wait,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges the estimated cost of `request`, waiting behind every request of higher priority
    /// and every earlier one of the same priority until the buckets hold it.
    pub async fn acquire_for(&self, request: &BrainRequest) -> Result<(), BrainError> {
        self.acquire(estimate_tokens(request, self.expected_output_tokens), request.priority).await
    }

    /// Charges `tokens` when it is the turn of this request; see [`RateLimiter::acquire_for`].
    pub async fn acquire(&self, tokens: u64, priority: Priority) -> Result<(), BrainError> {
        let place = Place::take(self, priority);
        tokio::time::timeout(self.max_wait, self.wait_turn(place.ticket, tokens))
            .await
            .map_err(|_| BrainError::RateLimited { provider: BUDGET_PROVIDER.to_owned() })
    }

    async fn wait_turn(&self, ticket: Ticket, tokens: u64) {
        loop {
            // Registered before looking, so a change between the look and the wait still wakes us.
            let changed = self.changed.notified();
            let wait = {
                let mut queue = self.queue();
                if queue.waiting.first() != Some(&ticket) {
                    None
                } else {
                    let now = Instant::now();
                    let wait = queue.buckets.iter_mut().map(|b| b.wait(tokens, now)).max().unwrap_or_default();
                    if wait.is_zero() {
                        for bucket in &mut queue.buckets {
                            bucket.tokens -= bucket.cost(tokens);
                        }
                        return;
                    }
                    Some(wait)
                }
            };
            match wait {
                // First in line: the wait is exact, since tokens only accrue. A newcomer that
                // moves ahead meanwhile is seen when this wakes.
                Some(wait) => tokio::time::sleep(wait).await,
                None => changed.await,
            }
        }
    }
}

/// A request's place in the queue; leaving it (served, timed out or cancelled) lets the next
/// one move up.
struct Place<'a> {
    limiter: &'a RateLimiter,
    ticket: Ticket,
}

impl<'a> Place<'a> {
    fn take(limiter: &'a RateLimiter, priority: Priority) -> Self {
        let mut queue = limiter.queue();
        queue.next += 1;
        let ticket = (Reverse(priority), queue.next);
        queue.waiting.insert(ticket);
        Self { limiter, ticket }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.limiter.queue().waiting.remove(&self.ticket);
        self.limiter.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn unavailable() -> BrainError {
        BrainError::Unavailable { provider: "p".into(), reason: "HTTP 500".into() }
    }

    fn rate_limited() -> BrainError {
        BrainError::RateLimited { provider: "p".into() }
    }

    const POLICY: BreakerPolicy = BreakerPolicy { failures: 3, cool_down: Duration::from_secs(30) };

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_failures_in_a_row_and_probes_after_the_cool_down() {
        let breaker = CircuitBreaker::new(POLICY);
        breaker.admit().expect("closed").failed(&unavailable());
        breaker.admit().expect("closed").succeeded();
        breaker.admit().expect("closed").failed(&unavailable());
        breaker.admit().expect("closed").failed(&unavailable());
        assert!(!breaker.is_open(), "a success in between resets the count");
        breaker.admit().expect("closed").failed(&unavailable());
        assert!(breaker.is_open());
        assert_eq!(breaker.admit().map(drop), Err(Duration::from_secs(30)));

        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(breaker.admit().is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = breaker.admit().expect("half-open: one probe");
        assert!(breaker.admit().is_err(), "only one probe at a time");
        probe.failed(&unavailable());
        assert_eq!(breaker.admit().map(drop), Err(Duration::from_secs(30)), "a failed probe reopens it");

        tokio::time::advance(Duration::from_secs(30)).await;
        breaker.admit().expect("probe").succeeded();
        assert!(!breaker.is_open());
        breaker.admit().expect("closed again").failed(&unavailable());
        assert!(!breaker.is_open(), "the count starts over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_opens_the_breaker_at_once_and_a_refusal_is_a_sign_of_life() {
        let breaker = CircuitBreaker::new(POLICY);
        breaker.admit().expect("closed").failed(&unavailable());
        breaker.admit().expect("closed").failed(&unavailable());
        breaker.admit().expect("closed").failed(&BrainError::Refused { provider: "p".into(), reason: "400".into() });
        breaker.admit().expect("closed").failed(&unavailable());
        assert!(!breaker.is_open());
        breaker.admit().expect("closed").failed(&rate_limited());
        assert!(breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_request_probe() {
        let breaker = CircuitBreaker::new(POLICY);
        breaker.admit().expect("closed").failed(&rate_limited());
        tokio::time::advance(POLICY.cool_down).await;
        drop(breaker.admit().expect("probe"));
        breaker.admit().expect("another probe").succeeded();
        assert!(!breaker.is_open());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let policy =
            RetryPolicy { attempts: 5, first_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for (retry, base) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            let delay = policy.delay(retry);
            let base = Duration::from_millis(base);
            assert!(delay >= base && delay <= base.mul_f64(1.25), "retry {retry}: {delay:?}");
        }
        assert!(RetryPolicy::retries(&rate_limited()) && RetryPolicy::retries(&unavailable()));
        assert!(!RetryPolicy::retries(&BrainError::Refused { provider: "p".into(), reason: "bad".into() }));
    }

    fn limiter(per_minute: Option<u64>, per_hour: Option<u64>, max_wait: Duration) -> Arc<RateLimiter> {
        let budget =
            Budget { tokens_per_minute: per_minute, tokens_per_hour: per_hour, expected_output_tokens: 0, max_wait };
        Arc::new(RateLimiter::new(&budget).expect("a limit"))
    }

    /// Starts `acquire(tokens, priority)` and returns when it got through, in seconds since `start`.
    fn spawn_acquire(
        limiter: &Arc<RateLimiter>,
        tokens: u64,
        priority: Priority,
        start: Instant,
    ) -> tokio::task::JoinHandle<u64> {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            limiter.acquire(tokens, priority).await.expect("served");
            (Instant::now() - start).as_secs()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deploy_is_served_before_a_waiting_chat() {
        // 60 tokens a minute: one a second.
        let limiter = limiter(Some(60), None, Duration::from_secs(600));
        let start = Instant::now();
        limiter.acquire(60, Priority::Chat).await.expect("a full bucket serves at once");
        let chat = spawn_acquire(&limiter, 30, Priority::Chat, start);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let analyze = spawn_acquire(&limiter, 30, Priority::Analyze, start);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let deploy = spawn_acquire(&limiter, 30, Priority::Deploy, start);
        let (chat, analyze, deploy) =
            (chat.await.expect("chat"), analyze.await.expect("analyze"), deploy.await.expect("deploy"));
        assert_eq!((deploy, analyze, chat), (30, 60, 90));
    }

    #[tokio::test(start_paused = true)]
    async fn the_hourly_bucket_limits_too_and_a_request_gives_up_after_max_wait() {
        let limiter = limiter(Some(1_000), Some(1_500), Duration::from_secs(3600));
        let start = Instant::now();
        limiter.acquire(1_000, Priority::Deploy).await.expect("full buckets");
        // The minute bucket refills in a minute; the hour bucket has 500 and gains 1500/3600 a second.
        let second = spawn_acquire(&limiter, 1_000, Priority::Deploy, start).await.expect("served");
        assert_eq!(second, 1200);

        let impatient = limiter_with_wait(Duration::from_secs(10));
        impatient.acquire(60, Priority::Chat).await.expect("full");
        let error = impatient.acquire(60, Priority::Deploy).await.expect_err("would wait a minute");
        assert!(matches!(error, BrainError::RateLimited { provider } if provider == BUDGET_PROVIDER));
        // The one that gave up left the queue: the next in line is served when the tokens are there.
        let start = Instant::now();
        impatient.acquire(10, Priority::Chat).await.expect("served");
        assert_eq!((Instant::now() - start).as_secs(), 0, "tokens refilled while the other one waited");
    }

    fn limiter_with_wait(max_wait: Duration) -> Arc<RateLimiter> {
        limiter(Some(60), None, max_wait)
    }

    #[test]
    fn the_estimate_is_a_quarter_of_the_json_plus_the_expected_answer() {
        let request = BrainRequest {
            messages: vec![devgem_common::ports::brain::BrainMessage::user("x".repeat(4_000))],
            tools: vec![],
            priority: Priority::Chat,
        };
        let estimate = estimate_tokens(&request, 500);
        assert!((1_500..1_520).contains(&estimate), "{estimate}");
    }

    #[test]
    fn no_limit_means_no_limiter() {
        assert!(RateLimiter::new(&Budget::default()).is_none());
    }
}
