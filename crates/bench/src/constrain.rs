//! Cost of structured output: batch-8 greedy decode on a Qwen3-0.6B-shaped random model with
//! the real Qwen3 tokenizer's 151k-token vocabulary, every sequence under a JSON schema vs
//! none, in the same process and interleaved (A B A B) so drift hits both alike. Also the
//! grammar's own cost per token (mask + commit) measured alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use claas_constrain::{Constrainer, Constraint, Grammar};
use claas_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::model::{qwen3_0_6b_config, random_model};
use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct ConstrainOptions {
    /// tokenizer.json of the vocabulary the masks cover (Qwen3's).
    pub tokenizer: std::path::PathBuf,
    pub concurrency: usize,
    pub max_tokens: usize,
    pub prompt_len: usize,
    /// Override the 28 layers for a quicker run.
    pub layers: Option<usize>,
    /// A/B rounds.
    pub rounds: usize,
}

/// Results: tokens/s per mode (best round) and the grammar's cost alone.
#[derive(Debug, Clone)]
pub struct ConstrainReport {
    pub unconstrained: Vec<f64>,
    pub constrained: Vec<f64>,
    /// Mean time of one mask computation + commit over a random walk, in microseconds.
    pub mask_us: f64,
    pub vocab: usize,
    pub concurrency: usize,
}

/// An object schema of the usual kind (nested objects, bounded strings, enums, integers)
/// whose list needs more items than any run emits, so no sequence finishes early and both
/// modes decode the same number of tokens.
pub fn bench_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "minItems": 1000,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 24},
                        "age": {"type": "integer", "minimum": 0, "maximum": 120},
                        "role": {"enum": ["admin", "user", "guest"]},
                        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}
                    },
                    "required": ["name", "age", "role", "tags"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["people"],
        "additionalProperties": false
    })
}

fn run_once(
    engine: &Engine,
    opts: &ConstrainOptions,
    grammar: Option<&Grammar>,
    rng: &mut rand::rngs::StdRng,
) -> Result<f64, BenchError> {
    let vocab = engine.model_config().vocab_size as u32;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..opts.concurrency {
        let prompt: Vec<u32> = (0..opts.prompt_len)
            .map(|_| rng.gen_range(0..vocab))
            .collect();
        handles.push(engine.submit(GenerateRequest {
            prompt,
            adapter: None,
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: opts.max_tokens,
                ignore_eos: true,
                constraint: grammar.cloned(),
                ..SamplingParams::default()
            },
            n: 1,
            prompt_logprobs: None,
        })?);
    }
    let mut tokens = 0usize;
    let mut open = handles.len();
    while open > 0 {
        let mut progressed = false;
        for h in handles.iter_mut() {
            while let Ok(ev) = h.events.try_recv() {
                progressed = true;
                match ev {
                    Event::Token { .. } => tokens += 1,
                    Event::Finished { .. } => open -= 1,
                    Event::Error(e) => {
                        return Err(BenchError::Other(format!("bench request failed: {e}")))
                    }
                    Event::PromptLogprobs(_) => {}
                }
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let expected = opts.concurrency * opts.max_tokens;
    if tokens != expected {
        return Err(BenchError::Other(format!(
            "{tokens} tokens instead of {expected}: a sequence ended early"
        )));
    }
    Ok(tokens as f64 / start.elapsed().as_secs_f64())
}

/// Mean microseconds of one mask + commit, walking the schema with random allowed tokens.
fn mask_cost(grammar: &Grammar, steps: usize) -> Result<f64, BenchError> {
    let mut m = grammar.matcher();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Instant::now();
    for _ in 0..steps {
        let mask = m
            .compute_mask()
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let allowed = mask.allowed();
        let t = allowed[rng.gen_range(0..allowed.len())];
        m.commit(t).map_err(|e| BenchError::Other(e.to_string()))?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / steps as f64)
}

/// Builds the model, the constrainer over `opts.tokenizer` and the schema's grammar, then
/// alternates unconstrained and constrained runs.
pub fn run(opts: &ConstrainOptions) -> Result<ConstrainReport, BenchError> {
    let tok = claas_chat::Tokenizer::from_file(&opts.tokenizer)
        .map_err(|e| BenchError::Other(format!("{}: {e}", opts.tokenizer.display())))?;
    let mut cfg = qwen3_0_6b_config();
    if let Some(l) = opts.layers {
        cfg.num_hidden_layers = l.max(1);
    }
    let eos = tok
        .token_to_id("<|im_end|>")
        .ok_or_else(|| BenchError::Other("the tokenizer has no <|im_end|>".into()))?;
    let constrainer = Constrainer::new(tok.hf(), cfg.vocab_size, eos)
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let grammar = constrainer
        .compile(&Constraint::JsonSchema(bench_schema()))
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let mask_us = mask_cost(&grammar, 300)?;
    let engine = Engine::start(
        Arc::new(random_model(&cfg)?),
        EngineConfig {
            max_num_seqs: opts.concurrency,
            max_model_len: opts.prompt_len + opts.max_tokens + 1,
            ..EngineConfig::default()
        },
        None,
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let warm = ConstrainOptions {
        max_tokens: 2,
        ..opts.clone()
    };
    run_once(&engine, &warm, Some(&grammar), &mut rng)?;
    let mut report = ConstrainReport {
        unconstrained: Vec::new(),
        constrained: Vec::new(),
        mask_us,
        vocab: cfg.vocab_size,
        concurrency: opts.concurrency,
    };
    for _ in 0..opts.rounds.max(1) {
        report
            .unconstrained
            .push(run_once(&engine, opts, None, &mut rng)?);
        report
            .constrained
            .push(run_once(&engine, opts, Some(&grammar), &mut rng)?);
    }
    Ok(report)
}

/// Prints each round and the constrained/unconstrained throughput ratio (best rounds).
pub fn print_report(r: &ConstrainReport) {
    println!(
        "vocabulary {} tokens; one mask + commit alone: {:.0} us",
        r.vocab, r.mask_us
    );
    for (i, (u, c)) in r.unconstrained.iter().zip(&r.constrained).enumerate() {
        println!(
            "round {i}: batch {} decode  unconstrained {u:.2} tok/s  json_schema {c:.2} tok/s  ratio {:.3}",
            r.concurrency,
            c / u
        );
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "json_schema / unconstrained throughput (best rounds) = {:.3}",
        best(&r.constrained) / best(&r.unconstrained)
    );
}
