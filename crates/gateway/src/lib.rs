//! claas-gateway: the Telegram chat front end of claas, and the OpenClaw config writer.
//!
//! * [`run`] long-polls the Telegram Bot API, chats with the served LoRA adapter through the
//!   OpenAI chat API (keeping each chat's conversation and the rollout log-probabilities of the
//!   last reply), and forwards `/feedback <text>` to the CLaaS API exactly like the reference
//!   `claas-feedback` OpenClaw plugin does.
//! * [`openclaw`] writes an `openclaw.json` that today's OpenClaw accepts, and installs the
//!   `claas-feedback` plugin beside it (used by `claas init`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TELEGRAM_BOT_TOKEN` | (required) | bot token |
//! | `TELEGRAM_API_URL` | `https://api.telegram.org` | Bot API root (tests use a local fake) |
//! | `TELEGRAM_ALLOWED_USERS` | everyone | comma-separated Telegram user ids |
//! | `TELEGRAM_POLL_TIMEOUT` | 30 | `getUpdates` long-poll seconds |
//! | `VLLM_BASE_URL` | `http://localhost:8000` | model server (`…/v1` also accepted) |
//! | `VLLM_API_KEY` (or `API_KEY`) | `sk-local` | model server key |
//! | `LORA_NAME` | `openclaw/assistant` | adapter family; feedback goes to `{LORA_NAME}-latest` |
//! | `CLAAS_LORA_ID` | `{LORA_NAME}-latest` | adapter id sent with `/feedback` |
//! | `GATEWAY_MODEL` | served name of the adapter id (`openclaw-assistant-latest`) | model to chat with |
//! | `CLAAS_API_URL` | `http://localhost:8080` | CLaaS API |
//! | `GATEWAY_SYSTEM_PROMPT` | none | system message before each conversation |
//! | `GATEWAY_MAX_TOKENS` | server default | `max_tokens` per reply |
//!
//! Replies are sent to Telegram as plain text (no `parse_mode`): model output is arbitrary
//! Markdown-ish text, and any Telegram parse mode rejects a whole message on one unbalanced
//! `*` or `_`, so plain text is the only mode that never loses a reply.

mod backend;
mod bot;
mod config;
mod conversation;
mod error;
mod feedback;
pub mod openclaw;
mod telegram;
mod text;

pub use backend::{ChatMessage, ChatReply};
pub use bot::run;
pub use config::GatewayConfig;
pub use error::GatewayError;
pub use feedback::{build_chatml, ChatMl};
pub use text::{split_message, TELEGRAM_MESSAGE_LIMIT};
