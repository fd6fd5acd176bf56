//! Typed errors of the SDPO trainer.

use claas_model::ModelError;

/// Everything that can go wrong in an SDPO step or a scoring call.
///
/// [`SdpoError::is_bad_input`] tells the API which variants are the caller's fault (HTTP 422)
/// and which are internal failures (HTTP 500).
#[derive(Debug, thiserror::Error)]
pub enum SdpoError {
    /// A request value is out of range or inconsistent (422).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `rollout_logprobs` does not have one value per response token (422).
    #[error(
        "rollout_logprobs has {got} values but the response has {expected} tokens \
         (one log-probability per response token is required)"
    )]
    RolloutLengthMismatch {
        /// Number of response tokens.
        expected: usize,
        /// Number of values given.
        got: usize,
    },
    /// A requested feature this trainer does not provide, e.g. `teacher_mode: "remote"` (422).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The sequence is longer than the model's context (422).
    #[error("input too long: {0}")]
    TooLong(String),
    /// Tokenizer or chat template failure (500).
    #[error("tokenizer/chat template error: {0}")]
    Chat(String),
    /// Model forward or adapter failure (500).
    #[error("model error: {0}")]
    Model(#[source] ModelError),
    /// Tensor arithmetic failure (500).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Optimizer state file could not be read or written (500).
    #[error("optimizer state {path}: {message}")]
    OptimizerState {
        /// File or folder concerned.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The loss or a gradient became NaN/inf; the adapter was not changed (500).
    #[error("numerical failure: {0}")]
    NonFinite(String),
}

impl SdpoError {
    /// True when the caller sent something invalid (map to HTTP 422), false for internal errors.
    pub fn is_bad_input(&self) -> bool {
        match self {
            SdpoError::InvalidInput(_)
            | SdpoError::RolloutLengthMismatch { .. }
            | SdpoError::Unsupported(_)
            | SdpoError::TooLong(_) => true,
            SdpoError::Model(e) => matches!(
                e,
                ModelError::TooLong { .. } | ModelError::TokenOutOfRange { .. }
            ),
            _ => false,
        }
    }
}

impl From<ModelError> for SdpoError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::TooLong { len, max } => SdpoError::TooLong(format!(
                "sequence of {len} tokens exceeds the model's context of {max} positions"
            )),
            other => SdpoError::Model(other),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, SdpoError>;
