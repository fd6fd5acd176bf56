//! Adapters resolved by name on first use, the idea of vLLM's filesystem LoRA resolver: a
//! request naming a model that is not loaded is looked up under `--lora-root` (store id, alias,
//! or the served form of either, optionally `@v{N}`), loaded and registered under that name.
//!
//! A plain name follows the live folder: every use re-checks it (the API swaps folders
//! atomically and retargets aliases), and a change reloads the adapter. An `@v{N}` name is an
//! immutable version folder and is never re-checked. Adapters loaded explicitly
//! (`--lora-modules`, `--lora-alias-file`, `/v1/load_lora_adapter`) keep their behaviour.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use claas_engine::Engine;
use claas_store::{LoraStore, StoreError};

use crate::error::ApiError;

/// What identifies the contents of a live adapter folder: identity, size and time of the folder
/// and its two files. A folder swapped in by rename, or a file rewritten, changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, u64, u64, Option<std::time::SystemTime>)>);

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut out = Vec::new();
    for p in [
        dir.to_path_buf(),
        dir.join(claas_store::ADAPTER_CONFIG),
        dir.join(claas_store::ADAPTER_WEIGHTS),
    ] {
        let m = std::fs::metadata(&p)?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        out.push((dev, ino, m.len(), m.modified().ok()));
    }
    Ok(Fingerprint(out))
}

/// One adapter this resolver registered.
struct Entry {
    /// The store id or alias the name resolved through (re-checks resolve it directly).
    reference: String,
    /// `None` for an immutable `@v{N}` folder.
    fingerprint: Option<Fingerprint>,
    /// Engine version of the registration; a different one means someone loaded over it.
    engine_version: u64,
}

/// A resolved folder, ready to load.
struct Found {
    reference: String,
    dir: PathBuf,
    version: Option<u64>,
}

impl From<claas_store::ServedMatch> for Found {
    fn from(m: claas_store::ServedMatch) -> Self {
        Found {
            reference: m.reference,
            dir: m.resolved.dir,
            version: m.version,
        }
    }
}

/// Resolves and loads adapters from the LoRA root by request name.
pub(crate) struct Resolver {
    store: LoraStore,
    entries: std::sync::Mutex<HashMap<String, Entry>>,
    /// One resolution at a time, so concurrent first uses load once.
    busy: tokio::sync::Mutex<()>,
}

fn store_error(name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_)
        | StoreError::InvalidId { .. }
        | StoreError::VersionNotFound { .. } => model_missing(name),
        StoreError::InvalidAdapter { .. } => {
            ApiError::bad_param("model", format!("Loading lora {name} failed: {e}"))
        }
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("resolving {name}: {other}"),
        ),
    }
}

/// The answer for a model name nothing serves (the same as without a resolver).
pub(crate) fn model_missing(name: &str) -> ApiError {
    crate::validate::ValidationError::ModelNotFound(name.to_string()).into()
}

impl Resolver {
    /// A resolver over an opened store.
    pub(crate) fn new(store: LoraStore) -> Self {
        Resolver {
            store,
            entries: std::sync::Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Registered and needing no look at the disk: loaded explicitly, or an `@v{N}` folder.
    fn settled(&self, engine: &Engine, name: &str) -> bool {
        let Some(info) = engine.adapter(name) else {
            return false;
        };
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(name) {
            None => true,
            Some(e) => e.engine_version == info.version && e.fingerprint.is_none(),
        }
    }

    /// Makes sure `name` is registered in `engine` with the current folder's weights, if the
    /// root has it. `Ok(false)`: not a resolver name (the caller falls back to the registry).
    pub(crate) async fn ensure(&self, engine: &Engine, name: &str) -> Result<bool, ApiError> {
        if self.settled(engine, name) {
            return Ok(true);
        }
        let _busy = self.busy.lock().await;
        let current = engine.adapter(name);
        let known = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match (&current, entries.get(name)) {
                // Loaded explicitly (or over ours): served as loaded, never re-checked.
                (Some(info), Some(e)) if e.engine_version != info.version => {
                    entries.remove(name);
                    return Ok(true);
                }
                (Some(_), None) => return Ok(true),
                (Some(_), Some(e)) => Some((e.reference.clone(), e.fingerprint.clone())),
                (None, _) => {
                    entries.remove(name);
                    None
                }
            }
        };
        if let Some((_, None)) = known {
            return Ok(true); // immutable version folder
        }
        let this = (self.store.clone(), engine.clone(), name.to_string());
        let outcome = tokio::task::spawn_blocking(move || {
            let (store, engine, name) = this;
            refresh(&store, &engine, &name, known)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        match outcome {
            Some(entry) => {
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_string(), entry);
                Ok(true)
            }
            None => Ok(engine.adapter(name).is_some()),
        }
    }
}

/// Re-checks a registered name (`known`) or resolves a new one; loads when needed. `None`:
/// nothing to record (unchanged, or kept after a failed re-check).
fn refresh(
    store: &LoraStore,
    engine: &Engine,
    name: &str,
    known: Option<(String, Option<Fingerprint>)>,
) -> Result<Option<Entry>, ApiError> {
    let found = match &known {
        Some((reference, Some(fp))) => {
            // The reference it resolved through first; a full search if that is gone.
            let again = match store.resolve_served(reference) {
                Ok(mut hits) if hits.len() == 1 => Ok(Found::from(hits.remove(0))),
                Ok(_) => find(store, name),
                Err(e) => Err(store_error(reference, e)),
            };
            match again {
                Ok(f) => {
                    if fingerprint(&f.dir).ok().as_ref() == Some(fp) {
                        return Ok(None);
                    }
                    f
                }
                Err(e) => {
                    // Mid-swap or removed: keep serving the loaded weights, as an explicitly
                    // loaded adapter whose folder went away.
                    tracing::warn!("re-checking adapter {name}: {}", e.message);
                    return Ok(None);
                }
            }
        }
        _ => find(store, name)?,
    };
    load(store, engine, name, found).map(Some)
}

/// Finds `name` under the root: a store id or alias, else the served form of one.
fn find(store: &LoraStore, name: &str) -> Result<Found, ApiError> {
    let mut hits = store
        .resolve_served(name)
        .map_err(|e| store_error(name, e))?;
    match hits.len() {
        0 => Err(model_missing(name)),
        1 => Ok(Found::from(hits.remove(0))),
        _ => Err(ApiError::bad_param(
            "model",
            format!(
                "The model `{name}` matches several adapters under the LoRA root ({}); name one by its id.",
                hits.iter()
                    .map(|h| h.reference.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Loads a found folder under `name` after checking it stays inside the root.
fn load(store: &LoraStore, engine: &Engine, name: &str, f: Found) -> Result<Entry, ApiError> {
    let root = store.root();
    let canon = std::fs::canonicalize(&f.dir).map_err(|e| {
        ApiError::bad_param(
            "model",
            format!("Loading lora {name} failed: {}: {e}", f.dir.display()),
        )
    })?;
    if !canon.starts_with(root) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "adapter {name} resolves to {}, outside the LoRA root {}",
                canon.display(),
                root.display()
            ),
        ));
    }
    let load_once = || -> Result<(Option<Fingerprint>, u64), ApiError> {
        let before = match f.version {
            Some(_) => None,
            None => Some(fingerprint(&canon).map_err(|e| {
                ApiError::bad_param(
                    "model",
                    format!("Loading lora {name} failed: {}: {e}", canon.display()),
                )
            })?),
        };
        let info = engine.load_adapter(name, &canon).map_err(|e| {
            ApiError::bad_param("model", format!("Loading lora {name} failed: {e}"))
        })?;
        Ok((before, info.version))
    };
    let (mut fp, mut version) = load_once()?;
    // A swap while the files were read may have mixed two versions: read once more. Should it
    // still be moving, the recorded fingerprint is stale and the next use reloads.
    if fp.is_some() && fp != fingerprint(&canon).ok() {
        (fp, version) = load_once()?;
    }
    tracing::info!("adapter {name} resolved to {} and loaded", canon.display());
    Ok(Entry {
        reference: f.reference,
        fingerprint: fp,
        engine_version: version,
    })
}
