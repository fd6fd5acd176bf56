//! Adapter folders: saving in place, saving under a new time-stamped id, resolving ids and
//! aliases, listing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::ids::MAX_ID_DEPTH;
use crate::txn::is_adapter_dir;
use crate::{
    validate_id, LoraStore, ResolvedAdapter, Result, SavedVersion, StoreError, LATEST_SUFFIX,
};

impl LoraStore {
    /// Refuses ids that would nest an adapter inside another one (or around one): replacing
    /// the outer folder would otherwise move the inner adapter too.
    pub(crate) fn check_not_nested(&self, id: &str) -> Result<()> {
        self.check_inside_root(id)?;
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
            self.collect_adapters(&dir, "", &mut inner)?;
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
        self.collect_adapters(&self.inner.root, "", &mut found)?;
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
                // After the highest number this second already used, so a name retention
                // deleted is never handed out again (servers may still cache it).
                let prefix = format!("{}-", base.rsplit('/').next().unwrap_or(base));
                let used = self
                    .stamped_saves(base)?
                    .iter()
                    .filter_map(|id| {
                        let leaf = id.rsplit('/').next().unwrap_or(id);
                        parse_stamp(leaf.strip_prefix(&prefix)?)
                    })
                    .filter(|(s, _)| *s == stamp)
                    .map(|(_, n)| n)
                    .max();
                let mut n = used.map_or(1, |m| m + 1);
                let name = |n: u64| {
                    if n == 1 {
                        first.clone()
                    } else {
                        format!("{first}-{n}")
                    }
                };
                let mut id = name(n);
                while self.inner.root.join(&id).exists() {
                    n += 1;
                    id = name(n);
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

/// `(stamp, n)` of a [`LoraStore::save_versioned`] suffix `YYYYmmdd-HHMMSS[-n]` (n = 1 when
/// absent), or None for anything else.
fn parse_stamp(suffix: &str) -> Option<(String, u64)> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = suffix.split('-');
    let (date, time) = (parts.next()?, parts.next()?);
    if !digits(date, 8) || !digits(time, 6) {
        return None;
    }
    let n = match parts.next() {
        None => 1,
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok()?,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((format!("{date}-{time}"), n))
}

impl LoraStore {
    /// The adapters [`LoraStore::save_versioned`] made for `base` without an explicit suffix
    /// (`{base}-YYYYmmdd-HHMMSS[-n]`), oldest first.
    pub fn stamped_saves(&self, base: &str) -> Result<Vec<String>> {
        let base = validate_id(base)?;
        let base = base.strip_suffix(LATEST_SUFFIX).unwrap_or(base);
        let (parent_rel, leaf) = match base.rsplit_once('/') {
            Some((p, l)) => (Some(p), l),
            None => (None, base),
        };
        let parent = match parent_rel {
            Some(p) => self.inner.root.join(p),
            None => self.inner.root.clone(),
        };
        // Never through a link: the parent must be a real folder inside the root.
        if !self.is_inside_root(&parent) {
            return Ok(Vec::new());
        }
        let entries = match fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&parent, e)),
        };
        let prefix = format!("{leaf}-");
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&parent, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_prefix(&prefix).and_then(parse_stamp) else {
                continue;
            };
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(true);
            if !is_link && is_adapter_dir(&entry.path()) {
                let id = match parent_rel {
                    Some(p) => format!("{p}/{name}"),
                    None => name,
                };
                found.push((key, id));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// Retention for [`LoraStore::save_versioned`]'s time-stamped saves of `base` (what
    /// `/v1/distill` makes): deletes all but the newest `keep` (at least 1), never one an alias
    /// points at, nor one whose update lock someone holds (it is being trained on). Returns the
    /// deleted ids, so their served names can be unloaded.
    pub fn prune_stamped_saves(&self, base: &str, keep: usize) -> Result<Vec<String>> {
        let saves = self.stamped_saves(base)?;
        let keep = keep.max(1);
        if saves.len() <= keep {
            return Ok(Vec::new());
        }
        let targets: std::collections::HashSet<String> = self.aliases()?.into_values().collect();
        let mut deleted = Vec::new();
        for id in &saves[..saves.len() - keep] {
            if targets.contains(id) {
                continue;
            }
            // One being trained on (here or in another process) stays; the next call retries.
            let Some(_update) = self.try_lock_adapter(id)? else {
                continue;
            };
            if self.delete(id)? {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }
}

impl LoraStore {
    /// Adds to `out` every adapter folder below `dir` (relative ids, `/`-joined), skipping
    /// hidden entries (the store's own `.state`, `.tmp`, `.versions`). Links to folders inside
    /// the root are followed (a hand-made root may link one adapter in under two names); links
    /// out of the root, broken links and link loops are not.
    pub(crate) fn collect_adapters(
        &self,
        dir: &Path,
        rel: &str,
        out: &mut Vec<String>,
    ) -> Result<()> {
        let mut on_path = Vec::new();
        self.collect_from(dir, rel, out, &mut on_path)
    }

    fn collect_from(
        &self,
        dir: &Path,
        rel: &str,
        out: &mut Vec<String>,
        on_path: &mut Vec<PathBuf>,
    ) -> Result<()> {
        // The real folder: a link back to a folder we are already inside is a loop.
        let Ok(real) = dir.canonicalize() else {
            return Ok(());
        };
        if !real.starts_with(&self.inner.root) || on_path.contains(&real) {
            return Ok(());
        }
        if is_adapter_dir(dir) && !rel.is_empty() {
            out.push(rel.to_string());
        }
        // Ids deeper than this are refused by `validate_id`, so nothing below is an adapter.
        if !rel.is_empty() && rel.split('/').count() >= MAX_ID_DEPTH {
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
            if entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        on_path.push(real);
        for name in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            self.collect_from(&dir.join(&name), &child_rel, out, on_path)?;
        }
        on_path.pop();
        Ok(())
    }
}
