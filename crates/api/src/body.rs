//! Request bodies with a size limit checked before anything is read or parsed: a declared
//! `Content-Length` over the limit is refused at once, and a chunked body is cut off as soon as
//! it passes the limit. Either way the answer is a 413 with the FastAPI-style JSON body
//! (axum's own limit answers in plain text, which no client of this API expects).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use futures::StreamExt;

use crate::error::ApiError;
use crate::state::ApiState;

/// Default body limit (`CLAAS_MAX_BODY_BYTES`): far above any conversation a served context
/// window can hold, far below what would make a parse or a log write expensive.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;

/// Longest text field (characters) a request may carry (prompt, response, feedback, ...);
/// checked while parsing, before anything is tokenized.
pub const MAX_TEXT_CHARS: usize = 1 << 20;

/// A request body no larger than [`crate::ApiConfig::max_body_bytes`].
pub struct LimitedBody(pub Bytes);

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "Request body is larger than the limit of {limit} bytes (CLAAS_MAX_BODY_BYTES)"
    ))
}

impl FromRequest<ApiState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        let limit = state.config().max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        // Read chunk by chunk so a body without a declared length stops at the limit.
        let mut stream = req.into_body().into_data_stream();
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!("Failed to read the request body: {e}"))
            })?;
            if out.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(LimitedBody(out.freeze()))
    }
}
