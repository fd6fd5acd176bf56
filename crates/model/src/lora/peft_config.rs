//! `adapter_config.json` as PEFT writes it: the fields that decide where a LoRA applies and
//! how it scales, plus every other field kept verbatim so a save round-trips.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{json, Value};

use super::Module;
use crate::{ModelError, Result};

/// `target_modules` as PEFT accepts it: a list of name suffixes or one regex.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl TargetModules {
    fn matches(&self, module_path: &str) -> Result<bool> {
        match self {
            TargetModules::List(names) => Ok(names.iter().any(|t| {
                t == "all-linear" || module_path == t || module_path.ends_with(&format!(".{t}"))
            })),
            TargetModules::Regex(re) => {
                let re = Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| ModelError::Adapter(format!("bad target_modules regex: {e}")))?;
                Ok(re.is_match(module_path))
            }
        }
    }
}

/// The fields of `adapter_config.json` that matter for applying an adapter.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub target_modules: TargetModules,
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub base_model_name_or_path: Option<String>,
    /// The file as read, so saving keeps fields we do not interpret.
    pub raw: Value,
}

fn pattern_lookup<T: Copy>(pat: &BTreeMap<String, T>, module_path: &str) -> Option<T> {
    // PEFT: re.match(rf"(.*\.)?({key})$", module_name)
    pat.iter().find_map(|(k, v)| {
        Regex::new(&format!("^(?:.*\\.)?(?:{k})$"))
            .ok()
            .filter(|re| re.is_match(module_path))
            .map(|_| *v)
    })
}

impl LoraConfig {
    /// Parses `adapter_config.json`.
    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |m: String| ModelError::Adapter(m);
        let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!("peft_type {peft_type:?} is not LORA")));
        }
        if v.get("use_dora").and_then(Value::as_bool).unwrap_or(false) {
            return Err(bad("DoRA adapters are not supported".into()));
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|r| *r > 0)
            .ok_or_else(|| bad("adapter_config.json needs a positive integer r".into()))?
            as usize;
        let lora_alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
        let target_modules = match v.get("target_modules") {
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(a)) => TargetModules::List(
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => return Err(bad("adapter_config.json needs target_modules".into())),
        };
        let rank_pattern = v
            .get("rank_pattern")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, x)| x.as_u64().map(|x| (k.clone(), x as usize)))
                    .collect()
            })
            .unwrap_or_default();
        let alpha_pattern = v
            .get("alpha_pattern")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, x)| x.as_f64().map(|x| (k.clone(), x)))
                    .collect()
            })
            .unwrap_or_default();
        let layers_to_transform = match v.get("layers_to_transform") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as usize]),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as usize))
                    .collect(),
            ),
            _ => None,
        };
        Ok(LoraConfig {
            r,
            lora_alpha,
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            target_modules,
            rank_pattern,
            alpha_pattern,
            layers_to_transform,
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            raw: v.clone(),
        })
    }

    /// Rank of one module (honours `rank_pattern`).
    pub fn rank_for(&self, module_path: &str) -> usize {
        pattern_lookup(&self.rank_pattern, module_path).unwrap_or(self.r)
    }

    /// Scaling of one module: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale_for(&self, module_path: &str) -> f64 {
        let r = self.rank_for(module_path) as f64;
        let alpha = pattern_lookup(&self.alpha_pattern, module_path).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    pub(super) fn targets(&self, layer: usize, m: Module) -> Result<bool> {
        if let Some(layers) = &self.layers_to_transform {
            if !layers.contains(&layer) {
                return Ok(false);
            }
        }
        self.target_modules.matches(&m.module_path(layer))
    }

    /// The config file PEFT would write for this adapter.
    pub fn to_json(&self) -> Value {
        let mut v = if self.raw.is_object() {
            self.raw.clone()
        } else {
            peft_default_config()
        };
        let target = match &self.target_modules {
            TargetModules::List(l) => json!(l),
            TargetModules::Regex(r) => json!(r),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("r".into(), json!(self.r));
            o.insert("lora_alpha".into(), alpha_json(self.lora_alpha));
            o.insert("use_rslora".into(), json!(self.use_rslora));
            o.insert("target_modules".into(), target);
            o.insert("rank_pattern".into(), json!(self.rank_pattern));
            o.insert("alpha_pattern".into(), json!(self.alpha_pattern));
            o.insert(
                "base_model_name_or_path".into(),
                json!(self.base_model_name_or_path),
            );
            o.insert("peft_type".into(), json!("LORA"));
        }
        v
    }
}

fn alpha_json(a: f64) -> Value {
    if a.fract() == 0.0 && a.abs() < 1e15 {
        json!(a as i64)
    } else {
        json!(a)
    }
}

/// Every field PEFT 0.21 writes into a LoRA `adapter_config.json`, with its default.
pub(super) fn peft_default_config() -> Value {
    json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": null,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": 8,
        "lora_bias": false,
        "lora_dropout": 0.0,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": 8,
        "rank_pattern": {},
        "revision": null,
        "target_modules": [],
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    })
}

/// Settings for a fresh adapter (what `POST /v1/lora/init` takes).
#[derive(Debug, Clone)]
pub struct LoraInit {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    pub base_model_name_or_path: Option<String>,
}
