//! The engine's counters, gauges and latency histograms.
//!
//! Counting is the engine's job; naming and exposition are the server's: `claas serve` registers
//! these handles under vLLM's metric names in a `prometheus_client` registry. The handles are
//! `prometheus_client` types (atomic, `Arc`-shared), so a scrape reads them without a lock on the
//! scheduler. `running` and `waiting` stay plain atomics: a drain check relies on the order in
//! which the scheduler updates them (see `Loop::admit`), which needs `SeqCst`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::FinishReason;

/// vLLM's buckets for `time_to_first_token_seconds`.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's buckets for `time_per_output_token_seconds` (inter-token latency).
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// vLLM's buckets for `e2e_request_latency_seconds`.
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// The `finished_reason` label of `request_success`, spelled as vLLM spells it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FinishedReason {
    stop,
    length,
    abort,
}

impl From<FinishReason> for FinishedReason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Stop => FinishedReason::stop,
            FinishReason::Length => FinishedReason::length,
            FinishReason::Abort => FinishedReason::abort,
        }
    }
}

/// Labels of `request_success`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub finished_reason: FinishedReason,
}

/// Adapters with sequences in the running batch and in the queue, as vLLM's
/// `lora_requests_info` reports them (names sorted, each once).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraActivity {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    /// Unix time of the last change, the gauge's value in vLLM.
    pub updated_at: f64,
}

/// Engine-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Requests accepted but not yet running.
    pub waiting: AtomicUsize,
    /// Requests that finished, any reason (every request counted once, when its last sequence
    /// ends).
    pub requests_finished: AtomicU64,
    pub requests_aborted: AtomicU64,
    /// Finished requests by how their last sequence ended.
    pub request_success: Family<FinishedLabels, Counter>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    /// Prompt tokens looked up in the prefix cache (vLLM's `prefix_cache_queries`: every
    /// prompt token of a request that reads the cache; prompt-logprobs requests do not).
    pub prefix_cache_queries: Counter,
    /// Of those, tokens whose keys and values came from the cache (`prefix_cache_hits`).
    pub prefix_cache_hits: Counter,
    /// Bytes of keys and values the prefix cache holds.
    pub kv_cache_bytes: AtomicU64,
    /// The prefix cache's budget in bytes (0 when prefix caching is off).
    pub kv_cache_budget_bytes: AtomicU64,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of a sequence (vLLM's `time_per_output_token`).
    pub tpot: Histogram,
    /// End-to-end request latency.
    pub e2e: Histogram,
    /// Which adapters are running and waiting.
    pub lora: Mutex<LoraActivity>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            requests_finished: AtomicU64::new(0),
            requests_aborted: AtomicU64::new(0),
            request_success: Family::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            kv_cache_bytes: AtomicU64::new(0),
            kv_cache_budget_bytes: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS.iter().copied()),
            tpot: Histogram::new(TPOT_BUCKETS.iter().copied()),
            e2e: Histogram::new(E2E_BUCKETS.iter().copied()),
            lora: Mutex::new(LoraActivity::default()),
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

    /// Counts a finished request under `reason`.
    pub(crate) fn request_finished(&self, reason: FinishReason) {
        // Aborted before finished: a reader that sees the request finished sees how.
        if reason == FinishReason::Abort {
            self.requests_aborted.fetch_add(1, Ordering::SeqCst);
        }
        self.request_success
            .get_or_create(&FinishedLabels {
                finished_reason: reason.into(),
            })
            .inc();
        self.requests_finished.fetch_add(1, Ordering::SeqCst);
    }

    /// Records the adapters now running and waiting; the timestamp moves only on a change.
    pub(crate) fn set_lora_activity(&self, mut running: Vec<String>, mut waiting: Vec<String>) {
        for v in [&mut running, &mut waiting] {
            v.sort_unstable();
            v.dedup();
        }
        let mut cur = self.lora.lock();
        if cur.running != running || cur.waiting != waiting {
            *cur = LoraActivity {
                running,
                waiting,
                updated_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_requests_are_counted_by_reason() {
        let m = Metrics::default();
        m.request_finished(FinishReason::Stop);
        m.request_finished(FinishReason::Stop);
        m.request_finished(FinishReason::Abort);
        let count = |r| {
            m.request_success
                .get(&FinishedLabels { finished_reason: r })
                .map(|c| c.get())
        };
        assert_eq!(count(FinishedReason::stop), Some(2));
        assert_eq!(count(FinishedReason::abort), Some(1));
        assert_eq!(count(FinishedReason::length), None);
        assert_eq!(m.requests_finished.load(Ordering::SeqCst), 3);
        assert_eq!(m.requests_aborted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lora_activity_timestamp_moves_only_on_change() {
        let m = Metrics::default();
        m.set_lora_activity(vec!["b".into(), "a".into(), "b".into()], vec![]);
        let first = m.lora.lock().clone();
        assert_eq!(first.running, ["a", "b"]);
        assert!(first.updated_at > 0.0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        m.set_lora_activity(vec!["a".into(), "b".into()], vec![]);
        assert_eq!(m.lora.lock().updated_at, first.updated_at);
        m.set_lora_activity(vec![], vec!["a".into()]);
        let now = m.lora.lock().clone();
        assert!(now.running.is_empty() && now.waiting == ["a"]);
        assert!(now.updated_at >= first.updated_at);
    }
}
