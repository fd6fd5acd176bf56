//! HTTP errors with FastAPI-shaped bodies (`{"detail": ...}`), as the reference returns them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

/// One entry of a FastAPI/pydantic validation error list (`ValidationError` in the OpenAPI
/// document).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = ValidationError)]
pub struct ValidationIssue {
    /// Where the bad value is, e.g. `["body", "training", "alpha"]`.
    #[schema(schema_with = crate::openapi::loc_schema)]
    pub loc: Vec<Value>,
    /// Human-readable message (pydantic's wording where one exists).
    pub msg: String,
    /// Machine-readable kind (pydantic's error type names).
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending input, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Constraint values, e.g. `{"ge": 1.0}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ctx: Option<Value>,
}

impl ValidationIssue {
    /// An issue without input/ctx.
    pub fn new(loc: Vec<Value>, kind: &str, msg: impl Into<String>) -> Self {
        ValidationIssue {
            loc,
            msg: msg.into(),
            kind: kind.to_string(),
            input: None,
            ctx: None,
        }
    }
}

/// Every failure a route can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422 with a pydantic-style list.
    #[error("request validation failed: {}", .0.iter().map(|i| format!("{}: {}", loc_string(&i.loc), i.msg)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<ValidationIssue>),
    /// 422 for a problem found after parsing (e.g. a prompt longer than the model's context);
    /// answered in the same list form as [`ApiError::Validation`], at `["body"]`, so every 422
    /// has one shape.
    #[error("{0}")]
    Unprocessable(String),
    /// 413: the body is over the route's limit (checked before it is read or parsed).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 400
    #[error("{0}")]
    BadRequest(String),
    /// 403
    #[error("{0}")]
    Forbidden(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409
    #[error("{0}")]
    Conflict(String),
    /// 500
    #[error("{0}")]
    Internal(String),
    /// 502
    #[error("{0}")]
    BadGateway(String),
    /// 503
    #[error("{0}")]
    Unavailable(String),
}

fn loc_string(loc: &[Value]) -> String {
    loc.iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A single-issue validation error.
    pub fn invalid(loc: Vec<Value>, kind: &str, msg: impl Into<String>) -> Self {
        ApiError::Validation(vec![ValidationIssue::new(loc, kind, msg)])
    }

    /// The `detail` value of the body.
    pub fn detail(&self) -> Value {
        match self {
            ApiError::Validation(issues) => json!(issues),
            ApiError::Unprocessable(m) => json!([ValidationIssue::new(
                vec![json!("body")],
                "value_error",
                m.clone()
            )]),
            other => Value::String(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        }
        (status, axum::Json(json!({ "detail": self.detail() }))).into_response()
    }
}
