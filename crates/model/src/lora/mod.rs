//! PEFT-format LoRA adapters, in three parts: the `adapter_config.json` model
//! ([`peft_config`]), the adapter the forward pass applies ([`adapter`]: load, validate,
//! initialise, save) and its trainable twin for the SDPO step ([`trainable`]). This file holds
//! the vocabulary all three share: which Qwen3 projection a LoRA pair belongs to.

mod adapter;
mod peft_config;
mod trainable;

pub use adapter::{LoraAdapter, LoraPair};
pub use peft_config::{LoraConfig, LoraInit};
pub use trainable::TrainableLora;

use crate::Qwen3Config;

/// One of the seven linear projections of a Qwen3 layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// The seven projections, in PEFT's usual order.
pub const ALL_MODULES: [Module; 7] = [
    Module::Q,
    Module::K,
    Module::V,
    Module::O,
    Module::Gate,
    Module::Up,
    Module::Down,
];

impl Module {
    /// Name of the projection (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Module::Q | Module::K | Module::V | Module::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Parses a projection name.
    pub fn from_name(s: &str) -> Option<Module> {
        ALL_MODULES.into_iter().find(|m| m.name() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// `(in_features, out_features)` of this projection in a model.
    pub fn dims(self, cfg: &Qwen3Config) -> (usize, usize) {
        let h = cfg.hidden_size;
        match self {
            Module::Q => (h, cfg.q_dim()),
            Module::K | Module::V => (h, cfg.kv_dim()),
            Module::O => (cfg.q_dim(), h),
            Module::Gate | Module::Up => (h, cfg.intermediate_size),
            Module::Down => (cfg.intermediate_size, h),
        }
    }

    /// Module path inside the transformers model, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.parent(), self.name())
    }

    /// Key of a LoRA tensor as PEFT saves it.
    pub fn peft_key(self, layer: usize, which: char) -> String {
        format!(
            "base_model.model.{}.lora_{which}.weight",
            self.module_path(layer)
        )
    }
}
