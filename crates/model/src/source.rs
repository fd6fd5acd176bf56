//! Where a model comes from: the built-in demo model, a local folder, or a Hugging Face hub id
//! resolved through the standard cache (downloaded when online).

use std::io::{Read, Write};
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

fn resolve_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    resolve_hub_in(&hf_hub_cache(), repo, revision, offline())
}

/// Looks `repo@revision` up in a hub cache laid out as huggingface_hub does
/// (`models--org--name/refs/REV` -> `snapshots/SHA/`), downloading when missing and online.
fn resolve_hub_in(cache: &Path, repo: &str, revision: &str, offline: bool) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snap = repo_dir.join("snapshots").join(&commit);
    if snapshot_complete(&snap) {
        return Ok(snap);
    }
    if offline {
        return Err(ModelError::Source {
            spec: repo.to_string(),
            message: format!(
                "not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set",
                repo_dir.display()
            ),
        });
    }
    download(repo, revision, &repo_dir)
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string())
}

fn client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .user_agent(concat!("claas/", env!("CARGO_PKG_VERSION")))
        .timeout(None)
        .build()
        .map_err(|e| ModelError::Source {
            spec: "hub".into(),
            message: e.to_string(),
        })
}

fn authed(rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    match std::env::var("HF_TOKEN").or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN")) {
        Ok(t) if !t.is_empty() => rb.bearer_auth(t),
        _ => rb,
    }
}

/// Downloads the files a Qwen3 folder needs into `snapshots/{sha}/` and records `refs/{rev}`.
fn download(repo: &str, revision: &str, repo_dir: &Path) -> Result<PathBuf> {
    let fail = |m: String| ModelError::Source {
        spec: repo.to_string(),
        message: m,
    };
    let http = client()?;
    let info_url = format!("{}/api/models/{repo}/revision/{revision}", endpoint());
    let resp = authed(http.get(&info_url)).send().map_err(|e| {
        fail(format!(
            "not in the Hugging Face cache ({}) and the hub is unreachable: {e}",
            repo_dir.display()
        ))
    })?;
    if !resp.status().is_success() {
        return Err(fail(format!(
            "hub answered {} for {info_url} (gated model? set HF_TOKEN)",
            resp.status()
        )));
    }
    let info: serde_json::Value = resp.json().map_err(|e| fail(e.to_string()))?;
    let sha = info
        .get("sha")
        .and_then(|s| s.as_str())
        .unwrap_or(revision)
        .to_string();
    let files: Vec<String> = info
        .get("siblings")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|f| f.get("rfilename").and_then(|n| n.as_str()))
                .filter(|n| n.ends_with(".json") && !n.contains('/') || n.ends_with(".safetensors"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(fail("the hub lists no json/safetensors files".into()));
    }
    let snap = repo_dir.join("snapshots").join(&sha);
    std::fs::create_dir_all(&snap).map_err(|e| ModelError::io(&snap, e))?;
    for f in &files {
        let dest = snap.join(f);
        if dest.is_file() {
            continue;
        }
        let url = format!("{}/{repo}/resolve/{sha}/{f}", endpoint());
        fetch_file(&http, &url, &dest).map_err(|e| fail(format!("{f}: {e}")))?;
    }
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| ModelError::io(&refs, e))?;
    std::fs::write(refs.join(revision), &sha).map_err(|e| ModelError::io(&refs, e))?;
    Ok(snap)
}

fn fetch_file(
    http: &reqwest::blocking::Client,
    url: &str,
    dest: &Path,
) -> std::result::Result<(), String> {
    let mut resp = authed(http.get(url)).send().map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let total = resp.content_length();
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dir = dest.parent().ok_or("no parent folder")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    claas_fsatomic::write_file_with(dest, |tmp| {
        let mut buf = vec![0u8; 1 << 20];
        let mut done: u64 = 0;
        let mut last_print = std::time::Instant::now();
        loop {
            let n = resp.read(&mut buf)?;
            if n == 0 {
                break;
            }
            tmp.write_all(&buf[..n])?;
            done += n as u64;
            if last_print.elapsed().as_millis() > 500 {
                last_print = std::time::Instant::now();
                progress(&name, done, total);
            }
        }
        progress(&name, done, total);
        eprintln!();
        Ok(())
    })
    .map_err(|e| e.to_string())
}

fn progress(name: &str, done: u64, total: Option<u64>) {
    let mb = |b: u64| b as f64 / 1_048_576.0;
    match total {
        Some(t) if t > 0 => {
            let pct = done as f64 * 100.0 / t as f64;
            let bar = "#".repeat((pct / 5.0) as usize);
            eprint!(
                "\r{name:<40} [{bar:<20}] {pct:5.1}% {:.1}/{:.1} MiB",
                mb(done),
                mb(t)
            );
        }
        _ => eprint!("\r{name:<40} {:.1} MiB", mb(done)),
    }
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
        let dir = resolve_hub_in(cache.path(), "Qwen/Qwen3-Tiny", "main", true).unwrap();
        assert_eq!(dir, repo.join("snapshots").join("abc123"));
        // A commit hash works as the revision too.
        let dir = resolve_hub_in(cache.path(), "Qwen/Qwen3-Tiny", "abc123", true).unwrap();
        assert!(dir.join("config.json").is_file());
    }

    #[test]
    fn offline_and_not_cached_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        let e = resolve_hub_in(cache.path(), "Qwen/Qwen3-0.6B", "main", true).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("Qwen/Qwen3-0.6B") && msg.contains("HF_HUB_OFFLINE"),
            "{msg}"
        );
        // An incomplete snapshot (no weights) is not taken for a model.
        let snap = cache.path().join("models--Qwen--Qwen3-0.6B/snapshots/main");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert!(resolve_hub_in(cache.path(), "Qwen/Qwen3-0.6B", "main", true).is_err());
    }
}
