//! The Responses API wire format: the request as clients send it, the Response object, its
//! output items and the streamed events. No checks here; `validate` owns the rules.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::{ChatLogprob, StopSpec};

// ---------------------------------------------------------------------------------------------
// request

/// `POST /v1/responses`: OpenAI's fields, then the vLLM extensions. Polymorphic fields stay
/// JSON values and are checked field by field in `validate`, so each error names its field.
#[derive(Deserialize, Default)]
pub(crate) struct ResponsesRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub max_tool_calls: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stream: Option<bool>,
    pub stream_options: Option<Map<String, Value>>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub store: Option<bool>,
    pub metadata: Option<Map<String, Value>>,
    pub previous_response_id: Option<String>,
    pub user: Option<String>,
    pub reasoning: Option<Value>,
    pub text: Option<Value>,
    pub truncation: Option<String>,
    pub include: Option<Vec<String>>,
    pub top_logprobs: Option<usize>,
    pub service_tier: Option<String>,
    pub background: Option<bool>,
    pub conversation: Option<Value>,
    pub prompt: Option<Value>,
    pub context_management: Option<Value>,
    /// Type-checked only: routing and abuse hints with nothing to act on here.
    #[allow(dead_code)]
    pub prompt_cache_key: Option<String>,
    pub prompt_cache_retention: Option<String>,
    #[allow(dead_code)]
    pub safety_identifier: Option<String>,
    // vLLM extensions.
    pub seed: Option<i64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<StopSpec>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    pub request_id: Option<String>,
    pub priority: Option<i64>,
    pub cache_salt: Option<String>,
    pub structured_outputs: Option<Value>,
    pub previous_input_messages: Option<Value>,
    pub previous_response: Option<Value>,
    pub enable_response_messages: Option<bool>,
    /// Everything else: logged as ignored, as serve does for chat.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, Value>,
}

/// `GET /v1/responses/{id}` query.
#[derive(Deserialize)]
pub(crate) struct RetrieveQuery {
    pub stream: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// response

/// A content part of an output item.
#[derive(Serialize, Clone, Debug)]
#[serde(tag = "type")]
pub(crate) enum ContentPart {
    #[serde(rename = "output_text")]
    OutputText {
        text: String,
        annotations: Vec<Value>,
        logprobs: Vec<ChatLogprob>,
    },
    #[serde(rename = "reasoning_text")]
    ReasoningText { text: String },
}

/// One item of a Response's `output`.
#[derive(Serialize, Clone, Debug)]
#[serde(tag = "type")]
pub(crate) enum OutputItem {
    #[serde(rename = "message")]
    Message {
        id: String,
        role: &'static str,
        status: &'static str,
        content: Vec<ContentPart>,
    },
    #[serde(rename = "reasoning")]
    Reasoning {
        id: String,
        summary: Vec<Value>,
        content: Vec<ContentPart>,
        status: &'static str,
    },
    #[serde(rename = "function_call")]
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct InputTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct IncompleteDetails {
    pub reason: &'static str,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ResponseError {
    pub code: &'static str,
    pub message: String,
}

/// The Response object: the request's parameters echoed (as the server applied them), the
/// status, the output items and usage.
#[derive(Serialize, Clone, Debug)]
pub(crate) struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: i64,
    pub status: &'static str,
    pub background: bool,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: usize,
    pub max_tool_calls: Option<u64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: Value,
    pub service_tier: String,
    pub store: bool,
    pub temperature: f32,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub top_logprobs: usize,
    pub top_p: f32,
    pub truncation: &'static str,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    pub metadata: Map<String, Value>,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Serialize)]
pub(crate) struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

// ---------------------------------------------------------------------------------------------
// stream events

/// One streamed event: `event: {type}` and `data: {this}` on the wire.
#[derive(Serialize, Debug)]
pub(crate) struct StreamEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sequence_number: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// The fields of an event besides its type and sequence number.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub(crate) enum EventBody {
    Response {
        response: Box<ResponseObject>,
    },
    Item {
        output_index: usize,
        item: OutputItem,
    },
    Part {
        item_id: String,
        output_index: usize,
        content_index: usize,
        part: ContentPart,
    },
    TextDelta {
        item_id: String,
        output_index: usize,
        content_index: usize,
        delta: String,
        logprobs: Vec<ChatLogprob>,
    },
    TextDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        text: String,
        logprobs: Vec<ChatLogprob>,
    },
    ReasoningDelta {
        item_id: String,
        output_index: usize,
        content_index: usize,
        delta: String,
    },
    ReasoningDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        text: String,
    },
    ArgumentsDelta {
        item_id: String,
        output_index: usize,
        delta: String,
    },
    ArgumentsDone {
        item_id: String,
        output_index: usize,
        name: String,
        arguments: String,
    },
    Error {
        code: Option<String>,
        message: String,
        param: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_land_in_extra_and_bad_ones_are_named() {
        let r: ResponsesRequest = serde_json::from_value(
            serde_json::json!({"input": "hi", "temperature": 0.5, "frobnicate": 1}),
        )
        .unwrap();
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.extra.keys().collect::<Vec<_>>(), vec!["frobnicate"]);
        let e = serde_path_to_error::deserialize::<_, ResponsesRequest>(
            serde_json::json!({"input": "hi", "temperature": "warm"}),
        )
        .err()
        .unwrap();
        assert_eq!(e.path().to_string(), "temperature");
    }

    #[test]
    fn events_are_flat_objects_with_type_and_sequence_number() {
        let e = StreamEvent {
            kind: "response.output_text.delta",
            sequence_number: 3,
            body: EventBody::TextDelta {
                item_id: "msg_1".into(),
                output_index: 0,
                content_index: 0,
                delta: "hi".into(),
                logprobs: Vec::new(),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "response.output_text.delta", "sequence_number": 3,
                "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "hi",
                "logprobs": []})
        );
    }
}
