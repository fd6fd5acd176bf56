//! Fused "log-softmax, then pick a few entries per row" with a hand-written backward.
//!
//! The SDPO loss only reads the student's log-probabilities at the teacher's top-k ids and at
//! the response token, but over a real vocabulary (~152k) the composed candle version
//! materialises several `[T, V]` temporaries forward and backward. This op makes one pass for
//! the row statistics, returns `[.., S]` picked values, and produces the dense gradient
//! `scatter(g) - softmax * sum(g)` (torch's log_softmax backward) in one pass.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

trait Real: Copy + Send + Sync + 'static {
    fn to64(self) -> f64;
    fn from64(v: f64) -> Self;
    fn minus(self, o: Self) -> Self;
    fn exp_(self) -> Self;
    fn bigger(self, o: Self) -> Self;
    fn neg_inf() -> Self;

    /// `(max, ln Σ exp(x − max))` of a row.
    fn row_stats(row: &[Self]) -> (f64, f64) {
        let m = row.iter().fold(Self::neg_inf(), |a, &b| a.bigger(b));
        let sum: f64 = row.iter().map(|&z| z.minus(m).exp_().to64()).sum();
        (m.to64(), sum.ln())
    }

    /// `out = −gsum · exp(x − m − ls)` over a row: the dense part of the backward.
    fn dense_row(x: &[Self], m: f64, ls: f64, gsum: f64, out: &mut [Self]) {
        let (m, ls) = (Self::from64(m), Self::from64(ls));
        for (d, &z) in out.iter_mut().zip(x) {
            let p = z.minus(m).minus(ls).exp_();
            *d = Self::from64(0.0).minus(Self::from64(p.to64() * gsum));
        }
    }
}

macro_rules! real {
    ($t:ty $(, $fast:item)*) => {
        impl Real for $t {
            $($fast)*
            fn to64(self) -> f64 {
                self as f64
            }
            fn from64(v: f64) -> Self {
                v as $t
            }
            fn minus(self, o: Self) -> Self {
                self - o
            }
            fn exp_(self) -> Self {
                self.exp()
            }
            fn bigger(self, o: Self) -> Self {
                if o > self || self.is_nan() {
                    o
                } else {
                    self
                }
            }
            fn neg_inf() -> Self {
                <$t>::NEG_INFINITY
            }
        }
    };
}
// f32 rows (the trainer's) take the vectorised `exp` of `claas_kernels`.
real!(
    f32,
    fn row_stats(row: &[f32]) -> (f64, f64) {
        let (m, ls) = claas_kernels::max_and_log_sum_exp(row);
        (m as f64, ls)
    },
    fn dense_row(x: &[f32], m: f64, ls: f64, gsum: f64, out: &mut [f32]) {
        claas_kernels::scaled_exp(x, (m + ls) as f32, -gsum as f32, out)
    }
);
real!(f64);

struct SelectLogSoftmax {
    /// `[rows * s]` column ids to pick in each row.
    idx: Vec<u32>,
    s: usize,
    /// Per row `(max, ln sum exp(x - max))`, kept from the forward for the backward.
    stats: OnceLock<Vec<(f64, f64)>>,
}

fn workers(rows: usize) -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.max(1))
}

/// Runs `f(first_row, rows_chunk_of_out)` over row blocks in parallel.
fn par_rows<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let n = workers(rows);
    let per = rows.div_ceil(n.max(1)).max(1);
    std::thread::scope(|sc| {
        for (c, chunk) in out.chunks_mut(per * row_len.max(1)).enumerate() {
            let f = &f;
            sc.spawn(move || f(c * per, chunk));
        }
    });
}

impl SelectLogSoftmax {
    fn forward<T: Real>(&self, x: &[T], v: usize) -> (Vec<T>, Vec<(f64, f64)>) {
        let rows = x.len() / v;
        let mut stats = vec![(0f64, 0f64); rows];
        par_rows(&mut stats, 1, |r0, chunk| {
            for (i, st) in chunk.iter_mut().enumerate() {
                *st = T::row_stats(&x[(r0 + i) * v..(r0 + i + 1) * v]);
            }
        });
        let mut out = Vec::with_capacity(rows * self.s);
        for r in 0..rows {
            let (m, ls) = stats[r];
            for &j in &self.idx[r * self.s..(r + 1) * self.s] {
                // torch order: (x - max) - ln(sum)
                let xm = x[r * v + j as usize].minus(T::from64(m));
                out.push(xm.minus(T::from64(ls)));
            }
        }
        (out, stats)
    }

    fn backward<T: Real>(&self, x: &[T], v: usize, g: &[T], stats: &[(f64, f64)]) -> Vec<T> {
        let mut dense = vec![T::from64(0.0); x.len()];
        let s = self.s;
        par_rows(&mut dense, v, |r0, chunk| {
            for (i, drow) in chunk.chunks_mut(v).enumerate() {
                let r = r0 + i;
                let (m, ls) = stats[r];
                let gr = &g[r * s..(r + 1) * s];
                let gsum = T::from64(gr.iter().map(|z| z.to64()).sum::<f64>()).to64();
                T::dense_row(&x[r * v..(r + 1) * v], m, ls, gsum, drow);
                for (k, &j) in self.idx[r * s..(r + 1) * s].iter().enumerate() {
                    let j = j as usize;
                    drow[j] = T::from64(drow[j].to64() + gr[k].to64());
                }
            }
        });
        dense
    }
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("select-log-softmax needs contiguous input".into())
    })?;
    Ok(&v[a..b])
}

impl CustomOp1 for SelectLogSoftmax {
    fn name(&self) -> &'static str {
        "select-log-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let v = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("scalar input".into()))?;
        let rows = l.shape().elem_count() / v.max(1);
        if self.idx.len() != rows * self.s {
            return Err(candle_core::Error::Msg(format!(
                "select-log-softmax: {} ids for {rows} rows of {}",
                self.idx.len(),
                self.s
            )));
        }
        if let Some(&bad) = self.idx.iter().find(|&&j| j as usize >= v) {
            return Err(candle_core::Error::Msg(format!(
                "id {bad} out of range {v}"
            )));
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap_or(&mut 0) = self.s;
        let (storage, stats) = match st {
            CpuStorage::F32(x) => {
                let (o, s) = self.forward(contiguous(x, l)?, v);
                (CpuStorage::F32(o), s)
            }
            CpuStorage::F64(x) => {
                let (o, s) = self.forward(contiguous(x, l)?, v);
                (CpuStorage::F64(o), s)
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "select-log-softmax: f32/f64 only".into(),
                ))
            }
        };
        let _ = self.stats.set(stats);
        Ok((storage, Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let stats = self
            .stats
            .get()
            .ok_or_else(|| candle_core::Error::Msg("backward before forward".into()))?;
        let v = arg.dim(candle_core::D::Minus1)?;
        let arg = arg.contiguous()?;
        let grad = grad.contiguous()?.to_dtype(arg.dtype())?;
        let (xs, xl) = arg.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let dense = match (&*xs, &*gs) {
            (Storage::Cpu(CpuStorage::F32(x)), Storage::Cpu(CpuStorage::F32(g))) => {
                CpuStorage::F32(self.backward(contiguous(x, xl)?, v, contiguous(g, gl)?, stats))
            }
            (Storage::Cpu(CpuStorage::F64(x)), Storage::Cpu(CpuStorage::F64(g))) => {
                CpuStorage::F64(self.backward(contiguous(x, xl)?, v, contiguous(g, gl)?, stats))
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "select-log-softmax: f32/f64 CPU only".into(),
                ))
            }
        };
        let shape = arg.shape().clone();
        drop((xs, gs));
        let t = match dense {
            CpuStorage::F32(d) => Tensor::from_vec(d, shape, arg.device())?,
            CpuStorage::F64(d) => Tensor::from_vec(d, shape, arg.device())?,
            _ => unreachable!("only float storages are built above"),
        };
        Ok(Some(t))
    }
}

/// `log_softmax(x)[.., idx]` for a `[.., V]` tensor and `[..]`-shaped rows of `s` ids each
/// (row-major), differentiable with respect to `x`. Off the CPU it falls back to the composed
/// candle ops.
pub fn select_log_softmax(x: &Tensor, idx: Vec<u32>, s: usize) -> crate::Result<Tensor> {
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = s;
    }
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        let ids = Tensor::from_vec(idx, out_dims, x.device())?;
        return Ok(crate::loss::log_softmax_last(x)?.gather(&ids, candle_core::D::Minus1)?);
    }
    Ok(x.contiguous()?.apply_op1(SelectLogSoftmax {
        idx,
        s,
        stats: OnceLock::new(),
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f64>())
            .unwrap()
    }

    /// Values and gradient equal the composed log_softmax + gather in f64, duplicates included.
    #[test]
    fn matches_composed_ops_in_f64() {
        let (rows, v, s) = (5usize, 37usize, 4usize);
        let x: Vec<f64> = (0..rows * v)
            .map(|i| ((i * 7919 % 101) as f64 / 10.0) - 5.0)
            .collect();
        let mut idx: Vec<u32> = (0..rows * s)
            .map(|i| {
                if i % s == s - 1 {
                    (i % v) as u32
                } else {
                    ((i * 13) % v) as u32
                }
            })
            .collect();
        idx[1] = idx[0]; // a duplicate id in row 0
        let w: Vec<f64> = (0..rows * s).map(|i| (i as f64 * 0.37).sin()).collect();
        let dev = Device::Cpu;
        let wt = Tensor::from_vec(w, (rows, s), &dev).unwrap();
        let a = Var::from_tensor(&Tensor::from_vec(x, (rows, v), &dev).unwrap()).unwrap();
        let fused = select_log_softmax(a.as_tensor(), idx.clone(), s).unwrap();
        let it = Tensor::from_vec(idx, (rows, s), &dev).unwrap();
        let composed = crate::loss::log_softmax_last(a.as_tensor())
            .unwrap()
            .gather(&it, D::Minus1)
            .unwrap();
        let d = max_abs_diff(&fused, &composed);
        assert!(d < 1e-12, "values differ by {d}");
        let g1 = (&fused * &wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&composed * &wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g1 = g1.get(a.as_tensor()).unwrap();
        let g2 = g2.get(a.as_tensor()).unwrap();
        let d = max_abs_diff(g1, g2);
        assert!(d < 1e-12, "gradients differ by {d}");
    }

    /// The f32 path (vectorised `exp`) stays within f32 rounding of the f64 values and
    /// gradient, on a vocabulary-wide row.
    #[test]
    fn f32_rows_match_f64() {
        let (rows, v, s) = (3usize, 151_936usize, 3usize);
        let x: Vec<f64> = (0..rows * v)
            .map(|i| ((i * 7919 % 10007) as f64 / 500.0) - 10.0)
            .collect();
        let idx: Vec<u32> = (0..rows * s).map(|i| (i * 50_021 % v) as u32).collect();
        let w: Vec<f64> = (0..rows * s).map(|i| (i as f64 * 0.37).cos()).collect();
        let dev = Device::Cpu;
        let x64 = Var::from_tensor(&Tensor::from_vec(x, (rows, v), &dev).unwrap()).unwrap();
        let x32 = Var::from_tensor(&x64.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let w64 = Tensor::from_vec(w, (rows, s), &dev).unwrap();
        let w32 = w64.to_dtype(DType::F32).unwrap();
        let a = select_log_softmax(x64.as_tensor(), idx.clone(), s).unwrap();
        let b = select_log_softmax(x32.as_tensor(), idx, s).unwrap();
        let d = max_abs_diff(&a, &b.to_dtype(DType::F64).unwrap());
        assert!(d < 1e-5, "values differ by {d}");
        let ga = (&a * &w64).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &w32).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = ga.get(x64.as_tensor()).unwrap();
        let gb = gb
            .get(x32.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let d = max_abs_diff(ga, &gb);
        assert!(d < 1e-6, "gradients differ by {d}");
    }
}
