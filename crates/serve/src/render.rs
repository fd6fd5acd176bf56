//! Engine output in the wire format: logprobs, tool calls, whole responses and the chunk
//! renderers the stream driver uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use claas_chat::{
    parse_tool_calls, split_reasoning, ReasoningStreamParser, ToolCallStreamParser, ToolStreamEvent,
};
use claas_engine::TokenLogprob;

use crate::protocol::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatDelta, ChatLogprob, ChatLogprobs,
    ChatMessage, Completion, CompletionChoice, CompletionChunk, CompletionChunkChoice,
    CompletionLogprobs, FunctionCall, PromptLogprob, PromptLogprobs, StopReason, ToolCall,
    ToolCallDelta, TopLogprob, Usage,
};
use crate::stream::{ChunkRenderer, Delta, Run};
use crate::validate::{ChatOptions, CompletionOptions, Reasoning, ValidRequest};
use crate::AppState;

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn rand_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// JSON has no -inf: vLLM reports impossible tokens as -9999.
fn safe_lp(x: f32) -> f64 {
    if x.is_finite() {
        x as f64
    } else {
        -9999.0
    }
}

/// How logprob tokens are named: their text, or `token_id:N` (`return_tokens_as_token_ids`).
#[derive(Clone)]
pub(crate) struct TokenNames {
    st: Arc<AppState>,
    as_ids: bool,
}

impl TokenNames {
    pub fn new(st: &Arc<AppState>, as_ids: bool) -> Self {
        TokenNames {
            st: st.clone(),
            as_ids,
        }
    }

    fn name(&self, id: u32) -> String {
        if self.as_ids {
            format!("token_id:{id}")
        } else {
            self.text(id)
        }
    }

    fn text(&self, id: u32) -> String {
        self.st.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    pub(crate) fn chat_entry(&self, l: &TokenLogprob) -> ChatLogprob {
        let t = self.name(l.token);
        ChatLogprob {
            logprob: safe_lp(l.logprob),
            bytes: t.as_bytes().to_vec(),
            token: t,
            top_logprobs: l
                .top
                .iter()
                .map(|&(id, lp)| {
                    let s = self.name(id);
                    TopLogprob {
                        logprob: safe_lp(lp),
                        bytes: s.as_bytes().to_vec(),
                        token: s,
                    }
                })
                .collect(),
        }
    }

    /// Completions logprobs; `start_offset` is where the first token's text starts.
    fn completion(
        &self,
        entries: &[(u32, Option<&TokenLogprob>)],
        start_offset: usize,
    ) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        let mut off = start_offset;
        for (id, l) in entries {
            let s = self.name(*id);
            out.text_offset.push(off);
            off += s.len();
            out.tokens.push(s);
            match l {
                Some(l) => {
                    out.token_logprobs.push(Some(safe_lp(l.logprob)));
                    // vLLM always lists the sampled token next to the top alternatives.
                    let mut m = BTreeMap::new();
                    m.insert(self.name(l.token), safe_lp(l.logprob));
                    for &(tid, lp) in &l.top {
                        m.entry(self.name(tid)).or_insert(safe_lp(lp));
                    }
                    out.top_logprobs.push(Some(m));
                }
                None => {
                    out.token_logprobs.push(None);
                    out.top_logprobs.push(None);
                }
            }
        }
        out
    }

    fn prompt(&self, v: &[Option<TokenLogprob>]) -> PromptLogprobs {
        v.iter()
            .map(|e| {
                e.as_ref().map(|l| {
                    let mut m = BTreeMap::new();
                    m.insert(
                        l.token,
                        PromptLogprob {
                            logprob: safe_lp(l.logprob),
                            rank: l.rank,
                            decoded_token: self.text(l.token),
                        },
                    );
                    for (i, &(id, lp)) in l.top.iter().enumerate() {
                        m.entry(id).or_insert_with(|| PromptLogprob {
                            logprob: safe_lp(lp),
                            rank: i + 1,
                            decoded_token: self.text(id),
                        });
                    }
                    m
                })
            })
            .collect()
    }
}

fn tool_call(tc: claas_chat::ToolCall) -> ToolCall {
    ToolCall {
        id: format!("chatcmpl-tool-{}", rand_id()),
        kind: "function",
        function: FunctionCall {
            name: tc.name,
            arguments: tc.arguments,
        },
    }
}

/// Content and tool-call deltas for one streamed text delta (Qwen3 `<tool_call>` blocks
/// become tool calls once closed, or at the end of the output).
pub(crate) fn stream_tool_delta(
    parser: Option<&mut ToolCallStreamParser>,
    count: &mut usize,
    text: &str,
    finishing: bool,
) -> (String, Vec<ToolCallDelta>) {
    let events = match parser {
        Some(p) => {
            let mut ev = p.push(text);
            if finishing {
                ev.extend(p.finish());
            }
            ev
        }
        None => vec![ToolStreamEvent::Content(text.to_string())],
    };
    let mut content = String::new();
    let mut calls = Vec::new();
    for e in events {
        match e {
            ToolStreamEvent::Content(s) => content.push_str(&s),
            ToolStreamEvent::ToolCall(tc) => {
                calls.push(ToolCallDelta {
                    index: *count,
                    call: tool_call(tc),
                });
                *count += 1;
            }
        }
    }
    (content, calls)
}

/// The assistant message of a finished choice and its finish reason (`tool_calls` when the
/// output held tool calls and stopped normally), as vLLM's auto tool choice. With a reasoning
/// parser the `<think>` block is split off first and tool calls are parsed from the rest, in
/// vLLM's order.
pub(crate) fn chat_message(
    text: &str,
    parse_tools: bool,
    reasoning: Option<Reasoning>,
    finish: String,
) -> (ChatMessage, String) {
    let (thinking, text) = match reasoning {
        Some(r) => {
            let (thinking, content) = split_reasoning(text);
            (
                thinking.filter(|_| r == Reasoning::Include),
                content.unwrap_or_default(),
            )
        }
        None => (None, text.to_string()),
    };
    let mut message = ChatMessage {
        role: "assistant",
        // vLLM: a reply that was all reasoning has null content.
        content: (reasoning.is_none() || !text.is_empty()).then(|| text.clone()),
        tool_calls: Vec::new(),
        reasoning_content: thinking,
    };
    let mut fr = finish;
    if parse_tools {
        let (content, calls) = parse_tool_calls(&text);
        if !calls.is_empty() {
            message.content = (!content.is_empty()).then_some(content);
            message.tool_calls = calls.into_iter().map(tool_call).collect();
            if fr == "stop" {
                fr = "tool_calls".into();
            }
        }
    }
    (message, fr)
}

fn finish_of(f: &Option<(String, Option<StopReason>)>) -> (String, Option<StopReason>) {
    f.clone().unwrap_or(("stop".into(), None))
}

/// The whole chat response of a finished run.
pub(crate) fn chat_response(
    st: &Arc<AppState>,
    v: &ValidRequest,
    o: &ChatOptions,
    run: &Run,
    id: String,
    created: i64,
) -> ChatCompletion {
    let names = TokenNames::new(st, v.tokens_as_ids);
    let choices = run
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (fr, sr) = finish_of(&c.finish);
            let text = match &o.echo_prefix {
                Some(p) => format!("{p}{}", c.text.text),
                None => c.text.text.clone(),
            };
            let (message, fr) = chat_message(&text, o.parse_tools, o.reasoning, fr);
            ChatChoice {
                index: i,
                message,
                logprobs: v.want_logprobs.then(|| ChatLogprobs {
                    content: c.lps.iter().map(|l| names.chat_entry(l)).collect(),
                }),
                finish_reason: fr,
                stop_reason: sr,
                token_ids: v.return_token_ids.then(|| c.tokens.clone()),
            }
        })
        .collect();
    ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: v.model.clone(),
        choices,
        usage: run.usage(),
        prompt_logprobs: match (&run.prompt_lps[0], v.show_prompt_logprobs) {
            (Some(p), true) => Some(names.prompt(p)),
            _ => None,
        },
        prompt_token_ids: v.return_token_ids.then(|| run.prompts[0].clone()),
    }
}

/// The whole completions response of a finished run.
pub(crate) fn completion_response(
    st: &Arc<AppState>,
    v: &ValidRequest,
    o: &CompletionOptions,
    run: &Run,
    id: String,
    created: i64,
) -> Result<Completion, crate::ApiError> {
    let names = TokenNames::new(st, v.tokens_as_ids);
    let mut choices = Vec::new();
    for (i, c) in run.choices.iter().enumerate() {
        let pi = i / run.n;
        let (fr, sr) = finish_of(&c.finish);
        // vLLM echoes no prompt text when the prompt goes back as ids.
        let prompt_text = if o.echo && !v.return_token_ids {
            st.tokenizer.decode(&run.prompts[pi], v.skip_special)?
        } else {
            String::new()
        };
        let logprobs = v.want_logprobs.then(|| {
            let mut entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
            if o.echo {
                let plp = run.prompt_lps[pi].as_deref().unwrap_or(&[]);
                for (j, &t) in run.prompts[pi].iter().enumerate() {
                    entries.push((t, plp.get(j).and_then(|x| x.as_ref())));
                }
            }
            entries.extend(c.lps.iter().map(|l| (l.token, Some(l))));
            names.completion(&entries, 0)
        });
        choices.push(CompletionChoice {
            index: i,
            text: prompt_text + &c.text.text,
            logprobs,
            finish_reason: fr,
            stop_reason: sr,
            prompt_logprobs: match (&run.prompt_lps[pi], v.show_prompt_logprobs) {
                (Some(p), true) => Some(names.prompt(p)),
                _ => None,
            },
            prompt_token_ids: v.return_token_ids.then(|| run.prompts[pi].clone()),
            token_ids: v.return_token_ids.then(|| c.tokens.clone()),
        });
    }
    Ok(Completion {
        id,
        object: "text_completion",
        created,
        model: v.model.clone(),
        choices,
        usage: run.usage(),
    })
}

/// Chat chunks: role header per choice, content / tool-call / logprob deltas.
pub(crate) struct ChatRenderer {
    id: String,
    created: i64,
    model: String,
    names: TokenNames,
    want_logprobs: bool,
    token_ids: bool,
    echo_prefix: Option<String>,
    /// Per choice: tool-call parser (when parsing tools) and calls sent so far.
    tools: Vec<(Option<ToolCallStreamParser>, usize)>,
    /// Per choice: the `<think>` splitter (with a reasoning parser), ahead of the tool parser.
    thinking: Vec<Option<ReasoningStreamParser>>,
    include_reasoning: bool,
}

impl ChatRenderer {
    pub fn new(
        st: &Arc<AppState>,
        v: &ValidRequest,
        o: ChatOptions,
        run: &Run,
        id: String,
        created: i64,
    ) -> Self {
        ChatRenderer {
            id,
            created,
            model: v.model.clone(),
            names: TokenNames::new(st, v.tokens_as_ids),
            want_logprobs: v.want_logprobs,
            token_ids: v.return_token_ids,
            echo_prefix: o.echo_prefix,
            tools: (0..run.choices.len())
                .map(|_| (o.parse_tools.then(ToolCallStreamParser::new), 0))
                .collect(),
            thinking: (0..run.choices.len())
                .map(|_| o.reasoning.map(|_| ReasoningStreamParser::new()))
                .collect(),
            include_reasoning: o.reasoning == Some(Reasoning::Include),
        }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            prompt_token_ids: None,
        }
    }
}

impl ChunkRenderer for ChatRenderer {
    type Chunk = ChatChunk;

    fn head(&mut self, run: &Run) -> Vec<ChatChunk> {
        let mut out = Vec::new();
        for i in 0..run.choices.len() {
            let mut head = self.chunk(
                vec![ChatChunkChoice {
                    index: i,
                    delta: ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        ..ChatDelta::default()
                    },
                    logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                    token_ids: None,
                }],
                None,
            );
            // As vLLM: the prompt ids ride on the role chunk.
            if self.token_ids {
                head.prompt_token_ids = Some(run.prompts[0].clone());
            }
            out.push(head);
            if let Some(p) = self.echo_prefix.clone().filter(|p| !p.is_empty()) {
                out.push(self.chunk(
                    vec![ChatChunkChoice {
                        index: i,
                        delta: ChatDelta {
                            content: Some(p),
                            ..ChatDelta::default()
                        },
                        logprobs: None,
                        finish_reason: None,
                        stop_reason: None,
                        token_ids: None,
                    }],
                    None,
                ));
            }
        }
        out
    }

    fn delta(&mut self, _run: &Run, d: Delta, usage: Option<Usage>) -> Option<ChatChunk> {
        let (thinking, text) = match &mut self.thinking[d.index] {
            Some(p) => {
                let mut out = p.push(&d.text);
                if d.finish.is_some() {
                    let rest = p.finish();
                    out.reasoning = concat(out.reasoning, rest.reasoning);
                    out.content = concat(out.content, rest.content);
                }
                (
                    out.reasoning.filter(|_| self.include_reasoning),
                    out.content.unwrap_or_default(),
                )
            }
            None => (None, d.text),
        };
        let (parser, count) = &mut self.tools[d.index];
        let (content, calls) = stream_tool_delta(parser.as_mut(), count, &text, d.finish.is_some());
        let logprobs = match (&d.lp, self.want_logprobs) {
            (Some(l), true) => Some(ChatLogprobs {
                content: vec![self.names.chat_entry(l)],
            }),
            _ => None,
        };
        let ids = self
            .token_ids
            .then(|| d.token.into_iter().collect::<Vec<u32>>());
        if content.is_empty()
            && thinking.is_none()
            && calls.is_empty()
            && d.finish.is_none()
            && logprobs.is_none()
            && ids.as_ref().is_none_or(|v| v.is_empty())
        {
            return None;
        }
        let (finish_reason, stop_reason) = match d.finish {
            Some((f, s)) => {
                let f = if f == "stop" && *count > 0 {
                    "tool_calls".to_string()
                } else {
                    f
                };
                (Some(f), s)
            }
            None => (None, None),
        };
        Some(self.chunk(
            vec![ChatChunkChoice {
                index: d.index,
                delta: ChatDelta {
                    role: None,
                    content: (!content.is_empty()).then_some(content),
                    reasoning_content: thinking,
                    tool_calls: (!calls.is_empty()).then_some(calls),
                },
                logprobs,
                finish_reason,
                stop_reason,
                token_ids: ids,
            }],
            usage,
        ))
    }

    fn usage(&self, usage: Usage) -> ChatChunk {
        self.chunk(Vec::new(), Some(usage))
    }
}

/// Completions chunks: echoed prompts first, then text / logprob / id deltas.
pub(crate) struct CompletionRenderer {
    st: Arc<AppState>,
    id: String,
    created: i64,
    model: String,
    names: TokenNames,
    want_logprobs: bool,
    token_ids: bool,
    echo: bool,
    skip_special: bool,
    /// Per choice: where its next token's text starts, and whether its prompt ids went out.
    offsets: Vec<usize>,
    ids_sent: Vec<bool>,
}

impl CompletionRenderer {
    pub fn new(
        st: &Arc<AppState>,
        v: &ValidRequest,
        o: &CompletionOptions,
        run: &Run,
        id: String,
        created: i64,
    ) -> Self {
        CompletionRenderer {
            st: st.clone(),
            id,
            created,
            model: v.model.clone(),
            names: TokenNames::new(st, v.tokens_as_ids),
            want_logprobs: v.want_logprobs,
            token_ids: v.return_token_ids,
            echo: o.echo,
            skip_special: v.skip_special,
            offsets: vec![0; run.choices.len()],
            // Each choice's first chunk carries its prompt ids (vLLM).
            ids_sent: vec![!v.return_token_ids; run.choices.len()],
        }
    }

    fn chunk(&self, choices: Vec<CompletionChunkChoice>, usage: Option<Usage>) -> CompletionChunk {
        CompletionChunk {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

impl ChunkRenderer for CompletionRenderer {
    type Chunk = CompletionChunk;

    fn head(&mut self, run: &Run) -> Vec<CompletionChunk> {
        if !self.echo {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0..run.choices.len() {
            let prompt = &run.prompts[i / run.n];
            // vLLM echoes no prompt text when the prompt goes back as ids.
            let text = if self.token_ids {
                String::new()
            } else {
                self.st
                    .tokenizer
                    .decode(prompt, self.skip_special)
                    .unwrap_or_default()
            };
            self.offsets[i] = text.len();
            let (prompt_ids, ids) = if self.token_ids {
                self.ids_sent[i] = true;
                (Some(prompt.clone()), Some(Vec::new()))
            } else {
                (None, None)
            };
            out.push(self.chunk(
                vec![CompletionChunkChoice {
                    index: i,
                    text,
                    logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                    prompt_token_ids: prompt_ids,
                    token_ids: ids,
                }],
                None,
            ));
        }
        out
    }

    fn delta(&mut self, run: &Run, d: Delta, usage: Option<Usage>) -> Option<CompletionChunk> {
        let logprobs = match (&d.lp, self.want_logprobs) {
            (Some(l), true) => Some(
                self.names
                    .completion(&[(l.token, Some(l))], self.offsets[d.index]),
            ),
            _ => None,
        };
        let ids = self
            .token_ids
            .then(|| d.token.into_iter().collect::<Vec<u32>>());
        if d.text.is_empty()
            && d.finish.is_none()
            && logprobs.is_none()
            && ids.as_ref().is_none_or(|v| v.is_empty())
        {
            return None;
        }
        self.offsets[d.index] += d.text.len();
        let (finish_reason, stop_reason) = match d.finish {
            Some((f, s)) => (Some(f), s),
            None => (None, None),
        };
        let prompt_ids = if ids.is_some() && !self.ids_sent[d.index] {
            self.ids_sent[d.index] = true;
            Some(run.prompts[d.index / run.n].clone())
        } else {
            None
        };
        Some(self.chunk(
            vec![CompletionChunkChoice {
                index: d.index,
                text: d.text,
                logprobs,
                finish_reason,
                stop_reason,
                prompt_token_ids: prompt_ids,
                token_ids: ids,
            }],
            usage,
        ))
    }

    fn usage(&self, usage: Usage) -> CompletionChunk {
        self.chunk(Vec::new(), Some(usage))
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
    use serde_json::{json, Value};

    const OUT: &str = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn tool_calls_in_a_finished_message() {
        let (m, fr) = chat_message(OUT, true, None, "stop".into());
        assert_eq!(fr, "tool_calls");
        let m = serde_json::to_value(&m).unwrap();
        assert_eq!(m["content"], "Let me check.");
        let call = &m["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(call["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
        // without tools (or tool_choice none) the text stays content
        let (m, fr) = chat_message(OUT, false, None, "stop".into());
        assert_eq!(fr, "stop");
        let m = serde_json::to_value(&m).unwrap();
        assert_eq!(m["content"], OUT);
        assert_eq!(m["tool_calls"], json!([]));
    }

    #[test]
    fn reasoning_is_split_before_tool_calls() {
        let text = format!("<think>weather first</think>{OUT}");
        let (m, fr) = chat_message(&text, true, Some(Reasoning::Include), "stop".into());
        assert_eq!(fr, "tool_calls");
        assert_eq!(m.reasoning_content.as_deref(), Some("weather first"));
        assert_eq!(m.content.as_deref(), Some("Let me check."));
        assert_eq!(m.tool_calls.len(), 1);
        let (m, _) = chat_message(&text, true, Some(Reasoning::Drop), "stop".into());
        assert_eq!(m.reasoning_content, None);
        assert_eq!(m.tool_calls.len(), 1);
        // All reasoning: null content, as vLLM.
        let (m, fr) = chat_message(
            "<think>hm</think>",
            false,
            Some(Reasoning::Include),
            "length".into(),
        );
        assert_eq!((m.content, fr.as_str()), (None, "length"));
        // No parser: the tags stay in the content.
        let (m, _) = chat_message("<think>hm</think>ok", false, None, "stop".into());
        assert_eq!(m.content.as_deref(), Some("<think>hm</think>ok"));
        assert_eq!(m.reasoning_content, None);
    }

    #[test]
    fn tool_calls_streamed_in_small_deltas() {
        let mut p = ToolCallStreamParser::new();
        let mut count = 0;
        let mut content = String::new();
        let mut calls = Vec::new();
        let chars: Vec<char> = OUT.chars().collect();
        let pieces: Vec<String> = chars.chunks(3).map(|c| c.iter().collect()).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let (c, k) = stream_tool_delta(Some(&mut p), &mut count, piece, i + 1 == pieces.len());
            content.push_str(&c);
            calls.extend(k);
        }
        assert_eq!(content, "Let me check.");
        assert_eq!(calls.len(), 1);
        let call = serde_json::to_value(&calls[0]).unwrap();
        assert_eq!(call["index"], 0);
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(count, 1);
        // no parser: everything is content
        let (c, k) = stream_tool_delta(None, &mut count, OUT, true);
        assert_eq!(c, OUT);
        assert!(k.is_empty());
    }
}
