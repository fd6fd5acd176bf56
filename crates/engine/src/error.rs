use claas_model::ModelError;

/// Everything the engine can refuse or fail with. Callers map these to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the request queue is full ({0} waiting); retry later")]
    QueueFull(usize),
    #[error("the engine is sleeping; call /wake_up first")]
    Sleeping,
    #[error("the engine has stopped")]
    Stopped,
    #[error("unknown LoRA adapter {0:?}")]
    UnknownAdapter(String),
    #[error("This model's maximum context length is {max} tokens. However, you requested {len} tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or completion.")]
    TooLong {
        len: usize,
        max: usize,
        prompt: usize,
        completion: usize,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is out of range for vocabulary size {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("invalid sampling parameter: {0}")]
    InvalidParams(String),
    #[error("invalid LoRA adapter: {0}")]
    Adapter(String),
    #[error("sleep mode: {0}")]
    SleepMode(String),
    #[error("cannot start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl EngineError {
    /// True for errors caused by the request itself (HTTP 400).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::UnknownAdapter(_)
                | EngineError::TooLong { .. }
                | EngineError::EmptyPrompt
                | EngineError::TokenOutOfRange { .. }
                | EngineError::InvalidParams(_)
                | EngineError::Adapter(_)
        )
    }
}
