//! The verifier against a local JWKS server on 127.0.0.1, with RSA keys generated per test run
//! (aws-lc-rs, already in the tree for jsonwebtoken and rustls): no key is committed.

use super::*;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use devgem_common::clock::ManualClock;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tower::ServiceExt as _;

const AUDIENCE: &str = "https://build-abc123-ew.a.run.app";
const PUSHER: &str = "pubsub-push@devgem-test.iam.gserviceaccount.com";

/// Two generated keys: Google's, and an impostor's. RSA generation is slow-ish, so once.
fn keys() -> &'static (KeyPair, KeyPair) {
    static KEYS: OnceLock<(KeyPair, KeyPair)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let generate = || KeyPair::generate(KeySize::Rsa2048).expect("generate an RSA test key");
        (generate(), generate())
    })
}

fn google() -> &'static KeyPair {
    &keys().0
}

fn impostor() -> &'static KeyPair {
    &keys().1
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwk(key: &KeyPair, kid: &str) -> Value {
    let public = PublicKeyComponents::<Vec<u8>>::from(key.public_key());
    json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64(&public.n), "e": b64(&public.e)})
}

/// A JWT with `header` and `claims`, signed RS256 by `key`.
fn sign(key: &KeyPair, header: &Value, claims: &Value) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), message.as_bytes(), &mut signature)
        .expect("sign");
    format!("{message}.{}", b64(&signature))
}

fn now() -> i64 {
    Utc::now().timestamp()
}

/// The claims of a Pub/Sub push token that should pass.
fn good_claims() -> Value {
    claims_at(now())
}

/// The claims of a token issued at `now`: tests that move the verifier's clock by hours make
/// tokens on that clock.
fn claims_at(now: i64) -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "113774264463038321964",
        "sub": "113774264463038321964",
        "email": PUSHER,
        "email_verified": true,
        "iat": now - 10,
        "exp": now + 3590,
    })
}

fn with(claims: Value, changes: Value) -> Value {
    let mut claims = claims;
    if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (name, value) in changes {
            if value.is_null() {
                claims.remove(name);
            } else {
                claims.insert(name.clone(), value.clone());
            }
        }
    }
    claims
}

fn token_by(key: &KeyPair, kid: &str, claims: &Value) -> String {
    sign(key, &json!({"alg": "RS256", "kid": kid, "typ": "JWT"}), claims)
}

fn good_token() -> String {
    token_by(google(), "k1", &good_claims())
}

fn good_token_at(clock: &ManualClock) -> String {
    token_by(google(), "k1", &claims_at(clock.now().timestamp()))
}

/// A local JWKS endpoint that counts its requests; its keys and health can change mid-test.
#[derive(Clone)]
struct Jwks {
    requests: Arc<AtomicUsize>,
    keys: Arc<Mutex<Value>>,
    failing: Arc<AtomicBool>,
    cache_control: Arc<Mutex<Option<&'static str>>>,
    url: String,
}

impl Jwks {
    async fn start(keys: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let jwks = Jwks {
            requests: Arc::default(),
            keys: Arc::new(Mutex::new(keys)),
            failing: Arc::default(),
            cache_control: Arc::new(Mutex::new(Some("public, max-age=21600, must-revalidate, no-transform"))),
            url: format!("http://{addr}/oauth2/v3/certs"),
        };
        let state = jwks.clone();
        let app = Router::new().route(
            "/oauth2/v3/certs",
            get(move || {
                let state = state.clone();
                async move {
                    state.requests.fetch_add(1, Ordering::SeqCst);
                    if state.failing.load(Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let body = state.keys.lock().expect("keys").clone();
                    let mut response = axum::Json(body).into_response();
                    if let Some(value) = *state.cache_control.lock().expect("cache-control") {
                        response
                            .headers_mut()
                            .insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static(value));
                    }
                    response
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        jwks
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn config(jwks_url: &str) -> PushAuthConfig {
    PushAuthConfig {
        audience: AUDIENCE.to_owned(),
        service_account: Some(PUSHER.to_owned()),
        jwks_url: jwks_url.to_owned(),
    }
}

fn new_verifier(jwks_url: &str, clock: Arc<ManualClock>) -> PushVerifier {
    PushVerifier::with_clock(config(jwks_url), clock).expect("verifier")
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Utc::now()))
}

/// A URL where nothing listens.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/certs")
}

fn bearer(token: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header value")
}

#[tokio::test]
async fn a_good_token_passes_and_later_ones_use_the_cached_keys() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    let verifier = new_verifier(&jwks.url, manual_clock());
    let caller = verifier.verify_header(Some(&bearer(&good_token()))).await.expect("a good token passes");
    assert_eq!(caller.email.as_deref(), Some(PUSHER));
    // The other issuer spelling Google uses.
    let short_issuer = with(good_claims(), json!({"iss": "accounts.google.com"}));
    verifier.verify(&token_by(google(), "k1", &short_issuer)).await.expect("accounts.google.com is Google too");
    verifier.verify(&good_token()).await.expect("again");
    assert_eq!(jwks.requests(), 1, "one fetch, then the cache");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_what_was_wrong_and_a_401() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    let verifier = new_verifier(&jwks.url, manual_clock());
    let good = good_claims();
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"}).to_string().as_bytes()),
        b64(good.to_string().as_bytes())
    );
    let header_only = b64(json!({"alg": "RS256", "kid": "k1"}).to_string().as_bytes());
    let cases: Vec<(&str, String, PushAuthError, &str)> = vec![
        (
            "wrong audience",
            token_by(google(), "k1", &with(good.clone(), json!({"aud": "https://evil.example"}))),
            PushAuthError::WrongAudience,
            "wrong audience",
        ),
        (
            "wrong issuer",
            token_by(google(), "k1", &with(good.clone(), json!({"iss": "https://evil.example"}))),
            PushAuthError::WrongIssuer,
            "wrong issuer",
        ),
        (
            "expired beyond the leeway",
            token_by(google(), "k1", &with(good.clone(), json!({"iat": now() - 3800, "exp": now() - 120}))),
            PushAuthError::Expired,
            "expired",
        ),
        (
            "issued in the future",
            token_by(google(), "k1", &with(good.clone(), json!({"iat": now() + 600, "exp": now() + 4000}))),
            PushAuthError::IssuedInFuture,
            "iat is in the future",
        ),
        ("unsigned (alg none)", unsigned, PushAuthError::UnsupportedAlgorithm("alg \"none\"".into()), "not RS256"),
        (
            "HS256 with Google's public key as the secret (algorithm confusion)",
            format!(
                "{}.{}.{}",
                b64(json!({"alg": "HS256", "kid": "k1"}).to_string().as_bytes()),
                b64(b"{}"),
                b64(b"mac")
            ),
            PushAuthError::UnsupportedAlgorithm("alg \"HS256\"".into()),
            "not RS256",
        ),
        (
            "signed by another key under Google's kid",
            token_by(impostor(), "k1", &good),
            PushAuthError::BadSignature,
            "bad signature",
        ),
        (
            "email not verified",
            token_by(google(), "k1", &with(good.clone(), json!({"email_verified": false}))),
            PushAuthError::EmailNotVerified,
            "email_verified",
        ),
        (
            "another service account",
            token_by(google(), "k1", &with(good.clone(), json!({"email": "someone@evil.example"}))),
            PushAuthError::WrongServiceAccount,
            "service account",
        ),
        (
            "no kid",
            sign(google(), &json!({"alg": "RS256"}), &good),
            PushAuthError::Malformed("the header names no signing key (`kid`)".into()),
            "malformed",
        ),
        (
            "no exp",
            token_by(google(), "k1", &with(good.clone(), json!({"exp": null}))),
            PushAuthError::Malformed("no `exp` claim".into()),
            "no `exp`",
        ),
        (
            "two parts",
            format!("{header_only}.{}", b64(b"{}")),
            PushAuthError::Malformed("not a JWT (three dot-separated parts)".into()),
            "malformed",
        ),
        (
            "garbage",
            "not-a-jwt".to_owned(),
            PushAuthError::Malformed("not a JWT (three dot-separated parts)".into()),
            "malformed",
        ),
        (
            "claims not JSON",
            format!("{header_only}.{}.{}", b64(b"{not json"), b64(b"sig")),
            PushAuthError::BadSignature,
            "bad signature",
        ),
    ];
    for (case, token, expected, says) in cases {
        let error = verifier.verify_header(Some(&bearer(&token))).await.expect_err(case);
        assert_eq!(error, expected, "{case}");
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED, "{case}");
        let message = error.to_string();
        assert!(message.contains(says), "{case}: {message}");
        assert!(!message.contains(&token) && !token.split('.').any(|part| part.len() > 8 && message.contains(part)));
    }
    assert_eq!(jwks.requests(), 1, "refusals do not refetch keys that are known");
}

#[tokio::test]
async fn a_missing_or_malformed_authorization_header_is_refused() {
    // No key is ever needed for these: the JWKS URL is dead and must not matter.
    let verifier = new_verifier(&dead_url().await, manual_clock());
    let cases = [
        (None, PushAuthError::MissingToken),
        (Some(http::HeaderValue::from_static("Bearer ")), PushAuthError::MissingToken),
        (
            Some(http::HeaderValue::from_static("Basic dXNlcjpwYXNz")),
            PushAuthError::Malformed("the Authorization header is not `Bearer <token>`".into()),
        ),
        (
            Some(http::HeaderValue::from_static("Bearer a.b")),
            PushAuthError::Malformed("not a JWT (three dot-separated parts)".into()),
        ),
        (
            Some(http::HeaderValue::from_static("Bearer !!!.e30.c2ln")),
            PushAuthError::Malformed("the header is not base64url".into()),
        ),
        (
            Some(http::HeaderValue::from_bytes(b"Bearer \xff").expect("opaque header value")),
            PushAuthError::Malformed("the Authorization header is not ASCII".into()),
        ),
    ];
    for (header, expected) in cases {
        let error = verifier.verify_header(header.as_ref()).await.expect_err("refused");
        assert_eq!(error, expected, "{header:?}");
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(PushAuthError::MissingToken.to_string().contains("missing token"));
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_so_rotation_works_and_is_rate_limited() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    let clock = manual_clock();
    let verifier = new_verifier(&jwks.url, clock.clone());
    verifier.verify(&good_token()).await.expect("k1");
    assert_eq!(jwks.requests(), 1);

    // Google rotates in k2. A token signed with it, right after our fetch: the refetch is
    // rate-limited, so k2 is unknown for now.
    *jwks.keys.lock().expect("keys") = json!({"keys": [jwk(google(), "k1"), jwk(impostor(), "k2")]});
    let rotated = token_by(impostor(), "k2", &good_claims());
    assert_eq!(verifier.verify(&rotated).await, Err(PushAuthError::UnknownKey));
    assert_eq!(jwks.requests(), 1, "within 30 s of a fetch, an unknown kid does not refetch");

    // Later, the unknown kid refetches exactly once and the rotated key works.
    clock.advance(chrono::Duration::seconds(31));
    verifier.verify(&rotated).await.expect("k2 after the refetch");
    assert_eq!(jwks.requests(), 2, "one refetch");
    verifier.verify(&rotated).await.expect("k2 from the cache");
    verifier.verify(&good_token()).await.expect("k1 from the cache");
    assert_eq!(jwks.requests(), 2);

    // A made-up kid: one refetch per 30 s at most, however many tokens name it.
    let made_up = token_by(google(), "nope", &good_claims());
    assert_eq!(verifier.verify(&made_up).await, Err(PushAuthError::UnknownKey));
    assert_eq!(jwks.requests(), 2, "the refetch for k2 was less than 30 s ago");
    clock.advance(chrono::Duration::seconds(31));
    for _ in 0..5 {
        assert_eq!(verifier.verify(&made_up).await, Err(PushAuthError::UnknownKey));
    }
    assert_eq!(jwks.requests(), 3, "five tokens, one refetch");
    assert!(PushAuthError::UnknownKey.to_string().contains("unknown key"));
}

#[tokio::test]
async fn keys_are_kept_for_the_max_age_of_the_response() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    *jwks.cache_control.lock().expect("cache-control") = Some("public, max-age=600, must-revalidate");
    let clock = manual_clock();
    let verifier = new_verifier(&jwks.url, clock.clone());
    verifier.verify(&good_token_at(&clock)).await.expect("first");
    clock.advance(chrono::Duration::seconds(590));
    verifier.verify(&good_token_at(&clock)).await.expect("within max-age");
    assert_eq!(jwks.requests(), 1);
    clock.advance(chrono::Duration::seconds(20));
    verifier.verify(&good_token_at(&clock)).await.expect("after max-age");
    assert_eq!(jwks.requests(), 2, "refetched when the max-age ran out");

    // Without Cache-Control: one hour.
    *jwks.cache_control.lock().expect("cache-control") = None;
    clock.advance(chrono::Duration::seconds(601));
    verifier.verify(&good_token_at(&clock)).await.expect("refetch");
    assert_eq!(jwks.requests(), 3);
    clock.advance(chrono::Duration::seconds(3500));
    verifier.verify(&good_token_at(&clock)).await.expect("within the hour");
    assert_eq!(jwks.requests(), 3);
    clock.advance(chrono::Duration::seconds(101));
    verifier.verify(&good_token_at(&clock)).await.expect("after the hour");
    assert_eq!(jwks.requests(), 4);
}

#[test]
fn max_age_is_read_from_cache_control() {
    assert_eq!(max_age("public, max-age=21197, must-revalidate, no-transform"), Some(Duration::from_secs(21197)));
    assert_eq!(max_age("Max-Age=60"), Some(Duration::from_secs(60)));
    assert_eq!(max_age("no-store"), Some(Duration::ZERO));
    assert_eq!(max_age("public"), None);
    assert_eq!(max_age("max-age=soon"), None);
}

#[test]
fn jwks_documents_keep_only_rs256_signing_keys() {
    let public = PublicKeyComponents::<Vec<u8>>::from(google().public_key());
    let doc = json!({"keys": [
        jwk(google(), "rsa"),
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "alg": "RS512", "kid": "rs512", "n": b64(&public.n), "e": b64(&public.e)},
        {"kty": "RSA", "use": "enc", "kid": "enc", "n": b64(&public.n), "e": b64(&public.e)},
        {"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)},
        "not even an object",
    ]});
    let keys = parse_jwks(doc.to_string().as_bytes()).expect("one usable key");
    assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["rsa"]);
    assert!(parse_jwks(br#"{"keys": []}"#).is_err());
    assert!(parse_jwks(b"<html>").is_err());
}

#[tokio::test]
async fn unreachable_keys_are_a_503_not_a_refusal() {
    let verifier = new_verifier(&dead_url().await, manual_clock());
    let error = verifier.verify(&good_token()).await.expect_err("no keys");
    assert!(matches!(error, PushAuthError::JwksUnavailable(_)), "{error:?}");
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(error.to_string().contains("JWKS unreachable"), "{error}");

    // An HTTP error from the JWKS endpoint too, retried a few times first.
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    jwks.failing.store(true, Ordering::SeqCst);
    let clock = manual_clock();
    let verifier = new_verifier(&jwks.url, clock.clone());
    let error = verifier.verify(&good_token()).await.expect_err("no keys");
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(error.to_string().contains("HTTP 500"), "{error}");
    assert_eq!(jwks.requests(), 3, "three attempts");
    // Requests right after a failed fetch answer at once, without a fetch each.
    verifier.verify(&good_token()).await.expect_err("still no keys");
    assert_eq!(jwks.requests(), 3);
    // The endpoint is back: the next fetch after the pause works.
    jwks.failing.store(false, Ordering::SeqCst);
    clock.advance(chrono::Duration::seconds(6));
    verifier.verify(&good_token()).await.expect("keys are back");
    assert_eq!(jwks.requests(), 4);
}

#[tokio::test]
async fn expired_keys_still_serve_while_the_jwks_endpoint_fails() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    let clock = manual_clock();
    let verifier = new_verifier(&jwks.url, clock.clone());
    verifier.verify(&good_token_at(&clock)).await.expect("first");
    jwks.failing.store(true, Ordering::SeqCst);
    clock.advance(chrono::Duration::hours(7));
    verifier.verify(&good_token_at(&clock)).await.expect("the expired keys serve during the outage");
    assert_eq!(jwks.requests(), 4, "the first fetch, then three failed attempts");
    assert_eq!(
        verifier.verify(&token_by(impostor(), "k2", &claims_at(clock.now().timestamp()))).await.map_err(|e| e.status()),
        Err(StatusCode::SERVICE_UNAVAILABLE),
        "a kid the stale set does not know cannot be checked: retry later"
    );
    clock.advance(chrono::Duration::hours(6));
    let error = verifier.verify(&good_token_at(&clock)).await.expect_err("too stale");
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn concurrent_requests_on_a_cold_cache_share_one_fetch() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    let verifier = Arc::new(new_verifier(&jwks.url, manual_clock()));
    let token = good_token();
    let checks = (0..8).map(|_| {
        let (verifier, token) = (verifier.clone(), token.clone());
        tokio::spawn(async move { verifier.verify(&token).await })
    });
    for check in futures_util::future::join_all(checks).await {
        check.expect("task").expect("passes");
    }
    assert_eq!(jwks.requests(), 1);
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_configuration_comes_from_the_environment() {
    assert_eq!(PushAuthConfig::from_env(env(&[])), Ok(None), "off without an audience");
    assert_eq!(PushAuthConfig::from_env(env(&[("DEVGEM_PUSH_AUDIENCE", "  ")])), Ok(None));
    assert_eq!(
        PushAuthConfig::from_env(env(&[("DEVGEM_PUSH_AUDIENCE", AUDIENCE)])),
        Ok(Some(PushAuthConfig::new(AUDIENCE)))
    );
    assert_eq!(
        PushAuthConfig::from_env(env(&[
            ("DEVGEM_PUSH_AUDIENCE", AUDIENCE),
            ("DEVGEM_PUSH_SERVICE_ACCOUNT", PUSHER),
            ("DEVGEM_OIDC_JWKS_URL", "http://127.0.0.1:9/certs"),
        ])),
        Ok(Some(config("http://127.0.0.1:9/certs")))
    );
    let half = PushAuthConfig::from_env(env(&[("DEVGEM_PUSH_SERVICE_ACCOUNT", PUSHER)])).expect_err("half");
    assert!(half.to_string().contains("DEVGEM_PUSH_AUDIENCE"), "{half}");
    let not_an_email = env(&[("DEVGEM_PUSH_AUDIENCE", AUDIENCE), ("DEVGEM_PUSH_SERVICE_ACCOUNT", "pusher")]);
    assert!(PushAuthConfig::from_env(not_an_email).is_err());
    let not_http = env(&[("DEVGEM_PUSH_AUDIENCE", AUDIENCE), ("DEVGEM_OIDC_JWKS_URL", "file:///etc/keys")]);
    assert!(PushAuthConfig::from_env(not_http).is_err());
}

/// A tiny function: a push route that reports who called, and a health route.
fn tiny_router(verifier: Arc<PushVerifier>) -> Router {
    Router::new()
        .route(
            "/push/x",
            post(|caller: Option<axum::Extension<PushCaller>>| async move {
                caller.and_then(|axum::Extension(caller)| caller.email).unwrap_or_default()
            }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(push_auth_layer(verifier))
}

async fn send(router: &Router, path: &str, authorization: Option<String>) -> (StatusCode, http::HeaderMap, String) {
    let mut request = http::Request::post(path);
    if path == "/health" {
        request = http::Request::get(path);
    }
    if let Some(value) = authorization {
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let response = router.clone().oneshot(request.body(Body::from("{}")).expect("request")).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_layer_guards_push_routes_only() {
    let jwks = Jwks::start(json!({"keys": [jwk(google(), "k1")]})).await;
    let router = tiny_router(Arc::new(new_verifier(&jwks.url, manual_clock())));

    let (status, _, body) = send(&router, "/health", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "other paths pass untouched");

    let (status, headers, body) = send(&router, "/push/x", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get(http::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()), Some("Bearer"));
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["error"]["code"], "unauthenticated", "{json}");
    assert!(json["error"]["message"].as_str().unwrap_or_default().contains("missing token"), "{json}");

    let wrong = token_by(google(), "k1", &with(good_claims(), json!({"aud": "https://other.example"})));
    let (status, _, body) = send(&router, "/push/x", Some(format!("Bearer {wrong}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("wrong audience") && !body.contains(&wrong), "{body}");

    let (status, _, body) = send(&router, "/push/x", Some(format!("Bearer {}", good_token()))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, PUSHER), "the handler sees who called");
}

#[tokio::test]
async fn the_layer_answers_503_when_the_keys_are_unreachable() {
    let router = tiny_router(Arc::new(new_verifier(&dead_url().await, manual_clock())));
    let (status, _, body) = send(&router, "/push/x", Some(format!("Bearer {}", good_token()))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "Pub/Sub redelivers later");
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["error"]["code"], "unavailable", "{json}");
    assert!(json["error"]["message"].as_str().unwrap_or_default().contains("JWKS unreachable"), "{json}");
    let (status, _, _) = send(&router, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
}
