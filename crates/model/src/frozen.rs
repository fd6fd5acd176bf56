//! A matmul by a frozen weight whose backward pass only produces the input gradient.
//!
//! candle's matmul backward always computes the gradient of both operands; for frozen base
//! weights that is wasted work and memory (the lm_head gradient alone is vocab x hidden).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

struct FrozenMatmul {
    /// Weight in `[out, in]` layout, as stored by PyTorch linears.
    w: Tensor,
}

fn storage_to_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("frozen matmul needs a contiguous input".into()))?;
    let dev = candle_core::Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.shape(), &dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.shape(), &dev),
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], l.shape(), &dev),
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], l.shape(), &dev),
        _ => Err(candle_core::Error::Msg(
            "frozen matmul supports float tensors only".into(),
        )),
    }
}

fn tensor_to_storage(t: &Tensor) -> candle_core::Result<CpuStorage> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        d => {
            return Err(candle_core::Error::Msg(format!(
                "frozen matmul: unsupported dtype {d:?}"
            )))
        }
    })
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = storage_to_tensor(s, l)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        Ok((tensor_to_storage(&y)?, shape))
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
