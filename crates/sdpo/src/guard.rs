//! The post-update probe of the guardrail: how far an adapter has moved the model from its
//! base on a few fixed, generic conversations (mean KL(adapter ‖ base) of the next-token
//! distributions over every position), and how peaked it has become (mean entropy of the
//! adapter's distributions). A harmful update (e.g. a learning rate far too high) shows as a
//! jump in the first or a collapse of the second; both cost two short forwards per probe.

use candle_core::{DType, Tensor, D};
use claas_model::LoraAdapter;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::loss::log_softmax_last;
use crate::{Result, Trainer};

/// Generic exchanges the probe scores: nothing a user's feedback should need to change much.
pub const PROBE_CONVERSATIONS: [(&str, &str); 3] = [
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
    ),
    (
        "Name three primary colors.",
        "Red, yellow and blue are the three traditional primary colors.",
    ),
    (
        "How many days are there in a week?",
        "There are seven days in a week.",
    ),
];

/// What [`Trainer::probe`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ProbeStats {
    /// Mean over positions of KL(adapter ‖ base), in nats.
    pub kl_to_base: f64,
    /// Mean over positions of the adapter's next-token entropy, in nats.
    pub entropy: f64,
    /// Mean entropy of the base model on the same positions (for scale).
    pub base_entropy: f64,
    /// Positions scored.
    pub positions: usize,
}

impl Trainer {
    /// Scores [`PROBE_CONVERSATIONS`] (rendered with the chat template) under the base and
    /// under the base + `adapter`.
    pub fn probe(&self, adapter: &LoraAdapter) -> Result<ProbeStats> {
        let mut sums = (0.0f64, 0.0f64, 0.0f64);
        let mut positions = 0usize;
        for (user, answer) in PROBE_CONVERSATIONS {
            let messages = [
                json!({"role": "user", "content": user}),
                json!({"role": "assistant", "content": answer}),
            ];
            let text = self
                .template()
                .render(&messages, None, false, None)
                .map_err(|e| crate::SdpoError::Chat(e.to_string()))?;
            let ids = self
                .tokenizer()
                .encode(&text, false)
                .map_err(|e| crate::SdpoError::Chat(e.to_string()))?;
            if ids.is_empty() {
                continue;
            }
            let model = self.model();
            let lp_a = log_softmax_last(
                &model
                    .logits(&ids, Some(adapter), 512)?
                    .to_dtype(DType::F32)?,
            )?;
            let lp_b = log_softmax_last(&model.logits(&ids, None, 512)?.to_dtype(DType::F32)?)?;
            let p_a = lp_a.exp()?;
            let kl = (&p_a * (&lp_a - &lp_b)?)?.sum(D::Minus1)?;
            let ent = (&p_a * &lp_a)?.sum(D::Minus1)?.neg()?;
            let base_ent = (lp_b.exp()? * &lp_b)?.sum(D::Minus1)?.neg()?;
            let total = |t: &Tensor| -> Result<f64> { Ok(t.sum_all()?.to_scalar::<f32>()? as f64) };
            sums.0 += total(&kl)?;
            sums.1 += total(&ent)?;
            sums.2 += total(&base_ent)?;
            positions += ids.len();
        }
        let n = positions.max(1) as f64;
        Ok(ProbeStats {
            kl_to_base: sums.0 / n,
            entropy: sums.1 / n,
            base_entropy: sums.2 / n,
            positions,
        })
    }
}
