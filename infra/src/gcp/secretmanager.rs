//! The Secrets port on Google Secret Manager: one Secret Manager secret per DevGem secret name,
//! one secret version per [`Secrets::put`], and [`SecretRef::version`] is the version's number.
//!
//! This module owns:
//! - [`SecretManagerSecrets`]: the official client (`google-cloud-secretmanager-v1`, REST) behind
//!   [`Api`] (retries with backoff, one circuit breaker named "Secret Manager"); the client's own
//!   retry loop is off so the breaker sees every attempt.
//! - [`secret_id`]: how a DevGem secret name becomes a Secret Manager secret id.
//! - [`crc32c`]: the checksum Secret Manager keeps with every payload.
//!
//! What each call does:
//! - `put`: `AddSecretVersion` with the payload and its CRC-32C (`data_crc32c`, which the service
//!   checks). When the secret does not exist yet (404), `CreateSecret` (automatic replication,
//!   label `managed-by=devgem`) and the version again; a 409 from the create means someone else
//!   created it in between, which is as good. Adding first saves a request on every put but the
//!   first.
//! - `access`: `AccessSecretVersion` of `projects/P/secrets/ID/versions/N`; the payload's CRC-32C
//!   is verified when the answer carries one (a mismatch is retried as a damaged transfer). A
//!   disabled or destroyed version is refused with a message that says so.
//! - `latest`: `ListSecretVersions` filtered on `state:ENABLED`, every page, the highest number:
//!   a disabled or destroyed version is never "the latest", and the order of the listing does not
//!   matter. `None` when the secret does not exist or has no enabled version.
//!
//! A retried `AddSecretVersion` could add the value twice: an attempt that timed out, lost its
//! connection or got 504/500 may have been applied. 429 and 503 were refused before anything was
//! written and are simply retried. After an attempt whose outcome is unknown, the next attempt
//! first reads the newest enabled version and, if it holds exactly these bytes, returns it instead
//! of adding another. So a retry never leaves a duplicate; the cost is that a put whose unknown
//! attempt had *not* applied, of the value the secret already holds, returns that existing version,
//! which references the same value.
//!
//! Values never leave through logs, errors or `Debug`: errors carry the service's message (which
//! never quotes a payload) or our own; a response that cannot be decoded is reported without the
//! decoder's text (which can quote what it read). The client library's own request logging
//! (`GOOGLE_CLOUD_RUST_LOGGING=true`) prints request and response bodies, payloads included, so
//! [`SecretManagerSecrets::connect`] refuses to start with it.

use crate::gcp::GcpConfig;
use crate::gcp::call::{Api, CallError};
use crate::gcp::client::{classify, configure, setup_error};
use crate::resilience::{Classify, Failure};
use async_trait::async_trait;
use devgem_common::ports::secrets::{SecretRef, SecretValue, Secrets, SecretsError};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{
    AccessSecretVersionResponse, Replication, Secret, SecretPayload, SecretVersion, replication,
};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The API's name in breaker messages and errors.
pub const API: &str = "Secret Manager";
/// Secret Manager refuses payloads over 64 KiB; checked before sending.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The label every secret DevGem creates carries, so they can be told from others in the project.
pub const MANAGED_BY: (&str, &str) = ("managed-by", "devgem");
/// The environment variable that makes the client library log whole requests and responses.
pub const LIBRARY_LOGGING_VAR: &str = "GOOGLE_CLOUD_RUST_LOGGING";
/// Versions per `ListSecretVersions` page.
const PAGE_SIZE: i32 = 1000;
/// One attempt of any call gives up after this long (and counts as a failure of the API).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Secret ids: 1 to 255 of these.
const MAX_ID: usize = 255;
/// Hex digits of the SHA-256 that end the id of a name longer than [`MAX_ID`].
const HASH_HEX: usize = 16;

/// The Secret Manager secret id of the DevGem secret `name`, deterministically:
/// - a name that is already an id (1 to 255 of `A-Z a-z 0-9 - _`) is used as it is. The names
///   DevGem makes (`{owner}--{service}--{VAR}`) are, so the console shows DevGem's own name, and
///   a runtime given a [`SecretRef`] can use its `name` as the id;
/// - a longer name of those characters becomes its first 238 characters, `-`, and the first 16
///   hex digits of its SHA-256 (255 in all): still one id per name;
/// - any other character is refused, as the embedded adapter refuses it: mapping it (say `.` to
///   `_`) would let two names share one secret.
pub fn secret_id(name: &str) -> Result<String, SecretsError> {
    let alphabet = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || !alphabet {
        return Err(SecretsError::Invalid(format!("{name:?}: use 1-255 of A-Z, a-z, 0-9, '-', '_'")));
    }
    if name.len() <= MAX_ID {
        return Ok(name.to_owned());
    }
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    // The alphabet is ASCII, so any byte index is a character boundary.
    Ok(format!("{}-{}", &name[..MAX_ID - HASH_HEX - 1], &hex[..HASH_HEX]))
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of `data_crc32c`.
/// The crate that computes it is not one of ours, and a table is 20 lines.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Whether the client library would log request and response bodies (see the module docs).
pub fn library_logs_bodies(value: Option<&str>) -> bool {
    value == Some("true")
}

/// The version number at the end of a version's resource name
/// (`projects/P/secrets/ID/versions/N`; the service answers with the project's number, not its
/// id, so only the tail is read).
pub fn version_number(resource: &str) -> Option<u32> {
    let (secret, number) = resource.rsplit_once("/versions/")?;
    if !secret.contains("/secrets/") || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// A failed Secret Manager request, classified for [`Api`]. Never holds a payload.
#[derive(Debug, thiserror::Error)]
pub enum SecretManagerError {
    #[error("{0}")]
    Api(#[source] google_cloud_gax::error::Error),
    /// The answer could not be decoded; the decoder's text is left out, as it can quote the
    /// payload.
    #[error("Secret Manager's answer could not be decoded")]
    Undecodable,
    /// The payload read does not match the checksum it came with: damaged on the way.
    #[error("the payload of {0} does not match its CRC-32C checksum")]
    Checksum(String),
    /// The service named a version in a form this adapter does not read.
    #[error("Secret Manager answered with a version named {0:?}, which has no version number")]
    VersionName(String),
}

impl SecretManagerError {
    fn api(error: google_cloud_gax::error::Error) -> Self {
        if error.is_deserialization() { Self::Undecodable } else { Self::Api(error) }
    }

    fn code(&self) -> Option<Code> {
        match self {
            Self::Api(e) => e.status().map(|s| s.code),
            _ => None,
        }
    }

    fn http_status(&self) -> Option<u16> {
        match self {
            Self::Api(e) => e.http_status_code(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound) || self.http_status() == Some(404)
    }

    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists) || self.http_status() == Some(409)
    }

    /// Refused because of the version's state (disabled or destroyed).
    fn is_failed_precondition(&self) -> bool {
        self.code() == Some(Code::FailedPrecondition)
    }

    fn is_invalid_argument(&self) -> bool {
        self.code() == Some(Code::InvalidArgument)
    }

    /// Whether a write that failed this way may have been applied all the same.
    fn outcome_unknown(&self) -> bool {
        match self {
            Self::Api(e) => match e.http_status_code() {
                // Answered: 429 and 503 refuse before writing; 504 and 500 may come after.
                Some(code) => matches!(code, 500 | 504),
                // Unanswered: unknown, unless the request never left (no connection, no token).
                None => !(e.is_connect() || e.is_transient_and_before_rpc() || e.is_binding() || e.is_serialization()),
            },
            Self::Undecodable | Self::VersionName(_) => true,
            Self::Checksum(_) => false,
        }
    }
}

impl Classify for SecretManagerError {
    fn failure(&self) -> Failure {
        match self {
            Self::Api(e) => classify(e),
            // Damaged in transit: another read may well arrive intact.
            Self::Checksum(_) => Failure::Down,
            Self::Undecodable | Self::VersionName(_) => Failure::Refused,
        }
    }
}

/// The Secrets port on Secret Manager, in the project of [`GcpConfig::project`].
#[derive(Debug)]
pub struct SecretManagerSecrets {
    client: SecretManagerService,
    /// `projects/P`.
    parent: String,
    /// Where requests go, for error messages.
    endpoint: String,
    api: Api,
}

impl SecretManagerSecrets {
    /// Connects to Secret Manager, or to the stand-in at `config.endpoints.secret_manager` (with
    /// anonymous credentials) when set. No request is sent yet.
    pub async fn connect(config: &GcpConfig) -> Result<Self, SecretsError> {
        Self::connect_with(config, Api::new(API)).await
    }

    /// [`connect`](Self::connect) with the caller's retry and breaker policies (tests keep the
    /// delays short).
    pub async fn connect_with(config: &GcpConfig, api: Api) -> Result<Self, SecretsError> {
        if library_logs_bodies(std::env::var(LIBRARY_LOGGING_VAR).ok().as_deref()) {
            return Err(SecretsError::Unavailable(format!(
                "{LIBRARY_LOGGING_VAR}=true makes the Google client library log request and response \
                 bodies, which for Secret Manager are secret values; unset it to use Secret Manager"
            )));
        }
        if config.project.is_empty() {
            return Err(SecretsError::Unavailable(
                "GOOGLE_CLOUD_PROJECT is not set; Secret Manager needs the project that holds the secrets".into(),
            ));
        }
        let endpoint = config.endpoints.secret_manager.clone();
        let custom = endpoint.as_deref();
        let client = configure(SecretManagerService::builder(), custom)
            .build()
            .await
            .map_err(|e| SecretsError::Unavailable(setup_error(API, "DEVGEM_SECRET_MANAGER_ENDPOINT", custom, &e)))?;
        Ok(Self {
            client,
            parent: format!("projects/{}", config.project),
            endpoint: endpoint.unwrap_or_else(|| "https://secretmanager.googleapis.com".to_owned()),
            api,
        })
    }

    fn secret_path(&self, id: &str) -> String {
        format!("{}/secrets/{id}", self.parent)
    }

    /// The error a caller reads: what was done to which secret, where, and why. A failure that
    /// was retried says so.
    fn error(&self, operation: &str, subject: &str, error: CallError<SecretManagerError>) -> SecretsError {
        let gave_up = match &error {
            CallError::Failed(e) if e.failure() != Failure::Refused => " (gave up after retrying)",
            _ => "",
        };
        let message = format!("{API} ({}) {operation} {subject}: {}{gave_up}", self.endpoint, error.message());
        match error {
            CallError::Failed(e) if e.is_invalid_argument() => SecretsError::Invalid(message),
            _ => SecretsError::Unavailable(message),
        }
    }

    /// `AddSecretVersion`, with the duplicate check of the module docs.
    async fn add_version(&self, id: &str, data: &bytes::Bytes) -> Result<u32, CallError<SecretManagerError>> {
        let parent = self.secret_path(id);
        let checksum = i64::from(crc32c(data));
        let uncertain = AtomicBool::new(false);
        self.api
            .call(|| {
                let (parent, uncertain) = (&parent, &uncertain);
                async move {
                    if uncertain.load(Ordering::SeqCst)
                        && let Some(version) = self.newest_if_equal(parent, data, checksum).await?
                    {
                        return Ok(version);
                    }
                    let payload = SecretPayload::new().set_data(data.clone()).set_data_crc32c(checksum);
                    let added = self
                        .client
                        .add_secret_version()
                        .set_parent(parent.as_str())
                        .set_payload(payload)
                        .with_attempt_timeout(ATTEMPT_TIMEOUT)
                        .send()
                        .await
                        .map_err(SecretManagerError::api);
                    match added {
                        Ok(version) => parsed_version(&version),
                        Err(error) => {
                            if error.outcome_unknown() {
                                uncertain.store(true, Ordering::SeqCst);
                            }
                            Err(error)
                        }
                    }
                }
            })
            .await
    }

    /// The newest enabled version of `parent` if its payload is exactly `data`.
    async fn newest_if_equal(
        &self,
        parent: &str,
        data: &[u8],
        checksum: i64,
    ) -> Result<Option<u32>, SecretManagerError> {
        let Some(newest) = self.newest_enabled(parent).await? else { return Ok(None) };
        let read = self.access_once(&format!("{parent}/versions/{newest}")).await;
        match read {
            Ok(answer) => {
                let same = answer.payload.is_some_and(|p| p.data.as_ref() == data && crc_matches(&p, checksum));
                Ok(same.then_some(newest))
            }
            // Disabled or removed meanwhile: not ours to reuse.
            Err(e) if e.is_not_found() || e.is_failed_precondition() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One `AccessSecretVersion`, checksum verified.
    async fn access_once(&self, name: &str) -> Result<AccessSecretVersionResponse, SecretManagerError> {
        let answer = self
            .client
            .access_secret_version()
            .set_name(name)
            .with_attempt_timeout(ATTEMPT_TIMEOUT)
            .send()
            .await
            .map_err(SecretManagerError::api)?;
        if let Some(payload) = &answer.payload
            && let Some(sent) = payload.data_crc32c
            && !crc_matches(payload, sent)
        {
            return Err(SecretManagerError::Checksum(name.to_owned()));
        }
        Ok(answer)
    }

    /// The highest number among the enabled versions of `parent` (every page), or `None`.
    async fn newest_enabled(&self, parent: &str) -> Result<Option<u32>, SecretManagerError> {
        let mut newest = None;
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .list_secret_versions()
                .set_parent(parent)
                .set_filter("state:ENABLED")
                .set_page_size(PAGE_SIZE)
                .set_page_token(page_token.clone())
                .with_attempt_timeout(ATTEMPT_TIMEOUT)
                .send()
                .await
                .map_err(SecretManagerError::api)?;
            for version in &page.versions {
                let number = version_number(&version.name)
                    .ok_or_else(|| SecretManagerError::VersionName(version.name.clone()))?;
                newest = newest.max(Some(number));
            }
            if page.next_page_token.is_empty() {
                return Ok(newest);
            }
            page_token = page.next_page_token;
        }
    }

    async fn create_secret(&self, id: &str) -> Result<(), CallError<SecretManagerError>> {
        let secret = Secret::new()
            .set_replication(Replication::new().set_automatic(replication::Automatic::new()))
            .set_labels([MANAGED_BY]);
        let created = self
            .api
            .call(|| {
                let create = self
                    .client
                    .create_secret()
                    .set_parent(self.parent.as_str())
                    .set_secret_id(id)
                    .set_secret(secret.clone())
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .send();
                async move { create.await.map_err(SecretManagerError::api) }
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Created by someone else (another put of the same name) meanwhile: it exists.
            Err(CallError::Failed(e)) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn crc_matches(payload: &SecretPayload, expected: i64) -> bool {
    i64::from(crc32c(&payload.data)) == expected
}

fn parsed_version(version: &SecretVersion) -> Result<u32, SecretManagerError> {
    version_number(&version.name).ok_or_else(|| SecretManagerError::VersionName(version.name.clone()))
}

#[async_trait]
impl Secrets for SecretManagerSecrets {
    async fn put(&self, name: &str, value: SecretValue) -> Result<SecretRef, SecretsError> {
        let id = secret_id(name)?;
        let data = bytes::Bytes::copy_from_slice(value.expose().as_bytes());
        if data.len() > MAX_PAYLOAD {
            return Err(SecretsError::Invalid(format!(
                "{name}: a value is at most 64 KiB in Secret Manager ({} bytes given)",
                data.len()
            )));
        }
        let version = match self.add_version(&id, &data).await {
            Ok(version) => version,
            Err(CallError::Failed(e)) if e.is_not_found() => {
                self.create_secret(&id).await.map_err(|e| self.error("creating secret", name, e))?;
                self.add_version(&id, &data).await.map_err(|e| self.error("adding a version to", name, e))?
            }
            Err(e) => return Err(self.error("adding a version to", name, e)),
        };
        Ok(SecretRef { name: name.to_owned(), version })
    }

    async fn access(&self, reference: &SecretRef) -> Result<SecretValue, SecretsError> {
        let id = secret_id(&reference.name)?;
        let subject = format!("{} version {}", reference.name, reference.version);
        let resource = format!("{}/versions/{}", self.secret_path(&id), reference.version);
        let answer = self.api.call(|| self.access_once(&resource)).await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(CallError::Failed(e)) if e.is_not_found() => return Err(SecretsError::NotFound(subject)),
            Err(CallError::Failed(e)) if e.is_failed_precondition() => {
                let why = match &e {
                    SecretManagerError::Api(api) => api.status().map(|s| s.message.clone()).unwrap_or_default(),
                    _ => String::new(),
                };
                return Err(SecretsError::Invalid(format!(
                    "{subject} cannot be read: it is disabled or destroyed in {API} ({why}); enable it, \
                     or set the variable again to store a new version"
                )));
            }
            Err(e) => return Err(self.error("reading", &subject, e)),
        };
        let data = answer.payload.map(|p| p.data).unwrap_or_default();
        String::from_utf8(data.to_vec())
            .map(SecretValue::new)
            .map_err(|_| SecretsError::Unavailable(format!("{subject} is not text")))
    }

    async fn latest(&self, name: &str) -> Result<Option<SecretRef>, SecretsError> {
        let id = secret_id(name)?;
        let parent = self.secret_path(&id);
        match self.api.call(|| self.newest_enabled(&parent)).await {
            Ok(newest) => Ok(newest.map(|version| SecretRef { name: name.to_owned(), version })),
            Err(CallError::Failed(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.error("listing the versions of", name, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcp::config::Endpoints;
    use crate::gcp::emulators::secretmanager::{SecretManagerStandIn, VersionState};
    use crate::resilience::{BreakerPolicy, RetryPolicy};
    use base64::Engine as _;
    use http::StatusCode;

    const PROJECT: &str = "demo";
    const NAME: &str = "admin--web--DB_PASSWORD";

    /// Short delays; a breaker cool-down shorter than the first retry delay, so that a 429
    /// (which opens the breaker at once) is followed by a probe rather than a refusal.
    fn quick_api() -> Api {
        Api::with_policies(
            API,
            BreakerPolicy { failures: 5, cool_down: Duration::from_millis(20) },
            RetryPolicy { attempts: 5, first_delay: Duration::from_millis(60), max_delay: Duration::from_millis(200) },
        )
    }

    async fn connect(standin: &SecretManagerStandIn, api: Api) -> SecretManagerSecrets {
        let config = GcpConfig {
            project: PROJECT.into(),
            endpoints: Endpoints { secret_manager: Some(standin.endpoint()), ..Endpoints::default() },
            ..GcpConfig::default()
        };
        SecretManagerSecrets::connect_with(&config, api).await.expect("client")
    }

    async fn start() -> (SecretManagerStandIn, SecretManagerSecrets) {
        let standin = SecretManagerStandIn::start().await.expect("stand-in");
        let secrets = connect(&standin, quick_api()).await;
        (standin, secrets)
    }

    fn methods(standin: &SecretManagerStandIn) -> Vec<String> {
        standin.requests().all().into_iter().map(|r| r.method).collect()
    }

    /// The payload bytes and checksum an `AddSecretVersion` carried.
    fn sent_payload(body: &serde_json::Value) -> (Vec<u8>, i64) {
        let data = body["payload"]["data"].as_str().expect("data is sent as base64");
        let data = base64::engine::general_purpose::STANDARD.decode(data).expect("base64");
        let checksum = &body["payload"]["dataCrc32c"];
        let checksum = checksum.as_i64().or_else(|| checksum.as_str().and_then(|s| s.parse().ok()));
        (data, checksum.expect("dataCrc32c is sent"))
    }

    #[test]
    fn crc32c_gives_the_standard_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283, "the CRC-32C check value");
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA, "RFC 3720 B.4, 32 zero bytes");
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43, "RFC 3720 B.4, 32 0xFF bytes");
    }

    #[test]
    fn secret_ids_are_the_names_or_a_hash_of_long_ones() {
        assert_eq!(secret_id(NAME).expect("id"), NAME, "DevGem's names are ids as they are");
        let long_a = format!("{}A", "x".repeat(300));
        let long_b = format!("{}B", "x".repeat(300));
        let (a, b) = (secret_id(&long_a).expect("a"), secret_id(&long_b).expect("b"));
        assert_eq!((a.len(), b.len()), (255, 255));
        assert_ne!(a, b, "names that share a long prefix keep distinct ids");
        assert_eq!(secret_id(&long_a).expect("again"), a, "deterministic");
        assert!(a.starts_with(&"x".repeat(238)) && a.as_bytes()[238] == b'-', "{a}");
        assert_eq!(secret_id(&"y".repeat(255)).expect("255"), "y".repeat(255), "255 is still an id");
        for bad in ["", "a.b", "a/b", "a b", "ä"] {
            assert!(matches!(secret_id(bad), Err(SecretsError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn version_numbers_are_read_from_resource_names() {
        assert_eq!(version_number("projects/123/secrets/s/versions/7"), Some(7));
        assert_eq!(version_number("projects/p/locations/l/secrets/s/versions/42"), Some(42));
        for odd in [
            "projects/p/secrets/s/versions/latest",
            "projects/p/secrets/s",
            "versions/3",
            "projects/p/secrets/s/versions/",
        ] {
            assert_eq!(version_number(odd), None, "{odd}");
        }
    }

    #[test]
    fn a_write_whose_answer_was_lost_may_have_been_applied() {
        use google_cloud_gax::error::Error;
        let lost = SecretManagerError::Api(Error::http(504, http::HeaderMap::new(), bytes::Bytes::new()));
        let refused = SecretManagerError::Api(Error::http(503, http::HeaderMap::new(), bytes::Bytes::new()));
        assert!(lost.outcome_unknown() && !refused.outcome_unknown(), "a 503 was refused before any write");
        assert!(SecretManagerError::Api(Error::timeout("late")).outcome_unknown());
    }

    #[test]
    fn the_library_logging_switch_is_recognised() {
        assert!(library_logs_bodies(Some("true")));
        assert!(!library_logs_bodies(Some("false")) && !library_logs_bodies(None));
    }

    #[tokio::test]
    async fn a_put_creates_the_secret_then_adds_versions_as_the_api_expects() {
        let (standin, secrets) = start().await;
        let first = secrets.put(NAME, SecretValue::new("hunter2")).await.expect("put");
        assert_eq!(first, SecretRef { name: NAME.into(), version: 1 });
        assert_eq!(
            methods(&standin),
            ["AddSecretVersion", "CreateSecret", "AddSecretVersion"],
            "add, 404, create, add"
        );

        let create = &standin.requests().of("CreateSecret")[0];
        assert_eq!(create.path, "/v1/projects/demo/secrets");
        assert_eq!(create.query.get("secretId").map(String::as_str), Some(NAME));
        assert_eq!(create.body["replication"], serde_json::json!({"automatic": {}}), "{}", create.body);
        assert_eq!(create.body["labels"], serde_json::json!({"managed-by": "devgem"}));
        assert_eq!(
            standin.labels(PROJECT, NAME).expect("created").get("managed-by").map(String::as_str),
            Some("devgem")
        );

        let adds = standin.requests().of("AddSecretVersion");
        assert_eq!(adds[1].path, format!("/v1/projects/demo/secrets/{NAME}:addVersion"));
        let (data, checksum) = sent_payload(&adds[1].body);
        assert_eq!(data, b"hunter2");
        assert_eq!(checksum, i64::from(crc32c(b"hunter2")));

        // The secret exists now: one request per put.
        let second = secrets.put(NAME, SecretValue::new("correct horse")).await.expect("put");
        assert_eq!(second.version, 2);
        assert_eq!(methods(&standin).len(), 4);
        assert_eq!(standin.versions(PROJECT, NAME).map(|v| v.len()), Some(2));

        assert_eq!(secrets.access(&first).await.expect("v1").expose(), "hunter2");
        assert_eq!(secrets.access(&second).await.expect("v2").expose(), "correct horse");
        let access = standin.requests().of("AccessSecretVersion");
        assert_eq!(access[0].path, format!("/v1/projects/demo/secrets/{NAME}/versions/1:access"));
        assert_eq!(secrets.latest(NAME).await.expect("latest"), Some(second));
        let list = standin.requests().of("ListSecretVersions");
        assert_eq!(list[0].query.get("filter").map(String::as_str), Some("state:ENABLED"));
    }

    #[tokio::test]
    async fn versions_added_outside_are_the_latest_unless_disabled() {
        let (standin, secrets) = start().await;
        secrets.put(NAME, SecretValue::new("one")).await.expect("put");
        let outside = standin.add_version_outside(PROJECT, NAME, b"rotated by hand").expect("gcloud");
        assert_eq!(outside, 2);
        let latest = secrets.latest(NAME).await.expect("latest").expect("exists");
        assert_eq!(latest.version, 2);
        assert_eq!(secrets.access(&latest).await.expect("read").expose(), "rotated by hand");

        standin.set_state(PROJECT, NAME, 2, VersionState::Disabled).expect("disable");
        assert_eq!(secrets.latest(NAME).await.expect("latest").map(|r| r.version), Some(1), "enabled ones only");
        let error = secrets.access(&latest).await.expect_err("disabled");
        assert!(matches!(error, SecretsError::Invalid(_)), "{error}");
        assert!(
            error.to_string().contains("disabled or destroyed") && error.to_string().contains("DISABLED"),
            "{error}"
        );
        standin.set_state(PROJECT, NAME, 2, VersionState::Destroyed).expect("destroy");
        let error = secrets.access(&latest).await.expect_err("destroyed");
        assert!(error.to_string().contains("DESTROYED"), "{error}");

        // Paged listings: the highest enabled number wins, whatever page it is on.
        for n in 0..4 {
            standin.add_version_outside(PROJECT, NAME, format!("v{n}").as_bytes()).expect("add");
        }
        standin.set_state(PROJECT, NAME, 6, VersionState::Disabled).expect("disable the newest");
        standin.cap_page_size(2);
        let before = standin.requests().of("ListSecretVersions").len();
        assert_eq!(secrets.latest(NAME).await.expect("latest").map(|r| r.version), Some(5));
        // Enabled: 5, 4, 3, 1 -> two pages of two.
        assert_eq!(standin.requests().of("ListSecretVersions").len() - before, 2);
    }

    #[tokio::test]
    async fn unknown_secrets_and_versions_are_not_found() {
        let (standin, secrets) = start().await;
        assert_eq!(secrets.latest("nothing").await.expect("latest"), None);
        let missing = SecretRef { name: "nothing".into(), version: 1 };
        assert!(matches!(secrets.access(&missing).await, Err(SecretsError::NotFound(_))));
        standin.create_secret_outside(PROJECT, "empty").expect("create");
        assert_eq!(secrets.latest("empty").await.expect("latest"), None, "no enabled version");
        secrets.put(NAME, SecretValue::new("x")).await.expect("put");
        let error = secrets.access(&SecretRef { name: NAME.into(), version: 9 }).await.expect_err("no v9");
        assert!(matches!(error, SecretsError::NotFound(ref m) if m.contains("version 9")), "{error}");
        assert_eq!(standin.requests().of("AccessSecretVersion").len(), 2, "a 404 is not retried");

        let sent = standin.requests().all().len();
        assert!(matches!(secrets.put("bad name", SecretValue::new("x")).await, Err(SecretsError::Invalid(_))));
        let big = SecretValue::new("x".repeat(MAX_PAYLOAD + 1));
        let error = secrets.put(NAME, big).await.expect_err("too big");
        assert!(error.to_string().contains("64 KiB"), "{error}");
        assert_eq!(standin.requests().all().len(), sent, "refused before sending");
    }

    #[tokio::test]
    async fn a_secret_created_meanwhile_is_a_409_that_is_fine() {
        let (standin, secrets) = start().await;
        // Another put creates the secret between our 404 and our create.
        standin.create_secret_outside(PROJECT, NAME).expect("create");
        standin.faults().fail_next("AddSecretVersion", StatusCode::NOT_FOUND, 1);
        let reference = secrets.put(NAME, SecretValue::new("v")).await.expect("put");
        assert_eq!(reference.version, 1);
        assert_eq!(methods(&standin), ["AddSecretVersion", "CreateSecret", "AddSecretVersion"]);
        assert_eq!(standin.versions(PROJECT, NAME), Some(vec![VersionState::Enabled]));
    }

    #[tokio::test]
    async fn slow_down_and_unavailable_are_retried_without_adding_twice() {
        let (standin, secrets) = start().await;
        secrets.put(NAME, SecretValue::new("first")).await.expect("put");
        standin.faults().fail_next("AddSecretVersion", StatusCode::TOO_MANY_REQUESTS, 1);
        standin.faults().fail_next("AddSecretVersion", StatusCode::SERVICE_UNAVAILABLE, 1);
        let before = standin.requests().of("AddSecretVersion").len();
        let reference = secrets.put(NAME, SecretValue::new("second")).await.expect("retried");
        assert_eq!(reference.version, 2);
        assert_eq!(standin.requests().of("AddSecretVersion").len() - before, 3, "429, 503, then written");
        assert_eq!(standin.versions(PROJECT, NAME).map(|v| v.len()), Some(2), "written once");

        // A response lost after the write: the retry finds the version instead of adding one.
        standin.lose_next_add_responses(1);
        let reference = secrets.put(NAME, SecretValue::new("third")).await.expect("put");
        assert_eq!(reference.version, 3);
        assert_eq!(standin.versions(PROJECT, NAME).map(|v| v.len()), Some(3), "no duplicate version");
        let tail: Vec<String> = methods(&standin).into_iter().rev().take(3).collect();
        assert_eq!(tail, ["AccessSecretVersion", "ListSecretVersions", "AddSecretVersion"], "the check, newest last");

        // Reads: a damaged payload is read again.
        standin.corrupt_next_reads(1);
        assert_eq!(secrets.access(&reference).await.expect("second read").expose(), "third");
    }

    #[tokio::test]
    async fn an_outage_gives_up_naming_secret_manager_and_then_fails_fast() {
        let standin = SecretManagerStandIn::start().await.expect("stand-in");
        let api = Api::with_policies(
            API,
            BreakerPolicy { failures: 3, cool_down: Duration::from_secs(60) },
            RetryPolicy { attempts: 3, first_delay: Duration::from_millis(10), max_delay: Duration::from_millis(20) },
        );
        let secrets = connect(&standin, api).await;
        let secret_value = "sk_live_never_shown";
        let reference = secrets.put(NAME, SecretValue::new(secret_value)).await.expect("put");
        standin.faults().fail_next("AccessSecretVersion", StatusCode::SERVICE_UNAVAILABLE, 100);
        let error = secrets.access(&reference).await.expect_err("down");
        let text = error.to_string();
        assert!(matches!(error, SecretsError::Unavailable(_)), "{text}");
        assert!(text.contains("Secret Manager") && text.contains("gave up after retrying"), "{text}");
        assert_eq!(standin.requests().of("AccessSecretVersion").len(), 3, "three attempts");

        let error = secrets.put(NAME, SecretValue::new(secret_value)).await.expect_err("breaker open");
        assert!(error.to_string().contains("Secret Manager is failing repeatedly"), "{error}");
        assert_eq!(standin.requests().all().len(), 6, "an open breaker sends nothing: add, create, add, 3 reads");

        for shown in [format!("{error:?}"), error.to_string(), text, format!("{secrets:?}")] {
            assert!(!shown.contains(secret_value), "a value never shows: {shown}");
        }
    }

    #[tokio::test]
    async fn a_payload_that_stays_damaged_is_an_error_without_the_value() {
        let (standin, secrets) = start().await;
        let reference = secrets.put(NAME, SecretValue::new("pa55word")).await.expect("put");
        standin.corrupt_next_reads(100);
        let error = secrets.access(&reference).await.expect_err("damaged");
        let text = format!("{error} {error:?}");
        assert!(text.contains("CRC-32C"), "{text}");
        assert!(!text.contains("pa55word"), "{text}");
        assert_eq!(standin.requests().of("AccessSecretVersion").len(), 5, "read again each attempt");
    }
}
