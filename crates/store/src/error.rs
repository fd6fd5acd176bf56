//! The store's typed errors.

use std::io;
use std::path::PathBuf;

/// Errors of the LoRA store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is not a safe relative path of allowed characters.
    #[error("invalid lora_id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    /// No adapter folder and no alias of that name.
    #[error("LoRA not found: {0}")]
    NotFound(String),
    /// The adapter exists but has no version of that number.
    #[error("LoRA {id} has no version v{version}")]
    VersionNotFound { id: String, version: u64 },
    /// An adapter already exists at the id and replacing it was not asked for.
    #[error("LoRA already exists: {0}")]
    AlreadyExists(String),
    /// A staged or existing folder is not a PEFT adapter.
    #[error("not a PEFT adapter ({path}): {reason}")]
    InvalidAdapter { path: PathBuf, reason: String },
    /// The alias cannot be created as asked.
    #[error("alias {alias:?}: {reason}")]
    Alias { alias: String, reason: String },
    /// `.aliases.json` exists but is not a JSON object of strings; it is left untouched.
    #[error("alias file {path} is unreadable: {message}")]
    AliasFile { path: PathBuf, message: String },
    /// The caller's writer failed; nothing was changed.
    #[error("writing the adapter failed: {0}")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A filesystem operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Building the export archive failed.
    #[error("zip export failed: {0}")]
    Zip(String),
    /// A test-only fault hook simulated a crash at this point (nothing was cleaned up).
    #[cfg(any(test, feature = "fault-injection"))]
    #[error("injected fault at {0:?}")]
    InjectedFault(crate::FaultPoint),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(id: &str, reason: impl Into<String>) -> Self {
        StoreError::InvalidId {
            id: id.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, StoreError>;
