//! claas-sdpo: the SDPO distillation step of CLaaS — the loss (reference `compute_sdpo_loss`),
//! AdamW with torch's arithmetic and a persisted state, the self-teacher prompt, and the
//! [`Trainer`] that turns feedback items into one update of a LoRA adapter.
//!
//! Semantics (reference: kfallah/CLaaS HEAD, i.e. 0f67ae6 plus PRs #35/#37; the shared
//! fixtures pin them down):
//! - Student input = the exact prompt and response ids the server sampled (from the API's
//!   completion record), else the chat template over the `messages` + the encoded response,
//!   else 0f67ae6's `encode(prompt, add_special_tokens=true) ++ encode(response)` ([`FeedbackItem`]).
//! - Teacher input = chat template over the teacher messages with `add_generation_prompt`,
//!   then the response ids ([`teacher`]): by default HEAD's `[system: the student's system
//!   prompt, user: clean user prompt + hindsight block]`; 0f67ae6's coding-assistant prompt is
//!   selectable ([`TeacherPrompt::Seed`]) and is what `distill_step.json` records.
//! - Teacher top-k and the KL-to-base log-probs come from the base with no adapter (PR #37).
//! - `rollout_logprobs` must have exactly one value per response token (the seed padded or
//!   truncated); without them the current adapter is the behaviour policy (ratio 1).
//! - Several items = one step on the mean of their losses; metrics are per-item means and
//!   `tokens_processed` the batch's response tokens (as the later reference batches).
//! - One optimizer step per request, as the reference API; `steps_per_batch` (our extension,
//!   default 1) repeats the whole step on the same batch (the later reference resubmits
//!   the batch); teacher/base targets are computed once, the student and the optimizer advance;
//!   the returned metadata is the last step's.
//! - alpha = 0 is forward KL over the teacher's top-k (SDPO paper code); the reference's mixture
//!   formula yields exactly 0 there (log 0 = −inf), see [`loss`].
//! - AdamW state persists across requests ([`AdamState`]); a missing or non-matching state is a
//!   fresh optimizer, so a first step reproduces the reference's fresh-AdamW step. Unlike torch's
//!   `load_state_dict`, which would restore the learning rate saved with the state, each
//!   request's own learning rate is used.

mod error;
pub mod guard;
pub mod loss;
pub mod optim;
mod select;
pub mod teacher;
mod trainer;

pub use error::{Result, SdpoError};
pub use guard::{ProbeStats, PROBE_CONVERSATIONS};
pub use loss::{sdpo_loss, LossInput, LossOutput};
pub use optim::{adamw_step, clip_grad_norm, AdamHyper, AdamState, Moments};
pub use teacher::{
    content_text, hindsight_messages, hindsight_user_content, render_prompt, teacher_messages,
    teacher_prompt, teacher_user_content, StudentContext, TeacherPrompt, HINDSIGHT_HEADER,
    TEACHER_SYSTEM_PROMPT,
};
pub use trainer::{
    ChatScore, Checkpointing, DistillMetadata, DistillOutcome, DistillTimings, ExternalTeacher,
    FeedbackItem, ItemTrace, PreparedItem, StepTrace, Targets, TeacherMode, Trainer,
    TrainingConfig, CHECKPOINT_BUDGET_BYTES,
};

#[cfg(test)]
mod tests {
    /// The API shares one trainer across request threads and moves outcomes between them.
    #[test]
    fn trainer_is_shareable_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<crate::Trainer>();
        check::<crate::DistillOutcome>();
        check::<crate::SdpoError>();
        check::<crate::AdamState>();
    }
}
