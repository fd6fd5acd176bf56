//! The router and its thin handlers: body -> `validate` -> engine -> `render`/`stream`.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use claas_engine::PauseMode;

use crate::error::ApiError;
use crate::protocol::{
    ChatRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse, IsPaused, IsSleeping,
    LoadLoraRequest, ModelCard, ModelList, ModelPermission, PauseQuery, SleepQuery, StatusResponse,
    TokenizeRequest, TokenizeResponse, UnloadLoraRequest, VersionResponse,
};
use crate::render::{self, now, rand_id, ChatRenderer, CompletionRenderer};
use crate::stream::{sse, Run};
use crate::validate::{self, pick_model, JsonBody};
use crate::AppState;

type S = Arc<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// The vLLM-compatible router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(crate::responses::create))
        .route(
            "/v1/responses/{id}",
            get(crate::responses::retrieve).delete(crate::responses::delete),
        )
        .route("/v1/load_lora_adapter", post(load_lora))
        .route("/v1/unload_lora_adapter", post(unload_lora))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/tokenize", post(tokenize))
        .route("/v1/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/metrics", get(crate::metrics::metrics))
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

/// Routes outside `/v1` that change the server: they need the key as much as `/v1` does.
const ADMIN_PATHS: &[&str] = &["/sleep", "/wake_up", "/pause", "/resume"];

/// Whether `path` needs the API key when one is set: everything under `/v1` (as vLLM) and the
/// admin routes; reads (`/health`, `/metrics`, `/is_sleeping`, ...) stay open for probes.
pub(crate) fn needs_key(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/") || ADMIN_PATHS.contains(&path)
}

/// Compares keys in time independent of where they differ, so response timing does not
/// reveal how much of a guess was right.
fn same_key(given: &str, key: &str) -> bool {
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &k) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ k);
    }
    diff == 0
}

async fn auth(State(st): State<S>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        if needs_key(req.uri().path()) {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|k| same_key(k.trim(), key));
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

fn join_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

// ---------------------------------------------------------------------------------------------
// generation

async fn chat(State(st): State<S>, JsonBody(req): JsonBody<ChatRequest>) -> ApiResult<Response> {
    let (v, opts) = validate::chat(&st, req).await?;
    let mut run = Run::start(&st, &v)?;
    let id = format!("chatcmpl-{}", rand_id());
    let created = now();
    if let Some(s) = v.stream {
        let r = ChatRenderer::new(&st, &v, opts, &run, id, created);
        return Ok(sse(run, r, s));
    }
    run.collect().await?;
    Ok(Json(render::chat_response(&st, &v, &opts, &run, id, created)).into_response())
}

async fn completions(
    State(st): State<S>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> ApiResult<Response> {
    let (v, opts) = validate::completion(&st, req).await?;
    let mut run = Run::start(&st, &v)?;
    let id = format!("cmpl-{}", rand_id());
    let created = now();
    if let Some(s) = v.stream {
        let r = CompletionRenderer::new(&st, &v, &opts, &run, id, created);
        return Ok(sse(run, r, s));
    }
    run.collect().await?;
    Ok(Json(render::completion_response(
        &st, &v, &opts, &run, id, created,
    )?)
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// models, tokenizer, misc

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn version() -> Json<VersionResponse> {
    Json(VersionResponse {
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn models(State(st): State<S>) -> Json<ModelList> {
    let created = st.created;
    let max_len = st.engine.max_model_len();
    let perm = |name: &str| {
        vec![ModelPermission {
            id: format!("modelperm-{}", rand_id()),
            object: "model_permission",
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: None,
            is_blocking: false,
            _model: name.to_string(),
        }]
    };
    let card = |id: &str, root: String, parent: Option<String>| ModelCard {
        id: id.to_string(),
        object: "model",
        created,
        owned_by: "vllm",
        root,
        parent,
        max_model_len: max_len,
        permission: perm(id),
    };
    let mut data: Vec<ModelCard> = st
        .served_names
        .iter()
        .map(|n| card(n, st.model_root.clone(), None))
        .collect();
    for a in st.engine.adapters() {
        let root = a
            .path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| a.name.clone());
        data.push(card(&a.name, root, Some(st.served_names[0].clone())));
    }
    Json(ModelList {
        object: "list",
        data,
    })
}

async fn tokenize(
    State(st): State<S>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> ApiResult<Json<TokenizeResponse>> {
    pick_model(&st, req.model.as_deref()).await?;
    let st2 = st.clone();
    let return_strs = req.return_token_strs.unwrap_or(false);
    let tokens = tokio::task::spawn_blocking(move || -> ApiResult<Vec<u32>> {
        if let Some(messages) = &req.messages {
            let text = validate::render_chat(
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
    .map_err(join_failed)??;
    let token_strs = return_strs.then(|| {
        tokens
            .iter()
            .map(|&t| st.tokenizer.id_to_token(t))
            .collect()
    });
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: st.engine.max_model_len(),
        tokens,
        token_strs,
    }))
}

async fn detokenize(
    State(st): State<S>,
    JsonBody(req): JsonBody<DetokenizeRequest>,
) -> ApiResult<Json<DetokenizeResponse>> {
    pick_model(&st, req.model.as_deref()).await?;
    let vocab = st
        .engine
        .model_config()
        .vocab_size
        .max(st.tokenizer.vocab_size());
    let ids = validate::token_ids("tokens", &req.tokens, vocab)?;
    let prompt = st.tokenizer.decode(&ids, false)?;
    Ok(Json(DetokenizeResponse { prompt }))
}

// ---------------------------------------------------------------------------------------------
// sleep

fn require_sleep_mode(st: &AppState) -> ApiResult<()> {
    if st.enable_sleep_mode {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "sleep mode is not enabled; start the server with --enable-sleep-mode",
        ))
    }
}

async fn sleep(State(st): State<S>, Query(q): Query<SleepQuery>) -> ApiResult<StatusCode> {
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
        .map_err(join_failed)??;
    tracing::info!(
        "sleep level {}: RSS {:.1} MiB -> {:.1} MiB",
        r.level,
        r.rss_before as f64 / 1048576.0,
        r.rss_after as f64 / 1048576.0
    );
    Ok(StatusCode::OK)
}

async fn wake_up(State(st): State<S>) -> ApiResult<StatusCode> {
    require_sleep_mode(&st)?;
    let engine = st.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.wake_up())
        .await
        .map_err(join_failed)??;
    tracing::info!(
        "wake up: RSS {:.1} MiB -> {:.1} MiB",
        r.rss_before as f64 / 1048576.0,
        r.rss_after as f64 / 1048576.0
    );
    Ok(StatusCode::OK)
}

async fn is_sleeping(State(st): State<S>) -> Json<IsSleeping> {
    Json(IsSleeping {
        is_sleeping: st.engine.sleep_level() != 0,
    })
}

// ---------------------------------------------------------------------------------------------
// pause

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
/// deprecated `wait_for_inflight_requests=true` means `wait`; `clear_cache` (default true, as
/// vLLM) empties the prefix cache once the pause holds.
async fn pause(
    State(st): State<S>,
    Query(q): Query<PauseQuery>,
) -> ApiResult<Json<StatusResponse>> {
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
    let clear_cache = query_bool("clear_cache", q.clear_cache.as_deref(), true)?;
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || {
        engine.pause(mode)?;
        if clear_cache {
            engine.reset_prefix_cache()?;
        }
        Ok::<_, claas_engine::EngineError>(())
    })
    .await
    .map_err(join_failed)??;
    tracing::info!("generation paused ({mode:?})");
    Ok(Json(StatusResponse { status: "paused" }))
}

/// vLLM's `POST /resume`.
async fn resume(State(st): State<S>) -> ApiResult<Json<StatusResponse>> {
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || engine.resume())
        .await
        .map_err(join_failed)??;
    tracing::info!("generation resumed");
    Ok(Json(StatusResponse { status: "resumed" }))
}

async fn is_paused(State(st): State<S>) -> Json<IsPaused> {
    Json(IsPaused {
        is_paused: st.engine.is_paused(),
    })
}

// ---------------------------------------------------------------------------------------------
// adapters

async fn load_lora(
    State(st): State<S>,
    JsonBody(req): JsonBody<LoadLoraRequest>,
) -> ApiResult<Response> {
    let (Some(name), Some(path)) = (
        req.lora_name.filter(|s| !s.is_empty()),
        req.lora_path.filter(|s| !s.is_empty()),
    ) else {
        return Err(ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.",
        ));
    };
    validate::lora_name(&name)?;
    if st.is_base(&name) {
        return Err(ApiError::bad_param(
            "lora_name",
            format!("The lora adapter name '{name}' is the base model's name."),
        ));
    }
    if path.contains('\0') {
        return Err(ApiError::bad_param(
            "lora_path",
            "lora_path must not contain NUL",
        ));
    }
    // Canonicalizing touches the file system: off the async threads, with the load.
    let engine = st.engine.clone();
    let root = st.lora_root.clone();
    let n2 = name.clone();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        let canon = lora_path_under_root(&n2, &path, root.as_deref())?;
        engine
            .load_adapter(&n2, &canon)
            .map(drop)
            .map_err(|e| ApiError::bad_request(format!("Loading lora {n2} failed: {e}")))
    })
    .await
    .map_err(join_failed)??;
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' added successfully."),
    )
        .into_response())
}

/// `path` resolved through every link, and refused (403) unless it lies under `root`.
fn lora_path_under_root(
    name: &str,
    path: &str,
    root: Option<&std::path::Path>,
) -> ApiResult<std::path::PathBuf> {
    let canon = std::fs::canonicalize(path).map_err(|e| {
        ApiError::bad_param(
            "lora_path",
            format!("Loading lora {name} failed: {path}: {e}"),
        )
    })?;
    if let Some(root) = root {
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
    Ok(canon)
}

async fn unload_lora(
    State(st): State<S>,
    JsonBody(req): JsonBody<UnloadLoraRequest>,
) -> ApiResult<Response> {
    let Some(name) = req.lora_name.filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad_request(
            "'lora_name' needs to be provided to unload a LoRA adapter.",
        ));
    };
    let engine = st.engine.clone();
    let n2 = name.clone();
    let removed = tokio::task::spawn_blocking(move || engine.unload_adapter(&n2))
        .await
        .map_err(join_failed)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key("sekret", "sekret"));
        for other in ["", "s", "sekre", "sekrets", "Sekret", "sekreT"] {
            assert!(!same_key(other, "sekret"), "{other}");
        }
    }

    #[test]
    fn key_covers_v1_and_admin_routes_only() {
        for p in [
            "/v1/models",
            "/v1/load_lora_adapter",
            "/sleep",
            "/wake_up",
            "/pause",
            "/resume",
        ] {
            assert!(needs_key(p), "{p}");
        }
        for p in [
            "/health",
            "/metrics",
            "/is_sleeping",
            "/is_paused",
            "/version",
            "/tokenize",
            "/v1x",
        ] {
            assert!(!needs_key(p), "{p}");
        }
    }
}
