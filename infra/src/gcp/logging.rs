//! Reading Cloud Logging (`ListLogEntries` of the official `google-cloud-logging-v2` client).
//!
//! This module owns:
//! - [`CloudLogging`]: one client on the project's logs. [`CloudLogging::entries`] is one page of
//!   any filter; [`CloudLogging::collect`] follows pages up to a limit;
//!   [`CloudLogging::build_entries`] is a Cloud Build build's log (what [`super::cloudbuild`]
//!   reads for `Builder::log_lines`) and [`CloudLogging::service_entries`] the latest entries of a
//!   Cloud Run service or revision (what the Cloud Run runtime reads for `Runtime::logs`).
//! - The conversion of the client's entries to [`LogEntry`], the shape the monitor decodes from
//!   the Log Router sink, so both paths read one type.
//!
//! Pacing: `entries.list` has a small quota (60 requests a minute per project), and a running
//! build's log is followed by polling. So every request waits for its turn behind the previous
//! one of this process by at least [`LoggingOptions::min_interval`]: callers are slowed down
//! rather than answered 429, which would open the breaker for every reader.

use crate::gcp::GcpConfig;
use crate::gcp::call::{Api, CallError};
use crate::gcp::client::{GoogleApiError, configure, setup_error};
use crate::resilience::{Classify, Failure};
use chrono::{DateTime, Utc};
use devgem_common::events::log_entry::LogEntry;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_logging_v2::client::LoggingServiceV2;
use serde_json::Value;
use std::time::Duration;

/// The API name in breaker messages.
const API: &str = "Cloud Logging";
/// The service's largest page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// How long one request may take before it counts as failed (and is retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why reading logs failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// Cloud Logging refused the request (bad filter, missing permission): asking again would
    /// be refused again.
    #[error("{0}")]
    Refused(String),
    /// Cloud Logging did not answer usefully (down, rate-limited, breaker open): try later.
    #[error("{0}")]
    Unavailable(String),
}

/// How entries are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

impl Order {
    fn as_order_by(self) -> &'static str {
        match self {
            Order::OldestFirst => "timestamp asc",
            Order::NewestFirst => "timestamp desc",
        }
    }
}

/// One page of entries.
#[derive(Debug, Clone, PartialEq)]
pub struct EntriesPage {
    pub entries: Vec<LogEntry>,
    /// Where the next page starts; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// How the reader paces and retries.
#[derive(Debug)]
pub struct LoggingOptions {
    pub api: Api,
    /// The least time between the starts of two requests of this process (see the module docs).
    pub min_interval: Duration,
}

impl Default for LoggingOptions {
    fn default() -> Self {
        // 60 requests a minute is the project's whole `entries.list` quota.
        Self { api: Api::new(API), min_interval: Duration::from_secs(1) }
    }
}

/// Cloud Logging of one project, read through the official client.
#[derive(Debug)]
pub struct CloudLogging {
    /// Set up on the first read: a function that never reads logs never pays for it.
    client: tokio::sync::OnceCell<LoggingServiceV2>,
    custom_endpoint: Option<String>,
    project: String,
    region: String,
    /// Where requests go, for error messages.
    endpoint: String,
    api: Api,
    min_interval: Duration,
    /// When the next request may start; held while waiting, so callers go in turn.
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
}

/// `"value"` in the filter language: backslashes and quotes escaped.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The filter of a Cloud Build build's log: Cloud Build writes it to `cloudbuild`, one entry per
/// line, on the `build` resource labelled with the build's id.
pub fn build_filter(project: &str, build_id: &str) -> String {
    format!(
        "logName={} AND resource.type=\"build\" AND resource.labels.build_id={}",
        quote(&format!("projects/{project}/logs/cloudbuild")),
        quote(build_id)
    )
}

/// The filter of a Cloud Run service's entries in `region` (all its logs: stdout, stderr,
/// requests, system), optionally of one revision.
pub fn service_filter(region: &str, service_name: &str, revision: Option<&str>) -> String {
    let mut filter = format!(
        "resource.type=\"cloud_run_revision\" AND resource.labels.service_name={} AND resource.labels.location={}",
        quote(service_name),
        quote(region)
    );
    if let Some(revision) = revision {
        filter.push_str(&format!(" AND resource.labels.revision_name={}", quote(revision)));
    }
    filter
}

/// RFC 3339 with nanoseconds, as the filter language compares timestamps.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl CloudLogging {
    /// Connects to Cloud Logging of `config.project`: at `config.endpoints.logging` with
    /// anonymous credentials if set (a stand-in), else Google's endpoint with Application
    /// Default Credentials.
    pub async fn connect(config: &GcpConfig) -> Result<Self, LoggingError> {
        Self::connect_with(config, LoggingOptions::default()).await
    }

    /// The client, set up on first use.
    async fn client(&self) -> Result<&LoggingServiceV2, LoggingError> {
        let custom = self.custom_endpoint.as_deref();
        self.client
            .get_or_try_init(|| async {
                configure(LoggingServiceV2::builder(), custom)
                    .build()
                    .await
                    .map_err(|e| LoggingError::Unavailable(setup_error(API, "DEVGEM_LOGGING_ENDPOINT", custom, &e)))
            })
            .await
    }

    /// [`connect`](Self::connect) with the caller's pacing, retries and breaker (tests keep the
    /// delays short).
    pub async fn connect_with(config: &GcpConfig, options: LoggingOptions) -> Result<Self, LoggingError> {
        if config.project.is_empty() {
            return Err(LoggingError::Refused(
                "GOOGLE_CLOUD_PROJECT is not set; set it to the GCP project id DevGem runs in".into(),
            ));
        }
        let custom = config.endpoints.logging.as_deref();
        let endpoint = custom.unwrap_or("https://logging.googleapis.com").to_owned();
        Ok(Self {
            client: tokio::sync::OnceCell::new(),
            custom_endpoint: config.endpoints.logging.clone(),
            project: config.project.clone(),
            region: config.region.clone(),
            endpoint,
            api: options.api,
            min_interval: options.min_interval,
            next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Waits for this request's turn (see the module docs).
    async fn pace(&self) {
        if self.min_interval.is_zero() {
            return;
        }
        let mut next = self.next_slot.lock().await;
        tokio::time::sleep_until(*next).await;
        *next = tokio::time::Instant::now() + self.min_interval;
    }

    /// One page of the entries of this project matching `filter` (Cloud Logging's query
    /// language), in `order`, at most `page_size` (up to [`MAX_PAGE_SIZE`]) of them, from
    /// `page_token` (a previous page's `next_page_token`) on.
    pub async fn entries(
        &self,
        filter: &str,
        order: Order,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<EntriesPage, LoggingError> {
        let page_size = i32::try_from(page_size.clamp(1, MAX_PAGE_SIZE)).unwrap_or(1000);
        let resource = format!("projects/{}", self.project);
        let client = self.client().await?;
        let response = self
            .api
            .call(|| async {
                self.pace().await;
                client
                    .list_log_entries()
                    .set_resource_names([resource.clone()])
                    .set_filter(filter)
                    .set_order_by(order.as_order_by())
                    .set_page_size(page_size)
                    .set_page_token(page_token.unwrap_or_default())
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .send()
                    .await
                    .map_err(GoogleApiError)
            })
            .await
            .map_err(|e| self.error(filter, e))?;
        let entries = response
            .entries
            .into_iter()
            .filter_map(|entry| match convert(&entry) {
                Ok(entry) => Some(entry),
                Err(why) => {
                    // One odd entry must not hide the others.
                    tracing::warn!(insert_id = %entry.insert_id, %why, "a log entry was skipped");
                    None
                }
            })
            .collect();
        let next_page_token = Some(response.next_page_token).filter(|t| !t.is_empty());
        Ok(EntriesPage { entries, next_page_token })
    }

    /// Up to `limit` entries matching `filter` in `order`, following pages.
    pub async fn collect(&self, filter: &str, order: Order, limit: usize) -> Result<Vec<LogEntry>, LoggingError> {
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        while entries.len() < limit {
            let page = self.entries(filter, order, limit - entries.len(), token.as_deref()).await?;
            entries.extend(page.entries);
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        entries.truncate(limit);
        Ok(entries)
    }

    /// The log of Cloud Build build `build_id`, oldest line first, at most `limit` entries; with
    /// `since`, only the entries stamped at or after it.
    pub async fn build_entries(
        &self,
        build_id: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, LoggingError> {
        let mut filter = build_filter(&self.project, build_id);
        if let Some(since) = since {
            filter.push_str(&format!(" AND timestamp>={}", quote(&timestamp(since))));
        }
        self.collect(&filter, Order::OldestFirst, limit).await
    }

    /// The latest `limit` entries of Cloud Run service `service_name` (its full Cloud Run name)
    /// in the configured region, of revision `revision` only if given, newest last. Request logs
    /// are included; [`LogEntry::stream`] tells the container's stdout and stderr apart.
    pub async fn service_entries(
        &self,
        service_name: &str,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, LoggingError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Newest first, so the service asks only for what is returned; then turned around.
        let filter = service_filter(&self.region, service_name, revision);
        let mut entries = self.collect(&filter, Order::NewestFirst, limit).await?;
        entries.reverse();
        Ok(entries)
    }

    /// The error a caller reads: what was asked, where, why, and what to do.
    fn error(&self, filter: &str, error: CallError<GoogleApiError>) -> LoggingError {
        match error {
            CallError::Failed(e) if e.is_permission_denied() => LoggingError::Refused(format!(
                "Cloud Logging ({}) refused to list entries of projects/{}: {e}; DevGem's service account needs \
                 roles/logging.viewer on the project",
                self.endpoint, self.project
            )),
            CallError::Failed(e) if e.failure() == Failure::Refused => {
                LoggingError::Refused(format!("Cloud Logging ({}) refused the query {filter:?}: {e}", self.endpoint))
            }
            other => LoggingError::Unavailable(format!(
                "Cloud Logging ({}) listing entries of projects/{}: {}",
                self.endpoint,
                self.project,
                other.message()
            )),
        }
    }
}

/// The client's entry as the [`LogEntry`] JSON shape: the same field names (the client speaks
/// the REST JSON), with the severity by name where the client carries its number.
fn convert(entry: &google_cloud_logging_v2::model::LogEntry) -> Result<LogEntry, String> {
    let mut json = serde_json::to_value(entry).map_err(|e| e.to_string())?;
    let Some(object) = json.as_object_mut() else { return Err("not an object".into()) };
    let severity = entry.severity.name().unwrap_or("DEFAULT").to_owned();
    object.insert("severity".into(), Value::String(severity));
    // Our shape requires a resource type; an entry without one is written as the "global" one.
    let resource = object.entry("resource").or_insert_with(|| serde_json::json!({}));
    if let Some(resource) = resource.as_object_mut() {
        resource.entry("type").or_insert_with(|| Value::String("global".into()));
    }
    serde_json::from_value(json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
