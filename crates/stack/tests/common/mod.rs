//! Shared helpers of the `claas up` tests: the stack on the built-in model with fresh folders
//! and ports 0, an HTTP client, and the served adapter's log-probabilities of a fixed text.
#![allow(dead_code)]

use std::time::Duration;

use claas_stack::{up, UpConfig};
use serde_json::{json, Value};

pub struct Stack {
    pub serve: String,
    pub api: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), claas_stack::StackError>>,
    _dir: tempfile::TempDir,
    pub root: std::path::PathBuf,
    pub logs: std::path::PathBuf,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    /// `claas up` on the built-in model with fresh folders, ports 0 and `adjust` applied.
    pub async fn start_with(adjust: impl FnOnce(&mut UpConfig)) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("loras");
        let logs = dir.path().join("logs");
        let mut cfg = UpConfig {
            model: "builtin:tiny".into(),
            host: "127.0.0.1".into(),
            serve_port: 0,
            api_port: 0,
            api_key: Some("sk-local".into()),
            lora_root: root.clone(),
            feedback_log_dir: logs.clone(),
            lora_name: "openclaw/assistant".into(),
            max_model_len: None,
            telegram: None,
            openclaw: None,
            api: claas_api::ApiConfig::default(),
        };
        adjust(&mut cfg);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(up(
            cfg,
            async move {
                let _ = stop_rx.await;
            },
            move |a| {
                let _ = ready_tx.send(a);
            },
        ));
        let addrs = tokio::time::timeout(Duration::from_secs(120), ready_rx)
            .await
            .expect("stack did not come up")
            .expect("stack failed to start");
        Stack {
            serve: format!("http://{}", addrs.serve),
            api: format!("http://{}", addrs.api),
            stop: Some(stop_tx),
            task,
            _dir: dir,
            root,
            logs,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("stack did not stop")
            .unwrap()
            .unwrap();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Per-token log-probabilities of a fixed text under the served adapter.
pub async fn served_logprobs(c: &reqwest::Client, serve: &str) -> Vec<f64> {
    served_logprobs_of(c, serve, "openclaw-assistant-latest").await
}

/// Per-token log-probabilities of a fixed text under the served model `model`.
pub async fn served_logprobs_of(c: &reqwest::Client, serve: &str, model: &str) -> Vec<f64> {
    let r: Value = c
        .post(format!("{serve}/v1/completions"))
        .bearer_auth("sk-local")
        .json(&json!({
            "model": model,
            "prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello there",
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": 0,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = r["choices"][0]["prompt_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    entries
        .iter()
        .skip(1)
        .map(|e| {
            let first = e.as_object().unwrap().values().next().unwrap();
            first["logprob"].as_f64().unwrap()
        })
        .collect()
}
