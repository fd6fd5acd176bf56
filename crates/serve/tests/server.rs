//! End-to-end tests: the real server on 127.0.0.1:0 over the tiny fixture model, driven with
//! reqwest and with the official `openai` Python client.

mod common;

use claas_serve::{AppState, ServeConfig};
use serde_json::{json, Value};

use claas_testkit::fixtures::{dir as fixtures, ids, log_softmax, matrix, read_json};

fn base_cfg() -> ServeConfig {
    ServeConfig {
        enable_lora: true,
        enable_sleep_mode: true,
        lora_modules: vec![format!("r4={}", fixtures().join("lora-r4").display())],
        ..common::tiny_cfg()
    }
}

use common::{start, Server};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(s: &Server, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", s.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Parses an SSE body into its JSON events; asserts it ends with `[DONE]`.
fn sse_events(body: &str) -> Vec<Value> {
    let datas: Vec<&str> = body
        .split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .collect();
    assert_eq!(
        datas.last().copied(),
        Some("[DONE]"),
        "stream must end with [DONE]: {body}"
    );
    datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

async fn post_stream(s: &Server, path: &str, body: Value) -> Vec<Value> {
    let r = client()
        .post(format!("{}{path}", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    sse_events(&r.text().await.unwrap())
}

fn assert_openai_error(v: &Value, code: u16) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some(), "{v}");
    assert_eq!(e["code"], json!(code), "{v}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}

/// The value of the series of `name` whose labels include `label` (`key="value"`).
fn series(text: &str, name: &str, label: &str) -> f64 {
    find_series(text, name, label)
        .unwrap_or_else(|| panic!("series {name}{{{label}}} missing in\n{text}"))
}

fn find_series(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .and_then(|rest| rest.split_once('}'))
                .is_some_and(|(labels, _)| labels.split(',').any(|kv| kv == label))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|x| x.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_vllm_names_labels_and_histograms() {
    let s = start(base_cfg()).await;
    let (c, m) = get(&s, "/metrics").await;
    assert_eq!(c, 200);
    // Nothing has run yet: no adapter is active and no request has finished.
    assert_eq!(
        series(&m, "vllm:lora_requests_info", "running_lora_adapters=\"\""),
        0.0
    );
    assert!(!m.contains("vllm:request_success_total{"), "{m}");
    for model in ["tiny", "r4"] {
        let (c, v) = post(
            &s,
            "/v1/completions",
            json!({"model": model, "prompt": "count", "max_tokens": 4, "ignore_eos": true}),
        )
        .await;
        assert_eq!(c, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    // A forced token that is also a stop id ends the third request with "stop".
    let (c, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "count", "max_tokens": 3, "logit_bias": {"7": 100}, "stop_token_ids": [7]}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (c, m) = get(&s, "/metrics").await;
    assert_eq!(c, 200);
    assert_eq!(
        series(
            &m,
            "vllm:request_success_total",
            "finished_reason=\"length\""
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        series(&m, "vllm:request_success_total", "finished_reason=\"stop\""),
        1.0
    );
    for line in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(
            line.contains("model_name=\"tiny\""),
            "every series carries the served model name: {line}"
        );
    }
    assert_eq!(metric(&m, "vllm:generation_tokens_total"), 9.0);
    // Every token but each sequence's first is one inter-token interval.
    assert_eq!(metric(&m, "vllm:time_per_output_token_seconds_count"), 6.0);
    assert_eq!(metric(&m, "vllm:time_to_first_token_seconds_count"), 3.0);
    assert_eq!(metric(&m, "vllm:e2e_request_latency_seconds_count"), 3.0);
    // Cumulative buckets end in +Inf, equal to the count.
    assert_eq!(
        series(&m, "vllm:e2e_request_latency_seconds_bucket", "le=\"+Inf\""),
        3.0
    );
    for t in [
        "# TYPE vllm:time_per_output_token_seconds histogram",
        "# TYPE vllm:request_success_total counter",
        "# TYPE vllm:lora_requests_info gauge",
        "# TYPE vllm:num_requests_running gauge",
    ] {
        assert!(m.contains(t), "{t} missing in\n{m}");
    }
    // The adapter ran and finished: it is neither running nor waiting, and the gauge holds the
    // (Unix) time of the change, as vLLM's does.
    let stamp = series(&m, "vllm:lora_requests_info", "running_lora_adapters=\"\"");
    assert!(stamp > 1.7e9, "{m}");
    assert!(m.contains("max_lora=\"64\""), "{m}");

    // While a request on the adapter runs, the gauge names it. The model's whole context is
    // the longest run it allows (each step scraped ~every 5 ms); it is read from the served
    // model, not assumed, so other fixture shapes fit too.
    let prompt_len = s.state.tokenizer.encode("go", false).unwrap().len();
    let max_tokens = s.state.engine.max_model_len() - prompt_len - 1;
    let resp = client()
        .post(format!("{}/v1/completions", s.url))
        .json(&json!({"model": "r4", "prompt": "go", "max_tokens": max_tokens, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut last = String::new();
    for _ in 0..2000 {
        let (_, m) = get(&s, "/metrics").await;
        last = m;
        if last.contains("running_lora_adapters=\"r4\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(resp);
    assert!(
        last.contains("running_lora_adapters=\"r4\""),
        "the running adapter never showed in vllm:lora_requests_info:\n{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_models_tokenize_health_metrics() {
    let s = start(base_cfg()).await;
    assert_eq!(get(&s, "/health").await.0, 200);
    let (c, v) = get(&s, "/version").await;
    assert_eq!(c, 200);
    assert!(serde_json::from_str::<Value>(&v).unwrap()["version"].is_string());

    let (c, v) = get(&s, "/v1/models").await;
    assert_eq!(c, 200);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    let base = data.iter().find(|m| m["id"] == "tiny").unwrap();
    assert_eq!(base["parent"], Value::Null);
    let max_model_len = s.state.engine.max_model_len();
    assert_eq!(
        max_model_len as u64,
        read_json("tiny-qwen3/config.json")["max_position_embeddings"]
            .as_u64()
            .unwrap(),
        "vLLM's default max_model_len is the config's context"
    );
    assert_eq!(base["max_model_len"], max_model_len);
    let lora = data.iter().find(|m| m["id"] == "r4").unwrap();
    assert_eq!(lora["parent"], "tiny");

    // tokenize / detokenize round trip, vLLM shapes.
    let (c, v) = post(
        &s,
        "/tokenize",
        json!({"model": "tiny", "prompt": "Write a function"}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let toks = v["tokens"].as_array().unwrap().clone();
    assert_eq!(v["count"], json!(toks.len()));
    assert_eq!(v["max_model_len"], max_model_len);
    let want = s.state.tokenizer.encode("Write a function", true).unwrap();
    assert_eq!(toks, want.iter().map(|&t| json!(t)).collect::<Vec<_>>());
    let (c, v) = post(&s, "/detokenize", json!({"model": "tiny", "tokens": toks})).await;
    assert_eq!(c, 200);
    assert_eq!(v["prompt"], "Write a function");

    // Chat form: equals the chat template rendering, with and without the generation prompt.
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]);
    let (c, v) = post(
        &s,
        "/tokenize",
        json!({"model": "tiny", "messages": msgs, "add_generation_prompt": true}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let rendered = s
        .state
        .template
        .as_ref()
        .unwrap()
        .render(
            &claas_chat::normalize_messages(msgs.as_array().unwrap()).unwrap(),
            None,
            true,
            None,
        )
        .unwrap();
    assert!(rendered.contains("hi\nthere"), "{rendered}");
    let want = s.state.tokenizer.encode(&rendered, false).unwrap();
    assert_eq!(v["tokens"], json!(want));
    let (_, v2) = post(
        &s,
        "/tokenize",
        json!({"model": "tiny", "messages": msgs, "add_generation_prompt": false}),
    )
    .await;
    assert!(v2["count"].as_u64().unwrap() < v["count"].as_u64().unwrap());

    let (c, m) = get(&s, "/metrics").await;
    assert_eq!(c, 200);
    assert_eq!(metric(&m, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(&m, "vllm:num_requests_waiting"), 0.0);
    assert!(m.contains("vllm:time_to_first_token_seconds_bucket"));
    assert!(m.contains("vllm:e2e_request_latency_seconds_count"));

    let (c, v) = get(&s, "/is_sleeping").await;
    assert_eq!(c, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&v).unwrap()["is_sleeping"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_stream_and_non_stream() {
    let s = start(base_cfg()).await;
    let msgs =
        json!([{"role": "user", "content": "Hello there"}, {"role": "user", "content": "again"}]);
    for model in ["tiny", "r4"] {
        let body = json!({"model": model, "messages": msgs, "max_tokens": 12, "temperature": 0.8, "seed": 3, "ignore_eos": true});
        let (c, a) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(c, 200, "{a}");
        assert_eq!(a["object"], "chat.completion");
        assert_eq!(a["model"], model);
        let ch = &a["choices"][0];
        assert_eq!(ch["message"]["role"], "assistant");
        assert_eq!(ch["finish_reason"], "length");
        assert_eq!(a["usage"]["completion_tokens"], 12);
        let pt = a["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(a["usage"]["total_tokens"].as_u64().unwrap(), pt + 12);
        // same seed, same output
        let (_, b) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(
            a["choices"][0]["message"]["content"],
            b["choices"][0]["message"]["content"]
        );

        let mut sb = body.clone();
        sb["stream"] = json!(true);
        sb["stream_options"] = json!({"include_usage": true});
        let ev = post_stream(&s, "/v1/chat/completions", sb).await;
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        let mut text = String::new();
        let mut finish = None;
        for e in &ev {
            assert_eq!(e["object"], "chat.completion.chunk");
            if let Some(c) = e["choices"].as_array().and_then(|c| c.first()) {
                if let Some(t) = c["delta"]["content"].as_str() {
                    text.push_str(t);
                }
                if c["finish_reason"].is_string() {
                    finish = Some(c["finish_reason"].clone());
                }
            }
        }
        assert_eq!(json!(text), a["choices"][0]["message"]["content"]);
        assert_eq!(finish, Some(json!("length")));
        let last = ev.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 12);
    }

    // n = 2 with logprobs
    let (c, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": msgs, "max_tokens": 5, "n": 2,
        "logprobs": true, "top_logprobs": 3, "ignore_eos": true}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    for ch in v["choices"].as_array().unwrap() {
        let content = ch["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 5);
        for e in content {
            assert!(e["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 3);
        }
    }
    assert_eq!(v["usage"]["completion_tokens"], 10);

    // prompt_logprobs on chat (vLLM extension): one entry per prompt token, the first null
    let (c, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "r4", "messages": msgs, "max_tokens": 1, "prompt_logprobs": 0}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let plp = v["prompt_logprobs"].as_array().unwrap();
    assert_eq!(json!(plp.len()), v["usage"]["prompt_tokens"]);
    assert!(plp[0].is_null() && plp[1].is_object());

    // completions: text prompt, non-stream vs stream, stop string
    let body = json!({"model": "tiny", "prompt": "Write a function", "max_tokens": 10, "temperature": 0, "ignore_eos": true});
    let (c, a) = post(&s, "/v1/completions", body.clone()).await;
    assert_eq!(c, 200, "{a}");
    assert_eq!(a["object"], "text_completion");
    let text = a["choices"][0]["text"].as_str().unwrap().to_string();
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let ev = post_stream(&s, "/v1/completions", sb).await;
    let streamed: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    // echo
    let mut eb = body.clone();
    eb["echo"] = json!(true);
    let (_, e) = post(&s, "/v1/completions", eb).await;
    assert_eq!(
        e["choices"][0]["text"],
        json!(format!("Write a function{text}"))
    );
    // stop string taken from the greedy output: the text is cut before it
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[2..4].iter().collect();
        let mut sb = body.clone();
        sb["stop"] = json!([stop.clone()]);
        let (_, v) = post(&s, "/v1/completions", sb).await;
        let cut = &text[..text.find(&stop).unwrap()];
        assert_eq!(v["choices"][0]["text"], json!(cut));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["stop_reason"], json!(stop));
    }
    // stop token id: greedy's first token ends generation at once
    let first = s.state.tokenizer.encode(&text, false).unwrap()[0];
    let mut sb = body.clone();
    sb["stop_token_ids"] = json!([first]);
    let (_, v) = post(&s, "/v1/completions", sb).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], json!(first));
    assert_eq!(v["usage"]["completion_tokens"], 1);

    // tools are rendered into the prompt (the random model will not call them)
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let (c, with) = post(&s, "/v1/chat/completions", json!({"model": "tiny", "messages": msgs, "tools": tools, "tool_choice": "auto", "max_tokens": 3})).await;
    assert_eq!(c, 200, "{with}");
    let (_, without) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": msgs, "max_tokens": 3}),
    )
    .await;
    assert!(with["usage"]["prompt_tokens"].as_u64() > without["usage"]["prompt_tokens"].as_u64());
    let mut stream_tools =
        json!({"model": "tiny", "messages": msgs, "tools": tools, "max_tokens": 3, "stream": true});
    stream_tools["chat_template_kwargs"] = json!({"enable_thinking": false});
    post_stream(&s, "/v1/chat/completions", stream_tools).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_prompt_logprobs_match_fixture_logits() {
    let s = start(base_cfg()).await;
    for (file, model) in [("forward.json", "tiny"), ("forward_lora.json", "r4")] {
        let fx = read_json(file);
        for seq in fx["sequences"].as_array().unwrap() {
            let ids = ids(&seq["input_ids"]);
            let logits = matrix(&seq["logits"]);
            assert_eq!(logits.len(), ids.len());
            let (c, v) = post(
                &s,
                "/v1/completions",
                json!({"model": model, "prompt": ids, "max_tokens": 1,
                "temperature": 0, "prompt_logprobs": 2, "logprobs": 2}),
            )
            .await;
            assert_eq!(c, 200, "{v}");
            let plp = v["choices"][0]["prompt_logprobs"].as_array().unwrap();
            assert_eq!(plp.len(), ids.len());
            assert_eq!(plp[0], Value::Null);
            let mut worst = 0f64;
            for i in 1..ids.len() {
                let want = log_softmax(&logits[i - 1]);
                let got = &plp[i][ids[i].to_string()];
                worst = worst.max((got["logprob"].as_f64().unwrap() - want[ids[i] as usize]).abs());
                let rank = 1 + want.iter().filter(|&&x| x > want[ids[i] as usize]).count();
                assert_eq!(got["rank"], json!(rank));
                // the top-2 alternatives are there too
                let mut order: Vec<usize> = (0..want.len()).collect();
                order.sort_by(|a, b| want[*b].partial_cmp(&want[*a]).unwrap());
                for &t in &order[..2] {
                    let e = &plp[i][t.to_string()];
                    assert!(
                        (e["logprob"].as_f64().unwrap() - want[t]).abs() < 1e-4,
                        "{file} pos {i} top {t}"
                    );
                }
            }
            assert!(worst < 1e-4, "{file}: prompt logprob max error {worst}");
            // the greedy token is the argmax of the last row, with its logprob
            let last = log_softmax(logits.last().unwrap());
            let (best, best_lp) =
                last.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |a, (i, &x)| if x > a.1 { (i, x) } else { a },
                    );
            let lp = &v["choices"][0]["logprobs"];
            assert!((lp["token_logprobs"][0].as_f64().unwrap() - best_lp).abs() < 1e-4);
            let tok = s.state.tokenizer.decode(&[best as u32], false).unwrap();
            assert_eq!(lp["tokens"][0], json!(tok));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_auth_and_not_found() {
    let mut cfg = base_cfg();
    cfg.api_key = Some("sekret".into());
    let s = start(cfg).await;
    let c = client();
    let r = c.get(format!("{}/v1/models", s.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_openai_error(&r.json().await.unwrap(), 401);
    let r = c
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(get(&s, "/health").await.0, 200);
    assert_eq!(get(&s, "/metrics").await.0, 200);
    let authed = |path: &str, body: Value| {
        c.post(format!("{}{path}", s.url))
            .bearer_auth("sekret")
            .json(&body)
            .send()
    };
    let r = c
        .get(format!("{}/v1/models", s.url))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let msgs = json!([{"role": "user", "content": "hi"}]);
    // An unknown model: 404 NotFoundError naming the parameter, as vLLM.
    let r = authed(
        "/v1/chat/completions",
        json!({"model": "nope", "messages": msgs}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().await.unwrap();
    assert_openai_error(&v, 404);
    assert_eq!(v["error"]["type"], "NotFoundError", "{v}");
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert_eq!(v["error"]["message"], "The model `nope` does not exist.");
    let bad = [
        json!({"model": "tiny", "messages": msgs, "temperature": -1}),
        json!({"model": "tiny", "messages": msgs, "top_p": 2.0}),
        json!({"model": "tiny", "messages": msgs, "max_tokens": 100000}),
        json!({"model": "tiny", "messages": "not a list"}),
        json!({"model": "tiny", "messages": msgs, "top_logprobs": 2}),
        json!({"model": "tiny"}),
        // vLLM refuses stream options on a request that does not stream.
        json!({"model": "tiny", "messages": msgs, "stream_options": {"include_usage": true}}),
    ];
    for b in bad {
        let r = authed("/v1/chat/completions", b.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{b}");
        assert_openai_error(&r.json().await.unwrap(), 400);
    }
    // a prompt longer than max-model-len
    let long: Vec<u32> = (0..s.state.engine.max_model_len() + 88)
        .map(|i| (i % 900) as u32)
        .collect();
    let r = authed("/v1/completions", json!({"model": "tiny", "prompt": long}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_openai_error(&v, 400);
    assert_eq!(v["error"]["param"], "prompt", "{v}");
    // max_tokens that would wrap around the context check: refused, never generated.
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "hi", "max_tokens": u64::MAX}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "max_tokens": u64::MAX}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "max_completion_tokens": u64::MAX - 3}),
            "max_completion_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "hi", "max_tokens": usize::MAX / 2 + 1}),
            "max_tokens",
        ),
    ] {
        let r = authed(path, body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_openai_error(&v, 400);
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maximum context length"),
            "{v}"
        );
    }
    // 2^64 is no integer serde takes: an invalid body, not a wrapped one.
    let r = c
        .post(format!("{}/v1/completions", s.url))
        .bearer_auth("sekret")
        .header("content-type", "application/json")
        .body(r#"{"model": "tiny", "prompt": "hi", "max_tokens": 18446744073709551616}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_openai_error(&r.json().await.unwrap(), 400);
    let r = authed(
        "/v1/completions",
        json!({"model": "tiny", "prompt": [5000]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // malformed JSON
    let r = c
        .post(format!("{}/v1/completions", s.url))
        .bearer_auth("sekret")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_openai_error(&r.json().await.unwrap(), 400);
    // unknown route and unknown adapter
    let r = c
        .get(format!("{}/v1/nothing", s.url))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_openai_error(&r.json().await.unwrap(), 404);
    let r = c.get(format!("{}/nothing", s.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = authed("/v1/unload_lora_adapter", json!({"lora_name": "ghost"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = authed(
        "/v1/load_lora_adapter",
        json!({"lora_name": "x", "lora_path": "/does/not/exist"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // the server still works
    let r = authed(
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": msgs, "max_tokens": 2}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

async fn greedy(s: &Server, model: &str, max_tokens: usize) -> (u16, Value) {
    post(
        s,
        "/v1/completions",
        json!({"model": model, "prompt": "Once upon", "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": true, "prompt_logprobs": 0}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_load_unload_replace_while_in_flight() {
    let root = tempfile::tempdir().unwrap();
    for name in ["orig", "after"] {
        let src = if name == "orig" {
            fixtures().join("lora-r4")
        } else {
            fixtures().join("lora-r4-after-step")
        };
        let dst = root.path().join("adapters").join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    let aliases = root.path().join(".aliases.json");
    std::fs::write(
        &aliases,
        r#"{"openclaw/assistant-latest": "adapters/orig"}"#,
    )
    .unwrap();
    let mut cfg = base_cfg();
    cfg.lora_root = Some(root.path().to_path_buf());
    cfg.lora_alias_file = Some(aliases);
    let s = start(cfg).await;
    let orig = root.path().join("adapters/orig").display().to_string();
    let after = root.path().join("adapters/after").display().to_string();

    // alias served under its normalised name, same weights as r4 (same files)
    let (c, al) = greedy(&s, "openclaw-assistant-latest", 4).await;
    assert_eq!(c, 200, "{al}");
    let (_, r4) = greedy(&s, "r4", 4).await;
    assert_eq!(
        al["choices"][0]["prompt_logprobs"],
        r4["choices"][0]["prompt_logprobs"]
    );

    // outside the root: 403, nothing registered
    let (c, v) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "evil", "lora_path": fixtures().join("lora-r4")}),
    )
    .await;
    assert_eq!(c, 403, "{v}");
    assert_openai_error(&v, 403);
    let (c, _) = post(&s, "/v1/load_lora_adapter", json!({"lora_name": "evil", "lora_path": format!("{}/adapters/../../", root.path().display())})).await;
    assert!(c == 403 || c == 400);
    assert_eq!(greedy(&s, "evil", 1).await.0, 404);

    let (c, v) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "a", "lora_path": orig}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    assert!(v.as_str().unwrap().contains("added successfully"));
    let (_, models) = get(&s, "/v1/models").await;
    assert!(models.contains("\"a\""));
    let (c, v) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "b", "lora_path": after}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let (_, ref_orig) = greedy(&s, "a", 300).await;
    let (_, ref_after) = greedy(&s, "b", 300).await;
    assert_ne!(
        ref_orig["choices"][0]["prompt_logprobs"],
        ref_after["choices"][0]["prompt_logprobs"]
    );

    // a stream on "a" starts; "a" is replaced by the after-step weights mid-stream; the stream
    // finishes on the weights it started with.
    let req = client()
        .post(format!("{}/v1/completions", s.url))
        .json(&json!({"model": "a", "prompt": "Once upon", "max_tokens": 300, "temperature": 0, "ignore_eos": true, "stream": true}))
        .send();
    let mut resp = req.await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = String::new();
    body.push_str(&String::from_utf8_lossy(
        &resp.chunk().await.unwrap().unwrap(),
    ));
    let v_before = s.state.engine.adapter("a").unwrap().version;
    let (c, _) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "a", "lora_path": after}),
    )
    .await;
    assert_eq!(c, 200);
    assert!(s.state.engine.adapter("a").unwrap().version > v_before);
    while let Some(ch) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&ch));
    }
    let streamed: String = sse_events(&body)
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(json!(streamed), ref_orig["choices"][0]["text"]);
    // new requests see the new weights
    let (_, now_a) = greedy(&s, "a", 300).await;
    assert_eq!(
        now_a["choices"][0]["prompt_logprobs"],
        ref_after["choices"][0]["prompt_logprobs"]
    );
    assert_eq!(now_a["choices"][0]["text"], ref_after["choices"][0]["text"]);

    // Unload while a request is in flight: once it streams its first generated token it is
    // running on the adapter, and it completes in full; later requests get 404.
    let mut resp = client()
        .post(format!("{}/v1/completions", s.url))
        .json(
            &json!({"model": "a", "prompt": "Once upon", "max_tokens": 40, "temperature": 0,
            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = String::new();
    while !body.contains("\"text\"") {
        body.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().expect("stream ended early"),
        ));
    }
    let (c, v) = post(&s, "/v1/unload_lora_adapter", json!({"lora_name": "a"})).await;
    assert_eq!(c, 200, "{v}");
    while let Some(ch) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&ch));
    }
    let events = sse_events(&body);
    let last = events.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 40, "{last}");
    let finish: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0].get("finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("length")]);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    // "b" serves the same after-step weights "a" had.
    let (_, want) = greedy(&s, "b", 40).await;
    assert_eq!(
        json!(streamed),
        want["choices"][0]["text"],
        "the stream kept the weights it started on"
    );
    assert_eq!(greedy(&s, "a", 1).await.0, 404);
    let (_, models) = get(&s, "/v1/models").await;
    assert!(!models.contains("\"a\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_wake_round_trip_same_outputs() {
    let s = start(base_cfg()).await;
    let body = json!({"model": "r4", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 16,
        "temperature": 1.0, "top_p": 0.9, "seed": 1234, "ignore_eos": true});
    let (c, before) = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(c, 200);
    for level in [1, 2] {
        let r = client()
            .post(format!("{}/sleep?level={level}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (_, v) = get(&s, "/is_sleeping").await;
        assert_eq!(
            serde_json::from_str::<Value>(&v).unwrap()["is_sleeping"],
            true
        );
        let (c, v) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(c, 503, "{v}");
        assert_openai_error(&v, 503);
        let r = client()
            .post(format!("{}/wake_up", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (_, v) = get(&s, "/is_sleeping").await;
        assert_eq!(
            serde_json::from_str::<Value>(&v).unwrap()["is_sleeping"],
            false
        );
        let (c, after) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(c, 200);
        assert_eq!(
            before["choices"][0]["message"]["content"], after["choices"][0]["message"]["content"],
            "level {level}"
        );
    }
    let r = client()
        .post(format!("{}/sleep?level=3", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_frees_the_slot() {
    // The built-in model allows 40960 positions: a 30000-token request cannot finish
    // before the test has looked at it, however loaded the machine is.
    let s = start(ServeConfig::default()).await;
    let mut resp = client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "builtin:tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 30000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(resp.chunk().await.unwrap().is_some());
    // The first chunk (the role header) may go out before the engine takes the request on.
    let mut running = false;
    for _ in 0..2000 {
        let (_, m) = get(&s, "/metrics").await;
        if metric(&m, "vllm:num_requests_running") == 1.0 {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(running, "the request never started running");
    drop(resp);
    // The engine checks for closed streams at every step; without that the request would
    // run for its full 30000 tokens and outlast this loop.
    // One scrape is not a snapshot: wait until every figure agrees. A request that completed
    // instead of being aborted never satisfies the aborted count.
    let mut last = String::new();
    let mut freed = false;
    for _ in 0..2000 {
        let (_, m) = get(&s, "/metrics").await;
        freed = find_series(
            &m,
            "vllm:request_success_total",
            "finished_reason=\"abort\"",
        ) == Some(1.0)
            && metric(&m, "vllm:request_aborted_total") == 1.0
            && metric(&m, "vllm:num_requests_running") == 0.0
            && metric(&m, "vllm:num_requests_waiting") == 0.0;
        last = m;
        if freed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(freed, "the aborted request was not freed:\n{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client() {
    let mut cfg = base_cfg();
    cfg.api_key = Some("py-key".into());
    let s = start(cfg).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("{}/v1", s.url))
        .arg("py-key")
        .arg(fixtures())
        .output()
        .await
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ALL OK"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_model_openclaw_sized_request() {
    let s = start(ServeConfig::default()).await;
    let (_, models) = get(&s, "/v1/models").await;
    assert!(models.contains("builtin:tiny"), "{models}");
    // OpenClaw sends a ~28k-character system prompt and tools on every request.
    let system: String = "You are a helpful assistant running inside OpenClaw. ".repeat(540);
    assert!(system.len() > 28_000);
    let tools = json!([{"type": "function", "function": {"name": "read_file", "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]);
    let body = json!({"model": "builtin:tiny", "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": "are you there?"}],
        "tools": tools, "max_tokens": 8, "seed": 5, "chat_template_kwargs": {"enable_thinking": false}});
    let (c, v) = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(c, 200, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 1000);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let ev = post_stream(&s, "/v1/chat/completions", sb).await;
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    let calls = ev
        .iter()
        .any(|e| e["choices"][0]["delta"]["tool_calls"].is_array());
    let ns = &v["choices"][0]["message"];
    if !calls && ns["tool_calls"].as_array().is_some_and(|a| a.is_empty()) {
        assert_eq!(json!(text), ns["content"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_logprobs_bounds_every_logprobs_field() {
    let s = start(base_cfg()).await;
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "a b", "max_tokens": 1, "prompt_logprobs": 21}),
            "prompt_logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "a b", "max_tokens": 1, "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "a"}], "max_tokens": 1, "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
    ] {
        let (c, v) = post(&s, path, body).await;
        assert_eq!(c, 400, "{v}");
        assert_openai_error(&v, 400);
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 20"),
            "{v}"
        );
    }
    // A scoring server (e.g. a remote SDPO teacher) raises the limit.
    let mut cfg = base_cfg();
    cfg.max_logprobs = 60;
    let s = start(cfg).await;
    let (c, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 1, "prompt_logprobs": 60}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let entries = v["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries[0].is_null());
    for e in &entries[1..] {
        let n = e.as_object().unwrap().len();
        assert!((60..=61).contains(&n), "{n} entries");
    }
}

async fn post_query(s: &Server, path: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", s.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn paused(s: &Server) -> bool {
    let (c, v) = get(s, "/is_paused").await;
    assert_eq!(c, 200);
    serde_json::from_str::<Value>(&v).unwrap()["is_paused"]
        .as_bool()
        .unwrap()
}

async fn scrape(s: &Server) -> (f64, f64) {
    let (_, m) = get(s, "/metrics").await;
    (
        metric(&m, "vllm:num_requests_running"),
        metric(&m, "vllm:num_requests_waiting"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_requests_until_resume() {
    let s = start(base_cfg()).await;
    let body = json!({"model": "r4", "prompt": "Once upon", "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let (c, want) = post(&s, "/v1/completions", body.clone()).await;
    assert_eq!(c, 200, "{want}");
    assert!(!paused(&s).await);
    // The reference CLaaS API sends `level=1`: unknown parameters are ignored, as FastAPI does.
    let (c, v) = post_query(&s, "/pause?level=1").await;
    assert_eq!((c, &v), (200, &json!({"status": "paused"})));
    assert!(paused(&s).await);

    let url = s.url.clone();
    let held = tokio::spawn(async move {
        let r = client()
            .post(format!("{url}/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    // Accepted and queued, not rejected.
    let mut queued = false;
    for _ in 0..2000 {
        if scrape(&s).await == (0.0, 1.0) {
            queued = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        queued,
        "the request sent while paused never showed up as waiting"
    );
    // A `wait` pause answers once nothing runs; had the request been scheduled, it would
    // answer only after the request finished.
    let (c, _) = post_query(&s, "/pause?wait_for_inflight_requests=true").await;
    assert_eq!(c, 200);
    assert!(!held.is_finished());
    assert_eq!(scrape(&s).await, (0.0, 1.0));

    let (c, v) = post_query(&s, "/resume").await;
    assert_eq!((c, &v), (200, &json!({"status": "resumed"})));
    assert!(!paused(&s).await);
    let (c, got) = held.await.unwrap();
    assert_eq!(c, 200, "{got}");
    assert_eq!(got["choices"][0]["text"], want["choices"][0]["text"]);
    assert_eq!(got["choices"][0]["finish_reason"], "length");

    // Bad parameters: OpenAI-style 400 naming the parameter; nothing paused.
    for (q, param) in [
        ("mode=later", "mode"),
        (
            "wait_for_inflight_requests=maybe",
            "wait_for_inflight_requests",
        ),
        ("clear_cache=2", "clear_cache"),
    ] {
        let (c, v) = post_query(&s, &format!("/pause?{q}")).await;
        assert_eq!(c, 400, "{q}: {v}");
        assert_openai_error(&v, 400);
        assert_eq!(v["error"]["param"], param);
        assert!(!paused(&s).await);
    }
    assert_eq!(get(&s, "/pause").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_aborts_or_waits_for_inflight_requests() {
    // The built-in model allows 40960 positions: a 30000-token stream is still running when
    // the pause arrives.
    let s = start(ServeConfig::default()).await;
    let mut resp = client()
        .post(format!("{}/v1/completions", s.url))
        .json(&json!({"model": "builtin:tiny", "prompt": "go", "max_tokens": 30000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = String::new();
    // Wait for a generated token: the request is running.
    while !body.contains("\"text\"") {
        body.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().expect("stream ended early"),
        ));
    }
    let (c, _) = post_query(&s, "/pause?mode=abort").await;
    assert_eq!(c, 200);
    while let Some(ch) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&ch));
    }
    let events = sse_events(&body);
    let last = events.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "abort", "{last}");
    assert!(events.len() < 30000);
    post_query(&s, "/resume").await;

    // wait: the running request completes in full before the pause answers.
    let url = s.url.clone();
    let inflight = tokio::spawn(async move {
        let r = client()
            .post(format!("{url}/v1/completions"))
            .json(&json!({"model": "builtin:tiny", "prompt": "go", "max_tokens": 400, "temperature": 0, "ignore_eos": true}))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    });
    let mut running = false;
    for _ in 0..2000 {
        if scrape(&s).await.0 == 1.0 {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(running, "the request never started running");
    let (c, _) = post_query(&s, "/pause?mode=wait").await;
    assert_eq!(c, 200);
    assert_eq!(scrape(&s).await.0, 0.0);
    let v = inflight.await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 400);
    assert!(paused(&s).await);
    post_query(&s, "/resume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_token_ids_chat_and_completions() {
    let s = start(base_cfg()).await;
    let msgs = json!([{"role": "user", "content": "Hello there"}]);
    let body = json!({"model": "r4", "messages": msgs, "max_tokens": 6, "temperature": 0.8, "seed": 7, "ignore_eos": true});
    // Off by default: the fields are null.
    let (c, v) = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["prompt_token_ids"], Value::Null);
    assert_eq!(v["choices"][0]["token_ids"], Value::Null);

    let mut b = body.clone();
    b["return_token_ids"] = json!(true);
    let (c, v) = post(&s, "/v1/chat/completions", b.clone()).await;
    assert_eq!(c, 200, "{v}");
    let (_, tok) = post(
        &s,
        "/tokenize",
        json!({"model": "r4", "messages": msgs, "add_generation_prompt": true}),
    )
    .await;
    assert_eq!(v["prompt_token_ids"], tok["tokens"]);
    let ids: Vec<u32> = serde_json::from_value(v["choices"][0]["token_ids"].clone()).unwrap();
    assert_eq!(json!(ids.len()), v["usage"]["completion_tokens"]);
    assert_eq!(
        json!(s.state.tokenizer.decode(&ids, true).unwrap()),
        v["choices"][0]["message"]["content"]
    );
    // Streaming: prompt ids on the role chunk only, each token's id on its chunk.
    b["stream"] = json!(true);
    let ev = post_stream(&s, "/v1/chat/completions", b).await;
    assert_eq!(ev[0]["prompt_token_ids"], tok["tokens"]);
    assert!(ev[1..].iter().all(|e| e.get("prompt_token_ids").is_none()));
    let streamed: Vec<u32> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["token_ids"].as_array())
        .flatten()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(streamed, ids);

    // Completions: per choice, for each prompt.
    let prompts = json!(["Once upon", "Write a function"]);
    let body = json!({"model": "tiny", "prompt": prompts, "max_tokens": 5, "temperature": 0, "ignore_eos": true, "return_token_ids": true});
    let (c, v) = post(&s, "/v1/completions", body.clone()).await;
    assert_eq!(c, 200, "{v}");
    let mut all = Vec::new();
    for (i, p) in ["Once upon", "Write a function"].iter().enumerate() {
        let ch = &v["choices"][i];
        assert_eq!(
            ch["prompt_token_ids"],
            json!(s.state.tokenizer.encode(p, true).unwrap())
        );
        let ids: Vec<u32> = serde_json::from_value(ch["token_ids"].clone()).unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(
            json!(s.state.tokenizer.decode(&ids, true).unwrap()),
            ch["text"]
        );
        all.push(ids);
    }
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let ev = post_stream(&s, "/v1/completions", sb).await;
    for (i, p) in ["Once upon", "Write a function"].iter().enumerate() {
        let mine: Vec<&Value> = ev
            .iter()
            .filter(|e| e["choices"][0]["index"] == json!(i))
            .collect();
        assert_eq!(
            mine[0]["choices"][0]["prompt_token_ids"],
            json!(s.state.tokenizer.encode(p, true).unwrap())
        );
        assert!(mine[1..]
            .iter()
            .all(|e| e["choices"][0].get("prompt_token_ids").is_none()));
        let streamed: Vec<u32> = mine
            .iter()
            .filter_map(|e| e["choices"][0]["token_ids"].as_array())
            .flatten()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(streamed, all[i]);
    }
    // With echo, vLLM returns the prompt as ids instead of text.
    let mut eb = body.clone();
    eb["echo"] = json!(true);
    let (_, e) = post(&s, "/v1/completions", eb).await;
    assert_eq!(e["choices"][0]["text"], v["choices"][0]["text"]);
    assert_eq!(
        e["choices"][0]["prompt_token_ids"],
        v["choices"][0]["prompt_token_ids"]
    );
    // Without the flag: null, as before.
    let mut nb = body.clone();
    nb["return_token_ids"] = json!(false);
    let (_, n) = post(&s, "/v1/completions", nb).await;
    assert_eq!(n["choices"][0]["prompt_token_ids"], Value::Null);
    assert_eq!(n["choices"][0]["token_ids"], Value::Null);
}

fn copy_adapter(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

/// Replaces an adapter folder the way the store does: staged, then renamed into place.
fn swap_adapter(root: &std::path::Path, id: &str, src: &std::path::Path) {
    let stage = root.join(".stage");
    let old = root.join(".old");
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_dir_all(&old);
    copy_adapter(src, &stage);
    std::fs::rename(root.join(id), &old).unwrap();
    std::fs::rename(&stage, root.join(id)).unwrap();
}

fn plp(v: &Value) -> Value {
    v["choices"][0]["prompt_logprobs"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_resolved_by_name_under_the_lora_root() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut cfg = base_cfg();
    cfg.lora_root = Some(root.to_path_buf());
    let s = start(cfg).await;
    // Reference weights, loaded explicitly from copies under the root.
    copy_adapter(
        &fixtures().join("lora-r4-after-step"),
        &root.join("ref/after"),
    );
    let (c, v) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "after", "lora_path": root.join("ref/after")}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let r4 = plp(&greedy(&s, "r4", 1).await.1);
    let after = plp(&greedy(&s, "after", 1).await.1);
    assert_ne!(r4, after);

    // Unknown before the folder exists: the usual error.
    let (c, missing) = greedy(&s, "team/bot", 1).await;
    assert_eq!(c, 404, "{missing}");
    assert_openai_error(&missing, 404);
    assert_eq!(
        missing["error"]["message"],
        "The model `team/bot` does not exist."
    );

    // Written after start, served by id and by its served form without a load call.
    copy_adapter(&fixtures().join("lora-r4"), &root.join("team/bot"));
    for name in ["team/bot", "team-bot"] {
        let (c, v) = greedy(&s, name, 1).await;
        assert_eq!(c, 200, "{name}: {v}");
        assert_eq!(v["model"], name);
        assert_eq!(plp(&v), r4, "{name}");
    }
    assert!(get(&s, "/v1/models").await.1.contains("\"team/bot\""));

    // Aliases from the root's .aliases.json, by alias and by served alias.
    std::fs::write(root.join(".aliases.json"), r#"{"team/latest": "team/bot"}"#).unwrap();
    for name in ["team/latest", "team-latest"] {
        let (c, v) = greedy(&s, name, 1).await;
        assert_eq!(c, 200, "{name}: {v}");
        assert_eq!(plp(&v), r4, "{name}");
    }

    // The live folder is swapped: every plain name that resolves to it follows.
    swap_adapter(root, "team/bot", &fixtures().join("lora-r4-after-step"));
    for name in ["team/bot", "team-bot", "team/latest", "team-latest"] {
        let (c, v) = greedy(&s, name, 1).await;
        assert_eq!(c, 200, "{name}: {v}");
        assert_eq!(plp(&v), after, "{name} after the swap");
    }
    // The alias is retargeted: its names follow it.
    copy_adapter(&fixtures().join("lora-r4"), &root.join("team/old"));
    std::fs::write(root.join(".aliases.json"), r#"{"team/latest": "team/old"}"#).unwrap();
    assert_eq!(plp(&greedy(&s, "team-latest", 1).await.1), r4);
    assert_eq!(plp(&greedy(&s, "team/bot", 1).await.1), after);

    // An explicit load under a resolved name takes over, as today.
    let (c, _) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "team-bot", "lora_path": root.join("team/old")}),
    )
    .await;
    assert_eq!(c, 200);
    swap_adapter(root, "team/old", &fixtures().join("lora-r4-after-step"));
    assert_eq!(plp(&greedy(&s, "team-bot", 1).await.1), r4);

    // Nothing outside the root: a symlinked adapter folder leading out is refused.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(fixtures().join("lora-r4"), root.join("escape")).unwrap();
        let (c, v) = greedy(&s, "escape", 1).await;
        assert_eq!(c, 403, "{v}");
        assert_openai_error(&v, 403);
        assert!(!get(&s, "/v1/models").await.1.contains("\"escape\""));
    }
    // Names that are no ids at all still get the usual error.
    for name in ["../etc", "team/nope", "a@v1"] {
        let (c, v) = greedy(&s, name, 1).await;
        assert_eq!(c, 404, "{name}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_versions_resolved_by_name() {
    let root = tempfile::tempdir().unwrap();
    let store = claas_store::LoraStore::open(root.path()).unwrap();
    let write = |src: std::path::PathBuf| {
        move |dir: &std::path::Path| -> std::io::Result<()> {
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                std::fs::copy(src.join(f), dir.join(f))?;
            }
            Ok(())
        }
    };
    let v0 = store
        .create_versioned(
            "team/v",
            json!({}),
            false,
            write(fixtures().join("lora-r4")),
        )
        .unwrap();
    let v1 = store
        .commit_version(
            "team/v",
            json!({}),
            write(fixtures().join("lora-r4-after-step")),
        )
        .unwrap();
    let mut cfg = base_cfg();
    cfg.lora_root = Some(root.path().to_path_buf());
    let s = start(cfg).await;
    // What loading each version folder explicitly serves.
    let mut explicit = Vec::new();
    for (name, info) in [("x0", &v0), ("x1", &v1)] {
        let (c, v) = post(
            &s,
            "/v1/load_lora_adapter",
            json!({"lora_name": name, "lora_path": info.dir}),
        )
        .await;
        assert_eq!(c, 200, "{v}");
        explicit.push(plp(&greedy(&s, name, 1).await.1));
    }
    assert_ne!(explicit[0], explicit[1]);
    for (name, want) in [
        (format!("team/v@v{}", v0.version), &explicit[0]),
        (format!("team-v@v{}", v0.version), &explicit[0]),
        (format!("team/v@v{}", v1.version), &explicit[1]),
        ("team/v".to_string(), &explicit[1]),
    ] {
        let (c, v) = greedy(&s, &name, 1).await;
        assert_eq!(c, 200, "{name}: {v}");
        assert_eq!(v["model"], json!(name));
        assert_eq!(&plp(&v), want, "{name}");
    }
    // Rolling back changes what the live name serves; a version name stays what it was.
    store.rollback("team/v", v0.version).unwrap();
    assert_eq!(plp(&greedy(&s, "team/v", 1).await.1), explicit[0]);
    let pinned = format!("team/v@v{}", v1.version);
    assert_eq!(plp(&greedy(&s, &pinned, 1).await.1), explicit[1]);
    // No such version: the usual error.
    let (c, v) = greedy(&s, "team/v@v99", 1).await;
    assert_eq!(c, 404, "{v}");
    assert_eq!(
        v["error"]["message"],
        "The model `team/v@v99` does not exist."
    );
}

/// Sends `method path` with an optional JSON body and an optional bearer key.
async fn call(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, String) {
    let url = format!("{}{path}", s.url);
    let mut rb = match method {
        "GET" => client().get(url),
        _ => client().post(url),
    };
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_and_admin_routes() {
    let mut cfg = base_cfg();
    cfg.api_key = Some("sekret".into());
    let s = start(cfg).await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let lora = fixtures().join("lora-r4").display().to_string();
    // (method, path, body, needs the key), in an order that also works when every call
    // succeeds (sleep before wake_up, pause before resume, load before unload).
    let routes: Vec<(&str, &str, Option<Value>, bool)> = vec![
        ("GET", "/v1/models", None, true),
        (
            "POST",
            "/v1/chat/completions",
            Some(json!({"model": "tiny", "messages": msgs, "max_tokens": 1})),
            true,
        ),
        (
            "POST",
            "/v1/completions",
            Some(json!({"model": "tiny", "prompt": "hi", "max_tokens": 1})),
            true,
        ),
        (
            "POST",
            "/v1/tokenize",
            Some(json!({"model": "tiny", "prompt": "hi"})),
            true,
        ),
        (
            "POST",
            "/v1/detokenize",
            Some(json!({"model": "tiny", "tokens": [5]})),
            true,
        ),
        (
            "POST",
            "/v1/load_lora_adapter",
            Some(json!({"lora_name": "k", "lora_path": lora})),
            true,
        ),
        (
            "POST",
            "/v1/unload_lora_adapter",
            Some(json!({"lora_name": "k"})),
            true,
        ),
        ("POST", "/sleep?level=1", None, true),
        ("POST", "/wake_up", None, true),
        ("POST", "/pause", None, true),
        ("POST", "/resume", None, true),
        (
            "POST",
            "/tokenize",
            Some(json!({"model": "tiny", "prompt": "hi"})),
            false,
        ),
        (
            "POST",
            "/detokenize",
            Some(json!({"model": "tiny", "tokens": [5]})),
            false,
        ),
        ("GET", "/health", None, false),
        ("GET", "/ping", None, false),
        ("GET", "/version", None, false),
        ("GET", "/metrics", None, false),
        ("GET", "/is_sleeping", None, false),
        ("GET", "/is_paused", None, false),
    ];
    for (m, p, b, keyed) in &routes {
        for key in [None, Some("wrong")] {
            let (c, text) = call(&s, m, p, b.clone(), key).await;
            if *keyed {
                assert_eq!(c, 401, "{m} {p} with {key:?}: {text}");
                assert_openai_error(&serde_json::from_str(&text).unwrap(), 401);
            } else {
                assert_eq!(c, 200, "{m} {p} with {key:?}: {text}");
            }
        }
    }
    // Nothing the refused calls asked for happened.
    assert!(!paused(&s).await);
    let (_, v) = get(&s, "/is_sleeping").await;
    assert_eq!(
        serde_json::from_str::<Value>(&v).unwrap()["is_sleeping"],
        false
    );
    assert!(s.state.engine.adapter("k").is_none());
    for (m, p, b, _) in &routes {
        let (c, text) = call(&s, m, p, b.clone(), Some("sekret")).await;
        assert_eq!(c, 200, "{m} {p} with the key: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_are_refused_by_name() {
    let s = start(base_cfg()).await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let chat = |extra: Value| {
        let mut b = json!({"model": "tiny", "messages": msgs, "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cmpl = |extra: Value| {
        let mut b = json!({"model": "tiny", "prompt": "hi", "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Structured output fields with bad values (their good values are tested in structured.rs).
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"response_format": {"type": "yaml"}})),
            "response_format",
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}}),
            ),
            "response_format",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"structured_outputs": {"json": {}, "regex": "a"}})),
            "structured_outputs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"structured_outputs": {"regex": "a", "structural_tag": {}}})),
            "structured_outputs",
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}}}),
            ),
            "guided_json",
        ),
        (
            "/v1/completions",
            cmpl(json!({"guided_regex": "a(+"})),
            "guided_regex",
        ),
        (
            "/v1/completions",
            cmpl(json!({"guided_choice": "a"})),
            "guided_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"guided_grammar": "root ::= \"a\""})),
            "guided_grammar",
        ),
        (
            "/v1/completions",
            cmpl(json!({"guided_regex": "a", "guided_choice": ["a"]})),
            "guided_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "required", "guided_regex": "a"})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "sometimes"})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            ),
            "tool_choice",
        ),
        ("/v1/completions", cmpl(json!({"suffix": "end"})), "suffix"),
        (
            "/v1/completions",
            cmpl(json!({"use_beam_search": true})),
            "use_beam_search",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logit_bias": {"5": 100.5}})),
            "logit_bias",
        ),
        (
            "/v1/completions",
            cmpl(json!({"logit_bias": {"5": -101}})),
            "logit_bias",
        ),
        (
            "/v1/completions",
            cmpl(json!({"logit_bias": {"99999999": 1}})),
            "logit_bias",
        ),
        (
            "/v1/completions",
            cmpl(json!({"logit_bias": {"x": 1}})),
            "logit_bias",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"prompt_logprobs": 21})),
            "prompt_logprobs",
        ),
    ];
    for (path, body, param) in cases {
        let (c, v) = post(&s, path, body.clone()).await;
        assert_eq!(c, 400, "{body}: {v}");
        assert_openai_error(&v, 400);
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{v}"
        );
    }
    // Their no-op values and unknown fields (logged) still serve.
    for (path, body) in [
        (
            "/v1/chat/completions",
            chat(
                json!({"response_format": {"type": "text"}, "guided_json": null, "frobnicate": 1}),
            ),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "auto"})),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "none"})),
        ),
        (
            "/v1/completions",
            cmpl(json!({"suffix": null, "user": "me"})),
        ),
    ] {
        let (c, v) = post(&s, path, body.clone()).await;
        assert_eq!(c, 200, "{body}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_steers_sampling_and_token_ids_name_logprobs() {
    let s = start(base_cfg()).await;
    let body = json!({"model": "tiny", "prompt": "Once upon", "max_tokens": 4, "temperature": 0,
        "ignore_eos": true, "return_token_ids": true, "logprobs": 1});
    let (c, plain) = post(&s, "/v1/completions", body.clone()).await;
    assert_eq!(c, 200, "{plain}");
    let plain_ids: Vec<u32> =
        serde_json::from_value(plain["choices"][0]["token_ids"].clone()).unwrap();
    // +100 on one token makes it the greedy pick at every step.
    let target = if plain_ids[0] == 42 { 43 } else { 42 };
    let mut b = body.clone();
    b["logit_bias"] = json!({ target.to_string(): 100 });
    let (c, v) = post(&s, "/v1/completions", b).await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["choices"][0]["token_ids"], json!(vec![target; 4]), "{v}");
    // -100 on the unbiased first pick removes it.
    let mut b = body.clone();
    b["logit_bias"] = json!({ plain_ids[0].to_string(): -100 });
    let (_, v) = post(&s, "/v1/completions", b).await;
    assert_ne!(v["choices"][0]["token_ids"][0], json!(plain_ids[0]), "{v}");
    // Chat takes the same bias.
    let (c, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "temperature": 0, "ignore_eos": true, "return_token_ids": true,
            "logit_bias": { target.to_string(): 100 }}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["choices"][0]["token_ids"], json!(vec![target; 3]), "{v}");

    // return_tokens_as_token_ids: logprob tokens are `token_id:N`.
    let mut b = body.clone();
    b["return_tokens_as_token_ids"] = json!(true);
    let (_, v) = post(&s, "/v1/completions", b).await;
    let names: Vec<String> = plain_ids.iter().map(|t| format!("token_id:{t}")).collect();
    assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(names), "{v}");
    assert!(v["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap()
        .keys()
        .all(|k| k.starts_with("token_id:")));
    let (_, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "temperature": 0, "ignore_eos": true, "return_token_ids": true, "logprobs": true,
            "top_logprobs": 2, "return_tokens_as_token_ids": true}),
    )
    .await;
    let ids = v["choices"][0]["token_ids"].as_array().unwrap().clone();
    for (entry, id) in v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ids)
    {
        assert_eq!(entry["token"], json!(format!("token_id:{id}")), "{entry}");
        assert!(entry["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["token"].as_str().unwrap().starts_with("token_id:")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_echo_prepends_the_continued_message() {
    let s = start(base_cfg()).await;
    let msgs = json!([{"role": "user", "content": "Tell a story"}, {"role": "assistant", "content": "Once upon a"}]);
    let body = json!({"model": "tiny", "messages": msgs, "max_tokens": 5, "temperature": 0, "ignore_eos": true,
        "add_generation_prompt": false, "continue_final_message": true});
    let (c, plain) = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(c, 200, "{plain}");
    let mut b = body.clone();
    b["echo"] = json!(true);
    let (c, echoed) = post(&s, "/v1/chat/completions", b.clone()).await;
    assert_eq!(c, 200, "{echoed}");
    let reply = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        echoed["choices"][0]["message"]["content"],
        json!(format!("Once upon a{reply}"))
    );
    b["stream"] = json!(true);
    let ev = post_stream(&s, "/v1/chat/completions", b).await;
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(json!(text), echoed["choices"][0]["message"]["content"]);
    // With a generation prompt the reply starts a new assistant turn: nothing to echo.
    let (_, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "temperature": 0, "ignore_eos": true, "echo": true}),
    )
    .await;
    let (_, w) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        w["choices"][0]["message"]["content"]
    );
}

/// Resident memory of this process (the server runs in it), from /proc.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_any_work() {
    let s = start(base_cfg()).await;
    // 10 MB: past the body limit, 413 with the OpenAI error body. The bodies are built before
    // the baseline, so the growth measured is the server's (the issue saw 3 GB kept per prompt).
    let big = "a ".repeat(5 << 20);
    let bodies: Vec<(&str, Vec<u8>)> = [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": big, "max_tokens": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": big}], "max_tokens": 1}),
        ),
    ]
    .into_iter()
    .map(|(p, b)| (p, serde_json::to_vec(&b).unwrap()))
    .collect();
    let before = rss_mib();
    for _ in 0..3 {
        for (path, body) in &bodies {
            let r = client()
                .post(format!("{}{path}", s.url))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 413, "{path}");
            assert_openai_error(&r.json().await.unwrap(), 413);
        }
    }
    let grown = rss_mib() - before;
    assert!(
        grown < 100.0,
        "RSS grew by {grown:.0} MiB over six refused 10 MB bodies"
    );
    // 1 MB: inside the body limit but more text than 512 tokens can hold; refused by bytes,
    // naming the field.
    let mid = "a ".repeat(1 << 19);
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": mid, "max_tokens": 1}),
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": ["hi", mid], "max_tokens": 1}),
            "prompt",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": mid}], "max_tokens": 1}),
            "messages",
        ),
    ] {
        let (c, v) = post(&s, path, body).await;
        assert_eq!(c, 400, "{path}");
        assert_openai_error(&v, 400);
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maximum context length"),
            "{v}"
        );
    }
    // A smaller limit applies to every JSON route, adapters included.
    let mut cfg = base_cfg();
    cfg.max_request_bytes = 1000;
    let small = start(cfg).await;
    let (c, v) = post(
        &small,
        "/v1/load_lora_adapter",
        json!({"lora_name": "x".repeat(2000), "lora_path": "/x"}),
    )
    .await;
    assert_eq!(c, 413, "{v}");
    assert_openai_error(&v, 413);
    // Both servers keep serving.
    for srv in [&s, &small] {
        let (c, v) = post(
            srv,
            "/v1/completions",
            json!({"model": "tiny", "prompt": "hi", "max_tokens": 2}),
        )
        .await;
        assert_eq!(c, 200, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_names_with_path_syntax_are_refused() {
    let s = start(base_cfg()).await;
    let lora = fixtures().join("lora-r4");
    for name in [
        "a/b", "..", "../x", "a\\b", "a\u{0}b", ".hidden", "a\nb", " a",
    ] {
        let (c, v) = post(
            &s,
            "/v1/load_lora_adapter",
            json!({"lora_name": name, "lora_path": lora}),
        )
        .await;
        assert_eq!(c, 400, "{name:?}: {v}");
        assert_openai_error(&v, 400);
        assert_eq!(v["error"]["param"], "lora_name", "{v}");
        assert!(s.state.engine.adapter(name).is_none());
    }
    let (c, v) = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "fine-name_1.0", "lora_path": lora}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
}

/// Writes a raw HTTP/1.1 request with a chunked body of `total` bytes (no Content-Length, so
/// only the byte count read tells the server it is too large) and returns the response.
async fn raw_chunked_post(url: &str, path: &str, total: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut body = format!(
        "{{\"model\": \"tiny\", \"prompt\": \"{}",
        "a".repeat(64 << 10)
    )
    .into_bytes();
    let mut sent = 0;
    while sent < total {
        let chunk = format!("{:x}\r\n", body.len());
        // The server may answer and stop reading once it has seen enough.
        if sock.write_all(chunk.as_bytes()).await.is_err()
            || sock.write_all(&body).await.is_err()
            || sock.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += body.len();
        body = vec![b'a'; 64 << 10];
    }
    let _ = sock.write_all(b"\"}\r\n0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_past_the_limit_gets_413_json() {
    let s = start(base_cfg()).await;
    let resp = raw_chunked_post(&s.url, "/v1/completions", 10 << 20).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let json_start = resp.find("{\"error\"").expect("OpenAI error body");
    let v: Value = serde_json::from_str(resp[json_start..].trim()).unwrap();
    assert_openai_error(&v, 413);
    let (c, v) = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(c, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_parser_splits_think_blocks() {
    // vLLM refuses a parser it does not know at start.
    let bad = ServeConfig {
        reasoning_parser: Some("nonsense".into()),
        ..ServeConfig::default()
    };
    let e = tokio::task::spawn_blocking(move || AppState::from_config(&bad).err())
        .await
        .unwrap()
        .expect("an unknown reasoning parser must be refused");
    assert!(e.to_string().contains("nonsense"), "{e}");

    let plain = start(ServeConfig::default()).await;
    let parsed = start(ServeConfig {
        reasoning_parser: Some("qwen3".into()),
        ..ServeConfig::default()
    })
    .await;
    let think = |s: &Server, t: &str| s.state.tokenizer.token_to_id(t).unwrap();
    let (open, close) = (think(&parsed, "<think>"), think(&parsed, "</think>"));
    let mut split_seen = 0;
    for seed in 0..8 {
        // The random model is nudged towards the tags (its logits are large, hence the bias) so
        // that outputs mix them with other text.
        let body = json!({"model": "builtin:tiny", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 24, "temperature": 1.0, "seed": seed, "ignore_eos": true,
            "logit_bias": {open.to_string(): 48, close.to_string(): 48}});
        let (c, raw) = post(&plain, "/v1/chat/completions", body.clone()).await;
        assert_eq!(c, 200, "{raw}");
        let raw = raw["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let (want_r, want_c) = claas_chat::split_reasoning(&raw);
        split_seen += usize::from(want_r.is_some());

        let (c, v) = post(&parsed, "/v1/chat/completions", body.clone()).await;
        assert_eq!(c, 200, "{v}");
        let m = &v["choices"][0]["message"];
        assert_eq!(m["reasoning_content"], json!(want_r), "{raw:?}");
        assert_eq!(m["content"], json!(want_c), "{raw:?}");

        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let ev = post_stream(&parsed, "/v1/chat/completions", sb).await;
        let join = |field: &str| -> String {
            ev.iter()
                .filter_map(|e| e["choices"][0]["delta"][field].as_str())
                .collect()
        };
        // Streaming follows vLLM's streaming rules, which keep text before `<think>` as content
        // where the whole-reply rules drop it.
        let mut p = claas_chat::ReasoningStreamParser::new();
        let (a, b) = (p.push(&raw), p.finish());
        let cat =
            |x: Option<String>, y: Option<String>| x.unwrap_or_default() + &y.unwrap_or_default();
        assert_eq!(
            join("reasoning_content"),
            cat(a.reasoning, b.reasoning),
            "{raw:?}"
        );
        assert_eq!(join("content"), cat(a.content, b.content), "{raw:?}");

        // include_reasoning: false drops the thinking and keeps the answer.
        let mut nb = body.clone();
        nb["include_reasoning"] = json!(false);
        let (c, v) = post(&parsed, "/v1/chat/completions", nb).await;
        assert_eq!(c, 200, "{v}");
        assert!(v["choices"][0]["message"]["reasoning_content"].is_null());
        assert_eq!(v["choices"][0]["message"]["content"], json!(want_c));
    }
    assert!(
        split_seen >= 2,
        "only {split_seen} of 8 outputs held a think block"
    );
}

/// `--dtype` (vLLM's meaning): a bf16 checkpoint served as is (`auto`) and widened (`float32`)
/// computes the same function at `--matmul-precision highest`, so greedy replies and their
/// log-probabilities agree; an unknown dtype or matmul precision is refused at start, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtype_auto_and_float32_serve_a_bf16_checkpoint_alike() {
    let bad = ServeConfig {
        dtype: "float8".into(),
        ..base_cfg()
    };
    let e = tokio::task::spawn_blocking(move || AppState::from_config(&bad).err())
        .await
        .unwrap()
        .expect("an unknown dtype must be refused");
    assert!(e.to_string().contains("float8"), "{e}");
    let bad = ServeConfig {
        matmul_precision: "low".into(),
        ..base_cfg()
    };
    let e = tokio::task::spawn_blocking(move || AppState::from_config(&bad).err())
        .await
        .unwrap()
        .expect("an unknown matmul precision must be refused");
    assert!(e.to_string().contains("--matmul-precision"), "{e}");
    assert!(e.to_string().contains("\"low\""), "{e}");

    let cfg = |dtype: &str| ServeConfig {
        model: fixtures().join("tiny-qwen3-bf16").display().to_string(),
        dtype: dtype.into(),
        matmul_precision: "highest".into(),
        ..base_cfg()
    };
    let half = start(cfg("auto")).await;
    let wide = start(cfg("float32")).await;
    let body = json!({"model": "tiny", "prompt": "Write a function", "max_tokens": 12,
        "temperature": 0, "ignore_eos": true, "logprobs": 1});
    let (c, a) = post(&half, "/v1/completions", body.clone()).await;
    assert_eq!(c, 200, "{a}");
    let (c, b) = post(&wide, "/v1/completions", body).await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let lp = |v: &Value| -> Vec<f64> {
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (la, lb) = (lp(&a), lp(&b));
    assert_eq!(la.len(), 12);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-4, "{la:?} vs {lb:?}");
    }
}

/// `--quantization` (vLLM's flag): `q8_0` (and its alias `int8`) serves a bf16 checkpoint with
/// int8 weights; a method we lack (vLLM's GPU ones) is refused at start, naming it and what is
/// supported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantization_q8_0_serves_and_unknown_methods_are_refused() {
    for bad in ["awq", "fp8", "q4"] {
        let cfg = ServeConfig {
            quantization: Some(bad.into()),
            ..base_cfg()
        };
        let e = tokio::task::spawn_blocking(move || AppState::from_config(&cfg).err())
            .await
            .unwrap()
            .expect("an unsupported quantization must be refused");
        let e = e.to_string();
        assert!(e.contains(bad) && e.contains("q8_0"), "{e}");
    }
    for name in ["q8_0", "int8"] {
        let q8 = start(ServeConfig {
            model: fixtures().join("tiny-qwen3-bf16").display().to_string(),
            quantization: Some(name.into()),
            ..base_cfg()
        })
        .await;
        let body = json!({"model": "tiny", "prompt": "Write a function", "max_tokens": 8,
            "temperature": 0, "ignore_eos": true});
        let (c, a) = post(&q8, "/v1/completions", body).await;
        assert_eq!(c, 200, "{a}");
        assert_eq!(a["usage"]["completion_tokens"], 8, "{a}");
    }
}
