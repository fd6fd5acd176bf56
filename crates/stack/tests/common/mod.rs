//! Shared helpers of the `claas up` tests: the stack on the built-in model with fresh folders
//! and ports 0, an HTTP client, and the served adapter's log-probabilities of a fixed text.
#![allow(dead_code)]

use std::time::Duration;

use claas_stack::{LocalStack, UpConfig};
use serde_json::{json, Value};

pub struct Stack {
    pub serve: String,
    pub api: String,
    inner: LocalStack,
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
        let mut cfg = UpConfig::local("builtin:tiny", root.clone(), logs.clone());
        adjust(&mut cfg);
        let inner = tokio::time::timeout(Duration::from_secs(120), LocalStack::start(cfg))
            .await
            .expect("stack did not come up")
            .expect("stack failed to start");
        Stack {
            serve: inner.serve.clone(),
            api: inner.api.clone(),
            inner,
            _dir: dir,
            root,
            logs,
        }
    }

    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(30), self.inner.stop())
            .await
            .expect("stack did not stop")
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
