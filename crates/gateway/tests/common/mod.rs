//! Local fakes for the gateway's integration tests: a Telegram Bot API server, an OpenAI chat
//! server and the CLaaS feedback route, all axum on 127.0.0.1:0.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use claas_gateway::{GatewayConfig, GatewayError};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "123456:TEST-token";
/// Guard against a hung test, not a timing assertion.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

/// A URL on which nothing listens.
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Telegram
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub chat_id: i64,
    pub text: String,
    pub parse_mode: Option<String>,
}

#[derive(Default)]
struct TgState {
    updates: Vec<Value>,
    next_id: i64,
    /// Everything the bot did, in order: ("sendMessage"|"sendChatAction", chat, text/action).
    log: Vec<(String, i64, String)>,
    sent: Vec<Sent>,
    fail_get_updates: u32,
    failed_get_updates: u32,
    webhook: bool,
    last_offset: i64,
}

#[derive(Clone, Default)]
pub struct FakeTelegram {
    state: Arc<Mutex<TgState>>,
    pub url: String,
}

impl FakeTelegram {
    pub async fn start() -> Self {
        let mut fake = FakeTelegram::default();
        let router = Router::new()
            .route("/{bot}/{method}", post(tg_handler))
            .with_state(fake.state.clone());
        fake.url = serve(router).await;
        fake
    }

    /// Queue a text message from `user` in the private chat with the same id.
    pub fn push_text(&self, user: i64, text: &str) {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.updates.push(json!({
            "update_id": id,
            "message": {
                "message_id": id,
                "date": 1_700_000_000,
                "chat": {"id": user, "type": "private"},
                "from": {"id": user, "is_bot": false, "first_name": "Tester"},
                "text": text,
            }
        }));
    }

    /// Queue a raw update (e.g. a sticker) with the next id.
    pub fn push_raw(&self, mut update: Value) {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        update["update_id"] = json!(s.next_id);
        s.updates.push(update);
    }

    pub fn fail_next_get_updates(&self, n: u32) {
        self.state.lock().unwrap().fail_get_updates = n;
    }

    pub fn set_webhook(&self) {
        self.state.lock().unwrap().webhook = true;
    }

    pub fn has_webhook(&self) -> bool {
        self.state.lock().unwrap().webhook
    }

    pub fn failed_get_updates(&self) -> u32 {
        self.state.lock().unwrap().failed_get_updates
    }

    pub fn sent(&self, chat: i64) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.sent
            .iter()
            .filter(|m| m.chat_id == chat)
            .map(|m| m.text.clone())
            .collect()
    }

    pub fn sent_raw(&self) -> Vec<Sent> {
        self.state.lock().unwrap().sent.clone()
    }

    pub fn log(&self, chat: i64) -> Vec<(String, String)> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|(_, c, _)| *c == chat)
            .map(|(m, _, t)| (m.clone(), t.clone()))
            .collect()
    }

    pub fn last_offset(&self) -> i64 {
        self.state.lock().unwrap().last_offset
    }

    /// Wait until at least `n` messages went to `chat`; returns all of them.
    pub async fn wait_sent(&self, chat: i64, n: usize) -> Vec<String> {
        wait_until(&format!("{n} messages to chat {chat}"), || {
            let sent = self.sent(chat);
            (sent.len() >= n).then_some(sent)
        })
        .await
    }
}

fn tg_error(status: StatusCode, description: &str) -> Response {
    (
        status,
        Json(json!({"ok": false, "error_code": status.as_u16(), "description": description})),
    )
        .into_response()
}

async fn tg_handler(
    State(state): State<Arc<Mutex<TgState>>>,
    Path((bot, method)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if bot != format!("bot{TOKEN}") {
        return tg_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    match method.as_str() {
        "getMe" => Json(json!({"ok": true, "result": {"id": 1, "is_bot": true, "first_name": "Bot", "username": "test_bot"}})).into_response(),
        "getUpdates" => {
            let offset = body["offset"].as_i64().unwrap_or(0);
            let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
            {
                let mut s = state.lock().unwrap();
                if s.fail_get_updates > 0 {
                    s.fail_get_updates -= 1;
                    s.failed_get_updates += 1;
                    return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
                }
                if s.webhook {
                    return tg_error(
                        StatusCode::CONFLICT,
                        "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
                    );
                }
                s.last_offset = offset;
                s.updates.retain(|u| u["update_id"].as_i64().unwrap() >= offset);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let pending: Vec<Value> = state.lock().unwrap().updates.clone();
                if !pending.is_empty() || tokio::time::Instant::now() >= deadline {
                    return Json(json!({"ok": true, "result": pending})).into_response();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        "sendMessage" => {
            let chat_id = body["chat_id"].as_i64().unwrap();
            let text = body["text"].as_str().unwrap_or_default().to_string();
            if text.is_empty() {
                return tg_error(StatusCode::BAD_REQUEST, "Bad Request: message text is empty");
            }
            if text.encode_utf16().count() > 4096 {
                return tg_error(StatusCode::BAD_REQUEST, "Bad Request: message is too long");
            }
            let mut s = state.lock().unwrap();
            s.log.push(("sendMessage".into(), chat_id, text.clone()));
            s.sent.push(Sent {
                chat_id,
                text,
                parse_mode: body["parse_mode"].as_str().map(String::from),
            });
            let id = s.sent.len();
            Json(json!({"ok": true, "result": {"message_id": id, "date": 0, "chat": {"id": chat_id, "type": "private"}}})).into_response()
        }
        "deleteWebhook" => {
            state.lock().unwrap().webhook = false;
            Json(json!({"ok": true, "result": true})).into_response()
        }
        "sendChatAction" => {
            let chat_id = body["chat_id"].as_i64().unwrap();
            let action = body["action"].as_str().unwrap_or_default().to_string();
            state.lock().unwrap().log.push(("sendChatAction".into(), chat_id, action));
            Json(json!({"ok": true, "result": true})).into_response()
        }
        _ => tg_error(StatusCode::NOT_FOUND, "Not Found: method not found"),
    }
}

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
    let (busy, status) = {
        let mut s = fake.state.lock().unwrap();
        s.payloads.push(body.clone());
        (s.busy, s.status)
    };
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
