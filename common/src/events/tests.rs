//! The event catalog against DESIGN.md, our events' wire shape (fixtures under
//! `common/fixtures/events/`), and the two foreign topics (fixtures under
//! `common/fixtures/foreign/`).

use super::cloud_build::{Build, BuildStatus, CloudBuildError, CloudBuildNotification};
use super::log_entry::{LogEntry, Severity};
use super::*;
use crate::envelope::{DeliveryForm, PayloadError, PubsubMessage, PushEnvelope, PushRequest};
use crate::ids::CorrelationId;
use crate::ports::bus::OutboundMessage;
use chrono::TimeZone as _;
use serde_json::Value;
use std::collections::BTreeMap;

const CHAT_TURN: &str = include_str!("../../fixtures/events/chat_turn.json");
const DEPLOYMENT_REQUESTED: &str = include_str!("../../fixtures/events/deployment_requested.json");
const BUILD_REQUESTED: &str = include_str!("../../fixtures/events/build_requested.json");
const RELEASE_REQUESTED: &str = include_str!("../../fixtures/events/release_requested.json");
const DEPLOYMENT_ABORT: &str = include_str!("../../fixtures/events/deployment_abort.json");
const SERVICE_ROLLBACK: &str = include_str!("../../fixtures/events/service_rollback.json");
const MONITOR_ALERT: &str = include_str!("../../fixtures/events/monitor_alert.json");

const BUILD_SUCCESS: &str = include_str!("../../fixtures/foreign/cloud_build_notification.json");
const BUILD_FAILURE: &str = include_str!("../../fixtures/foreign/cloud_build_failure.json");
const LOG_TRACEBACK: &str = include_str!("../../fixtures/foreign/log_entry_traceback.json");
const LOG_JSON: &str = include_str!("../../fixtures/foreign/log_entry_json.json");
const LOG_REQUEST: &str = include_str!("../../fixtures/foreign/log_entry_request.json");

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is valid JSON")
}

fn now() -> DateTime<Utc> {
    // Whole microseconds: `ce-time` is written with microsecond precision.
    Utc.with_ymd_and_hms(2024, 6, 11, 9, 30, 58).single().expect("valid date") + chrono::Duration::microseconds(409_731)
}

fn correlation_id() -> CorrelationId {
    CorrelationId::parse("0190a4c2f3c97a1d9e4b2c8f6a0d5e31").expect("valid correlation id")
}

/// What Pub/Sub would push for a message a publisher handed to the bus.
fn delivered(message: OutboundMessage, message_id: &str) -> PushRequest {
    PushRequest {
        message: PubsubMessage {
            data: message.data,
            attributes: message.attributes,
            message_id: message_id.to_owned(),
            publish_time: Some(now() + chrono::Duration::milliseconds(3)),
            ordering_key: message.ordering_key,
        },
        subscription: Some("projects/devgem-prod/subscriptions/test-sub".to_owned()),
        delivery_attempt: Some(1),
        form: DeliveryForm::PubsubPush,
    }
}

/// The whole life of one of our events: fixture -> struct -> the same JSON; struct -> Pub/Sub
/// message -> push delivery -> typed envelope with the CloudEvent attributes.
fn check_event<E>(fixture: &str, function: &str, subject: &str) -> E
where
    E: EventPayload + PartialEq + Clone,
{
    let original = json(fixture);
    let payload: E =
        serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{} fixture does not decode: {e}", E::TYPE));
    let reencoded = serde_json::to_value(&payload).expect("payload serializes");
    assert_eq!(reencoded, original, "{} does not round-trip", E::TYPE);
    assert_eq!(payload.subject(), subject);

    let ctx = EventContext::new(function, correlation_id());
    let message = to_message(&payload, &ctx, now()).expect("valid CloudEvent");
    let attrs = &message.attributes;
    assert_eq!(attrs.get(ce_attributes::SPECVERSION).map(String::as_str), Some("1.0"));
    assert_eq!(attrs.get(ce_attributes::TYPE).map(String::as_str), Some(E::TYPE));
    assert_eq!(attrs.get(ce_attributes::CONTENT_TYPE).map(String::as_str), Some("application/json"));
    assert_eq!(attrs.get(ce_attributes::TIME).map(String::as_str), Some("2024-06-11T09:30:58.409731Z"));
    assert!(attrs.get(ce_attributes::ID).is_some_and(|id| !id.is_empty()), "ce-id is set");
    assert_eq!(message.ordering_key, payload.ordering_key());
    let data: Value = serde_json::from_slice(&message.data).expect("data is JSON");
    assert_eq!(data, original, "message data is the payload's JSON");

    let ce_id = attrs.get(ce_attributes::ID).cloned().expect("ce-id is set");
    let envelope = PushEnvelope::<E>::decode(delivered(message, "11224738297152016")).expect("delivery decodes");
    assert_eq!(envelope.payload, payload);
    let meta = envelope.event.expect("our events carry CloudEvent attributes");
    assert_eq!(meta.id, ce_id);
    assert_eq!(meta.event_type, E::TYPE);
    assert_eq!(meta.source, format!("//devgem/functions/{function}"));
    assert_eq!(meta.subject.as_deref(), Some(subject));
    assert_eq!(meta.time, Some(now()));
    assert_eq!(meta.correlation_id, Some(correlation_id()));
    assert_eq!(envelope.request.message.message_id, "11224738297152016");
    payload
}

#[test]
fn chat_turn_round_trips() {
    let turn: ChatTurn = check_event(CHAT_TURN, "relay", "sessions/0190a4c2e7b87c3d9a1f5e6b2c4d8a10");
    assert_eq!(turn.ordering_key().as_deref(), Some("0190a4c2e7b87c3d9a1f5e6b2c4d8a10"));
    assert_eq!(turn.client_message_id.as_deref(), Some("m-1718097058412-7"));
}

#[test]
fn chat_turn_without_client_message_id_omits_it() {
    let turn = ChatTurn {
        session_id: SessionId::parse("s1").expect("valid"),
        user_id: UserId::admin(),
        text: "status".to_owned(),
        client_message_id: None,
    };
    let value = serde_json::to_value(&turn).expect("serializes");
    assert_eq!(value, serde_json::json!({"session_id": "s1", "user_id": "admin", "text": "status"}));
    assert_eq!(serde_json::from_value::<ChatTurn>(value).expect("decodes"), turn);
}

#[test]
fn deployment_requested_round_trips() {
    let event: DeploymentRequested =
        check_event(DEPLOYMENT_REQUESTED, "chat", "deployments/0190a4c3104a7e21b6d3f08c5a92e4b7");
    assert_eq!(event.ordering_key().as_deref(), Some("0190a4c3104a7e21b6d3f08c5a92e4b7"));
}

#[test]
fn build_requested_round_trips() {
    let event: BuildRequested = check_event(BUILD_REQUESTED, "analyze", "deployments/0190a4c3104a7e21b6d3f08c5a92e4b7");
    assert_eq!(event.ordering_key().as_deref(), Some("0190a4c3104a7e21b6d3f08c5a92e4b7"));
}

#[test]
fn release_requested_round_trips() {
    let event: ReleaseRequested =
        check_event(RELEASE_REQUESTED, "build", "deployments/0190a4c3104a7e21b6d3f08c5a92e4b7");
    assert_eq!(event.build_id, "3b1d7a2e-5c4f-4e8a-9f61-2d0c8b7e4a19");
    assert!(event.image.contains("@sha256:"));
}

#[test]
fn deployment_abort_round_trips() {
    let event: DeploymentAbort = check_event(DEPLOYMENT_ABORT, "api", "deployments/0190a4c3104a7e21b6d3f08c5a92e4b7");
    assert_eq!(event.requested_by, UserId::admin());
    assert!(event.reason.is_some());
}

#[test]
fn service_rollback_round_trips() {
    let event: ServiceRollback = check_event(SERVICE_ROLLBACK, "chat", "services/admin-flask-todo");
    assert_eq!(event.ordering_key().as_deref(), Some("admin-flask-todo"));
    assert_eq!(event.to_revision.as_deref(), Some("flask-todo-00003-kxw"));
}

#[test]
fn service_rollback_minimal_omits_optionals() {
    let value = serde_json::json!({"service": "flask-todo", "owner": "admin", "requested_by": "admin"});
    let event: ServiceRollback = serde_json::from_value(value.clone()).expect("optional fields may be absent");
    assert_eq!(event.session_id, None);
    assert_eq!(event.to_revision, None);
    assert_eq!(event.alert_id, None);
    assert_eq!(serde_json::to_value(&event).expect("serializes"), value);
}

#[test]
fn monitor_alert_round_trips() {
    let alert: MonitorAlert = check_event(MONITOR_ALERT, "monitor", "services/admin-flask-todo");
    assert_eq!(alert.kind, AlertKind::CrashLoop);
    assert_eq!(alert.status, AlertStatus::Open);
    assert_eq!(alert.key_lines.len(), 4);
    assert_eq!(alert.ordering_key().as_deref(), Some("alrt-flask-todo-00004-vzq-crash-loop"));
}

#[test]
fn alert_enums_use_snake_case() {
    let kinds = [
        (AlertKind::CrashLoop, "crash_loop"),
        (AlertKind::UncaughtException, "uncaught_exception"),
        (AlertKind::MemoryLimit, "memory_limit"),
        (AlertKind::ErrorRate, "error_rate"),
    ];
    for (kind, name) in kinds {
        assert_eq!(serde_json::to_value(kind).expect("serializes"), Value::String(name.to_owned()));
    }
    let statuses =
        [(AlertStatus::Open, "open"), (AlertStatus::Updated, "updated"), (AlertStatus::Resolved, "resolved")];
    for (status, name) in statuses {
        assert_eq!(serde_json::to_value(status).expect("serializes"), Value::String(name.to_owned()));
    }
}

#[test]
fn catalog_is_the_design_table() {
    // DESIGN.md, "Events": topic | event type.
    let design = [
        ("dev.devgem.chat.turn.v1", "chat-turns"),
        ("dev.devgem.deployment.requested.v1", "deployments"),
        ("dev.devgem.build.requested.v1", "builds"),
        ("dev.devgem.release.requested.v1", "releases"),
        ("dev.devgem.deployment.abort.v1", "control"),
        ("dev.devgem.service.rollback.v1", "control"),
        ("dev.devgem.monitor.alert.v1", "alerts"),
    ];
    let actual: Vec<(&str, &str)> = catalog().iter().map(|e| (e.event_type, e.topic.name())).collect();
    assert_eq!(actual, design);

    let mut types: Vec<&str> = catalog().iter().map(|e| e.event_type).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), design.len(), "event types are unique");
    for entry in catalog() {
        assert!(!entry.topic.is_foreign(), "{} is one of ours, not on a foreign topic", entry.event_type);
        assert!(entry.event_type.starts_with("dev.devgem.") && entry.event_type.ends_with(".v1"));
    }
}

#[test]
fn topics_are_the_design_topics() {
    let design = [
        (Topic::ChatTurns, "chat-turns"),
        (Topic::Deployments, "deployments"),
        (Topic::Builds, "builds"),
        (Topic::CloudBuilds, "cloud-builds"),
        (Topic::Releases, "releases"),
        (Topic::Control, "control"),
        (Topic::LogEntries, "log-entries"),
        (Topic::Alerts, "alerts"),
    ];
    assert_eq!(Topic::ALL.to_vec(), design.iter().map(|(t, _)| *t).collect::<Vec<_>>());
    for (topic, name) in design {
        assert_eq!(topic.name(), name);
        assert_eq!(topic.to_string(), name);
        assert_eq!(Topic::parse(name), Some(topic));
        assert_eq!(serde_json::to_value(topic).expect("serializes"), Value::String(name.to_owned()));
        assert_eq!(serde_json::from_value::<Topic>(Value::String(name.to_owned())).expect("decodes"), topic);
        assert_eq!(topic.is_foreign(), matches!(topic, Topic::CloudBuilds | Topic::LogEntries), "{name}");
    }
    assert_eq!(Topic::parse("chat_turns"), None);
    assert_eq!(Topic::parse(""), None);
}

/// Adds an unexpected field to a fixture and checks the payload type refuses it by name.
fn refuses_unknown_field<E: EventPayload>(fixture: &str) {
    let mut value = json(fixture);
    value.as_object_mut().expect("fixture is an object").insert("priority".to_owned(), Value::from("high"));
    let err = serde_json::from_value::<E>(value.clone()).expect_err("unknown field refused");
    assert!(err.to_string().contains("unknown field `priority`"), "{}: {err}", E::TYPE);

    // The same through the message path: a poison event whose reason names the field.
    let meta = EventMeta {
        id: "1".to_owned(),
        event_type: E::TYPE.to_owned(),
        source: "//devgem/functions/test".to_owned(),
        time: None,
        subject: None,
        correlation_id: None,
    };
    let data = serde_json::to_vec(&value).expect("serializes");
    match meta.decode_payload::<E>(&data) {
        Err(EventError::BadData { event_type, reason }) => {
            assert_eq!(event_type, E::TYPE);
            assert!(reason.contains("priority"), "{reason}");
        }
        other => panic!("{}: expected BadData, got {other:?}", E::TYPE),
    }
}

#[test]
fn unknown_fields_are_refused() {
    refuses_unknown_field::<ChatTurn>(CHAT_TURN);
    refuses_unknown_field::<DeploymentRequested>(DEPLOYMENT_REQUESTED);
    refuses_unknown_field::<BuildRequested>(BUILD_REQUESTED);
    refuses_unknown_field::<ReleaseRequested>(RELEASE_REQUESTED);
    refuses_unknown_field::<DeploymentAbort>(DEPLOYMENT_ABORT);
    refuses_unknown_field::<ServiceRollback>(SERVICE_ROLLBACK);
    refuses_unknown_field::<MonitorAlert>(MONITOR_ALERT);
}

#[test]
fn invalid_ids_and_names_are_refused() {
    let mut turn = json(CHAT_TURN);
    turn["session_id"] = Value::from("../../etc/passwd");
    let err = serde_json::from_value::<ChatTurn>(turn).expect_err("path-like id refused");
    assert!(err.to_string().contains("session id"), "{err}");

    let mut rollback = json(SERVICE_ROLLBACK);
    rollback["service"] = Value::from("Flask_Todo");
    let err = serde_json::from_value::<ServiceRollback>(rollback).expect_err("not a DNS label");
    assert!(err.to_string().contains("service name"), "{err}");

    let mut requested = json(DEPLOYMENT_REQUESTED);
    requested.as_object_mut().expect("object").remove("owner");
    let err = serde_json::from_value::<DeploymentRequested>(requested).expect_err("owner is required");
    assert!(err.to_string().contains("missing field `owner`"), "{err}");
}

#[test]
fn wrong_event_type_is_refused() {
    let turn: ChatTurn = serde_json::from_str(CHAT_TURN).expect("fixture decodes");
    let ctx = EventContext::new("relay", correlation_id());
    let message = to_message(&turn, &ctx, now()).expect("valid CloudEvent");
    let request = delivered(message, "42");
    match PushEnvelope::<DeploymentRequested>::decode(request) {
        Err(PayloadError::Event(EventError::WrongType { expected, actual })) => {
            assert_eq!(expected, DeploymentRequested::TYPE);
            assert_eq!(actual, ChatTurn::TYPE);
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
}

#[test]
fn invalid_cloudevent_attributes_are_refused() {
    let turn: ChatTurn = serde_json::from_str(CHAT_TURN).expect("fixture decodes");
    let ctx = EventContext::new("relay", correlation_id());
    let base = to_message(&turn, &ctx, now()).expect("valid CloudEvent").attributes;

    let cases: [(&str, Option<&str>); 7] = [
        (ce_attributes::SPECVERSION, None),
        (ce_attributes::SPECVERSION, Some("0.3")),
        (ce_attributes::ID, None),
        (ce_attributes::TYPE, Some("")),
        (ce_attributes::SOURCE, None),
        (ce_attributes::TIME, Some("yesterday")),
        (ce_attributes::CORRELATION_ID, Some("not a valid id!")),
    ];
    for (name, value) in cases {
        let mut attrs = base.clone();
        match value {
            Some(v) => attrs.insert(name.to_owned(), v.to_owned()),
            None => attrs.remove(name),
        };
        let err = EventMeta::from_attributes(&attrs).expect_err("invalid attributes refused");
        assert!(!err.to_string().is_empty(), "{name}: the error has a reason");
    }

    // correlation_id is optional.
    let mut attrs = base.clone();
    attrs.remove(ce_attributes::CORRELATION_ID);
    let meta = EventMeta::from_attributes(&attrs).expect("correlation_id may be absent");
    assert_eq!(meta.correlation_id, None);
}

#[test]
fn payload_that_is_not_json_is_bad_data() {
    let meta = EventMeta::from_attributes(&BTreeMap::from([
        (ce_attributes::SPECVERSION.to_owned(), "1.0".to_owned()),
        (ce_attributes::ID.to_owned(), "1".to_owned()),
        (ce_attributes::TYPE.to_owned(), ChatTurn::TYPE.to_owned()),
        (ce_attributes::SOURCE.to_owned(), "//devgem/functions/relay".to_owned()),
    ]))
    .expect("valid attributes");
    let err = meta.decode_payload::<ChatTurn>(b"\xff\xfe not json").expect_err("not JSON");
    assert!(
        matches!(err, EventError::BadData { event_type: ChatTurn::TYPE, ref reason } if !reason.is_empty()),
        "{err:?}"
    );
}

// ---- Cloud Build notifications ----

fn build_attributes(build_id: &str, status: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("buildId".to_owned(), build_id.to_owned()), ("status".to_owned(), status.to_owned())])
}

const SUCCESS_ID: &str = "3b1d7a2e-5c4f-4e8a-9f61-2d0c8b7e4a19";
const FAILURE_ID: &str = "c86f02d9-7a41-4b3e-8e5d-9f1a6c2b7e03";

#[test]
fn cloud_build_success_decodes() {
    let n = CloudBuildNotification::decode(&build_attributes(SUCCESS_ID, "SUCCESS"), BUILD_SUCCESS.as_bytes())
        .expect("notification decodes");
    assert_eq!(n.build_id, SUCCESS_ID);
    assert_eq!(n.status, BuildStatus::Success);
    assert!(n.status.is_final());
    let b = &n.build;
    assert_eq!(b.id, SUCCESS_ID);
    assert_eq!(b.status, BuildStatus::Success);
    assert_eq!(b.project_id.as_deref(), Some("devgem-prod"));
    assert_eq!(b.deployment_tag(), Some("0190a4c3104a7e21b6d3f08c5a92e4b7"));
    assert_eq!(b.images.len(), 2);
    assert_eq!(b.substitutions.get("_SERVICE").map(String::as_str), Some("flask-todo"));
    assert_eq!(b.failure_info, None);
    assert!(b.create_time < b.start_time && b.start_time < b.finish_time);
    assert!(b.log_url.as_deref().is_some_and(|u| u.contains(SUCCESS_ID)));
    assert!(b.logs_bucket.as_deref().is_some_and(|u| u.starts_with("gs://")));
    // Unmodelled fields are kept.
    for field in ["source", "steps", "results", "timeout", "sourceProvenance", "options", "timing", "queueTtl", "name"]
    {
        assert!(b.extra.contains_key(field), "extra keeps {field}");
    }
    let digest = b.extra["results"]["images"][0]["digest"].as_str().expect("pushed image digest");
    assert!(digest.starts_with("sha256:"));
    assert_eq!(n.attributes(), build_attributes(SUCCESS_ID, "SUCCESS"));
}

#[test]
fn cloud_build_failure_decodes() {
    let n = CloudBuildNotification::decode(&build_attributes(FAILURE_ID, "FAILURE"), BUILD_FAILURE.as_bytes())
        .expect("notification decodes");
    assert_eq!(n.status, BuildStatus::Failure);
    assert!(n.status.is_final());
    let info = n.build.failure_info.as_ref().expect("failure info");
    assert_eq!(info.kind.as_deref(), Some("USER_BUILD_STEP"));
    assert!(info.detail.as_deref().is_some_and(|d| d.contains("non-zero status")));
    assert!(n.build.status_detail.is_some());
    assert_eq!(n.build.deployment_tag(), Some("0190a4c3104a7e21b6d3f08c5a92e4b7"));
}

#[test]
fn cloud_build_resources_round_trip_exactly() {
    for fixture in [BUILD_SUCCESS, BUILD_FAILURE] {
        let original = json(fixture);
        let build: Build = serde_json::from_value(original.clone()).expect("Build decodes");
        assert_eq!(serde_json::to_value(&build).expect("Build serializes"), original);
    }
}

#[test]
fn cloud_build_through_a_push_delivery() {
    let request = PushRequest {
        message: PubsubMessage {
            data: BUILD_SUCCESS.as_bytes().to_vec().into(),
            attributes: build_attributes(SUCCESS_ID, "SUCCESS"),
            message_id: "11224738297160042".to_owned(),
            publish_time: None,
            ordering_key: None,
        },
        subscription: Some("projects/devgem-prod/subscriptions/cloud-builds-build".to_owned()),
        delivery_attempt: None,
        form: DeliveryForm::PubsubPush,
    };
    let envelope = PushEnvelope::<CloudBuildNotification>::decode(request).expect("decodes");
    assert_eq!(envelope.payload.build_id, SUCCESS_ID);
    assert_eq!(envelope.event, None, "foreign topics carry no CloudEvent");
}

#[test]
fn cloud_build_errors_have_reasons() {
    let data = BUILD_SUCCESS.as_bytes();

    let err = CloudBuildNotification::decode(&build_attributes(FAILURE_ID, "SUCCESS"), data).expect_err("id mismatch");
    assert_eq!(err, CloudBuildError::IdMismatch { attribute: FAILURE_ID.to_owned(), resource: SUCCESS_ID.to_owned() });
    assert!(err.to_string().contains(FAILURE_ID) && err.to_string().contains(SUCCESS_ID));

    let mut attrs = build_attributes(SUCCESS_ID, "SUCCESS");
    attrs.remove("status");
    let err = CloudBuildNotification::decode(&attrs, data).expect_err("no status");
    assert_eq!(err, CloudBuildError::MissingAttribute("status"));
    assert!(err.to_string().contains("status"));

    let mut attrs = build_attributes(SUCCESS_ID, "SUCCESS");
    attrs.remove("buildId");
    let err = CloudBuildNotification::decode(&attrs, data).expect_err("no buildId");
    assert_eq!(err, CloudBuildError::MissingAttribute("buildId"));

    let err = CloudBuildNotification::decode(&build_attributes(SUCCESS_ID, "DONE"), data).expect_err("unknown status");
    assert_eq!(err, CloudBuildError::UnknownStatus("DONE".to_owned()));
    assert!(err.to_string().contains("DONE"));

    let err = CloudBuildNotification::decode(&build_attributes(SUCCESS_ID, "success"), data)
        .expect_err("status is upper case");
    assert_eq!(err, CloudBuildError::UnknownStatus("success".to_owned()));

    for bad in [&b"not json"[..], b"", b"[]", b"{\"id\": 7}", b"{\"status\": \"SUCCESS\"}"] {
        match CloudBuildNotification::decode(&build_attributes(SUCCESS_ID, "SUCCESS"), bad) {
            Err(CloudBuildError::BadBuild(reason)) => assert!(!reason.is_empty()),
            other => panic!("{:?}: expected BadBuild, got {other:?}", String::from_utf8_lossy(bad)),
        }
    }

    let mut unknown = json(BUILD_SUCCESS);
    unknown["status"] = Value::from("EXPLODED");
    let data = serde_json::to_vec(&unknown).expect("serializes");
    let err = CloudBuildNotification::decode(&build_attributes(SUCCESS_ID, "SUCCESS"), &data).expect_err("bad status");
    assert!(matches!(&err, CloudBuildError::BadBuild(reason) if reason.contains("EXPLODED")), "{err:?}");
}

#[test]
fn build_statuses_parse_and_print() {
    let all = [
        (BuildStatus::StatusUnknown, "STATUS_UNKNOWN", false),
        (BuildStatus::Pending, "PENDING", false),
        (BuildStatus::Queued, "QUEUED", false),
        (BuildStatus::Working, "WORKING", false),
        (BuildStatus::Success, "SUCCESS", true),
        (BuildStatus::Failure, "FAILURE", true),
        (BuildStatus::InternalError, "INTERNAL_ERROR", true),
        (BuildStatus::Timeout, "TIMEOUT", true),
        (BuildStatus::Cancelled, "CANCELLED", true),
        (BuildStatus::Expired, "EXPIRED", true),
    ];
    for (status, name, is_final) in all {
        assert_eq!(status.as_str(), name);
        assert_eq!(BuildStatus::parse(name), Some(status));
        assert_eq!(serde_json::to_value(status).expect("serializes"), Value::String(name.to_owned()));
        assert_eq!(status.is_final(), is_final, "{name}");
    }
    assert_eq!(BuildStatus::parse(""), None);
}

// ---- LogEntries ----

#[test]
fn log_entries_round_trip_exactly() {
    for fixture in [LOG_TRACEBACK, LOG_JSON, LOG_REQUEST] {
        let original = json(fixture);
        let entry = LogEntry::decode(fixture.as_bytes()).expect("LogEntry decodes");
        assert_eq!(serde_json::to_value(&entry).expect("serializes"), original);
        assert_eq!(entry.resource.kind, "cloud_run_revision");
        assert_eq!(entry.service_name(), Some("flask-todo"));
        assert_eq!(entry.revision_name(), Some("flask-todo-00004-vzq"));
        assert_eq!(entry.resource.labels.get("location").map(String::as_str), Some("europe-west1"));
        assert!(entry.labels.contains_key("instanceId"));
        assert_eq!(entry.trace.as_deref(), Some("projects/devgem-prod/traces/4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(entry.timestamp.is_some() && entry.receive_timestamp.is_some() && entry.insert_id.is_some());
        assert!(entry.timestamp < entry.receive_timestamp);
    }
}

#[test]
fn traceback_log_entry() {
    let entry = LogEntry::decode(LOG_TRACEBACK.as_bytes()).expect("decodes");
    assert_eq!(entry.severity, Severity::Error);
    assert!(entry.log_name.as_deref().is_some_and(|n| n.ends_with("run.googleapis.com%2Fstderr")));
    assert_eq!(entry.stream(), Some("stderr"));
    let message = entry.message().expect("textPayload is the message");
    assert!(message.starts_with("Traceback (most recent call last):"));
    assert!(message.ends_with("KeyError: 'DATABASE_URL'"));
    assert_eq!(entry.http_request, None);
}

#[test]
fn json_payload_log_entry() {
    let entry = LogEntry::decode(LOG_JSON.as_bytes()).expect("decodes");
    assert_eq!(entry.severity, Severity::Info);
    assert_eq!(entry.text_payload, None);
    assert_eq!(entry.message(), Some("Connecting to database at postgresql://db.internal:5432/todo"));
    assert!(entry.extra.contains_key("spanId"));
}

#[test]
fn request_log_entry() {
    let entry = LogEntry::decode(LOG_REQUEST.as_bytes()).expect("decodes");
    assert_eq!(entry.severity, Severity::Error);
    assert_eq!(entry.message(), None, "a request log has no text");
    let http = entry.http_request.as_ref().expect("request log");
    assert_eq!(http.status, Some(503));
    assert_eq!(http.request_method.as_deref(), Some("GET"));
    assert_eq!(http.latency.as_deref(), Some("0.012s"));
    assert!(http.request_url.as_deref().is_some_and(|u| u.starts_with("https://flask-todo-")));
    assert_eq!(http.extra.get("responseSize"), Some(&Value::from("1024")), "int64 travels as a string");
    for field in ["userAgent", "remoteIp", "serverIp", "protocol"] {
        assert!(http.extra.contains_key(field), "httpRequest keeps {field}");
    }
    assert_eq!(entry.extra.get("traceSampled"), Some(&Value::Bool(true)));
}

#[test]
fn severities_are_ordered() {
    assert!(Severity::Default < Severity::Debug);
    assert!(Severity::Info < Severity::Warning);
    assert!(Severity::Warning < Severity::Error);
    assert!(Severity::Error < Severity::Critical);
    assert!(Severity::Alert < Severity::Emergency);
    let entry = LogEntry::decode(br#"{"resource": {"type": "cloud_run_revision"}}"#).expect("minimal entry");
    assert_eq!(entry.severity, Severity::Default);
    assert_eq!(entry.service_name(), None);
    assert_eq!(entry.message(), None);
    assert_eq!(entry.stream(), None, "no log name, no stream");
}

#[test]
fn bad_log_entries_have_reasons() {
    let cases: [&[u8]; 5] = [
        b"",
        b"not json",
        b"{}",
        br#"{"resource": {"type": "cloud_run_revision"}, "severity": "LOUD"}"#,
        br#"{"resource": {"type": "cloud_run_revision"}, "timestamp": "yesterday"}"#,
    ];
    for bad in cases {
        let err = LogEntry::decode(bad).expect_err("refused");
        assert!(!err.0.is_empty(), "{:?} has a reason", String::from_utf8_lossy(bad));
    }

    let request = PushRequest {
        message: PubsubMessage {
            data: bytes::Bytes::from_static(b"{}"),
            attributes: BTreeMap::new(),
            message_id: "9".to_owned(),
            publish_time: None,
            ordering_key: None,
        },
        subscription: None,
        delivery_attempt: None,
        form: DeliveryForm::PubsubPush,
    };
    let err = PushEnvelope::<LogEntry>::decode(request).expect_err("no resource");
    assert!(matches!(err, PayloadError::LogEntry(_)), "{err:?}");
    assert!(err.to_string().contains("resource"), "{err}");
}
