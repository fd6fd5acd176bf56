//! The self-teacher prompt: the frozen base model sees the student's context plus the user's
//! feedback, rendered with the model's chat template (`add_generation_prompt`, as the
//! reference's worker does and its PR #35 insists on), followed by the response tokens to be
//! scored.
//!
//! Two prompts are selectable ([`TeacherPrompt`]):
//! - `hindsight` (default, kfallah/CLaaS HEAD `teacher_helpers.build_teacher_messages`): the
//!   student's own system prompt, then the clean user prompt followed by a hindsight block with
//!   the feedback. Without a system prompt the teacher gets none either, so it scores under the
//!   same context the student answered in (the reference refuses such completions instead).
//! - `0f67ae6`: the seed's "expert coding assistant" system prompt with the whole prompt text
//!   nested in the user turn, followed by a veRL-style feedback block. The shared
//!   `distill_step.json` fixture records it.

use claas_chat::{ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Result, SdpoError};

/// The seed's teacher system prompt (CLaaS `teacher.build_teacher_messages`, 0f67ae6; the
/// shared `distill_step.json` fixture records it).
pub const TEACHER_SYSTEM_PROMPT: &str =
    "You are an expert coding assistant. Provide high-quality, correct, and well-explained code solutions.";

/// Header of the hindsight block (reference HEAD, after the online SDPO trainer of Kleine
/// Buening et al. 2026).
pub const HINDSIGHT_HEADER: &str = "\n\n=== HINDSIGHT CONTEXT ===\n[The following is a future user message. Use this to guide your answer to the user prompt.]\n";

/// Which teacher prompt the self-teacher is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum TeacherPrompt {
    /// The student's system prompt + clean user prompt + hindsight block (reference HEAD).
    #[default]
    #[serde(rename = "hindsight")]
    Hindsight,
    /// The seed's coding-assistant prompt with the nested prompt text (reference 0f67ae6).
    #[serde(rename = "0f67ae6")]
    Seed,
}

impl TeacherPrompt {
    /// The wire names, in declaration order.
    pub const NAMES: [&'static str; 2] = ["hindsight", "0f67ae6"];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TeacherPrompt::Hindsight => "hindsight",
            TeacherPrompt::Seed => "0f67ae6",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "hindsight" => Some(TeacherPrompt::Hindsight),
            "0f67ae6" => Some(TeacherPrompt::Seed),
            _ => None,
        }
    }
}

/// What the student saw, as the hindsight teacher needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StudentContext {
    /// The system prompt(s) of the conversation, joined by newlines; `None` when there was none.
    pub system_prompt: Option<String>,
    /// The clean text of the user turn the response answers.
    pub user_prompt: String,
}

impl StudentContext {
    /// Recovers the context from a prompt string: a ChatML-formatted prompt (what 0f67ae6's
    /// clients send) yields its system turns and its last user turn; any other text is the user
    /// prompt itself.
    pub fn from_prompt_text(prompt: &str) -> Self {
        let turns = chatml_turns(prompt);
        let user = turns.iter().rev().find(|(role, _)| *role == "user");
        match user {
            Some((_, content)) => StudentContext {
                system_prompt: join_system(
                    turns
                        .iter()
                        .filter(|(r, _)| *r == "system")
                        .map(|(_, c)| *c),
                ),
                user_prompt: content.to_string(),
            },
            None => StudentContext {
                system_prompt: None,
                user_prompt: prompt.to_string(),
            },
        }
    }

    /// Recovers the context from chat messages (`[{role, content}]`, content a string or a
    /// list of text parts): all system turns and the last user turn.
    pub fn from_messages(messages: &[Value]) -> Self {
        let turns: Vec<(String, String)> = messages
            .iter()
            .map(|m| {
                (
                    m.get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    content_text(m.get("content")),
                )
            })
            .collect();
        StudentContext {
            system_prompt: join_system(
                turns
                    .iter()
                    .filter(|(r, _)| r == "system")
                    .map(|(_, c)| c.as_str()),
            ),
            user_prompt: turns
                .iter()
                .rev()
                .find(|(r, _)| r == "user")
                .map(|(_, c)| c.clone())
                .unwrap_or_default(),
        }
    }
}

/// The system turns' contents joined by newlines, as the reference's proxy joins them.
fn join_system<'a>(contents: impl Iterator<Item = &'a str>) -> Option<String> {
    let parts: Vec<&str> = contents.collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// The text of a message's `content` as the reference's `coerce_content` reads it: a string,
/// or the `text` parts of a list joined by newlines.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o
                    .get("text")
                    .or_else(|| o.get("content"))
                    .and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Object(o)) => o
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Some(other) => other.to_string(),
    }
}

/// `(role, content)` of each complete `<|im_start|>role\ncontent<|im_end|>` turn.
fn chatml_turns(text: &str) -> Vec<(&str, &str)> {
    const START: &str = "<|im_start|>";
    const END: &str = "<|im_end|>";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(s) = rest.find(START) {
        let after = &rest[s + START.len()..];
        let Some(nl) = after.find('\n') else { break };
        let role = &after[..nl];
        let body = &after[nl + 1..];
        let Some(e) = body.find(END) else { break };
        out.push((role, &body[..e]));
        rest = &body[e + END.len()..];
    }
    out
}

/// The seed's user turn: the prompt, then a veRL-style feedback block. Without feedback (empty
/// string) the prompt is used as is, like the reference's `if feedback:`.
pub fn teacher_user_content(prompt: &str, feedback: &str) -> String {
    if feedback.is_empty() {
        return prompt.to_string();
    }
    format!(
        "{prompt}\n\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}\n\n\nCorrectly solve the original question.\n"
    )
}

/// The hindsight user turn: the clean user prompt, then the hindsight block with the stripped
/// feedback (none when the feedback is blank, like the reference's `if feedback:`).
pub fn hindsight_user_content(user_prompt: &str, feedback: &str) -> String {
    if feedback.is_empty() {
        return user_prompt.to_string();
    }
    format!("{user_prompt}{HINDSIGHT_HEADER}{}", feedback.trim())
}

/// The seed's `[system, user]` teacher messages, in the chat-template input format.
pub fn teacher_messages(prompt: &str, feedback: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": TEACHER_SYSTEM_PROMPT}),
        json!({"role": "user", "content": teacher_user_content(prompt, feedback)}),
    ]
}

/// The hindsight teacher messages: `[system: the student's system prompt (if any), user: clean
/// user prompt + hindsight block]`.
pub fn hindsight_messages(ctx: &StudentContext, feedback: &str) -> Vec<Value> {
    let mut out = Vec::with_capacity(2);
    if let Some(system) = &ctx.system_prompt {
        out.push(json!({"role": "system", "content": system}));
    }
    out.push(
        json!({"role": "user", "content": hindsight_user_content(&ctx.user_prompt, feedback)}),
    );
    out
}

/// Renders `messages` with a generation prompt and encodes the text without adding special
/// tokens: exactly transformers' `apply_chat_template(messages, add_generation_prompt=True,
/// tokenize=True)`.
pub fn render_prompt(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    messages: &[Value],
) -> Result<(String, Vec<u32>)> {
    let text = template
        .render(messages, None, true, None)
        .map_err(|e| SdpoError::Chat(e.to_string()))?;
    let ids = tokenizer
        .encode(&text, false)
        .map_err(|e| SdpoError::Chat(e.to_string()))?;
    Ok((text, ids))
}

/// The seed's teacher prompt text and ids for `prompt` (the whole prompt text as the client
/// sent it) and `feedback`.
pub fn teacher_prompt(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    prompt: &str,
    feedback: &str,
) -> Result<(String, Vec<u32>)> {
    render_prompt(template, tokenizer, &teacher_messages(prompt, feedback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_context_takes_system_turns_and_the_last_user_turn() {
        let p = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
        let c = StudentContext::from_prompt_text(p);
        assert_eq!(c.system_prompt.as_deref(), Some("Be brief."));
        assert_eq!(c.user_prompt, "What is 2+2?");
        let plain = StudentContext::from_prompt_text("Write a function.");
        assert_eq!(plain.system_prompt, None);
        assert_eq!(plain.user_prompt, "Write a function.");
    }

    #[test]
    fn message_context_reads_text_parts() {
        let m = vec![
            json!({"role": "system", "content": "A"}),
            json!({"role": "system", "content": [{"type": "text", "text": "B"}]}),
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "x"}),
            json!({"role": "user", "content": [{"type": "text", "text": "second"}, "third"]}),
        ];
        let c = StudentContext::from_messages(&m);
        assert_eq!(c.system_prompt.as_deref(), Some("A\nB"));
        assert_eq!(c.user_prompt, "second\nthird");
    }

    #[test]
    fn hindsight_block_is_the_reference_text() {
        let ctx = StudentContext {
            system_prompt: Some("S".into()),
            user_prompt: "Q".into(),
        };
        let m = hindsight_messages(&ctx, "  be shorter \n");
        assert_eq!(m[0], json!({"role": "system", "content": "S"}));
        assert_eq!(
            m[1]["content"],
            "Q\n\n=== HINDSIGHT CONTEXT ===\n[The following is a future user message. Use this to guide your answer to the user prompt.]\nbe shorter"
        );
        let none = hindsight_messages(
            &StudentContext {
                system_prompt: None,
                user_prompt: "Q".into(),
            },
            "",
        );
        assert_eq!(none, vec![json!({"role": "user", "content": "Q"})]);
        for name in TeacherPrompt::NAMES {
            assert_eq!(TeacherPrompt::parse(name).unwrap().as_str(), name);
        }
    }
}
