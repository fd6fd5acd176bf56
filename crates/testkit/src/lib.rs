//! Test helpers shared by the integration tests of several crates: a fake Telegram Bot API
//! server (Telegram is the one service unreachable here), and small HTTP utilities. Everything
//! listens on 127.0.0.1 with port 0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const TOKEN: &str = "123456:TEST-token";
/// Guard against a hung test, not a timing assertion.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

/// `GET url` with a bearer key, parsed as JSON.
pub async fn get_json(url: &str, api_key: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The model ids a vLLM-compatible server at `base_url` lists (`GET /v1/models`).
pub async fn served_model_ids(base_url: &str, api_key: &str) -> Vec<String> {
    let models = get_json(&format!("{base_url}/v1/models"), api_key).await;
    models["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no model list: {models}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Sockets behind [`dead_url`]s, held for the life of the test process.
static DEAD_PORTS: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());

/// A URL on which nothing listens: its port stays bound (so no server started later in the
/// same test binary can take it) but never listens, so connections are refused at once.
pub fn dead_url() -> String {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&addr.into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    DEAD_PORTS.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    format!("http://127.0.0.1:{port}")
}

/// Polls `check` until it gives a value; panics after a generous limit.
pub async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
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

/// The shared PyTorch ground-truth fixtures (`../shared/fixtures` beside the repository).
pub mod fixtures {
    use std::path::PathBuf;

    use serde_json::Value;

    /// The fixtures folder.
    pub fn dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures"
        ))
    }

    /// A fixture JSON file, parsed.
    pub fn read_json(name: &str) -> Value {
        let p = dir().join(name);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// A JSON array of token ids.
    pub fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .expect("an array of ids")
            .iter()
            .map(|x| x.as_u64().expect("an id") as u32)
            .collect()
    }

    /// A JSON `[rows][cols]` number array.
    pub fn matrix(v: &Value) -> Vec<Vec<f64>> {
        v.as_array()
            .expect("an array of rows")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("a row")
                    .iter()
                    .map(|x| x.as_f64().expect("a number"))
                    .collect()
            })
            .collect()
    }

    /// Log-softmax of one row of fixture logits, in f64.
    pub fn log_softmax(row: &[f64]) -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        row.iter().map(|x| x - lse).collect()
    }
}
