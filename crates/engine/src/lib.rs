//! claas-engine: a continuous-batching scheduler over the Qwen3 model core.
//!
//! One OS thread owns the model and runs a step loop: requests arrive over a channel, join the
//! running batch between decode steps, and sequences with different LoRA adapters (or none)
//! share one packed `forward_batch`. Tokens stream back per request over a tokio channel; a
//! dropped receiver frees the sequence's slot at the next step. The engine works on token ids
//! only: tokenizing, chat templates and stop strings belong to the caller. Keys and values of
//! full prompt blocks outlive their request in a prefix cache (`prefix_cache`), so a chat that
//! resends its history computes only what is new.

mod admission;
mod engine;
mod error;
pub mod metrics;
mod plan;
mod prefix_cache;
pub mod sampling;
mod scheduler;

pub use engine::{
    release_freed_memory, rss_bytes, AdapterInfo, Canceller, Engine, EngineConfig, GenerateRequest,
    ModelLoader, PauseMode, RequestHandle, SleepReport, DEFAULT_KV_CACHE_MEMORY_BYTES,
};
pub use error::EngineError;
pub use metrics::{FinishedLabels, FinishedReason, LoraActivity, Metrics};
pub use sampling::{SamplingParams, TokenLogprob};

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop token id.
    Stop,
    /// max_tokens or the context length was reached.
    Length,
    /// Cancelled by the caller.
    Abort,
}

impl FinishReason {
    /// OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// What a request's receiver gets, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// Sent once when the prompt has been prefilled and prompt logprobs were asked for:
    /// one entry per prompt token, the first is `None` (nothing predicts it), as vLLM.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// One generated token of sequence `index` (0..n).
    Token {
        index: usize,
        token: u32,
        logprob: Option<TokenLogprob>,
    },
    /// Sequence `index` finished; `stop_token` is the stop/eos id that ended it, if any.
    Finished {
        index: usize,
        reason: FinishReason,
        stop_token: Option<u32>,
    },
    /// The request failed inside the engine; no more events follow.
    Error(String),
}
