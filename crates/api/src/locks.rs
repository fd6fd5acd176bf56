//! Per-adapter locks: feedback on one adapter is serialised, other adapters proceed in
//! parallel. Two levels: an async mutex orders this process's requests fairly, then the
//! store's file lock keeps out other processes sharing the LoRA root.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claas_store::{AdapterLock, LoraStore};
use tokio::sync::OwnedMutexGuard;

/// How often a request waiting for another process's update looks again.
const FILE_LOCK_POLL: Duration = Duration::from_millis(25);

/// Held while an adapter is being updated.
#[derive(Debug)]
pub struct AdapterGuard {
    _process: OwnedMutexGuard<()>,
    _file: Option<AdapterLock>,
}

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

    /// Waits up to `timeout` for the lock of `key` in this process and, for updates
    /// (`across_processes`), then for the store's file lock of the adapter, which other
    /// processes sharing the root respect; `Ok(None)` on timeout. Reads and the creation of a
    /// new adapter take only the first: they need no lock file on disk.
    pub async fn acquire(
        &self,
        key: &str,
        timeout: Duration,
        across_processes: Option<&LoraStore>,
    ) -> Result<Option<AdapterGuard>, claas_store::StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let m = self.lock_for(key);
        let Ok(process) = tokio::time::timeout_at(deadline, m.lock_owned()).await else {
            return Ok(None);
        };
        let Some(store) = across_processes else {
            return Ok(Some(AdapterGuard {
                _process: process,
                _file: None,
            }));
        };
        loop {
            if let Some(file) = store.try_lock_adapter(key)? {
                return Ok(Some(AdapterGuard {
                    _process: process,
                    _file: Some(file),
                }));
            }
            if tokio::time::Instant::now() + FILE_LOCK_POLL > deadline {
                return Ok(None);
            }
            tokio::time::sleep(FILE_LOCK_POLL).await;
        }
    }

    /// Takes this process's lock of `key` if it is free (not the cross-process one; for tests
    /// and embedders that need to hold an adapter still).
    pub fn try_acquire(&self, key: &str) -> Option<AdapterGuard> {
        let process = self.lock_for(key).try_lock_owned().ok()?;
        Some(AdapterGuard {
            _process: process,
            _file: None,
        })
    }
}
