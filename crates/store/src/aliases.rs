//! The alias map `{root}/.aliases.json` (alias id -> adapter id), rewritten atomically under an
//! in-process mutex plus a cross-process file lock.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;

use crate::txn::{is_adapter_dir, open_lock_file, write_file_atomic};
use crate::{validate_id, LoraStore, Result, StoreError, ALIASES_FILE_NAME, STATE_DIR_NAME};

impl LoraStore {
    fn aliases_path(&self) -> std::path::PathBuf {
        self.inner.root.join(ALIASES_FILE_NAME)
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
    pub(crate) fn lock_aliases_file(&self) -> Result<File> {
        let path = self.inner.root.join(STATE_DIR_NAME).join("@aliases.lock");
        let f = open_lock_file(&path)?;
        f.lock().map_err(|e| StoreError::io(&path, e))?;
        Ok(f)
    }

    fn write_aliases(&self, aliases: &BTreeMap<String, String>) -> Result<()> {
        let text = serde_json::to_string_pretty(aliases).map_err(|e| StoreError::AliasFile {
            path: self.aliases_path(),
            message: e.to_string(),
        })?;
        write_file_atomic(&self.aliases_path(), text.as_bytes())
    }

    /// Read-modify-write of the alias map under both locks; `change` returns whether it
    /// changed anything (nothing is written otherwise).
    fn update_aliases(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> bool,
    ) -> Result<bool> {
        let _g = self
            .inner
            .aliases_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _file = self.lock_aliases_file()?;
        let mut aliases = self.aliases()?;
        let changed = change(&mut aliases);
        if changed {
            self.write_aliases(&aliases)?;
        }
        Ok(changed)
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
        self.update_aliases(|a| {
            a.insert(alias.to_string(), target.to_string());
            true
        })
        .map(drop)
    }

    /// Removes an alias; returns whether it existed.
    pub fn remove_alias(&self, alias: &str) -> Result<bool> {
        let alias = validate_id(alias)?;
        self.update_aliases(|a| a.remove(alias).is_some())
    }

    /// Removes every alias pointing at `target`; returns how many there were.
    pub(crate) fn remove_aliases_of(&self, target: &str) -> Result<usize> {
        let mut n = 0;
        self.update_aliases(|a| {
            let before = a.len();
            a.retain(|_, t| t != target);
            n = before - a.len();
            n > 0
        })?;
        Ok(n)
    }
}
