//! claas-gateway: the Telegram chat front end of claas, and the OpenClaw config writer.
//!
//! * [`run`] long-polls the Telegram Bot API, chats with the served LoRA adapter through the
//!   OpenAI chat API (keeping each chat's conversation and the rollout log-probabilities of the
//!   last reply), and forwards `/feedback <text>` to the CLaaS API exactly like the reference
//!   `claas-feedback` OpenClaw plugin does.
//! * [`openclaw`] writes an `openclaw.json` that today's OpenClaw accepts, and installs the
//!   `claas-feedback` plugin beside it (used by `claas init`).
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
