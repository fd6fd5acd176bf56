//! The learning loop under `claas up` on the built-in model, as the reference's clients drive
//! it: chat through the API's proxy, feedback resolved against the completion record (exact
//! sampled tokens), immutable versions, rollback and retention.

mod common;

use std::path::Path;

use claas_chat::Tokenizer;
use common::*;
use serde_json::{json, Value};

const SYSTEM: &str = "You are a helpful assistant.";

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

/// A chat through the API's proxy; returns the answer with the ids the server sampled.
async fn chat(c: &reqwest::Client, api: &str, user: &str, seed: u64) -> Value {
    let (s, b) = post(
        c,
        format!("{api}/v1/chat/completions"),
        json!({
            "model": "openclaw-assistant-latest",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "max_tokens": 24,
            "min_tokens": 8,
            "seed": seed,
            "return_token_ids": true,
        }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn builtin_tokenizer() -> Tokenizer {
    let dir = claas_model::resolve_model("builtin:tiny").unwrap();
    Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
}

async fn feedback(c: &reqwest::Client, api: &str, user: &str, answer: &str, text: &str) -> Value {
    let (s, b) = post(
        c,
        format!("{api}/v1/feedback"),
        json!({
            "requests": [{"lora_id": "openclaw/assistant-latest", "prompt": user,
                "response": answer, "feedback": text,
                "training": {"learning_rate": 1e-3}}],
            "orchestration": {"sleep_before": false, "wake_after": false},
        }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b
}

fn read_log(path: &Value) -> Value {
    let p = path.as_str().unwrap();
    serde_json::from_str(&std::fs::read_to_string(Path::new(p)).unwrap()).unwrap()
}

/// The reference's eval-harness and integration-test calls, made by `reference_sequence.py`
/// with the official `openai` client (chat) and plain HTTP (the rest), in their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_request_sequence_works_unchanged() {
    let s = Stack::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference_sequence.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&s.api)
        .arg("builtin:tiny")
        .output()
        .await
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "reference sequence failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The feedback was resolved against the proxy's record, with the student's system prompt.
    let log = read_log(&v["feedback"]["feedback_log_path"]);
    assert!(log["completion_records"][0].is_string(), "{log}");
    assert_eq!(log["batch_samples"][0]["system_prompt"], SYSTEM, "{log}");
    assert_eq!(log["teacher_prompt"], "hindsight");
    // One optimizer step per request, as the reference.
    assert_eq!(v["feedback"]["batch_size"], 1);
    s.stop().await;
}

/// A response whose text re-tokenizes differently trains on the sampled ids with the sampled
/// log-probabilities: no 422 and no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_trains_on_the_exact_sampled_tokens() {
    let s = Stack::start().await;
    let c = http();
    let tok = builtin_tokenizer();
    // The random demo model emits token sequences that are not the canonical tokenization of
    // their text; find one.
    let mut found = None;
    for seed in 0..40 {
        let b = chat(&c, &s.api, "tell me something", seed).await;
        let answer = b["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let sampled = ids_of(&b["choices"][0]["token_ids"]);
        if tok.encode(&answer, false).unwrap() != sampled {
            found = Some((b, answer, sampled));
            break;
        }
    }
    let (b, answer, sampled) = found.expect("no response re-tokenized differently in 40 tries");
    let prompt_ids = ids_of(&b["prompt_token_ids"]);
    // By text only (the reference's key): the record is found through the hash.
    let fb = feedback(&c, &s.api, "tell me something", &answer, "Be shorter.").await;
    let log = read_log(&fb["feedback_log_path"]);
    let sample = &log["batch_samples"][0];
    assert_eq!(ids_of(&sample["response_ids"]), sampled, "{log}");
    assert_eq!(ids_of(&sample["prompt_ids"]), prompt_ids, "{log}");
    assert_eq!(
        sample["rollout_logprobs"].as_array().unwrap().len(),
        sampled.len()
    );
    assert_eq!(log["completion_records"][0], b["id"]);
    assert_eq!(
        fb["distill_result"]["metadata"]["tokens_processed"],
        sampled.len()
    );
    s.stop().await;
}

/// N feedbacks give N versions; a rollback serves the earlier version's weights bit for bit,
/// `name@vN` serves a version by name, and retention keeps the newest K plus the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_rollback_and_retention() {
    let s = Stack::start_with(|cfg| cfg.api.keep_versions = 3).await;
    let c = http();
    let mut served = vec![served_logprobs(&c, &s.serve).await];
    let mut produced = Vec::new();
    for i in 0..4 {
        let b = chat(&c, &s.api, "hello", 100 + i).await;
        let answer = b["choices"][0]["message"]["content"].as_str().unwrap();
        let fb = feedback(&c, &s.api, "hello", answer, "Say less.").await;
        let v = fb["adapter_version"].as_u64().unwrap();
        assert_eq!(
            fb["previous_version"].as_u64(),
            produced.last().copied().or(Some(0))
        );
        assert_eq!(
            fb["version_name"],
            format!("openclaw/assistant-init@v{v}"),
            "{fb}"
        );
        produced.push(v);
        served.push(served_logprobs(&c, &s.serve).await);
    }
    assert_eq!(
        produced,
        vec![1, 2, 3, 4],
        "init is v0, each feedback one more"
    );

    // Retention: the newest 3 versions are kept.
    let (st, list) = get(
        &c,
        format!(
            "{}/v1/lora/versions?lora_id=openclaw/assistant-latest",
            s.api
        ),
    )
    .await;
    assert_eq!(st, 200, "{list}");
    let kept: Vec<u64> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, vec![2, 3, 4], "{list}");
    assert_eq!(list["current"], 4);
    assert_eq!(list["versions"][2]["kind"], "feedback");

    // Rollback to v2 hot-swaps: served log-probs equal those measured right after v2 was made.
    let (st, rb) = post(
        &c,
        format!("{}/v1/lora/rollback", s.api),
        json!({"lora_id": "openclaw/assistant-latest", "version": 2}),
    )
    .await;
    assert_eq!(st, 200, "{rb}");
    assert_eq!(rb["version"], 2);
    assert_eq!(rb["previous_version"], 4);
    assert_eq!(served_logprobs(&c, &s.serve).await, served[2]);
    // The version stays servable by name, and equals what the live adapter served then.
    assert_eq!(
        served_logprobs_of(&c, &s.serve, "openclaw-assistant-init@v4").await,
        served[4]
    );
    // A version that retention removed, or never existed: 404, nothing changes.
    for v in [1, 9] {
        let (st, b) = post(
            &c,
            format!("{}/v1/lora/rollback", s.api),
            json!({"lora_id": "openclaw/assistant-latest", "version": v}),
        )
        .await;
        assert_eq!(st, 404, "{b}");
    }
    assert_eq!(served_logprobs(&c, &s.serve).await, served[2]);
    // The next feedback trains from v2 and gets a new number.
    let b = chat(&c, &s.api, "hello", 7).await;
    let answer = b["choices"][0]["message"]["content"].as_str().unwrap();
    let fb = feedback(&c, &s.api, "hello", answer, "Say less.").await;
    assert_eq!(fb["adapter_version"], 5);
    assert_eq!(fb["previous_version"], 2);
    // A rollback named by the adapter id swaps every alias's served name too.
    let (st, rb) = post(
        &c,
        format!("{}/v1/lora/rollback", s.api),
        json!({"lora_id": "openclaw/assistant-init", "version": 3}),
    )
    .await;
    assert_eq!(st, 200, "{rb}");
    assert_eq!(served_logprobs(&c, &s.serve).await, served[3]);
    s.stop().await;
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The guardrail probes every update: an ordinary one passes, a harmful one (the largest
/// learning rate, many steps) breaks the same KL bound and is rolled back before anything
/// serves it, so served log-probabilities equal the previous version's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_rolls_back_a_harmful_update() {
    let s = Stack::start().await;
    let c = http();
    let bound = json!({"max_kl_to_base": GUARDRAIL_MAX_KL});
    let send = |training: Value, seed: u64| {
        let (c, api, bound) = (c.clone(), s.api.clone(), bound.clone());
        async move {
            let b = chat(&c, &api, "hello", seed).await;
            let answer = b["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string();
            post(
                &c,
                format!("{api}/v1/feedback"),
                json!({"lora_id": "openclaw/assistant-latest", "prompt": "hello",
                    "response": answer, "feedback": "Say less.", "training": training,
                    "guardrail": bound}),
            )
            .await
        }
    };
    let (st, ok) = send(json!({"learning_rate": 1e-4}), 1).await;
    assert_eq!(st, 200, "{ok}");
    eprintln!("ordinary update: {}", ok["guardrail"]);
    assert_eq!(ok["guardrail"]["status"], "passed", "{ok}");
    assert_eq!(ok["current_version"], 1);
    let before = served_logprobs(&c, &s.serve).await;

    let (st, bad) = send(json!({"learning_rate": 1e-2, "steps_per_batch": 64}), 2).await;
    assert_eq!(st, 200, "{bad}");
    eprintln!("harmful update: {}", bad["guardrail"]);
    assert_eq!(bad["guardrail"]["status"], "rolled_back", "{bad}");
    assert_eq!(bad["adapter_version"], 2);
    assert_eq!(bad["current_version"], 1);
    assert_eq!(bad["guardrail"]["rolled_back_to"], 1);
    assert_eq!(served_logprobs(&c, &s.serve).await, before);
    let log = read_log(&bad["feedback_log_path"]);
    assert_eq!(log["guardrail"]["status"], "rolled_back");
    let (_, list) = get(
        &c,
        format!(
            "{}/v1/lora/versions?lora_id=openclaw/assistant-latest",
            s.api
        ),
    )
    .await;
    assert_eq!(list["current"], 1, "{list}");
    s.stop().await;
}

/// Mean KL(adapter ‖ base) on the probe above which the test calls an update harmful.
const GUARDRAIL_MAX_KL: f64 = 0.05;

/// Text completions through the proxy are recorded too: feedback naming the completion id
/// trains on its sampled ids and log-probabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_recorded_for_feedback() {
    let s = Stack::start().await;
    let c = http();
    let prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    let (st, b) = post(
        &c,
        format!("{}/v1/completions", s.api),
        json!({"model": "openclaw-assistant-latest", "prompt": prompt, "max_tokens": 12,
            "min_tokens": 4, "seed": 3}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert!(
        b["choices"][0].get("token_ids").is_none_or(Value::is_null),
        "{b}"
    );
    assert!(b["choices"][0]["logprobs"].is_null(), "not asked for: {b}");
    let text = b["choices"][0]["text"].as_str().unwrap();
    let (st, fb) = post(
        &c,
        format!("{}/v1/feedback", s.api),
        json!({"lora_id": "openclaw/assistant-latest", "prompt": prompt, "response": text,
            "feedback": "Shorter.", "completion_id": b["id"]}),
    )
    .await;
    assert_eq!(st, 200, "{fb}");
    let log = read_log(&fb["feedback_log_path"]);
    assert_eq!(log["completion_records"][0], b["id"], "{log}");
    let sample = &log["batch_samples"][0];
    let n = ids_of(&sample["response_ids"]).len();
    assert_eq!(
        sample["rollout_logprobs"].as_array().unwrap().len(),
        n,
        "{log}"
    );
    assert_eq!(b["usage"]["completion_tokens"], n);
    s.stop().await;
}
