//! The OpenAI / vLLM wire format as typed serde structs: requests as clients send them,
//! responses and stream chunks as vLLM answers them. No checks here; `validate` owns the rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// requests

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default, Clone, Copy)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
    pub continuous_usage_stats: Option<bool>,
}

/// Sampling fields shared by chat and completions.
#[derive(Deserialize, Default)]
pub(crate) struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub min_tokens: Option<usize>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Token id (as a string) -> bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Logprob tokens rendered as `token_id:N`.
    pub return_tokens_as_token_ids: Option<bool>,
    /// vLLM >= 0.10.2: prompt and generated ids in the response.
    pub return_token_ids: Option<bool>,
    pub prompt_logprobs: Option<usize>,
    pub echo: Option<bool>,
    pub add_special_tokens: Option<bool>,
    // Fields we recognise but do not implement: any value but their no-op one is refused.
    pub response_format: Option<Value>,
    pub structured_outputs: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub use_beam_search: Option<bool>,
    pub best_of: Option<usize>,
    pub allowed_token_ids: Option<Value>,
    pub bad_words: Option<Value>,
    pub truncate_prompt_tokens: Option<Value>,
    pub logits_processors: Option<Value>,
    pub prompt_embeds: Option<Value>,
}

/// `POST /v1/chat/completions` (also built by the Responses API from its input).
#[derive(Deserialize, Default)]
pub(crate) struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    /// vLLM: with a reasoning parser, `false` drops the reasoning from the reply.
    pub include_reasoning: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Everything else: logged as ignored, as vLLM does.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

/// `POST /v1/completions`.
#[derive(Deserialize)]
pub(crate) struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptSpec>,
    pub logprobs: Option<usize>,
    pub suffix: Option<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Fields OpenAI clients send that change nothing here; not worth a warning.
pub(crate) const HARMLESS_FIELDS: &[&str] = &[
    "user",
    "parallel_tool_calls",
    "request_id",
    "priority",
    "cache_salt",
    "spaces_between_special_tokens",
    "metadata",
    "store",
    "service_tier",
];

#[derive(Deserialize)]
pub(crate) struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub return_token_strs: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<i64>,
}

#[derive(Deserialize)]
pub(crate) struct LoadLoraRequest {
    pub lora_name: Option<String>,
    pub lora_path: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct UnloadLoraRequest {
    pub lora_name: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SleepQuery {
    pub level: Option<String>,
}

/// `/pause` query, as vLLM's: unknown parameters (e.g. the CLaaS API's `level`) are ignored.
#[derive(Deserialize)]
pub(crate) struct PauseQuery {
    pub mode: Option<String>,
    pub wait_for_inflight_requests: Option<String>,
    pub clear_cache: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// responses

/// `{"error": {...}}`.
#[derive(Serialize)]
pub(crate) struct ErrorResponse<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: u16,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_tokens_details: Option<Value>,
}

/// Why a choice stopped beyond its finish reason: the stop string or stop token id.
#[derive(Serialize, Clone, Debug)]
#[serde(untagged)]
pub(crate) enum StopReason {
    Text(String),
    Token(u32),
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// A tool call in a stream chunk (carries its position).
#[derive(Serialize, Clone, Debug)]
pub(crate) struct ToolCallDelta {
    pub index: usize,
    #[serde(flatten)]
    pub call: ToolCall,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ChatLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ChatLogprobs {
    pub content: Vec<ChatLogprob>,
}

/// One prompt position: token id -> its logprob, rank and text (vLLM's `prompt_logprobs`).
pub(crate) type PromptLogprobs = Vec<Option<BTreeMap<u32, PromptLogprob>>>;

#[derive(Serialize, Clone, Debug)]
pub(crate) struct PromptLogprob {
    pub logprob: f64,
    pub rank: usize,
    pub decoded_token: String,
}

#[derive(Serialize, Debug)]
pub(crate) struct ChatMessage {
    pub role: &'static str,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub reasoning_content: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: String,
    pub stop_reason: Option<StopReason>,
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
pub(crate) struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub prompt_logprobs: Option<PromptLogprobs>,
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Serialize, Default)]
pub(crate) struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Serialize)]
pub(crate) struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
pub(crate) struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// On the role chunk only, as vLLM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub(crate) struct CompletionLogprobs {
    pub text_offset: Vec<usize>,
    pub token_logprobs: Vec<Option<f64>>,
    pub tokens: Vec<String>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f64>>>,
}

#[derive(Serialize)]
pub(crate) struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: String,
    pub stop_reason: Option<StopReason>,
    pub prompt_logprobs: Option<PromptLogprobs>,
    pub prompt_token_ids: Option<Vec<u32>>,
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
pub(crate) struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

#[derive(Serialize)]
pub(crate) struct CompletionChunkChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
pub(crate) struct CompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Serialize)]
pub(crate) struct ModelPermission {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: &'static str,
    pub group: Option<String>,
    pub is_blocking: bool,
    pub _model: String,
}

#[derive(Serialize)]
pub(crate) struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: usize,
    pub permission: Vec<ModelPermission>,
}

#[derive(Serialize)]
pub(crate) struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Serialize)]
pub(crate) struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    pub token_strs: Option<Vec<Option<String>>>,
}

#[derive(Serialize)]
pub(crate) struct DetokenizeResponse {
    pub prompt: String,
}

#[derive(Serialize)]
pub(crate) struct VersionResponse {
    pub version: &'static str,
}

#[derive(Serialize)]
pub(crate) struct StatusResponse {
    pub status: &'static str,
}

#[derive(Serialize)]
pub(crate) struct IsSleeping {
    pub is_sleeping: bool,
}

#[derive(Serialize)]
pub(crate) struct IsPaused {
    pub is_paused: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_land_in_extra_and_known_ones_do_not() {
        let r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [], "temperature": 0.5, "logit_bias": {"3": 1.0},
            "frobnicate": 1, "user": "u"
        }))
        .unwrap();
        assert_eq!(r.sampling.temperature, Some(0.5));
        assert!(r.sampling.logit_bias.is_some());
        assert_eq!(
            r.extra.keys().collect::<Vec<_>>(),
            vec!["frobnicate", "user"]
        );
    }
}
