//! Per-adapter locks: feedback on one adapter is serialised, other adapters proceed in
//! parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

/// Held while an adapter is being updated.
pub type AdapterGuard = OwnedMutexGuard<()>;

/// Map from resolved adapter id to its lock.
#[derive(Debug, Default)]
pub struct AdapterLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AdapterLocks {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = key.trim_matches('/').to_string();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    }

    /// Waits up to `timeout` for the lock of `key`; `None` on timeout.
    pub async fn acquire(&self, key: &str, timeout: Duration) -> Option<AdapterGuard> {
        let m = self.lock_for(key);
        tokio::time::timeout(timeout, m.lock_owned()).await.ok()
    }

    /// Takes the lock of `key` if it is free.
    pub fn try_acquire(&self, key: &str) -> Option<AdapterGuard> {
        self.lock_for(key).try_lock_owned().ok()
    }
}
