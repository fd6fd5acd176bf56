//! Validation is a type boundary (TGI's router): a generation request becomes one
//! [`ValidRequest`] here, or one [`ValidationError`] naming the broken rule. Cheap checks run
//! first (body bytes, fields, caps, text bytes against the context), then adapter resolution,
//! then tokenization and the token context check, so oversized input never reaches heavy work.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use claas_constrain::{Constraint, Grammar};
use claas_engine::SamplingParams;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::protocol::{
    ChatRequest, CompletionRequest, JsonSchemaFormat, NamedToolChoice, PromptSpec, ResponseFormat,
    Sampling, StopSpec, StreamOptions, StructuredOutputs, HARMLESS_FIELDS,
};
use crate::AppState;

/// One variant per rule; [`ApiError::from`] maps each to its status and parameter.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("'{0}' is required")]
    Missing(&'static str),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("token id {id} is out of vocabulary")]
    OutOfVocab { param: &'static str, id: i64 },
    #[error("the prompt must not be empty")]
    EmptyPrompt,
    #[error("messages must not be empty")]
    EmptyMessages,
    #[error("{param} must be at most {max} (--max-logprobs)")]
    TooManyLogprobs { param: &'static str, max: usize },
    #[error("when using `top_logprobs`, `logprobs` must be set to true")]
    TopLogprobsWithoutLogprobs,
    #[error("When using `tool_choice`, `tools` must be set.")]
    ToolChoiceWithoutTools,
    #[error("Stream options can only be defined when `stream=True`.")]
    StreamOptionsWithoutStream,
    #[error("`{param}` is not supported by this server: {reason}")]
    Unsupported {
        param: &'static str,
        reason: &'static str,
    },
    #[error("logit_bias: {0}")]
    LogitBias(String),
    #[error("This model's maximum context length is {max_len} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input {param}.")]
    PromptTooLong {
        param: &'static str,
        max_len: usize,
        prompt_tokens: usize,
    },
    #[error("This model's maximum context length is {max_len} tokens. However, your request has {bytes} bytes of input text, more than that many tokens can hold. Please reduce the length of the input {param}.")]
    PromptTooManyBytes {
        param: &'static str,
        max_len: usize,
        bytes: usize,
    },
    #[error("This model's maximum context length is {max_len} tokens. However, you requested {max_tokens} output tokens and your prompt contains {prompt_tokens} input tokens, for a total of more than {max_len} tokens. Please reduce the length of the input or of the completion.")]
    ContextOverflow {
        param: &'static str,
        max_len: usize,
        prompt_tokens: usize,
        max_tokens: u64,
    },
    #[error("n must be at least 1")]
    ZeroN,
    #[error("top_k must be -1 (disable), or at least 1, got {0}")]
    TopK(i64),
    #[error("{0}")]
    Sampling(String),
    #[error("invalid lora_name {name:?}: {reason}")]
    LoraName { name: String, reason: &'static str },
    /// A structured-output field whose value is malformed, or a schema, regex or grammar
    /// that does not compile.
    #[error("invalid {param}: {message}")]
    BadField {
        param: &'static str,
        message: String,
    },
    #[error("`{second}` cannot be combined with `{first}`: only one structured output constraint per request")]
    TwoConstraints {
        first: &'static str,
        second: &'static str,
    },
    #[error("Tool '{0}' named by tool_choice has not been passed in `tools`.")]
    UnknownTool(String),
}

impl ValidationError {
    fn status(&self) -> StatusCode {
        match self {
            ValidationError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ValidationError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn param(&self) -> Option<&'static str> {
        use ValidationError as V;
        Some(match self {
            V::Body(_) | V::BodyTooLarge { .. } | V::Sampling(_) => return None,
            V::Missing(p) => p,
            V::ModelNotFound(_) => "model",
            V::OutOfVocab { param, .. }
            | V::TooManyLogprobs { param, .. }
            | V::Unsupported { param, .. }
            | V::PromptTooLong { param, .. }
            | V::PromptTooManyBytes { param, .. }
            | V::ContextOverflow { param, .. }
            | V::BadField { param, .. } => param,
            V::TwoConstraints { second, .. } => second,
            V::UnknownTool(_) => "tool_choice",
            V::EmptyPrompt => "prompt",
            V::EmptyMessages => "messages",
            V::TopLogprobsWithoutLogprobs => "top_logprobs",
            V::ToolChoiceWithoutTools => "tool_choice",
            V::LogitBias(_) => "logit_bias",
            V::ZeroN => "n",
            V::StreamOptionsWithoutStream => "stream_options",
            V::TopK(_) => "top_k",
            V::LoraName { .. } => "lora_name",
        })
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError {
            status: e.status(),
            param: e.param().map(str::to_string),
            message: e.to_string(),
        }
    }
}

type VResult<T> = Result<T, ValidationError>;

/// A JSON body read under the server's byte limit: 413 (OpenAI error JSON) past it, decided
/// from `Content-Length` before reading when the client declares one. Only the limit is ever
/// held in memory; the rest of an oversized body is drained so the client, still sending, gets
/// the 413 instead of a reset connection ([`claas_listen::body`]).
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<std::sync::Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: Request,
        st: &std::sync::Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let limit = st.max_request_bytes;
        let declared = claas_listen::body::declared_length(req.headers());
        let buf = claas_listen::body::read_limited(req.into_body(), declared, limit)
            .await
            .map_err(|e| match e {
                claas_listen::body::BodyError::TooLarge { limit } => {
                    ValidationError::BodyTooLarge { limit }
                }
                claas_listen::body::BodyError::Read(e) => ValidationError::Body(e),
            })?;
        let v = serde_json::from_slice(&buf).map_err(|e| ValidationError::Body(e.to_string()))?;
        Ok(JsonBody(v))
    }
}

/// Stream settings of a validated request.
#[derive(Clone, Copy)]
pub(crate) struct StreamSettings {
    pub include_usage: bool,
    pub continuous_usage: bool,
}

/// What chat adds on top of the common request.
pub(crate) struct ChatOptions {
    /// Parse Qwen3 `<tool_call>` blocks into tool calls.
    pub parse_tools: bool,
    /// `echo`: the last message's content, prepended to the reply (vLLM).
    pub echo_prefix: Option<String>,
    /// `--reasoning-parser qwen3`: split `<think>` text into `reasoning_content`.
    pub reasoning: Option<Reasoning>,
    /// `tool_choice` required or named: the whole output is the tool call(s).
    pub forced_tool: Option<ForcedTool>,
    /// `parallel_tool_calls: false` keeps the first parsed tool call only.
    pub parallel_tool_calls: bool,
}

/// A tool call the grammar forces (vLLM's shapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForcedTool {
    /// The output is this function's arguments object.
    Named(String),
    /// The output is a JSON array of `{"name", "parameters"}` calls.
    Required,
}

/// What the reasoning parser does with the thinking text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reasoning {
    /// Returned as `reasoning_content`.
    Include,
    /// Dropped (`include_reasoning: false`).
    Drop,
}

/// What completions add on top of the common request.
pub(crate) struct CompletionOptions {
    pub echo: bool,
}

/// A generation request that passed every rule; the handlers only run it.
pub(crate) struct ValidRequest {
    /// Name to echo in responses.
    pub model: String,
    /// `None` for the base model.
    pub adapter: Option<String>,
    pub prompts: Vec<Vec<u32>>,
    pub params: SamplingParams,
    pub n: usize,
    pub stops: Vec<String>,
    /// Prompt logprobs the engine computes (also needed for completions' echo + logprobs).
    pub engine_prompt_logprobs: Option<usize>,
    /// Whether `prompt_logprobs` goes back to the client.
    pub show_prompt_logprobs: bool,
    /// Whether per-token logprobs go back to the client.
    pub want_logprobs: bool,
    pub skip_special: bool,
    pub include_stop: bool,
    pub stream: Option<StreamSettings>,
    pub return_token_ids: bool,
    pub tokens_as_ids: bool,
}

fn cap_logprobs(st: &AppState, param: &'static str, k: Option<usize>) -> VResult<()> {
    if k.is_some_and(|k| k > st.max_logprobs) {
        return Err(ValidationError::TooManyLogprobs {
            param,
            max: st.max_logprobs,
        });
    }
    Ok(())
}

/// Refuses what we recognise but do not implement, so nobody gets unconstrained text where
/// they asked for constrained text; warns about fields we do not know (vLLM does the same).
fn check_fields(s: &Sampling, extra: &BTreeMap<String, Value>) -> VResult<()> {
    let unsupported = |param, reason| Err(ValidationError::Unsupported { param, reason });
    if s.use_beam_search == Some(true) {
        return unsupported("use_beam_search", "beam search is not implemented");
    }
    if s.best_of.is_some_and(|b| b > s.n.unwrap_or(1)) {
        return unsupported("best_of", "best_of larger than n is not implemented");
    }
    let empty_or_null = |v: &Option<Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    for (param, v) in [
        ("allowed_token_ids", &s.allowed_token_ids),
        ("bad_words", &s.bad_words),
        ("logits_processors", &s.logits_processors),
    ] {
        if !empty_or_null(v) {
            return unsupported(param, "not implemented");
        }
    }
    if s.truncate_prompt_tokens
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return unsupported("truncate_prompt_tokens", "prompts are never truncated");
    }
    if s.prompt_embeds.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported("prompt_embeds", "prompt embeddings are not accepted");
    }
    let unknown: Vec<&str> = extra
        .keys()
        .map(String::as_str)
        .filter(|k| !HARMLESS_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        tracing::warn!("The following fields were present in the request but ignored: {unknown:?}");
    }
    Ok(())
}

fn bad(param: &'static str, message: impl std::fmt::Display) -> ValidationError {
    ValidationError::BadField {
        param,
        message: message.to_string(),
    }
}

fn present(v: &Option<Value>) -> Option<&Value> {
    v.as_ref().filter(|v| !v.is_null())
}

/// A typed view of a structured-output field; a wrong shape is a 400 naming the field.
fn parse_field<T: DeserializeOwned>(param: &'static str, v: &Value) -> VResult<T> {
    serde_json::from_value(v.clone()).map_err(|e| bad(param, e))
}

/// A JSON schema sent as an object or as a JSON string (vLLM takes both).
fn schema_value(param: &'static str, v: &Value) -> VResult<Value> {
    match v {
        Value::String(s) => serde_json::from_str(s).map_err(|e| bad(param, e)),
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        _ => Err(bad(
            param,
            "expected a JSON schema (an object or a JSON string)",
        )),
    }
}

/// The structured output a request asks for through `response_format`, `structured_outputs`
/// or the legacy `guided_*` fields, with the field that asked; two at once are refused.
fn requested_constraint(s: &Sampling) -> VResult<Option<(&'static str, Constraint)>> {
    let mut found: Option<(&'static str, Constraint)> = None;
    let mut add = |param: &'static str, c: Constraint| match &found {
        Some((first, _)) => Err(ValidationError::TwoConstraints {
            first,
            second: param,
        }),
        None => {
            found = Some((param, c));
            Ok(())
        }
    };
    if let Some(v) = present(&s.response_format) {
        match parse_field::<ResponseFormat>("response_format", v)? {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => add("response_format", Constraint::JsonObject)?,
            ResponseFormat::JsonSchema {
                json_schema:
                    JsonSchemaFormat {
                        json_schema: schema,
                        ..
                    },
            } => {
                let schema = schema
                    .ok_or_else(|| bad("response_format", "json_schema.schema is required"))?;
                let schema = schema_value("response_format", &schema)?;
                add("response_format", Constraint::JsonSchema(schema))?
            }
        }
    }
    if let Some(v) = present(&s.structured_outputs) {
        let so: StructuredOutputs = parse_field("structured_outputs", v)?;
        let p = "structured_outputs";
        if so.disable_any_whitespace == Some(false) {
            return Err(bad(p, "disable_any_whitespace: false is not supported (JSON output never has free whitespace here)"));
        }
        if so.disable_additional_properties == Some(true) {
            return Err(bad(p, "disable_additional_properties is not supported; set additionalProperties: false in the schema"));
        }
        if so.whitespace_pattern.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad(p, "whitespace_pattern is not supported"));
        }
        if so.structural_tag.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad(p, "structural_tag is not supported"));
        }
        let mut kinds = Vec::new();
        if let Some(j) = so.json.as_ref().filter(|v| !v.is_null()) {
            kinds.push(Constraint::JsonSchema(schema_value(p, j)?));
        }
        if let Some(r) = so.regex {
            kinds.push(Constraint::Regex(r));
        }
        if let Some(c) = so.choice {
            kinds.push(Constraint::Choice(c));
        }
        if let Some(g) = so.grammar {
            kinds.push(Constraint::Lark(g));
        }
        if so.json_object == Some(true) {
            kinds.push(Constraint::JsonObject);
        }
        match kinds.len() {
            1 => add(p, kinds.remove(0))?,
            0 => return Err(bad(p, "one of json, regex, choice, grammar or json_object is required")),
            _ => return Err(bad(p, "You can only use one kind of structured outputs constraint but multiple are specified")),
        }
    }
    if let Some(v) = present(&s.guided_json) {
        add(
            "guided_json",
            Constraint::JsonSchema(schema_value("guided_json", v)?),
        )?;
    }
    if let Some(v) = present(&s.guided_regex) {
        add(
            "guided_regex",
            Constraint::Regex(parse_field("guided_regex", v)?),
        )?;
    }
    if let Some(v) = present(&s.guided_choice) {
        add(
            "guided_choice",
            Constraint::Choice(parse_field("guided_choice", v)?),
        )?;
    }
    if let Some(v) = present(&s.guided_grammar) {
        add(
            "guided_grammar",
            Constraint::Lark(parse_field("guided_grammar", v)?),
        )?;
    }
    for (param, v) in [
        ("guided_whitespace_pattern", &s.guided_whitespace_pattern),
        ("structural_tag", &s.structural_tag),
    ] {
        if present(v).is_some() {
            return Err(ValidationError::Unsupported {
                param,
                reason: "not implemented",
            });
        }
    }
    Ok(found)
}

/// The function object of each tool (`{"type": "function", "function": {...}}`).
fn tool_function(tool: &Value) -> VResult<&Map<String, Value>> {
    tool.get("function")
        .and_then(Value::as_object)
        .filter(|f| f.get("name").is_some_and(Value::is_string))
        .ok_or_else(|| bad("tools", "each tool needs a function with a name"))
}

/// The arguments schema of a function (an empty object when it declares none, as vLLM).
fn parameters(f: &Map<String, Value>) -> Value {
    match f.get("parameters") {
        Some(p) if !p.is_null() => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    }
}

/// The grammar of a forced tool call, vLLM's `_get_json_schema_from_tool`: a named tool's
/// arguments object, or for `required` an array of `{"name", "parameters"}` items, one per
/// call (at most one without `parallel_tool_calls`), their `$defs` hoisted to the root where
/// their `$ref`s point. The items refuse keys beyond the two (vLLM's leave them open), so
/// output is valid under vLLM's schema too and a model cannot wander off into extra keys.
fn forced_tool_constraint(
    tools: &[Value],
    forced: &ForcedTool,
    parallel: bool,
) -> VResult<Constraint> {
    match forced {
        ForcedTool::Named(name) => {
            for t in tools {
                let f = tool_function(t)?;
                if f.get("name").and_then(Value::as_str) == Some(name) {
                    let schema = schema_value("tools", &parameters(f))?;
                    return Ok(Constraint::JsonSchema(schema));
                }
            }
            Err(ValidationError::UnknownTool(name.clone()))
        }
        ForcedTool::Required => {
            let mut defs = Map::new();
            let mut items = Vec::new();
            for t in tools {
                let f = tool_function(t)?;
                let mut params = schema_value("tools", &parameters(f))?;
                if let Some(d) = params.as_object_mut().and_then(|p| p.remove("$defs")) {
                    for (k, v) in d.as_object().into_iter().flatten() {
                        match defs.get(k) {
                            Some(old) if old != v => {
                                return Err(bad(
                                    "tools",
                                    format!("Tool definition '{k}' has multiple schemas, which is not supported."),
                                ))
                            }
                            _ => {
                                defs.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                items.push(json!({
                    "properties": {
                        "name": {"type": "string", "enum": [f["name"]]},
                        "parameters": params,
                    },
                    "required": ["name", "parameters"],
                    "additionalProperties": false,
                }));
            }
            let mut schema = json!({
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "anyOf": items},
            });
            if !parallel {
                schema["maxItems"] = json!(1);
            }
            if !defs.is_empty() {
                schema["$defs"] = Value::Object(defs);
            }
            Ok(Constraint::JsonSchema(schema))
        }
    }
}

/// Compiles a constraint off the async threads (a large schema takes a while); a schema,
/// regex or grammar that does not compile is a 400 naming the field it came from. The token
/// trie is built on first use.
async fn compile(
    st: &std::sync::Arc<AppState>,
    c: Option<(&'static str, Constraint)>,
) -> Result<Option<Grammar>, ApiError> {
    let Some((param, c)) = c else {
        return Ok(None);
    };
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        let constrainer = st2
            .constrainer
            .get_or_init(|| {
                let eos = st2
                    .eos_token_ids
                    .first()
                    .copied()
                    .ok_or_else(|| "the model has no EOS token".to_string())?;
                claas_constrain::Constrainer::new(
                    st2.tokenizer.hf(),
                    st2.engine.model_config().vocab_size,
                    eos,
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("structured output is unavailable for this model: {e}"),
                )
            })?;
        constrainer
            .compile(&c)
            .map(Some)
            .map_err(|e| bad(param, e).into())
    })
    .await
    .map_err(blocking_failed)?
}

fn logit_bias(st: &AppState, s: &Sampling) -> VResult<Vec<(u32, f32)>> {
    let Some(map) = &s.logit_bias else {
        return Ok(Vec::new());
    };
    let vocab = st.engine.model_config().vocab_size;
    let mut out = Vec::with_capacity(map.len());
    for (k, &b) in map {
        let id: u32 = k
            .trim()
            .parse()
            .map_err(|_| ValidationError::LogitBias(format!("key {k:?} is not a token id")))?;
        if id as usize >= vocab {
            return Err(ValidationError::LogitBias(format!(
                "token id {id} is out of vocabulary (size {vocab})"
            )));
        }
        if !(-100.0..=100.0).contains(&b) {
            return Err(ValidationError::LogitBias(format!(
                "bias {b} for token {id} is outside [-100, 100]"
            )));
        }
        out.push((id, b));
    }
    Ok(out)
}

/// Total bytes of the strings in a JSON value (message texts, tool schemas).
fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).fold(0, usize::saturating_add),
        Value::Object(m) => m.values().map(text_bytes).fold(0, usize::saturating_add),
        _ => 0,
    }
}

/// Refuses text that cannot fit the context whatever its tokenization, before tokenizing it.
fn check_text_bytes(st: &AppState, param: &'static str, bytes: usize) -> VResult<()> {
    if bytes > st.max_prompt_bytes {
        return Err(ValidationError::PromptTooManyBytes {
            param,
            max_len: st.engine.max_model_len(),
            bytes,
        });
    }
    Ok(())
}

/// Sampling parameters with the prompt-dependent context check; checked arithmetic, so no
/// `max_tokens` can wrap around the limit.
fn sampling_params(
    st: &AppState,
    s: &Sampling,
    param: &'static str,
    prompt_len: usize,
    default_max: Option<usize>,
    logprobs: Option<usize>,
) -> VResult<(SamplingParams, usize, Vec<String>)> {
    let max_len = st.engine.max_model_len();
    if prompt_len >= max_len {
        return Err(ValidationError::PromptTooLong {
            param,
            max_len,
            prompt_tokens: prompt_len,
        });
    }
    let room = max_len - prompt_len;
    let d = &st.defaults;
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        Some(m) => {
            let fits = usize::try_from(m)
                .ok()
                .and_then(|m| prompt_len.checked_add(m))
                .is_some_and(|total| total <= max_len);
            if !fits {
                return Err(ValidationError::ContextOverflow {
                    param: if s.max_completion_tokens.is_some() {
                        "max_completion_tokens"
                    } else {
                        "max_tokens"
                    },
                    max_len,
                    prompt_tokens: prompt_len,
                    max_tokens: m,
                });
            }
            m as usize
        }
        None => {
            let mut m = default_max.unwrap_or(room).min(room);
            if let Some(g) = d.max_new_tokens {
                m = m.min(g);
            }
            m
        }
    };
    let n = s.n.unwrap_or(1);
    if n == 0 {
        return Err(ValidationError::ZeroN);
    }
    // vLLM refuses them rather than ignore them.
    if s.stream_options.is_some() && !s.stream.unwrap_or(false) {
        return Err(ValidationError::StreamOptionsWithoutStream);
    }
    let stops = match &s.stop {
        None => Vec::new(),
        Some(StopSpec::One(x)) => vec![x.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    let params = SamplingParams {
        temperature: s.temperature.or(d.temperature).unwrap_or(1.0),
        top_p: s.top_p.or(d.top_p).unwrap_or(1.0),
        top_k: s.top_k.or(d.top_k).unwrap_or(0),
        min_p: s.min_p.or(d.min_p).unwrap_or(0.0),
        seed: s.seed.map(|x| x as u64),
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: s.repetition_penalty.or(d.repetition_penalty).unwrap_or(1.0),
        max_tokens,
        min_tokens: s.min_tokens.unwrap_or(0),
        stop_token_ids: s.stop_token_ids.clone().unwrap_or_default(),
        eos_token_ids: st.eos_token_ids.clone(),
        ignore_eos: s.ignore_eos.unwrap_or(false),
        logprobs,
        logit_bias: logit_bias(st, s)?,
        constraint: None,
    };
    if params.top_k < -1 {
        return Err(ValidationError::TopK(params.top_k));
    }
    params
        .validate()
        .map_err(|e| ValidationError::Sampling(e.to_string()))?;
    Ok((params, n, stops))
}

fn stream_settings(s: &Sampling) -> Option<StreamSettings> {
    s.stream.unwrap_or(false).then(|| {
        let o: StreamOptions = s.stream_options.unwrap_or_default();
        let include_usage = o.include_usage.unwrap_or(false);
        StreamSettings {
            include_usage,
            continuous_usage: include_usage && o.continuous_usage_stats.unwrap_or(false),
        }
    })
}

/// Which model a request names: `(name to echo, adapter or None for the base)`. With a LoRA
/// root, a name not loaded yet is resolved there and loaded (and a resolved one re-checked).
pub(crate) async fn pick_model(
    st: &AppState,
    model: Option<&str>,
) -> Result<(String, Option<String>), ApiError> {
    match model {
        None | Some("") => Ok((st.served_names[0].clone(), None)),
        Some(m) if st.is_base(m) => Ok((m.to_string(), None)),
        Some(m) => {
            let known = match &st.resolver {
                Some(r) => r.ensure(&st.engine, m).await?,
                None => st.engine.adapter(m).is_some(),
            };
            if known {
                Ok((m.to_string(), Some(m.to_string())))
            } else {
                Err(ValidationError::ModelNotFound(m.to_string()).into())
            }
        }
    }
}

/// Token ids as the engine takes them, each checked against the vocabulary.
pub(crate) fn token_ids(param: &'static str, v: &[i64], vocab: usize) -> VResult<Vec<u32>> {
    v.iter()
        .map(|&t| {
            if t < 0 || t as u64 >= vocab as u64 {
                Err(ValidationError::OutOfVocab { param, id: t })
            } else {
                Ok(t as u32)
            }
        })
        .collect()
}

/// Renders chat messages through the model's template (`continue_final` keeps the last
/// assistant message open).
pub(crate) fn render_chat(
    st: &AppState,
    messages: &[Value],
    tools: Option<&[Value]>,
    add_generation_prompt: bool,
    continue_final: bool,
    kwargs: Option<&Map<String, Value>>,
) -> Result<String, ApiError> {
    let tmpl = st
        .template
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this model has no chat template"))?;
    if messages.is_empty() {
        return Err(ValidationError::EmptyMessages.into());
    }
    let msgs = claas_chat::normalize_messages(messages)?;
    let mut text = tmpl.render(
        &msgs,
        tools,
        add_generation_prompt && !continue_final,
        kwargs,
    )?;
    if continue_final {
        // Cut the template's end-of-turn after the last assistant message.
        if let Some(last) = msgs
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
        {
            if let Some(p) = text.rfind(last) {
                text.truncate(p + last.len());
            }
        }
    }
    Ok(text)
}

fn blocking_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Validates a chat request.
pub(crate) async fn chat(
    st: &std::sync::Arc<AppState>,
    req: ChatRequest,
) -> Result<(ValidRequest, ChatOptions), ApiError> {
    let s = &req.sampling;
    check_fields(s, &req.extra)?;
    let messages = req.messages.ok_or(ValidationError::Missing("messages"))?;
    if req.top_logprobs.is_some() && !req.logprobs.unwrap_or(false) {
        return Err(ValidationError::TopLogprobsWithoutLogprobs.into());
    }
    cap_logprobs(st, "top_logprobs", req.top_logprobs)?;
    cap_logprobs(st, "prompt_logprobs", s.prompt_logprobs)?;
    let tools = req.tools.filter(|t| !t.is_empty());
    let (parse_tools, forced_tool) = match &req.tool_choice {
        None | Some(Value::Null) => (tools.is_some(), None),
        Some(Value::String(c)) if c == "none" => (false, None),
        Some(_) if tools.is_none() => return Err(ValidationError::ToolChoiceWithoutTools.into()),
        Some(Value::String(c)) if c == "auto" => (true, None),
        Some(Value::String(c)) if c == "required" => (false, Some(ForcedTool::Required)),
        Some(v @ Value::Object(_)) => {
            let named: NamedToolChoice = parse_field("tool_choice", v)?;
            if named.kind != "function" {
                return Err(bad("tool_choice", "type must be \"function\"").into());
            }
            (false, Some(ForcedTool::Named(named.function.name)))
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "expected \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )
            .into())
        }
    };
    let parallel_tool_calls = req.parallel_tool_calls.unwrap_or(true);
    let mut constraint = requested_constraint(s)?;
    if let (Some(f), Some(t)) = (&forced_tool, &tools) {
        if let Some((first, _)) = &constraint {
            return Err(ValidationError::TwoConstraints {
                first,
                second: "tool_choice",
            }
            .into());
        }
        constraint = Some((
            "tool_choice",
            forced_tool_constraint(t, f, parallel_tool_calls)?,
        ));
    }
    let text_len = messages
        .iter()
        .chain(tools.iter().flatten())
        .map(text_bytes)
        .fold(0, usize::saturating_add);
    check_text_bytes(st, "messages", text_len)?;
    let grammar = compile(st, constraint).await?;
    let (model, adapter) = pick_model(st, req.model.as_deref()).await?;
    let add_gen = req.add_generation_prompt.unwrap_or(true);
    let cont = req.continue_final_message.unwrap_or(false);
    // vLLM's echo: the reply continues the last message when it has the reply's role.
    let echo_prefix = if s.echo.unwrap_or(false) {
        let reply_role = if add_gen {
            "assistant"
        } else {
            messages
                .last()
                .and_then(|m| m.get("role"))
                .and_then(Value::as_str)
                .unwrap_or("assistant")
        };
        messages
            .last()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some(reply_role))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .map(str::to_string)
    } else {
        None
    };
    let st2 = st.clone();
    let kwargs = req.chat_template_kwargs;
    let include_reasoning = req.include_reasoning.unwrap_or(true);
    let prompt = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, ApiError> {
        let text = render_chat(
            &st2,
            &messages,
            tools.as_deref(),
            add_gen,
            cont,
            kwargs.as_ref(),
        )?;
        Ok(st2.tokenizer.encode(&text, false)?)
    })
    .await
    .map_err(blocking_failed)??;
    let logprobs = req
        .logprobs
        .unwrap_or(false)
        .then(|| req.top_logprobs.unwrap_or(0));
    let (mut params, n, stops) = sampling_params(st, s, "messages", prompt.len(), None, logprobs)?;
    // The grammar starts at the reply's first token: nothing is left to reason in.
    let reasoning = if grammar.is_some() {
        None
    } else {
        st.reasoning_parser.then_some(if include_reasoning {
            Reasoning::Include
        } else {
            Reasoning::Drop
        })
    };
    params.constraint = grammar;
    let valid = ValidRequest {
        model,
        adapter,
        prompts: vec![prompt],
        params,
        n,
        stops,
        engine_prompt_logprobs: s.prompt_logprobs,
        show_prompt_logprobs: s.prompt_logprobs.is_some(),
        want_logprobs: logprobs.is_some(),
        skip_special: s.skip_special_tokens.unwrap_or(true),
        include_stop: s.include_stop_str_in_output.unwrap_or(false),
        stream: stream_settings(s),
        return_token_ids: s.return_token_ids.unwrap_or(false),
        tokens_as_ids: s.return_tokens_as_token_ids.unwrap_or(false),
    };
    Ok((
        valid,
        ChatOptions {
            parse_tools,
            echo_prefix,
            reasoning,
            forced_tool,
            parallel_tool_calls,
        },
    ))
}

/// Validates a completions request.
pub(crate) async fn completion(
    st: &std::sync::Arc<AppState>,
    req: CompletionRequest,
) -> Result<(ValidRequest, CompletionOptions), ApiError> {
    let s = &req.sampling;
    check_fields(s, &req.extra)?;
    if req.suffix.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ValidationError::Unsupported {
            param: "suffix",
            reason: "suffix is not supported (as in vLLM)",
        }
        .into());
    }
    let prompt = req.prompt.ok_or(ValidationError::Missing("prompt"))?;
    let constraint = requested_constraint(s)?;
    cap_logprobs(st, "logprobs", req.logprobs)?;
    cap_logprobs(st, "prompt_logprobs", s.prompt_logprobs)?;
    let max_len = st.engine.max_model_len();
    // Id prompts are counted before anything else; text prompts are bounded by bytes first.
    match &prompt {
        PromptSpec::Text(t) => check_text_bytes(st, "prompt", t.len())?,
        PromptSpec::Texts(v) => {
            for t in v {
                check_text_bytes(st, "prompt", t.len())?;
            }
        }
        PromptSpec::Ids(v) if v.len() >= max_len => {
            return Err(ValidationError::PromptTooLong {
                param: "prompt",
                max_len,
                prompt_tokens: v.len(),
            }
            .into())
        }
        PromptSpec::IdLists(vs) => {
            if let Some(v) = vs.iter().find(|v| v.len() >= max_len) {
                return Err(ValidationError::PromptTooLong {
                    param: "prompt",
                    max_len,
                    prompt_tokens: v.len(),
                }
                .into());
            }
        }
        PromptSpec::Ids(_) => {}
    }
    let grammar = compile(st, constraint).await?;
    let (model, adapter) = pick_model(st, req.model.as_deref()).await?;
    let vocab = st.engine.model_config().vocab_size;
    let add_special = s.add_special_tokens.unwrap_or(true);
    let st2 = st.clone();
    let prompts = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u32>>, ApiError> {
        Ok(match prompt {
            PromptSpec::Text(t) => vec![st2.tokenizer.encode(&t, add_special)?],
            PromptSpec::Texts(v) => v
                .iter()
                .map(|t| st2.tokenizer.encode(t, add_special))
                .collect::<Result<_, _>>()?,
            PromptSpec::Ids(v) => vec![token_ids("prompt", &v, vocab)?],
            PromptSpec::IdLists(v) => v
                .iter()
                .map(|x| token_ids("prompt", x, vocab))
                .collect::<VResult<_>>()?,
        })
    })
    .await
    .map_err(blocking_failed)??;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ValidationError::EmptyPrompt.into());
    }
    let echo = s.echo.unwrap_or(false);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (mut params, n, stops) = sampling_params(st, s, "prompt", longest, Some(16), req.logprobs)?;
    params.constraint = grammar;
    // Echo with logprobs needs the prompt's logprobs too.
    let engine_plp = match (s.prompt_logprobs, echo && req.logprobs.is_some()) {
        (Some(a), true) => Some(a.max(req.logprobs.unwrap_or(0))),
        (Some(a), false) => Some(a),
        (None, true) => req.logprobs,
        (None, false) => None,
    };
    let valid = ValidRequest {
        model,
        adapter,
        prompts,
        params,
        n,
        stops,
        engine_prompt_logprobs: engine_plp,
        show_prompt_logprobs: s.prompt_logprobs.is_some(),
        want_logprobs: req.logprobs.is_some(),
        skip_special: s.skip_special_tokens.unwrap_or(true),
        include_stop: s.include_stop_str_in_output.unwrap_or(false),
        stream: stream_settings(s),
        return_token_ids: s.return_token_ids.unwrap_or(false),
        tokens_as_ids: s.return_tokens_as_token_ids.unwrap_or(false),
    };
    Ok((valid, CompletionOptions { echo }))
}

/// `/v1/load_lora_adapter` names: no path syntax, no control characters (a name becomes a
/// model id in URLs, logs and `/v1/models`, and must never be mistaken for a path).
pub(crate) fn lora_name(name: &str) -> VResult<()> {
    let bad = |reason| {
        Err(ValidationError::LoraName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 256 {
        return bad("must be 1 to 256 bytes long");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters (NUL, newlines, ...)");
    }
    if name.contains(['/', '\\']) {
        return bad("must not contain slashes");
    }
    if name.contains("..") || name.starts_with('.') {
        return bad("must not contain '..' or start with '.'");
    }
    if name.trim() != name {
        return bad("must not start or end with whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_names() {
        for ok in ["a", "openclaw-assistant-latest", "team-v@v3", "x_1.2"] {
            assert!(lora_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a/b", "..", "a\\b", "a\0b", ".hidden", "a..b", " a", "a\n",
        ] {
            assert!(lora_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_rule_maps_to_a_status_and_param() {
        let e: ApiError = ValidationError::ModelNotFound("m".into()).into();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (404, Some("model"))
        );
        let e: ApiError = ValidationError::BodyTooLarge { limit: 1 }.into();
        assert_eq!(e.status.as_u16(), 413);
        let e: ApiError = ValidationError::ContextOverflow {
            param: "max_tokens",
            max_len: 10,
            prompt_tokens: 3,
            max_tokens: u64::MAX,
        }
        .into();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("max_tokens"))
        );
    }

    #[test]
    fn text_bytes_counts_nested_strings() {
        let v = serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "abc"}]}]);
        assert_eq!(text_bytes(&v), "user".len() + "text".len() + "abc".len());
    }
}
