//! The eval loop: per preference, a fresh adapter; baseline metrics (step 0); then per step,
//! generate a batch through the API's chat proxy, send it as one `/v1/feedback`, and measure
//! again. Results are written as they come, so a stopped run keeps its finished steps.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::{ApiClient, ChatRequest};
use crate::output;
use crate::preferences::{Preference, DEFAULT_SYSTEM_PROMPT};
use crate::textstats::{distinct_n, entropy_from_top_logprobs, mean, self_rouge_l, words};
use crate::verifiers;
use crate::{EvalError, Result};

/// Fixed prompts with fixed reference answers: their mean per-token log-probability under the
/// adapter is the general-capability probe (it should not fall while a preference is learned).
pub const CAPABILITY_PROBES: &[(&str, &str)] = &[
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
    ),
    ("What is 12 times 12?", "12 times 12 is 144."),
    (
        "Name the largest planet in the solar system.",
        "Jupiter is the largest planet in the solar system.",
    ),
    (
        "Translate 'thank you' into Spanish.",
        "'Thank you' in Spanish is 'gracias'.",
    ),
    (
        "Write a Python function that returns the sum of a list.",
        "def total(xs):\n    return sum(xs)",
    ),
];

/// The prompt sampled several times for self-ROUGE-L (as the reference's collapse probe).
pub const COLLAPSE_PROMPT: &str = "Tell me something interesting about the ocean.";

/// Sampling temperature of the self-ROUGE-L samples and of the base samples of the KL estimate.
const COLLAPSE_TEMPERATURE: f64 = 0.7;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalConfig {
    pub api_url: String,
    /// Sent as bearer token; never written to `run.json`.
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Base model: `/v1/lora/init`'s `base_model` and the reference of the KL estimate.
    /// `None` = the first base model `GET /v1/models` lists.
    pub base_model: Option<String>,
    pub preferences: Vec<Preference>,
    /// Feedback steps per preference.
    pub steps: usize,
    /// Samples per feedback step (one `/v1/feedback` per step).
    pub batch: usize,
    /// Adapters are `{lora_prefix}/{preference}`.
    pub lora_prefix: String,
    pub output_dir: PathBuf,
    pub max_tokens: u32,
    pub seed: u64,
    /// Sampling temperature of the feedback samples.
    pub temperature: f64,
    /// `training` object of every feedback request (e.g. `{"learning_rate": 1e-4}`).
    pub training: Option<Value>,
    /// Top-k log-probabilities requested for the entropy metric (vLLM allows up to 20).
    pub top_logprobs: u32,
    /// Probe prompts used per measurement (`None` = all of the preference's).
    pub probes: Option<usize>,
    /// Samples of [`COLLAPSE_PROMPT`] for self-ROUGE-L (fewer than 2 = not measured).
    pub collapse_samples: usize,
    /// Draw a progress bar (else log lines).
    pub progress: bool,
}

impl EvalConfig {
    /// Defaults of `claas eval` for these preferences.
    pub fn new(api_url: &str, preferences: Vec<Preference>, output_dir: PathBuf) -> Self {
        Self {
            api_url: api_url.to_string(),
            api_key: None,
            base_model: None,
            preferences,
            steps: 10,
            batch: 4,
            lora_prefix: "eval".into(),
            output_dir,
            max_tokens: 256,
            seed: 42,
            temperature: 0.7,
            training: None,
            top_logprobs: 20,
            probes: None,
            collapse_samples: 3,
            progress: true,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(EvalError::Config(m.to_string()));
        if self.preferences.is_empty() {
            return bad("no preference to run");
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1");
        }
        if self.max_tokens == 0 {
            return bad("--max-tokens must be at least 1");
        }
        if self.probes == Some(0) {
            return bad("--probes must be at least 1");
        }
        if self.training.as_ref().is_some_and(|t| !t.is_object()) {
            return bad("--training-json must be a JSON object");
        }
        let mut names: Vec<&str> = self.preferences.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("two preferences share a name");
        }
        Ok(())
    }
}

/// Every metric of one measurement. `None` (JSON `null`) = not measurable this time (e.g. no
/// generated token carried log-probabilities).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean over the preference's pairs of `sum logp(preferred) - sum logp(dispreferred)`.
    pub logprob_margin: f64,
    /// `logprob_margin` minus its baseline value (0 at baseline).
    pub logprob_margin_delta: f64,
    /// Mean summed log-probability of the preferred responses.
    pub preferred_logprob: f64,
    /// Mean summed log-probability of the dispreferred responses.
    pub dispreferred_logprob: f64,
    /// Fraction of probe generations the verifier passes, in [0, 1].
    pub compliance: f64,
    /// Mean verifier quantity over the probes (words, emoji, or phrase found).
    pub compliance_value: f64,
    /// Mean per-token log-probability of the fixed reference answers ([`CAPABILITY_PROBES`]).
    pub capability_logprob: f64,
    /// `capability_logprob` minus its baseline value.
    pub capability_delta: f64,
    /// Mean token entropy (nats) of the probe generations over the returned top-k,
    /// renormalised.
    pub entropy: Option<f64>,
    /// Distinct token unigrams / unigrams over the probe generations.
    pub distinct_1: Option<f64>,
    /// Distinct token bigrams / bigrams over the probe generations.
    pub distinct_2: Option<f64>,
    /// Mean pairwise ROUGE-L of samples of [`COLLAPSE_PROMPT`].
    pub self_rouge_l: Option<f64>,
    /// Per-token Monte-Carlo estimate of KL(base ‖ adapter) on base samples of the probes.
    pub kl_to_base: Option<f64>,
}

/// The JSON keys of [`Metrics`], in order (also those of `summary.json`).
pub const METRIC_KEYS: &[&str] = &[
    "logprob_margin",
    "logprob_margin_delta",
    "preferred_logprob",
    "dispreferred_logprob",
    "compliance",
    "compliance_value",
    "capability_logprob",
    "capability_delta",
    "entropy",
    "distinct_1",
    "distinct_2",
    "self_rouge_l",
    "kl_to_base",
];

/// Margin of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairMargin {
    pub prompt: String,
    pub preferred_logprob: f64,
    pub dispreferred_logprob: f64,
    pub margin: f64,
}

/// One probe generation and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub prompt: String,
    pub response: String,
    pub passed: bool,
    pub value: f64,
}

/// What the metrics were computed from, for reading a run afterwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub pairs: Vec<PairMargin>,
    /// Name of [`ProbeResult::value`]: `words`, `emoji` or `phrase_found`.
    pub compliance_value_name: String,
    pub probes: Vec<ProbeResult>,
    pub collapse_samples: Vec<String>,
    /// Tokens the KL estimate averaged over.
    pub kl_tokens: usize,
}

/// A feedback sample sent in a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
    pub completion_id: Option<String>,
}

/// The part of the `/v1/feedback` answer worth keeping per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackOutcome {
    pub status: Value,
    pub adapter_version: Value,
    pub previous_version: Value,
    pub version_name: Value,
    /// `distill_result.metadata`: total_loss, distill_loss, kl_reg, mean_is_ratio, …
    pub metrics: Value,
    pub timing_ms: Value,
}

/// One line of `steps.jsonl` (and, with step 0 and no feedback, `baseline.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub preference: String,
    pub step: usize,
    pub timestamp: String,
    pub lora_id: String,
    pub model: String,
    /// Adapter version measured (from the step's feedback answer; `null` at baseline).
    pub adapter_version: Value,
    pub feedback: Option<FeedbackOutcome>,
    pub samples: Vec<Sample>,
    pub metrics: Metrics,
    pub details: Details,
    pub elapsed_s: f64,
}

/// Baseline and final metrics of one preference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceSummary {
    pub lora_id: String,
    pub model: String,
    pub steps: usize,
    pub final_adapter_version: Value,
    pub baseline: Metrics,
    #[serde(rename = "final")]
    pub final_: Metrics,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run: String,
    pub api_url: String,
    pub base_model: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Per preference, in run order.
    pub preferences: serde_json::Map<String, Value>,
}

/// Base model samples of the probes with their base log-probabilities (fixed for a run).
struct BaseSample {
    prompt: String,
    text: String,
    logprobs: Vec<f64>,
}

/// Progress bar or log lines.
struct Reporter {
    bar: Option<ProgressBar>,
}

impl Reporter {
    fn new(enabled: bool, total: u64) -> Self {
        let bar = enabled.then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Self { bar }
    }

    fn note(&self, msg: String) {
        match &self.bar {
            Some(b) => b.set_message(msg),
            None => tracing::info!("{msg}"),
        }
    }

    fn done_one(&self, msg: String) {
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.println(msg);
            }
            None => tracing::info!("{msg}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs every preference of `cfg` and writes the results; returns the summary.
pub async fn run(cfg: &EvalConfig) -> Result<RunSummary> {
    cfg.check()?;
    let client = ApiClient::new(&cfg.api_url, cfg.api_key.clone())?;
    let base_model = match &cfg.base_model {
        Some(m) => m.clone(),
        None => client.models().await?.into_iter().next().ok_or_else(|| {
            EvalError::Config("GET /v1/models lists no model; pass --base-model".into())
        })?,
    };
    output::create_dir(&cfg.output_dir)?;
    let started_at = now();
    let mut run_json = serde_json::to_value(cfg).map_err(|e| EvalError::Config(e.to_string()))?;
    run_json["base_model"] = json!(base_model);
    run_json["started_at"] = json!(started_at);
    run_json["claas_eval_version"] = json!(env!("CARGO_PKG_VERSION"));
    output::write_json(&cfg.output_dir.join("run.json"), &run_json)?;

    let mut summary = RunSummary {
        run: cfg
            .output_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        api_url: cfg.api_url.clone(),
        base_model: base_model.clone(),
        started_at,
        finished_at: None,
        preferences: serde_json::Map::new(),
    };
    let reporter = Reporter::new(
        cfg.progress,
        (cfg.preferences.len() * (cfg.steps + 1)) as u64,
    );
    for pref in &cfg.preferences {
        let s = run_preference(cfg, &client, &base_model, pref, &reporter).await?;
        summary.preferences.insert(
            pref.name.clone(),
            serde_json::to_value(&s).map_err(|e| EvalError::Config(e.to_string()))?,
        );
        output::write_json(&cfg.output_dir.join("summary.json"), &summary)?;
    }
    reporter.finish();
    summary.finished_at = Some(now());
    output::write_json(&cfg.output_dir.join("summary.json"), &summary)?;
    Ok(summary)
}

async fn run_preference(
    cfg: &EvalConfig,
    client: &ApiClient,
    base_model: &str,
    pref: &Preference,
    reporter: &Reporter,
) -> Result<PreferenceSummary> {
    let dir = cfg.output_dir.join(&pref.name);
    output::create_dir(&dir)?;
    reporter.note(format!("[{}] init adapter", pref.name));
    let lora_id = client
        .init_lora(&format!("{}/{}", cfg.lora_prefix, pref.name), base_model)
        .await?;
    let model = claas_store::served_name(&lora_id);
    let probes: Vec<&str> = pref
        .probe_prompts
        .iter()
        .take(cfg.probes.unwrap_or(usize::MAX))
        .map(String::as_str)
        .collect();

    reporter.note(format!("[{}] base samples", pref.name));
    let mut base_samples = Vec::with_capacity(probes.len());
    for (i, p) in probes.iter().enumerate() {
        let ans = client
            .chat(&ChatRequest {
                model: base_model,
                system: &pref.system_prompt,
                user: p,
                max_tokens: cfg.max_tokens,
                // Samples of the base distribution itself: that is what the KL estimate needs.
                temperature: 1.0,
                seed: cfg.seed.wrapping_add(1000 + i as u64),
                top_logprobs: 0,
            })
            .await?;
        let score = client
            .score(base_model, &pref.system_prompt, p, &ans.text)
            .await?;
        base_samples.push(BaseSample {
            prompt: p.to_string(),
            text: ans.text,
            logprobs: score.logprobs,
        });
    }

    let t0 = std::time::Instant::now();
    reporter.note(format!("[{}] baseline", pref.name));
    let (metrics, details) =
        measure(cfg, client, pref, &model, &probes, &base_samples, None).await?;
    let baseline = StepRecord {
        preference: pref.name.clone(),
        step: 0,
        timestamp: now(),
        lora_id: lora_id.clone(),
        model: model.clone(),
        adapter_version: Value::Null,
        feedback: None,
        samples: Vec::new(),
        metrics,
        details,
        elapsed_s: t0.elapsed().as_secs_f64(),
    };
    output::write_json(&dir.join("baseline.json"), &baseline)?;
    reporter.done_one(line(&baseline));

    let mut records: Vec<StepRecord> = Vec::new();
    for step in 1..=cfg.steps {
        let t0 = std::time::Instant::now();
        reporter.note(format!("[{}] step {step}: generating", pref.name));
        let mut samples = Vec::with_capacity(cfg.batch);
        let mut requests = Vec::with_capacity(cfg.batch);
        for i in 0..cfg.batch {
            let k = (step - 1) * cfg.batch + i;
            let prompt = &pref.probe_prompts[k % pref.probe_prompts.len()];
            let ans = client
                .chat(&ChatRequest {
                    model: &model,
                    system: &pref.system_prompt,
                    user: prompt,
                    max_tokens: cfg.max_tokens,
                    temperature: cfg.temperature,
                    seed: cfg.seed.wrapping_add(k as u64),
                    top_logprobs: 0,
                })
                .await?;
            let mut req = json!({
                "lora_id": lora_id,
                "prompt": prompt,
                "response": ans.text,
                "feedback": pref.feedback,
            });
            if let Some(id) = &ans.id {
                req["completion_id"] = json!(id);
            }
            if let Some(t) = &cfg.training {
                req["training"] = t.clone();
            }
            requests.push(req);
            samples.push(Sample {
                prompt: prompt.clone(),
                response: ans.text,
                completion_id: ans.id,
            });
        }
        reporter.note(format!("[{}] step {step}: training", pref.name));
        let fb = client.feedback(requests).await?;
        let outcome = FeedbackOutcome {
            status: fb["status"].clone(),
            adapter_version: fb["adapter_version"].clone(),
            previous_version: fb["previous_version"].clone(),
            version_name: fb["version_name"].clone(),
            metrics: fb["distill_result"]["metadata"].clone(),
            timing_ms: fb["timing_ms"].clone(),
        };
        reporter.note(format!("[{}] step {step}: measuring", pref.name));
        let (metrics, details) = measure(
            cfg,
            client,
            pref,
            &model,
            &probes,
            &base_samples,
            Some(&baseline.metrics),
        )
        .await?;
        let rec = StepRecord {
            preference: pref.name.clone(),
            step,
            timestamp: now(),
            lora_id: lora_id.clone(),
            model: model.clone(),
            adapter_version: outcome.adapter_version.clone(),
            feedback: Some(outcome),
            samples,
            metrics,
            details,
            elapsed_s: t0.elapsed().as_secs_f64(),
        };
        reporter.done_one(line(&rec));
        records.push(rec);
        output::write_jsonl(&dir.join("steps.jsonl"), &records)?;
    }
    if records.is_empty() {
        output::write_jsonl(&dir.join("steps.jsonl"), &records)?;
    }
    crate::plots::plot_preference(&dir.join("plots"), &baseline, &records)?;
    let last = records.last().unwrap_or(&baseline);
    Ok(PreferenceSummary {
        lora_id,
        model,
        steps: records.len(),
        final_adapter_version: last.adapter_version.clone(),
        baseline: baseline.metrics.clone(),
        final_: last.metrics.clone(),
    })
}

fn line(r: &StepRecord) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    format!(
        "[{}] step {}: margin {:.3} (Δ {:+.3}) compliance {:.2} capability {:.3} entropy {} kl {}",
        r.preference,
        r.step,
        r.metrics.logprob_margin,
        r.metrics.logprob_margin_delta,
        r.metrics.compliance,
        r.metrics.capability_logprob,
        opt(r.metrics.entropy),
        opt(r.metrics.kl_to_base),
    )
}

/// `sum logp(preferred) - sum logp(dispreferred)` of every pair under `model`.
pub async fn logprob_margins(
    client: &ApiClient,
    model: &str,
    pref: &Preference,
) -> Result<Vec<PairMargin>> {
    let mut out = Vec::with_capacity(pref.logprob_pairs.len());
    for pair in &pref.logprob_pairs {
        let system = pair.system_prompt.as_deref().unwrap_or(&pref.system_prompt);
        let pos = client
            .score(model, system, &pair.prompt, &pair.preferred)
            .await?;
        let neg = client
            .score(model, system, &pair.prompt, &pair.dispreferred)
            .await?;
        out.push(margin_of(&pair.prompt, pos.logprob_sum, neg.logprob_sum));
    }
    Ok(out)
}

/// The margin of one pair from its two summed log-probabilities.
pub fn margin_of(prompt: &str, preferred: f64, dispreferred: f64) -> PairMargin {
    PairMargin {
        prompt: prompt.to_string(),
        preferred_logprob: preferred,
        dispreferred_logprob: dispreferred,
        margin: preferred - dispreferred,
    }
}

/// Per-token KL(base ‖ adapter) estimate: mean of `logp_base - logp_adapter` over the tokens
/// of samples drawn from the base. Returns (estimate, tokens).
pub fn kl_estimate(base: &[Vec<f64>], adapter: &[Vec<f64>]) -> Option<(f64, usize)> {
    let mut sum = 0.0;
    let mut n = 0usize;
    for (b, a) in base.iter().zip(adapter) {
        for (lb, la) in b.iter().zip(a) {
            if lb.is_finite() && la.is_finite() {
                sum += lb - la;
                n += 1;
            }
        }
    }
    (n > 0).then(|| (sum / n as f64, n))
}

async fn measure(
    cfg: &EvalConfig,
    client: &ApiClient,
    pref: &Preference,
    model: &str,
    probes: &[&str],
    base_samples: &[BaseSample],
    baseline: Option<&Metrics>,
) -> Result<(Metrics, Details)> {
    let pairs = logprob_margins(client, model, pref).await?;
    let n_pairs = pairs.len().max(1) as f64;
    let logprob_margin = pairs.iter().map(|p| p.margin).sum::<f64>() / n_pairs;
    let preferred_logprob = pairs.iter().map(|p| p.preferred_logprob).sum::<f64>() / n_pairs;
    let dispreferred_logprob = pairs.iter().map(|p| p.dispreferred_logprob).sum::<f64>() / n_pairs;

    // Compliance and the text statistics, on greedy answers to the probes.
    let mut results = Vec::with_capacity(probes.len());
    let mut entropies = Vec::new();
    let mut sequences: Vec<Vec<String>> = Vec::with_capacity(probes.len());
    for p in probes {
        let ans = client
            .chat(&ChatRequest {
                model,
                system: &pref.system_prompt,
                user: p,
                max_tokens: cfg.max_tokens,
                temperature: 0.0,
                seed: cfg.seed,
                top_logprobs: cfg.top_logprobs,
            })
            .await?;
        entropies.extend(
            ans.top_logprobs
                .iter()
                .filter_map(|t| entropy_from_top_logprobs(t)),
        );
        // Distinct-n over the generated tokens (any language, any tokenizer); over words when
        // the server returned no tokens.
        sequences.push(if ans.tokens.is_empty() {
            words(verifiers::strip_thinking(&ans.text))
                .into_iter()
                .map(str::to_string)
                .collect()
        } else {
            ans.tokens
        });
        let v = verifiers::check(&pref.verifier, &ans.text);
        results.push(ProbeResult {
            prompt: p.to_string(),
            response: ans.text,
            passed: v.passed,
            value: v.value,
        });
    }
    let n_probes = results.len().max(1) as f64;
    let compliance = results.iter().filter(|r| r.passed).count() as f64 / n_probes;
    let compliance_value = results.iter().map(|r| r.value).sum::<f64>() / n_probes;

    let mut collapse_samples = Vec::new();
    if cfg.collapse_samples >= 2 {
        for i in 0..cfg.collapse_samples {
            let ans = client
                .chat(&ChatRequest {
                    model,
                    system: &pref.system_prompt,
                    user: COLLAPSE_PROMPT,
                    max_tokens: cfg.max_tokens,
                    temperature: COLLAPSE_TEMPERATURE,
                    seed: cfg.seed.wrapping_add(500 + i as u64),
                    top_logprobs: 0,
                })
                .await?;
            collapse_samples.push(verifiers::strip_thinking(&ans.text).to_string());
        }
    }

    let mut cap_sum = 0.0;
    let mut cap_tokens = 0usize;
    for (q, a) in CAPABILITY_PROBES {
        let s = client.score(model, DEFAULT_SYSTEM_PROMPT, q, a).await?;
        cap_sum += s.logprob_sum;
        cap_tokens += s.logprobs.len();
    }
    let capability_logprob = cap_sum / cap_tokens.max(1) as f64;

    let mut adapter_lps = Vec::with_capacity(base_samples.len());
    for b in base_samples {
        let s = client
            .score(model, &pref.system_prompt, &b.prompt, &b.text)
            .await?;
        if s.logprobs.len() != b.logprobs.len() {
            return Err(EvalError::Answer {
                url: format!("{}/v1/score", cfg.api_url),
                message: format!(
                    "the same text scored as {} tokens under {model} but {} under the base",
                    s.logprobs.len(),
                    b.logprobs.len()
                ),
            });
        }
        adapter_lps.push(s.logprobs);
    }
    let base_lps: Vec<Vec<f64>> = base_samples.iter().map(|b| b.logprobs.clone()).collect();
    let kl = kl_estimate(&base_lps, &adapter_lps);

    let metrics = Metrics {
        logprob_margin,
        logprob_margin_delta: baseline.map_or(0.0, |b| logprob_margin - b.logprob_margin),
        preferred_logprob,
        dispreferred_logprob,
        compliance,
        compliance_value,
        capability_logprob,
        capability_delta: baseline.map_or(0.0, |b| capability_logprob - b.capability_logprob),
        entropy: mean(entropies),
        distinct_1: distinct_n(&sequences, 1),
        distinct_2: distinct_n(&sequences, 2),
        self_rouge_l: self_rouge_l(&collapse_samples),
        kl_to_base: kl.map(|(k, _)| k),
    };
    let details = Details {
        pairs,
        compliance_value_name: verifiers::value_name(&pref.verifier).to_string(),
        probes: results,
        collapse_samples,
        kl_tokens: kl.map_or(0, |(_, n)| n),
    };
    Ok((metrics, details))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_and_kl_arithmetic() {
        let m = margin_of("p", -3.5, -10.25);
        assert_eq!(m.margin, 6.75);
        assert!(margin_of("p", -12.0, -2.0).margin < 0.0);
        // Identical distributions -> 0; adapter less likely on base samples -> positive.
        let base = vec![vec![-1.0, -2.0], vec![-0.5]];
        assert_eq!(kl_estimate(&base, &base), Some((0.0, 3)));
        let adapter = vec![vec![-1.5, -2.5], vec![-1.0]];
        assert_eq!(kl_estimate(&base, &adapter), Some((0.5, 3)));
        assert_eq!(kl_estimate(&[], &[]), None);
    }

    #[test]
    fn metric_keys_match_the_struct() {
        let v = serde_json::to_value(Metrics::default()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, METRIC_KEYS);
    }

    #[test]
    fn config_checks() {
        let prefs = vec![crate::preferences::builtin("concise").unwrap()];
        let ok = EvalConfig::new("http://x", prefs.clone(), "o".into());
        assert!(ok.check().is_ok());
        let mut c = ok.clone();
        c.batch = 0;
        assert!(c.check().is_err());
        let mut c = ok.clone();
        c.training = Some(json!([1]));
        assert!(c.check().is_err());
        let mut c = ok.clone();
        c.preferences = vec![prefs[0].clone(), prefs[0].clone()];
        assert!(c.check().is_err());
        // The key never reaches run.json.
        let mut c = ok;
        c.api_key = Some("sk-secret".into());
        assert!(!serde_json::to_string(&c).unwrap().contains("sk-secret"));
    }
}
