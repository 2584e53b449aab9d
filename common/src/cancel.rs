//! Work a handler is doing now that another handler (an abort) may need to stop: each running
//! piece registers under a key and races its work against the cancel signal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// The running work of one process, by key (a deployment id).
#[derive(Debug, Clone, Default)]
pub struct Cancels {
    running: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
}

/// Why a cancellable piece of work did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl Cancels {
    /// Cancels the work registered under `key`; whether there was any.
    pub fn cancel(&self, key: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get(key) {
            Some(sender) => {
                sender.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Runs `work` under `key` until it ends or is cancelled (then `work` is dropped at once).
    pub async fn run<T>(&self, key: &str, work: impl Future<Output = T>) -> Result<T, Cancelled> {
        let (tx, mut rx) = watch::channel(false);
        self.running.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned(), tx);
        let outcome = tokio::select! {
            value = work => Ok(value),
            _ = rx.wait_for(|c| *c) => Err(Cancelled),
        };
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn cancelling_stops_the_work_and_unknown_keys_are_reported() {
        let cancels = Cancels::default();
        assert!(!cancels.cancel("d1"));
        let runner = cancels.clone();
        let task = tokio::spawn(async move { runner.run("d1", tokio::time::sleep(Duration::from_secs(60))).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(cancels.cancel("d1"));
        let outcome = tokio::time::timeout(Duration::from_secs(1), task).await.expect("stops at once").expect("joins");
        assert_eq!(outcome, Err(Cancelled));
        assert_eq!(cancels.run("d2", async { 7 }).await, Ok(7));
        assert!(!cancels.cancel("d2"), "finished work is no longer registered");
    }
}
