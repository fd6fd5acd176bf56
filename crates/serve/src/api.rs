//! Routes and handlers: OpenAI chat/completions (streaming and not), models, tokenize,
//! adapters, sleep, pause, health, version, metrics.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use claas_chat::{parse_tool_calls, ToolCallStreamParser, ToolStreamEvent};
use claas_engine::{
    Canceller, Event, FinishReason, GenerateRequest, PauseMode, SamplingParams, TokenLogprob,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;
use crate::text::ChoiceText;
use crate::AppState;

type S = Arc<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// The vLLM-compatible router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/load_lora_adapter", post(load_lora))
        .route("/v1/unload_lora_adapter", post(unload_lora))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/tokenize", post(tokenize))
        .route("/v1/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/sleep", post(sleep))
        .route("/wake_up", post(wake_up))
        .route("/is_sleeping", get(is_sleeping))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/is_paused", get(is_paused))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(st): State<S>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        if req.uri().path().starts_with("/v1") {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|k| k.trim() == key);
            if !ok {
                return ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
            }
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Not Found: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method Not Allowed: {} {}", req.method(), req.uri().path()),
    )
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rand_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Which model a request names: `(name to echo, adapter or None for the base)`. With a LoRA
/// root, a name not loaded yet is resolved there and loaded (and a resolved one re-checked).
async fn pick_model(st: &AppState, model: Option<&str>) -> ApiResult<(String, Option<String>)> {
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
                Err(crate::resolve::model_missing(m))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// misc routes

async fn health(State(st): State<S>) -> Response {
    let _ = st;
    StatusCode::OK.into_response()
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn models(State(st): State<S>) -> Json<Value> {
    let created = st.created;
    let max_len = st.engine.max_model_len();
    let perm = |name: &str| {
        json!([{
            "id": format!("modelperm-{}", rand_id()),
            "object": "model_permission",
            "created": created,
            "allow_create_engine": false,
            "allow_sampling": true,
            "allow_logprobs": true,
            "allow_search_indices": false,
            "allow_view": true,
            "allow_fine_tuning": false,
            "organization": "*",
            "group": null,
            "is_blocking": false,
            "_model": name,
        }])
    };
    let mut data: Vec<Value> = st
        .served_names
        .iter()
        .map(|n| {
            json!({
                "id": n, "object": "model", "created": created, "owned_by": "vllm",
                "root": st.model_root, "parent": null, "max_model_len": max_len,
                "permission": perm(n),
            })
        })
        .collect();
    for a in st.engine.adapters() {
        data.push(json!({
            "id": a.name, "object": "model", "created": created, "owned_by": "vllm",
            "root": a.path.map(|p| p.display().to_string()).unwrap_or_else(|| a.name.clone()),
            "parent": st.served_names[0], "max_model_len": max_len,
            "permission": perm(&a.name),
        }));
    }
    Json(json!({ "object": "list", "data": data }))
}

fn prom_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    model: &str,
    h: &claas_engine::Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (b, c) in h.buckets() {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{b}\",model_name=\"{model}\"}} {c}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\",model_name=\"{model}\"}} {}",
        h.count()
    );
    let _ = writeln!(out, "{name}_sum{{model_name=\"{model}\"}} {}", h.sum());
    let _ = writeln!(out, "{name}_count{{model_name=\"{model}\"}} {}", h.count());
}

async fn metrics(State(st): State<S>) -> Response {
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    let m = st.engine.metrics();
    let model = st.served_names[0].replace('"', "'");
    let mut out = String::new();
    // Waiting first: the engine raises running before lowering waiting, so a request moving
    // between the two is counted at least once (a drain must never see it as neither).
    let waiting = m.waiting.load(SeqCst) as u64;
    let running = m.running.load(SeqCst) as u64;
    let gauges = [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            running,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            waiting,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{model}\"}} {v}"
        );
    }
    let counters = [
        (
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            m.prompt_tokens.load(Relaxed),
        ),
        (
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            m.generation_tokens.load(Relaxed),
        ),
        (
            "vllm:request_success_total",
            "Count of finished requests.",
            m.requests_finished.load(Relaxed),
        ),
        (
            "vllm:request_aborted_total",
            "Count of aborted requests.",
            m.requests_aborted.load(Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model_name=\"{model}\"}} {v}"
        );
    }
    let sleeping = st.engine.sleep_level();
    let _ = writeln!(out, "# HELP vllm:engine_sleep_state Sleep level (0 awake).\n# TYPE vllm:engine_sleep_state gauge\nvllm:engine_sleep_state{{model_name=\"{model}\"}} {sleeping}");
    prom_histogram(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &model,
        &m.ttft,
    );
    prom_histogram(
        &mut out,
        "vllm:e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        &model,
        &m.e2e,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// sleep

#[derive(Deserialize)]
struct SleepQuery {
    level: Option<String>,
}

fn require_sleep_mode(st: &AppState) -> ApiResult<()> {
    if st.enable_sleep_mode {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "sleep mode is not enabled; start the server with --enable-sleep-mode",
        ))
    }
}

async fn sleep(State(st): State<S>, Query(q): Query<SleepQuery>) -> ApiResult<Response> {
    require_sleep_mode(&st)?;
    let level: u8 = match q.level.as_deref() {
        None => 1,
        Some(s) => s
            .parse()
            .ok()
            .filter(|l| *l == 1 || *l == 2)
            .ok_or_else(|| {
                ApiError::bad_param("level", format!("sleep level must be 1 or 2, got {s:?}"))
            })?,
    };
    let engine = st.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.sleep(level))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(
        "sleep level {}: RSS {:.1} MiB -> {:.1} MiB",
        r.level,
        r.rss_before as f64 / 1048576.0,
        r.rss_after as f64 / 1048576.0
    );
    Ok(StatusCode::OK.into_response())
}

async fn wake_up(State(st): State<S>) -> ApiResult<Response> {
    require_sleep_mode(&st)?;
    let engine = st.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.wake_up())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(
        "wake up: RSS {:.1} MiB -> {:.1} MiB",
        r.rss_before as f64 / 1048576.0,
        r.rss_after as f64 / 1048576.0
    );
    Ok(StatusCode::OK.into_response())
}

async fn is_sleeping(State(st): State<S>) -> Json<Value> {
    Json(json!({ "is_sleeping": st.engine.sleep_level() != 0 }))
}

// ---------------------------------------------------------------------------------------------
// pause

/// `/pause` query, as vLLM's: unknown parameters (e.g. the CLaaS API's `level`) are ignored.
#[derive(Deserialize)]
struct PauseQuery {
    mode: Option<String>,
    wait_for_inflight_requests: Option<String>,
    clear_cache: Option<String>,
}

/// A query boolean as FastAPI (pydantic) parses it.
fn query_bool(param: &str, v: Option<&str>, default: bool) -> ApiResult<bool> {
    let Some(v) = v else {
        return Ok(default);
    };
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(ApiError::bad_param(
            param,
            format!("{param} must be a boolean, got {v:?}"),
        )),
    }
}

/// vLLM's `POST /pause`: nothing new is scheduled until `/resume`; requests sent meanwhile
/// are accepted and wait. `mode` `abort` (default) aborts every request the engine holds,
/// `wait` lets running ones finish before answering, `keep` freezes them until resume. The
/// deprecated `wait_for_inflight_requests=true` means `wait`; `clear_cache` is validated and
/// otherwise moot (no prefix cache here).
async fn pause(State(st): State<S>, Query(q): Query<PauseQuery>) -> ApiResult<Json<Value>> {
    let mut mode = match q.mode.as_deref() {
        None | Some("abort") => PauseMode::Abort,
        Some("wait") => PauseMode::Wait,
        Some("keep") => PauseMode::Keep,
        Some(other) => {
            return Err(ApiError::bad_param(
                "mode",
                format!("mode must be one of 'abort', 'wait', 'keep', got {other:?}"),
            ))
        }
    };
    if query_bool(
        "wait_for_inflight_requests",
        q.wait_for_inflight_requests.as_deref(),
        false,
    )? {
        mode = PauseMode::Wait;
    }
    query_bool("clear_cache", q.clear_cache.as_deref(), true)?;
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || engine.pause(mode))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!("generation paused ({mode:?})");
    Ok(Json(json!({ "status": "paused" })))
}

/// vLLM's `POST /resume`.
async fn resume(State(st): State<S>) -> ApiResult<Json<Value>> {
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || engine.resume())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!("generation resumed");
    Ok(Json(json!({ "status": "resumed" })))
}

async fn is_paused(State(st): State<S>) -> Json<Value> {
    Json(json!({ "is_paused": st.engine.is_paused() }))
}

// ---------------------------------------------------------------------------------------------
// adapters

#[derive(Deserialize)]
struct LoadLora {
    lora_name: Option<String>,
    lora_path: Option<String>,
}

async fn load_lora(State(st): State<S>, body: Bytes) -> ApiResult<Response> {
    let req: LoadLora = parse_body(&body)?;
    let (Some(name), Some(path)) = (
        req.lora_name.filter(|s| !s.is_empty()),
        req.lora_path.filter(|s| !s.is_empty()),
    ) else {
        return Err(ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.",
        ));
    };
    if st.is_base(&name) {
        return Err(ApiError::bad_param(
            "lora_name",
            format!("The lora adapter name '{name}' is the base model's name."),
        ));
    }
    let canon = std::fs::canonicalize(&path).map_err(|e| {
        ApiError::bad_param(
            "lora_path",
            format!("Loading lora {name} failed: {path}: {e}"),
        )
    })?;
    if let Some(root) = &st.lora_root {
        let root = std::fs::canonicalize(root).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("LoRA root {}: {e}", root.display()),
            )
        })?;
        if !canon.starts_with(&root) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "lora_path {path} is outside the LoRA root {}",
                    root.display()
                ),
            ));
        }
    }
    let engine = st.engine.clone();
    let n2 = name.clone();
    tokio::task::spawn_blocking(move || engine.load_adapter(&n2, &canon))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("Loading lora {name} failed: {e}")))?;
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' added successfully."),
    )
        .into_response())
}

#[derive(Deserialize)]
struct UnloadLora {
    lora_name: Option<String>,
}

async fn unload_lora(State(st): State<S>, body: Bytes) -> ApiResult<Response> {
    let req: UnloadLora = parse_body(&body)?;
    let Some(name) = req.lora_name.filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad_request(
            "'lora_name' needs to be provided to unload a LoRA adapter.",
        ));
    };
    let engine = st.engine.clone();
    let n2 = name.clone();
    let removed = tokio::task::spawn_blocking(move || engine.unload_adapter(&n2))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if !removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The lora adapter '{name}' cannot be found."),
        ));
    }
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' removed successfully."),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// tokenize

#[derive(Deserialize)]
struct TokenizeReq {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Value>>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    tools: Option<Vec<Value>>,
    chat_template_kwargs: Option<Map<String, Value>>,
    return_token_strs: Option<bool>,
}

fn render_chat(
    st: &AppState,
    messages: &[Value],
    tools: Option<&[Value]>,
    add_generation_prompt: bool,
    continue_final: bool,
    kwargs: Option<&Map<String, Value>>,
) -> ApiResult<String> {
    let tmpl = st
        .template
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this model has no chat template"))?;
    if messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let msgs = claas_chat::normalize_messages(messages)?;
    let mut text = tmpl.render(
        &msgs,
        tools,
        add_generation_prompt && !continue_final,
        kwargs,
    )?;
    if continue_final {
        // Keep the last assistant message open: cut the template's end-of-turn after it.
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

async fn tokenize(State(st): State<S>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: TokenizeReq = parse_body(&body)?;
    pick_model(&st, req.model.as_deref()).await?;
    let st2 = st.clone();
    let tokens = tokio::task::spawn_blocking(move || -> ApiResult<Vec<u32>> {
        if let Some(messages) = &req.messages {
            let text = render_chat(
                &st2,
                messages,
                req.tools.as_deref(),
                req.add_generation_prompt.unwrap_or(true),
                req.continue_final_message.unwrap_or(false),
                req.chat_template_kwargs.as_ref(),
            )?;
            Ok(st2
                .tokenizer
                .encode(&text, req.add_special_tokens.unwrap_or(false))?)
        } else if let Some(p) = &req.prompt {
            Ok(st2
                .tokenizer
                .encode(p, req.add_special_tokens.unwrap_or(true))?)
        } else {
            Err(ApiError::bad_request(
                "either 'prompt' or 'messages' is required",
            ))
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let strs = if req.return_token_strs.unwrap_or(false) {
        json!(tokens
            .iter()
            .map(|&t| st.tokenizer.id_to_token(t))
            .collect::<Vec<_>>())
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": st.engine.max_model_len(),
        "tokens": tokens,
        "token_strs": strs,
    })))
}

#[derive(Deserialize)]
struct DetokenizeReq {
    model: Option<String>,
    tokens: Vec<i64>,
}

async fn detokenize(State(st): State<S>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: DetokenizeReq = parse_body(&body)?;
    pick_model(&st, req.model.as_deref()).await?;
    let vocab = st
        .engine
        .model_config()
        .vocab_size
        .max(st.tokenizer.vocab_size());
    let ids: Vec<u32> = req
        .tokens
        .iter()
        .map(|&t| {
            if t < 0 || t as usize >= vocab {
                Err(ApiError::bad_param(
                    "tokens",
                    format!("token id {t} is out of vocabulary"),
                ))
            } else {
                Ok(t as u32)
            }
        })
        .collect::<ApiResult<_>>()?;
    let text = st.tokenizer.decode(&ids, false)?;
    Ok(Json(json!({ "prompt": text })))
}

// ---------------------------------------------------------------------------------------------
// sampling

#[derive(Deserialize)]
#[serde(untagged)]
enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
    continuous_usage_stats: Option<bool>,
}

/// Sampling fields shared by chat and completions.
#[derive(Deserialize, Default)]
struct Sampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    seed: Option<i64>,
    n: Option<usize>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    min_tokens: Option<usize>,
    stop: Option<StopSpec>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    include_stop_str_in_output: Option<bool>,
    skip_special_tokens: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

struct Prepared {
    params: SamplingParams,
    n: usize,
    stops: Vec<String>,
}

fn prepare(
    st: &AppState,
    s: &Sampling,
    prompt_len: usize,
    default_max: Option<usize>,
    logprobs: Option<usize>,
) -> ApiResult<Prepared> {
    let max_len = st.engine.max_model_len();
    if prompt_len >= max_len {
        return Err(ApiError::bad_param(
            "messages",
            format!(
                "This model's maximum context length is {max_len} tokens. However, your request has {prompt_len} input tokens. Please reduce the length of the input messages."
            ),
        ));
    }
    let room = max_len - prompt_len;
    let d = &st.defaults;
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        Some(m) => m,
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
        return Err(ApiError::bad_param("n", "n must be at least 1"));
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
    };
    if params.top_k < -1 {
        return Err(ApiError::bad_param(
            "top_k",
            format!(
                "top_k must be -1 (disable), or at least 1, got {}",
                params.top_k
            ),
        ));
    }
    params
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Prepared { params, n, stops })
}

// ---------------------------------------------------------------------------------------------
// running requests

/// Per-choice output state.
struct ChoiceState {
    text: ChoiceText,
    tokens: Vec<u32>,
    lps: Vec<TokenLogprob>,
    finish: Option<(String, Value)>,
    tools: Option<ToolCallStreamParser>,
    tool_calls: usize,
}

/// One update for one choice.
struct Delta {
    index: usize,
    text: String,
    /// The generated token this update is for (none on a bare finish).
    token: Option<u32>,
    lp: Option<TokenLogprob>,
    finish: Option<(String, Value)>,
}

/// A request in flight: one engine request per prompt, `n` choices each.
struct Run {
    events: futures::stream::SelectAll<futures::stream::BoxStream<'static, (usize, Event)>>,
    cancels: Vec<Canceller>,
    n: usize,
    choices: Vec<ChoiceState>,
    prompt_lps: Vec<Option<Vec<Option<TokenLogprob>>>>,
    prompts: Vec<Vec<u32>>,
    open: usize,
}

#[allow(clippy::too_many_arguments)]
fn start_run(
    st: &AppState,
    prompts: Vec<Vec<u32>>,
    adapter: Option<String>,
    prep: &Prepared,
    prompt_logprobs: Option<usize>,
    skip_special: bool,
    include_stop: bool,
    tools: bool,
) -> ApiResult<Run> {
    let mut streams = Vec::new();
    let mut cancels = Vec::new();
    let mut choices = Vec::new();
    for (pi, prompt) in prompts.iter().enumerate() {
        let handle = st.engine.submit(GenerateRequest {
            prompt: prompt.clone(),
            adapter: adapter.clone(),
            params: prep.params.clone(),
            n: prep.n,
            prompt_logprobs,
        })?;
        let (rx, c) = handle.into_parts();
        cancels.push(c);
        streams.push(
            UnboundedReceiverStream::new(rx)
                .map(move |e| (pi, e))
                .boxed(),
        );
        for _ in 0..prep.n {
            choices.push(ChoiceState {
                text: ChoiceText::new(
                    st.tokenizer.clone(),
                    skip_special,
                    prompt,
                    prep.stops.clone(),
                    include_stop,
                ),
                tokens: Vec::new(),
                lps: Vec::new(),
                finish: None,
                tools: tools.then(ToolCallStreamParser::new),
                tool_calls: 0,
            });
        }
    }
    Ok(Run {
        events: futures::stream::select_all(streams),
        cancels,
        n: prep.n,
        open: choices.len(),
        choices,
        prompt_lps: vec![None; prompts.len()],
        prompts,
    })
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

impl Run {
    /// Next batch of updates; `None` when every choice has finished.
    async fn next(&mut self) -> Option<ApiResult<Vec<Delta>>> {
        loop {
            if self.open == 0 {
                return None;
            }
            let Some((pi, ev)) = self.events.next().await else {
                return Some(Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the engine stopped",
                )));
            };
            match ev {
                Event::PromptLogprobs(v) => self.prompt_lps[pi] = Some(v),
                Event::Error(m) => {
                    return Some(Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)));
                }
                Event::Token {
                    index,
                    token,
                    logprob,
                } => {
                    let ci = pi * self.n + index;
                    let c = &mut self.choices[ci];
                    if c.finish.is_some() {
                        continue;
                    }
                    c.tokens.push(token);
                    if let Some(l) = &logprob {
                        c.lps.push(l.clone());
                    }
                    let text = c.text.push(token);
                    let mut finish = None;
                    if let Some(s) = c.text.stopped.clone() {
                        let rest = c.text.finish();
                        self.cancels[pi].cancel(index);
                        finish = Some(("stop".to_string(), Value::String(s)));
                        c.finish = finish.clone();
                        self.open -= 1;
                        return Some(Ok(vec![Delta {
                            index: ci,
                            text: text + &rest,
                            token: Some(token),
                            lp: logprob,
                            finish,
                        }]));
                    }
                    return Some(Ok(vec![Delta {
                        index: ci,
                        text,
                        token: Some(token),
                        lp: logprob,
                        finish,
                    }]));
                }
                Event::Finished {
                    index,
                    reason,
                    stop_token,
                } => {
                    let ci = pi * self.n + index;
                    let c = &mut self.choices[ci];
                    if c.finish.is_some() {
                        continue;
                    }
                    let text = c.text.finish();
                    let f = (
                        finish_name(reason).to_string(),
                        stop_token.map(Value::from).unwrap_or(Value::Null),
                    );
                    c.finish = Some(f.clone());
                    self.open -= 1;
                    return Some(Ok(vec![Delta {
                        index: ci,
                        text,
                        token: None,
                        lp: None,
                        finish: Some(f),
                    }]));
                }
            }
        }
    }

    async fn collect(&mut self) -> ApiResult<()> {
        while let Some(r) = self.next().await {
            r?;
        }
        Ok(())
    }

    fn usage(&self) -> Value {
        let p: usize = self.prompts.iter().map(Vec::len).sum();
        let c: usize = self.choices.iter().map(|c| c.tokens.len()).sum();
        json!({ "prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c, "prompt_tokens_details": null })
    }
}

fn safe_lp(x: f32) -> f64 {
    if x.is_finite() {
        x as f64
    } else {
        -9999.0
    }
}

fn tok_str(st: &AppState, id: u32) -> String {
    st.tokenizer.decode(&[id], false).unwrap_or_default()
}

fn chat_lp_entry(st: &AppState, l: &TokenLogprob) -> Value {
    let t = tok_str(st, l.token);
    json!({
        "token": t,
        "logprob": safe_lp(l.logprob),
        "bytes": t.as_bytes(),
        "top_logprobs": l.top.iter().map(|&(id, lp)| {
            let s = tok_str(st, id);
            json!({"token": s, "logprob": safe_lp(lp), "bytes": s.as_bytes()})
        }).collect::<Vec<_>>(),
    })
}

fn prompt_lps_json(st: &AppState, v: &[Option<TokenLogprob>]) -> Value {
    Value::Array(
        v.iter()
            .map(|e| match e {
                None => Value::Null,
                Some(l) => {
                    let mut m = Map::new();
                    m.insert(
                        l.token.to_string(),
                        json!({"logprob": safe_lp(l.logprob), "rank": l.rank, "decoded_token": tok_str(st, l.token)}),
                    );
                    for (i, &(id, lp)) in l.top.iter().enumerate() {
                        m.entry(id.to_string()).or_insert_with(|| {
                            json!({"logprob": safe_lp(lp), "rank": i + 1, "decoded_token": tok_str(st, id)})
                        });
                    }
                    Value::Object(m)
                }
            })
            .collect(),
    )
}

/// Ends an SSE stream as vLLM does: the usage chunk when one was asked for, then `[DONE]`
/// (nothing if the client is gone).
async fn end_stream(tx: &tokio::sync::mpsc::Sender<Bytes>, usage: Option<Bytes>) {
    if tx.is_closed() {
        return;
    }
    if let Some(u) = usage {
        let _ = tx.send(u).await;
    }
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Builds an SSE response from a producer task; the task stops when the client goes away.
fn sse_response<F, Fut>(producer: F) -> Response
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(producer(tx));
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Waits for the next run update, or gives up when the client disconnected.
async fn next_or_closed(
    run: &mut Run,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> Option<ApiResult<Vec<Delta>>> {
    tokio::select! {
        r = run.next() => r,
        _ = tx.closed() => None,
    }
}

fn error_event(e: &ApiError) -> Bytes {
    sse(
        &json!({"error": {"message": e.message, "type": "InternalServerError", "param": null, "code": e.status.as_u16()}}),
    )
}

// ---------------------------------------------------------------------------------------------
// chat

#[derive(Deserialize)]
struct ChatReq {
    model: Option<String>,
    messages: Option<Vec<Value>>,
    #[serde(flatten)]
    sampling: Sampling,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    chat_template_kwargs: Option<Map<String, Value>>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    prompt_logprobs: Option<usize>,
    /// vLLM >= 0.10.2: prompt ids (top level) and generated ids (per choice) in the response.
    return_token_ids: Option<bool>,
}

async fn chat(State(st): State<S>, body: Bytes) -> ApiResult<Response> {
    let req: ChatReq = parse_body(&body)?;
    let (model, adapter) = pick_model(&st, req.model.as_deref()).await?;
    let messages = req
        .messages
        .clone()
        .ok_or_else(|| ApiError::bad_param("messages", "'messages' is required"))?;
    if req.top_logprobs.is_some() && !req.logprobs.unwrap_or(false) {
        return Err(ApiError::bad_param(
            "top_logprobs",
            "when using `top_logprobs`, `logprobs` must be set to true",
        ));
    }
    if req.top_logprobs.is_some_and(|k| k > st.max_logprobs) {
        return Err(ApiError::bad_param(
            "top_logprobs",
            format!(
                "top_logprobs must be at most {} (--max-logprobs)",
                st.max_logprobs
            ),
        ));
    }
    let tool_choice_none = matches!(&req.tool_choice, Some(Value::String(s)) if s == "none");
    let tools = req.tools.clone().filter(|t| !t.is_empty());
    if let Some(tc) = &req.tool_choice {
        if !tc.is_null() && tools.is_none() && !tool_choice_none {
            return Err(ApiError::bad_param(
                "tool_choice",
                "When using `tool_choice`, `tools` must be set.",
            ));
        }
    }
    let parse_tools = tools.is_some() && !tool_choice_none;
    let st2 = st.clone();
    let kwargs = req.chat_template_kwargs.clone();
    let add_gen = req.add_generation_prompt.unwrap_or(true);
    let cont = req.continue_final_message.unwrap_or(false);
    let tools2 = tools.clone();
    let prompt = tokio::task::spawn_blocking(move || -> ApiResult<Vec<u32>> {
        let text = render_chat(
            &st2,
            &messages,
            tools2.as_deref(),
            add_gen,
            cont,
            kwargs.as_ref(),
        )?;
        Ok(st2.tokenizer.encode(&text, false)?)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let logprobs = req
        .logprobs
        .unwrap_or(false)
        .then(|| req.top_logprobs.unwrap_or(0));
    let prep = prepare(&st, &req.sampling, prompt.len(), None, logprobs)?;
    let skip = req.sampling.skip_special_tokens.unwrap_or(true);
    let include_stop = req.sampling.include_stop_str_in_output.unwrap_or(false);
    let mut run = start_run(
        &st,
        vec![prompt],
        adapter,
        &prep,
        req.prompt_logprobs,
        skip,
        include_stop,
        parse_tools,
    )?;
    let id = format!("chatcmpl-{}", rand_id());
    let created = now();
    let token_ids = req.return_token_ids.unwrap_or(false);
    if req.sampling.stream.unwrap_or(false) {
        let opts = req.sampling.stream_options.unwrap_or_default();
        let include_usage = opts.include_usage.unwrap_or(false);
        let continuous = include_usage && opts.continuous_usage_stats.unwrap_or(false);
        let want_lp = logprobs.is_some();
        return Ok(sse_response(move |tx| async move {
            let chunk = |choices: Value, usage: Option<Value>| {
                let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
                if let Some(u) = usage {
                    v["usage"] = u;
                }
                v
            };
            for i in 0..run.choices.len() {
                let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
                let mut head = chunk(c, None);
                // As vLLM: the prompt ids ride on the role chunk.
                if token_ids {
                    head["prompt_token_ids"] = json!(run.prompts[0]);
                }
                if tx.send(sse(&head)).await.is_err() {
                    return;
                }
            }
            while let Some(r) = next_or_closed(&mut run, &tx).await {
                let deltas = match r {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(error_event(&e)).await;
                        return;
                    }
                };
                for d in deltas {
                    let c = &mut run.choices[d.index];
                    let (content, calls) = stream_tool_delta(
                        c.tools.as_mut(),
                        &mut c.tool_calls,
                        &d.text,
                        d.finish.is_some(),
                    );
                    let lp = if want_lp {
                        match &d.lp {
                            Some(l) => json!({"content": [chat_lp_entry(&st, l)]}),
                            None => Value::Null,
                        }
                    } else {
                        Value::Null
                    };
                    let ids = token_ids.then(|| d.token.into_iter().collect::<Vec<u32>>());
                    if content.is_empty()
                        && calls.is_empty()
                        && d.finish.is_none()
                        && lp.is_null()
                        && ids.as_ref().is_none_or(|v| v.is_empty())
                    {
                        continue;
                    }
                    let mut delta = Map::new();
                    if !content.is_empty() {
                        delta.insert("content".into(), Value::String(content));
                    }
                    if !calls.is_empty() {
                        delta.insert("tool_calls".into(), Value::Array(calls));
                    }
                    let (fr, sr) = match &d.finish {
                        Some((f, s)) => {
                            let f = if f == "stop" && c.tool_calls > 0 {
                                "tool_calls".to_string()
                            } else {
                                f.clone()
                            };
                            (Value::String(f), s.clone())
                        }
                        None => (Value::Null, Value::Null),
                    };
                    let mut choice = json!({"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": fr, "stop_reason": sr});
                    if let Some(ids) = ids {
                        choice["token_ids"] = json!(ids);
                    }
                    let usage = if continuous { Some(run.usage()) } else { None };
                    if tx.send(sse(&chunk(json!([choice]), usage))).await.is_err() {
                        return;
                    }
                }
            }
            let usage = include_usage.then(|| sse(&chunk(json!([]), Some(run.usage()))));
            end_stream(&tx, usage).await;
        }));
    }
    run.collect().await?;
    let usage = run.usage();
    let plp = match (&run.prompt_lps[0], req.prompt_logprobs) {
        (Some(v), Some(_)) => prompt_lps_json(&st, v),
        _ => Value::Null,
    };
    let choices: Vec<Value> = run
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (fr, sr) = c.finish.clone().unwrap_or(("stop".into(), Value::Null));
            let (message, fr) = chat_message(&c.text.text, parse_tools, fr);
            let lp = if logprobs.is_some() {
                json!({"content": c.lps.iter().map(|l| chat_lp_entry(&st, l)).collect::<Vec<_>>()})
            } else {
                Value::Null
            };
            let ids = if token_ids { json!(c.tokens) } else { Value::Null };
            json!({"index": i, "message": message, "logprobs": lp, "finish_reason": fr, "stop_reason": sr, "token_ids": ids})
        })
        .collect();
    let prompt_ids = if token_ids {
        json!(run.prompts[0])
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "usage": usage, "prompt_logprobs": plp,
        "prompt_token_ids": prompt_ids,
    }))
    .into_response())
}

/// Content and OpenAI `tool_calls` delta entries for one streamed text delta (Qwen3
/// `<tool_call>` blocks become tool calls once closed, or at the end of the output).
fn stream_tool_delta(
    parser: Option<&mut ToolCallStreamParser>,
    count: &mut usize,
    text: &str,
    finishing: bool,
) -> (String, Vec<Value>) {
    let events = match parser {
        Some(p) => {
            let mut ev = p.push(text);
            if finishing {
                ev.extend(p.finish());
            }
            ev
        }
        None => vec![ToolStreamEvent::Content(text.to_string())],
    };
    let mut content = String::new();
    let mut calls = Vec::new();
    for e in events {
        match e {
            ToolStreamEvent::Content(s) => content.push_str(&s),
            ToolStreamEvent::ToolCall(tc) => {
                calls.push(json!({"index": *count, "id": format!("chatcmpl-tool-{}", rand_id()), "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments}}));
                *count += 1;
            }
        }
    }
    (content, calls)
}

/// The assistant message of a finished choice and its finish reason (`tool_calls` when the
/// output held tool calls and stopped normally), as vLLM's auto tool choice.
fn chat_message(text: &str, parse_tools: bool, finish: String) -> (Value, String) {
    let mut message =
        json!({"role": "assistant", "content": text, "tool_calls": [], "reasoning_content": null});
    let mut fr = finish;
    if parse_tools {
        let (content, calls) = parse_tool_calls(text);
        if !calls.is_empty() {
            message["content"] = if content.is_empty() {
                Value::Null
            } else {
                Value::String(content)
            };
            message["tool_calls"] = Value::Array(
                calls
                    .into_iter()
                    .map(|tc| json!({"id": format!("chatcmpl-tool-{}", rand_id()), "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}))
                    .collect(),
            );
            if fr == "stop" {
                fr = "tool_calls".into();
            }
        }
    }
    (message, fr)
}

// ---------------------------------------------------------------------------------------------
// completions

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

#[derive(Deserialize)]
struct CompletionReq {
    model: Option<String>,
    prompt: Option<PromptSpec>,
    #[serde(flatten)]
    sampling: Sampling,
    logprobs: Option<usize>,
    echo: Option<bool>,
    prompt_logprobs: Option<usize>,
    add_special_tokens: Option<bool>,
    /// vLLM >= 0.10.2: prompt and generated ids per choice in the response.
    return_token_ids: Option<bool>,
}

fn completion_lps(
    st: &AppState,
    entries: &[(u32, Option<&TokenLogprob>)],
    start_offset: usize,
) -> Value {
    let mut offsets = Vec::new();
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut off = start_offset;
    for (id, l) in entries {
        let s = tok_str(st, *id);
        offsets.push(off);
        off += s.len();
        tokens.push(Value::String(s));
        match l {
            Some(l) => {
                lps.push(json!(safe_lp(l.logprob)));
                // vLLM always lists the sampled token next to the top alternatives.
                let mut m = Map::new();
                m.insert(tok_str(st, l.token), json!(safe_lp(l.logprob)));
                for &(tid, lp) in &l.top {
                    m.entry(tok_str(st, tid)).or_insert(json!(safe_lp(lp)));
                }
                tops.push(Value::Object(m));
            }
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
        }
    }
    json!({"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops})
}

async fn completions(State(st): State<S>, body: Bytes) -> ApiResult<Response> {
    let req: CompletionReq = parse_body(&body)?;
    let (model, adapter) = pick_model(&st, req.model.as_deref()).await?;
    let vocab = st.engine.model_config().vocab_size;
    let to_ids = |v: &[i64]| -> ApiResult<Vec<u32>> {
        v.iter()
            .map(|&t| {
                if t < 0 || t as usize >= vocab {
                    Err(ApiError::bad_param(
                        "prompt",
                        format!("token id {t} is out of vocabulary"),
                    ))
                } else {
                    Ok(t as u32)
                }
            })
            .collect()
    };
    let add_special = req.add_special_tokens.unwrap_or(true);
    let prompts: Vec<Vec<u32>> = match req
        .prompt
        .as_ref()
        .ok_or_else(|| ApiError::bad_param("prompt", "'prompt' is required"))?
    {
        PromptSpec::Text(s) => vec![st.tokenizer.encode(s, add_special)?],
        PromptSpec::Texts(v) => v
            .iter()
            .map(|s| st.tokenizer.encode(s, add_special))
            .collect::<Result<_, _>>()?,
        PromptSpec::Ids(v) => vec![to_ids(v)?],
        PromptSpec::IdLists(v) => v.iter().map(|x| to_ids(x)).collect::<ApiResult<_>>()?,
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::bad_param(
            "prompt",
            "the prompt must not be empty",
        ));
    }
    if req.logprobs.is_some_and(|k| k > st.max_logprobs) {
        return Err(ApiError::bad_param(
            "logprobs",
            format!(
                "logprobs must be at most {} (--max-logprobs)",
                st.max_logprobs
            ),
        ));
    }
    if req.prompt_logprobs.is_some_and(|k| k > st.max_logprobs) {
        return Err(ApiError::bad_param(
            "prompt_logprobs",
            format!(
                "prompt_logprobs must be at most {} (--max-logprobs)",
                st.max_logprobs
            ),
        ));
    }
    let echo = req.echo.unwrap_or(false);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let prep = prepare(&st, &req.sampling, longest, Some(16), req.logprobs)?;
    // Echo with logprobs needs the prompt's logprobs too.
    let want_plp = match (req.prompt_logprobs, echo && req.logprobs.is_some()) {
        (Some(a), true) => Some(a.max(req.logprobs.unwrap_or(0))),
        (Some(a), false) => Some(a),
        (None, true) => req.logprobs,
        (None, false) => None,
    };
    let skip = req.sampling.skip_special_tokens.unwrap_or(true);
    let include_stop = req.sampling.include_stop_str_in_output.unwrap_or(false);
    let mut run = start_run(
        &st,
        prompts,
        adapter,
        &prep,
        want_plp,
        skip,
        include_stop,
        false,
    )?;
    let id = format!("cmpl-{}", rand_id());
    let created = now();
    let n = prep.n;
    let token_ids = req.return_token_ids.unwrap_or(false);
    if req.sampling.stream.unwrap_or(false) {
        let opts = req.sampling.stream_options.unwrap_or_default();
        let include_usage = opts.include_usage.unwrap_or(false);
        let continuous = include_usage && opts.continuous_usage_stats.unwrap_or(false);
        let want_lp = req.logprobs.is_some();
        return Ok(sse_response(move |tx| async move {
            let chunk = |choices: Value, usage: Option<Value>| {
                let mut v = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
                if let Some(u) = usage {
                    v["usage"] = u;
                }
                v
            };
            let mut offsets = vec![0usize; run.choices.len()];
            // Each choice's first chunk carries its prompt ids (vLLM).
            let mut ids_sent = vec![!token_ids; run.choices.len()];
            if echo {
                for (i, off) in offsets.iter_mut().enumerate() {
                    // vLLM echoes no prompt text when the prompt goes back as ids.
                    let text = if token_ids {
                        String::new()
                    } else {
                        st.tokenizer
                            .decode(&run.prompts[i / n], skip)
                            .unwrap_or_default()
                    };
                    *off = text.len();
                    let mut c = json!({"index": i, "text": text, "logprobs": null, "finish_reason": null, "stop_reason": null});
                    if token_ids {
                        c["prompt_token_ids"] = json!(run.prompts[i / n]);
                        c["token_ids"] = json!([]);
                        ids_sent[i] = true;
                    }
                    if tx.send(sse(&chunk(json!([c]), None))).await.is_err() {
                        return;
                    }
                }
            }
            while let Some(r) = next_or_closed(&mut run, &tx).await {
                let deltas = match r {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(error_event(&e)).await;
                        return;
                    }
                };
                for d in deltas {
                    let lp = match (&d.lp, want_lp) {
                        (Some(l), true) => {
                            completion_lps(&st, &[(l.token, Some(l))], offsets[d.index])
                        }
                        _ => Value::Null,
                    };
                    let ids = token_ids.then(|| d.token.into_iter().collect::<Vec<u32>>());
                    if d.text.is_empty()
                        && d.finish.is_none()
                        && lp.is_null()
                        && ids.as_ref().is_none_or(|v| v.is_empty())
                    {
                        continue;
                    }
                    offsets[d.index] += d.text.len();
                    let (fr, sr) = match &d.finish {
                        Some((f, s)) => (Value::String(f.clone()), s.clone()),
                        None => (Value::Null, Value::Null),
                    };
                    let mut c = json!({"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": fr, "stop_reason": sr});
                    if let Some(ids) = ids {
                        if !ids_sent[d.index] {
                            c["prompt_token_ids"] = json!(run.prompts[d.index / n]);
                            ids_sent[d.index] = true;
                        }
                        c["token_ids"] = json!(ids);
                    }
                    let usage = if continuous { Some(run.usage()) } else { None };
                    if tx.send(sse(&chunk(json!([c]), usage))).await.is_err() {
                        return;
                    }
                }
            }
            let usage = include_usage.then(|| sse(&chunk(json!([]), Some(run.usage()))));
            end_stream(&tx, usage).await;
        }));
    }
    run.collect().await?;
    let usage = run.usage();
    let mut choices = Vec::new();
    for (i, c) in run.choices.iter().enumerate() {
        let pi = i / n;
        let (fr, sr) = c.finish.clone().unwrap_or(("stop".into(), Value::Null));
        // vLLM echoes no prompt text when the prompt goes back as ids.
        let prompt_text = if echo && !token_ids {
            st.tokenizer.decode(&run.prompts[pi], skip)?
        } else {
            String::new()
        };
        let lp = if req.logprobs.is_some() {
            let mut entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
            if echo {
                let plp = run.prompt_lps[pi].as_deref().unwrap_or(&[]);
                for (j, &t) in run.prompts[pi].iter().enumerate() {
                    entries.push((t, plp.get(j).and_then(|x| x.as_ref())));
                }
            }
            let gen: Vec<(u32, Option<&TokenLogprob>)> =
                c.lps.iter().map(|l| (l.token, Some(l))).collect();
            entries.extend(gen);
            completion_lps(&st, &entries, 0)
        } else {
            Value::Null
        };
        let plp = match (&run.prompt_lps[pi], req.prompt_logprobs) {
            (Some(v), Some(_)) => prompt_lps_json(&st, v),
            _ => Value::Null,
        };
        let (prompt_ids, ids) = if token_ids {
            (json!(run.prompts[pi]), json!(c.tokens))
        } else {
            (Value::Null, Value::Null)
        };
        choices.push(json!({
            "index": i, "text": prompt_text + &c.text.text, "logprobs": lp,
            "finish_reason": fr, "stop_reason": sr, "prompt_logprobs": plp,
            "prompt_token_ids": prompt_ids, "token_ids": ids,
        }));
    }
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "usage": usage,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn tool_calls_in_a_finished_message() {
        let (m, fr) = chat_message(OUT, true, "stop".into());
        assert_eq!(fr, "tool_calls");
        assert_eq!(m["content"], "Let me check.");
        let call = &m["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(call["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
        // without tools (or tool_choice none) the text stays content
        let (m, fr) = chat_message(OUT, false, "stop".into());
        assert_eq!(fr, "stop");
        assert_eq!(m["content"], OUT);
        assert_eq!(m["tool_calls"], json!([]));
    }

    #[test]
    fn tool_calls_streamed_in_small_deltas() {
        let mut p = ToolCallStreamParser::new();
        let mut count = 0;
        let mut content = String::new();
        let mut calls = Vec::new();
        let chars: Vec<char> = OUT.chars().collect();
        let pieces: Vec<String> = chars.chunks(3).map(|c| c.iter().collect()).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let (c, k) = stream_tool_delta(Some(&mut p), &mut count, piece, i + 1 == pieces.len());
            content.push_str(&c);
            calls.extend(k);
        }
        assert_eq!(content, "Let me check.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(count, 1);
        // no parser: everything is content
        let (c, k) = stream_tool_delta(None, &mut count, OUT, true);
        assert_eq!(c, OUT);
        assert!(k.is_empty());
    }
}
