//! Sampling parameters, logits processing (penalties, temperature, top-k/p, min-p, grammar
//! masks) and log-probabilities, on CPU `f32` rows.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::Rng;

use claas_constrain::{Grammar, Mask, Matcher};

use crate::EngineError;

/// Per-request sampling settings (vLLM semantics).
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or negative disables.
    pub top_k: i64,
    pub min_p: f32,
    /// Same seed, same output.
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    pub max_tokens: usize,
    pub min_tokens: usize,
    /// Extra token ids that end a sequence (reported as `stop_token`).
    pub stop_token_ids: Vec<u32>,
    /// Model EOS ids that end a sequence unless `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Number of top alternatives to report per generated token (`Some(0)` = only the chosen one).
    pub logprobs: Option<usize>,
    /// `(token id, bias)` added to the logits before penalties and sampling (OpenAI
    /// `logit_bias`); ids outside the vocabulary are skipped.
    pub logit_bias: Vec<(u32, f32)>,
    /// Structured output: every sequence's tokens follow this grammar (its own matcher each),
    /// and the sequence stops with `Stop` once the grammar is complete.
    pub constraint: Option<Grammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            max_tokens: 16,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            eos_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            logit_bias: Vec::new(),
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Checks ranges the way vLLM does.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidParams(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be non-negative, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad(format!(
                "presence_penalty must be in [-2, 2], got {}",
                self.presence_penalty
            ));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad(format!(
                "frequency_penalty must be in [-2, 2], got {}",
                self.frequency_penalty
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be greater than zero, got {}",
                self.repetition_penalty
            ));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.min_tokens > self.max_tokens {
            return bad("min_tokens must not exceed max_tokens".into());
        }
        Ok(())
    }
}

/// Log-probability of one token plus the top alternatives (`(id, logprob)`, best first).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// 1-based rank of `token` in the distribution.
    pub rank: usize,
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax` of a row, computed in f64 for accuracy.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Logprob info for `token` given a row of log-probabilities.
pub fn token_logprob(lp: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let v = lp[token as usize];
    let rank = 1 + lp.iter().filter(|&&x| x > v).count();
    TokenLogprob {
        token,
        logprob: v,
        rank,
        top: top_indices(lp, top_n),
    }
}

/// The `n` largest entries, best first (ties by lower id).
pub fn top_indices(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let n = n.min(idx.len());
    let cmp = |a: &u32, b: &u32| {
        row[*b as usize]
            .partial_cmp(&row[*a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// Applies `logit_bias`, then penalties, in place (vLLM's order: logits processors before
/// penalties). `context` is prompt + output (repetition penalty, as vLLM), `counts` the
/// output-token counts (presence/frequency).
pub fn apply_penalties(
    logits: &mut [f32],
    p: &SamplingParams,
    context: &[u32],
    counts: &HashMap<u32, u32>,
) {
    for &(t, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if p.repetition_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in context {
            if seen.insert(t) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        for (&t, &c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

/// Picks the next token from (already penalised) logits.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut StdRng) -> u32 {
    if p.temperature < 1e-5 {
        return argmax(logits);
    }
    let t = p.temperature;
    // Candidate set: top-k first (cheap with select_nth), then the rest works on few entries.
    let mut cand: Vec<(u32, f32)> = if p.top_k > 0 && (p.top_k as usize) < logits.len() {
        top_indices(logits, p.top_k as usize)
    } else {
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if p.top_p < 1.0 {
            all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        }
        all
    };
    if cand.is_empty() {
        return argmax(logits);
    }
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|c| (((c.1 - max) / t) as f64).exp())
        .collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    if p.min_p > 0.0 {
        let pmax = probs.iter().copied().fold(0.0, f64::max);
        let thr = p.min_p as f64 * pmax;
        let keep: Vec<bool> = probs.iter().map(|&x| x >= thr).collect();
        let mut i = 0;
        cand.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        probs.retain(|&x| x >= thr);
    }
    if p.top_p < 1.0 {
        // cand is sorted best first here (top_indices or the explicit sort).
        let mut cum = 0.0;
        let mut cut = probs.len();
        for (i, &x) in probs.iter().enumerate() {
            cum += x;
            if cum >= p.top_p as f64 {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        cand.truncate(cut);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.gen::<f64>() * total;
    for (c, &x) in cand.iter().zip(&probs) {
        if r < x {
            return c.0;
        }
        r -= x;
    }
    cand[cand.len() - 1].0
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// One sequence's grammar state next to its sampling state: the matcher, and the mask for
/// the next token once computed (ahead of time by [`overlap_masks`], or on demand).
pub(crate) struct SeqConstraint {
    matcher: Matcher,
    mask: Option<Mask>,
    /// Why the matcher failed; the sequence ends with this error.
    pub failed: Option<String>,
}

impl SeqConstraint {
    pub fn new(g: &Grammar) -> Self {
        SeqConstraint {
            matcher: g.matcher(),
            mask: None,
            failed: None,
        }
    }

    /// Computes the next token's mask unless already there.
    fn prepare(&mut self) {
        if self.mask.is_none() && self.failed.is_none() {
            match self.matcher.compute_mask() {
                Ok(m) => self.mask = Some(m),
                Err(e) => self.failed = Some(e.to_string()),
            }
        }
    }

    /// Masks `row` (after biases and penalties, before temperature and top-k/p, as vLLM).
    /// EOS stays allowed where the grammar may end, even before `min_tokens` (the grammar
    /// leaves nothing else to sample there).
    pub fn apply(&mut self, row: &mut [f32], eos_ids: &[u32]) {
        self.prepare();
        let Some(mask) = &self.mask else {
            return;
        };
        let before: Vec<f32> = if mask.allows_eos() {
            eos_ids
                .iter()
                .map(|&t| row.get(t as usize).copied().unwrap_or(0.0))
                .collect()
        } else {
            Vec::new()
        };
        mask.apply(row, eos_ids);
        if !before.is_empty() && !row.iter().any(|x| x.is_finite()) {
            for (&t, &l) in eos_ids.iter().zip(&before) {
                if let Some(x) = row.get_mut(t as usize) {
                    *x = if l.is_finite() { l } else { 0.0 };
                }
            }
        }
    }

    /// Advances past the sampled token (an EOS id ends the sequence and is not committed).
    pub fn commit(&mut self, tok: u32, eos_ids: &[u32]) {
        let Some(mask) = self.mask.take() else {
            return;
        };
        if eos_ids.contains(&tok) && mask.allows_eos() {
            return;
        }
        if let Err(e) = self.matcher.commit(tok) {
            self.failed = Some(e.to_string());
        }
    }

    /// The grammar is complete: nothing may follow.
    pub fn done(&self) -> bool {
        self.matcher.is_done()
    }
}

/// Runs `forward` on this thread while another computes the next-token masks of `masks` (the
/// constrained sequences that sample this step), so the grammar's CPU work hides behind the
/// model's instead of adding to the step.
pub(crate) fn overlap_masks<R>(
    masks: &mut [(usize, SeqConstraint)],
    forward: impl FnOnce() -> R,
) -> R {
    if masks.is_empty() {
        return forward();
    }
    std::thread::scope(|s| {
        let worker = s.spawn(|| masks.iter_mut().for_each(|(_, c)| c.prepare()));
        let out = forward();
        // A panicking matcher leaves its mask unset; `apply` computes it again (and records
        // the failure) on this thread.
        let _ = worker.join();
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let s: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(lp[2] > lp[1] && lp[1] > lp[0]);
    }

    #[test]
    fn greedy_and_top_k_one_agree() {
        let row = [0.1, 5.0, 0.3, 4.9];
        let mut rng = StdRng::seed_from_u64(1);
        let g = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&row, &g, &mut rng), 1);
        let k1 = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&row, &k1, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_restricts_to_nucleus() {
        // token 0 has ~0.88 of the mass, so top_p 0.5 always picks it.
        let row = [3.0, 1.0, 0.0, -1.0];
        let p = SamplingParams {
            top_p: 0.5,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(sample(&row, &p, &mut rng), 0);
        }
    }

    #[test]
    fn seeded_sampling_repeats() {
        let row: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams::default();
        let a: Vec<u32> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..30).map(|_| sample(&row, &p, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..30).map(|_| sample(&row, &p, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != a[0]), "temperature 1 should vary");
    }

    #[test]
    fn penalties_follow_vllm() {
        let mut row = vec![2.0, -2.0, 1.0];
        let counts: HashMap<u32, u32> = [(2, 3)].into();
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        apply_penalties(&mut row, &p, &[0, 1, 0], &counts);
        assert_eq!(row, vec![1.0, -4.0, 1.0 - 1.5 - 0.25]);
    }

    #[test]
    fn logit_bias_is_added_before_penalties() {
        let mut row = vec![1.0, 2.0, 3.0];
        let p = SamplingParams {
            logit_bias: vec![(0, 100.0), (2, -100.0), (99, 5.0)],
            repetition_penalty: 2.0,
            ..Default::default()
        };
        apply_penalties(&mut row, &p, &[0], &HashMap::new());
        assert_eq!(row, vec![101.0 / 2.0, 2.0, -97.0]);
        let mut rng = StdRng::seed_from_u64(3);
        let g = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&row, &g, &mut rng), 0);
    }

    #[test]
    fn rank_and_top() {
        let lp = log_softmax(&[0.0, 3.0, 1.0, 2.0]);
        let t = token_logprob(&lp, 2, 2);
        assert_eq!(t.rank, 3);
        assert_eq!(t.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
