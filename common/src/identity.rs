//! Identity: users and bearer tokens. Tokens are random, shown once, and stored only as SHA-256
//! hashes (a token has 256 bits of entropy, so a fast hash is enough; no salt needed). Every
//! HTTP function puts [`require_bearer`] in front of its routes and reads the [`Caller`].

use crate::clock::Clock;
use crate::handler::ApiError;
use crate::ids::UserId;
use crate::model::user::{Tier, User};
use crate::ports::store::{DocKey, Scope, Store, StoreError, StoreExt, Write, to_data};
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

const TOKEN_PREFIX: &str = "dg_";

/// A bearer token in plain text. Exists only between its creation and the moment it is shown,
/// and while a request is being authenticated. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh token: `dg_` and 32 random bytes, base64url.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| IdentityError::Randomness(e.to_string()))?;
        Ok(Self(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// Accepts a token given by a user (`DEVGEM_TOKEN`, a header): printable ASCII, 16 to 256
    /// characters. Our own tokens are 46.
    pub fn parse(raw: &str) -> Result<Self, IdentityError> {
        let raw = raw.trim();
        let ok = (16..=256).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        if ok { Ok(Self(raw.to_owned())) } else { Err(IdentityError::MalformedToken) }
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(hex(&Sha256::digest(self.0.as_bytes())))
    }

    /// The plain token, to show once or to send as a bearer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The stored form of a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `tokens/{hash}`: finds the user of a token in one read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: UserId,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("missing bearer token: send 'Authorization: Bearer <token>' (get one with 'devgem token create <user>')")]
    MissingToken,
    #[error("malformed token: a token is 16-256 printable characters")]
    MalformedToken,
    #[error("unknown or revoked token")]
    UnknownToken,
    #[error("user {0} already exists")]
    UserExists(UserId),
    #[error("user {0} not found")]
    UserNotFound(UserId),
    #[error("no randomness available: {0}")]
    Randomness(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub admin: bool,
}

impl Caller {
    /// The caller's own documents: what every user-facing read uses.
    pub fn scope(&self) -> Scope {
        Scope::Owner(self.user_id.clone())
    }

    /// Everything, for the admin's totals; a user's own documents otherwise.
    pub fn admin_scope(&self) -> Scope {
        if self.admin { Scope::All } else { self.scope() }
    }
}

fn user_key(id: &UserId) -> Result<DocKey, StoreError> {
    DocKey::new("users", id.as_str())
}

fn token_key(hash: &TokenHash) -> Result<DocKey, StoreError> {
    DocKey::new("tokens", hash.as_str())
}

/// Users and tokens over the Store.
#[derive(Debug, Clone)]
pub struct Identity {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Identity {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Creates a user and its first token (`preset` if given) in one transaction.
    pub async fn create_user(
        &self,
        id: &UserId,
        name: &str,
        admin: bool,
        preset: Option<Token>,
    ) -> Result<(User, Token), IdentityError> {
        let token = match preset {
            Some(t) => t,
            None => Token::generate()?,
        };
        let now = self.clock.now();
        let hash = token.hash();
        let user = User {
            id: id.clone(),
            name: name.to_owned(),
            admin,
            tier: if admin { Tier::Admin } else { Tier::Free },
            token_hashes: vec![hash.clone()],
            created_at: now,
        };
        let record = TokenRecord { user_id: id.clone(), created_at: now };
        let writes = vec![
            Write::Create { key: user_key(id)?, owner: id.clone(), data: to_data(&user)? },
            Write::Create { key: token_key(&hash)?, owner: id.clone(), data: to_data(&record)? },
        ];
        match self.store.commit(writes).await {
            Ok(_) => Ok((user, token)),
            Err(e) if e.is_conflict() => Err(IdentityError::UserExists(id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Issues one more token for an existing user.
    pub async fn issue_token(&self, id: &UserId) -> Result<Token, IdentityError> {
        let token = Token::generate()?;
        let hash = token.hash();
        let Some((mut user, version)) = self.store.get_typed::<User>(&Scope::All, &user_key(id)?).await? else {
            return Err(IdentityError::UserNotFound(id.clone()));
        };
        user.token_hashes.push(hash.clone());
        let record = TokenRecord { user_id: id.clone(), created_at: self.clock.now() };
        self.store
            .commit(vec![
                Write::Update { key: user_key(id)?, expected_version: version, data: to_data(&user)? },
                Write::Create { key: token_key(&hash)?, owner: id.clone(), data: to_data(&record)? },
            ])
            .await?;
        Ok(token)
    }

    /// Creates the admin user on first start. Returns its token only when just created: the
    /// plain token exists nowhere else afterwards.
    pub async fn ensure_admin(&self, preset: Option<Token>) -> Result<Option<Token>, IdentityError> {
        let admin = UserId::admin();
        if let Some((user, _)) = self.store.get_typed::<User>(&Scope::All, &user_key(&admin)?).await? {
            // A preset token (DEVGEM_TOKEN) that is not yet known is added, so the override works
            // on an existing data dir too.
            if let Some(token) = preset
                && !user.token_hashes.contains(&token.hash())
            {
                self.add_token(&admin, &token).await?;
            }
            return Ok(None);
        }
        match self.create_user(&admin, "Administrator", true, preset).await {
            Ok((_, token)) => Ok(Some(token)),
            // Another process created it meanwhile.
            Err(IdentityError::UserExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn add_token(&self, id: &UserId, token: &Token) -> Result<(), IdentityError> {
        let hash = token.hash();
        let key = user_key(id)?;
        let Some((mut user, version)) = self.store.get_typed::<User>(&Scope::All, &key).await? else {
            return Err(IdentityError::UserNotFound(id.clone()));
        };
        user.token_hashes.push(hash.clone());
        let record = TokenRecord { user_id: id.clone(), created_at: self.clock.now() };
        self.store
            .commit(vec![
                Write::Update { key, expected_version: version, data: to_data(&user)? },
                Write::Set { key: token_key(&hash)?, owner: id.clone(), data: to_data(&record)? },
            ])
            .await?;
        Ok(())
    }

    /// Finds the caller of a token. The user document must still list the hash, so removing it
    /// from the user revokes the token.
    pub async fn authenticate(&self, token: &Token) -> Result<Caller, IdentityError> {
        let hash = token.hash();
        let Some((record, _)) = self.store.get_typed::<TokenRecord>(&Scope::All, &token_key(&hash)?).await? else {
            return Err(IdentityError::UnknownToken);
        };
        let Some((user, _)) = self.store.get_typed::<User>(&Scope::All, &user_key(&record.user_id)?).await? else {
            return Err(IdentityError::UnknownToken);
        };
        if !user.token_hashes.contains(&hash) {
            return Err(IdentityError::UnknownToken);
        }
        Ok(Caller { user_id: user.id, admin: user.admin })
    }
}

/// Reads `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Token, IdentityError> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or(IdentityError::MissingToken)?;
    let value = value.to_str().map_err(|_| IdentityError::MalformedToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(IdentityError::MalformedToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(IdentityError::MissingToken);
    }
    Token::parse(token)
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::MissingToken | IdentityError::MalformedToken | IdentityError::UnknownToken => {
                ApiError::unauthorized(e.to_string())
            }
            IdentityError::UserExists(_) => ApiError::new(http::StatusCode::CONFLICT, "user_exists", e.to_string()),
            IdentityError::UserNotFound(_) => ApiError::not_found(e.to_string()),
            IdentityError::Store(inner) => inner.into(),
            IdentityError::Randomness(_) => ApiError::unavailable("cannot create a token right now"),
        }
    }
}

/// Middleware: authenticates the bearer token and puts the [`Caller`] in the request.
/// Use with `axum::middleware::from_fn_with_state(identity, require_bearer)`.
pub async fn require_bearer(State(identity): State<Identity>, mut request: Request, next: Next) -> Response {
    let caller = match bearer_token(request.headers()) {
        Ok(token) => identity.authenticate(&token).await,
        Err(e) => Err(e),
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(reason = %e, "request refused");
            ApiError::from(e).into_response()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Fails closed: a route mounted without [`require_bearer`] refuses every request.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| ApiError::unauthorized("authentication required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_hash_stably_and_never_print() {
        let a = Token::generate().expect("randomness");
        let b = Token::generate().expect("randomness");
        assert_ne!(a, b);
        assert_eq!(a.hash(), Token::parse(a.expose()).expect("own token parses").hash());
        assert_eq!(a.hash().as_str().len(), 64);
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(a.expose().starts_with("dg_"));
    }

    #[test]
    fn bearer_header_parsing() {
        let mut headers = http::HeaderMap::new();
        assert!(matches!(bearer_token(&headers), Err(IdentityError::MissingToken)));
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer_token(&headers), Err(IdentityError::MissingToken)));
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer short"));
        assert!(matches!(bearer_token(&headers), Err(IdentityError::MalformedToken)));
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("bearer dg_0123456789abcdef"));
        assert!(bearer_token(&headers).is_ok());
    }
}
