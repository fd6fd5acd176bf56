//! A matmul by a frozen weight whose backward pass only produces the input gradient.
//!
//! candle's matmul backward always computes the gradient of both operands; for frozen base
//! weights that is wasted work and memory (the lm_head gradient alone is vocab x hidden).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

struct FrozenMatmul {
    /// Weight in `[out, in]` layout, as stored by PyTorch linears.
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Straight on the storages: no copy of the input or of the (possibly vocab-wide) output.
        let (m, k) = l.shape().dims2()?;
        let wt = self.w.t()?;
        let (ws, wl) = wt.storage_and_layout();
        let Storage::Cpu(w) = &*ws else {
            return Err(candle_core::Error::Msg(
                "frozen matmul: weight is not on the CPU".into(),
            ));
        };
        let (wk, n) = wl.shape().dims2()?;
        if wk != k {
            return Err(candle_core::Error::Msg(format!(
                "frozen matmul: input has {k} features, weight expects {wk}"
            )));
        }
        let out = s.matmul(w, (1, m, n, k), l, wl)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x @ w^T` for a 2-D `x`, with gradient flowing to `x` only.
pub(crate) fn frozen_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })
    } else {
        // No custom kernel off-CPU yet: a plain matmul is correct, just computes an unused grad.
        x.matmul(&w.t()?)
    }
}
