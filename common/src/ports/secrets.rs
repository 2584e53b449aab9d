//! The Secrets port: values marked secret are stored here and referenced by version everywhere
//! else, so documents, events and logs only ever hold a [`SecretRef`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A versioned reference to a secret value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    pub version: u32,
}

/// A secret's plain value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the one place that must hand it to a process or an API.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    #[error("secret {0} not found")]
    NotFound(String),
    #[error("secret refused: {0}")]
    Invalid(String),
    #[error("secret storage unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Secrets: Send + Sync + fmt::Debug {
    /// Stores a new version of `name` (creating the secret if needed) and returns its reference.
    async fn put(&self, name: &str, value: SecretValue) -> Result<SecretRef, SecretsError>;
    /// Reads the value a reference points to.
    async fn access(&self, reference: &SecretRef) -> Result<SecretValue, SecretsError>;
    /// The newest version of `name`, so changes made outside DevGem are seen.
    async fn latest(&self, name: &str) -> Result<Option<SecretRef>, SecretsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_print() {
        let v = SecretValue::new("hunter2");
        assert!(!format!("{v:?}").contains("hunter2"));
        assert_eq!(v.expose(), "hunter2");
    }
}
