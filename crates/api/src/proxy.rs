//! The OpenAI-compatible proxy of the API (reference HEAD: `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`): requests go to the inference server unchanged
//! except that it is asked for the sampled tokens' ids and log-probabilities, which the proxy
//! records ([`crate::records`]) and removes again unless the client asked for them. Streams
//! are passed through chunk by chunk; the record is made when the stream ends.
//!
//! Unlike the reference, which always calls the server without streaming and replays the
//! answer as one chunk, the client gets the server's own stream; and the visible text is passed
//! through as the server wrote it (thinking is split off by the server's reasoning parser, not
//! here), while the record's hash key ignores `<think>` blocks as the reference's does.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use claas_sdpo::StudentContext;
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::backend::{BackendError, Upstream};
use crate::error::ApiError;
use crate::records::CompletionRecord;
use crate::state::ApiState;
use crate::validate::parse_json;

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// What the client asked to see, and what the record needs of the request.
struct Plan {
    endpoint: Endpoint,
    wants_logprobs: bool,
    wants_token_ids: bool,
    context: StudentContext,
}

fn upstream_error(e: BackendError) -> ApiError {
    match e {
        BackendError::NotConfigured => {
            ApiError::Unavailable("no inference server is configured (set VLLM_BASE_URL)".into())
        }
        other => ApiError::BadGateway(format!("inference server: {other}")),
    }
}

/// Rewrites the client's body for the server and remembers what to record and strip.
fn plan(endpoint: Endpoint, body: &mut Map<String, Value>) -> Plan {
    let wants_logprobs = match endpoint {
        Endpoint::Chat => body.get("logprobs").and_then(Value::as_bool) == Some(true),
        Endpoint::Completions => body.get("logprobs").is_some_and(|v| !v.is_null()),
    };
    let wants_token_ids = body.get("return_token_ids").and_then(Value::as_bool) == Some(true);
    let context = match endpoint {
        Endpoint::Chat => body
            .get("messages")
            .and_then(Value::as_array)
            .map(|m| StudentContext::from_messages(m))
            .unwrap_or_default(),
        Endpoint::Completions => StudentContext {
            system_prompt: None,
            user_prompt: body
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
    };
    if !wants_logprobs {
        let v = match endpoint {
            Endpoint::Chat => Value::Bool(true),
            Endpoint::Completions => Value::from(0),
        };
        body.insert("logprobs".into(), v);
    }
    body.insert("return_token_ids".into(), Value::Bool(true));
    Plan {
        endpoint,
        wants_logprobs,
        wants_token_ids,
        context,
    }
}

/// Per-choice accumulation of what the server returned.
#[derive(Default, Clone)]
struct Choice {
    text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<f32>,
    prompt_ids: Option<Vec<u32>>,
}

/// Everything the proxy learns of one completion.
#[derive(Default)]
struct Collected {
    id: Option<String>,
    model: String,
    prompt_ids: Option<Vec<u32>>,
    choices: Vec<Choice>,
}

fn ids(v: Option<&Value>) -> Option<Vec<u32>> {
    v?.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

impl Collected {
    fn choice(&mut self, i: usize) -> &mut Choice {
        if self.choices.len() <= i {
            self.choices.resize(i + 1, Choice::default());
        }
        &mut self.choices[i]
    }

    /// Takes in one response object or stream chunk (`delta` for chat chunks, `message` for a
    /// whole chat answer, `text` for completions).
    fn absorb(&mut self, endpoint: Endpoint, obj: &Map<String, Value>) {
        if let Some(id) = obj.get("id").and_then(Value::as_str) {
            self.id.get_or_insert_with(|| id.to_string());
        }
        if let Some(m) = obj.get("model").and_then(Value::as_str) {
            self.model = m.to_string();
        }
        if let Some(p) = ids(obj.get("prompt_token_ids")) {
            self.prompt_ids = Some(p);
        }
        let Some(choices) = obj.get("choices").and_then(Value::as_array) else {
            return;
        };
        for (pos, c) in choices.iter().enumerate() {
            let i = c
                .get("index")
                .and_then(Value::as_u64)
                .map_or(pos, |i| i as usize);
            if i > 1024 {
                continue;
            }
            let ch = self.choice(i);
            let text = match endpoint {
                Endpoint::Chat => c
                    .get("delta")
                    .or_else(|| c.get("message"))
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_str),
                Endpoint::Completions => c.get("text").and_then(Value::as_str),
            };
            if let Some(t) = text {
                ch.text.push_str(t);
            }
            if let Some(t) = ids(c.get("token_ids")) {
                ch.token_ids.extend(t);
            }
            if let Some(p) = ids(c.get("prompt_token_ids")) {
                ch.prompt_ids = Some(p);
            }
            let lp = c.get("logprobs");
            match endpoint {
                Endpoint::Chat => {
                    if let Some(content) =
                        lp.and_then(|l| l.get("content")).and_then(Value::as_array)
                    {
                        ch.logprobs.extend(
                            content
                                .iter()
                                .filter_map(|e| e.get("logprob").and_then(Value::as_f64))
                                .map(|x| x as f32),
                        );
                    }
                }
                Endpoint::Completions => {
                    if let Some(tl) = lp
                        .and_then(|l| l.get("token_logprobs"))
                        .and_then(Value::as_array)
                    {
                        ch.logprobs
                            .extend(tl.iter().filter_map(Value::as_f64).map(|x| x as f32));
                    }
                }
            }
        }
    }

    /// The records to keep: one per choice with exact ids (the completion id finds choice 0).
    fn records(self, plan: &Plan) -> Vec<CompletionRecord> {
        let Some(id) = self.id else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, c) in self.choices.into_iter().enumerate() {
            let prompt_ids = c.prompt_ids.or_else(|| self.prompt_ids.clone());
            let Some(prompt_ids) = prompt_ids.filter(|p| !p.is_empty()) else {
                continue;
            };
            if c.token_ids.is_empty() {
                continue;
            }
            let logprobs = (c.logprobs.len() == c.token_ids.len()).then_some(c.logprobs);
            out.push(CompletionRecord {
                completion_id: if i == 0 {
                    id.clone()
                } else {
                    format!("{id}#{i}")
                },
                model: self.model.clone(),
                prompt_ids,
                response_ids: c.token_ids,
                logprobs,
                response: c.text,
                system_prompt: plan.context.system_prompt.clone(),
                user_prompt: plan.context.user_prompt.clone(),
            });
        }
        out
    }
}

/// Removes what the client did not ask for from a response object or chunk.
fn strip(plan: &Plan, obj: &mut Map<String, Value>) {
    if !plan.wants_token_ids {
        obj.remove("prompt_token_ids");
    }
    if let Some(choices) = obj.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices.iter_mut().filter_map(Value::as_object_mut) {
            if !plan.wants_token_ids {
                c.remove("token_ids");
                c.remove("prompt_token_ids");
            }
            if !plan.wants_logprobs && c.contains_key("logprobs") {
                c.insert("logprobs".into(), Value::Null);
            }
        }
    }
}

fn keep(state: &ApiState, collected: Collected, plan: &Plan) {
    let records = collected.records(plan);
    if records.is_empty() {
        tracing::debug!("completion not recorded: the server returned no token ids");
    }
    for r in records {
        state.records().put(r);
    }
}

/// Handles `POST /v1/chat/completions` or `POST /v1/completions`.
pub async fn complete(
    state: ApiState,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut body = match parse_json(&body)? {
        Value::Object(m) => m,
        _ => {
            return Err(ApiError::invalid(
                vec!["body".into()],
                "model_attributes_type",
                "Input should be a valid dictionary or object to extract fields from",
            ))
        }
    };
    let plan = plan(endpoint, &mut body);
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let up = state
        .backend()
        .forward(endpoint.path(), Some(Value::Object(body)))
        .await
        .map_err(upstream_error)?;
    if !(200..300).contains(&up.status) {
        return Ok(passthrough(up));
    }
    if streaming {
        return Ok(stream(state, plan, up));
    }
    let bytes = collect(up.body).await.map_err(upstream_error)?;
    let mut v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadGateway(format!("inference server sent invalid JSON: {e}")))?;
    if let Some(obj) = v.as_object_mut() {
        let mut c = Collected::default();
        c.absorb(endpoint, obj);
        keep(&state, c, &plan);
        strip(&plan, obj);
    }
    Ok((
        StatusCode::from_u16(up.status).unwrap_or(StatusCode::OK),
        axum::Json(v),
    )
        .into_response())
}

/// Handles `GET /v1/models`.
pub async fn models(state: ApiState) -> Result<Response, ApiError> {
    let up = state
        .backend()
        .forward("/v1/models", None)
        .await
        .map_err(upstream_error)?;
    Ok(passthrough(up))
}

async fn collect(
    mut body: futures::stream::BoxStream<'static, Result<Bytes, BackendError>>,
) -> Result<Vec<u8>, BackendError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn passthrough(up: Upstream) -> Response {
    let status = StatusCode::from_u16(up.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = Response::new(Body::from_stream(up.body));
    *resp.status_mut() = status;
    if let Some(ct) = up.content_type.and_then(|c| c.parse().ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// Server-sent events pass through one event at a time: each `data:` JSON chunk is absorbed,
/// stripped and re-sent; the record is kept at `[DONE]` (or at the end of the stream).
fn stream(state: ApiState, plan: Plan, up: Upstream) -> Response {
    struct Sse {
        up: futures::stream::BoxStream<'static, Result<Bytes, BackendError>>,
        buf: Vec<u8>,
        collected: Option<Collected>,
        plan: Plan,
        state: ApiState,
    }
    impl Sse {
        fn finish(&mut self) {
            if let Some(c) = self.collected.take() {
                keep(&self.state, c, &self.plan);
            }
        }

        /// Rewrites one complete event (without its blank-line terminator).
        fn event(&mut self, raw: &[u8]) -> Vec<u8> {
            let text = String::from_utf8_lossy(raw);
            let mut out = String::new();
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                let Some(data) = line.strip_prefix("data:") else {
                    out.push_str(line);
                    out.push('\n');
                    continue;
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    self.finish();
                    out.push_str("data: [DONE]\n");
                    continue;
                }
                match serde_json::from_str::<Value>(data) {
                    Ok(Value::Object(mut obj)) => {
                        if let Some(c) = self.collected.as_mut() {
                            c.absorb(self.plan.endpoint, &obj);
                        }
                        strip(&self.plan, &mut obj);
                        out.push_str("data: ");
                        out.push_str(&Value::Object(obj).to_string());
                        out.push('\n');
                    }
                    _ => {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            out.push('\n');
            out.into_bytes()
        }
    }
    let sse = Sse {
        up: up.body,
        buf: Vec::new(),
        collected: Some(Collected::default()),
        plan,
        state,
    };
    let body = futures::stream::unfold(sse, |mut s| async move {
        loop {
            if let Some((len, with_terminator)) = find_event_end(&s.buf) {
                let mut raw: Vec<u8> = s.buf.drain(..with_terminator).collect();
                raw.truncate(len);
                let out = s.event(&raw);
                return Some((Ok::<Bytes, BackendError>(Bytes::from(out)), s));
            }
            match s.up.next().await {
                Some(Ok(chunk)) => s.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    s.finish();
                    return Some((Err(e), s));
                }
                None => {
                    s.finish();
                    if s.buf.is_empty() {
                        return None;
                    }
                    let rest = std::mem::take(&mut s.buf);
                    return Some((Ok(Bytes::from(rest)), s));
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    if let Ok(ct) = "text/event-stream".parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// Position of the first event terminator (`\n\n` or `\r\n\r\n`): (event length, bytes to drop
/// including the terminator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn plan_asks_for_ids_and_logprobs_and_remembers_the_context() {
        let mut b = obj(json!({"model": "m", "messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]}));
        let p = plan(Endpoint::Chat, &mut b);
        assert_eq!(b["logprobs"], json!(true));
        assert_eq!(b["return_token_ids"], json!(true));
        assert!(!p.wants_logprobs && !p.wants_token_ids);
        assert_eq!(p.context.system_prompt.as_deref(), Some("S"));
        assert_eq!(p.context.user_prompt, "Q");
        let mut b = obj(json!({"prompt": "hi", "logprobs": 2}));
        let p = plan(Endpoint::Completions, &mut b);
        assert_eq!(b["logprobs"], json!(2));
        assert!(p.wants_logprobs);
    }

    #[test]
    fn chunks_accumulate_into_records_and_are_stripped() {
        let mut b = obj(json!({"messages": [{"role": "user", "content": "Q"}]}));
        let p = plan(Endpoint::Chat, &mut b);
        let mut c = Collected::default();
        let mut first = obj(
            json!({"id": "chatcmpl-1", "model": "m", "prompt_token_ids": [5, 6],
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        );
        let mut second = obj(json!({"id": "chatcmpl-1", "choices": [{"index": 0,
            "delta": {"content": "Hi"}, "token_ids": [7, 8],
            "logprobs": {"content": [{"token": "H", "logprob": -0.5}, {"token": "i", "logprob": -1.0}]}}]}));
        c.absorb(Endpoint::Chat, &first);
        c.absorb(Endpoint::Chat, &second);
        strip(&p, &mut first);
        strip(&p, &mut second);
        assert!(first.get("prompt_token_ids").is_none());
        assert!(second["choices"][0].get("token_ids").is_none());
        assert_eq!(second["choices"][0]["logprobs"], Value::Null);
        let r = c.records(&p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].completion_id, "chatcmpl-1");
        assert_eq!(r[0].prompt_ids, vec![5, 6]);
        assert_eq!(r[0].response_ids, vec![7, 8]);
        assert_eq!(r[0].logprobs, Some(vec![-0.5, -1.0]));
        assert_eq!(r[0].response, "Hi");
        assert_eq!(r[0].user_prompt, "Q");
        assert_eq!(r[0].system_prompt, None);
    }

    #[test]
    fn no_ids_no_record() {
        let mut b = obj(json!({"prompt": "x"}));
        let p = plan(Endpoint::Completions, &mut b);
        let mut c = Collected::default();
        c.absorb(
            Endpoint::Completions,
            &obj(json!({"id": "cmpl-1", "choices": [{"index": 0, "text": "y"}]})),
        );
        assert!(c.records(&p).is_empty());
    }

    #[test]
    fn event_boundaries() {
        assert_eq!(find_event_end(b"data: x\n\ndata: y"), Some((7, 9)));
        assert_eq!(find_event_end(b"data: x\r\n\r\n"), Some((7, 11)));
        assert_eq!(find_event_end(b"data: x\n"), None);
    }
}
