//! The engine over the tiny fixture model: mixed-adapter continuous batching against the
//! PyTorch logits, seeds, n, back-pressure, cancellation, sleep, pause, validation, fair
//! chunked prefill.

use std::sync::Arc;

use claas_engine::{
    Engine, EngineConfig, EngineError, Event, GenerateRequest, PauseMode, SamplingParams,
    TokenLogprob,
};
use claas_model::{LoadOptions, LoraAdapter, Qwen3};

use claas_testkit::fixtures::{dir as fixtures, ids, log_softmax, matrix, read_json};

fn engine(cfg: EngineConfig) -> Engine {
    let model =
        Arc::new(Qwen3::load(&fixtures().join("tiny-qwen3"), &LoadOptions::default()).unwrap());
    let e = Engine::start(model, cfg, None).unwrap();
    e.load_adapter("r4", &fixtures().join("lora-r4")).unwrap();
    e
}

fn req(prompt: Vec<u32>, adapter: Option<&str>, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt,
        adapter: adapter.map(str::to_string),
        params,
        n: 1,
        prompt_logprobs: None,
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

type Drained = (
    Option<Vec<Option<TokenLogprob>>>,
    Vec<Vec<u32>>,
    Vec<String>,
);

/// Drains a handle: (prompt logprobs, tokens per sequence, finish reasons).
fn drain(mut h: claas_engine::RequestHandle, n: usize) -> Drained {
    let mut plp = None;
    let mut toks = vec![Vec::new(); n];
    let mut fin = vec![String::new(); n];
    let mut open = n;
    while open > 0 {
        match h
            .events
            .blocking_recv()
            .expect("engine closed the stream early")
        {
            Event::PromptLogprobs(v) => plp = Some(v),
            Event::Token { index, token, .. } => toks[index].push(token),
            Event::Finished { index, reason, .. } => {
                fin[index] = reason.as_str().to_string();
                open -= 1;
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    (plp, toks, fin)
}

#[test]
fn parity_mixed_adapter_chunked_batch_prompt_logprobs() {
    // A small step budget makes the longer prompts span several steps while the others decode
    // (all six sequences run together, sharing 7 tokens a step).
    let e = engine(EngineConfig {
        max_num_seqs: 6,
        max_num_batched_tokens: 7,
        ..EngineConfig::default()
    });
    let mut jobs = Vec::new();
    for (file, adapter) in [("forward.json", None), ("forward_lora.json", Some("r4"))] {
        let fx = read_json(file);
        for seq in fx["sequences"].as_array().unwrap() {
            let ids = ids(&seq["input_ids"]);
            let logits = matrix(&seq["logits"]);
            let mut r = req(ids.clone(), adapter, greedy(3));
            r.prompt_logprobs = Some(1);
            r.params.logprobs = Some(0);
            jobs.push((file, ids, logits, e.submit(r).unwrap()));
        }
    }
    for (file, ids, logits, h) in jobs {
        let (plp, toks, fin) = drain(h, 1);
        let plp = plp.expect("prompt logprobs");
        assert_eq!(plp.len(), ids.len());
        assert!(plp[0].is_none());
        for i in 1..ids.len() {
            let want = log_softmax(&logits[i - 1]);
            let got = plp[i].as_ref().unwrap();
            assert_eq!(got.token, ids[i]);
            let err = (got.logprob as f64 - want[ids[i] as usize]).abs();
            assert!(err < 1e-4, "{file} position {i}: error {err}");
            let best = want.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert!((got.top[0].1 as f64 - best).abs() < 1e-4);
        }
        // first generated token = argmax of the last fixture row
        let last = log_softmax(logits.last().unwrap());
        let argmax = (0..last.len())
            .max_by(|&a, &b| last[a].partial_cmp(&last[b]).unwrap())
            .unwrap();
        assert_eq!(toks[0][0] as usize, argmax, "{file}");
        assert_eq!(toks[0].len(), 3);
        assert_eq!(fin[0], "length");
    }
}

#[test]
fn seeds_repeat_and_n_sequences_differ() {
    let e = engine(EngineConfig::default());
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(99),
        max_tokens: 20,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let run = |adapter| {
        let mut r = req(vec![5, 6, 7, 8], adapter, params.clone());
        r.n = 3;
        drain(e.submit(r).unwrap(), 3).1
    };
    let a = run(Some("r4"));
    let b = run(Some("r4"));
    assert_eq!(a, b, "same seed, same outputs");
    assert!(a.iter().all(|s| s.len() == 20));
    assert!(
        a[0] != a[1] || a[1] != a[2],
        "the n samples of one request should not all coincide"
    );
    // stop token ids end a sequence with that token
    let first = a[0][0];
    let mut p = params.clone();
    p.stop_token_ids = vec![first];
    let mut r = req(vec![5, 6, 7, 8], Some("r4"), p);
    r.n = 1;
    let (_, toks, fin) = drain(e.submit(r).unwrap(), 1);
    assert_eq!(toks[0], vec![first]);
    assert_eq!(fin[0], "stop");
}

#[test]
fn validation_errors() {
    let e = engine(EngineConfig::default());
    let err = |r| e.submit(r).err().expect("must fail");
    assert!(matches!(
        err(req(vec![], None, greedy(1))),
        EngineError::EmptyPrompt
    ));
    assert!(matches!(
        err(req(vec![1, 5000], None, greedy(1))),
        EngineError::TokenOutOfRange { .. }
    ));
    assert!(matches!(
        err(req(vec![1; 500], None, greedy(100))),
        EngineError::TooLong { .. }
    ));
    assert!(matches!(
        err(req(vec![1], Some("nope"), greedy(1))),
        EngineError::UnknownAdapter(_)
    ));
    let bad = SamplingParams {
        top_p: 0.0,
        ..greedy(1)
    };
    assert!(matches!(
        err(req(vec![1], None, bad)),
        EngineError::InvalidParams(_)
    ));
    // adapter of another model shape is refused at load
    let other = Arc::new(
        LoraAdapter::init(
            &claas_model::LoraInit {
                r: 2,
                lora_alpha: 4.0,
                target_modules: vec!["q_proj".into()],
                use_rslora: false,
                base_model_name_or_path: None,
            },
            &{
                let mut c = e.model_config().clone();
                c.hidden_size *= 2;
                c
            },
            1,
            &claas_model::Device::Cpu,
        )
        .unwrap(),
    );
    assert!(matches!(
        e.load_adapter_from("x", other),
        Err(EngineError::Adapter(_))
    ));
    assert!(e.adapter("x").is_none());
}

/// Requests that cannot finish while a test looks at them, however loaded the machine: the
/// built-in model allows 40960 positions (the fixture model only 512).
const LONG: usize = 30_000;

#[test]
fn back_pressure_and_cancel() {
    let dir = claas_model::resolve_model("builtin:tiny").unwrap();
    let model = Arc::new(Qwen3::load(&dir, &LoadOptions::default()).unwrap());
    let e = Engine::start(
        model,
        EngineConfig {
            max_num_seqs: 1,
            max_queue: 2,
            ..EngineConfig::default()
        },
        None,
    )
    .unwrap();
    let mut handles = Vec::new();
    let mut full = false;
    for _ in 0..4 {
        match e.submit(req(vec![1, 2, 3], None, greedy(LONG))) {
            Ok(h) => handles.push(h),
            Err(EngineError::QueueFull(_)) => {
                full = true;
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(
        full,
        "a 1-slot engine with a 2-request queue must refuse the 4th long request"
    );
    // dropping every receiver cancels the requests and frees the slots
    drop(handles);
    // The engine frees the queue at its next step; until then QueueFull is the right answer.
    let h = loop {
        match e.submit(req(vec![1, 2, 3], None, greedy(2))) {
            Ok(h) => break h,
            Err(EngineError::QueueFull(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            Err(other) => panic!("{other}"),
        }
    };
    let (_, toks, _) = drain(h, 1);
    assert_eq!(toks[0].len(), 2);
    let m = e.metrics();
    assert!(
        m.requests_aborted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // explicit cancel of one sequence
    let h = e.submit(req(vec![1, 2, 3], None, greedy(LONG))).unwrap();
    h.cancel(0);
    let (_, toks, fin) = drain(h, 1);
    assert_eq!(fin[0], "abort");
    assert!(toks[0].len() < LONG);
}

#[test]
fn sleep_without_loader() {
    let e = engine(EngineConfig::default());
    // level 2 needs a loader; level 1 refuses requests until wake
    assert!(matches!(e.sleep(2), Err(EngineError::SleepMode(_))));
    assert_eq!(e.sleep_level(), 0);
    let before = drain(e.submit(req(vec![4, 5], Some("r4"), greedy(8))).unwrap(), 1).1;
    let rep = e.sleep(1).unwrap();
    assert_eq!(rep.level, 1);
    assert!(matches!(
        e.submit(req(vec![4, 5], None, greedy(1))),
        Err(EngineError::Sleeping)
    ));
    e.wake_up().unwrap();
    let after = drain(e.submit(req(vec![4, 5], Some("r4"), greedy(8))).unwrap(), 1).1;
    assert_eq!(before, after);
}

#[test]
fn max_loras_limits_distinct_adapters_per_batch() {
    let e = engine(EngineConfig {
        max_loras: Some(1),
        ..EngineConfig::default()
    });
    // Same files, second registration: a distinct adapter as far as batching goes.
    e.load_adapter("r4-copy", &fixtures().join("lora-r4"))
        .unwrap();
    let mut long = e
        .submit(req(vec![1, 2, 3], Some("r4"), greedy(300)))
        .unwrap();
    let other = e
        .submit(req(vec![1, 2, 3], Some("r4-copy"), greedy(3)))
        .unwrap();
    let base = e.submit(req(vec![1, 2, 3], None, greedy(3))).unwrap();
    // The base model is not an adapter: it runs beside the long request.
    assert_eq!(drain(base, 1).1[0].len(), 3);
    // The second adapter only starts once the first has left the batch, so by the time it is
    // done every event of the long request has already been sent.
    assert_eq!(drain(other, 1).1[0].len(), 3);
    let mut tokens = 0;
    let finished = loop {
        match long.events.try_recv() {
            Ok(Event::Token { .. }) => tokens += 1,
            Ok(Event::Finished { reason, .. }) => break Some(reason),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    assert_eq!(
        finished.map(|r| r.as_str()),
        Some("length"),
        "the second adapter ran while the first was still in the batch ({tokens} tokens in)"
    );
    assert_eq!(tokens, 300);
}

fn builtin_engine(max_num_seqs: usize) -> Engine {
    let dir = claas_model::resolve_model("builtin:tiny").unwrap();
    let model = Arc::new(Qwen3::load(&dir, &LoadOptions::default()).unwrap());
    let cfg = EngineConfig {
        max_num_seqs,
        ..EngineConfig::default()
    };
    Engine::start(model, cfg, None).unwrap()
}

/// Blocks until the request has produced its first token (so it is running).
fn first_token(h: &mut claas_engine::RequestHandle) -> u32 {
    loop {
        match h.events.blocking_recv().expect("stream closed early") {
            Event::Token { token, .. } => return token,
            Event::Error(e) => panic!("engine error: {e}"),
            _ => {}
        }
    }
}

#[test]
fn pause_holds_new_requests_until_resume() {
    let e = engine(EngineConfig::default());
    let want = drain(e.submit(req(vec![4, 5], Some("r4"), greedy(8))).unwrap(), 1).1;
    assert!(!e.is_paused());
    e.pause(PauseMode::Abort).unwrap();
    assert!(e.is_paused());
    // Accepted, not rejected, while paused.
    let mut held = e.submit(req(vec![4, 5], Some("r4"), greedy(8))).unwrap();
    // A `wait` pause answers once nothing runs. The engine takes messages in order, so the
    // request above is queued by now; had it been scheduled, this would block until it
    // finished and its events would be waiting below.
    e.pause(PauseMode::Wait).unwrap();
    assert!(matches!(
        held.events.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Empty)
    ));
    let m = e.metrics();
    assert_eq!(m.waiting.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(m.running.load(std::sync::atomic::Ordering::SeqCst), 0);
    e.resume().unwrap();
    assert!(!e.is_paused());
    assert_eq!(drain(held, 1).1, want);
}

#[test]
fn pause_abort_ends_running_and_queued_requests() {
    let e = builtin_engine(1);
    let mut running = e.submit(req(vec![1, 2, 3], None, greedy(LONG))).unwrap();
    let queued = e.submit(req(vec![1, 2, 3], None, greedy(LONG))).unwrap();
    first_token(&mut running);
    e.pause(PauseMode::Abort).unwrap();
    let (_, toks, fin) = drain(running, 1);
    assert_eq!(fin[0], "abort");
    assert!(toks[0].len() < LONG);
    let (_, toks, fin) = drain(queued, 1);
    assert_eq!(fin[0], "abort");
    assert!(toks[0].is_empty());
    // New requests wait for the resume, then run normally.
    let later = e.submit(req(vec![1, 2, 3], None, greedy(4))).unwrap();
    e.resume().unwrap();
    let (_, toks, fin) = drain(later, 1);
    assert_eq!((toks[0].len(), fin[0].as_str()), (4, "length"));
}

#[test]
fn pause_wait_lets_running_requests_finish() {
    let e = builtin_engine(1);
    const N: usize = 1500;
    let want = drain(e.submit(req(vec![7, 8, 9], None, greedy(N))).unwrap(), 1).1;
    let mut running = e.submit(req(vec![7, 8, 9], None, greedy(N))).unwrap();
    let first = first_token(&mut running);
    e.pause(PauseMode::Wait).unwrap();
    assert!(e.is_paused());
    // Every event was sent before the pause answered.
    let mut toks = vec![first];
    let reason = loop {
        match running.events.try_recv() {
            Ok(Event::Token { token, .. }) => toks.push(token),
            Ok(Event::Finished { reason, .. }) => break reason,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(reason.as_str(), "length");
    assert_eq!(vec![toks], want);
    e.resume().unwrap();
}

#[test]
fn pause_keep_freezes_and_resume_continues() {
    let e = builtin_engine(4);
    const N: usize = 600;
    let want = drain(e.submit(req(vec![7, 8, 9], None, greedy(N))).unwrap(), 1).1;
    let mut running = e.submit(req(vec![7, 8, 9], None, greedy(N))).unwrap();
    let first = first_token(&mut running);
    e.pause(PauseMode::Keep).unwrap();
    assert!(e.is_paused());
    e.resume().unwrap();
    // The frozen sequence kept its cache and carries on to the same greedy output.
    let (_, rest, fin) = drain(running, 1);
    assert_eq!(fin[0], "length");
    let mut toks = vec![first];
    toks.extend(&rest[0]);
    assert_eq!(vec![toks], want);
}

#[test]
fn token_budget_below_max_num_seqs_is_refused() {
    let model =
        Arc::new(Qwen3::load(&fixtures().join("tiny-qwen3"), &LoadOptions::default()).unwrap());
    let cfg = EngineConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 7,
        ..EngineConfig::default()
    };
    match Engine::start(model, cfg, None) {
        Err(EngineError::InvalidParams(m)) => assert!(m.contains("max_num_batched_tokens"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a budget that cannot fit every decode was accepted"),
    }
}

#[test]
fn short_request_finishes_while_a_long_prompt_is_still_prefilling() {
    // 4096 tokens take 8 steps of the default 512-token budget to prefill (the fixture model
    // allows only 512 positions; the built-in one 40960).
    let e = builtin_engine(4);
    let long_prompt: Vec<u32> = (0..4096u32).map(|i| 1 + i % 900).collect();
    // Paused, both requests queue and are admitted in the same step, the long one first.
    e.pause(PauseMode::Keep).unwrap();
    let mut long = e.submit(req(long_prompt, None, greedy(1))).unwrap();
    let mut short = e.submit(req(vec![1, 2], None, greedy(2))).unwrap();
    e.resume().unwrap();
    // The long request's first token comes once its prompt is prefilled. The engine thread sent
    // every earlier event before it, so the short request's events are all there already: no
    // waiting, no timing.
    first_token(&mut long);
    let mut toks = 0;
    let finished = loop {
        match short.events.try_recv() {
            Ok(Event::Token { .. }) => toks += 1,
            Ok(Event::Finished { reason, .. }) => break Some(reason),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break None,
        }
    };
    assert_eq!(
        finished.map(|r| r.as_str()),
        Some("length"),
        "the short request had {toks} tokens and no finish when the long prompt was prefilled"
    );
    assert_eq!(toks, 2);
    // The long one then completes normally.
    let (_, rest, fin) = drain(long, 1);
    assert!(rest[0].is_empty());
    assert_eq!(fin[0], "length");
}

#[test]
fn constrained_sequences_share_a_batch_with_free_ones() {
    // Constrained and unconstrained sequences decode in the same steps (the masks are computed
    // while the forward runs): each constrained one is a choice and stops there; the free one
    // is untouched by them and runs to max_tokens.
    let tok =
        claas_chat::Tokenizer::from_file(fixtures().join("tiny-qwen3/tokenizer.json")).unwrap();
    let e = engine(EngineConfig::default());
    let vocab = e.model_config().vocab_size;
    let eos = e.model_config().eos_token_ids[0];
    let c = claas_constrain::Constrainer::new(tok.hf(), vocab, eos).unwrap();
    let choices = ["alpha beta", "gamma", "delta epsilon zeta"];
    let grammar = c
        .compile(&claas_constrain::Constraint::Choice(
            choices.iter().map(|s| s.to_string()).collect(),
        ))
        .unwrap();
    let prompt = tok.encode("Pick one:", false).unwrap();
    let free = e.submit(req(prompt.clone(), None, greedy(12))).unwrap();
    let mut p = greedy(40);
    p.temperature = 1.0;
    p.seed = Some(5);
    p.eos_token_ids = vec![eos];
    p.ignore_eos = false;
    p.constraint = Some(grammar.clone());
    let mut r = req(prompt.clone(), Some("r4"), p.clone());
    r.n = 4;
    let constrained = e.submit(r).unwrap();
    let (_, toks, fin) = drain(constrained, 4);
    for (t, f) in toks.iter().zip(&fin) {
        let text = tok.decode(t, false).unwrap();
        assert!(choices.contains(&text.as_str()), "{text:?}");
        assert_eq!(f, "stop");
    }
    let (_, free_toks, free_fin) = drain(free, 1);
    assert_eq!((free_toks[0].len(), free_fin[0].as_str()), (12, "length"));
    // Alone, the free request gives the same tokens: the batch's masks never touched it.
    let (_, alone, _) = drain(e.submit(req(prompt.clone(), None, greedy(12))).unwrap(), 1);
    assert_eq!(alone, free_toks);
    // A grammar longer than max_tokens ends with "length".
    let long = c
        .compile(&claas_constrain::Constraint::Regex("[0-9]{40}".into()))
        .unwrap();
    p.constraint = Some(long);
    p.max_tokens = 5;
    let (_, t, f) = drain(e.submit(req(prompt, None, p)).unwrap(), 1);
    assert_eq!((t[0].len(), f[0].as_str()), (5, "length"));
    let text = tok.decode(&t[0], false).unwrap();
    assert!(text.chars().all(|c| c.is_ascii_digit()), "{text:?}");
}
