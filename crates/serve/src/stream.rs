//! Running a validated request: [`Run`] turns the engine's events into per-choice deltas
//! (text with stop strings, finish reasons, usage), and [`sse`] is the one SSE driver chat,
//! completions and responses share; each supplies a [`ChunkRenderer`] for its wire format.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use claas_engine::{Canceller, Event, GenerateRequest, TokenLogprob};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc::Sender;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;
use crate::protocol::{StopReason, Usage};
use crate::text::ChoiceText;
use crate::validate::{StreamSettings, ValidRequest};
use crate::AppState;

/// Per-choice output state.
pub(crate) struct ChoiceState {
    pub text: ChoiceText,
    pub tokens: Vec<u32>,
    pub lps: Vec<TokenLogprob>,
    pub finish: Option<(String, Option<StopReason>)>,
}

/// One update for one choice.
pub(crate) struct Delta {
    pub index: usize,
    pub text: String,
    /// The generated token this update is for (none on a bare finish).
    pub token: Option<u32>,
    pub lp: Option<TokenLogprob>,
    pub finish: Option<(String, Option<StopReason>)>,
}

/// A request in flight: one engine request per prompt, `n` choices each.
pub(crate) struct Run {
    events: futures::stream::SelectAll<futures::stream::BoxStream<'static, (usize, Event)>>,
    cancels: Vec<Canceller>,
    pub n: usize,
    pub choices: Vec<ChoiceState>,
    pub prompt_lps: Vec<Option<Vec<Option<TokenLogprob>>>>,
    pub prompts: Vec<Vec<u32>>,
    open: usize,
}

impl Run {
    /// Submits every prompt of `req` to the engine.
    pub fn start(st: &AppState, req: &ValidRequest) -> Result<Run, ApiError> {
        let mut streams = Vec::new();
        let mut cancels = Vec::new();
        let mut choices = Vec::new();
        for (pi, prompt) in req.prompts.iter().enumerate() {
            let handle = st.engine.submit(GenerateRequest {
                prompt: prompt.clone(),
                adapter: req.adapter.clone(),
                params: req.params.clone(),
                n: req.n,
                prompt_logprobs: req.engine_prompt_logprobs,
            })?;
            let (rx, c) = handle.into_parts();
            cancels.push(c);
            streams.push(
                UnboundedReceiverStream::new(rx)
                    .map(move |e| (pi, e))
                    .boxed(),
            );
            for _ in 0..req.n {
                choices.push(ChoiceState {
                    text: ChoiceText::new(
                        st.tokenizer.clone(),
                        req.skip_special,
                        prompt,
                        req.stops.clone(),
                        req.include_stop,
                    ),
                    tokens: Vec::new(),
                    lps: Vec::new(),
                    finish: None,
                });
            }
        }
        Ok(Run {
            events: futures::stream::select_all(streams),
            cancels,
            n: req.n,
            open: choices.len(),
            choices,
            prompt_lps: vec![None; req.prompts.len()],
            prompts: req.prompts.clone(),
        })
    }

    /// Next update; `None` when every choice has finished.
    pub async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        loop {
            if self.open == 0 {
                return None;
            }
            let Some((pi, ev)) = self.events.next().await else {
                return Some(Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the engine stopped",
                )));
            };
            match ev {
                Event::PromptLogprobs(v) => self.prompt_lps[pi] = Some(v),
                Event::Error(m) => {
                    return Some(Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)));
                }
                Event::Token {
                    index,
                    token,
                    logprob,
                } => {
                    let ci = pi * self.n + index;
                    let c = &mut self.choices[ci];
                    if c.finish.is_some() {
                        continue;
                    }
                    c.tokens.push(token);
                    if let Some(l) = &logprob {
                        c.lps.push(l.clone());
                    }
                    let mut text = c.text.push(token);
                    let mut finish = None;
                    if let Some(s) = c.text.stopped.clone() {
                        text.push_str(&c.text.finish());
                        self.cancels[pi].cancel(index);
                        finish = Some(("stop".to_string(), Some(StopReason::Text(s))));
                        c.finish = finish.clone();
                        self.open -= 1;
                    }
                    return Some(Ok(Delta {
                        index: ci,
                        text,
                        token: Some(token),
                        lp: logprob,
                        finish,
                    }));
                }
                Event::Finished {
                    index,
                    reason,
                    stop_token,
                } => {
                    let ci = pi * self.n + index;
                    let c = &mut self.choices[ci];
                    if c.finish.is_some() {
                        continue;
                    }
                    let text = c.text.finish();
                    let f = (
                        reason.as_str().to_string(),
                        stop_token.map(StopReason::Token),
                    );
                    c.finish = Some(f.clone());
                    self.open -= 1;
                    return Some(Ok(Delta {
                        index: ci,
                        text,
                        token: None,
                        lp: None,
                        finish: Some(f),
                    }));
                }
            }
        }
    }

    /// Runs to the end (non-streaming responses).
    pub async fn collect(&mut self) -> Result<(), ApiError> {
        while let Some(r) = self.next().await {
            r?;
        }
        Ok(())
    }

    pub fn usage(&self) -> Usage {
        let p = self.prompts.iter().map(Vec::len).sum::<usize>();
        let c = self.choices.iter().map(|c| c.tokens.len()).sum::<usize>();
        Usage {
            prompt_tokens: p,
            total_tokens: p + c,
            completion_tokens: c,
            prompt_tokens_details: None,
        }
    }
}

/// A wire format's chunks: what goes out before the first token, per delta, and at the end.
pub(crate) trait ChunkRenderer: Send + 'static {
    type Chunk: Serialize + Send;
    /// Chunks before any token (chat's role headers, completions' echo).
    fn head(&mut self, run: &Run) -> Vec<Self::Chunk>;
    /// The chunk for one delta, `None` when it carries nothing worth sending.
    fn delta(&mut self, run: &Run, d: Delta, usage: Option<Usage>) -> Option<Self::Chunk>;
    /// The final usage-only chunk.
    fn usage(&self, usage: Usage) -> Self::Chunk;
    /// Chunks after the last delta, before the usage chunk (the Responses API's terminal
    /// event).
    fn tail(&mut self, _run: &Run) -> Vec<Self::Chunk> {
        Vec::new()
    }
    /// A chunk's bytes on the wire: one `data:` line by default; a format with named events
    /// (the Responses API) writes its own frames.
    fn encode(&self, chunk: &Self::Chunk) -> Bytes {
        event(chunk)
    }
    /// The bytes that report an error after the stream began.
    fn error(&mut self, e: &ApiError) -> Bytes {
        error_event(e)
    }
    /// Whether the stream ends with `data: [DONE]` (chat and completions; the Responses API
    /// ends with its terminal event instead).
    fn done_marker(&self) -> bool {
        true
    }
}

fn event<T: Serialize>(v: &T) -> Bytes {
    match serde_json::to_string(v) {
        Ok(s) => Bytes::from(format!("data: {s}\n\n")),
        Err(e) => error_event(&ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

fn error_event(e: &ApiError) -> Bytes {
    let body = crate::protocol::ErrorResponse {
        error: crate::protocol::ErrorBody {
            message: &e.message,
            kind: "InternalServerError",
            param: None,
            code: e.status.as_u16(),
        },
    };
    let s = serde_json::to_string(&body).unwrap_or_default();
    Bytes::from(format!("data: {s}\n\n"))
}

/// Streams `run` as server-sent events rendered by `r`: head chunks, one chunk per delta,
/// the usage chunk when asked for, then `[DONE]`. Stops (and so cancels the engine request,
/// whose receiver drops) as soon as the client goes away.
pub(crate) fn sse<R: ChunkRenderer>(mut run: Run, mut r: R, opts: StreamSettings) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for c in r.head(&run) {
            if tx.send(r.encode(&c)).await.is_err() {
                return;
            }
        }
        while let Some(next) = next_or_closed(&mut run, &tx).await {
            let d = match next {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(r.error(&e)).await;
                    return;
                }
            };
            let usage = opts.continuous_usage.then(|| run.usage());
            if let Some(c) = r.delta(&run, d, usage) {
                if tx.send(r.encode(&c)).await.is_err() {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        for c in r.tail(&run) {
            if tx.send(r.encode(&c)).await.is_err() {
                return;
            }
        }
        if opts.include_usage {
            let _ = tx.send(r.encode(&r.usage(run.usage()))).await;
        }
        if r.done_marker() {
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Waits for the next run update, or gives up when the client disconnected.
async fn next_or_closed(run: &mut Run, tx: &Sender<Bytes>) -> Option<Result<Delta, ApiError>> {
    tokio::select! {
        r = run.next() => r,
        _ = tx.closed() => None,
    }
}
