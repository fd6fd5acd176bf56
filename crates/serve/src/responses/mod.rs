//! The OpenAI Responses API (`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`) over
//! the chat path: `validate` turns the request into chat messages and one chat
//! [`ValidRequest`](crate::validate::ValidRequest), the engine run and the SSE driver are
//! chat's, `render` writes the Response object and its events, and `store` keeps finished
//! responses when `--enable-responses-store` is on (off by default, as vLLM).

mod protocol;
mod render;
pub(crate) mod store;
mod validate;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::error::ApiError;
use crate::stream::{sse, Run};
use crate::validate::JsonBody;
use crate::AppState;
use protocol::{Deleted, RetrieveQuery};
use render::ResponsesRenderer;

pub(crate) use store::ResponseStore;

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("Response with id '{id}' not found."),
        param: Some("response_id".into()),
    }
}

/// `POST /v1/responses`.
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let p = validate::prepare(&st, body).await?;
    let mut run = Run::start(&st, &p.valid)?;
    if let Some(s) = p.valid.stream {
        return Ok(sse(run, ResponsesRenderer::new(&st, p), s));
    }
    run.collect().await?;
    Ok(Json(render::response(&st, &p, &run)).into_response())
}

/// `GET /v1/responses/{id}`: a stored response (404 when the store is off, as vLLM's).
pub(crate) async fn retrieve(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<RetrieveQuery>,
) -> Result<Response, ApiError> {
    if q.stream.as_deref().is_some_and(|s| s != "false") {
        return Err(ApiError::bad_param(
            "stream",
            "`stream` is not supported by this server: responses are never generated in the background, so there is no stream to resume",
        ));
    }
    let found = st.responses.as_ref().and_then(|s| s.get(&id));
    match found {
        Some(s) => Ok(Json(s.response.clone()).into_response()),
        None => Err(not_found(&id)),
    }
}

/// `DELETE /v1/responses/{id}`.
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    if st.responses.as_ref().is_some_and(|s| s.remove(&id)) {
        Ok(Json(Deleted {
            id,
            object: "response.deleted",
            deleted: true,
        }))
    } else {
        Err(not_found(&id))
    }
}
