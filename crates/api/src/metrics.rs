//! Prometheus counters of the API (`GET /metrics`, text exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const STEP_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Default)]
struct Inner {
    feedback: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    distill_requests: BTreeMap<String, u64>,
    step_buckets: [u64; STEP_BUCKETS.len()],
    step_count: u64,
    step_sum: f64,
    loss_count: u64,
    loss_sum: f64,
    last_loss: Option<f64>,
    inits: u64,
}

/// Counters shared by all routes.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A finished `/v1/feedback` (`ok`, or `error` with the phase that failed).
    pub fn feedback_done(&self, failed_phase: Option<&str>) {
        self.with(|m| {
            let status = if failed_phase.is_some() {
                "error"
            } else {
                "ok"
            };
            *m.feedback.entry(status.into()).or_default() += 1;
            if let Some(p) = failed_phase {
                *m.failures.entry(p.into()).or_default() += 1;
            }
        });
    }

    /// A finished `/v1/distill`.
    pub fn distill_done(&self, ok: bool) {
        self.with(|m| {
            *m.distill_requests
                .entry(if ok { "ok" } else { "error" }.into())
                .or_default() += 1;
        });
    }

    /// One SDPO step (training + save) took `seconds` and ended at `total_loss`.
    pub fn step(&self, seconds: f64, total_loss: Option<f64>) {
        self.with(|m| {
            m.step_count += 1;
            m.step_sum += seconds;
            for (i, b) in STEP_BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    m.step_buckets[i] += 1;
                }
            }
            if let Some(l) = total_loss.filter(|l| l.is_finite()) {
                m.loss_count += 1;
                m.loss_sum += l;
                m.last_loss = Some(l);
            }
        });
    }

    /// A successful `/v1/lora/init`.
    pub fn init_done(&self) {
        self.with(|m| m.inits += 1);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut s = String::new();
            let _ = writeln!(s, "# HELP claas_feedback_requests_total Feedback requests by outcome.");
            let _ = writeln!(s, "# TYPE claas_feedback_requests_total counter");
            for status in ["ok", "error"] {
                let v = m.feedback.get(status).copied().unwrap_or(0);
                let _ = writeln!(s, "claas_feedback_requests_total{{status=\"{status}\"}} {v}");
            }
            let _ = writeln!(s, "# HELP claas_feedback_failures_total Failed feedback requests by the phase that failed.");
            let _ = writeln!(s, "# TYPE claas_feedback_failures_total counter");
            for (phase, v) in &m.failures {
                let _ = writeln!(s, "claas_feedback_failures_total{{phase=\"{phase}\"}} {v}");
            }
            let _ = writeln!(s, "# HELP claas_distill_requests_total /v1/distill requests by outcome.");
            let _ = writeln!(s, "# TYPE claas_distill_requests_total counter");
            for status in ["ok", "error"] {
                let v = m.distill_requests.get(status).copied().unwrap_or(0);
                let _ = writeln!(s, "claas_distill_requests_total{{status=\"{status}\"}} {v}");
            }
            let _ = writeln!(s, "# HELP claas_sdpo_step_seconds Latency of one SDPO update (training and save).");
            let _ = writeln!(s, "# TYPE claas_sdpo_step_seconds histogram");
            for (i, b) in STEP_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "claas_sdpo_step_seconds_bucket{{le=\"{b}\"}} {}",
                    m.step_buckets[i]
                );
            }
            let _ = writeln!(s, "claas_sdpo_step_seconds_bucket{{le=\"+Inf\"}} {}", m.step_count);
            let _ = writeln!(s, "claas_sdpo_step_seconds_sum {}", m.step_sum);
            let _ = writeln!(s, "claas_sdpo_step_seconds_count {}", m.step_count);
            let _ = writeln!(s, "# HELP claas_sdpo_loss Total SDPO loss of updates.");
            let _ = writeln!(s, "# TYPE claas_sdpo_loss summary");
            let _ = writeln!(s, "claas_sdpo_loss_sum {}", m.loss_sum);
            let _ = writeln!(s, "claas_sdpo_loss_count {}", m.loss_count);
            let _ = writeln!(s, "# HELP claas_sdpo_last_loss Total SDPO loss of the most recent update.");
            let _ = writeln!(s, "# TYPE claas_sdpo_last_loss gauge");
            if let Some(l) = m.last_loss {
                let _ = writeln!(s, "claas_sdpo_last_loss {l}");
            }
            let _ = writeln!(s, "# HELP claas_lora_init_total Adapters created by /v1/lora/init.");
            let _ = writeln!(s, "# TYPE claas_lora_init_total counter");
            let _ = writeln!(s, "claas_lora_init_total {}", m.inits);
            s
        })
    }
}
