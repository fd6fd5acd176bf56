use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// Every failure of the chat crate. Messages are meant to be shown to API clients as-is.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A required file does not exist.
    #[error("file not found: {}", .0.display())]
    MissingFile(PathBuf),
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// JSON that does not parse or does not have the expected shape.
    #[error("invalid JSON in {what}: {message}")]
    BadJson { what: String, message: String },
    /// The tokenizer config has no usable chat template.
    #[error("no chat template: {0}")]
    NoChatTemplate(String),
    /// The chat template does not compile.
    #[error("chat template syntax error: {0}")]
    TemplateSyntax(String),
    /// The chat template failed while rendering.
    #[error("chat template render error: {0}")]
    TemplateRender(String),
    /// The template itself called `raise_exception(message)`.
    #[error("{0}")]
    TemplateException(String),
    /// The HF tokenizer failed to load, encode or decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A chat message has an unsupported shape.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
}

impl ChatError {
    /// Whether the request (messages, tools, kwargs) caused the error (HTTP 400) rather than
    /// the model files or the server (HTTP 500). Render failures count as the request's: with a
    /// template that compiled, they come from message shapes the template rejects.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ChatError::InvalidMessage(_)
                | ChatError::TemplateException(_)
                | ChatError::TemplateRender(_)
        )
    }

    pub(crate) fn bad_json(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        ChatError::BadJson {
            what: what.into(),
            message: err.to_string(),
        }
    }
}
