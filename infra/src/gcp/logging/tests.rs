//! The logging reader against the Cloud Logging stand-in.

use super::*;
use crate::gcp::config::Endpoints;
use crate::gcp::emulators::logging::{LogSink, LoggingStandIn};
use crate::resilience::{BreakerPolicy, RetryPolicy};
use devgem_common::events::log_entry::Severity;
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;

fn config(endpoint: String) -> GcpConfig {
    GcpConfig {
        project: "demo".into(),
        region: "europe-west1".into(),
        endpoints: Endpoints { logging: Some(endpoint), ..Endpoints::default() },
        ..GcpConfig::default()
    }
}

/// Short retries and cool-down, no pacing: the tests' clock is the real one.
fn quick() -> LoggingOptions {
    LoggingOptions {
        api: Api::with_policies(
            API,
            BreakerPolicy { failures: 5, cool_down: Duration::from_millis(20) },
            RetryPolicy { attempts: 5, first_delay: Duration::from_millis(40), max_delay: Duration::from_millis(200) },
        ),
        min_interval: Duration::ZERO,
    }
}

async fn reader(stand_in: &LoggingStandIn, options: LoggingOptions) -> CloudLogging {
    CloudLogging::connect_with(&config(stand_in.endpoint()), options).await.expect("client")
}

/// A Cloud Run entry of `service`/`revision` in `region` at second `second` of a minute.
fn run_entry(sink: &LogSink, service: &str, revision: &str, region: &str, second: u32, text: &str) {
    sink.write(json!({
        "logName": "projects/demo/logs/run.googleapis.com%2Fstdout",
        "resource": {"type": "cloud_run_revision", "labels": {
            "service_name": service, "revision_name": revision, "location": region, "project_id": "demo",
        }},
        "timestamp": format!("2024-06-11T09:30:{second:02}Z"),
        "severity": "INFO",
        "textPayload": text,
    }))
    .expect("entry");
}

#[tokio::test]
async fn service_entries_are_the_latest_of_the_service_newest_last() {
    let stand_in = LoggingStandIn::start().await.expect("stand-in");
    let sink = stand_in.sink();
    // Written out of time order: the reader orders by timestamp, not by arrival.
    run_entry(&sink, "web", "web-r2", "europe-west1", 30, "r2 third");
    run_entry(&sink, "web", "web-r1", "europe-west1", 10, "r1 first");
    run_entry(&sink, "web", "web-r2", "europe-west1", 20, "r2 second");
    run_entry(&sink, "web", "web-r2", "us-central1", 40, "same name, another region");
    run_entry(&sink, "api", "api-r1", "europe-west1", 50, "another service");
    let logging = reader(&stand_in, quick()).await;

    let texts =
        |entries: Vec<LogEntry>| entries.iter().map(|e| e.message().unwrap_or("-").to_owned()).collect::<Vec<_>>();
    let latest = logging.service_entries("web", None, 2).await.expect("entries");
    assert_eq!(texts(latest.clone()), ["r2 second", "r2 third"], "the newest two, newest last");
    assert_eq!(latest[0].revision_name(), Some("web-r2"));
    assert_eq!(latest[0].service_name(), Some("web"));
    assert_eq!(latest[0].stream(), Some("stdout"));
    assert_eq!(latest[0].severity, Severity::Info);
    assert_eq!(latest[0].timestamp.map(|t| t.to_rfc3339()), Some("2024-06-11T09:30:20+00:00".to_owned()));

    let all = logging.service_entries("web", None, 100).await.expect("entries");
    assert_eq!(texts(all), ["r1 first", "r2 second", "r2 third"]);
    let one_revision = logging.service_entries("web", Some("web-r1"), 100).await.expect("entries");
    assert_eq!(texts(one_revision), ["r1 first"]);
    assert!(logging.service_entries("web", None, 0).await.expect("none").is_empty());

    let request = &stand_in.requests().of("ListLogEntries")[0];
    assert_eq!(request.body["resourceNames"], json!(["projects/demo"]));
    assert_eq!(request.body["orderBy"], "timestamp desc");
    assert_eq!(request.body["pageSize"], 2);
    assert_eq!(
        request.body["filter"],
        r#"resource.type="cloud_run_revision" AND resource.labels.service_name="web" AND resource.labels.location="europe-west1""#
    );
}

#[tokio::test]
async fn entries_convert_payloads_severities_and_requests_and_pages_follow() {
    let stand_in = LoggingStandIn::start().await.expect("stand-in");
    let sink = stand_in.sink();
    for (second, severity) in [(1, "ERROR"), (2, "WARNING"), (3, "DEBUG")] {
        sink.write(json!({
            "logName": "projects/demo/logs/run.googleapis.com%2Frequests",
            "resource": {"type": "cloud_run_revision", "labels": {"service_name": "web", "location": "europe-west1"}},
            "timestamp": format!("2024-06-11T09:30:0{second}Z"),
            "severity": severity,
            "jsonPayload": {"message": format!("json {second}"), "extra": [1, 2]},
            "httpRequest": {"requestMethod": "GET", "requestUrl": "/x", "status": 503, "latency": "0.250s"},
            "labels": {"instanceId": "i-1"},
            "trace": "projects/demo/traces/abc",
        }))
        .expect("entry");
    }
    let logging = reader(&stand_in, quick()).await;
    let filter = service_filter("europe-west1", "web", None);
    let first = logging.entries(&filter, Order::OldestFirst, 2, None).await.expect("page 1");
    assert_eq!(first.entries.len(), 2);
    let token = first.next_page_token.clone().expect("a second page");
    let second = logging.entries(&filter, Order::OldestFirst, 2, Some(&token)).await.expect("page 2");
    assert_eq!(second.entries.len(), 1);
    assert_eq!(second.next_page_token, None);

    let entry = &first.entries[0];
    assert_eq!(entry.message(), Some("json 1"));
    assert_eq!(entry.severity, Severity::Error);
    assert_eq!(first.entries[1].severity, Severity::Warning);
    assert_eq!(second.entries[0].severity, Severity::Debug);
    let http = entry.http_request.as_ref().expect("request");
    assert_eq!((http.request_method.as_deref(), http.status), (Some("GET"), Some(503)));
    assert_eq!(http.latency.as_deref(), Some("0.25s"), "a Duration, as the service writes it");
    assert_eq!(entry.labels.get("instanceId").map(String::as_str), Some("i-1"));
    assert_eq!(entry.trace.as_deref(), Some("projects/demo/traces/abc"));
    assert_eq!(entry.stream(), None, "a request log is neither stdout nor stderr");
    assert!(entry.insert_id.is_some());

    let collected = logging.collect(&filter, Order::NewestFirst, 10).await.expect("all");
    let texts: Vec<&str> = collected.iter().filter_map(LogEntry::message).collect();
    assert_eq!(texts, ["json 3", "json 2", "json 1"]);
}

#[tokio::test]
async fn entries_written_with_the_official_client_are_read_back() {
    let stand_in = LoggingStandIn::start().await.expect("stand-in");
    let endpoint = stand_in.endpoint();
    let client = configure(LoggingServiceV2::builder(), Some(&endpoint)).build().await.expect("client");
    // The request as the client builds it; from JSON, since its resource type lives in a crate
    // DevGem does not name.
    let request: google_cloud_logging_v2::model::WriteLogEntriesRequest = serde_json::from_value(json!({
        "logName": "projects/demo/logs/cloudbuild",
        "resource": {"type": "build", "labels": {"build_id": "b-1"}},
        "entries": [{"textPayload": "hello", "severity": "NOTICE", "timestamp": "2024-06-11T09:30:00Z"}],
    }))
    .expect("request");
    client.write_log_entries().with_request(request).send().await.expect("written");
    let logging = reader(&stand_in, quick()).await;
    let entries = logging.build_entries("b-1", None, 10).await.expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].message(), Some("hello"));
    assert_eq!(entries[0].severity, Severity::Notice);
    assert_eq!(entries[0].log_name.as_deref(), Some("projects/demo/logs/cloudbuild"));
    assert!(logging.build_entries("b-2", None, 10).await.expect("read").is_empty(), "another build's log");
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_a_refusal_says_what_was_refused() {
    let stand_in = LoggingStandIn::start().await.expect("stand-in");
    run_entry(&stand_in.sink(), "web", "web-r1", "europe-west1", 1, "line");
    let logging = reader(&stand_in, quick()).await;
    stand_in.faults().fail_next("ListLogEntries", StatusCode::SERVICE_UNAVAILABLE, 2);
    let entries = logging.service_entries("web", None, 5).await.expect("retried");
    assert_eq!(entries.len(), 1);
    assert_eq!(stand_in.requests().of("ListLogEntries").len(), 3, "two 503s, then the answer");

    let error =
        logging.entries("resource.type=\"x\" OR y=1", Order::OldestFirst, 5, None).await.expect_err("bad filter");
    assert!(matches!(error, LoggingError::Refused(_)), "{error}");
    assert!(error.to_string().contains("refused the query"), "{error}");
    assert_eq!(stand_in.requests().of("ListLogEntries").len(), 4, "a refusal is not retried");

    stand_in.faults().fail_next("ListLogEntries", StatusCode::FORBIDDEN, 1);
    let error = logging.service_entries("web", None, 5).await.expect_err("forbidden");
    assert!(error.to_string().contains("roles/logging.viewer"), "{error}");
}

#[tokio::test]
async fn an_outage_gives_up_naming_cloud_logging_then_fails_fast() {
    let stand_in = LoggingStandIn::start().await.expect("stand-in");
    let options = LoggingOptions {
        api: Api::with_policies(
            API,
            BreakerPolicy { failures: 3, cool_down: Duration::from_secs(60) },
            RetryPolicy { attempts: 3, first_delay: Duration::from_millis(10), max_delay: Duration::from_millis(20) },
        ),
        min_interval: Duration::ZERO,
    };
    let logging = reader(&stand_in, options).await;
    stand_in.faults().fail_next("ListLogEntries", StatusCode::SERVICE_UNAVAILABLE, 10);
    let error = logging.build_entries("b-1", None, 5).await.expect_err("down");
    assert!(matches!(error, LoggingError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("Cloud Logging"), "{error}");
    let sent = stand_in.requests().of("ListLogEntries").len();
    let error = logging.build_entries("b-1", None, 5).await.expect_err("open");
    assert!(error.to_string().contains("Cloud Logging is failing repeatedly"), "{error}");
    assert_eq!(stand_in.requests().of("ListLogEntries").len(), sent, "nothing sent while the breaker is open");
}

#[tokio::test]
async fn requests_are_paced() {
    let stand_in = LoggingStandIn::start().await.expect("stand-in");
    let options = LoggingOptions { min_interval: Duration::from_millis(150), ..quick() };
    let logging = Arc::new(reader(&stand_in, options).await);
    let started = tokio::time::Instant::now();
    let calls = (0..3).map(|_| {
        let logging = logging.clone();
        tokio::spawn(async move { logging.build_entries("b-1", None, 5).await })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.expect("joined").expect("read");
    }
    assert!(started.elapsed() >= Duration::from_millis(300), "three requests, 150 ms apart: {:?}", started.elapsed());
}

#[test]
fn filters_quote_their_values() {
    assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(
        build_filter("demo", "b-1"),
        r#"logName="projects/demo/logs/cloudbuild" AND resource.type="build" AND resource.labels.build_id="b-1""#
    );
    assert!(service_filter("r", "s", Some("s-1")).ends_with(r#"AND resource.labels.revision_name="s-1""#));
}
