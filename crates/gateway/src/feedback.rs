//! `/feedback` the way the reference `claas-feedback` plugin does it: ChatML rendering of the
//! conversation and the reply text.

use serde_json::Value;

use crate::backend::{ChatMessage, FeedbackResult};
use crate::text::js_to_fixed;

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// Prompt/response pair sent to `POST /v1/feedback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMl {
    /// Every user/assistant turn before the last assistant message, each rendered as
    /// `<|im_start|>{role}\n{content}<|im_end|>`, joined with `\n`.
    pub prompt: String,
    /// The last assistant message.
    pub response: String,
}

/// The plugin's `buildChatML`: keeps user/assistant turns with non-empty content, splits at
/// the last assistant turn. `None` when there is no assistant turn.
///
/// This deliberately matches the plugin rather than rendering the served model's chat template:
/// the CLaaS API receives byte-identical prompts from OpenClaw users and gateway users.
pub fn build_chatml(messages: &[ChatMessage]) -> Option<ChatMl> {
    let turns: Vec<&ChatMessage> = messages
        .iter()
        .filter(|m| (m.role == "user" || m.role == "assistant") && !m.content.is_empty())
        .collect();
    let last = turns.iter().rposition(|m| m.role == "assistant")?;
    let prompt = turns[..last]
        .iter()
        .map(|m| format!("{IM_START}{}\n{}{IM_END}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n");
    Some(ChatMl {
        prompt,
        response: turns[last].content.clone(),
    })
}

/// `✅ Feedback applied (12.3s | loss: 0.1234 | 42 tokens)`, formatted exactly like the plugin
/// (time from the API's `timing_ms.total`, else the measured round trip).
pub(crate) fn success_reply(result: &FeedbackResult, elapsed_ms: f64) -> String {
    let total_ms = result
        .timing_ms
        .as_ref()
        .and_then(|t| t.total)
        .unwrap_or(elapsed_ms);
    let mut detail = format!("{}s", js_to_fixed(total_ms / 1000.0, 1));
    let meta = result
        .distill_result
        .as_ref()
        .and_then(|d| d.metadata.as_ref());
    if let Some(loss) = meta
        .and_then(|m| m.get("total_loss"))
        .and_then(Value::as_f64)
    {
        detail.push_str(&format!(" | loss: {}", js_to_fixed(loss, 4)));
    }
    if let Some(tokens) = meta
        .and_then(|m| m.get("tokens_processed"))
        .and_then(js_string)
    {
        detail.push_str(&format!(" | {tokens} tokens"));
    }
    format!("\u{2705} Feedback applied ({detail})")
}

/// `${value}` of JavaScript for the JSON scalars the API may send.
fn js_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 1e21 {
                    Some(format!("{f:.0}"))
                } else {
                    Some(f.to_string())
                }
            }
        }
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{DistillResult, TimingMs};
    use serde_json::json;

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    #[test]
    fn chatml_matches_the_plugin() {
        let msgs = [
            m("system", "be nice"),
            m("user", "hi"),
            m("assistant", "hello"),
            m("user", "more"),
            m("assistant", ""),
            m("assistant", "sure"),
        ];
        let c = build_chatml(&msgs).unwrap();
        assert_eq!(
            c.prompt,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nmore<|im_end|>"
        );
        assert_eq!(c.response, "sure");
    }

    #[test]
    fn chatml_needs_an_assistant_turn() {
        assert_eq!(build_chatml(&[m("user", "hi")]), None);
        assert_eq!(build_chatml(&[]), None);
    }

    #[test]
    fn reply_text_matches_the_plugin() {
        let r = FeedbackResult {
            timing_ms: Some(TimingMs {
                total: Some(1250.0),
            }),
            distill_result: Some(DistillResult {
                metadata: Some(json!({"total_loss": 0.123456, "tokens_processed": 42})),
            }),
        };
        assert_eq!(
            success_reply(&r, 99.0),
            "✅ Feedback applied (1.3s | loss: 0.1235 | 42 tokens)"
        );
        let bare = FeedbackResult::default();
        assert_eq!(success_reply(&bare, 3456.0), "✅ Feedback applied (3.5s)");
        let float_tokens = FeedbackResult {
            timing_ms: None,
            distill_result: Some(DistillResult {
                metadata: Some(json!({"tokens_processed": 7.0, "total_loss": null})),
            }),
        };
        assert_eq!(
            success_reply(&float_tokens, 0.0),
            "✅ Feedback applied (0.0s | 7 tokens)"
        );
    }
}
