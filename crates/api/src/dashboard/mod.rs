//! Browser pages over what the API already keeps on disk: `/v1/dashboard` (adapters, their
//! versions with rollback, the feedback history with loss/KL charts) and `/v1/eval` (runs of
//! the eval harness with their summaries and plots).
//!
//! Server-rendered HTML with a little inline JS; no build step and no external assets, so the
//! pages work offline. Every string that comes from a log, a request or the eval folder is
//! user data and goes through [`page::esc`]. Pages carry a nonce-based CSP as a second line of
//! defence against an escaping mistake.

mod charts;
mod eval;
mod feedback;
mod page;

use std::collections::HashMap;

use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::error::{ApiError, ValidationIssue};
use crate::state::ApiState;

/// Upper bound of `per_page`.
pub const MAX_PER_PAGE: u64 = 200;
/// Default of `per_page`.
pub const DEFAULT_PER_PAGE: u64 = 20;

/// The dashboard routes (`/v1/dashboard`, `/v1/eval`, `/v1/eval/plot`), to be merged into the
/// API router (which applies the API-key middleware to them).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/dashboard", get(feedback::page))
        .route("/v1/eval", get(eval::page))
        .route("/v1/eval/plot", get(eval::plot))
}

/// Validated `page` / `per_page`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Paging {
    page: u64,
    per_page: u64,
}

/// Reads an integer query parameter in `[min, max]` with pydantic's error types and wording.
fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    default: u64,
    min: u64,
    max: Option<u64>,
    issues: &mut Vec<ValidationIssue>,
) -> u64 {
    let Some(raw) = q.get(name) else {
        return default;
    };
    let loc = vec![json!("query"), json!(name)];
    let Ok(n) = raw.trim().parse::<i64>() else {
        let mut i = ValidationIssue::new(
            loc,
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        );
        i.input = Some(Value::String(raw.clone()));
        issues.push(i);
        return default;
    };
    if n < min as i64 {
        let mut i = ValidationIssue::new(
            loc,
            "greater_than_equal",
            format!("Input should be greater than or equal to {min}"),
        );
        i.input = Some(Value::String(raw.clone()));
        i.ctx = Some(json!({ "ge": min }));
        issues.push(i);
        return default;
    }
    if let Some(max) = max.filter(|m| n as u64 > *m) {
        let mut i = ValidationIssue::new(
            loc,
            "less_than_equal",
            format!("Input should be less than or equal to {max}"),
        );
        i.input = Some(Value::String(raw.clone()));
        i.ctx = Some(json!({ "le": max }));
        issues.push(i);
        return default;
    }
    n as u64
}

fn paging(q: &HashMap<String, String>, issues: &mut Vec<ValidationIssue>) -> Paging {
    Paging {
        page: int_param(q, "page", 1, 1, None, issues),
        per_page: int_param(
            q,
            "per_page",
            DEFAULT_PER_PAGE,
            1,
            Some(MAX_PER_PAGE),
            issues,
        ),
    }
}

fn finish(issues: Vec<ValidationIssue>) -> Result<(), ApiError> {
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(issues))
    }
}

fn blocking_failed(what: &str, e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paging_bounds() {
        let mut issues = Vec::new();
        assert_eq!(
            paging(&q(&[]), &mut issues),
            Paging {
                page: 1,
                per_page: DEFAULT_PER_PAGE
            }
        );
        let p = paging(&q(&[("page", "3"), ("per_page", "200")]), &mut issues);
        assert_eq!((p.page, p.per_page), (3, 200));
        assert!(issues.is_empty());
        paging(&q(&[("page", "0"), ("per_page", "201")]), &mut issues);
        let kinds: Vec<&str> = issues.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(kinds, ["greater_than_equal", "less_than_equal"]);
        issues.clear();
        paging(&q(&[("per_page", "x")]), &mut issues);
        assert_eq!(issues[0].kind, "int_parsing");
        assert_eq!(issues[0].loc, vec![json!("query"), json!("per_page")]);
    }
}
