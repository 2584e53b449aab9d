//! What makes DevGem a good client of services that rate-limit and sometimes fail (LLM
//! providers, GCP APIs):
//!
//! - [`CircuitBreaker`], one per service (and region): after a few failed requests in a row, or
//!   at once when the service says "slow down" (429/503), it stops sending there for a cool-down,
//!   then lets one probe through; the probe's outcome closes or reopens it. A service that is
//!   down then fails fast instead of costing a timeout per request.
//! - [`RetryPolicy`]: exponential backoff with jitter between attempts, for the errors another
//!   attempt could fix.
//!
//! Errors say which kind of failure they are through [`Classify`]. All timing is `tokio::time`,
//! so tests run it on a paused clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// What a failed request says about the service behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service answered and refused this request (bad input, not found, a conflict):
    /// another attempt would be refused again, and the service is alive.
    Refused,
    /// The service asked to slow down (429, resource exhausted): back off, and open the breaker.
    SlowDown,
    /// No usable answer (5xx, unavailable, deadline, connection error): worth another attempt.
    Down,
}

/// An error that knows which [`Failure`] it is.
pub trait Classify {
    fn failure(&self) -> Failure;
}

/// When a breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed requests in a row that open the breaker.
    pub failures: u32,
    /// How long an open breaker refuses requests before it lets a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { failures: 3, cool_down: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it settles.
    HalfOpen,
}

/// One provider's circuit breaker. See the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: Mutex<BreakerState>,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self { policy, state: Mutex::new(BreakerState::Closed { failures: 0 }) }
    }

    fn state(&self) -> MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a request through, or says how long until the provider is tried again.
    pub fn admit(&self) -> Result<Trial<'_>, Duration> {
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            BreakerState::Closed { .. } => Ok(Trial { breaker: self, probe: false, settled: false }),
            BreakerState::Open { until } if now >= until => {
                *state = BreakerState::HalfOpen;
                Ok(Trial { breaker: self, probe: true, settled: false })
            }
            BreakerState::Open { until } => Err(until - now),
            BreakerState::HalfOpen => Err(self.policy.cool_down),
        }
    }

    /// Whether requests are refused now (open, or half-open with its probe in flight).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), BreakerState::Closed { .. })
    }
}

/// A request let through a [`CircuitBreaker`]; settle it with [`Trial::succeeded`] or
/// [`Trial::failed`]. A trial dropped unsettled (its caller gave up) says nothing about the
/// provider: if it was the probe, the next request probes instead.
#[derive(Debug)]
pub struct Trial<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Trial<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        *self.breaker.state() = BreakerState::Closed { failures: 0 };
    }

    /// Records how the request failed. A refused request still got an answer, so it counts as
    /// a sign of life; "slow down" opens the breaker at once; anything else counts towards
    /// [`BreakerPolicy::failures`] (and reopens a half-open breaker).
    pub fn failed(mut self, error: &impl Classify) {
        self.settled = true;
        let policy = self.breaker.policy;
        let mut state = self.breaker.state();
        let open = BreakerState::Open { until: Instant::now() + policy.cool_down };
        *state = match (*state, error.failure()) {
            (_, Failure::Refused) => BreakerState::Closed { failures: 0 },
            (_, Failure::SlowDown) => open,
            _ if self.probe => open,
            (BreakerState::Closed { failures }, _) if failures + 1 >= policy.failures => open,
            (BreakerState::Closed { failures }, _) => BreakerState::Closed { failures: failures + 1 },
            // Already open, or another request is probing: that one decides.
            (other, _) => other,
        };
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            *self.breaker.state() = BreakerState::Open { until: Instant::now() };
        }
    }
}

/// How often, and how patiently, one provider is retried within one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 3, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// Whether another attempt could go differently: rate limits, 5xx, timeouts and connection
    /// errors may pass; a refused request would be refused again.
    pub fn retries(error: &impl Classify) -> bool {
        matches!(error.failure(), Failure::SlowDown | Failure::Down)
    }

    /// The delay before retry number `retry` (1 for the first): doubling from `first_delay` up
    /// to `max_delay`, plus up to 25 % jitter so that many clients told to slow down at the same
    /// moment do not come back together.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.first_delay.saturating_mul(1 << retry.saturating_sub(1).min(20)).min(self.max_delay);
        base + base.mul_f64(fastrand::f64() * 0.25)
    }
}
