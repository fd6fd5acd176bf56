//! The step loop on the engine thread. Between steps it takes messages (requests, pause,
//! sleep); each step then runs six phases:
//!
//! 1. **sweep**: drop cancelled or disconnected sequences, queued or running;
//! 2. **admit**: move queued sequences into the running batch (`admission`: `max_num_seqs`,
//!    `max_loras`; nothing while paused), each starting from the longest prefix of its prompt
//!    the prefix cache holds (`prefix_cache`);
//! 3. **plan**: choose this step's decodes and prefill chunks under the token budget (`plan`:
//!    decodes first, prefills share the rest);
//! 4. **forward**: one packed `forward_batch` over every planned sequence, mixed adapters;
//! 5. **emit**: prompt logprobs, sampling, and the token and finish events; a prompt just
//!    prefilled gives its full blocks to the prefix cache;
//! 6. **retire**: take finished sequences out of the batch, cache the full blocks of what they
//!    generated, and send their final events.
//!
//! Metrics invariants (a reader that loads `waiting` and then `running`, as a drain does, must
//! never see a live request as neither, nor a finished one as still running):
//! - on admission `running` rises before `waiting` falls;
//! - on retirement the `running` gauge drops before the sequence's final event is sent;
//! - an abort is counted (`requests_aborted`) before the request counts as finished.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claas_model::{KvCache, LoraAdapter, Qwen3, SeqInput};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc::UnboundedSender;

use crate::admission::{AdapterKey, Limits, Queue, Queued};
use crate::engine::{rss_bytes, ModelLoader, Msg, PauseMode, Pending, SleepReport};
use crate::plan::{plan, Work};
use crate::prefix_cache::{Identity, PrefixCache, BLOCK_SIZE};
use crate::sampling::{apply_penalties, log_softmax, sample, token_logprob};
use crate::{EngineError, Event, FinishReason, Metrics, SamplingParams, TokenLogprob};

pub(crate) struct SchedulerParams {
    pub max_num_seqs: usize,
    /// Tokens fed per step at most; at least `max_num_seqs`.
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
    pub max_loras: Option<usize>,
    pub seed: u64,
    /// The prefix cache's budget in bytes; `None` = prefix caching off.
    pub prefix_cache_bytes: Option<usize>,
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
    /// Registered adapter name, for the metrics' adapter lists.
    adapter: Option<String>,
}

struct Seq {
    index: usize,
    tokens: Vec<u32>,
    prompt_len: usize,
    fed: usize,
    cache: KvCache,
    adapter: Option<Arc<LoraAdapter>>,
    /// Prefix-cache identity: the adapter's load generation, 0 for the base model.
    identity: Identity,
    params: Arc<SamplingParams>,
    rng: StdRng,
    tx: UnboundedSender<Event>,
    cancel: Arc<Vec<AtomicBool>>,
    /// `(top n, collected so far)` when prompt logprobs were asked for (sequence 0 only).
    prompt_lp: Option<(usize, Vec<Option<TokenLogprob>>)>,
    counts: HashMap<u32, u32>,
    req: Rc<RefCell<ReqState>>,
    /// When this sequence's previous token was sampled (inter-token latency).
    last_token_at: Option<Instant>,
}

impl Queued for Seq {
    fn adapter_key(&self) -> Option<AdapterKey> {
        self.adapter.as_ref().map(|a| Arc::as_ptr(a) as AdapterKey)
    }
}

/// How a sequence ended: reason and the stop token that ended it, if any.
type Ending = (FinishReason, Option<u32>);

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn prefilling(&self) -> bool {
        self.fed < self.prompt_len
    }

    fn cancelled(&self) -> bool {
        self.tx.is_closed() || self.cancel[self.index].load(Ordering::Relaxed)
    }

    /// Takes this step's output rows for the `take` tokens just fed: prompt logprobs while
    /// prefilling, then (once everything is fed) samples and sends the next token. Returns how
    /// the sequence ended, if it did.
    fn emit(
        &mut self,
        take: usize,
        mut rows: Vec<Vec<f32>>,
        metrics: &Metrics,
        max_model_len: usize,
    ) -> Option<Ending> {
        let start = self.fed;
        self.fed += take;
        if start < self.prompt_len {
            self.collect_prompt_logprobs(start, &rows);
        }
        if self.fed < self.tokens.len() {
            return None; // still prefilling
        }
        let row = rows.pop()?;
        let (tok, logprob) = self.sample(row);
        metrics.generation_tokens.inc();
        let now = Instant::now();
        if let Some(prev) = self.last_token_at.replace(now) {
            metrics.tpot.observe((now - prev).as_secs_f64());
        }
        {
            let mut r = self.req.borrow_mut();
            if !r.first_token_seen {
                r.first_token_seen = true;
                metrics.ttft.observe((now - r.arrived).as_secs_f64());
            }
        }
        let sent = self.tx.send(Event::Token {
            index: self.index,
            token: tok,
            logprob,
        });
        let p = &self.params;
        if sent.is_err() {
            Some((FinishReason::Abort, None))
        } else if p.stop_token_ids.contains(&tok) {
            Some((FinishReason::Stop, Some(tok)))
        } else if !p.ignore_eos && p.eos_token_ids.contains(&tok) {
            Some((FinishReason::Stop, None))
        } else if self.generated() >= p.max_tokens || self.tokens.len() >= max_model_len {
            Some((FinishReason::Length, None))
        } else {
            None
        }
    }

    /// Logprobs of the prompt tokens that the rows fed from `start` predict; sent as one event
    /// once the whole prompt is in.
    fn collect_prompt_logprobs(&mut self, start: usize, rows: &[Vec<f32>]) {
        let Some((k, lps)) = self.prompt_lp.as_mut() else {
            return;
        };
        for (j, row) in rows.iter().enumerate() {
            let pos = start + j + 1;
            if pos < self.prompt_len {
                let lp = log_softmax(row);
                lps.push(Some(token_logprob(&lp, self.tokens[pos], *k)));
            }
        }
        if self.fed >= self.prompt_len {
            let _ = self.tx.send(Event::PromptLogprobs(std::mem::take(lps)));
        }
    }

    /// Samples the next token from the last row of logits and appends it.
    fn sample(&mut self, mut row: Vec<f32>) -> (u32, Option<TokenLogprob>) {
        let p = self.params.clone();
        // Logprobs are of the model's distribution, before penalties (as vLLM's default).
        let raw_lp = p.logprobs.map(|k| (k, log_softmax(&row)));
        apply_penalties(&mut row, &p, &self.tokens, &self.counts);
        if self.generated() < p.min_tokens {
            for &t in p.eos_token_ids.iter().chain(&p.stop_token_ids) {
                if let Some(x) = row.get_mut(t as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let tok = sample(&row, &p, &mut self.rng);
        let logprob = raw_lp.map(|(k, lp)| token_logprob(&lp, tok, k));
        self.tokens.push(tok);
        *self.counts.entry(tok).or_insert(0) += 1;
        (tok, logprob)
    }
}

struct Loop {
    p: SchedulerParams,
    metrics: Arc<Metrics>,
    model: Option<Arc<Qwen3>>,
    loader: Option<ModelLoader>,
    waiting: Queue<Seq>,
    running: Vec<Seq>,
    pending_sleep: Option<(
        u8,
        std::sync::mpsc::Sender<Result<SleepReport, EngineError>>,
    )>,
    rng: StdRng,
    /// `None` when prefix caching is off.
    prefix: Option<PrefixCache>,
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
    if let Some(budget) = p.prefix_cache_bytes {
        metrics
            .kv_cache_budget_bytes
            .store(budget as u64, Ordering::Relaxed);
    }
    let mut l = Loop {
        rng: StdRng::seed_from_u64(p.seed),
        prefix: p.prefix_cache_bytes.map(PrefixCache::new),
        p,
        metrics,
        model: Some(model),
        loader,
        waiting: Queue::new(),
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
        l.publish_lora_activity();
    }
}

/// Ends one sequence. The counters move before the final event goes out, so a client that has
/// its reply never then reads metrics that miss its request.
fn finish(seq: &Seq, reason: FinishReason, stop_token: Option<u32>, metrics: &Metrics) {
    {
        let mut r = seq.req.borrow_mut();
        if r.waiting_counted {
            r.waiting_counted = false;
            metrics.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        r.remaining -= 1;
        if r.remaining == 0 {
            metrics.request_finished(reason);
            metrics.e2e.observe(r.arrived.elapsed().as_secs_f64());
        }
    }
    let _ = seq.tx.send(Event::Finished {
        index: seq.index,
        reason,
        stop_token,
    });
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
            Msg::ResetPrefixCache { reply } => {
                self.clear_prefix_cache();
                let _ = reply.send(());
            }
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
                for s in self.waiting.take_all() {
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
        // Sleep releases memory, and a level-2 wake reloads weights the blocks were computed
        // with: either way the cached blocks go (as vLLM's sleep discards its KV cache).
        self.clear_prefix_cache();
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
            adapter_version,
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
            adapter: req.adapter.clone(),
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
                identity: adapter_version,
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
                last_token_at: None,
            });
        }
    }

    /// Tells the metrics which adapters are running and waiting.
    fn publish_lora_activity(&self) {
        let names = |seqs: &mut dyn Iterator<Item = &Seq>| -> Vec<String> {
            seqs.filter_map(|s| s.req.borrow().adapter.clone())
                .collect()
        };
        self.metrics.set_lora_activity(
            names(&mut self.running.iter()),
            names(&mut self.waiting.iter()),
        );
    }

    /// Phase 1: drops cancelled or disconnected sequences before compute is spent on them.
    fn sweep(&mut self) {
        let aborted = take_where(&mut self.running, |_, s| s.cancelled().then_some(()));
        self.retire(
            aborted
                .into_iter()
                .map(|(s, ())| (s, FinishReason::Abort, None)),
            None,
        );
        for s in self.waiting.remove_where(Seq::cancelled) {
            finish(&s, FinishReason::Abort, None, &self.metrics);
        }
    }

    /// One scheduler step: the six phases of the module doc, in order.
    fn step(&mut self) {
        self.sweep();
        if self.pause == Pause::All {
            return;
        }
        self.admit();
        if self.running.is_empty() {
            return;
        }
        let Some(model) = self.model.clone() else {
            // Resumed while asleep at level 2 with sequences a `Keep` pause held: there are no
            // weights to run them on.
            let held = std::mem::take(&mut self.running);
            self.retire(
                held.into_iter().map(|s| (s, FinishReason::Abort, None)),
                Some(&EngineError::Sleeping.to_string()),
            );
            return;
        };
        let takes = self.plan();
        let outs = match self.forward(&model, &takes) {
            Ok(outs) => outs,
            Err(e) => {
                tracing::error!("forward failed: {e}");
                // Only the sequences in the failed batch: their caches may be half-written.
                let failed = take_where(&mut self.running, |i, _| (takes[i] > 0).then_some(()));
                self.retire(
                    failed
                        .into_iter()
                        .map(|(s, ())| (s, FinishReason::Abort, None)),
                    Some(&e.to_string()),
                );
                return;
            }
        };
        let endings = self.emit(&takes, outs);
        let done = take_where(&mut self.running, |i, _| endings[i]);
        self.retire(done.into_iter().map(|(s, (r, stop))| (s, r, stop)), None);
    }

    /// Phase 2: queued sequences join the batch, unless generation is paused.
    fn admit(&mut self) {
        if self.pause != Pause::Unpaused {
            return;
        }
        let limits = Limits {
            max_num_seqs: self.p.max_num_seqs,
            max_loras: self.p.max_loras,
        };
        let admitted = self.waiting.admit(
            self.running.len(),
            self.running.iter().map(Queued::adapter_key),
            limits,
        );
        for mut s in admitted {
            self.read_prefix_cache(&mut s);
            // Running goes up before waiting goes down: a reader that loads waiting first and
            // running second (as a drain does) never sees an admitted request as neither.
            let (req, prompt_len) = (s.req.clone(), s.prompt_len);
            self.running.push(s);
            self.metrics
                .running
                .store(self.running.len(), Ordering::SeqCst);
            let mut r = req.borrow_mut();
            if r.waiting_counted {
                r.waiting_counted = false;
                self.metrics.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics.prompt_tokens.inc_by(prompt_len as u64);
            }
        }
    }

    /// Phase 3: tokens each running sequence feeds this step (see `plan` for the policy).
    fn plan(&mut self) -> Vec<usize> {
        // Sequences on the same adapter side by side: the model applies each adapter once to a
        // contiguous block of rows instead of once per sequence. The sort is stable and the
        // batch is kept in admission order otherwise, so `plan` hands out its leftover tokens
        // oldest first within an adapter.
        self.running.sort_by_key(|s| s.adapter_key().unwrap_or(0));
        let work: Vec<Work> = self
            .running
            .iter()
            .map(|s| Work {
                left: s.tokens.len() - s.fed,
                fed: s.fed,
                prefilling: s.prefilling(),
            })
            .collect();
        plan(
            &work,
            self.p.max_num_batched_tokens,
            !self.waiting.is_empty(),
        )
    }

    /// Phase 4: one packed forward; the output rows (f32) of each sequence with `takes[i] > 0`,
    /// in batch order.
    fn forward(
        &mut self,
        model: &Qwen3,
        takes: &[usize],
    ) -> claas_model::Result<Vec<Vec<Vec<f32>>>> {
        let mut inputs = Vec::new();
        for (s, &take) in self.running.iter_mut().zip(takes) {
            if take == 0 {
                continue;
            }
            // Every row of a prefill chunk is needed only for prompt logprobs.
            let all_logits = s.prefilling() && s.prompt_lp.is_some();
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
                all_logits,
            });
        }
        model
            .forward_batch(&mut inputs)?
            .into_iter()
            .map(|t| {
                t.to_dtype(claas_model::DType::F32)?
                    .to_vec2::<f32>()
                    .map_err(Into::into)
            })
            .collect()
    }

    /// Phase 5: per sequence in the batch, how it ended this step, if it did.
    fn emit(&mut self, takes: &[usize], outs: Vec<Vec<Vec<f32>>>) -> Vec<Option<Ending>> {
        let mut outs = outs.into_iter();
        let mut endings = vec![None; self.running.len()];
        for (i, s) in self.running.iter_mut().enumerate() {
            if takes[i] == 0 {
                continue;
            }
            let Some(rows) = outs.next() else {
                break;
            };
            let was_prefilling = s.prefilling();
            endings[i] = s.emit(takes[i], rows, &self.metrics, self.p.max_model_len);
            if was_prefilling && !s.prefilling() {
                // Cached as soon as the prompt is in: concurrent requests that share it (a
                // system prompt) hit without waiting for this one to finish.
                write_prefix_cache(&mut self.prefix, &self.metrics, s);
            }
        }
        endings
    }

    /// Phase 6: finishes sequences already taken out of `running` (with `error` sent first, if
    /// any).
    /// The gauge drops first, so a client that has its final event never then sees its request
    /// still counted as running.
    /// A sequence whose forward failed (`error`) caches nothing: its cache may be half-written.
    fn retire(
        &mut self,
        seqs: impl Iterator<Item = (Seq, FinishReason, Option<u32>)>,
        error: Option<&str>,
    ) {
        self.metrics
            .running
            .store(self.running.len(), Ordering::SeqCst);
        for (s, reason, stop) in seqs {
            if let Some(msg) = error {
                let _ = s.tx.send(Event::Error(msg.to_string()));
            } else {
                // The blocks it generated: the next turn of a chat resends them.
                write_prefix_cache(&mut self.prefix, &self.metrics, &s);
            }
            finish(&s, reason, stop, &self.metrics);
        }
    }

    /// Starts a newly admitted sequence from the longest cached prefix of its prompt. The last
    /// prompt token is always computed (its logits pick the first token, as in vLLM), and a
    /// request for prompt logprobs reads nothing (it needs the logits of every position).
    fn read_prefix_cache(&mut self, s: &mut Seq) {
        let Some(pc) = self.prefix.as_mut() else {
            return;
        };
        if s.prompt_lp.is_some() || s.fed > 0 {
            return;
        }
        let chain = pc.lookup(s.identity, &s.tokens[..s.prompt_len - 1]);
        self.metrics
            .prefix_cache_queries
            .inc_by(s.prompt_len as u64);
        if chain.is_empty() {
            return;
        }
        let hit = chain.len() * BLOCK_SIZE;
        match pc.seed(&chain, s.prompt_len - hit) {
            Ok(cache) => {
                s.cache = cache;
                s.fed = hit;
                self.metrics.prefix_cache_hits.inc_by(hit as u64);
            }
            // The prompt is then computed from scratch, as without the cache.
            Err(e) => tracing::warn!("prefix cache: seeding failed: {e}"),
        }
    }

    fn clear_prefix_cache(&mut self) {
        if let Some(pc) = self.prefix.as_mut() {
            pc.clear();
            self.metrics.kv_cache_bytes.store(0, Ordering::Relaxed);
        }
    }
}

/// Gives the prefix cache the full blocks `s` holds keys and values for.
fn write_prefix_cache(prefix: &mut Option<PrefixCache>, metrics: &Metrics, s: &Seq) {
    let Some(pc) = prefix.as_mut() else {
        return;
    };
    if let Err(e) = pc.insert(s.identity, &s.tokens, &s.cache) {
        tracing::warn!("prefix cache: caching blocks failed: {e}");
    }
    metrics
        .kv_cache_bytes
        .store(pc.used_bytes() as u64, Ordering::Relaxed);
}

/// Takes out of `seqs` those for which `pick(index, seq)` is `Some`, keeping the rest in order
/// (the batch stays in admission order, which `plan` relies on for fairness).
fn take_where<T>(
    seqs: &mut Vec<Seq>,
    mut pick: impl FnMut(usize, &Seq) -> Option<T>,
) -> Vec<(Seq, T)> {
    let mut taken = Vec::new();
    let mut kept = Vec::with_capacity(seqs.len());
    for (i, s) in std::mem::take(seqs).into_iter().enumerate() {
        match pick(i, &s) {
            Some(t) => taken.push((s, t)),
            None => kept.push(s),
        }
    }
    *seqs = kept;
    taken
}
