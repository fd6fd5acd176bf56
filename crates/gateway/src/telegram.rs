//! The small part of the Telegram Bot API the gateway uses: `getMe`, `getUpdates`,
//! `sendMessage`, `sendChatAction`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::error_chain;

/// Why a Bot API call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TelegramError {
    #[error("network error talking to Telegram: {0}")]
    Network(String),
    #[error("Telegram error {code}: {description}")]
    Api {
        code: u16,
        description: String,
        retry_after: Option<u64>,
    },
    #[error("unexpected answer from Telegram: {0}")]
    Decode(String),
}

impl TelegramError {
    /// 401/404 on the bot URL mean the token is wrong; nothing to retry.
    pub(crate) fn is_bad_token(&self) -> bool {
        matches!(
            self,
            Self::Api {
                code: 401 | 404,
                ..
            }
        )
    }

    /// `getUpdates` refused because a webhook is set.
    pub(crate) fn is_webhook_conflict(&self) -> bool {
        matches!(self, Self::Api { code: 409, description, .. } if description.contains("webhook"))
    }
}

/// An incoming update; only text messages matter to the gateway.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Update {
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Message {
    pub chat: Chat,
    #[serde(default)]
    pub from: Option<User>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Chat {
    pub id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct User {
    pub id: i64,
    #[serde(default)]
    pub is_bot: bool,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// Bot API client bound to one token.
#[derive(Debug, Clone)]
pub(crate) struct TelegramClient {
    http: reqwest::Client,
    base: String,
}

impl TelegramClient {
    pub(crate) fn new(http: reqwest::Client, api_url: &str, token: &str) -> Self {
        Self {
            http,
            base: format!("{}/bot{}", api_url.trim_end_matches('/'), token),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<T, TelegramError> {
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            // Never log the URL: it contains the token.
            .map_err(|e| TelegramError::Network(error_chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| TelegramError::Network(error_chain(&e.without_url())))?;
        let env: Envelope = serde_json::from_str(&text).map_err(|_| TelegramError::Api {
            code: status,
            description: crate::text::truncate_chars(text.trim(), 200),
            retry_after: None,
        })?;
        if !env.ok {
            return Err(TelegramError::Api {
                code: env.error_code.unwrap_or(status),
                description: env.description.unwrap_or_default(),
                retry_after: env.parameters.and_then(|p| p.retry_after),
            });
        }
        serde_json::from_value(env.result.unwrap_or(Value::Null))
            .map_err(|e| TelegramError::Decode(format!("{method}: {e}")))
    }

    pub(crate) async fn get_me(&self) -> Result<User, TelegramError> {
        self.call("getMe", json!({}), Duration::from_secs(30)).await
    }

    /// Long poll. Updates that do not parse are skipped (their ids still advance the offset),
    /// so one odd update can never wedge the bot.
    pub(crate) async fn get_updates(
        &self,
        offset: i64,
        timeout: Duration,
    ) -> Result<(Vec<Update>, Option<i64>), TelegramError> {
        let raw: Vec<Value> = self
            .call(
                "getUpdates",
                json!({
                    "offset": offset,
                    "timeout": timeout.as_secs(),
                    "allowed_updates": ["message"],
                }),
                timeout + Duration::from_secs(15),
            )
            .await?;
        let mut max_id = None;
        let mut updates = Vec::with_capacity(raw.len());
        for value in raw {
            if let Some(id) = value.get("update_id").and_then(Value::as_i64) {
                max_id = Some(max_id.map_or(id, |m: i64| m.max(id)));
            }
            match serde_json::from_value::<Update>(value) {
                Ok(u) => updates.push(u),
                Err(e) => tracing::warn!("skipping an update that does not parse: {e}"),
            }
        }
        Ok((updates, max_id))
    }

    /// Plain-text message (no `parse_mode`, see the crate docs).
    pub(crate) async fn send_message(&self, chat_id: i64, text: &str) -> Result<(), TelegramError> {
        let _: Value = self
            .call(
                "sendMessage",
                json!({ "chat_id": chat_id, "text": text }),
                Duration::from_secs(30),
            )
            .await?;
        Ok(())
    }

    /// Long polling and a webhook exclude each other; the gateway owns the bot, so it removes
    /// the webhook (keeping pending updates).
    pub(crate) async fn delete_webhook(&self) -> Result<(), TelegramError> {
        let _: Value = self
            .call(
                "deleteWebhook",
                json!({ "drop_pending_updates": false }),
                Duration::from_secs(30),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn send_typing(&self, chat_id: i64) -> Result<(), TelegramError> {
        let _: Value = self
            .call(
                "sendChatAction",
                json!({ "chat_id": chat_id, "action": "typing" }),
                Duration::from_secs(15),
            )
            .await?;
        Ok(())
    }
}
