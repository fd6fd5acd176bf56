//! What every serve integration test needs: the real server on 127.0.0.1:0.
// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::sync::Arc;

use claas_serve::{AppState, ServeConfig};
use claas_testkit::fixtures::dir as fixtures;

/// A running server; dropping it stops the server.
pub struct Server {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    pub state: Arc<AppState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A config serving the tiny fixture model as `tiny`.
pub fn tiny_cfg() -> ServeConfig {
    ServeConfig {
        model: fixtures().join("tiny-qwen3").display().to_string(),
        served_model_name: vec!["tiny".into()],
        ..ServeConfig::default()
    }
}

/// Loads the model off the async threads and serves it on a fresh loopback port.
pub async fn start(cfg: ServeConfig) -> Server {
    let state = tokio::task::spawn_blocking(move || AppState::from_config(&cfg))
        .await
        .unwrap()
        .unwrap();
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        claas_serve::serve_on(listener, st, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server {
        url,
        state,
        _stop: tx,
    }
}
