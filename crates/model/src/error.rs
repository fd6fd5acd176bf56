use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model or adapter.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("file not found: {0}")]
    MissingFile(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {message}")]
    Json { path: PathBuf, message: String },
    #[error(
        "unsupported architecture {0:?}: only Qwen3ForCausalLM (model_type qwen3) is supported"
    )]
    UnsupportedArchitecture(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("missing weight tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("invalid adapter: {0}")]
    Adapter(String),
    #[error("adapter does not fit this base model: {0}")]
    AdapterMismatch(String),
    #[error("LoRA rank mismatch for {key}: config says r={config}, tensor has rank {tensor}")]
    RankMismatch {
        key: String,
        config: usize,
        tensor: usize,
    },
    #[error("token id {id} is out of range for vocabulary size {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence of {len} tokens exceeds the model's context of {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("model source {spec:?}: {message}")]
    Source { spec: String, message: String },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("safetensors error in {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile(path)
        } else {
            ModelError::Io { path, source }
        }
    }
}
