//! Local fakes for the gateway's integration tests: a Telegram Bot API server, an OpenAI chat
//! server and the CLaaS feedback route, all axum on 127.0.0.1:0.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use claas_gateway::{GatewayConfig, GatewayError};
pub use claas_testkit::*;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// OpenAI chat server
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ChatState {
    requests: Vec<Value>,
    auth: Vec<Option<String>>,
    fixed_reply: Option<String>,
    fail_statuses: Vec<u16>,
}

#[derive(Clone, Default)]
pub struct FakeChat {
    state: Arc<Mutex<ChatState>>,
    pub url: String,
}

/// The log-probabilities the fake server reports for `reply`: one per word.
pub fn fake_logprobs(reply: &str) -> Vec<f64> {
    (0..reply.split_whitespace().count())
        .map(|i| -((i + 1) as f64) / 8.0)
        .collect()
}

/// What the fake model answers when no fixed reply is set.
pub fn echo_reply(user_text: &str) -> String {
    format!("You said: {user_text}")
}

impl FakeChat {
    pub async fn start() -> Self {
        let mut fake = FakeChat::default();
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_handler))
            .with_state(fake.state.clone());
        fake.url = serve(router).await;
        fake
    }

    pub fn set_reply(&self, reply: &str) {
        self.state.lock().unwrap().fixed_reply = Some(reply.to_string());
    }

    /// The next requests are answered with these statuses, in order.
    pub fn fail_with(&self, statuses: &[u16]) {
        self.state.lock().unwrap().fail_statuses = statuses.to_vec();
    }

    pub fn requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn auth_headers(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().auth.clone()
    }
}

async fn chat_handler(
    State(state): State<Arc<Mutex<ChatState>>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.requests.push(body.clone());
    s.auth.push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    );
    if !s.fail_statuses.is_empty() {
        let status = s.fail_statuses.remove(0);
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"message": "model is sleeping", "type": "ServiceUnavailable", "param": null, "code": status}})),
        )
            .into_response();
    }
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let reply = s
        .fixed_reply
        .clone()
        .unwrap_or_else(|| echo_reply(&last_user));
    let content: Vec<Value> = reply
        .split_whitespace()
        .zip(fake_logprobs(&reply))
        .map(|(t, lp)| json!({"token": t, "logprob": lp, "bytes": null, "top_logprobs": []}))
        .collect();
    Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "logprobs": {"content": content},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// CLaaS API
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ClaasState {
    payloads: Vec<Value>,
    busy: bool,
    status: Option<u16>,
    reject_rollout: bool,
}

#[derive(Clone, Default)]
pub struct FakeClaas {
    state: Arc<Mutex<ClaasState>>,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
    held: Arc<AtomicUsize>,
    pub url: String,
}

impl FakeClaas {
    pub async fn start() -> Self {
        let mut fake = FakeClaas::default();
        let router = Router::new()
            .route("/v1/feedback", post(claas_handler))
            .with_state(fake.clone());
        fake.url = serve(router).await;
        fake
    }

    pub fn set_busy(&self) {
        self.state.lock().unwrap().busy = true;
    }

    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = Some(status);
    }

    /// Answer 422 to payloads that carry `rollout_logprobs`, as the real API does when their
    /// count does not match its tokenization of the response.
    pub fn reject_rollout_logprobs(&self) {
        self.state.lock().unwrap().reject_rollout = true;
    }

    /// Feedback requests wait until [`Self::release`].
    pub fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.release.notify_waiters();
    }

    pub async fn wait_held(&self) {
        wait_until("a held feedback request", || {
            (self.held.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await
    }

    pub fn payloads(&self) -> Vec<Value> {
        self.state.lock().unwrap().payloads.clone()
    }
}

async fn claas_handler(State(fake): State<FakeClaas>, Json(body): Json<Value>) -> Response {
    let (busy, status, reject_rollout) = {
        let mut s = fake.state.lock().unwrap();
        s.payloads.push(body.clone());
        (s.busy, s.status, s.reject_rollout)
    };
    if reject_rollout && body.get("rollout_logprobs").is_some() {
        let detail = "rollout_logprobs has 9 values but the response has 7 tokens (one log-probability per response token is required)";
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": detail})),
        )
            .into_response();
    }
    if fake.hold.load(Ordering::SeqCst) {
        let released = fake.release.notified();
        fake.held.fetch_add(1, Ordering::SeqCst);
        if fake.hold.load(Ordering::SeqCst) {
            released.await;
        }
    }
    if busy {
        let detail = format!(
            "Timed out waiting for lock on LoRA '{}'",
            body["lora_id"].as_str().unwrap_or("")
        );
        return (StatusCode::CONFLICT, Json(json!({"detail": detail}))).into_response();
    }
    if let Some(status) = status {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"detail": "LoRA not found: nope"})),
        )
            .into_response();
    }
    Json(json!({
        "status": "ok",
        "request_id": "req-1",
        "lora_id": body["lora_id"],
        "distill_result": {
            "lora_id": body["lora_id"],
            "metadata": {"total_loss": 0.123456, "distill_loss": 0.1, "tokens_processed": 7, "grad_norm": 0.5}
        },
        "vllm": {"slept": false, "woke": false},
        "feedback_log_path": "/tmp/feedback/req-1.json",
        "timing_ms": {"sleep": 0, "distill": 1000, "save": 100, "wake": 0, "logprobs": 0, "total": 1250}
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

pub struct Harness {
    pub tg: FakeTelegram,
    pub chat: FakeChat,
    pub claas: FakeClaas,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

pub fn test_config(tg: &str, chat: &str, claas: &str) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(TOKEN);
    cfg.telegram_api_url = tg.to_string();
    cfg.vllm_base_url = chat.to_string();
    cfg.claas_api_url = claas.to_string();
    cfg.poll_timeout = Duration::from_secs(1);
    cfg.retry_base = Duration::from_millis(10);
    cfg.retry_max = Duration::from_millis(50);
    cfg.shutdown_grace = Duration::from_secs(2);
    cfg
}

impl Harness {
    pub async fn start(adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        let tg = FakeTelegram::start().await;
        let chat = FakeChat::start().await;
        let claas = FakeClaas::start().await;
        let mut cfg = test_config(&tg.url, &chat.url, &claas.url);
        adjust(&mut cfg);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(claas_gateway::run(cfg, async move {
            let _ = stopped.await;
        }));
        Harness {
            tg,
            chat,
            claas,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signal shutdown and return what `run` returned.
    pub async fn stop(mut self) -> Result<(), GatewayError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT_LIMIT, task)
            .await
            .expect("gateway did not stop")
            .expect("gateway task panicked")
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}
