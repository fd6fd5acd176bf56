//! HTTP handlers.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use claas_store::{validate_id, StoreError, LATEST_SUFFIX};
use serde_json::{json, Value};

use crate::backend::normalize_adapter_name;
use crate::body::LimitedBody;
use crate::engine::EngineError;
use crate::error::ApiError;
use crate::init::{build_adapter, model_config_json};
use crate::lifecycle;
use crate::proxy::{self, Endpoint};
use crate::state::ApiState;
use crate::types::{parse_feedback, parse_init, parse_rollback, parse_score, ScoreInput};
use crate::validate::parse_json;

/// API name reported by `GET /`.
pub const API_NAME: &str = "CLaaS API";
/// API version reported by `GET /` and the OpenAPI document (the reference's).
pub const API_VERSION: &str = "0.1.0";
/// Description reported by `GET /`.
pub const API_DESCRIPTION: &str = "Continual Learning as a Service - SDPO-style distillation";

/// Every `(method, path)` [`router`] serves (with the merged dashboard routes). The OpenAPI
/// document must describe exactly these; a test walks both.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/v1/health"),
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/v1/lora/init"),
    ("GET", "/v1/lora"),
    ("DELETE", "/v1/lora"),
    ("GET", "/v1/lora/export"),
    ("GET", "/v1/lora/versions"),
    ("POST", "/v1/lora/rollback"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("POST", "/v1/distill"),
    ("POST", "/v1/feedback"),
    ("POST", "/v1/score"),
    ("GET", "/metrics"),
    ("GET", "/v1/dashboard"),
    ("GET", "/v1/eval"),
    ("GET", "/v1/eval/plot"),
];

/// The CLaaS API router. The binary only binds it: `claas_listen::serve(listener, router(state), ..)`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/v1/health", get(health))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/v1/lora/init", post(init_lora))
        .route("/v1/lora", get(list_loras).delete(delete_lora))
        .route("/v1/lora/export", get(export_lora))
        .route("/v1/lora/versions", get(lora_versions))
        .route("/v1/lora/rollback", post(rollback))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/distill", post(distill))
        .route("/v1/feedback", post(feedback))
        .route("/v1/score", post(score))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_key,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}

#[utoipa::path(get, path = "/", tag = "meta", summary = "API info",
    responses((status = 200, description = "Successful Response", body = crate::openapi::ApiInfo)))]
async fn root() -> Json<Value> {
    Json(json!({
        "name": API_NAME,
        "version": API_VERSION,
        "description": API_DESCRIPTION,
        "docs": "/docs",
    }))
}

#[utoipa::path(get, path = "/v1/health", tag = "meta",
    summary = "Health of the API, trainer and inference server",
    responses((status = 200, description = "status is healthy or degraded",
        body = crate::openapi::HealthResponse)))]
async fn health(State(st): State<ApiState>) -> Json<Value> {
    let inference = st.backend().health().await;
    let engine = st.engine();
    let worker = match &engine {
        Some(e) => json!({"status": "healthy", "error": null, "model": e.base_model_id()}),
        None => match st.engine_error() {
            Some(cause) => {
                json!({"status": "unhealthy", "error": format!("loading the base model failed: {cause}")})
            }
            None => json!({"status": "unavailable", "error": "SDPO trainer not loaded"}),
        },
    };
    let status = if engine.is_some() && inference.status != crate::backend::HealthStatus::Unhealthy
    {
        "healthy"
    } else {
        "degraded"
    };
    Json(json!({
        "status": status,
        "worker": worker,
        // Self-distillation: the teacher is the same base model as the worker.
        "teacher": worker,
        "inference": inference,
        "base_model": st.config().base_model_id,
    }))
}

#[utoipa::path(get, path = "/openapi.json", tag = "meta", summary = "This document",
    responses((status = 200, description = "OpenAPI JSON", body = Object)))]
async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

#[utoipa::path(get, path = "/docs", tag = "meta", summary = "Interactive documentation (Swagger UI)",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
async fn docs() -> Html<&'static str> {
    Html(crate::openapi::DOCS_HTML)
}

#[utoipa::path(get, path = "/metrics", tag = "meta", summary = "Prometheus metrics",
    responses((status = 200, description = "Text exposition format 0.0.4",
        body = String, content_type = "text/plain")))]
async fn metrics(State(st): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics().render(),
    )
        .into_response()
}

/// Why `/v1/lora/init` failed, each with its own status.
#[derive(Debug, thiserror::Error)]
enum InitFailure {
    #[error("LoRA '{0}' already exists; send \"overwrite\": true to replace it (the old one is kept as a version)")]
    Exists(String),
    #[error(transparent)]
    Config(#[from] crate::init::InitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InitFailure {
    fn into_api(self) -> ApiError {
        match self {
            InitFailure::Exists(_) | InitFailure::Store(StoreError::AlreadyExists(_)) => {
                ApiError::Conflict(self.to_string())
            }
            e @ InitFailure::Store(StoreError::InvalidId { .. }) => ApiError::invalid(
                vec![json!("body"), json!("lora_id")],
                "value_error",
                format!("Value error, {e}"),
            ),
            // The base model's config could not be fetched: the hub (or the network) failed,
            // not this server.
            InitFailure::Config(e) if e.is_upstream() => {
                ApiError::BadGateway(format!("LoRA initialization failed: {e}"))
            }
            other => ApiError::Internal(format!("LoRA initialization failed: {other}")),
        }
    }
}

fn blocking_failed(what: &str, e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("{what}: {e}"))
}

#[utoipa::path(post, path = "/v1/lora/init", tag = "lora",
    summary = "Initialize a new LoRA adapter ({lora_id}-init, alias {lora_id}-latest)",
    request_body = crate::types::LoraInitRequest,
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Successful Response", body = crate::openapi::LoraInitResponse),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 403, description = "base_model not allowed", body = crate::openapi::HttpError),
        (status = 409, description = "The adapter exists (send overwrite: true), or it is busy (lock timeout)", body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error (nothing was written)",
            body = crate::openapi::HttpValidationError),
        (status = 500, description = "Initialization failed", body = crate::openapi::HttpError),
        (status = 502, description = "The base model's config.json could not be fetched from the hub", body = crate::openapi::HttpError),
    ))]
async fn init_lora(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_init(&parse_json(&body)?)?;
    let allowed = &st.config().allowed_init_base_models;
    if !allowed.contains(&req.base_model) {
        tracing::warn!(
            base_model = req.base_model,
            "rejected /v1/lora/init for disallowed base_model"
        );
        let mut list = allowed.clone();
        list.sort();
        return Err(ApiError::Forbidden(format!(
            "base_model '{}' is not allowed for initialization. Allowed models: {}",
            req.base_model,
            list.join(", ")
        )));
    }
    let base = req.lora_id.trim_end_matches('/');
    let base = base.strip_suffix(LATEST_SUFFIX).unwrap_or(base);
    let new_id = format!("{base}-init");
    validate_id(&new_id).map_err(|e| {
        ApiError::invalid(
            vec![json!("body"), json!("lora_id")],
            "value_error",
            format!("Value error, {e}"),
        )
    })?;
    let timeout = st.config().lock_timeout;
    let _guard = st
        .locks()
        .acquire(&new_id, timeout, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "Timed out waiting for lock on LoRA '{new_id}': another update of this adapter is in progress"
            ))
        })?;
    let engine_cfg = st
        .engine()
        .filter(|e| e.base_model_id() == req.base_model)
        .and_then(|e| e.base_model_config());
    let store = st.store().clone();
    let (new_id2, base2) = (new_id.clone(), base.to_string());
    let saved = tokio::task::spawn_blocking(move || {
        // Checked before the (possibly downloading) config fetch, and again by the store.
        if !req.overwrite && store.exists(&new_id2)? {
            return Err(InitFailure::Exists(new_id2));
        }
        let config = match engine_cfg {
            Some(c) => c,
            None => model_config_json(&req.base_model)?,
        };
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let adapter = build_adapter(&req, &config, seed)?;
        let meta = json!({"kind": "init", "lora_r": req.lora_r, "lora_alpha": req.lora_alpha});
        // An overwrite keeps the old adapter as a version (rollback brings it back); the new
        // one starts with a fresh optimizer (no optimizer state in its version).
        let info =
            store.create_versioned(&new_id2, meta, req.overwrite, |dir| adapter.save(dir))?;
        let alias = format!("{base2}{LATEST_SUFFIX}");
        store.set_alias(&alias, &info.id)?;
        Ok((info.id, Some(alias)))
    })
    .await
    .map_err(|e| blocking_failed("LoRA initialization failed", e))?
    .map_err(InitFailure::into_api)?;
    st.metrics().init_done();

    if st.backend().serves_adapters() {
        // Best effort, as the reference: the adapter exists even if the server is down.
        let mut names = vec![normalize_adapter_name(&saved.0)];
        if let Some(a) = &saved.1 {
            names.push(normalize_adapter_name(a));
        }
        if let Ok(dir) = st.store().adapter_dir(&saved.0) {
            for name in names {
                if let Err(e) = st.backend().reload_adapter(&name, &dir).await {
                    tracing::warn!(name, error = %e, "failed to load the new adapter into the inference server");
                }
            }
        }
    }
    Ok(Json(json!({ "lora_id": saved.0 })))
}

#[utoipa::path(get, path = "/v1/lora", tag = "lora", summary = "List LoRA adapters and aliases",
    params(("prefix" = Option<String>, Query, description = "Only ids starting with this")),
    responses(
        (status = 200, description = "Successful Response", body = crate::openapi::LoraListResponse),
        (status = 500, description = "Listing failed", body = crate::openapi::HttpError),
    ))]
async fn list_loras(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let store = st.store().clone();
    let loras = tokio::task::spawn_blocking(move || store.list(&prefix))
        .await
        .map_err(|e| blocking_failed("Failed to list LoRAs", e))?
        .map_err(|e| ApiError::Internal(format!("Failed to list LoRAs: {e}")))?;
    Ok(Json(json!({ "loras": loras })))
}

/// The reference's export filename: `/` -> `__`, only `[A-Za-z0-9._-]` kept.
fn safe_export_name(lora_id: &str) -> String {
    let base = lora_id.trim_matches('/').replace('/', "__");
    let safe: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if safe.is_empty() {
        "lora_export".into()
    } else {
        safe
    }
}

#[utoipa::path(get, path = "/v1/lora/export", tag = "lora",
    summary = "Download a LoRA adapter as a zip of its PEFT files",
    params(("lora_id" = String, Query, description = "Adapter id or alias")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Zip archive (Content-Disposition: attachment)",
            body = crate::openapi::Binary, content_type = "application/zip"),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 404, description = "Unknown adapter", body = crate::openapi::HttpError),
        (status = 403, description = "The adapter folder is a link out of the LoRA root", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error", body = crate::openapi::HttpValidationError),
        (status = 500, description = "Export failed", body = crate::openapi::HttpError),
    ))]
async fn export_lora(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let loc = vec![json!("query"), json!("lora_id")];
    let Some(id) = q.get("lora_id").cloned() else {
        return Err(ApiError::invalid(loc, "missing", "Field required"));
    };
    validate_id(&id)
        .map_err(|e| ApiError::invalid(loc, "value_error", format!("Value error, {e}")))?;
    let store = st.store().clone();
    let id2 = id.clone();
    let exported = tokio::task::spawn_blocking(move || {
        // An in-place save swaps the folder with two renames; a read that straddles them
        // fails with an I/O error, and a second read sees the new folder.
        let mut last = store.export_zip(&id2);
        for _ in 0..3 {
            match &last {
                Err(StoreError::Io { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    last = store.export_zip(&id2);
                }
                _ => break,
            }
        }
        last
    })
    .await
    .map_err(|e| blocking_failed("LoRA export failed", e))?;
    let (_, bytes) = exported.map_err(|e| match e {
        StoreError::NotFound(_) => ApiError::NotFound(format!("LoRA not found: {id}")),
        e @ StoreError::InvalidId { .. } => {
            ApiError::Forbidden(format!("LoRA export refused: {e}"))
        }
        other => ApiError::Internal(format!("LoRA export failed: {other}")),
    })?;
    let disposition = format!("attachment; filename=\"{}.zip\"", safe_export_name(&id));
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/feedback", tag = "training",
    summary = "Feedback-triggered in-place update: drain, sleep, SDPO step, atomic save, wake + reload",
    request_body = crate::types::FeedbackRequest,
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Successful Response", body = crate::types::FeedbackResponse),
        (status = 400, description = "Batch items disagree (lora_id or training)",
            body = crate::openapi::HttpError),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 404, description = "Unknown adapter", body = crate::openapi::HttpError),
        (status = 409, description = "Lock timeout", body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error (nothing was written), or an input the trainer cannot take",
            body = crate::openapi::Unprocessable),
        (status = 500, description = "A phase failed", body = crate::openapi::HttpError),
        (status = 502, description = "Inference server failed", body = crate::openapi::HttpError),
        (status = 503, description = "Inference server not idle / trainer not loaded",
            body = crate::openapi::HttpError),
    ))]
async fn feedback(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_feedback(&parse_json(&body)?)?;
    let resp = lifecycle::feedback(&st, req).await?;
    Ok(Json(
        serde_json::to_value(resp).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

#[utoipa::path(post, path = "/v1/distill", tag = "training",
    summary = "One SDPO step saved as a new version {id}-{timestamp}; {id}-latest moves to it",
    request_body = crate::types::FeedbackRequest,
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Successful Response", body = crate::types::DistillResponse),
        (status = 400, description = "Batch items disagree (lora_id or training)",
            body = crate::openapi::HttpError),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 404, description = "Unknown adapter", body = crate::openapi::HttpError),
        (status = 409, description = "Adapter busy", body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error (nothing was written), or an input the trainer cannot take",
            body = crate::openapi::Unprocessable),
        (status = 500, description = "Training failed", body = crate::openapi::HttpError),
        (status = 503, description = "Trainer not loaded", body = crate::openapi::HttpError),
    ))]
async fn distill(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_feedback(&parse_json(&body)?)?;
    let resp = lifecycle::distill(&st, req).await?;
    Ok(Json(
        serde_json::to_value(resp).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

fn query_lora_id(q: &HashMap<String, String>) -> Result<String, ApiError> {
    let loc = vec![json!("query"), json!("lora_id")];
    let Some(id) = q.get("lora_id").cloned() else {
        return Err(ApiError::invalid(loc, "missing", "Field required"));
    };
    validate_id(&id)
        .map_err(|e| ApiError::invalid(loc, "value_error", format!("Value error, {e}")))?;
    Ok(id)
}

/// `DELETE /v1/lora?lora_id=`: removes an adapter with its versions, state and aliases (or
/// just an alias); `{"deleted": false}` when there was nothing, as the reference.
#[utoipa::path(delete, path = "/v1/lora", tag = "lora",
    summary = "Delete an adapter with its versions and aliases (or only an alias)",
    params(("lora_id" = String, Query, description = "Adapter id or alias")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Successful Response", body = crate::openapi::LoraDeleteResponse),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 409, description = "Adapter busy", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error", body = crate::openapi::HttpValidationError),
        (status = 500, description = "Deletion failed", body = crate::openapi::HttpError),
    ))]
async fn delete_lora(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = query_lora_id(&q)?;
    // Not while an update of it runs (that update would write a version into a deleted tree).
    let key = match lifecycle::resolve(st.store(), &id).await {
        Ok(r) => r.id,
        Err(ApiError::NotFound(_)) => return Ok(Json(json!({"deleted": false}))),
        Err(e) => return Err(e),
    };
    let _guard = st
        .locks()
        .acquire(&key, st.config().lock_timeout, Some(st.store()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "Timed out waiting for lock on LoRA '{id}': an update of this adapter is in progress"
            ))
        })?;
    let store = st.store().clone();
    let deleted = tokio::task::spawn_blocking(move || store.delete(&id))
        .await
        .map_err(|e| blocking_failed("LoRA deletion failed", e))?
        .map_err(|e| ApiError::Internal(format!("LoRA deletion failed: {e}")))?;
    Ok(Json(json!({ "deleted": deleted })))
}

#[utoipa::path(get, path = "/v1/lora/versions", tag = "lora",
    summary = "Versions of an adapter (immutable {id}@v{N}), oldest first, with the current one marked",
    params(("lora_id" = String, Query, description = "Adapter id or alias")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Successful Response", body = crate::openapi::VersionsResponse),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 404, description = "Unknown adapter", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error", body = crate::openapi::HttpValidationError),
        (status = 500, description = "Listing failed", body = crate::openapi::HttpError),
    ))]
async fn lora_versions(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = query_lora_id(&q)?;
    Ok(Json(lifecycle::versions(&st, &id).await?))
}

#[utoipa::path(post, path = "/v1/lora/rollback", tag = "lora",
    summary = "Make an earlier version live again (weights and optimizer state) and hot-swap it into serving",
    request_body = crate::types::RollbackRequest,
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Successful Response", body = crate::openapi::RollbackResponse),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 404, description = "Unknown adapter or version", body = crate::openapi::HttpError),
        (status = 409, description = "Adapter busy", body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error", body = crate::openapi::HttpValidationError),
        (status = 500, description = "Rollback failed", body = crate::openapi::HttpError),
    ))]
async fn rollback(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_rollback(&parse_json(&body)?)?;
    Ok(Json(
        lifecycle::rollback(&st, &req.lora_id, req.version).await?,
    ))
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference",
    summary = "OpenAI chat completions, proxied to the inference server; records each completion's exact tokens for feedback",
    request_body(content = Object, description = "An OpenAI chat completion request"),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The inference server's answer (JSON, or an SSE stream with stream: true)",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Body is not a JSON object", body = crate::openapi::HttpValidationError),
        (status = 502, description = "Inference server failed", body = crate::openapi::HttpError),
        (status = 503, description = "No inference server configured", body = crate::openapi::HttpError),
        (status = "default", description = "Any other status: the inference server's own answer, passed through"),
    ))]
async fn chat_completions(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    proxy::complete(st, Endpoint::Chat, body).await
}

#[utoipa::path(post, path = "/v1/completions", tag = "inference",
    summary = "OpenAI text completions, proxied and recorded likewise",
    request_body(content = Object, description = "An OpenAI completion request"),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The inference server's answer (JSON, or an SSE stream with stream: true)",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Body is not a JSON object", body = crate::openapi::HttpValidationError),
        (status = 502, description = "Inference server failed", body = crate::openapi::HttpError),
        (status = 503, description = "No inference server configured", body = crate::openapi::HttpError),
        (status = "default", description = "Any other status: the inference server's own answer, passed through"),
    ))]
async fn completions(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    proxy::complete(st, Endpoint::Completions, body).await
}

#[utoipa::path(get, path = "/v1/models", tag = "inference", summary = "The inference server's models",
    responses(
        (status = 200, description = "OpenAI model list", body = Object),
        (status = 502, description = "Inference server failed", body = crate::openapi::HttpError),
        (status = 503, description = "No inference server configured", body = crate::openapi::HttpError),
        (status = "default", description = "Any other status: the inference server's own answer, passed through"),
    ))]
async fn models(State(st): State<ApiState>) -> Result<Response, ApiError> {
    proxy::models(st).await
}

#[utoipa::path(post, path = "/v1/score", tag = "training",
    summary = "Log-probability of a response under an adapter (or the base model)",
    request_body = crate::openapi::ScoreBody,
    responses(
        (status = 200, description = "Successful Response", body = crate::openapi::ScoreAnswer),
        (status = 404, description = "Unknown adapter or model", body = crate::openapi::HttpError),
        (status = 409, description = "Lock timeout (an update of the adapter is running)",
            body = crate::openapi::HttpError),
        (status = 413, description = "Body over the size limit (CLAAS_MAX_BODY_BYTES, 8 MiB)", body = crate::openapi::HttpError),
        (status = 422, description = "Validation Error, or an input the scorer cannot take",
            body = crate::openapi::Unprocessable),
        (status = 500, description = "Scoring failed", body = crate::openapi::HttpError),
        (status = 502, description = "Inference server failed", body = crate::openapi::HttpError),
        (status = 503, description = "No scorer available", body = crate::openapi::HttpError),
    ))]
async fn score(
    State(st): State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    match parse_score(&parse_json(&body)?)? {
        ScoreInput::Text(req) => score_text(st, req).await,
        ScoreInput::Chat(req) => score_chat(st, req).await,
    }
}

fn scoring_failed(e: EngineError) -> ApiError {
    match e {
        EngineError::BadInput(m) => ApiError::Unprocessable(m),
        EngineError::Internal(m) => ApiError::Internal(format!("Scoring failed: {m}")),
    }
}

/// Waits for a running update of the adapter to finish, so scores see it as saved.
async fn score_guard(st: &ApiState, id: &str) -> Result<crate::locks::AdapterGuard, ApiError> {
    st.locks()
        .acquire(id, st.config().lock_timeout, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "Timed out waiting for lock on LoRA '{id}': an update of this adapter is in progress"
            ))
        })
}

/// The reference HEAD's form: `{model, messages, completion}` answered with `logprobs`,
/// `tokens`, `prompt_tokens`, `completion_tokens` and `logprob_sum`.
async fn score_chat(
    st: ApiState,
    req: crate::types::ChatScoreRequest,
) -> Result<Json<Value>, ApiError> {
    let engine = st.engine().ok_or_else(|| match st.engine_error() {
        Some(_) => lifecycle::no_engine(&st),
        None => ApiError::Unavailable(
            "scoring chat messages needs the SDPO trainer, which is not loaded".into(),
        ),
    })?;
    let target = lifecycle::resolve_model(&st, &req.model).await?;
    let _guard = match &target {
        Some(r) => Some(score_guard(&st, &r.id).await?),
        None => None,
    };
    let dir = target.as_ref().map(|r| r.dir.clone());
    let (messages, completion) = (req.messages, req.completion);
    let out = tokio::task::spawn_blocking(move || {
        engine.score_chat(dir.as_deref(), &messages, &completion)
    })
    .await
    .map_err(|e| blocking_failed("Scoring failed", e))?
    .map_err(scoring_failed)?;
    let sum: f64 = out.logprobs.iter().map(|x| *x as f64).sum();
    Ok(Json(json!({
        "logprobs": out.logprobs,
        "tokens": out.tokens,
        "token_ids": out.token_ids,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.logprobs.len(),
        "logprob_sum": sum,
        "model": req.model,
        "resolved_lora_id": target.map(|r| r.id),
    })))
}

async fn score_text(
    st: ApiState,
    req: crate::types::ScoreRequest,
) -> Result<Json<Value>, ApiError> {
    let resolved = match &req.lora_id {
        Some(id) => Some(lifecycle::resolve(st.store(), id).await?),
        None => None,
    };
    let _guard = match &resolved {
        Some(r) => Some(score_guard(&st, &r.id).await?),
        None => None,
    };
    let (logprobs, tokens, token_ids, prompt_tokens, source) = if let Some(engine) = st.engine() {
        let dir = resolved.as_ref().map(|r| r.dir.clone());
        let (prompt, response) = (req.prompt.clone(), req.response.clone());
        let out =
            tokio::task::spawn_blocking(move || engine.score(dir.as_deref(), &prompt, &response))
                .await
                .map_err(|e| blocking_failed("Scoring failed", e))?
                .map_err(scoring_failed)?;
        (
            out.logprobs,
            out.tokens,
            Some(out.token_ids),
            Some(out.prompt_tokens),
            "trainer",
        )
    } else if st.backend().serves_adapters() {
        let name = match &req.lora_id {
            Some(id) => normalize_adapter_name(id),
            None => st.config().base_model_id.clone(),
        };
        let lp = st
            .backend()
            .rollout_logprobs(&req.prompt, &req.response, &name)
            .await
            .map_err(|e| ApiError::BadGateway(format!("Scoring failed: {e}")))?;
        (lp, Vec::new(), None, None, "inference_server")
    } else {
        return Err(ApiError::Unavailable(
            "scoring needs the SDPO trainer or an inference server; neither is available".into(),
        ));
    };
    let sum: f64 = logprobs.iter().map(|x| *x as f64).sum();
    Ok(Json(json!({
        "lora_id": req.lora_id,
        "resolved_lora_id": resolved.map(|r| r.id),
        "logprobs": logprobs,
        "tokens": tokens,
        "token_ids": token_ids,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": logprobs.len(),
        "logprob_sum": sum,
        "source": source,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(safe_export_name("user/coder-v1"), "user__coder-v1");
        assert_eq!(safe_export_name("/a b/"), "ab");
        assert_eq!(safe_export_name("//"), "lora_export");
    }
}
