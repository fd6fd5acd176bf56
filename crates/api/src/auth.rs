//! The optional API key (`CLAAS_API_KEY`): with one set, every route that writes (any method
//! but GET/HEAD, except `/v1/score`, a read the reference leaves open) or exposes
//! conversations (`/v1/lora/export`, `/v1/lora/versions`, the dashboard and eval pages)
//! needs it, as a bearer token or, for the dashboard in a browser, the `claas_api_key`
//! cookie. Without a key everything stays open, as in the reference.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::ApiState;

/// Name of the cookie the dashboard's key form sets.
pub const KEY_COOKIE: &str = "claas_api_key";

/// GET routes that expose conversations or adapters' training data.
const PROTECTED_READS: [&str; 5] = [
    "/v1/lora/export",
    "/v1/lora/versions",
    "/v1/dashboard",
    "/v1/eval",
    "/v1/eval/plot",
];

/// Whether `method path` needs the key.
pub fn is_protected(method: &Method, path: &str) -> bool {
    if method == Method::GET || method == Method::HEAD {
        PROTECTED_READS.contains(&path)
    } else {
        path != "/v1/score"
    }
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The key a request presents: the bearer token, else the dashboard cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(token.to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        // Only the separator's leading space goes: a value with trailing spaces is another key.
        .filter_map(|kv| kv.trim_start().split_once('='))
        .find(|(k, _)| *k == KEY_COOKIE)
        .map(|(_, v)| percent_decode(v))
}

/// Undoes the form's `encodeURIComponent` (`%XX` escapes; anything malformed stays as is).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The middleware.
pub async fn require_key(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(key) = st.config().api_key.as_deref() else {
        return next.run(req).await;
    };
    if !is_protected(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    if presented(req.headers()).is_some_and(|p| same(&p, key)) {
        return next.run(req).await;
    }
    let wants_html = req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    let mut resp = if wants_html {
        (StatusCode::UNAUTHORIZED, login_page()).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Invalid or missing API key: send Authorization: Bearer <CLAAS_API_KEY>"})),
        )
            .into_response()
    };
    if let Ok(v) = "Bearer".parse() {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Logs a warning when the API listens on `addr` beyond this machine (0.0.0.0, `::` or any
/// non-loopback address) with no `CLAAS_API_KEY`: then anyone who reaches the port can train,
/// roll back, delete and export adapters and read conversations. Returns whether it warned.
/// The binary calls it right after binding.
pub fn warn_if_open(addr: std::net::SocketAddr, config: &crate::ApiConfig) -> bool {
    let open = !addr.ip().is_loopback() && config.api_key.is_none();
    if open {
        tracing::warn!(
            %addr,
            "the API listens beyond this machine without CLAAS_API_KEY: anyone who can reach it can train, delete and export adapters and read conversations; set CLAAS_API_KEY or bind 127.0.0.1"
        );
    }
    open
}

/// The page a browser gets without the key: a form that stores it in the cookie and reloads.
pub fn login_page() -> axum::response::Html<String> {
    axum::response::Html(format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>CLaaS — API key</title>
<style>body{{font-family:system-ui,sans-serif;margin:4rem auto;max-width:28rem}}input{{width:100%;padding:.4rem}}</style></head>
<body><h1>API key required</h1><p>This page shows conversations. Enter the API key (<code>CLAAS_API_KEY</code>).</p>
<form id="key-form"><input id="key" type="password" autocomplete="current-password" autofocus><p><button type="submit">Continue</button></p></form>
<script>document.getElementById('key-form').addEventListener('submit',function(e){{e.preventDefault();
document.cookie='{KEY_COOKIE}='+encodeURIComponent(document.getElementById('key').value)+'; path=/; SameSite=Strict';location.reload();}});</script>
</body></html>"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_the_key() {
        assert!(is_protected(&Method::POST, "/v1/feedback"));
        assert!(is_protected(&Method::POST, "/v1/chat/completions"));
        assert!(is_protected(&Method::DELETE, "/v1/lora"));
        assert!(is_protected(&Method::GET, "/v1/dashboard"));
        assert!(is_protected(&Method::GET, "/v1/lora/export"));
        assert!(!is_protected(&Method::GET, "/v1/lora"));
        assert!(!is_protected(&Method::GET, "/v1/health"));
        assert!(!is_protected(&Method::POST, "/v1/score"));
        assert!(!is_protected(&Method::GET, "/metrics"));
    }

    #[test]
    fn open_binds_without_a_key_are_flagged() {
        let mut cfg = crate::ApiConfig::default();
        let any: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let any6: std::net::SocketAddr = "[::]:8080".parse().unwrap();
        let lan: std::net::SocketAddr = "192.168.1.5:8080".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(warn_if_open(any, &cfg) && warn_if_open(any6, &cfg) && warn_if_open(lan, &cfg));
        assert!(!warn_if_open(local, &cfg));
        cfg.api_key = Some("k".into());
        assert!(!warn_if_open(any, &cfg));
    }

    #[test]
    fn bearer_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::COOKIE, "a=b; claas_api_key=k2".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("k2"));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("k1"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        // The form stores the key with encodeURIComponent.
        h.remove(header::AUTHORIZATION);
        h.insert(
            header::COOKIE,
            "claas_api_key=a%2Bb%2F%3D%C3%A9".parse().unwrap(),
        );
        assert_eq!(presented(&h).as_deref(), Some("a+b/=é"));
        assert_eq!(percent_decode("100%"), "100%");
        // Trailing spaces are part of what was presented, so they never match the key.
        h.insert(header::COOKIE, "claas_api_key=k2 ; a=b".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("k2 "));
        h.insert(header::AUTHORIZATION, "Bearer  k1".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some(" k1"));
    }
}
