//! Side state of adapters under `{root}/.state/{id}/`: named state folders (legacy optimizer
//! moments), the save counter, the current-version hint and the cross-process update lock.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::txn::{open_lock_file, write_file_atomic};
use crate::{validate_id, LoraStore, Result, StoreError, STATE_DIR_NAME};

/// State names the store keeps for itself.
const RESERVED_STATE: [&str; 3] = ["lock", "version", "current"];

/// Exclusive, cross-process right to update one adapter; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct AdapterLock {
    _file: File,
}

fn validate_state_name(name: &str) -> Result<()> {
    if RESERVED_STATE.contains(&name) {
        return Err(StoreError::invalid(
            name,
            "this state name is reserved by the store (update lock, version counter, current version)",
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(StoreError::invalid(name, "state names are [A-Za-z0-9_-]+"));
    }
    Ok(())
}

impl LoraStore {
    /// The side-state folder of adapter `id` (`{root}/.state/{id}`); may not exist.
    pub fn state_dir(&self, id: &str) -> Result<PathBuf> {
        let id = validate_id(id)?;
        Ok(self.inner.root.join(STATE_DIR_NAME).join(id))
    }

    /// Path of the named side state of `id`. Names get an `@` prefix, a character ids cannot
    /// contain, so state never collides with the state folder of a nested id.
    pub fn state_path(&self, id: &str, name: &str) -> Result<PathBuf> {
        Ok(self.state_dir(id)?.join(format!("@{name}")))
    }

    fn state_rel(id: &str, name: &str) -> String {
        format!("{STATE_DIR_NAME}/{id}/@{name}")
    }

    /// Atomically replaces the named side state folder of `id` (e.g. `optimizer`).
    pub fn save_state<F, E>(&self, id: &str, name: &str, write: F) -> Result<()>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = validate_id(id)?;
        validate_state_name(name)?;
        self.replace_dir(&Self::state_rel(id, name), false, write)
    }

    /// The named side state folder of `id` if it exists.
    pub fn load_state(&self, id: &str, name: &str) -> Result<Option<PathBuf>> {
        validate_state_name(name)?;
        let p = self.state_path(id, name)?;
        Ok(p.is_dir().then_some(p))
    }

    /// Removes the named side state of `id` (no error if absent).
    pub fn clear_state(&self, id: &str, name: &str) -> Result<()> {
        validate_state_name(name)?;
        let p = self.state_path(id, name)?;
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, e)),
        }
    }

    /// Version number of what is live at `id`: the current history version (see
    /// [`LoraStore::commit_version`]) when there is one, else the counter bumped by every
    /// [`LoraStore::save_atomic`] (0 = never saved through the store, e.g. a folder copied in
    /// by hand). Serving can key caches on `(id, version)`: both kinds of number name one
    /// content (a rollback to vK gives K again, with vK's files).
    pub fn version(&self, id: &str) -> Result<u64> {
        let id = validate_id(id)?;
        if let Some(n) = self.current_of(id)? {
            return Ok(n);
        }
        self.save_counter(id)
    }

    fn save_counter(&self, id: &str) -> Result<u64> {
        let p = self.state_path(id, "version")?;
        match fs::read_to_string(&p) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|e| StoreError::io(&p, io::Error::new(io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(&p, e)),
        }
    }

    pub(crate) fn bump_version(&self, id: &str) -> Result<u64> {
        let _g = self
            .inner
            .version_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A corrupt counter must not block saves; it then restarts from 1. Past history
        // numbers are skipped so `(id, version)` never names two contents.
        let current = self.save_counter(id).unwrap_or(0);
        let next = current.max(self.max_version_number(id)?.unwrap_or(0)) + 1;
        write_file_atomic(
            &self.state_path(id, "version")?,
            next.to_string().as_bytes(),
        )?;
        self.ensure_lock_file(id)?;
        Ok(next)
    }

    /// The update lock's file is created with the adapter's state, not by the first update,
    /// which may then fail with nothing on disk changed.
    pub(crate) fn ensure_lock_file(&self, id: &str) -> Result<()> {
        open_lock_file(&self.state_path(id, "lock")?).map(drop)
    }

    /// Takes the cross-process update lock of adapter `id` if no other holder has it (another
    /// process, or another call in this one). The lock file lives in the side state; saves
    /// create it, so only an adapter copied in by hand gets it from its first update.
    pub fn try_lock_adapter(&self, id: &str) -> Result<Option<AdapterLock>> {
        let path = self.state_path(id, "lock")?;
        let f = open_lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(AdapterLock { _file: f })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
        }
    }
}
