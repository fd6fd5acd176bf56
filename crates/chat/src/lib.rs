//! claas-chat: tokenizer, chat template, Qwen3 tool-call / reasoning parsing and the builtin
//! tokenizer files.
//!
//! Everything here aims at byte-for-byte parity with the Python stack the reference uses:
//! HF `tokenizers` for ids, transformers' `apply_chat_template` for prompts and vLLM's
//! Hermes/Qwen3 parsers for model output.

pub mod builtin;
mod config;
mod error;
mod pyjson;
mod reasoning;
mod template;
mod tokenizer;
mod tool_calls;

pub use config::{GenerationConfig, NamedTemplate, TokenSpec, TokenizerConfig};
pub use error::{ChatError, Result};
pub use pyjson::{python_json_dumps, PyJsonOptions};
pub use reasoning::{split_reasoning, ReasoningDelta, ReasoningStreamParser};
pub use template::{normalize_messages, normalize_tools, ChatTemplate};
pub use tokenizer::{IncrementalDecoder, Tokenizer};
pub use tool_calls::{parse_tool_calls, ToolCall, ToolCallStreamParser, ToolStreamEvent};
