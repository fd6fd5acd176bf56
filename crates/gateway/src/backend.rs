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

/// The model's reply with the log-probabilities the server sampled it with.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// Full reply text (reasoning included).
    pub content: String,
    /// One log-probability per generated token, when the server returned them.
    pub logprobs: Option<Vec<f64>>,
}

/// Why a chat completion failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("could not reach the model server: {0}")]
    Unreachable(String),
    #[error("the model server did not answer in time")]
    Timeout,
    #[error("the model server answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the model server sent an unusable answer: {0}")]
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

/// Client of `POST {base}/v1/chat/completions`.
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
        base_url: &str,
        api_key: Option<String>,
        model: String,
        max_tokens: Option<u32>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}/v1/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            model,
            max_tokens,
            timeout,
        }
    }

    /// One non-streaming completion with `logprobs: true`.
    pub(crate) async fn complete(
        &self,
        messages: &[ChatMessage],
    ) -> Result<ChatReply, BackendError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "logprobs": true,
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
    // A partial list would misalign tokens and log-probabilities in training, so any gap
    // means "no log-probabilities".
    let logprobs = choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .map(|item| item.get("logprob").and_then(Value::as_f64))
                .collect::<Option<Vec<f64>>>()
        })
        .filter(|lp| !lp.is_empty());
    Ok(ChatReply { content, logprobs })
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

/// The body of `POST /v1/feedback`, as the reference plugin builds it, plus the rollout
/// log-probabilities the gateway has and the plugin did not.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FeedbackPayload {
    pub lora_id: String,
    pub prompt: String,
    pub response: String,
    pub feedback: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_logprobs: Option<Vec<f64>>,
    pub training: Value,
}

/// The fields of the API's answer that the reply shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct FeedbackResult {
    #[serde(default)]
    pub timing_ms: Option<TimingMs>,
    #[serde(default)]
    pub distill_result: Option<DistillResult>,
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

/// Why `/feedback` failed; the texts after `❌ Feedback failed: ` match the plugin's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedbackError {
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

/// Client of the CLaaS API's feedback route.
#[derive(Debug, Clone)]
pub(crate) struct ClaasClient {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl ClaasClient {
    pub(crate) fn new(http: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        Self {
            http,
            url: format!("{}/v1/feedback", base_url.trim_end_matches('/')),
            timeout,
        }
    }

    /// `POST /v1/feedback`. Not retried on failure (a distill step is not idempotent), with one
    /// exception: a 422 about `rollout_logprobs` means nothing was trained and the
    /// log-probabilities do not line up with the API's tokenization of the reply (the served
    /// tokens need not be the canonical tokenization of their text), so the request is sent
    /// once more without them and the API takes them from the server on-policy.
    pub(crate) async fn submit(
        &self,
        payload: &FeedbackPayload,
    ) -> Result<FeedbackResult, FeedbackError> {
        match self.submit_once(payload).await {
            Err(FeedbackError::Status { status: 422, body })
                if payload.rollout_logprobs.is_some() && body.contains("rollout_logprobs") =>
            {
                tracing::info!(
                    "rollout log-probabilities rejected ({body}); retrying without them"
                );
                let retry = FeedbackPayload {
                    rollout_logprobs: None,
                    ..payload.clone()
                };
                self.submit_once(&retry).await
            }
            other => other,
        }
    }

    async fn submit_once(
        &self,
        payload: &FeedbackPayload,
    ) -> Result<FeedbackResult, FeedbackError> {
        let secs = self.timeout.as_secs();
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                FeedbackError::Timeout(secs)
            } else {
                FeedbackError::Unreachable(error_chain(&e))
            }
        };
        let resp = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .json(payload)
            .send()
            .await
            .map_err(map_err)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(map_err)?;
        if status == 409 {
            return Err(FeedbackError::Busy);
        }
        if !(200..300).contains(&status) {
            // The plugin shows the first 500 characters of the raw body.
            let body: String = text.chars().take(500).collect();
            return Err(FeedbackError::Status { status, body });
        }
        serde_json::from_str(&text).map_err(|e| FeedbackError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_with_logprobs() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"Hi there"},
            "logprobs":{"content":[{"token":"Hi","logprob":-0.5},{"token":" there","logprob":-1.25}]}}]}"#;
        let r = parse_completion(body).unwrap();
        assert_eq!(r.content, "Hi there");
        assert_eq!(r.logprobs, Some(vec![-0.5, -1.25]));
    }

    #[test]
    fn gaps_in_logprobs_drop_them_all() {
        let body = r#"{"choices":[{"message":{"content":"Hi"},
            "logprobs":{"content":[{"token":"Hi","logprob":-0.5},{"token":"x"}]}}]}"#;
        assert_eq!(parse_completion(body).unwrap().logprobs, None);
        let body = r#"{"choices":[{"message":{"content":"Hi"},"logprobs":null}]}"#;
        assert_eq!(parse_completion(body).unwrap().logprobs, None);
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
    fn feedback_payload_omits_missing_logprobs() {
        let p = FeedbackPayload {
            lora_id: "a".into(),
            prompt: "p".into(),
            response: "r".into(),
            feedback: "f".into(),
            rollout_logprobs: None,
            training: json!({"teacher_mode": "self"}),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert!(v.get("rollout_logprobs").is_none());
        assert_eq!(v["training"]["teacher_mode"], "self");
    }
}
