//! What the control plane's official REST clients (Cloud Build, Cloud Run, Secret Manager,
//! Logging, IAM) share: how a client is pointed at Google's endpoint or a stand-in
//! ([`configure`], [`setup_error`]), and how a failed call is classified for the retries and
//! breaker of [`super::call::Api`] ([`GoogleApiError`]).
//!
//! The clients' own retries are off ([`configure`]): every attempt goes through `Api`, whose
//! breaker must see each one, and whose retries of a create first check whether it was applied.

use crate::resilience::{Classify, Failure};
use google_cloud_auth::credentials::Credentials;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::client_builder::ClientBuilder;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::NeverRetry;

/// A client builder with its own retries off, on `endpoint` with anonymous credentials when one
/// is given (a stand-in), else on Google's endpoint with Application Default Credentials.
pub fn configure<F, Cr>(builder: ClientBuilder<F, Cr>, endpoint: Option<&str>) -> ClientBuilder<F, Cr>
where
    Credentials: Into<Cr>,
{
    let builder = builder.with_retry_policy(NeverRetry);
    match endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint).with_credentials(Anonymous::new().build()),
        None => builder,
    }
}

/// What a client that could not be built says: the client's error and what to check.
pub fn setup_error(api: &str, endpoint_var: &str, endpoint: Option<&str>, error: &dyn std::fmt::Display) -> String {
    let hint = match endpoint {
        Some(_) => format!("check {endpoint_var}"),
        None => "Application Default Credentials are needed: on GCP the service account's, elsewhere \
                 `gcloud auth application-default login` or GOOGLE_APPLICATION_CREDENTIALS"
            .to_owned(),
    };
    format!("cannot create the {api} client: {error}; {hint}")
}

/// A failed call of a Google REST API through its generated client, with what it says about the
/// service (see [`Classify`]): 429 and `RESOURCE_EXHAUSTED` ask to slow down; 503, 504, 408,
/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, timeouts and connection errors are worth another attempt;
/// everything else is a refusal another attempt would get again. A 409 (`ALREADY_EXISTS`,
/// `ABORTED`: changed since read) is the operation's to decide: adopt what exists, or read again
/// and retry with the new version; the same request again would only conflict again.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct GoogleApiError(#[source] pub google_cloud_gax::error::Error);

impl GoogleApiError {
    /// The canonical code the service answered with, if it answered.
    pub fn code(&self) -> Option<Code> {
        answered(&self.0).and_then(|e| e.status()).map(|s| s.code)
    }

    /// The HTTP status of the answer, if there was one.
    pub fn http_status(&self) -> Option<u16> {
        answered(&self.0).and_then(|e| e.http_status_code())
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound) || (self.code().is_none() && self.http_status() == Some(404))
    }

    /// 409: `ALREADY_EXISTS`, or `ABORTED` (the resource changed since it was read).
    pub fn is_conflict(&self) -> bool {
        matches!(self.code(), Some(Code::AlreadyExists | Code::Aborted)) || self.http_status() == Some(409)
    }

    pub fn is_permission_denied(&self) -> bool {
        matches!(self.code(), Some(Code::PermissionDenied | Code::Unauthenticated))
            || matches!(self.http_status(), Some(401 | 403))
    }
}

/// The innermost error that carries the service's answer: a client-side "retries exhausted"
/// wraps the last attempt's error.
fn answered(error: &google_cloud_gax::error::Error) -> Option<&google_cloud_gax::error::Error> {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(e) = current.downcast_ref::<google_cloud_gax::error::Error>()
            && (e.status().is_some() || e.http_status_code().is_some())
        {
            return Some(e);
        }
        current = current.source()?;
    }
}

/// The service's own words when it answered ("UNAVAILABLE: ..."), else the client's.
fn describe(error: &google_cloud_gax::error::Error) -> String {
    match answered(error) {
        Some(e) => match (e.status(), e.http_status_code()) {
            (Some(status), _) => format!("{}: {}", status.code.name(), status.message),
            (None, Some(http)) => format!("HTTP {http}: {e}"),
            (None, None) => e.to_string(),
        },
        None => error.to_string(),
    }
}

impl Classify for GoogleApiError {
    fn failure(&self) -> Failure {
        classify(&self.0)
    }
}

/// What a failed call of a generated client says about the service (see [`GoogleApiError`]).
pub fn classify(error: &google_cloud_gax::error::Error) -> Failure {
    let answer = answered(error);
    let code = answer.and_then(|e| e.status()).map(|s| s.code);
    let http = answer.and_then(|e| e.http_status_code());
    match (code, http) {
        (Some(Code::ResourceExhausted), _) | (_, Some(429)) => Failure::SlowDown,
        (Some(Code::Unavailable | Code::DeadlineExceeded), _) => Failure::Down,
        (_, Some(408 | 502 | 503 | 504)) => Failure::Down,
        (Some(_), _) | (None, Some(_)) => Failure::Refused,
        (None, None) => {
            if error.is_authentication() {
                // A token fetch can fail for a moment (metadata server busy); a missing or
                // invalid credential does not get better by asking again.
                if error.is_transient_and_before_rpc() { Failure::Down } else { Failure::Refused }
            } else if error.is_serialization() || error.is_deserialization() || error.is_binding() {
                Failure::Refused
            } else {
                // Timeout, connection refused or reset: no usable answer.
                Failure::Down
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::Error;
    use google_cloud_gax::error::rpc::Status;

    #[test]
    fn errors_are_classified_for_the_breaker_and_retries() {
        let service = |code| GoogleApiError(Error::service(Status::default().set_code(code)));
        let http =
            |code| GoogleApiError(Error::http(code, http::HeaderMap::new(), bytes::Bytes::from_static(b"<html>")));
        assert_eq!(service(Code::ResourceExhausted).failure(), Failure::SlowDown);
        assert_eq!(http(429).failure(), Failure::SlowDown);
        for down in [Code::Unavailable, Code::DeadlineExceeded] {
            assert_eq!(service(down).failure(), Failure::Down, "{down:?}");
        }
        for down in [408, 502, 503, 504] {
            assert_eq!(http(down).failure(), Failure::Down, "{down}");
        }
        // A 409 is the operation's to resolve; an internal error is not retried blindly.
        for refused in [
            Code::AlreadyExists,
            Code::Aborted,
            Code::NotFound,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::Internal,
        ] {
            assert_eq!(service(refused).failure(), Failure::Refused, "{refused:?}");
        }
        for refused in [400, 403, 404, 409, 500] {
            assert_eq!(http(refused).failure(), Failure::Refused, "{refused}");
        }
        assert!(
            service(Code::Aborted).is_conflict() && http(409).is_conflict() && !service(Code::NotFound).is_conflict()
        );
        assert!(service(Code::NotFound).is_not_found() && http(404).is_not_found());
        assert!(service(Code::PermissionDenied).is_permission_denied() && http(403).is_permission_denied());
        assert_eq!(GoogleApiError(Error::timeout("slow")).failure(), Failure::Down);
        assert_eq!(GoogleApiError(Error::io(std::io::Error::other("reset"))).failure(), Failure::Down);
        assert_eq!(GoogleApiError(Error::deser("garbled")).failure(), Failure::Refused);
    }
}
