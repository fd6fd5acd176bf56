//! Immutable adapter versions: history and undo for adapters trained in place.
//!
//! Layout (see the crate docs): `{root}/.versions/{id}/v{N}/` holds version N (adapter files,
//! optional `optimizer/`, the store's `meta.json`); the live folder `{root}/{id}/` holds hard
//! links (copies where linking fails) to the current version's adapter files, so inference
//! servers keep loading a plain PEFT folder by path. Versions are written once (staged in a
//! transaction, fsynced, renamed in) and only ever removed whole (renamed out first), so every
//! listed version is complete. The live folder changes only through the journaled swap of
//! [`crate::txn`], so a crash leaves the old or the new live folder.
//!
//! Numbers are never reused: a new version gets one more than the highest `v{N}` present.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::txn::{fsync_path, fsync_tree, is_adapter_dir, write_file_atomic, Txn};
use crate::{
    fault_point, served_name, split_version_ref, validate_id, LoraStore, ResolvedAdapter, Result,
    StoreError, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};

/// Folder (inside the root) holding the version history of adapters.
pub const VERSIONS_DIR_NAME: &str = ".versions";
/// The store's description of a version, inside its folder.
pub const VERSION_META: &str = "meta.json";
/// The trainer's state folder inside a version.
pub const OPTIMIZER_DIR: &str = "optimizer";
/// How many versions retention keeps by default (plus the current one).
pub const DEFAULT_RETENTION: usize = 20;
/// Side-state name of the current-version hint.
const HINT: &str = "current";
/// Version-folder entries that are not part of the live adapter.
const NOT_LIVE: [&str; 2] = [VERSION_META, OPTIMIZER_DIR];

/// One version of an adapter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionInfo {
    /// The adapter id (never an alias).
    pub id: String,
    /// The version number N.
    pub version: u64,
    /// `{id}@v{N}`, the reference [`LoraStore::resolve_ref`] accepts.
    pub name: String,
    /// The version folder (a loadable PEFT folder).
    pub dir: PathBuf,
    /// When it was committed (RFC 3339, UTC).
    pub created_utc: String,
    /// The version that was current when it was made (what it was trained from).
    pub parent: Option<u64>,
    /// Whether the live folder is this version.
    pub current: bool,
    /// What the caller passed to [`LoraStore::commit_version`] (`{"kind":"snapshot"}` for a
    /// snapshot the store took of an unversioned live folder).
    pub meta: serde_json::Value,
}

/// One adapter a served model name stands for ([`LoraStore::resolve_served`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServedMatch {
    /// The id or alias the name was matched to.
    pub reference: String,
    /// Its adapter; `dir` is the version folder when a version was named.
    pub resolved: ResolvedAdapter,
    /// The version named with `@v{N}`, if any.
    pub version: Option<u64>,
}

/// Contents of `meta.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetaFile {
    version: u64,
    created_utc: String,
    parent: Option<u64>,
    meta: serde_json::Value,
}

/// How a commit treats the live folder.
#[derive(Clone, Copy)]
enum Mode {
    /// The adapter must exist.
    Update,
    /// The adapter must not exist, unless `replace`.
    Create { replace: bool },
}

/// `v{N}` -> N.
fn parse_version_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Whether the two folders hold the same adapter files (byte for byte).
fn same_adapter_files(a: &Path, b: &Path) -> bool {
    [ADAPTER_CONFIG, ADAPTER_WEIGHTS].iter().all(|f| {
        match (fs::read(a.join(f)), fs::read(b.join(f))) {
            (Ok(x), Ok(y)) => x == y,
            (Err(x), Err(y)) => {
                x.kind() == io::ErrorKind::NotFound && y.kind() == io::ErrorKind::NotFound
            }
            _ => false,
        }
    })
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Removes `dir` if empty. Ancestors stay: another writer may be creating a folder in one.
fn remove_if_empty(dir: &Path) {
    let _ = fs::remove_dir(dir);
}

impl LoraStore {
    /// Sets how many of the newest versions retention keeps per adapter (at least 1); the
    /// current version is always kept too. Applies from the next commit.
    pub fn set_retention(&self, keep: usize) {
        self.inner.retention.store(keep.max(1), Ordering::SeqCst);
    }

    fn versions_root(&self, id: &str) -> PathBuf {
        self.inner.root.join(VERSIONS_DIR_NAME).join(id)
    }

    fn version_dir(&self, id: &str, n: u64) -> PathBuf {
        self.versions_root(id).join(format!("v{n}"))
    }

    /// A folder is a version once renamed in with its `meta.json` (which also tells a version
    /// apart from the history folder of a nested id named `v{N}`).
    fn is_version(dir: &Path) -> bool {
        dir.join(VERSION_META).is_file() && is_adapter_dir(dir)
    }

    /// Every `v{N}` entry of the adapter's history folder with whether it is a version,
    /// ascending.
    fn version_entries(&self, id: &str) -> Result<Vec<(u64, bool)>> {
        let root = self.versions_root(id);
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&root, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(n) = parse_version_name(&name) {
                out.push((n, Self::is_version(&entry.path())));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn version_numbers(&self, id: &str) -> Result<Vec<u64>> {
        Ok(self
            .version_entries(id)?
            .into_iter()
            .filter_map(|(n, ok)| ok.then_some(n))
            .collect())
    }

    /// Highest version number present, if any.
    pub(crate) fn max_version_number(&self, id: &str) -> Result<Option<u64>> {
        Ok(self.version_entries(id)?.last().map(|(n, _)| *n))
    }

    fn next_number(&self, id: &str) -> Result<u64> {
        Ok(self.max_version_number(id)?.map_or(0, |n| n + 1))
    }

    /// The current version of the (validated, non-alias) adapter `id`: the version whose
    /// files the live folder links; where files were copied, the hint's version, or else the
    /// newest version with equal files.
    pub(crate) fn current_of(&self, id: &str) -> Result<Option<u64>> {
        let live = self.inner.root.join(id);
        if !is_adapter_dir(&live) {
            return Ok(None);
        }
        let nums = self.version_numbers(id)?;
        if nums.is_empty() {
            return Ok(None);
        }
        let key = if live.join(ADAPTER_WEIGHTS).is_file() {
            ADAPTER_WEIGHTS
        } else {
            ADAPTER_CONFIG
        };
        if let Some(ident) = file_identity(&live.join(key)) {
            for &n in nums.iter().rev() {
                if file_identity(&self.version_dir(id, n).join(key)) == Some(ident) {
                    return Ok(Some(n));
                }
            }
        }
        let hint = fs::read_to_string(self.state_path(id, HINT)?)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let candidates = hint
            .filter(|h| nums.contains(h))
            .into_iter()
            .chain(nums.iter().rev().copied().filter(|n| Some(*n) != hint));
        for n in candidates {
            if same_adapter_files(&live, &self.version_dir(id, n)) {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    fn write_hint(&self, id: &str, n: u64) {
        let res = self
            .state_path(id, HINT)
            .and_then(|p| write_file_atomic(&p, n.to_string().as_bytes()));
        if let Err(e) = res {
            // Only needed where files were copied; there, `current_of` compares contents.
            tracing::warn!(id, version = n, error = %e, "could not write the current-version hint");
        }
    }

    pub(crate) fn clear_current_hint(&self, id: &str) -> Result<()> {
        let p = self.state_path(id, HINT)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, e)),
        }
    }

    fn link_or_copy(&self, src: &Path, dst: &Path) -> Result<()> {
        if !self.inner.force_copy.load(Ordering::SeqCst) && fs::hard_link(src, dst).is_ok() {
            return Ok(());
        }
        fs::copy(src, dst)
            .map(drop)
            .map_err(|e| StoreError::io(dst, e))
    }

    /// Recreates the tree `src` at `dst` with hard links (copies for symlinks, which could
    /// point at mutable files, and where linking fails), leaving out `skip` at the top level.
    fn link_tree(&self, src: &Path, dst: &Path, skip: &[&str]) -> Result<()> {
        fs::create_dir(dst).map_err(|e| StoreError::io(dst, e))?;
        for entry in fs::read_dir(src).map_err(|e| StoreError::io(src, e))? {
            let entry = entry.map_err(|e| StoreError::io(src, e))?;
            let name = entry.file_name();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            let from = entry.path();
            let to = dst.join(&name);
            let meta = fs::metadata(&from).map_err(|e| StoreError::io(&from, e))?;
            let link = entry
                .file_type()
                .map_err(|e| StoreError::io(&from, e))?
                .is_symlink();
            if meta.is_dir() {
                self.link_tree(&from, &to, &[])?;
            } else if meta.is_file() && link {
                fs::copy(&from, &to).map_err(|e| StoreError::io(&to, e))?;
            } else if meta.is_file() {
                self.link_or_copy(&from, &to)?;
            }
        }
        Ok(())
    }

    /// Adds `meta.json` to a staged version and fsyncs it whole.
    fn seal_version(
        staged: &Path,
        n: u64,
        parent: Option<u64>,
        meta: serde_json::Value,
    ) -> Result<MetaFile> {
        let file = MetaFile {
            version: n,
            created_utc: rfc3339_now(),
            parent,
            meta,
        };
        let path = staged.join(VERSION_META);
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::io(&path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        fs::write(&path, text).map_err(|e| StoreError::io(&path, e))?;
        fsync_tree(staged)?;
        Ok(file)
    }

    /// Renames a sealed staged version in as `v{n}`.
    fn publish_version(&self, id: &str, staged: &Path, n: u64) -> Result<PathBuf> {
        let vroot = self.versions_root(id);
        fs::create_dir_all(&vroot).map_err(|e| StoreError::io(&vroot, e))?;
        // Make freshly created history folders durable up to the root.
        let mut dir = vroot.as_path();
        while dir != self.inner.root {
            fsync_path(dir)?;
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
        let dest = self.version_dir(id, n);
        fs::rename(staged, &dest).map_err(|e| StoreError::io(&dest, e))?;
        fsync_path(&vroot)?;
        Ok(dest)
    }

    /// Keeps the live folder of an adapter with no current version as a new version, so the
    /// next change can be undone; legacy optimizer state goes with it.
    fn snapshot_live(&self, txn: &Txn, id: &str) -> Result<u64> {
        let live = self.inner.root.join(id);
        let snap = txn.dir.join("snap");
        self.link_tree(&live, &snap, &NOT_LIVE)?;
        if let Some(opt) = self.load_state(id, OPTIMIZER_DIR)? {
            self.link_tree(&opt, &snap.join(OPTIMIZER_DIR), &[])?;
        }
        let n = self.next_number(id)?;
        Self::seal_version(&snap, n, None, serde_json::json!({"kind": "snapshot"}))?;
        self.publish_version(id, &snap, n)?;
        fault_point!(self, SnapshotTaken, id);
        Ok(n)
    }

    /// Swaps the live folder of `id` to links of version folder `vdir` (journaled in `txn`).
    fn make_live(&self, txn: &Txn, id: &str, vdir: &Path) -> Result<()> {
        let new = txn.dir.join("new");
        self.link_tree(vdir, &new, &NOT_LIVE)?;
        fsync_tree(&new)?;
        self.swap_into(txn, id, &new)
    }

    fn read_info(&self, id: &str, n: u64, current: Option<u64>) -> Result<VersionInfo> {
        let dir = self.version_dir(id, n);
        if !Self::is_version(&dir) {
            return Err(StoreError::VersionNotFound {
                id: id.to_string(),
                version: n,
            });
        }
        let path = dir.join(VERSION_META);
        let text = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let m: MetaFile = serde_json::from_slice(&text)
            .map_err(|e| StoreError::io(&path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        Ok(VersionInfo {
            id: id.to_string(),
            version: n,
            name: format!("{id}@v{n}"),
            dir,
            created_utc: m.created_utc,
            parent: m.parent,
            current: current == Some(n),
            meta: m.meta,
        })
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .history_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Saves a new version of the existing adapter `id` (an alias is followed) and makes it
    /// live, in one transaction.
    ///
    /// `write` fills a staging folder: the adapter files (`adapter_config.json` required) and
    /// optionally the trainer's state in `optimizer/`; the store adds `meta.json` (replacing
    /// one the writer made) with `meta`. The version gets the next number and the current
    /// version as parent; an adapter without a current version (never versioned, or replaced
    /// by [`LoraStore::save_atomic`]) is first kept as a snapshot version
    /// (`{"kind":"snapshot"}`, with its legacy `optimizer` side state) so the update can be
    /// undone. Then the live folder is swapped to links of the new version, the
    /// current-version hint written, and retention run. If `write` fails nothing changes.
    ///
    /// Versions are numbered under an in-process lock only: writers in other processes hold
    /// [`LoraStore::try_lock_adapter`] (this call does not take it, so its caller can).
    pub fn commit_version<F, E>(
        &self,
        id: &str,
        meta: serde_json::Value,
        write: F,
    ) -> Result<VersionInfo>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = self.resolve(id)?.id;
        self.commit_inner(&id, meta, Mode::Update, write)
    }

    /// Creates a new adapter at `id` whose first version is what `write` stages (as for
    /// [`LoraStore::commit_version`]); `/v1/lora/init` uses it. An existing adapter there is an
    /// [`StoreError::AlreadyExists`] error unless `replace`, in which case its live content is
    /// kept as a version first (it becomes the parent) and the new version goes live.
    /// `id` is used verbatim. The first version is v0 unless old history exists at the id.
    pub fn create_versioned<F, E>(
        &self,
        id: &str,
        meta: serde_json::Value,
        replace: bool,
        write: F,
    ) -> Result<VersionInfo>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = validate_id(id)?.to_string();
        self.commit_inner(&id, meta, Mode::Create { replace }, write)
    }

    fn commit_inner<F, E>(
        &self,
        id: &str,
        meta: serde_json::Value,
        mode: Mode,
        write: F,
    ) -> Result<VersionInfo>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.check_not_nested(id)?;
        let live_exists = is_adapter_dir(&self.inner.root.join(id));
        match mode {
            Mode::Update if !live_exists => return Err(StoreError::NotFound(id.to_string())),
            Mode::Create { replace: false } if live_exists => {
                return Err(StoreError::AlreadyExists(id.to_string()))
            }
            _ => {}
        }
        let txn = self.begin_txn()?;
        let res = self.commit_in_txn(&txn, id, meta, mode, write);
        let info = self.end_txn(txn, res)?;
        if let Err(e) = self.apply_retention(id) {
            if crate::txn::is_crash(&e) {
                return Err(e);
            }
            // The commit stands; old versions are retried at the next commit.
            tracing::warn!(id, error = %e, "version retention failed");
        }
        Ok(info)
    }

    fn commit_in_txn<F, E>(
        &self,
        txn: &Txn,
        id: &str,
        meta: serde_json::Value,
        mode: Mode,
        write: F,
    ) -> Result<VersionInfo>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The slow part (the caller's writer) runs before the history lock.
        let staged = txn.dir.join("ver");
        fs::create_dir(&staged).map_err(|e| StoreError::io(&staged, e))?;
        write(&staged).map_err(|e| StoreError::Write(e.into()))?;
        if !is_adapter_dir(&staged) {
            return Err(StoreError::InvalidAdapter {
                path: staged,
                reason: format!("{ADAPTER_CONFIG} is required"),
            });
        }
        let _h = self.lock_history();
        // Checked again under the lock: another call may have created or deleted it.
        let live_exists = is_adapter_dir(&self.inner.root.join(id));
        match mode {
            Mode::Update if !live_exists => return Err(StoreError::NotFound(id.to_string())),
            Mode::Create { replace: false } if live_exists => {
                return Err(StoreError::AlreadyExists(id.to_string()))
            }
            _ => {}
        }
        let mut parent = self.current_of(id)?;
        if live_exists && parent.is_none() {
            parent = Some(self.snapshot_live(txn, id)?);
        }
        let n = self.next_number(id)?;
        let sealed = Self::seal_version(&staged, n, parent, meta)?;
        fault_point!(self, VersionStaged, id);
        let vdir = self.publish_version(id, &staged, n)?;
        fault_point!(self, VersionCommitted, id);
        self.make_live(txn, id, &vdir)?;
        self.ensure_lock_file(id)?;
        self.write_hint(id, n);
        fault_point!(self, HintWritten, id);
        Ok(VersionInfo {
            id: id.to_string(),
            version: n,
            name: format!("{id}@v{n}"),
            dir: vdir,
            created_utc: sealed.created_utc,
            parent,
            current: true,
            meta: sealed.meta,
        })
    }

    /// Removes old versions of `id`: keeps the newest `retention` by number and the current
    /// one. Each goes whole: renamed out of `.versions` first, then deleted.
    fn apply_retention(&self, id: &str) -> Result<()> {
        let _h = self.lock_history();
        let keep = self.inner.retention.load(Ordering::SeqCst).max(1);
        let nums = self.version_numbers(id)?;
        if nums.len() <= keep {
            return Ok(());
        }
        let current = self.current_of(id)?;
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        for &n in &nums[..nums.len() - keep] {
            if Some(n) == current {
                continue;
            }
            let dir = self.version_dir(id, n);
            let del = tmp.join(format!("del-{}", uuid::Uuid::new_v4().simple()));
            fs::rename(&dir, &del).map_err(|e| StoreError::io(&dir, e))?;
            fsync_path(&self.versions_root(id))?;
            fault_point!(self, RetentionMoved, id);
            if let Err(e) = fs::remove_dir_all(&del) {
                // `open` removes leftover `del-` folders.
                tracing::warn!(path = %del.display(), error = %e, "could not remove an old version");
            }
        }
        Ok(())
    }

    /// Every version of the adapter `id` (an alias is followed), ascending by number. Empty for
    /// an adapter without history; [`StoreError::NotFound`] if there is no such adapter.
    pub fn versions(&self, id: &str) -> Result<Vec<VersionInfo>> {
        let id = self.resolve(id)?.id;
        let current = self.current_of(&id)?;
        let mut out = Vec::new();
        for n in self.version_numbers(&id)? {
            match self.read_info(&id, n, current) {
                Ok(info) => out.push(info),
                // Removed meanwhile by retention, or an unreadable `meta.json`: skip it.
                Err(e) => tracing::warn!(id, version = n, error = %e, "skipping a version"),
            }
        }
        Ok(out)
    }

    /// Version `n` of the adapter `id` (an alias is followed), or
    /// [`StoreError::VersionNotFound`]. (Not named `version`: [`LoraStore::version`] is the
    /// older number-of-what-is-live call.)
    pub fn version_info(&self, id: &str, n: u64) -> Result<VersionInfo> {
        let id = self.resolve(id)?.id;
        let current = self.current_of(&id)?;
        self.read_info(&id, n, current)
    }

    /// The number of the version the live folder of `id` (an alias is followed) is, if any.
    pub fn current_version(&self, id: &str) -> Result<Option<u64>> {
        let id = self.resolve(id)?.id;
        self.current_of(&id)
    }

    /// Makes version `n` of `id` (an alias is followed) live again: its adapter files and,
    /// since it lives in the version folder, its optimizer state (see
    /// [`LoraStore::optimizer_dir`]). A journaled swap like a commit; a live folder that is no
    /// version is kept as a snapshot version first. Rolling back to the current version
    /// changes nothing.
    pub fn rollback(&self, id: &str, n: u64) -> Result<VersionInfo> {
        let id = self.resolve(id)?.id;
        // Making a version live renames folders: never through a link out of the root.
        self.check_inside_root(&id)?;
        let _h = self.lock_history();
        let vdir = self.version_dir(&id, n);
        if !Self::is_version(&vdir) {
            return Err(StoreError::VersionNotFound { id, version: n });
        }
        let current = self.current_of(&id)?;
        if current == Some(n) {
            return self.read_info(&id, n, current);
        }
        let txn = self.begin_txn()?;
        let res = (|| {
            if current.is_none() {
                self.snapshot_live(&txn, &id)?;
            }
            self.make_live(&txn, &id, &vdir)?;
            self.write_hint(&id, n);
            fault_point!(self, HintWritten, &id);
            Ok(())
        })();
        self.end_txn(txn, res)?;
        self.read_info(&id, n, Some(n))
    }

    /// The optimizer state to continue training `id` (an alias is followed) from: the current
    /// version's `optimizer/` (None if it has none); for an adapter without a current version,
    /// the legacy side state `.state/{id}/@optimizer` if present. Legacy state is ignored once
    /// a version is current, because it belongs to an older adapter (it was copied into the
    /// snapshot version).
    pub fn optimizer_dir(&self, id: &str) -> Result<Option<PathBuf>> {
        let id = self.resolve(id)?.id;
        match self.current_of(&id)? {
            Some(n) => {
                let p = self.version_dir(&id, n).join(OPTIMIZER_DIR);
                Ok(p.is_dir().then_some(p))
            }
            None => self.load_state(&id, OPTIMIZER_DIR),
        }
    }

    /// Resolves a reference as served names use it: `id`, `alias`, `id@vN` or `alias@vN`.
    /// The directory is the live folder, or the version folder (also a loadable PEFT folder)
    /// for `@vN`, which must exist ([`StoreError::VersionNotFound`]).
    pub fn resolve_ref(&self, reference: &str) -> Result<(ResolvedAdapter, Option<u64>)> {
        let (base, version) = split_version_ref(reference);
        let resolved = self.resolve(base)?;
        let Some(n) = version else {
            return Ok((resolved, None));
        };
        let dir = self.version_dir(&resolved.id, n);
        if !Self::is_version(&dir) {
            return Err(StoreError::VersionNotFound {
                id: resolved.id,
                version: n,
            });
        }
        Ok((ResolvedAdapter { dir, ..resolved }, Some(n)))
    }

    /// Every adapter a served model name can stand for: the store id or alias it spells (with
    /// an optional `@v{N}`), else each listed id or alias whose [`served_name`] it is (the
    /// name an inference server serves it under, `openclaw-assistant-latest`), one per folder.
    /// Empty when nothing matches; more than one match is ambiguous for the caller to report.
    pub fn resolve_served(&self, name: &str) -> Result<Vec<ServedMatch>> {
        let (base, version) = split_version_ref(name);
        let find = |reference: &str| -> Result<Option<ServedMatch>> {
            let full = match version {
                Some(n) => format!("{reference}@v{n}"),
                None => reference.to_string(),
            };
            match self.resolve_ref(&full) {
                Ok((resolved, version)) => Ok(Some(ServedMatch {
                    reference: reference.to_string(),
                    resolved,
                    version,
                })),
                Err(
                    StoreError::NotFound(_)
                    | StoreError::InvalidId { .. }
                    | StoreError::VersionNotFound { .. },
                ) => Ok(None),
                Err(e) => Err(e),
            }
        };
        if validate_id(base).is_ok() {
            if let Some(m) = find(base)? {
                return Ok(vec![m]);
            }
        }
        let mut hits: Vec<ServedMatch> = Vec::new();
        for reference in self.list("")?.iter().filter(|r| served_name(r) == base) {
            if let Some(m) = find(reference)? {
                if !hits.iter().any(|h| h.resolved.dir == m.resolved.dir) {
                    hits.push(m);
                }
            }
        }
        Ok(hits)
    }

    /// Deletes what `id` names (`DELETE /v1/lora`). An alias: just the alias. An adapter: its
    /// live folder, its versions, its side state (except the update-lock file, which a
    /// concurrent holder may still have open) and every alias pointing at it. Returns false if
    /// nothing had that name.
    ///
    /// Atomic: the live folder is first moved into a journaled transaction (the commit point;
    /// the adapter is then gone), then the rest follows; a crash in between is finished by
    /// [`LoraStore::open`].
    pub fn delete(&self, id: &str) -> Result<bool> {
        let id = validate_id(id)?;
        let live = self.inner.root.join(id);
        let _h = self.lock_history();
        if !is_adapter_dir(&live) {
            if self.aliases()?.contains_key(id) {
                return self.remove_alias(id);
            }
            return Ok(false);
        }
        self.check_not_nested(id)?;
        let txn = self.begin_txn()?;
        let res = (|| {
            write_file_atomic(&txn.dir.join("delete"), id.as_bytes())?;
            fsync_path(&txn.dir)?;
            let moved = txn.dir.join("live");
            fs::rename(&live, &moved).map_err(|e| StoreError::io(&live, e))?;
            if let Some(parent) = live.parent() {
                fsync_path(parent)?;
            }
            fault_point!(self, DeleteMovedLive, id);
            self.finish_delete(id, &txn.dir)
        })();
        match res {
            Ok(()) => {
                txn.discard();
                Ok(true)
            }
            // Past the commit point the next `open` finishes the delete.
            Err(e) if crate::txn::is_crash(&e) || txn.dir.join("live").exists() => Err(e),
            Err(e) => {
                txn.discard();
                Err(e)
            }
        }
    }

    /// The part of a delete after its live folder moved into transaction `txn`: aliases,
    /// versions and side state. Idempotent, so recovery can run it again.
    pub(crate) fn finish_delete(&self, id: &str, txn: &Path) -> Result<()> {
        self.remove_aliases_of(id)?;
        fault_point!(self, DeleteAliasesRemoved, id);
        let vroot = self.versions_root(id);
        // Only versions: the history folder of a nested id named `v{N}` may share the folder.
        let nums = self.version_numbers(id)?;
        if !nums.is_empty() {
            let dest = txn.join("versions");
            fs::create_dir_all(&dest).map_err(|e| StoreError::io(&dest, e))?;
            for n in nums {
                let from = self.version_dir(id, n);
                let to = dest.join(format!("v{n}"));
                fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
            }
            fsync_path(&vroot)?;
        }
        remove_if_empty(&vroot);
        let sdir = self.state_dir(id)?;
        if sdir.is_dir() {
            let dest = txn.join("state");
            fs::create_dir_all(&dest).map_err(|e| StoreError::io(&dest, e))?;
            for entry in fs::read_dir(&sdir).map_err(|e| StoreError::io(&sdir, e))? {
                let entry = entry.map_err(|e| StoreError::io(&sdir, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with('@') && name != "@lock" {
                    let to = dest.join(&name);
                    fs::rename(entry.path(), &to).map_err(|e| StoreError::io(&to, e))?;
                }
            }
            fsync_path(&sdir)?;
        }
        remove_if_empty(&sdir);
        Ok(())
    }
}
