//! The optional API key: with `CLAAS_API_KEY` set, every route that writes or exposes
//! conversations answers 401 without it (bearer or the dashboard's cookie) and works with it;
//! the reads the reference leaves open stay open. Nothing is written by a refused request.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const KEY: &str = "k-secret";

/// (method, path, body) of every route the key guards.
fn protected() -> Vec<(Method, &'static str, Option<Value>)> {
    let fb = feedback_body("u/a-latest");
    vec![
        (
            Method::POST,
            "/v1/lora/init",
            Some(json!({"lora_id": "u/b", "base_model": "builtin:tiny"})),
        ),
        (Method::POST, "/v1/feedback", Some(fb.clone())),
        (Method::POST, "/v1/distill", Some(fb)),
        (
            Method::POST,
            "/v1/lora/rollback",
            Some(json!({"lora_id": "u/a-latest", "version": 0})),
        ),
        (Method::DELETE, "/v1/lora?lora_id=u/other", None),
        (Method::GET, "/v1/lora/export?lora_id=u/a-latest", None),
        (Method::GET, "/v1/lora/versions?lora_id=u/a-latest", None),
        (
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"model": "m", "messages": []})),
        ),
        (
            Method::POST,
            "/v1/completions",
            Some(json!({"model": "m", "prompt": "x"})),
        ),
        (Method::GET, "/v1/dashboard", None),
        (Method::GET, "/v1/eval", None),
    ]
}

async fn call(api: &Api, m: &Method, path: &str, body: &Option<Value>, auth: Option<&str>) -> u16 {
    let mut rb = api.http.request(m.clone(), format!("{}{path}", api.url));
    if let Some(b) = body {
        rb = rb.json(b);
    }
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    rb.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_key_guards_writes_and_conversations() {
    let api = start_api(None, None, |c| {
        c.api_key = Some(KEY.into());
    })
    .await;
    init_adapter_with_key(&api, "u/a").await;
    let before = tree(&api.root());
    for (m, path, body) in protected() {
        for wrong in [None, Some("Bearer nope"), Some("Bearer k-secre"), Some(KEY)] {
            let s = call(&api, &m, path, &body, wrong).await;
            assert_eq!(s, 401, "{m} {path} with {wrong:?}");
        }
    }
    assert_eq!(
        tree(&api.root()),
        before,
        "a refused request wrote something"
    );
    for (m, path, body) in protected() {
        let s = call(&api, &m, path, &body, Some(&format!("Bearer {KEY}"))).await;
        assert_ne!(s, 401, "{m} {path} with the key");
    }
    // The dashboard's cookie works as well as the bearer.
    let r = api
        .http
        .get(format!("{}/v1/lora/versions?lora_id=u/a-latest", api.url))
        .header("Cookie", format!("x=1; claas_api_key={KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A browser without the key gets a page to enter it, not JSON.
    let r = api
        .http
        .get(format!("{}/v1/dashboard", api.url))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("claas_api_key"));
    // Reads the reference leaves open stay open.
    for path in [
        "/",
        "/v1/health",
        "/health",
        "/v1/lora",
        "/openapi.json",
        "/metrics",
    ] {
        assert_eq!(
            call(&api, &Method::GET, path, &None, None).await,
            200,
            "{path}"
        );
    }
    let s = call(
        &api,
        &Method::POST,
        "/v1/score",
        &Some(json!({"prompt": "a", "response": "b"})),
        None,
    )
    .await;
    assert_ne!(s, 401, "score is a read");
}

async fn init_adapter_with_key(api: &Api, id: &str) {
    let r = api
        .http
        .post(format!("{}/v1/lora/init", api.url))
        .bearer_auth(KEY)
        .json(&json!({"lora_id": id, "base_model": "builtin:tiny", "lora_r": 4, "lora_alpha": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The key is compared exactly: trailing (or leading) spaces, as a bearer token or in the
/// dashboard's cookie, make another key.
#[tokio::test]
async fn a_key_with_extra_spaces_is_refused() {
    let api = start_api(None, None, |c| {
        c.api_key = Some(KEY.into());
    })
    .await;
    let path = "/v1/lora/versions?lora_id=u/none";
    for cookie in [
        format!("claas_api_key={KEY} ; x=1"),
        format!("claas_api_key={KEY}%20"),
        format!("claas_api_key=%20{KEY}"),
    ] {
        let r = api
            .http
            .get(format!("{}{path}", api.url))
            .header("Cookie", cookie.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{cookie}");
    }
    // (A trailing space after a bearer token never reaches the server: HTTP drops whitespace
    // around header values, RFC 9110 section 5.5.)
    for bearer in [format!("Bearer  {KEY}"), format!("Bearer {KEY}x")] {
        let s = call(&api, &Method::GET, path, &None, Some(&bearer)).await;
        assert_eq!(s, 401, "{bearer:?}");
    }
    // The exact key still works (404: no such adapter, past the key check).
    let s = call(
        &api,
        &Method::GET,
        path,
        &None,
        Some(&format!("Bearer {KEY}")),
    )
    .await;
    assert_eq!(s, 404);
}
