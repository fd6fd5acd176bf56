//! Adapter folders: saving in place, saving under a new time-stamped id, resolving ids and
//! aliases, listing.

use std::fs;
use std::io;
use std::path::Path;

use crate::txn::is_adapter_dir;
use crate::{
    validate_id, LoraStore, ResolvedAdapter, Result, SavedVersion, StoreError, LATEST_SUFFIX,
};

const MAX_LIST_DEPTH: usize = 16;

impl LoraStore {
    /// Refuses ids that would nest an adapter inside another one (or around one): replacing
    /// the outer folder would otherwise move the inner adapter too.
    pub(crate) fn check_not_nested(&self, id: &str) -> Result<()> {
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
    /// `adapter_config.json`. If `write` fails nothing changes. On an adapter with version
    /// history the new folder is not a version: afterwards no version is current.
    pub fn save_atomic<F, E>(&self, id: &str, write: F) -> Result<u64>
    where
        F: FnOnce(&Path) -> std::result::Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = validate_id(id)?;
        self.check_not_nested(id)?;
        // A copied (not linked) live folder would otherwise still match the hint's version.
        self.clear_current_hint(id)?;
        self.replace_dir(id, true, write)?;
        self.bump_version(id)
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
    /// `..` component gives an empty list. Versions are not listed (see
    /// [`LoraStore::versions`]).
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
}

/// Adds to `out` every adapter folder below `dir` (relative ids, `/`-joined), skipping hidden
/// entries (the store's own `.state`, `.tmp`, `.versions`).
pub(crate) fn collect_adapters(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
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
