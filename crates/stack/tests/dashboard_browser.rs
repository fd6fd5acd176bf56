//! The dashboard in a real headless Chromium against `claas up` on the built-in model: three
//! real feedbacks show as three rows and three loss points, v0..v3 are listed with v3 current,
//! and clicking Rollback on v1 makes v1 current and serves v1's weights. With `CLAAS_API_KEY`
//! set the browser gets in through the key form (cookie), and nothing gets in without it.
//!
//! `CLAAS_UPDATE_SCREENSHOT=1` rewrites `docs/dashboard.png` from this run.

mod common;
mod webdriver;

use common::*;
use serde_json::{json, Value};
use webdriver::Browser;

const KEY: &str = "sk-dashboard-test";
const LORA: &str = "openclaw/assistant-latest";

async fn post(c: &reqwest::Client, url: String, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = c.post(url).json(&body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

/// A chat through the API's proxy, then feedback on its answer; the version it produced.
async fn chat_and_feedback(c: &reqwest::Client, api: &str, seed: u64, feedback: &str) -> u64 {
    let user = format!("question {seed} <b>bold?</b>");
    let (s, b) = post(
        c,
        format!("{api}/v1/chat/completions"),
        Some(KEY),
        json!({"model": "openclaw-assistant-latest", "seed": seed, "max_tokens": 16, "min_tokens": 4,
               "messages": [{"role": "user", "content": user}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let answer = b["choices"][0]["message"]["content"].as_str().unwrap();
    let (s, fb) = post(
        c,
        format!("{api}/v1/feedback"),
        Some(KEY),
        json!({"requests": [{"lora_id": LORA, "prompt": user, "response": answer,
                             "feedback": feedback, "training": {"learning_rate": 1e-3}}],
               "orchestration": {"sleep_before": false, "wake_after": false}}),
    )
    .await;
    assert_eq!(s, 200, "{fb}");
    fb["adapter_version"].as_u64().unwrap()
}

/// What the page shows, read from the DOM after its scripts ran.
const DOM_STATE: &str = r#"
const q = (s) => Array.from(document.querySelectorAll(s));
return {
  feedback_rows: q('tr.feedback-row').length,
  rollback_rows: q('tr.rollback-row').length,
  loss_points: q('svg#loss-chart circle.point').length,
  kl_points: q('svg#kl-chart circle.point').length,
  versions: q('#versions tr.version-row').map(r => Number(r.dataset.version)),
  current: q('#versions tr.version-row.current').map(r => Number(r.dataset.version)),
  buttons: q('#versions button.rollback').map(b => Number(b.dataset.version)),
  feedback_texts: q('tr.feedback-row pre.feedback').map(p => p.textContent),
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser_shows_feedback_and_rolls_back() {
    let evals = tempfile::tempdir().unwrap();
    let plots = evals.path().join("run-1/concise/plots");
    std::fs::create_dir_all(&plots).unwrap();
    std::fs::write(
        evals.path().join("run-1/summary.json"),
        json!({"run": "run-1", "finished_at": "2026-12-01T00:00:00Z", "preferences": {"concise":
            {"steps": 1, "baseline": {"compliance": 0.25}, "final": {"compliance": 0.75}}}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        plots.join("compliance.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"30\"><rect width=\"40\" height=\"30\"/></svg>",
    )
    .unwrap();
    let s = Stack::start_with(|cfg| {
        cfg.api.api_key = Some(KEY.into());
        cfg.api.eval_dir = evals.path().to_path_buf();
    })
    .await;
    let c = http();
    let dashboard = format!("{}/v1/dashboard", s.api);

    // Three real feedbacks; the served log-probabilities right after each version was made.
    let mut served = vec![served_logprobs(&c, &s.serve).await];
    for (i, text) in [
        "Be brief.",
        "Use <em>plain</em> words & no jargon.",
        "Say hi first.",
    ]
    .iter()
    .enumerate()
    {
        let v = chat_and_feedback(&c, &s.api, i as u64 + 1, text).await;
        assert_eq!(v, i as u64 + 1);
        served.push(served_logprobs(&c, &s.serve).await);
    }
    assert_ne!(
        served[1], served[3],
        "the updates must change what is served"
    );

    // Without the key: 401 (JSON for clients, the key form for browsers), nothing rolled back.
    let r = c.get(&dashboard).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&dashboard)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("key-form"));
    let (st, b) = post(
        &c,
        format!("{}/v1/lora/rollback", s.api),
        None,
        json!({"lora_id": LORA, "version": 1}),
    )
    .await;
    assert_eq!(st, 401, "{b}");
    let r = c.get(&dashboard).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let browser = Browser::start().await;
    browser.goto(&dashboard).await;
    // The key form stores the key in a cookie and reloads into the dashboard.
    browser.type_into("#key", KEY).await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_for(
            "the dashboard after the key form",
            "return document.getElementById('versions') !== null",
        )
        .await;
    let dom = browser.eval(DOM_STATE, json!([])).await;
    assert_eq!(dom["feedback_rows"], 3, "{dom}");
    assert_eq!(dom["loss_points"], 3, "{dom}");
    assert_eq!(dom["kl_points"], 3, "{dom}");
    assert_eq!(dom["versions"], json!([3, 2, 1, 0]), "{dom}");
    assert_eq!(dom["current"], json!([3]), "{dom}");
    assert_eq!(dom["buttons"], json!([2, 1, 0]), "{dom}");
    // User text arrives as text, not markup.
    assert_eq!(
        dom["feedback_texts"][1], "Use <em>plain</em> words & no jargon.",
        "{dom}"
    );

    browser
        .click("#versions button.rollback[data-version=\"1\"]")
        .await;
    browser
        .wait_for(
            "v1 to show as current",
            "const c = document.querySelector('#versions tr.version-row.current'); \
             return c !== null && c.dataset.version === '1'",
        )
        .await;
    let dom = browser.eval(DOM_STATE, json!([])).await;
    assert_eq!(dom["current"], json!([1]), "{dom}");
    assert_eq!(dom["buttons"], json!([3, 2, 0]), "{dom}");
    assert_eq!(dom["rollback_rows"], 1, "{dom}");
    assert_eq!(dom["feedback_rows"], 3, "{dom}");

    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    if std::env::var_os("CLAAS_UPDATE_SCREENSHOT").is_some() {
        let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard.png");
        std::fs::write(out, &png).unwrap();
    }
    // The eval page: its summary and its plot, fetched with the same cookie.
    browser.goto(&format!("{}/v1/eval", s.api)).await;
    browser
        .wait_for(
            "the eval plot to load",
            "const i = document.querySelector('img.plot'); return i !== null && i.complete && i.naturalWidth === 40",
        )
        .await;
    let rows = browser
        .eval(
            "return Array.from(document.querySelectorAll('tr.metric-row')).map(r => [r.dataset.metric, r.querySelector('td.final').textContent])",
            json!([]),
        )
        .await;
    assert_eq!(rows[0], json!(["compliance", "0.7500"]), "{rows}");
    browser.close().await;

    // The click went through the API: v1 is current and serving v1's weights.
    let r: Value = c
        .get(format!("{}/v1/lora/versions?lora_id={LORA}", s.api))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["current"], 1, "{r}");
    assert_eq!(served_logprobs(&c, &s.serve).await, served[1]);
    s.stop().await;
}
