//! `claas eval`: is the assistant learning? Runs the feedback loop of each preference against a
//! claas API over HTTP only (so it works against `claas up` or vLLM + `claas api`), and measures
//! at baseline and after every step whether the adapter moves toward the preference (log-prob
//! margin, compliance) without losing general ability or collapsing (entropy, diversity, KL to
//! the base). Writes JSON results and PNG + SVG plots under one run folder.

pub mod client;
pub mod output;
pub mod plots;
pub mod preferences;
pub mod runner;
pub mod textstats;
pub mod verifiers;

pub use client::{ApiClient, ChatAnswer, ChatRequest, Score};
pub use preferences::{LogprobPair, Preference, VerifierConfig};
pub use runner::{run, EvalConfig, Metrics, RunSummary, METRIC_KEYS};

/// Everything that can stop an eval run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The API could not be reached or the connection broke.
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The API answered 2xx with a body we cannot use.
    #[error("unexpected answer from {url}: {message}")]
    Answer { url: String, message: String },
    /// A preference spec is missing or malformed.
    #[error("preference {origin}: {message}")]
    Preference { origin: String, message: String },
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Writing results failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot {path}: {message}")]
    Plot { path: String, message: String },
}

/// Result of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
