//! The Blobs port: large, write-once things (full build logs, source snapshots, generated files
//! over 256 KB) stored by key, read as streams.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::fmt;

/// A blob key: `/`-separated segments of letters, digits, `.`, `-` and `_`; no empty, `.` or `..`
/// segment, no leading `/`, no NUL or backslash, at most 1,024 bytes. So a key can never name a
/// place outside the blob root, whatever the adapter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid blob key {key:?}: {reason}")]
pub struct InvalidBlobKey {
    pub key: String,
    pub reason: &'static str,
}

impl BlobKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidBlobKey> {
        let fail = |reason| Err(InvalidBlobKey { key: raw.chars().take(80).collect(), reason });
        if raw.is_empty() || raw.len() > 1024 {
            return fail("must be 1 to 1024 bytes");
        }
        if raw.starts_with('/') {
            return fail("must be relative (no leading '/')");
        }
        for segment in raw.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return fail("no empty, '.' or '..' segments");
            }
            if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                return fail("segments use only letters, digits, '.', '-' and '_'");
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `list` returns for each blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: BlobKey,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error(transparent)]
    InvalidKey(#[from] InvalidBlobKey),
    #[error("blob storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob storage unavailable: {0}")]
    Unavailable(String),
}

impl BlobError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// A stream of chunks.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

#[async_trait]
pub trait Blobs: Send + Sync + fmt::Debug {
    /// Stores the whole stream under `key`, replacing any previous blob atomically: readers see
    /// the old blob or the new one, never a part. Returns the size written.
    async fn put(&self, key: &BlobKey, body: ByteStream) -> Result<u64, BlobError>;

    /// Streams the blob.
    async fn get(&self, key: &BlobKey) -> Result<ByteStream, BlobError>;

    /// Blobs whose key starts with `prefix` (segment-wise or not), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError>;

    /// Removes the blob; `false` if there was none.
    async fn delete(&self, key: &BlobKey) -> Result<bool, BlobError>;
}

/// Whole-value conveniences over any [`Blobs`].
#[async_trait]
pub trait BlobsExt: Blobs {
    async fn put_bytes(&self, key: &BlobKey, bytes: Bytes) -> Result<u64, BlobError> {
        let stream = futures_util::stream::once(async move { Ok(bytes) });
        self.put(key, Box::pin(stream)).await
    }

    async fn get_bytes(&self, key: &BlobKey) -> Result<Bytes, BlobError> {
        use futures_util::StreamExt;
        let mut stream = self.get(key).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.into())
    }
}

impl<B: Blobs + ?Sized> BlobsExt for B {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_cannot_escape() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a\0b", "a\\b", "a/"] {
            assert!(BlobKey::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(BlobKey::parse("builds/d-1/log.txt").is_ok());
    }

    proptest! {
        #[test]
        fn accepted_keys_have_only_safe_segments(raw in "\\PC{0,64}") {
            if let Ok(key) = BlobKey::parse(&raw) {
                for seg in key.segments() {
                    prop_assert!(seg != ".." && seg != "." && !seg.is_empty());
                    prop_assert!(!seg.contains('\0') && !seg.contains('\\'));
                }
                prop_assert!(!key.as_str().starts_with('/'));
            }
        }
    }
}
