//! Causal attention on the CPU through [`claas_kernels::attention_forward`]: one candle op
//! whose backward is [`claas_kernels::attention_backward`], so training neither materialises
//! the `[heads, t, t]` scores nor back-propagates through a chain of candle element-wise ops.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor};
use claas_kernels::AttentionShape;

/// `softmax(q·kᵀ·scale + causal mask)·v` for `q` `[heads, t, d]` and `k`, `v` `[kv_heads,
/// pos + t, d]` (a cache view is fine), differentiable with respect to all three when
/// `train`. `None` when the fused kernel does not apply (off the CPU, or not f32).
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    train: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !fused_applies(q.device(), q.dtype()) {
        return Ok(None);
    }
    let op = Attention {
        scale: scale as f32,
        lse: OnceLock::new(),
    };
    let q = q.contiguous()?;
    Ok(Some(if train {
        q.apply_op3(k, v, op)?
    } else {
        q.apply_op3_no_bwd(k, v, &op)?
    }))
}

/// Whether [`causal_attention`] runs the fused kernel for tensors on `device` of `dtype`.
pub(crate) fn fused_applies(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

struct Attention {
    scale: f32,
    /// Each query row's log-sum-exp, from the forward, for the backward.
    lse: OnceLock<Vec<f32>>,
}

/// The f32 values of a tensor view whose rows of `d` values are contiguous, from its first
/// element, and the distance between its heads (dim 0).
fn rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("attention: {what} is not f32");
    };
    let (h, n, d) = l.shape().dims3()?;
    let st = l.stride();
    if st[2] != 1 || (n > 1 && st[1] != d) || (h > 1 && st[0] < n * d) {
        candle_core::bail!("attention: {what} rows are not contiguous (strides {st:?})");
    }
    let head_stride = if h > 1 { st[0] } else { n * d };
    Ok((&v[l.start_offset()..], head_stride))
}

impl Attention {
    fn shape(
        &self,
        ql: &Layout,
        kl: &Layout,
        k_head_stride: usize,
    ) -> candle_core::Result<AttentionShape> {
        let (heads, t, d) = ql.shape().dims3()?;
        let (kv_heads, n, dk) = kl.shape().dims3()?;
        if dk != d || n < t || kv_heads == 0 || heads % kv_heads != 0 {
            candle_core::bail!(
                "attention: queries {:?} do not fit keys {:?}",
                ql.shape(),
                kl.shape()
            );
        }
        Ok(AttentionShape {
            heads,
            kv_heads,
            q_len: t,
            pos: n - t,
            head_dim: d,
            kv_head_stride: k_head_stride,
            scale: self.scale,
        })
    }
}

fn cpu<'a>(s: &'a Storage, what: &str) -> candle_core::Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("attention: {what} is not on the CPU"),
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if kl.shape() != vl.shape() {
            candle_core::bail!("attention: keys {:?}, values {:?}", kl.shape(), vl.shape());
        }
        let (q, _) = rows(qs, ql, "queries")?;
        let (k, ks_) = rows(ks, kl, "keys")?;
        let (v, vs_) = rows(vs, vl, "values")?;
        if ks_ != vs_ {
            candle_core::bail!("attention: keys and values are laid out differently");
        }
        let s = self.shape(ql, kl, ks_)?;
        let q = &q[..s.heads * s.q_len * s.head_dim];
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; s.heads * s.q_len];
        claas_kernels::attention_forward(&s, q, k, v, &mut out, &mut lse);
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else {
            candle_core::bail!("attention: backward before forward");
        };
        let (grad, out) = (grad.contiguous()?, out.contiguous()?);
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = out.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (qv, _) = rows(cpu(&qs, "queries")?, ql, "queries")?;
        let (kv, k_stride) = rows(cpu(&ks, "keys")?, kl, "keys")?;
        let (vv, _) = rows(cpu(&vs, "values")?, vl, "values")?;
        let (ov, _) = rows(cpu(&os, "output")?, ol, "output")?;
        let (gv, _) = rows(cpu(&gs, "gradient")?, gl, "gradient")?;
        let s = self.shape(ql, kl, k_stride)?;
        let n = s.heads * s.q_len * s.head_dim;
        let kv_n = s.kv_heads * s.kv_len() * s.head_dim;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; kv_n], vec![0f32; kv_n]);
        claas_kernels::attention_backward(
            &s,
            &qv[..n],
            kv,
            vv,
            &ov[..n],
            lse,
            &gv[..n],
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let (q_shape, kv_shape) = (q.shape().clone(), k.shape().clone());
        let dev = q.device().clone();
        drop((qs, ks, vs, os, gs));
        Ok((
            Some(Tensor::from_vec(dq, q_shape, &dev)?),
            Some(Tensor::from_vec(dk, kv_shape.clone(), &dev)?),
            Some(Tensor::from_vec(dv, kv_shape, &dev)?),
        ))
    }
}
