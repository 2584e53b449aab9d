//! Blobs on Google Cloud Storage: one object per blob in the bucket `DEVGEM_BUCKET`, named by its
//! key. Reads and writes go through the official client's JSON API (`Storage`: streaming
//! downloads, single-shot and resumable uploads), listing and deleting through its gRPC API
//! (`StorageControl`). An upload replaces the object atomically: readers see the old generation
//! or the new one, and a resumed read is pinned to the generation it started on.
//!
//! Every request goes through [`Api`] (retries with backoff, one circuit breaker); the client's own
//! retry loop is switched off so that the breaker sees every attempt. The exception is a body too
//! large to keep in memory for a second attempt (over [`REPLAYABLE_LIMIT`]): it is streamed once,
//! as a resumable upload whose chunks the client resumes itself from its buffer.

use crate::gcp::GcpConfig;
use crate::gcp::call::{Api, CallError};
use crate::resilience::{BreakerPolicy, Classify, Failure, RetryPolicy};
use async_trait::async_trait;
use bytes::Bytes;
use devgem_common::ports::blobs::{BlobError, BlobKey, BlobMeta, Blobs, ByteStream};
use futures_util::StreamExt;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::{NeverRetry, RetryPolicyExt};
use google_cloud_storage::client::{Storage, StorageControl};
use google_cloud_storage::retry_policy::RetryableErrors;
use google_cloud_storage::streaming_source::{SizeHint, StreamingSource};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The API name in breaker messages.
const API: &str = "Cloud Storage";
/// The breaker of streamed uploads, which get a single attempt (see the module docs).
const UPLOADS_API: &str = "Cloud Storage uploads";
/// Bodies up to this size are kept in memory, so that a failed upload can be sent again.
pub const REPLAYABLE_LIMIT: usize = 4 * 1024 * 1024;
/// Objects per list page (the service's maximum is 1,000).
const PAGE_SIZE: i32 = 1000;
/// How long the client may spend resuming the chunks of one streamed upload.
const RESUMABLE_RETRY_TIME: Duration = Duration::from_secs(120);
const RESUMABLE_RETRY_ATTEMPTS: u32 = 6;

/// A failed Cloud Storage request, classified for [`Api`].
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    #[error("{0}")]
    Api(#[source] google_cloud_storage::Error),
    /// The blob's body failed while it was being uploaded: not the service's fault.
    #[error("the blob's body failed: {0}")]
    Body(String),
}

impl GcsError {
    pub fn is_not_found(&self) -> bool {
        match self {
            GcsError::Api(e) => {
                e.status().is_some_and(|s| s.code == Code::NotFound) || e.http_status_code() == Some(404)
            }
            GcsError::Body(_) => false,
        }
    }
}

impl Classify for GcsError {
    fn failure(&self) -> Failure {
        match self {
            GcsError::Api(e) => classify(e),
            GcsError::Body(_) => Failure::Refused,
        }
    }
}

fn classify(error: &google_cloud_storage::Error) -> Failure {
    // A client-side "retries exhausted" wraps the last real error.
    if error.is_exhausted()
        && let Some(inner) =
            std::error::Error::source(error).and_then(|s| s.downcast_ref::<google_cloud_storage::Error>())
    {
        return classify(inner);
    }
    if let Some(status) = error.status() {
        return match status.code {
            Code::ResourceExhausted => Failure::SlowDown,
            Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::Aborted => {
                Failure::Down
            }
            _ => match error.http_status_code() {
                Some(code) if code >= 500 => Failure::Down,
                _ => Failure::Refused,
            },
        };
    }
    match error.http_status_code() {
        Some(429) => return Failure::SlowDown,
        Some(408) => return Failure::Down,
        Some(code) if code >= 500 => return Failure::Down,
        Some(code) if code >= 400 => return Failure::Refused,
        _ => {}
    }
    if error.is_timeout() || error.is_connect() || error.is_io() || error.is_transport() {
        return Failure::Down;
    }
    if error.is_authentication() {
        // Fetching a token can fail for a moment (metadata server busy); a missing or invalid
        // credential will not get better by asking again.
        return if error.is_transient_and_before_rpc() { Failure::Down } else { Failure::Refused };
    }
    if error.is_serialization() || error.is_deserialization() || error.is_binding() {
        return Failure::Refused;
    }
    Failure::Down
}

/// The Blobs port on one Cloud Storage bucket.
#[derive(Debug)]
pub struct GcsBlobs {
    data: Storage,
    control: StorageControl,
    /// `projects/_/buckets/NAME`, as the client names buckets.
    bucket: String,
    /// Where requests go, for error messages.
    endpoint: String,
    api: Api,
    uploads: Api,
}

impl GcsBlobs {
    /// Connects to the bucket `config.bucket`, on the emulator at `config.storage_emulator` (no
    /// credentials) if set, else on Cloud Storage with Application Default Credentials.
    pub async fn connect(config: &GcpConfig) -> Result<Self, BlobError> {
        Self::connect_with(config, Api::new(API)).await
    }

    /// [`connect`](Self::connect) with the caller's retry and breaker policies (tests keep the
    /// delays short).
    pub async fn connect_with(config: &GcpConfig, api: Api) -> Result<Self, BlobError> {
        let bucket = bucket_name(config.bucket.as_deref())?;
        let emulator = config.storage_emulator.as_deref().map(emulator_endpoint);
        // The client does not read STORAGE_EMULATOR_HOST itself: the endpoint is always explicit.
        let mut data = Storage::builder().with_retry_policy(NeverRetry);
        let mut control = StorageControl::builder().with_retry_policy(NeverRetry);
        if let Some(endpoint) = &emulator {
            data = data.with_endpoint(endpoint.clone()).with_credentials(Anonymous::new().build());
            control = control.with_endpoint(endpoint.clone()).with_credentials(Anonymous::new().build());
        }
        let hint = if emulator.is_some() {
            "check STORAGE_EMULATOR_HOST"
        } else {
            "Application Default Credentials are needed: on GCP the service account's, elsewhere \
             `gcloud auth application-default login` or GOOGLE_APPLICATION_CREDENTIALS"
        };
        let data = data
            .build()
            .await
            .map_err(|e| BlobError::Unavailable(format!("cannot create the Cloud Storage client: {e}; {hint}")))?;
        let control = control
            .build()
            .await
            .map_err(|e| BlobError::Unavailable(format!("cannot create the Cloud Storage client: {e}; {hint}")))?;
        let uploads = Api::with_policies(
            UPLOADS_API,
            BreakerPolicy { failures: 5, cool_down: Duration::from_secs(30) },
            RetryPolicy { attempts: 1, first_delay: Duration::ZERO, max_delay: Duration::ZERO },
        );
        Ok(Self {
            data,
            control,
            bucket: format!("projects/_/buckets/{bucket}"),
            endpoint: emulator.unwrap_or_else(|| "https://storage.googleapis.com".to_owned()),
            api,
            uploads,
        })
    }

    fn bucket_id(&self) -> &str {
        self.bucket.rsplit('/').next().unwrap_or(&self.bucket)
    }

    /// The error a caller reads: the operation, the object, where, and why.
    fn error(&self, operation: &str, key: &str, error: CallError<GcsError>) -> BlobError {
        match error {
            CallError::Failed(e) if e.is_not_found() => BlobError::NotFound(key.to_owned()),
            CallError::Failed(GcsError::Body(message)) => BlobError::Unavailable(message),
            other => BlobError::Unavailable(format!(
                "Cloud Storage ({}) {operation} gs://{}/{key}: {}",
                self.endpoint,
                self.bucket_id(),
                other.message()
            )),
        }
    }

    async fn put_replayable(&self, key: &BlobKey, chunks: Vec<Bytes>) -> Result<u64, BlobError> {
        let object = self
            .api
            .call(|| {
                // Cheap: the chunks are reference-counted.
                let upload = self
                    .data
                    .write_object(&self.bucket, key.as_str(), ChunksSource::new(chunks.clone()))
                    .set_content_type("application/octet-stream")
                    .send_buffered();
                async move { upload.await.map_err(GcsError::Api) }
            })
            .await
            .map_err(|e| self.error("put", key.as_str(), e))?;
        Ok(u64::try_from(object.size).unwrap_or_default())
    }

    async fn put_streaming(&self, key: &BlobKey, head: Vec<Bytes>, rest: ByteStream) -> Result<u64, BlobError> {
        let body_failure = Arc::new(Mutex::new(None));
        let source = BodySource {
            buffered: head.iter().map(|c| c.len() as u64).sum(),
            head: head.into(),
            rest: Mutex::new(rest),
            failure: Arc::clone(&body_failure),
            failed: None,
        };
        let source = Mutex::new(Some(source));
        let result = self
            .uploads
            .call(|| {
                let source = source.lock().unwrap_or_else(PoisonError::into_inner).take();
                async move {
                    // The uploads API makes one attempt, so the body is always there.
                    let source = source.ok_or_else(|| GcsError::Body("the body was already sent".to_owned()))?;
                    self.data
                        .write_object(&self.bucket, key.as_str(), source)
                        .set_content_type("application/octet-stream")
                        // The client keeps the unacknowledged chunk and resumes from it.
                        .with_retry_policy(
                            RetryableErrors
                                .with_time_limit(RESUMABLE_RETRY_TIME)
                                .with_attempt_limit(RESUMABLE_RETRY_ATTEMPTS),
                        )
                        .send_buffered()
                        .await
                        .map_err(GcsError::Api)
                }
            })
            .await;
        match result {
            Ok(object) => Ok(u64::try_from(object.size).unwrap_or_default()),
            Err(error) => {
                // The caller's body failed: hand its own error back. The upload was never
                // finalised, so the previous object is untouched.
                if let Some(body_error) = body_failure.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    return Err(body_error);
                }
                Err(self.error("put", key.as_str(), error))
            }
        }
    }
}

#[async_trait]
impl Blobs for GcsBlobs {
    async fn put(&self, key: &BlobKey, mut body: ByteStream) -> Result<u64, BlobError> {
        let mut head = Vec::new();
        let mut size = 0usize;
        while size <= REPLAYABLE_LIMIT {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    size += chunk.len();
                    if !chunk.is_empty() {
                        head.push(chunk);
                    }
                }
                None => return self.put_replayable(key, head).await,
            }
        }
        self.put_streaming(key, head, body).await
    }

    async fn get(&self, key: &BlobKey) -> Result<ByteStream, BlobError> {
        let response = self
            .api
            .call(|| {
                let read = self.data.read_object(&self.bucket, key.as_str()).send();
                async move { read.await.map_err(GcsError::Api) }
            })
            .await
            .map_err(|e| self.error("get", key.as_str(), e))?;
        // A failure mid-stream is not retried here: the client already resumes interrupted reads
        // (at the same generation), and the caller has consumed part of the blob.
        let context = format!("Cloud Storage ({}) reading gs://{}/{key}", self.endpoint, self.bucket_id());
        let stream = futures_util::stream::unfold(Some((response, context)), |state| async move {
            let (mut response, context) = state?;
            loop {
                return match response.next().await {
                    None => None,
                    Some(Ok(chunk)) if chunk.is_empty() => continue,
                    Some(Ok(chunk)) => Some((Ok(chunk), Some((response, context)))),
                    Some(Err(e)) => Some((Err(BlobError::Unavailable(format!("{context}: {e}"))), None)),
                };
            }
        });
        Ok(Box::pin(stream))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        let mut found = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .api
                .call(|| {
                    let list = self
                        .control
                        .list_objects()
                        .set_parent(&self.bucket)
                        .set_prefix(prefix)
                        .set_page_size(PAGE_SIZE)
                        .set_page_token(page_token.clone())
                        .send();
                    async move { list.await.map_err(GcsError::Api) }
                })
                .await
                .map_err(|e| self.error("list", &format!("{prefix}*"), e))?;
            for object in page.objects {
                // Objects written by something else under a name that is not a key are not blobs.
                match BlobKey::parse(&object.name) {
                    Ok(key) => found.push(BlobMeta { key, size: u64::try_from(object.size).unwrap_or_default() }),
                    Err(e) => {
                        tracing::debug!(object = %object.name, error = %e, "skipping an object that is not a blob key")
                    }
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &BlobKey) -> Result<bool, BlobError> {
        let deleted = self
            .api
            .call(|| {
                let delete = self.control.delete_object().set_bucket(&self.bucket).set_object(key.as_str()).send();
                async move { delete.await.map_err(GcsError::Api) }
            })
            .await;
        match deleted {
            Ok(()) => Ok(true),
            Err(CallError::Failed(e)) if e.is_not_found() => Ok(false),
            Err(e) => Err(self.error("delete", key.as_str(), e)),
        }
    }
}

/// `DEVGEM_BUCKET`, checked: a bucket name is lowercase letters, digits, `-`, `_` and `.`, so it
/// cannot change the shape of a request path.
fn bucket_name(bucket: Option<&str>) -> Result<&str, BlobError> {
    let bucket = bucket.map(str::trim).filter(|b| !b.is_empty()).ok_or_else(|| {
        BlobError::Unavailable("DEVGEM_BUCKET is not set; set it to the Cloud Storage bucket for DevGem's blobs".into())
    })?;
    let valid = (3..=222).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(BlobError::Unavailable(format!(
            "DEVGEM_BUCKET={bucket:?} is not a bucket name (3 to 222 of a-z, 0-9, '-', '_', '.')"
        )));
    }
    Ok(bucket)
}

/// STORAGE_EMULATOR_HOST is `host:port` or a URL; the client wants a URL.
fn emulator_endpoint(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.starts_with("http://") || host.starts_with("https://") { host.to_owned() } else { format!("http://{host}") }
}

/// A body held in memory, of known size: uploaded in one request.
struct ChunksSource {
    chunks: VecDeque<Bytes>,
    size: u64,
}

impl ChunksSource {
    fn new(chunks: Vec<Bytes>) -> Self {
        Self { size: chunks.iter().map(|c| c.len() as u64).sum(), chunks: chunks.into() }
    }
}

impl StreamingSource for ChunksSource {
    type Error = BodyError;

    async fn next(&mut self) -> Option<Result<Bytes, Self::Error>> {
        self.chunks.pop_front().map(Ok)
    }

    async fn size_hint(&self) -> Result<SizeHint, Self::Error> {
        Ok(SizeHint::with_exact(self.size))
    }
}

/// The caller's body as the client's upload source: the chunks read ahead to decide how to
/// upload, then the rest of the stream.
struct BodySource {
    head: VecDeque<Bytes>,
    /// A mutex only to make the source `Sync`, as the client requires; never contended.
    rest: Mutex<ByteStream>,
    buffered: u64,
    /// The body's own error, handed back to the caller of `put` instead of the client's wrapper.
    failure: Arc<Mutex<Option<BlobError>>>,
    /// Set once the body failed: every later read fails too, so that nothing (a retry inside the
    /// client, say) can take the end of a failed stream for the end of the blob and finalise it.
    failed: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(String);

impl StreamingSource for BodySource {
    type Error = BodyError;

    async fn next(&mut self) -> Option<Result<Bytes, Self::Error>> {
        if let Some(message) = &self.failed {
            return Some(Err(BodyError(message.clone())));
        }
        if let Some(chunk) = self.head.pop_front() {
            return Some(Ok(chunk));
        }
        let rest = self.rest.get_mut().unwrap_or_else(PoisonError::into_inner);
        match rest.next().await? {
            Ok(chunk) => Some(Ok(chunk)),
            Err(error) => {
                let message = error.to_string();
                self.failed = Some(message.clone());
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                Some(Err(BodyError(message)))
            }
        }
    }

    async fn size_hint(&self) -> Result<SizeHint, Self::Error> {
        // At least what was read ahead; the total is unknown, which makes the upload resumable.
        let mut hint = SizeHint::new();
        hint.set_lower(self.buffered);
        Ok(hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcp::emulators::free_port;
    use devgem_common::ports::blobs::BlobsExt;

    fn config(bucket: Option<&str>, emulator: Option<String>) -> GcpConfig {
        GcpConfig {
            project: "devgem-test".into(),
            bucket: bucket.map(str::to_owned),
            storage_emulator: emulator,
            ..GcpConfig::default()
        }
    }

    #[tokio::test]
    async fn a_missing_or_bad_bucket_is_named() {
        let error = GcsBlobs::connect(&config(None, Some("127.0.0.1:1".into()))).await.expect_err("no bucket");
        assert!(error.to_string().contains("DEVGEM_BUCKET is not set"), "{error}");
        let error = GcsBlobs::connect(&config(Some("a/b"), Some("127.0.0.1:1".into()))).await.expect_err("bad bucket");
        assert!(error.to_string().contains("is not a bucket name"), "{error}");
    }

    #[test]
    fn the_emulator_host_becomes_a_url() {
        assert_eq!(emulator_endpoint("localhost:9023"), "http://localhost:9023");
        assert_eq!(emulator_endpoint("http://127.0.0.1:9023/"), "http://127.0.0.1:9023");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_ends_in_a_clear_unavailable_error_after_retries() {
        // A port nobody listens on: connections are refused at once.
        let port = free_port().expect("free port");
        // Three attempts per call, and the breaker opens after three failures in a row: so the
        // breaker is open after the first call only if that call was tried three times.
        let api = Api::with_policies(
            API,
            BreakerPolicy { failures: 3, cool_down: Duration::from_secs(30) },
            RetryPolicy { attempts: 3, first_delay: Duration::from_millis(5), max_delay: Duration::from_millis(10) },
        );
        let blobs = GcsBlobs::connect_with(&config(Some("devgem-test"), Some(format!("127.0.0.1:{port}"))), api)
            .await
            .expect("connect makes no request");
        let key = BlobKey::parse("builds/d1/log.txt").expect("key");
        let started = std::time::Instant::now();

        let error = blobs.get(&key).await.err().expect("get fails");
        let message = error.to_string();
        assert!(matches!(error, BlobError::Unavailable(_)), "{message}");
        assert!(
            message
                .contains(&format!("Cloud Storage (http://127.0.0.1:{port}) get gs://devgem-test/builds/d1/log.txt")),
            "{message}"
        );
        assert!(message.contains("cannot connect"), "{message}");

        for error in [
            blobs.put_bytes(&key, Bytes::from_static(b"x")).await.expect_err("put fails"),
            blobs.list("builds/").await.expect_err("list fails"),
            blobs.delete(&key).await.expect_err("delete fails"),
        ] {
            let message = error.to_string();
            assert!(matches!(error, BlobError::Unavailable(_)), "{message}");
            assert!(message.contains("Cloud Storage is failing repeatedly"), "the breaker opened: {message}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "short retries, no client-side retry loop");
    }

    #[test]
    fn errors_are_classified_for_the_breaker() {
        use google_cloud_gax::error::rpc::Status;
        let service = |code| GcsError::Api(google_cloud_storage::Error::service(Status::default().set_code(code)));
        assert_eq!(service(Code::ResourceExhausted).failure(), Failure::SlowDown);
        assert_eq!(service(Code::Unavailable).failure(), Failure::Down);
        assert_eq!(service(Code::DeadlineExceeded).failure(), Failure::Down);
        assert_eq!(service(Code::PermissionDenied).failure(), Failure::Refused);
        assert!(service(Code::NotFound).is_not_found());
        let http = |code| {
            GcsError::Api(google_cloud_storage::Error::http(code, http::HeaderMap::new(), Bytes::from_static(b"{}")))
        };
        assert_eq!(http(429).failure(), Failure::SlowDown);
        assert_eq!(http(503).failure(), Failure::Down);
        assert_eq!(http(403).failure(), Failure::Refused);
        assert!(http(404).is_not_found());
        let io = GcsError::Api(google_cloud_storage::Error::io(std::io::Error::other("reset")));
        assert_eq!(io.failure(), Failure::Down);
        assert_eq!(GcsError::Body("x".into()).failure(), Failure::Refused);
    }
}
