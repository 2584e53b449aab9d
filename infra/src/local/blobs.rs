//! Embedded Blobs: one file per blob under `<data dir>/blobs`. A put writes a temporary file in
//! `<root>/.tmp`, fsyncs it and renames it into place, so readers see the old blob or the new one,
//! never a part. Keys are [`BlobKey`]s, which cannot name anything outside the root.

use async_trait::async_trait;
use bytes::Bytes;
use devgem_common::ports::blobs::{BlobError, BlobKey, BlobMeta, Blobs, ByteStream};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TMP_DIR: &str = ".tmp";
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root.join(TMP_DIR))?;
        Ok(Self { root: root.to_owned() })
    }

    fn path_of(&self, key: &BlobKey) -> PathBuf {
        key.segments().fold(self.root.clone(), |path, segment| path.join(segment))
    }
}

/// Whether an error on a key's path means there is no blob there: nothing at all, a directory
/// (the key is a prefix of other keys), or a file above it (the key lies below another blob's).
fn is_missing(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory | ErrorKind::NotADirectory)
}

fn not_found(key: &BlobKey, e: std::io::Error) -> BlobError {
    if is_missing(&e) { BlobError::NotFound(key.to_string()) } else { BlobError::Io(e) }
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<BlobMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if dir == root && entry.file_name() == TMP_DIR {
                continue;
            }
            walk(root, &path, prefix, out)?;
        } else if kind.is_file() {
            let Ok(relative) = path.strip_prefix(root) else { continue };
            let Some(text) = relative.to_str() else { continue };
            let key_text = text.replace(std::path::MAIN_SEPARATOR, "/");
            if key_text.starts_with(prefix)
                && let Ok(key) = BlobKey::parse(&key_text)
            {
                out.push(BlobMeta { key, size: entry.metadata()?.len() });
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Blobs for LocalBlobs {
    async fn put(&self, key: &BlobKey, mut body: ByteStream) -> Result<u64, BlobError> {
        let target = self.path_of(key);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let tmp = self.root.join(TMP_DIR).join(uuid::Uuid::new_v4().simple().to_string());
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await?;
                size += chunk.len() as u64;
            }
            file.sync_all().await?;
            Ok::<_, BlobError>(size)
        }
        .await;
        match written {
            Ok(size) => {
                tokio::fs::rename(&tmp, &target).await?;
                Ok(size)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    async fn get(&self, key: &BlobKey) -> Result<ByteStream, BlobError> {
        let file = tokio::fs::File::open(self.path_of(key)).await.map_err(|e| not_found(key, e))?;
        // A directory opens like a file; only reading it fails.
        if !file.metadata().await.map_err(|e| not_found(key, e))?.is_file() {
            return Err(BlobError::NotFound(key.to_string()));
        }
        let stream = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(BlobError::Io(e)), None)),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let mut found = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &prefix, &mut out).map(|()| out)
        })
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))??;
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &BlobKey) -> Result<bool, BlobError> {
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(BlobError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devgem_common::ports::blobs::BlobsExt;

    fn key(raw: &str) -> BlobKey {
        BlobKey::parse(raw).expect("valid key")
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = LocalBlobs::open(dir.path()).expect("open");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        blobs.put_bytes(&key("builds/d1/log.txt"), Bytes::from(big.clone())).await.expect("put");
        blobs.put_bytes(&key("builds/d2/log.txt"), Bytes::from_static(b"two")).await.expect("put");
        blobs.put_bytes(&key("sources/x.tar"), Bytes::from_static(b"src")).await.expect("put");

        let mut stream = blobs.get(&key("builds/d1/log.txt")).await.expect("get");
        let mut chunks = 0;
        let mut back = Vec::new();
        while let Some(chunk) = stream.next().await {
            back.extend_from_slice(&chunk.expect("chunk"));
            chunks += 1;
        }
        assert_eq!(back, big);
        assert!(chunks > 1, "large blobs stream in chunks");

        let listed: Vec<String> =
            blobs.list("builds/").await.expect("list").into_iter().map(|m| m.key.to_string()).collect();
        assert_eq!(listed, ["builds/d1/log.txt", "builds/d2/log.txt"]);
        assert_eq!(blobs.list("").await.expect("list all").len(), 3, "temporary files are not listed");

        assert!(blobs.delete(&key("builds/d2/log.txt")).await.expect("delete"));
        assert!(!blobs.delete(&key("builds/d2/log.txt")).await.expect("delete again"));
        let err = blobs.get(&key("builds/d2/log.txt")).await.err().expect("gone");
        assert!(err.is_not_found());
    }

    #[tokio::test]
    async fn replace_is_atomic_and_failed_put_keeps_old_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = LocalBlobs::open(dir.path()).expect("open");
        let k = key("a/b");
        blobs.put_bytes(&k, Bytes::from_static(b"old")).await.expect("put");
        let failing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"partial")),
            Err(BlobError::Unavailable("client went away".into())),
        ]);
        assert!(blobs.put(&k, Box::pin(failing)).await.is_err());
        assert_eq!(blobs.get_bytes(&k).await.expect("old blob").as_ref(), b"old");
        assert!(std::fs::read_dir(dir.path().join(TMP_DIR)).expect("tmp").next().is_none(), "no temp file left");
        blobs.put_bytes(&k, Bytes::from_static(b"new")).await.expect("put");
        assert_eq!(blobs.get_bytes(&k).await.expect("new blob").as_ref(), b"new");
    }

    #[test]
    fn paths_stay_under_the_root() {
        let blobs = LocalBlobs { root: PathBuf::from("/data/blobs") };
        let path = blobs.path_of(&key("x/y.z"));
        assert!(path.starts_with("/data/blobs"));
        assert!(BlobKey::parse("../../etc/passwd").is_err());
    }
}
