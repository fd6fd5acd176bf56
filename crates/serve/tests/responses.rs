//! `/v1/responses` end to end: the real server on 127.0.0.1:0 over the tiny fixture model,
//! driven by the official `openai` Python client (store on, API key) and by reqwest for the
//! wire form and the store-off semantics.

mod common;

use claas_serve::ServeConfig;
use serde_json::{json, Value};

use common::{start, tiny_cfg as cfg, Server};

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(s: &Server, body: Value) -> (u16, Value) {
    send(
        reqwest::Client::new()
            .post(format!("{}/v1/responses", s.url))
            .json(&body),
    )
    .await
}

fn assert_openai_error(v: &Value, code: u16, param: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
    assert_eq!(e["code"], json!(code), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_responses() {
    let s = start(ServeConfig {
        api_key: Some("py-key".into()),
        enable_responses_store: true,
        ..cfg()
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/responses_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("{}/v1", s.url))
        .arg("py-key")
        .output()
        .await
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "responses client script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ALL OK"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_frames_and_store_off_semantics() {
    let s = start(cfg()).await;
    // The wire form: `event: <type>` then `data: <json>` with that type, no [DONE].
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", s.url))
        .json(&json!({"model": "tiny", "input": "Hello", "stream": true,
            "max_output_tokens": 3, "ignore_eos": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    assert!(!body.contains("[DONE]"), "{body}");
    let frames: Vec<&str> = body.trim_end().split("\n\n").collect();
    assert!(frames.len() >= 8, "{body}");
    for frame in &frames {
        let (ev, data) = frame.split_once('\n').unwrap();
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(ev.strip_prefix("event: ").unwrap(), data["type"], "{frame}");
    }
    let last: Value =
        serde_json::from_str(frames.last().unwrap().split_once("data: ").unwrap().1).unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["usage"]["output_tokens"], 3);

    // Store off (vLLM's default): `store: true` is accepted and nothing is kept.
    let (c, v) = post(
        &s,
        json!({"model": "tiny", "input": "Hello", "max_output_tokens": 2, "store": true,
            "frobnicate": 1}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["store"], false);
    let id = v["id"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let (c, e) = send(client.get(format!("{}/v1/responses/{id}", s.url))).await;
    assert_eq!(c, 404);
    assert_openai_error(&e, 404, Some("response_id"));
    let (c, e) = send(client.delete(format!("{}/v1/responses/{id}", s.url))).await;
    assert_eq!(c, 404);
    assert_openai_error(&e, 404, Some("response_id"));
    let (c, e) = post(
        &s,
        json!({"model": "tiny", "input": "again", "previous_response_id": id}),
    )
    .await;
    assert_eq!(c, 404);
    assert_openai_error(&e, 404, Some("previous_response_id"));

    // Bad input: 400 with the OpenAI error body naming the field, cheap refusals first.
    for (body, param) in [
        (json!({"model": "tiny"}), Some("input")),
        (json!({"model": "tiny", "input": []}), Some("input")),
        (
            json!({"model": "tiny", "input": "x", "temperature": "warm"}),
            Some("temperature"),
        ),
        (
            json!({"model": "tiny", "input": "x", "stream_options": {"include_obfuscation": false}}),
            Some("stream_options"),
        ),
        (
            json!({"model": "tiny", "input": "x", "prompt": {"id": "p"}}),
            Some("prompt"),
        ),
        (
            json!({"model": "tiny", "input": "x", "conversation": "c"}),
            Some("conversation"),
        ),
        (
            json!({"model": "tiny", "input": [{"type": "item_reference", "id": "x"}]}),
            Some("input[0].type"),
        ),
        (
            json!({"model": "tiny", "input": "x", "max_output_tokens": 0}),
            None,
        ),
        (json!([1, 2]), None),
    ] {
        let (c, e) = post(&s, body.clone()).await;
        assert_eq!(c, 400, "{body} -> {e}");
        assert_openai_error(&e, 400, param);
    }
    let (c, e) = post(&s, json!({"model": "nope", "input": "x"})).await;
    assert_eq!(c, 404);
    assert_openai_error(&e, 404, Some("model"));
    // Still serving.
    let (c, v) = post(
        &s,
        json!({"model": "tiny", "input": "Hello", "max_output_tokens": 2, "ignore_eos": true}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["usage"]["output_tokens"], 2);
    assert_eq!(v["status"], "incomplete");
}
