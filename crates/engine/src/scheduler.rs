//! The step loop on the engine thread: intake, admission, one packed forward over every
//! sequence that has work (chunked prefill + decode, mixed adapters), sampling, streaming.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claas_model::{KvCache, LoraAdapter, Qwen3, SeqInput};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{rss_bytes, ModelLoader, Msg, PauseMode, Pending, SleepReport};
use crate::sampling::{apply_penalties, log_softmax, sample, token_logprob};
use crate::{EngineError, Event, FinishReason, Metrics, SamplingParams, TokenLogprob};

pub(crate) struct SchedulerParams {
    pub max_num_seqs: usize,
    pub prefill_chunk: usize,
    pub max_model_len: usize,
    pub max_loras: Option<usize>,
    pub seed: u64,
}

/// How often a paused engine that holds requests looks for cancelled ones.
const HELD_SWEEP: Duration = Duration::from_millis(50);

/// vLLM's scheduler pause states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    Unpaused,
    /// No admissions; running sequences continue.
    New,
    /// Nothing steps.
    All,
}

struct ReqState {
    remaining: usize,
    arrived: Instant,
    first_token_seen: bool,
    waiting_counted: bool,
}

struct Seq {
    index: usize,
    tokens: Vec<u32>,
    prompt_len: usize,
    fed: usize,
    cache: KvCache,
    adapter: Option<Arc<LoraAdapter>>,
    params: Arc<SamplingParams>,
    rng: StdRng,
    tx: UnboundedSender<Event>,
    cancel: Arc<Vec<AtomicBool>>,
    /// `(top n, collected so far)` when prompt logprobs were asked for (sequence 0 only).
    prompt_lp: Option<(usize, Vec<Option<TokenLogprob>>)>,
    counts: HashMap<u32, u32>,
    req: Rc<RefCell<ReqState>>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

struct Loop {
    p: SchedulerParams,
    metrics: Arc<Metrics>,
    model: Option<Arc<Qwen3>>,
    loader: Option<ModelLoader>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    pending_sleep: Option<(
        u8,
        std::sync::mpsc::Sender<Result<SleepReport, EngineError>>,
    )>,
    rng: StdRng,
    pause: Pause,
    /// Published for `Engine::is_paused`.
    paused_flag: Arc<AtomicBool>,
    /// `Wait`-mode pause calls, answered once nothing runs.
    pause_waiters: Vec<Sender<()>>,
}

pub(crate) fn run(
    p: SchedulerParams,
    metrics: Arc<Metrics>,
    paused_flag: Arc<AtomicBool>,
    model: Arc<Qwen3>,
    loader: Option<ModelLoader>,
    rx: Receiver<Msg>,
) {
    let mut l = Loop {
        rng: StdRng::seed_from_u64(p.seed),
        p,
        metrics,
        model: Some(model),
        loader,
        waiting: VecDeque::new(),
        running: Vec::new(),
        pending_sleep: None,
        pause: Pause::Unpaused,
        paused_flag,
        pause_waiters: Vec::new(),
    };
    loop {
        l.answer_pause_waiters();
        if l.idle() {
            if let Some((level, reply)) = l.pending_sleep.take() {
                let _ = reply.send(l.do_sleep(level));
                continue;
            }
            if l.running.is_empty() && l.waiting.is_empty() {
                match rx.recv() {
                    Ok(m) => l.handle(m),
                    Err(_) => return,
                }
            } else {
                // Paused with requests held: nothing to compute, but a client that goes
                // away must still free its slot.
                match rx.recv_timeout(HELD_SWEEP) {
                    Ok(m) => l.handle(m),
                    Err(RecvTimeoutError::Timeout) => {
                        l.sweep();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        while let Ok(m) = rx.try_recv() {
            l.handle(m);
        }
        l.step();
    }
}

fn finish(seq: &Seq, reason: FinishReason, stop_token: Option<u32>, metrics: &Metrics) {
    let _ = seq.tx.send(Event::Finished {
        index: seq.index,
        reason,
        stop_token,
    });
    let mut r = seq.req.borrow_mut();
    if r.waiting_counted {
        r.waiting_counted = false;
        metrics.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    r.remaining -= 1;
    if r.remaining == 0 {
        // Aborted before finished: a reader that sees the request finished sees how.
        if reason == FinishReason::Abort {
            metrics.requests_aborted.fetch_add(1, Ordering::SeqCst);
        }
        metrics.requests_finished.fetch_add(1, Ordering::SeqCst);
        metrics.e2e.observe(r.arrived.elapsed().as_secs_f64());
    }
}

impl Loop {
    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Request(p) => self.enqueue(*p),
            Msg::Sleep { level, reply } => self.pending_sleep = Some((level, reply)),
            Msg::Wake { reply } => {
                let _ = reply.send(self.do_wake());
            }
            Msg::Pause { mode, reply } => self.do_pause(mode, reply),
            Msg::Resume { reply } => {
                self.pause = Pause::Unpaused;
                self.paused_flag.store(false, Ordering::SeqCst);
                // A drain interrupted by resume is over too.
                for w in self.pause_waiters.drain(..) {
                    let _ = w.send(());
                }
                let _ = reply.send(());
            }
        }
    }

    /// Nothing can make progress until a message arrives.
    fn idle(&self) -> bool {
        (self.running.is_empty() || self.pause == Pause::All)
            && (self.waiting.is_empty() || self.pause != Pause::Unpaused)
    }

    fn do_pause(&mut self, mode: PauseMode, reply: Sender<()>) {
        self.paused_flag.store(true, Ordering::SeqCst);
        match mode {
            PauseMode::Abort => {
                // Everything the engine holds, queued or running, as vLLM's abort mode.
                let running = std::mem::take(&mut self.running);
                self.retire(
                    running.into_iter().map(|s| (s, FinishReason::Abort, None)),
                    None,
                );
                for s in std::mem::take(&mut self.waiting) {
                    finish(&s, FinishReason::Abort, None, &self.metrics);
                }
                self.pause = Pause::New;
                let _ = reply.send(());
            }
            PauseMode::Wait => {
                self.pause = Pause::New;
                self.pause_waiters.push(reply);
            }
            PauseMode::Keep => {
                self.pause = Pause::All;
                let _ = reply.send(());
            }
        }
    }

    /// Answers `Wait`-mode pauses once no sequence runs.
    fn answer_pause_waiters(&mut self) {
        if self.pause == Pause::New && self.running.is_empty() {
            for w in self.pause_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn do_sleep(&mut self, level: u8) -> Result<SleepReport, EngineError> {
        let rss_before = rss_bytes();
        if level == 2 {
            if self.loader.is_none() {
                return Err(EngineError::SleepMode(
                    "level 2 needs a model that can be reloaded from disk".into(),
                ));
            }
            self.model = None;
            crate::engine::release_freed_memory();
        }
        Ok(SleepReport {
            level,
            rss_before,
            rss_after: rss_bytes(),
        })
    }

    fn do_wake(&mut self) -> Result<SleepReport, EngineError> {
        let rss_before = rss_bytes();
        if self.model.is_none() {
            let loader = self
                .loader
                .as_ref()
                .ok_or_else(|| EngineError::SleepMode("no model loader".into()))?;
            self.model = Some(Arc::new(loader()?));
        }
        Ok(SleepReport {
            level: 0,
            rss_before,
            rss_after: rss_bytes(),
        })
    }

    fn enqueue(&mut self, p: Pending) {
        let Pending {
            req,
            adapter,
            tx,
            cancel,
            arrived,
        } = p;
        if self.model.is_none() {
            let _ = tx.send(Event::Error(EngineError::Sleeping.to_string()));
            self.metrics.waiting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let state = Rc::new(RefCell::new(ReqState {
            remaining: req.n,
            arrived,
            first_token_seen: false,
            waiting_counted: true,
        }));
        let params = Arc::new(req.params);
        let base_seed = params.seed.unwrap_or_else(|| self.rng.next_u64());
        for index in 0..req.n {
            let seed = base_seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            self.waiting.push_back(Seq {
                index,
                tokens: req.prompt.clone(),
                prompt_len: req.prompt.len(),
                fed: 0,
                cache: KvCache::new(),
                adapter: adapter.clone(),
                params: params.clone(),
                rng: StdRng::seed_from_u64(seed),
                tx: tx.clone(),
                cancel: cancel.clone(),
                prompt_lp: if index == 0 {
                    req.prompt_logprobs.map(|k| (k, vec![None]))
                } else {
                    None
                },
                counts: HashMap::new(),
                req: state.clone(),
            });
        }
    }

    fn cancelled(s: &Seq) -> bool {
        s.tx.is_closed() || s.cancel[s.index].load(Ordering::Relaxed)
    }

    /// Drops cancelled or disconnected sequences.
    fn sweep(&mut self) {
        let metrics = self.metrics.clone();
        let mut i = 0;
        let mut aborted = Vec::new();
        while i < self.running.len() {
            if Self::cancelled(&self.running[i]) {
                aborted.push(self.running.swap_remove(i));
            } else {
                i += 1;
            }
        }
        self.retire(
            aborted.into_iter().map(|s| (s, FinishReason::Abort, None)),
            None,
        );
        let waiting = std::mem::take(&mut self.waiting);
        for s in waiting {
            if Self::cancelled(&s) {
                finish(&s, FinishReason::Abort, None, &metrics);
            } else {
                self.waiting.push_back(s);
            }
        }
    }

    fn step(&mut self) {
        let metrics = self.metrics.clone();
        // Drop cancelled or disconnected sequences before spending compute on them.
        self.sweep();
        if self.pause == Pause::All {
            return;
        }
        // With a `max_loras` limit, a request on one adapter too many waits at the head of the
        // queue while later requests that fit are admitted (vLLM's policy).
        let adapter_key = |s: &Seq| s.adapter.as_ref().map(|a| Arc::as_ptr(a) as usize);
        let mut active: Vec<usize> = self.running.iter().filter_map(adapter_key).collect();
        active.sort_unstable();
        active.dedup();
        let mut deferred = Vec::new();
        while self.pause == Pause::Unpaused && self.running.len() < self.p.max_num_seqs {
            let Some(s) = self.waiting.pop_front() else {
                break;
            };
            if let (Some(max), Some(key)) = (self.p.max_loras, adapter_key(&s)) {
                if !active.contains(&key) {
                    if active.len() >= max {
                        deferred.push(s);
                        continue;
                    }
                    active.push(key);
                }
            }
            // Running goes up before waiting goes down: a reader that loads waiting first and
            // running second (as a drain does) never sees an admitted request as neither.
            let (req, prompt_len) = (s.req.clone(), s.prompt_len);
            self.running.push(s);
            metrics.running.store(self.running.len(), Ordering::SeqCst);
            let mut r = req.borrow_mut();
            if r.waiting_counted {
                r.waiting_counted = false;
                metrics.waiting.fetch_sub(1, Ordering::SeqCst);
                metrics
                    .prompt_tokens
                    .fetch_add(prompt_len as u64, Ordering::Relaxed);
            }
        }
        for s in deferred.into_iter().rev() {
            self.waiting.push_front(s);
        }
        metrics.running.store(self.running.len(), Ordering::SeqCst);
        if self.running.is_empty() {
            return;
        }
        // Sequences on the same adapter side by side: the model applies each adapter once to a
        // contiguous block of rows instead of once per sequence (stable, so arrival order is
        // kept within an adapter).
        self.running
            .sort_by_key(|s| s.adapter.as_ref().map_or(0, |a| Arc::as_ptr(a) as usize));
        let Some(model) = self.model.clone() else {
            for s in self.running.drain(..) {
                let _ = s.tx.send(Event::Error(EngineError::Sleeping.to_string()));
                finish(&s, FinishReason::Abort, None, &metrics);
            }
            return;
        };

        // Plan: every decoding sequence feeds its one new token; prefills share a token budget.
        let mut budget = self.p.prefill_chunk;
        let plan: Vec<(usize, bool)> = self
            .running
            .iter()
            .map(|s| {
                let left = s.tokens.len() - s.fed;
                if s.fed < s.prompt_len {
                    let take = left.min(budget);
                    budget -= take;
                    (take, s.prompt_lp.is_some())
                } else {
                    (left, false)
                }
            })
            .collect();
        let result = {
            let mut inputs = Vec::new();
            for (s, &(take, all)) in self.running.iter_mut().zip(&plan) {
                if take == 0 {
                    continue;
                }
                let Seq {
                    tokens,
                    cache,
                    adapter,
                    fed,
                    ..
                } = s;
                inputs.push(SeqInput {
                    tokens: &tokens[*fed..*fed + take],
                    cache,
                    adapter: adapter.as_deref(),
                    all_logits: all,
                });
            }
            model.forward_batch(&mut inputs)
        };
        let outs = match result.and_then(|o| {
            o.into_iter()
                .map(|t| {
                    t.to_dtype(claas_model::DType::F32)?
                        .to_vec2::<f32>()
                        .map_err(Into::into)
                })
                .collect::<claas_model::Result<Vec<Vec<Vec<f32>>>>>()
        }) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("forward failed: {e}");
                let msg = e.to_string();
                let batch: Vec<usize> =
                    (0..self.running.len()).filter(|&i| plan[i].0 > 0).collect();
                let failed: Vec<Seq> = batch
                    .iter()
                    .rev()
                    .map(|&i| self.running.swap_remove(i))
                    .collect();
                self.retire(
                    failed.into_iter().map(|s| (s, FinishReason::Abort, None)),
                    Some(&msg),
                );
                return;
            }
        };

        let mut outs = outs.into_iter();
        let mut done: Vec<(usize, FinishReason, Option<u32>)> = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            let (take, _) = plan[i];
            if take == 0 {
                continue;
            }
            let Some(mut rows) = outs.next() else {
                break;
            };
            let start = s.fed;
            s.fed += take;
            if let Some((k, lps)) = s.prompt_lp.as_mut() {
                if start < s.prompt_len {
                    for (j, row) in rows.iter().enumerate() {
                        let pos = start + j + 1;
                        if pos < s.prompt_len {
                            let lp = log_softmax(row);
                            lps.push(Some(token_logprob(&lp, s.tokens[pos], *k)));
                        }
                    }
                    if s.fed >= s.prompt_len {
                        let _ = s.tx.send(Event::PromptLogprobs(std::mem::take(lps)));
                    }
                }
            }
            if s.fed < s.tokens.len() {
                continue; // still prefilling
            }
            let Some(mut row) = rows.pop() else {
                continue;
            };
            let p = s.params.clone();
            let raw_lp = p.logprobs.map(|k| (k, log_softmax(&row)));
            apply_penalties(&mut row, &p, &s.tokens, &s.counts);
            if s.generated() < p.min_tokens {
                for &t in p.eos_token_ids.iter().chain(&p.stop_token_ids) {
                    if let Some(x) = row.get_mut(t as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let tok = sample(&row, &p, &mut s.rng);
            let logprob = raw_lp.map(|(k, lp)| token_logprob(&lp, tok, k));
            s.tokens.push(tok);
            *s.counts.entry(tok).or_insert(0) += 1;
            metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);
            {
                let mut r = s.req.borrow_mut();
                if !r.first_token_seen {
                    r.first_token_seen = true;
                    metrics.ttft.observe(r.arrived.elapsed().as_secs_f64());
                }
            }
            if s.tx
                .send(Event::Token {
                    index: s.index,
                    token: tok,
                    logprob,
                })
                .is_err()
            {
                done.push((i, FinishReason::Abort, None));
                continue;
            }
            if p.stop_token_ids.contains(&tok) {
                done.push((i, FinishReason::Stop, Some(tok)));
            } else if !p.ignore_eos && p.eos_token_ids.contains(&tok) {
                done.push((i, FinishReason::Stop, None));
            } else if s.generated() >= p.max_tokens || s.tokens.len() >= self.p.max_model_len {
                done.push((i, FinishReason::Length, None));
            }
        }
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        let finished: Vec<_> = done
            .into_iter()
            .map(|(i, reason, stop)| (self.running.swap_remove(i), reason, stop))
            .collect();
        self.retire(finished.into_iter(), None);
    }

    /// Finishes sequences already taken out of `running` (with `error` sent first, if any).
    /// The gauge drops first, so a client that has its final event never then sees its request
    /// still counted as running.
    fn retire(
        &self,
        seqs: impl Iterator<Item = (Seq, FinishReason, Option<u32>)>,
        error: Option<&str>,
    ) {
        self.metrics
            .running
            .store(self.running.len(), Ordering::SeqCst);
        for (s, reason, stop) in seqs {
            if let Some(msg) = error {
                let _ = s.tx.send(Event::Error(msg.to_string()));
            }
            finish(&s, reason, stop, &self.metrics);
        }
    }
}
