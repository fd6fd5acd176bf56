//! The hindsight teacher prompt (reference HEAD `build_teacher_messages`): for a conversation
//! with a system prompt, the teacher ids are the chat-template rendering of
//! `[system, user + hindsight block]` with a generation prompt, on the fixture model's
//! tokenizer and on the real Qwen3 tokenizer.

use std::path::Path;
use std::sync::Arc;

use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoadOptions, Qwen3};
use claas_sdpo::{
    hindsight_messages, render_prompt, FeedbackItem, StudentContext, TeacherPrompt, Trainer,
};
use claas_testkit::fixtures;

const SYSTEM: &str = "You are a helpful assistant.";
const USER: &str = "Explain what a hash map is.";
const FEEDBACK: &str = "  Too long; answer in one sentence.\n";

/// What Qwen3's template renders for `[system, user]` with a generation prompt, written out.
fn expected_text() -> String {
    format!(
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}\n\n=== HINDSIGHT CONTEXT ===\n[The following is a future user message. Use this to guide your answer to the user prompt.]\n{}<|im_end|>\n<|im_start|>assistant\n",
        FEEDBACK.trim()
    )
}

fn load(dir: &Path) -> (ChatTemplate, Tokenizer) {
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(dir).unwrap()).unwrap();
    (tmpl, tok)
}

fn context() -> StudentContext {
    StudentContext {
        system_prompt: Some(SYSTEM.into()),
        user_prompt: USER.into(),
    }
}

#[test]
fn hindsight_teacher_ids_are_the_template_rendering_on_both_tokenizers() {
    for dir in [
        fixtures::dir().join("tiny-qwen3"),
        fixtures::dir().join("qwen3-tokenizer"),
    ] {
        let (tmpl, tok) = load(&dir);
        let (text, ids) =
            render_prompt(&tmpl, &tok, &hindsight_messages(&context(), FEEDBACK)).unwrap();
        assert_eq!(text, expected_text(), "{}", dir.display());
        assert_eq!(
            ids,
            tok.encode(&expected_text(), false).unwrap(),
            "{}",
            dir.display()
        );
        // Special tokens are single ids, not pieces of text.
        let im_start = tok.token_to_id("<|im_start|>").unwrap();
        assert_eq!(ids[0], im_start);
        assert_eq!(ids.iter().filter(|&&t| t == im_start).count(), 3);
    }
}

#[test]
fn the_trainer_builds_that_teacher_from_a_record_or_from_messages() {
    let dir = fixtures::dir().join("tiny-qwen3");
    let (tmpl, tok) = load(&dir);
    let model = Qwen3::load(&dir, &LoadOptions::default()).unwrap();
    let trainer = Trainer::new(
        Arc::new(model),
        Arc::new(tok.clone()),
        Arc::new(load(&dir).0),
    );
    let expected = tok.encode(&expected_text(), false).unwrap();
    let messages = vec![
        serde_json::json!({"role": "system", "content": SYSTEM}),
        serde_json::json!({"role": "user", "content": USER}),
    ];
    let (_, student_prompt) = render_prompt(&tmpl, &tok, &messages).unwrap();
    let response = tok.encode("A table of keys.", false).unwrap();

    // From a completion record: exact ids, the student's system prompt and clean user prompt.
    let from_record = FeedbackItem {
        prompt: USER.into(),
        response: "ignored: the record's ids are used".into(),
        feedback: FEEDBACK.into(),
        prompt_ids: Some(student_prompt.clone()),
        response_ids: Some(response.clone()),
        system_prompt: Some(SYSTEM.into()),
        user_prompt: Some(USER.into()),
        ..FeedbackItem::default()
    };
    let p = trainer
        .prepare(&from_record, TeacherPrompt::Hindsight)
        .unwrap();
    assert_eq!(p.teacher_prompt_ids, expected);
    assert_eq!(p.prompt_ids, student_prompt);
    assert_eq!(p.response_ids, response);

    // From the chat messages (no record): the same teacher, and the student prompt is the
    // template over the messages.
    let from_messages = FeedbackItem {
        prompt: USER.into(),
        response: "A table of keys.".into(),
        feedback: FEEDBACK.into(),
        messages: Some(messages),
        ..FeedbackItem::default()
    };
    let p = trainer
        .prepare(&from_messages, TeacherPrompt::Hindsight)
        .unwrap();
    assert_eq!(p.teacher_prompt_ids, expected);
    assert_eq!(p.prompt_ids, student_prompt);

    // From a 0f67ae6 client's chat-formatted prompt: the context is read back from it.
    let chatml = tmpl
        .render(
            &[
                serde_json::json!({"role": "system", "content": SYSTEM}),
                serde_json::json!({"role": "user", "content": USER}),
            ],
            None,
            true,
            None,
        )
        .unwrap();
    let seed_client = FeedbackItem {
        prompt: chatml,
        response: "A table of keys.".into(),
        feedback: FEEDBACK.into(),
        ..FeedbackItem::default()
    };
    let p = trainer
        .prepare(&seed_client, TeacherPrompt::Hindsight)
        .unwrap();
    assert_eq!(p.teacher_prompt_ids, expected);

    // Ids outside the vocabulary are the caller's error.
    let vocab = trainer.model().config().vocab_size as u32;
    let bad = FeedbackItem {
        response_ids: Some(vec![vocab]),
        ..from_record
    };
    let err = trainer.prepare(&bad, TeacherPrompt::Hindsight).unwrap_err();
    assert!(err.is_bad_input(), "{err}");
}
