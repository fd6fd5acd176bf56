//! Counters, gauges and latency histograms, lock-free, rendered by the server as Prometheus text.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A cumulative histogram with fixed upper bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with the given bucket upper bounds (ascending).
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation in seconds.
    pub fn observe(&self, secs: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((secs.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Sum of observations in seconds.
    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// Engine-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Requests accepted but not yet running.
    pub waiting: AtomicUsize,
    /// Requests that finished (any reason).
    pub requests_finished: AtomicU64,
    pub requests_aborted: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Prompt tokens looked up in the prefix cache (vLLM's `prefix_cache_queries`: every
    /// prompt token of a request that reads the cache; prompt-logprobs requests do not).
    pub prefix_cache_queries: AtomicU64,
    /// Of those, tokens whose keys and values came from the cache (`prefix_cache_hits`).
    pub prefix_cache_hits: AtomicU64,
    /// Bytes of keys and values the prefix cache holds.
    pub kv_cache_bytes: AtomicU64,
    /// The prefix cache's budget in bytes (0 when prefix caching is off).
    pub kv_cache_budget_bytes: AtomicU64,
    /// Time to first token.
    pub ttft: Histogram,
    /// End-to-end request latency.
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            requests_finished: AtomicU64::new(0),
            requests_aborted: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            prefix_cache_queries: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            kv_cache_bytes: AtomicU64::new(0),
            kv_cache_budget_bytes: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics {
    /// Fraction of the prefix cache's budget in use, 0 to 1 (vLLM's `kv_cache_usage_perc`);
    /// 0 when prefix caching is off.
    pub fn kv_cache_usage(&self) -> f64 {
        let budget = self.kv_cache_budget_bytes.load(Ordering::Relaxed);
        if budget == 0 {
            return 0.0;
        }
        (self.kv_cache_bytes.load(Ordering::Relaxed) as f64 / budget as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        assert_eq!(h.buckets(), vec![(1.0, 1), (2.0, 2)]);
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 5.0).abs() < 1e-3);
    }
}
