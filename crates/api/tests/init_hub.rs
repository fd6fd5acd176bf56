//! `/v1/lora/init` of a hub model whose config cannot be downloaded: a 502 naming the hub,
//! not a 500, and nothing written. (Its own test binary: it points the process's Hugging Face
//! settings at a closed port.)

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn init_with_an_unreachable_hub_is_502() {
    let hf = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::env::set_var("HF_HOME", hf.path());
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{port}"));
    std::env::remove_var("HF_HUB_OFFLINE");
    let api = start_api(None, None, |c| {
        c.allowed_init_base_models.push("acme/Qwen3-Missing".into());
    })
    .await;
    let before = tree(&api.root());
    let (s, b) = api
        .post(
            "/v1/lora/init",
            json!({"lora_id": "u/hub", "base_model": "acme/Qwen3-Missing"}),
        )
        .await;
    assert_eq!(s, 502, "{b}");
    let d = b["detail"].as_str().unwrap();
    assert!(d.contains("acme/Qwen3-Missing") && d.contains("hub"), "{d}");
    assert_eq!(tree(&api.root()), before);
}
