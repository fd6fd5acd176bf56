//! A whole `claas up` in the test process (ports 0, fresh temp folders), as the stack's own
//! tests start it, for running the eval against the real API.
#![allow(dead_code)]

use std::time::Duration;

use claas_stack::{up, UpConfig};

pub const KEY: &str = "sk-local";

pub struct Stack {
    pub api: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), claas_stack::StackError>>,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// `claas up` on `model` (`builtin:tiny` or a model folder).
    pub async fn start(model: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let cfg = UpConfig {
            model: model.into(),
            host: "127.0.0.1".into(),
            serve_port: 0,
            api_port: 0,
            api_key: Some(KEY.into()),
            lora_root: dir.path().join("loras"),
            feedback_log_dir: dir.path().join("logs"),
            lora_name: "openclaw/assistant".into(),
            max_model_len: None,
            telegram: None,
            openclaw: None,
            api: claas_api::ApiConfig::default(),
        };
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
        let addrs = tokio::time::timeout(Duration::from_secs(300), ready_rx)
            .await
            .expect("stack did not come up")
            .expect("stack failed to start");
        Stack {
            api: format!("http://{}", addrs.api),
            stop: Some(stop_tx),
            task,
            dir,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("stack did not stop")
            .unwrap()
            .unwrap();
    }
}
