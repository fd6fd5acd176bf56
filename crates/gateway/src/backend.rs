//! HTTP clients for the two backends: the OpenAI-compatible chat server and the CLaaS API.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::text::truncate_chars;

/// One chat message (`role` is `system`, `user` or `assistant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Speaker role.
    pub role: String,
    /// Plain text content.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// The model's reply and the id under which the CLaaS API recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The completion `id`: the API's record of the exact prompt and sampled tokens, which
    /// `/feedback` names so training uses those tokens rather than a re-tokenization.
    pub id: Option<String>,
    /// Full reply text (reasoning included when the server returns it).
    pub content: String,
}

/// Why a chat completion failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("could not reach the CLaaS API: {0}")]
    Unreachable(String),
    #[error("the model did not answer in time")]
    Timeout,
    #[error("the CLaaS API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the CLaaS API sent an unusable answer: {0}")]
    Invalid(String),
}

impl BackendError {
    /// Worth another attempt: the server may be starting, waking up or overloaded.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Timeout | Self::Invalid(_) => false,
        }
    }
}

/// Client of the CLaaS API's chat proxy, `POST {api}/v1/chat/completions`. Chatting through
/// the API (not the inference server directly) is what makes it record each completion, so
/// feedback trains on the tokens that were actually sampled.
#[derive(Debug, Clone)]
pub(crate) struct ChatBackend {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: String,
    max_tokens: Option<u32>,
    timeout: Duration,
}

impl ChatBackend {
    pub(crate) fn new(
        http: reqwest::Client,
        api_url: &str,
        api_key: Option<String>,
        model: String,
        max_tokens: Option<u32>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}/v1/chat/completions", api_url.trim_end_matches('/')),
            api_key,
            model,
            max_tokens,
            timeout,
        }
    }

    /// One non-streaming completion.
    pub(crate) async fn complete(
        &self,
        messages: &[ChatMessage],
    ) -> Result<ChatReply, BackendError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": false,
        });
        if let Some(n) = self.max_tokens {
            body["max_tokens"] = json!(n);
        }
        let mut req = self.http.post(&self.url).timeout(self.timeout).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                BackendError::Timeout
            } else {
                BackendError::Unreachable(error_chain(&e))
            }
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| {
            if e.is_timeout() {
                BackendError::Timeout
            } else {
                BackendError::Unreachable(error_chain(&e))
            }
        })?;
        if !(200..300).contains(&status) {
            return Err(BackendError::Status {
                status,
                message: error_message(&text),
            });
        }
        parse_completion(&text)
    }
}

fn parse_completion(text: &str) -> Result<ChatReply, BackendError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| BackendError::Invalid(format!("not JSON ({e})")))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| BackendError::Invalid("no choices".into()))?;
    let content = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if content.trim().is_empty() {
        return Err(BackendError::Invalid("the reply is empty".into()));
    }
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(String::from);
    Ok(ChatReply { id, content })
}

/// The human-readable part of an OpenAI-style, FastAPI-style or plain error body.
pub(crate) fn error_message(body: &str) -> String {
    let msg = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("message"))
            .map(|m| match m {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    });
    truncate_chars(msg.as_deref().unwrap_or(body).trim(), 300)
}

/// reqwest's top-level message hides the cause ("error sending request"); show the chain.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The body of `POST /v1/feedback`: the reference plugin's fields plus the two extensions that
/// let the API train on its record of the reply (`completion_id`) or, when that record is gone
/// (e.g. after an API restart), rebuild the prompt from the chat (`messages`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FeedbackPayload {
    pub lora_id: String,
    /// The clean last user message.
    pub prompt: String,
    /// The reply text the user saw.
    pub response: String,
    pub feedback: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_id: Option<String>,
    /// The messages the reply answered, as sent to the chat API.
    pub messages: Vec<ChatMessage>,
    pub training: Value,
}

/// The fields of the API's feedback answer that the bot uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct FeedbackResult {
    #[serde(default)]
    pub timing_ms: Option<TimingMs>,
    #[serde(default)]
    pub distill_result: Option<DistillResult>,
    /// The adapter version this update produced.
    #[serde(default)]
    pub adapter_version: Option<u64>,
    /// The version it trained from: what `/undo` goes back to.
    #[serde(default)]
    pub previous_version: Option<u64>,
    /// The post-update guardrail's verdict, when one ran.
    #[serde(default)]
    pub guardrail: Option<GuardrailResult>,
}

/// The API's `guardrail` outcome of a feedback.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct GuardrailResult {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub violations: Vec<String>,
    #[serde(default)]
    pub rolled_back_to: Option<u64>,
}

impl FeedbackResult {
    /// The guardrail undid the update: serving stayed on the version it trained from.
    pub(crate) fn rolled_back(&self) -> Option<&GuardrailResult> {
        self.guardrail
            .as_ref()
            .filter(|g| g.status == "rolled_back")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TimingMs {
    #[serde(default)]
    pub total: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct DistillResult {
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// The fields of `POST /v1/lora/rollback`'s answer that the bot uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RollbackResult {
    /// The version now current.
    #[serde(default)]
    pub version: Option<u64>,
}

/// Why a CLaaS API call (`/feedback`, `/undo`) failed; the texts after `❌ Feedback failed: `
/// match the plugin's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaasError {
    #[error("Another feedback update is in progress. Try again in a moment.")]
    Busy,
    #[error("CLaaS API returned {status}: {body}")]
    Status { status: u16, body: String },
    #[error("could not reach the CLaaS API: {0}")]
    Unreachable(String),
    #[error("the CLaaS API did not answer within {0} s")]
    Timeout(u64),
    #[error("the CLaaS API sent an unusable answer: {0}")]
    Invalid(String),
}

/// Client of the CLaaS API's feedback and rollback routes.
#[derive(Debug, Clone)]
pub(crate) struct ClaasClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl ClaasClient {
    pub(crate) fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            api_key,
            timeout,
        }
    }

    /// `POST /v1/feedback`. Never retried: a distill step is not idempotent.
    pub(crate) async fn submit(
        &self,
        payload: &FeedbackPayload,
    ) -> Result<FeedbackResult, ClaasError> {
        self.post("/v1/feedback", payload).await
    }

    /// `POST /v1/lora/rollback`: make `version` the adapter's current version again.
    pub(crate) async fn rollback(
        &self,
        lora_id: &str,
        version: u64,
    ) -> Result<RollbackResult, ClaasError> {
        let body = json!({ "lora_id": lora_id, "version": version });
        self.post("/v1/lora/rollback", &body).await
    }

    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClaasError> {
        let secs = self.timeout.as_secs();
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                ClaasError::Timeout(secs)
            } else {
                ClaasError::Unreachable(error_chain(&e))
            }
        };
        let mut rb = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(self.timeout)
            .json(body);
        if let Some(k) = &self.api_key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb.send().await.map_err(map_err)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(map_err)?;
        if status == 409 {
            return Err(ClaasError::Busy);
        }
        if !(200..300).contains(&status) {
            // The plugin shows the first 500 characters of the raw body.
            let body: String = text.chars().take(500).collect();
            return Err(ClaasError::Status { status, body });
        }
        serde_json::from_str(&text).map_err(|e| ClaasError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_id_and_content_are_read() {
        let body = r#"{"id":"chatcmpl-abc","choices":[{"message":{"role":"assistant","content":"Hi there"}}]}"#;
        let r = parse_completion(body).unwrap();
        assert_eq!(r.content, "Hi there");
        assert_eq!(r.id.as_deref(), Some("chatcmpl-abc"));
        let no_id = r#"{"choices":[{"message":{"content":"Hi"}}]}"#;
        assert_eq!(parse_completion(no_id).unwrap().id, None);
    }

    #[test]
    fn empty_or_malformed_completions_are_errors() {
        assert!(matches!(
            parse_completion("nope"),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            parse_completion(r#"{"choices":[]}"#),
            Err(BackendError::Invalid(_))
        ));
        let empty = r#"{"choices":[{"message":{"content":null,"tool_calls":[]}}]}"#;
        assert!(matches!(
            parse_completion(empty),
            Err(BackendError::Invalid(_))
        ));
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            error_message(r#"{"error":{"message":"no such model"}}"#),
            "no such model"
        );
        assert_eq!(error_message(r#"{"detail":"busy"}"#), "busy");
        assert_eq!(error_message("plain text"), "plain text");
    }

    #[test]
    fn feedback_payload_omits_a_missing_completion_id() {
        let p = FeedbackPayload {
            lora_id: "a".into(),
            prompt: "p".into(),
            response: "r".into(),
            feedback: "f".into(),
            completion_id: None,
            messages: vec![ChatMessage::new("user", "p")],
            training: json!({"teacher_mode": "self"}),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert!(v.get("completion_id").is_none());
        assert!(v.get("rollout_logprobs").is_none());
        assert_eq!(v["messages"], json!([{"role": "user", "content": "p"}]));
        assert_eq!(v["training"]["teacher_mode"], "self");
    }

    #[test]
    fn feedback_versions_are_optional() {
        let r: FeedbackResult =
            serde_json::from_str(r#"{"adapter_version":3,"previous_version":null}"#).unwrap();
        assert_eq!((r.adapter_version, r.previous_version), (Some(3), None));
        let old: FeedbackResult = serde_json::from_str(r#"{"status":"ok"}"#).unwrap();
        assert_eq!(old.adapter_version, None);
    }
}
