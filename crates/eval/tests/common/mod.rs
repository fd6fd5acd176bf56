//! A whole `claas up` in the test process (ports 0, fresh temp folders), as the stack's own
//! tests start it, for running the eval against the real API.
#![allow(dead_code)]

use std::time::Duration;

use claas_stack::{LocalStack, UpConfig};

pub const KEY: &str = "sk-local";

pub struct Stack {
    pub api: String,
    inner: LocalStack,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// `claas up` on `model` (`builtin:tiny` or a model folder).
    pub async fn start(model: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = UpConfig::local(model, dir.path().join("loras"), dir.path().join("logs"));
        cfg.api_key = Some(KEY.into());
        let inner = tokio::time::timeout(Duration::from_secs(300), LocalStack::start(cfg))
            .await
            .expect("stack did not come up")
            .expect("stack failed to start");
        Stack {
            api: inner.api.clone(),
            inner,
            dir,
        }
    }

    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(60), self.inner.stop())
            .await
            .expect("stack did not stop")
            .unwrap();
    }
}
