//! The Secrets port on the embedded default: versions of each secret, encrypted with
//! ChaCha20-Poly1305 in `<data dir>/secrets.json`, under a key kept outside the data dir
//! (`DEVGEM_SECRETS_KEY_FILE`, else `~/.config/devgem/secrets.key`, created 0600 when the first
//! secret is stored; nothing is written there before).
//! A copied or leaked data dir holds no readable secret; each ciphertext is bound to its name and
//! version, so one cannot be swapped for another.

use async_trait::async_trait;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use devgem_common::ports::secrets::{SecretRef, SecretValue, Secrets, SecretsError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::sync::Mutex;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Vault {
    secrets: BTreeMap<String, Vec<Sealed>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sealed {
    version: u32,
    nonce: String,
    ciphertext: String,
}

/// Secrets encrypted in a file of the data dir.
pub struct LocalSecrets {
    path: PathBuf,
    key_path: PathBuf,
    cipher: tokio::sync::OnceCell<ChaCha20Poly1305>,
    /// One writer at a time; readers see whole files (written by rename).
    lock: Mutex<()>,
}

impl std::fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSecrets").field("path", &self.path).finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SecretsError {
    SecretsError::Unavailable(format!("{what}: {e}"))
}

/// Where the key lives unless `DEVGEM_SECRETS_KEY_FILE` says otherwise.
pub fn default_key_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DEVGEM_SECRETS_KEY_FILE") {
        return Some(PathBuf::from(path));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("devgem").join("secrets.key"))
}

fn read_or_create_key(path: &Path) -> Result<[u8; 32], SecretsError> {
    if let Ok(bytes) = std::fs::read(path) {
        return bytes.try_into().map_err(|_| {
            SecretsError::Unavailable(format!(
                "{} is not a 32-byte key; move it away to start a new one",
                path.display()
            ))
        });
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| unavailable("no randomness for a key", e))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| unavailable(&parent.display().to_string(), e))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| unavailable(&path.display().to_string(), e))?;
    file.write_all(&key).map_err(|e| unavailable(&path.display().to_string(), e))?;
    Ok(key)
}

fn check_name(name: &str) -> Result<(), SecretsError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid { Ok(()) } else { Err(SecretsError::Invalid(format!("{name:?}: use 1-255 of A-Z, a-z, 0-9, '-', '_'"))) }
}

fn aad(name: &str, version: u32) -> Vec<u8> {
    format!("devgem-secret:{name}:{version}").into_bytes()
}

impl LocalSecrets {
    /// `path`: the encrypted file; `key_path`: where the key is (or will be made).
    pub fn open(path: PathBuf, key_path: &Path) -> Self {
        Self { path, key_path: key_path.to_owned(), cipher: tokio::sync::OnceCell::new(), lock: Mutex::new(()) }
    }

    async fn cipher(&self) -> Result<&ChaCha20Poly1305, SecretsError> {
        self.cipher
            .get_or_try_init(|| async {
                let key = read_or_create_key(&self.key_path)?;
                Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
            })
            .await
    }

    fn load(&self) -> Result<Vault, SecretsError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| unavailable(&self.path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vault::default()),
            Err(e) => Err(unavailable(&self.path.display().to_string(), e)),
        }
    }

    fn store(&self, vault: &Vault) -> Result<(), SecretsError> {
        let json = serde_json::to_vec_pretty(vault).map_err(|e| unavailable("encoding", e))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| unavailable(&tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| unavailable(&self.path.display().to_string(), e))
    }
}

#[async_trait]
impl Secrets for LocalSecrets {
    async fn put(&self, name: &str, value: SecretValue) -> Result<SecretRef, SecretsError> {
        check_name(name)?;
        let _guard = self.lock.lock().await;
        let mut vault = self.load()?;
        let versions = vault.secrets.entry(name.to_owned()).or_default();
        let version = versions.last().map_or(1, |s| s.version + 1);
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| unavailable("no randomness for a nonce", e))?;
        let ciphertext = self
            .cipher()
            .await?
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value.expose().as_bytes(), aad: &aad(name, version) })
            .map_err(|_| SecretsError::Unavailable("encryption failed".into()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        versions.push(Sealed { version, nonce: b64.encode(nonce), ciphertext: b64.encode(ciphertext) });
        self.store(&vault)?;
        Ok(SecretRef { name: name.to_owned(), version })
    }

    async fn access(&self, reference: &SecretRef) -> Result<SecretValue, SecretsError> {
        let vault = self.load()?;
        let missing = || SecretsError::NotFound(format!("{} version {}", reference.name, reference.version));
        let sealed = vault
            .secrets
            .get(&reference.name)
            .and_then(|versions| versions.iter().find(|s| s.version == reference.version))
            .ok_or_else(missing)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.decode(&sealed.nonce).map_err(|e| unavailable("a stored nonce", e))?;
        let ciphertext = b64.decode(&sealed.ciphertext).map_err(|e| unavailable("a stored secret", e))?;
        if nonce.len() != 12 {
            return Err(SecretsError::Unavailable("a stored nonce has the wrong length".into()));
        }
        let plain = self
            .cipher()
            .await?
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload { msg: &ciphertext, aad: &aad(&reference.name, reference.version) },
            )
            .map_err(|_| {
                SecretsError::Unavailable(
                    "a secret cannot be decrypted: the key file is not the one it was stored with".into(),
                )
            })?;
        String::from_utf8(plain)
            .map(SecretValue::new)
            .map_err(|_| SecretsError::Unavailable("a secret is not text".into()))
    }

    async fn latest(&self, name: &str) -> Result<Option<SecretRef>, SecretsError> {
        let vault = self.load()?;
        Ok(vault
            .secrets
            .get(name)
            .and_then(|v| v.last())
            .map(|s| SecretRef { name: name.to_owned(), version: s.version }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, key: &str) -> LocalSecrets {
        LocalSecrets::open(dir.join("data/secrets.json"), &dir.join(key))
    }

    #[tokio::test]
    async fn values_are_versioned_encrypted_and_need_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("mkdir");
        let secrets = open(dir.path(), "keys/secrets.key");
        assert!(!dir.path().join("keys").exists(), "no key is made before a secret is stored");
        let v1 = secrets.put("admin--web--DB_PASSWORD", SecretValue::new("hunter2")).await.expect("put");
        let v2 = secrets.put("admin--web--DB_PASSWORD", SecretValue::new("correct horse")).await.expect("put");
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(secrets.access(&v1).await.expect("v1").expose(), "hunter2");
        assert_eq!(secrets.access(&v2).await.expect("v2").expose(), "correct horse");
        assert_eq!(secrets.latest("admin--web--DB_PASSWORD").await.expect("latest"), Some(v2.clone()));
        assert_eq!(secrets.latest("nothing").await.expect("latest"), None);

        let stored = std::fs::read_to_string(dir.path().join("data/secrets.json")).expect("file");
        assert!(!stored.contains("hunter2") && !stored.contains("correct horse"), "{stored}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/secrets.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Reopened with the same key: readable. With another key: a clear error.
        assert_eq!(open(dir.path(), "keys/secrets.key").access(&v1).await.expect("same key").expose(), "hunter2");
        let other = open(dir.path(), "other.key");
        let err = other.access(&v1).await.expect_err("another key");
        assert!(err.to_string().contains("key file is not the one"), "{err}");
        assert!(matches!(secrets.put("bad name", SecretValue::new("x")).await, Err(SecretsError::Invalid(_))));
        let missing = SecretRef { name: "admin--web--DB_PASSWORD".into(), version: 9 };
        assert!(matches!(secrets.access(&missing).await, Err(SecretsError::NotFound(_))));
    }
}
