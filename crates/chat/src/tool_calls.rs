//! Hermes / Qwen3 tool calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pyjson::{python_json_dumps, PyJsonOptions};

const START: &str = "<tool_call>";
const END: &str = "</tool_call>";

/// One parsed tool call. `arguments` is JSON text written like Python's `json.dumps`
/// (what vLLM returns in `function.arguments`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

fn parse_body(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body).ok()?;
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    let args = obj.get("arguments")?;
    Some(ToolCall {
        name,
        arguments: python_json_dumps(args, &PyJsonOptions::default()),
    })
}

/// Split a complete model output into content and tool calls with vLLM's Hermes parser rules:
/// content is the text before the first `<tool_call>` (empty string = none); an unclosed last
/// block runs to the end of the text; if any block is not a JSON object with a string `name`
/// and an `arguments` field, nothing is a tool call and the whole text is content.
pub fn parse_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let Some(first) = text.find(START) else {
        return (text.to_string(), Vec::new());
    };
    let mut calls = Vec::new();
    let mut pos = first;
    while let Some(rel) = text[pos..].find(START) {
        let body_start = pos + rel + START.len();
        let (body, next) = match text[body_start..].find(END) {
            Some(e) => (
                &text[body_start..body_start + e],
                body_start + e + END.len(),
            ),
            None => (&text[body_start..], text.len()),
        };
        match parse_body(body) {
            Some(c) => calls.push(c),
            None => return (text.to_string(), Vec::new()),
        }
        pos = next;
    }
    (text[..first].to_string(), calls)
}

/// What [`ToolCallStreamParser`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolStreamEvent {
    /// Plain text to stream to the client.
    Content(String),
    /// A complete tool call.
    ToolCall(ToolCall),
}

/// Incremental tool-call extraction from streamed text deltas.
///
/// Text that could be the beginning of `<tool_call>` is held back until it is decided. A
/// block is reported once its `</tool_call>` arrives (or at [`finish`](Self::finish) if it is
/// never closed). Unlike the one-shot parser it cannot take back text already streamed, so a
/// malformed block is streamed as content and text between or after calls is streamed too.
#[derive(Debug, Default, Clone)]
pub struct ToolCallStreamParser {
    buf: String,
    in_call: bool,
}

impl ToolCallStreamParser {
    /// A parser at the start of an output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next text delta.
    pub fn push(&mut self, delta: &str) -> Vec<ToolStreamEvent> {
        self.buf.push_str(delta);
        let mut events = Vec::new();
        loop {
            if self.in_call {
                let Some(e) = self.buf.find(END) else { break };
                let body = self.buf[..e].to_string();
                self.buf.drain(..e + END.len());
                self.in_call = false;
                emit_call(&mut events, &body, true);
            } else if let Some(s) = self.buf.find(START) {
                push_content(&mut events, &self.buf[..s]);
                self.buf.drain(..s + START.len());
                self.in_call = true;
            } else {
                let keep = partial_suffix_len(&self.buf, START);
                let cut = self.buf.len() - keep;
                push_content(&mut events, &self.buf[..cut]);
                self.buf.drain(..cut);
                break;
            }
        }
        events
    }

    /// End of output: flush held-back text and an unclosed block.
    pub fn finish(&mut self) -> Vec<ToolStreamEvent> {
        let mut events = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        if self.in_call {
            self.in_call = false;
            emit_call(&mut events, &rest, false);
        } else {
            push_content(&mut events, &rest);
        }
        events
    }
}

fn emit_call(events: &mut Vec<ToolStreamEvent>, body: &str, closed: bool) {
    match parse_body(body) {
        Some(c) => events.push(ToolStreamEvent::ToolCall(c)),
        None => {
            let raw = if closed {
                format!("{START}{body}{END}")
            } else {
                format!("{START}{body}")
            };
            push_content(events, &raw);
        }
    }
}

fn push_content(events: &mut Vec<ToolStreamEvent>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(ToolStreamEvent::Content(last)) = events.last_mut() {
        last.push_str(text);
    } else {
        events.push(ToolStreamEvent::Content(text.to_string()));
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
pub(crate) fn partial_suffix_len(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && s.ends_with(&tag[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_suffix() {
        assert_eq!(partial_suffix_len("abc<tool_", START), 6);
        assert_eq!(partial_suffix_len("abc<", START), 1);
        assert_eq!(partial_suffix_len("abc", START), 0);
        assert_eq!(partial_suffix_len("", START), 0);
        assert_eq!(partial_suffix_len("é<t", START), 2);
    }
}
