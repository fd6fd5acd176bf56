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

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use zip::write::SimpleFileOptions;

/// Name of the alias map inside the root (same as the reference).
pub const ALIASES_FILE_NAME: &str = ".aliases.json";
/// Folder (inside the root) holding side state of adapters.
pub const STATE_DIR_NAME: &str = ".state";
/// Folder (inside the root) holding staged writes and their journals.
pub const TMP_DIR_NAME: &str = ".tmp";
/// Lock file inside a transaction folder, held by the process running the transaction.
const TXN_LOCK: &str = "lock";
/// The file whose presence makes a folder an adapter.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The PEFT weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Suffix of the alias that points at the newest versioned save.
pub const LATEST_SUFFIX: &str = "-latest";

const MAX_ID_LEN: usize = 512;
const MAX_COMPONENT_LEN: usize = 128;
const MAX_LIST_DEPTH: usize = 16;

/// Errors of the LoRA store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is not a safe relative path of allowed characters.
    #[error("invalid lora_id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    /// No adapter folder and no alias of that name.
    #[error("LoRA not found: {0}")]
    NotFound(String),
    /// A staged or existing folder is not a PEFT adapter.
    #[error("not a PEFT adapter ({path}): {reason}")]
    InvalidAdapter { path: PathBuf, reason: String },
    /// The alias cannot be created as asked.
    #[error("alias {alias:?}: {reason}")]
    Alias { alias: String, reason: String },
    /// `.aliases.json` exists but is not a JSON object of strings; it is left untouched.
    #[error("alias file {path} is unreadable: {message}")]
    AliasFile { path: PathBuf, message: String },
    /// The caller's writer failed; nothing was changed.
    #[error("writing the adapter failed: {0}")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A filesystem operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Building the export archive failed.
    #[error("zip export failed: {0}")]
    Zip(String),
    /// A test-only fault hook simulated a crash at this point (nothing was cleaned up).
    #[error("injected fault at {0:?}")]
    InjectedFault(FaultPoint),
}

impl StoreError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    fn invalid(id: &str, reason: impl Into<String>) -> Self {
        StoreError::InvalidId {
            id: id.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Points in an atomic folder replacement where a test can simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The new folder is fully written and fsynced in staging; nothing at the id changed.
    Staged,
    /// The old folder was renamed aside; the id is momentarily empty.
    MovedAside,
    /// The new folder is in place; the old one still sits aside.
    Swapped,
}

/// Test hook: called with the point and the root-relative target; returning `true` makes
/// the operation stop right there as if the process died (no cleanup, no rollback).
#[doc(hidden)]
pub type FaultHook = Arc<dyn Fn(FaultPoint, &str) -> bool + Send + Sync>;

/// An id after alias resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAdapter {
    /// The adapter folder's id (never an alias).
    pub id: String,
    /// Absolute path of the adapter folder.
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

/// The name an inference server serves an adapter id or alias under, as the reference derives
/// it: every run of characters outside `[a-zA-Z0-9._-]` becomes `-`, leading and trailing `-`
/// are dropped (`openclaw/assistant-latest` -> `openclaw-assistant-latest`); empty gives `lora`.
pub fn served_name(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    let mut in_run = false;
    for ch in id.chars() {
        if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-') {
            out.push(ch);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "lora".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Checks that `id` is a safe relative adapter id and returns it without trailing slashes.
///
/// Allowed: `/`-separated components of `[A-Za-z0-9._-]`, none empty or starting with `.`
/// (which also excludes `.` and `..` and keeps the store's hidden folders unreachable).
pub fn validate_id(id: &str) -> Result<&str> {
    if id.contains('\0') {
        return Err(StoreError::invalid(id, "contains a NUL byte"));
    }
    if id.contains('\\') {
        return Err(StoreError::invalid(id, "contains a backslash"));
    }
    if id.starts_with('/') {
        return Err(StoreError::invalid(id, "absolute paths are not allowed"));
    }
    let trimmed = id.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(StoreError::invalid(id, "must not be empty"));
    }
    if trimmed.len() > MAX_ID_LEN {
        return Err(StoreError::invalid(
            id,
            format!("longer than {MAX_ID_LEN} bytes"),
        ));
    }
    for comp in trimmed.split('/') {
        if comp.is_empty() {
            return Err(StoreError::invalid(id, "contains an empty path component"));
        }
        if comp == ".." {
            return Err(StoreError::invalid(
                id,
                "path traversal ('..') is not allowed",
            ));
        }
        if comp.starts_with('.') {
            return Err(StoreError::invalid(
                id,
                "path components must not start with '.'",
            ));
        }
        if comp.len() > MAX_COMPONENT_LEN {
            return Err(StoreError::invalid(
                id,
                format!("a path component is longer than {MAX_COMPONENT_LEN} bytes"),
            ));
        }
        if let Some(c) = comp
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(StoreError::invalid(
                id,
                format!("character {c:?} is not allowed (use A-Z a-z 0-9 . _ - and '/')"),
            ));
        }
    }
    Ok(trimmed)
}

/// The LoRA root. Cheap to clone. Processes may share a root (see the crate docs); a version
/// counter bump is only guarded in-process, so writers of one adapter in different processes
/// hold [`LoraStore::try_lock_adapter`] (the API does).
#[derive(Clone)]
pub struct LoraStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    aliases_lock: Mutex<()>,
    version_lock: Mutex<()>,
    fault: RwLock<Option<FaultHook>>,
}

impl std::fmt::Debug for LoraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

fn fsync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(path, e))
}

/// fsyncs every regular file and folder under `dir`, children first.
fn fsync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let ty = entry
            .file_type()
            .map_err(|e| StoreError::io(entry.path(), e))?;
        if ty.is_dir() {
            fsync_tree(&entry.path())?;
        } else if ty.is_file() {
            fsync_path(&entry.path())?;
        }
    }
    fsync_path(dir)
}

/// Writes `bytes` to `path` through a temp file in the same folder + fsync + rename.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::io(path, io::Error::other("no parent folder")))?;
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let res = (|| {
        let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
        fsync_path(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

fn open_lock_file(path: &Path) -> Result<File> {
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

/// A `pre-` folder lives for microseconds before it is locked and renamed; one older than this
/// is left over from a writer that died in between.
const STALE_PRE: std::time::Duration = std::time::Duration::from_secs(600);

/// Exclusive, cross-process right to update one adapter; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct AdapterLock {
    _file: File,
}

impl LoraStore {
    /// Opens (creating if needed) a LoRA root and finishes or rolls back any replacement a
    /// crash interrupted.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let root = root.canonicalize().map_err(|e| StoreError::io(&root, e))?;
        let store = LoraStore {
            inner: Arc::new(Inner {
                root,
                aliases_lock: Mutex::new(()),
                version_lock: Mutex::new(()),
                fault: RwLock::new(None),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// The root folder (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Installs (or removes) the crash-simulation hook. Tests only.
    #[doc(hidden)]
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        if let Ok(mut g) = self.inner.fault.write() {
            *g = hook;
        }
    }

    fn fault(&self, point: FaultPoint, rel: &str) -> Result<()> {
        let hook = self.inner.fault.read().ok().and_then(|g| g.clone());
        match hook {
            Some(h) if h(point, rel) => Err(StoreError::InjectedFault(point)),
            _ => Ok(()),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join(TMP_DIR_NAME)
    }

    fn aliases_path(&self) -> PathBuf {
        self.inner.root.join(ALIASES_FILE_NAME)
    }

    /// Where the adapter folder of `id` is (or would be). Validates the id.
    pub fn adapter_dir(&self, id: &str) -> Result<PathBuf> {
        let id = validate_id(id)?;
        Ok(self.inner.root.join(id))
    }

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

    /// Rolls back or completes interrupted replacements recorded under `.tmp/`.
    fn recover(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        if tmp.is_dir() {
            for entry in fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
                let entry = entry.map_err(|e| StoreError::io(&tmp, e))?;
                let dir = entry.path();
                if !dir.is_dir() {
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
            if name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_file() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn recover_txn(&self, txn: &Path) -> Result<()> {
        let intent = txn.join("target");
        if let Ok(rel) = fs::read_to_string(&intent) {
            let rel = rel.trim();
            let target = self.inner.root.join(rel);
            let old = txn.join("old");
            let safe = !rel.is_empty() && !rel.split('/').any(|c| c == ".." || c.is_empty());
            if safe && !target.exists() && old.is_dir() {
                // Crashed between moving the old folder aside and renaming the new one in:
                // the new one was never acknowledged, so put the old one back.
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
                }
                fs::rename(&old, &target).map_err(|e| StoreError::io(&target, e))?;
                if let Some(parent) = target.parent() {
                    fsync_path(parent)?;
                }
                tracing::warn!(target = %target.display(), "restored adapter folder after an interrupted save");
            }
        }
        fs::remove_dir_all(txn).map_err(|e| StoreError::io(txn, e))?;
        Ok(())
    }

    /// Replaces the folder at root-relative `rel` with what `write` puts in a staging folder.
    fn replace_dir<F, E>(&self, rel: &str, require_adapter: bool, write: F) -> Result<()>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
        let _live = match live {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_dir_all(&pre);
                return Err(e);
            }
        };
        let staged = txn.join("new");
        let old = txn.join("old");
        let target = self.inner.root.join(rel);

        let prepare = (|| {
            write_file_atomic(&txn.join("target"), rel.as_bytes())?;
            fs::create_dir(&staged).map_err(|e| StoreError::io(&staged, e))?;
            write(&staged).map_err(|e| StoreError::Write(e.into()))?;
            if require_adapter && !is_adapter_dir(&staged) {
                return Err(StoreError::InvalidAdapter {
                    path: staged.clone(),
                    reason: format!("{ADAPTER_CONFIG} is required"),
                });
            }
            fsync_tree(&staged)?;
            fsync_path(&txn)?;
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            }
            Ok(())
        })();
        if let Err(e) = prepare {
            discard_txn(&txn);
            return Err(e);
        }
        self.fault(FaultPoint::Staged, rel)?;

        let parent = target.parent().unwrap_or(&self.inner.root).to_path_buf();
        let had_old = target.exists();
        if had_old {
            if let Err(e) = fs::rename(&target, &old) {
                discard_txn(&txn);
                return Err(StoreError::io(&target, e));
            }
            fsync_path(&parent)?;
            fsync_path(&txn)?;
            self.fault(FaultPoint::MovedAside, rel)?;
        }
        if let Err(e) = fs::rename(&staged, &target) {
            if had_old {
                let _ = fs::rename(&old, &target);
            }
            discard_txn(&txn);
            return Err(StoreError::io(&target, e));
        }
        fsync_path(&parent)?;
        self.fault(FaultPoint::Swapped, rel)?;
        discard_txn(&txn);
        Ok(())
    }

    /// Refuses ids that would nest an adapter inside another one (or around one): replacing
    /// the outer folder would otherwise move the inner adapter too.
    fn check_not_nested(&self, id: &str) -> Result<()> {
        let mut prefix = String::new();
        let comps: Vec<&str> = id.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if is_adapter_dir(&self.inner.root.join(&prefix)) {
                return Err(StoreError::invalid(
                    id,
                    format!("would be nested inside the adapter {prefix:?}"),
                ));
            }
        }
        let dir = self.inner.root.join(id);
        if dir.is_dir() {
            let mut inner = Vec::new();
            collect_adapters(&dir, "", &mut inner)?;
            if let Some(found) = inner.into_iter().find(|p| !p.is_empty()) {
                return Err(StoreError::invalid(
                    id,
                    format!("its folder contains the adapter {id}/{found}"),
                ));
            }
        }
        Ok(())
    }

    /// Atomically writes (or replaces) the adapter folder of `id` with what `write` puts in the
    /// staging folder it is given, then bumps the adapter's version. Returns the new version.
    ///
    /// `id` is used verbatim (resolve aliases first). The staged folder must contain
    /// `adapter_config.json`. If `write` fails nothing changes.
    pub fn save_atomic<F, E>(&self, id: &str, write: F) -> Result<u64>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = validate_id(id)?;
        self.check_not_nested(id)?;
        self.replace_dir(id, true, write)?;
        self.bump_version(id)
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

    /// Monotonic per-adapter counter, bumped by every save (0 = never saved through the store,
    /// e.g. a folder copied in by hand). Serving can key caches on `(id, version)`.
    pub fn version(&self, id: &str) -> Result<u64> {
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

    fn bump_version(&self, id: &str) -> Result<u64> {
        let _g = self
            .inner
            .version_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A corrupt counter must not block saves; it then restarts from 1.
        let current = self.version(id).unwrap_or(0);
        let next = current + 1;
        write_file_atomic(
            &self.state_path(id, "version")?,
            next.to_string().as_bytes(),
        )?;
        // The update lock's file is created with the adapter's state, not by the first update,
        // which may then fail with nothing on disk changed.
        open_lock_file(&self.state_path(id, "lock")?)?;
        Ok(next)
    }

    /// The alias map (alias id -> adapter id). Missing file = empty map.
    pub fn aliases(&self) -> Result<BTreeMap<String, String>> {
        let path = self.aliases_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let bad = |m: String| StoreError::AliasFile {
            path: path.clone(),
            message: m,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            let v = v
                .as_str()
                .ok_or_else(|| bad(format!("value of {k:?} is not a string")))?;
            out.insert(
                k.trim_matches('/').to_string(),
                v.trim_matches('/').to_string(),
            );
        }
        Ok(out)
    }

    /// Cross-process lock of `.aliases.json` read-modify-writes (short; blocks).
    fn lock_aliases_file(&self) -> Result<File> {
        let path = self.inner.root.join(STATE_DIR_NAME).join("@aliases.lock");
        let f = open_lock_file(&path)?;
        f.lock().map_err(|e| StoreError::io(&path, e))?;
        Ok(f)
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

    fn write_aliases(&self, aliases: &BTreeMap<String, String>) -> Result<()> {
        let text = serde_json::to_string_pretty(aliases).map_err(|e| StoreError::AliasFile {
            path: self.aliases_path(),
            message: e.to_string(),
        })?;
        write_file_atomic(&self.aliases_path(), text.as_bytes())
    }

    /// Points `alias` at the adapter `target` (atomic rewrite of `.aliases.json`).
    pub fn set_alias(&self, alias: &str, target: &str) -> Result<()> {
        let alias = validate_id(alias)?;
        let target = validate_id(target)?;
        if alias == target {
            return Err(StoreError::Alias {
                alias: alias.into(),
                reason: "an alias cannot point at itself".into(),
            });
        }
        if is_adapter_dir(&self.inner.root.join(alias)) {
            return Err(StoreError::Alias {
                alias: alias.into(),
                reason: "an adapter folder of that name exists and would shadow the alias".into(),
            });
        }
        if !is_adapter_dir(&self.inner.root.join(target)) {
            return Err(StoreError::NotFound(target.into()));
        }
        let _g = self
            .inner
            .aliases_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _file = self.lock_aliases_file()?;
        let mut aliases = self.aliases()?;
        aliases.insert(alias.to_string(), target.to_string());
        self.write_aliases(&aliases)
    }

    /// Removes an alias; returns whether it existed.
    pub fn remove_alias(&self, alias: &str) -> Result<bool> {
        let alias = validate_id(alias)?;
        let _g = self
            .inner
            .aliases_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _file = self.lock_aliases_file()?;
        let mut aliases = self.aliases()?;
        let existed = aliases.remove(alias).is_some();
        if existed {
            self.write_aliases(&aliases)?;
        }
        Ok(existed)
    }

    /// Resolves an id or alias to an adapter folder. A folder wins over an alias of the same
    /// name (as in the reference); aliases are followed one level.
    pub fn resolve(&self, id: &str) -> Result<ResolvedAdapter> {
        let id = validate_id(id)?;
        let dir = self.inner.root.join(id);
        if is_adapter_dir(&dir) {
            return Ok(ResolvedAdapter {
                id: id.to_string(),
                dir,
                alias: None,
            });
        }
        let aliases = self.aliases()?;
        if let Some(target) = aliases.get(id) {
            let target = validate_id(target)?;
            let dir = self.inner.root.join(target);
            if is_adapter_dir(&dir) {
                return Ok(ResolvedAdapter {
                    id: target.to_string(),
                    dir,
                    alias: Some(id.to_string()),
                });
            }
        }
        Err(StoreError::NotFound(id.to_string()))
    }

    /// Whether `id` names an adapter or an alias of an existing adapter.
    pub fn exists(&self, id: &str) -> Result<bool> {
        match self.resolve(id) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What the reference's `GET /v1/lora` returns: every adapter folder id plus every alias
    /// whose target exists, filtered by string prefix, sorted and deduplicated. A prefix with a
    /// `..` component gives an empty list.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix == "." { "" } else { prefix };
        if prefix.split('/').any(|c| c == "..") {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        collect_adapters(&self.inner.root, "", &mut found)?;
        let mut out: Vec<String> = found
            .into_iter()
            .filter(|id| !id.is_empty() && id.starts_with(prefix))
            .collect();
        for (alias, target) in self.aliases()? {
            if alias.starts_with(prefix)
                && validate_id(&target).is_ok()
                && is_adapter_dir(&self.inner.root.join(&target))
            {
                out.push(alias);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Saves a new adapter `{base}-{suffix}` (suffix defaults to a UTC `%Y%m%d-%H%M%S` stamp,
    /// made unique with `-2`, `-3`, ... if taken) and points `{base}-latest` at it. A trailing
    /// `-latest` on `base_id` is dropped first, as in the reference. An explicit suffix replaces
    /// an existing adapter of that id (the reference's init does this).
    pub fn save_versioned<F, E>(
        &self,
        base_id: &str,
        suffix: Option<&str>,
        update_latest_alias: bool,
        write: F,
    ) -> Result<SavedVersion>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let base = validate_id(base_id)?;
        let base = base.strip_suffix(LATEST_SUFFIX).unwrap_or(base);
        validate_id(base)?;
        let id = match suffix {
            Some(s) => format!("{base}-{s}"),
            None => {
                let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
                let first = format!("{base}-{stamp}");
                let mut id = first.clone();
                let mut n = 2;
                while self.inner.root.join(&id).exists() {
                    id = format!("{first}-{n}");
                    n += 1;
                }
                id
            }
        };
        validate_id(&id)?;
        let version = self.save_atomic(&id, write)?;
        let latest_alias = if update_latest_alias {
            let alias = format!("{base}{LATEST_SUFFIX}");
            self.set_alias(&alias, &id)?;
            Some(alias)
        } else {
            None
        };
        Ok(SavedVersion {
            id,
            latest_alias,
            version,
        })
    }

    /// A zip archive (deflate) of every file in the resolved adapter folder, names relative to
    /// it, in sorted order. Returns the resolved adapter too.
    pub fn export_zip(&self, id: &str) -> Result<(ResolvedAdapter, Vec<u8>)> {
        let resolved = self.resolve(id)?;
        let mut files = Vec::new();
        collect_files(&resolved.dir, "", &mut files)?;
        files.sort();
        let zerr = |e: zip::result::ZipError| StoreError::Zip(e.to_string());
        let mut zw = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        for rel in files {
            let path = resolved.dir.join(&rel);
            let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            zw.start_file(rel.as_str(), opts).map_err(zerr)?;
            zw.write_all(&bytes).map_err(|e| StoreError::io(&path, e))?;
        }
        let cursor = zw.finish().map_err(zerr)?;
        Ok((resolved, cursor.into_inner()))
    }
}

fn validate_state_name(name: &str) -> Result<()> {
    if name == "lock" || name == "version" {
        return Err(StoreError::invalid(
            name,
            "this state name is reserved by the store (update lock, version counter)",
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

/// Adds to `out` every adapter folder below `dir` (relative ids, `/`-joined), skipping hidden
/// entries (the store's own `.state`, `.tmp`).
fn collect_adapters(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    if is_adapter_dir(dir) {
        out.push(rel.to_string());
    }
    // Symlinked folders are followed, so bound the depth against link cycles.
    if rel.split('/').count() >= MAX_LIST_DEPTH {
        return Ok(());
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinked folders too: a hand-made root may link adapters in.
        if entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        collect_adapters(&dir.join(&name), &child_rel, out)?;
    }
    Ok(())
}

fn collect_files(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, &child_rel, out)?;
        } else if path.is_file() {
            out.push(child_rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
