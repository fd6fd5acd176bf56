//! Automatic prefix caching over the tiny fixture model: a request served from cached blocks
//! gives the logprobs and tokens of one computed from scratch, a reloaded adapter never reads
//! its old version's blocks, eviction keeps within the budget, and the metrics count tokens as
//! vLLM does.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use claas_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams, TokenLogprob};
use claas_model::{LoadOptions, Qwen3};
use claas_testkit::fixtures::dir as fixtures;

/// Tokens per cached block (the engine's `BLOCK_SIZE`).
const BLOCK: usize = 16;
/// The fixture's vocabulary: logprobs of every token are asked for, so whole distributions are
/// compared.
const VOCAB: usize = 1005;

/// Largest difference allowed between a logprob computed with cached keys and values and one
/// computed from scratch. The cached blocks hold exactly the values the first request computed,
/// but the rest of the prompt then runs as a shorter chunk, and matmuls over a different number
/// of rows (and the LoRA path, row-wise up to 64 rows, matmuls beyond) may sum in another order:
/// f32 rounding, ~1e-6 here. Anything near 1e-4 would be a real bug (wrong positions, another
/// adapter's keys).
const TOL: f32 = 1e-5;

fn model() -> Arc<Qwen3> {
    Arc::new(Qwen3::load(&fixtures().join("tiny-qwen3"), &LoadOptions::default()).unwrap())
}

fn engine(prefix: bool, budget: Option<usize>) -> Engine {
    let mut cfg = EngineConfig {
        enable_prefix_caching: prefix,
        ..EngineConfig::default()
    };
    if let Some(b) = budget {
        cfg.kv_cache_memory_bytes = b;
    }
    let e = Engine::start(model(), cfg, None).unwrap();
    e.load_adapter("r4", &fixtures().join("lora-r4")).unwrap();
    e
}

/// Deterministic prompt tokens (never the fixture's special ids, 1000 and up).
fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(37) + salt * 101 + 5) % 997)
        .collect()
}

/// Generated tokens, each one's full distribution, and the prompt logprobs if asked for.
struct Out {
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
}

fn run(e: &Engine, prompt: &[u32], adapter: Option<&str>, prompt_logprobs: bool) -> Out {
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        adapter: adapter.map(str::to_string),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: 6,
            ignore_eos: true,
            logprobs: Some(VOCAB),
            ..SamplingParams::default()
        },
        n: 1,
        prompt_logprobs: prompt_logprobs.then_some(VOCAB),
    };
    let mut h = e.submit(req).unwrap();
    let mut out = Out {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        prompt_logprobs: None,
    };
    loop {
        match h.events.blocking_recv().expect("stream closed early") {
            Event::PromptLogprobs(v) => out.prompt_logprobs = Some(v),
            Event::Token { token, logprob, .. } => {
                out.tokens.push(token);
                out.logprobs.push(logprob.expect("logprobs were asked for"));
            }
            Event::Finished { .. } => return out,
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
}

/// Largest difference between two full distributions (each sorted by token id first).
fn max_diff(a: &TokenLogprob, b: &TokenLogprob) -> f32 {
    let sorted = |t: &TokenLogprob| {
        let mut v = t.top.clone();
        v.sort_by_key(|x| x.0);
        v
    };
    let (a, b) = (sorted(a), sorted(b));
    assert_eq!(a.len(), VOCAB);
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert_eq!(x.0, y.0);
            (x.1 - y.1).abs()
        })
        .fold(0.0, f32::max)
}

/// Same tokens, and distributions within [`TOL`]; returns the largest difference seen.
fn assert_same(got: &Out, want: &Out, what: &str) -> f32 {
    assert_eq!(got.tokens, want.tokens, "{what}: greedy tokens differ");
    let mut worst = 0f32;
    for (i, (g, w)) in got.logprobs.iter().zip(&want.logprobs).enumerate() {
        let d = max_diff(g, w);
        assert!(d <= TOL, "{what}: token {i}: logprobs differ by {d}");
        worst = worst.max(d);
    }
    worst
}

fn hits(e: &Engine) -> u64 {
    e.metrics().prefix_cache_hits.get()
}

fn queries(e: &Engine) -> u64 {
    e.metrics().prefix_cache_queries.get()
}

#[test]
fn a_growing_chat_reads_its_history_from_the_cache_and_gets_the_same_logprobs() {
    let cached = engine(true, None);
    let plain = engine(false, None);
    for adapter in [None, Some("r4")] {
        // Three turns, each resending the previous prompt plus new tokens.
        let mut p = prompt(37, 1);
        let mut worst = 0f32;
        for turn in 0..3u32 {
            let before = hits(&cached);
            let got = run(&cached, &p, adapter, false);
            let want = run(&plain, &p, adapter, false);
            let hit = hits(&cached) - before;
            if turn == 0 {
                assert_eq!(hit, 0);
            } else {
                // Every full block of the previous prompt and of its reply.
                assert!(hit >= (p.len() as u64 - 40) / BLOCK as u64 * BLOCK as u64);
            }
            assert!(
                hit < p.len() as u64,
                "the last prompt token is always computed"
            );
            worst = worst.max(assert_same(
                &got,
                &want,
                &format!("{adapter:?} turn {turn}"),
            ));
            p.extend_from_slice(&got.tokens);
            p.extend(prompt(34, turn + 7));
        }
        eprintln!("{adapter:?}: largest logprob difference with the cache: {worst:e}");
    }
    assert_eq!(plain.metrics().prefix_cache_queries.get(), 0);
    assert_eq!(plain.metrics().kv_cache_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_reloaded_adapter_never_reads_its_old_versions_blocks() {
    let e = engine(true, None);
    let plain = engine(false, None);
    e.load_adapter("me", &fixtures().join("lora-r4")).unwrap();
    let p = prompt(3 * BLOCK + 5, 2);
    run(&e, &p, Some("me"), false);
    // Same name, same prompt: version 1's blocks are read.
    let before = hits(&e);
    run(&e, &p, Some("me"), false);
    assert_eq!(hits(&e) - before, 3 * BLOCK as u64);

    // Training wrote new weights; the adapter is reloaded under the same name.
    e.load_adapter("me", &fixtures().join("lora-r4-after-step"))
        .unwrap();
    plain
        .load_adapter("me", &fixtures().join("lora-r4-after-step"))
        .unwrap();
    let before = hits(&e);
    let got = run(&e, &p, Some("me"), false);
    assert_eq!(
        hits(&e) - before,
        0,
        "a new version read the old one's blocks"
    );
    let want = run(&plain, &p, Some("me"), false);
    assert_same(&got, &want, "reloaded adapter");
    // The old version's logits really differ, so reading its blocks would have shown.
    let old = run(&plain, &p, Some("r4"), false);
    assert!(max_diff(&old.logprobs[0], &want.logprobs[0]) > 1e-3);
    // The new version's own blocks are read from now on, and give its logits.
    let before = hits(&e);
    let again = run(&e, &p, Some("me"), false);
    assert_eq!(hits(&e) - before, 3 * BLOCK as u64);
    assert_same(&again, &want, "reloaded adapter, cached");
    // Loading the same files again is another version too: no hit.
    e.load_adapter("me", &fixtures().join("lora-r4-after-step"))
        .unwrap();
    let before = hits(&e);
    run(&e, &p, Some("me"), false);
    assert_eq!(hits(&e) - before, 0);
}

#[test]
fn eviction_keeps_within_a_tiny_budget_and_serves_correctly() {
    // The fixture's keys and values: 2 layers × (k, v) × 2 heads × 16 dims × 4 bytes a token.
    let block_bytes = 2 * 2 * 2 * 16 * 4 * BLOCK;
    let budget = 5 * block_bytes;
    let e = engine(true, Some(budget));
    let plain = engine(false, None);
    assert_eq!(
        e.metrics().kv_cache_budget_bytes.load(Ordering::Relaxed),
        budget as u64
    );
    let prompts: Vec<Vec<u32>> = (0..6).map(|s| prompt(3 * BLOCK + 9, 10 + s)).collect();
    for round in 0..2 {
        for (i, p) in prompts.iter().enumerate() {
            let got = run(&e, p, None, false);
            let want = run(&plain, p, None, false);
            assert_same(&got, &want, &format!("round {round} prompt {i}"));
            let used = e.metrics().kv_cache_bytes.load(Ordering::Relaxed) as usize;
            assert!(used <= budget, "{used} bytes cached, budget {budget}");
            assert!(used > 0);
            assert!(e.metrics().kv_cache_usage() <= 1.0);
        }
    }
    // The last prompt's blocks are the most recent: still there.
    let before = hits(&e);
    run(&e, &prompts[5], None, false);
    assert_eq!(hits(&e) - before, 3 * BLOCK as u64);
    // The first one's were evicted long ago.
    let before = hits(&e);
    run(&e, &prompts[0], None, false);
    assert_eq!(hits(&e) - before, 0);
}

#[test]
fn metrics_count_tokens_and_prompt_logprobs_bypass_the_cache() {
    let e = engine(true, None);
    let plain = engine(false, None);
    let a = prompt(50, 3);
    run(&e, &a, None, false);
    assert_eq!((queries(&e), hits(&e)), (50, 0));
    // The blocks of a (3 full ones) are read by a longer prompt that starts with them.
    let mut b = a.clone();
    b.extend(prompt(20, 4));
    run(&e, &b, None, false);
    assert_eq!((queries(&e), hits(&e)), (120, 48));
    let used = e.metrics().kv_cache_bytes.load(Ordering::Relaxed);
    assert!(used > 0);
    assert!(e.metrics().kv_cache_usage() > 0.0);

    // Prompt logprobs need every position's logits: no lookup, nothing counted, and the
    // values are those of the uncached engine.
    let got = run(&e, &b, None, true);
    assert_eq!((queries(&e), hits(&e)), (120, 48));
    let want = run(&plain, &b, None, true);
    let (g, w) = (
        got.prompt_logprobs.as_ref().unwrap(),
        want.prompt_logprobs.as_ref().unwrap(),
    );
    assert_eq!(g.len(), b.len());
    for (i, (g, w)) in g.iter().zip(w).enumerate().skip(1) {
        let d = max_diff(g.as_ref().unwrap(), w.as_ref().unwrap());
        assert!(d <= TOL, "prompt position {i}: {d}");
    }
    assert_same(&got, &want, "prompt logprobs request");

    // Reset empties it.
    e.reset_prefix_cache().unwrap();
    assert_eq!(e.metrics().kv_cache_bytes.load(Ordering::Relaxed), 0);
    run(&e, &b, None, false);
    assert_eq!(hits(&e), 48);
    // So does sleep.
    e.sleep(1).unwrap();
    assert_eq!(e.metrics().kv_cache_bytes.load(Ordering::Relaxed), 0);
    e.wake_up().unwrap();
    run(&e, &b, None, false);
    assert_eq!(hits(&e), 48);
}
