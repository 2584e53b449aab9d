//! An in-test stand-in of Cloud Logging's REST API (`logging.googleapis.com/v2`), for the
//! logging reader ([`crate::gcp::logging`]) and what reads logs through it (the Cloud Build
//! adapter, the Cloud Run runtime).
//!
//! It serves the two paths the official client calls: `POST /v2/entries:list` (ListLogEntries)
//! and `POST /v2/entries:write` (WriteLogEntries). Bodies are decoded with the client crate's
//! own request types, so a request the service would not parse fails; entries are kept in
//! Cloud Logging's JSON shape ([`LogSink`]), which other stand-ins (Cloud Build) write into
//! directly. Filters are the subset of the logging query language DevGem uses (comparisons
//! joined by `AND`, see [`Filter`]); anything else is answered 400, so a query the stand-in does
//! not understand fails the test instead of matching everything.

use super::standin::{Faults, HttpStandIn, RequestLog, google_error};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use google_cloud_logging_v2::model::{ListLogEntriesRequest, LogEntry, WriteLogEntriesRequest};
use http::StatusCode;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The entries a stand-in holds, in Cloud Logging's JSON shape (severity by name), in the order
/// they were written. Cheap to clone: clones share the entries.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    entries: Arc<Mutex<Vec<Value>>>,
}

impl LogSink {
    /// Adds one entry, as Cloud Logging would store it: it must decode as a `LogEntry`; a
    /// missing `insertId`, `timestamp` or `receiveTimestamp` is filled in.
    pub fn write(&self, entry: Value) -> Result<(), String> {
        let decoded: LogEntry = serde_json::from_value(entry.clone()).map_err(|e| format!("not a LogEntry: {e}"))?;
        let Value::Object(mut object) = entry else { return Err("a LogEntry is a JSON object".into()) };
        if decoded.log_name.is_empty() {
            return Err("logName is required".into());
        }
        if decoded.resource.is_none() {
            return Err("resource is required".into());
        }
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        object.entry("timestamp").or_insert_with(|| Value::String(now.clone()));
        object.insert("receiveTimestamp".into(), Value::String(now));
        object.insert("severity".into(), Value::String(decoded.severity.name().unwrap_or("DEFAULT").to_owned()));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        object.entry("insertId").or_insert_with(|| Value::String(format!("standin{:010}", entries.len())));
        entries.push(Value::Object(object));
        Ok(())
    }

    /// Every entry, in the order written.
    pub fn all(&self) -> Vec<Value> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A running Cloud Logging stand-in; stops when dropped.
#[derive(Debug)]
pub struct LoggingStandIn {
    server: HttpStandIn,
    state: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    sink: LogSink,
    requests: RequestLog,
    faults: Faults,
}

impl LoggingStandIn {
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(Shared::default());
        let router = Router::new()
            .route("/v2/entries:list", post(list_entries))
            .route("/v2/entries:write", post(write_entries))
            .with_state(state.clone());
        Ok(Self { server: HttpStandIn::serve(router).await?, state })
    }

    /// What `DEVGEM_LOGGING_ENDPOINT` is set to.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The entries, to write into (another stand-in, a test) or read.
    pub fn sink(&self) -> LogSink {
        self.state.sink.clone()
    }

    /// Every request received, decoded (methods `ListLogEntries`, `WriteLogEntries`).
    pub fn requests(&self) -> &RequestLog {
        &self.state.requests
    }

    /// Failures to answer instead of the next calls of a method.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

/// A 400 in Google's shape, with the service's status name for bad arguments.
fn invalid(message: impl Into<String>) -> Response {
    google_error(StatusCode::BAD_REQUEST, message)
}

/// Decodes a body with the client crate's own type, as the service would, and records it; the
/// error is the message of the 400 to answer.
pub(crate) fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &Bytes,
    requests: &RequestLog,
) -> Result<T, String> {
    let decoded: T = serde_json::from_slice(body).map_err(|e| format!("{method}: the body does not decode: {e}"))?;
    let body = serde_json::to_value(&decoded).unwrap_or(Value::Null);
    requests.record(method, path, query, body);
    Ok(decoded)
}

async fn list_entries(
    State(state): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let request: ListLogEntriesRequest =
        match decode("ListLogEntries", "/v2/entries:list", &query, &body, &state.requests) {
            Ok(request) => request,
            Err(why) => return invalid(why),
        };
    if let Some(response) = state.faults.take("ListLogEntries") {
        return response;
    }
    if request.resource_names.is_empty() {
        return invalid("resourceNames: at least one is required");
    }
    let mut prefixes = Vec::new();
    for name in &request.resource_names {
        match name.strip_prefix("projects/") {
            Some(project) if !project.is_empty() && !project.contains('/') => {
                prefixes.push(format!("projects/{project}/logs/"));
            }
            _ => return invalid(format!("resourceNames: {name:?} is not projects/PROJECT")),
        }
    }
    let filter = match Filter::parse(&request.filter) {
        Ok(filter) => filter,
        Err(why) => return invalid(format!("filter {:?}: {why}", request.filter)),
    };
    let newest_first = match request.order_by.trim() {
        "" | "timestamp asc" => false,
        "timestamp desc" => true,
        other => return invalid(format!("orderBy {other:?}: only \"timestamp asc\" and \"timestamp desc\"")),
    };
    let page_size = match request.page_size {
        0 => 50,
        size @ 1..=1000 => size as usize,
        size => return invalid(format!("pageSize {size}: at most 1000")),
    };
    let offset = match request.page_token.as_str() {
        "" => 0,
        token => match token.parse::<usize>() {
            Ok(offset) => offset,
            Err(_) => return invalid(format!("pageToken {token:?} is not one this service gave")),
        },
    };
    let mut matching: Vec<(usize, Value)> = state
        .sink
        .all()
        .into_iter()
        .enumerate()
        .filter(|(_, entry)| {
            let log_name = entry["logName"].as_str().unwrap_or_default();
            prefixes.iter().any(|p| log_name.starts_with(p)) && filter.matches(entry)
        })
        .collect();
    // By timestamp, then in the order written (ties keep insertion order either way).
    matching.sort_by(|(a_seq, a), (b_seq, b)| {
        let (a_time, b_time) = (time_of(a), time_of(b));
        let by_time = if newest_first { b_time.cmp(&a_time) } else { a_time.cmp(&b_time) };
        by_time.then(a_seq.cmp(b_seq))
    });
    let page: Vec<Value> = matching.iter().skip(offset).take(page_size).map(|(_, e)| e.clone()).collect();
    let mut answer = json!({ "entries": page });
    if offset + page_size < matching.len() {
        answer["nextPageToken"] = Value::String((offset + page_size).to_string());
    }
    axum::Json(answer).into_response()
}

fn time_of(entry: &Value) -> Option<DateTime<Utc>> {
    entry["timestamp"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

async fn write_entries(
    State(state): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let request: WriteLogEntriesRequest =
        match decode("WriteLogEntries", "/v2/entries:write", &query, &body, &state.requests) {
            Ok(request) => request,
            Err(why) => return invalid(why),
        };
    if let Some(response) = state.faults.take("WriteLogEntries") {
        return response;
    }
    let Ok(Value::Object(defaults)) = serde_json::to_value(&request) else {
        return invalid("WriteLogEntries: the request is not an object");
    };
    let Some(Value::Array(entries)) = defaults.get("entries").cloned() else {
        return invalid("entries: at least one is required");
    };
    // The request's logName, resource and labels apply to entries that have none of their own.
    for entry in entries {
        let Value::Object(mut entry) = entry else { return invalid("entries: each is an object") };
        for key in ["logName", "resource"] {
            if let Some(value) = defaults.get(key) {
                entry.entry(key).or_insert_with(|| value.clone());
            }
        }
        if let Some(Value::Object(labels)) = defaults.get("labels") {
            let own = entry.entry("labels").or_insert_with(|| Value::Object(Map::new()));
            if let Some(own) = own.as_object_mut() {
                for (k, v) in labels {
                    own.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        // The client sends the severity's number; `write` keeps its name, as Cloud Logging shows it.
        if let Err(why) = state.sink.write(Value::Object(entry)) {
            return invalid(format!("entries: {why}"));
        }
    }
    axum::Json(json!({})).into_response()
}

/// The comparison of one [`Filter`] term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
    /// `:`, "has": a substring of a string, an element of a list.
    Has,
}

#[derive(Debug, Clone, PartialEq)]
struct Term {
    path: Vec<String>,
    op: Op,
    value: String,
}

/// The subset of the filter languages of Cloud Logging and Cloud Build that DevGem uses:
/// `path OP value` terms (OP one of `= != >= <= > < :`, value quoted or bare) joined by `AND`.
/// Paths are field names of the resource's JSON (`resource.labels.build_id`, `tags`). Times
/// (RFC 3339) compare as times and severities by rank; a list field matches when an element
/// does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    terms: Vec<Term>,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        let mut rest = text.trim_start();
        while !rest.is_empty() {
            if !terms.is_empty() {
                rest = rest
                    .strip_prefix("AND")
                    .filter(|r| r.starts_with(char::is_whitespace))
                    .ok_or_else(|| format!("expected AND at {rest:?} (only AND is supported)"))?
                    .trim_start();
            }
            let path_len =
                rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len());
            if path_len == 0 {
                return Err(format!("expected a field name at {rest:?}"));
            }
            let path = rest[..path_len].split('.').map(str::to_owned).collect();
            rest = rest[path_len..].trim_start();
            let (op, len) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("!=", Op::Ne),
                ("=", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
                (":", Op::Has),
            ]
            .into_iter()
            .find(|(token, _)| rest.starts_with(token))
            .map(|(token, op)| (op, token.len()))
            .ok_or_else(|| format!("expected a comparison at {rest:?}"))?;
            rest = rest[len..].trim_start();
            let (value, after) = value(rest)?;
            terms.push(Term { path, op, value });
            rest = after.trim_start();
        }
        Ok(Self { terms })
    }

    /// Reads a term on `from` as one on `to` (Cloud Build's `build_id` is the resource's `id`).
    pub fn rename(mut self, from: &str, to: &str) -> Self {
        for term in &mut self.terms {
            if term.path.len() == 1 && term.path[0] == from {
                term.path = vec![to.to_owned()];
            }
        }
        self
    }

    pub fn matches(&self, resource: &Value) -> bool {
        self.terms.iter().all(|term| {
            let field = term.path.iter().try_fold(resource, |v, key| v.get(key));
            match field {
                Some(Value::Array(items)) => items.iter().any(|item| compare(term, item)),
                Some(field) => compare(term, field),
                // A missing field equals nothing and differs from everything.
                None => term.op == Op::Ne,
            }
        })
    }
}

/// A quoted value (with `\` escapes) or a bare word; returns it and what follows.
fn value(text: &str) -> Result<(String, &str), String> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        if end == 0 {
            return Err("expected a value".into());
        }
        return Ok((text[..end].to_owned(), &text[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => return Err("a value ends in a lone backslash".into()),
            },
            '"' => return Ok((value, &quoted[i + 1..])),
            c => value.push(c),
        }
    }
    Err(format!("unterminated quoted value {text:?}"))
}

fn compare(term: &Term, field: &Value) -> bool {
    let text = match field {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return term.op == Op::Ne,
    };
    let ordering = if term.path.last().is_some_and(|p| p == "severity") {
        severity_rank(&text).cmp(&severity_rank(&term.value))
    } else {
        match (parse_time(&text), parse_time(&term.value)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => text.as_str().cmp(term.value.as_str()),
        }
    };
    match term.op {
        Op::Eq => ordering.is_eq(),
        Op::Ne => ordering.is_ne(),
        Op::Ge => ordering.is_ge(),
        Op::Le => ordering.is_le(),
        Op::Gt => ordering.is_gt(),
        Op::Lt => ordering.is_lt(),
        Op::Has => text.contains(&term.value),
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

fn severity_rank(name: &str) -> u32 {
    ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
        .iter()
        .position(|s| s.eq_ignore_ascii_case(name))
        .map_or(0, |i| i as u32 * 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_fields_lists_times_and_severities() {
        let entry = json!({
            "logName": "projects/p/logs/cloudbuild",
            "resource": {"type": "build", "labels": {"build_id": "b-1"}},
            "timestamp": "2024-06-11T09:28:47.5Z",
            "severity": "WARNING",
            "tags": ["devgem", "devgem-submit-x"],
        });
        let matches = |filter: &str| Filter::parse(filter).expect(filter).matches(&entry);
        assert!(matches(
            r#"logName="projects/p/logs/cloudbuild" AND resource.type="build" AND resource.labels.build_id="b-1""#
        ));
        assert!(!matches(r#"resource.labels.build_id="b-2""#));
        assert!(matches(r#"timestamp>="2024-06-11T09:28:47Z""#));
        assert!(!matches(r#"timestamp>"2024-06-11T09:28:47.500000001Z""#));
        assert!(matches("severity>=INFO"));
        assert!(!matches("severity>=ERROR"));
        assert!(matches(r#"tags="devgem-submit-x""#));
        assert!(!matches(r#"missing.field="x""#));
        assert!(Filter::parse(r#"a="1" OR b="2""#).is_err(), "OR is not supported, so it is refused");
        assert!(Filter::parse(r#"a="unterminated"#).is_err());
        assert_eq!(Filter::parse("").expect("empty"), Filter::default(), "an empty filter matches all");
    }
}
