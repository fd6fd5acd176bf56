//! A finished run as a Response object, and the streamed event sequence: `response.created`,
//! `response.in_progress`, per output item `output_item.added`, its content part or argument
//! events and `output_item.done`, then `response.completed` (`response.incomplete` when the
//! output hit `max_output_tokens`, `response.failed` when generation was aborted). Reasoning
//! and tool calls are split with chat's parsers, so both APIs read the same output the same way.

use std::sync::Arc;

use axum::body::Bytes;
use claas_chat::{ReasoningStreamParser, ToolCallStreamParser};
use serde_json::{json, Value};

use super::protocol::{
    ContentPart, EventBody, IncompleteDetails, InputTokensDetails, OutputItem, OutputTokensDetails,
    ResponseError, ResponseObject, ResponseUsage, StreamEvent,
};
use super::store::Stored;
use super::validate::Prepared;
use crate::error::ApiError;
use crate::protocol::{ChatLogprob, Usage};
use crate::render::{chat_message, rand_id, stream_tool_delta, TokenNames};
use crate::stream::{ChunkRenderer, Delta, Run};
use crate::AppState;

/// Status, details and error of a response that stopped for `finish`.
fn status_of(
    finish: &str,
) -> (
    &'static str,
    Option<IncompleteDetails>,
    Option<ResponseError>,
) {
    match finish {
        "length" => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
            None,
        ),
        "abort" => (
            "failed",
            None,
            Some(ResponseError {
                code: "server_error",
                message: "generation was aborted before it finished".into(),
            }),
        ),
        _ => ("completed", None, None),
    }
}

fn finish_reason(run: &Run) -> String {
    run.choices
        .first()
        .and_then(|c| c.finish.as_ref())
        .map(|(f, _)| f.clone())
        .unwrap_or_else(|| "stop".into())
}

/// Generated tokens inside the first `<think>...</think>` block (with the reasoning parser on).
fn reasoning_tokens(st: &AppState, reasoning: bool, tokens: &[u32]) -> usize {
    if !reasoning {
        return 0;
    }
    let (Some(open), Some(close)) = (
        st.tokenizer.token_to_id("<think>"),
        st.tokenizer.token_to_id("</think>"),
    ) else {
        return 0;
    };
    let Some(start) = tokens.iter().position(|&t| t == open) else {
        return 0;
    };
    tokens[start + 1..]
        .iter()
        .position(|&t| t == close)
        .unwrap_or_default()
}

fn usage(st: &AppState, run: &Run, reasoning: bool) -> ResponseUsage {
    let Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens,
        ..
    } = run.usage();
    let tokens = run
        .choices
        .first()
        .map(|c| c.tokens.as_slice())
        .unwrap_or(&[]);
    ResponseUsage {
        input_tokens: prompt_tokens,
        input_tokens_details: InputTokensDetails { cached_tokens: 0 },
        output_tokens: completion_tokens,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: reasoning_tokens(st, reasoning, tokens),
        },
        total_tokens,
    }
}

fn message_item(
    id: String,
    status: &'static str,
    text: String,
    lps: Vec<ChatLogprob>,
) -> OutputItem {
    OutputItem::Message {
        id,
        role: "assistant",
        status,
        content: vec![ContentPart::OutputText {
            text,
            annotations: Vec::new(),
            logprobs: lps,
        }],
    }
}

fn reasoning_item(id: String, status: &'static str, text: Option<String>) -> OutputItem {
    OutputItem::Reasoning {
        id,
        summary: Vec::new(),
        content: text
            .map(|text| vec![ContentPart::ReasoningText { text }])
            .unwrap_or_default(),
        status,
    }
}

fn all_logprobs(st: &Arc<AppState>, p: &Prepared, run: &Run) -> Vec<ChatLogprob> {
    if !p.valid.want_logprobs {
        return Vec::new();
    }
    let names = TokenNames::new(st, p.valid.tokens_as_ids);
    run.choices
        .first()
        .map(|c| c.lps.iter().map(|l| names.chat_entry(l)).collect())
        .unwrap_or_default()
}

/// The final Response object: `base` with the status, output and usage of the run.
fn finished(
    p: &Prepared,
    finish: &str,
    usage: ResponseUsage,
    output: Vec<OutputItem>,
) -> ResponseObject {
    let (status, incomplete_details, error) = status_of(finish);
    ResponseObject {
        status,
        incomplete_details,
        error,
        output,
        usage: Some(usage),
        ..p.base.clone()
    }
}

/// The output items of a finished text, split as chat splits it: reasoning, then the message
/// (when it has text, or when there is nothing else), then the function calls.
fn output_items(p: &Prepared, text: &str, finish: &str, lps: Vec<ChatLogprob>) -> Vec<OutputItem> {
    let (msg, _) = chat_message(
        text,
        p.opts.parse_tools,
        p.opts.reasoning,
        finish.to_string(),
    );
    let mut output = Vec::new();
    if let Some(r) = msg.reasoning_content.filter(|r| !r.is_empty()) {
        output.push(reasoning_item(
            format!("rs_{}", rand_id()),
            "completed",
            Some(r),
        ));
    }
    let content = msg.content.unwrap_or_default();
    let calls: Vec<OutputItem> = msg
        .tool_calls
        .into_iter()
        .take(p.max_calls.unwrap_or(usize::MAX))
        .map(|c| OutputItem::FunctionCall {
            id: format!("fc_{}", rand_id()),
            call_id: c.id,
            name: c.function.name,
            arguments: c.function.arguments,
            status: "completed",
        })
        .collect();
    if !content.is_empty() || (output.is_empty() && calls.is_empty()) {
        let status = if finish == "length" {
            "incomplete"
        } else {
            "completed"
        };
        output.push(message_item(
            format!("msg_{}", rand_id()),
            status,
            content,
            lps,
        ));
    }
    output.extend(calls);
    output
}

/// The whole response of a finished (non-streamed) run, stored when asked.
pub(crate) fn response(st: &Arc<AppState>, p: &Prepared, run: &Run) -> ResponseObject {
    let finish = finish_reason(run);
    let text = run
        .choices
        .first()
        .map(|c| c.text.text.as_str())
        .unwrap_or("");
    let output = output_items(p, text, &finish, all_logprobs(st, p, run));
    let u = usage(st, run, p.opts.reasoning.is_some());
    let r = finished(p, &finish, u, output);
    keep(st, p, &r);
    r
}

/// The assistant turn of `output` as one chat message (for a follow-up's conversation).
fn reply_message(output: &[OutputItem]) -> Value {
    let mut content = Value::Null;
    let mut reasoning = Value::Null;
    let mut calls = Vec::new();
    for item in output {
        match item {
            OutputItem::Message { content: parts, .. } => {
                let text: String = parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::OutputText { text, .. } => Some(text.as_str()),
                        ContentPart::ReasoningText { .. } => None,
                    })
                    .collect();
                content = Value::String(text);
            }
            OutputItem::Reasoning { content: parts, .. } => {
                let text: String = parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::ReasoningText { text } => Some(text.as_str()),
                        ContentPart::OutputText { .. } => None,
                    })
                    .collect();
                reasoning = Value::String(text);
            }
            OutputItem::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => calls.push(json!({"id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments}})),
        }
    }
    let mut m = json!({"role": "assistant", "content": content});
    if !reasoning.is_null() {
        m["reasoning"] = reasoning;
    }
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    m
}

/// Stores a finished response when the request asked for it and the store is on.
fn keep(st: &AppState, p: &Prepared, r: &ResponseObject) {
    let Some(store) = st.responses.as_ref().filter(|_| p.store) else {
        return;
    };
    let response = match serde_json::to_value(r) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("response {} not stored: {e}", r.id);
            return;
        }
    };
    let mut conversation = p.conversation.clone();
    conversation.push(reply_message(&r.output));
    store.insert(
        r.id.clone(),
        Stored {
            response,
            conversation,
        },
    );
}

/// The item being streamed.
enum Open {
    None,
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
        lps: Vec<ChatLogprob>,
    },
}

/// Streamed events of one response; each engine delta becomes zero or more events.
pub(crate) struct ResponsesRenderer {
    st: Arc<AppState>,
    p: Prepared,
    seq: u64,
    names: TokenNames,
    thinking: Option<ReasoningStreamParser>,
    tools: Option<ToolCallStreamParser>,
    calls_seen: usize,
    calls_sent: usize,
    items: Vec<OutputItem>,
    open: Open,
    /// Logprobs of tokens whose text has not gone out in an `output_text.delta` yet.
    pending_lps: Vec<ChatLogprob>,
}

impl ResponsesRenderer {
    pub fn new(st: &Arc<AppState>, p: Prepared) -> Self {
        ResponsesRenderer {
            st: st.clone(),
            names: TokenNames::new(st, p.valid.tokens_as_ids),
            thinking: p.opts.reasoning.map(|_| ReasoningStreamParser::new()),
            tools: p.opts.parse_tools.then(ToolCallStreamParser::new),
            p,
            seq: 0,
            calls_seen: 0,
            calls_sent: 0,
            items: Vec::new(),
            open: Open::None,
            pending_lps: Vec::new(),
        }
    }

    fn ev(&mut self, kind: &'static str, body: EventBody) -> StreamEvent {
        let e = StreamEvent {
            kind,
            sequence_number: self.seq,
            body,
        };
        self.seq += 1;
        e
    }

    fn item_event(&mut self, kind: &'static str, item: OutputItem) -> StreamEvent {
        let output_index = self.items.len();
        self.ev(kind, EventBody::Item { output_index, item })
    }

    /// Ends the open item with its done events.
    fn close(&mut self, out: &mut Vec<StreamEvent>, status: &'static str) {
        let output_index = self.items.len();
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Reasoning { id, text } => {
                let done = EventBody::ReasoningDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                };
                out.push(self.ev("response.reasoning_text.done", done));
                let part = ContentPart::ReasoningText { text: text.clone() };
                let part_done = EventBody::Part {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    part,
                };
                out.push(self.ev("response.content_part.done", part_done));
                let item = reasoning_item(id, "completed", Some(text));
                out.push(self.item_event("response.output_item.done", item.clone()));
                self.items.push(item);
            }
            Open::Message { id, text, lps } => {
                let done = EventBody::TextDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: lps.clone(),
                };
                out.push(self.ev("response.output_text.done", done));
                let part = ContentPart::OutputText {
                    text: text.clone(),
                    annotations: Vec::new(),
                    logprobs: lps.clone(),
                };
                let part_done = EventBody::Part {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    part,
                };
                out.push(self.ev("response.content_part.done", part_done));
                let item = message_item(id, status, text, lps);
                out.push(self.item_event("response.output_item.done", item.clone()));
                self.items.push(item);
            }
        }
    }

    fn open_message(&mut self, out: &mut Vec<StreamEvent>) {
        if matches!(self.open, Open::Message { .. }) {
            return;
        }
        self.close(out, "completed");
        let id = format!("msg_{}", rand_id());
        let added = OutputItem::Message {
            id: id.clone(),
            role: "assistant",
            status: "in_progress",
            content: Vec::new(),
        };
        out.push(self.item_event("response.output_item.added", added));
        let part = EventBody::Part {
            item_id: id.clone(),
            output_index: self.items.len(),
            content_index: 0,
            part: ContentPart::OutputText {
                text: String::new(),
                annotations: Vec::new(),
                logprobs: Vec::new(),
            },
        };
        out.push(self.ev("response.content_part.added", part));
        self.open = Open::Message {
            id,
            text: String::new(),
            lps: Vec::new(),
        };
    }

    fn text_delta(&mut self, delta: String, out: &mut Vec<StreamEvent>) {
        self.open_message(out);
        let lps = std::mem::take(&mut self.pending_lps);
        let output_index = self.items.len();
        let Open::Message { id, text, lps: all } = &mut self.open else {
            return;
        };
        text.push_str(&delta);
        all.extend(lps.iter().cloned());
        let body = EventBody::TextDelta {
            item_id: id.clone(),
            output_index,
            content_index: 0,
            delta,
            logprobs: lps,
        };
        out.push(self.ev("response.output_text.delta", body));
    }

    fn reasoning_delta(&mut self, delta: String, out: &mut Vec<StreamEvent>) {
        if !matches!(self.open, Open::Reasoning { .. }) {
            self.close(out, "completed");
            let id = format!("rs_{}", rand_id());
            let added = reasoning_item(id.clone(), "in_progress", None);
            out.push(self.item_event("response.output_item.added", added));
            let part = EventBody::Part {
                item_id: id.clone(),
                output_index: self.items.len(),
                content_index: 0,
                part: ContentPart::ReasoningText {
                    text: String::new(),
                },
            };
            out.push(self.ev("response.content_part.added", part));
            self.open = Open::Reasoning {
                id,
                text: String::new(),
            };
        }
        let output_index = self.items.len();
        let Open::Reasoning { id, text } = &mut self.open else {
            return;
        };
        text.push_str(&delta);
        let body = EventBody::ReasoningDelta {
            item_id: id.clone(),
            output_index,
            content_index: 0,
            delta,
        };
        out.push(self.ev("response.reasoning_text.delta", body));
    }

    /// A whole function call: the Qwen3 parser yields a call once its block closes.
    fn function_call(
        &mut self,
        call_id: String,
        name: String,
        args: String,
        out: &mut Vec<StreamEvent>,
    ) {
        self.close(out, "completed");
        let id = format!("fc_{}", rand_id());
        let output_index = self.items.len();
        let added = OutputItem::FunctionCall {
            id: id.clone(),
            call_id: call_id.clone(),
            name: name.clone(),
            arguments: String::new(),
            status: "in_progress",
        };
        out.push(self.item_event("response.output_item.added", added));
        let delta = EventBody::ArgumentsDelta {
            item_id: id.clone(),
            output_index,
            delta: args.clone(),
        };
        out.push(self.ev("response.function_call_arguments.delta", delta));
        let done = EventBody::ArgumentsDone {
            item_id: id.clone(),
            output_index,
            name: name.clone(),
            arguments: args.clone(),
        };
        out.push(self.ev("response.function_call_arguments.done", done));
        let item = OutputItem::FunctionCall {
            id,
            call_id,
            name,
            arguments: args,
            status: "completed",
        };
        out.push(self.item_event("response.output_item.done", item.clone()));
        self.items.push(item);
    }

    /// The events after the last delta: the open item closed (an empty message when nothing
    /// was output, as the non-streamed response has), then the terminal event with the final
    /// Response object, which is stored when asked.
    fn finish_events(
        &mut self,
        finish: &str,
        usage: ResponseUsage,
        lps: Vec<ChatLogprob>,
    ) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        let msg_status = if finish == "length" {
            "incomplete"
        } else {
            "completed"
        };
        self.close(&mut out, msg_status);
        if self.items.is_empty() {
            self.open_message(&mut out);
            self.close(&mut out, msg_status);
        }
        let mut output = self.items.clone();
        // As the non-streamed response: the message carries every generated token's logprobs.
        if self.p.valid.want_logprobs {
            for item in &mut output {
                if let OutputItem::Message { content, .. } = item {
                    for part in content {
                        if let ContentPart::OutputText { logprobs, .. } = part {
                            *logprobs = lps.clone();
                        }
                    }
                }
            }
        }
        let r = finished(&self.p, finish, usage, output);
        keep(&self.st, &self.p, &r);
        let kind = match r.status {
            "incomplete" => "response.incomplete",
            "failed" => "response.failed",
            _ => "response.completed",
        };
        out.push(self.response_event(kind, r));
        out
    }

    fn response_event(&mut self, kind: &'static str, r: ResponseObject) -> StreamEvent {
        self.ev(
            kind,
            EventBody::Response {
                response: Box::new(r),
            },
        )
    }
}

impl ChunkRenderer for ResponsesRenderer {
    type Chunk = Vec<StreamEvent>;

    fn head(&mut self, _run: &Run) -> Vec<Vec<StreamEvent>> {
        let base = self.p.base.clone();
        let created = self.response_event("response.created", base.clone());
        let progress = self.response_event("response.in_progress", base);
        vec![vec![created, progress]]
    }

    fn delta(&mut self, _run: &Run, d: Delta, _usage: Option<Usage>) -> Option<Vec<StreamEvent>> {
        let mut out = Vec::new();
        if self.p.valid.want_logprobs {
            if let Some(l) = &d.lp {
                let e = self.names.chat_entry(l);
                self.pending_lps.push(e);
            }
        }
        let finishing = d.finish.is_some();
        let (thinking, text) = match &mut self.thinking {
            Some(p) => {
                let mut r = p.push(&d.text);
                if finishing {
                    let rest = p.finish();
                    r.reasoning = concat(r.reasoning, rest.reasoning);
                    r.content = concat(r.content, rest.content);
                }
                (r.reasoning, r.content.unwrap_or_default())
            }
            None => (None, d.text),
        };
        if let Some(t) = thinking.filter(|t| !t.is_empty()) {
            self.reasoning_delta(t, &mut out);
        }
        let (content, calls) =
            stream_tool_delta(self.tools.as_mut(), &mut self.calls_seen, &text, finishing);
        if !content.is_empty() {
            self.text_delta(content, &mut out);
        }
        for c in calls {
            if self.p.max_calls.is_some_and(|m| self.calls_sent >= m) {
                continue;
            }
            self.calls_sent += 1;
            let f = c.call.function;
            self.function_call(c.call.id, f.name, f.arguments, &mut out);
        }
        (!out.is_empty()).then_some(out)
    }

    fn usage(&self, _usage: Usage) -> Vec<StreamEvent> {
        // Usage rides on the terminal event; there is no usage-only chunk.
        Vec::new()
    }

    fn tail(&mut self, run: &Run) -> Vec<Vec<StreamEvent>> {
        let u = usage(&self.st, run, self.p.opts.reasoning.is_some());
        let lps = all_logprobs(&self.st, &self.p, run);
        vec![self.finish_events(&finish_reason(run), u, lps)]
    }

    fn encode(&self, chunk: &Vec<StreamEvent>) -> Bytes {
        let mut s = String::new();
        for e in chunk {
            match serde_json::to_string(e) {
                Ok(j) => s.push_str(&format!("event: {}\ndata: {j}\n\n", e.kind)),
                Err(err) => tracing::warn!("event {} not serialized: {err}", e.kind),
            }
        }
        Bytes::from(s)
    }

    fn error(&mut self, e: &ApiError) -> Bytes {
        let body = EventBody::Error {
            code: Some(if e.status.is_client_error() {
                "invalid_request_error".into()
            } else {
                "server_error".into()
            }),
            message: e.message.clone(),
            param: e.param.clone(),
        };
        let ev = self.ev("error", body);
        self.encode(&vec![ev])
    }

    fn done_marker(&self) -> bool {
        false
    }
}

fn concat(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + &b),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_of("stop").0, "completed");
        let (s, d, e) = status_of("length");
        assert_eq!(s, "incomplete");
        assert_eq!(d.unwrap().reason, "max_output_tokens");
        assert!(e.is_none());
        let (s, _, e) = status_of("abort");
        assert_eq!(s, "failed");
        assert!(e.is_some());
    }

    #[test]
    fn reply_message_joins_an_assistant_turn() {
        let out = vec![
            reasoning_item("rs_1".into(), "completed", Some("think".into())),
            message_item(
                "msg_1".into(),
                "completed",
                "Let me check.".into(),
                Vec::new(),
            ),
            OutputItem::FunctionCall {
                id: "fc_1".into(),
                call_id: "call_1".into(),
                name: "get".into(),
                arguments: "{}".into(),
                status: "completed",
            },
        ];
        let m = reply_message(&out);
        assert_eq!(
            m,
            json!({"role": "assistant", "content": "Let me check.", "reasoning": "think",
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get", "arguments": "{}"}}]})
        );
        claas_chat::normalize_messages(&[m]).unwrap();
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::ServeConfig;
    use claas_testkit::fixtures::dir as fixtures;

    async fn state() -> Arc<AppState> {
        let cfg = ServeConfig {
            model: fixtures().join("tiny-qwen3").display().to_string(),
            served_model_name: vec!["tiny".into()],
            reasoning_parser: Some("qwen3".into()),
            ..ServeConfig::default()
        };
        let st = tokio::task::spawn_blocking(move || AppState::from_config(&cfg))
            .await
            .unwrap()
            .unwrap();
        Arc::new(st)
    }

    fn delta(text: &str, finish: bool) -> Delta {
        Delta {
            index: 0,
            text: text.to_string(),
            token: None,
            lp: None,
            finish: finish.then(|| ("stop".to_string(), None)),
        }
    }

    /// Items as JSON without their generated ids.
    fn comparable(items: &[OutputItem]) -> Vec<Value> {
        items
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("id");
                o.remove("call_id");
                v
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reasoning_text_and_one_tool_call_stream_as_items() {
        let st = state().await;
        let body = json!({"model": "tiny", "input": "weather?", "stream": true,
            "max_output_tokens": 1, "parallel_tool_calls": false,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]});
        let p = super::super::validate::prepare(&st, body).await.unwrap();
        // A real run to hand the renderer; its own output is not used here.
        let mut run = Run::start(&st, &p.valid).unwrap();
        run.collect().await.unwrap();
        let call = |city: &str| {
            format!("<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{city}\"}}}}\n</tool_call>")
        };
        let pieces = [
            "<think>".to_string(),
            "let me".into(),
            " see</think>".into(),
            "\n\nChecking.".into(),
            call("Paris"),
            call("Rome"),
        ];
        let mut r = ResponsesRenderer::new(&st, p);
        let mut events: Vec<StreamEvent> = r.head(&run).into_iter().flatten().collect();
        for (i, piece) in pieces.iter().enumerate() {
            let d = delta(piece, i + 1 == pieces.len());
            events.extend(r.delta(&run, d, None).unwrap_or_default());
        }
        let usage = ResponseUsage {
            input_tokens: 3,
            input_tokens_details: InputTokensDetails { cached_tokens: 0 },
            output_tokens: 5,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 2,
            },
            total_tokens: 8,
        };
        events.extend(r.finish_events("stop", usage, Vec::new()));
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let mut want = vec!["response.created", "response.in_progress"];
        want.extend(["response.output_item.added", "response.content_part.added"]);
        want.extend(["response.reasoning_text.delta"; 2]);
        want.extend([
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(kinds, want);
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence_number).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
        let EventBody::Response { response } = &events.last().unwrap().body else {
            panic!("no final response");
        };
        assert_eq!(response.status, "completed");
        assert_eq!(response.output.len(), 3, "{:?}", response.output);
        let json = serde_json::to_value(&response.output).unwrap();
        assert_eq!(json[0]["content"][0]["text"], "let me see");
        assert_eq!(json[2]["arguments"], "{\"city\": \"Paris\"}");
        // The same items as the non-streamed response builds from the whole text.
        let whole: String = pieces.concat();
        let rp = super::super::validate::prepare(
            &st,
            json!({"model": "tiny", "input": "weather?", "max_output_tokens": 1,
                "parallel_tool_calls": false,
                "tools": [{"type": "function", "name": "get_weather"}]}),
        )
        .await
        .unwrap();
        let items = output_items(&rp, &whole, "stop", Vec::new());
        assert_eq!(comparable(&response.output), comparable(&items));
        // Item ids agree between the added and done events of the function call.
        let fc_ids: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Item {
                    item: OutputItem::FunctionCall { id, .. },
                    ..
                } => Some(id.as_str()),
                EventBody::ArgumentsDelta { item_id, .. }
                | EventBody::ArgumentsDone { item_id, .. } => Some(item_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(fc_ids.len(), 4);
        assert!(fc_ids.iter().all(|i| *i == fc_ids[0]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reasoning_tokens_are_the_ones_inside_the_think_block() {
        let st = state().await;
        let think = st.tokenizer.encode("<think>", false).unwrap();
        let inner = st.tokenizer.encode("let me see", false).unwrap();
        let close = st.tokenizer.encode("</think>", false).unwrap();
        let after = st.tokenizer.encode("Sunny.", false).unwrap();
        assert_eq!((think.len(), close.len()), (1, 1), "single special tokens");
        let all = [think.clone(), inner.clone(), close.clone(), after.clone()].concat();
        assert_eq!(reasoning_tokens(&st, true, &all), inner.len());
        // parser off, or an unfinished block: none
        assert_eq!(reasoning_tokens(&st, false, &all), 0);
        let open = [think, inner, after].concat();
        assert_eq!(reasoning_tokens(&st, true, &open), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_output_is_one_empty_message_and_length_is_incomplete() {
        let st = state().await;
        let p = super::super::validate::prepare(
            &st,
            json!({"model": "tiny", "input": "x", "stream": true, "max_output_tokens": 1}),
        )
        .await
        .unwrap();
        let mut run = Run::start(&st, &p.valid).unwrap();
        run.collect().await.unwrap();
        let mut r = ResponsesRenderer::new(&st, p);
        let usage = ResponseUsage {
            input_tokens: 1,
            input_tokens_details: InputTokensDetails { cached_tokens: 0 },
            output_tokens: 1,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: 2,
        };
        let events = r.finish_events("length", usage, Vec::new());
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        let EventBody::Response { response } = &events[5].body else {
            panic!("no final response");
        };
        assert_eq!(
            response.incomplete_details.as_ref().unwrap().reason,
            "max_output_tokens"
        );
        let out = serde_json::to_value(&response.output).unwrap();
        assert_eq!(out[0]["status"], "incomplete");
        assert_eq!(out[0]["content"][0]["text"], "");
        // The wire form: `event:` names the data's type, and no [DONE].
        let wire = String::from_utf8(r.encode(&events).to_vec()).unwrap();
        for frame in wire.trim_end().split("\n\n") {
            let (ev, data) = frame.split_once('\n').unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(ev.strip_prefix("event: ").unwrap(), data["type"]);
        }
        assert!(!r.done_marker());
    }
}
