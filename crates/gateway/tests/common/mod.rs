//! Local fakes for the gateway's integration tests: a Telegram Bot API server and one server
//! playing the CLaaS API (chat proxy, feedback, rollback), all axum on 127.0.0.1:0.
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
// The CLaaS API's chat proxy (`/v1/chat/completions`)
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ChatState {
    requests: Vec<Value>,
    auth: Vec<Option<String>>,
    fixed_reply: Option<String>,
    fail_statuses: Vec<u16>,
    no_id: bool,
}

#[derive(Clone, Default)]
pub struct FakeChat {
    state: Arc<Mutex<ChatState>>,
}

/// What the fake model answers when no fixed reply is set.
pub fn echo_reply(user_text: &str) -> String {
    format!("You said: {user_text}")
}

/// The completion id the fake gives the `n`-th chat request (1-based).
pub fn completion_id(n: usize) -> String {
    format!("chatcmpl-fake-{n}")
}

impl FakeChat {
    fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat_handler))
            .with_state(self.state.clone())
    }

    pub fn set_reply(&self, reply: &str) {
        self.state.lock().unwrap().fixed_reply = Some(reply.to_string());
    }

    /// Answer without an `id`, as a proxy that keeps no record might.
    pub fn omit_ids(&self) {
        self.state.lock().unwrap().no_id = true;
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
    let n = s.requests.len();
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
    let mut out = json!({
        "id": completion_id(n),
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    if s.no_id {
        out.as_object_mut().unwrap().remove("id");
    }
    Json(out).into_response()
}

// ---------------------------------------------------------------------------------------------
// The CLaaS API's feedback and rollback routes
// ---------------------------------------------------------------------------------------------

struct ClaasState {
    payloads: Vec<Value>,
    rollbacks: Vec<Value>,
    busy: bool,
    status: Option<u16>,
    rollback_status: Option<u16>,
    /// The adapter's current version (`None`: no history yet).
    current: Option<u64>,
}

impl Default for ClaasState {
    fn default() -> Self {
        Self {
            payloads: Vec::new(),
            rollbacks: Vec::new(),
            busy: false,
            status: None,
            rollback_status: None,
            current: Some(1),
        }
    }
}

#[derive(Clone, Default)]
pub struct FakeClaas {
    state: Arc<Mutex<ClaasState>>,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
    held: Arc<AtomicUsize>,
}

impl FakeClaas {
    fn router(&self) -> Router {
        Router::new()
            .route("/v1/feedback", post(claas_handler))
            .route("/v1/lora/rollback", post(rollback_handler))
            .with_state(self.clone())
    }

    /// Feedback and rollback answer 409, as while an update of the adapter is running.
    pub fn set_busy(&self, busy: bool) {
        self.state.lock().unwrap().busy = busy;
    }

    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = Some(status);
    }

    /// Rollback answers this status with a FastAPI-style `detail`.
    pub fn set_rollback_status(&self, status: Option<u16>) {
        self.state.lock().unwrap().rollback_status = status;
    }

    /// Set the adapter's current version (`None`: an adapter without history).
    pub fn set_current_version(&self, v: Option<u64>) {
        self.state.lock().unwrap().current = v;
    }

    pub fn current_version(&self) -> Option<u64> {
        self.state.lock().unwrap().current
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

    pub fn rollbacks(&self) -> Vec<Value> {
        self.state.lock().unwrap().rollbacks.clone()
    }
}

async fn claas_handler(State(fake): State<FakeClaas>, Json(body): Json<Value>) -> Response {
    fake.state.lock().unwrap().payloads.push(body.clone());
    if fake.hold.load(Ordering::SeqCst) {
        let released = fake.release.notified();
        fake.held.fetch_add(1, Ordering::SeqCst);
        if fake.hold.load(Ordering::SeqCst) {
            released.await;
        }
    }
    let mut s = fake.state.lock().unwrap();
    if s.busy {
        let detail = format!(
            "Timed out waiting for lock on LoRA '{}'",
            body["lora_id"].as_str().unwrap_or("")
        );
        return (StatusCode::CONFLICT, Json(json!({"detail": detail}))).into_response();
    }
    if let Some(status) = s.status {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"detail": "LoRA not found: nope"})),
        )
            .into_response();
    }
    let previous = s.current;
    let version = previous.map_or(1, |v| v + 1);
    s.current = Some(version);
    Json(json!({
        "status": "ok",
        "request_id": "req-1",
        "lora_id": body["lora_id"],
        "adapter_version": version,
        "previous_version": previous,
        "version_name": format!("openclaw/assistant-init@v{version}"),
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

async fn rollback_handler(State(fake): State<FakeClaas>, Json(body): Json<Value>) -> Response {
    let mut s = fake.state.lock().unwrap();
    s.rollbacks.push(body.clone());
    if s.busy {
        let detail = "an update of LoRA 'openclaw/assistant-init' is running; try again later";
        return (StatusCode::CONFLICT, Json(json!({"detail": detail}))).into_response();
    }
    if let Some(status) = s.rollback_status {
        let detail = format!(
            "LoRA 'openclaw/assistant-init' has no version {}",
            body["version"]
        );
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"detail": detail})),
        )
            .into_response();
    }
    let Some(version) = body["version"].as_u64() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": "version must be an integer"})),
        )
            .into_response();
    };
    let previous = s.current;
    s.current = Some(version);
    Json(json!({
        "status": "ok",
        "lora_id": "openclaw/assistant-init",
        "version": version,
        "previous_version": previous,
        "name": format!("openclaw/assistant-init@v{version}"),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// One local server playing the CLaaS API: chat proxy, feedback and rollback.
pub async fn start_api() -> (FakeChat, FakeClaas, String) {
    let chat = FakeChat::default();
    let claas = FakeClaas::default();
    let url = serve(chat.router().merge(claas.router())).await;
    (chat, claas, url)
}

pub struct Harness {
    pub tg: FakeTelegram,
    pub chat: FakeChat,
    pub claas: FakeClaas,
    pub api_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

pub fn test_config(tg: &str, api: &str) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(TOKEN);
    cfg.telegram_api_url = tg.to_string();
    // Chat, feedback and undo all go to the CLaaS API, with its key.
    cfg.claas_api_url = api.to_string();
    cfg.claas_api_key = Some("k-api".into());
    cfg.poll_timeout = Duration::from_secs(1);
    cfg.retry_base = Duration::from_millis(10);
    cfg.retry_max = Duration::from_millis(50);
    cfg.shutdown_grace = Duration::from_secs(2);
    cfg
}

impl Harness {
    pub async fn start(adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        let tg = FakeTelegram::start().await;
        let (chat, claas, api_url) = start_api().await;
        let mut cfg = test_config(&tg.url, &api_url);
        adjust(&mut cfg);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(claas_gateway::run(cfg, async move {
            let _ = stopped.await;
        }));
        Harness {
            tg,
            chat,
            claas,
            api_url,
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
