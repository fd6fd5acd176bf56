//! Fused training ops with hand-written backwards: RMS norm, the SwiGLU product and RoPE.
//!
//! The differentiable forward used to compose them from candle element-wise ops (RMS norm is
//! seven, RoPE six), each allocating a full activation and adding a node whose backward
//! allocates more. Each op here is one pass forward and one pass backward over f32 rows,
//! parallel over rows. Off the CPU, or for other dtypes, the composed candle ops run instead.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

use crate::frozen::f32_input as values;

/// Rows per parallel task: large enough to amortise the split.
const ROWS_PER_TASK: usize = 16;

/// Whether the fused ops run for `t` (the attention kernel's condition).
fn cpu_f32(t: &Tensor) -> bool {
    crate::attention::fused_applies(t.device(), t.dtype())
}

/// Runs `f` on the contiguous f32 values of `ts` (made contiguous first).
fn with_values<R>(
    ts: &[&Tensor],
    what: &str,
    f: impl FnOnce(&[&[f32]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let ts: Vec<Tensor> = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (s, l) in &guards {
        let Storage::Cpu(c) = &**s else {
            candle_core::bail!("{what}: input is not on the CPU");
        };
        slices.push(values(c, l, what)?);
    }
    f(&slices)
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension (candle's `rms_norm_slow`, which
/// the training forward used): one pass forward, one backward, gradients for `x` and `w`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if !cpu_f32(x) || !cpu_f32(w) {
        return candle_nn::ops::rms_norm_slow(x, w, eps);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    /// `1 / sqrt(mean(x²) + eps)` of one row.
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (values(xs, xl, "rms norm")?, values(ws, wl, "rms norm")?);
        let n = w.len();
        if xl.dims().last() != Some(&n) {
            candle_core::bail!("rms norm: input {:?}, weight of {n}", xl.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    let r = self.inv_rms(x);
                    for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                        *y = x * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = w.elem_count();
        let (dx, dw) = with_values(&[x, w, grad], "rms norm backward", |v| {
            let (x, w, g) = (v[0], v[1], v[2]);
            let mut dx = vec![0f32; x.len()];
            // Per task: its rows' `dx` and its partial `dw`, summed afterwards.
            let dw = dx
                .par_chunks_mut(n * ROWS_PER_TASK)
                .zip(
                    x.par_chunks(n * ROWS_PER_TASK)
                        .zip(g.par_chunks(n * ROWS_PER_TASK)),
                )
                .map(|(dx, (x, g))| {
                    let mut dw = vec![0f32; n];
                    for ((dx, x), g) in dx
                        .chunks_exact_mut(n)
                        .zip(x.chunks_exact(n))
                        .zip(g.chunks_exact(n))
                    {
                        let r = self.inv_rms(x);
                        // y = x·r·w, r = (mean(x²)+eps)^-1/2:
                        // dx = r·(g⊙w) − r³·x·Σ(g⊙w⊙x)/n
                        let dot: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                        let c = r * r * r * dot / n as f32;
                        for (i, dx) in dx.iter_mut().enumerate() {
                            *dx = r * g[i] * w[i] - c * x[i];
                            dw[i] += g[i] * x[i] * r;
                        }
                    }
                    dw
                })
                .reduce(
                    || vec![0f32; n],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                        a
                    },
                );
            Ok((dx, dw))
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// `silu(g) · u`, the gated MLP's product, with its backward in one pass.
pub(crate) fn swiglu(g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(g) || !cpu_f32(u) || g.shape() != u.shape() {
        return candle_nn::ops::silu(g)? * u;
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

struct SwiGlu;

/// Elements per parallel task.
const ELEMS_PER_TASK: usize = 1 << 14;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-train"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (values(gs, gl, "swiglu")?, values(us, ul, "swiglu")?);
        if g.len() != u.len() {
            candle_core::bail!("swiglu: {} gate values, {} up values", g.len(), u.len());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(
                g.par_chunks(ELEMS_PER_TASK)
                    .zip(u.par_chunks(ELEMS_PER_TASK)),
            )
            .for_each(|(y, (g, u))| {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    // candle's silu: x / (1 + e^-x)
                    *y = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_values(&[g, u, grad], "swiglu backward", |v| {
            let (g, u, dy) = (v[0], v[1], v[2]);
            let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
            dg.par_chunks_mut(ELEMS_PER_TASK)
                .zip(du.par_chunks_mut(ELEMS_PER_TASK))
                .zip(
                    g.par_chunks(ELEMS_PER_TASK)
                        .zip(u.par_chunks(ELEMS_PER_TASK)),
                )
                .zip(dy.par_chunks(ELEMS_PER_TASK))
                .for_each(|(((dg, du), (g, u)), dy)| {
                    for i in 0..g.len() {
                        let s = sigmoid(g[i]);
                        // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
                        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                        du[i] = dy[i] * g[i] * s;
                    }
                });
            Ok((dg, du))
        })?;
        Ok((
            Some(Tensor::from_vec(dg, g.shape(), g.device())?),
            Some(Tensor::from_vec(du, u.shape(), u.device())?),
        ))
    }
}

/// Rotary embedding (`rotate_half` form) of `x` `[t, heads, d]` whose row `i` is at position
/// `pos + i`, with `cos`/`sin` tables `[positions, d/2]`. Differentiable in `x` only.
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    pos: usize,
) -> candle_core::Result<Tensor> {
    let (t, _, d) = x.dims3()?;
    let half = d / 2;
    let (cos, sin) = (cos.narrow(0, pos, t)?, sin.narrow(0, pos, t)?);
    if !cpu_f32(x) || !cpu_f32(&cos) || d % 2 != 0 {
        // [t, 1, d] tables against [t, heads, d] rows.
        let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?.unsqueeze(1)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        return x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?;
    }
    let table = with_values(&[&cos, &sin], "rope", |v| {
        Ok((v[0].to_vec(), v[1].to_vec()))
    })?;
    x.contiguous()?.apply_op1(Rope {
        cos: table.0,
        sin: table.1,
    })
}

/// The `[t, d/2]` tables of the rows' positions.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Rotates every `[heads, d]` row `i` by its angles; `sign = -1` rotates back (the
    /// backward: the transpose of a rotation is its inverse).
    fn apply(&self, x: &[f32], heads: usize, d: usize, sign: f32) -> Vec<f32> {
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(heads * d)
            .zip(x.par_chunks(heads * d))
            .enumerate()
            .for_each(|(i, (y, x))| {
                let (c, s) = (&self.cos[i * half..][..half], &self.sin[i * half..][..half]);
                for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let (x1, x2) = x.split_at(half);
                    let (y1, y2) = y.split_at_mut(half);
                    for j in 0..half {
                        let sn = sign * s[j];
                        y1[j] = x1[j] * c[j] - x2[j] * sn;
                        y2[j] = x2[j] * c[j] + x1[j] * sn;
                    }
                }
            });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (t, heads, d) = l.shape().dims3()?;
        if self.cos.len() != t * (d / 2) {
            candle_core::bail!("rope: {t} rows, tables of {}", self.cos.len());
        }
        let y = self.apply(values(s, l, "rope")?, heads, d, 1.0);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, heads, d) = x.dims3()?;
        let dx = with_values(&[grad], "rope backward", |v| {
            Ok(self.apply(v[0], heads, d, -1.0))
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0, f32::max)
    }

    /// Value and gradients of `f(fused)` and `f(composed)` under a random upstream gradient.
    fn check(
        name: &str,
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&ts), composed(&ts));
        assert!(
            max_rel(&a, &b) < 1e-5,
            "{name}: values differ by {}",
            max_rel(&a, &b)
        );
        let up = rand(a.dims(), 99);
        let ga = (&a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (x, y) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            let e = max_rel(x, y);
            assert!(e < 1e-4, "{name}: gradient of input {i} differs by {e}");
        }
    }

    /// Each fused op matches the candle composition it replaces, forward and backward, on
    /// row counts that do not divide the task size.
    #[test]
    fn fused_ops_match_composed_candle_ops() {
        check(
            "rms norm",
            &[rand(&[37, 3, 24], 1), rand(&[24], 2)],
            |t| rms_norm(&t[0], &t[1], 1e-6).unwrap(),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-6).unwrap(),
        );
        check(
            "swiglu",
            &[rand(&[41, 130], 3), rand(&[41, 130], 4)],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (candle_nn::ops::silu(&t[0]).unwrap() * &t[1]).unwrap(),
        );
        let (cos, sin) = (rand(&[50, 10], 5), rand(&[50, 10], 6));
        check(
            "rope",
            &[rand(&[19, 3, 20], 7)],
            |t| rope(&t[0], &cos, &sin, 7).unwrap(),
            |t| {
                let c = cos.narrow(0, 7, 19).unwrap();
                let s = sin.narrow(0, 7, 19).unwrap();
                let c = Tensor::cat(&[&c, &c], D::Minus1)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap();
                let s = Tensor::cat(&[&s, &s], D::Minus1)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap();
                let x1 = t[0].narrow(D::Minus1, 0, 10).unwrap();
                let x2 = t[0].narrow(D::Minus1, 10, 10).unwrap();
                let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
                (t[0].broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap()
            },
        );
    }
}
