//! The check that a push request really comes from Pub/Sub: on GCP, every route under `/push/`
//! needs the OIDC token that Pub/Sub puts in `Authorization: Bearer <jwt>` (DESIGN.md, Identity).
//!
//! This module owns:
//! - [`PushAuthConfig`]: whether the check is on and what it expects, from `DEVGEM_PUSH_*`.
//! - [`PushVerifier`]: verifies one token: an RS256 signature by one of Google's keys (the JWKS
//!   at [`GOOGLE_JWKS_URL`], cached for the response's `max-age`, refetched at most every 30 s
//!   when a token names a key we do not know), issuer Google, audience this service, not
//!   expired, not issued in the future, a verified `email` and, if configured, the expected push
//!   service account.
//! - [`push_auth_layer`]: the axum layer that runs the check on `/push/` paths: no or a bad
//!   token is a 401, unreachable keys a 503 (so Pub/Sub redelivers later); other paths pass.
//!
//! Why not `google-cloud-auth`'s `idtoken::verifier`: it caches keys for a fixed hour (ignoring
//! `Cache-Control`), refetches on every unknown `kid` without a rate limit, fails concurrent
//! verifications while a fetch holds its cache lock (`try_write`), checks `email_verified` only
//! when an email is configured, has no retries, and its errors cannot tell an unknown key from
//! unreachable keys (which must be 401 and 503 here). This one is jsonwebtoken (which that
//! verifier uses too) and our own key cache, and fetches through [`Api`] like every GCP call.
//!
//! Tokens never appear in errors or logs: messages name what was wrong, not the token.

use crate::gcp::call::{Api, CallError};
use crate::gcp::config::ConfigError;
use crate::resilience::{BreakerPolicy, Classify, Failure, RetryPolicy};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use devgem_common::clock::{Clock, SystemClock};
use devgem_common::handler::ApiError;
use futures_util::future::BoxFuture;
use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

/// Where Google publishes the keys that sign its OIDC tokens.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers of Google's OIDC tokens (both spellings are in use).
const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// The routes this check guards.
const PUSH_PREFIX: &str = "/push/";
/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// How long keys are kept when the JWKS response has no usable `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Bounds on a `max-age`: a tiny one would fetch per request, a huge one would miss rotations.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// At most one refetch per this interval for tokens naming an unknown `kid`, so that a flood of
/// made-up key ids cannot turn into a flood of requests to Google.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// After a failed fetch, requests in this window answer 503 at once instead of each trying
/// again (the [`Api`] breaker only opens on outages, not on, say, a 404).
const FAILED_FETCH_PAUSE: Duration = Duration::from_secs(5);
/// When Google's keys cannot be fetched, expired keys are still trusted this long: Google
/// publishes each key long before and after it signs, so an hour-old set is still right, and an
/// outage of the JWKS endpoint should not stop every function.
const MAX_STALE: Duration = Duration::from_secs(6 * 3600);
/// A JWKS is a few KiB; more is not a key set.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Pub/Sub's tokens are about 1 KiB; a much longer header is not worth parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Whether push requests are verified, and against what. Read by [`PushAuthConfig::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAuthConfig {
    /// `DEVGEM_PUSH_AUDIENCE`: the `aud` every token must carry, the function's service URL (the
    /// push subscriptions must set their OIDC audience to it, not leave the per-route default).
    pub audience: String,
    /// `DEVGEM_PUSH_SERVICE_ACCOUNT`: the `email` every token must carry, if set.
    pub service_account: Option<String>,
    /// `DEVGEM_OIDC_JWKS_URL`: where the keys are fetched (tests), default [`GOOGLE_JWKS_URL`].
    pub jwks_url: String,
}

impl PushAuthConfig {
    /// A configuration for `audience` with Google's keys and any service account.
    pub fn new(audience: impl Into<String>) -> Self {
        Self { audience: audience.into(), service_account: None, jwks_url: GOOGLE_JWKS_URL.to_owned() }
    }

    /// Reads the configuration through `get` (the environment, or a map in tests). `None`: push
    /// auth is off (`DEVGEM_PUSH_AUDIENCE` is not set).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let non_empty = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let service_account = non_empty("DEVGEM_PUSH_SERVICE_ACCOUNT");
        let Some(audience) = non_empty("DEVGEM_PUSH_AUDIENCE") else {
            // Half a configuration would silently leave push requests unverified.
            if service_account.is_some() {
                return Err(ConfigError::Missing(
                    "DEVGEM_PUSH_AUDIENCE",
                    "DEVGEM_PUSH_SERVICE_ACCOUNT is set, so set the audience too (the function's service URL) \
                     or unset both",
                ));
            }
            return Ok(None);
        };
        if let Some(email) = &service_account
            && !email.contains('@')
        {
            return Err(ConfigError::Invalid {
                name: "DEVGEM_PUSH_SERVICE_ACCOUNT",
                value: email.clone(),
                reason: "a service account is an email, name@project.iam.gserviceaccount.com",
            });
        }
        let jwks_url = non_empty("DEVGEM_OIDC_JWKS_URL").unwrap_or_else(|| GOOGLE_JWKS_URL.to_owned());
        if !(jwks_url.starts_with("https://") || jwks_url.starts_with("http://")) {
            return Err(ConfigError::Invalid {
                name: "DEVGEM_OIDC_JWKS_URL",
                value: jwks_url,
                reason: "the key set is fetched over HTTP(S): give an http:// or https:// URL",
            });
        }
        Ok(Some(Self { audience, service_account, jwks_url }))
    }
}

/// Why a push request was refused. Messages say what was wrong and never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushAuthError {
    #[error("missing token: push requests need an `Authorization: Bearer` OIDC token from Pub/Sub")]
    MissingToken,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported token: signed with {0}, not RS256")]
    UnsupportedAlgorithm(String),
    #[error("unknown key: the token is signed by a key that is not in Google's key set")]
    UnknownKey,
    #[error("bad signature: the token's signature does not verify with Google's key")]
    BadSignature,
    #[error("wrong issuer: the token is not issued by accounts.google.com")]
    WrongIssuer,
    #[error("wrong audience: the token is for another service (check the subscription's OIDC audience)")]
    WrongAudience,
    #[error("expired: the token's exp is in the past")]
    Expired,
    #[error("not yet valid: the token's iat is in the future")]
    IssuedInFuture,
    #[error("unverified email: the token's email_verified is not true")]
    EmailNotVerified,
    #[error("wrong service account: the token is not from the push service account this function expects")]
    WrongServiceAccount,
    #[error("JWKS unreachable: Google's signing keys cannot be fetched: {0}")]
    JwksUnavailable(String),
}

impl PushAuthError {
    /// 401 for every refusal; 503 when the keys are unreachable, so that Pub/Sub redelivers.
    pub fn status(&self) -> StatusCode {
        match self {
            PushAuthError::JwksUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for PushAuthError {
    fn into_response(self) -> Response {
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(&self.to_string()).into_response(),
            status => ApiError::new(status, "unauthenticated", self.to_string()).into_response(),
        }
    }
}

/// Who sent a verified push request; added to the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCaller {
    /// The token's `email`: the push subscription's service account.
    pub email: Option<String>,
}

/// How fetching Google's key set failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent no usable key set: {reason}")]
    Invalid { url: String, reason: String },
}

impl Classify for JwksError {
    fn failure(&self) -> Failure {
        match self {
            JwksError::Unreachable { .. } => Failure::Down,
            JwksError::Status { status: 429, .. } => Failure::SlowDown,
            JwksError::Status { status, .. } if *status >= 500 || *status == 408 => Failure::Down,
            JwksError::Status { .. } | JwksError::Invalid { .. } => Failure::Refused,
        }
    }
}

/// Google's keys as last fetched.
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
struct Cache {
    set: Option<KeySet>,
    /// The last failed fetch and its message, for [`FAILED_FETCH_PAUSE`].
    failed: Option<(DateTime<Utc>, String)>,
}

enum Lookup {
    Found(DecodingKey),
    Unknown,
    Fetch,
}

/// Verifies the OIDC tokens of push requests (see the module docs). Share one per process: it
/// holds the key cache.
pub struct PushVerifier {
    config: PushAuthConfig,
    http: reqwest::Client,
    api: Api,
    clock: Arc<dyn Clock>,
    validation: Validation,
    cache: RwLock<Cache>,
    /// One fetch at a time: requests that find the cache stale together wait for one fetch.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PushVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushVerifier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl PushVerifier {
    pub fn new(config: PushAuthConfig) -> Result<Self, reqwest::Error> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`PushVerifier::new`] on another clock (tests move a manual one).
    pub fn with_clock(config: PushAuthConfig, clock: Arc<dyn Clock>) -> Result<Self, reqwest::Error> {
        // jsonwebtoken picks its crypto from its features, and panics if a dependency ever turns
        // on the second backend; naming ours removes that possibility. An `Err` means a
        // provider is already installed, which is all we need.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()?;
        // Few, quick retries: a push request is waiting, and Pub/Sub redelivers after a 503.
        let api = Api::with_policies(
            "Google's OIDC keys",
            BreakerPolicy { failures: 5, cool_down: Duration::from_secs(30) },
            RetryPolicy { attempts: 3, first_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) },
        );
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&ISSUERS);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // exp and iat are checked against `clock` below, with our leeway.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Ok(Self {
            config,
            http,
            api,
            clock,
            validation,
            cache: RwLock::new(Cache::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &PushAuthConfig {
        &self.config
    }

    /// Verifies the `Authorization` header of a push request.
    pub async fn verify_header(&self, authorization: Option<&http::HeaderValue>) -> Result<PushCaller, PushAuthError> {
        let value = authorization.ok_or(PushAuthError::MissingToken)?;
        let value =
            value.to_str().map_err(|_| PushAuthError::Malformed("the Authorization header is not ASCII".to_owned()))?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(PushAuthError::Malformed("the Authorization header is not `Bearer <token>`".to_owned()));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(PushAuthError::MissingToken);
        }
        self.verify(token).await
    }

    /// Verifies one token (the part after `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<PushCaller, PushAuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(PushAuthError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = parse_header(token)?;
        let key = self.key_for(&header.kid).await?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => PushAuthError::BadSignature,
                    ErrorKind::InvalidIssuer => PushAuthError::WrongIssuer,
                    ErrorKind::InvalidAudience => PushAuthError::WrongAudience,
                    ErrorKind::InvalidAlgorithm => PushAuthError::UnsupportedAlgorithm("another algorithm".to_owned()),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        PushAuthError::Malformed(format!("no `{}` claim", printable(claim)))
                    }
                    ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                        PushAuthError::Malformed("the claims are not base64url JSON".to_owned())
                    }
                    // jsonwebtoken's messages name the problem, never the token.
                    _ => PushAuthError::Malformed(e.to_string()),
                }
            })?
            .claims;
        let now = self.clock.now().timestamp() as f64;
        let leeway = LEEWAY_SECS as f64;
        let exp = claims.exp.ok_or_else(|| PushAuthError::Malformed("no `exp` claim".to_owned()))?;
        if now > exp + leeway {
            return Err(PushAuthError::Expired);
        }
        let iat = claims.iat.ok_or_else(|| PushAuthError::Malformed("no `iat` claim".to_owned()))?;
        if iat > now + leeway {
            return Err(PushAuthError::IssuedInFuture);
        }
        // Google writes a boolean; a string "true" has been seen from other Google issuers.
        let verified = matches!(&claims.email_verified, Some(serde_json::Value::Bool(true)))
            || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s == "true");
        if !verified {
            return Err(PushAuthError::EmailNotVerified);
        }
        if let Some(expected) = &self.config.service_account
            && claims.email.as_deref() != Some(expected.as_str())
        {
            return Err(PushAuthError::WrongServiceAccount);
        }
        Ok(PushCaller { email: claims.email })
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self, kid: &str, now: DateTime<Utc>) -> Lookup {
        let cache = self.cache();
        match &cache.set {
            Some(set) if now < set.expires_at => match set.keys.get(kid) {
                Some(key) => Lookup::Found(key.clone()),
                None if now < set.fetched_at + UNKNOWN_KID_REFETCH => Lookup::Unknown,
                // Maybe Google rotated in a key since we fetched.
                None => Lookup::Fetch,
            },
            _ => Lookup::Fetch,
        }
    }

    /// The key named `kid`: from the cache while it is fresh, else from a new fetch.
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, PushAuthError> {
        match self.lookup(kid, self.clock.now()) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Unknown => return Err(PushAuthError::UnknownKey),
            Lookup::Fetch => {}
        }
        let _single_flight = self.fetch_lock.lock().await;
        // Whoever held the lock before us may have fetched what we need.
        let now = self.clock.now();
        match self.lookup(kid, now) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Unknown => return Err(PushAuthError::UnknownKey),
            Lookup::Fetch => {}
        }
        let recent_failure = self.cache().failed.clone().filter(|(at, _)| now < *at + FAILED_FETCH_PAUSE);
        if let Some((_, reason)) = recent_failure {
            return self.stale_key(kid, now, reason);
        }
        match self.api.call(|| self.fetch_once()).await {
            Ok((keys, max_age)) => {
                let fetched_at = self.clock.now();
                tracing::info!(keys = keys.len(), max_age_s = max_age.as_secs(), "fetched Google's OIDC signing keys");
                let key = keys.get(kid).cloned();
                let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
                cache.set = Some(KeySet { keys, fetched_at, expires_at: fetched_at + max_age });
                cache.failed = None;
                key.ok_or(PushAuthError::UnknownKey)
            }
            Err(e) => {
                let reason = match &e {
                    CallError::Failed(e) => e.to_string(),
                    open @ CallError::Open { .. } => open.message(),
                };
                tracing::warn!(error = %reason, "cannot fetch Google's OIDC signing keys");
                self.cache.write().unwrap_or_else(PoisonError::into_inner).failed = Some((now, reason.clone()));
                self.stale_key(kid, now, reason)
            }
        }
    }

    /// The fetch failed: an expired key set still serves for [`MAX_STALE`], else 503.
    fn stale_key(&self, kid: &str, now: DateTime<Utc>, reason: String) -> Result<DecodingKey, PushAuthError> {
        let cache = self.cache();
        let stale = cache.set.as_ref().filter(|set| now < set.expires_at + MAX_STALE);
        match stale.and_then(|set| set.keys.get(kid)) {
            Some(key) => {
                tracing::warn!("using expired OIDC signing keys while Google's key set cannot be fetched");
                Ok(key.clone())
            }
            None => Err(PushAuthError::JwksUnavailable(reason)),
        }
    }

    /// One GET of the key set: the keys by `kid`, and how long they may be kept.
    async fn fetch_once(&self) -> Result<(HashMap<String, DecodingKey>, Duration), JwksError> {
        let url = &self.config.jwks_url;
        let unreachable = |e: reqwest::Error| JwksError::Unreachable { url: url.clone(), reason: e.to_string() };
        let mut response = self.http.get(url).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(JwksError::Status { url: url.clone(), status: response.status().as_u16() });
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_MAX_AGE)
            .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::Invalid { url: url.clone(), reason: format!("over {MAX_JWKS_BYTES} bytes") });
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_jwks(&body).map_err(|reason| JwksError::Invalid { url: url.clone(), reason })?;
        Ok((keys, max_age))
    }
}

/// The claims we check beyond jsonwebtoken's (`iss`, `aud`). NumericDates may be fractional.
#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    iat: Option<f64>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
}

struct TokenHeader {
    kid: String,
}

/// Reads the JOSE header ourselves: jsonwebtoken's parser rejects `alg: none` as bad JSON,
/// and an unsigned token deserves its own message.
fn parse_header(token: &str) -> Result<TokenHeader, PushAuthError> {
    #[derive(Deserialize)]
    struct Raw {
        alg: Option<String>,
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(PushAuthError::Malformed("not a JWT (three dot-separated parts)".to_owned()));
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| PushAuthError::Malformed("the header is not base64url".to_owned()))?;
    let raw: Raw = serde_json::from_slice(&json)
        .map_err(|_| PushAuthError::Malformed("the header is not a JSON object".to_owned()))?;
    match raw.alg.as_deref() {
        Some("RS256") => {}
        Some(alg) => return Err(PushAuthError::UnsupportedAlgorithm(format!("alg {:?}", printable(alg)))),
        None => return Err(PushAuthError::Malformed("the header names no `alg`".to_owned())),
    }
    let kid = raw.kid.filter(|kid| !kid.is_empty());
    let kid = kid.ok_or_else(|| PushAuthError::Malformed("the header names no signing key (`kid`)".to_owned()))?;
    Ok(TokenHeader { kid })
}

/// A header value fit for a message: short, and only letters, digits and `-_.`.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(32).collect()
}

/// The RS256 signing keys of a JWKS document, by `kid`. Other keys are skipped, not errors:
/// a key set may carry key types we do not use.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct RsaJwk {
        kty: String,
        kid: Option<String>,
        alg: Option<String>,
        #[serde(rename = "use")]
        usage: Option<String>,
        n: Option<String>,
        e: Option<String>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document ({e})"))?;
    let mut keys = HashMap::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<RsaJwk>(value) else { continue };
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|alg| alg == "RS256")
            && jwk.usage.as_deref().is_none_or(|usage| usage == "sig");
        let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e) else { continue };
        if let Ok(key) = DecodingKey::from_rsa_components(&n, &e) {
            keys.insert(kid, key);
        }
    }
    if keys.is_empty() {
        return Err("no RS256 signing keys".to_owned());
    }
    Ok(keys)
}

/// The `max-age` of a `Cache-Control` value (`public, max-age=21197, must-revalidate`).
/// `no-store` / `no-cache` count as 0 (then clamped to the minimum by the caller).
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            found = seconds.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    found
}

/// The layer that verifies push requests: apply it to a function's router (see module docs).
pub fn push_auth_layer(verifier: Arc<PushVerifier>) -> PushAuthLayer {
    PushAuthLayer { verifier }
}

/// See [`push_auth_layer`].
#[derive(Debug, Clone)]
pub struct PushAuthLayer {
    verifier: Arc<PushVerifier>,
}

impl<S> tower::Layer<S> for PushAuthLayer {
    type Service = PushAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PushAuth { inner, verifier: self.verifier.clone() }
    }
}

/// The service [`PushAuthLayer`] wraps around a router.
#[derive(Debug, Clone)]
pub struct PushAuth<S> {
    inner: S,
    verifier: Arc<PushVerifier>,
}

impl<S> Service<Request> for PushAuth<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if !request.uri().path().starts_with(PUSH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready is the one to call; a fresh clone stays behind.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            match verifier.verify_header(request.headers().get(http::header::AUTHORIZATION)).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(e) => {
                    let path = request.uri().path();
                    let audience = &verifier.config().audience;
                    tracing::warn!(%path, error = %e, %audience, "push request refused");
                    Ok(e.into_response())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
