//! Fast-path chat turns (docs/PERF.md): a `chat.turn` push received by the chat function → its
//! reply event written (the handler answers the push only after the reply's transaction has
//! committed), on the embedded default, for each rules intent. The user has 20 deployments, so
//! status, list and why-did-it-fail query them (none failed: why-did-it-fail reads them all).
//!
//! `cargo bench -p devgem-e2e --bench chat`

use axum::body::Body;
use devgem_cli::functions::Function;
use devgem_common::deployments::{StartRequest, start};
use devgem_common::envelope::{DeliveryForm, PubsubMessage, PushRequest};
use devgem_common::events::{ChatTurn, EventContext, to_message};
use devgem_common::ids::{CorrelationId, SessionId};
use std::time::Instant;
use tower::ServiceExt;

const WARMUP: usize = 20;
const TURNS: usize = 500;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = devgem_e2e::bench_embedded(dir.path());
    embedded.identity.ensure_admin(None).await.expect("admin");
    let owner = devgem_common::ids::UserId::admin();
    let session = SessionId::generate();
    for i in 0..20 {
        let request = StartRequest {
            source: format!("/srv/app-{i}"),
            name: Some(format!("app-{i}")),
            session_id: Some(session.clone()),
            ..StartRequest::default()
        };
        start(&embedded.ports, embedded.secrets.as_ref(), &owner, CorrelationId::generate(), request, "bench")
            .await
            .expect("seed");
    }
    let router = Function::Chat.router(&embedded);
    println!("| message | turns | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    let mut message_id = 0u64;
    for text in ["status", "list deployments", "why did it fail?", "help", "logs 20"] {
        let mut samples = Vec::with_capacity(TURNS);
        for i in 0..WARMUP + TURNS {
            message_id += 1;
            let turn = ChatTurn {
                session_id: session.clone(),
                user_id: owner.clone(),
                text: text.to_owned(),
                client_message_id: Some(format!("m{message_id}")),
            };
            let ctx = EventContext::new("bench", CorrelationId::generate());
            let message = to_message(&turn, &ctx, chrono::Utc::now()).expect("message");
            let push = PushRequest {
                message: PubsubMessage {
                    data: message.data,
                    attributes: message.attributes,
                    message_id: message_id.to_string(),
                    publish_time: Some(chrono::Utc::now()),
                    ordering_key: message.ordering_key,
                },
                subscription: Some("projects/local/subscriptions/chat-turns".into()),
                delivery_attempt: Some(1),
                form: DeliveryForm::PubsubPush,
            };
            let request = http::Request::post(devgem_chat::PUSH_CHAT_TURNS)
                .header("content-type", "application/json")
                .body(Body::from(push.to_push_json()))
                .expect("request");
            let started = Instant::now();
            let response = router.clone().oneshot(request).await.expect("response");
            let elapsed = started.elapsed();
            assert_eq!(response.status().as_u16(), 204, "{text}: the turn was not answered");
            if i >= WARMUP {
                samples.push(elapsed.as_secs_f64() * 1000.0);
            }
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {text} | {TURNS} | {:.2} ms | {:.2} ms | {:.2} ms |",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.last().copied().unwrap_or_default()
        );
    }
}
