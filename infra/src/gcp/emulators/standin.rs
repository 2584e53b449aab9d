//! What the in-test HTTP stand-ins of Google's REST APIs share (Cloud Build, Cloud Run, Secret
//! Manager, Logging, IAM): serving an axum router on a loopback port, answering in Google's JSON
//! error shape, failures scripted per method (429, 503, 409, ...), a log of the requests as
//! decoded, and long-running operations that complete after a delay.
//!
//! Each stand-in decodes request bodies with the official crate's own message types, so a request
//! the real API would not parse fails the test; this module only deals in JSON values.

use axum::Json;
use axum::Router;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A stand-in's HTTP server on `127.0.0.1`; stops when dropped.
#[derive(Debug)]
pub struct HttpStandIn {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpStandIn {
    /// Serves `router` on a free loopback port.
    pub async fn serve(router: Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "a stand-in's server stopped");
            }
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint a client is pointed at (`DEVGEM_<API>_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The canonical status name Google's JSON errors carry for an HTTP status.
fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// An error as Google's REST APIs answer it: `{"error": {"code", "message", "status"}}`.
pub fn google_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message.into(), "status": status_name(status)}});
    (status, Json(body)).into_response()
}

/// Failures scripted per method name: the next `times` calls of that method answer `status`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    queued: Arc<Mutex<HashMap<String, VecDeque<StatusCode>>>>,
}

impl Faults {
    /// The next `times` calls of `method` answer `status` (after any already scripted).
    pub fn fail_next(&self, method: &str, status: StatusCode, times: u32) {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queued.entry(method.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(status, times as usize));
    }

    /// The scripted failure for this call of `method`, if any, as the response to send.
    pub fn take(&self, method: &str) -> Option<Response> {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        let status = queued.get_mut(method)?.pop_front()?;
        Some(google_error(status, format!("scripted failure of {method}")))
    }
}

/// One request a stand-in received, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The API method (`CreateService`, `AccessSecretVersion`, ...).
    pub method: String,
    /// The resource path of the request (`/v2/projects/p/locations/l/services`).
    pub path: String,
    /// The query string's parameters.
    pub query: HashMap<String, String>,
    /// The body as the official type decoded it, serialized again (`Null` when there was none).
    pub body: Value,
}

/// Every request a stand-in received, in order.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl RequestLog {
    pub fn push(&self, request: Recorded) {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).push(request);
    }

    /// Records one request of `method` to `path`.
    pub fn record(&self, method: &str, path: &str, query: &HashMap<String, String>, body: Value) {
        self.push(Recorded { method: method.to_owned(), path: path.to_owned(), query: query.clone(), body });
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The requests of one method, in order.
    pub fn of(&self, method: &str) -> Vec<Recorded> {
        self.all().into_iter().filter(|r| r.method == method).collect()
    }
}

#[derive(Debug)]
struct Operation {
    done_at: Instant,
    /// `{"response": ...}` or `{"error": ...}` once done.
    outcome: Value,
    metadata: Value,
}

/// Long-running operations that are done `delay` after they start.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    operations: Arc<Mutex<HashMap<String, Operation>>>,
}

impl Operations {
    /// Starts an operation named `name` that completes with `response` (a JSON `Any`, with its
    /// `@type`) after `delay`, and returns the operation as first answered (not done).
    pub fn start(&self, name: &str, delay: Duration, metadata: Value, response: Value) -> Value {
        self.insert(name, delay, metadata, json!({"response": response}))
    }

    /// Starts an operation that fails after `delay` with `status` and `message`.
    pub fn start_failing(&self, name: &str, delay: Duration, metadata: Value, code: i32, message: &str) -> Value {
        self.insert(name, delay, metadata, json!({"error": {"code": code, "message": message}}))
    }

    fn insert(&self, name: &str, delay: Duration, metadata: Value, outcome: Value) -> Value {
        let operation = Operation { done_at: Instant::now() + delay, outcome, metadata };
        self.operations.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), operation);
        self.get(name).unwrap_or(Value::Null)
    }

    /// The operation as `google.longrunning.Operation` JSON, done once its delay has passed.
    pub fn get(&self, name: &str) -> Option<Value> {
        let operations = self.operations.lock().unwrap_or_else(PoisonError::into_inner);
        let operation = operations.get(name)?;
        let mut answer = json!({"name": name, "metadata": operation.metadata.clone()});
        if Instant::now() >= operation.done_at {
            answer["done"] = Value::Bool(true);
            if let (Some(answer), Some(outcome)) = (answer.as_object_mut(), operation.outcome.as_object()) {
                answer.extend(outcome.clone());
            }
        }
        Some(answer)
    }

    /// Whether the operation is done.
    pub fn is_done(&self, name: &str) -> bool {
        self.get(name).is_some_and(|o| o["done"] == Value::Bool(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_faults_are_answered_in_order_then_calls_pass() {
        let faults = Faults::default();
        faults.fail_next("CreateService", StatusCode::TOO_MANY_REQUESTS, 1);
        faults.fail_next("CreateService", StatusCode::SERVICE_UNAVAILABLE, 1);
        let first = faults.take("CreateService").expect("429");
        assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(faults.take("GetService").map(|r| r.status()), None, "other methods are not affected");
        assert_eq!(faults.take("CreateService").map(|r| r.status()), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(faults.take("CreateService").is_none());
    }

    #[test]
    fn an_operation_is_done_after_its_delay_with_its_response() {
        let operations = Operations::default();
        let first = operations.start("operations/1", Duration::from_millis(30), json!({}), json!({"@type": "x"}));
        assert_eq!(first["name"], "operations/1");
        assert!(first.get("done").is_none(), "{first}");
        std::thread::sleep(Duration::from_millis(40));
        let done = operations.get("operations/1").expect("known");
        assert_eq!(done["done"], true);
        assert_eq!(done["response"]["@type"], "x");
        assert!(operations.get("operations/2").is_none());
    }
}
