//! A Responses request becomes a chat request here: `instructions`, the stored conversation of
//! `previous_response_id` and `input` turn into chat messages (function calls and their outputs
//! into assistant tool calls and tool messages, as vLLM), Responses tools into chat tools, and
//! the chat validator makes the one [`ValidRequest`]. Fields chat does not have are checked
//! here first, each refusal naming its field.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::protocol::{ResponseObject, ResponsesRequest};
use crate::error::ApiError;
use crate::protocol::{ChatRequest, Sampling};
use crate::render::{now, rand_id};
use crate::validate::{self as chat_validate, ChatOptions, ValidRequest};
use crate::AppState;

/// Most `metadata` pairs, and their key and value lengths (OpenAI's limits).
const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

/// `include` values that ask for parts of items this server never produces (built-in tool
/// calls, input images): nothing to add, so they change nothing.
const INCLUDE_NOOP: &[&str] = &[
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
    "web_search_call.action.sources",
    "web_search_call.results",
];
const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

/// A request that passed every rule, with what the Response object needs besides the run.
pub(crate) struct Prepared {
    pub valid: ValidRequest,
    pub opts: ChatOptions,
    /// The Response object before generation: echoes, `in_progress`, no output.
    pub base: ResponseObject,
    /// Chat messages of the conversation without `instructions` (what a stored response keeps).
    pub conversation: Vec<Value>,
    /// Whether the finished response goes into the store.
    pub store: bool,
    /// `parallel_tool_calls: false`: at most one function call is returned.
    pub max_calls: Option<usize>,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_param(param, msg)
}

fn unsupported(param: &str, why: &str) -> ApiError {
    bad(
        param,
        format!("`{param}` is not supported by this server: {why}"),
    )
}

/// Parses and validates a `POST /v1/responses` body.
pub(crate) async fn prepare(st: &Arc<AppState>, body: Value) -> Result<Prepared, ApiError> {
    let req: ResponsesRequest = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => ApiError::bad_request(format!("invalid request body: {}", e.inner())),
            p => bad(p, format!("{p}: {}", e.inner())),
        }
    })?;
    if !req.extra.is_empty() {
        let unknown: Vec<&str> = req.extra.keys().map(String::as_str).collect();
        tracing::warn!("The following fields were present in the request but ignored: {unknown:?}");
    }
    check_unsupported(st, &req)?;
    let stream = req.stream.unwrap_or(false);
    check_stream_options(&req, stream)?;
    let metadata = check_metadata(req.metadata.as_ref())?;
    let logprobs = check_include(req.include.as_deref())?;
    let top_logprobs = req.top_logprobs.unwrap_or(0);
    if top_logprobs > 0 && !logprobs {
        return Err(bad(
            "top_logprobs",
            format!("top_logprobs needs \"{INCLUDE_LOGPROBS}\" in include"),
        ));
    }
    let template_kwargs = check_reasoning(req.reasoning.as_ref())?;
    check_text(req.text.as_ref())?;
    let tools = match &req.tools {
        None => Vec::new(),
        Some(t) => chat_tools(t)?,
    };
    let tool_choice = check_tool_choice(req.tool_choice.as_ref(), !tools.is_empty())?;
    if let Some(id) = &req.request_id {
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(bad(
                "request_id",
                "request_id must be 1 to 256 characters without control characters",
            ));
        }
    }

    // The conversation: a stored one first, then the new input.
    let mut conversation = Vec::new();
    if let Some(prev) = &req.previous_response_id {
        let found = st.responses.as_ref().and_then(|s| s.get(prev));
        let Some(found) = found else {
            return Err(ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                message: format!("Response with id '{prev}' not found."),
                param: Some("previous_response_id".into()),
            });
        };
        conversation.extend(found.conversation.iter().cloned());
    }
    let (input, continue_final) = match &req.input {
        None | Some(Value::Null) => return Err(bad("input", "'input' is required")),
        Some(v) => input_messages(v)?,
    };
    conversation.extend(input);
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(i) = &req.instructions {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(conversation.iter().cloned());
    if messages.is_empty() {
        return Err(bad("input", "input must not be empty"));
    }

    let chat = ChatRequest {
        model: req.model.clone(),
        messages: Some(messages),
        logprobs: Some(logprobs),
        top_logprobs: logprobs.then_some(top_logprobs),
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice: tool_choice.clone(),
        chat_template_kwargs: template_kwargs,
        add_generation_prompt: Some(!continue_final),
        continue_final_message: Some(continue_final),
        include_reasoning: None,
        sampling: Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            repetition_penalty: req.repetition_penalty,
            max_tokens: req.max_output_tokens,
            stop: req.stop,
            ignore_eos: req.ignore_eos,
            skip_special_tokens: req.skip_special_tokens,
            include_stop_str_in_output: req.include_stop_str_in_output,
            logit_bias: req.logit_bias,
            stream: Some(stream),
            ..Sampling::default()
        },
        ..ChatRequest::default()
    };
    let (valid, opts) = chat_validate::chat(st, chat)
        .await
        .map_err(responses_param)?;

    let store = req.store.unwrap_or(true) && st.responses.is_some();
    let base = ResponseObject {
        id: req
            .request_id
            .clone()
            .unwrap_or_else(|| format!("resp_{}", rand_id())),
        object: "response",
        created_at: now(),
        status: "in_progress",
        background: false,
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone(),
        max_output_tokens: valid.params.max_tokens,
        max_tool_calls: req.max_tool_calls,
        model: valid.model.clone(),
        output: Vec::new(),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        previous_response_id: req.previous_response_id.clone(),
        reasoning: req
            .reasoning
            .clone()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!({"effort": null, "summary": null})),
        service_tier: req.service_tier.clone().unwrap_or_else(|| "auto".into()),
        store,
        temperature: valid.params.temperature,
        text: req
            .text
            .clone()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        tool_choice: req
            .tool_choice
            .clone()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!("auto")),
        tools: req.tools.clone().unwrap_or_default(),
        top_logprobs,
        top_p: valid.params.top_p,
        truncation: "disabled",
        usage: None,
        user: req.user.clone(),
        metadata,
    };
    Ok(Prepared {
        valid,
        opts,
        base,
        conversation,
        store,
        max_calls: (!req.parallel_tool_calls.unwrap_or(true)).then_some(1),
    })
}

/// The chat validator names chat's fields; a Responses client sent these instead.
fn responses_param(mut e: ApiError) -> ApiError {
    e.param = e.param.map(|p| match p.as_str() {
        "messages" => "input".to_string(),
        "max_tokens" | "max_completion_tokens" => "max_output_tokens".to_string(),
        _ => p,
    });
    e
}

/// Fields that ask for what this server does not do.
fn check_unsupported(st: &AppState, r: &ResponsesRequest) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if r.background == Some(true) {
        return Err(unsupported(
            "background",
            "responses are generated in the request (vLLM: background needs a store)",
        ));
    }
    if set(&r.conversation) {
        return Err(unsupported(
            "conversation",
            "there are no conversation objects; use previous_response_id",
        ));
    }
    if set(&r.prompt) {
        return Err(unsupported("prompt", "prompt templates are not supported"));
    }
    if set(&r.context_management) {
        return Err(unsupported(
            "context_management",
            "context is never compacted",
        ));
    }
    if set(&r.structured_outputs) {
        return Err(unsupported(
            "structured_outputs",
            "structured output is not implemented",
        ));
    }
    if set(&r.previous_input_messages) || set(&r.previous_response) {
        let p = if set(&r.previous_response) {
            "previous_response"
        } else {
            "previous_input_messages"
        };
        return Err(unsupported(
            p,
            "stateless multi-turn is Harmony-only in vLLM; send the history as input items",
        ));
    }
    if r.enable_response_messages == Some(true) {
        return Err(unsupported(
            "enable_response_messages",
            "raw input and output messages are not returned",
        ));
    }
    match r.truncation.as_deref() {
        None | Some("disabled") => {}
        Some("auto") => {
            return Err(unsupported(
                "truncation",
                "\"auto\" (dropping input to fit the context) is not implemented; use \"disabled\"",
            ))
        }
        Some(other) => {
            return Err(bad(
                "truncation",
                format!("truncation must be \"disabled\" or \"auto\", got {other:?}"),
            ))
        }
    }
    if let Some(t) = r.service_tier.as_deref() {
        if !["auto", "default", "flex", "scale", "priority"].contains(&t) {
            return Err(bad(
                "service_tier",
                format!(
                    "service_tier must be one of auto, default, flex, scale, priority; got {t:?}"
                ),
            ));
        }
    }
    if let Some(p) = r.prompt_cache_retention.as_deref() {
        if !["in_memory", "24h"].contains(&p) {
            return Err(bad(
                "prompt_cache_retention",
                format!("prompt_cache_retention must be \"in_memory\" or \"24h\", got {p:?}"),
            ));
        }
    }
    if r.priority.is_some_and(|p| p != 0) {
        return Err(unsupported(
            "priority",
            "requests are scheduled first come, first served (vLLM: priority scheduling is off)",
        ));
    }
    if r.cache_salt.as_deref() == Some("") {
        return Err(bad(
            "cache_salt",
            "Parameter 'cache_salt' must be a non-empty string if provided.",
        ));
    }
    if r.previous_response_id.is_some() && st.responses.is_none() {
        // Nothing was stored, so the id cannot be found: the 404 below says so; the warning
        // tells the operator why.
        tracing::warn!(
            "previous_response_id sent, but the response store is off (--enable-responses-store)"
        );
    }
    Ok(())
}

fn check_stream_options(r: &ResponsesRequest, stream: bool) -> Result<(), ApiError> {
    let Some(o) = &r.stream_options else {
        return Ok(());
    };
    if !stream {
        return Err(bad(
            "stream_options",
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    for (k, v) in o {
        match (k.as_str(), v) {
            // Obfuscation pads deltas against length side channels; these deltas carry none.
            ("include_obfuscation", Value::Bool(_) | Value::Null) => {}
            _ => {
                return Err(unsupported(
                    &format!("stream_options.{k}"),
                    "only include_obfuscation (a boolean) is accepted",
                ))
            }
        }
    }
    Ok(())
}

fn check_metadata(m: Option<&Map<String, Value>>) -> Result<Map<String, Value>, ApiError> {
    let Some(m) = m else {
        return Ok(Map::new());
    };
    if m.len() > METADATA_MAX_PAIRS {
        return Err(bad(
            "metadata",
            format!("metadata holds at most {METADATA_MAX_PAIRS} pairs"),
        ));
    }
    for (k, v) in m {
        let Some(s) = v.as_str() else {
            return Err(bad(
                "metadata",
                format!("metadata values must be strings ({k:?} is not)"),
            ));
        };
        if k.chars().count() > METADATA_MAX_KEY || s.chars().count() > METADATA_MAX_VALUE {
            return Err(bad(
                "metadata",
                format!(
                    "metadata keys are at most {METADATA_MAX_KEY} and values {METADATA_MAX_VALUE} characters"
                ),
            ));
        }
    }
    Ok(m.clone())
}

/// Whether output logprobs were asked for.
fn check_include(include: Option<&[String]>) -> Result<bool, ApiError> {
    let mut logprobs = false;
    for v in include.unwrap_or_default() {
        match v.as_str() {
            INCLUDE_LOGPROBS => logprobs = true,
            "reasoning.encrypted_content" => {
                return Err(unsupported(
                    "include",
                    "reasoning is returned as text; there is no encrypted reasoning content",
                ))
            }
            v if INCLUDE_NOOP.contains(&v) => {}
            other => return Err(bad("include", format!("unknown include value {other:?}"))),
        }
    }
    Ok(logprobs)
}

/// `reasoning`: the effort goes to the chat template as `reasoning_effort` (as vLLM), and
/// "none" / "minimal" also turn Qwen3's thinking off (`enable_thinking: false`), the one
/// effort switch its template has. Summaries cannot be made.
fn check_reasoning(r: Option<&Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let Some(r) = r.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = r
        .as_object()
        .ok_or_else(|| bad("reasoning", "reasoning must be an object"))?;
    let mut kwargs = Map::new();
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("effort", Value::Null) => {}
            ("effort", Value::String(e)) => {
                match e.as_str() {
                    "none" | "minimal" => {
                        kwargs.insert("enable_thinking".into(), Value::Bool(false));
                    }
                    "low" | "medium" | "high" | "xhigh" => {}
                    other => {
                        return Err(bad(
                            "reasoning.effort",
                            format!("reasoning.effort must be one of none, minimal, low, medium, high, xhigh; got {other:?}"),
                        ))
                    }
                }
                kwargs.insert("reasoning_effort".into(), v.clone());
            }
            ("summary" | "generate_summary", Value::Null) => {}
            ("summary" | "generate_summary", Value::String(s)) if s == "auto" => {}
            ("summary" | "generate_summary", _) => {
                return Err(unsupported(
                    &format!("reasoning.{k}"),
                    "reasoning summaries are not generated (\"auto\" or null only)",
                ))
            }
            _ => {
                return Err(unsupported(
                    &format!("reasoning.{k}"),
                    "only effort and summary are accepted",
                ))
            }
        }
    }
    Ok((!kwargs.is_empty()).then_some(kwargs))
}

/// `text`: plain text output only (no structured output yet), default verbosity.
fn check_text(t: Option<&Value>) -> Result<(), ApiError> {
    let Some(t) = t.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let obj = t
        .as_object()
        .ok_or_else(|| bad("text", "text must be an object"))?;
    for (k, v) in obj {
        match k.as_str() {
            "format" => match v.get("type").and_then(Value::as_str) {
                _ if v.is_null() => {}
                Some("text") => {}
                Some("json_schema" | "json_object") => {
                    return Err(unsupported(
                        "text.format",
                        "structured output is not implemented; use {\"type\": \"text\"}",
                    ))
                }
                _ => {
                    return Err(bad(
                        "text.format",
                        "text.format.type must be \"text\", \"json_schema\" or \"json_object\"",
                    ))
                }
            },
            "verbosity" => match v.as_str() {
                _ if v.is_null() => {}
                Some("medium") => {}
                _ => {
                    return Err(unsupported(
                        "text.verbosity",
                        "the model has no verbosity control (\"medium\" or null only)",
                    ))
                }
            },
            _ => {
                return Err(unsupported(
                    &format!("text.{k}"),
                    "only format and verbosity are accepted",
                ))
            }
        }
    }
    Ok(())
}

/// Responses function tools (`{type, name, description, parameters, strict}`) in chat's form.
fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let obj = t
            .as_object()
            .ok_or_else(|| bad(&format!("tools[{i}]"), "a tool must be an object"))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(unsupported(
                    &format!("tools[{i}].type"),
                    &format!("only function tools are supported, got {other:?}"),
                ))
            }
            None => {
                return Err(bad(
                    &format!("tools[{i}].type"),
                    "a tool needs a string 'type'",
                ))
            }
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                bad(
                    &format!("tools[{i}].name"),
                    "a function tool needs a 'name'",
                )
            })?;
        let mut f = Map::new();
        f.insert("name".into(), Value::String(name.to_string()));
        for (k, v) in obj {
            let ok = match k.as_str() {
                "type" | "name" => continue,
                "description" => v.is_string() || v.is_null(),
                "parameters" => v.is_object() || v.is_null(),
                // Accepted as in chat (and vLLM): the arguments are parsed, not enforced.
                "strict" => v.is_boolean() || v.is_null(),
                _ => {
                    return Err(unsupported(
                        &format!("tools[{i}].{k}"),
                        "function tools take name, description, parameters and strict",
                    ))
                }
            };
            if !ok {
                return Err(bad(
                    &format!("tools[{i}].{k}"),
                    format!("tools[{i}].{k} has the wrong type"),
                ));
            }
            f.insert(k.clone(), v.clone());
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(out)
}

/// The chat `tool_choice` for a Responses one: "auto" (the default) and "none" only.
fn check_tool_choice(c: Option<&Value>, has_tools: bool) -> Result<Option<Value>, ApiError> {
    match c {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        // Without tools there is nothing to turn off.
        Some(Value::String(s)) if s == "none" => Ok(has_tools.then(|| json!("none"))),
        Some(Value::String(s)) if s == "required" => Err(unsupported(
            "tool_choice",
            "\"required\" needs constrained decoding, not implemented; use \"auto\" or \"none\"",
        )),
        Some(Value::Object(_)) => Err(unsupported(
            "tool_choice",
            "forcing a function needs constrained decoding, not implemented; use \"auto\" or \"none\"",
        )),
        Some(other) => Err(bad(
            "tool_choice",
            format!("tool_choice must be \"auto\", \"none\", \"required\" or an object, got {other}"),
        )),
    }
}

/// The text of message content: a string, or text parts joined by newlines (as chat joins
/// them). Images, files and audio are refused: the model reads text only.
fn content_text(param: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let pp = format!("{param}[{j}]");
                let ty = p.get("type").and_then(Value::as_str);
                let key = match ty {
                    Some(
                        "input_text" | "output_text" | "text" | "reasoning_text" | "summary_text",
                    ) => "text",
                    Some("refusal") => "refusal",
                    Some(t @ ("input_image" | "input_file" | "input_audio")) => {
                        return Err(unsupported(
                            &format!("{pp}.type"),
                            &format!("{t} parts need a multimodal model; this one reads text"),
                        ))
                    }
                    Some(t) => {
                        return Err(bad(
                            &format!("{pp}.type"),
                            format!("unknown content part type {t:?}"),
                        ))
                    }
                    None => {
                        return Err(bad(&format!("{pp}.type"), "a content part needs a 'type'"))
                    }
                };
                let text = p.get(key).and_then(Value::as_str).ok_or_else(|| {
                    bad(
                        &format!("{pp}.{key}"),
                        format!("a {} part needs a string '{key}'", ty.unwrap_or_default()),
                    )
                })?;
                texts.push(text.to_string());
            }
            Ok(texts.join("\n"))
        }
        _ => Err(bad(param, "content must be a string or an array of parts")),
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, param: &str, key: &str) -> Result<&'a str, ApiError> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        bad(
            &format!("{param}.{key}"),
            format!("'{key}' must be a string"),
        )
    })
}

/// The last message if it is an assistant one still open for more (content, tool calls or
/// reasoning are merged into it, as vLLM builds one assistant turn from several items).
fn open_assistant(messages: &mut [Value]) -> Option<&mut Map<String, Value>> {
    messages
        .last_mut()
        .and_then(Value::as_object_mut)
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
}

/// `input` as chat messages, and whether the last one is an unfinished assistant message the
/// reply continues (status `in_progress` / `incomplete`, as vLLM).
fn input_messages(input: &Value) -> Result<(Vec<Value>, bool), ApiError> {
    let items = match input {
        Value::String(s) => return Ok((vec![json!({"role": "user", "content": s})], false)),
        Value::Array(a) => a,
        _ => return Err(bad("input", "input must be a string or an array of items")),
    };
    let mut messages: Vec<Value> = Vec::with_capacity(items.len());
    let mut continue_final = false;
    for (i, item) in items.iter().enumerate() {
        let p = format!("input[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| bad(&p, "an input item must be an object"))?;
        continue_final = false;
        let ty = match obj.get("type") {
            None | Some(Value::Null) => "message",
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(bad(&format!("{p}.type"), "'type' must be a string")),
        };
        match ty {
            "message" => {
                let role = match str_field(obj, &p, "role")? {
                    "developer" => "system",
                    r @ ("user" | "system" | "assistant") => r,
                    other => {
                        return Err(bad(
                            &format!("{p}.role"),
                            format!("role must be user, system, developer or assistant, got {other:?}"),
                        ))
                    }
                };
                let text = content_text(
                    &format!("{p}.content"),
                    obj.get("content").unwrap_or(&Value::Null),
                )?;
                if role == "assistant" {
                    continue_final = matches!(
                        obj.get("status").and_then(Value::as_str),
                        Some("in_progress" | "incomplete")
                    );
                    if let Some(m) = open_assistant(&mut messages) {
                        if m.get("content").is_none_or(Value::is_null) {
                            m.insert("content".into(), Value::String(text));
                            continue;
                        }
                    }
                }
                messages.push(json!({"role": role, "content": text}));
            }
            "function_call" => {
                let call = json!({
                    "id": str_field(obj, &p, "call_id")?,
                    "type": "function",
                    "function": {
                        "name": str_field(obj, &p, "name")?,
                        "arguments": str_field(obj, &p, "arguments")?,
                    },
                });
                if let Some(m) = open_assistant(&mut messages) {
                    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                        calls.push(call);
                    } else {
                        m.insert("tool_calls".into(), Value::Array(vec![call]));
                    }
                    continue;
                }
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
            "function_call_output" => {
                let call_id = str_field(obj, &p, "call_id")?;
                let output = content_text(
                    &format!("{p}.output"),
                    obj.get("output").unwrap_or(&Value::Null),
                )?;
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            "reasoning" => {
                if obj.get("encrypted_content").is_some_and(|v| !v.is_null()) {
                    return Err(unsupported(
                        &format!("{p}.encrypted_content"),
                        "there is no encrypted reasoning here; send its text as content",
                    ));
                }
                let first_text = |key: &str| -> Result<Option<String>, ApiError> {
                    match obj.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::Array(a)) if a.is_empty() => Ok(None),
                        Some(v @ Value::Array(_)) => {
                            content_text(&format!("{p}.{key}"), v).map(Some)
                        }
                        Some(_) => Err(bad(&format!("{p}.{key}"), format!("'{key}' must be an array"))),
                    }
                };
                let text = match first_text("content")? {
                    Some(t) => t,
                    None => first_text("summary")?.unwrap_or_default(),
                };
                if let Some(m) = open_assistant(&mut messages) {
                    if m.get("reasoning").is_none_or(Value::is_null) {
                        m.insert("reasoning".into(), Value::String(text));
                        continue;
                    }
                }
                messages.push(json!({"role": "assistant", "content": null, "reasoning": text}));
            }
            "item_reference" => {
                return Err(unsupported(
                    &format!("{p}.type"),
                    "item references need stored items; send the item itself",
                ))
            }
            other => {
                return Err(unsupported(
                    &format!("{p}.type"),
                    &format!("input items of type {other:?} are not supported (message, function_call, function_call_output, reasoning)"),
                ))
            }
        }
    }
    Ok((messages, continue_final))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_message_items_become_chat_messages() {
        let (m, cont) = input_messages(&json!("hi")).unwrap();
        assert_eq!(m, vec![json!({"role": "user", "content": "hi"})]);
        assert!(!cont);
        let (m, _) = input_messages(&json!([
            {"role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "c", "annotations": []}]},
        ]))
        .unwrap();
        assert_eq!(
            m,
            vec![
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "a\nb"}),
                json!({"role": "assistant", "content": "c"}),
            ]
        );
    }

    #[test]
    fn function_calls_and_outputs_become_tool_calls_and_tool_messages() {
        let (m, _) = input_messages(&json!([
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "content": [{"type": "reasoning_text", "text": "look it up"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ]))
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(m[1]["reasoning"], "look it up");
        assert_eq!(m[1]["tool_calls"][0]["id"], "c1");
        assert_eq!(m[1]["tool_calls"][1]["function"]["name"], "get");
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        // The chat template path takes them.
        claas_chat::normalize_messages(&m).unwrap();
    }

    #[test]
    fn bad_items_name_their_field() {
        let cases = [
            (json!(5), "input"),
            (json!([1]), "input[0]"),
            (json!([{"role": "robot", "content": "x"}]), "input[0].role"),
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]),
                "input[0].content[0].type",
            ),
            (
                json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
                "input[0].call_id",
            ),
            (json!([{"type": "web_search_call"}]), "input[0].type"),
            (
                json!([{"type": "reasoning", "encrypted_content": "xx"}]),
                "input[0].encrypted_content",
            ),
        ];
        for (input, param) in cases {
            let e = input_messages(&input).err().unwrap();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some(param)),
                "{input}"
            );
        }
    }

    #[test]
    fn partial_last_assistant_message_is_continued() {
        let (_, cont) = input_messages(&json!([
            {"role": "user", "content": "count"},
            {"type": "message", "role": "assistant", "status": "incomplete", "content": "1, 2,"},
        ]))
        .unwrap();
        assert!(cont);
    }

    #[test]
    fn tools_and_choices() {
        let t = chat_tools(
            &[json!({"type": "function", "name": "f", "description": "d",
            "parameters": {"type": "object"}, "strict": true})],
        )
        .unwrap();
        assert_eq!(
            t[0],
            json!({"type": "function", "function": {"name": "f", "description": "d",
                "parameters": {"type": "object"}, "strict": true}})
        );
        let e = chat_tools(&[json!({"type": "web_search"})]).err().unwrap();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = chat_tools(&[json!({"type": "function"})]).err().unwrap();
        assert_eq!(e.param.as_deref(), Some("tools[0].name"));
        assert_eq!(check_tool_choice(Some(&json!("auto")), true).unwrap(), None);
        assert_eq!(
            check_tool_choice(Some(&json!("none")), true).unwrap(),
            Some(json!("none"))
        );
        assert_eq!(
            check_tool_choice(Some(&json!("none")), false).unwrap(),
            None
        );
        for c in [
            json!("required"),
            json!({"type": "function", "name": "f"}),
            json!(3),
        ] {
            let e = check_tool_choice(Some(&c), true).err().unwrap();
            assert_eq!(e.param.as_deref(), Some("tool_choice"));
        }
    }

    #[test]
    fn reasoning_text_include_and_metadata_rules() {
        let k = check_reasoning(Some(&json!({"effort": "none", "summary": "auto"})))
            .unwrap()
            .unwrap();
        assert_eq!(k["enable_thinking"], false);
        assert_eq!(k["reasoning_effort"], "none");
        let k = check_reasoning(Some(&json!({"effort": "high"})))
            .unwrap()
            .unwrap();
        assert!(k.get("enable_thinking").is_none());
        for (r, p) in [
            (json!({"summary": "detailed"}), "reasoning.summary"),
            (json!({"effort": "max"}), "reasoning.effort"),
        ] {
            assert_eq!(
                check_reasoning(Some(&r)).err().unwrap().param.as_deref(),
                Some(p)
            );
        }
        check_text(Some(
            &json!({"format": {"type": "text"}, "verbosity": "medium"}),
        ))
        .unwrap();
        for (t, p) in [
            (
                json!({"format": {"type": "json_schema", "name": "x", "schema": {}}}),
                "text.format",
            ),
            (json!({"format": {"type": "json_object"}}), "text.format"),
            (json!({"verbosity": "low"}), "text.verbosity"),
        ] {
            assert_eq!(
                check_text(Some(&t)).err().unwrap().param.as_deref(),
                Some(p)
            );
        }
        assert!(check_include(Some(&[INCLUDE_LOGPROBS.to_string()])).unwrap());
        assert!(!check_include(Some(&["file_search_call.results".to_string()])).unwrap());
        for bad in ["reasoning.encrypted_content", "nonsense"] {
            let e = check_include(Some(&[bad.to_string()])).err().unwrap();
            assert_eq!(e.param.as_deref(), Some("include"));
        }
        let mut m = Map::new();
        m.insert("k".into(), json!(1));
        assert_eq!(
            check_metadata(Some(&m)).err().unwrap().param.as_deref(),
            Some("metadata")
        );
        m.insert("k".into(), json!("v"));
        assert_eq!(check_metadata(Some(&m)).unwrap(), m);
    }
}
