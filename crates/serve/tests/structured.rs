//! Structured output end to end: the real server on 127.0.0.1:0 over the random built-in
//! model, driven by the official `openai` Python client (`structured_client.py`).

mod common;

use claas_serve::ServeConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_structured_output() {
    let s = common::start(ServeConfig::default()).await;
    let url = format!("{}/v1", s.url);
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
