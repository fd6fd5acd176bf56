//! claas-gateway: the Telegram chat front end of claas, and the OpenClaw config writer.
//!
//! * [`run`] long-polls the Telegram Bot API and chats with the served LoRA adapter through the
//!   CLaaS API's chat proxy (`POST {CLAAS_API_URL}/v1/chat/completions`), which records every
//!   completion (prompt and sampled token ids, log-probabilities) under its `id`. `/feedback
//!   <text>` names that id, so the API trains on exactly the tokens the user saw, and also sends
//!   the clean user message, the visible reply and the chat messages (the API's fallback when its
//!   record is gone, e.g. after a restart). `/undo` rolls the adapter back to the version the
//!   chat's last feedback trained from (`POST /v1/lora/rollback`).
//! * [`openclaw`] writes an `openclaw.json` that today's OpenClaw accepts, and installs the
//!   `claas-feedback` plugin beside it (used by `claas init`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TELEGRAM_BOT_TOKEN` | (required) | bot token |
//! | `TELEGRAM_API_URL` | `https://api.telegram.org` | Bot API root (tests use a local fake) |
//! | `TELEGRAM_ALLOWED_USERS` | everyone | comma-separated Telegram user ids |
//! | `TELEGRAM_POLL_TIMEOUT` | 30 | `getUpdates` long-poll seconds |
//! | `CLAAS_API_KEY` | — | bearer key sent to the CLaaS API (chat, `/feedback`, `/undo`) when the API has one |
//! | `LORA_NAME` | `openclaw/assistant` | adapter family; feedback goes to `{LORA_NAME}-latest` |
//! | `CLAAS_LORA_ID` | `{LORA_NAME}-latest` | adapter id sent with `/feedback` and `/undo` |
//! | `GATEWAY_MODEL` | served name of the adapter id (`openclaw-assistant-latest`) | model to chat with |
//! | `CLAAS_API_URL` | `http://localhost:8080` | CLaaS API: chat (its `/v1/chat/completions` proxy), `/feedback`, `/undo` |
//! | `GATEWAY_SYSTEM_PROMPT` | none | system message before each conversation |
//! | `GATEWAY_MAX_TOKENS` | server default | `max_tokens` per reply |
//!
//! `VLLM_BASE_URL` is no longer read: the gateway never calls the inference server itself.
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
pub use text::{split_message, TELEGRAM_MESSAGE_LIMIT};
