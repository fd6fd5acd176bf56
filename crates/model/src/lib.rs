//! Qwen3 model core for claas: Hugging Face model folders (local, hub cache, built-in demo),
//! the Qwen3 forward pass (KV-cached, batched with a per-sequence LoRA, and a differentiable
//! path for training), and PEFT-format LoRA adapters.

mod attention;
mod bgmv;
mod builtin;
mod config;
mod error;
mod frozen;
mod fused;
mod kv;
mod lora;
mod qwen3;
mod random;
mod source;
mod weights;

pub use builtin::{builtin_model_dir, write_builtin_model, BUILTIN_TINY};
pub use config::Qwen3Config;
pub use error::ModelError;
pub use kv::{KvBlock, KvCache};
pub use lora::{LoraAdapter, LoraConfig, LoraInit, LoraPair, Module, TrainableLora, ALL_MODULES};
pub use qwen3::{CheckpointedLogits, ForwardMode, Qwen3, SeqInput};
pub use random::random_model_dir;
pub use source::{hf_hub_cache, resolve_model, ModelSource};
pub use weights::{
    parse_dtype, parse_matmul_precision, parse_quantization, LoadOptions, Quantization,
};

/// How activations enter products by bf16 weights; see [`claas_kernels::Precision`].
pub use claas_kernels::Precision as MatmulPrecision;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

pub use candle_core::{DType, Device, Tensor, Var};
