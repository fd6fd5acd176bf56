//! q8_0-style 8-bit weights: GEMV, GEMM and the frozen backward.
//!
//! **Format.** A row-major `[rows, cols]` matrix is cut along each row (the input dimension)
//! into blocks of [`Q8_BLOCK`] = 32 values; the last block of a row is shorter when `cols` is
//! not a multiple of 32. Each block stores 32 `i8` and one scale `d` as f16 bits: 34 bytes per
//! 32 weights, as llama.cpp's q8_0. Quantization is symmetric round-to-nearest,
//! `q = round(w/d)` with `d = max|w|/127` **rounded up** to the next f16, so `|w/d| ≤ 127`
//! never clips and every weight is reproduced within `d/2` of the *stored* scale.
//!
//! f16 rather than f32 scales: a decode step reads every weight once, and f32 scales would
//! make that 36 bytes per block instead of 34 (6% more traffic) for a scale precision
//! (2⁻¹¹ relative, absorbed by rounding up) far below the int8 step itself.
//!
//! **Compute.** Weights are dequantized in registers (`i8 → i32 → f32`, times the block's
//! scale) and multiplied with f32 activations, accumulating in f32. The alternative, int8
//! activations and `vpdpbusd` (avx512_vnni) as llama.cpp does, adds a second quantization error
//! on the activations and mainly saves arithmetic; decode is bound by memory bandwidth, and for
//! the GEMM a panel is dequantized once into f32 and reused by every row of `X`, so the
//! products run on the same f32 register-tile micro-kernels as a 16-bit GEMM.
//!
//! Row `r`, block `b` is `qs[r·cols + 32b ..]` with scale `scales[r·nb + b]`, `nb =
//! cols.div_ceil(32)`.

use rayon::prelude::*;

use crate::gemm::{run_tasks, task_count, OutPtr};
use crate::{f16_to_f32, Isa};

/// Values per scale block.
pub const Q8_BLOCK: usize = 32;

/// Scale blocks in a row of `cols` values.
pub fn q8_blocks(cols: usize) -> usize {
    cols.div_ceil(Q8_BLOCK)
}

/// A borrowed q8_0 matrix (see the module docs for the layout).
#[derive(Clone, Copy, Debug)]
pub struct Q8Matrix<'a> {
    qs: &'a [i8],
    scales: &'a [u16],
    rows: usize,
    cols: usize,
}

impl<'a> Q8Matrix<'a> {
    /// # Panics
    /// If `qs.len() != rows·cols` or `scales.len() != rows·cols.div_ceil(32)`.
    pub fn new(qs: &'a [i8], scales: &'a [u16], rows: usize, cols: usize) -> Q8Matrix<'a> {
        assert_eq!(
            Some(qs.len()),
            rows.checked_mul(cols),
            "q8: {} values for {rows}×{cols}",
            qs.len()
        );
        assert_eq!(
            Some(scales.len()),
            rows.checked_mul(q8_blocks(cols)),
            "q8: {} scales for {rows}×{cols}",
            scales.len()
        );
        Q8Matrix {
            qs,
            scales,
            rows,
            cols,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `r0..r1`.
    fn sub(&self, r0: usize, r1: usize) -> Q8Matrix<'a> {
        let nb = q8_blocks(self.cols);
        Q8Matrix {
            qs: &self.qs[r0 * self.cols..r1 * self.cols],
            scales: &self.scales[r0 * nb..r1 * nb],
            rows: r1 - r0,
            cols: self.cols,
        }
    }

    /// Row `r` as f32 (`out.len() == cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (q, s) = self.row(r);
        dequantize_row(q, s, out);
    }

    fn row(&self, r: usize) -> (&'a [i8], &'a [u16]) {
        let nb = q8_blocks(self.cols);
        (
            &self.qs[r * self.cols..(r + 1) * self.cols],
            &self.scales[r * nb..(r + 1) * nb],
        )
    }
}

/// The smallest f16 ≥ `d` (`d` finite, ≥ 0), as bits; `None` if that exceeds f16's range.
fn f16_at_least(d: f32) -> Option<u16> {
    let h = half::f16::from_f32(d);
    if !h.is_finite() {
        return None;
    }
    Some(if h.to_f32() < d {
        // Positive finite f16 bit patterns are ordered like the values they encode.
        h.to_bits() + 1
    } else {
        h.to_bits()
    })
}

/// Quantizes one row `w` into `qs` (same length) and `scales` (`w.len().div_ceil(32)`).
///
/// # Errors
/// If a value is not finite, or a block's scale `max|w|/127` exceeds f16's range (|w| > 8.3e6).
pub fn quantize_row(w: &[f32], qs: &mut [i8], scales: &mut [u16]) -> Result<(), String> {
    assert_eq!(w.len(), qs.len());
    assert_eq!(scales.len(), q8_blocks(w.len()));
    for ((wb, qb), s) in w
        .chunks(Q8_BLOCK)
        .zip(qs.chunks_mut(Q8_BLOCK))
        .zip(scales.iter_mut())
    {
        let amax = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
        if !amax.is_finite() || wb.iter().any(|v| v.is_nan()) {
            return Err("weight is not finite".into());
        }
        let bits = f16_at_least(amax / 127.0)
            .ok_or_else(|| format!("weight magnitude {amax} is beyond q8_0's f16 scale range"))?;
        let d = f16_to_f32(bits);
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(wb) {
            // `v·(1/d)` may round past 127 by an ulp; the clamp keeps the error within d/2.
            *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        *s = bits;
    }
    Ok(())
}

/// One row back to f32: `w = q·d`.
pub fn dequantize_row(qs: &[i8], scales: &[u16], out: &mut [f32]) {
    for ((qb, ob), &s) in qs
        .chunks(Q8_BLOCK)
        .zip(out.chunks_mut(Q8_BLOCK))
        .zip(scales)
    {
        let d = f16_to_f32(s);
        for (o, &q) in ob.iter_mut().zip(qb) {
            *o = q as f32 * d;
        }
    }
}

/// Below this many weights one thread is faster than waking rayon (as for 16-bit GEMV).
const PAR_MIN_WEIGHTS: usize = 1 << 18;
const MIN_ROWS_PER_TASK: usize = 16;

/// `y = W·x`, `W` `[y.len(), x.len()]`, on the detected path.
pub fn gemv_q8(w: Q8Matrix<'_>, x: &[f32], y: &mut [f32]) {
    gemv_q8_with(Isa::detected(), w, x, y)
}

/// [`gemv_q8`] on an explicit path.
///
/// # Panics
/// If the CPU lacks `isa`, or `x.len() != cols` or `y.len() != rows`.
pub fn gemv_q8_with(isa: Isa, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32]) {
    isa.check();
    assert_eq!(x.len(), w.cols, "gemv_q8: x has {} values", x.len());
    assert_eq!(y.len(), w.rows, "gemv_q8: y has {} values", y.len());
    let rows = w.rows;
    if rows == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if threads <= 1 || rows * w.cols < PAR_MIN_WEIGHTS || rows < 2 * MIN_ROWS_PER_TASK {
        return gemv_kernel(isa, w, x, y);
    }
    let chunk = rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK);
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, yc)| {
        let r0 = i * chunk;
        gemv_kernel(isa, w.sub(r0, r0 + yc.len()), x, yc)
    });
}

fn gemv_kernel(isa: Isa, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32]) {
    match isa {
        Isa::Portable => gemv_portable(w, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemv_q8_with` checked the CPU supports AVX-512F; shapes were checked.
        Isa::Avx512 => unsafe { crate::q8_x86::gemv_avx512(w.qs, w.scales, w.cols, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA + F16C.
        Isa::Avx2 => unsafe { crate::q8_x86::gemv_avx2(w.qs, w.scales, w.cols, x, y) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-portable paths are never supported off x86-64"),
    }
}

fn gemv_portable(w: Q8Matrix<'_>, x: &[f32], y: &mut [f32]) {
    for (r, yr) in y.iter_mut().enumerate() {
        let (q, s) = w.row(r);
        let mut acc = 0f32;
        for ((qb, xb), &d) in q.chunks(Q8_BLOCK).zip(x.chunks(Q8_BLOCK)).zip(s) {
            // Eight partial sums let the compiler vectorise the block's dot product.
            let mut p = [0f32; 8];
            for (i, (&qv, &xv)) in qb.iter().zip(xb).enumerate() {
                p[i % 8] += qv as f32 * xv;
            }
            acc += p.iter().sum::<f32>() * f16_to_f32(d);
        }
        *yr = acc;
    }
}

/// `k` block of the GEMM: a multiple of [`Q8_BLOCK`] so panels never split a scale block;
/// a 32-wide f32 panel of 128 rows is 16 KiB, half of L1d.
const KC: usize = 128;
/// Up to this many rows of `X` (batch decode, short chunks) the int8 weights are read from
/// memory and converted once per call. Beyond, panels dequantized once per `k` block and a
/// register-tiled kernel pay.
const GEMV_MAX_M: usize = 16;

/// `Y = X·Wᵀ`: `X` `[m, cols]`, `Y` `[m, rows]` (a linear layer over `m` tokens), overwritten.
pub fn gemm_q8(w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], m: usize) {
    gemm_q8_with(Isa::detected(), w, x, y, m)
}

/// [`gemm_q8`] on an explicit path.
///
/// # Panics
/// If the CPU lacks `isa`, or the lengths disagree with `m×cols`, `m×rows`.
pub fn gemm_q8_with(isa: Isa, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], m: usize) {
    isa.check();
    let (n, k) = (w.rows, w.cols);
    assert_eq!(Some(x.len()), m.checked_mul(k), "gemm_q8: x length");
    assert_eq!(Some(y.len()), m.checked_mul(n), "gemm_q8: y length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    if m == 1 {
        return gemv_q8_with(isa, w, x, y);
    }
    if m <= GEMV_MAX_M {
        return gemv_multi(isa, w, x, y, m);
    }
    tiled(isa, w, x, y, m, k, n, false);
}

/// `Y = X·Wᵀ` for a few rows of `X`: weight rows are dequantized once, a small block at a time,
/// into an f32 buffer that stays in cache, and the 16-bit path's multi-row GEMV kernel dots the
/// block with all `m` rows of `X` (each weight read once for every row). A batch of `m` costs
/// one pass over the int8 weights and one conversion of each weight. Threads take disjoint
/// weight rows, that is disjoint columns of `Y`.
fn gemv_multi(isa: Isa, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], m: usize) {
    let (n, k) = (w.rows, w.cols);
    // About 64 KiB of f32 per block: the block and `X` (≤ 16 rows) stay in L2.
    let block = (16 * 1024 / k).clamp(1, 16);
    let tasks = task_count(n.div_ceil(block), m * n * k);
    let per_task = n.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (t0, t1) = (t * per_task, ((t + 1) * per_task).min(n));
        let mut buf = vec![0f32; block * k];
        for r0 in (t0..t1).step_by(block) {
            let rb = block.min(t1 - r0);
            for (j, dst) in buf.chunks_exact_mut(k).take(rb).enumerate() {
                let (q, s) = w.row(r0 + j);
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the caller checked the CPU supports AVX-512F; `s` holds the
                    // row's block scales.
                    Isa::Avx512 => unsafe { crate::q8_x86::dequantize_row_avx512(q, s, dst) },
                    _ => dequantize_row(q, s, dst),
                }
            }
            // SAFETY: `buf` holds `rb` rows of `k`; `x` is m×k; columns r0..r0+rb of every row
            // of `y` (stride n, m rows) are inside it and belong to this task only; `isa` was
            // checked by the caller.
            unsafe {
                crate::gemv::multi_kernel(
                    isa,
                    crate::Weights::F32(&buf[..rb * k]),
                    rb,
                    k,
                    x,
                    m,
                    out.get().add(r0),
                    n,
                )
            };
        }
    };
    run_tasks(tasks, run);
}

/// `dX = G·W`: `G` `[m, rows]`, `dX` `[m, cols]`, overwritten: the input gradient of the layer
/// [`gemm_q8`] computes, `W` getting none (a frozen base).
pub fn gemm_nn_q8(w: Q8Matrix<'_>, g: &[f32], y: &mut [f32], m: usize) {
    gemm_nn_q8_with(Isa::detected(), w, g, y, m)
}

/// [`gemm_nn_q8`] on an explicit path.
///
/// # Panics
/// If the CPU lacks `isa`, or the lengths disagree with `m×rows`, `m×cols`.
pub fn gemm_nn_q8_with(isa: Isa, w: Q8Matrix<'_>, g: &[f32], y: &mut [f32], m: usize) {
    isa.check();
    let (k, n) = (w.rows, w.cols);
    assert_eq!(Some(g.len()), m.checked_mul(k), "gemm_nn_q8: g length");
    assert_eq!(Some(y.len()), m.checked_mul(n), "gemm_nn_q8: y length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    tiled(isa, w, g, y, m, k, n, true);
}

/// `Y[m×n] = X[m×k]·B` with `B[kk][j]` = `W[j][kk]` (`nn` false: `W` is `n×k`) or `W[kk][j]`
/// (`nn` true: `W` is `k×n`). Panels of `nr` columns of `B` × [`KC`] are dequantized once
/// into f32 and reused by every `mr`-row tile of `X`; threads own disjoint panels.
#[allow(clippy::too_many_arguments)]
fn tiled(
    isa: Isa,
    w: Q8Matrix<'_>,
    x: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    nn: bool,
) {
    let (mr, nr) = match isa {
        Isa::Portable => (4, 8),
        Isa::Avx2 => (6, 16),
        Isa::Avx512 => (8, 32),
    };
    let panels = n.div_ceil(nr);
    let tasks = task_count(panels, m * n * k);
    let per_task = panels.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        let mut panel = vec![0f32; KC * nr];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in p0..p1 {
                let j0 = p * nr;
                let nvalid = nr.min(n - j0);
                if nn {
                    pack_nn(w, j0, nvalid, nr, k0, kc, &mut panel);
                } else {
                    pack_nt(w, j0, nvalid, nr, k0, kc, &mut panel);
                }
                for i0 in (0..m).step_by(mr) {
                    let rows = mr.min(m - i0);
                    // SAFETY: rows i0..i0+rows of `x` (stride k) have columns k0..k0+kc; the
                    // panel holds kc×nr floats; rows i0.. of `y` (stride n) have columns
                    // j0..j0+nvalid, owned by this task only; `isa` was checked by the caller.
                    unsafe {
                        micro(
                            isa,
                            rows,
                            kc,
                            x.as_ptr().add(i0 * k + k0),
                            k,
                            panel.as_ptr(),
                            out.get().add(i0 * n + j0),
                            n,
                            nvalid,
                            k0 > 0,
                        )
                    }
                }
            }
        }
    };
    run_tasks(tasks, run);
}

/// `panel[kk·nr + j] = W[j0+j][k0+kk]` (zero for `j ≥ nvalid`). `k0` is a multiple of 32.
fn pack_nt(
    w: Q8Matrix<'_>,
    j0: usize,
    nvalid: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    let mut row = [0f32; KC];
    for j in 0..nr {
        if j < nvalid {
            let (q, s) = w.row(j0 + j);
            dequantize_row(
                &q[k0..k0 + kc],
                &s[k0 / Q8_BLOCK..q8_blocks(k0 + kc)],
                &mut row[..kc],
            );
        } else {
            row[..kc].fill(0.0);
        }
        for (kk, &v) in row[..kc].iter().enumerate() {
            panel[kk * nr + j] = v;
        }
    }
}

/// `panel[kk·nr + j] = W[k0+kk][j0+j]` (zero for `j ≥ nvalid`): a panel row is a slice of
/// a weight row.
fn pack_nn(
    w: Q8Matrix<'_>,
    j0: usize,
    nvalid: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    for kk in 0..kc {
        let (q, s) = w.row(k0 + kk);
        let dst = &mut panel[kk * nr..(kk + 1) * nr];
        for (j, d) in dst[..nvalid].iter_mut().enumerate() {
            let c = j0 + j;
            *d = q[c] as f32 * f16_to_f32(s[c / Q8_BLOCK]);
        }
        dst[nvalid..].fill(0.0);
    }
}

/// `C (+)= A·B` on one `rows×nr` tile.
///
/// # Safety
/// `a`: `rows` rows (stride `lda`) × `kc`; `b`: `kc×nr` (the path's `nr`); `c`: `rows` rows
/// (stride `ldc`) × `nvalid` readable and writable; `rows ≤` the path's `mr`; CPU has `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn micro(
    isa: Isa,
    rows: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match isa {
            Isa::Portable => micro_portable(rows, kc, a, lda, b, c, ldc, nvalid, accumulate),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                crate::q8_x86::micro_avx512(rows, kc, a, lda, b, c, ldc, nvalid, accumulate)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::q8_x86::micro_avx2(rows, kc, a, lda, b, c, ldc, nvalid, accumulate),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("non-portable paths are never supported off x86-64"),
        }
    }
}

/// Portable `rows×8` tile (`rows ≤ 4`).
///
/// # Safety
/// See [`micro`] with `nr = 8`.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_portable(
    rows: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
) {
    const NR: usize = 8;
    let mut acc = [[0f32; NR]; 4];
    // SAFETY: every access is inside the regions the caller guarantees.
    unsafe {
        let bs = std::slice::from_raw_parts(b, kc * NR);
        for (r, accr) in acc.iter_mut().enumerate().take(rows) {
            let ar = std::slice::from_raw_parts(a.add(r * lda), kc);
            for (kk, &av) in ar.iter().enumerate() {
                let bv = &bs[kk * NR..(kk + 1) * NR];
                for j in 0..NR {
                    accr[j] += av * bv[j];
                }
            }
        }
        for (r, accr) in acc.iter().enumerate().take(rows) {
            let cr = std::slice::from_raw_parts_mut(c.add(r * ldc), nvalid);
            for (cv, &v) in cr.iter_mut().zip(accr) {
                *cv = if accumulate { *cv + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every path against a plain f64 loop over the dequantized weights. The kernels compute
    //! `Σ_b d_b·Σ_{i∈b} q_i·x_i` in f32, a reordering of the exact `Σ (q_i·d_b)·x_i` plus one
    //! rounding per scale multiply, so `(k+2)·ε·Σ|wᵢxᵢ|` (the 16-bit kernels' summation bound,
    //! see `tests.rs`) covers every path; a dropped or doubled term does not fit in it.
    // The reference loops index like the formulas they check.
    #![allow(clippy::needless_range_loop)]
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next_f32()).collect()
        }
    }

    struct Q {
        qs: Vec<i8>,
        scales: Vec<u16>,
        wide: Vec<f32>,
        rows: usize,
        cols: usize,
    }

    impl Q {
        fn new(rng: &mut Rng, rows: usize, cols: usize) -> Q {
            let w = rng.vec(rows * cols);
            let nb = q8_blocks(cols);
            let mut qs = vec![0i8; rows * cols];
            let mut scales = vec![0u16; rows * nb];
            for r in 0..rows {
                quantize_row(
                    &w[r * cols..(r + 1) * cols],
                    &mut qs[r * cols..(r + 1) * cols],
                    &mut scales[r * nb..(r + 1) * nb],
                )
                .unwrap();
            }
            let mut wide = vec![0f32; rows * cols];
            for r in 0..rows {
                dequantize_row(
                    &qs[r * cols..(r + 1) * cols],
                    &scales[r * nb..(r + 1) * nb],
                    &mut wide[r * cols..(r + 1) * cols],
                );
            }
            Q {
                qs,
                scales,
                wide,
                rows,
                cols,
            }
        }
        fn m(&self) -> Q8Matrix<'_> {
            Q8Matrix::new(&self.qs, &self.scales, self.rows, self.cols)
        }
    }

    fn check(got: f32, exact: f64, abs: f64, k: usize, what: &str) {
        let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * abs + 1e-30;
        assert!(
            (got as f64 - exact).abs() <= tol,
            "{what}: got {got}, exact {exact}, tolerance {tol}"
        );
    }

    const SHAPES: [(usize, usize); 8] = [
        (1, 1),
        (3, 31),
        (5, 32),
        (7, 33),
        (17, 100),
        (64, 129),
        (40, 300),
        (300, 64),
    ];

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let mut rng = Rng(7);
        for (rows, cols) in SHAPES {
            let w = rng.vec(rows * cols);
            let nb = q8_blocks(cols);
            let (mut qs, mut s) = (vec![0i8; cols], vec![0u16; nb]);
            let mut back = vec![0f32; cols];
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                quantize_row(wr, &mut qs, &mut s).unwrap();
                dequantize_row(&qs, &s, &mut back);
                for (c, (&a, &b)) in wr.iter().zip(&back).enumerate() {
                    let d = f16_to_f32(s[c / Q8_BLOCK]);
                    let amax = wr
                        [c / Q8_BLOCK * Q8_BLOCK..((c / Q8_BLOCK + 1) * Q8_BLOCK).min(cols)]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs()));
                    assert!(d >= amax / 127.0, "scale rounded down");
                    assert!(d <= amax / 127.0 * (1.0 + 1.0 / 1024.0) + 6e-8);
                    assert!((a - b).abs() <= d / 2.0 * (1.0 + 1e-6), "{a} vs {b}, d {d}");
                }
            }
        }
        // A zero block has scale 0 and reproduces exactly; a non-finite weight is refused.
        let (mut qs, mut s) = (vec![1i8; 40], vec![1u16; 2]);
        quantize_row(&[0.0; 40], &mut qs, &mut s).unwrap();
        assert!(qs.iter().all(|&q| q == 0) && s.iter().all(|&d| f16_to_f32(d) == 0.0));
        let mut bad = vec![0.5f32; 40];
        bad[33] = f32::NAN;
        assert!(quantize_row(&bad, &mut qs, &mut s).is_err());
        bad[33] = 1e9;
        assert!(quantize_row(&bad, &mut qs, &mut s).is_err());
    }

    #[test]
    fn gemv_matches_reference_on_every_path() {
        let mut rng = Rng(11);
        for isa in Isa::available() {
            for (rows, cols) in SHAPES.into_iter().chain([(1024, 1024), (333, 1000)]) {
                let q = Q::new(&mut rng, rows, cols);
                let x = rng.vec(cols);
                let mut y = vec![f32::NAN; rows];
                gemv_q8_with(isa, q.m(), &x, &mut y);
                for r in 0..rows {
                    let (mut s, mut a) = (0f64, 0f64);
                    for c in 0..cols {
                        let p = q.wide[r * cols + c] as f64 * x[c] as f64;
                        s += p;
                        a += p.abs();
                    }
                    check(
                        y[r],
                        s,
                        a,
                        cols,
                        &format!("{isa:?} gemv {rows}x{cols} row {r}"),
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_and_gemm_nn_match_reference_on_every_path() {
        let mut rng = Rng(13);
        for isa in Isa::available() {
            for m in [1, 2, 4, 9, 16, 17] {
                for (n, k) in SHAPES.into_iter().chain([(129, 257)]) {
                    let q = Q::new(&mut rng, n, k);
                    // Y = X·Wᵀ
                    let x = rng.vec(m * k);
                    let mut y = vec![f32::NAN; m * n];
                    gemm_q8_with(isa, q.m(), &x, &mut y, m);
                    for i in 0..m {
                        for j in 0..n {
                            let (mut s, mut a) = (0f64, 0f64);
                            for c in 0..k {
                                let p = q.wide[j * k + c] as f64 * x[i * k + c] as f64;
                                s += p;
                                a += p.abs();
                            }
                            check(y[i * n + j], s, a, k, &format!("{isa:?} gemm {m}x{n}x{k}"));
                        }
                    }
                    // dX = G·W
                    let g = rng.vec(m * n);
                    let mut dx = vec![f32::NAN; m * k];
                    gemm_nn_q8_with(isa, q.m(), &g, &mut dx, m);
                    for i in 0..m {
                        for c in 0..k {
                            let (mut s, mut a) = (0f64, 0f64);
                            for j in 0..n {
                                let p = q.wide[j * k + c] as f64 * g[i * n + j] as f64;
                                s += p;
                                a += p.abs();
                            }
                            check(
                                dx[i * k + c],
                                s,
                                a,
                                n,
                                &format!("{isa:?} gemm_nn {m}x{n}x{k}"),
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn big_parallel_gemm_matches_gemv_rows() {
        // Above the parallel thresholds: every task's panels and the k blocks line up (m = 37,
        // the tiled GEMM), and every task's weight rows (m = 9, the multi-row GEMV).
        let mut rng = Rng(17);
        let (n, k) = (300, 700);
        let q = Q::new(&mut rng, n, k);
        for m in [9, 37] {
            let x = rng.vec(m * k);
            for isa in Isa::available() {
                let mut y = vec![0f32; m * n];
                gemm_q8_with(isa, q.m(), &x, &mut y, m);
                for i in 0..m {
                    let mut yr = vec![0f32; n];
                    gemv_q8_with(Isa::Portable, q.m(), &x[i * k..(i + 1) * k], &mut yr);
                    for j in 0..n {
                        let a: f64 = (0..k)
                            .map(|c| (q.wide[j * k + c] * x[i * k + c]).abs() as f64)
                            .sum();
                        let tol = 2.0 * (k as f64 + 2.0) * f32::EPSILON as f64 * a;
                        assert!(
                            ((y[i * n + j] - yr[j]) as f64).abs() <= tol,
                            "{isa:?} m {m}"
                        );
                    }
                }
            }
        }
    }
}
