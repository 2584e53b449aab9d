//! The processed-event ledger: side effects that must happen once, whatever the redeliveries.
//!
//! Two shapes:
//! - [`once_in_tx`] for effects that are store writes: the ledger entry is created in the same
//!   transaction as the writes, so they apply exactly once.
//! - [`run_once`] for effects outside the store (submitting a build, creating a revision): the
//!   key is claimed with a lease, the effect runs, and its result is recorded; a duplicate gets
//!   the recorded result instead of a second effect. A claim whose holder died expires with its
//!   lease and is taken over.

use crate::clock::Clock;
use crate::ids::UserId;
use crate::ports::store::{Committed, DocKey, Scope, Store, StoreError, Write, to_data};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::future::Future;

/// Whether the effect ran now or had already run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once<T> {
    Applied(T),
    AlreadyDone(T),
}

impl<T> Once<T> {
    pub fn into_inner(self) -> T {
        match self {
            Once::Applied(t) | Once::AlreadyDone(t) => t,
        }
    }

    pub fn was_applied(&self) -> bool {
        matches!(self, Once::Applied(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another worker holds the claim and its lease has not expired: retry later.
    #[error("{key} is being processed by another worker until {lease_until}")]
    InProgress { key: String, lease_until: DateTime<Utc> },
    /// The effect itself failed; the claim was released so a retry can run it again.
    #[error("side effect failed: {0}")]
    Effect(E),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Entry {
    Claimed { lease_until: DateTime<Utc> },
    Done { result: Value, done_at: DateTime<Utc> },
}

fn ledger_key(key: &str) -> Result<DocKey, StoreError> {
    DocKey::new("processed", key)
}

/// Applies `writes` together with the ledger entry for `key`, once. A second call with the same
/// key applies nothing and returns `AlreadyDone`.
pub async fn once_in_tx(
    store: &dyn Store,
    key: &str,
    now: DateTime<Utc>,
    mut writes: Vec<Write>,
) -> Result<Once<Option<Committed>>, StoreError> {
    let entry = Entry::Done { result: Value::Null, done_at: now };
    let ledger = Write::Create { key: ledger_key(key)?, owner: UserId::system(), data: to_data(&entry)? };
    writes.insert(0, ledger);
    match store.commit(writes).await {
        Ok(committed) => Ok(Once::Applied(Some(committed))),
        Err(e) if e.is_conflict() => {
            // The conflict may be the ledger entry (done before) or another write (a real
            // conflict the caller must see).
            match store.get(&Scope::All, &ledger_key(key)?).await? {
                Some(_) => Ok(Once::AlreadyDone(None)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The recorded result of the effect done under `key`, if it is done.
pub async fn recorded<T: DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<T>, StoreError> {
    let Some(doc) = store.get(&Scope::All, &ledger_key(key)?).await? else { return Ok(None) };
    match doc.parse::<Entry>()? {
        Entry::Done { result, .. } => {
            serde_json::from_value(result).map(Some).map_err(|e| StoreError::Corrupt(format!("ledger {key}: {e}")))
        }
        Entry::Claimed { .. } => Ok(None),
    }
}

/// Runs `effect` once for `key`; its result is recorded and returned to every later caller.
pub async fn run_once<T, E, F, Fut>(
    store: &dyn Store,
    clock: &dyn Clock,
    key: &str,
    lease: chrono::Duration,
    effect: F,
) -> Result<Once<T>, LedgerError<E>>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let doc_key = ledger_key(key)?;
    let claim = Entry::Claimed { lease_until: clock.now() + lease };
    let claimed_version = match store
        .commit(vec![Write::Create { key: doc_key.clone(), owner: UserId::system(), data: to_data(&claim)? }])
        .await
    {
        Ok(committed) => committed.version(0).unwrap_or(1),
        Err(e) if e.is_conflict() => {
            let Some(doc) = store.get(&Scope::All, &doc_key).await? else {
                // Released between our create and read: the caller's retry will claim it.
                return Err(LedgerError::Store(e));
            };
            match doc.parse::<Entry>()? {
                Entry::Done { result, .. } => {
                    let value = serde_json::from_value(result)
                        .map_err(|e| StoreError::Corrupt(format!("ledger {key}: {e}")))?;
                    return Ok(Once::AlreadyDone(value));
                }
                Entry::Claimed { lease_until } if lease_until > clock.now() => {
                    return Err(LedgerError::InProgress { key: key.to_owned(), lease_until });
                }
                Entry::Claimed { .. } => {
                    // The holder's lease ran out: take the claim over, conditionally.
                    let data = to_data(&claim)?;
                    store
                        .commit(vec![Write::Update { key: doc_key.clone(), expected_version: doc.version, data }])
                        .await?
                        .version(0)
                        .unwrap_or(doc.version + 1)
                }
            }
        }
        Err(e) => return Err(e.into()),
    };

    match effect().await {
        Ok(value) => {
            let done = Entry::Done { result: to_data(&value)?, done_at: clock.now() };
            store
                .commit(vec![Write::Update { key: doc_key, expected_version: claimed_version, data: to_data(&done)? }])
                .await?;
            Ok(Once::Applied(value))
        }
        Err(effect_error) => {
            // Release the claim so a redelivery can try again; if that fails, the lease expires.
            let release = Write::Delete { key: doc_key, expected_version: Some(claimed_version) };
            if let Err(e) = store.commit(vec![release]).await {
                tracing::warn!(key, error = %e, "could not release ledger claim; it will expire");
            }
            Err(LedgerError::Effect(effect_error))
        }
    }
}
