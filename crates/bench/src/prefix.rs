//! Prefix-caching benchmark (not a test): a growing chat on a Qwen3-0.6B-shaped random model, as
//! `claas bench prefix` prints it. Every turn resends the whole history (system prompt, earlier
//! questions and the replies the model generated) plus a new question, as a chat client does;
//! the time to first token of each turn is measured with the prefix cache and without. The
//! target of issue 10: turn 10's TTFT at most 1.2× turn 1's with the cache.

use std::sync::Arc;
use std::time::Instant;

use claas_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams};
use claas_model::Qwen3;
use rand::{Rng, SeedableRng};

use crate::model::{qwen3_0_6b_config, random_model};
use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct PrefixOptions {
    pub turns: usize,
    /// Tokens of the system prompt (first turn only).
    pub system_len: usize,
    /// Tokens of each new user message (template tokens included).
    pub user_len: usize,
    /// Tokens of each generated reply (EOS ignored); they join the history.
    pub reply_len: usize,
    /// Override the number of layers (28 in Qwen3-0.6B) for a quicker, smaller run.
    pub layers: Option<usize>,
    pub seed: u64,
}

impl Default for PrefixOptions {
    fn default() -> Self {
        PrefixOptions {
            turns: 10,
            system_len: 160,
            user_len: 40,
            reply_len: 24,
            layers: None,
            seed: 0,
        }
    }
}

/// One turn, measured with and without the cache.
#[derive(Debug, Clone)]
pub struct PrefixRow {
    pub prompt_tokens: usize,
    /// Prompt tokens read from the cache (not computed).
    pub cached_tokens: u64,
    pub ttft_cached: f64,
    pub ttft_uncached: f64,
}

/// Generates `reply_len` tokens for `prompt`; returns (time to first token, the tokens).
fn turn(e: &Engine, prompt: &[u32], reply_len: usize) -> Result<(f64, Vec<u32>), BenchError> {
    let start = Instant::now();
    let mut h = e.submit(GenerateRequest {
        prompt: prompt.to_vec(),
        adapter: None,
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: reply_len,
            ignore_eos: true,
            ..SamplingParams::default()
        },
        n: 1,
        prompt_logprobs: None,
    })?;
    let mut ttft = None;
    let mut reply = Vec::new();
    loop {
        match h.events.blocking_recv() {
            Some(Event::Token { token, .. }) => {
                ttft.get_or_insert(start.elapsed().as_secs_f64());
                reply.push(token);
            }
            Some(Event::Finished { .. }) => break,
            Some(Event::PromptLogprobs(_)) => {}
            Some(Event::Error(e)) => return Err(BenchError::Other(format!("turn failed: {e}"))),
            None => return Err(BenchError::Other("engine closed the stream".into())),
        }
    }
    let ttft = ttft.ok_or_else(|| BenchError::Other("a turn produced no token".into()))?;
    Ok((ttft, reply))
}

/// One turn as played: prompt tokens, cached tokens, TTFT, the reply.
type Played = (usize, u64, f64, Vec<u32>);

/// Plays the chat on `e`: per turn (prompt tokens, cached tokens, TTFT). The user messages are
/// fixed by the seed, the replies are the model's, so both engines see the same prompts as
/// long as their greedy replies agree (checked by the caller).
fn chat(e: &Engine, opts: &PrefixOptions, vocab: u32) -> Result<Vec<Played>, BenchError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut words = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(1..vocab)).collect() };
    // Warm-up: thread pools and first-touch allocations, on tokens no turn starts with.
    turn(e, &[0; 8], 1)?;
    let mut history = words(opts.system_len);
    let mut rows = Vec::new();
    for _ in 0..opts.turns {
        history.extend(words(opts.user_len));
        let hits = e.metrics().prefix_cache_hits.get();
        let (ttft, reply) = turn(e, &history, opts.reply_len)?;
        let cached = e.metrics().prefix_cache_hits.get() - hits;
        rows.push((history.len(), cached, ttft, reply.clone()));
        history.extend(reply);
    }
    Ok(rows)
}

/// Runs the chat with the cache, then without, on one shared random model.
pub fn run(opts: &PrefixOptions) -> Result<Vec<PrefixRow>, BenchError> {
    let mut cfg = qwen3_0_6b_config();
    if let Some(l) = opts.layers {
        cfg.num_hidden_layers = l;
    }
    let model: Arc<Qwen3> = Arc::new(random_model(&cfg)?);
    let vocab = cfg.vocab_size as u32;
    let start = |enable_prefix_caching| {
        Engine::start(
            model.clone(),
            EngineConfig {
                enable_prefix_caching,
                ..EngineConfig::default()
            },
            None,
        )
    };
    let with = chat(&start(true)?, opts, vocab)?;
    let without = chat(&start(false)?, opts, vocab)?;
    with.into_iter()
        .zip(without)
        .map(|(w, wo)| {
            if w.3 != wo.3 {
                return Err(BenchError::Other(
                    "the cached and uncached engines generated different replies".into(),
                ));
            }
            Ok(PrefixRow {
                prompt_tokens: w.0,
                cached_tokens: w.1,
                ttft_cached: w.2,
                ttft_uncached: wo.2,
            })
        })
        .collect()
}

/// Prints the table and the last turn's TTFT over the first's, with and without the cache.
pub fn print_report(opts: &PrefixOptions, rows: &[PrefixRow]) {
    let layers = opts.layers.unwrap_or(28);
    println!(
        "growing chat, Qwen3-0.6B shape ({layers} layers), random weights: {}-token system prompt, \
         {}-token questions, {}-token replies",
        opts.system_len, opts.user_len, opts.reply_len
    );
    println!(
        "{:>4}  {:>7}  {:>7}  {:>12}  {:>12}",
        "turn", "prompt", "cached", "TTFT cached", "TTFT no cache"
    );
    for (i, r) in rows.iter().enumerate() {
        println!(
            "{:>4}  {:>7}  {:>7}  {:>11.3}s  {:>12.3}s",
            i + 1,
            r.prompt_tokens,
            r.cached_tokens,
            r.ttft_cached,
            r.ttft_uncached
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "turn {} / turn 1 TTFT: {:.2}x with the prefix cache (target <= 1.2x), {:.2}x without",
            rows.len(),
            last.ttft_cached / first.ttft_cached,
            last.ttft_uncached / first.ttft_uncached
        );
    }
}
