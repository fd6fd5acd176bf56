//! `claas up` end to end on the built-in model: real HTTP servers on 127.0.0.1, real files.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn adapter_bytes(root: &Path) -> Vec<u8> {
    std::fs::read(root.join("openclaw/assistant-init/adapter_model.safetensors")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_updates_the_served_adapter_in_place() {
    let s = Stack::start().await;
    let c = http();

    // Init created the adapter and the alias; serving lists the alias under its served name.
    let ids = claas_testkit::served_model_ids(&s.serve, "sk-local").await;
    assert!(
        ids.iter().any(|i| i == "openclaw-assistant-latest"),
        "{ids:?}"
    );

    // A chat with the adapter, keeping the rollout log-probabilities as a client would.
    let chat: Value = c
        .post(format!("{}/v1/chat/completions", s.serve))
        .bearer_auth("sk-local")
        .json(&json!({
            "model": "openclaw-assistant-latest",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 12,
            "min_tokens": 4,
            "seed": 7,
            "logprobs": true,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = chat["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!answer.is_empty());

    let before_lp = served_logprobs(&c, &s.serve).await;
    let before_bytes = adapter_bytes(&s.root);

    let r = c
        .post(format!("{}/v1/feedback", s.api))
        .json(&json!({
            "lora_id": "openclaw/assistant-latest",
            "prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
            "response": answer,
            "feedback": "Be shorter and friendlier.",
            "training": {"teacher_mode": "self", "learning_rate": 0.001, "steps_per_batch": 1},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    let meta = &body["distill_result"]["metadata"];
    assert!(meta["total_loss"].as_f64().unwrap().is_finite(), "{body}");
    assert!(meta["tokens_processed"].as_u64().unwrap() > 0, "{body}");
    // In one process the swap needs no sleep.
    assert_eq!(body["vllm"]["slept"], false);

    // Stored adapter changed, the log was written, and serving uses the new weights at once.
    assert_ne!(adapter_bytes(&s.root), before_bytes);
    let log = body["feedback_log_path"].as_str().unwrap();
    assert!(Path::new(log).starts_with(&s.logs), "{log}");
    let logged: Value = serde_json::from_str(&std::fs::read_to_string(log).unwrap()).unwrap();
    assert!(logged.to_string().contains("Be shorter and friendlier."));
    let after_lp = served_logprobs(&c, &s.serve).await;
    assert_eq!(before_lp.len(), after_lp.len());
    let moved = before_lp
        .iter()
        .zip(&after_lp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        moved > 1e-6,
        "served log-probabilities did not change ({moved})"
    );
    s.stop().await;
}

/// The reference README's "Verification" curl lines, verbatim but for the ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_readme_verification_curls_work() {
    let s = Stack::start().await;
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args)
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "curl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let serve = s.serve.clone();
    let api = s.api.clone();
    let body = tokio::task::spawn_blocking(move || {
        let models = curl(&[
            &format!("{serve}/v1/models"),
            "-H",
            "Authorization: Bearer sk-local",
        ]);
        assert!(models["data"].as_array().unwrap().len() >= 2);
        let root = curl(&[&format!("{api}/")]);
        assert_eq!(root["name"], "CLaaS API");
        let loras = curl(&[&format!("{api}/v1/lora")]);
        assert!(
            loras.to_string().contains("openclaw/assistant-latest"),
            "{loras}"
        );
        curl(&[
            "-X",
            "POST",
            &format!("{api}/v1/feedback"),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{
    "lora_id": "openclaw/assistant-latest",
    "prompt": "hi",
    "response": "hello",
    "feedback": "good",
    "training": {"teacher_mode": "self"}
  }"#,
        ])
    })
    .await
    .unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    s.stop().await;
}

mod telegram {
    use super::*;
    use claas_testkit::{FakeTelegram, TOKEN};

    /// `claas up` with the gateway on, talking to a local fake Telegram Bot API.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn telegram_chat_feedback_reset_and_allow_list() {
        let tg = FakeTelegram::start().await;
        let mut g = claas_gateway::GatewayConfig::new(TOKEN);
        g.telegram_api_url = tg.url.clone();
        g.allowed_users = Some([42i64].into_iter().collect());
        g.max_tokens = Some(24);
        let s = Stack::start_with(|cfg| cfg.telegram = Some(g)).await;
        let (serve, root) = (s.serve.clone(), s.root.clone());
        let c = http();

        // A message is answered by the served adapter.
        tg.push_text(42, "hello, who are you?");
        let sent = tg.wait_sent(42, 1).await;
        assert!(!sent[0].trim().is_empty());
        let before = adapter_bytes(&root);
        let served_before = served_logprobs(&c, &serve).await;

        // Feedback on that exchange trains the adapter; a message sent meanwhile is answered.
        tg.push_text(42, "/feedback be shorter");
        tg.push_text(42, "are you still there?");
        let mut sent = Vec::new();
        for _ in 0..600 {
            sent = tg.sent(42);
            if sent
                .iter()
                .any(|m| m.starts_with("\u{2705} Feedback applied"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            sent.iter()
                .any(|m| m.starts_with("\u{2705} Feedback applied")),
            "no feedback confirmation: {sent:?}"
        );
        assert!(sent.iter().all(|m| !m.starts_with("\u{274C}")), "{sent:?}");
        let n = tg.wait_sent(42, sent.len().max(4)).await.len();
        assert!(n >= 4, "the message sent during the update got no reply");
        assert_ne!(adapter_bytes(&root), before, "stored adapter unchanged");
        assert_ne!(
            served_logprobs(&c, &serve).await,
            served_before,
            "served adapter not swapped"
        );

        // /undo reverts the adapter to the version before this chat's feedback (init's v0):
        // serving is back to the old weights.
        tg.push_text(42, "/undo");
        let u = tg.wait_sent(42, n + 1).await;
        assert_eq!(u[n], "\u{21a9}\u{fe0f} Reverted to v0", "{u:?}");
        assert_eq!(adapter_bytes(&root), before, "stored adapter not reverted");
        assert_eq!(
            served_logprobs(&c, &serve).await,
            served_before,
            "served adapter not reverted"
        );
        let n = n + 1;

        // /reset forgets the conversation: there is nothing left to give feedback on.
        tg.push_text(42, "/reset");
        let k = tg.wait_sent(42, n + 1).await;
        assert!(k[n].contains("reset"), "{k:?}");
        tg.push_text(42, "/feedback again");
        let k = tg.wait_sent(42, n + 2).await;
        assert!(!k[n + 1].starts_with("\u{2705}"), "{k:?}");

        // Users outside the allow-list are refused.
        tg.push_text(99, "let me in");
        let refused = tg.wait_sent(99, 1).await;
        assert!(refused[0].contains("not allowed"), "{refused:?}");

        s.stop().await;
    }
}
