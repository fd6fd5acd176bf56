//! Portable kernels: plain Rust laid out so the compiler vectorises it (independent lanes, fixed
//! trip counts), and the GEMM pieces shared by every path (packing, the generic micro-kernel).

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::{bf16_to_f32, f16_to_f32, Weights};

/// Independent partial sums per row: lanes the compiler maps onto vector registers without
/// having to reassociate floating-point adds (which it never does on its own).
const LANES: usize = 16;

pub(crate) fn gemv(w: Weights<'_>, cols: usize, x: &[f32], y: &mut [f32]) {
    match w {
        Weights::Bf16(w) => gemv_rows(w, cols, x, y, bf16_to_f32),
        Weights::F16(w) => gemv_rows(w, cols, x, y, f16_to_f32),
        Weights::F32(w) => gemv_rows(w, cols, x, y, |v| v),
    }
}

fn gemv_rows<T: Copy>(w: &[T], cols: usize, x: &[f32], y: &mut [f32], cvt: impl Fn(T) -> f32) {
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    for (row, yr) in w.chunks_exact(cols).zip(y.iter_mut()) {
        let mut acc = [0f32; LANES];
        let wc = row.chunks_exact(LANES);
        let xc = x.chunks_exact(LANES);
        let (wt, xt) = (wc.remainder(), xc.remainder());
        for (wv, xv) in wc.zip(xc) {
            for l in 0..LANES {
                acc[l] += cvt(wv[l]) * xv[l];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (&wv, &xv) in wt.iter().zip(xt) {
            s += cvt(wv) * xv;
        }
        *yr = s;
    }
}

/// Copies rows `k0..k0+kc` × columns `j0..j0+nvalid` of the `?×n` weights into `out` as
/// `[kc][nr]` f32, zero-padding columns `nvalid..nr`: the vector operand of the
/// `X·W` micro-kernel. Each panel row is a contiguous piece of a weight row, widened in place.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_nn(
    w: Weights<'_>,
    n: usize,
    j0: usize,
    nvalid: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    out: &mut [f32],
) {
    for (kk, dst) in out[..kc * nr].chunks_exact_mut(nr).enumerate() {
        let src = (k0 + kk) * n + j0..(k0 + kk) * n + j0 + nvalid;
        let (head, pad) = dst.split_at_mut(nvalid);
        match w {
            Weights::Bf16(w) => {
                for (d, &b) in head.iter_mut().zip(&w[src]) {
                    *d = bf16_to_f32(b);
                }
            }
            Weights::F16(w) => {
                let h: &[half::f16] = w[src].reinterpret_cast();
                h.convert_to_f32_slice(head);
            }
            Weights::F32(w) => head.copy_from_slice(&w[src]),
        }
        pad.fill(0.0);
    }
}

/// `C[MR×nvalid] (+)= A[MR×kc] · B[kc×NR]` on a packed panel `b`, accumulators in a fixed-size
/// array the compiler keeps in registers. `FUSED` uses `mul_add`, which is one instruction
/// only when the caller is compiled with FMA (a libm call otherwise, hence the switch).
///
/// # Safety
/// `a` must be valid for reads of rows `0..MR` (stride `lda`) × `kc` columns, `b` for `kc×NR`
/// reads, `c` for reads and writes of rows `0..MR` (stride `ldc`) × `nvalid ≤ NR` columns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_generic<const MR: usize, const NR: usize, const FUSED: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..kc {
        // SAFETY: the caller guarantees `b` holds `kc` packed rows of `NR` floats.
        let bv = unsafe { &*(b.add(kk * NR) as *const [f32; NR]) };
        for (r, accr) in acc.iter_mut().enumerate() {
            // SAFETY: row `r < MR`, column `kk < kc` is inside `a` by the caller's guarantee.
            let av = unsafe { *a.add(r * lda + kk) };
            for j in 0..NR {
                accr[j] = if FUSED {
                    av.mul_add(bv[j], accr[j])
                } else {
                    accr[j] + av * bv[j]
                };
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        // SAFETY: row `r < MR` has `nvalid` writable columns at `c + r*ldc` (caller's guarantee),
        // and no other reference to them is alive during this call.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), nvalid) };
        for (cv, &v) in cr.iter_mut().zip(accr) {
            *cv = if accumulate { *cv + v } else { v };
        }
    }
}

/// Widens rows `j0..j0+jv` × columns `k0..k0+kc` of the `?×k` weights into `out` as `[mr][kc]`
/// f32 (row stride `kc`), zero-filling rows `jv..mr`: the broadcast operand of the `X·Wᵀ`
/// micro-kernel. Each row is a contiguous conversion, which vectorises.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_rows(
    w: Weights<'_>,
    k: usize,
    j0: usize,
    jv: usize,
    mr: usize,
    k0: usize,
    kc: usize,
    out: &mut [f32],
) {
    for (jj, dst) in out[..mr * kc].chunks_exact_mut(kc).enumerate() {
        if jj >= jv {
            dst.fill(0.0);
            continue;
        }
        let src = (j0 + jj) * k + k0..(j0 + jj) * k + k0 + kc;
        match w {
            Weights::Bf16(w) => {
                for (d, &b) in dst.iter_mut().zip(&w[src]) {
                    *d = bf16_to_f32(b);
                }
            }
            Weights::F16(w) => {
                let h: &[half::f16] = w[src].reinterpret_cast();
                h.convert_to_f32_slice(dst);
            }
            Weights::F32(w) => dst.copy_from_slice(&w[src]),
        }
    }
}

/// Rows `i0..i0+iv` of the `?×k` matrix `x`, transposed into `out` as `[k][nr]` (zero in
/// columns `iv..nr`): the vector operand of the `X·Wᵀ` micro-kernel.
pub(crate) fn pack_xt(x: &[f32], k: usize, i0: usize, iv: usize, nr: usize, out: &mut [f32]) {
    // Blocks of 64 columns keep the `nr` destination rows being written in L1.
    const B: usize = 64;
    for c0 in (0..k).step_by(B) {
        let cb = B.min(k - c0);
        for ii in 0..nr {
            if ii >= iv {
                for kk in c0..c0 + cb {
                    out[kk * nr + ii] = 0.0;
                }
                continue;
            }
            let src = &x[(i0 + ii) * k + c0..(i0 + ii) * k + c0 + cb];
            for (kk, &v) in src.iter().enumerate() {
                out[(c0 + kk) * nr + ii] = v;
            }
        }
    }
}

/// `y[i·ldy + r] = W[r]·x[i]` for the `rows` weight rows and `m` rows of `x` (each `cols`
/// long): every weight row is widened once and dotted with all of `x`'s rows.
///
/// # Safety
/// `y` must be valid for writes at `i·ldy + r` for every `i < m`, `r < rows`.
pub(crate) unsafe fn gemv_multi(
    w: Weights<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    m: usize,
    y: *mut f32,
    ldy: usize,
) {
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        pack_rows(w, cols, r, 1, 1, 0, cols, &mut row);
        for i in 0..m {
            let xr = &x[i * cols..(i + 1) * cols];
            let mut acc = [0f32; LANES];
            let wc = row.chunks_exact(LANES);
            let xc = xr.chunks_exact(LANES);
            let (wt, xt) = (wc.remainder(), xc.remainder());
            for (wv, xv) in wc.zip(xc) {
                for l in 0..LANES {
                    acc[l] += wv[l] * xv[l];
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (&wv, &xv) in wt.iter().zip(xt) {
                s += wv * xv;
            }
            // SAFETY: i < m, r < rows: in bounds by the caller's guarantee.
            unsafe { *y.add(i * ldy + r) = s };
        }
    }
}
