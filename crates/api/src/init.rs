//! `/v1/lora/init`: a fresh PEFT adapter shaped for a base model (A kaiming-uniform, B zero,
//! so it changes nothing), created from the model's `config.json` alone — no weights are
//! downloaded, as in the reference.

use std::path::Path;

use claas_model::{Device, LoraAdapter, LoraInit, ModelSource, Qwen3Config};
use serde_json::Value;

use crate::types::{LoraInitRequest, DEFAULT_TARGET_MODULES};

/// Why a base model's config could not be obtained or used.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("base model {spec:?}: {message}")]
    Config { spec: String, message: String },
    /// The hub could not be reached or refused the download.
    #[error("base model {spec:?}: {message}")]
    Hub { spec: String, message: String },
    #[error("{0}")]
    Model(#[from] claas_model::ModelError),
}

fn cfg_err(spec: &str, message: impl Into<String>) -> InitError {
    InitError::Config {
        spec: spec.to_string(),
        message: message.into(),
    }
}

impl InitError {
    /// Whether another service (the model hub) failed rather than this server or the request.
    pub fn is_upstream(&self) -> bool {
        matches!(self, InitError::Hub { .. })
    }
}

fn hub_err(spec: &str, message: impl Into<String>) -> InitError {
    InitError::Hub {
        spec: spec.to_string(),
        message: message.into(),
    }
}

fn read_json(spec: &str, path: &Path) -> Result<Value, InitError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| cfg_err(spec, format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| cfg_err(spec, format!("{}: {e}", path.display())))
}

/// The `config.json` of a model spec: a local folder, `builtin:NAME`, or a hub id (from the
/// Hugging Face cache, else only `config.json` is fetched from the hub).
pub fn model_config_json(spec: &str) -> Result<Value, InitError> {
    match ModelSource::parse(spec)? {
        ModelSource::Local(dir) => read_json(spec, &dir.join("config.json")),
        ModelSource::Builtin(name) => {
            let dir = claas_model::builtin_model_dir(&name)?;
            read_json(spec, &dir.join("config.json"))
        }
        ModelSource::Hub { repo, revision } => {
            let repo_dir =
                claas_model::hf_hub_cache().join(format!("models--{}", repo.replace('/', "--")));
            let commit = std::fs::read_to_string(repo_dir.join("refs").join(&revision))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| revision.clone());
            let cached = repo_dir.join("snapshots").join(&commit).join("config.json");
            if cached.is_file() {
                return read_json(spec, &cached);
            }
            let endpoint =
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
            let url = format!("{endpoint}/{repo}/resolve/{revision}/config.json");
            let client = reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .map_err(|e| cfg_err(spec, e.to_string()))?;
            let mut rb = client.get(&url);
            if let Ok(t) =
                std::env::var("HF_TOKEN").or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN"))
            {
                if !t.is_empty() {
                    rb = rb.bearer_auth(t);
                }
            }
            let resp = rb.send().map_err(|e| {
                hub_err(
                    spec,
                    format!("config.json is not cached and the hub is unreachable: {e}"),
                )
            })?;
            if !resp.status().is_success() {
                return Err(hub_err(
                    spec,
                    format!(
                        "the hub answered {} for {url} (gated model? set HF_TOKEN)",
                        resp.status()
                    ),
                ));
            }
            resp.json::<Value>()
                .map_err(|e| hub_err(spec, format!("config.json from the hub: {e}")))
        }
    }
}

/// Builds a fresh adapter for `req` on a model whose `config.json` is `config`.
pub fn build_adapter(
    req: &LoraInitRequest,
    config: &Value,
    seed: u64,
) -> Result<LoraAdapter, InitError> {
    let model = Qwen3Config::from_json(config)?;
    let targets = req.target_modules.clone().unwrap_or_else(|| {
        DEFAULT_TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    let init = LoraInit {
        r: req.lora_r as usize,
        lora_alpha: req.lora_alpha as f64,
        target_modules: targets,
        use_rslora: false,
        base_model_name_or_path: Some(req.base_model.clone()),
    };
    Ok(LoraAdapter::init(&init, &model, seed, &Device::Cpu)?)
}
