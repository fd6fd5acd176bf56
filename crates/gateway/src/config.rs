//! Gateway settings, read from the environment (same variable names as the reference stack).

use std::collections::HashSet;
use std::time::Duration;

use crate::error::GatewayError;

/// Default Telegram Bot API base URL.
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";
/// Default LoRA name (the reference's `LORA_NAME`).
pub const DEFAULT_LORA_NAME: &str = "openclaw/assistant";

/// Everything [`crate::run`] needs. Build it with [`GatewayConfig::from_env`] or
/// [`GatewayConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Bot token (`TELEGRAM_BOT_TOKEN`).
    pub telegram_bot_token: String,
    /// Bot API base URL without trailing slash (`TELEGRAM_API_URL`).
    pub telegram_api_url: String,
    /// Bearer key sent to the CLaaS API with chat, `/feedback` and `/undo` (`CLAAS_API_KEY`;
    /// needed when the API has one). The API talks to the model server with its own key.
    pub claas_api_key: Option<String>,
    /// Served model to chat with (`GATEWAY_MODEL`; default the served name of `lora_id`,
    /// `openclaw-assistant-latest`).
    pub model: String,
    /// CLaaS API base URL (`CLAAS_API_URL`): chat goes through its `/v1/chat/completions`
    /// proxy so every reply is recorded for `/feedback`.
    pub claas_api_url: String,
    /// Adapter id sent with `/feedback` and `/undo` (`CLAAS_LORA_ID`; default `{LORA_NAME}-latest`).
    pub lora_id: String,
    /// Telegram user ids allowed to talk to the bot (`TELEGRAM_ALLOWED_USERS`, comma separated);
    /// `None` lets everyone in, like the reference's `dmPolicy: open`.
    pub allowed_users: Option<HashSet<i64>>,
    /// Optional system prompt put before every conversation (`GATEWAY_SYSTEM_PROMPT`).
    pub system_prompt: Option<String>,
    /// Optional `max_tokens` for each reply (`GATEWAY_MAX_TOKENS`).
    pub max_tokens: Option<u32>,
    /// Long-poll timeout passed to `getUpdates` (`TELEGRAM_POLL_TIMEOUT` seconds, default 30).
    pub poll_timeout: Duration,
    /// A conversation untouched for this long is forgotten (1 h).
    pub conversation_ttl: Duration,
    /// At most this many conversations are kept; the least recently used go first (1000).
    pub max_conversations: usize,
    /// At most this many user/assistant messages of history are sent to the model (50).
    pub max_history_messages: usize,
    /// Timeout of one chat completion (5 min).
    pub chat_timeout: Duration,
    /// Timeout of one `/feedback` or `/undo` call (2 min, as the reference plugin and the API lock).
    pub feedback_timeout: Duration,
    /// Attempts per chat completion when the server is unreachable or answers 5xx (3).
    pub backend_attempts: u32,
    /// First back-off delay; doubles on each failure (1 s).
    pub retry_base: Duration,
    /// Back-off ceiling (30 s).
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight replies before abandoning them (10 s).
    pub shutdown_grace: Duration,
}

impl GatewayConfig {
    /// Defaults for everything except the bot token.
    pub fn new(telegram_bot_token: impl Into<String>) -> Self {
        let lora_id = format!("{DEFAULT_LORA_NAME}-latest");
        Self {
            telegram_bot_token: telegram_bot_token.into(),
            telegram_api_url: DEFAULT_TELEGRAM_API_URL.to_string(),
            claas_api_key: None,
            model: served_model_name(&lora_id),
            claas_api_url: "http://localhost:8080".to_string(),
            lora_id,
            allowed_users: None,
            system_prompt: None,
            max_tokens: None,
            poll_timeout: Duration::from_secs(30),
            conversation_ttl: Duration::from_secs(3600),
            max_conversations: 1000,
            max_history_messages: 50,
            chat_timeout: Duration::from_secs(300),
            feedback_timeout: Duration::from_secs(120),
            backend_attempts: 3,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Read the configuration from the process environment.
    pub fn from_env() -> Result<Self, GatewayError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the configuration through `lookup` (the environment in [`Self::from_env`]).
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, GatewayError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let token =
            get("TELEGRAM_BOT_TOKEN").ok_or(GatewayError::MissingEnv("TELEGRAM_BOT_TOKEN"))?;
        let mut cfg = Self::new(token);
        if let Some(url) = get("TELEGRAM_API_URL") {
            cfg.telegram_api_url = check_url("TELEGRAM_API_URL", &url)?;
        }
        cfg.claas_api_key = get("CLAAS_API_KEY");
        if let Some(url) = get("CLAAS_API_URL") {
            cfg.claas_api_url = check_url("CLAAS_API_URL", &url)?;
        }
        let lora_name = get("LORA_NAME").unwrap_or_else(|| DEFAULT_LORA_NAME.to_string());
        cfg.lora_id = get("CLAAS_LORA_ID")
            .unwrap_or_else(|| format!("{}-latest", lora_name.trim_matches('/')));
        cfg.model = get("GATEWAY_MODEL").unwrap_or_else(|| served_model_name(&cfg.lora_id));
        if let Some(list) = get("TELEGRAM_ALLOWED_USERS") {
            cfg.allowed_users = parse_allowed_users(&list)?;
        }
        cfg.system_prompt = get("GATEWAY_SYSTEM_PROMPT");
        if let Some(v) = get("GATEWAY_MAX_TOKENS") {
            let n: u32 = v.parse().map_err(|_| GatewayError::InvalidEnv {
                name: "GATEWAY_MAX_TOKENS",
                reason: format!("{v:?} is not a positive integer"),
            })?;
            cfg.max_tokens = (n > 0).then_some(n);
        }
        if let Some(v) = get("TELEGRAM_POLL_TIMEOUT") {
            let secs: u64 = v.parse().map_err(|_| GatewayError::InvalidEnv {
                name: "TELEGRAM_POLL_TIMEOUT",
                reason: format!("{v:?} is not a whole number of seconds"),
            })?;
            cfg.poll_timeout = Duration::from_secs(secs.min(50));
        }
        Ok(cfg)
    }

    /// Whether a Telegram user may use the bot.
    pub fn is_allowed(&self, user_id: Option<i64>) -> bool {
        match (&self.allowed_users, user_id) {
            (None, _) => true,
            (Some(set), Some(id)) => set.contains(&id),
            (Some(_), None) => false,
        }
    }
}

/// Parse `TELEGRAM_ALLOWED_USERS`: comma/space separated numeric ids; `*` or empty = everyone.
pub(crate) fn parse_allowed_users(list: &str) -> Result<Option<HashSet<i64>>, GatewayError> {
    let mut set = HashSet::new();
    for item in list
        .split([',', ' ', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if item == "*" {
            return Ok(None);
        }
        let id = item.parse::<i64>().map_err(|_| GatewayError::InvalidEnv {
            name: "TELEGRAM_ALLOWED_USERS",
            reason: format!("{item:?} is not a numeric Telegram user id"),
        })?;
        set.insert(id);
    }
    Ok(if set.is_empty() { None } else { Some(set) })
}

/// The served model name of a LoRA alias, as the reference's vLLM start script derives it
/// (see [`claas_store::served_name`]).
pub use claas_store::served_name as served_model_name;

fn check_url(name: &'static str, url: &str) -> Result<String, GatewayError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| GatewayError::InvalidEnv {
        name,
        reason: format!("{url:?} is not a URL: {e}"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(GatewayError::InvalidEnv {
            name,
            reason: format!("{url:?} must start with http:// or https://"),
        });
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The reference uses both `http://vllm:8000` and `http://vllm:8000/v1` for `VLLM_BASE_URL`.
pub(crate) fn strip_v1(url: &str) -> String {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/v1").unwrap_or(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<GatewayConfig, GatewayError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GatewayConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_reference() {
        let c = cfg(&[("TELEGRAM_BOT_TOKEN", "1:abc")]).unwrap();
        assert_eq!(c.telegram_api_url, "https://api.telegram.org");
        assert_eq!(c.model, "openclaw-assistant-latest");
        assert_eq!(c.lora_id, "openclaw/assistant-latest");
        assert_eq!(c.claas_api_url, "http://localhost:8080");
        assert!(c.allowed_users.is_none());
        assert!(c.is_allowed(Some(5)) && c.is_allowed(None));
    }

    #[test]
    fn missing_token_is_an_error() {
        assert!(matches!(
            cfg(&[]),
            Err(GatewayError::MissingEnv("TELEGRAM_BOT_TOKEN"))
        ));
        assert!(matches!(
            cfg(&[("TELEGRAM_BOT_TOKEN", "  ")]),
            Err(GatewayError::MissingEnv(_))
        ));
    }

    #[test]
    fn env_overrides() {
        let c = cfg(&[
            ("TELEGRAM_BOT_TOKEN", "1:abc"),
            ("TELEGRAM_API_URL", "http://127.0.0.1:9/"),
            ("CLAAS_API_URL", "http://claas-api:8080/"),
            ("LORA_NAME", "me/bot"),
            ("TELEGRAM_ALLOWED_USERS", "12, 34"),
        ])
        .unwrap();
        assert_eq!(c.telegram_api_url, "http://127.0.0.1:9");
        assert_eq!(c.claas_api_url, "http://claas-api:8080");
        assert_eq!(c.lora_id, "me/bot-latest");
        assert_eq!(c.model, "me-bot-latest");
        assert!(c.is_allowed(Some(12)) && c.is_allowed(Some(34)));
        assert!(!c.is_allowed(Some(56)) && !c.is_allowed(None));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(matches!(
            cfg(&[
                ("TELEGRAM_BOT_TOKEN", "1:a"),
                ("TELEGRAM_ALLOWED_USERS", "12,bob")
            ]),
            Err(GatewayError::InvalidEnv {
                name: "TELEGRAM_ALLOWED_USERS",
                ..
            })
        ));
        assert!(matches!(
            cfg(&[("TELEGRAM_BOT_TOKEN", "1:a"), ("CLAAS_API_URL", "ftp://x")]),
            Err(GatewayError::InvalidEnv {
                name: "CLAAS_API_URL",
                ..
            })
        ));
        assert!(matches!(
            cfg(&[("TELEGRAM_BOT_TOKEN", "1:a"), ("GATEWAY_MAX_TOKENS", "-3")]),
            Err(GatewayError::InvalidEnv { .. })
        ));
    }

    #[test]
    fn star_means_everyone() {
        assert!(parse_allowed_users("*").unwrap().is_none());
        assert!(parse_allowed_users(" , ").unwrap().is_none());
    }

    #[test]
    fn served_names_match_the_reference_normalisation() {
        assert_eq!(
            served_model_name("openclaw/assistant-latest"),
            "openclaw-assistant-latest"
        );
        assert_eq!(served_model_name("a//b  c"), "a-b-c");
        assert_eq!(served_model_name("/x/"), "x");
        assert_eq!(served_model_name("///"), "lora");
    }
}
