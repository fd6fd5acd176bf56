//! Statistics of generated text and log-probabilities that signal collapse: token entropy,
//! distinct-n and self-ROUGE-L.

use std::collections::HashSet;

/// Shannon entropy (nats) of one position from its top-k log-probabilities, renormalised over
/// those k: the API returns only the top-k, so this is the entropy of the truncated
/// distribution, a lower bound-like proxy that still falls as the model grows certain.
/// `None` when there is nothing finite to use.
pub fn entropy_from_top_logprobs(logprobs: &[f64]) -> Option<f64> {
    let finite: Vec<f64> = logprobs.iter().copied().filter(|l| l.is_finite()).collect();
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return None;
    }
    // Shift by the max for stability: p_i = exp(l_i - max) / sum_j exp(l_j - max).
    let weights: Vec<f64> = finite.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    Some(
        -weights
            .iter()
            .map(|w| w / total)
            .filter(|p| *p > 0.0)
            .map(|p| p * p.ln())
            .sum::<f64>(),
    )
}

/// Distinct-n over a set of sequences (generated tokens, or words): unique n-grams / all
/// n-grams, pooled over the sequences. 1.0 = no n-gram repeats; a collapsed model repeating
/// itself drives it toward 0. `None` without any n-gram.
pub fn distinct_n<S: AsRef<str>>(seqs: &[Vec<S>], n: usize) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let mut total = 0usize;
    let mut unique: HashSet<Vec<&str>> = HashSet::new();
    for seq in seqs {
        let items: Vec<&str> = seq.iter().map(AsRef::as_ref).collect();
        for g in items.windows(n) {
            total += 1;
            unique.insert(g.to_vec());
        }
    }
    (total > 0).then(|| unique.len() as f64 / total as f64)
}

/// Whitespace-separated words of a text, as a sequence for [`distinct_n`].
pub fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Word-level ROUGE-L F1 of two texts (0 when either is empty).
pub fn rouge_l(a: &str, b: &str) -> f64 {
    let wa: Vec<&str> = a.split_whitespace().collect();
    let wb: Vec<&str> = b.split_whitespace().collect();
    if wa.is_empty() || wb.is_empty() {
        return 0.0;
    }
    let l = lcs_len(&wa, &wb) as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (p, r) = (l / wb.len() as f64, l / wa.len() as f64);
    2.0 * p * r / (p + r)
}

/// Mean pairwise ROUGE-L of samples of one prompt: near 1 when sampling no longer varies.
/// `None` with fewer than two samples.
pub fn self_rouge_l(texts: &[String]) -> Option<f64> {
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for i in 0..texts.len() {
        for j in i + 1..texts.len() {
            sum += rouge_l(&texts[i], &texts[j]);
            pairs += 1;
        }
    }
    (pairs > 0).then(|| sum / pairs as f64)
}

/// Mean of the finite values, `None` if there are none.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        s += v;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn entropy_of_top_k() {
        // Uniform over 4 -> ln 4, whatever the scale of the log-probs (renormalised).
        let u = [(0.1f64).ln(); 4];
        assert!(close(entropy_from_top_logprobs(&u).unwrap(), 4f64.ln()));
        // Certain -> 0.
        assert!(close(entropy_from_top_logprobs(&[0.0]).unwrap(), 0.0));
        assert!(close(
            entropy_from_top_logprobs(&[0.0, f64::NEG_INFINITY]).unwrap(),
            0.0
        ));
        // p = (0.75, 0.25).
        let h = entropy_from_top_logprobs(&[0.75f64.ln(), 0.25f64.ln()]).unwrap();
        let want = -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        assert!(close(h, want), "{h} vs {want}");
        assert_eq!(entropy_from_top_logprobs(&[]), None);
    }

    #[test]
    fn distinct_and_rouge() {
        let same = vec!["a b a b".to_string(), "a b a b".to_string()];
        let seqs: Vec<Vec<&str>> = same.iter().map(|t| words(t)).collect();
        assert!(close(distinct_n(&seqs, 1).unwrap(), 2.0 / 8.0));
        assert!(close(distinct_n(&seqs, 2).unwrap(), 2.0 / 6.0));
        let varied = vec!["a b c".to_string(), "d e f".to_string()];
        let seqs: Vec<Vec<&str>> = varied.iter().map(|t| words(t)).collect();
        assert!(close(distinct_n(&seqs, 1).unwrap(), 1.0));
        assert!(close(distinct_n(&seqs, 2).unwrap(), 1.0));
        // n-grams do not span sequences.
        assert_eq!(distinct_n(&[vec!["a"], vec!["b"]], 2), None);
        // Token sequences work the same way.
        let toks = vec![vec![
            "tal".to_string(),
            "hel".to_string(),
            "tal".to_string(),
        ]];
        assert!(close(distinct_n(&toks, 1).unwrap(), 2.0 / 3.0));
        assert!(close(distinct_n(&toks, 2).unwrap(), 1.0));

        assert!(close(rouge_l("the cat sat", "the cat sat"), 1.0));
        assert!(close(rouge_l("the cat sat", "dogs run"), 0.0));
        // LCS "the sat" = 2; p = 2/2, r = 2/3 -> F1 = 0.8.
        assert!(close(rouge_l("the cat sat", "the sat"), 0.8));
        assert!(close(self_rouge_l(&same).unwrap(), 1.0));
        assert!(close(self_rouge_l(&varied).unwrap(), 0.0));
        assert_eq!(self_rouge_l(&same[..1]), None);
        assert_eq!(mean([1.0, f64::NAN, 3.0]), Some(2.0));
    }
}
