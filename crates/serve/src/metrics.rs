//! Prometheus text exposition of the engine's counters under vLLM's metric names, so vLLM
//! dashboards and the CLaaS API's drain check read claas serve unchanged.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;

fn prom_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    model: &str,
    h: &claas_engine::Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (b, c) in h.buckets() {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{b}\",model_name=\"{model}\"}} {c}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\",model_name=\"{model}\"}} {}",
        h.count()
    );
    let _ = writeln!(out, "{name}_sum{{model_name=\"{model}\"}} {}", h.sum());
    let _ = writeln!(out, "{name}_count{{model_name=\"{model}\"}} {}", h.count());
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    let m = st.engine.metrics();
    let model = st.served_names[0].replace('"', "'");
    let mut out = String::new();
    // Waiting first: the engine raises running before lowering waiting, so a request moving
    // between the two is counted at least once (a drain must never see it as neither).
    let waiting = m.waiting.load(SeqCst) as u64;
    let running = m.running.load(SeqCst) as u64;
    let gauges = [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            running,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            waiting,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{model}\"}} {v}"
        );
    }
    let counters = [
        (
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            m.prompt_tokens.load(Relaxed),
        ),
        (
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            m.generation_tokens.load(Relaxed),
        ),
        (
            "vllm:request_success_total",
            "Count of finished requests.",
            m.requests_finished.load(Relaxed),
        ),
        (
            "vllm:request_aborted_total",
            "Count of aborted requests.",
            m.requests_aborted.load(Relaxed),
        ),
        (
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            m.prefix_cache_queries.load(Relaxed),
        ),
        (
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            m.prefix_cache_hits.load(Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model_name=\"{model}\"}} {v}"
        );
    }
    let usage = m.kv_cache_usage();
    let _ = writeln!(out, "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage (here: the prefix cache's blocks against --kv-cache-memory-bytes).\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"{model}\"}} {usage}");
    let sleeping = st.engine.sleep_level();
    let _ = writeln!(out, "# HELP vllm:engine_sleep_state Sleep level (0 awake).\n# TYPE vllm:engine_sleep_state gauge\nvllm:engine_sleep_state{{model_name=\"{model}\"}} {sleeping}");
    prom_histogram(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &model,
        &m.ttft,
    );
    prom_histogram(
        &mut out,
        "vllm:e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        &model,
        &m.e2e,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
