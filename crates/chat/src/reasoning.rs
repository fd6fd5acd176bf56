//! `<think>...</think>` splitting with vLLM's Qwen3 reasoning-parser rules.

use crate::tool_calls::partial_suffix_len;

const THINK: &str = "<think>";
const END_THINK: &str = "</think>";

/// Split a complete output into `(reasoning, content)` like vLLM's `qwen3` reasoning parser:
/// unless both `<think>` and `</think>` are present the whole text is content; otherwise
/// reasoning is the text between them and content the text after `</think>` (`None` if empty).
/// Text before `<think>` is dropped, as in vLLM.
pub fn split_reasoning(text: &str) -> (Option<String>, Option<String>) {
    if !text.contains(THINK) || !text.contains(END_THINK) {
        return (None, Some(text.to_string()));
    }
    let after_start = match text.find(THINK) {
        Some(i) => &text[i + THINK.len()..],
        None => text,
    };
    let Some(e) = after_start.find(END_THINK) else {
        // `</think>` only occurs before `<think>`.
        return (None, Some(after_start.to_string()));
    };
    let reasoning = after_start[..e].to_string();
    let content = &after_start[e + END_THINK.len()..];
    (
        Some(reasoning),
        (!content.is_empty()).then(|| content.to_string()),
    )
}

/// A piece of streamed output, classified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasoningDelta {
    pub reasoning: Option<String>,
    pub content: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Content,
    Reasoning,
    Done,
}

/// Streaming version of [`split_reasoning`]: text inside `<think>...</think>` is reasoning,
/// everything else content; the tags themselves are dropped and partial tags held back.
/// Only the first `<think>` block counts (later tags are content).
#[derive(Debug, Clone, Default)]
pub struct ReasoningStreamParser {
    buf: String,
    phase: Phase,
}

impl ReasoningStreamParser {
    /// A parser at the start of an output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next text delta.
    pub fn push(&mut self, delta: &str) -> ReasoningDelta {
        self.buf.push_str(delta);
        let mut out = ReasoningDelta::default();
        loop {
            match self.phase {
                Phase::Content => {
                    if let Some(i) = self.buf.find(THINK) {
                        append(&mut out.content, &self.buf[..i]);
                        self.buf.drain(..i + THINK.len());
                        self.phase = Phase::Reasoning;
                        continue;
                    }
                    let cut = self.buf.len() - partial_suffix_len(&self.buf, THINK);
                    append(&mut out.content, &self.buf[..cut]);
                    self.buf.drain(..cut);
                }
                Phase::Reasoning => {
                    if let Some(i) = self.buf.find(END_THINK) {
                        append(&mut out.reasoning, &self.buf[..i]);
                        self.buf.drain(..i + END_THINK.len());
                        self.phase = Phase::Done;
                        continue;
                    }
                    let cut = self.buf.len() - partial_suffix_len(&self.buf, END_THINK);
                    append(&mut out.reasoning, &self.buf[..cut]);
                    self.buf.drain(..cut);
                }
                Phase::Done => {
                    append(&mut out.content, &self.buf);
                    self.buf.clear();
                }
            }
            break;
        }
        out
    }

    /// End of output: flush held-back partial tags as text of the current kind.
    pub fn finish(&mut self) -> ReasoningDelta {
        let rest = std::mem::take(&mut self.buf);
        let mut out = ReasoningDelta::default();
        match self.phase {
            Phase::Reasoning => append(&mut out.reasoning, &rest),
            _ => append(&mut out.content, &rest),
        }
        out
    }
}

fn append(slot: &mut Option<String>, text: &str) {
    if text.is_empty() {
        return;
    }
    slot.get_or_insert_with(String::new).push_str(text);
}
