//! The CLaaS API for tools that probe it over HTTP (`scripts/schemathesis.sh`): the real router
//! with the SDPO trainer on the built-in tiny model, orchestrating a real `claas serve` (same
//! model, LoRA and sleep mode on, sharing the LoRA root) on a second local port, on
//! `127.0.0.1:PORT` with a fresh LoRA root and log folder under `DIR`.
//!
//! `cargo run -p claas-api --example api_server -- PORT DIR`

use std::sync::Arc;

use claas_api::{ApiConfig, ApiState, HttpBackend, SdpoEngine};
use claas_store::LoraStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("usage: api_server PORT DIR")?.parse()?;
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: api_server PORT DIR")?);
    let serve_cfg = claas_serve::ServeConfig {
        model: "builtin:tiny".into(),
        enable_lora: true,
        enable_sleep_mode: true,
        lora_root: Some(dir.join("loras")),
        ..claas_serve::ServeConfig::default()
    };
    std::fs::create_dir_all(dir.join("loras"))?;
    let app = tokio::task::spawn_blocking(move || claas_serve::AppState::from_config(&serve_cfg))
        .await??;
    let serve_l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let serve_url = format!("http://{}", serve_l.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(serve_l, claas_serve::router(Arc::new(app))).await;
    });
    let config = ApiConfig {
        vllm_base_url: Some(serve_url.clone()),
        lora_root: dir.join("loras"),
        feedback_log_dir: dir.join("logs"),
        eval_dir: dir.join("evals"),
        base_model_id: "builtin:tiny".into(),
        allowed_init_base_models: vec!["builtin:tiny".into()],
        ..ApiConfig::default()
    };
    let store = LoraStore::open(&config.lora_root)?;
    let engine = tokio::task::spawn_blocking(|| SdpoEngine::load("builtin:tiny")).await??;
    let state = ApiState::new(
        config,
        store,
        Arc::new(HttpBackend::new(&serve_url, None)),
        Some(Arc::new(engine)),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("api_server on http://{}", listener.local_addr()?);
    axum::serve(listener, claas_api::router(state)).await?;
    Ok(())
}
