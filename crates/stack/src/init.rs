//! `claas init`: the initial adapter, its `-latest` alias and the OpenClaw config, each created
//! only when missing, so a second run changes nothing.

use std::path::PathBuf;

use claas_api::init::{build_adapter, model_config_json};
use claas_api::types::LoraInitRequest;
use claas_gateway::openclaw::{write_openclaw_config, OpenClawSettings};
use claas_store::LoraStore;

use crate::StackError;

/// What `claas init` sets up.
#[derive(Debug, Clone)]
pub struct InitSettings {
    /// `CLAAS_LORA_ROOT`.
    pub lora_root: PathBuf,
    /// `LORA_NAME` (e.g. `openclaw/assistant`): creates `{name}-init` and `{name}-latest`.
    pub lora_name: String,
    /// `MODEL`: the base model spec the adapter is shaped for.
    pub model: String,
    /// LoRA rank and alpha of the initial adapter.
    pub lora_r: u32,
    pub lora_alpha: u32,
    /// OpenClaw config to write, if any.
    pub openclaw: Option<OpenClawSettings>,
}

/// What changed.
#[derive(Debug, Clone, Default)]
pub struct InitSummary {
    pub created_adapter: Option<String>,
    pub created_alias: Option<(String, String)>,
    /// Files the OpenClaw writer created or changed.
    pub openclaw_changes: Vec<String>,
    pub openclaw_config: Option<PathBuf>,
}

impl InitSummary {
    /// True if anything was written.
    pub fn changed(&self) -> bool {
        self.created_adapter.is_some()
            || self.created_alias.is_some()
            || !self.openclaw_changes.is_empty()
    }

    /// Human-readable lines for the console.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(id) = &self.created_adapter {
            out.push(format!("created adapter {id}"));
        }
        if let Some((a, t)) = &self.created_alias {
            out.push(format!("created alias {a} -> {t}"));
        }
        for c in &self.openclaw_changes {
            out.push(format!("openclaw: {c}"));
        }
        if out.is_empty() {
            out.push("init: everything already in place, nothing changed".to_string());
        }
        out
    }
}

/// Runs init. Safe to call on every start.
pub fn run_init(s: &InitSettings) -> Result<InitSummary, StackError> {
    let store = LoraStore::open(&s.lora_root)?;
    let name = s.lora_name.trim_matches('/');
    let init_id = format!("{name}-init");
    let latest = format!("{name}-latest");
    let mut summary = InitSummary::default();
    if !store.exists(&init_id)? {
        let config = model_config_json(&s.model).map_err(|e| StackError::Init(e.to_string()))?;
        let req = LoraInitRequest {
            lora_id: init_id.clone(),
            base_model: s.model.clone(),
            lora_r: s.lora_r,
            lora_alpha: s.lora_alpha,
            target_modules: None,
            overwrite: false,
        };
        let seed = seed_for(&init_id);
        let adapter =
            build_adapter(&req, &config, seed).map_err(|e| StackError::Init(e.to_string()))?;
        // Version 0, so `/undo` after the first feedback has a version to go back to.
        store.create_versioned(
            &init_id,
            serde_json::json!({"kind": "init", "lora_r": s.lora_r, "lora_alpha": s.lora_alpha}),
            false,
            |dir: &std::path::Path| adapter.save(dir),
        )?;
        summary.created_adapter = Some(init_id.clone());
    }
    if !store.aliases()?.contains_key(&latest) {
        store.set_alias(&latest, &init_id)?;
        summary.created_alias = Some((latest, init_id));
    }
    if let Some(oc) = &s.openclaw {
        let report = write_openclaw_config(oc)?;
        summary.openclaw_changes = report.changes.iter().map(ToString::to_string).collect();
        summary.openclaw_config = Some(oc.config_path.clone());
    }
    Ok(summary)
}

/// A stable seed per adapter id, so re-creating a deleted adapter gives the same weights.
fn seed_for(id: &str) -> u64 {
    id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
