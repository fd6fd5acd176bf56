//! The self-teacher prompt: the base model sees the original prompt plus the user's feedback,
//! rendered with the model's chat template (add_generation_prompt=True, as the reference's
//! worker does and its PR #35 insists on), followed by the response tokens to be scored.

use claas_chat::{ChatTemplate, Tokenizer};
use serde_json::{json, Value};

use crate::{Result, SdpoError};

/// The reference's teacher system prompt (CLaaS `teacher.build_teacher_messages`, 0f67ae6; the
/// shared `distill_step.json` fixture records it).
pub const TEACHER_SYSTEM_PROMPT: &str =
    "You are an expert coding assistant. Provide high-quality, correct, and well-explained code solutions.";

/// The user turn the teacher sees: the prompt, then a veRL-style feedback block. Without
/// feedback (empty string) the prompt is used as is, like the reference's `if feedback:`.
pub fn teacher_user_content(prompt: &str, feedback: &str) -> String {
    if feedback.is_empty() {
        return prompt.to_string();
    }
    format!(
        "{prompt}\n\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}\n\n\nCorrectly solve the original question.\n"
    )
}

/// `[system, user]` messages of the teacher prompt, in the chat-template input format.
pub fn teacher_messages(prompt: &str, feedback: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": TEACHER_SYSTEM_PROMPT}),
        json!({"role": "user", "content": teacher_user_content(prompt, feedback)}),
    ]
}

/// The teacher prompt text and its token ids, exactly as transformers'
/// `apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` produces them
/// (render, then encode without adding special tokens).
pub fn teacher_prompt(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    prompt: &str,
    feedback: &str,
) -> Result<(String, Vec<u32>)> {
    let messages = teacher_messages(prompt, feedback);
    let text = template
        .render(&messages, None, true, None)
        .map_err(|e| SdpoError::Chat(e.to_string()))?;
    let ids = tokenizer
        .encode(&text, false)
        .map_err(|e| SdpoError::Chat(e.to_string()))?;
    Ok((text, ids))
}
