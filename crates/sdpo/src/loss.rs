//! The SDPO loss (reference: CLaaS `compute_sdpo_loss` at 0f67ae6), built from differentiable
//! candle ops so its gradient with respect to the student logits comes from autograd.
//!
//! Per response token t (rows of `student_logits` predict `response_ids`):
//! - `0 < alpha < 1`: generalised Jensen-Shannon divergence between the teacher and the
//!   student, both restricted to the teacher's top-k ids and renormalised there:
//!   `lerp(KL(student || M), KL(teacher || M), alpha)` with `M = alpha*teacher + (1-alpha)*student`.
//! - `alpha = 1`: the REINFORCE-style surrogate `(s - t).detach() * s` where `s` is the student
//!   log-prob of the response token and `t` the teacher's (−20 if the token is not in the
//!   teacher's top-k). Its value is not a divergence; only its gradient matters.
//! - `alpha = 0`: forward KL over the teacher's top-k, `Σ p_t (log p_t − log p_s)` (both
//!   renormalised), as the SDPO paper's code does. The reference instead evaluates the mixture
//!   formula with `log(0) = −inf`, which collapses to exactly 0 loss and 0 distillation gradient
//!   (a defect; `sdpo_loss.json`'s alpha = 0 cases record it).
//!
//! Each token's distillation term is multiplied by the importance ratio
//! `min(exp(clamp(s − old, ±20)), is_clip)` (no gradient), and `kl_reg_weight` times the k3
//! estimate of KL(student || base), `exp(r) − 1 − r` with `r = clamp(s − base, ±20)`, is added.
//! Both are masked means over the response mask.

use candle_core::{DType, Tensor, D};

use crate::select::select_log_softmax;
use crate::Result;

/// Inputs of [`sdpo_loss`]. Shapes: `B` sequences, `T` response positions, `V` vocabulary,
/// `K` teacher top-k.
pub struct LossInput<'a> {
    /// `[B, T, V]`, the differentiable student logits; row t predicts `response_ids[:, t]`.
    pub student_logits: &'a Tensor,
    /// `[B, T, K]` teacher log-probabilities (over the full vocabulary) of its top-k ids.
    pub teacher_logprobs: &'a Tensor,
    /// `[B, T, K]` (u32) the teacher's top-k token ids.
    pub teacher_indices: &'a Tensor,
    /// `[B, T]` base-model log-probabilities of the response tokens.
    pub base_logprobs: &'a Tensor,
    /// `[B, T]` 1.0 for response tokens that count, 0.0 for padding.
    pub response_mask: &'a Tensor,
    /// `[B, T]` log-probabilities of the response tokens under the rollout policy.
    pub old_student_logprobs: &'a Tensor,
    /// `[B, T]` (u32) the response token ids.
    pub response_ids: &'a Tensor,
    /// Interpolation between forward KL (0), JSD (0.5) and the reverse-KL surrogate (1).
    pub alpha: f64,
    /// Upper clip of the importance ratio.
    pub is_clip: f64,
    /// Weight of the KL-to-base regulariser.
    pub kl_reg_weight: f64,
}

/// The loss tensor (with its graph) and the reference's diagnostics.
pub struct LossOutput {
    /// `distill + kl_reg_weight * kl`, a scalar tensor to call `backward` on.
    pub loss: Tensor,
    /// The masked-mean distillation term (scalar tensor, with graph).
    pub distill_term: Tensor,
    /// The masked-mean k3 KL-to-base term, unweighted (scalar tensor, with graph).
    pub kl_term: Tensor,
    pub total_loss: f64,
    pub distill_loss: f64,
    pub kl_reg: f64,
    pub mean_is_ratio: f64,
    pub clip_fraction: f64,
}

/// log-softmax over the last dimension. The max is detached: it cancels mathematically, and
/// without it the gradient is exactly torch's `g - softmax * sum(g)`.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let diff = x.broadcast_sub(&max)?;
    let lse = diff.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(diff.broadcast_sub(&lse)?)
}

/// `torch.clamp(x, lo, hi)` with torch's gradient: passed through where `lo <= x <= hi`,
/// zero elsewhere (candle's maximum/minimum would split ties).
fn clamp_diff(x: &Tensor, lo: Option<f64>, hi: Option<f64>) -> Result<Tensor> {
    let xd = x.detach();
    let mut clamped = xd.clone();
    let mut inside: Option<Tensor> = None;
    if let Some(lo) = lo {
        let lo_t = Tensor::full(lo, (), x.device())?.to_dtype(x.dtype())?;
        clamped = clamped.broadcast_maximum(&lo_t)?;
        inside = Some(xd.broadcast_ge(&lo_t)?);
    }
    if let Some(hi) = hi {
        let hi_t = Tensor::full(hi, (), x.device())?.to_dtype(x.dtype())?;
        clamped = clamped.broadcast_minimum(&hi_t)?;
        let le = xd.broadcast_le(&hi_t)?;
        inside = Some(match inside {
            Some(m) => (m * le)?,
            None => le,
        });
    }
    match inside {
        Some(m) => Ok(m.where_cond(x, &clamped)?),
        None => Ok(x.clone()),
    }
}

fn scalar_like(v: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::full(v, (), like.device())?.to_dtype(like.dtype())?)
}

/// torch.lerp(start, end, w) with torch's two-sided formula (kept for bit-level closeness).
fn lerp(start: &Tensor, end: &Tensor, w: f64) -> Result<Tensor> {
    let diff = (end - start)?;
    Ok(if w < 0.5 {
        (start + (diff * w)?)?
    } else {
        (end - (diff * (1.0 - w))?)?
    })
}

/// Logsumexp of two same-shaped tensors, elementwise, with a detached shift so the gradient is
/// `exp(x - result)` as in torch; an all-`-inf` pair gives `-inf` rather than NaN.
fn logaddexp(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let m = a.detach().maximum(&b.detach())?;
    // torch replaces an infinite max by 0 before shifting.
    let finite = m.abs()?.lt(f64::INFINITY)?;
    let m = finite.where_cond(&m, &m.zeros_like()?)?;
    let s = (a.broadcast_sub(&m)?.exp()? + b.broadcast_sub(&m)?.exp()?)?;
    Ok((s.log()? + m)?)
}

/// Teacher log-prob of each response token, `floor` where it is not among the top-k.
fn lookup_in_topk(
    response_ids: &Tensor,
    indices: &Tensor,
    logprobs: &Tensor,
    floor: f64,
) -> Result<Tensor> {
    let target = response_ids.unsqueeze(D::Minus1)?;
    let matches = indices.broadcast_eq(&target)?.to_dtype(logprobs.dtype())?;
    let matched = (logprobs * &matches)?.sum(D::Minus1)?;
    let has = matches.max(D::Minus1)?;
    let one_minus = has.affine(-1.0, 1.0)?;
    Ok(((matched * &has)? + (one_minus * floor)?)?)
}

fn to_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Computes the SDPO loss and its diagnostics (see the module docs).
pub fn sdpo_loss(inp: &LossInput<'_>) -> Result<LossOutput> {
    let alpha = inp.alpha;
    let dt = inp.student_logits.dtype();
    let teacher_lp = inp.teacher_logprobs.to_dtype(dt)?;
    let response_ids = inp.response_ids.to_dtype(DType::U32)?;
    // Only the log-probs at the teacher's top-k and at the response token are needed: pick them
    // with the fused op instead of materialising the full [B, T, V] log-softmax.
    let resp_host: Vec<u32> = response_ids.flatten_all()?.to_vec1()?;
    let k = if alpha < 1.0 {
        inp.teacher_indices.dim(D::Minus1)?
    } else {
        0
    };
    let mut picks = Vec::with_capacity(resp_host.len() * (k + 1));
    if k > 0 {
        let tidx: Vec<u32> = inp
            .teacher_indices
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        for (row, &r) in tidx.chunks_exact(k).zip(&resp_host) {
            picks.extend_from_slice(row);
            picks.push(r);
        }
    } else {
        picks.extend_from_slice(&resp_host);
    }
    let picked = select_log_softmax(inp.student_logits, picks, k + 1)?; // [B,T,K+1]
    let student_chosen = picked.narrow(D::Minus1, k, 1)?.squeeze(D::Minus1)?; // [B,T]

    let per_token = if alpha < 1.0 {
        let student_k = picked.narrow(D::Minus1, 0, k)?; // [B,T,K]
                                                         // Renormalise both distributions over the teacher's top-k support.
        let teacher_p = teacher_lp.exp()?;
        let student_p = student_k.exp()?;
        let t_sum = clamp_diff(&teacher_p.sum_keepdim(D::Minus1)?, Some(1e-8), None)?;
        let s_sum = clamp_diff(&student_p.sum_keepdim(D::Minus1)?, Some(1e-8), None)?;
        let teacher_p = teacher_p.broadcast_div(&t_sum)?;
        let student_p = student_p.broadcast_div(&s_sum)?;
        let teacher_norm = teacher_p.log()?;
        let student_norm = student_p.log()?;
        if alpha <= 0.0 {
            // Forward KL(teacher || student) over the top-k (SDPO paper code's alpha = 0).
            (&teacher_p * (&teacher_norm - &student_norm)?)?.sum(D::Minus1)?
        } else {
            let log_a = alpha.ln();
            let log_1ma = (1.0 - alpha).ln();
            let mixture = logaddexp(
                &student_norm.affine(1.0, log_1ma)?,
                &teacher_norm.affine(1.0, log_a)?,
            )?;
            let kl_teacher = (&teacher_p * (&teacher_norm - &mixture)?)?.sum(D::Minus1)?;
            let kl_student = (&student_p * (&student_norm - &mixture)?)?.sum(D::Minus1)?;
            lerp(&kl_student, &kl_teacher, alpha)?
        }
    } else {
        let teacher_chosen =
            lookup_in_topk(&response_ids, inp.teacher_indices, &teacher_lp, -20.0)?;
        let log_ratio = (&student_chosen - &teacher_chosen)?;
        (log_ratio.detach() * &student_chosen)?
    };

    // Importance ratio against the rollout policy; no gradient flows through it.
    let old = inp.old_student_logprobs.to_dtype(dt)?;
    let neg_kl = (student_chosen.detach() - &old)?.clamp(-20.0, 20.0)?;
    let clip_t = scalar_like(inp.is_clip, &neg_kl)?;
    let ratio = neg_kl.exp()?.broadcast_minimum(&clip_t)?;
    let per_token = (per_token * &ratio)?;

    // k3 estimate of KL(student || base).
    let base = inp.base_logprobs.to_dtype(dt)?;
    let log_ratio = clamp_diff(&(&student_chosen - &base)?, Some(-20.0), Some(20.0))?;
    let kl_pt = (log_ratio.exp()?.affine(1.0, -1.0)? - &log_ratio)?;

    let mask = inp.response_mask.to_dtype(dt)?;
    let mask_sum = mask.sum_all()?.clamp(1.0, f64::INFINITY)?;
    let distill = (&per_token * &mask)?.sum_all()?.div(&mask_sum)?;
    let kl = (&kl_pt * &mask)?.sum_all()?.div(&mask_sum)?;
    let loss = (&distill + (&kl * inp.kl_reg_weight)?)?;

    let mean_ratio = (&ratio * &mask)?.sum_all()?.div(&mask_sum)?;
    let clipped = ratio.broadcast_ge(&clip_t)?.to_dtype(dt)?;
    let clip_frac = (&clipped * &mask)?.sum_all()?.div(&mask_sum)?;

    Ok(LossOutput {
        total_loss: to_f64(&loss)?,
        distill_loss: to_f64(&distill)?,
        kl_reg: to_f64(&kl)?,
        mean_is_ratio: to_f64(&mean_ratio)?,
        clip_fraction: to_f64(&clip_frac)?,
        loss,
        distill_term: distill,
        kl_term: kl,
    })
}
