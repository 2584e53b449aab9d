use super::*;
use crate::brain::mock::{Answer, Mock};
use crate::brain::vertex::{StaticToken, VertexBrain, VertexEndpoint};
use devgem_common::ports::brain::{BrainMessage, Priority};
use devgem_common::ports::secrets::SecretValue;
use serde_json::json;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

fn ask() -> BrainRequest {
    BrainRequest { messages: vec![BrainMessage::user("deploy o/app")], tools: vec![], priority: Priority::Deploy }
}

/// Collects the notices a brain gives.
fn notices() -> (OnNotice, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (Arc::new(move |notice| sink.lock().expect("notices").push(notice)), seen)
}

fn take(notices: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *notices.lock().expect("notices"))
}

#[tokio::test]
async fn a_rate_limited_region_and_a_hanging_one_fall_over_to_the_third() {
    let mock = Mock::start(|_, seen| {
        if seen.path.contains("/locations/r1/") {
            Answer::Json(
                429,
                json!({"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}),
            )
        } else if seen.path.contains("/locations/r2/") {
            Answer::Hang
        } else {
            Answer::Json(200, json!({"candidates": [{"content": {"parts": [{"text": "Deploying."}]}}]}))
        }
    })
    .await;
    let tokens = Arc::new(StaticToken(SecretValue::new("ya29.t")));
    let client = reqwest::Client::new();
    let providers = ["r1", "r2", "r3"]
        .into_iter()
        .map(|region| {
            let endpoint = VertexEndpoint {
                base_url: mock.base.clone(),
                project: "p".to_owned(),
                region: region.to_owned(),
                model: "gemini-2.5-flash".to_owned(),
            };
            VertexBrain::new(client.clone(), &endpoint, tokens.clone()).into()
        })
        .collect();
    let policy = FailoverPolicy {
        timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            attempts: 2,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        breaker: BreakerPolicy { failures: 3, cool_down: Duration::from_secs(60) },
    };
    let (on_notice, seen_notices) = notices();
    let brain = FailoverBrain::new(providers, policy).with_notices(on_notice);

    let reply = brain.complete(ask()).await.expect("region 3 answers");
    assert_eq!((reply.provider.as_str(), reply.text.as_deref()), ("vertex/r3", Some("Deploying.")));
    assert_eq!(
        take(&seen_notices),
        [
            "Vertex AI in r1 is rate limited; using Vertex AI in r2",
            "Vertex AI in r2 did not answer within 1 seconds; using Vertex AI in r3",
        ]
    );
    let calls = |region: &str| mock.seen().iter().filter(|s| s.path.contains(&format!("/locations/{region}/"))).count();
    assert_eq!((calls("r1"), calls("r2"), calls("r3")), (2, 1, 1), "a 429 is retried once, a hang is not");

    // Region 1's breaker opened on the rate limit: it is skipped, and not announced again.
    let reply = brain.complete(ask()).await.expect("region 3 again");
    assert_eq!(reply.provider, "vertex/r3");
    assert_eq!(calls("r1"), 2);
    assert_eq!(take(&seen_notices), ["Vertex AI in r2 did not answer within 1 seconds; using Vertex AI in r3"]);
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Answer,
    Busy,
    Down,
    Refuse,
    Hang,
}

/// A provider that plays `script` (its last outcome repeats) and counts its calls.
#[derive(Debug)]
struct Fake {
    id: &'static str,
    script: Mutex<Vec<Outcome>>,
    calls: AtomicUsize,
}

impl Fake {
    fn new(id: &'static str, script: &[Outcome]) -> Arc<Self> {
        Arc::new(Self { id, script: Mutex::new(script.to_vec()), calls: AtomicUsize::new(0) })
    }

    fn then(&self, script: &[Outcome]) {
        *self.script.lock().expect("script") = script.to_vec();
        self.calls.store(0, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn provider(self: &Arc<Self>) -> Provider {
        Provider::new(self.id, self.id.to_uppercase(), self.clone())
    }
}

#[async_trait]
impl Brain for Fake {
    async fn complete(&self, _: BrainRequest) -> Result<BrainReply, BrainError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let outcome = {
            let script = self.script.lock().expect("script");
            script.get(n).or(script.last()).copied().unwrap_or(Outcome::Answer)
        };
        let provider = self.id.to_owned();
        match outcome {
            Outcome::Answer => Ok(BrainReply { text: Some("ok".into()), tool_calls: vec![], provider }),
            Outcome::Busy => Err(BrainError::RateLimited { provider }),
            Outcome::Down => Err(BrainError::Unavailable { provider, reason: "HTTP 500".into() }),
            Outcome::Refuse => Err(BrainError::Refused { provider, reason: "HTTP 400".into() }),
            Outcome::Hang => std::future::pending().await,
        }
    }
}

fn chain(fakes: &[&Arc<Fake>], attempts: u32) -> (FailoverBrain, Arc<Mutex<Vec<String>>>) {
    let policy = FailoverPolicy {
        timeout: Duration::from_secs(10),
        retry: RetryPolicy { attempts, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(4) },
        breaker: BreakerPolicy { failures: 2, cool_down: Duration::from_secs(30) },
    };
    let (on_notice, seen) = notices();
    (FailoverBrain::new(fakes.iter().map(|f| f.provider()).collect(), policy).with_notices(on_notice), seen)
}

#[tokio::test(start_paused = true)]
async fn the_breaker_skips_a_failing_provider_then_probes_it_after_the_cool_down() {
    let (a, b) = (Fake::new("a", &[Outcome::Down]), Fake::new("b", &[Outcome::Answer]));
    let (brain, notices) = chain(&[&a, &b], 1);

    for _ in 0..2 {
        assert_eq!(brain.complete(ask()).await.expect("b answers").provider, "b");
    }
    assert_eq!(take(&notices), ["A is not answering; using B", "A is not answering; using B"]);
    assert_eq!(a.calls(), 2);

    // Two failures in a row opened a's breaker: it is skipped without a word.
    assert_eq!(brain.complete(ask()).await.expect("b answers").provider, "b");
    assert_eq!(a.calls(), 2);
    assert!(take(&notices).is_empty());

    // After the cool-down one request probes a; it answers and the breaker closes.
    tokio::time::advance(Duration::from_secs(30)).await;
    a.then(&[Outcome::Answer]);
    for _ in 0..2 {
        assert_eq!(brain.complete(ask()).await.expect("a is back").provider, "a");
    }
    assert_eq!(a.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_with_backoff_and_refusals_are_not() {
    let (a, b) = (Fake::new("a", &[Outcome::Down, Outcome::Busy, Outcome::Answer]), Fake::new("b", &[Outcome::Answer]));
    let (brain, notices) = chain(&[&a, &b], 3);
    let start = Instant::now();
    assert_eq!(brain.complete(ask()).await.expect("third attempt").provider, "a");
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_millis(3_750),
        "1 s + 2 s backoff: {waited:?}"
    );
    assert!(take(&notices).is_empty());

    a.then(&[Outcome::Refuse]);
    assert_eq!(brain.complete(ask()).await.expect("b").provider, "b");
    assert_eq!(a.calls(), 1);
    assert_eq!(take(&notices), ["A could not handle the request; using B"]);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_provider_is_given_up_after_the_timeout_and_the_last_error_is_returned() {
    let (a, b) = (Fake::new("a", &[Outcome::Hang]), Fake::new("b", &[Outcome::Busy]));
    let (brain, notices) = chain(&[&a, &b], 1);
    let start = Instant::now();
    let error = brain.complete(ask()).await.expect_err("nobody answers");
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    assert!(matches!(&error, BrainError::RateLimited { provider } if provider == "b"), "{error}");
    assert_eq!(take(&notices), ["A did not answer within 10 seconds; using B"]);

    // b's breaker opened on the rate limit; a's counted one failure. With a still hanging:
    let error = brain.complete(ask()).await.expect_err("nobody answers");
    assert!(matches!(&error, BrainError::CircuitOpen { provider, retry_in_secs: 20 } if provider == "b"), "{error}");
    assert!(!format!("{brain:?}").is_empty());
}
