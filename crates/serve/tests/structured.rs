//! Structured output end to end: the real server on 127.0.0.1:0 over the random built-in
//! model, driven by the official `openai` Python client (`structured_client.py`).

use std::sync::Arc;

use claas_serve::{AppState, ServeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_structured_output() {
    let cfg = ServeConfig::default();
    let state = tokio::task::spawn_blocking(move || AppState::from_config(&cfg))
        .await
        .unwrap()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        claas_serve::serve_on(listener, Arc::new(state), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/structured_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&url)
        .output()
        .await
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "structured output script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ALL OK"), "{stdout}");
}
