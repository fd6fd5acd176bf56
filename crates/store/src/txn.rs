//! Transactions: staging folders under `.tmp/`, the journal that lets a crashed replacement be
//! rolled back (or a crashed delete be finished) at the next [`LoraStore::open`], and the
//! cross-process locks that keep recovery away from live writers.
//!
//! A transaction folder `.tmp/txn-{uid}/` holds: `lock` (held by its process), `target` (the
//! root-relative folder being replaced), `new` (the staged folder), `old` (the replaced folder
//! once moved aside), and for deletes `delete` (the adapter id) and `live` (its moved folder).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::{fault_point, LoraStore, Result, StoreError, ADAPTER_CONFIG};

/// Lock file inside a transaction folder, held by the process running the transaction.
pub(crate) const TXN_LOCK: &str = "lock";

/// A `pre-` folder lives for microseconds before it is locked and renamed; one older than this
/// is left over from a writer that died in between.
const STALE_PRE: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) fn fsync_path(path: &Path) -> Result<()> {
    claas_fsatomic::sync_dir(path).map_err(|e| StoreError::io(path, e))
}

/// fsyncs every regular file and folder under `dir`, children first.
pub(crate) fn fsync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let ty = entry
            .file_type()
            .map_err(|e| StoreError::io(entry.path(), e))?;
        if ty.is_dir() {
            fsync_tree(&entry.path())?;
        } else if ty.is_file() {
            File::open(entry.path())
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(entry.path(), e))?;
        }
    }
    fsync_path(dir)
}

/// Writes `bytes` to `path` atomically, creating the parent folder if needed.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    }
    claas_fsatomic::write_file(path, bytes).map_err(|e| StoreError::io(path, e))
}

pub(crate) fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(path, e))
}

/// How a recovering opener may treat a folder under `.tmp/`.
enum Claim {
    /// A live process (this one included) holds its lock: leave it alone.
    Live,
    /// Its lock is ours until dropped: its writer is dead.
    Claimed(#[allow(dead_code)] File),
    /// It has no lock file: a writer that died before locking (or a store older than locks).
    Unlocked,
}

fn claim(dir: &Path) -> Claim {
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(TXN_LOCK))
    {
        Ok(f) => match f.try_lock() {
            Ok(()) => Claim::Claimed(f),
            Err(_) => Claim::Live,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Claim::Unlocked,
        // Cannot tell: leave it to a later open.
        Err(_) => Claim::Live,
    }
}

/// Removes a transaction folder of this process, still locked: renamed to `del-` first, so no
/// other opener ever sees a `txn-` folder whose lock file is already gone.
fn discard_txn(txn: &Path) {
    let name = txn
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let del = txn.with_file_name(format!("del-{}", name.trim_start_matches("txn-")));
    let res = fs::rename(txn, &del).and_then(|()| fs::remove_dir_all(&del));
    if let Err(e) = res {
        // Whatever is left is removed by a later `open`.
        tracing::warn!(txn = %txn.display(), error = %e, "could not remove a transaction folder");
    }
}

/// A running transaction: its folder under `.tmp/` and the lock that tells other openers it
/// is alive. Dropping it without [`Txn::discard`] leaves the folder for recovery, which is
/// what a crash does.
pub(crate) struct Txn {
    pub(crate) dir: PathBuf,
    _lock: File,
}

impl Txn {
    /// Removes the finished (or cleanly abandoned) transaction.
    pub(crate) fn discard(self) {
        discard_txn(&self.dir);
    }
}

/// Whether an error is a simulated crash, after which nothing may be cleaned up.
pub(crate) fn is_crash(e: &StoreError) -> bool {
    #[cfg(any(test, feature = "fault-injection"))]
    if matches!(e, StoreError::InjectedFault(_)) {
        return true;
    }
    let _ = e;
    false
}

impl LoraStore {
    /// Rolls back or completes interrupted replacements recorded under `.tmp/`.
    pub(crate) fn recover(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        // Recovery deletes and moves what it finds: never through a link out of the root
        // (a `.tmp` that is a link, or links inside it, are not the store's own).
        let tmp_is_link = fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_symlink());
        if tmp_is_link {
            tracing::warn!(path = %tmp.display(), "the LoRA root's .tmp is a link; not recovering through it");
        }
        if tmp.is_dir() && !tmp_is_link {
            for entry in fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
                let entry = entry.map_err(|e| StoreError::io(&tmp, e))?;
                let dir = entry.path();
                let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(true);
                if is_link || !dir.is_dir() {
                    // Removes the link itself, never what it points at.
                    let _ = fs::remove_file(&dir);
                    continue;
                }
                let name = entry.file_name().to_string_lossy().to_string();
                let held = claim(&dir);
                if matches!(held, Claim::Live) {
                    continue;
                }
                if name.starts_with("txn-") {
                    // Writers only drop a `txn-` folder's lock by dying (see `discard_txn`).
                    if let Err(e) = self.recover_txn(&dir) {
                        if dir.exists() {
                            return Err(e);
                        }
                    }
                } else {
                    let stale = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_PRE);
                    // `del-` folders are finished; `pre-` ones may belong to a writer that has
                    // not locked yet, unless old.
                    let claimed = matches!(held, Claim::Claimed(_));
                    if name.starts_with("del-") || stale || (claimed && !name.starts_with("pre-")) {
                        let _ = fs::remove_dir_all(&dir);
                    }
                }
                drop(held);
            }
        }
        // Stray temp files of atomic single-file writes (only `.aliases.json` is written in the
        // root, under the alias lock: holding it, no live writer owns such a file).
        let _aliases = self.lock_aliases_file()?;
        let root = &self.inner.root;
        for entry in fs::read_dir(root)
            .map_err(|e| StoreError::io(root, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().to_string();
            // `.…tmp` names are those of stores before claas-fsatomic.
            let temp = claas_fsatomic::is_temp_name(&name)
                || (name.starts_with('.') && name.ends_with(".tmp"));
            if temp && entry.path().is_file() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Undoes a half-done swap (old folder aside, nothing at the target): the new folder was
    /// never acknowledged, so the old one goes back.
    fn restore_aside(&self, txn: &Path) -> Result<()> {
        let Ok(rel) = fs::read_to_string(txn.join("target")) else {
            return Ok(());
        };
        let rel = rel.trim();
        let target = self.inner.root.join(rel);
        let old = txn.join("old");
        let safe = !rel.is_empty()
            && !rel.split('/').any(|c| c == ".." || c.is_empty())
            && self.is_inside_root(&target);
        if safe && !target.exists() && old.is_dir() {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            }
            fs::rename(&old, &target).map_err(|e| StoreError::io(&target, e))?;
            if let Some(parent) = target.parent() {
                fsync_path(parent)?;
            }
            tracing::warn!(target = %target.display(), "restored adapter folder after an interrupted save");
        }
        Ok(())
    }

    fn recover_txn(&self, txn: &Path) -> Result<()> {
        if let Ok(id) = fs::read_to_string(txn.join("delete")) {
            let id = id.trim();
            // Moving the live folder in is a delete's commit point: finish it, unless the id
            // has meanwhile been created again.
            if crate::validate_id(id).is_ok()
                && self.check_inside_root(id).is_ok()
                && txn.join("live").is_dir()
                && !self.inner.root.join(id).exists()
            {
                self.finish_delete(id, txn)?;
                tracing::warn!(id, "finished an interrupted delete");
            }
        } else {
            self.restore_aside(txn)?;
        }
        fs::remove_dir_all(txn).map_err(|e| StoreError::io(txn, e))?;
        Ok(())
    }

    /// Starts a transaction: a locked `txn-` folder under `.tmp/`.
    pub(crate) fn begin_txn(&self) -> Result<Txn> {
        let tmp = self.tmp_dir();
        let uid = uuid::Uuid::new_v4().simple();
        // Locked before it gets its `txn-` name, so another process's recovery never sees it
        // unlocked while this one runs.
        let pre = tmp.join(format!("pre-{uid}"));
        let txn = tmp.join(format!("txn-{uid}"));
        fs::create_dir_all(&pre).map_err(|e| StoreError::io(&pre, e))?;
        let live = open_lock_file(&pre.join(TXN_LOCK)).and_then(|f| {
            // Blocking: a recovering opener may hold a young `pre-` folder's lock for an instant
            // while it looks (it never removes one).
            f.lock().map_err(|e| StoreError::io(&pre, e))?;
            fs::rename(&pre, &txn).map_err(|e| StoreError::io(&txn, e))?;
            Ok(f)
        });
        match live {
            Ok(f) => Ok(Txn { dir: txn, _lock: f }),
            Err(e) => {
                let _ = fs::remove_dir_all(&pre);
                Err(e)
            }
        }
    }

    /// Ends a transaction after `res`: a simulated crash leaves it for recovery; anything else
    /// puts a folder moved aside back (if the swap did not finish) and removes it.
    pub(crate) fn end_txn<T>(&self, txn: Txn, res: Result<T>) -> Result<T> {
        match res {
            Ok(v) => {
                txn.discard();
                Ok(v)
            }
            Err(e) if is_crash(&e) => Err(e),
            Err(e) => {
                if let Err(re) = self.restore_aside(&txn.dir) {
                    // Leave the journal: the next `open` retries the restore.
                    tracing::error!(error = %re, "could not restore a folder after a failed save");
                    return Err(e);
                }
                txn.discard();
                Err(e)
            }
        }
    }

    /// Swaps the fully written and fsynced folder `staged` (inside `txn`) in at root-relative
    /// `rel`, moving what was there aside into the transaction first.
    pub(crate) fn swap_into(&self, txn: &Txn, rel: &str, staged: &Path) -> Result<()> {
        let target = self.inner.root.join(rel);
        write_file_atomic(&txn.dir.join("target"), rel.as_bytes())?;
        fsync_path(&txn.dir)?;
        let parent = target.parent().unwrap_or(&self.inner.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
        fault_point!(self, Staged, rel);

        let old = txn.dir.join("old");
        let had_old = target.exists();
        if had_old {
            fs::rename(&target, &old).map_err(|e| StoreError::io(&target, e))?;
            fsync_path(&parent)?;
            fsync_path(&txn.dir)?;
            fault_point!(self, MovedAside, rel);
        }
        fs::rename(staged, &target).map_err(|e| StoreError::io(&target, e))?;
        fsync_path(&parent)?;
        fault_point!(self, Swapped, rel);
        Ok(())
    }

    /// Replaces the folder at root-relative `rel` with what `write` puts in a staging folder.
    pub(crate) fn replace_dir<F, E>(&self, rel: &str, require_adapter: bool, write: F) -> Result<()>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let txn = self.begin_txn()?;
        let res = (|| {
            let staged = txn.dir.join("new");
            fs::create_dir(&staged).map_err(|e| StoreError::io(&staged, e))?;
            write(&staged).map_err(|e| StoreError::Write(e.into()))?;
            if require_adapter && !is_adapter_dir(&staged) {
                return Err(StoreError::InvalidAdapter {
                    path: staged.clone(),
                    reason: format!("{ADAPTER_CONFIG} is required"),
                });
            }
            fsync_tree(&staged)?;
            self.swap_into(&txn, rel, &staged)
        })();
        self.end_txn(txn, res)
    }
}
