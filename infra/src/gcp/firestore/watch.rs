//! A session's events as they are appended, from Firestore's `Listen`.
//!
//! The listen target is the query "events of this session with seq > last". Documents it
//! reports are held until the server marks a consistent snapshot (a target change), then
//! released in sequence order; a hole in the sequence (an event the stream skipped, or one
//! that arrived out of order) is filled from a query, so the stream never has gaps or
//! duplicates. When the listen stream breaks, it is reopened after the last event delivered.

use super::FirestoreStore;
use devgem_common::ids::SessionId;
use devgem_common::ports::store::{EventStream, Scope, SessionEvent, Store, StoreError};
use firestore::gcloud_sdk::google::firestore::v1 as fs;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events read per catch-up query.
const PAGE: usize = 500;
/// Consecutive failures after which the stream reports the error (and keeps trying).
const REPORT_AFTER: u32 = 3;

pub(super) fn watch(store: FirestoreStore, scope: Scope, session: SessionId, after: u64) -> EventStream {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(Watcher { store, scope, session, last: after, tx }.run());
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

struct Watcher {
    store: FirestoreStore,
    scope: Scope,
    session: SessionId,
    last: u64,
    tx: mpsc::Sender<Result<SessionEvent, StoreError>>,
}

/// The watcher stops when its reader is gone.
struct Gone;

impl Watcher {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let outcome = match self.catch_up().await {
                Ok(Ok(())) => self.listen().await,
                other => other,
            };
            match outcome {
                Ok(Ok(())) => failures = 0,
                Ok(Err(Gone)) => return,
                Err(e) => {
                    failures += 1;
                    if failures >= REPORT_AFTER && self.tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            }
            if self.tx.is_closed() {
                return;
            }
            let delay = Duration::from_millis(100 << failures.min(6));
            tokio::time::sleep(delay).await;
        }
    }

    async fn send(&mut self, event: SessionEvent) -> Result<(), Gone> {
        if event.seq != self.last + 1 {
            return Ok(());
        }
        self.last = event.seq;
        if !self.scope.allows(&event.owner) {
            return Ok(());
        }
        self.tx.send(Ok(event)).await.map_err(|_| Gone)
    }

    /// Delivers everything after `last` that a query finds.
    async fn catch_up(&mut self) -> Result<Result<(), Gone>, StoreError> {
        loop {
            let events = self.store.events_after(&Scope::All, &self.session, self.last, PAGE).await?;
            let full = events.len() == PAGE;
            for event in events {
                if let Err(gone) = self.send(event).await {
                    return Ok(Err(gone));
                }
            }
            if !full {
                return Ok(Ok(()));
            }
        }
    }

    /// Follows the listen stream until it ends.
    async fn listen(&mut self) -> Result<Result<(), Gone>, StoreError> {
        let store = self.store.clone();
        let request = fs::ListenRequest {
            database: store.inner.database.clone(),
            target_change: Some(fs::listen_request::TargetChange::AddTarget(fs::Target {
                target_id: 1,
                target_type: Some(fs::target::TargetType::Query(fs::target::QueryTarget {
                    parent: store.events_parent(&self.session),
                    query_type: Some(fs::target::query_target::QueryType::StructuredQuery(
                        FirestoreStore::events_query(self.last, None),
                    )),
                })),
                ..Default::default()
            })),
            ..Default::default()
        };
        // The request side stays open: closing it would end the listen.
        let requests = futures_util::stream::once(std::future::ready(request)).chain(futures_util::stream::pending());
        let mut responses = store
            .client()
            .listen(requests)
            .await
            .map_err(|s| StoreError::Unavailable(format!("Firestore listen: {}", s.message())))?
            .into_inner();
        let mut held: BTreeMap<u64, SessionEvent> = BTreeMap::new();
        loop {
            tokio::select! {
                () = self.tx.closed() => return Ok(Err(Gone)),
                response = responses.next() => {
                    let Some(response) = response else { return Ok(Ok(())) };
                    let response = response.map_err(|s| StoreError::Unavailable(format!("Firestore listen: {}", s.message())))?;
                    match response.response_type {
                        Some(fs::listen_response::ResponseType::DocumentChange(change)) => {
                            if let Some(doc) = change.document {
                                let event = store.to_event(&self.session, &doc).await?;
                                if event.seq > self.last {
                                    held.insert(event.seq, event);
                                }
                            }
                        }
                        Some(fs::listen_response::ResponseType::TargetChange(_)) => {
                            if let Err(gone) = self.release(&mut held).await? {
                                return Ok(Err(gone));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Sends the held events that follow `last`; a hole is filled from a query.
    async fn release(&mut self, held: &mut BTreeMap<u64, SessionEvent>) -> Result<Result<(), Gone>, StoreError> {
        while let Some(event) = held.remove(&(self.last + 1)) {
            if let Err(gone) = self.send(event).await {
                return Ok(Err(gone));
            }
        }
        if !held.is_empty() {
            if let Err(gone) = self.catch_up().await? {
                return Ok(Err(gone));
            }
            held.retain(|seq, _| *seq > self.last);
        }
        Ok(Ok(()))
    }
}
