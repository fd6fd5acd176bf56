//! The texts `/feedback` answers with, formatted exactly like the reference `claas-feedback`
//! plugin's, plus the adapter version the update produced.

use serde_json::Value;

use crate::backend::FeedbackResult;
use crate::text::js_to_fixed;

/// `✅ Feedback applied → v3 (12.3s | loss: 0.1234 | 42 tokens)`: the plugin's text (time from
/// the API's `timing_ms.total`, else the measured round trip) with the new adapter version, which
/// is what `/undo` and `GET /v1/lora/versions` talk about. Without a version (an older API) the
/// arrow is left out.
pub(crate) fn success_reply(result: &FeedbackResult, elapsed_ms: f64) -> String {
    if let Some(g) = result.rolled_back() {
        let back = g
            .rolled_back_to
            .map(|v| format!("; still on v{v}"))
            .unwrap_or_default();
        return format!(
            "\u{26A0}\u{FE0F} The update was rolled back by the guardrail ({}){back}",
            g.violations.join(", ")
        );
    }
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
    match result.adapter_version {
        Some(v) => format!("\u{2705} Feedback applied \u{2192} v{v} ({detail})"),
        None => format!("\u{2705} Feedback applied ({detail})"),
    }
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

    #[test]
    fn reply_text_matches_the_plugin() {
        let r = FeedbackResult {
            timing_ms: Some(TimingMs {
                total: Some(1250.0),
            }),
            distill_result: Some(DistillResult {
                metadata: Some(json!({"total_loss": 0.123456, "tokens_processed": 42})),
            }),
            adapter_version: None,
            previous_version: None,
            guardrail: None,
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
            adapter_version: None,
            previous_version: None,
            guardrail: None,
        };
        assert_eq!(
            success_reply(&float_tokens, 0.0),
            "✅ Feedback applied (0.0s | 7 tokens)"
        );
    }

    #[test]
    fn reply_text_names_the_new_version() {
        let r = FeedbackResult {
            timing_ms: Some(TimingMs {
                total: Some(1250.0),
            }),
            distill_result: Some(DistillResult {
                metadata: Some(json!({"total_loss": 0.123456, "tokens_processed": 7})),
            }),
            adapter_version: Some(3),
            previous_version: Some(2),
            guardrail: None,
        };
        assert_eq!(
            success_reply(&r, 0.0),
            "✅ Feedback applied → v3 (1.3s | loss: 0.1235 | 7 tokens)"
        );
    }

    #[test]
    fn a_guardrail_rollback_is_told() {
        let r: FeedbackResult = serde_json::from_value(json!({
            "adapter_version": 4, "previous_version": 3,
            "guardrail": {"status": "rolled_back", "violations": ["KL to base 2.1000 > 0.5"],
                "rolled_back_to": 3}
        }))
        .unwrap();
        assert_eq!(
            success_reply(&r, 10.0),
            "\u{26A0}\u{FE0F} The update was rolled back by the guardrail (KL to base 2.1000 > 0.5); still on v3"
        );
        let passed: FeedbackResult = serde_json::from_value(json!({
            "adapter_version": 4, "guardrail": {"status": "passed", "violations": []}
        }))
        .unwrap();
        assert!(success_reply(&passed, 1000.0).starts_with("\u{2705} Feedback applied \u{2192} v4"));
    }
}
