//! claas-sdpo: the SDPO distillation step of CLaaS — the loss (reference `compute_sdpo_loss`),
//! AdamW with torch's arithmetic and a persisted state, the self-teacher prompt, and the
//! [`Trainer`] that turns feedback items into one update of a LoRA adapter.

mod error;
pub mod loss;
pub mod optim;
mod select;
pub mod teacher;
mod trainer;

pub use error::{Result, SdpoError};
pub use loss::{sdpo_loss, LossInput, LossOutput};
pub use optim::{adamw_step, clip_grad_norm, AdamHyper, AdamState, Moments};
pub use teacher::{teacher_messages, teacher_prompt, teacher_user_content, TEACHER_SYSTEM_PROMPT};
pub use trainer::{
    DistillMetadata, DistillOutcome, DistillTimings, FeedbackItem, ItemTrace, PreparedItem,
    StepTrace, Targets, TeacherMode, Trainer, TrainingConfig,
};
