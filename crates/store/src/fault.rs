//! Crash simulation for tests (feature `fault-injection`): a hook that makes an operation stop
//! at a named point as if the process died there.

use std::sync::Arc;

use crate::{LoraStore, Result, StoreError};

/// Points in the store's transactions where a test can simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The new folder is fully written and fsynced in staging; nothing at the id changed.
    Staged,
    /// The old folder was renamed aside; the id is momentarily empty.
    MovedAside,
    /// The new folder is in place; the old one still sits aside.
    Swapped,
    /// The live folder of an unversioned adapter was just kept as a snapshot version.
    SnapshotTaken,
    /// A new version is fully written in staging; nothing visible changed.
    VersionStaged,
    /// The new version is renamed into `.versions`; the live folder is still the old one.
    VersionCommitted,
    /// The live folder was swapped and the current-version hint written; retention not run.
    HintWritten,
    /// Retention renamed an old version out of `.versions` and has not removed it yet.
    RetentionMoved,
    /// A delete moved the live folder into its journal; versions, state, aliases remain.
    DeleteMovedLive,
    /// A delete also removed the aliases; versions and state remain.
    DeleteAliasesRemoved,
}

/// Test hook: called with the point and the root-relative target; returning `true` makes
/// the operation stop right there as if the process died (no cleanup, no rollback).
pub type FaultHook = Arc<dyn Fn(FaultPoint, &str) -> bool + Send + Sync>;

impl LoraStore {
    /// Installs (or removes) the crash-simulation hook. Tests only.
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        if let Ok(mut g) = self.inner.fault.write() {
            *g = hook;
        }
    }

    /// Makes version saves copy files instead of hard-linking them, as on a filesystem
    /// without hard links. Tests only.
    pub fn set_force_copy(&self, on: bool) {
        self.inner
            .force_copy
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn fault(&self, point: FaultPoint, rel: &str) -> Result<()> {
        let hook = self.inner.fault.read().ok().and_then(|g| g.clone());
        match hook {
            Some(h) if h(point, rel) => Err(StoreError::InjectedFault(point)),
            _ => Ok(()),
        }
    }
}
