//! Request bodies with a size limit checked before anything is read or parsed: a declared
//! `Content-Length` over the limit is refused at once, and a chunked body is cut off as soon as
//! it passes the limit, and the rest is drained so a client still sending sees the answer
//! ([`claas_listen::body`]). Either way the answer is a 413 with the FastAPI-style JSON body
//! (axum's own limit answers in plain text, which no client of this API expects).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};

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
        let declared = claas_listen::body::declared_length(req.headers());
        let body = claas_listen::body::read_limited(req.into_body(), declared, limit)
            .await
            .map_err(|e| match e {
                claas_listen::body::BodyError::TooLarge { limit } => too_large(limit),
                claas_listen::body::BodyError::Read(e) => {
                    ApiError::BadRequest(format!("Failed to read the request body: {e}"))
                }
            })?;
        Ok(LimitedBody(body))
    }
}
