//! `GET /metrics`: the engine's metrics under vLLM's names and labels, in the Prometheus text
//! format, so vLLM dashboards and the CLaaS API's drain check read `claas serve` unchanged.
//!
//! Names are vLLM's (`vllm:` prefix; counters gain `_total` on exposition as Python's
//! `prometheus_client` adds it), and every series carries `model_name`. Values that are computed
//! at scrape time (queue gauges, sleep level, adapter activity) come from a collector; the rest
//! are the engine's own `prometheus_client` handles.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use claas_engine::{Engine, Metrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::AppState;

/// The registry `/metrics` encodes, built once per server.
pub(crate) struct Exporter {
    registry: Registry,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Registers `engine`'s metrics with `model_name` (the primary served name) on every series.
    pub(crate) fn new(engine: &Engine, model_name: &str) -> Exporter {
        let m = engine.metrics();
        let mut r = Registry::with_labels(
            [("model_name".into(), model_name.to_string().into())].into_iter(),
        );
        r.register(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "vllm:generation_tokens",
            "Number of generation tokens processed",
            m.generation_tokens.clone(),
        );
        r.register(
            "vllm:request_success",
            "Count of successfully processed requests",
            m.request_success.clone(),
        );
        r.register(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens",
            m.prefix_cache_queries.clone(),
        );
        r.register(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens",
            m.prefix_cache_hits.clone(),
        );
        r.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            m.ttft.clone(),
        );
        r.register(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds",
            m.tpot.clone(),
        );
        r.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds",
            m.e2e.clone(),
        );
        let cfg = engine.config();
        r.register_collector(Box::new(EngineState {
            metrics: m.clone(),
            sleep_level: engine.sleep_level_handle(),
            // vLLM's label is the adapter slots per batch; without --max-loras ours is the
            // batch itself.
            max_lora: cfg.max_loras.unwrap_or(cfg.max_num_seqs).to_string(),
        }));
        Exporter { registry: r }
    }

    /// The text exposition of every registered metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric, and a
        // partial page is still more useful to a scraper than none.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("encoding /metrics: {e}");
        }
        out
    }
}

/// Scrape-time values: the queue gauges, the sleep level and the adapters in use.
#[derive(Debug)]
struct EngineState {
    metrics: Arc<Metrics>,
    sleep_level: Arc<std::sync::atomic::AtomicU8>,
    max_lora: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoraLabels {
    max_lora: String,
    running_lora_adapters: String,
    waiting_lora_adapters: String,
}

impl Collector for EngineState {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        // Waiting first: the engine raises running before lowering waiting, so a request moving
        // between the two is counted at least once (a drain must never see it as neither).
        let waiting = m.waiting.load(Ordering::SeqCst) as i64;
        let running = m.running.load(Ordering::SeqCst) as i64;
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            &mut enc,
            "vllm:num_requests_running",
            "Number of requests in model execution batches",
            running,
        )?;
        gauge(
            &mut enc,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed",
            waiting,
        )?;
        gauge(
            &mut enc,
            "vllm:engine_sleep_state",
            "Engine sleep level (0 awake)",
            i64::from(self.sleep_level.load(Ordering::SeqCst)),
        )?;
        let usage = ConstGauge::new(m.kv_cache_usage());
        usage.encode(enc.encode_descriptor(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage (the prefix cache's blocks against \
             --kv-cache-memory-bytes)",
            None,
            usage.metric_type(),
        )?)?;
        let aborted = ConstCounter::new(m.requests_aborted.load(Ordering::SeqCst));
        aborted.encode(enc.encode_descriptor(
            "vllm:request_aborted",
            "Count of aborted requests (also in request_success with finished_reason=\"abort\")",
            None,
            aborted.metric_type(),
        )?)?;
        let lora = m.lora.lock().clone();
        let info = ConstGauge::new(lora.updated_at);
        let mut family = enc.encode_descriptor(
            "vllm:lora_requests_info",
            "Running stats on lora requests",
            None,
            info.metric_type(),
        )?;
        info.encode(family.encode_family(&LoraLabels {
            max_lora: self.max_lora.clone(),
            running_lora_adapters: lora.running.join(","),
            waiting_lora_adapters: lora.waiting.join(","),
        })?)
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        st.metrics.render(),
    )
        .into_response()
}
