//! Errors that stop the gateway (everything else is retried and reported to the user).

/// Fatal gateway errors: bad configuration, or Telegram refusing the bot token.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A required environment variable is missing or empty.
    #[error("missing required environment variable {0}")]
    MissingEnv(&'static str),
    /// An environment variable has a value we cannot use.
    #[error("invalid value for {name}: {reason}")]
    InvalidEnv {
        /// Variable name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (TLS backend problem).
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// Telegram answered 401/404 for the bot token: retrying cannot help.
    #[error("Telegram rejected the bot token ({code}): {description}")]
    Unauthorized {
        /// HTTP status / Bot API error code.
        code: u16,
        /// Telegram's description.
        description: String,
    },
}
