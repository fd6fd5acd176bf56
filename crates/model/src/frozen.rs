//! Frozen base weights and the matmuls by them, whose backward pass only produces the input
//! gradient.
//!
//! candle's matmul backward always computes the gradient of both operands; for frozen base
//! weights that is wasted work and memory (the lm_head gradient alone is vocab x hidden).
//!
//! On the CPU the weight matrices (projections, embeddings, LM head) can stay in the
//! checkpoint's 16 bits ([`HalfWeight`]), served straight from the mapped safetensors file when
//! its layout allows. Their products run on `claas-kernels`: each weight is widened to f32 in
//! registers, activations stay f32 and every sum accumulates in f32. Only the matrices are
//! 16-bit: norms, RoPE, attention, the KV cache, LoRA, the optimizer and the loss are f32.
//! At [`MatmulPrecision::Medium`] (the default) products of more than 16 rows by bf16 weights
//! round their activations to bf16 and run on AMX tiles where the CPU has them, as PyTorch,
//! oneDNN and llama.cpp compute bf16 models.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use memmap2::Mmap;

use crate::qwen3::ForwardMode;
use crate::MatmulPrecision;

/// The two 16-bit storage formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HalfKind {
    Bf16,
    F16,
}

impl HalfKind {
    pub(crate) fn from_dtype(d: DType) -> Option<HalfKind> {
        match d {
            DType::BF16 => Some(HalfKind::Bf16),
            DType::F16 => Some(HalfKind::F16),
            _ => None,
        }
    }

    pub(crate) fn dtype(self) -> DType {
        match self {
            HalfKind::Bf16 => DType::BF16,
            HalfKind::F16 => DType::F16,
        }
    }

    fn widen(self, b: u16) -> f32 {
        match self {
            HalfKind::Bf16 => claas_kernels::bf16_to_f32(b),
            HalfKind::F16 => claas_kernels::f16_to_f32(b),
        }
    }
}

/// Where a matrix's 16-bit patterns live.
enum Bits {
    /// Inside a mapped safetensors file (`len` values from byte `offset`, 2-byte aligned).
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    /// Converted at load (another dtype in the file, or an unaligned tensor).
    Owned(Vec<u16>),
}

impl Bits {
    fn as_slice(&self) -> &[u16] {
        match self {
            Bits::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + 2 * *len];
                // SAFETY: `HalfWeight::mapped` checked that the range lies inside the map and
                // starts 2-byte aligned; every bit pattern is a valid u16; the map is read-only
                // and lives as long as `self`.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u16>(), *len) }
            }
            Bits::Owned(v) => v,
        }
    }
}

/// A row-major `[rows, cols]` matrix kept in bf16 or f16 (a linear layer's `[out, in]`).
#[derive(Clone)]
pub(crate) struct HalfWeight {
    bits: Arc<Bits>,
    kind: HalfKind,
    rows: usize,
    cols: usize,
}

impl HalfWeight {
    /// The matrix at byte `offset` of a mapped file, used in place when 2-byte aligned (always
    /// so in files written by safetensors, whose tensors start at multiples of their element
    /// size), copied otherwise. `None` if the range is not inside the map.
    pub(crate) fn mapped(
        map: &Arc<Mmap>,
        offset: usize,
        kind: HalfKind,
        rows: usize,
        cols: usize,
    ) -> Option<HalfWeight> {
        let len = rows.checked_mul(cols)?;
        let end = offset.checked_add(len.checked_mul(2)?)?;
        if end > map.len() {
            return None;
        }
        let bits = if (map.as_ptr() as usize + offset).is_multiple_of(2) {
            Bits::Mapped {
                map: map.clone(),
                offset,
                len,
            }
        } else {
            Bits::Owned(
                map[offset..end]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            )
        };
        Some(HalfWeight {
            bits: Arc::new(bits),
            kind,
            rows,
            cols,
        })
    }

    /// A 2-D tensor of any float dtype, rounded to `kind` (to nearest, ties to even).
    pub(crate) fn from_tensor(t: &Tensor, kind: HalfKind) -> candle_core::Result<HalfWeight> {
        let (rows, cols) = t.dims2()?;
        let flat = t.flatten_all()?;
        let bits: Vec<u16> = match kind {
            HalfKind::Bf16 => flat
                .to_dtype(DType::BF16)?
                .to_vec1::<half::bf16>()?
                .into_iter()
                .map(half::bf16::to_bits)
                .collect(),
            HalfKind::F16 => flat
                .to_dtype(DType::F16)?
                .to_vec1::<half::f16>()?
                .into_iter()
                .map(half::f16::to_bits)
                .collect(),
        };
        Ok(HalfWeight {
            bits: Arc::new(Bits::Owned(bits)),
            kind,
            rows,
            cols,
        })
    }

    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// `y = x·Wᵀ` for `x` `[m, cols]` f32, `y` `[m, rows]`; the kernels pick the GEMV (m = 1),
    /// the multi-row GEMV that reads each weight once for all rows (small m), or the packed GEMM.
    fn forward(&self, x: &[f32], m: usize, p: MatmulPrecision) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        let w = self.bits.as_slice();
        let mut y = vec![0f32; m * n];
        match (self.kind, m) {
            (HalfKind::Bf16, 1) => claas_kernels::gemv_bf16(w, x, &mut y),
            (HalfKind::F16, 1) => claas_kernels::gemv_f16(w, x, &mut y),
            (HalfKind::Bf16, _) => claas_kernels::gemm_bf16_at(p, w, x, &mut y, m, k, n),
            (HalfKind::F16, _) => claas_kernels::gemm_f16(w, x, &mut y, m, k, n),
        }
        y
    }

    /// `dx = g·W` for `g` `[m, rows]`, `dx` `[m, cols]`.
    fn backward(&self, g: &[f32], m: usize, p: MatmulPrecision) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        let w = self.bits.as_slice();
        let mut dx = vec![0f32; m * k];
        match self.kind {
            HalfKind::Bf16 => claas_kernels::gemm_nn_bf16_at(p, w, g, &mut dx, m, n, k),
            HalfKind::F16 => claas_kernels::gemm_nn_f16(w, g, &mut dx, m, n, k),
        }
        dx
    }

    /// Rows `ids` widened to f32, `[ids.len(), cols]`: an embedding lookup that never widens
    /// the rest of the table.
    fn gather(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let w = self.bits.as_slice();
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("row {r} of a {}-row matrix", self.rows);
            }
            out.extend(
                w[r * self.cols..(r + 1) * self.cols]
                    .iter()
                    .map(|&b| self.kind.widen(b)),
            );
        }
        Ok(out)
    }
}

/// A frozen base matrix: a candle tensor in the compute dtype, or 16-bit storage on the CPU.
#[derive(Clone)]
pub(crate) enum Weight {
    Dense(Tensor),
    Half(HalfWeight),
    /// q8_0 int8 storage (`--quantization q8_0`), see [`Q8Weight`].
    Q8(Q8Weight),
}

impl Weight {
    pub(crate) fn elem_count(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count(),
            Weight::Half(h) => h.rows * h.cols,
            Weight::Q8(q) => q.rows * q.cols,
        }
    }

    /// Bytes the weights occupy (and a decode step reads).
    pub(crate) fn size_in_bytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Half(h) => h.rows * h.cols * 2,
            Weight::Q8(q) => q.qs.len() + 2 * q.scales.len(),
        }
    }

    /// The dtype the matrix is stored in (`U8` for q8_0: candle has no `i8`).
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Weight::Dense(t) => t.dtype(),
            Weight::Half(h) => h.kind.dtype(),
            Weight::Q8(_) => DType::U8,
        }
    }

    /// `x @ W^T` for a 2-D `x`. Training mode records a backward that yields only `x`'s
    /// gradient; both modes use the 16-bit kernels for 16-bit storage, at precision `p`.
    pub(crate) fn linear(
        &self,
        x: &Tensor,
        mode: ForwardMode,
        p: MatmulPrecision,
    ) -> candle_core::Result<Tensor> {
        match self {
            Weight::Dense(w) => match mode {
                ForwardMode::Inference => x.matmul(&w.t()?),
                ForwardMode::Training => frozen_linear(x, w),
            },
            Weight::Half(h) => x.contiguous()?.apply_op1(HalfMatmul { w: h.clone(), p }),
            Weight::Q8(q) => x.contiguous()?.apply_op1(Q8Matmul { w: q.clone() }),
        }
    }

    /// Rows `ids` (an embedding lookup) in the compute dtype.
    pub(crate) fn rows(
        &self,
        ids: &[u32],
        device: &candle_core::Device,
    ) -> candle_core::Result<Tensor> {
        match self {
            Weight::Dense(t) => t.index_select(&Tensor::new(ids, device)?, 0),
            Weight::Half(h) => Tensor::from_vec(h.gather(ids)?, (ids.len(), h.cols), device),
            Weight::Q8(q) => Tensor::from_vec(q.gather(ids)?, (ids.len(), q.cols), device),
        }
    }

    /// The matrix quantized to q8_0 (a no-op if it already is); norms and other vectors
    /// (rank != 2) stay as they are.
    pub(crate) fn into_q8(self) -> candle_core::Result<Weight> {
        match self {
            Weight::Dense(t) if t.rank() == 2 => {
                let (rows, cols) = t.dims2()?;
                let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(Weight::Q8(Q8Weight::quantize(rows, cols, |r, out| {
                    out.copy_from_slice(&v[r * cols..(r + 1) * cols])
                })?))
            }
            Weight::Half(h) => {
                let w = h.bits.as_slice();
                Ok(Weight::Q8(Q8Weight::quantize(h.rows, h.cols, |r, out| {
                    for (o, &b) in out.iter_mut().zip(&w[r * h.cols..(r + 1) * h.cols]) {
                        *o = h.kind.widen(b);
                    }
                })?))
            }
            other => Ok(other),
        }
    }
}

/// The f32 slice of a contiguous CPU storage.
pub(crate) fn f32_input<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: input is not contiguous");
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        other => candle_core::bail!("{what}: input is {:?}, not f32", other.dtype()),
    }
}

/// `x @ W^T` by a 16-bit matrix; backward gives `x`'s gradient only.
struct HalfMatmul {
    w: HalfWeight,
    p: MatmulPrecision,
}

impl CustomOp1 for HalfMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul-16bit"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        if k != self.w.cols {
            candle_core::bail!(
                "frozen matmul: input has {k} features, weight expects {}",
                self.w.cols
            );
        }
        let x = f32_input(s, l, "frozen matmul")?;
        let y = self.w.forward(x, m, self.p);
        Ok((CpuStorage::F32(y), Shape::from((m, self.w.rows))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&HalfMatmulGrad {
            w: self.w.clone(),
            p: self.p,
        })?))
    }
}

/// `g @ W`: the input gradient of [`HalfMatmul`].
struct HalfMatmulGrad {
    w: HalfWeight,
    p: MatmulPrecision,
}

impl CustomOp1 for HalfMatmulGrad {
    fn name(&self) -> &'static str {
        "frozen-matmul-16bit-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = l.shape().dims2()?;
        if n != self.w.rows {
            candle_core::bail!(
                "frozen matmul backward: gradient has {n} columns, weight has {} rows",
                self.w.rows
            );
        }
        let g = f32_input(s, l, "frozen matmul backward")?;
        let dx = self.w.backward(g, m, self.p);
        Ok((CpuStorage::F32(dx), Shape::from((m, self.w.cols))))
    }
}

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

/// A row-major `[rows, cols]` matrix in q8_0 (`claas_kernels::Q8Matrix`'s layout): int8 values
/// and one f16 scale per 32 along each row, quantized at load. Owned: the 16-bit source is not
/// kept.
#[derive(Clone)]
pub(crate) struct Q8Weight {
    qs: Arc<Vec<i8>>,
    scales: Arc<Vec<u16>>,
    rows: usize,
    cols: usize,
}

impl Q8Weight {
    /// Quantizes a matrix whose row `r` `row(r, out)` writes as f32 (one row in f32 at a time,
    /// so a 16-bit source is never widened whole).
    pub(crate) fn quantize(
        rows: usize,
        cols: usize,
        mut row: impl FnMut(usize, &mut [f32]),
    ) -> candle_core::Result<Q8Weight> {
        let nb = claas_kernels::q8_blocks(cols);
        let mut qs = vec![0i8; rows * cols];
        let mut scales = vec![0u16; rows * nb];
        let mut buf = vec![0f32; cols];
        for r in 0..rows {
            row(r, &mut buf);
            claas_kernels::q8_quantize_row(
                &buf,
                &mut qs[r * cols..(r + 1) * cols],
                &mut scales[r * nb..(r + 1) * nb],
            )
            .map_err(|e| candle_core::Error::Msg(format!("q8_0, row {r}: {e}")))?;
        }
        Ok(Q8Weight {
            qs: Arc::new(qs),
            scales: Arc::new(scales),
            rows,
            cols,
        })
    }

    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn matrix(&self) -> claas_kernels::Q8Matrix<'_> {
        claas_kernels::Q8Matrix::new(&self.qs, &self.scales, self.rows, self.cols)
    }

    /// Rows `ids` dequantized, `[ids.len(), cols]`: only the looked-up rows.
    fn gather(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let m = self.matrix();
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols.max(1))) {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("row {r} of a {}-row matrix", self.rows);
            }
            m.dequantize_row(r, o);
        }
        Ok(out)
    }
}

/// `x @ W^T` by a q8_0 matrix; backward gives `x`'s gradient only (QLoRA-style frozen base).
struct Q8Matmul {
    w: Q8Weight,
}

impl CustomOp1 for Q8Matmul {
    fn name(&self) -> &'static str {
        "frozen-matmul-q8"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        if k != self.w.cols {
            candle_core::bail!(
                "frozen matmul: input has {k} features, weight expects {}",
                self.w.cols
            );
        }
        let x = f32_input(s, l, "frozen matmul")?;
        let mut y = vec![0f32; m * self.w.rows];
        claas_kernels::gemm_q8(self.w.matrix(), x, &mut y, m);
        Ok((CpuStorage::F32(y), Shape::from((m, self.w.rows))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(
            g.apply_op1_no_bwd(&Q8MatmulGrad { w: self.w.clone() })?,
        ))
    }
}

/// `g @ W`: the input gradient of [`Q8Matmul`].
struct Q8MatmulGrad {
    w: Q8Weight,
}

impl CustomOp1 for Q8MatmulGrad {
    fn name(&self) -> &'static str {
        "frozen-matmul-q8-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = l.shape().dims2()?;
        if n != self.w.rows {
            candle_core::bail!(
                "frozen matmul backward: gradient has {n} columns, weight has {} rows",
                self.w.rows
            );
        }
        let g = f32_input(s, l, "frozen matmul backward")?;
        let mut dx = vec![0f32; m * self.w.cols];
        claas_kernels::gemm_nn_q8(self.w.matrix(), g, &mut dx, m);
        Ok((CpuStorage::F32(dx), Shape::from((m, self.w.cols))))
    }
}
