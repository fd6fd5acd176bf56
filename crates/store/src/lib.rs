//! claas-store: the LoRA root.
//!
//! An adapter is a plain PEFT folder (`adapter_config.json` + `adapter_model.safetensors`)
//! under the root, addressed by its relative path (`user/name`). Aliases live in
//! `{root}/.aliases.json` (alias id -> adapter id), like the reference implementation.
//! Extra state (version counter, optimizer moments) lives under `{root}/.state/{id}/` and is
//! never needed to load an adapter, so a folder copied in by hand is a valid adapter.
//!
//! Every write is atomic: folders are staged under `{root}/.tmp/`, fsynced and renamed into
//! place; a replaced folder is first renamed aside into the same transaction folder, so a
//! crash at any point leaves either the old or the new adapter at the id, or the old one
//! aside where [`LoraStore::open`] puts it back.
//!
//! Several processes may share a root (an API, `claas init`, a second API replica): each
//! transaction holds an OS file lock while it runs, so recovery only touches transactions of
//! dead processes; alias rewrites and adapter updates ([`LoraStore::try_lock_adapter`]) take
//! file locks too. The OS drops them when a process dies.
//!
//! # Version history
//!
//! Updates made with [`LoraStore::commit_version`] / [`LoraStore::create_versioned`] keep
//! every result as an immutable version, so training can be undone:
//!
//! ```text
//! {root}/{id}/                          live PEFT folder: hard links to the current version's files
//! {root}/.versions/{id}/v{N}/           version N (never modified once renamed in)
//!     adapter_config.json
//!     adapter_model.safetensors         (and any other file the writer produced)
//!     optimizer/                        optional: the trainer's state after this version
//!     meta.json                         {"version", "created_utc", "parent", "meta"}
//! {root}/.state/{id}/@current           hint: number of the current version
//! ```
//!
//! The current version is the one whose files the live folder hard-links (same device and
//! inode); where linking failed and files were copied, the `@current` hint names it, trusted
//! only while that version's files still equal the live ones. Inference servers load the live
//! folder by path and never see the history. [`LoraStore::versions`],
//! [`LoraStore::version_info`], [`LoraStore::current_version`], [`LoraStore::rollback`],
//! [`LoraStore::optimizer_dir`], [`LoraStore::resolve_ref`] (`id@vN` references, parsed by
//! [`split_version_ref`]) and [`LoraStore::delete`] work on it; retention
//! ([`LoraStore::set_retention`]) keeps the newest versions plus the current one.
//!
//! Crash tests use a fault hook (`LoraStore::set_fault_hook`, `FaultPoint`) and a forced-copy
//! switch (`LoraStore::set_force_copy`), compiled only with the cargo feature `fault-injection`
//! (and in this crate's own tests).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

mod adapters;
mod aliases;
mod error;
mod export;
#[cfg(any(test, feature = "fault-injection"))]
mod fault;
mod ids;
mod state;
mod txn;
mod versions;

pub use error::{Result, StoreError};
#[cfg(any(test, feature = "fault-injection"))]
pub use fault::{FaultHook, FaultPoint};
pub use ids::{served_name, split_version_ref, validate_id};
pub use state::AdapterLock;
pub use versions::{
    ServedMatch, VersionInfo, DEFAULT_RETENTION, OPTIMIZER_DIR, VERSIONS_DIR_NAME, VERSION_META,
};

/// Name of the alias map inside the root (same as the reference).
pub const ALIASES_FILE_NAME: &str = ".aliases.json";
/// Folder (inside the root) holding side state of adapters.
pub const STATE_DIR_NAME: &str = ".state";
/// Folder (inside the root) holding staged writes and their journals.
pub const TMP_DIR_NAME: &str = ".tmp";
/// The file whose presence makes a folder an adapter.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The PEFT weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Suffix of the alias that points at the newest versioned save.
pub const LATEST_SUFFIX: &str = "-latest";

/// Stops the operation at a crash-test point (compiled out without the `fault-injection`
/// feature, so release builds carry no hook).
macro_rules! fault_point {
    ($store:expr, $point:ident, $rel:expr) => {
        #[cfg(any(test, feature = "fault-injection"))]
        $store.fault($crate::FaultPoint::$point, $rel)?;
    };
}
pub(crate) use fault_point;

/// An id after alias resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAdapter {
    /// The adapter folder's id (never an alias).
    pub id: String,
    /// Absolute path of the adapter folder (or of the version folder for an `@vN` reference).
    pub dir: PathBuf,
    /// The alias that was followed, if the requested id was one.
    pub alias: Option<String>,
}

/// Outcome of [`LoraStore::save_versioned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedVersion {
    /// The new adapter's id, `{base}-{suffix}`.
    pub id: String,
    /// The alias `{base}-latest` now pointing at it, when it was updated.
    pub latest_alias: Option<String>,
    /// Version counter of the new adapter.
    pub version: u64,
}

/// The LoRA root. Cheap to clone. Processes may share a root (see the crate docs); version
/// numbering is only guarded in-process, so writers of one adapter in different processes
/// hold [`LoraStore::try_lock_adapter`] (the API does).
#[derive(Clone)]
pub struct LoraStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    aliases_lock: Mutex<()>,
    version_lock: Mutex<()>,
    /// Serialises history changes (commit, rollback, retention, delete) in this process.
    history_lock: Mutex<()>,
    retention: AtomicUsize,
    /// Tests: copy instead of hard-linking, as on filesystems without links.
    force_copy: AtomicBool,
    #[cfg(any(test, feature = "fault-injection"))]
    fault: std::sync::RwLock<Option<FaultHook>>,
}

impl std::fmt::Debug for LoraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl LoraStore {
    /// Opens (creating if needed) a LoRA root and finishes or rolls back any replacement a
    /// crash interrupted.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let root = root.canonicalize().map_err(|e| StoreError::io(&root, e))?;
        let store = LoraStore {
            inner: Arc::new(Inner {
                root,
                aliases_lock: Mutex::new(()),
                version_lock: Mutex::new(()),
                history_lock: Mutex::new(()),
                retention: AtomicUsize::new(DEFAULT_RETENTION),
                force_copy: AtomicBool::new(false),
                #[cfg(any(test, feature = "fault-injection"))]
                fault: std::sync::RwLock::new(None),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// The root folder (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the adapter folder of `id` is (or would be). Validates the id.
    pub fn adapter_dir(&self, id: &str) -> Result<PathBuf> {
        let id = validate_id(id)?;
        Ok(self.inner.root.join(id))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join(TMP_DIR_NAME)
    }

    /// Whether `path` (which need not exist) stays inside the root once every link on the way
    /// is followed. Its nearest existing ancestor decides; a dangling link or a link loop
    /// there counts as outside, since nothing can be written through it safely.
    pub(crate) fn is_inside_root(&self, path: &Path) -> bool {
        let mut p = path;
        loop {
            match std::fs::symlink_metadata(p) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match p.parent() {
                    Some(parent) => p = parent,
                    None => return false,
                },
                Err(_) => return false,
            }
        }
        p.canonicalize()
            .is_ok_and(|real| real.starts_with(&self.inner.root))
    }

    /// Refuses an id whose folder (or history folder) would be reached through a link out of
    /// the root: writing there would write outside the root.
    pub(crate) fn check_inside_root(&self, id: &str) -> Result<()> {
        let live = self.inner.root.join(id);
        let history = self.inner.root.join(VERSIONS_DIR_NAME).join(id);
        if self.is_inside_root(&live) && self.is_inside_root(&history) {
            Ok(())
        } else {
            Err(StoreError::invalid(
                id,
                "is reached through a link out of the LoRA root (or a broken link)",
            ))
        }
    }
}

#[cfg(test)]
mod tests;
