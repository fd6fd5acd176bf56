//! Adapter ids: what a safe id is, how servers name adapters, and `id@vN` references.

use crate::{Result, StoreError};

const MAX_ID_LEN: usize = 512;
const MAX_COMPONENT_LEN: usize = 128;
/// Most `/`-separated components an id may have. Listing walks no deeper, so an adapter that
/// could be created can always be listed.
pub(crate) const MAX_ID_DEPTH: usize = 16;

/// The name an inference server serves an adapter id or alias under, as the reference derives
/// it: every run of characters outside `[a-zA-Z0-9._-]` becomes `-`, leading and trailing `-`
/// are dropped (`openclaw/assistant-latest` -> `openclaw-assistant-latest`); empty gives `lora`.
pub fn served_name(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    let mut in_run = false;
    for ch in id.chars() {
        if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-') {
            out.push(ch);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "lora".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Splits a version reference `name@v{N}` into `(name, Some(N))`; anything else (no `@`, or a
/// suffix that is not `v` + decimal digits) comes back whole with `None`, so a malformed
/// suffix is later refused by [`validate_id`] (which never accepts `@`).
///
/// Works on ids, aliases and served names alike (`openclaw-assistant-latest@v3`).
pub fn split_version_ref(s: &str) -> (&str, Option<u64>) {
    if let Some((base, suffix)) = s.rsplit_once('@') {
        if let Some(digits) = suffix.strip_prefix('v') {
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = digits.parse::<u64>() {
                    return (base, Some(n));
                }
            }
        }
    }
    (s, None)
}

/// Checks that `id` is a safe relative adapter id and returns it without trailing slashes.
///
/// Allowed: `/`-separated components of `[A-Za-z0-9._-]`, none empty or starting with `.`
/// (which also excludes `.` and `..` and keeps the store's hidden folders unreachable).
pub fn validate_id(id: &str) -> Result<&str> {
    if id.contains('\0') {
        return Err(StoreError::invalid(id, "contains a NUL byte"));
    }
    if id.contains('\\') {
        return Err(StoreError::invalid(id, "contains a backslash"));
    }
    if id.starts_with('/') {
        return Err(StoreError::invalid(id, "absolute paths are not allowed"));
    }
    let trimmed = id.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(StoreError::invalid(id, "must not be empty"));
    }
    if trimmed.len() > MAX_ID_LEN {
        return Err(StoreError::invalid(
            id,
            format!("longer than {MAX_ID_LEN} bytes"),
        ));
    }
    if trimmed.split('/').count() > MAX_ID_DEPTH {
        return Err(StoreError::invalid(
            id,
            format!("nested deeper than {MAX_ID_DEPTH} path components"),
        ));
    }
    for comp in trimmed.split('/') {
        if comp.is_empty() {
            return Err(StoreError::invalid(id, "contains an empty path component"));
        }
        if comp == ".." {
            return Err(StoreError::invalid(
                id,
                "path traversal ('..') is not allowed",
            ));
        }
        if comp.starts_with('.') {
            return Err(StoreError::invalid(
                id,
                "path components must not start with '.'",
            ));
        }
        if comp.len() > MAX_COMPONENT_LEN {
            return Err(StoreError::invalid(
                id,
                format!("a path component is longer than {MAX_COMPONENT_LEN} bytes"),
            ));
        }
        if let Some(c) = comp
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(StoreError::invalid(
                id,
                format!("character {c:?} is not allowed (use A-Z a-z 0-9 . _ - and '/')"),
            ));
        }
    }
    Ok(trimmed)
}
