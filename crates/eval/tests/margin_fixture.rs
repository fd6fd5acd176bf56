//! The log-prob margin through the API agrees with scoring the same pair directly with the
//! trainer on the fixture model (`shared/fixtures/tiny-qwen3`), and prefers the model's own
//! greedy answer to a random string.

mod common;

use std::sync::Arc;

use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_eval::client::{ApiClient, ChatRequest};
use claas_eval::runner::logprob_margins;
use claas_eval::{EvalError, LogprobPair, Preference, VerifierConfig};
use claas_model::{LoadOptions, Qwen3};
use claas_sdpo::Trainer;
use serde_json::json;

const SYSTEM: &str = "You are a helpful assistant.";

fn pref(pairs: Vec<LogprobPair>) -> Preference {
    Preference {
        name: "t".into(),
        feedback: "f".into(),
        system_prompt: SYSTEM.into(),
        verifier: VerifierConfig::NoEmoji,
        logprob_pairs: pairs,
        probe_prompts: vec!["hi".into()],
    }
}

fn direct_sum(t: &Trainer, system: &str, user: &str, completion: &str) -> f64 {
    let messages = [
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ];
    let s = t.score_chat(None, &messages, completion).unwrap();
    assert!(!s.logprobs.is_empty());
    s.logprobs.iter().map(|x| *x as f64).sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margin_matches_direct_scoring_on_the_fixture_model() {
    let dir = claas_testkit::fixtures::dir().join("tiny-qwen3");
    let model_name = dir.to_string_lossy().into_owned();
    let stack = common::Stack::start(&model_name).await;
    let client = ApiClient::new(&stack.api, Some(common::KEY.into())).unwrap();

    // The model's own greedy answer vs a random string: the first must be preferred.
    let user = "Tell me about Python programming.";
    let greedy = client
        .chat(&ChatRequest {
            model: &model_name,
            system: SYSTEM,
            user,
            max_tokens: 12,
            temperature: 0.0,
            seed: 0,
            top_logprobs: 0,
        })
        .await
        .unwrap()
        .text;
    assert!(!greedy.trim().is_empty());
    let random = "zq7 Xv!! plorb 93k-w; ~mux QQ fnord";
    let p = pref(vec![
        LogprobPair {
            prompt: user.into(),
            system_prompt: None,
            preferred: greedy.clone(),
            dispreferred: random.into(),
        },
        // The same pair reversed, with its own system prompt.
        LogprobPair {
            prompt: user.into(),
            system_prompt: Some("Answer briefly.".into()),
            preferred: random.into(),
            dispreferred: greedy.clone(),
        },
    ]);
    let margins = logprob_margins(&client, &model_name, &p).await.unwrap();
    assert_eq!(margins.len(), 2);
    assert!(
        margins[0].margin > 0.0,
        "greedy answer {greedy:?} not preferred: {:?}",
        margins[0]
    );
    assert!(margins[1].margin < 0.0, "{:?}", margins[1]);

    // Hand-computed with the trainer on the same weights.
    let model = Qwen3::load(&dir, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(&dir).unwrap()).unwrap();
    let trainer = Trainer::new(Arc::new(model), Arc::new(tok), Arc::new(tmpl));
    for (m, system) in margins.iter().zip([SYSTEM, "Answer briefly."]) {
        let (pos_text, neg_text) = if system == SYSTEM {
            (&greedy[..], random)
        } else {
            (random, &greedy[..])
        };
        let pos = direct_sum(&trainer, system, user, pos_text);
        let neg = direct_sum(&trainer, system, user, neg_text);
        assert!(
            close(m.preferred_logprob, pos),
            "{} vs {pos}",
            m.preferred_logprob
        );
        assert!(
            close(m.dispreferred_logprob, neg),
            "{} vs {neg}",
            m.dispreferred_logprob
        );
        assert_eq!(m.margin.signum(), (pos - neg).signum());
        assert!(close(m.margin, pos - neg), "{} vs {}", m.margin, pos - neg);
    }

    // A base model the API does not allow: a clear error and no summary.
    let out = stack.dir.path().join("refused");
    let mut cfg = claas_eval::EvalConfig::new(&stack.api, vec![p], out.clone());
    cfg.api_key = Some(common::KEY.into());
    cfg.base_model = Some("not/a-model".into());
    cfg.progress = false;
    match claas_eval::run(&cfg).await {
        Err(EvalError::Status { status: 403, .. }) => {}
        other => panic!("expected a 403, got {other:?}"),
    }
    assert!(!out.join("summary.json").exists());
    stack.stop().await;
}
