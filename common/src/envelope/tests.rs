//! Push deliveries in both forms (fixtures under `common/fixtures/push/`), malformed bodies, and
//! the axum extractor.

use super::*;
use crate::events::{ChatTurn, EventContext, EventPayload, MonitorAlert, ce_attributes, to_message};
use crate::ids::CorrelationId;
use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http::header::{CONTENT_TYPE, HeaderValue};
use proptest::prelude::*;
use tower::ServiceExt as _;

const PUBSUB_PUSH: &str = include_str!("../../fixtures/push/pubsub_push.json");
const EVENTARC_BODY: &str = include_str!("../../fixtures/push/eventarc_body.json");
const CHAT_TURN: &str = include_str!("../../fixtures/events/chat_turn.json");
const DEPLOYMENT_ABORT: &str = include_str!("../../fixtures/events/deployment_abort.json");
const SERVICE_ROLLBACK: &str = include_str!("../../fixtures/events/service_rollback.json");
const MONITOR_ALERT: &str = include_str!("../../fixtures/events/monitor_alert.json");

fn utc(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw).expect("valid RFC 3339").with_timezone(&Utc)
}

fn chat_turn() -> ChatTurn {
    serde_json::from_str(CHAT_TURN).expect("chat turn fixture decodes")
}

/// The headers Eventarc sends with a Pub/Sub-triggered event in binary mode.
fn eventarc_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-type", EVENTARC_PUBSUB_TYPE),
        ("ce-source", "//pubsub.googleapis.com/projects/devgem-prod/topics/chat-turns"),
        ("ce-id", "11224738297152317"),
        ("ce-time", "2024-06-11T09:31:02.118Z"),
        ("content-type", "application/json"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

#[test]
fn pubsub_push_decodes() {
    let request = PushRequest::decode(&json_headers(), PUBSUB_PUSH.as_bytes()).expect("push decodes");
    assert_eq!(request.form, DeliveryForm::PubsubPush);
    let m = &request.message;
    assert_eq!(m.message_id, "11224738297152016");
    assert_eq!(m.publish_time, Some(utc("2024-06-11T09:30:58.412Z")));
    assert_eq!(m.ordering_key.as_deref(), Some("0190a4c2e7b87c3d9a1f5e6b2c4d8a10"));
    assert_eq!(request.subscription.as_deref(), Some("projects/devgem-prod/subscriptions/chat-turns-chat"));
    assert_eq!(request.delivery_attempt, Some(1));

    let data: serde_json::Value = serde_json::from_slice(&m.data).expect("data is JSON");
    let fixture: serde_json::Value = serde_json::from_str(CHAT_TURN).expect("fixture is JSON");
    assert_eq!(data, fixture, "data is the base64-decoded ChatTurn");

    let attr = |name: &str| m.attributes.get(name).map(String::as_str);
    assert_eq!(attr(ce_attributes::SPECVERSION), Some("1.0"));
    assert_eq!(attr(ce_attributes::TYPE), Some(ChatTurn::TYPE));
    assert_eq!(attr(ce_attributes::SOURCE), Some("//devgem/functions/relay"));
    assert_eq!(attr(ce_attributes::ID), Some("0190a4c2f3d17b4e8c2a6f9d1e5b3c07"));
    assert_eq!(attr(ce_attributes::CONTENT_TYPE), Some("application/json"));
    assert_eq!(attr(ce_attributes::CORRELATION_ID), Some("0190a4c2f3c97a1d9e4b2c8f6a0d5e31"));
    assert_eq!(m.attributes.len(), 8);

    let envelope = PushEnvelope::<ChatTurn>::decode(request).expect("ChatTurn decodes");
    assert_eq!(envelope.payload, chat_turn());
    let meta = envelope.event.expect("CloudEvent attributes");
    assert_eq!(meta.id, "0190a4c2f3d17b4e8c2a6f9d1e5b3c07");
    assert_eq!(meta.event_type, ChatTurn::TYPE);
    assert_eq!(meta.source, "//devgem/functions/relay");
    assert_eq!(meta.subject.as_deref(), Some("sessions/0190a4c2e7b87c3d9a1f5e6b2c4d8a10"));
    assert_eq!(meta.time, Some(utc("2024-06-11T09:30:58.409731Z")));
    assert_eq!(meta.correlation_id.as_ref().map(CorrelationId::as_str), Some("0190a4c2f3c97a1d9e4b2c8f6a0d5e31"));
}

#[test]
fn pubsub_push_decodes_without_content_type_or_snake_case() {
    // Pub/Sub push sets no CloudEvent headers; each id spelling alone is enough.
    let mut value: serde_json::Value = serde_json::from_str(PUBSUB_PUSH).expect("fixture is JSON");
    let message = value["message"].as_object_mut().expect("message object");
    message.remove("message_id");
    message.remove("publish_time");
    let camel = serde_json::to_vec(&value).expect("serializes");
    let request = PushRequest::decode(&HeaderMap::new(), &camel).expect("camelCase only");
    assert_eq!(request.message.message_id, "11224738297152016");
    assert!(request.message.publish_time.is_some());

    let mut value: serde_json::Value = serde_json::from_str(PUBSUB_PUSH).expect("fixture is JSON");
    let message = value["message"].as_object_mut().expect("message object");
    message.remove("messageId");
    message.remove("publishTime");
    message.remove("orderingKey");
    value.as_object_mut().expect("object").remove("deliveryAttempt");
    let snake = serde_json::to_vec(&value).expect("serializes");
    let request = PushRequest::decode(&HeaderMap::new(), &snake).expect("snake_case only");
    assert_eq!(request.message.message_id, "11224738297152016");
    assert_eq!(request.message.publish_time, Some(utc("2024-06-11T09:30:58.412Z")));
    assert_eq!(request.message.ordering_key, None);
    assert_eq!(request.delivery_attempt, None);

    // An empty spelling does not hide the other one.
    let body = br#"{"message": {"messageId": "", "message_id": "42"}}"#;
    let request = PushRequest::decode(&HeaderMap::new(), body).expect("one non-empty id is enough");
    assert_eq!(request.message.message_id, "42");
}

#[test]
fn message_without_data_has_empty_data() {
    let body = br#"{"message": {"messageId": "7", "attributes": {"buildId": "b"}}}"#;
    let request = PushRequest::decode(&HeaderMap::new(), body).expect("data is optional");
    assert!(request.message.data.is_empty());
    assert_eq!(request.message.publish_time, None);
    assert_eq!(request.subscription, None);
    let empty_key = br#"{"message": {"messageId": "7", "orderingKey": ""}}"#;
    let request = PushRequest::decode(&HeaderMap::new(), empty_key).expect("decodes");
    assert_eq!(request.message.ordering_key, None, "an empty ordering key is no key");
}

#[test]
fn eventarc_request_decodes() {
    let request = PushRequest::decode(&eventarc_headers(), EVENTARC_BODY.as_bytes()).expect("Eventarc decodes");
    assert_eq!(request.form, DeliveryForm::Eventarc);
    assert_eq!(request.message.message_id, "11224738297152317");
    assert_eq!(request.message.publish_time, Some(utc("2024-06-11T09:31:02.118Z")));
    assert_eq!(request.delivery_attempt, None);
    assert_eq!(
        request.subscription.as_deref(),
        Some("projects/devgem-prod/subscriptions/eventarc-europe-west1-chat-turns-chat-412")
    );
    // The event inside is read from the message attributes, exactly as for push.
    let envelope = PushEnvelope::<ChatTurn>::decode(request).expect("ChatTurn decodes");
    assert_eq!(envelope.payload, chat_turn());
    let meta = envelope.event.expect("CloudEvent attributes");
    assert_eq!(meta.event_type, ChatTurn::TYPE);
    assert_eq!(meta.id, "0190a4c2f3d17b4e8c2a6f9d1e5b3c07", "the inner event's id, not Eventarc's");
}

#[test]
fn eventarc_request_with_another_type_is_refused() {
    let mut headers = eventarc_headers();
    headers.insert("ce-type", HeaderValue::from_static("google.cloud.storage.object.v1.finalized"));
    let err = PushRequest::decode(&headers, EVENTARC_BODY.as_bytes()).expect_err("not a Pub/Sub event");
    assert_eq!(err, EnvelopeError::NotPubsubEvent("google.cloud.storage.object.v1.finalized".to_owned()));
    assert!(err.to_string().contains("google.cloud.storage.object.v1.finalized"));

    // Our own event type sent straight over HTTP is not an Eventarc Pub/Sub delivery either.
    headers.insert("ce-type", HeaderValue::from_static(ChatTurn::TYPE));
    let err = PushRequest::decode(&headers, CHAT_TURN.as_bytes()).expect_err("not a Pub/Sub event");
    assert_eq!(err, EnvelopeError::NotPubsubEvent(ChatTurn::TYPE.to_owned()));
}

#[test]
fn eventarc_request_without_required_attributes_is_refused() {
    for missing in ["ce-id", "ce-source", "ce-type"] {
        let mut headers = eventarc_headers();
        headers.remove(missing);
        let err = PushRequest::decode(&headers, EVENTARC_BODY.as_bytes()).expect_err("missing attribute");
        assert!(matches!(&err, EnvelopeError::BadCloudEvent(reason) if !reason.is_empty()), "{missing}: {err:?}");
    }

    let mut headers = eventarc_headers();
    headers.insert("ce-specversion", HeaderValue::from_static("2.0"));
    let err = PushRequest::decode(&headers, EVENTARC_BODY.as_bytes()).expect_err("unknown spec version");
    assert!(matches!(err, EnvelopeError::BadCloudEvent(_)), "{err:?}");

    let mut headers = eventarc_headers();
    headers.insert("ce-time", HeaderValue::from_static("last tuesday"));
    let err = PushRequest::decode(&headers, EVENTARC_BODY.as_bytes()).expect_err("bad ce-time");
    assert!(matches!(err, EnvelopeError::BadCloudEvent(_)), "{err:?}");
}

#[test]
fn eventarc_request_with_bad_body_is_refused() {
    let err = PushRequest::decode(&eventarc_headers(), b"").expect_err("no body");
    assert!(matches!(&err, EnvelopeError::NotJson(reason) if reason.contains("no body")), "{err:?}");
    let err = PushRequest::decode(&eventarc_headers(), b"{\"message\": 1}").expect_err("not a message");
    assert!(matches!(err, EnvelopeError::NotJson(_)), "{err:?}");
    let err = PushRequest::decode(&eventarc_headers(), PUBSUB_PUSH.replace("11224738297152016", "").as_bytes())
        .expect_err("no message id");
    assert_eq!(err, EnvelopeError::MissingMessageId);
}

#[test]
fn to_push_json_round_trips() {
    let original = PushRequest::decode(&HeaderMap::new(), PUBSUB_PUSH.as_bytes()).expect("push decodes");
    let json = original.to_push_json();
    let again = PushRequest::decode(&HeaderMap::new(), &json).expect("re-encoded push decodes");
    assert_eq!(again, original);

    // It is the wire shape Pub/Sub pushes: both spellings, base64 data.
    let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    let fixture: serde_json::Value = serde_json::from_str(PUBSUB_PUSH).expect("JSON");
    assert_eq!(value["message"]["messageId"], value["message"]["message_id"]);
    assert_eq!(value["message"]["data"], fixture["message"]["data"]);
    assert_eq!(value["message"]["attributes"], fixture["message"]["attributes"]);

    // A message built by a publisher survives the trip too, including binary data and no
    // optional fields.
    let minimal = PushRequest {
        message: PubsubMessage {
            data: Bytes::from_static(b"\x00\xff\x10binary"),
            attributes: BTreeMap::new(),
            message_id: "1".to_owned(),
            publish_time: None,
            ordering_key: None,
        },
        subscription: None,
        delivery_attempt: None,
        form: DeliveryForm::PubsubPush,
    };
    assert_eq!(PushRequest::decode(&HeaderMap::new(), &minimal.to_push_json()).expect("decodes"), minimal);

    let alert: MonitorAlert = serde_json::from_str(MONITOR_ALERT).expect("alert fixture decodes");
    let ctx = EventContext::new("monitor", CorrelationId::parse("c-1").expect("valid id"));
    let now = utc("2024-06-11T09:31:20.123456Z");
    let out = to_message(&alert, &ctx, now).expect("valid CloudEvent");
    let published = PushRequest {
        message: PubsubMessage {
            data: out.data,
            attributes: out.attributes,
            message_id: "11224738297160001".to_owned(),
            publish_time: Some(now),
            ordering_key: out.ordering_key,
        },
        subscription: Some("projects/devgem-prod/subscriptions/alerts-chat".to_owned()),
        delivery_attempt: Some(3),
        form: DeliveryForm::PubsubPush,
    };
    let again = PushRequest::decode(&HeaderMap::new(), &published.to_push_json()).expect("decodes");
    assert_eq!(again, published);
    assert_eq!(PushEnvelope::<MonitorAlert>::decode(again).expect("alert decodes").payload, alert);
}

#[test]
fn malformed_bodies_are_errors_with_reasons() {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_in_message = format!(r#"{{"message": {{"messageId": "1", "attributes": {}}}}}"#, "{\"a\":".repeat(50_000));
    let deep_unknown = format!(r#"{{"message": {{"messageId": "1"}}, "x": {}}}"#, "[".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("not JSON", b"hello, world".to_vec()),
        ("not UTF-8", b"\xff\xfe\xfd".to_vec()),
        ("JSON without message", br#"{"subscription": "projects/p/subscriptions/s"}"#.to_vec()),
        ("message is not an object", br#"{"message": "hi"}"#.to_vec()),
        ("message without id", br#"{"message": {"data": "e30="}}"#.to_vec()),
        ("empty message id", br#"{"message": {"messageId": "", "data": "e30="}}"#.to_vec()),
        ("bad base64", br#"{"message": {"messageId": "1", "data": "not base64!!"}}"#.to_vec()),
        ("bad publishTime", br#"{"message": {"messageId": "1", "publishTime": "yesterday"}}"#.to_vec()),
        ("numeric message id", br#"{"message": {"messageId": 1}}"#.to_vec()),
        ("attributes not strings", br#"{"message": {"messageId": "1", "attributes": {"a": 1}}}"#.to_vec()),
        ("negative deliveryAttempt", br#"{"message": {"messageId": "1"}, "deliveryAttempt": -1}"#.to_vec()),
        ("array body", br#"[{"message": {"messageId": "1"}}]"#.to_vec()),
        (
            "envelope as a positional array",
            br#"[{"messageId": "1", "data": "e30="}, "projects/p/subscriptions/s", 1]"#.to_vec(),
        ),
        ("message as a positional array", br#"{"message": ["e30=", {}, "1"]}"#.to_vec()),
        ("null body", b"null".to_vec()),
        ("trailing garbage", br#"{"message": {"messageId": "1"}} x"#.to_vec()),
        ("huge nesting", deep_array.into_bytes()),
        ("huge nesting in message", deep_in_message.into_bytes()),
        ("huge nesting in an unknown field", deep_unknown.into_bytes()),
    ];
    for (what, body) in cases {
        let err = PushRequest::decode(&HeaderMap::new(), &body).expect_err(what);
        assert!(!err.to_string().is_empty(), "{what}: the error has a reason");
        match (what, &err) {
            ("message without id" | "empty message id", EnvelopeError::MissingMessageId)
            | ("bad base64", EnvelopeError::BadBase64(_))
            | ("bad publishTime", EnvelopeError::BadPublishTime(_)) => {}
            ("message without id" | "empty message id" | "bad base64" | "bad publishTime", _) => {
                panic!("{what}: unexpected error {err:?}")
            }
            (_, EnvelopeError::NotJson(reason)) => assert!(!reason.is_empty(), "{what}"),
            _ => panic!("{what}: unexpected error {err:?}"),
        }
    }
}

#[test]
fn control_events_decode_by_type() {
    let abort: crate::events::DeploymentAbort = serde_json::from_str(DEPLOYMENT_ABORT).expect("fixture decodes");
    let rollback: crate::events::ServiceRollback = serde_json::from_str(SERVICE_ROLLBACK).expect("fixture decodes");
    let ctx = EventContext::new("api", CorrelationId::parse("corr-7").expect("valid id"));
    let now = utc("2024-06-11T09:32:00Z");

    fn delivered(out: crate::ports::bus::OutboundMessage) -> PushRequest {
        PushRequest {
            message: PubsubMessage {
                data: out.data,
                attributes: out.attributes,
                message_id: "5".to_owned(),
                publish_time: None,
                ordering_key: out.ordering_key,
            },
            subscription: Some("projects/devgem-prod/subscriptions/control-deploy".to_owned()),
            delivery_attempt: Some(1),
            form: DeliveryForm::PubsubPush,
        }
    }

    let request = delivered(to_message(&abort, &ctx, now).expect("valid CloudEvent"));
    let envelope = PushEnvelope::<ControlEvent>::decode(request).expect("abort decodes");
    assert_eq!(envelope.payload, ControlEvent::Abort(abort.clone()));
    assert_eq!(envelope.event.map(|m| m.event_type).as_deref(), Some(DeploymentAbort::TYPE));

    let request = delivered(to_message(&rollback, &ctx, now).expect("valid CloudEvent"));
    let envelope = PushEnvelope::<ControlEvent>::decode(request).expect("rollback decodes");
    assert_eq!(envelope.payload, ControlEvent::Rollback(rollback.clone()));
    assert_eq!(envelope.event.map(|m| m.event_type).as_deref(), Some(ServiceRollback::TYPE));

    let request = delivered(to_message(&chat_turn(), &ctx, now).expect("valid CloudEvent"));
    match PushEnvelope::<ControlEvent>::decode(request) {
        Err(PayloadError::Event(EventError::WrongType { actual, .. })) => assert_eq!(actual, ChatTurn::TYPE),
        other => panic!("expected WrongType, got {other:?}"),
    }

    // An abort's attributes with a rollback's data is a poison event, not a panic.
    let mut request = delivered(to_message(&abort, &ctx, now).expect("valid CloudEvent"));
    request.message.data = Bytes::from(serde_json::to_vec(&rollback).expect("serializes"));
    let err = PushEnvelope::<ControlEvent>::decode(request).expect_err("data does not match the type");
    assert!(
        matches!(err, PayloadError::Event(EventError::BadData { event_type: DeploymentAbort::TYPE, .. })),
        "{err:?}"
    );
}

#[test]
fn foreign_message_without_cloudevent_attributes_is_not_one_of_ours() {
    let body =
        br#"{"message": {"messageId": "1", "data": "e30=", "attributes": {"buildId": "b", "status": "SUCCESS"}}}"#;
    let request = PushRequest::decode(&HeaderMap::new(), body).expect("push decodes");
    let err = PushEnvelope::<ChatTurn>::decode(request).expect_err("no CloudEvent attributes");
    assert!(matches!(err, PayloadError::Event(EventError::NotACloudEvent(_))), "{err:?}");
}

// ---- the axum extractor ----

fn router() -> Router {
    Router::new().route("/", post(|req: PushRequest| async move { req.message.message_id }))
}

async fn call(headers: HeaderMap, body: impl Into<Body>) -> (StatusCode, Bytes) {
    let mut request = http::Request::builder().method("POST").uri("/").body(body.into()).expect("valid request");
    *request.headers_mut() = headers;
    let response = router().oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body reads");
    (status, body)
}

#[tokio::test]
async fn extractor_accepts_a_push() {
    let (status, body) = call(json_headers(), PUBSUB_PUSH).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"11224738297152016");
}

#[tokio::test]
async fn extractor_accepts_eventarc() {
    let (status, body) = call(eventarc_headers(), EVENTARC_BODY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"11224738297152317");
}

#[tokio::test]
async fn extractor_refuses_a_bad_body_with_400() {
    let (status, body) = call(json_headers(), r#"{"message": {"data": "e30="}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("error body is JSON");
    assert_eq!(value["error"]["code"], "bad_envelope");
    assert_eq!(value["error"]["message"], EnvelopeError::MissingMessageId.to_string());

    let (status, body) = call(json_headers(), "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("error body is JSON");
    assert_eq!(value["error"]["code"], "bad_envelope");
    assert!(value["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn extractor_accepts_a_message_above_axums_default_limit() {
    // Pub/Sub messages reach 10 MB; axum's default body limit (2 MB) must not apply here.
    let data = vec![b'x'; 9 * 1024 * 1024];
    let body = format!(
        r#"{{"message": {{"messageId": "big", "data": "{}"}}}}"#,
        base64::engine::general_purpose::STANDARD.encode(&data)
    );
    assert!(body.len() > 2 * 1024 * 1024 && body.len() < MAX_PUSH_BODY);
    let (status, body) = call(json_headers(), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"big");
}

#[tokio::test]
async fn extractor_refuses_an_oversized_body_with_413() {
    let (status, body) = call(json_headers(), vec![b' '; MAX_PUSH_BODY + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("error body is JSON");
    assert_eq!(value["error"]["code"], "bad_envelope");
}

// ---- never a panic ----

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = PushRequest::decode(&HeaderMap::new(), &body);
        let _ = PushRequest::decode(&eventarc_headers(), &body);
    }

    #[test]
    fn json_like_bodies_never_panic(body in r#"\{"message": \{("messageId"|"message_id"|"data"|"publishTime"|"attributes"|"orderingKey"|[:,\[\]{}"0-9a-zA-Z=+/ .-])*"#) {
        let _ = PushRequest::decode(&HeaderMap::new(), body.as_bytes());
        let _ = PushRequest::decode(&eventarc_headers(), body.as_bytes());
    }

    #[test]
    fn any_message_round_trips_through_push_json(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        attributes in proptest::collection::btree_map("[a-z_-]{1,12}", "\\PC{0,24}", 0..6),
        message_id in "[0-9]{1,20}",
        ordering_key in proptest::option::of("[a-zA-Z0-9_-]{1,32}"),
        micros in 0i64..4_000_000_000_000_000,
        delivery_attempt in proptest::option::of(1u32..100),
    ) {
        let request = PushRequest {
            message: PubsubMessage {
                data: data.into(),
                attributes,
                message_id,
                publish_time: DateTime::from_timestamp_micros(micros),
                ordering_key,
            },
            subscription: Some("projects/p/subscriptions/s".to_owned()),
            delivery_attempt,
            form: DeliveryForm::PubsubPush,
        };
        let again = PushRequest::decode(&HeaderMap::new(), &request.to_push_json());
        prop_assert_eq!(again, Ok(request));
    }
}
