//! Where a model comes from: the built-in demo model, a local folder, or a Hugging Face hub id
//! resolved through the standard cache (downloaded when online).

use std::path::{Path, PathBuf};

use crate::{ModelError, Result};

/// A parsed `--model` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `builtin:NAME` — generated deterministically into the local cache.
    Builtin(String),
    /// A folder with config.json, weights and tokenizer files.
    Local(PathBuf),
    /// `org/name` or `org/name@revision` on the Hugging Face hub.
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// Parses a model spec. An existing path wins over a hub id of the same spelling.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let err = |m: &str| ModelError::Source {
            spec: spec.to_string(),
            message: m.to_string(),
        };
        if spec.is_empty() {
            return Err(err("empty model name"));
        }
        if let Some(name) = spec.strip_prefix("builtin:") {
            return Ok(ModelSource::Builtin(name.to_string()));
        }
        let p = Path::new(spec);
        if p.exists() || spec.starts_with('/') || spec.starts_with('.') || spec.starts_with('~') {
            return Ok(ModelSource::Local(p.to_path_buf()));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (spec, "main"),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((org, name)) if valid(org) && valid(name) && valid(revision) => {
                Ok(ModelSource::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                })
            }
            _ => Err(err(
                "not an existing folder, not `builtin:NAME`, and not a hub id like `Qwen/Qwen3-0.6B`",
            )),
        }
    }
}

/// Resolves a model spec to a local folder, generating (built-in) or downloading (hub) it
/// first when needed.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    match ModelSource::parse(spec)? {
        ModelSource::Builtin(name) => crate::builtin::builtin_model_dir(&name),
        ModelSource::Local(p) => {
            if !p.join("config.json").is_file() {
                return Err(ModelError::MissingFile(p.join("config.json")));
            }
            Ok(p)
        }
        ModelSource::Hub { repo, revision } => resolve_hub(&repo, &revision),
    }
}

/// The hub cache root as huggingface_hub computes it (`HF_HUB_CACHE`, `HF_HOME/hub`,
/// `XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`).
pub fn hf_hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("huggingface").join("hub");
    }
    home_dir().join(".cache").join("huggingface").join("hub")
}

pub(crate) fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn snapshot_complete(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && dir.join("tokenizer.json").is_file()
        && crate::weights::weight_files(dir).is_ok()
}

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false)
    })
}

/// Where and as whom to download from the hub.
struct Hub {
    endpoint: String,
    token: Option<String>,
}

impl Hub {
    /// `HF_ENDPOINT`, and `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`, or the token file
    /// `huggingface-cli login` writes under `HF_HOME`).
    fn from_env() -> Self {
        let token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|t| !t.is_empty())
            .or_else(|| hf_hub::Cache::from_env().token());
        Hub {
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".to_string()),
            token,
        }
    }
}

fn resolve_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    let hub = (!offline()).then(Hub::from_env);
    resolve_hub_in(&hf_hub_cache(), repo, revision, hub.as_ref())
}

/// Looks `repo@revision` up in a hub cache laid out as huggingface_hub does
/// (`models--org--name/refs/REV` -> `snapshots/SHA/`), downloading into it when missing and a
/// `hub` is given (none when offline).
fn resolve_hub_in(cache: &Path, repo: &str, revision: &str, hub: Option<&Hub>) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snap = repo_dir.join("snapshots").join(&commit);
    if snapshot_complete(&snap) {
        return Ok(snap);
    }
    let Some(hub) = hub else {
        return Err(ModelError::Source {
            spec: repo.to_string(),
            message: format!(
                "not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set",
                repo_dir.display()
            ),
        });
    };
    download(hub, cache, repo, revision)
}

/// Downloads the files a Qwen3 folder needs through `hf-hub`, which writes the cache exactly
/// as huggingface_hub does (`blobs/`, `snapshots/SHA/` links, `refs/REV`) with a progress bar
/// per file, and returns the snapshot folder.
fn download(hub: &Hub, cache: &Path, repo: &str, revision: &str) -> Result<PathBuf> {
    let fail = |m: String| ModelError::Source {
        spec: repo.to_string(),
        message: m,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_user_agent("claas", env!("CARGO_PKG_VERSION"))
        .with_progress(true)
        .build()
        .map_err(|e| fail(format!("cannot set up the hub client: {e}")))?;
    let remote = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let info = remote.info().map_err(|e| {
        fail(format!(
            "not in the Hugging Face cache ({}) and the hub did not list it: {e} \
             (offline? gated model? set HF_TOKEN)",
            cache.display()
        ))
    })?;
    // The config and tokenizer files at the top, and the weights; not docs, images or
    // other formats' weights.
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|n| n.ends_with(".json") && !n.contains('/') || n.ends_with(".safetensors"))
        .collect();
    if !files.contains(&"config.json") {
        return Err(fail("the hub lists no config.json".into()));
    }
    let mut snapshot = None;
    for f in files {
        let path = remote.get(f).map_err(|e| fail(format!("{f}: {e}")))?;
        if f == "config.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    snapshot.ok_or_else(|| fail("config.json was stored outside a snapshot folder".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            ModelSource::parse("builtin:tiny").unwrap(),
            ModelSource::Builtin("tiny".into())
        );
        assert_eq!(
            ModelSource::parse("Qwen/Qwen3-0.6B").unwrap(),
            ModelSource::Hub {
                repo: "Qwen/Qwen3-0.6B".into(),
                revision: "main".into()
            }
        );
        assert!(matches!(
            ModelSource::parse("./some/folder").unwrap(),
            ModelSource::Local(_)
        ));
        assert!(ModelSource::parse("not a model").is_err());
        assert!(ModelSource::parse("").is_err());
        assert!(ModelSource::parse("a/../b").is_err());
    }

    fn copy_fixture_model(to: &Path) {
        let src = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/tiny-qwen3"
        ));
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(src).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }

    #[test]
    fn hub_ids_resolve_through_the_cache_layout() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--Qwen--Qwen3-Tiny");
        copy_fixture_model(&repo.join("snapshots").join("abc123"));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        let dir = resolve_hub_in(cache.path(), "Qwen/Qwen3-Tiny", "main", None).unwrap();
        assert_eq!(dir, repo.join("snapshots").join("abc123"));
        // A commit hash works as the revision too.
        let dir = resolve_hub_in(cache.path(), "Qwen/Qwen3-Tiny", "abc123", None).unwrap();
        assert!(dir.join("config.json").is_file());
    }

    #[test]
    fn offline_and_not_cached_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        let e = resolve_hub_in(cache.path(), "Qwen/Qwen3-0.6B", "main", None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("Qwen/Qwen3-0.6B") && msg.contains("HF_HUB_OFFLINE"),
            "{msg}"
        );
        // An incomplete snapshot (no weights) is not taken for a model.
        let snap = cache.path().join("models--Qwen--Qwen3-0.6B/snapshots/main");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert!(resolve_hub_in(cache.path(), "Qwen/Qwen3-0.6B", "main", None).is_err());
    }

    /// The two hub routes hf-hub 0.4 calls (repo listing; ranged file reads answering with the
    /// etag and commit headers), serving `files` at commit `sha` plus a README that must not be
    /// fetched. Records the Authorization header of every request.
    fn fake_hub(
        files: Vec<(String, Vec<u8>)>,
        sha: &'static str,
    ) -> (
        tokio::runtime::Runtime,
        String,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::{header, HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use std::sync::{Arc, Mutex};

        type Shared = (Arc<Vec<(String, Vec<u8>)>>, Arc<Mutex<Vec<String>>>);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared: Shared = (Arc::new(files), seen.clone());
        let note = |h: &HeaderMap, seen: &Mutex<Vec<String>>| {
            let auth = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            seen.lock().unwrap().push(auth.unwrap_or("").to_string());
        };
        let listing = move |State((files, seen)): State<Shared>, h: HeaderMap| async move {
            note(&h, &seen);
            let mut siblings: Vec<_> = files
                .iter()
                .map(|(n, _)| serde_json::json!({ "rfilename": n }))
                .collect();
            siblings.push(serde_json::json!({ "rfilename": "README.md" }));
            axum::Json(serde_json::json!({ "sha": sha, "siblings": siblings }))
        };
        let file = move |State((files, seen)): State<Shared>,
                         UrlPath((_, _, _, name)): UrlPath<(String, String, String, String)>,
                         h: HeaderMap| async move {
            note(&h, &seen);
            let Some(i) = files.iter().position(|(n, _)| *n == name) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let body = &files[i].1;
            let range = h.get(header::RANGE).and_then(|v| v.to_str().ok());
            let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
                Some(r) => {
                    let (a, b) = r.split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b = b.parse::<usize>().map_or(body.len(), |b| b + 1);
                    (a, b.min(body.len()))
                }
                None => (0, body.len()),
            };
            (
                StatusCode::PARTIAL_CONTENT,
                [
                    (
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{}", end.max(1) - 1, body.len()),
                    ),
                    (header::ETAG, format!("\"blob{i}\"")),
                    (header::HeaderName::from_static("x-repo-commit"), sha.into()),
                ],
                body[start..end].to_vec(),
            )
                .into_response()
        };
        let router = axum::Router::new()
            .route(
                "/api/models/{org}/{name}/revision/{rev}",
                axum::routing::get(listing),
            )
            .route(
                "/{org}/{name}/resolve/{rev}/{*file}",
                axum::routing::get(file),
            )
            .with_state(shared);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, router).await.unwrap() });
        (rt, url, seen)
    }

    #[test]
    fn hub_downloads_go_through_hf_hub_into_the_standard_cache_layout() {
        let fixture = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/tiny-qwen3"
        ));
        let mut files = Vec::new();
        for f in std::fs::read_dir(fixture).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().to_string();
            files.push((name, std::fs::read(f.path()).unwrap()));
        }
        const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
        let (_rt, url, seen) = fake_hub(files.clone(), SHA);
        let hub = Hub {
            endpoint: url,
            token: Some("hf_test".into()),
        };
        let cache = tempfile::tempdir().unwrap();
        let dir = resolve_hub_in(cache.path(), "Qwen/Qwen3-Tiny", "main", Some(&hub)).unwrap();

        let repo = cache.path().join("models--Qwen--Qwen3-Tiny");
        assert_eq!(dir, repo.join("snapshots").join(SHA));
        let main = std::fs::read_to_string(repo.join("refs").join("main")).unwrap();
        assert_eq!(main.trim(), SHA);
        for (name, bytes) in &files {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
            // Stored once under blobs/, linked from the snapshot, as huggingface_hub does.
            assert!(
                dir.join(name).symlink_metadata().unwrap().is_symlink(),
                "{name}"
            );
        }
        assert!(!dir.join("README.md").exists());
        // Every request carried the token.
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|a| a == "Bearer hf_test"), "{seen:?}");
        // Offline, the cache alone now resolves it.
        assert_eq!(
            resolve_hub_in(cache.path(), "Qwen/Qwen3-Tiny", "main", None).unwrap(),
            dir
        );
    }
}
