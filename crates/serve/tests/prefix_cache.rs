//! Prefix caching seen from HTTP: the real server on 127.0.0.1:0 over the tiny fixture model;
//! the second turn of a chat reads the first turn's blocks, `/metrics` says so in vLLM's names,
//! and the replies equal those of a server started with `--no-enable-prefix-caching`.

mod common;

use claas_serve::ServeConfig;
use common::Server;
use serde_json::{json, Value};

async fn start(no_prefix_cache: bool) -> Server {
    common::start(ServeConfig {
        no_enable_prefix_caching: no_prefix_cache,
        ..common::tiny_cfg()
    })
    .await
}

async fn chat(s: &Server, messages: &Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({
            "model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0,
            "ignore_eos": true, "logprobs": true, "top_logprobs": 5
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

async fn metrics(s: &Server) -> String {
    reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}

/// Two turns of a chat on `s`: the replies, and the prompt token counts.
async fn two_turns(s: &Server) -> (Vec<Value>, Vec<u64>) {
    let system = "You are a terse assistant. ".repeat(12);
    let mut messages = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "What is the capital of France?"}
    ]);
    let first = chat(s, &messages).await;
    let reply = first["choices"][0]["message"]["content"].clone();
    messages.as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": reply}),
        json!({"role": "user", "content": "And of Italy?"}),
    ]);
    let second = chat(s, &messages).await;
    let prompts = [&first, &second]
        .iter()
        .map(|r| r["usage"]["prompt_tokens"].as_u64().unwrap())
        .collect();
    (vec![first, second], prompts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_turn_of_a_chat_hits_and_metrics_say_so() {
    let cached = start(false).await;
    let plain = start(true).await;
    let m = metrics(&cached).await;
    assert_eq!(metric(&m, "vllm:prefix_cache_queries_total"), 0.0);
    assert_eq!(metric(&m, "vllm:kv_cache_usage_perc"), 0.0);

    let (replies, prompts) = two_turns(&cached).await;
    let m = metrics(&cached).await;
    // vLLM counts tokens: every prompt token of both turns was queried...
    let queries = metric(&m, "vllm:prefix_cache_queries_total");
    assert_eq!(queries, (prompts[0] + prompts[1]) as f64);
    // ...and the second turn found at least the first turn's system prompt and question
    // (whole 16-token blocks of it).
    let hits = metric(&m, "vllm:prefix_cache_hits_total");
    assert!(hits >= (prompts[0] / 16 * 16) as f64, "{hits} hits");
    assert!(hits < prompts[1] as f64);
    let usage = metric(&m, "vllm:kv_cache_usage_perc");
    assert!(usage > 0.0 && usage <= 1.0, "{usage}");

    // vLLM's /pause keeps the cache with clear_cache=false and empties it by default.
    for (query, emptied) in [("?clear_cache=false", false), ("", true)] {
        let r = reqwest::Client::new()
            .post(format!("{}/pause{query}", cached.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let usage = metric(&metrics(&cached).await, "vllm:kv_cache_usage_perc");
        assert_eq!(usage == 0.0, emptied, "pause{query}: usage {usage}");
        let r = reqwest::Client::new()
            .post(format!("{}/resume", cached.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    // The same chat without the cache: same replies, same logprobs up to f32 rounding.
    let (want, _) = two_turns(&plain).await;
    let m = metrics(&plain).await;
    assert_eq!(metric(&m, "vllm:prefix_cache_queries_total"), 0.0);
    assert_eq!(metric(&m, "vllm:prefix_cache_hits_total"), 0.0);
    for (got, want) in replies.iter().zip(&want) {
        let (g, w) = (&got["choices"][0], &want["choices"][0]);
        assert_eq!(g["message"]["content"], w["message"]["content"]);
        let lps = |c: &Value| -> Vec<f64> {
            c["logprobs"]["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap())
                .collect()
        };
        let (gl, wl) = (lps(g), lps(w));
        assert_eq!(gl.len(), 8);
        for (a, b) in gl.iter().zip(&wl) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
