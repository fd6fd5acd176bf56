//! Issue 12 (hardening): init never silently replaces an adapter, `/v1/distill` keeps served
//! models and disk bounded, oversized bodies are refused before any work, log-probabilities
//! are at most 0, every 422 has one shape, and a server without sleep mode is trained around.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

fn init_body(id: &str) -> Value {
    json!({"lora_id": id, "base_model": "builtin:tiny", "lora_r": 4, "lora_alpha": 8})
}

#[tokio::test]
async fn init_of_an_existing_adapter_is_409_unless_overwrite_which_keeps_a_version() {
    let api = start_api(None, None, |_| {}).await;
    let id = init_adapter(&api, "u/h").await;
    let weights = api.root().join(&id).join("adapter_model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let before = tree(&api.root());
    let (s, b) = api.post("/v1/lora/init", init_body("u/h")).await;
    assert_eq!(s, 409, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("overwrite"), "{b}");
    assert_eq!(tree(&api.root()), before, "a refused init wrote something");
    let mut body = init_body("u/h");
    body["overwrite"] = json!(false);
    assert_eq!(api.post("/v1/lora/init", body.clone()).await.0, 409);
    body["overwrite"] = json!("yes");
    assert_eq!(api.post("/v1/lora/init", body.clone()).await.0, 422);

    body["overwrite"] = json!(true);
    let (s, b) = api.post("/v1/lora/init", body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["lora_id"], id);
    assert_ne!(std::fs::read(&weights).unwrap(), original, "fresh weights");
    let (s, v) = api.get(&format!("/v1/lora/versions?lora_id={id}")).await;
    assert_eq!(s, 200, "{v}");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{v}");
    assert_eq!(v["current"], 1);
    // The old adapter can be rolled back to.
    let (s, b) = api
        .post("/v1/lora/rollback", json!({"lora_id": id, "version": 0}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(std::fs::read(&weights).unwrap(), original);

    // The OpenAPI document describes the field.
    let (_, doc) = api.get("/openapi.json").await;
    let field = &doc["components"]["schemas"]["LoraInitRequest"]["properties"]["overwrite"];
    assert_eq!(field["type"], "boolean", "{field}");
    assert_eq!(field["default"], false, "{field}");
}

/// 30 distill calls with `CLAAS_KEEP_VERSIONS=3`: the inference server serves a bounded
/// number of models and the LoRA root keeps a bounded number of distill results.
#[tokio::test]
async fn distill_keeps_served_models_and_disk_bounded() {
    let (vurl, fake) = start_fake_vllm().await;
    let engine = CopyEngine::default();
    let keep = 3;
    let api = start_api(Some(&vurl), Some(Arc::new(engine.clone())), |c| {
        c.keep_versions = keep;
    })
    .await;
    init_adapter(&api, "u/d").await;
    let mut max_loaded = 0;
    let mut last = String::new();
    for _ in 0..30 {
        let (s, b) = api.post("/v1/distill", feedback_body("u/d-latest")).await;
        assert_eq!(s, 200, "{b}");
        last = b["lora_id"].as_str().unwrap().to_string();
        max_loaded = max_loaded.max(fake.loaded.lock().unwrap().len());
    }
    assert_eq!(engine.calls.load(Ordering::SeqCst), 30);
    // u-d-init, u-d-latest and the newest result by its own name.
    assert!(max_loaded <= 3, "served models grew to {max_loaded}");
    let loaded = fake.loaded.lock().unwrap().clone();
    assert!(loaded.contains("u-d-latest"), "{loaded:?}");
    assert!(
        loaded.contains(&claas_api::normalize_adapter_name(&last)),
        "{loaded:?}"
    );
    let saves = api.state.store().stamped_saves("u/d").unwrap();
    assert_eq!(saves.len(), keep, "{saves:?}");
    assert_eq!(saves.last(), Some(&last));
    let (_, list) = api.get("/v1/lora?prefix=u/").await;
    // The results kept, u/d-init and the alias u/d-latest.
    assert_eq!(list["loras"].as_array().unwrap().len(), keep + 2, "{list}");
    assert_eq!(api.state.store().resolve("u/d-latest").unwrap().id, last);
}

/// A body over the limit is refused with a JSON 413 before it is parsed: nothing is written,
/// not even a feedback log. One under the limit but refused (unknown adapter) is logged with a
/// bounded excerpt only.
#[tokio::test]
async fn oversized_bodies_are_413_json_and_refused_ones_are_logged_as_excerpts() {
    let api = start_api(None, Some(Arc::new(CopyEngine::default())), |_| {}).await;
    let big = "x".repeat(10 << 20);
    let before = tree(api.tmp.path());
    for path in [
        "/v1/feedback",
        "/v1/distill",
        "/v1/score",
        "/v1/lora/init",
        "/v1/chat/completions",
    ] {
        let body = json!({"lora_id": "u/none", "prompt": "p", "response": big, "feedback": "f"});
        let (s, b) = api.post(path, body).await;
        assert_eq!(s, 413, "{path}: {b}");
        assert!(
            b["detail"].as_str().unwrap().contains("limit"),
            "{path}: {b}"
        );
    }
    // Without a declared length (chunked), cut off at the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 1 << 20])).collect();
    let r = api
        .http
        .post(format!("{}/v1/feedback", api.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let b: Value = r.json().await.unwrap();
    assert!(b["detail"].is_string(), "{b}");
    assert_eq!(
        tree(api.tmp.path()),
        before,
        "a refused body wrote something"
    );

    // Under a raised limit, a 12 MB feedback to an unknown adapter: 404, and its log is small.
    let roomy = start_api(None, Some(Arc::new(CopyEngine::default())), |c| {
        c.max_body_bytes = 32 << 20;
    })
    .await;
    let mut body = feedback_body("u/none");
    body["response"] = json!("y".repeat(12 << 20));
    let (s, b) = roomy.post("/v1/feedback", body).await;
    // The text limit (1 Mi characters) answers first.
    assert_eq!(s, 422, "{}", &b.to_string()[..200.min(b.to_string().len())]);
    assert_eq!(b["detail"][0]["type"], "string_too_long");
    assert!(log_files(&roomy.logs()).is_empty());
    let mut body = feedback_body("u/none");
    body["response"] = json!("y".repeat(1 << 20));
    body["feedback"] = json!("z".repeat(1 << 20));
    let (s, b) = roomy.post("/v1/feedback", body).await;
    assert_eq!(s, 404, "{b}");
    let logs = log_files(&roomy.logs());
    assert_eq!(logs.len(), 1);
    let size = std::fs::metadata(&logs[0]).unwrap().len();
    assert!(
        size < 64 * 1024,
        "the log of a refused request is {size} bytes"
    );
    let rec = read_json(&logs[0]);
    assert_eq!(rec["http_status"], 404);
    assert!(rec["request"]["response"]
        .as_str()
        .unwrap()
        .starts_with("yyyy"));
}

#[tokio::test]
async fn positive_rollout_logprobs_are_422() {
    let engine = CopyEngine::default();
    let api = start_api(None, Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/p").await;
    let before = tree(&api.root());
    let mut body = feedback_body(&id);
    body["rollout_logprobs"] = json!([-0.5, 0.25, 0.0]);
    for path in ["/v1/feedback", "/v1/distill"] {
        let (s, b) = api.post(path, body.clone()).await;
        assert_eq!(s, 422, "{b}");
        let d = b["detail"].as_array().unwrap();
        assert_eq!(d.len(), 1, "{b}");
        assert_eq!(d[0]["loc"], json!(["body", "rollout_logprobs", 1]));
        assert_eq!(d[0]["type"], "less_than_equal");
    }
    assert_eq!(engine.calls.load(Ordering::SeqCst), 0);
    assert_eq!(tree(&api.root()), before);
}

/// A 422 found after parsing (the trainer refusing an input) has the list form too.
#[tokio::test]
async fn every_422_is_a_list_of_issues() {
    let engine = CopyEngine::default();
    engine.fail_bad_input.store(true, Ordering::SeqCst);
    let api = start_api(None, Some(Arc::new(engine)), |_| {}).await;
    let id = init_adapter(&api, "u/q").await;
    for path in ["/v1/feedback", "/v1/distill"] {
        let (s, b) = api.post(path, feedback_body(&id)).await;
        assert_eq!(s, 422, "{b}");
        let issue = &b["detail"][0];
        assert_eq!(issue["loc"], json!(["body"]), "{b}");
        assert_eq!(issue["type"], "value_error", "{b}");
        assert!(issue["msg"].as_str().unwrap().contains("rollout_logprobs"));
    }
    // teacher_mode remote without a teacher.
    let mut body = feedback_body(&id);
    body["training"]["teacher_mode"] = json!("remote");
    let (s, b) = api.post("/v1/feedback", body).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["detail"].is_array(), "{b}");
}

/// An inference server without sleep mode: the first feedback finds out (one `/sleep` call),
/// every feedback trains with the server awake, none fails.
#[tokio::test]
async fn a_server_without_sleep_mode_is_trained_around() {
    let (vurl, fake) = start_fake_vllm().await;
    fake.no_sleep_mode.store(true, Ordering::SeqCst);
    let engine = CopyEngine::default();
    let api = start_api(Some(&vurl), Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/s").await;
    fake.calls.lock().unwrap().clear();
    for _ in 0..3 {
        let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["vllm"], json!({"slept": false, "woke": false}));
    }
    assert_eq!(engine.calls.load(Ordering::SeqCst), 3);
    let actions = fake.actions();
    assert_eq!(
        actions.iter().filter(|a| a.starts_with("sleep")).count(),
        1,
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| a == "wake_up"), "{actions:?}");
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("load u-s-init "))
            .count(),
        3,
        "{actions:?}"
    );
}

/// When the trainer's base model failed to load, requests that need it say why (503).
#[tokio::test]
async fn a_failed_base_model_load_is_503_naming_the_cause() {
    let api = start_api(None, None, |_| {}).await;
    let id = init_adapter(&api, "u/n").await;
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
    assert_eq!(s, 503, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("still loading"),
        "{b}"
    );
    api.state
        .set_engine_error("Qwen/Qwen3-8B: the hub is unreachable: connection refused");
    for path in ["/v1/feedback", "/v1/distill"] {
        let (s, b) = api.post(path, feedback_body(&id)).await;
        assert_eq!(s, 503, "{b}");
        let d = b["detail"].as_str().unwrap();
        assert!(
            d.contains("loading the base model failed") && d.contains("connection refused"),
            "{d}"
        );
    }
    let (_, h) = api.get("/v1/health").await;
    assert!(
        h["worker"]["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{h}"
    );
}
